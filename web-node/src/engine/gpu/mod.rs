//! The wgpu backend: runs a range of decoder layers with our WGSL kernels (`shaders/`).
//!
//! Main types: [`GpuContext`] (device, limits, pipeline cache), [`GpuBackend`] (a layer range's
//! weights on the device, kept in their stored types and dequantized inside the kernels) and
//! [`GpuCache`] (one session's KV cache and scratch buffers). [`ops`] runs single kernels on
//! host data, for tests and the benchmark.
//!
//! Everything is f32 on the device (no `shader-f16`), so CPU WebGPU adapters (lavapipe,
//! Chromium's SwiftShader) work. The same code builds for wasm32 (browser WebGPU): nothing
//! here blocks or spawns threads there. This module does not choose layers or talk to peers.

mod backend;
mod context;
pub mod ops;
pub mod weights;

#[cfg(test)]
mod tests;

pub use backend::{GpuBackend, GpuCache, MAX_CHUNK};
pub use context::{AdapterSummary, GpuContext};
