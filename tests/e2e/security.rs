//! End-to-end: what storage reveals, wrong keys, damaged and missing objects.

use crate::common::*;

const EMAIL: &[u8] = b"zebulon.quartermaine@example-crm.test";
const COMPANY: &[u8] = b"Quixotic Widgets Ltd";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every zstd frame found anywhere in `bytes`, decompressed as far as it goes.
fn zstd_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut frames = Vec::new();
    for start in 0..bytes.len().saturating_sub(4) {
        if bytes[start..start + 4] == MAGIC {
            let mut out = Vec::new();
            let Ok(mut decoder) = zstd::stream::read::Decoder::new(&bytes[start..]) else { continue };
            let _ = std::io::Read::read_to_end(&mut std::io::Read::take(&mut decoder, 64 << 20), &mut out);
            frames.push(out);
        }
    }
    frames
}

#[test]
fn storage_holds_nothing_readable_and_the_backup_host_needs_no_admin_key() {
    let source = TestDb::create("leak");
    source.load_file(&fixture("tests/fixtures/everything.sql"));
    assert!(
        source.sql("SELECT count(*) FROM crm.contacts WHERE email = 'zebulon.quartermaine@example-crm.test'").trim()
            == "1"
    );
    // The admin's key lives elsewhere: the backup host only ever sees the recipient.
    let admin = Workspace::new();
    let recipient = admin.keygen("admin.key");
    let host = Workspace::new();
    let repo = host.path("repo").to_str().unwrap().to_string();
    host.run(&["init", "--repo", &repo, "--recipient", &recipient]).ok();
    host.backup(&source, &repo);
    host.backup(&source, &repo);

    let files = files_under(std::path::Path::new(&repo));
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for needle in [EMAIL, COMPANY] {
            assert!(!contains(&bytes, needle), "{} holds plaintext", file.display());
            for frame in zstd_frames(&bytes) {
                assert!(!contains(&frame, needle), "{} holds plaintext inside a zstd frame", file.display());
            }
        }
    }
    // The writer key is private to the host, and it cannot read data.
    let writer_keys: Vec<_> =
        files_under(&host.config_dir()).into_iter().filter(|f| f.ends_with("writer.key")).collect();
    assert_eq!(writer_keys.len(), 1);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&writer_keys[0]).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // A writer key others could read still works, with a warning that says how to fix it.
    let quiet = host.run(&["snapshots", "--repo", &repo]).ok();
    assert!(!quiet.stderr.contains("chmod"), "{}", quiet.stderr);
    std::fs::set_permissions(&writer_keys[0], std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let warned = host.run(&["snapshots", "--repo", &repo]).ok();
    let expected = format!("mode 644 lets others read it; run chmod 600 {}", writer_keys[0].display());
    assert!(warned.stderr.contains(&expected), "{}", warned.stderr);
    assert!(!warned.stderr.contains("AGE-SECRET-KEY"), "{}", warned.stderr);
    std::fs::set_permissions(&writer_keys[0], std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let target = TestDb::create("leak_target");
    host.run(&["restore", "--repo", &repo, "--identity", writer_keys[0].to_str().unwrap(), "--db", &target.url()])
        .fails_with(1, "not a recipient");
    assert!(target.is_empty());
    // ... but it can list what it backed up.
    let listing = host.run(&["snapshots", "--json", "--repo", &repo]).ok().json();
    assert_eq!(listing["snapshots"].as_array().unwrap().len(), 2);
    assert!(listing["snapshots"][0]["contents"]["rows"].as_u64().unwrap() > 1000);
    // Without any key, the listing still shows ids, times and sizes.
    let stranger = Workspace::new();
    let listing = stranger.run(&["snapshots", "--json", "--repo", &repo]).ok().json();
    assert!(listing["snapshots"][0]["bytes_total"].as_u64().unwrap() > 0);
    assert!(listing["snapshots"][0].get("contents").is_none());
    // The admin restores, with the fingerprint `init` printed on the host.
    let fingerprint = host.fingerprint(&repo);
    let restore = ["restore", "--repo", &repo, "--identity", &admin.admin_key(), "--db", &target.url()];
    admin.run(&[&restore[..], &["--trust-snapshot-code", "--fingerprint", &fingerprint]].concat()).ok();
    assert_same_database(&source, &target);
}

#[test]
fn a_wrong_identity_is_refused_and_the_target_is_untouched() {
    let Ready { work, repo, .. } = Scenario::new("wrongkey").crm().init("repo").backup();
    work.keygen("other.key");
    let target = TestDb::create("wrongkey_target");
    let run = work.run(&[
        "restore",
        "--repo",
        &repo,
        "--identity",
        work.path("other.key").to_str().unwrap(),
        "--db",
        &target.url(),
    ]);
    run.fails_with(1, "is not a recipient of this repository");
    assert!(target.is_empty());
}

/// A copy of the repository at `from` with one byte of `file` (relative) flipped.
fn damaged_copy(work: &Workspace, from: &str, file: &std::path::Path, name: &str) -> String {
    let to = work.path(name);
    copy_dir(std::path::Path::new(from), &to);
    let victim = to.join(file);
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&victim, bytes).unwrap();
    to.to_str().unwrap().to_string()
}

