//! The restore's side: [`LoadSession`], a connection set up for loading, with one method per
//! step a restore takes (transactions, schema script, `COPY … FROM STDIN`, large objects,
//! sequences, materialized views, the marker of an unfinished parallel restore, `--clean`).
//! Which steps run in what order, and what happens on an error, is the restore's to decide.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::{Client, CopyInSink, Row};

use super::{Database, USER_SCHEMAS, qualified, quote_ident, quote_literal};
use crate::error::{Error, Result};
use crate::repo::{RoleRecord, SequenceState, SessionSettings, TableManifest};

/// How the values a restore loads are compressed where PostgreSQL TOASTs them (values over
/// ~2 KiB), in columns whose schema names no method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToastCompression {
    /// lz4 where the server has it (PostgreSQL 14+ built with lz4, as Debian's and the PGDG
    /// packages are), the server's default elsewhere. pglz, PostgreSQL's default, spends its
    /// time even on values it cannot shrink: loading the scale-1 attachments (1-8 KiB bytea)
    /// took 3.0-3.4 s with pglz and 2.3 s with lz4, the rest of the tables the same.
    #[default]
    Lz4,
    /// The server's `default_toast_compression`, as `pg_restore` leaves it.
    ServerDefault,
}

/// A connection to the database a restore loads into, its session set up for loading.
pub struct LoadSession {
    client: Client,
    database: Database,
    /// A second connection, opened at the first catalog check, that reads how far the
    /// server's transaction counter has come ([`LoadSession::next_xid`]).
    counter: tokio::sync::OnceCell<Client>,
}

/// SQL: whether the object `object` (an oid) of catalog `class`, owned by the role `owner`
/// (an oid), is a member of an extension that a superuser owns, or whose script a superuser
/// ran for it (a trusted extension an application role made, `CREATE EXTENSION citext` in its
/// migrations: its objects are the bootstrap superuser's): only a superuser may alter the
/// object or cast from or to it, and it cannot be dropped alone.
fn of_a_superusers_extension(class: &str, object: &str, owner: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_catalog.pg_depend e \
           JOIN pg_catalog.pg_extension x ON x.oid = e.refobjid \
           JOIN pg_catalog.pg_roles r ON r.oid = x.extowner \
           WHERE e.classid = {class} AND e.objid = {object} AND e.deptype = 'e' \
             AND e.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass \
             AND (r.rolsuper OR (SELECT o.rolsuper FROM pg_catalog.pg_roles o WHERE o.oid = {owner})))"
    )
}

/// SQL: whether type `t` (a `pg_type` row) is one a side definition may name beside live data
/// ([`LoadSession::live_inert`]): of a superuser's extension, a base type, enum or plain domain
/// over one, or an array of such a base type or enum.
fn inert_type() -> String {
    let types = "'pg_catalog.pg_type'::pg_catalog.regclass";
    let member = of_a_superusers_extension(types, "t.oid", "t.typowner");
    let element_member = of_a_superusers_extension(types, "v.oid", "v.typowner");
    format!(
        "(({member} \
           AND ((t.typtype = 'b' AND t.typelem = 0) \
             OR t.typtype = 'e' \
             OR (t.typtype = 'd' AND t.typdefaultbin IS NULL \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.contypid = t.oid) \
               AND (SELECT b.typtype IN ('b', 'e') AND b.typelem = 0 FROM pg_catalog.pg_type b \
                 WHERE b.oid = t.typbasetype)))) \
         OR (t.typtype = 'b' AND t.typcategory = 'A' AND EXISTS (SELECT 1 FROM pg_catalog.pg_type v \
           WHERE v.oid = t.typelem AND v.typtype IN ('b', 'e') AND v.typelem = 0 AND {element_member})))"
    )
}

impl LoadSession {
    /// Connects, then sets `default_toast_compression` for `toast_compression`, raises
    /// `maintenance_work_mem` to `maintenance_work_mem` (PostgreSQL's units) when it is lower,
    /// and takes the backup's `settings` (a `DateStyle` of `SQL, DMY` writes dates that the
    /// default `ISO, MDY` reads with day and month swapped).
    pub async fn open(
        database: &Database,
        toast_compression: ToastCompression,
        maintenance_work_mem: &str,
        settings: Option<&SessionSettings>,
        role: Option<&str>,
    ) -> Result<LoadSession> {
        let client = database.connect().await?;
        // Everything the restore runs, the snapshot's functions included, runs with this
        // role's rights (`restore --role`, as pg_restore's).
        if let Some(role) = role {
            client.batch_execute(&format!("SET ROLE {}", quote_ident(role))).await?;
        }
        set_toast_compression(&client, toast_compression).await?;
        raise_maintenance_work_mem(&client, maintenance_work_mem).await?;
        // A restore killed mid-statement closes its connections; the statement (an index
        // build of minutes) then stops within a second instead of running on, holding locks
        // the next restore's --clean waits for. PostgreSQL 14 and later.
        client
            .batch_execute(
                "SELECT pg_catalog.set_config('client_connection_check_interval', '1000', false) \
                 FROM pg_catalog.pg_settings WHERE name = 'client_connection_check_interval'",
            )
            .await?;
        if let Some(settings) = settings {
            super::session::apply_settings(&client, settings).await?;
        }
        Ok(LoadSession { client, database: database.clone(), counter: tokio::sync::OnceCell::new() })
    }

    /// Refuses, beside live data after the side schemas' pre-data DDL and before any row
    /// loads, a side object that depends on an object outside `side` and `pg_catalog` other than
    /// a type [`LoadSession::live_inert`] allows (or, for an index's default, an operator
    /// class or family of an extension a superuser owns: only a superuser makes one), judged
    /// by the oid the DDL bound, now: the
    /// names were checked before the DDL ran, and whoever owns a live schema could rename it
    /// and put another object under the name meanwhile. Once bound, the type cannot be
    /// dropped before this transaction ends (its drop would need the side table's lock).
    pub async fn refuse_live_dependencies(&self, side: &[&str]) -> Result<()> {
        let side: Vec<String> = side.iter().map(|s| (*s).to_string()).collect();
        let owner = "CASE WHEN d.refclassid = 'pg_catalog.pg_opclass'::pg_catalog.regclass \
                       THEN (SELECT c.opcowner FROM pg_catalog.pg_opclass c WHERE c.oid = d.refobjid) \
                       ELSE (SELECT f.opfowner FROM pg_catalog.pg_opfamily f WHERE f.oid = d.refobjid) END";
        let (inert, class_member) = (inert_type(), of_a_superusers_extension("d.refclassid", "d.refobjid", owner));
        let sql = format!(
            "WITH side AS (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = ANY ($1)), \
             made AS ( \
               SELECT 'pg_catalog.pg_class'::pg_catalog.regclass AS classid, c.oid FROM pg_catalog.pg_class c \
                 WHERE c.relnamespace IN (SELECT oid FROM side) \
               UNION ALL SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid FROM pg_catalog.pg_type t \
                 WHERE t.typnamespace IN (SELECT oid FROM side) \
               UNION ALL SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid FROM pg_catalog.pg_proc p \
                 WHERE p.pronamespace IN (SELECT oid FROM side) \
               UNION ALL SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, k.oid FROM pg_catalog.pg_constraint k \
                 WHERE k.connamespace IN (SELECT oid FROM side) \
               UNION ALL SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass, a.oid FROM pg_catalog.pg_attrdef a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.adrelid WHERE c.relnamespace IN (SELECT oid FROM side) \
               UNION ALL SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass, g.oid FROM pg_catalog.pg_trigger g \
                 JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid WHERE c.relnamespace IN (SELECT oid FROM side) \
               UNION ALL SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass, r.oid FROM pg_catalog.pg_rewrite r \
                 JOIN pg_catalog.pg_class c ON c.oid = r.ev_class WHERE c.relnamespace IN (SELECT oid FROM side) \
               UNION ALL SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_policy o \
                 JOIN pg_catalog.pg_class c ON c.oid = o.polrelid WHERE c.relnamespace IN (SELECT oid FROM side) \
               UNION ALL SELECT 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass, x.oid FROM pg_catalog.pg_statistic_ext x \
                 WHERE x.stxnamespace IN (SELECT oid FROM side) \
               UNION ALL SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_operator o \
                 WHERE o.oprnamespace IN (SELECT oid FROM side)) \
             SELECT DISTINCT r.type || ' ' || r.identity FROM pg_catalog.pg_depend d \
             JOIN made m ON m.classid = d.classid AND m.oid = d.objid, \
             LATERAL pg_catalog.pg_identify_object(d.refclassid, d.refobjid, 0) r \
             WHERE d.deptype IN ('n', 'a') AND r.schema IS NOT NULL AND r.schema <> 'pg_catalog' \
               AND r.schema <> ALL (SELECT pg_catalog.quote_ident(s) FROM pg_catalog.unnest($1::text[]) s) \
               AND NOT (d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass AND EXISTS ( \
                 SELECT 1 FROM pg_catalog.pg_type t WHERE t.oid = d.refobjid AND {inert})) \
               AND NOT (d.refclassid IN ('pg_catalog.pg_opclass'::pg_catalog.regclass, \
                   'pg_catalog.pg_opfamily'::pg_catalog.regclass) AND {class_member}) \
             ORDER BY 1 LIMIT 10"
        );
        let found = self.own_query(&sql, &[&side]).await?;
        if found.is_empty() {
            return Ok(());
        }
        let named: Vec<String> = found.iter().map(|row| crate::error::printable(&row.get::<_, String>(0))).collect();
        Err(Error::Invalid(format!(
            "the side schemas' definitions depend on live objects that run or may change a live role's code: {}; \
             refused, nothing was restored (the database's schemas changed while the restore ran, or the \
             snapshot's script is not what pg_dump writes)",
            named.join(", ")
        )))
    }

    /// From now on, names resolve in `path` after `pg_catalog` (`restore --search-path`).
    pub async fn use_search_path(&self, path: &super::script::SearchPath) -> Result<()> {
        let sql = "SELECT pg_catalog.set_config('search_path', $1, false)";
        self.client.execute(sql, &[&path.to_string()]).await?;
        Ok(())
    }

    /// A transaction id no xid assigned so far reaches: one taken now, on another connection
    /// (its own transaction, committed at once). Every xid this session's transaction and its
    /// subtransactions hold is below it ([`written_by_this_transaction`]).
    async fn next_xid(&self) -> Result<u64> {
        let counter = (self.counter)
            .get_or_try_init(|| async {
                let counter = self.database.connect().await?;
                // Each xid it takes commits at once: no wait for the WAL to reach the disk.
                counter.batch_execute("SET synchronous_commit = off").await?;
                Ok::<_, Error>(counter)
            })
            .await?;
        let row = counter.query_one("SELECT pg_catalog.pg_current_xact_id()::text", &[]).await?;
        let xid: String = row.get(0);
        xid.parse().map_err(|_| Error::Internal(format!("pg_current_xact_id() gave {xid}")))
    }

