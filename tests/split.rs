//! The GPU atom split (`Gpu::split_atoms`, shaders/split.wgsl) against its f64 twin
//! (`reference::split`), on awkward shapes and on cases built to take each branch of the rule:
//! a split, a split that fails (every user on one side) so the next atom is tried, the
//! fall-back to the worst-represented samples, and an atom with more users than one chunk.

mod common;

use dbksvd::encode::SparseCodes;
use dbksvd::gpu::Gpu;
use dbksvd::reference::power::KsvdState;
use dbksvd::reference::split::split_atoms;

/// A coded batch: atoms [K, d] (unit rows), codes, and samples built as y = e + x·D from a
/// chosen residual, so a case can plant the structure it needs.
struct Case {
    d: usize,
    atoms: Vec<f32>,
    samples: Vec<f32>,
    codes: SparseCodes,
}

impl Case {
    /// Random unit atoms, k random distinct atoms per sample (the last slot of every third
    /// sample empty), random coefficients and residual rows.
    fn random(n_atoms: usize, d: usize, n: usize, k: usize, seed: u64) -> Self {
        let atoms = unit_rows(common::uniform(n_atoms * d, seed), d);
        let picks = common::uniform(n * k, seed + 1);
        let mut indices = Vec::with_capacity(n * k);
        for s in 0..n {
            let mut row: Vec<i32> = Vec::new();
            for t in 0..k {
                let mut j = ((picks[s * k + t] + 1.0) / 2.0 * n_atoms as f32) as usize % n_atoms;
                while row.contains(&(j as i32)) {
                    j = (j + 1) % n_atoms;
                }
                row.push(if t == k - 1 && s % 3 == 0 {
                    -1
                } else {
                    j as i32
                });
            }
            indices.extend(row);
        }
        let values: Vec<f32> = common::uniform(n * k, seed + 2)
            .into_iter()
            .zip(&indices)
            .map(|(v, &j)| if j < 0 { 0.0 } else { v + v.signum() * 0.5 })
            .collect();
        let residual = common::uniform(n * d, seed + 3);
        Self::from_residual(d, atoms, indices, values, k, &residual)
    }

    fn from_residual(
        d: usize,
        atoms: Vec<f32>,
        indices: Vec<i32>,
        values: Vec<f32>,
        k: usize,
        residual: &[f32],
    ) -> Self {
        let n = residual.len() / d;
        let mut samples = residual.to_vec();
        for s in 0..n {
            for t in 0..k {
                let j = indices[s * k + t];
                if j >= 0 {
                    let x = values[s * k + t];
                    for c in 0..d {
                        samples[s * d + c] += x * atoms[j as usize * d + c];
                    }
                }
            }
        }
        let codes = SparseCodes {
            n,
            k,
            indices,
            values,
            residual_energy: vec![0.0; n],
        };
        Self {
            d,
            atoms,
            samples,
            codes,
        }
    }

    fn n_atoms(&self) -> usize {
        self.atoms.len() / self.d
    }

    /// The twin's state: the same f32 data, in f64.
    fn state(&self) -> KsvdState {
        let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect();
        KsvdState {
            d: self.d,
            atoms: wide(&self.atoms),
            samples: wide(&self.samples),
            k: self.codes.k,
            indices: self.codes.indices.clone(),
            values: wide(&self.codes.values),
        }
    }

    /// Splits on the GPU and with the twin; asserts the same atoms changed, every atom agrees
    /// within `tolerance` and the changed atoms' memory rows (and only theirs) are cleared.
    /// Returns the atoms changed.
    fn check(&self, gpu: &Gpu, flagged: &[usize], tolerance: f64) -> Vec<usize> {
        let (n_atoms, d) = (self.n_atoms(), self.d);
        let mut atoms = gpu.matrix(n_atoms, d, &self.atoms).unwrap();
        let memory = gpu.matrix(n_atoms, d, &vec![1.0; n_atoms * d]).unwrap();
        let mut batch = gpu
            .coded_batch(&self.samples, d, &self.codes, n_atoms)
            .unwrap();
        let changed = gpu
            .split_atoms(&mut atoms, &memory, &mut batch, flagged)
            .unwrap();

        let mut state = self.state();
        let want = split_atoms(&mut state, flagged);
        assert_eq!(changed, want, "atoms changed (K = {n_atoms}, d = {d})");
        let got = gpu.read_matrix(&atoms).unwrap();
        for (j, (g, w)) in got.chunks(d).zip(state.atoms.chunks(d)).enumerate() {
            let worst = g
                .iter()
                .zip(w)
                .map(|(&g, &w)| (g as f64 - w).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= tolerance,
                "atom {j} (K = {n_atoms}, d = {d}) differs by {worst}"
            );
        }
        let memory = gpu.read_matrix(&memory).unwrap();
        for (j, row) in memory.chunks(d).enumerate() {
            let cleared = if changed.contains(&j) { 0.0 } else { 1.0 };
            assert!(row.iter().all(|&v| v == cleared), "memory row {j}");
        }
        changed
    }
}

