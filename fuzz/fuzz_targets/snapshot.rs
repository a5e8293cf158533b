//! Fuzz target: see `crmvault::fuzzing::snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| crmvault::fuzzing::snapshot(bytes));
