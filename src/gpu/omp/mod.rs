//! Batched sparse coding (`shaders/omp.wgsl`): Batch-OMP and matching pursuit, one greedy step
//! of the whole batch per pair of dispatches (`sweep`, then `select`), each sample's state in
//! device memory between them. Where the device has subgroup operations, matching pursuit runs
//! resident instead (`shaders/omp_resident.wgsl`): many steps per dispatch with α in registers,
//! one subgroup per sample on CPU adapters, one workgroup per sample on GPUs. On CPU adapters
//! Batch-OMP runs fused (`fused_omp`): sweep and select of many steps in one dispatch, one
//! invocation per sample.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use bytemuck::{Pod, Zeroable};

use super::buffer::{rows_per_window, texture_rows, Scratch, ScratchTexture, TextureShape};
use super::layout::{
    bind_group_layout, entry, pipeline_in_layout, read_texture, storage, uniform, written_texture,
};
use super::Gpu;
use crate::coding::{Coder, CodingOptions, GramPrecision};
use crate::error::{Error, Result};

mod record;

pub(super) const SHADER: &str = include_str!("../../../shaders/omp.wgsl");
/// The resident coder, compiled after omp.wgsl whose record and step functions it calls, with
/// its per-texel lines written out for each K (`texel_lines`).
pub(super) const RESIDENT_SHADER: &str = include_str!("../../../shaders/omp_resident.wgsl");
/// Most α texels one resident invocation holds (RT in omp_resident.wgsl): its compile time
/// grows with them on llvmpipe (past 64 texels, where the host writes loops over arrays: 9 s at
/// 128, minutes at 512), so larger K take the portable path. At 128 (K = 4096) the resident
/// kernel coded 3.8× faster than the sweeps.
const RESIDENT_TEXELS: usize = 128;
/// Most atoms per sample whose refit factor resident_refit grows in private memory on CPU
/// adapters: 64 (2 080 entries, 66 KiB per subgroup of 8 on llvmpipe's stack).
const PRIVATE_FACTOR_ATOMS: usize = 64;
// resident_refit's solve of a private factor leaves its solution in omp.wgsl's sel_x.
const _: () = assert!(PRIVATE_FACTOR_ATOMS <= FUSED_SUPPORT);
/// Invocations per sample of the GPUs' resident coder (`resident_mp_wg`, RWG): K = 16 384 in 16
/// texels (64 registers) per invocation, within WebGPU's default 256 per workgroup.
const RESIDENT_WG: usize = 256;
/// Most α texels a GPU's resident invocation holds: 32 (128 registers, K ≤ 32 768); past it
/// they would spill, and the sweeps run.
const RESIDENT_WG_TEXELS: usize = 32;
// resident_mp_wg reduces its argmax in omp.wgsl's REDUCE_MAX-long workgroup arrays.
const _: () = assert!(RESIDENT_WG.is_power_of_two() && RESIDENT_WG <= 256);

/// Invocations per sweep workgroup: a chunk of 512 atoms, so K = 1536 (and any multiple of
/// 512) fills every invocation.
const WG: u32 = 32;
/// Atoms per sweep invocation (`PER` in omp.wgsl): four G texels, each update entry read once
/// for PER atoms held in registers (16 rather than 8: the OMP kernel 1.25× faster on llvmpipe,
/// where every fetch is a gather across the lanes).
const PER: u32 = 16;
// sweep_reduced's tree reduction (REDUCE_MAX in omp.wgsl).
const _: () = assert!(WG.is_power_of_two() && WG <= 256);
/// Atoms per sweep workgroup.
const CHUNK: usize = (WG * PER) as usize;
/// Invocations per workgroup of the per-sample kernels (`start`, `select_*`, `finish`).
const SAMPLE_WG: u32 = 64;
/// Words of a sample record's header (`HEADER` in omp.wgsl).
const HEADER_WORDS: usize = 8;
/// G entries per texel of the G texture (rgba).
const TEXEL: usize = 4;

/// Mirrors `Params` in omp.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    batch: u32,
    n_atoms: u32,
    max_atoms: u32,
    k: u32,
    layer_shift: u32,
    refit: u32,
    n_chunks: u32,
    stride: u32,
    parts: u32,
    tolerance: f32,
    min_correlation: f32,
    min_pivot: f32,
    mask: u32,
    first_step: u32,
    last_step: u32,
    texels: u32,
    rows_first: [u32; 4],
    chunk_parts: u32,
    fresh: u32,
    first_block: u32,
    last_block: u32,
    factor_shift: u32,
    _pad: [u32; 3],
}

/// The entry points of omp.wgsl that coding runs.
#[derive(Clone, Copy)]
enum Kernel {
    Start,
    Sweep,
    /// The sweep with the argmax reduced in the workgroup (GPU adapters).
    SweepReduced,
    SelectOmp,
    SelectMp,
    Finish,
    PackF32,
    PackF16,
    PackAlpha,
    /// Batch-OMP's sweep and select fused, one invocation per sample (CPU adapters).
    FusedOmp,
}

impl Kernel {
    /// The entry point in omp.wgsl.
    fn entry(self) -> &'static str {
        match self {
            Kernel::Start => "start",
            Kernel::Sweep => "sweep",
            Kernel::SweepReduced => "sweep_reduced",
            Kernel::SelectOmp => "select_omp",
            Kernel::SelectMp => "select_mp",
            Kernel::Finish => "finish",
            Kernel::PackF32 => "pack_gram_f32",
            Kernel::PackF16 => "pack_gram_f16",
            Kernel::PackAlpha => "pack_alpha",
            Kernel::FusedOmp => "fused_omp",
        }
    }
}

