//! PostgreSQL: the consistent snapshot, the schema (through pg_dump) and COPY out and in.
//!
//! Backup opens one `REPEATABLE READ READ ONLY` transaction, exports its snapshot, and every
//! other connection (table readers, pg_dump) imports it, so all tables come from one instant.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{Error, Result};

pub mod conninfo;
pub mod script;
pub mod tls;

pub use conninfo::redact;
use tls::{Reach, RemoteHosts, TlsMode, TlsUse};

/// What a connection string leaves unsaid, as the caller resolved it (the CLI reads
/// `PGSSLMODE`, `PGSSLROOTCERT` and `CRMVAULT_DB_REMOTE_HOSTS`; the library reads no environment).
#[derive(Debug, Clone, Default)]
pub struct ConnectionDefaults {
    /// `sslmode` for a string without one; `None` leaves it to where the hosts are
    /// ([`tls::default_mode`]).
    pub tls: Option<TlsMode>,
    /// `sslrootcert` for a string without one.
    pub root_cert: Option<PathBuf>,
    /// Hosts on this machine to treat as remote.
    pub remote_hosts: RemoteHosts,
}

/// Who chose the `sslmode` a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOrigin {
    /// The connection string's `sslmode`.
    ConnectionString,
    /// The caller's default ([`ConnectionDefaults::tls`], PGSSLMODE in the CLI).
    CallerDefault,
    /// crmvault's default for where the hosts are ([`tls::default_mode`]).
    HostDefault,
}

/// A parsed database connection string. `Display` never shows the password.
#[derive(Clone)]
pub struct Database {
    config: Config,
    redacted: String,
    tls: TlsMode,
    tls_origin: TlsOrigin,
    reach: Reach,
    root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl Database {
    /// Parses a `postgres://` URL or a `key=value` connection string with no defaults from the
    /// caller: see [`Database::parse_with`].
    pub fn parse(text: &str) -> Result<Database> {
        Database::parse_with(text, &ConnectionDefaults::default())
    }

    /// Parses a `postgres://` URL or a `key=value` connection string. `sslmode` takes libpq's
    /// values; without one (here or in `defaults`) it is `prefer` when every host is on this
    /// machine and `require` otherwise. `sslrootcert` names the CA file for `verify-ca`/`verify-full`.
    pub fn parse_with(text: &str, defaults: &ConnectionDefaults) -> Result<Database> {
        let redacted = redact(text);
        let invalid = |detail: &dyn std::fmt::Display| {
            Error::Invalid(format!("{redacted} is not a valid PostgreSQL connection string: {detail}"))
        };
        let options = conninfo::take_tls_options(text).map_err(|e| invalid(&e))?;
        // tokio-postgres' causes name the option, never its value.
        let mut config: Config = options.rest.parse().map_err(|e| invalid(&crate::error::postgres_message(&e)))?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            config.host("127.0.0.1");
        }
        let reach = reach(&config, &defaults.remote_hosts);
        let (tls, tls_origin) = match (options.sslmode, defaults.tls) {
            (Some(text), _) => (TlsMode::parse(&text)?, TlsOrigin::ConnectionString),
            (None, Some(mode)) => (mode, TlsOrigin::CallerDefault),
            (None, None) => (tls::default_mode(reach), TlsOrigin::HostDefault),
        };
        config.ssl_mode(match tls.tls_use() {
            TlsUse::Never => SslMode::Disable,
            TlsUse::IfOffered => SslMode::Prefer,
            TlsUse::Always => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(15));
        }
        if config.get_application_name().is_none() {
            config.application_name("crmvault");
        }
        let root_cert = options.sslrootcert.map(PathBuf::from).or_else(|| defaults.root_cert.clone());
        Ok(Database { config, redacted, tls, tls_origin, reach, root_cert })
    }

    /// Uses `password` unless the connection string already carries one (PGPASSWORD).
    pub fn set_password_if_missing(&mut self, password: &str) {
        if self.config.get_password().is_none() {
            self.config.password(password);
        }
    }