#[test]
fn a_flipped_byte_in_any_object_is_found_by_verify_and_stops_a_restore() {
    let Ready { work, repo, .. } = Scenario::new("flip").crm().init("repo").backup();
    work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key(), "--read-data"]).ok();
    let target = TestDb::create("flip_target");
    for (number, file) in files_under(std::path::Path::new(&repo)).iter().enumerate() {
        let relative = file.strip_prefix(&repo).unwrap();
        let name = relative.to_str().unwrap().to_string();
        let copy = damaged_copy(&work, &repo, relative, &format!("damaged{number}"));
        let verify = work.run(&["verify", "--repo", &copy, "--identity", &work.admin_key(), "--read-data"]);
        assert!(
            verify.code == 3 || (name == "config" && verify.code == 1),
            "verify missed a flip in {name}: {} {}",
            verify.stdout,
            verify.stderr
        );
        let shown = name.rsplit('/').next().unwrap();
        assert!(
            verify.stdout.contains(shown) || verify.stderr.contains(shown),
            "verify did not name {name}: {}{}",
            verify.stdout,
            verify.stderr
        );
        // The config and the keys object exist twice (format 7): one damaged copy leaves the
        // repository readable, so a restore may go ahead, from the whole copy. (A flip that
        // leaves `config` parseable changes its fingerprint instead, and is refused.)
        let has_a_copy = name == "config" || name.starts_with("configs/") || name.starts_with("keys/");
        // The audit trail is not what a restore reads: a damaged record is verify's finding.
        let has_a_copy = has_a_copy || name.starts_with("audit/");
        for mode in ["--jobs=2", "--parallel"] {
            let restore = work.restore_with(&copy, &target, &[mode]);
            assert!(!restore.stderr.contains("panicked"));
            if has_a_copy && restore.code == 0 {
                target.sql("DROP SCHEMA crm CASCADE");
                continue;
            }
            assert_eq!(restore.code, 1, "restore {mode} went ahead despite a flip in {name}: {}", restore.stdout);
            assert!(target.is_empty(), "restore {mode} left objects behind after a flip in {name}");
        }
    }
}

/// A backup of the CRM fixture in "repo", copied by `copy` into "copy" (same packs): the path
/// of the copy.
fn backed_up_and_copied(label: &str) -> (Ready, String) {
    let ready = Scenario::new(label).crm().init("repo").backup();
    let copy = ready.work.path("copy").to_str().unwrap().to_string();
    ready.work.run(&["init", "--repo", &copy, "--copy-from", &ready.repo]).ok();
    ready.work.run(&["copy", "--from", &ready.repo, "--to", &copy]).ok();
    (ready, copy)
}

/// A copy whose objects were damaged in storage is repaired from a healthy copy by `copy
/// --repair` (OPERATIONS.md, *Repairing damaged packs*): verified and restored from alone
/// afterwards. Packs a backup wrote to each target apart cannot come from the other: named,
/// exit 3, and nothing there is touched.
#[test]
fn copy_repair_mends_a_copy_from_a_healthy_one_and_names_what_it_cannot() {
    let (Ready { source, work, repo, .. }, copy) = backed_up_and_copied("repair");
    let only = |folder: &str| files_under(&work.path("copy").join(folder)).pop().unwrap();
    let damage = |path: &std::path::Path, at: fn(usize) -> usize| {
        let mut bytes = std::fs::read(path).unwrap();
        let at = at(bytes.len());
        bytes[at] ^= 0x20;
        std::fs::write(path, bytes).unwrap();
    };
    // The pack cut short; the index, and later the snapshot's manifest, each a byte flipped.
    let pack = only("data");
    let length = std::fs::metadata(&pack).unwrap().len();
    std::fs::File::options().write(true).open(&pack).unwrap().set_len(length - 100).unwrap();
    damage(&only("index"), |length| length / 2);
    // verify finds them and marks the pack (then the snapshot is damaged too).
    work.run(&["verify", "--repo", &copy]).fails_with(3, "");
    assert_eq!(files_under(&work.path("copy/damaged")).len(), 1);
    damage(&only("snapshots"), |length| length - 1);
    // A newer snapshot of the source uses the pack too: a plain copy does not copy it (exit 3).
    work.backup(&source, &repo);
    work.run(&["copy", "--from", &repo, "--to", &copy]).fails_with(3, "expected");

    let repaired = work.run(&["copy", "--json", "--repair", "--from", &repo, "--to", &copy]).ok().json();
    assert_eq!(repaired["objects_repaired"], 3, "{repaired}");
    assert_eq!(repaired["markers_cleared"], 1, "{repaired}");
    assert_eq!(repaired["snapshots_copied"].as_array().unwrap().len(), 1, "{repaired}");
    assert!(repaired.get("not_repaired").is_none(), "{repaired}");
    let damaged = work.path("copy/damaged");
    assert!(!damaged.exists() || files_under(&damaged).is_empty(), "the marker is left");
    work.run(&["verify", "--repo", &copy, "--identity", &work.admin_key(), "--read-data"]).ok();
    let target = TestDb::create("repair_target");
    work.restore(&copy, &target).ok();
    assert_same_database(&source, &target);
    // Nothing left to mend: nothing written. A marker left on a whole pack only goes.
    let pack_id = pack.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::create_dir_all(&damaged).unwrap();
    std::fs::write(damaged.join(&pack_id), b"").unwrap();
    let again = work.run(&["copy", "--json", "--repair", "--from", &repo, "--to", &copy]).ok().json();
    assert_eq!((again["objects_repaired"].as_u64(), again["objects_copied"].as_u64()), (Some(0), Some(0)));
    assert_eq!(again["markers_cleared"], 1, "{again}");
    assert!(!damaged.join(&pack_id).exists());

    // A target a backup wrote beside the first (its own packs): what it lacks is not in the
    // first under those names.
    let beside = work.path("beside").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &beside, "--copy-from", &repo]).ok();
    work.backup_with(&source, &repo, &["--repo", &beside]);
    let lost = files_under(&work.path("beside/data")).pop().unwrap();
    std::fs::remove_file(&lost).unwrap();
    let stored = || ["data", "index", "snapshots"].map(|folder| files_under(&work.path("beside").join(folder)));
    let before = stored();
    // (`latest`, which it holds: the older snapshots it never had are not copied here.)
    let run = work.run(&["copy", "--json", "--repair", "--from", &repo, "--to", &beside, "latest"]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["ok"], false, "{report}");
    let not_repaired = report["not_repaired"].to_string();
    assert!(not_repaired.contains(lost.file_name().unwrap().to_str().unwrap()), "{report}");
    assert!(not_repaired.contains("does not hold it"), "{report}");
    assert_eq!(stored(), before);
}

