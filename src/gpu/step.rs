//! One DB-KSVD training step on the device, composed from the kernel families: Gram and
//! correlations (gemm), sparse coding (omp), unpacking, residual and code transpose (sparse), and
//! the atom-batched power-iteration update (power).
//!
//! Two submissions per sample batch: coding with the residual and transpose, whose readback is
//! the per-sample metrics and the atom usage (K + 1 + 2n words), then the atom batches. Codes,
//! residual and dictionary never leave the device.

use std::time::Instant;

use super::power::CodedBatch;
use super::{GemmParams, Gpu, GpuBuffer, Matrix, UpdateOptions};
use crate::encode::CodingOptions;
use crate::error::{shape, Error, Result};

/// Device buffers for sample batches of one size.
pub(crate) struct StepBuffers {
    n: usize,
    coded: CodedBatch,
    alpha: Matrix,
    norms: GpuBuffer<f32>,
    words: GpuBuffer<u32>,
    row_stats: GpuBuffer<f32>,
    /// user_start [K + 1] then row_stats [2n], copied together for one readback.
    readback: GpuBuffer<u32>,
}

impl StepBuffers {
    /// Samples per batch these buffers hold.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// The coded batch of the last step (for atom re-seeding and duplicate purges).
    pub(crate) fn coded(&mut self) -> &mut CodedBatch {
        &mut self.coded
    }
}

/// What one step reports: per-sample metrics of the codes (before the update) and atom usage.
#[derive(Clone, Debug, Default)]
pub(crate) struct StepOutput {
    /// ‖y − x·D‖² per sample, as the coder computed it.
    pub residual_energy: Vec<f32>,
    /// Nonzeros per sample.
    pub l0: Vec<u32>,
    /// Samples using each atom.
    pub usage: Vec<u32>,
    /// Seconds in the products (only split from `coding_s` when profiling).
    pub gemm_s: f64,
    /// Seconds in sparse coding, residual and transpose (including the products when not profiling).
    pub coding_s: f64,
    /// Seconds in the atom update.
    pub update_s: f64,
}

/// The largest training batch a device takes, and the limit that bounds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BatchFit {
    /// Samples.
    pub largest: usize,
    /// The wgpu limit that bounds it.
    pub limit_name: &'static str,
    /// That limit's value.
    pub limit: u64,
    /// What reaches the limit first, e.g. `correlations [B, K]`.
    pub bound_by: String,
}

impl BatchFit {
    /// The error for a batch of `requested` samples, which does not fit.
    pub(crate) fn exceeded(&self, requested: usize, n_atoms: usize, d: usize, k: usize) -> Error {
        Error::ExceedsLimit {
            what: format!(
                "a training batch at K = {n_atoms}, d = {d}, k = {k} (samples; {} bounds it)",
                self.bound_by
            ),
            requested: requested as u64,
            limit_name: self.limit_name,
            limit: self.limit,
            largest_batch: Some(self.largest),
        }
    }
}

impl Gpu {
    /// The largest sample batch a training step takes on this device for K = `n_atoms` atoms of
    /// dimension `d` coded with `coding`. Every step buffer must fit `max_buffer_size` (samples
    /// and residual [B, d], correlations [B, K], codes [B, 2k + 1], user lists [2Bk]); the
    /// correlations and codes must each fit one binding for the coding kernel; on llvmpipe the
    /// update's loop cap bounds the users of one atom. When the dictionary itself does not fit
    /// (its atoms, its Gram matrix, the coding kernel for k), no batch does: `ExceedsLimit`
    /// naming what does not fit.
    pub fn max_train_batch(
        &self,
        n_atoms: usize,
        d: usize,
        coding: &CodingOptions,
    ) -> Result<usize> {
        self.train_batch_fit(n_atoms, d, coding)
            .map(|fit| fit.largest)
    }

