//! Fuzz target `session`: see `ait_fuzz_targets::session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::session(data));