/// A source whose object of the right name holds other bytes (damaged there too, or planted by
/// whoever writes it) mends nothing: the destination's object stays as it was, named, exit 3.
#[test]
fn copy_repair_writes_nothing_the_source_holds_under_the_right_name_with_other_bytes() {
    let (Ready { work, repo, .. }, copy) = backed_up_and_copied("repair_bad_source");
    let pack = files_under(&work.path("copy/data")).pop().unwrap();
    let length = std::fs::metadata(&pack).unwrap().len();
    std::fs::File::options().write(true).open(&pack).unwrap().set_len(length - 100).unwrap();
    let before = std::fs::read(&pack).unwrap();
    let source_pack = work.path("repo").join(pack.strip_prefix(work.path("copy")).unwrap());
    let mut bytes = std::fs::read(&source_pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&source_pack, bytes).unwrap();
    let run = work.run(&["copy", "--json", "--repair", "--from", &repo, "--to", &copy]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["objects_repaired"], 0, "{report}");
    assert!(report["not_repaired"].to_string().contains("too (its bytes do not match its name)"), "{report}");
    assert_eq!(std::fs::read(&pack).unwrap(), before);
}

/// A damaged destination snapshot is not written again from a source object that claims
/// another config (forged there, or written with a retired key): `copy` leaves such a one out,
/// and so does the repair, naming it.
#[test]
fn copy_repair_takes_no_source_snapshot_written_under_another_config() {
    let (Ready { work, repo, .. }, copy) = backed_up_and_copied("repair_other_config");
    let ours = files_under(&work.path("copy/snapshots")).pop().unwrap();
    let mut bytes = std::fs::read(&ours).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&ours, &bytes).unwrap();
    let theirs = work.path("repo/snapshots").join(ours.file_name().unwrap());
    rewrite_header(&theirs, |header| header["config_hash"] = serde_json::json!("ab".repeat(32)));

    let run = work.run(&["copy", "--json", "--repair", "--from", &repo, "--to", &copy]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    assert!(report["not_repaired"].to_string().contains("written under another config"), "{report}");
    assert_eq!(std::fs::read(&ours).unwrap(), bytes, "the damaged snapshot was written over");
}

