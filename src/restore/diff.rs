//! `diff`: what changed between two snapshots, table by table: rows added, removed and
//! changed, matched by primary key (tables without one, and snapshots from builds that did not
//! record keys: by whole row).
//!
//! Its cost follows what changed, not the database. A table whose top list chunks are the same
//! in both snapshots is the same table, and nothing of it is read. Otherwise both chunk lists
//! are read and matched: a chunk both snapshots hold has the same rows in both, so only the
//! chunks one of them holds alone are fetched and their rows compared.
//!
//! That holds where the chunks meet at row ends. Chunks are cut at row ends but inside a row
//! longer than the largest chunk (`chunk.rs`), so wherever the matched chunks stop running side
//! by side, the chunk before is fetched too and must end a row: when one does not, the table is
//! compared whole, every chunk of both. A table is proven chunk by chunk (every chunk's id is
//! its keyed hash, and the lists' ids come from the authenticated manifest); one read whole has
//! its digest and row count checked too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::crypto::{ChunkId, MacKey};
use crate::error::{Error, Result};
use crate::fetch::{ChunkReader, stream_chunk_ids};
use crate::progress::Progress;
use crate::repo::{AdminKeyring, Keyring, Manifest, SnapshotFilter, SnapshotId, StreamManifest, TableManifest};
use crate::repo_set::RepoSet;
use crate::table_filter::TableFilter;
use crate::trust::SnapshotMark;

use super::rows::{self, Lines};
use super::select::{Choice, choose_snapshot};

/// What to compare.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// The older snapshot: `latest` or an id prefix.
    pub from: String,
    /// The newer snapshot.
    pub to: String,
    /// Which snapshots `latest` chooses among.
    pub filter: SnapshotFilter,
    /// Table patterns to compare (all when empty), as backup's `--table`.
    pub include: Vec<String>,
    /// Table patterns left out.
    pub exclude: Vec<String>,
    /// List the keys of the rows added, removed and changed, not only their numbers.
    pub keys: bool,
    /// Chunks fetched and decoded in parallel.
    pub jobs: usize,
    /// The newest snapshot the caller knows of.
    pub newest_known: Option<SnapshotMark>,
}

/// One of the two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// Its id.
    pub snapshot_id: SnapshotId,
    /// Its time.
    pub time: chrono::DateTime<chrono::Utc>,
    /// Its database.
    pub database: String,
}

/// What became of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Same rows.
    Unchanged,
    /// Rows added, removed or changed, or its columns changed.
    Changed,
    /// Only the newer snapshot has it.
    Added,
    /// Only the older snapshot has it.
    Removed,
}

/// A row's key: the key columns' values (the whole row's, matched by whole row), NULL as `None`.
pub type Key = Vec<Option<String>>;

/// The keys of the rows that differ (`--keys`), each list in its snapshot's row order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Keys {
    /// Rows only the newer snapshot has.
    pub added: Vec<Key>,
    /// Rows only the older snapshot has.
    pub removed: Vec<Key>,
    /// Rows whose key both have, with other values.
    pub changed: Vec<Key>,
}

/// One table's difference.
#[derive(Debug, Clone, Serialize)]
pub struct TableDiff {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// What became of it.
    pub status: Status,
    /// The columns rows were matched by: the primary key, or every column (`by_key` false).
    pub key_columns: Vec<String>,
    /// Whether rows were matched by primary key; otherwise by whole row, and an update counts
    /// as one row removed and one added.
    pub by_key: bool,
    /// Why rows were matched whole, when they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whole_rows_because: Option<String>,
    /// Its columns differ between the snapshots (rows were compared on the columns both have).
    pub columns_changed: bool,
    /// Rows only the newer snapshot has.
    pub added: u64,
    /// Rows only the older snapshot has.
    pub removed: u64,
    /// Rows both have by key, with other values.
    pub changed: u64,
    /// The keys themselves, with `--keys`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Keys>,
}

/// What `diff` found.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// The older snapshot.
    pub from: Side,
    /// The newer snapshot.
    pub to: Side,
    /// The schema (pg_dump's pre- and post-data) differs.
    pub schema_changed: bool,
    /// Every table either snapshot has that the patterns let through, in schema and name order.
    pub tables: Vec<TableDiff>,
    /// Data chunks the tables that changed have, both snapshots together.
    pub chunks: u64,
    /// Data chunks fetched (the rest were the same in both snapshots and not read).
    pub chunks_read: u64,
    /// Bytes of COPY text those chunks held.
    pub bytes_read: u64,
    /// What the reader should know (a snapshot passed over, two databases compared).
    pub warnings: Vec<String>,
    /// The newer of the two snapshots' places in the chain, proven: the caller's high-water
    /// mark may advance.
    #[serde(skip)]
    pub newest: SnapshotMark,
}

