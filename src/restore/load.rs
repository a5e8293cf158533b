//! Loading into PostgreSQL: the schema script's steps, every table's COPY with its digest and
//! row count checked, in one transaction or on several connections (`--parallel`).

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::postgres::script::{Entry, Script, Step, TableName};
use crate::postgres::{self, LoadSession};
use crate::repo::{Manifest, RoleRecord, StreamManifest, TableManifest};

use super::{RestoreOptions, Streams};

/// A connection to `options.database` set up for loading: TOAST compression and
/// `maintenance_work_mem` as the options ask, dates and intervals read as the backup wrote
/// them (every session of a restore is one of these).
pub(super) async fn session(options: &RestoreOptions, manifest: &Manifest) -> Result<LoadSession> {
    let settings = manifest.session.as_ref();
    let role = options.role.as_deref();
    let session =
        LoadSession::open(&options.database, options.toast_compression, &options.maintenance_work_mem, settings, role)
            .await?;
    // `--search-path`: the scripts set it where they run; a connection that only loads rows
    // (`--parallel`) needs it too, for the checks, generated columns and index entries that
    // call the functions it is for.
    if let Some(path) = &options.search_path {
        session.use_search_path(path).await?;
    }
    Ok(session)
}

/// What loading a snapshot into the target needs.
pub(super) struct Load<'a> {
    pub(super) client: &'a LoadSession,
    pub(super) streams: &'a Streams<'a>,
    pub(super) manifest: &'a Manifest,
    pub(super) jobs: usize,
    pub(super) options: &'a RestoreOptions,
    /// Roles to create first (`--create-roles`; the schema names them, the server lacks them).
    pub(super) roles: &'a [&'a RoleRecord],
    /// Tables are created (or truncated) in the loading transaction: `COPY … FREEZE`. Not
    /// into existing tables (`--data-only`).
    pub(super) freeze: bool,
    /// `--rows`: the COPY text each table takes instead of its data (none: no row).
    pub(super) rows: Option<&'a std::collections::BTreeMap<TableName, Vec<u8>>>,
    /// The roles this restore made (not those another made meanwhile): undone on failure.
    pub(super) created_roles: std::sync::Mutex<Vec<String>>,
    /// What the load noticed, for the report (each also logged).
    pub(super) warnings: std::sync::Mutex<Vec<String>>,
    /// What the roles `--create-roles` made were as it made them ([`LoadSession::roles_state`]).
    pub(super) made_roles: std::sync::Mutex<Option<String>>,
    /// The target held data before (a restore beside live data).
    pub(super) beside_live: bool,
    /// The loading connections `--parallel` opened, to cancel what they run when the load is
    /// given up ([`Load::undo`]): a statement outlives its dropped connection on the server.
    pub(super) loaders: std::sync::Mutex<Vec<tokio_postgres::CancelToken>>,
}

