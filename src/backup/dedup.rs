//! What each target already holds: its index and the chunks this backup sent it, so a chunk
//! is stored once per target.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::repo::{self, ChunkSet, Keyring, ObjectId, ObjectRef, Repository};
use crate::sparse_packs::{RewritePlan, SparsePack};

use super::HeldChunks;

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
pub(super) struct SentChunks {
    pub(super) current: ChunkSet,
    pub(super) previous: ChunkSet,
    pub(super) generation: usize,
}

impl SentChunks {
    pub(super) fn new(generation: usize) -> Self {
        SentChunks { current: ChunkSet::default(), previous: ChunkSet::default(), generation: generation.max(1) }
    }

    /// Whether `id` was sent within the last one or two generations.
    pub(super) fn contains(&self, id: &ChunkId) -> bool {
        self.previous.contains(id) || self.current.contains(id)
    }

    /// Adds `id`; false when it was sent within the last one or two generations.
    pub(super) fn insert(&mut self, id: ChunkId) -> bool {
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
pub(super) struct KnownChunks {
    pub(super) held: Arc<HeldChunks>,
    /// Sent in this backup, recently.
    pub(super) sent: Mutex<SentChunks>,
    /// For each pack of `held` (by number), whether this snapshot uses a chunk of it: the
    /// snapshot object names those packs, and the backup keeps no list of every chunk id.
    pub(super) reused: Vec<AtomicBool>,
    /// For each pack of `held`, bytes of this snapshot's chunks in it (each time one is named).
    pub(super) used: Vec<AtomicU64>,
    /// For each pack of `held`, whether the chunks the snapshot takes from it are stored again
    /// ([`crate::sparse_packs`]).
    pub(super) rewrite: Vec<bool>,
    /// Bytes of chunks stored again (changed under the `sent` lock only).
    pub(super) rewritten: AtomicU64,
    /// Bytes of chunks stored again at most.
    pub(super) budget: u64,
}

impl KnownChunks {
    /// What `held` holds; the chunks of the packs `plan` rewrites are stored again, within its
    /// budget.
    pub(super) fn new(held: Arc<HeldChunks>, generation: usize, plan: &RewritePlan) -> Self {
        let packs = held.index.pack_count();
        let reused = (0..packs).map(|_| AtomicBool::new(false)).collect();
        let used = (0..packs).map(|_| AtomicU64::new(0)).collect();
        let rewrite = (0u32..)
            .take(packs)
            .map(|number| !plan.rewrite.is_empty() && plan.rewrite.contains(&*held.index.pack(number).pack.id.as_str()))
            .collect();
        let sent = Mutex::new(SentChunks::new(generation));
        KnownChunks { held, sent, reused, used, rewrite, rewritten: AtomicU64::new(0), budget: plan.budget }
    }

    /// Whether the chunk (of `length` bytes) must be sent to the target; if so, it counts as
    /// sent from now on. Otherwise the target holds it, and its pack counts as used by the
    /// snapshot. A chunk of a pack to rewrite is sent (once) while the budget lasts, and
    /// reused after.
    pub(super) fn claim(&self, id: ChunkId, length: u64) -> bool {
        let reuse = |pack: u32| {
            self.reused[pack as usize].store(true, Ordering::Relaxed);
            self.used[pack as usize].fetch_add(length, Ordering::Relaxed);
            false
        };
        let mut sent = match self.held.reusable(&id) {
            None => return self.sent.lock().expect("known-chunk lock is never poisoned").insert(id),
            Some(pack) if !self.rewrite[pack as usize] => return reuse(pack),
            Some(pack) => {
                let sent = self.sent.lock().expect("known-chunk lock is never poisoned");
                if sent.contains(&id) {
                    return false;
                }
                let rewritten = self.rewritten.load(Ordering::Relaxed);
                if rewritten.saturating_add(length) > self.budget {
                    drop(sent);
                    return reuse(pack);
                }
                self.rewritten.store(rewritten + length, Ordering::Relaxed);
                sent
            }
        };
        sent.insert(id)
    }

    /// The packs this backup was to rewrite and took no chunk from: from now on, backups
    /// avoid them (a pack the budget ran out in stays listed, and is not avoided).
    pub(super) fn rewritten_whole(&self) -> impl Iterator<Item = String> + '_ {
        (0u32..)
            .zip(&self.rewrite)
            .filter(|&(number, &rewrite)| rewrite && !self.reused[number as usize].load(Ordering::Relaxed))
            .map(|(number, _)| self.held.index.pack(number).pack.id.as_str().to_string())
    }

    /// The packs the snapshot used for less than
    /// [`crate::sparse_packs::SPARSE_BELOW_PERCENT`] of what they hold.
    pub(super) fn sparse_packs(&self) -> std::io::Result<Vec<SparsePack>> {
        let holds = self.held.index.raw_bytes_per_pack()?;
        Ok(self
            .reused_packs()
            .filter_map(|number| {
                let pack = SparsePack {
                    pack: self.held.index.pack(number).pack.id.as_str().to_string(),
                    used: self.used[number as usize].load(Ordering::Relaxed),
                    holds: holds[number as usize],
                };
                pack.is_sparse().then_some(pack)
            })
            .collect())
    }

    /// The packs of `held` the snapshot uses, by number.
    pub(super) fn reused_packs(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..).zip(&self.reused).filter(|(_, used)| used.load(Ordering::Relaxed)).map(|(number, _)| number)
    }
}

