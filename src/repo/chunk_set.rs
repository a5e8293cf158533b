//! The set of chunk ids a backup has sent to a target.

use crate::crypto::ChunkId;

/// A growing set of chunk ids (those a backup has sent to a target), exact and compact: the
/// ids in blocks that never move, and an open-addressing table of their positions, at most
/// half full, probed from each id's leading bytes (ids are keyed hashes, so evenly spread).
/// 40-48 bytes an id; a `HashSet<ChunkId>` took 38-75 with its slack, and up to 113 while
/// growing.
#[derive(Debug, Default)]
pub struct ChunkSet {
    blocks: Vec<Vec<ChunkId>>,
    len: usize,
    /// 0: empty; otherwise 1 + the id's position in `blocks`.
    slots: Vec<u32>,
}

/// Ids per block of a [`ChunkSet`] (128 KiB).
const SET_BLOCK: usize = 4096;

impl ChunkSet {
    /// How many ids it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &ChunkId) -> bool {
        matches!(self.probe(id), Some(Ok(_)))
    }

    /// Where `id` came in: 0 for the first id added, 1 for the next, and so on.
    pub fn position(&self, id: &ChunkId) -> Option<usize> {
        match self.probe(id) {
            Some(Ok(slot)) => Some(self.slots[slot] as usize - 1),
            _ => None,
        }
    }

    /// The id that came in at `position`.
    pub fn get(&self, position: usize) -> Option<&ChunkId> {
        (position < self.len).then(|| self.id_at(position))
    }

    /// Adds `id`; false when it was there already.
    pub fn insert(&mut self, id: ChunkId) -> bool {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        match self.probe(&id) {
            Some(Ok(_)) => false,
            Some(Err(empty)) => {
                if self.blocks.last().is_none_or(|block| block.len() == SET_BLOCK) {
                    self.blocks.push(Vec::with_capacity(SET_BLOCK));
                }
                self.blocks.last_mut().expect("a block with room").push(id);
                self.len += 1;
                self.slots[empty] = u32::try_from(self.len).expect("fewer than 4 billion chunks");
                true
            }
            None => unreachable!("the table is never full"),
        }
    }

    fn id_at(&self, position: usize) -> &ChunkId {
        &self.blocks[position / SET_BLOCK][position % SET_BLOCK]
    }

    /// `Ok(slot)` holding `id`, or `Err(slot)`, the empty one where it would go; `None` while
    /// there is no table.
    fn probe(&self, id: &ChunkId) -> Option<std::result::Result<usize, usize>> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut slot = Self::start(id) & mask;
        loop {
            match self.slots[slot] {
                0 => return Some(Err(slot)),
                taken if self.id_at(taken as usize - 1) == id => return Some(Ok(slot)),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    fn start(id: &ChunkId) -> usize {
        let lead = u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"));
        // Only the low bits are used, through the table's mask.
        usize::try_from(lead & u64::from(u32::MAX)).expect("32 bits fit a usize")
    }

    /// Doubles the table (at least 1024 slots) and places every id again.
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(1024);
        self.slots = vec![0; size];
        let mask = size - 1;
        for position in 0..self.len {
            let mut slot = Self::start(self.id_at(position)) & mask;
            while self.slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            self.slots[slot] = u32::try_from(position + 1).expect("fewer than 4 billion chunks");
        }
    }
}

impl FromIterator<ChunkId> for ChunkSet {
    fn from_iter<I: IntoIterator<Item = ChunkId>>(ids: I) -> ChunkSet {
        let mut set = ChunkSet::default();
        for id in ids {
            set.insert(id);
        }
        set
    }
}
