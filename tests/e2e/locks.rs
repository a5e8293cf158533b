//! Repository locks end to end (docs/ARCHITECTURE.md, *Locks*): a second backup is told who
//! holds the repository, or waits with --lock-wait; stale locks are taken over; `unlock`
//! removes what is left; readers share; no lock outlives its process.
//!
//! A command is made to hold its lock for a while by giving it a "database" that accepts the
//! connection and says nothing: the lock is taken before the database is reached.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A PostgreSQL URL whose server accepts connections, holds each for `hold`, then hangs up.
pub(crate) fn silent_database(hold: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for connection in listener.incoming().flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(hold);
                drop(connection);
            });
        }
    });
    format!("postgres://postgres@127.0.0.1:{port}/silent?sslmode=disable")
}

/// Starts `args` in the background and returns once `lock` exists.
pub(crate) fn holding(work: &Workspace, args: &[&str], lock: &Path) -> Child {
    let child = work.command().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("crmvault starts");
    let started = Instant::now();
    while !lock.exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "{} never appeared", lock.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The lock objects of a local repository.
fn locks_in(repo: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(repo.join("locks")) {
        Ok(entries) => entries.flatten().map(|entry| entry.path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until a shared lock exists in `repo`.
fn wait_for_shared(repo: &Path) {
    let started = Instant::now();
    while !locks_in(repo).iter().any(|p| p.file_name().unwrap().to_string_lossy().starts_with("shared-")) {
        assert!(started.elapsed() < Duration::from_secs(30), "no shared lock appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A lock object as another crmvault would have left it, without a readable holder.
pub(crate) fn planted_lock(mode: &str, refreshed: &str) -> String {
    format!(
        r#"{{"format":"crmvault-lock-1","id":"00112233445566aa","mode":"{mode}","since":"{refreshed}","refreshed":"{refreshed}","lease_seconds":600}}"#
    )
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn a_second_backup_is_told_who_holds_the_lock_or_waits_for_it_and_no_lock_outlives_a_failed_backup() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_second").crm().init("repo").backup();
    let lock = Path::new(&repo).join("locks/writer");
    let silent = silent_database(Duration::from_secs(6));
    let mut first = holding(&work, &["backup", "--db", &silent, "--repo", &repo], &lock);

    let started = Instant::now();
    let refused =
        work.run(&["backup", "--db", &source.url(), "--repo", &repo]).fails_with(1, "is locked by backup (host ");
    assert!(started.elapsed() < Duration::from_secs(3), "it did not fail at once");
    let line = refused.stderr.lines().find(|l| l.contains("is locked by")).unwrap().to_string();
    assert!(line.contains(&format!("pid {}", first.id())), "{line}");
    assert!(line.contains("append lock since "), "{line}");
    assert!(line.contains("--lock-wait") && line.contains("crmvault unlock"), "{line}");
    assert_eq!(refused.stderr.trim().lines().count(), 1, "one line: {}", refused.stderr);

    // Readers share the repository with the backup.
    work.run(&["verify", "--repo", &repo]).ok();

    let waited = work.run(&["backup", "--json", "--lock-wait", "60s", "--db", &source.url(), "--repo", &repo]).ok();
    assert!(waited.json()["snapshot_id"].is_string(), "{}", waited.stdout);
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(1), "the first backup's database never answered");
    assert!(locks_in(Path::new(&repo)).is_empty(), "{:?}", locks_in(Path::new(&repo)));

    // A backup that fails for any reason leaves no lock either.
    work.run(&["backup", "--db", &silent_database(Duration::ZERO), "--repo", &repo]).fails_with(1, "");
    assert!(locks_in(Path::new(&repo)).is_empty(), "{:?}", locks_in(Path::new(&repo)));
}

#[test]
fn a_lock_held_on_one_target_costs_that_target_the_night_not_the_others() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_one_of_two").crm().init("repo");
    let other = work.path("other").to_str().unwrap().to_string();
    work.run(&["init", "--copy-from", &repo, "--repo", &other]).ok();
    // A live lock on the second target only: planted by whoever holds its storage, or a
    // prune running there.
    std::fs::create_dir_all(Path::new(&other).join("locks")).unwrap();
    std::fs::write(Path::new(&other).join("locks/writer"), planted_lock("exclusive", &now())).unwrap();

    let run = work.run(&["backup", "--json", "--db", &source.url(), "--repo", &repo, "--repo", &other]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["targets"][0]["ok"], true, "{report}");
    assert_eq!(report["targets"][1]["ok"], false, "{report}");
    assert!(report["targets"][1]["error"].as_str().unwrap().contains("is locked by"), "{report}");
    let missed = report["snapshot_id"].as_str().unwrap().to_string();
    assert!(locks_in(Path::new(&repo)).is_empty(), "{:?}", locks_in(Path::new(&repo)));

    // Once the lock is gone, the next night reaches it and records the one it missed.
    std::fs::remove_file(Path::new(&other).join("locks/writer")).unwrap();
    let report = work.run(&["backup", "--json", "--db", &source.url(), "--repo", &repo, "--repo", &other]).ok().json();
    assert_eq!(report["targets"][1]["recorded_missed"], serde_json::json!([missed]), "{report}");
    // Locked everywhere: nothing to go on with, and every holder is named.
    for folder in [&repo, &other] {
        std::fs::write(Path::new(folder).join("locks/writer"), planted_lock("append", &now())).unwrap();
    }
    let refused = work.run(&["backup", "--db", &source.url(), "--repo", &repo, "--repo", &other]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert_eq!(refused.stderr.matches("is locked by").count(), 2, "{}", refused.stderr);
}

#[test]
fn a_lock_left_by_a_dead_process_on_this_host_is_taken_over_with_a_warning() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_dead").crm().init("repo");
    let lock = Path::new(&repo).join("locks/writer");
    let silent = silent_database(Duration::from_secs(60));
    let mut gone = holding(&work, &["backup", "--db", &silent, "--repo", &repo], &lock);
    let pid = gone.id();
    gone.kill().unwrap();
    gone.wait().unwrap();
    assert!(lock.exists(), "SIGKILL leaves the lock behind");

    let run = work.run(&["backup", "--db", &source.url(), "--repo", &repo]).ok();
    let warning = run.stderr.lines().find(|l| l.contains("taking over stale lock")).unwrap_or_else(|| {
        panic!("no warning: {}", run.stderr);
    });
    assert!(warning.contains("backup (host ") && warning.contains(&format!("pid {pid}")), "{warning}");
    assert!(warning.contains(&format!("process {pid} is gone")), "{warning}");
    assert!(locks_in(Path::new(&repo)).is_empty());
}

#[test]
fn a_lock_not_refreshed_within_its_lease_is_taken_over_and_unlock_removes_what_is_stale() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_lease").crm().init("repo");
    let locks = Path::new(&repo).join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let writer = locks.join("writer");

    // A live lock naming no holder (what a command run without a key writes): refused, saying so.
    std::fs::write(&writer, planted_lock("exclusive", &now())).unwrap();
    work.run(&["backup", "--db", &source.url(), "--repo", &repo])
        .fails_with(1, "is locked by a holder it does not name (a command run without a key writes none");
    work.run(&["verify", "--repo", &repo]).fails_with(1, "is locked by a holder it does not name");

    // Not refreshed for years: taken over.
    std::fs::write(&writer, planted_lock("append", "2020-01-01T00:00:00Z")).unwrap();
    let run = work.run(&["backup", "--db", &source.url(), "--repo", &repo]).ok();
    assert!(
        run.stderr.contains("taking over stale lock locks/writer held by a holder it does not name"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("not refreshed for"), "{}", run.stderr);
    assert!(locks_in(Path::new(&repo)).is_empty());

    // unlock: the stale one goes, the live one stays until --remove-all.
    std::fs::write(&writer, planted_lock("append", "2020-01-01T00:00:00Z")).unwrap();
    std::fs::write(locks.join("shared-00112233445566bb"), planted_lock("shared", &now())).unwrap();
    let run = work.run(&["unlock", "--repo", &repo]).ok();
    assert!(
        run.stdout.contains("removed") && run.stdout.contains("locks/writer held by a holder it does not name"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("kept") && run.stdout.contains("locks/shared-00112233445566bb"), "{}", run.stdout);
    assert_eq!(locks_in(Path::new(&repo)).len(), 1);
    let run = work.run(&["unlock", "--json", "--repo", &repo, "--remove-all"]).ok();
    assert_eq!(run.json()["locks"][0]["removed"], true, "{}", run.stdout);
    assert!(locks_in(Path::new(&repo)).is_empty());
    work.run(&["unlock", "--repo", &repo]).ok();
}

#[test]
fn readers_share_a_repository_and_a_rekey_waits_for_them() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_shared").crm().init("repo").backup();
    let silent = silent_database(Duration::from_secs(10));
    let key = work.admin_key();
    let mut restore = work
        .command()
        .args(["restore", "--repo", &repo, "--identity", &key, "--db", &silent])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_shared(Path::new(&repo));

    // Another reader and a backup go on beside it.
    work.run(&["verify", "--repo", &repo, "--identity", &key]).ok();
    work.run(&["backup", "--db", &source.url(), "--repo", &repo]).ok();
    // A rekey excludes readers: it names the restore (its admin key reads who holds the lock).
    let other = work.keygen("other.key");
    let run = work
        .run(&["rekey", "--repo", &repo, "--identity", &key, "--add-recipient", &other])
        .fails_with(1, "is locked by restore (host ");
    assert!(run.stderr.contains(&format!("pid {}", restore.id())), "{}", run.stderr);
    assert!(!Path::new(&repo).join("locks/writer").exists(), "a rekey that gave up let go of locks/writer");
    // With --lock-wait it runs once the restore is done.
    work.run(&["rekey", "--lock-wait", "60s", "--repo", &repo, "--identity", &key, "--add-recipient", &other]).ok();
    assert_eq!(restore.wait().unwrap().code(), Some(1));
    assert!(locks_in(Path::new(&repo)).is_empty());
}

#[test]
fn ctrl_c_and_sigterm_remove_the_lock_of_the_command_they_stop() {
    let Ready { work, repo, .. } = Scenario::new("lock_signal").crm().init("repo");
    let lock = Path::new(&repo).join("locks/writer");
    let silent = silent_database(Duration::from_secs(60));
    for signal in ["-INT", "-TERM"] {
        let mut backup = holding(&work, &["backup", "--db", &silent, "--repo", &repo], &lock);
        let killed = std::process::Command::new("kill").args([signal, &backup.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let status = backup.wait().unwrap();
        assert_eq!(status.code(), Some(1), "{signal}: {status:?}");
        assert!(locks_in(Path::new(&repo)).is_empty(), "{signal}: {:?}", locks_in(Path::new(&repo)));
    }
}

#[test]
fn copy_appends_to_its_destination_so_it_waits_for_a_backup_there_and_reads_beside_one_at_its_source() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_copy").crm().init("repo").backup();
    let copy = work.path("copy").to_str().unwrap().to_string();
    work.run(&["init", "--copy-from", &repo, "--repo", &copy]).ok();
    let silent = silent_database(Duration::from_secs(8));
    let mut backup =
        holding(&work, &["backup", "--db", &silent, "--repo", &copy], &Path::new(&copy).join("locks/writer"));
    let pid = backup.id();
    work.run(&["copy", "--from", &repo, "--to", &copy])
        .fails_with(1, &format!("{copy} is locked by backup (host "))
        .fails_with(1, &format!("pid {pid}"));
    assert!(locks_in(Path::new(&repo)).is_empty(), "the source's shared lock was let go");
    work.run(&["copy", "--lock-wait", "60s", "--from", &repo, "--to", &copy]).ok();
    backup.wait().unwrap();

    // A copy reads its source beside a backup that appends to it.
    let mut reading =
        holding(&work, &["backup", "--db", &silent, "--repo", &repo], &Path::new(&repo).join("locks/writer"));
    work.run(&["copy", "--from", &repo, "--to", &copy]).ok();
    reading.wait().unwrap();
    work.run(&["backup", "--db", &source.url(), "--repo", &repo]).ok();
    assert!(locks_in(Path::new(&repo)).is_empty() && locks_in(Path::new(&copy)).is_empty());
}

/// Starts `crmvault ARGS`; once its lock `lock` exists, another command takes it over (as a
/// prune would take over a lock whose holder stalled past its lease), long before the first
/// refresh. The command must then stop, exit 1, and say so.
fn taken_over_while_it_runs(work: &Workspace, args: &[&str], lock: &Path) {
    let child =
        work.command().args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("crmvault starts");
    let started = Instant::now();
    while !lock.exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "{args:?} never locked");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::fs::write(lock, planted_lock("exclusive", &now())).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was taken over while it ran"), "{stderr}");
}

#[test]
fn a_backup_whose_lock_was_taken_over_while_it_ran_commits_no_snapshot() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_lost").crm().filler().init("repo").backup();
    let snapshots = || std::fs::read_dir(Path::new(&repo).join("snapshots")).unwrap().count();
    let before = snapshots();
    let lock = Path::new(&repo).join("locks/writer");
    taken_over_while_it_runs(&work, &["backup", "--db", &source.url(), "--repo", &repo], &lock);
    assert_eq!(snapshots(), before, "a snapshot was committed under another's lock");
    // The new holder's lock is left to it.
    assert!(std::fs::read_to_string(&lock).unwrap().contains("00112233445566aa"));
}

#[test]
fn a_fifo_planted_as_the_lock_is_never_opened_but_taken_over_and_a_lock_refreshed_in_the_future_is_stale() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_fifo").crm().init("repo").backup();
    let lock = Path::new(&repo).join("locks/writer");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let status = std::process::Command::new("mkfifo").arg(&lock).status().expect("mkfifo runs");
    assert!(status.success());
    // Opening a FIFO blocks until someone writes to it: the backup must not. It is no lock, so
    // it is taken over (removed) like a stale one, and the backup runs.
    let started = Instant::now();
    let taken = work.run(&["backup", "--db", &source.url(), "--repo", &repo, "--lock-wait", "5s"]).ok();
    assert!(started.elapsed() < Duration::from_secs(30), "the backup hung on the FIFO");
    assert!(taken.stderr.contains("is not a regular file"), "{}", taken.stderr);
    assert!(!lock.exists(), "the FIFO is still there");

    // A forged lock "refreshed" next year would otherwise never go stale.
    std::fs::write(&lock, planted_lock("append", "2099-01-01T00:00:00Z")).unwrap();
    let taken = work.run(&["backup", "--db", &source.url(), "--repo", &repo]).ok();
    assert!(taken.stderr.contains("in the future"), "{}", taken.stderr);
}

#[test]
fn a_copy_whose_destination_lock_was_taken_over_commits_no_snapshot_there() {
    let Ready { work, repo, .. } = Scenario::new("lock_lost_copy").crm().filler().init("repo").backup();
    let copy = work.path("copy").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &copy, "--copy-from", &repo]).ok();
    let lock = Path::new(&copy).join("locks/writer");
    taken_over_while_it_runs(&work, &["copy", "--from", &repo, "--to", &copy], &lock);
    let snapshots = Path::new(&copy).join("snapshots");
    assert!(!snapshots.exists() || std::fs::read_dir(&snapshots).unwrap().count() == 0);
}

#[test]
fn huge_objects_planted_as_a_lock_or_a_snapshot_are_not_read() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_huge").crm().init("repo").backup();
    // Sparse: a gibibyte each on paper, nothing on disk.
    let lock = Path::new(&repo).join("locks/writer");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::File::create(&lock).unwrap().set_len(1 << 30).unwrap();
    let junk = Path::new(&repo).join("snapshots").join("ab".repeat(32));
    std::fs::File::create(&junk).unwrap().set_len(1 << 30).unwrap();

    // Read whole, they took a backup past 2 GB of memory; refused by size, they cost nothing.
    let taken = work.run(&["backup", "--db", &source.url(), "--repo", &repo]).ok();
    assert!(taken.stderr.contains("too large"), "{}", taken.stderr);
    let listed = work.run(&["snapshots", "--repo", &repo]).ok();
    assert!(listed.stdout.contains("too large"), "{}", listed.stdout);
}

