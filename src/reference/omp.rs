//! Reference sparse coders: textbook OMP and MP in f64 with an explicit residual.
//!
//! Same stopping rules and tie-breaking as the GPU coders (see [`crate::encode::CodingOptions`]),
//! so the two can be compared sample by sample:
//!
//! OMP, before choosing atom s+1 (s chosen so far):
//! 1. stop at `max_atoms = min(k, d, K)` atoms;
//! 2. stop when `tolerance` is set and ‖r‖² ≤ tolerance·‖y‖²;
//! 3. choose j = argmax |dⱼ·r| over unchosen atoms, ties to the lowest index;
//! 4. stop when |dⱼ·r| ≤ `min_correlation`·‖y‖ (this also stops a zero sample with no atom);
//! 5. stop when the Cholesky pivot G\[j,j\] − wᵀw with w = L⁻¹·G\[I,j\] is ≤ `min_pivot`·G\[j,j\]
//!    (dⱼ is nearly in the span of the chosen atoms);
//! 6. add j; γ solves G\[I,I\]·γ = D\[I\]·y; r = y − γ·D\[I\].
//!
//! MP: at most `2·max_atoms` iterations of: rules 2–4 over all atoms (an atom may be chosen again,
//! adding to its coefficient), stopping when a new atom would exceed `max_atoms`; then
//! xⱼ += dⱼ·r and r −= (dⱼ·r)·dⱼ. With refit, the final support's coefficients are replaced by the
//! least-squares solution (unless a pivot falls below `min_pivot`, then MP's are kept).

use crate::coding::{Coder, CodingOptions};

/// One sample's code from a reference coder.
#[derive(Clone, Debug, PartialEq)]
pub struct RefCode {
    /// Chosen atoms in the order they were chosen.
    pub indices: Vec<usize>,
    /// Their coefficients.
    pub values: Vec<f64>,
    /// ‖y − x·D‖², from the explicit residual.
    pub residual_energy: f64,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn atom(atoms: &[f64], d: usize, j: usize) -> &[f64] {
    &atoms[j * d..(j + 1) * d]
}

/// Argmax of |c| over atoms not excluded; ties go to the lowest index.
fn argmax_abs(c: &[f64], excluded: &[usize]) -> Option<(usize, f64)> {
    let mut best: Option<(usize, f64)> = None;
    for (j, v) in c.iter().enumerate() {
        if excluded.contains(&j) {
            continue;
        }
        if best.is_none_or(|(_, b)| v.abs() > b.abs()) {
            best = Some((j, *v));
        }
    }
    best
}

/// Lower-triangular Cholesky factor of the Gram matrix of `support`, grown one row at a time.
/// Returns `None` when a pivot is ≤ `min_pivot`·G\[j,j\].
fn cholesky(atoms: &[f64], d: usize, support: &[usize], min_pivot: f64) -> Option<Vec<Vec<f64>>> {
    let mut l: Vec<Vec<f64>> = Vec::new();
    for (s, &j) in support.iter().enumerate() {
        let dj = atom(atoms, d, j);
        let g_col: Vec<f64> = support[..s]
            .iter()
            .map(|&i| dot(atom(atoms, d, i), dj))
            .collect();
        let w = forward(&l, &g_col);
        let gjj = dot(dj, dj);
        let pivot = gjj - dot(&w, &w);
        if pivot <= min_pivot * gjj {
            return None;
        }
        let mut row = w;
        row.push(pivot.sqrt());
        l.push(row);
    }
    Some(l)
}

/// Solves L·x = b (L lower triangular, rows as grown by `cholesky`).
fn forward(l: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let mut x = Vec::with_capacity(b.len());
    for i in 0..b.len() {
        let s: f64 = (0..i).map(|t| l[i][t] * x[t]).sum();
        x.push((b[i] - s) / l[i][i]);
    }
    x
}

/// Solves Lᵀ·x = b.
fn backward(l: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|t| l[t][i] * x[t]).sum();
        x[i] = (b[i] - s) / l[i][i];
    }
    x
}

/// Least-squares coefficients of `y` on the atoms of `support`, and the residual.
fn least_squares(
    atoms: &[f64],
    d: usize,
    support: &[usize],
    l: &[Vec<f64>],
    y: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let rhs: Vec<f64> = support.iter().map(|&i| dot(atom(atoms, d, i), y)).collect();
    let gamma = backward(l, &forward(l, &rhs));
    let mut r = y.to_vec();
    for (&i, g) in support.iter().zip(&gamma) {
        for (rv, av) in r.iter_mut().zip(atom(atoms, d, i)) {
            *rv -= g * *av;
        }
    }
    (gamma, r)
}

