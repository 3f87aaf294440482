//! What a curious cloud recovers: the attacks behind `vericonv attack` (docs/scheme.md §9).
//!
//! The attacker gets exactly what each cloud gets, recorded at the [`CloudBackend`] boundary of
//! a real private run: `K'` once per session, and `X'` (or its share) per call, with the
//! geometry. The client's secrets are used only to score the result.
//!
//! - [`lowrank`]: input recovery from `X'` against mode `lowrank`.
//! - [`kernel`]: kernel-slice recovery from `K'`, in every mode.
//! - [`stats`]: uniformity, rank and correlation tests of every cloud's view.
//!
//! [`attack_model`] runs all three on the input of every convolution of a model, over a data
//! set, in one privacy mode.

pub mod kernel;
pub mod linalg;
pub mod lowrank;
pub mod stats;

use std::sync::Mutex;
use std::time::Instant;

use rand::SeedableRng;
use serde::Serialize;

use anyhow::Result;
use stats::ViewStats;
use vericonv::Conv2d;
use vericonv::Privacy;
use vericonv::{CloudBackend, Clouds, ConvCall, CpuBackend};
use vericonv::{KeyRng, seeded_rng};
use vericonv::{LayerConfig, PrivateConv};
use vericonv_model::Dataset;
use vericonv_model::{Epilogue, IntegerExecutor, PlainExecutor, QuantInput, QuantLayer, QuantModel};

/// Settings of [`attack_model`].
#[derive(Clone, Debug)]
pub struct AttackOptions {
    /// The privacy mode the client runs in.
    pub privacy: Privacy,
    /// Only layers whose name contains this text.
    pub layer: Option<String>,
    /// Images per private call.
    pub batch: usize,
    /// Seed of the simulated client's keys and of the attacker's own random choices (a
    /// measurement harness: the client of a real run seeds from the OS).
    pub seed: u64,
    /// Images kept per layer for the picture of originals beside recoveries.
    pub examples: usize,
}

impl Default for AttackOptions {
    fn default() -> Self {
        Self { privacy: Privacy::default(), layer: None, batch: 10, seed: 1, examples: 4 }
    }
}

/// What one cloud's view of one layer gave the attacker.
#[derive(Clone, Debug, Serialize)]
pub struct CloudView {
    /// `the cloud`, `cloud A` or `cloud B`.
    pub cloud: String,
    /// Images whose every pixel of every channel was recovered exactly.
    pub exact_images: usize,
    /// Pixels recovered exactly (channel order up to the secret permutation π).
    pub exact_pixels: u64,
    /// Images in which the attack found the row-factor space `V̄`.
    pub row_space_found: usize,
    /// Images in which the attack found the column-factor space `Ū`.
    pub col_space_found: usize,
    /// Attack time per image, in seconds (one core).
    pub seconds_per_image: f64,
    /// The statistical tests of this view.
    pub stats: ViewStats,
    /// Slices of the kernel this cloud received (`K'`, or its share in mode `split-model`)
    /// recovered exactly up to sign.
    pub kernel_exact: usize,
    /// Of those, slices for which the true slice is the only candidate.
    pub kernel_unique: usize,
    /// The statistical tests of the kernel this cloud received, against the plain weights.
    pub kernel_stats: ViewStats,
}

/// The attacks on one layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerAttack {
    /// Model name.
    pub model: String,
    /// Data set name.
    pub dataset: String,
    /// Layer name.
    pub layer: String,
    /// Privacy mode (with its rank in mode `lowrank`).
    pub privacy: String,
    /// The layer input, `C×H×W`.
    pub input_shape: String,
    /// Images attacked.
    pub images: usize,
    /// Pixels per image.
    pub pixels_per_image: usize,
    /// Every cloud's view (two in modes `two-server` and `split-model`).
    pub views: Vec<CloudView>,
    /// Kernel slices (`Cout × Cin/G`).
    pub kernel_slices: usize,
    /// Slices recovered exactly up to sign, by the best view.
    pub kernel_exact: usize,
    /// Slices for which the true slice is the only candidate (known for certain), by the best
    /// view.
    pub kernel_unique: usize,
}

