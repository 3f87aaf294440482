//! The layer benchmark behind `vericonv bench`: for each convolution of a named suite, the
//! client's private-inference cost against the strongest plaintext baseline on the same CPU,
//! and against the memory floor.
//!
//! - Baselines: (a) a direct naive convolution, (b) im2col + the `gemm` crate's f32 GEMM,
//!   (c) tract's convolution (feature `tract`). Speedups use the faster of (b) and (c).
//! - Client time per batch: quantize the input, encrypt it, verify the answer (Fast mode, one
//!   round), decrypt, de-quantize. Kernel encryption and `KG` are per session: reported
//!   unamortized, and amortized over `session` images.
//! - The memory floor: a `memcpy` of the bytes the client must read and write (X in, X' out,
//!   Y' in, Y out), timed in the same run.
//!
//! Every configuration first checks its own outputs: the decrypted result equals the exact
//! integer convolution, and the baselines agree with each other.

use anyhow::Context;
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::Serialize;

use anyhow::Result;
use vericonv::PadPool;
use vericonv::Privacy;
use vericonv::{CloudBackend, CpuBackend};
use vericonv::{Conv2d, Padding};
use vericonv::{ImageMask, SessionKey, seeded_rng};
use vericonv::{M31, PrimeField};
use vericonv::{MaskKernel, decrypt_into, decrypt_padded_into, decrypt_sum_verified_into};
use vericonv::{encrypt_input_into, encrypt_kernel, encrypt_padded_into, encrypt_shares_into};

use vericonv::ShareSeed;
use vericonv::{Claim, FastRounds, Mode, Verdict, Verified, kernel_fold, verify};

/// One layer of a suite.
#[derive(Clone, Debug)]
pub struct BenchLayer {
    /// Network, e.g. `ResNet-18`.
    pub network: &'static str,
    /// Layer, e.g. `conv3_3`.
    pub layer: &'static str,
    /// Geometry.
    pub geom: Conv2d,
}

/// `(cin, cout, hw, k, stride, pad, groups)` of a square layer.
type Square = (usize, usize, usize, usize, usize, usize, usize);

fn layer(
    network: &'static str,
    layer: &'static str,
    (cin, cout, hw, k, stride, pad, groups): Square,
) -> Result<BenchLayer> {
    let geom = Conv2d::builder(cin, cout, (hw, hw), (k, k))
        .stride(stride, stride)
        .padding(Padding::uniform(pad))
        .groups(groups)
        .build()?;
    Ok(BenchLayer { network, layer, geom })
}

/// The full suite of the issue: LeNet-5, VGG-16 at 32×32 and 224×224, ResNet-18 at 224×224,
/// MobileNet-v1 at 56×56.
///
/// # Errors
/// Never, for these fixed shapes.
pub fn full_suite() -> Result<Vec<BenchLayer>> {
    Ok(vec![
        layer("LeNet-5", "conv1", (1, 6, 28, 5, 1, 2, 1))?,
        layer("LeNet-5", "conv2", (6, 16, 14, 5, 1, 0, 1))?,
        layer("VGG-16/32", "conv1_2", (64, 64, 32, 3, 1, 1, 1))?,
        layer("VGG-16/32", "conv2_2", (128, 128, 16, 3, 1, 1, 1))?,
        layer("VGG-16/32", "conv3_3", (256, 256, 8, 3, 1, 1, 1))?,
        layer("VGG-16/32", "conv4_3", (512, 512, 4, 3, 1, 1, 1))?,
        layer("VGG-16/32", "conv5_3", (512, 512, 2, 3, 1, 1, 1))?,
        layer("VGG-16/224", "conv1_2", (64, 64, 224, 3, 1, 1, 1))?,
        layer("VGG-16/224", "conv2_2", (128, 128, 112, 3, 1, 1, 1))?,
        layer("VGG-16/224", "conv3_3", (256, 256, 56, 3, 1, 1, 1))?,
        layer("VGG-16/224", "conv4_3", (512, 512, 28, 3, 1, 1, 1))?,
        layer("VGG-16/224", "conv5_3", (512, 512, 14, 3, 1, 1, 1))?,
        layer("ResNet-18", "conv1", (3, 64, 224, 7, 2, 3, 1))?,
        layer("ResNet-18", "3x3@56x56x64", (64, 64, 56, 3, 1, 1, 1))?,
        layer("ResNet-18", "3x3@28x28x128", (128, 128, 28, 3, 1, 1, 1))?,
        layer("ResNet-18", "3x3@14x14x256", (256, 256, 14, 3, 1, 1, 1))?,
        layer("ResNet-18", "3x3@7x7x512", (512, 512, 7, 3, 1, 1, 1))?,
        layer("MobileNet-v1", "dw3x3@56x56x128", (128, 128, 56, 3, 1, 1, 128))?,
        layer("MobileNet-v1", "pw1x1@56x56x128", (128, 128, 56, 1, 1, 0, 1))?,
    ])
}