    /// Makes the session give up waiting for a lock after `timeout` (whole seconds).
    pub async fn set_lock_timeout(&self, timeout: Duration) -> Result<()> {
        self.client.batch_execute(&format!("SET lock_timeout = '{}s'", timeout.as_secs())).await?;
        Ok(())
    }

    /// What cancels the statement this session runs ([`Self::cancel_running`]).
    pub fn cancel_token(&self) -> tokio_postgres::CancelToken {
        self.client.cancel_token()
    }

    /// Cancels the statement this session is running, if any, and those of `others` (sessions
    /// on the same database, [`Self::cancel_token`]): what a load given up left running, which
    /// the next statement would wait for. Best effort: failures said at debug level.
    pub async fn cancel_running(&self, others: Vec<tokio_postgres::CancelToken>) {
        for token in std::iter::once(self.client.cancel_token()).chain(others) {
            if let Err(error) = self.database.cancel(token).await {
                tracing::debug!("cancelling a running statement: {error}");
            }
        }
        // The server signals the backend on its own time: let it land before the next
        // statement, which it would otherwise cancel instead (an idle backend ignores it).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<()> {
        self.client.batch_execute("BEGIN").await?;
        Ok(())
    }

    /// Commits the transaction.
    pub async fn commit(&self) -> Result<()> {
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }

    /// Rolls back whatever transaction is open. Its error is ignored: there may be none open,
    /// and a lost connection shows in the next statement.
    pub async fn rollback(&self) {
        self.client.batch_execute("ROLLBACK").await.ok();
    }

    /// Starts a transaction that empties `schema.name` first: a table created or truncated in
    /// the loading transaction lets `COPY … FREEZE` freeze its rows. `ONLY`: inheritance
    /// children are loaded on their own.
    pub async fn begin_truncated(&self, schema: &str, name: &str) -> Result<()> {
        self.client.batch_execute(&format!("BEGIN; TRUNCATE ONLY {}", qualified(schema, name))).await?;
        Ok(())
    }

    /// Runs SQL of the snapshot's schema script: a whole section (through
    /// [`super::executable_sql`]), one of its entries, or its preamble. Each statement is sent
    /// on its own, as the lexer cut it ([`super::part::statements_of`]), through the extended
    /// protocol, which takes one statement: the restore checked the script statement by
    /// statement ([`super::part::vet`], [`super::part::select`]), and text the server reads as
    /// more than one statement (a cut this lexer got wrong) must be refused, not run.
    pub async fn run_script(&self, sql: &str) -> Result<()> {
        for statement in super::part::statements_of(sql) {
            // The server refuses more than one command here ("cannot insert multiple commands
            // into a prepared statement"). Unnamed and untyped: parse, bind and execute go in
            // one round trip, where preparing a named statement first takes two (and a close).
            self.client.execute_typed(statement, &[]).await?;
        }
        Ok(())
    }

    /// Starts `COPY … FROM STDIN` into a table of the snapshot; the sink takes the stream.
    /// `freeze` (`WITH (FREEZE)`): the table was created or truncated in this transaction.
    pub async fn copy_in(&self, table: &TableManifest, freeze: bool) -> Result<CopyInSink<Bytes>> {
        let sql = copy_in_sql(&table.schema, &table.name, &table.columns, freeze);
        Ok(self.client.copy_in(&sql).await?)
    }

    /// Creates the temporary table large objects' contents are staged in (dropped at commit).
    pub async fn stage_large_objects(&self) -> Result<()> {
        self.client.batch_execute(LARGE_OBJECTS_STAGE).await?;
        Ok(())
    }

    /// Starts the COPY of large objects' contents, a stream of (oid, bytea), into the stage.
    pub async fn copy_in_large_objects(&self) -> Result<CopyInSink<Bytes>> {
        Ok(self.client.copy_in(LARGE_OBJECTS_COPY_IN).await?)
    }

    /// Writes the staged contents into the large objects (their metadata was created by
    /// pre-data) and drops the stage.
    pub async fn write_large_objects(&self) -> Result<()> {
        self.client.batch_execute(LARGE_OBJECTS_WRITE).await?;
        Ok(())
    }

    /// Sets every sequence to its value in the snapshot.
    pub async fn set_sequences(&self, sequences: &[SequenceState]) -> Result<()> {
        for sequence in sequences {
            self.client
                .execute(
                    "SELECT pg_catalog.setval(pg_catalog.format('%I.%I', $1::text, $2::text)::regclass, $3, $4)",
                    &[&sequence.schema, &sequence.name, &sequence.last_value, &sequence.is_called],
                )
                .await?;
        }
        Ok(())
    }

    /// Fills materialized views, given as (schema, name).
    pub async fn refresh_materialized_views(&self, views: &[(String, String)]) -> Result<()> {
        for (schema, name) in views {
            self.client.batch_execute(&format!("REFRESH MATERIALIZED VIEW {}", qualified(schema, name))).await?;
        }
        Ok(())
    }

    /// Creates the marker schema [`INCOMPLETE_RESTORE_SCHEMA`], its comment naming the snapshot.
    pub async fn mark_incomplete(&self, snapshot_id: &str) -> Result<()> {
        let marker = quote_ident(INCOMPLETE_RESTORE_SCHEMA);
        self.client
            .batch_execute(&format!(
                "CREATE SCHEMA {marker}; COMMENT ON SCHEMA {marker} IS {}",
                quote_literal(&format!(
                    "crmvault restore --parallel of snapshot {snapshot_id} has not finished: this database is \
                     incomplete (restore --clean replaces it)"
                ))
            ))
            .await?;
        Ok(())
    }

    /// Drops the marker schema and commits, in one round trip.
    pub async fn unmark_and_commit(&self) -> Result<()> {
        let marker = quote_ident(INCOMPLETE_RESTORE_SCHEMA);
        self.client.batch_execute(&format!("DROP SCHEMA {marker}; COMMIT")).await?;
        Ok(())
    }

