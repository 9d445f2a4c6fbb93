// include: workgroup.wgsl
// KSVD dictionary update by atom-wise power iteration, for one batch of atoms.
//
// For atom j with users ω (from sparse.wgsl's transpose) and E_Ω = E[ω] + x_j[ω]·d_j, p power
// iterations u ← E_Ωᵀ·E_Ω·u from u = d_j, without forming E_Ω:
//   v_s = e_s·u + x_s·(d_j·u),   u = Σ_s v_s·e_s + (Σ_s v_s·x_s)·d_j.
// Then d_new = u/‖u‖ with d_new·d_j ≥ 0 (d_j kept when ‖u‖ = 0), and for each user
// x_new[s] = e_s·d_new + x_s·(d_j·d_new), all from the residual before this batch.
// With the atom memory m_j (params.decay = γ > 0) each step is u ← E_ΩᵀE_Ω·u + γ·m_j, and the
// last one stores its unnormalised u as the new m_j: the atom then follows the users of about
// 1/(1 − γ) batches instead of this batch's few.
//
// An atom's users are cut into work items of at most a few thousand (the host sizes them under
// the driver's loop cap), so an atom may have any number of users and heavy atoms spread over
// many workgroups:
//   power_partial  one workgroup per item: its users' share of E_ΩᵀE_Ω·u, into `partials`.
//   power_reduce   one workgroup per atom: u = Σ partials + γ·m_j, normalised; on the last
//                  iteration the sign (or d_j) is settled and `iterate` holds d_new.
//   power_project  one workgroup per item: x_new of its users.
//   fold           one workgroup per sample: E_s += x_s·d_j − x_new[s]·d_new for each of its
//                  slots whose atom is in the batch. A sample is folded by its own workgroup
//                  only: no float atomics.
//   fold_rows      the same with one invocation per sample and chunk of dims_per_fold
//                  dimensions, for CPU adapters (llvmpipe): there every invocation's memory
//                  access is a scalar loop over its SIMD lanes, so `fold`'s WG invocations each
//                  rescanning a sample's k slots cost more than the fold itself.
//   commit         one workgroup per atom: D[j] = d_new, x[ω] = x_new, once for every atom after
//                  the last batch (a batch reads only its own atoms' rows and slots).
//
// When d is a multiple of 4 (every transformer width), power_partial_vec4, power_project_vec4,
// fold_vec4 and fold_rows_vec4 do the same reading the [·, d] matrices four floats at a time
// through vec4 views of the same buffers (bindings 15–18): on llvmpipe each storage access is
// a scalar load per SIMD lane, so this cuts the update's loads about fourfold; on a GPU each
// invocation reads 16 contiguous bytes. Compiled with READ_TEXTURES (CPU adapters), the same
// entry points read the residual, the atoms and the iterates from texture copies instead
// (bindings 19–21, refreshed by the host after every write): llvmpipe's texel fetch is an
// unrolled gather, 3–10× faster than its lane-by-lane storage loads. The fold still writes
// the residual buffer, which stays the truth (it reads the copy for a sample's first slot of
// the batch). The vec4 folds find a sample's slots of the batch in slot_order (written once per
// update by order_slots) instead of scanning all k.
//
// On CPU adapters with subgroup operations, power_resident.wgsl's kernels take the work items of
// power_partial_vec4 and power_project_vec4 (the atom's iterate held in one subgroup's
// registers, each user's residual row read once) and power_reduce's atoms (one subgroup each).
//
// All atoms of a batch see the same residual (Jacobi); batches run one after another.
//
// The [K, d] matrices (atoms, iterate, memory) are bound as one window of whole atom rows,
// atoms atom_first .. atom_end (the whole dictionary when it fits one binding): a dictionary
// larger than a binding is updated by the same dispatches once per window, each skipping the
// atoms outside its window.

