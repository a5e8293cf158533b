//! A year of nights brings full disks and busy databases: what a backup does then
//! (docs/OPERATIONS.md, *When things go wrong at night*). A flaky S3 target: s3.rs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A tmpfs of `size` mounted at `path` until dropped (needs root: else None).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| SmallDisk(path.to_path_buf()))
    }

    fn grow(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount runs");
        assert!(status.success(), "remount failed");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_folder_that_fills_up_ends_the_backup_cleanly_and_the_next_one_succeeds_once_there_is_room() {
    let source = TestDb::create("full_disk");
    source.load_file(&fixture("examples/crm.sql"));
    source.add_filler();
    let work = Workspace::new();
    let Some(disk) = SmallDisk::mount(&work.path("small"), "3m") else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let repo = work.init_repo("small/repo");
    let full = work.run(&["backup", "--db", &source.url(), "--repo", &repo]);
    assert_eq!(full.code, 1, "{}\n{}", full.stdout, full.stderr);
    let errors: Vec<&str> = full.stderr.lines().filter(|l| l.starts_with("crmvault: error")).collect();
    assert_eq!(errors.len(), 1, "{}", full.stderr);
    assert!(errors[0].contains("No space left on device"), "{}", full.stderr);
    assert!(!full.stderr.contains("panicked"), "{}", full.stderr);
    // Nothing half-written is a snapshot: the repository verifies as it was (empty).
    let snapshots = std::path::Path::new(&repo).join("snapshots");
    assert!(!snapshots.exists() || files_under(&snapshots).is_empty());
    work.run(&["verify", "--repo", &repo]).ok();

    disk.grow("200m");
    work.run(&["backup", "--db", &source.url(), "--repo", &repo]).ok();
    work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("full_disk_restored");
    work.restore(&repo, &restored).ok();
    assert_same_database(&source, &restored);
}

#[test]
fn a_backup_taken_while_the_crm_is_busy_restores_a_state_where_every_total_and_reference_holds() {
    let source = TestDb::create("busy");
    source.add_filler();
    source.sql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL); \
         INSERT INTO accounts SELECT i, 1000 FROM generate_series(1, 1000) i; \
         CREATE TABLE parents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, born timestamptz DEFAULT now()); \
         CREATE TABLE children (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                                parent_id bigint NOT NULL REFERENCES parents); \
         INSERT INTO parents DEFAULT VALUES; INSERT INTO children (parent_id) VALUES (1);",
    );
    // Transfers between accounts (the total stays 1 000 000) and new parents with children,
    // each in its own transaction, as fast as the server takes them, for up to a minute.
    let workload = "DO $$ DECLARE a int; b int; p bigint; \
        BEGIN FOR i IN 1..1000000 LOOP \
          a := 1 + (i * 7919) % 1000; b := 1 + (i * 104729) % 1000; \
          UPDATE accounts SET balance = balance - 13 WHERE id = a; \
          UPDATE accounts SET balance = balance + 13 WHERE id = b; \
          INSERT INTO parents DEFAULT VALUES RETURNING id INTO p; \
          INSERT INTO children (parent_id) VALUES (p), (p); \
          COMMIT; \
          EXIT WHEN clock_timestamp() - now() > interval '60 seconds'; \
        END LOOP; END $$;";
    let mut writer = Command::new(pg_program("psql"))
        .args(["-X", "-q", "-d", &source.url(), "-c", workload])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql starts");
    let count = || source.sql("SELECT count(*) FROM parents").trim().parse::<u64>().unwrap();
    let started = Instant::now();
    while count() < 100 {
        assert!(started.elapsed() < Duration::from_secs(30), "the workload does not run");
        std::thread::sleep(Duration::from_millis(20));
    }
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let before = count();
    work.backup(&source, &repo);
    let after = count();
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(after > before, "nothing was written while the backup ran");

    let restored = TestDb::create("busy_restored");
    work.restore(&repo, &restored).ok();
    let total = restored.sql("SELECT sum(balance) FROM accounts").trim().to_string();
    assert_eq!(total, "1000000", "the snapshot holds half a transfer");
    let orphans = restored
        .sql("SELECT count(*) FROM children c WHERE NOT EXISTS (SELECT 1 FROM parents p WHERE p.id = c.parent_id)");
    assert_eq!(orphans.trim(), "0");
    let (parents, children) = (
        restored.sql("SELECT count(*) FROM parents").trim().parse::<u64>().unwrap(),
        restored.sql("SELECT count(*) FROM children").trim().parse::<u64>().unwrap(),
    );
    // One state of the database: every parent with both its children, and the count the
    // backup recorded.
    assert_eq!(children, 2 * parents - 1);
    assert!((before..=after).contains(&parents), "{before} <= {parents} <= {after}");
}

