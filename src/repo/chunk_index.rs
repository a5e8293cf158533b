//! Where every known chunk lies: [`ChunkIndex`], one sorted array of fixed-size entries, kept in
//! memory or, past a budget of entries, in a temporary file, so that what a restore holds does
//! not grow with the snapshot it restores.
//!
//! An index past its budget is built like an external sort: every `budget` entries are sorted
//! and written out as a run, and sealing merges the runs into one sorted file. In memory stay
//! the packs and a table of where each run of ids with the same leading bits starts (4 bytes for
//! every 16 entries); a lookup reads one such run, about 640 bytes, with one `pread`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{ChunkLocation, IndexFile, ObjectId, ObjectRef};
use crate::crypto::{CHUNK_ID_BYTES, ChunkId};

/// One pack a chunk index knows of.
#[derive(Debug, Clone)]
pub struct PackEntry {
    /// The pack.
    pub pack: ObjectRef,
    /// The dictionary its chunks need.
    pub dictionary: Option<ObjectRef>,
    /// The index object that describes it.
    pub index_id: Arc<str>,
    /// Whether its frames hold packed text (written by format 6 on: its index's version).
    pub packed: bool,
}

/// Where a chunk lies, compactly: the pack's number in the index, offset, lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    pack: u32,
    offset: u64,
    length: u32,
    raw_length: u32,
    start: u32,
}

impl Slot {
    fn new(pack: u32, location: &ChunkLocation) -> Slot {
        let (offset, length, raw_length, start) =
            (location.offset(), location.length(), location.raw_length(), location.start());
        Slot { pack, offset, length, raw_length, start }
    }

    fn location(self, id: ChunkId) -> ChunkLocation {
        ChunkLocation::in_frame(id, self.offset, self.length, self.raw_length, self.start)
    }
}

/// Bytes of an entry as a temporary file holds it ([`encode_location`]): id, pack number,
/// offset, length, raw length, start (little-endian).
pub const ENTRY_BYTES: usize = CHUNK_ID_BYTES + 4 + 8 + 4 + 4 + 4;

type Entry = (ChunkId, Slot);

fn encode(entry: &Entry, out: &mut [u8]) {
    let (id, slot) = entry;
    out[..CHUNK_ID_BYTES].copy_from_slice(&id.0);
    let rest = &mut out[CHUNK_ID_BYTES..ENTRY_BYTES];
    rest[..4].copy_from_slice(&slot.pack.to_le_bytes());
    rest[4..12].copy_from_slice(&slot.offset.to_le_bytes());
    rest[12..16].copy_from_slice(&slot.length.to_le_bytes());
    rest[16..20].copy_from_slice(&slot.raw_length.to_le_bytes());
    rest[20..24].copy_from_slice(&slot.start.to_le_bytes());
}

fn decode(bytes: &[u8]) -> Entry {
    let field = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let id = ChunkId(bytes[..CHUNK_ID_BYTES].try_into().expect("an id's bytes"));
    let at = CHUNK_ID_BYTES;
    let offset = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().expect("8 bytes"));
    (id, Slot { pack: field(at), offset, length: field(at + 12), raw_length: field(at + 16), start: field(at + 20) })
}

/// Writes a chunk's location in pack number `pack` into `out` ([`ENTRY_BYTES`]), as an index on
/// disk holds it (a restore's chunk spool too).
pub fn encode_location(pack: u32, location: &ChunkLocation, out: &mut [u8]) {
    encode(&(location.chunk(), Slot::new(pack, location)), out);
}

/// Reads what [`encode_location`] wrote.
pub fn decode_location(bytes: &[u8]) -> (u32, ChunkLocation) {
    let (id, slot) = decode(bytes);
    (slot.pack, slot.location(id))
}

/// Sorts entries by id and keeps the first of several for one id (the sort is stable).
fn sort_keeping_first(entries: &mut Vec<Entry>) {
    entries.sort_by_key(|entry| entry.0);
    entries.dedup_by(|later, earlier| later.0 == earlier.0);
}

/// The sorted entries, one per id (the first one added).
#[derive(Debug)]
enum Entries {
    Memory(Vec<Entry>),
    /// `len` entries of [`ENTRY_BYTES`] in an unlinked temporary file.
    File {
        file: File,
        len: usize,
    },
}