/// On storage that refuses deletes (Object Lock, credentials without the right), `copy
/// --repair` still mends a damaged pack, which it writes over, and says that verify's marker
/// stays instead of failing the repair on it (made here with `chattr +i`, root only).
#[test]
fn copy_repair_mends_where_deletes_are_refused_and_says_the_marker_stays() {
    let (Ready { source, work, repo, .. }, copy) = backed_up_and_copied("repair_nodelete");
    let pack = files_under(&work.path("copy/data")).pop().unwrap();
    let length = std::fs::metadata(&pack).unwrap().len();
    std::fs::File::options().write(true).open(&pack).unwrap().set_len(length - 100).unwrap();
    work.run(&["verify", "--repo", &copy]).fails_with(3, "");
    let damaged = work.path("copy/damaged");
    let Some(_guard) = Immutable::set(std::slice::from_ref(&damaged)) else {
        return skip("chattr +i needs root and a file system that has it");
    };
    let run = work.run(&["copy", "--json", "--repair", "--from", &repo, "--to", &copy]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!((report["objects_repaired"].as_u64(), report["markers_cleared"].as_u64()), (Some(1), Some(0)));
    assert!(run.stderr.contains("stays, though its pack is whole"), "{}", run.stderr);
    assert_eq!(files_under(&damaged).len(), 1);
    work.run(&["verify", "--repo", &copy, "--identity", &work.admin_key(), "--read-data"]).ok();
    let target = TestDb::create("repair_nodelete_target");
    work.restore(&copy, &target).ok();
    assert_same_database(&source, &target);
}

#[test]
fn a_deleted_object_is_found_by_plain_verify() {
    let Ready { work, repo, .. } = Scenario::new("deleted").crm().init("repo").backup();
    let stranger = Workspace::new(); // no writer key, no identity: structure only
    stranger.run(&["verify", "--repo", &repo]).ok();
    for prefix in ["data", "index", "keys"] {
        let copy = work.path(&format!("without-{prefix}"));
        copy_dir(std::path::Path::new(&repo), &copy);
        let victim = files_under(&copy.join(prefix)).into_iter().next().unwrap();
        std::fs::remove_file(&victim).unwrap();
        let run = stranger.run(&["verify", "--json", "--repo", copy.to_str().unwrap()]);
        assert_eq!(run.code, 3, "deleting {} went unnoticed: {}", victim.display(), run.stdout);
        let report = run.json();
        let problem = &report["problems"][0];
        assert!(
            problem["object"].as_str().unwrap().ends_with(victim.file_name().unwrap().to_str().unwrap()),
            "{report}"
        );
        assert!(problem["problem"].as_str().unwrap().contains("missing"), "{report}");
    }
}

#[test]
fn a_parallel_restore_that_fails_midway_removes_what_it_created() {
    let Ready { source, work, repo, .. } =
        Scenario::new("parallel_undo").fixture("tests/fixtures/everything.sql").filler().init("repo").backup();
    // The largest pack holds table data, which is read only after the schema is committed.
    let packs = files_under(&work.path("repo/data"));
    let largest = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let copy = damaged_copy(&work, &repo, largest.strip_prefix(&repo).unwrap(), "damaged");
    let target = TestDb::create("parallel_undo_target");
    let run = work.restore_with(&copy, &target, &["--parallel", "--trust-snapshot-code"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("corrupt") && run.stderr.contains("what the restore created was removed"),
        "{}",
        run.stderr
    );
    // No table, schema or large object is left behind.
    assert!(
        target.is_empty(),
        "{}",
        target.sql("SELECT relname FROM pg_class WHERE relnamespace <> 'pg_catalog'::regnamespace")
    );
    work.restore_with(&repo, &target, &["--parallel", "--trust-snapshot-code"]).ok();
    assert_same_database(&source, &target);
}

/// A database's owner may give it a `role` setting, and every session then starts as that
/// role, a superuser's backup included: row security hid rows from it and the backup held
/// part of a table without a word. The backup acts as the role it connects as, with row
/// security off: a role the policies would hide rows from fails the backup instead.
#[test]
fn a_role_set_on_the_database_hides_no_rows_from_the_backup() {
    let pid = std::process::id();
    let (hider, reader) = (format!("cv_hider_{pid}"), format!("cv_rls_reader_{pid}"));
    for role in [&hider, &reader] {
        psql("postgres", &format!("DROP ROLE IF EXISTS {role}"));
    }
    psql("postgres", &format!("CREATE ROLE {hider} NOLOGIN; CREATE ROLE {reader} LOGIN"));
    let setup = format!(
        "CREATE TABLE public.hidden (id int PRIMARY KEY); INSERT INTO public.hidden SELECT generate_series(1, 10); \
         ALTER TABLE public.hidden ENABLE ROW LEVEL SECURITY; ALTER TABLE public.hidden FORCE ROW LEVEL SECURITY; \
         CREATE POLICY few ON public.hidden USING (id <= 3); \
         GRANT USAGE ON SCHEMA public TO {hider}, {reader}; GRANT SELECT ON public.hidden TO {hider}, {reader}"
    );
    let Ready { source, work, repo, .. } = Scenario::new("rls_role").sql(&setup).init("repo").backup();
    psql("postgres", &format!("ALTER DATABASE {} SET role = '{hider}'", source.name));
    assert_eq!(source.sql("SELECT count(*) FROM public.hidden").trim(), "3", "the setting hides rows from a superuser");
    work.backup(&source, &repo);
    let restored = TestDb::create("rls_role_restored");
    work.restore(&repo, &restored).ok();
    assert_eq!(restored.sql("SELECT count(*) FROM public.hidden").trim(), "10", "the backup held every row");

    // A login that the policies hide rows from: the backup fails, it does not save 3 of 10.
    let url = source.url().replacen("postgres@", &format!("{reader}@"), 1);
    let run = work.run(&["backup", "--db", &url, "--repo", &repo]);
    assert_ne!(run.code, 0, "a backup missing rows succeeded: {}", run.stdout);
    assert!(run.stderr.contains("row-level security"), "{}", run.stderr);
    drop(restored);
    drop(source);
    psql("postgres", &format!("DROP ROLE {hider}; DROP ROLE {reader}"));
}

/// Whoever controls the backup host chooses `pg_dump` (`--pg-dump`), and so the schema script a
/// whole restore into an empty database runs: a statement pg_dump does not write is refused
/// before anything runs, and code of the snapshot's own that a superuser's restore would run
/// (here a function a check constraint calls for every row, or a materialized view's query
/// refreshed as the restoring superuser) needs `--trust-snapshot-code`.
#[test]
fn a_whole_restore_runs_no_statement_pg_dump_does_not_write_nor_the_snapshots_code_as_a_superuser() {
    let Ready { source, work, repo, .. } = Scenario::new("whole_forged").crm().init("repo");
    // Where the server's user (not this test's) may write.
    let marker = std::path::PathBuf::from(format!("/tmp/cv_whole_forged_{}", std::process::id()));
    std::fs::remove_file(&marker).ok();
    let evil = DropRole(format!("cv_evil_{}", std::process::id()));
    let copy = format!("COPY (SELECT 1) TO PROGRAM 'touch {}';", marker.display());
    let role = format!("CREATE ROLE {} SUPERUSER LOGIN;", evil.0);
    let fake = forging_pg_dump_sections(&work, "COMMENT", &[&copy, &role], &["COMMIT;"]);
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    let target = TestDb::create("whole_forged_target");
    let no_role = || psql("postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{}'", evil.0));
    for options in [&["latest"][..], &["--parallel", "latest"]] {
        let run = work.restore_with(&repo, &target, options);
        let run = run.fails_with(1, "the snapshot's schema script holds statements pg_dump does not write");
        for said in ["COPY statement (COPY (SELECT 1) TO PROGRAM", "CREATE statement (CREATE ROLE", "COMMIT statement"]
        {
            assert!(run.stderr.contains(said), "{options:?} {said}: {}", run.stderr);
        }
        assert!(!marker.exists(), "{options:?}: the program ran");
        assert_eq!(no_role().trim(), "0", "{options:?}: the role was made");
        assert!(target.is_empty(), "{options:?}");
    }

    // A function a check constraint calls, that runs a program for each row loaded (one that
    // reads what COPY writes to it: a program gone first fails the COPY with a broken pipe).
    let function = format!(
        "CREATE FUNCTION public.f(x integer) RETURNS integer LANGUAGE plpgsql AS $$ BEGIN \
         EXECUTE 'COPY (SELECT 1) TO PROGRAM ''cat >/dev/null; touch {}'''; RETURN x; END $$;",
        marker.display()
    );
    let check = "ALTER TABLE crm.companies ADD CONSTRAINT forged CHECK ((public.f(id) IS NOT NULL));";
    let fake = forging_pg_dump_sections(&work, "FUNCTION", &[&function, check], &[]);
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    for options in [&["latest"][..], &["--parallel", "latest"]] {
        let run = work.restore_with(&repo, &target, options);
        let needle = "the snapshot's own code could run while this restore loads, with a superuser's rights: public.f";
        let run = run.fails_with(1, needle);
        assert!(run.stderr.contains("--trust-snapshot-code"), "{}", run.stderr);
        assert!(!marker.exists(), "{options:?}: the program ran");
        assert!(target.is_empty(), "{options:?}");
    }
    // Trusted, it runs as written: loading the rows runs the program.
    work.restore_with(&repo, &target, &["--trust-snapshot-code", "latest"]).ok();
    assert!(marker.exists(), "the function ran");
    std::fs::remove_file(&marker).ok();
    assert_eq!(target.sql("SELECT count(*) FROM crm.companies"), source.sql("SELECT count(*) FROM crm.companies"));
    // A materialized view refreshed as the restoring superuser reads what only a superuser may
    // (every role's password hash); one its owner refreshes, a role without such rights, is
    // restored without a word.
    let view = "CREATE MATERIALIZED VIEW public.leak AS SELECT a.rolname AS k, a.rolpassword AS v \
                FROM pg_catalog.pg_authid a WITH NO DATA;";
    let fake =
        forging_pg_dump_sections(&work, "MATERIALIZED VIEW", &[view], &["REFRESH MATERIALIZED VIEW public.leak;"]);
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    let clean = TestDb::create("whole_forged_view");
    let run = work.restore_with(&repo, &clean, &["latest"]);
    run.fails_with(1, "materialized view public.leak (read by a refresh as you)");
    assert!(clean.is_empty());
    // (The fixture's views too: a refresh could read them, as their owner.)
    let owned = format!(
        "{view}\nALTER MATERIALIZED VIEW public.leak OWNER TO {0};\nALTER VIEW crm.contact_directory OWNER TO {0};\n\
         ALTER VIEW crm.pipeline OWNER TO {0};",
        evil.0
    );
    psql("postgres", &format!("CREATE ROLE {} NOLOGIN", evil.0));
    let fake =
        forging_pg_dump_sections(&work, "MATERIALIZED VIEW", &[&owned], &["REFRESH MATERIALIZED VIEW public.leak;"]);
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    let run = work.restore_with(&repo, &clean, &["latest"]);
    run.fails_with(1, "permission denied for table pg_authid");
    assert!(clean.is_empty());
    // A type named `trigger` in the session's temporary schema, where the server looks before
    // `pg_catalog`: `RETURNS trigger` then makes a function any default may call.
    let domain = "CREATE DOMAIN pg_temp.trigger AS integer;";
    let function = format!(
        "CREATE FUNCTION public.pwn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {}'''; RETURN 1; END $$;",
        marker.display()
    );
    let default = "ALTER TABLE crm.contacts ADD COLUMN z integer DEFAULT public.pwn();";
    let fake = forging_pg_dump_sections(&work, "FUNCTION", &[domain, &function, default], &[]);
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
    let run = work.restore_with(&repo, &clean, &["latest"]);
    run.fails_with(1, "a name in the session's temporary schema");
    assert!(!marker.exists(), "the program ran");
    assert!(clean.is_empty());

    // An escape string goes on over lines with its backslashes: `'\' '` is one literal to the
    // server, so the call between its quotes runs (a server file written); and a grant's list
    // with a `pg_catalog` table after one of the database's (every user reads password hashes).
    let hidden = format!(
        "ALTER TABLE crm.deals ADD CONSTRAINT forged CHECK ((pg_catalog.length(E'x'\n'\\' ' || \
         pg_catalog.lo_export(pg_catalog.lo_from_bytea(0, '\\x6f776e6564'::bytea), $p${}$p$)::text || ' -- '\n) > 0));",
        marker.display()
    );
    let listed = "GRANT SELECT ON TABLE crm.deals, pg_catalog.pg_authid TO PUBLIC;";
    // A grant on a shared catalog is the database's own row of pg_class.
    let authid_acl =
        |db: &TestDb| db.sql("SELECT coalesce(relacl::text, '') FROM pg_class WHERE oid = 'pg_authid'::regclass");
    let acl_before = authid_acl(&TestDb::create("whole_forged_acl"));
    // A trigger function in `internal` (its language a dollar-quoted string) is any built-in
    // under a name of the snapshot's, callable as any function; a view over pg_authid and a
    // SECURITY DEFINER trigger function, the restoring superuser's, are its rights for anyone.
    let internal = "CREATE FUNCTION crm.stamp(oid, text) RETURNS trigger LANGUAGE $$internal$$ AS $$be_lo_export$$;";
    let stamped = format!(
        "ALTER TABLE crm.deals ADD CONSTRAINT stamped CHECK ((crm.stamp(pg_catalog.lo_from_bytea(0, \
         '\\x6f776e6564'::bytea), ('{}'::text || id)) IS NOT NULL));",
        marker.display()
    );
    let view = "CREATE VIEW crm.roles AS SELECT pg_authid.rolname, pg_authid.rolsuper FROM pg_catalog.pg_authid;";
    let granted = "GRANT SELECT, UPDATE ON TABLE crm.roles TO PUBLIC;";
    let definer =
        "CREATE FUNCTION crm.audit() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$BEGIN RETURN NEW; END$$;";
    let doors = "would let any role act with a superuser's rights in the restored database";
    for (pre, post, said) in [
        (&[hidden.as_str()][..], &[][..], "an escape string (E'…')"),
        (&[], &[listed], "GRANT of an object of the server's own"),
        (&[internal, stamped.as_str()], &[], "with a superuser's rights: crm.stamp"),
        (&[view], &[granted], "rule \"_RETURN\" on crm.roles over pg_catalog.pg_authid"),
        (&[definer], &[], doors),
    ] {
        let fake = forging_pg_dump_sections(&work, "ACL", pre, post);
        work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
        for options in [&["latest"][..], &["--parallel", "latest"], &["--create", "latest"], &["--clean", "latest"]] {
            let target = TestDb::create("whole_forged_hidden");
            match options[0] {
                "--create" => drop(psql("postgres", &format!("DROP DATABASE {}", target.name))),
                // What --clean empties is no live data: every check is made.
                "--clean" => drop(target.sql("CREATE TABLE public.junk (a integer)")),
                _ => {}
            }
            work.restore_with(&repo, &target, options).fails_with(1, said);
            assert!(!marker.exists(), "{options:?}: the server wrote the file");
            if options[0] != "--create" {
                assert_eq!(authid_acl(&target), acl_before, "{options:?}: pg_authid granted");
                assert_eq!(target.is_empty(), options[0] != "--clean", "{options:?}");
            }
        }
    }
}

/// A function called in field notation, `(expr).pg_read_file`, is called all the same: refused
/// in a partition's bounds (which the server evaluates as it makes the partition, keeping only
/// the value) and in a constraint added to an extension's domain (run for every row of a column
/// of that domain). The database's own sequences and notifications stay the snapshot's to use,
/// whatever object calls them, in a restore into an empty database.
#[test]
fn a_call_in_field_notation_is_refused_and_the_databases_own_calls_are_not() {
    let Ready { source, work, repo, .. } = Scenario::new("field_call").crm().init("repo");
    source.sql(
        "CREATE SEQUENCE crm.ticket_seq; \
         CREATE VIEW crm.next_ticket AS SELECT pg_catalog.nextval('crm.ticket_seq'::pg_catalog.regclass) AS next; \
         CREATE RULE announce AS ON INSERT TO crm.companies DO ALSO SELECT pg_catalog.pg_notify('companies', NEW.id::text)",
    );
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo]).ok();
    for (at, options) in [&["latest"][..], &["--parallel", "latest"]].into_iter().enumerate() {
        let target = TestDb::create(&format!("field_call_own{at}"));
        work.restore_with(&repo, &target, options).ok();
        assert_eq!(target.sql("SELECT count(*) FROM pg_catalog.pg_rules WHERE rulename = 'announce'").trim(), "1");
        assert_eq!(target.sql("SELECT next FROM crm.next_ticket").trim(), "1", "{options:?}");
    }

    let bound: &[&str] = &[
        "CREATE TABLE crm.notes (body text) PARTITION BY LIST (body);",
        "CREATE TABLE crm.notes_a PARTITION OF crm.notes FOR VALUES IN (((('/etc/hostname'::text).pg_read_file)));",
    ];
    let domain: &[&str] = &[
        "CREATE EXTENSION IF NOT EXISTS lo WITH SCHEMA public;",
        "ALTER DOMAIN public.lo ADD CONSTRAINT forged CHECK ((((VALUE)::text).pg_stat_file IS NULL));",
    ];
    // `USING` runs for every row as a column's type changes, and is kept nowhere.
    let retype: &[&str] =
        &["ALTER TABLE crm.companies ALTER COLUMN name TYPE text USING ((ARRAY['/etc/hostname'])[1].pg_read_file);"];
    let target = TestDb::create("field_call_target");
    for (pre, post, said) in [
        (bound, &[][..], "a partition's bounds that are not literals"),
        (domain, &[], "a call of pg_stat_file"),
        (&[], retype, "ALTER TABLE … ALTER COLUMN … TYPE statement"),
    ] {
        let fake = forging_pg_dump_sections(&work, "TABLE", pre, post);
        work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--pg-dump", &fake]).ok();
        for options in [&["latest"][..], &["--parallel", "latest"]] {
            let run = work.restore_with(&repo, &target, options);
            run.fails_with(1, said);
            assert!(target.is_empty(), "{options:?}");
        }
    }
}

