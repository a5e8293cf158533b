//! The audit trail (`audit/<number>-<hash>`): one immutable, encrypted record per operation on
//! the repository (backup, restore, drill, verify, forget, prune, rekey, copy), numbered and
//! hash-chained so that a removed record leaves a gap (docs/FORMAT.md, *Audit trail*).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto;
use crate::error::{Error, Result};

use super::{FORMAT_VERSION, Keyring, Repository, is_object_hash};

/// The first word of an audit record.
const AUDIT_MAGIC: &str = "crmvault-audit";
/// Records larger than this are not read.
pub(super) const MAX_AUDIT_BYTES: u64 = 1 << 20;
/// Where a MAC goes, what no record of crmvault's holds (only a keyring writes records): a
/// record with it is a forgery.
const NO_MAC: &str = "-";

/// What one operation did: encrypted to the admins and the writer key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// `backup`, `restore`, `drill`, `verify`, `forget`, `prune`, `rekey`, `copy`.
    pub operation: String,
    /// When it began.
    pub started: DateTime<Utc>,
    /// When it ended (the record's time).
    pub ended: DateTime<Utc>,
    /// The snapshots it wrote, restored, removed or copied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// The operating-system user that ran it.
    pub user: String,
    /// The host it ran on.
    pub host: String,
    /// crmvault's version.
    pub version: String,
    /// `ok`, `partial` (exit 3), `alarm` (exit 4) or `failed`.
    pub result: String,
    /// The exit code.
    pub exit_code: u8,
    /// The error, for a failed operation (one line, as printed). Of a run with an admin
    /// identity, filled in from [`Self::error_admin`] when an admin reads the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error of a run with an admin identity, which may quote data (a value PostgreSQL
    /// refused to load, a row asked for): age-encrypted to the admins alone, hex. The writer
    /// key reads that such a run failed, not why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_admin: Option<String>,
    /// The database backed up, restored into or drilled into, without its password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// The plaintext header: what a keyless reader checks the chain with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHeader {
    /// The record's number: one more than the highest the writer saw.
    pub number: u64,
    /// The hashes of the records of the number before that prove themselves (several when
    /// runs ended at the same moment; none for number 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<String>,
    /// The target it was written on (its place, as missed records name one), for the record:
    /// a repository folder moved or copied elsewhere keeps its trail, so it is no check.
    pub target: String,
    /// The config (generation) whose keys MACed it.
    pub config_hash: String,
    /// The record this one is a copy of, encrypted again by `rekey --reencrypt` (its hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// One record as read: its header, its entry where a key opened it, and whether its MAC proved it.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Its object key.
    pub key: String,
    /// The plaintext header.
    pub header: AuditHeader,
    /// The entry, when the keyring could decrypt it.
    pub entry: Option<AuditEntry>,
    /// Whether a MAC under this repository's keys proved it (`None`: no keyring to check with).
    pub authenticated: Option<bool>,
}

impl AuditRecord {
    /// The BLAKE3 of the object, from its name (checked when it was read).
    pub fn hash(&self) -> &str {
        parse_key(&self.key).map_or("", |(_, hash)| hash)
    }
}

/// What `rekey --reencrypt` did to a trail.
#[derive(Debug, Default)]
pub struct ReencryptedTrail {
    /// Records written again.
    pub written: usize,
    /// Records deleted (the ones written again).
    pub deleted: usize,
    /// Records the storage would not delete (key, why).
    pub refused: Vec<(String, String)>,
    /// Records this identity cannot read, left as they were.
    pub left: Vec<String>,
}

/// What a repository's trail holds: the records in order, and what is wrong with it.
#[derive(Debug, Default)]
pub struct AuditTrail {
    /// Records by number (several may share one: operations that ran at once).
    pub records: Vec<AuditRecord>,
    /// Removed, forged or unreadable records, one line each.
    pub problems: Vec<String>,
    /// The bytes of the records listed.
    pub bytes: u64,
}

/// The highest number a record's name holds (ten digits).
const MAX_NUMBER: u64 = 9_999_999_999;

