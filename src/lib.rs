//! crmvault: encrypted, deduplicated, verifiable backups of PostgreSQL CRM databases.
//!
//! The library is the engine; the `crmvault` binary (src/main.rs, src/cli/) only parses
//! arguments, prints and exits. Modules follow the data's way through the program:
//! [`postgres`] (PostgreSQL) → [`chunk`] → [`compress`] → [`crypto`] → [`repo`] (the format)
//! → [`target`] (storage), and back through [`fetch`] into [`postgres`] again. [`backup`] and
//! [`restore`] drive those two ways over a [`repo_set::RepoSet`] (the copies of one
//! repository); [`drill`] restores into a scratch database and proves the result from it;
//! [`rekey`] rotates keys; [`prune`] deletes what no snapshot needs; [`commands`] holds the other operations, one per CLI
//! command. Long operations report through [`progress::Progress`].

pub mod backup;
pub mod chunk;
pub mod commands;
pub mod compress;
pub mod crypto;
pub mod drill;
pub mod error;
pub mod fetch;
pub mod forget;
#[doc(hidden)]
pub mod fuzzing;
pub mod interrupt;
pub mod label_cache;
pub mod lock;
pub mod postgres;
pub mod progress;
pub mod prune;
pub mod rekey;
pub mod repack;
pub mod repo;
pub mod repo_set;
pub mod restore;
pub mod retention;
pub mod sparse_packs;
pub mod table_filter;
pub mod target;
pub mod trust;
pub mod varint;

pub use error::{Error, Result};
