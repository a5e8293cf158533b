//! `rekey --reencrypt`: every pack, dictionary and index written again to the admins there
//! are now, each snapshot sealed again, and what the old keys could read deleted.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::crypto;
use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};
use crate::repo::{
    self, AdminKeyring, IndexFile, Keyring, Manifest, ObjectId, ObjectRef, PackRecord, Repository, SealedManifest,
    SealedSnapshot, SnapshotHeader, SnapshotId,
};

/// What `--reencrypt` did on one target.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Reencrypted {
    /// The target.
    pub location: String,
    /// Snapshots written again (each a copy with a new id, `replaces` naming the old one).
    pub snapshots: usize,
    /// Packs, dictionaries and indexes written again.
    pub packs: usize,
    /// Dictionaries written again.
    pub dictionaries: usize,
    /// Indexes written for the new packs.
    pub indexes: usize,
    /// Audit records written again (the trail, for the admins there are now).
    pub audit_records: usize,
    /// Audit records left as they were: this identity cannot read them (written before it
    /// was added), so whoever could still can.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit_left: Vec<String>,
    /// Objects deleted: the replaced snapshots, and every pack, dictionary and index no
    /// remaining snapshot needs.
    pub deleted: usize,
    /// Objects the storage refused to delete (Object Lock, no delete permission), with why:
    /// still readable by whoever could read them before.
    pub not_deleted: Vec<(String, String)>,
    /// Snapshots left as they were because this identity cannot open them, with why.
    pub left: Vec<(SnapshotId, String)>,
    /// Snapshot objects that prove nothing (junk, forged, damaged), with why: they keep nothing
    /// from being deleted.
    pub ignored: Vec<(SnapshotId, String)>,
}

impl Reencrypted {
    /// Whether something stored may still be readable by a key that is no longer a recipient.
    pub fn incomplete(&self) -> bool {
        !self.not_deleted.is_empty() || !self.left.is_empty() || !self.audit_left.is_empty()
    }
}

/// What identifies a pack's contents across a re-encryption: its chunk records.
fn pack_signature(record: &PackRecord) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    for chunk in &record.chunks {
        hasher.update(&chunk.chunk().0);
        hasher.update(&chunk.offset().to_le_bytes());
        hasher.update(&chunk.length().to_le_bytes());
        hasher.update(&chunk.raw_length().to_le_bytes());
        hasher.update(&chunk.start().to_le_bytes());
    }
    hasher.finalize()
}

/// One target's side of a re-encryption.
struct Rewriting<'a> {
    repository: &'a Repository,
    out: Reencrypted,
    /// Snapshots still to copy, opened.
    todo: HashMap<SnapshotId, (SealedSnapshot, Manifest)>,
    /// Snapshots replaced (copied) here, to delete (sequence and time first: newest go first).
    replaced: Vec<(u64, chrono::DateTime<chrono::Utc>, SnapshotId)>,
    /// Packs already written again, by what they hold.
    packs_done: HashMap<blake3::Hash, PackRecord>,
    /// The index that lists each new pack.
    index_of: HashMap<ObjectId, ObjectRef>,
    /// Old dictionary id → new.
    dictionaries: HashMap<ObjectId, ObjectRef>,
    /// Snapshots left as they were here (their successors' copies name them as they are).
    kept: HashSet<SnapshotId>,
}

