//! Forget records (`forgotten/<hash>`): the authenticated note `forget` leaves of the
//! snapshots it removed, so that a gap in the chain, or a high-water mark no target holds, is
//! told apart from a snapshot deleted behind the repository's back (docs/FORMAT.md,
//! *Forget records*).

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto;
use crate::error::{Error, Result};
use crate::trust::SnapshotMark;

use super::{AUTHENTICATED_VERSION, FORMAT_VERSION, Keyring, ObjectId, Repository, SnapshotId, is_object_hash};

/// The first word of a forget record.
const RECORD_MAGIC: &str = "crmvault-forgotten";
/// Records larger than this are not read (a record of 10 000 snapshots is about 1.3 MB).
pub(super) const MAX_RECORD_BYTES: u64 = 16 << 20;
/// The most forgotten snapshots a keyless reader keeps track of, over all records: a backup
/// every hour for ten years, about 30 MB held. It takes records as they read, so records
/// planted to name millions of made-up snapshots (16 MiB each) would otherwise all be held.
/// A reader with a key keeps only records that prove themselves.
const MAX_FORGOTTEN_SNAPSHOTS: usize = 100_000;

/// What one `forget` removed, and why; or which snapshots a target never received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetRecord {
    /// When the snapshots were forgotten (or found missed).
    pub time: DateTime<Utc>,
    /// What the record says of its snapshots. Absent in a forget record (as before format 7
    /// had this field: such a record reads the same in every build).
    #[serde(default, skip_serializing_if = "RecordKind::is_forgotten")]
    pub kind: RecordKind,
    /// A missed record's target: the place ([`crate::target::place`]) whose backups missed
    /// its snapshots. Only there does it explain anything: every copy of a repository shares
    /// its keys, so a record copied to another target must not explain a deletion there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The config (generation) whose keys wrote it.
    pub config_hash: String,
    /// The policy that removed them, as its flags read ("keep-daily 7, keep-weekly 5").
    pub policy: String,
    /// The snapshots removed: id, place in the chain, time, predecessor.
    pub snapshots: Vec<ForgottenSnapshot>,
}

/// Why a record's snapshots are not on its target. Either way their absence is explained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// `forget` removed them.
    #[default]
    Forgotten,
    /// The backups that wrote them elsewhere did not reach this target (it failed that night):
    /// written by the next backup that reached it, from what the failed one's host remembers.
    Missed,
}

impl RecordKind {
    #[allow(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
    fn is_forgotten(&self) -> bool {
        *self == RecordKind::Forgotten
    }
}

/// One snapshot a record says was removed (or missed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgottenSnapshot {
    /// Its id.
    pub id: SnapshotId,
    /// Its sequence number.
    pub sequence: u64,
    /// Its time.
    pub time: DateTime<Utc>,
    /// Its predecessor (absent for a repository's first): a forgotten snapshot explains the
    /// gap it leaves, not one before it, so readers go on checking from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
}

impl ForgottenSnapshot {
    /// Its place in the chain.
    pub fn mark(&self) -> SnapshotMark {
        SnapshotMark { id: self.id.clone(), sequence: self.sequence, time: self.time }
    }
}

/// Object key of a forget record.
pub fn forgotten_key(id: &ObjectId) -> String {
    format!("forgotten/{id}")
}

impl ForgetRecord {
    /// The stored object: a version line, the record as one line of JSON, and its MAC over
    /// both under the repository's forget MAC key.
    pub fn seal(&self, keyring: &Keyring) -> Bytes {
        let version_line = format!("{RECORD_MAGIC} {FORMAT_VERSION}");
        let line = serde_json::to_vec(self).expect("serialisable");
        let mac = keyring.forget_mac_key().mac(&[version_line.as_bytes(), &line]);
        let mut object = format!("{version_line}\n").into_bytes();
        object.extend_from_slice(&line);
        object.push(b'\n');
        object.extend_from_slice(mac.as_bytes());
        object.push(b'\n');
        Bytes::from(object)
    }

