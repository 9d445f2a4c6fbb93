//! The KSVD dictionary update by atom-wise power iteration (`shaders/power.wgsl`), double-batched:
//! atoms in a seeded random order, in batches of `atom_batch` that update in parallel from the
//! same residual (Jacobi), batches one after another (Gauss–Seidel).

use std::borrow::Cow;

use bytemuck::{Pod, Zeroable};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::sparse::{compute_pipeline, groups, CodeBuffers};
use super::{Gpu, GpuBuffer, Matrix};
use crate::encode::SparseCodes;
use crate::error::{Error, Result};

const SHADER: &str = include_str!("../../shaders/power.wgsl");
const WG: u32 = 256;

/// Parameters of one dictionary update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateOptions {
    /// Atoms updated in parallel from the same residual (A), at most K (larger values act as K).
    /// 1 is sequential KSVD (exact as p grows); K
    /// updates every atom at once. Larger batches mean fewer, fuller dispatches but more
    /// interference between atoms that share samples.
    pub atom_batch: usize,
    /// Power iterations per atom (p), warm-started from the current atom.
    pub power_iterations: usize,
    /// Seed of the atom visiting order.
    pub seed: u64,
    /// Weight γ ∈ [0, 1) of the atom memory (see [`Gpu::ksvd_update_with_memory`]); 0 is plain
    /// KSVD, where each atom fits the current batch alone.
    pub memory: f32,
}

impl Default for UpdateOptions {
    /// A = 32 and p = 1, from `benches/update.rs` (B = 8192 MiniLM samples, d = 384, K = 1536,
    /// k = 32, lavapipe): the fraction of ‖Y − X·D‖² left after one update was 0.601 (A = 32,
    /// p = 1), 0.606 (p = 2), 0.607 (p = 4); 0.636 with A = 256 (2.5× faster); and the residual
    /// grew 2.7–4.4× with all 1536 atoms in one Jacobi batch. Warm-started from the current atom,
    /// one power step already moves most of the way; further steps make the parallel updates
    /// of a batch interfere more.
    fn default() -> Self {
        Self {
            atom_batch: 32,
            power_iterations: 1,
            seed: 0,
            memory: 0.0,
        }
    }
}

/// Per-atom user lists: `start` [K + 1] and (sample, flat slot) pairs grouped by atom.
pub type UserLists = (Vec<u32>, Vec<(u32, u32)>);

/// The seeded order in which [`Gpu::ksvd_update`] visits the atoms; batches are consecutive runs
/// of `atom_batch` atoms of it.
pub fn atom_order(n_atoms: usize, seed: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n_atoms as u32).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

/// Loop iterations one invocation runs for an atom with `users` users at dimension `d`: per
/// power iteration (users × d, then d × users, plus the reductions), and for the final pass.
pub(crate) fn update_loop_iterations(users: u64, d: usize) -> (u64, u64) {
    let (wg, dd, m) = (WG as u64, d as u64, users);
    let per_iteration =
        m.div_ceil(wg) * (dd + 2) + dd.div_ceil(wg) * (m + 4) + 2 * wg.ilog2() as u64 + 8;
    let finish = m.div_ceil(wg) * (dd + 2) + 4 * dd.div_ceil(wg) + 3 * wg.ilog2() as u64 + 8;
    (per_iteration, finish)
}

/// Mirrors `Params` in power.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    start: u32,
    len: u32,
    d: u32,
    k: u32,
    n: u32,
    n_atoms: u32,
    iterations: u32,
    last: u32,
    decay: f32,
    dims_per_fold: u32,
    _pad: [u32; 2],
}

pub(crate) struct PowerKernels {
    start: wgpu::ComputePipeline,
    steps: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    fold: wgpu::ComputePipeline,
    fold_rows: wgpu::ComputePipeline,
    commit: wgpu::ComputePipeline,
}

impl PowerKernels {
    pub(crate) fn new(gpu: &Gpu) -> Result<Self> {
        gpu.scoped(|| {
            let module = gpu
                .device()
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("power.wgsl"),
                    source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(SHADER)),
                });
            let c = [("WG", WG as f64)];
            Ok(Self {
                start: compute_pipeline(gpu, &module, "power_start", &c),
                steps: compute_pipeline(gpu, &module, "power_steps", &c),
                finish: compute_pipeline(gpu, &module, "power_finish", &c),
                fold: compute_pipeline(gpu, &module, "fold", &c),
                fold_rows: compute_pipeline(gpu, &module, "fold_rows", &c),
                commit: compute_pipeline(gpu, &module, "commit", &c),
            })
        })
    }
}

