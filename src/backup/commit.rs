//! The commit: the snapshot's place in the chain, then per target its last index and the
//! snapshot object.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::repo::{self, Keyring, ObjectRef, SealedManifest, SnapshotHeader};
use crate::repo_set::LeftOut;
use crate::trust::SnapshotMark;

use super::{Stored, StoredDictionary, TargetReport, TargetState};

/// The snapshots earlier backups did not store, by target ([`crate::trust::Pin::missed`]).
type Missed = std::collections::BTreeMap<String, Vec<repo::ForgottenSnapshot>>;

/// Where the new snapshot goes in the repository's chain.
pub(super) struct Chain {
    pub(super) parent: Option<repo::SnapshotId>,
    pub(super) sequence: u64,
    /// The snapshots now known to be no newer than `parent`, for the pin
    /// ([`super::BackupOptions::settled`]).
    pub(super) settled: BTreeSet<repo::SnapshotId>,
    /// The newest snapshot this host knows of, when no target holds it and no record explains
    /// its absence (deleted from storage: a rollback), or what targets hold under its name does
    /// not read (replaced there); the backup reports either by its exit code.
    pub(super) deleted: Option<repo::SnapshotId>,
}

impl Chain {
    /// After the newest snapshot that proves itself on any target, or the newest this host
    /// knows of when storage lost that one. Noting, in `warnings`, newer snapshots that failed
    /// to prove themselves and a known snapshot no target holds (rollback).
    ///
    /// With a high-water mark, the snapshots in `settled` (the pin's: looked at by earlier
    /// backups and no newer than the mark) are not read again, but for the mark's own, which is
    /// opened every time: a nightly backup reads the snapshots written since the last one, not
    /// every snapshot of the repository's history.
    pub(super) async fn find(
        states: &[TargetState<'_>],
        keyring: &Keyring,
        (newest_known, settled, missed): (Option<&SnapshotMark>, &BTreeSet<repo::SnapshotId>, &Missed),
        warnings: &mut Vec<String>,
    ) -> Chain {
        let mut newest = newest_known.cloned();
        let mut known_held = newest_known.is_none();
        let mut note = |warning: String| {
            tracing::warn!("{warning}");
            warnings.push(warning);
        };
        // Without a mark nothing is settled: what was settled was so against the mark.
        let skipped: BTreeSet<repo::SnapshotId> = match newest_known {
            Some(known) => settled.iter().filter(|id| **id != known.id).cloned().collect(),
            None => BTreeSet::new(),
        };
        let mut settled_now = BTreeSet::new();
        // Whether any target holds a snapshot that proves itself; whether one is the known one
        // (or a copy of it).
        let (mut any_found, mut known_opened) = (false, false);
        for state in states.iter().filter(|s| s.error.is_none()) {
            let repository = state.repository;
            let location = repository.target.location();
            // Held or not, whether or not this key can open the snapshots there (a new writer
            // key after a rotation cannot open those the old one wrote).
            if let Some(known) = newest_known
                && !known_held
            {
                // Something under its name that is no object (a FIFO in a folder) is held, and
                // does not read.
                let size = repository.target.size_of(&repo::snapshot_key(&known.id)).await;
                known_held = matches!(size, Ok(Some(_)) | Err(Error::Corrupt { .. }));
            }
            let found = match repository.newest_authentic(keyring, &skipped).await {
                Ok(found) => found,
                Err(error) => {
                    note(format!("{location}: cannot list its snapshots: {error}"));
                    continue;
                }
            };
            for (id, error) in found.rejected {
                note(format!("{location}: snapshot {id} passed over: {error}"));
            }
            // A snapshot an earlier backup proved, still there, is one found (not read again).
            any_found |= found.listed.iter().any(|id| skipped.contains(id));
            // Listed is held, whatever a `HEAD` of it said a moment before.
            known_held |= newest_known.is_some_and(|known| found.listed.contains(&known.id));
            settled_now.extend(found.listed.into_iter().filter(|id| skipped.contains(id)));
            settled_now.extend(found.settled);
            if let Some(sealed) = found.found {
                any_found = true;
                let mark = sealed.mark();
                // A copy of the snapshot this host knows (`prune --identity`, `rekey --reencrypt`:
                // same place in the chain, a new id, the old one deleted) stands for it: the
                // new snapshot names the copy, and the old id's absence is no alarm.
                let copy_of_known = newest_known.is_some_and(|known| {
                    mark.id != known.id
                        && mark.sequence == known.sequence
                        && (sealed.header.replaces.as_ref() == Some(&known.id) || mark.time == known.time)
                });
                if copy_of_known {
                    known_held = true;
                }
                known_opened |= copy_of_known || newest_known.is_some_and(|known| known.id == mark.id);
                if newest
                    .as_ref()
                    .is_none_or(|n| mark.sequence > n.sequence || (copy_of_known && n.sequence == mark.sequence))
                {
                    newest = Some(mark);
                }
            }
        }
        // Gone on purpose: a forget record on some target names it.
        if let Some(known) = newest_known.filter(|_| !known_held) {
            for state in states.iter().filter(|s| s.error.is_none()) {
                if state.repository.absence_explained(&known.id, keyring).await {
                    known_held = true;
                    break;
                }
            }
        }
        // Copied under another name (by an admin's `rekey --reencrypt` or `prune --identity`)
        // while another host's snapshot is the newest.
        if let Some(known) = newest_known.filter(|_| !known_held) {
            for state in states.iter().filter(|s| s.error.is_none()) {
                if state.repository.copy_of(known, keyring).await.is_some() {
                    known_held = true;
                    break;
                }
            }
        }
        // Held under its name, but not what was written there: anything else under that name
        // fails to read (a snapshot's id is the hash of its manifest's ciphertext) or to prove
        // itself (a header rewritten, its hash line made again, fails the MAC). A key that
        // cannot decrypt it (a writer key rotated since) is no such proof, and no alarm.
        let named = |known: &SnapshotMark| {
            format!(
                "snapshot {} (number {} of this repository, {}), the newest this host wrote or checked,",
                known.id, known.sequence, known.time
            )
        };
        let mut replaced = None;
        if let Some(known) = newest_known.filter(|_| known_held && !known_opened) {
            let mut reads = Vec::new();
            for state in states.iter().filter(|s| s.error.is_none()) {
                let read = state.repository.read_snapshot(&known.id).await;
                reads.push(read.and_then(|sealed| sealed.open(keyring).map(|_| ())));
            }
            let corrupt = |read: &Result<()>| matches!(read, Err(Error::Corrupt { .. }));
            if reads.iter().any(corrupt) && !reads.iter().any(Result::is_ok) {
                note(format!(
                    "{} does not read on any target: replaced or damaged in storage (see `crmvault verify`)",
                    named(known)
                ));
                replaced = Some(known.id.clone());
            }
        }
        // Never stored on any target reached tonight (earlier backups missed them all, as this
        // host's pin says): it is on those not reached, not deleted.
        let reached = || states.iter().filter(|s| s.error.is_none());
        let elsewhere = newest_known.filter(|known| {
            !known_held
                && reached().all(|state| {
                    crate::trust::missed_at(missed, state.repository.target.location()).iter().any(|s| s.id == known.id)
                })
        });
        if let Some(known) = elsewhere {
            note(format!(
                "{} is on none of the targets reached tonight: earlier backups did not reach them, and the targets \
                 that hold it were not reached either",
                named(known)
            ));
        }
        let deleted = newest_known.filter(|_| !known_held && elsewhere.is_none());
        if let Some(known) = deleted {
            // With an older snapshot left, the new one (naming the lost one) is not the oldest,
            // and `verify` checks its predecessor; with none left it is, and a target's oldest
            // snapshot may name one the target never held (a target added later).
            let after = if any_found {
                "The new snapshot names it as its predecessor, so `verify` reports the gap"
            } else {
                "No other snapshot is left either, so nothing but this backup's exit code reports it: `verify` \
                 cannot tell the new snapshot from a target's first"
            };
            note(format!("{} is on no target: deleted without being forgotten? {after}", named(known)));
        }
        Chain {
            parent: newest.as_ref().map(|m| m.id.clone()),
            sequence: newest.map_or(1, |m| m.sequence + 1),
            settled: settled_now,
            deleted: deleted.map(|known| known.id.clone()).or(replaced),
        }
    }
}

pub(super) fn all_failed(states: &[TargetState<'_>], left_out: &[LeftOut]) -> Error {
    let opened = states
        .iter()
        .map(|s| (s.repository.target.location().to_string(), s.error.clone().unwrap_or_else(|| "failed".into())));
    let left_out = left_out.iter().map(|l| (l.location.clone(), l.reason.clone()));
    Error::EveryTargetFailed(opened.chain(left_out).collect())
}

/// Writes one target's index and snapshot object: the commit on that target. `missed`: the
/// snapshots earlier backups did not store here, recorded first ([`super::BackupOptions::missed`]).
pub(super) async fn commit(
    state: &TargetState<'_>,
    mut stored: Stored,
    reused: Vec<u32>,
    sealed: &SealedManifest,
    dictionaries: &[StoredDictionary],
    (keyring, locks): (&Keyring, &crate::lock::Locks),
    (time, chain, missed): (chrono::DateTime<chrono::Utc>, &Chain, &[repo::ForgottenSnapshot]),
) -> Result<TargetReport> {
    let repository = state.repository;
    // The index of the last new packs (and the dictionaries it names) goes in before the
    // snapshot that needs it.
    let sealing = (repository.metadata_recipients(), keyring.index_mac_key());
    stored.write_index(&repository.target, &sealing, dictionaries).await?;
    let Stored { packs: new_packs, indexes: new_indexes, new_chunks, mut bytes_added, .. } = stored;
    // Every new pack holds only chunks of this snapshot; the other chunks are in packs the
    // target already had.
    let mut packs = BTreeSet::new();
    let mut indexes: BTreeSet<ObjectRef> = new_indexes.into_iter().collect();
    let mut dictionaries = BTreeSet::new();
    for (pack, dictionary) in new_packs {
        packs.insert(pack);
        dictionaries.extend(dictionary);
    }
    for number in reused {
        let reusable = state.held.index.pack(number);
        let index_id: repo::ObjectId = reusable.index_id.parse()?;
        let size = *state.index_sizes.get(&*reusable.index_id).ok_or_else(|| Error::Missing {
            object: repo::index_key(&index_id),
            location: repository.target.location().into(),
        })?;
        packs.insert(reusable.pack.clone());
        indexes.insert(ObjectRef { id: index_id, size });
        dictionaries.extend(reusable.dictionary.clone());
    }
    let header = SnapshotHeader {
        version: repo::FORMAT_VERSION,
        time,
        config_hash: repository.config_hash.clone(),
        total_bytes: packs.iter().chain(indexes.iter()).chain(dictionaries.iter()).map(|o| o.size).sum(),
        added_bytes: bytes_added,
        packs: packs.into_iter().collect(),
        indexes: indexes.into_iter().collect(),
        dictionaries: dictionaries.into_iter().collect(),
        parent: chain.parent.clone(),
        sequence: chain.sequence,
        replaces: None,
    };
    let object = sealed.snapshot_object(&header, keyring);
    bytes_added += object.len() as u64;
    repository.check_still_newest().await?;
    // Still ours: a prune that took over the lock of a backup stalled past its lease may have
    // deleted the packs this snapshot names.
    locks.confirm(repository.target.location()).await?;
    // What earlier backups did not get here is recorded before the snapshot that names (or
    // follows) it: `verify` of this target never sees the gap unexplained.
    // One that is here after all (stored though its backup saw the put fail, or copied here
    // since) is left out: the record would explain its deletion.
    let mut absent = Vec::new();
    for snapshot in missed {
        if repository.target.size_of(&repo::snapshot_key(&snapshot.id)).await?.is_none() {
            absent.push(snapshot.clone());
        }
    }
    if !absent.is_empty() {
        let record = repo::ForgetRecord {
            time: chrono::Utc::now(),
            kind: repo::RecordKind::Missed,
            target: Some(crate::target::place(repository.target.location())),
            config_hash: repository.config_hash.clone(),
            policy: "missed: the backups that wrote them did not reach this target".into(),
            snapshots: absent.clone(),
        };
        let (key, size) = repository.put_forget_record(&record, keyring).await?;
        bytes_added += size;
        tracing::info!(
            "{}: recorded {key}: {} snapshot(s) earlier backups did not store here",
            repository.target.location(),
            absent.len()
        );
    }
    repository.target.put_new(&repo::snapshot_key(&sealed.id), object).await?;
    Ok(TargetReport {
        location: repository.target.location().to_string(),
        ok: true,
        error: None,
        new_chunks,
        bytes_added,
        bytes_total: header.total_bytes,
        recorded_missed: absent.iter().map(|m| m.id.clone()).collect(),
        small_packs: header.packs.iter().filter(|p| repo::is_small_pack(p.size, repository.config.pack_size)).count(),
        // Set by the caller, which counted them.
        rewritten_bytes: 0,
        // Set by the caller, which checks them once the snapshot is stored everywhere.
        problems: Vec::new(),
    })
}
