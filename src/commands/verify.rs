//! `verify`: prove the repository is whole.
//!
//! Without a key: every snapshot parses and hashes to its name, and every object it references
//! exists with the recorded size and BLAKE3. With the writer key or an admin identity: each
//! manifest's MAC holds and every chunk it names is in its indexes. With an admin identity and
//! `--read-data`: every referenced pack decrypts and every chunk in it re-hashes to its id.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::fetch::ChunkReader;
use crate::repo::{self, ChunkIndex, Keyring, ObjectRef, Repository};

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
}

/// What verify looked at and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Objects read and hashed.
    pub objects: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Chunks decrypted and re-hashed.
    pub chunks: usize,
    /// Problems, empty when all is well.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Adds another target's findings.
    pub fn merge(&mut self, other: VerifyReport) {
        self.snapshots += other.snapshots;
        self.objects += other.objects;
        self.bytes += other.bytes;
        self.chunks += other.chunks;
        self.problems.extend(other.problems);
    }
}

/// Verifies one repository.
pub async fn run(repository: &Repository, keyring: Option<&Keyring>, depth: Depth) -> Result<VerifyReport> {
    if depth == Depth::ReadData && !keyring.is_some_and(|k| k.is_admin) {
        return Err(Error::Invalid("--read-data needs an admin identity (--identity FILE)".into()));
    }
    let location = repository.target.location().to_string();
    let mut report = VerifyReport::default();
    let problem = |object: &str, snapshots: Vec<String>, what: String| Problem {
        target: location.clone(),
        object: object.to_string(),
        snapshots,
        problem: what,
    };

    match repository.target.get(&repository.config.keys).await {
        Ok(bytes) => {
            if let Err(e) = repo::check_object_name(&repository.config.keys, &bytes) {
                report.problems.push(problem(&repository.config.keys, vec![], e.to_string()));
            }
        }
        Err(e) => report.problems.push(problem(&repository.config.keys, vec![], e.to_string())),
    }

    // Which objects each snapshot needs.
    let mut referenced: BTreeMap<(String, ObjectRef), Vec<String>> = BTreeMap::new();
    let mut sealed_snapshots = Vec::new();
    for entry in repository.snapshots().await? {
        report.snapshots += 1;
        let sealed = match entry {
            Ok(sealed) => sealed,
            Err((id, error)) => {
                report.problems.push(problem(&repo::snapshot_key(&id), vec![id.clone()], error.to_string()));
                continue;
            }
        };
        if sealed.header.config_hash != repository.config_hash {
            report.problems.push(problem(
                repo::CONFIG_KEY,
                vec![sealed.id.clone()],
                "the config differs from the one this snapshot was written under (damaged or replaced)".into(),
            ));
        }
        for pack in &sealed.header.packs {
            referenced.entry((repo::pack_key(&pack.id), pack.clone())).or_default().push(sealed.id.clone());
        }
        for index in &sealed.header.indexes {
            referenced.entry((repo::index_key(&index.id), index.clone())).or_default().push(sealed.id.clone());
        }
        for dictionary in &sealed.header.dictionaries {
            referenced
                .entry((repo::dictionary_key(&dictionary.id), dictionary.clone()))
                .or_default()
                .push(sealed.id.clone());
        }
        sealed_snapshots.push(sealed);
    }

    let mut damaged: BTreeSet<String> = BTreeSet::new();
    for ((key, reference), snapshots) in &referenced {
        match repository.target.get(key).await {
            Ok(bytes) => {
                report.objects += 1;
                report.bytes += bytes.len() as u64;
                let what = if bytes.len() as u64 == reference.size {
                    repo::check_object_name(key, &bytes).err().map(|_| "its BLAKE3 does not match its name".to_string())
                } else {
                    Some(format!("size is {} bytes, the snapshot recorded {}", bytes.len(), reference.size))
                };
                if let Some(what) = what {
                    damaged.insert(reference.id.clone());
                    report.problems.push(problem(key, snapshots.clone(), what));
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
    // With a key: manifests and indexes agree.
    let mut needed_chunks: BTreeMap<String, BTreeSet<ChunkId>> = BTreeMap::new();
    let mut index = ChunkIndex::default();
    for sealed in &sealed_snapshots {
        let mut manifest = match sealed.open(keyring) {
            Ok(manifest) => manifest,
            Err(e) => {
                report.problems.push(problem(&repo::snapshot_key(&sealed.id), vec![sealed.id.clone()], e.to_string()));
                continue;
            }
        };
        let readable: Vec<ObjectRef> =
            sealed.header.indexes.iter().filter(|i| !damaged.contains(&i.id)).cloned().collect();
        let snapshot_index = match repository.load_index(keyring, Some(&readable)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                report.problems.push(problem("index", vec![sealed.id.clone()], e.to_string()));
                continue;
            }
        };
        // The lists of data chunks are data: only an admin reads them; the writer key checks
        // the list chunks themselves.
        let snapshot_index = Arc::new(snapshot_index);
        if keyring.is_admin {
            let reader = ChunkReader::new(repository.target.clone(), keyring.clone(), snapshot_index.clone(), 4);
            if let Err(e) = crate::fetch::expand_lists(&mut manifest, &reader).await {
                report.problems.push(problem(&repo::snapshot_key(&sealed.id), vec![sealed.id.clone()], e.to_string()));
            }
        }
        let snapshot_index = Arc::try_unwrap(snapshot_index).expect("the list reader has been dropped");
        let packs: BTreeSet<&String> = sealed.header.packs.iter().map(|p| &p.id).collect();
        for id in manifest.all_chunks() {
            match snapshot_index.get(id).map(|(entry, _)| &entry.pack) {
                Some(pack) if packs.contains(&pack.id) => {
                    needed_chunks.entry(pack.id.clone()).or_default().insert(*id);
                }
                Some(pack) => report.problems.push(problem(
                    &repo::pack_key(&pack.id),
                    vec![sealed.id.clone()],
                    format!("holds chunk {id} but the snapshot does not list it"),
                )),
                None => report.problems.push(problem(
                    &format!("chunk {id}"),
                    vec![sealed.id.clone()],
                    "in no index the snapshot lists".into(),
                )),
            }
        }
        index.merge(&snapshot_index).map_err(|e| repo::temporary_file_error("chunk index", e))?;
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
    Ok(report)
}