    /// Inserts `rows` (COPY text of `table`'s columns) into the existing table of that name,
    /// through a temporary table, in the caller's transaction; what a row whose key is taken
    /// does is `on_conflict`'s. Returns the rows inserted and updated.
    pub async fn insert_rows(&self, table: &TableManifest, rows: &[u8], on_conflict: OnConflict) -> Result<(u64, u64)> {
        let target = qualified(&table.schema, &table.name);
        let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(c)).collect();
        let columns = columns.join(", ");
        self.client
            .batch_execute(&format!(
                "CREATE TEMPORARY TABLE crmvault_rows ON COMMIT DROP AS SELECT {columns} FROM {target} WITH NO DATA"
            ))
            .await?;
        let sink = self.client.copy_in(&format!("COPY crmvault_rows ({columns}) FROM STDIN")).await?;
        futures::pin_mut!(sink);
        futures::SinkExt::send(&mut sink, Bytes::copy_from_slice(rows)).await?;
        let given = sink.as_mut().finish().await?;
        let conflict = match on_conflict {
            OnConflict::Fail => String::new(),
            // On the key only: a row that breaks another unique constraint is an error, not
            // a row "left as it was".
            OnConflict::Skip if !table.primary_key.is_empty() => {
                let key: Vec<String> = table.primary_key.iter().map(|c| quote_ident(c)).collect();
                format!(" ON CONFLICT ({}) DO NOTHING", key.join(", "))
            }
            OnConflict::Skip => " ON CONFLICT DO NOTHING".to_string(),
            // A table without a key cannot tell a row already there: its rows are inserted.
            OnConflict::Update if table.primary_key.is_empty() => String::new(),
            OnConflict::Update => {
                let key: Vec<String> = table.primary_key.iter().map(|c| quote_ident(c)).collect();
                let values: Vec<String> =
                    table.columns.iter().filter(|c| !table.primary_key.contains(c)).map(|c| quote_ident(c)).collect();
                let set: Vec<String> = values.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect();
                // A row that already holds the snapshot's values is left as it is: not
                // rewritten, its row update triggers not fired, and not counted as updated.
                // Compared in each type's binary form: exact whatever the session's settings
                // (text would take 0.30000000000000004 for 0.3 under extra_float_digits = 0),
                // and every type has one, where json has no equality.
                let (live, snapshot): (Vec<String>, Vec<String>) =
                    values.iter().map(|c| (format!("t.{c}"), format!("EXCLUDED.{c}"))).unzip();
                if set.is_empty() {
                    format!(" ON CONFLICT ({}) DO NOTHING", key.join(", "))
                } else {
                    format!(
                        " ON CONFLICT ({}) DO UPDATE SET {} WHERE pg_catalog.record_send(ROW({})) IS DISTINCT FROM \
                         pg_catalog.record_send(ROW({}))",
                        key.join(", "),
                        set.join(", "),
                        live.join(", "),
                        snapshot.join(", ")
                    )
                }
            }
        };
        // The rows whose key the live table has: updated by `update`, left by `skip`. (Counted
        // before: a partitioned table cannot return `xmax`.)
        let existing = if table.primary_key.is_empty() {
            0
        } else {
            let key: Vec<String> = table.primary_key.iter().map(|c| quote_ident(c)).collect();
            let matches: Vec<String> = key.iter().map(|c| format!("t.{c} = r.{c}")).collect();
            let sql = format!(
                "SELECT count(*) FROM crmvault_rows r WHERE EXISTS (SELECT 1 FROM ONLY {target} t WHERE {})",
                matches.join(" AND ")
            );
            u64::try_from(self.client.query_one(&sql, &[]).await?.get::<_, i64>(0)).unwrap_or(0)
        };
        let written = self
            .client
            .execute(
                &format!(
                    "INSERT INTO {target} AS t ({columns}) OVERRIDING SYSTEM VALUE SELECT {columns} FROM \
                     crmvault_rows{conflict}"
                ),
                &[],
            )
            .await?;
        self.client.batch_execute("DROP TABLE crmvault_rows").await?;
        // Each row given is inserted, or its key is live: updated, or left (skip, or the same
        // values already there).
        let inserted = if conflict.is_empty() { written } else { given.saturating_sub(existing).min(written) };
        Ok((inserted, written - inserted))
    }

    /// Defers the deferrable constraints of the caller's transaction to its commit.
    pub async fn defer_constraints(&self) -> Result<()> {
        self.client.batch_execute("SET CONSTRAINTS ALL DEFERRED").await?;
        Ok(())
    }

    /// The functions (not the catalog's, not an extension's) that loading rows runs, as
    /// `schema.name(types)`, when the session's role is a superuser or a member of one (which
    /// can become it with `SET ROLE`): those check constraints of tables and domains call,
    /// directly or through an operator, and those stored generated columns compute with. They
    /// run with its rights. Called after the pre-data DDL, which creates them; empty for any
    /// other role.
    pub async fn functions_run_as_superuser(&self) -> Result<Vec<String>> {
        let sql = concat!(
            "WITH used AS ( \
                     SELECT d.refobjid AS fn FROM pg_catalog.pg_depend d \
                     WHERE d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass \
                       AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                     UNION SELECT o.oprcode FROM pg_catalog.pg_depend d \
                     JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid \
                     WHERE d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass \
                       AND d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass \
                     UNION SELECT d.refobjid FROM pg_catalog.pg_depend d \
                     JOIN pg_catalog.pg_attrdef a ON a.oid = d.objid \
                     JOIN pg_catalog.pg_attribute t ON t.attrelid = a.adrelid AND t.attnum = a.adnum \
                     WHERE d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
                       AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND t.attgenerated <> '') \
                   SELECT DISTINCT p.oid::pg_catalog.regprocedure::pg_catalog.text FROM used \
                   JOIN pg_catalog.pg_proc p ON p.oid = used.fn \
                   JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e \
                       WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND e.objid = p.oid AND e.deptype = 'e') \
                     AND ",
            super::acts_as_superuser!(),
            " ORDER BY 1"
        );
        Ok(self.client.query(sql, &[]).await?.iter().map(|row| row.get(0)).collect())
    }

    /// The code of its own this transaction made that loading could run with a superuser's
    /// rights, as the catalog has it (not as a script says): routines but trigger functions
    /// (aggregates and procedures too; not the constructors the server makes for a range
    /// type; a trigger function in C or `internal` is code, since it may be called as any
    /// function is), operators, casts made with a function, operator classes and families, text
    /// search templates and parsers, triggers, event triggers and languages, none of an
    /// extension's, and extensions not in `contained`. Called after the pre-data DDL, before
    /// any row loads; each as PostgreSQL names it, at most twenty.
    pub async fn code_made_now(&self, contained: &[&str]) -> Result<Vec<String>> {
        let next = self.next_xid().await?;
        let made = |what: &str, name: &str, class: &str, from: &str| {
            format!(
                "SELECT '{what} ' || {name} AS what, o.oid, 'pg_catalog.{class}'::pg_catalog.regclass AS class, \
                 o.xmin FROM pg_catalog.{class} o {from}"
            )
        };
        let objects = [
            made(
                "function",
                "o.oid::pg_catalog.regprocedure::pg_catalog.text",
                "pg_proc",
                "WHERE o.prorettype OPERATOR(pg_catalog.<>) 'pg_catalog.trigger'::pg_catalog.regtype \
                 OR o.prolang IN (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname IN ('c', 'internal'))",
            ),
            made("operator", "o.oid::pg_catalog.regoperator::pg_catalog.text", "pg_operator", ""),
            made(
                "cast",
                "pg_catalog.format_type(o.castsource, NULL) || ' AS ' || pg_catalog.format_type(o.casttarget, NULL)",
                "pg_cast",
                "WHERE o.castfunc OPERATOR(pg_catalog.<>) 0",
            ),
            made("operator family", "pg_catalog.quote_ident(o.opfname)", "pg_opfamily", ""),
            made("operator class", "pg_catalog.quote_ident(o.opcname)", "pg_opclass", ""),
            made("text search template", "pg_catalog.quote_ident(o.tmplname)", "pg_ts_template", ""),
            made("text search parser", "pg_catalog.quote_ident(o.prsname)", "pg_ts_parser", ""),
            made(
                "trigger",
                "pg_catalog.quote_ident(o.tgname) || ' on ' || o.tgrelid::pg_catalog.regclass::pg_catalog.text",
                "pg_trigger",
                "WHERE NOT o.tgisinternal",
            ),
            made("event trigger", "pg_catalog.quote_ident(o.evtname)", "pg_event_trigger", ""),
            made("language", "pg_catalog.quote_ident(o.lanname)", "pg_language", ""),
            made(
                "extension",
                "pg_catalog.quote_ident(o.extname)",
                "pg_extension",
                "WHERE o.extname OPERATOR(pg_catalog.<>) ALL ($1::pg_catalog.text[])",
            ),
        ];
        // A dependency of kind `i` only the server makes (a range type's constructors on it).
        let sql = format!(
            "SELECT what FROM ({}) o WHERE {} AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
               WHERE d.classid OPERATOR(pg_catalog.=) o.class AND d.objid OPERATOR(pg_catalog.=) o.oid \
                 AND (d.deptype OPERATOR(pg_catalog.=) 'e' OR (d.deptype OPERATOR(pg_catalog.=) 'i' \
                   AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass))) \
             ORDER BY 1 LIMIT 20",
            objects.join(" UNION ALL "),
            written_by_this_transaction("o.xmin", next)
        );
        Ok(self.own_query(&sql, &[&contained]).await?.iter().map(|row| row.get(0)).collect())
    }

    /// The expressions this transaction made that call a function of `pg_catalog` named in
    /// `changing` (names, or their starts: [`super::part::CHANGING_FUNCTIONS`]), as the catalog
    /// stores them (not as a script spells them): check constraints (of tables and domains),
    /// defaults and generated columns (but `nextval` in a default, which loading does not
    /// evaluate), index expressions and predicates, partition keys, views, rules and
    /// materialized views, row security policies, trigger conditions, extended statistics.
    /// Loading evaluates some of them as the restoring role (checks, generated columns,
    /// partition keys, index builds, materialized views refreshed), the application the rest.
    /// Extensions' objects count too: none of those PostgreSQL ships makes such a call, and a
    /// constraint the script adds to an extension's domain is the script's. Calls are read from
    /// the stored trees (`:funcid` and the like): PostgreSQL records no dependency on a built-in
    /// function. (A partition's bounds keep only their values: [`super::part`] allows only
    /// constants there.) Each as (what, function), at most a hundred.
    pub async fn calls_made_now(&self, changing: &[&str]) -> Result<Vec<(String, String)>> {
        let next = self.next_xid().await?;
        // (what, stored tree, xmin, whether it is a default that no COPY evaluates: a column's,
        // not a generated column's, or a domain's)
        let tree = |what: &str, tree: &str, plain_default: &str, from: &str| {
            format!(
                "SELECT {what} AS what, ({tree})::pg_catalog.text AS tree, o.xmin, {plain_default} AS plain_default \
                 FROM {from}"
            )
        };
        let relation = |oid: &str| format!("{oid}::pg_catalog.regclass::pg_catalog.text");
        let trees = [
            tree(
                &format!(
                    "'constraint ' || pg_catalog.quote_ident(o.conname) || ' on ' || CASE WHEN o.conrelid <> 0 THEN {} \
                     ELSE pg_catalog.format_type(o.contypid, NULL) END",
                    relation("o.conrelid")
                ),
                "o.conbin",
                "false",
                "pg_catalog.pg_constraint o WHERE o.conbin IS NOT NULL",
            ),
            tree(
                &format!("'default of ' || {} || '.' || pg_catalog.quote_ident(a.attname)", relation("o.adrelid")),
                "o.adbin",
                "a.attgenerated = ''",
                "pg_catalog.pg_attrdef o JOIN pg_catalog.pg_attribute a \
                 ON a.attrelid = o.adrelid AND a.attnum = o.adnum",
            ),
            tree(
                &format!("'index ' || {}", relation("o.indexrelid")),
                "pg_catalog.concat(o.indexprs, ' ', o.indpred)",
                "false",
                "pg_catalog.pg_index o",
            ),
            tree(
                &format!("'partition key of ' || {}", relation("o.partrelid")),
                "o.partexprs",
                "false",
                "pg_catalog.pg_partitioned_table o",
            ),
            tree(
                &format!("'rule ' || pg_catalog.quote_ident(o.rulename) || ' of ' || {}", relation("o.ev_class")),
                "pg_catalog.concat(o.ev_action, ' ', o.ev_qual)",
                "false",
                "pg_catalog.pg_rewrite o",
            ),
            tree(
                &format!("'policy ' || pg_catalog.quote_ident(o.polname) || ' on ' || {}", relation("o.polrelid")),
                "pg_catalog.concat(o.polqual, ' ', o.polwithcheck)",
                "false",
                "pg_catalog.pg_policy o",
            ),
            tree(
                &format!("'trigger ' || pg_catalog.quote_ident(o.tgname) || ' on ' || {}", relation("o.tgrelid")),
                "o.tgqual",
                "false",
                "pg_catalog.pg_trigger o WHERE o.tgqual IS NOT NULL",
            ),
            tree(
                &format!("'statistics ' || pg_catalog.quote_ident(o.stxname) || ' on ' || {}", relation("o.stxrelid")),
                "o.stxexprs",
                "false",
                "pg_catalog.pg_statistic_ext o WHERE o.stxexprs IS NOT NULL",
            ),
            tree(
                "'default of type ' || pg_catalog.format_type(o.oid, NULL)",
                "o.typdefaultbin",
                "true",
                "pg_catalog.pg_type o WHERE o.typdefaultbin IS NOT NULL",
            ),
        ];
        let sql = format!(
            "WITH changing AS ( \
               SELECT p.oid, p.proname FROM pg_catalog.pg_proc p \
               WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace \
                 AND EXISTS (SELECT 1 FROM pg_catalog.unnest($1::pg_catalog.text[]) AS f (start) \
                   WHERE pg_catalog.starts_with(p.proname::pg_catalog.text, f.start))), \
             trees AS ({}) \
             SELECT DISTINCT t.what, c.proname::pg_catalog.text FROM trees t, \
               LATERAL pg_catalog.regexp_matches(t.tree, ':(?:funcid|opfuncid|aggfnoid|winfnoid) ([0-9]+)', 'g') AS m (id) \
               JOIN changing c ON c.oid = m.id[1]::pg_catalog.oid \
             WHERE {} AND NOT (t.plain_default AND c.proname = 'nextval') \
             ORDER BY 1, 2 LIMIT 100",
            trees.join(" UNION ALL "),
            written_by_this_transaction("t.xmin", next)
        );
        Ok(self.own_query(&sql, &[&changing]).await?.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// What this transaction made (or gave an owner) that would let any role act with a server's
    /// rights later, in the restored database: a view, rule or materialized view over a relation
    /// of `pg_catalog` or `pg_toast` (the shared catalogs' TOAST tables hold their large values,
    /// other databases' settings among them, under fixed names) owned by a role with a server's rights (a superuser, a member of one, a
    /// predefined role: the relation is read, or written through an updatable view or a rule, as
    /// the owner), and a `SECURITY DEFINER` routine such a role owns (it runs as the owner for
    /// whoever calls it, or fires its trigger). Not an extension's. At most twenty. The
    /// relations a rule reads or writes are those its stored query tree names (`:relid`):
    /// PostgreSQL records no dependency on a system catalog.
    pub async fn doors_to_server_rights(&self) -> Result<Vec<String>> {
        let next = self.next_xid().await?;
        let sql = format!(
            "WITH strong AS ({SERVER_RIGHTS}) \
             SELECT what FROM ( \
               SELECT DISTINCT 'rule ' || pg_catalog.quote_ident(w.rulename) || ' on ' \
                 || w.ev_class::pg_catalog.regclass::pg_catalog.text || ' over ' \
                 || c.relnamespace::pg_catalog.regnamespace::pg_catalog.text || '.' \
                 || pg_catalog.quote_ident(c.relname) || ', owned by ' \
                 || v.relowner::pg_catalog.regrole::pg_catalog.text AS what \
               FROM pg_catalog.pg_rewrite w JOIN pg_catalog.pg_class v ON v.oid = w.ev_class, \
               LATERAL pg_catalog.regexp_matches(w.ev_action::pg_catalog.text, ':relid ([0-9]+) ', 'g') AS m (relid) \
               JOIN pg_catalog.pg_class c ON c.oid = m.relid[1]::pg_catalog.oid \
               WHERE c.relnamespace IN ('pg_catalog'::pg_catalog.regnamespace, 'pg_toast'::pg_catalog.regnamespace) \
                 AND v.relowner IN (SELECT oid FROM strong) AND ({} OR {}) \
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e \
                   WHERE e.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND e.objid = v.oid AND e.deptype = 'e') \
               UNION ALL \
               SELECT 'function ' || p.oid::pg_catalog.regprocedure::pg_catalog.text || ' (SECURITY DEFINER), owned by ' \
                 || p.proowner::pg_catalog.regrole::pg_catalog.text \
               FROM pg_catalog.pg_proc p WHERE p.prosecdef AND p.proowner IN (SELECT oid FROM strong) AND {} \
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e \
                   WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND e.objid = p.oid AND e.deptype = 'e') \
             ) o ORDER BY 1 LIMIT 20",
            written_by_this_transaction("w.xmin", next),
            written_by_this_transaction("v.xmin", next),
            written_by_this_transaction("p.xmin", next)
        );
        Ok(self.own_query(&sql, &[]).await?.iter().map(|row| row.get(0)).collect())
    }

    /// Runs a catalog query of crmvault's own amid the snapshot's, with the session set up for
    /// it and put back after: `search_path` at `pg_catalog, pg_temp` (the snapshot's code may
    /// have set it so that an operator of its own answers the query), and `jit` off (these
    /// queries are large, cheap and run once: compiling one took 3.5 s of a 0.004 s query).
    async fn own_query(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<Row>> {
        let set = "SELECT pg_catalog.current_setting('search_path'), pg_catalog.current_setting('jit'), \
                   pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false), \
                   pg_catalog.set_config('jit', 'off', false)";
        let before = self.client.query_one(set, &[]).await?;
        let (path, jit): (String, String) = (before.get(0), before.get(1));
        let rows = self.client.query(sql, params).await;
        let put_back =
            "SELECT pg_catalog.set_config('search_path', $1, false), pg_catalog.set_config('jit', $2, false)";
        let put = self.client.execute(put_back, &[&path, &jit]).await;
        // The query's error first: after it, in a transaction, putting back fails too ("current
        // transaction is aborted"), which would hide it.
        let rows = rows?;
        put?;
        Ok(rows)
    }

    /// Whether the session's role is a superuser or a member of one.
    pub async fn is_superuser(&self) -> Result<bool> {
        Ok(self.client.query_one(super::ACTS_AS_SUPERUSER, &[]).await?.get(0))
    }

    /// The objects outside `side` (the schemas a side-schema restore makes) whose catalog rows
    /// this transaction, or one of its subtransactions, wrote: made or altered (`xmin` still in
    /// progress, which other sessions' committed work never is, so concurrent maintenance such
    /// as `REINDEX` or `REFRESH MATERIALIZED VIEW` does not count). Schemas, relations,
    /// columns, defaults, constraints, indexes, triggers, rules, policies, inheritance, extended
    /// statistics, functions, types, operators, casts, collations, conversions, languages,
    /// extensions, event triggers, publications, default privileges, foreign data wrappers,
    /// servers and tables, comments, databases, their settings, tablespaces, large objects,
    /// memberships; roles and user mappings where the session may read them. Toast and temporary
    /// schemas are left out, and the roles in `made` (made by this restore). At most ten, each
    /// as PostgreSQL identifies it. What was dropped leaves no row and is not seen.
    /// Objects of no schema in a catalog of `allowed` (`pg_extension`, …) are not counted.
    pub async fn written_outside(&self, side: &[&str], made: &[String], allowed: &[&str]) -> Result<Vec<String>> {
        let next = self.next_xid().await?;
        let mut objects = vec![
            "'pg_class'::regclass, oid, 0, xmin FROM pg_catalog.pg_class",
            "'pg_class'::regclass, attrelid, attnum::int, xmin FROM pg_catalog.pg_attribute",
            "'pg_attrdef'::regclass, oid, 0, xmin FROM pg_catalog.pg_attrdef",
            "'pg_constraint'::regclass, oid, 0, xmin FROM pg_catalog.pg_constraint",
            "'pg_class'::regclass, indrelid, 0, xmin FROM pg_catalog.pg_index",
            "'pg_trigger'::regclass, oid, 0, xmin FROM pg_catalog.pg_trigger",
            "'pg_rewrite'::regclass, oid, 0, xmin FROM pg_catalog.pg_rewrite",
            "'pg_policy'::regclass, oid, 0, xmin FROM pg_catalog.pg_policy",
            "'pg_class'::regclass, inhparent, 0, xmin FROM pg_catalog.pg_inherits",
            "'pg_class'::regclass, inhrelid, 0, xmin FROM pg_catalog.pg_inherits",
            "'pg_statistic_ext'::regclass, oid, 0, xmin FROM pg_catalog.pg_statistic_ext",
            "'pg_proc'::regclass, oid, 0, xmin FROM pg_catalog.pg_proc",
            "'pg_type'::regclass, oid, 0, xmin FROM pg_catalog.pg_type",
            "'pg_operator'::regclass, oid, 0, xmin FROM pg_catalog.pg_operator",
            "'pg_cast'::regclass, oid, 0, xmin FROM pg_catalog.pg_cast",
            "'pg_collation'::regclass, oid, 0, xmin FROM pg_catalog.pg_collation",
            "'pg_conversion'::regclass, oid, 0, xmin FROM pg_catalog.pg_conversion",
            "'pg_namespace'::regclass, oid, 0, xmin FROM pg_catalog.pg_namespace",
            "'pg_language'::regclass, oid, 0, xmin FROM pg_catalog.pg_language",
            "'pg_extension'::regclass, oid, 0, xmin FROM pg_catalog.pg_extension",
            "'pg_event_trigger'::regclass, oid, 0, xmin FROM pg_catalog.pg_event_trigger",
            "'pg_publication'::regclass, oid, 0, xmin FROM pg_catalog.pg_publication",
            "'pg_publication_rel'::regclass, oid, 0, xmin FROM pg_catalog.pg_publication_rel",
            "'pg_default_acl'::regclass, oid, 0, xmin FROM pg_catalog.pg_default_acl",
            "'pg_foreign_data_wrapper'::regclass, oid, 0, xmin FROM pg_catalog.pg_foreign_data_wrapper",
            "'pg_foreign_server'::regclass, oid, 0, xmin FROM pg_catalog.pg_foreign_server",
            "'pg_class'::regclass, ftrelid, 0, xmin FROM pg_catalog.pg_foreign_table",
            "classoid, objoid, objsubid, xmin FROM pg_catalog.pg_description",
            "classoid, objoid, 0, xmin FROM pg_catalog.pg_shdescription",
            "'pg_database'::regclass, oid, 0, xmin FROM pg_catalog.pg_database",
            "CASE WHEN setrole = 0 THEN 'pg_database'::regclass ELSE 'pg_authid'::regclass END, \
               CASE WHEN setrole = 0 THEN setdatabase ELSE setrole END, 0, xmin FROM pg_catalog.pg_db_role_setting",
            "'pg_tablespace'::regclass, oid, 0, xmin FROM pg_catalog.pg_tablespace",
            "'pg_largeobject'::regclass, oid, 0, xmin FROM pg_catalog.pg_largeobject_metadata",
            // A membership is its member's, but for the one PostgreSQL 16 and later give the
            // creator of a role `--create-roles` made (its own).
            "'pg_authid'::regclass, CASE WHEN roleid IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY ($2::text[])) \
               AND member IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname IN (session_user, current_user)) \
               THEN roleid ELSE member END, 0, xmin FROM pg_catalog.pg_auth_members",
            "'pg_opfamily'::regclass, oid, 0, xmin FROM pg_catalog.pg_opfamily",
            "'pg_opclass'::regclass, oid, 0, xmin FROM pg_catalog.pg_opclass",
            "'pg_opfamily'::regclass, amopfamily, 0, xmin FROM pg_catalog.pg_amop",
            "'pg_opfamily'::regclass, amprocfamily, 0, xmin FROM pg_catalog.pg_amproc",
            "'pg_am'::regclass, oid, 0, xmin FROM pg_catalog.pg_am",
            "'pg_ts_config'::regclass, oid, 0, xmin FROM pg_catalog.pg_ts_config",
            "'pg_ts_config'::regclass, mapcfg, 0, xmin FROM pg_catalog.pg_ts_config_map",
            "'pg_ts_dict'::regclass, oid, 0, xmin FROM pg_catalog.pg_ts_dict",
            "'pg_ts_parser'::regclass, oid, 0, xmin FROM pg_catalog.pg_ts_parser",
            "'pg_ts_template'::regclass, oid, 0, xmin FROM pg_catalog.pg_ts_template",
            "'pg_transform'::regclass, oid, 0, xmin FROM pg_catalog.pg_transform",
            "'pg_type'::regclass, enumtypid, 0, xmin FROM pg_catalog.pg_enum",
            "classoid, objoid, objsubid, xmin FROM pg_catalog.pg_seclabel",
            "classoid, objoid, 0, xmin FROM pg_catalog.pg_shseclabel",
        ];
        // Privileges on settings (`GRANT ALTER SYSTEM ON PARAMETER`), PostgreSQL 15 and later.
        let readable = |catalog: &str| {
            format!(
                "SELECT pg_catalog.to_regclass('pg_catalog.{catalog}') IS NOT NULL \
                   AND pg_catalog.has_table_privilege('pg_catalog.{catalog}', 'SELECT')"
            )
        };
        for (catalog, from) in [
            ("pg_parameter_acl", "'pg_parameter_acl'::regclass, oid, 0, xmin FROM pg_catalog.pg_parameter_acl"),
            ("pg_subscription", "'pg_subscription'::regclass, oid, 0, xmin FROM pg_catalog.pg_subscription"),
        ] {
            if self.client.query_one(&readable(catalog), &[]).await?.get::<_, bool>(0) {
                objects.push(from);
            }
        }
        let readable = "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT') \
                          AND pg_catalog.has_table_privilege('pg_catalog.pg_user_mapping', 'SELECT')";
        if self.client.query_one(readable, &[]).await?.get::<_, bool>(0) {
            objects.push("'pg_authid'::regclass, oid, 0, xmin FROM pg_catalog.pg_authid");
            objects.push("'pg_user_mapping'::regclass, oid, 0, xmin FROM pg_catalog.pg_user_mapping");
        }
        let rows: Vec<String> = objects.iter().map(|from| format!("SELECT {from}")).collect();
        // Each object's schema is its own, or its relation's; objects of no schema are outside.
        let sql = format!(
            "WITH rows (classid, objid, subid, xmin) AS ({}), \
               mine AS MATERIALIZED (SELECT classid, objid, subid FROM rows WHERE {}), \
               placed AS ( \
                 SELECT m.*, CASE m.classid \
                   WHEN 'pg_class'::regclass THEN (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = m.objid) \
                   WHEN 'pg_namespace'::regclass THEN m.objid \
                   WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_catalog.pg_proc WHERE oid = m.objid) \
                   WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_catalog.pg_type WHERE oid = m.objid) \
                   WHEN 'pg_constraint'::regclass THEN \
                     (SELECT connamespace FROM pg_catalog.pg_constraint WHERE oid = m.objid) \
                   WHEN 'pg_cast'::regclass THEN (SELECT CASE WHEN s.typnamespace NOT IN \
                       ('pg_catalog'::regnamespace, 'information_schema'::regnamespace) \
                     THEN s.typnamespace ELSE t.typnamespace END FROM pg_catalog.pg_cast c \
                     JOIN pg_catalog.pg_type s ON s.oid = c.castsource JOIN pg_catalog.pg_type t ON t.oid = c.casttarget \
                     WHERE c.oid = m.objid) \
                   WHEN 'pg_default_acl'::regclass THEN (SELECT NULLIF(defaclnamespace, 0) \
                     FROM pg_catalog.pg_default_acl WHERE oid = m.objid) \
                   WHEN 'pg_operator'::regclass THEN \
                     (SELECT oprnamespace FROM pg_catalog.pg_operator WHERE oid = m.objid) \
                   WHEN 'pg_collation'::regclass THEN \
                     (SELECT collnamespace FROM pg_catalog.pg_collation WHERE oid = m.objid) \
                   WHEN 'pg_conversion'::regclass THEN \
                     (SELECT connamespace FROM pg_catalog.pg_conversion WHERE oid = m.objid) \
                   WHEN 'pg_opfamily'::regclass THEN \
                     (SELECT opfnamespace FROM pg_catalog.pg_opfamily WHERE oid = m.objid) \
                   WHEN 'pg_opclass'::regclass THEN \
                     (SELECT opcnamespace FROM pg_catalog.pg_opclass WHERE oid = m.objid) \
                   WHEN 'pg_ts_config'::regclass THEN \
                     (SELECT cfgnamespace FROM pg_catalog.pg_ts_config WHERE oid = m.objid) \
                   WHEN 'pg_ts_dict'::regclass THEN \
                     (SELECT dictnamespace FROM pg_catalog.pg_ts_dict WHERE oid = m.objid) \
                   WHEN 'pg_ts_parser'::regclass THEN \
                     (SELECT prsnamespace FROM pg_catalog.pg_ts_parser WHERE oid = m.objid) \
                   WHEN 'pg_ts_template'::regclass THEN \
                     (SELECT tmplnamespace FROM pg_catalog.pg_ts_template WHERE oid = m.objid) \
                   WHEN 'pg_statistic_ext'::regclass THEN \
                     (SELECT stxnamespace FROM pg_catalog.pg_statistic_ext WHERE oid = m.objid) \
                   WHEN 'pg_attrdef'::regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_attrdef d \
                     JOIN pg_catalog.pg_class c ON c.oid = d.adrelid WHERE d.oid = m.objid) \
                   WHEN 'pg_trigger'::regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_trigger t \
                     JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid WHERE t.oid = m.objid) \
                   WHEN 'pg_rewrite'::regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_rewrite r \
                     JOIN pg_catalog.pg_class c ON c.oid = r.ev_class WHERE r.oid = m.objid) \
                   WHEN 'pg_policy'::regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_policy p \
                     JOIN pg_catalog.pg_class c ON c.oid = p.polrelid WHERE p.oid = m.objid) \
                   END AS nsp FROM mine m) \
             SELECT DISTINCT pg_catalog.concat_ws(' ', o.type, o.identity) \
             FROM placed, LATERAL pg_catalog.pg_identify_object(placed.classid, placed.objid, placed.subid) o \
             WHERE NOT coalesce(placed.nsp IN (SELECT oid FROM pg_catalog.pg_namespace \
                     WHERE nspname = ANY ($1::text[]) OR nspname = 'pg_toast' \
                       OR nspname LIKE 'pg\\_temp\\_%' OR nspname LIKE 'pg\\_toast\\_temp\\_%'), false) \
               AND NOT (placed.classid = 'pg_authid'::regclass \
                        AND placed.objid IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY ($2::text[]))) \
               AND NOT (placed.nsp IS NULL AND placed.classid IN (SELECT c.oid FROM pg_catalog.pg_class c \
                 WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relname = ANY ($3::text[]))) \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e \
                 JOIN pg_catalog.pg_extension x ON x.oid = e.refobjid \
                 WHERE e.classid = placed.classid AND e.objid = placed.objid AND e.deptype = 'e' \
                   AND e.refclassid = 'pg_extension'::regclass \
                   AND (placed.nsp IS NULL OR x.extname = ANY ($4::text[]))) \
             ORDER BY 1 LIMIT 10",
            rows.join(" UNION ALL "),
            written_by_this_transaction("xmin", next)
        );
        let in_pg_catalog = super::part::EXTENSIONS_IN_PG_CATALOG;
        let rows = self.own_query(&sql, &[&side, &made, &allowed, &in_pg_catalog]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// What [`Self::written_outside`] finds outside every user schema of the database, but for
    /// objects of no schema that are the database's own ([`THE_DATABASES_OWN`]): what a restore
    /// into an empty database changed of the server's (roles but `made`, memberships, settings,
    /// other databases, tablespaces, subscriptions) or of `pg_catalog` and
    /// `information_schema` (grants, owners, comments).
    pub async fn written_outside_the_database(&self, made: &[String]) -> Result<Vec<String>> {
        let schemas = self.user_schemas().await?;
        let schemas: Vec<&str> = schemas.iter().map(String::as_str).collect();
        self.written_outside(&schemas, made, THE_DATABASES_OWN).await
    }

    /// The user schemas and relations there are now, each by oid with its name: what
    /// [`Self::written_outside`] cannot see (a drop leaves no row) is what is missing later.
    pub async fn relations_now(&self) -> Result<Vec<(u32, String)>> {
        let sql = format!(
            "SELECT n.oid, 'schema ' || pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_namespace n \
             WHERE {USER_SCHEMAS} \
             UNION ALL SELECT c.oid, 'relation ' || pg_catalog.quote_ident(n.nspname) || '.' \
               || pg_catalog.quote_ident(c.relname) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE {USER_SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
        );
        let rows = self.client.query(&sql, &[]).await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Fires the transaction's deferred triggers and checks now (`SET CONSTRAINTS ALL
    /// IMMEDIATE`) instead of at commit.
    pub async fn fire_deferred(&self) -> Result<()> {
        self.client.batch_execute("SET CONSTRAINTS ALL IMMEDIATE").await?;
        Ok(())
    }

    /// The tables outside `side` whose rows this transaction inserted, updated or deleted
    /// (PostgreSQL's own count of them, `pg_stat_xact_user_tables`; subtransactions included).
    pub async fn rows_changed_outside(&self, side: &[&str]) -> Result<Vec<String>> {
        let sql = "SELECT schemaname::text, relname::text FROM pg_catalog.pg_stat_xact_user_tables \
                   WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 AND schemaname <> ALL ($1) \
                     AND schemaname NOT LIKE 'pg\\_temp\\_%' ORDER BY 1, 2";
        let rows = self.client.query(sql, &[&side]).await?;
        Ok(rows.iter().map(|row| qualified(row.get(0), row.get(1))).collect())
    }

    /// Which of `roles` are superusers on this server.
    pub async fn superusers_among(&self, roles: &[&str]) -> Result<Vec<String>> {
        let sql = "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolsuper AND rolname = ANY ($1) ORDER BY 1";
        Ok(self.client.query(sql, &[&roles]).await?.iter().map(|row| row.get(0)).collect())
    }

    /// Which of `roles` may reach beyond what they own: superusers, members of one (they have
    /// what it owns, the catalog included), and members of any predefined role (`pg_read_server_files`, `pg_read_all_data`, `pg_read_all_settings`, …)
    /// but `pg_database_owner`, which every database's owner is. Roles this server lacks are not
    /// named.
    pub async fn roles_with_server_rights(&self, roles: &[&str]) -> Result<Vec<String>> {
        let sql = format!("SELECT s.rolname::text FROM ({SERVER_RIGHTS}) s WHERE s.rolname = ANY ($1) ORDER BY 1");
        Ok(self.client.query(&sql, &[&roles]).await?.iter().map(|row| row.get(0)).collect())
    }

    /// Which of `schemas` the database has.
    pub async fn existing_schemas(&self, schemas: &[&str]) -> Result<Vec<String>> {
        let rows = self
            .client
            .query("SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname = ANY ($1) ORDER BY 1", &[&schemas])
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Who the session runs as and whether it counts the rows it changes: what the check after a
    /// side-schema restore relies on, and the snapshot's code could change.
    pub async fn session_state(&self) -> Result<String> {
        let row = self
            .client
            .query_one(
                "SELECT pg_catalog.format('role %s, track_counts %s', current_user, \
                 pg_catalog.current_setting('track_counts'))",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The objects of `schemas` (and the schemas) that another role than the session's owns,
    /// named: what a restore makes there is its own, and an owner given in between could change
    /// the side objects under the admin who compares with them.
    pub async fn owned_by_others(&self, schemas: &[&str]) -> Result<Vec<String>> {
        let sql = "WITH owned (classid, objid, nsp, owner) AS ( \
               SELECT 'pg_namespace'::regclass, oid, oid, nspowner FROM pg_catalog.pg_namespace \
               UNION ALL SELECT 'pg_class'::regclass, oid, relnamespace, relowner FROM pg_catalog.pg_class \
               UNION ALL SELECT 'pg_proc'::regclass, oid, pronamespace, proowner FROM pg_catalog.pg_proc \
               UNION ALL SELECT 'pg_type'::regclass, oid, typnamespace, typowner FROM pg_catalog.pg_type \
               UNION ALL SELECT 'pg_operator'::regclass, oid, oprnamespace, oprowner FROM pg_catalog.pg_operator \
               UNION ALL SELECT 'pg_collation'::regclass, oid, collnamespace, collowner FROM pg_catalog.pg_collation \
               UNION ALL SELECT 'pg_conversion'::regclass, oid, connamespace, conowner FROM pg_catalog.pg_conversion \
               UNION ALL SELECT 'pg_opfamily'::regclass, oid, opfnamespace, opfowner FROM pg_catalog.pg_opfamily \
               UNION ALL SELECT 'pg_opclass'::regclass, oid, opcnamespace, opcowner FROM pg_catalog.pg_opclass \
               UNION ALL SELECT 'pg_ts_config'::regclass, oid, cfgnamespace, cfgowner FROM pg_catalog.pg_ts_config \
               UNION ALL SELECT 'pg_ts_dict'::regclass, oid, dictnamespace, dictowner FROM pg_catalog.pg_ts_dict \
               UNION ALL SELECT 'pg_statistic_ext'::regclass, oid, stxnamespace, stxowner \
                 FROM pg_catalog.pg_statistic_ext) \
             SELECT pg_catalog.concat_ws(' ', o.type, o.identity) FROM owned, \
               LATERAL pg_catalog.pg_identify_object(owned.classid, owned.objid, 0) o \
             WHERE owned.nsp IN (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = ANY ($1::text[])) \
               AND owned.owner <> (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) \
             ORDER BY 1 LIMIT 10";
        let rows = self.client.query(sql, &[&schemas]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Takes from PUBLIC what it holds on `schemas` and their routines (EXECUTE, given to it on
    /// every new function): what a side-schema restore makes is its restoring role's alone.
    pub async fn keep_to_owner(&self, schemas: &[&str]) -> Result<()> {
        for schema in schemas {
            let schema = quote_ident(schema);
            self.client
                .batch_execute(&format!(
                    "REVOKE ALL ON SCHEMA {schema} FROM PUBLIC; REVOKE ALL ON ALL ROUTINES IN SCHEMA {schema} FROM PUBLIC"
                ))
                .await?;
        }
        Ok(())
    }

    /// The user schemas of the database (not `pg_catalog`, `information_schema`, toast or
    /// temporary ones), by name.
    pub async fn user_schemas(&self) -> Result<Vec<String>> {
        let sql = format!("SELECT n.nspname::text FROM pg_catalog.pg_namespace n WHERE {USER_SCHEMAS} ORDER BY 1");
        Ok(self.client.query(&sql, &[]).await?.iter().map(|row| row.get(0)).collect())
    }

    /// Every schema of the database, by name.
    pub async fn schemas(&self) -> Result<Vec<String>> {
        let rows = self.client.query("SELECT nspname::text FROM pg_catalog.pg_namespace ORDER BY 1", &[]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// The objects of the database's own schemas a side object may name beside live data
    /// ([`super::part::Spec::live_inert`]): types whose values run no code of a role without
    /// superuser as they load, and which no such role can change, replace or cast: members of
    /// an extension a superuser owns, or owned by a superuser themselves (a trusted extension
    /// an application role made: its script ran as the bootstrap superuser), so that they
    /// cannot be dropped alone, and only a superuser may rename them or cast from or to them; that are base types (made
    /// only by a superuser, their input in C; an array only of such), enums, or domains with
    /// neither check nor default over a base type or enum that is no array; where no relation
    /// has the same name. An application's own enum or domain is not one: its owner could
    /// give it a cast or a check that would run as the restoring role. No function either (a
    /// name followed by a parenthesis, or after `=`, is never one of these): a check
    /// constraint could call an extension's C function (`dblink_exec`) with arguments of the
    /// snapshot's choosing.
    pub async fn live_inert(&self) -> Result<BTreeSet<(String, String)>> {
        let inert = inert_type();
        let sql = format!(
            "WITH named AS ( \
               SELECT t.typnamespace AS ns, t.typname AS name, {inert} AS inert FROM pg_catalog.pg_type t \
             UNION ALL SELECT c.relnamespace, c.relname, false FROM pg_catalog.pg_class c \
             UNION ALL SELECT d.dictnamespace, d.dictname, false FROM pg_catalog.pg_ts_dict d \
             UNION ALL SELECT f.cfgnamespace, f.cfgname, false FROM pg_catalog.pg_ts_config f \
             UNION ALL SELECT v.connamespace, v.conname, false FROM pg_catalog.pg_conversion v \
             UNION ALL SELECT l.collnamespace, l.collname, false FROM pg_catalog.pg_collation l) \
             SELECT n.nspname::text, named.name::text FROM named \
             JOIN pg_catalog.pg_namespace n ON n.oid = named.ns \
             WHERE n.nspname <> 'pg_catalog' \
             GROUP BY 1, 2 HAVING pg_catalog.bool_and(named.inert)"
        );
        let rows = self.client.query(&sql, &[]).await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// The columns of `table` (as the database has it) that its COPY would not give: COPY fills
    /// those with their defaults, which can call functions (generated columns aside, which are
    /// never given).
    pub async fn columns_not_loaded(&self, table: &TableManifest) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT attname::text FROM pg_catalog.pg_attribute \
                 WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
                   AND attname <> ALL ($2::text[]) ORDER BY attnum",
                &[&qualified(&table.schema, &table.name), &table.columns],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Which of `tables` (schema, name) the database lacks, or has without one of the columns
    /// given with it: each as a line saying which.
    pub async fn missing_tables(&self, tables: &[(&str, &str, &[String])]) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for (schema, name, columns) in tables {
            let row = self
                .client
                .query_one(
                    "SELECT c.oid IS NOT NULL, coalesce((SELECT array_agg(a.attname::text) FROM pg_catalog.pg_attribute a \
                       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}') \
                     FROM (SELECT 1) one LEFT JOIN pg_catalog.pg_class c ON c.relkind IN ('r', 'p') \
                       AND c.relname = $2 AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                    &[schema, name],
                )
                .await?;
            let (exists, present): (bool, Vec<String>) = (row.get(0), row.get(1));
            if !exists {
                missing.push(format!("{schema}.{name} does not exist"));
                continue;
            }
            let lacking: Vec<&str> = columns.iter().filter(|c| !present.contains(c)).map(String::as_str).collect();
            if !lacking.is_empty() {
                missing.push(format!("{schema}.{name} has no column {}", lacking.join(", ")));
            }
        }
        Ok(missing)
    }

    /// The live database's foreign keys between two different tables, as (referencing,
    /// referenced) pairs: partitions' own copies of a key included, so a leaf partition that
    /// references another table, or is referenced through its parent, is named itself.
    pub async fn foreign_key_pairs(&self) -> Result<Vec<(super::script::TableName, super::script::TableName)>> {
        let rows = self
            .client
            .query(
                "SELECT cn.nspname::text, c.relname::text, pn.nspname::text, p.relname::text \
                 FROM pg_catalog.pg_constraint k \
                 JOIN pg_catalog.pg_class c ON c.oid = k.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
                 JOIN pg_catalog.pg_class p ON p.oid = k.confrelid JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
                 WHERE k.contype = 'f' AND k.conrelid <> k.confrelid",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let name = |schema: usize, name: usize| super::script::TableName {
                    schema: row.get(schema),
                    name: row.get(name),
                };
                (name(0, 1), name(2, 3))
            })
            .collect())
    }

    /// Which of `roles` the server lacks.
    pub async fn missing_roles<'r>(&self, roles: &[&'r RoleRecord]) -> Result<Vec<&'r RoleRecord>> {
        missing_roles(&self.client, roles).await
    }

    /// [`create_roles`], on this session.
    pub async fn create_roles(&self, roles: &[&RoleRecord]) -> Result<(Vec<String>, Vec<String>)> {
        create_roles(&self.client, roles).await
    }

    /// What the roles `made` are: attributes, memberships either way, settings. Read when
    /// `--create-roles` has made them and again before each commit of the restore, so that a
    /// change to one (`ALTER ROLE made LOGIN PASSWORD …` from code the load ran), which the
    /// catalog check leaves to this, is found whatever transaction made it.
    pub async fn roles_state(&self, made: &[String]) -> Result<String> {
        let sql = "SELECT pg_catalog.concat_ws(' | ', \
               (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(' ', r.rolname, r.rolsuper, r.rolinherit, \
                  r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, \
                  r.rolvaliduntil), ', ' ORDER BY r.rolname) FROM pg_catalog.pg_roles r WHERE r.rolname = ANY ($1)), \
               (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(' ', m.roleid, m.member, m.admin_option), ', ' \
                  ORDER BY m.roleid, m.member) FROM pg_catalog.pg_auth_members m \
                WHERE m.roleid IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY ($1)) \
                   OR m.member IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY ($1))), \
               (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(' ', s.setdatabase, s.setrole, s.setconfig::text), \
                  ', ' ORDER BY s.setdatabase, s.setrole) FROM pg_catalog.pg_db_role_setting s \
                WHERE s.setrole IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY ($1))))";
        let rows = self.own_query(sql, &[&made]).await?;
        Ok(rows.first().map(|row| row.get(0)).unwrap_or_default())
    }

    /// Drops roles a failed restore created (after what it created is dropped).
    pub async fn drop_roles(&self, names: &[String]) -> Result<()> {
        for name in names {
            self.client.batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(name))).await?;
        }
        Ok(())
    }

    /// Describes what the database already holds, or `None` when it is empty.
    pub async fn describe_contents(&self) -> Result<Option<String>> {
        describe_contents(&self.client).await
    }

    /// Whether an unfinished parallel restore's marker schema is present.
    pub async fn holds_incomplete_restore(&self) -> Result<bool> {
        holds_incomplete_restore(&self.client).await
    }

    /// Drops every user schema, large object, publication and event trigger and recreates an
    /// empty `public` (restore --clean), inside the caller's transaction.
    pub async fn clean(&self) -> Result<()> {
        clean_database(&self.client).await
    }
}

/// Sets the session's `default_toast_compression` for `choice`; whether lz4 is now in use.
async fn set_toast_compression(client: &Client, choice: ToastCompression) -> Result<bool> {
    if choice == ToastCompression::ServerDefault {
        return Ok(false);
    }
    let rows = client
        .query(
            "SELECT pg_catalog.set_config('default_toast_compression', 'lz4', false) FROM pg_catalog.pg_settings \
             WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)",
            &[],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// What a restore session sets `maintenance_work_mem` to at least, unless told otherwise.
///
/// Index and constraint builds sort in it; PostgreSQL's default, 64 MB, made the scale-1
/// audit_log's two indexes (1.2 M entries) sort on disk. `restore --parallel` at scale 1,
/// four alternating pairs: 11.5-13.4 s with 256 MB against 11.5-15.4 s.
pub const RESTORE_MAINTENANCE_WORK_MEM: &str = "256MB";

/// Raises the session's `maintenance_work_mem` to `size` (PostgreSQL's units: `256MB`, `1GB`)
/// when it is lower; never lowers it. A size PostgreSQL does not read is an error.
async fn raise_maintenance_work_mem(client: &Client, size: &str) -> Result<()> {
    client
        .query(
            "SELECT pg_catalog.set_config('maintenance_work_mem', $1, false) FROM pg_catalog.pg_settings \
             WHERE name = 'maintenance_work_mem' AND setting::bigint * 1024 < pg_catalog.pg_size_bytes($1)",
            &[&size],
        )
        .await
        .map_err(|e| Error::Invalid(format!("maintenance_work_mem {size}: {}", crate::error::postgres_message(&e))))?;
    Ok(())
}

/// The temporary table large objects' contents are loaded into before they are written.
const LARGE_OBJECTS_STAGE: &str = "CREATE TEMPORARY TABLE crmvault_large_objects (loid oid, data bytea) ON COMMIT DROP";
/// The COPY into the staging table.
const LARGE_OBJECTS_COPY_IN: &str = "COPY pg_temp.crmvault_large_objects (loid, data) FROM STDIN";
/// Writes the staged contents into the large objects.
const LARGE_OBJECTS_WRITE: &str = "SELECT count(pg_catalog.lo_put(loid, 0, data)) FROM pg_temp.crmvault_large_objects; DROP TABLE pg_temp.crmvault_large_objects";

/// The roles with a server's rights (`oid`, `rolname`): superusers, predefined roles
/// (`pg_read_server_files`, `pg_read_all_data`, …; not `pg_database_owner`), and the members
/// of either, which have what they have.
const SERVER_RIGHTS: &str = "SELECT r.oid, r.rolname FROM pg_catalog.pg_roles r WHERE EXISTS ( \
      SELECT 1 FROM pg_catalog.pg_roles p \
      WHERE (p.rolsuper OR (p.rolname LIKE 'pg\\_%' AND p.rolname <> 'pg_database_owner')) \
        AND (p.oid = r.oid OR pg_catalog.pg_has_role(r.oid, p.oid, 'USAGE')))";

/// The catalogs of objects of no schema that pg_dump writes for a database: extensions,
/// default privileges, large objects, publications, foreign-data wrappers, servers and user
/// mappings. (A cast is in the schema of its type that is not `pg_catalog`'s: one between the
/// server's types is the server's.)
const THE_DATABASES_OWN: &[&str] = &[
    "pg_extension",
    "pg_default_acl",
    "pg_largeobject",
    "pg_publication",
    "pg_publication_rel",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_user_mapping",
];

/// The condition that a catalog row's `xmin` (the column `xmin` names) is this transaction's or
/// one of its subtransactions': still in progress, which other sessions' committed work never
/// is. Only rows whose 32-bit `xmin` lies, modulo 2^32, between this transaction's xid and
/// `next` ([`LoadSession::next_xid`], read after the transaction's last write) are asked
/// about, their xid8 this transaction's plus that distance (which crosses an epoch when the
/// counter wrapped in between). Not `age()`, which keeps the counter it first read in a
/// transaction: one that had no xid then took a later one, so that another session's row
/// written in between seemed ours ("transaction ID … is in the future"). Not a bound of 2^31
/// either: a frozen row keeps its old `xmin`, which after 2^31 transactions is as far ahead,
/// modulo 2^32, as a new one (initdb's rows, once the counter's low half passed 2^31).
/// Permanent xids (below 3) are left out. Unqualified operators: under
/// [`LoadSession::own_query`].
fn written_by_this_transaction(xmin: &str, next: u64) -> String {
    let current = "pg_catalog.pg_current_xact_id()::text::bigint";
    let ahead = format!("(({xmin}::text::bigint - ({current} & 4294967295)) & 4294967295)");
    format!(
        "CASE WHEN {xmin}::text::bigint >= 3 AND {ahead} < {next} - {current} \
           THEN pg_catalog.pg_xact_status(({current} + {ahead})::text::xid8) = 'in progress' \
         ELSE false END"
    )
}

/// The `COPY … FROM STDIN` that loads a table's stream.
fn copy_in_sql(schema: &str, name: &str, columns: &[String], freeze: bool) -> String {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let freeze = if freeze { " WITH (FREEZE)" } else { "" };
    if columns.is_empty() {
        return format!("COPY {table} FROM STDIN{freeze}");
    }
    let columns: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    format!("COPY {table} ({}) FROM STDIN{freeze}", columns.join(", "))
}

/// What `restore --rows` does with a row whose key the live table has already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnConflict {
    /// The restore fails, and writes nothing.
    #[default]
    Fail,
    /// The live row stays.
    Skip,
    /// The live row takes the snapshot's values.
    Update,
}

/// Which of `roles` the server lacks.
async fn missing_roles<'r>(client: &Client, roles: &[&'r RoleRecord]) -> Result<Vec<&'r RoleRecord>> {
    let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    let present: std::collections::HashSet<String> = client
        .query("SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname = ANY ($1)", &[&names])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(roles.iter().filter(|r| !present.contains(&r.name)).copied().collect())
}

/// Creates `roles` without login or password (and without their other attributes: a
/// restore grants no power the admin did not), in the caller's transaction, then makes
/// each a member of the roles it was a member of that exist. Returns the memberships left
/// out (`role in group`) because the group does not exist.
pub(super) async fn create_roles(client: &Client, roles: &[&RoleRecord]) -> Result<(Vec<String>, Vec<String>)> {
    // Another restore (into another database: advisory locks do not reach), or another's try,
    // may make the same role at the same time: its CREATE ROLE waits for the other's
    // transaction, then finds the name taken. Such a role is the other's, not made (nor
    // undone) here. Made in one order, byte by byte, two never wait for each other.
    let mut roles = missing_roles(client, roles).await?;
    roles.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut created = Vec::new();
    for role in &roles {
        client.batch_execute("SAVEPOINT crmvault_role").await?;
        match client.batch_execute(&format!("CREATE ROLE {} NOLOGIN", quote_ident(&role.name))).await {
            Ok(()) => {
                client.batch_execute("RELEASE SAVEPOINT crmvault_role").await?;
                created.push(role.name.clone());
            }
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                    || error.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) =>
            {
                tracing::debug!(role = %role.name, "made meanwhile by another restore");
                client.batch_execute("ROLLBACK TO SAVEPOINT crmvault_role").await?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    let roles: Vec<&RoleRecord> = roles.into_iter().filter(|role| created.contains(&role.name)).collect();
    let mut left_out = Vec::new();
    for role in roles {
        for group in &role.member_of {
            // A membership is power: one in a role that is a superuser, creates roles or
            // databases, bypasses row security, replicates, owns a database (the snapshot's
            // SECURITY DEFINER functions would act on it), or is one of the server's
            // predefined roles (pg_read_server_files …) is not given by a restore.
            // The group's powers, and those of every role it is a member of (a membership
            // hands on what the group inherits).
            let powers: Option<bool> = client
                .query_one(
                    "WITH RECURSIVE up(oid) AS ( \
                       SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1 \
                       UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN up ON m.member = up.oid) \
                     SELECT bool_or(r.rolsuper OR r.rolcreaterole OR r.rolbypassrls OR r.rolreplication \
                                    OR r.rolcreatedb OR r.rolname LIKE 'pg\\_%' \
                                    OR EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.datdba = r.oid)) \
                     FROM up JOIN pg_catalog.pg_roles r ON r.oid = up.oid",
                    &[group],
                )
                .await?
                .get(0);
            match powers {
                Some(false) => {
                    client
                        .batch_execute(&format!("GRANT {} TO {}", quote_ident(group), quote_ident(&role.name)))
                        .await?;
                }
                Some(true) => {
                    left_out.push(format!(
                        "{} in {group} (a role with powers, or a member of one: grant it yourself)",
                        role.name
                    ));
                }
                None => left_out.push(format!("{} in {group} (no such role here)", role.name)),
            }
        }
    }
    Ok((created, left_out))
}

/// A database server, through its `postgres` database: creating, naming, renaming and
/// dropping databases (`restore --create`, drills).
pub struct Server {
    client: Client,
}

/// The server's own databases: never restored into as a new or scratch database.
pub const SERVER_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

impl Server {
    /// Connects to the `postgres` database of `database`'s server, as its user.
    pub async fn of(database: &Database) -> Result<Server> {
        Ok(Server { client: database.on_database("postgres").connect().await? })
    }

    /// The connection, for the server-wide steps of other modules.
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Whether database `name` exists (`None` when it does not), and its comment.
    pub async fn comment(&self, name: &str) -> Result<Option<Option<String>>> {
        let row = self
            .client
            .query_opt(
                "SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database WHERE datname = $1",
                &[&name],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Takes the session's advisory lock on `key` (held until this connection ends), if free.
    pub async fn try_lock(&self, key: &str) -> Result<bool> {
        let sql = "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext($1))";
        Ok(self.client.query_one(sql, &[&key]).await?.get(0))
    }

    /// Who holds the advisory lock [`Self::try_lock`] takes on `key` (in the `postgres`
    /// database), in one phrase, if the server shows it to this role: anyone who can connect
    /// can take it, so the admin kept out is told whom to ask or end.
    pub async fn lock_holder(&self, key: &str) -> Result<Option<String>> {
        let sql = "SELECT a.pid, a.usename::text, a.application_name, a.client_addr::text, \
                          to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
                     FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid, \
                          (SELECT pg_catalog.hashtext($1)::bigint AS k) h \
                    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
                      AND l.classid::bigint = (h.k >> 32) & 4294967295 AND l.objid::bigint = h.k & 4294967295 \
                      AND l.pid <> pg_catalog.pg_backend_pid() \
                    LIMIT 1";
        let Some(row) = self.client.query_opt(sql, &[&key]).await? else { return Ok(None) };
        let text = |at: usize| row.get::<_, Option<String>>(at).map(|value| crate::error::printable(&value));
        let pid: i32 = row.get(0);
        let mut said = vec![format!("the session of pid {pid}")];
        let parts = [("user", text(1)), ("application", text(2).filter(|a| !a.is_empty())), ("from", text(3))];
        said.extend(parts.into_iter().filter_map(|(what, value)| Some(format!("{what} {}", value?))));
        said.extend(text(4).map(|since| format!("connected since {since} UTC")));
        let said = said.join(", ");
        Ok(Some(said))
    }

    /// Creates database `name` from `template0`, with the source's encoding and collation when
    /// `locale` gives them (ICU's when the source's are), owned by `owner` (`--role`: the role
    /// that loads it, as `pg_restore --create --role` makes it) or the role connected, and
    /// `comment` on it.
    pub async fn create(
        &self,
        name: &str,
        locale: Option<&SessionSettings>,
        owner: Option<&str>,
        comment: &str,
    ) -> Result<()> {
        let quoted = quote_ident(name);
        let owner = owner.map_or_else(String::new, |owner| format!(" OWNER {}", quote_ident(owner)));
        let locale = locale.map_or_else(String::new, |locale| {
            let icu = locale
                .icu_locale
                .as_deref()
                .map_or_else(String::new, |icu| format!(" LOCALE_PROVIDER icu ICU_LOCALE {}", quote_literal(icu)));
            format!(
                " ENCODING {} LC_COLLATE {} LC_CTYPE {}{icu}",
                quote_literal(&locale.encoding),
                quote_literal(&locale.collate),
                quote_literal(&locale.ctype)
            )
        });
        self.client
            .batch_execute(&format!("CREATE DATABASE {quoted}{owner} TEMPLATE template0{locale}"))
            .await
            .map_err(|e| Error::Invalid(format!("creating database {name}: {}", crate::error::postgres_message(&e))))?;
        // Closed while it loads (it gets its privileges when it takes its name): nobody else
        // connects to it, or leaves objects in it, meanwhile.
        self.client
            .batch_execute(&format!(
                "COMMENT ON DATABASE {quoted} IS {}; REVOKE CONNECT, TEMPORARY ON DATABASE {quoted} FROM PUBLIC",
                quote_literal(comment)
            ))
            .await?;
        Ok(())
    }

    /// Whether database `name` belongs to the role connected (or to `role`, which `--role`
    /// makes the owner) and nobody is connected to it: what a leftover of this admin's own
    /// `restore --create` is, before its contents are looked at (connecting into a database
    /// someone else made runs what its owner set up).
    pub async fn is_ours_and_idle(&self, name: &str, role: Option<&str>) -> Result<bool> {
        let sql = "SELECT d.datdba IN (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname IN (current_user, $2)) \
                     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.datname = d.datname) \
                   FROM pg_catalog.pg_database d WHERE d.datname = $1";
        Ok(self.client.query_opt(sql, &[&name, &role]).await?.is_some_and(|row| row.get(0)))
    }

    /// Drops database `name` unless someone is connected to it (no `FORCE`).
    pub async fn drop_if_idle(&self, name: &str) -> Result<()> {
        self.client.batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(name))).await?;
        Ok(())
    }

    /// Drops roles (a failed `restore --create --create-roles` made them).
    pub async fn drop_roles(&self, names: &[String]) -> Result<()> {
        for name in names {
            self.client.batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(name))).await?;
        }
        Ok(())
    }

    /// Drops database `name` (its sessions ended).
    pub async fn drop(&self, name: &str) -> Result<()> {
        self.client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))).await?;
        Ok(())
    }
}

