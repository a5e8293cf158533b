//! The binary encoding of an index object's plaintext (format 4; docs/FORMAT.md, *Index*).
//!
//! Formats 2 and 3 stored the index as zstd-compressed JSON: chunk ids in hex, which zstd gets
//! back to about their 32 bytes, plus every frame's offset and length repeated for each of its
//! chunks, about 44 bytes a chunk in all. Here a chunk costs its id and its length as a varint,
//! and a frame's place is written once: about 18 bytes a chunk (34 in format 4, whose ids had
//! 32 bytes; the version at the start says which).

use super::{ChunkLocation, IndexFile, ObjectRef, PackRecord};
use crate::crypto::ChunkId;

/// What the plaintext of a binary index starts with. A zstd frame (formats 2 and 3) starts
/// with `28 B5 2F FD`, so the two cannot be confused.
pub(crate) const MAGIC: &[u8] = b"crmvault index\n";

/// Encodes an index. Chunks that continue their frame (same offset and length, starting where
/// the previous one ended) share the frame's record.
pub(crate) fn encode(file: &IndexFile) -> Vec<u8> {
    let chunks: usize = file.packs.iter().map(|p| p.chunks.len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 64 * file.packs.len() + 35 * chunks);
    out.extend_from_slice(MAGIC);
    debug_assert!(file.version >= 5, "only format 5 indexes are written: their ids have 16 bytes");
    put(&mut out, u64::from(file.version));
    put(&mut out, file.packs.len() as u64);
    for record in &file.packs {
        put_object(&mut out, &record.pack);
        match &record.dictionary {
            Some(dictionary) => {
                put(&mut out, 1);
                put_object(&mut out, dictionary);
            }
            None => put(&mut out, 0),
        }
        let frames = frames_of(&record.chunks);
        put(&mut out, frames.len() as u64);
        let mut end = 0u64;
        for frame in frames {
            let first = frame[0];
            put(&mut out, zigzag(i128::from(first.offset()) - i128::from(end)));
            put(&mut out, u64::from(first.length()));
            put(&mut out, u64::from(first.start()));
            put(&mut out, frame.len() as u64);
            for location in frame {
                out.extend_from_slice(&location.chunk().0);
                put(&mut out, u64::from(location.raw_length()));
            }
            end = first.offset() + u64::from(first.length());
        }
    }
    out
}

/// Runs of chunks that lie one after the other in one frame.
fn frames_of(chunks: &[ChunkLocation]) -> Vec<&[ChunkLocation]> {
    let mut frames = Vec::new();
    let mut begin = 0;
    for at in 1..=chunks.len() {
        let continues = chunks.get(at).is_some_and(|next| {
            let previous = &chunks[at - 1];
            next.offset() == previous.offset()
                && next.length() == previous.length()
                && u64::from(next.start()) == u64::from(previous.start()) + u64::from(previous.raw_length())
        });
        if !continues {
            frames.push(&chunks[begin..at]);
            begin = at;
        }
    }
    frames
}

