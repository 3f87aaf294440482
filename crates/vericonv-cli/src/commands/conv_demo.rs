//! `vericonv conv-demo`: one private convolution layer with per-phase timings.

use std::time::Instant;

use rand::RngExt;

use vericonv::CpuBackend;
use vericonv::Mode;
use vericonv::Privacy;
use vericonv::conv_i64;
use vericonv::{Conv2d, Padding};
use vericonv::{LayerConfig, PrivateConv, Timings};

use super::options::*;

#[derive(clap::Args)]
pub(crate) struct ConvDemoArgs {
    #[command(flatten)]
    pub(crate) protocol: ProtocolArgs,
    /// Let the cloud cheat (add 1 to one output entry) to watch verification reject it.
    #[arg(long)]
    pub(crate) tamper: bool,
    /// In mode two-server: which cloud cheats.
    #[arg(long, value_enum, default_value_t = TamperChoice::A)]
    pub(crate) tamper_cloud: TamperChoice,
}

pub(crate) fn conv_demo(args: &ConvDemoArgs) -> Result<(), anyhow::Error> {
    // LeNet-5's second convolution on a batch of 4 images of 8-bit activations.
    let geom = Conv2d::builder(6, 16, (14, 14), (5, 5)).padding(Padding::uniform(0)).build()?;
    let batch = 4;
    let p = &args.protocol;
    let (mut rng, seed_note) = p.rng();
    let kernel: Vec<i32> = (0..geom.kernel_len()).map(|_| rng.random_range(-127..=127)).collect();
    let bias: Vec<i32> = (0..geom.cout()).map(|_| rng.random_range(-1000..=1000)).collect();
    let x: Vec<i32> = (0..batch * geom.image_len()).map(|_| rng.random_range(-127..=127)).collect();

    // With --tamper every answer is corrupted; the first strategy is "add 1 to one entry".
    let setup = p.clouds(if args.tamper { 1.0 } else { 0.0 }, args.tamper_cloud)?;
    let mode = Mode::from(p.mode);
    warn_if_lowrank(p.privacy());
    println!("vericonv conv-demo: one private, verified convolution");
    println!("  cloud   : {}", setup.clouds().name());
    println!("            ({})", setup.why);
    println!(
        "  layer   : LeNet-5 conv2, input {batch}×{}×{}×{}, kernel {}×{}×{}×{}, stride 1, no padding -> output {batch}×{}×{}×{} (M = {} terms per output)",
        geom.cin(),
        geom.h(),
        geom.w(),
        geom.cout(),
        geom.cin_per_group(),
        geom.kh(),
        geom.kw(),
        geom.cout(),
        geom.ho(),
        geom.wo(),
        geom.m()
    );
    println!(
        "  client  : CSPRNG ChaCha20 {seed_note}; privacy {}, {} verification, {} round(s)",
        p.privacy().label(),
        mode.name(),
        p.rounds
    );

    let cfg = LayerConfig {
        name: "lenet.conv2".into(),
        privacy: p.privacy(),
        mode,
        rounds: p.rounds,
        ..LayerConfig::default()
    };
    let mut layer = PrivateConv::new(geom, &kernel, Some(&bias), cfg, &mut rng)?;
    if p.privacy().uses_pads() {
        let start = Instant::now();
        let pool = layer.generate_pads(batch, &CpuBackend::new(), &mut rng)?;
        layer.add_pads(pool)?;
        println!(
            "  offline : {batch} one-time pads in {} (R uniform, U = Conv(K, R) on the client's own CPU)",
            ms(start.elapsed())
        );
    }
    let result = layer.run(setup.clouds(), &x, &mut rng);

    let start = Instant::now();
    let k64: Vec<i64> = kernel.iter().map(|&v| i64::from(v)).collect();
    let x64: Vec<i64> = x.iter().map(|&v| i64::from(v)).collect();
    let mut plain = conv_i64(&geom, batch, &k64, &x64)?;
    for (plane, &b) in plain.chunks_exact_mut(geom.n()).zip(bias.iter().cycle()) {
        plane.iter_mut().for_each(|v| *v += i64::from(b));
    }
    let plain_time = start.elapsed();

    let (y, t): (Vec<i32>, Timings) = match result {
        Ok(v) => v,
        Err(e) => {
            println!("  verdict : REJECTED: {e}");
            return Err(e.into());
        }
    };
    let (encrypt, cloud, decrypt) = match p.privacy() {
        Privacy::LowRank { .. } => ("masks and X'", "Y' = Conv(K', X')", "mask correction, lift, bias"),
        Privacy::TwoServer => (
            "X' = βX, A's share from a seed, B's = X' - A's",
            "A: Conv(K', G(seed)), B: Conv(K', X'_B), concurrently",
            "sum of the shares, lift, bias",
        ),
        Privacy::Pad => ("X' = β(X + R)", "Y' = Conv(K', X')", "subtract U, lift, bias"),
        Privacy::SplitModel => (
            "E = X + R",
            "A: Conv(K_A, E), B: Conv(K_B, E), K = K_A + K_B, concurrently",
            "sum of the answers, subtract U, lift, bias",
        ),
    };
    println!("  phases  :");
    println!("    keygen  {}  (per session: keys and K')", ms(t.keygen));
    println!("    encrypt {}  (per image: {encrypt})", ms(t.encrypt));
    println!("    cloud   {}  (untrusted: {cloud} over F_p)", ms(t.cloud));
    println!("    verify  {}  verdict: ACCEPTED", ms(t.verify));
    println!("    decrypt {}  ({decrypt})", ms(t.decrypt));
    println!(
        "  client total {} (session setup included); plaintext direct convolution on this CPU {}",
        ms(t.client()),
        ms(plain_time)
    );
    let exact = y.iter().zip(&plain).all(|(&a, &b)| i64::from(a) == b) && y.len() == plain.len();
    if exact {
        println!("  result  : all {} outputs equal the plaintext integer convolution, bit for bit", y.len());
        Ok(())
    } else {
        Err(anyhow::anyhow!("the decrypted result differs from the plaintext convolution"))
    }
}