/// Creates `database` on its server, as [`Server::create`].
pub async fn create_database(
    database: &Database,
    locale: Option<&SessionSettings>,
    owner: Option<&str>,
    comment: &str,
) -> Result<()> {
    Server::of(database).await?.create(&database.name(), locale, owner, comment).await
}

/// Whether `database` holds nothing of its own (no schema, relation, function, type or large
/// object).
pub async fn holds_nothing(database: &Database) -> Result<bool> {
    Ok(describe_contents(&database.connect().await?).await?.is_none())
}

/// Describes what a database already holds, or `None` when it is empty.
pub(super) async fn describe_contents(client: &Client) -> Result<Option<String>> {
    let sql = format!(
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMAS}), \
                (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMAS}), \
                (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {USER_SCHEMAS} \
                   AND (t.typtype IN ('e', 'd', 'r', 'm') OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c')))), \
                (SELECT count(*) FROM pg_namespace n WHERE {USER_SCHEMAS} AND n.nspname <> 'public'), \
                (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata)"
    );
    let row = client.query_one(&sql, &[]).await?;
    let (relations, functions, types, schemas, large_objects): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    if relations + functions + types + schemas + large_objects == 0 {
        return Ok(None);
    }
    if holds_incomplete_restore(client).await? {
        return Ok(Some(format!(
            "an interrupted parallel restore left it incomplete: schema {INCOMPLETE_RESTORE_SCHEMA}"
        )));
    }
    // What is there, and only that: "3 relations, 1 schema".
    let counted: Vec<String> = [
        (relations, "relation", "relations"),
        (functions, "function", "functions"),
        (types, "type", "types"),
        (schemas, "schema", "schemas"),
        (large_objects, "large object", "large objects"),
    ]
    .into_iter()
    .filter(|(count, _, _)| *count > 0)
    .map(|(count, one, many)| format!("{count} {}", if count == 1 { one } else { many }))
    .collect();
    Ok(Some(counted.join(", ")))
}