/// Behind the script's vetting, the catalog: the expressions a restore's DDL made that call a
/// function of `pg_catalog` the vetting refuses by name (`calls_made_now`), as PostgreSQL stores
/// them, whatever the statement looked like. Here the SQL is run straight, as a script that got
/// past the vetting would run it.
#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_shows_the_calls_of_server_changing_functions_a_restores_expressions_hold() {
    use crmvault::postgres::part::CHANGING_FUNCTIONS;
    use crmvault::postgres::{Database, LoadSession, ToastCompression};

    let db = TestDb::create("calls");
    // Made before the restore's transaction: not its expressions.
    db.sql("CREATE VIEW public.earlier AS SELECT pg_catalog.pg_read_file('/etc/hostname', 0, 0, true) AS f");
    let database = Database::parse(&db.url()).unwrap();
    let session = LoadSession::open(&database, ToastCompression::ServerDefault, "64MB", None, None).await.unwrap();
    session.begin().await.unwrap();
    let calls = || async {
        let calls = session.calls_made_now(CHANGING_FUNCTIONS).await.unwrap();
        calls.into_iter().map(|(what, function)| format!("{what} calls {function}")).collect::<Vec<_>>()
    };
    // A transaction with no xid yet reads the counter (`age` keeps what it read), another
    // session writes the catalog, then this one takes its xid: that row is not this one's, and
    // asking about it is no error ("transaction ID … is in the future", as `age` had it).
    session.run_script("SELECT pg_catalog.age('3'::pg_catalog.xid);").await.unwrap();
    db.sql("CREATE TABLE public.between_them (x int CHECK (pg_catalog.pg_stat_file('/x', true) IS NULL))");
    assert_eq!(calls().await, Vec::<String>::new());
    assert_eq!(session.written_outside_the_database(&[]).await.unwrap(), Vec::<String>::new());
    // What pg_dump writes: sequences behind defaults (of columns and of a domain), an
    // application's setting read in a policy, expressions of built-ins that change nothing.
    session
        .run_script(
            "CREATE SCHEMA crm; CREATE SEQUENCE crm.s; \
             CREATE DOMAIN crm.ticket AS bigint DEFAULT pg_catalog.nextval('crm.s'::pg_catalog.regclass); \
             CREATE TABLE crm.t (id serial PRIMARY KEY, n crm.ticket, body text CHECK (pg_catalog.length(body) < 100), \
               lower_body text GENERATED ALWAYS AS (pg_catalog.lower(body)) STORED); \
             CREATE INDEX t_lower ON crm.t (pg_catalog.upper(body)) WHERE id > 0; \
             ALTER TABLE crm.t ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY tenant ON crm.t USING (body = pg_catalog.current_setting('app.tenant', true)); \
             CREATE VIEW crm.v AS SELECT pg_catalog.count(*) OVER () AS c, pg_catalog.now() AS at FROM crm.t;",
        )
        .await
        .unwrap();
    assert_eq!(calls().await, Vec::<String>::new());

    // Calls a script written to look like pg_dump's could hide from the vetting: in a check
    // constraint and a domain's (run as rows load), a column's default, a view and a
    // materialized view (run when refreshed), a policy, a rule's condition.
    session
        .run_script(
            "CREATE TABLE crm.u (id int, path text CONSTRAINT reads CHECK (pg_catalog.pg_read_file(path, 0, 1, true) <> ''), \
               note text DEFAULT pg_catalog.set_config('app.x', 'y', false)); \
             CREATE DOMAIN crm.file AS text CONSTRAINT stats CHECK (pg_catalog.pg_stat_file(VALUE, true) IS NULL); \
             CREATE VIEW crm.export AS SELECT pg_catalog.lo_export(1, '/tmp/x') AS done; \
             CREATE MATERIALIZED VIEW crm.query AS SELECT pg_catalog.query_to_xml('SELECT 1', true, true, '') AS x WITH NO DATA; \
             CREATE POLICY waits ON crm.u USING (pg_catalog.pg_try_advisory_lock(id::bigint)); \
             CREATE RULE seq AS ON INSERT TO crm.u WHERE pg_catalog.setval('crm.s'::pg_catalog.regclass, 1) > 0 DO ALSO DELETE FROM crm.t; \
             CREATE TABLE crm.w (path text CONSTRAINT field CHECK (((path).pg_read_file) <> '')); \
             CREATE EXTENSION lo WITH SCHEMA crm; \
             ALTER DOMAIN crm.lo ADD CONSTRAINT added CHECK ((((VALUE)::text).pg_stat_file) IS NULL);",
        )
        .await
        .unwrap();
    let calls = calls().await;
    for expected in [
        // In field notation, `(path).pg_read_file`, a call all the same.
        "constraint field on crm.w calls pg_read_file",
        // The script's constraint on an extension's domain is the script's.
        "constraint added on crm.lo calls pg_stat_file",
        "constraint reads on crm.u calls pg_read_file",
        "default of crm.u.note calls set_config",
        "constraint stats on crm.file calls pg_stat_file",
        "rule \"_RETURN\" of crm.export calls lo_export",
        "rule \"_RETURN\" of crm.query calls query_to_xml",
        "policy waits on crm.u calls pg_try_advisory_lock",
        "rule seq of crm.u calls setval",
    ] {
        assert!(calls.iter().any(|c| c == expected), "{expected} not in {calls:?}");
    }
    assert!(!calls.iter().any(|c| c.contains("crm.t") || c.contains("earlier") || c.contains("ticket")), "{calls:?}");
    session.rollback().await;
}

