//! What the listings and reports say: `latest` is of one database, `--database`/`--host`/`--tag`
//! choose snapshots, every figure means what its column says, `verify` groups what it finds.

use std::path::Path;

use crate::common::{Ready, Scenario, TestDb, Workspace, assert_same_database, files_under};

fn backup_tagged(work: &Workspace, db: &TestDb, repo: &str, tags: &[&str]) -> serde_json::Value {
    let url = db.url();
    let mut args = vec!["backup", "--json", "--db", &url, "--repo", repo];
    for tag in tags {
        args.extend(["--tag", tag]);
    }
    work.run(&args).ok().json()
}

fn listed(work: &Workspace, repo: &str, filter: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["snapshots", "--json", "--repo", repo];
    args.extend_from_slice(filter);
    work.run(&args).ok().json()["snapshots"].as_array().unwrap().clone()
}

#[test]
fn latest_is_of_one_database_and_filters_choose_the_snapshots() {
    let ready = Scenario::new("two_crm").crm().init("repo");
    let (work, repo, crm) = (&ready.work, &ready.repo, &ready.source);
    let other = TestDb::create("two_other");
    other.sql("CREATE TABLE public.notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'hello')");
    let crm_id = backup_tagged(work, crm, repo, &["nightly"])["snapshot_id"].as_str().unwrap().to_string();
    // The other database is backed up last: it is the newest snapshot of the repository.
    let other_id = backup_tagged(work, &other, repo, &[])["snapshot_id"].as_str().unwrap().to_string();

    // `latest` of two databases is refused, naming both and the flag that chooses.
    let target = TestDb::create("two_target");
    let refused = work.restore(repo, &target).fails_with(1, "`latest` is ambiguous");
    for needle in [crm.name.as_str(), other.name.as_str(), "--database"] {
        assert!(refused.stderr.contains(needle), "{needle}: {}", refused.stderr);
    }
    assert!(target.is_empty());

    // With --database, the latest of that one; that it is older than the other database's
    // newest snapshot is no rollback (nothing was deleted).
    let run = work.restore_with(repo, &target, &["--json", "--database", &crm.name, "latest"]).ok();
    assert!(!run.stderr.contains("deleted from storage"), "a false alarm: {}", run.stderr);
    let restored = run.json();
    assert_eq!(restored["snapshot_id"], crm_id.as_str());
    assert_same_database(crm, &target);

    // The listing, by database, by tag, by host.
    let only_other = listed(work, repo, &["--database", &other.name]);
    assert_eq!(only_other.len(), 1, "{only_other:?}");
    assert_eq!(only_other[0]["id"], other_id.as_str());
    assert_eq!(only_other[0]["contents"]["database"], other.name.as_str());
    let nightly = listed(work, repo, &["--tag", "nightly"]);
    assert_eq!(nightly.len(), 1, "{nightly:?}");
    assert_eq!(nightly[0]["id"], crm_id.as_str());
    assert_eq!(nightly[0]["contents"]["tags"], serde_json::json!(["nightly"]));
    let host = nightly[0]["contents"]["hostname"].as_str().unwrap().to_string();
    assert_eq!(listed(work, repo, &["--host", &host]).len(), 2);
    // A filter that matches nothing is a mistake (a typo), said with what there is.
    let present =
        format!("(the snapshots are of databases {}, {})", (&crm.name).min(&other.name), (&crm.name).max(&other.name));
    for filter in
        [&["--host", "elsewhere"][..], &["--tag", "nightly", "--database", &other.name], &["--database", "nosuch"]]
    {
        let mut args = vec!["snapshots", "--repo", repo];
        args.extend_from_slice(filter);
        work.run(&args).fails_with(1, "no snapshot is").fails_with(1, &present);
        let mut args = vec!["verify", "--repo", repo];
        args.extend_from_slice(filter);
        work.run(&args).fails_with(1, "no snapshot is").fails_with(1, &present);
    }

    // A snapshot id that is not of the database named is refused, not restored.
    let elsewhere = TestDb::create("two_elsewhere");
    work.restore_with(repo, &elsewhere, &["--database", &crm.name, &other_id[..12]])
        .fails_with(1, &format!("is not of database {}", crm.name));
    assert!(elsewhere.is_empty());

    // verify checks what the filter lets through.
    let verify = work.run(&["verify", "--json", "--repo", repo, "--database", &other.name]).ok().json();
    assert_eq!(verify["snapshots"], 1, "{verify}");

    // Without a key the manifests cannot be read: a filter is refused, a plain listing is not.
    let stranger = Workspace::new();
    stranger.run(&["snapshots", "--repo", repo, "--database", &crm.name]).fails_with(1, "needs the writer key");
    stranger.run(&["verify", "--repo", repo, "--tag", "nightly"]).fails_with(1, "needs the writer key");
    let keyless = stranger.run(&["snapshots", "--json", "--repo", repo]).ok().json();
    assert_eq!(keyless["snapshots"].as_array().unwrap().len(), 2, "{keyless}");
    assert!(keyless["snapshots"][0]["size"].is_null(), "{keyless}");
}

