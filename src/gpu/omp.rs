//! Batched sparse coding (`shaders/omp.wgsl`): Batch-OMP and matching pursuit, one greedy step
//! of the whole batch per pair of dispatches (`sweep`, then `select`), each sample's state in
//! device memory between them. On CPU adapters with subgroup operations the resident coders
//! (`shaders/omp_resident.wgsl`) run many steps per dispatch with α in registers instead.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

use super::buffer::{
    binding, rows_per_window, texture_rows, window, Scratch, ScratchTexture, TextureShape,
};
use super::{Gpu, GpuBuffer, Matrix};
use crate::coding::{Coder, CodingOptions, GramPrecision};
use crate::error::{Error, Result};

const SHADER: &str = include_str!("../../shaders/omp.wgsl");
/// The resident coder, compiled after omp.wgsl whose record and step functions it calls (and
/// after the `RT` the host defines for each K).
const RESIDENT_SHADER: &str = include_str!("../../shaders/omp_resident.wgsl");
/// Most α texels one resident invocation holds (`RT` in omp_resident.wgsl): its compile time
/// grows with them on llvmpipe (2 s at 48, 9 s at 128, minutes at 512), so larger K take the
/// portable path. At 128 (K = 4096) the resident kernel still codes 3.8× faster.
const RESIDENT_TEXELS: usize = 128;

/// Invocations per sweep workgroup.
const WG: u32 = 64;
/// Atoms per sweep invocation (`PER` in omp.wgsl): two G texels, each update entry read once
/// for PER atoms held in registers.
const PER: u32 = 8;
/// Atoms per sweep workgroup: one argmax partial per sample and chunk.
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
}

/// The coding pipelines of one device, the scratch buffer holding the samples' state, and the
/// textures of G and of the pending updates (reused: jobs on one queue run one after another).
pub(crate) struct OmpKernels {
    /// Layout of `start`, `select_*` and `finish`: the update texture as a storage texture.
    state_layout: wgpu::BindGroupLayout,
    /// Layout of the sweeps: the update texture sampled.
    sweep_layout: wgpu::BindGroupLayout,
    start: wgpu::ComputePipeline,
    sweep_omp: wgpu::ComputePipeline,
    sweep_mp: wgpu::ComputePipeline,
    select_omp: wgpu::ComputePipeline,
    select_mp: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    pack_f32: wgpu::ComputePipeline,
    pack_f16: wgpu::ComputePipeline,
    pack_alpha: wgpu::ComputePipeline,
    work: Scratch<u32>,
    gram: ScratchTexture,
    updates: ScratchTexture,
    /// The pair of α textures the sweeps alternate between.
    alphas: [ScratchTexture; 2],
    /// The resident MP coder by texels per invocation (`RT`), built on first use where the
    /// device has one fixed subgroup size and is a CPU.
    resident: Mutex<HashMap<usize, ResidentKernels>>,
}

/// `resident_mp` (one subgroup per sample) and `resident_refit` (one invocation per sample).
#[derive(Clone)]
struct ResidentKernels {
    mp: wgpu::ComputePipeline,
    refit: wgpu::ComputePipeline,
}

/// How a job runs the resident coder: each invocation's α texels, the greedy steps per
/// dispatch and the refit's support rows per dispatch under the driver's loop cap.
#[derive(Clone, Copy, Debug)]
struct ResidentPlan {
    texels: usize,
    steps_per_dispatch: usize,
    rows_per_refit: usize,
}

