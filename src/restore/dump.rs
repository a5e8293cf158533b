//! `dump`: one table of a snapshot streamed out, proven, without restoring anything: only that
//! table's chunks are read. Rows go out as PostgreSQL's COPY text, CSV (with a header) or JSON
//! lines (one object per row, column names as keys, values as text or null). The digest and
//! row count are checked when the stream ends: what was written before a failure must not be
//! trusted, and the error says so.

use std::io::Write;
use std::sync::Arc;

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::fetch::ChunkReader;
use crate::progress::Progress;
use crate::repo::{AdminKeyring, Keyring, SnapshotFilter, SnapshotId, StreamManifest, TableManifest};
use crate::repo_set::RepoSet;
use crate::trust::SnapshotMark;

use super::rows::{self, Lines};
use super::select::{Choice, choose_snapshot};
use super::streams::{Streams, spool_chunks};

/// How rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// PostgreSQL's COPY text, as stored (`COPY … FROM STDIN` reads it back).
    Copy,
    /// CSV with a header line of the column names (RFC 4180; an empty unquoted field is NULL).
    Csv,
    /// One JSON object per line: column names as keys, values as text, NULL as null.
    Json,
}

/// What to dump.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// `latest` or an id prefix.
    pub snapshot: String,
    /// Which snapshots `latest` chooses among.
    pub filter: SnapshotFilter,
    /// `schema.table` (a name alone: the one table of that name in any schema).
    pub table: String,
    /// How rows are written.
    pub format: DumpFormat,
    /// Which rows are written (all when empty): each condition must hold.
    pub conditions: Vec<Condition>,
    /// Chunks decoded in parallel.
    pub jobs: usize,
    /// The newest snapshot the caller knows of.
    pub newest_known: Option<SnapshotMark>,
}

/// What a dump wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DumpReport {
    /// The snapshot.
    pub snapshot_id: SnapshotId,
    /// `schema.table`.
    pub table: String,
    /// Rows the table has (the snapshot's count, checked).
    pub rows: u64,
    /// Rows written (fewer than `rows` with conditions).
    pub written: u64,
    /// The output's reader went away (`| head`) before the end was written: the dump stopped
    /// there, `rows` counting what was read so far, each row from a chunk checked against its
    /// id.
    pub reader_left: bool,
    /// Whether the table was read to its end and its digest and row count checked (false only
    /// when the reader left before).
    pub checked: bool,
    /// Bytes of COPY text read.
    pub bytes: u64,
    /// The snapshot's place in the chain, proven: the caller's high-water mark may advance.
    #[serde(skip)]
    pub mark: SnapshotMark,
}