/// Runs of sorted entries written out while an index past its budget is built.
#[derive(Debug)]
struct Spill {
    file: File,
    /// (first entry's position, entries) of each run, in the order they were added.
    runs: Vec<(u64, usize)>,
    end: u64,
}

/// Where every known chunk is. Kept compact (40 bytes a chunk, in one sorted array): a backup
/// holds the index of each target in memory, and a repository holds millions of chunks. A
/// hash map took twice that, and three times while it grew. Chunk ids are keyed hashes, so
/// evenly spread: a table of where each run of ids with the same leading bits starts takes a
/// lookup straight to the few entries to compare (plain bisection through the array was a cache
/// miss per step, 10% of a restore's CPU). Past [`ChunkIndex::with_budget`]'s budget the array
/// is a temporary file (see the module's documentation).
#[derive(Debug)]
pub struct ChunkIndex {
    entries: Entries,
    /// Appended by [`ChunkIndex::add`], not yet sorted; [`ChunkIndex::seal`] sorts them in.
    added: Vec<Entry>,
    spill: Option<Spill>,
    /// Entries held in memory at most (while building: unsorted ones).
    budget: usize,
    /// `starts[b]` is where the ids whose leading `bits` bits are `b` start in the entries, and
    /// `starts[b + 1]` where they end. Empty until sealed.
    starts: Vec<u32>,
    bits: u32,
    packs: Vec<PackEntry>,
    numbers: HashMap<ObjectId, u32>,
}

impl Default for ChunkIndex {
    /// An index held in memory, however large.
    fn default() -> Self {
        ChunkIndex::with_budget(usize::MAX)
    }
}

/// Builds the table of runs ([`ChunkIndex::starts`]) from ids in sorted order.
struct Starts {
    table: Vec<u32>,
    bits: u32,
    count: u32,
}

impl Starts {
    /// A table for about `len` ids, with about `2^per_run` ids a run.
    fn new(len: usize, per_run: u32) -> Starts {
        let bits = len.max(1).ilog2().saturating_sub(per_run).min(26);
        Starts { table: Vec::with_capacity((1 << bits) + 1), bits, count: 0 }
    }

    fn push(&mut self, id: &ChunkId) {
        let bucket = ChunkIndex::bucket(id, self.bits);
        while self.table.len() <= bucket {
            self.table.push(self.count);
        }
        self.count = self.count.checked_add(1).expect("fewer than 4 billion chunks");
    }

    fn finish(mut self) -> (Vec<u32>, u32) {
        while self.table.len() <= 1 << self.bits {
            self.table.push(self.count);
        }
        (self.table, self.bits)
    }
}

/// Reads one run of a [`Spill`] in blocks.
struct RunReader {
    next: u64,
    left: usize,
    block: Vec<u8>,
    at: usize,
}

impl RunReader {
    /// The entry under the cursor, once [`RunReader::advance`] said there is one.
    fn current(&self) -> &[u8] {
        &self.block[self.at..self.at + ENTRY_BYTES]
    }

    /// Moves to the next entry (the first, on the first call) and returns its id.
    fn advance(&mut self, file: &File, block_entries: usize) -> io::Result<Option<ChunkId>> {
        self.at += ENTRY_BYTES;
        if self.at >= self.block.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let entries = self.left.min(block_entries);
            self.block.resize(entries * ENTRY_BYTES, 0);
            file.read_exact_at(&mut self.block, self.next * ENTRY_BYTES as u64)?;
            self.next += entries as u64;
            self.left -= entries;
            self.at = 0;
        }
        Ok(Some(decode(self.current()).0))
    }
}

impl ChunkIndex {
    /// An empty index that keeps at most `budget` entries in memory, and the rest in temporary
    /// files (in `TMPDIR`, unlinked from the start: nothing is left behind).
    pub fn with_budget(budget: usize) -> ChunkIndex {
        ChunkIndex {
            entries: Entries::Memory(Vec::new()),
            added: Vec::new(),
            spill: None,
            budget: budget.max(1),
            starts: Vec::new(),
            bits: 0,
            packs: Vec::new(),
            numbers: HashMap::new(),
        }
    }

    /// How many chunks it knows.
    pub fn len(&self) -> usize {
        match &self.entries {
            Entries::Memory(entries) => entries.len(),
            Entries::File { len, .. } => *len,
        }
    }

