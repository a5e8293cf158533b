//! Packs: writing them (frames encrypted as they are added) and reading chunks back out of
//! them (docs/FORMAT.md, *Packs*).

use bytes::Bytes;

use crate::compress::FrameCoding;
use crate::crypto::{self, ChunkId, ChunkIdKey};
use crate::error::{Error, Result};

use super::{ChunkLocation, MAX_CHUNK_BYTES, ObjectId, ObjectRef, pack_key};

/// Builds one pack: compressed chunks appended, encrypted as they come, then sealed as one
/// object.
pub struct PackWriter {
    ciphertext: crypto::Encrypting,
    /// Plaintext bytes appended.
    len: usize,
    chunks: Vec<ChunkLocation>,
    dictionary: Option<ObjectRef>,
}

/// A pack ready to upload.
pub struct SealedPack {
    /// Its object key.
    pub key: String,
    /// Reference (id, size).
    pub reference: ObjectRef,
    /// Ciphertext.
    pub bytes: Bytes,
    /// Its chunks.
    pub chunks: Vec<ChunkLocation>,
    /// The dictionary its chunks need.
    pub dictionary: Option<ObjectRef>,
}

impl PackWriter {
    /// An empty pack for the data recipients, with room for `capacity` bytes, for chunks
    /// compressed with `dictionary`.
    pub fn new(recipients: &[age::x25519::Recipient], capacity: usize, dictionary: Option<ObjectRef>) -> Self {
        PackWriter { ciphertext: crypto::Encrypting::new(recipients, capacity), len: 0, chunks: Vec::new(), dictionary }
    }

    /// The dictionary of the chunks in this pack.
    pub fn dictionary(&self) -> Option<&ObjectRef> {
        self.dictionary.as_ref()
    }

    /// Appends one zstd frame holding the plaintexts of `chunks` (id, length), in order.
    pub fn add(&mut self, compressed: &[u8], chunks: &[(ChunkId, u32)]) {
        let offset = self.len as u64;
        self.ciphertext.write(compressed);
        self.len += compressed.len();
        let length = u32::try_from(compressed.len()).expect("a frame is < 4 GiB");
        let mut start = 0u32;
        for &(id, raw_length) in chunks {
            self.chunks.push(ChunkLocation::in_frame(id, offset, length, raw_length, start));
            start = start.checked_add(raw_length).expect("a frame is < 4 GiB");
        }
    }

    /// Plaintext bytes appended so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Ends the pack's ciphertext and names it.
    pub fn seal(self) -> SealedPack {
        let ciphertext = self.ciphertext.finish();
        let id = ObjectId::of(&ciphertext);
        SealedPack {
            key: pack_key(&id),
            reference: ObjectRef { id, size: ciphertext.len() as u64 },
            bytes: Bytes::from(ciphertext),
            // Kept until the backup ends: no room to spare for growth.
            chunks: {
                let mut chunks = self.chunks;
                chunks.shrink_to_fit();
                chunks
            },
            dictionary: self.dictionary,
        }
    }
}

/// Decrypted bytes of a pack: all of it, or the part a read needed (from `start` on).
#[derive(Debug, Clone, Copy)]
pub struct PackBytes<'a> {
    start: u64,
    bytes: &'a [u8],
}

impl<'a> PackBytes<'a> {
    /// A whole pack's plaintext.
    pub fn whole(bytes: &'a [u8]) -> Self {
        PackBytes { start: 0, bytes }
    }

    /// The plaintext of a pack from `start` on, as far as `bytes` go.
    pub fn part(start: u64, bytes: &'a [u8]) -> Self {
        PackBytes { start, bytes }
    }

    /// The compressed frame of a chunk; `None` when it lies outside these bytes.
    fn frame(&self, location: &ChunkLocation) -> Option<&'a [u8]> {
        let start = usize::try_from(location.offset().checked_sub(self.start)?).ok()?;
        self.bytes.get(start..start.checked_add(location.length() as usize)?)
    }
}

/// A pack smaller than this share of the repository's `pack_size` is small: a night's
/// increments of one table. `prune --identity` merges small packs (`repack`), and a backup
/// counts those its snapshot lists (`backup::TargetReport::small_packs`): a restore reads each.
const SMALL_SHARE: usize = 4;

/// Whether a pack of `size` stored bytes is small ([`SMALL_SHARE`]).
pub fn is_small_pack(size: u64, pack_size: usize) -> bool {
    size < (pack_size / SMALL_SHARE) as u64
}

/// Decompresses one chunk out of a decrypted pack and proves its id.
pub fn open_chunk(
    key: &ChunkIdKey,
    pack_plaintext: PackBytes<'_>,
    location: &ChunkLocation,
    pack_key: &str,
    coding: FrameCoding<'_>,
    frames: Frames<'_>,
) -> Result<Vec<u8>> {
    let mut plaintext = Vec::new();
    open_chunk_onto(key, pack_plaintext, location, pack_key, coding, frames, &mut plaintext)?;
    Ok(plaintext)
}