/// Number of [`Kernel`]s.
const KERNELS: usize = 10;

/// The coding pipelines of one device, the scratch buffer holding the samples' state, and the
/// textures of G and of the pending updates (reused: jobs on one queue run one after another).
pub(crate) struct OmpKernels {
    /// The module, layouts and pipelines that read G of each precision
    /// ([`GramPrecision::F32`], then `F16`), each built on first use: G is bound as a read-only
    /// storage texture, whose format the shader names.
    variants: [OnceLock<GramVariant>; 2],
    work: Scratch<u32>,
    gram: ScratchTexture,
    updates: ScratchTexture,
    /// The pair of α textures MP's sweeps alternate between (OMP's read α⁰ from the first; the
    /// second is then a 1×1 stand-in).
    alphas: [ScratchTexture; 2],
    /// `fused_omp`'s Cholesky factors (`fac_tex`), and the 1×1 stand-in every kernel of the
    /// state layout binds there.
    factors: ScratchTexture,
    factor_stand_in: ScratchTexture,
    /// The resident MP coder by texels per invocation, whether it spans a workgroup (GPUs) or a
    /// subgroup (CPU adapters), G's precision and the refit's private factor entries, built on
    /// first use.
    resident: Mutex<HashMap<(usize, bool, GramPrecision, usize), ResidentKernels>>,
}

/// What reads G of one precision: omp.wgsl with G's storage-texture format, the layouts binding
/// it, and the pipelines.
struct GramVariant {
    /// Layout of `start`, `select_*` and `finish`: the update texture as a storage texture,
    /// and a stand-in for the factor texture (select_omp names it, FACTOR_TEXTURE off).
    state_layout: wgpu::BindGroupLayout,
    /// Layout of the sweeps: the update texture read.
    sweep_layout: wgpu::BindGroupLayout,
    /// Layout of `fused_omp`: α⁰'s texture read, no update texture, the factor texture.
    fused_layout: wgpu::BindGroupLayout,
    /// omp.wgsl, G's format written in.
    source: String,
    module: wgpu::ShaderModule,
    /// The pipelines by [`Kernel`], each built on first use: a device runs only some of them
    /// (CPU adapters never sweep_reduced, training never Batch-OMP's select, f32 G never
    /// pack_gram_f16), and on llvmpipe each costs milliseconds of a short command's start-up.
    pipelines: [OnceLock<wgpu::ComputePipeline>; KERNELS],
}

/// G's texture format for `gram`, and its name in WGSL.
fn gram_format(gram: GramPrecision) -> (wgpu::TextureFormat, &'static str) {
    match gram {
        GramPrecision::F32 => (wgpu::TextureFormat::Rgba32Float, "rgba32float"),
        GramPrecision::F16 => (wgpu::TextureFormat::Rgba16Float, "rgba16float"),
    }
}

/// omp.wgsl's declaration of G, which names its format.
const G_DECLARATION: &str = "var g_tex: texture_storage_2d_array<rgba32float, read>;";

/// `resident_mp` (one subgroup per sample) or `resident_mp_wg` (one workgroup per sample), and
/// `resident_refit` (one invocation per sample).
#[derive(Clone)]
struct ResidentKernels {
    /// The entry point of `mp`.
    mp_entry: &'static str,
    mp: wgpu::ComputePipeline,
    refit: wgpu::ComputePipeline,
}

/// How a job runs the resident coder: each invocation's α texels, the greedy steps of the
/// first dispatch and of each later one (which first rebuilds α from the chosen atoms), and the
/// refit's support rows per dispatch, under the driver's loop cap.
#[derive(Clone, Copy, Debug)]
struct ResidentPlan {
    texels: usize,
    /// Invocations per sample: a subgroup (CPU adapters), or RESIDENT_WG with the argmax
    /// reduced in workgroup memory (`workgroup`, GPUs).
    invocations: usize,
    workgroup: bool,
    first_steps: usize,
    later_steps: usize,
    rows_per_refit: usize,
    /// Entries of the refit's factor resident_refit holds in private memory (RK_TRI), or 0
    /// where it grows the factor in the record (REFIT_PRIVATE false).
    private_factor: usize,
}

impl ResidentPlan {
    /// The [first, last) steps of each dispatch for `steps` greedy steps.
    fn step_ranges(&self, steps: usize) -> Vec<(usize, usize)> {
        let first = self.first_steps.min(steps);
        std::iter::once((0, first))
            .chain(
                crate::gpu::buffer::ranges(steps - first, self.later_steps)
                    .into_iter()
                    .map(|(a, b)| (first + a, first + b))
                    .filter(|(a, b)| a < b),
            )
            .collect()
    }
}

