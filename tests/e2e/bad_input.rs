//! Bad input gets one clear line on stderr and a non-zero exit, never a panic.

use crate::common::*;

/// The error is exactly one line and says `needle`.
fn one_clear_line(run: Run, code: i32, needle: &str) {
    let run = run.fails_with(code, needle);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "more than one line on stderr: {}", run.stderr);
}

#[test]
fn bad_database_urls_are_refused_in_one_line_without_the_password() {
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let run = work.run(&["backup", "--db", "postgres://backup:Sup3rSecret@127.0.0.1:1/crm", "--repo", &repo]);
    assert!(!run.stderr.contains("Sup3rSecret"), "{}", run.stderr);
    one_clear_line(run, 1, "cannot connect to postgres://backup:***@127.0.0.1:1/crm");
    let run = work.run(&["backup", "--db", &format!("{}/no_such_database_here", server_url()), "--repo", &repo]);
    one_clear_line(run, 1, "does not exist");
    one_clear_line(
        work.run(&["backup", "--db", "postgres://[::1", "--repo", &repo]),
        1,
        "not a valid PostgreSQL connection string",
    );
}

#[test]
fn repository_mistakes_are_explained() {
    let work = Workspace::new();
    let missing = work.path("nowhere").to_str().unwrap().to_string();
    one_clear_line(work.run(&["snapshots", "--repo", &missing]), 1, "no crmvault repository at");
    let repo = work.init_repo("repo");
    let recipient = work.keygen("second.key");
    one_clear_line(
        work.run(&["init", "--repo", &repo, "--recipient", &recipient]),
        1,
        "already holds a crmvault repository",
    );
    one_clear_line(
        work.run(&["init", "--repo", work.path("r2").to_str().unwrap(), "--recipient", "age1nonsense"]),
        1,
        "is not an age X25519 recipient",
    );
    one_clear_line(
        work.run(&["init", "--repo", work.path("r3").to_str().unwrap()]),
        1,
        "needs at least one --recipient",
    );
    // A copy refused (no source there; not the repository the fingerprint names).
    let copy = work.path("r4").to_str().unwrap().to_string();
    one_clear_line(work.run(&["init", "--copy-from", &missing, "--repo", &copy]), 1, "no crmvault repository at");
    let other = "0000-0000-0000-0000-0000-0000-0000-0000";
    one_clear_line(
        work.run(&["init", "--copy-from", &repo, "--repo", &copy, "--fingerprint", other]),
        1,
        "not the repository you trust",
    );
    // A target holding other files, given after a new one and before one under new folders.
    std::fs::create_dir(work.path("full")).unwrap();
    std::fs::write(work.path("full").join("file"), b"x").unwrap();
    let full = work.path("full").to_str().unwrap().to_string();
    let (r5, r6) = (work.path("r5").to_str().unwrap().to_string(), work.path("r6/a/b").to_str().unwrap().to_string());
    one_clear_line(
        work.run(&["init", "--repo", &r5, "--repo", &full, "--repo", &r6, "--recipient", &recipient]),
        1,
        "already holds other files",
    );
    for refused in ["r2", "r3", "r4", "r5", "r6"] {
        assert!(!work.path(refused).exists(), "a refused init left {refused} behind");
    }
    one_clear_line(work.run(&["backup", "--db", "x", "--repo", "gs://bucket/crm"]), 1, "unsupported scheme gs://");
    let run = work
        .command()
        .args(["snapshots", "--repo", "s3://bucket/crm"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("no S3 credentials"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run = work
        .command()
        .args(["snapshots", "--repo", "s3://bucket/crm?endpoint=http://backup.example.com:9000"])
        .env("AWS_ACCESS_KEY_ID", "AKIA")
        .env("AWS_SECRET_ACCESS_KEY", "SECRET")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("refusing plain HTTP"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // A backup host without the writer key.
    let other_host = Workspace::new();
    let db = TestDb::create("nowriter");
    one_clear_line(other_host.run(&["backup", "--db", &db.url(), "--repo", &repo]), 1, "no writer key for repository");
    // A repository from the future, and one of format 1 (before list chunks): refused, with
    // what to do.
    for (version, expected) in [
        (99, "uses repository format 99, this crmvault reads formats 2 to 7; upgrade crmvault"),
        (1, "uses repository format 1, this crmvault reads formats 2 to 7; format 1 was a development format"),
    ] {
        let other = work.path(&format!("format-{version}"));
        std::fs::create_dir_all(&other).unwrap();
        let config = std::fs::read_to_string(work.path("repo/config")).unwrap();
        let current = format!("\"version\": {}", crmvault::repo::FORMAT_VERSION);
        assert!(config.contains(&current), "{config}");
        std::fs::write(other.join("config"), config.replace(&current, &format!("\"version\": {version}"))).unwrap();
        one_clear_line(work.run(&["snapshots", "--repo", other.to_str().unwrap()]), 1, expected);
    }
}

/// A repository folder the user running crmvault may not look into (its parent's permissions
/// changed, another user's folder) is said to be out of reach, not a place without a repository
/// ("run `crmvault init` first") nor, where this machine's pin names it, backups deleted.
#[test]
fn a_repository_folder_the_user_may_not_enter_is_said_so_not_called_empty() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let work = Workspace::new();
    // Root enters every folder: the commands run as `nobody` then.
    let as_root = std::fs::metadata(work.path("")).unwrap().uid() == 0;
    let (parent, config) = (work.path("shelf"), work.path("nobody-config"));
    for folder in [&parent, &config] {
        std::fs::create_dir(folder).unwrap();
        if as_root {
            std::os::unix::fs::chown(folder, Some(65534), Some(65534)).unwrap();
        }
    }
    std::fs::set_permissions(work.path(""), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| {
        let mut command = work.command_for(if as_root { "setpriv" } else { env!("CARGO_BIN_EXE_crmvault") });
        if as_root {
            command.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_crmvault")]);
        }
        Run::from(&command.env("CRMVAULT_CONFIG_DIR", &config).args(args).output().unwrap())
    };
    let key = config.join("admin.key");
    let recipient = run(&["keygen", "-o", key.to_str().unwrap()]).ok().stdout.trim().to_string();
    let repo = parent.join("repo").to_str().unwrap().to_string();
    run(&["init", "--repo", &repo, "--recipient", &recipient]).ok();
    // This user's pin now names the place.
    run(&["snapshots", "--repo", &repo]).ok();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o700)).unwrap();
    if as_root {
        std::os::unix::fs::chown(&parent, Some(0), Some(0)).unwrap();
    }
    let snapshots = run(&["snapshots", "--repo", &repo]);
    assert!(!snapshots.stderr.contains("init") && !snapshots.stderr.contains("deleted"), "{}", snapshots.stderr);
    one_clear_line(snapshots, 1, "Permission denied (os error 13); the user running crmvault needs access");
    // Nor is a new repository started there.
    let elsewhere = parent.join("new").to_str().unwrap().to_string();
    let init = run(&["init", "--repo", &elsewhere, "--recipient", &recipient]);
    one_clear_line(init, 1, "Permission denied (os error 13); the user running crmvault needs access");
}

#[test]
fn garbage_keys_and_damaged_snapshots_are_named() {
    let Ready { work, repo, report, .. } = Scenario::new("garbage").crm().init("repo").backup();
    let snapshot = report["snapshot_id"].as_str().unwrap().to_string();
    let target = TestDb::create("garbage_target");
    std::fs::write(work.path("garbage.key"), "AGE-SECRET-KEY-1THISISNOTAKEY\n").unwrap();
    let run = work.run(&[
        "restore",
        "--repo",
        &repo,
        "--identity",
        work.path("garbage.key").to_str().unwrap(),
        "--db",
        &target.url(),
    ]);
    assert!(!run.stderr.contains("THISISNOTAKEY"), "a secret-looking line was echoed");
    one_clear_line(run, 1, "is not an age identity file");
    let run = work.run(&[
        "restore",
        "--repo",
        &repo,
        "--identity",
        work.path("absent.key").to_str().unwrap(),
        "--db",
        &target.url(),
    ]);
    one_clear_line(run, 1, "absent.key");
    one_clear_line(
        work.run(&["restore", "--repo", &repo, "--identity", &work.admin_key(), "--db", &target.url(), "ffff0000"]),
        1,
        "no snapshot ffff0000",
    );
    one_clear_line(
        work.run(&["restore", "--repo", &repo, "--identity", &work.admin_key(), "--db", &target.url(), "zz"]),
        1,
        "is not a snapshot id",
    );

    // Truncate the snapshot object.
    let path = work.path("repo/snapshots").join(&snapshot);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..40]).unwrap();
    one_clear_line(
        work.run(&["restore", "--repo", &repo, "--identity", &work.admin_key(), "--db", &target.url()]),
        1,
        "is corrupt",
    );
    assert!(target.is_empty());
    let run = work.run(&["verify", "--repo", &repo]);
    assert_eq!(run.code, 3, "{}", run.stdout);
    assert!(run.stdout.contains(&snapshot[..12]) || run.stdout.contains(&snapshot), "{}", run.stdout);
}