struct Params {
    // The atoms are order[start .. start + len] (power_reduce: this wave's; fold: the whole
    // batch's; commit: all K).
    start: u32,
    len: u32,
    d: u32,
    k: u32,
    n: u32,
    n_atoms: u32,
    // The power iteration this dispatch runs (0: the iterate is still d_j, read from `atoms`).
    iteration: u32,
    // 1 on the last power iteration: power_reduce stores the memory and settles d_new; 2 with no
    // power iteration at all: d_new = d_j (the coefficients are refitted to the atoms as they are).
    last: u32,
    // γ: weight of the memory (the earlier batches' E_ΩᵀE_Ω·u products) in each step.
    decay: f32,
    // fold_rows: dimensions per invocation (fold_rows_vec4: texels of four), bounded by the
    // driver's loop cap.
    dims_per_fold: u32,
    // power_partial, power_project: the items are items[item_start .. item_start + item_len];
    // power_reduce: partials row r belongs to item item_start + r.
    item_start: u32,
    item_len: u32,
    // The window of atom rows bound at atoms, iterate and memory, and the element index of row
    // atom_first inside the bindings.
    atom_first: u32,
    atom_end: u32,
    atom_lead: u32,
    // READ_TEXTURES: layer shifts of the residual's texture and of the atoms' and iterates'
    // (see flat_texel).
    residual_shift: u32,
    atom_shift: u32,
    // order_slots and the vec4 folds: atoms per batch, and words per sample of batch_mask.
    atom_batch: u32,
    mask_words: u32,
    // READ_TEXTURES: layer shifts of slot_order's and user_entries' texture copies.
    slot_shift: u32,
    user_shift: u32,
    _pad0: u32,
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
// (v of user list position q, x_new of flat slot q): both halves are indexed by q < n·k, the
// first by position in the user lists, the second by slot.
@group(0) @binding(10) var<storage, read_write> slot_scratch: array<vec2<f32>>;
// [K, d]: per atom, the decayed sum of its earlier batches' products E_ΩᵀE_Ω·d_j (unnormalised).
@group(0) @binding(11) var<storage, read_write> memory: array<f32>;
// Work items: (atom, first user position, one past its last, unused).
@group(0) @binding(12) var<storage, read> items: array<vec4<u32>>;
// Per position in `order`: (its first item, its item count).
@group(0) @binding(13) var<storage, read> atom_items: array<vec2<u32>>;
// [item_len, d]: each item's share of u.
@group(0) @binding(14) var<storage, read_write> partials: array<f32>;
// vec4 views of atoms, iterate, residual and partials for the *_vec4 entry points (d % 4 = 0 and
// atom_lead % 4 = 0); an entry point binds either a matrix or its view, never both.
@group(0) @binding(15) var<storage, read> atoms4: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read> iterate4: array<vec4<f32>>;
@group(0) @binding(17) var<storage, read_write> residual4: array<vec4<f32>>;
@group(0) @binding(18) var<storage, read_write> partials4: array<vec4<f32>>;
// Texture copies of the residual [n, d], the atoms [K, d] and the iterates [K, d] for
// READ_TEXTURES: each matrix's texels in a flat run, rows of 64 texels, layers of 2^shift rows.
// The *_vec4 entry points bind them either way (1×1 stand-ins when READ_TEXTURES is false).
@group(0) @binding(19) var residual_tex: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(20) var atoms_tex: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(21) var iterate_tex: texture_storage_2d_array<rgba32float, read>;

override READ_TEXTURES: bool = false;

// [n, k]: each sample's slots ordered by the visiting position of their atom, empty slots last:
// (position or 0xffffffff, flat slot, the slot's atom and value as bits; neither changes until
// the commit). Written once per update by order_slots; the vec4 folds find an atom batch's
// slots in it by binary search instead of scanning all k.
@group(0) @binding(22) var<storage, read_write> slot_order: array<vec4<u32>>;
// [n, mask_words]: bit b of a sample's words is set when one of its slots holds an atom of
// batch b (visiting positions b·atom_batch ..). Cleared by the host, set by order_slots: a
// vec4 fold dismisses a sample without slots in its batch with one load instead of a binary
// search (about half the samples at k·A ≈ K/1.5).
@group(0) @binding(23) var<storage, read_write> batch_mask: array<atomic<u32>>;
// slot_order's texture copy for READ_TEXTURES (the vec4 folds bind a 1×1 stand-in otherwise),
// flat as flat_texel's textures. On llvmpipe a storage load at an address the compiler cannot
// prove uniform is a loop over the SIMD lanes that puts each lane's value into the result
// through the stack, a store-forwarding stall per lane; the folds' slot_order, indices and values
// loads (every invocation of a sample at the same address) were about a third of
// fold_rows_resident's time. A texel fetch is an unrolled gather.
@group(0) @binding(27) var slot_tex: texture_storage_2d_array<rgba32uint, read>;
// Per user list position q: (sample, flat slot, the slot's value as bits, 0), written by
// user_table once per update where the resident item kernels read the users from a texture
// copy (user_tex, binding 29; a 1×1 stand-in otherwise): the same stalls as slot_order's.
@group(0) @binding(28) var<storage, read_write> user_entries: array<vec4<u32>>;
@group(0) @binding(29) var user_tex: texture_storage_2d_array<rgba32uint, read>;

fn in_window(j: u32) -> bool {
    return j >= params.atom_first && j < params.atom_end;
}

// Whether workgroup r has a work item whose atom lies in this dispatch's window.
fn item_in_window(r: u32) -> bool {
    return r < params.item_len && in_window(items[params.item_start + r].x);
}

// Element index of atom j's row in the windowed [K, d] bindings (j in the window).
fn atom_row(j: u32) -> u32 {
    return (j - params.atom_first) * params.d + params.atom_lead;
}

// The iterate u of this dispatch's iteration at element `at` of an atom row: d_j itself on the
// first iteration (no copy pass), then the normalised iterate.
fn u_at(at: u32) -> f32 {
    if params.iteration == 0u {
        return atoms[at];
    }
    return iterate[at];
}

// d_j·u (or, after the last reduce, d_j·d_new) over the workgroup.
fn dot_atom_u(lid: u32, row: u32) -> f32 {
    var part = 0.0;
    for (var c = lid; c < params.d; c += WG) {
        part += atoms[row + c] * u_at(row + c);
    }
    return wg_sum(lid, part);
}

// e_s·u for a user's sample.
fn residual_dot_u(sample: u32, row: u32) -> f32 {
    let e = sample * params.d;
    var v = 0.0;
    for (var c = 0u; c < params.d; c++) {
        v += residual[e + c] * u_at(row + c);
    }
    return v;
}

// One item's share of E_ΩᵀE_Ω·u: v_q = e_s·u + x_s·(d_j·u) for its users (one per invocation),
// then Σ_q v_q·e_s + (Σ_q v_q·x_s)·d_j (four dimensions per invocation).
@compute @workgroup_size(WG)
fn power_partial(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let r = linear_group(wid, groups);
    if !item_in_window(r) {
        return;
    }
    let item = items[params.item_start + r];
    let row = atom_row(item.x);
    let dju = dot_atom_u(lid, row);
    var vx = 0.0;
    for (var q = item.y + lid; q < item.z; q += WG) {
        let user = users[q];
        let x = values[user.y];
        let v = residual_dot_u(user.x, row) + x * dju;
        slot_scratch[q].x = v;
        vx += v * x;
    }
    let sum_vx = wg_sum(lid, vx);
    storageBarrier();
    let d = params.d;
    // Four dimensions per invocation: each user's v and sample are read once for all four
    // (on llvmpipe every access is a scalar loop over the SIMD lanes; on a GPU each invocation
    // reads 16 contiguous bytes). Dimensions past d are clamped and not stored.
    for (var c0 = 4u * lid; c0 < d; c0 += 4u * WG) {
        let cs = min(vec4<u32>(c0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(d - 1u));
        var acc = sum_vx * vec4<f32>(atoms[row + cs.x], atoms[row + cs.y], atoms[row + cs.z],
            atoms[row + cs.w]);
        for (var q = item.y; q < item.z; q++) {
            let e = users[q].x * d;
            acc += slot_scratch[q].x * vec4<f32>(residual[e + cs.x], residual[e + cs.y],
                residual[e + cs.z], residual[e + cs.w]);
        }
        let out = r * d;
        partials[out + cs.x] = acc.x;
        if c0 + 1u < d {
            partials[out + cs.y] = acc.y;
        }
        if c0 + 2u < d {
            partials[out + cs.z] = acc.z;
        }
        if c0 + 3u < d {
            partials[out + cs.w] = acc.w;
        }
    }
}

// u = Σ of the atom's partials + γ·m_j, normalised (a zero u, no users and no memory, stays
// zero); on the last iteration m_j = u unnormalised, and `iterate` gets d_new: u/‖u‖ facing d_j,
// or d_j itself when u = 0.
@compute @workgroup_size(WG)
fn power_reduce(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let a = linear_group(wid, groups);
    if a >= params.len {
        return;
    }
    let position = params.start + a;
    let j = order[position];
    if !in_window(j) {
        return;
    }
    let row = atom_row(j);
    if params.last == 2u {
        for (var c = lid; c < params.d; c += WG) {
            iterate[row + c] = atoms[row + c];
        }
        return;
    }
    let span = atom_items[position];
    let first = span.x - params.item_start;
    let d = params.d;
    let last = params.last == 1u;
    var sq = 0.0;
    var facing = 0.0;
    for (var c = lid; c < d; c += WG) {
        var acc = params.decay * memory[row + c];
        for (var i = 0u; i < span.y; i++) {
            acc += partials[(first + i) * d + c];
        }
        if last {
            memory[row + c] = acc;
        }
        iterate[row + c] = acc;
        sq += acc * acc;
        facing += acc * atoms[row + c];
    }
    let norm = sqrt(wg_sum(lid, sq));
    var scale = 0.0;
    if norm > 0.0 {
        scale = 1.0 / norm;
    }
    if last {
        // Both sums are workgroup-uniform, so every invocation takes the same branch.
        if wg_sum(lid, facing) < 0.0 {
            scale = -scale;
        }
    }
    for (var c = lid; c < d; c += WG) {
        if last && norm == 0.0 {
            iterate[row + c] = atoms[row + c];
        } else if norm > 0.0 {
            iterate[row + c] *= scale;
        }
    }
}

// x_new = e_s·d_new + x_s·(d_j·d_new) for the item's users, from the residual before the batch.
@compute @workgroup_size(WG)
fn power_project(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let r = linear_group(wid, groups);
    if !item_in_window(r) {
        return;
    }
    let item = items[params.item_start + r];
    let row = atom_row(item.x);
    // params.iteration > 0 here: u_at reads d_new from `iterate`.
    let dj_new = dot_atom_u(lid, row);
    for (var q = item.y + lid; q < item.z; q += WG) {
        let user = users[q];
        slot_scratch[user.y].y = residual_dot_u(user.x, row) + values[user.y] * dj_new;
    }
}

// The vec4 entry points read texels through these: residual texel f (sample s's texel t at
// s·d/4 + t), and the atoms' and iterates' texel `atom_texels(j) + t`.
fn residual_texel(f: u32) -> vec4<f32> {
    if READ_TEXTURES {
        return flat_texel(residual_tex, f, params.residual_shift);
    }
    return residual4[f];
}

fn atom_texels(j: u32) -> u32 {
    if READ_TEXTURES {
        return j * (params.d / 4u);
    }
    return atom_row(j) / 4u;
}

fn atom_texel(f: u32) -> vec4<f32> {
    if READ_TEXTURES {
        return flat_texel(atoms_tex, f, params.atom_shift);
    }
    return atoms4[f];
}

fn iterate_texel(f: u32) -> vec4<f32> {
    if READ_TEXTURES {
        return flat_texel(iterate_tex, f, params.atom_shift);
    }
    return iterate4[f];
}

// The vec4 twins of u_at, dot_atom_u and residual_dot_u; `row4` = atom_texels(j).
fn u4_at(f: u32) -> vec4<f32> {
    if params.iteration == 0u {
        return atom_texel(f);
    }
    return iterate_texel(f);
}

fn dot_atom_u4(lid: u32, row4: u32) -> f32 {
    var part = vec4<f32>(0.0);
    for (var t = lid; t < params.d / 4u; t += WG) {
        part += atom_texel(row4 + t) * u4_at(row4 + t);
    }
    return wg_sum(lid, part.x + part.y + part.z + part.w);
}

fn residual_dot_u4(sample: u32, row4: u32) -> f32 {
    let d4 = params.d / 4u;
    let e = sample * d4;
    var v = vec4<f32>(0.0);
    // Split by iteration outside the loop so the loop body is a plain vec4 multiply-add.
    if params.iteration == 0u {
        for (var t = 0u; t < d4; t++) {
            v += residual_texel(e + t) * atom_texel(row4 + t);
        }
    } else {
        for (var t = 0u; t < d4; t++) {
            v += residual_texel(e + t) * iterate_texel(row4 + t);
        }
    }
    return v.x + v.y + v.z + v.w;
}

@compute @workgroup_size(WG)
fn power_partial_vec4(
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
    let dju = dot_atom_u4(lid, row4);
    var vx = 0.0;
    for (var q = item.y + lid; q < item.z; q += WG) {
        let user = users[q];
        let x = values[user.y];
        let v = residual_dot_u4(user.x, row4) + x * dju;
        slot_scratch[q].x = v;
        vx += v * x;
    }
    let sum_vx = wg_sum(lid, vx);
    storageBarrier();
    let d4 = params.d / 4u;
    for (var t = lid; t < d4; t += WG) {
        var acc = sum_vx * atom_texel(row4 + t);
        for (var q = item.y; q < item.z; q++) {
            acc += slot_scratch[q].x * residual_texel(users[q].x * d4 + t);
        }
        partials4[r * d4 + t] = acc;
    }
}

@compute @workgroup_size(WG)
fn power_project_vec4(
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
    let dj_new = dot_atom_u4(lid, row4);
    for (var q = item.y + lid; q < item.z; q += WG) {
        let user = users[q];
        slot_scratch[user.y].y = residual_dot_u4(user.x, row4) + values[user.y] * dj_new;
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
        if !in_batch(j) || !in_window(j) {
            continue;
        }
        let x_old = values[slot];
        let x_new = slot_scratch[slot].y;
        let row = atom_row(j);
        for (var c = first; c < end; c += step) {
            residual[e + c] += x_old * atoms[row + c] - x_new * iterate[row + c];
        }
    }
}

// The visiting position of the atom in a slot (0xffffffff for an empty slot).
fn slot_key(slot: u32) -> u32 {
    let jj = indices[slot];
    if jj < 0 || u32(jj) >= params.n_atoms {
        return 0xffffffffu;
    }
    return rank[u32(jj)];
}

// slot_order's entry for a slot whose visiting position is `key`.
fn slot_entry(key: u32, slot: u32) -> vec4<u32> {
    return vec4<u32>(key, slot, bitcast<u32>(indices[slot]), bitcast<u32>(values[slot]));
}

// One invocation per slot: its place among its sample's slots ordered by (key, slot), a
// counting sort of k entries (k iterations per invocation, no atomics).
@compute @workgroup_size(64)
fn order_slots(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let slot = gid.y * groups.x * 64u + gid.x;
    if slot >= params.n * params.k {
        return;
    }
    let first = slot - slot % params.k;
    let key = slot_key(slot);
    if key != 0xffffffffu {
        let b = key / params.atom_batch;
        atomicOr(&batch_mask[slot / params.k * params.mask_words + b / 32u], 1u << (b % 32u));
    }
    var place = 0u;
    for (var other = first; other < first + params.k; other++) {
        let other_key = slot_key(other);
        if other_key < key || (other_key == key && other < slot) {
            place++;
        }
    }
    slot_order[first + place] = slot_entry(key, slot);
}

// Most slots per sample order_samples sorts in private memory (the host runs order_slots for
// larger k).
const ORDER_PRIVATE: u32 = 64u;
// The visiting positions of the invocation's sample's slots.
var<private> order_key: array<u32, ORDER_PRIVATE>;

// order_slots with one invocation per sample (k ≤ ORDER_PRIVATE): its k keys are read once
// into private memory and ranked there, where order_slots reads every key of the sample in
// each of its k invocations (on llvmpipe each read a loop over the lanes, k² per sample). The
// same places, so the same slot_order.
@compute @workgroup_size(64)
fn order_samples(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let s = gid.y * groups.x * 64u + gid.x;
    if s >= params.n {
        return;
    }
    let first = s * params.k;
    for (var i = 0u; i < params.k; i++) {
        let key = slot_key(first + i);
        order_key[i] = key;
        if key != 0xffffffffu {
            let b = key / params.atom_batch;
            atomicOr(&batch_mask[s * params.mask_words + b / 32u], 1u << (b % 32u));
        }
    }
    for (var i = 0u; i < params.k; i++) {
        let key = order_key[i];
        var place = 0u;
        for (var o = 0u; o < params.k; o++) {
            let other_key = order_key[o];
            if other_key < key || (other_key == key && o < i) {
                place++;
            }
        }
        slot_order[first + place] = slot_entry(key, first + i);
    }
}

// Texel f of an rgba32uint table copied flat into a texture (flat_texel's layout).
fn flat_entry(tex: texture_storage_2d_array<rgba32uint, read>, f: u32, shift: u32) -> vec4<u32> {
    let at = flat_place(f, shift);
    return textureLoad(tex, at.xy, at.z);
}

// User list position q as user_entries holds it: (sample, flat slot, value bits, 0).
fn user_entry(q: u32) -> vec4<u32> {
    let user = users[q];
    return vec4<u32>(user, bitcast<u32>(values[user.y]), 0u);
}

// user_entry(q), from user_entries' texture copy under READ_TEXTURES.
fn user_at(q: u32) -> vec4<u32> {
    if READ_TEXTURES {
        return flat_entry(user_tex, q, params.user_shift);
    }
    return user_entry(q);
}

// One invocation per user list position q < params.len: its entry of user_entries.
@compute @workgroup_size(64)
fn user_table(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let q = gid.y * groups.x * 64u + gid.x;
    if q < params.len {
        user_entries[q] = user_entry(q);
    }
}

// Entry `at` of slot_order (from its texture copy under READ_TEXTURES).
fn slot_at(at: u32) -> vec4<u32> {
    if READ_TEXTURES {
        return flat_entry(slot_tex, at, params.slot_shift);
    }
    return slot_order[at];
}

// The place in slot_order of sample s's first slot in this batch (its run of the batch's slots
// follows), or 0xffffffff when its batch_mask bit says it has none or s is past the samples: a
// binary search.
fn fold_first(s: u32) -> u32 {
    if s >= params.n {
        return 0xffffffffu;
    }
    let b = params.start / params.atom_batch;
    if (atomicLoad(&batch_mask[s * params.mask_words + b / 32u]) & (1u << (b % 32u))) == 0u {
        return 0xffffffffu;
    }
    let row = s * params.k;
    var lo = 0u;
    var hi = params.k;
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if slot_at(row + mid).x < params.start {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// fold_dims over texels t = first, first + step, … < end of the vec4 views, visiting only the
// sample's slots of this batch: none when its batch_mask bit is clear, else a binary search of
// slot_order for the batch's first position, then its run of slots (so lanes of different
// samples rarely wait on each other's folds).
fn fold_texels(s: u32, first: u32, end: u32, step: u32) {
    let lo = fold_first(s);
    if lo == 0xffffffffu {
        return;
    }
    let e = s * (params.d / 4u);
    let row = s * params.k;
    for (var i = lo; i < params.k; i++) {
        let entry = slot_at(row + i);
        if entry.x >= params.start + params.len {
            break;
        }
        let slot = entry.y;
        let j = entry.z;
        if !in_window(j) {
            continue;
        }
        let x_old = bitcast<f32>(entry.w);
        let x_new = slot_scratch[slot].y;
        let row4 = atom_texels(j);
        // The batch's first slot reads e_s as residual_texel does (READ_TEXTURES: from the
        // texture copy, a gather where a storage load is a loop over the SIMD lanes; it holds
        // the residual before this batch's fold) in the first window's dispatch; later slots and
        // windows read the buffer the earlier ones wrote. The same sum either way.
        if i == lo && params.atom_first == 0u {
            for (var t = first; t < end; t += step) {
                residual4[e + t] = residual_texel(e + t)
                    + (x_old * atom_texel(row4 + t) - x_new * iterate_texel(row4 + t));
            }
        } else {
            for (var t = first; t < end; t += step) {
                residual4[e + t] += x_old * atom_texel(row4 + t) - x_new * iterate_texel(row4 + t);
            }
        }
    }
}

@compute @workgroup_size(WG)
fn fold(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let s = linear_group(wid, groups);
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
fn fold_vec4(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let s = linear_group(wid, groups);
    if s >= params.n {
        return;
    }
    fold_texels(s, lid, params.d / 4u, WG);
}

// Invocations per sample of fold_rows_vec4: one llvmpipe SIMD row (8 lanes of 256 bits) per
// sample, so its lanes share the sample's slots and never wait on another sample's.
const FOLD_LANES: u32 = 8u;

// fold_rows with dims_per_fold counting texels of four dimensions, each chunk split over
// FOLD_LANES invocations (texels t0 + lane, t0 + lane + FOLD_LANES, …).
@compute @workgroup_size(64)
fn fold_rows_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x / FOLD_LANES;
    if s >= params.n {
        return;
    }
    let t0 = gid.y * params.dims_per_fold;
    let end = min(t0 + params.dims_per_fold, params.d / 4u);
    fold_texels(s, t0 + gid.x % FOLD_LANES, end, FOLD_LANES);
}

@compute @workgroup_size(WG)
fn commit(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let a = linear_group(wid, groups);
    if a >= params.len {
        return;
    }
    let j = order[params.start + a];
    if !in_window(j) {
        return;
    }
    let row = atom_row(j);
    for (var c = lid; c < params.d; c += WG) {
        atoms[row + c] = iterate[row + c];
    }
    for (var q = user_start[j] + lid; q < user_start[j + 1u]; q += WG) {
        let slot = users[q].y;
        values[slot] = slot_scratch[slot].y;
    }
}
