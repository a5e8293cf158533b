//! Reading chunks back: fetch a pack once, decrypt it (proving it intact), hand out proven chunks.
//!
//! A reader has one or more sources (targets with their indexes), tried in order: a chunk
//! whose pack is missing or damaged on one target is read from the next, and the reader counts
//! which target served what. A small cache keeps the last few decrypted packs, because a
//! table's chunks usually sit side by side; concurrent requests for one pack share a download.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};

use crate::compress::{DecompressionDictionary, FrameCoding};
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::repo::{
    self, ChunkIndex, ChunkLocation, Keyring, Manifest, ObjectRef, PackEntry, StreamManifest, chunk_index,
};
use crate::target::Target;

/// Chunks decoded together (about 256 KiB at the default chunk size), at least: one hop to a
/// blocking thread per run. A run goes on to the end of its last chunk's frame (frames hold
/// up to 512 KiB), so a run of a full backup is usually one whole frame.
pub const RUN: usize = 32;

/// Chunks whose frame is at most this many bytes compressed are decoded on the async task.
const INLINE_DECODE_BYTES: u32 = 4096;

/// A pack's decryption, started once and awaited by every reader of the pack. It runs as a
/// task of its own: a reader's future that started it may be parked (a stream read ahead that
/// nobody polls) while another reader waits for the pack, which with a cell the first reader
/// had to fill deadlocked a restore of a repository a year old (chunk lists spread over
/// thousands of packs, read through nested read-ahead streams).
type PackCell =
    futures::future::Shared<futures::future::BoxFuture<'static, std::result::Result<Arc<Vec<u8>>, Arc<Error>>>>;
/// (source number, pack id): a decrypted pack of one target.
type PackKey = (usize, repo::ObjectId);
/// Cached packs and their insertion order, for eviction.
type PackCache = (HashMap<PackKey, PackCell>, VecDeque<PackKey>);

/// A zstd frame of a pack of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    source: usize,
    pack: u32,
    offset: u64,
}

/// Where a source keeps a chunk.
#[derive(Debug, Clone, Copy)]
struct Found {
    source: usize,
    pack: u32,
    location: ChunkLocation,
}

impl Found {
    fn frame(self) -> Frame {
        Frame { source: self.source, pack: self.pack, offset: self.location.offset() }
    }
}

/// Consecutive chunks of a stream read together, with where each is
/// ([`ChunkReader::stream_runs`]).
#[derive(Debug, Default)]
pub struct Run {
    ids: Vec<ChunkId>,
    found: Vec<Option<Found>>,
}

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

type DictionaryCell = futures::future::Shared<
    futures::future::BoxFuture<'static, std::result::Result<Arc<DecompressionDictionary>, Arc<Error>>>,
