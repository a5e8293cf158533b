//! Fuzz target: see `crmvault::fuzzing::list_chunk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| crmvault::fuzzing::list_chunk(bytes));
