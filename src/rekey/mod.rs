//! `rekey`: add and remove admin recipients, rotate the writer key. Each rekey publishes the
//! repository's next generation of keys (docs/FORMAT.md, *Generations*) on every target:
//!
//! 1. a new writer key, when rotated, is written to its file (0600) first; the machine's pin
//!    names the new config as the one successor it will follow (`publishing`, before any
//!    target holds a byte of it);
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
//! brings a target left behind to the newest generation (one the machine's pin vouches for:
//! its own, or one it followed or was given the fingerprint of), byte for byte, carries the indexes
//! over, and does not repeat a change already made (except `--rotate-writer-key`, which always
//! makes a new key).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::crypto;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{ForgetRecord, Keyring, NextGeneration, Repository, SnapshotId};
use crate::repo_set::RepoSet;
use crate::trust::Fingerprint;

mod reencrypt;

pub(crate) use reencrypt::{Listing, oldest_first, store_copy};
pub use reencrypt::{Reencrypted, reencrypt};

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
    pub snapshots_dropped: Vec<(SnapshotId, String)>,
    /// Indexes written again under the new keys, over all targets.
    pub indexes_rewritten: usize,
    /// What `--reencrypt` did, per target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reencrypted: Vec<Reencrypted>,
    /// Missed records removed because their target holds every snapshot they name now
    /// (`copy` brought them): `forgotten/…` keys, with the target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub settled_records_removed: Vec<(String, String)>,
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
/// `publishing` is told the next generation before any target holds its config (the CLI
/// records it in this machine's pin: [`crate::trust::Pin::pending`]).
pub async fn run(
    targets: &mut RepoSet,
    identity: &Path,
    options: &RekeyOptions,
    progress: &dyn Progress,
    publishing: &mut dyn FnMut(&NextGeneration) -> Result<()>,
) -> Result<RekeyReport> {
    let repositories = targets.repositories_mut();
    let newest = (0..repositories.len()).max_by_key(|&i| repositories[i].config.generation).expect("one at least");
    // The first generation's (a copy opened at a pinned generation starts there).
    let (whole, missing) = repositories[newest].with_earlier_generations().await?;
    let fingerprint = whole.fingerprint();
    if let Some(missing) = missing {
        tracing::warn!(
            "{}: configs/{missing} is missing or damaged, so the repository's first fingerprint cannot be read \
             there: the one shown is generation {}'s (keep the one you have)",
            repositories[newest].target.location(),
            whole.chain[0].1.generation
        );
    }
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
    crypto::check_recipient_count(recipients.len())?;

    // `--reencrypt` always makes a new generation: a backup still running under the old one
    // stops before its snapshot rather than naming objects the rewrite deletes.
    let changed = !added.is_empty() || !removed.is_empty() || options.writer_key_out.is_some() || options.reencrypt;
    let mut carried = (0, Vec::new());
    let mut settled_removed = Vec::new();
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
        let Carried { objects: ids, snapshots: count, dropped, settled } =
            carried_snapshots(repositories, &keyring).await?;
        carried = (count, dropped);
        // Before the next generation: they explain nothing under this one either, and a rekey
        // interrupted after publishing would leave them where no later rekey opens them.
        settled_removed = remove_settled(repositories, &settled).await;
        let targets: Vec<&crate::target::Target> = repositories.iter().map(|r| &r.target).collect();
        let next = NextGeneration::make(head, &keyring, &signing, &recipients, &writer, ids)?;
        // Named in this machine's pin before any target holds a byte of it.
        publishing(&next)?;
        next.store_keys(&targets).await?;
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
        reencrypted = reencrypt(repositories, &keyring, progress).await?;
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
    report.settled_records_removed = settled_removed;
    Ok(report)
}

#[allow(clippy::too_many_arguments, reason = "one report, filled from one run")]
fn report(
    repository: &Repository,
    fingerprint: Fingerprint,
    added: Vec<String>,
    removed: Vec<String>,
    writer_key: Option<PathBuf>,
    (snapshots_carried, snapshots_dropped): (usize, Vec<(SnapshotId, String)>),
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
        settled_records_removed: Vec::new(),
        changed: changed || !caught_up.is_empty(),
        caught_up,
        locations,
        config_hash: repository.config_hash.clone(),
    }
}

