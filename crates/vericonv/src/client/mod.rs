//! The client side of one private convolution layer: it owns the plain kernel and every secret,
//! and runs keygen → encrypt → (cloud) → verify → decrypt for each batch, in any of the four
//! privacy modes ([`Privacy`]). What differs between the modes (what the client draws, sends to
//! which clouds, verifies and unmasks) lives in one module per mode under `modes/`, behind one
//! trait; [`PrivateConv`] runs the steps they share.

mod buffers;
mod modes;

use std::time::{Duration, Instant};

use rayon::prelude::*;

pub use buffers::{AnswerBuffers, CallBuffers};
use modes::{AnySecrets, Layer, Masking, MaskingMode, mode_mismatch, recycle, secrets_of, with_masking};

use crate::Cheater;
use crate::cloud::{CloudBackend, Clouds, CpuBackend, SessionKernel};
use crate::decrypt::{ImageTables, decrypt_image_into};
use crate::encrypt::encrypt_kernel;
use crate::field::{M31, PrimeField, SmallInt, slices};
use crate::geometry::Conv2d;
use crate::keys::{KeyRng, SessionKey};
use crate::pad::{PadPool, SpentPads};
use crate::privacy::Privacy;
use crate::verify::{KernelTerm, Mode};
use crate::{Error, Result};

/// Settings of one private layer.
#[derive(Clone, Debug)]
pub struct LayerConfig {
    /// Name used in errors and reports.
    pub name: String,
    /// How inputs are masked (default `lowrank` with ρ = 2, the paper's scheme).
    pub privacy: Privacy,
    /// Verification mode (default Fast).
    pub mode: Mode,
    /// Independent verification rounds (default 1).
    pub rounds: usize,
    /// Bound `Bx` on the magnitude of the integer inputs (default 127, 8-bit data).
    pub input_bound: u32,
    /// Draw a new session key after this many images; `None` keeps one key for the layer's
    /// lifetime.
    pub rotate_after_images: Option<u64>,
}

impl Default for LayerConfig {
    fn default() -> Self {
        Self {
            name: "conv".into(),
            privacy: Privacy::default(),
            mode: Mode::Fast,
            rounds: 1,
            input_bound: 127,
            rotate_after_images: None,
        }
    }
}

/// Batches of spent pads whose memory a layer keeps for [`PrivateConv::refill_pads`]: the
/// one in use and the one being refilled.
pub const SPENT_BATCHES: usize = 2;

/// Wall-clock time of each phase of one private call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Session setup: key generation, kernel encryption and `KG` (only when a session starts).
    pub keygen: Duration,
    /// Per-image mask generation and input encryption (in mode `two-server`: expanding cloud
    /// A's share and forming cloud B's).
    pub encrypt: Duration,
    /// The cloud's convolution, transfers included.
    pub cloud: Duration,
    /// Verification of the answer.
    pub verify: Duration,
    /// Decryption (mask correction and lift; in mode `two-server` the sum of the two answers,
    /// and with Fast verification also the output side of verification, fused into the same
    /// pass) and bias.
    pub decrypt: Duration,
    /// Modes `pad` and `split-model`: pads drawn on the client's own CPU just before the call,
    /// because too few were prepared (offline work: not in [`Timings::client`]).
    pub offline: Duration,
}

impl Timings {
    /// Time spent on the client: everything but the cloud.
    pub fn client(&self) -> Duration {
        self.keygen + self.encrypt + self.verify + self.decrypt
    }
}

impl std::ops::AddAssign for Timings {
    fn add_assign(&mut self, o: Self) {
        self.keygen += o.keygen;
        self.encrypt += o.encrypt;
        self.cloud += o.cloud;
        self.verify += o.verify;
        self.decrypt += o.decrypt;
        self.offline += o.offline;
    }
}

/// One batch of a layer between [`PrivateConv::start`] and [`PrivateConv::send`]: its images
/// are encrypted one by one, in any order and in parallel, with
/// [`PrivateConv::encrypt_image`]. It holds the batch's secrets (masks, pads or seed), which it
/// never prints; they are zeroized when dropped.
pub struct Pending {
    batch: usize,
    session: u64,
    secrets: AnySecrets,
    timings: Timings,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("batch", &self.batch).finish_non_exhaustive()
    }
}

