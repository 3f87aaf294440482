//! The client side of one private convolution layer: it owns the plain kernel and every secret,
//! and runs keygen → encrypt → (cloud) → verify → decrypt for each batch, in any of the three
//! privacy modes ([`Privacy`]).

use std::time::{Duration, Instant};

use crate::cloud::{Cheater, CloudBackend, Clouds, SessionKernel};
use crate::decrypt::{MaskKernel, decrypt, decrypt_padded_into, decrypt_sum_into, decrypt_sum_verified_into};
use crate::encrypt::{encrypt_input_into, encrypt_kernel, encrypt_padded_into, encrypt_shares_into};
use crate::field::{M31, PrimeField};
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

/// Checks `|v| <= bound` for every entry, naming the first offender.
fn check_bound(layer: &str, what: &'static str, v: &[i32], bound: u64) -> Result<()> {
    match v.iter().position(|&x| u64::from(x.unsigned_abs()) > bound) {
        None => Ok(()),
        Some(index) => {
            Err(Error::ValueOutOfRange { layer: layer.into(), what, index, value: i64::from(v[index]), bound })
        }
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

fn embed_all(v: &[i32]) -> Vec<u32> {
    v.iter().map(|&x| if x < 0 { (i64::from(x) + i64::from(M31::P)) as u32 } else { x as u32 }).collect()
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
        let kernel = embed_all(kernel);
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
        check_bound(&self.cfg.name, "input", x, u64::from(self.cfg.input_bound))?;
        let mut t = Timings::default();
        if self.cfg.rotate_after_images.is_some_and(|n| self.images_in_session >= n) {
            t.keygen = self.rotate(rng)?;
        } else if self.images_in_session == 0 {
            t.keygen = self.setup_time;
        }
        self.images_in_session += batch as u64;
        let x = embed_all(x);
        let mut y = match clouds {
            Clouds::One(cloud) => self.run_one(cloud, batch, &x, rng, &mut t)?,
            Clouds::Two(a, b) => self.run_two(a, b, batch, &x, rng, &mut t)?,
        };
        let start = Instant::now();
        if let Some(bias) = &self.bias {
            for (plane, &b) in y.chunks_exact_mut(self.geom.n()).zip(bias.iter().cycle()) {
                plane.iter_mut().for_each(|v| *v += b);
            }
        }
        t.decrypt += start.elapsed();
        Ok((y, t))
    }

    /// Modes `lowrank` and `pad`: one cloud.
    fn run_one(
        &mut self,
        cloud: &dyn CloudBackend,
        batch: usize,
        x: &[u32],
        rng: &mut KeyRng,
        t: &mut Timings,
    ) -> Result<Vec<i32>> {
        let start = Instant::now();
        let mut xp = vec![0u32; x.len()];
        let secrets = match &mut self.masking {
            Masking::LowRank(_) => {
                let masks = ImageMask::generate_batch(&self.key, batch, rng);
                encrypt_input_into(&self.key, &masks, x, &mut xp)?;
                OneCloudSecrets::Masks(masks)
            }
            Masking::Pad(pool) => {
                let pads = match pool {
                    Some(pool) => pool.take(batch)?,
                    None => {
                        return Err(Error::PadPoolExhausted {
                            layer: self.cfg.name.clone(),
                            needed: batch,
                            available: 0,
                        });
                    }
                };
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

    /// Mode `two-server`: cloud A convolves `G(seed)`, cloud B `β·X[π] - G(seed)`; the client
    /// verifies the sum, and on failure each share alone, to name the cheater.
    fn run_two(
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
        let (geom, kp, session) = (&self.geom, self.kernel_enc.data(), &self.kernel_enc);
        let (ya, yb) = std::thread::scope(|s| {
            let from_a = s.spawn(|| a.conv_share_session(session, batch, &seed));
            let yb = b.conv_session(session, batch, &xb);
            (from_a.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), yb)
        });
        let (ya, yb) = (ya?, yb?);
        t.cloud = start.elapsed();
        self.check_answer(batch, &ya, Some("cloud A"))?;
        self.check_answer(batch, &yb, Some("cloud B"))?;

        // Fast mode checks the two answers inside the decryption pass (their output side is
        // contracted there, so each answer is read once); Strict mode checks, then decrypts.
        let start = Instant::now();
        let claim = Claim::with_parts(&self.geom, batch, kp, &xp, &ya, &yb)?;
        let mut y = vec![0i32; ya.len()];
        let rejected = if self.cfg.mode == Mode::Fast {
            let checks = FastRounds::draw::<M31, _>(&claim, self.cfg.rounds, rng)?;
            t.verify = start.elapsed();
            let start = Instant::now();
            let verdict = decrypt_sum_verified_into(&self.key, &checks, &ya, &yb, &mut y)?;
            t.decrypt = start.elapsed();
            match verdict {
                Verdict::Accepted(_) => None,
                Verdict::Rejected { round } => Some(round),
            }
        } else {
            let verdict = verify::<M31, _>(&claim, self.cfg.mode, self.cfg.rounds, rng)?;
            t.verify = start.elapsed();
            match verdict {
                Verdict::Accepted(answer) => {
                    let start = Instant::now();
                    decrypt_sum_into(&self.key, &answer, &mut y)?;
                    t.decrypt = start.elapsed();
                    None
                }
                Verdict::Rejected { round } => Some(round),
            }
        };
        if let Some(round) = rejected {
            // Re-check each share with fresh vectors (the sum is wrong, so at least one is).
            let xa = seed.expand(x.len());
            let bad_a = check_claim(&Claim::new(geom, batch, kp, &xa, &ya)?, self.cfg.mode, self.cfg.rounds, rng)?;
            let bad_b = check_claim(&Claim::new(geom, batch, kp, &xb, &yb)?, self.cfg.mode, self.cfg.rounds, rng)?;
            let cheater = match (bad_a.is_some(), bad_b.is_some()) {
                (true, true) => Cheater::BothClouds,
                (true, false) => Cheater::CloudA,
                (false, true) => Cheater::CloudB,
                (false, false) => Cheater::Unidentified,
            };
            return Err(self.rejected(round, cheater));
        }
        Ok(y)
    }

    fn rejected(&self, round: usize, cheater: Cheater) -> Error {
        Error::VerificationFailed { layer: self.cfg.name.clone(), mode: self.cfg.mode.name(), round, cheater }
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
