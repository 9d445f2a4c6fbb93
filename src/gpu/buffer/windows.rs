//! Binding windows: whole-row slices of a matrix that each fit one storage binding, for kernels
//! that take one dispatch per window when a matrix is larger than a binding.

use super::Gpu;

/// A binding window over whole rows `[r0, r1)` of a row-major matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    /// Byte offset of the binding (aligned).
    pub(crate) offset: u64,
    /// Byte size of the binding.
    pub(crate) size: u64,
    /// Element index of row `r0` inside the binding.
    pub(crate) first: u32,
}

pub(crate) fn window(cols: usize, r0: usize, r1: usize, align: u64) -> Window {
    let row_bytes = cols as u64 * 4;
    let start = r0 as u64 * row_bytes;
    let end = r1 as u64 * row_bytes;
    let offset = start - start % align;
    Window {
        offset,
        // A matrix with no columns still owns 4 bytes; bind those (the shader reads none).
        size: (end - offset).max(4),
        first: ((start - offset) / 4) as u32,
    }
}

/// The binding of `w` inside `buffer`.
pub(crate) fn binding(buffer: &wgpu::Buffer, w: Window) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: w.offset,
        size: wgpu::BufferSize::new(w.size),
    })
}

/// Most rows of a `cols`-wide matrix that fit one binding wherever the window starts.
pub(crate) fn rows_per_window(cols: usize, binding: u64, align: u64) -> usize {
    if cols == 0 {
        return usize::MAX;
    }
    // A window starts at most align − 4 bytes before its first row (align ≥ 4).
    let usable = binding.saturating_sub(align.max(4) - 4);
    (usable / (cols as u64 * 4)) as usize
}

/// Whole-row windows of a [rows, cols] matrix, each fitting one binding on `gpu`: the rows
/// (first, one past the last) and the binding window of each, in order. One window (the whole
/// matrix) whenever it fits, so kernels that take one dispatch per window cost nothing extra
/// then. Rows must fit a binding (`Gpu::check_row_fits`, checked when the matrix was made).
pub(crate) fn row_windows(gpu: &Gpu, rows: usize, cols: usize) -> Vec<(usize, usize, Window)> {
    let limits = gpu.limits();
    let align = limits.binding_alignment();
    let binding = limits.planned_binding_size.min(limits.max_buffer_size);
    let step = rows_per_window(cols, binding, align).max(1);
    ranges(rows, step)
        .into_iter()
        .map(|(r0, r1)| (r0, r1, window(cols, r0, r1, align)))
        .collect()
}

/// Splits `0..len` into consecutive ranges of at most `step`; one empty range when `len == 0`.
pub(crate) fn ranges(len: usize, step: usize) -> Vec<(usize, usize)> {
    if len == 0 {
        return vec![(0, 0)];
    }
    (0..len)
        .step_by(step)
        .map(|s| (s, (s + step).min(len)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_aligned_and_cover_the_rows() {
        for align in [4u64, 16, 64, 256] {
            for cols in [1usize, 3, 17, 65, 129] {
                for (r0, r1) in [(0, 1), (1, 2), (5, 9), (31, 64)] {
                    let w = window(cols, r0, r1, align);
                    assert_eq!(w.offset % align, 0);
                    assert_eq!(w.offset + w.first as u64 * 4, (r0 * cols * 4) as u64);
                    assert_eq!(w.offset + w.size, (r1 * cols * 4) as u64);
                }
            }
        }
    }

    #[test]
    fn rows_per_window_fit_the_binding_at_any_start() {
        for align in [4u64, 16, 256] {
            for cols in [1usize, 7, 65, 300] {
                let binding = 4096;
                let rows = rows_per_window(cols, binding, align);
                for r0 in 0..50 {
                    let w = window(cols, r0, r0 + rows, align);
                    assert!(w.size <= binding, "cols {cols} align {align} r0 {r0}");
                }
            }
        }
    }

    #[test]
    fn ranges_cover_exactly() {
        assert_eq!(ranges(0, 4), vec![(0, 0)]);
        assert_eq!(ranges(10, 4), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(ranges(8, 8), vec![(0, 8)]);
    }
}
