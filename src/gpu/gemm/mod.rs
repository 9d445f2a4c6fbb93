//! Dense matrix products (`shaders/gemm.wgsl`): Gram D·Dᵀ, correlations Y·Dᵀ, and A·B.
//!
//! Matrices larger than one storage binding are split on the host into row blocks: each block
//! binds a window of whole rows starting at an aligned byte offset and tells the shader, through
//! its parameters, the element where the block really starts. For A·B the inner dimension is
//! split too (blocks of B's rows), accumulating into C with beta = 1 after the first.
//!
//! On CPU adapters (llvmpipe) A·Bᵀ runs as `gemm_texel` instead: A and B are packed into
//! textures (rows of k/4 rgba32float texels, in layers) and each invocation reads its 8 rows of A
//! and 8 of B texel by texel, without workgroup memory; only C is bound in row windows. Where
//! subgroups are one workgroup row (8) wide (llvmpipe), `gemm_texel_subgroup` and, for products
//! that are not symmetric, `gemm_texel_subgroup_tall` (`shaders/gemm_subgroup.wgsl`) fetch each
//! A texel once per subgroup and shuffle it to the lanes, with the same sums.

use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};

use super::buffer::{binding, ranges, rows_per_window, window, ScratchTexture};
use super::layout::{bind_group_layout, entry, pipeline_in_layout, read_texture, storage, uniform};
use super::{Gpu, Matrix};
use crate::error::{Error, Result};

mod plan;

use plan::{plan, Plan, TexelPlan};

const SHADER: &str = include_str!("../../../shaders/gemm.wgsl");
/// gemm_texel_subgroup and gemm_texel_subgroup_tall, compiled after `SHADER` on llvmpipe with
/// TX-wide subgroups.
const SUBGROUP_SHADER: &str = include_str!("../../../shaders/gemm_subgroup.wgsl");

/// Workgroup shape of the tiled kernel (x along n, y along m) and its tile depth along k.
const WG_X: u32 = 16;
const WG_Y: u32 = 16;
const TILE_K: u32 = 16;
/// Register block per invocation: 8×8, as the shader's accumulators are written out.
const TM: u32 = 8;
const TN: u32 = 8;
// The symmetric Gram mirrors tile (i, j) onto (j, i): the tiled kernel's tiles are square.
const _: () = assert!(WG_X * TN == WG_Y * TM);
/// Workgroup shape of the texel kernels (x along n, y along m); 8×8 outputs per invocation
/// (gemm_texel_subgroup_tall: 32 rows by 4 columns).
const TX: u32 = 8;
const TY: u32 = 8;
// gemm_texel_subgroup's exit for workgroups below the diagonal (wid.y > wid.x) needs them square.
const _: () = assert!(TX == TY);

/// Which kernel computes a product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmKernel {
    /// Chosen per device when the product is recorded: `Texel` for A·Bᵀ on a CPU adapter (where
    /// its textures fit), `Tiled` otherwise.
    #[default]
    Auto,
    /// 128×128 workgroup-memory tiles, 16×16 invocations each owning an 8×8 register block
    /// (the one for GPUs).
    Tiled,
    /// A·Bᵀ only: A and B packed into textures, each invocation of an 8×8 workgroup owning an
    /// 8×8 register block read texel by texel, no workgroup memory (the one for llvmpipe, which
    /// loads workgroup and storage memory lane by lane; an error for A·B). On llvmpipe with
    /// 8-wide subgroups the subgroup shares A's texels, and a product that is not symmetric
    /// takes 32×4 blocks.
    Texel,
    /// One output per invocation read straight from global memory, same 16×16 workgroups as
    /// `Tiled`: the benchmark baseline.
    Naive,
}

/// Which product: the second operand transposed or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// C = alpha·A·Bᵀ + beta·C with A [m, k], B [n, k], C [m, n] (Gram, correlations).
    ABt,
    /// C = alpha·A·B + beta·C with A [m, k], B [k, n], C [m, n].
    AB,
}

/// What to compute: product, scalars and kernel. Build with [`GemmParams::abt`] or
/// [`GemmParams::ab`] and adjust with the setters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmParams {
    /// The product.
    pub product: Product,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old C; with 0, C is not read (NaNs in it do not leak).
    pub beta: f32,
    /// The kernel.
    pub kernel: GemmKernel,
}

