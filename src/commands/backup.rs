//! `backup`: read every table inside one snapshot, store only new chunks, commit a snapshot
//! on every target.
//!
//! Stages, joined by bounded channels so memory stays flat:
//! table readers (async, one connection each, sharing the exported snapshot)
//! → encoders (blocking threads: chunk, keyed hash, dedup per target, zstd once)
//! → one pack writer per target (seal with age, upload, at most two uploads in flight).
//! Then, per target, the index of its new packs, then its snapshot object: the commit.
//!
//! The database is read once whatever the number of targets. A target that fails (unreachable,
//! credentials refused, disk full) is dropped from the run without stopping the others, and
//! is left without a snapshot; the report says which targets hold the new snapshot.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

/// Bytes of COPY data handed to an encoder at once.
const COPY_BATCH: usize = 256 * 1024;
use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::chunk::{ChunkParams, Chunker};
use crate::compress::{ChunkCompressor, CompressionDictionary, DictionarySize, FrameDictionary, bytea};
use crate::crypto::{ChunkId, ChunkIdKey, MacKey};
use crate::error::{Error, Result};
use crate::repo::{
    self, ChunkIndex, ChunkSet, IndexFile, Keyring, ListCutter, Manifest, ObjectRef, PackRecord, PackWriter,
    Repository, SealedManifest, SnapshotHeader, StreamManifest, TableManifest,
};
use crate::source::{self, Database, Section, SnapshotSession, SourceTable};
use crate::trust::SnapshotMark;

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The source database.
    pub database: Database,
    /// Parallel table readers.
    pub jobs: usize,
    /// `schema.table` globs to include (all when empty).
    pub include: Vec<String>,
    /// `schema.table` globs to leave out.
    pub exclude: Vec<String>,
    /// pg_dump to use (found automatically when `None`).
    pub pg_dump: Option<PathBuf>,
    /// Name of this host, recorded in the manifest.
    pub hostname: String,
    /// New chunks per index file ([`INDEX_CHUNKS`] unless tuning or testing), and per
    /// generation of the chunks a backup remembers sending ([`SentChunks`]).
    pub index_chunks: usize,
    /// Entries of a target's index kept in memory; past that the index is a temporary file
    /// ([`repo::INDEX_IN_MEMORY`] unless testing).
    pub index_in_memory: usize,
    /// The newest snapshot this host wrote or authenticated (its pin's high-water mark): the
    /// new snapshot follows it even if storage lost it, and its absence is reported.
    pub newest_known: Option<SnapshotMark>,
}

/// Called with the number of bytes just read from the database.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// What a backup did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupReport {
    /// The new snapshot (the same id on every target).
    pub snapshot_id: String,
    /// Database time of the snapshot.
    pub time: chrono::DateTime<chrono::Utc>,
    /// Tables backed up.
    pub tables: usize,
    /// Rows backed up.
    pub rows: u64,
    /// Bytes of COPY data and schema read.
    pub bytes_read: u64,
    /// Chunks referenced.
    pub chunks: usize,
    /// Chunks that were new to at least one target (compressed once).
    pub new_chunks: usize,
    /// Bytes written to all targets (packs, indexes, snapshots).
    pub bytes_added: u64,
    /// Bytes of all objects the snapshot references, on the first target that holds it.
    pub bytes_total: u64,
    /// Its place in the repository's chain: the predecessor it names and its sequence number.
    pub parent: Option<String>,
    /// Sequence number (one more than the parent's).
    pub sequence: u64,
    /// What the backup noticed about the repository and stored anyway (each also logged).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// One entry per target, in the order given.
    pub targets: Vec<TargetReport>,
}

impl BackupReport {
    /// The new snapshot's place in the chain, for the high-water mark.
    pub fn mark(&self) -> SnapshotMark {
        SnapshotMark { id: self.snapshot_id.clone(), sequence: self.sequence, time: self.time }
    }

    /// Targets that did not receive the snapshot.
    pub fn failed_targets(&self) -> usize {
        self.targets.iter().filter(|t| t.error.is_some()).count()
    }
}

/// What happened on one target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetReport {
    /// The target.
    pub location: String,
    /// True when the snapshot is committed there.
    pub ok: bool,
    /// Why not, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Chunks this target lacked.
    pub new_chunks: usize,
    /// Bytes written to it.
    pub bytes_added: u64,
    /// Bytes of all objects the snapshot references there.
    pub bytes_total: u64,
}

/// A compressed frame of chunks on its way to the packs of the targets that lack them.
struct NewFrame {
    /// Its chunks, in order: id and plaintext length.
    chunks: Vec<(ChunkId, u32)>,
    compressed: Vec<u8>,
    dictionary: Option<ObjectRef>,
}

/// One target as the encoders see it.
struct TargetSink {
    /// Chunks the target holds or is being sent in this backup.
    known: Arc<KnownChunks>,
    packs: mpsc::Sender<Arc<NewFrame>>,
    alive: AtomicBool,
}

/// Shared by all encoders of one backup.
#[derive(Clone)]
struct EncoderContext {
    seed: [u8; 32],
    params: ChunkParams,
    chunk_id_key: ChunkIdKey,
    mac_key: MacKey,
    targets: Arc<Vec<TargetSink>>,
    compressor: crossbeam_channel::Sender<RawFrame>,
    /// zstd level of the repository.
    level: i32,
    /// Who may read data (dictionaries are data).
    recipients: Arc<Vec<age::x25519::Recipient>>,
    /// Every dictionary this backup trained, as stored (its zstd tables go with its stream).
    dictionaries: Arc<Mutex<Vec<StoredDictionary>>>,
    /// Bytes compressed at [`STRONG_LEVEL`] so far.
    strong_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Counts for the report and the log.
    tally: Arc<Tally>,
}

/// What the encoders of one backup counted.
#[derive(Default)]
struct Tally {
    /// Chunks the snapshot references, data and lists, each time it references them.
    chunks: AtomicUsize,
    /// Bytes of list chunks, and of those some target lacked.
    list_bytes: AtomicU64,
    new_list_bytes: AtomicU64,
}

/// A chunk some target lacks.
struct RawChunk {
    id: ChunkId,
    plaintext: Vec<u8>,
    /// Indexes (into `EncoderContext::targets`) of the targets that lack it.
    lacking: Vec<usize>,
    /// Compress at [`STRONG_LEVEL`].
    strong: bool,
    /// The chunk before it in the stream was new too (sent to a target).
    follows: bool,
}

/// Consecutive new chunks of one stream, for the same targets, on their way to a compressor
/// to become one zstd frame.
struct RawFrame {
    /// Id and length of each chunk, in order.
    chunks: Vec<(ChunkId, u32)>,
    /// Their plaintexts, concatenated.
    plaintext: Vec<u8>,
    /// Indexes (into `EncoderContext::targets`) of the targets that lack them.
    lacking: Vec<usize>,
    /// Its table's dictionary, when the table trained one.
    dictionary: Option<Arc<TrainedDictionary>>,
    /// Compress at [`STRONG_LEVEL`].
    strong: bool,
}

