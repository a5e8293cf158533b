//! `diff` between two snapshots reports exactly the rows a scripted set of inserts, updates
//! and deletes touched, by primary key (or whole row), reading only the chunks that changed;
//! `dump --where/--key` write exactly the rows asked for.

use serde_json::{Value, json};

use crate::common::{Ready, Scenario, files_under};

const SETUP: &str = r#"
CREATE TABLE public.big (id int PRIMARY KEY, name text, note text);
INSERT INTO public.big SELECT g, 'name ' || g, repeat('x', 40) FROM generate_series(1, 50000) g;
CREATE SCHEMA "we""ird sch";
CREATE TABLE "we""ird sch"."x""; DROP TABLE y; --" (tenant int, "select" text, body text, PRIMARY KEY (tenant, "select"));
INSERT INTO "we""ird sch"."x""; DROP TABLE y; --" VALUES (1, 'a', 'one'), (1, 'b', 'two'), (2, 'a', E'tab\there'), (2, 'é', NULL);
CREATE TABLE public.nokey (a int, b text);
INSERT INTO public.nokey VALUES (1, 'a'), (1, 'a'), (2, 'b');
CREATE TABLE public.longrows (id int PRIMARY KEY, doc text);
INSERT INTO public.longrows SELECT g, (SELECT string_agg(md5(g || '-' || i), '') FROM generate_series(1, 3000) i) FROM generate_series(1, 5) g;
CREATE TABLE public.gone (id int PRIMARY KEY);
INSERT INTO public.gone VALUES (1), (2), (3);
CREATE SCHEMA "dotted.s";
CREATE TABLE "dotted.s"."t.x" (id int PRIMARY KEY);
INSERT INTO "dotted.s"."t.x" VALUES (1), (2);
CREATE TABLE public.no_columns ();
INSERT INTO public.no_columns DEFAULT VALUES;
INSERT INTO public.no_columns DEFAULT VALUES;
"#;

const CHANGES: &str = r#"
UPDATE public.big SET name = 'renamed' WHERE id IN (10, 40000);
DELETE FROM public.big WHERE id = 25000;
INSERT INTO public.big VALUES (50001, 'new', NULL), (50002, 'new', 'two');
UPDATE "we""ird sch"."x""; DROP TABLE y; --" SET body = 'changed' WHERE tenant = 1 AND "select" = 'b';
DELETE FROM "we""ird sch"."x""; DROP TABLE y; --" WHERE tenant = 2 AND "select" = 'a';
INSERT INTO "we""ird sch"."x""; DROP TABLE y; --" VALUES (3, 'z', 'three');
DELETE FROM public.nokey WHERE ctid = (SELECT min(ctid) FROM public.nokey WHERE a = 1);
INSERT INTO public.nokey VALUES (3, 'c');
UPDATE public.longrows SET doc = overlay(doc PLACING 'CHANGED' FROM 90000) WHERE id = 3;
INSERT INTO public.longrows VALUES (6, 'short');
DROP TABLE public.gone;
CREATE TABLE public.fresh (id int PRIMARY KEY);
INSERT INTO public.fresh VALUES (7), (8);
"#;

fn table<'a>(report: &'a Value, schema: &str, name: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["schema"] == schema && t["name"] == name)
        .unwrap_or_else(|| panic!("{schema}.{name} not in {report}"))
}

fn keys(t: &Value, which: &str) -> Value {
    t["keys"][which].clone()
}