/// Writes every snapshot of `repositories` (copies of one, at its newest generation) again so
/// that only the current recipients can read anything: each pack and dictionary decrypted and
/// encrypted again to the current admins, new indexes for them, each snapshot sealed again
/// (`replaces` the old one; same time and place in the chain; one new id on every target),
/// then the replaced snapshots and every pack, dictionary and index no remaining snapshot needs
/// deleted.
///
/// Crash-safe: until a snapshot's copy is stored, the old one is whole; copies already stored
/// are found again by a later run (by `replaces`, their packs by their chunk records, their
/// manifest reused so the id stays one), and deletion starts only with the replaced snapshot
/// objects, so no remaining snapshot ever names a deleted object.
pub async fn reencrypt(
    repositories: &[Repository],
    keyring: &AdminKeyring,
    progress: &dyn Progress,
) -> Result<Vec<Reencrypted>> {
    let mut targets = Vec::new();
    // Old id → the copy's sealed manifest, from whichever target holds a copy already.
    let mut copies: HashMap<SnapshotId, SealedManifest> = HashMap::new();
    for repository in repositories {
        let location = repository.target.location().to_string();
        let mut rewriting = Rewriting {
            repository,
            out: Reencrypted { location, ..Reencrypted::default() },
            todo: HashMap::new(),
            replaced: Vec::new(),
            packs_done: HashMap::new(),
            index_of: HashMap::new(),
            dictionaries: HashMap::new(),
            kept: HashSet::new(),
        };
        // Copies an earlier, interrupted run made for the admins there are now.
        let readers: BTreeSet<&String> = repository.config.recipients.iter().collect();
        let same_readers = |hash: &str| {
            repository
                .chain
                .iter()
                .any(|(h, config)| h == hash && config.recipients.iter().collect::<BTreeSet<_>>() == readers)
        };
        let ids = repository.snapshot_ids().await?;
        let phase = format!("re-encrypting {}", repository.target.location());
        progress.phase(&phase, Unit::Snapshots, Some(ids.len() as u64));
        for id in ids {
            progress.advance(1);
            let sealed = match repository.read_snapshot(&id).await {
                Ok(sealed) => sealed,
                Err(error) => {
                    rewriting.out.ignored.push((id, error.to_string()));
                    continue;
                }
            };
            match sealed.open(keyring) {
                Ok(_) if sealed.header.replaces.is_some() && same_readers(&sealed.header.config_hash) => {
                    for index in &sealed.header.indexes {
                        let file = repository.read_listed_index(keyring, &repo::index_key(&index.id)).await?;
                        for record in file.packs {
                            rewriting.index_of.insert(record.pack.id.clone(), index.clone());
                            rewriting.packs_done.insert(pack_signature(&record), record);
                        }
                    }
                    let old = sealed.header.replaces.clone().expect("matched");
                    copies.insert(old, sealed.sealed_manifest(keyring)?);
                }
                Ok(manifest) => {
                    rewriting.todo.insert(id, (sealed, manifest));
                }
                // Written before this identity was added: it stays as it was (and says so).
                Err(error @ (Error::BadKey(_) | Error::WrongIdentity { .. })) => {
                    rewriting.out.left.push((id, error.to_string()));
                }
                Err(error) => rewriting.out.ignored.push((id, error.to_string())),
            }
        }
        targets.push(rewriting);
    }

    // Oldest first, so that each copy can name its predecessor's copy.
    let order = oldest_first(targets.iter().flat_map(|t| t.todo.values().map(|(s, _)| s)));
    let mut new_ids: HashMap<SnapshotId, SnapshotId> =
        copies.iter().map(|(old, copy)| (old.clone(), copy.id.clone())).collect();
    for old in order {
        for rewriting in &mut targets {
            let Some((sealed, mut manifest)) = rewriting.todo.remove(&old) else { continue };
            if !copies.contains_key(&old) {
                let copy = SealedManifest::seal(&mut manifest, rewriting.repository);
                new_ids.insert(old.clone(), copy.id.clone());
                copies.insert(old.clone(), copy);
            }
            if rewriting.repository.target.size_of(&repo::snapshot_key(&copies[&old].id)).await?.is_none() {
                match rewriting.copy_snapshot(keyring, &sealed, &copies[&old], &new_ids).await {
                    Ok(()) => {}
                    // What it needs is missing or damaged here: it stays as it was (another
                    // target may hold it whole, `verify` names what is wrong), the others go on.
                    Err(error @ (Error::Missing { .. } | Error::Corrupt { .. })) => {
                        rewriting.out.left.push((old.clone(), error.to_string()));
                        rewriting.kept.insert(old.clone());
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            rewriting.replaced.push((sealed.header.sequence, sealed.header.time, old.clone()));
        }
    }
    for rewriting in &mut targets {
        rewriting.delete_replaced(keyring).await?;
        let trail = rewriting.repository.reencrypt_audit(keyring).await?;
        rewriting.out.audit_records = trail.written;
        rewriting.out.deleted += trail.deleted;
        rewriting.out.not_deleted.extend(trail.refused);
        rewriting.out.audit_left = trail.left;
    }
    Ok(targets.into_iter().map(|t| t.out).collect())
}

impl Rewriting<'_> {
    /// Stores on this target a copy of `sealed` sealed as `copy`, its packs and dictionaries
    /// written again for the current admins.
    async fn copy_snapshot(
        &mut self,
        keyring: &Keyring,
        sealed: &SealedSnapshot,
        copy: &SealedManifest,
        new_ids: &HashMap<SnapshotId, SnapshotId>,
    ) -> Result<()> {
        let repository = self.repository;
        let (data_recipients, metadata_recipients) = (repository.data_recipients(), repository.metadata_recipients());
        let wanted: HashSet<&ObjectId> = sealed.header.packs.iter().map(|p| &p.id).collect();
        let mut records = Vec::new();
        let mut seen = HashSet::new();
        for index in &sealed.header.indexes {
            let file = repository.read_listed_index(keyring, &repo::index_key(&index.id)).await?;
            for record in file.packs {
                if wanted.contains(&record.pack.id) && seen.insert(record.pack.id.clone()) {
                    records.push(record);
                }
            }
        }
        if records.len() != wanted.len() {
            return Err(Error::corrupt(
                repo::snapshot_key(&sealed.id),
                "its indexes do not describe every pack it lists; run verify",
            ));
        }
        let mut new_records = Vec::new();
        let mut fresh = Vec::new();
        for record in records {
            let signature = pack_signature(&record);
            if let Some(done) = self.packs_done.get(&signature) {
                new_records.push(done.clone());
                continue;
            }
            let dictionary = match &record.dictionary {
                Some(old) if self.dictionaries.contains_key(&old.id) => Some(self.dictionaries[&old.id].clone()),
                Some(old) => {
                    let key = repo::dictionary_key(&old.id);
                    let new =
                        rewrite(repository, keyring, (&key, old.size), &data_recipients, repo::dictionary_key).await?;
                    self.out.dictionaries += 1;
                    self.dictionaries.insert(old.id.clone(), new.clone());
                    Some(new)
                }
                None => None,
            };
            let key = repo::pack_key(&record.pack.id);
            let pack = rewrite(repository, keyring, (&key, record.pack.size), &data_recipients, repo::pack_key).await?;
            self.out.packs += 1;
            let new = PackRecord { pack, dictionary, chunks: record.chunks };
            self.packs_done.insert(signature, new.clone());
            fresh.push(new.clone());
            new_records.push(new);
        }
        if !fresh.is_empty() {
            let packs: Vec<ObjectId> = fresh.iter().map(|r| r.pack.id.clone()).collect();
            let file = IndexFile { version: repo::FORMAT_VERSION, packs: fresh };
            let (key, index, bytes) = repo::seal_index(file, &metadata_recipients, &keyring.index_mac_key());
            repository.target.put_new(&key, bytes).await?;
            self.out.indexes += 1;
            for pack in packs {
                self.index_of.insert(pack, index.clone());
            }
        }
        let listing = Listing {
            packs: new_records.iter().map(|r| r.pack.clone()).collect(),
            indexes: new_records.iter().map(|r| self.index_of[&r.pack.id].clone()).collect(),
            dictionaries: new_records.iter().filter_map(|r| r.dictionary.clone()).collect(),
        };
        let parent = sealed.header.parent.as_ref().map(|p| match new_ids.get(p) {
            Some(copy) if !self.kept.contains(p) => copy.clone(),
            _ => p.clone(),
        });
        store_copy(repository, keyring, sealed, copy, listing, parent).await?;
        self.out.snapshots += 1;
        Ok(())
    }

    /// Deletes the replaced snapshots, then every pack, dictionary and index that no remaining
    /// snapshot needs. Only snapshots that prove themselves count (junk or a forgery in
    /// `snapshots/` must not keep the old packs readable).
    async fn delete_replaced(&mut self, keyring: &Keyring) -> Result<()> {
        let target = &self.repository.target;
        self.replaced.sort();
        self.replaced.dedup();
        // Newest first: killed part-way, the old snapshots left are the oldest, each naming a
        // predecessor still present, so `verify` finds no gap in the chain.
        for (_, _, id) in std::mem::take(&mut self.replaced).into_iter().rev() {
            delete(target, &repo::snapshot_key(&id), &mut self.out).await;
        }
        let mut keep: HashSet<ObjectId> = HashSet::new();
        // What they name, with the sizes they give.
        let mut named: HashMap<String, u64> = HashMap::new();
        for id in self.repository.snapshot_ids().await? {
            let proven = match self.repository.read_snapshot(&id).await {
                Ok(sealed) => self.repository.prove_snapshot(&sealed, keyring).map(|()| sealed),
                Err(error) => Err(error),
            };
            match proven {
                Ok(sealed) => {
                    let header = sealed.header;
                    named.extend(header.objects());
                    keep.extend(
                        header.packs.into_iter().chain(header.indexes).chain(header.dictionaries).map(|o| o.id),
                    );
                }
                Err(error) => {
                    if !self.out.ignored.iter().any(|(known, _)| *known == id) {
                        self.out.ignored.push((id, error.to_string()));
                    }
                }
            }
        }
        let mut listed = Vec::new();
        for folder in ["index", "dicts", "data"] {
            listed.extend(target.list(folder).await?);
        }
        // Nothing old is deleted where a snapshot names what this target lacks.
        let missing = crate::prune::missing(&named, listed.iter().map(|(key, size)| (key.as_str(), *size)));
        if let Some(key) = missing.first() {
            self.out.not_deleted.push((
                target.location().to_string(),
                format!(
                    "nothing old deleted: a snapshot here names {key}, which this target does not hold at the size it \
                     gives; run `crmvault verify`, mend it (`crmvault copy --repair`, or `crmvault forget ID…` for a \
                     snapshot no target holds whole), then rekey --reencrypt again"
                ),
            ));
            return Ok(());
        }
        for (key, _) in listed {
            let name = key.rsplit('/').next().unwrap_or(&key);
            if !name.parse::<ObjectId>().is_ok_and(|id| keep.contains(&id)) {
                delete(target, &key, &mut self.out).await;
            }
        }
        Ok(())
    }
}

/// The objects a snapshot's copy lists on one target.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Packs.
    pub(crate) packs: BTreeSet<ObjectRef>,
    /// Indexes describing them.
    pub(crate) indexes: BTreeSet<ObjectRef>,
    /// Dictionaries their chunks need.
    pub(crate) dictionaries: BTreeSet<ObjectRef>,
}

/// The ids of `snapshots` (of any targets, each once) in chain order, oldest first, so that each
/// copy sealed in that order can name its predecessor's copy.
pub(crate) fn oldest_first<'a>(snapshots: impl Iterator<Item = &'a SealedSnapshot>) -> Vec<SnapshotId> {
    let mut order: Vec<(u64, chrono::DateTime<chrono::Utc>, SnapshotId)> =
        snapshots.map(|s| (s.header.sequence, s.header.time, s.id.clone())).collect();
    order.sort();
    order.dedup();
    order.into_iter().map(|(_, _, id)| id).collect()
}

