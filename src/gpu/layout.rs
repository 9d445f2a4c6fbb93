//! Bind-group layouts, pipelines and bind groups written out in one place: the entry kinds the
//! shaders declare (uniforms, storage buffers, sampled and storage textures), pipelines under a
//! derived or explicit layout, bind groups from (binding, buffer) pairs, and dispatch sizes.

use super::Gpu;

/// Layout entry `binding` of type `ty`, visible to compute.
pub(crate) fn entry(binding: u32, ty: wgpu::BindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty,
        count: None,
    }
}

fn buffer(ty: wgpu::BufferBindingType) -> wgpu::BindingType {
    wgpu::BindingType::Buffer {
        ty,
        has_dynamic_offset: false,
        min_binding_size: None,
    }
}

/// A uniform buffer.
pub(crate) fn uniform() -> wgpu::BindingType {
    buffer(wgpu::BufferBindingType::Uniform)
}

/// A storage buffer, read-only or read-write.
pub(crate) fn storage(read_only: bool) -> wgpu::BindingType {
    buffer(wgpu::BufferBindingType::Storage { read_only })
}

/// A texture read with `textureLoad`.
pub(crate) fn texture(
    sample_type: wgpu::TextureSampleType,
    view_dimension: wgpu::TextureViewDimension,
) -> wgpu::BindingType {
    wgpu::BindingType::Texture {
        sample_type,
        view_dimension,
        multisampled: false,
    }
}

/// A 2D storage texture written with `textureStore`.
pub(crate) fn written_texture(format: wgpu::TextureFormat) -> wgpu::BindingType {
    wgpu::BindingType::StorageTexture {
        access: wgpu::StorageTextureAccess::WriteOnly,
        format,
        view_dimension: wgpu::TextureViewDimension::D2,
    }
}

/// A bind-group layout of `entries`.
pub(crate) fn bind_group_layout(
    gpu: &Gpu,
    label: &str,
    entries: &[wgpu::BindGroupLayoutEntry],
) -> wgpu::BindGroupLayout {
    gpu.device()
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries,
        })
}

/// The pipeline of `entry` under the one bind-group layout `layout` (for entry points that
/// share a layout, so their bind groups are interchangeable).
pub(crate) fn pipeline_in_layout(
    gpu: &Gpu,
    module: &wgpu::ShaderModule,
    entry: &str,
    layout: &wgpu::BindGroupLayout,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    let pipeline_layout = gpu
        .device()
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(layout)],
            immediate_size: 0,
        });
    compute_pipeline_in(gpu, module, entry, Some(&pipeline_layout), constants)
}

/// The pipeline of `entry` with the bind group layout wgpu derives from the shader.
pub(crate) fn compute_pipeline(
    gpu: &Gpu,
    module: &wgpu::ShaderModule,
    entry: &str,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    compute_pipeline_in(gpu, module, entry, None, constants)
}

/// The pipeline of `entry` under `layout` (derived from the shader when `None`). Workgroup
/// memory is not zeroed: every kernel writes its workgroup variables before reading them.
pub(crate) fn compute_pipeline_in(
    gpu: &Gpu,
    module: &wgpu::ShaderModule,
    entry: &str,
    layout: Option<&wgpu::PipelineLayout>,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    gpu.device()
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout,
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
}

/// A bind group for `pipeline` from (binding, buffer) pairs, whole buffers.
pub(crate) fn bind(
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    entries: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    bind_resources(
        gpu,
        pipeline,
        entries
            .iter()
            .map(|&(binding, buffer)| (binding, buffer.as_entire_binding())),
    )
}

/// A bind group for `pipeline` from (binding, resource) pairs: whole buffers, windows, records.
pub(crate) fn bind_resources<'a>(
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    entries: impl IntoIterator<Item = (u32, wgpu::BindingResource<'a>)>,
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = entries
        .into_iter()
        .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource })
        .collect();
    gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// One bind group per row window for a kernel dispatched once per window (see
/// [`super::buffer::row_windows`]): record w of `uniforms` at binding 0, the `windowed` buffers
/// (matrices of the same row shape) bound at window w, the `whole` buffers entire.
pub(crate) fn bind_windows(
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    uniforms: &super::buffer::UniformRecords,
    windows: &[(usize, usize, super::buffer::Window)],
    windowed: &[(u32, &wgpu::Buffer)],
    whole: &[(u32, &wgpu::Buffer)],
) -> Vec<wgpu::BindGroup> {
    windows
        .iter()
        .enumerate()
        .map(|(w, &(_, _, window))| {
            let entries = std::iter::once((0, uniforms.binding(w)))
                .chain(
                    windowed
                        .iter()
                        .map(|&(b, buffer)| (b, super::buffer::binding(buffer, window))),
                )
                .chain(
                    whole
                        .iter()
                        .map(|&(b, buffer)| (b, buffer.as_entire_binding())),
                );
            bind_resources(gpu, pipeline, entries)
        })
        .collect()
}

/// One compute pass that runs `pipeline`, entry point `kernel`, once per (bind group,
/// workgroups) pair, in order: the shape of every single-kernel pass (windows of a matrix,
/// blocks of a product, ranges of atoms).
pub(crate) fn dispatch<'a>(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    kernel: &'static str,
    pipeline: &wgpu::ComputePipeline,
    runs: impl IntoIterator<Item = (&'a wgpu::BindGroup, (u32, u32))>,
) {
    let mut pass = gpu.passes(encoder, kernel);
    pass.set_pipeline(kernel, pipeline);
    for (group, (x, y)) in runs {
        pass.set_bind_group(group);
        pass.dispatch(x, y);
    }
}

/// Workgroups (x, y) covering `items` items at `per_group` items per workgroup.
pub(crate) fn groups(gpu: &Gpu, items: usize, per_group: usize) -> (u32, u32) {
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let total = items.div_ceil(per_group).max(1);
    let x = total.min(max);
    (x as u32, total.div_ceil(x) as u32)
}

/// The compute module of WGSL `source`, labelled with its file name.
pub(crate) fn shader_module(
    gpu: &Gpu,
    file: &str,
    source: impl Into<std::borrow::Cow<'static, str>>,
) -> wgpu::ShaderModule {
    gpu.device()
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        })
}
