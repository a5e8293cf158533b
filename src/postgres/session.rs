//! The backup's side: the connection that holds the exported snapshot, the catalog queries a
//! backup reads inside it (tables, sequences, foreign keys, materialized views), the readers
//! that attach to it, and the `COPY … TO STDOUT` each table is read with.

use tokio_postgres::Client;

use super::{Database, NOT_FROM_EXTENSION, USER_SCHEMAS, quote_ident, quote_literal};
use crate::error::Result;
use crate::repo::{DatabaseObject, DatabasePrivilege, DatabaseSetting, RoleRecord, SessionSettings};

/// A table whose data is backed up.
#[derive(Debug, Clone)]
pub struct SourceTable {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Columns to copy (not generated), in order.
    pub columns: Vec<String>,
    /// Primary key columns, if any (stable row order).
    pub primary_key: Vec<String>,
    /// On-disk size, to schedule big tables first.
    pub size: i64,
    /// The functions and operators outside `pg_catalog` its indexes and extended statistics
    /// call (`schema.name`): PostgreSQL expands or runs them while it plans any query on the table,
    /// as the session's role (a table owner's immutable function would run as the backup's),
    /// so the table is read with a `COPY` of itself, which plans nothing, as stored.
    pub calls: Vec<String>,
    /// Of those, the SQL functions with no `search_path` of their own, whose bodies resolve
    /// names under the caller's: restoring an index that calls one fails under pg_dump's
    /// empty path (`restore --search-path`).
    pub calls_needing_a_path: Vec<String>,
}

impl SourceTable {
    /// `schema.table`, quoted.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The `COPY … TO STDOUT` that reads it in primary-key order; as stored when it has no
    /// primary key, or calls functions a query on it would run ([`SourceTable::calls`]).
    pub fn copy_out_sql(&self) -> String {
        if self.columns.is_empty() {
            return format!("COPY {} TO STDOUT", self.qualified());
        }
        let columns: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        if !self.calls.is_empty() {
            return format!("COPY {} ({}) TO STDOUT", self.qualified(), columns.join(", "));
        }
        let order = if self.primary_key.is_empty() {
            String::new()
        } else {
            let keys: Vec<String> = self.primary_key.iter().map(|c| quote_ident(c)).collect();
            format!(" ORDER BY {}", keys.join(", "))
        };
        format!("COPY (SELECT {} FROM ONLY {}{order}) TO STDOUT", columns.join(", "), self.qualified())
    }
}

/// Reads every large object's contents as a COPY stream of (oid, bytea).
pub const LARGE_OBJECTS_COPY_OUT: &str =
    "COPY (SELECT oid, pg_catalog.lo_get(oid) FROM pg_catalog.pg_largeobject_metadata ORDER BY oid) TO STDOUT";

/// The snapshot-holding connection of a backup.
pub struct SnapshotSession {
    /// The connection; its transaction must stay open until every reader has attached.
    pub client: Client,
    /// The exported snapshot name.
    pub snapshot: String,
    /// When the transaction started (database clock).
    pub time: chrono::DateTime<chrono::Utc>,
    /// The server's version string and number.
    pub server_version: (String, i32),
}

impl SnapshotSession {
    /// Opens the transaction and exports its snapshot.
    pub async fn begin(database: &Database) -> Result<SnapshotSession> {
        let client = database.connect().await?;
        read_every_row(&client).await?;
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
        let row = client
            .query_one("SELECT pg_export_snapshot(), now(), current_setting('server_version'), current_setting('server_version_num')::int", &[])
            .await?;
        Ok(SnapshotSession { snapshot: row.get(0), time: row.get(1), server_version: (row.get(2), row.get(3)), client })
    }

    /// Every user table with data (leaf tables, not from extensions), biggest first.
    pub async fn tables(&self) -> Result<Vec<SourceTable>> {
        user_tables(&self.client).await
    }

