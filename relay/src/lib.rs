//! Library half of the native AI Torrent node (the `ait` binary lives in `main.rs`).
//!
//! One job: the native-only parts that the binary, the integration tests and the benches share:
//! [`fetch`] finds (and on first use downloads and verifies) the default model in the local
//! cache, [`manifest_cache`] keeps a model file's manifest so that a restart hashes only what
//! it serves, [`local`] runs a whole model on this machine, [`bench`] measures it, [`p2p`] starts
//! the native libp2p node (under the flags of [`limits`]), [`seed`] answers other nodes' requests for model parts (from the model file and from the
//! [`part_store`]), [`swarm_model`] fetches a model known by its id from the swarm, [`models`] lists the
//! swarm's models, [`publish`] converts a creator's model to GGUF (quantized if asked, with a [`drift`] report) and labels it with a signed card, [`pin`] keeps copies
//! of trusted creators' models, [`serving`] runs web-node's serving assembly on tokio and a compute
//! thread, [`swarm_client`] joins the swarm as a client, [`api`] serves the OpenAI-compatible
//! HTTP API ([`openai`] holds its shapes). The portable node logic (model formats, kernels, the
//! one client pipeline, protocol, routing, serving) lives in `web-node`; this crate only drives
//! it.
#![deny(missing_docs)]

/// Locks `m`, going on with its data if a thread panicked while holding it (the data under
/// these locks stays consistent between statements).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub mod api;
pub mod bench;
pub mod calibrate;
pub mod chat;
pub mod drift;
pub mod evidence;
pub mod fetch;
pub mod fraud;
pub mod inspect;
pub mod limits;
pub mod local;
pub mod manifest_cache;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod p2p;
pub mod part_store;
pub mod pin;
pub mod publish;
pub mod seed;
pub mod serving;
pub mod settle;
pub mod swarm_client;
pub mod swarm_model;
pub mod web;

/// Prints `line` on stdout for the operator (and the tests that read it), ignoring a stdout
/// nobody reads any more: a relay prints while it runs, and must not stop because a pipe
/// closed.
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The terminal progress bar of a transfer, in bytes with rate and time left, after a prefix
/// naming what moves (`head`, `block 3`, `converting`).
pub fn byte_bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{prefix:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ")
}
