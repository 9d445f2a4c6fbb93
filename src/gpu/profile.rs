//! Kernel times by timestamp queries: where a device's time goes, kernel by kernel.
//!
//! Every recorded dispatch goes through `Passes`. On an ordinary context it records a run of
//! dispatches into one compute pass. On a profiling context (`GpuOptions::profile`, where the
//! adapter has `Features::TIMESTAMP_QUERY`) it gives each dispatch its own pass with a
//! timestamp at each end. [`Gpu::kernel_times`] then sums the intervals by kernel (its entry
//! point). The results are the same either way; the separate passes cost a little time, so
//! profiled totals run slightly above unprofiled ones.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Time spent in one kernel since the last [`Gpu::reset_kernel_times`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The kernel: its entry point in `shaders/`.
    pub kernel: &'static str,
    /// Dispatches timed.
    pub dispatches: u64,
    /// Seconds between the start and the end of its dispatches, summed.
    pub seconds: f64,
}

/// Dispatches per query set: two timestamps each (wgpu allows 4 096 queries per set).
const DISPATCHES_PER_SET: usize = 1024;

/// The timestamps of a profiling context: resolved query sets not read yet, and the sums.
pub(crate) struct Profiler {
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
    pending: Mutex<Vec<Pending>>,
    totals: Mutex<BTreeMap<&'static str, (u64, f64)>>,
}

/// One resolved query set: begin and end ticks of each dispatch, in order.
struct Pending {
    readback: wgpu::Buffer,
    kernels: Vec<&'static str>,
}

impl Profiler {
    pub(crate) fn new(queue: &wgpu::Queue) -> Self {
        Self {
            period_ns: f64::from(queue.get_timestamp_period()),
            pending: Mutex::default(),
            totals: Mutex::default(),
        }
    }
}

/// Records dispatches: into one compute pass, or on a profiling context one pass per dispatch
/// with its timestamps (see the module comment). The pass ends, and the timestamps are
/// resolved into a readback buffer, when it is dropped.
pub(crate) struct Passes<'e> {
    encoder: &'e mut wgpu::CommandEncoder,
    label: &'static str,
    mode: Mode,
}

enum Mode {
    One(Box<wgpu::ComputePass<'static>>),
    Timed(Box<Timed>),
}

/// The state of a profiled recording: the current pipeline and bind group (set again in each
/// dispatch's pass), and the query set being filled.
struct Timed {
    gpu: Gpu,
    pipeline: Option<(&'static str, wgpu::ComputePipeline)>,
    bind_group: Option<wgpu::BindGroup>,
    queries: Option<wgpu::QuerySet>,
    kernels: Vec<&'static str>,
}

impl Gpu {
    /// Whether this context times its kernels ([`Gpu::kernel_times`]).
    pub fn profiling(&self) -> bool {
        self.inner.profiler.is_some()
    }

    #[cfg(any(test, feature = "testing"))]
    /// A profiling context on the adapter the environment chooses, or `None` where that adapter
    /// has no timestamp queries (lavapipe has them). Tests use it beside an ordinary context.
    pub fn profiling_context() -> Result<Option<Gpu>> {
        let options = crate::gpu::GpuOptions {
            profile: true,
            ..crate::gpu::GpuOptions::from_env()?
        };
        let gpu = Gpu::with_options(&options)?;
        Ok(gpu.profiling().then_some(gpu))
    }

    /// Starts recording dispatches into `encoder` (see [`Passes`]).
    pub(crate) fn passes<'e>(
        &self,
        encoder: &'e mut wgpu::CommandEncoder,
        label: &'static str,
    ) -> Passes<'e> {
        let mode = match self.inner.profiler {
            Some(_) => Mode::Timed(Box::new(Timed {
                gpu: self.clone(),
                pipeline: None,
                bind_group: None,
                queries: None,
                kernels: Vec::new(),
            })),
            None => Mode::One(Box::new(
                encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(label),
                        timestamp_writes: None,
                    })
                    .forget_lifetime(),
            )),
        };
        Passes {
            encoder,
            label,
            mode,
        }
    }

    /// Time per kernel since the last [`Gpu::reset_kernel_times`], longest first; empty unless
    /// [`Gpu::profiling`]. It waits for the device and reads every timestamp recorded so far,
    /// so call it only once all of them have been submitted (dbksvd's own calls always submit
    /// what they record). Until then a profiling context holds a small readback buffer per
    /// recorded pass; an error while reading them drops them.
    pub fn kernel_times(&self) -> Result<Vec<KernelTime>> {
        let Some(profiler) = &self.inner.profiler else {
            return Ok(Vec::new());
        };
        let pending = std::mem::take(&mut *lock(&profiler.pending)?);
        let (tx, rx) = std::sync::mpsc::channel();
        for p in &pending {
            let tx = tx.clone();
            p.readback
                .slice(..)
                .map_async(wgpu::MapMode::Read, move |r| drop(tx.send(r)));
        }
        drop(tx);
        self.wait()?;
        // Every callback has run once the device is idle, unless another thread's poll is
        // running it right now: give that a moment rather than fail.
        for _ in &pending {
            let mapped = match rx.try_recv() {
                Ok(mapped) => mapped,
                Err(_) => rx
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .map_err(|_| Error::BufferMap("a kernel-time readback never mapped".into()))?,
            };
            mapped.map_err(|e| Error::BufferMap(e.to_string()))?;
        }
        let mut totals = lock(&profiler.totals)?;
        for p in &pending {
            let range = p
                .readback
                .get_mapped_range(..)
                .map_err(|e| Error::BufferMap(e.to_string()))?;
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&range);
            for (kernel, ends) in p.kernels.iter().zip(ticks.chunks_exact(2)) {
                let total = totals.entry(kernel).or_insert((0, 0.0));
                total.0 += 1;
                total.1 += ends[1].saturating_sub(ends[0]) as f64 * profiler.period_ns * 1e-9;
            }
        }
        let mut times: Vec<KernelTime> = totals
            .iter()
            .map(|(&kernel, &(dispatches, seconds))| KernelTime {
                kernel,
                dispatches,
                seconds,
            })
            .collect();
        times.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(times)
    }

    /// Forgets the kernel times so far (after waiting for any still to be read).
    pub fn reset_kernel_times(&self) -> Result<()> {
        if let Some(profiler) = &self.inner.profiler {
            self.kernel_times()?;
            lock(&profiler.totals)?.clear();
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| Error::Internal("kernel times poisoned by a panic".into()))
}

