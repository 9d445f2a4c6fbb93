//! Splitting atoms (`shaders/split.wgsl`; twin [`crate::reference::split`]): the trainer's
//! epoch-end re-seeding of rare and duplicate atoms, on the GPU from the coded batch already
//! there. Only per-atom figures come back (user counts, residual loads, whether each split
//! held, the samples chosen); the codes and the residual stay on the device.

use std::collections::VecDeque;

use bytemuck::{Pod, Zeroable};

use super::layout::{bind, compute_pipeline, dispatch, groups};
use super::power::CodedBatch;
use super::reduce::{reseeded, Seeds};
use super::{Gpu, GpuBuffer, Matrix};
use crate::error::{Error, Result};

/// split.wgsl after the helpers it includes (see shaders/include/workgroup.wgsl).
const SHADER: &str = concat!(
    include_str!("../../shaders/include/workgroup.wgsl"),
    include_str!("../../shaders/split.wgsl")
);
const WG: u32 = 64;
/// Users one invocation walks: an atom with more is cut into chunks summed per candidate, so
/// no loop nears a driver's cap and a popular atom is spread over more invocations.
const CHUNK: usize = 1024;
/// Power steps towards a candidate's top residual direction (the twin's count).
pub const POWER_STEPS: usize = 30;

/// Mirrors `Params` in split.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Params {
    d: u32,
    n_atoms: u32,
    n_cands: u32,
    n_chunks: u32,
    n_users: u32,
    chunk: u32,
    slices: u32,
    _pad0: u32,
}

pub(crate) struct SplitKernels {
    load: wgpu::ComputePipeline,
    start: wgpu::ComputePipeline,
    project: wgpu::ComputePipeline,
    accumulate: wgpu::ComputePipeline,
    normalise: wgpu::ComputePipeline,
    halves: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
}

impl SplitKernels {
    pub(crate) fn new(gpu: &Gpu) -> Result<Self> {
        gpu.scoped(|| {
            let module = super::layout::shader_module(gpu, "split.wgsl", SHADER);
            let c = [("WG", WG as f64)];
            let pipeline = |entry| compute_pipeline(gpu, &module, entry, &c);
            Ok(Self {
                load: pipeline("split_load"),
                start: pipeline("split_start"),
                project: pipeline("split_project"),
                accumulate: pipeline("split_accumulate"),
                normalise: pipeline("split_normalise"),
                halves: pipeline("split_halves"),
                finish: pipeline("split_finish"),
            })
        })
    }
}

/// The batch's residual energies (on the device) and, per atom, its users and their load.
struct Loads {
    /// [n] ‖e_s‖².
    energy: GpuBuffer<f32>,
    /// [K + 1] start of each atom's user list.
    user_start: Vec<u32>,
    /// [K] Σ ‖e_s‖² over each atom's users.
    load: Vec<f64>,
}

impl Loads {
    fn users(&self, j: usize) -> usize {
        (self.user_start[j + 1] - self.user_start[j]) as usize
    }

    /// The atoms that may be split for the `flagged` ones, in the order they are tried: not
    /// flagged, at least two users, some residual; most load first (ties: lower index).
    fn ranked(&self, flagged: &[usize]) -> Vec<usize> {
        let mut ranked: Vec<usize> = (0..self.load.len())
            .filter(|&j| {
                flagged.binary_search(&j).is_err() && self.users(j) >= 2 && self.load[j] > 0.0
            })
            .collect();
        ranked.sort_by(|&a, &b| self.load[b].total_cmp(&self.load[a]).then(a.cmp(&b)));
        ranked
    }
}

/// One round's candidates and their users cut into chunks, as split.wgsl's `plan` reads them:
/// per candidate (first user, users, first chunk, chunks), then per chunk (candidate, first
/// user, users, first projection).
struct RoundPlan {
    words: Vec<[u32; 4]>,
    n_cands: usize,
    n_chunks: usize,
    n_users: usize,
    /// The most users and the most chunks of one candidate.
    most_users: usize,
    most_chunks: usize,
}

