//! What sparse coding is asked to do and what it returns: the coder and its stopping rules
//! ([`CodingOptions`]), the storage of the Gram matrix, and codes in the fixed-width layout
//! ([`SparseCodes`]). Below [`crate::gpu`], which codes with them, and re-exported by
//! [`crate::encode`], the API users code through.

use crate::error::{Error, Result};

/// How the coding kernels store the Gram matrix G = D·Dᵀ they read at every greedy step.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum GramPrecision {
    /// f32, as computed: the codes match the f64 reference's (the default).
    #[default]
    F32,
    /// f16 texels converted from the f32 product: half G's memory (K = 16 384 in 512 MiB), at
    /// about 3 significant digits per entry. Entries of unit atoms
    /// lie in [−1, 1], where f16's relative rounding is at most 2⁻¹¹; near-ties between atoms
    /// may then break differently (see README for the agreement measured).
    F16,
}

/// Which greedy coder selects atoms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Coder {
    /// Orthogonal matching pursuit (Batch-OMP): coefficients are the least-squares fit of the
    /// chosen atoms after every step. The default and the more accurate.
    Omp,
    /// Matching pursuit: each step subtracts the chosen atom's projection; an atom may be chosen
    /// again. Cheaper per step; `refit` replaces the final coefficients by the least-squares fit
    /// of the support.
    Mp {
        /// Least-squares refit of the final support.
        refit: bool,
    },
}

/// Sparsity and stopping rules, shared by the GPU coders and [`crate::reference::omp`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct CodingOptions {
    /// The coder.
    pub coder: Coder,
    /// Most atoms per sample (slots per row of [`SparseCodes`]); a sample never uses more than
    /// min(k, d, K).
    pub k: usize,
    /// Stop a sample once ‖y − x·D‖² ≤ tolerance·‖y‖². Computed in f32 as ‖y‖² − γ·α⁰, so values
    /// below about 1e-6 are not meaningful.
    pub tolerance: Option<f32>,
    /// Stop when the largest remaining correlation |dⱼ·r| ≤ min_correlation·‖y‖ (nothing left
    /// worth fitting; also gives a zero sample no atoms).
    pub min_correlation: f32,
    /// Stop when the next atom's Cholesky pivot G\[j,j\] − wᵀw ≤ min_pivot·G\[j,j\]: it is nearly in
    /// the span of the atoms already chosen (its sine to that span is below √min_pivot).
    pub min_pivot: f32,
    /// How G is stored for coding.
    pub gram: GramPrecision,
}

impl CodingOptions {
    /// OMP with at most `k` atoms and the default thresholds.
    pub fn omp(k: usize) -> Self {
        Self {
            coder: Coder::Omp,
            k,
            tolerance: None,
            // f32 correlations carry rounding of a few 1e-7·‖y‖; stop well above that.
            min_correlation: 1e-5,
            // sin² of the angle to the span; 1e-4 is 0.57°, far above f32 rounding of the pivot.
            min_pivot: 1e-4,
            gram: GramPrecision::F32,
        }
    }

    with_setters! {
        with_gram => gram: GramPrecision,
        with_min_correlation => min_correlation: f32,
        with_min_pivot => min_pivot: f32,
    }

    with_setters! { option
        with_tolerance => tolerance: f32,
    }

    /// Matching pursuit with at most `k` atoms.
    pub fn mp(k: usize, refit: bool) -> Self {
        Self {
            coder: Coder::Mp { refit },
            ..Self::omp(k)
        }
    }

    /// min(k, d, K): the most atoms a sample may use with K atoms of dimension d.
    pub fn max_atoms(&self, n_atoms: usize, d: usize) -> usize {
        self.k.min(d).min(n_atoms)
    }

