//! Twins of `shaders/reduce.wgsl`'s reductions over the atoms: the duplicate search and the
//! coherence profile, in f64 from the atoms' rows.

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Atoms j of `atoms` [K, d] (unit rows) with |cos(d_i, d_j)| > `threshold` for an atom i used
/// more (`usage`; equal use: the lower index counts as more used), ascending: the twin of
/// `mark_duplicates`.
pub fn duplicate_atoms(atoms: &[f64], d: usize, usage: &[u64], threshold: f64) -> Vec<usize> {
    let row = |j: usize| &atoms[j * d..(j + 1) * d];
    (0..usage.len())
        .filter(|&j| {
            (0..usage.len()).any(|i| {
                let more_used = usage[i] > usage[j] || (usage[i] == usage[j] && i < j);
                i != j && more_used && dot(row(i), row(j)).abs() > threshold
            })
        })
        .collect()
}

/// Per atom of `atoms` [K, d] (unit rows), the largest |cos| with any other atom: the twin of
/// `coherence` in shaders/reduce.wgsl.
pub fn coherence(atoms: &[f32], d: usize) -> Vec<f64> {
    let rows: Vec<Vec<f64>> = atoms
        .chunks(d)
        .map(|a| a.iter().map(|&v| v as f64).collect())
        .collect();
    (0..rows.len())
        .map(|j| {
            (0..rows.len())
                .filter(|&i| i != j)
                .map(|i| dot(&rows[i], &rows[j]).abs())
                .fold(0.0, f64::max)
        })
        .collect()
}
