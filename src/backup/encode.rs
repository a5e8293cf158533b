//! Encoding a stream: digest and row count, content-defined chunks with their keyed ids, the
//! list chunks, and the new chunks gathered into frames for the compressors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::chunk::{ChunkParams, Chunker};
use crate::crypto::{ChunkId, ChunkIdKey, MacKey};
use crate::error::{Error, Result};
use crate::repo::{self, ChunkIndex, ListCutter, StreamManifest};

use super::{
    STRONG_BUDGET, STRONG_WHEN_NEW_IS_AT_MOST_ONE_IN, StoredDictionary, TRAINING_BYTES, TargetSink, TrainedDictionary,
    train_dictionary,
};

/// Shared by all encoders of one backup.
#[derive(Clone)]
pub(super) struct EncoderContext {
    pub(super) seed: [u8; 32],
    pub(super) params: ChunkParams,
    pub(super) chunk_id_key: ChunkIdKey,
    pub(super) mac_key: MacKey,
    pub(super) targets: Arc<Vec<TargetSink>>,
    pub(super) compressor: crossbeam_channel::Sender<RawFrame>,
    /// zstd level of the repository.
    pub(super) level: i32,
    /// Who may read data (dictionaries are data).
    pub(super) recipients: Arc<Vec<age::x25519::Recipient>>,
    /// Every dictionary this backup trained, as stored (its zstd tables go with its stream).
    pub(super) dictionaries: Arc<Mutex<Vec<StoredDictionary>>>,
    /// Bytes compressed at [`STRONG_LEVEL`] so far.
    pub(super) strong_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Counts for the report and the log.
    pub(super) tally: Arc<Tally>,
}

/// What the encoders of one backup counted.
#[derive(Default)]
pub(super) struct Tally {
    /// Chunks the snapshot references, data and lists, each time it references them.
    pub(super) chunks: AtomicUsize,
    /// Bytes of list chunks, and of those some target lacked.
    pub(super) list_bytes: AtomicU64,
    pub(super) new_list_bytes: AtomicU64,
}

/// A chunk some target lacks.
pub(super) struct RawChunk {
    pub(super) id: ChunkId,
    pub(super) plaintext: Vec<u8>,
    /// Indexes (into `EncoderContext::targets`) of the targets that lack it.
    pub(super) lacking: Vec<usize>,
    /// Compress at [`STRONG_LEVEL`].
    pub(super) strong: bool,
    /// The chunk before it in the stream was new too (sent to a target).
    pub(super) follows: bool,
}

/// Consecutive new chunks of one stream, for the same targets, on their way to a compressor
/// to become one zstd frame.
pub(super) struct RawFrame {
    /// Id and length of each chunk, in order.
    pub(super) chunks: Vec<(ChunkId, u32)>,
    /// Their plaintexts, concatenated.
    pub(super) plaintext: Vec<u8>,
    /// Indexes (into `EncoderContext::targets`) of the targets that lack them.
    pub(super) lacking: Vec<usize>,
    /// Its table's dictionary, when the table trained one.
    pub(super) dictionary: Option<Arc<TrainedDictionary>>,
    /// Compress at [`STRONG_LEVEL`].
    pub(super) strong: bool,
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
pub(super) const FRAME_BYTES: usize = 512 * 1024;

/// A stream's dictionary: not decided yet (new chunks are held back), or decided.
pub(super) enum Dictionary {
    Undecided,
    Decided(Option<Arc<TrainedDictionary>>),
}

/// Turns one byte stream into chunks, storing the new ones. Runs on a blocking thread.
pub(super) struct StreamEncoder {
    pub(super) chunker: Chunker,
    pub(super) sink: ChunkSink,
}

/// A stream's first level of list chunks, cut while the stream is read.
pub(super) struct ListSink {
    pub(super) cutter: ListCutter,
    pub(super) sink: ChunkSink,
}

/// Where an encoder's chunks go: named, deduplicated, compressed, sent to the pack writer.
///
/// A stream's first new chunks are held back until there are enough to train the stream's
/// own dictionary (tables differ too much for one to serve all), then all go out with it.
///
/// A data stream's ids go straight into its first level of list chunks, which are stored as
/// they are cut: the backup holds a sixteenth of a stream's ids, not all of them.
pub(super) struct ChunkSink {
    pub(super) context: EncoderContext,
    /// The first level of list chunks of a data stream; `None` in a sink of list chunks,
    /// which keeps its ids in `manifest.chunks` for the level above.
    pub(super) lists: Option<Box<ListSink>>,
    pub(super) digest: blake3::Hasher,
    pub(super) manifest: StreamManifest,
    pub(super) rows: u64,
    /// Whether the stream's dictionary is decided, and which.
    pub(super) dictionary: Dictionary,
    pub(super) held: Vec<RawChunk>,
    pub(super) held_bytes: usize,
    /// New chunks gathered into a frame, not yet sent.
    pub(super) frame: Option<RawFrame>,
    /// Size at which a frame is sent ([`FRAME_BYTES`]; 0: one frame per chunk).
    pub(super) frame_bytes: usize,
    /// Whether the last chunk stored was new.
    pub(super) previous_new: bool,
    /// Bytes of all its chunks so far, and of those some target lacked.
    pub(super) seen_bytes: u64,
    pub(super) new_bytes: u64,
}

impl StreamEncoder {
    pub(super) fn new(context: EncoderContext) -> Self {
        let chunker = Chunker::new(&context.seed, context.params);
        let mut sink = ChunkSink::new(context.clone());
        sink.lists = Some(Box::new(ListSink { cutter: ListCutter::default(), sink: ChunkSink::for_lists(context) }));
        StreamEncoder { chunker, sink }
    }

