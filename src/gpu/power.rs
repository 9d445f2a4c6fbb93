//! The KSVD dictionary update by atom-wise power iteration (`shaders/power.wgsl`), double-batched:
//! atoms in a seeded random order, in batches of `atom_batch` that update in parallel from the
//! same residual (Jacobi), batches one after another (Gauss–Seidel).

use std::borrow::Cow;

use bytemuck::{Pod, Zeroable};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::buffer::{copy_flat, flat_texture, Scratch, ScratchTexture, TextureShape};
use super::sparse::{compute_pipeline, groups, CodeBuffers};
use super::{Gpu, GpuBuffer, Matrix};
use crate::coding::SparseCodes;
use crate::error::{Error, Result};

/// power.wgsl after the helpers it includes (see shaders/include/workgroup.wgsl).
const SHADER: &str = concat!(
    include_str!("../../shaders/include/workgroup.wgsl"),
    include_str!("../../shaders/power.wgsl")
);
/// Invocations per workgroup of the update kernels. 64 rather than 256: an item typically has
/// tens to hundreds of users and d/4 texels (96 at d = 384), so wider groups mostly idle, and
/// every workgroup sum pays a barrier per round (on llvmpipe a switch through every SIMD row
/// of the group): step's update 1.23–1.37 → 1.04–1.15 s at B = 4096, K = 1536 on lavapipe.
const WG: u32 = 64;

/// Parameters of one dictionary update: [`UpdateOptions::default`] and the `with_*` setters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct UpdateOptions {
    /// Atoms updated in parallel from the same residual (A), at most K (larger values act as K).
    /// 1 is sequential KSVD (exact as p grows); K
    /// updates every atom at once. Larger batches mean fewer, fuller dispatches but more
    /// interference between atoms that share samples.
    pub atom_batch: usize,
    /// Power iterations per atom (p), warm-started from the current atom. 0 keeps the atoms and
    /// refits their coefficients, x_new = e_s·d_j + x_s.
    pub power_iterations: usize,
    /// Seed of the atom visiting order.
    pub seed: u64,
    /// Weight γ ∈ [0, 1) of the atom memory (see [`Gpu::ksvd_update_with_memory`]); 0 is plain
    /// KSVD, where each atom fits the current batch alone.
    pub memory: f32,
}

