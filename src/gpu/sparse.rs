//! Kernels on fixed-width codes (`shaders/sparse.wgsl`): the residual E = Y − X·D and the
//! transpose of the codes into per-atom user lists.

use bytemuck::{Pod, Zeroable};

use super::buffer::{Scratch, ScratchTexture};
use super::layout::{bind, bind_resources, bind_windows, compute_pipeline, dispatch, groups};
use super::{Gpu, GpuBuffer, Matrix};
use crate::error::{Error, Result};

/// sparse.wgsl after the helpers it includes (see shaders/include/workgroup.wgsl).
const SHADER: &str = concat!(
    include_str!("../../shaders/include/workgroup.wgsl"),
    include_str!("../../shaders/sparse.wgsl")
);
const WG: u32 = 64;
/// Samples per chunk of the transpose: each chunk is walked in order by one invocation, so a
/// smaller chunk means more parallel chunks but a larger [chunks, K] count table.
pub(crate) const CHUNK: u32 = 64;

/// Mirrors `Params` in sparse.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    n: u32,
    k: u32,
    d: u32,
    n_atoms: u32,
    chunk: u32,
    n_chunks: u32,
    atom_first: u32,
    atom_end: u32,
    atom_lead: u32,
    from_residual: u32,
    atom_shift: u32,
    code_shift: u32,
}

/// The sparse.wgsl pipelines (auto layouts: each entry point binds only what it uses).
pub(crate) struct SparseKernels {
    residual: wgpu::ComputePipeline,
    residual_vec4: wgpu::ComputePipeline,
    /// residual_from_codes_texels and the flat copy of the atoms it reads (CPU adapters).
    residual_texels: wgpu::ComputePipeline,
    atom_texture: ScratchTexture,
    /// residual_from_codes_texels' flat copies of the indices and values, and the buffers padded
    /// to whole texels they are copied through.
    index_texture: ScratchTexture,
    value_texture: ScratchTexture,
    padded_indices: Scratch<i32>,
    padded_values: Scratch<f32>,
    chunk_counts: wgpu::ComputePipeline,
    chunk_offsets: wgpu::ComputePipeline,
    atom_offsets: wgpu::ComputePipeline,
    scatter: wgpu::ComputePipeline,
    unpack: wgpu::ComputePipeline,
}

impl SparseKernels {
    pub(crate) fn new(gpu: &Gpu) -> Result<Self> {
        gpu.scoped(|| {
            let module = super::layout::shader_module(gpu, "sparse.wgsl", SHADER);
            let c = [("WG", WG as f64)];
            Ok(Self {
                residual: compute_pipeline(gpu, &module, "residual_from_codes", &c),
                residual_vec4: compute_pipeline(gpu, &module, "residual_from_codes_vec4", &c),
                residual_texels: compute_pipeline(gpu, &module, "residual_from_codes_texels", &c),
                atom_texture: ScratchTexture::default(),
                index_texture: ScratchTexture::default(),
                value_texture: ScratchTexture::default(),
                padded_indices: Scratch::default(),
                padded_values: Scratch::default(),
                chunk_counts: compute_pipeline(gpu, &module, "chunk_counts", &c),
                chunk_offsets: compute_pipeline(gpu, &module, "chunk_offsets", &c),
                atom_offsets: compute_pipeline(gpu, &module, "atom_offsets", &[]),
                scatter: compute_pipeline(gpu, &module, "scatter", &c),
                unpack: compute_pipeline(gpu, &module, "unpack_codes", &c),
            })
        })
    }
}

/// Buffers of one sample batch's codes and what is derived from them on the device.
pub(crate) struct CodeBuffers {
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) indices: GpuBuffer<i32>,
    pub(crate) values: GpuBuffer<f32>,
    /// [n_chunks, K] counts, then cursors.
    pub(crate) counts: GpuBuffer<u32>,
    /// [K + 1] start of each atom's users.
    pub(crate) user_start: GpuBuffer<u32>,
    /// [n·k, 2]: (sample, flat slot) grouped by atom.
    pub(crate) users: GpuBuffer<u32>,
}

