//! `snapshots`: list what a repository holds. Without a key: ids, times, sizes. With the
//! writer key or an admin identity: database, tables and row counts too.

use crate::error::Result;
use crate::repo::{Keyring, Repository};

/// One line of the listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotSummary {
    /// Snapshot id.
    pub id: crate::repo::SnapshotId,
    /// Database time of the snapshot.
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    /// Bytes of all objects it references.
    pub bytes_total: Option<u64>,
    /// Bytes its backup added.
    pub bytes_added: Option<u64>,
    /// Details readable with a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<SnapshotContents>,
    /// Why the snapshot could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The targets that hold it.
    pub targets: Vec<String>,
}

/// What a key reveals about a snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotContents {
    /// Database name.
    pub database: String,
    /// Host that made it.
    pub hostname: String,
    /// (schema.table, rows).
    pub tables: Vec<(String, u64)>,
    /// Total rows.
    pub rows: u64,
}

/// Lists the snapshots, oldest first. Without a key only headers are read (a range read each).
pub async fn list(repository: &Repository, keyring: Option<&Keyring>) -> Result<Vec<SnapshotSummary>> {
    let location = repository.target.location().to_string();
    let mut summaries = Vec::new();
    for id in repository.snapshot_ids().await? {
        let read = match keyring {
            None => repository.read_snapshot_header(&id).await.map(|header| (header, None)),
            Some(keyring) => repository.read_snapshot(&id).await.map(|sealed| {
                let contents = sealed.open(keyring).map(|manifest| SnapshotContents {
                    database: manifest.database.clone(),
                    hostname: manifest.hostname.clone(),
                    rows: manifest.tables.iter().map(|t| t.rows).sum(),
                    tables: manifest.tables.iter().map(|t| (format!("{}.{}", t.schema, t.name), t.rows)).collect(),
                });
                (sealed.header, Some(contents))
            }),
        };
        let summary = match read {
            Ok((header, contents)) => {
                let (contents, error) = match contents {
                    None => (None, None),
                    Some(Ok(contents)) => (Some(contents), None),
                    Some(Err(error)) => (None, Some(error.to_string())),
                };
                SnapshotSummary {
                    id,
                    time: Some(header.time),
                    bytes_total: Some(header.total_bytes),
                    bytes_added: Some(header.added_bytes),
                    contents,
                    error,
                    targets: vec![location.clone()],
                }
            }
            Err(error) => SnapshotSummary {
                id,
                time: None,
                bytes_total: None,
                bytes_added: None,
                contents: None,
                error: Some(error.to_string()),
                targets: vec![location.clone()],
            },
        };
        summaries.push(summary);
    }
    summaries.sort_by_key(|s| s.time);
    Ok(summaries)
}

/// Merges the listings of several targets: one line per snapshot, naming every target that holds
/// it (readable copies win over damaged ones), oldest first.
pub fn merge(lists: Vec<(String, Vec<SnapshotSummary>)>) -> Vec<SnapshotSummary> {
    let mut merged: Vec<SnapshotSummary> = Vec::new();
    for (_, list) in lists {
        for summary in list {
            match merged.iter_mut().find(|m| m.id == summary.id) {
                Some(existing) => {
                    existing.targets.extend(summary.targets.iter().cloned());
                    if existing.error.is_some() && summary.error.is_none() {
                        let targets = std::mem::take(&mut existing.targets);
                        *existing = SnapshotSummary { targets, ..summary };
                    }
                }
                None => merged.push(summary),
            }
        }
    }
    merged.sort_by_key(|s| s.time);
    merged
}
