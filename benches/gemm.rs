//! GEMM throughput: the tiled, texel and naive kernels, and the one `GemmKernel::Auto` picks.
//!
//! `cargo bench --bench gemm` prints GFLOP/s (2·m·n·inner per product, median of repeated
//! submissions, each waited for) for the Gram (1536×1536×384), a correlations block
//! (4096×1536×384) and 1024³, with the adapter name. Figures, not assertions: see the issue notes.

use std::time::{Duration, Instant};

use dbksvd::gpu::{GemmKernel, GemmParams, Gpu, Product};

fn data(len: usize, salt: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 2_654_435_761 + salt * 97) % 10_007) as f32 / 5_003.5 - 1.0)
        .collect()
}

/// Median seconds of one product, repeated until `budget` is spent (at least 3 runs).
fn time(gpu: &Gpu, op: &GemmParams, m: usize, n: usize, inner: usize) -> dbksvd::Result<f64> {
    let a = gpu.matrix(m, inner, &data(m * inner, 1))?;
    let b = match op.product {
        Product::ABt => gpu.matrix(n, inner, &data(n * inner, 2))?,
        Product::AB => gpu.matrix(inner, n, &data(n * inner, 2))?,
    };
    let mut c = gpu.zeros(m, n)?;
    // Warm-up: pipeline creation and first-touch costs stay out of the figures.
    gpu.gemm(op, &a, &b, &mut c)?;
    gpu.wait()?;
    let budget = Duration::from_secs(3);
    let start = Instant::now();
    let mut runs = Vec::new();
    while runs.len() < 3 || (start.elapsed() < budget && runs.len() < 50) {
        let t = Instant::now();
        gpu.gemm(op, &a, &b, &mut c)?;
        gpu.wait()?;
        runs.push(t.elapsed().as_secs_f64());
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[runs.len() / 2])
}

fn main() -> dbksvd::Result<()> {
    let gpu = Gpu::new()?;
    let adapter = gpu.adapter();
    println!(
        "adapter: {} ({}, {}, {})",
        adapter.name, adapter.backend, adapter.device_type, adapter.driver
    );
    let shapes = [
        ("gram D·Dᵀ", Product::ABt, 1536, 1536, 384),
        ("correlations Y·Dᵀ", Product::ABt, 4096, 1536, 384),
        ("square A·B", Product::AB, 1024, 1024, 1024),
        ("square A·Bᵀ", Product::ABt, 1024, 1024, 1024),
    ];
    println!(
        "GFLOP/s; tiled: workgroup-memory tiles (GPUs); texel: operands read as textures, A·Bᵀ \
         only (CPU adapters); naive: one output per invocation; auto: what GemmParams picks here"
    );
    println!(
        "{:<20} {:>16} {:>8} {:>8} {:>8} {:>8}",
        "product", "m×n×inner", "tiled", "texel", "naive", "auto"
    );
    for (name, product, m, n, inner) in shapes {
        let flops = 2.0 * (m * n * inner) as f64;
        let op = GemmParams {
            product,
            ..GemmParams::abt()
        };
        let rate = |kernel| -> dbksvd::Result<String> {
            if kernel == GemmKernel::Texel && product == Product::AB {
                return Ok("-".into());
            }
            let seconds = time(&gpu, &op.kernel(kernel), m, n, inner)?;
            Ok(format!("{:.1}", flops / seconds / 1e9))
        };
        println!(
            "{name:<20} {:>16} {:>8} {:>8} {:>8} {:>8}",
            format!("{m}×{n}×{inner}"),
            rate(GemmKernel::Tiled)?,
            rate(GemmKernel::Texel)?,
            rate(GemmKernel::Naive)?,
            rate(GemmKernel::Auto)?,
        );
    }
    Ok(())
}
