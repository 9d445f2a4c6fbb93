//! Sparse coding API: an [`Encoder`] built once from a dictionary codes any number of samples
//! into [`SparseCodes`] on the GPU, streaming them in batches.
//!
//! ```no_run
//! use dbksvd::encode::{CodingOptions, Encoder, EncoderOptions};
//! use dbksvd::gpu::Gpu;
//! # fn main() -> dbksvd::Result<()> {
//! let gpu = Gpu::new()?;
//! let atoms = vec![1.0, 0.0, 0.0, 1.0]; // K = 2 atoms of d = 2
//! let encoder = Encoder::new(&gpu, &atoms, 2, 2, EncoderOptions::new(CodingOptions::omp(1)))?;
//! let codes = encoder.encode(&[3.0, 0.5])?;
//! assert_eq!(codes.row(0).collect::<Vec<_>>(), vec![(0, 3.0)]);
//! let approx = encoder.reconstruct(&codes)?;
//! # Ok(()) }
//! ```

use crate::coding::check_finite;
pub use crate::coding::{Coder, CodingOptions, GramPrecision, SparseCodes};
use crate::data::ActivationSource;
use crate::error::{Error, Result};
use crate::gpu::{omp, GemmParams, Gpu, Matrix};

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

/// How an [`Encoder`] codes and batches: [`EncoderOptions::new`] and the `with_*` setters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct EncoderOptions {
    /// Coder, k and stopping rules.
    pub coding: CodingOptions,
    /// Samples per GPU batch; `None` picks the largest that fits `memory_budget` and the device.
    pub batch_size: Option<usize>,
    /// Device memory for one batch's buffers (samples, correlations, codes), in bytes.
    pub memory_budget: u64,
}

impl EncoderOptions {
    /// The coding options with automatic batching in a 256 MiB budget.
    pub fn new(coding: CodingOptions) -> Self {
        Self {
            coding,
            batch_size: None,
            memory_budget: 256 << 20,
        }
    }

    with_setters! {
        with_memory_budget => memory_budget: u64,
    }

    with_setters! { option
        with_batch_size => batch_size: usize,
    }
}

/// What an [`Encoder`] codes: rows in memory, or every row of an activation source, streamed
/// in batches (a source larger than memory is read a batch at a time; the codes are kept).
/// Slices, vectors and arrays of f32 and any [`ActivationSource`] convert into it.
#[derive(Clone, Copy)]
pub enum Samples<'s> {
    /// Rows [n, d], row-major (n = length / d).
    Rows(&'s [f32]),
    /// Every row of a source, in order.
    Source(&'s dyn ActivationSource),
}

impl<'s> From<&'s [f32]> for Samples<'s> {
    fn from(rows: &'s [f32]) -> Self {
        Samples::Rows(rows)
    }
}

impl<'s> From<&'s Vec<f32>> for Samples<'s> {
    fn from(rows: &'s Vec<f32>) -> Self {
        Samples::Rows(rows)
    }
}

impl<'s, const N: usize> From<&'s [f32; N]> for Samples<'s> {
    fn from(rows: &'s [f32; N]) -> Self {
        Samples::Rows(rows)
    }
}

impl<'s, S: ActivationSource + 's> From<&'s S> for Samples<'s> {
    fn from(source: &'s S) -> Self {
        Samples::Source(source)
    }
}

impl<'s> From<&'s dyn ActivationSource> for Samples<'s> {
    fn from(source: &'s dyn ActivationSource) -> Self {
        Samples::Source(source)
    }
}

/// How [`Encoder::encode_with`] codes: [`EncodeOptions::default`] (every group, no timing)
/// and the `with_*` setters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncodeOptions {
    /// Code with the first `prefix` Matryoshka groups only: the codes keep all k slots, those
    /// of later groups empty (index −1), and the residual energy is what the prefix leaves.
    /// Without groups it must be 1. `None`: every group.
    ///
    /// Each group codes (with its own k, and the options' tolerance and floors applied to its
    /// input) the residual of the support chosen so far, refitted by least squares over that
    /// whole support; training passes each group the residual without that refit, which
    /// measured the same (0.3045 against 0.3068 FVU at K = 512) at a host cost per batch.
    pub prefix: Option<usize>,
    /// Time the phases ([`Encoded::profile`]). Each batch is then submitted in two parts
    /// (correlations, then coding) with a wait between, so it runs a little slower; for
    /// benchmarks and diagnostics. Not for Matryoshka encoders (they code group by group).
    pub profile: bool,
}

impl EncodeOptions {
    with_setters! { option
        with_prefix => prefix: usize,
    }

    with_setters! {
        with_profile => profile: bool,
    }
}

/// What [`Encoder::encode_with`] returns.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Encoded {
    /// The codes, k slots per row.
    pub codes: SparseCodes,
    /// The phases' times when [`EncodeOptions::profile`] asked for them, else zeros.
    pub profile: EncodeProfile,
}

