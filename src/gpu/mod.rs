//! Everything that talks to the GPU through wgpu. No other module names a wgpu type.
//!
//! - [`context`]: adapter choice, device with the adapter's own limits, error capture;
//! - [`buffer`]: typed storage buffers and row-major matrices;
//! - [`gemm`]: the matrix products of `shaders/gemm.wgsl`;
//! - `omp`: batched sparse coding of `shaders/omp.wgsl`, used through [`crate::encode::Encoder`].

pub mod buffer;
pub mod context;
pub mod gemm;
pub(crate) mod omp;

pub use buffer::{GpuBuffer, Matrix};
pub use context::{list_adapters, AdapterSummary, DeviceLimits, Gpu, GpuOptions, MAX_BINDING_ENV};
pub use gemm::{GemmKernel, GemmParams, Product};