/// The plaintext a frame of consecutive new chunks grows to (the last chunk may take it
/// past). One frame per 8 KiB chunk came out 5% larger than the stream compressed whole and
/// 30% slower to compress; frames of 256 KiB, with the table's dictionary, are 3.5% smaller
/// and compress 30% faster, and 512 KiB another 1.5% smaller at the same speed (scale 1,
/// BENCHMARKS.md). Up to six times the dictionary's size zstd keeps the dictionary's own small
/// tables and widens only the window; 1 MiB frames (0.5% smaller still) cross that line, get
/// level 3's full tables and a dictionary loaded anew for every frame, and cost a full backup
/// 10% more CPU. A restore that needs one chunk of an old frame decompresses all of it, which
/// is why only chunks that were neighbours in the stream share a frame: a scattered update
/// stays a frame of its own.
const FRAME_BYTES: usize = 512 * 1024;

/// A dictionary this backup trained, encrypted once for every target.
struct TrainedDictionary {
    stored: StoredDictionary,
    /// Its bytes, from which each compressor makes its tables.
    bytes: Vec<u8>,
    /// For [`STRONG_LEVEL`], made when first needed: its tables take about 12 MiB, and a
    /// full backup rarely needs them.
    strong: std::sync::OnceLock<Option<CompressionDictionary>>,
}

/// A trained dictionary as it goes to storage.
#[derive(Clone)]
struct StoredDictionary {
    reference: ObjectRef,
    ciphertext: Bytes,
}

/// The zstd level for the new chunks of a stream that is mostly unchanged (an increment):
/// level 9 is 10-15% smaller than level 3 on 8 KiB CRM chunks at a fifth of the speed, and 12
/// another 1.9% smaller on a CRM day for 9% more time of that backup (0.4 s at scale 1), which
/// only a small amount of new data can afford.
const STRONG_LEVEL: i32 = 12;
/// A stream compresses its new chunks at [`STRONG_LEVEL`] while they are at most this
/// fraction (1 / n) of what it has read so far ...
const STRONG_WHEN_NEW_IS_AT_MOST_ONE_IN: u64 = 4;
/// ... and while the whole backup has compressed less than this at that level (so that a big
/// change in an otherwise quiet database still runs at the usual speed).
const STRONG_BUDGET: u64 = 256 << 20;

/// Bytes of a table's first new chunks its dictionary is trained on before any is compressed.
const TRAINING_BYTES: usize = 8 << 20;

/// Compression runs on its own threads, one per core, fed by every table's encoder: a big
/// table's chunker is then never waiting on zstd, and zstd uses every core while it can.
struct Compressors {
    threads: Vec<std::thread::JoinHandle<()>>,
    compressed_chunks: Arc<std::sync::atomic::AtomicUsize>,
}

