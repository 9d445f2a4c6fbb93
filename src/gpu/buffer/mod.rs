//! Typed storage buffers and row-major matrices on the device.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytemuck::Pod;

use super::Gpu;
use crate::error::{shape, Error, Result};

mod texture;
mod windows;

pub(crate) use texture::{
    copy_flat, flat_texture, texture_rows, GpuTexture, ScratchTexture, TextureShape,
};
pub(crate) use windows::{binding, ranges, row_windows, rows_per_window, window, Window};

/// Gives every buffer an identity so aliasing (the same buffer read and written by one dispatch)
/// is caught on the host with a clear error rather than as a wgpu usage conflict.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Bytes of device memory a [`Gpu`] holds through dbksvd's buffers now, and the most it has
/// held: what `dbksvd bench` reports as peak device memory. Per device, so contexts in one
/// process (tests) do not mix their figures.
#[derive(Debug, Default)]
pub(crate) struct MemoryCounter {
    live: AtomicU64,
    peak: AtomicU64,
}

impl MemoryCounter {
    /// Counts `bytes` until the returned allocation drops.
    fn track(self: &Arc<Self>, bytes: u64) -> Allocation {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
        Allocation {
            counter: Arc::clone(self),
            bytes,
        }
    }
}

/// One counted allocation: its bytes leave the count when the last handle to it drops.
#[derive(Debug)]
struct Allocation {
    counter: Arc<MemoryCounter>,
    bytes: u64,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.counter.live.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A storage buffer of `len` elements of `T` on the device.
///
/// Usable as a storage binding and as a copy source and destination. Zero-length buffers still
/// own 4 bytes so they can be bound; `len` stays 0.
pub struct GpuBuffer<T: Pod> {
    pub(crate) buffer: wgpu::Buffer,
    len: usize,
    id: u64,
    /// Shared by [`GpuBuffer::share`]d handles, so the bytes are counted once.
    _allocation: Arc<Allocation>,
    _element: PhantomData<T>,
}

impl<T: Pod> std::fmt::Debug for GpuBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBuffer")
            .field("len", &self.len)
            .field("bytes", &self.buffer.size())
            .finish()
    }
}

impl<T: Pod> GpuBuffer<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes of the elements (not counting padding).
    pub fn byte_len(&self) -> u64 {
        (self.len * std::mem::size_of::<T>()) as u64
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// A second handle to the same device memory (same identity for alias checks).
    pub(crate) fn share(&self) -> Self {
        Self {
            buffer: self.buffer.clone(),
            len: self.len,
            id: self.id,
            _allocation: Arc::clone(&self._allocation),
            _element: PhantomData,
        }
    }
}