impl UpdateOptions {
    with_setters! {
        with_atom_batch => atom_batch: usize,
        with_power_iterations => power_iterations: usize,
        with_seed => seed: u64,
        with_memory => memory: f32,
    }
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

/// Users of one atom in one work item when the driver caps no loops: an atom with more users is
/// spread over several workgroups, whose partial sums are reduced.
const ITEM_USERS: usize = 4096;

/// Loop iterations one invocation runs in power_partial (the heaviest per-item kernel) for an
/// item of `users` users at dimension `d`: the d_j·u dot, v for its users (d each), their sum,
/// then d/WG dimensions over the users.
fn item_loop_iterations(users: u64, d: usize) -> u64 {
    let (wg, dd) = (WG as u64, d as u64);
    let reduction = wg.ilog2() as u64 + 1;
    dd.div_ceil(wg)
        + users.div_ceil(wg) * (dd + 1)
        + dd.div_ceil(wg) * (users + 1)
        + 2 * reduction
        + 8
}

/// Loop iterations one invocation runs in the heaviest update kernel for an atom with `users`
/// users at dimension `d`, its users cut into items of `item_users`: power_partial for one item,
/// power_reduce over its items, commit over its users.
pub(crate) fn update_loop_iterations(users: u64, d: usize, item_users: usize) -> u64 {
    let (wg, dd) = (WG as u64, d as u64);
    let reduction = wg.ilog2() as u64 + 1;
    let items = users.div_ceil(item_users.max(1) as u64);
    let partial = item_loop_iterations(users.min(item_users as u64), d);
    let reduce = dd.div_ceil(wg) * (items + 2) + 2 * reduction + 8;
    let commit = dd.div_ceil(wg) + users.div_ceil(wg) + 8;
    partial.max(reduce).max(commit)
}

/// The largest n in lo..=hi with `fits(n)`, for `fits` true at lo and monotone (loop counts
/// grow with n): a binary search.
fn largest_fitting(mut lo: u64, mut hi: u64, fits: impl Fn(u64) -> bool) -> u64 {
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
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
    iteration: u32,
    last: u32,
    decay: f32,
    dims_per_fold: u32,
    item_start: u32,
    item_len: u32,
    atom_first: u32,
    atom_end: u32,
    atom_lead: u32,
    residual_shift: u32,
    atom_shift: u32,
    _pad: [u32; 3],
}

pub(crate) struct PowerKernels {
    partial: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    project: wgpu::ComputePipeline,
    fold: wgpu::ComputePipeline,
    fold_rows: wgpu::ComputePipeline,
    commit: wgpu::ComputePipeline,
    order_slots: wgpu::ComputePipeline,
    /// The vec4 entry points (d a multiple of 4) reading storage buffers.
    vec4: Vec4Kernels,
    /// The same reading texture copies (READ_TEXTURES), built on CPU adapters only.
    textured: Option<Vec4Kernels>,
    /// Partial sums of one wave of work items (every row read is written first in its wave).
    partials: Scratch<f32>,
    /// [n, k] (visiting position, slot) pairs of order_slots.
    slot_order: Scratch<u32>,
    /// READ_TEXTURES: copies of the residual, the atoms and the iterates, and the 1×1
    /// stand-in the storage variant binds in their place.
    residual_texture: ScratchTexture,
    atom_texture: ScratchTexture,
    iterate_texture: ScratchTexture,
    stand_in: ScratchTexture,
}

/// The `*_vec4` entry points of power.wgsl under one value of READ_TEXTURES.
struct Vec4Kernels {
    partial: wgpu::ComputePipeline,
    project: wgpu::ComputePipeline,
    fold: wgpu::ComputePipeline,
    fold_rows: wgpu::ComputePipeline,
}

impl Vec4Kernels {
    fn new(gpu: &Gpu, module: &wgpu::ShaderModule, textures: bool) -> Self {
        let c = [
            ("WG", WG as f64),
            ("READ_TEXTURES", f64::from(u8::from(textures))),
        ];
        Self {
            partial: compute_pipeline(gpu, module, "power_partial_vec4", &c),
            project: compute_pipeline(gpu, module, "power_project_vec4", &c),
            fold: compute_pipeline(gpu, module, "fold_vec4", &c),
            fold_rows: compute_pipeline(gpu, module, "fold_rows_vec4", &c),
        }
    }
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
                partial: compute_pipeline(gpu, &module, "power_partial", &c),
                reduce: compute_pipeline(gpu, &module, "power_reduce", &c),
                project: compute_pipeline(gpu, &module, "power_project", &c),
                fold: compute_pipeline(gpu, &module, "fold", &c),
                fold_rows: compute_pipeline(gpu, &module, "fold_rows", &c),
                commit: compute_pipeline(gpu, &module, "commit", &c),
                order_slots: compute_pipeline(gpu, &module, "order_slots", &c),
                vec4: Vec4Kernels::new(gpu, &module, false),
                textured: gpu
                    .adapter()
                    .is_cpu()
                    .then(|| Vec4Kernels::new(gpu, &module, true)),
                partials: Scratch::default(),
                slot_order: Scratch::default(),
                residual_texture: ScratchTexture::default(),
                atom_texture: ScratchTexture::default(),
                iterate_texture: ScratchTexture::default(),
                stand_in: ScratchTexture::default(),
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