    /// The database name (or the user name, PostgreSQL's default).
    pub fn name(&self) -> String {
        self.config.get_dbname().or(self.config.get_user()).unwrap_or("postgres").to_string()
    }

    /// The `sslmode` in effect, and who chose it.
    pub fn tls_mode(&self) -> (TlsMode, TlsOrigin) {
        (self.tls, self.tls_origin)
    }

    /// Where the farthest of the hosts is.
    pub fn reach(&self) -> Reach {
        self.reach
    }

    /// Connects (over TLS unless `sslmode=disable`). The connection's task runs on the runtime.
    pub async fn connect(&self) -> Result<Client> {
        tracing::debug!("connecting to {} with sslmode={} ({:?})", self.redacted, self.tls.as_libpq(), self.tls_origin);
        let fail = |e: tokio_postgres::Error| {
            Error::Invalid(format!("cannot connect to {}: {}", self.redacted, self.connect_failure(&e)))
        };
        let client = if self.tls == TlsMode::Disable {
            let (client, connection) = self.config.connect(NoTls).await.map_err(fail)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!("database connection ended: {error}");
                }
            });
            client
        } else {
            let connector = tls::connector(self.tls, self.root_cert.as_deref(), self.reach)?;
            let (client, connection) = self.config.connect(connector).await.map_err(fail)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!("database connection ended: {error}");
                }
            });
            client
        };
        Ok(client)
    }

    /// Why a connection failed, with what to do when the server would not speak TLS.
    fn connect_failure(&self, error: &tokio_postgres::Error) -> String {
        // tokio-postgres has no error kind for this; its message is the only sign.
        let no_tls = std::error::Error::source(error).is_some_and(|s| s.to_string() == "server does not support TLS");
        if !no_tls {
            return crate::error::postgres_message(error);
        }
        let mode = self.tls.as_libpq();
        let why = match self.tls_origin {
            TlsOrigin::ConnectionString => String::new(),
            TlsOrigin::CallerDefault => " (from PGSSLMODE)".into(),
            TlsOrigin::HostDefault => " (crmvault's default for a database host that is not on this machine)".into(),
        };
        format!(
            "the server does not offer TLS, and sslmode={mode}{why} refuses to send the password and data \
             unencrypted; turn on ssl in the server, or add sslmode=disable if nobody can listen on the network \
             in between"
        )
    }

    /// Environment for libpq tools (pg_dump): the password goes in PGPASSWORD, never argv, and
    /// the `sslmode` is the one crmvault's own connections use.
    fn libpq_environment(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        if !hosts.is_empty() {
            env.push(("PGHOST".into(), hosts.join(",")));
        }
        let addresses: Vec<String> = self.config.get_hostaddrs().iter().map(ToString::to_string).collect();
        if !addresses.is_empty() {
            env.push(("PGHOSTADDR".into(), addresses.join(",")));
        }
        let ports: Vec<String> = self.config.get_ports().iter().map(ToString::to_string).collect();
        if !ports.is_empty() {
            env.push(("PGPORT".into(), ports.join(",")));
        }
        if let Some(user) = self.config.get_user() {
            env.push(("PGUSER".into(), user.into()));
        }
        env.push(("PGDATABASE".into(), self.name()));
        if let Some(password) = self.config.get_password() {
            env.push(("PGPASSWORD".into(), String::from_utf8_lossy(password).into_owned()));
        }
        env.push(("PGSSLMODE".into(), self.tls.as_libpq().into()));
        if let Some(root_cert) = &self.root_cert {
            env.push(("PGSSLROOTCERT".into(), root_cert.display().to_string()));
        }
        env.push(("PGAPPNAME".into(), "crmvault-pg_dump".into()));
        env.push(("PGCONNECT_TIMEOUT".into(), "15".into()));
        env
    }
}

