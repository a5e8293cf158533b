//! Command-line interface: argument parsing, environment, output and exit codes.
//!
//! Exit codes: 0 ok, 1 error, 2 usage, 3 partial (some targets failed) or problems found (verify).

/// `println!` that a closed stdout (`crmvault snapshots | head`) does not turn into a panic:
/// what is left to print is dropped and the command ends as it would have.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::say(format_args!($($arg)*))
    };
}

mod audit;
mod connection;
mod drill;
mod generate;
mod lock;
mod metrics;
mod output;
mod profile;
mod secrets;
mod storage;
mod trust;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crmvault::backup;
use crmvault::commands::{copy, init, snapshots, verify};
use crmvault::lock::{LockMode, Removal};
use crmvault::postgres::Database;
use crmvault::prune;
use crmvault::rekey;
use crmvault::repo::{Keyring, Repository};
use crmvault::restore;

/// Encrypted, deduplicated, verifiable backups of PostgreSQL CRM databases.
#[derive(Debug, Parser)]
#[command(name = "crmvault", version, long_version = generate::long_version(), about, propagate_version = true)]
struct Cli {
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    /// More log output on stderr (-v info, -vv debug). CRMVAULT_LOG overrides.
    #[arg(short, long, global = true, help_heading = "Global options", action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars (as restic's --quiet); results, warnings and errors are still said.
    #[arg(short, long, global = true, help_heading = "Global options")]
    quiet: bool,
    /// Allow plain http:// to S3 endpoints that are not on this machine.
    #[arg(long, global = true, help_heading = "Global options")]
    allow_http: bool,
    /// The repository fingerprint the admins keep (`init` prints it): admin commands refuse a
    /// repository that does not match it, and remember it on this machine.
    #[arg(long, global = true, help_heading = "Global options", env = "CRMVAULT_FINGERPRINT", hide_env_values = true, value_name = "FP", value_parser = parse_fingerprint)]
    fingerprint: Option<crmvault::trust::Fingerprint>,
    /// Log lines on stderr as text, or as one JSON object each (time, level, message, fields)
    /// for a log collector; errors too.
    #[arg(long, global = true, help_heading = "Global options", env = "CRMVAULT_LOG_FORMAT", hide_env_values = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Write what the run did to FILE as a Prometheus textfile (node_exporter's textfile
    /// collector), replaced atomically: last run and last success time, duration, exit code;
    /// backup, verify, forget and prune add bytes, rows, targets and alarms.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CRMVAULT_METRICS_FILE",
        hide_env_values = true,
        value_name = "FILE"
    )]
    metrics_file: Option<PathBuf>,
    /// Config file [default: $CRMVAULT_CONFIG_DIR/crmvault.toml if it exists, else
    /// /etc/crmvault/crmvault.toml].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CRMVAULT_CONFIG",
        hide_env_values = true,
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Take the settings no flag or environment variable gives from [profile.NAME] of the
    /// config file.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CRMVAULT_PROFILE",
        hide_env_values = true,
        value_name = "NAME"
    )]
    profile: Option<String>,
    /// How long to wait for another crmvault that holds a repository's lock (e.g. 90s, 30m,
    /// 2h); 0 fails at once, naming the holder.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        default_value = "0",
        value_name = "DURATION",
        value_parser = lock::parse_duration
    )]
    lock_wait: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

