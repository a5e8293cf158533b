//! Snapshot objects: the plaintext header, the MAC and the encrypted manifest; reading,
//! authenticating and sealing them (docs/FORMAT.md, *Snapshot*).

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, ChunkId};
use crate::error::{Error, Result};
use crate::target::{Held, ReadBudget};
use crate::trust::SnapshotMark;

use super::{
    AUTHENTICATED_VERSION, FORMAT_VERSION, Keyring, OLDEST_FORMAT_VERSION, ObjectRef, Repository, SnapshotId,
    decode_json, dictionary_key, encode_json, index_key, pack_key, snapshot_key,
};

/// The largest snapshot object a reader takes (at scale 1 one is about 0.2 MiB: its manifest
/// holds the top list chunks of each stream, and its header a line per pack it uses).
pub const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

/// The first word of a snapshot object.
const SNAPSHOT_MAGIC: &str = "crmvault-snapshot";

/// The plaintext header of a snapshot: what anyone may see.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Format version.
    pub version: u32,
    /// When the database snapshot was taken.
    pub time: DateTime<Utc>,
    /// BLAKE3 of the repository config it was written under.
    pub config_hash: String,
    /// Stored bytes of every object it references.
    pub total_bytes: u64,
    /// Bytes this backup added.
    pub added_bytes: u64,
    /// Packs it needs.
    pub packs: Vec<ObjectRef>,
    /// Indexes it needs.
    pub indexes: Vec<ObjectRef>,
    /// Compression dictionaries its packs need.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dictionaries: Vec<ObjectRef>,
    /// The newest snapshot of the repository when this one was written (format 7): a snapshot
    /// deleted from storage leaves its successor naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
    /// One more than the parent's (0 before format 7).
    #[serde(default)]
    pub sequence: u64,
    /// The snapshot this one is a re-encrypted copy of (`rekey --reencrypt`): same data, same
    /// place in the chain, new id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<SnapshotId>,
}

impl SnapshotHeader {
    /// The packs, indexes and dictionaries it names, by key, with the sizes it gives.
    pub fn objects(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        (self.packs.iter().map(|o| (super::pack_key(&o.id), o.size)))
            .chain(self.indexes.iter().map(|o| (super::index_key(&o.id), o.size)))
            .chain(self.dictionaries.iter().map(|o| (super::dictionary_key(&o.id), o.size)))
    }
}

/// One stream of bytes (a table's COPY data, or a schema section), as chunks.
///
/// The list of its chunk ids is itself stored as chunks ("list chunks", data like any other),
/// cut where an id's last byte is a multiple of [`LIST_CUT`]: unchanged runs of chunks give
/// unchanged list chunks, so a snapshot stores only the parts of its lists that changed. A
/// long list of list chunks is cut the same way again, level upon level, until at most
/// [`LIST_TOP_MAX`] ids are left for the manifest (format 3; format 2 had one level).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamManifest {
    /// Plaintext length.
    pub bytes: u64,
    /// Keyed BLAKE3 of the whole plaintext (hex). Since format 7 it is stored in the manifest's
    /// admin-only part, not beside the rest: empty when the manifest was opened with the
    /// writer key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The top list chunks, in order: they hold `chunks` when `list_levels` is 1, else the ids
    /// of the list chunks one level down.
    pub lists: Vec<ChunkId>,
    /// Levels of list chunks from `lists` down to the data chunks.
    #[serde(default = "StreamManifest::one_level")]
    pub list_levels: u32,
    /// The list chunks below the top level: filled by the backup, or by [`crate::fetch::expand_lists`].
    #[serde(skip)]
    pub inner_lists: Vec<ChunkId>,
    /// Its chunks, in order: filled by the backup, or by [`crate::fetch::expand_lists`].
    #[serde(skip)]
    pub chunks: Vec<ChunkId>,
    /// Where a restore keeps its chunks instead, in a [`crate::fetch::ChunkSpool`].
    #[serde(skip)]
    pub spooled: std::ops::Range<u64>,
}

impl Default for StreamManifest {
    fn default() -> Self {
        StreamManifest {
            bytes: 0,
            digest: String::new(),
            lists: Vec::new(),
            list_levels: 1,
            inner_lists: Vec::new(),
            chunks: Vec::new(),
            spooled: 0..0,
        }
    }
}

impl StreamManifest {
    fn one_level() -> u32 {
        1
    }
}

/// One table's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableManifest {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in the COPY stream (generated columns are left out).
    pub columns: Vec<String>,
    /// The primary key's columns, in key order (absent when the table has none, and in
    /// snapshots from builds before it: `diff` then compares whole rows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primary_key: Vec<String>,
    /// Rows.
    pub rows: u64,
    /// Its COPY text stream.
    pub data: StreamManifest,
}

/// A sequence's state at snapshot time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SequenceState {
    /// Schema name.
    pub schema: String,
    /// Sequence name.
    pub name: String,
    /// last_value.
    pub last_value: i64,
    /// is_called.
    pub is_called: bool,
}

