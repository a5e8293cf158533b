//! `restore`: rebuild a database from a snapshot, all or nothing.
//!
//! By default everything happens in one transaction on one connection: pre-data DDL, every
//! table's data (`COPY … FREEZE`, since each table was created in this transaction), large
//! objects, sequence values, post-data DDL, then COMMIT. Any failure (a damaged chunk, a digest
//! or row-count mismatch, a server error, the process being killed) ends the connection without
//! COMMIT, so the target database is left exactly as it was.
//!
//! `--parallel` trades the last of that for speed: PostgreSQL loads a COPY on one core, so
//! tables go to `--jobs` connections at once (see [`Load::in_parallel`]). Errors still leave the
//! database as it was (what was committed is dropped again); only a killed restore leaves a
//! partial database behind, marked by the schema [`postgres::INCOMPLETE_RESTORE_SCHEMA`].
//!
//! In both modes `--jobs` also sets how many chunks are fetched, decrypted, decompressed and
//! proven in parallel ahead of each loading connection.

pub mod diff;
pub mod dump;
mod load;
mod part;
pub mod related;
mod rows;
mod select;
mod streams;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fetch::{ChunkReader, ReadStats};
use crate::postgres::script::TableName;
use crate::postgres::{self, Database, LoadSession};
use crate::progress::{Shared, Unit};
use crate::repo::{AdminKeyring, Keyring, Manifest, RoleRecord};
use crate::repo_set::RepoSet;
use crate::trust::SnapshotMark;

use load::{Load, check_digest, check_table, session};
use select::choose_snapshot;
use streams::{Streams, spool_chunks};

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
    /// Which snapshots `snapshot` chooses among (`latest` is of one database: see
    /// [`RepoSet::resolve_snapshot`]).
    pub filter: crate::repo::SnapshotFilter,
    /// Chunks decoded in parallel.
    pub jobs: usize,
    /// What to do with a non-empty target.
    pub existing: ExistingContents,
    /// Load tables on `jobs` connections at once instead of in one transaction.
    pub parallel: bool,
    /// Index entries kept in memory per target; past that the index is a temporary file, as
    /// the chunk lists always are ([`ChunkSpool`]). [`repo::INDEX_IN_MEMORY`] unless testing.
    pub index_in_memory: usize,
    /// How values PostgreSQL TOASTs are compressed in the restored tables.
    pub toast_compression: postgres::ToastCompression,
    /// `maintenance_work_mem` of the restore's sessions at least (index builds sort in it).
    pub maintenance_work_mem: String,
    /// The newest snapshot the caller knows of (its pin's high-water mark): `latest` says so
    /// when it finds only older ones.
    pub newest_known: Option<SnapshotMark>,
    /// Create the target database first, once the snapshot is chosen (with its source's
    /// encoding and collation), with this comment on it; `None`: it exists.
    pub create: Option<String>,
    /// What to leave out of the schema: owners (`--no-owner`), privileges (`--no-acl`).
    pub leave_out: postgres::script::LeaveOut,
    /// Create the roles the snapshot's objects name that the server lacks (`--create-roles`).
    pub create_roles: bool,
    /// Load as this role (`--role`: `SET ROLE` on every loading session).
    pub role: Option<String>,
    /// Beside live data, restore even when the snapshot's own functions would run while it
    /// loads as a superuser (`--trust-snapshot-code`).
    pub trust_snapshot_code: bool,
    /// The `search_path` the snapshot's script runs under instead of pg_dump's empty one
    /// (`--search-path`; whole restores only).
    pub search_path: Option<postgres::script::SearchPath>,
    /// Part of the snapshot (`--table`, `--exclude-table`, `--schema-map`, `--data-only`);
    /// the default is all of it.
    pub part: PartOptions,
}