/// The resident plan for K = `n_atoms`, or `None` when the portable path must run: Batch-OMP,
/// no subgroup operations (or a planning view without them), on a CPU adapter no fixed
/// subgroup size, more atoms than a subgroup (workgroup) holds, too few invocations per
/// workgroup, or not one step (or, for a job that needs more than one dispatch, not one step
/// after the rebuild) under the loop cap.
fn resident_plan(
    gpu: &Gpu,
    coder: Coder,
    n_atoms: usize,
    max_atoms: usize,
) -> Option<ResidentPlan> {
    let limits = gpu.limits();
    if !matches!(coder, Coder::Mp { .. }) || !limits.subgroups {
        return None;
    }
    // Texels rounded up so that nearby K share a pipeline: to 8 on CPU adapters, to 4 on GPUs
    // (registers).
    let (invocations, workgroup, most, round) = if limits.cpu_paths {
        let lanes = limits.subgroup_size? as usize;
        (lanes, false, RESIDENT_TEXELS, 8)
    } else {
        if (limits.max_compute_invocations_per_workgroup as usize) < RESIDENT_WG {
            return None;
        }
        (RESIDENT_WG, true, RESIDENT_WG_TEXELS, 4)
    };
    let texels = n_atoms
        .div_ceil(TEXEL)
        .div_ceil(invocations)
        .next_multiple_of(round);
    if texels > most {
        return None;
    }
    let t = texels as u64;
    let k = max_atoms as u64;
    // Per dispatch: α⁰ loaded (4 atoms a texel) and its argmax; a later dispatch also rebuilds α
    // from up to k chosen atoms.
    let fixed = 10 * t + 8;
    let rebuild = k * (t + 1);
    // Per step: MP's search of the support for the atom, the update and argmax over the texels
    // (and the workgroup's reduction).
    let reduction = if workgroup {
        invocations.ilog2() as u64 + 2
    } else {
        0
    };
    let per_step = 5 * t + k + 8 + reduction;
    // Per refit row s < k: the Cholesky row (G[j, I], its forward solve, norm and copy).
    let per_row = 3 * k + k * k / 2 + 8;
    // The dispatch that completes a private factor also solves for the coefficients: two
    // triangular solves and three passes over the support.
    let solve = k * k + 3 * k + 8;
    // On CPU adapters the factor grows in private memory (up to PRIVATE_FACTOR_ATOMS, past
    // which it would outgrow the stack): per dispatch, rows [0, first) read once and the new
    // ones written once, at most tri(k) copies; in the record where those leave no row.
    let factor = tri(max_atoms.next_multiple_of(8));
    let private = limits.cpu_paths
        && max_atoms <= PRIVATE_FACTOR_ATOMS
        && limits
            .max_loop_iterations
            .is_none_or(|cap| tri(max_atoms) as u64 + per_row + solve <= cap);
    // A refit dispatch's work besides its rows: the factor's copies and the solve.
    let refit_fixed = if private {
        tri(max_atoms) as u64 + solve
    } else {
        0
    };
    // MP takes at most 2k steps (a step may pick an atom again).
    let (first, later, rows) = match gpu.limits().max_loop_iterations {
        Some(cap) if fixed + per_step > cap || per_row > cap => return None,
        Some(cap) => {
            let first = (cap - fixed) / per_step;
            let later = cap.saturating_sub(fixed + rebuild) / per_step;
            if first < 2 * k && later == 0 {
                return None;
            }
            let rows = (cap - refit_fixed) / per_row;
            (first as usize, later as usize, rows as usize)
        }
        None => (usize::MAX, usize::MAX, usize::MAX),
    };
    Some(ResidentPlan {
        texels,
        invocations,
        workgroup,
        first_steps: first,
        later_steps: later.max(1),
        rows_per_refit: rows.max(1),
        private_factor: if private { factor } else { 0 },
    })
}

/// Texel format of `fused_omp`'s Cholesky factors: one entry's f32 bits per texel, read and
/// written by the same kernel (WebGPU guarantees read-write storage of r32uint).
const FACTOR_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::R32Uint;

/// Most atoms per sample of the fused Batch-OMP kernel (`SEL_PRIVATE` in omp.wgsl: its solves'
/// vectors and the chosen atoms live in private arrays of that length).
const FUSED_SUPPORT: usize = 128;

/// Most atoms K the fused kernel codes against. Each invocation reads its sample's chosen rows
/// of G 64 bytes at a time, 8 samples to a SIMD group, where a sweep workgroup reads 2 KiB runs
/// of each row; past some size of G that costs more than the fusion saves. On lavapipe (2-core
/// EPYC VM, d = 384, k = 32, B = 1024, each within one `dbksvd bench` run) fused against sweep
/// and select: 0.53 / 0.81 s at K = 2048, 0.83 / 1.87 at 4096, 1.37 / 2.76 at 6144, 1.67 / 3.30
/// at 7168, then 4.33 / 3.82 at 8000, 4.59 / 3.98 at 8192, and 11.9 / 6.8 s at K = 16 384
/// (d = 2304, k = 64, B = 256). The cliff's place depends on the CPU's caches: this keeps a
/// margin below it.
const FUSED_DICTIONARY: usize = 6144;

/// One `fused_omp` dispatch: its greedy steps [first, last), and of its one step the blocks of
/// PER atoms [first, last) where a whole step does not fit the loop cap (else all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FusedDispatch {
    pub steps: (usize, usize),
    pub blocks: (u32, u32),
}

/// Blocks of a dispatch that sweeps them all (`last_block` in omp.wgsl, clamped there).
const ALL_BLOCKS: (u32, u32) = (0, u32::MAX);

/// The dispatches of `fused_omp` for Batch-OMP at K = `n_atoms`, or `None` where the sweeps
/// run: GPU paths (a step of one sample in one invocation would leave a GPU idle), matching
/// pursuit, more than FUSED_SUPPORT atoms per sample or FUSED_DICTIONARY atoms, a sample's
/// factor wider than a texture row, or not even one block and the solves of a step under the
/// loop cap.
fn fused_plan(
    gpu: &Gpu,
    coder: Coder,
    n_atoms: usize,
    max_atoms: usize,
) -> Option<Vec<FusedDispatch>> {
    let limits = gpu.limits();
    if !limits.cpu_paths
        || !limits.fused_omp
        || !matches!(coder, Coder::Omp)
        || max_atoms > FUSED_SUPPORT
        || n_atoms > FUSED_DICTIONARY
        || tri(max_atoms) > limits.max_texture_dimension_2d as usize
    {
        return None;
    }
    fused_dispatches(n_atoms, max_atoms, limits.max_loop_iterations)
}

