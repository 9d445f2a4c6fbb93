//! Recording a coding job: the job planned once (chunks of rows, G's windows, the step path,
//! every dispatch's uniforms), its bind groups, and the one compute pass that runs it.

use std::sync::Arc;

use super::{
    alpha_textures, check_coding_fits, chunk_parts, chunk_rows, code_words, fused_plan, mask_words,
    max_batch, partials, plan_gram, record_words, reduced_sweep, resident_kernels, resident_plan,
    tri, ChunkGroups, ChunkPath, GramTexture, Kernel, OmpKernels, Params, StepPath, ALL_BLOCKS,
    CHUNK, FACTOR_FORMAT, SAMPLE_WG, TEXEL,
};
use crate::coding::{Coder, CodingOptions, GramPrecision};
use crate::error::{Error, Result};
use crate::gpu::buffer::{
    binding, ranges, rows_per_window, texture_rows, window, GpuTexture, TextureShape,
    UniformRecords,
};
use crate::gpu::layout::groups;
use crate::gpu::profile::Passes;
use crate::gpu::{Gpu, GpuBuffer, Matrix};

impl Gpu {
    /// Records the sparse coding of `batch` samples of dimension `d`: `alpha` holds their
    /// correlations Y·Dᵀ (overwritten), `y_norm2` their squared norms, and `codes` receives
    /// `2k + 1` words per sample (see [`code_words`]).
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
        check_operands(gram, alpha, y_norm2, codes, batch, options.k)?;
        if batch == 0 {
            return Ok(());
        }
        let job = Job::plan(self, d, gram.rows(), batch, options)?;
        let operands = Operands {
            gram,
            alpha,
            y_norm2,
            codes,
        };
        self.scoped(|| {
            job.record(encoder, &operands);
            Ok(())
        })
    }
}

/// The buffers a coding job reads and writes.
struct Operands<'a> {
    gram: &'a Matrix,
    alpha: &'a Matrix,
    y_norm2: &'a GpuBuffer<f32>,
    codes: &'a GpuBuffer<u32>,
}

/// G [K, K] and the correlations [≥ batch, K] fit together; the norms and codes buffers hold
/// the batch.
fn check_operands(
    gram: &Matrix,
    alpha: &Matrix,
    y_norm2: &GpuBuffer<f32>,
    codes: &GpuBuffer<u32>,
    batch: usize,
    k: usize,
) -> Result<()> {
    let n_atoms = gram.rows();
    if gram.cols() != n_atoms || alpha.cols() != n_atoms || alpha.rows() < batch {
        return Err(Error::ShapeMismatch {
            op: format!("sparse coding of {batch} samples (Gram vs correlations)"),
            left: gram.shape(),
            right: alpha.shape(),
        });
    }
    if y_norm2.len() < batch || codes.len() < batch * code_words(k) {
        return Err(Error::InvalidArgument(format!(
            "sparse coding of {batch} samples: norms buffer holds {}, codes buffer {} words",
            y_norm2.len(),
            codes.len()
        )));
    }
    Ok(())
}

/// A coding job decided before anything is recorded.
struct Job<'a> {
    gpu: &'a Gpu,
    kernels: &'a OmpKernels,
    options: CodingOptions,
    n_atoms: usize,
    /// Texel rows of the sweeps' α chunks.
    n_chunks: usize,
    g: GramTexture,
    /// Words of the coding state (records, partial maxima, masks) for one chunk of rows.
    work_words: usize,
    align: u64,
    /// G's rows packed into the texture in windows that fit one binding.
    pack_chunks: Vec<(usize, usize)>,
    /// The batch's rows, coded chunk after chunk with the same scratch.
    chunks: Vec<(usize, usize)>,
    /// Greedy steps: k for OMP, 2k for MP.
    steps: usize,
    path: StepPath,
    /// Resident path: the steps of each resident dispatch, the support rows of each refit one.
    step_ranges: Vec<(usize, usize)>,
    /// Fused path: the blocks of PER atoms each dispatch of `step_ranges` sweeps (dispatches
    /// past its end, and every other path's, take them all).
    block_ranges: Vec<(u32, u32)>,
    refit_ranges: Vec<(usize, usize)>,
    /// Every dispatch's uniforms (set once the plan is complete).
    uniforms: Option<UniformRecords>,
    work: GpuBuffer<u32>,
    g_texture: Arc<GpuTexture>,
    updates: Arc<GpuTexture>,
    /// Bound at `fac_tex` by the kernels that keep the factor in the record.
    factor_stand_in: Arc<GpuTexture>,
}

