//! Atom replacement (`shaders/reduce.wgsl`): re-seeding atoms with the worst-represented samples
//! and purging near-duplicate atoms, on the GPU from the batch already there.

use bytemuck::{Pod, Zeroable};

use super::buffer::{row_windows, Window};
use super::layout::{bind_windows, compute_pipeline, dispatch, groups};
#[cfg(any(test, feature = "testing"))]
use super::power::CodedBatch;
use super::{GemmParams, Gpu, Matrix};
use crate::error::{Error, Result};

/// reduce.wgsl after the helpers it includes (see shaders/include/workgroup.wgsl).
const SHADER: &str = concat!(
    include_str!("../../shaders/include/workgroup.wgsl"),
    include_str!("../../shaders/reduce.wgsl")
);
const WG: u32 = 64;

/// Mirrors `Params` in reduce.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    n: u32,
    d: u32,
    k: u32,
    n_atoms: u32,
    threshold: f32,
    atom_first: u32,
    atom_end: u32,
    atom_lead: u32,
}

/// `base` once per row window, each with its window's atoms.
fn per_window(windows: &[(usize, usize, Window)], base: Params) -> Vec<Params> {
    windows
        .iter()
        .map(|&(first, end, window)| Params {
            atom_first: first as u32,
            atom_end: end as u32,
            atom_lead: window.first,
            ..base
        })
        .collect()
}

pub(crate) struct ReduceKernels {
    residual_norms: wgpu::ComputePipeline,
    mark_duplicates: wgpu::ComputePipeline,
    coherence: wgpu::ComputePipeline,
    #[cfg(any(test, feature = "testing"))]
    remove_users: wgpu::ComputePipeline,
    reseed: wgpu::ComputePipeline,
}

impl ReduceKernels {
    pub(crate) fn new(gpu: &Gpu) -> Result<Self> {
        gpu.scoped(|| {
            let module = super::layout::shader_module(gpu, "reduce.wgsl", SHADER);
            let c = [("WG", WG as f64)];
            Ok(Self {
                residual_norms: compute_pipeline(gpu, &module, "residual_norms", &c),
                mark_duplicates: compute_pipeline(gpu, &module, "mark_duplicates", &c),
                coherence: compute_pipeline(gpu, &module, "coherence", &c),
                #[cfg(any(test, feature = "testing"))]
                remove_users: compute_pipeline(gpu, &module, "remove_users", &c),
                reseed: compute_pipeline(gpu, &module, "reseed", &c),
            })
        })
    }
}

/// An atom given a new value, and the sample it was seeded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reseeded {
    /// The atom.
    pub atom: usize,
    /// The sample (row of the batch) whose normalised value it now holds.
    pub sample: usize,
}

impl Gpu {
    pub(crate) fn reduce_kernels(&self) -> Result<&ReduceKernels> {
        self.cached(&self.inner.reduce, ReduceKernels::new)
    }

    #[cfg(any(test, feature = "testing"))]
    /// Re-seeds the atoms `which` with the normalised samples of `batch` that are worst
    /// represented (largest ‖y − x·D‖², each sample at most once), as KSVD-Box does for unused
    /// atoms. Codes using those atoms are removed first (their part goes back into the residual).
    /// Returns the atoms replaced, in ascending order; an atom stays as it was when no sample has
    /// any residual left.
    pub fn reseed_atoms(
        &self,
        atoms: &mut Matrix,
        batch: &mut CodedBatch,
        which: &[usize],
    ) -> Result<Vec<Reseeded>> {
        let n_atoms = atoms.rows();
        let mut flags = vec![0u32; n_atoms];
        for &j in which {
            if j >= n_atoms {
                return Err(Error::InvalidArgument(format!(
                    "re-seeding atom {j} of a dictionary of {n_atoms}"
                )));
            }
            flags[j] = 1;
        }
        let flagged: Vec<usize> = (0..n_atoms).filter(|&j| flags[j] != 0).collect();
        let flags = self.upload(&flags)?;
        self.replace_flagged(atoms, batch, &flags, &flagged)
    }

