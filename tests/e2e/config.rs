//! The config file and its profiles (`--profile`, `crmvault.toml`): commands driven by a
//! profile alone, flags and variables over the profile, `config check` naming lines, a broken
//! file that stops only the commands that need it, and where the database password comes from
//! (a private `password_file`, systemd credentials, `.pgpass`), seen by a fake server that
//! asks for it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::*;

/// Writes `text` to `path` with `mode`, making its folder.
fn write(path: &Path, text: &str, mode: u32) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_path_buf()
}

/// The user's config file of a workspace.
fn user_config(work: &Workspace) -> PathBuf {
    work.config_dir().join("crmvault.toml")
}

#[test]
fn a_backup_and_a_restore_are_driven_by_a_profile_alone() {
    let ready = Scenario::new("profile").crm().init("repo");
    let target = TestDb::create("profile_target");
    let config = format!(
        "[profile.nightly]\ndb = \"{}\"\nrepo = [\"{}\"]\nidentity = \"{}\"\nrestore_db = \"{}\"\njobs = 3\n",
        ready.source.url(),
        ready.repo,
        ready.work.admin_key(),
        target.url()
    );
    write(&user_config(&ready.work), &config, 0o644);

    ready.work.run(&["backup", "--profile", "nightly"]).ok();
    let restore = ready.work.command().env("CRMVAULT_PROFILE", "nightly").arg("restore").output().unwrap();
    Run::from(&restore).ok();
    assert_same_database(&ready.source, &target);
}

#[test]
fn a_flag_or_a_variable_overrides_the_profile() {
    let ready = Scenario::new("override").sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)").init("repo");
    let elsewhere = ready.work.path("not-a-repository");
    let config = format!("[profile.nightly]\ndb = \"{}\"\nrepo = [\"{}\"]\n", ready.source.url(), elsewhere.display());
    write(&user_config(&ready.work), &config, 0o644);

    // The profile's repository does not exist: only an override can make this backup work.
    ready.work.run(&["backup", "--profile", "nightly"]).fails_with(1, "not-a-repository");
    ready.work.run(&["backup", "--profile", "nightly", "--repo", &ready.repo]).ok();
    let by_variable =
        ready.work.command().env("CRMVAULT_REPO", &ready.repo).args(["backup", "--profile", "nightly"]).output();
    Run::from(&by_variable.unwrap()).ok();
    let listed = ready.work.run(&["snapshots", "--json", "--repo", &ready.repo]).ok().json();
    assert_eq!(listed["snapshots"].as_array().map(Vec::len), Some(2), "{listed}");
}

#[test]
fn a_command_without_its_repository_says_where_to_give_one() {
    let work = Workspace::new();
    write(&user_config(&work), "[profile.nightly]\njobs = 2\n", 0o644);
    let run = work.run(&["snapshots", "--profile", "nightly"]).fails_with(2, "no repository: give --repo");
    assert!(run.stderr.contains("CRMVAULT_REPO") && run.stderr.contains("profile nightly of"), "{}", run.stderr);
    work.run(&["snapshots", "--profile", "weekly"]).fails_with(1, "no profile weekly (profiles there: nightly)");
}

#[test]
fn config_check_names_the_line_of_each_mistake() {
    let work = Workspace::new();
    let file = write(
        &work.path("crmvault.toml"),
        "# nightly backups\n[profile.nightly]\ntabels = [\"crm.*\"]\njobs = \"four\"\nrepo = [\"/srv/backups/crm\"]\n",
        0o644,
    );
    let file_name = file.to_str().unwrap();
    let run = work.run(&["config", "check", "--config", file_name]).fails_with(1, "2 mistakes");
    assert!(
        run.stdout.contains(&format!("{file_name}:3:1: [profile.nightly] unknown field `tabels`")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&format!("{file_name}:4:8: [profile.nightly] invalid type")), "{}", run.stdout);

    // A command that needs the file names its first mistake in one line.
    let run = work.run(&["snapshots", "--config", file_name, "--repo", "/nowhere"]).fails_with(1, ":3:1:");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);

    write(&file, "[profile.nightly]\ntable = [\"crm.*\"]\njobs = 4\nrepo = [\"/srv/backups/crm\"]\n", 0o644);
    let run = work.run(&["config", "check", "--config", file_name]).ok();
    assert!(run.stdout.contains("valid (profiles: nightly)"), "{}", run.stdout);
}

