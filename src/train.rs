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

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{ActivationSource, BatchOrder, Shuffle, Stats};
use crate::encode::{Coder, CodingOptions, GramPrecision, Groups};
use crate::error::{Error, Result};
use crate::export::{self, Dictionary, SafetensorsFile, Tensor};
use crate::gpu::step::{StepBuffers, StepOutput};
use crate::gpu::{Gpu, Matrix, UpdateOptions};

/// How the dictionary starts.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Init {
    /// K distinct random samples (after centring), normalised; zero and duplicate rows skipped.
    #[default]
    Samples,
    /// A given dictionary [K, d], row-major (normalised on use).
    Dictionary(Vec<f32>),
}

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Atoms K.
    pub atoms: usize,
    /// Most nonzeros per sample k.
    pub k: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per batch B; `None` (the default) picks the largest batch up to
    /// [`DEFAULT_BATCH`] that the device fits (see [`Gpu::max_train_batch`]). A batch the device
    /// cannot hold is an [`Error::ExceedsLimit`] naming the largest that fits. Training evens B
    /// out to B' = ceil(N / ceil(N / B)), so every batch but one has B' rows and that one is short
    /// by less than the number of batches; the result's configuration records B'.
    pub batch_size: Option<usize>,
    /// Atoms updated in parallel A, at most K.
    pub atom_batch: usize,
    /// Power iterations per atom update p.
    pub power_iterations: usize,
    /// Weight γ ∈ [0, 1) of each atom's memory of earlier batches in its update (see
    /// [`Gpu::ksvd_update_with_memory`]): the atom follows the users of about 1/(1 − γ)
    /// batches. 0 fits each batch alone. Default 0.8: on MiniLM (K = 1536, k = 32, B = 4096)
    /// held-out FVU after 13 epochs 0.0964 against 0.0992 with γ = 0. Training lowers it to
    /// 1 − 1/(batches per epoch), so the memory spans at most an epoch (0 with one batch); the
    /// result's configuration records the value used.
    #[serde(default)]
    pub atom_memory: f32,
    /// The sparse coder. Default: matching pursuit with a least-squares refit of the support, as
    /// the paper and KSVD.jl train. At an equal wall time it learns the better dictionary: it
    /// codes a batch about 3× faster than Batch-OMP, so it sees more epochs (measured on
    /// MiniLM, K = 1536, k = 32, lavapipe: held-out FVU by OMP codes 0.1049 after 300 s
    /// against OMP's 0.1100, and OMP's 0.1054 after 600 s).
    pub coder: Coder,
    /// How the coder stores the Gram matrix (f16 halves its memory and the coding reads).
    #[serde(default)]
    pub gram: GramPrecision,
    /// Matryoshka groups: `None` trains a plain dictionary. With groups, each batch is coded
    /// and the atoms updated group by group, each group on the residual the groups before it
    /// leave, with its share of k ([`Groups::split_k`]); re-seeding stays within a group. Every
    /// prefix of groups is then a dictionary of its own.
    #[serde(default)]
    pub groups: Option<Groups>,
    /// Starting dictionary (not stored in files: a given dictionary is the checkpoint's own).
    #[serde(skip)]
    pub init: Init,
    /// Subtract the data mean (saved as b_dec) before coding.
    pub center: bool,
    /// Seed of everything random.
    pub seed: u64,
    /// Stop after this much training time (the current batch finishes). Counted over the whole
    /// run: a resumed run continues the count of the checkpoint it starts from.
    pub time_limit: Option<Duration>,
    /// Stop when an epoch lowers the FVU by less than this fraction of the previous epoch's.
    pub tolerance: Option<f64>,
    /// Write a checkpoint every this many batches (and at every epoch end) when the trainer
    /// has a checkpoint folder.
    pub checkpoint_every: Option<usize>,
    /// Batches whose rows are shuffled together (see [`crate::data::BatchOrder`]).
    pub shuffle_window: usize,
    /// Atoms whose |cos| with a more used atom exceeds this are re-seeded at epoch end.
    pub duplicate_threshold: f32,
    /// Atoms used fewer times in an epoch than this fraction of the mean atom's use are
    /// re-seeded at epoch end, as unused ones are. A stuck KSVD dictionary typically holds an atom
    /// that blends two true atoms, used by both their samples, next to a junk atom that almost
    /// nothing uses (measured on the planted problem: 7 and 12 uses against a median of 625);
    /// re-seeding the junk atom frees it to find the missing one. 0 re-seeds only unused atoms.
    pub rare_atom_fraction: f64,
    /// Time the products and the coding separately (one more GPU wait per batch).
    pub profile: bool,
}