/// Behind the script's vetting, the catalog: after the pre-data DDL, a restore into an empty
/// database as a superuser refuses code of the snapshot's own that the catalog holds, whatever
/// the statement that made it looked like (`code_made_now`), and before each commit it refuses
/// what the transaction changed outside the database's own schemas (`written_outside_the_database`).
/// Here the SQL is run straight, as a script that got past the vetting would run it.
#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_shows_the_code_and_the_server_changes_a_restore_made_whatever_its_script_looked_like() {
    use crmvault::postgres::part::CONTAINED_EXTENSIONS;
    use crmvault::postgres::{Database, LoadSession, ToastCompression};

    let db = TestDb::create("backstop");
    // Made before the restore's transaction: not its code.
    db.sql("CREATE FUNCTION public.earlier() RETURNS int LANGUAGE sql AS 'SELECT 1'");
    let role = format!("cv_backstop_{}", std::process::id());
    let database = Database::parse(&db.url()).unwrap();
    let session = LoadSession::open(&database, ToastCompression::ServerDefault, "64MB", None, None).await.unwrap();
    session.begin().await.unwrap();
    // What pg_dump writes for a database: trigger functions, an extension on the list, a
    // cast, default privileges, a large object, a publication, grants and owners of its own.
    session
        .run_script(
            "CREATE SCHEMA crm; \
             CREATE FUNCTION crm.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$; \
             CREATE EXTENSION pgcrypto WITH SCHEMA crm; \
             CREATE TABLE crm.t (id int PRIMARY KEY, body text); \
             CREATE DOMAIN crm.code AS text; \
             CREATE CAST (crm.code AS int) WITH INOUT; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA crm GRANT SELECT ON TABLES TO PUBLIC; \
             SELECT pg_catalog.lo_create(424242); \
             CREATE PUBLICATION cv_backstop_pub FOR TABLE crm.t; \
             GRANT SELECT ON crm.t TO PUBLIC; COMMENT ON EXTENSION pgcrypto IS 'x'; \
             CREATE TYPE crm.floatrange AS RANGE (subtype = float8); \
             CREATE EXTENSION bloom WITH SCHEMA crm; \
             REVOKE ALL ON LANGUAGE plpgsql FROM PUBLIC; GRANT ALL ON LANGUAGE plpgsql TO PUBLIC;",
        )
        .await
        .unwrap();
    assert_eq!(session.code_made_now(CONTAINED_EXTENSIONS).await.unwrap(), Vec::<String>::new());
    assert_eq!(session.written_outside_the_database(&[]).await.unwrap(), Vec::<String>::new());

    // Code disguised: a function whose `trigger` is a domain, an aggregate, a trigger made
    // before the rows load, an extension off the list, an event trigger.
    session
        .run_script(
            "CREATE DOMAIN crm.\"trigger\" AS int; \
             CREATE FUNCTION crm.disguised() RETURNS crm.\"trigger\" LANGUAGE sql AS 'SELECT 1'; \
             CREATE AGGREGATE crm.total(int) (SFUNC = int4pl, STYPE = int); \
             CREATE TRIGGER early BEFORE INSERT ON crm.t FOR EACH ROW EXECUTE FUNCTION crm.touch(); \
             CREATE EXTENSION tablefunc WITH SCHEMA crm; \
             CREATE FUNCTION crm.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$; \
             CREATE EVENT TRIGGER cv_backstop_evt ON ddl_command_start EXECUTE FUNCTION crm.on_ddl(); \
             CREATE OPERATOR crm.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = pg_catalog.int4eq); \
             CREATE DOMAIN crm.num AS numeric; CREATE CAST (crm.num AS integer) WITH FUNCTION pg_catalog.int4(numeric); \
             CREATE TEXT SEARCH TEMPLATE crm.tmpl (INIT = pg_catalog.dsimple_init, LEXIZE = pg_catalog.dsimple_lexize); \
             CREATE FUNCTION crm.stamp(oid, text) RETURNS trigger LANGUAGE internal AS 'be_lo_export';",
        )
        .await
        .unwrap();
    let code = session.code_made_now(CONTAINED_EXTENSIONS).await.unwrap();
    for expected in [
        "function crm.disguised()",
        "function crm.total(integer)",
        "function crm.on_ddl()",
        "trigger early on crm.t",
        "extension tablefunc",
        "event trigger cv_backstop_evt",
        "operator crm.===(integer,integer)",
        "cast crm.num AS integer",
        "text search template tmpl",
        // A trigger function in C or internal may be called as any function is.
        "function crm.stamp(oid,text)",
    ] {
        assert!(code.iter().any(|c| c == expected), "{expected} not in {code:?}");
    }
    let allowed = ["earlier", "touch", "crosstab", "floatrange", "bloom"];
    assert!(!code.iter().any(|c| allowed.iter().any(|a| c.contains(a))), "{code:?}");

    // The server's and pg_catalog's: a grant on a pg_catalog function, a comment on its
    // schema, a role and its setting; a role `--create-roles` made is left out.
    session
        .run_script(&format!(
            "GRANT EXECUTE ON FUNCTION pg_catalog.lo_export(oid, text) TO PUBLIC; \
             COMMENT ON SCHEMA pg_catalog IS 'x'; \
             CREATE ROLE {role}; ALTER ROLE {role} SET work_mem = '1MB'; CREATE ROLE {role}_made;"
        ))
        .await
        .unwrap();
    let made = [format!("{role}_made")];
    let as_made = session.roles_state(&made).await.unwrap();
    // Code that ran may have put an operator of its own before the server's: every row
    // `age(xmin) <= 0` asks about would answer no.
    session
        .run_script(
            "CREATE FUNCTION crm.never(integer, integer) RETURNS boolean LANGUAGE sql AS 'SELECT false'; \
             CREATE OPERATOR crm.<= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = crm.never); \
             SELECT pg_catalog.set_config('search_path', 'crm, pg_catalog', false);",
        )
        .await
        .unwrap();
    let outside = session.written_outside_the_database(&made).await.unwrap();
    let lo_export = "function pg_catalog.lo_export(pg_catalog.oid,pg_catalog.text)";
    for expected in [lo_export, "schema pg_catalog", &format!("role {role}")] {
        assert!(outside.iter().any(|o| o == expected), "{expected} not in {outside:?}");
    }
    assert!(!outside.iter().any(|o| o.contains("_made")), "{outside:?}");
    // The roles `--create-roles` made are compared with what they were made as.
    assert_eq!(session.roles_state(&made).await.unwrap(), as_made);
    session.run_script(&format!("ALTER ROLE {role}_made LOGIN;")).await.unwrap();
    assert_ne!(session.roles_state(&made).await.unwrap(), as_made);
    // What would let any role act as a superuser later: a view over pg_catalog, a rule that
    // writes it, a SECURITY DEFINER trigger function, each owned by the restoring superuser;
    // a view over the database's own table is none.
    assert_eq!(session.doors_to_server_rights().await.unwrap(), Vec::<String>::new());
    session
        .run_script(
            "CREATE VIEW crm.own AS SELECT id FROM crm.t; \
             CREATE VIEW crm.roles AS SELECT rolname, rolsuper FROM pg_catalog.pg_authid; \
             CREATE VIEW crm.settings AS SELECT chunk_data FROM pg_toast.pg_toast_2964; \
             CREATE RULE stamp AS ON INSERT TO crm.t DO ALSO UPDATE pg_catalog.pg_authid SET rolsuper = true \
               WHERE rolname = CURRENT_USER; \
             CREATE FUNCTION crm.audit() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$BEGIN RETURN NEW; END$$;",
        )
        .await
        .unwrap();
    let doors = session.doors_to_server_rights().await.unwrap();
    let owner = db.sql("SELECT current_user").trim().to_string();
    for expected in [
        format!("rule \"_RETURN\" on crm.roles over pg_catalog.pg_authid, owned by {owner}"),
        format!("rule stamp on crm.t over pg_catalog.pg_authid, owned by {owner}"),
        // A shared catalog's TOAST table: pg_db_role_setting's, every database's settings.
        format!("rule \"_RETURN\" on crm.settings over pg_toast.pg_toast_2964, owned by {owner}"),
        format!("function crm.audit() (SECURITY DEFINER), owned by {owner}"),
    ] {
        assert!(doors.contains(&expected), "{expected} not in {doors:?}");
    }
    assert!(!doors.iter().any(|d| d.contains("crm.own")), "{doors:?}");
    session.rollback().await;
    assert_eq!(db.sql(&format!("SELECT count(*) FROM pg_roles WHERE rolname LIKE '{role}%'")).trim(), "0");
}