/// `restore --toast-compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ToastCompression {
    Lz4,
    ServerDefault,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an admin identity file (0600) and print its public recipient.
    Keygen {
        /// Where to write the identity; never overwritten.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Create a repository on every --repo, readable only by the given recipients.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// An admin's public key (age1…); repeat for several admins.
        #[arg(long = "recipient", value_name = "AGE1…")]
        recipients: Vec<String>,
        /// A file of recipients, one per line.
        #[arg(long, value_name = "FILE")]
        recipients_file: Option<PathBuf>,
        /// Make the new repositories copies of this one (same keys), for `copy`.
        #[arg(long, value_name = "REPO", conflicts_with_all = ["recipients", "recipients_file"])]
        copy_from: Option<String>,
        /// Average chunk size in bytes (advanced; smaller dedups scattered updates better).
        #[arg(long, default_value_t = 8 * 1024, hide_short_help = true)]
        chunk_size: usize,
        /// zstd level for chunks (advanced).
        #[arg(long, default_value_t = 3, hide_short_help = true)]
        compression_level: i32,
    },
    /// Back up a database to every --repo (needs only the writer key made by init).
    Backup {
        /// Source database URL; a password is better given in PGPASSWORD. Or `db` in --profile.
        #[arg(long, env = "CRMVAULT_DB", hide_env_values = true)]
        db: Option<String>,
        #[command(flatten)]
        repo: RepoArgs,
        /// Tables read in parallel (each on its own connection, same snapshot) [default: 2].
        #[arg(long, short, value_parser = profile::parse_jobs)]
        jobs: Option<usize>,
        /// Only tables matching this `schema.table` glob (repeatable).
        #[arg(long = "table", value_name = "PATTERN")]
        tables: Vec<String>,
        /// Leave out tables matching this `schema.table` glob (repeatable).
        #[arg(long = "exclude-table", value_name = "PATTERN")]
        exclude_tables: Vec<String>,
        /// Store a snapshot even when no table is selected (the schema alone). Without it, a
        /// backup that would hold no table is refused: a --table typo must not give empty
        /// backups every night.
        #[arg(long)]
        allow_empty: bool,
        /// A label stored in the snapshot, to choose it by later (`--tag` of snapshots,
        /// restore, verify); repeatable.
        #[arg(long = "tag", value_name = "TAG", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        tags: Vec<String>,
        /// The host name recorded in the snapshot (default: this machine's), as restic's
        /// `backup --host`: keeps one name when the backup moves to another machine.
        #[arg(long = "host", value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        host: Option<String>,
        /// Record this time instead of now, e.g. when importing old dumps; snapshots sort by
        /// it (and forget's --keep-* rules bucket by it), so one in the future is `latest` until
        /// then (said in a warning). RFC 3339, like 2026-01-31T01:00:00Z.
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        time: Option<chrono::DateTime<chrono::Utc>>,
        /// pg_dump binary to use for the schema (default: the newest suitable one found).
        #[arg(long, env = "CRMVAULT_PG_DUMP", hide_env_values = true)]
        pg_dump: Option<PathBuf>,
        /// The data-loss alarm: a table that lost more than this share of its rows since the
        /// previous snapshot of the database (or vanished, or was emptied) flags the snapshot,
        /// which is stored all the same, and the backup exits 4 [default: 10].
        #[arg(long, value_name = "PERCENT")]
        alarm_threshold: Option<f64>,
        /// Another threshold for tables matching a `schema.table` glob, like `crm.sessions=100`
        /// (100: never); the first pattern that matches decides (repeatable).
        #[arg(long = "alarm-table", value_name = "PATTERN=PERCENT")]
        alarm_tables: Vec<String>,
        /// No data-loss alarm: tables are not compared with the previous snapshot.
        #[arg(long, conflicts_with_all = ["alarm_threshold", "alarm_tables"])]
        no_alarm: bool,
        /// Chunk bytes stored again per backup at most, in percent of the last snapshot's
        /// bytes: the chunks it takes from packs the last snapshot of the database used for
        /// less than half, sparsest packs first, so that restores read fewer packs after months
        /// of nights (docs/OPERATIONS.md, *Prune*; 1 is the value measured). 0: none.
        #[arg(long, value_name = "PERCENT", default_value_t = crmvault::sparse_packs::DEFAULT_BUDGET_PERCENT,
              value_parser = parse_percent)]
        rewrite_budget: f64,
        /// New chunks per index file and per generation of the sent set (for tuning and tests).
        #[arg(long, hide = true, default_value_t = backup::INDEX_CHUNKS)]
        index_chunks: usize,
        /// Index entries kept in memory per target before the index goes to a temporary file
        /// (for tests).
        #[arg(long, hide = true, default_value_t = crmvault::repo::INDEX_IN_MEMORY)]
        index_in_memory: usize,
    },
    /// List snapshots (tables and row counts where the writer key or --identity is at hand).
    Snapshots {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file.
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// List what a snapshot holds: schemas, tables, rows and sizes (writer key or --identity).
    Ls {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file (the writer key on this machine serves otherwise).
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
        /// `latest` or a snapshot id (a unique prefix of at least 4 digits).
        #[arg(default_value = "latest")]
        snapshot: String,
    },
    /// Write one table of a snapshot to stdout, proven (needs --identity).
    ///
    /// Only that table's chunks are read. The digest and row count are checked when the table
    /// ends: if they fail (or a chunk does), the command exits 1 and says that what it wrote
    /// must not be trusted.
    Dump {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file (or `identity` in --profile).
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        /// The table: `schema.table` (a name alone when only one schema has it).
        #[arg(long, value_name = "SCHEMA.TABLE")]
        table: String,
        /// copy: PostgreSQL's COPY text (`COPY … FROM STDIN` reads it); csv: with a header,
        /// NULL as an empty unquoted field; json: one object per line, NULL as null.
        #[arg(long, value_enum, default_value_t = DumpFormat::Csv)]
        format: DumpFormat,
        /// Only rows whose column has this value (its text, as COPY writes it; NULL never
        /// matches). Repeat: every condition must hold.
        #[arg(long = "where", value_name = "COLUMN=VALUE")]
        conditions: Vec<restore::dump::Condition>,
        /// Only the row whose primary key (one column) is this value.
        #[arg(long, value_name = "VALUE")]
        key: Option<String>,
        /// Chunks fetched and decoded in parallel [default: 2].
        #[arg(long, short, value_parser = profile::parse_jobs)]
        jobs: Option<usize>,
        #[command(flatten)]
        filter: FilterArgs,
        /// `latest` or a snapshot id (as for restore).
        #[arg(default_value = "latest")]
        snapshot: String,
    },
    /// Show what changed between two snapshots: rows added, removed and changed per table.
    ///
    /// Rows are matched by primary key (tables without one: by whole row, so a change is a row
    /// removed and one added). Chunks both snapshots hold are not read: the cost follows what
    /// changed. Needs --identity.
    Diff {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file (or `identity` in --profile).
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        /// Compare only tables matching this pattern (`schema.table`, `*` wildcards; a name
        /// alone matches it in every schema). Repeatable.
        #[arg(long = "table", value_name = "PATTERN")]
        tables: Vec<String>,
        /// Leave out tables matching this pattern. Repeatable.
        #[arg(long = "exclude-table", value_name = "PATTERN")]
        exclude_tables: Vec<String>,
        /// List the keys of the rows added, removed and changed.
        #[arg(long)]
        keys: bool,
        /// Chunks fetched and decoded in parallel [default: 2].
        #[arg(long, short, value_parser = profile::parse_jobs)]
        jobs: Option<usize>,
        #[command(flatten)]
        filter: FilterArgs,
        /// The older snapshot: an id (a unique prefix of at least 4 digits) or `latest`.
        from: String,
        /// The newer snapshot.
        #[arg(default_value = "latest")]
        to: String,
    },
    /// Restore a snapshot into an empty database, all or nothing.
    ///
    /// Each chunk is read from the first --repo that has it intact.
    Restore {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file (or `identity` in --profile).
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        /// Target database URL (or `restore_db` in --profile).
        #[arg(long, env = "CRMVAULT_RESTORE_DB", hide_env_values = true)]
        db: Option<String>,
        /// Chunks fetched and decoded in parallel [default: 2].
        #[arg(long, short, value_parser = profile::parse_jobs)]
        jobs: Option<usize>,
        /// Replace whatever the target database holds (dropped inside the restore transaction).
        #[arg(long)]
        clean: bool,
        /// Create the target database (--db names it; it must not exist), with the source's
        /// encoding and collation. It is loaded in parallel under a name of its own and takes
        /// its name only when complete; a failed restore drops it.
        #[arg(long, conflicts_with = "clean")]
        create: bool,
        /// Load tables and build indexes on --jobs connections at once instead of in one
        /// transaction: a quarter to a third less time at scale 1 with 2 jobs on 2 cores
        /// (BENCHMARKS.md), more with more cores. Needs an empty database. Any error removes
        /// everything the restore created; a restore that is killed leaves the database marked
        /// incomplete (schema crmvault_incomplete_restore) until `restore --clean` replaces it.
        #[arg(long)]
        parallel: bool,
        /// How values over ~2 KiB that PostgreSQL compresses (TOAST) are stored, in columns
        /// whose schema names no method: lz4 (where the server has it; faster to load and
        /// read) or the server's default_toast_compression (pglz unless configured), as
        /// pg_restore leaves it. The data is the same either way.
        #[arg(long, value_enum, default_value_t = ToastCompression::Lz4)]
        toast_compression: ToastCompression,
        /// maintenance_work_mem of the restore's sessions, at least (index and constraint
        /// builds sort in it; the server's setting is kept when larger). PostgreSQL's units.
        #[arg(long, default_value = crmvault::postgres::RESTORE_MAINTENANCE_WORK_MEM)]
        maintenance_work_mem: String,
        /// Index entries kept in memory per target before the index goes to a temporary file
        /// (for tests).
        #[arg(long, hide = true, default_value_t = crmvault::repo::INDEX_IN_MEMORY)]
        index_in_memory: usize,
        /// Restore only the tables matching this pattern (`schema.table`, `*` wildcards; a
        /// name alone matches it in every schema), with what they need: their sequences,
        /// indexes, constraints, triggers, comments and grants; a partitioned table's
        /// partitions and a partition's parent. Foreign keys to tables left out are left out
        /// (and said). Repeatable.
        #[arg(long = "table", value_name = "PATTERN")]
        tables: Vec<String>,
        /// Leave out tables matching this pattern. Repeatable.
        #[arg(long = "exclude-table", value_name = "PATTERN")]
        exclude_tables: Vec<String>,
        /// Restore schema FROM as a new schema TO (names as the catalog has them), every
        /// object in it and every reference to it renamed. Into a database with live data,
        /// only objects of renamed schemas are made, beside the live ones. Repeatable.
        #[arg(long = "schema-map", value_name = "FROM=TO", value_parser = parse_schema_map)]
        schema_map: Vec<(String, String)>,
        /// Restore even when the snapshot makes code of its own that could run while it loads
        /// (functions other than trigger functions, operators, operator classes, triggers made
        /// before the rows, languages, extensions not known to keep to the database) and the
        /// restore can act as a superuser: it would run with every right on the server; and run
        /// statements pg_dump does not write (`COPY`, `CREATE ROLE`, …) as the script has them.
        /// Without it such a restore is refused before it starts; connect as a login without
        /// superuser instead. Or `trust_snapshot_code = true` in --profile.
        #[arg(long)]
        trust_snapshot_code: bool,
        /// Run the snapshot's schema script under this search_path (schemas, comma-separated:
        /// `public`) instead of pg_dump's empty one: for a snapshot whose functions name
        /// objects without their schema and fail while the restore builds an index that calls
        /// them (backup warns of each such table; docs/OPERATIONS.md); with --data-only or
        /// --rows into live tables, the loading sessions' path. Not with --schema-map.
        #[arg(long, value_name = "SCHEMAS", conflicts_with = "schema_map")]
        search_path: Option<crmvault::postgres::script::SearchPath>,
        /// Load rows only, into the target's existing tables (with --table, some of them; with
        /// --schema-map, under other schemas), in one transaction: a row that breaks a
        /// constraint fails the whole restore and nothing is loaded. Sequences are not set.
        #[arg(long, conflicts_with_all = ["create", "parallel", "clean"])]
        data_only: bool,
        /// Restore only the rows of a table whose column has this value (as text):
        /// `crm.companies:id=42`. Into a database with live data, without --schema-map, they
        /// are inserted into the live tables (see --on-conflict); otherwise their tables are
        /// made (as with --table) holding only them. Repeatable.
        #[arg(long = "rows", value_name = "TABLE:COLUMN=VALUE", conflicts_with_all = ["tables", "exclude_tables", "data_only"])]
        rows: Vec<restore::related::RowsRoot>,
        /// With --rows: also the rows that reference them by foreign keys, recursively (a
        /// company's contacts, deals and their activities), and every row those reference (a
        /// deal's owner).
        #[arg(long, requires = "rows")]
        with_related: bool,
        /// With --rows into live tables: a row whose key is taken fails the restore (fail,
        /// nothing written), is left as it is (skip) or takes the snapshot's values (update).
        #[arg(long, value_enum, default_value_t = OnConflictArg::Fail, requires = "rows")]
        on_conflict: OnConflictArg,
        /// Say what the restore would write, and write nothing: with --rows, how many rows of
        /// which tables; else which tables (with --table, --exclude-table, and their new names
        /// under --schema-map), their rows and bytes, as read from the snapshot.
        #[arg(long, conflicts_with = "create")]
        dry_run: bool,
        #[command(flatten)]
        roles: RoleArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// `latest` (the newest snapshot of the database given with --database, or of the only
        /// database the repository holds) or a snapshot id (a unique prefix of at least 4 digits).
        #[arg(default_value = "latest")]
        snapshot: String,
    },
    /// A restore drill: restore a snapshot into a scratch database and prove it from there.
    ///
    /// The scratch database (--scratch-db) is created for the drill and dropped after it, or,
    /// when it exists and is empty, emptied again; a database that holds anything is never
    /// touched. The restored database is then read back: every table with the backup's COPY
    /// (rows and keyed digest against the snapshot's), every sequence, every foreign key, check
    /// and not-null constraint row by row, and every B-tree index with amcheck where the server
    /// has it. Each phase is timed. Exit 0: passed; 3: failed (the reasons are printed).
    Drill {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file (or `identity` in --profile).
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        /// The scratch database's URL (or `scratch_db` in --profile); its server must let the
        /// user create databases when it does not exist.
        #[arg(long, env = "CRMVAULT_SCRATCH_DB", hide_env_values = true)]
        scratch_db: Option<String>,
        /// Connections and chunks in parallel [default: 2].
        #[arg(long, short, value_parser = profile::parse_jobs)]
        jobs: Option<usize>,
        /// Restore with --parallel (as `restore --parallel` would, for its time).
        #[arg(long)]
        parallel: bool,
        /// As `restore --trust-snapshot-code`: restore even when the snapshot's own code could
        /// run with a superuser's rights, or its script holds statements pg_dump does not write.
        #[arg(long)]
        trust_snapshot_code: bool,
        /// As `restore --search-path`: the snapshot's schema script runs under this search_path.
        #[arg(long, value_name = "SCHEMAS")]
        search_path: Option<crmvault::postgres::script::SearchPath>,
        /// One drill per --repo, each reading only from that target, so that every copy is
        /// proven (the same snapshot on each; `latest` is chosen once across them).
        #[arg(long)]
        from_every_target: bool,
        /// Also write the result as a Markdown report for an auditor to FILE (created 0600).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        #[command(flatten)]
        roles: RoleArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// `latest` or a snapshot id (as for restore).
        #[arg(default_value = "latest")]
        snapshot: String,
    },
    /// Check that every snapshot on every --repo is complete (exit 3 when problems are found).
    #[command(visible_alias = "check")]
    Verify {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file (needed for --read-data and --read-data-subset).
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        /// Decrypt, decompress and re-hash every chunk, and check every table's digest and row
        /// count (needs --identity).
        #[arg(long)]
        read_data: bool,
        /// Prove a share of the packs chunk by chunk: N/M, P% or auto (needs --identity).
        ///
        /// N/M is slice N of M (runs 1/M to M/M read every pack once), P% a random sample (e.g.
        /// 2.5%), auto today's slice out of 30 (UTC: a month of nights reads every pack). Each
        /// pack read must hash to its name, decrypt, and give chunks that re-hash to their ids;
        /// the others are checked in the storage's listing, not downloaded. Tables' digests and
        /// row counts need every chunk: only --read-data checks them.
        #[arg(long, value_name = "SPEC", conflicts_with = "read_data")]
        read_data_subset: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Remove the snapshots a retention policy does not keep.
    ///
    /// A snapshot is kept when any --keep-* rule keeps it (restic's rules and meanings). Days,
    /// ISO weeks, months and years are reckoned in this machine's time zone (TZ). Each
    /// database's snapshots are judged apart; a policy that would remove all of a database's
    /// is refused. Runs with the writer key (the backup host) or --identity, and leaves an
    /// authenticated record, so that `verify` tells a forgotten snapshot from a deleted one.
    /// What the removed snapshots alone used stays stored until `prune`.
    Forget {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file (the writer key on this machine serves otherwise).
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        /// List what would be kept (and by which rule) and removed; change nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// Then delete what no remaining snapshot needs, as `prune` does (with --dry-run: say
        /// what that would free).
        #[arg(long)]
        prune: bool,
        /// Let the policy remove snapshots the data-loss alarm flagged, and the last unflagged
        /// one before each, which are kept otherwise. An admin's decision: needs --identity.
        #[arg(long)]
        forget_flagged: bool,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        keep: KeepArgs,
        /// Instead of a policy: the snapshots to remove, by id (at least 4 hex digits), as
        /// `restic forget ID`. For a snapshot whose packs are lost with no copy to mend them
        /// from, which keeps prune from running (docs/OPERATIONS.md, *Repairing damaged packs*).
        #[arg(value_name = "SNAPSHOT")]
        snapshots: Vec<String>,
    },
    /// List the audit trail: who ran what on the repository, when, and how it ended.
    ///
    /// Every backup, restore, drill, dump, verify, forget, prune, rekey and copy run with a key (the
    /// writer key or an admin's) appends an encrypted, MACed record to each repository it
    /// opened, numbered and naming the one before. Needs the writer key (on the backup host) or
    /// --identity. Exit 3 when a record was removed, forged or does not read (`verify` checks
    /// that too).
    Audit {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file (the writer key on this machine serves otherwise).
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        /// Only records of runs that ended at or after this time (RFC 3339, like 2026-12-01T00:00:00Z).
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Print the repository's fingerprint, as the storage claims it (no key needed).
    ///
    /// Compare it with the one the admins keep.
    Fingerprint {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Change who holds the keys: add or remove admin recipients, rotate the writer key.
    ///
    /// Writes the repository's next generation of keys on every --repo (all copies must be given), so
    /// a removed admin cannot read anything written afterwards, and a retired writer key cannot
    /// write. Interrupted, it is run again with the same arguments.
    Rekey {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file (of an admin who stays; or `identity` in --profile).
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        /// An admin's public key (age1…) to add; repeatable.
        #[arg(long = "add-recipient", value_name = "AGE1…")]
        add_recipients: Vec<String>,
        /// An admin's public key (age1…) to remove; repeatable.
        #[arg(long = "remove-recipient", value_name = "AGE1…")]
        remove_recipients: Vec<String>,
        /// Make a new writer key (a new backup host, or one that may have leaked); the old one
        /// can no longer write. Needs --writer-key-out.
        #[arg(long, requires = "writer_key_out")]
        rotate_writer_key: bool,
        /// Where to write the new writer key (created 0600, never overwritten); move it to the
        /// backup host's config folder as `repos/<repository id>/writer.key`.
        #[arg(long, value_name = "FILE", requires = "rotate_writer_key")]
        writer_key_out: Option<PathBuf>,
        /// Also write every snapshot again so that only the admins there are now can read
        /// anything stored (packs, indexes, snapshots; what it replaced is deleted): a removed
        /// admin then reads nothing at all, an added one reads everything. Takes as long as
        /// reading and writing the whole repository; interrupted, run it again.
        #[arg(long)]
        reencrypt: bool,
    },
    /// Delete the packs, indexes and dictionaries no snapshot needs any more (no key needed).
    ///
    /// What is needed is read from the snapshots' plaintext headers; what forget left, and what
    /// backups that died before their snapshot left, goes. Takes the repository's exclusive
    /// lock: no backup runs meanwhile. Deletes the storage refuses (Object Lock, no delete
    /// permission) are counted and left for a later prune. Each --repo is pruned on its own.
    ///
    /// With --identity (an admin's), it also repacks: packs whose share of bytes no snapshot
    /// uses exceeds --max-unused, and small packs of one dictionary, are written again holding
    /// only what is used, the indexes again without what goes, and every snapshot that lists
    /// them sealed again as a copy with a new id (as `rekey --reencrypt` does). Every copy of
    /// the repository (--repo) must then be given. Interrupted, run it again.
    Prune {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file: also repack (or `identity` in --profile).
        #[arg(long, short, env = "CRMVAULT_IDENTITY", hide_env_values = true)]
        identity: Option<PathBuf>,
        /// With --identity: repack a pack when more than this share of its bytes is used by no
        /// snapshot (`5%` or `5`; default 5%, as restic's; or `max_unused` in --profile).
        #[arg(long, value_name = "PERCENT")]
        max_unused: Option<String>,
        /// Say what would be deleted (counts and bytes) and, with --identity, repacked, and
        /// change nothing; takes a shared lock, so backups may run meanwhile.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy the snapshots one repository has and another lacks (no key needed).
    Copy {
        /// Source repository.
        #[arg(long)]
        from: String,
        /// Destination repository (made with `init --copy-from`, or by the same `init`).
        #[arg(long)]
        to: String,
        /// Only these snapshots (ids or `latest`); all by default.
        snapshots: Vec<String>,
        /// Then write again, from --from, what the snapshots --to holds need there and lack:
        /// objects missing, of the wrong size, or marked damaged by `verify` (each checked
        /// against its name first). Exits 3 when something could not be repaired from --from.
        #[arg(long)]
        repair: bool,
    },
    /// Remove locks left by crmvault processes that are gone (stale ones; all with --remove-all).
    ///
    /// A lock is stale when its process is gone on this host or it was not refreshed within its
    /// lease (10 minutes); commands take stale locks over by themselves.
    Unlock {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file, to show who holds a lock (the writer key shows it too).
        #[arg(long, short)]
        identity: Option<PathBuf>,
        /// Remove live locks too: only when their holder (on another host) is known to be gone.
        #[arg(long)]
        remove_all: bool,
    },
    /// Forget a target retired for good on this machine: its pins no longer count it as a place
    /// of the repository it held.
    ///
    /// Needs no access to it, and deletes nothing there. The backup host follows a new generation
    /// of keys (a rekey) only where every place its pin knows is given and reachable: run this on
    /// it once a target is no longer backed up to, or its first backup after the next rekey
    /// needs that generation's fingerprint. Only the --repo given here, never a profile's.
    RetireTarget {
        /// The target to forget (as given to backup). Repeat for several.
        #[arg(short = 'r', long = "repo", required = true)]
        repos: Vec<String>,
    },
    /// Check the config file (crmvault.toml) or show a profile's settings.
    Config {
        #[command(subcommand)]
        action: profile::ConfigAction,
    },
    /// Print a shell completion script on stdout (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write one man page per command into DIR (packaging/build-deb.sh runs it).
    #[command(hide = true)]
    GenerateMan {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RepoArgs {
    /// Repository: a folder, file:///path or s3://bucket/prefix. Repeat for several targets.
    /// Or `repo` in --profile.
    #[arg(short = 'r', long = "repo", env = "CRMVAULT_REPO", hide_env_values = true)]
    repos: Vec<String>,
}

/// `restore --on-conflict`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnConflictArg {
    Fail,
    Skip,
    Update,
}

/// `dump --format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DumpFormat {
    /// PostgreSQL's COPY text.
    Copy,
    /// CSV with a header line.
    Csv,
    /// JSON lines.
    Json,
}

/// What a restore does about the roles the snapshot's objects name (`restore`, `drill`).
#[derive(Debug, Args)]
struct RoleArgs {
    /// Leave out who owns what (`ALTER … OWNER TO`): everything belongs to the role restoring,
    /// as pg_restore --no-owner.
    #[arg(long)]
    no_owner: bool,
    /// Leave out privileges (`GRANT`, `REVOKE`, default privileges), as pg_restore --no-acl.
    #[arg(long)]
    no_acl: bool,
    /// Create the roles the snapshot's objects name that the server lacks, without login or
    /// password (and memberships between them). Without it, a restore that would fail on a
    /// missing role says so before it starts, naming every one.
    #[arg(long)]
    create_roles: bool,
    /// Load as this role (SET ROLE once connected, as pg_restore --role). The snapshot's
    /// functions that run while rows load (check constraints, defaults, and with --data-only
    /// the live tables' triggers) run with its rights rather than the connecting user's: give
    /// one without superuser that may create the objects (with --no-owner, unless it may own
    /// them as the snapshot says).
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
}

impl RoleArgs {
    fn leave_out(&self) -> crmvault::postgres::script::LeaveOut {
        crmvault::postgres::script::LeaveOut { owners: self.no_owner, privileges: self.no_acl }
    }
}

/// Which snapshots a command looks at, by what their encrypted manifests record (so a key is
/// needed: the writer key on the backup host, or --identity).
#[derive(Debug, Args)]
struct FilterArgs {
    /// Only snapshots of this database (its name, as in the URL backed up).
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
    /// Only snapshots made on this host.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Only snapshots with this tag (backup --tag); repeat to require several.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
}

/// A retention policy, as restic's flags give it (or the profile's keep_* keys).
#[derive(Debug, Args)]
#[command(next_help_heading = "Retention policy")]
#[expect(clippy::struct_field_names, reason = "the fields are the --keep-* flags, named as restic names them")]
struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the N newest hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_hourly: u32,
    /// Keep the newest snapshot of each of the N newest days that have one.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_daily: u32,
    /// Keep the newest snapshot of each of the N newest ISO weeks (Monday to Sunday) that have one.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_weekly: u32,
    /// Keep the newest snapshot of each of the N newest months that have one.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_monthly: u32,
    /// Keep the newest snapshot of each of the N newest years that have one.
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    keep_yearly: u32,
    /// Keep every snapshot taken within this span before the newest one (1y6m, 30d, 2w, 12h).
    #[arg(long, value_name = "SPAN")]
    keep_within: Option<crmvault::retention::Span>,
    /// Keep every snapshot with this tag (backup --tag); repeatable.
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
}

impl KeepArgs {
    fn policy(self) -> crmvault::retention::Policy {
        crmvault::retention::Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
            tags: self.keep_tags,
        }
    }
}

impl FilterArgs {
    fn filter(self) -> crmvault::repo::SnapshotFilter {
        crmvault::repo::SnapshotFilter { database: self.database, hostname: self.host, tags: self.tags }
    }
}

/// Parses `backup --time`: an RFC 3339 time with its offset, kept in UTC.
fn parse_percent(text: &str) -> std::result::Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(percent) if (0.0..=100.0).contains(&percent) => Ok(percent),
        _ => Err(format!("{text:?} is not a percentage from 0 to 100")),
    }
}