    #[cfg(any(test, feature = "testing"))]
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

/// The kinds of dispatch of one atom batch (see power.wgsl).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Partial,
    Reduce,
    Project,
    Fold,
    FoldRows,
    Commit,
    /// order_slots: once per update, before the vec4 folds.
    OrderSlots,
}

/// One step of the atom-batch submission: a dispatch (record, kind, workgroups, window), or a
/// refresh of a texture copy read by the READ_TEXTURES kernels.
#[derive(Clone, Copy)]
enum Step {
    Run(usize, Kind, (u32, u32), usize),
    Copy(Copied),
}

/// What a [`Step::Copy`] copies into its texture.
#[derive(Clone, Copy)]
enum Copied {
    Residual,
    Atoms,
    /// The iterates of the atoms at visiting positions start .. start + len (only those change).
    Iterate {
        start: usize,
        len: usize,
    },
}

/// The update's work items: each atom's users (in user-list order) cut into runs of at most
/// `item_users`, items in visiting order so that an atom batch's items are contiguous.
struct WorkItems {
    /// (atom, first user position, one past the last, 0).
    items: Vec<[u32; 4]>,
    /// Per position in the visiting order: (first item, item count).
    atom_items: Vec<[u32; 2]>,
}

impl WorkItems {
    fn plan(order: &[u32], usage: &[u32], item_users: usize) -> Self {
        let mut user_start = vec![0u32; usage.len() + 1];
        for (j, &u) in usage.iter().enumerate() {
            user_start[j + 1] = user_start[j] + u;
        }
        let mut items = Vec::new();
        let mut atom_items = Vec::with_capacity(order.len());
        for &j in order {
            let first = items.len() as u32;
            let (mut q, end) = (user_start[j as usize], user_start[j as usize + 1]);
            while q < end {
                let next = end.min(q.saturating_add(item_users as u32));
                items.push([j, q, next, 0]);
                q = next;
            }
            atom_items.push([first, items.len() as u32 - first]);
        }
        Self { items, atom_items }
    }

    /// The first item of visiting position `position` (the item count at the end).
    fn first(&self, position: usize) -> usize {
        self.atom_items
            .get(position)
            .map_or(self.items.len(), |a| a[0] as usize)
    }

