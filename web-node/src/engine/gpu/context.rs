//! The wgpu device and everything shared by all kernels: adapter limits, shader modules,
//! bind-group layouts and the pipeline cache, plus buffer and readback helpers.
//!
//! Main type: [`GpuContext`]. It owns no model state and records no work of its own.
//!
//! Errors: every allocation ([`GpuContext::storage`] and friends, [`GpuContext::alloc`]) and
//! every submit runs inside out-of-memory and validation error scopes and returns a typed
//! [`EngineError`] ([`EngineError::OutOfMemory`] for the former), so a request that needs too
//! much memory is refused and the device goes on serving. Errors outside any scope reach the
//! device's uncaptured-error handler, which logs them and keeps the first one; the next
//! allocation or submit returns it. In a browser an allocation's scopes can only be read
//! asynchronously, so its error is kept the same way when they resolve. A lost device fails
//! every later operation.

// wgpu's browser types are not Send/Sync; on wasm32 the context lives on one thread.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

#[cfg(not(target_arch = "wasm32"))]
use futures::FutureExt;

use crate::engine::EngineError;

/// How one binding of a kernel is used; a kernel's bind-group layout is its list of these, in
/// binding order (binding `i` is entry `i`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Bind {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// A WGSL file of `shaders/` and the bindings its entry points use.
#[derive(Debug)]
pub(crate) struct Shader {
    /// File stem, used in labels and cache keys.
    pub(crate) name: &'static str,
    /// WGSL source.
    pub(crate) source: &'static str,
    /// Bindings of group 0.
    pub(crate) binds: &'static [Bind],
}

/// Cache key of a compute pipeline: shader, entry point and override constants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u32)>,
}

impl std::fmt::Display for PipelineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.shader, self.entry)?;
        for (k, v) in &self.constants {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// A compiled pipeline with the layout its bind groups must use.
#[derive(Debug)]
pub(crate) struct Pipeline {
    /// The pipeline.
    pub(crate) pipeline: wgpu::ComputePipeline,
    /// Its group-0 layout (shared by every pipeline of the same shader).
    pub(crate) layout: wgpu::BindGroupLayout,
    /// The cache key, for labels.
    pub(crate) label: String,
}

/// Name and backend of the adapter in use, for logs and benchmarks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Adapter name as the driver reports it (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// Graphics API wgpu uses on it (e.g. `vulkan`, `webgpu`).
    pub backend: String,
    /// Device type (e.g. `Cpu`, `DiscreteGpu`).
    pub device_type: String,
}

/// The engine error for a wgpu error caught while doing `what` (`bytes`: the allocation's
/// size, when one allocation is to blame).
fn engine_error(e: wgpu::Error, what: &str, bytes: Option<u64>) -> EngineError {
    match e {
        wgpu::Error::OutOfMemory { .. } => EngineError::OutOfMemory { what: what.to_string(), bytes },
        other => EngineError::Gpu(format!("{what}: {other}")),
    }
}

/// The out-of-memory and validation error scopes around one allocation or submit (pushed
/// together, popped together in reverse order). Scopes are per thread.
pub(crate) struct Scopes {
    oom: wgpu::ErrorScopeGuard,
    validation: wgpu::ErrorScopeGuard,
}

impl Scopes {
    fn push(device: &wgpu::Device) -> Scopes {
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        Scopes { oom, validation }
    }

    /// Pops both scopes; the first error caught, out-of-memory first.
    async fn pop(self) -> Option<wgpu::Error> {
        // Popping takes effect when `pop` is called; the futures only carry the result.
        let validation = self.validation.pop();
        let oom = self.oom.pop();
        let (validation, oom) = futures::join!(validation, oom);
        oom.or(validation)
    }

    /// [`Scopes::pop`] where the result is ready at once (native wgpu reports errors while
    /// the call that caused them runs).
    #[cfg(not(target_arch = "wasm32"))]
    fn pop_now(self) -> Option<wgpu::Error> {
        self.pop().now_or_never().flatten()
    }
}

/// Errors the device reported outside any scope, and whether it is lost; shared with the
/// device's callbacks.
#[derive(Debug, Default)]
struct Health {
    /// The first uncaptured error since the last operation took it.
    uncaptured: Option<EngineError>,
    /// Why the device was lost; every later operation fails.
    lost: Option<String>,
}

