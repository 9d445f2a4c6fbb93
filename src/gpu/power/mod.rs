//! The KSVD dictionary update by atom-wise power iteration (`shaders/power.wgsl`), double-batched:
//! atoms in a seeded random order, in batches of `atom_batch` that update in parallel from the
//! same residual (Jacobi), batches one after another (Gauss–Seidel). On CPU adapters with
//! subgroup operations the work items run resident (`shaders/power_resident.wgsl`).

use std::collections::HashMap;
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::buffer::{Scratch, ScratchTexture};
use super::layout::compute_pipeline;
use super::sparse::CodeBuffers;
use super::{Gpu, GpuBuffer, Matrix};
use crate::coding::SparseCodes;
use crate::error::{Error, Result};

mod items;
mod record;
mod recorder;

/// power.wgsl after the helpers it includes (see shaders/include/workgroup.wgsl).
pub(super) const SHADER: &str = concat!(
    include_str!("../../../shaders/include/workgroup.wgsl"),
    include_str!("../../../shaders/power.wgsl")
);
/// The resident item kernels, compiled after power.wgsl with their per-texel lines written out
/// for each d (`texel_lines`) where the device runs subgroup operations.
pub(super) const RESIDENT_SHADER: &str = include_str!("../../../shaders/power_resident.wgsl");
/// Most row texels one resident invocation holds (`UT` in power_resident.wgsl): 72 covers the
/// paper's d = 2304 in llvmpipe's subgroups of 8; wider rows take the vec4 kernels.
const RESIDENT_TEXELS: usize = 72;
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
/// then d/WG dimensions over the users. With `resident` texels per invocation
/// (power_partial_resident): u's texels, then per user its row's texels twice.
fn item_loop_iterations(users: u64, d: usize, resident: Option<usize>) -> u64 {
    let (wg, dd) = (WG as u64, d as u64);
    let reduction = wg.ilog2() as u64 + 1;
    let vec4 = dd.div_ceil(wg)
        + users.div_ceil(wg) * (dd + 1)
        + dd.div_ceil(wg) * (users + 1)
        + 2 * reduction
        + 8;
    let resident = resident.map_or(0, |ut| {
        let ut = ut as u64;
        3 * ut + users * (2 * ut + 4) + 8
    });
    vec4.max(resident)
}

/// Loop iterations one invocation runs in the heaviest update kernel for an atom with `users`
/// users at dimension `d`, its users cut into items of `item_users`: power_partial for one item,
/// power_reduce over its items (`resident`: texels per invocation of the resident kernels, as
/// in `item_loop_iterations`), commit over its users.
pub(crate) fn update_loop_iterations(
    users: u64,
    d: usize,
    item_users: usize,
    resident: Option<usize>,
) -> u64 {
    let (wg, dd) = (WG as u64, d as u64);
    let reduction = wg.ilog2() as u64 + 1;
    let items = users.div_ceil(item_users.max(1) as u64);
    let partial = item_loop_iterations(users.min(item_users as u64), d, resident);
    // power_reduce_resident: its texels once per item, then twice more.
    let reduce = (dd.div_ceil(wg) * (items + 2) + 2 * reduction + 8)
        .max(resident.map_or(0, |ut| ut as u64 * (items + 3) + 8));
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
    atom_batch: u32,
    mask_words: u32,
    slot_shift: u32,
    user_shift: u32,
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
    order_samples: wgpu::ComputePipeline,
    /// The vec4 entry points (d a multiple of 4) reading storage buffers.
    vec4: Vec4Kernels,
    /// The same reading texture copies (READ_TEXTURES), built on CPU adapters only.
    textured: Option<Vec4Kernels>,
    /// The resident item kernels by texels per invocation (`UT`) and READ_TEXTURES, built on
    /// first use.
    resident: Mutex<HashMap<(usize, bool, bool), ResidentKernels>>,
    /// Partial sums of one wave of work items (every row read is written first in its wave).
    partials: Scratch<f32>,
    /// [n, k] entries of order_slots: (visiting position, slot, atom, value bits).
    slot_order: Scratch<u32>,
    /// [n, mask_words]: the atom batches each sample's slots touch (order_slots).
    batch_mask: Scratch<u32>,
    /// READ_TEXTURES: copies of the residual, the atoms and the iterates, and the 1×1
    /// stand-in the storage variant binds in their place.
    residual_texture: ScratchTexture,
    atom_texture: ScratchTexture,
    iterate_texture: ScratchTexture,
    stand_in: ScratchTexture,
    /// READ_TEXTURES: slot_order's copy (rgba32uint), and the 1×1 rgba32uint stand-in bound
    /// in place of it or of user_entries' copy where those are not made.
    slot_texture: ScratchTexture,
    uint_stand_in: ScratchTexture,
    /// user_table's entries and their texture copy (resident kernels with READ_TEXTURES).
    user_table: wgpu::ComputePipeline,
    user_entries: Scratch<u32>,
    user_texture: ScratchTexture,
}