impl<'a> Job<'a> {
    fn plan(
        gpu: &'a Gpu,
        d: usize,
        n_atoms: usize,
        batch: usize,
        options: &CodingOptions,
    ) -> Result<Self> {
        let k = options.k;
        let fits = max_batch(gpu, n_atoms, k);
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
        check_coding_fits(gpu, n_atoms, d, options)?;
        let g = plan_gram(gpu, n_atoms, options.gram)?;
        let kernels = gpu.omp_kernels()?;
        let align = gpu.limits().binding_alignment();
        // Chunks of rows (even sizes), coded one after another with the same scratch.
        let most = chunk_rows(gpu, n_atoms, k).max(1);
        let rows = batch.div_ceil(batch.div_ceil(most));
        let path = step_path(gpu, kernels, options, n_atoms, max_atoms, rows)?;
        let in_texture = matches!(path, StepPath::Fused { .. });
        let layout = StateLayout::new(gpu, n_atoms, max_atoms, rows, in_texture);
        // The pipelines this job records, built now in error scopes (see OmpKernels::prepare).
        let job_kernels = job_kernels(gpu, options, n_atoms, max_atoms);
        kernels.prepare(gpu, options.gram, &job_kernels)?;
        let steps = match options.coder {
            Coder::Omp => max_atoms,
            Coder::Mp { .. } => 2 * max_atoms,
        };
        // Resident: per chunk, a record per dispatch of steps, then per dispatch of refit rows;
        // fused: per dispatch of steps (or of blocks of one step).
        let (step_ranges, refit_ranges, block_ranges) = match &path {
            StepPath::Resident(plan, _) => {
                let refit = match options.coder {
                    Coder::Mp { refit: true } => ranges(max_atoms, plan.rows_per_refit),
                    _ => Vec::new(),
                };
                (plan.step_ranges(steps), refit, Vec::new())
            }
            StepPath::Fused { plan, .. } => (
                plan.iter().map(|d| d.steps).collect(),
                Vec::new(),
                plan.iter().map(|d| d.blocks).collect(),
            ),
            StepPath::Sweeps(_) => (Vec::new(), Vec::new(), Vec::new()),
        };
        let binding_rows = rows_per_window(n_atoms, gpu.limits().planned_binding_size, align);
        let updates = TextureShape {
            width: max_atoms.max(1) as u32,
            height: rows as u32,
            layers: 1,
            format: wgpu::TextureFormat::Rg32Uint,
        };
        let mut job = Self {
            gpu,
            kernels,
            options: *options,
            n_atoms,
            n_chunks: n_atoms.div_ceil(CHUNK),
            g,
            work_words: layout.work_words,
            align,
            pack_chunks: ranges(n_atoms, binding_rows.max(1)),
            chunks: ranges(batch, rows),
            steps,
            path,
            step_ranges,
            block_ranges,
            refit_ranges,
            uniforms: None,
            work: kernels.work.get(gpu, layout.work_words)?,
            g_texture: kernels.gram.get(gpu, g.shape)?,
            updates: kernels.updates.get(gpu, updates)?,
            factor_stand_in: kernels.factor_stand_in.get(
                gpu,
                TextureShape {
                    width: 1,
                    height: 1,
                    layers: 1,
                    format: FACTOR_FORMAT,
                },
            )?,
        };
        let records = job.records(&layout, max_atoms);
        job.uniforms = Some(gpu.uniform_records("omp params", &records)?);
        Ok(job)
    }

