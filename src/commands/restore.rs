//! `restore`: rebuild a database from a snapshot, all or nothing.
//!
//! Everything happens in one transaction on one connection: pre-data DDL, every table's data
//! (`COPY … FREEZE`, since each table was created in this transaction), sequence values,
//! post-data DDL, then COMMIT. Any failure (a damaged chunk, a digest or row-count mismatch,
//! a server error, the process being killed) ends the connection without COMMIT, so the
//! target database is left exactly as it was. `--jobs` sets how many chunks are fetched,
//! decrypted, decompressed and proven in parallel ahead of the loader.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};

use crate::crypto::{ChunkId, MacKey};
use crate::error::{Error, Result};
use crate::fetch::{ChunkReader, ReadStats, Source};
use crate::repo::{self, Keyring, Manifest, Repository, StreamManifest, TableManifest};
use crate::source::{self, Database};

/// What an existing target database may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingContents {
    /// Refuse a database that holds any user object.
    Refuse,
    /// Drop every user schema first (inside the restore transaction).
    Replace,
}

/// Restore parameters.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Target database.
    pub database: Database,
    /// `latest` or an id prefix.
    pub snapshot: String,
    /// Chunks decoded in parallel.
    pub jobs: usize,
    /// What to do with a non-empty target.
    pub existing: ExistingContents,
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    /// The snapshot restored.
    pub snapshot_id: String,
    /// Tables loaded.
    pub tables: usize,
    /// Rows loaded (each table's count checked against the manifest).
    pub rows: u64,
    /// Bytes of COPY data loaded.
    pub bytes: u64,
    /// Chunks read and proven.
    pub chunks: usize,
    /// Which target served how many chunks, and every fallback to the next target.
    pub sources: ReadStats,
}

/// Resolves `latest` or an id prefix over several copies of a repository.
pub async fn resolve_snapshot(repositories: &[Repository], selector: &str) -> Result<String> {
    let mut found: Vec<(chrono::DateTime<chrono::Utc>, String)> = Vec::new();
    let mut first_error = None;
    for repository in repositories {
        let resolved = match repository.resolve_snapshot(selector).await {
            Ok(id) => repository.read_snapshot_header(&id).await.map(|header| (header.time, id)),
            Err(error) => Err(error),
        };
        match resolved {
            Ok(entry) => found.push(entry),
            Err(error) => {
                if repositories.len() > 1 {
                    tracing::warn!("{}: {error}", repository.target.location());
                }
                first_error.get_or_insert(error);
            }
        }
    }
    found.sort();
    found.dedup_by(|a, b| a.1 == b.1);
    if selector != "latest" && found.len() > 1 {
        return Err(Error::SnapshotNotFound(format!("{selector} matches {} snapshots; give more digits", found.len())));
    }
    match (found.pop(), first_error) {
        (Some((_, id)), _) => Ok(id),
        (None, Some(error)) => Err(error),
        (None, None) => Err(Error::Invalid("restore needs at least one --repo".into())),
    }
}

/// Opens a snapshot on every target that holds it and gathers the chunk sources.
pub async fn open_snapshot(
    repositories: &[Repository],
    keyring: &Keyring,
    snapshot_id: &str,
) -> Result<(Manifest, Vec<Source>)> {
    let mut manifest = None;
    let mut sources = Vec::new();
    let mut first_error = None;
    for repository in repositories {
        let sealed = match repository.read_snapshot(snapshot_id).await {
            Ok(sealed) if sealed.header.config_hash != repository.config_hash => Err(Error::corrupt(
                format!("{}/{}", repository.target.location(), repo::CONFIG_KEY),
                format!("differs from the one snapshot {snapshot_id} was written under"),
            )),
            other => other,
        };
        let opened = match sealed {
            Ok(sealed) => sealed.open(keyring).map(|m| (Some(m), Some(sealed.header.indexes))),
            Err(Error::Missing { .. }) => Ok((None, None)),
            Err(error) => Err(error),
        };
        let indexes = match opened {
            Ok((opened, indexes)) => {
                if manifest.is_none() {
                    manifest = opened;
                }
                indexes
            }
            Err(error) => {
                tracing::warn!("{}: {error}", repository.target.location());
                first_error.get_or_insert(error);
                None
            }
        };
        // A target whose copy of the snapshot is lost or damaged may still hold the chunks.
        let (index, failures) = repository.load_index_lenient(keyring, indexes.as_deref()).await?;
        for (key, error) in failures {
            tracing::warn!("{}: {key}: {error}", repository.target.location());
            first_error.get_or_insert(error);
        }
        sources.push(Source::new(repository.target.clone(), Arc::new(index)));
    }
    match (manifest, first_error) {
        (Some(manifest), _) => Ok((manifest, sources)),
        (None, Some(error)) => Err(error),
        (None, None) => Err(Error::SnapshotNotFound(format!("no target holds snapshot {snapshot_id}"))),
    }
}