/// The schema a parallel restore creates in its first transaction and drops in its last: while it
/// exists, the database holds a restore that has not finished.
pub const INCOMPLETE_RESTORE_SCHEMA: &str = "crmvault_incomplete_restore";

/// Whether an unfinished parallel restore's marker schema is present.
async fn holds_incomplete_restore(client: &Client) -> Result<bool> {
    let row = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&INCOMPLETE_RESTORE_SCHEMA])
        .await?;
    Ok(row.get(0))
}

/// Drops every user schema, large object, publication and event trigger (what pg_dump dumps of a
/// database besides its schemas; subscriptions and foreign-data wrappers of one's own are left)
/// and recreates an empty `public` (restore --clean), inside the caller's transaction.
pub(super) async fn clean_database(client: &Client) -> Result<()> {
    client.batch_execute("SELECT count(pg_catalog.lo_unlink(oid)) FROM pg_catalog.pg_largeobject_metadata").await?;
    reset_global_default_privileges(client).await?;
    for (catalog, column, kind) in
        [("pg_publication", "pubname", "PUBLICATION"), ("pg_event_trigger", "evtname", "EVENT TRIGGER")]
    {
        for row in client.query(&format!("SELECT {column}::text FROM pg_catalog.{catalog} ORDER BY 1"), &[]).await? {
            let name: String = row.get(0);
            client.batch_execute(&format!("DROP {kind} {}", quote_ident(&name))).await?;
        }
    }
    let sql = format!("SELECT n.nspname FROM pg_namespace n WHERE {USER_SCHEMAS} ORDER BY 1");
    for row in client.query(&sql, &[]).await? {
        let schema: String = row.get(0);
        client.batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema))).await?;
    }
    client
        .batch_execute(
            "CREATE SCHEMA public AUTHORIZATION pg_database_owner; \
             GRANT USAGE ON SCHEMA public TO PUBLIC; \
             COMMENT ON SCHEMA public IS 'standard public schema'",
        )
        .await?;
    Ok(())
}

