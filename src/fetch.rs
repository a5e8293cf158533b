//! Reading chunks back: fetch the frames a read needs, decrypt them (proving them intact), hand
//! out proven chunks.
//!
//! A reader has one or more sources (targets with their indexes), tried in order: a chunk
//! whose pack is missing or damaged on one target is read from the next, and the reader counts
//! which target served what. It reads a pack's frames, not the whole pack: age authenticates
//! every 64 KiB of a payload on its own, so the pieces around a run's frames can be fetched and
//! decrypted alone (a year-old repository's newest snapshot has its chunks spread over thousands
//! of packs it shares with older snapshots). A small cache keeps the last few pieces, and
//! concurrent requests for one piece share a download; each pack's header is kept.

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
/// decoding thread per run. A run goes on to the end of its last chunk's frame (frames hold
/// up to 512 KiB), so a run of a full backup is usually one whole frame.
pub const RUN: usize = 32;

/// Runs a stream reads ahead, at least, when a source is not a local folder: each piece or
/// dictionary it needs is a request there, answered after a round trip, and the cores wait
/// on them. With 20 ms a request, a year-old snapshot's restore took 15.3 s reading `jobs` × 2
/// runs ahead and 8.2 s reading 16 (a single snapshot's: 6.2 s and 4.9 s), its peak memory
/// about the same (BENCHMARKS.md, session 40). Local folders keep `jobs` × 2: there the cores
/// are what a restore waits on.
pub const REMOTE_RUNS_AHEAD: usize = 16;

/// Chunks whose frame is at most this many bytes compressed are decoded on the async task.
const INLINE_DECODE_BYTES: u32 = 4096;

/// Decrypted bytes of a pack: the frames a read needed (or all of it), from `start` on.
pub struct Piece {
    start: u64,
    bytes: Vec<u8>,
}

impl Piece {
    fn bytes(&self) -> repo::PackBytes<'_> {
        repo::PackBytes::part(self.start, &self.bytes)
    }
}

/// A piece's decryption, started once and awaited by every reader of it. It runs as a task of
/// its own: a reader's future that started it may be parked (a stream read ahead that nobody
/// polls) while another reader waits for the piece, which with a cell the first reader had to
/// fill deadlocked a restore of a repository a year old (chunk lists spread over thousands of
/// packs, read through nested read-ahead streams).
type PieceCell =
    futures::future::Shared<futures::future::BoxFuture<'static, std::result::Result<Arc<Piece>, Arc<Error>>>>;
/// (source number, pack id): a pack of one target.
type PackKey = (usize, repo::ObjectId);
/// A pack's plaintext range a cached piece holds (`WHOLE` for all of it), with its pack.
type PieceKey = (PackKey, Range<u64>);
/// The range of a piece that is a whole pack.
const WHOLE: Range<u64> = 0..u64::MAX;
/// Packs' first bytes, through the payload nonce: what decrypting a part needs besides the part.
type Heads = Arc<Mutex<HashMap<PackKey, Arc<Vec<u8>>>>>;

/// A pack at most this large is fetched and decrypted whole when a reader needs any of it: one
/// of age's pieces, which is all a range of it would cost, with its header in the same request.
/// Larger ones are read in pieces. A year of nights leaves the newest snapshot's chunks in about
/// 1,700 packs of ~270 KiB, each one table's night, needed all along that table; read whole
/// (the rule was 512 KiB), they left the cache and came back 3.6 times each, and `restore
/// latest` decrypted 1.16 GB for a 69 MB snapshot; in pieces, 298 MB (BENCHMARKS.md, session 29).
const SMALL_PACK: u64 = crate::crypto::PAYLOAD_CHUNK;

/// Bytes fetched to find where a larger pack's payload starts (its age header takes about 200
/// bytes a recipient); more if that is not enough.
const HEAD_PROBE: u64 = 4096;
/// The longest header believed (age caps nothing; a pack's header names the admins).
const HEAD_MAX: u64 = 1 << 20;
/// Bytes of decrypted pieces a reader keeps for each piece it was asked to keep
/// ([`ChunkReader::with_sources`]).
pub const PIECE_BYTES: u64 = 4 << 20;
/// Pack headers kept at most (a few hundred bytes each).
const HEADS_KEPT: usize = 1 << 14;
/// Pieces fetched at once from local folders, at most. A year-old repository's newest snapshot
/// has its chunks in small frames of every night: a restore then has hundreds of pieces in
/// flight, and each read from a local folder took a blocking thread of its own (82 threads at 70
/// nights where one snapshot needs 18), each with its allocator cache and, once it decoded a
/// frame, its zstd context: most of the memory a year added.
const LOCAL_FETCHES_AT_ONCE: usize = 16;
/// The same from buckets, where a request waits on the network, not on a thread.
const REMOTE_FETCHES_AT_ONCE: usize = 64;

