//! Atom hygiene at an epoch's end: which atoms are rare or duplicates, and re-seeding them by
//! splitting the atoms whose users carry the most residual, on the GPU
//! ([`Gpu::split_atoms`]) from the batch still there.

use crate::error::Result;
use crate::gpu::Gpu;

use super::{Part, TrainConfig};

/// What an epoch's hygiene found and did, as atom indices in the whole dictionary.
pub(super) struct Hygiene {
    /// Atoms unused in the epoch.
    pub(super) dead: Vec<usize>,
    /// Atoms unused or used less than the rare fraction of the mean (dead included).
    pub(super) rare: Vec<usize>,
    /// Atoms that duplicate a more used one (not rare).
    pub(super) purged: Vec<usize>,
    /// Atoms given new values (re-seeded ones and the atoms split for them).
    pub(super) changed: Vec<usize>,
}

/// Flags each group's rare atoms and near-duplicates (`epoch_usage` the epoch's use of every
/// atom) and, when `reseed` (every epoch but the last: freshly split atoms would be returned
/// untrained), re-seeds them from the group's last batch of the epoch (its short buffers when
/// `last_was_short`), clearing their atom memory.
pub(super) fn epoch_end_hygiene(
    gpu: &Gpu,
    parts: &mut [Part],
    epoch_usage: &[u32],
    config: &TrainConfig,
    reseed: bool,
    last_was_short: bool,
) -> Result<Hygiene> {
    let (mut dead, mut rare, mut purged, mut changed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for part in parts.iter_mut() {
        let start = part.range.start;
        let usage = &epoch_usage[part.range.clone()];
        let part_rare = rare_atoms(usage, config.rare_atom_fraction);
        let part_purged: Vec<usize> = gpu
            .duplicate_atoms(&part.atoms, usage, config.duplicate_threshold)?
            .into_iter()
            .filter(|j| !part_rare.contains(j))
            .collect();
        let mut flagged: Vec<usize> = part_rare.iter().chain(&part_purged).copied().collect();
        flagged.sort_unstable();
        if !flagged.is_empty() && reseed {
            // The group's epoch's last batch, still on the device.
            let last = match (&mut part.short, last_was_short) {
                (Some(short), true) => short.coded(),
                _ => part.full.coded(),
            };
            let part_changed = gpu.split_atoms(&mut part.atoms, &part.memory, last, &flagged)?;
            changed.extend(part_changed.iter().map(|j| start + j));
        }
        dead.extend(
            (0..usage.len())
                .filter(|&j| usage[j] == 0)
                .map(|j| start + j),
        );
        rare.extend(part_rare.iter().map(|j| start + j));
        purged.extend(part_purged.iter().map(|j| start + j));
    }
    Ok(Hygiene {
        dead,
        rare,
        purged,
        changed,
    })
}

/// Atoms to re-seed at an epoch's end: unused, or used fewer times than `fraction` of the mean.
fn rare_atoms(usage: &[u32], fraction: f64) -> Vec<usize> {
    let mean = usage.iter().map(|&u| u as f64).sum::<f64>() / usage.len().max(1) as f64;
    (0..usage.len())
        .filter(|&j| usage[j] == 0 || (usage[j] as f64) < fraction * mean)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_atoms_are_unused_or_below_the_fraction() {
        // Mean use 50: 10 % of it is 5, 5 % is 2.5.
        assert_eq!(rare_atoms(&[0, 100, 4, 96], 0.1), [0, 2]);
        assert_eq!(rare_atoms(&[0, 100, 4, 96], 0.05), [0]);
        assert_eq!(rare_atoms(&[0, 100, 4, 96], 0.0), [0]);
        assert!(rare_atoms(&[], 0.05).is_empty());
    }
}
