//! One batch of the trainer: read and centre it on the host (`prepare`, on the prefetch thread),
//! code and update every group on it (`train_batch`), and measure the codes (`batch_metrics`).

use super::checkpoint::EpochSums;
use super::metrics::BatchMetrics;
use super::{group_seed, ratio, update_seed, Part, TrainConfig};
use crate::data::ActivationSource;
use crate::error::Result;
use crate::gpu::step::{StepBuffers, StepInput, StepOutput};
use crate::gpu::{Gpu, UpdateOptions};

/// A batch read, centred and measured on the host.
pub(super) struct Prepared {
    pub(super) data: Vec<f32>,
    /// ‖y‖² of each row as coded.
    pub(super) norms: Vec<f32>,
    /// Σ‖y − ȳ‖² over the batch (ȳ the data mean).
    pub(super) variance: f64,
}

/// Codes and updates every group on one prepared batch (each group on what the groups before it
/// left: the device's residual after their updates, which stays on the device); the steps'
/// outputs combined, usage in atom order and L0 summed over the groups.
pub(super) fn train_batch(
    gpu: &Gpu,
    parts: &mut [Part],
    config: &TrainConfig,
    prepared: &Prepared,
    step: usize,
) -> Result<StepOutput> {
    let n = prepared.norms.len();
    let short = n != parts[0].full.len();
    let mut out = StepOutput::default();
    let mut usage = Vec::new();
    let mut l0 = vec![0u32; n];
    for g in 0..parts.len() {
        let (before, rest) = parts.split_at_mut(g);
        let part = &mut rest[0];
        let d = part.atoms.cols();
        if short && part.short.as_ref().is_none_or(|b| b.len() != n) {
            part.short = Some(gpu.step_buffers(n, d, part.coding.k, part.range.len())?);
        }
        let input = match before.last() {
            None => StepInput::Host {
                samples: &prepared.data,
                norms: &prepared.norms,
            },
            Some(previous) => StepInput::Residual(batch_buffers(previous, short).residual()),
        };
        let buffers = if short {
            part.short.as_mut().expect("just created")
        } else {
            &mut part.full
        };
        let update = UpdateOptions {
            atom_batch: config.atom_batch.min(part.range.len()),
            power_iterations: config.power_iterations,
            seed: update_seed(group_seed(config.seed, g), step),
            memory: config.atom_memory,
        };
        let step = gpu.train_step(
            &mut part.atoms,
            &part.memory,
            &mut part.gram,
            buffers,
            input,
            &part.coding,
            &update,
            config.profile,
        )?;
        usage.extend_from_slice(&step.usage);
        l0.iter_mut().zip(&step.l0).for_each(|(a, b)| *a += b);
        out.gemm_s += step.gemm_s;
        out.coding_s += step.coding_s;
        out.update_s += step.update_s;
        out.residual_energy = step.residual_energy;
    }
    out.usage = usage;
    out.l0 = l0;
    Ok(out)
}

/// The step buffers a group used for a batch: its full ones, or those of the short last batch.
fn batch_buffers(part: &Part, short: bool) -> &StepBuffers {
    match (&part.short, short) {
        (Some(buffers), true) => buffers,
        _ => &part.full,
    }
}

/// One batch's metrics from its step output (epoch, batch and step left at 0 for the caller),
/// and its share of the epoch sums.
pub(super) fn batch_metrics(
    out: &StepOutput,
    prepared: &Prepared,
    host_s: f64,
) -> (BatchMetrics, EpochSums) {
    let n = prepared.norms.len();
    let residual: f64 = out.residual_energy.iter().map(|&e| e as f64).sum();
    let relative: f64 = out
        .residual_energy
        .iter()
        .zip(&prepared.norms)
        .map(|(&e, &y)| {
            if y > 0.0 {
                (e as f64 / y as f64).sqrt()
            } else {
                0.0
            }
        })
        .sum();
    let l0: f64 = out.l0.iter().map(|&l| l as f64).sum();
    let metrics = BatchMetrics {
        epoch: 0,
        batch: 0,
        step: 0,
        samples: n,
        fvu: ratio(residual, prepared.variance),
        relative_residual: relative / n as f64,
        l0: l0 / n as f64,
        unused_atoms: out.usage.iter().filter(|&&u| u == 0).count(),
        gemm_s: out.gemm_s,
        coding_s: out.coding_s,
        update_s: out.update_s,
        host_s,
    };
    let sums = EpochSums {
        batches: 1,
        samples: n,
        residual,
        variance: prepared.variance,
        relative,
        l0,
        seconds: 0.0,
    };
    (metrics, sums)
}

/// Reads `rows` of `source`, centres them on `centre` if given, and measures them.
pub(super) fn prepare(
    source: &dyn ActivationSource,
    rows: &[usize],
    centre: Option<&[f32]>,
    data_mean: &[f32],
) -> Result<Prepared> {
    let d = source.dim();
    let mut data = vec![0.0f32; rows.len() * d];
    source.gather(rows, &mut data)?;
    let mut variance = 0.0f64;
    if let Some(mean) = centre {
        for row in data.chunks_exact_mut(d) {
            row.iter_mut().zip(mean).for_each(|(v, m)| *v -= m);
        }
    }
    let norms = data
        .chunks_exact(d)
        .map(|row| {
            let norm: f64 = row.iter().map(|&v| v as f64 * v as f64).sum();
            variance += match centre {
                Some(_) => norm,
                None => row
                    .iter()
                    .zip(data_mean)
                    .map(|(&v, &m)| (v as f64 - m as f64).powi(2))
                    .sum(),
            };
            norm as f32
        })
        .collect();
    Ok(Prepared {
        data,
        norms,
        variance,
    })
}
