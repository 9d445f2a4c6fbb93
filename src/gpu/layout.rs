//! Bind-group layouts and pipelines written out in one place: the entry kinds the shaders
//! declare (uniforms, storage buffers, sampled and storage textures) and a pipeline under an
//! explicit layout.

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
    gpu: &super::Gpu,
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
    gpu: &super::Gpu,
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
    super::sparse::compute_pipeline_in(gpu, module, entry, Some(&pipeline_layout), constants)
}