    /// True when it knows none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether its entries are in a temporary file.
    pub fn is_on_disk(&self) -> bool {
        matches!(self.entries, Entries::File { .. })
    }

    /// The leading `bits` bits of an id.
    fn bucket(id: &ChunkId, bits: u32) -> usize {
        let lead = u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"));
        // `bits` is at most 26, so the shift leaves a value that fits.
        usize::try_from(lead.checked_shr(64 - bits).unwrap_or(0)).expect("26 bits fit a usize")
    }

    /// Appends an entry; past the budget, sorts what was appended and writes it out as a run.
    fn push(&mut self, entry: Entry) -> io::Result<()> {
        self.added.push(entry);
        if self.added.len() >= self.budget { self.spill_added() } else { Ok(()) }
    }

    /// Sorts the entries appended so far (of several for one id, the first stays: the sort is
    /// stable) and writes them to the spill file as one run.
    fn spill_added(&mut self) -> io::Result<()> {
        let spill = match &mut self.spill {
            Some(spill) => spill,
            None => self.spill.insert(Spill { file: tempfile::tempfile()?, runs: Vec::new(), end: 0 }),
        };
        sort_keeping_first(&mut self.added);
        let mut out = BufWriter::with_capacity(1 << 16, &spill.file);
        let mut bytes = [0; ENTRY_BYTES];
        for entry in &self.added {
            encode(entry, &mut bytes);
            out.write_all(&bytes)?;
        }
        out.flush()?;
        spill.runs.push((spill.end, self.added.len()));
        spill.end += self.added.len() as u64;
        self.added.clear();
        Ok(())
    }

    /// Sorts in what [`ChunkIndex::add`] appended; of several entries for one id, keeps the one
    /// added first. Then builds the table of runs. Past the budget, merges the runs written out
    /// into one sorted temporary file.
    pub(super) fn seal(&mut self) -> io::Result<()> {
        if self.spill.is_none() {
            let mut entries = match std::mem::replace(&mut self.entries, Entries::Memory(Vec::new())) {
                Entries::Memory(entries) => entries,
                Entries::File { .. } => unreachable!("an index on disk was built with a spill file"),
            };
            entries.append(&mut self.added);
            sort_keeping_first(&mut entries);
            entries.shrink_to_fit();
            self.added = Vec::new();
            let mut starts = Starts::new(entries.len(), 1);
            for (id, _) in &entries {
                starts.push(id);
            }
            (self.starts, self.bits) = starts.finish();
            self.entries = Entries::Memory(entries);
            return Ok(());
        }
        if !self.added.is_empty() {
            self.spill_added()?;
        }
        self.added = Vec::new();
        let spill = self.spill.take().expect("checked above");
        let total: usize = spill.runs.iter().map(|(_, len)| len).sum();
        // 8 MiB of read buffers in all, 4-256 KiB a run.
        let block_entries = ((8 << 20) / spill.runs.len()).clamp(4 << 10, 256 << 10) / ENTRY_BYTES;
        let mut runs: Vec<RunReader> =
            spill.runs.iter().map(|&(next, left)| RunReader { next, left, block: Vec::new(), at: 0 }).collect();
        let mut heap = BinaryHeap::with_capacity(runs.len());
        for (number, run) in runs.iter_mut().enumerate() {
            if let Some(id) = run.advance(&spill.file, block_entries)? {
                heap.push(Reverse((id, number)));
            }
        }
        let file = tempfile::tempfile()?;
        let mut out = BufWriter::with_capacity(1 << 16, &file);
        let mut starts = Starts::new(total, 4);
        let mut last = None;
        // Equal ids come out in the order of their runs, which is the order they were added.
        while let Some(Reverse((id, number))) = heap.pop() {
            if last != Some(id) {
                starts.push(&id);
                out.write_all(runs[number].current())?;
                last = Some(id);
            }
            if let Some(next) = runs[number].advance(&spill.file, block_entries)? {
                heap.push(Reverse((next, number)));
            }
        }
        out.flush()?;
        drop(out);
        let len = starts.count as usize;
        (self.starts, self.bits) = starts.finish();
        self.entries = Entries::File { file, len };
        Ok(())
    }

