//! Helpers shared by the integration tests.

/// The repository root (the committed models and the fetched data live there).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use vericonv::Mode;
use vericonv::Privacy;
use vericonv::conv_i64;
use vericonv::seeded_rng;
use vericonv::{CloudBackend, Clouds};
use vericonv::{Conv2d, Padding};
use vericonv::{LayerConfig, PrivateConv};
#[cfg(feature = "gpu")]
use vericonv_gpu::{GpuBackend, GpuOptions};

/// A seeded RNG; the seed is printed so a failure can be replayed.
pub fn rng(seed: u64) -> ChaCha20Rng {
    println!("seed = {seed:#x}");
    ChaCha20Rng::seed_from_u64(seed)
}

/// Uniform integers in `[-bound, bound]`.
pub fn ints(rng: &mut impl Rng, len: usize, bound: i32) -> Vec<i32> {
    (0..len).map(|_| rng.random_range(-bound..=bound)).collect()
}

/// A fixed shape: `(cin, cout, groups)`, input, kernel, stride, padding, dilation.
fn conv(
    ch: (usize, usize, usize),
    hw: (usize, usize),
    k: (usize, usize),
    s: (usize, usize),
    pad: Padding,
    d: (usize, usize),
) -> Conv2d {
    Conv2d::builder(ch.0, ch.1, hw, k)
        .stride(s.0, s.1)
        .padding(pad)
        .dilation(d.0, d.1)
        .groups(ch.2)
        .build()
        .expect("fixed test shape is valid")
}

/// At least `13 + random` convolution shapes with their batch sizes: a fixed list that covers
/// every feature (1×1 and 7×7 kernels, stride 2, asymmetric padding, dilation 2, groups,
/// depthwise, batch > 1, channel counts off the tile sizes, padding-only output rows), then
/// random valid shapes. Every shape stays small enough for lavapipe.
pub fn conv_shapes(seed: u64, random: usize) -> Vec<(Conv2d, usize)> {
    let p = Padding::new;
    let mut shapes = vec![
        (conv((3, 5, 1), (9, 7), (1, 1), (1, 1), p(0, 0, 0, 0), (1, 1)), 2),
        (conv((2, 3, 1), (12, 13), (7, 7), (1, 1), p(3, 3, 3, 3), (1, 1)), 1),
        (conv((3, 4, 1), (11, 10), (3, 3), (2, 2), p(1, 1, 1, 1), (1, 1)), 2),
        (conv((2, 3, 1), (8, 9), (3, 3), (1, 1), p(0, 1, 2, 3), (1, 1)), 1),
        (conv((3, 2, 1), (10, 10), (3, 3), (1, 1), p(2, 2, 2, 2), (2, 2)), 1),
        (conv((4, 6, 2), (7, 7), (3, 3), (1, 1), p(1, 1, 1, 1), (1, 1)), 3),
        (conv((5, 5, 5), (9, 8), (3, 3), (1, 1), p(1, 1, 1, 1), (1, 1)), 2),
        (conv((4, 8, 4), (6, 6), (3, 3), (2, 1), p(1, 0, 1, 0), (1, 1)), 1),
        (conv((17, 33, 1), (5, 5), (3, 3), (1, 1), p(1, 1, 1, 1), (1, 1)), 1),
        (conv((6, 9, 3), (9, 11), (3, 5), (2, 1), p(2, 0, 1, 3), (1, 2)), 2),
        (conv((3, 2, 1), (5, 6), (5, 6), (1, 1), p(0, 0, 0, 0), (1, 1)), 4),
        (conv((2, 3, 1), (4, 4), (1, 1), (3, 2), p(3, 0, 4, 1), (1, 1)), 1),
        // Outputs at least 32 wide: decryption's row-by-row path.
        (conv((2, 3, 1), (5, 37), (3, 3), (1, 1), p(1, 1, 1, 1), (1, 1)), 2),
    ];
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    while shapes.len() < 13 + random {
        let groups = [1, 1, 2, 3][rng.random_range(0..4)];
        let depthwise = rng.random_bool(0.15);
        let cin = if depthwise { rng.random_range(1..=8) } else { groups * rng.random_range(1..=5) };
        let (groups, cout) =
            if depthwise { (cin, cin * rng.random_range(1..=2)) } else { (groups, groups * rng.random_range(1..=5)) };
        let k = ([1, 2, 3, 5, 7][rng.random_range(0..5)], [1, 2, 3, 5, 7][rng.random_range(0..5)]);
        let hw = (rng.random_range(1..=16), rng.random_range(1..=16));
        let s = (rng.random_range(1..=3), rng.random_range(1..=3));
        let d = (rng.random_range(1..=2), rng.random_range(1..=2));
        let pad = p(rng.random_range(0..=3), rng.random_range(0..=3), rng.random_range(0..=3), rng.random_range(0..=3));
        let batch = rng.random_range(1..=3);
        if let Ok(g) =
            Conv2d::builder(cin, cout, hw, k).stride(s.0, s.1).padding(pad).dilation(d.0, d.1).groups(groups).build()
        {
            shapes.push((g, batch));
        }
    }
    shapes
}

