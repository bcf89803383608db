//! Model files: formats, configuration, weights, tokenizer and chat template.
//!
//! Main type: [`ModelFile`], an opened checkpoint (GGUF, or Hugging Face safetensors with
//! `config.json`) that yields a resolved [`LlamaConfig`], per-layer [`LayerWeights`], the
//! client's [`HeadWeights`], a [`Tokenizer`] and the chat template. Weights stay in their
//! stored format ([`QMatrix`]).
//!
//! This module does not compute anything (see [`crate::engine`]).

pub mod card;
pub mod chat;
pub mod config;
pub mod convert;
pub mod gguf;
pub mod hf_config;
pub mod manifest;
pub mod parts;
pub mod quant;
pub mod safetensors;
pub mod tokenizer;
pub mod verified;
pub mod weights;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::{Arch, GemmaParams, LlamaConfig, LongRope};
pub use manifest::{Manifest, ModelId};
pub use quant::{QMatrix, WeightType};
pub use tokenizer::Tokenizer;
pub use weights::{HeadWeights, LayerWeights};

use std::ops::Range;

/// The weight types this engine runs, for error messages: "f32, f16, ..., iq4_xs".
pub fn supported_types() -> String {
    WeightType::ALL.map(|t| t.name()).join(", ")
}

/// Errors reading or interpreting a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Context: which file the inner error is about.
    #[error("{path}: {error}")]
    File {
        /// The file.
        path: String,
        /// What went wrong in it.
        error: Box<ModelError>,
    },
    /// Reading from disk failed.
    #[error("cannot read: {0}")]
    Io(std::io::Error),
    /// The file ends before a structure it announces.
    #[error("truncated: {what} at byte {offset} needs {needed} bytes, file has {len}")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Length of the file.
        len: u64,
    },
    /// A count read from the file (entries, array elements, tokens) is more than the bytes
    /// left can hold, or more than a fixed limit allows; nothing was allocated for it.
    #[error("{what}: {count} entries, at most {max} fit ({why})")]
    Count {
        /// What was counted.
        what: String,
        /// The count the file claims.
        count: u64,
        /// The most that can be accepted.
        max: u64,
        /// Where the limit comes from.
        why: String,
    },
    /// The file is not in the expected format at all.
    #[error("not a {format} file: {what}")]
    BadFormat {
        /// Expected format.
        format: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A tensor uses a storage type this engine does not run.
    #[error("tensor {tensor}: unsupported type {dtype} (supported: {})", supported_types())]
    UnsupportedType {
        /// Tensor name.
        tensor: String,
        /// The type as the file names it.
        dtype: String,
    },
    /// A required metadata key is absent or has the wrong type.
    #[error("metadata key {key}: {what}")]
    Metadata {
        /// The key.
        key: String,
        /// Missing, or the type found.
        what: String,
    },
    /// A required tensor is absent.
    #[error("missing tensor {0}")]
    MissingTensor(String),
    /// A tensor's shape contradicts the configuration.
    #[error("tensor {tensor}: shape {actual:?}, config needs {expected:?}")]
    TensorShape {
        /// Tensor name.
        tensor: String,
        /// Shape the configuration implies (rows, cols) or (len).
        expected: Vec<usize>,
        /// Shape in the file.
        actual: Vec<usize>,
    },
    /// The configuration is inconsistent.
    #[error("bad config: {0}")]
    BadConfig(String),
    /// The tokenizer could not be built or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// Downloaded weights whose content hash differs from the one the manifest names.
    #[error("{part}: content hash {actual} does not match the manifest's {expected}")]
    HashMismatch {
        /// Which part (`block 12`, `head`).
        part: String,
        /// Hash in the manifest.
        expected: String,
        /// Hash of what arrived.
        actual: String,
    },
    /// Layer index out of range.
    #[error("layer {layer} out of range for a {n_layers}-layer model")]
    LayerOutOfRange {
        /// Layer asked for.
        layer: usize,
        /// Layers in the model.
        n_layers: usize,
    },
}

// Not `#[from]`: the message already carries the I/O error, and a `source` would make error
// reporters print it twice.
impl From<std::io::Error> for ModelError {
    fn from(e: std::io::Error) -> Self {
        ModelError::Io(e)
    }
}

