// KSVD dictionary update by atom-wise power iteration, for one batch of atoms.
//
//   power_start, power_steps, power_finish
//           one workgroup per atom j of the batch: with users ω (from sparse.wgsl's transpose)
//           and E_Ω = E[ω] + x_j[ω]·d_j, run p power iterations u ← E_Ωᵀ·E_Ω·u from u = d_j
//           without forming E_Ω: v_s = e_s·u + x_s·(d_j·u), u = Σ_s v_s·(e_s + x_s·d_j). Then
//           d_new = u/‖u‖ with d_new·d_j ≥ 0 (d_j kept when ‖u‖ = 0), and for each user
//           x_new[s] = e_s·d_new + x_s·(d_j·d_new), all from the residual before this batch.
//           The iterations may span several power_steps dispatches (state in `iterate`).
//           With the atom memory m_j (params.decay = γ > 0) each step is u ← E_ΩᵀE_Ω·u + γ·m_j,
//           and the last one stores its unnormalised u as the new m_j: the atom then follows
//           the users of about 1/(1 − γ) batches instead of this batch's few.
//   fold    one workgroup per sample: E_s += x_s·d_j − x_new[s]·d_new for each of its slots whose
//           atom is in the batch. A sample is folded by its own workgroup only: no float atomics.
//   fold_rows  the same with one invocation per sample and chunk of dims_per_fold dimensions, for
//           CPU adapters (llvmpipe): there every invocation's memory access is a scalar loop over
//           its SIMD lanes, so `fold`'s WG invocations each rescanning a sample's k slots cost
//           more than the fold itself (4.7 of 6.3 s of an update at K = 512, k = 16, B = 4096).
//   commit  one workgroup per atom of the batch: D[j] = d_new, x[ω] = x_new.
//
// All atoms of a batch see the same residual (Jacobi); batches run one after another.

