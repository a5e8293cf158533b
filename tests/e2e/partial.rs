//! Restoring part of a snapshot: some tables into an empty database, some tables into a side
//! schema next to the live data (which stays untouched), rows only into existing tables; and
//! names that would break pasted SQL.

use crate::common::{DropRole, Ready, Scenario, TestDb, fake_pg_dump, forging_pg_dump_sections, psql};

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
    let output = std::process::Command::new(crate::common::pg_program("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url(), "-c", sql])
        .output()
        .expect("psql runs");
    !output.status.success()
}

/// `rows_chosen` of a restore's JSON report: (table, rows) each.
fn rows_chosen(report: &serde_json::Value) -> Vec<(String, u64)> {
    let tables = report["rows_chosen"].as_array().unwrap().iter();
    tables.map(|t| (t["table"].as_str().unwrap().to_string(), t["rows"].as_u64().unwrap())).collect()
}

fn exists(db: &TestDb, relation: &str) -> bool {
    db.sql(&format!("SELECT to_regclass('{}') IS NOT NULL", relation.replace('\'', "''"))).trim() == "t"
}

const WEIRD_SETUP: &str = r#"
DO $$ BEGIN CREATE ROLE part_side_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT USAGE ON SCHEMA crm TO part_side_reader;
GRANT SELECT ON crm.contacts TO part_side_reader;
CREATE SCHEMA app;
CREATE FUNCTION app.shown(c crm.contacts) RETURNS text LANGUAGE sql AS $$ SELECT c.email $$;
CREATE DOMAIN app.d AS text;
ALTER DOMAIN app.d ADD CONSTRAINT d_chk CHECK ((VALUE)::crm.companies IS NOT NULL) NOT VALID;
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

    // --dry-run: which tables it would load, their rows, and their names under --schema-map;
    // nothing is written, and a pattern matching nothing is refused as the restore refuses it.
    let chosen = ["--table", "crm.deals", "--table", "crm.companies", "--schema-map", "crm=crm_side"];
    let dry = work.restore_with(&repo, &nothing, &[&["--json", "--dry-run"][..], &chosen, &["latest"]].concat()).ok();
    let report = dry.json();
    assert_eq!(report["dry_run"], true, "{}", dry.stdout);
    let mut planned = rows_chosen(&report);
    planned.sort();
    let count = |table: &str| source.sql(&format!("SELECT count(*) FROM {table}")).trim().parse::<u64>().unwrap();
    assert_eq!(
        planned,
        vec![("crm.companies".to_string(), count("crm.companies")), ("crm.deals".to_string(), count("crm.deals"))]
    );
    let tables = report["rows_chosen"].as_array().unwrap();
    assert!(tables.iter().any(|t| t["restored_as"] == "crm_side.deals" && t["bytes"].as_u64() > Some(0)), "{report}");
    let text = work.restore_with(&repo, &nothing, &[&["--dry-run"][..], &chosen, &["latest"]].concat()).ok();
    assert!(text.stdout.contains("as crm_side.companies") && text.stdout.contains("would load"), "{}", text.stdout);
    assert!(text.stderr.contains("not restored: a foreign key of crm.deals to crm.contacts"), "{}", text.stderr);
    work.restore_with(&repo, &nothing, &["--dry-run", "--table", "crm.contact", "latest"])
        .fails_with(1, "no table of the snapshot matches crm.contact");
    assert!(nothing.is_empty());
}

#[test]
fn a_side_schema_holds_the_snapshots_rows_beside_the_untouched_live_ones() {
    // WEIRD_SETUP's role, server-wide: dropped after this test's databases.
    let _role = DropRole("part_side_reader".into());
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
    // The live objects of another schema that name the tables are left alone (were they made
    // again, the restore would fail on them; were the domain's check added again, a live
    // object would change).
    source.sql("DROP FUNCTION app.shown(crm.contacts); ALTER DOMAIN app.d DROP CONSTRAINT d_chk");
    let run = work
        .restore_with(
            &repo,
            &source,
            &["--table", "crm.contacts", "--table", "crm.companies", "--schema-map", &map, "latest"],
        )
        .ok();
    assert_eq!(source.sql("SELECT count(*) FROM pg_proc WHERE proname = 'shown'").trim(), "0", "{}", run.stderr);
    assert_eq!(source.sql("SELECT count(*) FROM pg_constraint WHERE conname = 'd_chk'").trim(), "0");
    assert!(run.stderr.contains("as a superuser"), "the superuser is warned: {}", run.stderr);
    // The side copy carries none of the snapshot's grants.
    let granted = format!("SELECT has_table_privilege('part_side_reader', '{side}.contacts', 'SELECT')");
    assert_eq!(source.sql(&granted).trim(), "f");
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

    // A trigger of the side copy writes where its own schema is: its function's body is
    // renamed too, so changing a side row logs into the side audit log, not the live one.
    let deals_side = "crm_deals_side";
    let tables = ["--table", "crm.deals", "--table", "crm.audit_log", "--schema-map", "crm=crm_deals_side", "latest"];
    work.restore_with(&repo, &source, &tables).ok();
    let logged = |table: &str| source.sql(&format!("SELECT count(*) FROM {table}")).trim().to_string();
    let (live_log, side_log) = (logged("crm.audit_log"), logged(&format!("{deals_side}.audit_log")));
    source.sql(&format!(
        "UPDATE {deals_side}.deals SET stage = CASE WHEN stage = 'lead' THEN 'qualified'::{deals_side}.deal_stage \
         ELSE 'lead'::{deals_side}.deal_stage END WHERE id = (SELECT min(id) FROM {deals_side}.deals WHERE closed_at IS NULL)"
    ));
    assert_eq!(logged("crm.audit_log"), live_log, "the live audit log is untouched");
    let side_after: u64 = logged(&format!("{deals_side}.audit_log")).parse().unwrap();
    assert_eq!(side_after, side_log.parse::<u64>().unwrap() + 1, "the side audit log has the change");

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

    // Linked tables at once load parents first: in name order, activities came before the
    // contacts and deals its rows reference, and the whole restore failed.
    target
        .sql("DELETE FROM crm.activities; DELETE FROM crm.deals; DELETE FROM crm.contacts; DELETE FROM crm.companies");
    let linked = ["crm.activities", "crm.companies", "crm.contacts", "crm.deals"];
    let mut args = vec!["--data-only"];
    for table in linked {
        args.extend(["--table", table]);
    }
    work.restore_with(&repo, &target, &[&args[..], &["latest"]].concat()).ok();
    for table in linked {
        assert_eq!(rows(&target, table, "id"), rows(&source, table, "id"), "{table}");
    }

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
    // A --schema-map that names no schema of the tables (a typo) would load into the live
    // tables: refused.
    target.sql("CREATE SCHEMA side; CREATE TABLE side.activities (LIKE crm.activities)");
    let live = rows(&target, "crm.activities", "id");
    let data_only = |map: &str| {
        work.restore_with(&repo, &target, &["--data-only", "--table", "crm.activities", "--schema-map", map, "latest"])
    };
    data_only("CRM=side").fails_with(1, "names schema CRM, which no table restored is in");
    data_only("crm=side").ok();
    assert_eq!(rows(&target, "crm.activities", "id"), live, "the live table is untouched");
    assert_eq!(rows(&target, "side.activities", "id"), rows(&source, "crm.activities", "id"));
    let empty = TestDb::create("part_data_empty");
    work.restore_with(&repo, &empty, &["--data-only", "latest"])
        .fails_with(1, "is empty: --data-only loads rows into existing tables");
    // Tables of two schemas, one not renamed, would load into its live table: refused, and a
    // dry run says so as the restore does.
    source.sql("CREATE SCHEMA other; CREATE TABLE other.t (id int PRIMARY KEY); INSERT INTO other.t VALUES (1)");
    work.backup(&source, &repo);
    target.sql("CREATE SCHEMA other; CREATE TABLE other.t (id int PRIMARY KEY)");
    let two = ["--data-only", "--table", "crm.activities", "--table", "other.t", "--schema-map", "crm=side", "latest"];
    for dry in [&["--dry-run"][..], &[]] {
        work.restore_with(&repo, &target, &[dry, &two[..]].concat())
            .fails_with(1, "other.t would load into the live table of that name");
    }
    assert_eq!(target.sql("SELECT count(*) FROM other.t").trim(), "0");
}

