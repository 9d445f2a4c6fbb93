//! One training epoch on real activations: rows 0..28 672 of MiniLM layer 4 (d = 384), K = 1536,
//! k = 32, with the time per phase (products, sparse coding, dictionary update, host waits, epoch
//! end) and the adapter name.
//!
//! `cargo bench --bench train` (needs `../shared/data/minilm_rustbook_L4.safetensors`; without it
//! the bundled 4096-row file stands in, with K = 512, k = 16). Profiling adds one GPU wait per
//! batch so the products and the coding are timed apart. With `DBKSVD_PROFILE=1` the epoch's
//! time per kernel follows, from timestamp queries (each dispatch then in its own pass);
//! `ATOM_BATCH=A` sets the atom batch (default: the trainer's).

use dbksvd::data::{ActivationFile, ActivationSource, RowRange};
use dbksvd::gpu::{Gpu, GpuOptions};
use dbksvd::train::{TrainConfig, Trainer};

fn main() -> dbksvd::Result<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    let full = format!("{root}/../shared/data/minilm_rustbook_L4.safetensors");
    let (source, atoms, k): (Box<dyn ActivationSource>, usize, usize) =
        if std::path::Path::new(&full).exists() {
            let file = ActivationFile::open(&full)?;
            (Box::new(RowRange::new(file, 0..28_672)?), 1536, 32)
        } else {
            let small = format!("{root}/data/minilm_rustbook_L4_small.safetensors");
            (Box::new(ActivationFile::open(&small)?), 512, 16)
        };
    let options = GpuOptions {
        profile: std::env::var("DBKSVD_PROFILE").is_ok_and(|v| v.trim() == "1"),
        ..GpuOptions::from_env()?
    };
    let gpu = Gpu::with_options(&options)?;
    let mut config = TrainConfig::new(atoms, k);
    config.epochs = 1;
    // ATOM_BATCH=A times another atom batch than the trainer's default.
    if let Ok(a) = std::env::var("ATOM_BATCH") {
        config.atom_batch = a.trim().parse().expect("ATOM_BATCH: a whole number");
    }
    config.profile = true;
    println!(
        "adapter: {} ({}); data: {} [{} x {}]; K = {atoms}, k = {k}",
        gpu.adapter().name,
        gpu.adapter().backend,
        source.name(),
        source.rows(),
        source.dim()
    );
    let started = std::time::Instant::now();
    let result = Trainer::new(&gpu, config).fit(&source)?;
    let total = started.elapsed().as_secs_f64();
    let sum =
        |f: fn(&dbksvd::train::BatchMetrics) -> f64| result.batches.iter().map(f).sum::<f64>();
    let (gemm, coding, update, host) = (
        sum(|b| b.gemm_s),
        sum(|b| b.coding_s),
        sum(|b| b.update_s),
        sum(|b| b.host_s),
    );
    let epoch = &result.epochs[0];
    let coder = match result.config.coder {
        dbksvd::encode::Coder::Omp => "sparse coding (OMP)",
        dbksvd::encode::Coder::Mp { .. } => "sparse coding (MP)",
    };
    println!(
        "batch size {} ({} batches), atom batch {}",
        result.config.batch_size.unwrap_or_default(),
        result.batches.len(),
        result.config.atom_batch
    );
    println!("phase                 seconds   share");
    for (name, s) in [
        ("products (GEMM)", gemm),
        (coder, coding),
        ("dictionary update", update),
        ("host waits", host),
        ("epoch end + stats", total - gemm - coding - update - host),
    ] {
        println!("{name:<20} {s:>8.2} {:>6.1} %", 100.0 * s / total);
    }
    println!(
        "total {total:.2} s = {:.0} samples/s; epoch FVU {:.4}, L0 {:.2}",
        source.rows() as f64 / total,
        epoch.fvu,
        epoch.l0
    );
    if gpu.profiling() {
        println!("kernel                          seconds   share of the epoch");
        for t in gpu.kernel_times()? {
            let share = 100.0 * t.seconds / total;
            println!("{:<30} {:>8.2} {share:>6.1} %", t.kernel, t.seconds);
        }
    }
    Ok(())
}
