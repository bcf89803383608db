//! Fuzz target `tokenizer`: see `ait_fuzz_targets::tokenizer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::tokenizer(data));
