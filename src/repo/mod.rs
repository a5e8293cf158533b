//! The repository format: config, keys, packs, indexes and snapshots. See docs/FORMAT.md.
//!
//! Objects and their order of writing:
//! - `config` (and its copy `configs/<hash>`): plaintext JSON, written once by `init`; the
//!   BLAKE3 of the first config is the repository's fingerprint ([`crate::trust`]).
//! - `keys/<hash>` (two copies since format 7): the repository secret and the authentication
//!   secret, age-encrypted to the admins and the writer.
//! - `data/<hh>/<hash>`: a pack: zstd-compressed chunks, concatenated, age-encrypted to the admins.
//! - `index/<hash>`: where each chunk of some packs lies, encrypted to the admins and the writer.
//! - `snapshots/<hash>`: a plaintext header (time, sizes, referenced objects), a MAC, and the
//!   encrypted manifest. Written last: it is the commit.
//!
//! `<hash>` is the unkeyed BLAKE3 of the stored bytes, so anyone can check an object's integrity
//! without a key, and nobody learns anything about the plaintext from its name.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, CHUNK_ID_BYTES, RepoSecret};
use crate::error::{Error, Result};
use crate::target::{PutOutcome, Target};

mod audit;
pub mod chunk_index;
mod chunk_set;
mod config;
mod forgotten;
mod index;
pub(crate) mod index_codec;
mod keys;
mod layout;
mod lists;
mod pack;
mod snapshot;

pub use audit::{
    AuditEntry, AuditHeader, AuditRecord, AuditTrail, ReencryptedTrail, parse_stored as parse_audit_record,
};
pub use chunk_index::{ChunkIndex, PackEntry};
pub use chunk_set::*;
pub use config::*;
pub use forgotten::*;
pub use index::*;
pub use keys::*;
pub use layout::*;
pub use lists::*;
pub use pack::*;
pub use snapshot::*;

/// An I/O error of a temporary file (a large index's, a restore's chunk lists), naming where.
pub fn temporary_file_error(what: &str, error: std::io::Error) -> Error {
    Error::io(std::env::temp_dir().join(format!("(temporary {what})")), error)
}

/// The repository format version this build writes.
pub const FORMAT_VERSION: u32 = 7;
/// The first format whose objects are authenticated against a storage writer: the snapshot's
/// MAC covers its version line and names its predecessor, indexes carry a MAC, stream digests
/// are readable by admins only, and the config names two copies of the keys object.
pub const AUTHENTICATED_VERSION: u32 = 7;
/// The first format whose packs hold bytea's hex text packed into bytes (`compress::bytea`):
/// the packs an index file of this version or later describes.
pub const PACKED_BYTEA_VERSION: u32 = 6;
/// The oldest format version this build reads (format 3 stores dictionaries compressed, which
/// readers tell apart by their bytes, and adds levels of list chunks, which default to format
/// 2's one; format 4 puts consecutive chunks in one zstd frame, and a chunk's index entry says
/// where in the frame it starts, 0 when absent as in formats 2 and 3; format 5 stores chunk ids
/// of 16 bytes instead of 32, and readers keep the first 16 of older ones; format 6 packs
/// bytea's hex text into bytes in the frames of the packs its indexes describe;
/// docs/FORMAT.md).
pub const OLDEST_FORMAT_VERSION: u32 = 2;

/// How many bytes a chunk id takes in the list chunks and index of a snapshot or index object
/// of format `version` (readers keep the first [`CHUNK_ID_BYTES`] of them).
pub fn stored_id_bytes(version: u32) -> usize {
    if version <= 4 { crypto::OLD_CHUNK_ID_BYTES } else { CHUNK_ID_BYTES }
}

/// Upper bound on one chunk's plaintext, enforced when reading (guards decompression).
pub const MAX_CHUNK_BYTES: u32 = 16 << 20;

/// An opened repository on one target.
#[derive(Debug, Clone)]
pub struct Repository {
    /// Where it is.
    pub target: Target,
    /// Its config.
    pub config: RepoConfig,
    /// BLAKE3 of the config object's bytes; recorded in every snapshot.
    pub config_hash: String,
    /// The generations this repository was followed through, oldest first, ending with this
    /// config: each signed by the one before ([`Repository::open`]).
    pub chain: Vec<(String, RepoConfig)>,
    /// The generation after which two signed successors were found, if any: the chain stops
    /// there ([`Repository::fork_error`]).
    pub fork: Option<u32>,
}

