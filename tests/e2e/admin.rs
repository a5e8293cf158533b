//! What an admin meets on the command line (issue 20): mistakes that used to pass in silence,
//! `--json` that records failures too, plain logs for journald and cron mail.

use crate::common::*;

#[test]
fn a_table_pattern_that_matches_nothing_fails_instead_of_storing_an_empty_backup() {
    let Ready { source, work, repo, .. } = Scenario::new("typo").crm().init("repo");
    let db = source.url();
    let run = work.run(&["backup", "--db", &db, "--repo", &repo, "--table", "crm.*", "--table", "nosuch.*"]);
    let run = run.fails_with(1, "table pattern \"nosuch.*\" matches no table of");
    assert!(run.stderr.contains("--table"), "the error points at the flag: {}", run.stderr);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);

    // Patterns that match tables but leave none after the exclusions: a backup of nothing.
    let run = work.run(&["backup", "--db", &db, "--repo", &repo, "--table", "crm.*", "--exclude-table", "crm.*"]);
    run.fails_with(1, "no table of").fails_with(1, "--allow-empty");
    let listing = work.run(&["snapshots", "--json", "--repo", &repo]).ok().json();
    assert_eq!(listing["snapshots"].as_array().unwrap().len(), 0, "nothing was stored: {listing}");

    // Asked for, it is stored (the schema alone).
    let report = work
        .run(&[
            "backup",
            "--json",
            "--db",
            &db,
            "--repo",
            &repo,
            "--exclude-table",
            "*.*",
            "--exclude-table",
            "gone.table",
            "--allow-empty",
        ])
        .ok()
        .json();
    assert_eq!(report["tables"], 0, "{report}");
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w.as_str().unwrap().contains("exclude pattern \"gone.table\" matches no table")),
        "an exclude pattern that matches nothing is worth a warning: {report}"
    );
}

#[test]
fn an_empty_database_is_refused_unless_asked_for() {
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let empty = TestDb::create("nothing_here");
    let run = work.run(&["backup", "--db", &empty.url(), "--repo", &repo]);
    run.fails_with(1, "no table of").fails_with(1, "(0 in the database)");
    work.run(&["backup", "--db", &empty.url(), "--repo", &repo, "--allow-empty"]).ok();
}

