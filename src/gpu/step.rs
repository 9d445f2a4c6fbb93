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
use crate::coding::CodingOptions;
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

    /// The residual E = Y − X·D the last step left (after its update), [n, d].
    pub(crate) fn residual(&self) -> &Matrix {
        &self.coded.residual
    }
}

/// What a training step codes: rows from the host with their squared norms, or the residual
/// another step left on the device (a Matryoshka group's input: what the groups before it left),
/// copied on the device with its norms computed there, so no residual goes through the host.
#[derive(Clone, Copy)]
pub(crate) enum StepInput<'a> {
    Host {
        samples: &'a [f32],
        norms: &'a [f32],
    },
    Residual(&'a Matrix),
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

/// What a batch of B samples needs of the limit that bounds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// `fixed + per_sample·B` bytes.
    Bytes { per_sample: u64, fixed: u64 },
    /// Loop iterations of the update of an atom all B samples use.
    /// `resident`: texels per invocation of the resident item kernels, where they run.
    UpdateLoop {
        d: usize,
        item_users: usize,
        resident: Option<usize>,
    },
    /// B itself (a count of workgroups).
    Samples,
}

/// One bound on the batch: the largest batch it allows, the limit's name and value, what it
/// bounds and what one sample needs of it.
type Bound = (u64, &'static str, u64, String, Need);

/// The largest training batch a device takes, and the limit that bounds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BatchFit {
    /// Samples.
    pub largest: usize,
    /// The wgpu limit that bounds it.
    pub limit_name: &'static str,
    /// That limit's value.
    pub limit: u64,
    /// What reaches the limit first, e.g. `correlations [B, K] in one binding`.
    pub bound_by: String,
    /// How that grows with the batch.
    pub need: Need,
}

impl BatchFit {
    /// The error for a batch of `batch` samples (`asked` before evening out over `rows`), which
    /// does not fit: what it needs in the limit's own unit, and the largest batch that fits.
    pub(crate) fn exceeded(
        &self,
        batch: usize,
        asked: usize,
        rows: usize,
        (n_atoms, d, k): (usize, usize, usize),
    ) -> Error {
        let requested = match self.need {
            Need::Bytes { per_sample, fixed } => {
                fixed.saturating_add(per_sample.saturating_mul(batch as u64))
            }
            Need::UpdateLoop {
                d,
                item_users,
                resident,
            } => super::power::update_loop_iterations(batch as u64, d, item_users, resident),
            Need::Samples => batch as u64,
        };
        let evened = if asked == batch {
            String::new()
        } else {
            format!(", {asked} asked for and evened out over {rows} rows")
        };
        Error::ExceedsLimit {
            what: format!(
                "a training batch of {batch} samples{evened} at K = {n_atoms}, d = {d}, k = {k}: {}",
                self.bound_by
            ),
            requested,
            limit_name: self.limit_name,
            limit: self.limit,
            // Zero: not even one sample fits.
            largest_batch: (self.largest > 0).then_some(self.largest),
        }
    }
}

impl Gpu {
    /// The largest sample batch a training step takes on this device for K = `n_atoms` atoms of
    /// dimension `d` coded with `coding`. The kernels bind most step buffers whole, so each must
    /// fit one storage binding as well as `max_buffer_size`: samples and residual [B, d], code
    /// slots and user lists \[2Bk\], the update's slot order and user table \[4Bk\], packed
    /// codes [B, 2k + 1], atom counts; the correlations
    /// [B, K] must fit one buffer (the coding kernel binds them in row chunks). On llvmpipe the
    /// update's loop cap bounds the users of one atom (millions: they are spread over
    /// workgroups). When the dictionary itself does not fit (its atoms and the Gram matrix must
    /// each fit one buffer, bound in windows of whole rows, and the coding kernel must fit k),
    /// no batch does: `ExceedsLimit` naming what does not fit.
    pub fn max_train_batch(
        &self,
        n_atoms: usize,
        d: usize,
        coding: &CodingOptions,
    ) -> Result<usize> {
        self.train_batch_fit(n_atoms, d, coding)
            .map(|fit| fit.largest)
    }