impl RoundPlan {
    fn new(user_start: &[u32], round: &[usize]) -> Self {
        let (mut cands, mut chunks) = (Vec::new(), Vec::new());
        let mut n_users = 0u32;
        for (c, &a) in round.iter().enumerate() {
            let (first, end) = (user_start[a], user_start[a + 1]);
            let chunk_first = chunks.len() as u32;
            for u0 in (first..end).step_by(CHUNK) {
                let len = (end - u0).min(CHUNK as u32);
                chunks.push([c as u32, u0, len, n_users]);
                n_users += len;
            }
            cands.push([
                first,
                end - first,
                chunk_first,
                chunks.len() as u32 - chunk_first,
            ]);
        }
        let most_users = cands.iter().map(|c| c[1] as usize).max().unwrap_or(0);
        let most_chunks = cands.iter().map(|c| c[3] as usize).max().unwrap_or(0);
        let (n_cands, n_chunks) = (cands.len(), chunks.len());
        cands.extend(chunks);
        Self {
            words: cands,
            n_cands,
            n_chunks,
            n_users: n_users as usize,
            most_users,
            most_chunks,
        }
    }
}

/// One round's device buffers: the atoms to split, the iterates and partial sums, and the
/// halves with whether each split held.
struct Round {
    plan: GpuBuffer<[u32; 4]>,
    sources: GpuBuffer<f32>,
    dir: GpuBuffer<f32>,
    proj: GpuBuffer<f32>,
    partial: GpuBuffer<f32>,
    tally: GpuBuffer<u32>,
    halves: GpuBuffer<f32>,
}

impl Gpu {
    pub(crate) fn split_kernels(&self) -> Result<&SplitKernels> {
        self.cached(&self.inner.split, SplitKernels::new)
    }

    /// Re-seeds the `flagged` atoms (ascending, distinct) of `atoms` [K, d] from the coded
    /// `batch` by the rule of [`crate::reference::split::split_atoms`]: each in turn takes one
    /// half of the next atom whose users carry the most residual (split along their top residual
    /// direction, the other half replacing that atom), or, once no atom is left to split, the
    /// normalised sample with the largest residual not yet taken. The batch's residual is first
    /// recomputed for the current atoms. The changed atoms' rows of `memory` [K, d] (the atom
    /// memory of [`Gpu::ksvd_update_with_memory`]) are cleared: their old users are not their
    /// new ones. Returns the atoms changed, ascending.
    ///
    /// Reads back per-atom figures only, in a few small submissions: user counts and loads, then
    /// per round of candidates (one round unless some split fails) whether each split held, and
    /// the samples chosen.
    pub fn split_atoms(
        &self,
        atoms: &mut Matrix,
        memory: &Matrix,
        batch: &mut CodedBatch,
        flagged: &[usize],
    ) -> Result<Vec<usize>> {
        check_split(atoms, memory, batch, flagged)?;
        if flagged.is_empty() || batch.is_empty() {
            return Ok(Vec::new());
        }
        let loads = self.split_loads(atoms, batch)?;
        let ranked = loads.ranked(flagged);
        let mut pending: VecDeque<usize> = flagged.iter().copied().collect();
        let mut changed = Vec::new();
        let mut next = 0;
        while !pending.is_empty() && next < ranked.len() {
            let round = &ranked[next..(next + pending.len()).min(ranked.len())];
            next += round.len();
            let (buffers, holds) = self.split_round(atoms, batch, &loads, round)?;
            let mut encoder = self.encoder("write the split atoms");
            for (i, &source) in round.iter().enumerate() {
                if holds[i] == 0 {
                    continue;
                }
                let target = pending
                    .pop_front()
                    .expect("no more candidates than pending atoms");
                copy_row(
                    &mut encoder,
                    &buffers.halves,
                    2 * i,
                    &atoms.data,
                    target,
                    atoms.cols(),
                );
                copy_row(
                    &mut encoder,
                    &buffers.halves,
                    2 * i + 1,
                    &atoms.data,
                    source,
                    atoms.cols(),
                );
                changed.extend([target, source]);
            }
            self.submit(encoder)?;
        }
        if !pending.is_empty() {
            let pending: Vec<usize> = pending.into();
            changed.extend(self.reseed_from_samples(atoms, batch, &loads.energy, &pending)?);
        }
        changed.sort_unstable();
        let bytes = (atoms.cols() * 4) as u64;
        let mut encoder = self.encoder("clear the changed atoms' memory");
        for &j in &changed {
            encoder.clear_buffer(&memory.data.buffer, j as u64 * bytes, Some(bytes));
        }
        self.submit(encoder)?;
        Ok(changed)
    }