impl CodeBuffers {
    /// Buffers for `n` samples of `k` slots, codes to be written on the device.
    pub(crate) fn zeroed(gpu: &Gpu, n_atoms: usize, n: usize, k: usize) -> Result<Self> {
        let n_chunks = n.div_ceil(CHUNK as usize).max(1);
        Ok(Self {
            n,
            k,
            indices: gpu.zeroed((n * k).max(1))?,
            values: gpu.zeroed((n * k).max(1))?,
            counts: gpu.zeroed(n_chunks * n_atoms)?,
            user_start: gpu.zeroed(n_atoms + 1)?,
            users: gpu.zeroed(2 * (n * k).max(1))?,
        })
    }

    pub(crate) fn new(
        gpu: &Gpu,
        n_atoms: usize,
        indices: &[i32],
        values: &[f32],
        k: usize,
    ) -> Result<Self> {
        let n = indices.len() / k.max(1);
        let n_chunks = n.div_ceil(CHUNK as usize).max(1);
        Ok(Self {
            n,
            k,
            indices: gpu.upload(indices)?,
            values: gpu.upload(values)?,
            counts: gpu.zeroed(n_chunks * n_atoms)?,
            user_start: gpu.zeroed(n_atoms + 1)?,
            users: gpu.zeroed(2 * (n * k).max(1))?,
        })
    }
}

impl Gpu {
    pub(crate) fn sparse_kernels(&self) -> Result<&SparseKernels> {
        self.cached(&self.inner.sparse, SparseKernels::new)
    }