impl AuditHeader {
    /// What a header must be: hashes are hashes, the number has its ten digits.
    fn check(&self) -> std::result::Result<(), &'static str> {
        let hashes = self.previous.iter().chain(std::iter::once(&self.config_hash)).chain(self.replaces.iter());
        if !(1..=MAX_NUMBER).contains(&self.number) {
            Err("its number is out of range")
        } else if !hashes.into_iter().all(|hash| is_object_hash(hash)) {
            Err("its header names something that is not a BLAKE3 hash")
        } else if (self.number == 1) != self.previous.is_empty() {
            Err("the first record names none before it, every other one does")
        } else {
            Ok(())
        }
    }
}

/// The key of record `number` with hash `hash`.
fn audit_key(number: u64, hash: &str) -> String {
    format!("audit/{number:010}-{hash}")
}

/// Splits `audit/<number>-<hash>`.
fn parse_key(key: &str) -> Option<(u64, &str)> {
    let name = key.strip_prefix("audit/")?;
    let (number, hash) = name.split_once('-')?;
    (number.len() == 10 && is_object_hash(hash)).then_some(())?;
    Some((number.parse().ok()?, hash))
}

impl AuditEntry {
    /// Keeps the error for the admins alone ([`Self::error_admin`], sealed to `admins`).
    pub fn seal_error(&mut self, admins: &[age::x25519::Recipient]) {
        if let Some(error) = self.error.take() {
            self.error_admin = Some(hex::encode(crypto::encrypt(admins, error.as_bytes())));
        }
    }

    /// The stored object: a version line, the header line, a MAC over both and the ciphertext
    /// under the repository's audit key, then the entry encrypted to `recipients`.
    fn seal(&self, header: &AuditHeader, recipients: &[age::x25519::Recipient], keyring: &Keyring) -> Bytes {
        let version_line = format!("{AUDIT_MAGIC} {FORMAT_VERSION}");
        let header_line = serde_json::to_vec(header).expect("serialisable");
        let ciphertext = crypto::encrypt(recipients, &serde_json::to_vec(self).expect("serialisable"));
        let parts: [&[u8]; 3] = [version_line.as_bytes(), &header_line, &ciphertext];
        let mac = keyring.audit_mac_key().mac(&parts);
        let mut object = format!("{version_line}\n").into_bytes();
        object.extend_from_slice(&header_line);
        object.push(b'\n');
        object.extend_from_slice(mac.as_bytes());
        object.push(b'\n');
        object.extend_from_slice(&ciphertext);
        Bytes::from(object)
    }
}

/// An audit record's bytes parsed as a keyless reader does, under the name its number and hash
/// give it (`fuzzing::audit`); the header when it reads.
#[doc(hidden)]
pub fn parse_stored(bytes: &[u8]) -> Option<AuditHeader> {
    let number = bytes
        .split(|&b| b == b'\n')
        .nth(1)
        .and_then(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .and_then(|header| header["number"].as_u64())
        .filter(|number| (1..=MAX_NUMBER).contains(number))
        .unwrap_or(1);
    let key = audit_key(number, &crypto::object_hash(bytes));
    open(&key, bytes, None).ok().map(|record| record.header)
}

/// Parses a stored record: with a keyring, proves its MAC (a record a keyless writer left is
/// taken as unauthenticated) and decrypts it.
fn open(key: &str, bytes: &[u8], keyring: Option<&Keyring>) -> Result<AuditRecord> {
    let Some((number, hash)) = parse_key(key) else {
        return Err(Error::corrupt(key, "not an audit record's name"));
    };
    if crypto::object_hash(bytes) != hash {
        return Err(Error::corrupt(key, "its contents do not hash to its name"));
    }
    let mut parts = bytes.splitn(4, |&b| b == b'\n');
    let (Some(version_line), Some(header_line), Some(mac), Some(ciphertext)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::corrupt(key, "not an audit record (three lines and a ciphertext expected)"));
    };
    if version_line != format!("{AUDIT_MAGIC} {FORMAT_VERSION}").as_bytes() {
        return Err(Error::corrupt(key, "not an audit record of a format this build reads"));
    }
    let header: AuditHeader =
        serde_json::from_slice(header_line).map_err(|e| Error::corrupt(key, format!("bad audit header: {e}")))?;
    header.check().map_err(|why| Error::corrupt(key, why))?;
    if header.number != number {
        return Err(Error::corrupt(key, format!("its header says number {}", header.number)));
    }
    let Some(keyring) = keyring else {
        return Ok(AuditRecord { key: key.to_string(), header, entry: None, authenticated: None });
    };
    let authenticated = if mac == NO_MAC.as_bytes() {
        false
    } else {
        let object_hash = crypto::object_hash(bytes);
        let mac_key = keyring.audit_mac_key_for(&header.config_hash, &object_hash).ok_or_else(|| {
            Error::corrupt(key, "was written under another config (a key retired by `rekey`, or another repository's)")
        })?;
        let expected = mac_key.mac_bytes(&[version_line, header_line, ciphertext]);
        if blake3::Hash::from_hex(mac).ok() != Some(expected) {
            return Err(Error::corrupt(key, "its MAC does not match (not written with this repository's key)"));
        }
        true
    };
    // A record written before this key could read them (an admin added later, a writer key
    // rotated since) is authentic all the same: unreadable here, not a problem.
    let entry = match keyring.decrypt(key, ciphertext) {
        Ok(plaintext) => {
            let mut entry: AuditEntry =
                serde_json::from_slice(&plaintext).map_err(|e| Error::corrupt(key, format!("bad audit entry: {e}")))?;
            // An admin reads the error kept for the admins (one added since cannot: left out).
            if keyring.is_admin()
                && let Some(sealed) = &entry.error_admin
                && let Ok(error) =
                    hex::decode(sealed).map_err(|_| ()).and_then(|c| keyring.decrypt(key, &c).map_err(drop))
            {
                entry.error = Some(String::from_utf8_lossy(&error).into_owned());
            }
            Some(entry)
        }
        Err(Error::BadKey(_) | Error::WrongIdentity { .. }) if authenticated => None,
        Err(error) => return Err(error),
    };
    Ok(AuditRecord { key: key.to_string(), header, entry, authenticated: Some(authenticated) })
}

