// include: workgroup.wgsl
// Reductions behind atom replacement (KSVD-Box's "replace unused atoms"):
//
//   residual_norms    ‖e_s‖² per sample, one workgroup per sample
//   mark_duplicates   flags atom j when |cos(d_i, d_j)| > threshold for some atom i that is used
//                     more (ties: the lower index counts as more used), one invocation per atom
//   coherence         max over i ≠ j of |cos(d_i, d_j)| per atom j, one invocation per atom
//   remove_users      drops flagged atoms from every code: E_s += x·d_j, slot emptied; one
//                     workgroup per sample (it owns its row of E and its slots)
//   reseed            one workgroup walks the flagged atoms in ascending order and gives each the
//                     normalised sample with the largest remaining residual, each sample once
//
// Every kernel that reads the atoms or the Gram matrix sees one window of their rows (see
// Params); a dictionary larger than one binding takes one dispatch per window, in order.

struct Params {
    n: u32,
    d: u32,
    k: u32,
    n_atoms: u32,
    threshold: f32,
    // The window of atom rows bound at `atoms` (remove_users, reseed) or of rows of the Gram
    // matrix bound at `gram` (mark_duplicates, coherence): atoms atom_first .. atom_end, row
    // atom_first at element atom_lead. A matrix larger than one binding takes one dispatch per
    // window.
    atom_first: u32,
    atom_end: u32,
    atom_lead: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> samples: array<f32>;
@group(0) @binding(2) var<storage, read_write> atoms: array<f32>;
@group(0) @binding(3) var<storage, read_write> residual: array<f32>;
@group(0) @binding(4) var<storage, read_write> indices: array<i32>;
@group(0) @binding(5) var<storage, read_write> values: array<f32>;
// [K]: 1 for atoms to replace.
@group(0) @binding(6) var<storage, read_write> flags: array<u32>;
// [n]: ‖e_s‖², set to −1 once a sample has seeded an atom.
@group(0) @binding(7) var<storage, read_write> norms: array<f32>;
// [K]: the sample that seeded each atom, 0xffffffff for none.
@group(0) @binding(8) var<storage, read_write> chosen: array<u32>;
@group(0) @binding(9) var<storage, read> gram: array<f32>;
@group(0) @binding(10) var<storage, read> usage: array<u32>;

var<workgroup> flag: u32;

fn in_window(j: u32) -> bool {
    return j >= params.atom_first && j < params.atom_end;
}

// Element index of row j (in the window) of the windowed [K, cols] binding.
fn window_row(j: u32, cols: u32) -> u32 {
    return (j - params.atom_first) * cols + params.atom_lead;
}

@compute @workgroup_size(WG)
fn residual_norms(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let s = linear_group(wid, groups);
    if s >= params.n {
        return;
    }
    var part = 0.0;
    for (var c = lid; c < params.d; c += WG) {
        let e = residual[s * params.d + c];
        part += e * e;
    }
    let total = wg_sum(lid, part);
    if lid == 0u {
        norms[s] = total;
    }
}

@compute @workgroup_size(WG)
fn mark_duplicates(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let j = params.atom_first + linear_group(wid, groups) * WG + lid;
    if j >= params.atom_end {
        return;
    }
    let row = window_row(j, params.n_atoms);
    var duplicate = 0u;
    for (var i = 0u; i < params.n_atoms; i++) {
        let more_used = usage[i] > usage[j] || (usage[i] == usage[j] && i < j);
        if i != j && more_used && abs(gram[row + i]) > params.threshold {
            duplicate = 1u;
        }
    }
    flags[j] = duplicate;
}

@compute @workgroup_size(WG)
fn coherence(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let j = params.atom_first + linear_group(wid, groups) * WG + lid;
    if j >= params.atom_end {
        return;
    }
    let row = window_row(j, params.n_atoms);
    var most = 0.0;
    for (var i = 0u; i < params.n_atoms; i++) {
        if i != j {
            most = max(most, abs(gram[row + i]));
        }
    }
    norms[j] = most;
}

@compute @workgroup_size(WG)
fn remove_users(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let s = linear_group(wid, groups);
    if s >= params.n {
        return;
    }
    for (var t = 0u; t < params.k; t++) {
        let slot = s * params.k + t;
        let j = indices[slot];
        if j < 0 || !in_window(u32(j)) || flags[u32(j)] == 0u {
            continue;
        }
        let x = values[slot];
        let row = window_row(u32(j), params.d);
        for (var c = lid; c < params.d; c += WG) {
            residual[s * params.d + c] += x * atoms[row + c];
        }
    }
    // Every invocation has read the slots above before any is emptied.
    workgroupBarrier();
    if lid == 0u {
        for (var t = 0u; t < params.k; t++) {
            let slot = s * params.k + t;
            let j = indices[slot];
            if j >= 0 && in_window(u32(j)) && flags[u32(j)] != 0u {
                indices[slot] = -1;
                values[slot] = 0.0;
            }
        }
    }
}

@compute @workgroup_size(WG)
fn reseed(@builtin(local_invocation_index) lid: u32) {
    for (var j = params.atom_first; j < params.atom_end; j++) {
        if lid == 0u {
            flag = flags[j];
            chosen[j] = 0xffffffffu;
        }
        if workgroupUniformLoad(&flag) == 0u {
            continue;
        }
        // Largest remaining residual, ties to the lowest sample.
        var best = -1.0;
        var best_s = 0xffffffffu;
        for (var s = lid; s < params.n; s += WG) {
            if norms[s] > best {
                best = norms[s];
                best_s = s;
            }
        }
        let worst = wg_argmax(lid, best, best_s, true);
        let s = worst.index;
        if lid == 0u {
            // Nothing left to explain (every residual zero or every sample used): keep the atom.
            flag = select(0u, 1u, worst.value > 0.0);
        }
        if workgroupUniformLoad(&flag) == 0u {
            continue;
        }
        var part = 0.0;
        for (var c = lid; c < params.d; c += WG) {
            let y = samples[s * params.d + c];
            part += y * y;
        }
        let norm = sqrt(wg_sum(lid, part));
        // A zero sample can have a residual (its codes are not zero): it cannot seed an atom,
        // and is only marked used.
        if norm > 0.0 {
            for (var c = lid; c < params.d; c += WG) {
                atoms[window_row(j, params.d) + c] = samples[s * params.d + c] / norm;
            }
        }
        if lid == 0u {
            if norm > 0.0 {
                chosen[j] = s;
            }
            norms[s] = -1.0;
        }
        storageBarrier();
    }
}