/// Bounds on the work a reader does at once: pieces in flight from each source, and the threads
/// that decrypt and decode.
#[derive(Clone)]
struct Limits {
    fetches: Arc<[tokio::sync::Semaphore]>,
    cores: Arc<Cores>,
}

impl Limits {
    fn new(sources: &[Source]) -> Limits {
        let fetches = sources
            .iter()
            .map(|source| {
                let at_once = if source.target.is_local() { LOCAL_FETCHES_AT_ONCE } else { REMOTE_FETCHES_AT_ONCE };
                tokio::sync::Semaphore::new(at_once)
            })
            .collect();
        Limits { fetches, cores: Arc::new(Cores::start()) }
    }

    /// Waits until one more piece may be fetched from `source`.
    async fn fetch(&self, source: usize) -> tokio::sync::SemaphorePermit<'_> {
        self.fetches[source].acquire().await.expect("the reader's semaphores are never closed")
    }

    /// Runs `work` (decrypting, decompressing, proving) on one of the reader's threads.
    async fn on_core<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        self.cores.run(work).await
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A reader's threads for decrypting and decoding, one per core (eight at most), ending with the
/// reader. tokio's
/// blocking pool starts a thread whenever none is idle the moment a task comes, and a restore of
/// a year-old repository sends it thousands of short ones: it grew past 100 threads, each
/// keeping a zstd context and an unpacking buffer (`compress::decompress`), most of the memory
/// a year of nights added to a restore.
struct Cores {
    /// `None` when no thread could be started: the work goes to tokio's blocking pool.
    work: Option<crossbeam_channel::Sender<Job>>,
}

