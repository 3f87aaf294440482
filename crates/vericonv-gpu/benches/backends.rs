//! Cloud backends: the exact F_p convolution on the CPU and on the GPU (both shader variants),
//! and the GPU's plaintext f32 baseline, in multiply-accumulates per second. Each benchmark first
//! checks its output against the CPU reference. On lavapipe, GPU shapes stay LeNet-sized.

use std::io::Write;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vericonv::seeded_rng;
use vericonv::{CloudBackend, CpuBackend};
use vericonv::{Conv2d, Padding};
use vericonv::{M31, PrimeField};
use vericonv::{conv_f32, conv_field};
use vericonv_gpu::{ConvKernel, GpuBackend, GpuOptions, ShaderVariant};

fn lenet() -> Vec<(&'static str, Conv2d)> {
    vec![
        ("lenet_conv1", Conv2d::builder(1, 6, (28, 28), (5, 5)).padding(Padding::uniform(2)).build().expect("valid")),
        ("lenet_conv2", Conv2d::builder(6, 16, (14, 14), (5, 5)).build().expect("valid")),
    ]
}

fn large() -> Vec<(&'static str, Conv2d)> {
    vec![
        (
            "resnet_28x28x128",
            Conv2d::builder(128, 128, (28, 28), (3, 3)).padding(Padding::uniform(1)).build().expect("valid"),
        ),
        (
            "mobilenet_dw_56x56x128",
            Conv2d::builder(128, 128, (56, 56), (3, 3))
                .padding(Padding::uniform(1))
                .groups(128)
                .build()
                .expect("valid"),
        ),
    ]
}

fn macs(g: &Conv2d) -> u64 {
    (g.output_image_len() * g.m()) as u64
}

fn random(len: usize, seed: u64) -> Vec<u32> {
    let mut rng = seeded_rng(seed);
    (0..len).map(|_| M31::random(&mut rng)).collect()
}

fn backends(c: &mut Criterion) {
    let mut group = c.benchmark_group("cloud");
    group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
    let cpu = CpuBackend::new();
    for (name, g) in lenet().into_iter().chain(large()) {
        let (k, x) = (random(g.kernel_len(), 1), random(g.image_len(), 2));
        assert_eq!(cpu.conv(&g, 1, &k, &x).expect("cpu"), conv_field::<M31>(&g, 1, &k, &x).expect("ref"), "{name}");
        group.throughput(Throughput::Elements(macs(&g)));
        group.bench_function(BenchmarkId::new("cpu_fp", name), |b| b.iter(|| cpu.conv(&g, 1, &k, &x).expect("cpu")));
    }
    for variant in [ShaderVariant::U64, ShaderVariant::U32] {
        let gpu = match GpuBackend::new(&GpuOptions { variant: Some(variant), ..GpuOptions::default() }) {
            Ok(gpu) => gpu,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "skipping GPU {variant:?} benchmarks: {e}");
                continue;
            }
        };
        for (name, g) in lenet() {
            let (k, x) = (random(g.kernel_len(), 1), random(g.image_len(), 2));
            let want = cpu.conv(&g, 1, &k, &x).expect("cpu");
            let kf: Vec<f32> = k.iter().map(|&v| (v % 7) as f32).collect();
            let xf: Vec<f32> = x.iter().map(|&v| (v % 7) as f32).collect();
            let want_f32 = conv_f32(&g, 1, &kf, &xf).expect("ref");
            group.throughput(Throughput::Elements(macs(&g)));
            for kernel in [ConvKernel::Simple, ConvKernel::Tiled] {
                assert_eq!(gpu.conv_field(kernel, &g, 1, &k, &x).expect("gpu"), want, "{name} {kernel:?}");
                group.bench_function(BenchmarkId::new(format!("gpu_fp_{variant:?}_{kernel:?}"), name), |b| {
                    b.iter(|| gpu.conv_field(kernel, &g, 1, &k, &x).expect("gpu"))
                });
                if variant == ShaderVariant::U64 {
                    assert_eq!(gpu.conv_f32(kernel, &g, 1, &kf, &xf).expect("gpu"), want_f32, "{name} {kernel:?}");
                    group.bench_function(BenchmarkId::new(format!("gpu_f32_plaintext_{kernel:?}"), name), |b| {
                        b.iter(|| gpu.conv_f32(kernel, &g, 1, &kf, &xf).expect("gpu"))
                    });
                }
            }
        }
    }
    group.finish();
}

criterion_group!(benches, backends);
criterion_main!(benches);