/// A batch's answer that passed verification: only [`PrivateConv::send`] makes one, after the
/// answer was checked, and [`PrivateConv::decrypt_image`] decrypts nothing else. A rejected
/// answer never becomes an `Answer`, so it cannot be decrypted; nor can one be made by hand:
///
/// ```compile_fail
/// # fn f(y: Vec<u32>) {
/// let forged = vericonv::Answer { batch: 1, y }; // private fields
/// # }
/// ```
pub struct Answer {
    batch: usize,
    session: u64,
    secrets: AnySecrets,
    tables: Vec<ImageTables>,
    y: Vec<u32>,
    yb: Option<Vec<u32>>,
    timings: Timings,
}

impl Answer {
    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The batch's time so far: session setup (`keygen`), the cloud and verification.
    pub fn timings(&self) -> Timings {
        self.timings
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer").field("batch", &self.batch).finish_non_exhaustive()
    }
}

/// The plain kernel in the smallest integer type that holds it: Fast verification's kernel term
/// reads it rather than `K'` (a quarter of the bytes for 8-bit weights).
enum SmallKernel {
    Bits8(Vec<i8>),
    Bits16(Vec<i16>),
    /// Weights beyond 16 bits: the kernel term reads `K'`.
    Wide,
}

impl SmallKernel {
    fn new(kernel: &[i32]) -> Self {
        let bw = kernel.iter().map(|k| k.unsigned_abs()).max().unwrap_or(0);
        if bw <= i8::MAX as u32 {
            Self::Bits8(kernel.iter().map(|&k| k as i8).collect())
        } else if bw <= i16::MAX as u32 {
            Self::Bits16(kernel.iter().map(|&k| k as i16).collect())
        } else {
            Self::Wide
        }
    }

    /// The kernel term of verification, given `K'`.
    fn term<'a>(&'a self, kp: &'a [u32]) -> KernelTerm<'a> {
        match self {
            Self::Bits8(k) => KernelTerm::Plain8(k),
            Self::Bits16(k) => KernelTerm::Plain16(k),
            Self::Wide => KernelTerm::Encrypted(kp),
        }
    }
}

impl Drop for SmallKernel {
    fn drop(&mut self) {
        match self {
            Self::Bits8(k) => zeroize::Zeroize::zeroize(k),
            Self::Bits16(k) => zeroize::Zeroize::zeroize(k),
            Self::Wide => {}
        }
    }
}

/// One convolution layer run privately on untrusted clouds.
pub struct PrivateConv {
    cfg: LayerConfig,
    geom: Conv2d,
    kernel: Vec<u32>,
    small_kernel: SmallKernel,
    bias: Option<Vec<i32>>,
    key: SessionKey,
    kernel_enc: SessionKernel,
    masking: Masking,
    /// Mode `pad`: the memory of used pads, for [`PrivateConv::refill_pads`] to overwrite.
    spent_pads: SpentPads,
    images_in_session: u64,
    setup_time: Duration,
}

impl Drop for PrivateConv {
    fn drop(&mut self) {
        // The plain kernel is the client's model: not left in freed memory.
        zeroize::Zeroize::zeroize(&mut self.kernel);
    }
}

impl std::fmt::Debug for PrivateConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateConv")
            .field("name", &self.cfg.name)
            .field("privacy", &self.cfg.privacy)
            .field("geom", &self.geom)
            .finish_non_exhaustive()
    }
}

/// Checks the exactness bound of docs/scheme.md §2, `M·Bx·Bw + Bb <= (p-1)/2`, for layer `layer`.
///
/// # Errors
/// [`Error::ExactnessBound`] naming the layer and every term.
pub fn check_exactness(layer: &str, m: u64, bx: u64, bw: u64, bb: u64) -> Result<()> {
    let total = m.saturating_mul(bx).saturating_mul(bw).saturating_add(bb);
    let limit = u64::from(M31::HALF);
    if total > limit {
        return Err(Error::ExactnessBound { layer: layer.into(), m, bx, bw, bb, total, limit });
    }
    Ok(())
}

/// `v mod p` for `|v| <= (p-1)/2` (checked by the caller).
fn embed(v: i32) -> u32 {
    if v < 0 { (i64::from(v) + i64::from(M31::P)) as u32 } else { v as u32 }
}

