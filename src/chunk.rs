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
        ChunkParams { min: 8 * 1024, avg: 32 * 1024, max: 128 * 1024 }
    }
}

/// Splits one stream into chunks. Feed it with [`Chunker::push`], end it with [`Chunker::finish`].
pub struct Chunker {
    gear: Box<[u64; 256]>,
    params: ChunkParams,
    arm_mask: u64,
    long_row_mask: u64,
    hash: u64,
    armed: bool,
    current: Vec<u8>,
}

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
        Chunker {
            gear,
            params,
            arm_mask,
            long_row_mask,
            hash: 0,
            armed: false,
            current: Vec::with_capacity(params.max),
        }
    }

    /// Consumes `data`, calling `emit` with every completed chunk.
    pub fn push(&mut self, data: &[u8], emit: &mut dyn FnMut(Vec<u8>)) {
        let mut start = 0;
        let hard_max = self.params.max * 8;
        for (index, &byte) in data.iter().enumerate() {
            self.hash = (self.hash << 1).wrapping_add(self.gear[byte as usize]);
            let length = self.current.len() + (index - start) + 1;
            if length < self.params.min {
                continue;
            }
            let row_end = byte == b'\n';
            let cut = if row_end {
                self.armed || length >= self.params.max || self.hash & self.arm_mask == 0
            } else {
                if self.hash & self.arm_mask == 0 {
                    self.armed = true;
                }
                (length >= self.params.max * 2 && self.hash & self.long_row_mask == 0) || length >= hard_max
            };
            if cut {
                self.current.extend_from_slice(&data[start..=index]);
                start = index + 1;
                self.cut(emit);
            }
        }
        self.current.extend_from_slice(&data[start..]);
    }

    /// Emits the last, possibly short, chunk.
    pub fn finish(mut self, emit: &mut dyn FnMut(Vec<u8>)) {
        if !self.current.is_empty() {
            self.cut(emit);
        }
    }

    fn cut(&mut self, emit: &mut dyn FnMut(Vec<u8>)) {
        let chunk = std::mem::replace(&mut self.current, Vec::with_capacity(self.params.max));
        self.hash = 0;
        self.armed = false;
        emit(chunk);
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
