//! The streaming DB-KSVD trainer.
//!
//! Per sample batch of B rows (the paper's streaming form, the dictionary carried from batch to
//! batch over several passes of the data):
//!
//! 1. code the batch with the current dictionary (matching pursuit with a least-squares refit by
//!    default, or Batch-OMP; at most k atoms per sample);
//! 2. record the metrics of those codes (FVU, relative residual, L0, atoms unused);
//! 3. update every atom by power iteration on the batch, A atoms at a time.
//!
//! A thread reads and centres batch i + 1 while the GPU works on batch i; per batch only the
//! metrics and the atom usage come back from the device. At the end of every epoch but the last,
//! atoms unused or rarely used in the epoch, and near-duplicates of more used atoms, are re-seeded
//! by splitting the atoms whose users carry the most residual (the worst-represented sample when
//! there is nothing to split).
//!
//! Everything random derives from one seed: the initial atoms, the batch order of each epoch (from
//! the seed and the epoch), the atom order of each update (from the seed and the update's number).
//! So a run resumed from a checkpoint continues exactly as the uninterrupted run would have.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use serde::Serialize;

use crate::data::ActivationSource;
use crate::encode::CodingOptions;
use crate::error::{Error, Result};
use crate::export::{self, Dictionary};
use crate::gpu::step::{StepBuffers, StepOutput};
use crate::gpu::{Gpu, Matrix, UpdateOptions};

mod checkpoint;
mod config;
mod hygiene;
mod init;
mod metrics;
mod plan;

use checkpoint::{save_checkpoint, EpochSums, Position};
pub use checkpoint::{Checkpoint, CHECKPOINT_FILE};
pub use config::{Init, TrainConfig, DEFAULT_BATCH};
use hygiene::epoch_end_hygiene;
pub use init::init_from_samples;
use metrics::epoch_metrics;
pub use metrics::{
    evaluate, evaluate_prefix, BatchMetrics, EpochMetrics, Progress, Score, StopReason,
    TrainResult, DICTIONARY_FILE,
};
use plan::{allocate_parts, group_codings, resolve_batch, start, Start};

type Callback<'a> = Box<dyn FnMut(&Progress) -> ControlFlow<()> + 'a>;

/// Trains a dictionary on an [`ActivationSource`].
///
/// ```no_run
/// use dbksvd::{data, gpu::Gpu, train::{TrainConfig, Trainer}};
/// # fn main() -> dbksvd::Result<()> {
/// let gpu = Gpu::new()?;
/// let source = data::open(&["acts.safetensors"])?;
/// let result = Trainer::new(&gpu, TrainConfig::new(512, 16)).fit(&source)?;
/// println!("FVU {:.4}", result.epochs.last().unwrap().fvu);
/// result.dictionary.save("dictionary.safetensors")?;
/// # Ok(()) }
/// ```
pub struct Trainer<'a> {
    gpu: &'a Gpu,
    config: TrainConfig,
    checkpoint_dir: Option<PathBuf>,
    resume: Option<PathBuf>,
    eval: Option<&'a dyn ActivationSource>,
    on_batch: Option<Callback<'a>>,
}

/// A batch read, centred and measured on the host.
struct Prepared {
    data: Vec<f32>,
    /// ‖y‖² of each row as coded.
    norms: Vec<f32>,
    /// Σ‖y − ȳ‖² over the batch (ȳ the data mean).
    variance: f64,
}

impl<'a> Trainer<'a> {
    /// A trainer on `gpu` with `config`.
    pub fn new(gpu: &'a Gpu, config: TrainConfig) -> Self {
        Self {
            gpu,
            config,
            checkpoint_dir: None,
            resume: None,
            eval: None,
            on_batch: None,
        }
    }