#[test]
fn pg_dump_problems_are_explained() {
    let source = TestDb::create("pgdump");
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let run = work.run(&["backup", "--db", &source.url(), "--repo", &repo, "--pg-dump", "/nonexistent/pg_dump"]);
    one_clear_line(run, 1, "cannot run /nonexistent/pg_dump");
    let old = work.path("old_pg_dump");
    std::fs::write(&old, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = work.run(&["backup", "--db", &source.url(), "--repo", &repo, "--pg-dump", old.to_str().unwrap()]);
    one_clear_line(run, 1, "is pg_dump 9, older than the server");
}

#[test]
fn usage_errors_exit_2() {
    let work = Workspace::new();
    assert_eq!(work.run(&["backup"]).code, 2);
    assert_eq!(work.run(&["restore", "--repo", "x"]).code, 2);
    assert_eq!(work.run(&["frobnicate"]).code, 2);
    assert_eq!(work.run(&["verify", "--repo", "x", "--read-data"]).code, 2);
}

#[test]
fn one_storage_given_twice_is_refused_at_once() {
    // A folder and a link to it, or one folder spelled twice: the backup took both locks of one
    // folder and waited for itself until --lock-wait ran out. Said before anything is locked.
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let link = work.path("repo-link").to_str().unwrap().to_string();
    std::os::unix::fs::symlink(&repo, &link).unwrap();
    let db = TestDb::create("same_storage_twice");
    let url = db.url();
    for second in [link.clone(), format!("{repo}/")] {
        for command in [
            vec!["backup", "--db", &url, "--repo", &repo, "--repo", &second, "--lock-wait", "30s"],
            vec!["snapshots", "--repo", &repo, "--repo", &second],
        ] {
            let started = std::time::Instant::now();
            one_clear_line(work.run(&command), 1, "are the same storage");
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "{command:?} waited for its own lock");
        }
    }
    assert!(!std::path::Path::new(&repo).join("snapshots").read_dir().is_ok_and(|mut d| d.next().is_some()));
}