/// Wall-clock seconds per phase of a profiled [`Encoder::encode_with`], summed over batches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EncodeProfile {
    /// Host preparation and upload of the samples plus the correlations GEMM Y·Dᵀ.
    pub correlations_s: f64,
    /// The sparse-coding kernel plus the readback of the codes.
    pub coding_s: f64,
    /// Batches run.
    pub batches: usize,
}

/// Sparse coder for one dictionary: normalised atoms and their Gram matrix live on the GPU.
pub struct Encoder {
    gpu: Gpu,
    atoms: Vec<f32>,
    n_atoms: usize,
    d: usize,
    dictionary: Matrix,
    gram: Matrix,
    mean: Option<Vec<f32>>,
    options: EncoderOptions,
    /// Matryoshka groups, coded in order on the residual (see [`Encoder::with_groups`]).
    groups: Option<GroupCoders>,
}

/// One coder per Matryoshka group, and the groups.
struct GroupCoders {
    groups: Groups,
    coders: Vec<Encoder>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("n_atoms", &self.n_atoms)
            .field("d", &self.d)
            .field("centred", &self.mean.is_some())
            .field("options", &self.options)
            .field("groups", &self.groups.as_ref().map(|g| &g.groups))
            .finish()
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

/// `atoms` (rows of width `d`) scaled to unit norm; a non-finite value or a zero row is an error
/// naming `what` and the row.
pub(crate) fn unit_rows(what: &str, atoms: &[f32], d: usize) -> Result<Vec<f32>> {
    check_finite(what, atoms, d)?;
    let mut normalised = atoms.to_vec();
    for (row, atom) in normalised.chunks_mut(d).enumerate() {
        let norm = atom
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "{what} atom {row} has norm {norm}: atoms must be nonzero"
            )));
        }
        atom.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
    }
    Ok(normalised)
}

impl Encoder {
    /// Builds the coder for `atoms` [n_atoms, d] (row-major). Atoms are normalised to unit norm; a
    /// zero or non-finite atom is an error naming its row.
    pub fn new(
        gpu: &Gpu,
        atoms: &[f32],
        n_atoms: usize,
        d: usize,
        options: EncoderOptions,
    ) -> Result<Self> {
        options.coding.validate()?;
        if n_atoms == 0 || d == 0 {
            return Err(Error::InvalidArgument(format!(
                "dictionary [{n_atoms}, {d}] is empty"
            )));
        }
        if atoms.len() != n_atoms * d {
            return Err(Error::DataLength {
                what: "dictionary".into(),
                rows: n_atoms,
                cols: d,
                expected: n_atoms * d,
                actual: atoms.len(),
            });
        }
        if options.batch_size == Some(0) {
            return Err(Error::InvalidArgument("batch size 0".into()));
        }
        let normalised = unit_rows("dictionary", atoms, d)?;
        let dictionary = gpu.matrix(n_atoms, d, &normalised)?;
        let gram = gpu.gram(&dictionary)?;
        Ok(Self {
            gpu: gpu.clone(),
            atoms: normalised,
            n_atoms,
            d,
            dictionary,
            gram,
            mean: None,
            options,
            groups: None,
        })
    }

    /// Codes a Matryoshka dictionary: group by group in the order of `groups`, each group's
    /// atoms coding the residual the groups before it left, with its share of k
    /// ([`Groups::split_k`]); a row's slots hold the groups' codes in order. Without this, the
    /// coder would pick from all atoms at once, as for a plain dictionary.
    pub fn with_groups(mut self, groups: Groups) -> Result<Self> {
        let k = self.options.coding.k;
        groups.validate_for(self.n_atoms, k)?;
        let shares = groups.split_k(k)?;
        let coders = (0..groups.len())
            .map(|g| {
                let range = groups.range(g);
                let mut options = self.options;
                options.coding.k = shares[g];
                let atoms = &self.atoms[range.start * self.d..range.end * self.d];
                Encoder::new(&self.gpu, atoms, range.len(), self.d, options)
            })
            .collect::<Result<Vec<_>>>()?;
        self.groups = Some(GroupCoders { groups, coders });
        Ok(self)
    }

    /// The Matryoshka groups, if the encoder codes by groups.
    pub fn groups(&self) -> Option<&Groups> {
        self.groups.as_ref().map(|g| &g.groups)
    }

    /// Subtracts `mean` (SAELens' `b_dec`) from samples before coding and adds it back in
    /// [`Encoder::reconstruct`].
    pub fn with_mean(mut self, mean: Vec<f32>) -> Result<Self> {
        if mean.len() != self.d {
            return Err(Error::ShapeMismatch {
                op: "encoder mean (mean vs atoms)".into(),
                left: format!("[{}]", mean.len()),
                right: crate::error::shape(self.n_atoms, self.d),
            });
        }
        check_finite("mean", &mean, self.d)?;
        self.mean = Some(mean);
        Ok(self)
    }