impl PrivateConv {
    /// Builds the layer: checks the exactness bound `M·Bx·Bw + Bb <= (p-1)/2` (docs/scheme.md §2),
    /// draws the first session key and encrypts the kernel.
    ///
    /// `kernel` is `Cout × Cin/G × kh × kw` integers; `bias`, if any, has `Cout` integers and is
    /// added by the client after decryption. In mode `pad`, the layer starts without pads: add
    /// them with [`PrivateConv::generate_pads`] and [`PrivateConv::add_pads`].
    ///
    /// # Errors
    /// [`Error::LengthMismatch`], [`Error::ExactnessBound`], [`Error::InvalidRank`],
    /// [`Error::InvalidRounds`].
    pub fn new(geom: Conv2d, kernel: &[i32], bias: Option<&[i32]>, cfg: LayerConfig, rng: &mut KeyRng) -> Result<Self> {
        Conv2d::check_len("kernel", geom.kernel_len(), kernel.len())?;
        if let Some(b) = bias {
            Conv2d::check_len("bias", geom.cout(), b.len())?;
        }
        if cfg.rounds == 0 {
            return Err(Error::InvalidRounds);
        }
        let bw = kernel.iter().map(|&k| u64::from(k.unsigned_abs())).max().unwrap_or(0);
        let bb = bias.map_or(0, |b| b.iter().map(|&v| u64::from(v.unsigned_abs())).max().unwrap_or(0));
        check_exactness(&cfg.name, geom.m() as u64, u64::from(cfg.input_bound), bw, bb)?;
        let small_kernel = SmallKernel::new(kernel);
        let kernel: Vec<u32> = kernel.iter().map(|&k| embed(k)).collect();
        let start = Instant::now();
        let (key, kernel_enc, masking) = Self::session(&geom, cfg.privacy, &kernel, rng)?;
        Ok(Self {
            cfg,
            geom,
            kernel,
            small_kernel,
            bias: bias.map(<[i32]>::to_vec),
            key,
            kernel_enc,
            masking,
            spent_pads: SpentPads::default(),
            images_in_session: 0,
            setup_time: start.elapsed(),
        })
    }

    /// A fresh session: key, `K'` and the mode's per-session secrets.
    fn session(
        geom: &Conv2d,
        privacy: Privacy,
        kernel: &[u32],
        rng: &mut KeyRng,
    ) -> Result<(SessionKey, SessionKernel, Masking)> {
        let key = SessionKey::generate_for(geom, privacy, rng)?;
        // The id lets a backend that keeps kernels recognise K' for the rest of the session.
        let kernel_enc = SessionKernel::new(rand::RngExt::random(rng), *geom, encrypt_kernel(&key, kernel)?)?;
        let masking = Masking::session(privacy, geom, &key, kernel, rng)?;
        Ok((key, kernel_enc, masking))
    }

    /// Draws a new session key and re-encrypts the kernel; returns the time it took. In mode
    /// `pad` the pads of the old key are dropped: they are bound to it.
    ///
    /// # Errors
    /// Only on internal inconsistency (never for a layer built by [`PrivateConv::new`]).
    pub fn rotate(&mut self, rng: &mut KeyRng) -> Result<Duration> {
        let start = Instant::now();
        (self.key, self.kernel_enc, self.masking) = Self::session(&self.geom, self.cfg.privacy, &self.kernel, rng)?;
        self.images_in_session = 0;
        Ok(start.elapsed())
    }

    /// The layer geometry.
    pub fn geometry(&self) -> &Conv2d {
        &self.geom
    }
    /// The layer settings.
    pub fn config(&self) -> &LayerConfig {
        &self.cfg
    }
    /// The current session key (secret: never send it).
    pub fn key(&self) -> &SessionKey {
        &self.key
    }
    /// `K'`, what the cloud receives once per session.
    pub fn encrypted_kernel(&self) -> &[u32] {
        self.kernel_enc.data()
    }

    /// Mode `pad`, offline: precomputes `count` pads for this layer and its current key, with
    /// `U = Conv(K, R)` on `backend`, the client's own CPU or GPU backend (docs/scheme.md §12).
    ///
    /// # Errors
    /// [`Error::WrongPrivacyMode`] outside mode `pad`, and the errors of [`PadPool::generate`].
    pub fn generate_pads(&self, count: usize, backend: &dyn CloudBackend, rng: &mut KeyRng) -> Result<PadPool> {
        self.require_pad_mode("generating pads")?;
        PadPool::generate(&self.cfg.name, &self.key, &self.kernel, count, backend, rng)
    }