/// What the next generation carries, and what it leaves.
struct Carried {
    /// The objects carried, by their hash.
    objects: Vec<String>,
    /// How many snapshots that is.
    snapshots: usize,
    /// The snapshots that failed, with why.
    dropped: Vec<(SnapshotId, String)>,
    /// Missed records whose snapshots their target holds all of now (copied there since), by
    /// target: they explain nothing, and not carried, `verify` would report them under the
    /// next generation as written under another config, every night.
    settled: Vec<(usize, String)>,
}

/// The snapshot objects the next generation carries, by their hash: those that prove
/// themselves under the current keys on any target, and those the current generation carries
/// already (written before an earlier rekey; this identity may not be able to read them if it
/// was added since), as long as some target still holds them. Also how many snapshots that is,
/// and the ones that failed, with why; and the forget records carried, and those settled.
async fn carried_snapshots(repositories: &[Repository], keyring: &Keyring) -> Result<Carried> {
    let mut carried = BTreeSet::new();
    let mut snapshots = BTreeSet::new();
    let mut failed = std::collections::BTreeMap::new();
    // Every snapshot present on any target, proven or not (for the forget records below), and
    // those each target holds proven.
    let mut present = BTreeSet::new();
    let mut listed_on: Vec<BTreeSet<SnapshotId>> = vec![BTreeSet::new(); repositories.len()];
    let mut proven_on: Vec<BTreeSet<SnapshotId>> = vec![BTreeSet::new(); repositories.len()];
    for (at, repository) in repositories.iter().enumerate() {
        for id in repository.snapshot_ids().await? {
            present.insert(id.clone());
            listed_on[at].insert(id.clone());
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
                    proven_on[at].insert(id.clone());
                    snapshots.insert(id);
                }
                Err(error) => {
                    failed.insert(id, error.to_string());
                }
            }
        }
    }
    // Forget records too: the gaps they explain outlive the keys that wrote them. Not a record
    // naming a snapshot still present (a forget that did not finish, or a record planted ahead
    // of a deletion by a key this rekey may be retiring): under the next generation it would
    // explain a deletion made after the rekey.
    // A missed record speaks of its own target only: the others hold its snapshots.
    let mut settled = Vec::new();
    for (at, repository) in repositories.iter().enumerate() {
        let here = &listed_on[at];
        // The target's packs, indexes and dictionaries, listed once when a record needs them.
        let mut stored = None;
        for (key, _) in repository.target.list("forgotten").await? {
            let Ok(bytes) = repository.target.get_at_most(&key, crate::repo::largest_object(&key)).await else {
                continue;
            };
            let Ok(record) = ForgetRecord::open(&key, &bytes, Some(keyring)) else { continue };
            let explains = record.snapshots.iter().all(|s| match record.kind {
                crate::repo::RecordKind::Missed => !here.contains(&s.id),
                crate::repo::RecordKind::Forgotten => !present.contains(&s.id),
            });
            if explains {
                carried.insert(crate::crypto::object_hash(&bytes));
            } else if record.kind == crate::repo::RecordKind::Missed {
                if holds_whole(repository, &record, &proven_on[at], &mut stored).await? {
                    settled.push((at, key));
                } else {
                    tracing::warn!(
                        "{}: {key} says the target missed snapshots it now lists but does not hold whole (some \
                         copied there since, or something else under their names): not carried to the next \
                         generation, so `verify` reports it and those snapshots; `crmvault copy` (`--repair`) \
                         brings them, then remove it",
                        repository.target.location()
                    );
                }
            } else {
                tracing::warn!(
                    "{}: {key} names a snapshot still present: not carried to the next generation (run forget again)",
                    repository.target.location()
                );
            }
        }
    }
    // Audit records: the trail outlives the keys that wrote it (only what proves itself).
    for repository in repositories {
        let trail = repository.audit_trail(Some(keyring)).await?;
        carried.extend(trail.records.iter().filter(|r| r.authenticated == Some(true)).map(|r| r.hash().to_string()));
    }
    let dropped = failed.into_iter().filter(|(id, _)| !snapshots.contains(id)).collect();
    Ok(Carried { objects: carried.into_iter().collect(), snapshots: snapshots.len(), dropped, settled })
}

