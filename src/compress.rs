//! zstd for chunks, with an optional dictionary.
//!
//! Chunks are small (a few KiB to a few tens of KiB) and compressed one by one so that each
//! stays addressable; alone, a small chunk loses most of the redundancy zstd would find across
//! rows (on CRM text, 16 KiB chunks come out 1.5× the size of the whole stream compressed).
//! A dictionary trained on the first new chunks of the same table brings nearly all of it back
//! (1.06×; one dictionary shared by all tables: 1.16×). It is stored encrypted to the admins like data (`dicts/<hash>`), and the backup host
//! forgets it when the backup ends, so it never holds data of an earlier night.

pub mod bytea;

use std::cell::RefCell;
use std::ptr::NonNull;

use zstd::zstd_safe::{CCtx, CDict, DCtx, DDict};

/// Largest dictionary trained: a 16th of the 8 MiB of samples a table holds back. On the
/// scale-3 tables in 512 KiB frames (`bench/frame_sizes.rs`), stored dictionaries
/// included: 256 KiB (a 32nd) 861.97 MB, 512 KiB 853.16 MB (-1.0%, same speed alone), 1 MiB
/// (an 8th) 853.42 MB and 15% slower. In real full backups at scale 1 (three alternating
/// rounds): 384 KiB no smaller than 256, 512 KiB 0.65% smaller for ~3% more wall time (both
/// cores busy, a larger working set per frame) and ~10 MiB more memory. 256 KiB had been
/// 0.4% smaller than 112 KiB (from 4 MiB).
const DICTIONARY_BYTES: usize = 512 * 1024;
/// Below this much sample data a dictionary does not pay for itself.
const MIN_TRAINING_BYTES: usize = 256 * 1024;
/// From this much sample data on, a [`DictionarySize::Full`] dictionary may be a 16th of it;
/// below, a 32nd. The larger share was measured to pay on a table's full 8 MiB of samples
/// only; on small sample sets fastCover's extra segments were no better or worse.
const LARGE_SAMPLES: usize = 4 << 20;

/// How large a dictionary [`train`] may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictionarySize {
    /// Up to [`DICTIONARY_BYTES`]: for a table read whole (a full backup), whose frames are
    /// compressed at the repository's level.
    Full,
    /// Up to half that, a 32nd of the samples: for the new chunks of a mostly unchanged
    /// table (an increment), compressed at a high level. With the larger dictionaries a CRM
    /// day at scale 1 was 1-3% smaller and peaked ~20 MiB higher (122 → 142 MiB).
    Increment,
}

/// Trains a dictionary from sample chunks, or `None` when there is too little to learn from.
/// It learns from them as frames hold them, packed ([`bytea::pack`]). The dictionary is at
/// most a 32nd of the packed samples (a 16th from [`LARGE_SAMPLES`] on, for a
/// [`DictionarySize::Full`] one), so a small increment does not pay for a large dictionary.
pub fn train<S: AsRef<[u8]>>(samples: &[S], level: i32, size: DictionarySize) -> Option<Vec<u8>> {
    let text: usize = samples.iter().map(|s| s.as_ref().len()).sum();
    if text < MIN_TRAINING_BYTES || samples.len() < 16 {
        return None;
    }
    let mut flat = Vec::with_capacity(text);
    let mut sizes = Vec::with_capacity(samples.len());
    for sample in samples {
        let before = flat.len();
        bytea::pack(sample.as_ref(), &mut flat);
        sizes.push(flat.len() - before);
    }
    let total = flat.len();
    let (share, largest) = match size {
        DictionarySize::Full if total >= LARGE_SAMPLES => (16, DICTIONARY_BYTES),
        DictionarySize::Full => (32, DICTIONARY_BYTES),
        DictionarySize::Increment => (32, DICTIONARY_BYTES / 2),
    };
    train_fast_cover(&flat, &sizes, (total / share).min(largest), level)
}