impl LayerAttack {
    /// The view that gave the attacker the most.
    pub fn best_view(&self) -> Option<&CloudView> {
        self.views.iter().max_by_key(|v| (v.exact_images, v.exact_pixels))
    }

    /// Share of images recovered exactly, by the best view.
    pub fn exact_image_share(&self) -> f64 {
        self.best_view().map_or(0.0, |v| v.exact_images as f64 / self.images.max(1) as f64)
    }

    /// Share of pixels recovered exactly, by the best view.
    pub fn exact_pixel_share(&self) -> f64 {
        let total = (self.images * self.pixels_per_image).max(1) as f64;
        self.best_view().map_or(0.0, |v| v.exact_pixels as f64 / total)
    }

    /// Share of kernel slices recovered exactly up to sign.
    pub fn kernel_share(&self) -> f64 {
        self.kernel_exact as f64 / self.kernel_slices.max(1) as f64
    }
}

/// Originals beside recoveries of a few images of one layer, for [`write_examples_png`].
#[derive(Clone, Debug)]
pub struct Examples {
    /// Layer name.
    pub layer: String,
    /// `(channels, height, width)` of the layer input.
    pub shape: (usize, usize, usize),
    /// The first images of the view that gave the attacker the most.
    pub images: Vec<Example>,
}

/// One image of [`Examples`].
#[derive(Clone, Debug)]
pub struct Example {
    /// The plain input, in cloud channel order.
    pub plain: Vec<i32>,
    /// What the attack recovered (`None`: nothing).
    pub recovered: Vec<Option<i32>>,
}

/// A cloud that computes honestly (itself, or through `inner`: a remote server) and keeps
/// every input it receives: the attacker's view.
struct Recorder<'a> {
    inner: &'a dyn CloudBackend,
    seen: Mutex<Vec<u32>>,
    kernel: Mutex<Vec<u32>>,
}

impl<'a> Recorder<'a> {
    fn new(inner: &'a dyn CloudBackend) -> Self {
        Self { inner, seen: Mutex::new(Vec::new()), kernel: Mutex::new(Vec::new()) }
    }

    /// The inputs received so far, and the kernel of the last call.
    fn take(&self) -> (Vec<u32>, Vec<u32>) {
        let take =
            |m: &Mutex<Vec<u32>>| std::mem::take(&mut *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        (take(&self.seen), take(&self.kernel))
    }
}

impl CloudBackend for Recorder<'_> {
    fn name(&self) -> String {
        format!("recording {}", self.inner.name())
    }

    // What the cloud sees: its input (cloud A can expand its seed itself) and its kernel.
    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> vericonv::Result<()> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(&call.input_tensor()?);
        *self.kernel.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = call.kernel_data().to_vec();
        self.inner.call(call, out)
    }
}

/// The plaintext executor, recording the quantized input of every convolution.
struct Capture {
    inputs: Vec<Vec<i32>>,
}

impl IntegerExecutor for Capture {
    fn run(&mut self, layer: &QuantLayer, x: QuantInput<'_>, _: &[u32]) -> vericonv_model::Result<()> {
        if !layer.is_linear {
            self.inputs[layer.node].extend(x.to_i32());
        }
        Ok(())
    }

    fn output(
        &self,
        layer: &QuantLayer,
        b: usize,
        x: QuantInput<'_>,
        epilogue: &Epilogue<'_>,
        out: &mut [f32],
    ) -> vericonv_model::Result<()> {
        PlainExecutor.output(layer, b, x, epilogue, out)
    }
}

fn qmax(bits: u32) -> u32 {
    (1 << (bits - 1)) - 1
}

/// The clouds an attack runs the private layers on: cloud A (or the only cloud) and, in mode
/// two-server, cloud B. `None` for either means a CPU backend in this process.
pub type AttackClouds<'a> = (Option<&'a dyn CloudBackend>, Option<&'a dyn CloudBackend>);

