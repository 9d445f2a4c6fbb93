//! Reference KSVD dictionary update in f64, atom by atom or in Jacobi batches.
//!
//! For atom j with users ω (the samples whose codes contain j), E_Ω = (Y − X·D)\[ω\] + x_j\[ω\]·d_j.
//! Its best rank-1 approximation σ·v·uᵀ replaces d_j by u and x_j\[ω\] by σ·v = E_Ω·u. Here u is
//! computed to f64 precision by the power method run to convergence (the direction moving by
//! less than 1e-14) on the smaller of E_Ω·E_Ωᵀ (then u = E_Ωᵀ·v/‖E_Ωᵀ·v‖) and E_Ωᵀ·E_Ω, started
//! from the current atom. The sign makes u·d_j ≥ 0; an atom without users, or with E_Ω = 0,
//! keeps d_j.
//!
//! Batches: the atoms of one batch all see the same residual (Jacobi); batches follow each other
//! (Gauss–Seidel). One atom per batch is classic sequential KSVD.
//!
//! With an atom memory m_j (weight γ) the direction is instead the fixed point of
//! u = (E_ΩᵀE_Ω·u + γ·m_j)/‖…‖, iterated to convergence from d_j, and m_j becomes
//! E_ΩᵀE_Ω·u + γ·m_j: the converged twin of the GPU's power steps with memory.
//!
//! [`KsvdState::update_with_power_steps`] instead runs exactly the GPU's p power steps per atom
//! (unconverged where the top singular values are close), so the GPU can be checked at the step
//! counts training uses, to rounding.

/// Dense state of the reference update: samples, dictionary and fixed-width codes, all f64.
#[derive(Clone, Debug)]
pub struct KsvdState {
    /// Sample dimension.
    pub d: usize,
    /// Atoms [K, d].
    pub atoms: Vec<f64>,
    /// Samples [n, d].
    pub samples: Vec<f64>,
    /// Slots per sample.
    pub k: usize,
    /// [n, k] atom indices, −1 for empty.
    pub indices: Vec<i32>,
    /// [n, k] coefficients.
    pub values: Vec<f64>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// ‖a − b‖: how far an iterate moved.
fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

impl KsvdState {
    /// Number of atoms.
    pub fn n_atoms(&self) -> usize {
        self.atoms.len() / self.d
    }

    /// Number of samples.
    pub fn n_samples(&self) -> usize {
        self.samples.len() / self.d
    }

    /// The residual Y − X·D [n, d].
    pub fn residual(&self) -> Vec<f64> {
        let d = self.d;
        let mut e = self.samples.clone();
        for s in 0..self.n_samples() {
            for t in 0..self.k {
                let j = self.indices[s * self.k + t];
                if j < 0 {
                    continue;
                }
                let x = self.values[s * self.k + t];
                let atom = &self.atoms[j as usize * d..(j as usize + 1) * d];
                for (ev, av) in e[s * d..(s + 1) * d].iter_mut().zip(atom) {
                    *ev -= x * av;
                }
            }
        }
        e
    }

    /// Users of every atom: (sample, slot) pairs in ascending sample order.
    pub fn users(&self) -> Vec<Vec<(usize, usize)>> {
        let mut users = vec![Vec::new(); self.n_atoms()];
        for s in 0..self.n_samples() {
            for t in 0..self.k {
                let j = self.indices[s * self.k + t];
                if j >= 0 {
                    users[j as usize].push((s, t));
                }
            }
        }
        users
    }

    /// Updates the atoms batch by batch, in the order given; returns usage counts.
    pub fn update(&mut self, batches: &[Vec<usize>]) -> Vec<u32> {
        let mut memory = vec![0.0; self.atoms.len()];
        self.update_with_memory(batches, &mut memory, 0.0)
    }

    /// [`KsvdState::update`] with the atom memory `memory` [K, d] of weight `gamma`, updated in
    /// place.
    pub fn update_with_memory(
        &mut self,
        batches: &[Vec<usize>],
        memory: &mut [f64],
        gamma: f64,
    ) -> Vec<u32> {
        self.update_batches(batches, memory, gamma, None)
    }

