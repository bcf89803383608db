//! Fuzz target `api`: see `ait_fuzz_targets::api`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::api(data));
