//! `rekey`: add and remove admin recipients, rotate the writer key. Each rekey publishes the
//! repository's next generation of keys (docs/FORMAT.md, *Generations*) on every target:
//!
//! 1. a new writer key, when rotated, is written to its file (0600) first;
//! 2. the new keys objects and admin keys objects are stored on every target (nothing refers
//!    to them yet);
//! 3. on each target, the new config `configs/<hash>`, signed by the current generation's
//!    signing key, is stored: the commit. It lists the snapshots that stay valid;
//! 4. on each target, the indexes are written again under the new keys, so the next backup
//!    still finds every chunk it may reuse (not after adding an admin, who could not read
//!    those packs: the next backup stores every chunk again).
//!
//! Killed anywhere, every snapshot stays restorable with the keys that could restore it before
//! and `verify` finds nothing wrong: until step 3 nothing any reader follows has changed; after
//! it the new generation is whole, and an index not yet carried over only costs the next backup
//! some chunks stored again. Run again (with the same arguments, or none to change), a rekey
//! brings a target left behind to the newest generation, byte for byte, carries the indexes
//! over, and does not repeat a change already made (except `--rotate-writer-key`, which always
//! makes a new key).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::crypto;
use crate::error::{Error, Result};
use crate::repo::{
    self, IndexFile, Keyring, Manifest, NextGeneration, ObjectRef, PackRecord, Repository, SealedManifest,
    SealedSnapshot, SnapshotHeader,
};
use crate::trust::Fingerprint;

/// What to change.
#[derive(Debug, Default)]
pub struct RekeyOptions {
    /// Admin recipients to add.
    pub add: Vec<age::x25519::Recipient>,
    /// Admin recipients to remove.
    pub remove: Vec<age::x25519::Recipient>,
    /// Rotate the writer key, writing the new one to this file.
    pub writer_key_out: Option<PathBuf>,
    /// Also write every snapshot again for the current admins only ([`reencrypt`]).
    pub reencrypt: bool,
}

/// What `rekey` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RekeyReport {
    /// Repository id.
    pub repository_id: String,
    /// The generation the repository is at now.
    pub generation: u32,
    /// The fingerprint admins keep (unchanged by rekey).
    pub fingerprint: Fingerprint,
    /// The fingerprint of the generation now in force: also accepted, and it trusts no key
    /// retired before it (give it to fresh machines after removing an admin).
    pub generation_fingerprint: Fingerprint,
    /// The admin recipients now.
    pub recipients: Vec<String>,
    /// Recipients added by this run.
    pub added: Vec<String>,
    /// Recipients removed by this run.
    pub removed: Vec<String>,
    /// The new writer key's file, when the writer key was rotated.
    pub writer_key: Option<PathBuf>,
    /// Snapshots that stay valid under the new generation.
    pub snapshots_carried: usize,
    /// Snapshots that did not prove themselves and so were not carried (id, why).
    pub snapshots_dropped: Vec<(String, String)>,
    /// Indexes written again under the new keys, over all targets.
    pub indexes_rewritten: usize,
    /// What `--reencrypt` did, per target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reencrypted: Vec<Reencrypted>,
    /// Targets brought to the newest generation (left behind by an interrupted rekey).
    pub caught_up: Vec<String>,
    /// Where.
    pub locations: Vec<String>,
    /// BLAKE3 of the config now in force (what pins move to).
    #[serde(skip)]
    pub config_hash: String,
    /// Whether anything changed.
    pub changed: bool,
}