/// Skips a test whose requirement is missing, printing `reason`; fails it instead when the
/// environment variable `var` is `1` (as `.ci/run` sets it).
pub fn skip_unless_required(var: &str, reason: &str) {
    assert!(std::env::var(var).as_deref() != Ok("1"), "{var}=1 but {reason}");
    use std::io::Write;
    // Written to the raw stderr handle so that the test harness does not swallow it.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}; set {var}=1 to make this a failure");
}

#[cfg(feature = "gpu")]
/// The GPU backend, or `None` with the reason printed. With `VERICONV_REQUIRE_GPU=1`, a missing
/// adapter fails the test instead.
pub fn gpu_or_skip(opts: &GpuOptions) -> Option<GpuBackend> {
    match GpuBackend::new(opts) {
        Ok(gpu) => {
            println!("GPU: {}", gpu.info());
            Some(gpu)
        }
        Err(e) => {
            skip_unless_required("VERICONV_REQUIRE_GPU", &format!("the GPU backend is unavailable: {e}"));
            None
        }
    }
}

/// The data folder of `scripts/fetch-data.sh`, or `None` with the reason printed. With
/// `VERICONV_REQUIRE_DATA=1` (as in `.ci/run`) missing data fails the test instead.
pub fn data_dir_or_skip() -> Option<std::path::PathBuf> {
    let dir = repo_root().join("data");
    if dir.join("mnist/t10k-images-idx3-ubyte").is_file() {
        return Some(dir);
    }
    skip_unless_required("VERICONV_REQUIRE_DATA", &format!("{} has no data: run scripts/fetch-data.sh", dir.display()));
    None
}

/// Every committed model (`models/*.json`) with the built-in data set it was made for.
pub fn committed_models() -> Vec<(std::path::PathBuf, String)> {
    let dir = repo_root().join("models");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("models/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let stem = p.file_stem().expect("file name").to_string_lossy().to_string();
            let dataset = stem.split_once('-').expect("<arch>-<dataset>").1.to_string();
            (p, dataset)
        })
        .collect();
    v.sort();
    v
}

/// The plaintext integer convolution plus bias.
pub fn expected(g: &Conv2d, batch: usize, k: &[i32], x: &[i32], bias: &[i32]) -> Vec<i32> {
    let k64: Vec<i64> = k.iter().map(|&v| i64::from(v)).collect();
    let x64: Vec<i64> = x.iter().map(|&v| i64::from(v)).collect();
    let mut y = conv_i64(g, batch, &k64, &x64).expect("lengths");
    for (plane, &b) in y.chunks_exact_mut(g.n()).zip(bias.iter().cycle()) {
        plane.iter_mut().for_each(|v| *v += i64::from(b));
    }
    y.into_iter().map(|v| i32::try_from(v).expect("fits")).collect()
}

/// Runs `privacy` on every shape of [`conv_shapes`], with `a` (and `b` for two-server) as the
/// clouds and `own` as the client's backend for pads, and checks the decrypted result against
/// the plaintext convolution.
pub fn exact_on_every_shape(
    privacy: Privacy,
    a: &dyn CloudBackend,
    b: &dyn CloudBackend,
    own: &dyn CloudBackend,
    seed: u64,
    random: usize,
) {
    let mut r = rng(seed);
    for (idx, (g, batch)) in conv_shapes(seed, random).into_iter().enumerate() {
        let k = ints(&mut r, g.kernel_len(), 127);
        let bias = ints(&mut r, g.cout(), 1000);
        let x = ints(&mut r, batch * g.image_len(), 127);
        let mode = if idx % 2 == 0 { Mode::Fast } else { Mode::Strict };
        let cfg = LayerConfig { name: format!("shape{idx}"), mode, privacy, ..LayerConfig::default() };
        let mut key_rng = seeded_rng(seed + idx as u64);
        let mut layer = PrivateConv::new(g, &k, Some(&bias), cfg, &mut key_rng).expect("layer builds");
        let clouds = if privacy.clouds() == 2 { Clouds::Two(a, b) } else { Clouds::One(a) };
        if privacy.uses_pads() {
            let pool = layer.generate_pads(batch, own, &mut key_rng).expect("pads");
            layer.add_pads(pool).expect("same layer and key");
        }
        let (y, _) = layer.run(clouds, &x, &mut key_rng).unwrap_or_else(|e| panic!("shape {idx} {g:?}: {e}"));
        assert_eq!(y, expected(&g, batch, &k, &x, &bias), "{privacy:?}, shape {idx}: {g:?} batch {batch}");
        assert_eq!(layer.pads_available(), 0, "every pad was used once");
    }
}