/// zstd's fastCover trainer with fixed parameters (segment k = 200, d = 8).
///
/// `ZDICT_trainFromBuffer`, the one zstd-safe wraps, searches many k and took 0.35 s per
/// 2 MiB of COPY text here, once per table per backup; one fixed k takes about 0.03 s for a
/// dictionary within 0.5% as good on the CRM workload (bench/, BENCHMARKS.md). Hence this one
/// FFI call, one of the two `unsafe` places in the crate (the other: [`FrameDictionary`]'s
/// buffer). Counting every second position (accel 2) in a
/// table of 2^19 frequencies instead of every position in 2^20 trains the scale-1 tables in
/// 0.23 s instead of 0.41 s, for the same full backup size (292.47 vs 292.48 MB).
#[allow(unsafe_code)]
fn train_fast_cover(flat: &[u8], sizes: &[usize], capacity: usize, level: i32) -> Option<Vec<u8>> {
    if sizes.iter().sum::<usize>() != flat.len() {
        return None;
    }
    let count = std::os::raw::c_uint::try_from(sizes.len()).ok()?;
    let parameters = zstd_sys::ZDICT_fastCover_params_t {
        k: 200,
        d: 8,
        f: 19,
        steps: 0,
        nbThreads: 1,
        splitPoint: 1.0,
        accel: 2,
        shrinkDict: 0,
        shrinkDictMaxRegression: 0,
        zParams: zstd_sys::ZDICT_params_t { compressionLevel: level, notificationLevel: 0, dictID: 0 },
    };
    let mut dictionary = vec![0u8; capacity];
    // SAFETY: `dictionary` is writable for `capacity` bytes; `flat` is readable for the sum of
    // the `count` entries of `sizes` (checked above); zstd stays within those bounds and keeps
    // no pointer once it returns. The result is either a length ≤ capacity or an error code.
    let written = unsafe {
        zstd_sys::ZDICT_trainFromBuffer_fastCover(
            dictionary.as_mut_ptr().cast(),
            capacity,
            flat.as_ptr().cast(),
            sizes.as_ptr(),
            count,
            parameters,
        )
    };
    // SAFETY: a pure function of its integer argument.
    if unsafe { zstd_sys::ZDICT_isError(written) } != 0 || written > capacity {
        return None;
    }
    dictionary.truncate(written);
    Some(dictionary)
}