    /// Writes [`CHECKPOINT_FILE`] into `dir` every `checkpoint_every` batches and at epoch ends.
    pub fn checkpoint_to(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// Continues from a checkpoint: its dictionary, mean and position replace initialisation.
    /// The run's settings must match the checkpoint's (epochs and time limit may differ).
    pub fn resume_from(mut self, checkpoint: impl Into<PathBuf>) -> Self {
        self.resume = Some(checkpoint.into());
        self
    }

    /// Scores the dictionary on `source` after every epoch (its FVU uses its own mean).
    pub fn evaluate_on(mut self, source: &'a dyn ActivationSource) -> Self {
        self.eval = Some(source);
        self
    }

    /// Called after every batch; returning `ControlFlow::Break(())` stops training there.
    pub fn on_batch(mut self, callback: impl FnMut(&Progress) -> ControlFlow<()> + 'a) -> Self {
        self.on_batch = Some(Box::new(callback));
        self
    }

    /// Trains on `source` and returns the dictionary and its metrics.
    pub fn fit(mut self, source: &dyn ActivationSource) -> Result<TrainResult> {
        let mut config = self.config.clone();
        let (rows, d) = (source.rows(), source.dim());
        config.validate_for(rows, d, &source.name())?;
        let gpu = self.gpu;
        let n_atoms = config.atoms;
        let (groups, codings) = group_codings(&config)?;
        // A resumed run without a batch size of its own goes on with the checkpoint's.
        let checkpoint = match &self.resume {
            Some(path) => Some((path, Checkpoint::load(path)?)),
            None => None,
        };
        if let (None, Some((_, checkpoint))) = (config.batch_size, &checkpoint) {
            config.batch_size = checkpoint.config.batch_size;
        }
        let batch_size = resolve_batch(gpu, &mut config, &groups, &codings, rows, d)?;
        let Start {
            atoms: atoms_host,
            memory: memory_host,
            mean: data_mean,
            mut position,
            mut epoch_usage,
        } = start(source, &config, checkpoint)?;

        // Where the run could continue from if it stops on an error: the last checkpoint.
        let mut last_checkpoint: Option<(PathBuf, usize, usize)> = self
            .resume
            .clone()
            .map(|path| (path, position.epoch, position.batch));
        // Once there is a checkpoint to go back to, every error names it.
        let checkpoint_dir = self.checkpoint_dir.clone();
        let kept = |cause: Error, last: &Option<(PathBuf, usize, usize)>| match last {
            Some(_) => training_error(cause, checkpoint_dir.as_deref(), last.clone()),
            None => cause,
        };
        // One part per Matryoshka group (a plain run is one group): its atoms, memory, Gram
        // scratch and step buffers, and its share of k.
        let allocated = allocate_parts(
            gpu,
            &groups,
            &codings,
            &atoms_host,
            &memory_host,
            batch_size,
        );
        let mut parts = allocated.map_err(|cause| kept(cause, &last_checkpoint))?;
        // Whether the epoch's latest batch ran in `short` (hygiene reads that batch's codes).
        let mut last_was_short = false;
        let order = config.order();
        let batches_per_epoch = order.batches_per_epoch(rows);
        let total = batches_per_epoch.saturating_mul(config.epochs);
        let centre = config.center.then_some(data_mean.as_slice());
        let started = Instant::now();
        let seconds_before = position.seconds;
        let elapsed = |started: &Instant| seconds_before + started.elapsed().as_secs_f64();
        let mut stop = StopReason::Epochs;
        let dictionary_of = |parts: &[Part], metadata| -> Result<Dictionary> {
            Ok(Dictionary {
                atoms: read_parts(gpu, parts, |p| &p.atoms)?,
                n_atoms,
                d,
                mean: b_dec(&config, &data_mean),
                metadata,
            })
        };

        let mut run = || -> Result<()> {
            'epochs: while position.epoch < config.epochs {
                let epoch = position.epoch;
                let mut rows_of = order.epoch(rows, epoch as u64)?;
                if position.batch >= batches_per_epoch {
                    return Err(Error::InvalidArgument(format!(
                        "cannot resume at batch {} of epoch {epoch}: an epoch has {batches_per_epoch} batches",
                        position.batch
                    )));
                }
                // Resuming mid-epoch: skip the batches already trained on (indices only, no reads).
                for _ in 0..position.batch {
                    rows_of.next();
                }
                let epoch_started = Instant::now();
                let mean_ref = data_mean.as_slice();
                let mut stop_after_epoch = None;
                let outcome = std::thread::scope(|scope| -> Result<Option<StopReason>> {
                    let (tx, rx) = sync_channel::<Result<Prepared>>(1);
                    scope.spawn(move || {
                        for batch_rows in rows_of {
                            let prepared = prepare(source, &batch_rows, centre, mean_ref);
                            let failed = prepared.is_err();
                            if tx.send(prepared).is_err() || failed {
                                break;
                            }
                        }
                    });
                    loop {
                        let waiting = Instant::now();
                        let Ok(prepared) = rx.recv() else {
                            return Ok(None);
                        };
                        let prepared = prepared?;
                        let host_s = waiting.elapsed().as_secs_f64();
                        let n = prepared.norms.len();
                        last_was_short = n != parts[0].full.len();
                        let out = train_batch(gpu, &mut parts, &config, &prepared, position.step)?;
                        let (metrics, sums) = batch_metrics(&out, &prepared, host_s);
                        let metrics = BatchMetrics {
                            epoch,
                            batch: position.batch,
                            step: position.step,
                            ..metrics
                        };
                        for (total, used) in epoch_usage.iter_mut().zip(&out.usage) {
                            *total = total.saturating_add(*used);
                        }
                        position.sums.add(&sums);
                        position.batch += 1;
                        position.step += 1;
                        position.batches.push(metrics);
                        log::debug!(
                            "epoch {epoch} batch {}: FVU {:.4}, L0 {:.2}, {} atoms unused",
                            position.batch - 1,
                            position.batches.last().unwrap().fvu,
                            position.batches.last().unwrap().l0,
                            position.batches.last().unwrap().unused_atoms
                        );
                        let mut wants_stop = None;
                        if let Some(callback) = self.on_batch.as_mut() {
                            let progress = Progress {
                                batch: position.batches.last().unwrap(),
                                done: position.step,
                                total,
                            };
                            if callback(&progress).is_break() {
                                wants_stop = Some(StopReason::Callback);
                            }
                        }
                        if config
                            .time_limit
                            .is_some_and(|limit| elapsed(&started) >= limit.as_secs_f64())
                        {
                            wants_stop = Some(StopReason::TimeLimit);
                        }
                        let periodic = config
                            .checkpoint_every
                            .is_some_and(|every| position.step.is_multiple_of(every));
                        let epoch_ends = position.batch == batches_per_epoch;
                        if let Some(dir) = &self.checkpoint_dir {
                            if (periodic || wants_stop.is_some()) && !epoch_ends {
                                position.seconds = elapsed(&started);
                                position.sums.seconds += epoch_started.elapsed().as_secs_f64();
                                last_checkpoint = Some(save_checkpoint(
                                    gpu,
                                    dir,
                                    &config,
                                    &parts,
                                    &data_mean,
                                    &position,
                                    &epoch_usage,
                                )?);
                                position.sums.seconds -= epoch_started.elapsed().as_secs_f64();
                            }
                        }
                        if wants_stop.is_some() {
                            if epoch_ends {
                                // Finish the epoch (hygiene, metrics, checkpoint) first.
                                stop_after_epoch = wants_stop;
                            } else {
                                return Ok(wants_stop);
                            }
                        }
                    }
                })?;
                position.sums.seconds += epoch_started.elapsed().as_secs_f64();
                if let Some(reason) = outcome {
                    position.seconds = elapsed(&started);
                    stop = reason;
                    break 'epochs;
                }

                // Epoch end: atom hygiene within each group (not after the last epoch: freshly
                // split atoms would be returned untrained), coherence, evaluation.
                let hygiene_started = Instant::now();
                let hygiene = epoch_end_hygiene(
                    gpu,
                    &mut parts,
                    &epoch_usage,
                    &config,
                    epoch + 1 < config.epochs,
                    last_was_short,
                )?;
                let coherence = mean_coherence(gpu, &parts)?;
                let eval = match self.eval {
                    Some(eval) => {
                        let dictionary = dictionary_of(&parts, group_metadata(&config)?)?;
                        // Scored as `encode` codes by default (OMP), whatever trains.
                        let scoring = CodingOptions::omp(config.k).with_gram(config.gram);
                        Some(evaluate(gpu, &dictionary, eval, scoring, batch_size)?)
                    }
                    None => None,
                };
                let sums = std::mem::take(&mut position.sums);
                let seconds = sums.seconds + hygiene_started.elapsed().as_secs_f64();
                let metrics = epoch_metrics(epoch, &sums, &hygiene, coherence, eval, seconds);
                let previous = position.epochs.last().map(|e| e.fvu);
                position.epochs.push(metrics);
                position.epoch += 1;
                position.batch = 0;
                epoch_usage.iter_mut().for_each(|u| *u = 0);
                position.seconds = elapsed(&started);
                if let Some(dir) = &self.checkpoint_dir {
                    last_checkpoint = Some(save_checkpoint(
                        gpu,
                        dir,
                        &config,
                        &parts,
                        &data_mean,
                        &position,
                        &epoch_usage,
                    )?);
                }
                if let Some(reason) = stop_after_epoch {
                    stop = reason;
                    break;
                }
                let fvu = position.epochs.last().unwrap().fvu;
                if let (Some(tolerance), Some(previous)) = (config.tolerance, previous) {
                    if previous - fvu < tolerance * previous {
                        stop = StopReason::Converged;
                        break;
                    }
                }
                if config
                    .time_limit
                    .is_some_and(|limit| position.seconds >= limit.as_secs_f64())
                    && position.epoch < config.epochs
                {
                    stop = StopReason::TimeLimit;
                    break;
                }
            }
            Ok(())
        };
        if let Err(cause) = run() {
            return Err(training_error(
                cause,
                self.checkpoint_dir.as_deref(),
                last_checkpoint,
            ));
        }

        let mut metadata = group_metadata(&config)?;
        metadata.insert("config".into(), json(&config)?);
        if let Some(last) = position.epochs.last() {
            metadata.insert("metrics".into(), json(last)?);
        }
        metadata.insert("dbksvd_version".into(), env!("CARGO_PKG_VERSION").into());
        let dictionary =
            dictionary_of(&parts, metadata).map_err(|cause| kept(cause, &last_checkpoint))?;
        Ok(TrainResult {
            dictionary,
            config,
            batches: position.batches,
            epochs: position.epochs,
            stop,
            seconds: position.seconds,
        })
    }
}