/// Rekeys `repositories` (copies of one; every one of them must be given and reachable, since
/// copies stay byte-identical in their keys) with the admin identity at `identity`.
pub async fn run(repositories: &mut [Repository], identity: &Path, options: &RekeyOptions) -> Result<RekeyReport> {
    if repositories.is_empty() {
        return Err(Error::Invalid("rekey needs at least one --repo".into()));
    }
    let newest = (0..repositories.len()).max_by_key(|&i| repositories[i].config.generation).expect("one at least");
    let fingerprint = repositories[newest].fingerprint();
    let mut caught_up = Vec::new();
    for i in 0..repositories.len() {
        if repositories[i].config_hash != repositories[newest].config_hash {
            repositories[i] = catch_up(&repositories[i], &repositories[newest]).await?;
            caught_up.push(repositories[i].target.location().to_string());
        }
    }

    let head = &repositories[newest];
    if head.config.version < crate::repo::AUTHENTICATED_VERSION || head.config.signing_key.is_none() {
        return Err(Error::Invalid(format!(
            "repository {} was made before crmvault could rotate keys (format {}, no signing key in its config): \
             to change who can read it, make a new repository with `crmvault init` and back up there; this one \
             stays restorable",
            head.target.location(),
            head.config.version
        )));
    }
    let keyring = head.unlock_as_admin(identity).await?;
    let Some(signing) = head.unlock_signing(&keyring).await? else {
        return Err(Error::Invalid("the repository's config names no admin keys".into()));
    };

    // The new recipients, refusing what cannot be meant.
    let mine: BTreeSet<String> = keyring.identities().iter().map(|i| i.to_public().to_string()).collect();
    let mut recipients: Vec<String> = head.config.recipients.clone();
    let mut added = Vec::new();
    for recipient in options.add.iter().map(ToString::to_string) {
        if recipient == head.config.writer_recipient {
            return Err(Error::Invalid(format!("{recipient} is the writer's key; an admin recipient must be another")));
        }
        if !recipients.contains(&recipient) {
            recipients.push(recipient.clone());
            added.push(recipient);
        }
    }
    let mut removed = Vec::new();
    for recipient in options.remove.iter().map(ToString::to_string) {
        if let Some(at) = recipients.iter().position(|r| *r == recipient) {
            if mine.contains(&recipient) {
                return Err(Error::Invalid(format!(
                    "{recipient} is the identity this rekey runs with; remove it with another admin's identity"
                )));
            }
            recipients.remove(at);
            removed.push(recipient);
        } else if !head.chain.iter().any(|(_, config)| config.recipients.contains(&recipient)) {
            return Err(Error::Invalid(format!("{recipient} is not an admin recipient of this repository")));
        }
    }
    if recipients.is_empty() {
        return Err(Error::Invalid("that would leave no admin recipient; add one first".into()));
    }

    // `--reencrypt` always makes a new generation: a backup still running under the old one
    // stops before its snapshot rather than naming objects the rewrite deletes.
    let changed = !added.is_empty() || !removed.is_empty() || options.writer_key_out.is_some() || options.reencrypt;
    let mut carried = (0, Vec::new());
    if changed {
        // The new writer key goes to its file before anything names it.
        let writer = match &options.writer_key_out {
            Some(path) => {
                let identity = crypto::generate_identity();
                let comment = format!(
                    "crmvault writer key of repository {} (generation {})",
                    head.config.id,
                    head.config.generation + 1
                );
                crypto::write_identity_file(path, &identity, &comment)?;
                identity.to_public()
            }
            None => crypto::parse_recipient(&head.config.writer_recipient)?,
        };
        let recipients: Vec<age::x25519::Recipient> =
            recipients.iter().map(|r| crypto::parse_recipient(r)).collect::<Result<_>>()?;
        let (ids, count, dropped) = carried_snapshots(repositories, &keyring).await?;
        carried = (count, dropped);
        let targets: Vec<&crate::target::Target> = repositories.iter().map(|r| &r.target).collect();
        let next = NextGeneration::make(head, &targets, &keyring, &signing, &recipients, &writer, ids).await?;
        for repository in repositories.iter_mut() {
            *repository = next.publish(repository).await?;
        }
    }

    // Every target at the newest generation: carry the indexes over (again, if an earlier run
    // was interrupted here), so backups keep deduplicating.
    let keyring = repositories[newest].unlock_as_admin(identity).await?;
    let mut indexes_rewritten = 0;
    let mut reencrypted = Vec::new();
    if options.reencrypt {
        reencrypted = reencrypt(repositories, &keyring).await?;
    } else {
        for repository in repositories.iter() {
            indexes_rewritten += repository.carry_indexes_over(&keyring).await?;
        }
    }
    let locations: Vec<String> = repositories.iter().map(|r| r.target.location().to_string()).collect();
    let mut report = report(
        &repositories[newest],
        fingerprint,
        added,
        removed,
        options.writer_key_out.clone(),
        carried,
        indexes_rewritten,
        caught_up,
        locations,
        changed,
    );
    report.reencrypted = reencrypted;
    Ok(report)
}

#[allow(clippy::too_many_arguments, reason = "one report, filled from one run")]
fn report(
    repository: &Repository,
    fingerprint: Fingerprint,
    added: Vec<String>,
    removed: Vec<String>,
    writer_key: Option<PathBuf>,
    (snapshots_carried, snapshots_dropped): (usize, Vec<(String, String)>),
    indexes_rewritten: usize,
    caught_up: Vec<String>,
    locations: Vec<String>,
    changed: bool,
) -> RekeyReport {
    RekeyReport {
        repository_id: repository.config.id.clone(),
        generation: repository.config.generation,
        fingerprint,
        generation_fingerprint: Fingerprint::of_config_hash(&repository.config_hash).expect("a BLAKE3 hash"),
        recipients: repository.config.recipients.clone(),
        added,
        removed,
        writer_key,
        snapshots_carried,
        snapshots_dropped,
        indexes_rewritten,
        reencrypted: Vec::new(),
        changed: changed || !caught_up.is_empty(),
        caught_up,
        locations,
        config_hash: repository.config_hash.clone(),
    }
}

