//! Reading chunks back: fetch a pack once, decrypt it (proving it intact), hand out proven chunks.
//!
//! A reader has one or more sources (targets with their indexes), tried in order: a chunk
//! whose pack is missing or damaged on one target is read from the next, and the reader counts
//! which target served what. A small cache keeps the last few decrypted packs, because a
//! table's chunks usually sit side by side; concurrent requests for one pack share a download.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::compress::DecompressionDictionary;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::repo::{self, ChunkIndex, ChunkLocation, Keyring, Manifest, ObjectRef};
use crate::target::Target;

/// Chunks decoded together (about 256 KiB at the default chunk size), at least: one hop to a
/// blocking thread per run. A run goes on to the end of its last chunk's frame (frames hold
/// up to 512 KiB), so a run of a full backup is usually one whole frame.
pub const RUN: usize = 32;

/// Chunks whose frame is at most this many bytes compressed are decoded on the async task.
const INLINE_DECODE_BYTES: u32 = 4096;

type PackCell = Arc<OnceCell<Arc<Vec<u8>>>>;
/// (source number, pack id): a decrypted pack of one target.
type PackKey = (usize, String);
/// Cached packs and their insertion order, for eviction.
type PackCache = (HashMap<PackKey, PackCell>, VecDeque<PackKey>);

/// One place chunks can come from.
pub struct Source {
    /// The target.
    pub target: Target,
    /// What it holds.
    pub index: Arc<ChunkIndex>,
    served: AtomicUsize,
}

impl Source {
    /// A target and its (loaded) index.
    pub fn new(target: Target, index: Arc<ChunkIndex>) -> Source {
        Source { target, index, served: AtomicUsize::new(0) }
    }
}

/// How many chunks each source served, and what made the reader fall back.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReadStats {
    /// (target, chunks served), in source order.
    pub served: Vec<(String, usize)>,
    /// One line per fallback: which target failed for which chunk, and why.
    pub fallbacks: Vec<String>,
}

/// Hands out verified chunk plaintexts.
pub struct ChunkReader {
    sources: Vec<Source>,
    keyring: Keyring,
    cache: Mutex<PackCache>,
    capacity: usize,
    fallbacks: Mutex<Vec<String>>,
    dictionaries: Mutex<HashMap<PackKey, DictionaryCell>>,
}

type DictionaryCell = Arc<OnceCell<Arc<DecompressionDictionary>>>;

impl ChunkReader {
    /// A reader over one target.
    pub fn new(target: Target, keyring: Keyring, index: Arc<ChunkIndex>, cached_packs: usize) -> Self {
        ChunkReader::with_sources(vec![Source::new(target, index)], keyring, cached_packs)
    }

    /// A reader trying `sources` in order, keeping up to `cached_packs` decrypted packs in memory.
    pub fn with_sources(sources: Vec<Source>, keyring: Keyring, cached_packs: usize) -> Self {
        ChunkReader {
            sources,
            keyring,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            capacity: cached_packs.max(2),
            fallbacks: Mutex::default(),
            dictionaries: Mutex::default(),
        }
    }

    /// Fails with `Missing` when no source knows the chunk.
    pub fn locate(&self, id: &ChunkId) -> Result<()> {
        if self.sources.iter().any(|s| s.index.contains(id)) {
            return Ok(());
        }
        let locations: Vec<&str> = self.sources.iter().map(|s| s.target.location()).collect();
        Err(Error::Missing { object: format!("chunk {id} (in no index)"), location: locations.join(", ") })
    }