impl GemmParams {
    /// C = A·Bᵀ with the device's kernel ([`GemmKernel::Auto`]).
    pub fn abt() -> Self {
        Self {
            product: Product::ABt,
            alpha: 1.0,
            beta: 0.0,
            kernel: GemmKernel::Auto,
        }
    }

    /// C = A·B with the device's kernel ([`GemmKernel::Auto`]).
    pub fn ab() -> Self {
        Self {
            product: Product::AB,
            ..Self::abt()
        }
    }

    /// Sets alpha.
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }

    /// Sets beta.
    pub fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }

    /// Sets the kernel.
    pub fn kernel(mut self, kernel: GemmKernel) -> Self {
        self.kernel = kernel;
        self
    }
}

/// Mirrors `Params` in gemm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct BlockParams {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_offset: u32,
    b_offset: u32,
    c_offset: u32,
    alpha: f32,
    beta: f32,
    a_layer_shift: u32,
    b_layer_shift: u32,
    /// gemm_texel and the tiled gemm: 1 when A and B are one matrix and the block spans all of
    /// C (see gemm.wgsl).
    symmetric: u32,
    _pad: [u32; 2],
}

/// One kernel's pipelines for A·Bᵀ and A·B, each built on first use: a CPU adapter runs the
/// texel kernel for nearly every product and a GPU never does, and on llvmpipe each pipeline
/// costs tens of milliseconds of a short command's start-up.
struct Pipelines {
    entry: &'static str,
    abt: OnceLock<wgpu::ComputePipeline>,
    ab: OnceLock<wgpu::ComputePipeline>,
    /// Outputs one workgroup covers along m and n.
    tile_m: u32,
    tile_n: u32,
}

impl Pipelines {
    fn new(entry: &'static str, tile_m: u32, tile_n: u32) -> Self {
        Self {
            entry,
            abt: OnceLock::new(),
            ab: OnceLock::new(),
            tile_m,
            tile_n,
        }
    }
}

/// A texel kernel: its entry point, pipeline, and the block of C (rows, columns) each
/// invocation owns.
struct TexelKernel<'a> {
    entry: &'static str,
    pipeline: &'a wgpu::ComputePipeline,
    block: (usize, usize),
}

/// The gemm pipelines, built once per device, and the textures of the texel kernel's operands.
pub(crate) struct GemmKernels {
    module: wgpu::ShaderModule,
    layout: wgpu::BindGroupLayout,
    tiled: Pipelines,
    naive: Pipelines,
    texel_layout: wgpu::BindGroupLayout,
    /// gemm_texel and pack_texels, each built on first use (CPU adapters).
    texel: OnceLock<wgpu::ComputePipeline>,
    pack: OnceLock<wgpu::ComputePipeline>,
    /// gemm_subgroup.wgsl and its gemm_texel_subgroup and gemm_texel_subgroup_tall, built on
    /// first use where they run.
    subgroup_module: OnceLock<wgpu::ShaderModule>,
    texel_subgroup: OnceLock<wgpu::ComputePipeline>,
    texel_tall: OnceLock<wgpu::ComputePipeline>,
    a_texels: ScratchTexture,
    b_texels: ScratchTexture,
}

/// The tiled kernel's workgroup (invocations and tile bytes) fits the device.
fn check_workgroup(limits: &super::DeviceLimits) -> Result<()> {
    let invocations = WG_X * WG_Y;
    if invocations > limits.max_compute_invocations_per_workgroup {
        return Err(Error::ExceedsLimit {
            what: "gemm workgroup (invocations)".into(),
            requested: invocations as u64,
            limit_name: "max_compute_invocations_per_workgroup",
            limit: limits.max_compute_invocations_per_workgroup as u64,
            largest_batch: None,
        });
    }
    let shared = (TILE_K * (WG_Y * TM + WG_X * TN) * 4) as u64;
    if shared > limits.max_compute_workgroup_storage_size as u64 {
        return Err(Error::ExceedsLimit {
            what: "gemm tiles (workgroup bytes)".into(),
            requested: shared,
            limit_name: "max_compute_workgroup_storage_size",
            limit: limits.max_compute_workgroup_storage_size as u64,
            largest_batch: None,
        });
    }
    Ok(())
}