    /// The batch's residual for the current atoms, its energies and the per-atom loads.
    fn split_loads(&self, atoms: &Matrix, batch: &CodedBatch) -> Result<Loads> {
        let (n, d, n_atoms) = (batch.len(), batch.dim(), batch.n_atoms());
        let kernels = self.split_kernels()?;
        let energy = self.zeroed::<f32>(n)?;
        let mut params = Params {
            d: d as u32,
            n_atoms: n_atoms as u32,
            chunk: CHUNK as u32,
            ..Params::zeroed()
        };
        let mut encoder = self.encoder("split: residual and energies");
        self.record_batch_residual(&mut encoder, atoms, batch)?;
        self.record_row_energy(&mut encoder, &batch.residual, &energy)?;
        let user_start = self.submit_and_read(encoder, &batch.codes.user_start, n_atoms + 1)?;
        // Each atom's users in slices of CHUNK, one invocation each; the host adds the slices.
        let most = (0..n_atoms)
            .map(|j| user_start[j + 1] - user_start[j])
            .max()
            .unwrap_or(0) as usize;
        params.slices = most.div_ceil(CHUNK).max(1) as u32;
        let slices = params.slices as usize;
        let load = self.zeroed::<f32>(n_atoms * slices)?;
        let uniforms = self.uniform_records("split params", &[params])?;
        let mut encoder = self.encoder("split: loads");
        self.scoped(|| {
            let group = bind(
                self,
                &kernels.load,
                &[
                    (0, uniforms.buffer()),
                    (2, &energy.buffer),
                    (3, &batch.codes.users.buffer),
                    (12, &batch.codes.user_start.buffer),
                    (13, &load.buffer),
                ],
            );
            let runs = [(&group, groups(self, n_atoms * slices, WG as usize))];
            dispatch(self, &mut encoder, "split_load", &kernels.load, runs);
            Ok(())
        })?;
        let load = self
            .submit_and_read(encoder, &load, n_atoms * slices)?
            .chunks(slices)
            .map(|s| s.iter().map(|&v| v as f64).sum())
            .collect();
        Ok(Loads {
            energy,
            user_start,
            load,
        })
    }

