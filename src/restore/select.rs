//! Which snapshot to restore: `latest` or an id, passing over snapshots that do not prove
//! themselves (looking across targets is [`RepoSet`]'s).

use crate::error::{Error, Result};
use crate::fetch::Source;
use crate::repo::{Keyring, Manifest, SnapshotFilter};
use crate::repo_set::{RepoSet, Unreadable};
use crate::trust::SnapshotMark;

/// Which snapshot to open, and what is known of the newest.
pub(super) struct Choice<'a> {
    /// `latest` or an id prefix.
    pub(super) snapshot: &'a str,
    /// Which snapshots `latest` chooses among.
    pub(super) filter: &'a SnapshotFilter,
    /// The newest snapshot the caller knows of (a rollback is said).
    pub(super) newest_known: Option<&'a SnapshotMark>,
    /// Index entries kept in memory per target.
    pub(super) index_in_memory: usize,
}

impl<'a> From<&'a super::RestoreOptions> for Choice<'a> {
    fn from(options: &'a super::RestoreOptions) -> Choice<'a> {
        Choice {
            snapshot: &options.snapshot,
            filter: &options.filter,
            newest_known: options.newest_known.as_ref(),
            index_in_memory: options.index_in_memory,
        }
    }
}

/// The snapshot chosen, opened.
pub(super) struct Chosen {
    pub(super) manifest: Manifest,
    pub(super) sources: Vec<Source>,
    pub(super) mark: SnapshotMark,
    /// For `latest`: a newer snapshot was passed over (it does not open, or the newest this
    /// machine knows of is gone from storage), so what is restored is not the newest backup.
    pub(super) skipped_newer: bool,
}

/// Opens the snapshot `options.snapshot` names. For `latest`, the newest that proves itself:
/// each newer one that does not is passed over and named in `warnings`, and so is a newer
/// snapshot the caller knows of that no target holds (a rollback by deletion).
pub(super) async fn choose_snapshot(
    targets: &RepoSet,
    keyring: &Keyring,
    options: Choice<'_>,
    warnings: &mut Vec<String>,
) -> Result<Chosen> {
    let latest = options.snapshot == "latest";
    // Said only if a snapshot is restored after all; otherwise the first error says it.
    let mut passed_over = Vec::new();
    let mut first_error = None;
    let resolved = match targets.resolve_snapshot(options.snapshot, options.filter, keyring).await {
        Err(Error::SnapshotNotFound(what)) if latest => {
            return Err(Error::SnapshotNotFound(match gone(targets, keyring, options.newest_known).await {
                Some(known) => format!(
                    "{}, but this machine knows of snapshot {} (number {}, {}): deleted from storage without being \
                     forgotten; restore from another copy (`--repo`) and find out who deleted it",
                    what.strip_suffix(" yet").unwrap_or(&what),
                    known.id,
                    known.sequence,
                    known.time
                ),
                None => what,
            }));
        }
        resolved => resolved?,
    };
    // Snapshots that opened nowhere and may be newer than any that did (damaged, of a newer
    // format, not to this key, unreadable): never restored (their database is unknown), and
    // named, a few of them, with why.
    tracing::debug!(candidates = resolved.ids.len(), "snapshots resolved");
    let named = resolved.passed_over();
    let (unreadable, remembered) = (resolved.unreadable, resolved.remembered);
    // Snapshots passed over here: as unreadable as `unreadable`'s.
    let mut failed = Vec::new();
    for snapshot_id in resolved.ids {
        match targets.open_snapshot(keyring, &snapshot_id, options.index_in_memory).await {
            Ok((manifest, sources, mark)) => {
                // A snapshot that may be newer (one storage will not serve, say an old one moved
                // to an archive class, is named only).
                let mut skipped_newer = !passed_over.is_empty() || unreadable.iter().any(Unreadable::may_be_newer);
                let mut note = |warning: String| {
                    tracing::warn!("{warning}");
                    warnings.push(warning);
                };
                named.iter().cloned().for_each(&mut note);
                passed_over.drain(..).for_each(&mut note);
                // With a filter, an older snapshot is what was asked for: only a newest known
                // snapshot that no target holds any more is a rollback.
                let known = options.newest_known.filter(|known| latest && known.sequence > mark.sequence);
                let known = match known {
                    Some(known) if !options.filter.is_empty() => {
                        let any = SnapshotFilter::default();
                        targets.resolve_snapshot(&known.id.to_string(), &any, keyring).await.is_err().then_some(known)
                    }
                    known => known,
                };
                // Removed by `forget`, on the record: no rollback.
                let known = match known {
                    Some(known) if targets.absence_explained(&known.id, keyring).await => None,
                    known => known,
                };
                skipped_newer |= known.is_some();
                if let Some(known) = known
                    && (unreadable.iter().any(|skipped| skipped.id == known.id) || failed.contains(&known.id))
                {
                    note(format!(
                        "the newest snapshot this machine knows of, {} (number {}, {}), does not open (above); \
                         restoring the newest that does, {} (number {}, {})",
                        known.id, known.sequence, known.time, mark.id, mark.sequence, mark.time
                    ));
                } else if let Some(known) = known {
                    note(format!(
                        "the newest snapshot found, {} (number {}, {}), is older than the newest this machine knows of, {} \
                         (number {}, {}): it was deleted from storage; restoring the one found",
                        mark.id, mark.sequence, mark.time, known.id, known.sequence, known.time
                    ));
                }
                return Ok(Chosen { manifest, sources, mark, skipped_newer });
            }
            // Passed over when its object does not prove itself. One `latest` chose by labels
            // this machine remembered was not read until now: another failure is the object's
            // only if it no longer reads or opens anywhere (gone, refused), as it would have
            // been passed over when read for its labels; if it still does, the failure is the
            // restore's, as for a snapshot read now. Named with why the object does not open;
            // if none opens, the error is opening it, which says it of every copy.
            Err(error) if latest => {
                let why = if matches!(error, Error::Corrupt { .. } | Error::UnsupportedFormat { .. }) {
                    Some(error.to_string())
                } else if remembered.contains(&snapshot_id) {
                    targets.why_snapshot_does_not_open(&snapshot_id, keyring).await.map(|why| why.to_string())
                } else {
                    None
                };
                let Some(why) = why else {
                    return Err(error);
                };
                passed_over.push(format!("snapshot {snapshot_id} passed over: {why}"));
                first_error.get_or_insert(error);
                failed.push(snapshot_id);
            }
            Err(error) => return Err(error),
        }
    }
    // Nothing opened: the first that did not, tried again, says why on every copy (and one that
    // opens only now is not taken: its database and order were never checked).
    if first_error.is_none()
        && let Some(skipped) = unreadable.into_iter().next()
    {
        return match targets.open_snapshot(keyring, &skipped.id, options.index_in_memory).await {
            Err(error) => Err(error),
            Ok(_) => Err(skipped.why),
        };
    }
    Err(first_error.unwrap_or_else(|| Error::SnapshotNotFound("no snapshot to restore".into())))
}

