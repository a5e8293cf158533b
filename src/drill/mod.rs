//! `drill`: a restore drill, with evidence. A snapshot is restored into a scratch database
//! (created for the drill and dropped after it, or a given empty one emptied again), then the
//! restored database is proven *from the database*, not from the backup:
//!
//! - every table (and the large objects) is read back with the backup's `COPY` and session
//!   settings, and its row count and keyed digest must equal the snapshot's;
//! - every sequence must hold the snapshot's value;
//! - every foreign key, check and not-null constraint is checked row by row;
//! - every B-tree index is checked against its table with amcheck, where the server has it.
//!
//! Each phase is timed: the restore's time is the recovery-time evidence an auditor asks for.
//! A failure anywhere (the restore refused a damaged chunk, a digest differs, a foreign key
//! has orphans) is a failed drill with its reasons, not an error: the report is the result.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::postgres::proof::{Constraint, IndexCheck, ProofSession, SCRATCH_MARK, Scratch};
use crate::postgres::script::SearchPath;
use crate::postgres::{Database, LARGE_OBJECTS_COPY_OUT, SourceTable};
use crate::progress::{Shared, Unit};
use crate::repo::{AdminKeyring, Manifest, SnapshotId, TableManifest};
use crate::repo_set::RepoSet;
use crate::restore::{self, RestoreOptions, RestoreReport};

/// What a drill found.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The targets the snapshot was read from.
    pub targets: Vec<String>,
    /// The repository's fingerprint.
    pub fingerprint: String,
    /// crmvault's version.
    pub crmvault_version: &'static str,
    /// The scratch database (without its password).
    pub scratch_database: String,
    /// Whether the drill created the scratch database (and dropped it), or was given it.
    pub scratch_created: bool,
    /// Whether a scratch database the drill created is left behind (a warning says why).
    pub scratch_left: bool,
    /// When the drill began and ended.
    pub started: chrono::DateTime<chrono::Utc>,
    /// When it ended.
    pub ended: chrono::DateTime<chrono::Utc>,
    /// Whether every check passed.
    pub passed: bool,
    /// Why not: one line each.
    pub failures: Vec<String>,
    /// What the drill noticed and went past (constraints not valid in the source, no amcheck,
    /// a scratch database left behind).
    pub warnings: Vec<String>,
    /// The snapshot restored, when one was.
    pub snapshot: Option<DrilledSnapshot>,
    /// The restore, when it ended well.
    pub restore: Option<RestoreReport>,
    /// How long each phase took, in order.
    pub phases: Vec<Phase>,
    /// Every table (and the large objects), as proven.
    pub tables: Vec<TableProof>,
    /// Sequences compared, and those that differ.
    pub sequences: Checked,
    /// Constraints checked row by row, and those broken.
    pub constraints: Checked,
    /// Indexes checked, and their problems; `skipped` says why none was.
    pub indexes: Checked,
}

/// The snapshot a drill restored.
#[derive(Debug, Clone, Serialize)]
pub struct DrilledSnapshot {
    /// Its id.
    pub id: SnapshotId,
    /// Its time.
    pub time: chrono::DateTime<chrono::Utc>,
    /// The database it is of.
    pub database: String,
    /// The host that took it.
    pub hostname: String,
    /// The source server's version.
    pub source_server_version: String,
    /// The scratch server's version.
    pub scratch_server_version: Option<String>,
}

/// One timed phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// `prepare`, `restore`, `tables`, `sequences`, `constraints`, `indexes`, `cleanup`.
    pub name: &'static str,
    /// Seconds it took.
    pub seconds: f64,
}

/// One table as the drill read it back.
#[derive(Debug, Clone, Serialize)]
pub struct TableProof {
    /// Schema (`pg_catalog` for the large objects).
    pub schema: String,
    /// Name (`pg_largeobject` for the large objects).
    pub name: String,
    /// Rows the snapshot holds.
    pub rows_expected: u64,
    /// Rows read back (absent when the table is missing).
    pub rows_found: Option<u64>,
    /// `ok`, or what differs.
    pub result: String,
}

/// A kind of object checked: how many, and the problems found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Checked {
    /// How many were checked.
    pub checked: usize,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
    /// Why none was checked, when none could be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Runs a drill: `options.database` is the scratch database, `options.snapshot` what to
