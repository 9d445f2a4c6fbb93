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

mod groups;

use crate::data::ActivationSource;
use crate::error::{Error, Result};
use crate::gpu::{omp, GemmParams, Gpu, Matrix};
pub use groups::Groups;

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
        // Where the correlations' kernel differs from the Gram's (llvmpipe), it is built on a
        // second thread while this one uploads the dictionary, records its Gram matrix and
        // builds the coding pipelines (a 16-row encode's start-up 0.615 → 0.525 s).
        let prebuild = gpu.correlations_prebuild()?;
        let (dictionary, gram) = std::thread::scope(|scope| {
            let products = prebuild.map(|build| scope.spawn(build));
            let dictionary = gpu.matrix(n_atoms, d, &normalised)?;
            let gram = gpu.gram(&dictionary)?;
            gpu.prepare_coding(n_atoms, d, &options.coding)?;
            if let Some(products) = products {
                products
                    .join()
                    .unwrap_or_else(|payload| std::panic::resume_unwind(payload))?;
            }
            Ok::<_, Error>((dictionary, gram))
        })?;
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
                + omp::scratch_words(&self.gpu, self.n_atoms, k)
                + omp::texture_words(self.n_atoms, k, self.options.coding.coder)
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
            self.centre_into(chunk, &mut host, &mut host_norms);
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
            codes.push_words(&words_out);
        }
        Ok(codes)
    }

    /// `samples` (whole rows) minus the mean, into the front of `host`, and their squared
    /// norms into the front of `norms`.
    fn centre_into(&self, samples: &[f32], host: &mut [f32], norms: &mut [f32]) {
        let d = self.d;
        for (r, sample) in samples.chunks(d).enumerate() {
            let dst = &mut host[r * d..(r + 1) * d];
            match &self.mean {
                Some(mean) => {
                    for ((o, v), m) in dst.iter_mut().zip(sample).zip(mean) {
                        *o = v - m;
                    }
                }
                None => dst.copy_from_slice(sample),
            }
            norms[r] = dst.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32;
        }
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