impl Repository {
    /// Appends `entry` to this target's trail: numbered one past the highest records there
    /// that prove themselves with `keyring` (junk or forgeries with higher numbers are passed
    /// over, and `verify` names them), naming all of those, MACed with `keyring`. Returns the
    /// record's key.
    pub async fn append_audit(&self, entry: &AuditEntry, keyring: &Keyring) -> Result<String> {
        let mut listed: Vec<(u64, String)> = self
            .target
            .list("audit")
            .await?
            .into_iter()
            .filter(|(key, size)| *size <= MAX_AUDIT_BYTES && parse_key(key).is_some())
            .map(|(key, _)| (parse_key(&key).map_or(0, |(number, _)| number), key))
            .collect();
        listed.sort_by(|a, b| b.cmp(a));
        let (mut number, mut previous) = (0, Vec::new());
        for group in listed.chunk_by(|a, b| a.0 == b.0) {
            for (_, key) in group {
                let proven = match self.target.get_at_most(key, MAX_AUDIT_BYTES).await {
                    Ok(bytes) => open(key, &bytes, Some(keyring)).ok().filter(|r| r.authenticated == Some(true)),
                    Err(_) => None,
                };
                if let Some(record) = proven {
                    previous.push(record.hash().to_string());
                }
            }
            if !previous.is_empty() {
                number = group[0].0;
                break;
            }
        }
        if number >= MAX_NUMBER {
            return Err(Error::corrupt("audit", "the trail has no number left"));
        }
        previous.sort();
        let header = AuditHeader {
            number: number + 1,
            previous,
            target: crate::target::place(self.target.location()),
            config_hash: keyring.head.clone(),
            replaces: None,
        };
        let object = entry.seal(&header, &self.metadata_recipients(), keyring);
        let key = audit_key(header.number, &crypto::object_hash(&object));
        self.target.put_new(&key, object).await?;
        Ok(key)
    }

