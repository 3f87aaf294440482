//! The GPU backend (wgpu/WGSL) against the CPU backend, bit for bit. On a machine without an
//! adapter these tests print why and skip, unless VERICONV_REQUIRE_GPU=1 makes that a failure.

use common::{conv_shapes, exact_on_every_shape, gpu_or_skip, ints, rng};
use vericonv::Privacy;
use vericonv::seeded_rng;
use vericonv::{Claim, strict_products};
use vericonv::{CloudBackend, CpuBackend};
use vericonv::{LayerConfig, PrivateConv};
use vericonv::{M31, PrimeField};
use vericonv::{conv_f32, conv_i64};
use vericonv_gpu::{ConvKernel, GpuOptions, ShaderVariant};

fn variants() -> Vec<ShaderVariant> {
    vec![ShaderVariant::U64, ShaderVariant::U32]
}

const KERNELS: [ConvKernel; 2] = [ConvKernel::Simple, ConvKernel::Tiled];

#[test]
fn gpu_matches_cpu_bit_for_bit_on_every_shape_in_both_variants_and_kernels() {
    let seed = 0x69_0001;
    let shapes = conv_shapes(seed, 40);
    assert!(shapes.len() >= 50);
    let cpu = CpuBackend::new();
    for variant in variants() {
        let Some(gpu) = gpu_or_skip(&GpuOptions { variant: Some(variant), ..GpuOptions::default() }) else { return };
        assert_eq!(gpu.variant(), variant);
        let mut r = rng(seed);
        for (g, batch) in &shapes {
            let k: Vec<u32> = (0..g.kernel_len()).map(|_| M31::random(&mut r)).collect();
            let x: Vec<u32> = (0..batch * g.image_len()).map(|_| M31::random(&mut r)).collect();
            let want = cpu.conv(g, *batch, &k, &x).expect("cpu");
            for kernel in KERNELS {
                let got = gpu.conv_field(kernel, g, *batch, &k, &x).expect("gpu");
                assert_eq!(got, want, "{variant:?} {kernel:?} {g:?} batch {batch}");
            }
        }
    }
}

#[test]
fn tiled_kernel_equals_the_simple_oracle_across_tile_edges_and_at_the_largest_elements() {
    let seed = 0x69_0006;
    println!("seed = {seed:#x}");
    let p = vericonv::Padding::new;
    // Several 32×32 output tiles and 16-deep reduction steps, with partial tiles everywhere:
    // Cout 40 (32 + 8), 11×13 = 143 pixels (4×32 + 15), m = 5·9 = 45 (not a multiple of 4).
    let shapes = [
        vericonv::Conv2d::builder(5, 40, (11, 13), (3, 3)).padding(p(1, 1, 1, 1)).build().expect("valid"),
        vericonv::Conv2d::builder(33, 65, (9, 9), (1, 1)).build().expect("valid"),
        vericonv::Conv2d::builder(3, 8, (20, 18), (7, 7)).stride(2, 2).padding(p(3, 3, 3, 3)).build().expect("valid"),
    ];
    for variant in variants() {
        let Some(gpu) = gpu_or_skip(&GpuOptions { variant: Some(variant), ..GpuOptions::default() }) else { return };
        let mut r = rng(seed);
        for g in &shapes {
            let random: Vec<u32> = (0..2 * g.image_len()).map(|_| M31::random(&mut r)).collect();
            let kr: Vec<u32> = (0..g.kernel_len()).map(|_| M31::random(&mut r)).collect();
            let (kmax, xmax) = (vec![M31::P - 1; g.kernel_len()], vec![M31::P - 1; 2 * g.image_len()]);
            for (k, x) in [(&kr, &random), (&kmax, &xmax)] {
                let oracle = gpu.conv_field(ConvKernel::Simple, g, 2, k, x).expect("simple");
                let tiled = gpu.conv_field(ConvKernel::Tiled, g, 2, k, x).expect("tiled");
                assert_eq!(tiled, oracle, "{variant:?} {g:?}");
                assert_eq!(tiled, vericonv::conv_field::<M31>(g, 2, k, x).expect("reference"));
            }
        }
    }
}

#[test]
fn private_inference_on_gpu_equals_plaintext_on_every_shape() {
    let seed = 0x69_0002;
    let Some(gpu) = gpu_or_skip(&GpuOptions::default()) else { return };
    let mut r = rng(seed);
    for (idx, (g, batch)) in conv_shapes(seed, 40).into_iter().enumerate() {
        let k = ints(&mut r, g.kernel_len(), 127);
        let x = ints(&mut r, batch * g.image_len(), 127);
        let mut key_rng = seeded_rng(seed + idx as u64);
        let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut key_rng).expect("layer");
        let (y, _) = layer.run(&gpu, &x, &mut key_rng).expect("verified");
        let k64: Vec<i64> = k.iter().map(|&v| i64::from(v)).collect();
        let x64: Vec<i64> = x.iter().map(|&v| i64::from(v)).collect();
        assert_eq!(
            y.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(),
            conv_i64(&g, batch, &k64, &x64).expect("conv"),
            "{g:?}"
        );
    }
}

