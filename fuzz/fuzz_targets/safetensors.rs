//! Fuzz target `safetensors`: see `ait_fuzz_targets::safetensors`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::safetensors(data));
