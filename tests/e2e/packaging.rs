//! What packages and units rely on: `--version` naming the repository formats, completions and
//! man pages generated from the command line's definitions, the secrets systemd hands a unit as
//! credentials, and packaging/backup-role.sql.

use std::process::Command;

use crate::common::*;
use crmvault::repo::{FORMAT_VERSION, OLDEST_FORMAT_VERSION};

#[test]
fn version_names_the_repository_formats_it_writes_and_reads() {
    let work = Workspace::new();
    let formats =
        format!("repository format: writes {FORMAT_VERSION}, reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}");
    for args in [&["--version"][..], &["backup", "--version"][..]] {
        let run = work.run(args).ok();
        // `crmvault 0.1.0`; clap names a subcommand's as `crmvault-backup 0.1.0`.
        let first_line = run.stdout.lines().next().unwrap_or_default();
        assert!(first_line.starts_with("crmvault"), "{}", run.stdout);
        assert!(first_line.ends_with(&format!(" {}", env!("CARGO_PKG_VERSION"))), "{}", run.stdout);
        assert!(run.stdout.contains(&formats), "{args:?}: {}", run.stdout);
    }
}

#[test]
fn completions_are_printed_for_every_shell_from_the_command_line_definitions() {
    let work = Workspace::new();
    let bash = work.run(&["completions", "bash"]).ok();
    for word in ["backup", "restore", "--repo", "--exclude-table"] {
        assert!(bash.stdout.contains(word), "{word} missing from the bash completions");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let run = work.run(&["completions", shell]).ok();
        assert!(run.stdout.contains("--repo"), "{shell}: {}", run.stdout);
    }
    work.run(&["completions", "tcsh"]).fails_with(2, "invalid value 'tcsh'");
}

#[test]
fn man_pages_are_written_one_per_command() {
    let work = Workspace::new();
    let dir = work.path("man");
    work.run(&["generate-man", dir.to_str().unwrap()]).ok();
    let main = std::fs::read_to_string(dir.join("crmvault.1")).expect("crmvault.1 written");
    assert!(main.contains(".TH crmvault 1"), "{main}");
    let backup = std::fs::read_to_string(dir.join("crmvault-backup.1")).expect("crmvault-backup.1 written");
    assert!(backup.contains("\\-\\-repo") && backup.contains("\\-\\-exclude\\-table"), "{backup}");
    assert!(!dir.join("crmvault-generate-man.1").exists(), "a hidden command got a man page");
}

#[test]
fn the_man_page_names_the_environment_and_the_files() {
    let work = Workspace::new();
    let dir = work.path("man");
    work.run(&["generate-man", dir.to_str().unwrap()]).ok();
    let main = std::fs::read_to_string(dir.join("crmvault.1")).expect("crmvault.1 written");
    for expected in
        [".SH ENVIRONMENT", "CRMVAULT_CONFIG_DIR", "CREDENTIALS_DIRECTORY", ".SH FILES", "/var/lib/crmvault"]
    {
        assert!(main.contains(expected), "{expected} missing from crmvault.1");
    }
    assert!(main.contains(".SH SUBCOMMANDS"), "the standard sections are lost");
    let restore = std::fs::read_to_string(dir.join("crmvault-restore.1")).expect("crmvault-restore.1 written");
    assert!(restore.contains("CRMVAULT_RESTORE_DB"), "restore's page does not name its variable");
}

#[test]
fn the_database_password_comes_from_the_systemd_credential_when_pgpassword_is_unset() {
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let credentials = work.path("credentials");
    write_credential(&credentials, "db-password", "s3cret from a credential\n");

    let catcher = PasswordCatcher::start();
    let run = Run::from(
        &work
            .command()
            .args(["backup", "--db", &catcher.url(), "--repo", &repo])
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .output()
            .expect("crmvault runs"),
    );
    assert_eq!(catcher.passwords(), ["s3cret from a credential"]);
    let run = run.fails_with(1, "password authentication failed");
    assert!(!run.stderr.contains("s3cret"), "{}", run.stderr);

    // PGPASSWORD, when set, comes first.
    let catcher = PasswordCatcher::start();
    work.command()
        .args(["backup", "--db", &catcher.url(), "--repo", &repo])
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("PGPASSWORD", "from the environment")
        .output()
        .expect("crmvault runs");
    assert_eq!(catcher.passwords(), ["from the environment"]);

    // The units' default for a missing credential file: an empty line, meaning no password.
    std::fs::remove_file(credentials.join("db-password")).unwrap();
    write_credential(&credentials, "db-password", "\n");
    let catcher = PasswordCatcher::start();
    let run = Run::from(
        &work
            .command()
            .args(["backup", "--db", &catcher.url(), "--repo", &repo])
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .output()
            .expect("crmvault runs"),
    );
    assert!(catcher.passwords().is_empty(), "a password was sent");
    assert_eq!(run.code, 1, "{}", run.stderr);
}

/// Runs packaging/backup-role.sql as the test server's superuser with psql variables.
fn create_backup_role(variables: &[&str]) {
    let mut command = Command::new(pg_program("psql"));
    command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &format!("{}/postgres", server_url())]);
    for variable in variables {
        command.args(["-v", variable]);
    }
    let output = command.arg("-f").arg(fixture("packaging/backup-role.sql")).output().expect("psql runs");
    assert!(output.status.success(), "backup-role.sql: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn backup_role_sql_makes_a_role_that_reads_everything_and_has_no_password_unless_given_one() {
    for (label, with_password) in [("nopw", false), ("pw", true)] {
        let role = format!("cvt_role_{label}_{}", std::process::id());
        let _drop = DropRole(role.clone());
        psql("postgres", &format!("DROP ROLE IF EXISTS {role}"));
        let role_variable = format!("role={role}");
        let mut variables = vec![role_variable.as_str()];
        if with_password {
            variables.push("password=it's long enough");
        }
        create_backup_role(&variables);
        let facts = psql(
            "postgres",
            &format!(
                "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolpassword IS NOT NULL, \
                 pg_has_role('{role}', 'pg_read_all_data', 'member'), pg_has_role('{role}', 'pg_write_all_data', 'member') \
                 FROM pg_authid WHERE rolname = '{role}'"
            ),
        );
        let expected = if with_password { "t|f|f|f|t|t|f" } else { "t|f|f|f|f|t|f" };
        assert_eq!(facts.trim(), expected, "{label}");
    }
}

#[test]
fn the_example_config_the_package_ships_is_valid() {
    let work = Workspace::new();
    let example = fixture("packaging/crmvault.toml.example");
    let run = work.run(&["config", "check", "--config", example.to_str().unwrap()]).ok();
    assert!(run.stdout.contains("valid (profiles: nightly)"), "{}", run.stdout);
}
