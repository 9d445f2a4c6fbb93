//! One full DB-KSVD dictionary update: time and residual reduction for atom batches
//! A ∈ {32, 256, 1536} and power iterations p ∈ {1, 2, 4}, on B = 8192 real MiniLM activations
//! (d = 384) with K = 1536 atoms (the first rows, normalised) and k = 32 OMP codes.
//!
//! `cargo bench --bench update`

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
    println!(
        "{:>6} {:>3} {:>10} {:>14}",
        "A", "p", "update s", "residual kept"
    );
    for atom_batch in [32, 256, 1536] {
        for p in [1, 2, 4] {
            let mut atoms = gpu.matrix(n_atoms, d, encoder.atoms())?;
            let mut batch = gpu.coded_batch(samples, d, &codes, n_atoms)?;
            let options = UpdateOptions::default()
                .with_atom_batch(atom_batch)
                .with_power_iterations(p)
                .with_seed(1);
            let t = Instant::now();
            gpu.ksvd_update(&mut atoms, &mut batch, &options)?;
            let seconds = t.elapsed().as_secs_f64();
            let after: f64 = gpu
                .read_codes(&batch)?
                .residual_energy
                .iter()
                .map(|&e| e as f64)
                .sum();
            println!(
                "{atom_batch:>6} {p:>3} {seconds:>10.2} {:>13.4}",
                after / before
            );
        }
    }
    Ok(())
}
