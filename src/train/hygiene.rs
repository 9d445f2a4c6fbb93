//! Atom hygiene at an epoch's end: which atoms are rare, and re-seeding them by splitting the
//! atoms whose users carry the most residual.

use crate::error::Result;
use crate::gpu::Gpu;

use super::{Part, TrainConfig};

/// What an epoch's hygiene found and did, as atom indices in the whole dictionary.
pub(super) struct Hygiene {
    /// Atoms unused in the epoch.
    pub(super) dead: Vec<usize>,
    /// Atoms unused or used less than the rare fraction of the mean (dead included).
    pub(super) rare: Vec<usize>,
    /// Atoms that duplicate a more used one (not rare).
    pub(super) purged: Vec<usize>,
    /// Atoms given new values (re-seeded ones and the atoms split for them).
    pub(super) changed: Vec<usize>,
}

/// Flags each group's rare atoms and near-duplicates (`epoch_usage` the epoch's use of every
/// atom) and, when `reseed` (every epoch but the last: freshly split atoms would be returned
/// untrained), re-seeds them on the host from the group's last batch of the epoch (its short
/// buffers when `last_was_short`), clearing their atom memory.
pub(super) fn epoch_end_hygiene(
    gpu: &Gpu,
    parts: &mut [Part],
    epoch_usage: &[u32],
    config: &TrainConfig,
    reseed: bool,
    last_was_short: bool,
) -> Result<Hygiene> {
    let (mut dead, mut rare, mut purged, mut changed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for part in parts.iter_mut() {
        let (start, d) = (part.range.start, part.atoms.cols());
        let usage = &epoch_usage[part.range.clone()];
        let part_rare = rare_atoms(usage, config.rare_atom_fraction);
        let part_purged: Vec<usize> = gpu
            .duplicate_atoms(&part.atoms, usage, config.duplicate_threshold)?
            .into_iter()
            .filter(|j| !part_rare.contains(j))
            .collect();
        let mut flagged: Vec<usize> = part_rare.iter().chain(&part_purged).copied().collect();
        flagged.sort_unstable();
        if !flagged.is_empty() && reseed {
            // On the host: the group's atoms, and the residual and codes of its epoch's last
            // batch.
            let last = match (&mut part.short, last_was_short) {
                (Some(short), true) => short.coded(),
                _ => part.full.coded(),
            };
            let (codes, residual) = gpu.read_codes_and_residual(last)?;
            let mut host = gpu.read_matrix(&part.atoms)?;
            let part_changed = split_atoms(&mut host, d, &codes, &residual, &flagged);
            gpu.write(&part.atoms.data, &host)?;
            // A re-seeded atom starts without memory: its old users are not its new ones.
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
    Ok(Hygiene {
        dead,
        rare,
        purged,
        changed,
    })
}

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
fn split_atoms(
    atoms: &mut [f32],
    d: usize,
    codes: &crate::encode::SparseCodes,
    residual: &[f32],
    flagged: &[usize],
) -> Vec<usize> {
    let batch = Batch::new(atoms.len() / d, d, codes, residual);
    let mut candidates: Vec<usize> = (0..batch.users.len())
        .filter(|j| !flagged.contains(j) && batch.users[*j].len() >= 2)
        .collect();
    let distortion = &batch.distortion;
    candidates.sort_by(|&a, &b| distortion[b].total_cmp(&distortion[a]).then(a.cmp(&b)));
    let mut candidates = candidates.into_iter();
    let mut sample_taken = vec![false; codes.n];
    let mut changed = Vec::new();
    // Samples are rebuilt (y = e + x·D) from the atoms the codes were made with.
    let original = atoms.to_vec();
    for &target in flagged {
        let split = candidates
            .by_ref()
            .take_while(|&source| distortion[source] > 0.0)
            .find_map(|source| Some((source, batch.split(&atoms[source * d..][..d], source)?)));
        if let Some((source, (plus, minus))) = split {
            for (c, (plus, minus)) in plus.iter().zip(&minus).enumerate() {
                atoms[target * d + c] = *plus as f32;
                atoms[source * d + c] = *minus as f32;
            }
            changed.extend([target, source]);
            continue;
        }
        // Nothing to split: the worst-represented sample y = e + x·D, normalised.
        if let Some(s) = batch.worst_sample(&sample_taken) {
            if let Some(y) = unit(batch.sample(s, codes, &original)) {
                for (c, v) in y.iter().enumerate() {
                    atoms[target * d + c] = *v as f32;
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

/// One batch's residual and codes, seen per atom.
struct Batch {
    d: usize,
    /// The residual [n, d] in f64.
    e: Vec<f64>,
    /// ‖e_s‖² per sample.
    energy: Vec<f64>,
    /// Per atom, its users (sample, coefficient).
    users: Vec<Vec<(usize, f64)>>,
    /// Per atom, the residual energy of its users.
    distortion: Vec<f64>,
}

impl Batch {
    fn new(n_atoms: usize, d: usize, codes: &crate::encode::SparseCodes, residual: &[f32]) -> Self {
        let e: Vec<f64> = residual.iter().map(|&v| v as f64).collect();
        let energy: Vec<f64> = e.chunks(d).map(|r| dot(r, r)).collect();
        let mut users: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n_atoms];
        for s in 0..codes.n {
            for (j, x) in codes.row(s) {
                if j < n_atoms {
                    users[j].push((s, x as f64));
                }
            }
        }
        let distortion = users
            .iter()
            .map(|u| u.iter().map(|&(s, _)| energy[s]).sum())
            .collect();
        Self {
            d,
            e,
            energy,
            users,
            distortion,
        }
    }

    fn row(&self, s: usize) -> &[f64] {
        &self.e[s * self.d..(s + 1) * self.d]
    }

    /// Atom `source` (`atom`) split in two along the top principal direction of its users'
    /// residuals: each half the normalised signed mean of the samples (x·a + e) on its side.
    /// None when the direction is undefined or one side is empty.
    fn split(&self, atom: &[f32], source: usize) -> Option<(Vec<f64>, Vec<f64>)> {
        let users = &self.users[source];
        // Power iteration from the largest residual.
        let start = users
            .iter()
            .max_by(|p, q| self.energy[p.0].total_cmp(&self.energy[q.0]))
            .map(|&(s, _)| self.row(s).to_vec());
        let mut r = unit(start?)?;
        for _ in 0..30 {
            let mut w = vec![0.0; self.d];
            for &(s, _) in users {
                let row = self.row(s);
                let t = dot(row, &r);
                w.iter_mut().zip(row).for_each(|(w, v)| *w += t * v);
            }
            match unit(w) {
                Some(w) => r = w,
                None => break,
            }
        }
        let (mut plus, mut minus) = (vec![0.0; self.d], vec![0.0; self.d]);
        let (mut n_plus, mut n_minus) = (0, 0);
        for &(s, x) in users {
            let row = self.row(s);
            let (sum, count) = if dot(row, &r) * x > 0.0 {
                (&mut plus, &mut n_plus)
            } else {
                (&mut minus, &mut n_minus)
            };
            *count += 1;
            for ((sum, &a), &e) in sum.iter_mut().zip(atom).zip(row) {
                *sum += x.signum() * (x * a as f64 + e);
            }
        }
        if n_plus == 0 || n_minus == 0 {
            return None;
        }
        Some((unit(plus)?, unit(minus)?))
    }

    /// The sample with the most residual energy not yet taken (the lowest index on ties).
    fn worst_sample(&self, taken: &[bool]) -> Option<usize> {
        (0..taken.len())
            .filter(|&s| !taken[s] && self.energy[s] > 0.0)
            .max_by(|&p, &q| self.energy[p].total_cmp(&self.energy[q]).then(q.cmp(&p)))
    }

    /// Sample `s` rebuilt as e + x·D from the atoms its codes were made with.
    fn sample(&self, s: usize, codes: &crate::encode::SparseCodes, atoms: &[f32]) -> Vec<f64> {
        let mut y = self.row(s).to_vec();
        for (j, x) in codes.row(s) {
            if j < self.users.len() {
                let atom = &atoms[j * self.d..(j + 1) * self.d];
                y.iter_mut()
                    .zip(atom)
                    .for_each(|(y, &a)| *y += x as f64 * a as f64);
            }
        }
        y
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v` normalised, if its norm is positive and finite.
fn unit(v: Vec<f64>) -> Option<Vec<f64>> {
    let norm = dot(&v, &v).sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| v.into_iter().map(|x| x / norm).collect())
}

/// Atoms to re-seed at an epoch's end: unused, or used fewer times than `fraction` of the mean.
fn rare_atoms(usage: &[u32], fraction: f64) -> Vec<usize> {
    let mean = usage.iter().map(|&u| u as f64).sum::<f64>() / usage.len().max(1) as f64;
    (0..usage.len())
        .filter(|&j| usage[j] == 0 || (usage[j] as f64) < fraction * mean)
        .collect()
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

    #[test]
    fn rare_atoms_are_unused_or_below_the_fraction() {
        // Mean use 50: 10 % of it is 5, 5 % is 2.5.
        assert_eq!(rare_atoms(&[0, 100, 4, 96], 0.1), [0, 2]);
        assert_eq!(rare_atoms(&[0, 100, 4, 96], 0.05), [0]);
        assert_eq!(rare_atoms(&[0, 100, 4, 96], 0.0), [0]);
        assert!(rare_atoms(&[], 0.05).is_empty());
    }
}
