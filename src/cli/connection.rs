//! What the environment says about database connections, for the library, which reads none:
//! libpq's `PGSSLMODE` and `PGSSLROOTCERT` (used when the connection string has no `sslmode` or
//! `sslrootcert`, as libpq does), and `CRMVAULT_DB_REMOTE_HOSTS`, a comma-separated list of
//! hosts on this machine to treat as remote (a loopback port or socket that forwards to
//! another machine), so that they too get `sslmode=require` by default. Also where a database
//! password is found besides the URL and `PGPASSWORD`: systemd credentials and libpq's
//! password file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use crmvault::postgres::tls::{RemoteHosts, TlsMode};
use crmvault::postgres::{ConnectionDefaults, Database};

/// The environment variable naming hosts on this machine that lead elsewhere.
const REMOTE_HOSTS_VARIABLE: &str = "CRMVAULT_DB_REMOTE_HOSTS";

/// Reads the defaults from the environment; an empty variable counts as unset.
pub fn defaults() -> Result<ConnectionDefaults> {
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
    let tls = variable("PGSSLMODE").map(|mode| TlsMode::parse(mode.trim())).transpose().context("reading PGSSLMODE")?;
    Ok(ConnectionDefaults {
        tls,
        root_cert: variable("PGSSLROOTCERT").map(PathBuf::from),
        remote_hosts: variable(REMOTE_HOSTS_VARIABLE).map(|list| RemoteHosts::from_list(&list)).unwrap_or_default(),
    })
}

/// The database password systemd hands the service (`LoadCredential=db-password:…`), when it
/// runs under systemd with such a credential.
pub fn password_from_credentials() -> Result<Option<String>> {
    let Some(directory) = std::env::var_os("CREDENTIALS_DIRECTORY") else { return Ok(None) };
    let path = std::path::Path::new(&directory).join("db-password");
    if !path.exists() {
        return Ok(None);
    }
    super::profile::read_secret_file(&path).map(Some)
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