/// The resident plan for K = `n_atoms`, or `None` when the portable path must run: Batch-OMP,
/// no fixed-size subgroups (or a planning view without them), not a CPU adapter, more atoms
/// than a subgroup holds, or not one step under the loop cap.
fn resident_plan(
    gpu: &Gpu,
    coder: Coder,
    n_atoms: usize,
    max_atoms: usize,
) -> Option<ResidentPlan> {
    let invocations = gpu.limits().subgroup_size? as usize;
    if !matches!(coder, Coder::Mp { .. }) || !gpu.adapter().is_cpu() {
        return None;
    }
    // Rounded up to a multiple of 8, so that nearby K share a pipeline.
    let texels = n_atoms
        .div_ceil(TEXEL)
        .div_ceil(invocations)
        .next_multiple_of(8);
    if texels > RESIDENT_TEXELS {
        return None;
    }
    let t = texels as u64;
    let k = max_atoms as u64;
    // Per dispatch: α loaded and stored (4 atoms a texel), the support's slots marked.
    let fixed = 9 * t + k + 8;
    // Per step: the argmax over 4 atoms a texel, the update over the texels.
    let per_step = 5 * t + 8;
    // Per refit row s < k: α⁰[j] over the support, the Cholesky row (as `loop_iterations`).
    let per_row = 4 * k + k * k / 2 + 8;
    let (steps, rows) = match gpu.limits().max_loop_iterations {
        Some(cap) if fixed + per_step > cap || per_row > cap => return None,
        Some(cap) => (
            ((cap - fixed) / per_step) as usize,
            (cap / per_row) as usize,
        ),
        None => (usize::MAX, usize::MAX),
    };
    Some(ResidentPlan {
        texels,
        steps_per_dispatch: steps.max(1),
        rows_per_refit: rows.max(1),
    })
}

/// Words of one sample's record in the scratch buffer for `max_atoms` chosen atoms: header,
/// chosen atoms, coefficients, right-hand side, solve scratch, packed Cholesky factor.
fn record_words(max_atoms: usize) -> usize {
    HEADER_WORDS + 4 * max_atoms + max_atoms * (max_atoms + 1) / 2
}

/// Argmax partials per sample: one per sweep invocation.
fn partials(n_atoms: usize) -> usize {
    n_atoms.div_ceil(CHUNK) * WG as usize
}

/// Words of texture per sample of a coding job: the pair of α textures and the update texture.
pub(crate) fn texture_words(n_atoms: usize, max_atoms: usize) -> usize {
    2 * n_atoms.next_multiple_of(TEXEL) + 2 * max_atoms
}

/// Words of one sample's chosen-atom mask.
fn mask_words(n_atoms: usize) -> usize {
    n_atoms.div_ceil(32)
}