/// Where the farthest host of a connection is: it takes every host being local for the
/// relaxed default, since libpq and tokio-postgres move on to the next host when one fails
/// (which an attacker can arrange). A host's `hostaddr` is where the connection goes, so it
/// decides for that host; the name matters then only for the certificate.
fn reach(config: &Config, remote_hosts: &RemoteHosts) -> Reach {
    let (hosts, addresses) = (config.get_hosts(), config.get_hostaddrs());
    let host_reach = |index: usize| -> Reach {
        let named = |name: &str| remote_hosts.contains(name);
        match (hosts.get(index), addresses.get(index)) {
            (Some(Host::Tcp(name)), _) if named(name) => Reach::Remote,
            (_, Some(address)) => tls::tcp_reach(&address.to_string(), remote_hosts),
            (Some(Host::Tcp(name)), None) => tls::tcp_reach(name, remote_hosts),
            (Some(Host::Unix(directory)), None) => tls::socket_reach(directory, remote_hosts),
            (None, None) => Reach::Remote,
        }
    };
    let count = hosts.len().max(addresses.len());
    if (0..count).all(|index| host_reach(index) == Reach::Local) { Reach::Local } else { Reach::Remote }
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (`standard_conforming_strings`, on since PostgreSQL 9.1).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A table whose data is backed up.
#[derive(Debug, Clone)]
pub struct SourceTable {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Columns to copy (not generated), in order.
    pub columns: Vec<String>,
    /// Primary key columns, if any (stable row order).
    pub primary_key: Vec<String>,
    /// On-disk size, to schedule big tables first.
    pub size: i64,
}

impl SourceTable {
    /// `schema.table`, quoted.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The `COPY … TO STDOUT` that reads it in primary-key order.
    pub fn copy_out_sql(&self) -> String {
        if self.columns.is_empty() {
            return format!("COPY {} TO STDOUT", self.qualified());
        }
        let columns: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        let order = if self.primary_key.is_empty() {
            String::new()
        } else {
            let keys: Vec<String> = self.primary_key.iter().map(|c| quote_ident(c)).collect();
            format!(" ORDER BY {}", keys.join(", "))
        };
        format!("COPY (SELECT {} FROM ONLY {}{order}) TO STDOUT", columns.join(", "), self.qualified())
    }
}

/// How the values a restore loads are compressed where PostgreSQL TOASTs them (values over
/// ~2 KiB), in columns whose schema names no method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToastCompression {
    /// lz4 where the server has it (PostgreSQL 14+ built with lz4, as Debian's and the PGDG
    /// packages are), the server's default elsewhere. pglz, PostgreSQL's default, spends its
    /// time even on values it cannot shrink: loading the scale-1 attachments (1-8 KiB bytea)
    /// took 3.0-3.4 s with pglz and 2.3 s with lz4, the rest of the tables the same.
    #[default]
    Lz4,
    /// The server's `default_toast_compression`, as `pg_restore` leaves it.
    ServerDefault,
}

