//! Every WGSL file under `shaders/` parses and validates with naga (no GPU needed).
//!
//! The folder is listed, so a new shader is covered without touching this test.

use std::path::Path;

/// `source` with each code line that names `$t` written twice, for t = 0 and 1, as the host
/// writes it once per texel (`texel_lines` in src/gpu/layout.rs).
fn unrolled(source: &str) -> String {
    let mut out = String::new();
    for line in source.lines() {
        let repeat = line.contains("$t") && !line.trim_start().starts_with("//");
        for t in 0..if repeat { 2 } else { 1 } {
            out += &line.replace("$t", &t.to_string());
            out.push('\n');
        }
    }
    out
}

#[test]
fn every_shader_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let mut source = std::fs::read_to_string(&path).expect("readable shader");
        // A shader that names a helper file in its first line is compiled after it, as the host
        // module's `concat!` does (shaders/include/).
        if let Some(helper) = source
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("// include: "))
        {
            let helper = std::fs::read_to_string(dir.join("include").join(helper.trim()))
                .expect("the included helper file exists");
            source = helper + &source;
        }
        // A shader that extends another family's file (`// extends: omp.wgsl`) is compiled
        // after it and after what its `// host: ` line says the host defines, with subgroup
        // operations (the host builds it only where the device offers them).
        let mut subgroups = false;
        if let Some(base) = source
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("// extends: "))
        {
            let mut base =
                std::fs::read_to_string(dir.join(base.trim())).expect("the extended shader exists");
            // ... with its own helper file, as above.
            if let Some(helper) = base
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("// include: "))
            {
                base = std::fs::read_to_string(dir.join("include").join(helper.trim()))
                    .expect("the included helper file exists")
                    + &base;
            }
            let host: String = source
                .lines()
                .filter_map(|l| l.strip_prefix("// host: "))
                .map(|l| format!("{l}\n"))
                .collect();
            source = host + &base + &unrolled(&source);
            subgroups = true;
        }
        let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
            panic!("{}:\n{}", path.display(), e.emit_to_string(&source));
        });
        // What every WebGPU device supports, no native extras: naga's defaults plus the f16
        // packing builtins (core WGSL; only downlevel GL lacks them, a backend dbksvd does not use).
        let mut capabilities = naga::valid::Capabilities::default()
            | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        if subgroups {
            capabilities |= naga::valid::Capabilities::SUBGROUP;
        }
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities);
        if subgroups {
            validator
                .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all());
        }
        let info = validator.validate(&module).unwrap_or_else(|e| {
            panic!("{}:\n{}", path.display(), e.emit_to_string(&source));
        });
        // Specialise each entry point with the overrides' defaults (what a pipeline does) and
        // emit SPIR-V: override-sized workgroup arrays and derived overrides must resolve.
        for entry in &module.entry_points {
            let stage = (entry.stage, entry.name.as_str());
            let (specialised, specialised_info) =
                naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some(stage),
                    &Default::default(),
                )
                .unwrap_or_else(|e| panic!("{} `{}`: {e}", path.display(), entry.name));
            naga::back::spv::write_vec(
                &specialised,
                &specialised_info,
                &naga::back::spv::Options::default(),
                Some(&naga::back::spv::PipelineOptions {
                    shader_stage: entry.stage,
                    entry_point: entry.name.clone(),
                }),
            )
            .unwrap_or_else(|e| panic!("{} `{}` to SPIR-V: {e}", path.display(), entry.name));
        }
        assert!(
            module
                .entry_points
                .iter()
                .any(|e| e.stage == naga::ShaderStage::Compute),
            "{} has no compute entry point",
            path.display()
        );
        checked.push(path);
    }
    // The folder holds at least these families; an empty listing would make this test vacuous.
    for family in [
        "gemm.wgsl",
        "omp.wgsl",
        "sparse.wgsl",
        "power.wgsl",
        "reduce.wgsl",
    ] {
        assert!(
            checked.iter().any(|p| p.ends_with(family)),
            "{family} not found in {}",
            dir.display()
        );
    }
}
