//! Gram matrix and correlations of real transformer activations on the GPU.
//!
//! Takes the first K rows of an activations file as unit-norm atoms, the next rows as samples,
//! and prints how coherent the atoms are (from the Gram D·Dᵀ) and how much of each sample's norm
//! its best single atom explains (from the correlations Y·Dᵀ).
//!
//! ```sh
//! cargo run --release --example coherence -- ../shared/data/minilm_rustbook_L4_small.safetensors 1536
//! ```

use dbksvd::gpu::Gpu;
use safetensors::{Dtype, SafeTensors};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "../shared/data/minilm_rustbook_L4_small.safetensors".into());
    let atoms: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1536);

    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let file = SafeTensors::deserialize(&bytes)?;
    let tensor = file.tensor("activations")?;
    if tensor.dtype() != Dtype::F32 || tensor.shape().len() != 2 {
        return Err(format!("{path}: `activations` must be a 2-D F32 tensor").into());
    }
    let (rows, d) = (tensor.shape()[0], tensor.shape()[1]);
    if rows <= atoms {
        return Err(format!("{path}: {rows} rows, need more than {atoms}").into());
    }
    let data: Vec<f32> = bytemuck::pod_collect_to_vec(tensor.data());

    // Atoms: the first rows, normalised (skipping none: activations are never zero here).
    let mut dict = data[..atoms * d].to_vec();
    for row in dict.chunks_mut(d) {
        let norm = row
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let samples = &data[atoms * d..];
    let n = rows - atoms;

    let gpu = Gpu::new()?;
    println!(
        "adapter: {} ({})",
        gpu.adapter().name,
        gpu.adapter().backend
    );
    let gd = gpu.matrix(atoms, d, &dict)?;
    let gy = gpu.matrix(n, d, samples)?;
    let t = std::time::Instant::now();
    let gram = gpu.read_matrix(&gpu.gram(&gd)?)?;
    let corr = gpu.read_matrix(&gpu.correlations(&gy, &gd)?)?;
    println!(
        "gram [{atoms}, {atoms}] and correlations [{n}, {atoms}] in {:.2?}",
        t.elapsed()
    );

    let mut max_cos_sum = 0.0f64;
    for i in 0..atoms {
        let row = &gram[i * atoms..(i + 1) * atoms];
        let max = (0..atoms)
            .filter(|&j| j != i)
            .map(|j| row[j].abs())
            .fold(0.0f32, f32::max);
        max_cos_sum += max as f64;
    }
    println!(
        "mean max |cos| between atoms: {:.3}",
        max_cos_sum / atoms as f64
    );

    let mut explained = 0.0f64;
    for (s, y) in samples.chunks(d).enumerate() {
        let best = corr[s * atoms..(s + 1) * atoms]
            .iter()
            .fold(0.0f32, |m, c| m.max(c.abs()));
        let norm2: f32 = y.iter().map(|v| v * v).sum();
        explained += (best * best / norm2) as f64;
    }
    println!(
        "best single atom explains {:.1}% of a sample's squared norm on average",
        100.0 * explained / n as f64
    );
    Ok(())
}
