//! PostgreSQL, both sides: connecting (connection strings read as libpq does, TLS), the
//! backup's exported snapshot and catalog queries ([`session`]), pg_dump ([`dump`]), COPY out,
//! and the restore's loading API ([`load`]). No other module writes SQL.
//!
//! Backup opens one `REPEATABLE READ READ ONLY` transaction, exports its snapshot, and every
//! other connection (table readers, pg_dump) imports it, so all tables come from one instant.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{Error, Result};

pub mod conninfo;
pub mod database;
pub mod dump;
pub mod load;
pub mod part;
pub mod pgpass;
pub mod proof;
pub mod script;
pub mod session;
pub mod tls;

/// Text of the shared catalogs (role names, database settings and comments), read even where it
/// is not UTF-8: any database of the server writes them in its own encoding, and a SQL_ASCII
/// one writes whatever bytes it is given, which a `String` refuses (a panic where `get` read
/// it). Bytes that are not UTF-8 are replaced: such a name or value cannot be written into a
/// snapshot's JSON as it is anyway.
pub(crate) struct CatalogText(pub String);

impl<'a> tokio_postgres::types::FromSql<'a> for CatalogText {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(CatalogText(String::from_utf8_lossy(raw).into_owned()))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        use tokio_postgres::types::Type;
        [Type::TEXT, Type::NAME, Type::VARCHAR].contains(ty)
    }
}

/// Column `at` of `row`, as [`CatalogText`].
pub(crate) fn catalog_text(row: &tokio_postgres::Row, at: usize) -> String {
    row.get::<_, CatalogText>(at).0
}

/// Column `at` of `row`, NULL or as [`CatalogText`].
pub(crate) fn catalog_text_opt(row: &tokio_postgres::Row, at: usize) -> Option<String> {
    row.get::<_, Option<CatalogText>>(at).map(|text| text.0)
}

pub use conninfo::{redact, scrub};
pub use dump::{Section, dump_schema, executable_sql, find_pg_dump};
pub use load::{
    INCOMPLETE_RESTORE_SCHEMA, LoadSession, OnConflict, RESTORE_MAINTENANCE_WORK_MEM, Server, ToastCompression,
    create_database,
};
pub use session::{LARGE_OBJECTS_COPY_OUT, SnapshotSession, SourceTable, attach_to_snapshot};
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
        // Nothing of it shown (it failed at its first word): the detail says where.
        let named = if redacted.starts_with("(rest not shown") { "the database".to_string() } else { redacted.clone() };
        let invalid = |detail: &dyn std::fmt::Display| {
            // The detail may quote a keyword, which may be a URL libpq did not take for one.
            let detail = scrub(&detail.to_string());
            Error::Invalid(format!(
                "{named} is not a valid PostgreSQL connection string: {detail} (give postgres://user@host:port/database, \
                 or key=value pairs such as host=db dbname=crm)"
            ))
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

    /// Whether the connection string (or [`Database::set_password_if_missing`]) gave a password.
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// The password libpq's password file (`contents`, see [`pgpass`]) gives for this
    /// connection's first host; `None` without a user name or a matching line.
    pub fn password_from_pgpass(&self, contents: &str) -> Option<String> {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(name)) => name.as_str(),
            Some(Host::Unix(_)) | None => "localhost",
        };
        let key = pgpass::PasswordFileKey {
            host,
            port: self.config.get_ports().first().copied().unwrap_or(5432),
            database: &self.name(),
            user: self.config.get_user()?,
        };
        pgpass::lookup(contents, &key)
    }

    /// The database name (or the user name, PostgreSQL's default).
    pub fn name(&self) -> String {
        self.config.get_dbname().or(self.config.get_user()).unwrap_or("postgres").to_string()
    }

    /// The same server, user and settings, another database: `name` on the server of this one.
    #[must_use]
    pub fn on_database(&self, name: &str) -> Database {
        let mut other = self.clone();
        other.config.dbname(name);
        other.redacted = format!("database {} on the server of {}", quote_ident(name), self.redacted);
        other
    }

    /// Whether the connection string names its database (else it is the user's name).
    pub fn names_database(&self) -> bool {
        self.config.get_dbname().is_some()
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
        let fail = |e: tokio_postgres::Error| Error::Connection {
            database: self.redacted.clone(),
            detail: self.connect_failure(&e),
        };
        // Names resolve in the catalog first whatever the database or role set (`ALTER
        // DATABASE … SET search_path = evil, pg_catalog` would otherwise put a table owner's
        // `evil.pg_class` under the catalog queries of an admin who restores or drills as a
        // superuser), and literals are quoted as [`quote_literal`] expects. The session acts as
        // the role it connects as (`--role` sets another): a `role` setting of the database,
        // which its owner may give it, made a superuser's backup read as a role that row
        // security hides rows from. Sent with the startup packet: they take effect before any
        // statement, and over the database's and role's settings, after the connection string's.
        let mut config = self.config.clone();
        let ours = "-c search_path=pg_catalog,pg_temp -c standard_conforming_strings=on -c role=none";
        let options = match self.config.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
            _ => ours.to_string(),
        };
        config.options(&options);
        let client = if self.tls == TlsMode::Disable {
            let (client, connection) = config.connect(NoTls).await.map_err(fail)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!("database connection ended: {error}");
                }
            });
            client
        } else {
            let connector = tls::connector(self.tls, self.root_cert.as_deref(), self.reach)?;
            let (client, connection) = config.connect(connector).await.map_err(fail)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!("database connection ended: {error}");
                }
            });
            client
        };
        Ok(client)
    }

    /// Asks the server to cancel the statement the connection of `token` (one
    /// [`Self::connect`] made) is running, if any: a cancel request on a connection of its
    /// own, as libpq's.
    pub async fn cancel(&self, token: tokio_postgres::CancelToken) -> Result<()> {
        let sent = if self.tls == TlsMode::Disable {
            token.cancel_query(NoTls).await
        } else {
            token.cancel_query(tls::connector(self.tls, self.root_cert.as_deref(), self.reach)?).await
        };
        sent.map_err(|e| Error::Connection {
            database: self.redacted.clone(),
            detail: crate::error::postgres_message(&e),
        })
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

/// `schema.name`, both quoted.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// Quotes an SQL string literal (`standard_conforming_strings`, on since PostgreSQL 9.1).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The condition that the session can act as a superuser: its role is one or a member of one (it
/// can `SET ROLE` to it, and holds what it owns), or its login is (after `SET ROLE`, code the
/// session runs can `RESET ROLE` back to the login). Before PostgreSQL 16 a role with
/// `CREATEROLE` counts as one: it may grant any role but a superuser, itself included, so code
/// it runs can take `pg_execute_server_program` and run programs as the server.
macro_rules! acts_as_superuser {
    () => {
        "EXISTS (SELECT 1 FROM pg_catalog.pg_roles s WHERE (s.rolsuper \
             OR (s.rolcreaterole AND pg_catalog.current_setting('server_version_num')::int < 160000)) \
           AND (pg_catalog.pg_has_role(current_user, s.oid, 'MEMBER') \
                OR pg_catalog.pg_has_role(session_user, s.oid, 'MEMBER')))"
    };
}
use acts_as_superuser;

/// Whether the session can act as a superuser ([`acts_as_superuser`]).
const ACTS_AS_SUPERUSER: &str = concat!("SELECT ", acts_as_superuser!());

/// The condition on `n.nspname` that keeps only user schemas.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";

/// The condition on a relation `c` that leaves out extensions' members.
const NOT_FROM_EXTENSION: &str = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

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
}
