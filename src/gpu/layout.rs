//! Bind-group layouts, pipelines and bind groups written out in one place: the entry kinds the
//! shaders declare (uniforms, storage buffers, storage textures), pipelines under a
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

/// A storage texture read with `textureLoad` (rather than a sampled texture: llvmpipe's sampled
/// `textureLoad` looks up each lane's mip level and strides, see gemm.wgsl).
pub(crate) fn read_texture(
    format: wgpu::TextureFormat,
    view_dimension: wgpu::TextureViewDimension,
) -> wgpu::BindingType {
    wgpu::BindingType::StorageTexture {
        access: wgpu::StorageTextureAccess::ReadOnly,
        format,
        view_dimension,
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
/// Each build's time is logged at debug level (`RUST_LOG=dbksvd=debug`): some drivers spend
/// hundreds of milliseconds per pipeline (lavapipe: 80–260 ms for the texel GEMMs, its shader
/// cache warm or not).
pub(crate) fn compute_pipeline_in(
    gpu: &Gpu,
    module: &wgpu::ShaderModule,
    entry: &str,
    layout: Option<&wgpu::PipelineLayout>,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    let started = std::time::Instant::now();
    let pipeline = gpu
        .device()
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
        });
    log::debug!(
        "pipeline {entry}: built in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    pipeline
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
///
/// Built without wgpu's forced loop bounding (every other runtime check stays): by default naga
/// gives each loop a 64-bit iteration counter that breaks it after 2⁶⁴ − 1 turns, a guard
/// against infinite loops in untrusted shaders. Ours are this crate's own, and every loop in
/// `shaders/` ends by construction: a `for` whose trip count is a constant or a uniform the host
/// sets (and estimates, for llvmpipe's loop cap), or a binary search whose interval shrinks each
/// turn (`fold_first`, `split_project`). On llvmpipe the counter is vector work in every turn of
/// every inner loop: without it a 16 384-row Batch-OMP encode took 14 % less time (medians of 7
/// alternated runs), the codes identical.
pub(crate) fn shader_module(
    gpu: &Gpu,
    file: &str,
    source: impl Into<std::borrow::Cow<'static, str>>,
) -> wgpu::ShaderModule {
    let mut checks = wgpu::ShaderRuntimeChecks::checked();
    checks.force_loop_bounding = false;
    let descriptor = wgpu::ShaderModuleDescriptor {
        label: Some(file),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    };
    // SAFETY: wgpu requires of a module without loop bounding that none of its loops is
    // infinite; see above for why each of ours ends.
    unsafe {
        gpu.device()
            .create_shader_module_trusted(descriptor, checks)
    }
}

/// Most texels per invocation whose lines [`texel_lines`] writes out one by one; past it
/// llvmpipe's compile time grows steeply (resident_mp: 2 s more at 48 texels, 4 s at 64, 24 s
/// at 128), and the lines become loops over arrays instead.
pub(crate) const UNROLLED_TEXELS: usize = 64;

/// `source` with its per-texel lines written out for `count` texels: each code line that names
/// `$t` (comment lines are kept once) is written `count` times, `$t` replaced by 0, 1, …,
/// `count` − 1, when `count` ≤ [`UNROLLED_TEXELS`]. The resident kernels hold a row in one
/// private vec4 per texel this way: llvmpipe compiles an array indexed by a loop counter it does
/// not unroll into a gather and a scatter lane by lane per access, where a named variable stays
/// a register (or one vector spill). Past that count, a declaration `var<private> NAME$t: T;`
/// becomes `var<private> NAME: array<T, count>;` and any other such line a loop over the
/// texels, `NAME$t` indexing the array by its counter and `$tu` the counter itself: one loop per
/// line, which the hosts' loop-count estimates assume (write a texel's statements on one line).
pub(crate) fn texel_lines(source: &str, count: usize) -> String {
    let mut out = String::with_capacity(source.len() + count.min(UNROLLED_TEXELS) * 256);
    for line in source.lines() {
        if !line.contains("$t") || line.trim_start().starts_with("//") {
            out.push_str(line);
        } else if count <= UNROLLED_TEXELS {
            for t in 0..count {
                out.push_str(&line.replace("$t", &t.to_string()));
                if t + 1 < count {
                    out.push('\n');
                }
            }
        } else if let Some(declared) = line.trim_start().strip_prefix("var<private> ") {
            let (name, ty) = declared
                .trim_end_matches(';')
                .split_once("$t:")
                .filter(|(_, ty)| !ty.contains('='))
                .expect("a per-texel declaration reads `var<private> NAME$t: T;`");
            out.push_str(&format!(
                "var<private> {name}: array<{}, {count}>;",
                ty.trim()
            ));
        } else {
            let indent = &line[..line.len() - line.trim_start().len()];
            let body = line.trim_start().replace("$tu", "t_").replace("$t", "[t_]");
            // The brace on its own line: a trailing comment on the line stays a comment.
            out.push_str(&format!(
                "{indent}for (var t_ = 0u; t_ < {count}u; t_++) {{\n{indent}    {body}\n{indent}}}"
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    const SOURCE: &str =
        "// $t stays\nvar<private> a$t: vec4<f32>;\nfn f() {\n    a$t = g($tu);\n}\n";

    #[test]
    fn texel_lines_repeats_the_lines_that_name_t() {
        assert_eq!(
            super::texel_lines(SOURCE, 2),
            "// $t stays\nvar<private> a0: vec4<f32>;\nvar<private> a1: vec4<f32>;\nfn f() {\n    \
             a0 = g(0u);\n    a1 = g(1u);\n}\n"
        );
    }

    #[test]
    fn texel_lines_loop_over_arrays_past_the_unrolled_count() {
        let count = super::UNROLLED_TEXELS + 1;
        assert_eq!(
            super::texel_lines(SOURCE, count),
            format!(
                "// $t stays\nvar<private> a: array<vec4<f32>, {count}>;\nfn f() {{\n    \
                 for (var t_ = 0u; t_ < {count}u; t_++) {{\n        a[t_] = g(t_);\n    }}\n}}\n"
            )
        );
    }

    /// Both forms of both resident shaders validate (with subgroup operations) and compile to
    /// SPIR-V, at a texel count that writes the lines out and one that loops.
    #[test]
    fn both_forms_of_the_resident_shaders_validate() {
        let shaders = [
            (crate::gpu::omp::SHADER, crate::gpu::omp::RESIDENT_SHADER),
            (
                crate::gpu::power::SHADER,
                crate::gpu::power::RESIDENT_SHADER,
            ),
        ];
        for (base, resident) in shaders {
            for count in [3, super::UNROLLED_TEXELS + 1] {
                // What the hosts define before the resident files, as their `// host:` lines
                // show (omp_resident.wgsl's factor).
                let host: String = resident
                    .lines()
                    .filter_map(|l| l.strip_prefix("// host: "))
                    .map(|l| format!("{l}\n"))
                    .collect();
                let source = format!("{host}{base}{}", super::texel_lines(resident, count));
                let module = naga::front::wgsl::parse_str(&source)
                    .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&source)));
                let mut validator = naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::all(),
                );
                validator
                    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                    .subgroup_operations(naga::valid::SubgroupOperationSet::all());
                let info = validator
                    .validate(&module)
                    .unwrap_or_else(|e| panic!("{count}: {}", e.emit_to_string(&source)));
                // What wgpu does with each entry point: overrides resolved, then SPIR-V (naga's
                // writer once failed on the looped form's pointers into private arrays).
                for entry in &module.entry_points {
                    let stage = Some((entry.stage, entry.name.as_str()));
                    let (module, info) = naga::back::pipeline_constants::process_overrides(
                        &module,
                        &info,
                        stage,
                        &Default::default(),
                    )
                    .unwrap_or_else(|e| panic!("{count} texels, {}: {e}", entry.name));
                    naga::back::spv::write_vec(
                        &module,
                        &info,
                        &naga::back::spv::Options::default(),
                        Some(&naga::back::spv::PipelineOptions {
                            shader_stage: entry.stage,
                            entry_point: entry.name.clone(),
                        }),
                    )
                    .unwrap_or_else(|e| panic!("{count} texels, {} to SPIR-V: {e}", entry.name));
                }
            }
        }
    }
}