    /// Uniform record `i` as a binding.
    fn uniform(&self, i: usize) -> wgpu::BindingResource<'_> {
        self.uniforms.as_ref().expect("planned").binding(i)
    }

    /// Dispatches of one chunk on the resident path (steps, then refit rows).
    fn per_chunk(&self) -> usize {
        self.step_ranges.len() + self.refit_ranges.len()
    }

    /// The uniforms of every dispatch: G's pack windows, then each chunk's (start, sweeps,
    /// selects and finish share one), then the resident dispatches, chunk after chunk.
    fn records(&self, layout: &StateLayout, max_atoms: usize) -> Vec<Params> {
        let (n_atoms, k, align) = (self.n_atoms, self.options.k, self.align);
        let base = Params {
            batch: 0,
            n_atoms: n_atoms as u32,
            max_atoms: max_atoms as u32,
            k: k as u32,
            layer_shift: self.g.layer_shift,
            refit: matches!(self.options.coder, Coder::Mp { refit: true }) as u32,
            n_chunks: self.n_chunks as u32,
            stride: layout.stride as u32,
            parts: layout.parts as u32,
            tolerance: self.options.tolerance.unwrap_or(-1.0),
            min_correlation: self.options.min_correlation,
            min_pivot: self.options.min_pivot,
            mask: layout.masks as u32,
            first_step: 0,
            last_step: 0,
            texels: 0,
            rows_first: [0; 4],
            chunk_parts: chunk_parts(self.gpu) as u32,
            fresh: u32::from(alpha_textures(self.options.coder) == 1),
            first_block: ALL_BLOCKS.0,
            last_block: ALL_BLOCKS.1,
            factor_shift: 0,
            _pad: [0; 3],
        };
        let mut records: Vec<Params> = self
            .pack_chunks
            .iter()
            .map(|&(r0, r1)| Params {
                batch: (r1 - r0) as u32,
                rows_first: [window(n_atoms, r0, r1, align).first, r0 as u32, 0, 0],
                ..base
            })
            .collect();
        let chunk_records = records.len();
        records.extend(self.chunks.iter().map(|&(r0, r1)| Params {
            batch: (r1 - r0) as u32,
            rows_first: [
                window(n_atoms, r0, r1, align).first,
                window(1, r0, r1, align).first,
                window(code_words(k), r0, r1, align).first,
                0,
            ],
            ..base
        }));
        let texels = match &self.path {
            StepPath::Resident(plan, _) => plan.texels as u32,
            StepPath::Sweeps(_) | StepPath::Fused { .. } => 0,
        };
        let factor_shift = match &self.path {
            StepPath::Fused { factor_shift, .. } => *factor_shift,
            _ => 0,
        };
        let blocks = self
            .block_ranges
            .iter()
            .chain(std::iter::repeat(&ALL_BLOCKS));
        for c in 0..self.chunks.len() {
            let ranges = self.step_ranges.iter().chain(&self.refit_ranges);
            for (&(first, last), &(first_block, last_block)) in ranges.zip(blocks.clone()) {
                records.push(Params {
                    first_step: first as u32,
                    last_step: last as u32,
                    texels,
                    first_block,
                    last_block,
                    factor_shift,
                    ..records[chunk_records + c]
                });
            }
        }
        records
    }

    /// Records the job: G packed into its texture, then per chunk of rows its start, greedy
    /// steps and finish, all in one compute pass.
    fn record(&self, encoder: &mut wgpu::CommandEncoder, operands: &Operands<'_>) {
        let g_view = self.g_texture.view(wgpu::TextureViewDimension::D2Array);
        let upd_view = self.updates.view(wgpu::TextureViewDimension::D2);
        let packs = self.pack_groups(operands.gram, &g_view);
        let chunk_groups: Vec<ChunkGroups> = (0..self.chunks.len())
            .map(|i| self.chunk_groups(i, operands, &g_view, &upd_view))
            .collect();
        let pack = self.pack_pipeline();
        let (gpu, kernels, gram) = (self.gpu, self.kernels, self.options.gram);
        let mut pass = gpu.passes(encoder, "sparse coding");
        let kernel = |pass: &mut Passes<'_>, kernel: Kernel| {
            pass.set_pipeline(kernel.entry(), kernels.pipeline(gpu, gram, kernel));
        };
        pass.set_pipeline(pack.0, pack.1);
        for (&(r0, r1), group) in self.pack_chunks.iter().zip(&packs) {
            let texels = groups(gpu, (r1 - r0) * self.g.shape.width as usize, 64);
            pass.set_bind_group(group);
            pass.dispatch(texels.0, texels.1);
        }
        for (&(r0, r1), group) in self.chunks.iter().zip(&chunk_groups) {
            let per_sample = groups(gpu, r1 - r0, SAMPLE_WG as usize);
            if let ChunkPath::Sweeps { pack, .. } | ChunkPath::Fused { pack, .. } = &group.path {
                let texels = groups(gpu, (r1 - r0) * self.n_atoms.div_ceil(TEXEL), 64);
                kernel(&mut pass, Kernel::PackAlpha);
                pass.set_bind_group(pack);
                pass.dispatch(texels.0, texels.1);
            }
            kernel(&mut pass, Kernel::Start);
            pass.set_bind_group(&group.state);
            pass.dispatch(per_sample.0, per_sample.1);
            self.record_steps(&mut pass, group, r1 - r0);
            kernel(&mut pass, Kernel::Finish);
            pass.set_bind_group(&group.state);
            pass.dispatch(per_sample.0, per_sample.1);
        }
    }

    /// The greedy steps of one chunk of `rows` rows: sweep and select per step, or the
    /// resident dispatches and the refit's.
    fn record_steps(&self, pass: &mut Passes<'_>, group: &ChunkGroups, rows: usize) {
        let (gpu, kernels) = (self.gpu, self.kernels);
        let per_sample = groups(gpu, rows, SAMPLE_WG as usize);
        match &group.path {
            ChunkPath::Sweeps { sweeps, .. } => {
                let sweep = match reduced_sweep(gpu) {
                    true => Kernel::SweepReduced,
                    false => Kernel::Sweep,
                };
                let select = match self.options.coder {
                    Coder::Omp => Kernel::SelectOmp,
                    Coder::Mp { .. } => Kernel::SelectMp,
                };
                let [sweep, select] = [sweep, select]
                    .map(|k| (k.entry(), kernels.pipeline(gpu, self.options.gram, k)));
                let workgroups = groups(gpu, rows * self.n_chunks, 1);
                for step in 0..self.steps {
                    pass.set_pipeline(sweep.0, sweep.1);
                    let pair = step % alpha_textures(self.options.coder);
                    pass.set_bind_group(&sweeps[pair]);
                    pass.dispatch(workgroups.0, workgroups.1);
                    pass.set_pipeline(select.0, select.1);
                    pass.set_bind_group(&group.state);
                    pass.dispatch(per_sample.0, per_sample.1);
                }
            }
            ChunkPath::Fused { steps, .. } => {
                let fused = kernels.pipeline(gpu, self.options.gram, Kernel::FusedOmp);
                pass.set_pipeline(Kernel::FusedOmp.entry(), fused);
                for bind_group in steps {
                    pass.set_bind_group(bind_group);
                    pass.dispatch(per_sample.0, per_sample.1);
                }
            }
            ChunkPath::Resident {
                kernels,
                steps,
                refit,
            } => {
                // One workgroup (a subgroup, or RESIDENT_WG invocations) per sample.
                let workgroups = groups(gpu, rows, 1);
                pass.set_pipeline(kernels.mp_entry, &kernels.mp);
                for bind_group in steps {
                    pass.set_bind_group(bind_group);
                    pass.dispatch(workgroups.0, workgroups.1);
                }
                pass.set_pipeline("resident_refit", &kernels.refit);
                for bind_group in refit {
                    pass.set_bind_group(bind_group);
                    pass.dispatch(per_sample.0, per_sample.1);
                }
            }
        }
    }

    fn pack_pipeline(&self) -> (&'static str, &wgpu::ComputePipeline) {
        let kernel = match self.options.gram {
            GramPrecision::F32 => Kernel::PackF32,
            GramPrecision::F16 => Kernel::PackF16,
        };
        (
            kernel.entry(),
            self.kernels.pipeline(self.gpu, self.options.gram, kernel),
        )
    }

    /// pack_gram's bind group per window of G's rows.
    fn pack_groups(&self, gram: &Matrix, g_view: &wgpu::TextureView) -> Vec<wgpu::BindGroup> {
        let (n_atoms, align) = (self.n_atoms, self.align);
        let dst = match self.options.gram {
            GramPrecision::F32 => 10,
            GramPrecision::F16 => 11,
        };
        let layout = self.pack_pipeline().1.get_bind_group_layout(0);
        self.pack_chunks
            .iter()
            .enumerate()
            .map(|(i, &(r0, r1))| {
                let rows = binding(&gram.data.buffer, window(n_atoms, r0, r1, align));
                self.gpu
                    .device()
                    .create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("omp pack_gram"),
                        layout: &layout,
                        entries: &[
                            entry(0, self.uniform(i)),
                            entry(9, rows),
                            entry(dst, wgpu::BindingResource::TextureView(g_view)),
                        ],
                    })
            })
            .collect()
    }

    /// The bind groups of chunk `i`: its state (start, select, finish) and its steps'.
    fn chunk_groups(
        &self,
        i: usize,
        operands: &Operands<'_>,
        g_view: &wgpu::TextureView,
        upd_view: &wgpu::TextureView,
    ) -> ChunkGroups {
        let (r0, r1) = self.chunks[i];
        let (n_atoms, k, align) = (self.n_atoms, self.options.k, self.align);
        let device = self.gpu.device();
        let chunk = ChunkEntries {
            uniform: self.pack_chunks.len() + i,
            g_view,
            work: binding(&self.work.buffer, window(self.work_words, 0, 1, align)),
            norms: binding(&operands.y_norm2.buffer, window(1, r0, r1, align)),
            alpha: binding(&operands.alpha.data.buffer, window(n_atoms, r0, r1, align)),
        };
        let codes = window(code_words(k), r0, r1, align);
        let stand_in = self
            .factor_stand_in
            .view(wgpu::TextureViewDimension::D2Array);
        let state = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("omp state"),
            layout: self.kernels.state_layout(self.gpu, self.options.gram),
            entries: &[
                entry(0, self.uniform(chunk.uniform)),
                entry(1, wgpu::BindingResource::TextureView(g_view)),
                entry(3, wgpu::BindingResource::TextureView(upd_view)),
                entry(5, chunk.alpha.clone()),
                entry(6, chunk.norms.clone()),
                entry(7, binding(&operands.codes.buffer, codes)),
                entry(8, chunk.work.clone()),
                entry(14, wgpu::BindingResource::TextureView(&stand_in)),
            ],
        });
        let path = match &self.path {
            StepPath::Resident(_, kernels) => self.resident_groups(i, kernels, &chunk),
            StepPath::Sweeps(views) => self.sweep_groups(views, &chunk, upd_view),
            StepPath::Fused {
                alpha0, factors, ..
            } => self.fused_groups(i, alpha0, factors, &chunk),
        };
        ChunkGroups { state, path }
    }

    /// The resident dispatches of chunk `i`: one bind group per range of steps (they read the
    /// norms), then one per range of refit rows.
    fn resident_groups(
        &self,
        i: usize,
        kernels: &super::ResidentKernels,
        chunk: &ChunkEntries<'_>,
    ) -> ChunkPath {
        let first = self.pack_chunks.len() + self.chunks.len() + i * self.per_chunk();
        let group = |r: usize, pipeline: &wgpu::ComputePipeline| {
            // The steps read the norms, and so does the refit that completes a factor.
            let entries = [
                entry(0, self.uniform(first + r)),
                entry(1, wgpu::BindingResource::TextureView(chunk.g_view)),
                entry(5, chunk.alpha.clone()),
                entry(6, chunk.norms.clone()),
                entry(8, chunk.work.clone()),
            ];
            self.gpu
                .device()
                .create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("omp resident"),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                })
        };
        ChunkPath::Resident {
            kernels: kernels.clone(),
            steps: (0..self.step_ranges.len())
                .map(|r| group(r, &kernels.mp))
                .collect(),
            refit: (self.step_ranges.len()..self.per_chunk())
                .map(|r| group(r, &kernels.refit))
                .collect(),
        }
    }

    /// `fused_omp`'s bind group per range of steps of chunk `i` (its samples' factors in
    /// `factors`), and pack_alpha's (α⁰ into `alpha0`).
    fn fused_groups(
        &self,
        i: usize,
        alpha0: &wgpu::TextureView,
        factors: &wgpu::TextureView,
        chunk: &ChunkEntries<'_>,
    ) -> ChunkPath {
        let device = self.gpu.device();
        let first = self.pack_chunks.len() + self.chunks.len() + i * self.per_chunk();
        let layout = &self
            .kernels
            .variant(self.gpu, self.options.gram)
            .fused_layout;
        let steps = (0..self.step_ranges.len())
            .map(|r| {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("omp fused"),
                    layout,
                    entries: &[
                        entry(0, self.uniform(first + r)),
                        entry(1, wgpu::BindingResource::TextureView(chunk.g_view)),
                        entry(5, chunk.alpha.clone()),
                        entry(6, chunk.norms.clone()),
                        entry(8, chunk.work.clone()),
                        entry(12, wgpu::BindingResource::TextureView(alpha0)),
                        entry(14, wgpu::BindingResource::TextureView(factors)),
                    ],
                })
            })
            .collect();
        ChunkPath::Fused {
            steps,
            pack: self.pack_alpha_group(chunk, alpha0),
        }
    }

    /// pack_alpha's bind group: the chunk's α⁰ rows into `alpha0`.
    fn pack_alpha_group(
        &self,
        chunk: &ChunkEntries<'_>,
        alpha0: &wgpu::TextureView,
    ) -> wgpu::BindGroup {
        let layout = self
            .kernels
            .pipeline(self.gpu, self.options.gram, Kernel::PackAlpha)
            .get_bind_group_layout(0);
        self.gpu
            .device()
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("omp pack_alpha"),
                layout: &layout,
                entries: &[
                    entry(0, self.uniform(chunk.uniform)),
                    entry(5, chunk.alpha.clone()),
                    entry(13, wgpu::BindingResource::TextureView(alpha0)),
                ],
            })
    }

    /// The sweeps' two bind groups (sweep s reads α texture s mod 2 and writes the other) and
    /// pack_alpha's (α⁰ into texture 0).
    fn sweep_groups(
        &self,
        views: &[wgpu::TextureView; 2],
        chunk: &ChunkEntries<'_>,
        upd_view: &wgpu::TextureView,
    ) -> ChunkPath {
        let device = self.gpu.device();
        let texture = |i: usize| wgpu::BindingResource::TextureView(&views[i]);
        let sweeps = [(0, 1), (1, 0)].map(|(from, to)| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("omp sweep"),
                layout: self.kernels.sweep_layout(self.gpu, self.options.gram),
                entries: &[
                    entry(0, self.uniform(chunk.uniform)),
                    entry(1, wgpu::BindingResource::TextureView(chunk.g_view)),
                    entry(2, wgpu::BindingResource::TextureView(upd_view)),
                    entry(8, chunk.work.clone()),
                    entry(12, texture(from)),
                    entry(13, texture(to)),
                ],
            })
        });
        ChunkPath::Sweeps {
            sweeps,
            pack: self.pack_alpha_group(chunk, &views[0]),
        }
    }
}