impl Load<'_> {
    /// Says, before any row is loaded, which of the snapshot's functions loading will run with
    /// a superuser's rights (the connecting role's, or `--role`'s; those of check constraints,
    /// directly or through operators, and of generated columns:
    /// [`crate::postgres::LoadSession::functions_run_as_superuser`]): whoever could create
    /// functions in the source database wrote them. `--role` with a role of the
    /// database's own rights runs them with those (docs/OPERATIONS.md, *Restoring onto another
    /// server*).
    async fn warn_of_functions_run_as_superuser(&self) -> Result<()> {
        /// Functions a warning names at most (a snapshot may check every column with one).
        const NAMED: usize = 10;
        // Beside live data the catalog holds the live database's functions too, and the
        // restore said already that whatever runs while rows load runs as a superuser.
        if self.beside_live {
            return Ok(());
        }
        let functions = self.client.functions_run_as_superuser().await?;
        if functions.is_empty() {
            return Ok(());
        }
        let mut named: Vec<String> = functions.iter().take(NAMED).map(|name| crate::error::printable(name)).collect();
        if functions.len() > NAMED {
            named.push(format!("and {} more", functions.len() - NAMED));
        }
        let warning = format!(
            "the snapshot's check constraints and generated columns call {} of its own functions, which run with a \
             superuser's rights while the rows load (the session's role, or its login, which they can RESET ROLE \
             to; before PostgreSQL 16, CREATEROLE is as good): {}; to run them with a role's rights instead, \
             restore with --role ROLE connected as a login that is not a superuser either, without CREATEROLE \
             before PostgreSQL 16 (--db postgres://ROLE@…; and --no-owner --no-acl where the snapshot's objects \
             belong to roles ROLE cannot act as)",
            functions.len(),
            named.join(", ")
        );
        tracing::warn!("{warning}");
        self.warnings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(warning);
        Ok(())
    }

    /// Everything in one transaction on one connection: any failure, or the process being
    /// killed, ends the connection without COMMIT and leaves the database as it was.
    pub(super) async fn in_one_transaction(&self, clean: bool, pre_data: &str, post_data: &str) -> Result<u64> {
        let client = self.client;
        client.begin().await?;
        // Rows into live tables: keys that may wait for the commit do (a cycle of tables).
        if self.options.part.data_only {
            client.defer_constraints().await?;
        }
        if clean {
            client.clean().await?;
        }
        self.create_roles().await?;
        let side = self.side_schemas();
        let before = match side {
            Some(_) => (client.relations_now().await?, client.session_state().await?),
            None => (Vec::new(), String::new()),
        };
        client.run_script(pre_data).await?;
        self.refuse_changing_calls().await?;
        self.refuse_code_the_script_hid().await?;
        self.warn_of_functions_run_as_superuser().await?;
        if let Some(side) = &side {
            client.refuse_live_dependencies(side).await?;
            self.check_every_column_is_loaded().await?;
        }
        // pg_dump's preamble empties search_path for this session; COPY names its tables qualified.
        let mut rows = 0;
        for table in &self.manifest.tables {
            rows += self.copy_table(client, table, self.freeze).await?;
        }
        self.finish(post_data).await?;
        // What the deferral put off runs now, before the checks below rather than at commit.
        if self.options.part.data_only {
            client.fire_deferred().await?;
        }
        if let Some(side) = &side {
            client.refuse_live_dependencies(side).await?;
            self.check_nothing_outside_changed(side, &before).await?;
            self.refuse_changing_calls().await?;
            client.keep_to_owner(side).await?;
        }
        self.check_nothing_of_the_server_changed().await?;
        client.commit().await?;
        Ok(rows)
    }

    /// Into an empty database as a superuser, refuses the snapshot's own code that loading could
    /// run when the catalog holds it after the pre-data DDL though the script's vetting found
    /// none ([`super::vet_scripts`] reads SQL text; the catalog is what PostgreSQL made of it):
    /// a statement written to look like pg_dump's hid it. Nothing has loaded yet; the error
    /// rolls the DDL back. Not beside live data, whose restore has its own rules and tripwire.
    /// Nothing with `--trust-snapshot-code`.
    async fn refuse_code_the_script_hid(&self) -> Result<()> {
        if self.beside_live || self.options.trust_snapshot_code || !self.client.is_superuser().await? {
            return Ok(());
        }
        let code = self.client.code_made_now(postgres::part::CONTAINED_EXTENSIONS).await?;
        if code.is_empty() {
            return Ok(());
        }
        let named: Vec<String> = code.iter().map(|name| crate::error::printable(name)).collect();
        Err(Error::Invalid(format!(
            "the snapshot's schema made code of its own that loading could run with a superuser's rights, which \
             its script did not show as such: {}; refused, nothing was restored (a backup host not to be trusted \
             could have written the script so). Connect as a login without superuser that owns the target \
             database (--db postgres://ROLE@…), or give --trust-snapshot-code if you trust the snapshot's source",
            named.join(", ")
        )))
    }

    /// Refuses the expressions this transaction's DDL made that call a function of `pg_catalog`
    /// the script's vetting refuses by name ([`postgres::part::CHANGING_FUNCTIONS`]: the
    /// server's files, settings, large objects, SQL in a string), as the catalog stores them
    /// ([`LoadSession::calls_made_now`]; into an empty database, but the calls its rules allow
    /// there, [`postgres::part::refused_into_empty_call`]): a statement written to look like
    /// pg_dump's hid the call from the vetting. After the pre-data DDL nothing has loaded yet (check constraints,
    /// generated columns and partition keys run as rows load); before a later commit it is a
    /// tripwire (an index expression ran as the index was built). The error rolls the
    /// transaction back. Whoever restores; nothing with `--trust-snapshot-code`.
    async fn refuse_changing_calls(&self) -> Result<()> {
        if self.options.trust_snapshot_code {
            return Ok(());
        }
        let calls = self.client.calls_made_now(postgres::part::CHANGING_FUNCTIONS).await?;
        // Into an empty database the rules let its own sequences and large objects be changed.
        let named: Vec<String> = (calls.iter())
            .filter(|(_, function)| self.beside_live || postgres::part::refused_into_empty_call(function))
            .take(20)
            .map(|(what, function)| crate::error::printable(&format!("{what} calls {function}")))
            .collect();
        if named.is_empty() {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "the snapshot's schema made expressions that call what changes the server or reads its files, which \
             its script did not show: {}; refused and rolled back (a backup host not to be trusted could have \
             written the script so). Give --trust-snapshot-code if you trust the snapshot's source",
            named.join(", ")
        )))
    }

    /// Into an empty database, before a transaction of the restore commits, refuses what it
    /// changed outside the database's own schemas ([`LoadSession::written_outside`]): roles,
    /// memberships and their settings (but the roles `--create-roles` made), other databases,
    /// tablespaces, objects of `pg_catalog` and `information_schema` (grants, owners,
    /// comments), subscriptions. pg_dump writes none of them for a database; the script's
    /// vetting refuses each statement that would, and this finds what got past it, or what
    /// code that ran did. The error rolls the transaction back. Not beside live data (whose
    /// check is stricter), nor with `--trust-snapshot-code`. A tripwire, not a boundary: what is not
    /// transactional (a program run, a file written) it cannot undo.
    async fn check_nothing_of_the_server_changed(&self) -> Result<()> {
        if !self.guards_the_server() {
            return Ok(());
        }
        self.refuse_changing_calls().await?;
        let client = self.client;
        let made = self.created_roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut objects = client.written_outside_the_database(&made).await?;
        let as_made = self.made_roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(as_made) = as_made
            && client.roles_state(&made).await? != as_made
        {
            objects.push(format!("roles --create-roles made ({}), changed since", made.join(", ")));
        }
        if !objects.is_empty() {
            let named: Vec<String> = objects.iter().map(|object| crate::error::printable(object)).collect();
            return Err(Error::Invalid(format!(
                "the restore changed what lies outside the database's own schemas: {}; pg_dump writes nothing \
                 that does, the snapshot's schema script did (a backup host not to be trusted could have written it \
                 so). Refused and rolled back (but for what PostgreSQL never rolls back: anything done outside the \
                 database); give --trust-snapshot-code if you trust the snapshot's source",
                named.join(", ")
            )));
        }
        let doors = client.doors_to_server_rights().await?;
        if doors.is_empty() {
            return Ok(());
        }
        let named: Vec<String> = doors.iter().map(|door| crate::error::printable(door)).collect();
        Err(Error::Invalid(format!(
            "the snapshot's schema makes what would let any role act with a superuser's rights in the restored \
             database: {}; refused and rolled back (a backup host not to be trusted could have written it so: a \
             view or rule over pg_catalog reads and writes it as its owner, a SECURITY DEFINER function runs as \
             its owner for whoever calls it or fires its trigger). Connect as a login without superuser that \
             owns the target database (--db postgres://ROLE@…), or give --trust-snapshot-code if you trust the \
             snapshot's source",
            named.join(", ")
        )))
    }

    /// Whether [`Self::check_nothing_of_the_server_changed`] checks this restore's transactions.
    fn guards_the_server(&self) -> bool {
        !self.beside_live && !self.options.trust_snapshot_code
    }

    /// Beside live data, refuses a table whose COPY would leave a column out: the column would
    /// take its default, code the snapshot's schema names, run for every row (a snapshot whose
    /// manifest and schema disagree was not written by pg_dump and crmvault alone).
    async fn check_every_column_is_loaded(&self) -> Result<()> {
        for table in &self.manifest.tables {
            let left = self.client.columns_not_loaded(table).await?;
            if !left.is_empty() {
                return Err(Error::Invalid(format!(
                    "the snapshot's rows of {}.{} do not give column {} that its schema makes: refused, so that \
                     no default runs for them (a snapshot whose data and schema disagree); nothing was restored",
                    crate::error::printable(&table.schema),
                    crate::error::printable(&table.name),
                    left.iter().map(|c| crate::error::printable(c)).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Beside live data, the schemas a `--schema-map` restore makes (`None` otherwise, and for
    /// `--data-only`, whose rows go through the live tables' own triggers).
    fn side_schemas(&self) -> Option<Vec<&str>> {
        let part = &self.options.part;
        (self.beside_live && !part.schema_map.is_empty() && !part.data_only)
            .then(|| part.schema_map.iter().map(|(_, to)| to.as_str()).collect())
    }

    /// Refuses a side-schema restore that changed anything outside the schemas it made, before
    /// it commits: rows of a table there ([`LoadSession::rows_changed_outside`]), objects made
    /// or altered there ([`LoadSession::written_outside`]), or schemas and relations of
    /// `before` dropped ([`LoadSession::relations_now`]; another session's drop meanwhile
    /// counts too). The snapshot's own code does
    /// that: a function its check constraints, defaults or domains call while rows load (written
    /// by whoever could create functions in the source; `--schema-map` renames what SQL and
    /// PL/pgSQL bodies name, not names built at run time nor other languages' bodies). Deferred triggers fire first, so that what they would do at commit is seen. The
    /// error rolls everything back but what PostgreSQL never rolls back (sequences, anything
    /// outside the database). A tripwire, not a boundary: code running as a superuser can hide
    /// from it (docs/OPERATIONS.md); a login without rights on the live objects is the boundary.
    async fn check_nothing_outside_changed(&self, side: &[&str], before: &(Vec<(u32, String)>, String)) -> Result<()> {
        let (before, session) = before;
        let client = self.client;
        client.fire_deferred().await?;
        // The checks below need the session as it was: its role's sight, its row counts.
        let now = client.session_state().await?;
        if now != *session {
            return Err(Error::Invalid(format!(
                "the restore changed its own session ({session} became {now}): the snapshot's functions that ran \
                 while it loaded did. It was rolled back (but for what PostgreSQL never rolls back: sequence values, \
                 anything done outside the database). Restore connected as a login that is not a superuser and has \
                 no rights on the live objects (--db postgres://ROLE@…) to keep the snapshot's code from reaching them"
            )));
        }
        let mut changed: Vec<String> = client
            .rows_changed_outside(side)
            .await?
            .iter()
            .map(|table| format!("rows of {}", crate::error::printable(table)))
            .collect();
        let made = self.created_roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let foreign = client.owned_by_others(side).await?;
        if !foreign.is_empty() {
            let named: Vec<String> = foreign.iter().map(|object| crate::error::printable(object)).collect();
            changed.push(format!("owners other than you in them: {}", named.join(", ")));
        }
        let objects = client.written_outside(side, &made, &[]).await?;
        if !objects.is_empty() {
            let named: Vec<String> = objects.iter().map(|object| crate::error::printable(object)).collect();
            changed.push(format!("objects outside them: {}", named.join(", ")));
        }
        // Schemas and relations that were there before the snapshot's first statement.
        let now: std::collections::HashSet<u32> =
            client.relations_now().await?.into_iter().map(|(oid, _)| oid).collect();
        let dropped: Vec<String> = before
            .iter()
            .filter(|(oid, _)| !now.contains(oid))
            .take(10)
            .map(|(_, name)| crate::error::printable(name))
            .collect();
        if !dropped.is_empty() {
            changed.push(format!("dropped: {}", dropped.join(", ")));
        }
        if changed.is_empty() {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "the restore changed what lies outside the schemas it makes: {}; the snapshot's functions that ran \
             while it loaded did. It was rolled back (but for what PostgreSQL never rolls back: sequence values, \
             anything done outside the database). Restore connected as a login that is not a superuser and has no \
             rights on the live objects (--db postgres://ROLE@…) to keep the snapshot's code from reaching them",
            changed.join("; ")
        )))
    }

    /// Tables loaded on `jobs` connections at once, largest first. Four steps: the pre-data
    /// DDL and a marker schema are committed; every connection truncates, `COPY … FREEZE`s and
    /// commits one table after another, then builds indexes of tables already loaded while the
    /// last tables load; the rest of the post-data DDL runs with indexes and constraints built
    /// on those connections at once; the last transaction writes large objects and sequences
    /// and drops the marker.
    /// On any error everything the restore created is dropped again; if the process is killed
    /// in between, the marker schema says the database is incomplete and later restores refuse
    /// it unless `--clean`.
    pub(super) async fn in_parallel(
        &self,
        clean: bool,
        pre_data: &str,
        post_data: &str,
        snapshot_id: &crate::repo::SnapshotId,
    ) -> Result<u64> {
        let client = self.client;
        // From the marker on, a Ctrl-C stops the loads and the failure path below undoes them.
        let _undoable = crate::interrupt::Undoable::begin();
        client.begin().await?;
        if clean {
            client.clean().await?;
        }
        client.mark_incomplete(&snapshot_id.as_str()).await?;
        self.create_roles().await?;
        client.run_script(pre_data).await?;
        // Into an empty database the check below reads the calls too.
        if self.beside_live {
            self.refuse_changing_calls().await?;
        }
        self.refuse_code_the_script_hid().await?;
        self.warn_of_functions_run_as_superuser().await?;
        self.check_nothing_of_the_server_changed().await?;
        client.commit().await?;
        tracing::debug!("pre-data committed");

        let script = postgres::script::parse(post_data);
        let loaded = crate::interrupt::or_interrupted(async {
            let (loaders, rows, built) = self.tables_in_parallel(&script).await?;
            tracing::debug!(early = built.len(), "every table loaded and committed");
            self.post_data_in_parallel(&loaders, &script, &built).await?;
            tracing::debug!("post-data done");
            client.begin().await?;
            self.write_large_objects_and_sequences().await?;
            client.refresh_materialized_views(&self.left_to_refresh(post_data)).await?;
            self.check_nothing_of_the_server_changed().await?;
            client.unmark_and_commit().await?;
            Ok(rows)
        })
        .await;
        if let Err(error) = loaded {
            return Err(match self.undo().await {
                Ok(()) => error,
                Err(undo) => Error::RestoreLeftIncomplete { cause: Box::new(error), undo: Box::new(undo) },
            });
        }
        loaded
    }

    /// Loads every table, `jobs` connections each taking the largest table left, each table in
    /// its own transaction (`TRUNCATE`, `COPY … FREEZE`, `COMMIT`). A connection that finds no
    /// table left builds indexes and unique constraints of the post-data script's first run
    /// ([`early_entries`]) on tables already loaded, as `pg_restore -j` does, so that those
    /// builds overlap the last loads instead of waiting for them. Returns the connections (for
    /// the rest of the post-data), the rows loaded, and the entries built.
    pub(super) async fn tables_in_parallel<'e, 'a>(
        &self,
        script: &'e Script<'a>,
    ) -> Result<(Vec<LoadSession>, u64, Vec<&'e Entry<'a>>)> {
        let mut order: Vec<&TableManifest> = self.manifest.tables.iter().collect();
        order.sort_by_key(|table| std::cmp::Reverse(table.data.bytes));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let connections = self.jobs.min(order.len()).max(1);
        let mut early = early_entries(script);
        let sizes = self.table_sizes();
        early.sort_by_key(|entry| std::cmp::Reverse(entry_size(entry, &sizes)));
        let board = std::sync::Mutex::new(LockBoard {
            pending: early,
            held: HashMap::new(),
            loaded: (!order.is_empty()).then(HashSet::new),
        });
        let built = std::sync::Mutex::new(Vec::new());
        let changed = tokio::sync::Notify::new();
        let worker = || async {
            let client = session(self.options, self.manifest).await?;
            self.loaders.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(client.cancel_token());
            // An entry built here waits for no other connection's lock (its tables are loaded
            // and committed, see LockBoard); a lock held by another session is: give up
            // instead of hanging.
            client.set_lock_timeout(LOCK_TIMEOUT).await?;
            let mut rows = 0;
            let mut preamble = false;
            loop {
                let notified = changed.notified();
                futures::pin_mut!(notified);
                notified.as_mut().enable();
                if let Some(table) = order.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                    rows += self.load_table(&client, table).await?;
                    let mut board = board.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(loaded) = &mut board.loaded {
                        loaded.insert(TableName { schema: table.schema.clone(), name: table.name.clone() });
                        if loaded.len() == order.len() {
                            board.loaded = None;
                        }
                    }
                    drop(board);
                    changed.notify_waiters();
                    continue;
                }
                let (picked, loading) = {
                    let mut board = board.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if board.pending.is_empty() {
                        break;
                    }
                    (board.take_runnable(), board.loaded.is_some())
                };
                let Some(entry) = picked else {
                    notified.await;
                    continue;
                };
                tracing::debug!(kind = entry.kind, loading, "post-data entry beside the loads");
                if !preamble {
                    client.run_script(script.preamble).await?;
                    preamble = true;
                }
                let result = run_entry(&client, entry).await;
                board.lock().unwrap_or_else(std::sync::PoisonError::into_inner).release(entry);
                changed.notify_waiters();
                result?;
                built.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(entry);
            }
            Ok::<_, Error>((client, rows))
        };
        // The first error drops the other connections, which rolls back what they had not
        // committed; the caller removes the rest.
        let loaded = futures::future::try_join_all((0..connections).map(|_| worker())).await?;
        let rows = loaded.iter().map(|(_, rows)| rows).sum();
        let clients = loaded.into_iter().map(|(client, _)| client).collect();
        Ok((clients, rows, built.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)))
    }

    /// Loads one table in its own transaction on a `--parallel` connection.
    pub(super) async fn load_table(&self, client: &LoadSession, table: &TableManifest) -> Result<u64> {
        let name = postgres::qualified(&table.schema, &table.name);
        // Truncating the table this transaction is about to fill lets COPY freeze the rows.
        // ONLY: inheritance children are other connections' to load.
        let loaded = async {
            client.begin_truncated(&table.schema, &table.name).await?;
            let rows = self.copy_table(client, table, true).await?;
            client.commit().await?;
            Ok(rows)
        };
        loaded.await.map_err(|error| match &error {
            Error::Postgres(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                Error::LockTimeout { what: name.clone(), seconds: LOCK_TIMEOUT.as_secs() }
            }
            _ => error,
        })
    }

    /// Each table's size in the snapshot, to start the largest tables' entries first.
    pub(super) fn table_sizes(&self) -> HashMap<TableName, u64> {
        self.manifest
            .tables
            .iter()
            .map(|t| (TableName { schema: t.schema.clone(), name: t.name.clone() }, t.data.bytes))
            .collect()
    }

    /// Runs the post-data DDL in its order, except that runs of index and unique-constraint
    /// builds, and runs of foreign keys, are spread over `loaders` (as `pg_restore -j` does),
    /// never two at once that would wait for each other's lock. Every entry of a run commits on
    /// its own; the entries between runs (grants, owners, comments, …) run on this session, in
    /// one transaction per stretch that [`Self::check_nothing_of_the_server_changed`] checks
    /// before it commits, and before the next run starts (they may hold its tables' locks). On
    /// an error the caller removes everything, as for the tables.
    pub(super) async fn post_data_in_parallel(
        &self,
        loaders: &[LoadSession],
        script: &Script<'_>,
        built: &[&Entry<'_>],
    ) -> Result<()> {
        for client in loaders.iter().chain([self.client]) {
            client.run_script(script.preamble).await?;
        }
        let mut stretch = Stretch::default();
        let sizes = self.table_sizes();
        let mut group: Vec<&Entry<'_>> = Vec::new();
        let mut comments: Vec<&Entry<'_>> = Vec::new();
        for entry in &script.entries {
            if built.iter().any(|done| std::ptr::eq(*done, entry)) {
                continue;
            }
            let joins = entry.step.group();
            if entry.step == Step::Comment && !group.is_empty() {
                // A comment on an index or constraint of the group: after the group.
                comments.push(entry);
                continue;
            }
            if joins.is_none() || group.first().is_some_and(|e| e.step.group() != joins) {
                self.flush_group(loaders, &mut group, &mut comments, &sizes, &mut stretch).await?;
            }
            match joins {
                Some(_) => group.push(entry),
                None => self.in_stretch(&mut stretch, entry.sql).await?,
            }
        }
        self.flush_group(loaders, &mut group, &mut comments, &sizes, &mut stretch).await?;
        self.end_stretch(&mut stretch).await
    }

    /// Runs a group (see [`Load::run_group`]) once the stretch before it has committed, then
    /// the comments held back for it.
    pub(super) async fn flush_group(
        &self,
        loaders: &[LoadSession],
        group: &mut Vec<&Entry<'_>>,
        comments: &mut Vec<&Entry<'_>>,
        sizes: &HashMap<TableName, u64>,
        stretch: &mut Stretch,
    ) -> Result<()> {
        if !group.is_empty() {
            self.end_stretch(stretch).await?;
            self.run_group(loaders, std::mem::take(group), sizes).await?;
        }
        for comment in comments.drain(..) {
            self.in_stretch(stretch, comment.sql).await?;
        }
        Ok(())
    }

    /// Runs `sql` on this session, in the stretch's transaction when the server is guarded
    /// ([`Self::check_nothing_of_the_server_changed`]; otherwise on its own).
    async fn in_stretch(&self, stretch: &mut Stretch, sql: &str) -> Result<()> {
        if !stretch.open && self.guards_the_server() {
            self.client.begin().await?;
            stretch.open = true;
        }
        self.client.run_script(sql).await
    }

    /// Checks and commits the stretch's transaction, if one is open.
    async fn end_stretch(&self, stretch: &mut Stretch) -> Result<()> {
        if stretch.open {
            self.check_nothing_of_the_server_changed().await?;
            self.client.commit().await?;
            stretch.open = false;
        }
        Ok(())
    }

    /// Runs independent entries on all `clients`, those of the largest tables first; an entry
    /// waits while another holds a lock it would conflict with.
    pub(super) async fn run_group(
        &self,
        clients: &[LoadSession],
        mut entries: Vec<&Entry<'_>>,
        sizes: &HashMap<TableName, u64>,
    ) -> Result<()> {
        if clients.is_empty() {
            for entry in entries {
                run_entry(self.client, entry).await?;
            }
            return Ok(());
        }
        entries.sort_by_key(|entry| std::cmp::Reverse(entry_size(entry, sizes)));
        tracing::debug!(entries = entries.len(), connections = clients.len(), "post-data group");
        let board = std::sync::Mutex::new(LockBoard { pending: entries, held: HashMap::new(), loaded: None });
        let changed = tokio::sync::Notify::new();
        let workers = clients.iter().map(|client| {
            let (board, changed) = (&board, &changed);
            async move {
                loop {
                    let notified = changed.notified();
                    futures::pin_mut!(notified);
                    notified.as_mut().enable();
                    let picked = {
                        let mut board = board.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if board.pending.is_empty() {
                            return Ok::<_, Error>(());
                        }
                        board.take_runnable()
                    };
                    let Some(entry) = picked else {
                        notified.await;
                        continue;
                    };
                    let result = run_entry(client, entry).await;
                    board.lock().unwrap_or_else(std::sync::PoisonError::into_inner).release(entry);
                    changed.notify_waiters();
                    result?;
                }
            }
        });
        futures::future::try_join_all(workers).await?;
        Ok(())
    }

    /// Loads one table: its data from the snapshot, or with `--rows` the rows chosen of it.
    async fn copy_table(&self, client: &LoadSession, table: &TableManifest, freeze: bool) -> Result<u64> {
        let sink = client.copy_in(table, freeze).await?;
        let Some(chosen) = self.rows else { return self.streams.load(sink, table).await };
        let name = TableName { schema: table.schema.clone(), name: table.name.clone() };
        let text = chosen.get(&name).map_or(&[][..], Vec::as_slice);
        let expected = memchr::memchr_iter(b'\n', text).count() as u64;
        futures::pin_mut!(sink);
        futures::SinkExt::send(&mut sink, bytes::Bytes::copy_from_slice(text)).await?;
        let loaded = sink.as_mut().finish().await?;
        if loaded != expected {
            return Err(Error::RestoreMismatch {
                table: format!("{}.{}", table.schema, table.name),
                detail: format!("loaded {loaded} rows of the {expected} chosen"),
            });
        }
        self.streams.progress.item_done(&format!("{}.{}", table.schema, table.name));
        Ok(loaded)
    }

    /// Removes what a failed parallel restore committed (schemas and large objects, roles it
    /// created), leaving the database, and the server's roles, as they were.
    pub(super) async fn undo(&self) -> Result<()> {
        let client = self.client;
        // Statements given up (Ctrl-C stopped the load mid-statement) still run on the server,
        // and hold locks the undo needs: cancelled, this session's and the loaders'.
        let loaders = std::mem::take(&mut *self.loaders.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        client.cancel_running(loaders).await;
        client.rollback().await;
        client.begin().await?;
        client.clean().await?;
        client.commit().await?;
        let created = self.created_roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        client.drop_roles(&created).await
    }

    /// Creates the roles the schema names that the server lacks, in the caller's transaction.
    async fn create_roles(&self) -> Result<()> {
        if self.roles.is_empty() {
            return Ok(());
        }
        let (created, left_out) = self.client.create_roles(self.roles).await?;
        let state = self.client.roles_state(&created).await?;
        *self.made_roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(state);
        *self.created_roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = created;
        for membership in left_out {
            tracing::warn!("role membership left out: {}", crate::error::printable(&membership));
        }
        Ok(())
    }

    /// Large objects, sequence values, post-data DDL and materialized views, in the caller's transaction.
    pub(super) async fn finish(&self, post_data: &str) -> Result<()> {
        self.write_large_objects_and_sequences().await?;
        self.client.run_script(post_data).await?;
        tracing::debug!("post-data done");
        // Once their indexes exist.
        self.client.refresh_materialized_views(&self.left_to_refresh(post_data)).await
    }

    /// The materialized views that held data which the post-data script does not refresh
    /// itself (pg_dump's does: refreshing them again doubled the time and any side effect).
    fn left_to_refresh(&self, post_data: &str) -> Vec<(String, String)> {
        let refreshed = postgres::part::refreshed_views(post_data);
        self.manifest
            .materialized_views
            .iter()
            .filter(|(schema, name)| !refreshed.contains(&TableName { schema: schema.clone(), name: name.clone() }))
            .cloned()
            .collect()
    }

    /// Large objects and sequence values, in the caller's transaction.
    pub(super) async fn write_large_objects_and_sequences(&self) -> Result<()> {
        let client = self.client;
        if let Some(large_objects) = &self.manifest.large_objects {
            client.stage_large_objects().await?;
            self.streams.load(client.copy_in_large_objects().await?, large_objects).await?;
            client.write_large_objects().await?;
        }
        client.set_sequences(&self.manifest.sequences).await?;
        tracing::debug!("sequences and large objects written");
        Ok(())
    }
}

/// The size of the (first) table an entry works on, if it is one of the snapshot's.
pub(super) fn entry_size(entry: &Entry<'_>, sizes: &HashMap<TableName, u64>) -> Option<u64> {
    entry.step.locks().first().and_then(|(table, _)| sizes.get(*table)).copied()
}

/// The entries `--parallel` may build while tables are still loading: the indexes and unique
/// constraints of the script's first run of them, before anything that has to run alone (a
/// comment in between waits for the rest of the post-data, its object being built by then).
pub(super) fn early_entries<'e, 'a>(script: &'e Script<'a>) -> Vec<&'e Entry<'a>> {
    script
        .entries
        .iter()
        .take_while(|entry| entry.step.group() == Some(1) || entry.step == Step::Comment)
        .filter(|entry| entry.step.group() == Some(1))
        .collect()
}

/// Who holds which table while post-data entries run at once.
pub(super) struct LockBoard<'e, 'a> {
    /// Entries not started, in the order to start them.
    pub(super) pending: Vec<&'e Entry<'a>>,
    /// Per table: entries holding a shared lock, and whether one holds it exclusively.
    pub(super) held: HashMap<TableName, (usize, bool)>,
    /// While tables are loading, those loaded and committed: an entry starts only when every
    /// table it locks is one of them, so it never waits for a load's locks (a table that is
    /// not loaded at all, a partitioned parent, say, waits for every load). `None`: all loaded.
    pub(super) loaded: Option<HashSet<TableName>>,
}

impl<'e, 'a> LockBoard<'e, 'a> {
    /// Takes the first pending entry whose tables are loaded and whose locks conflict with none
    /// held, and holds them.
    pub(super) fn take_runnable(&mut self) -> Option<&'e Entry<'a>> {
        let free = |entry: &Entry<'_>| {
            entry.step.locks().iter().all(|(table, exclusive)| {
                let loaded = self.loaded.as_ref().is_none_or(|loaded| loaded.contains(*table));
                loaded
                    && match self.held.get(*table) {
                        None | Some((0, false)) => true,
                        Some((_, true)) => false,
                        Some((_, false)) => !exclusive,
                    }
            })
        };
        let at = self.pending.iter().position(|entry| free(entry))?;
        let entry = self.pending.remove(at);
        for (table, exclusive) in entry.step.locks() {
            let held = self.held.entry(table.clone()).or_default();
            held.0 += 1;
            held.1 |= exclusive;
        }
        Some(entry)
    }

    pub(super) fn release(&mut self, entry: &Entry<'_>) {
        for (table, _) in entry.step.locks() {
            if let Some(held) = self.held.get_mut(table) {
                held.0 -= 1;
                if held.0 == 0 {
                    self.held.remove(table);
                }
            }
        }
    }
}

/// Runs one post-data entry; a deadlock (two builds on tables of one partition tree, say)
/// costs a retry, not the restore.
pub(super) async fn run_entry(client: &LoadSession, entry: &Entry<'_>) -> Result<()> {
    let mut attempt = 1;
    loop {
        match client.run_script(entry.sql).await {
            Err(Error::Postgres(error))
                if attempt < 3 && error.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                tracing::debug!(kind = entry.kind, "deadlock, trying again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// How long a `--parallel` loading connection waits for a lock before giving up.
pub(super) const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A table read whole: its digest and its rows, against the snapshot's.
pub(super) fn check_table(label: &str, table: &TableManifest, digest: &blake3::Hasher, rows: u64) -> Result<()> {
    check_digest(label, &table.data, digest)?;
    if rows != table.rows {
        return Err(Error::RestoreMismatch {
            table: label.to_string(),
            detail: format!("read {rows} rows, the snapshot has {}", table.rows),
        });
    }
    Ok(())
}

pub(super) fn check_digest(label: &str, stream: &StreamManifest, digest: &blake3::Hasher) -> Result<()> {
    if digest.finalize().to_hex().as_str() != stream.digest {
        return Err(Error::RestoreMismatch {
            table: label.to_string(),
            detail: "its data does not match the snapshot's digest".into(),
        });
    }
    Ok(())
}

/// The post-data statements between two runs of [`Load::run_group`], on the restore's own
/// session: whether their transaction is open.
#[derive(Default)]
pub(super) struct Stretch {
    open: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> TableName {
        TableName { schema: "crm".into(), name: name.into() }
    }

    fn entry(step: Step) -> Entry<'static> {
        Entry { kind: "", sql: "", step }
    }

    #[test]
    fn the_lock_board_never_starts_entries_that_would_wait_for_each_other() {
        let entries = [
            entry(Step::Constraint(table("a"))),
            entry(Step::Index(table("a"))),
            entry(Step::Index(table("a"))),
            entry(Step::Index(table("b"))),
            entry(Step::ForeignKey { table: table("c"), references: table("b") }),
            entry(Step::ForeignKey { table: table("d"), references: table("b") }),
        ];
        let mut board = LockBoard { pending: entries.iter().collect(), held: HashMap::new(), loaded: None };
        let pk = board.take_runnable().unwrap();
        assert_eq!(pk.step, Step::Constraint(table("a")));
        // Nothing else on a while its primary key is built; b is free.
        let index_b = board.take_runnable().unwrap();
        assert_eq!(index_b.step, Step::Index(table("b")));
        // Both foreign keys lock b exclusively: neither may start beside the index on b.
        assert!(board.take_runnable().is_none());
        board.release(pk);
        // Index builds on one table share it.
        assert_eq!(board.take_runnable().unwrap().step, Step::Index(table("a")));
        assert_eq!(board.take_runnable().unwrap().step, Step::Index(table("a")));
        assert!(board.take_runnable().is_none());
        board.release(index_b);
        let first_fk = board.take_runnable().unwrap();
        assert!(matches!(first_fk.step, Step::ForeignKey { .. }));
        assert!(board.take_runnable().is_none(), "two foreign keys to one table wait for each other");
        board.release(first_fk);
        assert!(board.take_runnable().is_some());
        assert!(board.pending.is_empty());
    }
}