/// The rows linked to `crm.companies` id `company` by foreign keys, computed by the server
/// from the catalog: rows referencing chosen rows, recursively, then rows they reference,
/// recursively. Each table's ids, sorted.
fn closure_by_sql(db: &TestDb, company: i64) -> std::collections::BTreeMap<String, Vec<i64>> {
    use std::collections::{BTreeMap, BTreeSet};
    let keys: Vec<(String, String, String, String)> = db
        .sql(
            "SELECT conrelid::regclass::text, confrelid::regclass::text, \
               (SELECT string_agg(quote_ident(attname), ',' ORDER BY k.i) FROM unnest(conkey) WITH ORDINALITY k(n, i) \
                  JOIN pg_attribute ON attrelid = conrelid AND attnum = k.n), \
               (SELECT string_agg(quote_ident(attname), ',' ORDER BY k.i) FROM unnest(confkey) WITH ORDINALITY k(n, i) \
                  JOIN pg_attribute ON attrelid = confrelid AND attnum = k.n) \
             FROM pg_constraint WHERE contype = 'f' AND connamespace = 'crm'::regnamespace \
               AND conrelid <> 'crm.company_log'::regclass ORDER BY 1, 2",
        )
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            (f[0].into(), f[1].into(), f[2].into(), f[3].into())
        })
        .collect();
    let ids = |sql: String| -> BTreeSet<i64> {
        db.sql(&sql).lines().filter(|l| !l.is_empty()).map(|l| l.parse().unwrap()).collect()
    };
    let list = |set: &BTreeSet<i64>| set.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let mut chosen: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    chosen.insert("crm.companies".into(), BTreeSet::from([company]));
    let mut frontier = chosen.clone();
    while !frontier.is_empty() {
        let mut next: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        for (child, parent, columns, referenced) in &keys {
            let Some(parents) = frontier.get(parent) else { continue };
            let found = ids(format!(
                "SELECT id FROM {child} WHERE ({columns}) IN (SELECT {referenced} FROM {parent} WHERE id IN ({}))",
                list(parents)
            ));
            let known = chosen.entry(child.clone()).or_default();
            let new: BTreeSet<i64> = found.into_iter().filter(|id| known.insert(*id)).collect();
            if !new.is_empty() {
                next.entry(child.clone()).or_default().extend(new);
            }
        }
        frontier = next;
    }
    let mut frontier = chosen.clone();
    while !frontier.is_empty() {
        let mut next: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        for (child, parent, columns, referenced) in &keys {
            let Some(children) = frontier.get(child) else { continue };
            let found = ids(format!(
                "SELECT id FROM {parent} WHERE ({referenced}) IN (SELECT {columns} FROM {child} WHERE id IN ({}))",
                list(children)
            ));
            let known = chosen.entry(parent.clone()).or_default();
            let new: BTreeSet<i64> = found.into_iter().filter(|id| known.insert(*id)).collect();
            if !new.is_empty() {
                next.entry(parent.clone()).or_default().extend(new);
            }
        }
        frontier = next;
    }
    chosen.into_iter().filter(|(_, ids)| !ids.is_empty()).map(|(t, ids)| (t, ids.into_iter().collect())).collect()
}

