//! One-time pads of modes `pad` and `split-model` (docs/scheme.md §12, §14).
//!
//! Offline, for each future image, the client draws a uniform `R` (`Cin × H × W`) and computes
//! `U = Conv(K, R)` over F_p with the plain kernel, on its own backend (never the cloud). A pad
//! `(R, U)` is bound to one layer and one session key, and is used exactly once: a [`Pad`] cannot
//! be cloned, a [`PadPool`] hands pads out by value, and a pad that was taken is gone, even if the
//! call that took it fails.
//!
//! Mode `split-model` (§14) uses the same pads. The offline convolution has the plain 8-bit
//! kernel: the CPU backend computes it at int8 speed where the CPU allows
//! ([`crate::cloud::CpuBackend::takes_int8_path`]), about the cost of the plaintext layer.

use std::collections::VecDeque;
use std::sync::Arc;

use zeroize::Zeroize;

use crate::cloud::CloudBackend;
use crate::geometry::Conv2d;
use crate::keys::{KeyRng, SessionKey};
use crate::share::{ShareSeed, expand_into};
use crate::{Error, Result};

/// The tensors of pads made together: `R` and `U = Conv(K, R)` of each image, one image after
/// the other. Zeroized when the last of its pads (and the spent-pad memory) lets go of it.
struct PadBatch {
    r: Vec<u32>,
    u: Vec<u32>,
    images: usize,
}

impl Drop for PadBatch {
    fn drop(&mut self) {
        self.r.zeroize();
        self.u.zeroize();
    }
}

/// One image's pad: the mask `R` and its convolution `U = Conv(K, R)`, both in plain channel
/// order. Secret: never printed, never cloned, zeroized with its batch.
pub struct Pad {
    batch: Arc<PadBatch>,
    image: usize,
}

impl Pad {
    /// `R` (`Cin × H × W`).
    pub fn mask(&self) -> &[u32] {
        let len = self.batch.r.len() / self.batch.images;
        &self.batch.r[self.image * len..][..len]
    }

    /// `U = Conv(K, R)` (`Cout × Ho × Wo`).
    pub fn mask_conv(&self) -> &[u32] {
        let len = self.batch.u.len() / self.batch.images;
        &self.batch.u[self.image * len..][..len]
    }
}

impl std::fmt::Debug for Pad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pad(<secret>)")
    }
}

/// The memory of pads already used, kept to be overwritten by the next pads of the same layer
/// ([`crate::client::PrivateConv::refill_pads`]) rather than zeroized and freed while the
/// client is online. A spent pad is never handed out again: only its batch's buffers are
/// reused, once every pad of the batch is spent, and overwritten whole. At most `keep` batches
/// are kept; what is let go of is zeroized.
#[derive(Default)]
pub(crate) struct SpentPads {
    batches: Vec<Arc<PadBatch>>,
    keep: usize,
}

impl SpentPads {
    /// Keeps at most `keep` batches of spent pads from now on.
    pub(crate) fn set_keep(&mut self, keep: usize) {
        self.keep = keep;
        self.batches.truncate(keep);
    }

    /// Keeps the batches of the used `pads` for their memory (up to the bound).
    pub(crate) fn put(&mut self, pads: Vec<Pad>) {
        for pad in pads {
            if self.batches.len() < self.keep && !self.batches.iter().any(|b| Arc::ptr_eq(b, &pad.batch)) {
                self.batches.push(pad.batch);
            }
        }
    }

    /// A batch of `images` whose buffers hold `r_len` and `u_len` elements, to be overwritten
    /// whole: a spent batch's, when all its pads are spent and it has the capacity (no
    /// reallocation leaves an old copy behind), else a new one.
    fn take(&mut self, images: usize, r_len: usize, u_len: usize) -> PadBatch {
        let reusable = self
            .batches
            .iter()
            .position(|b| Arc::strong_count(b) == 1 && b.r.capacity() >= r_len && b.u.capacity() >= u_len);
        match reusable.map(|i| Arc::try_unwrap(self.batches.swap_remove(i))) {
            Some(Ok(mut batch)) => {
                batch.r.resize(r_len, 0);
                batch.u.resize(u_len, 0);
                batch.images = images;
                batch
            }
            _ => PadBatch { r: vec![0; r_len], u: Vec::with_capacity(u_len), images },
        }
    }
}

/// A queue of pads bound to one layer and one session key.
pub struct PadPool {
    layer: String,
    session: u64,
    pads: VecDeque<Pad>,
}