/// Writes one table of a snapshot to `out`.
pub async fn run(
    targets: &RepoSet,
    keyring: &AdminKeyring,
    options: &DumpOptions,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<DumpReport> {
    let mut warnings = Vec::new();
    let choice = Choice {
        snapshot: &options.snapshot,
        filter: &options.filter,
        newest_known: options.newest_known.as_ref(),
        index_in_memory: crate::repo::INDEX_IN_MEMORY,
    };
    let chosen = choose_snapshot(targets, keyring, choice, &mut warnings).await?;
    let (mut manifest, sources, mark) = (chosen.manifest, chosen.sources, chosen.mark);
    let index = match super::select::table_named(&manifest, &options.table) {
        Ok(index) => index,
        Err(error) => {
            let reader = Arc::new(ChunkReader::with_sources(sources, Keyring::clone(keyring), 4));
            return Err(partitioned(&reader, keyring, manifest, &options.table, progress).await?.unwrap_or(error));
        }
    };
    // Only this table's chunks are read.
    let table = manifest.tables.swap_remove(index);
    manifest.tables = vec![table];
    manifest.large_objects = None;
    manifest.pre_data = StreamManifest::default();
    manifest.post_data = StreamManifest::default();
    let reader = Arc::new(ChunkReader::with_sources(sources, Keyring::clone(keyring), options.jobs * 2 + 2));
    let spool = spool_chunks(&reader, &mut manifest).await?;
    let mac_key = keyring.mac_key();
    let streams = Streams { reader: &reader, spool: &spool, mac_key: &mac_key, jobs: options.jobs.max(1), progress };
    let table = &manifest.tables[0];
    let label = format!("{}.{}", table.schema, table.name);
    let matching = RowFilter::new(&options.conditions, table)?;
    let mut writer = RowWriter::new(options.format, &table.columns, &matching);
    let out = &mut Output { out, reader_left: false };
    let mut digest = mac_key.hasher();
    let (mut rows, mut bytes, mut read_whole) = (0u64, 0u64, false);
    let written = async {
        writer.header(out)?;
        let chunks = streams.chunks(&table.data);
        futures::pin_mut!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            digest.update(&chunk);
            bytes += chunk.len() as u64;
            rows += memchr::memchr_iter(b'\n', &chunk).count() as u64;
            writer.write(&chunk, out)?;
            progress.advance(chunk.len() as u64);
        }
        read_whole = true;
        writer.finish(out)?;
        out.flush().map_err(write_error)
    }
    .await;
    let reader_left = out.reader_left;
    match written {
        Err(_) if reader_left => {}
        Err(error) => return Err(error),
        Ok(()) => {}
    }
    // Read to its end (the reader may have left at the last chunk's write), the table is
    // checked, whoever stopped reading what was written.
    read_whole |= bytes == table.data.bytes;
    if read_whole {
        super::check_table(&label, table, &digest, rows)?;
    }
    let written = if matching.is_empty() { rows } else { writer.written };
    let snapshot_id = mark.id.clone();
    Ok(DumpReport { snapshot_id, table: label, rows, written, bytes, reader_left, checked: read_whole, mark })
}

/// A table the snapshot holds no data of by `name` may be a partitioned table, whose rows are
/// its partitions': said so, with their names, read from the snapshot's schema.
async fn partitioned(
    reader: &Arc<ChunkReader>,
    keyring: &AdminKeyring,
    mut manifest: crate::repo::Manifest,
    name: &str,
    progress: &dyn Progress,
) -> Result<Option<Error>> {
    manifest.tables.clear();
    manifest.large_objects = None;
    let spool = spool_chunks(reader, &mut manifest).await?;
    let mac_key = keyring.mac_key();
    let streams = Streams { reader, spool: &spool, mac_key: &mac_key, jobs: 1, progress };
    let pre_data = crate::postgres::executable_sql(&streams.read("schema (pre-data)", &manifest.pre_data).await?)?;
    let post_data = crate::postgres::executable_sql(&streams.read("schema (post-data)", &manifest.post_data).await?)?;
    let partitions = crate::postgres::part::Partitions::of(&pre_data, &post_data);
    let printable =
        |t: &crate::postgres::script::TableName| crate::error::printable(&format!("{}.{}", t.schema, t.name));
    for parent in partitions.parents() {
        if format!("{}.{}", parent.schema, parent.name) != name && parent.name != name {
            continue;
        }
        let leaves: Vec<String> = partitions.leaves(parent).iter().filter(|t| *t != parent).map(printable).collect();
        if leaves.is_empty() {
            continue;
        }
        return Ok(Some(Error::Invalid(format!(
            "{} is a partitioned table: its rows are in its partitions {}; dump each with --table (`restore \
             --table {}` restores the table with them all)",
            printable(parent),
            leaves.join(", "),
            printable(parent)
        ))));
    }
    Ok(None)
}

/// Where the rows go, noting a reader that went away (a closed pipe): what follows is not
/// wanted, which ends the dump, not as a failure.
struct Output<'a> {
    out: &'a mut dyn Write,
    reader_left: bool,
}

impl Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(buf);
        self.reader_left |= written.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
        written
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let flushed = self.out.flush();
        self.reader_left |= flushed.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
        flushed
    }
}