/// Which part of a snapshot a restore makes.
#[derive(Debug, Clone, Default)]
pub struct PartOptions {
    /// Table patterns (`schema.table`, as backup's `--table`); all tables when empty.
    pub include: Vec<String>,
    /// Table patterns left out.
    pub exclude: Vec<String>,
    /// Schemas restored under other names: (from, to).
    pub schema_map: Vec<(String, String)>,
    /// Rows only, into the target's existing tables: no schema is made, no sequence is set.
    pub data_only: bool,
    /// Only these rows (`--rows`): the tables they are in, with nothing but them.
    pub rows: Vec<related::RowsRoot>,
    /// With the rows linked to them by foreign keys (`--with-related`).
    pub with_related: bool,
    /// Into a database with live data, without `--schema-map`: rows are written into the live
    /// tables, and a row whose key is taken is this.
    pub on_conflict: postgres::OnConflict,
    /// Say which rows of which tables would be written, and write nothing.
    pub dry_run: bool,
}

impl PartOptions {
    /// Whether the whole snapshot is restored.
    pub fn is_whole(&self) -> bool {
        self.include.is_empty()
            && self.exclude.is_empty()
            && self.schema_map.is_empty()
            && !self.data_only
            && self.rows.is_empty()
    }
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
#[allow(clippy::struct_excessive_bools, reason = "independent facts of one restore, each said in its report")]
pub struct RestoreReport {
    /// The snapshot restored.
    pub snapshot_id: crate::repo::SnapshotId,
    /// Its place in the repository's chain (0 before format 7).
    pub sequence: u64,
    /// Its time.
    pub time: chrono::DateTime<chrono::Utc>,
    /// What the restore noticed and went on past: newer snapshots that failed to prove
    /// themselves, a newer snapshot known but not found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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
    /// Whether tables were loaded on several connections (`--parallel`).
    pub parallel: bool,
    /// Roles created (`--create-roles`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles_created: Vec<String>,
    /// `--rows`: the rows chosen, per table, and what became of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rows_chosen: Vec<RowsWritten>,
    /// `--dry-run`: nothing was written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// `--dry-run` without `--rows`: `rows_chosen` lists the tables the restore would load.
    #[serde(skip)]
    pub tables_planned: bool,
    /// `latest` passed over a snapshot that is or may be newer (it does not open, its header
    /// giving a later time or not reading at all, or the newest this machine knows of is gone
    /// from storage; the warnings say which): what was restored may not be the newest backup.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped_newer: bool,
}

/// `--rows`: one table's rows chosen, and what became of them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowsWritten {
    /// `schema.table`, as the snapshot names it.
    pub table: String,
    /// Rows chosen.
    pub rows: u64,
    /// Into live tables: rows inserted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inserted: Option<u64>,
    /// Into live tables: rows updated (`--on-conflict update`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<u64>,
    /// Into live tables: rows left as they were (`--on-conflict skip`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
    /// `--dry-run` without `--rows`: the table's bytes of data (COPY text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// `--dry-run` with `--schema-map`: the name the table would be restored as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_as: Option<String>,
}

/// Links of the snapshot's schema the target does not confirm, named one by one in a
/// restore's warnings; more are counted.
const LINKS_NAMED: usize = 5;

/// The comment on the database `restore --create` loads into before it takes its name.
pub const RESTORING_MARK: &str = "crmvault restore --create: loading; renamed when complete, dropped if it fails";

