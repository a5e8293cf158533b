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

/// Writes one man page per visible command into `dir` (`crmvault.1`, `crmvault-backup.1`, …),
/// creating it, and returns the files written, sorted.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(super::Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    let mut pages = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "1"))
        .collect::<Vec<_>>();
    pages.sort();
    Ok(pages)
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
}
