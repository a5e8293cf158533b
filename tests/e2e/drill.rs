//! Restore drills (issue 22): `crmvault drill` restores a snapshot into a scratch database,
//! proves it from the database (every table's rows and keyed digest read back with COPY,
//! sequences, constraints, indexes), reports in text, JSON and Markdown, and never touches a
//! database that holds anything.

use crate::common::*;

/// A database name on the test server that does not exist (dropped again if a drill leaves it).
fn absent_database(label: &str) -> TestDb {
    let db = TestDb::create(label);
    psql("postgres", &format!("DROP DATABASE {}", db.name));
    db
}

fn exists(db: &TestDb) -> bool {
    psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{}'", db.name)).trim() == "1"
}

fn drill(work: &Workspace, repo: &str, scratch: &TestDb, extra: &[&str]) -> Run {
    let (key, url) = (work.admin_key(), scratch.url());
    let mut args = vec!["drill", "--repo", repo, "--identity", &key, "--scratch-db", &url];
    args.extend_from_slice(extra);
    work.run(&args)
}

#[test]
fn a_drill_restores_into_a_database_it_creates_proves_every_table_and_drops_it() {
    let Ready { source, work, repo, report } =
        Scenario::new("drill").fixture("tests/fixtures/everything.sql").init("repo").backup();
    let scratch = absent_database("drill_scratch");
    let (report_file, metrics) = (work.path("drill.md"), work.path("drill.prom"));
    let run = drill(
        &work,
        &repo,
        &scratch,
        &[
            "--json",
            "--trust-snapshot-code",
            "--report",
            report_file.to_str().unwrap(),
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
    )
    .ok();
    let json = run.json();
    assert_eq!(json["passed"], true, "{json}");
    let one = &json["drills"][0];
    assert_eq!(one["snapshot"]["id"], report["snapshot_id"], "{one}");
    assert_eq!(one["scratch_created"], true);
    assert!(!exists(&scratch), "the scratch database the drill created is dropped");

    // Every table of the source was read back from the restored database, with the source's
    // row count (and the large objects, as pg_catalog.pg_largeobject).
    let tables = one["tables"].as_array().unwrap();
    let expected: Vec<String> = source
        .sql(
            "SELECT format('%s.%s', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        )
        .lines()
        .map(String::from)
        .chain(["pg_catalog.pg_largeobject".to_string()])
        .collect();
    let mut found: Vec<String> =
        tables.iter().map(|t| format!("{}.{}", t["schema"].as_str().unwrap(), t["name"].as_str().unwrap())).collect();
    found.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(found, expected_sorted);
    for table in tables {
        assert_eq!(table["result"], "ok", "{table}");
        assert_eq!(table["rows_found"], table["rows_expected"], "{table}");
    }
    let contacts = tables.iter().find(|t| t["schema"] == "crm" && t["name"] == "contacts").unwrap();
    assert_eq!(
        contacts["rows_found"].as_u64().unwrap().to_string(),
        source.sql("SELECT count(*) FROM crm.contacts").trim()
    );
    for check in ["sequences", "constraints", "indexes"] {
        assert!(one[check]["checked"].as_u64().unwrap() > 0, "{check}: {one}");
        assert_eq!(one[check]["problems"], serde_json::json!([]), "{check}");
    }
    // A constraint added NOT VALID in the source with rows breaking it is said, not failed.
    assert!(one["warnings"].to_string().contains("contacts_phone_format"), "{one}");
    let phases: Vec<&str> = one["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(phases, ["prepare", "restore", "tables", "sequences", "constraints", "indexes", "cleanup"]);

    // The auditor's report, and the metrics.
    let markdown = std::fs::read_to_string(&report_file).unwrap();
    assert!(markdown.starts_with("# crmvault restore drill: PASSED"), "{markdown}");
    assert!(markdown.contains(&work.fingerprint(&repo)), "{markdown}");
    assert!(markdown.contains(report["snapshot_id"].as_str().unwrap()));
    assert!(markdown.contains("Restore time (RTO evidence)"));
    assert!(markdown.contains(&format!("| crm.contacts | {0} | {0} | ok |", contacts["rows_found"])), "{markdown}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(prom.contains(&format!("crmvault_drill_passed{{targets=\"{repo}\"}} 1")), "{prom}");
    assert!(prom.contains("crmvault_drill_restore_seconds"), "{prom}");

    // Without --trust-snapshot-code, a drill as a superuser refuses the snapshot's functions as
    // a restore does, and says how to go on.
    let refused = drill(&work, &repo, &scratch, &[]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(refused.stdout.contains("crm.normalize_email") && refused.stdout.contains("--trust-snapshot-code"));
    assert!(!exists(&scratch));
    // Text, and --parallel.
    let text = drill(&work, &repo, &scratch, &["--parallel", "--trust-snapshot-code"]).ok();
    assert!(text.stdout.starts_with("drill PASSED: snapshot "), "{}", text.stdout);
    assert!(!exists(&scratch));
}

#[test]
fn a_drill_never_touches_a_database_that_holds_anything_and_empties_a_given_empty_one() {
    let Ready { work, repo, .. } = Scenario::new("drill_guard").crm().init("repo").backup();

    // A database with anything in it (here one table) is refused and left as it was.
    let busy = TestDb::create("drill_busy");
    busy.sql("CREATE TABLE public.keep (id int); INSERT INTO public.keep VALUES (1)");
    drill(&work, &repo, &busy, &[])
        .fails_with(1, "a drill restores only into a database it creates, or one that is empty");
    assert_eq!(busy.sql("SELECT count(*) FROM public.keep").trim(), "1");

    // An empty database given is used, then emptied again (not dropped: it was not the drill's).
    let given = TestDb::create("drill_given");
    let run = drill(&work, &repo, &given, &["--json"]).ok();
    assert_eq!(run.json()["drills"][0]["scratch_created"], false);
    assert!(exists(&given) && given.is_empty());

    // One an earlier drill created and left behind (killed) bears its mark: it is replaced.
    let left = TestDb::create("drill_left");
    left.sql(&format!(
        "CREATE TABLE public.half_restored (id int); COMMENT ON DATABASE {} IS '{}'",
        left.name,
        crmvault::postgres::proof::SCRATCH_MARK
    ));
    let run = drill(&work, &repo, &left, &["--json"]).ok();
    assert_eq!(run.json()["drills"][0]["passed"], true);
    assert!(!exists(&left));
}

#[test]
fn a_damaged_pack_fails_the_drill_and_from_every_target_finds_the_copy_that_holds_it() {
    let Ready { source, work, repo, .. } = Scenario::new("drill_damage").crm().init("repo");
    let second = work.path("second").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &second, "--copy-from", &repo]).ok();
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--repo", &second]).ok();
    // Every pack of the second copy damaged.
    for pack in files_under(&work.path("second/data")) {
        let mut bytes = std::fs::read(&pack).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&pack, bytes).unwrap();
    }
    let scratch = absent_database("drill_damage_scratch");

    // Reading from the first copy that holds each chunk intact, the drill passes…
    drill(&work, &repo, &scratch, &["--repo", &second]).ok();
    // …one drill per copy finds the damaged one: exit 3, and it says which.
    let run = drill(&work, &repo, &scratch, &["--repo", &second, "--from-every-target", "--json"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let json = run.json();
    assert_eq!(json["passed"], false);
    assert_eq!(json["drills"][0]["passed"], true, "{json}");
    assert_eq!(json["drills"][0]["targets"], serde_json::json!([repo]));
    let failed = &json["drills"][1];
    assert_eq!(failed["passed"], false);
    assert_eq!(failed["targets"], serde_json::json!([second]));
    assert_eq!(failed["snapshot"], serde_json::Value::Null, "{failed}");
    assert!(failed["failures"][0].as_str().unwrap().starts_with("the restore failed"), "{failed}");
    assert!(!exists(&scratch), "a failed drill drops its scratch database too");

    // The damaged copy alone: the text says FAILED, and why.
    let run = drill(&work, &second, &scratch, &[]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("drill FAILED"), "{}", run.stdout);
    assert!(run.stdout.contains("FAILED: the restore failed"), "{}", run.stdout);
}

/// A `config` rewritten in storage: the drill restores through the generation this machine
/// pinned (as it should), and its report, the auditor's record, says what storage changed.
/// Before, only a log line on stderr did; `--json` and `--report` showed a clean pass.
#[test]
fn a_config_rewritten_in_storage_is_in_the_drills_report() {
    let Ready { work, repo, .. } = Scenario::new("drill_config").crm().init("repo").backup();
    let config = std::path::Path::new(&repo).join("config");
    let mut bytes = std::fs::read(&config).unwrap();
    bytes.extend_from_slice(b"\n");
    std::fs::write(&config, bytes).unwrap();
    let scratch = absent_database("drill_config_scratch");
    let report_file = work.path("drill.md");
    let run = drill(&work, &repo, &scratch, &["--json", "--report", report_file.to_str().unwrap()]).ok();
    let json = run.json();
    assert_eq!(json["passed"], true, "the newest backup restores: {json}");
    let warnings = json["drills"][0]["warnings"].to_string();
    assert!(warnings.contains("config missing, damaged or replaced"), "{json}");
    let report = std::fs::read_to_string(&report_file).unwrap();
    assert!(report.contains("config missing, damaged or replaced"), "{report}");
    // Mended, the report is clean of it again.
    let original = files_under(&std::path::Path::new(&repo).join("configs")).remove(0);
    std::fs::copy(&original, &config).unwrap();
    let json = drill(&work, &repo, &scratch, &["--json"]).ok().json();
    assert!(!json["drills"][0]["warnings"].to_string().contains("config"), "{json}");

    // Rekeyed, the machine opens the repository at the newer generation: `config` (the first)
    // rewritten there is reported all the same, by the drill and by verify.
    let added = work.keygen("added.key");
    work.run(&["rekey", "--repo", &repo, "--identity", &work.admin_key(), "--add-recipient", &added]).ok();
    let mut bytes = std::fs::read(&config).unwrap();
    bytes.extend_from_slice(b"\n");
    std::fs::write(&config, bytes).unwrap();
    let json = drill(&work, &repo, &scratch, &["--json"]).ok().json();
    let first = original.file_name().unwrap().to_str().unwrap();
    let mend = format!("replaced; its copy configs/{first} is whole");
    assert!(json["drills"][0]["warnings"].to_string().contains(&mend), "{json}");
    let verify = work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key()]);
    assert_eq!(verify.code, 3, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains(&mend), "{}", verify.stdout);
    // The first generation is named by the chain back from the pinned one, not by what claims
    // to be generation 0: `config` of a format no build knows, and another generation 0 planted
    // under configs/, leave the advice exact and the planted one named as junk.
    let planted = crmvault::crypto::object_hash(&std::fs::read(&config).unwrap());
    std::fs::copy(&config, std::path::Path::new(&repo).join("configs").join(&planted)).unwrap();
    std::fs::write(&config, br#"{"format":"crmvault","version":99}"#).unwrap();
    let verify = work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key()]);
    assert_eq!(verify.code, 3, "{}\n{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains(&mend), "{}", verify.stdout);
    assert!(verify.stdout.contains(&format!("configs/{planted}: is not a generation")), "{}", verify.stdout);
    // A copy made from it now is whole from its first generation: its `config` is the original.
    let copy = work.path("copy").to_str().unwrap().to_string();
    work.run(&["init", "--copy-from", &repo, "--repo", &copy]).ok();
    let copied = std::fs::read(std::path::Path::new(&copy).join("config")).unwrap();
    assert_eq!(copied, std::fs::read(&original).unwrap(), "the copy's config is not the first generation");
    std::fs::remove_file(std::path::Path::new(&repo).join("configs").join(&planted)).unwrap();
    std::fs::copy(&original, &config).unwrap();
    work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key()]).ok();
}