#[test]
fn latest_names_the_other_hosts_of_a_database_and_host_chooses() {
    let ready = Scenario::new("hosts").crm().init("repo");
    let (work, repo, crm) = (&ready.work, &ready.repo, &ready.source);
    let url = crm.url();
    let backup_as = |host: &str| {
        work.run(&["backup", "--json", "--db", &url, "--repo", repo, "--host", host]).ok().json()["snapshot_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let old_host = backup_as("old-backup-host");
    let new_host = backup_as("new-backup-host");
    let target = TestDb::create("hosts_target");
    // The newest, with the other host named (a backup moved to a new machine, most often).
    let run = work.restore_with(repo, &target, &["--json", "latest"]).ok();
    assert_eq!(run.json()["snapshot_id"], new_host.as_str());
    assert!(
        run.stderr.contains("made on host new-backup-host") && run.stderr.contains("old-backup-host"),
        "{}",
        run.stderr
    );
    let target = TestDb::create("hosts_chosen");
    let run = work.restore_with(repo, &target, &["--json", "--host", "old-backup-host", "latest"]).ok();
    assert_eq!(run.json()["snapshot_id"], old_host.as_str());
    assert!(!run.stderr.contains("deleted from storage"), "{}", run.stderr);
}

#[test]
fn backup_and_snapshots_agree_on_every_figure() {
    let ready = Scenario::new("figures").crm().init("repo").backup();
    let (work, repo) = (&ready.work, ready.repo.clone());
    let first = ready.report.clone();
    // Nothing changed: the second backup adds nothing but its snapshot object.
    let second = work.backup(&ready.source, &repo);
    let empty = TestDb::create("figures_empty");
    let third = work.run(&["backup", "--json", "--db", &empty.url(), "--repo", &repo, "--allow-empty"]).ok().json();

    let list = listed(work, &repo, &[]);
    assert_eq!(list.len(), 3, "{list:?}");
    for (report, snapshot) in [&first, &second, &third].into_iter().zip(&list) {
        assert_eq!(snapshot["id"], report["snapshot_id"]);
        assert_eq!(snapshot["bytes_added"], report["bytes_added"], "{report}\n{snapshot}");
        assert_eq!(snapshot["bytes_added"], report["targets"][0]["bytes_added"], "{report}");
        assert_eq!(snapshot["size"], report["bytes_read"], "{report}\n{snapshot}");
    }
    let added = |value: &serde_json::Value| value["bytes_added"].as_u64().unwrap();
    let object_size = |id: &serde_json::Value| {
        std::fs::metadata(Path::new(&repo).join("snapshots").join(id.as_str().unwrap())).unwrap().len()
    };
    assert_eq!(added(&second), object_size(&second["snapshot_id"]), "{second}");
    assert!(added(&first) > added(&second), "{first}");
    // A database without tables restores only its (small) schema.
    let empty_size = list[2]["size"].as_u64().unwrap();
    assert!(empty_size > 0 && empty_size < 4096, "{}", list[2]);
    assert_eq!(list[2]["contents"]["tables"], serde_json::json!([]));

    // verify counts every object it checked, snapshots included: every file of the repository
    // (as it was before verify added its own audit record).
    let files = files_under(Path::new(&repo));
    let verify = work.run(&["verify", "--json", "--repo", &repo]).ok().json();
    assert_eq!(verify["snapshots"], 3);
    assert_eq!(verify["objects"].as_u64().unwrap(), files.len() as u64, "{verify}\n{files:?}");
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    assert_eq!(verify["bytes"].as_u64().unwrap(), bytes, "{verify}");

    // The text says it the same way, singular where it is one.
    let text = work.run(&["snapshots", "--repo", &repo]).ok().stdout;
    assert!(text.lines().next().unwrap().contains("SIZE") && text.contains("TAGS"), "{text}");
    let verify = work.run(&["verify", "--repo", &repo, "--database", &empty.name]).ok().stdout;
    assert!(verify.contains("checked 1 snapshot,") && verify.ends_with(": no problems\n"), "{verify}");
}

#[test]
fn verify_reports_a_deleted_index_once_with_its_chunks_and_a_summary() {
    let ready = Scenario::new("lost_index").crm().init("repo").backup();
    let chunks = ready.report["chunks"].as_u64().unwrap();
    assert!(chunks > 20, "{}", ready.report);
    let indexes = files_under(&Path::new(&ready.repo).join("index"));
    let victim = &indexes[0];
    std::fs::remove_file(victim).unwrap();
    let index_name = victim.file_name().unwrap().to_str().unwrap();

    let verify = ready.work.run(&["verify", "--repo", &ready.repo]);
    assert_eq!(verify.code, 3, "{}{}", verify.stdout, verify.stderr);
    let problems: Vec<&str> = verify.stdout.lines().filter(|l| l.starts_with("problem:")).collect();
    assert_eq!(problems.len(), indexes.len().min(1), "{}", verify.stdout);
    let line = problems[0];
    assert!(line.contains(index_name) && line.contains("missing"), "{line}");
    assert!(line.contains("chunks unreadable") && line.contains("snapshot "), "{line}");
    let summary = verify.stdout.lines().last().unwrap();
    assert!(summary.starts_with("checked 1 snapshot,") && summary.ends_with(": 1 problem"), "{summary}");

    // The same with an admin identity, which also reads the lists the index located.
    let key = ready.work.admin_key();
    for extra in [&[][..], &["--identity", key.as_str()][..]] {
        let mut args = vec!["verify", "--json", "--repo", &ready.repo];
        args.extend_from_slice(extra);
        let report = ready.work.run(&args).json();
        let problems = report["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{report}");
        assert!(problems[0]["chunks"].as_u64().unwrap() > 1, "{report}");
    }
}

#[test]
fn backup_time_is_the_snapshots_time_and_forget_buckets_by_it() {
    let ready = Scenario::new("timed")
        .sql("create table notes (id int primary key); insert into notes values (1)")
        .init("repo");
    let (work, repo, url) = (&ready.work, ready.repo.clone(), ready.source.url());
    // Three nights, told as a history importer would: each on its own day, none today.
    let mut ids = Vec::new();
    for day in 1..=3 {
        ready.source.sql(&format!("insert into notes values ({})", day + 1));
        let time = format!("2026-03-0{day}T01:00:00Z");
        let report = work.run(&["backup", "--json", "--db", &url, "--repo", &repo, "--time", &time]).ok().json();
        assert_eq!(report["time"], time.as_str(), "{report}");
        ids.push(report["snapshot_id"].as_str().unwrap().to_string());
    }
    let list = listed(work, &repo, &[]);
    let times: Vec<&str> = list.iter().map(|s| s["time"].as_str().unwrap()).collect();
    assert_eq!(times, ["2026-03-01T01:00:00Z", "2026-03-02T01:00:00Z", "2026-03-03T01:00:00Z"], "{list:?}");

    // The calendar rules act on those times: two days kept, the oldest day's snapshot removed.
    let forget = work.run(&["forget", "--json", "--repo", &repo, "--keep-daily", "2"]).ok().json();
    assert_eq!(forget["targets"][0]["removed"], 1, "{forget}");
    let mut left: Vec<String> =
        listed(work, &repo, &[]).iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    left.sort();
    let mut newest = ids[1..].to_vec();
    newest.sort();
    assert_eq!(left, newest);

    // A time that is not RFC 3339 is a usage error, said in one line.
    let bad =
        work.run(&["backup", "--db", &url, "--repo", &repo, "--time", "2026-03-04 01:00"]).fails_with(2, "RFC 3339");
    assert_eq!(bad.stderr.lines().filter(|l| l.contains("RFC 3339")).count(), 1, "{}", bad.stderr);
    assert_eq!(listed(work, &repo, &[]).len(), 2);
}

#[test]
fn ls_lists_a_snapshots_tables_rows_and_sizes_with_the_writer_key_or_an_identity() {
    let Ready { source, work, repo, report } = Scenario::new("ls").crm().init("repo").backup();
    let expected: Vec<(String, u64)> = source
        .sql("SELECT format('%s.%s', schemaname, relname), n_live_tup FROM pg_stat_user_tables ORDER BY 1")
        .lines()
        .map(|line| {
            let (name, _) = line.split_once('|').unwrap();
            let rows = source.sql(&format!("SELECT count(*) FROM {name}")).trim().parse().unwrap();
            (name.to_string(), rows)
        })
        .collect();
    for identity in [None, Some(work.admin_key())] {
        let mut args = vec!["ls".to_string(), "--json".into(), "--repo".into(), repo.clone()];
        args.extend(identity.iter().flat_map(|key| ["--identity".to_string(), key.clone()]));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let listing = work.run(&args).ok().json();
        assert_eq!(listing["snapshot_id"], report["snapshot_id"]);
        let tables: Vec<(String, u64)> = listing["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    format!("{}.{}", t["schema"].as_str().unwrap(), t["name"].as_str().unwrap()),
                    t["rows"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(tables, expected);
        let crm = listing["schemas"].as_array().unwrap().iter().find(|s| s["name"] == "crm").unwrap().clone();
        assert_eq!(crm["rows"].as_u64().unwrap(), expected.iter().map(|(_, rows)| rows).sum::<u64>());
    }
    let text = work.run(&["ls", "--repo", &repo]).ok().stdout;
    assert!(text.lines().any(|l| l.starts_with("crm.contacts ") && l.contains("120")), "{text}");
    work.run(&["ls", "--repo", &repo, "ffffffff"]).fails_with(1, "ffffffff");
    // Without a key there is nothing to list.
    let stranger = Workspace::new();
    stranger.run(&["ls", "--repo", &repo]).fails_with(1, "encrypted manifest");
}

#[test]
fn a_dot_in_a_schema_or_table_name_is_told_apart_by_quoting_it() {
    // `"a.b".t` and `a."b.t"` both read a.b.t: written so, either is refused as ambiguous, and
    // the part holding the dot in double quotes names each.
    let Ready { work, repo, .. } = Scenario::new("dump_dots")
        .sql(
            r#"CREATE SCHEMA "a.b"; CREATE TABLE "a.b".t (id int PRIMARY KEY, v text); INSERT INTO "a.b".t VALUES (1, 'schema with a dot');
               CREATE SCHEMA a; CREATE TABLE a."b.t" (id int PRIMARY KEY, v text); INSERT INTO a."b.t" VALUES (2, 'table with a dot');"#,
        )
        .init("repo")
        .backup();
    let key = work.admin_key();
    let dump = |table: &str| work.run(&["dump", "--repo", &repo, "--identity", &key, "--table", table]);
    dump("a.b.t").fails_with(1, "with the part holding a dot in double quotes");
    assert_eq!(dump(r#""a.b".t"#).ok().stdout, "id,v\n1,schema with a dot\n");
    assert_eq!(dump(r#"a."b.t""#).ok().stdout, "id,v\n2,table with a dot\n");
    let args = ["restore", "--repo", &repo, "--identity", &key, "--rows", r#"a."b.t":id=2"#, "--dry-run", "latest"];
    let rows = work.run(&[&args[..], &["--db", "postgres://postgres@127.0.0.1/postgres"]].concat()).ok();
    assert!(rows.stdout.contains("b.t"), "{}", rows.stdout);
}

#[test]
fn dump_writes_one_table_proven_that_copy_from_reads_back_and_a_damaged_chunk_fails_it() {
    let Ready { source, work, repo, .. } = Scenario::new("dump").crm().init("repo").backup();
    let key = work.admin_key();
    let dump = |format: &str, table: &str| {
        work.run(&["dump", "--repo", &repo, "--identity", &key, "--table", table, "--format", format])
    };
    let columns: Vec<String> = work.run(&["ls", "--json", "--repo", &repo]).ok().json()["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["schema"] == "crm" && t["name"] == "contacts")
        .unwrap()["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let rows: usize = source.sql("SELECT count(*) FROM crm.contacts").trim().parse().unwrap();

    // COPY text: loaded with COPY FROM into the emptied table of a restored copy, it gives
    // the source's rows back.
    let copy = dump("copy", "crm.contacts").ok();
    assert!(copy.stderr.contains(&format!("dumped {rows} rows of crm.contacts")), "{}", copy.stderr);
    let target = TestDb::create("dump_target");
    work.restore(&repo, &target).ok();
    target.sql("ALTER TABLE crm.contacts DISABLE TRIGGER ALL; DELETE FROM crm.contacts");
    let file = work.path("contacts.copy");
    std::fs::write(&file, &copy.stdout).unwrap();
    let load = std::process::Command::new(crate::common::pg_program("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &target.url(), "-c"])
        .arg(format!("\\copy crm.contacts ({}) FROM '{}'", columns.join(", "), file.display()))
        .output()
        .unwrap();
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    let rows_of = |db: &TestDb| db.sql("SELECT md5(string_agg(c::text, '|' ORDER BY id)) FROM crm.contacts c");
    assert_eq!(rows_of(&target), rows_of(&source));

    // CSV with the column names first; JSON lines with them as keys.
    let csv = dump("csv", "contacts").ok().stdout;
    assert!(csv.starts_with(&format!("{}\n", columns.join(","))), "{}", &csv[..200.min(csv.len())]);
    let json = dump("json", "crm.contacts").ok().stdout;
    let objects: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objects.len(), rows);
    let first = source.sql("SELECT email FROM crm.contacts ORDER BY id LIMIT 1");
    assert_eq!(objects[0]["email"].as_str().unwrap(), first.trim());

    // Read by `| head`: the reader going away ends the dump, not as a failure, saying (even
    // with --quiet) whether the table's check was reached: here it was, as the table's one
    // chunk was read before a write found the output closed.
    for format in ["csv", "copy"] {
        let mut closed = work
            .command()
            .args([
                "dump",
                "--quiet",
                "--repo",
                &repo,
                "--identity",
                &key,
                "--table",
                "crm.contacts",
                "--format",
                format,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(closed.stdout.take());
        let closed = closed.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&closed.stderr);
        assert_eq!(closed.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("the output was closed by its reader") && !stderr.contains("error"), "{stderr}");
        assert!(stderr.contains("the table was read whole, its digest and row count checked"), "{format}: {stderr}");
    }

    // A table the snapshot has no data of is named; the dump is in the audit trail.
    dump("csv", "crm.nothing").fails_with(1, "holds no data of a table crm.nothing");
    let audit = work.run(&["audit", "--repo", &repo, "--identity", &key, "--json"]).ok().json();
    assert!(audit.to_string().contains("\"operation\":\"dump\""), "{audit}");

    // Damaged storage: exit 1, and the output is said to be untrustworthy.
    for pack in files_under(&work.path("repo/data")) {
        let mut bytes = std::fs::read(&pack).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&pack, bytes).unwrap();
    }
    dump("csv", "crm.contacts").fails_with(1, "must not be trusted");
}
