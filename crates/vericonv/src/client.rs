//! The client side of one private convolution layer: it owns the plain kernel and every secret,
//! and runs keygen → encrypt → (cloud) → verify → decrypt for each batch, in any of the three
//! privacy modes ([`Privacy`]).

use std::time::{Duration, Instant};

use crate::cloud::{Cheater, CloudBackend, Clouds, SessionKernel};
use crate::decrypt::{
    MaskKernel, Outcome, Unmask, decrypt, decrypt_padded_into, decrypt_sum_into, decrypt_verified_into,
};
use crate::encrypt::{
    encrypt_input_into, encrypt_kernel, encrypt_padded_into, encrypt_padded_small_into, encrypt_shares_into,
    encrypt_small_into, split_share_small_into,
};
use crate::field::{M31, PrimeField, SmallInt, slices};
use crate::geometry::Conv2d;
use crate::keys::{ImageMask, KeyRng, SessionKey};
use crate::pad::PadPool;
use crate::privacy::Privacy;
use crate::share::ShareSeed;
use crate::verify::{Claim, FastRounds, Mode, Verdict, verify};
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
    }
}

/// The per-session secrets that depend on the privacy mode.
enum Masking {
    /// `KG_t` for the separable mask correction.
    LowRank(MaskKernel),
    /// Nothing beyond the key.
    TwoServer,
    /// The precomputed pads of the current session key.
    Pad(Option<PadPool>),
}

/// Working memory of [`PrivateConv::run_into`], kept by the caller across calls and layers so
/// that a stream of batches allocates (and page-faults) nothing: the tensor sent to the cloud
/// and the spatial factors of mode `lowrank`'s masks. The factors are secret: the buffers print
/// only their sizes and are zeroized on drop.
#[derive(Default)]
pub struct CallBuffers {
    sent: Vec<u32>,
    spatial: Vec<u32>,
}

impl CallBuffers {
    /// `sent` holding exactly `len` elements (their values are overwritten by the caller).
    fn sent(&mut self, len: usize) -> &mut [u32] {
        self.sent.resize(len, 0);
        &mut self.sent
    }
}

impl std::fmt::Debug for CallBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallBuffers").field("sent", &self.sent.len()).field("spatial", &self.spatial.len()).finish()
    }
}

impl Drop for CallBuffers {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.spatial);
    }
}

