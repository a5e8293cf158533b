//! `init`: create a repository and the writer key that lets this host back up to it.

use std::path::{Path, PathBuf};

use crate::crypto::RepoSecret;
use crate::error::Result;
use crate::repo::Repository;
use crate::target::{OpenMode, Target};

/// What `init` created.
#[derive(Debug, serde::Serialize)]
pub struct InitReport {
    /// Repository id.
    pub repository_id: String,
    /// Where.
    pub location: String,
    /// The writer key file (keep it on the backup host only).
    pub writer_key: PathBuf,
}

/// Creates a repository at `location` readable by `recipients`.
pub async fn run(location: &str, recipients: &[age::x25519::Recipient], config_dir: &Path) -> Result<InitReport> {
    let target = Target::open(location, OpenMode::Create)?;
    let (repository, writer_key) = Repository::init(target, recipients, config_dir, RepoSecret::generate()).await?;
    Ok(InitReport { repository_id: repository.config.id, location: location.to_string(), writer_key })
}