    pub(crate) fn train_batch_fit(
        &self,
        n_atoms: usize,
        d: usize,
        coding: &CodingOptions,
    ) -> Result<BatchFit> {
        let k = coding.k;
        let square = |rows: usize, cols: usize, what: &str| -> Result<()> {
            let len = rows.checked_mul(cols).ok_or_else(|| {
                Error::InvalidArgument(format!("{what} {} overflows", shape(rows, cols)))
            })?;
            self.buffer_bytes::<f32>(len, &format!("{what} {}", shape(rows, cols)))?;
            self.check_row_fits(rows, cols)
        };
        // What does not depend on the batch: atoms, atom memory and power iterates [K, d], the
        // Gram matrix [K, K], and the coding kernel.
        square(n_atoms, d, "dictionary")?;
        square(n_atoms, n_atoms, "Gram matrix")?;
        super::omp::check_coding_fits(self, n_atoms, d, coding)?;

        let limits = self.limits();
        let words = (self.limits().max_buffer_size / 4) as usize;
        let widest = [
            (d, "samples and residual [B, d]"),
            (n_atoms, "correlations [B, K]"),
            (super::omp::code_words(k), "packed codes [B, 2k + 1]"),
            (2 * k, "code slots [2Bk]"),
        ];
        let mut bounds: Vec<(usize, &'static str, u64, String)> = widest
            .iter()
            .map(|&(width, what)| {
                (
                    words / width.max(1),
                    "max_buffer_size",
                    limits.max_buffer_size,
                    what.to_string(),
                )
            })
            .collect();
        bounds.push((
            (words / n_atoms.max(1)).saturating_mul(super::sparse::CHUNK as usize),
            "max_buffer_size",
            limits.max_buffer_size,
            format!("atom counts [B/{}, K]", super::sparse::CHUNK),
        ));
        bounds.push((
            words.saturating_sub(n_atoms + 1) / 2,
            "max_buffer_size",
            limits.max_buffer_size,
            "the metrics readback [K + 1 + 2B]".into(),
        ));
        bounds.push((
            super::omp::max_batch(self, n_atoms, k),
            "max_storage_buffer_binding_size",
            limits.planned_binding_size,
            "one coding dispatch (correlations and codes in one binding each)".into(),
        ));
        if let Some(most) = self.max_update_batch(d) {
            bounds.push((
                most,
                "max_loop_iterations (llvmpipe's per-invocation loop cap)",
                limits.max_loop_iterations.unwrap_or(0),
                "the update of an atom every sample uses".into(),
            ));
        }
        let (largest, limit_name, limit, bound_by) = bounds
            .into_iter()
            .min_by_key(|b| b.0)
            .expect("bounds are never empty");
        if largest == 0 {
            return Err(Error::ExceedsLimit {
                what: format!(
                    "one training sample at K = {n_atoms}, d = {d}, k = {k} ({bound_by})"
                ),
                requested: 1,
                limit_name,
                limit,
                largest_batch: None,
            });
        }
        Ok(BatchFit {
            largest,
            limit_name,
            limit,
            bound_by,
        })
    }

    /// Buffers for batches of `n` samples of dimension `d`, `k` slots, `n_atoms` atoms.
    pub(crate) fn step_buffers(
        &self,
        n: usize,
        d: usize,
        k: usize,
        n_atoms: usize,
    ) -> Result<StepBuffers> {
        let words = super::omp::code_words(k);
        Ok(StepBuffers {
            n,
            coded: self.empty_coded_batch(n, d, k, n_atoms)?,
            alpha: self.zeros(n, n_atoms)?,
            norms: self.zeroed(n.max(1))?,
            words: self.zeroed((n * words).max(1))?,
            row_stats: self.zeroed((2 * n).max(1))?,
            readback: self.zeroed(n_atoms + 1 + 2 * n)?,
        })
    }

    /// Codes `samples` [n, d] (squared norms `norms`) with `atoms` and updates the atoms on them,
    /// carrying the atom `memory` [K, d] (see [`Gpu::ksvd_update_with_memory`]).
    /// `gram` is scratch [K, K] (recomputed: the atoms changed since the last step). With
    /// `profile`, the products are submitted and waited for separately so their time is known.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn train_step(
        &self,
        atoms: &mut Matrix,
        memory: &Matrix,
        gram: &mut Matrix,
        buffers: &mut StepBuffers,
        samples: &[f32],
        norms: &[f32],
        coding: &CodingOptions,
        update: &UpdateOptions,
        profile: bool,
    ) -> Result<StepOutput> {
        let (n_atoms, d, n) = (atoms.rows(), atoms.cols(), buffers.n);
        if samples.len() != n * d || norms.len() != n {
            return Err(Error::DataLength {
                what: format!("training step samples (and {} norms)", norms.len()),
                rows: n,
                cols: d,
                expected: n * d,
                actual: samples.len(),
            });
        }
        if gram.rows() != n_atoms || gram.cols() != n_atoms {
            return Err(Error::ShapeMismatch {
                op: "training step (Gram scratch vs atoms)".into(),
                left: gram.shape(),
                right: atoms.shape(),
            });
        }
        let mut out = StepOutput::default();
        let started = Instant::now();
        self.write(&buffers.coded.samples.data, samples)?;
        self.write(&buffers.norms, norms)?;
        let mut encoder = self.encoder("training step: coding");
        self.record_gemm(&mut encoder, &GemmParams::abt(), atoms, atoms, gram)?;
        self.record_gemm(
            &mut encoder,
            &GemmParams::abt(),
            &buffers.coded.samples,
            atoms,
            &mut buffers.alpha,
        )?;
        if profile {
            self.submit(encoder)?;
            self.wait()?;
            out.gemm_s = started.elapsed().as_secs_f64();
            encoder = self.encoder("training step: coding");
        }
        let coding_started = Instant::now();
        self.record_sparse_code(
            &mut encoder,
            d,
            gram,
            &buffers.alpha,
            &buffers.norms,
            n,
            coding,
            &buffers.words,
        )?;
        self.record_unpack_codes(
            &mut encoder,
            &buffers.words,
            &buffers.coded.codes,
            &buffers.row_stats,
        )?;
        self.record_batch_residual(&mut encoder, atoms, &buffers.coded)?;
        self.scoped(|| {
            encoder.copy_buffer_to_buffer(
                &buffers.coded.codes.user_start.buffer,
                0,
                &buffers.readback.buffer,
                0,
                4 * (n_atoms as u64 + 1),
            );
            if n > 0 {
                encoder.copy_buffer_to_buffer(
                    &buffers.row_stats.buffer,
                    0,
                    &buffers.readback.buffer,
                    4 * (n_atoms as u64 + 1),
                    8 * n as u64,
                );
            }
            Ok(())
        })?;
        let words = self.submit_and_read(encoder, &buffers.readback, n_atoms + 1 + 2 * n)?;
        out.coding_s = coding_started.elapsed().as_secs_f64();
        out.usage = words[..=n_atoms].windows(2).map(|w| w[1] - w[0]).collect();
        for pair in words[n_atoms + 1..].chunks_exact(2) {
            out.residual_energy.push(f32::from_bits(pair[0]).max(0.0));
            out.l0.push(f32::from_bits(pair[1]) as u32);
        }

        let update_started = Instant::now();
        self.submit_atom_batches(atoms, memory, &buffers.coded, update, &out.usage)?;
        self.wait()?;
        out.update_s = update_started.elapsed().as_secs_f64();
        Ok(out)
    }
}