/// The `fused_omp` dispatches for K = `n_atoms` and `max_atoms` steps under `cap` loop
/// iterations per invocation (all steps in one without a cap): as many whole steps per
/// dispatch as fit, and a step that does not fit alone split into dispatches of as many blocks
/// as fit; `None` when one block and the step's solves do not.
fn fused_dispatches(
    n_atoms: usize,
    max_atoms: usize,
    cap: Option<u64>,
) -> Option<Vec<FusedDispatch>> {
    let Some(cap) = cap else {
        return Some(vec![FusedDispatch {
            steps: (0, max_atoms),
            blocks: ALL_BLOCKS,
        }]);
    };
    let blocks = n_atoms.div_ceil(PER as usize) as u64;
    // Step s (s atoms chosen): per block of PER atoms its s update entries, its PER argmax
    // entries and itself; then select's solves (as `loop_iterations` counts them, less the
    // partials). Every dispatch first loads the record's chosen atoms and coefficients.
    let block = |s: u64| s + PER as u64 + 2;
    let solve = |s: u64| s * s + 8 * s + 8;
    let load = max_atoms as u64 + 4;
    let step = |s: u64| blocks * block(s) + solve(s);
    let mut out = Vec::new();
    let mut first = 0;
    while first < max_atoms {
        let mut used = load;
        let mut last = first;
        while last < max_atoms && used + step(last as u64) <= cap {
            used += step(last as u64);
            last += 1;
        }
        if last > first {
            out.push(FusedDispatch {
                steps: (first, last),
                blocks: ALL_BLOCKS,
            });
            first = last;
            continue;
        }
        // Step `first` alone exceeds the cap: its blocks in pieces, the solves in the last.
        let s = first as u64;
        let per_piece = cap.checked_sub(load + solve(s))? / block(s);
        if per_piece == 0 {
            return None;
        }
        let per_piece = per_piece.min(blocks);
        let mut b0 = 0;
        while b0 < blocks {
            let b1 = (b0 + per_piece).min(blocks);
            out.push(FusedDispatch {
                steps: (first, first + 1),
                blocks: (b0 as u32, if b1 == blocks { u32::MAX } else { b1 as u32 }),
            });
            b0 = b1;
        }
        first += 1;
    }
    Some(out)
}

/// Entries of a packed lower triangle of n rows.
fn tri(n: usize) -> usize {
    n * (n + 1) / 2
}

/// Whether a job coding with `options` at K = `n_atoms`, dimension `d` runs resident on `gpu`
/// (for `dbksvd bench`, which then times the sweeps beside it).
pub(crate) fn runs_resident(gpu: &Gpu, options: &CodingOptions, n_atoms: usize, d: usize) -> bool {
    let max_atoms = options.max_atoms(n_atoms, d).max(1);
    resident_plan(gpu, options.coder, n_atoms, max_atoms).is_some()
}

/// Whether a job coding with `options` at K = `n_atoms`, dimension `d` runs Batch-OMP fused on
/// `gpu` (for `dbksvd bench`, which then times the sweeps beside it).
pub(crate) fn runs_fused(gpu: &Gpu, options: &CodingOptions, n_atoms: usize, d: usize) -> bool {
    let max_atoms = options.max_atoms(n_atoms, d).max(1);
    fused_plan(gpu, options.coder, n_atoms, max_atoms).is_some()
}

/// Words of one sample's record in the scratch buffer for `max_atoms` chosen atoms: header,
/// chosen atoms, coefficients, right-hand side, solve scratch, forward solve (OMP), packed
/// Cholesky factor (the last not in fused_omp's records: it keeps the factors in a texture).
fn record_words(max_atoms: usize) -> usize {
    HEADER_WORDS + 5 * max_atoms + tri(max_atoms)
}

/// Whether `gpu` plans the sweeps that reduce their argmax in the workgroup (`sweep_reduced`,
/// one partial per chunk): GPUs, not CPU adapters, where barriers cost more than select's
/// longer loop over one partial per invocation.
fn reduced_sweep(gpu: &Gpu) -> bool {
    !gpu.limits().cpu_paths
}

/// Argmax partials per sample and chunk (`chunk_parts` in omp.wgsl): one per sweep invocation,
/// or one where the sweep reduces them.
fn chunk_parts(gpu: &Gpu) -> usize {
    match reduced_sweep(gpu) {
        true => 1,
        false => WG as usize,
    }
}

/// Argmax partials per sample.
fn partials(gpu: &Gpu, n_atoms: usize) -> usize {
    n_atoms.div_ceil(CHUNK) * chunk_parts(gpu)
}

/// α textures the sweeps of `coder` use: OMP's read α⁰ from one at every step and write none
/// (`fresh` in omp.wgsl), MP's alternate between two.
fn alpha_textures(coder: Coder) -> usize {
    match coder {
        Coder::Omp => 1,
        Coder::Mp { .. } => 2,
    }
}

/// Words of texture per sample of a coding job: its α textures and the update texture.
/// (fused_omp's factor texture takes the place of its records' factors, counted there; its
/// rows are rounded up to a power of two, at most twice a chunk's.)
pub(crate) fn texture_words(n_atoms: usize, max_atoms: usize, coder: Coder) -> usize {
    alpha_textures(coder) * n_atoms.next_multiple_of(TEXEL) + 2 * max_atoms
}