    /// Parses a stored record. With a keyring, also proves it was written with this
    /// repository's keys: under the newest generation's, or carried by a `rekey` byte for byte.
    pub fn open(key: &str, bytes: &[u8], keyring: Option<&Keyring>) -> Result<ForgetRecord> {
        super::check_object_name(key, bytes)?;
        let mut lines = bytes.split(|&b| b == b'\n');
        let (Some(version_line), Some(line), Some(mac), Some(b""), None) =
            (lines.next(), lines.next(), lines.next(), lines.next(), lines.next())
        else {
            return Err(Error::corrupt(key, "not a forget record (three lines expected)"));
        };
        let version = std::str::from_utf8(version_line)
            .ok()
            .and_then(|text| text.strip_prefix(RECORD_MAGIC))
            .and_then(|text| text.trim().parse::<u32>().ok())
            .ok_or_else(|| Error::corrupt(key, "not a forget record"))?;
        if !(AUTHENTICATED_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::corrupt(
                key,
                format!("a forget record of format {version}, which this build does not read"),
            ));
        }
        let record: ForgetRecord =
            serde_json::from_slice(line).map_err(|e| Error::corrupt(key, format!("bad forget record: {e}")))?;
        if let Some(keyring) = keyring {
            let object_hash = crypto::object_hash(bytes);
            let mac_key = keyring.forget_mac_key_for(&record.config_hash, &object_hash).ok_or_else(|| {
                Error::corrupt(
                    key,
                    "was written under another config (a key retired by `rekey`, or another repository's)",
                )
            })?;
            let expected = mac_key.mac_bytes(&[version_line, line]);
            if blake3::Hash::from_hex(mac).ok() != Some(expected) {
                return Err(Error::corrupt(key, "its MAC does not match (not written with this repository's key)"));
            }
        }
        Ok(record)
    }
}

/// The snapshots a repository's records say were forgotten, and the records that did not read
/// or prove themselves.
#[derive(Debug, Default)]
pub struct Forgotten {
    /// Each forgotten (or missed) snapshot, with the time it was forgotten.
    pub snapshots: BTreeMap<SnapshotId, (ForgottenSnapshot, DateTime<Utc>)>,
    /// Those of `snapshots` only missed records name: never on this target, so they say
    /// nothing of where its history starts.
    pub missed: std::collections::BTreeSet<SnapshotId>,
    /// Records passed over: key and why.
    pub rejected: Vec<(String, Error)>,
    /// The records' keys and sizes (for `verify`'s object count, and `copy`).
    pub objects: Vec<(String, u64)>,
}

impl Forgotten {
    /// Whether a record explains `id`'s absence.
    pub fn contains(&self, id: &SnapshotId) -> bool {
        self.snapshots.contains_key(id)
    }

    /// The snapshots `forget` removed here (not those this target missed).
    pub fn removed(&self) -> impl Iterator<Item = &ForgottenSnapshot> {
        self.snapshots.iter().filter(|(id, _)| !self.missed.contains(*id)).map(|(_, (snapshot, _))| snapshot)
    }

    /// Whether `id`'s absence is explained all the way back: it is forgotten, and so is each
    /// predecessor down to one `present` says is there (or the first). Otherwise the first
    /// snapshot on that way back that is neither: deleted without being forgotten. A record
    /// explains the snapshots it names, never the one before them: when `forget` removed the
    /// newest snapshot, deleting the newest remaining one is still noticed.
    pub fn gap_below(&self, id: &SnapshotId, present: impl Fn(&SnapshotId) -> bool) -> Option<SnapshotId> {
        let mut at = id.clone();
        // Each step goes to a lower sequence number: at most one step per record entry.
        for _ in 0..=self.snapshots.len() {
            if present(&at) {
                return None;
            }
            let Some((forgotten, _)) = self.snapshots.get(&at) else { return Some(at) };
            match &forgotten.parent {
                Some(parent) => at = parent.clone(),
                None => return None,
            }
        }
        Some(at)
    }
}

impl Repository {
    /// Stores a forget record; returns its key and size.
    pub async fn put_forget_record(&self, record: &ForgetRecord, keyring: &Keyring) -> Result<(String, u64)> {
        let object = record.seal(keyring);
        let (key, size) = (forgotten_key(&ObjectId::of(&object)), object.len() as u64);
        self.target.put_new(&key, object).await?;
        Ok((key, size))
    }

    /// Whether this target's forget records, proven with `keyring`, explain that `id` is not
    /// here: it was forgotten, and so was every predecessor down to one that is here
    /// ([`Forgotten::gap_below`]). Storage that cannot be read explains nothing.
    pub async fn absence_explained(&self, id: &SnapshotId, keyring: &Keyring) -> bool {
        let (Ok(forgotten), Ok(ids)) = (self.forgotten(Some(keyring)).await, self.snapshot_ids().await) else {
            return false;
        };
        let present: std::collections::BTreeSet<SnapshotId> = ids.into_iter().collect();
        forgotten.contains(id) && forgotten.gap_below(id, |at| present.contains(at)).is_none()
    }

