//! [`ClientModel`]: what a client keeps of a model, and the one chat pipeline.

use super::generate::generate;
use super::{ClientError, GenerateError, GenerateOptions, Generation, Head, LayerChain};
use crate::model::{ChatMessage, ChatTemplate, LlamaConfig, Manifest, ModelFile, ModelId, Tokenizer};

/// Everything a client keeps of a model: all of it but the decoder layers.
///
/// Every client builds one (the relay's API, `ait chat` and `ait generate` from a model file,
/// the web app from the head part it downloads) and generates through it, so prompting,
/// tokenizing and the generation loop exist once:
/// messages → [`ClientModel::chat_prompt`] (chat template, tokenizer) → tokens →
/// [`ClientModel::generate`] (embeddings, any [`LayerChain`], LM head, sampling) → text.
pub struct ClientModel {
    /// Content id that servers announce (the hash of the model's manifest).
    pub id: ModelId,
    /// Resolved configuration.
    pub config: LlamaConfig,
    /// Embeddings, final norm and LM head (on the CPU).
    pub head: Head,
    /// Tokenizer.
    pub tokenizer: Tokenizer,
    /// Chat template (the model's, or ChatML when it has none).
    pub template: ChatTemplate,
}

impl ClientModel {
    /// The client's part of an opened model (or of a downloaded head part, as
    /// `ModelFile::Gguf`). Hashes every block to compute the id unless `id` is given (a relay
    /// that serves the model, or a page that verified the part against the id, has it).
    pub fn from_file(file: &ModelFile, id: Option<ModelId>) -> Result<ClientModel, ClientError> {
        let config = file.config().clone();
        let tokenizer = file.tokenizer()?;
        let head = Head::new(config.clone(), file.load_head()?)?;
        let template = ChatTemplate::for_model(file.chat_template().as_deref(), &tokenizer)?;
        let id = match id {
            Some(id) => id,
            None => Manifest::of_file(file)?.id(),
        };
        Ok(ClientModel { id, config, head, tokenizer, template })
    }

    /// Opens `path` (GGUF file or Hugging Face directory) and keeps the client's part.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: &std::path::Path) -> Result<ClientModel, ClientError> {
        Self::from_file(&ModelFile::open(path)?, None)
    }

    /// This model with its LM-head products batched across concurrent generations (up to
    /// `max_rows` at once; see [`Head::batched`]). For a server running many at once.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_batched_head(mut self, max_rows: usize) -> ClientModel {
        self.head = self.head.batched(max_rows);
        self
    }

    /// The tokens of a plain-text prompt.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ClientError> {
        Ok(self.tokenizer.encode(text)?)
    }

    /// The tokens of a conversation rendered with the model's chat template, ending with the
    /// assistant's turn.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ClientError> {
        self.encode(&self.template.render(messages, true)?)
    }

    /// Generates from `prompt` through `chain`, calling `on_text` with each new piece of text
    /// as soon as it is complete UTF-8 (stop sequences already cut). The chain's sequence is
    /// ended however this returns.
    pub async fn generate<C: LayerChain>(
        &self,
        chain: &mut C,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_text: impl FnMut(&str),
    ) -> Result<Generation, GenerateError<C::Error>> {
        generate(&self.head, &self.tokenizer, chain, prompt, opts, on_text).await
    }

    /// The assistant's answer to `messages`: [`ClientModel::chat_prompt`], then
    /// [`ClientModel::generate`].
    pub async fn chat<C: LayerChain>(
        &self,
        chain: &mut C,
        messages: &[ChatMessage],
        opts: &GenerateOptions,
        on_text: impl FnMut(&str),
    ) -> Result<Generation, GenerateError<C::Error>> {
        let prompt = self.chat_prompt(messages)?;
        self.generate(chain, &prompt, opts, on_text).await
    }
}