/// Runs the attacks on the input of every convolution of `qm` over the images of `data`, with
/// the client in `opts.privacy`, on `clouds` (what they receive is recorded on the way and
/// is the attacker's view). `progress(layer, done, total)` is called as images are attacked.
///
/// # Errors
/// [`vericonv::Error::LengthMismatch`] when the data does not fit the model; the private run's errors.
pub fn attack_model(
    qm: &QuantModel,
    data: &Dataset,
    opts: &AttackOptions,
    clouds: AttackClouds<'_>,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Vec<(LayerAttack, Examples)>> {
    let local = (CpuBackend::new(), CpuBackend::new());
    let (cloud_a, cloud_b) = (clouds.0.unwrap_or(&local.0), clouds.1.unwrap_or(&local.1));
    let model = qm.model();
    let n = data.len();
    let batch = opts.batch.max(1);
    let mut capture = Capture { inputs: vec![Vec::new(); model.nodes().len()] };
    for start in (0..n).step_by(batch) {
        qm.forward(data.slice(start..(start + batch).min(n)).0, &mut capture)?;
    }
    let (xbound, wbound) = (qmax(qm.config().act_bits), qmax(qm.config().weight_bits));
    let mut client_rng = seeded_rng(opts.seed);
    let mut attacker_rng = KeyRng::seed_from_u64(opts.seed ^ 0xA77AC4);
    let mut out = Vec::new();
    for layer in qm.layers().filter(|l| !l.is_linear) {
        if opts.layer.as_ref().is_some_and(|f| !layer.name.contains(f.as_str())) {
            continue;
        }
        let x = &capture.inputs[layer.node];
        let g = layer.geom;
        let cfg = LayerConfig {
            name: layer.name.clone(),
            privacy: opts.privacy,
            input_bound: xbound,
            ..LayerConfig::default()
        };
        let mut private = PrivateConv::new(g, &layer.weight, None, cfg, &mut client_rng)?;
        let (a, b) = (Recorder::new(cloud_a), Recorder::new(cloud_b));
        for chunk in x.chunks(batch * g.image_len()) {
            let images = chunk.len() / g.image_len();
            if opts.privacy.uses_pads() {
                let pool = private.generate_pads(images, &CpuBackend::new(), &mut client_rng)?;
                private.add_pads(pool)?;
            }
            let clouds = if opts.privacy.clouds() == 2 { Clouds::Two(&a, &b) } else { Clouds::One(&a) };
            let (y, _) = private.run(clouds, chunk, &mut client_rng)?;
            if y != layer.compute(chunk, images) {
                return Err(anyhow::anyhow!("layer `{}`: the private run is not exact", layer.name));
            }
        }
        // The plaintext in cloud channel order: what each received element hides.
        let key = private.key();
        let (cin, hw) = (g.cin(), g.h() * g.w());
        let truth: Vec<i32> = (0..n * cin)
            .flat_map(|bc| {
                let (b, cp) = (bc / cin, bc % cin);
                x[(b * cin + key.pi()[cp]) * hw..][..hw].iter().copied()
            })
            .collect();
        let mut views = Vec::new();
        let mut best_examples: Option<(usize, Vec<Example>)> = None;
        let received = if opts.privacy.clouds() == 2 {
            vec![("cloud A", a.take()), ("cloud B", b.take())]
        } else {
            vec![("the cloud", a.take())]
        };
        for (name, (seen, kernel_seen)) in received {
            let (mut view, examples) =
                attack_view(name, &seen, &truth, &g, xbound, opts.examples, &mut attacker_rng, |done| {
                    progress(&layer.name, done, n);
                });
            // The kernel attack on the kernel this cloud received.
            let slices = kernel::recover_kernel(&g, &kernel_seen, wbound);
            (view.kernel_exact, view.kernel_unique) = score_kernel(&slices, &layer.weight, &g, key);
            view.kernel_stats = stats::view_stats(&kernel_seen, &layer.weight, g.kernel_len(), g.kh(), g.kw());
            if best_examples.as_ref().is_none_or(|(e, _)| view.exact_images > *e) {
                best_examples = Some((view.exact_images, examples));
            }
            views.push(view);
        }
        let kernel_exact = views.iter().map(|v| v.kernel_exact).max().unwrap_or(0);
        let kernel_unique = views.iter().map(|v| v.kernel_unique).max().unwrap_or(0);
        out.push((
            LayerAttack {
                model: model.name().to_string(),
                dataset: data.name().to_string(),
                layer: layer.name.clone(),
                privacy: opts.privacy.label(),
                input_shape: format!("{}×{}×{}", cin, g.h(), g.w()),
                images: n,
                pixels_per_image: g.image_len(),
                views,
                kernel_slices: g.cout() * g.cin_per_group(),
                kernel_exact,
                kernel_unique,
            },
            Examples {
                layer: layer.name.clone(),
                shape: (cin, g.h(), g.w()),
                images: best_examples.map(|(_, e)| e).unwrap_or_default(),
            },
        ));
    }
    Ok(out)
}