/// Stores on `repository` the copy of `sealed` sealed as `copy` (the manifest, sealed once for
/// every target): same time, sequence and data, `parent` (the predecessor's copy, where it has
/// one), `replaces` the old id, listing `listing`, MACed under the newest generation. Used by
/// `rekey --reencrypt` and by `prune --identity` (repacking): one way to replace a snapshot.
pub(crate) async fn store_copy(
    repository: &Repository,
    keyring: &Keyring,
    sealed: &SealedSnapshot,
    copy: &SealedManifest,
    listing: Listing,
    parent: Option<SnapshotId>,
) -> Result<()> {
    let Listing { packs, indexes, dictionaries } = listing;
    let header = SnapshotHeader {
        version: repo::FORMAT_VERSION,
        time: sealed.header.time,
        config_hash: repository.config_hash.clone(),
        total_bytes: packs.iter().chain(&indexes).chain(&dictionaries).map(|o| o.size).sum(),
        added_bytes: sealed.header.added_bytes,
        packs: packs.into_iter().collect(),
        indexes: indexes.into_iter().collect(),
        dictionaries: dictionaries.into_iter().collect(),
        parent,
        sequence: sealed.header.sequence,
        replaces: Some(sealed.id.clone()),
    };
    repository.target.put_new(&repo::snapshot_key(&copy.id), copy.snapshot_object(&header, keyring)).await?;
    Ok(())
}

/// Decrypts the object `key` (of the `size` its index records) and stores it encrypted to
/// `recipients`, named by `name`.
async fn rewrite(
    repository: &Repository,
    keyring: &Keyring,
    (key, size): (&str, u64),
    recipients: &[age::x25519::Recipient],
    name: impl Fn(&ObjectId) -> String,
) -> Result<ObjectRef> {
    let ciphertext = repository.target.get_at_most(key, size).await?;
    repo::check_object_name(key, &ciphertext)?;
    let plaintext = keyring.decrypt(key, &ciphertext)?;
    let ciphertext = bytes::Bytes::from(crypto::encrypt(recipients, &plaintext));
    let id = ObjectId::of(&ciphertext);
    let size = ciphertext.len() as u64;
    repository.target.put_new(&name(&id), ciphertext).await?;
    Ok(ObjectRef { id, size })
}

/// Deletes `key`, counting it, or recording why the storage refused.
async fn delete(target: &crate::target::Target, key: &str, out: &mut Reencrypted) {
    match target.delete(key).await {
        Ok(()) => out.deleted += 1,
        Err(error) => out.not_deleted.push((key.to_string(), error.to_string())),
    }
}