/// A condition on the rows `dump` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `--where column=value`: the column's value, as text, is `value` (NULL never is).
    Equals {
        /// The column.
        column: String,
        /// Its value as text.
        value: String,
    },
    /// `--key value`: the table's one-column primary key is `value`.
    Key(String),
}

impl std::str::FromStr for Condition {
    type Err = String;

    /// `column=value` (cut at the first `=`).
    fn from_str(text: &str) -> std::result::Result<Condition, String> {
        match text.split_once('=') {
            Some((column, value)) if !column.trim().is_empty() => {
                Ok(Condition::Equals { column: column.trim().to_string(), value: value.to_string() })
            }
            _ => Err(format!(
                "{text:?}: --where takes column=value, which keeps the rows whose column has that value as text"
            )),
        }
    }
}

/// As the admin wrote it, the value quoted so that spaces show: `--where email=" a@b"`.
impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Equals { column, value } => write!(f, "--where {column}={value:?}"),
            Condition::Key(value) => write!(f, "--key {value:?}"),
        }
    }
}

/// Conditions resolved against one table's columns: (column number, value).
#[derive(Debug, Default)]
struct RowFilter(Vec<(usize, String)>);

impl RowFilter {
    fn new(conditions: &[Condition], table: &TableManifest) -> Result<RowFilter> {
        let label = format!("{}.{}", table.schema, table.name);
        let position = |column: &str| {
            table.columns.iter().position(|c| c == column).ok_or_else(|| {
                Error::Invalid(format!(
                    "{label} has no column {column:?} in this snapshot; its columns: {}",
                    table.columns.join(", ")
                ))
            })
        };
        let mut resolved = Vec::new();
        for condition in conditions {
            match condition {
                Condition::Equals { column, value } => resolved.push((position(column)?, value.clone())),
                Condition::Key(value) => match table.primary_key.as_slice() {
                    [column] => resolved.push((position(column)?, value.clone())),
                    [] => {
                        return Err(Error::Invalid(format!(
                            "{label} has no primary key recorded in this snapshot (none, or the snapshot is from a \
                             build before keys were recorded): use --where column=value"
                        )));
                    }
                    columns => {
                        return Err(Error::Invalid(format!(
                            "{label}'s primary key has several columns ({}): use --where for each",
                            columns.join(", ")
                        )));
                    }
                },
            }
        }
        Ok(RowFilter(resolved))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn matches(&self, line: &[u8]) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let fields: Vec<&[u8]> = rows::fields(line).collect();
        self.0.iter().all(|(at, value)| {
            fields.get(*at).and_then(|field| rows::copy_value(field)).is_some_and(|text| text == *value)
        })
    }
}

/// Turns COPY text into the chosen format, a line at a time (a chunk may end inside a line).
struct RowWriter<'c> {
    format: DumpFormat,
    columns: &'c [String],
    lines: Lines,
    /// Rows written must match this (`--where`, `--key`).
    matching: &'c RowFilter,
    /// Rows written.
    written: u64,
}

