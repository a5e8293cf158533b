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
use crate::repo::{AdminKeyring, Keyring, SnapshotFilter, SnapshotId, StreamManifest};
use crate::repo_set::RepoSet;
use crate::trust::SnapshotMark;

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
    /// Rows written (the snapshot's count, checked).
    pub rows: u64,
    /// Bytes of COPY text read.
    pub bytes: u64,
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
    let (mut manifest, sources, mark) = choose_snapshot(targets, keyring, choice, &mut warnings).await?;
    let (schema, name) = match options.table.split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, options.table.as_str()),
    };
    let matching: Vec<usize> = manifest
        .tables
        .iter()
        .enumerate()
        .filter(|(_, t)| t.name == name && schema.is_none_or(|schema| t.schema == schema))
        .map(|(i, _)| i)
        .collect();
    let index = match matching.as_slice() {
        [one] => *one,
        [] => {
            return Err(Error::Invalid(format!(
                "snapshot {} holds no data of a table {} (`crmvault ls` lists its tables)",
                mark.id.short(),
                options.table
            )));
        }
        _ => {
            return Err(Error::Invalid(format!(
                "{} names a table in several schemas of snapshot {}: give schema.table",
                options.table,
                mark.id.short()
            )));
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
    let mut writer = RowWriter::new(options.format, &table.columns);
    writer.header(out)?;
    let mut digest = mac_key.hasher();
    let (mut rows, mut bytes) = (0u64, 0u64);
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
    writer.finish(out)?;
    out.flush().map_err(|e| Error::Invalid(format!("writing the rows: {e}")))?;
    super::check_digest(&label, &table.data, &digest)?;
    if rows != table.rows {
        return Err(Error::RestoreMismatch {
            table: label,
            detail: format!("read {rows} rows, the snapshot has {}", table.rows),
        });
    }
    Ok(DumpReport { snapshot_id: mark.id, table: label, rows, bytes })
}

/// Turns COPY text into the chosen format, a line at a time (a chunk may end inside a line).
struct RowWriter<'c> {
    format: DumpFormat,
    columns: &'c [String],
    partial: Vec<u8>,
}

impl<'c> RowWriter<'c> {
    fn new(format: DumpFormat, columns: &'c [String]) -> RowWriter<'c> {
        RowWriter { format, columns, partial: Vec::new() }
    }

    fn header(&self, out: &mut dyn Write) -> Result<()> {
        if self.format == DumpFormat::Csv {
            let names: Vec<String> = self.columns.iter().map(|c| csv_field(Some(c))).collect();
            writeln!(out, "{}", names.join(",")).map_err(write_error)?;
        }
        Ok(())
    }

    fn write(&mut self, chunk: &[u8], out: &mut dyn Write) -> Result<()> {
        if self.format == DumpFormat::Copy {
            return out.write_all(chunk).map_err(write_error);
        }
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if self.partial.is_empty() {
                self.row(&rest[..end], out)?;
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.partial);
                self.row(&line, out)?;
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    fn finish(&mut self, out: &mut dyn Write) -> Result<()> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.row(&line, out)?;
        }
        Ok(())
    }

    /// One row of COPY text (without its line break).
    fn row(&self, line: &[u8], out: &mut dyn Write) -> Result<()> {
        let values: Vec<Option<String>> = line.split(|&b| b == b'\t').map(copy_value).collect();
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

/// A COPY text field: `\N` is NULL; backslash escapes (`\t`, `\n`, `\\`, octal, `\x` hex)
/// decoded. Bytes that are not UTF-8 (the server writes UTF-8) are replaced.
fn copy_value(field: &[u8]) -> Option<String> {
    if field == b"\\N" {
        return None;
    }
    let mut bytes = Vec::with_capacity(field.len());
    let mut at = 0;
    while at < field.len() {
        let b = field[at];
        if b != b'\\' || at + 1 == field.len() {
            bytes.push(b);
            at += 1;
            continue;
        }
        let next = field[at + 1];
        at += 2;
        match next {
            b'b' => bytes.push(8),
            b'f' => bytes.push(12),
            b'n' => bytes.push(b'\n'),
            b'r' => bytes.push(b'\r'),
            b't' => bytes.push(b'\t'),
            b'v' => bytes.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(at) {
                        Some(digit @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(digit - b'0');
                            at += 1;
                        }
                        _ => break,
                    }
                }
                bytes.push((value & 0xff) as u8);
            }
            b'x' if field.get(at).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match field.get(at).and_then(|d| char::from(*d).to_digit(16)) {
                        Some(digit) => {
                            value = value * 16 + digit;
                            at += 1;
                        }
                        None => break,
                    }
                }
                bytes.push((value & 0xff) as u8);
            }
            other => bytes.push(other),
        }
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
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
            let mut writer = RowWriter::new(format, &columns);
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