    #[cfg(any(test, feature = "testing"))]
    /// Purges near-duplicates: atom j is re-seeded (as in [`Gpu::reseed_atoms`]) when
    /// |cos(d_i, d_j)| > `threshold` for an atom i with more users (`usage`, e.g. from
    /// [`Gpu::ksvd_update`]; equal usage: the lower index is kept). KSVD-Box uses 0.99.
    pub fn purge_duplicates(
        &self,
        atoms: &mut Matrix,
        batch: &mut CodedBatch,
        usage: &[u32],
        threshold: f32,
    ) -> Result<Vec<Reseeded>> {
        let (flags, flagged) = self.mark_duplicates(atoms, usage, threshold)?;
        if flagged.is_empty() {
            return Ok(Vec::new());
        }
        self.replace_flagged(atoms, batch, &flags, &flagged)
    }

    /// The atoms the epoch-end purge re-seeds: those whose |cos| with a more used atom exceeds
    /// `threshold`. Changes nothing.
    pub fn duplicate_atoms(
        &self,
        atoms: &Matrix,
        usage: &[u32],
        threshold: f32,
    ) -> Result<Vec<usize>> {
        Ok(self.mark_duplicates(atoms, usage, threshold)?.1)
    }

    /// Flags (on the device) and indices of the atoms that duplicate a more used atom.
    fn mark_duplicates(
        &self,
        atoms: &Matrix,
        usage: &[u32],
        threshold: f32,
    ) -> Result<(super::GpuBuffer<u32>, Vec<usize>)> {
        let n_atoms = atoms.rows();
        if usage.len() != n_atoms {
            return Err(Error::InvalidArgument(format!(
                "usage holds {} counts for {n_atoms} atoms",
                usage.len()
            )));
        }
        if !(threshold > 0.0 && threshold < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "duplicate threshold {threshold} must lie in (0, 1)"
            )));
        }
        let usage = self.upload(usage)?;
        let flags = self.zeroed::<u32>(n_atoms)?;
        let kernels = self.reduce_kernels()?;
        let encoder = self.record_gram_pass(
            "duplicate search over the atoms",
            atoms,
            threshold,
            ("mark_duplicates", &kernels.mark_duplicates),
            &[(6, &flags.buffer), (10, &usage.buffer)],
        )?;
        // The flags come back (K words) so the re-seeding can be sized, and skipped when none.
        let flagged = self
            .submit_and_read(encoder, &flags, n_atoms)?
            .iter()
            .enumerate()
            .filter(|(_, &f)| f != 0)
            .map(|(j, _)| j)
            .collect();
        Ok((flags, flagged))
    }

    /// Per atom, the largest |cos| with any other atom (atoms are unit norm): the coherence
    /// profile of the dictionary. One GEMM and one pass over the Gram matrix.
    pub fn coherence(&self, atoms: &Matrix) -> Result<Vec<f32>> {
        let n_atoms = atoms.rows();
        if n_atoms == 0 {
            return Ok(Vec::new());
        }
        let out = self.zeroed::<f32>(n_atoms)?;
        let kernels = self.reduce_kernels()?;
        let encoder = self.record_gram_pass(
            "coherence over the atoms",
            atoms,
            0.0,
            ("coherence", &kernels.coherence),
            &[(7, &out.buffer)],
        )?;
        self.submit_and_read(encoder, &out, n_atoms)
    }

    /// Records G = D·Dᵀ and one invocation per atom of `pipeline` over its row of G (bound at
    /// 9), with `extra` bindings: the shape of both the duplicate search and the coherence.
    fn record_gram_pass(
        &self,
        what: &str,
        atoms: &Matrix,
        threshold: f32,
        (kernel, pipeline): (&'static str, &wgpu::ComputePipeline),
        extra: &[(u32, &wgpu::Buffer)],
    ) -> Result<wgpu::CommandEncoder> {
        let n_atoms = atoms.rows();
        self.check_loop_budget(what, n_atoms as u64 + 8)?;
        let mut gram = self.zeros(n_atoms, n_atoms)?;
        let mut encoder = self.encoder(what);
        self.record_gemm(&mut encoder, &GemmParams::abt(), atoms, atoms, &mut gram)?;
        // G is read one window of rows per dispatch: at K = 16 384 it is 1 GiB.
        let windows = row_windows(self, n_atoms, n_atoms);
        let base = Params {
            n: 0,
            d: atoms.cols() as u32,
            k: 0,
            n_atoms: n_atoms as u32,
            threshold,
            ..Params::zeroed()
        };
        let records = per_window(&windows, base);
        let uniforms = self.uniform_records("reduce params", &records)?;
        self.scoped(|| {
            let bind_groups = bind_windows(
                self,
                pipeline,
                &uniforms,
                &windows,
                &[(9, &gram.data.buffer)],
                extra,
            );
            let runs = bind_groups.iter().zip(&windows);
            let runs = runs
                .map(|(group, &(first, end, _))| (group, groups(self, end - first, WG as usize)));
            dispatch(self, &mut encoder, kernel, pipeline, runs);
            Ok(())
        })?;
        Ok(encoder)
    }

    #[cfg(any(test, feature = "testing"))]
    /// Removes the `flagged` atoms (ascending, also marked in `flags`) from the codes and
    /// re-seeds them.
    fn replace_flagged(
        &self,
        atoms: &mut Matrix,
        batch: &mut CodedBatch,
        flags: &super::GpuBuffer<u32>,
        flagged: &[usize],
    ) -> Result<Vec<Reseeded>> {
        let n_atoms = atoms.rows();
        if n_atoms != batch.n_atoms() || atoms.cols() != batch.dim() {
            return Err(Error::ShapeMismatch {
                op: "atom replacement (atoms vs the coded batch's dictionary)".into(),
                left: atoms.shape(),
                right: crate::error::shape(batch.n_atoms(), batch.dim()),
            });
        }
        let (n, d) = (batch.len(), batch.dim());
        let kernels = self.reduce_kernels()?;
        let norms = self.zeroed::<f32>(n.max(1))?;
        let chosen = self.zeroed::<u32>(n_atoms)?;
        if flagged.is_empty() {
            return Ok(Vec::new());
        }
        let mut encoder = self.encoder("reseed atoms");
        // The residual must match the current atoms and codes.
        self.record_batch_residual(&mut encoder, atoms, batch)?;
        // The atoms are bound one window of rows at a time: removal takes one dispatch per
        // window.
        let windows = row_windows(self, n_atoms, d);
        let base = Params {
            n: n as u32,
            d: d as u32,
            k: batch.slots() as u32,
            n_atoms: n_atoms as u32,
            ..Params::zeroed()
        };
        let uniforms = self.uniform_records("reduce params", &per_window(&windows, base))?;
        self.scoped(|| {
            let (_, residual, indices, values) = batch.buffers();
            let remove = bind_windows(
                self,
                &kernels.remove_users,
                &uniforms,
                &windows,
                &[(2, &atoms.data.buffer)],
                &[(3, residual), (4, indices), (5, values), (6, &flags.buffer)],
            );
            let per_sample = groups(self, n, 1);
            let runs = remove.iter().map(|group| (group, per_sample));
            dispatch(
                self,
                &mut encoder,
                "remove_users",
                &kernels.remove_users,
                runs,
            );
            Ok(())
        })?;
        self.record_row_energy(&mut encoder, &batch.residual, &norms)?;
        let seeds = Seeds {
            samples: &batch.samples,
            norms: &norms,
            flags,
            chosen: &chosen,
        };
        self.record_reseed(&mut encoder, atoms, &seeds, flagged)?;
        let chosen = self.submit_and_read(encoder, &chosen, n_atoms)?;
        Ok(reseeded(&chosen))
    }

    /// Records ‖e_s‖² of every row of `residual` [n, d] into `energy` [n] (`residual_norms`).
    pub(crate) fn record_row_energy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        residual: &Matrix,
        energy: &super::GpuBuffer<f32>,
    ) -> Result<()> {
        let (n, d) = (residual.rows(), residual.cols());
        let kernels = self.reduce_kernels()?;
        let params = Params {
            n: n as u32,
            d: d as u32,
            ..Params::zeroed()
        };
        let uniforms = self.uniform_records("row energy params", &[params])?;
        self.scoped(|| {
            let group = super::layout::bind(
                self,
                &kernels.residual_norms,
                &[
                    (0, uniforms.buffer()),
                    (3, &residual.data.buffer),
                    (7, &energy.buffer),
                ],
            );
            let runs = [(&group, groups(self, n, 1))];
            dispatch(
                self,
                encoder,
                "residual_norms",
                &kernels.residual_norms,
                runs,
            );
            Ok(())
        })
    }

    /// Records `reseed`: the `flagged` atoms (ascending; marked in `seeds.flags`), in order,
    /// each take the normalised row of `seeds.samples` with the largest `seeds.norms` not yet
    /// taken (taken norms become −1); `seeds.chosen` [K] gets each atom's sample or u32::MAX.
    /// The atoms are walked one window of rows at a time and, under a driver's loop cap, in
    /// ranges holding few enough flagged atoms for one invocation: one dispatch per range.
    pub(crate) fn record_reseed(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        atoms: &Matrix,
        seeds: &Seeds,
        flagged: &[usize],
    ) -> Result<()> {
        let (n_atoms, d, n) = (atoms.rows(), atoms.cols(), seeds.samples.rows());
        // Per flagged atom the workgroup scans every sample and writes one row.
        let per_atom = (n.div_ceil(WG as usize) + 3 * d.div_ceil(WG as usize) + 20) as u64;
        let windows = row_windows(self, n_atoms, d);
        let cap = self.limits().max_loop_iterations;
        let mut ranges = Vec::new();
        let mut records = Vec::new();
        for &(first, end, window) in &windows {
            for (r0, r1) in reseed_ranges(first, end, flagged, per_atom, cap) {
                self.check_loop_budget(
                    &format!("re-seeding atoms {r0}..{r1} from {n} samples"),
                    (r1 - r0) as u64 + per_atom * count_in(flagged, r0, r1) as u64,
                )?;
                ranges.push((r0, r1, window));
                records.push(Params {
                    n: n as u32,
                    d: d as u32,
                    n_atoms: n_atoms as u32,
                    atom_first: r0 as u32,
                    atom_end: r1 as u32,
                    atom_lead: window.first + ((r0 - first) * d) as u32,
                    ..Params::zeroed()
                });
            }
        }
        let kernels = self.reduce_kernels()?;
        let uniforms = self.uniform_records("reseed params", &records)?;
        self.scoped(|| {
            let groups = bind_windows(
                self,
                &kernels.reseed,
                &uniforms,
                &ranges,
                &[(2, &atoms.data.buffer)],
                &[
                    (1, &seeds.samples.data.buffer),
                    (6, &seeds.flags.buffer),
                    (7, &seeds.norms.buffer),
                    (8, &seeds.chosen.buffer),
                ],
            );
            let runs = groups.iter().map(|group| (group, (1, 1)));
            dispatch(self, encoder, "reseed", &kernels.reseed, runs);
            Ok(())
        })
    }
}

