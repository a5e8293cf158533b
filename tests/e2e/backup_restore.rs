//! End-to-end: backup and restore against a real PostgreSQL, through the real binary.

use crate::common::*;

#[test]
fn everything_round_trips_schema_and_data() {
    let Ready { source, work, repo, .. } =
        Scenario::new("everything").fixture("tests/fixtures/everything.sql").init("repo");
    let report = work.run(&["backup", "--json", "--jobs", "3", "--db", &source.url(), "--repo", &repo]).ok().json();
    assert!(report["tables"].as_u64().unwrap() >= 10, "{report}");

    let restored = TestDb::create("everything_restored");
    let run = work.restore_with(&repo, &restored, &["--json", "--trust-snapshot-code", "--jobs", "3", "latest"]).ok();
    assert_eq!(run.json()["rows"], report["rows"]);
    assert_same_database(&source, &restored);
    // Loading tables on several connections gives the same database.
    let parallel = TestDb::create("everything_parallel");
    let run =
        work.restore_with(&repo, &parallel, &["--json", "--trust-snapshot-code", "--parallel", "--jobs", "3"]).ok();
    assert_eq!(run.json()["rows"], report["rows"]);
    assert_eq!(run.json()["parallel"], true);
    assert_same_database(&source, &parallel);
    // The backup trained compression dictionaries (one per table with enough data), and the
    // restore used them.
    assert!(!files_under(&work.path("repo/dicts")).is_empty());
    // Sequences continue where the source stood, so new rows do not collide.
    for sequence in ["billing.invoice_number_seq", "crm.ticket_number_seq"] {
        let sql = format!("SELECT last_value, is_called FROM {sequence}");
        assert_eq!(source.sql(&sql), restored.sql(&sql), "{sequence}");
    }
    // Large objects: contents, owner and comment.
    let sql = "SELECT oid, md5(lo_get(oid)), lomowner::regrole, obj_description(oid, 'pg_largeobject') FROM pg_largeobject_metadata ORDER BY 1";
    assert_eq!(source.sql(sql), restored.sql(sql));
    assert_eq!(source.sql(sql), parallel.sql(sql));
    // Restoring over a full restore with --clean (the 3 a.m. case) replaces everything, large
    // objects included.
    work.restore_with(&repo, &restored, &["--clean", "--trust-snapshot-code"]).ok();
    assert_same_database(&source, &restored);
    assert_eq!(source.sql(sql), restored.sql(sql));
    assert!(source.sql(sql).contains("424242"));
}

#[test]
fn a_parallel_restore_builds_small_tables_indexes_while_a_large_table_loads() {
    // One table much larger than the rest: the other connection loads everything else, then
    // builds those tables' indexes and constraints (and a comment on one of them, which has to
    // wait for its index) while the large table still loads. Partitioned and inherited tables
    // (whose parents are not loaded on their own) and foreign keys come along.
    let Ready { source, work, repo, report } = Scenario::new("early_indexes")
        .fixture("tests/fixtures/everything.sql")
        .filler()
        .sql(
        "CREATE INDEX filler_body ON public.filler (body); \
         COMMENT ON INDEX public.filler_body IS 'built after the large load'; \
         CREATE TABLE public.tags (id integer PRIMARY KEY, filler_id bigint REFERENCES public.filler (id), name text UNIQUE); \
         INSERT INTO public.tags SELECT g, g * 3, 'tag ' || g FROM generate_series(1, 2000) g; \
         CREATE INDEX tags_lower ON public.tags (lower(name)); \
         COMMENT ON INDEX public.tags_lower IS 'built while filler loads';",
        )
        .init("repo")
        .backup();
    let restored = TestDb::create("early_indexes_restored");
    let run =
        work.restore_with(&repo, &restored, &["--json", "--trust-snapshot-code", "--parallel", "--jobs", "2"]).ok();
    assert_eq!(run.json()["rows"], report["rows"]);
    assert_same_database(&source, &restored);
    let sql = "SELECT indexrelid::regclass, obj_description(indexrelid, 'pg_class') FROM pg_index \
               WHERE indrelid IN ('public.tags'::regclass, 'public.filler'::regclass) ORDER BY indexrelid::regclass::text";
    assert_eq!(source.sql(sql), restored.sql(sql));
    assert!(restored.sql(sql).contains("built while filler loads"));
}

#[test]
fn restore_refuses_a_non_empty_database_unless_clean() {
    let Ready { source, work, repo, .. } = Scenario::new("clean_src").crm().init("repo").backup();
    let target = TestDb::create("clean_dst");
    target.sql("CREATE TABLE public.precious (id int); INSERT INTO precious VALUES (1)");
    let run = work.restore(&repo, &target).fails_with(1, "is not empty (1 relation)");
    assert!(
        !run.stderr.contains(" 0 ") && !run.stderr.contains("1 relations"),
        "what is there, counted right: {}",
        run.stderr
    );
    assert_eq!(target.sql("SELECT count(*) FROM precious").trim(), "1");
    // A parallel restore cannot put old contents back if it is killed, so it will not replace them.
    let run = work
        .restore_with(&repo, &target, &["--parallel", "--clean"])
        .fails_with(1, "restore without --parallel, with --clean, to replace its contents");
    assert_eq!(run.stderr.matches("empty database").count(), 1, "said once: {}", run.stderr);
    assert_eq!(target.sql("SELECT count(*) FROM precious").trim(), "1");
    work.restore_with(&repo, &target, &["--clean"]).ok();
    assert_same_database(&source, &target);
}

