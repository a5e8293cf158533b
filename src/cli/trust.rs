//! The CLI's trust policy: which pin a command needs, where it comes from, and what happens
//! without one (docs/FORMAT.md, *Trust*; the library's side is `crmvault::trust`).
//!
//! - The backup host (writer key) needs the pin `init` left in the config folder and refuses a
//!   repository whose config changed since. A repository made by a build before format 7 has
//!   none: it is pinned on first use, with a warning that prints the fingerprint to compare.
//! - An admin command (an identity given) needs the fingerprint: `--fingerprint` /
//!   `CRMVAULT_FINGERPRINT`, or the one remembered from an earlier use on this machine. Without
//!   either it refuses: trusting on first use would trust a forged repository exactly when one is
//!   most likely (a fresh machine after an incident), and the fingerprint is one short string
//!   kept beside the identity.
//! - A keyless command checks what it is given or has remembered, and needs nothing.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crmvault::repo::{self, Repository};
use crmvault::trust::{self, Fingerprint, Pin, SnapshotMark};

/// How a command relies on the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Writes with the writer key (backup) or reads with it (snapshots, verify on the host).
    Writer,
    /// Reads with an admin identity.
    Admin,
    /// Reads what anyone may (ids, sizes, hashes).
    Keyless,
}

/// The role a reading command plays: admin with an identity, writer where this host holds the
/// writer key, keyless otherwise.
pub fn reading_role(repository: &Repository, identity: Option<&Path>, config_dir: &Path) -> Role {
    if identity.is_some() {
        Role::Admin
    } else if repo::writer_key_path(config_dir, &repository.config.id).exists() {
        Role::Writer
    } else {
        Role::Keyless
    }
}

/// A repository checked against its pin, and the pin, to raise its high-water mark.
pub struct Trusted {
    pin: Option<Pin>,
    config_dir: PathBuf,
}

impl Trusted {
    /// The newest snapshot this machine wrote or authenticated.
    pub fn newest(&self) -> Option<SnapshotMark> {
        self.pin.as_ref().and_then(|pin| pin.newest.clone())
    }

    /// Remembers `mark` if it is newer than what the pin holds.
    pub fn advance(&mut self, mark: Option<&SnapshotMark>) -> Result<()> {
        if let (Some(pin), Some(mark)) = (self.pin.as_mut(), mark)
            && pin.advance(mark)
        {
            trust::save_pin(&self.config_dir, pin)?;
        }
        Ok(())
    }
}

/// Checks every repository (copies of one) against the pin `role` needs; refuses with one line
/// naming what did not match and what to do.
pub fn check(
    repositories: &[Repository],
    role: Role,
    given: Option<&Fingerprint>,
    config_dir: &Path,
) -> Result<Trusted> {
    let mut trusted = Trusted { pin: None, config_dir: config_dir.to_path_buf() };
    for repository in repositories {
        let location = repository.target.location();
        let actual = repository.fingerprint();
        if let Some(given) = given
            && *given != actual
        {
            bail!(
                "the repository at {location} has fingerprint {actual}, not {given}: it is not the repository \
                 you trust (forged, replaced or another one); nothing was read from it"
            );
        }
        let pinned = trust::load_pin(config_dir, &repository.config.id)?;
        if pinned.is_none()
            && let Some(other) = trust::pin_of_location(config_dir, location)?
        {
            bail!(
                "{location} held repository {} (fingerprint {}) when this machine last opened it, and now claims to \
                 be repository {} (fingerprint {actual}): it was forged or replaced in storage; nothing was read from it",
                other.repository_id,
                other.fingerprint,
                repository.config.id
            );
        }
        let pin = match (role, pinned) {
            (Role::Writer, Some(pin)) if pin.config_hash != repository.config_hash => bail!(
                "the config of the repository at {location} is not the one this host pinned: its recipients, keys or \
                 settings were changed in storage; refusing to use it (recipients change with `crmvault rekey`, \
                 never by editing storage)"
            ),
            (_, Some(pin)) if given.is_none() && pin.fingerprint != actual => bail!(
                "the repository at {location} has fingerprint {actual}, but this machine pinned {} for repository {}: \
                 it was forged or replaced in storage; nothing was read from it",
                pin.fingerprint,
                repository.config.id
            ),
            (_, Some(mut pin)) => {
                if !pin.locations.iter().any(|known| known == location) {
                    pin.locations.push(location.to_string());
                    trust::save_pin(config_dir, &pin)?;
                }
                Some(pin)
            }
            (Role::Admin, None) if given.is_none() => bail!(
                "repository {} at {location} is not pinned on this machine: give --fingerprint (or \
                 CRMVAULT_FINGERPRINT) with the fingerprint the admins keep (`crmvault init` printed it; \
                 `crmvault fingerprint --repo {location}` shows what the storage claims, to compare)",
                repository.config.id
            ),
            // A host without the writer key: unlocking says so, which is the useful message.
            (Role::Writer, None) if !repo::writer_key_path(config_dir, &repository.config.id).exists() => None,
            (Role::Writer, None) if given.is_none() && repository.config.version >= repo::AUTHENTICATED_VERSION => {
                bail!(
                    "repository {} at {location} is not pinned on this host: copy {} from the host that ran \
                     `init` (beside writer.key), or give --fingerprint",
                    repository.config.id,
                    trust::pin_path(config_dir, &repository.config.id).display()
                )
            }
            (Role::Keyless, None) => None,
            (role, None) => {
                if given.is_none() {
                    tracing::warn!(
                        "repository {} at {location} was made before repositories were pinned; pinning it now with \
                         fingerprint {actual}: compare it with the one the admins keep",
                        repository.config.id
                    );
                }
                let pin = Pin {
                    repository_id: repository.config.id.clone(),
                    fingerprint: actual,
                    config_hash: repository.config_hash.clone(),
                    newest: None,
                    locations: vec![location.to_string()],
                };
                trust::save_pin(config_dir, &pin)?;
                if role == Role::Admin {
                    eprintln!(
                        "crmvault: pinned repository {} (fingerprint {actual}) in {}",
                        repository.config.id,
                        trust::pin_path(config_dir, &repository.config.id).display()
                    );
                }
                Some(pin)
            }
        };
        if trusted.pin.is_none() {
            trusted.pin = pin;
        }
    }
    Ok(trusted)
}

/// Pins what `init` made on this host (the backup host, or an admin's machine that ran it).
pub fn pin_new(config_dir: &Path, report: &crmvault::commands::init::InitReport) -> Result<()> {
    let pin = Pin {
        repository_id: report.repository_id.clone(),
        fingerprint: report.fingerprint,
        config_hash: report.config_hash.clone(),
        newest: None,
        locations: report.locations.clone(),
    };
    trust::save_pin(config_dir, &pin)?;
    Ok(())
}