#[test]
fn dates_written_day_first_restore_as_they_were_and_the_drill_proves_it() {
    // A database whose sessions write dates day first, time stamps in New York time and
    // intervals in SQL style: COPY writes 04/03/2026 for 4 March, which a server's default
    // DateStyle (MDY) reads as 3 April, and 17/03/2026, which it refuses.
    let Ready { source, work, repo, .. } = Scenario::new("datestyle")
        .sql(
            "CREATE TABLE public.meetings (id int PRIMARY KEY, day date, at timestamptz, length interval); \
             INSERT INTO public.meetings VALUES (1, '2026-03-04', '2026-03-04 09:30+01', '1 day 2 hours'), \
               (2, '2026-03-17', '2026-03-17 23:15+00', '-3 years 1 month'), (3, '1999-12-31', NULL, '00:00:01.5');",
        )
        .init("repo");
    source.sql(&format!(
        "ALTER DATABASE {} SET DateStyle = 'SQL, DMY'; ALTER DATABASE {0} SET TimeZone = 'America/New_York'; \
         ALTER DATABASE {0} SET IntervalStyle = 'sql_standard'",
        source.name
    ));
    work.backup(&source, &repo);
    let restored = TestDb::create("datestyle_restored");
    work.restore(&repo, &restored).ok();
    let values = "SELECT id, to_char(day, 'YYYY-MM-DD'), extract(epoch FROM at), extract(epoch FROM length) \
                  FROM public.meetings ORDER BY id";
    assert_eq!(source.sql(values), restored.sql(values));
    assert!(restored.sql(values).contains("2026-03-04"), "{}", restored.sql(values));
    let json = drill(&work, &repo, &absent_database("datestyle_scratch"), &["--json"]).ok().json();
    assert_eq!(json["drills"][0]["tables"][0]["result"], "ok", "{json}");
}

