//! The GPU context: adapter choice, device creation with the adapter's own limits, error capture.

use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};

use crate::gpu::buffer::MemoryCounter;
use crate::gpu::gemm::GemmKernels;
use crate::gpu::omp::OmpKernels;
use crate::gpu::power::PowerKernels;
use crate::gpu::profile::Profiler;
use crate::gpu::reduce::ReduceKernels;
use crate::gpu::sparse::SparseKernels;
use crate::gpu::split::SplitKernels;

mod options;
mod views;

pub use options::{AdapterSummary, DeviceLimits, GpuOptions, MAX_BINDING_ENV, MAX_BUFFER_ENV};

/// Errors wgpu reported outside an error scope, or the device-lost callback, kept until the next
/// check so they become an [`Error`] instead of a panic in wgpu's default handler.
#[derive(Default)]
pub(crate) struct ErrorSink {
    uncaptured: Mutex<Vec<wgpu::Error>>,
    lost: Mutex<Option<String>>,
}

impl ErrorSink {
    /// A sink that records `device`'s uncaptured errors and its loss.
    fn attach(device: &wgpu::Device) -> Arc<Self> {
        let sink = Arc::new(ErrorSink::default());
        let errors = Arc::clone(&sink);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("uncaptured GPU error: {e}");
            if let Ok(mut errors) = errors.uncaptured.lock() {
                errors.push(e);
            }
        }));
        let lost = Arc::clone(&sink);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut lost) = lost.lost.lock() {
                *lost = Some(format!("{reason:?}: {message}"));
            }
        });
        sink
    }
}

pub(crate) struct GpuInner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    summary: AdapterSummary,
    sink: Arc<ErrorSink>,
    /// Device memory held through dbksvd's buffers (see [`Gpu::memory_peak`]).
    pub(crate) memory: Arc<MemoryCounter>,
    gemm: OnceLock<GemmKernels>,
    pub(crate) omp: OnceLock<OmpKernels>,
    pub(crate) sparse: OnceLock<SparseKernels>,
    pub(crate) power: OnceLock<PowerKernels>,
    pub(crate) reduce: OnceLock<ReduceKernels>,
    pub(crate) split: OnceLock<SplitKernels>,
    /// Kernel timestamps, on a profiling context (see `gpu::profile`).
    pub(crate) profiler: Option<Profiler>,
}

/// A GPU device ready to run dbksvd's kernels.
///
/// Cheap to clone (the device is shared); pipelines are built on first use and kept.
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<GpuInner>,
    limits: DeviceLimits,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.inner.summary)
            .field("limits", &self.limits)
            .finish()
    }
}

fn instance(options: &GpuOptions) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = options.backends();
    wgpu::Instance::new(desc)
}

/// Rank for the default choice: lower is preferred.
fn preference(device_type: wgpu::DeviceType, low_power: bool) -> u8 {
    use wgpu::DeviceType::*;
    match (device_type, low_power) {
        (DiscreteGpu, false) | (IntegratedGpu, true) => 0,
        (IntegratedGpu, false) | (DiscreteGpu, true) => 1,
        (VirtualGpu, _) => 2,
        (Other, _) => 3,
        (Cpu, _) => 4,
    }
}

/// Lists the adapters the options' backends can see, in the order [`Gpu::new`] prefers them.
pub fn list_adapters(options: &GpuOptions) -> Vec<AdapterSummary> {
    let mut adapters = pollster::block_on(instance(options).enumerate_adapters(options.backends()));
    adapters.sort_by_key(|a| preference(a.get_info().device_type, options.low_power));
    adapters
        .iter()
        .map(|a| AdapterSummary::from_info(&a.get_info()))
        .collect()
}

impl Gpu {
    /// Opens the adapter chosen by the environment ([`GpuOptions::from_env`]).
    pub fn new() -> Result<Self> {
        Self::with_options(&GpuOptions::from_env()?)
    }