/// One convolution layer run privately on untrusted clouds.
pub struct PrivateConv {
    cfg: LayerConfig,
    geom: Conv2d,
    kernel: Vec<u32>,
    bias: Option<Vec<i32>>,
    key: SessionKey,
    kernel_enc: SessionKernel,
    masking: Masking,
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

/// Checks the exactness bound of SCHEME.md §2, `M·Bx·Bw + Bb <= (p-1)/2`, for layer `layer`.
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

/// Runs `rounds` of `mode` on `claim` only to learn whether it holds (the per-share re-checks
/// of mode two-server): `Ok(None)` when accepted, `Ok(Some(round))` when rejected.
fn check_claim(claim: &Claim<'_>, mode: Mode, rounds: usize, rng: &mut KeyRng) -> Result<Option<usize>> {
    Ok(match verify::<M31, _>(claim, mode, rounds, rng)? {
        Verdict::Accepted(_) => None,
        Verdict::Rejected { round } => Some(round),
    })
}

impl PrivateConv {
    /// Builds the layer: checks the exactness bound `M·Bx·Bw + Bb <= (p-1)/2` (SCHEME.md §2),
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
        let kernel: Vec<u32> = kernel.iter().map(|&k| embed(k)).collect();
        let start = Instant::now();
        let (key, kernel_enc, masking) = Self::session(&geom, cfg.privacy, &kernel, rng)?;
        Ok(Self {
            cfg,
            geom,
            kernel,
            bias: bias.map(<[i32]>::to_vec),
            key,
            kernel_enc,
            masking,
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
        let masking = match privacy {
            Privacy::LowRank { .. } => Masking::LowRank(MaskKernel::new(&key, kernel)?),
            Privacy::TwoServer => Masking::TwoServer,
            Privacy::Pad => Masking::Pad(None),
        };
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
    /// `U = Conv(K, R)` on `backend`, the client's own CPU or GPU backend (SCHEME.md §12).
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
        if let Masking::Pad(slot) = &mut self.masking {
            match slot {
                Some(existing) => existing.append(pool)?,
                None => *slot = Some(pool),
            }
        }
        Ok(())
    }

    /// Pads left (mode `pad`; 0 in the other modes).
    pub fn pads_available(&self) -> usize {
        match &self.masking {
            Masking::Pad(Some(pool)) => pool.len(),
            _ => 0,
        }
    }

    fn require_pad_mode(&self, what: &'static str) -> Result<()> {
        if self.cfg.privacy == Privacy::Pad {
            Ok(())
        } else {
            Err(Error::WrongPrivacyMode {
                layer: self.cfg.name.clone(),
                what,
                needed: Privacy::Pad.name(),
                actual: self.cfg.privacy.name(),
            })
        }
    }

    /// Runs a batch `x` (`B × Cin × H × W` integers with `|x| <= Bx`) privately on `clouds`:
    /// one cloud for modes `lowrank` and `pad` (a `&CpuBackend` or any other backend converts
    /// into [`Clouds`]), [`Clouds::Two`] for mode `two-server`.
    ///
    /// Returns the exact integer convolution plus bias, `B × Cout × Ho × Wo`, and the time of
    /// each phase. The first call of a session also reports the session setup as `keygen`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] and [`Error::ValueOutOfRange`] for bad input;
    /// [`Error::CloudCount`] and [`Error::SameCloudTwice`] for the wrong clouds;
    /// [`Error::PadPoolExhausted`] in mode `pad` without enough pads (the pads of a call are
    /// consumed even when it fails); the cloud's own errors; [`Error::MalformedAnswer`] or
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

    /// [`PrivateConv::run`] for the hot path of a whole network: the input is any
    /// [`SmallInt`] (the `i8` or `i16` of quantized activations, read as they are), the working
    /// memory `bufs` is the caller's and reused, and the exact result is not returned but handed,
    /// an output row at a time as it is decrypted, to `epilogue(plane, range, ints, out_row)`,
    /// which writes `out[plane·Ho·Wo + range]` (`plane = b·Cout + o`) from the row's integers
    /// (bias included): de-quantization and the layers that follow fuse into decryption.
    ///
    /// In Fast mode, verification and decryption are one pass over the answer (its input side
    /// reads `x` itself, not `X'`): if the answer is rejected, or malformed, `out` is zeroed
    /// before the error returns, so nothing decrypted from it leaves this call.
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
        O: Copy + Default + Send,
        E: Fn(usize, std::ops::Range<usize>, &[i32], &mut [O]) + Sync,
    {
        let clouds = clouds.into();
        let privacy = self.cfg.privacy;
        if clouds.count() != privacy.clouds() {
            return Err(Error::CloudCount { mode: privacy.name(), needed: privacy.clouds(), got: clouds.count() });
        }
        if let Clouds::Two(a, b) = clouds
            && std::ptr::addr_eq(a, b)
        {
            return Err(Error::SameCloudTwice(a.name()));
        }
        let batch = self.geom.batch_of_input(x.len())?;
        Conv2d::check_len("output buffer", batch * self.geom.output_image_len(), out.len())?;
        // Embedding needs |x| <= (p-1)/2 whatever the configured bound.
        let bound = self.cfg.input_bound.min(M31::HALF);
        if slices::max_abs_small(x) > bound {
            let index = x.iter().position(|v| v.get().unsigned_abs() > bound).unwrap_or(0);
            return Err(Error::ValueOutOfRange {
                layer: self.cfg.name.clone(),
                what: "input",
                index,
                value: i64::from(x[index].get()),
                bound: u64::from(bound),
            });
        }
        let mut t = Timings::default();
        if self.cfg.rotate_after_images.is_some_and(|n| self.images_in_session >= n) {
            t.keygen = self.rotate(rng)?;
        } else if self.images_in_session == 0 {
            t.keygen = self.setup_time;
        }
        self.images_in_session += batch as u64;
        if self.cfg.mode == Mode::Strict {
            let x: Vec<u32> = x.iter().map(|v| embed(v.get())).collect();
            let mut y = match clouds {
                Clouds::One(cloud) => self.strict_one(cloud, batch, &x, rng, &mut t)?,
                Clouds::Two(a, b) => self.strict_two(a, b, batch, &x, rng, &mut t)?,
            };
            let start = Instant::now();
            let (n, wo) = (self.geom.n(), self.geom.wo());
            for (plane, (ints, dst)) in y.chunks_exact_mut(n).zip(out.chunks_exact_mut(n)).enumerate() {
                if let Some(bias) = &self.bias {
                    let b = bias[plane % self.geom.cout()];
                    ints.iter_mut().for_each(|v| *v += b);
                }
                for (row, (ints, dst)) in ints.chunks_exact(wo).zip(dst.chunks_exact_mut(wo)).enumerate() {
                    epilogue(plane, row * wo..(row + 1) * wo, ints, dst);
                }
            }
            t.decrypt += start.elapsed();
            return Ok(t);
        }
        match clouds {
            Clouds::One(cloud) => self.fast_one(cloud, batch, x, bound, rng, bufs, out, epilogue, &mut t)?,
            Clouds::Two(a, b) => self.fast_two(a, b, batch, x, bound, rng, bufs, out, epilogue, &mut t)?,
        }
        Ok(t)
    }

    /// Fast mode, modes `lowrank` and `pad`: one cloud; verification fused into decryption.
    #[allow(clippy::too_many_arguments)]
    fn fast_one<T, O, E>(
        &mut self,
        cloud: &dyn CloudBackend,
        batch: usize,
        x: &[T],
        bound: u32,
        rng: &mut KeyRng,
        bufs: &mut CallBuffers,
        out: &mut [O],
        epilogue: &E,
        t: &mut Timings,
    ) -> Result<()>
    where
        T: SmallInt,
        O: Copy + Default + Send,
        E: Fn(usize, std::ops::Range<usize>, &[i32], &mut [O]) + Sync,
    {
        let start = Instant::now();
        let CallBuffers { sent, spatial } = bufs;
        sent.resize(x.len(), 0);
        let xp = sent.as_mut_slice();
        let secrets = match &self.masking {
            Masking::LowRank(_) => {
                let masks = ImageMask::generate_batch(&self.key, batch, rng);
                encrypt_small_into(&self.key, &masks, x, xp, spatial)?;
                OneCloudSecrets::Masks(masks)
            }
            Masking::Pad(_) => {
                let pads = self.take_pads(batch)?;
                encrypt_padded_small_into(&self.key, &pads, x, xp)?;
                OneCloudSecrets::Pads(pads)
            }
            Masking::TwoServer => return Err(mode_mismatch(&self.cfg.name)),
        };
        t.encrypt = start.elapsed();

        let start = Instant::now();
        let yp = cloud.conv_session(&self.kernel_enc, batch, xp)?;
        t.cloud = start.elapsed();
        self.check_answer_len(batch, &yp, None)?;

        let start = Instant::now();
        let kp = self.kernel_enc.data();
        let rounds = self.cfg.rounds;
        let checks = match &secrets {
            OneCloudSecrets::Masks(masks) => FastRounds::draw_plain(&self.key, kp, x, bound, masks, rounds, rng)?,
            OneCloudSecrets::Pads(_) => {
                FastRounds::draw::<M31, _>(&Claim::new(&self.geom, batch, kp, xp, &yp)?, rounds, rng)?
            }
        };
        t.verify = start.elapsed();

        let start = Instant::now();
        let unmask = match (&self.masking, &secrets) {
            (Masking::LowRank(mk), OneCloudSecrets::Masks(masks)) => Unmask::LowRank { mk, masks },
            (_, OneCloudSecrets::Pads(pads)) => Unmask::Pad(pads),
            (_, OneCloudSecrets::Masks(_)) => return Err(mode_mismatch(&self.cfg.name)),
        };
        let outcome = decrypt_verified_into(&self.key, &unmask, &yp, self.bias.as_deref(), &checks, out, epilogue)?;
        t.decrypt = start.elapsed();
        match outcome {
            Outcome::Accepted => Ok(()),
            Outcome::Rejected { round } => Err(self.rejected(round, Cheater::TheCloud)),
            Outcome::Malformed { .. } => Err(self.malformed(batch, &[(&yp, None)])),
        }
    }

    /// Fast mode, mode `two-server`: cloud A convolves `G(seed)`, cloud B `β·x[π] - G(seed)`;
    /// the client verifies the sum inside the decryption pass, and on failure each share alone,
    /// to name the cheater.
    #[allow(clippy::too_many_arguments)]
    fn fast_two<T, O, E>(
        &mut self,
        a: &dyn CloudBackend,
        b: &dyn CloudBackend,
        batch: usize,
        x: &[T],
        bound: u32,
        rng: &mut KeyRng,
        bufs: &mut CallBuffers,
        out: &mut [O],
        epilogue: &E,
        t: &mut Timings,
    ) -> Result<()>
    where
        T: SmallInt,
        O: Copy + Default + Send,
        E: Fn(usize, std::ops::Range<usize>, &[i32], &mut [O]) + Sync,
    {
        let start = Instant::now();
        let seed = ShareSeed::generate(rng);
        let xb = bufs.sent(x.len());
        split_share_small_into(&self.key, &seed, x, xb)?;
        t.encrypt = start.elapsed();

        let start = Instant::now();
        let (ya, yb) = self.both_clouds(a, b, batch, &seed, xb);
        let (ya, yb) = (ya?, yb?);
        t.cloud = start.elapsed();
        self.check_answer_len(batch, &ya, Some("cloud A"))?;
        self.check_answer_len(batch, &yb, Some("cloud B"))?;

        let start = Instant::now();
        let kp = self.kernel_enc.data();
        let checks = FastRounds::draw_plain(&self.key, kp, x, bound, &[], self.cfg.rounds, rng)?;
        t.verify = start.elapsed();

        let start = Instant::now();
        let unmask = Unmask::Sum(&yb);
        let outcome = decrypt_verified_into(&self.key, &unmask, &ya, self.bias.as_deref(), &checks, out, epilogue)?;
        t.decrypt = start.elapsed();
        match outcome {
            Outcome::Accepted => Ok(()),
            Outcome::Malformed { .. } => Err(self.malformed(batch, &[(&ya, Some("cloud A")), (&yb, Some("cloud B"))])),
            Outcome::Rejected { round } => Err(self.name_cheater(round, batch, &seed, xb, &ya, &yb, rng)?),
        }
    }

    /// Both clouds of mode `two-server`, concurrently: A gets the seed, B its share.
    fn both_clouds(
        &self,
        a: &dyn CloudBackend,
        b: &dyn CloudBackend,
        batch: usize,
        seed: &ShareSeed,
        xb: &[u32],
    ) -> (Result<Vec<u32>>, Result<Vec<u32>>) {
        let session = &self.kernel_enc;
        std::thread::scope(|s| {
            let from_a = s.spawn(|| a.conv_share_session(session, batch, seed));
            let yb = b.conv_session(session, batch, xb);
            (from_a.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), yb)
        })
    }