    /// Appends an index file's chunks (of the packs in `only`, when given); [`ChunkIndex::seal`]
    /// must follow.
    pub(super) fn add(&mut self, index_id: &str, file: IndexFile, only: Option<&HashSet<&ObjectId>>) -> io::Result<()> {
        let index_id: Arc<str> = Arc::from(index_id);
        let packed = file.version >= super::PACKED_BYTEA_VERSION;
        for record in file.packs {
            if only.is_some_and(|packs| !packs.contains(&record.pack.id)) {
                continue;
            }
            let number = *self.numbers.entry(record.pack.id.clone()).or_insert_with(|| {
                self.packs.push(PackEntry {
                    pack: record.pack.clone(),
                    dictionary: record.dictionary.clone(),
                    index_id: index_id.clone(),
                    packed,
                });
                u32::try_from(self.packs.len() - 1).expect("fewer than 4 billion packs")
            });
            for location in &record.chunks {
                self.push((location.chunk(), Slot::new(number, location)))?;
            }
        }
        Ok(())
    }

    /// The run of entries that holds `id` if any: `(first, end)`.
    fn run_of(&self, id: &ChunkId) -> (usize, usize) {
        match self.starts.get(Self::bucket(id, self.bits)..) {
            Some([start, end, ..]) => (*start as usize, *end as usize),
            _ => (0, self.len()),
        }
    }

    fn slot(&self, id: &ChunkId) -> Option<Slot> {
        let (start, end) = self.run_of(id);
        match &self.entries {
            Entries::Memory(entries) => {
                let run = &entries[start..end];
                run.binary_search_by(|(known, _)| known.cmp(id)).ok().map(|found| run[found].1)
            }
            Entries::File { file, .. } => {
                const ON_STACK: usize = 64;
                let (mut stack, mut heap) = ([0; ON_STACK * ENTRY_BYTES], Vec::new());
                let run = if end - start <= ON_STACK {
                    &mut stack[..(end - start) * ENTRY_BYTES]
                } else {
                    heap.resize((end - start) * ENTRY_BYTES, 0);
                    &mut heap[..]
                };
                if let Err(error) = file.read_exact_at(run, (start * ENTRY_BYTES) as u64) {
                    // The file is this process's own, just written; a disk that fails now makes
                    // the chunk missing, which stops the restore with that error beside it.
                    tracing::error!("reading the temporary chunk index: {error}");
                    return None;
                }
                let entry = |n: usize| &run[n * ENTRY_BYTES..(n + 1) * ENTRY_BYTES];
                let (mut low, mut high) = (0, end - start);
                while low < high {
                    let middle = low + (high - low) / 2;
                    match entry(middle)[..CHUNK_ID_BYTES].cmp(&id.0[..]) {
                        std::cmp::Ordering::Less => low = middle + 1,
                        std::cmp::Ordering::Greater => high = middle,
                        std::cmp::Ordering::Equal => return Some(decode(entry(middle)).1),
                    }
                }
                None
            }
        }
    }

    /// Where a chunk is.
    pub fn get(&self, id: &ChunkId) -> Option<(&PackEntry, ChunkLocation)> {
        self.find(id).map(|(pack, location)| (&self.packs[pack as usize], location))
    }

    /// Where a chunk is, with the number of its pack ([`ChunkIndex::pack`]).
    pub fn find(&self, id: &ChunkId) -> Option<(u32, ChunkLocation)> {
        self.slot(id).map(|slot| (slot.pack, slot.location(*id)))
    }

    /// The number of the pack a chunk is in, for [`ChunkIndex::pack`].
    pub fn pack_number(&self, id: &ChunkId) -> Option<u32> {
        self.slot(id).map(|slot| slot.pack)
    }

    /// The number of a pack, for [`ChunkIndex::pack`], when it knows the pack.
    pub fn number_of_pack(&self, id: &ObjectId) -> Option<u32> {
        self.numbers.get(id).copied()
    }

    /// A pack by its number.
    pub fn pack(&self, number: u32) -> &PackEntry {
        &self.packs[number as usize]
    }

