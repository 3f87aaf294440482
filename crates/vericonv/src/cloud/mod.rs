//! The untrusted cloud (docs/scheme.md §6): `Y' = Conv(K', X')` over F_p, behind one trait.
//!
//! The client never trusts what a backend returns: every answer is verified before it is
//! decrypted. [`CpuBackend`] runs on the CPU with rayon; the `vericonv-gpu` crate's
//! `GpuBackend` runs WGSL compute shaders through wgpu.

mod cpu;
#[cfg(target_arch = "x86_64")]
mod int8;
mod tamper;

pub use cpu::CpuBackend;
pub use tamper::{Tamper, TamperingBackend};

use std::sync::{Arc, Weak};

use zeroize::Zeroize;

use crate::Result;
use crate::geometry::Conv2d;
use crate::share::ShareSeed;

/// The kernel of a cloud call.
#[derive(Clone, Copy, Debug)]
pub enum CallKernel<'a> {
    /// `K'` (`Cout × Cin/G × kh × kw`) for the geometry, sent with the call.
    Raw(&'a Conv2d, &'a [u32]),
    /// A kernel of the session, which a backend that keeps kernels (a GPU's memory, a remote
    /// server's cache) recognises by its id: it is sent once per session, not once per call.
    Session(&'a SessionKernel),
}

/// The input of a cloud call.
#[derive(Clone, Copy, Debug)]
pub enum CallInput<'a> {
    /// `X'`, `batch × Cin × H × W`.
    Tensor(&'a [u32]),
    /// Mode `two-server`, cloud A: the 32-byte seed of its share `X'_A = G(seed)`
    /// (docs/scheme.md §11); a remote cloud receives the seed, not the tensor.
    Seed(&'a ShareSeed),
}

/// One convolution a cloud is asked for: `Y' = Conv(kernel, input)` over F_p for `batch`
/// images, `batch × Cout × Ho × Wo`.
#[derive(Clone, Copy, Debug)]
pub struct ConvCall<'a> {
    /// The kernel, raw or of a session.
    pub kernel: CallKernel<'a>,
    /// Images in the batch.
    pub batch: usize,
    /// The input, a tensor or a share's seed.
    pub input: CallInput<'a>,
}

impl<'a> ConvCall<'a> {
    /// The layer geometry.
    pub fn geometry(&self) -> &'a Conv2d {
        match self.kernel {
            CallKernel::Raw(g, _) => g,
            CallKernel::Session(k) => k.geometry(),
        }
    }

    /// The kernel's elements.
    pub fn kernel_data(&self) -> &'a [u32] {
        match self.kernel {
            CallKernel::Raw(_, k) => k,
            CallKernel::Session(k) => k.data(),
        }
    }

    /// The input as a tensor: a seed is expanded to its share.
    ///
    /// # Errors
    /// [`crate::Error::TooLarge`] for a share too large to address.
    pub fn input_tensor(&self) -> Result<std::borrow::Cow<'a, [u32]>> {
        Ok(match self.input {
            CallInput::Tensor(t) => std::borrow::Cow::Borrowed(t),
            CallInput::Seed(s) => std::borrow::Cow::Owned(s.expand(share_len(self.geometry(), self.batch)?)),
        })
    }

    /// Checks the lengths every backend must check (and, for a tensor, that its elements are
    /// canonical), as [`check_conv_args`] does.
    ///
    /// # Errors
    /// [`crate::Error::LengthMismatch`], [`crate::Error::TooLarge`] and the field's errors.
    pub fn check(&self) -> Result<()> {
        let (geom, kernel) = (self.geometry(), self.kernel_data());
        match self.input {
            CallInput::Tensor(input) => check_conv_args(geom, self.batch, kernel, input),
            CallInput::Seed(_) => {
                share_len(geom, self.batch)?;
                Conv2d::check_len("encrypted kernel", geom.kernel_len(), kernel.len())
            }
        }
    }
}

/// A cloud that convolves masked tensors over F_p, p = 2^31 - 1.
///
/// One method is required, [`CloudBackend::call`], which takes a description of the call
/// ([`ConvCall`]: the kernel raw or of a session, the input as a tensor or a seed) and the
/// output buffer; every other method is provided in terms of it, so a wrapper that forwards
/// `call` forwards every form (a remote cloud A behind it keeps receiving 32 bytes).
pub trait CloudBackend: Send + Sync {
    /// A human-readable description (backend and adapter). The default is the type's name.
    fn name(&self) -> String {
        std::any::type_name::<Self>().to_string()
    }

