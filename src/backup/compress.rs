//! Compressing frames: each table's zstd dictionary, trained on its first new chunks, and the
//! compressor threads.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::compress::{ChunkCompressor, CompressionDictionary, DictionarySize, FrameDictionary, bytea};
use crate::repo::ObjectRef;

use super::{FRAME_BYTES, NewFrame, RawChunk, RawFrame, TargetSink};

/// A dictionary this backup trained, encrypted once for every target.
pub(super) struct TrainedDictionary {
    pub(super) stored: StoredDictionary,
    /// Its bytes, from which each compressor makes its tables.
    pub(super) bytes: Vec<u8>,
    /// For [`STRONG_LEVEL`], made when first needed: its tables take about 12 MiB, and a
    /// full backup rarely needs them.
    pub(super) strong: std::sync::OnceLock<Option<CompressionDictionary>>,
}

/// A trained dictionary as it goes to storage.
#[derive(Clone)]
pub(super) struct StoredDictionary {
    pub(super) reference: ObjectRef,
    pub(super) ciphertext: Bytes,
}

/// The zstd level for the new chunks of a stream that is mostly unchanged (an increment):
/// level 9 is 10-15% smaller than level 3 on 8 KiB CRM chunks at a fifth of the speed, and 12
/// another 1.9% smaller on a CRM day for 9% more time of that backup (0.4 s at scale 1), which
/// only a small amount of new data can afford.
pub(super) const STRONG_LEVEL: i32 = 12;
/// A stream compresses its new chunks at [`STRONG_LEVEL`] while they are at most this
/// fraction (1 / n) of what it has read so far ...
pub(super) const STRONG_WHEN_NEW_IS_AT_MOST_ONE_IN: u64 = 4;
/// ... and while the whole backup has compressed less than this at that level (so that a big
/// change in an otherwise quiet database still runs at the usual speed).
pub(super) const STRONG_BUDGET: u64 = 256 << 20;

/// Bytes of a table's first new chunks its dictionary is trained on before any is compressed.
pub(super) const TRAINING_BYTES: usize = 8 << 20;

/// Compression runs on its own threads, one per core, fed by every table's encoder: a big
/// table's chunker is then never waiting on zstd, and zstd uses every core while it can.
pub(super) struct Compressors {
    pub(super) threads: Vec<std::thread::JoinHandle<()>>,
    pub(super) compressed_chunks: Arc<std::sync::atomic::AtomicUsize>,
}

impl Compressors {
    pub(super) fn start(
        level: i32,
        targets: &Arc<Vec<TargetSink>>,
    ) -> (Compressors, crossbeam_channel::Sender<RawFrame>) {
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
    pub(super) async fn finish(self) -> usize {
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
pub(super) struct FrameDictionaries {
    pub(super) recent: Vec<(Arc<TrainedDictionary>, FrameDictionary)>,
}

impl FrameDictionaries {
    /// How many are kept: one per table being read (`--jobs`, usually 2), and some to spare.
    pub(super) const KEPT: usize = 4;

    pub(super) fn get(&mut self, dictionary: &Arc<TrainedDictionary>, level: i32) -> &mut FrameDictionary {
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
pub(super) fn train_dictionary(
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
    let reference = ObjectRef { id: crate::repo::ObjectId::of(&ciphertext), size: ciphertext.len() as u64 };
    let stored = StoredDictionary { reference, ciphertext: Bytes::from(ciphertext) };
    Some(Arc::new(TrainedDictionary { stored, bytes, strong: std::sync::OnceLock::new() }))
}