#[test]
fn two_server_and_pad_on_gpu_equal_plaintext_on_every_shape() {
    let Some(gpu) = gpu_or_skip(&GpuOptions::default()) else { return };
    let cpu = CpuBackend::new();
    // Cloud A on the GPU, cloud B on the CPU; then one GPU cloud with the pads' mask
    // convolutions on the client's own GPU.
    exact_on_every_shape(Privacy::TwoServer, &gpu, &cpu, &cpu, 0x69_0003, 40);
    exact_on_every_shape(Privacy::Pad, &gpu, &gpu, &gpu, 0x69_0004, 40);
    exact_on_every_shape(Privacy::SplitModel, &gpu, &cpu, &gpu, 0x69_0005, 40);
}

#[test]
fn gpu_splits_work_that_exceeds_binding_and_dispatch_limits() {
    let seed = 0x69_0003;
    let cpu = CpuBackend::new();
    // 2 KiB bindings and at most 2 workgroups per dimension force channel, row-band and image
    // chunks on every shape below.
    let opts =
        GpuOptions { max_binding_size: Some(2048), max_workgroups_per_dimension: Some(2), ..GpuOptions::default() };
    let Some(gpu) = gpu_or_skip(&opts) else { return };
    let mut r = rng(seed);
    let mut shapes = conv_shapes(seed, 8);
    shapes
        .retain(|(g, _)| g.m() <= 512 && g.wo() <= 128 && g.cin() * g.w() * ((g.kh() - 1) * g.dilation().0 + 1) <= 512);
    assert!(shapes.len() >= 10, "enough shapes survive the filter");
    for (g, batch) in shapes {
        let k: Vec<u32> = (0..g.kernel_len()).map(|_| M31::random(&mut r)).collect();
        let x: Vec<u32> = (0..batch * g.image_len()).map(|_| M31::random(&mut r)).collect();
        assert_eq!(
            gpu.conv(&g, batch, &k, &x).expect("split conv"),
            cpu.conv(&g, batch, &k, &x).expect("cpu"),
            "{g:?}"
        );
    }
    // A kernel row larger than a binding cannot be split: a typed error, not a panic.
    let g = vericonv::Conv2d::builder(64, 2, (4, 4), (3, 3)).build().expect("valid");
    let err = gpu.conv(&g, 1, &vec![0; g.kernel_len()], &vec![0; g.image_len()]).expect_err("too large");
    assert!(
        matches!(err.backend_error::<vericonv_gpu::GpuError>(), Some(vericonv_gpu::GpuError::DeviceLimit(_))),
        "{err}"
    );
    assert!(matches!(err, vericonv::Error::Backend { exhausted: true, .. }), "a device limit is an exhausted backend");
}

#[test]
fn gpu_strict_verification_products_equal_the_cpu_path() {
    let seed = 0x69_0004;
    for variant in variants() {
        let Some(gpu) = gpu_or_skip(&GpuOptions { variant: Some(variant), ..GpuOptions::default() }) else { return };
        let mut r = rng(seed);
        for (g, batch) in conv_shapes(seed, 20) {
            let rand_vec =
                |r: &mut rand_chacha::ChaCha20Rng, n: usize| -> Vec<u32> { (0..n).map(|_| M31::random(r)).collect() };
            let kp = rand_vec(&mut r, g.kernel_len());
            let xp = rand_vec(&mut r, batch * g.image_len());
            let yp = rand_vec(&mut r, batch * g.output_image_len());
            let rv = rand_vec(&mut r, g.n());
            let claim = Claim::new(&g, batch, &kp, &xp, &yp).expect("lengths");
            let want = strict_products::<M31>(&claim, &rv).expect("cpu");
            assert_eq!(gpu.strict_products(&claim, &rv).expect("gpu"), want, "{variant:?} {g:?}");
        }
    }
}