#[test]
fn json_records_a_failed_night_too() {
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    // A failure: one JSON document on stdout, the one-line error on stderr as always.
    let run = work.run(&["backup", "--json", "--db", "postgres://backup:Sup3rSecret@127.0.0.1:1/crm", "--repo", &repo]);
    let run = run.fails_with(1, "cannot connect");
    let report = run.json();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["command"], "backup", "{report}");
    assert_eq!(report["exit_code"], 1, "{report}");
    assert!(report["error"].as_str().unwrap().contains("cannot connect to postgres://backup:***@127.0.0.1:1/crm"));
    assert!(report["seconds"].as_f64().is_some(), "{report}");
    assert!(!run.stdout.contains("Sup3rSecret") && !run.stderr.contains("Sup3rSecret"));
    assert_eq!(run.stderr.matches("127.0.0.1:1/crm").count(), 1, "the database is named once: {}", run.stderr);

    // A usage error (exit 2) under --json is a document too.
    let run = work.run(&["backup", "--json", "--no-such-flag"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["exit_code"], 2, "{report}");
    assert_eq!(report["command"], "backup", "{report}");
    assert!(report["error"].as_str().unwrap().contains("--no-such-flag"), "{report}");

    // Success says so.
    let source = TestDb::create("json_ok");
    source.load_file(&fixture("examples/crm.sql"));
    let report = work.backup(&source, &repo);
    assert_eq!(report["ok"], true, "{report}");
    let report = work.run(&["verify", "--json", "--repo", &repo]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_under_no_color() {
    let Ready { source, work, repo, .. } = Scenario::new("colour").crm().init("repo");
    let db = source.url();
    // The warning about an exclude pattern that matches nothing is a log line (tracing).
    let args = ["backup", "--db", &db, "--repo", &repo, "--exclude-table", "gone.table"];
    let run = work.run(&args).ok();
    assert!(run.stderr.contains("exclude pattern \"gone.table\" matches no table"), "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "escape codes in a log that is not a terminal: {:?}", run.stderr);

    // On a terminal (script(1) gives the command one) the same line is coloured, unless NO_COLOR.
    if std::process::Command::new("script").arg("--version").output().is_err() {
        return skip("script(1) is not installed: cannot give the binary a terminal");
    }
    let line = std::iter::once(env!("CARGO_BIN_EXE_crmvault"))
        .chain(args.iter().copied())
        .map(|arg| format!("'{arg}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let on_terminal = |no_color: bool| {
        let mut command = work.command_for("script");
        command.args(["-qec", &format!("{line} 2>&1"), "/dev/null"]);
        if no_color {
            command.env("NO_COLOR", "1");
        } else {
            command.env_remove("NO_COLOR");
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    // Colour is SGR (`ESC [ … m`); a progress bar's cursor movements are not colour.
    let has_colour = |text: &str| {
        text.split('\x1b').skip(1).any(|rest| {
            rest.strip_prefix('[')
                .and_then(|rest| rest.find(|c: char| !c.is_ascii_digit() && c != ';').map(|end| &rest[end..]))
                .is_some_and(|rest| rest.starts_with('m'))
        })
    };
    let coloured = on_terminal(false);
    assert!(has_colour(&coloured), "a terminal gets colour: {coloured:?}");
    let plain = on_terminal(true);
    assert!(plain.contains("matches no table") && !has_colour(&plain), "NO_COLOR: {plain:?}");
}

#[test]
fn help_names_environment_variables_without_their_values() {
    let work = Workspace::new();
    let output = work
        .command()
        .args(["backup", "--help"])
        .env("CRMVAULT_DB", "postgres://backup:Sup3rSecret@db/crm")
        .env_remove("CRMVAULT_REPO")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    assert!(help.contains("[env: CRMVAULT_REPO]") && help.contains("[env: CRMVAULT_DB]"), "{help}");
    assert!(!help.contains("=]") && !help.contains("Sup3rSecret"), "{help}");
}

#[test]
fn an_unreadable_repository_folder_is_said_in_plain_words() {
    // Root reads every folder: the binary runs as nobody (setpriv), as a backup user would.
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let is_root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !is_root || std::process::Command::new("setpriv").arg("--version").output().is_err() {
        return skip("needs root and setpriv(1) to run crmvault as another user");
    }
    let open_to_all = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    };
    open_to_all(&work.path(""), 0o755);
    open_to_all(&work.path("repo"), 0o700);
    let output = work
        .command_for("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_crmvault")])
        .args(["snapshots", "--repo", &repo])
        .output()
        .unwrap();
    let run = Run::from(&output);
    let run = run.fails_with(1, "Permission denied");
    assert!(run.stderr.contains("needs access to the repository's folder"), "{}", run.stderr);
    assert!(!run.stderr.contains("Generic LocalFileSystem"), "{}", run.stderr);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
}

#[test]
fn restic_users_find_their_flags() {
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    // -r for --repo, `check` for verify, --json anywhere.
    let report = work.run(&["check", "-r", &repo, "--json"]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    work.run(&["snapshots", "-r", &repo]).ok();
}

#[test]
fn a_failure_on_every_copy_is_said_once_and_one_copy_serving_is_a_warning() {
    let work = Workspace::new();
    let recipient = work.keygen("admin.key");
    let (repo, copy) = (work.path("repo"), work.path("copy"));
    let (repo, copy) = (repo.to_str().unwrap(), copy.to_str().unwrap());
    work.run(&["init", "--repo", repo, "--repo", copy, "--recipient", &recipient]).ok();
    let source = TestDb::create("once_source");
    source.load_file(&fixture("examples/crm.sql"));
    work.run(&["backup", "--db", &source.url(), "--repo", repo, "--repo", copy]).ok();
    let damage = |folder: &str| {
        for path in files_under(&std::path::Path::new(folder).join("snapshots")) {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[200] ^= 0x55;
            std::fs::write(&path, bytes).unwrap();
        }
    };
    let target = TestDb::create("once_target");
    let key = work.path("admin.key");
    let restore = |repos: &[&str]| {
        let mut args = vec!["restore", "--identity", key.to_str().unwrap(), "--db"];
        let url = target.url();
        args.push(&url);
        for repo in repos {
            args.extend(["--repo", repo]);
        }
        work.run(&args)
    };

    // One copy damaged: the other serves, and the damage is a warning.
    damage(repo);
    let run = restore(&[repo, copy]).ok();
    assert_eq!(run.stderr.matches("is corrupt or was tampered with").count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("WARN"), "{}", run.stderr);
    assert_same_database(&source, &target);

    // Both damaged: one error line that names each copy once, no warning repeating it.
    damage(copy);
    let emptied = TestDb::create("once_empty");
    let mut args = vec!["restore", "--identity", key.to_str().unwrap(), "--db"];
    let url = emptied.url();
    args.extend([url.as_str(), "--repo", repo, "--repo", copy]);
    let run = work.run(&args).fails_with(1, "every target failed");
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    assert_eq!(run.stderr.matches(repo).count(), 1, "{}", run.stderr);
    assert_eq!(run.stderr.matches(copy).count(), 1, "{}", run.stderr);
    assert!(emptied.is_empty());
}

#[test]
fn a_closed_stdout_ends_the_output_not_the_command() {
    let Ready { work, repo, .. } = Scenario::new("pipe").crm().init("repo").backup();
    for args in
        [&["snapshots", "--repo", &repo][..], &["snapshots", "--json", "--repo", &repo], &["verify", "--repo", &repo]]
    {
        // A pipe whose reader is gone before the first write (`crmvault snapshots | head -0`).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = work.command().args(args).stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // Off a terminal, a JSON document is one line: `--json >> log` keeps one per line.
    let run = work.run(&["snapshots", "--json", "--repo", &repo]).ok();
    assert_eq!(run.stdout.trim_end().lines().count(), 1, "{}", run.stdout);
}

#[test]
fn a_connection_string_that_is_not_one_is_said_plainly() {
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let run = work.run(&["backup", "--db", "notaurl", "--repo", &repo]);
    let run = run.fails_with(1, "crmvault: error: the database is not a valid PostgreSQL connection string");
    assert!(run.stderr.contains("give postgres://user@host:port/database"), "{}", run.stderr);
    assert!(!run.stderr.contains("rest not shown"), "{}", run.stderr);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
}

#[test]
fn an_s3_endpoint_that_does_not_answer_is_said_with_what_to_check() {
    let work = Workspace::new();
    // Port 9 (discard) answers nothing here; no retries, so the test does not wait.
    let repo = "s3://bucket/x?endpoint=http://127.0.0.1:9&retries=0&region=us-east-1";
    let run = work
        .command()
        .args(["snapshots", "--repo", repo])
        .env("AWS_ACCESS_KEY_ID", "key")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .output()
        .unwrap();
    let run = Run::from(&run).fails_with(1, "the storage service did not answer");
    assert!(run.stderr.contains("check the S3 endpoint"), "{}", run.stderr);
    assert!(!run.stderr.contains("Generic S3 error") && !run.stderr.contains("secret"), "{}", run.stderr);
}

#[test]
fn quiet_and_the_identity_from_the_environment() {
    let Ready { work, repo, .. } = Scenario::new("quiet").crm().init("repo").backup();
    // CRMVAULT_IDENTITY stands for --identity: read-data needs it.
    let run = work
        .command()
        .args(["verify", "-q", "--repo", &repo, "--read-data", "--json"])
        .env("CRMVAULT_IDENTITY", work.path("admin.key"))
        .output()
        .unwrap();
    let report = Run::from(&run).ok().json();
    assert!(report["chunks"].as_u64().unwrap() > 0, "decrypted with the identity from the environment: {report}");
}

#[test]
fn keygen_onto_an_existing_file_says_it_never_overwrites_an_identity() {
    let work = Workspace::new();
    work.keygen("admin.key");
    let path = work.path("admin.key");
    let before = std::fs::read(&path).unwrap();
    let run = work.run(&["keygen", "-o", path.to_str().unwrap()]);
    let run = run
        .fails_with(1, &format!("{} exists; keygen never overwrites an identity: choose another path", path.display()));
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(!run.stderr.contains("os error"), "{}", run.stderr);
    assert_eq!(std::fs::read(&path).unwrap(), before, "the identity was changed");
}
