//! Planning an update's atom batches: the layout decided once per update (visiting order,
//! work items, windows, vec4 and texture paths) and the steps (dispatches and texture copies)
//! it records; `recorder.rs` binds and encodes them.

use bytemuck::Zeroable;

use super::items::WorkItems;
use super::recorder::Recorder;
use super::{atom_order, update_loop_iterations, CodedBatch, Params, PowerKernels, UpdateOptions};
use crate::error::{Error, Result};
use crate::gpu::buffer::{flat_texture, TextureShape, Window};
use crate::gpu::layout::{groups, UNROLLED_TEXELS};
use crate::gpu::{Gpu, Matrix};

/// The kinds of dispatch of one atom batch (see power.wgsl).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Partial,
    Reduce,
    Project,
    Fold,
    FoldRows,
    /// fold_project_resident: a batch's projections and fold in one dispatch.
    FoldProject,
    Commit,
    /// order_slots: once per update, before the vec4 folds, one invocation per slot.
    OrderSlots,
    /// order_samples: the same order, one invocation per sample (k ≤ [`ORDER_PRIVATE`]).
    OrderSamples,
    /// user_table: once per update, the resident item kernels' user entries.
    UserTable,
}

/// Most slots per sample that order_samples ranks in private memory (`ORDER_PRIVATE` in
/// power.wgsl); larger k take order_slots.
pub(super) const ORDER_PRIVATE: usize = 64;

/// One step of the atom-batch submission: a dispatch (record, kind, workgroups, window), or a
/// refresh of a texture copy read by the READ_TEXTURES kernels.
#[derive(Clone, Copy)]
pub(super) enum Step {
    Run(usize, Kind, (u32, u32), usize),
    Copy(Copied),
    /// Zeroes the batch mask before order_slots sets its bits.
    ClearBatchMask,
}

/// What a [`Step::Copy`] copies into its texture.
#[derive(Clone, Copy)]
pub(super) enum Copied {
    Residual,
    Atoms,
    /// slot_order, once per update after its ordering.
    SlotOrder,
    /// user_entries, once per update after user_table.
    Users,
    /// The iterates of the atoms at visiting positions start .. start + len (only those change).
    Iterate {
        start: usize,
        len: usize,
    },
}

/// What one update records, decided before anything is: the atoms' visiting order and ranks,
/// their users cut into work items, the windows of atom rows, and the kernels' variants.
pub(super) struct Layout {
    pub(super) n_atoms: usize,
    pub(super) d: usize,
    /// Samples and slots of the coded batch.
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) atom_batch: usize,
    pub(super) order: Vec<u32>,
    pub(super) rank: Vec<u32>,
    pub(super) plan: WorkItems,
    /// Rows of partial sums one binding holds (a wave's items).
    pub(super) wave_rows: usize,
    /// Dimensions (texels in fold_rows_vec4) one fold invocation covers under the loop cap.
    pub(super) dims_per_fold: usize,
    /// Words per sample of the batch mask: one bit per atom batch.
    pub(super) mask_words: usize,
    /// The [K, d] matrices' windows of atom rows: (first atom, end, binding window).
    pub(super) windows: Vec<(usize, usize, Window)>,
    /// Rows read as vec4 (d a multiple of 4, every window starting on a whole vec4).
    pub(super) vec4: bool,
    /// Texels per row: d / 4 with vec4, else d.
    pub(super) texels: usize,
    /// Invocations per sample in fold_rows_vec4 (fold_rows_resident: the subgroup size).
    pub(super) fold_lanes: usize,
    /// Row texels per invocation of the resident kernels (power_resident.wgsl), where they
    /// replace power_partial_vec4, power_project_vec4 and power_reduce.
    pub(super) resident: Option<usize>,
    /// CPU adapters fold one sample per SIMD row (fold_rows).
    pub(super) fold_rows: bool,
    /// The fold is fold_rows_resident (with fold_rows and the resident kernels, where the loop
    /// cap leaves whole rows to one invocation): `fold_lanes` is the subgroup size,
    /// `dims_per_fold` d / 4.
    pub(super) fold_resident: bool,
    /// The projections run inside the fold (fold_project_resident): the fold is resident, the
    /// kernels read the texture copies and the atoms fit one window.
    pub(super) project_in_fold: bool,
    /// The flat texture copies of the residual and of the atoms (and iterates), with their layer
    /// shifts, where READ_TEXTURES kernels read them.
    pub(super) textures: Option<((TextureShape, u32), (TextureShape, u32))>,
    /// slot_order's flat texture copy (rgba32uint) and its layer shift, with the textures.
    pub(super) slot_texture: Option<(TextureShape, u32)>,
    /// Entries of the user lists (all atoms'), and user_entries' flat texture copy (rgba32uint)
    /// where the resident kernels read textures.
    pub(super) n_users: usize,
    pub(super) user_texture: Option<(TextureShape, u32)>,
}

