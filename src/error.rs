//! The library's one error type: each variant is a sentence an operator can act on.

use std::path::PathBuf;

/// Everything the library can fail with. Messages are one line and never contain a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The location names no crmvault repository.
    #[error("no crmvault repository at {location} (run `crmvault init` first)")]
    NotARepository {
        /// Where we looked.
        location: String,
    },
    /// `init` was pointed at a repository or a folder holding other files.
    #[error("{location} already holds {what}; refusing to initialise over it")]
    AlreadyExists {
        /// Where.
        location: String,
        /// What is there.
        what: String,
    },
    /// The repository was written by a format this build does not understand.
    #[error("{what} uses repository format {found}, this crmvault reads formats {oldest} to {supported}; {advice}")]
    UnsupportedFormat {
        /// Which object.
        what: String,
        /// The version found.
        found: u32,
        /// The oldest version this build reads.
        oldest: u32,
        /// The version this build reads.
        supported: u32,
        /// What to do about it.
        advice: &'static str,
    },
    /// An object's bytes do not match what refers to them.
    #[error("{object} is corrupt or was tampered with: {detail}")]
    Corrupt {
        /// The object key (or chunk id).
        object: String,
        /// What did not match.
        detail: String,
    },
    /// An object a snapshot needs is not in storage.
    #[error("{object} is missing from {location}")]
    Missing {
        /// The object key.
        object: String,
        /// The target.
        location: String,
    },
    /// None of the identities given opens this repository.
    #[error("the identity in {path} is not a recipient of this repository (wrong key?)")]
    WrongIdentity {
        /// The identity file.
        path: PathBuf,
    },
    /// The backup host does not hold the writer key of this repository.
    #[error(
        "no writer key for repository {repository_id} at {path}: run backups on the host that ran `init`, or set CRMVAULT_CONFIG_DIR"
    )]
    NoWriterKey {
        /// Repository id.
        repository_id: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A key or recipient could not be parsed.
    #[error("{0}")]
    BadKey(String),
    /// A snapshot selector matched nothing (or too much).
    #[error("{0}")]
    SnapshotNotFound(String),
    /// The target database already holds objects.
    #[error(
        "database {database} is not empty ({detail}); restore into an empty database or pass --clean to replace its contents"
    )]
    TargetNotEmpty {
        /// Redacted database URL.
        database: String,
        /// What was found.
        detail: String,
    },
    /// Restored data does not match the manifest.
    #[error("restore check failed for {table}: {detail}")]
    RestoreMismatch {
        /// The table.
        table: String,
        /// What differed.
        detail: String,
    },
    /// A parallel restore failed and could not remove what it had committed.
    #[error(
        "{cause}; removing the partial restore failed too ({undo}): the database stays marked incomplete (schema crmvault_incomplete_restore) until `restore --clean` replaces it"
    )]
    RestoreLeftIncomplete {
        /// Why the restore stopped.
        cause: Box<Error>,
        /// Why the cleanup failed.
        undo: Box<Error>,
    },
    /// pg_dump is missing, too old or failed.
    #[error("{0}")]
    PgDump(String),
    /// Bad user input that is not a usage error.
    #[error("{0}")]
    Invalid(String),
    /// A PostgreSQL error.
    #[error("PostgreSQL: {}", postgres_message(.0))]
    Postgres(tokio_postgres::Error),
    /// A storage error.
    #[error("{location}: {source}")]
    Storage {
        /// The target.
        location: String,
        /// What object_store said.
        source: object_store::Error,
    },
    /// A local I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Convenience alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Shorthand for a corrupt object.
    pub fn corrupt(object: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt { object: object.into(), detail: detail.into() }
    }
}

// Not `#[from]`: the message above already carries the server's words, and a source would
// make the CLI repeat them.
impl From<tokio_postgres::Error> for Error {
    fn from(error: tokio_postgres::Error) -> Self {
        Error::Postgres(error)
    }
}

/// tokio-postgres' `Display` for server errors is just "db error": the server's own words
/// instead, or the whole chain of causes for client-side errors (TLS, network).
pub(crate) fn postgres_message(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return db.message().to_string();
    }
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message = format!("{message}: {inner}");
        source = inner.source();
    }
    message
}

/// What to tell someone whose repository has another format version than `supported`.
pub(crate) fn format_advice(found: u32, supported: u32) -> &'static str {
    if found > supported {
        "upgrade crmvault"
    } else {
        "format 1 was a development format before the first release, which no crmvault release reads: \
         back the database up into a new repository"
    }
}