/// Words of one sample's chosen-atom mask.
fn mask_words(n_atoms: usize) -> usize {
    n_atoms.div_ceil(32)
}

/// Scratch words per sample: its record, its argmax partials (two words each), its mask.
pub(crate) fn scratch_words(gpu: &Gpu, n_atoms: usize, max_atoms: usize) -> usize {
    record_words(max_atoms) + 2 * partials(gpu, n_atoms) + mask_words(n_atoms)
}

impl OmpKernels {
    pub(crate) fn new(gpu: &Gpu) -> Result<Self> {
        let limits = gpu.limits();
        if limits.max_compute_invocations_per_workgroup < WG.max(SAMPLE_WG) {
            return Err(Error::ExceedsLimit {
                what: "sparse-coding workgroup (invocations)".into(),
                requested: WG.max(SAMPLE_WG) as u64,
                limit_name: "max_compute_invocations_per_workgroup",
                limit: limits.max_compute_invocations_per_workgroup as u64,
                largest_batch: None,
            });
        }
        gpu.scoped(|| {
            Ok(Self {
                variants: Default::default(),
                work: Scratch::default(),
                gram: ScratchTexture::default(),
                updates: ScratchTexture::default(),
                alphas: Default::default(),
                factors: Default::default(),
                factor_stand_in: Default::default(),
                resident: Mutex::default(),
            })
        })
    }

    /// What reads G of precision `gram` (built here if no job prepared it).
    fn variant(&self, gpu: &Gpu, gram: GramPrecision) -> &GramVariant {
        self.variants[gram as usize].get_or_init(|| GramVariant::new(gpu, gram))
    }

    /// Builds what reads G of precision `gram` and the pipelines of `kernels` not built yet,
    /// each in an error scope and kept only once valid: a job prepares what it will record.
    fn prepare(&self, gpu: &Gpu, gram: GramPrecision, kernels: &[Kernel]) -> Result<()> {
        let variant = gpu.cached(&self.variants[gram as usize], |gpu| {
            gpu.scoped(|| Ok(GramVariant::new(gpu, gram)))
        })?;
        for &kernel in kernels {
            gpu.cached(&variant.pipelines[kernel as usize], |gpu| {
                gpu.scoped(|| Ok(variant.build(gpu, kernel)))
            })?;
        }
        Ok(())
    }

    /// The pipeline of `kernel` reading G of precision `gram` (built here if the job did not
    /// prepare it).
    fn pipeline(&self, gpu: &Gpu, gram: GramPrecision, kernel: Kernel) -> &wgpu::ComputePipeline {
        let variant = self.variant(gpu, gram);
        variant.pipelines[kernel as usize].get_or_init(|| variant.build(gpu, kernel))
    }

    /// Layout of `start`, `select_*` and `finish` reading G of precision `gram`.
    fn state_layout(&self, gpu: &Gpu, gram: GramPrecision) -> &wgpu::BindGroupLayout {
        &self.variant(gpu, gram).state_layout
    }

    /// Layout of the sweeps reading G of precision `gram`.
    fn sweep_layout(&self, gpu: &Gpu, gram: GramPrecision) -> &wgpu::BindGroupLayout {
        &self.variant(gpu, gram).sweep_layout
    }
}

impl GramVariant {
    /// omp.wgsl with G's format for `gram` written in, its module and layouts; no pipelines yet.
    fn new(gpu: &Gpu, gram: GramPrecision) -> Self {
        let (format, wgsl_format) = gram_format(gram);
        let source = SHADER.replace(
            G_DECLARATION,
            &G_DECLARATION.replace("rgba32float", wgsl_format),
        );
        let module = super::layout::shader_module(gpu, "omp.wgsl", source.clone());
        let read = |format| read_texture(format, wgpu::TextureViewDimension::D2);
        let g_texture = read_texture(format, wgpu::TextureViewDimension::D2Array);
        let factors = wgpu::BindingType::StorageTexture {
            access: wgpu::StorageTextureAccess::ReadWrite,
            format: FACTOR_FORMAT,
            view_dimension: wgpu::TextureViewDimension::D2Array,
        };
        // start, select and finish: the state; the sweeps: α textures in and out.
        let state_layout = bind_group_layout(
            gpu,
            "omp state",
            &[
                entry(0, uniform()),
                entry(1, g_texture),
                entry(3, written_texture(wgpu::TextureFormat::Rg32Uint)),
                entry(5, storage(true)),
                entry(6, storage(true)),
                entry(7, storage(false)),
                entry(8, storage(false)),
                entry(14, factors),
            ],
        );
        // Four storage textures: WebGPU's default max_storage_textures_per_shader_stage.
        let sweep_layout = bind_group_layout(
            gpu,
            "omp sweep",
            &[
                entry(0, uniform()),
                entry(1, g_texture),
                entry(2, read(wgpu::TextureFormat::Rg32Uint)),
                entry(8, storage(false)),
                entry(12, read(wgpu::TextureFormat::Rgba32Uint)),
                entry(13, written_texture(wgpu::TextureFormat::Rgba32Uint)),
            ],
        );
        let fused_layout = bind_group_layout(
            gpu,
            "omp fused",
            &[
                entry(0, uniform()),
                entry(1, g_texture),
                entry(5, storage(true)),
                entry(6, storage(true)),
                entry(8, storage(false)),
                entry(12, read(wgpu::TextureFormat::Rgba32Uint)),
                entry(14, factors),
            ],
        );
        Self {
            state_layout,
            sweep_layout,
            fused_layout,
            source,
            module,
            pipelines: Default::default(),
        }
    }

