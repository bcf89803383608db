//! Fuzz target `chat`: see `ait_fuzz_targets::chat`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ait_fuzz_targets::chat(data));