    /// Checks the options; `d` and `n_atoms` describe the dictionary.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::InvalidArgument(
                "k = 0: every sample must be allowed at least one atom".into(),
            ));
        }
        if let Some(t) = self.tolerance {
            if !(0.0..=1.0).contains(&t) {
                return Err(Error::InvalidArgument(format!(
                    "tolerance {t} is not a relative residual energy in [0, 1]"
                )));
            }
        }
        if !(self.min_correlation >= 0.0 && self.min_correlation.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "min_correlation {} must be finite and ≥ 0",
                self.min_correlation
            )));
        }
        if !(self.min_pivot > 0.0 && self.min_pivot < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "min_pivot {} must lie in (0, 1)",
                self.min_pivot
            )));
        }
        Ok(())
    }
}

/// Codes in a fixed-width layout: each of `n` rows has `k` slots of (atom index, coefficient);
/// unused slots hold index −1 and value 0.0. Row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseCodes {
    /// Number of samples.
    pub n: usize,
    /// Slots per sample.
    pub k: usize,
    /// [n, k] atom indices, −1 for an empty slot.
    pub indices: Vec<i32>,
    /// [n, k] coefficients, 0.0 for an empty slot.
    pub values: Vec<f32>,
    /// \[n\] ‖y − x·D‖² of each sample (of y after subtracting the mean, if any) as the coder
    /// computed it.
    pub residual_energy: Vec<f32>,
}

impl SparseCodes {
    /// The (atom, coefficient) pairs of row `i`, in the order the coder chose them.
    ///
    /// # Panics
    /// If `i >= n`, like slice indexing.
    pub fn row(&self, i: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let slots = i * self.k..(i + 1) * self.k;
        self.indices[slots.clone()]
            .iter()
            .zip(&self.values[slots])
            .filter(|(&j, _)| j >= 0)
            .map(|(&j, &v)| (j as usize, v))
    }

    /// Atoms used by row `i` (its L0). Panics if `i >= n`.
    pub fn row_nnz(&self, i: usize) -> usize {
        self.row(i).count()
    }

    /// Used slots over all rows.
    pub fn nnz(&self) -> usize {
        self.indices.iter().filter(|&&j| j >= 0).count()
    }

    /// Mean atoms per sample.
    pub fn mean_l0(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.nnz() as f64 / self.n as f64
        }
    }

    /// Dense [n, n_atoms] coefficients; for small cases (tests, plots).
    pub fn to_dense(&self, n_atoms: usize) -> Result<Vec<f32>> {
        self.check_indices(n_atoms)?;
        let mut dense = vec![0.0; self.n * n_atoms];
        for i in 0..self.n {
            for (j, v) in self.row(i) {
                dense[i * n_atoms + j] += v;
            }
        }
        Ok(dense)
    }

    pub(crate) fn check_indices(&self, n_atoms: usize) -> Result<()> {
        if let Some(pos) = self.indices.iter().position(|&j| j >= n_atoms as i32) {
            return Err(Error::InvalidArgument(format!(
                "codes row {} slot {} names atom {} but the dictionary has {n_atoms} atoms",
                pos / self.k.max(1),
                pos % self.k.max(1),
                self.indices[pos]
            )));
        }
        Ok(())
    }
}

impl SparseCodes {
    /// Appends the rows of packed code words (k indices, k value bits, the residual energy's
    /// bits per row: see `gpu::omp::code_words`).
    pub(crate) fn push_words(&mut self, words: &[u32]) {
        let k = self.k;
        for row in words.chunks(2 * k + 1) {
            self.indices.extend(row[..k].iter().map(|&w| w as i32));
            self.values
                .extend(row[k..2 * k].iter().map(|&w| f32::from_bits(w)));
            self.residual_energy.push(f32::from_bits(row[2 * k]));
        }
    }
}

/// The first non-finite value of a row-major [rows, cols] slice, as an error.
pub(crate) fn check_finite(what: &str, data: &[f32], cols: usize) -> Result<()> {
    if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: what.to_string(),
            row: pos / cols.max(1),
            col: pos % cols.max(1),
            value: data[pos],
        });
    }
    Ok(())
}
