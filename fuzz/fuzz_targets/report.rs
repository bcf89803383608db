//! Fuzz target `report`: see `ait_fuzz_targets::report`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::report(data));