    /// The pipeline of `kernel` in this variant's module and layouts.
    fn build(&self, gpu: &Gpu, kernel: Kernel) -> wgpu::ComputePipeline {
        let (state, sweep) = (Some(&self.state_layout), Some(&self.sweep_layout));
        let layout = match kernel {
            Kernel::Start | Kernel::SelectOmp | Kernel::SelectMp | Kernel::Finish => state,
            Kernel::Sweep | Kernel::SweepReduced => sweep,
            Kernel::FusedOmp => Some(&self.fused_layout),
            Kernel::PackF32 | Kernel::PackF16 | Kernel::PackAlpha => None,
        };
        let name = kernel.entry();
        match layout {
            Some(layout) => {
                // fused_omp keeps its factors in fac_tex, the other kernels in the record.
                let factor_texture = f64::from(u8::from(matches!(kernel, Kernel::FusedOmp)));
                let constants = [("WG", WG as f64), ("FACTOR_TEXTURE", factor_texture)];
                pipeline_in_layout(gpu, &self.module, name, layout, &constants)
            }
            None => super::layout::compute_pipeline(gpu, &self.module, name, &[]),
        }
    }
}

/// The resident coder of `plan` (its texels per invocation and kind), built on first use.
fn resident_kernels(
    gpu: &Gpu,
    kernels: &OmpKernels,
    plan: &ResidentPlan,
    gram: GramPrecision,
) -> Result<ResidentKernels> {
    let texels = plan.texels;
    let factor = plan.private_factor;
    gpu.cached_by(
        &kernels.resident,
        (texels, plan.workgroup, gram, factor),
        || {
            let source = format!(
                "const RK_TRI: u32 = {}u;\n{}{}",
                factor.max(1),
                kernels.variant(gpu, gram).source,
                super::layout::texel_lines(RESIDENT_SHADER, texels)
            );
            let module = super::layout::shader_module(gpu, "omp_resident.wgsl", source);
            let constants = [("RWG", plan.invocations as f64)];
            let entry = match plan.workgroup {
                true => "resident_mp_wg",
                false => "resident_mp",
            };
            ResidentKernels {
                mp_entry: entry,
                mp: super::layout::compute_pipeline(gpu, &module, entry, &constants),
                refit: super::layout::compute_pipeline(
                    gpu,
                    &module,
                    "resident_refit",
                    &[("REFIT_PRIVATE", f64::from(u8::from(factor > 0)))],
                ),
            }
        },
    )
}

/// The bind groups of one chunk of a coding job's rows.
struct ChunkGroups {
    /// start, select, finish.
    state: wgpu::BindGroup,
    path: ChunkPath,
}

/// The greedy steps' bind groups of one chunk, by path.
enum ChunkPath {
    /// The sweeps reading α texture 0 (writing 1), and 1 (writing 0); pack_alpha (α⁰ into α
    /// texture 0).
    Sweeps {
        sweeps: [wgpu::BindGroup; 2],
        pack: wgpu::BindGroup,
    },
    /// `fused_omp`'s dispatches, one per range of steps; pack_alpha (α⁰ into α texture 0).
    Fused {
        steps: Vec<wgpu::BindGroup>,
        pack: wgpu::BindGroup,
    },
    /// The resident coder's dispatches, one per range of steps, then the refit's, one per
    /// range of support rows.
    Resident {
        kernels: ResidentKernels,
        steps: Vec<wgpu::BindGroup>,
        refit: Vec<wgpu::BindGroup>,
    },
}

/// How a coding job runs its greedy steps: resident (its plan and pipelines), or by sweeps and
/// selects over the pair of α textures.
enum StepPath {
    Resident(ResidentPlan, ResidentKernels),
    /// Views of the pair of α textures (the scratch cache keeps the textures).
    Sweeps([wgpu::TextureView; 2]),
    /// Batch-OMP's fused kernel: its dispatches, and a view of α⁰'s texture (the first of the
    /// pair; the fused kernel binds no second).
    Fused {
        plan: Vec<FusedDispatch>,
        alpha0: wgpu::TextureView,
        /// The samples' Cholesky factors, a row each, in layers of 2^factor_shift rows.
        factors: wgpu::TextureView,
        factor_shift: u32,
    },
}

/// How G [K, K] lies in its texture: rows of ⌈K/4⌉ texels, row r at row r mod 2^layer_shift of
/// layer r >> layer_shift (a power of two, so the kernels split a row index with a shift).
#[derive(Clone, Copy, Debug)]
struct GramTexture {
    shape: TextureShape,
    layer_shift: u32,
}

fn plan_gram(gpu: &Gpu, n_atoms: usize, gram: GramPrecision) -> Result<GramTexture> {
    let (format, _) = gram_format(gram);
    let width = n_atoms.div_ceil(TEXEL);
    // G's shape is fixed for a dictionary; exact sides keep f32 G at K = 16 384 at 1 GiB, the
    // most llvmpipe allocates for a texture.
    let (shape, layer_shift) = texture_rows(gpu, n_atoms, width, format, false).map_err(
        |(requested, limit_name, limit)| Error::ExceedsLimit {
            what: format!(
                "Gram matrix [{n_atoms}, {n_atoms}] as a texture of {width} texels per row"
            ),
            requested,
            limit_name,
            limit,
            largest_batch: None,
        },
    )?;
    Ok(GramTexture { shape, layer_shift })
}

