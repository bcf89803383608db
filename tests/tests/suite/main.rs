//! The cross-process and cross-crate tests, one module per subject, built as one test binary:
//! a binary per file linked the whole node (libp2p, alloy, wgpu, candle) and instantiated its
//! generics some twenty times over, which took most of the native build. Run one subject with
//! `cargo test --release -p ait-tests --test suite -- trust::`.

mod architectures;
mod attacks;
mod batching;
mod browser;
mod chain;
mod concurrency;
mod engine_reference;
mod formats;
mod http_attacks;
mod inspect;
mod manifest_cache;
mod openai_api;
mod part_exchange;
mod payment;
mod quant_reference;
mod sessions;
mod settlement;
mod slashing;
mod split;
mod swarm;
mod torrent;
mod trust;