/// [`open_chunk`] onto the end of `out`, which keeps what it held if the chunk fails.
///
/// A chunk alone in its frame decompresses straight onto `out`. A frame of several chunks is
/// decompressed once into `frames`, which its other chunks are then copied from (a snapshot
/// taken after many nights reads a frame's chunks in many runs, on any thread).
pub fn open_chunk_onto(
    key: &ChunkIdKey,
    pack_plaintext: PackBytes<'_>,
    location: &ChunkLocation,
    pack_key: &str,
    coding: FrameCoding<'_>,
    frames: Frames<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    if location.raw_length() > MAX_CHUNK_BYTES {
        return Err(Error::corrupt(pack_key, format!("chunk {} claims an impossible size", location.chunk())));
    }
    if let Some(frame) = frames.get(pack_key, location.offset()) {
        return chunk_of_frame(key, &frame, location, pack_key, frames, out);
    }
    let compressed = pack_plaintext
        .frame(location)
        .ok_or_else(|| Error::corrupt(pack_key, format!("chunk {} lies outside the pack", location.chunk())))?;
    let content = crate::compress::frame_content_size(compressed);
    if !coding.packed && location.start() == 0 && content.is_none_or(|size| size == u64::from(location.raw_length())) {
        let before = out.len();
        coding
            .decode_onto(compressed, location.raw_length() as usize, out)
            .map_err(|e| Error::corrupt(pack_key, format!("chunk {} does not decompress: {e}", location.chunk())))?;
        let plaintext = &out[before..];
        if plaintext.len() != location.raw_length() as usize || key.id_of(plaintext) != location.chunk() {
            out.truncate(before);
            return Err(Error::corrupt(pack_key, format!("chunk {} fails its keyed hash", location.chunk())));
        }
        return Ok(());
    }
    // A packed frame's text is as long as its chunks (unknown here) and never > 16 MiB.
    let frame_size = if coding.packed {
        Some(MAX_CHUNK_BYTES as usize)
    } else {
        content.filter(|&size| size <= u64::from(MAX_CHUNK_BYTES)).and_then(|size| usize::try_from(size).ok())
    }
    .ok_or_else(|| Error::corrupt(pack_key, format!("the frame of chunk {} has no valid size", location.chunk())))?;
    let mut plaintext = Vec::new();
    coding.decode_onto(compressed, frame_size, &mut plaintext).map_err(|e| {
        Error::corrupt(pack_key, format!("the frame of chunk {} does not decompress: {e}", location.chunk()))
    })?;
    let frame = frames.keep(pack_key, location.offset(), plaintext);
    chunk_of_frame(key, &frame, location, pack_key, frames, out)
}

/// Copies a chunk out of its decompressed frame onto `out` and proves it. A frame that does
/// not hold it is forgotten: it may be a damaged copy, and the next target's copy of the same
/// pack (same name, same offset) must be decompressed, not taken from the cache.
pub fn chunk_of_frame(
    key: &ChunkIdKey,
    frame: &[u8],
    location: &ChunkLocation,
    pack_key: &str,
    frames: Frames<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let piece = (location.start() as usize)
        .checked_add(location.raw_length() as usize)
        .and_then(|piece_end| frame.get(location.start() as usize..piece_end));
    let Some(piece) = piece else {
        frames.forget(pack_key, location.offset());
        return Err(Error::corrupt(pack_key, format!("chunk {} lies outside its frame", location.chunk())));
    };
    if key.id_of(piece) != location.chunk() {
        frames.forget(pack_key, location.offset());
        return Err(Error::corrupt(pack_key, format!("chunk {} fails its keyed hash", location.chunk())));
    }
    out.extend_from_slice(piece);
    Ok(())
}

/// [`open_chunk_onto`] for chunks that follow each other in one pack: where consecutive chunks
/// make up a whole frame, in order (a run of a full backup's stream is mostly such frames), the
/// frame decompresses straight onto `out` and each chunk is proven where it lies, with no copy
/// out of a frame buffer. On an error `out` keeps what it held.
pub fn open_chunks_onto(
    key: &ChunkIdKey,
    pack_plaintext: PackBytes<'_>,
    locations: &[ChunkLocation],
    pack_key: &str,
    coding: FrameCoding<'_>,
    frames: Frames<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let before = out.len();
    let mut rest = locations;
    while let Some(first) = rest.first() {
        let same_frame =
            rest.iter().take_while(|l| l.offset() == first.offset() && l.length() == first.length()).count();
        let (frame, after) = rest.split_at(same_frame);
        rest = after;
        let opened = match whole_frame(frame, pack_plaintext) {
            Some((compressed, size)) => open_whole_frame(key, compressed, size, frame, pack_key, coding, out),
            None => {
                frame.iter().try_for_each(|l| open_chunk_onto(key, pack_plaintext, l, pack_key, coding, frames, out))
            }
        };
        if let Err(error) = opened {
            out.truncate(before);
            return Err(error);
        }
    }
    Ok(())
}

