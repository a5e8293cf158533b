//! Reading the database: every selected table's COPY stream inside the exported snapshot,
//! the schema sections and large objects, handed to the encoders in batches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::postgres::{self, Section, SnapshotSession, SourceTable};
use crate::progress::Shared as Progress;
use crate::repo::{StreamManifest, TableManifest};

use super::{BackupOptions, EncoderContext, StreamEncoder, encode_bytes};

/// Bytes of COPY data handed to an encoder at once.
pub(super) const COPY_BATCH: usize = 256 * 1024;

/// Schema before and after data, tables, large objects, bytes read.
pub(super) struct ReadResult {
    pub(super) pre_data: StreamManifest,
    pub(super) post_data: StreamManifest,
    pub(super) tables: Vec<TableManifest>,
    pub(super) large_objects: Option<TableManifest>,
    pub(super) bytes_read: u64,
    /// Tables read as their storage holds them, not in primary-key order, and why.
    pub(super) warnings: Vec<String>,
}

/// Reads the schema and every table, feeding the encoders.
pub(super) async fn read_everything(
    session: &SnapshotSession,
    pg_dump: &std::path::Path,
    options: &BackupOptions,
    tables: Vec<SourceTable>,
    context: &EncoderContext,
    progress: &Progress,
) -> Result<ReadResult> {
    let pre = postgres::dump_schema(pg_dump, &options.database, &session.snapshot, Section::PreData);
    let post = postgres::dump_schema(pg_dump, &options.database, &session.snapshot, Section::PostData);
    let warnings = tables.iter().filter_map(needs_a_path).collect();
    let queue = Arc::new(Mutex::new(VecDeque::from(tables)));
    let mut workers = JoinSet::new();
    for _ in 0..options.jobs.max(1) {
        let queue = queue.clone();
        let database = options.database.clone();
        let snapshot = session.snapshot.clone();
        let context = context.clone();
        let progress = progress.clone();
        workers.spawn(async move {
            let mut done = Vec::new();
            let next = || queue.lock().expect("queue lock is never poisoned").pop_front();
            let Some(mut table) = next() else {
                return Ok(done);
            };
            let client = postgres::attach_to_snapshot(&database, &snapshot).await?;
            loop {
                done.push(read_table(&client, &table, &context, &progress).await?);
                match next() {
                    Some(following) => table = following,
                    None => break,
                }
            }
            Ok::<_, Error>(done)
        });
    }
    let large_objects = read_large_objects(session, context, progress);
    let (pre, post, large_objects) = tokio::try_join!(pre, post, large_objects)?;
    // Stored as the server will run it: pg_dump's random `\restrict` key would defeat dedup.
    let (pre, post) = (postgres::executable_sql(&pre)?.into_bytes(), postgres::executable_sql(&post)?.into_bytes());
    let pre_data = encode_bytes(context, pre).await?;
    let post_data = encode_bytes(context, post).await?;
    let mut manifests = Vec::new();
    while let Some(result) = workers.join_next().await {
        manifests.extend(result.expect("table readers do not panic")?);
    }
    manifests.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    let bytes_read = pre_data.bytes
        + post_data.bytes
        + manifests.iter().chain(large_objects.iter()).map(|t| t.data.bytes).sum::<u64>();
    Ok(ReadResult { pre_data, post_data, tables: manifests, large_objects, bytes_read, warnings })
}

/// A table whose index calls an SQL function with no search_path of its own: what restoring
/// it needs, said every night until the function has one.
fn needs_a_path(table: &SourceTable) -> Option<String> {
    if table.calls_needing_a_path.is_empty() {
        return None;
    }
    let functions = table.calls_needing_a_path.iter().map(|f| crate::error::printable(f)).collect::<Vec<_>>();
    let warning = format!(
        "{}.{}: an index or statistics object on it calls {}, an SQL function with no search_path of its own: \
         restoring it fails under pg_dump's empty search_path where the function names objects without their \
         schema (pg_restore's too); restore with --search-path naming the schemas it needs, or give it one \
         (ALTER FUNCTION … SET search_path = …; docs/OPERATIONS.md)",
        crate::error::printable(&table.schema),
        crate::error::printable(&table.name),
        functions.join(", ")
    );
    tracing::warn!("{warning}");
    Some(warning)
}

/// Streams one table through an encoder (inside the snapshot's transaction).
pub(super) async fn read_table(
    client: &tokio_postgres::Client,
    table: &SourceTable,
    context: &EncoderContext,
    progress: &Progress,
) -> Result<TableManifest> {
    let (data, rows) = read_copy(client, &table.copy_out_sql(), context, progress).await?;
    tracing::debug!(table = %table.qualified(), rows, bytes = data.bytes, "table read");
    progress.item_done(&format!("{}.{}", table.schema, table.name));
    Ok(TableManifest {
        schema: table.schema.clone(),
        name: table.name.clone(),
        columns: table.columns.clone(),
        primary_key: table.primary_key.clone(),
        rows,
        data,
    })
}

/// Large objects' contents, when there are any.
pub(super) async fn read_large_objects(
    session: &SnapshotSession,
    context: &EncoderContext,
    progress: &Progress,
) -> Result<Option<TableManifest>> {
    if !session.has_large_objects().await? {
        return Ok(None);
    }
    let (data, rows) = read_copy(&session.client, postgres::LARGE_OBJECTS_COPY_OUT, context, progress).await?;
    let columns = vec!["loid".to_string(), "data".to_string()];
    Ok(Some(TableManifest {
        schema: "pg_catalog".into(),
        name: "pg_largeobject".into(),
        columns,
        primary_key: vec!["loid".into()],
        rows,
        data,
    }))
}

/// Runs one `COPY … TO STDOUT` through an encoder: the stream's manifest and its row count.
pub(super) async fn read_copy(
    client: &tokio_postgres::Client,
    sql: &str,
    context: &EncoderContext,
    progress: &Progress,
) -> Result<(StreamManifest, u64)> {
    let (sender, mut receiver) = mpsc::channel::<Bytes>(16);
    let encoder_context = context.clone();
    let encoder = tokio::task::spawn_blocking(move || {
        let mut encoder = StreamEncoder::new(encoder_context);
        while let Some(data) = receiver.blocking_recv() {
            encoder.push(&data)?;
        }
        encoder.finish()
    });
    let copy = async {
        let stream = client.copy_out(sql).await?;
        futures::pin_mut!(stream);
        // PostgreSQL sends one message per row: hand them over in batches, or the per-message
        // cost of the channel and thread wake-ups dominates.
        let mut batch = BytesMut::with_capacity(COPY_BATCH);
        while let Some(data) = stream.next().await {
            batch.extend_from_slice(&data?);
            if batch.len() >= COPY_BATCH {
                progress.advance(batch.len() as u64);
                if sender.send(batch.split().freeze()).await.is_err() {
                    break;
                }
                batch.reserve(COPY_BATCH);
            }
        }
        if !batch.is_empty() {
            progress.advance(batch.len() as u64);
            let _ = sender.send(batch.freeze()).await;
        }
        drop(sender);
        Ok::<_, Error>(())
    };
    let copied = copy.await;
    let encoded = encoder.await.expect("the encoder does not panic");
    copied?;
    encoded
}
