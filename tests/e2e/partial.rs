//! Restoring part of a snapshot: some tables into an empty database, some tables into a side
//! schema next to the live data (which stays untouched), rows only into existing tables; and
//! names that would break pasted SQL.

use crate::common::{Ready, Scenario, TestDb};

/// A digest of a table's rows, in key order.
fn rows(db: &TestDb, table: &str, key: &str) -> String {
    db.sql(&format!(
        "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY {key})), '') FROM {table} t"
    ))
    .trim()
    .to_string()
}

/// Whether `sql` fails.
fn refused(db: &TestDb, sql: &str) -> bool {
    let output = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url(), "-c", sql])
        .output()
        .expect("psql runs");
    !output.status.success()
}

fn exists(db: &TestDb, relation: &str) -> bool {
    db.sql(&format!("SELECT to_regclass('{}') IS NOT NULL", relation.replace('\'', "''"))).trim() == "t"
}

const WEIRD_SETUP: &str = r#"
CREATE SCHEMA "we""ird sch";
CREATE TABLE "we""ird sch"."x""; DROP TABLE y; --" (id serial PRIMARY KEY, "select" text UNIQUE, body text);
INSERT INTO "we""ird sch"."x""; DROP TABLE y; --" ("select", body) VALUES ('a', 'one'), ('b', E'two\nlines');
CREATE TABLE public.y (id int);
"#;

