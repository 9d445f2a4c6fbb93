//! Binding and encoding an update's planned steps.

use std::sync::Arc;

use super::record::{Copied, Kind, Layout, Step, Steps};
use super::{CodedBatch, PowerKernels, ResidentKernels, Vec4Kernels};
use crate::error::Result;
use crate::gpu::buffer::{copy_flat, GpuTexture, TextureShape, UniformRecords};
use crate::gpu::{Gpu, GpuBuffer, Matrix};

/// Everything the update's dispatches bind, and how each kind binds it.
pub(super) struct Recorder<'a> {
    gpu: &'a Gpu,
    layout: &'a Layout,
    kernels: &'a PowerKernels,
    /// The vec4 pipelines: those reading textures where the copies exist.
    vec4_kernels: &'a Vec4Kernels,
    /// The resident item kernels where the layout plans them (reading textures likewise).
    resident: Option<ResidentKernels>,
    atoms: &'a Matrix,
    memory: &'a Matrix,
    batch: &'a CodedBatch,
    order: GpuBuffer<u32>,
    rank: GpuBuffer<u32>,
    items: GpuBuffer<u32>,
    atom_items: GpuBuffer<u32>,
    partials: GpuBuffer<f32>,
    slot_order: GpuBuffer<u32>,
    batch_mask: GpuBuffer<u32>,
    uniforms: UniformRecords,
    /// The residual, atom, iterate, slot_order and user_entries textures READ_TEXTURES reads
    /// (stand-ins without them).
    textures: [Arc<GpuTexture>; 5],
    views: [wgpu::TextureView; 5],
    user_entries: GpuBuffer<u32>,
}

impl<'a> Recorder<'a> {
    pub(super) fn new(
        gpu: &'a Gpu,
        layout: &'a Layout,
        steps: &Steps,
        kernels: &'a PowerKernels,
        atoms: &'a Matrix,
        memory: &'a Matrix,
        batch: &'a CodedBatch,
    ) -> Result<Self> {
        let plan = &layout.plan;
        // A batch without users still binds one (unread) item.
        let items: &[[u32; 4]] = if plan.items.is_empty() {
            &[[0; 4]]
        } else {
            &plan.items
        };
        let (n, k, d) = (layout.n, layout.k, layout.d);
        let stand_in = |format| TextureShape {
            width: 1,
            height: 1,
            layers: 1,
            format,
        };
        let uint_stand_in = || {
            kernels
                .uint_stand_in
                .get(gpu, stand_in(wgpu::TextureFormat::Rgba32Uint))
        };
        let users = match layout.user_texture {
            Some((shape, _)) => kernels.user_texture.get(gpu, shape)?,
            None => uint_stand_in()?,
        };
        let textures = match layout.textures.zip(layout.slot_texture) {
            Some((((residual, _), (atoms, _)), (slots, _))) => [
                kernels.residual_texture.get(gpu, residual)?,
                kernels.atom_texture.get(gpu, atoms)?,
                kernels.iterate_texture.get(gpu, atoms)?,
                kernels.slot_texture.get(gpu, slots)?,
                users,
            ],
            None => {
                let t = kernels
                    .stand_in
                    .get(gpu, stand_in(wgpu::TextureFormat::Rgba32Float))?;
                [t.clone(), t.clone(), t, uint_stand_in()?, users]
            }
        };
        let views = textures
            .each_ref()
            .map(|t| t.view(wgpu::TextureViewDimension::D2Array));
        let vec4_kernels = match &kernels.textured {
            Some(textured) if layout.copies() => textured,
            _ => &kernels.vec4,
        };
        let resident = layout
            .resident
            .map(|texels| kernels.resident(gpu, texels, layout.copies(), layout.project_in_fold))
            .transpose()?;
        Ok(Self {
            gpu,
            layout,
            kernels,
            vec4_kernels,
            resident,
            atoms,
            memory,
            batch,
            order: gpu.upload(&layout.order)?,
            rank: gpu.upload(&layout.rank)?,
            items: gpu.upload(bytemuck::cast_slice::<[u32; 4], u32>(items))?,
            atom_items: gpu.upload(bytemuck::cast_slice::<[u32; 2], u32>(&plan.atom_items))?,
            partials: kernels.partials.get(gpu, steps.partial_rows * d.max(1))?,
            slot_order: kernels.slot_order.get(gpu, 4 * (n * k).max(1))?,
            // Only user_table writes it (resident kernels reading textures).
            user_entries: match layout.user_texture {
                Some(_) => kernels.user_entries.get(gpu, 4 * layout.n_users.max(1))?,
                None => kernels.user_entries.get(gpu, 4)?,
            },
            batch_mask: kernels
                .batch_mask
                .get(gpu, (n * layout.mask_words).max(1))?,
            uniforms: gpu.uniform_records("power params", &steps.records)?,
            textures,
            views,
        })
    }

