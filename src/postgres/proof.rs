//! A drill's side: the scratch database (made for the drill and dropped after it, or a given
//! empty one emptied again), and the session that reads a restored database back to prove it:
//! every table's COPY text as the backup wrote it, sequences, constraints checked row by row,
//! and B-tree indexes against their tables (amcheck).

use tokio_postgres::Client;

use super::load::{SERVER_DATABASES, Server};
use super::script::SearchPath;
use super::session::{apply_settings, user_sequences, user_tables};
use super::{Database, SourceTable, qualified, quote_ident};
use crate::error::{Error, Result};
use crate::repo::{SequenceState, SessionSettings};

/// The comment a drill puts on a database it creates: a database with it may be dropped by a
/// later drill (one that was killed left it behind); any other database is never touched.
pub const SCRATCH_MARK: &str = "crmvault drill scratch database: dropped when the drill ends";

/// The database a drill restores into.
pub struct Scratch {
    /// Where to connect.
    pub database: Database,
    /// Whether the restore is to create it (the drill drops it afterwards), or it was given
    /// empty (the drill empties it again).
    pub create: bool,
    /// The server's `postgres` database, holding the drill's advisory lock on the name for the
    /// whole drill (a second drill on the same name is refused instead of dropping this one's).
    server: Option<Server>,
}

impl Scratch {
    /// Claims `database` for a drill: one that does not exist is to be created, one an earlier
    /// drill left behind is dropped and to be created again, an empty one is taken as it is,
    /// and any other is refused, as are the server's own databases and a URL naming none.
    pub async fn claim(database: &Database) -> Result<Scratch> {
        let name = database.name();
        if !database.names_database() {
            return Err(Error::Invalid(format!(
                "{database} names no database: give the scratch database's name (postgres://…/crm_drill)"
            )));
        }
        if SERVER_DATABASES.contains(&name.as_str()) {
            return Err(Error::Invalid(format!(
                "{database} is one of the server's own databases: a drill restores into a database of its own"
            )));
        }
        let server = match Server::of(database).await {
            Ok(server) => Some(server),
            Err(error) => {
                tracing::debug!("no maintenance connection ({error}): the scratch database must exist");
                None
            }
        };
        let create = match &server {
            Some(maintenance) => {
                let lock = format!("crmvault drill {name}");
                if !maintenance.try_lock(&lock).await? {
                    let holder = maintenance.lock_holder(&lock).await?.unwrap_or_else(|| "another session".into());
                    return Err(Error::Invalid(format!(
                        "another drill is using {database}: one at a time ({holder} holds its lock)"
                    )));
                }
                match marked(maintenance, &name).await? {
                    None => true,
                    Some(true) => {
                        tracing::warn!("{database} was left behind by an earlier drill: replacing it");
                        maintenance.drop(&name).await?;
                        true
                    }
                    Some(false) => false,
                }
            }
            None => false,
        };
        if create {
            return Ok(Scratch { database: database.clone(), create, server });
        }
        let client = database.connect().await?;
        if let Some(contents) = super::load::describe_contents(&client).await? {
            return Err(Error::Invalid(format!(
                "{database} holds {contents}: a drill restores only into a database it creates, or one that is empty"
            )));
        }
        Ok(Scratch { database: database.clone(), create: false, server })
    }

    /// Gives the database back: drops it if the drill created it (and it still bears the
    /// drill's mark), or empties it again if the restore may have written to it (`touched`).
    /// `Ok(Some(why))` when a database the drill created is left behind.
    pub async fn finish(self, touched: bool) -> Result<Option<String>> {
        let name = self.database.name();
        if self.create {
            let Some(server) = &self.server else { return Ok(Some(format!("{} was not dropped", self.database))) };
            return match marked(server, &name).await? {
                Some(true) => server.drop(&name).await.map(|()| None),
                // The restore failed before creating it.
                None => Ok(None),
                Some(false) => Ok(Some(format!(
                    "{} was not dropped: it no longer bears the drill's mark (its comment was changed during the \
                     drill, by the snapshot's SQL or by someone); drop it yourself",
                    self.database
                ))),
            };
        }
        if touched {
            let client = self.database.connect().await?;
            client.batch_execute("BEGIN").await?;
            super::load::clean_database(&client).await?;
            client.batch_execute("COMMIT").await?;
        }
        Ok(None)
    }
}