    /// After the sum of the two answers was rejected in round `round`: re-checks each share with
    /// fresh vectors (at least one is wrong) and returns the error naming the cheater.
    #[allow(clippy::too_many_arguments)]
    fn name_cheater(
        &self,
        round: usize,
        batch: usize,
        seed: &ShareSeed,
        xb: &[u32],
        ya: &[u32],
        yb: &[u32],
        rng: &mut KeyRng,
    ) -> Result<Error> {
        let (geom, kp) = (&self.geom, self.kernel_enc.data());
        let xa = seed.expand(xb.len());
        let bad_a = check_claim(&Claim::new(geom, batch, kp, &xa, ya)?, self.cfg.mode, self.cfg.rounds, rng)?;
        let bad_b = check_claim(&Claim::new(geom, batch, kp, xb, yb)?, self.cfg.mode, self.cfg.rounds, rng)?;
        let cheater = match (bad_a.is_some(), bad_b.is_some()) {
            (true, true) => Cheater::BothClouds,
            (true, false) => Cheater::CloudA,
            (false, true) => Cheater::CloudB,
            (false, false) => Cheater::Unidentified,
        };
        Ok(self.rejected(round, cheater))
    }

    /// Takes `batch` pads of mode `pad` (gone even if the call fails).
    fn take_pads(&mut self, batch: usize) -> Result<Vec<crate::pad::Pad>> {
        match &mut self.masking {
            Masking::Pad(Some(pool)) => pool.take(batch),
            _ => Err(Error::PadPoolExhausted { layer: self.cfg.name.clone(), needed: batch, available: 0 }),
        }
    }

