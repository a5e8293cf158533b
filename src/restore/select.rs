//! Which snapshot to restore, across targets: `latest` or an id, passing over snapshots that do
//! not prove themselves, and opening it on every target that holds it.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fetch::Source;
use crate::repo::{Keyring, Manifest, Repository};
use crate::trust::SnapshotMark;

use super::RestoreOptions;

/// Resolves `latest` or an id prefix over several copies of a repository: the snapshots to try,
/// in order. An id gives one; `latest` gives every snapshot, newest first, so that a restore can
/// pass over one that fails to prove itself (a forgery dated in the future, a damaged object).
pub async fn resolve_snapshot(repositories: &[Repository], selector: &str) -> Result<Vec<String>> {
    if selector == "latest" {
        let mut found = Vec::new();
        for repository in repositories {
            match repository.snapshots_newest_first().await {
                Ok(list) => found.extend(list),
                Err(error) if repositories.len() > 1 => tracing::warn!("{}: {error}", repository.target.location()),
                Err(error) => return Err(error),
            }
        }
        found.sort_by(|a, b| b.cmp(a));
        let mut seen = HashSet::new();
        found.retain(|(_, id)| seen.insert(id.clone()));
        if found.is_empty() {
            let locations: Vec<&str> = repositories.iter().map(|r| r.target.location()).collect();
            return Err(Error::SnapshotNotFound(format!("{} holds no snapshot yet", locations.join(", "))));
        }
        return Ok(found.into_iter().map(|(_, id)| id).collect());
    }
    let mut found: Vec<(chrono::DateTime<chrono::Utc>, String)> = Vec::new();
    let mut first_error = None;
    for repository in repositories {
        let resolved = match repository.resolve_snapshot(selector).await {
            Ok(id) => repository.read_snapshot_header(&id).await.map(|header| (header.time, id)),
            Err(error) => Err(error),
        };
        match resolved {
            Ok(entry) => found.push(entry),
            Err(error) => {
                if repositories.len() > 1 {
                    tracing::warn!("{}: {error}", repository.target.location());
                }
                first_error.get_or_insert(error);
            }
        }
    }
    found.sort();
    found.dedup_by(|a, b| a.1 == b.1);
    if selector != "latest" && found.len() > 1 {
        return Err(Error::SnapshotNotFound(format!("{selector} matches {} snapshots; give more digits", found.len())));
    }
    match (found.pop(), first_error) {
        (Some((_, id)), _) => Ok(vec![id]),
        (None, Some(error)) => Err(error),
        (None, None) => Err(Error::Invalid("restore needs at least one --repo".into())),
    }
}

/// Opens a snapshot on every target that holds it and gathers the chunk sources.
pub async fn open_snapshot(
    repositories: &[Repository],
    keyring: &Keyring,
    snapshot_id: &str,
    index_in_memory: usize,
) -> Result<(Manifest, Vec<Source>, SnapshotMark)> {
    let mut manifest = None;
    let mut mark = None;
    let mut sources = Vec::new();
    let mut first_error = None;
    for repository in repositories {
        // Opening checks the config it was written under (SealedSnapshot::open).
        let sealed = repository.read_snapshot(snapshot_id).await;
        let opened = match sealed {
            Ok(sealed) => sealed.open(keyring).map(|m| {
                mark.get_or_insert_with(|| sealed.mark());
                (Some(m), Some((sealed.header.indexes, sealed.header.packs)))
            }),
            Err(Error::Missing { .. }) => Ok((None, None)),
            Err(error) => Err(error),
        };
        let listed = match opened {
            Ok((opened, listed)) => {
                if manifest.is_none() {
                    manifest = opened;
                }
                listed
            }
            Err(error) => {
                if repositories.len() > 1 {
                    tracing::warn!("{}: {error}", repository.target.location());
                }
                first_error.get_or_insert(error);
                None
            }
        };
        // Only the listed indexes, and in them only the packs the snapshot uses. A target whose
        // copy of the snapshot is lost or damaged may still hold the chunks: all of its indexes.
        let (indexes, packs) = match &listed {
            Some((indexes, packs)) => (Some(indexes.as_slice()), Some(packs.as_slice())),
            None => (None, None),
        };
        let (index, failures) = repository.load_index_lenient(keyring, indexes, packs, index_in_memory).await?;
        for (key, error) in failures {
            tracing::warn!("{}: {key}: {error}", repository.target.location());
            first_error.get_or_insert(error);
        }
        sources.push(Source::new(repository.target.clone(), Arc::new(index)));
    }
    match (manifest, first_error) {
        (Some(manifest), _) => Ok((manifest, sources, mark.expect("set with the manifest"))),
        (None, Some(error)) => Err(error),
        (None, None) => Err(Error::SnapshotNotFound(format!("no target holds snapshot {snapshot_id}"))),
    }
}

/// Opens the snapshot `options.snapshot` names. For `latest`, the newest that proves itself:
/// each newer one that does not is passed over and named in `warnings`, and so is a newer
/// snapshot the caller knows of that no target holds (a rollback by deletion).
pub(super) async fn choose_snapshot(
    repositories: &[Repository],
    keyring: &Keyring,
    options: &RestoreOptions,
    warnings: &mut Vec<String>,
) -> Result<(Manifest, Vec<Source>, SnapshotMark)> {
    let latest = options.snapshot == "latest";
    // Said only if a snapshot is restored after all; otherwise the first error says it.
    let mut passed_over = Vec::new();
    let mut first_error = None;
    for snapshot_id in resolve_snapshot(repositories, &options.snapshot).await? {
        match open_snapshot(repositories, keyring, &snapshot_id, options.index_in_memory).await {
            Ok((manifest, sources, mark)) => {
                let mut note = |warning: String| {
                    tracing::warn!("{warning}");
                    warnings.push(warning);
                };
                passed_over.drain(..).for_each(&mut note);
                if let Some(known) =
                    options.newest_known.as_ref().filter(|known| latest && known.sequence > mark.sequence)
                {
                    note(format!(
                        "the newest snapshot found, {} (number {}, {}), is older than the newest this machine knows of, {} \
                         (number {}, {}): it was deleted from storage; restoring the one found",
                        mark.id, mark.sequence, mark.time, known.id, known.sequence, known.time
                    ));
                }
                return Ok((manifest, sources, mark));
            }
            Err(error @ (Error::Corrupt { .. } | Error::UnsupportedFormat { .. })) if latest => {
                passed_over.push(format!("snapshot {snapshot_id} passed over: {error}"));
                first_error.get_or_insert(error);
            }
            Err(error) => return Err(error),
        }
    }
    Err(first_error.unwrap_or_else(|| Error::SnapshotNotFound("no snapshot to restore".into())))
}
