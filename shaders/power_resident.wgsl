// extends: power.wgsl
// host: const UT: u32 = 12u;
// (needs subgroup operations; the host defines UT per d, see below)
//
// Resident power iteration for CPU adapters: the work items of power_partial and power_project
// with the atom's iterate held in the private memory of one subgroup, each user's residual row
// read once; and power_reduce with one subgroup per atom (sums by subgroupAdd, where
// power_reduce's workgroup sums cost a barrier per round, on llvmpipe a coroutine switch per
// SIMD row), its textured variant writing the iterates' texture copy in place of a copy
// command per atom row.
//
// One workgroup of RWG invocations, exactly one subgroup, per work item. Invocation `lid` holds
// the texels c = t·RWG + lid (t < UT) of the iterate u (interleaved, so the subgroup's loads of a
// row fall on neighbouring texels). Per user the subgroup reads the user's residual row e_s
// once into the same texels, sums e_s·u with subgroupAdd, and (power_partial_resident) adds
// v·e_s into its share of the item's partial sum while e_s is still at hand.
//
// Against power_partial_vec4 / power_project_vec4 (one invocation per user, each reading the
// whole of e_s and of u): per user the partial reads e_s once instead of twice and u not at all
// (u is read once per item), the projection reads e_s only; on llvmpipe, where every texel fetch
// is a gather across the lanes, those fetches are the update's cost.
//
// UT, the most texels of a row one invocation holds (d ≤ 4·RWG·UT), is a `const` the host
// defines before power.wgsl for each d (a private array's size cannot be an override). Loops
// over the texels run to UT, so the compiler unrolls them and keeps the arrays out of memory
// where it can.

// Invocations per workgroup: the adapter's subgroup size (llvmpipe: 8).
override RWG: u32 = 8u;

// This invocation's texels of the iterate, of the current user's residual row, and of the
// item's partial sum.
var<private> res_u: array<vec4<f32>, UT>;
var<private> res_e: array<vec4<f32>, UT>;
var<private> res_acc: array<vec4<f32>, UT>;

// Loads this invocation's texels of u (d_j on iteration 0, else the iterate: u4_at) into res_u
// and returns d_j·u over the subgroup. `iterate_only`: u is the iterate whatever the iteration
// (the projection reads d_new).
fn res_load_u(lid: u32, row4: u32, iterate_only: bool) -> f32 {
    let d4 = params.d / 4u;
    var dot = vec4<f32>(0.0);
    for (var t = 0u; t < UT; t++) {
        let c = t * RWG + lid;
        var u = vec4<f32>(0.0);
        if c < d4 {
            if iterate_only {
                u = iterate_texel(row4 + c);
            } else {
                u = u4_at(row4 + c);
            }
            dot += atom_texel(row4 + c) * u;
        }
        res_u[t] = u;
    }
    return subgroupAdd(dot.x + dot.y + dot.z + dot.w);
}

// Reads sample s's residual row into res_e and returns e_s·u over the subgroup.
fn res_residual_dot_u(lid: u32, s: u32) -> f32 {
    let d4 = params.d / 4u;
    let e = s * d4;
    var dot = vec4<f32>(0.0);
    for (var t = 0u; t < UT; t++) {
        let c = t * RWG + lid;
        var v = vec4<f32>(0.0);
        if c < d4 {
            v = residual_texel(e + c);
        }
        res_e[t] = v;
        dot += v * res_u[t];
    }
    return subgroupAdd(dot.x + dot.y + dot.z + dot.w);
}

// power_partial's item: Σ_q v_q·e_s + (Σ_q v_q·x_s)·d_j with v_q = e_s·u + x_s·(d_j·u).
@compute @workgroup_size(RWG)
fn power_partial_resident(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let r = linear_group(wid, groups);
    if !item_in_window(r) {
        return;
    }
    let item = items[params.item_start + r];
    let row4 = atom_texels(item.x);
    let dju = res_load_u(lid, row4, false);
    for (var t = 0u; t < UT; t++) {
        res_acc[t] = vec4<f32>(0.0);
    }
    var vx = 0.0;
    for (var q = item.y; q < item.z; q++) {
        let user = users[q];
        let x = values[user.y];
        let v = res_residual_dot_u(lid, user.x) + x * dju;
        vx += v * x;
        for (var t = 0u; t < UT; t++) {
            res_acc[t] += v * res_e[t];
        }
    }
    let d4 = params.d / 4u;
    for (var t = 0u; t < UT; t++) {
        let c = t * RWG + lid;
        if c < d4 {
            partials4[r * d4 + c] = res_acc[t] + vx * atom_texel(row4 + c);
        }
    }
}