/// Refuses admins' recipients a repository cannot be made for: none, or more than a header
/// takes. `init` asks before it creates a target's folder.
pub fn check_recipients(recipients: &[age::x25519::Recipient]) -> Result<()> {
    if recipients.is_empty() {
        return Err(Error::NoRecipient);
    }
    crypto::check_recipient_count(recipients.len())
}

impl Repository {
    /// Creates a new repository: writer key (local, 0600) first, then keys, then config.
    pub async fn init(
        target: Target,
        recipients: &[age::x25519::Recipient],
        config_dir: &Path,
        secret: RepoSecret,
        tuning: Tuning,
    ) -> Result<(Repository, PathBuf)> {
        ensure_empty(&target).await?;
        check_recipients(recipients)?;
        let mut id_bytes = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id_bytes);
        let repository_id = hex::encode(id_bytes);

        let writer = crypto::generate_identity();
        let writer_path = writer_key_path(config_dir, &repository_id);
        crypto::write_identity_file(
            &writer_path,
            &writer,
            &format!("crmvault writer key of repository {repository_id}"),
        )?;

        let first = FirstKeys::put(&target, &repository_id, &secret, recipients, &writer.to_public()).await?;

        let config = RepoConfig {
            format: "crmvault".into(),
            version: FORMAT_VERSION,
            id: repository_id,
            created: Utc::now(),
            generation: 0,
            previous: None,
            rekeyed: None,
            recipients: recipients.iter().map(ToString::to_string).collect(),
            writer_recipient: writer.to_public().to_string(),
            keys: first.keys,
            admin_keys: first.admin_keys,
            signing_key: Some(first.signing_key),
            carried: Vec::new(),
            chunking: tuning.chunking,
            compression_level: tuning.compression_level,
            pack_size: 8 << 20,
            signature: None,
        };
        let config_bytes = config.to_bytes();
        let config_hash = crypto::object_hash(&config_bytes);
        let config_bytes = Bytes::from(config_bytes);
        // The copy first: `config` is what makes the folder a repository.
        target.put_new(&config_copy_key(&config_hash), config_bytes.clone()).await?;
        if target.put_new(CONFIG_KEY, config_bytes).await? == PutOutcome::AlreadyThere {
            return Err(Error::AlreadyExists {
                location: target.location().into(),
                what: "a crmvault repository".into(),
            });
        }
        let chain = vec![(config_hash.clone(), config.clone())];
        Ok((Repository { target, config, config_hash, chain, fork: None }, writer_path))
    }

    /// Makes `target` a copy of this repository's identity (every generation's config and keys,
    /// byte for byte), so both share one chunk-id key and `copy` between them is a set
    /// difference of objects.
    pub async fn init_copy(&self, target: Target) -> Result<Repository> {
        ensure_empty(&target).await?;
        // Opened at a later generation (a pin's): the generations before it too, so that the
        // copy's `config` is the first generation, as every repository's is.
        let (whole, gap) = self.with_earlier_generations().await?;
        if let Some(hash) = gap {
            return Err(Error::corrupt(
                format!("{}/{}", self.target.location(), config_copy_key(&hash)),
                "missing or damaged: an earlier generation's config, which the copy needs; mend it from another copy first",
            ));
        }
        let this = &whole;
        for (hash, config) in &this.chain {
            for key in config.keys.iter().chain(&config.admin_keys) {
                match self
                    .target
                    .get_at_most(key, MAX_KEYS_BYTES)
                    .await
                    .and_then(|bytes| check_object_name(key, &bytes).map(|()| bytes))
                {
                    Ok(keys) => {
                        target.put_new(key, keys).await?;
                    }
                    // One copy is enough to open the repository; verify reports the other.
                    Err(error) if config.keys.len() > 1 => tracing::warn!("{}: {error}", self.target.location()),
                    Err(error) => return Err(error),
                }
            }
            if config.version >= AUTHENTICATED_VERSION {
                target.put_new(&config_copy_key(hash), self.config_bytes_of(hash).await?).await?;
            }
        }
        let (first, _) = &this.chain[0];
        target.put_new(CONFIG_KEY, self.config_bytes_of(first).await?).await?;
        Repository::open_at(target, &self.config_hash).await
    }

    /// The admins' recipients (data).
    pub fn data_recipients(&self) -> Vec<age::x25519::Recipient> {
        self.config.recipients.iter().filter_map(|r| crypto::parse_recipient(r).ok()).collect()
    }

    /// Admins plus writer (metadata).
    pub fn metadata_recipients(&self) -> Vec<age::x25519::Recipient> {
        let mut all = self.data_recipients();
        all.extend(crypto::parse_recipient(&self.config.writer_recipient).ok());
        all
    }
}

