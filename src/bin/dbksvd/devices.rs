//! `dbksvd devices`: the adapters, their limits, and a GEMM self-check on each.

use dbksvd::check::gemm_self_check;
use dbksvd::gpu::{list_adapters, Gpu};

use crate::args::DeviceArgs;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(crate) fn run(args: &DeviceArgs) -> dbksvd::Result<bool> {
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