/// Settings a database may give its sessions that print values lossy: floats rounded
/// (`extra_float_digits = 0`), time stamps with a zone's abbreviation (`SQL` style), which
/// reads back at the abbreviation's offset of today (Moscow's MSK was +04 until 26 October
/// 2014, +03 since). The backup reads exactly as pg_dump does: every value comes back.
#[test]
fn lossy_print_settings_of_the_source_lose_no_value() {
    let Ready { source, work, repo, .. } = Scenario::new("lossy")
        .sql(
            "CREATE TABLE public.readings (id int PRIMARY KEY, f float8, r real, at timestamptz); \
             INSERT INTO public.readings VALUES (1, 0.1::float8 + 0.2, 1.1::real * 3, '2014-10-25 21:30+00'), \
               (2, pi(), 1e-7, '2014-10-25 22:30+00'), (3, -0.0, 'NaN', '1850-06-01 12:00+00');",
        )
        .init("repo");
    source.sql(&format!(
        "ALTER DATABASE {} SET extra_float_digits = 0; ALTER DATABASE {0} SET DateStyle = 'SQL, DMY'; \
         ALTER DATABASE {0} SET TimeZone = 'Europe/Moscow'",
        source.name
    ));
    work.backup(&source, &repo);
    let restored = TestDb::create("lossy_restored");
    work.restore(&repo, &restored).ok();
    let exact = "SELECT id, encode(float8send(f), 'hex'), encode(float4send(r), 'hex'), extract(epoch FROM at) \
                 FROM public.readings ORDER BY id";
    assert_eq!(source.sql(exact), restored.sql(exact));
}