    /// The normalised atoms [K, d].
    pub fn atoms(&self) -> &[f32] {
        &self.atoms
    }

    /// Number of atoms K.
    pub fn n_atoms(&self) -> usize {
        self.n_atoms
    }

    /// Sample dimension d.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Samples per GPU batch for `n` samples: the user's choice if it fits the device, else the
    /// largest that fits both the memory budget and the device's bindings.
    pub fn batch_size(&self, n: usize) -> Result<usize> {
        let k = self.options.coding.k;
        let device_max = omp::max_batch(&self.gpu, self.n_atoms, k);
        // Samples, correlations, norms, codes and their staging copy, the coding state and its
        // textures (allocated for at most one chunk of rows; counted whole to stay on the safe
        // side), and the samples' texture where the products read textures.
        let per_sample = 4
            * (self.d
                + self.n_atoms
                + 1
                + 2 * omp::code_words(k)
                + omp::scratch_words(self.n_atoms, k)
                + omp::texture_words(self.n_atoms, k)
                + self.d.next_multiple_of(4)
                + 4) as u64;
        let budget_max = (self.options.memory_budget / per_sample).max(1) as usize;
        match self.options.batch_size {
            Some(b) if b > device_max => Err(Error::ExceedsLimit {
                what: format!(
                    "coding batch for K = {}, k = {k} (samples; correlations and codes each in \
                     one buffer of {} bytes)",
                    self.n_atoms,
                    self.gpu.limits().max_buffer_size
                ),
                requested: b as u64,
                limit_name: "max_buffer_size",
                limit: self.gpu.limits().max_buffer_size,
                largest_batch: Some(device_max),
            }),
            Some(b) => Ok(b.min(n.max(1))),
            None => Ok(device_max.min(budget_max).min(n.max(1))),
        }
    }

