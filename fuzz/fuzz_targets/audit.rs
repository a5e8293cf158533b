//! Fuzz target: see `crmvault::fuzzing::audit`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| crmvault::fuzzing::audit(bytes));
