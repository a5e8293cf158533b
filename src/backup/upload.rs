//! Uploading: one pack writer per target, frames encrypted as they are added, at most two
//! uploads in flight.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::crypto::{ChunkId, MacKey};
use crate::error::{Error, Result};
use crate::repo::{self, IndexFile, ObjectRef, PackRecord, PackWriter};

use super::{KnownChunks, StoredDictionary};

/// A compressed frame of chunks on its way to the packs of the targets that lack them.
pub(super) struct NewFrame {
    /// Its chunks, in order: id and plaintext length.
    pub(super) chunks: Vec<(ChunkId, u32)>,
    pub(super) compressed: Vec<u8>,
    pub(super) dictionary: Option<ObjectRef>,
}

/// One target as the encoders see it.
pub(super) struct TargetSink {
    /// Chunks the target holds or is being sent in this backup.
    pub(super) known: Arc<KnownChunks>,
    pub(super) packs: mpsc::Sender<Arc<NewFrame>>,
    pub(super) alive: AtomicBool,
}

/// Packs a target writer fills at once (each up to `pack_size`): one per table being read,
/// plus the schema's and one more.
pub(super) const MAX_OPEN_PACKS: usize = 4;

/// A target's pack writer: where and how it stores.
pub(super) struct PackUploads {
    pub(super) target: crate::target::Target,
    pub(super) data_recipients: Vec<age::x25519::Recipient>,
    /// Who reads the index, and the key of its MAC.
    pub(super) index_sealing: (Vec<age::x25519::Recipient>, MacKey),
    pub(super) pack_size: usize,
    /// [`BackupOptions::index_chunks`].
    pub(super) index_chunks: usize,
    /// Every dictionary trained so far (each is listed before a frame that needs it exists).
    pub(super) dictionaries: Arc<Mutex<Vec<StoredDictionary>>>,
}

/// What a target's pack writer has stored.
#[derive(Default)]
pub(super) struct Stored {
    /// Every new pack, with the dictionary its chunks need.
    pub(super) packs: Vec<(ObjectRef, Option<ObjectRef>)>,
    /// The index files written so far.
    pub(super) indexes: Vec<ObjectRef>,
    /// Records of the packs no index file holds yet.
    pub(super) pending: Vec<PackRecord>,
    /// Dictionaries stored on the target by this backup (ids).
    pub(super) dictionaries: std::collections::HashSet<repo::ObjectId>,
    pub(super) new_chunks: usize,
    pub(super) bytes_added: u64,
}

impl Stored {
    pub(super) fn add(&mut self, record: PackRecord) {
        self.packs.push((record.pack.clone(), record.dictionary.clone()));
        self.new_chunks += record.chunks.len();
        self.bytes_added += record.pack.size;
        self.pending.push(record);
    }

    /// Chunks of the packs no index file holds yet.
    pub(super) fn pending_chunks(&self) -> usize {
        self.pending.iter().map(|record| record.chunks.len()).sum()
    }

    /// Writes an index file of the pending packs (if any), after the dictionaries it names.
    pub(super) async fn write_index(
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
            let trained = dictionaries
                .iter()
                .find(|d| d.reference == *reference)
                .ok_or_else(|| Error::Internal(format!("dictionary {} of a new pack is unknown", reference.id)))?;
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
    pub(super) async fn run(self, mut chunks: mpsc::Receiver<Arc<NewFrame>>) -> Result<Stored> {
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
