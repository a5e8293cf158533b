//! Fuzz target: see `crmvault::fuzzing::index`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| crmvault::fuzzing::index(bytes));