/// The omp.wgsl pipelines a job coding with `options` at K = `n_atoms` records: G's and α⁰'s
/// packing, start and finish, and the steps' kernels unless they run resident (in their own
/// module, built with the job's path).
fn job_kernels(
    gpu: &Gpu,
    options: &CodingOptions,
    n_atoms: usize,
    max_atoms: usize,
) -> Vec<Kernel> {
    let pack = match options.gram {
        GramPrecision::F32 => Kernel::PackF32,
        GramPrecision::F16 => Kernel::PackF16,
    };
    let mut kernels = vec![pack, Kernel::Start, Kernel::Finish];
    if resident_plan(gpu, options.coder, n_atoms, max_atoms).is_some() {
        return kernels;
    }
    kernels.push(Kernel::PackAlpha);
    if fused_plan(gpu, options.coder, n_atoms, max_atoms).is_some() {
        kernels.push(Kernel::FusedOmp);
        return kernels;
    }
    kernels.push(match reduced_sweep(gpu) {
        true => Kernel::SweepReduced,
        false => Kernel::Sweep,
    });
    kernels.push(match options.coder {
        Coder::Omp => Kernel::SelectOmp,
        Coder::Mp { .. } => Kernel::SelectMp,
    });
    kernels
}

impl Gpu {
    /// Builds the pipelines of omp.wgsl that coding with `options` against K = `n_atoms` atoms
    /// of dimension `d` will record, where they do not depend on K (the resident coder's
    /// module does, and is left to the job): `Encoder::new` runs this while another thread
    /// builds the correlations' kernel, so a short encode does not build them one after the
    /// other.
    pub(crate) fn prepare_coding(
        &self,
        n_atoms: usize,
        d: usize,
        options: &CodingOptions,
    ) -> Result<()> {
        let max_atoms = options.max_atoms(n_atoms, d);
        let kernels = job_kernels(self, options, n_atoms, max_atoms);
        self.omp_kernels()?.prepare(self, options.gram, &kernels)
    }
}