/// A quick suite for smoke tests: LeNet-5 and the small ResNet-18 and VGG-16/32 layers.
///
/// # Errors
/// Never, for these fixed shapes.
pub fn quick_suite() -> Result<Vec<BenchLayer>> {
    Ok(full_suite()?
        .into_iter()
        .filter(|l| {
            l.network == "LeNet-5" || l.layer == "3x3@7x7x512" || l.layer == "conv3_3" && l.network == "VGG-16/32"
        })
        .collect())
}

/// Settings of [`run_layer`].
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Images per batch.
    pub batch: usize,
    /// Threads for both the client and the baselines.
    pub threads: usize,
    /// Session length over which the per-session kernel work is amortized.
    pub session: usize,
    /// Skip the naive baseline above this many multiply-accumulates (it is slow).
    pub naive_max_macs: u64,
    /// Minimum time spent measuring each quantity (the median of the repetitions is kept).
    pub min_time: Duration,
    /// The privacy modes to measure the client in.
    pub privacy: Vec<Privacy>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            batch: 1,
            threads: 1,
            session: 64,
            naive_max_macs: 2_000_000_000,
            min_time: Duration::from_millis(300),
            privacy: vec![Privacy::default()],
        }
    }
}

/// One measured configuration. Times are in seconds per batch.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// Network.
    pub network: String,
    /// Layer.
    pub layer: String,
    /// `Cin×H×W -> Cout×Ho×Wo, k×k/s, groups`.
    pub shape: String,
    /// The privacy mode (with its rank in mode `lowrank`).
    pub privacy: String,
    /// Images per batch.
    pub batch: usize,
    /// Threads.
    pub threads: usize,
    /// Multiply-accumulates per batch.
    pub macs: u64,
    /// (a) direct naive convolution (None: skipped, too slow).
    pub naive_s: Option<f64>,
    /// (b) im2col + `gemm` f32.
    pub im2col_gemm_s: f64,
    /// (c) tract (None: built without the `tract` feature).
    pub tract_s: Option<f64>,
    /// The faster of (b) and (c).
    pub best_plaintext_s: f64,
    /// Which baseline that was.
    pub best_plaintext: String,
    /// Client per-batch work: quantize, encrypt, verify, decrypt, de-quantize.
    pub client_s: f64,
    /// Of which quantize + de-quantize.
    pub client_quantize_s: f64,
    /// Of which encryption (masks included).
    pub client_encrypt_s: f64,
    /// Of which verification (Fast, one round).
    pub client_verify_s: f64,
    /// Of which Fast verification's kernel term `k_s = sᵀK'` (reads all of `K'` per batch).
    pub client_verify_kernel_s: f64,
    /// Of which decryption.
    pub client_decrypt_s: f64,
    /// Per-session kernel work (`K'`, and `KG` in mode `lowrank`), unamortized.
    pub session_s: f64,
    /// Session length used for amortization.
    pub session_images: usize,
    /// Mode `pad`: the offline work for one batch (pads drawn and `Conv(K, R)` on the client's
    /// CPU with the same threads); not part of the client's online time.
    pub offline_s: Option<f64>,
    /// Client time with the session work amortized.
    pub client_amortized_s: f64,
    /// memcpy of X in, X' out, Y' in, Y out.
    pub floor_s: f64,
    /// `client_s / floor_s`.
    pub client_over_floor: f64,
    /// The per-image work over the floor: `(client_s - client_verify_kernel_s) / floor_s`.
    pub image_over_floor: f64,
    /// `best_plaintext_s / client_amortized_s`.
    pub speedup: f64,
    /// `best_plaintext_s / (client_s + session_s)`: a one-batch session.
    pub speedup_unamortized: f64,
    /// `naive_s / client_amortized_s` (naive baseline).
    pub speedup_vs_naive: Option<f64>,
    /// The f32 rate of baseline (b) on this layer, in GFLOP/s.
    pub gemm_gflops: f64,
    /// The exact F_p convolution of the CPU cloud backend, same threads (in mode `two-server`
    /// the slower of the two clouds, which run concurrently).
    pub cloud_cpu_s: f64,
    /// `cloud_cpu_s / im2col_gemm_s`: the cost of exact F_p over f32 on this CPU.
    pub cloud_cpu_over_gemm: f64,
}

/// Median wall time of `f`, repeated until `min_time` has passed (at least 3 runs).
fn time<T>(min_time: Duration, mut f: impl FnMut() -> T) -> f64 {
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 3 || start.elapsed() < min_time {
        let t = Instant::now();
        std::hint::black_box(f());
        samples.push(t.elapsed().as_secs_f64());
        if samples.len() >= 1000 {
            break;
        }
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-3 * x.abs().max(y.abs()).max(1.0))
}