/// Codes and updates every group on one prepared batch (each group on what the groups before it
/// left: the device's residual after their updates); the steps' outputs combined, usage in atom
/// order and L0 summed over the groups.
fn train_batch(
    gpu: &Gpu,
    parts: &mut [Part],
    config: &TrainConfig,
    prepared: &Prepared,
    step: usize,
) -> Result<StepOutput> {
    let n = prepared.norms.len();
    let short = n != parts[0].full.len();
    let mut input: Option<(Vec<f32>, Vec<f32>)> = None;
    let mut out = StepOutput::default();
    let mut usage = Vec::new();
    let mut l0 = vec![0u32; n];
    let count = parts.len();
    for (g, part) in parts.iter_mut().enumerate() {
        let d = part.atoms.cols();
        let buffers = if !short {
            &mut part.full
        } else {
            if part.short.as_ref().is_none_or(|b| b.len() != n) {
                part.short = Some(gpu.step_buffers(n, d, part.coding.k, part.range.len())?);
            }
            part.short.as_mut().expect("just created")
        };
        let update = UpdateOptions {
            atom_batch: config.atom_batch.min(part.range.len()),
            power_iterations: config.power_iterations,
            seed: update_seed(group_seed(config.seed, g), step),
            memory: config.atom_memory,
        };
        let (data, norms) = match &input {
            Some((data, norms)) => (data.as_slice(), norms.as_slice()),
            None => (prepared.data.as_slice(), prepared.norms.as_slice()),
        };
        let step = gpu.train_step(
            &mut part.atoms,
            &part.memory,
            &mut part.gram,
            buffers,
            data,
            norms,
            &part.coding,
            &update,
            config.profile,
        )?;
        if g + 1 < count {
            let residual = gpu.read_residual(buffers.coded())?;
            let norms = residual
                .chunks_exact(d)
                .map(|r| r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32)
                .collect();
            input = Some((residual, norms));
        }
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

/// One batch's metrics from its step output (epoch, batch and step left at 0 for the caller),
/// and its share of the epoch sums.
fn batch_metrics(out: &StepOutput, prepared: &Prepared, host_s: f64) -> (BatchMetrics, EpochSums) {
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

/// One Matryoshka group's share of the device state (the whole dictionary in a plain run).
struct Part {
    /// Its atoms in the dictionary.
    range: std::ops::Range<usize>,
    /// Its coding options (its share of k).
    coding: CodingOptions,
    atoms: Matrix,
    memory: Matrix,
    /// [K_g, K_g] scratch.
    gram: Matrix,
    full: StepBuffers,
    /// Buffers for a batch shorter than the others.
    short: Option<StepBuffers>,
}

/// The mean over atoms of each atom's largest |cos| with another atom, over the whole dictionary.
fn mean_coherence(gpu: &Gpu, parts: &[Part]) -> Result<f64> {
    let coherence = if parts.len() > 1 {
        let n_atoms = parts.iter().map(|p| p.range.len()).sum();
        let d = parts[0].atoms.cols();
        let all = gpu.matrix(n_atoms, d, &read_parts(gpu, parts, |p| &p.atoms)?)?;
        gpu.coherence(&all)?
    } else {
        gpu.coherence(&parts[0].atoms)?
    };
    Ok(coherence.iter().map(|&c| c as f64).sum::<f64>() / coherence.len().max(1) as f64)
}

/// The rows of every part's `matrix`, in atom order: [K, d].
fn read_parts(gpu: &Gpu, parts: &[Part], matrix: impl Fn(&Part) -> &Matrix) -> Result<Vec<f32>> {
    let mut all = Vec::new();
    for part in parts {
        all.extend(gpu.read_matrix(matrix(part))?);
    }
    Ok(all)
}

/// The seed of group `g`'s atom orders (group 0's is the run's, as a plain run's).
pub(crate) fn group_seed(seed: u64, g: usize) -> u64 {
    seed ^ (g as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// The dictionary metadata that records the Matryoshka groups, if any.
fn group_metadata(config: &TrainConfig) -> Result<std::collections::HashMap<String, String>> {
    let mut metadata = std::collections::HashMap::new();
    if let Some(groups) = &config.groups {
        metadata.insert(export::GROUPS_METADATA.into(), json(groups)?);
    }
    Ok(metadata)
}

/// `cause`, which stopped training, with what is kept: the last checkpoint and how to continue.
fn training_error(
    cause: Error,
    checkpoint_dir: Option<&Path>,
    last: Option<(PathBuf, usize, usize)>,
) -> Error {
    let checkpoint = match (&last, checkpoint_dir) {
        (Some((path, epoch, batch)), _) => format!(
            "the last checkpoint is {} (epoch {epoch}, batch {batch}): continue from it with \
             `dbksvd train --resume` (Trainer::resume_from)",
            path.display()
        ),
        (None, Some(dir)) => format!(
            "no checkpoint was written to {} yet: the run must start again",
            dir.display()
        ),
        (None, None) => "no checkpoint folder was set: the run must start again".into(),
    };
    Error::Training {
        cause: Box::new(cause),
        checkpoint,
        checkpoint_path: last.map(|(path, ..)| path),
    }
}

/// The seed of update number `step`'s atom order.
pub(crate) fn update_seed(seed: u64, step: usize) -> u64 {
    // SplitMix64 of (seed, step): distinct, well-mixed streams per update.
    let mut z = seed
        ^ (step as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// b_dec as exported: the data mean when centring, else zeros.
fn b_dec(config: &TrainConfig, data_mean: &[f32]) -> Vec<f32> {
    if config.center {
        data_mean.to_vec()
    } else {
        vec![0.0; data_mean.len()]
    }
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::InvalidArgument(format!("JSON: {e}")))
}

/// Reads `rows` of `source`, centres them on `centre` if given, and measures them.
fn prepare(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A submission that fails (here: a validation error wgpu reports outside any scope, as a
    /// driver fault would) stops training with an error naming the last checkpoint, which
    /// loads. The fault comes after batch 2; the next GPU call, reading the atoms for batch 2's
    /// checkpoint, reports it, so batch 1's checkpoint is the last good one and stays in place.
    #[test]
    fn a_failed_submission_names_the_last_checkpoint() {
        let Some(gpu) = crate::gpu::context::fresh_gpu() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = 8;
        let data: Vec<f32> = (0..400 * d)
            .map(|i| ((i * 37) % 101) as f32 - 50.0)
            .collect();
        let source = crate::data::InMemory::new(data, d).unwrap();
        let mut config = TrainConfig::new(16, 2);
        config.batch_size = Some(100);
        config.checkpoint_every = Some(1);
        let err = Trainer::new(&gpu, config)
            .checkpoint_to(dir.path())
            .on_batch(|p| {
                if p.done == 2 {
                    gpu.report_validation_error();
                }
                ControlFlow::Continue(())
            })
            .fit(&source)
            .unwrap_err();
        assert!(matches!(err.cause(), Error::GpuValidation(_)), "{err:?}");
        let path = dir.path().join(CHECKPOINT_FILE);
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("epoch 0, batch 1"),
            "{message}"
        );
        assert_eq!(Checkpoint::load(&path).unwrap().position(), (0, 1, 1));
    }
}
