//! End-to-end tests: the real `crmvault` binary against a real PostgreSQL, S3 servers and
//! damaged storage, plus the storage conformance suite every target runs. One test binary
//! (it links once); each module is one area, and `cargo test --test e2e MODULE::` runs it.
//! `cargo test --test e2e s3::` runs the S3 tests (the `s3` module and the conformance suite's
//! S3 half, `storage::s3`), which CI repeats against moto_server.

mod common;

mod admin;
mod alarm;
mod audit;
mod backup_restore;
mod bad_input;
mod config;
mod crash;
mod diff;
mod drill;
mod faults;
mod forget;
mod listings;
mod locks;
mod metrics;
mod packaging;
mod partial;
mod progress;
mod prune;
mod rekey;
mod roles;
mod s3;
mod secrets;
mod security;
mod storage;
mod tls;
mod untrusted_storage;
mod verify_subset;