    /// The entry point and pipeline `kind` runs.
    fn kernel(&self, kind: Kind) -> (&'static str, &wgpu::ComputePipeline) {
        let (kernels, vec4) = (self.kernels, self.vec4_kernels);
        if let Some(resident) = &self.resident {
            // The layout plans the projections and the fold in one pass or in two, and the
            // resident kernels were built for that (see PowerKernels::resident).
            fn built(pipeline: &Option<wgpu::ComputePipeline>) -> &wgpu::ComputePipeline {
                pipeline
                    .as_ref()
                    .expect("resident kernels built for the layout's projection and fold")
            }
            match kind {
                Kind::Partial => return ("power_partial_resident", &resident.partial),
                Kind::Reduce => return (resident.reduce_entry, &resident.reduce),
                Kind::Project => return ("power_project_resident", built(&resident.project)),
                Kind::FoldRows if self.layout.fold_resident => {
                    return ("fold_rows_resident", built(&resident.fold))
                }
                Kind::FoldProject => {
                    return ("fold_project_resident", built(&resident.fold_project))
                }
                _ => {}
            }
        }
        match (kind, self.layout.vec4) {
            (Kind::Partial, false) => ("power_partial", &kernels.partial),
            (Kind::Partial, true) => ("power_partial_vec4", &vec4.partial),
            (Kind::Reduce, _) => ("power_reduce", &kernels.reduce),
            (Kind::Project, false) => ("power_project", &kernels.project),
            (Kind::Project, true) => ("power_project_vec4", &vec4.project),
            (Kind::Fold, false) => ("fold", &kernels.fold),
            (Kind::Fold, true) => ("fold_vec4", &vec4.fold),
            (Kind::FoldRows, false) => ("fold_rows", &kernels.fold_rows),
            (Kind::FoldRows, true) => ("fold_rows_vec4", &vec4.fold_rows),
            (Kind::FoldProject, _) => {
                unreachable!("fold_project_resident is planned with the resident kernels only")
            }
            (Kind::Commit, _) => ("commit", &kernels.commit),
            (Kind::OrderSlots, _) => ("order_slots", &kernels.order_slots),
            (Kind::OrderSamples, _) => ("order_samples", &kernels.order_samples),
            (Kind::UserTable, _) => ("user_table", &kernels.user_table),
        }
    }

    /// Whether `kind` runs a vec4 entry point (which also binds the textures 19–21).
    fn vec4_kind(&self, kind: Kind) -> bool {
        self.layout.vec4
            && !matches!(
                kind,
                Kind::Reduce
                    | Kind::Commit
                    | Kind::OrderSlots
                    | Kind::OrderSamples
                    | Kind::UserTable
            )
    }

    /// The binding a buffer meant for binding `b` takes: the vec4 entry points bind the views
    /// 15–18 in place of 3, 9, 4 and 14; power_reduce_resident the views 15, 25, 24 and 18 in
    /// place of 3, 9, 11 and 14.
    fn slot(&self, kind: Kind, b: u32) -> u32 {
        if kind == Kind::Reduce && self.resident.is_some() {
            return match b {
                3 => 15,
                9 => 25,
                11 => 24,
                14 => 18,
                _ => b,
            };
        }
        match b {
            3 if self.vec4_kind(kind) => 15,
            9 if self.vec4_kind(kind) => 16,
            4 if self.vec4_kind(kind) => 17,
            14 if self.vec4_kind(kind) => 18,
            _ => b,
        }
    }