/// Whether the database `name` exists (`None` when it does not) and bears the drill's mark.
async fn marked(server: &Server, name: &str) -> Result<Option<bool>> {
    Ok(server.comment(name).await?.map(|comment| comment.as_deref() == Some(SCRATCH_MARK)))
}

/// A constraint of the restored database, and the query that counts the rows breaking it.
#[derive(Debug, Clone)]
pub struct Constraint {
    /// `schema.table`.
    pub table: String,
    /// Its name (`NOT NULL` for a table's not-null columns together).
    pub name: String,
    /// `foreign key`, `check` or `not null`.
    pub kind: &'static str,
    /// Whether PostgreSQL holds it as validated (a constraint added `NOT VALID` in the source
    /// is restored so, and may have rows that break it there too).
    pub validated: bool,
    count_sql: String,
}

/// A restored database, read back (nothing changes it meanwhile: no transaction is needed,
/// and a failed index check ends only its own statement).
pub struct ProofSession {
    client: Client,
}

impl ProofSession {
    /// Connects with the backup's `settings` (so COPY writes the text it wrote) and without
    /// synchronized scans (a table without a primary key is read from its first page, in the
    /// order the restore wrote it, as the backup read it).
    pub async fn open(database: &Database, settings: Option<&SessionSettings>) -> Result<ProofSession> {
        let client = database.connect().await?;
        if let Some(settings) = settings {
            apply_settings(&client, settings).await?;
        }
        client.batch_execute("SET synchronize_seqscans = off").await?;
        Ok(ProofSession { client })
    }

    /// The server's version string.
    pub async fn server_version(&self) -> Result<String> {
        Ok(self.client.query_one("SELECT current_setting('server_version')", &[]).await?.get(0))
    }

    /// Whether the session's role is a superuser or a member of one.
    pub async fn is_superuser(&self) -> Result<bool> {
        Ok(self.client.query_one(super::ACTS_AS_SUPERUSER, &[]).await?.get(0))
    }