#[test]
fn a_second_backup_of_an_unchanged_database_stores_almost_nothing() {
    let Ready { source, work, repo, report: first } =
        Scenario::new("unchanged").fixture("tests/fixtures/everything.sql").init("repo").backup();
    let second = work.backup(&source, &repo);
    let (full, again) = (first["bytes_added"].as_u64().unwrap(), second["bytes_added"].as_u64().unwrap());
    eprintln!("first backup added {full} bytes, second {again} bytes ({} per mille)", again * 1000 / full);
    assert_eq!(second["new_chunks"], 0, "{second}");
    assert!(again * 100 < full, "second backup added {again} of {full} bytes");
    // Small changes cost little: one updated row and a few new ones.
    source.sql("UPDATE crm.contacts SET phone = '+1 555 0100' WHERE id = (SELECT min(id) FROM crm.contacts)");
    let third = work.backup(&source, &repo);
    assert!(third["new_chunks"].as_u64().unwrap() <= 6, "{third}");
    assert_ne!(first["snapshot_id"], third["snapshot_id"]);
}

/// The benchmark's workload at scale 0.1 (big enough for per-table dictionaries and zstd -9
/// increments to be used): every snapshot of a nightly series (full, a CRM
/// day, uniform churn) restores to exactly the database it was taken of, and the increments
/// store a small part of the full backup.
#[test]
fn every_snapshot_of_a_nightly_series_restores_exactly() {
    let Ready { source, work, repo, .. } = Scenario::new("nightly")
        .fixture("bench/crm_schema.sql")
        .fixture_with("bench/crm_generate.sql", &["scale=0.1"])
        .init("repo");
    let mut nights = Vec::new();
    for change in [None, Some(("bench/crm_day.sql", "day=1")), Some(("bench/uniform_churn.sql", "seed=1"))] {
        if let Some((script, variable)) = change {
            source.load_file_with(&fixture(script), &[variable]);
        }
        let report = work.backup(&source, &repo);
        nights.push((report, source.data()));
    }
    let full = nights[0].0["bytes_added"].as_u64().unwrap();
    for (report, _) in &nights[1..] {
        let added = report["bytes_added"].as_u64().unwrap();
        assert!(added * 10 < full, "an increment added {added} bytes of a full {full}");
    }
    // Oldest first, each into a fresh database: every snapshot is whole on its own.
    for (report, data) in &nights {
        let restored = TestDb::create("nightly_restored");
        let id = report["snapshot_id"].as_str().unwrap();
        work.run(&["restore", "--repo", &repo, "--identity", &work.admin_key(), "--db", &restored.url(), id]).ok();
        assert!(restored.data() == *data, "snapshot {id} does not restore the database it was taken of");
        assert_eq!(restored.schema(), source.schema());
    }
}

#[test]
fn targets_that_hold_different_chunks_each_get_what_they_lack_and_restore_alone() {
    // "old" has last night's chunks, "new" (the same repository, made with init --copy-from)
    // none: tonight a table's new chunks alternate between going to both targets and going to
    // "new" only, and the frames of consecutive chunks each target gets must hold exactly the
    // chunks it lacks.
    let Ready { source, work, repo: old, .. } = Scenario::new("two_holdings").filler().init("old").backup();
    let new = work.path("new").to_str().unwrap().to_string();
    work.run(&["init", "--copy-from", &old, "--repo", &new]).ok();
    source.sql(
        "UPDATE public.filler SET body = upper(body) WHERE id % 4000 = 0; \
         INSERT INTO public.filler SELECT i, md5(i::text) FROM generate_series(300001, 330000) i",
    );
    let report = work.run(&["backup", "--json", "--db", &source.url(), "--repo", &old, "--repo", &new]).ok().json();
    let (to_old, to_new) =
        (report["targets"][0]["new_chunks"].as_u64().unwrap(), report["targets"][1]["new_chunks"].as_u64().unwrap());
    assert!(0 < to_old && to_old * 10 < to_new, "{report}");
    for (repo, options) in [(&old, &["--parallel"][..]), (&new, &[])] {
        work.run(&["verify", "--repo", repo, "--identity", &work.admin_key(), "--read-data"]).ok();
        let restored = TestDb::create("two_holdings_restored");
        work.restore_with(repo, &restored, options).ok();
        assert_same_database(&source, &restored);
    }
}

#[test]
fn restored_values_are_compressed_with_lz4_unless_the_server_default_is_asked_for() {
    // Values over ~2 KiB are compressed where PostgreSQL stores them (TOAST); a column whose
    // schema names a method keeps it either way.
    let Ready { source, work, repo, .. } = Scenario::new("toast")
        .sql(
            "CREATE TABLE public.notes (id integer PRIMARY KEY, body text, fixed text COMPRESSION pglz); \
             INSERT INTO public.notes SELECT i, repeat('call notes ' || i, 1000), repeat('kept ' || i, 1000) \
             FROM generate_series(1, 20) i",
        )
        .init("repo")
        .backup();
    let methods = "SELECT string_agg(DISTINCT pg_column_compression(body), ',') || '/' || \
                   string_agg(DISTINCT pg_column_compression(fixed), ',') FROM public.notes";
    assert_eq!(source.sql(methods).trim(), "pglz/pglz");
    for (options, expected) in
        [(&["--parallel"][..], "lz4/pglz"), (&["--toast-compression", "server-default"], "pglz/pglz")]
    {
        let restored = TestDb::create("toast_restored");
        work.restore_with(&repo, &restored, options).ok();
        assert_same_database(&source, &restored);
        assert_eq!(restored.sql(methods).trim(), expected, "{options:?}");
    }
}

