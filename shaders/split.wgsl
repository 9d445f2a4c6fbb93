// include: workgroup.wgsl
// Splitting atoms, the trainer's epoch-end re-seeding (LBG's codeword split; twin:
// src/reference/split.rs). For a candidate atom a with users s (coefficient x_s, residual row
// e_s of E = Y − X·D): r = the top principal direction of the e_s (power iteration from the most
// energetic one), then two unit halves, the means of sign(x_s)·(x_s·a + e_s) over the users with
// (e_s·r)·x_s > 0 and over the rest.
//
//   split_load        Σ ‖e_s‖² over a slice of an atom's users, one invocation per (atom, slice)
//   split_start       r ← the unit residual row of the candidate's most energetic user; the
//                     candidate is dropped where that row is zero. One workgroup per candidate
//   split_project     t_u ← e_s·r per user, one invocation per user of every candidate
//   split_accumulate  Σ t_u·e_s over one chunk of a candidate's users, one invocation per
//                     (chunk, dimension)
//   split_normalise   r ← the sum over the candidate's chunks, normalised (kept where zero);
//                     one workgroup per candidate
//   split_halves      the two sides' sums and user counts over one chunk, one invocation per
//                     (chunk, dimension)
//   split_finish      the halves normalised, and whether the split holds (both sides used,
//                     both sums non-zero); one workgroup per candidate
//
// A candidate's users are cut into chunks of a bounded size (the host's CHUNK) so that no
// invocation loops past a driver's cap however many users an atom has; the per-candidate
// kernels then sum over the chunks.

