//! `backup`: read every table inside one snapshot, store only new chunks, commit a snapshot
//! on every target.
//!
//! Stages, joined by bounded channels so memory stays flat:
//! table readers (async, one connection each, sharing the exported snapshot)
//! → encoders (blocking threads: chunk, keyed hash, dedup per target, zstd once)
//! → one pack writer per target (seal with age, upload, at most two uploads in flight).
//! Then, per target, the index of its new packs, then its snapshot object: the commit.
//!
//! The database is read once whatever the number of targets. A target that fails (unreachable,
//! credentials refused, disk full) is dropped from the run without stopping the others, and
//! is left without a snapshot; the report says which targets hold the new snapshot.

pub mod alarm;
mod commit;
mod compress;
mod dedup;
mod encode;
mod read;
mod upload;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::postgres::{self, Database, SnapshotSession, SourceTable};
use crate::progress::{Shared, Unit};
use crate::repo::{self, Keyring, Manifest, SealedManifest};
use crate::repo_set::RepoSet;
use crate::trust::SnapshotMark;

use crate::table_filter::TableFilter;
use commit::{Chain, all_failed, commit};
use compress::{
    Compressors, STRONG_BUDGET, STRONG_WHEN_NEW_IS_AT_MOST_ONE_IN, StoredDictionary, TRAINING_BYTES, TrainedDictionary,
    train_dictionary,
};
use dedup::{KnownChunks, TargetState};
use encode::{EncoderContext, FRAME_BYTES, HeldChunks, RawChunk, RawFrame, StreamEncoder, encode_bytes};
use read::read_everything;
use upload::{NewFrame, PackUploads, Stored, TargetSink};

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The source database.
    pub database: Database,
    /// Parallel table readers.
    pub jobs: usize,
    /// `schema.table` globs to include (all when empty).
    pub include: Vec<String>,
    /// `schema.table` globs to leave out.
    pub exclude: Vec<String>,
    /// Store a snapshot even when no table is selected (the schema alone); refused otherwise,
    /// since a nightly backup of nothing is almost always a mistake in the patterns.
    pub allow_empty: bool,
    /// pg_dump to use (found automatically when `None`).
    pub pg_dump: Option<PathBuf>,
    /// Name of this host, recorded in the manifest.
    pub hostname: String,
    /// Labels recorded in the manifest, to choose snapshots by (`SnapshotFilter`).
    pub tags: Vec<String>,
    /// New chunks per index file ([`INDEX_CHUNKS`] unless tuning or testing), and per
    /// generation of the chunks a backup remembers sending ([`SentChunks`]).
    pub index_chunks: usize,
    /// Entries of a target's index kept in memory; past that the index is a temporary file
    /// ([`repo::INDEX_IN_MEMORY`] unless testing).
    pub index_in_memory: usize,
    /// The newest snapshot this host wrote or authenticated (its pin's high-water mark): the
    /// new snapshot follows it even if storage lost it, and its absence is reported.
    pub newest_known: Option<SnapshotMark>,
    /// Snapshots earlier backups on this host looked at and found no newer than
    /// `newest_known` (its pin's record, [`crate::trust::Pin::settled`]): their headers are not
    /// read again to find the predecessor. Ignored without `newest_known`.
    pub settled: BTreeSet<crate::repo::SnapshotId>,
    /// Snapshots earlier backups on this host stored elsewhere but not on a target (its pin's
    /// record, [`crate::trust::Pin::missed`]): recorded on the target when this one reaches it.
    pub missed: BTreeMap<String, Vec<crate::repo::ForgottenSnapshot>>,
    /// The time to record instead of the database's clock at the snapshot (old dumps
    /// imported, a history simulated); snapshots sort by it and retention buckets by it.
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    /// The data-loss alarm's rules (None: `--no-alarm`).
    pub alarm: Option<alarm::AlarmRules>,
    /// Packs whose used chunks are stored again, and packs not reused
    /// ([`crate::sparse_packs`]).
    pub rewrite: crate::sparse_packs::RewritePlan,
}

