//! The client's share of a generation: embeddings, final norm, LM head, sampling, and the
//! loop that drives a chain of layer executors token by token.
//!
//! Main types: [`Head`] (embeddings and LM head, always on the CPU: it must also run in a tab
//! without WebGPU), [`Sampler`], [`LayerChain`] (whatever runs all the layers: local executors
//! now, a route through the swarm later) and [`generate`]. It does not run decoder layers itself.

mod generate;
mod head;
mod sampling;
mod stop;

pub use generate::{generate, FinishReason, GenerateOptions, Generation, LayerChain, LocalChain};
pub use head::Head;
pub use sampling::{argmax, Sampler, SamplingParams};
pub use stop::StopFilter;

use crate::engine::EngineError;
use crate::model::ModelError;

/// Errors of a generation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The prompt does not leave room for a single new token.
    #[error("prompt of {prompt} tokens does not fit the context of {context} tokens")]
    PromptTooLong {
        /// Prompt length in tokens.
        prompt: usize,
        /// Context length of the model (or of the request).
        context: usize,
    },
    /// The prompt is empty after tokenization.
    #[error("empty prompt")]
    EmptyPrompt,
    /// A token id outside the vocabulary.
    #[error("token {token} outside the vocabulary of {vocab}")]
    BadToken {
        /// The id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The layer chain failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Tokenizer or template failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The swarm could not run the layers.
    #[error(transparent)]
    Swarm(#[from] crate::net::chain::ChainError),
}