/// Checks that coding with `options` against K = `n_atoms` atoms of dimension `d` fits the
/// device whatever the batch: the Gram matrix's bindings and, on llvmpipe, the per-invocation
/// loop cap (the per-sample solves grow with k²). Builds no pipeline.
pub(crate) fn check_coding_fits(
    gpu: &Gpu,
    n_atoms: usize,
    d: usize,
    options: &CodingOptions,
) -> Result<()> {
    let max_atoms = options.max_atoms(n_atoms, d).max(1);
    // The resident coder's plan and the fused kernel's keep their own dispatches under the cap.
    let resident = resident_plan(gpu, options.coder, n_atoms, max_atoms).is_some()
        || fused_plan(gpu, options.coder, n_atoms, max_atoms).is_some();
    gpu.check_loop_budget(
        &format!("sparse coding with K = {n_atoms}, k = {max_atoms}"),
        loop_iterations(
            options.coder,
            n_atoms,
            max_atoms,
            resident,
            partials(gpu, n_atoms),
        ),
    )?;
    if chunk_rows(gpu, n_atoms, options.k) == 0 {
        let limits = gpu.limits();
        return Err(Error::ExceedsLimit {
            what: format!(
                "one sample's correlations [1, {n_atoms}] and coding state ({} words) in one \
                 binding each",
                scratch_words(gpu, n_atoms, options.k)
            ),
            requested: 4 * n_atoms.max(scratch_words(gpu, n_atoms, options.k)) as u64,
            limit_name: "max_storage_buffer_binding_size",
            limit: limits.planned_binding_size.min(limits.max_buffer_size),
            largest_batch: None,
        });
    }
    let side = gpu.limits().max_texture_dimension_2d;
    if max_atoms > side as usize {
        return Err(Error::ExceedsLimit {
            what: format!("pending updates of k = {max_atoms} atoms as one texture row (texels)"),
            requested: max_atoms as u64,
            limit_name: "max_texture_dimension_2d",
            limit: side as u64,
            largest_batch: None,
        });
    }
    plan_gram(gpu, n_atoms, options.gram).map(|_| ())
}

/// Loop iterations one invocation executes in the heaviest dispatch of a coding job, counted as
/// a loop-capped driver counts them: every iteration of every loop within the dispatch. With
/// `resident`, only start and finish count (the resident and fused plans size their own
/// dispatches);
/// `parts`: the argmax partials per sample select reduces.
fn loop_iterations(
    coder: Coder,
    n_atoms: usize,
    max_atoms: usize,
    resident: bool,
    parts: usize,
) -> u64 {
    let k = max_atoms as u64;
    let parts = parts as u64;
    let per = PER as u64;
    // Sweep: k updates of PER atoms (unrolled), PER argmax entries.
    let sweep = k + per;
    // Select at step s < k: the argmax partials, the Cholesky row (s), its forward solve (s²/2),
    // the new row of z (s), the backward solve of the coefficients (s²/2) and short loops over
    // the support.
    let s = k.saturating_sub(1);
    let select = parts + s * s + 8 * s + 8;
    // Finish: the k output slots and, with MP's refit, the two triangular solves.
    let finish = match coder {
        Coder::Mp { refit: true } => k + k * k + 3 * k,
        Coder::Omp | Coder::Mp { refit: false } => k,
    };
    // Start clears the sample's chosen-atom mask.
    let start = mask_words(n_atoms) as u64;
    if resident {
        return finish.max(start);
    }
    sweep.max(select).max(finish).max(start)
}

/// Words per sample in the codes buffer: k indices, k values, the residual energy.
pub(crate) fn code_words(k: usize) -> usize {
    2 * k + 1
}

/// Most samples one coding dispatch chain takes for K atoms and k slots: the windows of α
/// [rows, K] and of the codes [rows, 2k + 1], and the samples' state, must each fit one binding,
/// and the sweep's rows·⌈K/CHUNK⌉ workgroups one dispatch. Larger batches are coded in chunks
/// of this many rows, one after another.
pub(crate) fn chunk_rows(gpu: &Gpu, n_atoms: usize, k: usize) -> usize {
    let limits = gpu.limits();
    let align = limits.binding_alignment();
    let groups = limits.max_compute_workgroups_per_dimension as usize;
    let scratch = scratch_words(gpu, n_atoms, k) as u64 * 4;
    let scratch_limit = limits.planned_binding_size.min(limits.max_buffer_size);
    rows_per_window(n_atoms, limits.planned_binding_size, align)
        .min(rows_per_window(
            code_words(k),
            limits.planned_binding_size,
            align,
        ))
        .min((scratch_limit / scratch) as usize)
        .min(groups.saturating_mul(groups) / n_atoms.div_ceil(CHUNK))
        // A row of the update texture per sample.
        .min(limits.max_texture_dimension_2d as usize)
}

/// Most samples one coding job takes: α [B, K] and the codes [B, 2k + 1] must each fit one
/// buffer (the kernels bind them in row chunks), and at least one row a chunk.
pub(crate) fn max_batch(gpu: &Gpu, n_atoms: usize, k: usize) -> usize {
    if chunk_rows(gpu, n_atoms, k) == 0 {
        return 0;
    }
    let words = gpu.limits().max_buffer_size / 4;
    (words / n_atoms.max(1) as u64).min(words / code_words(k) as u64) as usize
}