/// Everything a snapshot holds, encrypted to admins and writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Database name.
    pub database: String,
    /// Server version string.
    pub server_version: String,
    /// Host that ran the backup.
    pub hostname: String,
    /// Labels given to the backup (`tags`, absent when none; older snapshots have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// pg_dump pre-data section (DDL before data).
    pub pre_data: StreamManifest,
    /// pg_dump post-data section (indexes, constraints, triggers).
    pub post_data: StreamManifest,
    /// Table data.
    pub tables: Vec<TableManifest>,
    /// Sequence values.
    pub sequences: Vec<SequenceState>,
    /// Materialized views that were populated, to refresh after restore.
    pub materialized_views: Vec<(String, String)>,
    /// Large objects' contents as a COPY stream of (oid, bytea), when the database has any.
    pub large_objects: Option<TableManifest>,
    /// What only restore needs and the backup host must not read later (format 7): the hex of
    /// an age ciphertext, to the admins only, of [`AdminOnly`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_only: Option<String>,
    /// What the data-loss alarm found against the previous snapshot of the database (tables
    /// that vanished, were emptied or lost more rows than allowed): a snapshot with any is
    /// *flagged*, and `forget` keeps it. Absent in older snapshots and quiet nights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<TableAlarm>,
    /// How the backup's sessions wrote values as text, and the database's locale: restore
    /// reads the rows with the same settings, and a drill writes them out again with them to
    /// compare digests. Absent in older snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionSettings>,
    /// The roles the database's objects name (as owners, in grants, in policies), with their
    /// memberships and attributes, never their passwords: a restore onto another server says
    /// which are missing before it starts, and `--create-roles` makes them. Absent in older
    /// snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<RoleRecord>>,
    /// The database itself: owner, privileges, settings, comment (`restore --create` gives
    /// them to the database it makes). In [`AdminOnly`], never in the manifest's plaintext:
    /// a setting may hold a secret (`ALTER DATABASE … SET app.jwt_secret`). Present once an
    /// admin opened the snapshot, and in snapshots from builds that record it.
    #[serde(skip)]
    pub database_object: Option<DatabaseObject>,
}

/// A database as `CREATE DATABASE`, `ALTER DATABASE`, `GRANT … ON DATABASE` and `COMMENT ON
/// DATABASE` make it, beyond its encoding and collation ([`SessionSettings`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseObject {
    /// The role that owns it.
    pub owner: String,
    /// Its privileges, the defaults written out when it has none of its own.
    #[serde(default)]
    pub privileges: Vec<DatabasePrivilege>,
    /// `ALTER DATABASE … SET` and `ALTER ROLE … IN DATABASE … SET`, in their order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<DatabaseSetting>,
    /// `CONNECTION LIMIT` (-1: none).
    #[serde(default = "no_limit")]
    pub connection_limit: i32,
    /// Its comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

fn no_limit() -> i32 {
    -1
}

/// One privilege on the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabasePrivilege {
    /// The role granted it; absent: `PUBLIC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grantee: Option<String>,
    /// `CONNECT`, `CREATE` or `TEMPORARY`.
    pub privilege: String,
    /// `WITH GRANT OPTION`.
    #[serde(default)]
    pub grantable: bool,
}

/// One setting the database gives its sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseSetting {
    /// Only for this role's sessions (`ALTER ROLE … IN DATABASE`); absent: everyone's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The setting's name.
    pub name: String,
    /// Its value as the catalog keeps it (a list setting such as `search_path`: its elements
    /// joined by `, `, quoted where needed).
    pub value: String,
}

/// A role a database's objects name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools, reason = "independent reasons a role is needed, each a field of the format")]
pub struct RoleRecord {
    /// Its name.
    pub name: String,
    /// It owns objects of the database (`ALTER … OWNER TO` in the schema).
    #[serde(default)]
    pub owns: bool,
    /// It is granted privileges (`GRANT … TO` in the schema).
    #[serde(default)]
    pub granted: bool,
    /// Something else names it (a row security policy, a user mapping): needed whatever the
    /// restore leaves out.
    #[serde(default)]
    pub named: bool,
    /// The database itself names it (owner, privileges or a setting of its own there): only
    /// `restore --create`, which gives the new database those, needs it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub database: bool,
    /// The roles it is a member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<String>,
    /// Its attributes as `CREATE ROLE` writes them (`LOGIN`, `CREATEDB`, …; never a password).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<String>,
}

/// The settings that shape a table's COPY text (dates, intervals, time stamps with time zone,
/// floats, bytea) as the backup's sessions had them, and the source database's encoding and
/// collation (which order a primary key sorts text in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSettings {
    /// `DateStyle`, like `ISO, MDY`.
    pub date_style: String,
    /// `IntervalStyle`.
    pub interval_style: String,
    /// `TimeZone`.
    pub time_zone: String,
    /// `extra_float_digits`.
    pub extra_float_digits: String,
    /// `bytea_output`.
    pub bytea_output: String,
    /// The database's encoding, like `UTF8`.
    pub encoding: String,
    /// The database's `LC_COLLATE`.
    pub collate: String,
    /// The database's `LC_CTYPE`.
    pub ctype: String,
    /// The database's ICU locale, when ICU is its collation provider (it then orders text,
    /// not `collate`). Absent: libc, or a snapshot from a build before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icu_locale: Option<String>,
}

/// One table the data-loss alarm found losing rows since the previous snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableAlarm {
    /// `schema.table`.
    pub table: String,
    /// What happened to it.
    pub kind: AlarmKind,
    /// Rows in the previous snapshot.
    pub rows_before: u64,
    /// Rows now (0 for a table that vanished).
    pub rows_after: u64,
    /// The previous snapshot.
    pub since: SnapshotId,
}

/// What the data-loss alarm saw happen to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// It is gone from the database.
    Vanished,
    /// It holds no row, where it held some.
    Emptied,
    /// It lost more of its rows than the threshold allows.
    Shrank,
}

impl AlarmKind {
    /// The word for it, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::Vanished => "vanished",
            AlarmKind::Emptied => "emptied",
            AlarmKind::Shrank => "shrank",
        }
    }
}

impl std::fmt::Display for TableAlarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (table, before, after) = (&self.table, self.rows_before, self.rows_after);
        match self.kind {
            AlarmKind::Vanished => write!(f, "{table} vanished (it held {before} rows)"),
            AlarmKind::Emptied => write!(f, "{table} was emptied (it held {before} rows)"),
            AlarmKind::Shrank => {
                #[allow(clippy::cast_precision_loss, reason = "a percentage to one decimal")]
                let lost = (before - after) as f64 * 100.0 / before as f64;
                write!(f, "{table} lost {lost:.1}% of its rows ({before} -> {after})")
            }
        }?;
        write!(f, " since snapshot {}", self.since.short())
    }
}

