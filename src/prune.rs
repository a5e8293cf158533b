//! Prune: deletes the packs, indexes and dictionaries that no snapshot on a target needs any
//! more (left by snapshots deleted by `forget` or by hand, or by backups that died before
//! their snapshot object), and the `damaged/` markers of packs that go with them.
//!
//! What is live comes from the snapshots' plaintext headers, which list every pack, index and
//! dictionary the snapshot needs on that target (docs/FORMAT.md, *Snapshot*): prune reads no
//! index and no pack, and needs no key. Everything under `data/`, `index/` and `dicts/` that
//! no header lists is garbage. A snapshot whose header does not read makes prune refuse the
//! target: what that snapshot needs is unknown, so nothing may go.
//!
//! Deletes go in an order that keeps every step safe (docs/FORMAT.md, *Prune*): indexes
//! first (so that no later backup reuses a chunk of a pack about to go), then packs, then
//! dictionaries, then damaged markers. Nothing a remaining snapshot lists is ever deleted, so
//! a prune killed anywhere leaves garbage that the next one removes. The caller holds the
//! repository's exclusive lock (docs/ARCHITECTURE.md, *Locks*): no backup runs meanwhile.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};
use crate::repo::{self, ObjectId, Repository, SnapshotHeader, SnapshotId};

/// Deletes (and header reads) in flight at once on one target.
const IN_FLIGHT: usize = 8;

/// The folders prune looks into, in the order their garbage is deleted.
const FOLDERS: [(&str, ObjectKind); 4] = [
    ("index", ObjectKind::Index),
    ("data", ObjectKind::Pack),
    ("dicts", ObjectKind::Dictionary),
    ("damaged", ObjectKind::DamagedMarker),
];

/// Whether prune deletes what it finds or only says what it would delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMode {
    /// Delete the garbage.
    Delete,
    /// Find the garbage and delete nothing (`--dry-run`).
    DryRun,
}

/// What prune is asked to do on one target.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Delete, or only look.
    pub mode: PruneMode,
    /// Snapshots to count as gone although still stored: what `forget --dry-run --prune`
    /// would remove first (a dry run only).
    pub as_if_gone: std::collections::BTreeSet<SnapshotId>,
}

impl PruneOptions {
    /// Prune as asked, counting every stored snapshot.
    pub fn new(mode: PruneMode) -> PruneOptions {
        PruneOptions { mode, as_if_gone: std::collections::BTreeSet::new() }
    }
}

/// The kinds of object prune deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `data/<hh>/<hash>`.
    Pack,
    /// `index/<hash>`.
    Index,
    /// `dicts/<hash>`.
    Dictionary,
    /// `damaged/<pack hash>`, verify's marker of a damaged pack.
    DamagedMarker,
}

/// An object found in storage: its key, kind and stored size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The object key.
    pub key: String,
    /// What it is, by its folder.
    pub kind: ObjectKind,
    /// Stored bytes.
    pub size: u64,
}

/// A number of objects and their stored bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Amount {
    /// Objects.
    pub objects: u64,
    /// Their stored bytes.
    pub bytes: u64,
}

impl Amount {
    fn add(&mut self, size: u64) {
        self.objects += 1;
        self.bytes += size;
    }
}

/// Amounts by kind of object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Packs.
    pub packs: Amount,
    /// Indexes.
    pub indexes: Amount,
    /// Dictionaries.
    pub dictionaries: Amount,
    /// Damaged markers (empty objects).
    pub damaged_markers: Amount,
}

impl Tally {
    fn of(objects: &[StoredObject]) -> Tally {
        let mut tally = Tally::default();
        for object in objects {
            tally.add(object);
        }
        tally
    }

    fn add(&mut self, object: &StoredObject) {
        self.amount_mut(object.kind).add(object.size);
    }

    fn amount_mut(&mut self, kind: ObjectKind) -> &mut Amount {
        match kind {
            ObjectKind::Pack => &mut self.packs,
            ObjectKind::Index => &mut self.indexes,
            ObjectKind::Dictionary => &mut self.dictionaries,
            ObjectKind::DamagedMarker => &mut self.damaged_markers,
        }
    }

    /// Every kind together.
    pub fn total(&self) -> Amount {
        let all = [self.packs, self.indexes, self.dictionaries, self.damaged_markers];
        Amount { objects: all.iter().map(|a| a.objects).sum(), bytes: all.iter().map(|a| a.bytes).sum() }
    }
}

