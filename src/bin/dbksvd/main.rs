//! `dbksvd`: the command-line tool, thin over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod bench;
mod devices;
mod encode;
mod export;
mod train;

use args::{BenchArgs, DeviceArgs, EncodeArgs, ExportArgs, TrainArgs};

#[derive(Parser)]
#[command(
    name = "dbksvd",
    version,
    about = "Double-Batch KSVD dictionary learning on any GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List GPU adapters, open one, print its limits and check the matrix kernels against the CPU.
    Devices(DeviceArgs),
    /// Train a dictionary; writes OUT/dictionary.safetensors, OUT/sae (SAELens), traces.
    Train(Box<TrainArgs>),
    /// Sparse-code activations with a trained dictionary; writes indices and values.
    Encode(EncodeArgs),
    /// Write the SAELens folder (and SAEBench metadata) of a trained dictionary.
    Export(ExportArgs),
    /// Measure this GPU at a size on synthetic data: products, coding, update, step, memory.
    Bench(BenchArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // A panic is a bug in dbksvd, never the user's input: one line that says so, no backtrace
    // unless asked for with RUST_BACKTRACE.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // A wgpu panic dbksvd catches becomes an error, printed like any other.
        if dbksvd::gpu::panic_is_caught() {
            return;
        }
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            default_hook(info);
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!(
            "error: internal error in dbksvd (a bug, please report it): {}{place}",
            one_line(&message)
        );
    }));
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Devices(args) => devices::run(args),
        Command::Train(args) => train::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: the GPU results disagree with the CPU reference");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// `text` on one line: an error is one line on the terminal and in logs.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