    /// Records the unpacking of the sparse coder's `words` ([n, 2k + 1], see
    /// [`code_words`](super::omp::code_words)) into `codes` (indices, values) and `row_stats`
    /// ([n, 2]: residual energy, L0 as f32).
    pub(crate) fn record_unpack_codes(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        words: &GpuBuffer<u32>,
        codes: &CodeBuffers,
        row_stats: &GpuBuffer<f32>,
    ) -> Result<()> {
        let (n, k) = (codes.n, codes.k);
        if words.len() < n * super::omp::code_words(k) || row_stats.len() < 2 * n {
            return Err(Error::InvalidArgument(format!(
                "unpacking {n} codes of {k} slots from {} words into {} row statistics",
                words.len(),
                row_stats.len()
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let kernels = self.sparse_kernels()?;
        let params = Params {
            n: n as u32,
            k: k as u32,
            d: 0,
            n_atoms: 0,
            chunk: CHUNK,
            n_chunks: 0,
            atom_first: 0,
            atom_end: 0,
            atom_lead: 0,
            from_residual: 0,
            atom_shift: 0,
            code_shift: 0,
        };
        self.scoped(|| {
            let uniforms = self.buffer_init(
                "unpack params",
                bytemuck::bytes_of(&params),
                wgpu::BufferUsages::UNIFORM,
            );
            let group = bind(
                self,
                &kernels.unpack,
                &[
                    (0, &uniforms),
                    (9, &words.buffer),
                    (10, &codes.indices.buffer),
                    (11, &codes.values.buffer),
                    (12, &row_stats.buffer),
                ],
            );
            let runs = [(&group, groups(self, n, WG as usize))];
            dispatch(self, encoder, "unpack_codes", &kernels.unpack, runs);
            Ok(())
        })
    }

    /// Records E = Y − X·D into `residual` and the transpose of the codes into per-atom user lists
    /// (ascending sample order) in `codes`.
    pub(crate) fn record_residual_and_transpose(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        samples: &Matrix,
        atoms: &Matrix,
        codes: &CodeBuffers,
        residual: &Matrix,
    ) -> Result<()> {
        check_residual_shapes(samples, atoms, codes, residual)?;
        let (n, d, k, n_atoms) = (codes.n, atoms.cols(), codes.k, atoms.rows());
        let n_chunks = n.div_ceil(CHUNK as usize).max(1);
        // atom_offsets is one invocation over all atoms; the chunk kernels walk a chunk's slots.
        self.check_loop_budget(
            &format!("code transpose over {n_atoms} atoms and {n_chunks} chunks"),
            (n_atoms as u64 + 1)
                .max(n_chunks as u64 + 1)
                .max(CHUNK as u64 * (k as u64 + 1)),
        )?;
        let kernels = self.sparse_kernels()?;
        // One record per window of atom rows (the residual takes one dispatch each); the
        // transpose kernels read the shape from the first.
        let windows = super::buffer::row_windows(self, n_atoms, d);
        // Four dimensions per invocation where rows are whole vec4s (see sparse.wgsl); on CPU
        // adapters four texels of them, the atoms read from a flat texture copy where it fits.
        let vec4 = d > 0 && d % 4 == 0 && n > 0 && windows.iter().all(|w| w.2.first % 4 == 0);
        // The texel kernel also reads the codes from flat copies, four slots per texel.
        let float = wgpu::TextureFormat::Rgba32Float;
        let codes_flat = super::buffer::flat_texture(self, (n * k).div_ceil(4), float);
        let flat = match vec4 && self.limits().cpu_paths && codes_flat.is_some() {
            true => super::buffer::flat_texture(self, n_atoms * d / 4, float),
            false => None,
        };
        let codes_flat = codes_flat.filter(|_| flat.is_some());
        let records: Vec<Params> = windows
            .iter()
            .enumerate()
            .map(|(w, &(first, end, window))| Params {
                n: n as u32,
                k: k as u32,
                d: d as u32,
                n_atoms: n_atoms as u32,
                chunk: CHUNK,
                n_chunks: n_chunks as u32,
                atom_first: first as u32,
                atom_end: end as u32,
                atom_lead: window.first,
                from_residual: u32::from(w > 0),
                atom_shift: flat.map_or(0, |f| f.1),
                code_shift: codes_flat.map_or(0, |f| f.1),
            })
            .collect();
        let job = ResidualJob {
            gpu: self,
            kernels,
            uniforms: self.uniform_records("sparse params", &records)?,
            windows,
            flat,
            codes_flat,
            samples,
            atoms,
            codes,
            residual,
        };
        let (residual_name, residual_kernel, texels) = match (vec4, flat) {
            (true, Some(_)) => (
                "residual_from_codes_texels",
                &kernels.residual_texels,
                n * (d / 4).div_ceil(4),
            ),
            (true, None) => (
                "residual_from_codes_vec4",
                &kernels.residual_vec4,
                n * d / 4,
            ),
            (false, _) => ("residual_from_codes", &kernels.residual, n * d),
        };
        self.scoped(|| {
            encoder.clear_buffer(&codes.counts.buffer, 0, None);
            let residual_groups = job.residual_groups(encoder, residual_kernel, vec4)?;
            let transpose = job.transpose_steps(n_chunks);
            let mut pass = self.passes(encoder, "residual and transpose");
            for group in &residual_groups {
                pass.set_pipeline(residual_name, residual_kernel);
                pass.set_bind_group(group);
                let (x, y) = groups(self, texels, WG as usize);
                pass.dispatch(x, y);
            }
            for (kernel, pipeline, group, (x, y)) in &transpose {
                pass.set_pipeline(kernel, pipeline);
                pass.set_bind_group(group);
                pass.dispatch(*x, *y);
            }
            Ok(())
        })
    }
}

/// Samples and residual are [n, d], n from the codes and d from the atoms.
fn check_residual_shapes(
    samples: &Matrix,
    atoms: &Matrix,
    codes: &CodeBuffers,
    residual: &Matrix,
) -> Result<()> {
    let (n, d) = (codes.n, atoms.cols());
    if samples.rows() != n || samples.cols() != d || residual.rows() != n || residual.cols() != d {
        return Err(Error::ShapeMismatch {
            op: format!(
                "residual of {n} coded samples (samples and residual vs [n, d] from codes \
                 and atoms {})",
                atoms.shape()
            ),
            left: format!("{} and {}", samples.shape(), residual.shape()),
            right: crate::error::shape(n, d),
        });
    }
    Ok(())
}

/// The residual E = Y − X·D and the code transpose of one coded batch, planned.
struct ResidualJob<'a> {
    gpu: &'a Gpu,
    kernels: &'a SparseKernels,
    uniforms: super::buffer::UniformRecords,
    /// Windows of atom rows: the residual runs once per window.
    windows: Vec<(usize, usize, super::buffer::Window)>,
    /// The atoms' flat texture copy (shape, layer shift) the texel kernel reads, if any.
    flat: Option<(super::buffer::TextureShape, u32)>,
    /// With it, the codes' (the values' rgba32float shape; the indices' is the same in
    /// rgba32sint).
    codes_flat: Option<(super::buffer::TextureShape, u32)>,
    samples: &'a Matrix,
    atoms: &'a Matrix,
    codes: &'a CodeBuffers,
    residual: &'a Matrix,
}

impl ResidualJob<'_> {
    /// The residual kernel's bind group per window; with a flat texture, its copy of the atoms
    /// is recorded first.
    fn residual_groups(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: &wgpu::ComputePipeline,
        vec4: bool,
    ) -> Result<Vec<wgpu::BindGroup>> {
        let (gpu, codes) = (self.gpu, self.codes);
        let Some((shape, shift)) = self.flat else {
            let views = if vec4 { [13, 14, 15] } else { [3, 4, 5] };
            return Ok(bind_windows(
                gpu,
                kernel,
                &self.uniforms,
                &self.windows,
                &[(views[1], &self.atoms.data.buffer)],
                &[
                    (1, &codes.indices.buffer),
                    (2, &codes.values.buffer),
                    (views[0], &self.samples.data.buffer),
                    (views[2], &self.residual.data.buffer),
                ],
            ));
        };
        let texture = self.kernels.atom_texture.get(gpu, shape)?;
        let texels = self.atoms.rows() * self.atoms.cols() / 4;
        let atoms = &self.atoms.data.buffer;
        super::buffer::copy_flat(encoder, atoms, 0, texels, &texture.texture, shift);
        let view = texture.view(wgpu::TextureViewDimension::D2Array);
        let [indices, values] = self.copy_codes(encoder)?;
        Ok((0..self.windows.len())
            .map(|w| {
                // The codes come from their textures.
                let buffers = [
                    (13, &self.samples.data.buffer),
                    (15, &self.residual.data.buffer),
                ];
                let entries = std::iter::once((0, self.uniforms.binding(w)))
                    .chain(buffers.map(|(b, buf)| (b, buf.as_entire_binding())))
                    .chain([
                        (16, wgpu::BindingResource::TextureView(&view)),
                        (17, wgpu::BindingResource::TextureView(&indices)),
                        (18, wgpu::BindingResource::TextureView(&values)),
                    ]);
                bind_resources(gpu, kernel, entries)
            })
            .collect())
    }

    /// Records the copies of the indices and values into their flat textures (through buffers
    /// padded to whole texels of four slots where n·k is not a multiple of 4); returns the
    /// textures' views.
    fn copy_codes(&self, encoder: &mut wgpu::CommandEncoder) -> Result<[wgpu::TextureView; 2]> {
        let (gpu, kernels, codes) = (self.gpu, self.kernels, self.codes);
        let (value_shape, shift) = self.codes_flat.ok_or_else(|| {
            Error::Internal("residual_from_codes_texels without its codes' textures".into())
        })?;
        let slots = codes.n * codes.k;
        let texels = slots.div_ceil(4);
        // A copy reads whole 16-byte texels: past n·k the codes' buffers end.
        let padded;
        let (indices, values) = if slots % 4 == 0 {
            (&codes.indices.buffer, &codes.values.buffer)
        } else {
            padded = (
                kernels.padded_indices.get(gpu, 4 * texels)?,
                kernels.padded_values.get(gpu, 4 * texels)?,
            );
            let bytes = 4 * slots as u64;
            encoder.copy_buffer_to_buffer(&codes.indices.buffer, 0, &padded.0.buffer, 0, bytes);
            encoder.copy_buffer_to_buffer(&codes.values.buffer, 0, &padded.1.buffer, 0, bytes);
            (&padded.0.buffer, &padded.1.buffer)
        };
        let index_shape = super::buffer::TextureShape {
            format: wgpu::TextureFormat::Rgba32Sint,
            ..value_shape
        };
        let index_texture = kernels.index_texture.get(gpu, index_shape)?;
        let value_texture = kernels.value_texture.get(gpu, value_shape)?;
        let copy = super::buffer::copy_flat;
        copy(encoder, indices, 0, texels, &index_texture.texture, shift);
        copy(encoder, values, 0, texels, &value_texture.texture, shift);
        let dimension = wgpu::TextureViewDimension::D2Array;
        Ok([index_texture.view(dimension), value_texture.view(dimension)])
    }

    /// The transpose's dispatches in order (entry point, pipeline, bind group, workgroups):
    /// per-chunk counts, per-atom offsets within chunks, atom offsets, scatter into the user
    /// lists.
    fn transpose_steps(
        &self,
        n_chunks: usize,
    ) -> Vec<(
        &'static str,
        &wgpu::ComputePipeline,
        wgpu::BindGroup,
        (u32, u32),
    )> {
        let (gpu, kernels, codes) = (self.gpu, self.kernels, self.codes);
        let u = self.uniforms.buffer();
        let per_chunk = groups(gpu, n_chunks, WG as usize);
        vec![
            (
                "chunk_counts",
                &kernels.chunk_counts,
                bind(
                    gpu,
                    &kernels.chunk_counts,
                    &[
                        (0, u),
                        (1, &codes.indices.buffer),
                        (6, &codes.counts.buffer),
                    ],
                ),
                per_chunk,
            ),
            (
                "chunk_offsets",
                &kernels.chunk_offsets,
                bind(
                    gpu,
                    &kernels.chunk_offsets,
                    &[
                        (0, u),
                        (6, &codes.counts.buffer),
                        (7, &codes.user_start.buffer),
                    ],
                ),
                groups(gpu, self.atoms.rows(), WG as usize),
            ),
            (
                "atom_offsets",
                &kernels.atom_offsets,
                bind(
                    gpu,
                    &kernels.atom_offsets,
                    &[(0, u), (7, &codes.user_start.buffer)],
                ),
                (1, 1),
            ),
            (
                "scatter",
                &kernels.scatter,
                bind(
                    gpu,
                    &kernels.scatter,
                    &[
                        (0, u),
                        (1, &codes.indices.buffer),
                        (6, &codes.counts.buffer),
                        (7, &codes.user_start.buffer),
                        (8, &codes.users.buffer),
                    ],
                ),
                per_chunk,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::gpu::uniform_layout::params_mirror_test!(Params {
        n,
        k,
        d,
        n_atoms,
        chunk,
        n_chunks,
        atom_first,
        atom_end,
        atom_lead,
        from_residual,
        atom_shift,
        code_shift
    });

    /// `unpack_codes` against the reference decoder on awkward shapes (n = 1 and a prime, k = 1
    /// and 3), with empty slots, negative values and an energy of exactly 0. Bits are copied, so
    /// the comparison is exact.
    #[test]
    fn unpack_matches_the_reference_decoder() {
        let Some(gpu) = crate::gpu::context::fresh_gpu() else {
            return;
        };
        for (n, k) in [(1, 1), (37, 3), (1, 3), (37, 1)] {
            let mut words = Vec::new();
            for s in 0..n {
                for t in 0..k {
                    let empty = (s + t) % 3 == 2;
                    words.push(if empty {
                        u32::MAX
                    } else {
                        (s * 7 + t) as u32 % 11
                    });
                }
                for t in 0..k {
                    words.push((s as f32 * 0.5 - t as f32).to_bits());
                }
                words.push(if s % 5 == 0 { 0.0f32 } else { s as f32 * 0.25 }.to_bits());
            }
            let words_buf = gpu.upload(&words).unwrap();
            let codes = CodeBuffers::zeroed(&gpu, 11, n, k).unwrap();
            let stats = gpu.zeroed::<f32>(2 * n).unwrap();
            let mut encoder = gpu.encoder("unpack test");
            gpu.record_unpack_codes(&mut encoder, &words_buf, &codes, &stats)
                .unwrap();
            gpu.submit(encoder).unwrap();
            let (indices, values, expected) = crate::reference::omp::unpack_words(&words, k);
            assert_eq!(gpu.read(&codes.indices).unwrap()[..n * k], indices[..]);
            let got: Vec<u32> = gpu.read(&codes.values).unwrap()[..n * k]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let want: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "n = {n}, k = {k}");
            let got = gpu.read(&stats).unwrap();
            for (s, &(energy, l0)) in expected.iter().enumerate() {
                assert_eq!(
                    (got[2 * s], got[2 * s + 1]),
                    (energy, l0 as f32),
                    "sample {s}"
                );
            }
        }
    }
}