/// restore. Errors are what kept the drill from running at all (the scratch database is not
/// empty, the server cannot be reached); what it found wrong is in the report.
pub async fn run(
    targets: &RepoSet,
    keyring: &AdminKeyring,
    options: &RestoreOptions,
    progress: Shared,
) -> Result<DrillReport> {
    let locations = targets.repositories().iter().map(|r| r.target.location().to_string()).collect();
    let mut report = DrillReport::new(locations, targets.first().fingerprint().to_string(), &options.database);
    let clock = Instant::now();
    let scratch = Scratch::claim(&options.database).await?;
    report.scratch_created = scratch.create;
    // From here a Ctrl-C stops the restore or the proof, and the scratch database is cleaned
    // up below as after a failure; the drill then ends as interrupted, not failed.
    let _undoable = crate::interrupt::Undoable::begin();
    // What storage changed of the repository's own objects: read through the pinned
    // generation, the restore would not show it, and the drill's report is the auditor's.
    for repository in targets.repositories() {
        match crate::commands::verify::configs_and_keys(repository).await {
            Ok(found) => report.warnings.extend(found.iter().map(|found| {
                format!(
                    "{}: {} {} (the restore reads through the generation this machine pinned; `crmvault verify` \
                     reports it too)",
                    found.target, found.object, found.problem
                )
            })),
            Err(error) => report.warnings.push(format!(
                "{}: its config and keys objects could not be checked: {error}",
                repository.target.location()
            )),
        }
    }
    report.phase("prepare", clock);

    let mut restore_options = options.clone();
    restore_options.create = scratch.create.then(|| SCRATCH_MARK.to_string());
    let clock = Instant::now();
    let restored = restore::restore(targets, keyring, &restore_options, progress.clone()).await;
    report.phase("restore", clock);
    // A database the restore refused as not empty (filled since the claim) is not the drill's.
    let touched = !matches!(restored, Err(Error::TargetNotEmpty { .. } | Error::NotEmptyForParallel { .. }));
    let mut interrupted = matches!(restored, Err(Error::Interrupted));
    match restored {
        Ok((restore_report, manifest)) => {
            report.snapshot = Some(DrilledSnapshot {
                id: restore_report.snapshot_id.clone(),
                time: restore_report.time,
                database: manifest.database.clone(),
                hostname: manifest.hostname.clone(),
                source_server_version: manifest.server_version.clone(),
                scratch_server_version: None,
            });
            report.warnings.extend(restore_report.warnings.iter().cloned());
            // The newest backup is what an incident would need: an older one restoring is not
            // a drill passed (the warnings say which snapshot was passed over, and why).
            if restore_report.skipped_newer {
                report.failures.push(format!(
                    "the newest backup does not restore: {} was restored because a snapshot that is or may be newer \
                     was passed over (see the warnings)",
                    restore_report.snapshot_id
                ));
            }
            report.restore = Some(restore_report);
            let scratch = (&options.database, options.jobs, options.search_path.as_ref());
            let proven =
                crate::interrupt::or_interrupted(prove(&mut report, &manifest, keyring, scratch, &progress)).await;
            match proven {
                Err(Error::Interrupted) => interrupted = true,
                Err(error) => report.failures.push(format!("proving the restored database: {error}")),
                Ok(()) => {}
            }
        }
        Err(error) => report.failures.push(format!("the restore failed: {error}")),
    }

    let clock = Instant::now();
    match scratch.finish(touched).await {
        Ok(None) => {}
        Ok(Some(left)) => {
            report.scratch_left = report.scratch_created;
            report.warnings.push(left);
        }
        Err(error) => {
            report.scratch_left = report.scratch_created;
            report.warnings.push(format!("{} was not removed after the drill: {error}", options.database));
        }
    }
    report.phase("cleanup", clock);
    if interrupted {
        return Err(Error::Interrupted);
    }
    report.passed = report.failures.is_empty();
    report.ended = chrono::Utc::now();
    Ok(report)
}

impl DrillReport {
    /// A drill that could not run on `targets` (a target did not open, the scratch database
    /// was refused): failed, with `reason`.
    pub fn not_run(targets: Vec<String>, scratch: &Database, reason: String) -> DrillReport {
        let mut report = DrillReport::new(targets, String::new(), scratch);
        report.failures.push(reason);
        report
    }

    /// A drill beginning now, of the repository with `fingerprint` on `targets`, into `scratch`.
    pub fn new(targets: Vec<String>, fingerprint: String, scratch: &Database) -> DrillReport {
        let now = chrono::Utc::now();
        DrillReport {
            targets,
            fingerprint,
            crmvault_version: env!("CARGO_PKG_VERSION"),
            scratch_database: scratch.to_string(),
            scratch_created: false,
            scratch_left: false,
            started: now,
            ended: now,
            passed: false,
            failures: Vec::new(),
            warnings: Vec::new(),
            snapshot: None,
            restore: None,
            phases: Vec::new(),
            tables: Vec::new(),
            sequences: Checked::default(),
            constraints: Checked::default(),
            indexes: Checked::default(),
        }
    }