/// Compares two snapshots.
pub async fn run(
    targets: &RepoSet,
    keyring: &AdminKeyring,
    options: &DiffOptions,
    progress: &dyn Progress,
) -> Result<DiffReport> {
    let filter = TableFilter::new(&options.include, &options.exclude)?;
    let mut warnings = Vec::new();
    let choice = |snapshot| Choice {
        snapshot,
        filter: &options.filter,
        newest_known: options.newest_known.as_ref(),
        index_in_memory: crate::repo::INDEX_IN_MEMORY,
    };
    let from = choose_snapshot(targets, keyring, choice(&options.from), &mut warnings).await?;
    let (from, from_sources, from_mark) = (from.manifest, from.sources, from.mark);
    let to = choose_snapshot(targets, keyring, choice(&options.to), &mut warnings).await?;
    let (to, to_sources, to_mark) = (to.manifest, to.sources, to.mark);
    if from.database != to.database {
        let warning =
            format!("the snapshots are of two databases, {} and {}: compared all the same", from.database, to.database);
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    // A chunk is looked for in the newer snapshot's indexes first, then the older one's.
    let sources = to_sources.into_iter().chain(from_sources).collect();
    let reader = ChunkReader::with_sources(sources, Keyring::clone(keyring), options.jobs * 2 + 2);
    let names: Vec<String> = from.tables.iter().chain(&to.tables).map(|t| format!("{}.{}", t.schema, t.name)).collect();
    let missing = filter.unmatched_includes(&names);
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "no table of either snapshot matches {} (`crmvault ls` lists a snapshot's tables)",
            missing.join(", ")
        )));
    }
    // The repository's chunk sizes, or today's default if smaller (the safe side).
    let largest = targets.first().config.chunking.max.min(crate::chunk::ChunkParams::default().max);
    let diff = Differ {
        reader: &reader,
        ends_a_row_below: u32::try_from(largest * 2).unwrap_or(u32::MAX),
        mac_key: keyring.mac_key(),
        versions: (from.version, to.version),
        keys: options.keys,
        jobs: options.jobs.max(1),
        progress,
        chunks: AtomicU64::new(0),
        chunks_read: AtomicU64::new(0),
        bytes_read: AtomicU64::new(0),
    };
    // Two tables at once: a table's reads are a chunk here and there, each decoded alone.
    let pairs: Vec<_> = pair_tables(&from, &to)
        .into_iter()
        .filter(|(old, new)| {
            let table = old.or(*new).expect("a pair has a table");
            filter.matches(&table.schema, &table.name)
        })
        .collect();
    let tables: Vec<TableDiff> = futures::stream::iter(pairs.into_iter().map(|(old, new)| diff.table(old, new)))
        .buffered(2)
        .try_collect()
        .await?;
    let newest = if from_mark.sequence > to_mark.sequence { from_mark.clone() } else { to_mark.clone() };
    Ok(DiffReport {
        newest,
        from: Side { snapshot_id: from_mark.id, time: from_mark.time, database: from.database.clone() },
        to: Side { snapshot_id: to_mark.id, time: to_mark.time, database: to.database.clone() },
        schema_changed: !same_stream(&from.pre_data, &to.pre_data) || !same_stream(&from.post_data, &to.post_data),
        tables,
        chunks: diff.chunks.load(Relaxed),
        chunks_read: diff.chunks_read.load(Relaxed),
        bytes_read: diff.bytes_read.load(Relaxed),
        warnings,
    })
}

/// The tables of both snapshots, paired by schema and name, in that order.
fn pair_tables<'m>(
    from: &'m Manifest,
    to: &'m Manifest,
) -> Vec<(Option<&'m TableManifest>, Option<&'m TableManifest>)> {
    type Pair<'m> = (Option<&'m TableManifest>, Option<&'m TableManifest>);
    let mut pairs: std::collections::BTreeMap<(&str, &str), Pair<'m>> = std::collections::BTreeMap::new();
    for table in &from.tables {
        pairs.entry((&table.schema, &table.name)).or_default().0 = Some(table);
    }
    for table in &to.tables {
        pairs.entry((&table.schema, &table.name)).or_default().1 = Some(table);
    }
    pairs.into_values().collect()
}

