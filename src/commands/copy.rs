//! `copy`: bring the snapshots one repository has and another lacks, with only the objects
//! they need. No key is needed: objects are copied as stored, each checked against its name.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::repo::{self, Repository};
use crate::repo_set::RepoSet;
use crate::target::{Held, PutOutcome, ReadBudget};

/// Objects copied at once (each a read from the source and a write to the destination): the
/// time of each is mostly round trips when either is a bucket.
const IN_FLIGHT: usize = 8;

/// What `copy` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    /// Snapshots copied.
    pub snapshots_copied: Vec<repo::SnapshotId>,
    /// Snapshots the destination already had.
    pub snapshots_present: usize,
    /// Objects written to the destination.
    pub objects_copied: usize,
    /// Bytes written to the destination.
    pub bytes_copied: u64,
    /// Snapshots of the source left out, with why: unreadable headers, or written under a
    /// config that is not the repository's (junk, forged, or a key retired by `rekey`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots_skipped: Vec<(String, String)>,
    /// Snapshots that could not be copied, with why: an object they name missing or damaged
    /// at the source, or of another size at the destination (the copy goes on to the others,
    /// and exits 3).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots_failed: Vec<(String, String)>,
    /// With `repair`: objects the destination's snapshots name that were missing there, of the
    /// wrong size, or marked damaged, written again from the source.
    pub objects_repaired: usize,
    /// With `repair`: `verify`'s damage markers removed, of packs written again or found whole.
    pub markers_cleared: usize,
    /// With `repair`: objects still missing or damaged at the destination, with why (the
    /// source does not hold them, or holds them damaged too; a marker that could not go).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_repaired: Vec<(String, String)>,
}

impl CopyReport {
    /// Whether every snapshot asked for was copied and everything found damaged repaired
    /// (junk and forged snapshots left out aside): otherwise the copy exits 3.
    pub fn complete(&self) -> bool {
        self.snapshots_failed.is_empty() && self.not_repaired.is_empty()
    }
}

