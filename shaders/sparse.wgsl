// include: workgroup.wgsl
// Kernels on fixed-width sparse codes (k slots per sample: atom index, −1 when empty, and value).
//
//   residual        E = Y − X·D, over the atoms of one window of rows of D (all of them when the
//                   dictionary fits one binding); later windows subtract from E.
//                   residual_from_codes_vec4 does the same four dimensions per invocation when
//                   d is a multiple of 4 (a quarter of the index, value and atom loads, which
//                   llvmpipe issues one SIMD lane at a time); residual_from_codes_texels, for
//                   CPU adapters, four texels per invocation with the atoms read from a texture
//                   copy (a texel fetch instead of a storage load, and a quarter of the index and
//                   value loads again), the indices and values from flat copies too
//   chunk_counts    per chunk of samples, how many slots name each atom
//   chunk_offsets   per atom, exclusive prefix of its counts over chunks, and its total
//   atom_offsets    exclusive prefix of the totals over atoms: user_start[0..=K]
//   scatter         per chunk, its samples in ascending order into each atom's user list
//   unpack_codes    the sparse coder's output words into indices and values, plus per-sample
//                   metrics (residual energy, L0), so codes never leave the device in training
//
// The transpose is a counting sort whose scatter runs chunk by chunk, each chunk walking its
// samples in order with one invocation: every list comes out in ascending sample order and the
// result does not depend on scheduling. No atomics.