    fn phase(&mut self, name: &'static str, since: Instant) {
        self.phases.push(Phase { name, seconds: since.elapsed().as_secs_f64() });
    }

    /// The restore's time in seconds (the recovery time measured), when it ran.
    pub fn restore_seconds(&self) -> Option<f64> {
        self.phases.iter().find(|phase| phase.name == "restore").map(|phase| phase.seconds)
    }
}

/// Reads a restored `database` back on `jobs` connections and compares it with the snapshot's
/// `manifest` (a drill's checks, after its restore): what it finds goes into `report`; an
/// error is what kept it from looking.
pub async fn prove(
    report: &mut DrillReport,
    manifest: &Manifest,
    keyring: &AdminKeyring,
    (database, jobs, search_path): (&Database, usize, Option<&SearchPath>),
    progress: &Shared,
) -> Result<()> {
    let settings = manifest.session.as_ref();
    if settings.is_none() {
        report.warnings.push(
            "the snapshot predates recorded session settings: tables are read back with the scratch server's \
             (a DateStyle, TimeZone or collation the source had otherwise makes their digests differ)"
                .into(),
        );
    }
    let session = ProofSession::open(database, settings).await?;
    if let Some(snapshot) = &mut report.snapshot {
        snapshot.scratch_server_version = Some(session.server_version().await?);
    }
    if session.is_superuser().await? {
        report.warnings.push(
            "the drill ran as a superuser: the snapshot's schema SQL, which the backup host writes, ran with every \
             right on this server; a role with CREATEDB is enough (indexes are then checked where amcheck is installed)"
                .into(),
        );
    }

    let clock = Instant::now();
    report.tables = prove_tables(&session, manifest, keyring, (database, jobs), progress).await?;
    for table in &report.tables {
        if table.result != "ok" {
            report.failures.push(format!("table {}.{}: {}", table.schema, table.name, table.result));
        }
    }
    report.phase("tables", clock);

    let clock = Instant::now();
    let restored: HashMap<(String, String), (i64, bool)> =
        session.sequences().await?.into_iter().map(|s| ((s.schema, s.name), (s.last_value, s.is_called))).collect();
    report.sequences.checked = manifest.sequences.len();
    for sequence in &manifest.sequences {
        let expected = (sequence.last_value, sequence.is_called);
        match restored.get(&(sequence.schema.clone(), sequence.name.clone())) {
            Some(found) if *found == expected => {}
            found => report.sequences.problems.push(format!(
                "sequence {}.{}: {} where the snapshot has last_value {} (is_called {})",
                sequence.schema,
                sequence.name,
                found.map_or_else(
                    || "missing".into(),
                    |(value, called)| format!("last_value {value} (is_called {called})")
                ),
                expected.0,
                expected.1
            )),
        }
    }
    report.failures.extend(report.sequences.problems.iter().cloned());
    report.phase("sequences", clock);

    let clock = Instant::now();
    let constraints = session.constraints().await?;
    progress.phase("checking constraints", Unit::Checks, Some(constraints.len() as u64));
    report.constraints.checked = constraints.len();
    for constraint in &constraints {
        let broken = session.violations(constraint, search_path).await?;
        progress.advance(1);
        if broken == 0 {
            continue;
        }
        let line = describe_broken(constraint, broken);
        if constraint.validated {
            report.constraints.problems.push(line.clone());
            report.failures.push(line);
        } else {
            report.warnings.push(format!("{line}; it is NOT VALID in the source too, which allows that"));
        }
    }
    report.phase("constraints", clock);

    let clock = Instant::now();
    progress.phase("checking indexes", Unit::Checks, None);
    match session.check_indexes(search_path).await? {
        Ok(IndexCheck { checked, problems, unchecked }) => {
            report.indexes.checked = checked;
            report.failures.extend(problems.iter().map(|p| format!("index {p}")));
            report.indexes.problems = problems;
            report.warnings.extend(unchecked);
        }
        Err(reason) => {
            report.warnings.push(format!("indexes not checked: {reason}"));
            report.indexes.skipped = Some(reason);
        }
    }
    report.phase("indexes", clock);
    Ok(())
}

fn describe_broken(constraint: &Constraint, broken: u64) -> String {
    let rows = if broken == 1 { "1 row breaks".to_string() } else { format!("{broken} rows break") };
    format!("{} constraint {:?} of {}: {rows} it", constraint.kind, constraint.name, constraint.table)
}