    /// Splits the atoms `round` (in parallel); returns the round's buffers (the halves: rows
    /// 2i and 2i + 1 for candidate i) and, per candidate, 1 where its split held.
    fn split_round(
        &self,
        atoms: &Matrix,
        batch: &CodedBatch,
        loads: &Loads,
        round: &[usize],
    ) -> Result<(Round, Vec<u32>)> {
        let d = atoms.cols();
        let plan = RoundPlan::new(&loads.user_start, round);
        let log = |v: usize| (usize::BITS - v.leading_zeros()) as u64;
        let per_dim = d.div_ceil(WG as usize) as u64;
        self.check_loop_budget(
            &format!("splitting {} atoms at d = {d}", plan.n_cands),
            [
                (plan.most_users.div_ceil(WG as usize) as u64 + log(WG as usize) + 2 * per_dim),
                d as u64 + log(plan.n_chunks),
                CHUNK as u64,
                3 * per_dim * plan.most_chunks as u64 + 2 * log(WG as usize),
            ]
            .into_iter()
            .max()
            .unwrap_or(0),
        )?;
        let c = plan.n_cands;
        let buffers = Round {
            plan: self.upload(&plan.words)?,
            sources: self.zeroed(c * d)?,
            dir: self.zeroed(c * d)?,
            proj: self.zeroed(plan.n_users.max(1))?,
            partial: self.zeroed(plan.n_chunks * 2 * d)?,
            tally: self.zeroed(c + 2 * plan.n_chunks)?,
            halves: self.zeroed(2 * c * d)?,
        };
        let params = Params {
            d: d as u32,
            n_atoms: atoms.rows() as u32,
            n_cands: c as u32,
            n_chunks: plan.n_chunks as u32,
            n_users: plan.n_users as u32,
            chunk: CHUNK as u32,
            slices: 0,
            _pad0: 0,
        };
        let uniforms = self.uniform_records("split params", &[params])?;
        let mut encoder = self.encoder("split atoms");
        for (i, &a) in round.iter().enumerate() {
            copy_row(&mut encoder, &atoms.data, a, &buffers.sources, i, d);
        }
        self.record_split_steps(
            &mut encoder,
            uniforms.buffer(),
            batch,
            loads,
            &buffers,
            &plan,
        )?;
        let holds = self.submit_and_read(encoder, &buffers.tally, c)?;
        Ok((buffers, holds))
    }

    /// Records the start, the power steps and the halves of one round.
    fn record_split_steps(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        uniforms: &wgpu::Buffer,
        batch: &CodedBatch,
        loads: &Loads,
        b: &Round,
        plan: &RoundPlan,
    ) -> Result<()> {
        let k = self.split_kernels()?;
        // Every binding of split.wgsl this round uses; each kernel is bound to those it reads.
        let resources = [
            (0, uniforms),
            (1, &batch.residual.data.buffer),
            (2, &loads.energy.buffer),
            (3, &batch.codes.users.buffer),
            (4, &batch.codes.values.buffer),
            (5, &b.plan.buffer),
            (6, &b.sources.buffer),
            (7, &b.dir.buffer),
            (8, &b.proj.buffer),
            (9, &b.partial.buffer),
            (10, &b.tally.buffer),
            (11, &b.halves.buffer),
        ];
        let group = |pipeline, used: &[u32]| {
            let entries: Vec<_> = resources
                .iter()
                .filter(|(binding, _)| used.contains(binding))
                .copied()
                .collect();
            bind(self, pipeline, &entries)
        };
        self.scoped(|| {
            let start = group(&k.start, &[0, 1, 2, 3, 5, 7, 10]);
            let project = group(&k.project, &[0, 1, 3, 5, 7, 8]);
            let accumulate = group(&k.accumulate, &[0, 1, 3, 5, 8, 9]);
            let normalise = group(&k.normalise, &[0, 5, 7, 9]);
            let halves = group(&k.halves, &[0, 1, 3, 4, 5, 6, 8, 9, 10]);
            let finish = group(&k.finish, &[0, 5, 9, 10, 11]);
            let d = batch.dim();
            let per_candidate = groups(self, plan.n_cands, 1);
            let per_user = groups(self, plan.n_users, WG as usize);
            let per_chunk_dim = groups(self, plan.n_chunks * d, WG as usize);
            let mut pass = self.passes(encoder, "split atoms");
            let mut dispatch = |kernel, pipeline, group, (x, y): (u32, u32)| {
                pass.set_pipeline(kernel, pipeline);
                pass.set_bind_group(group);
                pass.dispatch(x, y);
            };
            dispatch("split_start", &k.start, &start, per_candidate);
            for _ in 0..POWER_STEPS {
                dispatch("split_project", &k.project, &project, per_user);
                dispatch(
                    "split_accumulate",
                    &k.accumulate,
                    &accumulate,
                    per_chunk_dim,
                );
                dispatch("split_normalise", &k.normalise, &normalise, per_candidate);
            }
            dispatch("split_project", &k.project, &project, per_user);
            dispatch("split_halves", &k.halves, &halves, per_chunk_dim);
            dispatch("split_finish", &k.finish, &finish, per_candidate);
            Ok(())
        })
    }