/// A dictionary ready for compression at one level.
pub struct CompressionDictionary(CDict<'static>);

impl CompressionDictionary {
    /// Digests `bytes` for compression at `level`.
    pub fn new(bytes: &[u8], level: i32) -> Option<Self> {
        CDict::try_create(bytes, level).map(CompressionDictionary)
    }
}

/// The zstd level of stored dictionaries, written once per table and backup: CRM dictionaries
/// shrink 3.5× (a sixth of a CRM day's bytes were raw dictionaries). Level 19 took 30-39 ms
/// on a 112 KiB one; level 15, on the 512 KiB dictionaries of the scale-1 tables, 1.02 MB for
/// 7 in 0.57 s, on the path of each table's encoder; level 9 1.04 MB (+21 KB a full backup,
/// 0.008%) in 0.17 s, and the backup's training and storing 0.65-0.78 → 0.50-0.63 s
/// (`bench/frame_sizes.rs`). Level 12 is 1.03 MB in 0.24 s.
const STORED_DICTIONARY_LEVEL: i32 = 9;
/// A zstd frame starts with these bytes ...
const FRAME_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// ... and a trained zstd dictionary with these.
const DICTIONARY_MAGIC: [u8; 4] = [0x37, 0xA4, 0x30, 0xEC];

/// A trained dictionary as it is stored (before encryption): one zstd frame (format 3).
pub fn store_dictionary(bytes: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(bytes, STORED_DICTIONARY_LEVEL).expect("zstd compresses a dictionary in memory")
}

/// The dictionary in a stored (decrypted) dictionary object: format 3 stores a zstd frame,
/// format 2 the dictionary itself. `None` when it is neither.
pub fn load_dictionary(stored: &[u8]) -> Option<DecompressionDictionary> {
    DecompressionDictionary::new(&dictionary_bytes(stored)?)
}

/// The trained dictionary's bytes in a stored (decrypted) dictionary object (what
/// [`load_dictionary`] digests; also what compresses with it again, [`FrameDictionary::new`]).
pub fn dictionary_bytes(stored: &[u8]) -> Option<Vec<u8>> {
    let bytes = if stored.starts_with(&FRAME_MAGIC) {
        decompress(stored, MAX_DICTIONARY_BYTES, None).ok()?
    } else {
        stored.to_vec()
    };
    // zstd would take any other bytes as a "raw content" dictionary; ours are all trained.
    bytes.starts_with(&DICTIONARY_MAGIC).then_some(bytes)
}

/// Upper bound on a stored dictionary's size when reading (guards decompression).
const MAX_DICTIONARY_BYTES: usize = 1 << 20;

/// A dictionary ready for decompression.
pub struct DecompressionDictionary(DDict<'static>);

impl DecompressionDictionary {
    /// Digests `bytes` for decompression; `None` when they are not a zstd dictionary.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        DDict::try_create(bytes).map(DecompressionDictionary)
    }

    /// Bytes it takes in memory: its content and the entropy tables zstd built from it.
    pub fn memory(&self) -> usize {
        self.0.sizeof()
    }
}

/// Compresses chunks, reusing one zstd context (creating one costs more than a small chunk).
pub struct ChunkCompressor {
    context: CCtx<'static>,
    /// The context [`FrameDictionary`] compresses in, made when first needed: its tables have
    /// explicit parameters, which only zstd's own API takes (not zstd-safe's `CDict`).
    frames: Option<RawContext>,
}

impl Default for ChunkCompressor {
    fn default() -> Self {
        ChunkCompressor { context: CCtx::create(), frames: None }
    }
}

/// A zstd compression context owned through the C API.
struct RawContext(NonNull<zstd_sys::ZSTD_CCtx>);

impl RawContext {
    #[allow(unsafe_code)]
    fn new() -> Self {
        // SAFETY: no arguments; zstd returns no context only when out of memory, which the
        // allocator treats as fatal too.
        RawContext(NonNull::new(unsafe { zstd_sys::ZSTD_createCCtx() }).expect("zstd makes a compression context"))
    }
}

impl Drop for RawContext {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: made by `ZSTD_createCCtx`, used only through `&mut`, not used again.
        unsafe { zstd_sys::ZSTD_freeCCtx(self.0.as_ptr()) };
    }
}

// SAFETY: a context is used by one thread at a time (`&mut self`), as zstd requires.
#[allow(unsafe_code)]
unsafe impl Send for RawContext {}

impl ChunkCompressor {
    /// One zstd frame holding `data`: with `dictionary` (which carries its own level) when
    /// given, else at `level`.
    pub fn compress(&mut self, data: &[u8], level: i32, dictionary: Option<&CompressionDictionary>) -> Vec<u8> {
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        let written = match dictionary {
            Some(dictionary) => self.context.compress_using_cdict(&mut out, data, &dictionary.0),
            None => self.context.compress(&mut out, data, level),
        };
        written.expect("zstd compresses into a buffer of compress_bound bytes");
        out
    }
}

/// A dictionary laid out for frames of many chunks: its bytes, then room for one frame right
/// behind them, and its zstd tables made once (per compressor thread) over those bytes.
///
/// zstd matches a frame against a dictionary kept elsewhere in memory in its "external
/// dictionary" mode, a generic loop that was 40% of a full backup's CPU. When the frame lies
/// right behind the dictionary's bytes, the two are one window to zstd and it runs its
/// specialised loop: the scale-1 tables compress 21% faster (3.66 s instead of 4.62 s) into
/// 0.9% more bytes, and the frames are the same format, decoded with the same dictionary.
///
/// The tables are made with explicit parameters ([`frame_parameters`]) rather than from the
/// level alone: zstd then uses them for frames of any size (with a level it re-derives
/// parameters for frames over 6 × the dictionary's size and reloads the dictionary into fresh
/// tables for every frame, +10% CPU at 1 MiB frames), and the minimum match can be set.
pub struct FrameDictionary {
    /// Made over `buffer[..dictionary_len]`; freed before `buffer`.
    tables: NonNull<zstd_sys::ZSTD_CDict>,
    buffer: NonNull<u8>,
    dictionary_len: usize,
    capacity: usize,
}