impl Passes<'_> {
    /// Runs `pipeline`, kernel `kernel` (its entry point), in the dispatches that follow.
    pub(crate) fn set_pipeline(&mut self, kernel: &'static str, pipeline: &wgpu::ComputePipeline) {
        match &mut self.mode {
            Mode::One(pass) => pass.set_pipeline(pipeline),
            Mode::Timed(t) => t.pipeline = Some((kernel, pipeline.clone())),
        }
    }

    /// Binds `group` as group 0 for the dispatches that follow.
    pub(crate) fn set_bind_group(&mut self, group: &wgpu::BindGroup) {
        match &mut self.mode {
            Mode::One(pass) => pass.set_bind_group(0, group, &[]),
            Mode::Timed(t) => t.bind_group = Some(group.clone()),
        }
    }

    /// One dispatch of x × y workgroups.
    pub(crate) fn dispatch(&mut self, x: u32, y: u32) {
        let t = match &mut self.mode {
            Mode::One(pass) => return pass.dispatch_workgroups(x, y, 1),
            Mode::Timed(t) => t,
        };
        if t.kernels.len() == DISPATCHES_PER_SET {
            t.flush(self.encoder);
        }
        let queries = t.queries.get_or_insert_with(|| {
            t.gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("dbksvd kernel times"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * DISPATCHES_PER_SET as u32,
            })
        });
        let at = 2 * t.kernels.len() as u32;
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(self.label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: queries,
                    beginning_of_pass_write_index: Some(at),
                    end_of_pass_write_index: Some(at + 1),
                }),
            });
        let kernel = match &t.pipeline {
            Some((kernel, pipeline)) => {
                pass.set_pipeline(pipeline);
                kernel
            }
            None => "(no pipeline)",
        };
        if let Some(group) = &t.bind_group {
            pass.set_bind_group(0, group, &[]);
        }
        pass.dispatch_workgroups(x, y, 1);
        t.kernels.push(kernel);
    }
}

impl Timed {
    /// Resolves the filled queries into a readback buffer that [`Gpu::kernel_times`] reads.
    fn flush(&mut self, encoder: &mut wgpu::CommandEncoder) {
        let (Some(queries), Some(profiler)) = (self.queries.take(), &self.gpu.inner.profiler)
        else {
            return;
        };
        let count = 2 * self.kernels.len() as u32;
        let bytes = 8 * u64::from(count);
        let buffer = |usage| {
            self.gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("dbksvd kernel times"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolved = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let readback = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
        encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, bytes);
        let kernels = std::mem::take(&mut self.kernels);
        if let Ok(mut pending) = profiler.pending.lock() {
            pending.push(Pending { readback, kernels });
        }
    }
}

impl Drop for Passes<'_> {
    fn drop(&mut self) {
        if let Mode::Timed(t) = &mut self.mode {
            t.flush(self.encoder);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More dispatches than one query set holds go through one `Passes`: every one is counted
    /// (the full set is resolved and a new one started).
    #[test]
    fn a_long_recording_is_timed_across_query_sets() {
        let Some(gpu) = crate::gpu::context::fresh_gpu() else {
            return;
        };
        let Some(profiled) = Gpu::profiling_context().unwrap() else {
            assert!(!gpu.adapter().name.contains("llvmpipe"), "no timestamps");
            return eprintln!("SKIPPED: {} has no timestamp queries", gpu.adapter().name);
        };
        let source = "@compute @workgroup_size(1) fn noop() {}";
        let module = crate::gpu::layout::shader_module(&profiled, "noop.wgsl", source);
        let pipeline = crate::gpu::layout::compute_pipeline(&profiled, &module, "noop", &[]);
        let dispatches = 2 * DISPATCHES_PER_SET + 3;
        let mut encoder = profiled.encoder("noops");
        let mut pass = profiled.passes(&mut encoder, "noops");
        pass.set_pipeline("noop", &pipeline);
        for _ in 0..dispatches {
            pass.dispatch(1, 1);
        }
        drop(pass);
        profiled.submit(encoder).unwrap();
        let times = profiled.kernel_times().unwrap();
        assert_eq!(times.len(), 1, "{times:?}");
        assert_eq!(times[0].kernel, "noop");
        assert_eq!(times[0].dispatches, dispatches as u64);
        assert!(times[0].seconds.is_finite() && times[0].seconds >= 0.0);
        // Nothing is left to read, and an ordinary context times nothing.
        profiled.reset_kernel_times().unwrap();
        assert!(profiled.kernel_times().unwrap().is_empty());
        assert!(gpu.kernel_times().unwrap().is_empty());
    }
}
