//! Fuzz target `record`: see `ait_fuzz_targets::record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::record(data));