/// The snapshot objects the next generation carries, by their hash: those that prove
/// themselves under the current keys on any target, and those the current generation carries
/// already (written before an earlier rekey; this identity may not be able to read them if it
/// was added since), as long as some target still holds them. Also how many snapshots that is,
/// and the ones that failed, with why.
async fn carried_snapshots(
    repositories: &[Repository],
    keyring: &Keyring,
) -> Result<(Vec<String>, usize, Vec<(String, String)>)> {
    let mut carried = BTreeSet::new();
    let mut snapshots = BTreeSet::new();
    let mut failed = std::collections::BTreeMap::new();
    for repository in repositories {
        for id in repository.snapshot_ids().await? {
            let sealed = match repository.read_snapshot(&id).await {
                Ok(sealed) => sealed,
                Err(error) => {
                    failed.insert(id, error.to_string());
                    continue;
                }
            };
            match repository.prove_snapshot(&sealed, keyring) {
                Ok(()) => {
                    carried.insert(sealed.object_hash);
                    snapshots.insert(id);
                }
                Err(error) => {
                    failed.insert(id, error.to_string());
                }
            }
        }
    }
    let dropped = failed.into_iter().filter(|(id, _)| !snapshots.contains(id)).collect();
    Ok((carried.into_iter().collect(), snapshots.len(), dropped))
}

/// Brings `behind` (a copy an interrupted rekey left at an earlier generation) to `head`'s:
/// the newer generations' keys objects and configs, byte for byte (the configs last). Its
/// indexes are carried over after, as on every target.
async fn catch_up(behind: &Repository, head: &Repository) -> Result<Repository> {
    let Some(at) = head
        .chain
        .iter()
        .position(|(hash, _)| *hash == behind.config_hash)
        .filter(|_| behind.config.id == head.config.id)
    else {
        return Err(Error::Invalid(format!(
            "{} and {} are not copies of one repository at generations of one chain; rekey each on its own",
            head.target.location(),
            behind.target.location()
        )));
    };
    for (_, config) in &head.chain[at + 1..] {
        for key in config.keys.iter().chain(&config.admin_keys) {
            let bytes = head.target.get(key).await?;
            crate::repo::check_object_name(key, &bytes)?;
            behind.target.put_new(key, bytes).await?;
        }
    }
    for (hash, _) in &head.chain[at + 1..] {
        let bytes = head.config_bytes_of(hash).await?;
        behind.target.put_new(&crate::repo::config_copy_key(hash), bytes).await?;
    }
    Ok(Repository { target: behind.target.clone(), ..head.clone() })
}

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
    /// Objects deleted: the replaced snapshots, and every pack, dictionary and index no
    /// remaining snapshot needs.
    pub deleted: usize,
    /// Objects the storage refused to delete (Object Lock, no delete permission), with why:
    /// still readable by whoever could read them before.
    pub not_deleted: Vec<(String, String)>,
    /// Snapshots left as they were because this identity cannot open them, with why.
    pub left: Vec<(String, String)>,
    /// Snapshot objects that prove nothing (junk, forged, damaged), with why: they keep nothing
    /// from being deleted.
    pub ignored: Vec<(String, String)>,
}