>;

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

    /// The error for a chunk no source knows.
    fn missing(&self, id: &ChunkId) -> Error {
        let locations: Vec<&str> = self.sources.iter().map(|s| s.target.location()).collect();
        Error::Missing { object: format!("chunk {id} (in no index)"), location: locations.join(", ") }
    }

    /// Cuts a stream's chunks into runs of at least [`RUN`] chunks, each ending where a zstd
    /// frame ends (in the first source that has the chunk), so that no frame of several chunks
    /// is decompressed for two runs.
    pub fn runs<'a>(&self, ids: &'a [ChunkId]) -> Vec<&'a [ChunkId]> {
        let mut runs = Vec::with_capacity(ids.len() / RUN + 1);
        let (mut start, mut previous) = (0, None);
        for (at, id) in ids.iter().enumerate() {
            let frame = self.frame_of(id);
            if Self::ends_run(at - start, frame, previous) {
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

    /// [`ChunkReader::runs`] of a stream of chunks found already, as they come (for
    /// [`ChunkReader::read_located`]).
    fn stream_runs<'a>(
        chunks: impl Stream<Item = Result<(ChunkId, Found)>> + Unpin + 'a,
    ) -> impl Stream<Item = Result<Run>> + 'a {
        let state = (chunks, Run::default(), None, false);
        futures::stream::unfold(state, move |(mut chunks, mut run, mut previous, done)| async move {
            if done {
                return None;
            }
            while let Some(chunk) = chunks.next().await {
                let (id, found) = match chunk {
                    Ok(chunk) => chunk,
                    Err(error) => return Some((Err(error), (chunks, Run::default(), None, true))),
                };
                let frame = Some(found.frame());
                let ended = Self::ends_run(run.ids.len(), frame, previous).then(|| std::mem::take(&mut run));
                run.ids.push(id);
                run.found.push(Some(found));
                previous = frame;
                if let Some(ended) = ended {
                    return Some((Ok(ended), (chunks, run, previous, false)));
                }
            }
            (!run.ids.is_empty()).then(|| (Ok(run), (chunks, Run::default(), None, true)))
        })
    }

    /// Where the first source that has a chunk keeps it.
    fn find(&self, id: &ChunkId) -> Option<Found> {
        self.sources
            .iter()
            .enumerate()
            .find_map(|(source, s)| s.index.find(id).map(|(pack, location)| Found { source, pack, location }))
    }

    /// The pack and offset of a chunk's frame, in the first source that has it.
    fn frame_of(&self, id: &ChunkId) -> Option<Frame> {
        self.find(id).map(Found::frame)
    }

    /// Whether a chunk in `frame` after `count` chunks in `previous` starts a new run.
    fn ends_run(count: usize, frame: Option<Frame>, previous: Option<Frame>) -> bool {
        count >= RUN && (frame.is_none() || frame != previous)
    }

    /// The proven plaintexts of a run of chunks, concatenated. Decodes them together (one hop
    /// to a blocking thread, not one per chunk); when anything is wrong, reads chunk by chunk,
    /// so every chunk still falls back to the next source on its own.
    pub async fn read_run(&self, ids: &[ChunkId]) -> Result<Vec<u8>> {
        let found: Vec<Option<Found>> = ids.iter().map(|id| self.find(id)).collect();
        self.read_found(ids, &found).await
    }

    /// [`ChunkReader::read_run`] of a run from [`ChunkReader::stream_runs`].
    pub async fn read_located(&self, run: &Run) -> Result<Vec<u8>> {
        self.read_found(&run.ids, &run.found).await
    }

    async fn read_found(&self, ids: &[ChunkId], found: &[Option<Found>]) -> Result<Vec<u8>> {
        if let Some(plaintext) = self.try_read_run(found).await {
            return Ok(plaintext);
        }
        let mut plaintext = Vec::new();
        for id in ids {
            plaintext.extend_from_slice(&self.read(id).await?);
        }
        Ok(plaintext)
    }

    async fn try_read_run(&self, found: &[Option<Found>]) -> Option<Vec<u8>> {
        let mut work = Vec::with_capacity(found.len());
        for &found in found {
            let Found { source: number, pack, location } = found?;
            let entry = self.sources[number].index.pack(pack);
            let dictionary = match entry.dictionary.as_ref() {
                Some(reference) => Some(self.dictionary(number, reference).await.ok()?),
                None => None,
            };
            let plaintext = self.pack(number, &entry.pack).await.ok()?;
            work.push((number, plaintext, location, repo::pack_key(&entry.pack.id), (dictionary, entry.packed)));
        }
        let key = self.keyring.chunk_id_key();
        let total: usize = work.iter().map(|(_, _, location, ..)| location.raw_length() as usize).sum();
        let decoded = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(total);
            // Consecutive chunks of one pack of one source go together, so that whole frames
            // decompress straight into `out` (repo::open_chunks_onto).
            let mut rest = &work[..];
            while let Some((number, plaintext, _, pack_key, (dictionary, packed))) = rest.first() {
                let together = rest.iter().take_while(|(n, _, _, k, _)| n == number && k == pack_key).count();
                let locations: Vec<_> = rest[..together].iter().map(|(_, _, location, ..)| *location).collect();
                let coding = FrameCoding { dictionary: dictionary.as_deref(), packed: *packed };
                repo::open_chunks_onto(&key, plaintext, &locations, pack_key, coding, &mut out).ok()?;
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
            match self.read_from(number, entry, location).await {
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

    async fn read_from(&self, source: usize, entry: &PackEntry, location: ChunkLocation) -> Result<Vec<u8>> {
        let (pack, packed) = (&entry.pack, entry.packed);
        let dictionary = match entry.dictionary.as_ref() {
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
            let coding = FrameCoding { dictionary: dictionary.as_deref(), packed };
            return repo::open_chunk(&key, &plaintext, &location, &pack_key, coding);
        }
        tokio::task::spawn_blocking(move || {
            let coding = FrameCoding { dictionary: dictionary.as_deref(), packed };
            repo::open_chunk(&key, &plaintext, &location, &pack_key, coding)
        })
        .await
        .expect("chunk decoding does not panic")
    }

    /// A compression dictionary of one source (cached; there is one per backup at most).
    async fn dictionary(&self, source: usize, reference: &ObjectRef) -> Result<Arc<DecompressionDictionary>> {
        // A task of its own, shared by every reader, for the reason `PackCell` says.
        let cell = {
            let mut guard = self.dictionaries.lock().expect("dictionary lock is never poisoned");
            let key = (source, reference.id.clone());
            if let Some(cell) = guard.get(&key) {
                cell.clone()
            } else {
                let (target, keyring, id) =
                    (self.sources[source].target.clone(), self.keyring.clone(), reference.id.clone());
                let task = tokio::spawn(async move {
                    let key = repo::dictionary_key(&id);
                    let load = async {
                        let ciphertext = target.get(&key).await?;
                        repo::check_object_name(&key, &ciphertext)?;
                        let bytes = keyring.decrypt(&key, &ciphertext)?;
                        crate::compress::load_dictionary(&bytes)
                            .map(Arc::new)
                            .ok_or_else(|| Error::corrupt(&key, "is not a zstd dictionary"))
                    };
                    load.await.map_err(Arc::new)
                });
                let cell: DictionaryCell = async move {
                    task.await.unwrap_or_else(|error| {
                        Err(Arc::new(Error::Internal(format!("dictionary load task: {error}"))))
                    })
                }
                .boxed()
                .shared();
                guard.insert(key, cell.clone());
                cell
            }
        };
        match cell.clone().await {
            Ok(dictionary) => Ok(dictionary),
            Err(error) => {
                let mut guard = self.dictionaries.lock().expect("dictionary lock is never poisoned");
                let key = (source, reference.id.clone());
                if guard.get(&key).is_some_and(|cached| cached.ptr_eq(&cell)) {
                    guard.remove(&key);
                }
                Err(error.duplicate())
            }
        }
    }

    /// The decrypted plaintext of a pack on one source (cached).
    async fn pack(&self, source: usize, pack: &ObjectRef) -> Result<Arc<Vec<u8>>> {
        let cell = self.pack_cell(source, pack, None);
        match cell.clone().await {
            Ok(plaintext) => Ok(plaintext),
            Err(error) => {
                // Not kept: the next reader tries again.
                let mut guard = self.cache.lock().expect("cache lock is never poisoned");
                let key = (source, pack.id.clone());
                if guard.0.get(&key).is_some_and(|cached| cached.ptr_eq(&cell)) {
                    guard.0.remove(&key);
                    guard.1.retain(|k| *k != key);
                }
                Err(error.duplicate())
            }
        }
    }

    /// The cache's place for a pack of a source, the newest in the cache: its decryption,
    /// started here if it was not (from `ciphertext` when the caller has it already).
    fn pack_cell(&self, source: usize, pack: &ObjectRef, ciphertext: Option<bytes::Bytes>) -> PackCell {
        let mut guard = self.cache.lock().expect("cache lock is never poisoned");
        let (map, order) = &mut *guard;
        let key = (source, pack.id.clone());
        if let Some(cell) = map.get(&key) {
            return cell.clone();
        }
        let (target, keyring, reference) = (self.sources[source].target.clone(), self.keyring.clone(), pack.clone());
        let task =
            tokio::spawn(async move { load_pack(&target, &keyring, &reference, ciphertext).await.map_err(Arc::new) });
        let cell: PackCell = async move {
            task.await.unwrap_or_else(|error| Err(Arc::new(Error::Internal(format!("pack load task: {error}")))))
        }
        .boxed()
        .shared();
        map.insert(key.clone(), cell.clone());
        order.push_back(key);
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        cell
    }

    /// Decrypts a pack of the first source that the caller has downloaded already into the
    /// cache, so that reading its chunks next does not download it again (`verify` checks
    /// each pack's hash and then its chunks).
    pub async fn hold_pack(&self, pack: &ObjectRef, ciphertext: bytes::Bytes) -> Result<()> {
        // Already there (read by someone else meanwhile): the same plaintext.
        self.pack_cell(0, pack, Some(ciphertext)).await.map(drop).map_err(|error| error.duplicate())
    }
}

/// Downloads (unless given) and decrypts a pack.
async fn load_pack(
    target: &Target,
    keyring: &Keyring,
    pack: &ObjectRef,
    ciphertext: Option<bytes::Bytes>,
) -> Result<Arc<Vec<u8>>> {
    let key = repo::pack_key(&pack.id);
    let ciphertext = match ciphertext {
        Some(ciphertext) => ciphertext,
        None => target.get(&key).await?,
    };
    if ciphertext.len() as u64 != pack.size {
        return Err(Error::corrupt(&key, format!("size is {} bytes, expected {}", ciphertext.len(), pack.size)));
    }
    let keyring = keyring.clone();
    tokio::task::spawn_blocking(move || match keyring.decrypt(&key, &ciphertext) {
        // age authenticates the header and every 64 KiB of the payload, and the size is checked
        // above: a pack that decrypts is intact, and each chunk is proven by its id anyway.
        // Hashing all of it again (~290 MB at scale 1) would only tell a damaged pack from a
        // wrong key when decryption fails.
        Ok(plaintext) => Ok(Arc::new(plaintext)),
        Err(error) => {
            repo::check_object_name(&key, &ciphertext)?;
            Err(error)
        }
    })
    .await
    .expect("pack decryption does not panic")
}

/// List chunks read ahead while a stream's ids are expanded.
const LISTS_AHEAD: usize = 16;

/// The ids a list chunk holds.
async fn read_list(reader: &ChunkReader, id: &ChunkId, manifest_version: u32) -> Result<Vec<ChunkId>> {
    repo::parse_list(&format!("list chunk {id}"), &reader.read(id).await?, manifest_version)
}

fn check_levels(stream: &StreamManifest) -> Result<()> {
    if !(1..=repo::LIST_LEVELS_MAX).contains(&stream.list_levels) {
        return Err(Error::corrupt("snapshot manifest", format!("{} levels of list chunks", stream.list_levels)));
    }
    Ok(())
}

/// Reads a manifest's list chunks (data: an admin identity is needed) and fills in every
/// stream's chunk ids.
pub async fn expand_lists(manifest: &mut Manifest, reader: &ChunkReader) -> Result<()> {
    let manifest_version = manifest.version;
    for stream in manifest.streams_mut() {
        check_levels(stream)?;
        let mut ids = stream.lists.clone();
        for level in (1..=stream.list_levels).rev() {
            let mut lists = futures::stream::iter(ids.iter().map(|id| read_list(reader, id, manifest_version)))
                .buffered(LISTS_AHEAD);
            let mut next = Vec::new();
            while let Some(list) = lists.next().await {
                next.extend(list?);
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

/// A stream's chunk ids, in order, read from its list chunks as they are needed (at most
/// [`LISTS_AHEAD`] list chunks a level at once), so that a stream of any length takes the same
/// memory.
pub fn stream_chunk_ids<'a>(
    reader: &'a ChunkReader,
    stream: &'a StreamManifest,
    manifest_version: u32,
) -> BoxStream<'a, Result<ChunkId>> {
    if let Err(error) = check_levels(stream) {
        return futures::stream::once(async { Err(error) }).boxed();
    }
    let mut ids = futures::stream::iter(stream.lists.iter().copied().map(Ok)).boxed();
    for _ in 0..stream.list_levels {
        ids = ids
            .map(move |id| async move { read_list(reader, &id?, manifest_version).await })
            .buffered(LISTS_AHEAD)
            .map_ok(|list| futures::stream::iter(list.into_iter().map(Ok)))
            .try_flatten()
            .boxed();
    }
    ids
}

/// A stream's chunks, each with where it is, written to an unlinked temporary file and read
/// back in order. A restore expands every stream's lists once, finding every chunk before it
/// touches the database, and keeps what it found here instead of in memory; loading then looks
/// nothing up again.
pub struct ChunkSpool {
    file: std::fs::File,
    /// Chunks written.
    len: u64,
}

/// Bytes of a chunk in a [`ChunkSpool`]: the source's number, then the chunk's entry as an
/// index on disk holds it.
const SPOOLED_BYTES: usize = 4 + chunk_index::ENTRY_BYTES;

/// Chunks read back from a [`ChunkSpool`] at a time (176 KiB).
const SPOOL_BLOCK: usize = 4096;

fn spool_error(error: std::io::Error) -> Error {
    repo::temporary_file_error("chunk lists", error)
}

fn encode_spooled(found: &Found) -> [u8; SPOOLED_BYTES] {
    let mut bytes = [0; SPOOLED_BYTES];
    let source = u32::try_from(found.source).expect("fewer than 4 billion targets");
    bytes[..4].copy_from_slice(&source.to_le_bytes());
    chunk_index::encode_location(found.pack, &found.location, &mut bytes[4..]);
    bytes
}

fn decode_spooled(bytes: &[u8]) -> (ChunkId, Found) {
    let source = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let (pack, location) = chunk_index::decode_location(&bytes[4..]);
    (location.chunk(), Found { source, pack, location })
}

impl ChunkSpool {
    /// An empty spool, in `TMPDIR`.
    pub fn new() -> Result<ChunkSpool> {
        Ok(ChunkSpool { file: tempfile::tempfile().map_err(spool_error)?, len: 0 })
    }

    /// Writes the chunks of `ids` at the end, each with where the first of `reader`'s sources
    /// that has it keeps it; fails (`Missing`) on a chunk none has. Returns where they are, for
    /// [`ChunkSpool::runs`].
    pub async fn write(
        &mut self,
        reader: &ChunkReader,
        ids: impl Stream<Item = Result<ChunkId>>,
    ) -> Result<Range<u64>> {
        use std::io::Write;
        let start = self.len;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, &self.file);
        futures::pin_mut!(ids);
        while let Some(id) = ids.next().await {
            let id = id?;
            let found = reader.find(&id).ok_or_else(|| reader.missing(&id))?;
            out.write_all(&encode_spooled(&found)).map_err(spool_error)?;
            self.len += 1;
        }
        out.flush().map_err(spool_error)?;
        Ok(start..self.len)
    }

    /// The chunks written at `range`, in order, in runs ([`ChunkReader::runs`]) for
    /// [`ChunkReader::read_located`].
    pub fn runs(&self, range: Range<u64>) -> impl Stream<Item = Result<Run>> + '_ {
        use std::os::unix::fs::FileExt;
        let blocks = (range.start..range.end).step_by(SPOOL_BLOCK).map(move |at| {
            let count = usize::try_from((range.end - at).min(SPOOL_BLOCK as u64)).expect("a block fits");
            let mut bytes = vec![0; count * SPOOLED_BYTES];
            self.file.read_exact_at(&mut bytes, at * SPOOLED_BYTES as u64).map_err(spool_error)?;
            Ok::<_, Error>(bytes.chunks_exact(SPOOLED_BYTES).map(|chunk| Ok(decode_spooled(chunk))).collect::<Vec<_>>())
        });
        ChunkReader::stream_runs(futures::stream::iter(blocks).map_ok(futures::stream::iter).try_flatten())
    }
}
