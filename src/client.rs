//! The client side of one private convolution layer: it owns the plain kernel and every secret,
//! and runs keygen → encrypt → (cloud) → verify → decrypt for each batch.

use std::time::{Duration, Instant};

use crate::cloud::CloudBackend;
use crate::decrypt::{MaskKernel, decrypt};
use crate::encrypt::{encrypt_input, encrypt_kernel};
use crate::field::{M31, PrimeField};
use crate::geometry::Conv2d;
use crate::keys::{DEFAULT_RANK, ImageMask, KeyRng, SessionKey};
use crate::verify::{Claim, Mode, Verdict, verify};
use crate::{Error, Result};

/// Settings of one private layer.
#[derive(Clone, Debug)]
pub struct LayerConfig {
    /// Name used in errors and reports.
    pub name: String,
    /// Mask rank ρ (default 2).
    pub rank: usize,
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
            rank: DEFAULT_RANK,
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
    /// Per-image mask generation and input encryption.
    pub encrypt: Duration,
    /// The cloud's convolution, transfers included.
    pub cloud: Duration,
    /// Verification of the answer.
    pub verify: Duration,
    /// Decryption (mask correction and lift) and bias.
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

/// One convolution layer run privately on an untrusted [`CloudBackend`].
#[derive(Debug)]
pub struct PrivateConv {
    cfg: LayerConfig,
    geom: Conv2d,
    kernel: Vec<u32>,
    bias: Option<Vec<i32>>,
    key: SessionKey,
    kernel_enc: Vec<u32>,
    mask_kernel: MaskKernel,
    images_in_session: u64,
    setup_time: Duration,
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

impl PrivateConv {
    /// Builds the layer: checks the exactness bound `M·Bx·Bw + Bb <= (p-1)/2` (SCHEME.md §2),
    /// draws the first session key and encrypts the kernel.
    ///
    /// `kernel` is `Cout × Cin/G × kh × kw` integers; `bias`, if any, has `Cout` integers and is
    /// added by the client after decryption.
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
        let key = SessionKey::generate(&geom, cfg.rank, rng)?;
        let kernel_enc = encrypt_kernel(&key, &kernel)?;
        let mask_kernel = MaskKernel::new(&key, &kernel)?;
        Ok(Self {
            cfg,
            geom,
            kernel,
            bias: bias.map(<[i32]>::to_vec),
            key,
            kernel_enc,
            mask_kernel,
            images_in_session: 0,
            setup_time: start.elapsed(),
        })
    }

    /// Draws a new session key and re-encrypts the kernel; returns the time it took.
    ///
    /// # Errors
    /// Only on internal inconsistency (never for a layer built by [`PrivateConv::new`]).
    pub fn rotate(&mut self, rng: &mut KeyRng) -> Result<Duration> {
        let start = Instant::now();
        self.key = SessionKey::generate(&self.geom, self.cfg.rank, rng)?;
        self.kernel_enc = encrypt_kernel(&self.key, &self.kernel)?;
        self.mask_kernel = MaskKernel::new(&self.key, &self.kernel)?;
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
        &self.kernel_enc
    }

    /// Runs a batch `x` (`B × Cin × H × W` integers with `|x| <= Bx`) privately on `cloud`.
    ///
    /// Returns the exact integer convolution plus bias, `B × Cout × Ho × Wo`, and the time of
    /// each phase. The first call of a session also reports the session setup as `keygen`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] and [`Error::ValueOutOfRange`] for bad input; the cloud's own
    /// errors; [`Error::MalformedAnswer`] or [`Error::VerificationFailed`] for a wrong answer,
    /// which is never decrypted.
    pub fn run(&mut self, cloud: &dyn CloudBackend, x: &[i32], rng: &mut KeyRng) -> Result<(Vec<i32>, Timings)> {
        let batch = self.geom.batch_of_input(x.len())?;
        check_bound(&self.cfg.name, "input", x, u64::from(self.cfg.input_bound))?;
        let mut t = Timings::default();
        if self.cfg.rotate_after_images.is_some_and(|n| self.images_in_session >= n) {
            t.keygen = self.rotate(rng)?;
        } else if self.images_in_session == 0 {
            t.keygen = self.setup_time;
        }
        self.images_in_session += batch as u64;

        let start = Instant::now();
        let masks = ImageMask::generate_batch(&self.key, batch, rng);
        let xp = encrypt_input(&self.key, &masks, &embed_all(x))?;
        t.encrypt = start.elapsed();

        let start = Instant::now();
        let yp = cloud.conv(&self.geom, batch, &self.kernel_enc, &xp)?;
        t.cloud = start.elapsed();
        self.check_answer(batch, &yp)?;

        let start = Instant::now();
        let claim = Claim::new(&self.geom, batch, &self.kernel_enc, &xp, &yp)?;
        let verdict = verify::<M31, _>(&claim, self.cfg.mode, self.cfg.rounds, rng)?;
        t.verify = start.elapsed();
        if let Verdict::Rejected { round } = verdict {
            return Err(Error::VerificationFailed { layer: self.cfg.name.clone(), mode: self.cfg.mode.name(), round });
        }

        let start = Instant::now();
        let mut y = decrypt(&self.key, &self.mask_kernel, &masks, &yp)?;
        if let Some(bias) = &self.bias {
            for (plane, &b) in y.chunks_exact_mut(self.geom.n()).zip(bias.iter().cycle()) {
                plane.iter_mut().for_each(|v| *v += b);
            }
        }
        t.decrypt = start.elapsed();
        Ok((y, t))
    }

    fn check_answer(&self, batch: usize, yp: &[u32]) -> Result<()> {
        let expected = batch * self.geom.output_image_len();
        let reason = if yp.len() != expected {
            format!("{} elements, expected {expected}", yp.len())
        } else if let Some(i) = yp.iter().position(|&v| v >= M31::P) {
            format!("entry {i} = {} is not below p", yp[i])
        } else {
            return Ok(());
        };
        Err(Error::MalformedAnswer { layer: self.cfg.name.clone(), reason })
    }
}
