// extends: power.wgsl
// (needs subgroup operations; the host repeats each code line naming `$t` per row texel, see
// below)
//
// Resident power iteration for CPU adapters: the work items of power_partial and power_project
// with the atom's iterate held in the private memory of one subgroup, each user's residual row
// read once; and power_reduce with one subgroup per atom (sums by subgroupAdd, where
// power_reduce's workgroup sums cost a barrier per round, on llvmpipe a coroutine switch per
// SIMD row), its textured variant writing the iterates' texture copy in place of a copy
// command per atom row; and fold_rows_resident, the fold with each sample's row in the
// registers of RWG invocations, or fold_project_resident, the projections and the fold in one
// pass (one subgroup per sample rather than per work item).
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
// Each invocation holds UT texels of a row (d ≤ 4·RWG·UT) in UT private vec4s per row, not in
// arrays: the host writes each code line that names `$t` UT times, `$t` replaced by 0 .. UT − 1
// (`texel_lines` in src/gpu/layout.rs), so no access is indexed by a variable. llvmpipe
// compiles an array indexed by a loop counter it does not unroll into a gather and a scatter
// lane by lane per access: at d = 1536 (UT = 48) power_partial_resident took 3× as long (at
// d = 384, UT = 12, the loops were unrolled and the two forms are even). Past 64 texels (d >
// 2048 in subgroups of 8) the host turns those lines into loops over arrays instead: written
// out, d = 2304 took llvmpipe 12 s more to compile. A texel past the row reads whatever its
// fetch returns and is zeroed (select) or left unwritten.

// Invocations per workgroup: the adapter's subgroup size (llvmpipe: 8).
override RWG: u32 = 8u;

// This invocation's texels of the iterate, of the current user's residual row, and of the
// item's partial sum, one private vec4 each (lines naming `$t`: see the header).
var<private> res_u$t: vec4<f32>;
var<private> res_e$t: vec4<f32>;
var<private> res_acc$t: vec4<f32>;

// Whether this invocation's texel t lies in the row (d/4 texels).
fn res_in_row(t: u32, lid: u32) -> bool {
    return t * RWG + lid < params.d / 4u;
}

// Texel t of u (0 past the row). The per-texel helpers take and return values rather than
// pointers: naga's SPIR-V writer fails on a pointer to an element of a private array (the
// lines' looped form).
fn res_u_texel(t: u32, lid: u32, row4: u32, iterate_only: bool) -> vec4<f32> {
    let f = row4 + t * RWG + lid;
    var v: vec4<f32>;
    if iterate_only {
        v = iterate_texel(f);
    } else {
        v = u4_at(f);
    }
    return select(vec4<f32>(0.0), v, res_in_row(t, lid));
}

// Texel t's share of d_j·u.
fn res_dj_u(u: vec4<f32>, t: u32, lid: u32, row4: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), atom_texel(row4 + t * RWG + lid) * u, res_in_row(t, lid));
}

// Loads this invocation's texels of u (d_j on iteration 0, else the iterate: u4_at) into res_u
// and returns d_j·u over the subgroup. `iterate_only`: u is the iterate whatever the iteration
// (the projection reads d_new).
fn res_load_u(lid: u32, row4: u32, iterate_only: bool) -> f32 {
    var dot = vec4<f32>(0.0);
    // One line, so that past 64 texels it stays one loop (the host's loop-count estimate).
    res_u$t = res_u_texel($tu, lid, row4, iterate_only); dot += res_dj_u(res_u$t, $tu, lid, row4);
    return subgroupAdd(dot.x + dot.y + dot.z + dot.w);
}

// Texel t of a residual row whose first texel is `first` (0 past the row).
fn res_residual_row_texel(t: u32, lid: u32, first: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), residual_texel(first + t * RWG + lid), res_in_row(t, lid));
}

// Texel t of a residual row as the buffer holds it (0 past the row).
fn res_stored_row_texel(t: u32, lid: u32, first: u32) -> vec4<f32> {
    let c = min(t * RWG + lid, params.d / 4u - 1u);
    return select(vec4<f32>(0.0), residual4[first + c], res_in_row(t, lid));
}

// Texel t's share of x_old·d_j − x_new·d_new (row4: atom j's first texel).
fn res_fold_term(x_old: f32, x_new: f32, row4: u32, t: u32, lid: u32) -> vec4<f32> {
    let c = row4 + t * RWG + lid;
    return x_old * atom_texel(c) - x_new * iterate_texel(c);
}

// Texel t of a residual row into the buffer (nothing past the row).
fn res_store_row_texel(v: vec4<f32>, t: u32, lid: u32, first: u32) {
    if res_in_row(t, lid) {
        residual4[first + t * RWG + lid] = v;
    }
}