/// The part of a manifest encrypted to the admins only: every stream's digest, in the order of
/// [`Manifest::streams`]. A keyed digest the writer could read would confirm guesses about a
/// small table's rows (docs/FORMAT.md, *Threat model*).
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminOnly {
    /// Stream digests (hex).
    pub digests: Vec<String>,
    /// The database itself (absent in snapshots from builds before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseObject>,
    /// [`Manifest::layout`] as the backup that made the snapshot wrote it: a manifest sealed
    /// again later by whoever holds the writer key, with this part carried unread (the
    /// digests it cannot make), must keep every table's columns, name and row count, the
    /// sequences, session settings and roles. Absent in snapshots from builds before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

impl Manifest {
    /// What a restore does with the streams, beside their bytes (which the digests cover), as
    /// one hash: the labels `latest` and filters choose by (database, host, tags); each table's
    /// schema, name, columns (the COPY column list its rows load into), primary key and row
    /// count, in stream order; large objects'; the sequences' values; the materialized views
    /// refreshed; the session settings rows are read under; the roles. A
    /// backup host that seals an old snapshot's manifest again, carrying its admin-only part
    /// as it is, cannot make two columns of one type exchange their values in a restore.
    /// Made of arrays only, in a fixed order (version 1 of it): the same bytes in every build.
    pub fn layout(&self) -> String {
        use serde_json::json;
        let table = |t: &TableManifest| json!([t.schema, t.name, t.columns, t.primary_key, t.rows]);
        let sequences: Vec<_> =
            self.sequences.iter().map(|s| json!([s.schema, s.name, s.last_value, s.is_called])).collect();
        let session = self.session.as_ref().map(|s| {
            json!([
                s.date_style,
                s.interval_style,
                s.time_zone,
                s.extra_float_digits,
                s.bytea_output,
                s.encoding,
                s.collate,
                s.ctype,
                s.icu_locale
            ])
        });
        let roles = self.roles.as_ref().map(|roles| {
            roles
                .iter()
                .map(|r| json!([r.name, r.owns, r.granted, r.named, r.database, r.member_of, r.attributes]))
                .collect::<Vec<_>>()
        });
        let layout = json!([
            1,
            self.database,
            self.hostname,
            self.tags,
            self.tables.iter().map(table).collect::<Vec<_>>(),
            self.large_objects.as_ref().map(table),
            sequences,
            self.materialized_views,
            session,
            roles
        ]);
        blake3::hash(&serde_json::to_vec(&layout).expect("serialisable")).to_hex().to_string()
    }

    /// Every stream: schema sections, tables, large objects.
    pub fn streams(&self) -> impl Iterator<Item = &StreamManifest> {
        [&self.pre_data, &self.post_data]
            .into_iter()
            .chain(self.tables.iter().chain(self.large_objects.iter()).map(|t| &t.data))
    }

    /// The same, to fill in.
    pub fn streams_mut(&mut self) -> impl Iterator<Item = &mut StreamManifest> {
        [&mut self.pre_data, &mut self.post_data]
            .into_iter()
            .chain(self.tables.iter_mut().chain(self.large_objects.iter_mut()).map(|t| &mut t.data))
    }

    /// Every list chunk it references.
    pub fn list_chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.streams().flat_map(|s| s.lists.iter().chain(s.inner_lists.iter()))
    }

    /// Every chunk it references: list chunks, and data chunks once the lists are expanded.
    pub fn all_chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.list_chunks().chain(self.streams().flat_map(|s| s.chunks.iter()))
    }
}

/// Which snapshots a command looks at, by what their manifests record: all when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// Only snapshots of this database.
    pub database: Option<String>,
    /// Only snapshots made on this host.
    pub hostname: Option<String>,
    /// Only snapshots carrying every one of these tags.
    pub tags: Vec<String>,
}

impl SnapshotFilter {
    /// Whether it lets every snapshot through (then no manifest needs to be read).
    pub fn is_empty(&self) -> bool {
        self.database.is_none() && self.hostname.is_none() && self.tags.is_empty()
    }

    /// Whether a snapshot with this manifest passes.
    pub fn matches(&self, manifest: &Manifest) -> bool {
        self.admits(&manifest.database, &manifest.hostname, &manifest.tags)
    }

    /// Whether a snapshot of this database, host and tags passes.
    pub fn admits(&self, database: &str, hostname: &str, tags: &[String]) -> bool {
        self.database.as_ref().is_none_or(|wanted| wanted == database)
            && self.hostname.as_ref().is_none_or(|wanted| wanted == hostname)
            && self.tags.iter().all(|tag| tags.contains(tag))
    }
}

/// What a filter met, to tell "nothing matched" from "nothing there": a filter that lets no
/// snapshot through is an error naming what is there (a typo in `--database` must not verify
/// nothing every night and report success).
#[derive(Debug, Default)]
pub struct FilterTally {
    matched: bool,
    databases: std::collections::BTreeSet<String>,
}

impl FilterTally {
    /// Counts one snapshot whose manifest opened; returns whether `filter` lets it through.
    pub fn see(&mut self, filter: &SnapshotFilter, manifest: &Manifest) -> bool {
        self.see_parts(filter, &manifest.database, &manifest.hostname, &manifest.tags)
    }

    /// [`Self::see`] of a snapshot of this database, host and tags.
    pub fn see_parts(&mut self, filter: &SnapshotFilter, database: &str, hostname: &str, tags: &[String]) -> bool {
        if !self.databases.contains(database) {
            self.databases.insert(database.to_string());
        }
        let passes = filter.admits(database, hostname, tags);
        self.matched |= passes;
        passes
    }

    /// Refuses a filter that let nothing through while there were snapshots to look at.
    pub fn check(&self, filter: &SnapshotFilter) -> crate::error::Result<()> {
        if filter.is_empty() || self.matched || self.databases.is_empty() {
            return Ok(());
        }
        let present: Vec<&str> = self.databases.iter().map(String::as_str).collect();
        Err(crate::error::Error::SnapshotNotFound(format!(
            "no snapshot is {filter} (the snapshots are of database{} {})",
            if present.len() == 1 { "" } else { "s" },
            present.join(", ")
        )))
    }
}

