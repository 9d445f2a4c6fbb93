//! `dbksvd`: the command-line tool, thin over the library.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dbksvd::check::gemm_self_check;
use dbksvd::gpu::{list_adapters, Gpu, GpuOptions};

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
}

/// Adapter choice; each flag overrides its environment variable.
#[derive(Args)]
struct DeviceArgs {
    /// Substring of the adapter name to use (WGPU_ADAPTER_NAME).
    #[arg(long)]
    adapter: Option<String>,
    /// Comma-separated backends: vulkan, metal, dx12 (WGPU_BACKEND).
    #[arg(long)]
    backend: Option<String>,
    /// Prefer an integrated GPU over a discrete one (WGPU_POWER_PREF=low).
    #[arg(long)]
    low_power: bool,
    /// Cap storage bindings at this many bytes (DBKSVD_MAX_BINDING_SIZE).
    #[arg(long)]
    max_binding_size: Option<u64>,
}

impl DeviceArgs {
    fn options(&self) -> dbksvd::Result<GpuOptions> {
        let mut options = GpuOptions::from_env()?;
        if self.adapter.is_some() {
            options.adapter_name = self.adapter.clone();
        }
        if self.backend.is_some() {
            options.backends = self.backend.clone();
        }
        options.low_power |= self.low_power;
        if self.max_binding_size.is_some() {
            options.max_binding_size = self.max_binding_size;
        }
        Ok(options)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn devices(args: &DeviceArgs) -> dbksvd::Result<bool> {
    let options = args.options()?;
    let adapters = list_adapters(&options);
    println!("adapters ({}):", adapters.len());
    for (i, a) in adapters.iter().enumerate() {
        println!(
            "  [{i}] {} ({}, {}) driver: {}",
            a.name, a.backend, a.device_type, a.driver
        );
    }
    let gpu = Gpu::with_options(&options)?;
    let a = gpu.adapter();
    let l = gpu.limits();
    println!("using: {} ({}, {})", a.name, a.backend, a.device_type);
    if a.is_cpu() {
        println!("  note: a software adapter; fine for tests, slow for training");
    }
    println!("granted limits:");
    println!(
        "  storage binding   {} (planned {})",
        mib(l.max_storage_buffer_binding_size),
        mib(l.planned_binding_size)
    );
    println!("  buffer            {}", mib(l.max_buffer_size));
    println!(
        "  workgroup storage {} KiB",
        l.max_compute_workgroup_storage_size / 1024
    );
    println!(
        "  invocations/wg    {}",
        l.max_compute_invocations_per_workgroup
    );
    println!(
        "  workgroups/dim    {}",
        l.max_compute_workgroups_per_dimension
    );
    println!(
        "  offset alignment  {} B",
        l.min_storage_buffer_offset_alignment
    );
    if let Some(cap) = l.max_loop_iterations {
        println!("  loop cap          {cap} iterations per invocation (llvmpipe; larger jobs are split or refused)");
    }
    println!("self-check against the f64 CPU reference:");
    let mut all_passed = true;
    for r in gemm_self_check(&gpu)? {
        let verdict = if r.passed() { "ok" } else { "FAILED" };
        all_passed &= r.passed();
        println!(
            "  {:<20} {:>12}  relative error {:.2e}  worst element {:.2} of bound  {verdict}",
            r.name, r.shape, r.relative_error, r.worst_bound_ratio
        );
    }
    Ok(all_passed)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Devices(args) => devices(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: the GPU results disagree with the CPU reference");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