/// Refuses to initialise over a repository or other files.
pub async fn ensure_empty(target: &Target) -> Result<()> {
    if target.size_of(CONFIG_KEY).await?.is_some() {
        return Err(Error::AlreadyExists { location: target.location().into(), what: "a crmvault repository".into() });
    }
    if !target.is_empty().await? {
        return Err(Error::AlreadyExists { location: target.location().into(), what: "other files".into() });
    }
    Ok(())
}

/// The most JSON an object of formats 2 and 3 (an index, a manifest) is decompressed to: about
/// ten million chunks' index entries.
const MAX_JSON_BYTES: u64 = 1 << 30;

/// zstd-compressed JSON, parsed as it is decompressed: the JSON of a large index (about 100
/// bytes a chunk: 50 MiB at 3 GiB of data) is never held whole. More than [`MAX_JSON_BYTES`]
/// of it are refused (a few bytes of zstd can say gigabytes).
pub(crate) fn decode_json<T: for<'de> Deserialize<'de>>(object: &str, compressed: &[u8]) -> Result<T> {
    use std::io::Read;
    let decoder = zstd::stream::Decoder::new(compressed).map_err(|e| Error::corrupt(object, format!("zstd: {e}")))?;
    // More JSON than that ends where it is cut: not JSON.
    serde_json::from_reader(std::io::BufReader::with_capacity(64 << 10, decoder.take(MAX_JSON_BYTES))).map_err(|e| {
        if e.is_io() {
            Error::corrupt(object, format!("zstd: {e}"))
        } else {
            Error::corrupt(object, format!("bad JSON: {e}"))
        }
    })
}

/// JSON straight into zstd: the uncompressed JSON of a large index or manifest (hex chunk ids,
/// tens of MiB at a few GiB of data) is never held whole.
fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).expect("zstd level 3 is valid");
    serde_json::to_writer(&mut encoder, value).expect("serialising to memory cannot fail");
    encoder.finish().expect("writing to memory cannot fail")
}

/// Bytes of snapshot and index objects held at once while several are read together
/// ([`crate::target::ReadBudget`]): far more than a year of nights needs, far less than a few
/// objects of junk as large as their limits.
pub(crate) const READ_BUDGET: u64 = 64 << 20;

/// CPU work taken off the runtime's threads (decrypting and parsing a year of manifests or
/// indexes), on as many blocking threads at once as there are cores: more would each keep
/// their allocator's caches for no gain.
#[derive(Clone)]
pub(crate) struct Cores(std::sync::Arc<tokio::sync::Semaphore>);

impl Cores {
    pub(crate) fn new() -> Cores {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Cores(std::sync::Arc::new(tokio::sync::Semaphore::new(cores)))
    }