impl std::fmt::Display for SnapshotFilter {
    /// What it lets through, as it follows "snapshot … is": "of database crm, tagged nightly".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(database) = &self.database {
            parts.push(format!("of database {database}"));
        }
        if let Some(hostname) = &self.hostname {
            parts.push(format!("from host {hostname}"));
        }
        if !self.tags.is_empty() {
            parts.push(format!("tagged {}", self.tags.join(" and ")));
        }
        if parts.is_empty() {
            parts.push("any".into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// What [`Repository::newest_authentic`] found on one target.
#[derive(Debug)]
pub struct NewestAuthentic {
    /// The newest snapshot that proved itself, opened.
    pub found: Option<SealedSnapshot>,
    /// Newer ones that did not, with why.
    pub rejected: Vec<(SnapshotId, Error)>,
    /// Snapshots looked at and found no newer than `found` (it included): the found one, and
    /// the older ones by their headers' times.
    pub settled: Vec<SnapshotId>,
    /// Every snapshot id the target lists.
    pub listed: Vec<SnapshotId>,
}

/// A snapshot object's first four lines, parsed.
struct HeaderLines {
    header: SnapshotHeader,
    version: u32,
    version_line: Bytes,
    header_line: Bytes,
    mac: String,
    /// Where the manifest ciphertext starts.
    end: usize,
}

/// Parses a snapshot object's first four lines. `bytes` may stop after the MAC line; the
/// header is checked against its own BLAKE3 (a keyless check; the MAC is checked on opening).
fn parse_header(id: &SnapshotId, bytes: &Bytes) -> Result<HeaderLines> {
    parse_header_as(id, bytes, |key, line| {
        serde_json::from_slice(line).map_err(|e| Error::corrupt(key, format!("bad header: {e}")))
    })
}

/// [`parse_header`] with the header's lists of packs, indexes and dictionaries left unparsed
/// (and empty): thousands of ids each in a year-old repository, which `latest` does not look at.
fn parse_header_without_lists(id: &SnapshotId, bytes: &Bytes) -> Result<HeaderLines> {
    /// What of a header is read: serde skips the rest.
    #[derive(Deserialize)]
    struct Core {
        version: u32,
        time: DateTime<Utc>,
        config_hash: String,
        #[serde(default)]
        parent: Option<SnapshotId>,
        #[serde(default)]
        sequence: u64,
        #[serde(default)]
        replaces: Option<SnapshotId>,
    }
    parse_header_as(id, bytes, |key, line| {
        let core: Core = serde_json::from_slice(line).map_err(|e| Error::corrupt(key, format!("bad header: {e}")))?;
        Ok(SnapshotHeader {
            version: core.version,
            time: core.time,
            config_hash: core.config_hash,
            total_bytes: 0,
            added_bytes: 0,
            packs: Vec::new(),
            indexes: Vec::new(),
            dictionaries: Vec::new(),
            parent: core.parent,
            sequence: core.sequence,
            replaces: core.replaces,
        })
    })
}

fn parse_header_as(
    id: &SnapshotId,
    bytes: &Bytes,
    header_of: impl FnOnce(&str, &[u8]) -> Result<SnapshotHeader>,
) -> Result<HeaderLines> {
    let key = snapshot_key(id);
    let mut lines = Vec::with_capacity(4);
    let mut start = 0;
    while lines.len() < 4 {
        let end = memchr::memchr(b'\n', &bytes[start..])
            .map(|p| start + p)
            .ok_or_else(|| Error::corrupt(&key, "truncated snapshot object"))?;
        lines.push(bytes.slice(start..end));
        start = end + 1;
    }
    let magic = std::str::from_utf8(&lines[0]).unwrap_or("");
    let Some(version) = magic.strip_prefix(SNAPSHOT_MAGIC).map(str::trim) else {
        return Err(Error::corrupt(&key, "not a crmvault snapshot"));
    };
    let version: u32 = version.parse().map_err(|_| Error::corrupt(&key, "bad version line"))?;
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(Error::UnsupportedFormat {
            what: format!("snapshot {id}"),
            found: version,
            oldest: super::OLDEST_FORMAT_VERSION,
            supported: FORMAT_VERSION,
            advice: crate::error::format_advice(version, FORMAT_VERSION),
        });
    }
    if crypto::object_hash(&lines[1]).as_bytes() != &lines[2][..] {
        return Err(Error::corrupt(&key, "its header does not match the header's BLAKE3"));
    }
    let header = header_of(&key, &lines[1])?;
    // Ids become object keys: their types refused anything but a BLAKE3 hex hash above.
    let mac = String::from_utf8(lines[3].to_vec()).map_err(|_| Error::corrupt(&key, "bad MAC line"))?;
    Ok(HeaderLines { header, version, version_line: lines[0].clone(), header_line: lines[1].clone(), mac, end: start })
}

/// A snapshot object's header time (an error: the header does not parse), and its manifest
/// opened with `keyring` (an error: it does not open). The header's lists of packs, indexes
/// and dictionaries (thousands of ids in a year-old repository, proven all the same by the
/// header's hash and the MAC) are not parsed, so no header without them is handed out: what
/// `latest` reads of every snapshot.
pub fn open_time_and_manifest(
    id: &SnapshotId,
    bytes: &Bytes,
    keyring: &Keyring,
) -> Result<(DateTime<Utc>, Result<Manifest>)> {
    let lines = parse_header_without_lists(id, bytes)?;
    let time = lines.header.time;
    Ok((time, SealedSnapshot::parse_with(id, bytes, lines).and_then(|sealed| sealed.open(keyring))))
}

/// A snapshot object as read: header visible, manifest still encrypted.
#[derive(Debug, Clone)]
pub struct SealedSnapshot {
    /// Snapshot id (BLAKE3 of the object).
    pub id: SnapshotId,
    /// The plaintext header (believe it only once [`SealedSnapshot::open`] succeeded).
    pub header: SnapshotHeader,
    version: u32,
    version_line: Bytes,
    header_line: Bytes,
    mac: String,
    manifest_ciphertext: Bytes,
    /// [`Self::keep_header_only`] let go of the bytes: opening it again is a bug, said as one.
    header_only: bool,
    /// BLAKE3 of the whole stored object (what a generation's `carried` list names).
    pub object_hash: String,
    /// Bytes of the whole stored object.
    pub object_size: u64,
}

/// A manifest encrypted once for every target: its ciphertext names the snapshot everywhere.
pub struct SealedManifest {
    /// The snapshot id: BLAKE3 of `ciphertext`.
    pub id: SnapshotId,
    compressed: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl SealedManifest {
    /// Compresses and encrypts a manifest for the repository's metadata recipients, its stream
    /// digests apart, for the admins only ([`AdminOnly`]).
    pub fn seal(manifest: &mut Manifest, repository: &Repository) -> SealedManifest {
        let admin_only = AdminOnly {
            digests: manifest.streams_mut().map(|stream| std::mem::take(&mut stream.digest)).collect(),
            database: manifest.database_object.clone(),
            layout: Some(manifest.layout()),
        };
        let plaintext = serde_json::to_vec(&admin_only).expect("serialisable");
        manifest.admin_only = Some(hex::encode(crypto::encrypt(&repository.data_recipients(), &plaintext)));
        let compressed = encode_json(manifest);
        let ciphertext = crypto::encrypt(&repository.metadata_recipients(), &compressed);
        // The caller keeps the digests it computed, as before sealing.
        for (stream, digest) in manifest.streams_mut().zip(admin_only.digests) {
            stream.digest = digest;
        }
        manifest.admin_only = None;
        SealedManifest { id: SnapshotId::of(&ciphertext), compressed, ciphertext }
    }

    /// The snapshot object for one target, whose header lists that target's packs and indexes.
    /// Its MAC covers the version line, the header and the manifest.
    pub fn snapshot_object(&self, header: &SnapshotHeader, keyring: &Keyring) -> Bytes {
        let header_line = serde_json::to_vec(header).expect("serialisable");
        let version_line = format!("{SNAPSHOT_MAGIC} {FORMAT_VERSION}");
        let mac = keyring.snapshot_mac_key().mac(&[version_line.as_bytes(), &header_line, &self.compressed]);
        let mut object = format!("{version_line}\n").into_bytes();
        object.extend_from_slice(&header_line);
        object.push(b'\n');
        object.extend_from_slice(crypto::object_hash(&header_line).as_bytes());
        object.push(b'\n');
        object.extend_from_slice(mac.as_bytes());
        object.push(b'\n');
        object.extend_from_slice(&self.ciphertext);
        Bytes::from(object)
    }
}

impl SealedSnapshot {
    /// Parses a snapshot object as read from storage, checking that `id` is the BLAKE3 of its
    /// manifest ciphertext (the header against its own hash; the MAC waits for [`Self::open`]).
    pub(crate) fn parse(id: &SnapshotId, bytes: &Bytes) -> Result<SealedSnapshot> {
        Self::parse_with(id, bytes, parse_header(id, bytes)?)
    }

    fn parse_with(id: &SnapshotId, bytes: &Bytes, lines: HeaderLines) -> Result<SealedSnapshot> {
        let key = snapshot_key(id);
        let manifest_ciphertext = bytes.slice(lines.end..);
        if SnapshotId::of(&manifest_ciphertext) != *id {
            return Err(Error::corrupt(&key, "its manifest does not match its name (BLAKE3 mismatch)"));
        }
        Ok(SealedSnapshot {
            id: id.clone(),
            header: lines.header,
            version: lines.version,
            version_line: lines.version_line,
            header_line: lines.header_line,
            mac: lines.mac,
            manifest_ciphertext,
            header_only: false,
            object_hash: crypto::object_hash(bytes),
            object_size: bytes.len() as u64,
        })
    }

    /// Lets go of the stored object's bytes, for one opened already whose header is all that is
    /// still needed: a year of headers' text is tens of MiB beside their parsed lists. It cannot
    /// be opened again: an internal error, never a false success nor a blamed storage.
    pub fn keep_header_only(&mut self) {
        self.header_only = true;
        self.version_line = Bytes::new();
        self.header_line = Bytes::new();
        self.manifest_ciphertext = Bytes::new();
    }

    /// Refuses a snapshot whose bytes [`Self::keep_header_only`] let go of.
    fn whole(&self) -> Result<()> {
        if self.header_only {
            return Err(Error::Internal(format!(
                "snapshot {} was opened again after its bytes were let go of",
                self.id.short()
            )));
        }
        Ok(())
    }

    /// Its manifest as sealed, to store the same snapshot (same id, same manifest) again with
    /// another header (`rekey --reencrypt` on a second target). Call after [`Self::open`].
    pub fn sealed_manifest(&self, keyring: &Keyring) -> Result<SealedManifest> {
        self.whole()?;
        let compressed = keyring.decrypt(&snapshot_key(&self.id), &self.manifest_ciphertext)?;
        Ok(SealedManifest { id: self.id.clone(), compressed, ciphertext: self.manifest_ciphertext.to_vec() })
    }

    /// The snapshot's place in the chain (its header, once authenticated).
    pub fn mark(&self) -> SnapshotMark {
        SnapshotMark { id: self.id.clone(), sequence: self.header.sequence, time: self.header.time }
    }

    /// Decrypts the manifest and proves that it and the header were written with this
    /// repository's keys (the MAC is checked before the manifest is parsed). An admin's
    /// keyring also opens the admin-only part and fills in the stream digests.
    pub fn open(&self, keyring: &Keyring) -> Result<Manifest> {
        let compressed = self.authenticated(keyring)?;
        let key = snapshot_key(&self.id);
        let mut manifest: Manifest = decode_json(&key, &compressed)?;
        match manifest.admin_only.take() {
            Some(sealed) if keyring.is_admin() => {
                let ciphertext = hex::decode(sealed).map_err(|_| Error::corrupt(&key, "bad admin-only part"))?;
                let plaintext = keyring.decrypt(&key, &ciphertext)?;
                let AdminOnly { digests, database, layout } = serde_json::from_slice(&plaintext)
                    .map_err(|e| Error::corrupt(&key, format!("bad admin-only part: {e}")))?;
                manifest.database_object = database;
                if digests.len() != manifest.streams().count() {
                    return Err(Error::corrupt(&key, "its admin-only part does not match its streams"));
                }
                if layout.is_some_and(|layout| layout != manifest.layout()) {
                    return Err(Error::corrupt(
                        &key,
                        "its tables, columns, row counts, sequences, session settings or roles are not those the \
                         backup that made it recorded for the admins: the manifest was sealed again since (with the \
                         writer key) and changed",
                    ));
                }
                for (stream, digest) in manifest.streams_mut().zip(digests) {
                    stream.digest = digest;
                }
            }
            None if self.version >= AUTHENTICATED_VERSION => {
                return Err(Error::corrupt(&key, "has no admin-only part"));
            }
            // The writer's keyring, or a manifest from before format 7.
            Some(_) | None => {}
        }
        Ok(manifest)
    }

    /// Proves, as [`Self::open`] does, that the snapshot was written with this repository's
    /// keys, without parsing its manifest: what a reader that keeps a year of snapshots, to
    /// open each later, checks as it reads them.
    pub fn authenticate(&self, keyring: &Keyring) -> Result<()> {
        self.authenticated(keyring).map(drop)
    }

    /// The manifest's compressed bytes, decrypted and proven by the MAC (see [`Self::open`]).
    fn authenticated(&self, keyring: &Keyring) -> Result<Vec<u8>> {
        self.whole()?;
        let key = snapshot_key(&self.id);
        // Written under the config this keyring was unlocked with, or carried from an earlier
        // generation by a `rekey`: anything else was written with a key since retired, or is
        // another repository's.
        // In a repository whose keys hold an authentication secret (format 7) every snapshot is
        // of format 7 or later: an older version line there is a downgrade, MACed with the
        // repository secret, which a removed admin or a retired writer key still knows.
        if self.version < AUTHENTICATED_VERSION && keyring.authenticated() {
            return Err(Error::corrupt(
                &key,
                "claims an older format than its repository's (a downgrade forged with a key that a rekey left \
                 behind?)",
            ));
        }
        if self.version >= AUTHENTICATED_VERSION && self.header.version != self.version {
            return Err(Error::corrupt(&key, "its header's version differs from its first line"));
        }
        let Some(mac_key) = keyring.snapshot_mac_key_for(&self.header.config_hash, &self.object_hash) else {
            return Err(Error::corrupt(
                &key,
                "was written under another config (a key retired by `rekey`, or another repository's)",
            ));
        };
        let compressed = keyring.decrypt(&key, &self.manifest_ciphertext).map_err(|error| match error {
            Error::WrongIdentity { path } if self.header.config_hash != keyring.head => Error::BadKey(format!(
                "the identity in {} is not a recipient of snapshot {}: it was written before a `rekey` added that \
                 identity (an admin of that time can read it)",
                path.display(),
                self.id.short()
            )),
            other => other,
        })?;
        let mac = if self.version >= AUTHENTICATED_VERSION {
            mac_key.mac_bytes(&[&self.version_line, &self.header_line, &compressed])
        } else {
            keyring.mac_key().mac_bytes(&[&self.header_line, &compressed])
        };
        if blake3::Hash::from_hex(&self.mac).ok() != Some(mac) {
            return Err(Error::corrupt(&key, "its MAC does not match (not written with this repository's key)"));
        }
        Ok(compressed)
    }
}

/// What readers with a key keep of each snapshot [`Repository::snapshots`] reads: one that
/// proves itself whole (its manifest, of its real size, to be opened when its turn comes); one
/// that does not, its header only and why (whatever its size in storage).
pub fn authentic(keyring: &Keyring) -> impl Fn(SealedSnapshot) -> (SealedSnapshot, Result<()>) + '_ {
    move |mut sealed| {
        let proven = sealed.authenticate(keyring);
        if proven.is_err() {
            sealed.keep_header_only();
        }
        (sealed, proven)
    }
}

/// What keyless readers keep of each snapshot [`Repository::snapshots`] reads: its header.
pub fn header_only(mut sealed: SealedSnapshot) -> SealedSnapshot {
    sealed.keep_header_only();
    sealed
}

/// Snapshot headers read at once: from a bucket each is a round trip (365 of them a year).
pub const HEADERS_AT_ONCE: usize = 16;

/// Bytes of whole snapshot objects read at once by the reads made several at a time
/// ([`Repository::read_listed_snapshot`], a header longer than its probe), in the whole
/// process: an object larger waits for the others, then is read alone.
static WHOLE_READS: std::sync::LazyLock<ReadBudget> = std::sync::LazyLock::new(|| ReadBudget::new(super::READ_BUDGET));

impl Repository {
    /// Lists snapshot ids. An object under `snapshots/` whose name is not a BLAKE3 hash
    /// cannot be a snapshot and is left out ([`Repository::snapshots`] names it).
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        Ok(self.listed_snapshots().await?.into_iter().map(|(id, _)| id).collect())
    }

    /// [`Repository::snapshot_ids`] with each object's size as the listing gives it: a read
    /// that knows it needs no request to ask (from a bucket, a round trip per snapshot).
    pub async fn listed_snapshots(&self) -> Result<Vec<(SnapshotId, u64)>> {
        Ok((self.listed_names().await?.into_iter())
            .filter_map(|(name, size)| Some((name.parse().ok()?, size)))
            .collect())
    }

    /// The names of the objects under `snapshots/`, snapshot ids or not, with their sizes as
    /// the listing gives them.
    async fn listed_names(&self) -> Result<Vec<(String, u64)>> {
        Ok((self.target.list("snapshots").await?.into_iter())
            .filter_map(|(key, size)| Some((key.strip_prefix("snapshots/")?.to_string(), size)))
            .collect())
    }

    /// Whether `sealed` claims this repository's newest config or is carried, byte for byte,
    /// from an earlier generation: what a keyless reader can tell (a key still has to check
    /// the MAC of the first kind).
    pub fn claims_this_config(&self, sealed: &SealedSnapshot) -> bool {
        sealed.header.config_hash == self.config_hash || self.config.carried.contains(&sealed.object_hash)
    }

    /// Proves `sealed` belongs to this repository: carried byte for byte from an earlier
    /// generation (which this keyring may not be able to open), or opened with `keyring`.
    pub fn prove_snapshot(&self, sealed: &SealedSnapshot, keyring: &Keyring) -> Result<()> {
        if self.config.carried.contains(&sealed.object_hash) {
            return Ok(());
        }
        sealed.open(keyring).map(drop)
    }

    /// Reads and checks (name = hash) a snapshot object, returning it parsed but still sealed.
    pub async fn read_snapshot(&self, id: &SnapshotId) -> Result<SealedSnapshot> {
        let key = snapshot_key(id);
        let bytes = self.target.get_at_most(&key, MAX_SNAPSHOT_BYTES).await?;
        SealedSnapshot::parse(id, &bytes)
    }

    /// [`Repository::read_snapshot`] of a snapshot listed at `size`, for callers that read
    /// several at once: read within the process's [`WHOLE_READS`] (16 objects planted at the
    /// 256 MiB a snapshot may take must not be 4 GiB in memory at once).
    pub async fn read_listed_snapshot(&self, id: &SnapshotId, size: u64) -> Result<SealedSnapshot> {
        let held = self.read_snapshot_object(id, Some(size), &WHOLE_READS).await?;
        SealedSnapshot::parse(id, &held)
    }

    /// A snapshot object's bytes as stored (for [`open_time_and_manifest`]), read under
    /// `budget` with others.
    /// `listed`: its size as a listing gave it, if one did ([`Repository::listed_snapshots`]).
    pub async fn read_snapshot_object(
        &self,
        id: &SnapshotId,
        listed: Option<u64>,
        budget: &ReadBudget,
    ) -> Result<Held> {
        let key = snapshot_key(id);
        match listed {
            Some(size) if size > MAX_SNAPSHOT_BYTES => {
                Err(Error::corrupt(&key, format!("{size} bytes: too large for what it is")))
            }
            Some(size) => self.target.get_within_sized(&key, size, budget).await,
            None => self.target.get_within(&key, MAX_SNAPSHOT_BYTES, budget).await,
        }
    }

    /// Reads only a snapshot's header (a range read of its start): what listing and `latest`
    /// need, without downloading the manifest. `listed`: the object's size as a listing gave
    /// it, if one did (else it is asked first).
    pub async fn read_snapshot_header(&self, id: &SnapshotId, listed: Option<u64>) -> Result<SnapshotHeader> {
        // A year-old repository's headers list ~1,700 packs (a snapshot object of 170-310 KB,
        // its header most of it): probed at 64 KiB, each was read twice, probe and whole.
        const PROBE: u64 = 512 * 1024;
        let key = snapshot_key(id);
        let size = match listed {
            Some(size) => size,
            None => self
                .target
                .size_of(&key)
                .await?
                .ok_or_else(|| Error::Missing { object: key.clone(), location: self.target.location().into() })?,
        };
        let bytes = self.target.get_range(&key, 0..size.min(PROBE)).await?;
        match parse_header(id, &bytes) {
            Ok(lines) => Ok(lines.header),
            // A header longer than the probe (a repository with very many packs).
            // Read whole within WHOLE_READS: headers are read several at once.
            Err(Error::Corrupt { .. }) if size > PROBE => {
                let held = self.read_snapshot_object(id, Some(size), &WHOLE_READS).await?;
                Ok(parse_header(id, &held)?.header)
            }
            Err(error) => Err(error),
        }
    }

    /// The keys of the packs, indexes and dictionaries the headers of the snapshots present
    /// name: what a prune that planned before these snapshots were listed keeps. A header that
    /// does not read names nothing (junk or damage is no reason to trust more).
    pub async fn listed_objects(&self) -> Result<HashSet<String>> {
        use futures::StreamExt;
        let listed = self.listed_snapshots().await?;
        let mut headers =
            futures::stream::iter(listed.iter().map(|(id, size)| self.read_snapshot_header(id, Some(*size))))
                .buffer_unordered(HEADERS_AT_ONCE);
        let mut listed = HashSet::new();
        while let Some(read) = headers.next().await {
            if let Ok(header) = read {
                listed.extend(header.packs.iter().map(|o| pack_key(&o.id)));
                listed.extend(header.indexes.iter().map(|o| index_key(&o.id)));
                listed.extend(header.dictionaries.iter().map(|o| dictionary_key(&o.id)));
            }
        }
        Ok(listed)
    }

    /// Reads every snapshot, newest last (by its header's time), and keeps of each what `keep`
    /// returns. Damaged snapshots, and objects under `snapshots/` not named by a hash, are
    /// returned as errors with their names. Read [`HEADERS_AT_ONCE`] at a time (from a bucket
    /// each is a round trip) within [`WHOLE_READS`].
    ///
    /// `keep` sees each object as it is read, so that what a reader holds of a year of
    /// snapshots is what it keeps, not every object whole: objects planted to parse (a real
    /// header, then hundreds of MiB named by their hash) would otherwise all stay in memory.
    /// [`SealedSnapshot::keep_header_only`] or [`opened`] are what the callers keep.
    pub async fn snapshots<T>(
        &self,
        keep: impl Fn(SealedSnapshot) -> T,
    ) -> Result<Vec<std::result::Result<T, (String, Error)>>> {
        use futures::StreamExt;
        let keep = &keep;
        let reads = self.listed_names().await?.into_iter().map(|(name, size)| async move {
            let Ok(id) = name.parse::<SnapshotId>() else {
                let error = Error::corrupt(format!("snapshots/{name}"), "its name is not a BLAKE3 hash");
                return (None, Err((name, error)));
            };
            match self.read_listed_snapshot(&id, size).await {
                Ok(sealed) => (Some(sealed.header.time), Ok(keep(sealed))),
                Err(error) => (None, Err((name, error))),
            }
        });
        let mut all: Vec<_> = futures::stream::iter(reads).buffered(HEADERS_AT_ONCE).collect().await;
        all.sort_by_key(|(time, _)| *time);
        let (_, kept): (Vec<_>, Vec<_>) = all.into_iter().unzip();
        Ok(kept)
    }

    /// Snapshot ids with their (unauthenticated) headers' times, newest first: the order in
    /// which `latest` tries them. Those whose header cannot be read come last, without a time:
    /// junk in `snapshots/` must not stop a restore or a backup, and is named when tried.
    pub async fn snapshots_newest_first(&self) -> Result<Vec<(Option<DateTime<Utc>>, SnapshotId)>> {
        self.newest_first(self.listed_snapshots().await?).await
    }

    /// Listed snapshots (with their sizes) with their headers' times, newest first (see
    /// [`Self::snapshots_newest_first`]); the headers read [`HEADERS_AT_ONCE`] at a time.
    async fn newest_first(&self, listed: Vec<(SnapshotId, u64)>) -> Result<Vec<(Option<DateTime<Utc>>, SnapshotId)>> {
        use futures::StreamExt;
        let headers = listed.into_iter().map(|(id, size)| async move {
            let time = self.read_snapshot_header(&id, Some(size)).await.ok().map(|header| header.time);
            (time, id)
        });
        let mut found: Vec<_> = futures::stream::iter(headers).buffer_unordered(HEADERS_AT_ONCE).collect().await;
        found.sort_by(|a, b| b.cmp(a));
        Ok(found)
    }

    /// The newest snapshot that proves it was written with this repository's keys, opened;
    /// the newer ones that did not, with why. A forged or damaged snapshot dated in the future
    /// is passed over, never taken for the newest.
    ///
    /// Snapshots in `settled` are left out without a read: the caller looked at them before
    /// and found none newer than what it already knows (a backup host's pin records them, so
    /// that a nightly backup reads only the headers of snapshots new since the last one).
    pub async fn newest_authentic(&self, keyring: &Keyring, settled: &BTreeSet<SnapshotId>) -> Result<NewestAuthentic> {
        let sized = self.listed_snapshots().await?;
        let listed = sized.iter().map(|(id, _)| id.clone()).collect();
        let unsettled = sized.into_iter().filter(|(id, _)| !settled.contains(id)).collect();
        let mut newest = NewestAuthentic { found: None, rejected: Vec::new(), settled: Vec::new(), listed };
        let mut candidates = self.newest_first(unsettled).await?.into_iter();
        for (_, id) in candidates.by_ref() {
            match self.read_snapshot(&id).await.and_then(|sealed| sealed.open(keyring).map(|_| sealed)) {
                Ok(sealed) => {
                    newest.settled.push(id);
                    newest.found = Some(sealed);
                    break;
                }
                Err(error @ (Error::Corrupt { .. } | Error::UnsupportedFormat { .. } | Error::Missing { .. })) => {
                    newest.rejected.push((id, error));
                }
                Err(error) => return Err(error),
            }
        }
        // Older than the one found by their headers' times: the order says they are not the
        // newest, as it did before anything was settled. Those whose header did not read stay
        // unsettled, to be tried (and named) again.
        newest.settled.extend(candidates.filter(|(time, _)| time.is_some()).map(|(_, id)| id));
        Ok(newest)
    }

    /// A snapshot here that is a copy of `known` (`rekey --reencrypt`, `prune --identity`: same
    /// place in the chain and time, a new id, the old one deleted), proven with `keyring`. Looked
    /// for when the snapshot a backup host knows is gone but another host's newer snapshot is the
    /// newest: the copy is then not the newest, and only its header says what it copies.
    pub async fn copy_of(&self, known: &crate::trust::SnapshotMark, keyring: &Keyring) -> Option<SnapshotId> {
        for id in self.snapshot_ids().await.ok()? {
            if id == known.id {
                continue;
            }
            let Ok(header) = self.read_snapshot_header(&id, None).await else { continue };
            let copies = header.sequence == known.sequence
                && (header.replaces.as_ref() == Some(&known.id) || header.time == known.time);
            if copies && self.read_snapshot(&id).await.and_then(|sealed| sealed.open(keyring).map(|_| ())).is_ok() {
                return Some(id);
            }
        }
        None
    }

    /// Resolves `latest` or an id prefix to one snapshot id.
    pub async fn resolve_snapshot(&self, selector: &str) -> Result<SnapshotId> {
        if selector == "latest" {
            return self.snapshots_newest_first().await?.into_iter().next().map(|(_, id)| id).ok_or_else(|| {
                Error::SnapshotNotFound(format!("repository {} has no snapshots yet", self.target.location()))
            });
        }
        let ids = self.snapshot_ids().await?;
        if selector.len() < 4 || !selector.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::SnapshotNotFound(format!(
                "{selector:?} is not a snapshot id (give `latest` or at least 4 hex digits of an id)"
            )));
        }
        let matches: Vec<SnapshotId> =
            ids.into_iter().filter(|id| id.as_str().starts_with(&selector.to_ascii_lowercase())).collect();
        let matches = if matches.len() > 1 {
            // Junk named with a real snapshot's first digits must not hide it, nor a copy of it
            // under another name: of several, the ones that read and are named by the hash of
            // their manifest (the one chosen still proves itself with the key when opened).
            let mut readable = Vec::new();
            for id in &matches {
                if self.read_snapshot(id).await.is_ok() {
                    readable.push(id.clone());
                }
            }
            if readable.is_empty() { matches } else { readable }
        } else {
            matches
        };
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::SnapshotNotFound(format!("no snapshot {selector} in {}", self.target.location()))),
            _ => Err(Error::SnapshotNotFound(format!(
                "{selector} matches {} snapshots; give more digits",
                matches.len()
            ))),
        }
    }
}