    /// [`KsvdState::update_with_memory`] with exactly `p` power steps per atom instead of the
    /// converged direction, as the GPU runs them: u ← (E_ΩᵀE_Ω·u + γ·m)/‖…‖ from u = d_j; the
    /// last step's unnormalised product becomes the memory; the atom is the last iterate facing
    /// d_j, or d_j when that product is zero (p = 0 only refits the coefficients). So the GPU
    /// can be checked at the step counts it runs, unconverged atoms included.
    pub fn update_with_power_steps(
        &mut self,
        batches: &[Vec<usize>],
        memory: &mut [f64],
        gamma: f64,
        p: usize,
    ) -> Vec<u32> {
        self.update_batches(batches, memory, gamma, Some(p))
    }

    fn update_batches(
        &mut self,
        batches: &[Vec<usize>],
        memory: &mut [f64],
        gamma: f64,
        steps: Option<usize>,
    ) -> Vec<u32> {
        let d = self.d;
        let users = self.users();
        let mut e = self.residual();
        for batch in batches {
            // Jacobi: every atom of the batch sees the same residual.
            let updates: Vec<(usize, Vec<f64>, Vec<f64>)> = batch
                .iter()
                .map(|&j| {
                    let m = &mut memory[j * d..(j + 1) * d];
                    // Without memory, the plain top singular pair (the memory is left alone).
                    let (atom, coefficients) = match steps {
                        Some(p) => self.power_steps(j, &users[j], &e, m, gamma, p),
                        None if gamma == 0.0 => self.rank_one(j, &users[j], &e),
                        None => self.rank_one_with_memory(j, &users[j], &e, m, gamma),
                    };
                    (j, atom, coefficients)
                })
                .collect();
            for (j, atom, coefficients) in updates {
                let old = self.atoms[j * d..(j + 1) * d].to_vec();
                for (&(s, t), &x_new) in users[j].iter().zip(&coefficients) {
                    let x_old = self.values[s * self.k + t];
                    for c in 0..d {
                        e[s * d + c] += x_old * old[c] - x_new * atom[c];
                    }
                    self.values[s * self.k + t] = x_new;
                }
                self.atoms[j * d..(j + 1) * d].copy_from_slice(&atom);
            }
        }
        users.iter().map(|u| u.len() as u32).collect()
    }

    /// Rows of E_Ω for atom j: e_s + x_s·d_j for each user.
    fn rows_of(&self, j: usize, users: &[(usize, usize)], e: &[f64]) -> Vec<Vec<f64>> {
        let d = self.d;
        let dj = &self.atoms[j * d..(j + 1) * d];
        users
            .iter()
            .map(|&(s, t)| {
                let x = self.values[s * self.k + t];
                (0..d).map(|c| e[s * d + c] + x * dj[c]).collect()
            })
            .collect()
    }

    /// The atom with memory: the fixed point u of u = (E_ΩᵀE_Ω·u + γ·m)/‖…‖ from d_j, the new
    /// memory E_ΩᵀE_Ω·u + γ·m (written to `m`), and the coefficients E_Ω·u. A zero direction
    /// keeps d_j.
    fn rank_one_with_memory(
        &self,
        j: usize,
        users: &[(usize, usize)],
        e: &[f64],
        m: &mut [f64],
        gamma: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let d = self.d;
        let dj = self.atoms[j * d..(j + 1) * d].to_vec();
        let rows = self.rows_of(j, users, e);
        let step = |u: &[f64]| -> Vec<f64> { power_step(&rows, u, m, gamma) };
        let mut u = dj.clone();
        let mut w = step(&u);
        for _ in 0..200_000 {
            let norm = dot(&w, &w).sqrt();
            if norm == 0.0 || !norm.is_finite() {
                m.copy_from_slice(&w);
                return (dj.clone(), rows.iter().map(|r| dot(r, &dj)).collect());
            }
            let next: Vec<f64> = w.iter().map(|x| x / norm).collect();
            let moved = distance(&next, &u);
            u = next;
            w = step(&u);
            if moved < 1e-14 {
                break;
            }
        }
        m.copy_from_slice(&w);
        if dot(&u, &dj) < 0.0 {
            u.iter_mut().for_each(|x| *x = -*x);
        }
        let coefficients = rows.iter().map(|r| dot(r, &u)).collect();
        (u, coefficients)
    }

