//! Matryoshka groups: the nested atom groups of a dictionary, and coding group by group.

use super::{Encoder, GroupCoders, SparseCodes};
use crate::error::{Error, Result};

/// The nested atom groups of a Matryoshka dictionary: group g holds atoms
/// [ends\[g − 1\], ends\[g\]) (the first from 0), so every prefix of groups is a prefix of the
/// atom order and a dictionary of its own. Training fits each group, in order, to the residual
/// the groups before it leave; encoding follows the same order, and can stop after any prefix.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Vec<usize>", into = "Vec<usize>")]
pub struct Groups {
    ends: Vec<usize>,
}

/// Groups read from a file (a checkpoint's configuration, a dictionary's metadata) are checked
/// like [`Groups::new`]'s.
impl TryFrom<Vec<usize>> for Groups {
    type Error = String;

    fn try_from(ends: Vec<usize>) -> std::result::Result<Self, String> {
        Groups::new(ends).map_err(|e| e.to_string())
    }
}

impl From<Groups> for Vec<usize> {
    fn from(groups: Groups) -> Self {
        groups.ends
    }
}

impl Groups {
    /// Groups ending at `ends` (strictly increasing, the first above 0; the last is K).
    pub fn new(ends: Vec<usize>) -> Result<Self> {
        if ends.is_empty() || ends[0] == 0 || ends.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(format!(
                "Matryoshka group ends {ends:?} must be strictly increasing and start above 0"
            )));
        }
        Ok(Self { ends })
    }

    /// Groups as a user gives them (`--matryoshka`, `matryoshka=`): one number is the smallest
    /// group of [`Groups::doubling`] up to `n_atoms`, several are the groups' ends.
    pub fn from_spec(numbers: &[usize], n_atoms: usize) -> Result<Self> {
        match numbers {
            [smallest] => Self::doubling(*smallest, n_atoms),
            ends => Self::new(ends.to_vec()),
        }
    }

    /// Groups of m, m, 2m, 4m, … atoms (ends m, 2m, 4m, …, as KSVD.jl's `MatryoshkaLoop` with
    /// m = 2^log2min) up to `n_atoms`, the last group taking the atoms left: for any K, not
    /// only powers of two (K = 1000, m = 64: ends 64, 128, 256, 512, 1000).
    pub fn doubling(smallest: usize, n_atoms: usize) -> Result<Self> {
        if smallest == 0 || smallest > n_atoms {
            return Err(Error::InvalidArgument(format!(
                "smallest Matryoshka group {smallest} must lie in 1..=K = {n_atoms}"
            )));
        }
        let mut ends = Vec::new();
        let mut end = smallest;
        while end < n_atoms {
            ends.push(end);
            end = end.saturating_mul(2);
        }
        ends.push(n_atoms);
        Self::new(ends)
    }

    /// Where each group ends; the last is K.
    pub fn ends(&self) -> &[usize] {
        &self.ends
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Never true: there is at least one group.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Atoms in all groups (K).
    pub fn n_atoms(&self) -> usize {
        *self.ends.last().expect("at least one group")
    }

    /// The atoms of group `g`.
    pub fn range(&self, g: usize) -> std::ops::Range<usize> {
        let start = if g == 0 { 0 } else { self.ends[g - 1] };
        start..self.ends[g]
    }

    /// Checks the groups against a dictionary of `n_atoms` atoms coded with `k` nonzeros.
    pub fn validate_for(&self, n_atoms: usize, k: usize) -> Result<()> {
        if self.n_atoms() != n_atoms {
            return Err(Error::InvalidArgument(format!(
                "Matryoshka groups end at {} but the dictionary has K = {n_atoms} atoms",
                self.n_atoms()
            )));
        }
        if k < self.len() {
            return Err(Error::InvalidArgument(format!(
                "k = {k} is fewer than the {} Matryoshka groups: each needs at least one nonzero",
                self.len()
            )));
        }
        Ok(())
    }

    /// The nonzeros of each group, summing to exactly `k`: every group gets one, and the other
    /// k − G are shared in proportion to the groups' sizes, rounded by largest remainder (ties
    /// to the earlier group). K = 1536, k = 32 in groups of 64, 64, 128, 256, 512, 512 gives
    /// 2, 2, 3, 5, 10, 10. No group gets more nonzeros than it has atoms (a one-atom last group
    /// gets one); what that leaves goes to the largest groups with room, earlier first.
    pub fn split_k(&self, k: usize) -> Result<Vec<usize>> {
        self.validate_for(self.n_atoms(), k)?;
        if k > self.n_atoms() {
            return Err(Error::InvalidArgument(format!(
                "k = {k} exceeds the K = {} atoms of the Matryoshka groups",
                self.n_atoms()
            )));
        }
        let (n_atoms, rest) = (self.n_atoms() as u128, (k - self.len()) as u128);
        let sizes: Vec<u128> = (0..self.len())
            .map(|g| self.range(g).len() as u128)
            .collect();
        let mut shares: Vec<usize> = sizes
            .iter()
            .map(|&s| 1 + (rest * s / n_atoms) as usize)
            .collect();
        let mut left = k - shares.iter().sum::<usize>();
        let mut by_remainder: Vec<usize> = (0..self.len()).collect();
        by_remainder.sort_by_key(|&g| std::cmp::Reverse(rest * sizes[g] % n_atoms));
        for g in by_remainder {
            if left == 0 {
                break;
            }
            shares[g] += 1;
            left -= 1;
        }
        // Slots beyond a group's atoms would stay empty: move them to groups with room.
        let mut excess = 0;
        for (share, &size) in shares.iter_mut().zip(&sizes) {
            excess += share.saturating_sub(size as usize);
            *share = (*share).min(size as usize);
        }
        let mut by_size: Vec<usize> = (0..self.len()).collect();
        by_size.sort_by_key(|&g| std::cmp::Reverse(sizes[g]));
        while excess > 0 {
            for &g in &by_size {
                if excess > 0 && shares[g] < sizes[g] as usize {
                    shares[g] += 1;
                    excess -= 1;
                }
            }
        }
        Ok(shares)
    }
}