impl GemmKernels {
    pub(crate) fn new(gpu: &Gpu) -> Result<Self> {
        check_workgroup(gpu.limits())?;
        gpu.scoped(|| {
            let module = super::layout::shader_module(gpu, "gemm.wgsl", SHADER);
            let layout = bind_group_layout(
                gpu,
                "gemm",
                &[
                    entry(0, uniform()),
                    entry(1, storage(true)),
                    entry(2, storage(true)),
                    entry(3, storage(false)),
                ],
            );
            // Texel path: C in a storage buffer, A and B in textures.
            let layers = read_texture(
                wgpu::TextureFormat::Rgba32Float,
                wgpu::TextureViewDimension::D2Array,
            );
            let texel_layout = bind_group_layout(
                gpu,
                "gemm texel",
                &[
                    entry(0, uniform()),
                    entry(3, storage(false)),
                    entry(4, layers),
                    entry(5, layers),
                ],
            );
            Ok(Self {
                module,
                layout,
                tiled: Pipelines::new("gemm", WG_Y * TM, WG_X * TN),
                naive: Pipelines::new("gemm_naive", WG_Y, WG_X),
                texel_layout,
                texel: OnceLock::new(),
                pack: OnceLock::new(),
                subgroup_module: OnceLock::new(),
                texel_subgroup: OnceLock::new(),
                texel_tall: OnceLock::new(),
                a_texels: ScratchTexture::default(),
                b_texels: ScratchTexture::default(),
            })
        })
    }
}

impl GemmKernels {
    fn pipelines(&self, kernel: GemmKernel) -> &Pipelines {
        match kernel {
            GemmKernel::Naive => &self.naive,
            GemmKernel::Auto | GemmKernel::Tiled | GemmKernel::Texel => &self.tiled,
        }
    }

    /// The pipeline of `kernel` (tiled or naive) for `product`, built on first use.
    fn pipeline(
        &self,
        gpu: &Gpu,
        kernel: GemmKernel,
        product: Product,
    ) -> Result<&wgpu::ComputePipeline> {
        let pipes = self.pipelines(kernel);
        let (cell, transposed) = match product {
            Product::ABt => (&pipes.abt, true),
            Product::AB => (&pipes.ab, false),
        };
        gpu.cached(cell, |gpu| {
            gpu.scoped(|| {
                let constants = [
                    ("WG_X", WG_X as f64),
                    ("WG_Y", WG_Y as f64),
                    ("TILE_K", TILE_K as f64),
                    ("B_TRANSPOSED", if transposed { 1.0 } else { 0.0 }),
                ];
                Ok(pipeline_in_layout(
                    gpu,
                    &self.module,
                    pipes.entry,
                    &self.layout,
                    &constants,
                ))
            })
        })
    }

    /// The texel kernel for `gpu` (its entry point, pipeline and block per invocation), built
    /// on first use: on llvmpipe with 8-wide subgroups gemm_texel_subgroup for a product with
    /// symmetric blocks (they need square ones to mirror) and gemm_texel_subgroup_tall (32 × 4)
    /// for any other, else gemm_texel. The subgroup kernels need each subgroup to be one row of
    /// TX consecutive invocations, which llvmpipe does (it runs invocations 8 at a time in
    /// linear order) but no API promises, hence the adapter-name check.
    fn texel_kernel(&self, gpu: &Gpu, symmetric: bool) -> Result<TexelKernel<'_>> {
        if !subgroup_texels(gpu) {
            return Ok(TexelKernel {
                entry: "gemm_texel",
                pipeline: self.texel_pipeline(gpu)?,
                block: (8, 8),
            });
        }
        let (entry, cell, block) = match symmetric {
            true => ("gemm_texel_subgroup", &self.texel_subgroup, (8, 8)),
            false => ("gemm_texel_subgroup_tall", &self.texel_tall, (32, 4)),
        };
        let pipeline = gpu.cached(cell, |gpu| {
            gpu.scoped(|| {
                let module = self.subgroup_module.get_or_init(|| {
                    let source = format!("{SHADER}{SUBGROUP_SHADER}");
                    super::layout::shader_module(gpu, "gemm_subgroup.wgsl", source)
                });
                let constants = [("TX", TX as f64), ("TY", TY as f64)];
                Ok(pipeline_in_layout(
                    gpu,
                    module,
                    entry,
                    &self.texel_layout,
                    &constants,
                ))
            })
        })?;
        Ok(TexelKernel {
            entry,
            pipeline,
            block,
        })
    }

    /// gemm_texel, built on first use.
    fn texel_pipeline(&self, gpu: &Gpu) -> Result<&wgpu::ComputePipeline> {
        gpu.cached(&self.texel, |gpu| {
            gpu.scoped(|| {
                let constants = [("TX", TX as f64), ("TY", TY as f64)];
                Ok(pipeline_in_layout(
                    gpu,
                    &self.module,
                    "gemm_texel",
                    &self.texel_layout,
                    &constants,
                ))
            })
        })
    }

    /// pack_texels, built on first use.
    fn pack_pipeline(&self, gpu: &Gpu) -> Result<&wgpu::ComputePipeline> {
        gpu.cached(&self.pack, |gpu| {
            gpu.scoped(|| {
                Ok(super::layout::compute_pipeline(
                    gpu,
                    &self.module,
                    "pack_texels",
                    &[],
                ))
            })
        })
    }
}