/// One batch of samples and their codes on the device, ready for dictionary updates: the
/// samples Y, the codes, the residual E = Y − X·D, and the per-atom user lists.
pub struct CodedBatch {
    d: usize,
    n_atoms: usize,
    pub(crate) samples: Matrix,
    residual: Matrix,
    pub(crate) codes: CodeBuffers,
    /// [K, d] power iterates.
    iterate: Matrix,
    /// [n·k, 2] per-slot scratch.
    slot_scratch: GpuBuffer<f32>,
}

impl std::fmt::Debug for CodedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodedBatch")
            .field("n", &self.codes.n)
            .field("d", &self.d)
            .field("k", &self.codes.k)
            .field("n_atoms", &self.n_atoms)
            .finish()
    }
}

impl CodedBatch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.codes.n
    }

    /// True for a batch without samples.
    pub fn is_empty(&self) -> bool {
        self.codes.n == 0
    }

    /// Sample dimension d.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Slots per sample (k).
    pub fn slots(&self) -> usize {
        self.codes.k
    }

    /// Atoms K of the dictionary the codes refer to.
    pub fn n_atoms(&self) -> usize {
        self.n_atoms
    }

    /// Samples, residual, indices and values.
    pub(crate) fn buffers(&self) -> (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer) {
        (
            &self.samples.data.buffer,
            &self.residual.data.buffer,
            &self.codes.indices.buffer,
            &self.codes.values.buffer,
        )
    }
}

impl Gpu {
    /// Records E = Y − X·D (and the user lists) for `batch` with the current `atoms`.
    pub(crate) fn record_batch_residual(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        atoms: &Matrix,
        batch: &CodedBatch,
    ) -> Result<()> {
        self.record_residual_and_transpose(
            encoder,
            &batch.samples,
            atoms,
            &batch.codes,
            &batch.residual,
        )
    }

    pub(crate) fn power_kernels(&self) -> Result<&PowerKernels> {
        self.cached(&self.inner.power, PowerKernels::new)
    }

    /// The largest sample batch whose every atom the update can take on this device at dimension
    /// `d` (an atom may be used by every sample): `None` without a loop cap (any real GPU);
    /// on lavapipe about 12 800 samples at d = 384.
    pub fn max_update_batch(&self, d: usize) -> Option<usize> {
        let cap = self.limits().max_loop_iterations?;
        let fits = |n: u64| {
            let (a, b) = update_loop_iterations(n, d);
            a.max(b) <= cap
        };
        // Iterations grow with n: binary search the largest n that fits.
        let (mut lo, mut hi) = (0u64, cap);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Some(lo as usize)
    }

    /// Device buffers for `n` samples of dimension `d` with `k` code slots, samples and codes to
    /// be written on the device (the trainer's path: codes never visit the host).
    pub(crate) fn empty_coded_batch(
        &self,
        n: usize,
        d: usize,
        k: usize,
        n_atoms: usize,
    ) -> Result<CodedBatch> {
        Ok(CodedBatch {
            d,
            n_atoms,
            samples: self.zeros(n, d)?,
            residual: self.zeros(n, d)?,
            codes: CodeBuffers::zeroed(self, n_atoms, n, k)?,
            iterate: self.zeros(n_atoms, d)?,
            slot_scratch: self.zeroed(2 * (n * k).max(1))?,
        })
    }

    /// Uploads `samples` [n, d] and their `codes` for a dictionary of `n_atoms` atoms. Codes
    /// naming an atom ≥ `n_atoms` are an error.
    pub fn coded_batch(
        &self,
        samples: &[f32],
        d: usize,
        codes: &SparseCodes,
        n_atoms: usize,
    ) -> Result<CodedBatch> {
        let n = codes.n;
        if samples.len() != n * d {
            return Err(Error::DataLength {
                what: "samples of a coded batch".into(),
                rows: n,
                cols: d,
                expected: n * d,
                actual: samples.len(),
            });
        }
        if codes.indices.len() != n * codes.k || codes.values.len() != n * codes.k {
            return Err(Error::InvalidArgument(format!(
                "codes of {n} rows × {} slots hold {} indices and {} values",
                codes.k,
                codes.indices.len(),
                codes.values.len()
            )));
        }
        if let Some(pos) = codes
            .indices
            .iter()
            .position(|&j| j >= n_atoms as i32 || j < -1)
        {
            return Err(Error::InvalidArgument(format!(
                "codes row {} slot {} names atom {} but the dictionary has {n_atoms} atoms",
                pos / codes.k.max(1),
                pos % codes.k.max(1),
                codes.indices[pos]
            )));
        }
        crate::encode::check_finite("samples", samples, d)?;
        crate::encode::check_finite("code values", &codes.values, codes.k)?;
        Ok(CodedBatch {
            d,
            n_atoms,
            samples: self.matrix(n, d, samples)?,
            residual: self.zeros(n, d)?,
            codes: CodeBuffers::new(self, n_atoms, &codes.indices, &codes.values, codes.k)?,
            iterate: self.zeros(n_atoms, d)?,
            slot_scratch: self.zeroed(2 * (n * codes.k).max(1))?,
        })
    }

