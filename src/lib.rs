//! # dbksvd
//!
//! Double-Batch KSVD (DB-KSVD, Valentin et al., arXiv 2505.18441) sparse dictionary learning on any
//! GPU through WebGPU: wgpu with WGSL compute shaders on Vulkan, Metal and DX12, including software
//! Vulkan (lavapipe) for machines without a GPU.
//!
//! ```no_run
//! use dbksvd::{ActivationFile, CodingOptions, Dictionary, Gpu, TrainConfig, Trainer};
//! # fn main() -> dbksvd::Result<()> {
//! let gpu = Gpu::new()?; // honours WGPU_BACKEND and WGPU_ADAPTER_NAME
//! let activations = ActivationFile::open("acts.safetensors")?; // [N, d], f32/f16/bf16
//! let result = Trainer::new(&gpu, TrainConfig::new(1536, 32)).fit(&activations)?; // K, k
//! result.dictionary.save("dictionary.safetensors")?;
//! let dictionary = Dictionary::load("dictionary.safetensors")?;
//! let codes = dictionary.encoder(&gpu, CodingOptions::omp(32))?.encode(&[0.0; 384])?;
//! println!("atoms used: {:?}", codes.row(0).collect::<Vec<_>>());
//! # Ok(()) }
//! ```
//!
//! Samples Y [N, d] are approximated as X·D with unit-norm atoms D [K, d] and at most k nonzeros
//! per row of X.
//!
//! Layout, from the bottom: [`error`] holds the one error enum; [`coding`] what sparse coding is
//! asked for and returns (options, codes); [`gpu`] owns every wgpu type (context, buffers, one
//! module per shader family) and imports nothing above it;
//! [`data`] streams activation files; [`files`] writes files atomically and reads safetensors;
//! [`encode`] is the sparse-coding API; [`dictionary`] the trained dictionary and its file;
//! [`train`] the DB-KSVD driver; [`export`] what a run leaves for others (codes, SAELens,
//! the run's outputs and trace);
//! [`mod@reference`] is the f64 CPU oracle for every kernel and for the whole algorithm;
//! [`mod@bench`] measures a device on synthetic data (`dbksvd bench`).

// Every public item says what it does (`cargo clippy -- -D warnings` makes a gap an error).
#![warn(missing_docs)]

/// `with_*` setters for a configuration's public fields, each returning the configuration
/// (`option` setters wrap the value in `Some`).
macro_rules! with_setters {
    ($($setter:ident => $field:ident: $ty:ty),* $(,)?) => {$(
        #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
        #[must_use]
        pub fn $setter(mut self, value: $ty) -> Self {
            self.$field = value;
            self
        }
    )*};
    (option $($setter:ident => $field:ident: $ty:ty),* $(,)?) => {$(
        #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ") to `Some(value)`.")]
        #[must_use]
        pub fn $setter(mut self, value: $ty) -> Self {
            self.$field = Some(value);
            self
        }
    )*};
}

pub mod bench;
pub mod check;
pub mod coding;
pub mod data;
pub mod dictionary;
pub mod encode;
pub mod error;
pub mod export;
pub mod files;
pub mod gpu;
pub mod reference;
pub mod train;

pub use coding::{CodingOptions, SparseCodes};
pub use data::ActivationFile;
pub use dictionary::Dictionary;
pub use encode::{EncodeOptions, Encoder, EncoderOptions};
pub use error::{Error, Result};
pub use gpu::Gpu;
pub use train::{TrainConfig, Trainer};

/// Compiles the README's code so it cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