    /// Writes the trail again for the recipients there are now (`rekey --reencrypt`): every
    /// record of an earlier generation, and every record after one written again (its
    /// predecessor's hash changes), as a copy under the same number naming its copied
    /// predecessor and the record it `replaces`; then deletes what was copied. Killed in
    /// between, both chains are whole, and a later run finds the copies and goes on. Returns
    /// the records written, deleted, those the storage would not delete (key, why), and those
    /// left as they were (this identity cannot read them: they stay readable by whoever could).
    pub async fn reencrypt_audit(&self, keyring: &Keyring) -> Result<ReencryptedTrail> {
        let mut trail = self.audit_trail(Some(keyring)).await?;
        trail.records.sort_by(|a, b| (a.header.number, &a.key).cmp(&(b.header.number, &b.key)));
        // Copies an earlier run made: old hash -> copy's hash.
        let mut copied: std::collections::HashMap<String, String> = trail
            .records
            .iter()
            .filter(|r| r.header.config_hash == keyring.head && r.authenticated == Some(true))
            .filter_map(|r| r.header.replaces.clone().map(|old| (old, r.hash().to_string())))
            .collect();
        let mut replaced: Vec<String> = Vec::new();
        let (mut written, mut left) = (0, Vec::new());
        for record in &trail.records {
            let hash = record.hash().to_string();
            if copied.contains_key(&hash) {
                replaced.push(record.key.clone());
                continue;
            }
            let moved = record.header.previous.iter().any(|previous| copied.contains_key(previous));
            let current = record.header.config_hash == keyring.head && record.header.replaces.is_none();
            if current && !moved {
                continue;
            }
            let (Some(entry), Some(true)) = (&record.entry, record.authenticated) else {
                left.push(record.key.clone());
                continue;
            };
            let mut previous: Vec<String> = record
                .header
                .previous
                .iter()
                .map(|previous| copied.get(previous).cloned().unwrap_or_else(|| previous.clone()))
                .collect();
            previous.sort();
            let header = AuditHeader {
                number: record.header.number,
                previous,
                target: record.header.target.clone(),
                config_hash: keyring.head.clone(),
                replaces: Some(hash.clone()),
            };
            // An error kept for the admins, for the admins now (read into `error` as it opened).
            let mut entry = entry.clone();
            if entry.error_admin.is_some() {
                entry.seal_error(&self.data_recipients());
            }
            let object = entry.seal(&header, &self.metadata_recipients(), keyring);
            let copy = crypto::object_hash(&object);
            self.target.put_new(&audit_key(header.number, &copy), object).await?;
            copied.insert(hash, copy);
            replaced.push(record.key.clone());
            written += 1;
        }
        let (mut deleted, mut refused) = (0, Vec::new());
        for key in replaced {
            match self.target.delete(&key).await {
                Ok(()) => deleted += 1,
                Err(error) => refused.push((key, error.to_string())),
            }
        }
        Ok(ReencryptedTrail { written, deleted, refused, left })
    }