/// Which packs a backup may reuse chunks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reuse {
    /// Any pack present with its recorded size (a killed backup's too, once its index says
    /// what it holds).
    PresentPacks,
    /// Only packs a snapshot's header lists: after taking the lock over from a stale
    /// exclusive holder, which may be a prune that only stalled and goes on deleting the
    /// packs no snapshot listed when it planned.
    ListedPacks,
}

/// What one target already holds, and what it is doing in this backup.
pub(super) struct TargetState<'a> {
    pub(super) repository: &'a Repository,
    pub(super) held: Arc<HeldChunks>,
    pub(super) index_sizes: HashMap<String, u64>,
    pub(super) error: Option<String>,
}

impl<'a> TargetState<'a> {
    /// Learns which chunks a target holds: those whose pack is present with the right size.
    pub(super) async fn survey(
        repository: &'a Repository,
        keyring: &Keyring,
        in_memory: usize,
        reuse: Reuse,
        avoid: &HashSet<String>,
    ) -> Result<TargetState<'a>> {
        // Stored where packs are (anything else under data/ is no pack to reuse: a pack moved
        // to another folder is not where a restore looks for it, so its chunks are stored again).
        let stored: Vec<(String, u64)> = repository
            .target
            .list("data")
            .await?
            .into_iter()
            .filter_map(|(key, size)| {
                let id: ObjectId = key.rsplit('/').next()?.parse().ok()?;
                (repo::pack_key(&id) == key).then(|| (id.as_str().to_string(), size))
            })
            .collect();
        // Packs earlier backups stored the used chunks of again are left out of the index, so
        // that their chunks are found in the new copies ([`crate::sparse_packs`]).
        let others: Option<Vec<ObjectRef>> = (!avoid.is_empty()).then(|| {
            (stored.iter())
                .filter(|(id, _)| !avoid.contains(id))
                .filter_map(|(id, size)| Some(ObjectRef { id: id.parse().ok()?, size: *size }))
                .collect()
        });
        let (index, failures) = repository.load_index_lenient(keyring, None, others.as_deref(), in_memory).await?;
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
        let listed = match reuse {
            Reuse::PresentPacks => None,
            Reuse::ListedPacks => Some(repository.listed_objects().await?),
        };
        let present_packs: HashMap<ObjectId, u64> = stored
            .into_iter()
            .filter(|(id, _)| !damaged.contains(id))
            .filter_map(|(id, size)| Some((id.parse::<ObjectId>().ok()?, size)))
            .filter(|(id, _)| listed.as_ref().is_none_or(|listed| listed.contains(&repo::pack_key(id))))
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

    pub(super) fn failed(repository: &'a Repository, error: &Error) -> TargetState<'a> {
        TargetState { repository, held: Arc::default(), index_sizes: HashMap::new(), error: Some(error.to_string()) }
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
}