/// Scratch words per sample: its record, its argmax partials (two words each), its mask.
pub(crate) fn scratch_words(n_atoms: usize, max_atoms: usize) -> usize {
    record_words(max_atoms) + 2 * partials(n_atoms) + mask_words(n_atoms)
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
            let device = gpu.device();
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("omp.wgsl"),
                source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(SHADER)),
            });
            let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty,
                count: None,
            };
            let buffer = |ty| wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            };
            let uniform = buffer(wgpu::BufferBindingType::Uniform);
            let read = buffer(wgpu::BufferBindingType::Storage { read_only: true });
            let write = buffer(wgpu::BufferBindingType::Storage { read_only: false });
            let g_texture = wgpu::BindingType::Texture {
                sample_type: wgpu::TextureSampleType::Float { filterable: false },
                view_dimension: wgpu::TextureViewDimension::D2Array,
                multisampled: false,
            };
            let state_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("omp state"),
                entries: &[
                    entry(0, uniform),
                    entry(1, g_texture),
                    entry(
                        3,
                        wgpu::BindingType::StorageTexture {
                            access: wgpu::StorageTextureAccess::WriteOnly,
                            format: wgpu::TextureFormat::Rg32Uint,
                            view_dimension: wgpu::TextureViewDimension::D2,
                        },
                    ),
                    entry(6, read),
                    entry(7, write),
                    entry(8, write),
                ],
            });
            let sweep_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("omp sweep"),
                entries: &[
                    entry(0, uniform),
                    entry(1, g_texture),
                    entry(
                        2,
                        wgpu::BindingType::Texture {
                            sample_type: wgpu::TextureSampleType::Uint,
                            view_dimension: wgpu::TextureViewDimension::D2,
                            multisampled: false,
                        },
                    ),
                    entry(8, write),
                    entry(
                        12,
                        wgpu::BindingType::Texture {
                            sample_type: wgpu::TextureSampleType::Uint,
                            view_dimension: wgpu::TextureViewDimension::D2,
                            multisampled: false,
                        },
                    ),
                    entry(
                        13,
                        wgpu::BindingType::StorageTexture {
                            access: wgpu::StorageTextureAccess::WriteOnly,
                            format: wgpu::TextureFormat::Rgba32Uint,
                            view_dimension: wgpu::TextureViewDimension::D2,
                        },
                    ),
                ],
            });
            let constants = [("WG", WG as f64)];
            let pipeline = |layout: &wgpu::BindGroupLayout, entry: &str| {
                let pipeline_layout =
                    device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(entry),
                        bind_group_layouts: &[Some(layout)],
                        immediate_size: 0,
                    });
                super::sparse::compute_pipeline_in(
                    gpu,
                    &module,
                    entry,
                    Some(&pipeline_layout),
                    &constants,
                )
            };
            Ok(Self {
                start: pipeline(&state_layout, "start"),
                sweep_omp: pipeline(&sweep_layout, "sweep_omp"),
                sweep_mp: pipeline(&sweep_layout, "sweep_mp"),
                select_omp: pipeline(&state_layout, "select_omp"),
                select_mp: pipeline(&state_layout, "select_mp"),
                finish: pipeline(&state_layout, "finish"),
                pack_f32: super::sparse::compute_pipeline(gpu, &module, "pack_gram_f32", &[]),
                pack_f16: super::sparse::compute_pipeline(gpu, &module, "pack_gram_f16", &[]),
                pack_alpha: super::sparse::compute_pipeline(gpu, &module, "pack_alpha", &[]),
                state_layout,
                sweep_layout,
                work: Scratch::default(),
                gram: ScratchTexture::default(),
                updates: ScratchTexture::default(),
                alphas: Default::default(),
                resident: Mutex::default(),
            })
        })
    }
}

/// The resident coder with `texels` α texels per invocation, built on first use.
fn resident_kernels(gpu: &Gpu, kernels: &OmpKernels, texels: usize) -> ResidentKernels {
    let mut cache = kernels.resident.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(texels)
        .or_insert_with(|| {
            let source = format!("const RT: u32 = {texels}u;\n{SHADER}{RESIDENT_SHADER}");
            let module = gpu
                .device()
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("omp_resident.wgsl"),
                    source: wgpu::ShaderSource::Wgsl(Cow::Owned(source)),
                });
            let invocations = gpu.inner.subgroup_size.unwrap_or(1);
            let constants = [("RWG", invocations as f64)];
            ResidentKernels {
                mp: super::sparse::compute_pipeline(gpu, &module, "resident_mp", &constants),
                refit: super::sparse::compute_pipeline(gpu, &module, "resident_refit", &constants),
            }
        })
        .clone()
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
}

/// How G [K, K] lies in its texture: rows of ⌈K/4⌉ texels, row r at row r mod 2^layer_shift of
/// layer r >> layer_shift (a power of two, so the kernels split a row index with a shift).
#[derive(Clone, Copy, Debug)]
struct GramTexture {
    shape: TextureShape,
    layer_shift: u32,
}