    /// The buffers `kind` binds, by binding number (3, 9 and 11, the [K, d] ones, windowed).
    fn buffers(&self, kind: Kind) -> Vec<(u32, &wgpu::Buffer)> {
        let (c, batch) = (&self.batch.codes, self.batch);
        match kind {
            // power_partial reads what power_project does and writes the partial sums.
            Kind::Partial | Kind::Project => vec![
                (3, &self.atoms.data.buffer),
                (4, &batch.residual.data.buffer),
                (5, &c.values.buffer),
                (8, &c.users.buffer),
                (9, &batch.iterate.data.buffer),
                (10, &batch.slot_scratch.buffer),
                (12, &self.items.buffer),
            ]
            .into_iter()
            // power_partial_resident keeps v in registers: no slot scratch.
            .filter(|&(b, _)| !(b == 10 && kind == Kind::Partial && self.resident.is_some()))
            .chain((kind == Kind::Partial).then_some((14, &self.partials.buffer)))
            .collect(),
            Kind::Reduce => vec![
                (1, &self.order.buffer),
                (3, &self.atoms.data.buffer),
                (9, &batch.iterate.data.buffer),
                (11, &self.memory.data.buffer),
                (13, &self.atom_items.buffer),
                (14, &self.partials.buffer),
            ],
            // The scalar folds scan the slots by rank and read their atoms and values; the vec4
            // ones search slot_order, whose entries carry both.
            Kind::Fold | Kind::FoldRows | Kind::FoldProject => {
                let slots: &[(u32, &wgpu::Buffer)] = if self.layout.vec4 {
                    &[(22, &self.slot_order.buffer), (23, &self.batch_mask.buffer)]
                } else {
                    &[
                        (2, &self.rank.buffer),
                        (5, &c.values.buffer),
                        (6, &c.indices.buffer),
                    ]
                };
                let rest = [
                    (3, &self.atoms.data.buffer),
                    (4, &batch.residual.data.buffer),
                    (9, &batch.iterate.data.buffer),
                    (10, &batch.slot_scratch.buffer),
                ];
                slots.iter().copied().chain(rest).collect()
            }
            Kind::UserTable => vec![
                (5, &c.values.buffer),
                (8, &c.users.buffer),
                (28, &self.user_entries.buffer),
            ],
            Kind::OrderSlots | Kind::OrderSamples => vec![
                (2, &self.rank.buffer),
                (5, &c.values.buffer),
                (6, &c.indices.buffer),
                (22, &self.slot_order.buffer),
                (23, &self.batch_mask.buffer),
            ],
            Kind::Commit => vec![
                (1, &self.order.buffer),
                (3, &self.atoms.data.buffer),
                (5, &c.values.buffer),
                (7, &c.user_start.buffer),
                (8, &c.users.buffer),
                (9, &batch.iterate.data.buffer),
                (10, &batch.slot_scratch.buffer),
            ],
        }
    }

    fn bind_group(&self, record: usize, kind: Kind, w: usize) -> wgpu::BindGroup {
        let window = self.layout.windows[w].2;
        let buffers = self.buffers(kind).into_iter().map(|(b, buffer)| {
            let resource = if matches!(b, 3 | 9 | 11) {
                crate::gpu::buffer::binding(buffer, window)
            } else {
                buffer.as_entire_binding()
            };
            (self.slot(kind, b), resource)
        });
        let textures = self.views[..3]
            .iter()
            .zip(19..)
            .filter(move |_| self.vec4_kind(kind));
        // The vec4 folds read slot_order's copy (27), the resident item kernels user_entries'
        // (29).
        let slot_texture = (self.layout.vec4
            && matches!(kind, Kind::Fold | Kind::FoldRows | Kind::FoldProject))
        .then_some((&self.views[3], 27));
        let user_texture = (self.resident.is_some()
            && matches!(kind, Kind::Partial | Kind::Project))
        .then_some((&self.views[4], 29));
        // power_reduce_resident reads the atoms' texels (a stand-in without textures) and, with
        // textures, writes the iterates' copy (26).
        let reduce_textures = (kind == Kind::Reduce && self.resident.is_some())
            .then(|| {
                std::iter::once((&self.views[1], 20))
                    .chain(self.layout.copies().then_some((&self.views[2], 26)))
            })
            .into_iter()
            .flatten();
        let entries = std::iter::once((0, self.uniforms.binding(record)))
            .chain(buffers)
            .chain(
                textures
                    .chain(reduce_textures)
                    .chain(slot_texture)
                    .chain(user_texture)
                    .map(|(v, b)| (b, wgpu::BindingResource::TextureView(v))),
            );
        crate::gpu::layout::bind_resources(self.gpu, self.kernel(kind).1, entries)
    }

