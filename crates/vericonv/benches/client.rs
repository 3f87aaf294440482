//! Client phases in time per element: kernel setup (per session), input encryption, Fast and
//! Strict verification, decryption; the share generator of mode `two-server`. Every benchmark first checks that the pipeline it times
//! is correct (verified and equal to the plaintext convolution).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::RngExt;
use rayon::prelude::*;
use vericonv::conv_i64;
use vericonv::field::{reference, slices};
use vericonv::{Claim, Mode, Verdict, verify};
use vericonv::{CloudBackend, CpuBackend};
use vericonv::{Conv2d, Padding};
use vericonv::{ImageMask, SessionKey, seeded_rng};
use vericonv::{M31, PrimeField};
use vericonv::{MaskKernel, decrypt, decrypt_into};
use vericonv::{encrypt_input, encrypt_input_into, encrypt_kernel};
use vericonv::{expand_into, expand_reference};

fn shapes() -> Vec<(&'static str, Conv2d)> {
    let p = Padding::uniform;
    vec![
        ("lenet_conv2", Conv2d::builder(6, 16, (14, 14), (5, 5)).build().expect("valid")),
        ("resnet_56x56x64", Conv2d::builder(64, 64, (56, 56), (3, 3)).padding(p(1)).build().expect("valid")),
        ("resnet_14x14x256", Conv2d::builder(256, 256, (14, 14), (3, 3)).padding(p(1)).build().expect("valid")),
    ]
}

fn client_phases(c: &mut Criterion) {
    let mut group = c.benchmark_group("client");
    group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
    for (name, g) in shapes() {
        let mut rng = seeded_rng(42);
        let k: Vec<i32> = (0..g.kernel_len()).map(|_| rng.random_range(-127..=127)).collect();
        let x: Vec<i32> = (0..g.image_len()).map(|_| rng.random_range(-127..=127)).collect();
        let embed = |v: &[i32]| -> Vec<u32> { v.iter().map(|&a| M31::embed(i64::from(a)).expect("8-bit")).collect() };
        let (ke, xe) = (embed(&k), embed(&x));
        let key = SessionKey::generate(&g, 2, &mut rng).expect("key");
        let kp = encrypt_kernel(&key, &ke).expect("k");
        let mk = MaskKernel::new(&key, &ke).expect("kg");
        let masks = ImageMask::generate_batch(&key, 1, &mut rng);
        let xp = encrypt_input(&key, &masks, &xe).expect("x");
        let yp = CpuBackend::new().conv(&g, 1, &kp, &xp).expect("cloud");
        // Check before timing.
        let claim = Claim::new(&g, 1, &kp, &xp, &yp).expect("lengths");
        assert!(verify::<M31, _>(&claim, Mode::Strict, 1, &mut rng).expect("verify").is_accepted());
        let Verdict::Accepted(answer) = verify::<M31, _>(&claim, Mode::Fast, 1, &mut rng).expect("verify") else {
            panic!("{name}: an honest answer was rejected")
        };
        let y = decrypt(&key, &mk, &masks, &answer).expect("decrypt");
        let plain = conv_i64(
            &g,
            1,
            &k.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(),
            &x.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(),
        )
        .expect("conv");
        assert!(y.iter().zip(&plain).all(|(&a, &b)| i64::from(a) == b), "{name}: decryption is exact");

        group.throughput(Throughput::Elements(g.kernel_len() as u64));
        group.bench_function(BenchmarkId::new("session_setup_per_weight", name), |b| {
            b.iter(|| (encrypt_kernel(&key, &ke).expect("k"), MaskKernel::new(&key, &ke).expect("kg")))
        });
        group.throughput(Throughput::Elements(g.image_len() as u64));
        // Output buffers are reused across iterations, as a stream of batches would.
        let mut xp_buf = vec![0u32; xe.len()];
        group.bench_function(BenchmarkId::new("encrypt_per_input", name), |b| {
            b.iter(|| {
                let masks = ImageMask::generate_batch(&key, 1, &mut rng);
                encrypt_input_into(&key, &masks, &xe, &mut xp_buf).expect("x")
            })
        });
        group.throughput(Throughput::Elements(g.output_image_len() as u64));
        for mode in [Mode::Fast, Mode::Strict] {
            group.bench_function(BenchmarkId::new(format!("verify_{}_per_output", mode.name()), name), |b| {
                b.iter(|| verify::<M31, _>(&claim, mode, 1, &mut rng).expect("verify"))
            });
        }
        let mut y_buf = vec![0i32; yp.len()];
        group.bench_function(BenchmarkId::new("decrypt_per_output", name), |b| {
            b.iter(|| decrypt_into(&key, &mk, &masks, &answer, &mut y_buf).expect("decrypt"))
        });
    }
    group.finish();
}