    /// Reads the trail: every record (proven and decrypted with `keyring`, headers only
    /// without), and what is wrong with it: a number missing between 1 and the highest (a
    /// removed record), a record naming a predecessor that is not there, a record no later one
    /// names (the records after it replaced, from another copy?), one that does not open or
    /// prove itself; objects under `audit/` that are no records, counted on one line.
    pub async fn audit_trail(&self, keyring: Option<&Keyring>) -> Result<AuditTrail> {
        let mut trail = AuditTrail::default();
        let mut keys = Vec::new();
        let mut junk = Vec::new();
        for (key, size) in self.target.list("audit").await? {
            trail.bytes += size;
            if size > MAX_AUDIT_BYTES || parse_key(&key).is_none() {
                junk.push(key);
            } else {
                keys.push(key);
            }
        }
        if !junk.is_empty() {
            let shown: Vec<String> = junk.iter().take(3).map(|key| key.escape_debug().to_string()).collect();
            trail.problems.push(format!(
                "{} object{} under audit/ {} no audit record (name or size): {}{}",
                junk.len(),
                if junk.len() == 1 { "" } else { "s" },
                if junk.len() == 1 { "is" } else { "are" },
                shown.join(", "),
                if junk.len() > 3 { ", …" } else { "" }
            ));
        }
        keys.sort();
        let reads = keys.iter().map(|key| async move {
            let opened = match self.target.get_at_most(key, MAX_AUDIT_BYTES).await {
                Ok(bytes) => open(key, &bytes, keyring),
                Err(error) => Err(error),
            };
            (key, opened)
        });
        let opened: Vec<_> =
            futures::StreamExt::collect(futures::StreamExt::buffered(futures::stream::iter(reads), 16)).await;
        let hashes: std::collections::BTreeSet<&str> =
            keys.iter().filter_map(|key| parse_key(key)).map(|(_, hash)| hash).collect();
        // The trail runs to the highest record that opens (and, with a key, proves itself):
        // junk named like a record far ahead is reported as junk, not as every record before
        // it removed. Below that, a record there that does not open is reported as such, not
        // also as removed.
        let highest = opened
            .iter()
            .filter_map(|(_, opened)| opened.as_ref().ok())
            .filter(|record| record.authenticated != Some(false))
            .map(|record| record.header.number)
            .max()
            .unwrap_or(0);
        let numbers: std::collections::BTreeSet<u64> = keys
            .iter()
            .filter_map(|key| parse_key(key))
            .map(|(number, _)| number)
            .filter(|&number| number <= highest)
            .collect();
        // The gaps between the numbers there are (counted, not walked: a planted record may be
        // numbered in the billions).
        let mut gaps = Vec::new();
        let mut missing = 0u64;
        let mut below = 0u64;
        for &number in &numbers {
            if number > below + 1 {
                missing += number - below - 1;
                gaps.push(if number == below + 2 {
                    (below + 1).to_string()
                } else {
                    format!("{}-{}", below + 1, number - 1)
                });
            }
            below = number;
        }
        if missing > 0 {
            let shown: Vec<&str> = gaps.iter().take(5).map(String::as_str).collect();
            trail.problems.push(format!(
                "audit record{} {}{} removed (the trail runs to {highest})",
                if missing == 1 { "" } else { "s" },
                shown.join(", "),
                if gaps.len() > 5 { ", …" } else { "" }
            ));
        }
        let mut records = Vec::new();
        for (_, opened) in opened {
            match opened {
                Ok(record) => records.push(record),
                Err(error) => trail.problems.push(error.to_string()),
            }
        }
        let named: std::collections::BTreeSet<&str> =
            records.iter().flat_map(|r| r.header.previous.iter()).map(String::as_str).collect();
        let replaced: std::collections::BTreeSet<&str> =
            records.iter().filter_map(|r| r.header.replaces.as_deref()).collect();
        for record in &records {
            let key = &record.key;
            for previous in record.header.previous.iter().filter(|previous| !hashes.contains(previous.as_str())) {
                trail.problems.push(format!("{key}: the record before it ({}) is not there: removed", &previous[..12]));
            }
            // A record `rekey --reencrypt` copied, and a copy, may both stand unnamed until
            // the run that made the copy finishes.
            let rewritten = record.header.replaces.is_some() || replaced.contains(record.hash());
            if record.header.number < highest && !named.contains(record.hash()) && !rewritten {
                trail.problems.push(format!(
                    "{key}: no record after it names it: the records that followed it were removed or replaced"
                ));
            }
            if record.authenticated == Some(false) {
                trail.problems.push(format!("{key}: written without a key: forged"));
            }
        }
        trail.records = records;
        Ok(trail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditEntry {
        AuditEntry {
            operation: "restore".into(),
            started: "2026-12-04T03:00:00Z".parse().expect("time"),
            ended: "2026-12-04T03:01:00Z".parse().expect("time"),
            snapshots: vec!["ab".repeat(32)],
            user: "alice".into(),
            host: "admin1".into(),
            version: "0.1.0".into(),
            result: "ok".into(),
            exit_code: 0,
            error: None,
            error_admin: None,
            database: Some("postgres://alice@db/crm_restored".into()),
        }
    }

    #[test]
    fn a_record_round_trips_and_any_changed_byte_is_refused() {
        let keyring = Keyring::for_tests();
        let recipients = vec![keyring.identities()[0].to_public()];
        let header = AuditHeader {
            number: 3,
            previous: vec!["cd".repeat(32)],
            target: "/srv/backups/crm".into(),
            config_hash: keyring.head.clone(),
            replaces: None,
        };
        let object = entry().seal(&header, &recipients, &keyring);
        let key = audit_key(3, &crypto::object_hash(&object));
        let record = open(&key, &object, Some(&keyring)).expect("opens");
        assert_eq!((record.entry, record.header, record.authenticated), (Some(entry()), header, Some(true)));
        for at in [0, 30, object.len() / 2, object.len() - 10] {
            let mut bad = object.to_vec();
            bad[at] ^= 1;
            let key = audit_key(3, &crypto::object_hash(&bad));
            assert!(open(&key, &bad, Some(&keyring)).is_err(), "byte {at}");
        }
        // Another repository's keys do not prove it; a wrong number in the name is seen.
        assert!(open(&key, &object, Some(&Keyring::for_tests())).is_err());
        assert!(open(&audit_key(4, &crypto::object_hash(&object)), &object, Some(&keyring)).is_err());
    }
}
