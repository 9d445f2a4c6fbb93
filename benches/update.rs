//! One full DB-KSVD dictionary update: time and residual reduction for atom batches
//! A ∈ {32, 256, 1536} and power iterations p ∈ {1, 2, 4}, on B = 8192 real MiniLM activations
//! (d = 384) with K = 1536 atoms (the first rows, normalised) and k = 32 OMP codes.
//!
//! `cargo bench --bench update` (`UPDATE_REPEATS=N`: each update timed N times, 3 by default;
//! the minimum and the median are printed, since on a shared machine single updates of the same
//! binary vary by 1.5× and more).

use std::time::Instant;

use dbksvd::encode::{CodingOptions, Encoder, EncoderOptions};
use dbksvd::gpu::{Gpu, UpdateOptions};

fn main() -> dbksvd::Result<()> {
    let gpu = Gpu::new()?;
    let a = gpu.adapter();
    println!(
        "adapter: {} ({}, {}, {})",
        a.name, a.backend, a.device_type, a.driver
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let path = format!("{root}/../shared/data/minilm_rustbook_L4.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| dbksvd::Error::Io {
        path: path.clone().into(),
        source: e,
    })?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| dbksvd::Error::InvalidArgument(format!("{path}: {e}")))?;
    let t = file
        .tensor("activations")
        .map_err(|e| dbksvd::Error::InvalidArgument(format!("{path}: {e}")))?;
    let data: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
    let d = t.shape()[1];
    let (n_atoms, n, k) = (1536, 8192, 32);
    let samples = &data[n_atoms * d..(n_atoms + n) * d];
    let encoder = Encoder::new(
        &gpu,
        &data[..n_atoms * d],
        n_atoms,
        d,
        EncoderOptions::new(CodingOptions::omp(k)),
    )?;
    let t = Instant::now();
    let codes = encoder.encode(samples)?;
    println!(
        "B = {n}, d = {d}, K = {n_atoms}, k = {k}: OMP codes in {:.1} s, ‖Y − XD‖² / ‖Y‖² = {:.4}",
        t.elapsed().as_secs_f64(),
        codes.residual_energy.iter().map(|&e| e as f64).sum::<f64>()
            / samples.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
    );
    let before: f64 = codes.residual_energy.iter().map(|&e| e as f64).sum();
    let repeats = std::env::var("UPDATE_REPEATS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(3)
        .max(1);
    println!(
        "{:>6} {:>3} {:>12} {:>12} {:>14}",
        "A", "p", "min s", "median s", "residual kept"
    );
    for atom_batch in [32, 256, 1536] {
        for p in [1, 2, 4] {
            let options = UpdateOptions::default()
                .with_atom_batch(atom_batch)
                .with_power_iterations(p)
                .with_seed(1);
            let mut times = Vec::with_capacity(repeats);
            let mut after = 0.0;
            for _ in 0..repeats {
                let mut atoms = gpu.matrix(n_atoms, d, encoder.atoms())?;
                let mut batch = gpu.coded_batch(samples, d, &codes, n_atoms)?;
                gpu.wait()?;
                let t = Instant::now();
                gpu.ksvd_update(&mut atoms, &mut batch, &options)?;
                times.push(t.elapsed().as_secs_f64());
                after = gpu
                    .read_codes(&batch)?
                    .residual_energy
                    .iter()
                    .map(|&e| e as f64)
                    .sum();
            }
            times.sort_by(f64::total_cmp);
            println!(
                "{atom_batch:>6} {p:>3} {:>12.3} {:>12.3} {:>13.4}",
                times[0],
                times[times.len() / 2],
                after / before
            );
        }
    }
    Ok(())
}