/// What a backup did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupReport {
    /// The new snapshot (the same id on every target).
    pub snapshot_id: crate::repo::SnapshotId,
    /// Database time of the snapshot.
    pub time: chrono::DateTime<chrono::Utc>,
    /// Tables backed up.
    pub tables: usize,
    /// Rows backed up.
    pub rows: u64,
    /// Bytes of COPY data, large objects and schema read: the snapshot's size, as `snapshots`
    /// shows it.
    pub bytes_read: u64,
    /// Chunks referenced.
    pub chunks: usize,
    /// Chunks that were new to at least one target (compressed once).
    pub new_chunks: usize,
    /// Bytes added to all targets together (each target's `bytes_added`, summed).
    pub bytes_added: u64,
    /// Bytes of all objects the snapshot references, on the first target that holds it.
    pub bytes_total: u64,
    /// Its place in the repository's chain: the predecessor it names and its sequence number.
    pub parent: Option<crate::repo::SnapshotId>,
    /// Sequence number (one more than the parent's).
    pub sequence: u64,
    /// What the backup noticed about the repository and stored anyway (each also logged).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The newest snapshot this host knew of, found deleted from storage without a record
    /// explaining it (a rollback), or replaced there by something that does not read (the
    /// warnings say which). The backup is stored all the same, and exits 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_snapshot: Option<crate::repo::SnapshotId>,
    /// What the data-loss alarm found (the snapshot is flagged when there is any).
    pub alarms: Vec<crate::repo::TableAlarm>,
    /// Rows of each table backed up (schema, table, rows), for metrics.
    #[serde(skip)]
    pub table_rows: Vec<(String, String, u64)>,
    /// One entry per target, in the order given.
    pub targets: Vec<TargetReport>,
    /// The snapshots the next backup need not look at again, the new one included: for the
    /// pin, beside the new high-water mark ([`BackupOptions::settled`]).
    #[serde(skip)]
    pub settled: BTreeSet<crate::repo::SnapshotId>,
    /// What the next backup of the database rewrites and avoids, as the first target that
    /// took the snapshot saw it ([`crate::sparse_packs`]); `None` when not counted
    /// ([`crate::sparse_packs::RewritePlan::counting`]).
    #[serde(skip)]
    pub sparse: Option<crate::sparse_packs::Remembered>,
}

impl BackupReport {
    /// The new snapshot's place in the chain, for the high-water mark.
    pub fn mark(&self) -> SnapshotMark {
        SnapshotMark { id: self.snapshot_id.clone(), sequence: self.sequence, time: self.time }
    }

    /// Targets that did not receive the snapshot.
    pub fn failed_targets(&self) -> usize {
        self.targets.iter().filter(|t| t.error.is_some()).count()
    }

    /// Targets that received it and hold no whole keys (or admin keys) object: each cannot be
    /// unlocked (or rekeyed) on its own until mended.
    pub fn damaged_targets(&self) -> usize {
        self.targets.iter().filter(|t| !t.problems.is_empty()).count()
    }

    /// The new snapshot as a missed record names it, for the pin of a target it did not reach
    /// ([`BackupOptions::missed`]).
    pub fn as_missed(&self) -> crate::repo::ForgottenSnapshot {
        crate::repo::ForgottenSnapshot {
            id: self.snapshot_id.clone(),
            sequence: self.sequence,
            time: self.time,
            parent: self.parent.clone(),
        }
    }
}