/// Restores a snapshot into `options.database`, reading from the first target that has each chunk.
pub async fn run(repositories: &[Repository], keyring: &Keyring, options: &RestoreOptions) -> Result<RestoreReport> {
    let snapshot_id = resolve_snapshot(repositories, &options.snapshot).await?;
    let (mut manifest, sources) = open_snapshot(repositories, keyring, &snapshot_id).await?;
    let reader = Arc::new(ChunkReader::with_sources(sources, keyring.clone(), options.jobs * 2 + 2));
    crate::fetch::expand_lists(&mut manifest, &reader).await?;
    // Every chunk must be findable before the database is touched.
    for id in manifest.all_chunks() {
        reader.locate(id)?;
    }
    let mac_key = keyring.mac_key();
    let jobs = options.jobs.max(1);
    let pre_data = read_stream(&reader, &mac_key, "schema (pre-data)", &manifest.pre_data, jobs).await?;
    let post_data = read_stream(&reader, &mac_key, "schema (post-data)", &manifest.post_data, jobs).await?;

    let client = options.database.connect().await?;
    if let Some(contents) = source::describe_contents(&client).await? {
        if options.existing == ExistingContents::Refuse {
            return Err(Error::TargetNotEmpty { database: options.database.to_string(), detail: contents });
        }
    }
    client.batch_execute("BEGIN").await?;
    if options.existing == ExistingContents::Replace {
        source::clean_database(&client).await?;
    }
    client.batch_execute(&source::executable_sql(&pre_data)?).await?;
    // pg_dump's preamble empties search_path for this session; names below are qualified.

    if let Some(large_objects) = &manifest.large_objects {
        client.batch_execute(source::LARGE_OBJECTS_STAGE).await?;
        load_stream(&client, &reader, &mac_key, source::LARGE_OBJECTS_COPY_IN, large_objects, jobs).await?;
        client.batch_execute(source::LARGE_OBJECTS_WRITE).await?;
    }
    let mut rows = 0;
    let mut bytes = 0;
    for table in &manifest.tables {
        let sql = source::copy_in_sql(&table.schema, &table.name, &table.columns, true);
        rows += load_stream(&client, &reader, &mac_key, &sql, table, jobs).await?;
        bytes += table.data.bytes;
    }
    for sequence in &manifest.sequences {
        client
            .execute(
                "SELECT pg_catalog.setval(pg_catalog.format('%I.%I', $1::text, $2::text)::regclass, $3, $4)",
                &[&sequence.schema, &sequence.name, &sequence.last_value, &sequence.is_called],
            )
            .await?;
    }
    client.batch_execute(&source::executable_sql(&post_data)?).await?;
    for (schema, name) in &manifest.materialized_views {
        client
            .batch_execute(&format!(
                "REFRESH MATERIALIZED VIEW {}.{}",
                source::quote_ident(schema),
                source::quote_ident(name)
            ))
            .await?;
    }
    client.batch_execute("COMMIT").await?;
    Ok(RestoreReport {
        snapshot_id,
        tables: manifest.tables.len(),
        rows,
        bytes,
        chunks: manifest.all_chunks().count(),
        sources: reader.stats(),
    })
}

/// Loads one table's stream with `sql` (a COPY FROM STDIN), checking digest and row count.
async fn load_stream(
    client: &tokio_postgres::Client,
    reader: &Arc<ChunkReader>,
    mac_key: &MacKey,
    sql: &str,
    table: &TableManifest,
    jobs: usize,
) -> Result<u64> {
    let label = format!("{}.{}", table.schema, table.name);
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    futures::pin_mut!(sink);
    let mut digest = mac_key.hasher();
    let chunks = chunk_stream(reader, &table.data.chunks, jobs);
    futures::pin_mut!(chunks);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        digest.update(&chunk);
        sink.send(Bytes::from(chunk)).await?;
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
    Ok(loaded)
}

/// Chunks decoded together (about 128 KiB at the default chunk size).
const RUN: usize = 32;

/// Proven plaintext of a stream, in order, in runs of [`RUN`] chunks, `jobs` × 2 runs decoded ahead.
pub fn chunk_stream<'a>(
    reader: &'a Arc<ChunkReader>,
    chunks: &'a [ChunkId],
    jobs: usize,
) -> impl Stream<Item = Result<Vec<u8>>> + 'a {
    futures::stream::iter(chunks.chunks(RUN)).map(move |run| reader.read_run(run)).buffered(jobs * 2)
}

/// Reads a whole (small) stream and checks its digest.
pub async fn read_stream(
    reader: &Arc<ChunkReader>,
    mac_key: &MacKey,
    label: &str,
    stream: &StreamManifest,
    jobs: usize,
) -> Result<Vec<u8>> {
    let mut digest = mac_key.hasher();
    let mut bytes = Vec::with_capacity(usize::try_from(stream.bytes).unwrap_or(0));
    let chunks = chunk_stream(reader, &stream.chunks, jobs);
    futures::pin_mut!(chunks);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        digest.update(&chunk);
        bytes.extend_from_slice(&chunk);
    }
    check_digest(label, stream, &digest)?;
    Ok(bytes)
}

fn check_digest(label: &str, stream: &StreamManifest, digest: &blake3::Hasher) -> Result<()> {
    if digest.finalize().to_hex().as_str() != stream.digest {
        return Err(Error::RestoreMismatch {
            table: label.to_string(),
            detail: "its data does not match the snapshot's digest".into(),
        });
    }
    Ok(())
}
