//! What `latest` chooses by, remembered on this machine: each snapshot's time, database, host
//! and tags, as a manifest opened with the repository's keys once gave them.
//!
//! Choosing `latest` needs those labels of every snapshot, and they are inside each snapshot
//! object, whose plaintext header lists every pack the snapshot uses: a year of nights is 365
//! objects of ~165 KB read whole on every restore, drill, dump and diff (on S3, as many
//! requests and 60 MB of egress, growing with nights × packs). A snapshot id is the BLAKE3 of
//! its manifest's ciphertext, and the MAC over header and manifest proved the labels when they
//! were read: under that id they never change. So they are kept here, and only snapshots this
//! machine has not opened yet are read.
//!
//! The file orders snapshots and nothing more: the snapshot chosen is read and opened whole as
//! before (a forged or damaged object under a remembered id is refused there, and the next is
//! tried). It lives beside the repository's pin (`repos/<id>/labels.json`, 0600), names the
//! fingerprint it belongs to, and is rewritten atomically; a damaged or missing one is read as
//! empty, and a failure to write it is said at debug level only (it saves time, it proves
//! nothing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::SnapshotId;
use crate::trust::Fingerprint;

/// When a snapshot was taken and whose it is: what `latest` chooses by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    /// The header's time.
    pub time: DateTime<Utc>,
    /// The manifest's database.
    pub database: String,
    /// The manifest's host.
    pub hostname: String,
    /// The manifest's tags (`backup --tag`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Snapshots remembered at most (about 150 bytes each; a nightly backup of one database makes
/// this many in 27 years). Labels of snapshots no longer listed (forgotten, or on another copy
/// only) are kept until then: they are never looked up unless listed.
pub const KEPT: usize = 10_000;

/// The file's content.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The repository it was written for (one of its generations' fingerprints).
    fingerprint: Fingerprint,
    snapshots: BTreeMap<SnapshotId, Labels>,
}

/// The remembered labels of one repository's snapshots.
#[derive(Debug)]
pub struct LabelCache {
    path: PathBuf,
    /// Written into the file.
    fingerprint: Fingerprint,
}

impl LabelCache {
    /// The cache of repository `repository_id` under `config_dir`, written for the repository
    /// that `fingerprint` names.
    pub fn new(config_dir: &Path, repository_id: &str, fingerprint: Fingerprint) -> Self {
        let path = config_dir.join("repos").join(repository_id).join("labels.json");
        LabelCache { path, fingerprint }
    }

    /// What the file holds, or nothing when it is missing, damaged, or names a fingerprint
    /// that `accepts` does not (another repository's; the repository accepts those of the
    /// generations it was opened through).
    pub fn load(&self, accepts: impl Fn(&Fingerprint) -> bool) -> BTreeMap<SnapshotId, Labels> {
        crate::trust::read_beside_pin(&self.path, |stored: &Stored| &stored.fingerprint, accepts)
            .map(|stored| stored.snapshots)
            .unwrap_or_default()
    }

    /// Replaces the file with `snapshots`, the newest [`KEPT`] of them (mode 0600; a crash
    /// leaves the old file or the new one). A failure is said at debug level: the next command
    /// reads the objects again.
    pub fn save(&self, mut snapshots: BTreeMap<SnapshotId, Labels>) {
        if snapshots.len() > KEPT {
            let mut times: Vec<DateTime<Utc>> = snapshots.values().map(|labels| labels.time).collect();
            times.sort_unstable();
            let oldest_kept = times[times.len() - KEPT];
            snapshots.retain(|_, labels| labels.time >= oldest_kept);
        }
        crate::trust::write_beside_pin(&self.path, &Stored { fingerprint: self.fingerprint, snapshots });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(seed: &[u8]) -> Fingerprint {
        Fingerprint::of_config_hash(&blake3::hash(seed).to_hex()).unwrap()
    }

    fn labels(database: &str) -> Labels {
        Labels {
            time: "2026-12-06T01:00:00Z".parse().unwrap(),
            database: database.into(),
            hostname: "h".into(),
            tags: vec![],
        }
    }

    #[test]
    fn labels_read_back_only_for_the_repository_they_were_written_for() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, later) = (fingerprint(b"first"), fingerprint(b"later"));
        let ours = |f: &Fingerprint| *f == first || *f == later;
        let cache = LabelCache::new(dir.path(), "r1", first);
        assert!(cache.load(ours).is_empty(), "no file yet");
        let id = SnapshotId::of(b"manifest");
        cache.save(BTreeMap::from([(id.clone(), labels("crm"))]));
        let path = dir.path().join("repos/r1/labels.json");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(cache.load(ours), BTreeMap::from([(id.clone(), labels("crm"))]));
        // Another repository that took the same id is not given them.
        let other = fingerprint(b"other");
        assert!(LabelCache::new(dir.path(), "r1", other).load(|f| *f == other).is_empty());
        // The newest are kept when there are too many.
        let many: BTreeMap<SnapshotId, Labels> = (0..u32::try_from(KEPT).unwrap() + 5)
            .map(|n| {
                let time = DateTime::from_timestamp(1_800_000_000 + i64::from(n), 0).unwrap();
                (SnapshotId::of(&n.to_le_bytes()), Labels { time, ..labels("crm") })
            })
            .collect();
        cache.save(many);
        let kept = cache.load(ours);
        assert_eq!(kept.len(), KEPT);
        assert!(!kept.contains_key(&SnapshotId::of(&4u32.to_le_bytes())));
        assert!(kept.contains_key(&SnapshotId::of(&5u32.to_le_bytes())));
        // A damaged file is an empty one.
        std::fs::write(&path, b"{\"fingerprint\":").unwrap();
        assert!(cache.load(ours).is_empty());
    }
}