    /// Opens the adapter the options choose: by name if given, else the highest-performance one.
    pub fn with_options(options: &GpuOptions) -> Result<Self> {
        let instance = instance(options);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(options.backends()));
        if adapters.is_empty() {
            return Err(Error::NoAdapter(format!(
                "no adapter for backends {:?}; without a GPU install a software Vulkan driver \
                 (Debian/Ubuntu: apt-get install mesa-vulkan-drivers)",
                options.backends()
            )));
        }
        adapters.sort_by_key(|a| preference(a.get_info().device_type, options.low_power));
        let adapter = match &options.adapter_name {
            Some(want) => {
                let want_lc = want.to_lowercase();
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want_lc))
                    .ok_or_else(|| {
                        Error::NoAdapter(format!(
                            "no adapter name contains {want:?}; available: {}",
                            names.join(", ")
                        ))
                    })?
            }
            None => adapters.swap_remove(0),
        };
        Self::from_adapter(adapter, options)
    }

    fn from_adapter(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Self> {
        let info = adapter.get_info();
        let summary = AdapterSummary::from_info(&info);
        // The WebGPU defaults (128 MiB bindings, 16 KiB workgroup memory) are far too small for
        // real dictionaries, so ask for everything the adapter offers.
        let required_limits = adapter.limits();
        let subgroups = adapter.features() & wgpu::Features::SUBGROUP;
        let timestamps = match options.profile {
            true => adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
            false => wgpu::Features::empty(),
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("dbksvd"),
            required_features: subgroups | timestamps,
            required_limits: required_limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::DeviceRequest {
            adapter: summary.name.clone(),
            reason: e.to_string(),
        })?;

        let sink = ErrorSink::attach(&device);
        let mut limits = DeviceLimits::granted(&device.limits(), &summary, &info, subgroups);
        if let Some(cap) = options.max_binding_size {
            limits.check_cap(cap)?;
            limits.planned_binding_size = limits.planned_binding_size.min(cap & !3);
        }
        if let Some(cap) = options.max_buffer_size {
            limits.cap_buffer(cap)?;
        }
        log::info!(
            "dbksvd GPU: {} ({}, {}), binding {} B (planned {} B), buffer {} B",
            summary.name,
            summary.backend,
            summary.device_type,
            limits.max_storage_buffer_binding_size,
            limits.planned_binding_size,
            limits.max_buffer_size
        );
        let profiler = (!timestamps.is_empty()).then(|| Profiler::new(&queue));
        Ok(Self {
            inner: Arc::new(GpuInner {
                device,
                queue,
                summary,
                sink,
                memory: Arc::default(),
                gemm: OnceLock::new(),
                omp: OnceLock::new(),
                sparse: OnceLock::new(),
                power: OnceLock::new(),
                reduce: OnceLock::new(),
                split: OnceLock::new(),
                profiler,
            }),
            limits,
        })
    }
    /// Destroys the device, as a driver reset or a lost GPU would: every later call on this
    /// context (and its clones) returns [`Error::DeviceLost`] instead of hanging. Device memory
    /// is freed at once. For testing fault handling, and for giving the GPU back early.
    pub fn destroy(&self) {
        self.device().destroy();
    }

    /// The adapter this context runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.summary
    }

    /// The granted limits and the binding size dbksvd plans with.
    pub fn limits(&self) -> &DeviceLimits {
        &self.limits
    }

    pub(crate) fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    pub(crate) fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The value in `cell`, built by `build` on first use (pipelines are built once per device;
    /// a failed build is returned and retried next time).
    pub(crate) fn cached<'a, T>(
        &self,
        cell: &'a OnceLock<T>,
        build: impl FnOnce(&Gpu) -> Result<T>,
    ) -> Result<&'a T> {
        if let Some(value) = cell.get() {
            return Ok(value);
        }
        let built = build(self)?;
        Ok(cell.get_or_init(|| built))
    }

    /// The value under `key` in `cache`, built by `build` in an error scope on first use and
    /// kept only once wgpu reports no error (shader variants compiled per size: a failed build
    /// is returned and retried next time).
    pub(crate) fn cached_by<K: std::hash::Hash + Eq, V: Clone>(
        &self,
        cache: &Mutex<std::collections::HashMap<K, V>>,
        key: K,
        build: impl FnOnce() -> V,
    ) -> Result<V> {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(value) = cache.get(&key) {
            return Ok(value.clone());
        }
        let value = self.scoped(|| Ok(build()))?;
        cache.insert(key, value.clone());
        Ok(value)
    }

    pub(crate) fn gemm_kernels(&self) -> Result<&GemmKernels> {
        self.cached(&self.inner.gemm, GemmKernels::new)
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes and turns anything wgpu
    /// reports into an [`Error`]. Also surfaces errors that escaped earlier scopes and device loss.
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let device = self.device();
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        // wgpu panics on a few calls once the device is lost; that is an error, not a crash.
        let out = catching(f);
        // Pop in reverse order of pushing; on native the futures are already resolved.
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(internal.pop()),
            pollster::block_on(oom.pop()),
        ];
        let failed = errors.into_iter().flatten().next();
        if failed.is_some() || out.is_err() {
            // After a loss every call fails with some validation error; the loss is the news.
            self.check_lost()?;
        }
        if let Some(e) = failed {
            return Err(convert(e));
        }
        self.check()?;
        match out {
            Ok(out) => out,
            Err(payload) => Err(Error::GpuValidation(format!(
                "wgpu panicked (a bug in wgpu or dbksvd, please report it): {}",
                panic_message(payload.as_ref())
            ))),
        }
    }

    /// Device loss, if the device reports it: callbacks run by a non-blocking poll first.
    fn check_lost(&self) -> Result<()> {
        let _ = catching(|| self.device().poll(wgpu::PollType::Poll));
        match self.inner.sink.lost.lock().ok().and_then(|l| l.clone()) {
            Some(lost) => Err(Error::DeviceLost(lost)),
            None => Ok(()),
        }
    }

    /// Returns the first error wgpu reported outside a scope, or device loss, if any.
    pub(crate) fn check(&self) -> Result<()> {
        let sink = &self.inner.sink;
        if let Some(lost) = sink.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::DeviceLost(lost));
        }
        // Take them all: later errors are usually consequences of the first, and leaving them
        // queued would pin them on an unrelated later call.
        let errors: Vec<wgpu::Error> = match sink.uncaptured.lock() {
            Ok(mut errors) => errors.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        match errors.into_iter().next() {
            Some(first) => Err(convert(first)),
            None => Ok(()),
        }
    }

    /// Blocks until all submitted work has finished.
    pub fn wait(&self) -> Result<()> {
        // wgpu treats a device lost during the poll as fatal and panics; turn that into an error.
        let polled = catching(|| self.device().poll(wgpu::PollType::wait_indefinitely()));
        // Device loss (reported through the callback the poll runs) explains everything else.
        self.check()?;
        match polled {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::DeviceLost(format!(
                "waiting for the GPU failed: {e}"
            ))),
            Err(_) => Err(Error::DeviceLost(
                "the GPU failed while waiting for submitted work".into(),
            )),
        }
    }
}

