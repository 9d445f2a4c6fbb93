//! What a run reports: per-batch and per-epoch metrics, held-out scores, the result and the
//! files written from it.

use serde::{Deserialize, Serialize};

use crate::data::{ActivationSource, BatchOrder};
use crate::dictionary::Dictionary;
use crate::encode::{CodingOptions, EncodeOptions};
use crate::error::{Error, Result};
use crate::gpu::Gpu;

use super::checkpoint::EpochSums;
use super::hygiene::Hygiene;
use super::{ratio, TrainConfig};

/// Metrics of one sample batch, from its codes before the update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchMetrics {
    /// Epoch (from 0).
    pub epoch: usize,
    /// Batch within the epoch (from 0).
    pub batch: usize,
    /// Updates done before this one, over all epochs.
    pub step: usize,
    /// Samples in the batch.
    pub samples: usize,
    /// Σ‖y − ŷ‖² / Σ‖y − ȳ‖² over the batch (ȳ the data mean).
    pub fvu: f64,
    /// Mean of ‖y − ŷ‖ / ‖y‖ over the batch (y as coded, i.e. centred when centring).
    pub relative_residual: f64,
    /// Mean nonzeros per sample.
    pub l0: f64,
    /// Atoms no sample of the batch used.
    pub unused_atoms: usize,
    /// Seconds in the products (0 unless profiling; then not in `coding_s`).
    pub gemm_s: f64,
    /// Seconds coding (with the products unless profiling), residual and transpose.
    pub coding_s: f64,
    /// Seconds in the atom update.
    pub update_s: f64,
    /// Seconds waiting for the host to deliver the batch.
    pub host_s: f64,
}

/// Reconstruction quality of a dictionary on a source.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Rows scored.
    pub rows: usize,
    /// Σ‖y − ŷ‖² / Σ‖y − ȳ‖² with ŷ = x·D + b_dec and ȳ the mean of the scored rows.
    pub fvu: f64,
    /// Mean ‖y − ŷ‖ / ‖y − b_dec‖.
    pub relative_residual: f64,
    /// Mean nonzeros per row.
    pub l0: f64,
}

/// Metrics of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch (from 0).
    pub epoch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// Samples coded.
    pub samples: usize,
    /// FVU over the epoch's batches (each coded with the dictionary of its time).
    pub fvu: f64,
    /// Mean relative residual.
    pub relative_residual: f64,
    /// Mean L0.
    pub l0: f64,
    /// Atoms no sample used during the epoch.
    pub dead_atoms: usize,
    /// Atoms used, but fewer times than `rare_atom_fraction` of the mean.
    pub rare_atoms: usize,
    /// Dead and rare atoms re-seeded at the epoch's end (none after the last epoch).
    pub reseeded: usize,
    /// Atoms with |cos| above the duplicate threshold with a more used atom.
    pub duplicates: usize,
    /// Duplicates re-seeded at the epoch's end (none after the last epoch).
    pub purged: usize,
    /// Mean over atoms of the largest |cos| with another atom, after the epoch.
    pub coherence: f64,
    /// Score on the evaluation source, when one is set.
    pub eval: Option<Score>,
    /// Seconds of training in the epoch.
    pub seconds: f64,
}

/// Why training stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// All epochs ran.
    Epochs,
    /// The time limit was reached.
    TimeLimit,
    /// An epoch improved the FVU by less than the tolerance.
    Converged,
    /// The per-batch callback asked to stop.
    Callback,
}

/// What [`Trainer::fit`](super::Trainer::fit) returns.
#[derive(Clone, Debug)]
pub struct TrainResult {
    /// The dictionary, b_dec, and metadata (configuration, final metrics, crate version).
    pub dictionary: Dictionary,
    /// The configuration trained with.
    pub config: TrainConfig,
    /// Every batch's metrics, in order (including those before a resume).
    pub batches: Vec<BatchMetrics>,
    /// Every finished epoch's metrics.
    pub epochs: Vec<EpochMetrics>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Seconds of training (including those before a resume).
    pub seconds: f64,
}

/// What the per-batch callback sees.
#[derive(Debug)]
pub struct Progress<'a> {
    /// The batch just trained on.
    pub batch: &'a BatchMetrics,
    /// Batches done, over all epochs.
    pub done: usize,
    /// Batches in the whole run.
    pub total: usize,
}

/// The dictionary's file name in an output folder.
pub const DICTIONARY_FILE: &str = "dictionary.safetensors";