    pub(super) fn push(&mut self, data: &[u8]) -> Result<()> {
        self.sink.digest.update(data);
        self.sink.manifest.bytes += data.len() as u64;
        // In COPY text format every literal newline ends a row.
        self.sink.rows += memchr::memchr_iter(b'\n', data).count() as u64;
        self.chunker.push(data, &mut |chunk| self.sink.store(chunk));
        self.sink.check()
    }

    pub(super) fn finish(self) -> Result<(StreamManifest, u64)> {
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
    pub(super) fn new(context: EncoderContext) -> Self {
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
    pub(super) fn for_lists(context: EncoderContext) -> Self {
        let mut sink = ChunkSink::new(context);
        sink.dictionary = Dictionary::Decided(None);
        sink.frame_bytes = 0;
        sink
    }

    /// Ends a sink of list chunks, counting its bytes.
    pub(super) fn finish_lists(&mut self) -> Result<()> {
        self.flush();
        self.check()?;
        self.context.tally.list_bytes.fetch_add(self.seen_bytes, Ordering::Relaxed);
        self.context.tally.new_list_bytes.fetch_add(self.new_bytes, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn store(&mut self, chunk: Vec<u8>) {
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
                target.alive.load(Ordering::Relaxed) && target.known.claim(id, chunk.len() as u64)
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
    pub(super) fn decide_dictionary(&mut self) {
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
    pub(super) fn add_to_frame(&mut self, raw: RawChunk, dictionary: Option<Arc<TrainedDictionary>>) {
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
    pub(super) fn flush(&mut self) {
        if let Some(frame) = self.frame.take() {
            // Only fails when every compressor is gone, which `check` reports.
            let _ = self.context.compressor.send(frame);
        }
    }

    pub(super) fn check(&self) -> Result<()> {
        if !self.context.targets.iter().any(|t| t.alive.load(Ordering::Relaxed)) {
            // Which target failed with what is known where the writers are awaited.
            return Err(Error::EveryTargetFailed(Vec::new()));
        }
        Ok(())
    }
}

/// The chunks a target holds: those its indexes know of whose pack is present with the
/// right size. Looked up in the index itself; a copy of its ids as a hash set took more memory
/// than the index.
#[derive(Default)]
pub(super) struct HeldChunks {
    /// Every chunk the target's indexes know of.
    pub(super) index: ChunkIndex,
    /// Packs present in storage, with their sizes.
    pub(super) present_packs: HashMap<repo::ObjectId, u64>,
}

impl HeldChunks {
    /// The number of the pack ([`ChunkIndex::pack`]) of a chunk the target holds, when that
    /// pack is present with the right size.
    pub(super) fn reusable(&self, id: &ChunkId) -> Option<u32> {
        self.index.pack_number(id).filter(|&number| {
            let entry = self.index.pack(number);
            self.present_packs.get(&entry.pack.id) == Some(&entry.pack.size)
        })
    }
}

/// Encodes a small in-memory stream (schema text).
pub(super) async fn encode_bytes(context: &EncoderContext, bytes: Vec<u8>) -> Result<StreamManifest> {
    let context = context.clone();
    tokio::task::spawn_blocking(move || {
        let mut encoder = StreamEncoder::new(context);
        encoder.push(&bytes)?;
        encoder.finish().map(|(manifest, _)| manifest)
    })
    .await
    .expect("the encoder does not panic")
}
