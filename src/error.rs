//! The library's one error type: each variant is a sentence an operator can act on.

use std::path::PathBuf;

/// The first `named` of `lines`, then a line `more` makes of how many are left out: a list of
/// warnings kept readable when storage or a snapshot holds many of a kind.
pub fn a_few(lines: Vec<String>, named: usize, more: impl FnOnce(usize) -> String) -> Vec<String> {
    let left = lines.len().saturating_sub(named);
    let mut said: Vec<String> = lines.into_iter().take(named).collect();
    if left > 0 {
        said.push(more(left));
    }
    said
}

/// `text` with control characters (a newline, a carriage return, an escape sequence in a
/// table's name, which the database chose) written as escapes, so that one line stays one
/// line and a terminal or a cron mail shows what is there. A backslash is doubled: a name
/// holding `\n` itself does not pass for one holding a newline.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(
            |c| {
                if c.is_control() || invisible(c) || c == '\\' { c.escape_default().to_string() } else { c.to_string() }
            },
        )
        .collect()
}

/// Format characters that change how a line reads without being seen: bidirectional overrides
/// and isolates (U+202E turns the rest of a line around), zero-width ones, the BOM.
fn invisible(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

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
    /// `latest` without a database named, in a repository holding several databases' snapshots.
    #[error("`latest` is ambiguous: the snapshots are of {} databases ({})", databases.len(), databases.join(", "))]
    AmbiguousLatest {
        /// The databases whose snapshots match, sorted.
        databases: Vec<String>,
    },
    /// Snapshots were to be chosen by what their encrypted manifests say, without a key to read them.
    #[error(
        "choosing snapshots by database, host or tag reads their encrypted manifests: it needs the writer key or an \
         admin identity"
    )]
    FilterNeedsKey,
    /// The snapshot's objects name roles the target server lacks: the restore would fail on
    /// the first, after loading for a while.
    #[error("the snapshot's objects name roles that the server of {database} lacks: {}", roles.join(", "))]
    MissingRoles {
        /// Redacted database URL.
        database: String,
        /// Every missing role, with what needs it.
        roles: Vec<String>,
    },
    /// The target database already holds objects.
    #[error("database {database} is not empty ({detail}); restore into an empty database, or replace its contents")]
    TargetNotEmpty {
        /// Redacted database URL.
        database: String,
        /// What was found.
        detail: String,
    },
    /// A restore on several connections was pointed at a database that holds objects: it
    /// cannot replace them all or nothing (a restore in one transaction can).
    #[error(
        "database {database} is not empty ({detail}); a parallel restore loads only into an empty database \
         (one in a single transaction replaces contents, all or nothing)"
    )]
    NotEmptyForParallel {
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
    /// Stopped by Ctrl-C or SIGTERM while it could undo its work ([`crate::interrupt`]); the
    /// command's context says what was undone.
    #[error("interrupted")]
    Interrupted,
    /// A parallel restore failed and could not remove what it had committed.
    #[error(
        "{cause}; removing the partial restore failed too ({undo}): the database stays marked incomplete (schema crmvault_incomplete_restore) until a restore replaces its contents"
    )]
    RestoreLeftIncomplete {
        /// Why the restore stopped.
        cause: Box<Error>,
        /// Why the cleanup failed.
        undo: Box<Error>,
    },
    /// A command was given no repository location.
    #[error("no repository location given")]
    NoTarget,
    /// Two locations given lead to one storage (a folder and a link to it, two spellings of
    /// one bucket): its copies would lock each other out.
    #[error("--repo {first} and --repo {second} are the same storage ({storage}): each target is given once")]
    SameTargetTwice {
        /// The first location, as given.
        first: String,
        /// The second location, as given.
        second: String,
        /// Where both lead.
        storage: String,
    },
    /// Every target failed (could not be opened, or failed during the command); with one
    /// target, its failure alone.
    #[error("{}", every_target_failed(.0))]
    EveryTargetFailed(
        /// (location, why), per target.
        Vec<(String, String)>,
    ),
    /// Two targets given as copies of one repository are at different generations of its keys.
    #[error(
        "{first} is at generation {first_generation} of its keys and {other} at generation {other_generation} (a \
         rekey that did not reach every target): an admin finishes it by running rekey with every target"
    )]
    GenerationsDiffer {
        /// One target.
        first: String,
        /// Its generation.
        first_generation: u32,
        /// Another.
        other: String,
        /// Its generation.
        other_generation: u32,
    },
    /// Two copies of one repository whose chains of configs part: one was forked in storage.
    #[error(
        "the copies of repository {id} disagree: {other} is at generation {other_generation} (config {other_config}), \
         which the chain of configs at {newest} (generation {newest_generation}) does not lead through: one of them \
         was forked or replaced in storage (a second successor signed with a retired admin's key, a config edited \
         there); nothing was read or written and no pin changed"
    )]
    CopiesDisagree {
        /// The repository id.
        id: String,
        /// The copy at the newest generation.
        newest: String,
        /// Its generation.
        newest_generation: u32,
        /// A copy off its chain.
        other: String,
        /// Its generation.
        other_generation: u32,
        /// Its config hash, shortened.
        other_config: String,
    },
    /// Two targets given as copies of one repository are not.
    #[error("{first} and {other} are not copies of one repository; {detail}")]
    NotCopies {
        /// One target.
        first: String,
        /// Another.
        other: String,
        /// What differs, or what to do.
        detail: String,
    },
    /// What was asked needs an admin identity: the writer key cannot read it.
    #[error("{what} needs an admin identity; the writer key cannot read it")]
    AdminOnly {
        /// What was asked.
        what: String,
    },
    /// A repository is being made without an admin recipient.
    #[error("a repository needs at least one admin recipient (an admin's age1… public key)")]
    NoRecipient,
    /// A repository location that cannot be used (syntax, or settings to reach it).
    #[error("{0}")]
    BadLocation(String),
    /// A pin kept in the config folder is damaged or names another repository.
    #[error("{}: {detail}", .path.display())]
    BadPin {
        /// The pin's file.
        path: PathBuf,
        /// What is wrong, and what to do.
        detail: String,
    },
    /// The database server could not be reached or refused the connection.
    #[error("cannot connect to {database}: {detail}")]
    Connection {
        /// Redacted connection string.
        database: String,
        /// Why (the server's or the network's words).
        detail: String,
    },
    /// TLS to the database could not be set up (certificates, roots).
    #[error("{0}")]
    Tls(String),
    /// A lock the operation needs is held by another session.
    #[error("waited {seconds} s for a lock on {what}: another session is using the database")]
    LockTimeout {
        /// What was to be locked.
        what: String,
        /// How long it waited.
        seconds: u64,
    },
    /// Another process holds a lock this command needs on a repository (docs/ARCHITECTURE.md,
    /// *Locks*).
    #[error("{location} is locked by {holder}")]
    Locked {
        /// The target.
        location: String,
        /// Who holds it: command, host, pid, mode and since (or "someone" without a key).
        holder: String,
    },
    /// Prune met a snapshot whose header does not read: what that snapshot needs is unknown,
    /// so nothing on its target may be deleted.
    #[error(
        "{location}: {reason}; prune cannot tell what that snapshot needs, so it deleted nothing there: check the \
         repository with `crmvault verify`, and if {key} is junk, remove it by hand"
    )]
    UnreadableSnapshot {
        /// The target.
        location: String,
        /// The snapshot object's key.
        key: String,
        /// Why its header did not read.
        reason: String,
    },
    /// The storage refused to delete an object (no delete permission, Object Lock retention,
    /// an immutable file or a read-only mount), as opposed to failing to answer.
    #[error("{location}: the storage refused to delete {object}: {}", storage_message(.source))]
    DeleteRefused {
        /// The target.
        location: String,
        /// The object key.
        object: String,
        /// What object_store said.
        source: object_store::Error,
    },
    /// The repository changed under a running operation (a rekey finished meanwhile).
    #[error("{location}: the repository was rekeyed (generation {generation}) while this {operation} ran; {outcome}")]
    ChangedMeanwhile {
        /// The target.
        location: String,
        /// Its generation now.
        generation: u32,
        /// The operation.
        operation: &'static str,
        /// What that means for it and what to do.
        outcome: &'static str,
    },
    /// Table patterns that match no table of the database (a typo would otherwise give empty
    /// backups every night).
    #[error("{} no table of {database}", match_phrase(.patterns))]
    NoTableMatches {
        /// The patterns that matched nothing.
        patterns: Vec<String>,
        /// Redacted connection string.
        database: String,
    },
    /// A backup would store no table's data.
    #[error("no table of {database} is selected ({of} in the database); a snapshot would hold no data")]
    NoTables {
        /// Redacted connection string.
        database: String,
        /// Tables the database has.
        of: usize,
    },
    /// The lock this command held was taken over while it ran (it stalled past its lease, or
    /// the lock was removed by hand): it stopped before writing what it was about to.
    #[error(
        "{location}: this command's lock ({key}) was taken over while it ran (it stalled past its lease, or the \
         lock was removed); it stopped before committing anything: run it again"
    )]
    LockLost {
        /// The target.
        location: String,
        /// The lock object.
        key: String,
    },
    /// A retention policy that cannot be applied as given.
    #[error("retention policy refused: {0}")]
    Retention(String),
    /// A bug: something the code relies on did not hold.
    #[error("internal error: {0}")]
    Internal(String),
    /// No pg_dump as new as the server was found.
    #[error(
        "no pg_dump of version {version} or newer found (crmvault uses it to read the schema); install \
         postgresql-client-{version}"
    )]
    NoPgDump {
        /// The server's major version.
        version: i32,
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
    #[error("{location}: {}", storage_message(.source))]
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
        return match (unresolved_in_sql_function(error), db.where_().and_then(sql_function_context)) {
            // pg_dump's scripts run under an empty search_path, so a function written for the
            // application's path fails while a restore builds an index or checks a constraint
            // that calls it.
            (Some(function), _) => format!(
                "{}, in SQL function {function}: it names objects without their schema, and \
                 restores run pg_dump's script under an empty search_path (pg_restore's fail the \
                 same way): restore with --search-path naming the schemas it needs, and give it \
                 a search_path in the source database (ALTER FUNCTION … SET search_path = …; \
                 docs/OPERATIONS.md)",
                db.message()
            ),
            (None, Some(function)) => format!("{}, in SQL function {function}", db.message()),
            (None, None) => db.message().to_string(),
        };
    }
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message = format!("{message}: {inner}");
        source = inner.source();
    }
    message
}

