//! Library half of the native AI Torrent node (the `ait` binary lives in `main.rs`).
//!
//! One job: the native-only parts that the binary, the integration tests and the benches share:
//! [`fetch`] finds (and on first use downloads and verifies) the default model in the local
//! cache, [`local`] runs a whole model on this machine, [`bench`] measures it. The portable node
//! logic (model formats, kernels, client head) lives in `web-node`; this crate only drives it.
#![deny(missing_docs)]

pub mod bench;
pub mod fetch;
pub mod local;
