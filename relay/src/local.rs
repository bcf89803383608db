//! A whole model on this machine: the client's part and a chain of local executors; and the
//! choice of compute backend.

use std::ops::Range;
use std::path::Path;

use anyhow::Context;
use web_node::client::{ClientModel, LocalChain};
use web_node::engine::gpu::GpuContext;
use web_node::engine::{AnyBackend, Backend, BlockExecutor, ExecutorConfig};
use web_node::model::ModelFile;

/// Which compute backend runs the decoder layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// wgpu when the machine has a real GPU adapter, else the CPU backend (which beats a CPU
    /// Vulkan device such as lavapipe).
    Auto,
    /// Our WGSL kernels through wgpu (a GPU, or Mesa's lavapipe CPU device).
    Wgpu,
    /// The CPU backend.
    Cpu,
}

impl BackendKind {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cpu => "cpu",
        }
    }
}

/// The wgpu context to use for `backend`, or `None` for the CPU backend.
pub fn pick_gpu(backend: BackendKind) -> anyhow::Result<Option<std::sync::Arc<GpuContext>>> {
    Ok(match backend {
        BackendKind::Wgpu => Some(pollster::block_on(GpuContext::new()).context("starting the wgpu backend")?),
        BackendKind::Auto => match pollster::block_on(GpuContext::new()) {
            Ok(ctx) if ctx.adapter_info().device_type != "Cpu" => Some(ctx),
            Ok(_) | Err(_) => None,
        },
        BackendKind::Cpu => None,
    })
}

/// Loads layers `range` of `file` onto the CPU or the given wgpu context.
pub fn load_backend(
    file: &ModelFile,
    gpu: Option<&std::sync::Arc<GpuContext>>,
    range: Range<usize>,
) -> anyhow::Result<AnyBackend> {
    let config = file.config().clone();
    let layers = file.load_layers(range.clone())?;
    Ok(match gpu {
        Some(ctx) => AnyBackend::gpu(ctx.clone(), config, range, &layers)?,
        None => AnyBackend::cpu(config, range, layers)?,
    })
}

/// A model loaded for local generation: the client's part and a chain of local executors.
pub struct LocalModel {
    /// Head, tokenizer, chat template: the same client every other front end uses.
    pub client: ClientModel,
    /// Executors covering every layer.
    pub chain: LocalChain<AnyBackend>,
    /// Adapter description for the wgpu backend.
    pub adapter: Option<String>,
}

impl LocalModel {
    /// Loads `path` and builds executors on `backend`, one per range of `split` (default: one
    /// executor for all layers).
    pub fn load(path: &Path, backend: BackendKind, split: Option<Vec<Range<usize>>>) -> anyhow::Result<LocalModel> {
        let file = ModelFile::open(path).context("opening the model")?;
        Self::from_file(&file, backend, split)
    }

    /// Builds from an opened model file.
    pub fn from_file(
        file: &ModelFile,
        backend: BackendKind,
        split: Option<Vec<Range<usize>>>,
    ) -> anyhow::Result<LocalModel> {
        let client = ClientModel::from_file(file, None)?;
        let split = split.unwrap_or_else(|| std::iter::once(0..client.config.n_layers).collect());
        let gpu = pick_gpu(backend)?;
        let adapter = gpu.as_ref().map(|ctx| {
            let a = ctx.adapter_info();
            format!("{} ({}, {})", a.name, a.backend, a.device_type)
        });
        let mut executors = Vec::new();
        for range in split {
            let b = load_backend(file, gpu.as_ref(), range)?;
            executors.push(BlockExecutor::new(b, ExecutorConfig::default()));
        }
        let chain = LocalChain::new(executors)?;
        Ok(LocalModel { client, chain, adapter })
    }

    /// Name of the backend the layers run on (`cpu` or `wgpu`).
    pub fn backend_name(&self) -> &'static str {
        self.chain.executors().first().map_or("none", |e| e.backend().name())
    }
}