/// A name an SQL function's own body did not find under the session's search_path (a
/// function, relation, type or column that does not exist, or an ambiguous call, raised in
/// that body itself, not in code it called): the function, quoted.
pub(crate) fn unresolved_in_sql_function(error: &tokio_postgres::Error) -> Option<&str> {
    const UNRESOLVED: [&str; 5] = ["42883", "42P01", "42704", "42703", "42725"];
    let db = error.as_db_error()?;
    UNRESOLVED.contains(&db.code().code()).then_some(())?;
    db.where_().and_then(sql_function_context)
}

/// The SQL function an error's context names first, where it was raised (`SQL function "f"
/// during inlining`, `SQL function "f" statement 1`): `"f"`. Only the name: a context can
/// quote the data. An error raised in PL/pgSQL code names that first, and is not one.
fn sql_function_context(context: &str) -> Option<&str> {
    let line = context.lines().next()?.strip_prefix("SQL function ")?;
    let end = line.strip_prefix('"')?.find('"')?;
    Some(&line[..end + 2])
}

/// What object_store says, in fewer words: its local file system's errors start with
/// "Generic LocalFileSystem error: Unable to …: IO error for operation on …", and a refused
/// permission gets the advice it needs.
impl Error {
    /// The same error for another reader of a shared outcome (a pack several readers waited
    /// for): what readers tell apart (missing, corrupt, wrong key) keeps its kind, the rest its
    /// sentence.
    #[must_use]
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Missing { object, location } => {
                Error::Missing { object: object.clone(), location: location.clone() }
            }
            Error::Corrupt { object, detail } => Error::Corrupt { object: object.clone(), detail: detail.clone() },
            Error::WrongIdentity { path } => Error::WrongIdentity { path: path.clone() },
            Error::BadKey(text) => Error::BadKey(text.clone()),
            Error::AdminOnly { what } => Error::AdminOnly { what: what.clone() },
            other => Error::Invalid(other.to_string()),
        }
    }
}