/// Decodes an index, refusing anything malformed with a reason.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<IndexFile, String> {
    let mut input = Reader { bytes: bytes.strip_prefix(MAGIC).ok_or("not a binary index")? };
    let version = u32::try_from(input.number()?).map_err(|_| "impossible version")?;
    // Format 4 wrote all 32 bytes of every id; this build keeps the first 16 of them.
    let id_bytes = super::stored_id_bytes(version);
    let pack_count = input.count(4)?;
    let mut packs = Vec::with_capacity(pack_count);
    for _ in 0..pack_count {
        let pack = input.object()?;
        let dictionary = match input.number()? {
            0 => None,
            1 => Some(input.object()?),
            _ => return Err("bad dictionary marker".into()),
        };
        let frame_count = input.count(4)?;
        let mut chunks = Vec::new();
        let mut end = 0u64;
        for _ in 0..frame_count {
            let offset =
                u64::try_from(i128::from(end) + unzigzag(input.number()?)).map_err(|_| "frame before the pack")?;
            let length = u32::try_from(input.number()?).map_err(|_| "frame too long")?;
            let mut start = u32::try_from(input.number()?).map_err(|_| "chunk starts too far")?;
            let chunk_count = input.count(id_bytes + 1)?;
            // Never written (a frame is a run of chunks), and not kept by encoding: the frames
            // after it would be read again at other offsets.
            if chunk_count == 0 {
                return Err("a frame without chunks".into());
            }
            chunks.reserve(chunk_count);
            for _ in 0..chunk_count {
                let id = ChunkId::from_stored(input.take(id_bytes)?).expect("16 or 32 bytes");
                let raw_length = u32::try_from(input.number()?).map_err(|_| "chunk too long")?;
                chunks.push(ChunkLocation::in_frame(id, offset, length, raw_length, start));
                start = start.checked_add(raw_length).ok_or("frame too long")?;
            }
            end = offset.checked_add(u64::from(length)).ok_or("frame too long")?;
        }
        packs.push(PackRecord { pack, dictionary, chunks });
    }
    if !input.bytes.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(IndexFile { version, packs })
}

fn put(out: &mut Vec<u8>, value: u64) {
    crate::varint::put(out, value);
}

fn put_object(out: &mut Vec<u8>, object: &ObjectRef) {
    put(out, object.id.as_str().len() as u64);
    out.extend_from_slice(object.id.as_str().as_bytes());
    put(out, object.size);
}

fn zigzag(value: i128) -> u64 {
    let magnitude = u64::try_from(value.unsigned_abs()).expect("offsets fit 64 bits");
    if value < 0 { (magnitude << 1) - 1 } else { magnitude << 1 }
}