/// Two repositories given as copies of one (another database's repository named by mistake):
/// each command that reads or writes them as one refuses at once, in one line, and moves no pin.
/// Before, a restore read the second with the first's keys: it restored the first's older
/// snapshot, passing over the second's newer one; a drill failed on that; forget called the
/// second's snapshots tampered with.
#[test]
fn two_repositories_given_as_copies_of_one_are_refused_before_any_pin_moves() {
    let work = Workspace::new();
    let (first, second) = (work.init_repo("first"), work.init_repo("second"));
    let db = TestDb::create("two_repositories");
    db.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50) g");
    work.backup(&db, &first);
    work.backup(&db, &second);
    let pins = |work: &Workspace| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut pins: Vec<_> =
            files_under(&work.config_dir()).into_iter().map(|f| (f.clone(), std::fs::read(f).unwrap())).collect();
        pins.sort();
        pins
    };
    let before = pins(&work);
    let restored = TestDb::unmade("two_repositories_restored");
    let (url, target, key) = (db.url(), restored.url(), work.admin_key());
    let scratch = TestDb::unmade("two_repositories_drill");
    let scratch_url = scratch.url();
    let both = ["--repo", first.as_str(), "--repo", second.as_str()];
    let commands: Vec<Vec<&str>> = vec![
        vec!["backup", "--no-alarm", "--db", &url],
        vec!["restore", "--identity", &key, "--create", "--db", &target, "latest"],
        vec!["drill", "--identity", &key, "--scratch-db", &scratch_url],
        vec!["dump", "--identity", &key, "latest", "--table", "public.t"],
        vec!["forget", "--keep-last", "1"],
        vec!["prune", "--identity", &key],
        vec!["ls", "latest"],
    ];
    for command in commands {
        let mut args = command.clone();
        args.extend_from_slice(&both);
        let run = work.run(&args);
        assert!(run.stdout.trim().is_empty(), "{command:?} wrote {}", run.stdout);
        one_clear_line(run, 1, "are not copies of one repository; they hold repositories");
        assert_eq!(pins(&work), before, "{command:?} moved a pin");
    }
    // A drill refused so still writes its report as failed: last week's PASSED must not stand.
    let report = work.path("drill.md");
    std::fs::write(&report, "drill PASSED\n").unwrap();
    let report_arg = report.to_str().unwrap();
    let args = ["drill", "--identity", &key, "--scratch-db", &scratch_url, "--report", report_arg];
    work.run(&[&args[..], &both[..]].concat()).fails_with(1, "are not copies of one repository");
    let written = std::fs::read_to_string(&report).unwrap();
    assert!(written.contains("FAILED") && !written.contains("PASSED"), "{written}");
    for made in [&restored, &scratch] {
        let count = psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{}'", made.name));
        assert_eq!(count.trim(), "0", "{} was made", made.name);
    }
    // Each alone still works.
    for repo in [&first, &second] {
        work.run(&["forget", "--keep-last", "1", "--repo", repo]).ok();
    }
}