/// Said after an error a repository's folder gave because its permissions keep this user out.
pub(crate) const NEEDS_ACCESS: &str =
    "; the user running crmvault needs access to the repository's folder (read, and write to back up)";

fn storage_message(error: &object_store::Error) -> String {
    let mut text = error.to_string();
    for (prefix, instead) in [
        ("Generic LocalFileSystem error: Unable to walk dir: IO error for operation on ", "cannot list "),
        ("Generic LocalFileSystem error: Unable to open file ", "cannot open "),
        ("Generic LocalFileSystem error: Unable to access metadata for ", "cannot read "),
        ("Generic LocalFileSystem error: ", ""),
        ("Generic S3 error: ", ""),
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = format!("{instead}{rest}");
            break;
        }
    }
    if text.contains("error sending request") {
        text.push_str(": the storage service did not answer (its address, or the network)");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            text.push_str(NEEDS_ACCESS);
            break;
        }
        source = cause.source();
    }
    text
}

fn match_phrase(patterns: &[String]) -> String {
    let quoted: Vec<String> = patterns.iter().map(|p| format!("{p:?}")).collect();
    match quoted.as_slice() {
        [one] => format!("table pattern {one} matches"),
        _ => format!("table patterns {} match", quoted.join(", ")),
    }
}

fn every_target_failed(failures: &[(String, String)]) -> String {
    // A storage error names its target already: said once, not "repo: repo: cannot list …".
    let reasons: Vec<String> = failures
        .iter()
        .map(|(location, why)| match why.strip_prefix(location.as_str()).and_then(|rest| rest.strip_prefix(": ")) {
            Some(_) => why.clone(),
            None => format!("{location}: {why}"),
        })
        .collect();
    match reasons.as_slice() {
        [only] => only.clone(),
        _ => format!("every target failed: {}", reasons.join("; ")),
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_sql_function_of_a_context_is_its_innermost_one_and_only_its_name() {
        let inlining = "SQL function \"f_unaccent\" during inlining";
        assert_eq!(super::sql_function_context(inlining), Some("\"f_unaccent\""));
        let nested = "SQL function \"earth\" statement 1\nSQL function \"ll_to_earth\" during inlining";
        assert_eq!(super::sql_function_context(nested), Some("\"earth\""));
        let raised = "PL/pgSQL function public.cond() line 4 at RAISE\nSQL function \"wrap\" during inlining";
        assert_eq!(super::sql_function_context(raised), None);
        assert_eq!(super::sql_function_context("COPY t, line 1, column c: \"secret\""), None);
        assert_eq!(super::sql_function_context("SQL function "), None);
        assert_eq!(super::sql_function_context("SQL function \"unclosed"), None);
    }

    #[test]
    fn printable_text_tells_an_escape_from_the_characters_that_spell_it() {
        assert_eq!(super::printable("same\nline"), "same\\nline");
        assert_eq!(super::printable("same\\nline"), "same\\\\nline");
        assert_eq!(super::printable("caf\u{e9} \u{202e}x"), "caf\u{e9} \\u{202e}x");
    }

    #[test]
    fn a_target_that_failed_is_named_once() {
        let storage = ("/srv/a".to_string(), "/srv/a: cannot list /srv/a/index/x: loop".to_string());
        let other = ("/srv/b".to_string(), "no space left on device".to_string());
        assert_eq!(
            super::every_target_failed(std::slice::from_ref(&storage)),
            "/srv/a: cannot list /srv/a/index/x: loop"
        );
        assert_eq!(
            super::every_target_failed(&[storage, other]),
            "every target failed: /srv/a: cannot list /srv/a/index/x: loop; /srv/b: no space left on device"
        );
        // A location that only starts the same way is still said.
        let longer = ("/srv/a".to_string(), "/srv/ab: gone".to_string());
        assert_eq!(super::every_target_failed(&[longer]), "/srv/a: /srv/ab: gone");
    }
}