    /// Current values of every user sequence.
    pub async fn sequences(&self) -> Result<Vec<crate::repo::SequenceState>> {
        user_sequences(&self.client).await
    }

    /// The roles the database's objects depend on (pg_shdepend: owners, grantees, roles in
    /// policies), with the roles they are members of and their attributes. The bootstrap
    /// superuser, on which nothing is recorded, every server has.
    pub async fn roles(&self) -> Result<Vec<RoleRecord>> {
        // Default privileges and user mappings name their role in statements --no-owner keeps.
        // The database's own owner and grantees (pg_shdepend rows of no database) and the roles
        // with settings of their own in it are needed by `--create` alone.
        let sql = "WITH db AS (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()), \
                   needs AS ( \
                     SELECT d.refobjid AS role, d.dbid <> 0 AND d.deptype = 'o' AS owns, \
                       d.dbid <> 0 AND d.deptype = 'a' AS granted, \
                       d.dbid <> 0 AND (d.deptype NOT IN ('o', 'a') \
                         OR d.classid IN ('pg_catalog.pg_default_acl'::regclass, 'pg_catalog.pg_user_mapping'::regclass)) AS named, \
                       d.dbid = 0 AS database \
                     FROM pg_catalog.pg_shdepend d, db \
                     WHERE d.refclassid = 'pg_catalog.pg_authid'::regclass AND d.deptype IN ('o', 'a', 'r', 'i') \
                       AND (d.dbid = db.oid OR (d.dbid = 0 AND d.classid = 'pg_catalog.pg_database'::regclass AND d.objid = db.oid)) \
                     UNION ALL \
                     SELECT s.setrole, false, false, false, true FROM pg_catalog.pg_db_role_setting s, db \
                     WHERE s.setdatabase = db.oid AND s.setrole <> 0) \
                   SELECT r.rolname::text, bool_or(n.owns), bool_or(n.granted), bool_or(n.named), \
                     ARRAY(SELECT g.rolname::text FROM pg_catalog.pg_auth_members m \
                           JOIN pg_catalog.pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1), \
                     r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, r.rolreplication, \
                     r.rolbypassrls, bool_or(n.database) \
                   FROM needs n JOIN pg_catalog.pg_roles r ON r.oid = n.role \
                   WHERE r.rolname NOT LIKE 'pg\\_%' \
                   GROUP BY r.oid, r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, \
                     r.rolcanlogin, r.rolreplication, r.rolbypassrls ORDER BY 1";
        let rows = self.client.query(sql, &[]).await?;
        let mut roles: Vec<RoleRecord> = rows
            .iter()
            .map(|row| {
                let flags = [
                    (5, "SUPERUSER"),
                    (7, "CREATEROLE"),
                    (8, "CREATEDB"),
                    (9, "LOGIN"),
                    (10, "REPLICATION"),
                    (11, "BYPASSRLS"),
                ];
                let mut attributes: Vec<String> =
                    flags.iter().filter(|(i, _)| row.get::<_, bool>(*i)).map(|(_, name)| (*name).to_string()).collect();
                if !row.get::<_, bool>(6) {
                    attributes.push("NOINHERIT".into());
                }
                RoleRecord {
                    name: super::catalog_text(row, 0),
                    owns: row.get(1),
                    granted: row.get(2),
                    named: row.get(3),
                    database: row.get(12),
                    member_of: row.get::<_, Vec<super::CatalogText>>(4).into_iter().map(|text| text.0).collect(),
                    attributes,
                }
            })
            .collect();
        // The bootstrap superuser's objects have no pg_shdepend rows; on a server set up
        // under another name (POSTGRES_USER in a container) it is missing all the same.
        let bootstrap = format!(
            "SELECT r.rolname::text, ( \
               EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspowner = 10 AND {USER_SCHEMAS} AND n.nspname <> 'public') \
               OR EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                          WHERE c.relowner = 10 AND {USER_SCHEMAS}) \
               OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                          WHERE p.proowner = 10 AND {USER_SCHEMAS})), \
               EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.datname = current_database() AND d.datdba = 10) \
             FROM pg_catalog.pg_roles r WHERE r.oid = 10"
        );
        if let Some(row) = self.client.query_opt(&bootstrap, &[]).await? {
            let (name, owns, database): (String, bool, bool) = (super::catalog_text(&row, 0), row.get(1), row.get(2));
            if (owns || database) && !roles.iter().any(|role| role.name == name) {
                roles.push(RoleRecord {
                    name,
                    owns,
                    granted: false,
                    named: false,
                    database,
                    member_of: Vec::new(),
                    attributes: vec!["SUPERUSER".into(), "LOGIN".into()],
                });
            }
        }
        Ok(roles)
    }

