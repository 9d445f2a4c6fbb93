//! What defines a training run: [`TrainConfig`] and how the dictionary starts ([`Init`]).

use serde::{Deserialize, Serialize};

use std::time::Duration;

use crate::data::{BatchOrder, Shuffle};
use crate::encode::{Coder, CodingOptions, GramPrecision, Groups};
use crate::error::{Error, Result};
use crate::gpu::UpdateOptions;

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
///
/// Built with [`TrainConfig::new`] and the `with_*` setters (the fields stay public for reading
/// and for code that sets them one by one):
///
/// ```
/// let config = dbksvd::TrainConfig::new(1536, 32).with_epochs(4).with_batch_size(8192);
/// assert_eq!((config.atoms, config.epochs, config.batch_size), (1536, 4, Some(8192)));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TrainConfig {
    /// Atoms K.
    pub atoms: usize,
    /// Most nonzeros per sample k.
    pub k: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per batch B; `None` (the default) picks the largest batch up to
    /// [`DEFAULT_BATCH`] that the device fits (see [`Gpu::max_train_batch`](crate::gpu::Gpu::max_train_batch)). A batch the device
    /// cannot hold is an [`Error::ExceedsLimit`] naming the largest that fits. Training evens B
    /// out to B' = ceil(N / ceil(N / B)), so every batch but one has B' rows and that one is short
    /// by less than the number of batches; the result's configuration records B'.
    pub batch_size: Option<usize>,
    /// Atoms updated in parallel A, at most K. Default [`DEFAULT_ATOM_BATCH`] (or K if smaller).
    pub atom_batch: usize,
    /// Power iterations per atom update p.
    pub power_iterations: usize,
    /// Weight γ ∈ [0, 1) of each atom's memory of earlier batches in its update (see
    /// [`Gpu::ksvd_update_with_memory`](crate::gpu::Gpu::ksvd_update_with_memory)): the atom follows the users of about 1/(1 − γ)
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
    /// that the device fits, A = min(128, K), p = 1, atom memory γ = 0.8, MP with refit, sample init,
    /// centring, seed 0, window 16, duplicates above |cos| 0.99 purged.
    pub fn new(atoms: usize, k: usize) -> Self {
        let update = UpdateOptions::default();
        Self {
            atoms,
            k,
            epochs: 10,
            batch_size: None,
            atom_batch: DEFAULT_ATOM_BATCH.min(atoms.max(1)),
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

    with_setters! {
        with_epochs => epochs: usize,
        with_atom_batch => atom_batch: usize,
        with_power_iterations => power_iterations: usize,
        with_atom_memory => atom_memory: f32,
        with_coder => coder: Coder,
        with_gram => gram: GramPrecision,
        with_init => init: Init,
        with_center => center: bool,
        with_seed => seed: u64,
        with_shuffle_window => shuffle_window: usize,
        with_duplicate_threshold => duplicate_threshold: f32,
        with_rare_atom_fraction => rare_atom_fraction: f64,
        with_profile => profile: bool,
    }

    with_setters! { option
        with_batch_size => batch_size: usize,
        with_groups => groups: Groups,
        with_time_limit => time_limit: Duration,
        with_tolerance => tolerance: f64,
        with_checkpoint_every => checkpoint_every: usize,
    }

    /// Checks every field on its own (the data's dimension is checked by [`Trainer::fit`](super::Trainer::fit)).
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
    pub(super) fn resumable_with(&self, other: &TrainConfig) -> Result<()> {
        const FREE: [&str; 5] = [
            "epochs",
            "time_limit",
            "tolerance",
            "checkpoint_every",
            "profile",
        ];
        let as_map = |c: &TrainConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Err(Error::Internal(
                "a configuration is not a JSON object".into(),
            )),
            Err(source) => Err(Error::Json {
                what: "the training configuration".into(),
                source,
            }),
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

/// The trainer's atom batch A (clamped to K). Larger than [`UpdateOptions`]'s 32, which was
/// chosen for one update from scratch (γ = 0), where the atoms of a batch interfere: with the
/// atom memory each update moves an atom less, and the held-out FVU did not change from A = 32
/// to 256 while the update's sequential rounds fell K/A-fold. Measured on lavapipe, 3 epochs
/// of MiniLM rows 0..28 672 (K = 1536, k = 32), held-out FVU by OMP codes, seeds 0 and 1:
/// A = 32 0.1050 / 0.1051, 64 0.1047 / 0.1050, 128 0.1048 / 0.1048, 256 0.1047 / 0.1048; the
/// main command (K = 512, k = 16, 10 epochs), training FVU, seeds 0, 1, 2: A = 32 0.1463 /
/// 0.1457 / 0.1460, A = 128 0.1466 / 0.1456 / 0.1457, A = 256 0.1465 / 0.1457 / 0.1460.
/// One epoch's update took 3.41 s at A = 32 and 2.37 s at 128 (30 % and 22 % of the epoch).
/// Not 256, though its FVU was the same and its epoch's update 0.42–0.78× that of 128
/// (`ATOM_BATCH=… cargo bench --bench train`, three alternated pairs): at the paper's size
/// (`dbksvd bench --dim 2304 --atoms 16384 --k 64 --batch 4096 --phases update`, alternated)
/// its update took 25.2 against 10.0 s and 15.7 against 13.4 s (profiled, 18.7 against 23.4).
pub const DEFAULT_ATOM_BATCH: usize = 128;