    /// One KSVD dictionary update of `atoms` [K, d] on `batch`: residual, transpose, then every
    /// atom by power iteration in batches of `options.atom_batch`: two submissions (the user
    /// counts read back in between size the dispatches). The atoms (unit norm) and the batch's
    /// coefficients are updated in place; returns how many code slots use each atom (its
    /// samples: an atom appears at most once in a sample's code).
    pub fn ksvd_update(
        &self,
        atoms: &mut Matrix,
        batch: &mut CodedBatch,
        options: &UpdateOptions,
    ) -> Result<Vec<u32>> {
        let memory = self.zeros(atoms.rows(), atoms.cols())?;
        self.ksvd_update_with_memory(atoms, &memory, batch, options)
    }

    /// [`Gpu::ksvd_update`] carrying each atom's memory from earlier batches: `memory` [K, d]
    /// holds per atom m_j, the last update's unnormalised iterate, and each power step becomes
    /// u ← E_Ωᵀ·E_Ω·u + γ·m_j (γ = `options.memory`), its last one also storing m_j.
    ///
    /// Why: an atom fitted to one batch alone fits that batch's few users (B·k/K of them on
    /// average) and their noise; m_j is a decayed sum of the earlier batches' products, so the
    /// atom follows the users of about 1/(1 − γ) batches, as a larger batch would, at the memory
    /// cost of one [K, d] matrix. Start from zeros; reset an atom's row when it is re-seeded.
    pub fn ksvd_update_with_memory(
        &self,
        atoms: &mut Matrix,
        memory: &Matrix,
        batch: &mut CodedBatch,
        options: &UpdateOptions,
    ) -> Result<Vec<u32>> {
        let (n_atoms, d) = (atoms.rows(), atoms.cols());
        if n_atoms != batch.n_atoms || d != batch.d {
            return Err(Error::ShapeMismatch {
                op: "dictionary update (atoms vs the coded batch's dictionary)".into(),
                left: atoms.shape(),
                right: crate::error::shape(batch.n_atoms, batch.d),
            });
        }
        if options.atom_batch == 0 {
            return Err(Error::InvalidArgument("atom batch 0".into()));
        }
        // First submission: residual and transpose; the user counts come back (they are the
        // usage this call returns) and size the power-iteration dispatches.
        let mut encoder = self.encoder("ksvd residual and transpose");
        self.record_batch_residual(&mut encoder, atoms, batch)?;
        let user_start = self.submit_and_read(encoder, &batch.codes.user_start, n_atoms + 1)?;
        let usage: Vec<u32> = user_start.windows(2).map(|w| w[1] - w[0]).collect();
        self.submit_atom_batches(atoms, memory, batch, options, &usage)?;
        self.wait()?;
        Ok(usage)
    }

