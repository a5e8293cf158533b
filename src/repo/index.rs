//! Index objects: where each chunk lies in which pack, authenticated by their MAC, loaded into
//! a [`ChunkIndex`] (docs/FORMAT.md, *Index*).

use std::collections::HashSet;

use bytes::Bytes;
use serde::Deserialize;

use crate::crypto::{self, ChunkId, MacKey};
use crate::error::{Error, Result};
use crate::target::ReadBudget;

use super::{
    AUTHENTICATED_VERSION, ChunkIndex, FORMAT_VERSION, Keyring, ObjectId, ObjectRef, Repository, check_object_name,
    decode_json, index_codec, index_key, temporary_file_error,
};

/// Index entries a backup or restore keeps in memory per target (40 bytes each: 10 MiB); past
/// that a target's index is a temporary file ([`ChunkIndex::with_budget`]), so that their memory
/// does not grow with the repository or the snapshot (docs/OPERATIONS.md, "Memory and temporary
/// files"). A lookup in the file is a `pread`: at 65 536 entries, a restore of the scale-1
/// benchmark's 187 496 chunks made one per chunk before touching the database (0.14 s of its
/// critical path, and the larger part of its system time; BENCHMARKS.md, session 46).
pub const INDEX_IN_MEMORY: usize = 1 << 18;

/// Indexes read at once while loading (each then decoded on a core) from a local folder.
const INDEXES_AHEAD: usize = 8;
/// Indexes read at once from a bucket, at most, where each is a request answered after a round
/// trip: a year of nights left 730 indexes, loaded in 2.1 s eight at a time with 20 ms a
/// request (BENCHMARKS.md, session 40). Only while that many of the largest index listed fit
/// in [`REMOTE_INDEX_BYTES_AHEAD`]: decoded indexes waiting their turn count against no
/// budget, and a full one (65 536 chunks) decodes to about 4 MiB.
const REMOTE_INDEXES_AHEAD: usize = 32;
/// Stored bytes of indexes read ahead from a bucket, at most, beyond [`INDEXES_AHEAD`] of them.
const REMOTE_INDEX_BYTES_AHEAD: u64 = 16 << 20;

/// The largest index object read: a backup writes one every [`crate::backup::INDEX_CHUNKS`]
/// new chunks (a few MiB), so anything near this is junk, refused before it fills memory.
pub const MAX_INDEX_BYTES: u64 = 256 << 20;
/// The format from which indexes are binary ([`index_codec`]); formats 2 and 3 wrote JSON.
const BINARY_INDEX_VERSION: u32 = 4;

fn temporary_index(error: std::io::Error) -> Error {
    temporary_file_error("chunk index", error)
}

/// What an index's MAC proved.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IndexProof {
    /// Written with the keys of the generation the keyring was unlocked under.
    Head,
    /// Written with an earlier generation's keys (before a `rekey`): that generation's config
    /// hash.
    Earlier(String),
    /// Carries no MAC (formats 2-6).
    None,
}

/// Where one chunk lies inside a pack's plaintext: in the zstd frame at `offset` (`length`
/// bytes), which may hold several consecutive chunks (format 4), at `start` of its plaintext.
///
/// Format 4 indexes store it in binary (`index_codec`); formats 2 and 3 stored
/// `[id, offset, length, raw_length]` in JSON, one frame per chunk, hence `start` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    chunk: ChunkId,
    offset: u64,
    length: u32,
    raw_length: u32,
    start: u32,
}