// power_project's item: x_new = e_s·d_new + x_s·(d_j·d_new) for its users.
@compute @workgroup_size(RWG)
fn power_project_resident(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let r = linear_group(wid, groups);
    if !item_in_window(r) {
        return;
    }
    let item = items[params.item_start + r];
    let row4 = atom_texels(item.x);
    let dj_new = res_load_u(lid, row4, true);
    for (var q = item.y; q < item.z; q++) {
        let user = users[q];
        let x_new = res_residual_dot_u(lid, user.x) + values[user.y] * dj_new;
        if lid == 0u {
            slot_scratch[user.y].y = x_new;
        }
    }
}


// power_reduce's vec4 views, written by the resident reduce (an entry point binds either a
// matrix or its view, never both): the memory and the iterates, windowed as `atoms4`.
@group(0) @binding(24) var<storage, read_write> memory_rw4: array<vec4<f32>>;
@group(0) @binding(25) var<storage, read_write> iterate_rw4: array<vec4<f32>>;
// The iterates' texture copy (READ_TEXTURES), written by power_reduce_resident_textured in place
// of a copy of each reduced atom's row.
@group(0) @binding(26) var iterate_store: texture_storage_2d_array<rgba32float, write>;

// power_reduce for the atom at position start + a, its texels in res_u: u = Σ partials + γ·m_j,
// normalised, on the last iteration m_j stored and d_new settled (see power_reduce). Returns
// the atom, or 0xffffffff when there is none in this dispatch. Sums over the subgroup, so no
// barrier; each invocation writes only its own texels.
fn res_reduce(lid: u32, a: u32) -> u32 {
    if a >= params.len {
        return 0xffffffffu;
    }
    let position = params.start + a;
    let j = order[position];
    if !in_window(j) {
        return 0xffffffffu;
    }
    let d4 = params.d / 4u;
    let row4 = atom_texels(j);
    let view = atom_row(j) / 4u;
    if params.last == 2u {
        for (var t = 0u; t < UT; t++) {
            let c = t * RWG + lid;
            if c < d4 {
                res_u[t] = atom_texel(row4 + c);
                iterate_rw4[view + c] = res_u[t];
            }
        }
        return j;
    }
    let span = atom_items[position];
    let first = span.x - params.item_start;
    let last = params.last == 1u;
    var sq = 0.0;
    var facing = 0.0;
    for (var t = 0u; t < UT; t++) {
        let c = t * RWG + lid;
        var acc = vec4<f32>(0.0);
        if c < d4 {
            acc = params.decay * memory_rw4[view + c];
            for (var i = 0u; i < span.y; i++) {
                acc += partials4[(first + i) * d4 + c];
            }
            if last {
                memory_rw4[view + c] = acc;
            }
            facing += dot(acc, atom_texel(row4 + c));
        }
        res_u[t] = acc;
        sq += dot(acc, acc);
    }
    let norm = sqrt(subgroupAdd(sq));
    var scale = 0.0;
    if norm > 0.0 {
        scale = 1.0 / norm;
    }
    if last && subgroupAdd(facing) < 0.0 {
        scale = -scale;
    }
    for (var t = 0u; t < UT; t++) {
        let c = t * RWG + lid;
        if c < d4 {
            if last && norm == 0.0 {
                res_u[t] = atom_texel(row4 + c);
            } else if norm > 0.0 {
                res_u[t] *= scale;
            }
            iterate_rw4[view + c] = res_u[t];
        }
    }
    return j;
}

@compute @workgroup_size(RWG)
fn power_reduce_resident(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    res_reduce(lid, linear_group(wid, groups));
}

// power_reduce_resident that also writes the atom's texels of d_new (or of the iterate) into the
// iterates' texture copy, at the flat places flat_texel reads.
@compute @workgroup_size(RWG)
fn power_reduce_resident_textured(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let j = res_reduce(lid, linear_group(wid, groups));
    if j == 0xffffffffu {
        return;
    }
    let d4 = params.d / 4u;
    let mask = (1u << params.atom_shift) - 1u;
    for (var t = 0u; t < UT; t++) {
        let f = j * d4 + t * RWG + lid;
        if t * RWG + lid < d4 {
            let row = f >> 6u;
            textureStore(iterate_store, vec2<u32>(f & 63u, row & mask), row >> params.atom_shift,
                res_u[t]);
        }
    }
}
