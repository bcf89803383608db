//! The cross-process and cross-crate tests, one module per subject, built as one test binary:
//! a binary per file linked the whole node (libp2p, alloy, wgpu, candle) and instantiated its
//! generics some twenty times over, which took most of the native build. Run one subject with
//! `cargo test --release -p ait-tests --test suite -- trust::`. The tests that must run with
//! nothing else beside them are in the other binary, `serial`.

mod architectures;
mod batching;
mod chain;
mod concurrency;
mod engine_reference;
mod formats;
mod http_attacks;
mod inspect;
mod manifest_cache;
mod part_exchange;
mod quant_reference;
mod sessions;
mod settlement;
mod slashing;
mod split;
mod torrent;
mod trust;