#[test]
fn restore_sessions_build_indexes_with_maintenance_work_mem_raised() {
    // An index function that reports, when it runs during the restore's index build, the
    // maintenance_work_mem of the session building it (by failing with it).
    let Ready { work, repo, .. } = Scenario::new("work_mem")
        .sql(
            "CREATE TABLE public.flag (raised boolean); \
             CREATE FUNCTION public.tell(x integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS \
               $$ BEGIN IF EXISTS (SELECT 1 FROM public.flag) THEN \
                    RAISE EXCEPTION 'built with maintenance_work_mem %', current_setting('maintenance_work_mem'); \
                  END IF; RETURN x; END $$; \
             CREATE TABLE public.accounts (id integer PRIMARY KEY, score integer); \
             INSERT INTO public.accounts SELECT g, g % 97 FROM generate_series(1, 500) g; \
             CREATE INDEX accounts_tell ON public.accounts (public.tell(score)); \
             INSERT INTO public.flag VALUES (true);",
        )
        .init("repo")
        .backup();
    let target = TestDb::create("work_mem_target");
    for (options, expected) in [
        (&["--parallel", "--trust-snapshot-code"][..], "built with maintenance_work_mem 256MB"),
        (&["--trust-snapshot-code"], "built with maintenance_work_mem 256MB"),
        (&["--trust-snapshot-code", "--maintenance-work-mem", "300MB"], "built with maintenance_work_mem 300MB"),
        (
            &["--trust-snapshot-code", "--parallel", "--maintenance-work-mem", "1kB"],
            "built with maintenance_work_mem 64MB",
        ),
    ] {
        let run = work.restore_with(&repo, &target, options);
        assert_eq!(run.code, 1, "{options:?}: {}", run.stdout);
        assert!(run.stderr.contains(expected), "{options:?}: {}", run.stderr);
        assert!(target.is_empty(), "{options:?}");
    }
    let run = work.restore_with(&repo, &target, &["--maintenance-work-mem", "lots"]);
    run.fails_with(1, "maintenance_work_mem lots: invalid size");
}

#[test]
fn table_patterns_select_what_is_backed_up() {
    let Ready { source, work, repo, .. } = Scenario::new("patterns").crm().init("repo");
    let report = work
        .run(&[
            "backup",
            "--json",
            "--db",
            &source.url(),
            "--repo",
            &repo,
            "--table",
            "crm.*",
            "--exclude-table",
            "crm.audit_log",
        ])
        .ok()
        .json();
    let listing = work.run(&["snapshots", "--json", "--repo", &repo]).ok().json();
    let tables: Vec<String> = listing["snapshots"][0]["contents"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[0].as_str().unwrap().to_string())
        .collect();
    assert!(tables.contains(&"crm.contacts".to_string()), "{tables:?}");
    assert!(!tables.contains(&"crm.audit_log".to_string()), "{tables:?}");
    assert_eq!(report["tables"].as_u64().unwrap(), tables.len() as u64);
    let restored = TestDb::create("patterns_restored");
    work.restore(&repo, &restored).ok();
    // The schema is whole; the left-out table is there, empty.
    assert_eq!(restored.sql("SELECT count(*) FROM crm.audit_log").trim(), "0");
    assert_eq!(restored.sql("SELECT count(*) FROM crm.contacts"), source.sql("SELECT count(*) FROM crm.contacts"));
}

#[test]
fn a_format_2_repository_still_restores_and_takes_new_snapshots() {
    // tests/fixtures/format2: written by the format-2 build (raw dictionaries).
    an_old_repository_still_restores_and_takes_new_snapshots(2);
}

#[test]
fn a_format_3_repository_still_restores_and_takes_new_snapshots() {
    // tests/fixtures/format3: written by the format-3 build (one zstd frame per chunk).
    an_old_repository_still_restores_and_takes_new_snapshots(3);
}

#[test]
fn a_format_4_repository_still_restores_and_takes_new_snapshots() {
    // tests/fixtures/format4: written by the format-4 build (32-byte chunk ids in its index
    // and list chunks; this build reads their first 16 bytes and writes 16-byte ids).
    an_old_repository_still_restores_and_takes_new_snapshots(4);
}

#[test]
fn a_format_5_repository_still_restores_and_takes_new_snapshots() {
    // tests/fixtures/format5: written by the format-5 build (bytea's hex text compressed as it
    // is; this build packs it into bytes before compressing, in the packs it writes).
    an_old_repository_still_restores_and_takes_new_snapshots(5);
}