/// `len` bytes rounded up to the 4-byte copy alignment, at least 4.
fn padded_len(len: usize) -> u64 {
    (len.max(4).div_ceil(4) * 4) as u64
}

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    /// Bytes for `len` elements of `T`, padded to the 4-byte copy alignment, checked against
    /// the device's buffer limit.
    pub(crate) fn buffer_bytes<T: Pod>(&self, len: usize, what: &str) -> Result<u64> {
        let bytes = (len as u128) * (std::mem::size_of::<T>() as u128);
        let padded = bytes.max(4).div_ceil(4) * 4;
        let limit = self.limits().max_buffer_size;
        if padded > limit as u128 {
            return Err(Error::ExceedsLimit {
                what: format!("{what} ({len} elements, bytes)"),
                requested: u64::try_from(padded).unwrap_or(u64::MAX),
                limit_name: "max_buffer_size",
                limit,
                largest_batch: None,
            });
        }
        Ok(padded as u64)
    }

    /// A new buffer holding `contents` (zero-padded to the 4-byte copy alignment), for `usage`.
    ///
    /// Written through the queue rather than mapped at creation: wgpu's `create_buffer_init`
    /// panics when the device is lost, where a queue write becomes an error the scope reports.
    pub(crate) fn buffer_init(
        &self,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        let size = padded_len(contents.len());
        let buffer = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: usage | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if !contents.is_empty() {
            if contents.len() as u64 == size {
                self.queue().write_buffer(&buffer, 0, contents);
            } else {
                let mut padded = contents.to_vec();
                padded.resize(size as usize, 0);
                self.queue().write_buffer(&buffer, 0, &padded);
            }
        }
        buffer
    }

    /// Copies `data` into a new device buffer.
    pub fn upload<T: Pod>(&self, data: &[T]) -> Result<GpuBuffer<T>> {
        let bytes = self.buffer_bytes::<T>(data.len(), "upload")?;
        debug_assert_eq!(bytes, padded_len(std::mem::size_of_val(data)));
        let buffer = self
            .scoped(|| Ok(self.buffer_init("dbksvd upload", bytemuck::cast_slice(data), USAGE)))?;
        Ok(GpuBuffer {
            buffer,
            len: data.len(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            _allocation: Arc::new(self.inner.memory.track(bytes)),
            _element: PhantomData,
        })
    }

    /// A new device buffer of `len` zeroed elements (wgpu zero-initialises new buffers).
    pub fn zeroed<T: Pod>(&self, len: usize) -> Result<GpuBuffer<T>> {
        let bytes = self.buffer_bytes::<T>(len, "zeroed buffer")?;
        let buffer = self.scoped(|| {
            Ok(self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("dbksvd buffer"),
                size: bytes,
                usage: USAGE,
                mapped_at_creation: false,
            }))
        })?;
        Ok(GpuBuffer {
            buffer,
            len,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            _allocation: Arc::new(self.inner.memory.track(bytes)),
            _element: PhantomData,
        })
    }

    /// Overwrites the start of `buffer` with `data`.
    pub fn write<T: Pod>(&self, buffer: &GpuBuffer<T>, data: &[T]) -> Result<()> {
        if data.len() > buffer.len() {
            return Err(Error::InvalidArgument(format!(
                "writing {} elements into a buffer of {}",
                data.len(),
                buffer.len()
            )));
        }
        let raw: &[u8] = bytemuck::cast_slice(data);
        if raw.is_empty() {
            return Ok(());
        }
        // wgpu copies whole 4-byte words; element types here are 4 bytes wide.
        if !raw.len().is_multiple_of(4) {
            return Err(Error::InvalidArgument(format!(
                "write of {} bytes is not a multiple of 4",
                raw.len()
            )));
        }
        self.scoped(|| {
            self.queue().write_buffer(&buffer.buffer, 0, raw);
            Ok(())
        })
    }

    /// Copies the whole buffer back to the host. Waits for all submitted work first.
    pub fn read<T: Pod>(&self, buffer: &GpuBuffer<T>) -> Result<Vec<T>> {
        let encoder = self.encoder("dbksvd readback");
        self.submit_and_read(encoder, buffer, buffer.len())
    }

    pub(crate) fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Submits recorded work.
    pub(crate) fn submit(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.scoped(|| {
            self.queue().submit([encoder.finish()]);
            Ok(())
        })
    }

    /// Submits `encoder` followed by a copy of the first `len` elements of `buffer` to a staging
    /// buffer, waits, and returns them: one submission and one readback for a whole step.
    pub(crate) fn submit_and_read<T: Pod>(
        &self,
        mut encoder: wgpu::CommandEncoder,
        buffer: &GpuBuffer<T>,
        len: usize,
    ) -> Result<Vec<T>> {
        let len = len.min(buffer.len());
        let elements = len * std::mem::size_of::<T>();
        // Copies move whole 4-byte words.
        let size = (elements.max(4).div_ceil(4) * 4) as u64;
        // Counted while this call holds it: a large readback is part of the peak.
        let _counted = self.inner.memory.track(size);
        let staging = self.scoped(|| {
            let staging = self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("dbksvd readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            if len > 0 {
                encoder.copy_buffer_to_buffer(&buffer.buffer, 0, &staging, 0, size);
            }
            self.queue().submit([encoder.finish()]);
            Ok(staging)
        })?;
        if len == 0 {
            self.wait()?;
            return Ok(Vec::new());
        }

        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            // The receiver outlives the poll below; a send error cannot happen.
            let _ = tx.send(r);
        });
        self.wait()?;
        // Another thread's poll may be running our callback right now; give it time rather
        // than reporting a spurious failure, but never hang.
        let mut result = rx.try_recv().ok();
        for _ in 0..100 {
            if result.is_some() {
                break;
            }
            result = rx.recv_timeout(std::time::Duration::from_millis(100)).ok();
            if result.is_none() {
                self.wait()?;
            }
        }
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::BufferMap(e.to_string())),
            None => {
                return Err(Error::BufferMap(
                    "the map callback did not run within 10 s of the device going idle".into(),
                ))
            }
        }
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::BufferMap(e.to_string()))?;
            bytemuck::pod_collect_to_vec::<u8, T>(&view[..elements])
        };
        staging.unmap();
        Ok(out)
    }
}