    /// Runs `call` into `out`, whose allocation the backend may reuse; `out` ends up holding
    /// exactly the answer, `batch × Cout × Ho × Wo`. A backend that replaces `out`'s
    /// allocation zeroizes the old contents ([`replace_zeroized`]): mode `pad`'s offline
    /// `Conv(K, R)` writes each pad's secret `U` in place this way.
    ///
    /// # Errors
    /// [`crate::Error::LengthMismatch`] for tensors that do not match the geometry (see
    /// [`ConvCall::check`]), and backend-specific errors (device limits, wgpu and transport
    /// errors); `out` is unspecified then.
    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> Result<()>;

    /// `Y' = Conv(K', X')` over F_p for a batch: `kernel` is `Cout × Cin/G × kh × kw`, `input`
    /// is `batch × Cin × H × W`, the result `batch × Cout × Ho × Wo`.
    ///
    /// # Errors
    /// As [`CloudBackend::call`].
    fn conv(&self, geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32]) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        self.conv_into(geom, batch, kernel, input, &mut out)?;
        Ok(out)
    }

    /// [`CloudBackend::conv`] into `out`, as [`CloudBackend::call`] writes it.
    ///
    /// # Errors
    /// As [`CloudBackend::call`].
    fn conv_into(&self, geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32], out: &mut Vec<u32>) -> Result<()> {
        let call = ConvCall { kernel: CallKernel::Raw(geom, kernel), batch, input: CallInput::Tensor(input) };
        self.call(call, out)
    }

    /// Mode `two-server`, cloud A: `Conv(K', X'_A)` where `X'_A = G(seed)` is the share expanded
    /// from its 32-byte seed (docs/scheme.md §11), `batch × Cin × H × W` elements.
    ///
    /// # Errors
    /// As [`CloudBackend::call`].
    fn conv_share(&self, geom: &Conv2d, batch: usize, kernel: &[u32], seed: &ShareSeed) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let call = ConvCall { kernel: CallKernel::Raw(geom, kernel), batch, input: CallInput::Seed(seed) };
        self.call(call, &mut out)?;
        Ok(out)
    }

    /// [`CloudBackend::conv`] with a kernel of the session.
    ///
    /// # Errors
    /// As [`CloudBackend::call`].
    fn conv_session(&self, kernel: &SessionKernel, batch: usize, input: &[u32]) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        self.conv_session_into(kernel, batch, input, &mut out)?;
        Ok(out)
    }

    /// [`CloudBackend::conv_share`] with a kernel of the session.
    ///
    /// # Errors
    /// As [`CloudBackend::call`].
    fn conv_share_session(&self, kernel: &SessionKernel, batch: usize, seed: &ShareSeed) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        self.conv_share_session_into(kernel, batch, seed, &mut out)?;
        Ok(out)
    }

    /// [`CloudBackend::conv_session`] into `out`: a client that keeps its answer buffers from
    /// call to call ([`crate::client::AnswerBuffers`]) then neither allocates nor frees a tensor
    /// per call.
    ///
    /// # Errors
    /// As [`CloudBackend::call`].
    fn conv_session_into(&self, kernel: &SessionKernel, batch: usize, input: &[u32], out: &mut Vec<u32>) -> Result<()> {
        self.call(ConvCall { kernel: CallKernel::Session(kernel), batch, input: CallInput::Tensor(input) }, out)
    }

    /// [`CloudBackend::conv_share_session`] into `out`, as [`CloudBackend::conv_session_into`].
    ///
    /// # Errors
    /// As [`CloudBackend::call`].
    fn conv_share_session_into(
        &self,
        kernel: &SessionKernel,
        batch: usize,
        seed: &ShareSeed,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        self.call(ConvCall { kernel: CallKernel::Session(kernel), batch, input: CallInput::Seed(seed) }, out)
    }
}

/// Puts `y`, a freshly computed answer, into `out` as [`CloudBackend::call`] requires: copied
/// into `out`'s allocation when it fits (then `y` is zeroized), else moved in after `out`'s old
/// contents are zeroized. No copy of a secret answer (a pad's `U`) is freed unzeroized.
pub fn replace_zeroized(out: &mut Vec<u32>, mut y: Vec<u32>) {
    if out.capacity() >= y.len() {
        out.clear();
        out.extend_from_slice(&y);
        y.zeroize();
    } else {
        out.zeroize();
        *out = y;
    }
}

/// `K'` of one session as the cloud receives it (in mode `split-model`, one cloud's share of
/// the kernel), with a 128-bit id drawn with the session key (or, on a server, taken from the
/// kernel's content hash). Backends that keep kernels key them by this id. The kernel is what
/// the cloud sees anyway: the id reveals nothing more. It is zeroized when the last clone
/// drops.
#[derive(Clone)]
pub struct SessionKernel {
    id: u128,
    geom: Conv2d,
    data: Arc<KernelData>,
}