    /// The `pending` atoms (ascending) re-seeded with the normalised samples of largest
    /// residual `energy` (consumed), each sample once; returns those given a sample.
    fn reseed_from_samples(
        &self,
        atoms: &Matrix,
        batch: &CodedBatch,
        energy: &GpuBuffer<f32>,
        pending: &[usize],
    ) -> Result<Vec<usize>> {
        let n_atoms = atoms.rows();
        let mut flags = vec![0u32; n_atoms];
        for &j in pending {
            flags[j] = 1;
        }
        let flags = self.upload(&flags)?;
        let chosen = self.zeroed::<u32>(n_atoms)?;
        let seeds = Seeds {
            samples: &batch.samples,
            norms: energy,
            flags: &flags,
            chosen: &chosen,
        };
        let mut encoder = self.encoder("reseed from samples");
        self.record_reseed(&mut encoder, atoms, &seeds, pending)?;
        let chosen = self.submit_and_read(encoder, &chosen, n_atoms)?;
        Ok(reseeded(&chosen).into_iter().map(|r| r.atom).collect())
    }
}

/// Records a copy of row `from` of `src` into row `to` of `dst`, rows of `d` f32.
fn copy_row(
    encoder: &mut wgpu::CommandEncoder,
    src: &GpuBuffer<f32>,
    from: usize,
    dst: &GpuBuffer<f32>,
    to: usize,
    d: usize,
) {
    let bytes = (d * 4) as u64;
    encoder.copy_buffer_to_buffer(
        &src.buffer,
        from as u64 * bytes,
        &dst.buffer,
        to as u64 * bytes,
        bytes,
    );
}

/// Atoms, memory and batch agree in shape; `flagged` is ascending, distinct and in range.
fn check_split(
    atoms: &Matrix,
    memory: &Matrix,
    batch: &CodedBatch,
    flagged: &[usize],
) -> Result<()> {
    for (what, other) in [
        (
            "the coded batch's dictionary",
            (batch.n_atoms(), batch.dim()),
        ),
        ("the atom memory", (memory.rows(), memory.cols())),
    ] {
        if (atoms.rows(), atoms.cols()) != other {
            return Err(Error::ShapeMismatch {
                op: format!("splitting atoms (atoms vs {what})"),
                left: atoms.shape(),
                right: crate::error::shape(other.0, other.1),
            });
        }
    }
    if let Some(&j) = flagged.iter().find(|&&j| j >= atoms.rows()) {
        return Err(Error::InvalidArgument(format!(
            "re-seeding atom {j} of a dictionary of {}",
            atoms.rows()
        )));
    }
    if flagged.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::InvalidArgument(
            "the atoms to re-seed must be ascending and distinct".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::gpu::uniform_layout::params_mirror_test!(Params {
        d,
        n_atoms,
        n_cands,
        n_chunks,
        n_users,
        chunk,
        slices
    });

    #[test]
    fn a_round_cuts_users_into_chunks() {
        // Atom 0: 3 users; atom 1: 2 500 (three chunks); atom 2: none.
        let user_start = [0, 3, 2503, 2503];
        let plan = RoundPlan::new(&user_start, &[1, 0]);
        assert_eq!((plan.n_cands, plan.n_chunks, plan.n_users), (2, 4, 2503));
        assert_eq!((plan.most_users, plan.most_chunks), (2500, 3));
        assert_eq!(plan.words[0], [3, 2500, 0, 3]);
        assert_eq!(plan.words[1], [0, 3, 3, 1]);
        assert_eq!(plan.words[2], [0, 3, 1024, 0]);
        assert_eq!(plan.words[4], [0, 2051, 452, 2048]);
        assert_eq!(plan.words[5], [1, 0, 3, 2500]);
    }
}
