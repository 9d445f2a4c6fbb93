//! Planted sparse data: the standard test of dictionary learning (Aharon, Elad & Bruckstein 2006).
//! Samples are exact k-sparse combinations of a known dictionary plus small noise, so how many of
//! its atoms a learner finds measures the learner.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What to plant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlantedSpec {
    /// Dimension d.
    pub d: usize,
    /// Atoms K of the planted dictionary.
    pub atoms: usize,
    /// Distinct atoms per sample.
    pub k: usize,
    /// Samples.
    pub samples: usize,
    /// RMS norm of the Gaussian noise added to each sample.
    pub noise: f64,
    /// Seed.
    pub seed: u64,
}

/// A planted dictionary and its samples.
#[derive(Clone, Debug)]
pub struct Planted {
    /// Unit Gaussian atoms [K, d].
    pub atoms: Vec<f32>,
    /// Samples [n, d]: k distinct atoms with coefficients ±U(1, 2) (random sign), plus noise.
    pub samples: Vec<f32>,
}

fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller.
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// Draws a planted problem.
pub fn planted(spec: &PlantedSpec) -> Planted {
    let PlantedSpec {
        d,
        atoms: n_atoms,
        k,
        samples: n,
        noise,
        seed,
    } = *spec;
    let k = k.min(n_atoms);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut atoms = vec![0.0f64; n_atoms * d];
    for atom in atoms.chunks_mut(d) {
        atom.iter_mut().for_each(|v| *v = gaussian(&mut rng));
        let norm = atom
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        atom.iter_mut().for_each(|v| *v /= norm);
    }
    let sigma = noise / (d as f64).sqrt();
    let mut samples = vec![0.0f32; n * d];
    let mut chosen: Vec<usize> = Vec::with_capacity(k);
    let mut row = vec![0.0f64; d];
    for y in samples.chunks_mut(d) {
        chosen.clear();
        while chosen.len() < k {
            let j = rng.random_range(0..n_atoms);
            if !chosen.contains(&j) {
                chosen.push(j);
            }
        }
        row.iter_mut().for_each(|r| *r = 0.0);
        for &j in &chosen {
            let sign = if rng.random_range(0..2) == 0 {
                -1.0
            } else {
                1.0
            };
            let c = sign * rng.random_range(1.0..2.0);
            for (r, a) in row.iter_mut().zip(&atoms[j * d..(j + 1) * d]) {
                *r += c * a;
            }
        }
        for (o, r) in y.iter_mut().zip(&row) {
            *o = (r + sigma * gaussian(&mut rng)) as f32;
        }
    }
    Planted {
        atoms: atoms.iter().map(|&v| v as f32).collect(),
        samples,
    }
}

/// Fraction of the `truth` atoms [K, d] matched by some `learned` atom at |cos| ≥ `threshold`.
pub fn recovered(truth: &[f32], learned: &[f32], d: usize, threshold: f64) -> f64 {
    let unit = |a: &[f32]| -> Vec<f64> {
        let norm = a.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        a.iter()
            .map(|&v| v as f64 / norm.max(f64::MIN_POSITIVE))
            .collect()
    };
    let learned: Vec<Vec<f64>> = learned.chunks(d).map(unit).collect();
    let n_true = truth.len() / d.max(1);
    let hits = truth
        .chunks(d)
        .map(unit)
        .filter(|t| {
            learned
                .iter()
                .any(|l| t.iter().zip(l).map(|(a, b)| a * b).sum::<f64>().abs() >= threshold)
        })
        .count();
    hits as f64 / n_true.max(1) as f64
}