/// Scores `dictionary` on `source`: each row coded (y − b_dec) with `coding`, ŷ = x·D + b_dec;
/// FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖² with ȳ the mean of the scored rows. One streaming pass.
pub fn evaluate(
    gpu: &Gpu,
    dictionary: &Dictionary,
    source: &dyn ActivationSource,
    coding: CodingOptions,
    batch_size: usize,
) -> Result<Score> {
    let groups = dictionary.groups()?.map_or(1, |g| g.len());
    evaluate_prefix(gpu, dictionary, source, coding, batch_size, groups)
}

/// [`evaluate`] with the first `prefix` Matryoshka groups of `dictionary` only (see
/// [`crate::encode::EncodeOptions::prefix`]); 1 for a plain dictionary.
pub fn evaluate_prefix(
    gpu: &Gpu,
    dictionary: &Dictionary,
    source: &dyn ActivationSource,
    coding: CodingOptions,
    batch_size: usize,
    prefix: usize,
) -> Result<Score> {
    let d = source.dim();
    if d != dictionary.d {
        return Err(Error::ShapeMismatch {
            op: format!("evaluating on {} (dictionary vs data)", source.name()),
            left: format!("d = {}", dictionary.d),
            right: format!("d = {d}"),
        });
    }
    if source.rows() == 0 {
        return Err(Error::InvalidArgument(format!(
            "{} has no rows to score",
            source.name()
        )));
    }
    let encoder = dictionary.encoder(gpu, coding)?;
    // Σ‖y − b‖² and Σ(y − b) about b = b_dec: close to the data mean, so the variance
    // Σ‖y − ȳ‖² = Σ‖y − b‖² − n‖ȳ − b‖² does not cancel away.
    let (mut residual, mut squares, mut relative, mut l0) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut sum = vec![0.0f64; d];
    let order = BatchOrder::sequential(batch_size.max(1));
    for batch in crate::data::Batches::new(source, &order, 0)? {
        let batch = batch?;
        let options = EncodeOptions::default().with_prefix(prefix);
        let codes = encoder.encode_with(&batch.data, options)?.codes;
        let approx = encoder.reconstruct(&codes)?;
        for (i, (y, y_hat)) in batch
            .data
            .chunks_exact(d)
            .zip(approx.chunks_exact(d))
            .enumerate()
        {
            let mut r2 = 0.0f64;
            let mut centred2 = 0.0f64;
            for c in 0..d {
                let (v, h) = (y[c] as f64, y_hat[c] as f64);
                r2 += (v - h) * (v - h);
                let centred = v - dictionary.mean[c] as f64;
                centred2 += centred * centred;
                sum[c] += centred;
            }
            residual += r2;
            squares += centred2;
            if centred2 > 0.0 {
                relative += (r2 / centred2).sqrt();
            }
            l0 += codes.row_nnz(i) as f64;
        }
    }
    let n = source.rows() as f64;
    let mean_norm2: f64 = sum.iter().map(|s| (s / n) * (s / n)).sum();
    let variance = (squares - n * mean_norm2).max(0.0);
    Ok(Score {
        rows: source.rows(),
        fvu: ratio(residual, variance),
        relative_residual: relative / n,
        l0: l0 / n,
    })
}

/// Epoch `epoch`'s metrics from its sums, its hygiene, the dictionary's mean coherence and the
/// held-out score; logged at info level.
pub(super) fn epoch_metrics(
    epoch: usize,
    sums: &EpochSums,
    hygiene: &Hygiene,
    coherence: f64,
    eval: Option<Score>,
    seconds: f64,
) -> EpochMetrics {
    let changed = |atoms: &[usize]| atoms.iter().filter(|j| hygiene.changed.contains(j)).count();
    let metrics = EpochMetrics {
        epoch,
        batches: sums.batches,
        samples: sums.samples,
        fvu: ratio(sums.residual, sums.variance),
        relative_residual: sums.relative / sums.samples.max(1) as f64,
        l0: sums.l0 / sums.samples.max(1) as f64,
        dead_atoms: hygiene.dead.len(),
        rare_atoms: hygiene.rare.len() - hygiene.dead.len(),
        reseeded: changed(&hygiene.rare),
        duplicates: hygiene.purged.len(),
        purged: changed(&hygiene.purged),
        coherence,
        eval,
        seconds,
    };
    log::info!(
        "epoch {epoch}: FVU {:.4}, L0 {:.2}, {} dead and {} rare atoms re-seeded, {} duplicates \
         purged, coherence {:.3}{}, {:.1} s",
        metrics.fvu,
        metrics.l0,
        metrics.dead_atoms,
        metrics.rare_atoms,
        metrics.purged,
        metrics.coherence,
        metrics
            .eval
            .map_or(String::new(), |s| format!(", eval FVU {:.4}", s.fvu)),
        metrics.seconds
    );
    metrics
}