#[test]
fn config_check_reports_every_mistake_in_one_pass() {
    let work = Workspace::new();
    let config = "[profile.a]\njobs = \"four\"\n[profile.b]\njobs = 0\ndb = \"postgres://backup:hunter2@db/crm\"\n\
                  password_file = \"no-such-file\"\n";
    let file = write(&user_config(&work), config, 0o644);
    let run = work.run(&["config", "check"]).fails_with(1, "4 mistakes");
    for expected in [
        ":2:8: [profile.a] invalid type",
        ":4:1: [profile.b] jobs",
        ":5:1: holds secrets",
        ":6:1: [profile.b] password_file",
    ] {
        assert!(run.stdout.contains(expected), "{expected} missing: {}", run.stdout);
    }
    assert!(!run.stdout.contains("hunter2"), "{}", run.stdout);

    // Printed like every other command's --json: with "ok", one line off a terminal.
    let run = work.run(&["config", "check", "--json"]).fails_with(1, "");
    assert_eq!(run.stdout.trim_end().lines().count(), 1, "not one line: {}", run.stdout);
    let document = run.json();
    assert_eq!(document["ok"], false, "{document}");
    assert_eq!(document["mistakes"].as_array().map(Vec::len), Some(4), "{document}");

    // A missing `]` is one mistake, on its line.
    write(&file, "# nightly\n[profile.nightly\njobs = 2\nrepo = [\"/a\"]\n[profile.weekly]\njobs = 1\n", 0o600);
    let run = work.run(&["config", "check"]).fails_with(1, "1 mistake");
    assert!(run.stdout.contains("crmvault.toml:2:") && run.stdout.contains("syntax error"), "{}", run.stdout);
}