    /// The settings that shape COPY text in this session, and the database's locale (its ICU
    /// locale read by name from the row: the columns are new in PostgreSQL 15, and renamed in 17).
    pub async fn settings(&self) -> Result<SessionSettings> {
        let row = self
            .client
            .query_one(
                "SELECT current_setting('DateStyle'), current_setting('IntervalStyle'), current_setting('TimeZone'), \
                   current_setting('extra_float_digits'), current_setting('bytea_output'), \
                   pg_catalog.pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, \
                   CASE WHEN pg_catalog.to_jsonb(d) ->> 'datlocprovider' = 'i' \
                     THEN coalesce(pg_catalog.to_jsonb(d) ->> 'daticulocale', pg_catalog.to_jsonb(d) ->> 'datlocale') END \
                 FROM pg_catalog.pg_database d WHERE d.datname = current_database()",
                &[],
            )
            .await?;
        Ok(SessionSettings {
            date_style: row.get(0),
            interval_style: row.get(1),
            time_zone: row.get(2),
            extra_float_digits: row.get(3),
            bytea_output: row.get(4),
            encoding: row.get(5),
            collate: row.get(6),
            ctype: row.get(7),
            icu_locale: row.get(8),
        })
    }

    /// The database itself: owner, privileges (the defaults written out when it has none of
    /// its own), settings for its sessions, connection limit, comment.
    pub async fn database_object(&self) -> Result<DatabaseObject> {
        let this =
            "SELECT oid, datdba, datacl, datconnlimit FROM pg_catalog.pg_database WHERE datname = current_database()";
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT pg_catalog.pg_get_userbyid(d.datdba)::text, d.datconnlimit, \
                       pg_catalog.shobj_description(d.oid, 'pg_database') FROM ({this}) d"
                ),
                &[],
            )
            .await?;
        let privileges = self
            .client
            .query(
                &format!(
                    "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END, \
                       a.privilege_type::text, a.is_grantable \
                     FROM ({this}) d, pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a \
                     ORDER BY 1 NULLS FIRST, 2"
                ),
                &[],
            )
            .await?
            .iter()
            .map(|row| DatabasePrivilege {
                grantee: super::catalog_text_opt(row, 0),
                privilege: row.get(1),
                grantable: row.get(2),
            })
            .collect();
        let settings = self
            .client
            .query(
                &format!(
                    "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(s.setrole)::text END, u.setting \
                     FROM ({this}) d JOIN pg_catalog.pg_db_role_setting s ON s.setdatabase = d.oid, \
                       unnest(s.setconfig) WITH ORDINALITY u(setting, n) \
                     ORDER BY s.setrole <> 0, 1, u.n"
                ),
                &[],
            )
            .await?
            .iter()
            .filter_map(|row| {
                let setting = super::catalog_text(row, 1);
                let (name, value) = setting.split_once('=')?;
                Some(DatabaseSetting {
                    role: super::catalog_text_opt(row, 0),
                    name: name.to_string(),
                    value: value.to_string(),
                })
            })
            .collect();
        Ok(DatabaseObject {
            owner: super::catalog_text(&row, 0),
            privileges,
            settings,
            connection_limit: row.get(1),
            comment: super::catalog_text_opt(&row, 2),
        })
    }

    /// Whether the database holds any large object.
    pub async fn has_large_objects(&self) -> Result<bool> {
        let count: i64 =
            self.client.query_one("SELECT count(*) FROM pg_catalog.pg_largeobject_metadata", &[]).await?.get(0);
        Ok(count != 0)
    }

    /// Ends the snapshot's transaction (once every reader has attached and finished).
    pub async fn end(&self) -> Result<()> {
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }

    /// Foreign keys between user tables: (referencing `schema.table`, referenced `schema.table`).
    pub async fn foreign_keys(&self) -> Result<Vec<(String, String)>> {
        let sql = "SELECT DISTINCT cn.nspname || '.' || c.relname, fn.nspname || '.' || f.relname \
                   FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                   JOIN pg_class f ON f.oid = k.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace \
                   WHERE k.contype = 'f' AND k.conrelid <> k.confrelid ORDER BY 1, 2";
        Ok(self.client.query(sql, &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Materialized views that hold data (to refresh after a restore).
    pub async fn populated_materialized_views(&self) -> Result<Vec<(String, String)>> {
        let sql = format!(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'm' AND c.relispopulated AND {USER_SCHEMAS} AND {NOT_FROM_EXTENSION} ORDER BY c.oid"
        );
        Ok(self.client.query(&sql, &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Every user table with data (leaf tables, not from extensions), biggest first.
pub(super) async fn user_tables(client: &Client) -> Result<Vec<SourceTable>> {
    let sql = format!(
        "SELECT n.nspname, c.relname, \
           coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{{}}'), \
           coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i \
              CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
              WHERE i.indrelid = c.oid AND i.indisprimary), '{{}}'), \
           pg_relation_size(c.oid) + coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0), \
           coalesce(f.calls, '{{}}'), coalesce(f.needing, '{{}}') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN LATERAL ( \
           WITH deps AS ( \
             SELECT d.refclassid, d.refobjid FROM pg_depend d \
             WHERE (d.classid = 'pg_class'::regclass \
                 AND d.objid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = c.oid)) \
               OR (d.classid = 'pg_statistic_ext'::regclass \
                 AND d.objid IN (SELECT x.oid FROM pg_statistic_ext x WHERE x.stxrelid = c.oid))), \
           called AS ( \
             SELECT pn.nspname || '.' || p.proname AS name, p.oid AS code FROM deps \
             JOIN pg_proc p ON p.oid = deps.refobjid JOIN pg_namespace pn ON pn.oid = p.pronamespace \
             WHERE deps.refclassid = 'pg_proc'::regclass AND pn.nspname <> 'pg_catalog' \
             UNION ALL \
             SELECT opn.nspname || '.' || o.oprname, o.oprcode FROM deps \
             JOIN pg_operator o ON o.oid = deps.refobjid JOIN pg_namespace opn ON opn.oid = o.oprnamespace \
             WHERE deps.refclassid = 'pg_operator'::regclass AND opn.nspname <> 'pg_catalog') \
           SELECT array_agg(DISTINCT called.name) AS calls, \
             array_agg(DISTINCT called.name) FILTER (WHERE l.lanname = 'sql' AND p.prosqlbody IS NULL \
               AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) g WHERE g LIKE 'search\\_path=%')) AS needing \
           FROM called JOIN pg_proc p ON p.oid = called.code JOIN pg_language l ON l.oid = p.prolang) f ON true \
         WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {USER_SCHEMAS} AND {NOT_FROM_EXTENSION} \
         ORDER BY 5 DESC, 1, 2"
    );
    let rows = client.query(&sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|row| SourceTable {
            schema: row.get(0),
            name: row.get(1),
            columns: row.get(2),
            primary_key: row.get(3),
            size: row.get(4),
            calls: row.get(5),
            calls_needing_a_path: row.get(6),
        })
        .collect())
}