/// The steps of one update and the uniform record of each dispatch.
#[derive(Default)]
pub(super) struct Steps {
    pub(super) records: Vec<Params>,
    pub(super) steps: Vec<Step>,
    /// The most partial-sum rows one wave needs.
    pub(super) partial_rows: usize,
}

impl Gpu {
    /// Submits the power-iteration atom batches of an update whose residual and user lists are
    /// already on the device (recorded by `record_residual_and_transpose`), `usage` being the
    /// user counts read back from them. Does not wait.
    pub(crate) fn submit_atom_batches(
        &self,
        atoms: &Matrix,
        memory: &Matrix,
        batch: &CodedBatch,
        options: &UpdateOptions,
        usage: &[u32],
    ) -> Result<()> {
        check_memory(atoms, memory, options)?;
        let kernels = self.power_kernels()?;
        let layout = self.update_layout(atoms, batch, options, usage, kernels)?;
        let steps = layout.steps(self, options)?;
        let recorder = Recorder::new(self, &layout, &steps, kernels, atoms, memory, batch)?;
        let mut encoder = self.encoder("ksvd atom batches");
        self.scoped(|| {
            recorder.record(&mut encoder, &steps.steps);
            Ok(())
        })?;
        self.submit(encoder)
    }

    fn update_layout(
        &self,
        atoms: &Matrix,
        batch: &CodedBatch,
        options: &UpdateOptions,
        usage: &[u32],
        kernels: &PowerKernels,
    ) -> Result<Layout> {
        let (n_atoms, d) = (atoms.rows(), atoms.cols());
        let atom_batch = options.atom_batch.clamp(1, n_atoms.max(1));
        let order = atom_order(n_atoms, options.seed);
        let mut rank = vec![0u32; n_atoms];
        for (position, &j) in order.iter().enumerate() {
            rank[j as usize] = position as u32;
        }
        let (n, k) = (batch.codes.n, batch.codes.k);
        let item_users = self.update_item_users(d)?;
        let resident = self.resident_update_texels(d);
        let most_users = usage.iter().copied().max().unwrap_or(0) as u64;
        self.check_loop_budget(
            &format!("the update of an atom with {most_users} users at d = {d}"),
            update_loop_iterations(most_users, d, item_users, resident),
        )?;
        let plan = WorkItems::plan(&order, usage, item_users);
        // Partial sums of one wave of atoms share one binding; a batch whose items need more
        // runs in several waves (its atoms are independent until the fold).
        let binding = self
            .limits()
            .planned_binding_size
            .min(self.limits().max_buffer_size);
        let wave_rows = (binding / (4 * d.max(1) as u64)).max(1) as usize;
        // CPU adapters fold one sample per invocation (see power.wgsl), its d dimensions split
        // so that the k-slot scan plus min(k, A) folded atoms stay under the loop cap.
        let dims_per_fold = match self.limits().max_loop_iterations {
            Some(cap) => {
                let folded = k.min(atom_batch).max(1) as u64;
                (cap.saturating_sub(k as u64 + 8) / folded).clamp(1, d.max(1) as u64) as usize
            }
            None => d.max(1),
        };
        // The [K, d] matrices (atoms, iterates, memory) are bound one window of atom rows at a
        // time: every dispatch runs once per window, each skipping the other windows' atoms
        // (one window, the whole dictionary, wherever it fits one binding).
        let windows = crate::gpu::buffer::row_windows(self, n_atoms, d);
        let windows_len = windows.len();
        // Whole rows are whole vec4s when d is a multiple of 4 and every window's first row
        // starts on one (bindings are aligned far coarser than 16 bytes, so it always does).
        let vec4 = d > 0 && d % 4 == 0 && n > 0 && windows.iter().all(|w| w.2.first % 4 == 0);
        let texels = if vec4 { d / 4 } else { d };
        let resident = resident.filter(|_| vec4);
        // fold_rows_resident (CPU adapters, as fold_rows) holds a sample's whole row in one
        // subgroup's registers, where the loop cap leaves whole rows to one invocation (its slots times its texels at most) and
        // the host writes its texels out as named registers (as arrays, at d = 2304, it took
        // 18 ms per dispatch against fold_rows_vec4's 3 ms); fold_rows_vec4 gives each sample
        // FOLD_LANES invocations.
        let max_groups = self.limits().max_compute_workgroups_per_dimension as usize;
        let cpu_fold =
            |lanes: usize| self.limits().cpu_paths && (n * lanes).div_ceil(64) <= max_groups;
        let (fold_resident, fold_lanes) = match (resident, self.limits().subgroup_size) {
            (Some(ut), Some(lanes))
                if dims_per_fold >= texels && ut <= UNROLLED_TEXELS && cpu_fold(lanes as usize) =>
            {
                (true, lanes as usize)
            }
            _ => (false, if vec4 { 8 } else { 1 }),
        };
        let dims_per_fold = if fold_resident { texels } else { dims_per_fold };
        let fold_rows = cpu_fold(fold_lanes);
        // CPU adapters read the residual, atoms and iterates from flat texture copies (see
        // power.wgsl) wherever the device's textures hold them.
        let textures = match (&kernels.textured, vec4 && self.limits().cpu_paths) {
            (Some(_), true) => {
                let float = wgpu::TextureFormat::Rgba32Float;
                flat_texture(self, n * texels, float).zip(flat_texture(
                    self,
                    n_atoms * texels,
                    float,
                ))
            }
            _ => None,
        };
        let n_users = usage.iter().map(|&u| u as usize).sum::<usize>();
        // slot_order's entries (16 bytes each) in an rgba32uint texture of the same flat shape,
        // and user_entries' likewise where the resident kernels read textures; the kernels read
        // all their copies or none.
        let uint_texture =
            |entries: usize| flat_texture(self, entries.max(1), wgpu::TextureFormat::Rgba32Uint);
        let slot_texture = uint_texture(n * k);
        let user_texture = resident.and(uint_texture(n_users));
        let tables_fit = slot_texture.is_some() && (resident.is_none() || user_texture.is_some());
        let textures = textures.filter(|_| tables_fit);
        Ok(Layout {
            n_atoms,
            d,
            n,
            k,
            atom_batch,
            order,
            rank,
            plan,
            wave_rows,
            dims_per_fold,
            mask_words: n_atoms.div_ceil(atom_batch).div_ceil(32).max(1),
            windows,
            vec4,
            texels,
            fold_lanes,
            resident,
            fold_rows,
            fold_resident,
            textures,
            slot_texture: slot_texture.filter(|_| textures.is_some()),
            n_users,
            user_texture: user_texture.filter(|_| textures.is_some()),
            project_in_fold: fold_resident && textures.is_some() && windows_len == 1,
        })
    }
}

