//! Row-aligned, keyed, content-defined chunking of COPY text streams.
//!
//! A gear rolling hash runs over every byte. Once a chunk is past its minimum size and the hash
//! hits the mask, the chunker is *armed* and cuts at the next row end (in COPY text format every
//! literal newline ends a row; newlines inside values are escaped as `\n`). So a boundary depends
//! only on the bytes near it: an updated row changes its own chunk and perhaps the next, never
//! the rest of the table. The gear table comes from the repository's secret seed, so boundaries
//! (and hence chunk sizes) reveal nothing about the content to someone without the key.
//!
//! A single row longer than the maximum (a 20 MB note) is cut inside the row, still by content.

/// Size bounds for chunks, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkParams {
    /// No cut before this many bytes.
    pub min: usize,
    /// Target average size.
    pub avg: usize,
    /// Past this size, cut at the first row end, or inside an overlong row.
    pub max: usize,
}

impl Default for ChunkParams {
    fn default() -> Self {
        // Measured on the CRM workload (BENCHMARKS.md): with per-table dictionaries and list
        // chunks, a CRM day stores 4.5% of a full backup at 16 KiB, 3.5% at 8 KiB, 3.0% at 4 KiB,
        // while the full backup grows 1.08×, 1.10×, 1.15× the whole stream compressed and takes
        // 1.0, 1.04, 1.13× the time. 8 KiB is the balance.
        ChunkParams { min: 2 * 1024, avg: 8 * 1024, max: 32 * 1024 }
    }
}

/// Splits one stream into chunks. Feed it with [`Chunker::push`], end it with [`Chunker::finish`].
pub struct Chunker {
    gear: Box<[u64; 256]>,
    params: ChunkParams,
    arm_mask: u64,
    long_row_mask: u64,
    /// Bytes of the current chunk (from `begin`) and perhaps of following ones.
    buffer: Vec<u8>,
    /// Where the current chunk starts in `buffer`.
    begin: usize,
    /// Position (in `buffer`) of the next byte to look at.
    next: usize,
    hash: u64,
    armed: bool,
}

/// The gear hash at a position depends only on the 64 bytes ending there (each step shifts
/// the older contributions one bit further out), so hashing may start this far before the
/// first position whose value matters.
const WINDOW: usize = 64;

impl Chunker {
    /// A chunker whose boundaries are keyed by `seed`.
    pub fn new(seed: &[u8; 32], params: ChunkParams) -> Self {
        let mut gear = Box::new([0u64; 256]);
        let mut reader = blake3::Hasher::new_keyed(seed).update(b"gear").finalize_xof();
        for entry in gear.iter_mut() {
            let mut bytes = [0u8; 8];
            reader.fill(&mut bytes);
            *entry = u64::from_le_bytes(bytes);
        }
        let spread = params.avg.saturating_sub(params.min).max(64);
        let bits = usize::BITS - 1 - spread.leading_zeros();
        // Use the hash's high bits: with a left-shifting gear hash they mix the last 64 bytes.
        let arm_mask = !0u64 << (64 - bits);
        let long_row_mask = !0u64 << (64 - bits.saturating_sub(2).max(6));
        let params = ChunkParams { min: params.min.max(WINDOW + 1), ..params };
        Chunker {
            gear,
            params,
            arm_mask,
            long_row_mask,
            buffer: Vec::with_capacity(params.max * 2),
            begin: 0,
            next: 0,
            hash: 0,
            armed: false,
        }
    }

    /// Consumes `data`, calling `emit` with every completed chunk.
    pub fn push(&mut self, data: &[u8], emit: &mut dyn FnMut(Vec<u8>)) {
        self.buffer.extend_from_slice(data);
        while let Some(end) = self.scan() {
            emit(self.buffer[self.begin..end].to_vec());
            self.begin = end;
            self.next = end;
            self.hash = 0;
            self.armed = false;
        }
        // Keep only the unfinished chunk.
        self.buffer.drain(..self.begin);
        self.next -= self.begin;
        self.begin = 0;
    }

    /// Emits the last, possibly short, chunk.
    pub fn finish(mut self, emit: &mut dyn FnMut(Vec<u8>)) {
        if self.begin < self.buffer.len() {
            emit(self.buffer.split_off(self.begin));
        }
    }