impl TrainConfig {
    /// K atoms, k nonzeros, and defaults for the rest: 10 epochs, the largest batch up to 4096
    /// that the device fits, A = min(32, K), p = 1, atom memory γ = 0.8, MP with refit, sample init,
    /// centring, seed 0, window 16, duplicates above |cos| 0.99 purged.
    pub fn new(atoms: usize, k: usize) -> Self {
        let update = UpdateOptions::default();
        Self {
            atoms,
            k,
            epochs: 10,
            batch_size: None,
            atom_batch: update.atom_batch.min(atoms.max(1)),
            power_iterations: update.power_iterations,
            atom_memory: 0.8,
            coder: Coder::Mp { refit: true },
            gram: GramPrecision::F32,
            groups: None,
            init: Init::Samples,
            center: true,
            seed: 0,
            time_limit: None,
            tolerance: None,
            checkpoint_every: None,
            shuffle_window: BatchOrder::DEFAULT_WINDOW,
            duplicate_threshold: 0.99,
            rare_atom_fraction: 0.05,
            profile: false,
        }
    }

    /// Checks every field on its own (the data's dimension is checked by [`Trainer::fit`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        if self.atoms == 0 {
            return bad("atoms K must be at least 1".into());
        }
        if self.k == 0 || self.k > self.atoms {
            return bad(format!("k = {} must lie in 1..=K = {}", self.k, self.atoms));
        }
        if let Some(groups) = &self.groups {
            groups.validate_for(self.atoms, self.k)?;
        }
        if self.atom_batch > self.atoms {
            return bad(format!(
                "atom batch A = {} must not exceed K = {} (atoms updated in parallel)",
                self.atom_batch, self.atoms
            ));
        }
        for (name, value) in [
            ("epochs", self.epochs),
            ("batch size", self.batch_size.unwrap_or(DEFAULT_BATCH)),
            ("atom batch", self.atom_batch),
            ("power iterations", self.power_iterations),
            ("shuffle window", self.shuffle_window),
        ] {
            if value == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if !(self.atom_memory.is_finite() && (0.0..1.0).contains(&self.atom_memory)) {
            return bad(format!(
                "atom memory γ = {} must lie in [0, 1)",
                self.atom_memory
            ));
        }
        if self.checkpoint_every == Some(0) {
            return bad("checkpoint interval must be at least 1 batch".into());
        }
        if !(self.duplicate_threshold > 0.0 && self.duplicate_threshold < 1.0) {
            return bad(format!(
                "duplicate threshold {} must lie in (0, 1)",
                self.duplicate_threshold
            ));
        }
        if !(self.rare_atom_fraction.is_finite() && (0.0..1.0).contains(&self.rare_atom_fraction)) {
            return bad(format!(
                "rare-atom fraction {} must lie in [0, 1)",
                self.rare_atom_fraction
            ));
        }
        if let Some(t) = self.tolerance {
            if !(t.is_finite() && t >= 0.0) {
                return bad(format!("stop tolerance {t} must be finite and ≥ 0"));
            }
        }
        if self.time_limit == Some(Duration::ZERO) {
            return bad("time limit must be positive".into());
        }
        self.coding().validate()
    }

    /// The coding options training uses.
    pub fn coding(&self) -> CodingOptions {
        match self.coder {
            Coder::Omp => CodingOptions::omp(self.k),
            Coder::Mp { refit } => CodingOptions::mp(self.k, refit),
        }
        .with_gram(self.gram)
    }

    /// Checks the configuration against the data it trains on: k ≤ d (OMP cannot select more
    /// than d independent atoms) and K ≤ rows.
    pub fn validate_for(&self, rows: usize, d: usize, name: &str) -> Result<()> {
        self.validate()?;
        if rows == 0 || d == 0 {
            return Err(Error::InvalidArgument(format!(
                "{name} is empty ([{rows}, {d}]): nothing to train on"
            )));
        }
        if self.k > d {
            return Err(Error::InvalidArgument(format!(
                "k = {} exceeds the dimension d = {d} of {name}: at most d atoms are independent",
                self.k
            )));
        }
        if self.atoms > rows {
            return Err(Error::InvalidArgument(format!(
                "K = {} atoms asked for, but {name} has only {rows} rows",
                self.atoms
            )));
        }
        Ok(())
    }

    /// The batch order of training (with the default batch size when none is set; training
    /// records the batch it used).
    pub fn order(&self) -> BatchOrder {
        BatchOrder {
            batch_size: self.batch_size.unwrap_or(DEFAULT_BATCH),
            shuffle: Some(Shuffle {
                seed: self.seed,
                window: self.shuffle_window,
            }),
        }
    }

    /// The settings that must agree between a checkpoint and the run resuming it: all but the
    /// run's length and limits, which a resume may change.
    fn resumable_with(&self, other: &TrainConfig) -> Result<()> {
        const FREE: [&str; 5] = [
            "epochs",
            "time_limit",
            "tolerance",
            "checkpoint_every",
            "profile",
        ];
        let as_map = |c: &TrainConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(Error::InvalidArgument(
                "configuration is not serialisable".into(),
            )),
        };
        let (mine, theirs) = (as_map(self)?, as_map(other)?);
        for (name, value) in &mine {
            let theirs = theirs.get(name).unwrap_or(&serde_json::Value::Null);
            if !FREE.contains(&name.as_str()) && value != theirs {
                return Err(Error::InvalidArgument(format!(
                    "cannot resume: the checkpoint was trained with {name} = {theirs}, this run asks for {value}"
                )));
            }
        }
        Ok(())
    }
}