/// What happened on one target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetReport {
    /// The target.
    pub location: String,
    /// True when the snapshot is committed there.
    pub ok: bool,
    /// Why not, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Chunks this target lacked.
    pub new_chunks: usize,
    /// Bytes this backup added to it: new packs, dictionaries and indexes, and the snapshot
    /// object (what `snapshots` shows as the snapshot's ADDED there).
    pub bytes_added: u64,
    /// Bytes of all objects the snapshot references there.
    pub bytes_total: u64,
    /// Snapshots earlier backups did not get here, recorded now ([`BackupOptions::missed`]).
    pub recorded_missed: Vec<crate::repo::SnapshotId>,
    /// Small packs ([`crate::repo::is_small_pack`]) the snapshot lists there: each night adds
    /// a few (its increments, one pack per table), and a restore reads every one, so past
    /// [`SMALL_PACKS_ADVISED`] restores slow down until `prune --identity` merges them.
    pub small_packs: usize,
    /// Bytes of chunks the target held and the backup stored again, from packs its snapshot
    /// used little of ([`crate::sparse_packs`]).
    pub rewritten_bytes: u64,
    /// Why the target cannot be unlocked (or rekeyed) on its own: none of its keys (admin keys)
    /// objects is whole. The snapshot is stored; `copy --repair` mends it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl TargetReport {
    /// A target the snapshot did not reach, and why.
    fn failed(location: &str, error: String) -> TargetReport {
        TargetReport {
            location: location.to_string(),
            ok: false,
            error: Some(error),
            new_chunks: 0,
            bytes_added: 0,
            bytes_total: 0,
            recorded_missed: Vec::new(),
            small_packs: 0,
            rewritten_bytes: 0,
            problems: Vec::new(),
        }
    }
}

/// Small packs past which a backup advises `prune --identity` (docs/OPERATIONS.md, *Prune*):
/// at 120 nights of the history benchmark (the newest snapshot listed 675 packs) `restore latest` took
/// 1.17-1.4× the time it takes from a repository holding only that snapshot, and 1.05× after
/// the merge (BENCHMARKS.md).
pub const SMALL_PACKS_ADVISED: usize = 256;