/// The `*_vec4` entry points of power.wgsl under one value of READ_TEXTURES.
struct Vec4Kernels {
    partial: wgpu::ComputePipeline,
    project: wgpu::ComputePipeline,
    fold: wgpu::ComputePipeline,
    fold_rows: wgpu::ComputePipeline,
}

/// power_partial_resident, power_project_resident, power_reduce_resident (its textured
/// variant also writing the iterates' texture copy), fold_rows_resident and
/// fold_project_resident of power_resident.wgsl.
#[derive(Clone)]
pub(super) struct ResidentKernels {
    /// The entry point of `reduce` (the textured variant or not).
    reduce_entry: &'static str,
    partial: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    /// The projections and the fold in two passes, or (`fused`) in one.
    project: Option<wgpu::ComputePipeline>,
    fold: Option<wgpu::ComputePipeline>,
    fold_project: Option<wgpu::ComputePipeline>,
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
            let module = super::layout::shader_module(gpu, "power.wgsl", SHADER);
            let c = [("WG", WG as f64)];
            Ok(Self {
                partial: compute_pipeline(gpu, &module, "power_partial", &c),
                reduce: compute_pipeline(gpu, &module, "power_reduce", &c),
                project: compute_pipeline(gpu, &module, "power_project", &c),
                fold: compute_pipeline(gpu, &module, "fold", &c),
                fold_rows: compute_pipeline(gpu, &module, "fold_rows", &c),
                commit: compute_pipeline(gpu, &module, "commit", &c),
                order_slots: compute_pipeline(gpu, &module, "order_slots", &c),
                order_samples: compute_pipeline(gpu, &module, "order_samples", &c),
                vec4: Vec4Kernels::new(gpu, &module, false),
                textured: gpu
                    .adapter()
                    .is_cpu()
                    .then(|| Vec4Kernels::new(gpu, &module, true)),
                resident: Mutex::default(),
                partials: Scratch::default(),
                slot_order: Scratch::default(),
                batch_mask: Scratch::default(),
                residual_texture: ScratchTexture::default(),
                atom_texture: ScratchTexture::default(),
                iterate_texture: ScratchTexture::default(),
                stand_in: ScratchTexture::default(),
                slot_texture: ScratchTexture::default(),
                uint_stand_in: ScratchTexture::default(),
                user_table: compute_pipeline(gpu, &module, "user_table", &c),
                user_entries: Scratch::default(),
                user_texture: ScratchTexture::default(),
            })
        })
    }
}