/// A session kernel's elements, zeroized on drop (two shares of mode `split-model` together
/// are the client's model).
struct KernelData(Vec<u32>);

impl Drop for KernelData {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl SessionKernel {
    /// `K'` for `geom` under the id `id`.
    ///
    /// # Errors
    /// [`crate::Error::LengthMismatch`] when `data` is not `geom.kernel_len()` elements.
    pub fn new(id: u128, geom: Conv2d, data: Vec<u32>) -> Result<Self> {
        Conv2d::check_len("kernel", geom.kernel_len(), data.len())?;
        Ok(Self { id, geom, data: Arc::new(KernelData(data)) })
    }

    /// The id.
    pub fn id(&self) -> u128 {
        self.id
    }

    /// The layer geometry.
    pub fn geometry(&self) -> &Conv2d {
        &self.geom
    }

    /// `K'`, `Cout × Cin/G × kh × kw`.
    pub fn data(&self) -> &[u32] {
        &self.data.0
    }

    /// A reference for a backend's cache that does not keep `K'` alive.
    pub fn downgrade(&self) -> KernelRef {
        KernelRef { id: self.id, data: Arc::downgrade(&self.data) }
    }
}

/// A cache's reference to a [`SessionKernel`]. It recognises exactly that kernel: ids are
/// random, but two sessions seeded alike (tests, `--seed`) may draw the same one, so the
/// reference also holds the kernel's allocation, whose address no other kernel can take while
/// the reference exists.
#[derive(Clone)]
pub struct KernelRef {
    id: u128,
    data: Weak<KernelData>,
}

impl KernelRef {
    /// Whether this refers to `kernel`.
    pub fn refers_to(&self, kernel: &SessionKernel) -> bool {
        self.id == kernel.id && std::ptr::eq(self.data.as_ptr(), Arc::as_ptr(&kernel.data))
    }

    /// Whether the session still holds the kernel (a cache may drop what is no longer used).
    pub fn is_alive(&self) -> bool {
        self.data.strong_count() > 0
    }
}

impl std::fmt::Debug for SessionKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKernel")
            .field("id", &format_args!("{:032x}", self.id))
            .field("geom", &self.geom)
            .finish()
    }
}

/// The cloud or clouds a private layer runs on: one, or two for mode `two-server`.
#[derive(Clone, Copy)]
pub enum Clouds<'a> {
    /// One cloud (modes `lowrank` and `pad`).
    One(&'a dyn CloudBackend),
    /// Cloud A (it receives the seed of its share) and cloud B (it receives the other share).
    Two(&'a dyn CloudBackend, &'a dyn CloudBackend),
}

impl<'a, B: CloudBackend> From<&'a B> for Clouds<'a> {
    fn from(cloud: &'a B) -> Self {
        Clouds::One(cloud)
    }
}

impl<'a> From<&'a dyn CloudBackend> for Clouds<'a> {
    fn from(cloud: &'a dyn CloudBackend) -> Self {
        Clouds::One(cloud)
    }
}

impl Clouds<'_> {
    /// How many clouds there are.
    pub fn count(&self) -> usize {
        match self {
            Clouds::One(_) => 1,
            Clouds::Two(..) => 2,
        }
    }

    /// The clouds' names, joined with `" + "`.
    pub fn name(&self) -> String {
        match self {
            Clouds::One(c) => c.name(),
            Clouds::Two(a, b) => format!("A: {}; B: {}", a.name(), b.name()),
        }
    }
}

/// The length of a batch's share of mode `two-server` (the batch's input), checked.
pub(crate) fn share_len(geom: &Conv2d, batch: usize) -> Result<usize> {
    batch.checked_mul(geom.image_len()).ok_or(crate::Error::TooLarge { what: "share length", value: batch })
}

/// Checks the tensor lengths every backend receives.
pub fn check_conv_args(geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32]) -> Result<()> {
    Conv2d::check_len("encrypted kernel", geom.kernel_len(), kernel.len())?;
    Conv2d::check_len("encrypted input", batch * geom.image_len(), input.len())?;
    // The backends' lazy reductions rely on canonical elements.
    crate::field::check_canonical::<crate::field::M31>("encrypted kernel", kernel)?;
    crate::field::check_canonical::<crate::field::M31>("encrypted input", input)
}

impl<B: CloudBackend + ?Sized> CloudBackend for Box<B> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> Result<()> {
        (**self).call(call, out)
    }
}