/// Codes one sample `y` \[d\] over `atoms` [K, d] with the coder and rules in `options`.
pub fn encode_sample(atoms: &[f32], n_atoms: usize, y: &[f32], options: &CodingOptions) -> RefCode {
    encode(atoms, n_atoms, y, y.len(), options).remove(0)
}

fn encode_f64(atoms: &[f64], n_atoms: usize, y: &[f32], options: &CodingOptions) -> RefCode {
    let d = y.len();
    let y: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    let y2 = dot(&y, &y);
    let max_atoms = options.max_atoms(n_atoms, d);
    let tolerance = options.tolerance.map(|t| t as f64);
    let min_correlation = options.min_correlation as f64 * y2.sqrt();
    let min_pivot = options.min_pivot as f64;
    let correlations =
        |r: &[f64]| -> Vec<f64> { (0..n_atoms).map(|j| dot(atom(atoms, d, j), r)).collect() };
    let energy_reached = |r: &[f64]| tolerance.is_some_and(|t| dot(r, r) <= t * y2);

    let mut support: Vec<usize> = Vec::new();
    let mut values: Vec<f64> = Vec::new();
    let mut r = y.clone();
    match options.coder {
        Coder::Omp => {
            let mut l: Vec<Vec<f64>>;
            while support.len() < max_atoms && !energy_reached(&r) {
                let Some((j, c)) = argmax_abs(&correlations(&r), &support) else {
                    break;
                };
                if c.abs() <= min_correlation {
                    break;
                }
                let mut trial = support.clone();
                trial.push(j);
                match cholesky(atoms, d, &trial, min_pivot) {
                    Some(grown) => l = grown,
                    None => break,
                }
                support = trial;
                let (gamma, residual) = least_squares(atoms, d, &support, &l, &y);
                values = gamma;
                r = residual;
            }
        }
        Coder::Mp { refit } => {
            for _ in 0..2 * max_atoms {
                if energy_reached(&r) {
                    break;
                }
                let Some((j, c)) = argmax_abs(&correlations(&r), &[]) else {
                    break;
                };
                if c.abs() <= min_correlation {
                    break;
                }
                let slot = match support.iter().position(|&i| i == j) {
                    Some(slot) => slot,
                    None if support.len() == max_atoms => break,
                    None => {
                        support.push(j);
                        values.push(0.0);
                        support.len() - 1
                    }
                };
                values[slot] += c;
                for (rv, av) in r.iter_mut().zip(atom(atoms, d, j)) {
                    *rv -= c * *av;
                }
            }
            if refit && !support.is_empty() {
                if let Some(l) = cholesky(atoms, d, &support, min_pivot) {
                    let (gamma, residual) = least_squares(atoms, d, &support, &l, &y);
                    values = gamma;
                    r = residual;
                }
            }
        }
    }
    RefCode {
        indices: support,
        values,
        residual_energy: dot(&r, &r),
    }
}

/// Codes every row of `samples` [n, d].
pub fn encode(
    atoms: &[f32],
    n_atoms: usize,
    samples: &[f32],
    d: usize,
    options: &CodingOptions,
) -> Vec<RefCode> {
    assert!(
        d > 0 && samples.len().is_multiple_of(d),
        "samples are not [n, d]"
    );
    assert_eq!(atoms.len(), n_atoms * d, "atoms are not [K, d]");
    let atoms: Vec<f64> = atoms.iter().map(|&v| v as f64).collect();
    samples
        .chunks(d)
        .map(|y| encode_f64(&atoms, n_atoms, y, options))
        .collect()
}

/// Decodes the GPU coders' output words, [n, 2k + 1] per sample (k atom indices as i32 bits, k
/// coefficient bits, the residual energy bits): (indices, values, per sample (residual energy,
/// L0)). The twin of `unpack_codes` in shaders/sparse.wgsl.
pub fn unpack_words(words: &[u32], k: usize) -> (Vec<i32>, Vec<f32>, Vec<(f32, u32)>) {
    let (mut indices, mut values, mut stats) = (Vec::new(), Vec::new(), Vec::new());
    for row in words.chunks_exact(2 * k + 1) {
        indices.extend(row[..k].iter().map(|&w| w as i32));
        values.extend(row[k..2 * k].iter().map(|&w| f32::from_bits(w)));
        let l0 = row[..k].iter().filter(|&&w| (w as i32) >= 0).count() as u32;
        stats.push((f32::from_bits(row[2 * k]), l0));
    }
    (indices, values, stats)
}
