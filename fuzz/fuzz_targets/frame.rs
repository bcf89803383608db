//! Fuzz target `frame`: see `ait_fuzz_targets::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::frame(data));
