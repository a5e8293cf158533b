//! Fuzz target: see `crmvault::fuzzing::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| crmvault::fuzzing::manifest(bytes));
