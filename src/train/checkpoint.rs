//! Checkpoints: where a run stands, written atomically and read back with every tensor checked,
//! so a resumed run continues bit for bit.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::{write_safetensors, SafetensorsFile, Tensor};
use crate::gpu::Gpu;

use super::{json, read_parts, BatchMetrics, EpochMetrics, Part, TrainConfig};

/// The checkpoint file's name inside the checkpoint folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Accumulated metrics of the epoch in progress (saved in checkpoints).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct EpochSums {
    pub(super) batches: usize,
    pub(super) samples: usize,
    pub(super) residual: f64,
    pub(super) variance: f64,
    pub(super) relative: f64,
    pub(super) l0: f64,
    pub(super) seconds: f64,
}

impl EpochSums {
    /// Adds one batch's share (its seconds are counted apart).
    pub(super) fn add(&mut self, batch: &EpochSums) {
        self.batches += batch.batches;
        self.samples += batch.samples;
        self.residual += batch.residual;
        self.variance += batch.variance;
        self.relative += batch.relative;
        self.l0 += batch.l0;
    }
}

/// Where a run stands: what a checkpoint saves besides the dictionary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Position {
    /// Rows of the data trained on (a resume must see the same number).
    pub(super) rows: usize,
    /// Epoch in progress.
    pub(super) epoch: usize,
    /// Batches of it already done.
    pub(super) batch: usize,
    /// Updates done in all.
    pub(super) step: usize,
    /// Seconds trained.
    pub(super) seconds: f64,
    pub(super) sums: EpochSums,
    pub(super) batches: Vec<BatchMetrics>,
    pub(super) epochs: Vec<EpochMetrics>,
}

/// A training checkpoint ([`CHECKPOINT_FILE`]) as read back: what [`Trainer::resume_from`](super::Trainer::resume_from)
/// continues from. Loading checks the format tag, the JSON metadata and every tensor's dtype,
/// shape and finiteness, so a damaged file is an error naming it, never a panic.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub(super) config: TrainConfig,
    pub(super) atoms: Vec<f32>,
    /// The atom memory [K, d].
    pub(super) memory: Vec<f32>,
    pub(super) d: usize,
    pub(super) mean: Vec<f32>,
    pub(super) epoch_usage: Vec<u32>,
    pub(super) position: Position,
}

impl Checkpoint {
    /// The run's configuration (batch size and atom memory as resolved by training).
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The atoms [K, d] at the checkpoint, row-major.
    pub fn atoms(&self) -> &[f32] {
        &self.atoms
    }

    /// The data mean \[d\] the run centres with.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// Sample dimension d.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Where the run stands: (epoch in progress, batches of it done, updates done in all).
    pub fn position(&self) -> (usize, usize, usize) {
        (self.position.epoch, self.position.batch, self.position.step)
    }

    /// Reads and validates a checkpoint file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = SafetensorsFile::read(path)?;
        let metadata = file.metadata()?;
        let format: String = file.meta(&metadata, "format")?;
        if format != "dbksvd-checkpoint" {
            return Err(Error::Format {
                file: path.display().to_string(),
                message: format!("is a {format:?} file, not a dbksvd checkpoint"),
            });
        }
        let parse = |key: &str| -> Result<serde_json::Value> {
            let text: String = file.meta(&metadata, key)?;
            serde_json::from_str(&text).map_err(|e| Error::Format {
                file: path.display().to_string(),
                message: format!("metadata `{key}` is not valid JSON: {e}"),
            })
        };
        let invalid = |key: &str, e: serde_json::Error| Error::Format {
            file: path.display().to_string(),
            message: format!("metadata `{key}` does not describe a run: {e}"),
        };
        let mut config: TrainConfig =
            serde_json::from_value(parse("config")?).map_err(|e| invalid("config", e))?;
        // Runs before A ≤ K was enforced stored the default 32 for smaller K; the update always
        // clamped it to K, so K is what they ran with.
        config.atom_batch = config.atom_batch.min(config.atoms);
        let position: Position =
            serde_json::from_value(parse("position")?).map_err(|e| invalid("position", e))?;
        // A run that could not have been written: refuse it here rather than divide by a zero
        // batch size or count steps past usize::MAX later.
        let unusable = |message: String| Error::Format {
            file: path.display().to_string(),
            message,
        };
        config
            .validate()
            .map_err(|e| unusable(format!("metadata `config` describes no valid run: {e}")))?;
        if position.batch > position.rows
            || position.epoch > config.epochs
            || position.step
                > position
                    .rows
                    .saturating_mul(config.epochs.saturating_add(1))
        {
            return Err(unusable(format!(
                "metadata `position` (epoch {}, batch {}, step {} over {} rows) does not fit a \
                 run of {} epochs",
                position.epoch, position.batch, position.step, position.rows, config.epochs
            )));
        }
        let (shape, atoms) = file.f32("dictionary", "[K, d]")?;
        let (memory_shape, memory) = file.f32("memory", "[K, d]")?;
        let (usage_shape, epoch_usage) = file.u32("epoch_usage", "[K]")?;
        let (mean_shape, mean) = file.f32("mean", "[d]")?;
        let d = mean_shape.first().copied().unwrap_or(0);
        if shape != [config.atoms, d]
            || memory_shape != shape
            || usage_shape != [config.atoms]
            || mean_shape.len() != 1
        {
            return Err(Error::Format {
                file: path.display().to_string(),
                message: format!(
                    "tensor shapes dictionary {shape:?}, memory {memory_shape:?}, mean \
                     {mean_shape:?}, epoch_usage {usage_shape:?} do not fit K = {}",
                    config.atoms
                ),
            });
        }
        Ok(Self {
            config,
            atoms,
            memory,
            d,
            mean,
            epoch_usage,
            position,
        })
    }
}

/// Writes the checkpoint into `dir`; returns its path and position (epoch, batch).
#[allow(clippy::too_many_arguments)]
pub(super) fn save_checkpoint(
    gpu: &Gpu,
    dir: &Path,
    config: &TrainConfig,
    parts: &[Part],
    data_mean: &[f32],
    position: &Position,
    epoch_usage: &[u32],
) -> Result<(PathBuf, usize, usize)> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let host_atoms = read_parts(gpu, parts, |p| &p.atoms)?;
    let host_memory = read_parts(gpu, parts, |p| &p.memory)?;
    let shape = vec![config.atoms, data_mean.len()];
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "dbksvd-checkpoint".to_string());
    metadata.insert(
        "dbksvd_version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    metadata.insert("config".to_string(), json(config)?);
    metadata.insert("position".to_string(), json(position)?);
    let path = dir.join(CHECKPOINT_FILE);
    write_safetensors(
        &path,
        &[
            Tensor::f32("dictionary", shape.clone(), &host_atoms),
            Tensor::f32("memory", shape, &host_memory),
            Tensor::f32("mean", vec![data_mean.len()], data_mean),
            Tensor::u32("epoch_usage", vec![epoch_usage.len()], epoch_usage),
        ],
        metadata,
    )?;
    log::debug!(
        "checkpoint at epoch {} batch {}",
        position.epoch,
        position.batch
    );
    Ok((path, position.epoch, position.batch))
}