/// Whether texel products take the subgroup kernels: llvmpipe with 8-wide subgroups (see
/// [`GemmKernels::texel_kernel`]), where the Gram and the other products differ in kernel.
fn subgroup_texels(gpu: &Gpu) -> bool {
    let limits = gpu.limits();
    let llvmpipe = gpu.adapter().name.to_lowercase().contains("llvmpipe");
    limits.cpu_paths && llvmpipe && limits.subgroup_size == Some(TX)
}

/// Marks the blocks of A·Bᵀ symmetric (see gemm.wgsl) when they compute the Gram matrix: A and
/// B one matrix, every block spanning all of C (splitting the inner dimension at most), so each
/// block's lower part is its upper part transposed.
fn mark_symmetric(a: &Matrix, b: &Matrix, c: &Matrix, blocks: &mut [BlockParams]) {
    let same = a.data.id() == b.data.id() && a.rows() == b.rows();
    let whole = |p: &BlockParams| p.m as usize == c.rows() && p.n as usize == c.cols();
    if same && blocks.iter().all(whole) {
        blocks.iter_mut().for_each(|p| p.symmetric = 1);
    }
}

impl Gpu {
    /// Computes `c = alpha·A·op(B) + beta·c` as `op` says, and submits it.
    ///
    /// Shapes are checked (`Error::ShapeMismatch` names both); C must be a different buffer from
    /// A and B. Returns once the work is submitted; reading C waits for it.
    pub fn gemm(&self, op: &GemmParams, a: &Matrix, b: &Matrix, c: &mut Matrix) -> Result<()> {
        let mut encoder = self.encoder("gemm");
        self.record_gemm(&mut encoder, op, a, b, c)?;
        self.submit(encoder)
    }

    #[cfg(any(test, feature = "testing"))]
    /// How many dispatch blocks `gemm` splits this product into: 1 when every operand fits one
    /// binding, more under a small binding limit (or cap). Checks shapes like `gemm`.
    pub fn gemm_blocks(
        &self,
        op: &GemmParams,
        a: &Matrix,
        b: &Matrix,
        c: &Matrix,
    ) -> Result<usize> {
        Ok(plan(self, op, a, b, c)?.len())
    }

    /// Gram matrix G = D·Dᵀ of the rows of `d` ([K, d] → [K, K]).
    pub fn gram(&self, d: &Matrix) -> Result<Matrix> {
        let mut g = self.zeros(d.rows(), d.rows())?;
        self.gemm(&GemmParams::abt(), d, d, &mut g)?;
        Ok(g)
    }