#[test]
fn config_show_without_a_profile_names_the_profiles_to_choose_from() {
    let work = Workspace::new();
    let config = "[profile.nightly]\njobs = 2\n[profile.weekly]\njobs = 1\n[repository.\"s3://crm-backups\"]\nregion = \"eu-west-1\"\n";
    write(&user_config(&work), config, 0o600);
    let run = work.run(&["config", "show"]).ok();
    assert!(!run.stdout.contains("(none)"), "{}", run.stdout);
    assert!(
        run.stdout.contains("profiles: nightly, weekly") && run.stdout.contains("--profile NAME"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("[repository.\"s3://crm-backups\"]"), "{}", run.stdout);
    let document = work.run(&["config", "show", "--json"]).ok().json();
    assert_eq!(document["profiles"], serde_json::json!(["nightly", "weekly"]), "{document}");
    assert_eq!(document["ok"], true, "{document}");
    let shown = work.run(&["config", "show", "--profile", "weekly"]).ok();
    assert!(shown.stdout.contains("[profile.weekly]\njobs = 1"), "{}", shown.stdout);
}

#[test]
fn jobs_zero_is_refused_on_the_command_line_as_in_a_profile() {
    let work = Workspace::new();
    for command in ["backup", "restore"] {
        let run = work.run(&[command, "--jobs", "0", "--repo", "/nowhere", "--db", "postgres://u@h/d"]);
        let run = run.fails_with(2, "must be at least 1");
        assert!(run.stderr.contains("--jobs"), "{}", run.stderr);
    }
}

#[test]
fn keygen_help_and_version_work_with_a_broken_config() {
    let work = Workspace::new();
    write(&user_config(&work), "[profile.nightly\n", 0o644);
    write(&work.config_dir().join("config.toml"), "[repository.\"s3://b\"]\nendpont = \"x\"\n", 0o644);
    work.run(&["keygen", "-o", work.path("admin.key").to_str().unwrap()]).ok();
    work.run(&["--version"]).ok();
    work.run(&["--help"]).ok();
    let run = work.run(&["snapshots", "--repo", "/nowhere"]).fails_with(1, "crmvault.toml:1:");
    assert!(run.stderr.contains("1 more"), "the old file's mistake is counted: {}", run.stderr);
    let run = work.run(&["config", "check"]).fails_with(1, "config.toml:2:1: [repository.s3://b] unknown field");
    assert!(run.stdout.contains("2 mistakes"), "{}", run.stdout);
}

#[test]
fn a_file_others_can_read_is_refused_when_it_holds_a_password() {
    let work = Workspace::new();
    let config = "[profile.nightly]\ndb = \"postgres://backup:hunter2-secret@db.example/crm\"\nrepo = [\"/nowhere\"]\n";
    let file = write(&user_config(&work), config, 0o644);
    let run = work.run(&["backup", "--profile", "nightly"]).fails_with(1, "chmod 600");
    assert!(
        run.stderr.contains("crmvault.toml:2:1: holds secrets but others can read it (profile nightly's db password)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2"), "the password shows: {}", run.stderr);
    let run = work.run(&["config", "show", "--profile", "nightly"]).fails_with(1, "chmod 600");
    assert!(!run.stdout.contains("hunter2") && !run.stderr.contains("hunter2"));

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    work.run(&["config", "check"]).ok();
    let shown = work.run(&["config", "show", "--profile", "nightly"]).ok();
    assert!(shown.stdout.contains("postgres://backup:***@db.example/crm"), "{}", shown.stdout);
    assert!(!shown.stdout.contains("hunter2"), "{}", shown.stdout);
}

#[test]
fn password_file_gives_the_database_password() {
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let server = PasswordCatcher::start();
    let secret = write(&work.path("db-password"), "from-password-file\n", 0o644);
    let config = format!(
        "[profile.nightly]\ndb = \"{}\"\nrepo = [\"{repo}\"]\npassword_file = \"{}\"\n",
        server.url(),
        secret.display()
    );
    write(&user_config(&work), &config, 0o644);
    work.run(&["backup", "--profile", "nightly"]).fails_with(1, &format!("run chmod 600 {}", secret.display()));
    assert!(server.passwords().is_empty(), "a password from a file others can read was sent");

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    work.run(&["backup", "--profile", "nightly"]).fails_with(1, "password authentication failed");
    assert_eq!(server.passwords(), ["from-password-file"]);
}

#[test]
fn systemd_credentials_give_the_database_password() {
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let server = PasswordCatcher::start();
    let credentials = work.path("credentials");
    write(&credentials.join("db-password"), "from-credentials", 0o400);
    let run = work
        .command()
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .args(["backup", "--db", &server.url(), "--repo", &repo])
        .output()
        .unwrap();
    Run::from(&run).fails_with(1, "password authentication failed");
    assert_eq!(server.passwords(), ["from-credentials"]);
}

#[test]
fn a_systemd_credential_others_can_read_is_refused_like_a_password_file() {
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let server = PasswordCatcher::start();
    let credentials = work.path("credentials");
    let secret = write(&credentials.join("db-password"), "from-credentials", 0o644);
    let run = work
        .command()
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .args(["backup", "--db", &server.url(), "--repo", &repo])
        .output()
        .unwrap();
    let run = Run::from(&run).fails_with(1, &format!("run chmod 600 {}", secret.display()));
    assert!(run.stderr.contains("others can read it") && !run.stderr.contains("from-credentials"), "{}", run.stderr);
    assert!(server.passwords().is_empty(), "a password from a credential others can read was sent");
}

#[test]
fn pgpass_gives_the_database_password_when_only_its_owner_can_read_it() {
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let server = PasswordCatcher::start();
    let lines =
        format!("127.0.0.1:{}:other:backup:wrong\n127.0.0.1:{}:crm:backup:from-pgpass\n", server.port, server.port);
    let pgpass = write(&work.path("pgpass"), &lines, 0o644);
    let backup = || {
        let output = work
            .command()
            .env("PGPASSFILE", &pgpass)
            .args(["backup", "--db", &server.url(), "--repo", &repo])
            .output()
            .unwrap();
        Run::from(&output)
    };
    let run = backup().fails_with(1, "crmvault: error:");
    assert!(run.stderr.contains("is ignored: others can read it"), "{}", run.stderr);
    assert!(server.passwords().is_empty(), "a password from a file others can read was sent");

    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    backup().fails_with(1, "password authentication failed");
    assert_eq!(server.passwords(), ["from-pgpass"]);
}

#[test]
fn a_profile_names_the_share_of_packs_its_verify_reads() {
    let ready = Scenario::new("profile_subset").sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)").init("repo");
    ready.work.backup(&ready.source, &ready.repo);
    let profile = |subset: &str| {
        format!(
            "[profile.check]\nrepo = [\"{}\"]\nidentity = \"{}\"\nread_data_subset = \"{subset}\"\n",
            ready.repo,
            ready.work.admin_key()
        )
    };
    write(&user_config(&ready.work), &profile("100%"), 0o644);
    let report = ready.work.run(&["verify", "--profile", "check", "--json"]).ok().json();
    assert_eq!(report["subset"]["slice"], "100%", "{report}");
    assert!(report["chunks"].as_u64().unwrap() > 0, "{report}");
    // The flag wins; --read-data reads everything, which covers the profile's share.
    let report = ready.work.run(&["verify", "--profile", "check", "--read-data-subset", "1/1", "--json"]).ok().json();
    assert_eq!(report["subset"]["slice"], "1/1", "{report}");
    let report = ready.work.run(&["verify", "--profile", "check", "--read-data", "--json"]).ok().json();
    assert!(report.get("subset").is_none(), "{report}");

    // A bad one is a mistake of the file, named with its line, as `config check` names it.
    write(&user_config(&ready.work), &profile("7/5"), 0o644);
    let run = ready.work.run(&["verify", "--profile", "check"]);
    let run = run.fails_with(1, ":4:1: [profile.check] read_data_subset: \"7/5\" is not a subset of the packs");
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    ready.work.run(&["config", "check"]).fails_with(1, "read_data_subset: \"7/5\" is not a subset of the packs");
}

