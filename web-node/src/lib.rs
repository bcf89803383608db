//! Portable AI Torrent node library.
//!
//! One job: everything a node needs that is not a process or a UI. It reads model files
//! ([`model`]), runs contiguous ranges of transformer layers on a compute backend
//! ([`engine`]: our WGSL kernels through wgpu, or the CPU), does the client's share of a
//! generation ([`client`]: tokenizer, embeddings, LM head, sampling), and takes part in the
//! swarm ([`net`]: the inference protocol, DHT records, routing, serving and a remote chain).
//!
//! It builds for `wasm32-unknown-unknown` (browser tabs) and for native targets (the `ait`
//! binary). It picks no transports and spawns no tasks: the embedding program does both.
#![deny(missing_docs)]

pub mod client;
pub mod engine;
pub mod model;
pub mod net;
pub mod settle;
pub mod time;
pub mod trust;