// Reads sample s's residual row into res_e and returns e_s·u over the subgroup.
fn res_residual_dot_u(lid: u32, s: u32) -> f32 {
    let first = s * (params.d / 4u);
    var dot = vec4<f32>(0.0);
    // One line, as in res_load_u.
    res_e$t = res_residual_row_texel($tu, lid, first); dot += res_e$t * res_u$t;
    return subgroupAdd(dot.x + dot.y + dot.z + dot.w);
}

// Texel t of an item's partial sum, acc + vx·d_j, into partials4.
fn res_store_partial(acc: vec4<f32>, t: u32, lid: u32, r: u32, row4: u32, vx: f32) {
    let c = t * RWG + lid;
    if res_in_row(t, lid) {
        partials4[r * (params.d / 4u) + c] = acc + vx * atom_texel(row4 + c);
    }
}

// fold_rows_vec4 (power.wgsl) with the sample's row held in private texels: RWG invocations
// per sample, invocation `lane` holding texels t·RWG + lane in res_e, which take every slot of
// the batch before the row is written back, so a sample with several slots in the batch reads
// and writes its row once rather than once per slot (at A = 128, K = 1536, k = 32 a sample has
// about 2.7 slots in each batch it appears in). The first window's dispatch reads the row from
// the texture copy (READ_TEXTURES; it holds the residual before this batch), later windows
// from the buffer the earlier ones wrote. The same sums in the same order as fold_texels.
// Runs where the loop cap leaves whole rows to one invocation (the host's dims_per_fold).
@compute @workgroup_size(64)
fn fold_rows_resident(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x / RWG;
    let lane = gid.x % RWG;
    let lo = fold_first(s);
    if lo == 0xffffffffu {
        return;
    }
    let e = s * (params.d / 4u);
    if params.atom_first == 0u {
        res_e$t = res_residual_row_texel($tu, lane, e);
    } else {
        res_e$t = res_stored_row_texel($tu, lane, e);
    }
    for (var i = lo; i < params.k; i++) {
        let entry = slot_at(s * params.k + i);
        if entry.x >= params.start + params.len {
            break;
        }
        let j = entry.z;
        if !in_window(j) {
            continue;
        }
        let x_old = bitcast<f32>(entry.w);
        let x_new = slot_scratch[entry.y].y;
        let row4 = atom_texels(j);
        res_e$t += res_fold_term(x_old, x_new, row4, $tu, lane);
    }
    res_store_row_texel(res_e$t, $tu, lane, e);
}

// fold_project_resident's texels: the sample's residual row before the batch (what every
// projection reads), and the current slot's atom d_j and new atom d_new, each read once for both
// the projection and the fold.
var<private> res_e0$t: vec4<f32>;
var<private> res_dj$t: vec4<f32>;
var<private> res_dn$t: vec4<f32>;

// Texel t of atom row row4 of the atoms (0 past the row).
fn res_atom_row_texel(t: u32, lid: u32, row4: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), atom_texel(row4 + t * RWG + lid), res_in_row(t, lid));
}

