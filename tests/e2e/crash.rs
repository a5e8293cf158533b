//! A backup killed at any point leaves no visible snapshot and a repository that verifies.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// Starts a backup and SIGKILLs it once `ready` says so (or after a timeout); true if killed.
pub(crate) fn kill_backup_when(work: &Workspace, db: &TestDb, repo: &str, ready: impl Fn() -> bool) -> bool {
    kill_when(work, &["backup", "--db", &db.url(), "--repo", repo], ready)
}

/// Starts `crmvault ARGS` and SIGKILLs it once `ready` says so (or after a timeout); true if
/// killed, false if it finished first (successfully: a failure of its own fails the test).
pub(crate) fn kill_when(work: &Workspace, args: &[&str], ready: impl Fn() -> bool) -> bool {
    let mut child = work
        .command()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("crmvault starts");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert!(status.success(), "{args:?} failed on its own: {stderr}");
            return false;
        }
        if ready() || started.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn count_files(dir: &Path) -> usize {
    if dir.exists() { files_under(dir).len() } else { 0 }
}

#[test]
fn a_killed_backup_leaves_no_snapshot_and_the_next_one_succeeds() {
    let Ready { source, work, repo, .. } = Scenario::new("crash").crm().filler().init("repo");
    let repo_path = Path::new(&repo).to_path_buf();
    let stranger = Workspace::new(); // verifies without any key

    // Kill points: as soon as the first pack lands, then after growing delays.
    let (mut kills, mut completed) = (0, 0);
    let first_pack = || count_files(&repo_path.join("data")) >= 1;
    if kill_backup_when(&work, &source, &repo, first_pack) {
        kills += 1;
    } else {
        completed += 1;
    }
    for delay_ms in [20u64, 80, 200, 400] {
        let start = Instant::now();
        if kill_backup_when(&work, &source, &repo, || start.elapsed() > Duration::from_millis(delay_ms)) {
            kills += 1;
        } else {
            completed += 1;
        }
        // Only backups that ran to the end left a snapshot.
        assert_eq!(
            count_files(&repo_path.join("snapshots")),
            completed,
            "a killed backup left a snapshot (after {delay_ms} ms)"
        );
        stranger.run(&["verify", "--repo", &repo]).ok();
    }
    assert!(kills >= 2, "the backup was too quick to interrupt");
    work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key(), "--read-data"]).ok();

    // The next backup completes and restores exactly.
    work.backup(&source, &repo);
    work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("crash_restored");
    work.restore(&repo, &restored).ok();
    assert_same_database(&source, &restored);
}

/// `restore` from `repo` into the database at `url`, with `extra` arguments.
fn restore_command(work: &Workspace, repo: &str, url: &str, extra: &[&str]) -> std::process::Command {
    let mut command = work.command();
    command.args(["restore", "--repo", repo, "--identity", &work.admin_key(), "--db", url]).args(extra);
    command
}