impl ChunkLocation {
    /// A chunk alone in its frame.
    pub fn new(chunk: ChunkId, offset: u64, length: u32, raw_length: u32) -> Self {
        ChunkLocation { chunk, offset, length, raw_length, start: 0 }
    }
    /// A chunk `start` bytes into the plaintext of the frame at `offset`.
    pub fn in_frame(chunk: ChunkId, offset: u64, length: u32, raw_length: u32, start: u32) -> Self {
        ChunkLocation { chunk, offset, length, raw_length, start }
    }
    /// The chunk.
    pub fn chunk(&self) -> ChunkId {
        self.chunk
    }
    /// Offset of its frame in the decrypted pack.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Compressed length of its frame.
    pub fn length(&self) -> u32 {
        self.length
    }
    /// Plaintext length of the chunk.
    pub fn raw_length(&self) -> u32 {
        self.raw_length
    }
    /// Where the chunk starts in its frame's plaintext.
    pub fn start(&self) -> u32 {
        self.start
    }
}

impl<'de> Deserialize<'de> for ChunkLocation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ChunkLocation;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[chunk id, offset, length, raw length]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<ChunkLocation, A::Error> {
                use serde::de::Error as _;
                let missing = |n| A::Error::invalid_length(n, &self);
                let chunk = seq.next_element()?.ok_or_else(|| missing(0))?;
                let offset = seq.next_element()?.ok_or_else(|| missing(1))?;
                let length = seq.next_element()?.ok_or_else(|| missing(2))?;
                let raw_length = seq.next_element()?.ok_or_else(|| missing(3))?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(5, &self));
                }
                Ok(ChunkLocation { chunk, offset, length, raw_length, start: 0 })
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

/// One pack as an index describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct PackRecord {
    /// The pack.
    pub pack: ObjectRef,
    /// The zstd dictionary its chunks were compressed with, if any.
    #[serde(default)]
    pub dictionary: Option<ObjectRef>,
    /// Its chunks.
    pub chunks: Vec<ChunkLocation>,
}

/// Plaintext of an index object (read from JSON for formats 2 and 3, see `index_codec` for 4).
#[derive(Debug, Clone, Deserialize)]
pub struct IndexFile {
    /// Format version.
    pub version: u32,
    /// Packs described.
    pub packs: Vec<PackRecord>,
}

/// Encrypts an index file for the metadata recipients: (key, reference, bytes). Takes the file
/// so that its chunk records, the largest thing a full backup holds at the end, are freed
/// before the ciphertext is made.
///
/// Since format 7 the plaintext ends with a MAC of the rest under the index MAC key, so that a
/// backup can tell an index this repository's keys wrote from one a storage writer made for the
/// public recipients (docs/FORMAT.md, *Index*).
pub fn seal_index(
    file: IndexFile,
    recipients: &[age::x25519::Recipient],
    mac_key: &MacKey,
) -> (String, ObjectRef, Bytes) {
    let mut plaintext = index_codec::encode(&file);
    if file.version >= AUTHENTICATED_VERSION {
        let mac = mac_key.mac_bytes(&[&plaintext]);
        plaintext.extend_from_slice(mac.as_bytes());
    }
    drop(file);
    let ciphertext = crypto::encrypt(recipients, &plaintext);
    let id = ObjectId::of(&ciphertext);
    (index_key(&id), ObjectRef { id, size: ciphertext.len() as u64 }, Bytes::from(ciphertext))
}

impl Repository {
    /// Loads all index objects (or the listed ones), returning chunk locations, of all packs
    /// (or of `packs`: see [`Self::load_index_lenient`]); the first that fails is the error.
    pub async fn load_index(
        &self,
        keyring: &Keyring,
        only: Option<&[ObjectRef]>,
        packs: Option<&[ObjectRef]>,
    ) -> Result<ChunkIndex> {
        let (index, mut failures) = self.load_index_lenient(keyring, only, packs, usize::MAX).await?;
        match failures.pop() {
            Some((_, error)) => Err(error),
            None => Ok(index),
        }
    }