#[test]
fn gpu_f32_baseline_matches_the_reference_on_integer_data() {
    let seed = 0x69_0005;
    let Some(gpu) = gpu_or_skip(&GpuOptions::default()) else { return };
    let mut r = rng(seed);
    for (g, batch) in conv_shapes(seed, 10) {
        // Small integers keep every f32 partial sum exact, so any summation order agrees.
        let k: Vec<f32> = ints(&mut r, g.kernel_len(), 7).into_iter().map(|v| v as f32).collect();
        let x: Vec<f32> = ints(&mut r, batch * g.image_len(), 7).into_iter().map(|v| v as f32).collect();
        let want = conv_f32(&g, batch, &k, &x).expect("ref");
        for kernel in KERNELS {
            assert_eq!(gpu.conv_f32(kernel, &g, batch, &k, &x).expect("gpu"), want, "{kernel:?} {g:?}");
        }
    }
}

#[test]
fn gpu_rejects_mismatched_lengths_with_typed_errors() {
    let Some(gpu) = gpu_or_skip(&GpuOptions::default()) else { return };
    let g = vericonv::Conv2d::builder(2, 2, (4, 4), (3, 3)).build().expect("valid");
    assert!(matches!(gpu.conv(&g, 1, &[0; 3], &vec![0; g.image_len()]), Err(vericonv::Error::LengthMismatch { .. })));
    assert!(matches!(
        gpu.conv(&g, 2, &vec![0; g.kernel_len()], &vec![0; g.image_len()]),
        Err(vericonv::Error::LengthMismatch { .. })
    ));
    let (k, x, y) = (vec![0; g.kernel_len()], vec![0; g.image_len()], vec![0; g.output_image_len()]);
    let claim = Claim::new(&g, 1, &k, &x, &y).expect("lengths");
    assert!(matches!(gpu.strict_products(&claim, &[0; 3]), Err(vericonv::Error::LengthMismatch { .. })));
}

#[test]
fn a_session_kernel_stays_on_the_device_until_the_key_rotates() {
    // Tiny bindings split the layer into several channel chunks, each cached.
    let opts = GpuOptions { max_binding_size: Some(2048), ..GpuOptions::default() };
    let Some(gpu) = gpu_or_skip(&opts) else { return };
    let g = vericonv::Conv2d::builder(4, 12, (9, 9), (3, 3))
        .padding(vericonv::Padding::uniform(1))
        .build()
        .expect("geometry");
    let seed = 77;
    println!("seed {seed}");
    let mut r = rng(seed);
    let (k, x) = (ints(&mut r, g.kernel_len(), 127), ints(&mut r, 2 * g.image_len(), 127));
    let widen = |v: &[i32]| v.iter().map(|&a| i64::from(a)).collect::<Vec<_>>();
    let exact = conv_i64(&g, 2, &widen(&k), &widen(&x)).expect("plaintext");
    let mut key_rng = seeded_rng(seed);
    let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut key_rng).expect("layer");
    let mut uploads = Vec::new();
    for round in 0..4 {
        if round == 3 {
            layer.rotate(&mut key_rng).expect("new session");
        }
        let (y, _) = layer.run(&gpu, &x, &mut key_rng).expect("verified");
        assert!(y.iter().zip(&exact).all(|(&a, &b)| i64::from(a) == b), "round {round}");
        uploads.push(gpu.kernel_uploads());
    }
    assert!(uploads[0] >= 2, "the layer was split into channel chunks ({} uploads)", uploads[0]);
    assert_eq!(uploads[1], uploads[0], "the second call of the session uploads nothing");
    assert_eq!(uploads[2], uploads[0], "nor the third");
    assert_eq!(uploads[3], 2 * uploads[0], "a new session key means a new K', uploaded once");
}

#[test]
fn sessions_seeded_alike_never_share_a_device_kernel() {
    // Two layers of one geometry whose key streams start from the same seed draw the same
    // session id: the device cache must still tell their kernels apart.
    let Some(gpu) = gpu_or_skip(&GpuOptions::default()) else { return };
    let g = vericonv::Conv2d::builder(3, 5, (8, 8), (3, 3)).build().expect("geometry");
    let mut r = rng(88);
    println!("seed 88");
    let x = ints(&mut r, g.image_len(), 127);
    let widen = |v: &[i32]| v.iter().map(|&a| i64::from(a)).collect::<Vec<_>>();
    for round in 0..2 {
        for which in 0..2 {
            let k = ints(&mut rng(1000 + which), g.kernel_len(), 127);
            let mut key_rng = seeded_rng(5);
            let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut key_rng).expect("layer");
            let (y, _) = layer.run(&gpu, &x, &mut key_rng).expect("verified");
            let exact = conv_i64(&g, 1, &widen(&k), &widen(&x)).expect("plaintext");
            assert!(y.iter().zip(&exact).all(|(&a, &b)| i64::from(a) == b), "round {round}, kernel {which}");
        }
    }
}
