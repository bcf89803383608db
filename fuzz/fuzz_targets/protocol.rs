//! Fuzz target `protocol`: see `ait_fuzz_targets::protocol`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::protocol(data));
