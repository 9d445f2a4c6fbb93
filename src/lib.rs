//! # dbksvd
//!
//! Double-Batch KSVD (DB-KSVD, Valentin et al., arXiv 2505.18441) sparse dictionary learning on any
//! GPU through WebGPU: wgpu with WGSL compute shaders on Vulkan, Metal and DX12, including software
//! Vulkan (lavapipe) for machines without a GPU.
//!
//! Samples Y [N, d] are approximated as X·D with unit-norm atoms D [K, d] and at most k nonzeros
//! per row of X.
//!
//! Layout, from the bottom: [`error`] holds the one error enum; [`coding`] what sparse coding is
//! asked for and returns (options, codes); [`gpu`] owns every wgpu type (context, buffers, one
//! module per shader family) and imports nothing above it;
//! [`data`] streams activation files; [`train`] is the DB-KSVD driver; [`encode`] the sparse-coding
//! API; [`export`] the file formats (dictionary, checkpoints, codes, SAELens, traces);
//! [`mod@reference`] is the f64 CPU oracle for every kernel and for the whole algorithm;
//! [`mod@bench`] measures a device on synthetic data (`dbksvd bench`).
//!
//! ```no_run
//! use dbksvd::gpu::Gpu;
//! # fn main() -> dbksvd::Result<()> {
//! let gpu = Gpu::new()?; // honours WGPU_BACKEND and WGPU_ADAPTER_NAME
//! let atoms = gpu.matrix(2, 3, &[1.0, 0.0, 0.0, 0.6, 0.8, 0.0])?;
//! let gram = gpu.gram(&atoms)?;
//! assert_eq!(gpu.read_matrix(&gram)?.len(), 4);
//! # Ok(()) }
//! ```

pub mod bench;
pub mod check;
pub mod coding;
pub mod data;
pub mod encode;
pub mod error;
pub mod export;
pub mod gpu;
pub mod reference;
pub mod train;

pub use error::{Error, Result};
pub use gpu::Gpu;

/// Compiles the README's code so it cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
