//! `verify`: prove the repository is whole.
//!
//! Without a key: every snapshot parses and hashes to its name, and every object it references
//! exists with the recorded size and BLAKE3. With the writer key or an admin identity: each
//! manifest's MAC holds and every chunk it names is in its indexes. With an admin identity and
//! `--read-data`: every referenced pack decrypts and every chunk in it re-hashes to its id, and
//! every snapshot's streams give the digest and row count its manifest records: what a restore
//! would prove.
//!
//! Always: every snapshot's predecessor (format 7) is present, and so is the newest snapshot
//! this machine knows of, so a snapshot deleted from storage is reported, not silently missed.
//! A referenced pack that fails its hash is marked (`damaged/<id>`), so that later backups store
//! its chunks again instead of reusing it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::crypto::{ChunkId, MacKey};
use crate::error::{Error, Result};
use crate::fetch::ChunkReader;
use crate::progress::{Progress, Unit};
use crate::repo::{
    self, ChunkIndex, FilterTally, Keyring, Manifest, ObjectRef, Repository, SnapshotFilter, StreamManifest,
};
use crate::trust::SnapshotMark;

/// How deep to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Objects exist with the right size and hash.
    Structure,
    /// Also decrypt and re-hash every chunk (admin identity needed).
    ReadData,
}

/// One thing wrong.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// The target it was found on.
    pub target: String,
    /// The object (or chunk) concerned.
    pub object: String,
    /// Snapshots affected.
    pub snapshots: Vec<String>,
    /// What is wrong.
    pub problem: String,
    /// Chunks the affected snapshots need that this leaves unreadable (absent when not counted).
    #[serde(skip_serializing_if = "is_zero")]
    pub chunks: u64,
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// Problems that say the same about the same object, as one: the snapshots of each together,
/// chunk counts added up, in the order first found.
pub fn group(problems: Vec<Problem>) -> Vec<Problem> {
    let mut grouped: Vec<Problem> = Vec::new();
    for problem in problems {
        let same = grouped
            .iter_mut()
            .find(|p| p.target == problem.target && p.object == problem.object && p.problem == problem.problem);
        match same {
            Some(existing) => {
                for snapshot in problem.snapshots {
                    if !existing.snapshots.contains(&snapshot) {
                        existing.snapshots.push(snapshot);
                    }
                }
                existing.chunks += problem.chunks;
            }
            None => grouped.push(problem),
        }
    }
    grouped
}

/// What verify looked at and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Snapshots checked (those the filter let through).
    pub snapshots: usize,
    /// Objects read and checked against their names or recorded sizes: configs, keys,
    /// snapshots, and the packs, indexes and dictionaries the snapshots reference.
    pub objects: usize,
    /// Bytes of those objects.
    pub bytes: u64,
    /// Chunks decrypted and re-hashed.
    pub chunks: usize,
    /// Problems, empty when all is well: one per object and what is wrong with it, naming
    /// every snapshot it affects.
    pub problems: Vec<Problem>,
    /// The newest snapshot that proved itself (for the caller's high-water mark).
    #[serde(skip)]
    pub newest: Option<SnapshotMark>,
}

impl VerifyReport {
    fn count_object(&mut self, bytes: &[u8]) {
        self.objects += 1;
        self.bytes += bytes.len() as u64;
    }

    /// Adds another target's findings.
    pub fn merge(&mut self, other: VerifyReport) {
        self.snapshots += other.snapshots;
        self.objects += other.objects;
        self.bytes += other.bytes;
        self.chunks += other.chunks;
        self.problems.extend(other.problems);
        self.problems = group(std::mem::take(&mut self.problems));
        if other.newest.as_ref().is_some_and(|n| self.newest.as_ref().is_none_or(|m| n.sequence > m.sequence)) {
            self.newest = other.newest;
        }
    }
}