    /// Strict mode, modes `lowrank` and `pad`: one cloud; verify, then decrypt.
    fn strict_one(
        &mut self,
        cloud: &dyn CloudBackend,
        batch: usize,
        x: &[u32],
        rng: &mut KeyRng,
        t: &mut Timings,
    ) -> Result<Vec<i32>> {
        let start = Instant::now();
        let mut xp = vec![0u32; x.len()];
        let secrets = match &self.masking {
            Masking::LowRank(_) => {
                let masks = ImageMask::generate_batch(&self.key, batch, rng);
                encrypt_input_into(&self.key, &masks, x, &mut xp)?;
                OneCloudSecrets::Masks(masks)
            }
            Masking::Pad(_) => {
                let pads = self.take_pads(batch)?;
                encrypt_padded_into(&self.key, &pads, x, &mut xp)?;
                OneCloudSecrets::Pads(pads)
            }
            Masking::TwoServer => return Err(mode_mismatch(&self.cfg.name)),
        };
        t.encrypt = start.elapsed();

        let start = Instant::now();
        let yp = cloud.conv_session(&self.kernel_enc, batch, &xp)?;
        t.cloud = start.elapsed();
        self.check_answer(batch, &yp, None)?;

        let start = Instant::now();
        let claim = Claim::new(&self.geom, batch, self.kernel_enc.data(), &xp, &yp)?;
        let verdict = verify::<M31, _>(&claim, self.cfg.mode, self.cfg.rounds, rng)?;
        t.verify = start.elapsed();
        let answer = match verdict {
            Verdict::Accepted(answer) => answer,
            Verdict::Rejected { round } => return Err(self.rejected(round, Cheater::TheCloud)),
        };

        let start = Instant::now();
        let y = match (&self.masking, secrets) {
            (Masking::LowRank(mk), OneCloudSecrets::Masks(masks)) => decrypt(&self.key, mk, &masks, &answer)?,
            (_, OneCloudSecrets::Pads(pads)) => {
                let mut y = vec![0i32; yp.len()];
                decrypt_padded_into(&self.key, &pads, &answer, &mut y)?;
                y
            }
            (_, OneCloudSecrets::Masks(_)) => return Err(mode_mismatch(&self.cfg.name)),
        };
        t.decrypt = start.elapsed();
        Ok(y)
    }