/// The batch size training aims for when none is set (lowered to what the device fits).
pub const DEFAULT_BATCH: usize = 4096;

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

/// What [`Trainer::fit`] returns.
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

/// The checkpoint file's name inside the checkpoint folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Accumulated metrics of the epoch in progress (saved in checkpoints).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct EpochSums {
    batches: usize,
    samples: usize,
    residual: f64,
    variance: f64,
    relative: f64,
    l0: f64,
    seconds: f64,
}

/// Where a run stands: what a checkpoint saves besides the dictionary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Position {
    /// Rows of the data trained on (a resume must see the same number).
    rows: usize,
    /// Epoch in progress.
    epoch: usize,
    /// Batches of it already done.
    batch: usize,
    /// Updates done in all.
    step: usize,
    /// Seconds trained.
    seconds: f64,
    sums: EpochSums,
    batches: Vec<BatchMetrics>,
    epochs: Vec<EpochMetrics>,
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
        // Matryoshka groups (one group of all atoms in a plain run) and their shares of k.
        let groups = match &config.groups {
            Some(groups) => groups.clone(),
            None => Groups::new(vec![n_atoms])?,
        };
        let codings: Vec<CodingOptions> = groups
            .split_k(config.k)?
            .into_iter()
            .map(|k| CodingOptions {
                k,
                ..config.coding()
            })
            .collect();
        // What the device holds: each group's dictionary must fit whatever the batch, and the
        // batch must fit every group's step buffers (and, on lavapipe, the update's loop cap).
        let mut fits = Vec::new();
        for (g, coding) in codings.iter().enumerate() {
            let size = groups.range(g).len();
            fits.push((gpu.train_batch_fit(size, d, coding)?, size, coding.k));
        }
        let (fit, fit_atoms, fit_k) = fits
            .into_iter()
            .min_by_key(|(fit, ..)| fit.largest)
            .expect("at least one group");
        if groups.len() > 1 {
            // The coherence of the whole dictionary and its evaluation use its whole Gram.
            gpu.check_matrix_fits(n_atoms, d, "dictionary")?;
            gpu.check_matrix_fits(n_atoms, n_atoms, "Gram matrix")?;
        }
        // A resumed run without a batch size of its own goes on with the checkpoint's.
        let checkpoint = match &self.resume {
            Some(path) => Some((path, Checkpoint::load(path)?)),
            None => None,
        };
        if let (None, Some((_, checkpoint))) = (config.batch_size, &checkpoint) {
            config.batch_size = checkpoint.config.batch_size;
        }
        // Equal batches: a short remainder batch would let atoms with one or two users there
        // fit those samples exactly and undo what the full batches learnt.
        let evened = |batch: usize| rows.div_ceil(rows.div_ceil(batch));
        let batch_size = match config.batch_size {
            Some(asked) if evened(asked) > fit.largest => {
                return Err(fit.exceeded(evened(asked), asked, rows, (fit_atoms, d, fit_k)));
            }
            Some(asked) => evened(asked),
            None => {
                if fit.largest < DEFAULT_BATCH.min(rows) {
                    log::info!(
                        "batch of {} samples: the most {} holds at K = {n_atoms}, d = {d} ({})",
                        fit.largest,
                        gpu.adapter().name,
                        fit.bound_by
                    );
                }
                evened(DEFAULT_BATCH.min(fit.largest))
            }
        };
        config.batch_size = Some(batch_size);
        // The memory spans at most an epoch: beyond it, earlier products repeat the same users
        // with staler directions (with one batch per epoch, plain KSVD is already full-batch).
        let batches = rows.div_ceil(batch_size);
        let longest = 1.0 - 1.0 / batches as f32;
        if config.atom_memory > longest {
            log::info!(
                "atom memory γ = {} lowered to {longest} ({batches} batches per epoch)",
                config.atom_memory
            );
            config.atom_memory = longest;
        }

        // Where to start: a checkpoint, or statistics and an initial dictionary.
        let (atoms_host, memory_host, data_mean, mut position, mut epoch_usage) = match checkpoint {
            Some((path, checkpoint)) => {
                config.resumable_with(&checkpoint.config)?;
                if checkpoint.d != d || checkpoint.position.rows != rows {
                    return Err(Error::ShapeMismatch {
                        op: format!("resume from {} (checkpoint vs data)", path.display()),
                        left: crate::error::shape(checkpoint.position.rows, checkpoint.d),
                        right: crate::error::shape(rows, d),
                    });
                }
                (
                    checkpoint.atoms,
                    checkpoint.memory,
                    checkpoint.mean,
                    checkpoint.position,
                    checkpoint.epoch_usage,
                )
            }
            None => {
                let stats = Stats::compute(source, batch_size)?;
                let mean = stats.mean_f32();
                let centre = config.center.then_some(mean.as_slice());
                let atoms = match &config.init {
                    Init::Samples => init_from_samples(source, n_atoms, centre, config.seed)?,
                    Init::Dictionary(atoms) => normalised_dictionary(atoms, n_atoms, d)?,
                };
                let position = Position {
                    rows,
                    epoch: 0,
                    batch: 0,
                    step: 0,
                    seconds: 0.0,
                    sums: EpochSums::default(),
                    batches: Vec::new(),
                    epochs: Vec::new(),
                };
                (
                    atoms,
                    vec![0.0; n_atoms * d],
                    mean,
                    position,
                    vec![0u32; n_atoms],
                )
            }
        };

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
        let allocated: Result<Vec<Part>> = (0..groups.len())
            .map(|g| {
                let range = groups.range(g);
                let (rows_of_part, words) = (range.len(), range.start * d..range.end * d);
                Ok(Part {
                    atoms: gpu.matrix(rows_of_part, d, &atoms_host[words.clone()])?,
                    memory: gpu.matrix(rows_of_part, d, &memory_host[words])?,
                    gram: gpu.zeros(rows_of_part, rows_of_part)?,
                    full: gpu.step_buffers(batch_size, d, codings[g].k, rows_of_part)?,
                    short: None,
                    coding: codings[g],
                    range,
                })
            })
            .collect();
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
        let grouped = config.groups.is_some();
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
                        // Each group codes and updates on what the groups before it left: the
                        // device's residual after their updates.
                        let mut input: Option<(Vec<f32>, Vec<f32>)> = None;
                        let mut out = StepOutput::default();
                        let mut usage = Vec::with_capacity(n_atoms);
                        let mut l0 = vec![0u32; n];
                        let count = parts.len();
                        for (g, part) in parts.iter_mut().enumerate() {
                            let buffers = if !last_was_short {
                                &mut part.full
                            } else {
                                if part.short.as_ref().is_none_or(|b| b.len() != n) {
                                    part.short = Some(gpu.step_buffers(
                                        n,
                                        d,
                                        part.coding.k,
                                        part.range.len(),
                                    )?);
                                }
                                part.short.as_mut().expect("just created")
                            };
                            let update = UpdateOptions {
                                atom_batch: config.atom_batch.min(part.range.len()),
                                power_iterations: config.power_iterations,
                                seed: update_seed(group_seed(config.seed, g), position.step),
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
                                    .map(|r| {
                                        r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32
                                    })
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
                        for (total, used) in epoch_usage.iter_mut().zip(&out.usage) {
                            *total = total.saturating_add(*used);
                        }
                        let metrics = BatchMetrics {
                            epoch,
                            batch: position.batch,
                            step: position.step,
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
                        let sums = &mut position.sums;
                        sums.batches += 1;
                        sums.samples += n;
                        sums.residual += residual;
                        sums.variance += prepared.variance;
                        sums.relative += relative;
                        sums.l0 += l0;
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
                let (mut dead, mut rare, mut purged, mut changed) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for part in parts.iter_mut() {
                    let start = part.range.start;
                    let usage = &epoch_usage[part.range.clone()];
                    let part_rare = rare_atoms(usage, config.rare_atom_fraction);
                    let part_purged: Vec<usize> = gpu
                        .duplicate_atoms(&part.atoms, usage, config.duplicate_threshold)?
                        .into_iter()
                        .filter(|j| !part_rare.contains(j))
                        .collect();
                    let mut flagged: Vec<usize> =
                        part_rare.iter().chain(&part_purged).copied().collect();
                    flagged.sort_unstable();
                    if !flagged.is_empty() && epoch + 1 < config.epochs {
                        // On the host: the group's atoms, and the residual and codes of its
                        // epoch's last batch.
                        let last = match (&mut part.short, last_was_short) {
                            (Some(short), true) => short.coded(),
                            _ => part.full.coded(),
                        };
                        let (codes, residual) = gpu.read_codes_and_residual(last)?;
                        let mut host = gpu.read_matrix(&part.atoms)?;
                        let part_changed = split_atoms(&mut host, d, &codes, &residual, &flagged);
                        gpu.write(&part.atoms.data, &host)?;
                        // A re-seeded atom starts without memory: its old users are not its new
                        // ones.
                        if !part_changed.is_empty() {
                            let mut rows = gpu.read_matrix(&part.memory)?;
                            for &j in &part_changed {
                                rows[j * d..(j + 1) * d].fill(0.0);
                            }
                            gpu.write(&part.memory.data, &rows)?;
                        }
                        changed.extend(part_changed.iter().map(|j| start + j));
                    }
                    dead.extend(
                        (0..usage.len())
                            .filter(|&j| usage[j] == 0)
                            .map(|j| start + j),
                    );
                    rare.extend(part_rare.iter().map(|j| start + j));
                    purged.extend(part_purged.iter().map(|j| start + j));
                }
                let reseeded = rare.iter().filter(|j| changed.contains(j)).count();
                let purged_changed = purged.iter().filter(|j| changed.contains(j)).count();
                let coherence = if grouped {
                    let all = gpu.matrix(n_atoms, d, &read_parts(gpu, &parts, |p| &p.atoms)?)?;
                    gpu.coherence(&all)?
                } else {
                    gpu.coherence(&parts[0].atoms)?
                };
                let coherence = coherence.iter().map(|&c| c as f64).sum::<f64>() / n_atoms as f64;
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
                let metrics = EpochMetrics {
                    epoch,
                    batches: sums.batches,
                    samples: sums.samples,
                    fvu: ratio(sums.residual, sums.variance),
                    relative_residual: sums.relative / sums.samples.max(1) as f64,
                    l0: sums.l0 / sums.samples.max(1) as f64,
                    dead_atoms: dead.len(),
                    rare_atoms: rare.len() - dead.len(),
                    reseeded,
                    duplicates: purged.len(),
                    purged: purged_changed,
                    coherence,
                    eval,
                    seconds: sums.seconds + hygiene_started.elapsed().as_secs_f64(),
                };
                log::info!(
                    "epoch {epoch}: FVU {:.4}, L0 {:.2}, {} dead and {} rare atoms re-seeded, {} \
                     duplicates purged, coherence {:.3}{}, {:.1} s",
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

impl TrainResult {
    /// Writes the run's outputs into `dir` (created if needed), each file atomically:
    /// `dictionary.safetensors`, `sae/` (SAELens `matching_pursuit`, see
    /// [`export::write_saelens`]), `trace.csv` (per batch), `epochs.csv` and `trace.svg`.
    pub fn write_outputs(&self, dir: &Path, names: &export::SaeLensNames) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        self.dictionary.save(dir.join(DICTIONARY_FILE))?;
        export::write_saelens(
            &dir.join("sae"),
            &self.dictionary,
            self.config.k,
            0.0,
            names,
        )?;
        let mut csv = String::from(
            "step,epoch,batch,samples,fvu,relative_residual,l0,unused_atoms,gemm_s,coding_s,update_s,host_s\n",
        );
        for b in &self.batches {
            csv += &format!(
                "{},{},{},{},{:.6},{:.6},{:.3},{},{:.4},{:.4},{:.4},{:.4}\n",
                b.step,
                b.epoch,
                b.batch,
                b.samples,
                b.fvu,
                b.relative_residual,
                b.l0,
                b.unused_atoms,
                b.gemm_s,
                b.coding_s,
                b.update_s,
                b.host_s
            );
        }
        export::write_csv(&dir.join("trace.csv"), &csv)?;
        let mut csv = String::from(
            "epoch,batches,samples,fvu,relative_residual,l0,dead_atoms,rare_atoms,reseeded,duplicates,purged,coherence,eval_fvu,eval_l0,seconds\n",
        );
        for e in &self.epochs {
            csv += &format!(
                "{},{},{},{:.6},{:.6},{:.3},{},{},{},{},{},{:.4},{},{},{:.2}\n",
                e.epoch,
                e.batches,
                e.samples,
                e.fvu,
                e.relative_residual,
                e.l0,
                e.dead_atoms,
                e.rare_atoms,
                e.reseeded,
                e.duplicates,
                e.purged,
                e.coherence,
                e.eval.map_or(String::new(), |s| format!("{:.6}", s.fvu)),
                e.eval.map_or(String::new(), |s| format!("{:.3}", s.l0)),
                e.seconds
            );
        }
        export::write_csv(&dir.join("epochs.csv"), &csv)?;
        let points: Vec<export::TracePoint> = self
            .batches
            .iter()
            .map(|b| export::TracePoint {
                step: b.step,
                epoch: b.epoch,
                fvu: b.fvu,
                unused_atoms: b.unused_atoms,
            })
            .collect();
        export::write_atomic(
            &dir.join("trace.svg"),
            export::trace_svg(&points).as_bytes(),
        )
    }
}

/// The dictionary's file name in an output folder.
pub const DICTIONARY_FILE: &str = "dictionary.safetensors";

/// Re-seeds the `flagged` atoms (unused, rare or duplicate) of `atoms` [K, d] by splitting the
/// atoms whose users carry the most residual, as the LBG algorithm splits codewords: for such an
/// atom a with users s (coefficient x_s, residual e_s), the top principal direction r of the e_s
/// separates the users into those with (e_s·r)·x_s > 0 and the rest; the flagged atom becomes the
/// sign-aligned mean of x_s·a + e_s (its E_Ω rows) over the first group, atom a the same over the
/// second. An atom that blends two true atoms has exactly this structure (its residuals lie on one
/// line, with opposite signs for the two groups), which no amount of KSVD updating separates
/// when k is the true sparsity. When no atom is left to split, the flagged atom takes the
/// normalised sample with the largest residual instead (KSVD-Box's rule), each sample once.
/// `codes` and `residual` [n, d] are one batch's, consistent with each other. Returns the atoms
/// changed.
pub(crate) fn split_atoms(
    atoms: &mut [f32],
    d: usize,
    codes: &crate::encode::SparseCodes,
    residual: &[f32],
    flagged: &[usize],
) -> Vec<usize> {
    let n_atoms = atoms.len() / d;
    let n = codes.n;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let e: Vec<f64> = residual.iter().map(|&v| v as f64).collect();
    let energy: Vec<f64> = e.chunks(d).map(|r| dot(r, r)).collect();
    let mut users: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n_atoms];
    for s in 0..n {
        for (j, x) in codes.row(s) {
            if j < n_atoms {
                users[j].push((s, x as f64));
            }
        }
    }
    let distortion: Vec<f64> = users
        .iter()
        .map(|u| u.iter().map(|&(s, _)| energy[s]).sum())
        .collect();
    let mut candidates: Vec<usize> = (0..n_atoms)
        .filter(|j| !flagged.contains(j) && users[*j].len() >= 2)
        .collect();
    candidates.sort_by(|&a, &b| distortion[b].total_cmp(&distortion[a]).then(a.cmp(&b)));
    let mut candidates = candidates.into_iter();
    let mut sample_taken = vec![false; n];
    let mut changed = Vec::new();
    // Samples are rebuilt (y = e + x·D) from the atoms the codes were made with.
    let original = atoms.to_vec();
    let unit = |v: Vec<f64>| -> Option<Vec<f64>> {
        let norm = dot(&v, &v).sqrt();
        (norm > 0.0 && norm.is_finite()).then(|| v.into_iter().map(|x| x / norm).collect())
    };
    for &target in flagged {
        let mut done = false;
        for source in candidates.by_ref() {
            if distortion[source] <= 0.0 {
                break;
            }
            let a: Vec<f64> = atoms[source * d..(source + 1) * d]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let us = &users[source];
            // Top principal direction of the users' residuals, by power iteration from the
            // largest one.
            let start = us
                .iter()
                .max_by(|p, q| energy[p.0].total_cmp(&energy[q.0]))
                .map(|&(s, _)| e[s * d..(s + 1) * d].to_vec());
            let Some(mut r) = start.and_then(unit) else {
                continue;
            };
            for _ in 0..30 {
                let mut w = vec![0.0; d];
                for &(s, _) in us {
                    let row = &e[s * d..(s + 1) * d];
                    let t = dot(row, &r);
                    w.iter_mut().zip(row).for_each(|(w, v)| *w += t * v);
                }
                match unit(w) {
                    Some(w) => r = w,
                    None => break,
                }
            }
            let (mut plus, mut minus) = (vec![0.0; d], vec![0.0; d]);
            let (mut n_plus, mut n_minus) = (0, 0);
            for &(s, x) in us {
                let row = &e[s * d..(s + 1) * d];
                let sign = x.signum();
                let (sum, count) = if dot(row, &r) * x > 0.0 {
                    (&mut plus, &mut n_plus)
                } else {
                    (&mut minus, &mut n_minus)
                };
                *count += 1;
                for c in 0..d {
                    sum[c] += sign * (x * a[c] + row[c]);
                }
            }
            if n_plus == 0 || n_minus == 0 {
                continue;
            }
            let (Some(plus), Some(minus)) = (unit(plus), unit(minus)) else {
                continue;
            };
            for c in 0..d {
                atoms[target * d + c] = plus[c] as f32;
                atoms[source * d + c] = minus[c] as f32;
            }
            changed.extend([target, source]);
            done = true;
            break;
        }
        if done {
            continue;
        }
        // Nothing to split: the worst-represented sample y = e + x·D, normalised.
        let worst = (0..n)
            .filter(|&s| !sample_taken[s] && energy[s] > 0.0)
            .max_by(|&p, &q| energy[p].total_cmp(&energy[q]).then(q.cmp(&p)));
        if let Some(s) = worst {
            let mut y: Vec<f64> = e[s * d..(s + 1) * d].to_vec();
            for (j, x) in codes.row(s) {
                if j < n_atoms {
                    for c in 0..d {
                        y[c] += x as f64 * original[j * d + c] as f64;
                    }
                }
            }
            if let Some(y) = unit(y) {
                for c in 0..d {
                    atoms[target * d + c] = y[c] as f32;
                }
                changed.push(target);
            }
            sample_taken[s] = true;
        }
    }
    changed.sort_unstable();
    changed.dedup();
    changed
}

/// Atoms to re-seed at an epoch's end: unused, or used fewer times than `fraction` of the mean.
pub(crate) fn rare_atoms(usage: &[u32], fraction: f64) -> Vec<usize> {
    let mean = usage.iter().map(|&u| u as f64).sum::<f64>() / usage.len().max(1) as f64;
    (0..usage.len())
        .filter(|&j| usage[j] == 0 || (usage[j] as f64) < fraction * mean)
        .collect()
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

/// Normalises a given dictionary, checking its shape and that no atom is zero or non-finite.
fn normalised_dictionary(atoms: &[f32], n_atoms: usize, d: usize) -> Result<Vec<f32>> {
    if atoms.len() != n_atoms * d {
        return Err(Error::DataLength {
            what: "initial dictionary".into(),
            rows: n_atoms,
            cols: d,
            expected: n_atoms * d,
            actual: atoms.len(),
        });
    }
    crate::encode::unit_rows("initial dictionary", atoms, d)
}

/// K distinct random rows of `source` (centred on `centre`), normalised. Zero rows and rows equal
/// to one already taken (after normalisation) are skipped; too few usable rows is an error.
pub fn init_from_samples(
    source: &dyn ActivationSource,
    n_atoms: usize,
    centre: Option<&[f32]>,
    seed: u64,
) -> Result<Vec<f32>> {
    let (rows, d) = (source.rows(), source.dim());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // A stream apart from the epochs' shuffle streams.
    rng.set_stream(u64::MAX);
    // A random sample of rows first; if too many are unusable, every other row in order.
    let first = rand::seq::index::sample(&mut rng, rows, rows.min(4 * n_atoms + 64)).into_vec();
    let taken: HashSet<usize> = first.iter().copied().collect();
    let rest = (0..rows).filter(|r| !taken.contains(r));
    let mut candidates = first.clone().into_iter().chain(rest);

    let mut atoms = Vec::with_capacity(n_atoms * d);
    let mut seen: HashSet<Vec<u32>> = HashSet::new();
    let mut buffer = Vec::new();
    while atoms.len() < n_atoms * d {
        let chunk: Vec<usize> = candidates.by_ref().take(4096).collect();
        if chunk.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "K = {n_atoms} atoms asked for, but {} has only {} distinct nonzero rows{}",
                source.name(),
                atoms.len() / d,
                if centre.is_some() {
                    " after centring"
                } else {
                    ""
                }
            )));
        }
        buffer.resize(chunk.len() * d, 0.0);
        source.gather(&chunk, &mut buffer)?;
        for row in buffer.chunks_exact_mut(d) {
            if let Some(mean) = centre {
                row.iter_mut().zip(mean).for_each(|(v, m)| *v -= m);
            }
            let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            if norm == 0.0 {
                continue;
            }
            let atom: Vec<f32> = row.iter().map(|&v| (v as f64 / norm) as f32).collect();
            if !seen.insert(atom.iter().map(|v| v.to_bits()).collect()) {
                continue;
            }
            atoms.extend_from_slice(&atom);
            if atoms.len() == n_atoms * d {
                break;
            }
        }
    }
    Ok(atoms)
}

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
/// [`crate::encode::Encoder::encode_prefix`]); 1 for a plain dictionary.
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
        let codes = encoder.encode_prefix(&batch.data, prefix)?;
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