thread_local! {
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while this thread runs a wgpu call whose panic dbksvd turns into an [`Error`] (wgpu
/// panics on some calls once the device is lost). A program's panic hook can stay quiet then:
/// such a panic is reported as an error, not a crash.
pub fn panic_is_caught() -> bool {
    CATCHING.with(|c| c.get())
}

/// Runs `f`, catching a panic (see [`panic_is_caught`]).
fn catching<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let was = CATCHING.with(|c| c.replace(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    out
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn convert(e: wgpu::Error) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::GpuOutOfMemory(e.to_string()),
        wgpu::Error::Validation { description, .. } => Error::GpuValidation(description),
        wgpu::Error::Internal { description, .. } => Error::GpuValidation(description),
    }
}

#[cfg(test)]
impl Gpu {
    /// Makes wgpu report a validation error outside any scope, as a driver fault would: a
    /// buffer with MAP_READ beside STORAGE, which wgpu rejects.
    pub(crate) fn report_validation_error(&self) {
        let _ = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid on purpose"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
    }
}

/// A private device for a unit test (None without an adapter, unless `DBKSVD_REQUIRE_GPU=1`).
#[cfg(test)]
pub(crate) fn fresh_gpu() -> Option<Gpu> {
    match Gpu::new() {
        Ok(gpu) => Some(gpu),
        Err(e) if std::env::var("DBKSVD_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("DBKSVD_REQUIRE_GPU=1 but no GPU could be opened: {e}")
        }
        Err(e) => {
            let test = std::thread::current();
            eprintln!(
                "{}: SKIPPED (no GPU adapter: {e})",
                test.name().unwrap_or("a GPU test")
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_in_a_scope_become_errors() {
        let Some(gpu) = fresh_gpu() else { return };
        let err = gpu
            .scoped(|| {
                gpu.report_validation_error();
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, Error::GpuValidation(_)), "{err}");
        // Nothing is left behind: the device keeps working.
        let b = gpu.upload(&[1.0f32, 2.0]).unwrap();
        assert_eq!(gpu.read(&b).unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn uncaptured_errors_are_kept_not_panicked() {
        let Some(gpu) = fresh_gpu() else { return };
        // Outside any scope wgpu's default handler would panic; ours records the error.
        gpu.report_validation_error();
        let err = gpu.check().unwrap_err();
        assert!(matches!(err, Error::GpuValidation(_)), "{err}");
        gpu.check().unwrap();
    }

    #[test]
    fn a_destroyed_device_gives_errors_not_hangs() {
        let Some(gpu) = fresh_gpu() else { return };
        let b = gpu.upload(&[1.0f32; 64]).unwrap();
        gpu.device().destroy();
        let err = gpu.read(&b).unwrap_err();
        assert!(matches!(err, Error::DeviceLost(_)), "{err}");
    }

    #[test]
    fn binding_cap_and_adapter_name_options() {
        let Some(gpu) = fresh_gpu() else { return };
        let capped = gpu.with_max_binding_size(4099).unwrap();
        assert_eq!(capped.limits().planned_binding_size, 4096);
        let too_small = gpu.limits().binding_alignment() + 3;
        let err = gpu.with_max_binding_size(too_small).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("min_storage_buffer_offset_alignment")),
            "{err}"
        );
        let options = GpuOptions {
            max_binding_size: Some(1 << 20),
            ..GpuOptions::default()
        };
        let gpu = Gpu::with_options(&options).unwrap();
        assert_eq!(gpu.limits().planned_binding_size, 1 << 20);
        let err = Gpu::with_options(&GpuOptions {
            adapter_name: Some("no such adapter, surely".into()),
            ..GpuOptions::default()
        })
        .unwrap_err();
        assert!(
            matches!(&err, Error::NoAdapter(m) if m.contains("available")),
            "{err}"
        );
    }
}