/// Whether two streams are the same bytes: by digest where the manifest has it (an admin's),
/// else by their top list chunks.
fn same_stream(a: &StreamManifest, b: &StreamManifest) -> bool {
    if !a.digest.is_empty() && !b.digest.is_empty() {
        return a.digest == b.digest && a.bytes == b.bytes;
    }
    a.lists == b.lists && a.list_levels == b.list_levels && a.bytes == b.bytes
}

/// How rows of one table are matched across the snapshots.
struct Matching {
    /// Per snapshot (older, newer): the fields compared, in the same order on both sides.
    compared: [Vec<usize>; 2],
    /// Per snapshot: the key's fields (empty: the whole compared row is the key).
    key: [Vec<usize>; 2],
    /// Every field is compared, in order, on both sides: the row's text is hashed as it is.
    whole_line: bool,
}

impl Matching {
    /// The key of a row of `side`, as COPY text fields joined by tabs.
    fn key(&self, side: usize, line: &[u8]) -> Vec<u8> {
        let fields = if self.key[side].is_empty() { &self.compared[side] } else { &self.key[side] };
        if self.whole_line && self.key[side].is_empty() {
            return line.to_vec();
        }
        project(line, fields)
    }

    /// A hash of the compared values of a row of `side`.
    fn value(&self, side: usize, line: &[u8]) -> [u8; 16] {
        let hash =
            if self.whole_line { blake3::hash(line) } else { blake3::hash(&project(line, &self.compared[side])) };
        hash.as_bytes()[..16].try_into().expect("16 bytes")
    }
}

/// The fields `at` of a row, joined by tabs (a field holds no raw tab).
fn project(line: &[u8], at: &[usize]) -> Vec<u8> {
    let fields: Vec<&[u8]> = rows::fields(line).collect();
    let mut out = Vec::with_capacity(line.len());
    for (i, &field) in at.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        out.extend_from_slice(fields.get(field).copied().unwrap_or(b"\\N"));
    }
    out
}

/// A key as the report shows it: each field decoded.
fn shown(key: &[u8]) -> Key {
    rows::fields(key).map(rows::copy_value).collect()
}

/// Which chunks of one snapshot's stream are read.
struct Plan {
    /// The stream's chunks, in order.
    ids: Vec<ChunkId>,
    /// Chunks only this snapshot has: their rows are compared.
    needed: Vec<bool>,
    /// Chunks both have, after which the two snapshots' chunks stop running side by side:
    /// each must end a row.
    probes: Vec<usize>,
}

/// Matches two chunk lists: the k-th occurrence of an id in one with the k-th in the other.
fn plan(old: Vec<ChunkId>, new: Vec<ChunkId>) -> [Plan; 2] {
    fn occurrences(ids: &[ChunkId]) -> HashMap<ChunkId, Vec<usize>> {
        let mut at: HashMap<ChunkId, Vec<usize>> = HashMap::new();
        for (position, id) in ids.iter().enumerate() {
            at.entry(*id).or_default().push(position);
        }
        at
    }
    let in_new = occurrences(&new);
    let mut matched_old = vec![None; old.len()];
    let mut matched_new = vec![None; new.len()];
    let mut seen: HashMap<ChunkId, usize> = HashMap::new();
    for (position, id) in old.iter().enumerate() {
        let nth = seen.entry(*id).or_default();
        if let Some(&other) = in_new.get(id).and_then(|positions| positions.get(*nth)) {
            matched_old[position] = Some(other);
            matched_new[other] = Some(position);
        }
        *nth += 1;
    }
    let side = |ids: Vec<ChunkId>, matched: Vec<Option<usize>>| {
        let needed = matched.iter().map(Option::is_none).collect();
        let probes = (0..ids.len().saturating_sub(1))
            .filter(|&p| matched[p].is_some_and(|other| matched[p + 1] != Some(other + 1)))
            .collect();
        Plan { ids, needed, probes }
    };
    [side(old, matched_old), side(new, matched_new)]
}

/// Compares tables, counting what it reads.
struct Differ<'a> {
    reader: &'a ChunkReader,
    /// A chunk shorter than this ends a row: the chunker cuts inside a row only past twice its
    /// largest size (`chunk.rs`), so such a probe need not be read.
    ends_a_row_below: u32,
    /// The key of stream digests.
    mac_key: MacKey,
    /// Manifest versions of the older and the newer snapshot (how their lists read).
    versions: (u32, u32),
    keys: bool,
    jobs: usize,
    progress: &'a dyn Progress,
    chunks: AtomicU64,
    chunks_read: AtomicU64,
    bytes_read: AtomicU64,
}

