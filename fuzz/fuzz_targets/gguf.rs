//! Fuzz target `gguf`: see `ait_fuzz_targets::gguf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::gguf(data));