fn unit_rows(mut v: Vec<f32>, d: usize) -> Vec<f32> {
    for row in v.chunks_mut(d) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The halves are unit means of f32 sums over an atom's users after 30 power steps in f32
/// (measured on lavapipe: at most 1.2e-7 from the f64 twin, 2 500 users included); 1e-5 leaves
/// room for other drivers' summation order yet catches a wrong side, sign, user or step count,
/// each of which moves some element by more than 0.1 here (measured by mutating the shader).
const TOLERANCE: f64 = 1e-5;

/// Shapes: K = 1 (nothing to split: the fall-back), primes, d not a multiple of the workgroup,
/// one slot and several; flagged atoms first, last, adjacent.
#[test]
fn split_matches_the_twin_on_awkward_shapes() {
    let Some(gpu) = common::gpu() else { return };
    for (n_atoms, d, n, k, flagged, seed) in [
        (1, 1, 5, 1, vec![0], 1),
        (7, 13, 29, 3, vec![1, 4], 2),
        (7, 13, 29, 3, vec![0, 6], 3),
        (37, 67, 301, 5, vec![0, 1, 2, 17, 36], 4),
        (5, 3, 11, 2, vec![1], 5),
    ] {
        let case = Case::random(n_atoms, d, n, k, seed);
        let changed = case.check(gpu, &flagged, TOLERANCE);
        assert!(
            flagged.iter().all(|j| changed.contains(j)),
            "a flagged atom was left: {changed:?}"
        );
    }
}

/// Every atom but one flagged: one split (the unflagged atom with its users), then the rest
/// fall back to the worst-represented samples, each sample once.
#[test]
fn candidates_run_out_into_the_worst_samples() {
    let Some(gpu) = common::gpu() else { return };
    let case = Case::random(11, 19, 40, 4, 7);
    let flagged: Vec<usize> = (0..11).filter(|&j| j != 5).collect();
    let changed = case.check(gpu, &flagged, TOLERANCE);
    assert_eq!(changed, (0..11).collect::<Vec<_>>());
}

/// Atom 0 carries the most residual but its users' residuals are one direction with positive
/// coefficients: every user lands on one side, the split fails, and atom 1 is split instead
/// (a second round on the GPU).
#[test]
fn a_failed_split_tries_the_next_atom() {
    let Some(gpu) = common::gpu() else { return };
    let (d, n) = (6, 12);
    let atoms = unit_rows(common::uniform(4 * d, 21), d);
    let noise = common::uniform(n * d, 22);
    let (mut indices, mut values, mut residual) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..n {
        // Samples 0..4 use atom 0, with residual 3·(1, 1, 0, ...) + a little noise; the others
        // use atom 1 (or 2) with random residuals of unit scale.
        let (j, x): (i32, f32) = match s {
            0..4 => (0, 1.0 + s as f32 / 10.0),
            _ => (1 + s as i32 % 2, if s % 3 == 0 { -0.7 } else { 0.9 }),
        };
        indices.push(j);
        values.push(x);
        for c in 0..d {
            let planted = if j == 0 && c < 2 { 3.0 } else { 0.0 };
            let scale = if j == 0 { 0.01 } else { 1.0 };
            residual.push(planted + scale * noise[s * d + c]);
        }
    }
    let case = Case::from_residual(d, atoms, indices, values, 1, &residual);
    let changed = case.check(gpu, &[3], TOLERANCE);
    assert!(
        !changed.contains(&0),
        "the one-sided atom was split: {changed:?}"
    );
    assert!(changed.contains(&3) && changed.len() == 2, "{changed:?}");
}

/// One atom used by 2 500 samples (three chunks of users on the GPU, summed per candidate) and
/// split for a flagged one.
#[test]
fn an_atom_with_many_users_splits_over_chunks() {
    let Some(gpu) = common::gpu() else { return };
    let mut case = Case::random(3, 5, 2600, 1, 31);
    for s in 0..2500 {
        case.codes.indices[s] = 0;
    }
    // Rebuild the samples for the new codes (same residual as before, in spirit).
    let residual = common::uniform(2600 * 5, 34);
    let values = case.codes.values.iter().map(|v| v.abs().max(0.5)).collect();
    let case = Case::from_residual(5, case.atoms, case.codes.indices, values, 1, &residual);
    let changed = case.check(gpu, &[2], TOLERANCE);
    assert_eq!(changed, [0, 2]);
}