impl std::fmt::Debug for PadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PadPool").field("layer", &self.layer).field("pads", &self.pads.len()).finish_non_exhaustive()
    }
}

impl PadPool {
    /// Precomputes `count` pads for the layer `layer` under `key`, whose plain kernel is `kernel`
    /// (field elements, `Cout × Cin/G × kh × kw`): `R` from a fresh seed of the client's CSPRNG
    /// expanded by the share generator, `U = Conv(K, R)` on `backend`, which must be the
    /// client's own (a CPU or GPU backend in its process, never the cloud).
    ///
    /// # Errors
    /// [`Error::LengthMismatch`], [`Error::TooLarge`] for a pool that does not fit in memory,
    /// and the backend's errors.
    pub fn generate(
        layer: &str,
        key: &SessionKey,
        kernel: &[u32],
        count: usize,
        backend: &dyn CloudBackend,
        rng: &mut KeyRng,
    ) -> Result<Self> {
        Self::generate_into(layer, key, kernel, count, backend, rng, &mut SpentPads::default())
    }

    /// [`PadPool::generate`] into the memory of a spent batch of pads where there is one (it is
    /// overwritten whole: no page is allocated, faulted in or freed for it). The pads are made
    /// in one batch, in place: no copy of `R` or `U` is made.
    pub(crate) fn generate_into(
        layer: &str,
        key: &SessionKey,
        kernel: &[u32],
        count: usize,
        backend: &dyn CloudBackend,
        rng: &mut KeyRng,
        spent: &mut SpentPads,
    ) -> Result<Self> {
        let g = key.geometry();
        let too_large = || Error::TooLarge { what: "pad pool", value: count };
        let r_len = count.checked_mul(g.image_len()).ok_or_else(too_large)?;
        let u_len = count.checked_mul(g.output_image_len()).ok_or_else(too_large)?;
        if count == 0 {
            return Ok(Self { layer: layer.to_string(), session: key.id(), pads: VecDeque::new() });
        }
        let mut batch = spent.take(count, r_len, u_len);
        expand_into(ShareSeed::generate(rng).as_bytes(), &mut batch.r);
        backend.conv_into(g, count, kernel, &batch.r, &mut batch.u)?;
        Conv2d::check_len("offline mask convolution", u_len, batch.u.len())?;
        let batch = Arc::new(batch);
        let pads = (0..count).map(|image| Pad { batch: Arc::clone(&batch), image }).collect();
        Ok(Self { layer: layer.to_string(), session: key.id(), pads })
    }

    /// The layer the pads were made for.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// Pads left.
    pub fn len(&self) -> usize {
        self.pads.len()
    }

    /// True when no pad is left.
    pub fn is_empty(&self) -> bool {
        self.pads.is_empty()
    }

    /// Checks that the pool was made for `layer` under `key`.
    ///
    /// # Errors
    /// [`Error::PadMismatch`] naming what differs.
    pub fn check_binding(&self, layer: &str, key: &SessionKey) -> Result<()> {
        if self.layer != layer {
            return Err(Error::PadMismatch {
                layer: layer.to_string(),
                reason: format!("the pads were made for layer `{}`", self.layer),
            });
        }
        if self.session != key.id() {
            return Err(Error::PadMismatch {
                layer: layer.to_string(),
                reason: "the pads were made under another session key (the key was rotated, or they belong to another client)".into(),
            });
        }
        Ok(())
    }

    /// Moves the pads of `other` (same layer and key) to the back of this pool.
    ///
    /// # Errors
    /// [`Error::PadMismatch`] when `other` is bound to another layer or key; its pads are
    /// dropped.
    pub fn append(&mut self, mut other: PadPool) -> Result<()> {
        if other.layer != self.layer || other.session != self.session {
            return Err(Error::PadMismatch {
                layer: self.layer.clone(),
                reason: format!("cannot merge pads made for layer `{}` under another key", other.layer),
            });
        }
        self.pads.append(&mut other.pads);
        Ok(())
    }

    /// Takes `n` pads out of the pool, by value.
    ///
    /// # Errors
    /// [`Error::PadPoolExhausted`] when fewer than `n` are left (then none is taken).
    pub fn take(&mut self, n: usize) -> Result<Vec<Pad>> {
        if self.pads.len() < n {
            return Err(Error::PadPoolExhausted { layer: self.layer.clone(), needed: n, available: self.pads.len() });
        }
        Ok(self.pads.drain(..n).collect())
    }
}