struct Params {
    n: u32,
    k: u32,
    d: u32,
    n_atoms: u32,
    // Samples per chunk, and chunks.
    chunk: u32,
    n_chunks: u32,
    // residual: the atom rows bound at `atoms` (atom_first .. atom_end, row atom_first at element
    // atom_lead), and 1 when E already holds the earlier windows' part.
    atom_first: u32,
    atom_end: u32,
    atom_lead: u32,
    from_residual: u32,
    // residual_from_codes_texels: layer shifts of the atoms' flat texture and of the codes'.
    atom_shift: u32,
    code_shift: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> indices: array<i32>;
@group(0) @binding(2) var<storage, read> values: array<f32>;
@group(0) @binding(3) var<storage, read> samples: array<f32>;
@group(0) @binding(4) var<storage, read> atoms: array<f32>;
@group(0) @binding(5) var<storage, read_write> residual: array<f32>;
// [n_chunks, K] counts, then per-chunk write cursors.
@group(0) @binding(6) var<storage, read_write> counts: array<u32>;
// [K + 1]: users of atom j are users[user_start[j] .. user_start[j + 1]].
@group(0) @binding(7) var<storage, read_write> user_start: array<u32>;
// (sample, flat slot s·k + t) of every used slot, grouped by atom.
@group(0) @binding(8) var<storage, read_write> users: array<vec2<u32>>;

// unpack_codes: [n, 2k + 1] words per sample from omp.wgsl (k indices, k value bits, residual
// energy bits) in; indices and values out, and [n, 2] (residual energy, L0) per sample.
@group(0) @binding(9) var<storage, read> code_words: array<u32>;
@group(0) @binding(10) var<storage, read_write> out_indices: array<i32>;
@group(0) @binding(11) var<storage, read_write> out_values: array<f32>;
@group(0) @binding(12) var<storage, read_write> row_stats: array<f32>;

// vec4 views of samples, atoms and residual for residual_from_codes_vec4 (d % 4 = 0 and
// atom_lead % 4 = 0).
@group(0) @binding(13) var<storage, read> samples4: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read> atoms4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> residual4: array<vec4<f32>>;
// residual_from_codes_texels: a flat copy of all K atoms (see flat_texel).
@group(0) @binding(16) var atoms_tex: texture_storage_2d_array<rgba32float, read>;
// residual_from_codes_texels: flat copies of the indices and values, four slots per texel. Every
// invocation of a sample reads each of its slots: from storage, on llvmpipe, a loop over the
// SIMD lanes that puts each lane's value into the result through the stack (a store-forwarding
// stall per lane); a texel fetch is an unrolled gather.
@group(0) @binding(17) var index_tex: texture_storage_2d_array<rgba32sint, read>;
@group(0) @binding(18) var value_tex: texture_storage_2d_array<rgba32float, read>;

// Where flat slot f lies in the codes' textures (four slots per texel).
fn code_place(f: u32) -> vec3<u32> {
    return flat_place(f >> 2u, params.code_shift);
}

// The atom index of flat slot f, from index_tex.
fn index_texel(f: u32) -> i32 {
    let at = code_place(f);
    return textureLoad(index_tex, at.xy, at.z)[f & 3u];
}

// The value of flat slot f, from value_tex.
fn value_texel(f: u32) -> f32 {
    let at = code_place(f);
    return textureLoad(value_tex, at.xy, at.z)[f & 3u];
}

// Global index of invocation `lid` of a 1-D grid of workgroups.
fn linear_id(wid: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return linear_group(wid, groups) * WG + lid;
}

@compute @workgroup_size(WG)
fn residual_from_codes(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let g = linear_id(wid, groups, lid);
    if g >= params.n * params.d {
        return;
    }
    let s = g / params.d;
    let c = g % params.d;
    var e: f32;
    if params.from_residual == 1u {
        e = residual[g];
    } else {
        e = samples[g];
    }
    for (var t = 0u; t < params.k; t++) {
        let j = indices[s * params.k + t];
        if j >= 0 && u32(j) >= params.atom_first && u32(j) < params.atom_end {
            let row = (u32(j) - params.atom_first) * params.d + params.atom_lead;
            e -= values[s * params.k + t] * atoms[row + c];
        }
    }
    residual[g] = e;
}

@compute @workgroup_size(WG)
fn residual_from_codes_vec4(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let d4 = params.d / 4u;
    let g = linear_id(wid, groups, lid);
    if g >= params.n * d4 {
        return;
    }
    let s = g / d4;
    let t = g % d4;
    var e: vec4<f32>;
    if params.from_residual == 1u {
        e = residual4[g];
    } else {
        e = samples4[g];
    }
    for (var i = 0u; i < params.k; i++) {
        let j = indices[s * params.k + i];
        if j >= 0 && u32(j) >= params.atom_first && u32(j) < params.atom_end {
            let row4 = ((u32(j) - params.atom_first) * params.d + params.atom_lead) / 4u;
            e -= values[s * params.k + i] * atoms4[row4 + t];
        }
    }
    residual4[g] = e;
}

// Texels per invocation of residual_from_codes_texels.
const RESIDUAL_TEXELS: u32 = 4u;

@compute @workgroup_size(WG)
fn residual_from_codes_texels(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let d4 = params.d / 4u;
    let lanes = (d4 + RESIDUAL_TEXELS - 1u) / RESIDUAL_TEXELS;
    let g = linear_id(wid, groups, lid);
    if g >= params.n * lanes {
        return;
    }
    let s = g / lanes;
    let t0 = (g % lanes) * RESIDUAL_TEXELS;
    // Texels past the row are clamped to its last (computed, not stored).
    let t = min(vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(d4 - 1u));
    let e = s * d4;
    var e0: vec4<f32>;
    var e1: vec4<f32>;
    var e2: vec4<f32>;
    var e3: vec4<f32>;
    if params.from_residual == 1u {
        e0 = residual4[e + t.x];
        e1 = residual4[e + t.y];
        e2 = residual4[e + t.z];
        e3 = residual4[e + t.w];
    } else {
        e0 = samples4[e + t.x];
        e1 = samples4[e + t.y];
        e2 = samples4[e + t.z];
        e3 = samples4[e + t.w];
    }
    for (var i = 0u; i < params.k; i++) {
        let j = index_texel(s * params.k + i);
        if j >= 0 && u32(j) >= params.atom_first && u32(j) < params.atom_end {
            let x = value_texel(s * params.k + i);
            let row = u32(j) * d4;
            e0 -= x * flat_texel(atoms_tex, row + t.x, params.atom_shift);
            e1 -= x * flat_texel(atoms_tex, row + t.y, params.atom_shift);
            e2 -= x * flat_texel(atoms_tex, row + t.z, params.atom_shift);
            e3 -= x * flat_texel(atoms_tex, row + t.w, params.atom_shift);
        }
    }
    residual4[e + t.x] = e0;
    if t0 + 1u < d4 {
        residual4[e + t.y] = e1;
    }
    if t0 + 2u < d4 {
        residual4[e + t.z] = e2;
    }
    if t0 + 3u < d4 {
        residual4[e + t.w] = e3;
    }
}

// First and one-past-last sample of a chunk.
fn chunk_samples(chunk: u32) -> vec2<u32> {
    return vec2<u32>(chunk * params.chunk, min((chunk + 1u) * params.chunk, params.n));
}

@compute @workgroup_size(WG)
fn chunk_counts(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let chunk = linear_id(wid, groups, lid);
    if chunk >= params.n_chunks {
        return;
    }
    let row = chunk * params.n_atoms;
    let samples_of = chunk_samples(chunk);
    for (var s = samples_of.x; s < samples_of.y; s++) {
        for (var t = 0u; t < params.k; t++) {
            let j = indices[s * params.k + t];
            if j >= 0 && u32(j) < params.n_atoms {
                counts[row + u32(j)] += 1u;
            }
        }
    }
}

@compute @workgroup_size(WG)
fn chunk_offsets(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let j = linear_id(wid, groups, lid);
    if j >= params.n_atoms {
        return;
    }
    var running = 0u;
    for (var c = 0u; c < params.n_chunks; c++) {
        let idx = c * params.n_atoms + j;
        let count = counts[idx];
        counts[idx] = running;
        running += count;
    }
    user_start[j] = running;
}

// One invocation: K additions are cheap next to everything around them.
@compute @workgroup_size(1)
fn atom_offsets() {
    var running = 0u;
    for (var j = 0u; j < params.n_atoms; j++) {
        let total = user_start[j];
        user_start[j] = running;
        running += total;
    }
    user_start[params.n_atoms] = running;
}

@compute @workgroup_size(WG)
fn scatter(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let chunk = linear_id(wid, groups, lid);
    if chunk >= params.n_chunks {
        return;
    }
    let row = chunk * params.n_atoms;
    let samples_of = chunk_samples(chunk);
    for (var s = samples_of.x; s < samples_of.y; s++) {
        for (var t = 0u; t < params.k; t++) {
            let j = indices[s * params.k + t];
            if j >= 0 && u32(j) < params.n_atoms {
                let cursor = row + u32(j);
                users[user_start[u32(j)] + counts[cursor]] = vec2<u32>(s, s * params.k + t);
                counts[cursor] += 1u;
            }
        }
    }
}

// One invocation per sample: k slots each, far below any loop cap for the k a coder accepts.
@compute @workgroup_size(WG)
fn unpack_codes(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let s = linear_id(wid, groups, lid);
    if s >= params.n {
        return;
    }
    let k = params.k;
    let base = s * (2u * k + 1u);
    var l0 = 0u;
    for (var t = 0u; t < k; t++) {
        let j = bitcast<i32>(code_words[base + t]);
        out_indices[s * k + t] = j;
        out_values[s * k + t] = bitcast<f32>(code_words[base + k + t]);
        if j >= 0 {
            l0 += 1u;
        }
    }
    row_stats[2u * s] = bitcast<f32>(code_words[base + 2u * k]);
    row_stats[2u * s + 1u] = f32(l0);
}
