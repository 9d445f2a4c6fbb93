//! Twin of `shaders/split.wgsl`: the epoch-end re-seeding that splits the atoms whose users
//! carry the most residual, in f64 and written as the rule reads, apart from the GPU code.

use super::power::KsvdState;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v / ‖v‖`, or `None` for a zero or non-finite norm.
fn unit(v: Vec<f64>) -> Option<Vec<f64>> {
    let norm = dot(&v, &v).sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| v.into_iter().map(|x| x / norm).collect())
}

/// Re-seeds the `flagged` atoms (ascending) of `state` from its codes and residual; returns the
/// atoms changed, ascending. The rule, written here apart from the GPU's
/// ([`crate::gpu::Gpu::split_atoms`]):
///
/// 1. Rank the other atoms with at least two users by their users' residual energy Σ‖e_s‖²,
///    most first (ties: lower index); each is tried at most once, in that order.
/// 2. For a flagged atom, take the next ranked atom a with positive energy: r = the top
///    principal direction of its users' residuals (30 power steps from the most energetic
///    one). Users with (e_s·r)·x_s > 0 form one group, the rest the other; the flagged atom
///    becomes the unit mean of sign(x_s)·(x_s·a + e_s) over the first group, a the same over
///    the second. An atom whose users all fall in one group, or whose residuals are zero, is
///    skipped.
/// 3. When no ranked atom is left, the flagged atom becomes the unit sample y_s = e_s + x_s·D
///    (atoms as coded) with the largest ‖e_s‖² not yet taken (ties: lower index).
pub fn split_atoms(state: &mut KsvdState, flagged: &[usize]) -> Vec<usize> {
    let (d, n) = (state.d, state.n_samples());
    let coded_atoms = state.atoms.clone();
    let e = state.residual();
    let row = |s: usize| &e[s * d..(s + 1) * d];
    let energy: Vec<f64> = (0..n).map(|s| dot(row(s), row(s))).collect();
    // Per atom: (sample, coefficient) of its users.
    let users: Vec<Vec<(usize, f64)>> = state
        .users()
        .into_iter()
        .map(|u| {
            u.into_iter()
                .map(|(s, t)| (s, state.values[s * state.k + t]))
                .collect()
        })
        .collect();
    let load: Vec<f64> = users
        .iter()
        .map(|u| u.iter().map(|&(s, _)| energy[s]).sum())
        .collect();
    let mut ranked: Vec<usize> = (0..users.len())
        .filter(|j| !flagged.contains(j) && users[*j].len() >= 2)
        .collect();
    ranked.sort_by(|&a, &b| load[b].total_cmp(&load[a]).then(a.cmp(&b)));
    let mut ranked = ranked.into_iter();
    let mut taken = vec![false; n];
    let mut changed = Vec::new();
    'flagged: for &target in flagged {
        while let Some(source) = ranked.next() {
            if load[source] <= 0.0 {
                // The rest carry no residual either.
                ranked = Vec::new().into_iter();
                break;
            }
            let a = &coded_atoms[source * d..(source + 1) * d];
            let Some((plus, minus)) = split(&e, d, &energy, &users[source], a) else {
                continue;
            };
            state.atoms[target * d..(target + 1) * d].copy_from_slice(&plus);
            state.atoms[source * d..(source + 1) * d].copy_from_slice(&minus);
            changed.extend([target, source]);
            continue 'flagged;
        }
        let worst = (0..n).filter(|&s| !taken[s] && energy[s] > 0.0).fold(
            None,
            |best: Option<usize>, s| match best {
                Some(b) if energy[b] >= energy[s] => Some(b),
                _ => Some(s),
            },
        );
        if let Some(s) = worst {
            taken[s] = true;
            if let Some(y) = unit(sample(state, row(s), s, &coded_atoms)) {
                state.atoms[target * d..(target + 1) * d].copy_from_slice(&y);
                changed.push(target);
            }
        }
    }
    changed.sort_unstable();
    changed.dedup();
    changed
}

/// Step 2 of [`split_atoms`] for one atom `a` and its `users` (sample, coefficient): the two
/// unit halves, or `None` when the direction is undefined or one side is empty.
fn split(
    e: &[f64],
    d: usize,
    energy: &[f64],
    users: &[(usize, f64)],
    a: &[f64],
) -> Option<(Vec<f64>, Vec<f64>)> {
    let row = |s: usize| &e[s * d..(s + 1) * d];
    // r: the top principal direction of the users' residuals, from the most energetic one.
    let most = users
        .iter()
        .max_by(|p, q| energy[p.0].total_cmp(&energy[q.0]))
        .map(|&(s, _)| row(s).to_vec());
    let mut r = unit(most?)?;
    for _ in 0..30 {
        let mut w = vec![0.0; d];
        for &(s, _) in users {
            let t = dot(row(s), &r);
            w.iter_mut().zip(row(s)).for_each(|(w, v)| *w += t * v);
        }
        match unit(w) {
            Some(w) => r = w,
            None => break,
        }
    }
    let (mut plus, mut minus) = (vec![0.0; d], vec![0.0; d]);
    let (mut n_plus, mut n_minus) = (0, 0);
    for &(s, x) in users {
        let first = dot(row(s), &r) * x > 0.0;
        let (sum, count) = if first {
            (&mut plus, &mut n_plus)
        } else {
            (&mut minus, &mut n_minus)
        };
        *count += 1;
        for c in 0..d {
            sum[c] += x.signum() * (x * a[c] + row(s)[c]);
        }
    }
    if n_plus == 0 || n_minus == 0 {
        return None;
    }
    Some((unit(plus)?, unit(minus)?))
}

/// Sample `s` rebuilt as y = e_s + x_s·D from its residual row `e_s` and the atoms it was coded
/// with.
fn sample(state: &KsvdState, e_s: &[f64], s: usize, coded_atoms: &[f64]) -> Vec<f64> {
    let d = state.d;
    let mut y = e_s.to_vec();
    for t in 0..state.k {
        let j = state.indices[s * state.k + t];
        if j >= 0 {
            let x = state.values[s * state.k + t];
            let atom = &coded_atoms[j as usize * d..(j as usize + 1) * d];
            y.iter_mut().zip(atom).for_each(|(y, a)| *y += x * a);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Atom 0 blends X = e₀ and Y = e₁ and serves both groups of samples; atom 1 is junk.
    /// Splitting atom 0 into the flagged atom 1 gives back X and Y; with nothing to split, the
    /// flagged atoms take the worst-represented samples.
    #[test]
    fn splitting_separates_a_blended_atom() {
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let mut samples = Vec::new();
        let mut values = Vec::new();
        for i in 0..10 {
            let c = (1.0 + i as f64 / 10.0) * if i % 2 == 0 { 1.0 } else { -1.0 };
            for y in [[c, 0.0, 0.0, 0.0], [0.0, 1.5 * c, 0.0, 0.0]] {
                values.push(y[0] * s + y[1] * s);
                samples.extend(y);
            }
        }
        let n = values.len();
        let state = KsvdState {
            d: 4,
            atoms: vec![s, s, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            samples,
            k: 1,
            indices: vec![0; n],
            values,
        };
        let mut split = state.clone();
        assert_eq!(split_atoms(&mut split, &[1]), [0, 1]);
        let (a, b) = (&split.atoms[..4], &split.atoms[4..]);
        assert!(
            (a[0].abs() > 0.999 && b[1].abs() > 0.999)
                || (a[1].abs() > 0.999 && b[0].abs() > 0.999),
            "{:?}",
            split.atoms
        );

        let mut fallback = state.clone();
        assert_eq!(split_atoms(&mut fallback, &[0, 1]), [0, 1]);
        // The two largest residuals are the ±1.9·Y-like and ±1.9·X-like samples: unit axes.
        for atom in fallback.atoms.chunks(4) {
            assert!(
                atom.iter().any(|v| (v.abs() - 1.0).abs() < 1e-12),
                "{atom:?}"
            );
        }
    }
}