#[test]
fn a_profile_sets_the_data_loss_alarm_and_config_check_names_a_bad_rule() {
    let ready = Scenario::new("profile_alarm")
        .sql(
            "CREATE TABLE public.queue (id int PRIMARY KEY); INSERT INTO public.queue SELECT generate_series(1, 20); \
             CREATE TABLE public.accounts (id int PRIMARY KEY); INSERT INTO public.accounts VALUES (1)",
        )
        .init("repo");
    let profile =
        |keys: &str| format!("[profile.nightly]\ndb = \"{}\"\nrepo = [\"{}\"]\n{keys}", ready.source.url(), ready.repo);
    write(&user_config(&ready.work), &profile("alarm_table = [\"public.queue=100\"]\n"), 0o644);
    ready.work.run(&["backup", "--profile", "nightly"]).ok();
    // The profile allows the queue to empty; --alarm-table given on the command line replaces
    // the profile's rules.
    ready.source.sql("DELETE FROM public.queue");
    ready.work.run(&["backup", "--profile", "nightly"]).ok();
    ready.source.sql("INSERT INTO public.queue SELECT generate_series(1, 20)");
    ready.work.run(&["backup", "--profile", "nightly"]).ok();
    ready.source.sql("DELETE FROM public.queue");
    let strict = ready.work.run(&["backup", "--profile", "nightly", "--alarm-table", "public.queue=50"]);
    assert_eq!(strict.code, 4, "{}", strict.stderr);
    write(&user_config(&ready.work), &profile("no_alarm = true\n"), 0o644);
    ready.source.sql("DROP TABLE public.queue");
    ready.work.run(&["backup", "--profile", "nightly"]).ok();

    write(&user_config(&ready.work), &profile("alarm_table = [\"queue\"]\n"), 0o644);
    ready.work.run(&["config", "check"]).fails_with(1, "[profile.nightly] alarm_table: --alarm-table \"queue\"");
    write(&user_config(&ready.work), &profile("alarm_threshold = 120.0\n"), 0o644);
    ready.work.run(&["config", "check"]).fails_with(1, "alarm_threshold: the alarm threshold: 120 is not a percentage");
}