/// The coefficients x minimising ‖y − Σ x_t·atom(indices[t])‖ over the slots in use (index ≥
/// 0; the others get 0), by Cholesky on the support's Gram matrix in f64; `None` when the
/// support is (numerically) dependent, so the caller keeps its greedy coefficients.
fn least_squares(atoms: &[f32], d: usize, y: &[f32], indices: &[i32]) -> Option<Vec<f64>> {
    let support: Vec<usize> = indices
        .iter()
        .filter(|&&j| j >= 0)
        .map(|&j| j as usize)
        .collect();
    let m = support.len();
    let atom = |t: usize| &atoms[support[t] * d..(support[t] + 1) * d];
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| x as f64 * y as f64)
            .sum::<f64>()
    };
    // Lower-triangular L with L·Lᵀ = G, row by row.
    let mut l = vec![0.0f64; m * m];
    for r in 0..m {
        for c in 0..=r {
            let mut v = dot(atom(r), atom(c));
            for t in 0..c {
                v -= l[r * m + t] * l[c * m + t];
            }
            if r == c {
                // Unit atoms: a pivot this small means the support is dependent.
                if v <= 1e-6 {
                    return None;
                }
                l[r * m + r] = v.sqrt();
            } else {
                l[r * m + c] = v / l[c * m + c];
            }
        }
    }
    let mut x: Vec<f64> = (0..m).map(|t| dot(atom(t), y)).collect();
    for r in 0..m {
        for t in 0..r {
            x[r] -= l[r * m + t] * x[t];
        }
        x[r] /= l[r * m + r];
    }
    for r in (0..m).rev() {
        for t in r + 1..m {
            x[r] -= l[t * m + r] * x[t];
        }
        x[r] /= l[r * m + r];
    }
    let mut fitted = x.into_iter();
    Some(
        indices
            .iter()
            .map(|&j| {
                if j >= 0 {
                    fitted.next().unwrap_or(0.0)
                } else {
                    0.0
                }
            })
            .collect(),
    )
}

impl Encoder {
    /// Codes `samples` with the first `prefix` groups, each on what the groups before it leave,
    /// the support refitted jointly after each (see [`super::EncodeOptions::prefix`]).
    pub(super) fn encode_groups(
        &self,
        samples: &[f32],
        groups: &GroupCoders,
        prefix: usize,
    ) -> Result<SparseCodes> {
        let d = self.d;
        let n = self.rows_of(samples)?;
        let k = self.options.coding.k;
        let mut residual = samples.to_vec();
        if let Some(mean) = &self.mean {
            for row in residual.chunks_exact_mut(d) {
                row.iter_mut().zip(mean).for_each(|(v, m)| *v -= m);
            }
        }
        let mut codes = SparseCodes {
            n,
            k,
            indices: vec![-1; n * k],
            values: vec![0.0; n * k],
            residual_energy: vec![0.0; n],
        };
        let centred = residual.clone();
        let mut slot = 0;
        for (g, coder) in groups.coders.iter().take(prefix).enumerate() {
            let start = groups.groups.range(g).start;
            let part = coder.encode_inner(&residual, None)?;
            for i in 0..n {
                let row = &mut residual[i * d..(i + 1) * d];
                for (t, (j, v)) in part.row(i).enumerate() {
                    codes.indices[i * k + slot + t] = (start + j) as i32;
                    codes.values[i * k + slot + t] = v;
                    // Host arithmetic: the next group codes exactly what this one left.
                    for (r, a) in row.iter_mut().zip(&coder.atoms[j * d..(j + 1) * d]) {
                        *r -= v * a;
                    }
                }
            }
            slot += part.k;
            // The support so far is fitted jointly (least squares, as OMP does within a group),
            // so the next group codes what all of it leaves.
            for i in 0..n {
                let (indices, values) = (
                    &codes.indices[i * k..i * k + slot],
                    &mut codes.values[i * k..i * k + slot],
                );
                let y = &centred[i * d..(i + 1) * d];
                if let Some(fitted) = least_squares(&self.atoms, d, y, indices) {
                    let row = &mut residual[i * d..(i + 1) * d];
                    row.copy_from_slice(y);
                    for ((&j, v), x) in indices.iter().zip(values.iter_mut()).zip(fitted) {
                        if j >= 0 {
                            *v = x as f32;
                            let atom = &self.atoms[j as usize * d..(j as usize + 1) * d];
                            row.iter_mut().zip(atom).for_each(|(r, a)| *r -= *v * a);
                        }
                    }
                }
            }
        }
        for (energy, row) in codes
            .residual_energy
            .iter_mut()
            .zip(residual.chunks_exact(d))
        {
            *energy = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32;
        }
        Ok(codes)
    }
}
