//! `ls`: what one snapshot holds, as its manifest says: schemas, tables, rows and sizes. The
//! writer key reads it as an admin does (table names and row counts are metadata the backup
//! host wrote); nothing is decrypted beyond the manifest.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::{Keyring, SnapshotFilter, SnapshotId};
use crate::repo_set::RepoSet;

/// One snapshot's contents.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The snapshot.
    pub snapshot_id: SnapshotId,
    /// Its time.
    pub time: chrono::DateTime<chrono::Utc>,
    /// The database it is of.
    pub database: String,
    /// The host that took it.
    pub hostname: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Every schema with data: its tables, rows and bytes.
    pub schemas: Vec<SchemaTotal>,
    /// Every table with its data, in schema and name order.
    pub tables: Vec<TableEntry>,
    /// Sequences recorded.
    pub sequences: usize,
    /// Large objects: how many and their bytes (as COPY text), when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub large_objects: Option<(u64, u64)>,
    /// The roles the database's objects name (absent in older snapshots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// What the data-loss alarm flagged in it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<String>,
    /// For `latest`: newer snapshots that do not open, named with why (also on stderr).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One table.
#[derive(Debug, Clone, Serialize)]
pub struct TableEntry {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Rows.
    pub rows: u64,
    /// Bytes of its data as COPY text (what a restore loads).
    pub bytes: u64,
    /// Its columns, as stored.
    pub columns: Vec<String>,
    /// Its primary key's columns (empty: none, or a snapshot older than the field), which
    /// `diff` matches rows by and `dump --key` takes.
    pub primary_key: Vec<String>,
}

/// One schema's sum.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaTotal {
    /// Schema.
    pub name: String,
    /// Tables with data.
    pub tables: usize,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Lists the snapshot `selector` names (`latest` or an id prefix) among those `filter` lets
/// through: the newest that opens with `keyring`, for `latest`.
pub async fn run(targets: &RepoSet, keyring: &Keyring, selector: &str, filter: &SnapshotFilter) -> Result<Listing> {
    let mut first_error = None;
    let resolved = targets.resolve_snapshot(selector, filter, keyring).await?;
    // Said when one of `ids` is listed: these may be newer.
    let mut passed_over = resolved.passed_over();
    let openable = resolved.ids.len();
    let remembered = resolved.remembered;
    let ids = resolved.ids.into_iter().chain(resolved.unreadable.into_iter().map(|skipped| skipped.id));
    for (n, id) in ids.enumerate() {
        // Chosen by labels this machine remembered and not read until now: one that opens on
        // no copy is named, as one read for its labels would have been.
        let mut why = None;
        for repository in targets.repositories() {
            let opened =
                repository.read_snapshot(&id).await.and_then(|sealed| Ok((sealed.open(keyring)?, sealed.mark())));
            match opened {
                Ok((manifest, mark)) => {
                    let mut tables: Vec<TableEntry> = manifest
                        .tables
                        .iter()
                        .map(|t| TableEntry {
                            schema: t.schema.clone(),
                            name: t.name.clone(),
                            rows: t.rows,
                            bytes: t.data.bytes,
                            columns: t.columns.clone(),
                            primary_key: t.primary_key.clone(),
                        })
                        .collect();
                    tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
                    let mut schemas: BTreeMap<&str, SchemaTotal> = BTreeMap::new();
                    for table in &tables {
                        let total = schemas.entry(&table.schema).or_insert_with(|| SchemaTotal {
                            name: table.schema.clone(),
                            tables: 0,
                            rows: 0,
                            bytes: 0,
                        });
                        total.tables += 1;
                        total.rows += table.rows;
                        total.bytes += table.bytes;
                    }
                    let schemas = schemas.into_values().collect();
                    let warnings = if n < openable { std::mem::take(&mut passed_over) } else { Vec::new() };
                    for warning in &warnings {
                        tracing::warn!("{warning}");
                    }
                    return Ok(Listing {
                        snapshot_id: mark.id,
                        time: mark.time,
                        database: manifest.database.clone(),
                        hostname: manifest.hostname.clone(),
                        tags: manifest.tags.clone(),
                        schemas,
                        tables,
                        sequences: manifest.sequences.len(),
                        large_objects: manifest.large_objects.as_ref().map(|lo| (lo.rows, lo.data.bytes)),
                        roles: manifest.roles.as_ref().map(|roles| roles.iter().map(|r| r.name.clone()).collect()),
                        alarms: manifest.alarms.iter().map(ToString::to_string).collect(),
                        warnings,
                    });
                }
                Err(error) => {
                    why.get_or_insert_with(|| error.to_string());
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(why) = why.filter(|_| remembered.contains(&id)) {
            passed_over.insert(0, format!("snapshot {id} passed over: {why}"));
        }
    }
    Err(first_error.unwrap_or_else(|| Error::SnapshotNotFound(format!("no snapshot {selector}"))))
}
