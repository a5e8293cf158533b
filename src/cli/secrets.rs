//! Secrets the CLI reads from files: a profile's `password_file` and `secret_access_key_file`,
//! the credentials systemd hands a service (`LoadCredential=`) in `$CREDENTIALS_DIRECTORY`
//! (files, never the environment, which other processes of the same user can read in /proc),
//! and libpq's password file. Each must be readable by its owner alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use crmvault::postgres::Database;

/// Reads a secret from a file only its owner can read, without the line end.
pub fn read_secret_file(path: &Path) -> Result<String> {
    check_private(path).map_err(|message| anyhow!(message))?;
    let text = std::fs::read_to_string(path).map_err(|error| anyhow!("reading {}: {error}", path.display()))?;
    let secret = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if secret.is_empty() {
        return Err(anyhow!("{} is empty", path.display()));
    }
    Ok(secret.to_string())
}

/// Whether a file holding a secret exists and nobody but its owner can read it.
pub fn check_private(path: &Path) -> std::result::Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        _ => format!("{}: {error}", path.display()),
    })?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions());
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} holds a secret but others can read it (mode {:o}); run chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

/// Where systemd puts the credentials of a service (`LoadCredential=`, `SetCredential=`).
const CREDENTIALS_VARIABLE: &str = "CREDENTIALS_DIRECTORY";

/// The database password from the systemd credential `db-password`, for when PGPASSWORD is
/// unset; `None` outside systemd, without that credential, or when it is empty (the units'
/// `SetCredential=` default, for a role that logs in without a password).
pub fn password_from_credentials() -> Result<Option<String>> {
    credential("db-password")
}

/// The systemd credential `name`, if this process was given it (see
/// [`password_from_credentials`]).
pub fn credential(name: &str) -> Result<Option<String>> {
    match std::env::var_os(CREDENTIALS_VARIABLE).filter(|dir| !dir.is_empty()) {
        Some(dir) => read_credential(Path::new(&dir), name),
        None => Ok(None),
    }
}

/// Reads credential `name` from `dir`: its text without the final line break; `None` when the
/// file is missing or empty. A file others can read is refused, as a `password_file` is
/// (systemd writes credentials 0400). The error names the file, never its content.
fn read_credential(dir: &Path, name: &str) -> Result<Option<String>> {
    let path = dir.join(name);
    if path.exists() {
        check_private(&path).map_err(|message| anyhow::anyhow!("credential {name}: {message}"))?;
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            Ok((!value.is_empty()).then(|| value.to_string()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading the credential {}", path.display())),
    }
}

/// The password libpq's password file gives for `database`: `PGPASSFILE`, else `~/.pgpass`.
/// Like libpq, a file others can read is ignored with a warning.
pub fn password_from_pgpass(database: &Database) -> Option<String> {
    let path = match std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => std::path::Path::new(&std::env::var_os("HOME")?).join(".pgpass"),
    };
    let metadata = std::fs::metadata(&path).ok()?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions());
    if !metadata.is_file() || mode & 0o077 != 0 {
        tracing::warn!(
            "password file {} is ignored: others can read it; run chmod 600 {}",
            path.display(),
            path.display()
        );
        return None;
    }
    let contents = std::fs::read_to_string(&path).ok()?;
    database.password_from_pgpass(&contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a credential as systemd does: only its owner may read it.
    fn write_credential(dir: &Path, contents: &[u8]) {
        let path = dir.join("db-password");
        std::fs::write(&path, contents).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o400)).expect("chmod");
    }

    #[test]
    fn a_credential_is_the_file_without_its_final_line_break() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_credential(dir.path(), b"s3cret with spaces \n");
        assert_eq!(read_credential(dir.path(), "db-password").unwrap().as_deref(), Some("s3cret with spaces "));
    }

    #[test]
    fn a_credential_others_can_read_is_refused_naming_the_file_and_the_chmod() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db-password");
        std::fs::write(&path, "s3cret\n").expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
        let error = format!("{:#}", read_credential(dir.path(), "db-password").unwrap_err());
        assert!(error.contains(&format!("run chmod 600 {}", path.display())), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o400)).expect("chmod");
        assert_eq!(read_credential(dir.path(), "db-password").unwrap().as_deref(), Some("s3cret"));
    }

    #[test]
    fn a_missing_or_empty_credential_is_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read_credential(dir.path(), "db-password").unwrap(), None);
        write_credential(dir.path(), b"");
        assert_eq!(read_credential(dir.path(), "db-password").unwrap(), None);
    }

    #[test]
    fn an_unreadable_credential_is_an_error_naming_the_file_not_the_content() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_credential(dir.path(), b"\xff s3cret");
        let error = format!("{:#}", read_credential(dir.path(), "db-password").unwrap_err());
        assert!(error.contains("db-password"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
}
