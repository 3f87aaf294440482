//! One private convolution layer in each of the four privacy modes, on the CPU backend, checked against
//! the plaintext convolution: the library's basic use.
//!
//! `cargo run --release --example private_layer`

use rand::RngExt;
use vericonv::Privacy;
use vericonv::conv_i64;
use vericonv::os_rng;
use vericonv::{Clouds, CpuBackend};
use vericonv::{Conv2d, Padding};
use vericonv::{LayerConfig, PrivateConv};

fn main() -> Result<(), vericonv::Error> {
    let geom = Conv2d::builder(3, 8, (32, 32), (3, 3)).stride(1, 1).padding(Padding::uniform(1)).build()?;
    let mut rng = os_rng(); // ChaCha20, seeded from the OS
    let kernel: Vec<i32> = (0..geom.kernel_len()).map(|_| rng.random_range(-127..=127)).collect();
    let bias: Vec<i32> = (0..geom.cout()).map(|_| rng.random_range(-1000..=1000)).collect();
    let batch: Vec<i32> = (0..4 * geom.image_len()).map(|_| rng.random_range(-127..=127)).collect();

    // The plaintext answer, for the check at the end.
    let widen = |v: &[i32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
    let mut plain = conv_i64(&geom, 4, &widen(&kernel), &widen(&batch))?;
    for (plane, &b) in plain.chunks_exact_mut(geom.n()).zip(bias.iter().cycle()) {
        plane.iter_mut().for_each(|v| *v += i64::from(b));
    }

    // Clouds: in a deployment these would be remote; here, CPU backends in this process.
    let (cloud, cloud_a, cloud_b, own_cpu) =
        (CpuBackend::new(), CpuBackend::new(), CpuBackend::new(), CpuBackend::new());
    for privacy in [Privacy::Pad, Privacy::TwoServer, Privacy::SplitModel, Privacy::LowRank { rank: 2 }] {
        let cfg = LayerConfig { privacy, ..LayerConfig::default() };
        let mut layer = PrivateConv::new(geom, &kernel, Some(&bias), cfg, &mut rng)?;
        let clouds = if privacy.clouds() == 2 { Clouds::Two(&cloud_a, &cloud_b) } else { Clouds::One(&cloud) };
        if privacy.uses_pads() {
            // Offline, on the client's own backend: one pad per image (without this, `run`
            // draws them itself and reports the time as `timings.offline`).
            layer.refill_pads(4, &own_cpu, &mut rng)?;
        }
        let (y, timings) = layer.run(clouds, &batch, &mut rng)?; // exact i32, verified
        let exact = y.iter().zip(&plain).all(|(&a, &b)| i64::from(a) == b);
        println!(
            "{:<18} {} outputs, {} the plaintext convolution; client {:.3} ms, cloud {:.3} ms",
            privacy.label(),
            y.len(),
            if exact { "equal to" } else { "DIFFERENT FROM" },
            timings.client().as_secs_f64() * 1e3,
            timings.cloud.as_secs_f64() * 1e3
        );
        if !exact {
            return Err(vericonv::Error::Internal("private result differs from the plaintext".into()));
        }
    }
    Ok(())
}
