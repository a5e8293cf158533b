//! Reading the database: every selected table's COPY stream inside the exported snapshot,
//! the schema sections and large objects, handed to the encoders in batches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
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
    Ok(ReadResult { pre_data, post_data, tables: manifests, large_objects, bytes_read })
}

/// Streams one table through an encoder.
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
    Ok(Some(TableManifest { schema: "pg_catalog".into(), name: "pg_largeobject".into(), columns, rows, data }))
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

/// A table pattern as matched against `schema.table`: one without a schema part matches that
/// table in every schema (`--table`, `--exclude-table`, `--alarm-table`).
pub(super) fn qualified(pattern: &str) -> String {
    if pattern.contains('.') { pattern.to_string() } else { format!("*.{pattern}") }
}

/// `--table` / `--exclude-table` patterns, matched against `schema.table`.
#[derive(Debug)]
pub(super) struct TableFilter {
    pub(super) include: Option<GlobSet>,
    pub(super) exclude: GlobSet,
    /// The patterns as given, in the order of the sets' globs.
    include_patterns: Vec<String>,
    exclude_patterns: Vec<String>,
}

impl TableFilter {
    pub(super) fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        let build = |patterns: &[String]| -> Result<GlobSet> {
            let mut builder = GlobSetBuilder::new();
            for pattern in patterns {
                let glob = Glob::new(&qualified(pattern))
                    .map_err(|e| Error::Invalid(format!("bad table pattern {pattern:?}: {e}")))?;
                builder.add(glob);
            }
            builder.build().map_err(|e| Error::Invalid(format!("bad table patterns: {e}")))
        };
        Ok(TableFilter {
            include: if include.is_empty() { None } else { Some(build(include)?) },
            exclude: build(exclude)?,
            include_patterns: include.to_vec(),
            exclude_patterns: exclude.to_vec(),
        })
    }

    /// The include patterns that match none of `names` (`schema.table`): each is a mistake
    /// that would otherwise leave its tables out of every backup without a word.
    pub(super) fn unmatched_includes<'a>(&'a self, names: &[String]) -> Vec<&'a str> {
        let Some(set) = &self.include else { return Vec::new() };
        Self::unmatched(set, &self.include_patterns, names)
    }

    /// The exclude patterns that match none of `names`.
    pub(super) fn unmatched_excludes<'a>(&'a self, names: &[String]) -> Vec<&'a str> {
        Self::unmatched(&self.exclude, &self.exclude_patterns, names)
    }

    fn unmatched<'a>(set: &GlobSet, patterns: &'a [String], names: &[String]) -> Vec<&'a str> {
        let mut matched = vec![false; patterns.len()];
        for name in names {
            for index in set.matches(name) {
                matched[index] = true;
            }
        }
        patterns.iter().zip(matched).filter(|(_, m)| !m).map(|(p, _)| p.as_str()).collect()
    }

    pub(super) fn matches(&self, schema: &str, table: &str) -> bool {
        self.matches_name(&format!("{schema}.{table}"))
    }

    pub(super) fn matches_name(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(name)) && !self.exclude.is_match(name)
    }

    /// Refuses a selection whose restore would fail: a kept table referencing a left-out one.
    pub(super) fn check_foreign_keys(&self, foreign_keys: &[(String, String)]) -> Result<()> {
        for (referencing, referenced) in foreign_keys {
            if self.matches_name(referencing) && !self.matches_name(referenced) {
                return Err(Error::Invalid(format!(
                    "{referencing} has a foreign key to {referenced}, whose data the table patterns leave out; \
                     a restore could not rebuild that key: keep {referenced} or leave out {referencing} too"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_patterns_match_schema_qualified_names() {
        let filter = TableFilter::new(&["crm.*".into(), "audit_log".into()], &["crm.tmp_*".into()]).unwrap();
        assert!(filter.matches("crm", "contacts"));
        assert!(filter.matches("billing", "audit_log"));
        assert!(!filter.matches("crm", "tmp_import"));
        assert!(!filter.matches("billing", "invoices"));
    }

    #[test]
    fn patterns_that_match_no_table_are_named() {
        let filter =
            TableFilter::new(&["crm.*".into(), "nosuch.*".into()], &["crm.tmp_*".into(), "gone".into()]).unwrap();
        let names = vec!["crm.contacts".to_string(), "crm.tmp_import".to_string()];
        assert_eq!(filter.unmatched_includes(&names), vec!["nosuch.*"]);
        assert_eq!(filter.unmatched_excludes(&names), vec!["gone"]);
        let everything = TableFilter::new(&[], &[]).unwrap();
        assert!(everything.unmatched_includes(&names).is_empty());
    }
}
