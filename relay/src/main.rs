//! `ait`: the AI Torrent native node.
//!
//! Subcommands: `generate` (run a model on this machine and stream text), `bench` (measure
//! the engine, printing JSON), `fetch-model` (download the default model into the cache).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relay::local::{BackendKind, LocalModel};
use web_node::client::{GenerateOptions, SamplingParams};
use web_node::model::ChatMessage;

#[derive(Parser)]
#[command(name = "ait", version, about = "AI Torrent: peer-to-peer LLM inference")]
struct Opt {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text on this machine, streaming it to stdout.
    Generate(GenerateOpt),
    /// Measure prefill and decode speed per backend and the matrix-vector kernels; prints JSON.
    Bench(relay::bench::BenchOpt),
    /// Download the default model into the cache (if needed) and print its path.
    FetchModel,
}

#[derive(clap::Args)]
struct GenerateOpt {
    /// Model file (GGUF) or Hugging Face directory; default: SmolLM2-135M-Instruct Q4_1.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template (with its default system prompt).
    #[arg(long)]
    chat: bool,
    /// Compute backend for the layers.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    match Opt::parse().cmd {
        Cmd::Generate(o) => generate(o),
        Cmd::Bench(o) => relay::bench::run(o).map(|()| ExitCode::SUCCESS),
        Cmd::FetchModel => {
            println!("{}", relay::fetch::default_model()?.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn generate(o: GenerateOpt) -> anyhow::Result<ExitCode> {
    let path = match o.model {
        Some(p) => p,
        None => relay::fetch::default_model()?,
    };
    let model = LocalModel::load(&path, o.backend, None)?;
    let prompt_text =
        if o.chat { model.render_chat(&[ChatMessage::user(o.prompt.clone())])? } else { o.prompt.clone() };
    let prompt = model.tokenizer.encode(&prompt_text).with_context(|| "tokenizing the prompt")?;
    let opts = GenerateOptions {
        max_tokens: o.max_tokens,
        sampling: SamplingParams {
            temperature: o.temperature,
            top_p: o.top_p,
            top_k: o.top_k,
            repetition_penalty: o.repeat_penalty,
            seed: o.seed,
            ..SamplingParams::default()
        },
        ..GenerateOptions::default()
    };
    let mut stdout = std::io::stdout();
    let backend_name = model.backend_name();
    let mut chain = model.chain;
    let result = pollster::block_on(web_node::client::generate(
        &model.head,
        &model.tokenizer,
        &mut chain,
        &prompt,
        &opts,
        |piece| {
            // A closed stdout (e.g. `| head`) must not abort the generation with a panic.
            let _ = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush());
        },
    ))
    .with_context(|| format!("generating with {}", path.display()))?;
    println!();
    eprintln!(
        "backend: {}{}, prompt: {} tokens, generated: {} tokens ({:?})",
        backend_name,
        model.adapter.map(|a| format!(" on {a}")).unwrap_or_default(),
        result.prompt_tokens,
        result.tokens.len(),
        result.finish
    );
    eprintln!("prefill: {:.1} tok/s", result.prefill_tok_per_s());
    eprintln!("decode: {:.1} tok/s", result.decode_tok_per_s());
    Ok(ExitCode::SUCCESS)
}
