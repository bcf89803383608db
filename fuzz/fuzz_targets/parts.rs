//! Fuzz target `parts`: see `ait_fuzz_targets::parts`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::parts(data));