/// Sets the session's `default_toast_compression` for `choice`; whether lz4 is now in use.
pub async fn set_toast_compression(client: &Client, choice: ToastCompression) -> Result<bool> {
    if choice == ToastCompression::ServerDefault {
        return Ok(false);
    }
    let rows = client
        .query(
            "SELECT pg_catalog.set_config('default_toast_compression', 'lz4', false) FROM pg_catalog.pg_settings \
             WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)",
            &[],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// What a restore session sets `maintenance_work_mem` to at least, unless told otherwise.
///
/// Index and constraint builds sort in it; PostgreSQL's default, 64 MB, made the scale-1
/// audit_log's two indexes (1.2 M entries) sort on disk. `restore --parallel` at scale 1,
/// four alternating pairs: 11.5-13.4 s with 256 MB against 11.5-15.4 s.
pub const RESTORE_MAINTENANCE_WORK_MEM: &str = "256MB";

/// Raises the session's `maintenance_work_mem` to `size` (PostgreSQL's units: `256MB`, `1GB`)
/// when it is lower; never lowers it. A size PostgreSQL does not read is an error.
pub async fn raise_maintenance_work_mem(client: &Client, size: &str) -> Result<()> {
    client
        .query(
            "SELECT pg_catalog.set_config('maintenance_work_mem', $1, false) FROM pg_catalog.pg_settings \
             WHERE name = 'maintenance_work_mem' AND setting::bigint * 1024 < pg_catalog.pg_size_bytes($1)",
            &[&size],
        )
        .await
        .map_err(|e| {
            Error::Invalid(format!("--maintenance-work-mem {size}: {}", crate::error::postgres_message(&e)))
        })?;
    Ok(())
}

/// Reads every large object's contents as a COPY stream of (oid, bytea).
pub const LARGE_OBJECTS_COPY_OUT: &str =
    "COPY (SELECT oid, pg_catalog.lo_get(oid) FROM pg_catalog.pg_largeobject_metadata ORDER BY oid) TO STDOUT";

/// Loads large objects' contents (their metadata was created by pre-data) from that stream.
pub const LARGE_OBJECTS_STAGE: &str =
    "CREATE TEMPORARY TABLE crmvault_large_objects (loid oid, data bytea) ON COMMIT DROP";
/// The COPY into the staging table.
pub const LARGE_OBJECTS_COPY_IN: &str = "COPY pg_temp.crmvault_large_objects (loid, data) FROM STDIN";
/// Writes the staged contents into the large objects.
pub const LARGE_OBJECTS_WRITE: &str = "SELECT count(pg_catalog.lo_put(loid, 0, data)) FROM pg_temp.crmvault_large_objects; DROP TABLE pg_temp.crmvault_large_objects";

/// The `COPY … FROM STDIN` that loads a table's stream.
pub fn copy_in_sql(schema: &str, name: &str, columns: &[String], freeze: bool) -> String {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let freeze = if freeze { " WITH (FREEZE)" } else { "" };
    if columns.is_empty() {
        return format!("COPY {table} FROM STDIN{freeze}");
    }
    let columns: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    format!("COPY {table} ({}) FROM STDIN{freeze}", columns.join(", "))
}

const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

const NOT_FROM_EXTENSION: &str = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

/// The snapshot-holding connection of a backup.
pub struct SnapshotSession {
    /// The connection; its transaction must stay open until every reader has attached.
    pub client: Client,
    /// The exported snapshot name.
    pub snapshot: String,
    /// When the transaction started (database clock).
    pub time: chrono::DateTime<chrono::Utc>,
    /// The server's version string and number.
    pub server_version: (String, i32),
}

impl SnapshotSession {
    /// Opens the transaction and exports its snapshot.
    pub async fn begin(database: &Database) -> Result<SnapshotSession> {
        let client = database.connect().await?;
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
        let row = client
            .query_one("SELECT pg_export_snapshot(), now(), current_setting('server_version'), current_setting('server_version_num')::int", &[])
            .await?;
        Ok(SnapshotSession { snapshot: row.get(0), time: row.get(1), server_version: (row.get(2), row.get(3)), client })
    }

    /// Every user table with data (leaf tables, not from extensions), biggest first.
    pub async fn tables(&self) -> Result<Vec<SourceTable>> {
        let sql = format!(
            "SELECT n.nspname, c.relname, \
               coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{{}}'), \
               coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i \
                  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                  WHERE i.indrelid = c.oid AND i.indisprimary), '{{}}'), \
               pg_relation_size(c.oid) + coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {USER_SCHEMAS} AND {NOT_FROM_EXTENSION} \
             ORDER BY 5 DESC, 1, 2"
        );
        let rows = self.client.query(&sql, &[]).await?;
        Ok(rows
            .iter()
            .map(|row| SourceTable {
                schema: row.get(0),
                name: row.get(1),
                columns: row.get(2),
                primary_key: row.get(3),
                size: row.get(4),
            })
            .collect())
    }

    /// Current values of every user sequence.
    pub async fn sequences(&self) -> Result<Vec<crate::repo::SequenceState>> {
        let sql = format!(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'S' AND {USER_SCHEMAS} AND {NOT_FROM_EXTENSION} ORDER BY 1, 2"
        );
        let mut states = Vec::new();
        for row in self.client.query(&sql, &[]).await? {
            let (schema, name): (String, String) = (row.get(0), row.get(1));
            let value = self
                .client
                .query_one(
                    &format!("SELECT last_value, is_called FROM {}.{}", quote_ident(&schema), quote_ident(&name)),
                    &[],
                )
                .await?;
            states.push(crate::repo::SequenceState { schema, name, last_value: value.get(0), is_called: value.get(1) });
        }
        Ok(states)
    }

    /// Foreign keys between user tables: (referencing `schema.table`, referenced `schema.table`).
    pub async fn foreign_keys(&self) -> Result<Vec<(String, String)>> {
        let sql = "SELECT DISTINCT cn.nspname || '.' || c.relname, fn.nspname || '.' || f.relname \
                   FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                   JOIN pg_class f ON f.oid = k.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace \
                   WHERE k.contype = 'f' AND k.conrelid <> k.confrelid ORDER BY 1, 2";
        Ok(self.client.query(sql, &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Materialized views that hold data (to refresh after a restore).
    pub async fn populated_materialized_views(&self) -> Result<Vec<(String, String)>> {
        let sql = format!(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'm' AND c.relispopulated AND {USER_SCHEMAS} AND {NOT_FROM_EXTENSION} ORDER BY c.oid"
        );
        Ok(self.client.query(&sql, &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Opens a reader connection on the exported snapshot.
pub async fn attach_to_snapshot(database: &Database, snapshot: &str) -> Result<Client> {
    let client = database.connect().await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await?;
    Ok(client)
}

/// Which part of the schema pg_dump writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Types, tables, functions: everything data needs to load.
    PreData,
    /// Indexes, constraints, triggers: built after the data.
    PostData,
}

/// Finds a pg_dump at least as new as the server.
pub fn find_pg_dump(explicit: Option<&Path>, server_major: i32) -> Result<PathBuf> {
    if let Some(path) = explicit {
        let major = pg_dump_major(path)?;
        if major < server_major {
            return Err(Error::PgDump(format!(
                "{} is pg_dump {major}, older than the server ({server_major}); install postgresql-client-{server_major}",
                path.display()
            )));
        }
        return Ok(path.to_path_buf());
    }
    let mut candidates: Vec<PathBuf> = vec![PathBuf::from("pg_dump")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("bin/pg_dump"));
        }
    }
    let mut best: Option<(i32, PathBuf)> = None;
    for candidate in candidates {
        if let Ok(major) = pg_dump_major(&candidate) {
            if major >= server_major && best.as_ref().is_none_or(|(m, _)| major < *m) {
                best = Some((major, candidate));
            }
        }
    }
    best.map(|(_, path)| path).ok_or_else(|| {
        Error::PgDump(format!(
            "no pg_dump of version {server_major} or newer found (crmvault uses it to read the schema); install postgresql-client-{server_major} or pass --pg-dump PATH"
        ))
    })
}

fn pg_dump_major(path: &Path) -> Result<i32> {
    let output = std::process::Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| Error::PgDump(format!("cannot run {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .find_map(|word| word.split('.').next().and_then(|major| major.parse::<i32>().ok()))
        .ok_or_else(|| Error::PgDump(format!("{} did not report a version", path.display())))
}

/// Runs pg_dump for one schema section inside the exported snapshot.
///
/// The schema is always the whole database's: `--table` and `--exclude-table` choose which
/// tables' *data* is stored, as pg_dump's `--exclude-table-data` does, so a restore never
/// misses a type, schema or function a kept table needs. Pre-data includes large objects'
/// metadata (owner, comment, grants); their contents are stored like a table.
pub async fn dump_schema(pg_dump: &Path, database: &Database, snapshot: &str, section: Section) -> Result<Vec<u8>> {
    let mut command = tokio::process::Command::new(pg_dump);
    match section {
        Section::PreData => command.arg("--section=pre-data").arg("--blobs"),
        Section::PostData => command.arg("--section=post-data"),
    };
    command
        .arg(format!("--snapshot={snapshot}"))
        .arg("--no-password")
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| k == "PATH" || k == "LANG" || k == "LC_ALL" || k == "HOME"))
        .envs(database.libpq_environment())
        .kill_on_drop(true);
    let output = command.output().await.map_err(|e| Error::PgDump(format!("cannot run {}: {e}", pg_dump.display())))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        return Err(Error::PgDump(format!("pg_dump failed ({}): {first}", output.status)));
    }
    Ok(output.stdout)
}

/// Turns pg_dump's plain output into SQL the server runs: psql's `\restrict` lines are dropped.
pub fn executable_sql(dump: &[u8]) -> Result<String> {
    let text = std::str::from_utf8(dump).map_err(|_| Error::Invalid("schema dump is not UTF-8".into()))?;
    let mut sql = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        let meta = trimmed
            .strip_prefix("\\restrict ")
            .or_else(|| trimmed.strip_prefix("\\unrestrict "))
            .is_some_and(|key| !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !meta {
            sql.push_str(line);
        }
    }
    Ok(sql)
}

/// Describes what a database already holds, or `None` when it is empty.
pub async fn describe_contents(client: &Client) -> Result<Option<String>> {
    let sql = format!(
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMAS}), \
                (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMAS}), \
                (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {USER_SCHEMAS} \
                   AND (t.typtype IN ('e', 'd', 'r', 'm') OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c')))), \
                (SELECT count(*) FROM pg_namespace n WHERE {USER_SCHEMAS} AND n.nspname <> 'public'), \
                (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata)"
    );
    let row = client.query_one(&sql, &[]).await?;
    let (relations, functions, types, schemas, large_objects): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    if relations + functions + types + schemas + large_objects == 0 {
        return Ok(None);
    }
    if holds_incomplete_restore(client).await? {
        return Ok(Some(format!(
            "an interrupted --parallel restore left it incomplete: schema {INCOMPLETE_RESTORE_SCHEMA}"
        )));
    }
    Ok(Some(format!(
        "{relations} relations, {functions} functions, {types} types, {schemas} schemas, {large_objects} large objects"
    )))
}

/// The schema a parallel restore creates in its first transaction and drops in its last: while it
/// exists, the database holds a restore that has not finished.
pub const INCOMPLETE_RESTORE_SCHEMA: &str = "crmvault_incomplete_restore";

/// Whether an unfinished parallel restore's marker schema is present.
pub async fn holds_incomplete_restore(client: &Client) -> Result<bool> {
    let row = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&INCOMPLETE_RESTORE_SCHEMA])
        .await?;
    Ok(row.get(0))
}

/// Drops every user schema, large object, publication and event trigger (what pg_dump dumps of a
/// database besides its schemas; subscriptions and foreign-data wrappers of one's own are left)
/// and recreates an empty `public` (restore --clean), inside the caller's transaction.
pub async fn clean_database(client: &Client) -> Result<()> {
    client.batch_execute("SELECT count(pg_catalog.lo_unlink(oid)) FROM pg_catalog.pg_largeobject_metadata").await?;
    reset_global_default_privileges(client).await?;
    for (catalog, column, kind) in
        [("pg_publication", "pubname", "PUBLICATION"), ("pg_event_trigger", "evtname", "EVENT TRIGGER")]
    {
        for row in client.query(&format!("SELECT {column}::text FROM pg_catalog.{catalog} ORDER BY 1"), &[]).await? {
            let name: String = row.get(0);
            client.batch_execute(&format!("DROP {kind} {}", quote_ident(&name))).await?;
        }
    }
    let sql = format!("SELECT n.nspname FROM pg_namespace n WHERE {USER_SCHEMAS} ORDER BY 1");
    for row in client.query(&sql, &[]).await? {
        let schema: String = row.get(0);
        client.batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema))).await?;
    }
    client
        .batch_execute(
            "CREATE SCHEMA public AUTHORIZATION pg_database_owner; \
             GRANT USAGE ON SCHEMA public TO PUBLIC; \
             COMMENT ON SCHEMA public IS 'standard public schema'",
        )
        .await?;
    Ok(())
}