/// Whether `repository` holds every snapshot `record` names whole: proven there (`proven`), and
/// every object its header names stored there at the size the header gives (`stored`, this
/// target's listing, made on first use). Not a name a listing shows, which a storage writer
/// can plant, nor another target's object of the snapshot copied in: its MAC holds wherever it
/// lies, while the packs it needs are that target's own.
async fn holds_whole(
    repository: &Repository,
    record: &ForgetRecord,
    proven: &BTreeSet<SnapshotId>,
    stored: &mut Option<std::collections::HashMap<String, u64>>,
) -> Result<bool> {
    for snapshot in &record.snapshots {
        if !proven.contains(&snapshot.id) {
            return Ok(false);
        }
        let Ok(header) = repository.read_snapshot_header(&snapshot.id, None).await else { return Ok(false) };
        if stored.is_none() {
            let mut listed = std::collections::HashMap::new();
            for folder in ["data", "index", "dicts"] {
                listed.extend(repository.target.list(folder).await?);
            }
            *stored = Some(listed);
        }
        let stored = stored.as_ref().expect("listed above");
        let named = (header.packs.iter().map(|o| (crate::repo::pack_key(&o.id), o.size)))
            .chain(header.indexes.iter().map(|o| (crate::repo::index_key(&o.id), o.size)))
            .chain(header.dictionaries.iter().map(|o| (crate::repo::dictionary_key(&o.id), o.size)));
        if named.into_iter().any(|(key, size)| stored.get(&key) != Some(&size)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes the settled missed records ([`Carried::settled`]): they explain nothing. Returns
/// those removed (target, key); one the storage keeps (no right to delete, Object Lock) is
/// named, for a person.
async fn remove_settled(repositories: &[Repository], settled: &[(usize, String)]) -> Vec<(String, String)> {
    let mut removed = Vec::new();
    for (at, key) in settled {
        let target = &repositories[*at].target;
        match target.delete(key).await {
            Ok(()) => removed.push((target.location().to_string(), key.clone())),
            Err(error) => tracing::warn!(
                "{}: {key} says the target missed snapshots it holds now (copied there since), and could not be \
                 removed ({error}): `verify` reports it as written under another config; remove it",
                target.location()
            ),
        }
    }
    removed
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
        return Err(Error::NotCopies {
            first: head.target.location().to_string(),
            other: behind.target.location().to_string(),
            detail: "their configs are not generations of one chain; rekey each on its own".into(),
        });
    };
    for (_, config) in &head.chain[at + 1..] {
        for key in config.keys.iter().chain(&config.admin_keys) {
            let bytes = head.target.get_at_most(key, crate::repo::MAX_KEYS_BYTES).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RepoSecret;
    use crate::repo::Tuning;
    use crate::target::{OpenMode, Target};

    /// The machine's pin must name the next generation before any target holds a byte of it: a
    /// rekey that fails while storing the new keys objects (on the one target a removed admin
    /// writes) is otherwise run again with nothing pending, and follows whatever successor
    /// that admin signs there meanwhile.
    #[tokio::test]
    async fn the_next_generation_is_named_before_anything_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("repo").to_str().unwrap().to_string();
        let admin = crypto::generate_identity();
        let identity = dir.path().join("admin.key");
        crypto::write_identity_file(&identity, &admin, "admin").unwrap();
        let target = Target::open(&location, OpenMode::Create).unwrap();
        let secret = RepoSecret::generate();
        let config_dir = dir.path().join("config");
        Repository::init(target.clone(), &[admin.to_public()], &config_dir, secret, Tuning::default()).await.unwrap();
        let mut targets = RepoSet::of(vec![Repository::open(target.clone()).await.unwrap()]).unwrap();
        let root = std::path::PathBuf::from(&location);
        let stored = || {
            let count = |folder: &str| std::fs::read_dir(root.join(folder)).unwrap().count();
            (count("keys"), count("configs"))
        };
        let before = stored();
        let options = RekeyOptions { add: vec![crypto::generate_identity().to_public()], ..RekeyOptions::default() };
        let mut told = None;
        let report = run(&mut targets, &identity, &options, &crate::progress::Silent, &mut |next| {
            told = Some((next.hash.clone(), stored()));
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(told, Some((report.config_hash.clone(), before)), "told after something was stored");
        let after = stored();
        assert!(after.0 > before.0 && after.1 > before.1, "{before:?} {after:?}");
    }
}