/// Attacks every image of one cloud's view and runs the statistical tests on it.
#[allow(clippy::too_many_arguments)]
fn attack_view(
    cloud: &str,
    seen: &[u32],
    truth: &[i32],
    g: &Conv2d,
    bound: u32,
    keep: usize,
    rng: &mut KeyRng,
    mut progress: impl FnMut(usize),
) -> (CloudView, Vec<Example>) {
    let len = g.image_len();
    let (mut exact_images, mut exact_pixels, mut rows_found, mut cols_found) = (0, 0u64, 0, 0);
    let mut examples = Vec::new();
    let start = Instant::now();
    let images = seen.len() / len;
    for (b, (img, plain)) in seen.chunks_exact(len).zip(truth.chunks_exact(len)).enumerate() {
        let rec = lowrank::recover_image(img, g.cin(), g.h(), g.w(), bound, rng);
        let hits = rec.pixels.iter().zip(plain).filter(|&(r, &t)| *r == Some(t)).count();
        exact_pixels += hits as u64;
        exact_images += usize::from(hits == len);
        rows_found += usize::from(rec.row_space_dim > 0);
        cols_found += usize::from(rec.col_space_dim > 0);
        if examples.len() < keep {
            examples.push(Example { plain: plain.to_vec(), recovered: rec.pixels });
        }
        progress(b + 1);
    }
    let seconds_per_image = start.elapsed().as_secs_f64() / images.max(1) as f64;
    let stats = stats::view_stats(seen, truth, len, g.h(), g.w());
    (
        CloudView {
            cloud: cloud.to_string(),
            exact_images,
            exact_pixels,
            row_space_found: rows_found,
            col_space_found: cols_found,
            seconds_per_image,
            stats,
            kernel_exact: 0,
            kernel_unique: 0,
            kernel_stats: ViewStats::default(),
        },
        examples,
    )
}

/// Scores the recovered slices against the plain kernel: (exact up to sign, known for certain).
fn score_kernel(
    slices: &[kernel::SliceRecovery],
    weight: &[i32],
    g: &Conv2d,
    key: &vericonv::SessionKey,
) -> (usize, usize) {
    let (cpg, cpo, taps) = (g.cin_per_group(), g.cout_per_group(), g.kh() * g.kw());
    let (mut exact, mut unique) = (0, 0);
    for (idx, s) in slices.iter().enumerate() {
        let (op, clp) = (idx / cpg, idx % cpg);
        let o = key.sigma()[op];
        let cl = key.pi()[op / cpo * cpg + clp] % cpg;
        let truth = &weight[(o * cpg + cl) * taps..][..taps];
        if s.slice.as_deref().is_some_and(|guess| kernel::equal_up_to_sign(guess, truth)) {
            exact += 1;
            unique += usize::from(s.candidates == 1);
        }
    }
    (exact, unique)
}