/// A training checkpoint ([`CHECKPOINT_FILE`]) as read back: what [`Trainer::resume_from`]
/// continues from. Loading checks the format tag, the JSON metadata and every tensor's dtype,
/// shape and finiteness, so a damaged file is an error naming it, never a panic.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    config: TrainConfig,
    atoms: Vec<f32>,
    /// The atom memory [K, d].
    memory: Vec<f32>,
    d: usize,
    mean: Vec<f32>,
    epoch_usage: Vec<u32>,
    position: Position,
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
fn save_checkpoint(
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
    export::write_safetensors(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::SparseCodes;

    /// Atom 0 blends X = e₀ and Y = e₁ and serves both groups of samples; atom 1 is junk. Splitting
    /// atom 0 into the flagged atom 1 gives back X and Y.
    #[test]
    fn splitting_separates_a_blended_atom() {
        let d = 4;
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let mut atoms = vec![s, s, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let mut samples: Vec<[f32; 4]> = Vec::new();
        for i in 0..10 {
            let c = (1.0 + i as f32 / 10.0) * if i % 2 == 0 { 1.0 } else { -1.0 };
            samples.push([c, 0.0, 0.0, 0.0]);
            samples.push([0.0, 1.5 * c, 0.0, 0.0]);
        }
        let (mut values, mut residual) = (Vec::new(), Vec::new());
        for y in &samples {
            let x = y[0] * s + y[1] * s;
            values.push(x);
            residual.extend([y[0] - x * s, y[1] - x * s, y[2], y[3]]);
        }
        let n = samples.len();
        let codes = SparseCodes {
            n,
            k: 1,
            indices: vec![0; n],
            values,
            residual_energy: Vec::new(),
        };
        let changed = split_atoms(&mut atoms, d, &codes, &residual, &[1]);
        assert_eq!(changed, [0, 1]);
        let (a, b) = (&atoms[..4], &atoms[4..]);
        let along = |v: &[f32], axis: usize| v[axis].abs();
        assert!(
            (along(a, 0) > 0.999 && along(b, 1) > 0.999)
                || (along(a, 1) > 0.999 && along(b, 0) > 0.999),
            "{atoms:?}"
        );

        // Nothing to split (every other atom flagged too): the worst-represented sample.
        let mut atoms = vec![s, s, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let changed = split_atoms(&mut atoms, d, &codes, &residual, &[0, 1]);
        assert_eq!(changed, [0, 1]);
        // The two largest residuals are the ±1.9·Y-like and ±1.9·X-like samples: unit axes.
        for atom in atoms.chunks(d) {
            assert!(
                atom.iter().any(|v| (v.abs() - 1.0).abs() < 1e-6),
                "{atom:?}"
            );
        }
    }

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

    #[test]
    fn rare_atoms_are_unused_or_below_the_fraction() {
        // Mean use 50: 10 % of it is 5, 5 % is 2.5.
        assert_eq!(rare_atoms(&[0, 100, 4, 96], 0.1), [0, 2]);
        assert_eq!(rare_atoms(&[0, 100, 4, 96], 0.05), [0]);
        assert_eq!(rare_atoms(&[0, 100, 4, 96], 0.0), [0]);
        assert!(rare_atoms(&[], 0.05).is_empty());
    }
}
