//! What a benchmark run measures: its sizes, its phases and how it writes its lines.

use std::fmt;
use std::str::FromStr;

use crate::encode::GramPrecision;
use crate::error::{Error, Result};

/// A part of the benchmark that `--phases` can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The Gram matrix D·Dᵀ and the correlations Y·Dᵀ: GFLOP/s.
    Products,
    /// Batch-OMP coding of the batch: samples/s.
    Omp,
    /// Matching-pursuit coding (with refit) of the batch: samples/s.
    Mp,
    /// One KSVD dictionary update on the coded batch: seconds.
    Update,
    /// One whole training step (coding and update): seconds, and the projected epoch.
    Step,
}

impl Phase {
    /// Every phase, in the order they run.
    pub const ALL: [Phase; 5] = [
        Phase::Products,
        Phase::Omp,
        Phase::Mp,
        Phase::Update,
        Phase::Step,
    ];

    /// The name `--phases` takes.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Products => "products",
            Phase::Omp => "omp",
            Phase::Mp => "mp",
            Phase::Update => "update",
            Phase::Step => "step",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Phase {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Phase::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown benchmark phase {s:?}; expected one of products, omp, mp, update, step"
                ))
            })
    }
}

/// Sizes and choices of one benchmark run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// Sample dimension d.
    pub dim: usize,
    /// Atoms K.
    pub atoms: usize,
    /// Most nonzeros per sample k.
    pub k: usize,
    /// Samples per batch B.
    pub batch: usize,
    /// Samples N of the epoch the step time is projected to.
    pub samples: u64,
    /// Seed of the synthetic data and of the update's atom order.
    pub seed: u64,
    /// Phases to run (each once, in [`Phase::ALL`] order whatever the order here); empty runs
    /// them all.
    pub phases: Vec<Phase>,
    /// How the coders store the Gram matrix.
    pub gram: GramPrecision,
    /// Atoms the update and the step update in parallel (A, at most K); `None` takes the
    /// trainer's default ([`DEFAULT_ATOM_BATCH`](crate::train::DEFAULT_ATOM_BATCH), or K if
    /// smaller).
    pub atom_batch: Option<usize>,
    /// Measurements R of each timed figure (at least 1): the figure is the median one, followed
    /// by the spread when R > 1.
    pub repeats: usize,
}

impl BenchConfig {
    /// d, K, k and B, projected to an epoch of 2²¹ samples, seed 0, every phase, one
    /// measurement each.
    pub fn new(dim: usize, atoms: usize, k: usize, batch: usize) -> Self {
        Self {
            dim,
            atoms,
            k,
            batch,
            samples: 1 << 21,
            seed: 0,
            phases: Vec::new(),
            gram: GramPrecision::F32,
            atom_batch: None,
            repeats: 1,
        }
    }

    /// Checks the sizes on their own (what the device holds is checked by [`Bench::new`](super::Bench::new)).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        for (name, value) in [
            ("dimension d", self.dim as u64),
            ("atoms K", self.atoms as u64),
            ("batch B", self.batch as u64),
            ("epoch samples N", self.samples),
        ] {
            if value == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        // k distinct atoms per sample, and OMP selects at most d independent ones.
        if self.k == 0 || self.k > self.atoms.min(self.dim) {
            return bad(format!(
                "k = {} must lie in 1..=min(K, d) = {}",
                self.k,
                self.atoms.min(self.dim)
            ));
        }
        if self.repeats == 0 {
            return bad("repeats R must be at least 1".into());
        }
        if let Some(a) = self.atom_batch {
            if a == 0 || a > self.atoms {
                return bad(format!(
                    "atom batch A = {a} must lie in 1..=K = {}",
                    self.atoms
                ));
            }
        }
        Ok(())
    }

    /// Whether `phase` runs.
    pub fn runs(&self, phase: Phase) -> bool {
        self.phases.is_empty() || self.phases.contains(&phase)
    }
}

impl Default for BenchConfig {
    /// MiniLM's size: d = 384, K = 1536, k = 32, B = 4096.
    fn default() -> Self {
        Self::new(384, 1536, 32, 4096)
    }
}

/// How [`Bench`](super::Bench) writes its lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One human-readable line per figure.
    Text,
    /// One JSON object per line, with the sizes and the adapter name in each.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_and_sizes_are_checked() {
        assert_eq!("MP".parse::<Phase>().unwrap(), Phase::Mp);
        assert!("gemm".parse::<Phase>().is_err());
        assert!(BenchConfig::new(8, 40, 9, 64).validate().is_err());
        assert!(BenchConfig::new(16, 40, 0, 64).validate().is_err());
        assert!(BenchConfig::new(16, 40, 3, 0).validate().is_err());
        BenchConfig::new(16, 40, 3, 64).validate().unwrap();
        let with_a = |a| BenchConfig {
            atom_batch: Some(a),
            ..BenchConfig::new(16, 40, 3, 64)
        };
        assert!(with_a(0).validate().is_err());
        assert!(with_a(41).validate().is_err());
        with_a(40).validate().unwrap();
        let repeats = |r| BenchConfig {
            repeats: r,
            ..BenchConfig::new(16, 40, 3, 64)
        };
        assert!(repeats(0).validate().is_err());
        repeats(5).validate().unwrap();
    }
}