/// tests/fixtures/formatN: a repository written by the format-N build of source.sql, with its
/// test-only admin identity and writer key.
fn an_old_repository_still_restores_and_takes_new_snapshots(format: u32) {
    let fixture_dir = fixture(&format!("tests/fixtures/format{format}"));
    let source = TestDb::create(&format!("format{format}_src"));
    source.load_file(&fixture_dir.join("source.sql"));
    let work = Workspace::new();
    let repo = work.path("repo");
    copy_dir(&fixture_dir.join("repo"), &repo);
    copy_dir(&fixture_dir.join("config"), &work.config_dir());
    let key = work.path("old.key");
    std::fs::copy(fixture_dir.join("admin.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (repo, key) = (repo.to_str().unwrap(), key.to_str().unwrap());
    let config = std::fs::read_to_string(work.path("repo/config")).unwrap();
    assert!(config.contains(&format!("\"version\": {format}")), "{config}");
    assert!(!files_under(&work.path("repo/dicts")).is_empty(), "the fixture must hold a dictionary");

    // An admin without a pin is refused; with the fingerprint (BLAKE3 of the config, as old
    // repositories were made) the repository is pinned on this machine for what follows.
    work.run(&["verify", "--repo", repo, "--identity", key]).fails_with(1, "not pinned on this machine");
    let fingerprint = blake3::hash(config.as_bytes()).to_hex()[..32].to_string();
    assert_eq!(work.fingerprint(repo).replace('-', ""), fingerprint);
    work.run(&["verify", "--repo", repo, "--identity", key, "--read-data", "--fingerprint", &fingerprint]).ok();
    let restored = TestDb::create(&format!("format{format}_restored"));
    work.run(&["restore", "--repo", repo, "--identity", key, "--db", &restored.url()]).ok();
    assert_same_database(&source, &restored);

    // This build adds snapshots of its own format (compressed dictionaries, frames of several
    // chunks, 16-byte ids) beside the old one, reusing the old chunks.
    let old_packs = files_under(&work.path("repo/data"));
    source.sql("INSERT INTO crm.notes (company_id, written_on, body) SELECT 1 + i % 40, date '2025-01-01', repeat('new note ' || i, 20) FROM generate_series(1, 3000) i");
    let report = work.backup(&source, repo);
    let (chunks, new) = (report["chunks"].as_u64().unwrap(), report["new_chunks"].as_u64().unwrap());
    assert!(new < chunks, "the unchanged table's chunks are found under their old ids: {report}");
    assert_eq!(files_under(&work.path("repo/dicts")).len(), 2, "the new rows trained a (compressed) dictionary");
    work.run(&["verify", "--repo", repo, "--identity", key, "--read-data"]).ok();
    let latest = TestDb::create(&format!("format{format}_latest"));
    // The fixture's snapshot is of another database's name: `latest` names the one meant.
    let latest_url = latest.url();
    let args = ["restore", "--repo", repo, "--identity", key, "--db", &latest_url, "--parallel"];
    work.run(&args).fails_with(1, "`latest` is ambiguous");
    work.run(&[&args[..], &["--database", &source.name]].concat()).ok();
    assert_same_database(&source, &latest);

    // With the old snapshot gone, the old packs the new one still uses are partly unused; a
    // repacking prune leaves them as they are: they hold their text unpacked, which the format-7
    // indexes it writes would not say (docs/FORMAT.md, *Packed text*).
    let new_id = report["snapshot_id"].as_str().unwrap();
    for file in files_under(&work.path("repo/snapshots")).iter().filter(|file| !file.ends_with(new_id)) {
        std::fs::remove_file(file).unwrap();
    }
    let newest = std::fs::read(work.path("repo/snapshots").join(new_id)).unwrap();
    let header: serde_json::Value = serde_json::from_slice(newest.split(|&b| b == b'\n').nth(1).unwrap()).unwrap();
    let still_used: Vec<&std::path::PathBuf> = old_packs
        .iter()
        .filter(|pack| header["packs"].as_array().unwrap().iter().any(|p| pack.ends_with(p["id"].as_str().unwrap())))
        .collect();
    assert!(!still_used.is_empty(), "the new snapshot reuses old packs");
    work.run(&["prune", "--repo", repo, "--identity", key, "--max-unused", "0"]).ok();
    for pack in still_used {
        assert!(pack.exists(), "{} was repacked", pack.display());
    }
    work.run(&["verify", "--repo", repo, "--identity", key, "--read-data"]).ok();
    let again = TestDb::create(&format!("format{format}_repacked"));
    work.run(&["restore", "--repo", repo, "--identity", key, "--db", &again.url(), "--database", &source.name]).ok();
    assert_same_database(&source, &again);
}

#[test]
fn a_restore_whose_index_build_fails_leaves_the_database_as_it_was() {
    // A function declared IMMUTABLE that is not: the index was built before the flag row
    // existed, and building it again on restore (data first, indexes after) fails. A real
    // cause of failed restores; here it makes an entry of the parallel post-data step fail.
    let Ready { source, work, repo, .. } = Scenario::new("failing_index")
        .sql(
            "CREATE TABLE public.flag (raised boolean); \
             CREATE FUNCTION public.picky(x integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS \
               $$ BEGIN IF EXISTS (SELECT 1 FROM public.flag) THEN RAISE EXCEPTION 'picky refuses %', x; END IF; \
                  RETURN x; END $$; \
             CREATE TABLE public.accounts (id integer PRIMARY KEY, score integer); \
             INSERT INTO public.accounts SELECT g, g % 97 FROM generate_series(1, 5000) g; \
             CREATE TABLE public.notes (id integer PRIMARY KEY, account_id integer REFERENCES public.accounts (id)); \
             INSERT INTO public.notes SELECT g, g FROM generate_series(1, 5000) g; \
             CREATE INDEX accounts_picky ON public.accounts (public.picky(score)); \
             INSERT INTO public.flag VALUES (true);",
        )
        .init("repo")
        .backup();
    let target = TestDb::create("failing_index_target");
    for options in [&["--parallel", "--trust-snapshot-code"][..], &["--trust-snapshot-code"]] {
        let run = work.restore_with(&repo, &target, options);
        assert_eq!(run.code, 1, "{options:?}: {}", run.stdout);
        assert!(run.stderr.contains("picky refuses"), "{options:?}: {}", run.stderr);
        assert!(
            target.is_empty(),
            "{options:?}: {}",
            target.sql("SELECT relname FROM pg_class WHERE relnamespace <> 'pg_catalog'::regnamespace")
        );
    }
    // Once the function tells the truth, both restore exactly.
    for options in [&["--parallel", "--trust-snapshot-code"][..], &["--trust-snapshot-code"]] {
        let fixed = TestDb::create("failing_index_fixed");
        source.sql(
            "CREATE OR REPLACE FUNCTION public.picky(x integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT x'",
        );
        work.backup(&source, &repo);
        work.restore_with(&repo, &fixed, options).ok();
        assert_same_database(&source, &fixed);
    }
}

#[test]
fn chunks_that_recur_after_the_sent_set_forgot_them_are_stored_again_and_restore() {
    let source = TestDb::create("forgotten_twins");
    // The same 3000 rows at the start and at the end, with many chunks of other rows between:
    // identical chunks far apart in one stream. The twins' text has no short period: with rows
    // of `repeat(' same', 80)` the gear hash over that 5-byte cycle takes 5 values, the same in
    // every row; for 48 of 20,000 repository keys tried one of them armed the chunker in every
    // row, which then cut every few rows from wherever the chunk began, so the second block's
    // chunks rarely met the first's (fewer than 30 reused for 34 keys; none, seen once in CI).
    let twins = "SELECT 'twin ' || i || ' ' || (SELECT string_agg(md5((i * 100 + j)::text), '') \
                 FROM generate_series(1, 12) j) FROM generate_series(1, 3000) i";
    source.sql(&format!(
        "CREATE TABLE public.twins (body text); INSERT INTO public.twins {twins}; \
         INSERT INTO public.twins SELECT md5(i::text) || repeat(' other', 60) FROM generate_series(1, 30000) i; \
         INSERT INTO public.twins {twins};"
    ));
    let work = Workspace::new();
    let (remembering, forgetting) = (work.init_repo("remembering"), work.init_repo("forgetting"));
    let url = source.url();
    let reused =
        |report: &serde_json::Value| report["chunks"].as_u64().unwrap() - report["new_chunks"].as_u64().unwrap();
    // Remembering every chunk it sent, a backup stores the last rows' chunks once...
    let all = work.run(&["backup", "--json", "--db", &url, "--repo", &remembering]).ok().json();
    assert!(reused(&all) >= 30, "{all}");
    // ... and remembering only the last 20-40, a second time.
    let some = work.run(&["backup", "--json", "--index-chunks", "20", "--db", &url, "--repo", &forgetting]).ok().json();
    assert!(reused(&some) < 10, "{some}");
    work.run(&["verify", "--repo", &forgetting, "--identity", &work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("forgotten_twins_restored");
    work.restore(&forgetting, &restored).ok();
    assert_same_database(&source, &restored);
    // A backup into that repository finds every chunk, whichever copy its index kept.
    let again = work.run(&["backup", "--json", "--db", &url, "--repo", &forgetting]).ok().json();
    assert_eq!(again["new_chunks"], 0, "{again}");
}

#[test]
fn a_large_backup_writes_its_index_in_parts_and_the_next_backup_reuses_them_all() {
    // Several packs' worth: an index file can only follow a pack that is stored.
    let Ready { source, work, repo, .. } = Scenario::new("index_parts").crm().filler().init("repo");
    let url = source.url();
    let first = work.run(&["backup", "--json", "--index-chunks", "100", "--db", &url, "--repo", &repo]).ok().json();
    let new_chunks = first["new_chunks"].as_u64().unwrap();
    let indexes = files_under(&work.path("repo/index")).len() as u64;
    // An index file as soon as a stored pack brings 100 new chunks, and one for the rest.
    assert!(new_chunks > 1000, "{first}");
    assert!(indexes >= 2, "{indexes} index for {new_chunks} chunks");
    work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("index_parts_restored");
    work.restore(&repo, &restored).ok();
    assert_same_database(&source, &restored);

    // The next backup finds every chunk through those index files: it stores only the change.
    // With at most 50 entries in memory, the index it reads is merged on disk from 50-entry runs.
    source.sql("UPDATE public.filler SET body = 'changed' WHERE id = 150000");
    let second = work.run(&["backup", "--json", "--index-in-memory", "50", "--db", &url, "--repo", &repo]).ok().json();
    assert!(second["new_chunks"].as_u64().unwrap() < 20, "{second}");
    let again = TestDb::create("index_parts_again");
    work.restore(&repo, &again).ok();
    assert_same_database(&source, &again);
}

#[test]
fn a_restore_with_its_index_on_disk_reads_a_missing_pack_from_the_other_target() {
    // With --index-in-memory 50 every target's index is sorted on disk in runs of 50 entries,
    // then merged, as a large snapshot's is; the chunk lists go to disk as always.
    let source = TestDb::create("disk_index");
    source.load_file(&fixture("examples/crm.sql"));
    source.add_filler();
    let work = Workspace::new();
    let first = work.init_repo("first");
    let second = work.path("second").to_str().unwrap().to_string();
    work.run(&["init", "--copy-from", &first, "--repo", &second]).ok();
    let url = source.url();
    let backup = || work.run(&["backup", "--db", &url, "--repo", &first, "--repo", &second]).ok();
    backup();
    // A second night: the snapshot's chunks lie in both nights' packs and index files.
    source.sql(
        "UPDATE public.filler SET body = upper(body) WHERE id % 500 = 0; DELETE FROM crm.activities WHERE id % 20 = 0",
    );
    backup();
    let largest = |dir: &str| {
        files_under(&work.path(dir)).into_iter().max_by_key(|f| std::fs::metadata(f).unwrap().len()).unwrap()
    };
    std::fs::remove_file(largest("first/data")).unwrap();

    // The first target alone cannot restore; the database stays as it was.
    let alone = TestDb::create("disk_index_alone");
    let failed = work.restore_with(&first, &alone, &["--parallel", "--index-in-memory", "50"]);
    assert_ne!(failed.code, 0, "{}", failed.stdout);
    assert!(failed.stderr.contains("is missing from"), "{}", failed.stderr);
    assert_eq!(failed.stderr.trim().lines().count(), 1, "{}", failed.stderr);
    assert!(alone.is_empty());

    // Both targets: the missing pack's chunks come from the second one, and the data is equal.
    let restored = TestDb::create("disk_index_restored");
    let options = ["--json", "--parallel", "--index-in-memory", "50", "--repo", &second];
    let run = work.restore_with(&first, &restored, &options).ok();
    let report = run.json();
    // Said once for the pack, with how many of its chunks came from the next target.
    let fallbacks = report["sources"]["fallbacks"].as_array().unwrap();
    assert_eq!(fallbacks.len(), 1, "{report}");
    let from_second = report["sources"]["served"][1][1].as_u64().unwrap();
    assert!(from_second > 1, "{report}");
    assert!(fallbacks[0].as_str().unwrap().contains(&format!(": {from_second} chunks, the first ")), "{report}");
    assert_eq!(run.stderr.matches("from the next target").count(), 1, "{}", run.stderr);
    assert_same_database(&source, &restored);
}

#[test]
fn restore_create_makes_the_database_and_it_takes_its_name_only_when_complete() {
    let Ready { source, work, repo, .. } = Scenario::new("create").crm().init("repo").backup();
    // A name that does not exist yet (TestDb drops it again at the end).
    let target = TestDb::create("created");
    psql("postgres", &format!("DROP DATABASE {}", target.name));
    let loading = |name: &str| format!("crmvault_restoring_{}", &blake3::hash(name.as_bytes()).to_hex()[..16]);
    let exists = |name: &str| {
        psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")).trim() == "1"
    };

    // One a killed --create left behind, bearing the mark, is replaced.
    psql("postgres", &format!("CREATE DATABASE {}", loading(&target.name)));
    psql(
        "postgres",
        &format!("COMMENT ON DATABASE {} IS '{}'", loading(&target.name), crmvault::restore::RESTORING_MARK),
    );
    let run = work.restore_with(&repo, &target, &["--create", "--json"]).ok();
    assert_eq!(run.json()["parallel"], true, "--create loads in parallel");
    assert_same_database(&source, &target);
    assert!(!exists(&loading(&target.name)), "the loading database took the target's name");
    let comment = format!(
        "SELECT shobj_description(oid, 'pg_database') IS NULL FROM pg_database WHERE datname = '{}'",
        target.name
    );
    assert_eq!(psql("postgres", &comment).trim(), "t");

    // It exists now: --create refuses it, and leaves it as it is.
    work.restore_with(&repo, &target, &["--create"]).fails_with(1, "--create makes a new database");
    assert_same_database(&source, &target);

    // Killed between CREATE DATABASE and its COMMENT: an empty loading database without the
    // mark is dropped too; one that holds anything is someone's, and refused.
    let second = TestDb::create("created_second");
    psql("postgres", &format!("DROP DATABASE {}", second.name));
    psql("postgres", &format!("CREATE DATABASE {}", loading(&second.name)));
    psql(&loading(&second.name), "CREATE TABLE mine (id int)");
    work.restore_with(&repo, &second, &["--create"]).fails_with(1, "was not left by a restore --create of this role");
    assert!(!exists(&second.name));
    psql(&loading(&second.name), "DROP TABLE mine");
    // One another role made (a CREATEDB role can guess the name) is not even connected to:
    // its owner could have set it up to run code in an admin's session.
    let planter = format!("cv_planter_{}", std::process::id());
    psql("postgres", &format!("DROP ROLE IF EXISTS {planter}; CREATE ROLE {planter} CREATEDB"));
    psql("postgres", &format!("ALTER DATABASE {} OWNER TO {planter}", loading(&second.name)));
    psql("postgres", &format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", loading(&second.name)));
    work.restore_with(&repo, &second, &["--create"]).fails_with(1, "was not left by a restore --create of this role");
    assert!(exists(&loading(&second.name)));
    psql("postgres", &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", loading(&second.name)));
    psql("postgres", &format!("ALTER DATABASE {} OWNER TO postgres; DROP ROLE {planter}", loading(&second.name)));
    work.restore_with(&repo, &second, &["--create"]).ok();
    assert_same_database(&source, &second);
    assert!(!exists(&loading(&second.name)));

    // A restore that fails (a damaged pack) leaves neither the name nor the loading database.
    for pack in files_under(&work.path("repo/data")) {
        let mut bytes = std::fs::read(&pack).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&pack, bytes).unwrap();
    }
    let other = TestDb::create("created_failed");
    psql("postgres", &format!("DROP DATABASE {}", other.name));
    let run = work.restore_with(&repo, &other, &["--create"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("not created"), "{}", run.stderr);
    assert!(!exists(&other.name) && !exists(&loading(&other.name)));
}

#[test]
fn restore_create_keeps_what_it_loaded_when_someone_takes_the_name_meanwhile() {
    // Filler: a load long enough for the session below to connect before it ends.
    let Ready { source, work, repo, .. } = Scenario::new("create_taken").crm().filler().init("repo").backup();
    let target = TestDb::unmade("create_taken");
    let loading = format!("crmvault_restoring_{}", &blake3::hash(target.name.as_bytes()).to_hex()[..16]);
    let kept = TestDb { name: loading.clone() };
    let wait_for = |sql: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while psql("postgres", sql).trim() != "1" {
            assert!(std::time::Instant::now() < deadline, "waited for {sql}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let (key, url) = (work.admin_key(), target.url());
    let restore = work
        .command()
        .args(["restore", "--repo", &repo, "--identity", &key, "--db", &url, "--create"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A session in the loading database keeps it from taking its name until the name is taken
    // (an application making its database when it finds none).
    wait_for(&format!("SELECT count(*) FROM pg_database WHERE datname = '{loading}'"));
    let mut holder = std::process::Command::new(pg_program("psql"))
        .args(["-X", "-q", "-d", &format!("{}/{loading}", server_url()), "-c", "SELECT pg_sleep(2)"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{loading}' AND query LIKE '%pg_sleep%'"));
    psql("postgres", &format!("CREATE DATABASE {}", target.name));
    holder.wait().unwrap();
    let run = Run::from(&restore.wait_with_output().unwrap());
    let run = run.fails_with(1, "was created by someone else while the restore loaded it");
    assert!(run.stderr.contains(&format!("is kept as {loading}")), "{}", run.stderr);
    assert!(target.is_empty(), "the name taken meanwhile is left as it was");
    assert_same_database(&source, &kept);
    // Marked as kept, not as a leftover a later `restore --create` drops.
    let comment = format!("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{loading}'");
    assert!(psql("postgres", &comment).contains("kept under this name"));
}

#[test]
fn restore_create_kept_out_by_its_lock_names_the_session_that_holds_it() {
    let Ready { work, repo, .. } = Scenario::new("create_locked").crm().init("repo").backup();
    let target = TestDb::unmade("create_locked");
    let made = format!("SELECT count(*) FROM pg_database WHERE datname = '{}'", target.name);
    // Anyone who can connect can take the lock: the admin is told whose session it is.
    let squatter = format!("squatter_{}", std::process::id());
    let lock = AdvisoryLock::hold(&format!("crmvault restore --create {}", target.name), &squatter);
    let run = work.restore_with(&repo, &target, &["--create"]);
    drop(lock);
    let run = run.fails_with(1, "another restore --create is making");
    assert!(run.stderr.contains(&format!("application {squatter}")), "{}", run.stderr);
    assert_eq!(psql("postgres", &made).trim(), "0", "nothing was made");

    // A drill's lock, the same way.
    let drills = format!("{squatter}_drill");
    let lock = AdvisoryLock::hold(&format!("crmvault drill {}", target.name), &drills);
    let admin = work.admin_key();
    let run = work.run(&["drill", "--repo", &repo, "--identity", &admin, "--scratch-db", &target.url()]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, 1, "{said}");
    let holder = format!("the session of pid {}, user postgres, application {drills}", lock.pid);
    assert!(said.contains("another drill is using") && said.contains(&holder), "{said}");
    assert_eq!(psql("postgres", &made).trim(), "0", "nothing was made");
}

/// A session of its own (application `name`) holding the advisory lock on `key` until dropped,
/// then ended on the server too (a backend asleep does not notice its client gone).
struct AdvisoryLock {
    client: std::process::Child,
    pid: u32,
}

impl AdvisoryLock {
    fn hold(key: &str, name: &str) -> AdvisoryLock {
        let client = std::process::Command::new(pg_program("psql"))
            .args(["-X", "-q", "-d", &format!("{}/postgres", server_url())])
            .args(["-c", &format!("SELECT pg_advisory_lock(hashtext('{key}'))"), "-c", "SELECT pg_sleep(60)"])
            .env("PGAPPNAME", name)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Dropped (the client ended) whatever happens next.
        let mut lock = AdvisoryLock { client, pid: 0 };
        let held =
            format!("SELECT pid FROM pg_stat_activity WHERE application_name = '{name}' AND query LIKE '%pg_sleep%'");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(pid) = psql("postgres", &held).trim().parse() {
                lock.pid = pid;
                return lock;
            }
            assert!(std::time::Instant::now() < deadline, "the lock on {key} was never taken");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let _ = self.client.kill();
        let _ = self.client.wait();
        let _ = std::process::Command::new(pg_program("psql"))
            .args(["-X", "-q", "-d", &format!("{}/postgres", server_url()), "-c"])
            .arg(format!("SELECT pg_terminate_backend({})", self.pid))
            .output();
    }
}

#[test]
fn a_table_whose_index_calls_a_function_written_for_the_apps_search_path_backs_up_and_restores() {
    // The pattern of an accent-folding search index: an SQL function that calls another
    // without its schema, as it was written for the application's search_path. PostgreSQL
    // expands it while planning any query on the table, under crmvault's safe path too.
    let Ready { source, work, repo, .. } = Scenario::new("app_path")
        .sql(
            "CREATE SCHEMA crm; \
             CREATE FUNCTION public.fold(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT lower(t) $$; \
             CREATE FUNCTION public.search_key(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT fold(t) $$; \
             CREATE TABLE crm.contacts (id integer PRIMARY KEY, name text CHECK (public.search_key(name) <> '')); \
             CREATE INDEX contacts_search ON crm.contacts (public.search_key(name)); \
             INSERT INTO crm.contacts SELECT g, 'Contact ' || g FROM generate_series(400, 1, -1) g; \
             UPDATE crm.contacts SET name = name || ' (moved)' WHERE id % 7 = 0; \
             CREATE FUNCTION public.suffix() RETURNS text IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN \
               IF current_setting('transaction_read_only') = 'on' THEN RAISE EXCEPTION 'ran in a read-only query'; END IF; \
               RETURN ''; END $$; \
             CREATE TABLE crm.tags (id integer PRIMARY KEY, name text); \
             CREATE INDEX tags_name ON crm.tags ((name || public.suffix())); \
             CREATE FUNCTION public.glue(a text, b text) RETURNS text IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN \
               IF current_setting('transaction_read_only') = 'on' THEN RAISE EXCEPTION 'ran in a read-only query'; END IF; \
               RETURN a || b; END $$; \
             CREATE OPERATOR public.||| (FUNCTION = public.glue, LEFTARG = text, RIGHTARG = text); \
             CREATE TABLE crm.glued (id integer PRIMARY KEY, name text); \
             CREATE INDEX glued_name ON crm.glued ((name OPERATOR(public.|||) 'x')) WHERE id > ('1'::text OPERATOR(public.|||) '2'::text)::integer; \
             INSERT INTO crm.glued SELECT g, 'glued ' || g FROM generate_series(1, 20) g; \
             INSERT INTO crm.tags SELECT g, 'tag ' || g FROM generate_series(1, 30) g;",
        )
        .init("repo");
    // The backup plans no query on them, so runs none of their functions (a table owner's
    // immutable function would run as the backup's role), and reads them as stored. It says
    // what restoring the one whose function resolves names by the caller's path needs.
    let report = work.run(&["backup", "--json", "--db", &source.url(), "--repo", &repo]).ok().json();
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("crm.contacts: an index or statistics object on it calls public.search_key, an SQL function")
            && !warnings.contains("crm.tags"),
        "{warnings}"
    );
    assert_eq!(report["rows"], 450, "{report}");

    // pg_dump's empty search_path fails the index build, as pg_restore's does: one line
    // that names the way out, and nothing restored.
    let plain = TestDb::create("app_path_plain");
    work.restore_with(&repo, &plain, &["--trust-snapshot-code"])
        .fails_with(1, "function fold(text) does not exist, in SQL function \"search_key\"")
        .fails_with(1, "--search-path");
    assert!(plain.is_empty());

    // With the application's path the restore builds it, in one transaction and in parallel,
    // and a drill proves the table read back as the backup read it.
    for (label, extra) in [("one", &[][..]), ("parallel", &["--parallel"][..])] {
        let restored = TestDb::create(&format!("app_path_{label}"));
        let mut options = vec!["--trust-snapshot-code", "--search-path", "public"];
        options.extend_from_slice(extra);
        work.restore_with(&repo, &restored, &options).ok();
        assert_same_database(&source, &restored);
    }
    // Rows only, into the live tables (whose index and check call the function): the loading
    // session takes the path too.
    let live = TestDb::create("app_path_live");
    work.restore_with(&repo, &live, &["--trust-snapshot-code", "--search-path", "public"]).ok();
    live.sql("TRUNCATE crm.contacts");
    let data_only = ["--data-only", "--table", "crm.contacts"];
    work.restore_with(&repo, &live, &data_only).fails_with(1, "--search-path");
    work.restore_with(&repo, &live, &[&data_only[..], &["--search-path", "public"]].concat()).ok();
    assert_same_database(&source, &live);
    let scratch = TestDb::unmade("app_path_drill");
    let (key, url) = (work.admin_key(), scratch.url());
    let drill = ["drill", "--json", "--repo", &repo, "--identity", &key, "--scratch-db", &url];
    let run = work.run(&[&drill[..], &["--trust-snapshot-code", "--search-path", "public"]].concat()).ok();
    let json = run.json();
    assert_eq!(json["drills"][0]["passed"], true, "{json}");
    assert_eq!(json["drills"][0]["tables"][0]["result"], "ok", "{json}");

    // A search path is a list of schema names, and only a whole restore takes one.
    work.restore_with(&repo, &plain, &["--search-path", "public; DROP TABLE x"]).fails_with(2, "not a schema name");
    work.restore_with(&repo, &plain, &["--search-path", "public", "--schema-map", "crm=crm_side"])
        .fails_with(2, "cannot be used with");
}

#[test]
fn packs_read_in_pieces_restore_and_prove_themselves_whether_their_header_is_short_or_long() {
    // A pack larger than one of age's 64 KiB pieces is read in pieces. Its first read brings
    // the header and the first pieces at once when the header is short (one admin), and takes
    // a second read when many admins make the header longer than that read allows for.
    for admins in [1usize, 48] {
        let source = TestDb::create(&format!("pieces_{admins}"));
        source.sql(
            "CREATE TABLE public.big (id int PRIMARY KEY, body text); \
             INSERT INTO public.big SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 6) \
             FROM generate_series(1, 20000) g;",
        );
        let work = Workspace::new();
        let mut recipients = vec![work.keygen("admin.key")];
        recipients.extend((1..admins).map(|_| crmvault::crypto::generate_identity().to_public().to_string()));
        let repo = work.path("repo").to_str().unwrap().to_string();
        let mut init = vec!["init", "--repo", repo.as_str()];
        for recipient in &recipients {
            init.extend(["--recipient", recipient.as_str()]);
        }
        work.run(&init).ok();
        work.run(&["backup", "--db", &source.url(), "--repo", &repo]).ok();
        let packs = files_under(&std::path::Path::new(&repo).join("data"));
        let largest = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
        let original = std::fs::read(largest).unwrap();
        assert!(original.len() > 3 * 65_536, "{admins} admins: a pack read in pieces: {} bytes", original.len());
        let mac_line = original.windows(5).position(|w| w == b"\n--- ").unwrap() + 1;
        let header = mac_line + original[mac_line..].iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(header > 4096, admins > 1, "{admins} admins: a header of {header} bytes");

        let restored = TestDb::create(&format!("pieces_{admins}_restored"));
        work.restore(&repo, &restored).ok();
        assert_same_database(&source, &restored);
        // A byte of the first piece, just past the header and its nonce, flipped: refused, and
        // nothing loaded.
        let mut damaged = original.clone();
        damaged[header + 16 + 100] ^= 1;
        std::fs::write(largest, damaged).unwrap();
        let target = TestDb::create(&format!("pieces_{admins}_damaged"));
        let run = work.restore(&repo, &target);
        assert_ne!(run.code, 0, "{admins} admins: {}", run.stdout);
        assert!(target.is_empty(), "{admins} admins: a refused restore leaves the database as it was");
        std::fs::write(largest, original).unwrap();
    }
}