/// im2col + `gemm` f32, `threads` threads: baseline (b).
fn conv_gemm(g: &Conv2d, batch: usize, w: &[f32], x: &[f32], threads: usize) -> Vec<f32> {
    let (cpo, m, n) = (g.cout_per_group(), g.m(), g.n());
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let mut y = vec![0f32; batch * g.output_image_len()];
    for b in 0..batch {
        let img = &x[b * g.image_len()..][..g.image_len()];
        for grp in 0..g.groups() {
            let col = vericonv_model::im2col(g, img, grp);
            let a = &w[grp * cpo * m..][..cpo * m];
            let out = &mut y[(b * g.cout() + grp * cpo) * n..][..cpo * n];
            // SAFETY: a is cpo×m, col is m×n, out is cpo×n, all row-major with the strides given.
            unsafe {
                gemm::gemm(
                    cpo,
                    n,
                    m,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    m as isize,
                    col.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
    }
    y
}

/// tract, the plaintext baseline (c), on one layer or on a whole ONNX model.
#[cfg(feature = "tract")]
pub use tract_baseline::TractPlan;

#[cfg(feature = "tract")]
mod tract_baseline {
    use prost::Message;
    use tract_onnx::prelude::*;

    use anyhow::Result;
    use vericonv::Conv2d;
    use vericonv_model::onnx::proto::*;

    fn err(e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("tract: {e}")
    }

    /// A runnable, optimized tract plan of an ONNX graph with a fixed input shape.
    pub struct TractPlan(std::sync::Arc<TypedRunnableModel>);

    impl TractPlan {
        /// The plan of the ONNX model `bytes`, its input fixed to `shape` (a dynamic batch
        /// becomes `shape[0]`).
        ///
        /// # Errors
        /// an error when tract cannot load or optimize the model.
        pub fn from_onnx(bytes: &[u8], shape: &[usize]) -> Result<Self> {
            let plan = tract_onnx::onnx()
                .model_for_read(&mut &bytes[..])
                .map_err(err)?
                .with_input_fact(0, f32::fact(shape).into())
                .map_err(err)?
                .into_optimized()
                .map_err(err)?
                .into_runnable()
                .map_err(err)?;
            Ok(Self(plan))
        }

        /// Runs the plan on `x` with `threads` threads; returns the first output.
        ///
        /// # Errors
        /// an error when tract fails.
        pub fn run(&self, shape: &[usize], x: &[f32], threads: usize) -> Result<Vec<f32>> {
            let input = Tensor::from_shape(shape, x).map_err(err)?;
            let exec = if threads > 1 {
                tract_linalg::multithread::Executor::multithread(threads)
            } else {
                tract_linalg::multithread::Executor::SingleThread
            };
            let out = tract_linalg::multithread::multithread_tract_scope(exec, || self.0.run(tvec!(input.into())))
                .map_err(err)?;
            let view = out[0].to_plain_array_view::<f32>().map_err(err)?;
            Ok(view.iter().copied().collect())
        }
    }

    /// A runnable tract plan of one `Conv` node with a fixed batch.
    pub struct TractConv(TractPlan);

    impl TractConv {
        pub fn new(g: &Conv2d, batch: usize, w: &[f32]) -> Result<Self> {
            let ints = |name: &str, v: &[usize]| AttributeProto {
                name: name.into(),
                ints: v.iter().map(|&x| x as i64).collect(),
                r#type: 7,
                ..Default::default()
            };
            let p = g.padding();
            let dims = |v: &[usize]| {
                Some(TypeProto {
                    tensor_type: Some(TensorTypeProto {
                        elem_type: 1,
                        shape: Some(TensorShapeProto {
                            dim: v.iter().map(|&d| Dimension { dim_value: Some(d as i64), dim_param: None }).collect(),
                        }),
                    }),
                })
            };
            let graph = GraphProto {
                node: vec![NodeProto {
                    input: vec!["x".into(), "w".into()],
                    output: vec!["y".into()],
                    name: "conv".into(),
                    op_type: "Conv".into(),
                    attribute: vec![
                        ints("kernel_shape", &[g.kh(), g.kw()]),
                        ints("strides", &[g.stride().0, g.stride().1]),
                        ints("pads", &[p.top, p.left, p.bottom, p.right]),
                        ints("dilations", &[g.dilation().0, g.dilation().1]),
                        AttributeProto { name: "group".into(), i: g.groups() as i64, r#type: 2, ..Default::default() },
                    ],
                    domain: String::new(),
                }],
                name: "bench".into(),
                initializer: vec![TensorProto {
                    dims: [g.cout(), g.cin_per_group(), g.kh(), g.kw()].iter().map(|&d| d as i64).collect(),
                    data_type: 1,
                    float_data: w.to_vec(),
                    name: "w".into(),
                    ..Default::default()
                }],
                input: vec![ValueInfoProto { name: "x".into(), r#type: dims(&[batch, g.cin(), g.h(), g.w()]) }],
                output: vec![ValueInfoProto { name: "y".into(), r#type: None }],
            };
            let bytes = ModelProto {
                ir_version: 8,
                graph: Some(graph),
                opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
                ..Default::default()
            }
            .encode_to_vec();
            Ok(Self(TractPlan::from_onnx(&bytes, &[batch, g.cin(), g.h(), g.w()])?))
        }

        pub fn run(&self, shape: &[usize], x: &[f32], threads: usize) -> Result<Vec<f32>> {
            self.0.run(shape, x, threads)
        }
    }
}

/// `Cin×H×W -> Cout×Ho×Wo, kh×kw/stride[, groups G]`.
fn shape_label(g: &Conv2d) -> String {
    format!(
        "{}×{}×{} -> {}×{}×{}, {}×{}/{}{}",
        g.cin(),
        g.h(),
        g.w(),
        g.cout(),
        g.ho(),
        g.wo(),
        g.kh(),
        g.kw(),
        g.stride().0,
        if g.groups() > 1 { format!(", groups {}", g.groups()) } else { String::new() }
    )
}

/// Quantizes f32 activations to `|q| <= 127` with one scale for the batch, into field
/// elements in `out`; returns the scale.
#[multiversion::multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn quantize_into(x: &[f32], out: &mut [u32]) -> f32 {
    // Eight running maxima, so that the reduction vectorises.
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let m = tail.iter().map(|v| v.abs()).chain(lanes).fold(0f32, f32::max);
    let scale = if m > 0.0 { m / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    // Round to nearest (ties to even) by adding 1.5·2^23: for |v·inv| <= 2^22 the integer lands
    // in the low mantissa bits. Branch-free, so it vectorises (a float-to-int cast does not).
    const MAGIC: f32 = 12_582_912.0;
    for (o, &v) in out.iter_mut().zip(x) {
        let i = ((v * inv + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        *o = (i + ((i >> 31) & M31::P as i32)) as u32; // v mod p
    }
    scale
}

/// De-quantizes integer results with the product of the activation and weight scales.
#[multiversion::multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn dequantize_into(y: &[i32], scale: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(y) {
        *o = v as f32 * scale;
    }
}

/// Measures one layer at one batch size and thread count: the baselines once, then the client
/// in each privacy mode of `opts.privacy` (one row per mode).
///
/// # Errors
/// an error when a self-check fails (a bug) or tract cannot run the layer.
pub fn run_layer(l: &BenchLayer, opts: &BenchOptions, seed: u64) -> Result<Vec<BenchRow>> {
    let g = &l.geom;
    let b = opts.batch;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| anyhow::anyhow!("thread pool: {e}"))?;
    let mut rng = seeded_rng(seed);
    let wq: Vec<i32> = (0..g.kernel_len()).map(|_| rng.random_range(-127..=127)).collect();
    let wf: Vec<f32> = wq.iter().map(|&v| v as f32 / 127.0).collect();
    let xf: Vec<f32> = (0..b * g.image_len()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let macs = (b * g.output_image_len() * g.m()) as u64;

    // Plaintext baselines, checked against each other (and the naive one when it runs).
    let gemm_out = pool.install(|| conv_gemm(g, b, &wf, &xf, opts.threads));
    let im2col_gemm_s = pool.install(|| time(opts.min_time, || conv_gemm(g, b, &wf, &xf, opts.threads)));
    let naive_s = if macs <= opts.naive_max_macs {
        let naive = vericonv::conv_f32(g, b, &wf, &xf)?;
        if !close(&naive, &gemm_out) {
            return Err(anyhow::anyhow!("{} {}: im2col+gemm disagrees with the naive convolution", l.network, l.layer));
        }
        // One timed run: the naive convolution is slow and steady.
        let t = Instant::now();
        std::hint::black_box(vericonv::conv_f32(g, b, &wf, &xf)?);
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    #[cfg(feature = "tract")]
    let tract_s = {
        let t = tract_baseline::TractConv::new(g, b, &wf)?;
        let shape = [b, g.cin(), g.h(), g.w()];
        if !close(&t.run(&shape, &xf, opts.threads)?, &gemm_out) {
            return Err(anyhow::anyhow!("{} {}: tract disagrees with im2col+gemm", l.network, l.layer));
        }
        let mut err = None;
        let s = time(opts.min_time, || t.run(&shape, &xf, opts.threads).map_err(|e| err = Some(e)));
        if let Some(e) = err {
            return Err(e);
        }
        Some(s)
    };
    #[cfg(not(feature = "tract"))]
    let tract_s: Option<f64> = None;
    let (best_plaintext_s, best_plaintext) = match tract_s {
        Some(t) if t < im2col_gemm_s => (t, "tract"),
        _ => (im2col_gemm_s, "im2col+gemm"),
    };

    // The private path of each mode, checked end to end before timing.
    let k_field: Vec<u32> = wq.iter().map(|&v| M31::embed(i64::from(v)).unwrap_or(0)).collect();
    let mut xq = vec![0u32; xf.len()];
    quantize_into(&xf, &mut xq);
    let xi: Vec<i32> = xq.iter().map(|&v| M31::lift(v) as i32).collect();
    let mut exact = vec![0i32; b * g.output_image_len()];
    vericonv_model::conv_int_into(g, b, &vericonv_model::ExactWeights::new(g, &wq, 127, 127), &xi, &mut exact);
    let cloud = CpuBackend::with_threads(opts.threads)?;
    let wscale = 1.0f32 / 127.0;
    let mut costs = Vec::new();
    for &privacy in &opts.privacy {
        let cost = pool
            .install(|| client_cost(g, b, privacy, &k_field, &xq, &exact, &cloud, opts, seed))
            .map_err(|e| anyhow::anyhow!("{} {} ({}): {e}", l.network, l.layer, privacy.name()))?;
        // Quantizing X and de-quantizing Y, the same in every mode.
        let (mut x_buf, mut yf_buf) = (vec![0u32; xq.len()], vec![0f32; exact.len()]);
        let quant_s = pool.install(|| {
            time(opts.min_time, || {
                let s = quantize_into(&xf, &mut x_buf);
                dequantize_into(&exact, s * wscale, &mut yf_buf);
            })
        });
        costs.push((privacy, quant_s, cost));
    }

    // The memory floor: X (f32) in, X' (u32) out, Y' (u32) in, Y (f32) out.
    // Both are 4-byte elements, so u32 buffers copy exactly the bytes in question.
    let (mut xo, mut yo) = (vec![0u32; xq.len()], vec![0u32; exact.len()]);
    let xbits: Vec<u32> = xf.iter().map(|v| v.to_bits()).collect();
    let ybits: Vec<u32> = exact.iter().map(|&v| v as u32).collect();
    let floor_s = time(opts.min_time, || {
        xo.copy_from_slice(&xbits);
        yo.copy_from_slice(&ybits);
        (xo[0], yo[0])
    });

    Ok(costs
        .into_iter()
        .map(|(privacy, quant_s, c)| {
            let client_s = quant_s + c.encrypt_s + c.verify_s + c.decrypt_s;
            let client_amortized_s = client_s + c.session_s * b as f64 / opts.session as f64;
            BenchRow {
                network: l.network.into(),
                layer: l.layer.into(),
                shape: shape_label(g),
                privacy: privacy.label(),
                batch: b,
                threads: opts.threads,
                macs,
                naive_s,
                im2col_gemm_s,
                tract_s,
                best_plaintext_s,
                best_plaintext: best_plaintext.into(),
                client_s,
                client_quantize_s: quant_s,
                client_encrypt_s: c.encrypt_s,
                client_verify_s: c.verify_s,
                client_verify_kernel_s: c.verify_kernel_s,
                client_decrypt_s: c.decrypt_s,
                session_s: c.session_s,
                session_images: opts.session,
                offline_s: c.offline_s,
                client_amortized_s,
                floor_s,
                client_over_floor: client_s / floor_s,
                image_over_floor: (client_s - c.verify_kernel_s).max(0.0) / floor_s,
                speedup: best_plaintext_s / client_amortized_s,
                speedup_unamortized: best_plaintext_s / (client_s + c.session_s),
                speedup_vs_naive: naive_s.map(|n| n / client_amortized_s),
                gemm_gflops: 2.0 * macs as f64 / im2col_gemm_s / 1e9,
                cloud_cpu_s: c.cloud_s,
                cloud_cpu_over_gemm: c.cloud_s / im2col_gemm_s,
            }
        })
        .collect())
}

/// The client's cost of one mode on one layer, in seconds per batch.
struct ClientCost {
    session_s: f64,
    encrypt_s: f64,
    verify_s: f64,
    verify_kernel_s: f64,
    decrypt_s: f64,
    offline_s: Option<f64>,
    cloud_s: f64,
}

/// Times the client's per-batch phases in `privacy` (into buffers reused across batches, as a
/// stream of batches would), after checking that the decrypted result equals `exact`. The
/// cloud time is the CPU backend's (both clouds' in mode `two-server`, which run concurrently
/// in a real deployment: the larger of the two is reported).
#[allow(clippy::too_many_arguments)]
fn client_cost(
    g: &Conv2d,
    b: usize,
    privacy: Privacy,
    k_field: &[u32],
    xq: &[u32],
    exact: &[i32],
    cloud: &CpuBackend,
    opts: &BenchOptions,
    seed: u64,
) -> Result<ClientCost> {
    let mut rng = seeded_rng(seed ^ 0xC11E);
    let key = SessionKey::generate_for(g, privacy, &mut rng)?;
    let kp = encrypt_kernel(&key, k_field)?;
    let (mut xp, mut xb) = (vec![0u32; xq.len()], vec![0u32; xq.len()]);
    let mut y = vec![0i32; exact.len()];
    let check = |y: &[i32]| {
        if y == exact { Ok(()) } else { Err(anyhow::anyhow!("decryption differs from the integer convolution")) }
    };
    fn accepted<'a>(claim: &Claim<'a>, rng: &mut vericonv::KeyRng) -> Result<Verified<'a>> {
        match verify::<M31, _>(claim, Mode::Fast, 1, rng)? {
            Verdict::Accepted(answer) => Ok(answer),
            Verdict::Rejected { .. } => Err(anyhow::anyhow!("an honest answer failed verification")),
        }
    }
    let s: Vec<u32> = (0..g.cout()).map(|_| M31::random(&mut rng)).collect();
    let verify_kernel_s = time(opts.min_time, || kernel_fold::<M31>(g, &kp, &s));
    let mut cloud_err = None;
    let mut timed_conv =
        |input: &[u32]| time(opts.min_time, || cloud.conv(g, b, &kp, input).map_err(|e| cloud_err = Some(e)));
    Ok(match privacy {
        Privacy::LowRank { .. } => {
            let mk = MaskKernel::new(&key, k_field)?;
            let session_s = time(opts.min_time, || (encrypt_kernel(&key, k_field), MaskKernel::new(&key, k_field)));
            let masks = ImageMask::generate_batch(&key, b, &mut rng);
            encrypt_input_into(&key, &masks, xq, &mut xp)?;
            let yp = cloud.conv(g, b, &kp, &xp)?;
            let claim = Claim::new(g, b, &kp, &xp, &yp)?;
            let answer = accepted(&claim, &mut rng)?;
            decrypt_into(&key, &mk, &masks, &answer, &mut y)?;
            check(&y)?;
            let cloud_s = timed_conv(&xp);
            // Timed into the spare buffer: the claim keeps the X' the cloud answered for.
            let encrypt_s = time(opts.min_time, || {
                let masks = ImageMask::generate_batch(&key, b, &mut rng);
                encrypt_input_into(&key, &masks, xq, &mut xb)
            });
            let verify_s = time(opts.min_time, || verify::<M31, _>(&claim, Mode::Fast, 1, &mut rng));
            let decrypt_s = time(opts.min_time, || decrypt_into(&key, &mk, &masks, &answer, &mut y));
            ClientCost { session_s, encrypt_s, verify_s, verify_kernel_s, decrypt_s, offline_s: None, cloud_s }
        }
        Privacy::TwoServer => {
            let session_s = time(opts.min_time, || encrypt_kernel(&key, k_field));
            let seed = ShareSeed::generate(&mut rng);
            encrypt_shares_into(&key, &seed, xq, &mut xp, &mut xb)?;
            let ya = cloud.conv_share(g, b, &kp, &seed)?;
            let yb = cloud.conv(g, b, &kp, &xb)?;
            let claim = Claim::with_parts(g, b, &kp, &xp, &ya, &yb)?;
            accepted(&claim, &mut rng)?;
            let checks = FastRounds::draw::<M31, _>(&claim, 1, &mut rng)?;
            if !decrypt_sum_verified_into(&key, &checks, &ya, &yb, &mut y)?.is_accepted() {
                anyhow::bail!("an honest answer failed the fused verification");
            }
            check(&y)?;
            let cloud_s = timed_conv(&xp).max(timed_conv(&xb));
            // Timed into spare buffers: the claim keeps the X' the clouds answered for.
            let mut spare = vec![0u32; xq.len()];
            let encrypt_s = time(opts.min_time, || {
                let seed = ShareSeed::generate(&mut rng);
                encrypt_shares_into(&key, &seed, xq, &mut spare, &mut xb)
            });
            // Fast verification's output side runs inside the decryption pass (as the client
            // does): verify = the input side, decrypt = unmasking plus the contraction.
            let verify_s = time(opts.min_time, || FastRounds::draw::<M31, _>(&claim, 1, &mut rng));
            let checks = FastRounds::draw::<M31, _>(&claim, 1, &mut rng)?;
            let decrypt_s = time(opts.min_time, || decrypt_sum_verified_into(&key, &checks, &ya, &yb, &mut y));
            ClientCost { session_s, encrypt_s, verify_s, verify_kernel_s, decrypt_s, offline_s: None, cloud_s }
        }
        Privacy::Pad => {
            let session_s = time(opts.min_time, || encrypt_kernel(&key, k_field));
            let offline_s = time(opts.min_time, || PadPool::generate("bench", &key, k_field, b, cloud, &mut rng));
            let pads = PadPool::generate("bench", &key, k_field, b, cloud, &mut rng)?.take(b)?;
            encrypt_padded_into(&key, &pads, xq, &mut xp)?;
            let yp = cloud.conv(g, b, &kp, &xp)?;
            let claim = Claim::new(g, b, &kp, &xp, &yp)?;
            let answer = accepted(&claim, &mut rng)?;
            decrypt_padded_into(&key, &pads, &answer, &mut y)?;
            check(&y)?;
            let cloud_s = timed_conv(&xp);
            // Online work only; the same pads are reused for timing, never for real.
            let encrypt_s = time(opts.min_time, || encrypt_padded_into(&key, &pads, xq, &mut xb));
            let verify_s = time(opts.min_time, || verify::<M31, _>(&claim, Mode::Fast, 1, &mut rng));
            let decrypt_s = time(opts.min_time, || decrypt_padded_into(&key, &pads, &answer, &mut y));
            ClientCost {
                session_s,
                encrypt_s,
                verify_s,
                verify_kernel_s,
                decrypt_s,
                offline_s: Some(offline_s),
                cloud_s,
            }
        }
        Privacy::SplitModel => {
            anyhow::bail!(
                "unsupported: the per-layer bench times lowrank, two-server and pad; time split-model on a whole model with `vericonv bench --model`"
            );
        }
    })
    .and_then(|c| match cloud_err {
        Some(e) => Err(e.into()),
        None => Ok(c),
    })
}

/// Writes the rows as CSV, one column per field of [`BenchRow`] (empty where a value is absent).
///
/// # Errors
/// An error naming the file when it cannot be written.
pub fn write_csv(rows: &[BenchRow], path: &std::path::Path) -> Result<()> {
    let csv_err = |e: csv::Error| match e.into_kind() {
        csv::ErrorKind::Io(e) => anyhow::Error::new(e).context(format!("writing {}", path.display())),
        other => anyhow::anyhow!("writing {}: {other:?}", path.display()),
    };
    let mut out = csv::Writer::from_path(path).map_err(csv_err)?;
    for r in rows {
        out.serialize(r).map_err(csv_err)?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))
}

/// Plots the client speedup over the best plaintext baseline per layer (one bar per batch
/// size, for `threads` threads, in the mode labelled `privacy`) on a log axis, with the paper's
/// 26× and 87× marked, as SVG.
///
/// # Errors
/// An error naming the file when it cannot be written.
pub fn plot_speedups(rows: &[BenchRow], threads: usize, privacy: &str, path: &std::path::Path) -> Result<()> {
    use plotters::prelude::*;
    let rows: Vec<&BenchRow> = rows.iter().filter(|r| r.threads == threads && r.privacy == privacy).collect();
    let mut layers: Vec<String> = Vec::new();
    for r in &rows {
        let name = format!("{} {}", r.network, r.layer);
        if !layers.contains(&name) {
            layers.push(name);
        }
    }
    let mut batches: Vec<usize> = rows.iter().map(|r| r.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    let io = |e: &dyn std::fmt::Display| anyhow::anyhow!("plotting {}: {e}", path.display());
    let ymax = rows.iter().map(|r| r.speedup).fold(100f64, f64::max) * 1.5;
    let ymin = rows.iter().map(|r| r.speedup).fold(1f64, f64::min).max(1e-2) / 1.5;
    let root = SVGBackend::new(path, (1200, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| io(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "vericonv client speedup over the best plaintext convolution ({threads} thread{})",
                if threads > 1 { "s" } else { "" }
            ),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(190)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..layers.len() as f64, (ymin..ymax).log_scale())
        .map_err(|e| io(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("speedup (plaintext time / client time)")
        .draw()
        .map_err(|e| io(&e))?;
    for (i, name) in layers.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, ymin));
        let style = ("sans-serif", 13).into_font().transform(FontTransform::Rotate90);
        root.draw(&Text::new(name.clone(), (px - 7, py + 6), style)).map_err(|e| io(&e))?;
    }
    let colors = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44)];
    let width = 0.8 / batches.len().max(1) as f64;
    for (bi, &batch) in batches.iter().enumerate() {
        let color = colors[bi % colors.len()];
        let bars = rows.iter().filter(|r| r.batch == batch).filter_map(|r| {
            let x = layers.iter().position(|l| *l == format!("{} {}", r.network, r.layer))? as f64
                + 0.1
                + width * bi as f64;
            Some(Rectangle::new([(x, ymin), (x + width * 0.95, r.speedup)], color.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(|e| io(&e))?
            .label(format!("batch {batch}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    for (target, color) in [(26.0, RED), (87.0, MAGENTA)] {
        chart
            .draw_series(LineSeries::new([(0.0, target), (layers.len() as f64, target)], color.stroke_width(2)))
            .map_err(|e| io(&e))?
            .label(format!("{target}× (paper)"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| io(&e))?;
    root.present().map_err(|e| io(&e))?;
    Ok(())
}

/// One layer's convolution kernels timed on a GPU adapter (`vericonv bench --backend gpu`).
/// Times are seconds per batch; GOP/s counts a multiply-accumulate as two operations.
#[cfg(feature = "gpu")]
#[derive(Clone, Debug, Serialize)]
pub struct GpuBenchRow {
    /// Network.
    pub network: String,
    /// Layer.
    pub layer: String,
    /// `Cin×H×W -> Cout×Ho×Wo, k×k/s, groups`.
    pub shape: String,
    /// Images per batch.
    pub batch: usize,
    /// Multiply-accumulates per batch.
    pub macs: u64,
    /// The adapter.
    pub adapter: String,
    /// The F_p shader variant (`U64` or `U32`).
    pub variant: String,
    /// Whether the tiled kernel applies (ungrouped layers); otherwise both rows are the simple one.
    pub tiled: bool,
    /// Timed on the GPU clock (timestamp queries) rather than wall clock.
    pub gpu_clock: bool,
    /// F_p, tiled kernel.
    pub field_tiled_s: f64,
    /// F_p, simple kernel (the oracle).
    pub field_simple_s: f64,
    /// Plaintext f32, tiled kernel.
    pub f32_tiled_s: f64,
    /// Plaintext f32, simple kernel.
    pub f32_simple_s: f64,
    /// GOP/s of the F_p tiled kernel.
    pub field_tiled_gops: f64,
    /// GOP/s of the f32 tiled kernel.
    pub f32_tiled_gops: f64,
    /// `field_tiled_s / f32_tiled_s`: the cost of exact F_p arithmetic over plaintext f32.
    pub field_over_f32: f64,
}

/// Checks every convolution kernel of `gpu` on one layer, then times them.
///
/// The F_p kernels must equal the CPU backend bit for bit, and the f32 kernels must equal
/// im2col + GEMM exactly on small-integer data (every partial sum is exact in f32).
///
/// # Errors
/// an error when a check fails, and the errors of [`GpuBackend::time_conv`].
///
/// [`GpuBackend::time_conv`]: vericonv_gpu::GpuBackend::time_conv
#[cfg(feature = "gpu")]
pub fn run_gpu_layer(
    l: &BenchLayer,
    gpu: &vericonv_gpu::GpuBackend,
    batch: usize,
    reps: usize,
    seed: u64,
) -> Result<GpuBenchRow> {
    use vericonv_gpu::{Arithmetic, ConvKernel};
    let g = &l.geom;
    let mut rng = seeded_rng(seed);
    let k: Vec<u32> = (0..g.kernel_len()).map(|_| M31::random(&mut rng)).collect();
    let x: Vec<u32> = (0..batch * g.image_len()).map(|_| M31::random(&mut rng)).collect();
    let kf: Vec<f32> = (0..k.len()).map(|_| rng.random_range(-7i8..=7).into()).collect();
    let xf: Vec<f32> = (0..x.len()).map(|_| rng.random_range(-7i8..=7).into()).collect();
    let want = CpuBackend::new().conv(g, batch, &k, &x)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let want_f32 = conv_gemm(g, batch, &kf, &xf, cores);
    let kernels = [ConvKernel::Tiled, ConvKernel::Simple];
    for kernel in kernels {
        let fails = |what: &str| anyhow::anyhow!("{} {}: the {kernel:?} {what} kernel is wrong", l.network, l.layer);
        if gpu.conv_field(kernel, g, batch, &k, &x)? != want {
            return Err(fails("F_p"));
        }
        if gpu.conv_f32(kernel, g, batch, &kf, &xf)? != want_f32 {
            return Err(fails("f32"));
        }
    }
    let field = Arithmetic::Field(gpu.variant());
    let [field_tiled, field_simple] = kernels.map(|kern| gpu.time_conv(field, kern, g, batch, &k, &x, reps));
    let [f32_tiled, f32_simple] = kernels.map(|kern| gpu.time_conv(Arithmetic::F32, kern, g, batch, &kf, &xf, reps));
    let (field_tiled, field_simple, f32_tiled, f32_simple) = (field_tiled?, field_simple?, f32_tiled?, f32_simple?);
    let macs = (batch * g.output_image_len() * g.m()) as u64;
    let gops = |s: f64| 2.0 * macs as f64 / s / 1e9;
    Ok(GpuBenchRow {
        network: l.network.into(),
        layer: l.layer.into(),
        shape: shape_label(g),
        batch,
        macs,
        adapter: gpu.info().name.clone(),
        variant: format!("{:?}", gpu.variant()),
        tiled: g.groups() == 1,
        gpu_clock: field_tiled.gpu_clock,
        field_tiled_s: field_tiled.seconds,
        field_simple_s: field_simple.seconds,
        f32_tiled_s: f32_tiled.seconds,
        f32_simple_s: f32_simple.seconds,
        field_tiled_gops: gops(field_tiled.seconds),
        f32_tiled_gops: gops(f32_tiled.seconds),
        field_over_f32: field_tiled.seconds / f32_tiled.seconds,
    })
}