impl Gpu {
    /// Bytes of device memory dbksvd's buffers hold now: storage buffers (matrices, codes,
    /// scratch) and readback copies while a read runs. Small uniform parameter records and
    /// the driver's own allocations are not counted. Shared by clones of this context.
    pub fn memory_in_use(&self) -> u64 {
        self.inner.memory.live.load(Ordering::Relaxed)
    }

    /// The most bytes [`Gpu::memory_in_use`] has reached since the device was opened or since
    /// [`Gpu::reset_memory_peak`]: the device memory a workload needs from dbksvd.
    pub fn memory_peak(&self) -> u64 {
        self.inner.memory.peak.load(Ordering::Relaxed)
    }

    /// Restarts [`Gpu::memory_peak`] from what is in use now, to measure one workload's peak.
    pub fn reset_memory_peak(&self) {
        let memory = &self.inner.memory;
        memory
            .peak
            .store(memory.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Parameter records of several dispatches in one uniform buffer, each at an offset the device
/// accepts, so one buffer serves many bind groups.
pub(crate) struct UniformRecords {
    buffer: wgpu::Buffer,
    stride: u64,
    size: u64,
}

impl UniformRecords {
    /// The whole buffer: bound whole, a kernel's uniform reads record 0.
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The binding of record `i`.
    pub(crate) fn binding(&self, i: usize) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: i as u64 * self.stride,
            size: wgpu::BufferSize::new(self.size),
        })
    }
}

impl Gpu {
    /// Uploads `records` as [`UniformRecords`].
    pub(crate) fn uniform_records<T: Pod>(
        &self,
        label: &str,
        records: &[T],
    ) -> Result<UniformRecords> {
        let size = std::mem::size_of::<T>() as u64;
        let stride =
            size.next_multiple_of(self.limits().min_uniform_buffer_offset_alignment as u64);
        let mut bytes = vec![0u8; (stride as usize) * records.len().max(1)];
        for (i, record) in records.iter().enumerate() {
            let at = i * stride as usize;
            bytes[at..at + size as usize].copy_from_slice(bytemuck::bytes_of(record));
        }
        let buffer =
            self.scoped(|| Ok(self.buffer_init(label, &bytes, wgpu::BufferUsages::UNIFORM)))?;
        Ok(UniformRecords {
            buffer,
            stride,
            size,
        })
    }
}

/// A device buffer kept between jobs of one kind and grown when a job needs more: jobs on one
/// queue run one after another, so they can share it. Counted in [`Gpu::memory_peak`] like every
/// other buffer; its contents are whatever the last job left.
pub(crate) struct Scratch<T: Pod>(Mutex<Option<GpuBuffer<T>>>);

