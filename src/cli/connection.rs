//! What the environment says about database connections, for the library, which reads none:
//! libpq's `PGSSLMODE` and `PGSSLROOTCERT` (used when the connection string has no `sslmode` or
//! `sslrootcert`, as libpq does), and `CRMVAULT_DB_REMOTE_HOSTS`, a comma-separated list of
//! hosts on this machine to treat as remote (a loopback port or socket that forwards to
//! another machine), so that they too get `sslmode=require` by default. Where passwords come
//! from besides the URL and `PGPASSWORD` is secrets.rs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use crmvault::postgres::ConnectionDefaults;
use crmvault::postgres::tls::{RemoteHosts, TlsMode};

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