/// A pack found damaged is stored again by the next backup, in a pack of its own: verify
/// `--read-data` then names the damaged pack, not the new one, and proves the chunks the new
/// snapshot reads from the new pack there (both packs hold them; the older snapshot's index
/// came first, and the read loop once took every such chunk from the damaged pack).
#[test]
fn a_pack_stored_again_after_damage_is_read_and_not_blamed_for_the_old_ones_fault() {
    let Ready { source, work, repo, .. } = Scenario::new("stored_again").crm().init("repo").backup();
    let packs = files_under(&work.path("repo/data"));
    let largest = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap().clone();
    let mut bytes = std::fs::read(&largest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&largest, bytes).unwrap();
    // verify marks it; the next backup stores its chunks again.
    work.run(&["verify", "--repo", &repo]).fails_with(3, "");
    let second = work.backup(&source, &repo);
    let second = second["snapshot_id"].as_str().unwrap().to_string();
    let new_packs: Vec<_> = files_under(&work.path("repo/data")).into_iter().filter(|p| !packs.contains(p)).collect();
    assert!(!new_packs.is_empty(), "the next backup stored nothing again");

    let run = work.run(&["verify", "--json", "--repo", &repo, "--identity", &work.admin_key(), "--read-data"]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    let damaged = largest.file_name().unwrap().to_str().unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["object"].as_str().unwrap().ends_with(damaged)), "{report}");
    for problem in problems {
        let object = problem["object"].as_str().unwrap();
        assert!(
            !new_packs.iter().any(|p| object.ends_with(p.file_name().unwrap().to_str().unwrap())),
            "a pack stored again blamed: {report}"
        );
        assert!(!problem["snapshots"].to_string().contains(&second), "the new snapshot blamed: {report}");
    }
    // Every chunk the new snapshot needs was read from its own packs: it restores, and verify
    // of it alone (by id) finds nothing.
    let target = TestDb::create("stored_again_target");
    work.restore_with(&repo, &target, &[&second]).ok();
    assert_same_database(&source, &target);
}
