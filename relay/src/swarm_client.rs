//! A native client of the swarm: the model's head and tokenizer locally, layers on servers.

use std::path::Path;

use anyhow::Context;
use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use web_node::client::Head;
use web_node::model::{ChatMessage, ChatTemplate, LlamaConfig, Manifest, ModelFile, ModelId, Tokenizer};
use web_node::net::chain::{ChainOptions, SwarmChain};
use web_node::net::node::{NodeHandle, Role};

/// What a client keeps of a model: everything but the decoder layers.
pub struct ClientModel {
    /// Resolved configuration.
    pub config: LlamaConfig,
    /// Embeddings and LM head.
    pub head: Head,
    /// Tokenizer.
    pub tokenizer: Tokenizer,
    /// Chat template.
    pub template: ChatTemplate,
    /// Content id that servers announce.
    pub id: ModelId,
}

impl ClientModel {
    /// Loads the head and tokenizer of `path` and computes its model id.
    pub fn load(path: &Path) -> anyhow::Result<ClientModel> {
        Self::load_with_id(path, None)
    }

    /// Like [`ClientModel::load`], trusting `id` when given instead of hashing every block
    /// again (a relay has just computed it to serve the model).
    pub fn load_with_id(path: &Path, id: Option<ModelId>) -> anyhow::Result<ClientModel> {
        let file = ModelFile::open(path).context("opening the model")?;
        Self::from_file(&file, id)
    }

    /// The client's part of an opened model (hashing it unless `id` is given).
    pub fn from_file(file: &ModelFile, id: Option<ModelId>) -> anyhow::Result<ClientModel> {
        let config = file.config().clone();
        let tokenizer = file.tokenizer()?;
        let head = Head::new(config.clone(), file.load_head()?)?;
        let template = ChatTemplate::for_model(file.chat_template().as_deref(), &tokenizer)?;
        let id = match id {
            Some(id) => id,
            None => Manifest::of_file(file).context("hashing the model")?.id(),
        };
        Ok(ClientModel { config, head, tokenizer, template, id })
    }

    /// The prompt text for a conversation, through the model's chat template.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
        Ok(self.template.render(messages, true)?)
    }
}

/// Starts a client node (it only dials) and joins the swarm through `bootstrap`.
pub async fn connect(bootstrap: &[Multiaddr]) -> anyhow::Result<NodeHandle> {
    let key = Keypair::generate_ed25519();
    let cert =
        libp2p_webrtc::tokio::Certificate::generate(&mut rand_webrtc::rng()).context("generating a certificate")?;
    let (handle, _) = crate::p2p::start(key, cert, Role::Client, &[], false).await?;
    crate::p2p::bootstrap(&handle, bootstrap).await?;
    Ok(handle)
}

/// A chain over the swarm for `model`.
pub fn chain(handle: NodeHandle, model: &ClientModel, opts: ChainOptions) -> SwarmChain {
    SwarmChain::new(handle, model.id, model.config.n_layers, model.config.hidden, opts)
}