/// A copy replaced in storage by another repository this machine knows (a folder swapped, a
/// bucket prefix pointed elsewhere): `ls` and a repacking `prune`, which need every copy given,
/// name it as replaced in storage, as every other command does, not as two repositories given
/// by mistake.
#[test]
fn a_copy_replaced_by_another_repository_in_storage_is_named_so_by_ls_and_prune() {
    let work = Workspace::new();
    let recipient = work.keygen("admin.key");
    let (a0, a1) = (work.path("a0"), work.path("a1"));
    let (a0, a1) = (a0.to_str().unwrap(), a1.to_str().unwrap());
    work.run(&["init", "--recipient", &recipient, "--repo", a0, "--repo", a1]).ok();
    let other = work.init_repo("other");
    let db = TestDb::create("replaced_copy");
    db.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)");
    work.run(&["backup", "--no-alarm", "--db", &db.url(), "--repo", a0, "--repo", a1]).ok();
    work.backup(&db, &other);
    std::fs::remove_dir_all(a1).unwrap();
    copy_dir(std::path::Path::new(&other), std::path::Path::new(a1));
    let key = work.admin_key();
    for command in [&["ls", "latest"][..], &["prune", "--identity", &key]] {
        let run = work.run(&[command, &["--repo", a0, "--repo", a1]].concat());
        one_clear_line(run, 1, &format!("{a1} held repository"));
    }
}

/// The shared catalogs hold text in the encoding of whichever database wrote it: from a
/// SQL_ASCII database on the same server, a user can give the database backed up a comment,
/// and a setting, that are not UTF-8. The backup reads them (the bytes replaced) and the
/// restore gives them back so; neither panics.
#[test]
fn text_in_the_shared_catalogs_that_is_not_utf8_stops_neither_backup_nor_restore() {
    let Ready { source, work, repo, .. } = Scenario::new("bad_catalog")
        .sql("CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t VALUES (1), (2)")
        .init("repo")
        .backup();
    let ascii = TestDb::create_with("bad_catalog_ascii", "ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'");
    let db = &source.name;
    ascii.sql(&format!(
        "COMMENT ON DATABASE {db} IS E'bad \\xff\\xfe byte'; ALTER DATABASE {db} SET app.note = E'x\\xffy'"
    ));
    let report = work.backup(&source, &repo);
    assert!(report["snapshot_id"].is_string(), "{report}");
    let created = TestDb::unmade("bad_catalog_created");
    work.restore_with(&repo, &created, &["--create", "latest"]).ok();
    let comment = psql(
        "postgres",
        &format!("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{}'", created.name),
    );
    assert_eq!(comment.trim(), "bad \u{fffd}\u{fffd} byte");
    assert_eq!(created.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM public.t").trim(), "1,2");
    drop(ascii);
}

/// `crmvault … 2>&1 | head -1`: the reader of stderr gone, an error is no panic (exit 101) and
/// the run still ends as it would have, its audit record written.
#[test]
fn an_error_with_stderr_closed_by_its_reader_exits_1_and_is_recorded() {
    let Ready { source, work, repo, .. } = Scenario::new("stderr_closed").crm().init("repo");
    let db = source.url();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = work
        .command()
        .args(["backup", "--db", &db, "--repo", &repo, "--table", "crm.no_such_table"])
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let trail = work.run(&["audit", "--json", "--repo", &repo]).ok();
    assert!(trail.stdout.contains("crm.no_such_table") && trail.stdout.contains("\"failed\""), "{}", trail.stdout);
}