/// The atom memory must match the atoms and γ lie in [0, 1).
fn check_memory(atoms: &Matrix, memory: &Matrix, options: &UpdateOptions) -> Result<()> {
    if memory.rows() != atoms.rows() || memory.cols() != atoms.cols() {
        return Err(Error::ShapeMismatch {
            op: "dictionary update (atom memory vs atoms)".into(),
            left: memory.shape(),
            right: atoms.shape(),
        });
    }
    if !(options.memory.is_finite() && (0.0..1.0).contains(&options.memory)) {
        return Err(Error::InvalidArgument(format!(
            "atom memory γ = {} must lie in [0, 1)",
            options.memory
        )));
    }
    Ok(())
}

impl Layout {
    /// Whether the READ_TEXTURES kernels run (their textures refreshed by copies).
    pub(super) fn copies(&self) -> bool {
        self.textures.is_some()
    }

    /// Whether the iterates' texture copy is refreshed by copies after each reduce
    /// (power_reduce_resident writes it itself).
    fn copies_iterates(&self) -> bool {
        self.copies() && self.resident.is_none()
    }

    /// Every step of the update, atom batch after atom batch.
    fn steps(&self, gpu: &Gpu, options: &UpdateOptions) -> Result<Steps> {
        let mut steps = Steps {
            partial_rows: 1,
            ..Steps::default()
        };
        if self.copies() {
            steps.steps.push(Step::Copy(Copied::Residual));
            steps.steps.push(Step::Copy(Copied::Atoms));
        }
        if self.vec4 {
            // The vec4 folds find each batch's slots in the slots ordered by visiting position.
            steps.steps.push(Step::ClearBatchMask);
            steps.records.push(Params {
                d: self.d as u32,
                k: self.k as u32,
                n: self.n as u32,
                n_atoms: self.n_atoms as u32,
                atom_batch: self.atom_batch as u32,
                mask_words: self.mask_words as u32,
                ..Params::zeroed()
            });
            // Per sample: k key reads and k² comparisons in private memory, against k² key
            // reads per sample per slot (on llvmpipe each a loop over the lanes): at B = 4096,
            // K = 1536, k = 32 the ordering took 3.6 % of a training epoch.
            let (kind, items) = match self.k <= ORDER_PRIVATE {
                true => (Kind::OrderSamples, self.n),
                false => (Kind::OrderSlots, self.n * self.k),
            };
            let record = steps.records.len() - 1;
            steps
                .steps
                .push(Step::Run(record, kind, groups(gpu, items, 64), 0));
            if self.copies() {
                // The folds read it from its texture copy (slot_at).
                steps.steps.push(Step::Copy(Copied::SlotOrder));
            }
        }
        // Read by the partial sums, and by the projections unless the fold makes them.
        let users_read = options.power_iterations > 0 || !self.project_in_fold;
        if self.user_texture.is_some() && self.n_users > 0 && users_read {
            // The resident item kernels read their users from its texture copy (user_at).
            steps.records.push(Params {
                len: self.n_users as u32,
                ..Params::zeroed()
            });
            let record = steps.records.len() - 1;
            let groups = groups(gpu, self.n_users, 64);
            steps
                .steps
                .push(Step::Run(record, Kind::UserTable, groups, 0));
            steps.steps.push(Step::Copy(Copied::Users));
        }
        for start in (0..self.n_atoms).step_by(self.atom_batch) {
            self.atom_batch_steps(gpu, &mut steps, start, options)?;
        }
        // One commit of every atom after the last batch, not one per batch: a batch's dispatches
        // read only its own atoms' rows and slots, which no earlier batch's commit touches
        // (K/A − 1 fewer dispatches: 511 at K = 16 384, A = 32).
        let all = Params {
            len: self.n_atoms as u32,
            ..self.base_params(0, self.n_atoms, options)
        };
        self.push(&mut steps, all, Kind::Commit, groups(gpu, self.n_atoms, 1));
        Ok(steps)
    }

