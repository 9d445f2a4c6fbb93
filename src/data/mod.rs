//! Activation sources: where the samples Y come from.
//!
//! Everything the trainer and the encoder read goes through [`ActivationSource`]: a matrix of
//! `rows() × dim()` activations that hands out rows as f32. Implementations:
//!
//! - [`ActivationFile`]: one memory-mapped safetensors or `.npy` file (F32, F16, BF16, F64), read
//!   without loading it, so files larger than RAM work;
//! - [`InMemory`]: a row-major `&[f32]` or `Vec<f32>`;
//! - [`Shards`]: several sources (any mix of formats) read as one dataset;
//! - [`RowRange`]: rows `start..end` of any source, for train/score splits of one file;
//! - [`Centred`]: any source minus a mean vector (from [`Stats`]).
//!
//! [`Batches`] streams a source in the order a [`BatchOrder`] gives: sequential, or shuffled per
//! epoch (batch order, and rows within a window of batches) from a seed. Every value is checked as it
//! is read: a NaN or infinity is an [`Error::NonFinite`] naming the file, its row and column.
//!
//! ```no_run
//! use dbksvd::data::{self, ActivationSource, BatchOrder, Stats};
//! # fn main() -> dbksvd::Result<()> {
//! let source = data::open(&["shard-0.safetensors", "shard-1.npy"])?;
//! let stats = Stats::compute(&source, 4096)?;
//! let order = BatchOrder::shuffled(4096, 7);
//! for epoch in 0..2 {
//!     for batch in source.batches(&order, epoch)? {
//!         let batch = batch?; // rows × dim f32, row-major
//!         assert_eq!(batch.data.len(), batch.len() * source.dim());
//!     }
//! }
//! # let _ = stats; Ok(()) }
//! ```

mod file;
mod npy;
mod order;
mod safetensors;
mod stats;
pub mod synthetic;

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub(crate) use self::safetensors::check_offsets as check_safetensors_offsets;
pub use file::{ActivationFile, Dtype, FileFormat};
pub use order::{Batch, BatchOrder, Batches, EpochOrder, Shuffle};
pub use stats::Stats;

/// A matrix of activations, `rows() × dim()`, read as f32 rows.
///
/// Implementations check every value they hand out: a NaN or infinity is an
/// [`Error::NonFinite`] naming the source (file and tensor), the row within it and the column.
pub trait ActivationSource: Send + Sync {
    /// Number of rows (samples).
    fn rows(&self) -> usize;

    /// Width of one row (the model dimension d).
    fn dim(&self) -> usize;

    /// What the source is, for messages: a file path and tensor, or `in-memory activations`.
    fn name(&self) -> String;

    /// Writes rows `start .. start + out.len() / dim()` into `out`, row-major.
    ///
    /// Errors: `out.len()` not a multiple of `dim()`, rows past the end, non-finite values.
    fn read_rows(&self, start: usize, out: &mut [f32]) -> Result<()>;

    /// Writes the listed rows, in the listed order, into `out` (`rows.len() × dim()` values).
    /// Runs of consecutive rows are read with one [`read_rows`](Self::read_rows) call.
    fn gather(&self, rows: &[usize], out: &mut [f32]) -> Result<()> {
        let d = self.dim();
        check_len(self, rows.len(), out.len())?;
        let mut i = 0;
        while i < rows.len() {
            let mut run = 1;
            while i + run < rows.len() && rows[i].checked_add(run) == Some(rows[i + run]) {
                run += 1;
            }
            self.read_rows(rows[i], &mut out[i * d..(i + run) * d])?;
            i += run;
        }
        Ok(())
    }

    /// Streams the source in `order` for epoch `epoch` (which seeds a shuffled order).
    fn batches(&self, order: &BatchOrder, epoch: u64) -> Result<Batches<'_>>
    where
        Self: Sized,
    {
        Batches::new(self, order, epoch)
    }

