//! A snapshot's streams as the loader reads them: chunk lists spooled, chunks fetched, proven
//! and decoded ahead of each loading connection.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt, TryStreamExt};
use tokio_postgres::CopyInSink;

use crate::crypto::MacKey;
use crate::error::{Error, Result};
use crate::fetch::{ChunkReader, ChunkSpool};
use crate::progress::Progress;
use crate::repo::{Manifest, StreamManifest, TableManifest};

use super::check_digest;

/// Expands every stream's lists, checks that every chunk is in some source's index (all before
/// the database is touched), and spools the ids, setting each stream's `spooled`.
/// Streams are expanded [`STREAMS_AHEAD`] at once, each holding at most [`IDS_AHEAD`] ids
/// until the spool takes them in order: one after the other, a year-old snapshot's list chunks
/// (spread over as many packs as nights changed them, each read a round trip from a bucket)
/// were read a few at a time, 1.8 s of a restore from a bucket answering in 20 ms.
pub(super) async fn spool_chunks(reader: &ChunkReader, manifest: &mut Manifest) -> Result<ChunkSpool> {
    let mut spool = ChunkSpool::new()?;
    let version = manifest.version;
    let mut spooled = Vec::new();
    {
        let heads = futures::stream::iter(manifest.streams())
            .map(|stream| async move {
                let mut ids = crate::fetch::stream_chunk_ids(reader, stream, version);
                let mut head = Vec::new();
                while head.len() < IDS_AHEAD {
                    match ids.next().await {
                        Some(id) => head.push(id?),
                        None => break,
                    }
                }
                Ok::<_, Error>((head, ids))
            })
            .buffered(STREAMS_AHEAD);
        futures::pin_mut!(heads);
        while let Some(expanded) = heads.next().await {
            let (head, rest) = expanded?;
            spooled.push(spool.write(reader, futures::stream::iter(head.into_iter().map(Ok)).chain(rest)).await?);
        }
    }
    for (stream, range) in manifest.streams_mut().zip(spooled) {
        stream.spooled = range;
    }
    Ok(spool)
}

/// Streams whose chunk lists are read at once by [`spool_chunks`].
const STREAMS_AHEAD: usize = 8;
/// Chunk ids a stream read ahead holds before the spool takes them (16 bytes each).
const IDS_AHEAD: usize = 1 << 16;

/// What reading a snapshot's streams needs.
pub(super) struct Streams<'a> {
    pub(super) reader: &'a Arc<ChunkReader>,
    pub(super) spool: &'a ChunkSpool,
    pub(super) mac_key: &'a MacKey,
    pub(super) jobs: usize,
    /// Told the bytes of every table chunk loaded, and each table when it is loaded.
    pub(super) progress: &'a dyn Progress,
}

impl Streams<'_> {
    /// Proven plaintext of a stream, in order, in runs ([`ChunkSpool::runs`]), decoded ahead
    /// ([`ChunkReader::runs_ahead`]).
    pub(super) fn chunks<'s>(&'s self, stream: &StreamManifest) -> impl Stream<Item = Result<Vec<u8>>> + 's {
        let reader = self.reader;
        self.spool
            .runs(stream.spooled.clone())
            .map_ok(move |run| async move { reader.read_located(&run).await })
            .try_buffered(reader.runs_ahead(self.jobs))
    }

    /// Reads a whole (small) stream and checks its digest.
    pub(super) async fn read(&self, label: &str, stream: &StreamManifest) -> Result<Vec<u8>> {
        let mut digest = self.mac_key.hasher();
        let mut bytes = Vec::with_capacity(usize::try_from(stream.bytes).unwrap_or(0));
        let chunks = self.chunks(stream);
        futures::pin_mut!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            digest.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        check_digest(label, stream, &digest)?;
        Ok(bytes)
    }

    /// Loads one table's stream into `sink` (a COPY FROM STDIN), checking digest and row count.
    pub(super) async fn load(&self, sink: CopyInSink<Bytes>, table: &TableManifest) -> Result<u64> {
        let label = format!("{}.{}", table.schema, table.name);
        futures::pin_mut!(sink);
        let mut digest = self.mac_key.hasher();
        let chunks = self.chunks(&table.data);
        futures::pin_mut!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            digest.update(&chunk);
            let length = chunk.len() as u64;
            sink.send(Bytes::from(chunk)).await?;
            self.progress.advance(length);
        }
        check_digest(&label, &table.data, &digest)?;
        let loaded = sink.as_mut().finish().await?;
        if loaded != table.rows {
            return Err(Error::RestoreMismatch {
                table: label,
                detail: format!("loaded {loaded} rows, the snapshot has {}", table.rows),
            });
        }
        tracing::debug!(table = %label, rows = loaded, "table restored");
        self.progress.item_done(&label);
        Ok(loaded)
    }
}
