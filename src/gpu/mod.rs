//! Everything that talks to the GPU through wgpu. No other module names a wgpu type.
//!
//! - [`context`]: adapter choice, device with the adapter's own limits, error capture;
//! - [`buffer`]: typed storage buffers and row-major matrices;
//! - [`gemm`]: the matrix products of `shaders/gemm.wgsl`;
//! - `omp`: batched sparse coding of `shaders/omp.wgsl`, used through [`crate::encode::Encoder`];
//! - `sparse`: residual and code transpose of `shaders/sparse.wgsl`;
//! - [`power`]: the double-batched KSVD dictionary update of `shaders/power.wgsl`;
//! - [`reduce`]: atom replacement (re-seeding, duplicate purge) and coherence of
//!   `shaders/reduce.wgsl`;
//! - [`split`]: the epoch-end re-seeding that splits the atoms carrying the most residual, of
//!   `shaders/split.wgsl`;
//! - [`profile`]: kernel times by timestamp queries (`dbksvd bench --profile`);
//! - `step`: one training step composed from the above (two submissions per sample batch).

pub mod buffer;
pub mod context;
pub mod gemm;
pub(crate) mod layout;
pub(crate) mod omp;
pub mod power;
pub mod profile;
pub mod reduce;
pub(crate) mod sparse;
pub mod split;
pub(crate) mod step;
#[cfg(test)]
pub(crate) mod uniform_layout;

pub use buffer::{GpuBuffer, Matrix};
pub use context::{
    list_adapters, panic_is_caught, AdapterSummary, DeviceLimits, Gpu, GpuOptions, MAX_BINDING_ENV,
    MAX_BUFFER_ENV,
};
pub use gemm::{GemmKernel, GemmParams, Product};
pub use power::{CodedBatch, UpdateOptions};
pub use profile::KernelTime;
pub use reduce::Reseeded;
