//! Planning views of a context: the same device, planning as a smaller one would (bindings,
//! buffers, textures, loop caps, no subgroups), so tests exercise every splitting path on
//! small data and users can stay under a driver's real limits.

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::context::DeviceLimits;
use crate::gpu::Gpu;

impl Gpu {
    /// The same device (pipelines and buffers shared with `self`) planning with `limits`.
    fn planning_with(&self, limits: DeviceLimits) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            limits,
        }
    }

    /// The same device, planning with bindings of at most `bytes` (rounded down to 4).
    ///
    /// Pipelines and buffers are shared with `self`; only the planning of row blocks changes. Tests
    /// use it to force the splitting paths on small matrices.
    pub fn with_max_binding_size(&self, bytes: u64) -> Result<Self> {
        self.limits.check_cap(bytes)?;
        let mut limits = self.limits.clone();
        limits.planned_binding_size = limits.planned_binding_size.min(bytes & !3);
        Ok(self.planning_with(limits))
    }

    /// The same device, allocating buffers of at most `bytes` (rounded down to 4; bindings are
    /// capped to it too). Shares pipelines and buffers with `self`, like
    /// [`Gpu::with_max_binding_size`]; tests use it to play a device with little memory.
    pub fn with_max_buffer_size(&self, bytes: u64) -> Result<Self> {
        let mut limits = self.limits.clone();
        limits.cap_buffer(bytes)?;
        Ok(self.planning_with(limits))
    }

    #[cfg(any(test, feature = "testing"))]
    /// The same device, planning with 2D textures of at most `texels` per side (at least 4), as
    /// a small GPU would: the coders then read G as a texture of several layers. Shares
    /// pipelines and buffers with `self`; tests use it to exercise the layered path.
    pub fn with_max_texture_dimension(&self, texels: u32) -> Self {
        let mut limits = self.limits.clone();
        limits.max_texture_dimension_2d = limits.max_texture_dimension_2d.min(texels.max(4));
        self.planning_with(limits)
    }

    #[cfg(any(test, feature = "testing"))]
    /// The same device, planning as if its driver ran at most `iterations` loop iterations per
    /// invocation (as llvmpipe does at 65 535): the kernels split their work under it or refuse
    /// it. Shares pipelines and buffers with `self`; tests use it to exercise the splitting paths
    /// of any adapter on small data.
    pub fn with_max_loop_iterations(&self, iterations: u64) -> Self {
        let mut limits = self.limits.clone();
        limits.max_loop_iterations = Some(
            limits
                .max_loop_iterations
                .map_or(iterations, |cap| cap.min(iterations)),
        );
        self.planning_with(limits)
    }

    #[cfg(any(test, feature = "testing"))]
    /// The same device, planning as if it had no subgroup operations: the coders take their
    /// portable path (sweep and select dispatches per greedy step), the update its vec4 item
    /// kernels and the texel GEMM gemm_texel, on every adapter. Shares pipelines and buffers
    /// with `self`; tests use it to check both paths on one adapter.
    pub fn without_subgroups(&self) -> Self {
        self.planning_without_subgroups()
    }

    /// [`Gpu::without_subgroups`] for the crate: `dbksvd bench` times matching pursuit's sweeps
    /// beside its resident coder with it.
    pub(crate) fn planning_without_subgroups(&self) -> Self {
        let mut limits = self.limits.clone();
        limits.subgroup_size = None;
        limits.subgroups = false;
        self.planning_with(limits)
    }

    #[cfg(any(test, feature = "testing"))]
    /// The same device, planning Batch-OMP's sweep and select dispatches per greedy step on a
    /// CPU adapter too, where it would fuse them (`fused_omp`). Shares pipelines and buffers
    /// with `self`; tests use it to check both paths on lavapipe.
    pub fn with_swept_batch_omp(&self) -> Self {
        self.planning_with_swept_batch_omp()
    }

    /// [`Gpu::with_swept_batch_omp`] for the crate: `dbksvd bench` times Batch-OMP's sweeps
    /// beside its fused kernel with it.
    pub(crate) fn planning_with_swept_batch_omp(&self) -> Self {
        let mut limits = self.limits.clone();
        limits.fused_omp = false;
        self.planning_with(limits)
    }

    #[cfg(any(test, feature = "testing"))]
    /// The same device, planning the kernels a GPU runs rather than a CPU adapter's variants:
    /// matching pursuit resident in a workgroup per sample rather than a subgroup, the sweeps
    /// (Batch-OMP's, MP's without subgroups) reduced in the workgroup, the tiled GEMM instead of the texel
    /// one, storage reads and one workgroup per sample in the update instead of texture copies
    /// and per-sample rows. Shares pipelines and buffers with `self`; on lavapipe, tests use it
    /// to check the GPU kernels against the reference.
    pub fn with_gpu_paths(&self) -> Self {
        let mut limits = self.limits.clone();
        limits.cpu_paths = false;
        self.planning_with(limits)
    }
}