    /// Where the correlations take another kernel than the Gram matrix (llvmpipe's texel
    /// products: `gemm_texel_subgroup_tall` against `gemm_texel_subgroup`), a builder of that
    /// kernel's pipeline, for a caller to run on another thread while the Gram is computed: it
    /// takes 0.2 s of lavapipe's shader processing in every process, its shader cache warm or
    /// not. `None` where both products share their kernel (building it twice at once would gain
    /// nothing).
    pub(crate) fn correlations_prebuild(&self) -> Result<Option<impl FnOnce() -> Result<()> + '_>> {
        if !subgroup_texels(self) {
            return Ok(None);
        }
        let kernels = self.gemm_kernels()?;
        Ok(Some(move || {
            self.scoped(|| kernels.texel_kernel(self, false).map(drop))
        }))
    }

    /// Correlations Y·Dᵀ of samples `y` [B, d] with atoms `d` [K, d] → [B, K].
    pub fn correlations(&self, y: &Matrix, d: &Matrix) -> Result<Matrix> {
        let mut c = self.zeros(y.rows(), d.rows())?;
        self.gemm(&GemmParams::abt(), y, d, &mut c)?;
        Ok(c)
    }

    /// Records the product's dispatches into `encoder` (for kernels that batch several steps into
    /// one submission).
    pub(crate) fn record_gemm(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &GemmParams,
        a: &Matrix,
        b: &Matrix,
        c: &mut Matrix,
    ) -> Result<()> {
        let blocks = match plan(self, op, a, b, c)? {
            Plan::Buffers(blocks) => blocks,
            Plan::Texels(plan) => return self.record_texels(encoder, &plan, a, b, c),
        };
        if blocks.is_empty() {
            return Ok(());
        }
        let kernels = self.gemm_kernels()?;
        let mut params: Vec<BlockParams> = blocks.iter().map(|b| b.params).collect();
        // The tiled kernel's tiles are square, so it mirrors them as the texel kernel does its
        // 8×8 blocks.
        if op.product == Product::ABt && op.kernel != GemmKernel::Naive {
            mark_symmetric(a, b, c, &mut params);
        }
        let uniforms = self.uniform_records("gemm params", &params)?;

        self.scoped(|| {
            let pipeline = kernels.pipeline(self, op.kernel, op.product)?;
            let device = self.device();
            let groups: Vec<wgpu::BindGroup> = blocks
                .iter()
                .enumerate()
                .map(|(i, block)| {
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("gemm block"),
                        layout: &kernels.layout,
                        entries: &[
                            wgpu::BindGroupEntry {
                                binding: 0,
                                resource: uniforms.binding(i),
                            },
                            wgpu::BindGroupEntry {
                                binding: 1,
                                resource: binding(&a.data.buffer, block.a),
                            },
                            wgpu::BindGroupEntry {
                                binding: 2,
                                resource: binding(&b.data.buffer, block.b),
                            },
                            wgpu::BindGroupEntry {
                                binding: 3,
                                resource: binding(&c.data.buffer, block.c),
                            },
                        ],
                    })
                })
                .collect();

            let runs = groups
                .iter()
                .zip(&blocks)
                .map(|(g, block)| (g, block.groups));
            let kernel = kernels.pipelines(op.kernel).entry;
            super::layout::dispatch(self, encoder, kernel, pipeline, runs);
            Ok(())
        })
    }
}