    /// Mode `pad`: adds a pool of pads made by [`PrivateConv::generate_pads`] for this layer and
    /// its current key.
    ///
    /// # Errors
    /// [`Error::WrongPrivacyMode`] outside mode `pad`; [`Error::PadMismatch`] for pads made for
    /// another layer or key (they are dropped).
    pub fn add_pads(&mut self, pool: PadPool) -> Result<()> {
        self.require_pad_mode("adding pads")?;
        pool.check_binding(&self.cfg.name, &self.key)?;
        let slot = with_masking!(&mut self.masking, m => m.pads());
        match slot {
            Some(Some(existing)) => existing.append(pool),
            Some(slot) => {
                *slot = Some(pool);
                Ok(())
            }
            None => Err(mode_mismatch(&self.cfg.name)),
        }
    }

    /// Mode `pad`: generates `count` pads for the current key on `backend` (the client's own,
    /// as [`PrivateConv::generate_pads`]) and adds them, writing them into the memory of the
    /// pads that [`PrivateConv::recycle`] took back since the last refill: a pass that refills
    /// before it runs neither zeroizes nor frees its used pads online, they are overwritten
    /// offline. The memory of the batch of pads this refill makes is kept for the next one
    /// (at most [`SPENT_BATCHES`] batches are kept).
    ///
    /// # Errors
    /// As [`PrivateConv::generate_pads`].
    pub fn refill_pads(&mut self, count: usize, backend: &dyn CloudBackend, rng: &mut KeyRng) -> Result<()> {
        self.require_pad_mode("generating pads")?;
        let pool =
            PadPool::generate_into(&self.cfg.name, &self.key, &self.kernel, count, backend, rng, &mut self.spent_pads)?;
        self.spent_pads.set_keep(SPENT_BATCHES);
        self.add_pads(pool)
    }

    /// Modes `pad` and `split-model`: draws on `own`, the client's own backend, the pads that
    /// `images` more images lack ([`PrivateConv::refill_pads`]); nothing in the other modes or
    /// when the pool holds enough. Returns the time it took (offline work).
    ///
    /// # Errors
    /// As [`PrivateConv::generate_pads`].
    pub fn draw_missing_pads(&mut self, images: usize, own: &dyn CloudBackend, rng: &mut KeyRng) -> Result<Duration> {
        let missing = images.saturating_sub(self.pads_available());
        if !self.cfg.privacy.uses_pads() || missing == 0 {
            return Ok(Duration::ZERO);
        }
        let start = Instant::now();
        self.refill_pads(missing, own, rng)?;
        Ok(start.elapsed())
    }

    /// Takes back a decrypted answer: its buffers go to `buffers` for the next call, and in mode
    /// `pad` its used pads are kept for [`PrivateConv::refill_pads`] to overwrite (if it was
    /// called; otherwise they are zeroized now). The other secrets are zeroized.
    pub fn recycle(&mut self, answer: Answer, buffers: &mut AnswerBuffers) {
        let Answer { y, yb, secrets, .. } = answer;
        buffers.give(y);
        if let Some(yb) = yb {
            buffers.give(yb);
        }
        with_masking!(&self.masking, m => recycle(m, secrets, &mut self.spent_pads));
    }

    /// Pads left (mode `pad`; 0 in the other modes).
    pub fn pads_available(&self) -> usize {
        with_masking!(&self.masking, m => m.pads_left())
    }

    fn require_pad_mode(&self, what: &'static str) -> Result<()> {
        if self.cfg.privacy.uses_pads() {
            Ok(())
        } else {
            Err(Error::WrongPrivacyMode {
                layer: self.cfg.name.clone(),
                what,
                needed: "pad or split-model",
                actual: self.cfg.privacy.name(),
            })
        }
    }

