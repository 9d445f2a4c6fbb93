//! Batch order: which rows each batch of an epoch holds.
//!
//! Shuffling a file larger than memory cannot permute all rows at once, so an epoch is shuffled in
//! two levels, as streaming trainers do:
//!
//! 1. the rows are cut into contiguous *blocks* of one batch each, and the blocks are put in a
//!    random order;
//! 2. consecutive blocks of that order are grouped into *windows* of `window` blocks, and the rows
//!    of a window are permuted and cut into batches.
//!
//! A batch therefore mixes rows from `window` random places of the file, so a pass over a file sorted
//! by document or by layer is not sorted, while reads stay within `window` contiguous regions. Only
//! row indices are held (8 bytes per row of the current window), never rows themselves.
//!
//! Each epoch's order comes from a ChaCha8 stream keyed by the seed and the epoch number, so the
//! same seed gives the same order on every machine, and epochs differ.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::ActivationSource;
use crate::error::{Error, Result};

/// Shuffling parameters of a [`BatchOrder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shuffle {
    /// Seed of the order; epoch e uses stream e of it.
    pub seed: u64,
    /// Batches whose rows are permuted together (at least 1).
    pub window: usize,
}

/// The order in which a source is streamed: batch size, and sequential or shuffled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOrder {
    /// Rows per batch. One batch per epoch is shorter when the rows are not a multiple of it: the
    /// last one in sequential order; in shuffled order, the last batch of the window that drew the
    /// partial block, anywhere in the epoch.
    pub batch_size: usize,
    /// `None` reads rows in file order.
    pub shuffle: Option<Shuffle>,
}

impl BatchOrder {
    /// The default window of [`shuffled`](Self::shuffled): 16 batches, enough that a batch draws
    /// from 16 random places of the file, small enough that the window's indices stay tiny.
    pub const DEFAULT_WINDOW: usize = 16;

    /// Rows in file order, `batch_size` at a time.
    pub fn sequential(batch_size: usize) -> Self {
        Self {
            batch_size,
            shuffle: None,
        }
    }

    /// Shuffled per epoch from `seed`, with a window of [`DEFAULT_WINDOW`](Self::DEFAULT_WINDOW).
    pub fn shuffled(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            shuffle: Some(Shuffle {
                seed,
                window: Self::DEFAULT_WINDOW,
            }),
        }
    }

    /// Sets the shuffle window (batches whose rows are permuted together); no effect when sequential.
    pub fn with_window(mut self, window: usize) -> Self {
        if let Some(shuffle) = &mut self.shuffle {
            shuffle.window = window;
        }
        self
    }

    /// Batches in one epoch over `rows` rows.
    pub fn batches_per_epoch(&self, rows: usize) -> usize {
        rows.div_ceil(self.batch_size.max(1))
    }

    /// The row indices of every batch of epoch `epoch` over `rows` rows, computed lazily.
    pub fn epoch(&self, rows: usize, epoch: u64) -> Result<EpochOrder> {
        if self.batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        let rng = match self.shuffle {
            Some(Shuffle { window: 0, .. }) => {
                return Err(Error::InvalidArgument(
                    "shuffle window must be at least 1 batch".into(),
                ))
            }
            Some(Shuffle { seed, .. }) => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(epoch);
                Some(rng)
            }
            None => None,
        };
        let n_blocks = self.batches_per_epoch(rows);
        let mut blocks: Vec<usize> = (0..n_blocks).collect();
        let mut rng = rng;
        if let Some(rng) = &mut rng {
            blocks.shuffle(rng);
        }
        Ok(EpochOrder {
            rows,
            batch_size: self.batch_size,
            window: self.shuffle.map_or(1, |s| s.window),
            blocks,
            next_block: 0,
            pending: Vec::new(),
            taken: 0,
            rng,
        })
    }
}

/// The batches of one epoch as lists of row indices (an iterator of `Vec<usize>`).
///
/// Every epoch yields `ceil(rows / batch_size)` batches covering each row exactly once; at most one
/// of them is short.
#[derive(Clone, Debug)]
pub struct EpochOrder {
    rows: usize,
    batch_size: usize,
    window: usize,
    /// Block order (block b holds rows `b·batch_size ..`).
    blocks: Vec<usize>,
    next_block: usize,
    /// Rows of the current window, in their shuffled order; `taken` of them already handed out.
    pending: Vec<usize>,
    taken: usize,
    rng: Option<ChaCha8Rng>,
}

/// Rows of block `block` when `rows` rows are cut into blocks of `batch_size`.
fn block_rows(rows: usize, batch_size: usize, block: usize) -> std::ops::Range<usize> {
    block * batch_size..((block + 1) * batch_size).min(rows)
}

impl Iterator for EpochOrder {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        let Some(rng) = &mut self.rng else {
            // Sequential: blocks in file order, no window needed.
            let block = *self.blocks.get(self.next_block)?;
            self.next_block += 1;
            return Some(block_rows(self.rows, self.batch_size, block).collect());
        };
        if self.taken == self.pending.len() {
            let end = (self.next_block + self.window).min(self.blocks.len());
            if self.next_block == end {
                return None;
            }
            self.pending.clear();
            for &block in &self.blocks[self.next_block..end] {
                self.pending
                    .extend(block_rows(self.rows, self.batch_size, block));
            }
            self.next_block = end;
            self.pending.shuffle(rng);
            self.taken = 0;
        }
        let take = self.batch_size.min(self.pending.len() - self.taken);
        let batch = self.pending[self.taken..self.taken + take].to_vec();
        self.taken += take;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Every window of w blocks yields exactly w batches (only the one short block is short).
        let in_window = (self.pending.len() - self.taken).div_ceil(self.batch_size);
        let left = in_window + self.blocks.len() - self.next_block;
        (left, Some(left))
    }
}

impl ExactSizeIterator for EpochOrder {}

/// One batch: `len()` rows of width `dim`, row-major, and which rows of the source they are.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Source row of each batch row.
    pub rows: Vec<usize>,
    /// `rows.len() × dim` values, row-major.
    pub data: Vec<f32>,
    /// Row width.
    pub dim: usize,
}

impl Batch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i` of the batch.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Streams the batches of one epoch of a source: an iterator of `Result<Batch>` that stops after
/// the first error.
///
/// Holds one batch at a time: the memory used is the batch being filled plus the window's indices.
pub struct Batches<'a> {
    source: &'a dyn ActivationSource,
    order: EpochOrder,
    failed: bool,
}

impl<'a> Batches<'a> {
    /// Epoch `epoch` of `source` in `order`.
    pub fn new(source: &'a dyn ActivationSource, order: &BatchOrder, epoch: u64) -> Result<Self> {
        Ok(Self {
            order: order.epoch(source.rows(), epoch)?,
            source,
            failed: false,
        })
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.failed {
            return None;
        }
        let rows = self.order.next()?;
        let dim = self.source.dim();
        let mut data = vec![0.0; rows.len() * dim];
        match self.source.gather(&rows, &mut data) {
            Ok(()) => Some(Ok(Batch { rows, data, dim })),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.failed {
            (0, Some(0))
        } else {
            self.order.size_hint()
        }
    }
}