    /// Checks that a [rows, cols] matrix fits one buffer and each of its rows one binding (the
    /// kernels bind such matrices in windows of whole rows); `what` names it in the error.
    pub(crate) fn check_matrix_fits(&self, rows: usize, cols: usize, what: &str) -> Result<()> {
        let what = format!("{what} {}", shape(rows, cols));
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::InvalidArgument(format!("{what} overflows")))?;
        self.buffer_bytes::<f32>(len, &what)?;
        self.check_row_fits(rows, cols)
    }

    /// The largest batch a training step takes and the limit that bounds it (see
    /// [`Gpu::max_train_batch`]).
    pub(crate) fn train_batch_fit(
        &self,
        n_atoms: usize,
        d: usize,
        coding: &CodingOptions,
    ) -> Result<BatchFit> {
        let k = coding.k;
        // What does not depend on the batch: atoms, atom memory and power iterates [K, d] and
        // the Gram matrix [K, K] (each one buffer, bound in windows of rows), the coding kernel.
        self.check_matrix_fits(n_atoms, d, "dictionary")?;
        self.check_matrix_fits(n_atoms, n_atoms, "Gram matrix")?;
        super::omp::check_coding_fits(self, n_atoms, d, coding)?;
        let (largest, limit_name, limit, bound_by, need) = self
            .batch_bounds(n_atoms, d, k)?
            .into_iter()
            .min_by_key(|b| b.0)
            .expect("bounds are never empty");
        let fit = BatchFit {
            largest: usize::try_from(largest).unwrap_or(usize::MAX),
            limit_name,
            limit,
            bound_by,
            need,
        };
        if fit.largest == 0 {
            return Err(fit.exceeded(1, 1, 1, (n_atoms, d, k)));
        }
        Ok(fit)
    }

    /// Every bound on the batch: (largest batch, limit name, limit, what it bounds, need).
    fn batch_bounds(&self, n_atoms: usize, d: usize, k: usize) -> Result<Vec<Bound>> {
        let limits = self.limits();
        let binding = limits.planned_binding_size.min(limits.max_buffer_size);
        let align = limits.binding_alignment();
        let chunk = super::sparse::CHUNK as u64;
        let bytes = |largest: u64, what: &str, per_sample: u64, fixed: u64| {
            (
                largest,
                "max_storage_buffer_binding_size",
                binding,
                format!("{what} in one binding"),
                Need::Bytes { per_sample, fixed },
            )
        };
        let words = binding / 4;
        let code_words = super::omp::code_words(k) as u64;
        let (n_atoms_64, d_64, k_64) = (n_atoms as u64, d as u64, k as u64);
        let groups = limits.max_compute_workgroups_per_dimension as u64;
        let mut bounds = vec![
            bytes(words / d_64, "samples and residual [B, d]", 4 * d_64, 0),
            // The code slots and user lists are [2Bk] words; slot_order and the user table
            // (the update's, 16 bytes per slot) [4Bk].
            bytes(
                words / (4 * k_64),
                "the update's slot order and user table [4Bk]",
                16 * k_64,
                0,
            ),
            bytes(
                super::buffer::rows_per_window(code_words as usize, binding, align) as u64,
                "packed codes [B, 2k + 1]",
                4 * code_words,
                align - 4,
            ),
            // ceil(B / CHUNK) rows of K counts.
            bytes(
                words / n_atoms_64 * chunk,
                "atom counts [B / 64, K]",
                4 * n_atoms_64 / chunk,
                4 * n_atoms_64,
            ),
            bytes(
                words.saturating_sub(n_atoms_64 + 1) / 2,
                "the metrics readback [K + 1 + 2B]",
                8,
                4 * (n_atoms_64 + 1),
            ),
            (
                (limits.max_buffer_size / 4) / n_atoms_64,
                "max_buffer_size",
                limits.max_buffer_size,
                "correlations [B, K]".into(),
                Need::Bytes {
                    per_sample: 4 * n_atoms_64,
                    fixed: 0,
                },
            ),
            (
                groups.saturating_mul(groups),
                "max_compute_workgroups_per_dimension (squared: one workgroup per sample)",
                groups,
                "one coding dispatch".into(),
                Need::Samples,
            ),
        ];
        if let Some(most) = self.max_update_batch(d) {
            bounds.push((
                most as u64,
                "max_loop_iterations (llvmpipe's per-invocation loop cap)",
                limits.max_loop_iterations.unwrap_or(0),
                "the update of an atom every sample uses".into(),
                Need::UpdateLoop {
                    d,
                    item_users: self.update_item_users(d)?,
                    resident: self.resident_update_texels(d),
                },
            ));
        }
        Ok(bounds)
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

    /// Codes `input` [n, d] (host rows with their squared norms, or a residual on the device)
    /// with `atoms` and updates the atoms on them, carrying the atom `memory` [K, d] (see
    /// [`Gpu::ksvd_update_with_memory`]).
    /// `gram` is scratch [K, K] (recomputed: the atoms changed since the last step). With
    /// `profile`, the products are submitted and waited for separately so their time is known.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn train_step(
        &self,
        atoms: &mut Matrix,
        memory: &Matrix,
        gram: &mut Matrix,
        buffers: &mut StepBuffers,
        input: StepInput<'_>,
        coding: &CodingOptions,
        update: &UpdateOptions,
        profile: bool,
    ) -> Result<StepOutput> {
        check_step(atoms, gram, buffers, input)?;
        let (n_atoms, n) = (atoms.rows(), buffers.n);
        let mut out = StepOutput::default();
        // Products and coding: one submission (two with `profile`), the metrics read back.
        let started = Instant::now();
        let mut encoder = self.encoder("training step: coding");
        match input {
            StepInput::Host { samples, norms } => {
                self.write(&buffers.coded.samples.data, samples)?;
                self.write(&buffers.norms, norms)?;
            }
            StepInput::Residual(residual) => {
                let bytes = 4 * (residual.rows() * residual.cols()) as u64;
                if bytes > 0 {
                    self.scoped(|| {
                        encoder.copy_buffer_to_buffer(
                            &residual.data.buffer,
                            0,
                            &buffers.coded.samples.data.buffer,
                            0,
                            bytes,
                        );
                        Ok(())
                    })?;
                    self.record_row_energy(&mut encoder, &buffers.coded.samples, &buffers.norms)?;
                }
            }
        }
        self.record_gemm(&mut encoder, &GemmParams::abt(), atoms, atoms, gram)?;
        let (y, alpha) = (&buffers.coded.samples, &mut buffers.alpha);
        self.record_gemm(&mut encoder, &GemmParams::abt(), y, atoms, alpha)?;
        if profile {
            self.submit(encoder)?;
            self.wait()?;
            out.gemm_s = started.elapsed().as_secs_f64();
            encoder = self.encoder("training step: coding");
        }
        let coding_started = Instant::now();
        self.record_coding(&mut encoder, atoms, gram, buffers, coding)?;
        let words = self.submit_and_read(encoder, &buffers.readback, n_atoms + 1 + 2 * n)?;
        out.coding_s = coding_started.elapsed().as_secs_f64();
        out.usage = words[..=n_atoms].windows(2).map(|w| w[1] - w[0]).collect();
        for pair in words[n_atoms + 1..].chunks_exact(2) {
            out.residual_energy.push(f32::from_bits(pair[0]).max(0.0));
            out.l0.push(f32::from_bits(pair[1]) as u32);
        }
        // The update, from the residual and user lists the coding left on the device.
        let update_started = Instant::now();
        self.submit_atom_batches(atoms, memory, &buffers.coded, update, &out.usage)?;
        self.wait()?;
        out.update_s = update_started.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Records the coding of the batch whose correlations `buffers.alpha` hold, the unpacking
    /// of its codes, its residual and user lists, and the copies of the user counts and row
    /// metrics (‖e‖², L0) into the readback buffer.
    fn record_coding(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        atoms: &Matrix,
        gram: &Matrix,
        buffers: &StepBuffers,
        coding: &CodingOptions,
    ) -> Result<()> {
        let (n_atoms, d, n) = (atoms.rows(), atoms.cols(), buffers.n);
        self.record_sparse_code(
            encoder,
            d,
            gram,
            &buffers.alpha,
            &buffers.norms,
            n,
            coding,
            &buffers.words,
        )?;
        self.record_unpack_codes(
            encoder,
            &buffers.words,
            &buffers.coded.codes,
            &buffers.row_stats,
        )?;
        self.record_batch_residual(encoder, atoms, &buffers.coded)?;
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
        })
    }
}

/// The step's input and norms hold the batch; the Gram scratch is [K, K].
fn check_step(
    atoms: &Matrix,
    gram: &Matrix,
    buffers: &StepBuffers,
    input: StepInput<'_>,
) -> Result<()> {
    let (n_atoms, d, n) = (atoms.rows(), atoms.cols(), buffers.n);
    match input {
        StepInput::Host { samples, norms } if samples.len() != n * d || norms.len() != n => {
            return Err(Error::DataLength {
                what: format!("training step samples (and {} norms)", norms.len()),
                rows: n,
                cols: d,
                expected: n * d,
                actual: samples.len(),
            });
        }
        StepInput::Residual(residual) if residual.rows() != n || residual.cols() != d => {
            return Err(Error::ShapeMismatch {
                op: "training step (input residual vs batch)".into(),
                left: residual.shape(),
                right: format!("[{n}, {d}]"),
            });
        }
        _ => {}
    }
    if gram.rows() != n_atoms || gram.cols() != n_atoms {
        return Err(Error::ShapeMismatch {
            op: "training step (Gram scratch vs atoms)".into(),
            left: gram.shape(),
            right: atoms.shape(),
        });
    }
    Ok(())
}