impl Compressors {
    fn start(level: i32, targets: &Arc<Vec<TargetSink>>) -> (Compressors, crossbeam_channel::Sender<RawFrame>) {
        let (sender, work) = crossbeam_channel::bounded::<RawFrame>(8);
        let compressed_chunks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let threads = (0..count)
            .map(|_| {
                let (work, targets, compressed_chunks) = (work.clone(), targets.clone(), compressed_chunks.clone());
                std::thread::spawn(move || {
                    let mut zstd = ChunkCompressor::default();
                    let mut laid_out = FrameDictionaries::default();
                    let mut text = Vec::new();
                    for raw in work {
                        text.clear();
                        bytea::pack(&raw.plaintext, &mut text);
                        let strong_level = STRONG_LEVEL.max(level);
                        let compressed = match &raw.dictionary {
                            Some(d) if raw.strong => {
                                match d.strong.get_or_init(|| CompressionDictionary::new(&d.bytes, strong_level)) {
                                    Some(strong) => zstd.compress(&text, strong_level, Some(strong)),
                                    None => laid_out.get(d, level).compress(&mut zstd, &text),
                                }
                            }
                            Some(d) => laid_out.get(d, level).compress(&mut zstd, &text),
                            None => zstd.compress(&text, if raw.strong { strong_level } else { level }, None),
                        };
                        compressed_chunks.fetch_add(raw.chunks.len(), Ordering::Relaxed);
                        let frame = Arc::new(NewFrame {
                            chunks: raw.chunks,
                            compressed,
                            dictionary: raw.dictionary.as_ref().map(|d| d.stored.reference.clone()),
                        });
                        for index in raw.lacking {
                            let target = &targets[index];
                            // A closed channel means that target's writer failed; the others go on.
                            if target.packs.blocking_send(frame.clone()).is_err() {
                                target.alive.store(false, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        (Compressors { threads, compressed_chunks }, sender)
    }

    /// Waits for the queue to drain (every sender dropped): the number of chunks compressed.
    async fn finish(self) -> usize {
        let Compressors { threads, compressed_chunks } = self;
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                thread.join().expect("compressors do not panic");
            }
        })
        .await
        .expect("joining compressors does not panic");
        compressed_chunks.load(Ordering::Relaxed)
    }
}

/// A compressor thread's dictionaries laid out for frames ([`FrameDictionary`]), for the few
/// tables being read at a time, most recently used first.
#[derive(Default)]
struct FrameDictionaries {
    recent: Vec<(Arc<TrainedDictionary>, FrameDictionary)>,
}

impl FrameDictionaries {
    /// How many are kept: one per table being read (`--jobs`, usually 2), and some to spare.
    const KEPT: usize = 4;

    fn get(&mut self, dictionary: &Arc<TrainedDictionary>, level: i32) -> &mut FrameDictionary {
        if let Some(at) = self.recent.iter().position(|(known, _)| Arc::ptr_eq(known, dictionary)) {
            let entry = self.recent.remove(at);
            self.recent.insert(0, entry);
        } else {
            let laid_out = FrameDictionary::new(&dictionary.bytes, level, FRAME_BYTES)
                .expect("a dictionary and a frame fit memory");
            self.recent.insert(0, (dictionary.clone(), laid_out));
            self.recent.truncate(Self::KEPT);
        }
        &mut self.recent[0].1
    }
}

/// Trains a table's dictionary on the chunks held back, and encrypts it for the admins.
fn train_dictionary(
    samples: &[RawChunk],
    level: i32,
    recipients: &[age::x25519::Recipient],
) -> Option<Arc<TrainedDictionary>> {
    // Chunks held back to be compressed at the strong level are an increment's.
    let size =
        if samples.last().is_some_and(|raw| raw.strong) { DictionarySize::Increment } else { DictionarySize::Full };
    let samples: Vec<&[u8]> = samples.iter().map(|raw| raw.plaintext.as_slice()).collect();
    let bytes = crate::compress::train(&samples, level, size)?;
    let ciphertext = crate::crypto::encrypt(recipients, &crate::compress::store_dictionary(&bytes));
    let reference = ObjectRef { id: crate::crypto::object_hash(&ciphertext), size: ciphertext.len() as u64 };
    let stored = StoredDictionary { reference, ciphertext: Bytes::from(ciphertext) };
    Some(Arc::new(TrainedDictionary { stored, bytes, strong: std::sync::OnceLock::new() }))
}

/// A stream's dictionary: not decided yet (new chunks are held back), or decided.
enum Dictionary {
    Undecided,
    Decided(Option<Arc<TrainedDictionary>>),
}

/// Turns one byte stream into chunks, storing the new ones. Runs on a blocking thread.
struct StreamEncoder {
    chunker: Chunker,
    sink: ChunkSink,
}

/// A stream's first level of list chunks, cut while the stream is read.
struct ListSink {
    cutter: ListCutter,
    sink: ChunkSink,
}

/// Where an encoder's chunks go: named, deduplicated, compressed, sent to the pack writer.
///
/// A stream's first new chunks are held back until there are enough to train the stream's
/// own dictionary (tables differ too much for one to serve all), then all go out with it.
///
/// A data stream's ids go straight into its first level of list chunks, which are stored as
/// they are cut: the backup holds a sixteenth of a stream's ids, not all of them.
struct ChunkSink {
    context: EncoderContext,
    /// The first level of list chunks of a data stream; `None` in a sink of list chunks,
    /// which keeps its ids in `manifest.chunks` for the level above.
    lists: Option<Box<ListSink>>,
    digest: blake3::Hasher,
    manifest: StreamManifest,
    rows: u64,
    /// Whether the stream's dictionary is decided, and which.
    dictionary: Dictionary,
    held: Vec<RawChunk>,
    held_bytes: usize,
    /// New chunks gathered into a frame, not yet sent.
    frame: Option<RawFrame>,
    /// Size at which a frame is sent ([`FRAME_BYTES`]; 0: one frame per chunk).
    frame_bytes: usize,
    /// Whether the last chunk stored was new.
    previous_new: bool,
    /// Bytes of all its chunks so far, and of those some target lacked.
    seen_bytes: u64,
    new_bytes: u64,
}

impl StreamEncoder {
    fn new(context: EncoderContext) -> Self {
        let chunker = Chunker::new(&context.seed, context.params);
        let mut sink = ChunkSink::new(context.clone());
        sink.lists = Some(Box::new(ListSink { cutter: ListCutter::default(), sink: ChunkSink::for_lists(context) }));
        StreamEncoder { chunker, sink }
    }

    fn push(&mut self, data: &[u8]) -> Result<()> {
        self.sink.digest.update(data);
        self.sink.manifest.bytes += data.len() as u64;
        // In COPY text format every literal newline ends a row.
        self.sink.rows += memchr::memchr_iter(b'\n', data).count() as u64;
        self.chunker.push(data, &mut |chunk| self.sink.store(chunk));
        self.sink.check()
    }

    fn finish(self) -> Result<(StreamManifest, u64)> {
        let StreamEncoder { chunker, mut sink } = self;
        chunker.finish(&mut |chunk| sink.store(chunk));
        sink.decide_dictionary();
        sink.flush();
        sink.check()?;
        sink.manifest.digest = sink.digest.finalize().to_hex().to_string();
        let ListSink { cutter, sink: mut lists } = *sink.lists.take().expect("a data stream cuts lists");
        if let Some(last) = cutter.finish() {
            lists.store(last);
        }
        lists.finish_lists()?;
        // Each level above is stored like data, too.
        let context = sink.context.clone();
        repo::build_upper_lists(&mut sink.manifest, lists.manifest.chunks, |pieces| {
            let mut upper = ChunkSink::for_lists(context.clone());
            for piece in pieces {
                upper.store(piece);
            }
            upper.finish_lists()?;
            Ok(upper.manifest.chunks)
        })?;
        Ok((sink.manifest, sink.rows))
    }
}

impl ChunkSink {
    fn new(context: EncoderContext) -> Self {
        ChunkSink {
            digest: context.mac_key.hasher(),
            manifest: StreamManifest::default(),
            rows: 0,
            dictionary: Dictionary::Undecided,
            held: Vec::new(),
            held_bytes: 0,
            frame: None,
            frame_bytes: FRAME_BYTES,
            previous_new: false,
            seen_bytes: 0,
            new_bytes: 0,
            lists: None,
            context,
        }
    }

    /// A sink of list chunks: ids are random bytes, so there is no dictionary to train and
    /// nothing for a frame to share; and a list chunk is read on its own.
    fn for_lists(context: EncoderContext) -> Self {
        let mut sink = ChunkSink::new(context);
        sink.dictionary = Dictionary::Decided(None);
        sink.frame_bytes = 0;
        sink
    }

    /// Ends a sink of list chunks, counting its bytes.
    fn finish_lists(&mut self) -> Result<()> {
        self.flush();
        self.check()?;
        self.context.tally.list_bytes.fetch_add(self.seen_bytes, Ordering::Relaxed);
        self.context.tally.new_list_bytes.fetch_add(self.new_bytes, Ordering::Relaxed);
        Ok(())
    }

    fn store(&mut self, chunk: Vec<u8>) {
        let id = self.context.chunk_id_key.id_of(&chunk);
        self.context.tally.chunks.fetch_add(1, Ordering::Relaxed);
        match &mut self.lists {
            Some(lists) => {
                if let Some(list) = lists.cutter.push(&id) {
                    lists.sink.store(list);
                }
            }
            None => self.manifest.chunks.push(id),
        }
        let lacking: Vec<usize> = (0..self.context.targets.len())
            .filter(|&i| {
                let target = &self.context.targets[i];
                target.alive.load(Ordering::Relaxed) && target.known.claim(id)
            })
            .collect();
        let length = chunk.len() as u64;
        self.seen_bytes += length;
        let follows = std::mem::replace(&mut self.previous_new, !lacking.is_empty());
        if lacking.is_empty() {
            return;
        }
        self.new_bytes += length;
        let strong = self.new_bytes * STRONG_WHEN_NEW_IS_AT_MOST_ONE_IN <= self.seen_bytes
            && self.context.strong_bytes.fetch_add(length, Ordering::Relaxed) + length <= STRONG_BUDGET;
        let raw = RawChunk { id, plaintext: chunk, lacking, strong, follows };
        if let Dictionary::Decided(dictionary) = &self.dictionary {
            self.add_to_frame(raw, dictionary.clone());
        } else {
            self.held_bytes += raw.plaintext.len();
            self.held.push(raw);
            if self.held_bytes >= TRAINING_BYTES {
                self.decide_dictionary();
            }
        }
    }

    /// Trains the stream's dictionary on the chunks held so far (none when they are too few),
    /// and lets them go.
    fn decide_dictionary(&mut self) {
        if let Dictionary::Decided(_) = self.dictionary {
            return;
        }
        let started = std::time::Instant::now();
        let trained = train_dictionary(&self.held, self.context.level, &self.context.recipients);
        if let Some(trained) = &trained {
            tracing::debug!(
                bytes = trained.stored.reference.size,
                samples = self.held_bytes,
                seconds = started.elapsed().as_secs_f32(),
                "dictionary trained"
            );
            self.context
                .dictionaries
                .lock()
                .expect("dictionary list lock is never poisoned")
                .push(trained.stored.clone());
        }
        for raw in std::mem::take(&mut self.held) {
            self.add_to_frame(raw, trained.clone());
        }
        self.dictionary = Dictionary::Decided(trained);
    }

    /// Adds a new chunk to the frame being gathered, or starts the next frame with it when it
    /// did not follow the frame's last chunk in the stream, goes elsewhere, or does not fit.
    fn add_to_frame(&mut self, raw: RawChunk, dictionary: Option<Arc<TrainedDictionary>>) {
        let length = u32::try_from(raw.plaintext.len()).expect("a chunk is < 4 GiB");
        let fits = self.frame.as_ref().is_some_and(|frame| {
            raw.follows
                && frame.lacking == raw.lacking
                && frame.strong == raw.strong
                && frame.plaintext.len() + raw.plaintext.len() <= self.frame_bytes
        });
        if !fits {
            self.flush();
        }
        if let Some(frame) = &mut self.frame {
            frame.plaintext.extend_from_slice(&raw.plaintext);
            frame.chunks.push((raw.id, length));
        } else {
            let mut plaintext = raw.plaintext;
            plaintext.reserve(self.frame_bytes.saturating_sub(plaintext.len()));
            self.frame = Some(RawFrame {
                chunks: vec![(raw.id, length)],
                plaintext,
                lacking: raw.lacking,
                dictionary,
                strong: raw.strong,
            });
        }
        if self.frame.as_ref().is_some_and(|frame| frame.plaintext.len() >= self.frame_bytes) {
            self.flush();
        }
    }

    /// Sends the frame being gathered to the compressors.
    fn flush(&mut self) {
        if let Some(frame) = self.frame.take() {
            // Only fails when every compressor is gone, which `check` reports.
            let _ = self.context.compressor.send(frame);
        }
    }

    fn check(&self) -> Result<()> {
        if !self.context.targets.iter().any(|t| t.alive.load(Ordering::Relaxed)) {
            return Err(Error::Invalid("every target failed".into()));
        }
        Ok(())
    }
}

/// The chunks a target holds: those its indexes know of whose pack is present with the
/// right size. Looked up in the index itself; a copy of its ids as a hash set took more memory
/// than the index.
#[derive(Default)]
struct HeldChunks {
    /// Every chunk the target's indexes know of.
    index: ChunkIndex,
    /// Packs present in storage, with their sizes.
    present_packs: HashMap<String, u64>,
}

impl HeldChunks {
    /// The number of the pack ([`ChunkIndex::pack`]) of a chunk the target holds, when that
    /// pack is present with the right size.
    fn reusable(&self, id: &ChunkId) -> Option<u32> {
        self.index.pack_number(id).filter(|&number| {
            let entry = self.index.pack(number);
            self.present_packs.get(&entry.pack.id) == Some(&entry.pack.size)
        })
    }
}

/// The chunks this backup sent to one target, as far back as two generations of
/// [`INDEX_CHUNKS`] ids (65 536 chunks, 512 MiB of table data at the default chunk size, about
/// 3 MB; the whole set took 45 bytes a new chunk, 22 MB in a full backup at scale 3): a full
/// backup's memory no longer grows with the database.
///
/// Forgetting is safe in this direction only: a chunk taken for unsent is sent once more (a
/// second copy in another pack, which the index and readers take in their stride, keeping the
/// first), never the other way round. Within one backup a chunk recurs almost only close to
/// where it first appeared (runs of identical rows); what the target held before the backup is
/// looked up in its index, which forgets nothing.
struct SentChunks {
    current: ChunkSet,
    previous: ChunkSet,
    generation: usize,
}

impl SentChunks {
    fn new(generation: usize) -> Self {
        SentChunks { current: ChunkSet::default(), previous: ChunkSet::default(), generation: generation.max(1) }
    }

    /// Adds `id`; false when it was sent within the last one or two generations.
    fn insert(&mut self, id: ChunkId) -> bool {
        if self.previous.contains(&id) || !self.current.insert(id) {
            return false;
        }
        if self.current.len() >= self.generation {
            self.previous = std::mem::take(&mut self.current);
        }
        true
    }
}

/// Chunks a target holds or is being sent in this backup.
struct KnownChunks {
    held: Arc<HeldChunks>,
    /// Sent in this backup, recently.
    sent: Mutex<SentChunks>,
    /// For each pack of `held` (by number), whether this snapshot uses a chunk of it: the
    /// snapshot object names those packs, and the backup keeps no list of every chunk id.
    reused: Vec<AtomicBool>,
}

impl KnownChunks {
    fn new(held: Arc<HeldChunks>, generation: usize) -> Self {
        let reused = (0..held.index.pack_count()).map(|_| AtomicBool::new(false)).collect();
        KnownChunks { held, sent: Mutex::new(SentChunks::new(generation)), reused }
    }

    /// Whether the chunk must be sent to the target; if so, it counts as sent from now on.
    /// Otherwise the target holds it, and its pack counts as used by the snapshot.
    fn claim(&self, id: ChunkId) -> bool {
        if let Some(pack) = self.held.reusable(&id) {
            self.reused[pack as usize].store(true, Ordering::Relaxed);
            return false;
        }
        self.sent.lock().expect("known-chunk lock is never poisoned").insert(id)
    }

    /// The packs of `held` the snapshot uses, by number.
    fn reused_packs(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..).zip(&self.reused).filter(|(_, used)| used.load(Ordering::Relaxed)).map(|(number, _)| number)
    }
}

/// What one target already holds, and what it is doing in this backup.
struct TargetState<'a> {
    repository: &'a Repository,
    held: Arc<HeldChunks>,
    index_sizes: HashMap<String, u64>,
    error: Option<String>,
}

impl<'a> TargetState<'a> {
    /// Learns which chunks a target holds: those whose pack is present with the right size.
    async fn survey(repository: &'a Repository, keyring: &Keyring, in_memory: usize) -> Result<TargetState<'a>> {
        let (index, failures) = repository.load_index_lenient(keyring, None, None, in_memory).await?;
        // An index that cannot be read or authenticated (junk, damage, a storage writer's) is
        // passed over: the chunks it describes count as absent and are stored again.
        for (key, error) in failures {
            tracing::warn!("{}: {key} skipped: {error}", repository.target.location());
        }
        // Packs `verify` found damaged are not reused: their chunks are stored again.
        let damaged: HashSet<String> = repository
            .target
            .list("damaged")
            .await?
            .into_iter()
            .filter_map(|(key, _)| key.strip_prefix("damaged/").map(str::to_string))
            .collect();
        let present_packs: HashMap<String, u64> = repository
            .target
            .list("data")
            .await?
            .into_iter()
            .filter_map(|(key, size)| key.rsplit('/').next().map(|id| (id.to_string(), size)))
            .filter(|(id, _)| !damaged.contains(id))
            .collect();
        let index_sizes: HashMap<String, u64> = repository
            .target
            .list("index")
            .await?
            .into_iter()
            .filter_map(|(key, size)| key.strip_prefix("index/").map(|id| (id.to_string(), size)))
            .collect();
        Ok(TargetState { repository, held: Arc::new(HeldChunks { index, present_packs }), index_sizes, error: None })
    }

    fn failed(repository: &'a Repository, error: &Error) -> TargetState<'a> {
        TargetState { repository, held: Arc::default(), index_sizes: HashMap::new(), error: Some(error.to_string()) }
    }
}

/// Runs a backup of `options.database` into every repository (copies of one repository).
pub async fn run(
    repositories: &[Repository],
    keyring: &Keyring,
    options: &BackupOptions,
    progress: Progress,
) -> Result<BackupReport> {
    let Some(first) = repositories.first() else {
        return Err(Error::Invalid("backup needs at least one --repo".into()));
    };
    if let Some(other) = repositories.iter().find(|r| r.config_hash != first.config_hash) {
        if other.config.id == first.config.id {
            return Err(Error::Invalid(format!(
                "{} is at generation {} of its keys and {} at generation {} (a rekey that did not reach every \
                 target): an admin finishes it with `crmvault rekey` and every --repo",
                first.target.location(),
                first.config.generation,
                other.target.location(),
                other.config.generation
            )));
        }
        return Err(Error::Invalid(format!(
            "{} and {} are not copies of one repository; create targets with one `init` or `init --copy-from`",
            first.target.location(),
            other.target.location()
        )));
    }
    let filter = TableFilter::new(&options.include, &options.exclude)?;

    let mut states = Vec::new();
    for repository in repositories {
        match TargetState::survey(repository, keyring, options.index_in_memory).await {
            Ok(state) => states.push(state),
            Err(error) => {
                tracing::warn!("{}: {error}", repository.target.location());
                states.push(TargetState::failed(repository, &error));
            }
        }
    }
    if states.iter().all(|s| s.error.is_some()) {
        return Err(all_failed(&states));
    }
    let mut warnings = Vec::new();
    let chain = Chain::find(&states, keyring, options.newest_known.as_ref(), &mut warnings).await;

    let session = SnapshotSession::begin(&options.database).await?;
    let pg_dump = source::find_pg_dump(options.pg_dump.as_deref(), session.server_version.1 / 10000)?;
    let tables: Vec<SourceTable> =
        session.tables().await?.into_iter().filter(|t| filter.matches(&t.schema, &t.name)).collect();
    filter.check_foreign_keys(&session.foreign_keys().await?)?;
    let sequences = session.sequences().await?;
    let materialized_views = session.populated_materialized_views().await?;
    tracing::info!(tables = tables.len(), snapshot = %session.snapshot, "reading database {}", options.database);

    let dictionaries: Arc<Mutex<Vec<StoredDictionary>>> = Arc::default();
    let mut sinks = Vec::new();
    let mut writers = Vec::new();
    let mut known_sets = Vec::new();
    for state in &states {
        let known = Arc::new(KnownChunks::new(state.held.clone(), options.index_chunks));
        known_sets.push(known.clone());
        let (sender, receiver) = mpsc::channel::<Arc<NewFrame>>(16);
        let alive = state.error.is_none();
        writers.push(alive.then(|| {
            let writer = PackUploads {
                target: state.repository.target.clone(),
                data_recipients: state.repository.data_recipients(),
                index_sealing: (state.repository.metadata_recipients(), keyring.index_mac_key()),
                pack_size: state.repository.config.pack_size,
                index_chunks: options.index_chunks.max(1),
                dictionaries: dictionaries.clone(),
            };
            tokio::spawn(writer.run(receiver))
        }));
        sinks.push(TargetSink { known, packs: sender, alive: AtomicBool::new(alive) });
    }
    let targets = Arc::new(sinks);
    let (compressors, compressor) = Compressors::start(first.config.compression_level, &targets);
    let context = EncoderContext {
        seed: keyring.chunker_seed(),
        params: first.config.chunking,
        chunk_id_key: keyring.chunk_id_key(),
        mac_key: keyring.mac_key(),
        targets,
        compressor,
        level: first.config.compression_level,
        recipients: Arc::new(first.data_recipients()),
        dictionaries: dictionaries.clone(),
        strong_bytes: Arc::default(),
        tally: Arc::default(),
    };
    let tally = context.tally.clone();

    let read = match read_everything(&session, &pg_dump, options, tables, &context, &progress).await {
        Ok(read) => {
            let manifest = Manifest {
                version: repo::FORMAT_VERSION,
                database: options.database.name(),
                server_version: session.server_version.0.clone(),
                hostname: options.hostname.clone(),
                pre_data: read.pre_data,
                post_data: read.post_data,
                tables: read.tables,
                sequences,
                materialized_views,
                large_objects: read.large_objects,
                admin_only: None,
            };
            Ok((manifest, read.bytes_read))
        }
        Err(error) => Err(error),
    };
    drop(context);
    // The compressors finish the queue, then drop their pack senders, closing the writers' input.
    let compressed_chunks = compressors.finish().await;
    tracing::debug!(
        bytes = tally.list_bytes.load(Ordering::Relaxed),
        new_bytes = tally.new_list_bytes.load(Ordering::Relaxed),
        "chunk-id lists stored"
    );
    // Closing the snapshot transaction: every reader has finished.
    let _ = session.client.batch_execute("COMMIT").await;
    let mut written = Vec::new();
    for writer in writers {
        written.push(match writer {
            Some(handle) => Some(handle.await.expect("pack writers do not panic")),
            None => None,
        });
    }
    let dictionaries = std::mem::take(&mut *dictionaries.lock().expect("dictionary list lock is never poisoned"));
    let (mut manifest, bytes_read) = read?;
    let sealed = SealedManifest::seal(&mut manifest, first);

    // The sets of chunks sent go before the commits, which build each target's index.
    let reused: Vec<Vec<u32>> = known_sets.into_iter().map(|known| known.reused_packs().collect()).collect();
    let mut targets = Vec::new();
    for ((state, written), reused) in states.iter_mut().zip(written).zip(reused) {
        let outcome = match (written, &state.error) {
            (Some(Ok(stored)), None) => {
                commit(state, stored, reused, &sealed, &dictionaries, keyring, (session.time, &chain)).await
            }
            (Some(Err(error)), _) => Err(error),
            (_, Some(message)) => Err(Error::Invalid(message.clone())),
            (None, None) => unreachable!("a target without a writer has an error"),
        };
        targets.push(match outcome {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!("{}: {error}", state.repository.target.location());
                state.error = Some(error.to_string());
                TargetReport {
                    location: state.repository.target.location().to_string(),
                    ok: false,
                    error: Some(error.to_string()),
                    new_chunks: 0,
                    bytes_added: 0,
                    bytes_total: 0,
                }
            }
        });
    }
    if states.iter().all(|s| s.error.is_some()) {
        return Err(all_failed(&states));
    }
    Ok(BackupReport {
        snapshot_id: sealed.id.clone(),
        time: session.time,
        tables: manifest.tables.len(),
        rows: manifest.tables.iter().map(|t| t.rows).sum(),
        bytes_read,
        chunks: tally.chunks.load(Ordering::Relaxed),
        new_chunks: compressed_chunks,
        bytes_added: targets.iter().map(|t| t.bytes_added).sum(),
        bytes_total: targets.iter().find(|t| t.ok).map_or(0, |t| t.bytes_total),
        parent: chain.parent,
        sequence: chain.sequence,
        warnings,
        targets,
    })
}

/// Where the new snapshot goes in the repository's chain.
struct Chain {
    parent: Option<String>,
    sequence: u64,
}

impl Chain {
    /// After the newest snapshot that proves itself on any target, or the newest this host
    /// knows of when storage lost that one. Noting, in `warnings`, newer snapshots that failed
    /// to prove themselves and a known snapshot no target holds (rollback).
    async fn find(
        states: &[TargetState<'_>],
        keyring: &Keyring,
        newest_known: Option<&SnapshotMark>,
        warnings: &mut Vec<String>,
    ) -> Chain {
        let mut newest = newest_known.cloned();
        let mut known_held = newest_known.is_none();
        let mut note = |warning: String| {
            tracing::warn!("{warning}");
            warnings.push(warning);
        };
        for state in states.iter().filter(|s| s.error.is_none()) {
            let repository = state.repository;
            let location = repository.target.location();
            let (found, rejected) = match repository.newest_authentic(keyring).await {
                Ok(found) => found,
                Err(error) => {
                    note(format!("{location}: cannot list its snapshots: {error}"));
                    continue;
                }
            };
            for (id, error) in rejected {
                note(format!("{location}: snapshot {id} passed over: {error}"));
            }
            if let Some(known) = newest_known
                && !known_held
            {
                known_held = matches!(repository.target.size_of(&repo::snapshot_key(&known.id)).await, Ok(Some(_)));
            }
            if let Some(mark) = found.map(|sealed| sealed.mark())
                && newest.as_ref().is_none_or(|n| mark.sequence > n.sequence)
            {
                newest = Some(mark);
            }
        }
        if let Some(known) = newest_known.filter(|_| !known_held) {
            note(format!(
                "snapshot {} (number {} of this repository, {}), the newest this host wrote or checked, is on no \
                 target: deleted without being forgotten? The new snapshot names it as its predecessor, so \
                 `verify` keeps reporting the gap",
                known.id, known.sequence, known.time
            ));
        }
        Chain { parent: newest.as_ref().map(|m| m.id.clone()), sequence: newest.map_or(1, |m| m.sequence + 1) }
    }
}

fn all_failed(states: &[TargetState<'_>]) -> Error {
    let reasons: Vec<String> = states
        .iter()
        .map(|s| format!("{}: {}", s.repository.target.location(), s.error.as_deref().unwrap_or("failed")))
        .collect();
    if let [only] = reasons.as_slice() {
        return Error::Invalid(only.clone());
    }
    Error::Invalid(format!("every target failed: {}", reasons.join("; ")))
}

/// Writes one target's index and snapshot object: the commit on that target.
async fn commit(
    state: &TargetState<'_>,
    mut stored: Stored,
    reused: Vec<u32>,
    sealed: &SealedManifest,
    dictionaries: &[StoredDictionary],
    keyring: &Keyring,
    (time, chain): (chrono::DateTime<chrono::Utc>, &Chain),
) -> Result<TargetReport> {
    let repository = state.repository;
    // The index of the last new packs (and the dictionaries it names) goes in before the
    // snapshot that needs it.
    let sealing = (repository.metadata_recipients(), keyring.index_mac_key());
    stored.write_index(&repository.target, &sealing, dictionaries).await?;
    let Stored { packs: new_packs, indexes: new_indexes, new_chunks, mut bytes_added, .. } = stored;
    // Every new pack holds only chunks of this snapshot; the other chunks are in packs the
    // target already had.
    let mut packs = BTreeSet::new();
    let mut indexes: BTreeSet<ObjectRef> = new_indexes.into_iter().collect();
    let mut dictionaries = BTreeSet::new();
    for (pack, dictionary) in new_packs {
        packs.insert(pack);
        dictionaries.extend(dictionary);
    }
    for number in reused {
        let reusable = state.held.index.pack(number);
        let size = *state.index_sizes.get(&*reusable.index_id).ok_or_else(|| Error::Missing {
            object: repo::index_key(&reusable.index_id),
            location: repository.target.location().into(),
        })?;
        packs.insert(reusable.pack.clone());
        indexes.insert(ObjectRef { id: reusable.index_id.to_string(), size });
        dictionaries.extend(reusable.dictionary.clone());
    }
    let header = SnapshotHeader {
        version: repo::FORMAT_VERSION,
        time,
        config_hash: repository.config_hash.clone(),
        total_bytes: packs.iter().chain(indexes.iter()).chain(dictionaries.iter()).map(|o| o.size).sum(),
        added_bytes: bytes_added,
        packs: packs.into_iter().collect(),
        indexes: indexes.into_iter().collect(),
        dictionaries: dictionaries.into_iter().collect(),
        parent: chain.parent.clone(),
        sequence: chain.sequence,
        replaces: None,
    };
    let object = sealed.snapshot_object(&header, keyring);
    bytes_added += object.len() as u64;
    repository.check_still_newest().await?;
    repository.target.put_new(&repo::snapshot_key(&sealed.id), object).await?;
    Ok(TargetReport {
        location: repository.target.location().to_string(),
        ok: true,
        error: None,
        new_chunks,
        bytes_added,
        bytes_total: header.total_bytes,
    })
}

/// Schema before and after data, tables, large objects, bytes read.
struct ReadResult {
    pre_data: StreamManifest,
    post_data: StreamManifest,
    tables: Vec<TableManifest>,
    large_objects: Option<TableManifest>,
    bytes_read: u64,
}

/// Reads the schema and every table, feeding the encoders.
async fn read_everything(
    session: &SnapshotSession,
    pg_dump: &std::path::Path,
    options: &BackupOptions,
    tables: Vec<SourceTable>,
    context: &EncoderContext,
    progress: &Progress,
) -> Result<ReadResult> {
    let pre = source::dump_schema(pg_dump, &options.database, &session.snapshot, Section::PreData);
    let post = source::dump_schema(pg_dump, &options.database, &session.snapshot, Section::PostData);
    let queue = Arc::new(Mutex::new(VecDeque::from(tables)));
    let mut workers = JoinSet::new();
    for _ in 0..options.jobs.max(1) {
        let queue = queue.clone();
        let database = options.database.clone();
        let snapshot = session.snapshot.clone();
        let context = context.clone();
        let progress = progress.clone();
        workers.spawn(async move {
            let mut done = Vec::new();
            let next = || queue.lock().expect("queue lock is never poisoned").pop_front();
            let Some(mut table) = next() else {
                return Ok(done);
            };
            let client = source::attach_to_snapshot(&database, &snapshot).await?;
            loop {
                done.push(read_table(&client, &table, &context, &progress).await?);
                match next() {
                    Some(following) => table = following,
                    None => break,
                }
            }
            Ok::<_, Error>(done)
        });
    }
    let large_objects = read_large_objects(&session.client, context, progress);
    let (pre, post, large_objects) = tokio::try_join!(pre, post, large_objects)?;
    // Stored as the server will run it: pg_dump's random `\restrict` key would defeat dedup.
    let (pre, post) = (source::executable_sql(&pre)?.into_bytes(), source::executable_sql(&post)?.into_bytes());
    let pre_data = encode_bytes(context, pre).await?;
    let post_data = encode_bytes(context, post).await?;
    let mut manifests = Vec::new();
    while let Some(result) = workers.join_next().await {
        manifests.extend(result.expect("table readers do not panic")?);
    }
    manifests.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    let bytes_read = pre_data.bytes
        + post_data.bytes
        + manifests.iter().chain(large_objects.iter()).map(|t| t.data.bytes).sum::<u64>();
    Ok(ReadResult { pre_data, post_data, tables: manifests, large_objects, bytes_read })
}

/// Streams one table through an encoder.
async fn read_table(
    client: &tokio_postgres::Client,
    table: &SourceTable,
    context: &EncoderContext,
    progress: &Progress,
) -> Result<TableManifest> {
    let (data, rows) = read_copy(client, &table.copy_out_sql(), context, progress).await?;
    tracing::debug!(table = %table.qualified(), rows, bytes = data.bytes, "table read");
    Ok(TableManifest {
        schema: table.schema.clone(),
        name: table.name.clone(),
        columns: table.columns.clone(),
        rows,
        data,
    })
}

/// Large objects' contents, when there are any.
async fn read_large_objects(
    client: &tokio_postgres::Client,
    context: &EncoderContext,
    progress: &Progress,
) -> Result<Option<TableManifest>> {
    let count: i64 = client.query_one("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata", &[]).await?.get(0);
    if count == 0 {
        return Ok(None);
    }
    let (data, rows) = read_copy(client, source::LARGE_OBJECTS_COPY_OUT, context, progress).await?;
    let columns = vec!["loid".to_string(), "data".to_string()];
    Ok(Some(TableManifest { schema: "pg_catalog".into(), name: "pg_largeobject".into(), columns, rows, data }))
}

/// Runs one `COPY … TO STDOUT` through an encoder: the stream's manifest and its row count.
async fn read_copy(
    client: &tokio_postgres::Client,
    sql: &str,
    context: &EncoderContext,
    progress: &Progress,
) -> Result<(StreamManifest, u64)> {
    let (sender, mut receiver) = mpsc::channel::<Bytes>(16);
    let encoder_context = context.clone();
    let encoder = tokio::task::spawn_blocking(move || {
        let mut encoder = StreamEncoder::new(encoder_context);
        while let Some(data) = receiver.blocking_recv() {
            encoder.push(&data)?;
        }
        encoder.finish()
    });
    let copy = async {
        let stream = client.copy_out(sql).await?;
        futures::pin_mut!(stream);
        // PostgreSQL sends one message per row: hand them over in batches, or the per-message
        // cost of the channel and thread wake-ups dominates.
        let mut batch = BytesMut::with_capacity(COPY_BATCH);
        while let Some(data) = stream.next().await {
            batch.extend_from_slice(&data?);
            if batch.len() >= COPY_BATCH {
                progress(batch.len() as u64);
                if sender.send(batch.split().freeze()).await.is_err() {
                    break;
                }
                batch.reserve(COPY_BATCH);
            }
        }
        if !batch.is_empty() {
            progress(batch.len() as u64);
            let _ = sender.send(batch.freeze()).await;
        }
        drop(sender);
        Ok::<_, Error>(())
    };
    let copied = copy.await;
    let encoded = encoder.await.expect("the encoder does not panic");
    copied?;
    encoded
}

/// Encodes a small in-memory stream (schema text).
async fn encode_bytes(context: &EncoderContext, bytes: Vec<u8>) -> Result<StreamManifest> {
    let context = context.clone();
    tokio::task::spawn_blocking(move || {
        let mut encoder = StreamEncoder::new(context);
        encoder.push(&bytes)?;
        encoder.finish().map(|(manifest, _)| manifest)
    })
    .await
    .expect("the encoder does not panic")
}

/// Packs a target writer fills at once (each up to `pack_size`): one per table being read,
/// plus the schema's and one more.
const MAX_OPEN_PACKS: usize = 4;

/// An index file is written once the packs stored since the last one hold this many chunks,
/// so that a large backup does not hold every new chunk's record (56 bytes) to the end; one
/// index file of 65 536 chunks is about 2.2 MB. Each is written after its packs and the
/// dictionaries it names, so it is true whenever it exists, and a backup that dies midway
/// leaves indexes the next one reuses.
pub const INDEX_CHUNKS: usize = 1 << 16;

/// A target's pack writer: where and how it stores.
struct PackUploads {
    target: crate::target::Target,
    data_recipients: Vec<age::x25519::Recipient>,
    /// Who reads the index, and the key of its MAC.
    index_sealing: (Vec<age::x25519::Recipient>, MacKey),
    pack_size: usize,
    /// [`BackupOptions::index_chunks`].
    index_chunks: usize,
    /// Every dictionary trained so far (each is listed before a frame that needs it exists).
    dictionaries: Arc<Mutex<Vec<StoredDictionary>>>,
}

/// What a target's pack writer has stored.
#[derive(Default)]
struct Stored {
    /// Every new pack, with the dictionary its chunks need.
    packs: Vec<(ObjectRef, Option<ObjectRef>)>,
    /// The index files written so far.
    indexes: Vec<ObjectRef>,
    /// Records of the packs no index file holds yet.
    pending: Vec<PackRecord>,
    /// Dictionaries stored on the target by this backup (ids).
    dictionaries: std::collections::HashSet<String>,
    new_chunks: usize,
    bytes_added: u64,
}

impl Stored {
    fn add(&mut self, record: PackRecord) {
        self.packs.push((record.pack.clone(), record.dictionary.clone()));
        self.new_chunks += record.chunks.len();
        self.bytes_added += record.pack.size;
        self.pending.push(record);
    }

    /// Chunks of the packs no index file holds yet.
    fn pending_chunks(&self) -> usize {
        self.pending.iter().map(|record| record.chunks.len()).sum()
    }

    /// Writes an index file of the pending packs (if any), after the dictionaries it names.
    async fn write_index(
        &mut self,
        target: &crate::target::Target,
        (recipients, mac_key): &(Vec<age::x25519::Recipient>, MacKey),
        dictionaries: &[StoredDictionary],
    ) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for reference in self.pending.iter().filter_map(|record| record.dictionary.as_ref()) {
            if self.dictionaries.contains(&reference.id) {
                continue;
            }
            let trained = dictionaries.iter().find(|d| d.reference == *reference).ok_or_else(|| {
                Error::Invalid(format!("internal error: dictionary {} of a new pack is unknown", reference.id))
            })?;
            let key = repo::dictionary_key(&reference.id);
            if target.put_new(&key, trained.ciphertext.clone()).await? == crate::target::PutOutcome::Written {
                self.bytes_added += reference.size;
            }
            self.dictionaries.insert(reference.id.clone());
        }
        let file = IndexFile { version: repo::FORMAT_VERSION, packs: std::mem::take(&mut self.pending) };
        let (key, reference, bytes) = tokio::task::spawn_blocking({
            let (recipients, mac_key) = (recipients.clone(), mac_key.clone());
            move || repo::seal_index(file, &recipients, &mac_key)
        })
        .await
        .expect("sealing an index does not panic");
        target.put_new(&key, bytes).await?;
        self.bytes_added += reference.size;
        self.indexes.push(reference);
        Ok(())
    }
}

impl PackUploads {
    /// Collects new chunks into packs and uploads them, writing an index file every
    /// `index_chunks` chunks; returns what it stored, the last packs not yet indexed.
    async fn run(self, mut chunks: mpsc::Receiver<Arc<NewFrame>>) -> Result<Stored> {
        let mut stored = Stored::default();
        let mut uploads: JoinSet<Result<PackRecord>> = JoinSet::new();
        // A pack holds chunks of one dictionary only: one open pack per dictionary (per table).
        let mut open: HashMap<Option<ObjectRef>, (PackWriter, u64)> = HashMap::new();
        let upload = |pack: PackWriter, uploads: &mut JoinSet<Result<PackRecord>>| {
            let target = self.target.clone();
            uploads.spawn(async move {
                let sealed = tokio::task::spawn_blocking(move || pack.seal()).await.expect("sealing does not panic");
                target.put_new(&sealed.key, sealed.bytes).await?;
                Ok(PackRecord { pack: sealed.reference, dictionary: sealed.dictionary, chunks: sealed.chunks })
            });
        };
        let mut clock = 0u64;
        while let Some(chunk) = chunks.recv().await {
            clock += 1;
            let (pack, last_used) = open.entry(chunk.dictionary.clone()).or_insert_with(|| {
                (PackWriter::new(&self.data_recipients, self.pack_size + (1 << 20), chunk.dictionary.clone()), 0)
            });
            *last_used = clock;
            pack.add(&chunk.compressed, &chunk.chunks);
            if pack.len() >= self.pack_size
                && let Some((full, _)) = open.remove(&chunk.dictionary)
            {
                upload(full, &mut uploads);
            }
            // A table that has ended sends nothing more: its pack goes when others need the room.
            if open.len() > MAX_OPEN_PACKS
                && let Some(idle) = open.iter().min_by_key(|(_, (_, used))| *used).map(|(key, _)| key.clone())
                && let Some((pack, _)) = open.remove(&idle)
            {
                upload(pack, &mut uploads);
            }
            while uploads.len() >= 2 {
                match uploads.join_next().await {
                    Some(result) => stored.add(result.expect("uploads do not panic")?),
                    None => break,
                }
            }
            while let Some(result) = uploads.try_join_next() {
                stored.add(result.expect("uploads do not panic")?);
            }
            if stored.pending_chunks() >= self.index_chunks {
                let dictionaries = self.dictionaries.lock().expect("dictionary list lock is never poisoned").clone();
                stored.write_index(&self.target, &self.index_sealing, &dictionaries).await?;
            }
        }
        for (pack, _) in open.into_values().filter(|(pack, _)| !pack.is_empty()) {
            upload(pack, &mut uploads);
        }
        while let Some(result) = uploads.join_next().await {
            stored.add(result.expect("uploads do not panic")?);
        }
        Ok(stored)
    }
}

/// `--table` / `--exclude-table` patterns, matched against `schema.table`.
#[derive(Debug)]
struct TableFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl TableFilter {
    fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        // A pattern without a schema part matches that table in every schema.
        let qualify = |pattern: &String| {
            if pattern.contains('.') { pattern.clone() } else { format!("*.{pattern}") }
        };
        let build = |patterns: &[String]| -> Result<GlobSet> {
            let mut builder = GlobSetBuilder::new();
            for pattern in patterns {
                let glob = Glob::new(&qualify(pattern))
                    .map_err(|e| Error::Invalid(format!("bad table pattern {pattern:?}: {e}")))?;
                builder.add(glob);
            }
            builder.build().map_err(|e| Error::Invalid(format!("bad table patterns: {e}")))
        };
        Ok(TableFilter {
            include: if include.is_empty() { None } else { Some(build(include)?) },
            exclude: build(exclude)?,
        })
    }

    fn matches(&self, schema: &str, table: &str) -> bool {
        self.matches_name(&format!("{schema}.{table}"))
    }

    fn matches_name(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(name)) && !self.exclude.is_match(name)
    }

    /// Refuses a selection whose restore would fail: a kept table referencing a left-out one.
    fn check_foreign_keys(&self, foreign_keys: &[(String, String)]) -> Result<()> {
        for (referencing, referenced) in foreign_keys {
            if self.matches_name(referencing) && !self.matches_name(referenced) {
                return Err(Error::Invalid(format!(
                    "{referencing} has a foreign key to {referenced}, whose data the table patterns leave out; \
                     a restore could not rebuild that key: keep {referenced} or leave out {referencing} too"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> ChunkId {
        let mut bytes = [0u8; crate::crypto::CHUNK_ID_BYTES];
        bytes[..8].copy_from_slice(&blake3::hash(&n.to_le_bytes()).as_bytes()[..8]);
        ChunkId(bytes)
    }

    #[test]
    fn the_sent_set_remembers_at_least_a_generation_back_and_forgets_older_ids() {
        let generation = 1000;
        let mut sent = SentChunks::new(generation);
        for n in 0..3 * generation {
            assert!(sent.insert(id(n)), "{n} is new");
            // Everything sent within the last generation is known.
            for back in [0, 1, generation / 2, generation - 1] {
                if let Some(earlier) = n.checked_sub(back) {
                    assert!(!sent.insert(id(earlier)), "{earlier} was sent {back} ids before {n}");
                }
            }
        }
        // Two generations back is forgotten: such a chunk is sent again, never lost.
        assert!(sent.insert(id(0)));
        assert!(sent.current.len() + sent.previous.len() <= 2 * generation);
    }

    #[test]
    fn table_patterns_match_schema_qualified_names() {
        let filter = TableFilter::new(&["crm.*".into(), "audit_log".into()], &["crm.tmp_*".into()]).unwrap();
        assert!(filter.matches("crm", "contacts"));
        assert!(filter.matches("billing", "audit_log"));
        assert!(!filter.matches("crm", "tmp_import"));
        assert!(!filter.matches("billing", "invoices"));
    }
}