// SAFETY: the tables and the buffer are owned; the buffer is written only through `&mut self`
// and the tables only read the dictionary's part of it.
#[allow(unsafe_code)]
unsafe impl Send for FrameDictionary {}

/// zstd's parameters at `level` for frames of `frame_size` bytes behind a dictionary of
/// `dictionary_size`; for the fast strategies (levels 1-4), a long-match table of at least
/// 2^18 entries and a short-match table of at most 2^15.
///
/// Measured on the scale-1 CRM tables in 512 KiB frames (`bench/frame_sizes.rs`, packed
/// text, alternating runs), against zstd's own level 3 (2^17 long and 2^16 short entries,
/// 5-byte matches): 2^18 long entries are 0.5% smaller (278.80 against 280.15 MB). Halving the short table to 2^15 (128 KiB a table and
/// compressor thread, also what each frame copies out of the tables when it starts) made
/// compression 6% faster (4.06 against 4.34 s a run) for 278.80 instead of 278.92 MB.
/// Before format 6 matches of at least 6 bytes were asked for: on bytea's hex text, 5-character
/// matches are mostly chance (attachments were 5.3% smaller with 6); on packed text 5 is
/// 0.1% smaller again.
#[allow(unsafe_code)]
fn frame_parameters(level: i32, frame_size: usize, dictionary_size: usize) -> zstd_sys::ZSTD_compressionParameters {
    // SAFETY: a pure function of its arguments.
    let mut parameters = unsafe { zstd_sys::ZSTD_getCParams(level, frame_size as u64, dictionary_size) };
    if (parameters.strategy as u32) <= (zstd_sys::ZSTD_strategy::ZSTD_dfast as u32) {
        parameters.hashLog = parameters.hashLog.max(FRAME_HASH_LOG);
        parameters.chainLog = parameters.chainLog.min(FRAME_CHAIN_LOG);
    }
    parameters
}

/// See [`frame_parameters`].
const FRAME_HASH_LOG: u32 = 18;
/// See [`frame_parameters`].
const FRAME_CHAIN_LOG: u32 = 15;

impl FrameDictionary {
    /// The dictionary `bytes` at `level`, with room for frames of up to `frame_capacity` bytes.
    #[allow(unsafe_code)]
    pub fn new(bytes: &[u8], level: i32, frame_capacity: usize) -> Option<Self> {
        let capacity = bytes.len().checked_add(frame_capacity)?;
        let mut owned = vec![0u8; capacity].into_boxed_slice();
        owned[..bytes.len()].copy_from_slice(bytes);
        let buffer = NonNull::new(Box::into_raw(owned).cast::<u8>())?;
        let parameters = frame_parameters(level, frame_capacity, bytes.len());
        // SAFETY: the dictionary's bytes are the first `bytes.len()` of `buffer`, which lives
        // until `drop` frees the tables first; nothing writes to those bytes again (`compress`
        // writes behind them). The tables keep a pointer to them and to nothing else.
        let tables = NonNull::new(unsafe {
            zstd_sys::ZSTD_createCDict_advanced(
                buffer.as_ptr().cast(),
                bytes.len(),
                zstd_sys::ZSTD_dictLoadMethod_e::ZSTD_dlm_byRef,
                zstd_sys::ZSTD_dictContentType_e::ZSTD_dct_auto,
                parameters,
                zstd_sys::ZSTD_customMem { customAlloc: None, customFree: None, opaque: std::ptr::null_mut() },
            )
        });
        let Some(tables) = tables else {
            // SAFETY: made by `Box::into_raw` above with `capacity` bytes, not used again.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(buffer.as_ptr(), capacity)) });
            return None;
        };
        Some(FrameDictionary { tables, buffer, dictionary_len: bytes.len(), capacity })
    }