/// `restore --create`: restores into a new database that takes `options.database`'s name only
/// when complete. It is loaded under a name of its own (made from the target's) and renamed
/// into place at the end; if anything fails it is dropped, so the target name never holds a
/// partial database, whichever way the tables are loaded (`--parallel` is then as safe as one
/// transaction). One an earlier, killed run left is dropped first. The target must not exist.
pub async fn run_creating(
    targets: &RepoSet,
    keyring: &AdminKeyring,
    options: &RestoreOptions,
    progress: Shared,
) -> Result<RestoreReport> {
    let (database, name) = (&options.database, options.database.name());
    if !database.names_database() || postgres::load::SERVER_DATABASES.contains(&name.as_str()) {
        return Err(Error::Invalid(format!(
            "{database}: --create needs the new database's name (postgres://…/crm_restored)"
        )));
    }
    let server = postgres::Server::of(database).await?;
    if server.comment(&name).await?.is_some() {
        return Err(Error::Invalid(format!(
            "{database} exists: --create makes a new database (restore into this one without --create)"
        )));
    }
    let loading = format!("crmvault_restoring_{}", &blake3::hash(name.as_bytes()).to_hex()[..16]);
    let lock = format!("crmvault restore --create {name}");
    if !server.try_lock(&lock).await? {
        let holder = server.lock_holder(&lock).await?.unwrap_or_else(|| "another session".into());
        return Err(Error::Invalid(format!(
            "another restore --create is making {database}: {holder} holds its lock (if that is no restore, \
             `SELECT pg_terminate_backend(pid)` as a superuser ends it)"
        )));
    }
    match server.comment(&loading).await? {
        Some(Some(comment)) if comment == RESTORING_MARK => {
            tracing::warn!("dropping {loading}, left by a restore --create that did not finish");
            server.drop(&loading).await?;
        }
        // Killed between CREATE DATABASE and its COMMENT: nothing was loaded into it yet. Looked
        // into only if this role made it and nobody uses it.
        Some(None)
            if server.is_ours_and_idle(&loading, options.role.as_deref()).await?
                && postgres::load::holds_nothing(&database.on_database(&loading)).await? =>
        {
            tracing::warn!("dropping {loading}, empty, left by a restore --create killed as it made it");
            server.drop_if_idle(&loading).await?;
        }
        Some(_) => {
            return Err(Error::Invalid(format!(
                "database {loading} exists and was not left by a restore --create of this role (it holds objects, \
                 belongs to another role or is in use): it is where --create loads {database} (drop it, or restore \
                 under another name)"
            )));
        }
        None => {}
    }
    let mut loading_options = options.clone();
    loading_options.database = database.on_database(&loading);
    loading_options.create = Some(RESTORING_MARK.to_string());
    // A Ctrl-C stops the load, and the database it went into is dropped below.
    let undoable = crate::interrupt::Undoable::begin();
    let restored = restore(targets, keyring, &loading_options, progress).await;
    let (finished, created) = match restored {
        Ok((report, manifest)) => {
            let created = report.roles_created.clone();
            // Complete, then shaped like the source's database as it takes its name.
            let mut finish = postgres::database::Finish {
                loading: &loading,
                name: Some(&name),
                object: manifest.database_object.as_ref(),
                leave_out: options.leave_out,
                role: options.role.as_deref(),
            };
            let finished = server.finish_creating(&finish).await;
            // The name taken meanwhile (an application that makes its database when it finds
            // none): the restored database, complete and proven, is not thrown away.
            if let Err(error) = &finished
                && server.comment(&name).await?.is_some()
            {
                finish.name = None;
                if server.finish_creating(&finish).await.is_ok() {
                    return Err(Error::Invalid(format!(
                        "{database} was created by someone else while the restore loaded it ({error}); the restored \
                         database, complete and proven, is kept as {loading}: look at the new {name}, then rename \
                         {loading} into place (ALTER DATABASE … RENAME TO …)",
                    )));
                }
            }
            (finished.map(|()| report), created)
        }
        // Said of the database the admin named, not of the one it was loading into.
        Err(Error::MissingRoles { roles, .. }) => {
            (Err(Error::MissingRoles { database: database.to_string(), roles }), vec![])
        }
        Err(error) => (Err(error), vec![]),
    };
    if finished.is_err() && server.comment(&loading).await?.flatten().as_deref() == Some(RESTORING_MARK) {
        server.drop(&loading).await?;
        server.drop_roles(&created).await?;
    }
    drop(undoable);
    finished
}

/// The roles the database itself names (`database_roles`: owner, grantees, roles with settings
/// in it) that the snapshot records nothing of: the bootstrap superuser as a grantee (pinned,
/// so the catalog records no dependency on it) and predefined `pg_…` roles. A target may lack
/// them all the same (a bootstrap superuser of another name, an older server), and `--create`
/// would fail on them at its last step, after the whole load: they are checked with the rest.
fn unrecorded_roles(database_roles: &[String], recorded: &[RoleRecord]) -> Vec<RoleRecord> {
    database_roles
        .iter()
        .filter(|name| !recorded.iter().any(|role| role.name == **name))
        .map(|name| RoleRecord {
            name: name.clone(),
            owns: false,
            granted: false,
            named: false,
            database: true,
            member_of: Vec::new(),
            attributes: Vec::new(),
        })
        .collect()
}

