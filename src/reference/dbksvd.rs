//! The whole DB-KSVD algorithm in f64 on the reference kernels: the oracle for the trainer.
//!
//! ```text
//! for each epoch e:
//!     for each batch Y_b of the epoch's shuffled order (same order as the trainer):
//!       R = Y_b − μ
//!       for each Matryoshka group g in order (one group of all atoms in a plain run):
//!         X_g  = OMP(R, D_g, k_g)                         reference::omp
//!         for each atom batch of the step's seeded atom order (A atoms, Jacobi inside):
//!             d_j, x_j[ω_j] = top singular pair of E_Ω    reference::power (converged;
//!                             with the atom memory when γ > 0)
//!         R = R − X_g·D_g (after the update, rounded to f32 as the trainer reads it back)
//!         usage += atoms used by X_g
//!     within each group: flag atoms with usage 0 or below rare_atom_fraction of the mean, and near-duplicates
//!     (|cos| > threshold with a more used atom); re-seed them by splitting the atoms whose
//!     users carry the most residual (reference::split), on the epoch's last batch
//! ```
//!
//! No hygiene after the last epoch (as the trainer). The power method runs to convergence here, so compare against a trainer run with enough
//! power iterations.

use super::omp;
use super::power::KsvdState;
use crate::encode::{CodingOptions, Groups};
use crate::gpu::power::atom_order;
use crate::train::{group_seed, update_seed, TrainConfig};

/// The state of a reference run: atoms [K, d] in f64 and where it stands.
#[derive(Clone, Debug)]
pub struct ReferenceRun {
    /// The configuration (batch size as the trainer evens it out).
    pub config: TrainConfig,
    /// Dimension d.
    pub d: usize,
    /// Atoms [K, d].
    pub atoms: Vec<f64>,
    /// The mean subtracted before coding (zeros without centring).
    pub mean: Vec<f32>,
    /// The data mean ȳ of the FVU's denominator Σ‖y − ȳ‖² (equal to `mean` when centring).
    pub data_mean: Vec<f32>,
    /// The atom memory [K, d] (see [`crate::gpu::Gpu::ksvd_update_with_memory`]).
    pub memory: Vec<f64>,
    /// Updates done.
    pub step: usize,
}

/// What one reference epoch reports.
#[derive(Clone, Debug, Default)]
pub struct ReferenceEpoch {
    /// Σ‖y − ŷ‖² / Σ‖y − ȳ‖² over the epoch's batches (codes before each update).
    pub fvu: f64,
    /// Atoms unused, or rarely used, in the epoch (re-seeded).
    pub dead: Vec<usize>,
    /// Atoms re-seeded as near-duplicates.
    pub purged: Vec<usize>,
}

impl ReferenceRun {
    /// A run from unit `atoms` [K, d] (f32, as the trainer starts) on data with mean
    /// `data_mean`, subtracted before coding when the configuration centres.
    pub fn new(config: TrainConfig, atoms: &[f32], d: usize, data_mean: Vec<f32>) -> Self {
        let mean = if config.center {
            data_mean.clone()
        } else {
            vec![0.0; data_mean.len()]
        };
        Self {
            config,
            d,
            atoms: atoms.iter().map(|&v| v as f64).collect(),
            memory: vec![0.0; atoms.len()],
            mean,
            data_mean,
            step: 0,
        }
    }

    /// One epoch over `samples` [n, d] (f32, as read): for each batch, each group codes what
    /// the groups before it left and updates its atoms; then hygiene, except after the last
    /// epoch.
    pub fn epoch(&mut self, samples: &[f32], epoch: usize) -> ReferenceEpoch {
        let n = samples.len() / self.d;
        let plan = self.epoch_plan(n);
        let order = plan
            .config
            .order()
            .epoch(n, epoch as u64)
            .expect("valid order");
        let mut usage = vec![0u64; self.config.atoms];
        let (mut residual, mut variance) = (0.0, 0.0);
        // Each group's state on the epoch's last batch, for hygiene.
        let mut last: Vec<KsvdState> = Vec::new();
        for rows in order {
            let mut y = self.centred(samples, &rows, &mut variance);
            last.clear();
            // Group by group: code what the groups before left, update, pass on the residual
            // after the update (in f32, as the trainer reads it back).
            for g in 0..plan.groups.len() {
                let (state, energies) = self.code_and_update(&plan, g, &y, &mut usage);
                if g + 1 == plan.groups.len() {
                    energies.iter().for_each(|e| residual += e);
                }
                y = state.residual().iter().map(|&v| v as f32).collect();
                last.push(state);
            }
            self.step += 1;
        }
        let mut report = ReferenceEpoch {
            fvu: if variance > 0.0 {
                residual / variance
            } else {
                0.0
            },
            ..Default::default()
        };
        if epoch + 1 < self.config.epochs && !last.is_empty() {
            self.hygiene(&plan.groups, last, &usage, &mut report);
        }
        report
    }

    /// The epoch's batch size (evened out as the trainer does), groups with their shares of
    /// k, and memory weight.
    fn epoch_plan(&self, n: usize) -> EpochPlan {
        let mut config = self.config.clone();
        // The batch the trainer uses (the default when none is set: the reference has no device
        // limits to lower it), evened out as the trainer does.
        let batch = config.batch_size.unwrap_or(crate::train::DEFAULT_BATCH);
        let batch = n.div_ceil(n.div_ceil(batch));
        config.batch_size = Some(batch);
        // Matryoshka groups, each with its share of k; a plain run is one group.
        let groups = match &config.groups {
            Some(groups) => groups.clone(),
            None => Groups::new(vec![config.atoms]).expect("K ≥ 1"),
        };
        let shares = groups.split_k(config.k).expect("validated configuration");
        // As the trainer: the memory spans at most an epoch.
        let longest = 1.0 - 1.0 / n.div_ceil(batch) as f32;
        let gamma = self.config.atom_memory.min(longest) as f64;
        EpochPlan {
            config,
            groups,
            shares,
            gamma,
        }
    }