    /// Reads every forget record. With a keyring, a record that does not prove itself explains
    /// nothing and is returned in `rejected`; without one (a keyless `verify`), records are
    /// taken as they read, as keyless readers take snapshot headers.
    pub async fn forgotten(&self, keyring: Option<&Keyring>) -> Result<Forgotten> {
        let mut forgotten = Forgotten::default();
        for (key, size) in self.target.list("forgotten").await? {
            let name = key.rsplit('/').next().unwrap_or_default();
            if !is_object_hash(name) {
                forgotten.rejected.push((key.clone(), Error::corrupt(&key, "its name is not a BLAKE3 hash")));
                continue;
            }
            if size > MAX_RECORD_BYTES {
                forgotten.rejected.push((key.clone(), Error::corrupt(&key, "too large for a forget record")));
                continue;
            }
            forgotten.objects.push((key.clone(), size));
            let opened = match self.target.get_at_most(&key, MAX_RECORD_BYTES).await {
                Ok(bytes) => ForgetRecord::open(&key, &bytes, keyring),
                Err(error) => Err(error),
            };
            let here = crate::target::place(self.target.location());
            let opened = opened.and_then(|record| match (&record.kind, &record.target) {
                (RecordKind::Missed, Some(place)) if *place == here => Ok(record),
                (RecordKind::Missed, place) => Err(Error::corrupt(
                    &key,
                    format!(
                        "a missed record of another target ({}), copied here? It explains nothing here",
                        place.as_deref().unwrap_or("none named")
                    ),
                )),
                (RecordKind::Forgotten, _) => Ok(record),
            });
            // Keyless only: records proven with a key are the repository's own, however many.
            let opened = opened.and_then(|record| {
                let new = record.snapshots.iter().filter(|s| !forgotten.snapshots.contains_key(&s.id)).count();
                if keyring.is_none() && forgotten.snapshots.len() + new > MAX_FORGOTTEN_SNAPSHOTS {
                    return Err(Error::corrupt(
                        &key,
                        format!(
                            "names more forgotten snapshots than a repository holds ({MAX_FORGOTTEN_SNAPSHOTS} in \
                             all with the records read before it): not taken (planted in storage?)"
                        ),
                    ));
                }
                Ok(record)
            });
            match opened {
                Ok(record) => {
                    for snapshot in record.snapshots {
                        match record.kind {
                            RecordKind::Missed if !forgotten.snapshots.contains_key(&snapshot.id) => {
                                forgotten.missed.insert(snapshot.id.clone());
                            }
                            RecordKind::Missed => continue,
                            RecordKind::Forgotten => {
                                forgotten.missed.remove(&snapshot.id);
                            }
                        }
                        forgotten.snapshots.insert(snapshot.id.clone(), (snapshot, record.time));
                    }
                }
                Err(error) => forgotten.rejected.push((key, error)),
            }
        }
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_explained_only_down_to_a_snapshot_that_is_there() {
        let id = |n: u8| SnapshotId::of(&[n]);
        let forgotten_snapshot = |n: u8, parent: Option<u8>| ForgottenSnapshot {
            id: id(n),
            sequence: u64::from(n),
            time: "2026-11-01T01:00:00Z".parse().expect("time"),
            parent: parent.map(id),
        };
        let time: DateTime<Utc> = "2026-12-01T01:00:00Z".parse().expect("time");
        let mut forgotten = Forgotten::default();
        for snapshot in [forgotten_snapshot(4, Some(3)), forgotten_snapshot(3, Some(2)), forgotten_snapshot(1, None)] {
            forgotten.snapshots.insert(snapshot.id.clone(), (snapshot, time));
        }
        // 4 and 3 forgotten, 2 there: explained.
        assert_eq!(forgotten.gap_below(&id(4), |s| *s == id(2)), None);
        // 2 gone too, never forgotten: that is the gap.
        assert_eq!(forgotten.gap_below(&id(4), |_| false), Some(id(2)));
        // Not forgotten at all.
        assert_eq!(forgotten.gap_below(&id(9), |_| false), Some(id(9)));
        // The first snapshot forgotten: nothing before it.
        assert_eq!(forgotten.gap_below(&id(1), |_| false), None);
    }

    #[test]
    fn a_record_round_trips_and_any_changed_byte_is_refused() {
        let keyring = Keyring::for_tests();
        let record = ForgetRecord {
            time: "2026-12-03T01:00:00Z".parse().expect("time"),
            kind: RecordKind::Forgotten,
            target: None,
            config_hash: keyring.head.clone(),
            policy: "keep-daily 7".into(),
            snapshots: vec![ForgottenSnapshot {
                id: SnapshotId::of(b"manifest"),
                sequence: 4,
                time: "2026-11-01T01:00:00Z".parse().expect("time"),
                parent: Some(SnapshotId::of(b"parent")),
            }],
        };
        let object = record.seal(&keyring);
        let key = forgotten_key(&ObjectId::of(&object));
        assert_eq!(ForgetRecord::open(&key, &object, Some(&keyring)).expect("opens"), record);
        for at in [0, 25, object.len() - 10] {
            let mut bad = object.to_vec();
            bad[at] ^= 1;
            // Renamed to its new hash, so that only the MAC or the parse can catch it.
            let key = forgotten_key(&ObjectId::of(&bad));
            assert!(ForgetRecord::open(&key, &bad, Some(&keyring)).is_err(), "byte {at}");
        }
        // Another repository's keys do not prove it.
        let other = Keyring::for_tests();
        assert!(ForgetRecord::open(&key, &object, Some(&other)).is_err());
    }
}
