//! An update's work items: each atom's users cut into runs a workgroup sums, and waves of atom
//! batches whose partial sums fit one binding.

use crate::error::{Error, Result};

/// The update's work items: each atom's users (in user-list order) cut into runs of at most
/// `item_users`, items in visiting order so that an atom batch's items are contiguous.
pub(super) struct WorkItems {
    /// (atom, first user position, one past the last, 0).
    pub(super) items: Vec<[u32; 4]>,
    /// Per position in the visiting order: (first item, item count).
    pub(super) atom_items: Vec<[u32; 2]>,
}

impl WorkItems {
    pub(super) fn plan(order: &[u32], usage: &[u32], item_users: usize) -> Self {
        let mut user_start = vec![0u32; usage.len() + 1];
        for (j, &u) in usage.iter().enumerate() {
            user_start[j + 1] = user_start[j] + u;
        }
        let mut items = Vec::new();
        let mut atom_items = Vec::with_capacity(order.len());
        for &j in order {
            let first = items.len() as u32;
            let (mut q, end) = (user_start[j as usize], user_start[j as usize + 1]);
            while q < end {
                let next = end.min(q.saturating_add(item_users as u32));
                items.push([j, q, next, 0]);
                q = next;
            }
            atom_items.push([first, items.len() as u32 - first]);
        }
        Self { items, atom_items }
    }

    /// The first item of visiting position `position` (the item count at the end).
    pub(super) fn first(&self, position: usize) -> usize {
        self.atom_items
            .get(position)
            .map_or(self.items.len(), |a| a[0] as usize)
    }

    /// The atom batch at positions `start..start + len` cut into waves of at most `rows` items
    /// (rows of partial sums, d floats each): (positions, items) per wave.
    #[allow(clippy::type_complexity)]
    pub(super) fn waves(
        &self,
        start: usize,
        len: usize,
        rows: usize,
        d: usize,
    ) -> Result<Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>> {
        let mut waves = Vec::new();
        let mut wave_start = start;
        for position in start..start + len {
            let count = self.atom_items[position][1] as usize;
            if count > rows {
                return Err(Error::ExceedsLimit {
                    what: format!(
                        "partial sums of the update of one atom ({count} work items of d = {d})"
                    ),
                    requested: (count * d * 4) as u64,
                    limit_name: "max_storage_buffer_binding_size",
                    limit: (rows * d * 4) as u64,
                    largest_batch: None,
                });
            }
            if self.first(position + 1) - self.first(wave_start) > rows {
                waves.push((
                    wave_start..position,
                    self.first(wave_start)..self.first(position),
                ));
                wave_start = position;
            }
        }
        waves.push((
            wave_start..start + len,
            self.first(wave_start)..self.first(start + len),
        ));
        Ok(waves)
    }
}
