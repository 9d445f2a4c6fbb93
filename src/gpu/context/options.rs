//! What a context is asked for and what it got: options (backend, adapter, caps), the
//! adapter's summary and the limits dbksvd plans with.

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Environment variable that caps the storage-binding size dbksvd plans with (bytes).
///
/// Lets tests and users exercise the row-block splitting paths on small data, or stay under a
/// driver's limit that the adapter over-reports.
pub const MAX_BINDING_ENV: &str = "DBKSVD_MAX_BINDING_SIZE";

/// Environment variable that caps the buffer size dbksvd plans with (bytes).
///
/// For drivers that report more memory per buffer than they can allocate, and for testing what
/// happens on small devices: dictionaries, Gram matrices and batches beyond it are refused with
/// [`Error::ExceedsLimit`], and the trainer picks a batch below it.
pub const MAX_BUFFER_ENV: &str = "DBKSVD_MAX_BUFFER_SIZE";

/// How to choose and configure the GPU.
///
/// [`GpuOptions::from_env`] reads the usual wgpu variables, so `WGPU_BACKEND=vulkan` and
/// `WGPU_ADAPTER_NAME=nvidia` work as in other wgpu programs.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Comma-separated backends to consider (`vulkan`, `metal`, `dx12`); all compiled-in when `None`.
    pub backends: Option<String>,
    /// Case-insensitive substring of the adapter name to pick; the best adapter when `None`.
    pub adapter_name: Option<String>,
    /// Prefer a low-power (integrated) adapter over a discrete one.
    pub low_power: bool,
    /// Upper bound for one storage binding in bytes, below the device limit (see [`MAX_BINDING_ENV`]).
    pub max_binding_size: Option<u64>,
    /// Upper bound for one buffer in bytes, below the device limit (see [`MAX_BUFFER_ENV`]).
    pub max_buffer_size: Option<u64>,
    /// Time every kernel with timestamp queries ([`Gpu::kernel_times`]) where the adapter has
    /// them (`dbksvd bench --profile`). Each dispatch then gets its own compute pass, and the
    /// timestamps are held on the device until `kernel_times` reads them: a diagnostic mode,
    /// not one to train in for hours.
    pub profile: bool,
}

impl GpuOptions {
    /// Options from `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`, [`MAX_BINDING_ENV`]
    /// and [`MAX_BUFFER_ENV`]; never profiling.
    ///
    /// An unparsable byte count is an error rather than silently ignored.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let bytes = |name: &str| match var(name) {
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                Error::InvalidArgument(format!(
                    "{name}={v:?} is not a byte count (a positive integer)"
                ))
            }),
            None => Ok(None),
        };
        Ok(Self {
            backends: var("WGPU_BACKEND"),
            adapter_name: var("WGPU_ADAPTER_NAME"),
            low_power: var("WGPU_POWER_PREF").is_some_and(|v| v.eq_ignore_ascii_case("low")),
            max_binding_size: bytes(MAX_BINDING_ENV)?,
            max_buffer_size: bytes(MAX_BUFFER_ENV)?,
            profile: false,
        })
    }

    pub(super) fn backends(&self) -> wgpu::Backends {
        match &self.backends {
            Some(list) => wgpu::Backends::from_comma_list(list),
            None => wgpu::Backends::all(),
        }
    }
}

/// What an adapter is, in plain strings (no wgpu types leave `gpu`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Graphics API: `Vulkan`, `Metal`, `Dx12`.
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// PCI vendor id (0 when unknown).
    pub vendor: u32,
    /// PCI device id (0 when unknown).
    pub device: u32,
}

impl AdapterSummary {
    pub(super) fn from_info(info: &wgpu::AdapterInfo) -> Self {
        let driver = match (info.driver.is_empty(), info.driver_info.is_empty()) {
            (false, false) => format!("{} {}", info.driver, info.driver_info),
            (false, true) => info.driver.clone(),
            _ => info.driver_info.clone(),
        };
        Self {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver,
            vendor: info.vendor,
            device: info.device,
        }
    }

    /// True for software rasterisers such as lavapipe (useful for tests, slow for training).
    pub fn is_cpu(&self) -> bool {
        self.device_type == "Cpu"
    }
}