impl PowerKernels {
    /// The resident item kernels holding `texels` texels per invocation, reading textures or
    /// storage, built on first use: with `fused`, fold_project_resident in place of
    /// power_project_resident and fold_rows_resident (each an llvmpipe compile at start-up).
    pub(super) fn resident(
        &self,
        gpu: &Gpu,
        texels: usize,
        textures: bool,
        fused: bool,
    ) -> Result<ResidentKernels> {
        gpu.cached_by(&self.resident, (texels, textures, fused), || {
            let source = format!(
                "{SHADER}{}",
                super::layout::texel_lines(RESIDENT_SHADER, texels)
            );
            let module = super::layout::shader_module(gpu, "power_resident.wgsl", source);
            let lanes = gpu.limits().subgroup_size.unwrap_or(1);
            let c = [
                ("RWG", f64::from(lanes)),
                ("READ_TEXTURES", f64::from(u8::from(textures))),
            ];
            let reduce = match textures {
                true => "power_reduce_resident_textured",
                false => "power_reduce_resident",
            };
            ResidentKernels {
                reduce_entry: reduce,
                partial: compute_pipeline(gpu, &module, "power_partial_resident", &c),
                reduce: compute_pipeline(gpu, &module, reduce, &c),
                project: (!fused)
                    .then(|| compute_pipeline(gpu, &module, "power_project_resident", &c)),
                fold: (!fused).then(|| compute_pipeline(gpu, &module, "fold_rows_resident", &c)),
                fold_project: fused
                    .then(|| compute_pipeline(gpu, &module, "fold_project_resident", &c)),
            }
        })
    }
}

/// One batch of samples and their codes on the device, ready for dictionary updates: the
/// samples Y, the codes, the residual E = Y − X·D, and the per-atom user lists.
pub struct CodedBatch {
    d: usize,
    n_atoms: usize,
    pub(crate) samples: Matrix,
    pub(crate) residual: Matrix,
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

    /// Row texels each invocation of the resident item kernels (power_resident.wgsl) holds at
    /// dimension `d`, where they run: CPU adapters with one subgroup size (a workgroup is one
    /// subgroup), d a multiple of 4, at most RESIDENT_TEXELS per invocation.
    pub(crate) fn resident_update_texels(&self, d: usize) -> Option<usize> {
        let limits = self.limits();
        let lanes = limits.subgroup_size? as usize;
        if !limits.cpu_paths || d == 0 || !d.is_multiple_of(4) {
            return None;
        }
        let texels = (d / 4).div_ceil(lanes);
        (texels <= RESIDENT_TEXELS).then_some(texels)
    }

    /// Users of one atom that one workgroup of the update takes at dimension `d`: an atom with
    /// more is spread over several workgroups and their partial sums reduced, so an atom may have
    /// any number of users. Below the driver's loop cap where it has one (llvmpipe with the
    /// resident kernels: about 1 600 at d = 384, 300 at d = 2304); `ExceedsLimit` when not even
    /// one user fits.
    pub fn update_item_users(&self, d: usize) -> Result<usize> {
        let Some(cap) = self.limits().max_loop_iterations else {
            return Ok(ITEM_USERS);
        };
        let resident = self.resident_update_texels(d);
        self.check_loop_budget(
            &format!("power iteration over one user at d = {d}"),
            item_loop_iterations(1, d, resident),
        )?;
        let most = largest_fitting(1, ITEM_USERS as u64, |u| {
            item_loop_iterations(u, d, resident) <= cap
        });
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
        let resident = self.resident_update_texels(d);
        let most = largest_fitting(0, cap.saturating_mul(WG as u64), |n| {
            update_loop_iterations(n, d, item_users, resident) <= cap
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

    #[cfg(any(test, feature = "testing"))]
    /// The batch's codes with their current (updated) coefficients, and each row's residual
    /// energy ‖y − x·D‖² from the device's residual as of the last update.
    pub fn read_codes(&self, batch: &CodedBatch) -> Result<SparseCodes> {
        Ok(self.read_codes_and_residual(batch)?.0)
    }

    #[cfg(any(test, feature = "testing"))]
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
        atom_shift,
        atom_batch,
        mask_words,
        slot_shift,
        user_shift
    });

    /// power.wgsl's private key array is as long as the host's bound on the k it takes.
    #[test]
    fn order_samples_holds_the_k_the_host_gives_it() {
        let declared = format!("const ORDER_PRIVATE: u32 = {}u;", record::ORDER_PRIVATE);
        assert_eq!(SHADER.matches(&declared).count(), 1);
    }
}