    /// The rows of `table` (itself only, not its inheritance children).
    pub async fn row_count(&self, table: &SourceTable) -> Result<u64> {
        let count: i64 =
            self.client.query_one(&format!("SELECT count(*) FROM ONLY {}", table.qualified()), &[]).await?.get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Every user table, as backup lists them (columns, primary key).
    pub async fn tables(&self) -> Result<Vec<SourceTable>> {
        user_tables(&self.client).await
    }

    /// Every user sequence's state.
    pub async fn sequences(&self) -> Result<Vec<SequenceState>> {
        user_sequences(&self.client).await
    }

    /// Runs a `COPY … TO STDOUT`.
    pub async fn copy_out(&self, sql: &str) -> Result<tokio_postgres::CopyOutStream> {
        Ok(self.client.copy_out(sql).await?)
    }

    /// Every foreign key and check constraint of a user table, and every table's not-null
    /// columns together.
    pub async fn constraints(&self) -> Result<Vec<Constraint>> {
        let user = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'";
        let columns = |keys: &str, relation: &str| {
            format!(
                "ARRAY(SELECT a.attname::text FROM unnest({keys}) WITH ORDINALITY AS u(attnum, ord) \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = {relation} AND a.attnum = u.attnum ORDER BY u.ord)"
            )
        };
        let sql = format!(
            "SELECT n.nspname, c.relname, c.relkind::text, k.conname, k.contype::text, k.convalidated, \
               fn.nspname, f.relname, f.relkind::text, {}, {}, pg_catalog.pg_get_expr(k.conbin, k.conrelid), \
               k.confmatchtype::text \
             FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_catalog.pg_class f ON f.oid = k.confrelid \
             LEFT JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace \
             WHERE k.contype IN ('f', 'c') AND k.conparentid = 0 AND {user} \
               AND c.relkind IN ('r', 'p') ORDER BY 1, 2, 4",
            columns("k.conkey", "k.conrelid"),
            columns("k.confkey", "k.confrelid"),
        );
        let mut found = Vec::new();
        for row in self.client.query(&sql, &[]).await? {
            let (schema, name, kind): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let table = scan(&schema, &name, &kind);
            let (constraint, contype, validated): (String, String, bool) = (row.get(3), row.get(4), row.get(5));
            let (kind, count_sql) = if contype == "f" {
                let (parent_schema, parent, parent_kind): (String, String, String) =
                    (row.get(6), row.get(7), row.get(8));
                let (keys, referenced): (Vec<String>, Vec<String>) = (row.get(9), row.get(10));
                let full = row.get::<_, String>(12) == "f";
                (
                    "foreign key",
                    orphans_sql(&table, &keys, &scan(&parent_schema, &parent, &parent_kind), &referenced, full),
                )
            } else {
                let expression: String = row.get(11);
                ("check", format!("SELECT count(*) FROM {table} WHERE NOT ({expression})"))
            };
            found.push(Constraint { table: format!("{schema}.{name}"), name: constraint, kind, validated, count_sql });
        }
        let not_null = format!(
            "SELECT n.nspname, c.relname, c.relkind::text, array_agg(a.attname::text ORDER BY a.attnum) \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull AND c.relkind = 'r' AND {user} \
             GROUP BY 1, 2, 3 ORDER BY 1, 2"
        );
        for row in self.client.query(&not_null, &[]).await? {
            let (schema, name, kind, columns): (String, String, String, Vec<String>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let nulls: Vec<String> = columns.iter().map(|c| format!("{} IS NULL", quote_ident(c))).collect();
            found.push(Constraint {
                table: format!("{schema}.{name}"),
                name: "NOT NULL".into(),
                kind: "not null",
                validated: true,
                count_sql: format!("SELECT count(*) FROM {} WHERE {}", scan(&schema, &name, &kind), nulls.join(" OR ")),
            });
        }
        Ok(found)
    }

    /// How many rows break `constraint`.
    /// With `path` (`drill --search-path`), the count runs with it after `pg_catalog`, where
    /// the constraint's expression calls the functions it is for; the catalog queries never.
    pub async fn violations(&self, constraint: &Constraint, path: Option<&SearchPath>) -> Result<u64> {
        self.set_path(path, true).await?;
        let count = self.client.query_one(&constraint.count_sql, &[]).await;
        self.set_path(path, false).await?;
        Ok(u64::try_from(count?.get::<_, i64>(0)).unwrap_or(0))
    }

    /// With `path`, sets the session's search_path to it (after `pg_catalog`); after the
    /// statement it is for, `set_path(path, false)` puts the session's own back.
    async fn set_path(&self, path: Option<&SearchPath>, on: bool) -> Result<()> {
        if let Some(path) = path {
            let value = if on { path.to_string() } else { "pg_catalog, pg_temp".to_string() };
            self.client.execute("SELECT pg_catalog.set_config('search_path', $1, false)", &[&value]).await?;
        }
        Ok(())
    }

    /// Checks every B-tree index of a user table against its table with amcheck's
    /// `bt_index_check(…, heapallindexed => true)`: (indexes checked, problems as
    /// `index: message`), or why it could not (amcheck not installed on the server, or
    /// creating the extension needs a superuser).
    pub async fn check_indexes(&self, path: Option<&SearchPath>) -> Result<std::result::Result<IndexCheck, String>> {
        let schema = match self.amcheck_schema().await? {
            Ok(schema) => schema,
            Err(reason) => return Ok(Err(reason)),
        };
        let sql = "SELECT n.nspname, i.relname, i.oid FROM pg_catalog.pg_index x \
                   JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid JOIN pg_catalog.pg_namespace n ON n.oid = i.relnamespace \
                   JOIN pg_catalog.pg_am am ON am.oid = i.relam \
                   WHERE am.amname = 'btree' AND i.relkind = 'i' AND x.indisvalid AND x.indisready AND i.relpersistence <> 't' \
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
                   ORDER BY 1, 2";
        let indexes = self.client.query(sql, &[]).await?;
        let check = format!("SELECT {}.bt_index_check($1::oid::regclass, true)", quote_ident(&schema));
        let (mut problems, mut unchecked) = (Vec::new(), Vec::new());
        for row in &indexes {
            let (index_schema, name, oid): (String, String, u32) = (row.get(0), row.get(1), row.get(2));
            self.set_path(path, true).await?;
            let checked = self.client.query(&check, &[&oid]).await;
            self.set_path(path, false).await?;
            match checked {
                Ok(_) => {}
                // amcheck computes an expression index's entries under a safe search_path: a
                // function of the index that needs another cannot be run there, which says
                // nothing of the index.
                Err(error) if crate::error::unresolved_in_sql_function(&error).is_some() => unchecked.push(format!(
                    "index {index_schema}.{name} not checked: amcheck cannot compute its entries: {}",
                    crate::error::postgres_message(&error)
                )),
                Err(error) => {
                    problems.push(format!("{index_schema}.{name}: {}", crate::error::postgres_message(&error)));
                }
            }
        }
        Ok(Ok(IndexCheck { checked: indexes.len() - unchecked.len(), problems, unchecked }))
    }

    /// The schema of amcheck's functions: where the restored database has it already, else a
    /// schema of the drill's own it is installed in (the scratch database is dropped or emptied
    /// afterwards).
    async fn amcheck_schema(&self) -> Result<std::result::Result<String, String>> {
        let installed = self
            .client
            .query_opt(
                "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
                 WHERE e.extname = 'amcheck'",
                &[],
            )
            .await?;
        if let Some(row) = installed {
            return Ok(Ok(row.get(0)));
        }
        let available = self
            .client
            .query_opt("SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'amcheck'", &[])
            .await?
            .is_some();
        if !available {
            return Ok(Err("the server has no amcheck extension (PostgreSQL's contrib)".into()));
        }
        // One transaction: without the rights to create the extension, no schema is left either.
        let setup =
            format!("BEGIN; CREATE SCHEMA {DRILL_SCHEMA}; CREATE EXTENSION amcheck SCHEMA {DRILL_SCHEMA}; COMMIT");
        match self.client.batch_execute(&setup).await {
            Ok(()) => Ok(Ok(DRILL_SCHEMA.to_string())),
            Err(error) => {
                self.client.batch_execute("ROLLBACK").await?;
                Ok(Err(format!("amcheck could not be installed: {}", crate::error::postgres_message(&error))))
            }
        }
    }
}

/// What checking the restored B-tree indexes found.
pub struct IndexCheck {
    /// Indexes checked.
    pub checked: usize,
    /// What amcheck found wrong, an index a line.
    pub problems: Vec<String>,
    /// Indexes amcheck could not check, and why.
    pub unchecked: Vec<String>,
}

/// The schema a drill installs amcheck in.
const DRILL_SCHEMA: &str = "crmvault_drill";

/// A table as a query scans it: `ONLY` a plain table (its inheritance children are other
/// tables), a partitioned one with its partitions.
fn scan(schema: &str, name: &str, kind: &str) -> String {
    if kind == "p" { qualified(schema, name) } else { format!("ONLY {}", qualified(schema, name)) }
}

/// Counts the rows of `child` whose key (all of it non-null, or for `MATCH FULL` any of it)
/// finds no row in `parent`.
fn orphans_sql(child: &str, keys: &[String], parent: &str, referenced: &[String], full: bool) -> String {
    let present: Vec<String> = keys.iter().map(|k| format!("c.{} IS NOT NULL", quote_ident(k))).collect();
    let joined = if full { present.join(" OR ") } else { present.join(" AND ") };
    let matches: Vec<String> =
        keys.iter().zip(referenced).map(|(k, r)| format!("p.{} = c.{}", quote_ident(r), quote_ident(k))).collect();
    format!(
        "SELECT count(*) FROM {child} AS c WHERE ({joined}) AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {})",
        matches.join(" AND ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_query_quotes_every_name_and_follows_the_match_type() {
        let keys = vec!["company \"id\"".to_string(), "region".to_string()];
        let referenced = vec!["id".to_string(), "region".to_string()];
        let simple = orphans_sql("ONLY \"crm\".\"deals\"", &keys, "\"crm\".\"companies\"", &referenced, false);
        assert_eq!(
            simple,
            "SELECT count(*) FROM ONLY \"crm\".\"deals\" AS c WHERE (c.\"company \"\"id\"\"\" IS NOT NULL AND \
             c.\"region\" IS NOT NULL) AND NOT EXISTS (SELECT 1 FROM \"crm\".\"companies\" AS p WHERE \
             p.\"id\" = c.\"company \"\"id\"\"\" AND p.\"region\" = c.\"region\")"
        );
        let full = orphans_sql("t", &keys, "p", &referenced, true);
        assert!(full.contains("IS NOT NULL OR c."), "{full}");
    }
}
