//! Fuzz target: see `crmvault::fuzzing::packed_text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| crmvault::fuzzing::packed_text(bytes));