impl Gpu {
    pub(crate) fn omp_kernels(&self) -> Result<&OmpKernels> {
        self.cached(&self.inner.omp, OmpKernels::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::gpu::uniform_layout::params_mirror_test!(Params {
        batch,
        n_atoms,
        max_atoms,
        k,
        layer_shift,
        refit,
        n_chunks,
        stride,
        parts,
        tolerance,
        min_correlation,
        min_pivot,
        mask,
        first_step,
        last_step,
        texels,
        rows_first,
        chunk_parts,
        fresh,
        first_block,
        last_block,
        factor_shift
    });

    /// Argmax partials per sample of the CPU adapters' sweep (one per invocation).
    fn cpu_parts(n_atoms: usize) -> usize {
        n_atoms.div_ceil(CHUNK) * WG as usize
    }

    /// The heaviest dispatch no longer grows with k·K: the paper's size (K = 16 384, k = 64) fits
    /// llvmpipe's 45 000 budget, and only k in the hundreds (the select kernel's k² solves) does
    /// not.
    #[test]
    fn loop_estimate_grows_with_k_squared_not_k_times_atoms() {
        assert!(loop_iterations(Coder::Omp, 1536, 32, false, cpu_parts(1536)) < 2_000);
        assert!(loop_iterations(Coder::Omp, 16_384, 64, false, cpu_parts(16_384)) < 10_000);
        assert!(
            loop_iterations(
                Coder::Mp { refit: true },
                16_384,
                64,
                false,
                cpu_parts(16_384)
            ) < 10_000
        );
        assert!(loop_iterations(Coder::Omp, 16_384, 256, false, cpu_parts(16_384)) > 65_535);
    }

    /// The fused kernel's dispatches take every step once, in order, and a step split across
    /// dispatches every block once, in order: the bench's size (K = 1536, k = 32) in a few
    /// dispatches of whole steps under llvmpipe's 45 000, the paper's (K = 16 384, k = 64) with
    /// its later steps split (its last one needs about 87 000 iterations; `fused_plan` leaves
    /// that size to the sweeps, but K = 4096 at k = 128 needs the split too); k = 240 not at
    /// all (its solves alone exceed the cap).
    #[test]
    fn fused_dispatches_cover_every_step_and_block_under_the_cap() {
        let check = |n_atoms: usize, k: usize| -> Vec<FusedDispatch> {
            let plan = fused_dispatches(n_atoms, k, Some(45_000)).unwrap();
            let blocks = n_atoms.div_ceil(PER as usize) as u32;
            let mut next = (0, 0u32);
            for d in &plan {
                assert_eq!(d.steps.0, next.0, "{plan:?}");
                assert!(d.steps.0 < d.steps.1, "{plan:?}");
                if d.blocks == ALL_BLOCKS {
                    assert_eq!(next.1, 0, "{plan:?}");
                    next = (d.steps.1, 0);
                } else {
                    assert_eq!(d.steps.1, d.steps.0 + 1, "{plan:?}");
                    assert_eq!(d.blocks.0, next.1, "{plan:?}");
                    let end = d.blocks.1.min(blocks);
                    assert!(end > d.blocks.0, "{plan:?}");
                    next = match d.blocks.1 == u32::MAX {
                        true => (d.steps.1, 0),
                        false => (d.steps.0, end),
                    };
                }
            }
            assert_eq!(next, (k, 0), "{plan:?}");
            plan
        };
        let small = check(1536, 32);
        assert!(small.len() > 1 && small.len() < 8, "{small:?}");
        assert!(small.iter().all(|d| d.blocks == ALL_BLOCKS));
        let paper = check(16_384, 64);
        assert!(paper.iter().any(|d| d.blocks != ALL_BLOCKS), "{paper:?}");
        let wide = check(4096, 128);
        assert!(wide.iter().any(|d| d.blocks != ALL_BLOCKS), "{wide:?}");
        assert_eq!(check(40, 1).len(), 1);
        assert_eq!(
            fused_dispatches(1536, 32, None),
            Some(vec![FusedDispatch {
                steps: (0, 32),
                blocks: ALL_BLOCKS
            }])
        );
        assert_eq!(fused_dispatches(40, 0, Some(45_000)), Some(vec![]));
        assert_eq!(fused_dispatches(300, 240, Some(45_000)), None);
    }

    /// omp.wgsl declares G as GramVariant::new expects, so f16 G gets its own format.
    #[test]
    fn the_shader_declares_g_where_the_host_writes_its_format() {
        assert_eq!(SHADER.matches(G_DECLARATION).count(), 1);
    }

    /// fused_omp solves only in private arrays of SEL_PRIVATE entries: past them omp_take
    /// would grow the factor in the record, which fused_omp's records leave out.
    #[test]
    fn fused_support_is_the_shaders_private_solve_length() {
        let declaration = format!("const SEL_PRIVATE: u32 = {FUSED_SUPPORT}u;");
        assert_eq!(SHADER.matches(&declaration).count(), 1, "{declaration}");
    }

    /// The resident steps: the first dispatch takes its share, later ones (which rebuild α
    /// first) theirs, every step exactly once.
    #[test]
    fn resident_step_ranges_cover_every_step_once() {
        let plan = |first_steps, later_steps| ResidentPlan {
            texels: 8,
            invocations: 8,
            workgroup: false,
            first_steps,
            later_steps,
            rows_per_refit: 1,
            private_factor: 0,
        };
        assert_eq!(
            plan(5, 2).step_ranges(10),
            vec![(0, 5), (5, 7), (7, 9), (9, 10)]
        );
        assert_eq!(plan(5, 2).step_ranges(3), vec![(0, 3)]);
        assert_eq!(plan(5, 2).step_ranges(5), vec![(0, 5)]);
        assert_eq!(plan(5, 2).step_ranges(0), vec![(0, 0)]);
        assert_eq!(plan(usize::MAX, usize::MAX).step_ranges(64), vec![(0, 64)]);
    }
}