impl<T: Pod> Default for Scratch<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: Pod> Scratch<T> {
    /// The buffer, of at least `len` elements.
    pub(crate) fn get(&self, gpu: &Gpu, len: usize) -> Result<GpuBuffer<T>> {
        let mut cached = self
            .0
            .lock()
            .map_err(|_| Error::Internal("scratch cache poisoned by a panic".into()))?;
        if let Some(buffer) = cached.as_ref().filter(|b| b.len() >= len) {
            return Ok(buffer.share());
        }
        // Drop the old one first so the two are never held together.
        *cached = None;
        let buffer = gpu.zeroed::<T>(len)?;
        *cached = Some(buffer.share());
        Ok(buffer)
    }
}

/// A row-major `rows × cols` f32 matrix on the device.
#[derive(Debug)]
pub struct Matrix {
    pub(crate) data: GpuBuffer<f32>,
    rows: usize,
    cols: usize,
}

impl Matrix {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `[rows, cols]` for messages.
    pub fn shape(&self) -> String {
        shape(self.rows, self.cols)
    }

    /// The first `rows` rows as a matrix sharing this one's memory (a partial last batch).
    pub(crate) fn prefix(&self, rows: usize) -> Matrix {
        Matrix {
            data: self.data.share(),
            rows: rows.min(self.rows),
            cols: self.cols,
        }
    }
}

impl Gpu {
    /// Uploads a row-major `rows × cols` matrix.
    pub fn matrix(&self, rows: usize, cols: usize, data: &[f32]) -> Result<Matrix> {
        let expected = checked_len(rows, cols)?;
        if data.len() != expected {
            return Err(Error::DataLength {
                what: "matrix upload".into(),
                rows,
                cols,
                expected,
                actual: data.len(),
            });
        }
        self.check_row_fits(rows, cols)?;
        Ok(Matrix {
            data: self.upload(data)?,
            rows,
            cols,
        })
    }

    /// A zero-filled `rows × cols` matrix.
    pub fn zeros(&self, rows: usize, cols: usize) -> Result<Matrix> {
        let len = checked_len(rows, cols)?;
        self.check_row_fits(rows, cols)?;
        Ok(Matrix {
            data: self.zeroed(len)?,
            rows,
            cols,
        })
    }

    /// Reads a matrix back as a row-major vector.
    pub fn read_matrix(&self, m: &Matrix) -> Result<Vec<f32>> {
        self.read(&m.data)
    }

    /// Kernels bind whole rows, so one row must fit a binding even after alignment slack.
    pub(crate) fn check_row_fits(&self, rows: usize, cols: usize) -> Result<()> {
        let limits = self.limits();
        let row_bytes = cols as u64 * 4;
        let usable = limits
            .planned_binding_size
            .saturating_sub(limits.binding_alignment() - 4);
        if rows > 0 && row_bytes > usable {
            return Err(Error::ExceedsLimit {
                what: format!("one row of a {} matrix (bytes)", shape(rows, cols)),
                requested: row_bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: usable,
                largest_batch: None,
            });
        }
        Ok(())
    }
}

fn checked_len(rows: usize, cols: usize) -> Result<usize> {
    rows.checked_mul(cols).ok_or_else(|| {
        Error::InvalidArgument(format!("matrix shape {} overflows", shape(rows, cols)))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_counts_shared_buffers_once_and_keeps_the_peak() {
        let Some(gpu) = crate::gpu::context::fresh_gpu() else {
            return;
        };
        let before = gpu.memory_in_use();
        let a = gpu.zeroed::<f32>(1000).unwrap();
        let shared = a.share();
        assert_eq!(gpu.memory_in_use(), before + 4000);
        drop(a);
        assert_eq!(gpu.memory_in_use(), before + 4000);
        drop(shared);
        assert_eq!(gpu.memory_in_use(), before);
        assert!(gpu.memory_peak() >= before + 4000);
        gpu.reset_memory_peak();
        assert_eq!(gpu.memory_peak(), before);
    }
}