    /// Submits the power-iteration atom batches of an update whose residual and user lists are
    /// already on the device (recorded by `record_residual_and_transpose`), `usage` being the
    /// user counts read back from them. Does not wait.
    pub(crate) fn submit_atom_batches(
        &self,
        atoms: &Matrix,
        memory: &Matrix,
        batch: &CodedBatch,
        options: &UpdateOptions,
        usage: &[u32],
    ) -> Result<()> {
        let (n_atoms, d) = (atoms.rows(), atoms.cols());
        if memory.rows() != n_atoms || memory.cols() != d {
            return Err(Error::ShapeMismatch {
                op: "dictionary update (atom memory vs atoms)".into(),
                left: memory.shape(),
                right: atoms.shape(),
            });
        }
        if !(options.memory.is_finite() && (0.0..1.0).contains(&options.memory)) {
            return Err(Error::InvalidArgument(format!(
                "atom memory γ = {} must lie in [0, 1)",
                options.memory
            )));
        }
        let atom_batch = options.atom_batch.clamp(1, n_atoms.max(1));
        let order = atom_order(n_atoms, options.seed);
        let mut rank = vec![0u32; n_atoms];
        for (position, &j) in order.iter().enumerate() {
            rank[j as usize] = position as u32;
        }
        let order_buf = self.upload(&order)?;
        let rank_buf = self.upload(&rank)?;
        let kernels = self.power_kernels()?;
        let (n, k) = (batch.codes.n, batch.codes.k);
        // CPU adapters fold one sample per invocation (see power.wgsl), its d dimensions split
        // so that the k-slot scan plus min(k, A) folded atoms stay under the loop cap.
        let max_groups = self.limits().max_compute_workgroups_per_dimension as usize;
        let fold_rows = self.adapter().is_cpu() && n.div_ceil(64) <= max_groups;
        let dims_per_fold = match self.limits().max_loop_iterations {
            Some(cap) => {
                let folded = k.min(options.atom_batch.clamp(1, n_atoms.max(1))).max(1) as u64;
                (cap.saturating_sub(k as u64 + 8) / folded).clamp(1, d.max(1) as u64) as usize
            }
            None => d.max(1),
        };

        // Per atom batch: its parameter record, then one record per power_steps dispatch.
        struct Dispatch {
            record: usize,
            kind: Kind,
            groups: (u32, u32),
        }
        #[derive(Clone, Copy, PartialEq)]
        enum Kind {
            Start,
            Steps,
            Finish,
            Fold,
            FoldRows,
            Commit,
        }
        let mut records: Vec<Params> = Vec::new();
        let mut dispatches: Vec<Dispatch> = Vec::new();
        for start in (0..n_atoms).step_by(atom_batch) {
            let len = atom_batch.min(n_atoms - start);
            let most_users = order[start..start + len]
                .iter()
                .map(|&j| usage[j as usize] as u64)
                .max()
                .unwrap_or(0);
            let m = most_users;
            let (per_iteration, finish) = update_loop_iterations(m, d);
            let what = format!("power iteration over an atom with {m} users at d = {d}");
            self.check_loop_budget(&what, per_iteration.max(finish))?;
            let per_dispatch = match self.limits().max_loop_iterations {
                Some(cap) => (cap / per_iteration).max(1) as usize,
                None => options.power_iterations.clamp(1, u32::MAX as usize),
            };
            let base = Params {
                start: start as u32,
                len: len as u32,
                d: d as u32,
                k: k as u32,
                n: n as u32,
                n_atoms: n_atoms as u32,
                iterations: 0,
                last: 0,
                decay: options.memory,
                dims_per_fold: dims_per_fold as u32,
                _pad: [0; 2],
            };
            let atom_groups = groups(self, len, 1);
            let record = records.len();
            records.push(base);
            dispatches.push(Dispatch {
                record,
                kind: Kind::Start,
                groups: atom_groups,
            });
            let mut left = options.power_iterations;
            while left > 0 {
                let now = left.min(per_dispatch);
                records.push(Params {
                    iterations: now as u32,
                    last: u32::from(left == now),
                    ..base
                });
                dispatches.push(Dispatch {
                    record: records.len() - 1,
                    kind: Kind::Steps,
                    groups: atom_groups,
                });
                left -= now;
            }
            dispatches.push(Dispatch {
                record,
                kind: Kind::Finish,
                groups: atom_groups,
            });
            dispatches.push(if fold_rows {
                Dispatch {
                    record,
                    kind: Kind::FoldRows,
                    groups: (n.div_ceil(64) as u32, d.div_ceil(dims_per_fold) as u32),
                }
            } else {
                Dispatch {
                    record,
                    kind: Kind::Fold,
                    groups: groups(self, n, 1),
                }
            });
            dispatches.push(Dispatch {
                record,
                kind: Kind::Commit,
                groups: atom_groups,
            });
        }

        let uniforms = self.uniform_records("power params", &records)?;
        let mut encoder = self.encoder("ksvd atom batches");
        self.scoped(|| {
            let device = self.device();
            let c = &batch.codes;
            let pipeline = |kind: Kind| match kind {
                Kind::Start => &kernels.start,
                Kind::Steps => &kernels.steps,
                Kind::Finish => &kernels.finish,
                Kind::Fold => &kernels.fold,
                Kind::FoldRows => &kernels.fold_rows,
                Kind::Commit => &kernels.commit,
            };
            let buffers = |kind: Kind| -> Vec<(u32, &wgpu::Buffer)> {
                match kind {
                    Kind::Start => vec![
                        (1, &order_buf.buffer),
                        (3, &atoms.data.buffer),
                        (9, &batch.iterate.data.buffer),
                    ],
                    Kind::Steps | Kind::Finish => vec![
                        (1, &order_buf.buffer),
                        (3, &atoms.data.buffer),
                        (4, &batch.residual.data.buffer),
                        (5, &c.values.buffer),
                        (7, &c.user_start.buffer),
                        (8, &c.users.buffer),
                        (9, &batch.iterate.data.buffer),
                        (10, &batch.slot_scratch.buffer),
                    ]
                    .into_iter()
                    .chain((kind == Kind::Steps).then_some((11, &memory.data.buffer)))
                    .collect(),
                    Kind::Fold | Kind::FoldRows => vec![
                        (2, &rank_buf.buffer),
                        (3, &atoms.data.buffer),
                        (4, &batch.residual.data.buffer),
                        (5, &c.values.buffer),
                        (6, &c.indices.buffer),
                        (9, &batch.iterate.data.buffer),
                        (10, &batch.slot_scratch.buffer),
                    ],
                    Kind::Commit => vec![
                        (1, &order_buf.buffer),
                        (3, &atoms.data.buffer),
                        (5, &c.values.buffer),
                        (7, &c.user_start.buffer),
                        (8, &c.users.buffer),
                        (9, &batch.iterate.data.buffer),
                        (10, &batch.slot_scratch.buffer),
                    ],
                }
            };
            let bind_groups: Vec<wgpu::BindGroup> = dispatches
                .iter()
                .map(|dispatch| {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniforms.binding(dispatch.record),
                    }];
                    entries.extend(buffers(dispatch.kind).into_iter().map(|(binding, buffer)| {
                        wgpu::BindGroupEntry {
                            binding,
                            resource: buffer.as_entire_binding(),
                        }
                    }));
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &pipeline(dispatch.kind).get_bind_group_layout(0),
                        entries: &entries,
                    })
                })
                .collect();
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("atom batches"),
                timestamp_writes: None,
            });
            for (dispatch, group) in dispatches.iter().zip(&bind_groups) {
                pass.set_pipeline(pipeline(dispatch.kind));
                pass.set_bind_group(0, group, &[]);
                pass.dispatch_workgroups(dispatch.groups.0, dispatch.groups.1, 1);
            }
            Ok(())
        })?;
        self.submit(encoder)
    }

    /// The batch's codes with their current (updated) coefficients, and each row's residual
    /// energy ‖y − x·D‖² from the device's residual as of the last update.
    pub fn read_codes(&self, batch: &CodedBatch) -> Result<SparseCodes> {
        Ok(self.read_codes_and_residual(batch)?.0)
    }

    /// [`Gpu::read_codes`] and [`Gpu::read_residual`] with one readback of the residual.
    pub fn read_codes_and_residual(&self, batch: &CodedBatch) -> Result<(SparseCodes, Vec<f32>)> {
        let indices = self.read(&batch.codes.indices)?;
        let values = self.read(&batch.codes.values)?;
        let residual = self.read_matrix(&batch.residual)?;
        let residual_energy = residual
            .chunks(batch.d.max(1))
            .map(|r| r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32)
            .collect();
        let codes = SparseCodes {
            n: batch.codes.n,
            k: batch.codes.k,
            indices,
            values,
            residual_energy,
        };
        Ok((codes, residual))
    }

    /// The residual E = Y − X·D [n, d] as of the last update.
    pub fn read_residual(&self, batch: &CodedBatch) -> Result<Vec<f32>> {
        self.read_matrix(&batch.residual)
    }

    /// The per-atom user lists of the last update: `start` [K + 1] and (sample, slot) pairs in
    /// list order, where slot = sample·k + t.
    pub fn read_users(&self, batch: &CodedBatch) -> Result<UserLists> {
        let start = self.read(&batch.codes.user_start)?;
        let total = start.last().copied().unwrap_or(0) as usize;
        let flat = self.read(&batch.codes.users)?;
        let users = flat[..2 * total].chunks(2).map(|p| (p[0], p[1])).collect();
        Ok((start, users))
    }
}