    /// Runs a batch `x` (`B × Cin × H × W` integers with `|x| <= Bx`) privately on `clouds`:
    /// one cloud for modes `lowrank` and `pad` (a `&CpuBackend` or any other backend converts
    /// into [`Clouds`]), [`Clouds::Two`] for modes `two-server` and `split-model`. In modes
    /// `pad` and `split-model`, the pads the batch lacks are drawn first on the client's own
    /// CPU ([`Timings::offline`]); prepare them with [`PrivateConv::refill_pads`] to keep that
    /// work off the call.
    ///
    /// Returns the exact integer convolution plus bias, `B × Cout × Ho × Wo`, and the time of
    /// each phase. The first call of a session also reports the session setup as `keygen`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] and [`Error::ValueOutOfRange`] for bad input;
    /// [`Error::CloudCount`] and [`Error::SameCloudTwice`] for the wrong clouds;
    /// the errors of [`PrivateConv::generate_pads`] (the pads of a call are consumed even when
    /// it fails); the cloud's own errors; [`Error::MalformedAnswer`] or
    /// [`Error::VerificationFailed`] for a wrong answer, which is never decrypted.
    pub fn run<'c>(
        &mut self,
        clouds: impl Into<Clouds<'c>>,
        x: &[i32],
        rng: &mut KeyRng,
    ) -> Result<(Vec<i32>, Timings)> {
        let batch = self.geom.batch_of_input(x.len())?;
        let mut y = vec![0i32; batch * self.geom.output_image_len()];
        let copy = |_: usize, _: std::ops::Range<usize>, ints: &[i32], out: &mut [i32]| out.copy_from_slice(ints);
        let t = self.run_into(clouds, x, rng, &mut CallBuffers::default(), &mut y, &copy)?;
        Ok((y, t))
    }

    /// [`PrivateConv::run`] with any [`SmallInt`] input (the `i8` or `i16` of quantized
    /// activations, read as they are), the caller's working memory `bufs` (reused), and the
    /// exact result handed, a piece of an output plane at a time as it is decrypted, to
    /// `epilogue(plane, range, ints, out_piece)`, which writes `out[plane·Ho·Wo + range]`
    /// (`plane = b·Cout + o`) from the piece's integers (bias included): whatever follows the
    /// layer fuses into decryption.
    ///
    /// It is [`PrivateConv::start`], [`PrivateConv::encrypt_image`] for every image,
    /// [`PrivateConv::send`] (the cloud, then verification of the whole answer) and
    /// [`PrivateConv::decrypt_image`] for every image.
    ///
    /// # Errors
    /// As [`PrivateConv::run`]; [`Error::LengthMismatch`] also when `out` does not hold
    /// `B × Cout × Ho × Wo` elements.
    pub fn run_into<'c, T, O, E>(
        &mut self,
        clouds: impl Into<Clouds<'c>>,
        x: &[T],
        rng: &mut KeyRng,
        bufs: &mut CallBuffers,
        out: &mut [O],
        epilogue: &E,
    ) -> Result<Timings>
    where
        T: SmallInt,
        O: Send,
        E: Fn(usize, std::ops::Range<usize>, &[i32], &mut [O]) + Sync,
    {
        let clouds = clouds.into();
        self.check_clouds(clouds)?;
        let batch = self.geom.batch_of_input(x.len())?;
        let out_img = self.geom.output_image_len();
        Conv2d::check_len("output buffer", batch * out_img, out.len())?;
        // Before a pad is taken.
        self.check_input(x, 0)?;
        let pending = self.start_or_draw_pads(batch, &CpuBackend::new(), rng)?;
        let img = self.geom.image_len();
        bufs.sent.resize(x.len(), 0);
        let start = Instant::now();
        let this = &*self;
        bufs.sent
            .par_chunks_mut(img)
            .zip(x.par_chunks(img))
            .enumerate()
            .try_for_each(|(b, (sent, xb))| this.encrypt_image(&pending, b, xb, sent))?;
        let encrypt = start.elapsed();
        let answer = self.send(pending, clouds, &bufs.sent, x, rng, &mut bufs.answers)?;
        let start = Instant::now();
        let this = &*self;
        let decrypted =
            out.par_chunks_mut(out_img).enumerate().try_for_each(|(b, o)| this.decrypt_image(&answer, b, o, epilogue));
        let mut t = answer.timings;
        self.recycle(answer, &mut bufs.answers);
        decrypted?;
        t.encrypt += encrypt;
        t.decrypt += start.elapsed();
        Ok(t)
    }

    fn check_clouds(&self, clouds: Clouds<'_>) -> Result<()> {
        let privacy = self.cfg.privacy;
        if clouds.count() != privacy.clouds() {
            return Err(Error::CloudCount { mode: privacy.name(), needed: privacy.clouds(), got: clouds.count() });
        }
        if let Clouds::Two(a, b) = clouds
            && std::ptr::addr_eq(a, b)
        {
            return Err(Error::SameCloudTwice(a.name()));
        }
        Ok(())
    }

    /// Starts a batch of `batch` images (the staged API, for callers that interleave layers
    /// image by image, such as a whole network): rotates the session key when its policy says
    /// so, and draws the batch's secrets — a fresh mask per image (mode `lowrank`), a pad per
    /// image from the pool (`pad`: gone even if the batch fails) or the seed of cloud A's share
    /// (`two-server`).
    ///
    /// # Errors
    /// [`Error::PadPoolExhausted`] in mode `pad` without enough pads.
    pub fn start(&mut self, batch: usize, rng: &mut KeyRng) -> Result<Pending> {
        self.start_with(batch, None, rng)
    }

    /// [`PrivateConv::start`], except that in modes `pad` and `split-model` the pads the batch
    /// lacks are first drawn on `own`, the client's own backend, and that time is reported as
    /// [`Timings::offline`] (what the one-shot calls do when no pads were prepared).
    ///
    /// # Errors
    /// As [`PrivateConv::start`] and [`PrivateConv::generate_pads`].
    pub fn start_or_draw_pads(&mut self, batch: usize, own: &dyn CloudBackend, rng: &mut KeyRng) -> Result<Pending> {
        self.start_with(batch, Some(own), rng)
    }

    fn start_with(&mut self, batch: usize, own: Option<&dyn CloudBackend>, rng: &mut KeyRng) -> Result<Pending> {
        let mut timings = Timings::default();
        if self.cfg.rotate_after_images.is_some_and(|n| self.images_in_session >= n) {
            timings.keygen = self.rotate(rng)?;
        } else if self.images_in_session == 0 {
            timings.keygen = self.setup_time;
        }
        if let Some(own) = own {
            timings.offline = self.draw_missing_pads(batch, own, rng)?;
        }
        let start = Instant::now();
        let (layer, key) = (&self.cfg.name, &self.key);
        let secrets: AnySecrets = with_masking!(&mut self.masking, m => Box::new(m.draw(layer, key, batch, rng)?));
        timings.encrypt = start.elapsed();
        self.images_in_session += batch as u64;
        Ok(Pending { batch, session: self.key.id(), secrets, timings })
    }

    /// Encrypts image `b` of a pending batch, `x` (`Cin × H × W` small integers with
    /// `|x| <= Bx`), into `sent`, the image's part of the tensor sent to the cloud (`X'`, or
    /// in mode `two-server` cloud B's share). Images may be encrypted in any order and in
    /// parallel.
    ///
    /// # Errors
    /// [`Error::ValueOutOfRange`] for an input beyond the bound; [`Error::LengthMismatch`]
    /// for buffers that are not one image, an image beyond the batch, or a batch started under
    /// another session key.
    pub fn encrypt_image<T: SmallInt>(&self, pending: &Pending, b: usize, x: &[T], sent: &mut [u32]) -> Result<()> {
        self.check_session(pending.session, pending.batch, b)?;
        let img = self.geom.image_len();
        Conv2d::check_len("image", img, x.len())?;
        self.check_input(x, b * img)?;
        with_masking!(&self.masking, m => {
            let secrets = secrets_of(m, &pending.secrets, &self.cfg.name)?;
            m.encrypt_image(&self.key, secrets, b, x, sent)
        })
    }

    /// Sends a pending batch to `clouds` and verifies the whole answer, before anything is
    /// decrypted: `sent` is the batch's encrypted tensor (every image encrypted with
    /// [`PrivateConv::encrypt_image`]) and `x` its plain input (Fast verification's input side
    /// reads it rather than `X'`). Only an accepted answer comes back, as an [`Answer`]. The
    /// clouds write their answers into buffers taken from `answers` (give them back with
    /// [`PrivateConv::recycle`] once the answer is decrypted; those of a failed call go back
    /// by themselves).
    ///
    /// # Errors
    /// As [`PrivateConv::run`].
    pub fn send<'c, T: SmallInt>(
        &mut self,
        pending: Pending,
        clouds: impl Into<Clouds<'c>>,
        sent: &[u32],
        x: &[T],
        rng: &mut KeyRng,
        answers: &mut AnswerBuffers,
    ) -> Result<Answer> {
        let clouds = clouds.into();
        self.check_clouds(clouds)?;
        self.check_session(pending.session, pending.batch, 0)?;
        Conv2d::check_len("encrypted input", pending.batch * self.geom.image_len(), sent.len())?;
        Conv2d::check_len("input", sent.len(), x.len())?;
        with_masking!(&self.masking, m => self.send_with(m, pending, clouds, sent, x, rng, answers))
    }

    /// Decrypts image `b` of a verified answer into `out` (`Cout × Ho × Wo`), a piece of an
    /// output plane at a time through `epilogue`, as [`PrivateConv::run_into`] describes.
    /// Images may be decrypted in any order and in parallel.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] for an output that is not one image, an image beyond the
    /// batch, or an answer of another session key.
    pub fn decrypt_image<O, E>(&self, answer: &Answer, b: usize, out: &mut [O], epilogue: &E) -> Result<()>
    where
        O: Send,
        E: Fn(usize, std::ops::Range<usize>, &[i32], &mut [O]) + Sync,
    {
        self.check_session(answer.session, answer.batch, b)?;
        with_masking!(&self.masking, m => {
            let secrets = secrets_of(m, &answer.secrets, &self.cfg.name)?;
            let unmask = m.unmask(secrets, &answer.tables, answer.yb.as_deref()).ok_or_else(|| mode_mismatch(&self.cfg.name))?;
            decrypt_image_into(&self.key, &unmask, &answer.y, b, self.bias.as_deref(), out, epilogue)
        })
    }

    /// Checks `|x| <= Bx` (and `<= (p-1)/2`, which embedding needs whatever the configured
    /// bound); `offset` is where `x` starts in the batch, for the error's index.
    fn check_input<T: SmallInt>(&self, x: &[T], offset: usize) -> Result<()> {
        let bound = self.cfg.input_bound.min(M31::HALF);
        if slices::max_abs_small(x) <= bound {
            return Ok(());
        }
        let i = x.iter().position(|v| v.get().unsigned_abs() > bound).unwrap_or(0);
        Err(Error::ValueOutOfRange {
            layer: self.cfg.name.clone(),
            what: "input",
            index: offset + i,
            value: i64::from(x[i].get()),
            bound: u64::from(bound),
        })
    }

    /// Checks that a batch belongs to the current session key and has image `b`.
    fn check_session(&self, session: u64, batch: usize, b: usize) -> Result<()> {
        if session != self.key.id() {
            return Err(Error::LengthMismatch { what: "batch of the current session key", expected: 1, got: 0 });
        }
        if b >= batch.max(1) {
            return Err(Error::LengthMismatch { what: "image of the batch", expected: batch, got: b + 1 });
        }
        Ok(())
    }

    /// The layer as a mode reads it while it sends a batch and verifies the answer.
    fn layer(&self) -> Layer<'_> {
        Layer {
            name: &self.cfg.name,
            geom: &self.geom,
            key: &self.key,
            kernel_enc: &self.kernel_enc,
            term: self.small_kernel.term(self.kernel_enc.data()),
            mode: self.cfg.mode,
            rounds: self.cfg.rounds,
            bound: self.cfg.input_bound.min(M31::HALF),
        }
    }

    /// [`PrivateConv::send`] in mode `M`, once the batch and buffers are checked: the tensor
    /// that goes out, the clouds, then verification of the whole answer (a rejected answer's
    /// buffers go back to `answers`).
    #[allow(clippy::too_many_arguments)]
    fn send_with<M: MaskingMode, T: SmallInt>(
        &self,
        m: &M,
        pending: Pending,
        clouds: Clouds<'_>,
        sent: &[u32],
        x: &[T],
        rng: &mut KeyRng,
        answers: &mut AnswerBuffers,
    ) -> Result<Answer> {
        let Pending { batch, session, secrets: any, mut timings } = pending;
        let secrets = secrets_of(m, &any, &self.cfg.name)?;
        let layer = self.layer();
        let start = Instant::now();
        let mut remade = Vec::new();
        let sent = M::outgoing(&self.key, secrets, x, sent, &mut remade)?;
        timings.encrypt += start.elapsed();
        let start = Instant::now();
        let len = batch * self.geom.output_image_len();
        let mut y = answers.take(len);
        let mut yb = (clouds.count() == 2).then(|| answers.take(len));
        let called = m.call(&layer, secrets, clouds, batch, sent, &mut y, yb.as_mut());
        timings.cloud = start.elapsed();
        let start = Instant::now();
        let checked = called.and_then(|()| {
            self.check_answer_len(batch, &y, yb.as_ref().map(|_| "cloud A"))?;
            if let Some(yb) = &yb {
                self.check_answer_len(batch, yb, Some("cloud B"))?;
            }
            self.verify_answer(m, &layer, secrets, batch, sent, x, (&y, yb.as_deref()), rng)
        });
        if let Err(e) = checked {
            answers.give(y);
            if let Some(yb) = yb {
                answers.give(yb);
            }
            return Err(e);
        }
        let tables = M::tables(&self.key, secrets);
        timings.verify = start.elapsed();
        Ok(Answer { batch, session, secrets: any, tables, y, yb, timings })
    }

    /// Verifies a whole answer (`y`, and cloud B's `yb` in the two-cloud modes) in the
    /// configured mode and rounds: Fast mode's input side as mode `M` draws it, its output side
    /// in one pass over the answer; Strict mode on the mode's claim. A non-canonical entry is
    /// [`Error::MalformedAnswer`]; a failed round is [`Error::VerificationFailed`], naming the
    /// cloud the mode blames.
    #[allow(clippy::too_many_arguments)]
    fn verify_answer<M: MaskingMode, T: SmallInt>(
        &self,
        m: &M,
        layer: &Layer<'_>,
        secrets: &M::Secrets,
        batch: usize,
        sent: &[u32],
        x: &[T],
        (y, yb): (&[u32], Option<&[u32]>),
        rng: &mut KeyRng,
    ) -> Result<()> {
        let answers = [(y, yb.map(|_| "cloud A")), (yb.unwrap_or_default(), Some("cloud B"))];
        let answers = &answers[..1 + usize::from(yb.is_some())];
        let rejected = if self.cfg.mode == Mode::Fast {
            let checks = M::fast_rounds(layer, secrets, batch, sent, x, y, rng)?;
            let (rejected, max) = checks.check_output(&self.geom, y, yb);
            if max >= M31::P {
                return Err(self.malformed(batch, answers));
            }
            rejected
        } else {
            for &(answer, cloud) in answers {
                self.check_answer(batch, answer, cloud)?;
            }
            M::strict(layer, secrets, batch, sent, (y, yb), rng)?
        };
        let Some(round) = rejected else { return Ok(()) };
        Err(self.rejected(round, m.blame(layer, secrets, batch, sent, (y, yb), rng)?))
    }

    fn rejected(&self, round: usize, cheater: Cheater) -> Error {
        Error::VerificationFailed { layer: self.cfg.name.clone(), mode: self.cfg.mode.name(), round, cheater }
    }

    /// The error for an answer that the fused pass found malformed: the first of `answers`
    /// (with the cloud's name) that [`PrivateConv::check_answer`] refuses.
    fn malformed(&self, batch: usize, answers: &[(&[u32], Option<&str>)]) -> Error {
        answers
            .iter()
            .find_map(|&(y, cloud)| self.check_answer(batch, y, cloud).err())
            .unwrap_or_else(|| Error::Internal(format!("layer `{}`: malformed answer not found", self.cfg.name)))
    }

    /// An answer of the wrong length is refused before anything reads it.
    fn check_answer_len(&self, batch: usize, yp: &[u32], cloud: Option<&str>) -> Result<()> {
        if yp.len() == batch * self.geom.output_image_len() { Ok(()) } else { self.check_answer(batch, yp, cloud) }
    }

    fn check_answer(&self, batch: usize, yp: &[u32], cloud: Option<&str>) -> Result<()> {
        let expected = batch * self.geom.output_image_len();
        let reason = if yp.len() != expected {
            format!("{} elements, expected {expected}", yp.len())
        } else if let Some(i) = yp.iter().position(|&v| v >= M31::P) {
            format!("entry {i} = {} is not below p", yp[i])
        } else {
            return Ok(());
        };
        let reason = match cloud {
            Some(c) => format!("{c}: {reason}"),
            None => reason,
        };
        Err(Error::MalformedAnswer { layer: self.cfg.name.clone(), reason })
    }
}