/// The newest snapshot this machine knows of, when no target holds it and no `forget` record
/// explains its absence.
async fn gone<'a>(targets: &RepoSet, keyring: &Keyring, known: Option<&'a SnapshotMark>) -> Option<&'a SnapshotMark> {
    let known = known?;
    let any = SnapshotFilter::default();
    let held = targets.resolve_snapshot(&known.id.to_string(), &any, keyring).await.is_ok();
    (!held && !targets.absence_explained(&known.id, keyring).await).then_some(known)
}

/// The table of `manifest` that `name` means: `schema.table` as written (dots and all), or
/// quoted as SQL quotes identifiers where a dot belongs to a name (`"a.b".t`, `a."b.t"`), or a
/// table name alone when one schema has it. Its index in `manifest.tables`.
pub(super) fn table_named(manifest: &Manifest, name: &str) -> Result<usize> {
    // Quoted as SQL quotes; else (a name with a quote of its own in it) as written, below.
    if let Some((schema, table)) = quoted_name(name)
        && let Some(found) = (0..manifest.tables.len())
            .find(|&i| manifest.tables[i].schema == schema && manifest.tables[i].name == table)
    {
        return Ok(found);
    }
    let qualified: Vec<usize> = (0..manifest.tables.len())
        .filter(|&i| format!("{}.{}", manifest.tables[i].schema, manifest.tables[i].name) == name)
        .collect();
    let matching = if qualified.is_empty() {
        (0..manifest.tables.len()).filter(|&i| manifest.tables[i].name == name).collect()
    } else {
        qualified
    };
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::Invalid(format!(
            "the snapshot holds no data of a table {name} (`crmvault ls` lists its tables)"
        ))),
        _ => Err(Error::Invalid(format!(
            "{name} names a table in several schemas (or a schema and a table with dots in them): give \
             schema.table, with the part holding a dot in double quotes ('\"a.b\".t')"
        ))),
    }
}

/// `schema.table` written with at least one part in double quotes (a `""` inside one is a
/// quote), as SQL writes identifiers: the two names, or `None` when `name` is not so written.
fn quoted_name(name: &str) -> Option<(String, String)> {
    if !name.contains('"') {
        return None;
    }
    let mut parts = Vec::new();
    let mut rest = name;
    loop {
        let (part, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let mut part = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (at, '"') if quoted[at + 1..].starts_with('"') => {
                        part.push('"');
                        chars.next();
                    }
                    (at, '"') => break at + 1,
                    (_, c) => part.push(c),
                }
            };
            (part, &quoted[end..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            (rest[..end].to_string(), &rest[end..])
        };
        parts.push(part);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => break,
            None => return None,
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) if !schema.is_empty() && !table.is_empty() => Some((schema, table)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::quoted_name;

    #[test]
    fn a_quoted_name_tells_a_dot_in_a_name_from_the_one_between_schema_and_table() {
        let pair = |s: &str, t: &str| Some((s.to_string(), t.to_string()));
        assert_eq!(quoted_name("\"a.b\".t"), pair("a.b", "t"));
        assert_eq!(quoted_name("a.\"b.t\""), pair("a", "b.t"));
        assert_eq!(quoted_name("\"a.b\".\"c.d\""), pair("a.b", "c.d"));
        assert_eq!(quoted_name("crm.\"x\"\"; DROP TABLE y; --\""), pair("crm", "x\"; DROP TABLE y; --"));
        // Not so written: as before.
        assert_eq!(quoted_name("a.b.t"), None);
        for bad in ["\"a.b\"", "\"a.b\"t", "\"unclosed.t", "a.\"b\".c", "\"\".t"] {
            assert_eq!(quoted_name(bad), None, "{bad}");
        }
    }
}