    /// Rows `range` of this source, as a source of its own.
    fn slice(self, range: Range<usize>) -> Result<RowRange<Self>>
    where
        Self: Sized,
    {
        RowRange::new(self, range)
    }
}

/// Pointers to a source are sources: `&S`, `Box<S>` and `Box<dyn ActivationSource>` alike.
macro_rules! forward_source {
    ($($pointer:ty),*) => {$(
        impl<S: ActivationSource + ?Sized> ActivationSource for $pointer {
            fn rows(&self) -> usize {
                (**self).rows()
            }
            fn dim(&self) -> usize {
                (**self).dim()
            }
            fn name(&self) -> String {
                (**self).name()
            }
            fn read_rows(&self, start: usize, out: &mut [f32]) -> Result<()> {
                (**self).read_rows(start, out)
            }
            fn gather(&self, rows: &[usize], out: &mut [f32]) -> Result<()> {
                (**self).gather(rows, out)
            }
        }
    )*};
}
forward_source!(Box<S>, &S, std::sync::Arc<S>);

/// Checks that `out` holds `count` rows of `source` (the shared precondition of reads).
fn check_len<S: ActivationSource + ?Sized>(source: &S, count: usize, out_len: usize) -> Result<()> {
    if count.checked_mul(source.dim()) != Some(out_len) {
        return Err(Error::DataLength {
            what: format!("rows read from {}", source.name()),
            rows: count,
            cols: source.dim(),
            expected: count.saturating_mul(source.dim()),
            actual: out_len,
        });
    }
    Ok(())
}

/// Number of rows in `out` for a read from `source` starting at `start`, after checking that
/// `out` is whole rows and that the rows exist.
fn rows_to_read<S: ActivationSource + ?Sized>(
    source: &S,
    start: usize,
    out_len: usize,
) -> Result<usize> {
    let d = source.dim();
    if d == 0 {
        return Err(Error::Format {
            file: source.name(),
            message: "rows have no columns".into(),
        });
    }
    if !out_len.is_multiple_of(d) {
        return Err(Error::DataLength {
            what: format!("rows read from {}", source.name()),
            rows: out_len / d,
            cols: d,
            expected: out_len / d * d,
            actual: out_len,
        });
    }
    let count = out_len / d;
    if start
        .checked_add(count)
        .is_none_or(|end| end > source.rows())
    {
        return Err(Error::InvalidArgument(format!(
            "rows {start}..{} of {} which has {} rows",
            start.saturating_add(count),
            source.name(),
            source.rows()
        )));
    }
    Ok(count)
}

/// The first non-finite value of `data` (rows of width `dim`, the first being row `first_row` of
/// `name`) as an error.
fn check_finite(
    name: impl FnOnce() -> String,
    data: &[f32],
    dim: usize,
    first_row: usize,
) -> Result<()> {
    if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: name(),
            row: first_row + pos / dim,
            col: pos % dim,
            value: data[pos],
        });
    }
    Ok(())
}

/// Activations already in memory: a row-major `rows × dim` matrix held as any `AsRef<[f32]>`
/// (`&[f32]`, `Vec<f32>`, `Arc<[f32]>`).
#[derive(Clone, Debug)]
pub struct InMemory<D = Vec<f32>> {
    data: D,
    dim: usize,
    name: String,
}

impl<D: AsRef<[f32]> + Send + Sync> InMemory<D> {
    /// Wraps `data` as rows of width `dim`. Errors when `dim` is 0 or does not divide the length.
    pub fn new(data: D, dim: usize) -> Result<Self> {
        let len = data.as_ref().len();
        if dim == 0 || len % dim != 0 {
            return Err(Error::InvalidArgument(format!(
                "in-memory activations: {len} values are not whole rows of width {dim}"
            )));
        }
        Ok(Self {
            data,
            dim,
            name: "in-memory activations".into(),
        })
    }

    /// Sets the name used in messages (e.g. where the data came from).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The wrapped data.
    pub fn data(&self) -> &[f32] {
        self.data.as_ref()
    }
}