    /// Codes `samples` (rows [n, d] in memory, or every row of an [`ActivationSource`]) with
    /// every group, streaming batches through the GPU: one submission and one readback of the
    /// codes per batch (per group, for a Matryoshka encoder). Rows whose length is not a
    /// multiple of d, a source of another dimension, or a non-finite value are errors.
    pub fn encode<'s>(&self, samples: impl Into<Samples<'s>>) -> Result<SparseCodes> {
        Ok(self.encode_with(samples, EncodeOptions::default())?.codes)
    }

    /// [`Encoder::encode`] with options: a Matryoshka prefix, phase timing.
    pub fn encode_with<'s>(
        &self,
        samples: impl Into<Samples<'s>>,
        options: EncodeOptions,
    ) -> Result<Encoded> {
        let count = self.groups.as_ref().map_or(1, |g| g.coders.len());
        let prefix = options.prefix.unwrap_or(count);
        if prefix == 0 || prefix > count {
            return Err(Error::InvalidArgument(format!(
                "a prefix of {prefix} groups: the encoder has {count}"
            )));
        }
        if options.profile && self.groups.is_some() {
            return Err(Error::InvalidArgument(
                "profiling times one coding pass; a Matryoshka encoder codes group by group \
                 (profile each group's dictionary instead)"
                    .into(),
            ));
        }
        let mut profile = EncodeProfile::default();
        let timing = options.profile.then_some(&mut profile);
        let codes = match samples.into() {
            Samples::Rows(rows) => self.encode_rows(rows, prefix, timing)?,
            Samples::Source(source) => self.encode_source(source, prefix, timing)?,
        };
        Ok(Encoded { codes, profile })
    }

    /// Every row of `source`, in batches the device holds.
    fn encode_source(
        &self,
        source: &dyn ActivationSource,
        prefix: usize,
        mut profile: Option<&mut EncodeProfile>,
    ) -> Result<SparseCodes> {
        if source.dim() != self.d {
            return Err(Error::ShapeMismatch {
                op: format!("encoding {} (data vs dictionary)", source.name()),
                left: format!("d = {}", source.dim()),
                right: format!("d = {}", self.d),
            });
        }
        let k = self.options.coding.k;
        let mut codes = SparseCodes {
            n: 0,
            k,
            indices: Vec::new(),
            values: Vec::new(),
            residual_energy: Vec::new(),
        };
        let batch = self.batch_size(source.rows())?;
        let order = crate::data::BatchOrder::sequential(batch);
        for part in crate::data::Batches::new(source, &order, 0)? {
            let part = self.encode_rows(&part?.data, prefix, profile.as_deref_mut())?;
            codes.n += part.n;
            codes.indices.extend(part.indices);
            codes.values.extend(part.values);
            codes.residual_energy.extend(part.residual_energy);
        }
        Ok(codes)
    }

    /// Rows in memory, with the first `prefix` groups.
    fn encode_rows(
        &self,
        samples: &[f32],
        prefix: usize,
        profile: Option<&mut EncodeProfile>,
    ) -> Result<SparseCodes> {
        match &self.groups {
            Some(groups) => self.encode_groups(samples, groups, prefix),
            None => self.encode_inner(samples, profile),
        }
    }

    /// Rows of `samples` [n, d]: a length that is not a multiple of d, or a non-finite value,
    /// is an error.
    fn rows_of(&self, samples: &[f32]) -> Result<usize> {
        let d = self.d;
        if !samples.len().is_multiple_of(d) {
            return Err(Error::ShapeMismatch {
                op: "encode (samples vs dictionary)".into(),
                left: format!("[{} values]", samples.len()),
                right: format!("[?, {d}] (d from the dictionary)"),
            });
        }
        check_finite("samples", samples, d)?;
        Ok(samples.len() / d)
    }

    fn encode_groups(
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

    fn encode_inner(
        &self,
        samples: &[f32],
        mut profile: Option<&mut EncodeProfile>,
    ) -> Result<SparseCodes> {
        let d = self.d;
        let n = self.rows_of(samples)?;
        let k = self.options.coding.k;
        let words = omp::code_words(k);
        let mut codes = SparseCodes {
            n,
            k,
            indices: Vec::with_capacity(n * k),
            values: Vec::with_capacity(n * k),
            residual_energy: Vec::with_capacity(n),
        };
        if n == 0 {
            return Ok(codes);
        }
        let batch = self.batch_size(n)?;
        let gpu = &self.gpu;
        let y = gpu.zeros(batch, d)?;
        let alpha = gpu.zeros(batch, self.n_atoms)?;
        let norms = gpu.zeroed::<f32>(batch)?;
        let out = gpu.zeroed::<u32>(batch * words)?;
        let mut host = vec![0.0f32; batch * d];
        let mut host_norms = vec![0.0f32; batch];

        for start in (0..n).step_by(batch) {
            let started = std::time::Instant::now();
            let rows = batch.min(n - start);
            let chunk = &samples[start * d..(start + rows) * d];
            for (r, sample) in chunk.chunks(d).enumerate() {
                let dst = &mut host[r * d..(r + 1) * d];
                match &self.mean {
                    Some(mean) => {
                        for ((o, v), m) in dst.iter_mut().zip(sample).zip(mean) {
                            *o = v - m;
                        }
                    }
                    None => dst.copy_from_slice(sample),
                }
                host_norms[r] = dst.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32;
            }
            gpu.write(&y.data, &host[..rows * d])?;
            gpu.write(&norms, &host_norms[..rows])?;

            let y_rows = y.prefix(rows);
            let mut alpha_rows = alpha.prefix(rows);
            let mut encoder = gpu.encoder("encode batch");
            gpu.record_gemm(
                &mut encoder,
                &GemmParams::abt(),
                &y_rows,
                &self.dictionary,
                &mut alpha_rows,
            )?;
            if let Some(p) = profile.as_deref_mut() {
                gpu.submit(encoder)?;
                gpu.wait()?;
                p.correlations_s += started.elapsed().as_secs_f64();
                encoder = gpu.encoder("encode batch");
            }
            let coding_started = std::time::Instant::now();
            gpu.record_sparse_code(
                &mut encoder,
                d,
                &self.gram,
                &alpha_rows,
                &norms,
                rows,
                &self.options.coding,
                &out,
            )?;
            let words_out = gpu.submit_and_read(encoder, &out, rows * words)?;
            if let Some(p) = profile.as_deref_mut() {
                p.coding_s += coding_started.elapsed().as_secs_f64();
                p.batches += 1;
            }
            for row in words_out.chunks(words) {
                codes.indices.extend(row[..k].iter().map(|&w| w as i32));
                codes
                    .values
                    .extend(row[k..2 * k].iter().map(|&w| f32::from_bits(w)));
                codes.residual_energy.push(f32::from_bits(row[2 * k]));
            }
        }
        Ok(codes)
    }

    /// x·D (+ mean) for every row of `codes`: [n, d].
    pub fn reconstruct(&self, codes: &SparseCodes) -> Result<Vec<f32>> {
        codes.check_indices(self.n_atoms)?;
        let d = self.d;
        let mut out = vec![0.0f32; codes.n * d];
        for (i, row) in out.chunks_mut(d).enumerate() {
            if let Some(mean) = &self.mean {
                row.copy_from_slice(mean);
            }
            for (j, v) in codes.row(i) {
                for (o, a) in row.iter_mut().zip(&self.atoms[j * d..(j + 1) * d]) {
                    *o += v * a;
                }
            }
        }
        Ok(out)
    }
}