    /// The batch's `rows` centred in f32, as the trainer's host does; their variance about the
    /// data mean is added to `variance`.
    fn centred(&self, samples: &[f32], rows: &[usize], variance: &mut f64) -> Vec<f32> {
        let d = self.d;
        let mut y = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            y.extend(
                samples[r * d..(r + 1) * d]
                    .iter()
                    .zip(&self.mean)
                    .map(|(v, m)| v - m),
            );
        }
        for &r in rows {
            *variance += samples[r * d..(r + 1) * d]
                .iter()
                .zip(&self.data_mean)
                .map(|(&v, &m)| (v as f64 - m as f64).powi(2))
                .sum::<f64>();
        }
        y
    }

    /// Group `g` codes `y` with its share of k and updates its atoms (counting their use);
    /// returns its state after the update and each sample's residual energy as coded.
    fn code_and_update(
        &mut self,
        plan: &EpochPlan,
        g: usize,
        y: &[f32],
        usage: &mut [u64],
    ) -> (KsvdState, Vec<f64>) {
        let d = self.d;
        let range = plan.groups.range(g);
        let size = range.len();
        let words = range.start * d..range.end * d;
        let coding = CodingOptions {
            k: plan.shares[g],
            ..self.config.coding()
        };
        let atoms_f32: Vec<f32> = self.atoms[words.clone()]
            .iter()
            .map(|&v| v as f32)
            .collect();
        let codes = omp::encode(&atoms_f32, size, y, d, &coding);
        let (k, n) = (coding.k, y.len() / d);
        let mut indices = vec![-1i32; n * k];
        let mut values = vec![0.0f64; n * k];
        for (s, code) in codes.iter().enumerate() {
            for (t, (&j, &v)) in code.indices.iter().zip(&code.values).enumerate() {
                indices[s * k + t] = j as i32;
                values[s * k + t] = v;
            }
        }
        let mut state = KsvdState {
            d,
            atoms: self.atoms[words.clone()].to_vec(),
            samples: y.iter().map(|&v| v as f64).collect(),
            k,
            indices,
            values,
        };
        let seed = update_seed(group_seed(self.config.seed, g), self.step);
        let batches: Vec<Vec<usize>> = atom_order(size, seed)
            .chunks(self.config.atom_batch.clamp(1, size))
            .map(|c| c.iter().map(|&j| j as usize).collect())
            .collect();
        let used = state.update_with_memory(&batches, &mut self.memory[words.clone()], plan.gamma);
        for (u, used) in usage[range].iter_mut().zip(used) {
            *u += used as u64;
        }
        self.atoms[words].copy_from_slice(&state.atoms);
        (state, codes.iter().map(|c| c.residual_energy).collect())
    }

    /// Epoch-end hygiene within each group on the epoch's last batch: rare and duplicate atoms
    /// re-seeded by [`split_atoms`](super::split::split_atoms), their memory cleared.
    fn hygiene(
        &mut self,
        groups: &Groups,
        last: Vec<KsvdState>,
        usage: &[u64],
        report: &mut ReferenceEpoch,
    ) {
        let d = self.d;
        for (g, mut state) in last.into_iter().enumerate() {
            let range = groups.range(g);
            let (start, size) = (range.start, range.len());
            let usage = &usage[range.clone()];
            let usage32: Vec<u32> = usage
                .iter()
                .map(|&u| u.min(u32::MAX as u64) as u32)
                .collect();
            let dead = rare_atoms(&usage32, self.config.rare_atom_fraction);
            let purged: Vec<usize> = super::reduce::duplicate_atoms(
                &state.atoms,
                d,
                usage,
                self.config.duplicate_threshold as f64,
            )
            .into_iter()
            .filter(|j| !dead.contains(j))
            .collect();
            let mut flagged: Vec<usize> = dead.iter().chain(&purged).copied().collect();
            flagged.sort_unstable();
            if !flagged.is_empty() {
                for j in super::split::split_atoms(&mut state, &flagged) {
                    self.memory[(start + j) * d..(start + j + 1) * d].fill(0.0);
                }
            }
            self.atoms[start * d..(start + size) * d].copy_from_slice(&state.atoms);
            report.dead.extend(dead.iter().map(|j| start + j));
            report.purged.extend(purged.iter().map(|j| start + j));
        }
    }
}

/// What an epoch of the reference runs with.
struct EpochPlan {
    /// The configuration with the batch size evened out.
    config: TrainConfig,
    groups: Groups,
    /// Each group's share of k.
    shares: Vec<usize>,
    /// The atom memory's weight γ, at most an epoch's span.
    gamma: f64,
}

/// Atoms to re-seed: unused, or used fewer times than `fraction` of the mean use.
fn rare_atoms(usage: &[u32], fraction: f64) -> Vec<usize> {
    let mean = usage.iter().map(|&u| u as f64).sum::<f64>() / usage.len() as f64;
    (0..usage.len())
        .filter(|&j| usage[j] == 0 || (usage[j] as f64) < fraction * mean)
        .collect()
}