/// Verifies one repository: the snapshots `filter` lets through (a snapshot whose manifest
/// does not open is checked whatever the filter) and what they need. `newest_known` is the
/// newest snapshot the caller wrote or authenticated before (its pin's high-water mark).
pub async fn run(
    repository: &Repository,
    keyring: Option<&Keyring>,
    depth: Depth,
    filter: &SnapshotFilter,
    newest_known: Option<&SnapshotMark>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    if depth == Depth::ReadData && !keyring.is_some_and(Keyring::is_admin) {
        return Err(Error::AdminOnly { what: "reading every table's data".into() });
    }
    if keyring.is_none() && !filter.is_empty() {
        return Err(Error::FilterNeedsKey);
    }
    let location = repository.target.location().to_string();
    let mut report = VerifyReport::default();
    let problem = |object: &str, snapshots: Vec<String>, what: String| Problem {
        target: location.clone(),
        object: object.to_string(),
        snapshots,
        problem: what,
        chunks: 0,
    };

    // `config` itself (the first generation): a repository opened from its copy (format 7)
    // still needs it mended.
    let (first_hash, first) = &repository.chain[0];
    if first.generation == 0 {
        match repository.target.get(repo::CONFIG_KEY).await {
            Ok(bytes) if crate::crypto::object_hash(&bytes) == *first_hash => report.count_object(&bytes),
            Ok(_) | Err(Error::Missing { .. }) => report.problems.push(problem(
                repo::CONFIG_KEY,
                vec![],
                format!(
                    "missing, damaged or replaced; its copy {} is whole: copy it back to `config`",
                    repo::config_copy_key(first_hash)
                ),
            )),
            Err(e) => return Err(e),
        }
    }
    // Every generation's config copy and keys objects (a rekeyed repository has several).
    for (hash, config) in &repository.chain {
        if config.version >= repo::AUTHENTICATED_VERSION {
            let copy = repo::config_copy_key(hash);
            match repository.target.get(&copy).await {
                Ok(bytes) if crate::crypto::object_hash(&bytes) == *hash => report.count_object(&bytes),
                Ok(_) => report.problems.push(problem(&copy, vec![], "its BLAKE3 does not match its name".into())),
                Err(Error::Missing { .. }) => report.problems.push(problem(&copy, vec![], "missing".into())),
                Err(e) => return Err(e),
            }
        }
        for key in config.keys.iter().chain(&config.admin_keys) {
            match repository.target.get(key).await {
                Ok(bytes) => {
                    report.count_object(&bytes);
                    if let Err(e) = repo::check_object_name(key, &bytes) {
                        report.problems.push(problem(key, vec![], e.to_string()));
                    }
                }
                Err(e) => report.problems.push(problem(key, vec![], e.to_string())),
            }
        }
    }

    // A config no generation leads to: junk, or a forgery no reader follows.
    if first.generation == 0 && repository.config.version >= repo::AUTHENTICATED_VERSION {
        for (key, _) in repository.target.list("configs").await? {
            if !key.strip_prefix("configs/").is_some_and(|hash| repository.has_generation(hash)) {
                report.problems.push(problem(
                    &key,
                    vec![],
                    "is not a generation of this repository (damaged, or not signed by its admins: planted in \
                     storage?); no command follows it: remove it"
                        .into(),
                ));
            }
        }
    }

    // Which objects each snapshot needs.
    let mut referenced: BTreeMap<(String, ObjectRef), Vec<String>> = BTreeMap::new();
    let mut sealed_snapshots = Vec::new();
    let mut tally = FilterTally::default();
    for entry in repository.snapshots().await? {
        let sealed = match entry {
            Ok(sealed) => sealed,
            Err((id, error)) => {
                report.snapshots += 1;
                report.problems.push(problem(&format!("snapshots/{id}"), vec![id.clone()], error.to_string()));
                continue;
            }
        };
        if let Some(keyring) = keyring.filter(|_| !filter.is_empty())
            && sealed.open(keyring).is_ok_and(|manifest| !tally.see(filter, &manifest))
        {
            continue;
        }
        report.snapshots += 1;
        report.objects += 1;
        report.bytes += sealed.object_size;
        if !repository.claims_this_config(&sealed) {
            report.problems.push(problem(
                &repo::snapshot_key(&sealed.id),
                vec![sealed.id.to_string()],
                "was written under another config than this repository's (damaged or replaced config, a key \
                 retired by `rekey`, or another repository's snapshot)"
                    .into(),
            ));
        }
        for pack in &sealed.header.packs {
            referenced.entry((repo::pack_key(&pack.id), pack.clone())).or_default().push(sealed.id.to_string());
        }
        for index in &sealed.header.indexes {
            referenced.entry((repo::index_key(&index.id), index.clone())).or_default().push(sealed.id.to_string());
        }
        for dictionary in &sealed.header.dictionaries {
            referenced
                .entry((repo::dictionary_key(&dictionary.id), dictionary.clone()))
                .or_default()
                .push(sealed.id.to_string());
        }
        sealed_snapshots.push(sealed);
    }
    tally.check(filter)?;

    // The chain: every predecessor a snapshot names, and the newest one known, must be here.
    let present: BTreeSet<&repo::SnapshotId> = sealed_snapshots.iter().map(|s| &s.id).collect();
    let ids: BTreeSet<repo::SnapshotId> = repository.snapshot_ids().await?.into_iter().collect();
    // A target's history may start later than the repository's (a target added with `init
    // --copy-from`): its oldest snapshot may name a predecessor it never held.
    let oldest = sealed_snapshots.iter().map(|s| s.header.sequence).min();
    // A gap `forget` left is explained by its record (authenticated when there is a key).
    let forgotten = repository.forgotten(keyring).await?;
    for (_, size) in &forgotten.objects {
        report.objects += 1;
        report.bytes += size;
    }
    for (key, error) in &forgotten.rejected {
        report.problems.push(problem(key, vec![], format!("a forget record that explains nothing: {error}")));
    }
    for sealed in sealed_snapshots.iter().filter(|s| Some(s.header.sequence) != oldest) {
        if let Some(parent) = sealed.header.parent.as_ref().filter(|p| !ids.contains(*p) && !forgotten.contains(p)) {
            report.problems.push(problem(
                &repo::snapshot_key(parent),
                vec![sealed.id.to_string()],
                format!(
                    "missing: snapshot {} names it as its predecessor; it was deleted without being forgotten",
                    sealed.id
                ),
            ));
        }
    }
    // A snapshot `rekey --reencrypt` replaced lives on as its copy.
    let replaced = |id: &repo::SnapshotId| sealed_snapshots.iter().any(|s| s.header.replaces.as_ref() == Some(id));
    if let Some(known) = newest_known.filter(|known| {
        !present.contains(&known.id)
            && !ids.contains(&known.id)
            && !replaced(&known.id)
            && !forgotten.contains(&known.id)
    }) {
        report.problems.push(problem(
            &repo::snapshot_key(&known.id),
            vec![known.id.to_string()],
            format!(
                "missing: it is the newest snapshot this machine wrote or checked (number {}, {}); it was deleted \
                 without being forgotten, and `restore latest` would restore an older one",
                known.sequence, known.time
            ),
        ));
    }

    let mut damaged: BTreeSet<repo::ObjectId> = BTreeSet::new();
    progress.phase("checking objects", Unit::Objects, Some(referenced.len() as u64));
    for ((key, reference), snapshots) in &referenced {
        progress.advance(1);
        match repository.target.get(key).await {
            Ok(bytes) => {
                report.count_object(&bytes);
                let what = if bytes.len() as u64 == reference.size {
                    repo::check_object_name(key, &bytes).err().map(|_| "its BLAKE3 does not match its name".to_string())
                } else {
                    Some(format!("size is {} bytes, the snapshot recorded {}", bytes.len(), reference.size))
                };
                if let Some(what) = what {
                    damaged.insert(reference.id.clone());
                    report.problems.push(problem(key, snapshots.clone(), what));
                    if key.starts_with("data/") {
                        mark_damaged(repository, &reference.id).await;
                    }
                }
            }
            Err(Error::Missing { .. }) => {
                damaged.insert(reference.id.clone());
                report.problems.push(problem(key, snapshots.clone(), "missing".into()));
            }
            Err(e) => return Err(e),
        }
    }

    let Some(keyring) = keyring else {
        return Ok(report);
    };
    // Indexes no snapshot lists (left by interrupted backups, or put there by someone else):
    // backups read them, so one that fails to prove itself is reported (backups skip it).
    let listed: BTreeSet<String> = referenced.keys().map(|(key, _)| key.clone()).collect();
    for (key, _) in repository.target.list("index").await? {
        if listed.contains(&key) {
            continue;
        }
        if let Err(error) = repository.check_index(keyring, &key).await {
            report.problems.push(problem(
                &key,
                vec![],
                format!("no snapshot lists it and backups skip it: {error}; it can be deleted"),
            ));
        }
    }
    // With a key: manifests and indexes agree.
    let mut needed_chunks: BTreeMap<repo::ObjectId, BTreeSet<ChunkId>> = BTreeMap::new();
    // Counted, not one problem per chunk: (pack, snapshot) → chunks it holds unlisted, and
    // snapshot → chunks in no index it lists.
    let mut unlisted: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut unindexed: BTreeMap<String, u64> = BTreeMap::new();
    let mut index = ChunkIndex::default();
    progress.phase("checking snapshots", Unit::Snapshots, Some(sealed_snapshots.len() as u64));
    for sealed in &sealed_snapshots {
        progress.advance(1);
        let mut manifest = match sealed.open(keyring) {
            Ok(manifest) => {
                if report.newest.as_ref().is_none_or(|n| sealed.header.sequence > n.sequence) {
                    report.newest = Some(sealed.mark());
                }
                manifest
            }
            Err(e) => {
                report.problems.push(problem(
                    &repo::snapshot_key(&sealed.id),
                    vec![sealed.id.to_string()],
                    e.to_string(),
                ));
                continue;
            }
        };
        let readable: Vec<ObjectRef> =
            sealed.header.indexes.iter().filter(|i| !damaged.contains(&i.id)).cloned().collect();
        let snapshot_index = match repository.load_index(keyring, Some(&readable)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                report.problems.push(problem("index", vec![sealed.id.to_string()], e.to_string()));
                continue;
            }
        };
        // The lists of data chunks are data: only an admin reads them; the writer key checks
        // the list chunks themselves.
        let snapshot_index = Arc::new(snapshot_index);
        if keyring.is_admin() {
            let reader = ChunkReader::new(repository.target.clone(), keyring.clone(), snapshot_index.clone(), 4);
            let lists_an_unreadable_index = sealed.header.indexes.iter().any(|i| damaged.contains(&i.id));
            match crate::fetch::expand_lists(&mut manifest, &reader).await {
                // Said once, on the index's own line, with the chunks counted below.
                Err(Error::Missing { .. }) if lists_an_unreadable_index => {}
                Err(e) => {
                    report.problems.push(problem(
                        &repo::snapshot_key(&sealed.id),
                        vec![sealed.id.to_string()],
                        e.to_string(),
                    ));
                }
                Ok(()) if depth == Depth::ReadData => {
                    for (label, what) in check_streams(&manifest, &reader, &keyring.mac_key()).await {
                        report.problems.push(problem(&label, vec![sealed.id.to_string()], what));
                    }
                }
                Ok(()) => {}
            }
        }
        let snapshot_index = Arc::try_unwrap(snapshot_index).expect("the list reader has been dropped");
        let packs: BTreeSet<&repo::ObjectId> = sealed.header.packs.iter().map(|p| &p.id).collect();
        for id in manifest.all_chunks() {
            match snapshot_index.get(id).map(|(entry, _)| &entry.pack) {
                Some(pack) if packs.contains(&pack.id) => {
                    needed_chunks.entry(pack.id.clone()).or_default().insert(*id);
                }
                Some(pack) => {
                    *unlisted.entry((repo::pack_key(&pack.id), sealed.id.to_string())).or_default() += 1;
                }
                None => *unindexed.entry(sealed.id.to_string()).or_default() += 1,
            }
        }
        index.merge(&snapshot_index).map_err(|e| repo::temporary_file_error("chunk index", e))?;
    }

    for ((key, snapshot), chunks) in unlisted {
        report.problems.push(Problem {
            chunks,
            ..problem(&key, vec![snapshot], "holds chunks the snapshot needs but does not list that pack".into())
        });
    }
    for sealed in &sealed_snapshots {
        let Some(&chunks) = unindexed.get(sealed.id.as_str()) else { continue };
        // Chunks that were in an index found missing or damaged are counted on its problem.
        let lost = sealed.header.indexes.iter().find(|i| damaged.contains(&i.id)).map(|i| repo::index_key(&i.id));
        match lost.and_then(|key| report.problems.iter_mut().find(|p| p.object == key)) {
            Some(index_problem) => index_problem.chunks += chunks,
            None => report.problems.push(Problem {
                chunks,
                ..problem("chunks", vec![sealed.id.to_string()], "in no index the snapshot lists".into())
            }),
        }
    }

    if depth == Depth::ReadData {
        let index = Arc::new(index);
        let reader = ChunkReader::new(repository.target.clone(), keyring.clone(), index.clone(), 2);
        let users: BTreeMap<&str, &Vec<String>> = referenced.iter().map(|((key, _), s)| (key.as_str(), s)).collect();
        for (pack_id, chunks) in &needed_chunks {
            if damaged.contains(pack_id) {
                continue;
            }
            let key = repo::pack_key(pack_id);
            let users: Vec<String> = users.get(key.as_str()).map(|s| (*s).clone()).unwrap_or_default();
            // In the order they lie in the pack and in runs, as a restore reads them, so a frame
            // of several chunks is decompressed once for all of them.
            let mut chunks: Vec<ChunkId> = chunks.iter().copied().collect();
            chunks.sort_by_key(|id| index.get(id).map(|(_, location)| (location.offset(), location.start())));
            for run in reader.runs(&chunks) {
                match reader.read_run(run).await {
                    Ok(_) => report.chunks += run.len(),
                    Err(e) => {
                        report.problems.push(problem(&key, users.clone(), e.to_string()));
                        break;
                    }
                }
            }
        }
    }
    report.problems = group(report.problems);
    Ok(report)
}