impl Gpu {
    /// Records A·Bᵀ by the texel kernel: A and B packed into their textures (A shares B's when
    /// both are the same matrix, as for the Gram matrix), then one dispatch per block of C.
    fn record_texels(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &TexelPlan,
        a: &Matrix,
        b: &Matrix,
        c: &Matrix,
    ) -> Result<()> {
        let kernels = self.gemm_kernels()?;
        let limits = self.limits();
        let align = limits.binding_alignment();
        let k = a.cols();
        let same = a.data.id() == b.data.id() && a.rows() == b.rows();
        // B (the dictionary in both the Gram matrix and the correlations) keeps its own texture,
        // so alternating the two products reallocates nothing.
        let b_tex = kernels.b_texels.get(self, plan.b.0)?;
        let a_tex = if same {
            None
        } else {
            Some(kernels.a_texels.get(self, plan.a.0)?)
        };
        let most = rows_per_window(k, limits.planned_binding_size, align).max(1);
        let packs = texel_packs(a, b, same, most);
        let mut params = texel_params(&packs, plan, k, align);
        mark_symmetric(a, b, c, &mut params[packs.len()..]);
        let uniforms = self.uniform_records("gemm texel params", &params)?;

        self.scoped(|| {
            let device = self.device();
            let pack = kernels.pack_pipeline(self)?;
            let symmetric = params[packs.len()..].iter().any(|p| p.symmetric != 0);
            let texel = kernels.texel_kernel(self, symmetric)?;
            // Workgroups per block of C for the kernel's own invocation blocks.
            let (block_m, block_n) = (texel.block.0 * TY as usize, texel.block.1 * TX as usize);
            let workgroups: Vec<(u32, u32)> = plan
                .blocks
                .iter()
                .map(|blk| {
                    let (m, n) = (blk.params.m as usize, blk.params.n as usize);
                    (n.div_ceil(block_n) as u32, m.div_ceil(block_m) as u32)
                })
                .collect();
            // plan_texels sized the blocks for the narrowest and shortest kernel blocks.
            let max = self.limits().max_compute_workgroups_per_dimension;
            debug_assert!(workgroups.iter().all(|&(x, y)| x <= max && y <= max));
            let array = wgpu::TextureViewDimension::D2Array;
            let b_view = b_tex.view(array);
            let a_view = a_tex
                .as_ref()
                .map_or_else(|| b_tex.view(array), |t| t.view(array));
            let entry = |binding, resource| wgpu::BindGroupEntry { binding, resource };
            // pack_texels per pack of rows, into A's texture or B's.
            let pack_groups: Vec<wgpu::BindGroup> = packs
                .iter()
                .enumerate()
                .map(|(i, &(m, is_a, r0, r1))| {
                    let view = if is_a { &a_view } else { &b_view };
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("gemm pack_texels"),
                        layout: &pack.get_bind_group_layout(0),
                        entries: &[
                            entry(0, uniforms.binding(i)),
                            entry(1, binding(&m.data.buffer, window(k, r0, r1, align))),
                            entry(6, wgpu::BindingResource::TextureView(view)),
                        ],
                    })
                })
                .collect();
            let groups: Vec<wgpu::BindGroup> = plan
                .blocks
                .iter()
                .enumerate()
                .map(|(i, blk)| {
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("gemm texel block"),
                        layout: &kernels.texel_layout,
                        entries: &[
                            entry(0, uniforms.binding(packs.len() + i)),
                            entry(3, binding(&c.data.buffer, blk.c)),
                            entry(4, wgpu::BindingResource::TextureView(&a_view)),
                            entry(5, wgpu::BindingResource::TextureView(&b_view)),
                        ],
                    })
                })
                .collect();
            let mut pass = self.passes(encoder, "gemm texel");
            pass.set_pipeline("pack_texels", pack);
            for (&(_, _, r0, r1), group) in packs.iter().zip(&pack_groups) {
                let texels = super::layout::groups(self, (r1 - r0) * k.div_ceil(4), 64);
                pass.set_bind_group(group);
                pass.dispatch(texels.0, texels.1);
            }
            pass.set_pipeline(texel.entry, texel.pipeline);
            for (&(x, y), group) in workgroups.iter().zip(&groups) {
                pass.set_bind_group(group);
                pass.dispatch(x, y);
            }
            Ok(())
        })
    }
}

/// The uniform records of a texel product: one per row pack (`pack_texels`), then one per
/// block of C.
fn texel_params(
    packs: &[(&Matrix, bool, usize, usize)],
    plan: &TexelPlan,
    k: usize,
    align: u64,
) -> Vec<BlockParams> {
    let mut params: Vec<BlockParams> = packs
        .iter()
        .map(|&(_, is_a, r0, r1)| BlockParams {
            m: (r1 - r0) as u32,
            k: k as u32,
            lda: k as u32,
            a_offset: window(k, r0, r1, align).first,
            c_offset: r0 as u32,
            a_layer_shift: if is_a { plan.a.1 } else { plan.b.1 },
            ..BlockParams::zeroed()
        })
        .collect();
    params.extend(plan.blocks.iter().map(|blk| blk.params));
    params
}

/// The row packs `pack_texels` writes into the textures: (matrix, is A, first row, end) per
/// window of at most `most` whole rows, B's first; A's only when it is not B.
fn texel_packs<'m>(
    a: &'m Matrix,
    b: &'m Matrix,
    same: bool,
    most: usize,
) -> Vec<(&'m Matrix, bool, usize, usize)> {
    let mut packs: Vec<(&Matrix, bool, usize, usize)> = ranges(b.rows(), most)
        .into_iter()
        .map(|(r0, r1)| (b, false, r0, r1))
        .collect();
    if !same {
        packs.extend(
            ranges(a.rows(), most)
                .into_iter()
                .map(|(r0, r1)| (a, true, r0, r1)),
        );
    }
    packs
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::gpu::uniform_layout::params_mirror_test!(BlockParams {
        m,
        n,
        k,
        lda,
        ldb,
        ldc,
        a_offset,
        b_offset,
        c_offset,
        alpha,
        beta,
        a_layer_shift,
        b_layer_shift,
        symmetric
    });
}