/// Puts database-wide `ALTER DEFAULT PRIVILEGES` back to PostgreSQL's built-in defaults
/// (per-schema ones go with their schema): otherwise a restore's new objects would get the
/// privileges the replaced database had set up, not the snapshot's. PostgreSQL removes an entry
/// once it equals the default: revoke everything it grants, grant the defaults again.
async fn reset_global_default_privileges(client: &Client) -> Result<()> {
    let rows = client
        .query(
            "SELECT pg_catalog.pg_get_userbyid(d.defaclrole)::text, d.defaclobjtype::text, \
                    coalesce(array_agg(DISTINCT a.grantee) FILTER (WHERE a.grantee IS NOT NULL), '{}') \
             FROM pg_catalog.pg_default_acl d LEFT JOIN LATERAL pg_catalog.aclexplode(d.defaclacl) a ON true \
             WHERE d.defaclnamespace = 0 GROUP BY 1, 2",
            &[],
        )
        .await?;
    for row in rows {
        let (role, kind, grantees): (String, String, Vec<u32>) = (row.get(0), row.get(1), row.get(2));
        let (objects, public_default) = match kind.as_str() {
            "r" => ("TABLES", None),
            "S" => ("SEQUENCES", None),
            "f" => ("FUNCTIONS", Some("EXECUTE")),
            "T" => ("TYPES", Some("USAGE")),
            "n" => ("SCHEMAS", None),
            _ => continue,
        };
        let role = quote_ident(&role);
        for grantee in grantees {
            let grantee = if grantee == 0 {
                "PUBLIC".to_string()
            } else {
                let name: String =
                    client.query_one("SELECT pg_catalog.pg_get_userbyid($1)::text", &[&grantee]).await?.get(0);
                quote_ident(&name)
            };
            client
                .batch_execute(&format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {role} REVOKE ALL ON {objects} FROM {grantee}"
                ))
                .await?;
        }
        client
            .batch_execute(&format!("ALTER DEFAULT PRIVILEGES FOR ROLE {role} GRANT ALL ON {objects} TO {role}"))
            .await?;
        if let Some(privilege) = public_default {
            client
                .batch_execute(&format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {role} GRANT {privilege} ON {objects} TO PUBLIC"
                ))
                .await?;
        }
    }
    Ok(())
}
