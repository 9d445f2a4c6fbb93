//! The starting dictionary: a given one normalised, or K distinct samples.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use std::collections::HashSet;

use crate::data::ActivationSource;
use crate::error::{Error, Result};

/// Normalises a given dictionary, checking its shape and that no atom is zero or non-finite.
pub(super) fn normalised_dictionary(atoms: &[f32], n_atoms: usize, d: usize) -> Result<Vec<f32>> {
    if atoms.len() != n_atoms * d {
        return Err(Error::DataLength {
            what: "initial dictionary".into(),
            rows: n_atoms,
            cols: d,
            expected: n_atoms * d,
            actual: atoms.len(),
        });
    }
    crate::encode::unit_rows("initial dictionary", atoms, d)
}

/// K distinct random rows of `source` (centred on `centre`), normalised. Zero rows and rows equal
/// to one already taken (after normalisation) are skipped; too few usable rows is an error.
pub fn init_from_samples(
    source: &dyn ActivationSource,
    n_atoms: usize,
    centre: Option<&[f32]>,
    seed: u64,
) -> Result<Vec<f32>> {
    let (rows, d) = (source.rows(), source.dim());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // A stream apart from the epochs' shuffle streams.
    rng.set_stream(u64::MAX);
    // A random sample of rows first; if too many are unusable, every other row in order.
    let first = rand::seq::index::sample(&mut rng, rows, rows.min(4 * n_atoms + 64)).into_vec();
    let taken: HashSet<usize> = first.iter().copied().collect();
    let rest = (0..rows).filter(|r| !taken.contains(r));
    let mut candidates = first.clone().into_iter().chain(rest);

    let mut atoms = Vec::with_capacity(n_atoms * d);
    let mut seen: HashSet<Vec<u32>> = HashSet::new();
    let mut buffer = Vec::new();
    while atoms.len() < n_atoms * d {
        let chunk: Vec<usize> = candidates.by_ref().take(4096).collect();
        if chunk.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "K = {n_atoms} atoms asked for, but {} has only {} distinct nonzero rows{}",
                source.name(),
                atoms.len() / d,
                if centre.is_some() {
                    " after centring"
                } else {
                    ""
                }
            )));
        }
        buffer.resize(chunk.len() * d, 0.0);
        source.gather(&chunk, &mut buffer)?;
        for row in buffer.chunks_exact_mut(d) {
            if let Some(mean) = centre {
                row.iter_mut().zip(mean).for_each(|(v, m)| *v -= m);
            }
            let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            if norm == 0.0 {
                continue;
            }
            let atom: Vec<f32> = row.iter().map(|&v| (v as f64 / norm) as f32).collect();
            if !seen.insert(atom.iter().map(|v| v.to_bits()).collect()) {
                continue;
            }
            atoms.extend_from_slice(&atom);
            if atoms.len() == n_atoms * d {
                break;
            }
        }
    }
    Ok(atoms)
}