/// Puts database-wide `ALTER DEFAULT PRIVILEGES` back to PostgreSQL's built-in defaults
/// (per-schema ones go with their schema): otherwise a restore's new objects would get the
/// privileges the replaced database had set up, not the snapshot's. PostgreSQL removes an entry
/// once it equals the default: revoke everything it grants, grant the defaults again.
async fn reset_global_default_privileges(client: &Client) -> Result<()> {
    let rows = client
        .query(
            "SELECT pg_catalog.pg_get_userbyid(d.defaclrole)::text, d.defaclobjtype::text, \
                    coalesce(array_agg(DISTINCT a.grantee) FILTER (WHERE a.grantee IS NOT NULL), '{}') \
             FROM pg_catalog.pg_default_acl d LEFT JOIN LATERAL pg_catalog.aclexplode(d.defaclacl) a ON true \
             WHERE d.defaclnamespace = 0 GROUP BY 1, 2",
            &[],
        )
        .await?;
    for row in rows {
        let (role, kind, grantees): (String, String, Vec<u32>) = (row.get(0), row.get(1), row.get(2));
        let (objects, public_default) = match kind.as_str() {
            "r" => ("TABLES", None),
            "S" => ("SEQUENCES", None),
            "f" => ("FUNCTIONS", Some("EXECUTE")),
            "T" => ("TYPES", Some("USAGE")),
            "n" => ("SCHEMAS", None),
            _ => continue,
        };
        let role = quote_ident(&role);
        for grantee in grantees {
            let grantee = if grantee == 0 {
                "PUBLIC".to_string()
            } else {
                let name: String =
                    client.query_one("SELECT pg_catalog.pg_get_userbyid($1)::text", &[&grantee]).await?.get(0);
                quote_ident(&name)
            };
            client
                .batch_execute(&format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {role} REVOKE ALL ON {objects} FROM {grantee}"
                ))
                .await?;
        }
        client
            .batch_execute(&format!("ALTER DEFAULT PRIVILEGES FOR ROLE {role} GRANT ALL ON {objects} TO {role}"))
            .await?;
        if let Some(privilege) = public_default {
            client
                .batch_execute(&format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {role} GRANT {privilege} ON {objects} TO PUBLIC"
                ))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_keep_their_spaces_and_pluses() {
        let database = Database::parse(
            "postgres://u@db.example/crm?sslmode=require&options=-c%20work_mem%3D1GB&application_name=a%2Bb",
        )
        .unwrap();
        assert_eq!(database.config.get_options(), Some("-c work_mem=1GB"));
        assert_eq!(database.config.get_application_name(), Some("a+b"));
        assert_eq!(database.tls, TlsMode::Require);
    }

    #[test]
    fn passwords_never_show() {
        for text in [
            "postgres://u:s3cret@db/crm",
            "host=db password = 's3cret x' user=u",
            "host=db password='s3cret' sslmode=nonsense",
            "host=db password='s3cret",
        ] {
            let shown = match Database::parse(text) {
                Ok(database) => format!("{database} {database:?}"),
                Err(error) => format!("{error} {error:?}"),
            };
            assert!(!shown.contains("s3cret"), "{text} → {shown}");
        }
    }

    fn mode_of(text: &str, defaults: &ConnectionDefaults) -> (TlsMode, TlsOrigin) {
        Database::parse_with(text, defaults).unwrap().tls_mode()
    }

    #[test]
    fn the_default_sslmode_is_require_unless_every_host_is_on_this_machine() {
        let none = ConnectionDefaults::default();
        let host_default = |mode| (mode, TlsOrigin::HostDefault);
        for local in [
            "postgres://u@127.0.0.1/crm",
            "postgres://u@localhost:5433/crm",
            "postgres://u@[::1]/crm",
            "postgres://u@localhost,127.0.0.2:5433/crm",
            "postgres:///crm",
            "postgres:///crm?host=%2Fvar%2Frun%2Fpostgresql",
            "host=/var/run/postgresql dbname=crm",
            "host=db.example hostaddr=127.0.0.1 dbname=crm",
            "dbname=crm",
        ] {
            assert_eq!(mode_of(local, &none), host_default(TlsMode::Prefer), "{local}");
        }
        for remote in [
            "postgres://u@db.example/crm",
            "postgres://u@10.0.0.5/crm",
            "postgres://u@localhost,db.example/crm",
            "postgres://u@127.0.0.1:5432,10.0.0.5:5432/crm",
            "host=localhost hostaddr=10.0.0.5 dbname=crm",
            "host = db.example dbname=crm",
            "host=localhost,db.example port=5432,5433",
        ] {
            assert_eq!(mode_of(remote, &none), host_default(TlsMode::Require), "{remote}");
        }
    }

    #[test]
    fn an_explicit_sslmode_wins_then_the_callers_then_the_hosts() {
        let none = ConnectionDefaults::default();
        let explicit = |mode| (mode, TlsOrigin::ConnectionString);
        assert_eq!(mode_of("postgres://u@db.example/crm?sslmode=disable", &none), explicit(TlsMode::Disable));
        assert_eq!(mode_of("postgres://u@db.example/crm?sslmode=prefer", &none), explicit(TlsMode::Prefer));
        assert_eq!(mode_of("host=db.example sslmode = 'disable'", &none), explicit(TlsMode::Disable));
        assert_eq!(mode_of("host=localhost sslmode=verify-full", &none), explicit(TlsMode::VerifyFull));
        let pgsslmode = ConnectionDefaults { tls: Some(TlsMode::VerifyFull), ..ConnectionDefaults::default() };
        assert_eq!(mode_of("postgres://u@localhost/crm", &pgsslmode), (TlsMode::VerifyFull, TlsOrigin::CallerDefault));
        assert_eq!(mode_of("postgres://u@db/crm?sslmode=disable", &pgsslmode), explicit(TlsMode::Disable));
        let listed = ConnectionDefaults {
            remote_hosts: RemoteHosts::from_list("127.0.0.2,/tmp/forwarded"),
            ..ConnectionDefaults::default()
        };
        assert_eq!(mode_of("postgres://u@127.0.0.2/crm", &listed), (TlsMode::Require, TlsOrigin::HostDefault));
        assert_eq!(mode_of("postgres://u@127.0.0.1/crm", &listed), (TlsMode::Prefer, TlsOrigin::HostDefault));
        assert_eq!(mode_of("host=/tmp/forwarded", &listed), (TlsMode::Require, TlsOrigin::HostDefault));
        assert_eq!(mode_of("host=x hostaddr=127.0.0.2", &listed).0, TlsMode::Require);
    }

    #[test]
    fn pg_dump_gets_the_mode_and_hosts_crmvault_uses() {
        let environment = |text: &str| Database::parse(text).unwrap().libpq_environment();
        let remote = environment("postgres://u:pw@db.example:5433/crm");
        assert!(remote.contains(&("PGSSLMODE".into(), "require".into())), "{remote:?}");
        assert!(remote.contains(&("PGHOST".into(), "db.example".into())), "{remote:?}");
        let local = environment("host=localhost dbname=crm");
        assert!(local.contains(&("PGSSLMODE".into(), "prefer".into())), "{local:?}");
        let pinned = environment("host=db.example hostaddr=10.0.0.5 sslmode=verify-full sslrootcert=/ca.pem");
        for expected in [("PGHOSTADDR", "10.0.0.5"), ("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", "/ca.pem")] {
            assert!(pinned.contains(&(expected.0.into(), expected.1.into())), "{pinned:?}");
        }
    }

    #[test]
    fn restrict_lines_are_dropped_and_nothing_else() {
        let dump = b"\\restrict AbC123\nCREATE TABLE t (x text DEFAULT '\\restrict x');\n\\unrestrict AbC123\n";
        assert_eq!(executable_sql(dump).unwrap(), "CREATE TABLE t (x text DEFAULT '\\restrict x');\n");
    }

    #[test]
    fn copy_statements_quote_everything() {
        let table = SourceTable {
            schema: "crm".into(),
            name: "Odd\"Name".into(),
            columns: vec!["id".into(), "e mail".into()],
            primary_key: vec!["id".into()],
            size: 0,
        };
        assert_eq!(
            table.copy_out_sql(),
            "COPY (SELECT \"id\", \"e mail\" FROM ONLY \"crm\".\"Odd\"\"Name\" ORDER BY \"id\") TO STDOUT"
        );
    }
}
