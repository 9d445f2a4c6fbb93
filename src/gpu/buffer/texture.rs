//! Textures the CPU-adapter kernels read with `textureLoad`: shapes that fit the device's
//! limits (rows in layers), flat copies of [·, d] buffers, and a scratch cache.

use std::sync::{Arc, Mutex};

use super::Allocation;
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// The shape of a scratch texture: texels per row, rows, layers, texel format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TextureShape {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) layers: u32,
    pub(crate) format: wgpu::TextureFormat,
}

impl TextureShape {
    /// Bytes the texture occupies, for the memory count.
    fn bytes(&self) -> u64 {
        let texel = self.format.block_copy_size(None).unwrap_or(16) as u64;
        self.width as u64 * self.height as u64 * self.layers as u64 * texel
    }
}

/// Where `rows` rows of `width` texels lie in a 2D array texture: row r at row
/// r & (2^shift − 1) of layer r >> shift (a power of two, so kernels split a row index with a
/// shift). One layer while the rows fit a side, else layers of the largest power of two that
/// does. With `one_class`, sides are rounded so that every shape is of one class (see below):
/// for operands whose shapes change from call to call. Err names the limit the rows or their
/// width exceed: (requested, limit name, limit).
pub(crate) fn texture_rows(
    gpu: &Gpu,
    rows: usize,
    width: usize,
    format: wgpu::TextureFormat,
    one_class: bool,
) -> std::result::Result<(TextureShape, u32), (u64, &'static str, u64)> {
    let limits = gpu.limits();
    let side = limits.max_texture_dimension_2d.max(1) as usize;
    let layer_rows = rows.max(1).next_power_of_two().min(1 << side.ilog2());
    let layers = rows.max(1).div_ceil(layer_rows);
    if width > side {
        return Err((width as u64, "max_texture_dimension_2d", side as u64));
    }
    if layers > limits.max_texture_array_layers as usize {
        return Err((
            layers as u64,
            "max_texture_array_layers",
            limits.max_texture_array_layers as u64,
        ));
    }
    // One class: always a power-of-two height and never a power-of-two width (padded by a
    // texel). llvmpipe compiles a kernel variant per power-of-two-ness of its textures' sides
    // (about a second for the GEMM), so one class keeps one variant.
    let (width, height) = match one_class {
        true if width.max(1).is_power_of_two() && width < side => (width.max(1) + 1, layer_rows),
        true => (width.max(1), layer_rows),
        false => (width.max(1), layer_rows.min(rows.max(1))),
    };
    let shape = TextureShape {
        width: width as u32,
        height: height as u32,
        layers: layers as u32,
        format,
    };
    Ok((shape, layer_rows.ilog2()))
}

/// Texels per row of a [`flat_texture`]: 64 texels of 16 bytes are 1 KiB, a multiple of the
/// 256-byte row pitch that buffer-to-texture copies require.
const FLAT_TEXELS: usize = 64;

/// The shape (and layer shift) of a texture holding `texels` 16-byte texels of `format`
/// (rgba32float, rgba32uint, rgba32sint) in a flat run: texel f at column f % 64 of row f / 64,
/// rows in layers of 2^shift (see [`texture_rows`]). Sides are powers of two, so every such
/// texture is of one llvmpipe variant class. `None` where the device's textures cannot hold
/// them.
pub(crate) fn flat_texture(
    gpu: &Gpu,
    texels: usize,
    format: wgpu::TextureFormat,
) -> Option<(TextureShape, u32)> {
    let rows = texels.div_ceil(FLAT_TEXELS);
    let (shape, shift) = texture_rows(gpu, rows, FLAT_TEXELS, format, false).ok()?;
    Some((
        TextureShape {
            height: 1 << shift,
            ..shape
        },
        shift,
    ))
}

/// Records the copy of vec4 texels `first .. first + count` of `buffer` into the same places of
/// `texture`, laid out as [`flat_texture`] with layers of 2^`shift` rows: partial rows one by
/// one, runs of whole rows one copy per layer they cross.
pub(crate) fn copy_flat(
    encoder: &mut wgpu::CommandEncoder,
    buffer: &wgpu::Buffer,
    first: usize,
    count: usize,
    texture: &wgpu::Texture,
    shift: u32,
) {
    let layer_rows = 1usize << shift;
    let (mut f, end) = (first, first + count);
    while f < end {
        let (row, column) = (f / FLAT_TEXELS, f % FLAT_TEXELS);
        let (width, rows) = if column != 0 || end - f < FLAT_TEXELS {
            ((FLAT_TEXELS - column).min(end - f), 1)
        } else {
            let in_layer = layer_rows - row % layer_rows;
            (FLAT_TEXELS, ((end - f) / FLAT_TEXELS).min(in_layer))
        };
        encoder.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 16 * f as u64,
                    bytes_per_row: Some(16 * FLAT_TEXELS as u32),
                    rows_per_image: None,
                },
            },
            wgpu::TexelCopyTextureInfo {
                texture,
                mip_level: 0,
                origin: wgpu::Origin3d {
                    x: column as u32,
                    y: (row % layer_rows) as u32,
                    z: (row / layer_rows) as u32,
                },
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::Extent3d {
                width: width as u32,
                height: rows as u32,
                depth_or_array_layers: 1,
            },
        );
        f += width * rows;
    }
}

/// A texture written by one kernel as a storage texture and read by the next with
/// `textureLoad`, counted in [`Gpu::memory_peak`] like a buffer.
pub(crate) struct GpuTexture {
    pub(crate) texture: wgpu::Texture,
    shape: TextureShape,
    _allocation: Allocation,
}

impl GpuTexture {
    /// A view of the whole texture (every layer, as `dimension`).
    pub(crate) fn view(&self, dimension: wgpu::TextureViewDimension) -> wgpu::TextureView {
        self.texture.create_view(&wgpu::TextureViewDescriptor {
            dimension: Some(dimension),
            ..Default::default()
        })
    }
}

/// A device texture reused by the jobs of one kernel family while its shape stays the same
/// (see [`Scratch`]).
#[derive(Default)]
pub(crate) struct ScratchTexture(Mutex<Option<Arc<GpuTexture>>>);

impl ScratchTexture {
    /// A texture of `shape`'s width, layers and format and at least its height (rows past the
    /// ones a job uses are never read), so a short last batch reuses the full one's.
    pub(crate) fn get(&self, gpu: &Gpu, shape: TextureShape) -> Result<Arc<GpuTexture>> {
        let mut cached = self
            .0
            .lock()
            .map_err(|_| Error::Internal("scratch cache poisoned by a panic".into()))?;
        let fits = |t: &&Arc<GpuTexture>| {
            TextureShape {
                height: shape.height,
                ..t.shape
            } == shape
                && t.shape.height >= shape.height
        };
        if let Some(texture) = cached.as_ref().filter(fits) {
            return Ok(Arc::clone(texture));
        }
        *cached = None;
        let texture = gpu.scoped(|| {
            Ok(gpu.device().create_texture(&wgpu::TextureDescriptor {
                label: Some("dbksvd texture"),
                size: wgpu::Extent3d {
                    width: shape.width,
                    height: shape.height,
                    depth_or_array_layers: shape.layers,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: shape.format,
                // Kernels read textures as read-only storage textures (none samples them).
                usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
                view_formats: &[],
            }))
        })?;
        let texture = Arc::new(GpuTexture {
            texture,
            shape,
            _allocation: gpu.inner.memory.track(shape.bytes()),
        });
        *cached = Some(Arc::clone(&texture));
        Ok(texture)
    }
}
