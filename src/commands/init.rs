//! `init`: create a repository on one or more targets, and the writer key that lets this host
//! back up to it. Several targets get the same config and keys, byte for byte: they are copies
//! of one repository, each complete on its own.

use std::path::{Path, PathBuf};

use crate::crypto::RepoSecret;
use crate::error::Result;
use crate::repo::{self, Repository, Tuning};
use crate::target::Target;
use crate::trust::Fingerprint;

/// What `init` created.
#[derive(Debug, serde::Serialize)]
pub struct InitReport {
    /// Repository id.
    pub repository_id: String,
    /// Its fingerprint: admins keep it beside their identity (restore checks it).
    pub fingerprint: Fingerprint,
    /// BLAKE3 of its config (what this host pinned).
    #[serde(skip)]
    pub config_hash: String,
    /// Where.
    pub locations: Vec<String>,
    /// The writer key file (keep it on the backup host only), when one was made.
    pub writer_key: Option<PathBuf>,
}

/// Creates a repository on every target, readable by `recipients`.
pub async fn run(
    targets: Vec<Target>,
    recipients: &[age::x25519::Recipient],
    config_dir: &Path,
    tuning: Tuning,
) -> Result<InitReport> {
    // Look at every target before writing to any.
    for target in &targets {
        repo::ensure_empty(target).await?;
    }
    let mut targets = targets.into_iter();
    let Some(first) = targets.next() else {
        return Err(crate::Error::NoTarget);
    };
    let (repository, writer_key) =
        Repository::init(first, recipients, config_dir, RepoSecret::generate(), tuning).await?;
    let mut locations = vec![repository.target.location().to_string()];
    for target in targets {
        let copy = repository.init_copy(target).await?;
        locations.push(copy.target.location().to_string());
    }
    Ok(InitReport {
        fingerprint: repository.fingerprint(),
        config_hash: repository.config_hash.clone(),
        repository_id: repository.config.id,
        locations,
        writer_key: Some(writer_key),
    })
}

/// Creates repositories that share `source`'s identity (`init --copy-from`).
pub async fn run_copy_from(source: &Repository, targets: Vec<Target>) -> Result<InitReport> {
    for target in &targets {
        repo::ensure_empty(target).await?;
    }
    let mut locations = Vec::new();
    for target in targets {
        locations.push(source.init_copy(target).await?.target.location().to_string());
    }
    Ok(InitReport {
        repository_id: source.config.id.clone(),
        fingerprint: source.fingerprint(),
        config_hash: source.config_hash.clone(),
        locations,
        writer_key: None,
    })
}
