//! The client's share of a generation: tokenizer, chat template, embeddings, final norm, LM
//! head, sampling, and the loop that drives a chain of layer executors token by token.
//!
//! Main types: [`ClientModel`] (everything a client keeps of a model: its id, configuration,
//! [`Head`], tokenizer and chat template; built from a model file or from downloaded parts),
//! whose [`ClientModel::chat`] and [`ClientModel::generate`] are the one pipeline every client
//! runs (the relay's API, `ait chat`, `ait generate`, the web app); [`LayerChain`] (whatever
//! runs all the layers: [`LocalChain`] here, [`SwarmChain`](crate::net::chain::SwarmChain) over
//! the network); [`Sampler`]. It does not run decoder layers itself and knows nothing of the
//! network: a chain reports its own errors ([`LayerChain::Error`]).

mod generate;
mod head;
mod local_chain;
mod model;
mod sampling;
mod stop;

pub use generate::{FinishReason, GenerateError, GenerateOptions, Generation, LayerChain};
pub use head::Head;
pub use local_chain::{LocalChain, LocalChainError};
pub use model::ClientModel;
pub use sampling::{argmax, Sampler, SamplingParams};
pub use stop::StopFilter;

use crate::model::ModelError;

/// Errors of the client's own work (everything but the chain's).
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
    /// The chain returned hidden states of the wrong size.
    #[error("the chain returned {actual} values for the last hidden state, expected {expected}")]
    BadHidden {
        /// Values expected (the model's width).
        expected: usize,
        /// Values received.
        actual: usize,
    },
    /// The head's weights do not fit the configuration.
    #[error("{tensor} is {actual}, the configuration needs {expected}")]
    BadHead {
        /// Tensor name.
        tensor: &'static str,
        /// Shape needed.
        expected: String,
        /// Shape found.
        actual: String,
    },
    /// Reading the model, the tokenizer or the template failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}