fn unzigzag(value: u64) -> i128 {
    let magnitude = i128::from(value >> 1);
    if value & 1 == 1 { -magnitude - 1 } else { magnitude }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// A LEB128 number of at most 64 bits.
    fn number(&mut self) -> std::result::Result<u64, String> {
        match crate::varint::get(self.bytes) {
            Some((value, width)) => {
                self.bytes = &self.bytes[width..];
                Ok(value)
            }
            None if self.bytes.len() < 10 && self.bytes.iter().all(|b| b & 0x80 != 0) => Err("truncated".into()),
            None => Err("number too large".into()),
        }
    }

    /// A count of items each at least `item_bytes` long: refused when the rest of the input
    /// could not hold them (so a damaged count cannot ask for a huge allocation).
    fn count(&mut self, item_bytes: usize) -> std::result::Result<usize, String> {
        let count = usize::try_from(self.number()?).map_err(|_| "count too large")?;
        if count.saturating_mul(item_bytes) > self.bytes.len() {
            return Err("count larger than the object".into());
        }
        Ok(count)
    }

    fn object(&mut self) -> std::result::Result<ObjectRef, String> {
        let length = self.count(1)?;
        let id = std::str::from_utf8(self.take(length)?).map_err(|_| "object id is not text")?;
        let id = id.parse().map_err(|_| "object id is not a BLAKE3 hash")?;
        let size = self.number()?;
        Ok(ObjectRef { id, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        ChunkId::from_stored(blake3::hash(&n.to_le_bytes()).as_bytes()).unwrap()
    }

    #[test]
    fn an_index_survives_encoding_whatever_its_frames() {
        let file = IndexFile {
            version: super::super::FORMAT_VERSION,
            packs: vec![
                PackRecord {
                    pack: ObjectRef { id: "ab".repeat(32).parse().unwrap(), size: 8 << 20 },
                    dictionary: Some(ObjectRef { id: "cd".repeat(32).parse().unwrap(), size: 30_000 }),
                    chunks: vec![
                        // A frame of three, a frame of one, then an odd entry that starts inside an
                        // earlier frame (not written by crmvault, but encoded exactly all the same).
                        ChunkLocation::in_frame(id(1), 0, 70_000, 8_000, 0),
                        ChunkLocation::in_frame(id(2), 0, 70_000, 9_000, 8_000),
                        ChunkLocation::in_frame(id(3), 0, 70_000, 300, 17_000),
                        ChunkLocation::new(id(4), 70_000, 2_000, 8_192),
                        ChunkLocation::in_frame(id(5), 0, 70_000, 10, 5),
                    ],
                },
                PackRecord {
                    pack: ObjectRef { id: super::super::ObjectId::of(b"p"), size: 1 },
                    dictionary: None,
                    chunks: vec![],
                },
            ],
        };
        let bytes = encode(&file);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.version, super::super::FORMAT_VERSION);
        assert_eq!(decoded.packs.len(), 2);
        assert_eq!(decoded.packs[0].pack, file.packs[0].pack);
        assert_eq!(decoded.packs[0].dictionary, file.packs[0].dictionary);
        assert_eq!(decoded.packs[0].chunks, file.packs[0].chunks);
        assert!(decoded.packs[1].chunks.is_empty() && decoded.packs[1].dictionary.is_none());
        // Three chunks in one frame cost their ids and lengths and one frame record.
        let one_frame = IndexFile {
            version: super::super::FORMAT_VERSION,
            packs: vec![PackRecord { chunks: file.packs[0].chunks[..3].to_vec(), ..file.packs[0].clone() }],
        };
        assert!(
            encode(&one_frame).len() < MAGIC.len() + 2 + 2 * 70 + 3 * (16 + 3) + 12,
            "{}",
            encode(&one_frame).len()
        );
    }

    #[test]
    fn a_damaged_index_is_refused_not_misread() {
        let file = IndexFile {
            version: super::super::FORMAT_VERSION,
            packs: vec![PackRecord {
                pack: ObjectRef { id: "ab".repeat(32).parse().unwrap(), size: 100 },
                dictionary: None,
                chunks: (0..20).map(|n| ChunkLocation::in_frame(id(n), 0, 50, 10, 10 * n)).collect(),
            }],
        };
        let bytes = encode(&file);
        for cut in [0, MAGIC.len(), MAGIC.len() + 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err(), "trailing bytes");
        // A count that claims more chunks than the object could hold.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[5, 1, 64]);
        huge.extend_from_slice("ab".repeat(32).as_bytes());
        huge.extend_from_slice(&[1, 0, 1, 0, 10, 0]);
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(decode(&huge).unwrap_err(), "count larger than the object");
        assert!(decode(b"\x28\xb5\x2f\xfd").is_err());
        // A pack named "p": ids become object keys, so only a BLAKE3 hash is one.
        let mut short_name = MAGIC.to_vec();
        short_name.extend_from_slice(&[5, 1, 1, b'p', 1, 0, 0]);
        assert_eq!(decode(&short_name).unwrap_err(), "object id is not a BLAKE3 hash");
    }

    #[test]
    fn a_frame_without_chunks_is_refused_as_it_would_not_survive_encoding() {
        // Fuzzing input: a frame of no chunks at offset 2^63 - 1, then a frame of one chunk as
        // far again. Encoding leaves out the empty frame, and the second frame's distance from
        // the pack's start (2^64 - 2) does not fit a zigzag varint: re-encoded by `rekey
        // --reencrypt`, the chunk moved to offset 2^63 - 2.
        let mut bytes = MAGIC.to_vec();
        for number in [7, 1, 64] {
            crate::varint::put(&mut bytes, number);
        }
        bytes.extend_from_slice("ab".repeat(32).as_bytes());
        for number in [1, 0, 2, u64::MAX - 1, 0, 0, 0, u64::MAX - 1, 0, 0, 1] {
            crate::varint::put(&mut bytes, number);
        }
        bytes.extend_from_slice(&[7; crate::crypto::CHUNK_ID_BYTES]);
        crate::varint::put(&mut bytes, 1);
        assert_eq!(decode(&bytes).unwrap_err(), "a frame without chunks");
        crate::fuzzing::index(&bytes[MAGIC.len()..]);
    }
}