/// The device limits dbksvd plans its work with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Largest storage-buffer binding the device granted (bytes).
    pub max_storage_buffer_binding_size: u64,
    /// Largest binding dbksvd uses: the granted size, lowered by any user cap and to what a
    /// 32-bit element index can address.
    pub planned_binding_size: u64,
    /// Largest buffer dbksvd allocates (bytes): the granted size, lowered by any user cap.
    pub max_buffer_size: u64,
    /// Workgroup memory per workgroup (bytes).
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations per workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Workgroups per dispatch dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// Alignment of storage-binding offsets (bytes).
    pub min_storage_buffer_offset_alignment: u32,
    /// Alignment of uniform-binding offsets (bytes).
    pub min_uniform_buffer_offset_alignment: u32,
    /// Storage buffers one shader stage may bind.
    pub max_storage_buffers_per_shader_stage: u32,
    /// Texels per row and rows of a 2D texture (the coders read G as one, in layers).
    pub max_texture_dimension_2d: u32,
    /// Layers of a 2D array texture.
    pub max_texture_array_layers: u32,
    /// Loop iterations one invocation may run in a dispatch before the driver silently ends its
    /// loops, where the driver has such a cap: Mesa's llvmpipe (lavapipe) stops every loop of an
    /// invocation once 65 535 iterations have run in total, which gives wrong results without
    /// any error. dbksvd plans work below it (or returns `ExceedsLimit`); `None` elsewhere.
    pub max_loop_iterations: Option<u64>,
    /// Invocations per subgroup, where the device runs subgroup operations
    /// (`Features::SUBGROUP`) with one fixed subgroup size (lavapipe: 8); `None` elsewhere. On
    /// CPU adapters the coders then keep each sample's correlations in one subgroup's registers,
    /// the update each atom's iterate, and (llvmpipe, 8 wide) the texel GEMM shares A's texels
    /// across a subgroup.
    pub subgroup_size: Option<u32>,
    /// Whether the device runs subgroup operations (`Features::SUBGROUP`) at all, of any size:
    /// the modules holding them (the resident coders) are built only then.
    pub(crate) subgroups: bool,
    /// Whether the kernels' CPU-adapter variants are planned (the subgroup resident coder and
    /// the barrier-free sweep, the texel GEMM and its subgroup variant, texture copies and
    /// per-sample folds in the update): the adapter's class, unless a
    /// test view plans as a GPU would.
    pub(crate) cpu_paths: bool,
    /// Whether Batch-OMP runs fused on CPU adapters (`fused_omp`: each greedy step's sweep and
    /// select in one kernel, one invocation per sample) where its plan fits; off in a view
    /// that times or tests the sweeps there.
    pub(crate) fused_omp: bool,
}

impl DeviceLimits {
    /// Storage-binding offset alignment used for planning: at least one f32, since windows
    /// start at whole elements.
    pub fn binding_alignment(&self) -> u64 {
        (self.min_storage_buffer_offset_alignment as u64).max(4)
    }

    /// Checks that a binding cap leaves room for at least one element after alignment slack.
    pub(super) fn check_cap(&self, cap: u64) -> Result<()> {
        if cap < self.binding_alignment() + 4 {
            return Err(Error::InvalidArgument(format!(
                "max binding size {cap} bytes is too small: bindings start at multiples of \
                 min_storage_buffer_offset_alignment = {} bytes, so at least {} are needed",
                self.min_storage_buffer_offset_alignment,
                self.binding_alignment() + 4
            )));
        }
        Ok(())
    }
}

impl DeviceLimits {
    /// Lowers the buffer size to `cap` (and bindings with it).
    pub(super) fn cap_buffer(&mut self, cap: u64) -> Result<()> {
        self.check_cap(cap)?;
        self.max_buffer_size = self.max_buffer_size.min(cap & !3);
        self.planned_binding_size = self.planned_binding_size.min(self.max_buffer_size);
        Ok(())
    }
}

impl Gpu {
    /// Checks a kernel's estimated loop iterations per invocation against the driver's cap.
    pub(crate) fn check_loop_budget(&self, what: &str, iterations: u64) -> Result<()> {
        match self.limits.max_loop_iterations {
            Some(cap) if iterations > cap => Err(Error::ExceedsLimit {
                what: format!("{what} (loop iterations per invocation)"),
                requested: iterations,
                limit_name: "max_loop_iterations (llvmpipe's per-invocation loop cap)",
                limit: cap,
                largest_batch: None,
            }),
            _ => Ok(()),
        }
    }
}

impl DeviceLimits {
    /// The limits dbksvd plans with on a device granted `granted`.
    pub(super) fn granted(
        granted: &wgpu::Limits,
        summary: &AdapterSummary,
        info: &wgpu::AdapterInfo,
        subgroups: wgpu::Features,
    ) -> Self {
        // Element indices in the shaders are u32: a binding past 2^32 bytes could not be
        // addressed with headroom, so plan below that whatever the device grants.
        let index_cap = (u32::MAX as u64) & !255;
        Self {
            max_storage_buffer_binding_size: granted.max_storage_buffer_binding_size,
            planned_binding_size: granted.max_storage_buffer_binding_size.min(index_cap),
            max_buffer_size: granted.max_buffer_size,
            max_compute_workgroup_storage_size: granted.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: granted.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: granted.max_compute_workgroups_per_dimension,
            min_storage_buffer_offset_alignment: granted.min_storage_buffer_offset_alignment,
            min_uniform_buffer_offset_alignment: granted.min_uniform_buffer_offset_alignment,
            max_storage_buffers_per_shader_stage: granted.max_storage_buffers_per_shader_stage,
            max_texture_dimension_2d: granted.max_texture_dimension_2d,
            max_texture_array_layers: granted.max_texture_array_layers,
            // gallivm's LP_MAX_TGSI_LOOP_ITERATIONS is 65 535; plan for 45 000 so that the
            // kernels' iteration estimates may be off by 30 % (measured: a GEMM estimated at
            // 59 800 iterations was already truncated).
            max_loop_iterations: summary
                .name
                .to_lowercase()
                .contains("llvmpipe")
                .then_some(45_000),
            subgroup_size: (!subgroups.is_empty()
                && info.subgroup_min_size == info.subgroup_max_size)
                .then_some(info.subgroup_min_size),
            subgroups: !subgroups.is_empty(),
            cpu_paths: summary.is_cpu(),
            fused_omp: true,
        }
    }
}