    /// Cuts a stream's chunks into runs of at least [`RUN`] chunks, each ending where a zstd
    /// frame ends (in the first source that has the chunk), so that no frame of several chunks
    /// is decompressed for two runs.
    pub fn runs<'a>(&self, ids: &'a [ChunkId]) -> Vec<&'a [ChunkId]> {
        let frame_of = |id: &ChunkId| {
            self.sources
                .iter()
                .find_map(|s| s.index.get(id))
                .map(|(entry, location)| (&entry.pack.id, location.offset()))
        };
        let mut runs = Vec::with_capacity(ids.len() / RUN + 1);
        let (mut start, mut previous) = (0, None);
        for (at, id) in ids.iter().enumerate() {
            let frame = frame_of(id);
            if at - start >= RUN && (frame.is_none() || frame != previous) {
                runs.push(&ids[start..at]);
                start = at;
            }
            previous = frame;
        }
        if start < ids.len() {
            runs.push(&ids[start..]);
        }
        runs
    }

    /// The proven plaintexts of a run of chunks, concatenated. Decodes them together (one hop
    /// to a blocking thread, not one per chunk); when anything is wrong, reads chunk by chunk,
    /// so every chunk still falls back to the next source on its own.
    pub async fn read_run(&self, ids: &[ChunkId]) -> Result<Vec<u8>> {
        if let Some(plaintext) = self.try_read_run(ids).await {
            return Ok(plaintext);
        }
        let mut plaintext = Vec::new();
        for id in ids {
            plaintext.extend_from_slice(&self.read(id).await?);
        }
        Ok(plaintext)
    }

    async fn try_read_run(&self, ids: &[ChunkId]) -> Option<Vec<u8>> {
        let mut work = Vec::with_capacity(ids.len());
        for id in ids {
            let (number, (entry, location)) =
                self.sources.iter().enumerate().find_map(|(number, s)| s.index.get(id).map(|found| (number, found)))?;
            let dictionary = match entry.dictionary.as_ref() {
                Some(reference) => Some(self.dictionary(number, reference).await.ok()?),
                None => None,
            };
            let plaintext = self.pack(number, &entry.pack).await.ok()?;
            work.push((number, plaintext, location, repo::pack_key(&entry.pack.id), dictionary));
        }
        let key = self.keyring.chunk_id_key();
        let total: usize = work.iter().map(|(_, _, location, ..)| location.raw_length() as usize).sum();
        let decoded = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(total);
            // Consecutive chunks of one pack of one source go together, so that whole frames
            // decompress straight into `out` (repo::open_chunks_onto).
            let mut rest = &work[..];
            while let Some((number, plaintext, _, pack_key, dictionary)) = rest.first() {
                let together = rest.iter().take_while(|(n, _, _, k, _)| n == number && k == pack_key).count();
                let locations: Vec<_> = rest[..together].iter().map(|(_, _, location, ..)| *location).collect();
                repo::open_chunks_onto(&key, plaintext, &locations, pack_key, dictionary.as_deref(), &mut out).ok()?;
                rest = &rest[together..];
            }
            Some((out, work.into_iter().map(|(number, ..)| number).collect::<Vec<_>>()))
        })
        .await
        .expect("chunk decoding does not panic");
        let (plaintext, served) = decoded?;
        for number in served {
            self.sources[number].served.fetch_add(1, Ordering::Relaxed);
        }
        Some(plaintext)
    }

    /// The proven plaintext of one chunk, from the first source that has it intact.
    pub async fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let mut first_error = None;
        for (number, source) in self.sources.iter().enumerate() {
            let Some((entry, location)) = source.index.get(id) else { continue };
            match self.read_from(number, &entry.pack, entry.dictionary.as_ref(), location).await {
                Ok(plaintext) => {
                    source.served.fetch_add(1, Ordering::Relaxed);
                    return Ok(plaintext);
                }
                Err(error) => {
                    if self.sources.len() > 1 {
                        tracing::warn!("{}: chunk {id}: {error}; trying the next target", source.target.location());
                        self.fallbacks
                            .lock()
                            .expect("fallback lock is never poisoned")
                            .push(format!("{}: chunk {id}: {error}", source.target.location()));
                    }
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| Error::Missing {
            object: format!("chunk {id} (in no index)"),
            location: self.sources.iter().map(|s| s.target.location()).collect::<Vec<_>>().join(", "),
        }))
    }

    /// Which source served how many chunks, and the fallbacks taken.
    pub fn stats(&self) -> ReadStats {
        ReadStats {
            served: self
                .sources
                .iter()
                .map(|s| (s.target.location().to_string(), s.served.load(Ordering::Relaxed)))
                .collect(),
            fallbacks: self.fallbacks.lock().expect("fallback lock is never poisoned").clone(),
        }
    }

    async fn read_from(
        &self,
        source: usize,
        pack: &ObjectRef,
        dictionary: Option<&ObjectRef>,
        location: ChunkLocation,
    ) -> Result<Vec<u8>> {
        let dictionary = match dictionary {
            Some(reference) => Some(self.dictionary(source, reference).await?),
            None => None,
        };
        let plaintext = self.pack(source, pack).await?;
        let key = self.keyring.chunk_id_key();
        let pack_key = repo::pack_key(&pack.id);
        if location.length() <= INLINE_DECODE_BYTES && location.start() == 0 {
            // A list chunk (~300 bytes compressed) decodes in microseconds: a hop to a blocking
            // thread would cost more, and thousands of them in a burst made tokio start ~100
            // blocking threads (each keeping its own zstd context), a large part of a
            // restore's peak memory.
            return repo::open_chunk(&key, &plaintext, &location, &pack_key, dictionary.as_deref());
        }
        tokio::task::spawn_blocking(move || {
            repo::open_chunk(&key, &plaintext, &location, &pack_key, dictionary.as_deref())
        })
        .await
        .expect("chunk decoding does not panic")
    }

    /// A compression dictionary of one source (cached; there is one per backup at most).
    async fn dictionary(&self, source: usize, reference: &ObjectRef) -> Result<Arc<DecompressionDictionary>> {
        let cell = self
            .dictionaries
            .lock()
            .expect("dictionary lock is never poisoned")
            .entry((source, reference.id.clone()))
            .or_default()
            .clone();
        let dictionary = cell
            .get_or_try_init(|| async {
                let key = repo::dictionary_key(&reference.id);
                let ciphertext = self.sources[source].target.get(&key).await?;
                repo::check_object_name(&key, &ciphertext)?;
                let bytes = self.keyring.decrypt(&key, &ciphertext)?;
                crate::compress::load_dictionary(&bytes)
                    .map(Arc::new)
                    .ok_or_else(|| Error::corrupt(&key, "is not a zstd dictionary"))
            })
            .await?;
        Ok(dictionary.clone())
    }

    /// The decrypted plaintext of a pack on one source (cached).
    async fn pack(&self, source: usize, pack: &ObjectRef) -> Result<Arc<Vec<u8>>> {
        let cell = {
            let mut guard = self.cache.lock().expect("cache lock is never poisoned");
            let (map, order) = &mut *guard;
            let key = (source, pack.id.clone());
            if let Some(cell) = map.get(&key) {
                cell.clone()
            } else {
                let cell: PackCell = Arc::default();
                map.insert(key.clone(), cell.clone());
                order.push_back(key);
                while order.len() > self.capacity {
                    if let Some(old) = order.pop_front() {
                        map.remove(&old);
                    }
                }
                cell
            }
        };
        let plaintext = cell.get_or_try_init(|| self.load_pack(&self.sources[source].target, pack)).await?;
        Ok(plaintext.clone())
    }

    async fn load_pack(&self, target: &Target, pack: &ObjectRef) -> Result<Arc<Vec<u8>>> {
        let key = repo::pack_key(&pack.id);
        let ciphertext = target.get(&key).await?;
        if ciphertext.len() as u64 != pack.size {
            return Err(Error::corrupt(&key, format!("size is {} bytes, expected {}", ciphertext.len(), pack.size)));
        }
        let keyring = self.keyring.clone();
        tokio::task::spawn_blocking(move || match keyring.decrypt(&key, &ciphertext) {
            // age authenticates the header and every 64 KiB of the payload, and the size is
            // checked above: a pack that decrypts is intact, and each chunk is proven by its id
            // anyway. Hashing all of it again (~290 MB at scale 1) would only tell a
            // damaged pack from a wrong key when decryption fails.
            Ok(plaintext) => Ok(Arc::new(plaintext)),
            Err(error) => {
                repo::check_object_name(&key, &ciphertext)?;
                Err(error)
            }
        })
        .await
        .expect("pack decryption does not panic")
    }
}

/// Reads a manifest's list chunks (data: an admin identity is needed) and fills in every
/// stream's chunk ids.
pub async fn expand_lists(manifest: &mut Manifest, reader: &ChunkReader) -> Result<()> {
    use futures::StreamExt;
    let manifest_version = manifest.version;
    for stream in manifest.streams_mut() {
        if !(1..=repo::LIST_LEVELS_MAX).contains(&stream.list_levels) {
            return Err(Error::corrupt("snapshot manifest", format!("{} levels of list chunks", stream.list_levels)));
        }
        let mut ids = stream.lists.clone();
        for level in (1..=stream.list_levels).rev() {
            let mut lists =
                futures::stream::iter(ids.iter().map(|id| async move { (id, reader.read(id).await) })).buffered(16);
            let mut next = Vec::new();
            while let Some((id, bytes)) = lists.next().await {
                next.extend(repo::parse_list(&format!("list chunk {id}"), &bytes?, manifest_version)?);
            }
            drop(lists);
            if level > 1 {
                stream.inner_lists.extend_from_slice(&next);
            }
            ids = next;
        }
        stream.chunks = ids;
    }
    Ok(())
}