    /// Loads what it can of the index objects (all, or the listed ones), returning the ones
    /// that failed beside it. With `packs`, only the chunks of those packs are kept: an index
    /// file also describes packs a snapshot does not use, and a restore needs only its own
    /// (a repository's index grows with every night, a snapshot does not). Past
    /// `memory_entries` chunks the index goes to temporary files ([`ChunkIndex::with_budget`]).
    pub async fn load_index_lenient(
        &self,
        keyring: &Keyring,
        only: Option<&[ObjectRef]>,
        packs: Option<&[ObjectRef]>,
        memory_entries: usize,
    ) -> Result<(ChunkIndex, Vec<(String, Error)>)> {
        let packs: Option<HashSet<&ObjectId>> = packs.map(|list| list.iter().map(|p| &p.id).collect());
        // Each index read at the size its snapshot's header gives, or the listing did.
        let keys: Vec<(String, u64)> = match only {
            Some(list) => list.iter().map(|o| (index_key(&o.id), o.size)).collect(),
            None => self.target.list("index").await?,
        };
        let mut index = ChunkIndex::with_budget(memory_entries);
        let mut failures = Vec::new();
        // Indexes a snapshot lists are proven by the hashes in its authenticated header; any
        // other index must prove itself with its MAC in a repository whose indexes all carry one.
        let must_authenticate = only.is_none() && self.config.version >= AUTHENTICATED_VERSION;
        let mut read = std::pin::pin!(self.read_indexes(keyring, keys));
        while let Some((key, opened)) = futures::StreamExt::next(&mut read).await {
            match opened {
                Ok((_, IndexProof::None)) if must_authenticate => failures.push((
                    key.clone(),
                    Error::corrupt(&key, "carries no MAC (not written with this repository's key)"),
                )),
                // Written before a `rekey`, which wrote it again under the new key: the copy
                // serves, this one is left for the snapshots that list it.
                Ok((_, IndexProof::Earlier(_))) if must_authenticate => {}
                Ok((file, _)) => {
                    index.add(key.trim_start_matches("index/"), file, packs.as_ref()).map_err(temporary_index)?;
                }
                Err(error) => failures.push((key, error)),
            }
        }
        index.seal().map_err(temporary_index)?;
        if index.is_on_disk() {
            tracing::debug!(chunks = index.len(), "{}: index kept in a temporary file", self.target.location());
        }
        Ok((index, failures))
    }

    /// Reads and authenticates one index object (for `verify`'s look at unreferenced ones):
    /// fails when it cannot be read, decrypted, authenticated (format 7 repositories) or parsed.
    pub async fn check_index(&self, keyring: &Keyring, key: &str) -> Result<()> {
        match self.read_index(keyring, key).await? {
            (_, IndexProof::None) if self.config.version >= AUTHENTICATED_VERSION => {
                Err(Error::corrupt(key, "carries no MAC (not written with this repository's key)"))
            }
            (_, IndexProof::Earlier(_)) => Err(Error::corrupt(
                key,
                "is MACed with a key a rekey retired (left by a backup that did not finish before it, or written \
                 since by whoever still holds that key)",
            )),
            _ => Ok(()),
        }
    }

    /// Reads and authenticates an index a snapshot lists (written under this generation or an
    /// earlier one).
    pub async fn read_listed_index(&self, keyring: &Keyring, key: &str) -> Result<IndexFile> {
        Ok(self.read_index(keyring, key).await?.0)
    }

    /// Reads an index object: the file, and whether its MAC proved it was written with this
    /// repository's keys (format 7 and later; older indexes carry none).
    async fn read_index(&self, keyring: &Keyring, key: &str) -> Result<(IndexFile, IndexProof)> {
        decode_index(keyring, key, &self.target.get_at_most(key, MAX_INDEX_BYTES).await?, self.config.version)
    }