/// Whether a role name is one PostgreSQL reserves for its predefined roles.
fn is_predefined(name: &str) -> bool {
    name.starts_with("pg_")
}

/// `alice (owns objects, granted privileges)`: a missing role and why the restore needs it.
fn describe_role(role: &RoleRecord) -> String {
    if is_predefined(&role.name) {
        return format!(
            "{} (a role newer PostgreSQL versions predefine, which the database grants privileges to or has settings \
             for; it cannot be made: --no-acl leaves its grants out)",
            crate::error::printable(&role.name)
        );
    }
    let mut needs = Vec::new();
    if role.owns {
        needs.push("owns objects");
    }
    if role.granted {
        needs.push("granted privileges");
    }
    if role.named {
        needs.push("named in row-security policies, which --no-owner and --no-acl keep: --create-roles makes it");
    }
    if needs.is_empty() && role.database {
        needs.push("the database's owner, grantee, or has settings in it");
    }
    // A name is the source's: no control character of it reaches the terminal.
    format!("{} ({})", crate::error::printable(&role.name), needs.join(", "))
}

/// Checks, before anything is loaded, the schema scripts of a restore into an empty database
/// (or one `--clean` empties): a statement pg_dump does not write is refused, and so, when
/// the restore can act as a superuser, is code of the snapshot's own that loading could run
/// ([`postgres::part::vet`]), unless `--trust-snapshot-code`. Whoever controls the backup host
/// writes the script (it chooses `pg_dump`); whoever could create functions in the source
/// database wrote what they do.
async fn vet_scripts(
    client: &LoadSession,
    options: &RestoreOptions,
    (pre_data, post_data): (&str, &str),
    refreshed: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<()> {
    /// What a refusal names at most.
    const NAMED: usize = 10;
    let vetting = postgres::part::vet(pre_data, post_data);
    if options.trust_snapshot_code {
        if !vetting.refused.is_empty() {
            let warning = format!(
                "the snapshot's schema script holds statements pg_dump does not write for a database, run as \
                 written (--trust-snapshot-code): {}",
                vetting.refused.join("; ")
            );
            tracing::warn!("{warning}");
            warnings.push(warning);
        }
        return Ok(());
    }
    if !vetting.refused.is_empty() {
        return Err(Error::Invalid(format!(
            "the snapshot's schema script holds statements pg_dump does not write for a database: {}; refused, \
             nothing was restored (a backup host not to be trusted could have put them there, to run with your \
             rights). If you trust the snapshot's source, give --trust-snapshot-code",
            vetting.refused.join("; ")
        )));
    }
    // A materialized view's query runs as its owner when it is refreshed (by the script, or after
    // it: [`Load`]), any query, and so does that of every view it reads, as the view's owner.
    let mut refreshes: Vec<(String, Option<&String>)> =
        vetting.refreshed.iter().map(|(view, owner)| (format!("materialized view {view}"), owner.as_ref())).collect();
    refreshes.extend(refreshed.iter().map(|(schema, name)| {
        let view = format!("{schema}.{name}");
        let owner = vetting.owners.get(&view);
        (format!("materialized view {view}"), owner)
    }));
    if !refreshes.is_empty() {
        refreshes.extend(vetting.views.iter().map(|view| (format!("view {view}"), vetting.owners.get(view))));
    }
    if (vetting.runs_code.is_empty() && refreshes.is_empty()) || !client.is_superuser().await? {
        return Ok(());
    }
    let owners: Vec<&str> = refreshes.iter().filter_map(|(_, owner)| owner.map(String::as_str)).collect();
    let reaching = client.roles_with_server_rights(&owners).await?;
    let mut code = vetting.runs_code.clone();
    for (view, owner) in refreshes {
        match owner {
            None => code.insert(format!("{view} (read by a refresh as you)")),
            Some(owner) if reaching.contains(owner) => code.insert(format!("{view} (read by a refresh as {owner})")),
            Some(_) => false,
        };
    }
    if code.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = code.iter().map(|name| crate::error::printable(name)).collect();
    let named = crate::error::a_few(named, NAMED, |more| format!("and {more} more"));
    Err(Error::Invalid(format!(
        "the snapshot's own code could run while this restore loads, with a superuser's rights: {} (the \
         routines, operators, casts and operator classes it makes, but trigger functions; triggers it makes \
         before the rows load; languages, event triggers, extensions not known to keep to the database; \
         materialized views a superuser refreshes, whose queries read anything); whoever could create functions \
         in the source database, or controls the backup host, could act as you on this server. Connect as a \
         login without superuser that owns the target database (--db postgres://ROLE@…), or give \
         --trust-snapshot-code if you trust them; nothing was restored",
        named.join(", ")
    )))
}

/// Restores a snapshot into `options.database`, reading from the first target that has each chunk.
pub async fn run(
    targets: &RepoSet,
    keyring: &AdminKeyring,
    options: &RestoreOptions,
    progress: Shared,
) -> Result<RestoreReport> {
    Ok(restore(targets, keyring, options, progress).await?.0)
}

/// [`run`], and the manifest of the snapshot restored (with its digests: a drill compares the
/// restored database with it).
pub(crate) async fn restore(
    targets: &RepoSet,
    keyring: &AdminKeyring,
    options: &RestoreOptions,
    progress: Shared,
) -> Result<(RestoreReport, Manifest)> {
    // Beside live data a side schema's definitions would resolve names among the live
    // objects (an operator a live role made), which the side-schema rules keep them from.
    if options.search_path.is_some() && !options.part.schema_map.is_empty() {
        return Err(Error::Invalid("--search-path is not for side-schema restores (--schema-map)".into()));
    }
    let mut warnings = Vec::new();
    let chosen = choose_snapshot(targets, keyring, options.into(), &mut warnings).await?;
    let (mut manifest, sources, mark, skipped_newer) =
        (chosen.manifest, chosen.sources, chosen.mark, chosen.skipped_newer);
    let snapshot_id = mark.id.clone();
    let reader = Arc::new(ChunkReader::with_sources(sources, Keyring::clone(keyring), options.jobs * 2 + 2));
    tracing::debug!("snapshot {} opened, its index loaded", snapshot_id.short());
    let spool = spool_chunks(&reader, &mut manifest).await?;
    tracing::debug!("every chunk of the snapshot found");
    let mac_key = keyring.mac_key();
    let jobs = options.jobs.max(1);
    let streams = Streams { reader: &reader, spool: &spool, mac_key: &mac_key, jobs, progress: progress.as_ref() };
    let leave_out = options.leave_out;
    let pre_data = streams.read("schema (pre-data)", &manifest.pre_data).await?;
    let pre_data = postgres::script::without(&postgres::executable_sql(&pre_data)?, leave_out);
    let post_data = streams.read("schema (post-data)", &manifest.post_data).await?;
    let post_data = postgres::script::without(&postgres::executable_sql(&post_data)?, leave_out);

    // `--rows`: the rows, found in the snapshot before the database is touched.
    let (related, keys) = if options.part.rows.is_empty() {
        (None, Vec::new())
    } else {
        let mut partitions = postgres::part::Partitions::of(&pre_data, &post_data);
        // Into the database's own tables, a link is one there too.
        let unconfirmed = partitions.confirm_links(&options.database, &options.part.schema_map).await?;
        // What the database does not have, a few of each kind said.
        let mut say = |lines: Vec<String>, what: &str| {
            let database = &options.database;
            let more = |more| format!("{more} more {what} of the snapshot's schema that {database} does not have");
            for warning in crate::error::a_few(lines, LINKS_NAMED, more) {
                tracing::warn!("{warning}");
                warnings.push(warning);
            }
        };
        say(unconfirmed, "links");
        // The keys `--with-related` follows (plain `--rows` follows none).
        let mut declared = postgres::part::declared_foreign_keys(&pre_data, &post_data);
        let mut left_out = Vec::new();
        if options.part.with_related {
            (declared, left_out) =
                postgres::part::confirm_foreign_keys(declared, &options.database, &options.part.schema_map).await?;
        }
        say(left_out, "foreign keys");
        let keys = postgres::part::expand_foreign_keys(declared, &partitions);
        let rows = &options.part.rows;
        let chosen =
            related::closure(&streams, &manifest, (&keys, &partitions), rows, options.part.with_related).await?;
        (Some(chosen), keys)
    };
    let chosen = |related: &related::Related| -> Vec<RowsWritten> {
        related
            .rows
            .iter()
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(table, rows)| RowsWritten {
                table: format!("{}.{}", table.schema, table.name),
                rows: rows.len() as u64,
                inserted: None,
                updated: None,
                skipped: None,
                bytes: None,
                restored_as: None,
            })
            .collect()
    };
    let report = |rows_chosen: Vec<RowsWritten>, tables: usize, rows: u64, bytes: u64, dry_run: bool| RestoreReport {
        snapshot_id: mark.id.clone(),
        sequence: mark.sequence,
        time: mark.time,
        warnings: Vec::new(),
        tables,
        rows,
        bytes,
        chunks: 0,
        sources: ReadStats::default(),
        parallel: false,
        roles_created: Vec::new(),
        rows_chosen,
        dry_run,
        tables_planned: false,
        skipped_newer,
    };
    if options.part.dry_run {
        let (rows_chosen, bytes) = match &related {
            Some(related) => (chosen(related), 0),
            None => part::planned(&options.part, &manifest, (&pre_data, &post_data), &mut warnings)?,
        };
        let rows = rows_chosen.iter().map(|t| t.rows).sum();
        let mut dry = report(rows_chosen.clone(), rows_chosen.len(), rows, bytes, true);
        dry.tables_planned = related.is_none();
        dry.warnings = warnings;
        dry.sources = reader.stats();
        return Ok((dry, manifest));
    }
    if let Some(comment) = &options.create {
        postgres::create_database(&options.database, manifest.session.as_ref(), options.role.as_deref(), comment)
            .await?;
    }
    let client = session(options, &manifest).await?;
    // `restore --create` gives the new database its source's owner, grants and settings.
    let database_roles: Vec<String> = match &manifest.database_object {
        Some(object) if options.create.as_deref() == Some(RESTORING_MARK) => {
            postgres::database::roles_needed(object, leave_out).into_iter().map(str::to_string).collect()
        }
        _ => Vec::new(),
    };
    // Before anything is changed: every role the schema will name must exist, or be made.
    let recorded = manifest.roles.as_deref().unwrap_or_default();
    let unrecorded = unrecorded_roles(&database_roles, recorded);
    let needed: Vec<&RoleRecord> = recorded
        .iter()
        .filter(|role| {
            role.named
                || (role.owns && !leave_out.owners)
                || (role.granted && !leave_out.privileges)
                || database_roles.contains(&role.name)
        })
        .chain(&unrecorded)
        .collect();
    let missing = client.missing_roles(&needed).await?;
    // A predefined role (`pg_…`) cannot be made: no --create-roles helps.
    if !missing.is_empty() && (!options.create_roles || missing.iter().any(|role| is_predefined(&role.name))) {
        return Err(Error::MissingRoles {
            database: options.database.to_string(),
            roles: missing.iter().map(|role| describe_role(role)).collect(),
        });
    }
    // An owner that was no superuser in the source and is one here (a source role named like
    // this server's superuser): its SECURITY DEFINER functions and views would act as one.
    if !leave_out.owners {
        let owners: Vec<&str> = recorded
            .iter()
            .filter(|role| role.owns && !role.attributes.iter().any(|a| a == "SUPERUSER"))
            .map(|role| role.name.as_str())
            .collect();
        let risen = client.superusers_among(&owners).await?;
        if !risen.is_empty() {
            let named: Vec<String> = risen.iter().map(|name| crate::error::printable(name)).collect();
            return Err(Error::Invalid(format!(
                "{} own{} objects of the snapshot and {} a superuser on this server, though not in the source \
                 database: {} SECURITY DEFINER functions and views would act with a superuser's rights here. \
                 Restore with --no-owner (the objects are then the restoring role's), or give the role back \
                 what it had",
                named.join(", "),
                if named.len() == 1 { "s" } else { "" },
                if named.len() == 1 { "is" } else { "are" },
                if named.len() == 1 { "its" } else { "their" },
            )));
        }
    }
    let missing: Vec<RoleRecord> = missing.into_iter().cloned().collect();
    drop(needed);
    // `--create`: what the new database itself is given at the end is tried now, on it empty,
    // so a refusal comes before the load; the settings refused are left out.
    if let Some(object) = manifest.database_object.as_mut()
        && options.create.as_deref() == Some(RESTORING_MARK)
    {
        // Made for the try (and undone): the missing roles the database itself names, no others
        // to wait on.
        let to_make: Vec<&RoleRecord> = missing.iter().filter(|role| database_roles.contains(&role.name)).collect();
        let server = postgres::Server::of(&options.database).await?;
        let mut left_out = Vec::new();
        if !options.trust_snapshot_code {
            left_out = server.leave_out_superuser_settings(object).await?;
        }
        let giving = (leave_out, options.role.as_deref());
        left_out.extend(server.try_giving(&options.database.name(), object, giving, &to_make).await?);
        for warning in left_out {
            tracing::warn!("{warning}");
            warnings.push(warning);
        }
    }
    let mut clean = false;
    let contents = client.describe_contents().await?;
    let beside_live = contents.is_some();
    // `--rows` into live tables: written through the live tables' own keys.
    if let Some(related) = &related
        && contents.is_some()
        && options.part.schema_map.is_empty()
    {
        let written = related::into_live(&client, options, &manifest, related, &keys).await?;
        let rows = written.iter().map(|t| t.rows).sum();
        // The rows chosen, as the report of a restore into new tables counts them.
        let bytes = related.rows.keys().map(|table| related.copy_text(table).len() as u64).sum();
        let mut live = report(written.clone(), written.len(), rows, bytes, false);
        live.warnings = warnings;
        live.sources = reader.stats();
        live.chunks = live.sources.served.iter().map(|(_, served)| served).sum();
        return Ok((live, manifest));
    }
    if options.part.on_conflict != postgres::OnConflict::Fail {
        return Err(Error::Invalid(
            "--on-conflict is for rows written into live tables (--rows into a database with data, without \
             --schema-map)"
                .into(),
        ));
    }
    let only = related.as_ref().map(|related| related.rows.keys().cloned().collect());
    let (pre_data, post_data) = if options.part.is_whole() {
        if let Some(contents) = contents {
            if options.existing == ExistingContents::Refuse {
                return Err(Error::TargetNotEmpty { database: options.database.to_string(), detail: contents });
            }
            if options.parallel && !client.holds_incomplete_restore().await? {
                return Err(Error::NotEmptyForParallel { database: options.database.to_string(), detail: contents });
            }
            clean = true;
        }
        (pre_data, post_data)
    } else {
        let scripts = (pre_data.as_str(), post_data.as_str());
        part::choose(&client, options, &mut manifest, scripts, (contents, only.as_ref()), &mut warnings).await?
    };
    // Beside live data `part::choose` kept only definitions of the side schemas.
    if options.part.is_whole() || !beside_live {
        let refreshed = &manifest.materialized_views;
        vet_scripts(&client, options, (&pre_data, &post_data), refreshed, &mut warnings).await?;
    }
    // After the vetting, which reads pg_dump's preamble as pg_dump writes it.
    let (pre_data, post_data) = match &options.search_path {
        Some(path) => {
            let (pre, post) = (&pre_data, &post_data);
            let with = |script| postgres::script::with_search_path(script, path).map_err(Error::Invalid);
            (with(pre)?, with(post)?)
        }
        None => (pre_data, post_data),
    };
    // `--rows`: each table restored takes the rows chosen of it, and only those.
    let chosen_rows = related.as_ref().map(|related| {
        related
            .rows
            .keys()
            .map(|table| {
                let schema = postgres::part::renamed(&options.part.schema_map, &table.schema).unwrap_or(&table.schema);
                (TableName { schema: schema.to_string(), name: table.name.clone() }, related.copy_text(table))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    });
    // Large objects load as a table of their own, through the same streams.
    let loaded = manifest.tables.iter().chain(manifest.large_objects.iter());
    progress.phase("loading", Unit::Bytes, Some(loaded.clone().map(|t| t.data.bytes).sum()));
    progress.items(loaded.count() as u64);
    let load = Load {
        client: &client,
        streams: &streams,
        manifest: &manifest,
        jobs,
        options,
        roles: &missing.iter().collect::<Vec<_>>(),
        freeze: !options.part.data_only,
        rows: chosen_rows.as_ref(),
        created_roles: std::sync::Mutex::new(Vec::new()),
        warnings: std::sync::Mutex::new(Vec::new()),
        made_roles: std::sync::Mutex::new(None),
        loaders: std::sync::Mutex::new(Vec::new()),
        // What `--clean` empties, or an unfinished `--parallel` restore left, is no live data.
        beside_live: beside_live && !clean,
    };
    let rows = if options.parallel {
        load.in_parallel(clean, &pre_data, &post_data, &snapshot_id).await?
    } else {
        // Stopped, the transaction is never committed: its connection goes with the restore.
        crate::interrupt::or_interrupted(load.in_one_transaction(clean, &pre_data, &post_data)).await?
    };
    warnings.extend(load.warnings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..));
    let sources = reader.stats();
    let report = RestoreReport {
        snapshot_id,
        tables: manifest.tables.len(),
        sequence: mark.sequence,
        time: mark.time,
        warnings,
        rows,
        // With --rows, the rows chosen, not the tables they came from.
        bytes: match &chosen_rows {
            Some(rows) => rows.values().map(|text| text.len() as u64).sum(),
            None => manifest.tables.iter().map(|t| t.data.bytes).sum(),
        },
        chunks: sources.served.iter().map(|(_, served)| served).sum(),
        sources,
        parallel: options.parallel,
        roles_created: load.created_roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        rows_chosen: related.as_ref().map(chosen).unwrap_or_default(),
        dry_run: false,
        tables_planned: false,
        skipped_newer,
    };
    Ok((report, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> RoleRecord {
        RoleRecord {
            name: name.into(),
            owns: true,
            granted: false,
            named: false,
            database: true,
            member_of: Vec::new(),
            attributes: Vec::new(),
        }
    }

    #[test]
    fn roles_the_database_names_that_the_snapshot_does_not_record_are_checked_too() {
        let recorded = [role("app"), role("owner")];
        let unrecorded =
            unrecorded_roles(&["app", "owner", "postgres", "pg_read_all_data"].map(String::from), &recorded);
        let names: Vec<&str> = unrecorded.iter().map(|role| role.name.as_str()).collect();
        assert_eq!(names, ["postgres", "pg_read_all_data"]);
        assert!(unrecorded.iter().all(|role| role.database && !role.owns && role.attributes.is_empty()));
        assert!(describe_role(&unrecorded[0]).contains("the database's owner, grantee"));
        // --create-roles cannot make a predefined role: the message says what can.
        assert!(is_predefined("pg_read_all_data") && !is_predefined("app_pg_x"));
        assert!(describe_role(&unrecorded[1]).contains("--no-acl"));
    }

    #[test]
    fn a_missing_roles_name_reaches_the_terminal_escaped() {
        let described = describe_role(&role("app\u{1b}]0;pwn\u{7}\nx"));
        assert!(!described.chars().any(char::is_control), "{described:?}");
        assert!(described.starts_with("app\\u{1b}]0;pwn\\u{7}\\nx ("), "{described:?}");
    }
}
