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

use serde::Serialize;

use crate::data::ActivationSource;
use crate::dictionary::GROUPS_METADATA;
use crate::encode::CodingOptions;
use crate::error::{Error, Result};
use crate::gpu::step::StepBuffers;
use crate::gpu::{Gpu, Matrix};

mod batch;
mod checkpoint;
mod config;
mod hygiene;
mod init;
mod metrics;
mod plan;
mod run;

pub use checkpoint::{Checkpoint, CHECKPOINT_FILE};
pub use config::{Init, TrainConfig, DEFAULT_ATOM_BATCH, DEFAULT_BATCH};
pub use init::init_from_samples;
pub use metrics::{
    evaluate, evaluate_prefix, BatchMetrics, EpochMetrics, Progress, Score, StopReason,
    TrainResult, DICTIONARY_FILE,
};
use run::Run;

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
        // Plan: the configuration resolved against the data and the device, the start (fresh
        // or from a checkpoint), each Matryoshka group's device state.
        let mut run = Run::plan(
            self.gpu,
            &self.config,
            source,
            self.resume.as_deref(),
            self.checkpoint_dir.clone(),
        )?;
        let mut epochs = || -> Result<StopReason> {
            while run.position.epoch < run.config.epochs {
                // Each batch: code, measure, update; a stop may come mid-epoch.
                let (stopped, stop_asked) = run.train_epoch(source, &mut self.on_batch)?;
                if let Some(reason) = stopped {
                    return Ok(reason);
                }
                // Epoch end: hygiene, coherence, held-out score, metrics, checkpoint.
                if let Some(reason) = run.end_epoch(self.eval, stop_asked)? {
                    return Ok(reason);
                }
            }
            Ok(StopReason::Epochs)
        };
        let stop = epochs().map_err(|cause| run.failed(cause))?;
        // Outputs: the dictionary with its metadata, and the metrics.
        run.finish(stop)
    }
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
        metadata.insert(GROUPS_METADATA.into(), json(groups)?);
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
    serde_json::to_string(value).map_err(|source| Error::Json {
        what: format!("writing {}", std::any::type_name::<T>()),
        source,
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