/// Rows of the older snapshot by key: where in its order, and a hash of the compared values.
type Older = HashMap<Vec<u8>, (u64, [u8; 16])>;
/// Rows of the older snapshot matched whole: how many of each, and where the first was.
type OlderRows = HashMap<Vec<u8>, (u64, u64)>;

impl Differ<'_> {
    async fn table(&self, old: Option<&TableManifest>, new: Option<&TableManifest>) -> Result<TableDiff> {
        let table = new.or(old).expect("a pair has a table");
        let mut diff = TableDiff {
            schema: table.schema.clone(),
            name: table.name.clone(),
            status: Status::Unchanged,
            key_columns: Vec::new(),
            by_key: false,
            whole_rows_because: None,
            columns_changed: false,
            added: 0,
            removed: 0,
            changed: 0,
            keys: self.keys.then(Keys::default),
        };
        let (old, new) = match (old, new) {
            (Some(old), Some(new)) => (old, new),
            (None, Some(new)) => return self.whole_side(diff, new, 1).await,
            (Some(old), None) => return self.whole_side(diff, old, 0).await,
            (None, None) => unreachable!("a pair has a table"),
        };
        let matching = Self::matching(&mut diff, old, new);
        if !diff.columns_changed && same_stream(&old.data, &new.data) && old.rows == new.rows {
            return Ok(diff);
        }
        let old_ids: Vec<ChunkId> = stream_chunk_ids(self.reader, &old.data, self.versions.0).try_collect().await?;
        let new_ids: Vec<ChunkId> = stream_chunk_ids(self.reader, &new.data, self.versions.1).try_collect().await?;
        self.chunks.fetch_add((old_ids.len() + new_ids.len()) as u64, Relaxed);
        let mut plans = plan(old_ids, new_ids);
        // Where chunks do not meet at row ends, or the columns differ, the table is read whole.
        let mut whole =
            diff.columns_changed || !self.probes_end_rows(&plans[0]).await? || !self.probes_end_rows(&plans[1]).await?;
        let label = format!("{}.{}", table.schema, table.name);
        loop {
            if whole {
                for plan in &mut plans {
                    plan.needed.iter_mut().for_each(|needed| *needed = true);
                    plan.probes.clear();
                }
            }
            let tables = whole.then_some((old, new));
            if let Some(mut compared) = self.compare(diff.clone(), &matching, &plans, tables).await? {
                if compared.added + compared.removed + compared.changed > 0 || compared.columns_changed {
                    compared.status = Status::Changed;
                }
                self.progress.item_done(&label);
                return Ok(compared);
            }
            // A run of chunks one snapshot alone has ended inside a row.
            tracing::debug!(table = %label, "chunks end inside a row: comparing the whole table");
            whole = true;
        }
    }

    /// Compares the rows of the chunks `plans` need; `None` when a run of them ends inside a
    /// row. `whole` (every chunk needed): the tables, whose digests and row counts are checked.
    async fn compare(
        &self,
        mut diff: TableDiff,
        matching: &Matching,
        plans: &[Plan; 2],
        whole: Option<(&TableManifest, &TableManifest)>,
    ) -> Result<Option<TableDiff>> {
        let mut older_by_key = Older::new();
        let mut older_rows = OlderRows::new();
        let mut position = 0u64;
        let by_key = diff.by_key;
        let ended = self
            .read_rows(&plans[0], whole.map(|(old, _)| old), |line| {
                let key = matching.key(0, line);
                if by_key {
                    older_by_key.insert(key, (position, matching.value(0, line)));
                } else {
                    older_rows.entry(key).or_insert((0, position)).0 += 1;
                }
                position += 1;
            })
            .await?;
        if !ended {
            return Ok(None);
        }
        let mut keys = Keys::default();
        let listing = self.keys;
        let ended = self
            .read_rows(&plans[1], whole.map(|(_, new)| new), |line| {
                let key = matching.key(1, line);
                let (count, list) = if by_key {
                    match older_by_key.remove(&key) {
                        Some((_, value)) if value == matching.value(1, line) => return,
                        Some(_) => (&mut diff.changed, &mut keys.changed),
                        None => (&mut diff.added, &mut keys.added),
                    }
                } else {
                    match older_rows.get_mut(&key) {
                        Some(entry) if entry.0 > 0 => {
                            entry.0 -= 1;
                            return;
                        }
                        _ => (&mut diff.added, &mut keys.added),
                    }
                };
                *count += 1;
                if listing {
                    list.push(shown(&key));
                }
            })
            .await?;
        if !ended {
            return Ok(None);
        }
        let mut removed: Vec<(u64, Vec<u8>)> = if by_key {
            older_by_key.into_iter().map(|(key, (at, _))| (at, key)).collect()
        } else {
            older_rows
                .into_iter()
                .filter(|(_, (count, _))| *count > 0)
                .flat_map(|(key, (count, at))| (0..count).map(move |_| (at, key.clone())))
                .collect()
        };
        diff.removed = removed.len() as u64;
        if listing {
            removed.sort_by_key(|(at, _)| *at);
            keys.removed = removed.iter().map(|(_, key)| shown(key)).collect();
            diff.keys = Some(keys);
        }
        Ok(Some(diff))
    }

    /// How rows are matched: by primary key when both snapshots record the same one and it is
    /// among the columns both have; else by whole row.
    fn matching(diff: &mut TableDiff, old: &TableManifest, new: &TableManifest) -> Matching {
        diff.columns_changed = old.columns != new.columns;
        let common: Vec<&String> = old.columns.iter().filter(|c| new.columns.contains(c)).collect();
        let at = |columns: &[String], names: &[&String]| -> Vec<usize> {
            names.iter().map(|name| columns.iter().position(|c| c == *name).expect("a common column")).collect()
        };
        let compared = [at(&old.columns, &common), at(&new.columns, &common)];
        let key_names: Vec<&String> = old.primary_key.iter().collect();
        let because = if old.primary_key.is_empty() && new.primary_key.is_empty() {
            Some("no primary key, or a snapshot from a build that did not record keys")
        } else if old.primary_key != new.primary_key {
            Some("the primary key differs between the snapshots")
        } else if !key_names.iter().all(|k| common.contains(k)) {
            Some("a key column is not in both snapshots' data")
        } else {
            None
        };
        let whole_line = !diff.columns_changed;
        match because {
            None => {
                diff.by_key = true;
                diff.key_columns.clone_from(&old.primary_key);
                Matching { key: [at(&old.columns, &key_names), at(&new.columns, &key_names)], compared, whole_line }
            }
            Some(because) => {
                diff.whole_rows_because = Some(because.to_string());
                diff.key_columns = common.into_iter().cloned().collect();
                Matching { key: [Vec::new(), Vec::new()], compared, whole_line }
            }
        }
    }

    /// A table only one snapshot has: its rows are all added or all removed; read (whole, and
    /// proven) only for their keys.
    async fn whole_side(&self, mut diff: TableDiff, table: &TableManifest, side: usize) -> Result<TableDiff> {
        let count = table.rows;
        if side == 1 {
            (diff.status, diff.added) = (Status::Added, count);
        } else {
            (diff.status, diff.removed) = (Status::Removed, count);
        }
        diff.by_key = !table.primary_key.is_empty() && table.primary_key.iter().all(|k| table.columns.contains(k));
        diff.key_columns = if diff.by_key { table.primary_key.clone() } else { table.columns.clone() };
        if !self.keys {
            return Ok(diff);
        }
        let version = if side == 1 { self.versions.1 } else { self.versions.0 };
        let ids: Vec<ChunkId> = stream_chunk_ids(self.reader, &table.data, version).try_collect().await?;
        self.chunks.fetch_add(ids.len() as u64, Relaxed);
        let plan = Plan { needed: vec![true; ids.len()], ids, probes: Vec::new() };
        let key: Vec<usize> = if diff.by_key {
            table.primary_key.iter().map(|k| table.columns.iter().position(|c| c == k).expect("checked")).collect()
        } else {
            (0..table.columns.len()).collect()
        };
        let mut keys = Vec::new();
        self.read_rows(&plan, Some(table), |line| keys.push(shown(&project(line, &key)))).await?;
        diff.keys = Some(if side == 1 {
            Keys { added: keys, ..Keys::default() }
        } else {
            Keys { removed: keys, ..Keys::default() }
        });
        Ok(diff)
    }

    /// Whether every probe of `plan` ends a row.
    async fn probes_end_rows(&self, plan: &Plan) -> Result<bool> {
        let reader = self.reader;
        let unknown = plan
            .probes
            .iter()
            .filter(|&&p| reader.raw_length(&plan.ids[p]).is_none_or(|length| length >= self.ends_a_row_below));
        let mut probes =
            futures::stream::iter(unknown.map(|&p| reader.read(&plan.ids[p]))).buffered(reader.runs_ahead(self.jobs));
        while let Some(chunk) = probes.next().await {
            let chunk = chunk?;
            self.chunks_read.fetch_add(1, Relaxed);
            self.bytes_read.fetch_add(chunk.len() as u64, Relaxed);
            if chunk.last() != Some(&b'\n') {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Calls `row` for every row of the chunks `plan` needs, in order. `false` when a run of
    /// needed chunks ends inside a row (the plan's premise does not hold). With `whole` (every
    /// chunk needed), the stream's digest and row count are checked too.
    async fn read_rows(&self, plan: &Plan, whole: Option<&TableManifest>, mut row: impl FnMut(&[u8])) -> Result<bool> {
        // Runs of needed chunks, each cut into pieces read together.
        let mut pieces: Vec<(usize, &[ChunkId])> = Vec::new();
        let mut start = None;
        let mut runs = 0;
        for position in 0..=plan.ids.len() {
            let needed = plan.needed.get(position).copied().unwrap_or(false);
            match (needed, start) {
                (true, None) => start = Some(position),
                (false, Some(from)) => {
                    for piece in self.reader.runs(&plan.ids[from..position]) {
                        pieces.push((runs, piece));
                    }
                    runs += 1;
                    start = None;
                }
                _ => {}
            }
        }
        let reader = self.reader;
        let mut read = futures::stream::iter(
            pieces
                .iter()
                .map(|&(run, piece)| async move { reader.read_run(piece).await.map(|text| (run, piece.len(), text)) }),
        )
        .buffered(reader.runs_ahead(self.jobs));
        let mut digest = whole.map(|_| self.mac_key.hasher());
        let mut lines = Lines::default();
        let mut current = None;
        let mut rows_read = 0u64;
        let mut count = |line: &[u8]| {
            rows_read += 1;
            row(line);
        };
        while let Some(piece) = read.next().await {
            let (run, chunks, text) = piece?;
            if current.is_some_and(|current| current != run) && lines.is_partial() && whole.is_none() {
                return Ok(false);
            }
            current = Some(run);
            self.chunks_read.fetch_add(chunks as u64, Relaxed);
            self.bytes_read.fetch_add(text.len() as u64, Relaxed);
            self.progress.advance(text.len() as u64);
            if let Some(hasher) = digest.as_mut() {
                hasher.update(&text);
            }
            lines.each(&text, &mut count);
        }
        if lines.is_partial() && whole.is_none() {
            return Ok(false);
        }
        lines.end(count);
        if let (Some(table), Some(digest)) = (whole, digest) {
            super::check_table(&format!("{}.{}", table.schema, table.name), table, &digest, rows_read)?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(text: &str) -> Vec<ChunkId> {
        text.bytes().map(|b| ChunkId::from_stored(&[b; 16]).unwrap()).collect()
    }

    #[test]
    fn chunks_both_hold_are_matched_and_edges_of_runs_are_probed() {
        // Older: a b c d e; newer: a b X d e e. `c` is only older's, `X` and the second `e`
        // only newer's; `b` comes before a change on both sides, `e` before newer's extra `e`.
        let [old, new] = plan(ids("abcde"), ids("abXdee"));
        assert_eq!(old.needed, [false, false, true, false, false]);
        assert_eq!(new.needed, [false, false, true, false, false, true]);
        assert_eq!(old.probes, [1]);
        assert_eq!(new.probes, [1, 4]);
        // The same chunks in another order: every edge where they stop running side by side.
        let [old, new] = plan(ids("abcd"), ids("cdab"));
        assert!(old.needed.iter().chain(&new.needed).all(|n| !n));
        assert_eq!(old.probes, [1]);
        assert_eq!(new.probes, [1]);
    }

    #[test]
    fn keys_and_values_are_projected_onto_the_columns_both_have() {
        let matching = Matching { compared: [vec![0, 2], vec![0, 1]], key: [vec![0], vec![0]], whole_line: false };
        assert_eq!(matching.key(0, b"7\tdropped\tx"), b"7");
        assert_eq!(matching.value(0, b"7\tdropped\tx"), matching.value(1, b"7\tx\tadded"));
        assert_ne!(matching.value(0, b"7\tdropped\tx"), matching.value(1, b"7\ty\tadded"));
        assert_eq!(shown(b"1\t\\N\ta\\tb"), [Some("1".into()), None, Some("a\tb".into())]);
    }
}