    /// Looks at the bytes not yet seen; returns the end (exclusive) of the current chunk when
    /// a cut falls among them. The rules are those of docs/FORMAT.md; the code only skips work
    /// that cannot change their outcome.
    fn scan(&mut self) -> Option<usize> {
        let ChunkParams { min, max, .. } = self.params;
        let (begin, end) = (self.begin, self.buffer.len());
        // Before `min` nothing can cut; the hash needs only the last WINDOW bytes.
        let warm_up = begin + min - WINDOW;
        if self.next < warm_up {
            self.next = warm_up.min(end);
            self.hash = 0;
        }
        while self.next < end {
            let length = self.next - begin + 1;
            if self.armed || length >= max {
                // The first row end cuts; until 2 × max nothing else matters.
                let limit = (begin + 2 * max - WINDOW).min(end);
                if self.next < limit {
                    if let Some(offset) = memchr::memchr(b'\n', &self.buffer[self.next..limit]) {
                        return Some(self.next + offset + 1);
                    }
                    self.next = limit;
                    self.hash = 0;
                    continue;
                }
                // An overlong row: byte by byte, as the rules are written.
                if let Some(cut) = self.long_row_step() {
                    return Some(cut);
                }
            } else if length < min {
                // Warm-up: the hash only.
                let stop = (begin + min - 1).min(end);
                for &byte in &self.buffer[self.next..stop] {
                    self.hash = (self.hash << 1).wrapping_add(self.gear[byte as usize]);
                }
                self.next = stop;
            } else {
                // Between min and max, unarmed: look for the first position the mask hits.
                let stop = (begin + max - 1).min(end);
                let (gear, mask) = (&self.gear, self.arm_mask);
                let mut hash = self.hash;
                let mut hit = None;
                for (offset, &byte) in self.buffer[self.next..stop].iter().enumerate() {
                    hash = (hash << 1).wrapping_add(gear[byte as usize]);
                    if hash & mask == 0 {
                        hit = Some(self.next + offset);
                        break;
                    }
                }
                self.hash = hash;
                match hit {
                    Some(position) => {
                        self.next = position + 1;
                        if self.buffer[position] == b'\n' {
                            return Some(self.next);
                        }
                        self.armed = true;
                    }
                    None => self.next = stop,
                }
            }
        }
        None
    }

    /// One byte past 2 × max − WINDOW: cut at a row end, at a long-row mask hit past 2 × max,
    /// or at 8 × max.
    fn long_row_step(&mut self) -> Option<usize> {
        let max = self.params.max;
        let byte = self.buffer[self.next];
        self.hash = (self.hash << 1).wrapping_add(self.gear[byte as usize]);
        self.next += 1;
        let length = self.next - self.begin;
        let cut = byte == b'\n' || (length >= 2 * max && self.hash & self.long_row_mask == 0) || length >= 8 * max;
        cut.then_some(self.next)
    }
}

