//! Sparse-coding throughput: samples per second of the GPU Batch-OMP, with the correlations GEMM
//! and the coding kernel timed separately, and the f64 reference on a few of the same samples for
//! scale.
//!
//! `cargo bench --bench omp` runs two configurations:
//! - d = 384, K = 1536, k = 32 on real MiniLM activations (`../shared/data`, else the bundled slice);
//! - d = 768, K = 6144, k = 64 on synthetic data: G is 144 MiB, over lavapipe's 128 MiB binding,
//!   so the Gram matrix is bound as two row blocks.

use std::time::Instant;

use dbksvd::encode::{CodingOptions, EncodeOptions, Encoder, EncoderOptions};
use dbksvd::gpu::Gpu;
use dbksvd::reference::omp as reference;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn activations() -> (Vec<f32>, usize, usize) {
    let root = env!("CARGO_MANIFEST_DIR");
    for path in [
        format!("{root}/../shared/data/minilm_rustbook_L4.safetensors"),
        format!("{root}/tests/data/minilm_L4_1536.safetensors"),
    ] {
        if let Ok(bytes) = std::fs::read(&path) {
            let file = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
            let t = file.tensor("activations").expect("activations");
            println!("data: {path}");
            return (
                bytemuck::pod_collect_to_vec(t.data()),
                t.shape()[0],
                t.shape()[1],
            );
        }
    }
    panic!("no activation file found");
}

fn gaussian(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.random_range(0.0..1.0);
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn run(
    gpu: &Gpu,
    label: &str,
    atoms: &[f32],
    d: usize,
    samples: &[f32],
    k: usize,
    reference_samples: usize,
) -> dbksvd::Result<()> {
    let n_atoms = atoms.len() / d;
    let n = samples.len() / d;
    let coding = CodingOptions::omp(k);
    let encoder = Encoder::new(gpu, atoms, n_atoms, d, EncoderOptions::new(coding))?;
    // Warm-up: pipeline compilation stays out of the figures.
    encoder.encode(&samples[..d.min(samples.len())])?;

    let t = Instant::now();
    let codes = encoder.encode(samples)?;
    let total = t.elapsed().as_secs_f64();
    let profile = encoder.encode_with(samples, profiled())?.profile;

    let t = Instant::now();
    let refs = reference::encode(
        encoder.atoms(),
        n_atoms,
        &samples[..reference_samples * d],
        d,
        &coding,
    );
    let reference_s = t.elapsed().as_secs_f64() / refs.len() as f64;

    let l0 = codes.mean_l0();
    // Iteration s reads s rows of G (the α update): Σ s·K·4 bytes over the L0 iterations.
    let g_bytes = (l0 * (l0 + 1.0) / 2.0) * n_atoms as f64 * 4.0;
    let g_mib = (n_atoms * n_atoms * 4) as f64 / (1 << 20) as f64;
    println!("{label}: d = {d}, K = {n_atoms}, k = {k}, n = {n}, G = {g_mib:.0} MiB, batch = {}, mean L0 = {l0:.1}",
        encoder.batch_size(n)?);
    println!(
        "  encode: {:.0} samples/s ({:.2} s); profiled: correlations GEMM {:.3} s, OMP kernel + readback {:.3} s over {} batches",
        n as f64 / total,
        total,
        profile.correlations_s,
        profile.coding_s,
        profile.batches
    );
    println!(
        "  G read per sample: {:.2} MiB ({:.1} GB/s of G traffic in the OMP kernel); reference (f64, 1 core): {:.0} samples/s",
        g_bytes / (1 << 20) as f64,
        g_bytes * n as f64 / profile.coding_s / 1e9,
        1.0 / reference_s
    );
    Ok(())
}

/// Matching pursuit (the trainer's coder, refitted) on the same rows: samples/s and its kernel
/// time against the correlation product's (issue target: at most 2×).
fn run_mp(gpu: &Gpu, atoms: &[f32], d: usize, samples: &[f32], k: usize) -> dbksvd::Result<()> {
    let coding = CodingOptions::mp(k, true);
    let encoder = Encoder::new(gpu, atoms, atoms.len() / d, d, EncoderOptions::new(coding))?;
    encoder.encode(&samples[..d])?;
    let t = Instant::now();
    let encoded = encoder.encode_with(samples, profiled())?;
    let (codes, profile) = (encoded.codes, encoded.profile);
    let total = t.elapsed().as_secs_f64();
    println!(
        "  MP (refit) encode: {:.0} samples/s, mean L0 = {:.1}; profiled: correlations GEMM {:.3} s, MP kernel + readback {:.3} s ({:.1}× the product)",
        (samples.len() / d) as f64 / total,
        codes.mean_l0(),
        profile.correlations_s,
        profile.coding_s,
        profile.coding_s / profile.correlations_s
    );
    Ok(())
}

fn main() -> dbksvd::Result<()> {
    let gpu = Gpu::new()?;
    let a = gpu.adapter();
    println!(
        "adapter: {} ({}, {}, {})",
        a.name, a.backend, a.device_type, a.driver
    );

    let (data, rows, d) = activations();
    let n_atoms = 1536;
    let mut atoms = data[..n_atoms * d].to_vec();
    for row in atoms.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let n = (rows - n_atoms).min(4096);
    let samples = &data[n_atoms * d..(n_atoms + n) * d];
    run(&gpu, "real MiniLM", &atoms, d, samples, 32, 16)?;
    run_mp(&gpu, &atoms, d, samples, 32)?;

    let (d, n_atoms) = (768, 6144);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let atoms = gaussian(&mut rng, n_atoms * d);
    let samples = gaussian(&mut rng, 256 * d);
    // On a loop-capped driver (lavapipe) this job is refused rather than truncated.
    match run(&gpu, "synthetic", &atoms, d, &samples, 64, 2) {
        Err(e @ dbksvd::Error::ExceedsLimit { .. }) => println!("synthetic: not run here: {e}"),
        other => other?,
    }
    Ok(())
}

/// Options that time the products and the coding separately.
fn profiled() -> EncodeOptions {
    EncodeOptions::default().with_profile(true)
}