/// The vectorised M31 kernels against their scalar reference (the same results, checked first).
fn field_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("field");
    group.sample_size(20).measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(200));
    let mut rng = seeded_rng(7);
    let n = 224 * 224;
    let rows: Vec<Vec<u32>> = (0..3).map(|_| (0..n).map(|_| M31::random(&mut rng)).collect()).collect();
    let terms: Vec<(u32, &[u32])> = rows.iter().map(|r| (M31::random(&mut rng), r.as_slice())).collect();
    let (mut fast, mut slow) = (vec![0u32; n], vec![0u32; n]);
    slices::combine_into(&mut fast, &terms);
    reference::combine_into::<M31>(&mut slow, &terms);
    assert_eq!(fast, slow);
    group.throughput(Throughput::Elements((n * terms.len()) as u64));
    group.bench_function("combine_into_3_terms/vectorised", |b| b.iter(|| slices::combine_into(&mut fast, &terms)));
    group.bench_function("combine_into_3_terms/scalar_reference", |b| {
        b.iter(|| reference::combine_into::<M31>(&mut slow, &terms))
    });
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("dot/vectorised", |b| b.iter(|| slices::dot(&rows[0], &rows[1])));
    group.bench_function("dot/scalar_reference", |b| b.iter(|| reference::dot::<M31>(&rows[0], &rows[1])));
    // Mode lowrank's decryption of a 56×56 plane of a 3×3 layer at rank 2: K = 6 mask rows.
    let (wo, kk) = (56, 6);
    let coefs: Vec<u32> = (0..wo * kk).map(|_| M31::random(&mut rng)).collect();
    let (q, y) = (&rows[1][..kk * wo], &rows[2][..wo * wo]);
    let mut out = vec![0i32; wo * wo];
    slices::unmask_rows(&mut out, y, 12345, &coefs, q, wo);
    let want: Vec<i32> = (0..wo * wo)
        .map(|i| {
            let (r, x) = (i / wo, i % wo);
            let mask = (0..kk).fold(0, |acc, k| M31::add(acc, M31::mul(coefs[r * kk + k], q[k * wo + x])));
            M31::lift(M31::sub(M31::mul(12345, y[i]), mask)) as i32
        })
        .collect();
    assert_eq!(out, want);
    group.throughput(Throughput::Elements((wo * wo) as u64));
    group.bench_function("unmask_rows_6_terms/vectorised", |b| {
        b.iter(|| slices::unmask_rows(&mut out, y, 12345, &coefs, q, wo))
    });
    group.finish();
}

/// Verification's output side in mode two-server, on two answers far beyond the caches (64 MiB
/// each): the contraction of both with a plane's weights, against a plain sum of the two, which
/// only reads them.
fn verify_memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory");
    group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
    let (n, plane) = (1 << 24, 56 * 56);
    let mut rng = seeded_rng(9);
    let a: Vec<u32> = (0..n).map(|_| M31::random(&mut rng)).collect();
    let b: Vec<u32> = (0..n).map(|_| M31::random(&mut rng)).collect();
    let w: Vec<u32> = (0..plane).map(|_| M31::random(&mut rng)).collect();
    let contract = || {
        a.chunks_exact(plane).zip(b.chunks_exact(plane)).fold(0u64, |acc, (pa, pb)| {
            let ((da, _), (db, _)) = (slices::dot_max(pa, &w), slices::dot_max(pb, &w));
            acc.wrapping_add(u64::from(M31::reduce(da))).wrapping_add(u64::from(M31::reduce(db)))
        })
    };
    let want = a.chunks_exact(plane).zip(b.chunks_exact(plane)).fold(0u64, |acc, (pa, pb)| {
        let (da, db) = (reference::dot::<M31>(pa, &w), reference::dot::<M31>(pb, &w));
        acc.wrapping_add(u64::from(da)).wrapping_add(u64::from(db))
    });
    assert_eq!(contract(), want);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("two_answers/contract", |bch| bch.iter(contract));
    group.bench_function("two_answers/plain_sum", |bch| {
        bch.iter(|| a.iter().zip(&b).fold(0u64, |acc, (&x, &y)| acc.wrapping_add(u64::from(x) + u64::from(y))))
    });
    // The contraction on every core (rayon's global pool): what more cores add to the memory
    // bandwidth that bounds it.
    let contract_par = || {
        a.par_chunks_exact(plane)
            .zip(b.par_chunks_exact(plane))
            .map(|(pa, pb)| {
                let ((da, _), (db, _)) = (slices::dot_max(pa, &w), slices::dot_max(pb, &w));
                u64::from(M31::reduce(da)).wrapping_add(u64::from(M31::reduce(db)))
            })
            .reduce(|| 0, u64::wrapping_add)
    };
    assert_eq!(contract_par(), want);
    group.bench_function(format!("two_answers/contract_threads_{}", rayon::current_num_threads()), |bch| {
        bch.iter(contract_par)
    });
    group.finish();
}

/// The share generator of mode `two-server` (docs/scheme.md §11), in field elements per second,
/// against its word-by-word definition (the same output, checked first).
fn share_generator(c: &mut Criterion) {
    let mut group = c.benchmark_group("share");
    group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
    let n = 1 << 20;
    let seed = [7u8; 32];
    let mut out = vec![0u32; n];
    expand_into(&seed, &mut out);
    assert_eq!(out, expand_reference(&seed, n));
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("expand/blocks", |b| b.iter(|| expand_into(&seed, &mut out)));
    group.bench_function("expand/word_by_word", |b| b.iter(|| expand_reference(&seed, n)));
    group.finish();
}

criterion_group!(benches, client_phases, field_kernels, verify_memory, share_generator);
criterion_main!(benches);
