//! zstd for chunks, with an optional dictionary.
//!
//! Chunks are small (a few KiB to a few tens of KiB) and compressed one by one so that each
//! stays addressable; alone, a small chunk loses most of the redundancy zstd would find across
//! rows (on CRM text, 8 KiB chunks come out about twice the size of the whole stream
//! compressed). A dictionary trained on the backup's own first new chunks brings most of it
//! back. It is stored encrypted to the admins like data (`dicts/<hash>`), and the backup host
//! forgets it when the backup ends, so it never holds data of an earlier night.

use std::cell::RefCell;
use std::sync::Arc;

use zstd::zstd_safe::{CCtx, CDict, DCtx, DDict};

/// Largest dictionary trained.
const DICTIONARY_BYTES: usize = 112 * 1024;
/// Below this much sample data a dictionary does not pay for itself.
const MIN_TRAINING_BYTES: usize = 256 * 1024;

/// Trains a dictionary from sample chunks, or `None` when there is too little to learn from.
pub fn train<S: AsRef<[u8]>>(samples: &[S]) -> Option<Vec<u8>> {
    let total: usize = samples.iter().map(|s| s.as_ref().len()).sum();
    if total < MIN_TRAINING_BYTES || samples.len() < 16 {
        return None;
    }
    zstd::dict::from_samples(samples, DICTIONARY_BYTES).ok()
}

/// A dictionary ready for compression at one level.
pub struct CompressionDictionary(CDict<'static>);

impl CompressionDictionary {
    /// Digests `bytes` for compression at `level`.
    pub fn new(bytes: &[u8], level: i32) -> Option<Self> {
        CDict::try_create(bytes, level).map(CompressionDictionary)
    }
}

/// A dictionary ready for decompression.
pub struct DecompressionDictionary(DDict<'static>);

impl DecompressionDictionary {
    /// Digests `bytes` for decompression; `None` when they are not a zstd dictionary.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        DDict::try_create(bytes).map(DecompressionDictionary)
    }
}

/// Compresses chunks, reusing one zstd context (creating one costs more than a small chunk).
pub struct ChunkCompressor {
    context: CCtx<'static>,
    level: i32,
    dictionary: Option<Arc<CompressionDictionary>>,
}

impl ChunkCompressor {
    /// A compressor at `level`, with a dictionary when given.
    pub fn new(level: i32, dictionary: Option<Arc<CompressionDictionary>>) -> Self {
        ChunkCompressor { context: CCtx::create(), level, dictionary }
    }

    /// One zstd frame holding `data`.
    pub fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        let written = match &self.dictionary {
            Some(dictionary) => self.context.compress_using_cdict(&mut out, data, &dictionary.0),
            None => self.context.compress(&mut out, data, self.level),
        };
        written.expect("zstd compresses into a buffer of compress_bound bytes");
        out
    }
}

thread_local! {
    static DECOMPRESSION: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
}

/// Decompresses one frame of at most `capacity` bytes.
pub fn decompress(
    data: &[u8],
    capacity: usize,
    dictionary: Option<&DecompressionDictionary>,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(capacity);
    DECOMPRESSION
        .with_borrow_mut(|context| match dictionary {
            Some(dictionary) => context.decompress_using_ddict(&mut out, data, &dictionary.0),
            None => context.decompress(&mut out, data),
        })
        .map_err(|code| zstd::zstd_safe::get_error_name(code).to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    /// CRM-like rows: words drawn from a vocabulary by a fixed pseudo-random sequence.
    fn rows(from: usize, count: usize) -> Vec<u8> {
        const WORDS: [&str; 24] = [
            "renewal",
            "invoice",
            "meeting",
            "Acme",
            "Globex",
            "follow-up",
            "contract",
            "pricing",
            "discount",
            "quarterly",
            "review",
            "support",
            "ticket",
            "escalated",
            "customer",
            "onboarding",
            "demo",
            "budget",
            "approval",
            "signed",
            "shipping",
            "Initech",
            "Umbrella",
            "call",
        ];
        let mut state = (from as u64).wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut out = String::new();
        for i in from..from + count {
            let _ = write!(out, "{i}\tcontact{}@example.test\t", state % 9973);
            for _ in 0..12 {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                out.push_str(WORDS[(state >> 33) as usize % WORDS.len()]);
                out.push(' ');
            }
            out.push('\n');
        }
        out.into_bytes()
    }

    #[test]
    fn a_dictionary_shrinks_small_chunks_and_round_trips() {
        let samples: Vec<Vec<u8>> = (0..64).map(|i| rows(i * 100, 100)).collect();
        let dictionary = train(&samples).expect("enough samples");
        let chunk = rows(50_000, 60);
        let plain = ChunkCompressor::new(3, None).compress(&chunk);
        let with_dictionary = CompressionDictionary::new(&dictionary, 3).map(Arc::new);
        let smaller = ChunkCompressor::new(3, with_dictionary).compress(&chunk);
        assert!(smaller.len() < plain.len(), "{} vs {}", smaller.len(), plain.len());
        let decoder = DecompressionDictionary::new(&dictionary).unwrap();
        assert_eq!(decompress(&smaller, chunk.len(), Some(&decoder)).unwrap(), chunk);
        assert_eq!(decompress(&plain, chunk.len(), None).unwrap(), chunk);
        // Without its dictionary a frame does not decode, and a frame larger than promised is refused.
        assert!(decompress(&smaller, chunk.len(), None).is_err());
        assert!(decompress(&plain, chunk.len() - 1, None).is_err());
    }

    #[test]
    fn too_little_data_trains_no_dictionary() {
        assert!(train(&[rows(0, 10)]).is_none());
    }
}