// power_project_resident and fold_rows_resident in one pass over the samples, where the atoms
// fit one window: one subgroup per sample holds its row before the batch (res_e0) and the row
// being folded (res_e), and for each of its slots in the batch reads d_j and d_new once, projects
// (x_new = e_s·d_new + x_s·(d_j·d_new), into slot_scratch for the commit) and folds
// (e_s += x_s·d_j − x_new·d_new). The projections' item pass read each user's row again, and
// the fold read x_new back. The same sums in the same order as power_project_resident and
// fold_rows_resident, so the same bits. The host runs it with one window of atom rows only (a
// later window's dispatch would start from the rows the earlier ones folded, not from the
// residual before the batch) and with the texture copies (the first window reads the row
// before the batch from the residual's).
@compute @workgroup_size(RWG)
fn fold_project_resident(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let s = linear_group(wid, groups);
    let lo = fold_first(s);
    if lo == 0xffffffffu {
        return;
    }
    let e = s * (params.d / 4u);
    res_e0$t = res_residual_row_texel($tu, lid, e);
    res_e$t = res_e0$t;
    for (var i = lo; i < params.k; i++) {
        let entry = slot_at(s * params.k + i);
        if entry.x >= params.start + params.len {
            break;
        }
        // Always in the one window (see above); the check keeps the fold's own.
        if !in_window(entry.z) {
            continue;
        }
        let x_old = bitcast<f32>(entry.w);
        let row4 = atom_texels(entry.z);
        var dj_dn = vec4<f32>(0.0);
        var e_dn = vec4<f32>(0.0);
        // One line, as in res_load_u.
        res_dj$t = res_atom_row_texel($tu, lid, row4); res_dn$t = res_u_texel($tu, lid, row4, true); dj_dn += res_dj$t * res_dn$t; e_dn += res_e0$t * res_dn$t;
        let x_new = subgroupAdd(e_dn.x + e_dn.y + e_dn.z + e_dn.w)
            + x_old * subgroupAdd(dj_dn.x + dj_dn.y + dj_dn.z + dj_dn.w);
        if lid == 0u {
            slot_scratch[entry.y].y = x_new;
        }
        res_e$t += x_old * res_dj$t - x_new * res_dn$t;
    }
    res_store_row_texel(res_e$t, $tu, lid, e);
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
    res_acc$t = vec4<f32>(0.0);
    var vx = 0.0;
    for (var q = item.y; q < item.z; q++) {
        let user = user_at(q);
        let x = bitcast<f32>(user.z);
        let v = res_residual_dot_u(lid, user.x) + x * dju;
        vx += v * x;
        res_acc$t += v * res_e$t;
    }
    res_store_partial(res_acc$t, $tu, lid, r, row4, vx);
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
        let user = user_at(q);
        let x_new = res_residual_dot_u(lid, user.x) + bitcast<f32>(user.z) * dj_new;
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

// res_reduce's copy of texel t of d_j (the settled atom) into the iterates; returns it.
fn res_copy_atom(t: u32, lid: u32, row4: u32, view: u32) -> vec4<f32> {
    let c = t * RWG + lid;
    var u = vec4<f32>(0.0);
    if res_in_row(t, lid) {
        u = atom_texel(row4 + c);
        iterate_rw4[view + c] = u;
    }
    return u;
}

// res_reduce's sum for texel t: γ·m_j plus the atom's partial sums (`span`: first item, items),
// the memory updated on the last iteration; adds its shares of |u|² and u·d_j and returns it.
fn res_sum_texel(
    t: u32, lid: u32, row4: u32, view: u32, span: vec2<u32>, last: bool, sq: ptr<function, f32>,
    facing: ptr<function, f32>,
) -> vec4<f32> {
    let c = t * RWG + lid;
    let d4 = params.d / 4u;
    var acc = vec4<f32>(0.0);
    if res_in_row(t, lid) {
        acc = params.decay * memory_rw4[view + c];
        for (var i = 0u; i < span.y; i++) {
            acc += partials4[(span.x + i) * d4 + c];
        }
        if last {
            memory_rw4[view + c] = acc;
        }
        *facing += dot(acc, atom_texel(row4 + c));
    }
    *sq += dot(acc, acc);
    return acc;
}

// res_reduce's texel t of the normalised iterate (d_j again for a zero sum on the last
// iteration) from the sum u, into the iterates; returns it.
fn res_settle_texel(
    u: vec4<f32>, t: u32, lid: u32, row4: u32, view: u32, last: bool, norm: f32, scale: f32,
) -> vec4<f32> {
    let c = t * RWG + lid;
    var v = u;
    if res_in_row(t, lid) {
        if last && norm == 0.0 {
            v = atom_texel(row4 + c);
        } else if norm > 0.0 {
            v *= scale;
        }
        iterate_rw4[view + c] = v;
    }
    return v;
}

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
    let row4 = atom_texels(j);
    let view = atom_row(j) / 4u;
    if params.last == 2u {
        res_u$t = res_copy_atom($tu, lid, row4, view);
        return j;
    }
    let span = atom_items[position];
    let items = vec2<u32>(span.x - params.item_start, span.y);
    let last = params.last == 1u;
    var sq = 0.0;
    var facing = 0.0;
    res_u$t = res_sum_texel($tu, lid, row4, view, items, last, &sq, &facing);
    let norm = sqrt(subgroupAdd(sq));
    var scale = 0.0;
    if norm > 0.0 {
        scale = 1.0 / norm;
    }
    if last && subgroupAdd(facing) < 0.0 {
        scale = -scale;
    }
    res_u$t = res_settle_texel(res_u$t, $tu, lid, row4, view, last, norm, scale);
    return j;
}

// Texel t of d_new (or of the iterate) into the iterates' texture copy, at the flat place
// flat_texel reads.
fn res_store_iterate(u: vec4<f32>, t: u32, lid: u32, j: u32) {
    if res_in_row(t, lid) {
        let at = flat_place(j * (params.d / 4u) + t * RWG + lid, params.atom_shift);
        textureStore(iterate_store, at.xy, at.z, u);
    }
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
    res_store_iterate(res_u$t, $tu, lid, j);
}