    /// One zstd frame of `plaintext` (at most the frame capacity; larger ones are compressed
    /// from where they are) with this dictionary.
    #[allow(unsafe_code)]
    pub fn compress(&mut self, compressor: &mut ChunkCompressor, plaintext: &[u8]) -> Vec<u8> {
        let context = compressor.frames.get_or_insert_with(RawContext::new);
        let bound = zstd::zstd_safe::compress_bound(plaintext.len());
        let mut out: Vec<u8> = Vec::with_capacity(bound);
        let room = self.capacity - self.dictionary_len;
        let source = if plaintext.len() <= room {
            // SAFETY: the bytes behind the dictionary are part of `buffer`, and no other view
            // of them exists (`&mut self`); the tables only read the dictionary's bytes.
            let frame = unsafe {
                std::slice::from_raw_parts_mut(self.buffer.as_ptr().add(self.dictionary_len), plaintext.len())
            };
            frame.copy_from_slice(plaintext);
            frame.as_ptr()
        } else {
            plaintext.as_ptr()
        };
        // SAFETY: `out` has room for `bound` bytes and zstd writes at most that many; `source`
        // is readable for `plaintext.len()` bytes; context and tables are live and not shared.
        let written = unsafe {
            zstd_sys::ZSTD_compress_usingCDict(
                context.0.as_ptr(),
                out.as_mut_ptr().cast(),
                bound,
                source.cast(),
                plaintext.len(),
                self.tables.as_ptr(),
            )
        };
        // SAFETY: a pure function of its argument.
        let failed = unsafe { zstd_sys::ZSTD_isError(written) } != 0;
        assert!(!failed && written <= bound, "zstd compresses into a buffer of compress_bound bytes");
        // SAFETY: zstd initialised the first `written` bytes, at most the capacity.
        unsafe { out.set_len(written) };
        out
    }
}

impl Drop for FrameDictionary {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the tables go first, then the buffer they viewed, made by `Box::into_raw`
        // in `new` with `capacity` bytes; neither is used again.
        unsafe {
            zstd_sys::ZSTD_freeCDict(self.tables.as_ptr());
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.buffer.as_ptr(), self.capacity)));
        }
    }
}

/// The plaintext size a zstd frame's header declares, when it declares one (this crate's
/// frames always do).
pub fn frame_content_size(frame: &[u8]) -> Option<u64> {
    zstd::zstd_safe::get_frame_content_size(frame).ok().flatten()
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
    let mut out = Vec::new();
    decompress_onto(data, capacity, dictionary, &mut out)?;
    Ok(out)
}

/// Decompresses a frame of at most `capacity` bytes onto the end of `out`, with no copy in
/// between (a restore decodes runs of chunks into one buffer). On an error `out` keeps what
/// it held.
pub fn decompress_onto(
    data: &[u8],
    capacity: usize,
    dictionary: Option<&DecompressionDictionary>,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let start = out.len();
    out.reserve(capacity);
    let mut cursor = std::io::Cursor::new(&mut *out);
    cursor.set_position(start as u64);
    let result = DECOMPRESSION.with_borrow_mut(|context| match dictionary {
        Some(dictionary) => context.decompress_using_ddict(&mut cursor, data, &dictionary.0),
        None => context.decompress(&mut cursor, data),
    });
    if let Err(code) = result {
        out.truncate(start);
        return Err(zstd::zstd_safe::get_error_name(code).to_string());
    }
    Ok(())
}