struct Params {
    d: u32,
    n_atoms: u32,
    // Candidates of this round, chunks of their users, and users in all.
    n_cands: u32,
    n_chunks: u32,
    n_users: u32,
    // split_load: users per slice, and slices per atom.
    chunk: u32,
    slices: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// [n, d] the batch's residual.
@group(0) @binding(1) var<storage, read> residual: array<f32>;
// [n] ‖e_s‖² (reduce.wgsl's residual_norms).
@group(0) @binding(2) var<storage, read> energy: array<f32>;
// Per-atom user lists (sparse.wgsl's transpose): (sample, flat slot) pairs, grouped by atom.
@group(0) @binding(3) var<storage, read> users: array<u32>;
// [n·k] coefficients by flat slot.
@group(0) @binding(4) var<storage, read> values: array<f32>;
// Candidate c: (first user pair, users, first chunk, chunks); then chunk m at n_cands + m:
// (candidate, first user pair, users, first projection).
@group(0) @binding(5) var<storage, read> plan: array<vec4<u32>>;
// [C, d] the atoms to split, copied from the dictionary.
@group(0) @binding(6) var<storage, read> sources: array<f32>;
// [C, d] r per candidate.
@group(0) @binding(7) var<storage, read_write> dir: array<f32>;
// [users] e_s·r, in chunk order.
@group(0) @binding(8) var<storage, read_write> proj: array<f32>;
// [n_chunks, 2, d] per chunk: Σ t·e (first row) while iterating; the two sides' sums after.
@group(0) @binding(9) var<storage, read_write> partial: array<f32>;
// [C] 1 while the candidate's split holds; then [n_chunks, 2] each chunk's users per side.
@group(0) @binding(10) var<storage, read_write> tally: array<u32>;
// [C, 2, d] the two unit halves.
@group(0) @binding(11) var<storage, read_write> halves: array<f32>;
// [K + 1] start of each atom's users in `users`.
@group(0) @binding(12) var<storage, read> user_start: array<u32>;
// [K, slices] Σ ‖e_s‖² over each slice of each atom's users.
@group(0) @binding(13) var<storage, read_write> load: array<f32>;

// A norm that can divide: positive and finite.
fn usable(norm: f32) -> bool {
    return norm > 0.0 && norm <= 3.4028235e38;
}

fn global_id(lid: u32, wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return linear_group(wid, groups) * WG + lid;
}

// Σ over candidate `cand`'s chunks of row `side` of `partial`, at dimension i.
fn chunk_sum(cand: vec4<u32>, side: u32, i: u32) -> f32 {
    var sum = 0.0;
    for (var m = cand.z; m < cand.z + cand.w; m++) {
        sum += partial[(m * 2u + side) * params.d + i];
    }
    return sum;
}

@compute @workgroup_size(WG)
fn split_load(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let f = global_id(lid, wid, groups);
    if f >= params.n_atoms * params.slices {
        return;
    }
    let j = f / params.slices;
    let first = user_start[j] + (f % params.slices) * params.chunk;
    var sum = 0.0;
    for (var u = first; u < min(first + params.chunk, user_start[j + 1u]); u++) {
        sum += energy[users[2u * u]];
    }
    load[f] = sum;
}

@compute @workgroup_size(WG)
fn split_start(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let c = linear_group(wid, groups);
    if c >= params.n_cands {
        return;
    }
    let cand = plan[c];
    // The most energetic user; ties to the later one in the list (as the twin's max_by).
    var best = -1.0;
    var best_u = 0u;
    for (var u = lid; u < cand.y; u += WG) {
        let e = energy[users[2u * (cand.x + u)]];
        if e >= best {
            best = e;
            best_u = u;
        }
    }
    let s = users[2u * (cand.x + wg_argmax(lid, best, best_u, false).index)];
    var part = 0.0;
    for (var i = lid; i < params.d; i += WG) {
        let e = residual[s * params.d + i];
        part += e * e;
    }
    let norm = sqrt(wg_sum(lid, part));
    if usable(norm) {
        for (var i = lid; i < params.d; i += WG) {
            dir[c * params.d + i] = residual[s * params.d + i] / norm;
        }
    }
    if lid == 0u {
        tally[c] = select(0u, 1u, usable(norm));
    }
}

@compute @workgroup_size(WG)
fn split_project(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let g = global_id(lid, wid, groups);
    if g >= params.n_users {
        return;
    }
    // The chunk holding projection g: the last whose first projection is at most g.
    var lo = 0u;
    var hi = params.n_chunks;
    while hi - lo > 1u {
        let mid = (lo + hi) / 2u;
        if plan[params.n_cands + mid].w <= g {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let chunk = plan[params.n_cands + lo];
    let s = users[2u * (chunk.y + g - chunk.w)];
    var t = 0.0;
    for (var i = 0u; i < params.d; i++) {
        t += residual[s * params.d + i] * dir[chunk.x * params.d + i];
    }
    proj[g] = t;
}

@compute @workgroup_size(WG)
fn split_accumulate(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let f = global_id(lid, wid, groups);
    if f >= params.n_chunks * params.d {
        return;
    }
    let m = f / params.d;
    let i = f % params.d;
    let chunk = plan[params.n_cands + m];
    var w = 0.0;
    for (var u = 0u; u < chunk.z; u++) {
        let s = users[2u * (chunk.y + u)];
        w += proj[chunk.w + u] * residual[s * params.d + i];
    }
    partial[m * 2u * params.d + i] = w;
}

@compute @workgroup_size(WG)
fn split_normalise(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let c = linear_group(wid, groups);
    if c >= params.n_cands {
        return;
    }
    let cand = plan[c];
    var part = 0.0;
    for (var i = lid; i < params.d; i += WG) {
        let w = chunk_sum(cand, 0u, i);
        part += w * w;
    }
    let norm = sqrt(wg_sum(lid, part));
    // A zero product leaves r where it is (the twin stops iterating).
    if usable(norm) {
        for (var i = lid; i < params.d; i += WG) {
            dir[c * params.d + i] = chunk_sum(cand, 0u, i) / norm;
        }
    }
}

@compute @workgroup_size(WG)
fn split_halves(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let f = global_id(lid, wid, groups);
    if f >= params.n_chunks * params.d {
        return;
    }
    let m = f / params.d;
    let i = f % params.d;
    let chunk = plan[params.n_cands + m];
    let a = sources[chunk.x * params.d + i];
    var plus = 0.0;
    var minus = 0.0;
    var n_plus = 0u;
    var n_minus = 0u;
    for (var u = 0u; u < chunk.z; u++) {
        let pair = 2u * (chunk.y + u);
        let s = users[pair];
        let x = values[users[pair + 1u]];
        // The E_Ω row x·a + e, sign-aligned with the coefficient.
        let v = select(-1.0, 1.0, x >= 0.0) * (x * a + residual[s * params.d + i]);
        if proj[chunk.w + u] * x > 0.0 {
            plus += v;
            n_plus++;
        } else {
            minus += v;
            n_minus++;
        }
    }
    partial[m * 2u * params.d + i] = plus;
    partial[(m * 2u + 1u) * params.d + i] = minus;
    if i == 0u {
        tally[params.n_cands + 2u * m] = n_plus;
        tally[params.n_cands + 2u * m + 1u] = n_minus;
    }
}

@compute @workgroup_size(WG)
fn split_finish(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let c = linear_group(wid, groups);
    if c >= params.n_cands {
        return;
    }
    let cand = plan[c];
    let started = tally[c] != 0u;
    var n_plus = 0u;
    var n_minus = 0u;
    for (var m = cand.z; m < cand.z + cand.w; m++) {
        n_plus += tally[params.n_cands + 2u * m];
        n_minus += tally[params.n_cands + 2u * m + 1u];
    }
    var part_plus = 0.0;
    var part_minus = 0.0;
    for (var i = lid; i < params.d; i += WG) {
        let p = chunk_sum(cand, 0u, i);
        let q = chunk_sum(cand, 1u, i);
        part_plus += p * p;
        part_minus += q * q;
    }
    let norm_plus = sqrt(wg_sum(lid, part_plus));
    let norm_minus = sqrt(wg_sum(lid, part_minus));
    let holds = started && n_plus > 0u && n_minus > 0u && usable(norm_plus)
        && usable(norm_minus);
    if holds {
        for (var i = lid; i < params.d; i += WG) {
            halves[c * 2u * params.d + i] = chunk_sum(cand, 0u, i) / norm_plus;
            halves[(c * 2u + 1u) * params.d + i] = chunk_sum(cand, 1u, i) / norm_minus;
        }
    }
    // Every invocation has read tally[c] above.
    storageBarrier();
    if lid == 0u {
        tally[c] = select(0u, 1u, holds);
    }
}