/// What every bind group of one chunk shares.
struct ChunkEntries<'a> {
    /// The chunk's uniform record.
    uniform: usize,
    g_view: &'a wgpu::TextureView,
    work: wgpu::BindingResource<'a>,
    norms: wgpu::BindingResource<'a>,
    /// The chunk's rows of the correlations.
    alpha: wgpu::BindingResource<'a>,
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

/// Where a chunk's coding state lies in the work buffer (in words).
struct StateLayout {
    /// Words of one sample's record.
    stride: usize,
    /// Records of the chunk's rows.
    parts: usize,
    /// Where the bit masks start (after the records and the partial maxima).
    masks: usize,
    work_words: usize,
}

impl StateLayout {
    /// The layout for a chunk of `rows`; records without their last part, the Cholesky factor,
    /// where the job keeps it in a texture (`factor_in_texture`: fused_omp).
    fn new(
        gpu: &Gpu,
        n_atoms: usize,
        max_atoms: usize,
        rows: usize,
        factor_in_texture: bool,
    ) -> Self {
        let factor = match factor_in_texture {
            true => tri(max_atoms),
            false => 0,
        };
        let stride = record_words(max_atoms) - factor;
        let parts = rows * stride;
        let masks = parts + 2 * rows * partials(gpu, n_atoms);
        Self {
            stride,
            parts,
            masks,
            work_words: masks + rows * mask_words(n_atoms),
        }
    }
}