impl Reencrypted {
    /// Whether something stored may still be readable by a key that is no longer a recipient.
    pub fn incomplete(&self) -> bool {
        !self.not_deleted.is_empty() || !self.left.is_empty()
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
    todo: HashMap<String, (SealedSnapshot, Manifest)>,
    /// Snapshots replaced (copied) here, to delete.
    replaced: Vec<String>,
    /// Packs already written again, by what they hold.
    packs_done: HashMap<blake3::Hash, PackRecord>,
    /// The index that lists each new pack.
    index_of: HashMap<String, ObjectRef>,
    /// Old dictionary id → new.
    dictionaries: HashMap<String, ObjectRef>,
    /// Snapshots left as they were here (their successors' copies name them as they are).
    kept: HashSet<String>,
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
pub async fn reencrypt(repositories: &[Repository], keyring: &Keyring) -> Result<Vec<Reencrypted>> {
    let mut targets = Vec::new();
    // Old id → the copy's sealed manifest, from whichever target holds a copy already.
    let mut copies: HashMap<String, SealedManifest> = HashMap::new();
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
        for id in repository.snapshot_ids().await? {
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
    let mut order: Vec<(u64, chrono::DateTime<chrono::Utc>, String)> = targets
        .iter()
        .flat_map(|t| t.todo.values().map(|(s, _)| (s.header.sequence, s.header.time, s.id.clone())))
        .collect();
    order.sort();
    order.dedup();
    let mut new_ids: HashMap<String, String> =
        copies.iter().map(|(old, copy)| (old.clone(), copy.id.clone())).collect();
    for (_, _, old) in order {
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
            rewriting.replaced.push(old.clone());
        }
    }
    for rewriting in &mut targets {
        rewriting.delete_replaced(keyring).await?;
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
        new_ids: &HashMap<String, String>,
    ) -> Result<()> {
        let repository = self.repository;
        let (data_recipients, metadata_recipients) = (repository.data_recipients(), repository.metadata_recipients());
        let wanted: HashSet<&str> = sealed.header.packs.iter().map(|p| p.id.as_str()).collect();
        let mut records = Vec::new();
        let mut seen = HashSet::new();
        for index in &sealed.header.indexes {
            let file = repository.read_listed_index(keyring, &repo::index_key(&index.id)).await?;
            for record in file.packs {
                if wanted.contains(record.pack.id.as_str()) && seen.insert(record.pack.id.clone()) {
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
                    let new = rewrite(repository, keyring, &key, &data_recipients, repo::dictionary_key).await?;
                    self.out.dictionaries += 1;
                    self.dictionaries.insert(old.id.clone(), new.clone());
                    Some(new)
                }
                None => None,
            };
            let pack = rewrite(repository, keyring, &repo::pack_key(&record.pack.id), &data_recipients, repo::pack_key)
                .await?;
            self.out.packs += 1;
            let new = PackRecord { pack, dictionary, chunks: record.chunks };
            self.packs_done.insert(signature, new.clone());
            fresh.push(new.clone());
            new_records.push(new);
        }
        if !fresh.is_empty() {
            let packs: Vec<String> = fresh.iter().map(|r| r.pack.id.clone()).collect();
            let file = IndexFile { version: repo::FORMAT_VERSION, packs: fresh };
            let (key, index, bytes) = repo::seal_index(file, &metadata_recipients, &keyring.index_mac_key());
            repository.target.put_new(&key, bytes).await?;
            self.out.indexes += 1;
            for pack in packs {
                self.index_of.insert(pack, index.clone());
            }
        }
        let packs: BTreeSet<ObjectRef> = new_records.iter().map(|r| r.pack.clone()).collect();
        let indexes: BTreeSet<ObjectRef> = new_records.iter().map(|r| self.index_of[&r.pack.id].clone()).collect();
        let dictionaries: BTreeSet<ObjectRef> = new_records.iter().filter_map(|r| r.dictionary.clone()).collect();
        let header = SnapshotHeader {
            version: repo::FORMAT_VERSION,
            time: sealed.header.time,
            config_hash: repository.config_hash.clone(),
            total_bytes: packs.iter().chain(&indexes).chain(&dictionaries).map(|o| o.size).sum(),
            added_bytes: sealed.header.added_bytes,
            packs: packs.into_iter().collect(),
            indexes: indexes.into_iter().collect(),
            dictionaries: dictionaries.into_iter().collect(),
            parent: sealed.header.parent.as_ref().map(|p| match new_ids.get(p) {
                Some(copy) if !self.kept.contains(p) => copy.clone(),
                _ => p.clone(),
            }),
            sequence: sealed.header.sequence,
            replaces: Some(sealed.id.clone()),
        };
        repository.target.put_new(&repo::snapshot_key(&copy.id), copy.snapshot_object(&header, keyring)).await?;
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
        for id in std::mem::take(&mut self.replaced) {
            delete(target, &repo::snapshot_key(&id), &mut self.out).await;
        }
        let mut keep: HashSet<String> = HashSet::new();
        for id in self.repository.snapshot_ids().await? {
            let proven = match self.repository.read_snapshot(&id).await {
                Ok(sealed) => self.repository.prove_snapshot(&sealed, keyring).map(|()| sealed),
                Err(error) => Err(error),
            };
            match proven {
                Ok(sealed) => {
                    let header = sealed.header;
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
        for folder in ["index", "dicts", "data"] {
            for (key, _) in target.list(folder).await? {
                let id = key.rsplit('/').next().unwrap_or(&key);
                if !keep.contains(id) {
                    delete(target, &key, &mut self.out).await;
                }
            }
        }
        Ok(())
    }
}

/// Decrypts the object `key` and stores it encrypted to `recipients`, named by `name`.
async fn rewrite(
    repository: &Repository,
    keyring: &Keyring,
    key: &str,
    recipients: &[age::x25519::Recipient],
    name: impl Fn(&str) -> String,
) -> Result<ObjectRef> {
    let ciphertext = repository.target.get(key).await?;
    repo::check_object_name(key, &ciphertext)?;
    let plaintext = keyring.decrypt(key, &ciphertext)?;
    let ciphertext = bytes::Bytes::from(crypto::encrypt(recipients, &plaintext));
    let id = crypto::object_hash(&ciphertext);
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