    /// How many packs it knows of (numbered from 0).
    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Whether the chunk is known.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.slot(id).is_some()
    }

    /// Calls `each` with every chunk and its pack, in the order of their ids.
    pub fn for_each(&self, mut each: impl FnMut(&ChunkId, &PackEntry)) -> io::Result<()> {
        self.try_for_each_entry(|(id, slot)| {
            each(&id, &self.packs[slot.pack as usize]);
            Ok(())
        })
    }

    /// Bytes of chunk plaintext each pack holds (the chunks this index keeps of it), by number.
    pub fn raw_bytes_per_pack(&self) -> io::Result<Vec<u64>> {
        let mut bytes = vec![0u64; self.packs.len()];
        self.try_for_each_entry(|(_, slot)| {
            bytes[slot.pack as usize] += u64::from(slot.raw_length);
            Ok(())
        })?;
        Ok(bytes)
    }

    /// Calls `each` with every entry in order, until it fails.
    fn try_for_each_entry(&self, mut each: impl FnMut(Entry) -> io::Result<()>) -> io::Result<()> {
        match &self.entries {
            Entries::Memory(entries) => entries.iter().try_for_each(|entry| each(*entry)),
            Entries::File { file, len } => {
                let mut block = Vec::new();
                let mut at = 0;
                while at < *len {
                    let entries = (*len - at).min(4096);
                    block.resize(entries * ENTRY_BYTES, 0);
                    file.read_exact_at(&mut block, (at * ENTRY_BYTES) as u64)?;
                    block.chunks_exact(ENTRY_BYTES).try_for_each(|bytes| each(decode(bytes)))?;
                    at += entries;
                }
                Ok(())
            }
        }
    }

    /// Adds what `other` knows and this does not.
    pub fn merge(&mut self, other: &ChunkIndex) -> io::Result<()> {
        let mut renumbered = Vec::with_capacity(other.packs.len());
        for entry in &other.packs {
            let number = *self.numbers.entry(entry.pack.id.clone()).or_insert_with(|| {
                self.packs.push(entry.clone());
                u32::try_from(self.packs.len() - 1).expect("fewer than 4 billion packs")
            });
            renumbered.push(number);
        }
        // Everything this one holds goes in first (the first entry of an id stays), then the
        // other's entries.
        let mine = std::mem::replace(&mut self.entries, Entries::Memory(Vec::new()));
        let holder = ChunkIndex { entries: mine, ..ChunkIndex::with_budget(1) };
        holder.try_for_each_entry(|entry| self.push(entry))?;
        other
            .try_for_each_entry(|(id, slot)| self.push((id, Slot { pack: renumbered[slot.pack as usize], ..slot })))?;
        self.seal()
    }
}

#[cfg(test)]
mod tests {
    use super::super::PackRecord;
    use super::*;
    use crate::repo::FORMAT_VERSION;

    fn id(i: u32) -> ChunkId {
        ChunkId::from_stored(blake3::hash(&i.to_le_bytes()).as_bytes()).unwrap()
    }

    /// A pack, index or dictionary id named after `name`.
    fn object(name: &str) -> ObjectId {
        ObjectId::of(name.as_bytes())
    }

    fn file(pack: &str, ids: impl Iterator<Item = ChunkId>, offset: u64) -> IndexFile {
        IndexFile {
            version: FORMAT_VERSION,
            packs: vec![PackRecord {
                pack: ObjectRef { id: object(pack), size: 1 },
                dictionary: None,
                chunks: ids.enumerate().map(|(n, id)| ChunkLocation::new(id, offset + n as u64, 1, 1)).collect(),
            }],
        }
    }

    fn numbered(pack: &str, ids: std::ops::Range<u32>) -> IndexFile {
        let offset = u64::from(ids.start);
        file(pack, ids.map(id), offset)
    }

    #[test]
    fn packs_of_format_6_indexes_hold_packed_text_and_older_ones_do_not() {
        let mut index = ChunkIndex::default();
        index.add("new", numbered("a", 0..10), None).unwrap();
        index.add("old", IndexFile { version: 5, ..numbered("b", 10..20) }, None).unwrap();
        index.seal().unwrap();
        assert!(index.get(&id(3)).unwrap().0.packed);
        assert!(!index.get(&id(13)).unwrap().0.packed);
    }