/// Current values of every user sequence.
pub(super) async fn user_sequences(client: &Client) -> Result<Vec<crate::repo::SequenceState>> {
    let sql = format!(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'S' AND {USER_SCHEMAS} AND {NOT_FROM_EXTENSION} ORDER BY 1, 2"
    );
    let mut states = Vec::new();
    for row in client.query(&sql, &[]).await? {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let value = client
            .query_one(&format!("SELECT last_value, is_called FROM {}", super::qualified(&schema, &name)), &[])
            .await?;
        states.push(crate::repo::SequenceState { schema, name, last_value: value.get(0), is_called: value.get(1) });
    }
    Ok(states)
}

/// Sets the settings that shape how values are read and written as text (restore reads the
/// rows with those of the backup's sessions, a drill writes them out again with them).
pub(super) async fn apply_settings(client: &Client, settings: &SessionSettings) -> Result<()> {
    client
        .query(
            "SELECT pg_catalog.set_config('DateStyle', $1, false), pg_catalog.set_config('IntervalStyle', $2, false), \
               pg_catalog.set_config('TimeZone', $3, false), pg_catalog.set_config('extra_float_digits', $4, false), \
               pg_catalog.set_config('bytea_output', $5, false)",
            &[
                &settings.date_style,
                &settings.interval_style,
                &settings.time_zone,
                &settings.extra_float_digits,
                &settings.bytea_output,
            ],
        )
        .await?;
    Ok(())
}