/// Starts `restore` with `extra` arguments and kills it once it is loading data (a COPY shows
/// in pg_stat_activity); true when it was killed before finishing.
fn kill_restore_while_loading(work: &Workspace, repo: &str, target: &TestDb, extra: &[&str]) -> bool {
    let mut child = restore_command(work, repo, &target.url(), extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let busy = psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'COPY%'", target.name),
        );
        if busy.trim() != "0" {
            child.kill().unwrap();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.wait();
    killed
}

#[test]
fn a_killed_restore_leaves_the_target_empty() {
    let Ready { source, work, repo, .. } = Scenario::new("crash_restore").filler().init("repo").backup();
    let target = TestDb::create("crash_restore_target");
    let killed = kill_restore_while_loading(&work, &repo, &target, &[]);
    assert!(killed, "the restore finished before it could be interrupted");
    // The server notices the closed connection and rolls back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !target.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(target.is_empty(), "a killed restore left tables behind");
    work.restore(&repo, &target).ok();
    assert_same_database(&source, &target);
}

#[test]
fn a_killed_parallel_restore_is_marked_incomplete_until_clean() {
    let Ready { source, work, repo, .. } = Scenario::new("crash_parallel")
        .filler()
        .sql("CREATE TABLE public.second AS SELECT * FROM public.filler WHERE id % 2 = 0")
        .init("repo")
        .backup();
    let target = TestDb::create("crash_parallel_target");
    let killed = kill_restore_while_loading(&work, &repo, &target, &["--parallel"]);
    assert!(killed, "the restore finished before it could be interrupted");
    // The tables were committed empty before loading began; the marker says so.
    assert_eq!(
        target.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'crmvault_incomplete_restore'").trim(),
        "1"
    );
    work.restore(&repo, &target).fails_with(1, "interrupted parallel restore");
    work.restore_with(&repo, &target, &["--parallel", "--clean"]).ok();
    assert_same_database(&source, &target);
}

/// Starts `restore` into `target` (a database name) with `extra` arguments and sends it SIGINT
/// (Ctrl-C) once a connection to `loading` (a database name) is loading data; returns the run
/// when it was interrupted before finishing.
fn interrupt_restore_while_loading(work: &Workspace, repo: &str, target: &str, loading: &str, extra: &[&str]) -> Run {
    let url = format!("{}/{target}", server_url());
    let child = restore_command(work, repo, &url, extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let busy = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{loading}' AND query LIKE 'COPY%'");
    while started.elapsed() < Duration::from_secs(60) && psql("postgres", &busy).trim() == "0" {
        std::thread::sleep(Duration::from_millis(2));
    }
    let signal = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(signal.success(), "the restore finished before it could be interrupted");
    Run::from(&child.wait_with_output().unwrap())
}

#[test]
fn an_interrupted_parallel_restore_drops_what_it_loaded() {
    // Ctrl-C, not a kill: the restore hears it, and its failure path removes the tables it had
    // committed (a killed one leaves them, marked: above).
    let Ready { source, work, repo, .. } = Scenario::new("interrupt_parallel")
        .filler()
        .sql("CREATE TABLE public.second AS SELECT * FROM public.filler WHERE id % 2 = 0")
        .init("repo")
        .backup();
    let target = TestDb::create("interrupt_parallel_target");
    let run = interrupt_restore_while_loading(&work, &repo, &target.name, &target.name, &["--parallel"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(
        run.stderr.contains("left as it was: what the restore created was removed): interrupted"),
        "{}",
        run.stderr
    );
    assert!(target.is_empty(), "the interrupted restore left tables behind");
    work.restore_with(&repo, &target, &["--parallel"]).ok();
    assert_same_database(&source, &target);
}

#[test]
fn an_interrupted_create_restore_leaves_neither_the_database_nor_its_loading_one() {
    let Ready { source, work, repo, .. } = Scenario::new("interrupt_create").filler().init("repo").backup();
    let target = TestDb::create("interrupt_created");
    psql("postgres", &format!("DROP DATABASE {}", target.name));
    let loading = format!("crmvault_restoring_{}", &blake3::hash(target.name.as_bytes()).to_hex()[..16]);
    let exists = |name: &str| {
        psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")).trim() == "1"
    };
    for extra in [&["--create"][..], &["--create", "--jobs", "1"][..]] {
        let run = interrupt_restore_while_loading(&work, &repo, &target.name, &loading, extra);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains("(not created): interrupted"), "{}", run.stderr);
        assert!(!exists(&target.name) && !exists(&loading), "{extra:?} left a database: {}", run.stderr);
    }
    work.restore_with(&repo, &target, &["--create"]).ok();
    assert_same_database(&source, &target);
}

#[test]
fn a_half_written_staging_file_beside_a_pack_is_ignored() {
    let Ready { source, work, repo, .. } = Scenario::new("staging_leftover").filler().init("repo").backup();
    // What a write killed before its hard link leaves: `<pack>#<n>`, cut short.
    let pack = files_under(&work.path("repo/data")).into_iter().next().expect("a pack");
    let bytes = std::fs::read(&pack).unwrap();
    let mut leftover = pack.clone().into_os_string();
    leftover.push("#1");
    std::fs::write(&leftover, &bytes[..bytes.len() / 2]).unwrap();
    let stranger = Workspace::new(); // verifies without any key
    stranger.run(&["verify", "--repo", &repo]).ok();
    source.sql("UPDATE public.filler SET body = 'changed' WHERE id = 7");
    work.backup(&source, &repo);
    let restored = TestDb::create("staging_leftover_restored");
    work.restore(&repo, &restored).ok();
    assert_same_database(&source, &restored);
}