    #[test]
    fn the_index_finds_every_chunk_and_keeps_the_first_location_of_a_duplicate() {
        // In memory, and on disk with runs of 1, 7 and 300 entries.
        for budget in [usize::MAX, 1, 7, 300] {
            let mut index = ChunkIndex::with_budget(budget);
            index.add("first", numbered("a", 0..1000), None).unwrap();
            index.add("second", numbered("b", 500..1500), None).unwrap();
            index.seal().unwrap();
            assert_eq!(index.is_on_disk(), budget != usize::MAX);
            assert_eq!(index.len(), 1500, "budget {budget}");
            for i in 0..1500 {
                let (entry, location) = index.get(&id(i)).unwrap();
                assert_eq!(entry.pack.id, object(if i < 1000 { "a" } else { "b" }), "chunk {i}, budget {budget}");
                assert_eq!(location.offset(), u64::from(i));
            }
            assert!(!index.contains(&id(1500)));
            let mut other = ChunkIndex::with_budget(budget);
            other.add("third", numbered("c", 1400..2000), None).unwrap();
            other.seal().unwrap();
            index.merge(&other).unwrap();
            assert_eq!(index.len(), 2000);
            assert_eq!(index.get(&id(1450)).unwrap().0.pack.id, object("b"));
            assert_eq!(index.get(&id(1999)).unwrap().0.pack.id, object("c"));
            let mut seen = Vec::new();
            index.for_each(|id, entry| seen.push((*id, entry.pack.id.clone()))).unwrap();
            assert_eq!(seen.len(), 2000);
            assert!(seen.windows(2).all(|pair| pair[0].0 < pair[1].0), "in the order of ids");
            // Only the chunks of the packs asked for (a restore asks for its snapshot's packs).
            let mut only_b = ChunkIndex::with_budget(budget);
            let b = object("b");
            let wanted: HashSet<&ObjectId> = [&b].into();
            only_b.add("first", numbered("a", 0..1000), Some(&wanted)).unwrap();
            only_b.add("second", numbered("b", 500..1500), Some(&wanted)).unwrap();
            only_b.seal().unwrap();
            assert_eq!(only_b.len(), 1000);
            assert_eq!(only_b.get(&id(600)).unwrap().0.pack.id, b);
            assert!(!only_b.contains(&id(100)));
        }
    }

    #[test]
    fn the_index_finds_ids_at_both_ends_of_the_range_at_any_size() {
        let edges = [ChunkId([0; CHUNK_ID_BYTES]), ChunkId([0xff; CHUNK_ID_BYTES]), ChunkId([0x80; CHUNK_ID_BYTES])];
        for budget in [usize::MAX, 3, 1000] {
            for size in [0u32, 1, 2, 3, 5, 100, 5000] {
                let known: Vec<ChunkId> = (0..size).map(id).chain(edges).collect();
                let mut index = ChunkIndex::with_budget(budget);
                index.add("i", file("p", known.iter().copied(), 7), None).unwrap();
                index.seal().unwrap();
                for (n, id) in known.iter().enumerate() {
                    let found = index.get(id).map(|(_, location)| location.offset());
                    assert_eq!(found, Some(7 + n as u64), "{size}, budget {budget}: {id}");
                }
                let unknown = [ChunkId([0xfe; CHUNK_ID_BYTES]), ChunkId([1; CHUNK_ID_BYTES])];
                for id in (size..size + 50).map(id).chain(unknown) {
                    assert!(!index.contains(&id), "{size}, budget {budget}: {id}");
                }
            }
        }
        assert!(!ChunkIndex::default().contains(&ChunkId([0; CHUNK_ID_BYTES])));
        assert!(!ChunkIndex::with_budget(1).contains(&ChunkId([0; CHUNK_ID_BYTES])));
    }

    #[test]
    fn an_index_on_disk_keeps_every_field_of_an_entry() {
        let location = ChunkLocation::in_frame(id(1), u64::MAX - 3, u32::MAX, 123_456, 654_321);
        let record = IndexFile {
            version: FORMAT_VERSION,
            packs: vec![PackRecord {
                pack: ObjectRef { id: object("p"), size: 9 },
                dictionary: Some(ObjectRef { id: object("d"), size: 2 }),
                chunks: vec![location, ChunkLocation::new(id(2), 0, 0, 0)],
            }],
        };
        let mut index = ChunkIndex::with_budget(1);
        index.add("i", record, None).unwrap();
        index.seal().unwrap();
        let (entry, found) = index.get(&id(1)).unwrap();
        assert_eq!(
            (found.offset(), found.length(), found.raw_length(), found.start()),
            (u64::MAX - 3, u32::MAX, 123_456, 654_321)
        );
        assert_eq!(entry.dictionary.as_ref().unwrap().id, object("d"));
        assert_eq!(&*entry.index_id, "i");
    }
}
