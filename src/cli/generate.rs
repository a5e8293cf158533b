//! What is generated from the command-line definitions rather than written by hand: shell
//! completions (`crmvault completions SHELL`), man pages (the hidden `crmvault generate-man DIR`,
//! which packaging/build-deb.sh runs) and the long `--version` text. They follow every change
//! to the clap definitions in cli/mod.rs by construction.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use anyhow::{Context, Result};
use clap::CommandFactory;
use crmvault::repo::{FORMAT_VERSION, OLDEST_FORMAT_VERSION};

/// What `crmvault --version` prints after the name: the version and the repository formats,
/// which is what an admin upgrading needs to know (docs/OPERATIONS.md, *Upgrading*).
pub fn long_version() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{}\nrepository format: writes {FORMAT_VERSION}, reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}",
            env!("CARGO_PKG_VERSION")
        )
    });
    &TEXT
}

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    // Into memory first: clap_complete panics on a write error, and `| head` is one.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut super::Cli::command(), "crmvault", &mut script);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&script).and_then(|()| stdout.flush()).context("writing the completion script to stdout")
}

/// The environment variables crmvault reads, for the ENVIRONMENT section of `crmvault.1`
/// (docs/OPERATIONS.md, *Environment variables*, is the fuller table).
const ENVIRONMENT: [(&str, &str); 23] = [
    ("CRMVAULT_CONFIG_DIR", "The config folder: writer keys, pins, crmvault.toml (default ~/.config/crmvault)."),
    ("CRMVAULT_CONFIG", "The config file, as --config."),
    ("CRMVAULT_PROFILE", "The profile, as --profile."),
    ("CRMVAULT_DB", "backup --db (keeps the URL out of ps)."),
    ("CRMVAULT_RESTORE_DB", "restore --db."),
    ("CRMVAULT_SCRATCH_DB", "drill --scratch-db."),
    ("CRMVAULT_REPO", "One --repo."),
    ("CRMVAULT_FINGERPRINT", "--fingerprint."),
    (
        "CRMVAULT_IDENTITY",
        "--identity of restore, rekey, verify, snapshots (an admin's machine; never set it on the backup host).",
    ),
    ("CRMVAULT_PG_DUMP", "backup --pg-dump."),
    ("CRMVAULT_METRICS_FILE", "--metrics-file (one file per unit: each run replaces it)."),
    (
        "CRMVAULT_DB_REMOTE_HOSTS",
        "Comma-separated hosts on this machine that lead elsewhere (tunnels), so that they get sslmode=require.",
    ),
    ("CRMVAULT_LOG", "Log filter, as RUST_LOG (crmvault=debug); overrides -v."),
    ("CRMVAULT_LOG_FORMAT", "--log-format: text, or json (one JSON object per log line)."),
    ("PGPASSWORD", "The database password when the URL has none; comes before password_file and credentials."),
    ("PGPASSFILE", "libpq's password file (default ~/.pgpass); ignored when others can read it."),
    ("PGSSLMODE", "sslmode when the URL has none, as libpq."),
    ("PGSSLROOTCERT", "sslrootcert when the URL has none, as libpq."),
    (
        "CREDENTIALS_DIRECTORY",
        "Set by systemd (LoadCredential=): the credentials db-password, s3-access-key-id and s3-secret-access-key \
         are read there when the variables above and below are unset; refused when others can read them.",
    ),
    ("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY", "S3 keys, unless the repository's section gives them."),
    ("AWS_SESSION_TOKEN", "S3 session token."),
    ("AWS_ENDPOINT_URL, AWS_ENDPOINT", "S3 endpoint (for an S3-protocol server other than AWS)."),
    ("AWS_REGION, AWS_DEFAULT_REGION", "S3 region."),
];

/// The files crmvault reads and writes, for the FILES section of `crmvault.1`.
const FILES: [(&str, &str); 8] = [
    (
        "~/.config/crmvault/crmvault.toml",
        "The config file: profiles and S3 settings per repository ($CRMVAULT_CONFIG_DIR/crmvault.toml).",
    ),
    ("/etc/crmvault/crmvault.toml", "The config file when the user's config folder has none."),
    ("$CRMVAULT_CONFIG_DIR/repos/<id>/writer.key", "The writer key init leaves on the backup host (0600)."),
    (
        "$CRMVAULT_CONFIG_DIR/repos/<id>/trust.json",
        "The pin: the repository's fingerprint, config and newest snapshot seen on this host.",
    ),
    (
        "$CRMVAULT_CONFIG_DIR/repos/<id>/labels.json",
        "Time, database, host and tags of the snapshots opened here before, by id: what `latest` orders by.",
    ),
    (
        "$CRMVAULT_CONFIG_DIR/repos/<id>/sparse.json",
        "The packs the last backup of each database hardly used, and those stored again: what the next backup rewrites.",
    ),
    ("$CRMVAULT_CONFIG_DIR/config.toml", "The config file's old name: [repository.\"…\"] sections only, still read."),
    (
        "/var/lib/crmvault",
        "CRMVAULT_CONFIG_DIR under the systemd units (writer keys and pins of the crmvault user); \
         /etc/crmvault/crmvault.env holds their settings and /etc/crmvault/db-password, s3-access-key-id, \
         s3-secret-access-key their credentials.",
    ),
];