/// The compressed bytes and size of the frame that `frame` (several chunks of one frame) fills
/// exactly, from its start to its end; `None` if they do not.
fn whole_frame<'p>(frame: &[ChunkLocation], pack_plaintext: PackBytes<'p>) -> Option<(&'p [u8], usize)> {
    let first = frame.first()?;
    let mut size: u64 = 0;
    for location in frame {
        if u64::from(location.start()) != size {
            return None;
        }
        size += u64::from(location.raw_length());
    }
    let compressed = pack_plaintext.frame(first)?;
    let whole = frame.len() > 1
        && size <= u64::from(MAX_CHUNK_BYTES)
        && crate::compress::frame_content_size(compressed) == Some(size);
    whole.then_some((compressed, usize::try_from(size).ok()?))
}

fn open_whole_frame(
    key: &ChunkIdKey,
    compressed: &[u8],
    size: usize,
    frame: &[ChunkLocation],
    pack_key: &str,
    coding: FrameCoding<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let first = frame[0].chunk();
    let mut at = out.len();
    coding
        .decode_onto(compressed, size, out)
        .map_err(|e| Error::corrupt(pack_key, format!("the frame of chunk {first} does not decompress: {e}")))?;
    if out.len() - at != size {
        return Err(Error::corrupt(pack_key, format!("the frame of chunk {first} has the wrong size")));
    }
    for location in frame {
        let end = at + location.raw_length() as usize;
        if key.id_of(&out[at..end]) != location.chunk() {
            return Err(Error::corrupt(pack_key, format!("chunk {} fails its keyed hash", location.chunk())));
        }
        at = end;
    }
    Ok(())
}

/// Decompressed frames of several chunks, shared by the threads of a read and kept up to a
/// byte budget, the least recently used leaving first. A frame whose chunks a snapshot holds
/// only some of (the newest snapshot of a long history reads such frames from many nights,
/// interleaved) is then decompressed once, not once for each run that needs one of its chunks.
pub struct FrameCache {
    budget: usize,
    state: std::sync::Mutex<FrameState>,
}

/// (source, pack key, offset of the frame).
type FrameKey = (usize, String, u64);

#[derive(Default)]
struct FrameState {
    frames: std::collections::HashMap<FrameKey, (std::sync::Arc<Vec<u8>>, u64)>,
    /// Frames by their last use.
    used: std::collections::BTreeMap<u64, FrameKey>,
    clock: u64,
    bytes: usize,
}

impl FrameCache {
    /// A cache holding at most `budget` bytes of frames.
    pub fn new(budget: usize) -> Self {
        FrameCache { budget, state: std::sync::Mutex::default() }
    }

    /// The frames of one source (a target: packs of two targets may share a name).
    pub fn of(&self, source: usize) -> Frames<'_> {
        Frames { cache: self, source }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FrameState> {
        self.state.lock().expect("frame cache lock is never poisoned")
    }
}

/// The frames of one source in a [`FrameCache`].
#[derive(Clone, Copy)]
pub struct Frames<'a> {
    cache: &'a FrameCache,
    source: usize,
}

impl Frames<'_> {
    /// A frame kept, marked as used now.
    pub fn get(&self, pack_key: &str, offset: u64) -> Option<std::sync::Arc<Vec<u8>>> {
        let mut state = self.cache.state();
        let state = &mut *state;
        let key = (self.source, pack_key.to_string(), offset);
        let (frame, stamp) = state.frames.get_mut(&key)?;
        let old = std::mem::replace(stamp, state.clock);
        state.clock += 1;
        let key = state.used.remove(&old).expect("every frame has its stamp");
        state.used.insert(*stamp, key);
        Some(frame.clone())
    }

    /// Keeps a decompressed frame (when it fits the budget), forgetting the least recently
    /// used ones to make room.
    fn keep(&self, pack_key: &str, offset: u64, mut plaintext: Vec<u8>) -> std::sync::Arc<Vec<u8>> {
        if plaintext.capacity() > plaintext.len() + plaintext.len() / 4 {
            // Room reserved for the largest frame a packed one can be: not kept.
            plaintext.shrink_to_fit();
        }
        let frame = std::sync::Arc::new(plaintext);
        if frame.len() > self.cache.budget / 2 {
            return frame;
        }
        let mut state = self.cache.state();
        let state = &mut *state;
        let key = (self.source, pack_key.to_string(), offset);
        let stamp = state.clock;
        state.clock += 1;
        state.bytes += frame.len();
        if let Some((old, old_stamp)) = state.frames.insert(key.clone(), (frame.clone(), stamp)) {
            state.bytes -= old.len();
            state.used.remove(&old_stamp);
        }
        state.used.insert(stamp, key);
        while state.bytes > self.cache.budget {
            let Some((_, oldest)) = state.used.pop_first() else { break };
            if let Some((old, _)) = state.frames.remove(&oldest) {
                state.bytes -= old.len();
            }
        }
        frame
    }

    /// Forgets a frame (one of its chunks failed).
    pub fn forget(&self, pack_key: &str, offset: u64) {
        let mut state = self.cache.state();
        if let Some((old, stamp)) = state.frames.remove(&(self.source, pack_key.to_string(), offset)) {
            state.bytes -= old.len();
            state.used.remove(&stamp);
        }
    }
}