fn parse_time(text: &str) -> std::result::Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|time| time.with_timezone(&chrono::Utc))
        .map_err(|_| format!("{text:?} is not an RFC 3339 time (like 2026-01-31T01:00:00Z)"))
}

fn parse_fingerprint(text: &str) -> std::result::Result<crmvault::trust::Fingerprint, String> {
    crmvault::trust::Fingerprint::parse(text).map_err(|e| e.to_string())
}

/// Runs the CLI and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let started = Instant::now();
    // Before clap has parsed anything: a usage error under --json is a JSON document too.
    let json = std::env::args_os().any(|arg| arg == "--json");
    let parsed = Cli::command().try_get_matches().and_then(|matches| {
        let name = matches.subcommand_name().map(String::from);
        Ok((Cli::from_arg_matches(&matches)?, name))
    });
    let (cli, command) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            if !error.use_stderr() {
                error.exit(); // --help, --version
            }
            // An argument it quotes may be a password given unquoted (`--db host=db
            // password=…` is two arguments).
            let rendered = crmvault::postgres::scrub(&error.render().to_string());
            if json {
                // clap's first line ("error: unexpected argument '--bogus' found"), and the
                // command it was meant for, as far as the arguments name one.
                let message = rendered.lines().next().unwrap_or("usage error").trim_start_matches("error: ");
                let command = Cli::command();
                let names: Vec<&str> = command
                    .get_subcommands()
                    .flat_map(|sub| std::iter::once(sub.get_name()).chain(sub.get_all_aliases()))
                    .collect();
                let named = std::env::args().skip(1).find(|arg| names.contains(&arg.as_str()));
                output::failure(named.as_deref(), message, Some("see --help"), 2, started.elapsed());
            }
            eprint!("{rendered}");
            return ExitCode::from(2);
        }
    };
    let json_logs = cli.log_format == LogFormat::Json;
    let json = cli.json_results();
    if json_logs {
        output::log_as_json();
    }
    init_logging(cli.verbose, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("crmvault: error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let metrics_file = cli.metrics_file.clone();
    let metrics = metrics::Metrics::default();
    let audit = audit::AuditLog::default();
    let (code, failure) = match runtime.block_on(until_interrupted(run(cli, &metrics, &audit))) {
        Ok(code) => {
            if json {
                output::partial(command.as_deref(), code);
            }
            (code, None)
        }
        Err(error) => {
            // Whatever an error quotes (an argument, a server's message), no password.
            let message = crmvault::postgres::scrub(&held_before(&error).unwrap_or_else(|| one_line(&error)));
            let (hint, code) = (hint(&error), profile::exit_code(&error));
            output::error(&message, hint, code);
            if json {
                output::failure(command.as_deref(), &message, hint, code, started.elapsed());
            }
            (code, Some(message))
        }
    };
    // After the command, its locks released: the record says how it ended, killed included.
    runtime.block_on(audit.write(command.as_deref(), code, failure.as_deref()));
    if let Some(path) = metrics_file {
        let seconds = started.elapsed().as_secs_f64();
        let name = command.as_deref().unwrap_or("crmvault");
        if let Err(error) = metrics.write(&path, name, code, seconds, chrono::Utc::now()) {
            output::error(&one_line(&error), None, 1);
            return ExitCode::from(1);
        }
    }
    ExitCode::from(code)
}

/// Runs the command until it ends or the process is told to stop (Ctrl-C, SIGTERM): then the
/// command is dropped, which removes the locks it holds (crmvault::lock::RepositoryLock). A
/// restore that has made something it can undo (a `--create` database under its temporary
/// name, a `--parallel` restore's committed tables: [`crmvault::interrupt`]) is asked to stop
/// instead, and given [`UNDO_GRACE`] to undo it; a second signal stops it at once.
async fn until_interrupted<T>(command: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut signalled = async move || -> &'static str {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted",
            () = async {
                match terminate.as_mut() {
                    Some(signal) => { signal.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => "terminated",
        }
    };
    tokio::pin!(command);
    let how = tokio::select! {
        outcome = &mut command => return outcome,
        how = signalled() => how,
    };
    if !crmvault::interrupt::undoing() {
        return Err(anyhow::anyhow!(how));
    }
    crmvault::interrupt::request();
    output::warning(format_args!("{how}: stopping, and undoing what the restore made (a second Ctrl-C stops at once)"));
    tokio::select! {
        outcome = &mut command => outcome,
        _ = signalled() => Err(anyhow::anyhow!("{how} again: what the restore had made may be left")),
        () = tokio::time::sleep(UNDO_GRACE) => Err(anyhow::anyhow!("{how}: undoing took over {}s: what the restore had made may be left", UNDO_GRACE.as_secs())),
    }
}

/// How long a stopped restore may take to undo its work before it is dropped as it stands.
const UNDO_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// The error's line for a place that holds no repository where this machine opened one before
/// ([`crmvault::trust::held_before`]), instead of advice to run `init` there.
fn held_before(error: &anyhow::Error) -> Option<String> {
    let location = error.chain().find_map(|cause| match cause.downcast_ref::<crmvault::Error>()? {
        crmvault::Error::NotARepository { location } => Some(location),
        _ => None,
    })?;
    let held = crmvault::trust::held_before(&config_dir().ok()?, location)?;
    let line = one_line(error).replace(" (run `crmvault init` first)", "");
    Some(format!("{line}: {held}"))
}

/// What the library's error means in this CLI's words: the flag that does what the message
/// says (the library names no flags).
fn hint(error: &anyhow::Error) -> Option<&'static str> {
    use crmvault::Error;
    Some(match error.chain().find_map(|cause| cause.downcast_ref::<Error>())? {
        Error::TargetNotEmpty { .. } => "--clean replaces its contents in one transaction",
        Error::MissingRoles { .. } => {
            "--create-roles creates them (without login), or --no-owner and --no-acl leave out ownership and grants"
        }
        Error::Storage { source, .. } if source.to_string().contains("error sending request") => {
            "check the S3 endpoint (the repository's `endpoint`, AWS_ENDPOINT_URL) and that it answers from here"
        }
        Error::NotEmptyForParallel { .. } => "restore without --parallel, with --clean, to replace its contents",
        Error::RestoreLeftIncomplete { .. } => "restore --clean replaces it",
        Error::AdminOnly { .. } => "give an admin's --identity FILE",
        Error::NoRecipient => "init needs at least one --recipient (or --recipients-file)",
        Error::NoTarget => "give --repo",
        Error::BadPin { .. } => "--fingerprint pins it again",
        Error::GenerationsDiffer { .. } => "crmvault rekey --identity KEY with every --repo brings them to one",
        Error::CopiesDisagree { .. } => {
            "compare each with the fingerprint the admins keep (`crmvault fingerprint --repo ...`) and leave the forged \
             one out"
        }
        Error::LockTimeout { .. } => "restore without --parallel",
        Error::Locked { .. } => "wait, give --lock-wait, or `crmvault unlock` if that process is gone",
        Error::NoPgDump { .. } => "or name one with --pg-dump PATH",
        Error::NoTableMatches { .. } => {
            "check the --table patterns (`schema.table` globs; `psql -c '\\dt *.*'` lists the tables)"
        }
        Error::NoTables { .. } => "check --table/--exclude-table, or give --allow-empty to store the schema alone",
        Error::AmbiguousLatest { .. } => "--database NAME chooses one (or give a snapshot id)",
        Error::FilterNeedsKey => "give an admin's --identity FILE, or run it on the backup host (writer key)",
        Error::NotCopies { .. } => {
            "the targets of one repository are made by one `crmvault init`, or added with `crmvault init --copy-from`"
        }
        _ => return None,
    })
}

/// `error` after "`doing` `database``outcome`", naming the database once: an error that
/// already names it (cannot connect to …, is not empty) is left as it is.
fn in_context(error: crmvault::Error, database: &Database, doing: &str, outcome: &str) -> anyhow::Error {
    let database = database.to_string();
    if error.to_string().contains(&database) {
        anyhow::Error::new(error)
    } else {
        anyhow::Error::new(error).context(format!("{doing} {database}{outcome}"))
    }
}

/// The error chain on one line, without repeating what a wrapper already said.
fn one_line(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
        // The library's messages already say their causes (in fewer words than the causes).
        if cause.downcast_ref::<crmvault::Error>().is_some() {
            break;
        }
    }
    message.replace('\n', " ")
}