#[test]
fn a_full_target_among_several_does_not_cost_the_others_their_night_even_before_its_lock() {
    let source = TestDb::create("full_one_of_two");
    source.load_file(&fixture("examples/crm.sql"));
    let work = Workspace::new();
    let Some(_disk) = SmallDisk::mount(&work.path("small"), "4m") else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let recipient = work.keygen("admin.key");
    let roomy = work.path("roomy").to_str().unwrap().to_string();
    let small = work.path("small/repo").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &roomy, "--repo", &small, "--recipient", &recipient]).ok();
    work.run(&["backup", "--db", &source.url(), "--repo", &roomy, "--repo", &small]).ok();
    // Full to the last byte: not even the lock can be written there.
    let filler = work.path("small/filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut file, &[0u8; 4096]).is_ok() {}
    drop(file);

    source.sql("UPDATE crm.contacts SET email = email || '.full' WHERE id % 5 = 0");
    let night = work.run(&["backup", "--json", "--db", &source.url(), "--repo", &roomy, "--repo", &small]);
    assert_eq!(night.code, 3, "{}\n{}", night.stdout, night.stderr);
    let report = night.json();
    assert_eq!(report["targets"][0]["ok"], true, "{report}");
    assert_eq!(report["targets"][1]["ok"], false, "{report}");
    assert!(report["targets"][1]["error"].as_str().unwrap().contains("No space left on device"), "{report}");
    // The JSON goes to a log; cron mails stderr, which names the target missed.
    assert!(night.stderr.contains(small.as_str()) && night.stderr.contains("(no snapshot written there)"));
    assert!(night.stderr.contains("backup finished with problems"), "{}", night.stderr);
    let missed = report["snapshot_id"].as_str().unwrap().to_string();
    let restored = TestDb::create("full_one_of_two_restored");
    work.restore(&roomy, &restored).ok();
    assert_same_database(&source, &restored);

    // Room again: the next night reaches it and records the one it missed; it verifies.
    std::fs::remove_file(&filler).unwrap();
    let report = work.run(&["backup", "--json", "--db", &source.url(), "--repo", &roomy, "--repo", &small]).ok().json();
    assert_eq!(report["targets"][1]["recorded_missed"], serde_json::json!([missed]), "{report}");
    work.run(&["verify", "--repo", &small, "--identity", &work.admin_key()]).ok();
}

/// A copy into a folder that fills up ends there (exit 1, one line saying why), not snapshot
/// after snapshot as if each were damaged (the storage failing ends a copy; one snapshot's own
/// damage does not: untrusted_storage.rs). Nothing half-copied is a snapshot there, and the
/// next copy, once there is room, brings every snapshot whole.
#[test]
fn a_copy_into_a_folder_that_fills_up_ends_there_and_the_next_one_completes_it() {
    let source = TestDb::create("full_copy");
    source.load_file(&fixture("examples/crm.sql"));
    source.add_filler();
    let work = Workspace::new();
    let Some(disk) = SmallDisk::mount(&work.path("small"), "3m") else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let repo = work.init_repo("repo");
    for night in 1..=3 {
        source.sql(&format!("UPDATE public.filler SET body = body || '{night}' WHERE id % 7 = {night}"));
        work.backup(&source, &repo);
    }
    let copy = work.path("small/copy").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &copy, "--copy-from", &repo]).ok();

    let full = work.run(&["copy", "--json", "--from", &repo, "--to", &copy]);
    assert_eq!(full.code, 1, "{}\n{}", full.stdout, full.stderr);
    let errors: Vec<&str> = full.stderr.lines().filter(|l| l.starts_with("crmvault: error")).collect();
    assert_eq!(errors.len(), 1, "{}", full.stderr);
    assert!(errors[0].contains("No space left on device"), "{}", full.stderr);
    assert!(!full.stderr.contains("not copied"), "each snapshot tried as if damaged: {}", full.stderr);
    let snapshots = std::path::Path::new(&copy).join("snapshots");
    assert!(!snapshots.exists() || files_under(&snapshots).is_empty());

    disk.grow("200m");
    let report = work.run(&["copy", "--json", "--from", &repo, "--to", &copy]).ok().json();
    assert_eq!(report["snapshots_copied"].as_array().unwrap().len(), 3, "{report}");
    work.run(&["verify", "--repo", &copy, "--identity", &work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("full_copy_restored");
    work.restore(&copy, &restored).ok();
    assert_same_database(&source, &restored);
}