struct Params {
    // The batch is order[start .. start + len].
    start: u32,
    len: u32,
    d: u32,
    k: u32,
    n: u32,
    n_atoms: u32,
    iterations: u32,
    // 1 on the dispatch holding an atom batch's last power iteration: it stores the memory.
    last: u32,
    // γ: weight of the memory (the earlier batches' E_ΩᵀE_Ω·u products) in each step.
    decay: f32,
    // fold_rows: dimensions per invocation (bounded by the driver's loop cap).
    dims_per_fold: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// Atom visiting order, and each atom's position in it.
@group(0) @binding(1) var<storage, read> order: array<u32>;
@group(0) @binding(2) var<storage, read> rank: array<u32>;
@group(0) @binding(3) var<storage, read_write> atoms: array<f32>;
@group(0) @binding(4) var<storage, read_write> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> values: array<f32>;
@group(0) @binding(6) var<storage, read> indices: array<i32>;
@group(0) @binding(7) var<storage, read> user_start: array<u32>;
@group(0) @binding(8) var<storage, read> users: array<vec2<u32>>;
// [K, d]: the power iterate of each atom, then its new value.
@group(0) @binding(9) var<storage, read_write> iterate: array<f32>;
// Per flat slot: (v_s of the current iteration, x_new).
@group(0) @binding(10) var<storage, read_write> slot_scratch: array<vec2<f32>>;
// [K, d]: per atom, the decayed sum of its earlier batches' products E_ΩᵀE_Ω·d_j (unnormalised).
@group(0) @binding(11) var<storage, read_write> memory: array<f32>;

override WG: u32 = 64u;

var<workgroup> red: array<f32, WG>;

fn wg_sum(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            red[lid] += red[lid + half];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn batch_atom(wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wid.y * groups.x + wid.x;
}

// d_j·iterate_j over this invocation's dimensions, summed over the workgroup.
fn dot_atom_iterate(lid: u32, row: u32) -> f32 {
    var part = 0.0;
    for (var c = lid; c < params.d; c += WG) {
        part += atoms[row + c] * iterate[row + c];
    }
    return wg_sum(lid, part);
}

// (e_s + x_s·d_j)·u for a user (sample, slot) of atom `row / d`, given d_j·u: the row of E_Ω
// times the iterate, without forming E_Ω.
fn project_user(user: vec2<u32>, row: u32, dj_u: f32) -> f32 {
    let e = user.x * params.d;
    var v = values[user.y] * dj_u;
    for (var c = 0u; c < params.d; c++) {
        v += residual[e + c] * iterate[row + c];
    }
    return v;
}

// The batch atom this workgroup serves: (atom, its row in D and in `iterate`, first and
// one-past-last user).
fn atom_of(a: u32) -> vec4<u32> {
    let j = order[params.start + a];
    return vec4<u32>(j, j * params.d, user_start[j], user_start[j + 1u]);
}

// u = d_j: the warm start.
@compute @workgroup_size(WG)
fn power_start(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let a = batch_atom(wid, groups);
    if a >= params.len {
        return;
    }
    let row = order[params.start + a] * params.d;
    for (var c = lid; c < params.d; c += WG) {
        iterate[row + c] = atoms[row + c];
    }
}

// `params.iterations` power iterations continuing from `iterate`. The host splits p iterations
// over several dispatches where the driver caps loop iterations per invocation.
@compute @workgroup_size(WG)
fn power_steps(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let a = batch_atom(wid, groups);
    if a >= params.len {
        return;
    }
    let at = atom_of(a);
    let row = at.y;
    let first = at.z;
    let last = at.w;
    let d = params.d;

    for (var it = 0u; it < params.iterations; it++) {
        let dju = dot_atom_iterate(lid, row);
        // v_s = e_s·u + x_s·(d_j·u), one user per invocation.
        for (var q = first + lid; q < last; q += WG) {
            let user = users[q];
            slot_scratch[user.y].x = project_user(user, row, dju);
        }
        storageBarrier();
        // u = Σ_s v_s·(e_s + x_s·d_j), one dimension per invocation.
        var sq = 0.0;
        for (var c = lid; c < d; c += WG) {
            let dc = atoms[row + c];
            var acc = 0.0;
            for (var q = first; q < last; q++) {
                let user = users[q];
                acc += slot_scratch[user.y].x * (residual[user.x * d + c] + values[user.y] * dc);
            }
            acc += params.decay * memory[row + c];
            if params.last == 1u && it + 1u == params.iterations {
                memory[row + c] = acc;
            }
            iterate[row + c] = acc;
            sq += acc * acc;
        }
        let norm = sqrt(wg_sum(lid, sq));
        // A zero iterate (no users, E_Ω = 0) stays zero; power_finish then keeps d_j.
        if norm > 0.0 {
            for (var c = lid; c < d; c += WG) {
                iterate[row + c] /= norm;
            }
        }
        storageBarrier();
    }
}

// d_new = u with the sign facing d_j (d_j itself when u = 0), then for each user
// x_new[s] = e_s·d_new + x_s·(d_j·d_new), from the residual before this batch.
@compute @workgroup_size(WG)
fn power_finish(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let a = batch_atom(wid, groups);
    if a >= params.len {
        return;
    }
    let at = atom_of(a);
    let row = at.y;
    let d = params.d;
    var sq = 0.0;
    for (var c = lid; c < d; c += WG) {
        sq += iterate[row + c] * iterate[row + c];
    }
    let keep = !(wg_sum(lid, sq) > 0.0);
    let facing = dot_atom_iterate(lid, row);
    for (var c = lid; c < d; c += WG) {
        if keep {
            iterate[row + c] = atoms[row + c];
        } else if facing < 0.0 {
            iterate[row + c] = -iterate[row + c];
        }
    }
    storageBarrier();

    let dj_new = dot_atom_iterate(lid, row);
    for (var q = at.z + lid; q < at.w; q += WG) {
        let user = users[q];
        slot_scratch[user.y].y = project_user(user, row, dj_new);
    }
}

fn in_batch(j: u32) -> bool {
    let r = rank[j];
    return r >= params.start && r < params.start + params.len;
}

// E_s[c] += x_s·d_j[c] − x_new[s]·d_new[c] for c = first, first + step, … < end, over the slots of
// sample s whose atom is in the batch (fold and fold_rows differ only in how they split c).
fn fold_dims(s: u32, first: u32, end: u32, step: u32) {
    let e = s * params.d;
    for (var t = 0u; t < params.k; t++) {
        let slot = s * params.k + t;
        let jj = indices[slot];
        if jj < 0 || u32(jj) >= params.n_atoms {
            continue;
        }
        let j = u32(jj);
        if !in_batch(j) {
            continue;
        }
        let x_old = values[slot];
        let x_new = slot_scratch[slot].y;
        let row = j * params.d;
        for (var c = first; c < end; c += step) {
            residual[e + c] += x_old * atoms[row + c] - x_new * iterate[row + c];
        }
    }
}

@compute @workgroup_size(WG)
fn fold(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let s = batch_atom(wid, groups);
    if s >= params.n {
        return;
    }
    fold_dims(s, lid, params.d, WG);
}

@compute @workgroup_size(64)
fn fold_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x;
    if s >= params.n {
        return;
    }
    let c0 = gid.y * params.dims_per_fold;
    fold_dims(s, c0, min(c0 + params.dims_per_fold, params.d), 1u);
}

@compute @workgroup_size(WG)
fn commit(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let a = batch_atom(wid, groups);
    if a >= params.len {
        return;
    }
    let j = order[params.start + a];
    let row = j * params.d;
    for (var c = lid; c < params.d; c += WG) {
        atoms[row + c] = iterate[row + c];
    }
    for (var q = user_start[j] + lid; q < user_start[j + 1u]; q += WG) {
        let slot = users[q].y;
        values[slot] = slot_scratch[slot].y;
    }
}