    /// The atom batch at positions `start..start + len` cut into waves of at most `rows` items
    /// (rows of partial sums, d floats each): (positions, items) per wave.
    #[allow(clippy::type_complexity)]
    fn waves(
        &self,
        start: usize,
        len: usize,
        rows: usize,
        d: usize,
    ) -> Result<Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>> {
        let mut waves = Vec::new();
        let mut wave_start = start;
        for position in start..start + len {
            let count = self.atom_items[position][1] as usize;
            if count > rows {
                return Err(Error::ExceedsLimit {
                    what: format!(
                        "partial sums of the update of one atom ({count} work items of d = {d})"
                    ),
                    requested: (count * d * 4) as u64,
                    limit_name: "max_storage_buffer_binding_size",
                    limit: (rows * d * 4) as u64,
                    largest_batch: None,
                });
            }
            if self.first(position + 1) - self.first(wave_start) > rows {
                waves.push((
                    wave_start..position,
                    self.first(wave_start)..self.first(position),
                ));
                wave_start = position;
            }
        }
        waves.push((
            wave_start..start + len,
            self.first(wave_start)..self.first(start + len),
        ));
        Ok(waves)
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

    /// Users of one atom that one workgroup of the update takes at dimension `d`: an atom with
    /// more is spread over several workgroups and their partial sums reduced, so an atom may have
    /// any number of users. Below the driver's loop cap where it has one (llvmpipe: about 4 000
    /// at d = 384, 2 000 at d = 2304); `ExceedsLimit` when not even one user fits.
    pub fn update_item_users(&self, d: usize) -> Result<usize> {
        let Some(cap) = self.limits().max_loop_iterations else {
            return Ok(ITEM_USERS);
        };
        self.check_loop_budget(
            &format!("power iteration over one user at d = {d}"),
            item_loop_iterations(1, d),
        )?;
        let most = largest_fitting(1, ITEM_USERS as u64, |u| item_loop_iterations(u, d) <= cap);
        Ok(most as usize)
    }

    /// The largest sample batch whose every atom the update can take on this device at dimension
    /// `d` (an atom may be used by every sample): `None` without a loop cap (any real GPU).
    /// Users are spread over workgroups, so on lavapipe this is millions and memory binds first.
    pub fn max_update_batch(&self, d: usize) -> Option<usize> {
        let cap = self.limits().max_loop_iterations?;
        let Ok(item_users) = self.update_item_users(d) else {
            return Some(0);
        };
        let most = largest_fitting(0, cap.saturating_mul(WG as u64), |n| {
            update_loop_iterations(n, d, item_users) <= cap
        });
        Some(most as usize)
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
        crate::coding::check_finite("samples", samples, d)?;
        crate::coding::check_finite("code values", &codes.values, codes.k)?;
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
        let (n, k) = (batch.codes.n, batch.codes.k);
        let item_users = self.update_item_users(d)?;
        let most_users = usage.iter().copied().max().unwrap_or(0) as u64;
        self.check_loop_budget(
            &format!("the update of an atom with {most_users} users at d = {d}"),
            update_loop_iterations(most_users, d, item_users),
        )?;
        let plan = WorkItems::plan(&order, usage, item_users);
        // Partial sums of one wave of atoms share one binding; a batch whose items need more
        // runs in several waves (its atoms are independent until the fold).
        let binding = self
            .limits()
            .planned_binding_size
            .min(self.limits().max_buffer_size);
        let wave_rows = (binding / (4 * d.max(1) as u64)).max(1) as usize;
        let kernels = self.power_kernels()?;
        // CPU adapters fold one sample per invocation (see power.wgsl), its d dimensions split
        // so that the k-slot scan plus min(k, A) folded atoms stay under the loop cap.
        let max_groups = self.limits().max_compute_workgroups_per_dimension as usize;
        let dims_per_fold = match self.limits().max_loop_iterations {
            Some(cap) => {
                let folded = k.min(atom_batch).max(1) as u64;
                (cap.saturating_sub(k as u64 + 8) / folded).clamp(1, d.max(1) as u64) as usize
            }
            None => d.max(1),
        };

        // The [K, d] matrices (atoms, iterates, memory) are bound one window of atom rows at a
        // time: every dispatch below runs once per window, each skipping the other windows'
        // atoms (one window, the whole dictionary, wherever it fits one binding).
        let windows = super::buffer::row_windows(self, n_atoms, d);
        // Whole rows are whole vec4s when d is a multiple of 4 and every window's first row
        // starts on one (bindings are aligned far coarser than 16 bytes, so it always does).
        let vec4 = d > 0 && d % 4 == 0 && n > 0 && windows.iter().all(|w| w.2.first % 4 == 0);
        let texels = if vec4 { d / 4 } else { d };
        // fold_rows_vec4 gives each sample FOLD_LANES invocations.
        let fold_lanes = if vec4 { 8 } else { 1 };
        let fold_rows = self.adapter().is_cpu() && (n * fold_lanes).div_ceil(64) <= max_groups;
        // CPU adapters read the residual, atoms and iterates from flat texture copies (see
        // power.wgsl) wherever the device's textures hold them: (shape, layer shift) of the
        // residual's and of the atoms' (the iterates' alike).
        let textures = match (&kernels.textured, vec4) {
            (Some(_), true) => {
                flat_texture(self, n * texels).zip(flat_texture(self, n_atoms * texels))
            }
            _ => None,
        };
        let copies = textures.is_some();
        let mut records: Vec<Params> = Vec::new();
        let mut steps: Vec<Step> = Vec::new();
        // A dispatch of `kind` once per window of atom rows.
        let push = |records: &mut Vec<Params>,
                    steps: &mut Vec<Step>,
                    params: Params,
                    kind: Kind,
                    groups: (u32, u32)| {
            for (w, &(first, end, window)) in windows.iter().enumerate() {
                records.push(Params {
                    atom_first: first as u32,
                    atom_end: end as u32,
                    atom_lead: window.first,
                    ..params
                });
                steps.push(Step::Run(records.len() - 1, kind, groups, w));
            }
        };
        if copies {
            steps.push(Step::Copy(Copied::Residual));
            steps.push(Step::Copy(Copied::Atoms));
        }
        if vec4 {
            // The vec4 folds find each batch's slots in the slots ordered by visiting position.
            records.push(Params {
                d: d as u32,
                k: k as u32,
                n: n as u32,
                n_atoms: n_atoms as u32,
                ..Params::zeroed()
            });
            let slots = groups(self, n * k, 64);
            steps.push(Step::Run(records.len() - 1, Kind::OrderSlots, slots, 0));
        }
        let mut partial_rows = 1;
        let p = options.power_iterations;
        for start in (0..n_atoms).step_by(atom_batch) {
            let len = atom_batch.min(n_atoms - start);
            let base = Params {
                start: start as u32,
                len: len as u32,
                d: d as u32,
                k: k as u32,
                n: n as u32,
                n_atoms: n_atoms as u32,
                // power_project reads d_new from `iterate` (iteration > 0).
                iteration: p.max(1) as u32,
                last: 0,
                decay: options.memory,
                dims_per_fold: dims_per_fold as u32,
                item_start: plan.first(start) as u32,
                item_len: (plan.first(start + len) - plan.first(start)) as u32,
                atom_first: 0,
                atom_end: 0,
                atom_lead: 0,
                residual_shift: textures.map_or(0, |t| t.0 .1),
                atom_shift: textures.map_or(0, |t| t.1 .1),
                _pad: [0; 3],
            };
            let waves = plan.waves(start, len, wave_rows, d)?;
            partial_rows = waves
                .iter()
                .map(|w| w.1.len())
                .fold(partial_rows, usize::max);
            if p == 0 {
                // No power step: power_reduce copies d_j as d_new.
                push(
                    &mut records,
                    &mut steps,
                    Params { last: 2, ..base },
                    Kind::Reduce,
                    groups(self, len, 1),
                );
                if copies {
                    steps.push(Step::Copy(Copied::Iterate { start, len }));
                }
            }
            for iteration in 0..p {
                for (atoms_range, item_range) in &waves {
                    let wave = Params {
                        start: atoms_range.start as u32,
                        len: atoms_range.len() as u32,
                        iteration: iteration as u32,
                        last: u32::from(iteration + 1 == p),
                        item_start: item_range.start as u32,
                        item_len: item_range.len() as u32,
                        ..base
                    };
                    let (items, atoms) = (item_range.len(), atoms_range.len());
                    push(
                        &mut records,
                        &mut steps,
                        wave,
                        Kind::Partial,
                        groups(self, items, 1),
                    );
                    push(
                        &mut records,
                        &mut steps,
                        wave,
                        Kind::Reduce,
                        groups(self, atoms, 1),
                    );
                }
                if copies {
                    steps.push(Step::Copy(Copied::Iterate { start, len }));
                }
            }
            // Every projection reads the residual before the batch, so all precede the fold.
            let items = base.item_len as usize;
            push(
                &mut records,
                &mut steps,
                base,
                Kind::Project,
                groups(self, items, 1),
            );
            if fold_rows {
                // dims_per_fold counts texels in fold_rows_vec4.
                let folds = (
                    (n * fold_lanes).div_ceil(64) as u32,
                    texels.div_ceil(dims_per_fold) as u32,
                );
                push(&mut records, &mut steps, base, Kind::FoldRows, folds);
            } else {
                push(
                    &mut records,
                    &mut steps,
                    base,
                    Kind::Fold,
                    groups(self, n, 1),
                );
            }
            if copies && start + len < n_atoms {
                steps.push(Step::Copy(Copied::Residual));
            }
            push(
                &mut records,
                &mut steps,
                base,
                Kind::Commit,
                groups(self, len, 1),
            );
        }

        let order_buf = self.upload(&order)?;
        let rank_buf = self.upload(&rank)?;
        // A batch without users still binds one (unread) item.
        let items: &[[u32; 4]] = if plan.items.is_empty() {
            &[[0; 4]]
        } else {
            &plan.items
        };
        let items_buf = self.upload(bytemuck::cast_slice::<[u32; 4], u32>(items))?;
        let atom_items_buf =
            self.upload(bytemuck::cast_slice::<[u32; 2], u32>(&plan.atom_items))?;
        let partials = kernels.partials.get(self, partial_rows * d.max(1))?;
        let slot_order = kernels.slot_order.get(self, 2 * (n * k).max(1))?;
        let uniforms = self.uniform_records("power params", &records)?;
        // The textures READ_TEXTURES reads, or the stand-in bound in their place.
        let stand_in = TextureShape {
            width: 1,
            height: 1,
            layers: 1,
            format: wgpu::TextureFormat::Rgba32Float,
        };
        let texture_list = match textures {
            Some(((residual, _), (atoms, _))) => [
                kernels.residual_texture.get(self, residual)?,
                kernels.atom_texture.get(self, atoms)?,
                kernels.iterate_texture.get(self, atoms)?,
            ],
            None => {
                let t = kernels.stand_in.get(self, stand_in)?;
                [t.clone(), t.clone(), t]
            }
        };
        let views = texture_list
            .each_ref()
            .map(|t| t.view(wgpu::TextureViewDimension::D2Array));
        let vec4_kernels = match &kernels.textured {
            Some(textured) if copies => textured,
            _ => &kernels.vec4,
        };
        let mut encoder = self.encoder("ksvd atom batches");
        self.scoped(|| {
            let c = &batch.codes;
            let pipeline = |kind: Kind| match (kind, vec4) {
                (Kind::Partial, false) => &kernels.partial,
                (Kind::Partial, true) => &vec4_kernels.partial,
                (Kind::Reduce, _) => &kernels.reduce,
                (Kind::Project, false) => &kernels.project,
                (Kind::Project, true) => &vec4_kernels.project,
                (Kind::Fold, false) => &kernels.fold,
                (Kind::Fold, true) => &vec4_kernels.fold,
                (Kind::FoldRows, false) => &kernels.fold_rows,
                (Kind::FoldRows, true) => &vec4_kernels.fold_rows,
                (Kind::Commit, _) => &kernels.commit,
                (Kind::OrderSlots, _) => &kernels.order_slots,
            };
            // The vec4 entry points bind the views 15–18 in place of 3, 9, 4 and 14.
            // Whether `kind` runs a vec4 entry point (which also binds the textures 19–21).
            let vec4_kind = |kind: Kind| {
                vec4 && !matches!(kind, Kind::Reduce | Kind::Commit | Kind::OrderSlots)
            };
            let view = |kind: Kind, b: u32| match b {
                3 if vec4_kind(kind) => 15,
                9 if vec4_kind(kind) => 16,
                4 if vec4_kind(kind) => 17,
                14 if vec4_kind(kind) => 18,
                _ => b,
            };
            // Bindings 3, 9 and 11 ([K, d]) are windowed.
            let buffers = |kind: Kind| -> Vec<(u32, &wgpu::Buffer)> {
                match kind {
                    // power_partial reads what power_project does and writes the partial sums.
                    Kind::Partial | Kind::Project => vec![
                        (3, &atoms.data.buffer),
                        (4, &batch.residual.data.buffer),
                        (5, &c.values.buffer),
                        (8, &c.users.buffer),
                        (9, &batch.iterate.data.buffer),
                        (10, &batch.slot_scratch.buffer),
                        (12, &items_buf.buffer),
                    ]
                    .into_iter()
                    .chain((kind == Kind::Partial).then_some((14, &partials.buffer)))
                    .collect(),
                    Kind::Reduce => vec![
                        (1, &order_buf.buffer),
                        (3, &atoms.data.buffer),
                        (9, &batch.iterate.data.buffer),
                        (11, &memory.data.buffer),
                        (13, &atom_items_buf.buffer),
                        (14, &partials.buffer),
                    ],

                    // The scalar folds scan the slots by rank; the vec4 ones search slot_order.
                    Kind::Fold | Kind::FoldRows => vec![
                        if vec4 {
                            (22, &slot_order.buffer)
                        } else {
                            (2, &rank_buf.buffer)
                        },
                        (3, &atoms.data.buffer),
                        (4, &batch.residual.data.buffer),
                        (5, &c.values.buffer),
                        (6, &c.indices.buffer),
                        (9, &batch.iterate.data.buffer),
                        (10, &batch.slot_scratch.buffer),
                    ],
                    Kind::OrderSlots => vec![
                        (2, &rank_buf.buffer),
                        (6, &c.indices.buffer),
                        (22, &slot_order.buffer),
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
            let bind_group = |record: usize, kind: Kind, w: usize| {
                let window = windows[w].2;
                let entries = std::iter::once((0, uniforms.binding(record)))
                    .chain(buffers(kind).into_iter().map(|(b, buffer)| {
                        let resource = if matches!(b, 3 | 9 | 11) {
                            super::buffer::binding(buffer, window)
                        } else {
                            buffer.as_entire_binding()
                        };
                        (view(kind, b), resource)
                    }))
                    .chain(
                        views
                            .iter()
                            .zip(19..)
                            // The fold writes the residual buffer and reads no residual texels.
                            .filter(|&(_, b)| {
                                vec4_kind(kind)
                                    && !(b == 19 && matches!(kind, Kind::Fold | Kind::FoldRows))
                            })
                            .map(|(v, b)| (b, wgpu::BindingResource::TextureView(v))),
                    );
                super::sparse::bind_resources(self, pipeline(kind), entries)
            };
            // Runs of dispatches share a compute pass; the texture copies go between passes.
            let shifts = textures.map_or((0, 0), |t| (t.0 .1, t.1 .1));
            let mut i = 0;
            while i < steps.len() {
                if let Step::Copy(what) = steps[i] {
                    let [residual_texture, atom_texture, iterate_texture] =
                        texture_list.each_ref().map(|t| &t.texture);
                    match what {
                        Copied::Residual => copy_flat(
                            &mut encoder,
                            &batch.residual.data.buffer,
                            0,
                            n * texels,
                            residual_texture,
                            shifts.0,
                        ),
                        Copied::Atoms => copy_flat(
                            &mut encoder,
                            &atoms.data.buffer,
                            0,
                            n_atoms * texels,
                            atom_texture,
                            shifts.1,
                        ),
                        // Row by row: a batch's A rows, not all K (K/A times less at scale).
                        Copied::Iterate { start, len } => {
                            for &j in &order[start..start + len] {
                                copy_flat(
                                    &mut encoder,
                                    &batch.iterate.data.buffer,
                                    j as usize * texels,
                                    texels,
                                    iterate_texture,
                                    shifts.1,
                                );
                            }
                        }
                    }
                    i += 1;
                    continue;
                }
                let end = steps[i..]
                    .iter()
                    .position(|step| matches!(step, Step::Copy(_)))
                    .map_or(steps.len(), |p| i + p);
                let runs: Vec<(Kind, (u32, u32), wgpu::BindGroup)> = steps[i..end]
                    .iter()
                    .filter_map(|step| match *step {
                        Step::Run(record, kind, groups, w) => {
                            Some((kind, groups, bind_group(record, kind, w)))
                        }
                        Step::Copy(_) => None,
                    })
                    .collect();
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("atom batches"),
                    timestamp_writes: None,
                });
                for (kind, (x, y), group) in &runs {
                    pass.set_pipeline(pipeline(*kind));
                    pass.set_bind_group(0, group, &[]);
                    pass.dispatch_workgroups(*x, *y, 1);
                }
                drop(pass);
                i = end;
            }
            Ok(())
        })?;
        self.submit(encoder)
    }

    #[cfg(any(test, feature = "testing"))]
    /// The batch's codes with their current (updated) coefficients, and each row's residual
    /// energy ‖y − x·D‖² from the device's residual as of the last update.
    pub fn read_codes(&self, batch: &CodedBatch) -> Result<SparseCodes> {
        Ok(self.read_codes_and_residual(batch)?.0)
    }

    /// The codes of `batch` (indices and values, k slots per row) and its residual [B, d].
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

    #[cfg(any(test, feature = "testing"))]
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

#[cfg(test)]
mod tests {
    use super::*;

    crate::gpu::uniform_layout::params_mirror_test!(Params {
        start,
        len,
        d,
        k,
        n,
        n_atoms,
        iteration,
        last,
        decay,
        dims_per_fold,
        item_start,
        item_len,
        atom_first,
        atom_end,
        atom_lead,
        residual_shift,
        atom_shift
    });
}