/// Makes a backup session read every row or none, and every value exactly. With row security
/// off, as pg_dump sets it, a table whose policies would hide rows from the role connected
/// fails the backup (`query would be affected by row-level security policy`; the role needs
/// `BYPASSRLS`) instead of saving part of it without a word. (The session acts as the role
/// connected: see [`Database::connect`].) COPY writes values as the session's settings print
/// them, and the database or role may set them lossy: `extra_float_digits` below 1 rounds
/// floats (0.1 + 0.2 written 0.3), and a `DateStyle` other than ISO writes time stamps with a
/// zone's abbreviation (`MSK`), which reads back at the abbreviation's offset of today, not the
/// one it had then. pg_dump sets both as here; the order of day and month, the time zone and
/// the interval style stay the source's (they print exactly) and are recorded with the
/// snapshot (FORMAT.md, `session`).
async fn read_every_row(client: &Client) -> Result<()> {
    client.batch_execute("SET row_security = off; SET extra_float_digits = 3; SET DateStyle = ISO").await?;
    Ok(())
}

/// Opens a reader connection on the exported snapshot.
pub async fn attach_to_snapshot(database: &Database, snapshot: &str) -> Result<Client> {
    let client = database.connect().await?;
    read_every_row(&client).await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}; \
             SET synchronize_seqscans = off",
            quote_literal(snapshot)
        ))
        .await?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_statements_quote_everything() {
        let table = SourceTable {
            schema: "crm".into(),
            name: "Odd\"Name".into(),
            columns: vec!["id".into(), "e mail".into()],
            primary_key: vec!["id".into()],
            size: 0,
            calls: Vec::new(),
            calls_needing_a_path: Vec::new(),
        };
        assert_eq!(
            table.copy_out_sql(),
            "COPY (SELECT \"id\", \"e mail\" FROM ONLY \"crm\".\"Odd\"\"Name\" ORDER BY \"id\") TO STDOUT"
        );
        // A table whose indexes call a function outside pg_catalog: no query is planned on it.
        let calling = SourceTable { calls: vec!["public.f_unaccent".into()], ..table };
        assert_eq!(calling.copy_out_sql(), "COPY \"crm\".\"Odd\"\"Name\" (\"id\", \"e mail\") TO STDOUT");
    }
}