impl Cli {
    /// Whether results are one JSON document on stdout: `--json`, or `--log-format json`
    /// (stderr then holds log lines only).
    fn json_results(&self) -> bool {
        self.json || self.log_format == LogFormat::Json
    }
}

/// How log lines look on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line of text each.
    Text,
    /// One JSON object each.
    Json,
}

/// Log lines on stderr: coloured on a terminal, plain text where stderr goes to a file,
/// journald or cron's mail, and under `NO_COLOR` (<https://no-color.org>); or JSON objects.
fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRMVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("crmvault={default},warn")));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(output::LogWriter).with_target(false);
    match format {
        LogFormat::Text => logs.with_ansi(colour).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

/// `CRMVAULT_CONFIG_DIR`, default `~/.config/crmvault`.
fn config_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CRMVAULT_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("neither CRMVAULT_CONFIG_DIR nor HOME is set")?;
    Ok(Path::new(&home).join(".config/crmvault"))
}

/// The best keyring at hand: an admin identity if given, else this host's writer key, else none.
async fn keyring(repository: &Repository, identity: Option<&Path>) -> Result<Option<Keyring>> {
    if let Some(path) = identity {
        return Ok(Some(repository.unlock_as_admin(path).await?.into()));
    }
    match repository.unlock_as_writer(&config_dir()?).await {
        Ok(keyring) => Ok(Some(keyring)),
        Err(crmvault::Error::NoWriterKey { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "unknown".into(), |h| h.trim().to_string())
}

async fn run(cli: Cli, metrics: &metrics::Metrics, audit: &audit::AuditLog) -> Result<u8> {
    let json = cli.json_results();
    let quiet = cli.quiet;
    let lock_wait = cli.lock_wait;
    let settings = profile::Settings::load(cli.config.as_deref(), cli.profile.as_deref(), &config_dir()?);
    let fingerprint = settings.fingerprint(cli.fingerprint);
    let storage = settings.storage(cli.allow_http);
    match cli.command {
        Command::Keygen { output } => {
            let identity = crmvault::crypto::generate_identity();
            crmvault::crypto::write_identity_file(&output, &identity, "crmvault admin identity: keep it offline")
                .map_err(|error| output::keygen_failed(&output, error))?;
            output::keygen(json, &identity.to_public().to_string(), &output);
        }
        Command::Init { repo, recipients, recipients_file, copy_from, chunk_size, compression_level } => {
            let tuning = crmvault::repo::Tuning::with_average_chunk(chunk_size, compression_level)?;
            let locations = settings.repos(repo.repos)?;
            // Opening a folder to create makes it: after every check that may refuse
            // (`Storage::open_new`), so that a refused init leaves nothing behind.
            // A copy's place is pinned only when the source was checked against a pin or a
            // given fingerprint: a machine with neither (no key needed to copy) must not take
            // the fingerprint the storage claims for the admins' (trust on first use).
            let mut vouched = true;
            let report = if let Some(source) = copy_from {
                let mut source = storage.open_set(&[source], false).await?;
                let role = trust::reading_role(source.first(), None, &config_dir()?);
                vouched = fingerprint.is_some()
                    || crmvault::trust::load_pin(&config_dir()?, &source.first().config.id)?.is_some();
                trust::check(source.repositories_mut(), role, fingerprint.as_ref(), &config_dir()?).await?;
                init::run_copy_from(source.first(), storage.open_new(&locations).await?).await?
            } else {
                let mut texts = recipients;
                if let Some(file) = recipients_file {
                    let content =
                        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                    texts.extend(
                        content
                            .lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(String::from),
                    );
                }
                let parsed =
                    texts.iter().map(|t| crmvault::crypto::parse_recipient(t)).collect::<Result<Vec<_>, _>>()?;
                crmvault::repo::check_recipients(&parsed)?;
                init::run(storage.open_new(&locations).await?, &parsed, &config_dir()?, tuning).await?
            };
            if vouched {
                trust::pin_new(&config_dir()?, &report, fingerprint.as_ref())?;
            }
            output::init(json, &report, vouched);
        }
        Command::Backup {
            db,
            repo,
            jobs,
            tables,
            exclude_tables,
            allow_empty,
            tags,
            host,
            time,
            pg_dump,
            alarm_threshold,
            alarm_tables,
            no_alarm,
            rewrite_budget,
            index_chunks,
            index_in_memory,
        } => {
            let started = Instant::now();
            let db = settings.db(db)?;
            let mut targets = storage.open_set(&settings.repos(repo.repos)?, true).await?;
            let config_dir = config_dir()?;
            let mut trusted =
                trust::check_available(&mut targets, trust::Role::Writer, fingerprint.as_ref(), &config_dir).await?;
            let keyring = targets.unlock_as_writer(&config_dir).await?;
            audit.opened(targets.repositories(), &keyring);
            let locks = targets
                .lock_available(LockMode::Append, &lock::options(lock_wait, "backup", keyring.identities().to_vec()))
                .await?;
            let mut options = backup::BackupOptions {
                database: settings.database(&db)?,
                jobs: settings.jobs(jobs)?.max(1),
                include: settings.tables(tables)?,
                exclude: settings.exclude_tables(exclude_tables)?,
                allow_empty: settings.switch(allow_empty, |p| p.allow_empty)?,
                pg_dump: settings.pg_dump(pg_dump)?,
                hostname: host.unwrap_or_else(hostname),
                tags,
                index_chunks,
                index_in_memory,
                newest_known: trusted.newest(),
                settled: trusted.settled(),
                missed: trusted.missed(),
                time,
                alarm: settings.alarm(no_alarm, alarm_threshold, alarm_tables)?,
                rewrite: crmvault::sparse_packs::RewritePlan::default(),
            };
            // What the last backup of this database found sparse, by host and database, and by
            // the tables backed up: a `--table` backup's snapshot takes other chunks from a pack
            // than a full one's, and plans made from one would not hold for the other.
            let mut sparse_key = format!("{}/{}", options.hostname, options.database.name());
            if !options.include.is_empty() || !options.exclude.is_empty() {
                let (tables, exclude) = (options.include.join(","), options.exclude.join(","));
                sparse_key = format!("{sparse_key} tables={tables} exclude={exclude}");
            }
            let sparse = targets.sparse_cache(&config_dir);
            if let Some((cache, accepts)) = &sparse {
                options.rewrite = cache.load(&sparse_key, accepts).plan(rewrite_budget);
            }
            if let Some(time) = time.filter(|time| *time > chrono::Utc::now() + chrono::Duration::minutes(5)) {
                output::warning(format_args!(
                    "--time {time} is in the future: snapshots sort by time, so this one is \
                     `latest` until then"
                ));
            }
            let progress = output::Bar::start(json || quiet);
            let result = backup::run(&targets, &keyring, &options, &locks, progress.clone()).await;
            progress.finish();
            lock::release(locks).await;
            audit.database(&options.database);
            let report = result.map_err(|error| in_context(error, &options.database, "backing up", ""))?;
            if let (Some((cache, accepts)), Some(remembered)) = (&sparse, &report.sparse) {
                cache.save(&sparse_key, remembered.clone(), accepts);
            }
            audit.snapshot(&report.snapshot_id);
            trusted.backed_up(&report).map_err(|error| {
                anyhow::anyhow!(
                    "snapshot {} was stored, but this machine's pin was not updated: {error:#}",
                    report.snapshot_id
                )
            })?;
            metrics.backup(&report);
            output::backup(json, &report, started.elapsed());
            // A snapshot deleted from storage behind the host's back, or a target left with no
            // whole keys object, is a problem to look at, as `verify` would say (the deleted
            // snapshot once only, since the new snapshot is the next one known).
            if report.failed_targets() > 0 || report.damaged_targets() > 0 || report.deleted_snapshot.is_some() {
                return Ok(3);
            }
            if !report.alarms.is_empty() {
                return Ok(4);
            }
        }
        Command::Snapshots { repo, identity, filter } => {
            let filter = filter.filter();
            let repos = settings.repos(repo.repos)?;
            let identity = settings.identity(identity)?;
            let mut targets = storage.open_set(&repos, false).await?;
            let trusted = trust::check_each_copy(
                targets.repositories_mut(),
                identity.as_deref(),
                fingerprint.as_ref(),
                &config_dir()?,
            )
            .await?;
            let mut lists = Vec::new();
            let mut keyrings = Vec::new();
            let known = trusted.first().and_then(trust::Trusted::newest);
            for (repository, mut trusted) in targets.repositories().iter().zip(trusted) {
                let keyring = keyring(repository, identity.as_deref()).await?;
                let list = snapshots::list(repository, keyring.as_ref(), &filter).await?;
                // The newest it proved is remembered, as restore and verify do: a listing is
                // the first step at 3 a.m., and a snapshot deleted after it is then said.
                trusted.advance(list.iter().filter_map(|s| s.proven.as_ref()).max_by_key(|mark| mark.sequence))?;
                lists.push((repository.target.location().to_string(), list));
                keyrings.extend(keyring.map(|keyring| (repository, keyring)));
            }
            let listed = snapshots::merge(lists);
            // Only unfiltered, and with a key to prove forget records.
            if let Some(known) = known.filter(|_| filter.is_empty() && !keyrings.is_empty())
                && snapshots::newest_deleted(&listed, &known, &keyrings).await
            {
                output::warning(format_args!(
                    "snapshots were deleted from storage without being forgotten: the newest this machine knows \
                     of, {} (number {}, {}), is on no target given, and forget records do not account for it and \
                     every snapshot after the newest listed; `restore latest` would restore an older one (`crmvault \
                     verify` names what is missing)",
                    known.id, known.sequence, known.time
                ));
            }
            output::snapshots(json, &listed, &repos);
        }
        Command::Restore {
            repo,
            identity,
            db,
            jobs,
            clean,
            create,
            parallel,
            toast_compression,
            maintenance_work_mem,
            index_in_memory,
            tables,
            exclude_tables,
            schema_map,
            trust_snapshot_code,
            search_path,
            data_only,
            rows,
            with_related,
            on_conflict,
            dry_run,
            roles,
            filter,
            snapshot,
        } => {
            let started = Instant::now();
            let (identity, db) = (settings.require_identity(identity)?, settings.restore_db(db)?);
            // A database --create makes takes its name only when complete: parallel is as safe.
            let parallel = create || settings.parallel(parallel)?;
            let (targets, mut trusted, keyring, locks) = open_as_admin(
                &storage,
                &settings.repos(repo.repos)?,
                &identity,
                fingerprint.as_ref(),
                ("restore", lock_wait, audit),
            )
            .await?;
            let options = restore::RestoreOptions {
                database: settings.database(&db)?,
                snapshot,
                filter: filter.filter(),
                jobs: settings.jobs(jobs)?.max(1),
                existing: if clean { restore::ExistingContents::Replace } else { restore::ExistingContents::Refuse },
                parallel,
                index_in_memory,
                toast_compression: match toast_compression {
                    ToastCompression::Lz4 => crmvault::postgres::ToastCompression::Lz4,
                    ToastCompression::ServerDefault => crmvault::postgres::ToastCompression::ServerDefault,
                },
                maintenance_work_mem,
                newest_known: trusted.newest(),
                create: None,
                leave_out: roles.leave_out(),
                create_roles: roles.create_roles,
                role: roles.role.clone(),
                trust_snapshot_code: settings.trust_snapshot_code(trust_snapshot_code)?,
                search_path,
                part: restore::PartOptions {
                    include: tables,
                    exclude: exclude_tables,
                    schema_map,
                    data_only,
                    rows,
                    with_related,
                    on_conflict: match on_conflict {
                        OnConflictArg::Fail => crmvault::postgres::OnConflict::Fail,
                        OnConflictArg::Skip => crmvault::postgres::OnConflict::Skip,
                        OnConflictArg::Update => crmvault::postgres::OnConflict::Update,
                    },
                    dry_run,
                },
            };
            audit.database(&options.database);
            if dry_run {
                audit.dry_run();
            }
            let progress = output::Bar::start(json || quiet);
            let result = if create {
                restore::run_creating(&targets, &keyring, &options, progress.clone()).await
            } else {
                restore::run(&targets, &keyring, &options, progress.clone()).await
            };
            progress.finish();
            lock::release(locks).await;
            let report = result.map_err(|error| {
                let outcome = match error {
                    crmvault::Error::RestoreLeftIncomplete { .. } => "",
                    // Refused before the database was touched.
                    crmvault::Error::AmbiguousLatest { .. } | crmvault::Error::SnapshotNotFound(_) => {
                        " (left unchanged)"
                    }
                    _ if create => " (not created)",
                    _ if parallel => " (left as it was: what the restore created was removed)",
                    _ => " (left unchanged)",
                };
                in_context(error, &options.database, "restoring into", outcome)
            })?;
            audit.snapshot(&report.snapshot_id);
            trusted.advance(Some(&crmvault::trust::SnapshotMark {
                id: report.snapshot_id.clone(),
                sequence: report.sequence,
                time: report.time,
            }))?;
            output::restore(json, &report, &options.database, started.elapsed());
        }
        Command::Drill {
            repo,
            identity,
            scratch_db,
            jobs,
            parallel,
            trust_snapshot_code,
            search_path,
            from_every_target,
            report,
            roles,
            filter,
            snapshot,
        } => {
            let identity = settings.require_identity(identity)?;
            let scratch = settings.database(&settings.scratch_db(scratch_db)?)?;
            let locations = settings.repos(repo.repos)?;
            let opened =
                open_as_admin(&storage, &locations, &identity, fingerprint.as_ref(), ("drill", lock_wait, audit)).await;
            let (targets, mut trusted, keyring, locks) = match opened {
                Ok(opened) => opened,
                // Refused before it ran (a target set that is not one repository, no pin, a
                // wrong key).
                Err(error) => return Err(drill::not_run(metrics, report.as_deref(), (locations, &scratch), error)),
            };
            let mut options = restore::RestoreOptions {
                database: scratch,
                snapshot,
                filter: filter.filter(),
                jobs: settings.jobs(jobs)?.max(1),
                existing: restore::ExistingContents::Refuse,
                parallel: settings.parallel(parallel)?,
                index_in_memory: crmvault::repo::INDEX_IN_MEMORY,
                toast_compression: crmvault::postgres::ToastCompression::Lz4,
                maintenance_work_mem: crmvault::postgres::RESTORE_MAINTENANCE_WORK_MEM.into(),
                newest_known: trusted.newest(),
                create: None,
                leave_out: roles.leave_out(),
                create_roles: roles.create_roles,
                role: roles.role.clone(),
                trust_snapshot_code: settings.trust_snapshot_code(trust_snapshot_code)?,
                search_path,
                part: restore::PartOptions::default(),
            };
            audit.database(&options.database);
            let progress = output::Bar::start(json || quiet);
            let result = async {
                if !from_every_target {
                    return Ok(vec![crmvault::drill::run(&targets, &keyring, &options, progress.clone()).await?]);
                }
                // One snapshot for every copy: `latest` as the copies together see it.
                let chosen = targets.resolve_snapshot(&options.snapshot, &options.filter, &keyring).await?;
                // A snapshot that does not open and may be newer is drilled, and fails: the
                // newest backup may not be restorable. One no copy serves is drilled only when
                // nothing opens.
                let newer_unreadable = chosen.unreadable.iter().find(|skipped| skipped.may_be_newer());
                let chosen = newer_unreadable
                    .map(|skipped| &skipped.id)
                    .or(chosen.ids.first())
                    .or(chosen.unreadable.first().map(|skipped| &skipped.id))
                    .ok_or_else(|| crmvault::Error::SnapshotNotFound(format!("no snapshot {}", options.snapshot)))?;
                options.snapshot = chosen.to_string();
                options.filter = crmvault::repo::SnapshotFilter::default();
                let mut reports = Vec::new();
                for repository in targets.repositories() {
                    let one = crmvault::repo_set::RepoSet::of(vec![repository.clone()])?;
                    reports.push(crmvault::drill::run(&one, &keyring, &options, progress.clone()).await?);
                }
                for left_out in targets.left_out() {
                    let reason = format!("{} did not open: {}", left_out.location, left_out.reason);
                    let location = vec![left_out.location.clone()];
                    reports.push(crmvault::drill::DrillReport::not_run(location, &options.database, reason));
                }
                crmvault::Result::Ok(reports)
            }
            .await;
            progress.finish();
            lock::release(locks).await;
            // A drill that could not run is a failed drill for the report and the metrics too:
            // last week's PASSED must not stand.
            let reports = match result {
                Ok(reports) => reports,
                Err(error) => {
                    let error = in_context(error, &options.database, "drilling into", "");
                    let locations = targets.repositories().iter().map(|r| r.target.location().to_string()).collect();
                    return Err(drill::not_run(metrics, report.as_deref(), (locations, &options.database), error));
                }
            };
            for report in reports.iter().filter(|report| report.passed) {
                if let (Some(snapshot), Some(restored)) = (&report.snapshot, &report.restore) {
                    trusted.advance(Some(&crmvault::trust::SnapshotMark {
                        id: snapshot.id.clone(),
                        sequence: restored.sequence,
                        time: snapshot.time,
                    }))?;
                }
            }
            for snapshot in reports.iter().filter_map(|report| report.snapshot.as_ref()) {
                audit.snapshot(&snapshot.id);
            }
            metrics.drill(&reports);
            if let Some(path) = &report {
                drill::write_report(path, &reports)?;
            }
            drill::print(json, &reports);
            if !reports.iter().all(|report| report.passed) {
                return Ok(3);
            }
        }
        Command::Verify { repo, identity, read_data, read_data_subset, filter } => {
            let (identity, depth) = settings.verify_depth(identity, read_data, read_data_subset, chrono::Utc::now())?;
            let filter = filter.filter();
            let mut total = verify::VerifyReport::default();
            let mut targets = storage.open_set(&settings.repos(repo.repos)?, true).await?;
            let here = config_dir()?;
            let role_of = |r: &crmvault::repo::Repository| trust::reading_role(r, identity.as_deref(), &here);
            trust::leave_out_failing(&mut targets, role_of, fingerprint.as_ref(), &here, trust::Copies::Each).await;
            for left_out in targets.left_out() {
                total.merge(verify::VerifyReport {
                    problems: vec![verify::Problem {
                        target: left_out.location.clone(),
                        object: "config".into(),
                        snapshots: vec![],
                        problem: left_out.reason.clone(),
                        chunks: 0,
                    }],
                    ..verify::VerifyReport::default()
                });
            }
            let readers = lock::readers(targets.repositories(), identity.as_deref(), &config_dir()?);
            let locks = targets.lock_all(LockMode::Shared, &lock::options(lock_wait, "verify", readers)).await?;
            let trusted = trust::check_each_copy(
                targets.repositories_mut(),
                identity.as_deref(),
                fingerprint.as_ref(),
                &config_dir()?,
            )
            .await
            .map_err(|error| trust::with_left_out(error, &targets))?;
            // Each copy on its own: a problem on one is a finding, not a reason to stop.
            let several = targets.repositories().len() + targets.left_out().len() > 1;
            for (repository, mut trusted) in targets.repositories().iter().zip(trusted) {
                let progress = output::Bar::start(json || quiet);
                let known = (trusted.newest(), trusted.missed_at(repository.target.location()));
                if let Ok(Some(keyring)) = keyring(repository, identity.as_deref()).await {
                    audit.opened(std::slice::from_ref(repository), &keyring);
                }
                let result =
                    verify_one(repository, identity.as_deref(), depth, &filter, known, progress.as_ref()).await;
                progress.finish();
                let report = match result {
                    Ok(report) => report,
                    // Of several, a copy verify could not go through (its storage failing, a
                    // folder made a link loop there) is that copy's finding; the others are
                    // verified all the same.
                    Err(error) if several => verify::VerifyReport {
                        problems: vec![verify::Problem {
                            target: repository.target.location().to_string(),
                            object: String::new(),
                            snapshots: vec![],
                            problem: format!("not verified: {error:#}"),
                            chunks: 0,
                        }],
                        ..verify::VerifyReport::default()
                    },
                    Err(error) => return Err(error),
                };
                trusted.advance(report.newest.as_ref())?;
                total.merge(report);
            }
            lock::release(locks).await;
            metrics.verify(&total);
            output::verify(json, &total);
            if !total.problems.is_empty() {
                return Ok(3);
            }
        }
        Command::Forget { repo, identity, keep, dry_run, prune: and_prune, forget_flagged, filter, snapshots } => {
            if dry_run {
                audit.dry_run();
            }
            let (given, filter) = (keep.policy(), filter.filter());
            let policy = if snapshots.is_empty() {
                settings.policy(given)?
            } else if !given.is_empty() || !filter.is_empty() {
                return Err(profile::Usage(
                    "forget takes snapshot ids or a retention policy (--keep-*, --database, --host, --tag), not both"
                        .into(),
                )
                .into());
            } else if let Some(Err(error)) =
                snapshots.iter().map(|s| crmvault::forget::check_selector(s)).find(Result::is_err)
            {
                return Err(profile::Usage(error.to_string()).into());
            } else {
                given
            };
            let identity = settings.identity(identity)?;
            if forget_flagged && identity.is_none() {
                anyhow::bail!(
                    "--forget-flagged needs --identity: removing what the data-loss alarm kept as evidence is an \
                     admin's decision, not the backup host's"
                );
            }
            let mut targets = storage.open_set(&settings.repos(repo.repos)?, true).await?;
            let config_dir = config_dir()?;
            let role = if identity.is_some() { trust::Role::Admin } else { trust::Role::Writer };
            trust::check_available(&mut targets, role, fingerprint.as_ref(), &config_dir).await?;
            let keyring: Keyring = match &identity {
                Some(path) => targets.unlock_as_admin(path).await?.into(),
                None => targets.unlock_as_writer(&config_dir).await?,
            };
            audit.opened(targets.repositories(), &keyring);
            let mode = if dry_run { LockMode::Shared } else { LockMode::Exclusive };
            let locks =
                targets.lock_all(mode, &lock::options(lock_wait, "forget", keyring.identities().to_vec())).await?;
            let options = crmvault::forget::ForgetOptions {
                policy,
                filter,
                dry_run,
                zone: chrono::Local,
                now: chrono::Utc::now(),
                prune: and_prune,
                forget_flagged,
                named: snapshots,
            };
            let progress = output::Bar::start(json || quiet);
            let result = crmvault::forget::run(&targets, &keyring, &options, &locks, progress.as_ref()).await;
            progress.finish();
            lock::release(locks).await;
            let report = result?;
            if !dry_run {
                for plan in &report.plans {
                    plan.removed().for_each(|decision| audit.snapshot(&decision.id));
                }
            }
            metrics.forget(&report.plans);
            metrics.prune(&report.pruned);
            let rule = if options.named.is_empty() { options.policy.to_string() } else { options.rule() };
            output::forget(json, &report, &rule, dry_run);
            // A delete refused by the storage (Object Lock) is said, not fatal: the snapshot goes
            // on a later night. A snapshot forget could not see (damaged, or deleted behind the
            // repository's back) is a problem for `verify`: exit 3 too, as is a prune that failed
            // after its forget was done.
            if !report.failed.is_empty()
                || !report.prune_failed.is_empty()
                || report.plans.iter().any(|plan| plan.blind.is_some())
            {
                return Ok(3);
            }
        }
        Command::Dump { repo, identity, table, format, conditions, key, jobs, filter, snapshot } => {
            let identity = settings.require_identity(identity)?;
            let (targets, mut trusted, keyring, locks) = open_as_admin(
                &storage,
                &settings.repos(repo.repos)?,
                &identity,
                fingerprint.as_ref(),
                ("dump", lock_wait, audit),
            )
            .await?;
            let options = restore::dump::DumpOptions {
                snapshot,
                filter: filter.filter(),
                table,
                format: match format {
                    DumpFormat::Copy => restore::dump::DumpFormat::Copy,
                    DumpFormat::Csv => restore::dump::DumpFormat::Csv,
                    DumpFormat::Json => restore::dump::DumpFormat::Json,
                },
                conditions: conditions.into_iter().chain(key.map(restore::dump::Condition::Key)).collect(),
                jobs: settings.jobs(jobs)?.max(1),
                newest_known: trusted.newest(),
            };
            let progress = output::Bar::start(json || quiet);
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            let result = restore::dump::run(&targets, &keyring, &options, &mut stdout, progress.as_ref()).await;
            drop(stdout);
            progress.finish();
            lock::release(locks).await;
            let report = result.map_err(|error| match error {
                // Said before anything was written.
                crmvault::Error::Invalid(_)
                | crmvault::Error::SnapshotNotFound(_)
                | crmvault::Error::AmbiguousLatest { .. } => anyhow::Error::new(error),
                error => {
                    anyhow::Error::new(error).context("dumping: what was written before this error must not be trusted")
                }
            })?;
            audit.snapshot(&report.snapshot_id);
            // Proven: a later deletion of it is then a rollback this machine sees.
            trusted.advance(Some(&report.mark))?;
            if report.reader_left {
                // `dump … | head`: what was wanted was written; nothing failed. Said even with
                // --quiet: the table's check may not have been reached.
                let checked = if report.checked {
                    "the table was read whole, its digest and row count checked"
                } else {
                    "each row written came from a checked chunk; the rest of the table was not read, nor its \
                     digest and row count checked"
                };
                output::warning(format_args!(
                    "dump of {} from snapshot {} stopped after {} rows read: the output was closed by its reader \
                     ({checked})",
                    output::printable(&report.table),
                    report.snapshot_id.short(),
                    report.rows
                ));
                return Ok(0);
            }
            if report.written == 0 && report.rows > 0 && !options.conditions.is_empty() {
                // An easy slip: `--where 'id = 42'` compares the text " 42".
                output::warning(format_args!(
                    "no row of {} matched {}: values are compared as COPY writes them, exactly (spaces count)",
                    output::printable(&report.table),
                    output::printable(
                        &options.conditions.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ")
                    )
                ));
            }
            if !quiet {
                let rows = if report.written == report.rows {
                    format!("{} rows", report.rows)
                } else {
                    format!("{} of {} rows", report.written, report.rows)
                };
                eprintln!(
                    "dumped {rows} of {} from snapshot {}: every chunk, the digest and the row count checked",
                    output::printable(&report.table),
                    report.snapshot_id.short()
                );
            }
        }
        Command::Diff { repo, identity, tables, exclude_tables, keys, jobs, filter, from, to } => {
            let identity = settings.require_identity(identity)?;
            let (targets, mut trusted, keyring, locks) = open_as_admin(
                &storage,
                &settings.repos(repo.repos)?,
                &identity,
                fingerprint.as_ref(),
                ("diff", lock_wait, audit),
            )
            .await?;
            let options = restore::diff::DiffOptions {
                from,
                to,
                filter: filter.filter(),
                include: tables,
                exclude: exclude_tables,
                keys,
                jobs: settings.jobs(jobs)?.max(1),
                newest_known: trusted.newest(),
            };
            let progress = output::Bar::start(json || quiet);
            let result = restore::diff::run(&targets, &keyring, &options, progress.as_ref()).await;
            progress.finish();
            lock::release(locks).await;
            let report = result?;
            audit.snapshot(&report.from.snapshot_id);
            audit.snapshot(&report.to.snapshot_id);
            trusted.advance(Some(&report.newest))?;
            output::diff(json, &report);
        }
        Command::Ls { repo, identity, filter, snapshot } => {
            let identity = settings.identity(identity)?;
            let mut targets = storage.open_set(&settings.repos(repo.repos)?, true).await?;
            trust::require_one_repository(&targets, &config_dir()?)?;
            let role = trust::reading_role(targets.first(), identity.as_deref(), &config_dir()?);
            trust::check(targets.repositories_mut(), role, fingerprint.as_ref(), &config_dir()?).await?;
            targets.remember_labels(&config_dir()?);
            let Some(keyring) = keyring(targets.first(), identity.as_deref()).await? else {
                anyhow::bail!(
                    "what a snapshot holds is in its encrypted manifest: run it on the backup host (writer key) or give \
                     an admin's --identity"
                );
            };
            let listing = crmvault::commands::ls::run(&targets, &keyring, &snapshot, &filter.filter()).await?;
            output::ls(json, &listing);
        }
        Command::Audit { repo, identity, since } => {
            let identity = settings.identity(identity)?;
            let mut targets = storage.open_set(&settings.repos(repo.repos)?, false).await?;
            trust::check_each_copy(
                targets.repositories_mut(),
                identity.as_deref(),
                fingerprint.as_ref(),
                &config_dir()?,
            )
            .await?;
            let mut trails = Vec::new();
            for repository in targets.repositories() {
                let Some(keyring) = keyring(repository, identity.as_deref()).await? else {
                    anyhow::bail!(
                        "the audit trail is encrypted: run it on the backup host (writer key) or give an admin's --identity"
                    );
                };
                trails.push((repository.target.location().to_string(), repository.audit_trail(Some(&keyring)).await?));
            }
            audit::print(json, &trails, since);
            if trails.iter().any(|(_, trail)| !trail.problems.is_empty()) {
                return Ok(3);
            }
        }
        Command::Fingerprint { repo } => {
            let repos = settings.repos(repo.repos)?;
            // As the storage claims it: not opened at what this machine pinned.
            let targets = storage.open_set_as_stored(&repos).await?;
            targets.require_one_fingerprint()?;
            output::fingerprint(json, targets.first(), &repos);
        }
        Command::Rekey {
            repo,
            identity,
            add_recipients,
            remove_recipients,
            rotate_writer_key: _,
            writer_key_out,
            reencrypt,
        } => {
            let parse = |texts: &[String]| -> Result<Vec<age::x25519::Recipient>> {
                texts.iter().map(|t| crmvault::crypto::parse_recipient(t).map_err(anyhow::Error::from)).collect()
            };
            let options = rekey::RekeyOptions {
                add: parse(&add_recipients)?,
                remove: parse(&remove_recipients)?,
                writer_key_out,
                reencrypt,
            };
            let mut targets = storage.open_set(&settings.repos(repo.repos)?, false).await?;
            let config_dir = config_dir()?;
            let removing: Vec<String> = options.remove.iter().map(ToString::to_string).collect();
            let mut trusted = trust::check_for_rekey(
                targets.repositories_mut(),
                fingerprint.as_ref(),
                &config_dir,
                (&removing, options.writer_key_out.is_some()),
            )
            .await?;
            let identity = settings.require_identity(identity)?;
            if let Ok(keyring) = targets.unlock_as_admin(&identity).await {
                audit.opened(targets.repositories(), &keyring);
            }
            let readers = lock::readers(targets.repositories(), Some(&identity), &config_dir);
            let locks = targets.lock_all(LockMode::Exclusive, &lock::options(lock_wait, "rekey", readers)).await?;
            let progress = output::Bar::start(json || quiet);
            let result =
                rekey::run(&mut targets, &identity, &options, progress.as_ref(), &mut |next| trusted.publishing(next))
                    .await;
            progress.finish();
            lock::release(locks).await;
            // The record goes under the new generation's keys (the old ones are retired).
            if let Ok(keyring) = targets.unlock_as_admin(&identity).await {
                audit.opened(targets.repositories(), &keyring);
            }
            let report = result?;
            trusted.follow(&report.config_hash)?;
            output::rekey(json, &report);
            if report.reencrypted.iter().any(rekey::Reencrypted::incomplete) {
                eprintln!(
                    "crmvault: re-encryption incomplete: some objects are still readable by keys that are no longer \
                     recipients (listed above)"
                );
                return Ok(3);
            }
        }
        Command::Prune { repo, identity, max_unused, dry_run } => {
            if dry_run {
                audit.dry_run();
            }
            let locations = settings.repos(repo.repos)?;
            let mode = if dry_run { prune::PruneMode::DryRun } else { prune::PruneMode::Delete };
            let Some(identity) = settings.identity(identity)? else {
                // The profile's `max_unused` serves prunes with an identity; the flag alone is a mistake.
                if max_unused.is_some() {
                    return Err(profile::Usage("--max-unused needs --identity (repacking reads packs)".into()).into());
                }
                let targets = storage.open_set(&locations, true).await?;
                let readers = lock::readers(targets.repositories(), None, &config_dir()?);
                let lock_options = lock::options(lock_wait, "prune", readers);
                let outcome = prune_each(
                    targets,
                    &prune::PruneOptions::new(mode),
                    &lock_options,
                    fingerprint.as_ref(),
                    (json || quiet, audit),
                )
                .await?;
                metrics.prune(&outcome.reports);
                output::prune(json, &[], &outcome.reports, &outcome.failed);
                if !outcome.failed.is_empty() {
                    return Ok(3);
                }
                return Ok(0);
            };
            let max_unused: crmvault::repack::MaxUnused = match max_unused.or(settings.profile()?.max_unused.clone()) {
                Some(text) => text.parse()?,
                None => crmvault::repack::MaxUnused::DEFAULT,
            };
            let (repacked, reports) = repack_and_prune(
                &storage,
                &locations,
                &identity,
                (mode, max_unused),
                fingerprint.as_ref(),
                (lock_wait, json || quiet, audit),
            )
            .await?;
            // A replaced snapshot the storage would not delete is a warning, as any refused
            // delete: its copy serves, and the next prune tries again.
            metrics.prune(&reports);
            output::prune(json, &repacked, &reports, &[]);
        }
        Command::Copy { from, to, snapshots, repair } => {
            let mut from = storage.open_set(&[from], false).await?;
            let mut to = storage.open_set(&[to], false).await?;
            // Two copies of one repository, or nothing is checked (nor a pin moved) for them.
            let mut both = crmvault::repo_set::RepoSet::of(vec![from.first().clone(), to.first().clone()])?;
            trust::require_one_repository(&both, &config_dir()?)?;
            // Checked one at a time below: checked together first, and left as opened there.
            trust::check_copies_together(both.repositories_mut(), None, fingerprint.as_ref(), &config_dir()?).await?;
            let [checked_from, checked_to]: [crmvault::repo::Repository; 2] =
                both.repositories().to_vec().try_into().expect("two copies");
            from.repositories_mut()[0] = checked_from;
            to.repositories_mut()[0] = checked_to;
            for targets in [&mut from, &mut to] {
                trust::check(targets.repositories_mut(), trust::Role::Keyless, fingerprint.as_ref(), &config_dir()?)
                    .await?;
            }
            let readers = lock::readers(&[from.first().clone(), to.first().clone()], None, &config_dir()?);
            let options = lock::options(lock_wait, "copy", readers);
            let mut locks = from.lock_all(LockMode::Shared, &options).await?;
            locks.join(to.lock_all(LockMode::Append, &options).await?);
            let (from, to) = (from.first(), to.first());
            // Keyless, but the writer key, where this machine has it, records the copy.
            for repository in [from, to] {
                if let Ok(Some(keyring)) = keyring(repository, None).await {
                    audit.opened(std::slice::from_ref(repository), &keyring);
                }
            }
            let report = copy::run(from, to, (&snapshots, repair), &locks).await?;
            report.snapshots_copied.iter().for_each(|id| audit.snapshot(id));
            lock::release(locks).await;
            output::copy(json, &report, from.target.location(), to.target.location());
            if !report.complete() {
                return Ok(3);
            }
        }
        Command::Unlock { repo, identity, remove_all } => {
            let targets = storage.open_set(&settings.repos(repo.repos)?, false).await?;
            let identity = settings.identity(identity)?;
            let readers = lock::readers(targets.repositories(), identity.as_deref(), &config_dir()?);
            let removal = if remove_all { Removal::All } else { Removal::Stale };
            let found =
                lock::unlock(targets.repositories(), removal, &lock::options(lock_wait, "unlock", readers)).await?;
            lock::print_unlock(json, &found);
        }
        Command::RetireTarget { repos } => {
            let retired = crmvault::trust::retire_locations(&config_dir()?, &repos)?;
            output::retired(json, &retired);
        }
        Command::Config { action } => return profile::run(&action, &settings, json),
        Command::Completions { shell } => generate::completions(shell)?,
        Command::GenerateMan { dir } => {
            for page in generate::man_pages(&dir)? {
                say!("{}", page.display());
            }
        }
    }
    Ok(0)
}

/// What a command that reads data (restore, drill, dump) starts with: the copies that open (one
/// that does not is left out, with a warning), checked as an admin's against the pins, unlocked
/// with `identity`, noted for the audit trail, and locked shared for `command`.
async fn open_as_admin(
    storage: &storage::Storage,
    locations: &[String],
    identity: &Path,
    fingerprint: Option<&crmvault::trust::Fingerprint>,
    (command, lock_wait, audit): (&str, std::time::Duration, &audit::AuditLog),
) -> Result<(crmvault::repo_set::RepoSet, trust::Trusted, crmvault::repo::AdminKeyring, crmvault::lock::Locks)> {
    let mut targets = storage.open_set(locations, true).await?;
    let trusted = trust::check_available(&mut targets, trust::Role::Admin, fingerprint, &config_dir()?).await?;
    for left_out in targets.left_out() {
        output::warning(format_args!("{} left out: {}", left_out.location, left_out.reason));
    }
    targets.remember_labels(&config_dir()?);
    let keyring = targets.unlock_as_admin(identity).await?;
    audit.opened(targets.repositories(), &keyring);
    let locks =
        targets.lock_all(LockMode::Shared, &lock::options(lock_wait, command, keyring.identities().to_vec())).await?;
    Ok((targets, trusted, keyring, locks))
}

/// `--schema-map FROM=TO`.
fn parse_schema_map(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((from, to)) if !from.is_empty() && !to.is_empty() && from != to => Ok((from.into(), to.into())),
        _ => Err(format!("{text:?}: give FROM=TO, two different schema names (crm=crm_restored)")),
    }
}

/// `prune --identity`: every copy opened, checked as an admin's, locked (exclusive, or shared
/// for a dry run), repacked together (a snapshot sealed again has one new id on every copy),
/// then each pruned, all under the same locks.
async fn repack_and_prune(
    storage: &storage::Storage,
    locations: &[String],
    identity: &Path,
    (mode, max_unused): (prune::PruneMode, crmvault::repack::MaxUnused),
    fingerprint: Option<&crmvault::trust::Fingerprint>,
    (lock_wait, silent, audit): (std::time::Duration, bool, &audit::AuditLog),
) -> Result<(Vec<crmvault::repack::Repacked>, Vec<prune::PruneReport>)> {
    let mut targets = storage.open_set(locations, false).await?;
    let config_dir = config_dir()?;
    trust::require_one_repository(&targets, &config_dir)?;
    trust::check(targets.repositories_mut(), trust::Role::Admin, fingerprint, &config_dir).await?;
    let keyring = targets.unlock_as_admin(identity).await?;
    audit.opened(targets.repositories(), &keyring);
    let readers = lock::readers(targets.repositories(), Some(identity), &config_dir);
    let lock_mode = match mode {
        prune::PruneMode::Delete => LockMode::Exclusive,
        prune::PruneMode::DryRun => LockMode::Shared,
    };
    let locks = targets.lock_all(lock_mode, &lock::options(lock_wait, "prune", readers)).await?;
    let progress = output::Bar::start(silent);
    let result = async {
        let options = crmvault::repack::RepackOptions { mode, max_unused };
        let repacked =
            crmvault::repack::run(targets.repositories(), &keyring, &options, &locks, progress.as_ref()).await?;
        let plain: &Keyring = &keyring;
        let mut reports = Vec::new();
        for repository in targets.repositories() {
            let options = prune::PruneOptions::new(mode);
            reports.push(prune::run(repository, &options, (Some(plain), &locks), progress.as_ref()).await?);
        }
        anyhow::Ok((repacked, reports))
    }
    .await;
    progress.finish();
    lock::release(locks).await;
    result
}

/// What `prune` did on the targets that were pruned, and the ones that failed (location, why).
struct PruneOutcome {
    reports: Vec<prune::PruneReport>,
    failed: Vec<(String, String)>,
}

/// Prunes each target on its own: checked against its pin, locked (exclusive, or shared for a
/// dry run), pruned, released. With several targets, one that could not be opened, checked,
/// locked or pruned is a failure the others go on without (exit code 3); with one, its error
/// is the error; when none is pruned, every reason is.
async fn prune_each(
    mut targets: crmvault::repo_set::RepoSet,
    options: &prune::PruneOptions,
    lock_options: &crmvault::lock::LockOptions,
    fingerprint: Option<&crmvault::trust::Fingerprint>,
    (silent, audit): (bool, &audit::AuditLog),
) -> Result<PruneOutcome> {
    trust::check_copies_together(targets.repositories_mut(), None, fingerprint, &config_dir()?).await?;
    let mut each = targets.each_copy();
    let lock_mode = match options.mode {
        prune::PruneMode::Delete => LockMode::Exclusive,
        prune::PruneMode::DryRun => LockMode::Shared,
    };
    for repository in targets.repositories_mut() {
        let location = repository.target.location().to_string();
        let result = async {
            let role = trust::reading_role(repository, None, &config_dir()?);
            trust::check(std::slice::from_mut(repository), role, fingerprint, &config_dir()?).await?;
            let locks = crmvault::lock::lock_all(std::slice::from_ref(repository), lock_mode, lock_options).await?;
            let progress = output::Bar::start(silent);
            // The writer key, where this machine has it, proves each snapshot before its header
            // is believed.
            let keyring = keyring(repository, None).await?;
            if let Some(keyring) = &keyring {
                audit.opened(std::slice::from_ref(repository), keyring);
            }
            let result = prune::run(repository, options, (keyring.as_ref(), &locks), progress.as_ref()).await;
            progress.finish();
            lock::release(locks).await;
            anyhow::Ok(result?)
        }
        .await;
        each.take(&location, result)?;
    }
    let (reports, failed) = each.finish()?;
    Ok(PruneOutcome { reports, failed })
}

async fn verify_one(
    repository: &Repository,
    identity: Option<&Path>,
    depth: verify::Depth,
    filter: &crmvault::repo::SnapshotFilter,
    (newest_known, missed): (Option<crmvault::trust::SnapshotMark>, Vec<crmvault::repo::ForgottenSnapshot>),
    progress: &dyn crmvault::progress::Progress,
) -> Result<verify::VerifyReport> {
    let known = (newest_known.as_ref(), missed.as_slice());
    match keyring(repository, identity).await {
        Ok(keyring) => Ok(verify::run(repository, keyring.as_ref(), depth, filter, known, progress).await?),
        // A damaged keys object is a finding, not a reason to stop looking.
        Err(error)
            if matches!(
                error.downcast_ref(),
                Some(crmvault::Error::Corrupt { .. } | crmvault::Error::Missing { .. })
            ) =>
        {
            // Every snapshot, structurally: a filter needs the manifests this key cannot open.
            let everything = crmvault::repo::SnapshotFilter::default();
            let mut report =
                verify::run(repository, None, verify::Depth::Structure, &everything, known, progress).await?;
            report.problems.push(verify::Problem {
                target: repository.target.location().to_string(),
                object: repository.config.keys.join(", "),
                snapshots: vec![],
                problem: format!("cannot unlock the repository: {}", one_line(&error)),
                chunks: 0,
            });
            Ok(report)
        }
        Err(error) => Err(error),
    }
}
