//! The `vericonv` command-line tool.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
#[cfg(feature = "tract")]
use commands::run;
use commands::{adapters, attack, bench, conv_demo, convert, demo, eval, serve};

/// Verifiable, privacy-preserving CNN inference on an untrusted cloud (GPU via wgpu, or CPU).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Private, verified LeNet-5 inference on 16 MNIST test images (built in: no files needed).
    Demo(demo::DemoArgs),
    /// One private, verified convolution layer with per-phase timings.
    ConvDemo(conv_demo::ConvDemoArgs),
    /// Evaluate a model on a data set: float, quantized and private accuracy, agreement, timings.
    Eval(eval::EvalArgs),
    /// Benchmark the client against plaintext convolutions on a suite of CNN layers.
    Bench(bench::BenchArgs),
    /// Attack the privacy modes as a curious cloud: what it recovers of the inputs of every
    /// convolution of a model, and of its kernels, from what it receives.
    Attack(attack::AttackArgs),
    /// List the wgpu adapters this machine offers.
    Adapters,
    /// Serve the untrusted cloud over gRPC; clients reach it with `--cloud grpc://ADDR`.
    Serve(serve::ServeArgs),
    /// Convert a model (ONNX or native) to the native format (JSON + safetensors), BatchNorm
    /// folded, with the normalisation given and the layers named conv1, relu1, fc1…
    Convert(convert::ConvertArgs),
    /// Classify one input privately: any ONNX model on tract, every convolution on the
    /// untrusted cloud(s), verified; prints the top classes and writes the logits as .npy.
    #[cfg(feature = "tract")]
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => demo::demo(args),
        Command::ConvDemo(args) => conv_demo::conv_demo(args),
        Command::Eval(args) => eval::eval(args),
        Command::Bench(args) => bench::bench(args),
        Command::Attack(args) => attack::attack(args),
        Command::Adapters => {
            adapters::adapters();
            Ok(())
        }
        Command::Serve(args) => serve::serve(args),
        Command::Convert(args) => convert::convert(args),
        #[cfg(feature = "tract")]
        Command::Run(args) => run::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(cli.command.name(), &e);
            ExitCode::FAILURE
        }
    }
}

/// Prints a failed command's error with its context: the command, the error, then each cause
/// in its source chain that the message before it does not already say.
fn report(command: &str, e: &anyhow::Error) {
    eprintln!("error: vericonv {command}: {e}");
    let mut said = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !said.contains(&text) {
            eprintln!("  caused by: {text}");
        }
        said = text;
    }
}

impl Command {
    /// The subcommand's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Demo(_) => "demo",
            Command::ConvDemo(_) => "conv-demo",
            Command::Eval(_) => "eval",
            Command::Bench(_) => "bench",
            Command::Attack(_) => "attack",
            Command::Adapters => "adapters",
            Command::Serve(_) => "serve",
            Command::Convert(_) => "convert",
            #[cfg(feature = "tract")]
            Command::Run(_) => "run",
        }
    }
}