/// Chunks a whole buffer (tests and small streams such as schema text).
pub fn chunk_all(seed: &[u8; 32], params: ChunkParams, data: &[u8]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut chunker = Chunker::new(seed, params);
    chunker.push(data, &mut |c| chunks.push(c));
    chunker.finish(&mut |c| chunks.push(c));
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of docs/FORMAT.md, byte by byte, without shortcuts: the fast chunker must agree.
    fn reference_chunks(seed: &[u8; 32], params: ChunkParams, data: &[u8]) -> Vec<Vec<u8>> {
        let model = Chunker::new(seed, params);
        let (gear, arm, long) = (&model.gear, model.arm_mask, model.long_row_mask);
        let mut chunks = Vec::new();
        let (mut current, mut hash, mut armed) = (Vec::new(), 0u64, false);
        for &byte in data {
            hash = (hash << 1).wrapping_add(gear[byte as usize]);
            current.push(byte);
            let length = current.len();
            if length < params.min {
                continue;
            }
            let cut = if byte == b'\n' {
                armed || length >= params.max || hash & arm == 0
            } else {
                armed |= hash & arm == 0;
                (length >= params.max * 2 && hash & long == 0) || length >= params.max * 8
            };
            if cut {
                chunks.push(std::mem::take(&mut current));
                hash = 0;
                armed = false;
            }
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        chunks
    }

    #[test]
    fn the_fast_chunker_cuts_where_the_rules_say() {
        let mut data = rows(30_000, "fast");
        // Long rows, short rows and a very long one, with and without newlines nearby.
        for (i, size) in [200_000usize, 300_000, 1_500_000, 90, 40_000, 270_000].iter().enumerate() {
            data.extend((0..*size).map(|j| b"abcdefghijklmnopqrstuvwxyz0123456789"[(j * 7 + i * 13 + j / 97) % 36]));
            data.push(b'\n');
            data.extend(rows(500, &format!("tail{i}")));
        }
        for params in [ChunkParams::default(), ChunkParams { min: 4096, avg: 16384, max: 65536 }] {
            let seed = [5u8; 32];
            let expected = reference_chunks(&seed, params, &data);
            for feed in [data.len(), 65_536, 1000, 7] {
                let mut got = Vec::new();
                let mut chunker = Chunker::new(&seed, params);
                for part in data.chunks(feed) {
                    chunker.push(part, &mut |c| got.push(c));
                }
                chunker.finish(&mut |c| got.push(c));
                assert_eq!(got.len(), expected.len(), "feed {feed}, {params:?}");
                assert!(got == expected, "feed {feed}, {params:?}: boundaries differ");
            }
        }
    }

    fn rows(count: usize, salt: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..count {
            out.extend_from_slice(
                format!("{i}\tcontact {i} {salt}\tperson{i}@example.test\t{}\n", i * 7919 % 10007).as_bytes(),
            );
        }
        out
    }

    #[test]
    fn chunks_concatenate_to_the_input_in_any_feed_size() {
        let data = rows(20_000, "x");
        let seed = [7u8; 32];
        let whole = chunk_all(&seed, ChunkParams::default(), &data);
        assert!(whole.len() > 10, "expected many chunks, got {}", whole.len());
        assert_eq!(whole.concat(), data);
        for feed in [1usize, 13, 4096, 100_000] {
            let mut pieces = Vec::new();
            let mut chunker = Chunker::new(&seed, ChunkParams::default());
            for part in data.chunks(feed) {
                chunker.push(part, &mut |c| pieces.push(c));
            }
            chunker.finish(&mut |c| pieces.push(c));
            assert_eq!(pieces, whole, "feed size {feed} changed the boundaries");
        }
    }

    #[test]
    fn cuts_fall_on_row_ends_and_respect_bounds() {
        let data = rows(50_000, "y");
        let params = ChunkParams::default();
        let chunks = chunk_all(&[1u8; 32], params, &data);
        for chunk in &chunks[..chunks.len() - 1] {
            assert_eq!(chunk.last(), Some(&b'\n'));
            assert!(chunk.len() >= params.min && chunk.len() <= params.max + 200, "size {}", chunk.len());
        }
    }

    #[test]
    fn an_updated_row_changes_only_nearby_chunks() {
        let before = rows(50_000, "z");
        let mut after = before.clone();
        let position = after.len() / 2;
        let row_start = after[..position].iter().rposition(|&b| b == b'\n').unwrap() + 1;
        after[row_start + 3] = b'#';
        let seed = [9u8; 32];
        let a = chunk_all(&seed, ChunkParams::default(), &before);
        let b = chunk_all(&seed, ChunkParams::default(), &after);
        let shared = b.iter().filter(|c| a.contains(c)).count();
        assert!(b.len() - shared <= 2, "{} of {} chunks changed", b.len() - shared, b.len());
    }

    #[test]
    fn boundaries_depend_on_the_seed() {
        let data = rows(20_000, "k");
        let a = chunk_all(&[1u8; 32], ChunkParams::default(), &data);
        let b = chunk_all(&[2u8; 32], ChunkParams::default(), &data);
        assert_ne!(a.iter().map(Vec::len).collect::<Vec<_>>(), b.iter().map(Vec::len).collect::<Vec<_>>());
    }

    #[test]
    fn an_overlong_row_is_cut_by_content() {
        let mut data = vec![b'a'; 10];
        data.extend(
            (0..3_000_000u32)
                .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1] | 1)
                .map(|b| if b == b'\n' { b'm' } else { b }),
        );
        data.push(b'\n');
        let chunks = chunk_all(&[3u8; 32], ChunkParams::default(), &data);
        assert!(chunks.len() > 3);
        assert!(chunks.iter().all(|c| c.len() <= ChunkParams::default().max * 8));
        assert_eq!(chunks.concat(), data);
    }
}