#[test]
fn rows_with_related_restore_exactly_the_foreign_key_closure_into_a_side_schema_or_the_live_tables() {
    // A table without a key, with two equal rows: both belong to the company.
    let log = "CREATE TABLE crm.company_log (company_id int REFERENCES crm.companies, what text); \
               INSERT INTO crm.company_log VALUES (7, 'called'), (7, 'called'), (7, 'emailed'), (8, 'called')";
    let Ready { source, work, repo, .. } = Scenario::new("part_rows").crm().sql(log).init("repo").backup();
    let mut expected_counts: std::collections::BTreeMap<String, usize> =
        std::collections::BTreeMap::from([("crm.company_log".to_string(), 3)]);
    let expected = closure_by_sql(&source, 7);
    assert!(expected.len() >= 4 && expected["crm.deals"].len() > 1, "a closure worth testing: {expected:?}");

    // --dry-run: how many rows of which tables, nothing written.
    let dry = work
        .restore_with(
            &repo,
            &source,
            &["--json", "--rows", "crm.companies:id=7", "--with-related", "--dry-run", "latest"],
        )
        .ok()
        .json();
    assert_eq!(dry["dry_run"], true);
    let counts: std::collections::BTreeMap<String, usize> = dry["rows_chosen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["table"].as_str().unwrap().to_string(), usize::try_from(t["rows"].as_u64().unwrap()).unwrap()))
        .collect();
    expected_counts.extend(expected.iter().map(|(t, ids)| (t.clone(), ids.len())));
    assert_eq!(counts, expected_counts);
    assert!(!exists(&source, "side.companies"));

    // Into a side schema: exactly those rows, with their keys holding.
    work.restore_with(
        &repo,
        &source,
        &["--rows", "crm.companies:id=7", "--with-related", "--schema-map", "crm=side", "latest"],
    )
    .ok();
    for (table, ids) in &expected {
        let side = table.replacen("crm.", "side.", 1);
        let restored: Vec<i64> =
            source.sql(&format!("SELECT id FROM {side} ORDER BY id")).lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(&restored, ids, "{table}");
        assert_eq!(
            rows(&source, &format!("(SELECT * FROM {side}) "), "id"),
            rows(&source, &format!("(SELECT * FROM {table} WHERE id IN (SELECT id FROM {side}))"), "id")
        );
    }
    let side_keys =
        source.sql("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'side'::regnamespace");
    assert!(side_keys.trim().parse::<u32>().unwrap() >= 4, "the side tables' foreign keys hold: {side_keys}");

    // Shared rows the record only references are never updated: an owner renamed since keeps
    // the live name.
    let owner = source.sql("SELECT owner_id FROM crm.deals WHERE company_id = 7 LIMIT 1").trim().to_string();
    source.sql(&format!("UPDATE crm.users SET full_name = 'Renamed Since' WHERE id = {owner}"));
    // The incident: the company was deleted with its deals and their activities.
    let deals_before = rows(&source, "(SELECT * FROM crm.deals WHERE company_id = 7)", "id");
    let contacts_before = source
        .sql("SELECT md5(string_agg(id || ':' || coalesce(company_id::text, '-'), ',' ORDER BY id)) FROM crm.contacts");
    source.sql(
        "DELETE FROM crm.activities WHERE deal_id IN (SELECT id FROM crm.deals WHERE company_id = 7); \
         DELETE FROM crm.deals WHERE company_id = 7; DELETE FROM crm.company_log WHERE company_id = 7; \
         DELETE FROM crm.companies WHERE id = 7",
    );
    assert_ne!(source.sql("SELECT count(*) FROM crm.contacts WHERE company_id IS NULL").trim(), "0");
    // By default a row already there fails the restore, and nothing is written.
    work.restore_with(&repo, &source, &["--rows", "crm.companies:id=7", "--with-related", "latest"])
        .fails_with(1, "duplicate key");
    assert_eq!(source.sql("SELECT count(*) FROM crm.companies WHERE id = 7").trim(), "0");
    // update: the missing rows come back, the contacts get their company again.
    let update = ["--json", "--rows", "crm.companies:id=7", "--with-related", "--on-conflict", "update", "latest"];
    let run = work.restore_with(&repo, &source, &update).ok().json();
    let companies =
        run["rows_chosen"].as_array().unwrap().iter().find(|t| t["table"] == "crm.companies").unwrap().clone();
    assert_eq!(companies["inserted"], 1, "{run}");
    assert!(run["bytes"].as_u64() > Some(0), "the rows' bytes are counted: {run}");
    // Only the rows whose values differ count as updated (the contacts that lost their
    // company); the rest are left as they are, and a second run updates nothing.
    let of = |run: &serde_json::Value, table: &str, what: &str| {
        run["rows_chosen"].as_array().unwrap().iter().find(|t| t["table"] == table).unwrap()[what].as_u64().unwrap()
    };
    let regained: u64 = source.sql("SELECT count(*) FROM crm.contacts WHERE company_id = 7").trim().parse().unwrap();
    assert!(regained > 0);
    assert_eq!(of(&run, "crm.contacts", "updated"), regained, "{run}");
    let again = work.restore_with(&repo, &source, &update).ok().json();
    // (The contacts' update trigger stamps them, so they differ again; company_log has no key,
    // so its rows are inserted again: both as documented.)
    for table in ["crm.companies", "crm.deals", "crm.activities"] {
        assert_eq!((of(&again, table, "updated"), of(&again, table, "inserted")), (0, 0), "{table}: {again}");
        assert_eq!(of(&again, table, "skipped"), of(&again, table, "rows"), "{table}: {again}");
    }
    assert_eq!(rows(&source, "(SELECT * FROM crm.deals WHERE company_id = 7)", "id"), deals_before);
    assert_eq!(source.sql(&format!("SELECT full_name FROM crm.users WHERE id = {owner}")).trim(), "Renamed Since");
    let contacts_after = source
        .sql("SELECT md5(string_agg(id || ':' || coalesce(company_id::text, '-'), ',' ORDER BY id)) FROM crm.contacts");
    assert_eq!(contacts_after, contacts_before);

    // A deal deleted with its activities comes back under the default `fail`: the company,
    // contact and owner it references are still there, which is no conflict (shared rows are
    // inserted when missing, otherwise left as they are).
    let deal = source.sql("SELECT min(id) FROM crm.deals WHERE company_id <> 7").trim().to_string();
    let of_deal = format!("(SELECT * FROM crm.activities WHERE deal_id = {deal})");
    let (deal_before, activities_before) = (rows(&source, "crm.deals", "id"), rows(&source, &of_deal, "id"));
    source.sql(&format!("DELETE FROM crm.activities WHERE deal_id = {deal}; DELETE FROM crm.deals WHERE id = {deal}"));
    work.restore_with(&repo, &source, &["--rows", &format!("crm.deals:id={deal}"), "--with-related", "latest"]).ok();
    assert_eq!(rows(&source, "crm.deals", "id"), deal_before);
    assert_eq!(rows(&source, &of_deal, "id"), activities_before);
    assert_eq!(source.sql(&format!("SELECT full_name FROM crm.users WHERE id = {owner}")).trim(), "Renamed Since");

    // A live table that lost a column the snapshot has is named, and nothing is written.
    source
        .sql("ALTER TABLE crm.company_log DROP COLUMN what; DELETE FROM crm.activities WHERE deal_id IN (SELECT id FROM crm.deals WHERE company_id = 7)");
    let activities = "(SELECT a.* FROM crm.activities a JOIN crm.deals d ON d.id = a.deal_id WHERE d.company_id = 7)";
    work.restore_with(
        &repo,
        &source,
        &["--rows", "crm.companies:id=7", "--with-related", "--on-conflict", "skip", "latest"],
    )
    .fails_with(1, "(left unchanged; restore beside them with --schema-map)");
    assert_eq!(rows(&source, activities, "id"), "0:", "the deleted activities stay deleted");

    // A row the snapshot does not have is said.
    work.restore_with(&repo, &source, &["--rows", "crm.companies:id=999", "--dry-run", "latest"])
        .fails_with(1, "the snapshot has no row crm.companies:id=999");
}

#[test]
fn a_restore_refreshes_each_materialized_view_once() {
    let setup = "CREATE TABLE public.refreshes (at serial PRIMARY KEY); \
         CREATE FUNCTION public.counted() RETURNS int LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.refreshes DEFAULT VALUES; RETURN 1; END $$; \
         CREATE MATERIALIZED VIEW public.counted_view AS SELECT public.counted() AS one; \
         TRUNCATE public.refreshes";
    let Ready { work, repo, .. } = Scenario::new("part_refresh").sql(setup).init("repo").backup();
    for options in [&["--trust-snapshot-code", "latest"][..], &["--trust-snapshot-code", "--parallel", "latest"]] {
        let target = TestDb::create("part_refresh_target");
        work.restore_with(&repo, &target, options).ok();
        assert_eq!(target.sql("SELECT count(*) FROM public.refreshes").trim(), "1", "{options:?}");
        assert_eq!(target.sql("SELECT one FROM public.counted_view").trim(), "1");
    }
}

#[test]
fn rows_of_a_partitioned_table_are_found_through_it_and_go_back_through_it() {
    let setup = "CREATE TABLE public.owners (id int PRIMARY KEY); \
         CREATE TABLE public.events (id int, d date, owner_id int REFERENCES public.owners, PRIMARY KEY (id, d)) \
           PARTITION BY RANGE (d); \
         CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
         INSERT INTO public.owners VALUES (1), (2); \
         INSERT INTO public.events VALUES (1, '2025-03-01', 1), (2, '2025-04-01', 2)";
    let Ready { source, work, repo, .. } = Scenario::new("part_events").sql(setup).init("repo").backup();
    // The partitioned table names its partitions' rows.
    let dry = work
        .restore_with(
            &repo,
            &source,
            &["--json", "--rows", "public.events:id=1", "--with-related", "--dry-run", "latest"],
        )
        .ok()
        .json();
    let chosen = rows_chosen(&dry);
    assert_eq!(chosen, [("public.events_2025".to_string(), 1), ("public.owners".to_string(), 1)]);
    // `dump` of the partitioned table names the partitions that hold its rows.
    let key = work.admin_key();
    work.run(&["dump", "--repo", &repo, "--identity", &key, "--table", "public.events", "latest"])
        .fails_with(1, "public.events is a partitioned table: its rows are in its partitions public.events_2025;");
    // Deleted live: it goes back into its partition.
    source.sql("DELETE FROM public.events WHERE owner_id = 1");
    let args = ["--rows", "public.owners:id=1", "--with-related", "--on-conflict", "skip", "latest"];
    let run = work.restore_with(&repo, &source, &args).ok();
    assert!(!run.stderr.contains("--rows: the snapshot says"), "{}", run.stderr);
    assert_eq!(source.sql("SELECT count(*) FROM public.events_2025 WHERE id = 1").trim(), "1");
    // Live, the partition was detached since (and another took its place): the link is the
    // snapshot's word alone, which could as well name a live table not asked for. The key on
    // events no longer reaches it, and the warning says why; named, its row goes back into it.
    source.sql(
        "DELETE FROM public.events WHERE owner_id = 1; ALTER TABLE public.events DETACH PARTITION public.events_2025; \
         CREATE TABLE public.events_new PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    );
    let run = work.restore_with(&repo, &source, &args).ok();
    assert!(
        run.stderr.contains("the snapshot says public.events_2025 is a partition of public.events, but in"),
        "{}",
        run.stderr
    );
    assert_eq!(source.sql("SELECT count(*) FROM public.events_2025 WHERE id = 1").trim(), "0");
    work.restore_with(&repo, &source, &["--rows", "public.events_2025:id=1", "latest"]).ok();
    assert_eq!(source.sql("SELECT count(*) FROM public.events_2025 WHERE id = 1").trim(), "1");
    assert_eq!(source.sql("SELECT count(*) FROM public.events_new").trim(), "0");
}

/// A side-schema restore changes nothing outside the schemas it makes. The snapshot's own code
/// runs while it loads: here check constraints call functions (whoever could create functions
/// in the source wrote them, and `--schema-map` does not rename names built at run time) that
/// write a live table, and alter one. Either way the whole restore is rolled back, and says why.
#[test]
fn a_side_schema_restore_that_reaches_outside_its_schemas_is_rolled_back() {
    let setup = r"
CREATE SCHEMA crm;
CREATE TABLE crm.log (id serial PRIMARY KEY, note text);
CREATE FUNCTION crm.noted(id int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'INSERT INTO crm.log (note) VALUES (''a restore ran me'')'; RETURN true; END $$;
CREATE FUNCTION crm.altered(id int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'ALTER TABLE crm.log ADD COLUMN IF NOT EXISTS altered int'; RETURN true; END $$;
CREATE TABLE crm.contacts (id int PRIMARY KEY CHECK (crm.noted(id)), name text);
CREATE TABLE crm.deals (id int PRIMARY KEY CHECK (crm.altered(id)), name text);
CREATE FUNCTION crm.later(id int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  CREATE TEMP TABLE IF NOT EXISTS queue (x int);
  CREATE OR REPLACE FUNCTION pg_temp.fire() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN EXECUTE 'INSERT INTO crm.log (note) VALUES (''at commit'')'; RETURN NULL; END $f$;
  DROP TRIGGER IF EXISTS fire ON pg_temp.queue;
  CREATE CONSTRAINT TRIGGER fire AFTER INSERT ON pg_temp.queue DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pg_temp.fire();
  INSERT INTO pg_temp.queue VALUES (1);
  RETURN true;
END $$;
CREATE TABLE crm.tasks (id int PRIMARY KEY CHECK (crm.later(id)), name text);
CREATE FUNCTION crm.dropping(id int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'DROP TABLE IF EXISTS crm.victim'; RETURN true; END $$;
CREATE TABLE crm.gone (id int PRIMARY KEY CHECK (crm.dropping(id)));
INSERT INTO crm.gone VALUES (1);
CREATE TABLE crm.victim (id int PRIMARY KEY);
INSERT INTO crm.victim VALUES (1), (2);
CREATE TABLE crm.plain (id int PRIMARY KEY, name text);
CREATE FUNCTION crm.unseen(id int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.set_config('track_counts', 'off', false);
  EXECUTE 'INSERT INTO crm.log (note) VALUES (''unseen'')'; RETURN true; END $$;
CREATE TABLE crm.blind (id int PRIMARY KEY CHECK (crm.unseen(id)));
INSERT INTO crm.blind VALUES (1);
CREATE FUNCTION crm.giveaway(id int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN ALTER SCHEMA crm OWNER TO part_reach_owner; RETURN true; END $$;
CREATE TABLE crm.given (id int PRIMARY KEY CHECK (crm.giveaway(id)));
INSERT INTO crm.given VALUES (1);
ALTER SCHEMA crm OWNER TO postgres;
CREATE FUNCTION crm.dict(id int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN EXECUTE pg_catalog.format('CREATE TEXT SEARCH DICTIONARY public.d%s (TEMPLATE = pg_catalog.simple)',
  pg_catalog.txid_current()); RETURN true; END $$;
CREATE TABLE crm.dicts (id int PRIMARY KEY CHECK (crm.dict(id)));
INSERT INTO crm.dicts VALUES (1);
DELETE FROM crm.log;
INSERT INTO crm.contacts VALUES (1, 'a'), (2, 'b');
INSERT INTO crm.deals VALUES (1, 'x');
INSERT INTO crm.plain VALUES (1, 'p');
INSERT INTO crm.tasks VALUES (1, 't');
ALTER TABLE crm.log DROP COLUMN altered;
";
    let _role = DropRole("part_reach_owner".into());
    psql("postgres", "DROP ROLE IF EXISTS part_reach_owner; CREATE ROLE part_reach_owner NOLOGIN");
    let Ready { source, work, repo, .. } = Scenario::new("part_reach").sql(setup).init("repo").backup();
    let log = || rows(&source, "crm.log", "id");
    let before = log();
    let columns =
        || source.sql("SELECT count(*) FROM pg_attribute WHERE attrelid = 'crm.log'::regclass AND attnum > 0");
    let columns_before = columns();

    // As a superuser the snapshot's own functions would run with every right: refused first.
    let run = work.restore_with(&repo, &source, &["--table", "crm.contacts", "--schema-map", "crm=crm_side", "latest"]);
    run.fails_with(
        1,
        "the snapshot's own code could run while this restore loads beside live data, with a superuser's rights: \
         crm.altered, crm.dict, crm.dropping, crm.giveaway, crm.later, crm.noted, crm.unseen (the routines",
    );
    assert_eq!(log(), before);
    assert!(!exists(&source, "crm_side.contacts"));

    // Trusted, they run, and the check before commit stands in the way of what they do.
    let trusted = |table: &str| {
        work.restore_with(
            &repo,
            &source,
            &["--trust-snapshot-code", "--table", table, "--schema-map", "crm=crm_side", "latest"],
        )
    };
    let run = trusted("crm.contacts");
    let said = run.fails_with(1, "the restore changed what lies outside the schemas it makes: rows of \"crm\".\"log\"");
    assert!(said.stderr.contains("rolled back"), "{}", said.stderr);
    assert!(!said.stderr.contains("objects outside them"), "its own objects are not counted: {}", said.stderr);
    assert_eq!(log(), before, "the live table's rows are as they were");
    assert!(!exists(&source, "crm_side.contacts"), "nothing of the restore stays");

    let run = trusted("crm.deals");
    run.fails_with(1, "objects outside them: table column crm.log.altered");
    assert_eq!(columns(), columns_before, "the live table is not altered");
    assert!(!exists(&source, "crm_side.deals"));

    // What the snapshot's code left to run at commit runs before the check.
    let run = trusted("crm.tasks");
    run.fails_with(1, "rows of \"crm\".\"log\"");
    assert_eq!(log(), before);
    assert!(!exists(&source, "crm_side.tasks"));

    // What is dropped leaves no row to see: the relations there before are counted again.
    let run = trusted("crm.gone");
    run.fails_with(1, "dropped: relation crm.victim");
    assert!(exists(&source, "crm.victim"), "the live table is still there");
    assert_eq!(source.sql("SELECT count(*) FROM crm.victim").trim(), "2");

    // Row counting turned off first, so that the rows it writes are not counted: the session
    // is not what the checks rely on.
    let run = trusted("crm.blind");
    run.fails_with(
        1,
        "changed its own session (role postgres, track_counts on became role postgres, track_counts off)",
    );
    assert_eq!(log(), before);
    assert!(!exists(&source, "crm_side.blind"));

    // Its side schema given to another role while rows load: that role could change what the
    // admin compares with.
    let run = trusted("crm.given");
    run.fails_with(1, "owners other than you in them: schema crm_side");
    assert!(!exists(&source, "crm_side.given"));

    // Objects of the catalogs less often thought of: a text search dictionary.
    let run = trusted("crm.dicts");
    run.fails_with(1, "objects outside them: text search dictionary public.d");

    // A restore that keeps to its schema goes through.
    trusted("crm.plain").ok();
    assert_eq!(rows(&source, "crm_side.plain", "id"), rows(&source, "crm.plain", "id"));
    assert_eq!(log(), before);
}

#[test]
fn rows_of_a_table_include_those_of_the_tables_that_inherit_from_it() {
    let setup = "CREATE TABLE public.notes (id int PRIMARY KEY, body text); \
         CREATE TABLE public.call_notes (minutes int) INHERITS (public.notes); \
         CREATE SCHEMA other; CREATE TABLE other.mail_notes () INHERITS (public.notes); \
         ALTER TABLE public.call_notes ADD PRIMARY KEY (id); \
         CREATE TABLE public.attachments (id int PRIMARY KEY, call_id int REFERENCES public.call_notes); \
         INSERT INTO public.notes VALUES (1, 'a'), (2, 'b'); \
         INSERT INTO public.call_notes VALUES (3, 'c', 5), (4, 'd', 6); \
         INSERT INTO public.attachments VALUES (10, 3), (11, 4)";
    let Ready { source, work, repo, .. } = Scenario::new("part_heirs").sql(setup).init("repo").backup();
    // `SELECT … FROM public.notes WHERE id = 3` finds the call note: so does --rows.
    let dry = work
        .restore_with(
            &repo,
            &source,
            &["--json", "--rows", "public.notes:id=3", "--with-related", "--dry-run", "latest"],
        )
        .ok()
        .json();
    let chosen = rows_chosen(&dry);
    assert_eq!(chosen, [("public.attachments".to_string(), 1), ("public.call_notes".to_string(), 1)]);
    // Deleted live, it comes back with what references it, into the table it was in.
    source.sql("DELETE FROM public.attachments WHERE id = 10; DELETE FROM public.notes WHERE id IN (1, 3)");
    work.restore_with(&repo, &source, &["--rows", "public.notes:id=3", "--with-related", "latest"]).ok();
    assert_eq!(source.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM ONLY public.call_notes").trim(), "3,4");
    assert_eq!(source.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM ONLY public.notes").trim(), "2");
    assert_eq!(source.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM public.attachments").trim(), "10,11");

    // The snapshot's word alone does not make a live table an heir: one that does not inherit
    // from the table named in the live database is not looked through, and said.
    source.sql(
        "ALTER TABLE public.call_notes NO INHERIT public.notes; \
         DELETE FROM public.attachments WHERE id = 10; DELETE FROM public.call_notes WHERE id = 3",
    );
    for dry_run in [true, false] {
        let mut args = vec!["--rows", "public.notes:id=3", "--with-related", "--on-conflict", "update", "latest"];
        if dry_run {
            args.push("--dry-run");
        }
        let run = work.restore_with(&repo, &source, &args).fails_with(1, "the snapshot has no row public.notes:id=3");
        assert!(
            run.stderr.contains("the snapshot says public.call_notes inherits from public.notes, but in"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(source.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM ONLY public.call_notes").trim(), "4");
    assert_eq!(source.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM public.attachments").trim(), "11");
    // Beside the live tables, in a schema of its own, the snapshot's heirs are what it makes.
    let side = ["--json", "--rows", "public.notes:id=3", "--schema-map", "public=public_side", "--dry-run", "latest"];
    let dry = work.restore_with(&repo, &source, &side).ok();
    assert!(dry.json()["rows_chosen"].to_string().contains("public.call_notes"), "{}", dry.stdout);
    // One in a schema left live would be written beside the live data: not followed, and said.
    assert!(
        dry.stderr.contains("other.mail_notes inherits from public.notes, but other.mail_notes is in a schema"),
        "{}",
        dry.stderr
    );
    assert!(!dry.stderr.contains("call_notes inherits from"), "{}", dry.stderr);
    // Named, it is restored.
    work.restore_with(&repo, &source, &["--rows", "public.call_notes:id=3", "--with-related", "latest"]).ok();
    assert_eq!(source.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM public.attachments").trim(), "10,11");
}

#[test]
fn a_partition_link_the_snapshot_alone_declares_does_not_send_rows_into_another_live_table() {
    let setup = "CREATE TABLE public.notes (id int PRIMARY KEY, body text); \
         CREATE TABLE public.victim (id int PRIMARY KEY, body text); \
         INSERT INTO public.notes VALUES (3, 'the note'); INSERT INTO public.victim VALUES (3, 'live victim row')";
    let Ready { source, work, repo, .. } = Scenario::new("part_forged").sql(setup).init("repo");
    // A compromised backup host's pg_dump: its script makes notes a partition of victim.
    let fake = forging_pg_dump(
        &work,
        "TABLE ATTACH",
        "ALTER TABLE ONLY public.victim ATTACH PARTITION public.notes FOR VALUES IN (3);",
    );
    let fake = fake.as_str();
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", fake]).ok();
    source.sql("UPDATE public.notes SET body = 'changed since'");
    let args = ["--json", "--rows", "public.notes:id=3", "--on-conflict", "update", "latest"];
    let run = work.restore_with(&repo, &source, &args).ok();
    assert!(
        run.stderr.contains("the snapshot says public.notes is a partition of public.victim, but in"),
        "{}",
        run.stderr
    );
    assert_eq!(source.sql("SELECT body FROM public.victim WHERE id = 3").trim(), "live victim row");
    assert_eq!(source.sql("SELECT body FROM public.notes WHERE id = 3").trim(), "the note");
    // Naming the parent does not reach the table the snapshot alone makes its partition.
    let run = work.restore_with(&repo, &source, &["--json", "--rows", "public.victim:id=3", "--dry-run", "latest"]);
    let chosen = run.ok().json()["rows_chosen"].clone();
    assert_eq!(chosen.as_array().unwrap().len(), 1, "{chosen}");
    assert_eq!(chosen[0]["table"], "public.victim", "{chosen}");
}

/// A compromised backup host's pg_dump, in `work`: it adds `statements` (one a line) to the
/// schema's pre-data section, each an entry of its own as pg_dump writes them.
fn forging_pg_dump(work: &crate::common::Workspace, kind: &str, statements: &str) -> String {
    forging_pg_dump_sections(work, kind, &statements.lines().collect::<Vec<_>>(), &[])
}

#[test]
fn a_forged_schema_script_runs_no_statement_on_live_objects_by_misleading_the_lexer() {
    let setup = "CREATE SCHEMA crm; CREATE TABLE crm.contacts (id int PRIMARY KEY, name text); \
         INSERT INTO crm.contacts VALUES (1, 'a'), (2, 'b'); \
         CREATE FUNCTION public.livefn() RETURNS int LANGUAGE sql AS 'SELECT 1'";
    let Ready { source, work, repo, .. } = Scenario::new("part_lexer").sql(setup).init("repo");
    let fake = forging_pg_dump_sections(
        &work,
        "COMMENT",
        &[
            // `BEGIN ATOMIC` outside a routine's definition opens no body: the DROP is a
            // statement of its own.
            "WITH w AS (SELECT id AS begin FROM crm.contacts) SELECT w.begin atomic FROM w; \
             DROP FUNCTION public.livefn(); SELECT CASE WHEN true THEN 1 END;",
            // Quoting rules turned off for what follows: the server reads the post-data
            // (sent after, and read whole before its own settings run) with `\'` a quote.
            "COMMENT ON TABLE crm.contacts IS 'c';\nSET standard_conforming_strings = off;",
        ],
        &["COMMENT ON TABLE crm.contacts IS 'a\\' ' ; DROP FUNCTION public.livefn(); -- ';"],
    );
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    let run = work.restore_with(&repo, &source, &["--table", "crm.contacts", "--schema-map", "crm=crm_side", "latest"]);
    let live = source.sql("SELECT count(*) FROM pg_proc WHERE proname = 'livefn'");
    assert_eq!(live.trim(), "1", "the live function is there: {}", run.stderr);
    // What is left of the forged script fails as SQL, and nothing of the restore stays.
    run.fails_with(1, "syntax error");
    assert!(!exists(&source, "crm_side.contacts"));
}

#[test]
fn a_forged_schema_script_drops_changes_grants_nothing_live_beside_live_data() {
    let _role = DropRole("part_forged_victim".into());
    let setup = "CREATE SCHEMA crm; CREATE TABLE crm.contacts (id int PRIMARY KEY, name text); \
         INSERT INTO crm.contacts VALUES (1, 'a'), (2, 'b'); \
         CREATE FUNCTION public.livefn() RETURNS int LANGUAGE sql AS 'SELECT 1'; \
         CREATE TABLE public.livetab (x int); INSERT INTO public.livetab VALUES (1); \
         CREATE SEQUENCE public.invoice_no START 500; SELECT nextval('public.invoice_no'); \
         DROP ROLE IF EXISTS part_forged_victim; CREATE ROLE part_forged_victim NOLOGIN";
    let Ready { source, work, repo, .. } = Scenario::new("part_forged_live").sql(setup).init("repo");
    // What an attack run found passing when a statement's first qualified name decided.
    let fake = forging_pg_dump_sections(
        &work,
        "COMMENT",
        &[
            "CREATE FUNCTION crm.f() RETURNS int LANGUAGE plpgsql AS $$BEGIN ALTER ROLE part_forged_victim \
             SUPERUSER; RETURN 1; END$$;",
            "CREATE FUNCTION crm.backdoor(q text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS \
             $$BEGIN EXECUTE q; END$$;",
            "GRANT USAGE ON SCHEMA crm TO PUBLIC;",
        ],
        &[
            "DROP FUNCTION IF EXISTS crm.nothing(), public.livefn();",
            "WITH a AS (SELECT FROM crm.contacts) SELECT pg_catalog.set_config('track_counts', 'off', false);",
            "WITH a AS (SELECT FROM crm.contacts) UPDATE public.livetab SET x = 99;",
            "WITH a AS (SELECT FROM crm.contacts) SELECT pg_catalog.setval('public.invoice_no', 1, false);",
            "SELECT crm.f();",
            "COPY (SELECT 1 FROM crm.contacts) TO PROGRAM 'true';",
            // The script's last statement, left without its `;` (which an owner's removal
            // looked for).
            "ALTER SCHEMA crm OWNER TO part_forged_victim",
        ],
    );
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    // As a superuser its functions would run with every right: refused, unless trusted.
    let args = ["--table", "crm.contacts", "--schema-map", "crm=crm_side", "latest"];
    work.restore_with(&repo, &source, &args).fails_with(1, "rights: crm.backdoor, crm.f (the routines");
    assert!(!exists(&source, "crm_side.contacts"));
    work.restore_with(&repo, &source, &[&["--trust-snapshot-code"][..], &args[..]].concat()).ok();
    assert_eq!(rows(&source, "crm_side.contacts", "id"), rows(&source, "crm.contacts", "id"));
    let live = source.sql(
        "SELECT (SELECT count(*) FROM pg_proc WHERE proname = 'livefn'), (SELECT x FROM public.livetab), \
         (SELECT last_value FROM public.invoice_no), \
         (SELECT rolsuper FROM pg_roles WHERE rolname = 'part_forged_victim')",
    );
    assert_eq!(live.trim(), "1|1|500|f");
    let owner = source.sql("SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'crm_side'");
    assert_eq!(owner.trim(), "postgres", "the side schema is the restoring role's");
    // The side schema's routines are the restoring role's alone, a SECURITY DEFINER one too.
    let public = source.sql(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'crm_side' AND (p.proacl IS NULL OR EXISTS \
           (SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0)) \
         UNION ALL SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a \
         WHERE n.nspname = 'crm_side' AND a.grantee = 0",
    );
    assert_eq!(public.split_whitespace().collect::<Vec<_>>(), ["0", "0"], "PUBLIC's rights on crm_side");
    assert_eq!(source.sql("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'crm_side'").trim(), "2");
}

#[test]
fn a_column_the_schema_adds_and_the_rows_do_not_give_is_refused_beside_live_data() {
    let setup = "CREATE SCHEMA crm; CREATE TABLE crm.contacts (id int PRIMARY KEY, name text); \
         INSERT INTO crm.contacts VALUES (1, 'a'), (2, 'b')";
    let Ready { source, work, repo, .. } = Scenario::new("part_column").sql(setup).init("repo");
    // COPY would leave the column to its default, for every row: code of the script's choosing.
    // The table made with a column its rows do not give:
    let fake = fake_pg_dump(
        &work,
        "pg_dump_extra_column",
        "pg_dump \"$@\" | sed 's/^    name text$/    name text,\\n    extra integer DEFAULT 7/'\nexit ${PIPESTATUS[0]}\n",
    );
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    let side = ["--table", "crm.contacts", "--schema-map", "crm=crm_side", "latest"];
    let run = work.restore_with(&repo, &source, &side);
    run.fails_with(1, "the snapshot's rows of crm_side.contacts do not give column extra that its schema makes");
    assert!(!exists(&source, "crm_side.contacts"));
    // A column added after the table (a default computed as the statement runs) is left out,
    // as every statement that is not an object's definition is beside live data.
    let fake = forging_pg_dump_sections(
        &work,
        "TABLE",
        &["ALTER TABLE crm.contacts ADD COLUMN extra integer DEFAULT 7;"],
        &[],
    );
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    work.restore_with(&repo, &source, &side).ok();
    assert_eq!(source.sql("SELECT count(*) FROM crm_side.contacts").trim(), "2");
    let columns =
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'crm_side' AND column_name = 'extra'";
    assert_eq!(source.sql(columns).trim(), "0");
}

/// The second line of defence, should the lexer and the server ever read a script apart
/// again: a script sent a statement at a time runs no statement the lexer did not cut.
#[tokio::test(flavor = "multi_thread")]
async fn a_script_sent_a_statement_at_a_time_runs_no_statement_its_lexer_did_not_see() {
    use crmvault::postgres::{Database, LoadSession, ToastCompression};

    let db = TestDb::create("part_alone");
    db.sql("CREATE FUNCTION public.livefn() RETURNS int LANGUAGE sql AS 'SELECT 1'");
    let database = Database::parse(&db.url()).unwrap();
    let session = LoadSession::open(&database, ToastCompression::ServerDefault, "64MB", None, None).await.unwrap();
    // Here the lexer and the server disagree: the lexer assumes standard strings.
    session.run_script("SET standard_conforming_strings = off").await.unwrap();
    let hidden = "COMMENT ON FUNCTION public.livefn() IS 'a\\' ' ; DROP FUNCTION public.livefn(); -- '";
    let error = session.run_script(hidden).await.unwrap_err();
    assert!(error.to_string().contains("cannot insert multiple commands"), "{error}");
    assert_eq!(db.sql("SELECT count(*) FROM pg_proc WHERE proname = 'livefn'").trim(), "1");
    // What the lexer cuts runs, each statement in turn.
    session
        .run_script("SET standard_conforming_strings = on; COMMENT ON FUNCTION public.livefn() IS 'x';")
        .await
        .unwrap();
    assert_eq!(db.sql("SELECT obj_description('public.livefn'::regproc)").trim(), "x");
}

#[test]
fn forged_partition_links_and_keys_do_not_reach_or_overwrite_other_live_tables() {
    // Live: victim a partition of p (k = 1); notesp a table of its own at the backup, holding a
    // row whose partition key says p's other partition.
    let setup = "CREATE TABLE public.p (id int, k int, body text, PRIMARY KEY (id, k)) PARTITION BY LIST (k); \
         CREATE TABLE public.victim PARTITION OF public.p FOR VALUES IN (1); \
         CREATE TABLE public.notesp (id int, k int, body text, PRIMARY KEY (id, k)); \
         CREATE TABLE public.notes (id int PRIMARY KEY, body text); CREATE TABLE public.nowhere (id int); \
         INSERT INTO public.p VALUES (3, 1, 'live victim row'); INSERT INTO public.notesp VALUES (3, 1, 'FORGED'); \
         INSERT INTO public.notes VALUES (3, 'the note')";
    let Ready { source, work, repo, .. } = Scenario::new("part_forged_keys").sql(setup).init("repo");
    // The script says notesp is p's partition for k = 2, and attaches victim to notes too,
    // then to p again (the link a check of each table's last parent would see).
    let fake = forging_pg_dump(
        &work,
        "TABLE ATTACH",
        "ALTER TABLE ONLY public.p ATTACH PARTITION public.notesp FOR VALUES IN (2);\n\
         ALTER TABLE ONLY public.notes ATTACH PARTITION public.victim FOR VALUES IN (3);\n\
         ALTER TABLE ONLY public.p ATTACH PARTITION public.victim FOR VALUES IN (1);",
    );
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    // Live, notesp is p's partition for k = 2 by now: the link is confirmed, but the row's key
    // is the snapshot's word.
    source.sql(
        "DELETE FROM public.notesp; ALTER TABLE public.p ATTACH PARTITION public.notesp FOR VALUES IN (2); \
         UPDATE public.notes SET body = 'changed since'; UPDATE public.victim SET body = 'live, changed since'",
    );
    let run = work.restore_with(&repo, &source, &["--rows", "public.notesp:id=3", "--on-conflict", "update", "latest"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("partition"), "{}", run.stderr);
    assert_eq!(source.sql("SELECT body FROM public.victim WHERE id = 3").trim(), "live, changed since");
    assert_eq!(source.sql("SELECT count(*) FROM public.notesp").trim(), "0");
    // victim attached twice in the script: neither link is followed from notes.
    let args = ["--json", "--rows", "public.notes:id=3", "--on-conflict", "update", "latest"];
    let run = work.restore_with(&repo, &source, &args).ok();
    let chosen = run.json()["rows_chosen"].clone();
    assert_eq!(chosen.as_array().unwrap().len(), 1, "{chosen}");
    assert_eq!(chosen[0]["table"], "public.notes", "{chosen}");
    assert!(
        run.stderr.contains("the snapshot says public.victim is a partition of public.notes"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(source.sql("SELECT body FROM public.victim WHERE id = 3").trim(), "live, changed since");
    assert_eq!(source.sql("SELECT body FROM public.notes WHERE id = 3").trim(), "the note");
}

#[test]
fn a_foreign_key_the_snapshot_alone_declares_is_not_followed_into_a_live_table() {
    let setup = "CREATE TABLE public.notes (id int PRIMARY KEY, body text); \
         CREATE TABLE public.victim (id int PRIMARY KEY, note_id int, body text); \
         CREATE TABLE public.replies (id int PRIMARY KEY, note_id int REFERENCES public.notes, body text); \
         INSERT INTO public.notes VALUES (3, 'the note'); INSERT INTO public.victim VALUES (5, 3, 'snapshot row'); \
         INSERT INTO public.replies VALUES (7, 3, 'a reply')";
    let Ready { source, work, repo, .. } = Scenario::new("part_forged_fk").sql(setup).init("repo");
    // The script says victim.note_id references notes: --with-related from a note would then
    // take victim's rows for the note's own.
    let fake = forging_pg_dump(
        &work,
        "FK CONSTRAINT",
        "ALTER TABLE ONLY public.victim ADD CONSTRAINT forged FOREIGN KEY (note_id) REFERENCES public.notes(id);",
    );
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    source.sql(
        "UPDATE public.victim SET body = 'live, changed since'; UPDATE public.notes SET body = 'changed since'; \
         UPDATE public.replies SET body = 'changed since'",
    );
    let args = ["--json", "--rows", "public.notes:id=3", "--with-related", "--on-conflict", "update", "latest"];
    let run = work.restore_with(&repo, &source, &args).ok();
    assert!(
        run.stderr.contains("the snapshot's foreign key from public.victim (note_id) to public.notes (id) is not one"),
        "{}",
        run.stderr
    );
    let chosen = run.json()["rows_chosen"].to_string();
    assert!(!chosen.contains("public.victim"), "{chosen}");
    assert_eq!(source.sql("SELECT body FROM public.victim WHERE id = 5").trim(), "live, changed since");
    // The key the database has is followed as ever.
    assert_eq!(source.sql("SELECT body FROM public.notes WHERE id = 3").trim(), "the note");
    assert_eq!(source.sql("SELECT body FROM public.replies WHERE id = 7").trim(), "a reply");
}

#[test]
fn foreign_keys_do_not_reach_live_tables_through_partition_links_the_snapshot_alone_declares() {
    let setup = "CREATE TABLE public.notes (id int PRIMARY KEY, body text); \
         CREATE TABLE public.victim (id int PRIMARY KEY, note_id int, body text); \
         CREATE TABLE public.replies (id int PRIMARY KEY, note_id int REFERENCES public.notes, body text); \
         CREATE TABLE public.ghost (id int, note_id int); CREATE TABLE public.ghost2 (id int PRIMARY KEY); \
         INSERT INTO public.notes VALUES (3, 'the note'); INSERT INTO public.victim VALUES (5, 3, 'snapshot row'); \
         INSERT INTO public.replies VALUES (7, 3, 'a reply')";
    let Ready { source, work, repo, .. } = Scenario::new("part_forged_fk_leaf").sql(setup).init("repo");
    // victim made a partition of replies, whose key to notes is real; and a key between two
    // tables the target will not have, with victim and notes made their partitions.
    let fake = forging_pg_dump(
        &work,
        "TABLE ATTACH",
        "ALTER TABLE ONLY public.replies ATTACH PARTITION public.victim FOR VALUES IN (1);\n\
         ALTER TABLE ONLY public.ghost ADD CONSTRAINT forged FOREIGN KEY (note_id) REFERENCES public.ghost2(id);\n\
         ALTER TABLE ONLY public.ghost ATTACH PARTITION public.victim FOR VALUES IN (2);\n\
         ALTER TABLE ONLY public.ghost2 ATTACH PARTITION public.notes FOR VALUES IN (3);",
    );
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    source.sql(
        "DROP TABLE public.ghost, public.ghost2; UPDATE public.victim SET body = 'live, changed since'; \
         UPDATE public.replies SET body = 'changed since'",
    );
    let args = ["--json", "--rows", "public.notes:id=3", "--with-related", "--on-conflict", "update", "latest"];
    let run = work.restore_with(&repo, &source, &args).ok();
    let chosen = run.json()["rows_chosen"].to_string();
    assert!(!chosen.contains("public.victim"), "{chosen}");
    assert_eq!(source.sql("SELECT body FROM public.victim WHERE id = 5").trim(), "live, changed since");
    assert_eq!(source.sql("SELECT body FROM public.replies WHERE id = 7").trim(), "a reply");
}

#[test]
fn beside_live_data_a_table_of_extension_types_restores_without_live_defaults_and_one_calling_a_live_function_is_refused()
 {
    // hstore and citext of the live public schema: their values run no live role's code as
    // they load, and only the superuser who made their extension could change that.
    let Ready { source, work, repo, .. } = Scenario::new("part_ext")
        .sql(
            "CREATE EXTENSION hstore; CREATE EXTENSION citext; CREATE EXTENSION \"uuid-ossp\"; \
             CREATE TYPE public.stage AS ENUM ('lead', 'won'); CREATE SCHEMA crm; \
             CREATE TABLE crm.notes (id integer PRIMARY KEY, tags hstore, mails citext[]); \
             CREATE INDEX notes_tags ON crm.notes USING gin (tags); CREATE INDEX notes_k ON crm.notes ((tags -> 'k')); \
             INSERT INTO crm.notes SELECT g, hstore('k', g::text), ARRAY['A@x.org'::citext] FROM generate_series(1, 50) g; \
             CREATE TABLE crm.deals (id integer PRIMARY KEY, stage stage); \
             CREATE TABLE crm.calls (id integer PRIMARY KEY, u uuid DEFAULT uuid_generate_v4()); \
             INSERT INTO crm.calls (id) SELECT generate_series(1, 5); \
             CREATE FUNCTION public.md5x(integer) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT md5($1::text)'; \
             CREATE TABLE crm.gen (id integer PRIMARY KEY, h text GENERATED ALWAYS AS (public.md5x(id)) STORED); \
             INSERT INTO crm.gen SELECT generate_series(1, 5);",
        )
        .init("repo")
        .backup();
    let before = rows(&source, "crm.notes", "id");
    source.sql("UPDATE crm.notes SET tags = NULL");
    let run =
        work.restore_with(&repo, &source, &["--table", "crm.notes", "--schema-map", "crm=crm_side", "latest"]).ok();
    assert_eq!(rows(&source, "crm_side.notes", "id"), before);
    // Its GIN index came along; the one that calls hstore's live operator did not, and is said.
    let indexes =
        source.sql("SELECT string_agg(indexname, ',' ORDER BY 1) FROM pg_indexes WHERE schemaname = 'crm_side'");
    assert_eq!(indexes.trim(), "notes_pkey,notes_tags");
    assert!(
        run.stderr.contains("not restored: index of crm.notes: it names public.-> of the live database"),
        "{}",
        run.stderr
    );
    assert_ne!(rows(&source, "crm.notes", "id"), before, "the live table is untouched");

    // A default calling the live public.uuid_generate_v4(): the side table is made without it
    // (COPY gives every column), and that is said.
    let run =
        work.restore_with(&repo, &source, &["--table", "crm.calls", "--schema-map", "crm=crm_side2", "latest"]).ok();
    assert_eq!(rows(&source, "crm_side2.calls", "id"), rows(&source, "crm.calls", "id"));
    let default = "SELECT count(*) FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid \
                   WHERE c.relnamespace = 'crm_side2'::regnamespace";
    assert_eq!(source.sql(default).trim(), "0");
    assert!(
        run.stderr.contains(
            "not restored: default of crm.calls (column u): it names public.uuid_generate_v4() of the live database"
        ),
        "{}",
        run.stderr
    );
    // A generated column calling a live function is computed as the rows load: said before
    // anything is made.
    let schemas = source.sql("SELECT count(*) FROM pg_namespace");
    work.restore_with(&repo, &source, &["--table", "crm.gen", "--schema-map", "crm=crm_side4", "latest"])
        .fails_with(1, "crm.gen: its definition names public.md5x() of the live database");
    assert_eq!(source.sql("SELECT count(*) FROM pg_namespace"), schemas);
    // The application's own enum: its owner could give it a cast that a check would run.
    work.restore_with(&repo, &source, &["--table", "crm.deals", "--schema-map", "crm=crm_side3", "latest"])
        .fails_with(1, "crm.deals: its definition names public.stage of the live database");
    assert_eq!(source.sql("SELECT count(*) FROM pg_namespace"), schemas);
}

/// An application role that made citext in its migrations (a trusted extension: its script
/// runs as the bootstrap superuser, who owns its types): the extension is the role's, its
/// types are not, and a side table of them restores beside live data as the superuser does.
/// A type the role owns is not named.
#[test]
fn beside_live_data_a_trusted_extension_an_application_role_made_is_as_a_superusers() {
    let guard = a_role("part_trusted_app");
    let role = guard.0.clone();
    let Ready { source, work, repo, .. } = Scenario::new("part_trusted")
        .sql(&format!(
            "DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO {role}', current_database()); END $$; \
             GRANT CREATE ON SCHEMA public TO {role}; SET ROLE {role}; CREATE EXTENSION citext; \
             CREATE TYPE public.tier AS ENUM ('a', 'b'); CREATE SCHEMA crm; \
             CREATE TABLE crm.people (id integer PRIMARY KEY, mail public.citext); \
             INSERT INTO crm.people SELECT g, 'A' || g || '@x.org' FROM generate_series(1, 30) g; \
             CREATE TABLE crm.tiers (id integer PRIMARY KEY, t public.tier); RESET ROLE;"
        ))
        .init("repo")
        .backup();
    let owner = source.sql("SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'citext'");
    assert_eq!(owner.trim(), role, "the role made the extension");
    work.restore_with(&repo, &source, &["--table", "crm.people", "--schema-map", "crm=crm_side", "latest"]).ok();
    assert_eq!(rows(&source, "crm_side.people", "id"), rows(&source, "crm.people", "id"));
    let lower = source.sql("SELECT count(*) FROM crm_side.people WHERE mail = 'a1@X.ORG'");
    assert_eq!(lower.trim(), "1", "still citext, compared without case");
    work.restore_with(&repo, &source, &["--table", "crm.tiers", "--schema-map", "crm=crm_side2", "latest"])
        .fails_with(1, "crm.tiers: its definition names public.tier of the live database");
}

/// A role made for one test (its name with the process id), dropped when it ends.
fn a_role(prefix: &str) -> DropRole {
    let role = DropRole(format!("{prefix}_{}", std::process::id()));
    psql("postgres", &format!("CREATE ROLE {}", role.0));
    role
}

#[test]
fn a_live_type_swapped_while_a_side_schema_restore_waits_is_refused_by_what_the_ddl_bound() {
    use std::io::Write;
    // The database's owner (not a superuser) owns public on PostgreSQL 15; a superuser made
    // the ltree extension there: its type may be named by a side table.
    let guard = a_role("part_swap_app");
    let role = guard.0.clone();
    let Ready { source, work, repo, .. } = Scenario::new("part_swap")
        .sql(
            "CREATE EXTENSION ltree; CREATE SCHEMA crm; \
             CREATE TABLE crm.paths (id integer PRIMARY KEY, l public.ltree); \
             INSERT INTO crm.paths SELECT g, ('a.b' || g)::public.ltree FROM generate_series(1, 20) g;",
        )
        .init("repo");
    psql("postgres", &format!("ALTER DATABASE {} OWNER TO {role}", source.name));
    work.backup(&source, &repo);
    let waiting = |sql_start: &str, how: &str| {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE '{sql_start}%' AND {how}",
            source.name
        );
        for _ in 0..200 {
            if psql("postgres", &sql).trim() == "1" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("nothing came to {sql}");
    };
    // The owner holds the side schema's name in an open transaction, so the restore waits
    // between reading the live types and making the side table…
    let mut holder = std::process::Command::new(crate::common::pg_program("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &source.url()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql runs");
    let mut hold = holder.stdin.take().unwrap();
    writeln!(hold, "SET ROLE {role}; BEGIN; CREATE SCHEMA crm_side;").unwrap();
    waiting("CREATE SCHEMA crm_side", "state = 'idle in transaction'");
    let (key, url) = (work.admin_key(), source.url());
    let restore = work
        .command()
        .args(["restore", "--repo", &repo, "--identity", &key, "--db", &url])
        .args(["--table", "crm.paths", "--schema-map", "crm=crm_side", "latest"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("crmvault runs");
    waiting("CREATE SCHEMA", "wait_event_type = 'Lock'");
    // …and meanwhile puts a domain of its own, with a check, under the type's name.
    source.sql(&format!(
        "SET ROLE {role}; ALTER SCHEMA public RENAME TO public_real; CREATE SCHEMA public; \
         CREATE DOMAIN public.ltree AS text CHECK (length(VALUE) > 0);"
    ));
    writeln!(hold, "ROLLBACK;").unwrap();
    drop(hold);
    holder.wait().unwrap();
    let run = crate::common::Run::from(&restore.wait_with_output().unwrap());
    run.fails_with(1, "depend on live objects that run or may change a live role's code: type public.ltree");
    assert_eq!(source.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'crm_side'").trim(), "0");
}

/// `--on-conflict update` leaves a row that holds the snapshot's values, compared exactly: a
/// float the session prints the same (extra_float_digits = 0 prints 0.1 + 0.2 as 0.3) is not
/// taken for the snapshot's.
#[test]
fn on_conflict_update_compares_values_exactly_not_as_the_session_prints_them() {
    let setup = "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET extra_float_digits = 0', current_database()); END $$; \
         CREATE TABLE public.fl (id int PRIMARY KEY, f float8); INSERT INTO public.fl VALUES (1, 0.3), (2, 0.5)";
    let Ready { source, work, repo, .. } = Scenario::new("part_exact").sql(setup).init("repo").backup();
    source.sql("UPDATE public.fl SET f = 0.1::float8 + 0.2 WHERE id = 1");
    let args = ["--json", "--rows", "public.fl:id=1", "--rows", "public.fl:id=2", "--on-conflict", "update", "latest"];
    let run = work.restore_with(&repo, &source, &args).ok().json();
    let fl = &run["rows_chosen"][0];
    assert_eq!((fl["updated"].as_u64(), fl["skipped"].as_u64()), (Some(1), Some(1)), "{run}");
    assert_eq!(source.sql("SELECT f = 0.3::float8 FROM public.fl WHERE id = 1").trim(), "t");
}