/// The drill's checks read the database, not the backup: a restored database changed after
/// its restore (a row altered, a sequence moved, an orphan row) fails them, each named.
#[tokio::test(flavor = "multi_thread")]
async fn the_proof_reads_the_database_a_changed_row_sequence_or_orphan_fails_it() {
    use crmvault::postgres::Database;
    use crmvault::repo::{Repository, SnapshotFilter};
    use crmvault::repo_set::RepoSet;
    use crmvault::target::{OpenMode, Target};

    let Ready { work, repo, report, .. } = Scenario::new("proof").crm().init("repo").backup();
    let restored = TestDb::create("proof_restored");
    work.restore(&repo, &restored).ok();
    let targets =
        RepoSet::of(vec![Repository::open(Target::open(&repo, OpenMode::Existing).unwrap()).await.unwrap()]).unwrap();
    let admin = targets.unlock_as_admin(std::path::Path::new(&work.admin_key())).await.unwrap();
    let id =
        targets.resolve_snapshot(report["snapshot_id"].as_str().unwrap(), &SnapshotFilter::default(), &admin).await;
    let (manifest, _, _) =
        targets.open_snapshot(&admin, &id.unwrap().ids[0], crmvault::repo::INDEX_IN_MEMORY).await.unwrap();
    let database = Database::parse(&restored.url()).unwrap();
    let prove = || async {
        let mut proof = crmvault::drill::DrillReport::new(vec![repo.clone()], String::new(), &database);
        let silent: crmvault::progress::Shared = std::sync::Arc::new(crmvault::progress::Silent);
        crmvault::drill::prove(&mut proof, &manifest, &admin, (&database, 2, None), &silent).await.unwrap();
        proof.failures
    };
    assert_eq!(prove().await, Vec::<String>::new(), "as restored, it proves");

    // One character of one row.
    restored.sql("UPDATE crm.contacts SET email = email || 'x' WHERE id = (SELECT min(id) FROM crm.contacts)");
    // A sequence moved on.
    let sequence = restored.sql(
        "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences WHERE schemaname = 'crm' ORDER BY 1 LIMIT 1",
    );
    restored.sql(&format!("SELECT nextval('{}')", sequence.trim()));
    // A deal whose company is gone, behind the foreign key's back.
    restored.sql(
        "SET session_replication_role = replica; \
         DELETE FROM crm.companies WHERE id = (SELECT company_id FROM crm.deals WHERE company_id IS NOT NULL LIMIT 1)",
    );
    // Rows in a table the snapshot holds no data for.
    restored.sql("CREATE TABLE public.planted (id int); INSERT INTO public.planted VALUES (1), (2)");
    let failures = prove().await;
    assert!(failures.iter().any(|f| f.starts_with("table public.planted: 2 rows where the snapshot")), "{failures:?}");
    assert!(failures.iter().any(|f| f.starts_with("table crm.contacts: its rows read back differ")), "{failures:?}");
    assert!(failures.iter().any(|f| f.starts_with(&format!("sequence {}", sequence.trim()))), "{failures:?}");
    assert!(
        failures.iter().any(|f| f.starts_with("foreign key constraint") && f.contains("crm.deals")),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|f| f.starts_with("table crm.companies: ") && f.contains("rows read back")),
        "{failures:?}"
    );
}