/// Reads every table of the snapshot (and its large objects) back on `jobs` connections, the
/// largest first, each with the backup's `COPY`: its rows in primary-key order (or as the
/// restore wrote them), digested with the repository's MAC key.
async fn prove_tables(
    session: &ProofSession,
    manifest: &Manifest,
    keyring: &AdminKeyring,
    (database, jobs): (&Database, usize),
    progress: &Shared,
) -> Result<Vec<TableProof>> {
    let restored: HashMap<(String, String), SourceTable> =
        session.tables().await?.into_iter().map(|t| ((t.schema.clone(), t.name.clone()), t)).collect();
    let mut work: Vec<(&TableManifest, Option<String>)> = manifest
        .tables
        .iter()
        .map(|table| {
            let sql = restored.get(&(table.schema.clone(), table.name.clone())).map(|found| {
                // The snapshot's columns, in its order; the restored table's primary key.
                SourceTable { columns: table.columns.clone(), ..found.clone() }.copy_out_sql()
            });
            (table, sql)
        })
        .chain(manifest.large_objects.iter().map(|objects| (objects, Some(LARGE_OBJECTS_COPY_OUT.to_string()))))
        .collect();
    work.sort_by_key(|(table, _)| std::cmp::Reverse(table.data.bytes));
    progress.phase("reading back", Unit::Bytes, Some(work.iter().map(|(t, _)| t.data.bytes).sum()));
    progress.items(work.len() as u64);
    let settings = manifest.session.as_ref();
    let mut others = Vec::new();
    for _ in 1..jobs.max(1).min(work.len()) {
        others.push(ProofSession::open(database, settings).await?);
    }
    let queue =
        Queue { work: &work, next: std::sync::atomic::AtomicUsize::new(0), results: std::sync::Mutex::default() };
    let readers = std::iter::once(session).chain(others.iter());
    futures::future::try_join_all(readers.map(|reader| queue.drain(reader, keyring, progress))).await?;
    let mut proofs = queue.results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    // A table the snapshot holds no data of (left out by the backup's table patterns) restores
    // empty: rows in it came from somewhere else (the schema's SQL).
    let in_snapshot: std::collections::HashSet<(&str, &str)> =
        manifest.tables.iter().map(|t| (t.schema.as_str(), t.name.as_str())).collect();
    for table in restored.values().filter(|t| !in_snapshot.contains(&(t.schema.as_str(), t.name.as_str()))) {
        let rows = session.row_count(table).await?;
        if rows > 0 {
            proofs.push(TableProof {
                schema: table.schema.clone(),
                name: table.name.clone(),
                rows_expected: 0,
                rows_found: Some(rows),
                result: format!("{rows} rows where the snapshot holds no data for it"),
            });
        }
    }
    proofs.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    Ok(proofs)
}

/// The tables to read back, taken one at a time by each connection.
struct Queue<'a> {
    work: &'a [(&'a TableManifest, Option<String>)],
    next: std::sync::atomic::AtomicUsize,
    results: std::sync::Mutex<Vec<TableProof>>,
}

impl Queue<'_> {
    /// Reads back tables on `reader` until none is left.
    async fn drain(&self, reader: &ProofSession, keyring: &AdminKeyring, progress: &Shared) -> Result<()> {
        while let Some((table, sql)) = self.work.get(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            let found = match sql {
                Some(sql) => Some(read_back(reader, sql, keyring, progress).await?),
                None => None,
            };
            progress.item_done(&format!("{}.{}", table.schema, table.name));
            self.results.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(judge(table, found));
        }
        Ok(())
    }
}

/// One `COPY … TO STDOUT`: its keyed digest (hex) and its rows.
async fn read_back(
    session: &ProofSession,
    sql: &str,
    keyring: &AdminKeyring,
    progress: &Shared,
) -> Result<(String, u64)> {
    let stream = session.copy_out(sql).await?;
    futures::pin_mut!(stream);
    let mut digest = keyring.mac_key().hasher();
    let mut rows = 0u64;
    while let Some(data) = stream.next().await {
        let data = data?;
        digest.update(&data);
        rows += memchr::memchr_iter(b'\n', &data).count() as u64;
        progress.advance(data.len() as u64);
    }
    Ok((digest.finalize().to_hex().to_string(), rows))
}

/// Compares what was read back with the snapshot's table.
fn judge(table: &TableManifest, found: Option<(String, u64)>) -> TableProof {
    let result = match &found {
        None => "missing from the restored database".to_string(),
        Some((_, rows)) if *rows != table.rows => {
            format!("{rows} rows read back where the snapshot has {}", table.rows)
        }
        Some((digest, _)) if *digest != table.data.digest => {
            "its rows read back differ from the snapshot's (keyed digest)".to_string()
        }
        Some(_) => "ok".to_string(),
    };
    TableProof {
        schema: table.schema.clone(),
        name: table.name.clone(),
        rows_expected: table.rows,
        rows_found: found.map(|(_, rows)| rows),
        result,
    }
}
