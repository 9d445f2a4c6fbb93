//! The bench's synthetic data: unit-norm Gaussian atoms and sparse combinations of them, drawn
//! in blocks from seeded streams so that any thread count gives the same numbers.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::BenchConfig;
use crate::error::{Error, Result};

/// The synthetic problem a benchmark runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticData {
    /// Unit-norm Gaussian atoms D [K, d], row-major.
    pub atoms: Vec<f32>,
    /// Samples Y [B, d]: k distinct random atoms with standard Gaussian coefficients each, plus
    /// Gaussian noise of 1 % of the signal's energy.
    pub samples: Vec<f32>,
    /// ‖y‖² per sample, as a training step takes them.
    pub norms: Vec<f32>,
}

/// Rows drawn from one random stream: blocks, not threads, fix the numbers, so any thread
/// count gives the same data.
const BLOCK_ROWS: usize = 64;

/// Fills `out` with standard Gaussians (Box–Muller, both values of each pair used).
fn gaussians(rng: &mut ChaCha8Rng, out: &mut [f32]) {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    for pair in out.chunks_mut(2) {
        // u1 in (0, 1] so ln(u1) is finite.
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 * SCALE;
        let u2 = (rng.next_u64() >> 11) as f64 * SCALE;
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        pair[0] = (r * cos) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * sin) as f32;
        }
    }
}

/// Runs `fill(block index, rows)` over blocks of [`BLOCK_ROWS`] rows of `data` (rows of `width`)
/// on every core: generating at d = 2304, K = 16384 takes seconds on one.
fn par_blocks(data: &mut [f32], width: usize, fill: impl Fn(u64, &mut [f32]) + Sync) {
    let block = BLOCK_ROWS * width.max(1);
    let blocks = data.len().div_ceil(block);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(blocks)
        .max(1);
    let per_thread = blocks.div_ceil(threads);
    std::thread::scope(|scope| {
        for (t, part) in data.chunks_mut(per_thread * block).enumerate() {
            let fill = &fill;
            scope.spawn(move || {
                for (b, rows) in part.chunks_mut(block).enumerate() {
                    fill((t * per_thread + b) as u64, rows);
                }
            });
        }
    });
}

/// One random stream per (purpose, block) from `seed`.
fn stream(seed: u64, purpose: u64, block: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((purpose << 48) | block);
    rng
}

/// Draws the synthetic problem of `config` (d, K, k, B, seed): deterministic for a seed.
pub fn synthetic(config: &BenchConfig) -> Result<SyntheticData> {
    config.validate()?;
    let BenchConfig {
        dim: d,
        atoms: n_atoms,
        k,
        batch: n,
        seed,
        ..
    } = *config;
    let len = |rows: usize| {
        rows.checked_mul(d).ok_or_else(|| {
            Error::InvalidArgument(format!("[{rows}, {d}] synthetic data overflows"))
        })
    };
    let mut atoms = vec![0.0f32; len(n_atoms)?];
    par_blocks(&mut atoms, d, |block, rows| {
        let mut rng = stream(seed, 1, block);
        gaussians(&mut rng, rows);
        for atom in rows.chunks_mut(d) {
            let norm = atom
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum::<f64>()
                .sqrt();
            // A zero Gaussian row has probability 0 but would be refused as an atom.
            if norm > 0.0 {
                atom.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
            } else {
                atom[0] = 1.0;
            }
        }
    });
    // E‖Σ cⱼ·dⱼ‖² = k for unit atoms and unit Gaussian c: noise of 1 % of that per sample.
    let sigma = (0.01 * k as f32 / d as f32).sqrt();
    let mut samples = vec![0.0f32; len(n)?];
    par_blocks(&mut samples, d, |block, rows| {
        let mut rng = stream(seed, 2, block);
        // A partial Fisher–Yates shuffle per sample draws k distinct atoms in O(k); the array
        // stays a permutation, so it need not be reset between samples.
        let mut order: Vec<u32> = (0..n_atoms as u32).collect();
        let mut coefficients = vec![0.0f32; k];
        for y in rows.chunks_mut(d) {
            gaussians(&mut rng, y);
            y.iter_mut().for_each(|v| *v *= sigma);
            gaussians(&mut rng, &mut coefficients);
            for (t, &c) in coefficients.iter().enumerate() {
                let pick = t + (rng.next_u64() % (n_atoms - t) as u64) as usize;
                order.swap(t, pick);
                let j = order[t] as usize;
                for (v, a) in y.iter_mut().zip(&atoms[j * d..(j + 1) * d]) {
                    *v += c * a;
                }
            }
        }
    });
    let norms = samples
        .chunks_exact(d)
        .map(|y| y.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32)
        .collect();
    Ok(SyntheticData {
        atoms,
        samples,
        norms,
    })
}
