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
//!     users carry the most residual (split_atoms below), on the epoch's last batch
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

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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
    /// re-seeded by [`split_atoms`], their memory cleared.
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
                for j in split_atoms(&mut state, &flagged) {
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

/// `v / ‖v‖`, or `None` for a zero or non-finite norm.
fn unit(v: Vec<f64>) -> Option<Vec<f64>> {
    let norm = dot(&v, &v).sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| v.into_iter().map(|x| x / norm).collect())
}

/// Re-seeds the `flagged` atoms (ascending) of `state` from its codes and residual; returns the
/// atoms changed, ascending. The rule, written here apart from the trainer's:
///
/// 1. Rank the other atoms with at least two users by their users' residual energy Σ‖e_s‖²,
///    most first (ties: lower index); each is tried at most once, in that order.
/// 2. For a flagged atom, take the next ranked atom a with positive energy: r = the top
///    principal direction of its users' residuals (30 power steps from the most energetic
///    one). Users with (e_s·r)·x_s > 0 form one group, the rest the other; the flagged atom
///    becomes the unit mean of sign(x_s)·(x_s·a + e_s) over the first group, a the same over
///    the second. An atom whose users all fall in one group, or whose residuals are zero, is
///    skipped.
/// 3. When no ranked atom is left, the flagged atom becomes the unit sample y_s = e_s + x_s·D
///    (atoms as coded) with the largest ‖e_s‖² not yet taken (ties: lower index).
fn split_atoms(state: &mut KsvdState, flagged: &[usize]) -> Vec<usize> {
    let (d, n) = (state.d, state.n_samples());
    let coded_atoms = state.atoms.clone();
    let e = state.residual();
    let row = |s: usize| &e[s * d..(s + 1) * d];
    let energy: Vec<f64> = (0..n).map(|s| dot(row(s), row(s))).collect();
    // Per atom: (sample, coefficient) of its users.
    let users: Vec<Vec<(usize, f64)>> = state
        .users()
        .into_iter()
        .map(|u| {
            u.into_iter()
                .map(|(s, t)| (s, state.values[s * state.k + t]))
                .collect()
        })
        .collect();
    let load: Vec<f64> = users
        .iter()
        .map(|u| u.iter().map(|&(s, _)| energy[s]).sum())
        .collect();
    let mut ranked: Vec<usize> = (0..users.len())
        .filter(|j| !flagged.contains(j) && users[*j].len() >= 2)
        .collect();
    ranked.sort_by(|&a, &b| load[b].total_cmp(&load[a]).then(a.cmp(&b)));
    let mut ranked = ranked.into_iter();
    let mut taken = vec![false; n];
    let mut changed = Vec::new();
    'flagged: for &target in flagged {
        while let Some(source) = ranked.next() {
            if load[source] <= 0.0 {
                // The rest carry no residual either.
                ranked = Vec::new().into_iter();
                break;
            }
            let a = &coded_atoms[source * d..(source + 1) * d];
            let Some((plus, minus)) = split(&e, d, &energy, &users[source], a) else {
                continue;
            };
            state.atoms[target * d..(target + 1) * d].copy_from_slice(&plus);
            state.atoms[source * d..(source + 1) * d].copy_from_slice(&minus);
            changed.extend([target, source]);
            continue 'flagged;
        }
        let worst = (0..n).filter(|&s| !taken[s] && energy[s] > 0.0).fold(
            None,
            |best: Option<usize>, s| match best {
                Some(b) if energy[b] >= energy[s] => Some(b),
                _ => Some(s),
            },
        );
        if let Some(s) = worst {
            taken[s] = true;
            if let Some(y) = unit(sample(state, row(s), s, &coded_atoms)) {
                state.atoms[target * d..(target + 1) * d].copy_from_slice(&y);
                changed.push(target);
            }
        }
    }
    changed.sort_unstable();
    changed.dedup();
    changed
}

/// Step 2 of [`split_atoms`] for one atom `a` and its `users` (sample, coefficient): the two
/// unit halves, or `None` when the direction is undefined or one side is empty.
fn split(
    e: &[f64],
    d: usize,
    energy: &[f64],
    users: &[(usize, f64)],
    a: &[f64],
) -> Option<(Vec<f64>, Vec<f64>)> {
    let row = |s: usize| &e[s * d..(s + 1) * d];
    // r: the top principal direction of the users' residuals, from the most energetic one.
    let most = users
        .iter()
        .max_by(|p, q| energy[p.0].total_cmp(&energy[q.0]))
        .map(|&(s, _)| row(s).to_vec());
    let mut r = unit(most?)?;
    for _ in 0..30 {
        let mut w = vec![0.0; d];
        for &(s, _) in users {
            let t = dot(row(s), &r);
            w.iter_mut().zip(row(s)).for_each(|(w, v)| *w += t * v);
        }
        match unit(w) {
            Some(w) => r = w,
            None => break,
        }
    }
    let (mut plus, mut minus) = (vec![0.0; d], vec![0.0; d]);
    let (mut n_plus, mut n_minus) = (0, 0);
    for &(s, x) in users {
        let first = dot(row(s), &r) * x > 0.0;
        let (sum, count) = if first {
            (&mut plus, &mut n_plus)
        } else {
            (&mut minus, &mut n_minus)
        };
        *count += 1;
        for c in 0..d {
            sum[c] += x.signum() * (x * a[c] + row(s)[c]);
        }
    }
    if n_plus == 0 || n_minus == 0 {
        return None;
    }
    Some((unit(plus)?, unit(minus)?))
}

/// Sample `s` rebuilt as y = e_s + x_s·D from its residual row `e_s` and the atoms it was coded
/// with.
fn sample(state: &KsvdState, e_s: &[f64], s: usize, coded_atoms: &[f64]) -> Vec<f64> {
    let d = state.d;
    let mut y = e_s.to_vec();
    for t in 0..state.k {
        let j = state.indices[s * state.k + t];
        if j >= 0 {
            let x = state.values[s * state.k + t];
            let atom = &coded_atoms[j as usize * d..(j as usize + 1) * d];
            y.iter_mut().zip(atom).for_each(|(y, a)| *y += x * a);
        }
    }
    y
}