impl Cores {
    fn start() -> Cores {
        let count = std::thread::available_parallelism().map_or(2, std::num::NonZero::get).min(8);
        let (sender, jobs) = crossbeam_channel::unbounded::<Job>();
        let started = (0..count)
            .filter(|_| {
                let jobs = jobs.clone();
                let thread = std::thread::Builder::new().name("crmvault-decode".into());
                thread.spawn(move || jobs.into_iter().for_each(|job| job())).is_ok()
            })
            .count();
        Cores { work: (started > 0).then_some(sender) }
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let Some(sender) = &self.work else {
            return tokio::task::spawn_blocking(work).await.expect("decrypting and decoding do not panic");
        };
        let (done, result) = tokio::sync::oneshot::channel();
        // A panic is the caller's, as it was on a blocking thread; the thread lives on.
        let job: Job = Box::new(move || {
            let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
        });
        sender.send(job).expect("the decoding threads catch every panic and live as long as their reader");
        match result.await.expect("a decoding thread answers every job it takes") {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// A zstd frame of a pack of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    source: usize,
    pack: u32,
    offset: u64,
}

/// A chunk of a run as it is decoded, out of a frame decompressed before (with its pack's key),
/// or a group of chunks out of their piece ([`Group`]).
enum Part {
    Cached(Arc<Vec<u8>>, String, Found),
    Group(usize),
}

/// Consecutive chunks of a run in one pack of one source, whose frames no run decompressed yet:
/// read as one piece, of `span`.
struct Group {
    source: usize,
    pack: u32,
    key: String,
    span: Range<u64>,
    locations: Vec<ChunkLocation>,
}

impl Group {
    fn holds(&self, f: &Found) -> bool {
        (self.source, self.pack) == (f.source, f.pack)
    }
}

/// Bytes of decompressed frames a reader keeps for their other chunks ([`repo::FrameCache`]).
const FRAMES_KEPT_BYTES: usize = 16 << 20;

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

impl Run {
    /// How many chunks it holds.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
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
    /// One line per reason a target failed (a missing or damaged pack fails all its chunks
    /// alike): the target, why, and for how many chunks the next target was tried.
    pub fallbacks: Vec<String>,
}

/// Chunks a target failed for one reason.
struct Fallback {
    /// `target: why`.
    reason: String,
    /// The first chunk, and how many.
    first: ChunkId,
    chunks: usize,
}

/// Reasons for falling back said as warnings as they happen; the rest are in [`ReadStats`].
const FALLBACKS_WARNED: usize = 5;

/// Every fallback, grouped by reason, in the order the reasons came.
#[derive(Default)]
struct Fallbacks {
    reasons: Vec<Fallback>,
    by_reason: std::collections::HashMap<String, usize>,
}

impl Fallbacks {
    /// Counts a chunk that `reason` made the reader take from the next target, warning of the
    /// first few reasons.
    fn add(&mut self, reason: String, chunk: &ChunkId) {
        if let Some(&at) = self.by_reason.get(&reason) {
            self.reasons[at].chunks += 1;
            return;
        }
        match self.reasons.len() {
            n if n < FALLBACKS_WARNED => {
                tracing::warn!("{reason}; reading chunk {chunk}, and any others it fails, from the next target");
            }
            FALLBACKS_WARNED => tracing::warn!("more chunks fail for other reasons: the restore's report lists them"),
            _ => {}
        }
        self.by_reason.insert(reason.clone(), self.reasons.len());
        self.reasons.push(Fallback { reason, first: *chunk, chunks: 1 });
    }
}

/// Hands out verified chunk plaintexts.
pub struct ChunkReader {
    sources: Vec<Source>,
    keyring: Keyring,
    /// Pieces with the bytes they hold (at most), least recently used first.
    cache: Mutex<VecDeque<(PieceKey, u64, PieceCell)>>,
    /// Bytes the pieces in `cache` may hold.
    budget: u64,
    heads: Heads,
    fallbacks: Mutex<Fallbacks>,
    dictionaries: Mutex<Dictionaries>,
    frames: Arc<repo::FrameCache>,
    limits: Limits,
}

/// Bytes of loaded dictionaries a reader keeps, least recently used first out. Each night's
/// backup trains a dictionary for each table it changed, and a year-old repository's newest
/// snapshot has chunks in frames of every night: kept all, they took about 45 MiB at 120 nights
/// (0.6 thousand dictionaries) and grew with every night. A table's chunks need its own nights'
/// dictionaries only, so this holds those of the tables loaded at once.
const DICTIONARIES_KEPT_BYTES: usize = 48 << 20;

/// The dictionaries a reader loaded or is loading, with when each was last asked for and what
/// it takes once loaded.
#[derive(Default)]
struct Dictionaries {
    cells: HashMap<PackKey, (DictionaryCell, u64, usize)>,
    /// Bytes the loaded ones take.
    held: usize,
    /// Requests so far: the clock of the least-recently-used order.
    clock: u64,
}

impl Dictionaries {
    fn get(&mut self, key: &PackKey) -> Option<DictionaryCell> {
        self.clock += 1;
        let (cell, used, _) = self.cells.get_mut(key)?;
        *used = self.clock;
        Some(cell.clone())
    }

    fn insert(&mut self, key: PackKey, cell: DictionaryCell) {
        self.cells.insert(key, (cell, self.clock, 0));
    }

    /// Notes what a loaded dictionary takes (once), then lets the least recently used go while
    /// the loaded ones take more than [`DICTIONARIES_KEPT_BYTES`] (readers holding one keep it).
    fn loaded(&mut self, key: &PackKey, cell: &DictionaryCell, bytes: usize) {
        match self.cells.get_mut(key) {
            Some((cached, used, size)) if cached.ptr_eq(cell) && *size == 0 => {
                // Used now (a slow load is not the least recently used for having been slow).
                *used = self.clock;
                *size = bytes.max(1);
                self.held += *size;
            }
            _ => return,
        }
        // Loads whose readers all went away before counting them (a run that failed elsewhere).
        for (cached, _, size) in self.cells.values_mut() {
            if *size == 0
                && let Some(Ok(dictionary)) = cached.peek()
            {
                *size = dictionary.memory().max(1);
                self.held += *size;
            }
        }
        while self.held > DICTIONARIES_KEPT_BYTES {
            let oldest = self
                .cells
                .iter()
                .filter(|(_, (_, _, size))| *size > 0)
                .min_by_key(|(_, (_, used, _))| *used)
                .map(|(key, _)| key.clone());
            let Some(oldest) = oldest else { break };
            if let Some((_, _, size)) = self.cells.remove(&oldest) {
                self.held -= size;
            }
        }
    }

    /// Forgets a dictionary that failed to load, so that the next reader tries again.
    fn remove(&mut self, key: &PackKey, cell: &DictionaryCell) {
        if self.cells.get(key).is_some_and(|(cached, ..)| cached.ptr_eq(cell))
            && let Some((_, _, size)) = self.cells.remove(key)
        {
            self.held -= size;
        }
    }
}

type DictionaryCell = futures::future::Shared<
    futures::future::BoxFuture<'static, std::result::Result<Arc<DecompressionDictionary>, Arc<Error>>>,
>;

impl ChunkReader {
    /// A reader over one target.
    pub fn new(target: Target, keyring: Keyring, index: Arc<ChunkIndex>, cached_pieces: usize) -> Self {
        ChunkReader::with_sources(vec![Source::new(target, index)], keyring, cached_pieces)
    }

    /// A reader trying `sources` in order, keeping decrypted pieces of packs in memory (the
    /// frames around a run's chunks, a small pack, or a whole pack that
    /// [`ChunkReader::hold_pack`] got) up to `cached_pieces` × [`PIECE_BYTES`].
    pub fn with_sources(sources: Vec<Source>, keyring: Keyring, cached_pieces: usize) -> Self {
        let limits = Limits::new(&sources);
        ChunkReader {
            sources,
            keyring,
            cache: Mutex::default(),
            budget: PIECE_BYTES * cached_pieces.max(2) as u64,
            heads: Heads::default(),
            fallbacks: Mutex::default(),
            dictionaries: Mutex::default(),
            frames: Arc::new(repo::FrameCache::new(FRAMES_KEPT_BYTES)),
            limits,
        }
    }

    /// How many runs a stream reads ahead with `jobs`: `jobs` × 2, and at least
    /// [`REMOTE_RUNS_AHEAD`] when a source is not a local folder.
    pub fn runs_ahead(&self, jobs: usize) -> usize {
        let ahead = jobs.max(1) * 2;
        if self.sources.iter().all(|source| source.target.is_local()) { ahead } else { ahead.max(REMOTE_RUNS_AHEAD) }
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

    /// Runs of chunks of one pack of the first source, read where `locations` say (in the order
    /// given), not where its index has each chunk: `verify --read-data` proves every copy of a
    /// chunk that two packs hold (one stored again after the other was found damaged, or by
    /// `--rewrite-budget`), which the index knows in one of them only. `None` when the first
    /// source's index does not know the pack.
    pub fn runs_in_pack(&self, pack: &repo::ObjectId, locations: &[ChunkLocation]) -> Option<Vec<Run>> {
        let number = self.sources.first()?.index.number_of_pack(pack)?;
        let (mut runs, mut run, mut previous) = (Vec::new(), Run::default(), None);
        for location in locations {
            let found = Found { source: 0, pack: number, location: *location };
            let frame = Some(found.frame());
            if Self::ends_run(run.ids.len(), frame, previous) {
                runs.push(std::mem::take(&mut run));
            }
            run.ids.push(location.chunk());
            run.found.push(Some(found));
            previous = frame;
        }
        if !run.is_empty() {
            runs.push(run);
        }
        Some(runs)
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

    /// A chunk's length as the first source's index has it (before reading it).
    pub fn raw_length(&self, id: &ChunkId) -> Option<u32> {
        self.find(id).map(|found| found.location.raw_length())
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
    /// to a decoding thread, not one per chunk); when anything is wrong, reads chunk by chunk,
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
        for (id, found) in ids.iter().zip(found) {
            plaintext.extend_from_slice(&self.read_at(id, *found).await?);
        }
        Ok(plaintext)
    }

    async fn try_read_run(&self, found: &[Option<Found>]) -> Option<Vec<u8>> {
        let found: Vec<Found> = found.iter().copied().collect::<Option<_>>()?;
        let pack_key = |f: &Found| repo::pack_key(&self.sources[f.source].index.pack(f.pack).pack.id);
        // Chunks whose frame another run decompressed already need no piece: the frame is
        // taken now, so that the cache may let it go meanwhile. Consecutive other chunks of one
        // pack are a group, read as one piece.
        let mut parts = Vec::with_capacity(found.len());
        let mut groups: Vec<Group> = Vec::new();
        for f in &found {
            let key = pack_key(f);
            if let Some(frame) = self.frames.of(f.source).get(&key, f.location.offset()) {
                parts.push(Part::Cached(frame, key, *f));
                continue;
            }
            let frame = f.location.offset()..f.location.offset() + u64::from(f.location.length());
            match groups.last_mut() {
                Some(group) if matches!(parts.last(), Some(Part::Group(_))) && group.holds(f) => {
                    group.span = group.span.start.min(frame.start)..group.span.end.max(frame.end);
                    group.locations.push(f.location);
                }
                _ => {
                    parts.push(Part::Group(groups.len()));
                    let (source, pack, locations) = (f.source, f.pack, vec![f.location]);
                    groups.push(Group { source, pack, key, span: frame, locations });
                }
            }
        }
        // Every group's dictionary and piece, fetched side by side: from a bucket each is a
        // round trip, and a year-old snapshot's runs need about 1,350 dictionaries.
        let fetched = futures::future::try_join_all(groups.iter().map(|group| async move {
            let entry = self.sources[group.source].index.pack(group.pack);
            let (dictionary, piece) = futures::join!(
                self.dictionary_of(group.source, entry),
                self.piece(group.source, &entry.pack, group.span.clone())
            );
            // Both awaited to their end (a load that failed is then forgotten by its reader),
            // the dictionary's failure said first.
            let dictionary = dictionary?;
            Ok::<_, Error>((piece?, dictionary, entry.packed))
        }))
        .await
        .ok()?;
        let key = self.keyring.chunk_id_key();
        let total: usize = found.iter().map(|f| f.location.raw_length() as usize).sum();
        let frames = self.frames.clone();
        let decoded = self.limits.on_core(move || {
            let mut out = Vec::with_capacity(total);
            for part in &parts {
                match part {
                    Part::Cached(frame, pack_key, f) => {
                        let frames = frames.of(f.source);
                        repo::chunk_of_frame(&key, frame, &f.location, pack_key, frames, &mut out).ok()?;
                    }
                    // Together, so that whole frames decompress straight into `out`
                    // (repo::open_chunks_onto).
                    Part::Group(at) => {
                        let (group, (piece, dictionary, packed)) = (&groups[*at], &fetched[*at]);
                        let coding = FrameCoding { dictionary: dictionary.as_deref(), packed: *packed };
                        let frames = frames.of(group.source);
                        repo::open_chunks_onto(
                            &key,
                            piece.bytes(),
                            &group.locations,
                            &group.key,
                            coding,
                            frames,
                            &mut out,
                        )
                        .ok()?;
                    }
                }
            }
            Some(out)
        });
        let plaintext = decoded.await?;
        for f in &found {
            self.sources[f.source].served.fetch_add(1, Ordering::Relaxed);
        }
        Some(plaintext)
    }

    /// The proven plaintext of one chunk, from the first source that has it intact.
    pub async fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_at(id, None).await
    }

    /// [`ChunkReader::read`], from where `found` says first when a run was located already (in
    /// a pack its index may not name for it: [`ChunkReader::runs_in_pack`]).
    async fn read_at(&self, id: &ChunkId, found: Option<Found>) -> Result<Vec<u8>> {
        let mut first_error = None;
        let first = found.map(|f| f.source);
        let order = first.into_iter().chain((0..self.sources.len()).filter(|number| Some(*number) != first));
        for number in order {
            let source = &self.sources[number];
            let place = match found.filter(|f| f.source == number) {
                Some(f) => Some((source.index.pack(f.pack), f.location)),
                None => source.index.get(id),
            };
            let Some((entry, location)) = place else { continue };
            match self.read_from(number, entry, location).await {
                Ok(plaintext) => {
                    source.served.fetch_add(1, Ordering::Relaxed);
                    return Ok(plaintext);
                }
                Err(error) => {
                    if self.sources.len() > 1 {
                        // Said once per reason: a pack missing from one copy is thousands of
                        // chunks, each read from the next.
                        let reason = format!("{}: {error}", source.target.location());
                        self.fallbacks.lock().expect("fallback lock is never poisoned").add(reason, id);
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
            fallbacks: (self.fallbacks.lock().expect("fallback lock is never poisoned").reasons.iter())
                .map(|fallback| match fallback.chunks {
                    1 => format!("{}: chunk {}", fallback.reason, fallback.first),
                    n => format!("{}: {n} chunks, the first {}", fallback.reason, fallback.first),
                })
                .collect(),
        }
    }

    async fn read_from(&self, source: usize, entry: &PackEntry, location: ChunkLocation) -> Result<Vec<u8>> {
        let (pack, packed) = (&entry.pack, entry.packed);
        let frame = location.offset()..location.offset() + u64::from(location.length());
        // Both awaited to their end (a load that failed is then forgotten by its reader, not
        // left for the next one), the dictionary's failure said first, as before.
        let (dictionary, piece) = futures::join!(self.dictionary_of(source, entry), self.piece(source, pack, frame));
        let (dictionary, piece) = (dictionary?, piece?);
        let key = self.keyring.chunk_id_key();
        let pack_key = repo::pack_key(&pack.id);
        if location.length() <= INLINE_DECODE_BYTES && location.start() == 0 {
            // A list chunk (~300 bytes compressed) decodes in microseconds: a hop to a decoding
            // thread would cost more than the work.
            let coding = FrameCoding { dictionary: dictionary.as_deref(), packed };
            return repo::open_chunk(&key, piece.bytes(), &location, &pack_key, coding, self.frames.of(source));
        }
        let frames = self.frames.clone();
        self.limits
            .on_core(move || {
                let coding = FrameCoding { dictionary: dictionary.as_deref(), packed };
                repo::open_chunk(&key, piece.bytes(), &location, &pack_key, coding, frames.of(source))
            })
            .await
    }

    /// The dictionary a pack's frames were compressed with, if any ([`ChunkReader::dictionary`]).
    async fn dictionary_of(&self, source: usize, entry: &PackEntry) -> Result<Option<Arc<DecompressionDictionary>>> {
        match entry.dictionary.as_ref() {
            Some(reference) => self.dictionary(source, reference).await.map(Some),
            None => Ok(None),
        }
    }

    /// A compression dictionary of one source (cached, up to [`DICTIONARIES_KEPT_BYTES`]).
    async fn dictionary(&self, source: usize, reference: &ObjectRef) -> Result<Arc<DecompressionDictionary>> {
        let key = (source, reference.id.clone());
        // A task of its own, shared by every reader, for the reason `PackCell` says.
        let cell = {
            let mut guard = self.dictionaries.lock().expect("dictionary lock is never poisoned");
            if let Some(cell) = guard.get(&key) {
                cell
            } else {
                let (target, keyring, id, size) =
                    (self.sources[source].target.clone(), self.keyring.clone(), reference.id.clone(), reference.size);
                let limits = self.limits.clone();
                let task = tokio::spawn(async move {
                    let key = repo::dictionary_key(&id);
                    let load = async {
                        let ciphertext = {
                            let _fetch = limits.fetch(source).await;
                            // No more than the index says (a planted 4 GiB object is refused unread).
                            target.get_at_most(&key, size).await?
                        };
                        limits
                            .on_core(move || {
                                repo::check_object_name(&key, &ciphertext)?;
                                let bytes = keyring.decrypt(&key, &ciphertext)?;
                                crate::compress::load_dictionary(&bytes)
                                    .map(Arc::new)
                                    .ok_or_else(|| Error::corrupt(&key, "is not a zstd dictionary"))
                            })
                            .await
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
                guard.insert(key.clone(), cell.clone());
                cell
            }
        };
        let loaded = cell.clone().await;
        let mut guard = self.dictionaries.lock().expect("dictionary lock is never poisoned");
        match loaded {
            Ok(dictionary) => {
                guard.loaded(&key, &cell, dictionary.memory());
                Ok(dictionary)
            }
            Err(error) => {
                guard.remove(&key, &cell);
                Err(error.duplicate())
            }
        }
    }

    /// The decrypted bytes `span` of a pack on one source, in a piece that may hold more
    /// (cached): all of a small pack, else `span` rounded out to age's 64 KiB pieces, which are
    /// fetched and decrypted whole anyway.
    async fn piece(&self, source: usize, pack: &ObjectRef, span: Range<u64>) -> Result<Arc<Piece>> {
        let span = if pack.size <= SMALL_PACK {
            WHOLE
        } else {
            let piece = crate::crypto::PAYLOAD_CHUNK;
            span.start / piece * piece..span.end.div_ceil(piece).saturating_mul(piece)
        };
        let cell = self.piece_cell(source, pack, span, None);
        match cell.clone().await {
            Ok(piece) => Ok(piece),
            Err(error) => {
                // Not kept: the next reader tries again.
                let mut cache = self.cache.lock().expect("cache lock is never poisoned");
                cache.retain(|(_, _, cached)| !cached.ptr_eq(&cell));
                Err(error.duplicate())
            }
        }
    }

    /// The cache's place for the piece of a pack of a source that holds `span`: one that does
    /// already (now the most recently used), or a new one, started here, of those bytes (of all
    /// of `ciphertext` when the caller has it already).
    fn piece_cell(
        &self,
        source: usize,
        pack: &ObjectRef,
        span: Range<u64>,
        ciphertext: Option<bytes::Bytes>,
    ) -> PieceCell {
        let mut cache = self.cache.lock().expect("cache lock is never poisoned");
        let pack_key = (source, pack.id.clone());
        let holds = |((key, range), ..): &(PieceKey, u64, PieceCell)| {
            *key == pack_key && range.start <= span.start && span.end <= range.end
        };
        if let Some(at) = cache.iter().rposition(holds) {
            let used = cache.remove(at).expect("found at `at`");
            let cell = used.2.clone();
            cache.push_back(used);
            return cell;
        }
        let (target, keyring, reference) = (self.sources[source].target.clone(), self.keyring.clone(), pack.clone());
        let (heads, range) = (self.heads.clone(), if ciphertext.is_some() { WHOLE } else { span.clone() });
        let limits = self.limits.clone();
        let task = tokio::spawn(async move {
            let load = async {
                if let Some(ciphertext) = ciphertext {
                    load_pack(&limits, &keyring, &reference, ciphertext).await
                } else {
                    let _fetch = limits.fetch(source).await;
                    load_piece(&limits, &target, &keyring, (&heads, source), &reference, span).await
                }
            };
            load.await.map(Arc::new).map_err(Arc::new)
        });
        let cell: PieceCell = async move {
            task.await.unwrap_or_else(|error| Err(Arc::new(Error::Internal(format!("pack load task: {error}")))))
        }
        .boxed()
        .shared();
        let bytes = (range.end - range.start).min(pack.size);
        cache.push_back(((pack_key, range), bytes, cell.clone()));
        let mut held: u64 = cache.iter().map(|(_, bytes, _)| bytes).sum();
        // The newest piece stays, whatever its size.
        while held > self.budget && cache.len() > 1 {
            held -= cache.pop_front().map_or(0, |(_, bytes, _)| bytes);
        }
        cell
    }

    /// Decrypts a pack of the first source that the caller has downloaded already into the
    /// cache, so that reading its chunks next does not download it again (`verify` checks
    /// each pack's hash and then its chunks).
    pub async fn hold_pack(&self, pack: &ObjectRef, ciphertext: bytes::Bytes) -> Result<()> {
        // Already there (read by someone else meanwhile): the same plaintext.
        self.piece_cell(0, pack, WHOLE, Some(ciphertext)).await.map(drop).map_err(|error| error.duplicate())
    }
}

/// Decrypts a whole pack the caller has downloaded.
async fn load_pack(limits: &Limits, keyring: &Keyring, pack: &ObjectRef, ciphertext: bytes::Bytes) -> Result<Piece> {
    let key = repo::pack_key(&pack.id);
    if ciphertext.len() as u64 != pack.size {
        return Err(Error::corrupt(&key, format!("size is {} bytes, expected {}", ciphertext.len(), pack.size)));
    }
    let keyring = keyring.clone();
    limits
        .on_core(move || match keyring.decrypt(&key, &ciphertext) {
            Ok(bytes) => Ok(Piece { start: 0, bytes }),
            Err(error) => {
                repo::check_object_name(&key, &ciphertext)?;
                Err(error)
            }
        })
        .await
}

/// Fetches and decrypts the bytes `span` of a pack's plaintext: the whole pack the first time
/// a small one is read (keeping its header), else its header (once) and the 64 KiB pieces of
/// ciphertext around `span`. age authenticates each piece with its place in the payload, and
/// each chunk is proven by its keyed id anyway: bytes that decrypt are the ones written.
async fn load_piece(
    limits: &Limits,
    target: &Target,
    keyring: &Keyring,
    (heads, source): (&Heads, usize),
    pack: &ObjectRef,
    span: Range<u64>,
) -> Result<Piece> {
    let key = repo::pack_key(&pack.id);
    let known = heads.lock().expect("head lock is never poisoned").get(&(source, pack.id.clone())).cloned();
    let (head, body_offset, body) = match known {
        Some(head) => {
            let range = crate::crypto::ciphertext_range(head.len() as u64, &span, pack.size);
            let body = target.get_range(&key, range.clone()).await?;
            (head, range.start, body)
        }
        None if pack.size <= SMALL_PACK => {
            // What storage serves is not believed about its size: no more than the index says.
            let all = target.get_at_most(&key, pack.size).await?;
            if all.len() as u64 != pack.size {
                return Err(Error::corrupt(&key, format!("size is {} bytes, expected {}", all.len(), pack.size)));
            }
            let start = payload_start(&key, &all)?.ok_or_else(|| Error::corrupt(&key, "its header does not end"))?;
            let head = Arc::new(all[..start].to_vec());
            remember_head(heads, source, pack, head.clone());
            (head, 0, all)
        }
        None => {
            // A span in the first piece comes in the same read as the header, which takes less
            // than HEAD_PROBE bytes: a year-old snapshot first reads nearly every pack there
            // (1,614 of 1,730 at 365 nights), and each read was two.
            let mut probe = if span.start == 0 {
                crate::crypto::ciphertext_range(HEAD_PROBE, &span, pack.size).end
            } else {
                HEAD_PROBE
            };
            let (head, prefix) = loop {
                let prefix = target.get_range(&key, 0..probe.min(pack.size)).await?;
                match payload_start(&key, &prefix)? {
                    Some(start) => break (Arc::new(prefix[..start].to_vec()), prefix),
                    None if probe < pack.size && probe < HEAD_MAX => probe = probe.saturating_mul(16),
                    None => return Err(Error::corrupt(&key, "its header does not end")),
                }
            };
            remember_head(heads, source, pack, head.clone());
            let range = crate::crypto::ciphertext_range(head.len() as u64, &span, pack.size);
            let read = prefix.len() as u64;
            let body = match usize::try_from(range.start).ok().zip(usize::try_from(range.end).ok()) {
                Some((start, end)) if range.end <= read => prefix.slice(start..end),
                // A longer header (many admins): what was read of the span, and the rest.
                Some((start, _)) if range.start < read => {
                    let rest = target.get_range(&key, read..range.end).await?;
                    let mut body = Vec::with_capacity(prefix.len() - start + rest.len());
                    body.extend_from_slice(&prefix[start..]);
                    body.extend_from_slice(&rest);
                    bytes::Bytes::from(body)
                }
                _ => target.get_range(&key, range.clone()).await?,
            };
            (head, range.start, body)
        }
    };
    let (keyring, len) = (keyring.clone(), pack.size);
    limits
        .on_core(move || match keyring.decrypt_range(&key, (&head, body_offset, &body), len, span.clone()) {
            Ok(bytes) => Ok(Piece { start: span.start, bytes }),
            Err(error) => {
                if body_offset == 0 && body.len() as u64 == len {
                    // The whole pack is at hand: its name tells damage from a pack put in its place.
                    repo::check_object_name(&key, &body)?;
                }
                Err(error)
            }
        })
        .await
}

/// Where a pack's payload starts, from its first bytes (`None`: they do not tell yet).
fn payload_start(key: &str, prefix: &[u8]) -> Result<Option<usize>> {
    crate::crypto::payload_start(prefix).map_err(|detail| Error::corrupt(key, detail))
}

/// Keeps a pack's header for its next reads (forgetting them all when there are many).
fn remember_head(heads: &Heads, source: usize, pack: &ObjectRef, head: Arc<Vec<u8>>) {
    let mut heads = heads.lock().expect("head lock is never poisoned");
    if heads.len() >= HEADS_KEPT {
        heads.clear();
    }
    heads.insert((source, pack.id.clone()), head);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cell() -> DictionaryCell {
        let failed: std::result::Result<Arc<DecompressionDictionary>, Arc<Error>> =
            Err(Arc::new(Error::Internal("not loaded in this test".into())));
        futures::future::ready(failed).boxed().shared()
    }

    fn key(number: u8) -> PackKey {
        (0, repo::ObjectId::of(&[number]))
    }

    #[test]
    fn the_dictionaries_kept_stay_within_their_budget_and_the_recently_used_stay() {
        const MIB: usize = 1 << 20;
        let mut kept = Dictionaries::default();
        let (first, first_cell) = (key(0), cell());
        kept.insert(first.clone(), first_cell.clone());
        kept.loaded(&first, &first_cell, MIB);
        // A year of nights: far more dictionaries than the budget holds, the first one asked
        // for again and again, as a table's chunks in frames of one night are.
        for number in 1..=100 {
            let (next, next_cell) = (key(number), cell());
            kept.insert(next.clone(), next_cell.clone());
            kept.loaded(&next, &next_cell, MIB);
            assert!(kept.get(&first).is_some_and(|cached| cached.ptr_eq(&first_cell)), "dictionary {number}");
            assert!(kept.held <= DICTIONARIES_KEPT_BYTES, "{} bytes held", kept.held);
        }
        assert_eq!(kept.held, DICTIONARIES_KEPT_BYTES);
        assert!(kept.get(&key(1)).is_none(), "the least recently used went first");
        assert!(kept.get(&key(100)).is_some());
        // Loaded again by a reader that raced another: counted once.
        let again = kept.get(&key(100)).expect("kept");
        kept.loaded(&key(100), &again, MIB);
        assert_eq!(kept.held, DICTIONARIES_KEPT_BYTES);
        // One that failed goes, so that the next reader tries again; its bytes with it.
        let failed = kept.get(&key(100)).expect("kept");
        kept.remove(&key(100), &failed);
        assert!(kept.get(&key(100)).is_none());
        assert_eq!(kept.held, DICTIONARIES_KEPT_BYTES - MIB);
        // A cell that is not the cached one (loaded before a retry replaced it) changes nothing.
        kept.remove(&key(99), &cell());
        assert!(kept.get(&key(99)).is_some());
    }
}