/// Runs a backup of `options.database` into every copy of the repository in `targets`.
pub async fn run(
    targets: &RepoSet,
    keyring: &Keyring,
    options: &BackupOptions,
    locks: &crate::lock::Locks,
    progress: Shared,
) -> Result<BackupReport> {
    targets.require_one_generation()?;
    let first = targets.first();
    let filter = TableFilter::new(&options.include, &options.exclude)?;

    let mut states = Vec::new();
    for repository in targets.repositories() {
        let reuse = if locks.took_over_exclusive(repository.target.location()) {
            tracing::warn!(
                "{}: the lock was taken over from a stale exclusive holder (a prune that may only have \
                 stalled): this backup reuses only packs a snapshot lists",
                repository.target.location()
            );
            dedup::Reuse::ListedPacks
        } else {
            dedup::Reuse::PresentPacks
        };
        match TargetState::survey(repository, keyring, options.index_in_memory, reuse, &options.rewrite.avoid).await {
            Ok(state) => states.push(state),
            Err(error) => {
                targets.warn(repository.target.location(), &error);
                states.push(TargetState::failed(repository, &error));
            }
        }
    }
    if states.iter().all(|s| s.error.is_some()) {
        return Err(all_failed(&states, targets.left_out()));
    }
    let mut warnings = Vec::new();
    let chain = Chain::find(
        &states,
        keyring,
        (options.newest_known.as_ref(), &options.settled, &options.missed),
        &mut warnings,
    )
    .await;

    let session = SnapshotSession::begin(&options.database).await?;
    let time = options.time.unwrap_or(session.time);
    let pg_dump = postgres::find_pg_dump(options.pg_dump.as_deref(), session.server_version.1 / 10000)?;
    let all_tables = session.tables().await?;
    let names: Vec<String> = all_tables.iter().map(|t| format!("{}.{}", t.schema, t.name)).collect();
    let unmatched = filter.unmatched_includes(&names);
    if !unmatched.is_empty() {
        return Err(Error::NoTableMatches {
            patterns: unmatched.iter().map(ToString::to_string).collect(),
            database: options.database.to_string(),
        });
    }
    for pattern in filter.unmatched_excludes(&names) {
        let warning = format!("exclude pattern {pattern:?} matches no table of {}", options.database);
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    for pattern in options.alarm.iter().flat_map(|rules| rules.unmatched(&names)) {
        let warning = format!("--alarm-table pattern {pattern:?} matches no table of {}", options.database);
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    let tables: Vec<SourceTable> = all_tables.into_iter().filter(|t| filter.matches(&t.schema, &t.name)).collect();
    if tables.is_empty() && !options.allow_empty {
        return Err(Error::NoTables { database: options.database.to_string(), of: names.len() });
    }
    filter.check_foreign_keys(&session.foreign_keys().await?)?;
    let sequences = session.sequences().await?;
    let materialized_views = session.populated_materialized_views().await?;
    let session_settings = session.settings().await?;
    let roles = session.roles().await?;
    let database_object = session.database_object().await?;
    tracing::info!(tables = tables.len(), snapshot = %session.snapshot, "reading database {}", options.database);

    let dictionaries: Arc<Mutex<Vec<StoredDictionary>>> = Arc::default();
    let mut sinks = Vec::new();
    let mut writers = Vec::new();
    let mut known_sets = Vec::new();
    for state in &states {
        let known = Arc::new(KnownChunks::new(state.held.clone(), options.index_chunks, &options.rewrite));
        known_sets.push(known.clone());
        let (sender, receiver) = mpsc::channel::<Arc<NewFrame>>(16);
        let alive = state.error.is_none();
        writers.push(alive.then(|| {
            let writer = PackUploads {
                target: state.repository.target.clone(),
                data_recipients: state.repository.data_recipients(),
                index_sealing: (state.repository.metadata_recipients(), keyring.index_mac_key()),
                pack_size: state.repository.config.pack_size,
                index_chunks: options.index_chunks.max(1),
                dictionaries: dictionaries.clone(),
            };
            tokio::spawn(writer.run(receiver))
        }));
        sinks.push(TargetSink { known, packs: sender, alive: AtomicBool::new(alive) });
    }
    let sinks = Arc::new(sinks);
    let (compressors, compressor) = Compressors::start(first.config.compression_level, &sinks);
    let context = EncoderContext {
        seed: keyring.chunker_seed(),
        params: first.config.chunking,
        chunk_id_key: keyring.chunk_id_key(),
        mac_key: keyring.mac_key(),
        targets: sinks,
        compressor,
        level: first.config.compression_level,
        recipients: Arc::new(first.data_recipients()),
        dictionaries: dictionaries.clone(),
        strong_bytes: Arc::default(),
        tally: Arc::default(),
    };
    let tally = context.tally.clone();

    // The last backup of this database: what the alarm compares with, and what the tables
    // held then (or their size on disk, for a table new since) for the bar. Not read when
    // neither is wanted (cron with --no-alarm).
    let previous = if progress.is_shown() || options.alarm.is_some() {
        previous_snapshot(&states, keyring, &options.database.name(), chain.parent.as_ref()).await
    } else {
        None
    };
    let previous_sizes: HashMap<(String, String), u64> = previous
        .iter()
        .flat_map(|(_, manifest)| manifest.tables.iter().chain(manifest.large_objects.iter()))
        .map(|table| ((table.schema.clone(), table.name.clone()), table.data.bytes))
        .collect();
    let previous_size = |schema: &str, name: &str| previous_sizes.get(&(schema.to_string(), name.to_string())).copied();
    let expected_bytes: u64 = tables
        .iter()
        .map(|t| previous_size(&t.schema, &t.name).unwrap_or_else(|| u64::try_from(t.size).unwrap_or(0)))
        .chain(previous_size("pg_catalog", "pg_largeobject"))
        .sum();
    progress.phase("reading", Unit::Bytes, Some(expected_bytes));
    progress.items(tables.len() as u64);
    let read = match read_everything(&session, &pg_dump, options, tables, &context, &progress).await {
        Ok(read) => {
            let manifest = Manifest {
                version: repo::FORMAT_VERSION,
                database: options.database.name(),
                server_version: session.server_version.0.clone(),
                hostname: options.hostname.clone(),
                tags: options.tags.clone(),
                pre_data: read.pre_data,
                post_data: read.post_data,
                tables: read.tables,
                sequences,
                materialized_views,
                large_objects: read.large_objects,
                admin_only: None,
                alarms: Vec::new(),
                session: Some(session_settings),
                roles: Some(roles),
                database_object: Some(database_object),
            };
            warnings.extend(read.warnings);
            Ok((manifest, read.bytes_read))
        }
        Err(error) => Err(error),
    };
    drop(context);
    // The compressors finish the queue, then drop their pack senders, closing the writers' input.
    let compressed_chunks = compressors.finish().await;
    tracing::debug!(
        bytes = tally.list_bytes.load(Ordering::Relaxed),
        new_bytes = tally.new_list_bytes.load(Ordering::Relaxed),
        "chunk-id lists stored"
    );
    // Closing the snapshot transaction: every reader has finished.
    let _ = session.end().await;
    let mut written = Vec::new();
    for writer in writers {
        written.push(match writer {
            Some(handle) => Some(handle.await.expect("pack writers do not panic")),
            None => None,
        });
    }
    let dictionaries = std::mem::take(&mut *dictionaries.lock().expect("dictionary list lock is never poisoned"));
    let (mut manifest, bytes_read) = match read {
        // The encoders saw every target's writer gone: what each writer failed with is the error.
        Err(Error::EveryTargetFailed(reasons)) if reasons.is_empty() => {
            for (state, written) in states.iter_mut().zip(&written) {
                if let (None, Some(Err(error))) = (&state.error, written) {
                    state.error = Some(error.to_string());
                }
            }
            return Err(all_failed(&states, targets.left_out()));
        }
        read => read?,
    };
    if options.alarm.is_some() && previous.is_none() && chain.parent.is_some() {
        let warning = format!(
            "data-loss alarm: no earlier snapshot of database {} among the newest {SIZING_SNAPSHOTS} to compare with",
            options.database.name()
        );
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    if let (Some(rules), Some((since, before))) = (&options.alarm, &previous) {
        manifest.alarms = alarm::compare(before, since, &manifest.tables, |s, n| filter.matches(s, n), rules);
    }
    let sealed = SealedManifest::seal(&mut manifest, first);

    // The sets of chunks sent go before the commits, which build each target's index.
    let reused: Vec<Vec<u32>> = known_sets.iter().map(|known| known.reused_packs().collect()).collect();
    let mut reports = Vec::new();
    let mut sparse = None;
    for (((state, written), reused), known) in states.iter_mut().zip(written).zip(reused).zip(&known_sets) {
        let outcome = match (written, &state.error) {
            (Some(Ok(stored)), None) => {
                let missed = crate::trust::missed_at(&options.missed, state.repository.target.location());
                commit(state, stored, reused, &sealed, &dictionaries, (keyring, locks), (time, &chain, &missed)).await
            }
            (Some(Err(error)), _) => Err(error),
            (_, Some(message)) => Err(Error::Invalid(message.clone())),
            (None, None) => unreachable!("a target without a writer has an error"),
        };
        reports.push(match outcome {
            Ok(mut report) => {
                report.rewritten_bytes = known.rewritten.load(Ordering::Relaxed);
                if sparse.is_none() && options.rewrite.counting {
                    sparse = Some(remembered(state, known, &options.rewrite, bytes_read));
                }
                report
            }
            Err(error) => {
                targets.warn(state.repository.target.location(), &error);
                state.error = Some(error.to_string());
                TargetReport::failed(state.repository.target.location(), error.to_string())
            }
        });
    }
    if states.iter().all(|s| s.error.is_some()) {
        return Err(all_failed(&states, targets.left_out()));
    }
    // Keys unlock from the first copy whose keys objects read, so a copy whose keys objects
    // storage damaged or replaced still takes the snapshot: one damaged of two is a warning
    // (`verify` reports it); none whole left, the copy could not be unlocked on its own, and
    // the night says so (exit 3).
    let checks = states.iter().map(|state| async move {
        if state.error.is_some() {
            return Vec::new();
        }
        let location = state.repository.target.location();
        let check = state.repository.check_keys_objects().await;
        for (key, why) in &check.damaged {
            // Most errors name their object already: say it once.
            let what = if why.contains(key.as_str()) { why.clone() } else { format!("{key}: {why}") };
            tracing::warn!("{location}: {what} (`crmvault verify` reports it; `copy --repair` mends it)");
        }
        check
            .none_whole
            .iter()
            .map(|kind| {
                format!(
                    "none of its {} objects ({}) is whole: it cannot be {} on its own; `crmvault copy --repair \
                     --from <a whole target> --to {location}` writes them again",
                    kind.name(),
                    kind.objects(&state.repository.config).join(", "),
                    kind.needed_to()
                )
            })
            .collect()
    });
    for (report, problems) in reports.iter_mut().zip(futures::future::join_all(checks).await) {
        report.problems = problems;
    }
    reports.extend(
        targets.left_out().iter().map(|left_out| TargetReport::failed(&left_out.location, left_out.reason.clone())),
    );
    let mut settled = chain.settled;
    settled.insert(sealed.id.clone());

    Ok(BackupReport {
        snapshot_id: sealed.id.clone(),
        time,
        tables: manifest.tables.len(),
        rows: manifest.tables.iter().map(|t| t.rows).sum(),
        bytes_read,
        chunks: tally.chunks.load(Ordering::Relaxed),
        new_chunks: compressed_chunks,
        bytes_added: reports.iter().map(|t| t.bytes_added).sum(),
        bytes_total: reports.iter().find(|t| t.ok).map_or(0, |t| t.bytes_total),
        parent: chain.parent,
        sequence: chain.sequence,
        warnings,
        deleted_snapshot: chain.deleted,
        alarms: manifest.alarms.clone(),
        table_rows: manifest.tables.iter().map(|t| (t.schema.clone(), t.name.clone(), t.rows)).collect(),
        targets: reports,
        settled,
        sparse,
    })
}

/// What the next backup of the database rewrites and avoids, as one target that took the
/// snapshot saw it: the packs avoided and rewritten that are still there, and the sparse packs
/// of the new snapshot.
fn remembered(
    state: &TargetState<'_>,
    known: &KnownChunks,
    plan: &crate::sparse_packs::RewritePlan,
    bytes: u64,
) -> crate::sparse_packs::Remembered {
    let sparse = known.sparse_packs().unwrap_or_else(|error| {
        tracing::debug!("sparse packs not counted: {error}");
        Vec::new()
    });
    let present = |id: &&String| id.parse().is_ok_and(|id| state.held.present_packs.contains_key(&id));
    let avoid = plan.avoid.iter().cloned().chain(known.rewritten_whole()).filter(|id| present(&id)).collect();
    crate::sparse_packs::Remembered { avoid, sparse, bytes }
}

/// Snapshots tried, newest first, for the last backup of the same database: not worth reading
/// every manifest of a repository shared by many databases (beyond them, the alarm has nothing
/// to compare with, and says so).
const SIZING_SNAPSHOTS: usize = 32;

/// The newest snapshot of `database`, opened (its MAC proven): what the data-loss alarm
/// compares with, and about what this backup will read. None for a first backup. The chain's
/// `parent` (found already, from the headers new since the last backup) is read first; only
/// when it is of another database (a shared repository) are the newest headers looked at.
async fn previous_snapshot(
    states: &[TargetState<'_>],
    keyring: &Keyring,
    database: &str,
    parent: Option<&crate::repo::SnapshotId>,
) -> Option<(crate::repo::SnapshotId, Manifest)> {
    let healthy = || states.iter().filter(|s| s.error.is_none()).map(|s| s.repository);
    for repository in healthy() {
        let Some(parent) = parent else { break };
        match repository.read_snapshot(parent).await.and_then(|sealed| sealed.open(keyring)) {
            Ok(manifest) if manifest.database == database => return Some((parent.clone(), manifest)),
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let repository = healthy().next()?;
    let newest_first = repository.snapshots_newest_first().await.ok()?;
    for (_, id) in newest_first.into_iter().take(SIZING_SNAPSHOTS) {
        let Ok(manifest) = repository.read_snapshot(&id).await.and_then(|sealed| sealed.open(keyring)) else {
            continue;
        };
        if manifest.database == database {
            return Some((id, manifest));
        }
    }
    None
}

/// An index file is written once the packs stored since the last one hold this many chunks,
/// so that a large backup does not hold every new chunk's record (56 bytes) to the end; one
/// index file of 65 536 chunks is about 2.2 MB. Each is written after its packs and the
/// dictionaries it names, so it is true whenever it exists, and a backup that dies midway
/// leaves indexes the next one reuses.
pub const INDEX_CHUNKS: usize = 1 << 16;