/// Logs `e` and keeps it for the next operation, unless an earlier one is still waiting.
fn record_uncaptured(health: &Mutex<Health>, e: EngineError) {
    tracing::error!("gpu error outside any error scope: {e}");
    let mut h = health.lock().unwrap_or_else(PoisonError::into_inner);
    if h.uncaptured.is_none() {
        h.uncaptured = Some(e);
    }
}

#[cfg(test)]
thread_local! {
    /// Test-only fault: how many scoped operations (allocations, submits) on this thread
    /// still pass, then how many report out of memory. See [`GpuContext::inject_oom`].
    static INJECTED_OOM: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// The wgpu device, its limits and the pipeline cache, shared by every backend on it.
#[derive(Debug)]
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    health: Arc<Mutex<Health>>,
    modules: Mutex<HashMap<&'static str, (wgpu::ShaderModule, wgpu::BindGroupLayout, wgpu::PipelineLayout)>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
}

impl GpuContext {
    /// Opens the high-performance adapter and a device with the adapter's own limits and no
    /// optional features (the kernels are f32-only, so CPU WebGPU adapters work).
    pub async fn new() -> Result<Arc<GpuContext>, EngineError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
            })
            .await
            .map_err(|e| EngineError::Gpu(format!("no adapter: {e}")))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("ai-torrent"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| EngineError::Gpu(format!("request device on {}: {e}", info.name)))?;
        tracing::info!(adapter = %info.name, backend = ?info.backend, "wgpu device ready");
        let health = Arc::new(Mutex::new(Health::default()));
        let h = health.clone();
        // wgpu's default handler panics; a full device must refuse a request, not kill the node.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            record_uncaptured(&h, engine_error(e, "earlier gpu operation", None));
        }));
        let h = health.clone();
        device.set_device_lost_callback(move |reason, message| {
            if reason == wgpu::DeviceLostReason::Destroyed {
                tracing::debug!("gpu device destroyed");
            } else {
                tracing::error!("gpu device lost: {message}");
            }
            let mut h = h.lock().unwrap_or_else(PoisonError::into_inner);
            h.lost = Some(format!("{reason:?}: {message}"));
        });
        Ok(Arc::new(GpuContext {
            device,
            queue,
            info,
            limits,
            health,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
        }))
    }

    /// Name, backend and type of the adapter.
    pub fn adapter_info(&self) -> AdapterSummary {
        AdapterSummary {
            name: self.info.name.clone(),
            backend: self.info.backend.to_str().to_string(),
            device_type: format!("{:?}", self.info.device_type),
        }
    }

    /// Whether the adapter is a CPU implementation (lavapipe/llvmpipe, SwiftShader), where
    /// kernels prefer one thread per output over workgroup reductions.
    pub fn is_cpu(&self) -> bool {
        let i = &self.info;
        let text = format!("{} {} {}", i.name, i.driver, i.driver_info).to_lowercase();
        i.device_type == wgpu::DeviceType::Cpu
            || ["llvmpipe", "lavapipe", "swiftshader"].iter().any(|s| text.contains(s))
    }

    /// The device's limits (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    pub(crate) fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub(crate) fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Largest buffer a kernel can bind, in bytes.
    pub(crate) fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// Errors unless a storage buffer of `bytes` can be bound.
    pub(crate) fn check_binding(&self, what: &str, bytes: u64) -> Result<(), EngineError> {
        if bytes > self.max_binding() {
            return Err(EngineError::Gpu(format!(
                "{what} needs {bytes} bytes in one binding, the adapter allows {} (splitting tensors across buffers is not implemented)",
                self.max_binding()
            )));
        }
        Ok(())
    }

    /// Errors if the device is lost, or with the error the device reported outside any scope
    /// since the last call (taken: the call after this one succeeds again).
    pub(crate) fn check(&self) -> Result<(), EngineError> {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &h.lost {
            return Err(EngineError::DeviceLost(why.clone()));
        }
        h.uncaptured.take().map_or(Ok(()), Err)
    }

    /// Test-only fault (compiled only into this crate's unit tests, so no network input or
    /// CLI flag reaches it): after the next `pass` scoped operations (allocations and submits)
    /// on this thread, the `fail` after them report [`EngineError::OutOfMemory`] once their
    /// work is done, as a full device would (a real one cannot be filled on lavapipe).
    /// `inject_oom(0, 0)` disarms it.
    #[cfg(test)]
    pub(crate) fn inject_oom(&self, pass: usize, fail: usize) {
        INJECTED_OOM.with(|c| c.set((pass, fail)));
    }

    /// Counts one scoped operation against the test fault; its error if it is to fail.
    #[cfg(test)]
    fn injected_oom(what: &str, bytes: Option<u64>) -> Result<(), EngineError> {
        INJECTED_OOM.with(|c| match c.get() {
            (0, 0) => Ok(()),
            (0, fail) => {
                c.set((0, fail - 1));
                Err(EngineError::OutOfMemory { what: format!("{what} (injected)"), bytes })
            }
            (pass, fail) => {
                c.set((pass - 1, fail));
                Ok(())
            }
        })
    }

    /// Runs `f`, which creates device resources, inside out-of-memory and validation scopes:
    /// an error the device reports while it runs is returned as `what` (`bytes`: its size, if
    /// known) and what `f` made is dropped. In a browser the scopes can only be read
    /// asynchronously, so such an error is kept when they resolve and the next operation
    /// returns it (see the module docs).
    pub(crate) fn alloc<T>(
        &self,
        what: &str,
        bytes: Option<u64>,
        f: impl FnOnce() -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        self.check()?;
        let scopes = Scopes::push(&self.device);
        let made = f();
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = scopes.pop_now() {
            return Err(engine_error(e, what, bytes));
        }
        #[cfg(target_arch = "wasm32")]
        {
            let (health, what) = (self.health.clone(), what.to_string());
            wasm_bindgen_futures::spawn_local(async move {
                if let Some(e) = scopes.pop().await {
                    record_uncaptured(&health, engine_error(e, &what, bytes));
                }
            });
        }
        let made = made?;
        #[cfg(test)]
        Self::injected_oom(what, bytes)?;
        Ok(made)
    }

    /// [`GpuContext::check`]s the device, then pushes the scopes for work to be submitted with
    /// [`GpuContext::submit`].
    pub(crate) fn scopes(&self) -> Result<Scopes, EngineError> {
        self.check()?;
        Ok(Scopes::push(&self.device))
    }

    /// The pipeline for (shader, entry point, override constants), compiled on first use.
    pub(crate) fn pipeline(
        &self,
        shader: &'static Shader,
        entry: &'static str,
        constants: &[(&'static str, u32)],
    ) -> Arc<Pipeline> {
        let key = PipelineKey { shader: shader.name, entry, constants: constants.to_vec() };
        let mut pipelines = self.pipelines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = pipelines.get(&key) {
            return p.clone();
        }
        let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        let (module, bgl, pl) = modules.entry(shader.name).or_insert_with(|| self.compile(shader));
        let label = key.to_string();
        let consts: Vec<(&str, f64)> = constants.iter().map(|&(k, v)| (k, f64::from(v))).collect();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(pl),
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &consts,
                zero_initialize_workgroup_memory: true,
            },
            cache: None,
        });
        let p = Arc::new(Pipeline { pipeline, layout: bgl.clone(), label });
        pipelines.insert(key, p.clone());
        p
    }

    fn compile(&self, shader: &Shader) -> (wgpu::ShaderModule, wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(shader.source.into()),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = shader
            .binds
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Bind::Uniform => wgpu::BufferBindingType::Uniform,
                        Bind::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Bind::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let bgl = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(shader.name), entries: &entries });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(shader.name),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        (module, bgl, pl)
    }

    /// A bind group binding `buffers[i]` (whole) at binding `i`, labelled `pipeline label | what`.
    pub(crate) fn bind_group(&self, pipeline: &Pipeline, what: &str, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        let label = format!("{} | {what}", pipeline.label);
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&label),
            layout: &pipeline.layout,
            entries: &entries,
        })
    }

    fn buffer(&self, label: &str, bytes: u64, usage: wgpu::BufferUsages, mapped_at_creation: bool) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage,
            mapped_at_creation,
        })
    }

    /// A buffer of `usage` holding `data`, zero-padded to a multiple of 4 bytes (at least 4).
    /// Unscoped: run it inside [`GpuContext::alloc`]. Natively it is written while mapped at
    /// creation (no staging copy), after checking the allocation; in a browser through the
    /// queue, which never touches an invalid buffer's memory.
    fn buffer_with(&self, label: &str, data: &[u8], usage: wgpu::BufferUsages) -> Result<wgpu::Buffer, EngineError> {
        let bytes = data.len() as u64;
        #[cfg(not(target_arch = "wasm32"))]
        {
            let scopes = Scopes::push(&self.device);
            let buf = self.buffer(label, bytes, usage, true);
            if let Some(e) = scopes.pop_now() {
                return Err(engine_error(e, label, Some(bytes)));
            }
            buf.get_mapped_range_mut(..).slice(..data.len()).copy_from_slice(data);
            buf.unmap();
            Ok(buf)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let buf = self.buffer(label, bytes, usage | wgpu::BufferUsages::COPY_DST, false);
            let mut padded = data.to_vec();
            padded.resize(data.len().max(4).next_multiple_of(4), 0);
            self.queue.write_buffer(&buf, 0, &padded);
            Ok(buf)
        }
    }

    /// A zeroed storage buffer of `bytes` (at least 4), usable as copy source and destination.
    pub(crate) fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer, EngineError> {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        self.alloc(label, Some(bytes), || Ok(self.buffer(label, bytes, usage, false)))
    }

    /// A storage buffer holding `data` (padded to at least 4 bytes).
    pub(crate) fn storage_init(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer, EngineError> {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        self.alloc(label, Some(data.len() as u64), || self.buffer_with(label, data, usage))
    }

    /// A uniform buffer holding `data`, writable with `queue.write_buffer`. Unscoped, for
    /// kernel builders: call it inside [`GpuContext::alloc`].
    pub(crate) fn uniform(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
        let buf = self.buffer(label, data.len() as u64, usage, false);
        self.queue.write_buffer(&buf, 0, data);
        buf
    }

    /// A buffer the host can map for reading, `bytes` long.
    pub(crate) fn staging(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer, EngineError> {
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        self.alloc(label, Some(bytes), || Ok(self.buffer(label, bytes, usage, false)))
    }

    /// Submits `encoder` and waits for its errors: the validation or out-of-memory error of
    /// the work since `scopes` were pushed ([`GpuContext::scopes`], before the step's writes
    /// and recording), as `what`.
    pub(crate) async fn submit(
        &self,
        what: &str,
        encoder: wgpu::CommandEncoder,
        scopes: Scopes,
    ) -> Result<(), EngineError> {
        self.queue.submit([encoder.finish()]);
        if let Some(e) = scopes.pop().await {
            return Err(engine_error(e, what, None));
        }
        #[cfg(test)]
        Self::injected_oom(what, None)?;
        Ok(())
    }

    /// Maps the first `len` f32 of `staging` (filled by work already submitted), copies them
    /// out and unmaps it.
    pub(crate) async fn read_f32(&self, staging: &wgpu::Buffer, len: usize) -> Result<Vec<f32>, EngineError> {
        let bytes = (len * 4) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            // The receiver only disappears if the forward future was dropped.
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| EngineError::Gpu(format!("poll: {e}")))?;
        rx.await
            .map_err(|_| EngineError::Gpu("readback callback dropped (device lost?)".into()))?
            .map_err(|e| EngineError::Gpu(format!("map readback buffer: {e}")))?;
        let out = {
            let view = staging.get_mapped_range(0..bytes);
            bytemuck::pod_collect_to_vec::<u8, f32>(&view)
        };
        staging.unmap();
        Ok(out)
    }

    /// Waits until all submitted work is done (native); a no-op on the web.
    pub(crate) async fn wait_idle(&self) -> Result<(), EngineError> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| EngineError::Gpu(format!("poll: {e}")))?;
        #[cfg(target_arch = "wasm32")]
        {
            let (tx, rx) = futures::channel::oneshot::channel();
            self.queue.on_submitted_work_done(move || {
                let _ = tx.send(());
            });
            rx.await.map_err(|_| EngineError::Gpu("work-done callback dropped".into()))?;
        }
        Ok(())
    }
}
