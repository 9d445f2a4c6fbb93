//! One streaming pass for the statistics used to centre activations and to report the fraction
//! of variance unexplained.

use super::{ActivationSource, BatchOrder};
use crate::error::{Error, Result};

/// Mean and second moment of a source's rows, accumulated in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Rows seen.
    pub rows: usize,
    /// Mean row μ (length d).
    pub mean: Vec<f64>,
    /// Mean squared norm E‖y‖².
    pub mean_squared_norm: f64,
}

impl Stats {
    /// Streams `source` once in file order, `batch_size` rows at a time (memory: one batch).
    /// Errors on an empty source and on anything reading does (non-finite values included).
    pub fn compute(source: &dyn ActivationSource, batch_size: usize) -> Result<Self> {
        let d = source.dim();
        if source.rows() == 0 {
            return Err(Error::InvalidArgument(format!(
                "{} has no rows to take statistics of",
                source.name()
            )));
        }
        let mut sum = vec![0.0f64; d];
        let mut squares = 0.0f64;
        let mut partial = vec![0.0f64; d];
        for batch in super::Batches::new(source, &BatchOrder::sequential(batch_size), 0)? {
            let batch = batch?;
            // Per-batch partial sums keep the rounding of long runs small.
            partial.iter_mut().for_each(|p| *p = 0.0);
            let mut partial_squares = 0.0;
            for row in batch.data.chunks_exact(d) {
                for (p, &v) in partial.iter_mut().zip(row) {
                    let v = v as f64;
                    *p += v;
                    partial_squares += v * v;
                }
            }
            sum.iter_mut().zip(&partial).for_each(|(s, p)| *s += p);
            squares += partial_squares;
        }
        let n = source.rows() as f64;
        Ok(Self {
            rows: source.rows(),
            mean: sum.iter().map(|s| s / n).collect(),
            mean_squared_norm: squares / n,
        })
    }

    /// Mean squared distance to the mean, E‖y − μ‖² = E‖y‖² − ‖μ‖²: the total variance that the
    /// fraction of variance unexplained divides by.
    pub fn total_variance(&self) -> f64 {
        let mean_norm: f64 = self.mean.iter().map(|m| m * m).sum();
        (self.mean_squared_norm - mean_norm).max(0.0)
    }

    /// The mean as f32 (for [`Centred`](super::Centred)).
    pub fn mean_f32(&self) -> Vec<f32> {
        self.mean.iter().map(|&m| m as f32).collect()
    }
}