    /// Runs `work` on a blocking thread once a core is free.
    pub(crate) async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let _core = self.0.acquire().await.map_err(|_| Error::Internal("no core left to work on".into()))?;
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|error| Err(Error::Internal(format!("work on a blocking thread: {error}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::FrameCoding;
    use crate::crypto::{CHUNK_ID_BYTES, ChunkId, ChunkIdKey};
    use crate::target::OpenMode;

    fn ids(range: std::ops::Range<u32>) -> Vec<ChunkId> {
        range.map(|n| ChunkId::from_stored(blake3::hash(&n.to_le_bytes()).as_bytes()).unwrap()).collect()
    }

    #[test]
    fn a_chunk_set_holds_each_id_once_and_knows_every_one() {
        let all = ids(0..20_000);
        let mut set = ChunkSet::default();
        assert!(!set.contains(&all[0]) && set.is_empty());
        for (n, id) in all.iter().enumerate() {
            assert!(set.insert(*id), "id {n} is new");
            if n % 997 == 0 {
                assert!(!set.insert(*id), "id {n} again");
            }
        }
        assert_eq!(set.len(), all.len());
        assert!(all.iter().all(|id| set.contains(id)));
        assert!(ids(20_000..25_000).iter().all(|id| !set.contains(id)));
        // Ids sharing their leading bytes (the probe's start) are still told apart.
        let mut twins = ChunkSet::default();
        let twin = |last: u8| {
            let mut bytes = [9u8; CHUNK_ID_BYTES];
            bytes[CHUNK_ID_BYTES - 1] = last;
            ChunkId(bytes)
        };
        assert!(twins.insert(twin(1)) && twins.insert(twin(2)) && !twins.insert(twin(1)));
        assert!(twins.contains(&twin(2)) && !twins.contains(&twin(3)));
    }

    #[test]
    fn a_format_3_index_entry_has_four_elements() {
        // Formats 2-4 wrote all 32 bytes of an id; this build keeps the first 16.
        let id = ChunkId([7; CHUNK_ID_BYTES]);
        let hex = format!("{id}{}", "ab".repeat(16));
        let entry: ChunkLocation = serde_json::from_str(&format!("[\"{hex}\",10,20,30]")).unwrap();
        assert_eq!(entry, ChunkLocation::new(id, 10, 20, 30));
        assert_eq!(entry.start(), 0);
        for bad in [format!("[\"{hex}\",10,20]"), format!("[\"{hex}\",10,20,30,40]")] {
            assert!(serde_json::from_str::<ChunkLocation>(&bad).is_err(), "{bad}");
        }
    }

    /// Chunks of `key` in a sealed pack, each slice of `frames` compressed as one frame; the
    /// locations, the pack's decrypted plaintext, and the length the writer counted.
    fn pack_of_frames(key: &ChunkIdKey, frames: &[&[Vec<u8>]]) -> (Vec<ChunkLocation>, Vec<u8>, usize) {
        let mut zstd = crate::compress::ChunkCompressor::default();
        let admin = crypto::generate_identity();
        let mut pack = PackWriter::new(&[admin.to_public()], 1 << 16, None);
        for rows in frames {
            let chunks: Vec<(ChunkId, u32)> =
                rows.iter().map(|row| (key.id_of(row), u32::try_from(row.len()).unwrap())).collect();
            pack.add(&zstd.compress(&rows.concat(), 3, None), &chunks);
        }
        let length = pack.len();
        let sealed = pack.seal();
        (sealed.chunks.clone(), crypto::decrypt(&[admin], &sealed.bytes).unwrap(), length)
    }

    #[test]
    fn chunks_sharing_a_frame_open_in_any_order_and_a_bad_start_is_refused() {
        let frames = FrameCache::new(1 << 24);
        let key = RepoSecret::generate().chunk_id_key();
        let rows: Vec<Vec<u8>> = (0..5).map(|n| format!("{n}\trow number {n}\n").repeat(50 + n).into_bytes()).collect();
        let chunks: Vec<(ChunkId, u32)> =
            rows.iter().map(|row| (key.id_of(row), u32::try_from(row.len()).unwrap())).collect();
        let alone = [b"a chunk alone\n".to_vec()];
        let (locations, plaintext, length) = pack_of_frames(&key, &[&alone, &rows[..3], &rows[3..]]);
        assert_eq!(plaintext.len(), length);
        assert_eq!(locations.len(), 6);
        assert_eq!(locations[0].start(), 0);
        assert_eq!(locations[2].offset(), locations[1].offset(), "two chunks of one frame");
        assert_eq!(locations[2].start(), chunks[0].1);
        assert_eq!(
            open_chunk(&key, PackBytes::whole(&plaintext), &locations[0], "p", FrameCoding::default(), frames.of(0))
                .unwrap(),
            b"a chunk alone\n"
        );
        // Backwards, across frames, and the same frame again: each chunk is proven on its own.
        for at in [5, 2, 4, 1, 3, 2] {
            let opened = open_chunk(
                &key,
                PackBytes::whole(&plaintext),
                &locations[at],
                "p",
                FrameCoding::default(),
                frames.of(0),
            )
            .unwrap();
            assert_eq!(opened, rows[at - 1], "chunk {at}");
        }
        let shifted =
            ChunkLocation::in_frame(chunks[1].0, locations[2].offset(), locations[2].length(), chunks[1].1, 1);
        let error = open_chunk(&key, PackBytes::whole(&plaintext), &shifted, "p", FrameCoding::default(), frames.of(0))
            .unwrap_err()
            .to_string();
        assert!(error.contains("fails its keyed hash"), "{error}");
        let beyond =
            ChunkLocation::in_frame(chunks[1].0, locations[2].offset(), locations[2].length(), chunks[1].1, 1 << 20);
        let error = open_chunk(&key, PackBytes::whole(&plaintext), &beyond, "p", FrameCoding::default(), frames.of(0))
            .unwrap_err()
            .to_string();
        assert!(error.contains("lies outside its frame"), "{error}");
        // A format-3 style entry (no start) for the first chunk of a frame of three: the
        // frame's header, not the entry, says how much to decompress.
        let first = ChunkLocation::new(chunks[0].0, locations[1].offset(), locations[1].length(), chunks[0].1);
        assert_eq!(
            open_chunk(&key, PackBytes::whole(&plaintext), &first, "p", FrameCoding::default(), frames.of(0)).unwrap(),
            rows[0]
        );
    }

    #[test]
    fn a_frame_of_several_chunks_is_kept_once_per_source_and_forgotten_when_a_chunk_fails() {
        let key = RepoSecret::generate().chunk_id_key();
        let rows: Vec<Vec<u8>> = (0..6).map(|n| format!("{n}\tkept row {n}\n").repeat(300).into_bytes()).collect();
        let (locations, plaintext, _) = pack_of_frames(&key, &[&rows[..3], &rows[3..]]);
        let frame_bytes: usize = rows[..3].iter().map(Vec::len).sum();
        // Room for two frames of this size, not three.
        let cache = FrameCache::new(frame_bytes * 5 / 2);
        let (frames, other) = (cache.of(0), cache.of(1));
        let open = |at: usize, frames: Frames<'_>, pack: &[u8]| {
            open_chunk(&key, PackBytes::whole(pack), &locations[at], "p", FrameCoding::default(), frames)
        };
        assert_eq!(open(1, frames, &plaintext).unwrap(), rows[1]);
        assert!(frames.get("p", locations[1].offset()).is_some(), "the frame is kept for its other chunks");
        assert!(other.get("p", locations[1].offset()).is_none(), "packs of two targets may share a name");
        // Its other chunks come out of the cache: the pack's bytes are not looked at again.
        let zeroed = vec![0; plaintext.len()];
        assert_eq!(open(0, frames, &zeroed).unwrap(), rows[0]);
        assert_eq!(open(2, frames, &zeroed).unwrap(), rows[2]);
        // A chunk its frame does not hold: refused, and the frame forgotten (it may be a
        // damaged copy; the next target's copy must be decompressed).
        let wrong = ChunkLocation::in_frame(key.id_of(b"other"), locations[1].offset(), locations[1].length(), 10, 0);
        let error = open_chunk(&key, PackBytes::whole(&zeroed), &wrong, "p", FrameCoding::default(), frames)
            .unwrap_err()
            .to_string();
        assert!(error.contains("fails its keyed hash"), "{error}");
        assert!(frames.get("p", locations[1].offset()).is_none());
        // Beyond the budget, the least recently used frame leaves first.
        assert_eq!(open(4, frames, &plaintext).unwrap(), rows[4]);
        assert_eq!(open(1, other, &plaintext).unwrap(), rows[1]);
        assert!(frames.get("p", locations[4].offset()).is_some(), "used last: stays");
        assert_eq!(open(1, frames, &plaintext).unwrap(), rows[1]);
        assert!(other.get("p", locations[1].offset()).is_none(), "used least recently: left");
        assert!(frames.get("p", locations[4].offset()).is_some());
        assert!(frames.get("p", locations[1].offset()).is_some());
    }

    #[test]
    fn chunks_opened_together_decompress_whole_frames_and_still_prove_each_chunk() {
        let frames = FrameCache::new(1 << 24);
        let key = RepoSecret::generate().chunk_id_key();
        let rows: Vec<Vec<u8>> = (0..6).map(|n| format!("{n}\trow {n}\n").repeat(40 + n).into_bytes()).collect();
        let chunks: Vec<ChunkId> = rows.iter().map(|row| key.id_of(row)).collect();
        let (locations, plaintext, _) = pack_of_frames(&key, &[&rows[..3], &rows[3..4], &rows[4..]]);
        let open = |locations: &[ChunkLocation]| {
            let mut out = b"kept".to_vec();
            let result = open_chunks_onto(
                &key,
                PackBytes::whole(&plaintext),
                locations,
                "p",
                FrameCoding::default(),
                frames.of(0),
                &mut out,
            );
            (result, out)
        };
        // Whole frames, a chunk alone, and frames entered in the middle or left early.
        for picked in [vec![0, 1, 2, 3, 4, 5], vec![1, 2, 3, 4], vec![0, 1, 5], vec![2, 1, 0], vec![4, 5, 4, 5]] {
            let (result, out) = open(&picked.iter().map(|&at| locations[at]).collect::<Vec<_>>());
            result.unwrap();
            let expected: Vec<u8> = b"kept".iter().chain(picked.iter().flat_map(|&at| &rows[at])).copied().collect();
            assert_eq!(out, expected, "{picked:?}");
        }
        // A whole frame whose second chunk's id is wrong: refused, and `out` keeps what it held.
        let mut forged = locations[..3].to_vec();
        forged[1] = ChunkLocation::in_frame(
            chunks[0],
            forged[1].offset(),
            forged[1].length(),
            forged[1].raw_length(),
            forged[1].start(),
        );
        let (result, out) = open(&forged);
        let error = result.unwrap_err().to_string();
        assert!(error.contains("fails its keyed hash"), "{error}");
        assert_eq!(out, b"kept");
    }

    #[test]
    fn long_lists_get_levels_that_expand_back_and_change_one_chunk_per_level() {
        use std::collections::HashMap;
        let ids: Vec<ChunkId> =
            (0..100_000u32).map(|i| ChunkId::from_stored(blake3::hash(&i.to_le_bytes()).as_bytes()).unwrap()).collect();
        let build = |ids: &[ChunkId]| {
            let mut stored: HashMap<ChunkId, Vec<u8>> = HashMap::new();
            let mut stream = StreamManifest { chunks: ids.to_vec(), ..StreamManifest::default() };
            build_lists(&mut stream, |pieces| {
                Ok(pieces
                    .into_iter()
                    .map(|piece| {
                        let id = ChunkId::from_stored(blake3::hash(&piece).as_bytes()).unwrap();
                        stored.insert(id, piece);
                        id
                    })
                    .collect())
            })
            .unwrap();
            (stream, stored)
        };
        let (stream, stored) = build(&ids);
        assert!(stream.lists.len() <= LIST_TOP_MAX, "{}", stream.lists.len());
        assert_eq!(stream.list_levels, 3, "100 000 ids: ~6 000 list chunks, ~400, then ~25");
        // Expanding level by level gives the ids back.
        let mut level = stream.lists.clone();
        for _ in 0..stream.list_levels {
            level = level.iter().flat_map(|id| parse_list("list", &stored[id], FORMAT_VERSION).unwrap()).collect();
        }
        assert_eq!(level, ids);
        assert_eq!(stream.inner_lists.len() + stream.lists.len(), stored.len());
        // One changed id changes one list chunk per level (and the top).
        let mut changed = ids.clone();
        // (with the same last byte, so the cuts stay where they were)
        let mut other = [7; CHUNK_ID_BYTES];
        other[CHUNK_ID_BYTES - 1] = ids[50_000].0[CHUNK_ID_BYTES - 1];
        changed[50_000] = ChunkId(other);
        let (_, stored_after) = build(&changed);
        let new = stored_after.keys().filter(|id| !stored.contains_key(*id)).count();
        assert_eq!(new, 3, "{new} new list chunks");
        // Format 2 manifests have no list_levels: one level.
        let old: StreamManifest = serde_json::from_str(r#"{"bytes": 0, "digest": "", "lists": []}"#).unwrap();
        assert_eq!(old.list_levels, 1);
    }

    #[test]
    fn list_chunks_round_trip_and_change_only_where_the_list_changes() {
        let before = ids(0..5000);
        let lists = split_list(&before);
        let parsed: Vec<ChunkId> =
            lists.iter().flat_map(|list| parse_list("list", list, FORMAT_VERSION).unwrap()).collect();
        assert_eq!(parsed, before);
        let counts: Vec<usize> = lists.iter().map(|list| list.len() / CHUNK_ID_BYTES).collect();
        assert!(counts[..counts.len() - 1].iter().all(|&n| (LIST_MIN..=LIST_MAX).contains(&n)), "{counts:?}");
        let average = before.len() / lists.len();
        assert!((10..=24).contains(&average), "{average} ids per list chunk");
        // One id replaced in the middle: one or two list chunks differ, the rest are shared.
        let mut after = before.clone();
        after[2500] = ids(9000..9001)[0];
        let new: std::collections::HashSet<Vec<u8>> = split_list(&after).into_iter().collect();
        let changed = new.iter().filter(|list| !lists.contains(list)).count();
        assert!((1..=2).contains(&changed), "{changed} list chunks changed");
        // Not a list: refused.
        assert!(parse_list("list", &[0u8; 17], FORMAT_VERSION).is_err());
        assert!(parse_list("list", &[], FORMAT_VERSION).is_err());
        // A format-4 list chunk: 32 bytes an id, of which the first 16 are kept.
        let old: Vec<u8> = before[..3].iter().flat_map(|id| [&id.0[..], &[0xcd; 16]].concat()).collect();
        assert_eq!(parse_list("list", &old, 4).unwrap(), before[..3]);
        assert!(parse_list("list", &old[..48], 4).is_err());
    }

    #[test]
    fn a_manifest_without_tags_still_reads_and_filters_look_at_every_field() {
        let mut manifest = empty_manifest();
        let json = serde_json::to_value(&manifest).unwrap();
        assert!(json.get("tags").is_none(), "no tags, no field: {json}");
        let old: Manifest = serde_json::from_value(json).unwrap();
        assert!(old.tags.is_empty());

        manifest.tags = vec!["nightly".into(), "before-upgrade".into()];
        let tagged = |tags: &[&str]| SnapshotFilter {
            tags: tags.iter().map(|t| (*t).to_string()).collect(),
            ..SnapshotFilter::default()
        };
        assert!(SnapshotFilter::default().matches(&manifest) && SnapshotFilter::default().is_empty());
        assert!(tagged(&["nightly", "before-upgrade"]).matches(&manifest));
        assert!(!tagged(&["nightly", "weekly"]).matches(&manifest));
        let database = |name: &str| SnapshotFilter { database: Some(name.into()), ..SnapshotFilter::default() };
        assert!(database("crm").matches(&manifest) && !database("crm2").matches(&manifest));
        let host = SnapshotFilter { hostname: Some("elsewhere".into()), ..database("crm") };
        assert!(!host.matches(&manifest));
        assert_eq!(host.to_string(), "of database crm, from host elsewhere");
    }

    /// The layout an admin reader checks is the bytes version 1 describes (docs/FORMAT.md,
    /// `layout`): changing how it is made would refuse every snapshot written before. It
    /// changes with a column's place, a table's name, a row count, a sequence or the session.
    #[test]
    fn a_manifests_layout_is_fixed_by_its_version_and_follows_what_restore_does_with_the_rows() {
        let mut manifest = empty_manifest();
        manifest.tables.push(TableManifest {
            schema: "crm".into(),
            name: "contacts".into(),
            columns: vec!["id".into(), "first_name".into(), "last_name".into()],
            primary_key: vec!["id".into()],
            rows: 3,
            data: StreamManifest::default(),
        });
        manifest.sequences.push(SequenceState {
            schema: "crm".into(),
            name: "s".into(),
            last_value: 7,
            is_called: true,
        });
        let text = concat!(
            r#"[1,"crm","test",[],[["crm","contacts",["id","first_name","last_name"],["id"],3]],null,"#,
            r#"[["crm","s",7,true]],[],null,null]"#
        );
        assert_eq!(manifest.layout(), blake3::hash(text.as_bytes()).to_hex().to_string());
        let changes: [fn(&mut Manifest); 7] = [
            |m| m.database = "other".into(),
            |m| m.tags.push("before-upgrade".into()),
            |m| m.tables[0].columns.swap(1, 2),
            |m| m.tables[0].name = "companies".into(),
            |m| m.tables[0].rows += 1,
            |m| m.sequences[0].last_value = 1,
            |m| m.roles = Some(vec![]),
        ];
        for change in changes {
            let mut changed = manifest.clone();
            change(&mut changed);
            assert_ne!(changed.layout(), manifest.layout());
        }
    }

    fn empty_manifest() -> Manifest {
        Manifest {
            version: FORMAT_VERSION,
            database: "crm".into(),
            server_version: "15".into(),
            hostname: "test".into(),
            tags: vec![],
            pre_data: StreamManifest::default(),
            post_data: StreamManifest::default(),
            tables: vec![],
            sequences: vec![],
            materialized_views: vec![],
            large_objects: None,
            admin_only: None,
            alarms: vec![],
            session: None,
            roles: None,
            database_object: None,
        }
    }

    /// `Repository::follow` holds what each config claiming a later generation names as its
    /// predecessor: a config whose `previous` is anything but a hash (15 MiB of it, planted many
    /// times, took a backup's memory) is refused as it is parsed.
    #[tokio::test]
    async fn a_config_whose_previous_is_not_a_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path().join("repo").to_str().unwrap(), OpenMode::Create).unwrap();
        let admin = crypto::generate_identity();
        let config_dir = dir.path().join("config");
        let recipients = [admin.to_public()];
        let init = Repository::init(target, &recipients, &config_dir, RepoSecret::generate(), Tuning::default());
        let (repository, _) = init.await.unwrap();
        let mut config = repository.config.clone();
        config.generation = 1;
        config.previous = Some(repository.config_hash.clone());
        assert!(parse_config("here", &config.to_bytes()).is_ok());
        config.previous = Some("ab".repeat(1 << 10));
        let refused = parse_config("here", &config.to_bytes()).unwrap_err();
        assert!(refused.to_string().contains("names an object that is not a hash"), "{refused}");
    }

    #[tokio::test]
    async fn a_header_longer_than_the_probe_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path().join("repo").to_str().unwrap(), OpenMode::Create).unwrap();
        let admin = crypto::generate_identity();
        let (repository, _) = Repository::init(
            target,
            &[admin.to_public()],
            &dir.path().join("config"),
            RepoSecret::generate(),
            Tuning::default(),
        )
        .await
        .unwrap();
        let keyring = repository.unlock_as_writer(&dir.path().join("config")).await.unwrap();
        // 2 000 packs make a header of ~160 KiB, past the 64 KiB first read.
        let packs = (0..2000u64).map(|i| ObjectRef { id: format!("{i:064x}").parse().unwrap(), size: i }).collect();
        let header = SnapshotHeader {
            version: FORMAT_VERSION,
            time: Utc::now(),
            config_hash: repository.config_hash.clone(),
            total_bytes: 1,
            added_bytes: 1,
            packs,
            indexes: vec![],
            dictionaries: vec![],
            parent: None,
            sequence: 1,
            replaces: None,
        };
        let sealed = SealedManifest::seal(&mut empty_manifest(), &repository);
        let object = sealed.snapshot_object(&header, &keyring);
        assert!(object.len() > 128 * 1024);
        repository.target.put_new(&snapshot_key(&sealed.id), object).await.unwrap();

        let read = repository.read_snapshot_header(&sealed.id, None).await.unwrap();
        assert_eq!(read.packs.len(), 2000);
        assert_eq!(repository.resolve_snapshot("latest").await.unwrap(), sealed.id);
        let full = repository.read_snapshot(&sealed.id).await.unwrap();
        assert_eq!(full.open(&keyring).unwrap().database, "crm");
    }
}
