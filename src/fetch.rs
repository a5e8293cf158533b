//! Reading chunks back: fetch a pack once, check its name, decrypt it, hand out proven chunks.
//!
//! A small cache keeps the last few decrypted packs, because a table's chunks usually sit
//! side by side in the same packs. Concurrent requests for one pack share a single download.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::repo::{self, ChunkIndex, ChunkLocation, Keyring, ObjectRef};
use crate::target::Target;

type PackCell = Arc<OnceCell<Arc<Vec<u8>>>>;

/// Hands out verified chunk plaintexts from one target.
pub struct ChunkReader {
    target: Target,
    keyring: Keyring,
    index: Arc<ChunkIndex>,
    cache: Mutex<(HashMap<String, PackCell>, VecDeque<String>)>,
    capacity: usize,
}

impl ChunkReader {
    /// A reader keeping up to `cached_packs` decrypted packs in memory.
    pub fn new(target: Target, keyring: Keyring, index: Arc<ChunkIndex>, cached_packs: usize) -> Self {
        ChunkReader {
            target,
            keyring,
            index,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            capacity: cached_packs.max(2),
        }
    }

    /// Where a chunk is, or a `Missing` error naming it.
    pub fn locate(&self, id: &ChunkId) -> Result<(ObjectRef, ChunkLocation)> {
        self.index.chunks.get(id).map(|(pack, location, _)| (pack.clone(), *location)).ok_or_else(|| Error::Missing {
            object: format!("chunk {id} (in no index)"),
            location: self.target.location().into(),
        })
    }

    /// The proven plaintext of one chunk.
    pub async fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let (pack, location) = self.locate(id)?;
        let plaintext = self.pack(&pack).await?;
        let key = self.keyring.chunk_id_key();
        let pack_key = repo::pack_key(&pack.id);
        tokio::task::spawn_blocking(move || repo::open_chunk(&key, &plaintext, &location, &pack_key))
            .await
            .expect("chunk decoding does not panic")
    }

    /// The decrypted plaintext of a pack (cached).
    pub async fn pack(&self, pack: &ObjectRef) -> Result<Arc<Vec<u8>>> {
        let cell = {
            let mut guard = self.cache.lock().expect("cache lock is never poisoned");
            let (map, order) = &mut *guard;
            if let Some(cell) = map.get(&pack.id) {
                cell.clone()
            } else {
                let cell: PackCell = Arc::default();
                map.insert(pack.id.clone(), cell.clone());
                order.push_back(pack.id.clone());
                while order.len() > self.capacity {
                    if let Some(old) = order.pop_front() {
                        map.remove(&old);
                    }
                }
                cell
            }
        };
        let plaintext = cell.get_or_try_init(|| self.load_pack(pack)).await?;
        Ok(plaintext.clone())
    }

    async fn load_pack(&self, pack: &ObjectRef) -> Result<Arc<Vec<u8>>> {
        let key = repo::pack_key(&pack.id);
        let ciphertext = self.target.get(&key).await?;
        if ciphertext.len() as u64 != pack.size {
            return Err(Error::corrupt(&key, format!("size is {} bytes, expected {}", ciphertext.len(), pack.size)));
        }
        let keyring = self.keyring.clone();
        tokio::task::spawn_blocking(move || {
            repo::check_object_name(&key, &ciphertext)?;
            keyring.decrypt(&key, &ciphertext).map(Arc::new)
        })
        .await
        .expect("pack decryption does not panic")
    }
}