#[test]
fn diff_reports_exactly_the_rows_changed_by_key_or_whole_row_reading_only_changed_chunks() {
    let Ready { source, work, repo, report: first, .. } = Scenario::new("diff").crm().sql(SETUP).init("repo").backup();
    let from = first["snapshot_id"].as_str().unwrap().to_string();
    source.sql(CHANGES);
    let to = work.backup(&source, &repo)["snapshot_id"].as_str().unwrap().to_string();
    let key = work.admin_key();
    let diff = |extra: &[&str]| {
        let mut args = vec!["diff", "--repo", &repo, "--identity", &key];
        args.extend_from_slice(extra);
        work.run(&args)
    };

    let report = diff(&["--json", "--keys", &from[..12], &to[..12]]).ok().json();
    assert_eq!(report["from"]["snapshot_id"], from.as_str());
    assert_eq!(report["to"]["snapshot_id"], to.as_str());
    assert_eq!(report["schema_changed"], true, "tables were created and dropped");

    let big = table(&report, "public", "big");
    assert_eq!(big["status"], "changed");
    assert_eq!(big["by_key"], true);
    assert_eq!(big["key_columns"], json!(["id"]));
    assert_eq!((big["added"].clone(), big["removed"].clone(), big["changed"].clone()), (json!(2), json!(1), json!(2)));
    assert_eq!(keys(big, "added"), json!([["50001"], ["50002"]]));
    assert_eq!(keys(big, "removed"), json!([["25000"]]));
    assert_eq!(keys(big, "changed"), json!([["10"], ["40000"]]));

    let weird = table(&report, "we\"ird sch", "x\"; DROP TABLE y; --");
    assert_eq!(weird["key_columns"], json!(["tenant", "select"]));
    assert_eq!(keys(weird, "added"), json!([["3", "z"]]));
    assert_eq!(keys(weird, "removed"), json!([["2", "a"]]));
    assert_eq!(keys(weird, "changed"), json!([["1", "b"]]));

    // No key: by whole row, one of two equal rows removed.
    let nokey = table(&report, "public", "nokey");
    assert_eq!(nokey["by_key"], false);
    assert_eq!(keys(nokey, "added"), json!([["3", "c"]]));
    assert_eq!(keys(nokey, "removed"), json!([["1", "a"]]));
    assert_eq!(nokey["changed"], 0);

    // Rows longer than a chunk: cut inside the row, still exact.
    let long = table(&report, "public", "longrows");
    assert_eq!(keys(long, "changed"), json!([["3"]]));
    assert_eq!(keys(long, "added"), json!([["6"]]));
    assert_eq!(keys(long, "removed"), json!([]));

    let gone = table(&report, "public", "gone");
    assert_eq!((gone["status"].clone(), gone["removed"].clone()), (json!("removed"), json!(3)));
    assert_eq!(keys(gone, "removed"), json!([["1"], ["2"], ["3"]]));
    let fresh = table(&report, "public", "fresh");
    assert_eq!((fresh["status"].clone(), keys(fresh, "added")), (json!("added"), json!([["7"], ["8"]])));
    for untouched in ["contacts", "deals", "companies"] {
        let t = table(&report, "crm", untouched);
        assert_eq!(
            (t["status"].clone(), t["added"].clone(), t["removed"].clone()),
            (json!("unchanged"), json!(0), json!(0))
        );
    }

    // The cost follows what changed: of the big table's chunks, only those around the five
    // changed rows are read.
    let only_big = diff(&["--json", "--table", "public.big", &from[..12], &to[..12]]).ok().json();
    assert_eq!(only_big["tables"].as_array().unwrap().len(), 1, "{only_big}");
    let (read, chunks) = (only_big["chunks_read"].as_u64().unwrap(), only_big["chunks"].as_u64().unwrap());
    assert!(chunks > 200, "the big table is many chunks: {chunks}");
    assert!(read > 0 && read * 10 < chunks, "read {read} of {chunks} chunks");
    assert!(only_big["tables"][0].get("keys").is_none(), "keys only with --keys");

    // A snapshot against itself: nothing changed and nothing read.
    let same = diff(&["--json", &to[..12], "latest"]).ok().json();
    assert_eq!(same["chunks_read"], 0);
    assert!(same["tables"].as_array().unwrap().iter().all(|t| t["status"] == "unchanged"), "{same}");
    assert_eq!(same["schema_changed"], false);

    // The text form names the tables and keys; a pattern that matches nothing is a mistake.
    let text = diff(&["--keys", "--table", "public.*", &from[..12]]).ok().stdout;
    for needle in
        ["public.big", "~ id=10", "- id=25000", "+ id=50001", "public.gone", "(table removed)", "+ (a, b)=(3, c)"]
    {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    diff(&["--table", "public.nosuch", &from[..12]]).fails_with(1, "no table of either snapshot matches public.nosuch");
    let audit = work.run(&["audit", "--repo", &repo, "--identity", &key, "--json"]).ok().json();
    assert!(audit.to_string().contains("\"operation\":\"diff\""), "{audit}");

    // A machine that only ever ran diff knows the newest snapshot it proved: deleting it from
    // storage is then a rollback its next restore says.
    let admin = crate::common::Workspace::new();
    std::fs::copy(work.path("admin.key"), admin.path("admin.key")).unwrap();
    let fingerprint = work.fingerprint(&repo);
    let admin_key = admin.admin_key();
    let on_admin = |extra: &[&str]| {
        let mut args = vec!["diff", "--repo", &repo, "--identity", &admin_key, "--fingerprint", &fingerprint];
        args.extend_from_slice(extra);
        admin.run(&args)
    };
    on_admin(&[&from[..12], &to[..12]]).ok();
    let newest = crate::common::files_under(&work.path("repo/snapshots"))
        .into_iter()
        .find(|path| path.file_name().unwrap().to_str().unwrap().starts_with(&to))
        .unwrap();
    let kept = std::fs::read(&newest).unwrap();
    std::fs::remove_file(&newest).unwrap();
    let after = on_admin(&["--table", "public.big", &from[..12], "latest"]);
    assert!(after.stderr.contains("deleted from storage"), "{}", after.stderr);
    std::fs::write(&newest, kept).unwrap();

    // Without a key: refused. Damaged storage: the diff fails rather than miscount.
    work.run(&["diff", "--repo", &repo, &from[..12]]).fails_with(2, "no admin identity");
    for pack in files_under(&work.path("repo/data")) {
        let mut bytes = std::fs::read(&pack).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&pack, bytes).unwrap();
    }
    diff(&["--table", "public.big", &from[..12]]).fails_with(1, "");
}