/// Copies every snapshot of `from` that `to` lacks (or only `only`, when given); with
/// `repair`, then writes again from `from` what the snapshots `to` holds need there and lack
/// ([`repair`]).
pub async fn run(
    from: &Repository,
    to: &Repository,
    (only, repair_too): (&[String], bool),
    locks: &crate::lock::Locks,
) -> Result<CopyReport> {
    // Two copies of one repository at one generation of its keys, as every target of a backup.
    RepoSet::of(vec![from.clone(), to.clone()])?.require_one_generation()?;
    let mut report = CopyReport::default();
    // What the copy holds at once: objects named by headers a storage writer may have rewritten
    // (a keyless hash line) could be planted at any size up to their kind's.
    let budget = ReadBudget::new(repo::READ_BUDGET);
    let budget = &budget;
    for (hash, config) in &from.chain {
        for key in config.keys.iter().chain(&config.admin_keys) {
            copy_object((from, to), key, (budget, repair_too), &mut report).await?;
        }
        if config.version >= repo::AUTHENTICATED_VERSION {
            copy_object((from, to), &repo::config_copy_key(hash), (budget, repair_too), &mut report).await?;
        }
    }
    if repair_too {
        mend_config((from, to), &mut report).await?;
    }
    let present: std::collections::HashSet<repo::SnapshotId> = to.snapshot_ids().await?.into_iter().collect();
    // The packs, indexes and dictionaries the destination holds, listed once (and added to as
    // they are copied): a year-old snapshot names ~1,700 packs, and asking the destination
    // for each one's size, snapshot after snapshot, made some 620,000 requests for a year.
    // An object stored there meanwhile (a backup) is harmless: a write of an object present
    // leaves it as it is.
    let mut held: HashMap<String, u64> = HashMap::new();
    for folder in ["data", "index", "dicts"] {
        held.extend(to.target.list(folder).await?);
    }
    // After taking the destination's lock over from a stale exclusive holder (a prune that
    // may only have stalled, and goes on deleting what no snapshot named when it planned),
    // only objects a destination snapshot names are trusted to stay: the rest (an
    // interrupted copy's or backup's) is copied again.
    if locks.took_over_exclusive(to.target.location()) {
        tracing::warn!(
            "{}: the lock was taken over from a stale exclusive holder (a prune that may only have stalled): \
             objects no snapshot names there are copied again",
            to.target.location()
        );
        let listed = to.listed_objects().await?;
        held.retain(|key, _| listed.contains(key));
    }
    // First, so that what a new snapshot shares with the old ones is whole before it is
    // counted as held (a truncated pack would stop the copy of a snapshot that reuses it).
    if repair_too {
        repair((from, to), &mut held, (locks, budget), &mut report).await?;
    }
    let mut wanted = Vec::new();
    for selector in only {
        wanted.push(from.resolve_snapshot(selector).await?);
    }
    // Headers only: the object copied is read again, checked against the one read here.
    for entry in from.snapshots(repo::header_only).await? {
        // Junk does not stop the copy of the rest; a snapshot asked for by name does.
        let sealed = match entry {
            Ok(sealed) if from.claims_this_config(&sealed) => sealed,
            Ok(sealed) => {
                let why = "written under another config than the repository's (forged, or a retired key)";
                if wanted.contains(&sealed.id) {
                    return Err(Error::corrupt(repo::snapshot_key(&sealed.id), why));
                }
                tracing::warn!("{}: snapshot {} left out: {why}", from.target.location(), sealed.id);
                report.snapshots_skipped.push((sealed.id.to_string(), why.into()));
                continue;
            }
            Err((name, error)) if wanted.iter().any(|id| *id.as_str() == *name) => return Err(error),
            Err((name, error)) => {
                tracing::warn!("{}: snapshot {name} left out: {error}", from.target.location());
                report.snapshots_skipped.push((name, error.to_string()));
                continue;
            }
        };
        if !wanted.is_empty() && !wanted.contains(&sealed.id) {
            continue;
        }
        if present.contains(&sealed.id) {
            report.snapshots_present += 1;
            continue;
        }
        // One snapshot's damage (an object it names missing or damaged at the source, or
        // named with another size than the destination's) is that snapshot's failure, not the
        // end of the copy; the storage failing, or the lock lost, is.
        match copy_snapshot((from, to), &sealed, (&mut held, locks, budget), &mut report).await {
            Ok(()) => report.snapshots_copied.push(sealed.id.clone()),
            Err(Failed::Snapshot(error)) => {
                tracing::warn!("{}: snapshot {} not copied: {error}", to.target.location(), sealed.id);
                report.snapshots_failed.push((sealed.id.to_string(), error.to_string()));
            }
            Err(Failed::Copy(error)) => return Err(error),
        }
    }
    Ok(report)
}

/// Why one snapshot was not copied.
enum Failed {
    /// Its own damage: an object it names missing or damaged at the source, or of another
    /// size at the destination, or the source object replaced meanwhile. The copy goes on.
    Snapshot(Error),
    /// The storage or the lock failing: the copy ends.
    Copy(Error),
}

impl Failed {
    /// An error reading the source: a missing or damaged object is the snapshot's; the rest
    /// (the storage failing) ends the copy.
    fn reading(error: Error) -> Failed {
        match error {
            Error::Corrupt { .. } | Error::Missing { .. } => Failed::Snapshot(error),
            other => Failed::Copy(other),
        }
    }
}