/// The job's greedy steps: resident where its plan fits, else sweeps over the pair of α
/// textures, of which OMP's use one (the resident coder keeps α in registers and the `alpha`
/// buffer).
fn step_path(
    gpu: &Gpu,
    kernels: &OmpKernels,
    options: &CodingOptions,
    n_atoms: usize,
    max_atoms: usize,
    rows: usize,
) -> Result<StepPath> {
    if let Some(plan) = resident_plan(gpu, options.coder, n_atoms, max_atoms) {
        let resident = resident_kernels(gpu, kernels, &plan, options.gram)?;
        return Ok(StepPath::Resident(plan, resident));
    }
    let fused = fused_plan(gpu, options.coder, n_atoms, max_atoms);
    let shape = TextureShape {
        width: n_atoms.div_ceil(TEXEL) as u32,
        height: rows as u32,
        layers: 1,
        format: wgpu::TextureFormat::Rgba32Uint,
    };
    if let Some(plan) = fused {
        let alpha0 = kernels.alphas[0].get(gpu, shape)?;
        // A row of tri(k) entries per sample (fused_plan checked the width); one class of
        // shapes, as the rows change from job to job.
        let entries = tri(max_atoms);
        let (shape, factor_shift) = texture_rows(gpu, rows, entries, FACTOR_FORMAT, true).map_err(
            |(requested, limit_name, limit)| Error::ExceedsLimit {
                what: format!("Cholesky factors of {rows} samples as texture rows of {entries}"),
                requested,
                limit_name,
                limit,
                largest_batch: None,
            },
        )?;
        let factors = kernels.factors.get(gpu, shape)?;
        return Ok(StepPath::Fused {
            plan,
            alpha0: alpha0.view(wgpu::TextureViewDimension::D2),
            factors: factors.view(wgpu::TextureViewDimension::D2Array),
            factor_shift,
        });
    }
    // Where the sweeps use one α texture the second binding gets a 1×1 stand-in (at K = 16 384
    // and 4096 rows each is 256 MiB).
    let second = match alpha_textures(options.coder) {
        1 => TextureShape {
            width: 1,
            height: 1,
            ..shape
        },
        _ => shape,
    };
    let textures = [
        kernels.alphas[0].get(gpu, shape)?,
        kernels.alphas[1].get(gpu, second)?,
    ];
    Ok(StepPath::Sweeps(
        textures
            .each_ref()
            .map(|t| t.view(wgpu::TextureViewDimension::D2)),
    ))
}