/// A copy that takes its destination's lock over from a stale exclusive holder (a prune that
/// may only have stalled, and goes on deleting what no snapshot there named when it planned)
/// trusts only the objects a destination snapshot names: the ones an interrupted copy left
/// are copied again, so that the prune's deletes after the copy listed the destination
/// (done here by the test while the copy is held at its first read of the source's snapshot)
/// do not leave the new snapshot naming objects that are gone.
#[test]
fn a_copy_that_takes_over_a_stalled_prunes_lock_copies_again_what_no_snapshot_there_names() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: needs strace to hold the copy");
        return;
    }
    let Ready { source, work, repo, .. } = Scenario::new("lock_copy_takeover").crm().init("repo").backup();
    let copy = work.path("copy").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &copy, "--copy-from", &repo]).ok();
    // An interrupted copy: every object there, but no snapshot naming them.
    work.run(&["copy", "--from", &repo, "--to", &copy]).ok();
    let snapshot = std::fs::read_dir(Path::new(&copy).join("snapshots")).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_file(&snapshot).unwrap();
    let left: Vec<PathBuf> = ["data", "index", "dicts"]
        .iter()
        .map(|folder| Path::new(&copy).join(folder))
        .filter(|folder| folder.exists())
        .flat_map(|folder| files_under(&folder))
        .collect();
    assert!(!left.is_empty());
    // The stalled prune's lock: exclusive, not refreshed for longer than its lease.
    let lock = Path::new(&copy).join("locks/writer");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let stale = (chrono::Utc::now() - chrono::Duration::minutes(11)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(&lock, planted_lock("exclusive", &stale)).unwrap();

    let source_snapshot =
        Path::new(&repo).canonicalize().unwrap().join("snapshots").join(snapshot.file_name().unwrap());
    let child = work
        .command_for("strace")
        .args(["-f", "-qq", "-e", "trace=openat", "-e", "inject=openat:delay_enter=4s:when=1", "-P"])
        .arg(&source_snapshot)
        .args([env!("CARGO_BIN_EXE_crmvault"), "copy", "--from", &repo, "--to", &copy])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The copy took the lock over and listed the destination; the prune, awake, deletes.
    let started = Instant::now();
    while std::fs::read_to_string(&lock).is_ok_and(|text| text.contains("00112233445566aa")) {
        assert!(started.elapsed() < Duration::from_secs(30), "the copy never took the lock over");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    for path in &left {
        std::fs::remove_file(path).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("objects no snapshot names there are copied again"), "{stderr}");
    work.run(&["verify", "--repo", &copy, "--identity", &work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("lock_copy_takeover_restored");
    work.restore(&copy, &restored).ok();
    assert_same_database(&source, &restored);
}

/// After such a takeover, an object no destination snapshot names that stands in a copy's way
/// with the right size but other bytes (junk, or damage) stops the copy, named, instead of
/// being named by the new snapshot; removed, the next copy writes it and the copy restores.
#[test]
fn a_copy_after_a_takeover_refuses_junk_of_the_right_size_in_its_way() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_copy_junk").crm().init("repo").backup();
    let copy = work.path("copy").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &copy, "--copy-from", &repo]).ok();
    let pack = files_under(&Path::new(&repo).join("data")).into_iter().next().expect("a pack");
    let key = pack.strip_prefix(&repo).unwrap().to_path_buf();
    let junk = Path::new(&copy).join(&key);
    std::fs::create_dir_all(junk.parent().unwrap()).unwrap();
    std::fs::write(&junk, vec![0x5a; usize::try_from(std::fs::metadata(&pack).unwrap().len()).unwrap()]).unwrap();
    let lock = Path::new(&copy).join("locks/writer");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let stale = (chrono::Utc::now() - chrono::Duration::minutes(11)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(&lock, planted_lock("exclusive", &stale)).unwrap();

    work.run(&["copy", "--from", &repo, "--to", &copy]).fails_with(3, "do not match its name");
    assert!(
        !Path::new(&copy).join("snapshots").exists() || files_under(&Path::new(&copy).join("snapshots")).is_empty()
    );
    std::fs::remove_file(&junk).unwrap();
    work.run(&["copy", "--from", &repo, "--to", &copy]).ok();
    let restored = TestDb::create("lock_copy_junk_restored");
    work.restore(&copy, &restored).ok();
    assert_same_database(&source, &restored);
}

/// A reader whose storage takes no write (an auditor's read-only credentials, a read-only
/// mount, a full disk: here a `locks` folder made immutable) verifies and restores without a
/// lock object, saying so; it still waits for a live exclusive holder (a prune) it can read.
/// A backup is no reader: without its lock it stops.
#[test]
fn a_reader_that_cannot_write_its_lock_reads_without_one_but_not_beside_a_live_prune() {
    let Ready { source, work, repo, .. } = Scenario::new("lock_unwritable").crm().init("repo").backup();
    let key = work.admin_key();
    let locks = Path::new(&repo).join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let Some(frozen) = Immutable::set(std::slice::from_ref(&locks)) else {
        return skip("chattr +i needs root and a file system that has it");
    };
    let run = work.run(&["verify", "--repo", &repo, "--identity", &key]).ok();
    assert!(
        run.stderr.contains("cannot write a shared lock") && run.stderr.contains("reading without one"),
        "{}",
        run.stderr
    );
    let target = TestDb::create("lock_unwritable_target");
    work.restore(&repo, &target).ok();
    assert_same_database(&source, &target);
    work.run(&["backup", "--db", &source.url(), "--repo", &repo]).fails_with(1, "");
    drop(frozen);

    std::fs::write(locks.join("writer"), planted_lock("exclusive", &now())).unwrap();
    let _frozen = Immutable::set(std::slice::from_ref(&locks)).unwrap();
    work.run(&["verify", "--repo", &repo]).fails_with(1, "is locked by");
    assert!(locks_in(Path::new(&repo)).len() == 1, "{:?}", locks_in(Path::new(&repo)));
}