impl<D: AsRef<[f32]> + Send + Sync> ActivationSource for InMemory<D> {
    fn rows(&self) -> usize {
        self.data.as_ref().len() / self.dim
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn read_rows(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let count = rows_to_read(self, start, out.len())?;
        let d = self.dim;
        let rows = &self.data.as_ref()[start * d..(start + count) * d];
        check_finite(|| self.name(), rows, d, start)?;
        out.copy_from_slice(rows);
        Ok(())
    }
}

/// Rows `start..end` of another source, renumbered from 0 (train/score splits of one file).
///
/// Errors from the inner source keep its own row numbers, so they point into the file.
#[derive(Clone, Debug)]
pub struct RowRange<S> {
    inner: S,
    range: Range<usize>,
}

impl<S: ActivationSource> RowRange<S> {
    /// Rows `range` of `inner`. Errors when the range is reversed or ends past the last row.
    pub fn new(inner: S, range: Range<usize>) -> Result<Self> {
        if range.start > range.end || range.end > inner.rows() {
            return Err(Error::InvalidArgument(format!(
                "row range {}..{} does not fit {} ({} rows)",
                range.start,
                range.end,
                inner.name(),
                inner.rows()
            )));
        }
        Ok(Self { inner, range })
    }

    /// The rows of the inner source this covers.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The inner source.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: ActivationSource> ActivationSource for RowRange<S> {
    fn rows(&self) -> usize {
        self.range.len()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn name(&self) -> String {
        format!(
            "{} (rows {}..{})",
            self.inner.name(),
            self.range.start,
            self.range.end
        )
    }
    fn read_rows(&self, start: usize, out: &mut [f32]) -> Result<()> {
        rows_to_read(self, start, out.len())?;
        self.inner.read_rows(self.range.start + start, out)
    }
}

/// Several sources read as one dataset, rows of the first shard first. All share `dim`.
pub struct Shards {
    parts: Vec<Box<dyn ActivationSource>>,
    /// `starts[i]` is the first global row of part i; `starts[parts.len()]` is the total.
    starts: Vec<usize>,
}

impl Shards {
    /// Joins `parts` in order. Errors when the list is empty or a part's width differs from the
    /// first part's (the message names both).
    pub fn new(parts: Vec<Box<dyn ActivationSource>>) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(Error::InvalidArgument("no shards given".into()));
        };
        let dim = first.dim();
        if dim == 0 {
            return Err(Error::Format {
                file: first.name(),
                message: "rows have no columns".into(),
            });
        }
        if let Some(other) = parts.iter().find(|p| p.dim() != dim) {
            return Err(Error::Format {
                file: other.name(),
                message: format!(
                    "rows have {} columns but the first shard {} has {dim}",
                    other.dim(),
                    first.name()
                ),
            });
        }
        let mut starts = vec![0];
        for part in &parts {
            starts.push(starts.last().unwrap() + part.rows());
        }
        Ok(Self { parts, starts })
    }

    /// Opens each file (safetensors or `.npy`, by content) and joins them in the order given.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let parts = paths
            .iter()
            .map(|p| ActivationFile::open(p).map(|f| Box::new(f) as Box<dyn ActivationSource>))
            .collect::<Result<Vec<_>>>()?;
        Self::new(parts)
    }

    /// The joined sources.
    pub fn parts(&self) -> &[Box<dyn ActivationSource>] {
        &self.parts
    }
}

impl ActivationSource for Shards {
    fn rows(&self) -> usize {
        *self.starts.last().unwrap()
    }
    fn dim(&self) -> usize {
        self.parts[0].dim()
    }
    fn name(&self) -> String {
        match self.parts.len() {
            1 => self.parts[0].name(),
            n => format!("{n} shards starting with {}", self.parts[0].name()),
        }
    }
    fn read_rows(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let count = rows_to_read(self, start, out.len())?;
        let d = self.dim();
        let (mut row, end) = (start, start + count);
        // The part holding `row`: the last whose start is <= row (skipping empty parts).
        let mut part = self.starts.partition_point(|&s| s <= row) - 1;
        while row < end {
            let take = (self.starts[part + 1].min(end)).saturating_sub(row);
            if take > 0 {
                let at = (row - start) * d;
                self.parts[part].read_rows(row - self.starts[part], &mut out[at..at + take * d])?;
                row += take;
            }
            part += 1;
        }
        Ok(())
    }
}