    /// Records `steps`: runs of dispatches share a compute pass; the texture copies go between
    /// passes.
    pub(super) fn record(&self, encoder: &mut wgpu::CommandEncoder, steps: &[Step]) {
        let mut i = 0;
        while i < steps.len() {
            match steps[i] {
                Step::Copy(what) => {
                    self.copy(encoder, what);
                    i += 1;
                    continue;
                }
                Step::ClearBatchMask => {
                    let words = self.layout.n * self.layout.mask_words;
                    encoder.clear_buffer(&self.batch_mask.buffer, 0, Some(4 * words as u64));
                    i += 1;
                    continue;
                }
                Step::Run(..) => {}
            }
            let end = steps[i..]
                .iter()
                .position(|step| !matches!(step, Step::Run(..)))
                .map_or(steps.len(), |p| i + p);
            let runs: Vec<(Kind, (u32, u32), wgpu::BindGroup)> = steps[i..end]
                .iter()
                .filter_map(|step| match *step {
                    Step::Run(record, kind, groups, w) => {
                        Some((kind, groups, self.bind_group(record, kind, w)))
                    }
                    Step::Copy(_) | Step::ClearBatchMask => None,
                })
                .collect();
            let mut pass = self.gpu.passes(encoder, "atom batches");
            for &(kind, (x, y), ref group) in &runs {
                let (entry, pipeline) = self.kernel(kind);
                pass.set_pipeline(entry, pipeline);
                pass.set_bind_group(group);
                pass.dispatch(x, y);
            }
            drop(pass);
            i = end;
        }
    }

    /// Refreshes a texture copy from its buffer.
    fn copy(&self, encoder: &mut wgpu::CommandEncoder, what: Copied) {
        let layout = self.layout;
        let (residual_shift, atom_shift) = layout.textures.map_or((0, 0), |t| (t.0 .1, t.1 .1));
        let [residual, atoms, iterates, slots, users] =
            self.textures.each_ref().map(|t| &t.texture);
        let texels = layout.texels;
        match what {
            Copied::Residual => copy_flat(
                encoder,
                &self.batch.residual.data.buffer,
                0,
                layout.n * texels,
                residual,
                residual_shift,
            ),
            Copied::Users => copy_flat(
                encoder,
                &self.user_entries.buffer,
                0,
                layout.n_users,
                users,
                layout.user_texture.map_or(0, |t| t.1),
            ),
            Copied::SlotOrder => copy_flat(
                encoder,
                &self.slot_order.buffer,
                0,
                layout.n * layout.k,
                slots,
                layout.slot_texture.map_or(0, |t| t.1),
            ),
            Copied::Atoms => copy_flat(
                encoder,
                &self.atoms.data.buffer,
                0,
                layout.n_atoms * texels,
                atoms,
                atom_shift,
            ),
            // Row by row: a batch's A rows, not all K (K/A times less at scale).
            Copied::Iterate { start, len } => {
                for &j in &layout.order[start..start + len] {
                    copy_flat(
                        encoder,
                        &self.batch.iterate.data.buffer,
                        j as usize * texels,
                        texels,
                        iterates,
                        atom_shift,
                    );
                }
            }
        }
    }
}