/// Leaves the marker that keeps later backups from reusing a damaged pack. Best effort: verify
/// may run with read-only credentials, and the finding is reported either way. A marker that a
/// storage writer adds only makes the next backup store some chunks again.
async fn mark_damaged(repository: &Repository, pack_id: &repo::ObjectId) {
    let key = repo::damaged_key(pack_id);
    if let Err(error) = repository.target.put_new(&key, bytes::Bytes::new()).await {
        tracing::warn!("{}: cannot mark {pack_id} damaged: {error}", repository.target.location());
    }
}

/// Reads every stream of a snapshot whose lists are expanded, as a restore would, and compares
/// each stream's digest (admins only) and each table's row count with the manifest: (what,
/// problem) for each that differs or cannot be read.
async fn check_streams(manifest: &Manifest, reader: &ChunkReader, mac_key: &MacKey) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let schema = [
        ("schema (pre-data)".to_string(), &manifest.pre_data, None),
        ("schema (post-data)".to_string(), &manifest.post_data, None),
    ];
    let tables = manifest
        .tables
        .iter()
        .chain(manifest.large_objects.iter())
        .map(|t| (format!("table {}.{}", t.schema, t.name), &t.data, Some(t.rows)));
    for (label, stream, rows) in schema.into_iter().chain(tables) {
        if let Err(what) = check_stream(stream, rows, reader, mac_key).await {
            problems.push((label, what));
        }
    }
    problems
}

async fn check_stream(
    stream: &StreamManifest,
    rows: Option<u64>,
    reader: &ChunkReader,
    mac_key: &MacKey,
) -> std::result::Result<(), String> {
    let mut digest = mac_key.hasher();
    let (mut bytes, mut lines) = (0u64, 0u64);
    for run in reader.runs(&stream.chunks) {
        let data = reader.read_run(run).await.map_err(|e| e.to_string())?;
        digest.update(&data);
        bytes += data.len() as u64;
        lines += memchr::memchr_iter(b'\n', &data).count() as u64;
    }
    if bytes != stream.bytes {
        return Err(format!("holds {bytes} bytes, its manifest records {}", stream.bytes));
    }
    if digest.finalize().to_hex().as_str() != stream.digest {
        return Err("its data does not match the snapshot's digest".into());
    }
    // COPY's text format ends every row with a newline and escapes those inside values.
    match rows {
        Some(rows) if rows != lines => Err(format!("holds {lines} rows, its manifest records {rows}")),
        _ => Ok(()),
    }
}
