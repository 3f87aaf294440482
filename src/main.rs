//! The `vericonv` command-line tool.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use rand::Rng;

use vericonv::client::{LayerConfig, PrivateConv, Timings};
use vericonv::cloud::{CloudBackend, CpuBackend, Tamper, TamperingBackend};
#[cfg(feature = "gpu")]
use vericonv::cloud::{GpuBackend, GpuOptions, list_adapters};
use vericonv::geometry::{Conv2d, Padding};
use vericonv::keys::{KeyRng, os_rng, seeded_rng};
use vericonv::reference::conv_i64;
use vericonv::verify::Mode;

/// Verifiable, privacy-preserving convolutions on an untrusted cloud (GPU via wgpu, or CPU).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one private, verified convolution on a built-in example (no files needed).
    Demo(DemoArgs),
    /// List the wgpu adapters this machine offers.
    Adapters,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    /// The CPU cloud backend.
    Cpu,
    /// The wgpu backend, on whatever adapter is selected (llvmpipe included).
    Gpu,
    /// A real GPU if there is one; the CPU backend when the only adapter is a CPU rasteriser.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeChoice {
    Fast,
    Strict,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Where the untrusted cloud runs.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Verification mode.
    #[arg(long, value_enum, default_value_t = ModeChoice::Fast)]
    mode: ModeChoice,
    /// Independent verification rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Mask rank ρ.
    #[arg(long, default_value_t = vericonv::keys::DEFAULT_RANK)]
    rank: usize,
    /// Seed the client's CSPRNG (for reproducible runs only; the default seeds from the OS).
    #[arg(long)]
    seed: Option<u64>,
    /// Let the cloud cheat (add 1 to one output entry) to watch verification reject it.
    #[arg(long)]
    tamper: bool,
}

/// Picks the cloud backend and explains the choice.
#[cfg(feature = "gpu")]
fn select_backend(choice: BackendChoice) -> Result<(Box<dyn CloudBackend>, String), vericonv::Error> {
    match choice {
        BackendChoice::Cpu => Ok((Box::new(CpuBackend::new()), "requested".into())),
        BackendChoice::Gpu => Ok((Box::new(GpuBackend::new(&GpuOptions::default())?), "requested".into())),
        BackendChoice::Auto => match GpuBackend::new(&GpuOptions::default()) {
            Ok(gpu) if !gpu.info().is_cpu() => Ok((Box::new(gpu), "auto: a real GPU was found".into())),
            Ok(gpu) => Ok((
                Box::new(CpuBackend::new()),
                format!(
                    "auto: the only adapter, {}, is a CPU rasteriser, so the CPU backend is faster; use --backend gpu to run the WGSL shaders on it",
                    gpu.info().name
                ),
            )),
            Err(e) => Ok((Box::new(CpuBackend::new()), format!("auto: no usable GPU ({e})"))),
        },
    }
}

/// Without the `gpu` feature only the CPU backend exists.
#[cfg(not(feature = "gpu"))]
fn select_backend(choice: BackendChoice) -> Result<(Box<dyn CloudBackend>, String), vericonv::Error> {
    match choice {
        BackendChoice::Gpu => {
            Err(vericonv::Error::Unsupported("this build has no GPU backend (rebuild with the `gpu` feature)".into()))
        }
        _ => Ok((Box::new(CpuBackend::new()), "this build has no GPU backend".into())),
    }
}

#[cfg(feature = "gpu")]
fn adapters() {
    let adapters = list_adapters();
    if adapters.is_empty() {
        println!(
            "no wgpu adapter found (install a GPU driver, or Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
        );
    }
    adapters.iter().for_each(|a| println!("{a}"));
}

#[cfg(not(feature = "gpu"))]
fn adapters() {
    println!("this build has no GPU backend (rebuild with the `gpu` feature)");
}

fn ms(d: Duration) -> String {
    format!("{:>9.3} ms", d.as_secs_f64() * 1e3)
}

fn demo(args: &DemoArgs) -> Result<(), vericonv::Error> {
    // LeNet-5's second convolution on a batch of 4 images of 8-bit activations.
    let geom = Conv2d::builder(6, 16, (14, 14), (5, 5)).padding(Padding::uniform(0)).build()?;
    let batch = 4;
    let (mut rng, seed_note): (KeyRng, String) = match args.seed {
        Some(s) => (seeded_rng(s), format!("seeded with {s} (reproducible; not for real use)")),
        None => (os_rng(), "seeded from the OS".into()),
    };
    let kernel: Vec<i32> = (0..geom.kernel_len()).map(|_| rng.random_range(-127..=127)).collect();
    let bias: Vec<i32> = (0..geom.cout()).map(|_| rng.random_range(-1000..=1000)).collect();
    let x: Vec<i32> = (0..batch * geom.image_len()).map(|_| rng.random_range(-127..=127)).collect();

    let (backend, why) = select_backend(args.backend)?;
    let cloud: Box<dyn CloudBackend> = if args.tamper {
        Box::new(TamperingBackend::new(backend, &[Tamper::AddOne], 1.0, rng.random()))
    } else {
        backend
    };
    let mode = match args.mode {
        ModeChoice::Fast => Mode::Fast,
        ModeChoice::Strict => Mode::Strict,
    };
    println!("vericonv demo: one private, verified convolution");
    println!("  cloud   : {}", cloud.name());
    println!("            ({why})");
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
        "  client  : CSPRNG ChaCha20 {seed_note}; mask rank {}, {} verification, {} round(s)",
        args.rank,
        mode.name(),
        args.rounds
    );

    let cfg = LayerConfig {
        name: "lenet.conv2".into(),
        rank: args.rank,
        mode,
        rounds: args.rounds,
        ..LayerConfig::default()
    };
    let mut layer = PrivateConv::new(geom, &kernel, Some(&bias), cfg, &mut rng)?;
    let result = layer.run(cloud.as_ref(), &x, &mut rng);

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
            return Err(e);
        }
    };
    println!("  phases  :");
    println!("    keygen  {}  (per session: keys, K' and KG)", ms(t.keygen));
    println!("    encrypt {}  (per image: masks and X')", ms(t.encrypt));
    println!("    cloud   {}  (untrusted: Y' = Conv(K', X') over F_p)", ms(t.cloud));
    println!("    verify  {}  verdict: ACCEPTED", ms(t.verify));
    println!("    decrypt {}  (mask correction, lift, bias)", ms(t.decrypt));
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
        Err(vericonv::Error::Unsupported(
            "the decrypted result differs from the plaintext convolution (a bug: please report it)".into(),
        ))
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => demo(args),
        Command::Adapters => {
            adapters();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
