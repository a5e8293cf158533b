//! pg_dump: finding one at least as new as the server, running it for a schema section inside
//! the exported snapshot, and turning its plain output into SQL the server runs.

use std::path::{Path, PathBuf};

use super::Database;
use crate::error::{Error, Result};

/// Which part of the schema pg_dump writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Types, tables, functions: everything data needs to load.
    PreData,
    /// Indexes, constraints, triggers: built after the data.
    PostData,
}

/// Finds a pg_dump at least as new as the server.
pub fn find_pg_dump(explicit: Option<&Path>, server_major: i32) -> Result<PathBuf> {
    if let Some(path) = explicit {
        let major = pg_dump_major(path)?;
        if major < server_major {
            return Err(Error::PgDump(format!(
                "{} is pg_dump {major}, older than the server ({server_major}); install postgresql-client-{server_major}",
                path.display()
            )));
        }
        return Ok(path.to_path_buf());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    // Debian's `pg_dump` on PATH is pg_wrapper, a Perl script that only runs one of the
    // binaries below, after ~35 ms of CPU spent starting Perl, three times a backup.
    if !std::env::var_os("PATH").is_some_and(|path| on_path_is_debians_wrapper(&path, "pg_dump")) {
        candidates.push(PathBuf::from("pg_dump"));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("bin/pg_dump"));
        }
    }
    let mut best: Option<(i32, PathBuf)> = None;
    for candidate in candidates {
        if let Ok(major) = pg_dump_major(&candidate)
            && major >= server_major
            && best.as_ref().is_none_or(|(m, _)| major < *m)
        {
            best = Some((major, candidate));
        }
    }
    best.map(|(_, path)| path).ok_or_else(|| Error::NoPgDump { version: server_major })
}

/// Whether `program` on `path` (a PATH value) is Debian's pg_wrapper (postgresql-common),
/// found by what its link resolves to.
fn on_path_is_debians_wrapper(path: &std::ffi::OsStr, program: &str) -> bool {
    std::env::split_paths(path)
        .map(|folder| folder.join(program))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::fs::canonicalize(found).ok())
        .is_some_and(|real| real.file_name().is_some_and(|name| name == "pg_wrapper"))
}

fn pg_dump_major(path: &Path) -> Result<i32> {
    let output = std::process::Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| Error::PgDump(format!("cannot run {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .find_map(|word| word.split('.').next().and_then(|major| major.parse::<i32>().ok()))
        .ok_or_else(|| Error::PgDump(format!("{} did not report a version", path.display())))
}

/// Runs pg_dump for one schema section inside the exported snapshot.
///
/// The schema is always the whole database's: `--table` and `--exclude-table` choose which
/// tables' *data* is stored, as pg_dump's `--exclude-table-data` does, so a restore never
/// misses a type, schema or function a kept table needs. Pre-data includes large objects'
/// metadata (owner, comment, grants); their contents are stored like a table.
pub async fn dump_schema(pg_dump: &Path, database: &Database, snapshot: &str, section: Section) -> Result<Vec<u8>> {
    let mut command = tokio::process::Command::new(pg_dump);
    match section {
        Section::PreData => command.arg("--section=pre-data").arg("--blobs"),
        Section::PostData => command.arg("--section=post-data"),
    };
    command
        .arg(format!("--snapshot={snapshot}"))
        .arg("--no-password")
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| k == "PATH" || k == "LANG" || k == "LC_ALL" || k == "HOME"))
        .envs(database.libpq_environment())
        .kill_on_drop(true);
    let output = command.output().await.map_err(|e| Error::PgDump(format!("cannot run {}: {e}", pg_dump.display())))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        return Err(Error::PgDump(format!("pg_dump failed ({}): {first}", output.status)));
    }
    Ok(output.stdout)
}

/// Turns pg_dump's plain output into SQL the server runs: psql's `\restrict` lines are dropped.
pub fn executable_sql(dump: &[u8]) -> Result<String> {
    let text =
        std::str::from_utf8(dump).map_err(|_| Error::PgDump("pg_dump wrote a schema that is not UTF-8".into()))?;
    let mut sql = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        let meta = trimmed
            .strip_prefix("\\restrict ")
            .or_else(|| trimmed.strip_prefix("\\unrestrict "))
            .is_some_and(|key| !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !meta {
            sql.push_str(line);
        }
    }
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debians_pg_wrapper_on_path_is_told_from_a_pg_dump_of_ones_own() {
        let folder = tempfile::tempdir().unwrap();
        let (wrapped, own, share) =
            (folder.path().join("wrapped"), folder.path().join("own"), folder.path().join("share"));
        for dir in [&wrapped, &own, &share] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(share.join("pg_wrapper"), "#!/usr/bin/perl\n").unwrap();
        std::os::unix::fs::symlink(share.join("pg_wrapper"), wrapped.join("pg_dump")).unwrap();
        std::fs::write(own.join("pg_dump"), "#!/bin/sh\n").unwrap();
        let path = |dirs: &[&PathBuf]| std::env::join_paths(dirs).unwrap();
        assert!(on_path_is_debians_wrapper(&path(&[&wrapped, &own]), "pg_dump"));
        // The first on PATH is the one that runs.
        assert!(!on_path_is_debians_wrapper(&path(&[&own, &wrapped]), "pg_dump"));
        assert!(!on_path_is_debians_wrapper(&path(&[&share]), "pg_dump"));
    }

    #[test]
    fn restrict_lines_are_dropped_and_nothing_else() {
        let dump = b"\\restrict AbC123\nCREATE TABLE t (x text DEFAULT '\\restrict x');\n\\unrestrict AbC123\n";
        assert_eq!(executable_sql(dump).unwrap(), "CREATE TABLE t (x text DEFAULT '\\restrict x');\n");
    }
}