/// How a pack's frames are decoded: with its dictionary, if any, and, in packs of format 6 on,
/// with bytea's hex text unpacked after zstd ([`bytea`]).
#[derive(Clone, Copy, Default)]
pub struct FrameCoding<'a> {
    /// The dictionary the pack's frames need.
    pub dictionary: Option<&'a DecompressionDictionary>,
    /// Whether the frames hold packed text ([`bytea::pack`]).
    pub packed: bool,
}

impl FrameCoding<'_> {
    /// Decodes the frame `compressed` onto the end of `out`: at most `limit` bytes of text. On
    /// an error `out` keeps what it held.
    pub fn decode_onto(&self, compressed: &[u8], limit: usize, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        if !self.packed {
            return decompress_onto(compressed, limit, self.dictionary, out);
        }
        // Packed text is at most twice its text's size (a text of FF bytes only).
        let size = frame_content_size(compressed)
            .and_then(|size| usize::try_from(size).ok())
            .filter(|&size| size <= limit.saturating_mul(2))
            .ok_or("the frame does not declare a valid size")?;
        // Into `out` as it is: text without runs or FF bytes (most tables) is then already in
        // place, and only what follows the first marker is unpacked through a buffer.
        let start = out.len();
        decompress_onto(compressed, size, self.dictionary, out)?;
        let unpacked = match bytea::first_marker(&out[start..]) {
            None if out.len() - start <= limit => Ok(()),
            Some(at) if at < limit => UNPACKING.with_borrow_mut(|packed| {
                packed.clear();
                packed.extend_from_slice(&out[start + at..]);
                out.truncate(start + at);
                bytea::unpack_onto(packed, limit - at, out)
            }),
            _ => Err("unpacks to more than its frame holds"),
        };
        unpacked.map_err(|e| {
            out.truncate(start);
            e.to_string()
        })
    }
}

