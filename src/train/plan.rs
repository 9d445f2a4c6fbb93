//! What a run starts from: the groups and their shares of k, the batch size the device holds,
//! the state to start at (a checkpoint, or the data's statistics and an initial dictionary), and
//! each group's device state.

use std::path::PathBuf;

use crate::coding::CodingOptions;
use crate::data::{ActivationSource, Stats};
use crate::encode::Groups;
use crate::error::{Error, Result};
use crate::gpu::Gpu;

use super::checkpoint::{EpochSums, Position};
use super::init::normalised_dictionary;
use super::{init_from_samples, Checkpoint, Init, Part, TrainConfig, DEFAULT_BATCH};

/// The Matryoshka groups (one group of all atoms in a plain run) and each one's coding options
/// (its share of k).
pub(super) fn group_codings(config: &TrainConfig) -> Result<(Groups, Vec<CodingOptions>)> {
    let groups = match &config.groups {
        Some(groups) => groups.clone(),
        None => Groups::new(vec![config.atoms])?,
    };
    let codings = groups
        .split_k(config.k)?
        .into_iter()
        .map(|k| CodingOptions {
            k,
            ..config.coding()
        })
        .collect();
    Ok((groups, codings))
}

/// The batch size of a run on `rows` rows of dimension `d`: the configured one, evened out over
/// the rows, or the default lowered to what the device holds; an error when the configured one
/// does not fit. Also caps the atom memory at an epoch's span. Sets `config.batch_size`.
pub(super) fn resolve_batch(
    gpu: &Gpu,
    config: &mut TrainConfig,
    groups: &Groups,
    codings: &[CodingOptions],
    rows: usize,
    d: usize,
) -> Result<usize> {
    let n_atoms = config.atoms;
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
    Ok(batch_size)
}

/// Where a run starts, on the host.
pub(super) struct Start {
    /// Atoms [K, d].
    pub(super) atoms: Vec<f32>,
    /// Atom memory [K, d].
    pub(super) memory: Vec<f32>,
    /// The data mean.
    pub(super) mean: Vec<f32>,
    pub(super) position: Position,
    /// Per atom, its use in the epoch in progress.
    pub(super) epoch_usage: Vec<u32>,
}

/// The start of a run on `source` with `config` (batch size resolved): the `checkpoint` (with
/// its path) checked against the data and the configuration, or the data's statistics and an
/// initial dictionary.
pub(super) fn start(
    source: &dyn ActivationSource,
    config: &TrainConfig,
    checkpoint: Option<(&PathBuf, Checkpoint)>,
) -> Result<Start> {
    let (rows, d, n_atoms) = (source.rows(), source.dim(), config.atoms);
    if let Some((path, checkpoint)) = checkpoint {
        config.resumable_with(&checkpoint.config)?;
        if checkpoint.d != d || checkpoint.position.rows != rows {
            return Err(Error::ShapeMismatch {
                op: format!("resume from {} (checkpoint vs data)", path.display()),
                left: crate::error::shape(checkpoint.position.rows, checkpoint.d),
                right: crate::error::shape(rows, d),
            });
        }
        return Ok(Start {
            atoms: checkpoint.atoms,
            memory: checkpoint.memory,
            mean: checkpoint.mean,
            position: checkpoint.position,
            epoch_usage: checkpoint.epoch_usage,
        });
    }
    let batch_size = config.batch_size.unwrap_or(DEFAULT_BATCH);
    let stats = Stats::compute(source, batch_size)?;
    let mean = stats.mean_f32();
    let centre = config.center.then_some(mean.as_slice());
    let atoms = match &config.init {
        Init::Samples => init_from_samples(source, n_atoms, centre, config.seed)?,
        Init::Dictionary(atoms) => normalised_dictionary(atoms, n_atoms, d)?,
    };
    Ok(Start {
        atoms,
        memory: vec![0.0; n_atoms * d],
        mean,
        position: Position {
            rows,
            epoch: 0,
            batch: 0,
            step: 0,
            seconds: 0.0,
            sums: EpochSums::default(),
            batches: Vec::new(),
            epochs: Vec::new(),
        },
        epoch_usage: vec![0u32; n_atoms],
    })
}

/// One part per group (a plain run is one group): its atoms and memory (rows of `atoms` and
/// `memory` [K, d]), Gram scratch and step buffers for `batch_size` samples, its share of k.
pub(super) fn allocate_parts(
    gpu: &Gpu,
    groups: &Groups,
    codings: &[CodingOptions],
    atoms: &[f32],
    memory: &[f32],
    batch_size: usize,
) -> Result<Vec<Part>> {
    let d = atoms.len() / groups.n_atoms().max(1);
    (0..groups.len())
        .map(|g| {
            let range = groups.range(g);
            let (rows, words) = (range.len(), range.start * d..range.end * d);
            Ok(Part {
                atoms: gpu.matrix(rows, d, &atoms[words.clone()])?,
                memory: gpu.matrix(rows, d, &memory[words])?,
                gram: gpu.zeros(rows, rows)?,
                full: gpu.step_buffers(batch_size, d, codings[g].k, rows)?,
                short: None,
                coding: codings[g],
                range,
            })
        })
        .collect()
}