#[test]
fn dump_where_and_key_write_exactly_the_rows_asked_for() {
    let Ready { source, work, repo, .. } = Scenario::new("dump_where").crm().sql(SETUP).init("repo").backup();
    let key = work.admin_key();
    let dump = |table: &str, extra: &[&str]| {
        let mut args = vec!["dump", "--repo", &repo, "--identity", &key, "--table", table, "--format", "json"];
        args.extend_from_slice(extra);
        work.run(&args)
    };
    let rows = |run: crate::common::Run| -> Vec<Value> {
        run.ok().stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };

    let one = dump("crm.contacts", &["--key", "42"]);
    assert!(one.stderr.contains("dumped 1 of 120 rows"), "{}", one.stderr);
    let one = rows(one);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["email"].as_str().unwrap(), source.sql("SELECT email FROM crm.contacts WHERE id = 42").trim());

    let email = source.sql("SELECT email FROM crm.contacts WHERE id = 7").trim().to_string();
    let found = rows(dump("contacts", &["--where", &format!("email={email}")]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], "7");

    // Both conditions must hold; a value is matched as text, escapes decoded.
    let weird = "we\"ird sch.x\"; DROP TABLE y; --";
    assert_eq!(rows(dump(weird, &["--where", "tenant=2"])).len(), 2);
    let tab = rows(dump(weird, &["--where", "tenant=2", "--where", "body=tab\there"]));
    assert_eq!(tab, vec![json!({"tenant": "2", "select": "a", "body": "tab\there"})]);
    assert!(rows(dump(weird, &["--where", "tenant=9"])).is_empty());
    // A filter that matches nothing says so, and shows the value as it was compared.
    let spaced = dump("crm.contacts", &["--where", "id = 7"]).ok();
    assert!(spaced.stdout.is_empty(), "{}", spaced.stdout);
    assert!(spaced.stderr.contains(r#"warning: no row of crm.contacts matched --where id=" 7""#), "{}", spaced.stderr);
    assert!(!dump("crm.contacts", &["--where", "id=7"]).ok().stderr.contains("warning"));

    // Names with dots are taken as written; a table without columns has empty rows.
    assert_eq!(rows(dump("dotted.s.t.x", &[])), vec![json!({"id": "1"}), json!({"id": "2"})]);
    let empty = work.run(&["dump", "--repo", &repo, "--identity", &key, "--table", "public.no_columns"]).ok().stdout;
    assert_eq!(empty, "\n\n\n", "a header naming no column, then two rows of nothing");

    // Mistakes are one line each, before anything is written.
    dump(weird, &["--key", "1"]).fails_with(1, "primary key has several columns (tenant, select)");
    dump("public.nokey", &["--key", "1"]).fails_with(1, "has no primary key");
    dump("crm.contacts", &["--where", "nosuch=1"]).fails_with(1, "has no column \"nosuch\"");
    dump("crm.contacts", &["--where", "id"]).fails_with(2, "--where takes column=value");
}