/// Another source with a mean vector subtracted from every row (centring for training).
pub struct Centred<S> {
    inner: S,
    mean: Vec<f32>,
}

impl<S: ActivationSource> Centred<S> {
    /// `inner` minus `mean` (length `inner.dim()`, finite).
    pub fn new(inner: S, mean: Vec<f32>) -> Result<Self> {
        if mean.len() != inner.dim() {
            return Err(Error::ShapeMismatch {
                op: "centring (mean vs rows)".into(),
                left: format!("[{}]", mean.len()),
                right: format!("[{}]", inner.dim()),
            });
        }
        check_finite(|| "mean vector".into(), &mean, mean.len(), 0)?;
        Ok(Self { inner, mean })
    }

    /// The subtracted mean.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }
}

impl<S: ActivationSource> ActivationSource for Centred<S> {
    fn rows(&self) -> usize {
        self.inner.rows()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn read_rows(&self, start: usize, out: &mut [f32]) -> Result<()> {
        self.inner.read_rows(start, out)?;
        for row in out.chunks_exact_mut(self.mean.len()) {
            row.iter_mut().zip(&self.mean).for_each(|(v, m)| *v -= m);
        }
        Ok(())
    }
}

/// Opens activation files as one source: each path is a safetensors or `.npy` file, or a
/// directory whose `*.safetensors` and `*.npy` files are taken in natural name order
/// (`acts_2` before `acts_10`).
///
/// One file gives that file; several give [`Shards`].
pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Box<dyn ActivationSource>> {
    let mut files: Vec<PathBuf> = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.is_dir() {
            let io = |source| Error::Io {
                path: path.to_path_buf(),
                source,
            };
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .map(|entry| entry.map(|e| e.path()).map_err(io))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("safetensors" | "npy")
                        )
                })
                .collect();
            if found.is_empty() {
                return Err(Error::Format {
                    file: path.display().to_string(),
                    message: "directory holds no .safetensors or .npy files".into(),
                });
            }
            found.sort_by(|a, b| natural_order(&a.to_string_lossy(), &b.to_string_lossy()));
            files.extend(found);
        } else {
            files.push(path.to_path_buf());
        }
    }
    match files.len() {
        0 => Err(Error::InvalidArgument("no activation files given".into())),
        1 => Ok(Box::new(ActivationFile::open(&files[0])?)),
        _ => Ok(Box::new(Shards::open(&files)?)),
    }
}

/// Compares names with runs of digits taken as numbers, so shard 2 sorts before shard 10.
fn natural_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.chars().peekable(), b.chars().peekable());
    loop {
        match (a.peek().copied(), b.peek().copied()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let number = |it: &mut std::iter::Peekable<std::str::Chars>| {
                    let mut digits = String::new();
                    while let Some(c) = it.next_if(|c| c.is_ascii_digit()) {
                        digits.push(c);
                    }
                    let trimmed = digits.trim_start_matches('0').to_string();
                    (trimmed.len(), trimmed, digits.len())
                };
                let order = number(&mut a).cmp(&number(&mut b));
                if order != std::cmp::Ordering::Equal {
                    return order;
                }
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                a.next();
                b.next();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shard_names_sort_naturally() {
        let mut names = vec![
            "acts_10.npy",
            "acts_2.npy",
            "acts_1.npy",
            "b.npy",
            "acts_02.npy",
        ];
        names.sort_by(|a, b| super::natural_order(a, b));
        assert_eq!(
            names,
            [
                "acts_1.npy",
                "acts_2.npy",
                "acts_02.npy",
                "acts_10.npy",
                "b.npy"
            ]
        );
    }
}