#[test]
fn restore_table_brings_one_table_with_what_it_needs_and_says_what_it_leaves_out() {
    let Ready { source, work, repo, .. } = Scenario::new("part_one").crm().init("repo").backup();
    let target = TestDb::create("part_one_target");
    let run = work.restore_with(&repo, &target, &["--table", "crm.contacts", "latest"]).ok();
    assert_eq!(rows(&target, "crm.contacts", "id"), rows(&source, "crm.contacts", "id"));
    for absent in ["crm.deals", "crm.companies", "crm.pipeline"] {
        assert!(!exists(&target, absent), "{absent} was restored");
    }
    // Its indexes, key, trigger and sequence came with it; the foreign key to a table left out
    // did not, and the restore said so.
    assert!(exists(&target, "crm.contacts_name_idx") && exists(&target, "crm.contacts_pkey"));
    assert_eq!(target.sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'contacts_touch'").trim(), "1");
    let next: i64 = target
        .sql("INSERT INTO crm.contacts (first_name, last_name, email) VALUES ('n', 'n', 'n@x') RETURNING id")
        .trim()
        .parse()
        .unwrap();
    let max: i64 = source.sql("SELECT max(id) FROM crm.contacts").trim().parse().unwrap();
    assert!(next > max, "the identity sequence was set: {next} after {max}");
    assert!(run.stderr.contains("not restored: a foreign key of crm.contacts to crm.companies"), "{}", run.stderr);
    assert_eq!(target.sql("SELECT count(*) FROM pg_constraint WHERE contype = 'f'").trim(), "0");

    // Two tables: the key between them is kept.
    let pair = TestDb::create("part_pair");
    work.restore_with(
        &repo,
        &pair,
        &["--table", "crm.deals", "--table", "crm.companies", "--table", "crm.users", "latest"],
    )
    .ok();
    assert_eq!(rows(&pair, "crm.deals", "id"), rows(&source, "crm.deals", "id"));
    assert_eq!(
        pair.sql("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'crm.deals'::regclass").trim(),
        "2",
        "deals → companies and deals → users; deals → contacts is left out"
    );
    // A pattern that matches nothing restores nothing, and says so.
    let nothing = TestDb::create("part_nothing");
    work.restore_with(&repo, &nothing, &["--table", "crm.contact", "latest"])
        .fails_with(1, "no table of the snapshot matches crm.contact");
    assert!(nothing.is_empty());
}

#[test]
fn a_side_schema_holds_the_snapshots_rows_beside_the_untouched_live_ones() {
    let Ready { source, work, repo, .. } = Scenario::new("part_side").crm().sql(WEIRD_SETUP).init("repo").backup();
    let before = rows(&source, "crm.contacts", "id");
    // The incident: a bad import overwrote phone numbers.
    source.sql("UPDATE crm.contacts SET phone = '000' WHERE id % 3 = 0");
    let live = rows(&source, "crm.contacts", "id");
    assert_ne!(before, live);

    // Into the live database without a side schema: refused, with what to do.
    work.restore_with(&repo, &source, &["--table", "crm.contacts", "latest"])
        .fails_with(1, "--schema-map crm=crm_restored");

    let side = "crm_restored_20261128";
    let map = format!("crm={side}");
    let run = work
        .restore_with(
            &repo,
            &source,
            &["--table", "crm.contacts", "--table", "crm.companies", "--schema-map", &map, "latest"],
        )
        .ok();
    assert_eq!(rows(&source, &format!("{side}.contacts"), "id"), before, "{}", run.stderr);
    assert_eq!(rows(&source, "crm.contacts", "id"), live, "the live table is untouched");
    // Its own constraints, pointing into the side schema; its own sequence.
    let fk = source.sql(&format!(
        "SELECT confrelid::regclass::text FROM pg_constraint WHERE contype = 'f' AND conrelid = '{side}.contacts'::regclass"
    ));
    assert_eq!(fk.trim(), format!("{side}.companies"));
    let duplicate =
        format!("INSERT INTO {side}.contacts (id, first_name, last_name, email) VALUES (1, 'x', 'x', 'x@x')");
    assert!(refused(&source, &duplicate), "the primary key holds in the side schema");
    let default = source.sql(&format!(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
         WHERE d.adrelid = '{side}.contacts'::regclass AND a.attname = 'created_at'"
    ));
    assert!(!default.trim().is_empty());
    // The types it uses were made in the side schema too.
    assert_eq!(source.sql(&format!("SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = '{side}' AND t.typname = 'deal_stage'")).trim(), "1");
    // Copy the numbers back with SQL.
    let phones = |table: &str| {
        source.sql(&format!("SELECT md5(string_agg(id || ':' || coalesce(phone, ''), ',' ORDER BY id)) FROM {table}"))
    };
    assert_ne!(phones("crm.contacts"), phones(&format!("{side}.contacts")));
    source.sql(&format!("UPDATE crm.contacts c SET phone = r.phone FROM {side}.contacts r WHERE r.id = c.id"));
    assert_eq!(phones("crm.contacts"), phones(&format!("{side}.contacts")));

    // The same side schema again: refused, nothing changed.
    work.restore_with(&repo, &source, &["--table", "crm.contacts", "--schema-map", &map, "latest"])
        .fails_with(1, "has a schema crm_restored_20261128 already");
    // A table whose schema is not renamed would land on the live one: refused.
    work.restore_with(&repo, &source, &["--table", "public.y", "--schema-map", "crm=crm_other", "latest"])
        .fails_with(1, "public.y would be restored over the live one");
    assert!(!exists(&source, "crm_other.contacts"));

    // Names that would break pasted SQL, into a side schema whose name needs quoting too.
    let weird = r#"we"ird sch.x"; DROP TABLE y; --"#;
    work.restore_with(&repo, &source, &["--table", weird, "--schema-map", "we\"ird sch=side \"2\"", "latest"]).ok();
    assert_eq!(
        rows(&source, r#""side ""2"""."x""; DROP TABLE y; --""#, "id"),
        rows(&source, r#""we""ird sch"."x""; DROP TABLE y; --""#, "id")
    );
    assert!(exists(&source, "public.y"), "nothing was dropped");
}

#[test]
fn data_only_loads_rows_into_existing_tables_all_or_nothing() {
    let Ready { source, work, repo, .. } = Scenario::new("part_data").crm().init("repo").backup();
    let target = TestDb::create("part_data_target");
    work.restore(&repo, &target).ok();
    target.sql("ALTER TABLE crm.audit_log DISABLE TRIGGER ALL; DELETE FROM crm.activities");
    work.restore_with(&repo, &target, &["--data-only", "--table", "crm.activities", "latest"]).ok();
    assert_eq!(rows(&target, "crm.activities", "id"), rows(&source, "crm.activities", "id"));

    // Rows that are there already: the key refuses them, and nothing is loaded.
    let companies = rows(&target, "crm.companies", "id");
    target.sql("DELETE FROM crm.users WHERE id NOT IN (SELECT owner_id FROM crm.deals UNION SELECT owner_id FROM crm.companies WHERE owner_id IS NOT NULL UNION SELECT user_id FROM crm.activities UNION SELECT user_id FROM crm.audit_log WHERE user_id IS NOT NULL)");
    let users = rows(&target, "crm.users", "id");
    work.restore_with(&repo, &target, &["--data-only", "--table", "crm.users", "--table", "crm.companies", "latest"])
        .fails_with(1, "duplicate key");
    assert_eq!(rows(&target, "crm.users", "id"), users);
    assert_eq!(rows(&target, "crm.companies", "id"), companies);

    // A table the target lacks is named before anything is loaded; an empty target is refused.
    target.sql("DROP TABLE crm.audit_log");
    work.restore_with(&repo, &target, &["--data-only", "--table", "crm.audit_log", "latest"])
        .fails_with(1, "crm.audit_log does not exist");
    let empty = TestDb::create("part_data_empty");
    work.restore_with(&repo, &empty, &["--data-only", "latest"])
        .fails_with(1, "is empty: --data-only loads rows into existing tables");
}
