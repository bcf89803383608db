//! Bodies of the fuzz targets: one function per kind of input that reaches a node from the
//! network or from a file. Each takes the raw fuzz input (`&[u8]`), must never panic on it,
//! and must return within seconds. The cargo-fuzz binaries in `fuzz/fuzz_targets/` call these
//! functions, and so does the corpus replay (`tests/corpus.rs`), so a saved input replays
//! through exactly the code that found it.
//!
//! Modules: [`net`] (frames, protocol messages, server records, fraud reports, session streams),
//! [`model`] (GGUF, safetensors, parts, tokenizers, chat templates), `api` (the HTTP router,
//! with the default `api` feature), [`tiny`] (the tiny in-memory model the targets serve),
//! [`seeds`] (the seed corpora, built from real encodings).
//!
//! It does not fix what it finds: a crash is reported against the file that panics.
#![deny(missing_docs)]

#[cfg(feature = "api")]
pub mod api;
pub mod model;
pub mod net;
pub mod seeds;
pub mod tiny;

#[cfg(feature = "api")]
pub use api::api;
pub use model::{chat, gguf, parts, safetensors, tokenizer};
pub use net::{frame, protocol, record, report, session};

/// The body of a fuzz target.
pub type Target = fn(&[u8]);

/// Every target: its name (the cargo-fuzz binary and the corpus folder) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("protocol", protocol),
    ("record", record),
    ("report", report),
    ("session", session),
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("parts", parts),
    ("tokenizer", tokenizer),
    ("chat", chat),
    #[cfg(feature = "api")]
    ("api", api),
];

/// The first byte (a mode selector; 0 for an empty input) and the rest.
pub fn split_first(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&m, rest)) => (m, rest),
        None => (0, data),
    }
}

/// A little-endian `u16` length `n`, then `n` bytes (fewer if the input ends), then the rest.
pub fn split_len(data: &[u8]) -> (&[u8], &[u8]) {
    let n = match data {
        [a, b, ..] => u16::from_le_bytes([*a, *b]) as usize,
        _ => return (&[], &[]),
    };
    let rest = &data[2..];
    rest.split_at(n.min(rest.len()))
}

/// A little-endian `u16` length, then `first`, then `rest`: the inverse of [`split_len`].
pub fn join_len(first: &[u8], rest: &[u8]) -> Vec<u8> {
    let n = u16::try_from(first.len()).expect("first part under 64 KiB");
    let mut out = n.to_le_bytes().to_vec();
    out.extend_from_slice(first);
    out.extend_from_slice(rest);
    out
}
