//! List chunks: a stream's chunk ids, themselves cut into chunks and stored like data
//! (docs/FORMAT.md, *List chunks*).

use crate::crypto::{CHUNK_ID_BYTES, ChunkId};
use crate::error::{Error, Result};

use super::{StreamManifest, stored_id_bytes};

/// Most list-chunk ids a manifest holds per stream before another level of list chunks is cut
/// (a CRM table at scale 1 has ~10 000 list chunks: 0.3 MiB in every snapshot with one level).
pub const LIST_TOP_MAX: usize = 64;
/// More levels than this cannot come from a real stream (64^8 chunks): the manifest is damaged.
pub const LIST_LEVELS_MAX: u32 = 8;

/// A list chunk ends after an id whose last byte is a multiple of this (16 ids on average;
/// format 5's ids end where formats 2-4 had their 16th byte, so a repository's first format-5
/// snapshot writes all its list chunks anew, once).
pub const LIST_CUT: u8 = 16;
/// A list chunk holds at least this many ids (unless it is a stream's last) ...
pub(super) const LIST_MIN: usize = 4;
/// ... and at most this many.
pub(super) const LIST_MAX: usize = 64;

/// Cuts a run of chunk ids into list chunks as the ids come, by a rule that looks only at the
/// ids of the piece being cut: a backup cuts a stream's first level while it reads the stream,
/// instead of keeping every id of it until the end.
#[derive(Debug, Default)]
pub struct ListCutter {
    piece: Vec<u8>,
}

impl ListCutter {
    /// Takes the next id; returns a finished list chunk (the concatenation of its ids) when
    /// this id ends one.
    pub fn push(&mut self, id: &ChunkId) -> Option<Vec<u8>> {
        if self.piece.is_empty() {
            self.piece.reserve_exact(LIST_MAX * CHUNK_ID_BYTES);
        }
        self.piece.extend_from_slice(&id.0);
        let held = self.piece.len() / CHUNK_ID_BYTES;
        ((held >= LIST_MIN && id.0[CHUNK_ID_BYTES - 1].is_multiple_of(LIST_CUT)) || held >= LIST_MAX)
            .then(|| std::mem::take(&mut self.piece))
    }

    /// The last list chunk, when ids are left after the last cut.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.piece.is_empty()).then_some(self.piece)
    }
}

/// Cuts a stream's chunk ids into list chunks (each the concatenation of its ids).
pub fn split_list(ids: &[ChunkId]) -> Vec<Vec<u8>> {
    let mut cutter = ListCutter::default();
    let mut lists: Vec<Vec<u8>> = ids.iter().filter_map(|id| cutter.push(id)).collect();
    lists.extend(cutter.finish());
    lists
}

/// Builds a stream's levels of list chunks: `store` stores the pieces of one level (from
/// [`split_list`]) and returns their ids, in order. Sets `lists`, `inner_lists` and
/// `list_levels` from `stream.chunks`.
pub fn build_lists(
    stream: &mut StreamManifest,
    mut store: impl FnMut(Vec<Vec<u8>>) -> Result<Vec<ChunkId>>,
) -> Result<()> {
    let first = store(split_list(&stream.chunks))?;
    build_upper_lists(stream, first, store)
}

/// [`build_lists`] from the ids of the stream's first level of list chunks, already stored
/// (cut by a [`ListCutter`]).
pub fn build_upper_lists(
    stream: &mut StreamManifest,
    first_level: Vec<ChunkId>,
    mut store: impl FnMut(Vec<Vec<u8>>) -> Result<Vec<ChunkId>>,
) -> Result<()> {
    let mut lists = first_level;
    stream.list_levels = 1;
    stream.inner_lists.clear();
    while lists.len() > LIST_TOP_MAX {
        let upper = store(split_list(&lists))?;
        stream.inner_lists.append(&mut lists);
        lists = upper;
        stream.list_levels += 1;
    }
    stream.lists = lists;
    Ok(())
}

/// The ids a list chunk of a format-`version` snapshot holds.
pub fn parse_list(object: &str, bytes: &[u8], version: u32) -> Result<Vec<ChunkId>> {
    let width = stored_id_bytes(version);
    if !bytes.len().is_multiple_of(width) || bytes.is_empty() {
        return Err(Error::corrupt(object, "is not a list of chunk ids"));
    }
    Ok(bytes.chunks_exact(width).filter_map(ChunkId::from_stored).collect())
}