impl ModelError {
    /// Wraps this error with the file it is about.
    pub fn in_file(self, path: impl Into<String>) -> ModelError {
        match self {
            e @ ModelError::File { .. } => e,
            e => ModelError::File { path: path.into(), error: Box::new(e) },
        }
    }
}

/// An opened checkpoint of a Llama-family model.
pub enum ModelFile {
    /// A GGUF file.
    Gguf(gguf::GgufModel),
    /// Hugging Face safetensors (one file or shards) with `config.json`.
    Safetensors(safetensors::SafetensorsModel),
}

impl ModelFile {
    /// Opens a model: a `.gguf` file, or a directory (or `.safetensors` /
    /// `model.safetensors.index.json` file) of a Hugging Face checkpoint.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<ModelFile, ModelError> {
        if let Err(e) = std::fs::metadata(path) {
            return Err(ModelError::Io(e).in_file(path.display().to_string()));
        }
        let is_gguf = path.is_file()
            && std::fs::File::open(path)
                .and_then(|mut f| {
                    let mut magic = [0u8; 4];
                    std::io::Read::read_exact(&mut f, &mut magic).map(|_| magic == *b"GGUF")
                })
                .unwrap_or(false);
        if is_gguf {
            Ok(ModelFile::Gguf(gguf::GgufModel::open(path)?))
        } else {
            Ok(ModelFile::Safetensors(safetensors::SafetensorsModel::open(path)?))
        }
    }

    /// Resolved configuration.
    pub fn config(&self) -> &LlamaConfig {
        match self {
            ModelFile::Gguf(m) => m.config(),
            ModelFile::Safetensors(m) => m.config(),
        }
    }

    /// Weights of layer `i`.
    pub fn load_layer(&self, i: usize) -> Result<LayerWeights, ModelError> {
        let n_layers = self.config().n_layers;
        if i >= n_layers {
            return Err(ModelError::LayerOutOfRange { layer: i, n_layers });
        }
        match self {
            ModelFile::Gguf(m) => m.load_layer(i),
            ModelFile::Safetensors(m) => m.load_layer(i),
        }
    }

    /// Weights of layers `range`, in order.
    pub fn load_layers(&self, range: Range<usize>) -> Result<Vec<LayerWeights>, ModelError> {
        range.map(|i| self.load_layer(i)).collect()
    }

    /// The client's head: embeddings, final norm, LM head.
    pub fn load_head(&self) -> Result<HeadWeights, ModelError> {
        match self {
            ModelFile::Gguf(m) => m.load_head(),
            ModelFile::Safetensors(m) => m.load_head(),
        }
    }

    /// The tokenizer stored with the model.
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        match self {
            ModelFile::Gguf(m) => m.tokenizer(),
            ModelFile::Safetensors(m) => m.tokenizer(),
        }
    }

    /// Whether the model ships a tokenizer (GGUF `tokenizer.ggml.model`, or `tokenizer.json`).
    pub fn has_tokenizer(&self) -> bool {
        match self {
            ModelFile::Gguf(m) => m.has_tokenizer(),
            ModelFile::Safetensors(m) => m.has_tokenizer(),
        }
    }

    /// The chat template stored with the model, if any.
    pub fn chat_template(&self) -> Option<String> {
        match self {
            ModelFile::Gguf(m) => m.chat_template(),
            ModelFile::Safetensors(m) => m.chat_template(),
        }
    }
}

/// The default model's file, for tests that need the real tokenizer or template.
#[cfg(test)]
pub(crate) mod test_model {
    /// `$AIT_MODEL`, else the cache path `ait fetch-model` downloads to.
    pub(crate) fn path() -> std::path::PathBuf {
        let path = match std::env::var_os("AIT_MODEL") {
            Some(p) => std::path::PathBuf::from(p),
            None => {
                let home = std::env::var_os("HOME").unwrap_or_default();
                std::path::PathBuf::from(home).join(".cache/ai-torrent/models/SmolLM2-135M-Instruct.Q4_1.gguf")
            }
        };
        assert!(
            path.is_file(),
            "model file {} not found: run `ait fetch-model` (scripts/test.sh does) or set AIT_MODEL",
            path.display()
        );
        path
    }

    /// The GGUF metadata of the default model.
    pub(crate) fn metadata() -> super::gguf::Metadata {
        let bytes = std::fs::read(path()).expect("read model");
        super::gguf::GgufFile::parse(bytes::Bytes::from(bytes)).expect("parse model").metadata
    }
}