/// What prune would delete on a target and what it keeps: computed from the listings alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// Objects no snapshot needs, in the order they are deleted.
    pub garbage: Vec<StoredObject>,
    /// What stays, by kind.
    pub kept: Tally,
    /// Objects a header names that the target does not hold, sorted.
    pub missing: Vec<String>,
}

/// Deletes the storage refused (Object Lock, no delete permission, an immutable file):
/// left in place for a later prune.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// Objects the storage would not delete.
    pub objects: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// What the storage said for the first of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What prune did on one target.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// The target.
    pub location: String,
    /// Whether it only looked (`--dry-run`).
    pub dry_run: bool,
    /// Snapshots whose headers said what is live.
    pub snapshots: usize,
    /// What no snapshot needs: what a run deletes, or a dry run would.
    pub garbage: Tally,
    /// What was deleted (nothing in a dry run).
    pub deleted: Tally,
    /// What the storage refused to delete.
    pub refused: Refused,
    /// What stays: objects the snapshots list.
    pub kept: Tally,
}

/// Computes what is garbage on a target: every stored pack, index and dictionary that no
/// header lists, and every damaged marker whose pack no header lists. Pure over the listings.
pub fn plan(headers: &[SnapshotHeader], stored: &[StoredObject]) -> PrunePlan {
    // Each object a header names, with the size it gives.
    let mut live: HashMap<String, u64> = HashMap::new();
    let mut live_packs: HashSet<&ObjectId> = HashSet::new();
    for header in headers {
        live.extend(header.objects());
        live_packs.extend(header.packs.iter().map(|pack| &pack.id));
    }
    let missing = missing(&live, stored.iter().map(|object| (object.key.as_str(), object.size)));
    let mut garbage = Vec::new();
    let mut kept = Tally::default();
    for object in stored {
        let needed = match object.kind {
            // A marker stays while its pack is needed: backups must keep passing it over.
            ObjectKind::DamagedMarker => object
                .key
                .strip_prefix("damaged/")
                .and_then(|name| name.parse::<ObjectId>().ok())
                .is_some_and(|pack| live_packs.contains(&pack)),
            _ => live.contains_key(&object.key),
        };
        if needed {
            kept.add(object);
        } else {
            garbage.push(object.clone());
        }
    }
    let order = |kind: ObjectKind| FOLDERS.iter().position(|(_, k)| *k == kind);
    garbage.sort_by(|a, b| order(a.kind).cmp(&order(b.kind)).then_with(|| a.key.cmp(&b.key)));
    PrunePlan { garbage, kept, missing }
}

/// Of the objects headers name (`named`: key → the size they give), those a target's listing
/// (`stored`: key, size) does not hold at that size, sorted: a snapshot naming them is damaged,
/// or is another target's object of that snapshot put here (its MAC holds wherever it lies),
/// and what this target's own object of it needed would look like garbage.
pub(crate) fn missing<'a>(
    named: &HashMap<String, u64>,
    stored: impl IntoIterator<Item = (&'a str, u64)>,
) -> Vec<String> {
    let held: HashMap<&str, u64> = stored.into_iter().collect();
    let mut missing: Vec<String> =
        named.iter().filter(|(key, size)| held.get(key.as_str()) != Some(size)).map(|(key, _)| key.clone()).collect();
    missing.sort_unstable();
    missing
}