    /// The uniforms shared by the dispatches of the atom batch at visiting positions
    /// `start..start + len`.
    fn base_params(&self, start: usize, len: usize, options: &UpdateOptions) -> Params {
        Params {
            start: start as u32,
            len: len as u32,
            d: self.d as u32,
            k: self.k as u32,
            n: self.n as u32,
            n_atoms: self.n_atoms as u32,
            // power_project reads d_new from `iterate` (iteration > 0).
            iteration: options.power_iterations.max(1) as u32,
            last: 0,
            decay: options.memory,
            dims_per_fold: self.dims_per_fold as u32,
            item_start: self.plan.first(start) as u32,
            item_len: (self.plan.first(start + len) - self.plan.first(start)) as u32,
            atom_first: 0,
            atom_end: 0,
            atom_lead: 0,
            residual_shift: self.textures.map_or(0, |t| t.0 .1),
            atom_shift: self.textures.map_or(0, |t| t.1 .1),
            atom_batch: self.atom_batch as u32,
            mask_words: self.mask_words as u32,
            slot_shift: self.slot_texture.map_or(0, |t| t.1),
            user_shift: self.user_texture.map_or(0, |t| t.1),
            _pad: [0; 3],
        }
    }

    /// One atom batch: p power iterations (partial sums and their reduction, wave by wave),
    /// the projections, the fold of the new atoms into the residual (the commit follows the last
    /// batch).
    fn atom_batch_steps(
        &self,
        gpu: &Gpu,
        steps: &mut Steps,
        start: usize,
        options: &UpdateOptions,
    ) -> Result<()> {
        let len = self.atom_batch.min(self.n_atoms - start);
        let base = self.base_params(start, len, options);
        let waves = self.plan.waves(start, len, self.wave_rows, self.d)?;
        steps.partial_rows = waves
            .iter()
            .map(|w| w.1.len())
            .fold(steps.partial_rows, usize::max);
        let p = options.power_iterations;
        if p == 0 {
            // No power step: power_reduce copies d_j as d_new.
            let params = Params { last: 2, ..base };
            self.push(steps, params, Kind::Reduce, groups(gpu, len, 1));
            if self.copies_iterates() {
                steps.steps.push(Step::Copy(Copied::Iterate { start, len }));
            }
        }
        for iteration in 0..p {
            for (atoms_range, item_range) in &waves {
                let wave = Params {
                    start: atoms_range.start as u32,
                    len: atoms_range.len() as u32,
                    iteration: iteration as u32,
                    last: u32::from(iteration + 1 == p),
                    item_start: item_range.start as u32,
                    item_len: item_range.len() as u32,
                    ..base
                };
                let (items, atoms) = (item_range.len(), atoms_range.len());
                self.push(steps, wave, Kind::Partial, groups(gpu, items, 1));
                self.push(steps, wave, Kind::Reduce, groups(gpu, atoms, 1));
            }
            if self.copies_iterates() {
                steps.steps.push(Step::Copy(Copied::Iterate { start, len }));
            }
        }
        if self.project_in_fold {
            // One subgroup per sample: its row read once for its projections and its fold,
            // where the item pass read it once per slot.
            self.push(steps, base, Kind::FoldProject, groups(gpu, self.n, 1));
            return self.refresh_residual(steps, start + len);
        }
        // Every projection reads the residual before the batch, so all precede the fold.
        let items = base.item_len as usize;
        self.push(steps, base, Kind::Project, groups(gpu, items, 1));
        if self.fold_rows {
            // dims_per_fold counts texels in fold_rows_vec4.
            let folds = (
                (self.n * self.fold_lanes).div_ceil(64) as u32,
                self.texels.div_ceil(self.dims_per_fold) as u32,
            );
            self.push(steps, base, Kind::FoldRows, folds);
        } else {
            self.push(steps, base, Kind::Fold, groups(gpu, self.n, 1));
        }
        self.refresh_residual(steps, start + len)
    }

    /// After the fold of the batch ending at visiting position `end`: the residual's texture
    /// copy refreshed for the next batch (none after the last).
    fn refresh_residual(&self, steps: &mut Steps, end: usize) -> Result<()> {
        if self.copies() && end < self.n_atoms {
            steps.steps.push(Step::Copy(Copied::Residual));
        }
        Ok(())
    }

    /// A dispatch of `kind` once per window of atom rows.
    fn push(&self, steps: &mut Steps, params: Params, kind: Kind, groups: (u32, u32)) {
        for (w, &(first, end, window)) in self.windows.iter().enumerate() {
            steps.records.push(Params {
                atom_first: first as u32,
                atom_end: end as u32,
                atom_lead: window.first,
                ..params
            });
            steps
                .steps
                .push(Step::Run(steps.records.len() - 1, kind, groups, w));
        }
    }
}