    /// [`Self::read_index`] of each of `keys` (each with its size: one over
    /// [`MAX_INDEX_BYTES`] is refused unread, a larger one than said too), in order,
    /// several read at once within [`super::READ_BUDGET`] and decoded on as many blocking
    /// threads as cores (a year of nights is 365 indexes to decrypt and parse).
    fn read_indexes(
        &self,
        keyring: &Keyring,
        keys: Vec<(String, u64)>,
    ) -> impl futures::Stream<Item = (String, Result<(IndexFile, IndexProof)>)> + '_ {
        let cores = super::Cores::new();
        let budget = ReadBudget::new(super::READ_BUDGET);
        let keyring = keyring.clone();
        let version = self.config.version;
        let largest = keys.iter().map(|(_, size)| (*size).min(MAX_INDEX_BYTES)).max().unwrap_or(0).max(1);
        let ahead = if self.target.is_local() {
            INDEXES_AHEAD
        } else {
            usize::try_from(REMOTE_INDEX_BYTES_AHEAD / largest).unwrap_or(0).clamp(INDEXES_AHEAD, REMOTE_INDEXES_AHEAD)
        };
        let reads = keys.into_iter().map(move |(key, size)| {
            let (keyring, cores, budget) = (keyring.clone(), cores.clone(), budget.clone());
            async move {
                let held = if size > MAX_INDEX_BYTES {
                    Err(Error::corrupt(&key, format!("{size} bytes: too large for what it is")))
                } else {
                    self.target.get_within_sized(&key, size, &budget).await
                };
                let decoded = match held {
                    Ok(ciphertext) => {
                        let key = key.clone();
                        cores.run(move || decode_index(&keyring, &key, &ciphertext, version)).await
                    }
                    Err(error) => Err(error),
                };
                (key, decoded)
            }
        });
        futures::StreamExt::buffered(futures::stream::iter(reads), ahead)
    }

    /// After a `rekey`: writes the indexes of earlier generations again under this generation's
    /// keys (the keyring's), so that the next backup still finds every chunk it may reuse. Only
    /// indexes that a carried snapshot lists are taken: the carried list names those snapshot
    /// objects byte for byte, so their headers vouch for the indexes, while an index's own MAC
    /// under a retired key vouches for nothing (whoever held that key could have written it).
    /// Idempotent: an index whose packs an index of this generation already describes is left
    /// alone, so an interrupted rekey is finished by running it again. Indexes written before an
    /// admin was added are left too: that admin cannot read their packs, so the next backup
    /// must store those chunks again. Returns how many indexes were written.
    pub async fn carry_indexes_over(&self, keyring: &Keyring) -> Result<usize> {
        let mut listed = HashSet::new();
        for id in self.snapshot_ids().await? {
            if let Ok(sealed) = self.read_snapshot(&id).await
                && self.config.carried.contains(&sealed.object_hash)
            {
                listed.extend(sealed.header.indexes.into_iter().map(|index| index_key(&index.id)));
            }
        }
        let mut covered = HashSet::new();
        let mut earlier = Vec::new();
        for (key, _) in self.target.list("index").await? {
            match self.open_index(keyring, &key).await {
                Ok((body, proof)) if body.starts_with(index_codec::MAGIC) => {
                    let Ok(file) = index_codec::decode(&body) else { continue };
                    let packs = file.packs.iter().map(|record| record.pack.id.clone());
                    match proof {
                        IndexProof::Head => covered.extend(packs),
                        IndexProof::Earlier(config) if listed.contains(&key) => {
                            earlier.push((body, config, packs.collect::<Vec<_>>()));
                        }
                        // Vouched for by nothing, or written before format 7.
                        IndexProof::Earlier(_) | IndexProof::None => {}
                    }
                }
                // Junk, another repository's, or unreadable here: nothing to carry.
                Ok(_) | Err(_) => {}
            }
        }
        let readers_kept = |config: &str| {
            self.chain.iter().any(|(hash, written_under)| {
                hash == config && self.config.recipients.iter().all(|r| written_under.recipients.contains(r))
            })
        };
        let recipients = self.metadata_recipients();
        let mut written = 0;
        for (mut body, config, packs) in earlier {
            if packs.iter().all(|pack| covered.contains(pack)) || !readers_kept(&config) {
                continue;
            }
            let mac = keyring.index_mac_key().mac_bytes(&[&body]);
            body.extend_from_slice(mac.as_bytes());
            let ciphertext = Bytes::from(crypto::encrypt(&recipients, &body));
            self.target.put_new(&index_key(&ObjectId::of(&ciphertext)), ciphertext).await?;
            covered.extend(packs);
            written += 1;
        }
        Ok(written)
    }

    /// An index object's plaintext, its MAC checked and cut off (format 7) before anything but
    /// its magic and version is looked at, and what the MAC proved.
    async fn open_index(&self, keyring: &Keyring, key: &str) -> Result<(Vec<u8>, IndexProof)> {
        open_index_object(keyring, key, &self.target.get_at_most(key, MAX_INDEX_BYTES).await?)
    }
}