    /// Strict mode, mode `two-server`: verify the sum (and on failure each share), then decrypt.
    fn strict_two(
        &mut self,
        a: &dyn CloudBackend,
        b: &dyn CloudBackend,
        batch: usize,
        x: &[u32],
        rng: &mut KeyRng,
        t: &mut Timings,
    ) -> Result<Vec<i32>> {
        let start = Instant::now();
        let seed = ShareSeed::generate(rng);
        let (mut xp, mut xb) = (vec![0u32; x.len()], vec![0u32; x.len()]);
        encrypt_shares_into(&self.key, &seed, x, &mut xp, &mut xb)?;
        t.encrypt = start.elapsed();

        let start = Instant::now();
        let (ya, yb) = self.both_clouds(a, b, batch, &seed, &xb);
        let (ya, yb) = (ya?, yb?);
        t.cloud = start.elapsed();
        self.check_answer(batch, &ya, Some("cloud A"))?;
        self.check_answer(batch, &yb, Some("cloud B"))?;

        let start = Instant::now();
        let claim = Claim::with_parts(&self.geom, batch, self.kernel_enc.data(), &xp, &ya, &yb)?;
        let verdict = verify::<M31, _>(&claim, self.cfg.mode, self.cfg.rounds, rng)?;
        t.verify = start.elapsed();
        match verdict {
            Verdict::Accepted(answer) => {
                let start = Instant::now();
                let mut y = vec![0i32; ya.len()];
                decrypt_sum_into(&self.key, &answer, &mut y)?;
                t.decrypt = start.elapsed();
                Ok(y)
            }
            Verdict::Rejected { round } => Err(self.name_cheater(round, batch, &seed, &xb, &ya, &yb, rng)?),
        }
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

/// What the client keeps between encryption and decryption of one call in modes `lowrank` and
/// `pad`.
enum OneCloudSecrets {
    Masks(Vec<ImageMask>),
    Pads(Vec<crate::pad::Pad>),
}

/// A two-server layer never reaches the one-cloud path ([`PrivateConv::run`] checks the cloud
/// count first); should it, this error is returned rather than a panic.
fn mode_mismatch(layer: &str) -> Error {
    Error::Internal(format!("layer `{layer}`: privacy mode mismatch"))
}