impl<'c> RowWriter<'c> {
    fn new(format: DumpFormat, columns: &'c [String], matching: &'c RowFilter) -> RowWriter<'c> {
        RowWriter { format, columns, lines: Lines::default(), matching, written: 0 }
    }

    fn header(&self, out: &mut dyn Write) -> Result<()> {
        if self.format == DumpFormat::Csv {
            let names: Vec<String> = self.columns.iter().map(|c| csv_field(Some(c))).collect();
            writeln!(out, "{}", names.join(",")).map_err(write_error)?;
        }
        Ok(())
    }

    fn write(&mut self, chunk: &[u8], out: &mut dyn Write) -> Result<()> {
        if self.format == DumpFormat::Copy && self.matching.is_empty() {
            return out.write_all(chunk).map_err(write_error);
        }
        let mut lines = std::mem::take(&mut self.lines);
        let result = lines.feed(chunk, |line| self.row(line, out));
        self.lines = lines;
        result
    }

    fn finish(&mut self, out: &mut dyn Write) -> Result<()> {
        let mut lines = std::mem::take(&mut self.lines);
        lines.finish(|line| self.row(line, out))
    }

    /// One row of COPY text (without its line break).
    fn row(&mut self, line: &[u8], out: &mut dyn Write) -> Result<()> {
        if !self.matching.matches(line) {
            return Ok(());
        }
        self.written += 1;
        // A table without columns: each row is nothing (an empty line, an empty object).
        if self.columns.is_empty() {
            let empty = if self.format == DumpFormat::Json { "{}" } else { "" };
            return writeln!(out, "{empty}").map_err(write_error);
        }
        if self.format == DumpFormat::Copy {
            out.write_all(line).and_then(|()| out.write_all(b"\n")).map_err(write_error)?;
            return Ok(());
        }
        let values: Vec<Option<String>> = rows::fields(line).map(rows::copy_value).collect();
        if self.format == DumpFormat::Csv {
            let fields: Vec<String> = values.iter().map(|v| csv_field(v.as_deref())).collect();
            return writeln!(out, "{}", fields.join(",")).map_err(write_error);
        }
        // In the table's column order (a JSON map would sort the keys).
        let mut object = String::from("{");
        for (i, (column, value)) in self.columns.iter().zip(values).enumerate() {
            if i > 0 {
                object.push(',');
            }
            object.push_str(&serde_json::Value::String(column.clone()).to_string());
            object.push(':');
            object.push_str(&value.map_or(serde_json::Value::Null, serde_json::Value::String).to_string());
        }
        object.push('}');
        writeln!(out, "{object}").map_err(write_error)
    }
}

#[allow(clippy::needless_pass_by_value, reason = "map_err hands it over")]
fn write_error(error: std::io::Error) -> Error {
    Error::Invalid(format!("writing the rows: {error}"))
}

/// A CSV field: NULL is empty and unquoted; an empty string is `""`; a value with a comma,
/// quote, line break or surrounding space is quoted, quotes doubled.
fn csv_field(value: Option<&str>) -> String {
    match value {
        None => String::new(),
        Some("") => "\"\"".into(),
        Some(text) if text.contains([',', '"', '\n', '\r']) || text.starts_with(' ') || text.ends_with(' ') => {
            format!("\"{}\"", text.replace('"', "\"\""))
        }
        Some(text) => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_becomes_csv_and_json_across_chunk_boundaries() {
        let columns = vec!["id".to_string(), "note, \"quoted\"".to_string(), "empty".to_string()];
        let copy = b"1\tline one\\nline two\t\\N\n2\ttab\\there, \"q\"\t\n3\t\\303\\251t\\xc3\\xa9\t \n";
        for format in [DumpFormat::Csv, DumpFormat::Json] {
            let mut out = Vec::new();
            let everything = RowFilter::default();
            let mut writer = RowWriter::new(format, &columns, &everything);
            writer.header(&mut out).unwrap();
            // Cut anywhere: the same output.
            for piece in copy.chunks(5) {
                writer.write(piece, &mut out).unwrap();
            }
            writer.finish(&mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            if format == DumpFormat::Csv {
                assert_eq!(
                    text,
                    "id,\"note, \"\"quoted\"\"\",empty\n1,\"line one\nline two\",\n2,\"tab\there, \"\"q\"\"\",\"\"\n3,été,\" \"\n"
                );
            } else {
                assert!(text.starts_with("{\"id\":\"1\",\"note, "), "column order: {text}");
                let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
                assert_eq!(rows[0]["note, \"quoted\""], "line one\nline two");
                assert_eq!(rows[0]["empty"], serde_json::Value::Null);
                assert_eq!(rows[1]["empty"], "");
                assert_eq!(rows[2]["note, \"quoted\""], "été");
            }
        }
    }
}