/// Decodes an index object read already (see [`Repository::read_index`]).
/// `repository_version` is the format the repository was made in: only one made in format 2
/// or 3 holds indexes of JSON.
fn decode_index(
    keyring: &Keyring,
    key: &str,
    ciphertext: &[u8],
    repository_version: u32,
) -> Result<(IndexFile, IndexProof)> {
    let (plaintext, proof) = open_index_object(keyring, key, ciphertext)?;
    let file: IndexFile = if plaintext.starts_with(index_codec::MAGIC) {
        index_codec::decode(&plaintext).map_err(|reason| Error::corrupt(key, format!("bad index: {reason}")))?
    } else if repository_version < BINARY_INDEX_VERSION {
        // Formats 2 and 3: zstd-compressed JSON, decoded no larger than any they wrote
        // (`decode_json`).
        decode_json(key, &plaintext)?
    } else {
        // Anything else, decompressed, could be any size (the recipients are public).
        return Err(Error::corrupt(key, "not an index of this repository's format"));
    };
    // Written with the format version of the build; a later format may mean entries this
    // build would misread.
    if file.version > FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            what: key.to_string(),
            found: file.version,
            oldest: super::OLDEST_FORMAT_VERSION,
            supported: FORMAT_VERSION,
            advice: crate::error::format_advice(file.version, FORMAT_VERSION),
        });
    }
    Ok((file, proof))
}

/// Checks an index object's name, decrypts it and, from format 7 on, authenticates it.
fn open_index_object(keyring: &Keyring, key: &str, ciphertext: &[u8]) -> Result<(Vec<u8>, IndexProof)> {
    let mut plaintext = {
        check_object_name(key, ciphertext)?;
        keyring.decrypt(key, ciphertext)?
    };
    let mut proof = IndexProof::None;
    if plaintext.starts_with(index_codec::MAGIC) {
        let version = crate::varint::get(&plaintext[index_codec::MAGIC.len()..]).map_or(0, |(version, _)| version);
        if version >= u64::from(AUTHENTICATED_VERSION) {
            // Authenticate before parsing: only the magic and version were looked at.
            let body =
                plaintext.len().checked_sub(blake3::OUT_LEN).ok_or_else(|| Error::corrupt(key, "truncated index"))?;
            let mac = blake3::Hash::from_bytes(plaintext[body..].try_into().expect("the last 32 bytes"));
            if keyring.index_mac_key().mac_bytes(&[&plaintext[..body]]) == mac {
                proof = IndexProof::Head;
            } else if let Some(config) = keyring.past_index_config(&[&plaintext[..body]], mac) {
                proof = IndexProof::Earlier(config);
            } else {
                return Err(Error::corrupt(key, "its MAC does not match (not written with this repository's key)"));
            }
            // Written under an earlier generation: good for the snapshots that list it
            // (their headers prove it), passed over where an index must prove itself.
            plaintext.truncate(body);
        }
    }
    Ok((plaintext, proof))
}
