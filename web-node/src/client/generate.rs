//! The generation loop: prompt tokens in, streamed text out, through any [`LayerChain`].

use std::future::Future;

use super::{ClientError, Head, Sampler, SamplingParams};
use crate::model::Tokenizer;

/// Whatever runs all decoder layers of the model for one sequence: in-process executors
/// ([`LocalChain`](super::LocalChain)), or a route of remote servers
/// ([`SwarmChain`](crate::net::chain::SwarmChain)).
pub trait LayerChain {
    /// Why the chain could not run a step (its own type: the client does not know where the
    /// layers run).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Starts a new sequence of at most `max_len` tokens, dropping any previous one.
    fn begin(&mut self, max_len: usize) -> impl Future<Output = Result<(), Self::Error>>;

    /// Runs `n_tokens` embeddings (`[n_tokens, hidden]`) through every layer, continuing the
    /// current sequence; returns the last layer's hidden states, same shape.
    fn forward(&mut self, hidden: &[f32], n_tokens: usize) -> impl Future<Output = Result<Vec<f32>, Self::Error>>;

    /// Ends the current sequence and frees what it holds.
    fn end(&mut self) -> impl Future<Output = Result<(), Self::Error>>;
}

/// Why a generation failed: the client's own part, or the chain that runs the layers.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError<E: std::error::Error + 'static> {
    /// Tokenizing, embedding, the LM head or the prompt's size.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The chain failed.
    #[error(transparent)]
    Chain(E),
}

/// Options of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens to generate. Default 256.
    pub max_tokens: usize,
    /// How to choose tokens.
    pub sampling: SamplingParams,
    /// Stop at any of the tokenizer's end-of-sequence tokens. Default true.
    pub stop_at_eos: bool,
    /// Longest prefill sent in one step (longer prompts are sent in chunks). Default 512.
    pub prefill_chunk: usize,
    /// Stop sequences: the text ends before the first occurrence of any (not included).
    pub stop: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop_at_eos: true,
            prefill_chunk: 512,
            stop: Vec::new(),
        }
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token, or the text reached a stop sequence.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
}

/// Result of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (the end-of-sequence token excluded).
    pub tokens: Vec<u32>,
    /// Generated text.
    pub text: String,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Why it ended.
    pub finish: FinishReason,
    /// Seconds from start to the first token's logits (prefill of the whole prompt).
    pub prefill_secs: f64,
    /// Decode steps run after the prefill.
    pub decode_steps: usize,
    /// Seconds spent in those decode steps (layers, LM head and sampling).
    pub decode_secs: f64,
}

impl Generation {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tok_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }

    /// Tokens per second of decode.
    pub fn decode_tok_per_s(&self) -> f64 {
        self.decode_steps as f64 / self.decode_secs.max(1e-9)
    }
}

/// Generates from `prompt` (token ids) through `chain`, calling `on_text` with each new piece of
/// text as soon as it is complete UTF-8. The chain's sequence is ended however this returns.
/// Called through [`ClientModel::generate`](super::ClientModel::generate).
pub(super) async fn generate<C: LayerChain>(
    head: &Head,
    tokenizer: &Tokenizer,
    chain: &mut C,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: impl FnMut(&str),
) -> Result<Generation, GenerateError<C::Error>> {
    let result = run(head, tokenizer, chain, prompt, opts, on_text).await;
    let ended = chain.end().await.map_err(GenerateError::Chain);
    let generation = result?;
    ended?;
    Ok(generation)
}

async fn run<C: LayerChain>(
    head: &Head,
    tokenizer: &Tokenizer,
    chain: &mut C,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generation, GenerateError<C::Error>> {
    let context = head.config().max_seq_len;
    if prompt.is_empty() {
        return Err(ClientError::EmptyPrompt.into());
    }
    if prompt.len() >= context {
        return Err(ClientError::PromptTooLong { prompt: prompt.len(), context }.into());
    }
    let max_len = prompt.len().saturating_add(opts.max_tokens).min(context);
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut stream = tokenizer.stream();
    let mut stop = super::StopFilter::new(&opts.stop);
    let mut halted = false;
    let mut history = prompt.to_vec();
    let start = web_time::Instant::now();

    chain.begin(max_len).await.map_err(GenerateError::Chain)?;
    let mut last = Vec::new();
    for chunk in prompt.chunks(opts.prefill_chunk.max(1)) {
        let x = head.embed(chunk)?;
        last = chain.forward(&x, chunk.len()).await.map_err(GenerateError::Chain)?;
    }
    let h = head.config().hidden;
    let Some(tail) = last.len().checked_sub(h).map(|start| &last[start..]) else {
        return Err(ClientError::BadHidden { expected: h, actual: last.len() }.into());
    };
    let mut logits = head.next_logits(tail).await?;
    let prefill_secs = start.elapsed().as_secs_f64();

    let decode_start = web_time::Instant::now();
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut decode_steps = 0;
    let finish = loop {
        if tokens.len() >= opts.max_tokens {
            break FinishReason::Length;
        }
        let t = sampler.sample(&mut logits, &history);
        if opts.stop_at_eos && tokenizer.eos_tokens().contains(&t) {
            break FinishReason::Stop;
        }
        tokens.push(t);
        history.push(t);
        if let Some(piece) = stream.push(t).map_err(ClientError::from)? {
            let (out, stopped) = stop.push(&piece);
            if !out.is_empty() {
                on_text(&out);
                text.push_str(&out);
            }
            if stopped {
                halted = true;
                break FinishReason::Stop;
            }
        }
        if tokens.len() >= opts.max_tokens || history.len() >= max_len {
            break FinishReason::Length;
        }
        let x = head.embed(&[t])?;
        let out = chain.forward(&x, 1).await.map_err(GenerateError::Chain)?;
        logits = head.next_logits(&out).await?;
        decode_steps += 1;
    };
    let decode_secs = decode_start.elapsed().as_secs_f64();
    let mut finish = finish;
    if !halted {
        let mut rest = String::new();
        if let Some(tail) = stream.finish().map_err(ClientError::from)? {
            let (out, stopped) = stop.push(&tail);
            rest.push_str(&out);
            if stopped {
                finish = FinishReason::Stop;
            }
        }
        rest.push_str(&stop.finish());
        if !rest.is_empty() {
            on_text(&rest);
            text.push_str(&rest);
        }
    }
    Ok(Generation { tokens, text, prompt_tokens: prompt.len(), finish, prefill_secs, decode_steps, decode_secs })
}