    /// p power steps u ← (E_ΩᵀE_Ω·u + γ·m)/‖…‖ from u = d_j, as the GPU runs them: the last
    /// step's unnormalised product becomes the memory `m`; the atom is the last iterate facing
    /// d_j, or d_j when that product is zero (or p = 0, which only refits the coefficients); the
    /// coefficients are E_Ω·d_new. An intermediate zero product stays zero, as on the GPU.
    fn power_steps(
        &self,
        j: usize,
        users: &[(usize, usize)],
        e: &[f64],
        m: &mut [f64],
        gamma: f64,
        p: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let d = self.d;
        let dj = self.atoms[j * d..(j + 1) * d].to_vec();
        let rows = self.rows_of(j, users, e);
        let coefficients_for = |u: &[f64]| rows.iter().map(|r| dot(r, u)).collect::<Vec<f64>>();
        let mut u = dj.clone();
        for step in 0..p {
            let w = power_step(&rows, &u, m, gamma);
            let norm = dot(&w, &w).sqrt();
            if step + 1 == p {
                m.copy_from_slice(&w);
                if norm == 0.0 {
                    return (dj.clone(), coefficients_for(&dj));
                }
                let sign = if dot(&w, &dj) < 0.0 { -1.0 } else { 1.0 };
                u = w.iter().map(|x| sign * x / norm).collect();
            } else if norm > 0.0 {
                u = w.iter().map(|x| x / norm).collect();
            } else {
                u = w;
            }
        }
        let coefficients = coefficients_for(&u);
        (u, coefficients)
    }

    /// The best rank-1 approximation of E_Ω for atom j: new atom and new coefficients.
    fn rank_one(&self, j: usize, users: &[(usize, usize)], e: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let d = self.d;
        let dj = &self.atoms[j * d..(j + 1) * d];
        let rows = self.rows_of(j, users, e);
        let m = rows.len();
        let coefficients_for = |u: &[f64]| rows.iter().map(|r| dot(r, u)).collect::<Vec<f64>>();
        if m == 0 {
            return (dj.to_vec(), Vec::new());
        }
        // Power method to convergence on the smaller of E_Ω·E_Ωᵀ (m×m) and E_Ωᵀ·E_Ω (d×d).
        let mut u: Vec<f64> = if m <= d {
            let gram: Vec<f64> = (0..m * m)
                .map(|idx| dot(&rows[idx / m], &rows[idx % m]))
                .collect();
            let v = top_eigenvector(&gram, m, coefficients_for(dj));
            (0..d)
                .map(|c| rows.iter().zip(&v).map(|(r, vs)| r[c] * vs).sum())
                .collect()
        } else {
            let mut cov = vec![0.0; d * d];
            for r in &rows {
                for a in 0..d {
                    for b in 0..d {
                        cov[a * d + b] += r[a] * r[b];
                    }
                }
            }
            top_eigenvector(&cov, d, dj.to_vec())
        };
        let norm = dot(&u, &u).sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return (dj.to_vec(), coefficients_for(dj));
        }
        u.iter_mut().for_each(|x| *x /= norm);
        if dot(&u, dj) < 0.0 {
            u.iter_mut().for_each(|x| *x = -*x);
        }
        let coefficients = coefficients_for(&u);
        (u, coefficients)
    }
}

/// One unnormalised power step with memory: E_ΩᵀE_Ω·u + γ·m, E_Ω given by its rows.
fn power_step(rows: &[Vec<f64>], u: &[f64], m: &[f64], gamma: f64) -> Vec<f64> {
    let mut w: Vec<f64> = m.iter().map(|&x| gamma * x).collect();
    for r in rows {
        let v = dot(r, u);
        w.iter_mut().zip(r).for_each(|(o, x)| *o += v * x);
    }
    w
}

/// Top eigenvector of the symmetric positive semi-definite n×n matrix `m` by the power method,
/// started from `start` (or a fixed vector if that is zero), iterated until the direction moves
/// by less than 1e-14 or 200 000 steps.
fn top_eigenvector(m: &[f64], n: usize, start: Vec<f64>) -> Vec<f64> {
    let normalised = |v: Vec<f64>| -> Option<Vec<f64>> {
        let norm = dot(&v, &v).sqrt();
        (norm > 0.0 && norm.is_finite()).then(|| v.into_iter().map(|x| x / norm).collect())
    };
    let mut v = normalised(start)
        .or_else(|| normalised((0..n).map(|i| 1.0 + i as f64 / n as f64).collect()))
        .unwrap_or_else(|| vec![0.0; n]);
    for _ in 0..200_000 {
        let w: Vec<f64> = (0..n).map(|a| dot(&m[a * n..(a + 1) * n], &v)).collect();
        let Some(w) = normalised(w) else {
            return vec![0.0; n];
        };
        let moved = distance(&w, &v);
        v = w;
        if moved < 1e-14 {
            break;
        }
    }
    v
}
