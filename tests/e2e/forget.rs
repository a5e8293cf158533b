//! `forget` end to end: a retention policy removes what it does not keep, on every target,
//! with the writer key alone; its record lets `verify`, `backup` and `restore latest` tell a
//! forgotten snapshot from one deleted behind the repository's back (docs/FORMAT.md, *Forget
//! records*). The calendar rules are unit tests in src/retention.rs.

use std::path::Path;

use crate::common::*;

const TABLE: &str = "create table notes (id int primary key, body text); insert into notes values (1, 'first');";

/// The snapshot ids in a local repository.
fn snapshot_ids(repo: &str) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(Path::new(repo).join("snapshots"))
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

fn forget_records(repo: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(Path::new(repo).join("forgotten"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// A backup with `args` added; returns its snapshot id.
fn backup(ready: &Ready, repos: &[&str], args: &[&str]) -> String {
    let url = ready.source.url();
    let mut all = vec!["backup", "--json", "--db", &url];
    for repo in repos {
        all.extend(["--repo", repo]);
    }
    all.extend_from_slice(args);
    let report = ready.work.run(&all).ok();
    assert!(!report.stderr.contains("without being forgotten"), "{}", report.stderr);
    report.json()["snapshot_id"].as_str().expect("a snapshot id").to_string()
}

fn change(ready: &Ready, n: u32) {
    ready.source.sql(&format!("insert into notes values ({n}, 'note {n}')"));
}

#[test]
fn forget_keeps_what_the_policy_says_and_its_record_tells_a_forgotten_snapshot_from_a_deleted_one() {
    let ready = Scenario::new("forget_policy").sql(TABLE).init("repo");
    let repo = ready.repo.clone();
    let tagged = backup(&ready, &[&repo], &["--tag", "before-upgrade"]);
    let mut ids = vec![tagged.clone()];
    for n in 2..=4 {
        change(&ready, n);
        ids.push(backup(&ready, &[&repo], &[]));
    }
    let newest = ids[3].clone();

    // A dry run says what would go, and why the rest stays; nothing changes.
    let dry = ready
        .work
        .run(&["forget", "--json", "--dry-run", "--repo", &repo, "--keep-last", "1", "--keep-tag", "before-upgrade"])
        .ok()
        .json();
    let target = &dry["targets"][0];
    assert_eq!((target["kept"].as_u64(), target["removed"].as_u64()), (Some(2), Some(2)), "{dry}");
    let reasons = |id: &str| -> Vec<String> {
        let decision = target["snapshots"].as_array().unwrap().iter().find(|d| d["id"] == id).expect("listed");
        decision["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(reasons(&newest), ["last"]);
    assert_eq!(reasons(&tagged), ["tag before-upgrade"]);
    assert!(reasons(&ids[1]).is_empty());
    assert_eq!(snapshot_ids(&repo).len(), 4);
    assert!(forget_records(&repo).is_empty());

    // The writer key alone does it (no --identity): two snapshots go, one record stays.
    let text = ready.work.run(&["forget", "--repo", &repo, "--keep-last", "1", "--keep-tag", "before-upgrade"]).ok();
    assert!(text.stdout.contains("keep 2 snapshots, removed 2 snapshots"), "{}", text.stdout);
    let mut left = vec![tagged.clone(), newest.clone()];
    left.sort();
    assert_eq!(snapshot_ids(&repo), left);
    assert_eq!(forget_records(&repo).len(), 1);

    // The newest snapshot's predecessor is gone, on the record: verify finds nothing wrong, with
    // the writer key and with the admin's identity, and the newest restores whole.
    ready.work.run(&["verify", "--repo", &repo]).ok();
    ready.work.run(&["verify", "--repo", &repo, "--identity", &ready.work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("forget_policy_restored");
    ready.work.restore(&repo, &restored).ok();
    assert_same_database(&ready.source, &restored);

    // Without the record the same gap is a deletion.
    let record = forget_records(&repo).remove(0);
    let saved = std::fs::read(&record).unwrap();
    std::fs::remove_file(&record).unwrap();
    ready.work.run(&["verify", "--repo", &repo]).fails_with(3, "deleted without being forgotten");

    // A record the storage forged (no key: its MAC is made up) explains nothing and is named.
    let mut forged = String::from_utf8(saved).unwrap();
    let mac_at = forged.trim_end().rfind('\n').unwrap() + 1;
    forged.replace_range(mac_at..mac_at + 64, &"0".repeat(64));
    let name = blake3::hash(forged.as_bytes()).to_hex().to_string();
    std::fs::write(Path::new(&repo).join("forgotten").join(name), &forged).unwrap();
    let found = ready.work.run(&["verify", "--repo", &repo]).fails_with(3, "deleted without being forgotten");
    assert!(found.stdout.contains("a forget record that explains nothing"), "{}", found.stdout);
}

#[test]
fn forgetting_the_newest_snapshot_raises_no_rollback_alarm_anywhere() {
    let ready = Scenario::new("forget_newest").sql(TABLE).init("repo");
    let repo = ready.repo.clone();
    let kept = backup(&ready, &[&repo], &["--tag", "monthly"]);
    change(&ready, 2);
    backup(&ready, &[&repo], &[]);
    // The newest is this machine's high-water mark; the policy keeps only the tagged one.
    let run = ready.work.run(&["forget", "--json", "--repo", &repo, "--keep-tag", "monthly"]).ok().json();
    assert_eq!(run["targets"][0]["removed"], 1, "{run}");
    assert_eq!(snapshot_ids(&repo), [kept]);

    ready.work.run(&["verify", "--repo", &repo]).ok();
    let restored = TestDb::create("forget_newest_restored");
    let restore = ready.work.restore_with(&repo, &restored, &["--json"]).ok();
    assert!(!restore.stderr.contains("deleted from storage"), "{}", restore.stderr);
    assert!(restore.json().get("skipped_newer").is_none(), "{}", restore.stdout);
    let listing = ready.work.run(&["snapshots", "--repo", &repo]).ok();
    assert!(!listing.stderr.contains("deleted from storage"), "{}", listing.stderr);
    // The next backup names the forgotten snapshot as its predecessor without a warning
    // (`backup` asserts it), and the chain verifies.
    change(&ready, 3);
    backup(&ready, &[&repo], &[]);
    ready.work.run(&["verify", "--repo", &repo]).ok();
}

#[test]
fn a_kept_snapshot_below_forgotten_ones_that_prune_identity_resealed_still_verifies() {
    // forget keeps S2 (tagged) and S4; prune --identity repacks S1's packs, which S2 lists, so
    // S2 is sealed again as a copy and the original deleted. S4's way back through the
    // forgotten S3 reaches S2's old id: its copy stands for it, not a deletion.
    let ready = Scenario::new("forget_repack").sql(TABLE).init("repo");
    let repo = ready.repo.clone();
    backup(&ready, &[&repo], &[]);
    change(&ready, 2);
    let tagged = backup(&ready, &[&repo], &["--tag", "keep"]);
    change(&ready, 3);
    backup(&ready, &[&repo], &[]);
    change(&ready, 4);
    backup(&ready, &[&repo], &[]);
    ready.work.run(&["forget", "--repo", &repo, "--keep-tag", "keep", "--keep-last", "1"]).ok();
    let key = ready.work.admin_key();
    ready.work.run(&["prune", "--repo", &repo, "--identity", &key, "--max-unused", "0"]).ok();
    assert!(!snapshot_ids(&repo).contains(&tagged), "the tagged snapshot was sealed again as a copy");
    ready.work.run(&["verify", "--repo", &repo]).ok();
    ready.work.run(&["verify", "--repo", &repo, "--identity", &key, "--read-data"]).ok();
    let restored = TestDb::create("forget_repack_restored");
    ready.work.restore(&repo, &restored).ok();
    assert_same_database(&ready.source, &restored);
}

#[test]
fn a_target_added_later_verifies_after_forget_removed_its_first_snapshots() {
    // B joins with `init --copy-from` after S1: its first snapshot S2 names S1, which B never
    // held. forget then removes S2 (and S3) from B: the way back from B's oldest snapshot ends
    // at S1, where B's history starts, and that is no deletion.
    let ready = Scenario::new("forget_later").sql(TABLE).init("repo");
    let repo = ready.repo.clone();
    backup(&ready, &[&repo], &[]);
    let later = ready.work.path("later").to_str().unwrap().to_string();
    ready.work.run(&["init", "--copy-from", &repo, "--repo", &later]).ok();
    for n in 2..=5 {
        change(&ready, n);
        backup(&ready, &[&repo, &later], &[]);
    }
    ready.work.run(&["forget", "--repo", &repo, "--repo", &later, "--keep-last", "2"]).ok();
    assert_eq!(snapshot_ids(&later).len(), 2);
    for target in [&repo, &later] {
        ready.work.run(&["verify", "--repo", target]).ok();
        ready.work.run(&["verify", "--repo", target, "--identity", &ready.work.admin_key()]).ok();
    }
}

#[test]
fn deleting_the_only_snapshot_forget_left_is_reported_by_verify_after_the_next_backup() {
    // `forget --keep-last 1` leaves one snapshot; storage deletes it. The next backup's snapshot
    // is then the target's oldest, which verify used to exempt from the predecessor check (a
    // target's history may start later), so the deletion went unreported after one warning.
    let ready = Scenario::new("forget_only").sql(TABLE).init("repo");
    let repo = ready.repo.clone();
    backup(&ready, &[&repo], &[]);
    change(&ready, 2);
    let only = backup(&ready, &[&repo], &[]);
    ready.work.run(&["forget", "--repo", &repo, "--keep-last", "1"]).ok();
    std::fs::remove_file(std::path::Path::new(&repo).join("snapshots").join(&only)).unwrap();
    change(&ready, 3);
    let next = ready.work.run(&["backup", "--db", &ready.source.url(), "--repo", &repo]);
    next.fails_with(3, "deleted without being forgotten");
    for workspace in [&ready.work, &Workspace::new()] {
        let verify = workspace.run(&["verify", "--repo", &repo]);
        assert_eq!(verify.code, 3, "{}{}", verify.stdout, verify.stderr);
        assert!(
            verify.stdout.contains(&only) && verify.stdout.contains("deleted without being forgotten"),
            "{}",
            verify.stdout
        );
    }
}

#[test]
fn a_policy_that_keeps_nothing_is_refused_and_changes_nothing() {
    let ready = Scenario::new("forget_refused").sql(TABLE).init("repo").backup();
    let repo = ready.repo.clone();
    let before = snapshot_ids(&repo);
    ready
        .work
        .run(&["forget", "--repo", &repo, "--keep-tag", "no-such-tag"])
        .fails_with(1, "would remove all 1 snapshots of database");
    ready.work.run(&["forget", "--repo", &repo]).fails_with(2, "no retention policy");
    ready.work.run(&["forget", "--repo", &repo, "--keep-within", "30"]).fails_with(2, "needs a unit");
    ready
        .work
        .run(&["forget", "--repo", &repo, "--keep-last", "1", "--database", "nope"])
        .fails_with(1, "no snapshot is of database nope");
    let json = ready.work.run(&["forget", "--json", "--repo", &repo, "--keep-tag", "no-such-tag"]);
    assert_eq!(json.code, 1);
    assert_eq!(json.json()["ok"], false);
    assert_eq!(snapshot_ids(&repo), before);
    assert!(forget_records(&repo).is_empty());
}

#[test]
fn one_policy_is_applied_to_every_target_and_reported_for_each() {
    let ready = Scenario::new("forget_targets").sql(TABLE).init("repo");
    let (repo, copy) = (ready.repo.clone(), ready.work.path("copy").to_str().unwrap().to_string());
    // The copy is made empty and shares the repository (init --copy-from).
    ready.work.run(&["init", "--repo", &copy, "--copy-from", &repo]).ok();
    for n in 2..=4 {
        change(&ready, n);
        backup(&ready, &[&repo, &copy], &[]);
    }
    let run = ready.work.run(&["forget", "--json", "--repo", &repo, "--repo", &copy, "--keep-last", "2"]).ok().json();
    let targets = run["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{run}");
    for target in targets {
        assert_eq!((target["kept"].as_u64(), target["removed"].as_u64()), (Some(2), Some(1)), "{run}");
    }
    assert_eq!(snapshot_ids(&repo), snapshot_ids(&copy));
    assert_eq!(snapshot_ids(&repo).len(), 2);
    ready.work.run(&["verify", "--repo", &repo, "--repo", &copy]).ok();
}

#[test]
fn a_forget_record_outlives_a_rekey() {
    let ready = Scenario::new("forget_rekey").sql(TABLE).init("repo");
    let repo = ready.repo.clone();
    backup(&ready, &[&repo], &["--tag", "keep"]);
    for n in 2..=3 {
        change(&ready, n);
        backup(&ready, &[&repo], &[]);
    }
    ready.work.run(&["forget", "--repo", &repo, "--keep-last", "1", "--keep-tag", "keep"]).ok();
    // The record was written under the first generation's keys; the rekey carries it.
    let second = ready.work.keygen("second.key");
    let fingerprint = ready.work.fingerprint(&repo);
    ready
        .work
        .run(&[
            "rekey",
            "--repo",
            &repo,
            "--identity",
            &ready.work.admin_key(),
            "--fingerprint",
            &fingerprint,
            "--add-recipient",
            &second,
        ])
        .ok();
    // (An index only the forgotten snapshots listed is reported until `prune` deletes it.)
    let verified = ready.work.run(&["verify", "--repo", &repo, "--identity", &ready.work.admin_key()]);
    for needle in ["explains nothing", "without being forgotten", "forgotten/"] {
        assert!(!verified.stdout.contains(needle), "{}", verified.stdout);
    }
}

#[test]
fn forget_with_prune_frees_what_its_dry_run_said_and_what_is_left_restores() {
    let ready = Scenario::new("forget_prune").sql(TABLE).init("repo");
    let repo = ready.repo.clone();
    let mut nights = Vec::new();
    for n in 2..=5 {
        // Each night replaces the table's rows, so the oldest snapshots' packs hold rows no
        // later snapshot has.
        ready.source.sql(&format!("UPDATE notes SET body = repeat('night {n} ', 2000)"));
        change(&ready, n);
        nights.push((backup(&ready, &[&repo], &[]), ready.source.data()));
    }
    let args = ["forget", "--json", "--repo", &repo, "--keep-last", "2", "--prune"];
    let dry = ready.work.run(&[&args[..], &["--dry-run"]].concat()).ok().json();
    let would_free = dry["prune"][0]["garbage"]["packs"]["bytes"].as_u64().expect("a pack count");
    assert!(would_free > 0, "{dry}");
    assert_eq!(snapshot_ids(&repo).len(), 4);

    let done = ready.work.run(&args).ok().json();
    assert_eq!(done["targets"][0]["removed"], 2, "{done}");
    assert_eq!(done["prune"][0]["deleted"]["packs"]["bytes"].as_u64(), Some(would_free), "{done}");
    // Nothing is left to prune, and what is left is whole.
    let again = ready.work.run(&["prune", "--json", "--repo", &repo]).ok().json();
    assert_eq!(again["targets"][0]["deleted"]["packs"]["objects"], 0, "{again}");
    ready.work.run(&["verify", "--repo", &repo, "--identity", &ready.work.admin_key(), "--read-data"]).ok();
    // Every kept snapshot restores the database it was taken of.
    for (id, data) in &nights[2..] {
        let restored = TestDb::create("forget_prune_restored");
        ready.work.restore_with(&repo, &restored, &[id]).ok();
        assert!(restored.data() == *data, "snapshot {id} does not restore what it was taken of");
    }
}

#[test]
fn forget_on_a_bucket_skips_deletes_the_storage_refuses_and_finishes_once_they_are_allowed() {
    let server = crate::common::s3::S3Server::start();
    let source = TestDb::create("forget_s3");
    source.sql(TABLE);
    let work = Workspace::new();
    let recipient = work.keygen("admin.key");
    let bucket = server.repo("crm");
    server.run(&work, &["init", "--repo", &bucket, "--recipient", &recipient]).ok();
    let backup = || server.run(&work, &["backup", "--db", &source.url(), "--repo", &bucket]).ok();
    for n in 2..=4 {
        source.sql(&format!("insert into notes values ({n}, 'note {n}')"));
        backup();
    }
    let count = || {
        server.run(&work, &["snapshots", "--json", "--repo", &bucket]).ok().json()["snapshots"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(), 3);
    // A bucket that refuses deletes (Object Lock, a policy without s3:DeleteObject): the
    // refusal is a warning, not a failure, and the record names what is to go.
    if server.refuse_deletes(true) {
        let run = server.run(&work, &["forget", "--json", "--repo", &bucket, "--keep-last", "1"]).ok();
        assert!(run.stderr.contains("the storage refused the delete"), "{}", run.stderr);
        assert_eq!(run.json()["targets"][0]["refused"].as_array().map(Vec::len), Some(2), "{}", run.stdout);
        assert_eq!(count(), 3);
        server.refuse_deletes(false);
    }
    let run = server.run(&work, &["forget", "--json", "--prune", "--repo", &bucket, "--keep-last", "1"]).ok().json();
    assert_eq!(run["targets"][0]["removed"], 2, "{run}");
    assert!(
        run["prune"][0]["deleted"]["packs"]["objects"].as_u64().unwrap_or(0) > 0
            || run["prune"][0]["deleted"]["indexes"]["objects"].as_u64().unwrap_or(0) > 0,
        "{run}"
    );
    assert_eq!(count(), 1);
    server.run(&work, &["verify", "--repo", &bucket, "--identity", &work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("forget_s3_restored");
    server.run(&work, &["restore", "--repo", &bucket, "--identity", &work.admin_key(), "--db", &restored.url()]).ok();
    assert_same_database(&source, &restored);
}

#[test]
fn after_the_newest_snapshot_is_forgotten_deleting_the_newest_remaining_one_is_still_noticed() {
    let ready = Scenario::new("forget_head").sql(TABLE).init("repo");
    let repo = ready.repo.clone();
    let mut tagged = Vec::new();
    for n in 2..=4 {
        change(&ready, n);
        tagged.push(backup(&ready, &[&repo], &["--tag", "monthly"]));
    }
    change(&ready, 5);
    backup(&ready, &[&repo], &[]);
    // The newest (this machine's high-water mark) goes, on the record.
    ready.work.run(&["forget", "--repo", &repo, "--keep-tag", "monthly"]).ok();
    ready.work.run(&["verify", "--repo", &repo]).ok();
    // A storage writer deletes the newest remaining one: the record names its successor, not it.
    std::fs::remove_file(Path::new(&repo).join("snapshots").join(&tagged[2])).unwrap();
    let found = ready.work.run(&["verify", "--repo", &repo]).fails_with(3, "deleted without being forgotten");
    assert!(found.stdout.contains(&tagged[2]), "{}", found.stdout);
    let restored = TestDb::create("forget_head_restored");
    let restore = ready.work.restore_with(&repo, &restored, &["--json"]).ok();
    assert!(restore.stderr.contains("deleted from storage"), "{}", restore.stderr);
    assert_eq!(restore.json()["skipped_newer"], true, "{}", restore.stdout);
    // The listing, the first thing looked at, says so too (it listed what is left, exit 0).
    let listing = ready.work.run(&["snapshots", "--repo", &repo]).ok();
    assert!(
        listing.stderr.contains("snapshots were deleted from storage without being forgotten"),
        "{}",
        listing.stderr
    );
}

#[test]
fn a_record_naming_snapshots_still_there_is_not_carried_by_a_rekey() {
    let ready = Scenario::new("forget_planted").sql(TABLE).init("repo");
    let (work, repo) = (&ready.work, ready.repo.clone());
    let mut ids = Vec::new();
    for n in 2..=5 {
        change(&ready, n);
        ids.push(backup(&ready, &[&repo], &[]));
    }
    // A backup host about to be retired forgets on a private copy and plants the record.
    let stash = work.path("stash");
    copy_dir(Path::new(&repo), &stash);
    work.run(&["forget", "--repo", stash.to_str().unwrap(), "--keep-last", "1"]).ok();
    let live = Path::new(&repo).join("forgotten");
    std::fs::create_dir_all(&live).unwrap();
    for record in files_under(&stash.join("forgotten")) {
        std::fs::copy(&record, live.join(record.file_name().unwrap())).unwrap();
    }
    // The admins retire that writer key; the record names snapshots still there, so it is not
    // carried, and a deletion after the rotation is a deletion.
    let new_key = work.path("new-writer.key");
    let fingerprint = work.fingerprint(&repo);
    let rekey = work
        .run(&[
            "rekey",
            "--json",
            "--repo",
            &repo,
            "--identity",
            &work.admin_key(),
            "--fingerprint",
            &fingerprint,
            "--rotate-writer-key",
            "--writer-key-out",
            new_key.to_str().unwrap(),
        ])
        .ok()
        .json();
    let id = rekey["repository_id"].as_str().unwrap().to_string();
    std::fs::copy(&new_key, work.config_dir().join("repos").join(&id).join("writer.key")).unwrap();
    change(&ready, 6);
    backup(&ready, &[&repo], &[]);
    for id in &ids[1..3] {
        std::fs::remove_file(Path::new(&repo).join("snapshots").join(id)).unwrap();
    }
    work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key()])
        .fails_with(3, "deleted without being forgotten");
}

/// A repository and a second target of it (`init --copy-from`): the scenario, and both paths.
fn with_copy(label: &str) -> (Ready, String, String) {
    let ready = Scenario::new(label).sql(TABLE).init("repo");
    let (repo, copy) = (ready.repo.clone(), ready.work.path("copy").to_str().unwrap().to_string());
    ready.work.run(&["init", "--repo", &copy, "--copy-from", &repo]).ok();
    (ready, repo, copy)
}

/// Runs a backup to `repos` that one of them misses (it cannot be opened: renamed away for the
/// night); returns the snapshot id the others got.
fn backup_missing(ready: &Ready, repos: &[&str], away: &str) -> String {
    let hidden = format!("{away}.away");
    std::fs::rename(away, &hidden).unwrap();
    let url = ready.source.url();
    let mut all = vec!["backup", "--json", "--db", &url];
    for repo in repos {
        all.extend(["--repo", repo]);
    }
    let run = ready.work.run(&all);
    std::fs::rename(&hidden, away).unwrap();
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    run.json()["snapshot_id"].as_str().expect("a snapshot id").to_string()
}

#[test]
fn a_snapshot_only_the_targets_away_tonight_hold_is_not_called_deleted() {
    // The copy misses a night; the next night the folder that got it is away instead.
    let (ready, repo, copy) = with_copy("forget_away");
    backup(&ready, &[&repo, &copy], &[]);
    change(&ready, 2);
    let second = backup_missing(&ready, &[&repo, &copy], &copy);
    change(&ready, 3);
    let hidden = format!("{repo}.away");
    std::fs::rename(&repo, &hidden).unwrap();
    let run = ready.work.run(&["backup", "--json", "--db", &ready.source.url(), "--repo", &repo, "--repo", &copy]);
    std::fs::rename(&hidden, &repo).unwrap();
    let run = run.fails_with(3, "none of the targets reached tonight");
    assert!(run.stderr.contains(&second) && !run.stderr.contains("without being forgotten"), "{}", run.stderr);
    assert!(run.json()["deleted_snapshot"].is_null(), "{}", run.stdout);
    // Both back: everything verifies.
    change(&ready, 4);
    backup(&ready, &[&repo, &copy], &[]);
    for target in [&repo, &copy] {
        ready.work.run(&["verify", "--repo", target, "--identity", &ready.work.admin_key()]).ok();
    }
}

#[test]
fn a_target_that_missed_nights_verifies_once_the_next_backup_reaches_it() {
    // A folder and a second copy; the copy misses two nights in a row (its storage was away),
    // then comes back. Every target gets the same chain (one parent for all), so the copy's
    // next snapshot names one it never held: the backup host, which saw the nights fail,
    // records that there before that snapshot, and the copy verifies and restores alone.
    let (ready, repo, copy) = with_copy("forget_missed");
    backup(&ready, &[&repo, &copy], &[]);
    let mut missed = Vec::new();
    for n in 2..=3 {
        change(&ready, n);
        missed.push(backup_missing(&ready, &[&repo, &copy], &copy));
    }
    // Until a backup reaches it, the copy lacks the newest snapshot: said, and not as a deletion
    // this host cannot explain.
    let behind = ready.work.run(&["verify", "--repo", &copy]);
    assert_eq!(behind.code, 3, "{}{}", behind.stdout, behind.stderr);
    assert!(behind.stdout.contains(&missed[1]) && behind.stdout.contains("did not reach"), "{}", behind.stdout);

    change(&ready, 4);
    let run = ready.work.run(&["backup", "--json", "--db", &ready.source.url(), "--repo", &repo, "--repo", &copy]).ok();
    assert!(!run.stderr.contains("without being forgotten"), "{}", run.stderr);
    let on_copy = &run.json()["targets"][1];
    assert_eq!(on_copy["recorded_missed"], serde_json::json!(missed), "{}", run.stdout);
    assert_eq!(forget_records(&copy).len(), 1);
    // Here, and on a machine that never saw those nights (keyless).
    ready.work.run(&["verify", "--repo", &copy, "--identity", &ready.work.admin_key()]).ok();
    Workspace::new().run(&["verify", "--repo", &copy]).ok();
    let restored = TestDb::create("forget_missed_restored");
    ready.work.run(&["restore", "--repo", &copy, "--identity", &ready.work.admin_key(), "--db", &restored.url()]).ok();
    assert_same_database(&ready.source, &restored);
    // Recorded once: the next night writes no record.
    change(&ready, 5);
    backup(&ready, &[&repo, &copy], &[]);
    assert_eq!(forget_records(&copy).len(), 1);
    // A rekey carries the record (the other target holds its snapshots; this one does not).
    let second = ready.work.keygen("second.key");
    let fingerprint = ready.work.fingerprint(&repo);
    let admin = ready.work.admin_key();
    let rekey = ["rekey", "--repo", &repo, "--repo", &copy, "--identity", &admin, "--fingerprint", &fingerprint];
    ready.work.run(&[&rekey[..], &["--add-recipient", &second]].concat()).ok();
    ready.work.run(&["verify", "--repo", &copy, "--identity", &admin]).ok();
}

#[test]
fn a_missed_record_whose_snapshots_were_copied_there_is_removed_by_a_rekey_not_left_to_alarm_verify() {
    // The copy misses night 2, the next backup records it there, and the admin then `copy`s the
    // snapshot it lacks (as docs/OPERATIONS.md advises). The record now explains nothing; a
    // rekey that left it under the old generation made `verify` report it as written under
    // another config, every night, with no way to clear it.
    let (ready, repo, copy) = with_copy("forget_missed_copied");
    backup(&ready, &[&repo, &copy], &[]);
    change(&ready, 2);
    backup_missing(&ready, &[&repo, &copy], &copy);
    change(&ready, 3);
    backup(&ready, &[&repo, &copy], &[]);
    assert_eq!(forget_records(&copy).len(), 1);
    ready.work.run(&["copy", "--from", &repo, "--to", &copy]).ok();
    let admin = ready.work.admin_key();
    ready.work.run(&["verify", "--repo", &copy, "--identity", &admin]).ok();
    let second = ready.work.keygen("second.key");
    let fingerprint = ready.work.fingerprint(&repo);
    let rekey = ["rekey", "--repo", &repo, "--repo", &copy, "--identity", &admin, "--fingerprint", &fingerprint];
    let run = ready.work.run(&[&rekey[..], &["--add-recipient", &second]].concat()).ok();
    assert!(run.stdout.contains("a missed record whose snapshots were copied there since"), "{}", run.stdout);
    assert!(forget_records(&copy).is_empty(), "the settled record removed");
    ready.work.run(&["verify", "--repo", &copy, "--identity", &admin]).ok();
    ready.work.run(&["verify", "--repo", &copy]).ok();
    change(&ready, 4);
    backup(&ready, &[&repo, &copy], &[]);
    ready.work.run(&["verify", "--repo", &copy, "--identity", &admin]).ok();

    // Settled by what the target holds whole, not by names: a storage writer's junk under a
    // missed snapshot's name, or the other target's object of that snapshot copied in (its MAC
    // holds anywhere; the packs it names are the other target's), is not removed for.
    for (night, junk) in [(5, true), (7, false)] {
        change(&ready, night);
        let missed = backup_missing(&ready, &[&repo, &copy], &copy);
        change(&ready, night + 1);
        backup(&ready, &[&repo, &copy], &[]);
        let records = forget_records(&copy).len();
        let bytes = if junk {
            b"junk".to_vec()
        } else {
            std::fs::read(Path::new(&repo).join("snapshots").join(&missed)).unwrap()
        };
        std::fs::write(Path::new(&copy).join("snapshots").join(&missed), bytes).unwrap();
        let key = ready.work.keygen(&format!("admin{night}.key"));
        let run = ready.work.run(&[&rekey[..], &["--add-recipient", &key]].concat()).ok();
        assert!(!run.stdout.contains("a missed record"), "{}", run.stdout);
        assert_eq!(forget_records(&copy).len(), records, "the record kept");
    }
}

#[test]
fn a_snapshot_deleted_from_one_target_is_not_taken_for_a_missed_night() {
    // Storage deletes the newest snapshot from one target only (the other still has it). No
    // backup failed there, so the next backup records nothing and the deletion stays reported.
    let (ready, repo, copy) = with_copy("forget_not_missed");
    backup(&ready, &[&repo, &copy], &[]);
    change(&ready, 2);
    let deleted = backup(&ready, &[&repo, &copy], &[]);
    std::fs::remove_file(Path::new(&copy).join("snapshots").join(&deleted)).unwrap();
    change(&ready, 3);
    ready.work.run(&["backup", "--db", &ready.source.url(), "--repo", &repo, "--repo", &copy]).ok();
    assert!(forget_records(&copy).is_empty());
    for workspace in [&ready.work, &Workspace::new()] {
        let verify = workspace.run(&["verify", "--repo", &copy]);
        assert_eq!(verify.code, 3, "{}{}", verify.stdout, verify.stderr);
        assert!(
            verify.stdout.contains(&deleted) && verify.stdout.contains("deleted without being forgotten"),
            "{}",
            verify.stdout
        );
    }
}

#[test]
fn after_a_missed_night_older_snapshots_deleted_from_that_target_are_still_reported() {
    // The copy missed night 3 and has its record; storage then deletes night 2 (below the
    // missed one) from it. The record says the copy never had night 3, nothing about night 2.
    let (ready, repo, copy) = with_copy("forget_missed_below");
    backup(&ready, &[&repo, &copy], &[]);
    change(&ready, 2);
    let second = backup(&ready, &[&repo, &copy], &[]);
    change(&ready, 3);
    backup_missing(&ready, &[&repo, &copy], &copy);
    change(&ready, 4);
    backup(&ready, &[&repo, &copy], &[]);
    assert_eq!(forget_records(&copy).len(), 1);
    std::fs::remove_file(Path::new(&copy).join("snapshots").join(&second)).unwrap();
    for workspace in [&ready.work, &Workspace::new()] {
        let verify = workspace.run(&["verify", "--repo", &copy]);
        assert_eq!(verify.code, 3, "{}{}", verify.stdout, verify.stderr);
        assert!(
            verify.stdout.contains(&second) && verify.stdout.contains("deleted without being forgotten"),
            "{}",
            verify.stdout
        );
    }
}

/// The copy misses night 2 and gets its missed record; someone with write access to the first
/// target copies that record there and deletes night 2 from it. Returns the missed night too.
fn missed_record_moved_to_the_first_target(label: &str) -> (Ready, String, String, String) {
    let (ready, repo, copy) = with_copy(label);
    backup(&ready, &[&repo, &copy], &[]);
    change(&ready, 2);
    let missed = backup_missing(&ready, &[&repo, &copy], &copy);
    change(&ready, 3);
    backup(&ready, &[&repo, &copy], &[]);
    let record = forget_records(&copy).pop().expect("the copy's missed record");
    let forgotten = Path::new(&repo).join("forgotten");
    std::fs::create_dir_all(&forgotten).unwrap();
    std::fs::copy(&record, forgotten.join(record.file_name().unwrap())).unwrap();
    std::fs::remove_file(Path::new(&repo).join("snapshots").join(&missed)).unwrap();
    (ready, repo, copy, missed)
}

#[test]
fn a_missed_record_copied_to_another_target_explains_nothing_there() {
    // The copy missed night 2 and got its record. Someone with write access to the first
    // target copies that record there and deletes night 2 from it: the record names the copy,
    // so the first target's verify reports both.
    let (ready, repo, copy, missed) = missed_record_moved_to_the_first_target("forget_missed_moved");
    let verify = ready.work.run(&["verify", "--repo", &repo, "--identity", &ready.work.admin_key()]);
    assert_eq!(verify.code, 3, "{}{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains("a missed record of another target"), "{}", verify.stdout);
    assert!(
        verify.stdout.contains(&missed) && verify.stdout.contains("deleted without being forgotten"),
        "{}",
        verify.stdout
    );
    // The copy itself still verifies: the record is its own.
    ready.work.run(&["verify", "--repo", &copy, "--identity", &ready.work.admin_key()]).ok();
}

#[test]
fn a_link_made_in_storage_does_not_make_another_targets_missed_record_this_ones() {
    // A place is the folder as the location spells it, links not followed, because whoever
    // holds the storage can make links. The copy's missed record is copied to the first target,
    // whose missed night is deleted; then each folder in turn is made a link to the other. A
    // record that names the copy explains nothing on the first target, whichever folder a link
    // leads to.
    let (ready, repo, copy, missed) = missed_record_moved_to_the_first_target("forget_missed_linked_away");
    let reports_the_deletion = |folder: &str| {
        for workspace in [&ready.work, &Workspace::new()] {
            let verify = workspace.run(&["verify", "--repo", folder]);
            assert_eq!(verify.code, 3, "{}{}", verify.stdout, verify.stderr);
            assert!(verify.stdout.contains("a missed record of another target"), "{}", verify.stdout);
            assert!(
                verify.stdout.contains(&missed) && verify.stdout.contains("deleted without being forgotten"),
                "{}",
                verify.stdout
            );
        }
    };
    // The copy's folder made a link to the first target: the record's folder now leads there.
    std::fs::rename(&copy, format!("{copy}.moved")).unwrap();
    std::os::unix::fs::symlink(&repo, &copy).unwrap();
    reports_the_deletion(&repo);
    // The first target's folder made a link to the copy's (the name verified leads where the
    // record was written; the copy's own record there is not read as the first target's).
    std::fs::remove_file(&copy).unwrap();
    std::fs::rename(format!("{copy}.moved"), &copy).unwrap();
    std::fs::rename(&repo, format!("{repo}.moved")).unwrap();
    std::fs::create_dir_all(Path::new(&copy).join("forgotten")).unwrap();
    std::os::unix::fs::symlink(&copy, &repo).unwrap();
    let verify = ready.work.run(&["verify", "--repo", &repo]);
    assert_ne!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains("a missed record of another target"), "{}", verify.stdout);
}

/// `forget ID` resolves a short id over every target at once: one naming a snapshot on one
/// target and another object on the second (planted there under a name with the same first
/// digits) is refused as naming two, and nothing changes on either.
#[test]
fn a_short_id_naming_a_snapshot_on_each_of_two_targets_is_refused() {
    let (ready, repo, copy) = with_copy("forget_two_matches");
    let id = backup(&ready, &[&repo, &copy], &[]);
    change(&ready, 2);
    backup(&ready, &[&repo, &copy], &[]);
    let planted = format!("{}{}", &id[..8], "0".repeat(56));
    assert_ne!(planted, id);
    std::fs::write(Path::new(&copy).join("snapshots").join(&planted), b"junk").unwrap();
    let before = (snapshot_ids(&repo), snapshot_ids(&copy));
    ready.work.run(&["forget", "--repo", &repo, "--repo", &copy, &id[..8]]).fails_with(1, "matches 2 snapshots");
    assert_eq!((snapshot_ids(&repo), snapshot_ids(&copy)), before, "nothing forgotten");
    assert!(forget_records(&repo).is_empty() && forget_records(&copy).is_empty());
    // The full id names one.
    std::fs::remove_file(Path::new(&copy).join("snapshots").join(&planted)).unwrap();
    ready.work.run(&["forget", "--repo", &repo, "--repo", &copy, &id]).ok();
    assert!(!snapshot_ids(&repo).contains(&id) && !snapshot_ids(&copy).contains(&id));
}