/// What `reseed` draws from: the samples [n, d], their residual energies (consumed: taken ones
/// become −1), the atoms' flags [K] and where each atom's chosen sample goes [K].
pub(crate) struct Seeds<'a> {
    pub(crate) samples: &'a Matrix,
    pub(crate) norms: &'a super::GpuBuffer<f32>,
    pub(crate) flags: &'a super::GpuBuffer<u32>,
    pub(crate) chosen: &'a super::GpuBuffer<u32>,
}

/// The atoms `reseed` gave a sample, from its `chosen` [K].
pub(crate) fn reseeded(chosen: &[u32]) -> Vec<Reseeded> {
    chosen
        .iter()
        .enumerate()
        .filter(|(_, &s)| s != u32::MAX)
        .map(|(atom, &s)| Reseeded {
            atom,
            sample: s as usize,
        })
        .collect()
}

/// Flagged atoms (ascending) in `r0..r1`.
fn count_in(flagged: &[usize], r0: usize, r1: usize) -> usize {
    flagged.partition_point(|&j| j < r1) - flagged.partition_point(|&j| j < r0)
}

/// `first..end` cut into consecutive ranges whose walk (one step per atom, `per_atom` per flagged
/// one) stays under `cap`; the whole range without a cap.
fn reseed_ranges(
    first: usize,
    end: usize,
    flagged: &[usize],
    per_atom: u64,
    cap: Option<u64>,
) -> Vec<(usize, usize)> {
    let Some(cap) = cap else {
        return vec![(first, end)];
    };
    let mut ranges = Vec::new();
    let mut r0 = first;
    let mut cost = 0;
    for j in first..end {
        let step = 1 + if flagged.binary_search(&j).is_ok() {
            per_atom
        } else {
            0
        };
        if cost + step > cap && j > r0 {
            ranges.push((r0, j));
            (r0, cost) = (j, 0);
        }
        cost += step;
    }
    ranges.push((r0, end));
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::gpu::uniform_layout::params_mirror_test!(Params {
        n,
        d,
        k,
        n_atoms,
        threshold,
        atom_first,
        atom_end,
        atom_lead
    });
}