thread_local! {
    /// A thread's buffer for the packed part of a frame, between zstd and [`bytea::unpack_onto`].
    static UNPACKING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
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
        let dictionary = train(&samples, 3, DictionarySize::Full).expect("enough samples");
        let chunk = rows(50_000, 60);
        let mut compressor = ChunkCompressor::default();
        let plain = compressor.compress(&chunk, 3, None);
        let with_dictionary = CompressionDictionary::new(&dictionary, 3).unwrap();
        let smaller = compressor.compress(&chunk, 3, Some(&with_dictionary));
        assert!(smaller.len() < plain.len(), "{} vs {}", smaller.len(), plain.len());
        let decoder = DecompressionDictionary::new(&dictionary).unwrap();
        assert_eq!(decompress(&smaller, chunk.len(), Some(&decoder)).unwrap(), chunk);
        assert_eq!(decompress(&plain, chunk.len(), None).unwrap(), chunk);
        // Without its dictionary a frame does not decode, and a frame larger than promised is refused.
        assert!(decompress(&smaller, chunk.len(), None).is_err());
        assert!(decompress(&plain, chunk.len() - 1, None).is_err());
    }

    #[test]
    fn stored_dictionaries_are_compressed_and_both_forms_load() {
        let samples: Vec<Vec<u8>> = (0..64).map(|i| rows(i * 100, 100)).collect();
        let dictionary = train(&samples, 3, DictionarySize::Full).expect("enough samples");
        let stored = store_dictionary(&dictionary);
        assert!(stored.len() * 2 < dictionary.len(), "{} of {}", stored.len(), dictionary.len());
        let chunk = rows(50_000, 60);
        let frame =
            ChunkCompressor::default().compress(&chunk, 3, Some(&CompressionDictionary::new(&dictionary, 3).unwrap()));
        // Format 3 stores the frame, format 2 the dictionary itself: both decode the chunk.
        for form in [&stored, &dictionary] {
            let loaded = load_dictionary(form).expect("a dictionary");
            assert_eq!(decompress(&frame, chunk.len(), Some(&loaded)).unwrap(), chunk);
        }
        assert!(load_dictionary(b"neither a frame nor a dictionary").is_none());
        assert!(load_dictionary(&stored[..stored.len() / 2]).is_none());
    }

    #[test]
    fn frames_laid_out_behind_the_dictionary_decode_with_it() {
        let samples: Vec<Vec<u8>> = (0..64).map(|i| rows(i * 100, 100)).collect();
        let dictionary = train(&samples, 3, DictionarySize::Full).expect("enough samples");
        let decoder = DecompressionDictionary::new(&dictionary).unwrap();
        let mut laid_out = FrameDictionary::new(&dictionary, 3, 64 * 1024).unwrap();
        let mut compressor = ChunkCompressor::default();
        let plain = compressor.compress(&rows(70_000, 200), 3, None).len();
        // Frames one after another overwrite the room behind the dictionary; one larger than
        // the room is compressed from where it is. Each decodes alone, with the dictionary.
        for (from, count) in [(50_000, 200), (60_000, 20), (80_000, 3000), (70_000, 200)] {
            let frame = rows(from, count);
            let compressed = laid_out.compress(&mut compressor, &frame);
            assert_eq!(decompress(&compressed, frame.len(), Some(&decoder)).unwrap(), frame);
            assert!(decompress(&compressed, frame.len(), None).is_err(), "the dictionary is needed");
            if from == 70_000 {
                assert!(compressed.len() < plain, "{} vs {plain}", compressed.len());
            }
        }
    }

    #[test]
    fn fast_levels_get_their_table_sizes_and_stronger_levels_keep_their_parameters() {
        let fast = frame_parameters(3, 512 * 1024, DICTIONARY_BYTES);
        assert_eq!((fast.hashLog, fast.chainLog), (FRAME_HASH_LOG, FRAME_CHAIN_LOG));
        assert!(1 << fast.windowLog >= 512 * 1024, "the window spans a whole frame");
        let strong = frame_parameters(12, 512 * 1024, DICTIONARY_BYTES);
        // SAFETY: a pure function of its arguments.
        #[allow(unsafe_code)]
        let zstd = unsafe { zstd_sys::ZSTD_getCParams(12, 512 * 1024, DICTIONARY_BYTES) };
        assert_eq!(
            (strong.minMatch, strong.hashLog, strong.chainLog, strong.strategy),
            (zstd.minMatch, zstd.hashLog, zstd.chainLog, zstd.strategy)
        );
    }

    #[test]
    fn too_little_data_trains_no_dictionary() {
        assert!(train(&[rows(0, 10)], 3, DictionarySize::Full).is_none());
    }

    #[test]
    fn packed_frames_decode_to_their_text_and_damage_is_refused() {
        let mut text = rows(0, 200);
        text.extend_from_slice(format!("7\t\\\\x{}\n", "c0ffee".repeat(100)).as_bytes());
        text.extend_from_slice(&rows(200, 50));
        let plain = rows(300, 100);
        let coding = FrameCoding { dictionary: None, packed: true };
        for frame_text in [&text, &plain] {
            let mut packed = Vec::new();
            bytea::pack(frame_text, &mut packed);
            let frame = ChunkCompressor::default().compress(&packed, 3, None);
            let mut out = b"before".to_vec();
            coding.decode_onto(&frame, frame_text.len(), &mut out).unwrap();
            assert_eq!(&out[6..], &frame_text[..]);
            // Text longer than the frame may hold is refused, and `out` keeps what it held.
            out.truncate(6);
            assert!(coding.decode_onto(&frame, frame_text.len() - 1, &mut out).is_err());
            assert_eq!(out, b"before");
        }
        // A run cut short: the packed text ends inside it.
        let mut packed = Vec::new();
        bytea::pack(&text, &mut packed);
        let cut = packed[..packed.len() - rows(200, 50).len() - 10].to_vec();
        let frame = ChunkCompressor::default().compress(&cut, 3, None);
        let mut out = Vec::new();
        assert!(coding.decode_onto(&frame, text.len(), &mut out).is_err());
        assert!(out.is_empty());
    }
}
