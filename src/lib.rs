//! crmvault: encrypted, deduplicated, verifiable backups of PostgreSQL CRM databases.
//!
//! The library is the engine; the `crmvault` binary (src/main.rs, src/cli/) only parses
//! arguments, prints and exits. Modules follow the data's way through the program:
//! [`source`] (PostgreSQL) → [`chunk`] → [`crypto`] → [`repo`] (the format) → [`target`]
//! (storage), and back through [`fetch`]. [`commands`] holds one operation per CLI command.

pub mod backup;
pub mod chunk;
pub mod commands;
pub mod compress;
pub mod crypto;
pub mod error;
pub mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod repo;
pub mod restore;
pub mod source;
pub mod target;
pub mod trust;
pub mod varint;

pub use error::{Error, Result};
