//! A training run in progress: the device state, where the run stands, and the steps
//! [`Trainer::fit`](super::Trainer::fit) strings together (plan, epoch, epoch end, finish).

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use super::batch::{batch_metrics, prepare, train_batch, Prepared};
use super::checkpoint::{save_checkpoint, Checkpoint, Position};
use super::hygiene::epoch_end_hygiene;
use super::metrics::{epoch_metrics, evaluate, BatchMetrics, Progress, StopReason, TrainResult};
use super::plan::{allocate_parts, group_codings, resolve_batch, start, Start};
use super::{
    b_dec, group_metadata, json, mean_coherence, read_parts, training_error, Callback, Part,
    TrainConfig,
};
use crate::data::ActivationSource;
use crate::dictionary::Dictionary;
use crate::encode::CodingOptions;
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// The last checkpoint written (or resumed from): its path, epoch and batch.
type Saved = (PathBuf, usize, usize);

/// Everything a run carries from batch to batch.
pub(super) struct Run<'g> {
    gpu: &'g Gpu,
    /// The configuration with the batch size resolved.
    pub(super) config: TrainConfig,
    /// The data's rows and dimension.
    rows: usize,
    d: usize,
    data_mean: Vec<f32>,
    /// One part per Matryoshka group (a plain run is one group).
    parts: Vec<Part>,
    pub(super) position: Position,
    /// Per atom, its use in the epoch in progress.
    epoch_usage: Vec<u32>,
    /// Where the run could continue from if it stops on an error.
    last_checkpoint: Option<Saved>,
    checkpoint_dir: Option<PathBuf>,
    /// Whether the epoch's latest batch ran in `short` (hygiene reads that batch's codes).
    last_was_short: bool,
    batches_per_epoch: usize,
    /// The batch size resolved for the device.
    batch_size: usize,
    started: Instant,
    /// Seconds trained before this process (a resumed run's).
    seconds_before: f64,
}

impl<'g> Run<'g> {
    /// The run of `config` on `source`: the configuration checked against the data and the
    /// device, the start (a checkpoint at `resume`, or the data's statistics and initial atoms),
    /// and each group's device state.
    pub(super) fn plan(
        gpu: &'g Gpu,
        config: &TrainConfig,
        source: &dyn ActivationSource,
        resume: Option<&Path>,
        checkpoint_dir: Option<PathBuf>,
    ) -> Result<Self> {
        let mut config = config.clone();
        let (rows, d) = (source.rows(), source.dim());
        config.validate_for(rows, d, &source.name())?;
        let (groups, codings) = group_codings(&config)?;
        let resume = resume.map(Path::to_path_buf);
        let checkpoint = match &resume {
            Some(path) => Some((path, Checkpoint::load(path)?)),
            None => None,
        };
        // A resumed run without a batch size of its own goes on with the checkpoint's.
        if let (None, Some((_, checkpoint))) = (config.batch_size, &checkpoint) {
            config.batch_size = checkpoint.config.batch_size;
        }
        let batch_size = resolve_batch(gpu, &mut config, &groups, &codings, rows, d)?;
        let Start {
            atoms,
            memory,
            mean,
            position,
            epoch_usage,
        } = start(source, &config, checkpoint)?;
        let last_checkpoint = resume.map(|path| (path, position.epoch, position.batch));
        let parts = allocate_parts(gpu, &groups, &codings, &atoms, &memory, batch_size);
        let parts = parts.map_err(|cause| kept(cause, &checkpoint_dir, &last_checkpoint))?;
        Ok(Self {
            gpu,
            batches_per_epoch: config.order().batches_per_epoch(rows),
            batch_size,
            config,
            rows,
            d,
            data_mean: mean,
            parts,
            seconds_before: position.seconds,
            position,
            epoch_usage,
            last_checkpoint,
            checkpoint_dir,
            last_was_short: false,
            started: Instant::now(),
        })
    }

    /// Seconds trained, this process's and before.
    fn elapsed(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }

    /// Trains on the rest of the epoch in progress, batch by batch (the next batch read and
    /// centred on a host thread meanwhile). Returns why the run stops mid-epoch, if it does,
    /// and otherwise a stop asked for on the epoch's last batch (which ends the epoch first).
    pub(super) fn train_epoch(
        &mut self,
        source: &dyn ActivationSource,
        on_batch: &mut Option<Callback<'_>>,
    ) -> Result<(Option<StopReason>, Option<StopReason>)> {
        let epoch = self.position.epoch;
        let mut rows_of = self.config.order().epoch(self.rows, epoch as u64)?;
        if self.position.batch >= self.batches_per_epoch {
            return Err(Error::InvalidArgument(format!(
                "cannot resume at batch {} of epoch {epoch}: an epoch has {} batches",
                self.position.batch, self.batches_per_epoch
            )));
        }
        // Resuming mid-epoch: skip the batches already trained on (indices only, no reads).
        for _ in 0..self.position.batch {
            rows_of.next();
        }
        let epoch_started = Instant::now();
        let mean = self.data_mean.clone();
        let centre = self.config.center.then_some(mean.as_slice());
        let mean = mean.as_slice();
        let outcome = std::thread::scope(|scope| -> Result<Option<StopReason>> {
            let (tx, rx) = sync_channel::<Result<Prepared>>(1);
            scope.spawn(move || {
                for batch_rows in rows_of {
                    let prepared = prepare(source, &batch_rows, centre, mean);
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
                let wants_stop = self.batch(&prepared, host_s, on_batch)?;
                let epoch_ends = self.position.batch == self.batches_per_epoch;
                if self.checkpoint_due(wants_stop.is_some()) && !epoch_ends {
                    // The checkpoint records the epoch's seconds so far, this batch included.
                    self.position.seconds = self.elapsed();
                    let seconds = epoch_started.elapsed().as_secs_f64();
                    self.position.sums.seconds += seconds;
                    self.save_checkpoint()?;
                    self.position.sums.seconds -= seconds;
                }
                if wants_stop.is_some() {
                    return Ok(wants_stop);
                }
            }
        })?;
        self.position.sums.seconds += epoch_started.elapsed().as_secs_f64();
        let epoch_ends = self.position.batch == self.batches_per_epoch;
        match outcome {
            // Finish the epoch (hygiene, metrics, checkpoint) before a stop at its last batch.
            Some(reason) if epoch_ends => Ok((None, Some(reason))),
            Some(reason) => {
                self.position.seconds = self.elapsed();
                Ok((Some(reason), None))
            }
            None => Ok((None, None)),
        }
    }

    /// Codes, measures and updates on one prepared batch; returns a stop the callback or the
    /// time limit asks for.
    fn batch(
        &mut self,
        prepared: &Prepared,
        host_s: f64,
        on_batch: &mut Option<Callback<'_>>,
    ) -> Result<Option<StopReason>> {
        let position = &mut self.position;
        self.last_was_short = prepared.norms.len() != self.parts[0].full.len();
        let out = train_batch(
            self.gpu,
            &mut self.parts,
            &self.config,
            prepared,
            position.step,
        )?;
        let (metrics, sums) = batch_metrics(&out, prepared, host_s);
        let metrics = BatchMetrics {
            epoch: position.epoch,
            batch: position.batch,
            step: position.step,
            ..metrics
        };
        log::debug!(
            "epoch {} batch {}: FVU {:.4}, L0 {:.2}, {} atoms unused",
            metrics.epoch,
            metrics.batch,
            metrics.fvu,
            metrics.l0,
            metrics.unused_atoms
        );
        for (total, used) in self.epoch_usage.iter_mut().zip(&out.usage) {
            *total = total.saturating_add(*used);
        }
        position.sums.add(&sums);
        position.batch += 1;
        position.step += 1;
        position.batches.push(metrics);
        let mut wants_stop = None;
        if let Some(callback) = on_batch.as_mut() {
            let progress = Progress {
                batch: position.batches.last().expect("just pushed"),
                done: position.step,
                total: self.batches_per_epoch.saturating_mul(self.config.epochs),
            };
            if callback(&progress).is_break() {
                wants_stop = Some(StopReason::Callback);
            }
        }
        if self.over_time(self.elapsed()) {
            wants_stop = Some(StopReason::TimeLimit);
        }
        Ok(wants_stop)
    }

    /// Whether a checkpoint is written after this batch: periodically, and before a stop.
    fn checkpoint_due(&self, stopping: bool) -> bool {
        let periodic = self
            .config
            .checkpoint_every
            .is_some_and(|every| self.position.step.is_multiple_of(every));
        self.checkpoint_dir.is_some() && (periodic || stopping)
    }

    fn over_time(&self, seconds: f64) -> bool {
        self.config
            .time_limit
            .is_some_and(|limit| seconds >= limit.as_secs_f64())
    }

    /// Ends the epoch just trained: atom hygiene within each group (not after the last epoch:
    /// freshly split atoms would be returned untrained), coherence, the held-out score, the
    /// epoch's metrics and a checkpoint. Returns why the run stops here, if it does.
    pub(super) fn end_epoch(
        &mut self,
        eval: Option<&dyn ActivationSource>,
        stop_asked: Option<StopReason>,
    ) -> Result<Option<StopReason>> {
        let (gpu, epoch) = (self.gpu, self.position.epoch);
        let hygiene_started = Instant::now();
        let last_epoch = epoch + 1 >= self.config.epochs;
        let hygiene = epoch_end_hygiene(
            gpu,
            &mut self.parts,
            &self.epoch_usage,
            &self.config,
            !last_epoch,
            self.last_was_short,
        )?;
        let coherence = mean_coherence(gpu, &self.parts)?;
        let eval = match eval {
            Some(eval) => {
                let dictionary = self.dictionary(group_metadata(&self.config)?)?;
                // Scored as `encode` codes by default (OMP), whatever trains.
                let scoring = CodingOptions::omp(self.config.k).with_gram(self.config.gram);
                Some(evaluate(gpu, &dictionary, eval, scoring, self.batch_size)?)
            }
            None => None,
        };
        let position = &mut self.position;
        let sums = std::mem::take(&mut position.sums);
        let seconds = sums.seconds + hygiene_started.elapsed().as_secs_f64();
        let metrics = epoch_metrics(epoch, &sums, &hygiene, coherence, eval, seconds);
        let (previous, fvu) = (position.epochs.last().map(|e| e.fvu), metrics.fvu);
        position.epochs.push(metrics);
        position.epoch += 1;
        position.batch = 0;
        self.epoch_usage.iter_mut().for_each(|u| *u = 0);
        self.position.seconds = self.elapsed();
        if self.checkpoint_dir.is_some() {
            self.save_checkpoint()?;
        }
        let converged = match (self.config.tolerance, previous) {
            (Some(tolerance), Some(previous)) => previous - fvu < tolerance * previous,
            _ => false,
        };
        Ok(if stop_asked.is_some() {
            stop_asked
        } else if converged {
            Some(StopReason::Converged)
        } else if self.over_time(self.position.seconds) && !last_epoch {
            Some(StopReason::TimeLimit)
        } else {
            None
        })
    }

    fn save_checkpoint(&mut self) -> Result<()> {
        let dir = self
            .checkpoint_dir
            .as_deref()
            .expect("checked by the caller");
        self.last_checkpoint = Some(save_checkpoint(
            self.gpu,
            dir,
            &self.config,
            &self.parts,
            &self.data_mean,
            &self.position,
            &self.epoch_usage,
        )?);
        Ok(())
    }

    /// The dictionary the device holds now, with `metadata`.
    fn dictionary(
        &self,
        metadata: std::collections::HashMap<String, String>,
    ) -> Result<Dictionary> {
        Ok(Dictionary {
            atoms: read_parts(self.gpu, &self.parts, |p| &p.atoms)?,
            n_atoms: self.config.atoms,
            d: self.d,
            mean: b_dec(&self.config, &self.data_mean),
            metadata,
        })
    }

    /// `cause`, which stopped the run, naming the last checkpoint and how to continue.
    pub(super) fn failed(&self, cause: Error) -> Error {
        training_error(
            cause,
            self.checkpoint_dir.as_deref(),
            self.last_checkpoint.clone(),
        )
    }

    /// The trained dictionary (its configuration, groups and last metrics in its metadata)
    /// and the run's metrics.
    pub(super) fn finish(self, stop: StopReason) -> Result<TrainResult> {
        let mut metadata = group_metadata(&self.config)?;
        metadata.insert("config".into(), json(&self.config)?);
        if let Some(last) = self.position.epochs.last() {
            metadata.insert("metrics".into(), json(last)?);
        }
        metadata.insert("dbksvd_version".into(), env!("CARGO_PKG_VERSION").into());
        let dictionary = self
            .dictionary(metadata)
            .map_err(|cause| kept(cause, &self.checkpoint_dir, &self.last_checkpoint))?;
        Ok(TrainResult {
            dictionary,
            config: self.config,
            batches: self.position.batches,
            epochs: self.position.epochs,
            stop,
            seconds: self.position.seconds,
        })
    }
}

/// Outside the epochs, an error names a checkpoint only once there is one to go back to.
fn kept(cause: Error, dir: &Option<PathBuf>, last: &Option<Saved>) -> Error {
    match last {
        Some(_) => training_error(cause, dir.as_deref(), last.clone()),
        None => cause,
    }
}