/// Prunes one target (which the caller has locked: exclusive to delete, shared for a dry run).
pub async fn run(
    repository: &Repository,
    options: &PruneOptions,
    (keyring, locks): (Option<&crate::repo::Keyring>, &crate::lock::Locks),
    progress: &dyn Progress,
) -> Result<PruneReport> {
    if options.mode == PruneMode::Delete && !options.as_if_gone.is_empty() {
        return Err(Error::Internal("prune may count snapshots as gone only in a dry run".into()));
    }
    let listed = repository.listed_snapshots().await?;
    let headers = read_headers(repository, &listed, &options.as_if_gone, keyring, progress).await?;
    let planned_with: Vec<SnapshotId> = listed.into_iter().map(|(id, _)| id).collect();
    let stored = list_stored(repository).await?;
    let plan = plan(&headers, &stored);
    // Nothing is deleted where a snapshot names what the target lacks ([`missing`]).
    if let Some(first) = plan.missing.first() {
        return Err(Error::corrupt(
            repository.target.location(),
            format!(
                "its snapshots name {} object{} it does not hold at the size they give (first: {first}): a damaged \
                 snapshot, or another target's object of one put in its place; prune deletes nothing here until \
                 `crmvault verify` is clean (`crmvault copy --repair` from a target that holds them mends it; \
                 `crmvault forget ID…` removes, on the record, the snapshots verify names that no target holds \
                 whole)",
                plan.missing.len(),
                if plan.missing.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    let mut report = PruneReport {
        location: repository.target.location().to_string(),
        dry_run: options.mode == PruneMode::DryRun,
        snapshots: headers.len(),
        garbage: Tally::of(&plan.garbage),
        deleted: Tally::default(),
        refused: Refused::default(),
        kept: plan.kept,
    };
    if options.mode == PruneMode::DryRun || plan.garbage.is_empty() {
        return Ok(report);
    }
    progress.phase("deleting", Unit::Objects, Some(plan.garbage.len() as u64));
    let mut garbage = plan.garbage;
    // One kind after the other, each finished before the next starts (the order is the safety).
    for (_, kind) in FOLDERS {
        // Still this prune's lock (not taken over while it stalled, by a backup that may have
        // reused what the plan calls garbage), and nothing a snapshot written since lists.
        locks.confirm(repository.target.location()).await?;
        spare_what_new_snapshots_list(repository, &planned_with, &mut garbage).await?;
        let batch: Vec<StoredObject> = garbage.iter().filter(|object| object.kind == kind).cloned().collect();
        for chunk in batch.chunks(CONFIRM_EVERY) {
            // Timed before the read: a pause after it counts as one since the confirmation.
            let confirmed = (Instant::now(), SystemTime::now());
            locks.confirm(repository.target.location()).await?;
            delete_all(repository, chunk, (&mut report, locks, confirmed), progress).await?;
        }
    }
    Ok(report)
}

/// Deletes `objects`, a few at a time; refused deletes are counted in the report. A delete
/// that starts [`CONFIRM_AFTER`] or more after the lock was last confirmed (`confirmed`: when
/// the read that confirmed it started) confirms it first.
async fn delete_all(
    repository: &Repository,
    objects: &[StoredObject],
    (report, locks, confirmed): (&mut PruneReport, &crate::lock::Locks, (Instant, SystemTime)),
    progress: &dyn Progress,
) -> Result<()> {
    let location = repository.target.location();
    let confirmed = tokio::sync::Mutex::new(confirmed);
    let confirmed = &confirmed;
    let mut deletes = futures::stream::iter(objects)
        .map(|object| async move {
            let mut last = confirmed.lock().await;
            // Both clocks: the monotonic one may stand still while a machine sleeps, and the
            // wall clock may be set back (then it counts as a pause too).
            let paused = last.0.elapsed() >= CONFIRM_AFTER
                || SystemTime::now().duration_since(last.1).map_or(true, |gap| gap >= CONFIRM_AFTER);
            if paused {
                let reading = (Instant::now(), SystemTime::now());
                if let Err(error) = locks.confirm(location).await {
                    return (object, Err(error));
                }
                *last = reading;
            }
            drop(last);
            (object, repository.target.delete(&object.key).await)
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some((object, outcome)) = deletes.next().await {
        match outcome {
            Ok(()) => report.deleted.add(object),
            Err(error @ Error::DeleteRefused { .. }) => {
                report.refused.objects += 1;
                report.refused.bytes += object.size;
                // The report names the target already.
                report.refused.reason.get_or_insert_with(|| {
                    let text = error.to_string();
                    text.strip_prefix(&format!("{}: ", report.location)).map_or(text.clone(), str::to_string)
                });
            }
            Err(error) => return Err(error),
        }
        progress.advance(1);
    }
    Ok(())
}

/// Deletes with each this many objects between two confirmations of the lock.
const CONFIRM_EVERY: usize = 256;

/// Time after which the next delete confirms the lock again. A prune that stalled (a suspended
/// machine, a stopped process) past its lease may wake up to find its lock another's, taken
/// over by a backup or copy that counts on what the prune's old plan deletes; without this it
/// went on for up to [`CONFIRM_EVERY`] deletes before noticing. Now only the deletes already
/// sent when it stalled land (at most [`IN_FLIGHT`]). On a bucket it costs a read of the lock
/// every few seconds of deleting.
const CONFIRM_AFTER: Duration = Duration::from_secs(5);

/// Takes out of `garbage` whatever a snapshot that appeared since the plan lists (none should
/// while the lock holds; this closes the window of a prune that stalled past its lease).
async fn spare_what_new_snapshots_list(
    repository: &Repository,
    planned_with: &[SnapshotId],
    garbage: &mut Vec<StoredObject>,
) -> Result<()> {
    let known: HashSet<&SnapshotId> = planned_with.iter().collect();
    let mut listed = HashSet::new();
    for (id, size) in repository.listed_snapshots().await?.iter().filter(|(id, _)| !known.contains(id)) {
        let header = (repository.read_snapshot_header(id, Some(*size)).await)
            .map_err(|error| unreadable(repository, id, error))?;
        listed.extend(header.packs.iter().map(|pack| repo::pack_key(&pack.id)));
        listed.extend(header.indexes.iter().map(|index| repo::index_key(&index.id)));
        listed.extend(header.dictionaries.iter().map(|dictionary| repo::dictionary_key(&dictionary.id)));
        listed.extend(header.packs.iter().map(|pack| repo::damaged_key(&pack.id)));
    }
    if !listed.is_empty() {
        tracing::warn!("{}: snapshots appeared while prune ran; what they list is kept", repository.target.location());
        garbage.retain(|object| !listed.contains(&object.key));
    }
    Ok(())
}

/// Every snapshot header on the target. A header that does not read stops the prune: the
/// snapshot may need anything. Objects under `snapshots/` not named by a hash cannot be
/// snapshots and are passed over.
async fn read_headers(
    repository: &Repository,
    listed: &[(SnapshotId, u64)],
    as_if_gone: &std::collections::BTreeSet<SnapshotId>,
    keyring: Option<&crate::repo::Keyring>,
    progress: &dyn Progress,
) -> Result<Vec<SnapshotHeader>> {
    let listed: Vec<&(SnapshotId, u64)> = listed.iter().filter(|(id, _)| !as_if_gone.contains(id)).collect();
    progress.phase("reading snapshot headers", Unit::Snapshots, Some(listed.len() as u64));
    futures::stream::iter(listed)
        .map(|(id, size)| async move {
            let header = match keyring {
                // With a key, a header is believed only once its snapshot proves itself: one
                // rewritten in storage to list nothing would have prune delete what it needs.
                Some(keyring) => repository
                    .read_listed_snapshot(id, *size)
                    .await
                    .and_then(|sealed| repository.prove_snapshot(&sealed, keyring).map(|()| sealed.header)),
                None => repository.read_snapshot_header(id, Some(*size)).await,
            };
            let header = header.map_err(|error| unreadable(repository, id, error));
            progress.advance(1);
            header
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await
}

/// Why a snapshot's header did not read, as prune's refusal. Storage that fails to answer is
/// its own error (nothing about the snapshot is known).
pub(crate) fn unreadable(repository: &Repository, id: &SnapshotId, error: Error) -> Error {
    match error {
        Error::Corrupt { .. } | Error::UnsupportedFormat { .. } | Error::Missing { .. } => Error::UnreadableSnapshot {
            location: repository.target.location().to_string(),
            key: repo::snapshot_key(id),
            reason: error.to_string(),
        },
        other => other,
    }
}

/// The objects prune may delete: everything under `data/`, `index/`, `dicts/` and `damaged/`,
/// and there the staging files of writes that never finished (a local folder's `<key>#<n>`,
/// counted with their folder's kind: no snapshot lists one).
async fn list_stored(repository: &Repository) -> Result<Vec<StoredObject>> {
    let mut stored = Vec::new();
    for (folder, kind) in FOLDERS {
        let objects = repository.target.list(folder).await?;
        let unfinished = repository.target.staging_files(folder).await?;
        for (key, size) in objects.into_iter().chain(unfinished) {
            stored.push(StoredObject { key, kind, size });
        }
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ObjectRef;

    fn object(name: &str) -> ObjectRef {
        ObjectRef { id: ObjectId::of(name.as_bytes()), size: name.len() as u64 * 100 }
    }

    fn header(packs: &[&str], indexes: &[&str], dictionaries: &[&str]) -> SnapshotHeader {
        SnapshotHeader {
            version: repo::FORMAT_VERSION,
            time: chrono::DateTime::UNIX_EPOCH,
            config_hash: String::new(),
            total_bytes: 0,
            added_bytes: 0,
            packs: packs.iter().map(|p| object(p)).collect(),
            indexes: indexes.iter().map(|i| object(i)).collect(),
            dictionaries: dictionaries.iter().map(|d| object(d)).collect(),
            parent: None,
            sequence: 0,
            replaces: None,
        }
    }

    fn stored(kind: ObjectKind, name: &str) -> StoredObject {
        let reference = object(name);
        let key = match kind {
            ObjectKind::Pack => repo::pack_key(&reference.id),
            ObjectKind::Index => repo::index_key(&reference.id),
            ObjectKind::Dictionary => repo::dictionary_key(&reference.id),
            ObjectKind::DamagedMarker => repo::damaged_key(&reference.id),
        };
        let size = if kind == ObjectKind::DamagedMarker { 0 } else { reference.size };
        StoredObject { key, kind, size }
    }

    fn keys(objects: &[StoredObject]) -> Vec<&str> {
        objects.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn what_no_header_lists_is_garbage_and_what_any_header_lists_is_kept() {
        use ObjectKind::*;
        let headers = [header(&["p1", "p2"], &["i1"], &["d1"]), header(&["p2", "p3"], &["i1", "i2"], &[])];
        let listing = vec![
            stored(Index, "i1"),
            stored(Index, "i2"),
            stored(Index, "i-dead"),
            stored(Pack, "p1"),
            stored(Pack, "p2"),
            stored(Pack, "p3"),
            stored(Pack, "p-dead"),
            stored(Dictionary, "d1"),
            stored(Dictionary, "d-dead"),
        ];
        let plan = plan(&headers, &listing);
        let expected = [stored(Index, "i-dead"), stored(Pack, "p-dead"), stored(Dictionary, "d-dead")];
        assert_eq!(keys(&plan.garbage), keys(&expected));
        assert_eq!(plan.kept.packs, Amount { objects: 3, bytes: 600 });
        assert_eq!(plan.kept.indexes, Amount { objects: 2, bytes: 400 });
        assert_eq!(plan.kept.dictionaries, Amount { objects: 1, bytes: 200 });
        assert_eq!(Tally::of(&plan.garbage).total(), Amount { objects: 3, bytes: 600 + 600 + 600 });
    }

    #[test]
    fn what_a_header_names_and_the_target_lacks_is_missing() {
        use ObjectKind::*;
        let headers = [header(&["p1", "p2"], &["i1"], &["d1"]), header(&["p2"], &["i2"], &[])];
        let listing = vec![stored(Index, "i1"), stored(Pack, "p1"), stored(Pack, "p2"), stored(Pack, "p-dead")];
        let plan = plan(&headers, &listing);
        let mut expected = vec![repo::index_key(&object("i2").id), repo::dictionary_key(&object("d1").id)];
        expected.sort();
        assert_eq!(plan.missing, expected);
        assert!(super::plan(&headers[1..], &listing[1..]).missing.len() == 1);
    }

    #[test]
    fn garbage_goes_indexes_first_then_packs_then_dictionaries_then_markers() {
        use ObjectKind::*;
        // Listed in another order than the one they must be deleted in.
        let listing = vec![
            stored(DamagedMarker, "p-dead"),
            stored(Dictionary, "d-dead"),
            stored(Pack, "p-dead"),
            stored(Index, "i-dead"),
        ];
        let plan = plan(&[], &listing);
        let kinds: Vec<ObjectKind> = plan.garbage.iter().map(|o| o.kind).collect();
        assert_eq!(kinds, [Index, Pack, Dictionary, DamagedMarker]);
    }

    #[test]
    fn a_damaged_marker_stays_while_its_pack_is_needed() {
        use ObjectKind::*;
        let headers = [header(&["p1"], &[], &[])];
        let listing = vec![stored(Pack, "p1"), stored(DamagedMarker, "p1"), stored(DamagedMarker, "p-gone")];
        let plan = plan(&headers, &listing);
        assert_eq!(keys(&plan.garbage), [repo::damaged_key(&object("p-gone").id)]);
        assert_eq!(plan.kept.damaged_markers.objects, 1);
    }

    #[test]
    fn a_pack_stored_outside_its_folder_or_under_a_name_that_is_no_hash_is_garbage() {
        let live = object("p1");
        let misplaced = format!("data/zz/{}", live.id);
        let listing = vec![
            StoredObject { key: misplaced.clone(), kind: ObjectKind::Pack, size: 1 },
            StoredObject { key: "data/ab/not-a-pack".into(), kind: ObjectKind::Pack, size: 1 },
            StoredObject { key: "damaged/not-a-hash".into(), kind: ObjectKind::DamagedMarker, size: 0 },
        ];
        let plan = plan(&[header(&["p1"], &[], &[])], &listing);
        // Sorted within a kind: "data/ab/…" before "data/zz/…".
        assert_eq!(keys(&plan.garbage), ["data/ab/not-a-pack", misplaced.as_str(), "damaged/not-a-hash"]);
    }

    #[test]
    fn without_snapshots_everything_is_garbage_and_nothing_is_kept() {
        let listing = vec![stored(ObjectKind::Pack, "p1"), stored(ObjectKind::Index, "i1")];
        let plan = plan(&[], &listing);
        assert_eq!(plan.garbage.len(), 2);
        assert_eq!(plan.kept, Tally::default());
    }
}