fn plan_gram(gpu: &Gpu, n_atoms: usize, gram: GramPrecision) -> Result<GramTexture> {
    let format = match gram {
        GramPrecision::F32 => wgpu::TextureFormat::Rgba32Float,
        GramPrecision::F16 => wgpu::TextureFormat::Rgba16Float,
    };
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
    // The resident coder's plan keeps its own dispatches under the cap.
    let resident = resident_plan(gpu, options.coder, n_atoms, max_atoms).is_some();
    gpu.check_loop_budget(
        &format!("sparse coding with K = {n_atoms}, k = {max_atoms}"),
        loop_iterations(options.coder, n_atoms, max_atoms, resident),
    )?;
    if chunk_rows(gpu, n_atoms, options.k) == 0 {
        let limits = gpu.limits();
        return Err(Error::ExceedsLimit {
            what: format!(
                "one sample's correlations [1, {n_atoms}] and coding state ({} words) in one \
                 binding each",
                scratch_words(n_atoms, options.k)
            ),
            requested: 4 * n_atoms.max(scratch_words(n_atoms, options.k)) as u64,
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
/// `resident`, only start and finish count (the resident plan sizes its own dispatches).
fn loop_iterations(coder: Coder, n_atoms: usize, max_atoms: usize, resident: bool) -> u64 {
    let k = max_atoms as u64;
    let parts = partials(n_atoms) as u64;
    let per = PER as u64;
    // Sweep: k updates of PER atoms (unrolled), PER argmax entries.
    let sweep = k + per;
    // Select at step s < k: the argmax partials, α⁰[j] and the Cholesky row (s each), its forward solve
    // (s²/2), both solves of the coefficients (s² in all) and short loops over the support.
    let s = k.saturating_sub(1);
    let select = parts + 3 * s * s / 2 + 8 * s + 8;
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
    let scratch = scratch_words(n_atoms, k) as u64 * 4;
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

    /// Records the sparse coding of `batch` samples of dimension `d`: `alpha` holds their
    /// correlations Y·Dᵀ
    /// (overwritten), `y_norm2` their squared norms, and `codes` receives `2k + 1` words per
    /// sample (see [`code_words`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_sparse_code(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        d: usize,
        gram: &Matrix,
        alpha: &Matrix,
        y_norm2: &GpuBuffer<f32>,
        batch: usize,
        options: &CodingOptions,
        codes: &GpuBuffer<u32>,
    ) -> Result<()> {
        let n_atoms = gram.rows();
        if gram.cols() != n_atoms || alpha.cols() != n_atoms || alpha.rows() < batch {
            return Err(Error::ShapeMismatch {
                op: format!("sparse coding of {batch} samples (Gram vs correlations)"),
                left: gram.shape(),
                right: alpha.shape(),
            });
        }
        let k = options.k;
        if y_norm2.len() < batch || codes.len() < batch * code_words(k) {
            return Err(Error::InvalidArgument(format!(
                "sparse coding of {batch} samples: norms buffer holds {}, codes buffer {} words",
                y_norm2.len(),
                codes.len()
            )));
        }
        if batch == 0 {
            return Ok(());
        }
        let fits = max_batch(self, n_atoms, k);
        if batch > fits {
            return Err(Error::ExceedsLimit {
                what: format!("sparse-coding batch for K = {n_atoms}, k = {k} (samples)"),
                requested: batch as u64,
                limit_name: "max_buffer_size",
                limit: fits as u64,
                largest_batch: None,
            });
        }
        let max_atoms = options.max_atoms(n_atoms, d);
        check_coding_fits(self, n_atoms, d, options)?;
        let g = plan_gram(self, n_atoms, options.gram)?;
        let kernels = self.omp_kernels()?;
        let align = self.limits().binding_alignment();
        let n_chunks = n_atoms.div_ceil(CHUNK);
        let stride = record_words(max_atoms);
        // Chunks of rows (even sizes), coded one after another with the same scratch.
        let most = chunk_rows(self, n_atoms, k).max(1);
        let rows = batch.div_ceil(batch.div_ceil(most));
        let parts = rows * stride;
        let masks = parts + 2 * rows * partials(n_atoms);
        let work_words = masks + rows * mask_words(n_atoms);
        let work = kernels.work.get(self, work_words)?;
        let g_texture = kernels.gram.get(self, g.shape)?;
        let updates = kernels.updates.get(
            self,
            TextureShape {
                width: max_atoms.max(1) as u32,
                height: rows as u32,
                layers: 1,
                format: wgpu::TextureFormat::Rg32Uint,
            },
        )?;
        let alpha_shape = TextureShape {
            width: n_atoms.div_ceil(TEXEL) as u32,
            height: rows as u32,
            layers: 1,
            format: wgpu::TextureFormat::Rgba32Uint,
        };
        // The resident coder keeps α in registers and the `alpha` buffer; only the sweeps need
        // the pair of α textures.
        let path = match resident_plan(self, options.coder, n_atoms, max_atoms) {
            Some(plan) => StepPath::Resident(plan, resident_kernels(self, kernels, plan.texels)),
            None => {
                let textures = [
                    kernels.alphas[0].get(self, alpha_shape)?,
                    kernels.alphas[1].get(self, alpha_shape)?,
                ];
                StepPath::Sweeps(
                    textures
                        .each_ref()
                        .map(|t| t.view(wgpu::TextureViewDimension::D2)),
                )
            }
        };
        // G's rows go into the texture in windows of whole rows that fit one binding.
        let pack_chunks = super::buffer::ranges(
            n_atoms,
            rows_per_window(n_atoms, self.limits().planned_binding_size, align).max(1),
        );
        let pack = match options.gram {
            GramPrecision::F32 => &kernels.pack_f32,
            GramPrecision::F16 => &kernels.pack_f16,
        };
        let (sweep, select, steps) = match options.coder {
            Coder::Omp => (&kernels.sweep_omp, &kernels.select_omp, max_atoms),
            Coder::Mp { .. } => (&kernels.sweep_mp, &kernels.select_mp, 2 * max_atoms),
        };
        let chunks = super::buffer::ranges(batch, rows);
        let base = Params {
            batch: 0,
            n_atoms: n_atoms as u32,
            max_atoms: max_atoms as u32,
            k: k as u32,
            layer_shift: g.layer_shift,
            refit: matches!(options.coder, Coder::Mp { refit: true }) as u32,
            n_chunks: n_chunks as u32,
            stride: stride as u32,
            parts: parts as u32,
            tolerance: options.tolerance.unwrap_or(-1.0),
            min_correlation: options.min_correlation,
            min_pivot: options.min_pivot,
            mask: masks as u32,
            first_step: 0,
            last_step: 0,
            texels: 0,
            rows_first: [0; 4],
        };
        let mut records: Vec<Params> = pack_chunks
            .iter()
            .map(|&(r0, r1)| Params {
                batch: (r1 - r0) as u32,
                rows_first: [window(n_atoms, r0, r1, align).first, r0 as u32, 0, 0],
                ..base
            })
            .collect();
        records.extend(chunks.iter().map(|&(r0, r1)| Params {
            batch: (r1 - r0) as u32,
            rows_first: [
                window(n_atoms, r0, r1, align).first,
                window(1, r0, r1, align).first,
                window(code_words(k), r0, r1, align).first,
                0,
            ],
            ..base
        }));
        // Resident: per chunk, a record per dispatch of steps, then per dispatch of refit rows,
        // after the chunks' records.
        let (step_ranges, refit_ranges) = match &path {
            StepPath::Resident(plan, _) => (
                super::buffer::ranges(steps, plan.steps_per_dispatch),
                match options.coder {
                    Coder::Mp { refit: true } => {
                        super::buffer::ranges(max_atoms, plan.rows_per_refit)
                    }
                    _ => Vec::new(),
                },
            ),
            StepPath::Sweeps(_) => (Vec::new(), Vec::new()),
        };
        let chunk_records = records.len() - chunks.len();
        for c in 0..chunks.len() {
            for &(first, last) in step_ranges.iter().chain(&refit_ranges) {
                records.push(Params {
                    first_step: first as u32,
                    last_step: last as u32,
                    texels: match &path {
                        StepPath::Resident(plan, _) => plan.texels as u32,
                        StepPath::Sweeps(_) => 0,
                    },
                    ..records[chunk_records + c]
                });
            }
        }
        let per_chunk = step_ranges.len() + refit_ranges.len();
        let uniforms = self.uniform_records("omp params", &records)?;

        self.scoped(|| {
            let device = self.device();
            let g_view = g_texture.view(wgpu::TextureViewDimension::D2Array);
            let upd_view = updates.view(wgpu::TextureViewDimension::D2);
            let entry = |binding, resource| wgpu::BindGroupEntry { binding, resource };
            let packs: Vec<wgpu::BindGroup> = pack_chunks
                .iter()
                .enumerate()
                .map(|(i, &(r0, r1))| {
                    let dst = match options.gram {
                        GramPrecision::F32 => 10,
                        GramPrecision::F16 => 11,
                    };
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("omp pack_gram"),
                        layout: &pack.get_bind_group_layout(0),
                        entries: &[
                            entry(0, uniforms.binding(i)),
                            entry(
                                9,
                                binding(&gram.data.buffer, window(n_atoms, r0, r1, align)),
                            ),
                            entry(dst, wgpu::BindingResource::TextureView(&g_view)),
                        ],
                    })
                })
                .collect();
            let groups: Vec<ChunkGroups> = chunks
                .iter()
                .enumerate()
                .map(|(i, &(r0, r1))| {
                    let uniform = || entry(0, uniforms.binding(pack_chunks.len() + i));
                    let work = || entry(8, binding(&work.buffer, window(work_words, 0, 1, align)));
                    let g_entry = || entry(1, wgpu::BindingResource::TextureView(&g_view));
                    let norms = || entry(6, binding(&y_norm2.buffer, window(1, r0, r1, align)));
                    let alpha_rows = || binding(&alpha.data.buffer, window(n_atoms, r0, r1, align));
                    let state = device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("omp state"),
                        layout: &kernels.state_layout,
                        entries: &[
                            uniform(),
                            g_entry(),
                            entry(3, wgpu::BindingResource::TextureView(&upd_view)),
                            norms(),
                            entry(
                                7,
                                binding(&codes.buffer, window(code_words(k), r0, r1, align)),
                            ),
                            work(),
                        ],
                    });
                    let chunk_path = match &path {
                        StepPath::Resident(_, kernels) => {
                            let first = chunk_records + chunks.len() + i * per_chunk;
                            let group = |r: usize, pipeline: &wgpu::ComputePipeline| {
                                let mut entries = vec![
                                    entry(0, uniforms.binding(first + r)),
                                    g_entry(),
                                    work(),
                                    entry(14, alpha_rows()),
                                ];
                                if r < step_ranges.len() {
                                    entries.push(norms());
                                }
                                device.create_bind_group(&wgpu::BindGroupDescriptor {
                                    label: Some("omp resident"),
                                    layout: &pipeline.get_bind_group_layout(0),
                                    entries: &entries,
                                })
                            };
                            ChunkPath::Resident {
                                kernels: kernels.clone(),
                                steps: (0..step_ranges.len())
                                    .map(|r| group(r, &kernels.mp))
                                    .collect(),
                                refit: (step_ranges.len()..per_chunk)
                                    .map(|r| group(r, &kernels.refit))
                                    .collect(),
                            }
                        }
                        StepPath::Sweeps(views) => {
                            let texture = |i: usize| wgpu::BindingResource::TextureView(&views[i]);
                            // Sweep s reads α texture s mod 2 and writes the other.
                            let sweeps = [(0, 1), (1, 0)].map(|(from, to)| {
                                device.create_bind_group(&wgpu::BindGroupDescriptor {
                                    label: Some("omp sweep"),
                                    layout: &kernels.sweep_layout,
                                    entries: &[
                                        uniform(),
                                        g_entry(),
                                        entry(2, wgpu::BindingResource::TextureView(&upd_view)),
                                        work(),
                                        entry(12, texture(from)),
                                        entry(13, texture(to)),
                                    ],
                                })
                            });
                            let pack = device.create_bind_group(&wgpu::BindGroupDescriptor {
                                label: Some("omp pack_alpha"),
                                layout: &kernels.pack_alpha.get_bind_group_layout(0),
                                entries: &[
                                    uniform(),
                                    entry(5, alpha_rows()),
                                    entry(13, texture(0)),
                                ],
                            });
                            ChunkPath::Sweeps { sweeps, pack }
                        }
                    };
                    ChunkGroups {
                        state,
                        path: chunk_path,
                    }
                })
                .collect();
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("sparse coding"),
                timestamp_writes: None,
            });
            pass.set_pipeline(pack);
            for (&(r0, r1), group) in pack_chunks.iter().zip(&packs) {
                let texels = super::sparse::groups(self, (r1 - r0) * g.shape.width as usize, 64);
                pass.set_bind_group(0, group, &[]);
                pass.dispatch_workgroups(texels.0, texels.1, 1);
            }
            for (&(r0, r1), group) in chunks.iter().zip(&groups) {
                let per_sample = super::sparse::groups(self, r1 - r0, SAMPLE_WG as usize);
                if let ChunkPath::Sweeps { pack, .. } = &group.path {
                    let texels =
                        super::sparse::groups(self, (r1 - r0) * n_atoms.div_ceil(TEXEL), 64);
                    pass.set_pipeline(&kernels.pack_alpha);
                    pass.set_bind_group(0, pack, &[]);
                    pass.dispatch_workgroups(texels.0, texels.1, 1);
                }
                pass.set_pipeline(&kernels.start);
                pass.set_bind_group(0, &group.state, &[]);
                pass.dispatch_workgroups(per_sample.0, per_sample.1, 1);
                match &group.path {
                    ChunkPath::Sweeps { sweeps, .. } => {
                        let workgroups = super::sparse::groups(self, (r1 - r0) * n_chunks, 1);
                        for step in 0..steps {
                            pass.set_pipeline(sweep);
                            pass.set_bind_group(0, &sweeps[step % 2], &[]);
                            pass.dispatch_workgroups(workgroups.0, workgroups.1, 1);
                            pass.set_pipeline(select);
                            pass.set_bind_group(0, &group.state, &[]);
                            pass.dispatch_workgroups(per_sample.0, per_sample.1, 1);
                        }
                    }
                    ChunkPath::Resident {
                        kernels,
                        steps,
                        refit,
                    } => {
                        // One workgroup (one subgroup) per sample.
                        let workgroups = super::sparse::groups(self, r1 - r0, 1);
                        pass.set_pipeline(&kernels.mp);
                        for bind_group in steps {
                            pass.set_bind_group(0, bind_group, &[]);
                            pass.dispatch_workgroups(workgroups.0, workgroups.1, 1);
                        }
                        pass.set_pipeline(&kernels.refit);
                        for bind_group in refit {
                            pass.set_bind_group(0, bind_group, &[]);
                            pass.dispatch_workgroups(per_sample.0, per_sample.1, 1);
                        }
                    }
                }
                pass.set_pipeline(&kernels.finish);
                pass.set_bind_group(0, &group.state, &[]);
                pass.dispatch_workgroups(per_sample.0, per_sample.1, 1);
            }
            Ok(())
        })
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
        rows_first
    });

    /// The heaviest dispatch no longer grows with k·K: the paper's size (K = 16 384, k = 64) fits
    /// llvmpipe's 45 000 budget, and only k in the hundreds (the select kernel's k² solves) does
    /// not.
    #[test]
    fn loop_estimate_grows_with_k_squared_not_k_times_atoms() {
        assert!(loop_iterations(Coder::Omp, 1536, 32, false) < 2_000);
        assert!(loop_iterations(Coder::Omp, 16_384, 64, false) < 10_000);
        assert!(loop_iterations(Coder::Mp { refit: true }, 16_384, 64, false) < 10_000);
        assert!(loop_iterations(Coder::Omp, 16_384, 256, false) > 65_535);
    }
}