/// Writes one man page per visible command into `dir` (`crmvault.1`, `crmvault-backup.1`, …),
/// creating it, and returns the files written, sorted. `crmvault.1` also gets ENVIRONMENT and
/// FILES sections, which clap does not know about.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(super::Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    let main_page = dir.join("crmvault.1");
    std::fs::write(&main_page, main_page_text()?).with_context(|| format!("writing {}", main_page.display()))?;
    let mut pages = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "1"))
        .collect::<Vec<_>>();
    pages.sort();
    Ok(pages)
}

/// `crmvault.1`: clap_mangen's sections in its order, with ENVIRONMENT and FILES before VERSION.
fn main_page_text() -> Result<Vec<u8>> {
    let mut command = super::Cli::command().disable_help_subcommand(true);
    command.build();
    let has_author = command.get_author().is_some();
    let has_extra = command.get_after_long_help().is_some() || command.get_after_help().is_some();
    let man = clap_mangen::Man::new(command);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    if has_extra {
        man.render_extra_section(&mut page)?;
    }
    definitions("ENVIRONMENT", &ENVIRONMENT).to_writer(&mut page)?;
    definitions("FILES", &FILES).to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    if has_author {
        man.render_authors_section(&mut page)?;
    }
    Ok(page)
}

/// A man page section of terms in bold, each followed by its description.
fn definitions(title: &str, entries: &[(&str, &str)]) -> clap_mangen::roff::Roff {
    use clap_mangen::roff::{Roff, bold, roman};
    let mut roff = Roff::new();
    roff.control("SH", [title]);
    for (term, description) in entries {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*description)]);
    }
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_version_names_the_formats_this_build_writes_and_reads() {
        let text = long_version();
        assert!(text.starts_with(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(text.contains(&format!("writes {FORMAT_VERSION}")), "{text}");
        assert!(text.contains(&format!("reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}")), "{text}");
    }

    #[test]
    fn every_visible_command_gets_a_man_page_and_hidden_ones_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pages = man_pages(dir.path()).expect("man pages");
        let names: Vec<_> = pages.iter().filter_map(|p| p.file_name()?.to_str().map(String::from)).collect();
        for expected in ["crmvault.1", "crmvault-backup.1", "crmvault-restore.1", "crmvault-completions.1"] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate-man")), "{names:?}");
    }

    #[test]
    fn every_variable_an_option_reads_is_in_the_environment_section() {
        fn variables(command: &clap::Command, found: &mut Vec<String>) {
            found.extend(command.get_arguments().filter_map(|a| a.get_env()?.to_str().map(String::from)));
            for subcommand in command.get_subcommands() {
                variables(subcommand, found);
            }
        }
        let mut found = Vec::new();
        variables(&super::super::Cli::command(), &mut found);
        assert!(found.iter().any(|v| v == "CRMVAULT_DB"), "{found:?}");
        for variable in found {
            assert!(ENVIRONMENT.iter().any(|(name, _)| *name == variable), "{variable} missing from ENVIRONMENT");
        }
    }

    #[test]
    fn the_main_page_says_which_variables_and_files_crmvault_reads() {
        let dir = tempfile::tempdir().expect("temp dir");
        man_pages(dir.path()).expect("man pages");
        let page = std::fs::read_to_string(dir.path().join("crmvault.1")).expect("crmvault.1");
        for expected in
            [".SH ENVIRONMENT", "CRMVAULT_CONFIG_DIR", "PGPASSWORD", ".SH FILES", "/etc/crmvault/crmvault.toml"]
        {
            assert!(page.contains(expected), "{expected} missing from crmvault.1");
        }
        assert!(page.contains(".SH SUBCOMMANDS") && page.contains(".SH OPTIONS"), "the standard sections are lost");
        let backup = std::fs::read_to_string(dir.path().join("crmvault-backup.1")).expect("crmvault-backup.1");
        assert!(backup.contains("CRMVAULT_DB"), "backup's page does not name its variable");
    }
}