/// The attack table: one line per layer.
pub fn format_table(rows: &[LayerAttack]) -> String {
    let mut s = format!(
        "{:<22} {:<12} {:<18} {:>10} {:>6} | {:>8} {:>8} {:>9} | {:>8} {:>8} {:>9} | {:>9} {:>9} {:>11} {:>8}\n",
        "model",
        "layer",
        "privacy",
        "input",
        "images",
        "images%",
        "pixels%",
        "s/image",
        "kernel%",
        "certain%",
        "kernel χ² p",
        "χ² p",
        "χ²pos p",
        "full rank",
        "|corr|"
    );
    for r in rows {
        let pct = |x: f64| format!("{:>7.1}%", 100.0 * x);
        let v = r.best_view();
        let worst_p = r.views.iter().map(|v| v.stats.chi2_high_bits_p).fold(1.0, f64::min);
        let worst_pos = r.views.iter().map(|v| v.stats.chi2_positions_p).fold(1.0, f64::min);
        let full: usize = r.views.iter().map(|v| v.stats.full_rank_planes).sum();
        let planes: usize = r.views.iter().map(|v| v.stats.planes).sum();
        let corr = r.views.iter().map(|v| v.stats.correlation.abs()).fold(0.0, f64::max);
        let kernel_p = r.views.iter().map(|v| v.kernel_stats.chi2_high_bits_p).fold(1.0, f64::min);
        s += &format!(
            "{:<22} {:<12} {:<18} {:>10} {:>6} | {} {} {:>9.4} | {} {} {:>9.3} | {:>9.3} {:>9.3} {:>11} {:>8.4}\n",
            r.model,
            r.layer,
            r.privacy,
            r.input_shape,
            r.images,
            pct(r.exact_image_share()),
            pct(r.exact_pixel_share()),
            v.map_or(0.0, |v| v.seconds_per_image),
            pct(r.kernel_share()),
            pct(r.kernel_unique as f64 / r.kernel_slices.max(1) as f64),
            kernel_p,
            worst_p,
            worst_pos,
            format!("{full}/{planes}"),
            corr
        );
    }
    s
}

/// Writes a PNG of originals beside recoveries: one row per image, for each of the first
/// channels the original then the recovery, in grey levels over `[-bound, bound]`; pixels the
/// attack did not recover are red.
///
/// # Errors
/// An error naming the file when it cannot be written.
pub fn write_examples_png(ex: &Examples, bound: u32, path: &std::path::Path) -> Result<()> {
    const SCALE: usize = 3;
    const GAP: usize = 4;
    const CHANNELS: usize = 4;
    let (cin, h, w) = ex.shape;
    let channels = cin.min(CHANNELS);
    let (cell_w, cell_h) = (w * SCALE + GAP, h * SCALE + GAP);
    let width = (2 * channels * cell_w + GAP) as u32;
    let height = (ex.images.len().max(1) * cell_h + GAP) as u32;
    let mut img = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let grey = |v: i32| -> image::Rgb<u8> {
        let t = (f64::from(v) + f64::from(bound)) / (2.0 * f64::from(bound).max(1.0));
        let g = (t.clamp(0.0, 1.0) * 255.0).round() as u8;
        image::Rgb([g, g, g])
    };
    for (row, Example { plain, recovered: rec }) in ex.images.iter().enumerate() {
        for c in 0..channels {
            for (k, pick) in [0usize, 1].iter().enumerate() {
                let x0 = GAP + (2 * c + k) * cell_w;
                let y0 = GAP + row * cell_h;
                for y in 0..h {
                    for x in 0..w {
                        let i = (c * h + y) * w + x;
                        let color =
                            if *pick == 0 { grey(plain[i]) } else { rec[i].map_or(image::Rgb([220, 30, 30]), grey) };
                        for dy in 0..SCALE {
                            for dx in 0..SCALE {
                                img.put_pixel((x0 + x * SCALE + dx) as u32, (y0 + y * SCALE + dy) as u32, color);
                            }
                        }
                    }
                }
            }
        }
    }
    img.save(path).map_err(|e| match e {
        image::ImageError::IoError(e) => anyhow::Error::new(e).context(format!("writing {}", path.display())),
        other => anyhow::anyhow!("encoding {}: {other}", path.display()),
    })
}