/// Copies one snapshot of `from` that `to` lacks: the objects it names that `held` (`to`'s
/// listing, brought up to date) lacks, then the snapshot object, last.
async fn copy_snapshot(
    (from, to): (&Repository, &Repository),
    sealed: &repo::SealedSnapshot,
    (held, locks, budget): (&mut HashMap<String, u64>, &crate::lock::Locks, &ReadBudget),
    report: &mut CopyReport,
) -> std::result::Result<(), Failed> {
    let mut missing = Vec::new();
    for (key, size) in sealed.header.objects() {
        match held.get(&key) {
            Some(&found) if found == size => {}
            Some(&found) => {
                let error = size_mismatch((from, &sealed.id), to, &key, found, size).await.map_err(Failed::Copy)?;
                return Err(Failed::Snapshot(error));
            }
            None => missing.push((key, size)),
        }
    }
    missing.sort_unstable();
    missing.dedup();
    let mut copies = futures::stream::iter(missing)
        .map(|(key, size)| async move {
            // Counted in the budget until written.
            let held = fetch_checked(from, &key, Some(size), budget).await.map_err(Failed::reading)?;
            let length = held.len() as u64;
            let outcome = to.target.put_new(&key, bytes::Bytes::clone(&held)).await.map_err(Failed::Copy)?;
            drop(held);
            // One no snapshot there names, found in the write's way (an interrupted copy's,
            // or junk of the right size): the snapshot will name it, so it must be right.
            if outcome == PutOutcome::AlreadyThere {
                check_present(to, &key).await.map_err(|error| match error {
                    Error::Corrupt { .. } => Failed::Snapshot(error),
                    other => Failed::Copy(other),
                })?;
            }
            Ok::<_, Failed>((key, length, outcome))
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some((key, length, outcome)) = copies.try_next().await? {
        // One there already (left by an interrupted copy, or stored by a backup
        // meanwhile) was not written.
        if outcome == PutOutcome::Written {
            report.bytes_copied += length;
            report.objects_copied += 1;
        }
        held.insert(key, length);
    }
    // Last, as in a backup: the snapshot is the commit.
    let key = repo::snapshot_key(&sealed.id);
    let Some(bytes) = read_again(from, sealed).await.map_err(Failed::reading)? else {
        return Err(Failed::Snapshot(Error::corrupt(
            format!("{}/{key}", from.target.location()),
            "changed in storage while it was copied (not the object whose header was read): nothing of it was \
             written; copy again",
        )));
    };
    report.bytes_copied += bytes.len() as u64;
    // Still the destination's appender (as a backup checks before its commit).
    locks.confirm(to.target.location()).await.map_err(Failed::Copy)?;
    to.target.put_new(&key, bytes).await.map_err(Failed::Copy)?;
    report.objects_copied += 1;
    Ok(())
}

/// Writes again, from `from`, what the snapshots of `to` need there and lack, by `to`'s own
/// headers (a backup writes each target's packs apart: the source's header of the same
/// snapshot may name other packs): each object they name that is missing, of another size
/// than the header gives, an index or dictionary whose bytes do not match its name (all read:
/// they are small), or a pack `verify` marked damaged (read: a marker may outlive damage mended
/// by hand); then each snapshot object whose bytes do not match its name, from `from`'s object
/// of that name when everything its header names is whole here. Nothing is written that is
/// not checked against its name and size first, and a damaged object is written over, never
/// deleted first. What cannot come from `from` is named in [`CopyReport::not_repaired`].
/// `held`: `to`'s listing of `data/`, `index/` and `dicts/`, brought up to date.
/// `budget`: what the repair holds at once, read from either side.
async fn repair(
    (from, to): (&Repository, &Repository),
    held: &mut HashMap<String, u64>,
    (locks, budget): (&crate::lock::Locks, &ReadBudget),
    report: &mut CopyReport,
) -> Result<()> {
    // Pack key → its `verify` marker's key.
    let marked: HashMap<String, String> = (to.target.list("damaged").await?.into_iter())
        .filter_map(|(marker, _)| Some((repo::pack_key(&marker.strip_prefix("damaged/")?.parse().ok()?), marker)))
        .collect();
    // The destination's snapshots, read whole (within the process's read budget).
    let listed = to.listed_snapshots().await?;
    let mut reads = futures::stream::iter(
        listed
            .iter()
            .map(|(id, size)| async move { (id, to.read_listed_snapshot(id, *size).await.map(repo::header_only)) }),
    )
    .buffer_unordered(repo::HEADERS_AT_ONCE);
    // key → size: each object once, whichever snapshots name it.
    let mut named: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut damaged_snapshots = Vec::new();
    while let Some((id, read)) = reads.next().await {
        match read {
            Ok(sealed) => named.extend(sealed.header.objects()),
            Err(Error::Missing { .. }) => {}
            Err(Error::Corrupt { .. } | Error::UnsupportedFormat { .. }) => damaged_snapshots.push(id.clone()),
            Err(error) => return Err(error),
        }
    }
    drop(reads);
    // A damaged snapshot is written again from the source's object of that name, with what
    // that one names (the same objects, when this target was made by `copy`).
    let mut from_source = Vec::new();
    for id in damaged_snapshots {
        let key = repo::snapshot_key(&id);
        let why = match from.read_snapshot(&id).await {
            // As the copy leaves it out: forged, or written with a retired key.
            Ok(sealed) if !from.claims_this_config(&sealed) => {
                format!(
                    "damaged here, and {}'s object of that name is written under another config",
                    from.target.location()
                )
            }
            Ok(sealed) => {
                // The destination's own headers say first what they need.
                for (object, size) in sealed.header.objects() {
                    named.entry(object).or_insert(size);
                }
                from_source.push(repo::header_only(sealed));
                continue;
            }
            Err(Error::Missing { .. }) => format!("damaged here, and {} does not hold it", from.target.location()),
            Err(error @ (Error::Corrupt { .. } | Error::UnsupportedFormat { .. })) => {
                format!("damaged here and at the source too: {error}")
            }
            Err(error) => return Err(error),
        };
        report.not_repaired.push((key, why));
    }
    // What is wrong with each: missing, the wrong size, or (read) not its name's bytes.
    let checks = futures::stream::iter(named.into_iter().map(|(key, size)| {
        let there = held.get(&key).copied();
        let marker = marked.get(&key).cloned();
        async move {
            let whole = match there {
                Some(found) if found != size => false,
                None => false,
                Some(_) if key.starts_with("data/") && marker.is_none() => true,
                Some(_) => is_whole(to, &key, size, budget).await?,
            };
            Ok::<_, Error>((key, size, there.is_some(), marker, whole))
        }
    }))
    .buffer_unordered(IN_FLIGHT);
    let checked: Vec<_> = checks.try_collect().await?;
    // Still the destination's appender before anything there changes.
    locks.confirm(to.target.location()).await?;
    let mut wrong = Vec::new();
    for (key, size, there, marker, whole) in checked {
        if !whole {
            wrong.push((key, size, there, marker));
        } else if let Some(marker) = marker {
            clear_marker(to, &marker, report).await;
        }
    }
    wrong.sort();
    let mut writes = futures::stream::iter(wrong)
        .map(|(key, size, there, marker)| async move {
            let held = match fetch_repair(from, &key, size, budget).await? {
                Ok(held) => held,
                Err(why) => return Ok((key, size, marker, Err(why))),
            };
            // Counted in the budget until written.
            let bytes = bytes::Bytes::clone(&held);
            if there {
                to.target.rewrite(&key, bytes).await?;
            } else if to.target.put_new(&key, bytes).await? == PutOutcome::AlreadyThere {
                // Written meanwhile (a backup storing the same pack): it must be right.
                check_present(to, &key).await?;
            }
            drop(held);
            Ok::<_, Error>((key, size, marker, Ok(())))
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some((key, size, marker, outcome)) = writes.try_next().await? {
        match outcome {
            Ok(()) => {
                report.objects_repaired += 1;
                report.objects_copied += 1;
                report.bytes_copied += size;
                held.insert(key.clone(), size);
                if let Some(marker) = marker {
                    clear_marker(to, &marker, report).await;
                }
            }
            Err(why) => report.not_repaired.push((key, why)),
        }
    }
    drop(writes);
    // Last, as in a copy: the snapshot object, once everything it names is whole here.
    let unrepaired: std::collections::HashSet<String> = report.not_repaired.iter().map(|(k, _)| k.clone()).collect();
    for sealed in from_source {
        let key = repo::snapshot_key(&sealed.id);
        let lacking = sealed
            .header
            .objects()
            .find(|(object, size)| held.get(object) != Some(size) || unrepaired.contains(object));
        if let Some((object, _)) = lacking {
            report.not_repaired.push((key, format!("damaged here; it names {object}, which could not be repaired")));
            continue;
        }
        let Some(bytes) = read_again(from, &sealed).await? else {
            report.not_repaired.push((key, "changed in the source while it was read: repair again".into()));
            continue;
        };
        locks.confirm(to.target.location()).await?;
        to.target.rewrite(&key, bytes).await?;
        report.objects_repaired += 1;
        report.objects_copied += 1;
        report.bytes_copied += sealed.object_size;
    }
    report.not_repaired.sort();
    Ok(())
}

/// The snapshot object `sealed` was read from, read again to be written: no larger than it was
/// (one put in its place may be of any size), and `None` unless it is that object (the one
/// whose header named what was copied), not one put in its place meanwhile.
async fn read_again(from: &Repository, sealed: &repo::SealedSnapshot) -> Result<Option<bytes::Bytes>> {
    let bytes = from.target.get_at_most(&repo::snapshot_key(&sealed.id), sealed.object_size).await?;
    Ok((crate::crypto::object_hash(&bytes) == sealed.object_hash).then_some(bytes))
}

/// Why an object read at the size a header names it with is not that object.
enum Unfit {
    /// The size is more than its kind holds (the header's, which without a key is the
    /// storage's word): not read.
    OverKind,
    /// It is larger than that size: not read.
    Larger,
    /// Its bytes do not match its name.
    NotItsName(Error),
    /// It is shorter: its length.
    Shorter(u64),
}

/// `target`'s object `key` as a header names it: read no larger than `size` (within `budget`)
/// and checked against its name and size.
async fn read_named(
    target: &Repository,
    key: &str,
    size: u64,
    budget: &ReadBudget,
) -> Result<std::result::Result<Held, Unfit>> {
    if size > repo::largest_object(key) {
        return Ok(Err(Unfit::OverKind));
    }
    let held = match target.target.get_within_sized(key, size, budget).await {
        Err(Error::Corrupt { .. }) => return Ok(Err(Unfit::Larger)),
        held => held?,
    };
    if let Err(error) = repo::check_object_name(key, &held) {
        return Ok(Err(Unfit::NotItsName(error)));
    }
    if held.len() as u64 != size {
        return Ok(Err(Unfit::Shorter(held.len() as u64)));
    }
    Ok(Ok(held))
}

/// Whether `target` holds `key` whole: `size` bytes that match its name (read no further,
/// within `budget`).
async fn is_whole(target: &Repository, key: &str, size: u64, budget: &ReadBudget) -> Result<bool> {
    match read_named(target, key, size, budget).await {
        Ok(found) => Ok(found.is_ok()),
        Err(Error::Missing { .. }) => Ok(false),
        Err(error) => Err(error),
    }
}

/// `from`'s object `key`, read no larger than `size` (within `budget`) and checked against its
/// name and size; or why it cannot mend the destination's.
async fn fetch_repair(
    from: &Repository,
    key: &str,
    size: u64,
    budget: &ReadBudget,
) -> Result<std::result::Result<Held, String>> {
    let unfit = match read_named(from, key, size, budget).await {
        Ok(Ok(held)) => return Ok(Ok(held)),
        Ok(Err(unfit)) => unfit,
        Err(Error::Missing { .. }) => {
            return Ok(Err(format!(
                "{} does not hold it (a backup to both writes each target's own packs: a restore given both --repo \
                 reads each chunk from either)",
                from.target.location()
            )));
        }
        Err(error) => return Err(error),
    };
    Ok(Err(match unfit {
        Unfit::OverKind => {
            format!("named with {size} bytes, too large for what it is (a header rewritten in storage?)")
        }
        Unfit::Larger => format!(
            "{}'s object of that name is larger than this target's snapshots say ({size} bytes): one of them is \
             damaged",
            from.target.location()
        ),
        Unfit::NotItsName(_) => format!("damaged at {} too (its bytes do not match its name)", from.target.location()),
        Unfit::Shorter(length) => format!(
            "this target's snapshots name it with {size} bytes; the object of that name has {length} (their header \
             is wrong)"
        ),
    }))
}

/// Removes `verify`'s damage `marker` of a pack whole now: backups may reuse it again.
async fn clear_marker(to: &Repository, marker: &str, report: &mut CopyReport) {
    // A marker that cannot go (storage without the right to delete) keeps backups passing a
    // whole pack over: wasteful, not wrong.
    match to.target.delete(marker).await {
        Ok(()) => report.markers_cleared += 1,
        Err(error) => tracing::warn!("{}: {marker} stays, though its pack is whole: {error}", to.target.location()),
    }
}

/// Copies a generation's config copy or keys object that `to` lacks; with `repair`, also
/// writes again one `to` holds whose bytes do not match its name (storage damaged or replaced
/// it: keys then unlock from another copy only, and a backup exits 3 until it is mended).
async fn copy_object(
    (from, to): (&Repository, &Repository),
    key: &str,
    (budget, repair): (&ReadBudget, bool),
    report: &mut CopyReport,
) -> Result<()> {
    let there = match to.target.size_of(key).await {
        Ok(size) => size.is_some(),
        // Something that is no object in its place (a FIFO): a repair writes over it.
        Err(Error::Corrupt { .. }) if repair => true,
        Err(error) => return Err(error),
    };
    // Present and, when repairing, whole: nothing to do.
    if there && (!repair || holds_whole(to, key).await?) {
        return Ok(());
    }
    let held = fetch_checked(from, key, None, budget).await?;
    report.bytes_copied += held.len() as u64;
    report.objects_copied += 1;
    if there {
        to.target.rewrite(key, bytes::Bytes::clone(&held)).await?;
        report.objects_repaired += 1;
    } else {
        to.target.put_new(key, bytes::Bytes::clone(&held)).await?;
    }
    Ok(())
}

/// With `repair`: writes `to`'s `config` again when it is missing, damaged or replaced (it
/// opened from its copy under `configs/`, with a warning every time, and `verify` reports
/// it), from the first generation's bytes, whichever side holds them whole. Where neither
/// reaches the first generation, it is named in [`CopyReport::not_repaired`].
async fn mend_config((from, to): (&Repository, &Repository), report: &mut CopyReport) -> Result<()> {
    let (walked, _) = from.with_earlier_generations().await?;
    let walked = match walked.chain[0].1.generation {
        0 => walked,
        _ => to.with_earlier_generations().await?.0,
    };
    let (first_hash, first) = &walked.chain[0];
    let there = match to.target.get_at_most(repo::CONFIG_KEY, repo::MAX_CONFIG_BYTES).await {
        Ok(bytes) if first.generation == 0 && crate::crypto::object_hash(&bytes) == *first_hash => return Ok(()),
        Ok(_) | Err(Error::Corrupt { .. }) => true,
        Err(Error::Missing { .. }) => false,
        Err(error) => return Err(error),
    };
    let bytes = match first.generation {
        0 => match from.config_bytes_of(first_hash).await {
            Ok(bytes) => Some(bytes),
            Err(_) => to.config_bytes_of(first_hash).await.ok(),
        },
        _ => None,
    };
    let Some(bytes) = bytes else {
        let why = "missing, damaged or replaced, and the first generation's config is whole on neither side";
        report.not_repaired.push((repo::CONFIG_KEY.to_string(), why.into()));
        return Ok(());
    };
    let size = bytes.len() as u64;
    // What cannot be written (a folder holding files in its place) is named, and the copy of
    // the snapshots goes on: the target opens from its config's copy meanwhile.
    let written = if there {
        to.target.rewrite(repo::CONFIG_KEY, bytes).await
    } else {
        match to.target.put_new(repo::CONFIG_KEY, bytes).await {
            Ok(PutOutcome::AlreadyThere) => Err(Error::Invalid("appeared while it was mended: repair again".into())),
            other => other.map(|_| ()),
        }
    };
    match written {
        Ok(()) => {
            report.bytes_copied += size;
            report.objects_copied += 1;
            report.objects_repaired += 1;
        }
        Err(error) => report.not_repaired.push((repo::CONFIG_KEY.to_string(), error.to_string())),
    }
    Ok(())
}

/// Whether `to`'s object `key` (named by its hash, of a size its kind holds) is whole.
async fn holds_whole(to: &Repository, key: &str) -> Result<bool> {
    match to.target.get_at_most(key, repo::largest_object(key)).await {
        Ok(bytes) => Ok(repo::check_object_name(key, &bytes).is_ok()),
        // Larger than its kind holds, or gone since it was listed.
        Err(Error::Corrupt { .. } | Error::Missing { .. }) => Ok(false),
        Err(error) => Err(error),
    }
}

/// A content-addressed object present at `to`, checked against its name.
async fn check_present(to: &Repository, key: &str) -> Result<()> {
    let bytes = to.target.get_at_most(key, repo::largest_object(key)).await?;
    repo::check_object_name(key, &bytes).map_err(|_| {
        Error::corrupt(
            format!("{}/{key}", to.target.location()),
            "was there already and its bytes do not match its name (damaged, or not crmvault's): remove it and \
             copy again",
        )
    })
}

/// A content-addressed object of `from`, checked against its name (and `size`, when known),
/// read no larger than that size or what its kind can hold, within `budget` (the sizes are a
/// header's, which without a key is the storage's word).
async fn fetch_checked(from: &Repository, key: &str, size: Option<u64>, budget: &ReadBudget) -> Result<Held> {
    let Some(size) = size else {
        let held = from.target.get_within(key, repo::largest_object(key), budget).await?;
        repo::check_object_name(key, &held)?;
        return Ok(held);
    };
    let at = format!("{}/{key}", from.target.location());
    match read_named(from, key, size, budget).await? {
        Ok(held) => Ok(held),
        Err(Unfit::OverKind) => {
            Err(Error::corrupt(at, "is named with more bytes than its kind holds (a header rewritten in storage?)"))
        }
        Err(Unfit::NotItsName(error)) => Err(error),
        Err(Unfit::Larger | Unfit::Shorter(_)) => Err(Error::corrupt(at, "has the wrong size")),
    }
}

/// The error for a destination object of `found` bytes where the source's snapshot `snapshot`
/// names `expected`: the destination's object is at fault (an interrupted write) unless its
/// bytes match its name, and then the snapshot's header is (whoever writes the source's
/// storage can rewrite a header; no key checks it here), and the object must not be removed.
/// The destination failing to be read is the error (`Err`).
async fn size_mismatch(
    (from, snapshot): (&Repository, &repo::SnapshotId),
    to: &Repository,
    key: &str,
    found: u64,
    expected: u64,
) -> Result<Error> {
    let whole = match to.target.get_at_most(key, repo::largest_object(key)).await {
        Ok(bytes) => repo::check_object_name(key, &bytes).is_ok(),
        // Larger than its kind, or gone since the listing: not the object its name says.
        Err(Error::Corrupt { .. } | Error::Missing { .. }) => false,
        Err(error) => return Err(error),
    };
    Ok(if whole {
        Error::corrupt(
            format!("{}/{}", from.target.location(), repo::snapshot_key(snapshot)),
            format!(
                "names {key} with {expected} bytes, but the destination's {found} bytes match its name: this \
                 snapshot's header is wrong (keep the destination's object)"
            ),
        )
    } else {
        Error::corrupt(
            format!("{}/{key}", to.target.location()),
            format!("is {found} bytes, expected {expected}; remove it and copy again"),
        )
    })
}
