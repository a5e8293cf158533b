//! `prune` end to end: it deletes exactly what no remaining snapshot lists (checked here from
//! the snapshot headers, independently of crmvault), every remaining snapshot still verifies
//! and restores, a dry run deletes nothing and says what the run then deletes, deletes the
//! storage refuses are skipped and finished by the next prune, a damaged snapshot stops it,
//! a backup's lock holds it off, and it needs no key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::crash::{kill_backup_when, kill_when};
use crate::locks::{holding, silent_database};

/// About 1.4 MB of text in a table of its own: enough for its own dictionary and packs, so
/// that dropping the table leaves them to the snapshots taken before.
const SCRATCH: &str = "CREATE TABLE public.scratch AS SELECT i AS id, md5(i::text) || md5((i * 3)::text) AS body \
                       FROM generate_series(1, 20000) i";

/// The keys (relative to the repository) of every file under `data/`, `index/`, `dicts/`:
/// objects, and the staging files (`<key>#<n>`) of writes a killed backup did not finish.
fn stored(repo: &str) -> BTreeSet<String> {
    let root = Path::new(repo);
    ["data", "index", "dicts"]
        .iter()
        .filter(|folder| root.join(folder).exists())
        .flat_map(|folder| files_under(&root.join(folder)))
        .map(|file| file.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// What the snapshots' headers list, read from the objects' second lines as FORMAT.md says.
fn listed(repo: &str) -> BTreeSet<String> {
    let mut live = BTreeSet::new();
    for file in snapshot_files(repo) {
        let text = std::fs::read(&file).unwrap();
        let header_line = text.split(|&b| b == b'\n').nth(1).unwrap();
        let header: serde_json::Value = serde_json::from_slice(header_line).unwrap();
        let ids = |field: &str| -> Vec<String> {
            header[field].as_array().map_or(vec![], |a| a.iter().map(|o| o["id"].as_str().unwrap().into()).collect())
        };
        live.extend(ids("packs").into_iter().map(|id| format!("data/{}/{id}", &id[..2])));
        live.extend(ids("indexes").into_iter().map(|id| format!("index/{id}")));
        live.extend(ids("dictionaries").into_iter().map(|id| format!("dicts/{id}")));
    }
    live
}

/// What no snapshot lists: what prune must delete.
fn garbage(repo: &str) -> BTreeSet<String> {
    stored(repo).difference(&listed(repo)).cloned().collect()
}

fn size_of(repo: &str, keys: &BTreeSet<String>) -> u64 {
    keys.iter().map(|key| std::fs::metadata(Path::new(repo).join(key)).unwrap().len()).sum()
}

fn count_in(keys: &BTreeSet<String>, folder: &str) -> u64 {
    keys.iter().filter(|key| key.starts_with(&format!("{folder}/"))).count() as u64
}

/// The one target's report of `prune --json`.
fn target_report(run: &Run) -> serde_json::Value {
    let json = run.json();
    assert_eq!(json["ok"], true, "{}", run.stdout);
    assert_eq!(json["targets"].as_array().unwrap().len(), 1, "{}", run.stdout);
    json["targets"][0].clone()
}

/// The amounts by kind a report (`garbage`, `deleted`) must give for `keys`, as measured in the
/// folder (before they are deleted).
fn amounts(repo: &str, keys: &BTreeSet<String>) -> serde_json::Value {
    let mut expected = serde_json::json!({});
    for (field, folder) in [("packs", "data"), ("indexes", "index"), ("dictionaries", "dicts")] {
        let subset: BTreeSet<String> = keys.iter().filter(|k| k.starts_with(&format!("{folder}/"))).cloned().collect();
        expected[field] = serde_json::json!({ "objects": subset.len(), "bytes": size_of(repo, &subset) });
    }
    expected
}

/// Asserts that a report's amounts are `expected` ([`amounts`]).
fn assert_amounts(report: &serde_json::Value, expected: &serde_json::Value) {
    for field in ["packs", "indexes", "dictionaries"] {
        assert_eq!(report[field], expected[field], "{field}: {report}");
    }
}

fn snapshot_files(repo: &str) -> Vec<PathBuf> {
    let folder = Path::new(repo).join("snapshots");
    if folder.exists() { files_under(&folder) } else { Vec::new() }
}

/// A night's snapshot id and the data it was taken of (`TestDb::data`).
type Night = (String, Vec<(String, TableData)>);

/// Every remaining snapshot verifies (with the admin key, reading every chunk) and restores to
/// the data it was taken of.
fn assert_every_snapshot_restores(work: &Workspace, repo: &str, nights: &[Night]) {
    work.run(&["verify", "--repo", repo, "--identity", &work.admin_key(), "--read-data"]).ok();
    let remaining: BTreeSet<String> =
        snapshot_files(repo).iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let mut restored_any = false;
    for (id, data) in nights.iter().filter(|(id, _)| remaining.contains(id)) {
        let restored = TestDb::create("prune_restored");
        work.restore_with(repo, &restored, &[id]).ok();
        assert!(restored.data() == *data, "snapshot {id} does not restore the database it was taken of");
        restored_any = true;
    }
    assert!(restored_any, "no snapshot left to restore");
}

/// Three nights; the first has a table the next ones dropped. Returns (snapshot id, data) per night.
fn three_nights(source: &TestDb, work: &Workspace, repo: &str) -> Vec<Night> {
    let mut nights = Vec::new();
    for change in [
        SCRATCH,
        "DROP TABLE public.scratch; UPDATE crm.contacts SET phone = '+1 555 0100' WHERE id % 3 = 0",
        "DELETE FROM crm.activities WHERE id % 2 = 0; UPDATE crm.deals SET amount = amount + 1",
    ] {
        source.sql(change);
        let report = work.backup(source, repo);
        nights.push((report["snapshot_id"].as_str().unwrap().to_string(), source.data()));
    }
    nights
}

/// Deletes the oldest snapshot object by hand, as `forget` would.
fn forget_oldest(repo: &str, nights: &[Night]) {
    std::fs::remove_file(Path::new(repo).join("snapshots").join(&nights[0].0)).unwrap();
}

#[test]
fn prune_deletes_what_only_forgotten_snapshots_used_and_a_dry_run_said_so_first() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_forgotten").crm().init("repo");
    let nights = three_nights(&source, &work, &repo);
    assert!(garbage(&repo).is_empty(), "nothing is garbage before a snapshot goes: {:?}", garbage(&repo));
    let nothing = target_report(&work.run(&["prune", "--json", "--repo", &repo]).ok());
    assert_eq!(nothing["deleted"]["packs"]["objects"], 0, "{nothing}");

    forget_oldest(&repo, &nights);
    let expected = garbage(&repo);
    assert!(count_in(&expected, "data") >= 1, "the dropped table's packs: {expected:?}");
    assert!(count_in(&expected, "dicts") >= 1, "the dropped table's dictionary: {expected:?}");
    let before = stored(&repo);

    // A dry run deletes nothing and says what the run will delete.
    let dry = work.run(&["prune", "--dry-run", "--repo", &repo]).ok();
    assert!(dry.stdout.contains("would delete") && dry.stdout.contains("to free"), "{}", dry.stdout);
    let dry = target_report(&work.run(&["prune", "--dry-run", "--json", "--repo", &repo]).ok());
    assert_eq!(stored(&repo), before, "a dry run deleted something");
    assert_eq!(dry["dry_run"], true);
    assert_amounts(&dry["garbage"], &amounts(&repo, &expected));
    assert_eq!(dry["deleted"]["packs"]["objects"], 0);

    let pruned = work.run(&["prune", "--json", "--repo", &repo]).ok();
    let report = target_report(&pruned);
    assert_eq!(report["garbage"], dry["garbage"], "the run deleted other than the dry run said");
    assert_eq!(report["deleted"], dry["garbage"]);
    assert_eq!(report["refused"]["objects"], 0);
    assert_eq!(report["snapshots"], 2);
    assert_eq!(stored(&repo), before.difference(&expected).cloned().collect(), "deleted other than the garbage");
    assert!(stored(&repo).is_superset(&listed(&repo)), "a listed object went");
    for kept in ["config", "configs", "keys"] {
        assert!(Path::new(&repo).join(kept).exists(), "{kept} went");
    }

    // The text report says it per target.
    let again = work.run(&["prune", "--repo", &repo]).ok();
    assert!(again.stdout.starts_with(&format!("{repo}: nothing to delete; kept ")), "{}", again.stdout);
    assert_every_snapshot_restores(&work, &repo, &nights);
}

#[test]
fn deletes_the_storage_refuses_are_skipped_and_the_next_prune_finishes_the_job() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_refused").crm().init("repo");
    let nights = three_nights(&source, &work, &repo);
    forget_oldest(&repo, &nights);
    let expected = garbage(&repo);
    let packs: Vec<PathBuf> =
        expected.iter().filter(|k| k.starts_with("data/")).map(|k| Path::new(&repo).join(k)).collect();
    assert!(!packs.is_empty(), "{expected:?}");

    // The tests run as root, whom file modes do not stop: an immutable file refuses even root.
    let Some(frozen) = Immutable::set(&packs) else {
        return skip("chattr +i is not available on this file system");
    };
    let run = work.run(&["prune", "--json", "--repo", &repo]).ok();
    let report = target_report(&run);
    assert_eq!(report["refused"]["objects"], packs.len() as u64, "{}", run.stdout);
    assert_eq!(report["deleted"]["packs"]["objects"], 0, "{}", run.stdout);
    assert_eq!(report["deleted"]["dictionaries"]["objects"], count_in(&expected, "dicts"), "{}", run.stdout);
    let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.contains("refused to delete")).collect();
    assert_eq!(warnings.len(), 1, "one line per target: {}", run.stderr);
    assert!(warnings[0].contains(&format!("{} (", count_noun(packs.len(), "object"))), "{}", warnings[0]);
    assert!(warnings[0].contains("left for a later prune"), "{}", warnings[0]);
    // Stopped after its index deletes, as a killed prune would be: every snapshot still whole.
    assert_every_snapshot_restores(&work, &repo, &nights);
    // A backup meanwhile stores what it needs again, and is whole too.
    work.backup(&source, &repo);

    drop(frozen);
    let report = target_report(&work.run(&["prune", "--json", "--repo", &repo]).ok());
    assert_eq!(report["deleted"]["packs"]["objects"], packs.len() as u64, "{report}");
    assert!(packs.iter().all(|pack| !pack.exists()));
    assert!(garbage(&repo).is_empty(), "{:?}", garbage(&repo));
    assert_every_snapshot_restores(&work, &repo, &nights);
}

fn count_noun(count: usize, noun: &str) -> String {
    if count == 1 { format!("1 {noun}") } else { format!("{count} {noun}s") }
}

#[test]
fn what_a_killed_backup_left_is_deleted_without_any_key_and_a_missing_target_is_a_warning() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_leftovers").crm().filler().init("repo");
    let a_pack_landed = || stored(&repo).iter().any(|key| key.starts_with("data/") && !key.contains('#'));
    assert!(kill_backup_when(&work, &source, &repo, a_pack_landed), "the backup was too quick to interrupt");
    assert!(snapshot_files(&repo).is_empty());
    // A pack write killed before it was published leaves its staging file: plant one for sure.
    let pack = stored(&repo).into_iter().find(|key| key.starts_with("data/") && !key.contains('#')).unwrap();
    std::fs::copy(Path::new(&repo).join(&pack), Path::new(&repo).join(format!("{pack}#7"))).unwrap();
    let leftovers = stored(&repo);
    assert!(!leftovers.is_empty());
    let report = work.backup(&source, &repo);
    let id = report["snapshot_id"].as_str().unwrap().to_string();
    let expected = garbage(&repo);
    assert!(!expected.is_empty() && expected.is_subset(&leftovers), "{expected:?} of {leftovers:?}");

    // Someone with no key at all: no writer key, no identity.
    let expected_amounts = amounts(&repo, &expected);
    let stranger = Workspace::new();
    assert!(!stranger.config_dir().join("repos").exists());
    let run = stranger.run(&["prune", "--json", "--repo", &repo]).ok();
    assert_amounts(&target_report(&run)["deleted"], &expected_amounts);
    assert!(garbage(&repo).is_empty(), "{:?}", garbage(&repo));
    assert!(!Path::new(&repo).join(format!("{pack}#7")).exists());

    // Of several targets, one that does not open is a warning and exit code 3.
    let missing = work.path("missing").to_string_lossy().into_owned();
    let run = stranger.run(&["prune", "--json", "--repo", &repo, "--repo", &missing]).fails_with(3, "not pruned");
    let json = run.json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["targets"][0]["location"], repo.as_str());
    assert_eq!(json["failed"][0]["location"], missing.as_str());
    // With that one alone, its error is the error.
    stranger.run(&["prune", "--repo", &missing]).fails_with(1, &missing);

    let restored = TestDb::create("prune_leftovers_restored");
    work.restore_with(&repo, &restored, &[&id]).ok();
    assert_same_database(&source, &restored);
}

#[test]
fn a_snapshot_whose_header_does_not_read_stops_prune_before_it_deletes_anything() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_damaged").crm().init("repo");
    let nights = three_nights(&source, &work, &repo);
    forget_oldest(&repo, &nights);
    // Junk under snapshots/ that is not named by a hash cannot be a snapshot: passed over.
    std::fs::write(Path::new(&repo).join("snapshots/notes.txt"), "not a snapshot").unwrap();
    let damaged = Path::new(&repo).join("snapshots").join(&nights[1].0);
    std::fs::write(&damaged, "crmvault-snapshot 7\n{\"vers").unwrap();
    let before = stored(&repo);

    let run = work.run(&["prune", "--repo", &repo]).fails_with(1, "prune cannot tell what that snapshot needs");
    let line = run.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains(&format!("snapshots/{}", nights[1].0)), "{line}");
    assert!(line.contains("crmvault verify") && line.contains("by hand"), "{line}");
    assert_eq!(stored(&repo), before, "deleted with a snapshot it could not read");

    std::fs::remove_file(&damaged).unwrap();
    work.run(&["prune", "--repo", &repo]).ok();
    assert!(Path::new(&repo).join("snapshots/notes.txt").exists(), "prune deletes no snapshot object");
}

#[test]
fn prune_waits_for_a_running_backup_and_a_dry_run_runs_beside_it() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_locked").crm().init("repo").backup();
    let lock = Path::new(&repo).join("locks/writer");
    let silent = silent_database(Duration::from_secs(6));
    let mut backup = holding(&work, &["backup", "--db", &silent, "--repo", &repo], &lock);

    let started = Instant::now();
    let refused = work.run(&["prune", "--repo", &repo]).fails_with(1, "is locked by backup (host ");
    assert!(started.elapsed() < Duration::from_secs(3), "it did not fail at once");
    assert!(refused.stderr.contains(&format!("pid {}", backup.id())), "{}", refused.stderr);
    assert!(refused.stderr.contains("append lock since"), "{}", refused.stderr);

    // A dry run changes nothing: it shares the repository with the backup.
    work.run(&["prune", "--dry-run", "--repo", &repo]).ok();

    let waited = work.run(&["prune", "--lock-wait", "60s", "--repo", &repo]).ok();
    assert!(waited.stdout.contains("nothing to delete"), "{}", waited.stdout);
    assert!(backup.wait().unwrap().code() == Some(1), "the held backup's database never answered");
    assert!(!lock.exists(), "prune left its lock");
    work.backup(&source, &repo);
}

#[test]
fn prune_deletes_nothing_a_snapshot_of_an_older_format_needs() {
    // Their headers list packs, indexes and dictionaries as format 7's do (format 2 had
    // dictionaries already): a prune must find nothing to delete in them.
    let work = Workspace::new();
    for format in 2..=5 {
        let repo = work.path(&format!("format{format}"));
        copy_dir(&fixture(&format!("tests/fixtures/format{format}/repo")), &repo);
        let before = files_under(&repo);
        let repo = repo.to_str().unwrap();
        let report = target_report(&work.run(&["prune", "--json", "--repo", repo]).ok());
        assert_eq!(report["garbage"]["packs"]["objects"], 0, "format {format}: {report}");
        assert_eq!(report["kept"]["dictionaries"]["objects"], 1, "format {format}: {report}");
        assert_eq!(files_under(Path::new(repo)), before, "format {format}");
    }
}

/// Prune on a bucket (`cargo test --test e2e s3::` selects it; CI runs it against moto too).
mod s3 {
    use std::collections::BTreeSet;

    use crmvault::target::{OpenMode, Target};

    use super::{SCRATCH, count_noun, target_report};
    use crate::common::s3::S3Server;
    use crate::common::*;

    fn run_s3(work: &Workspace, server: &S3Server, args: &[&str]) -> Run {
        server.run(work, args)
    }

    /// The repository's objects in the bucket, and what its snapshot headers list, read through
    /// the storage layer alone.
    struct Bucket {
        target: Target,
        runtime: tokio::runtime::Runtime,
    }

    impl Bucket {
        fn open(server: &S3Server, repo: &str) -> Bucket {
            let target = Target::open_with(repo, OpenMode::Existing, &server.settings()).unwrap();
            Bucket { target, runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap() }
        }

        fn keys(&self, folder: &str) -> BTreeSet<String> {
            self.runtime.block_on(self.target.list(folder)).unwrap().into_iter().map(|(key, _)| key).collect()
        }

        fn stored(&self) -> BTreeSet<String> {
            ["data", "index", "dicts"].iter().flat_map(|folder| self.keys(folder)).collect()
        }

        fn listed(&self) -> BTreeSet<String> {
            let mut live = BTreeSet::new();
            for key in self.keys("snapshots") {
                let bytes = self.runtime.block_on(self.target.get_at_most(&key, u64::MAX)).unwrap();
                let header: serde_json::Value =
                    serde_json::from_slice(bytes.split(|&b| b == b'\n').nth(1).unwrap()).unwrap();
                for (field, folder) in [("packs", "data"), ("indexes", "index"), ("dictionaries", "dicts")] {
                    for object in header[field].as_array().into_iter().flatten() {
                        let id = object["id"].as_str().unwrap();
                        live.insert(if folder == "data" {
                            format!("data/{}/{id}", &id[..2])
                        } else {
                            format!("{folder}/{id}")
                        });
                    }
                }
            }
            live
        }

        fn delete(&self, key: &str) {
            self.runtime.block_on(self.target.delete(key)).unwrap();
        }
    }

    #[test]
    fn s3_prune_skips_deletes_refused_with_access_denied_and_finishes_once_allowed() {
        let server = S3Server::start();
        let source = TestDb::create("prune_s3");
        source.load_file(&fixture("examples/crm.sql"));
        let work = Workspace::new();
        let recipient = work.keygen("admin.key");
        let repo = server.repo("crm");
        run_s3(&work, &server, &["init", "--repo", &repo, "--recipient", &recipient]).ok();
        let mut ids = Vec::new();
        for change in [SCRATCH, "DROP TABLE public.scratch; UPDATE crm.contacts SET phone = '+1 555 0101'"] {
            source.sql(change);
            let report =
                run_s3(&work, &server, &["backup", "--json", "--no-alarm", "--db", &source.url(), "--repo", &repo])
                    .ok();
            ids.push(report.json()["snapshot_id"].as_str().unwrap().to_string());
        }
        let bucket = Bucket::open(&server, &repo);
        bucket.delete(&format!("snapshots/{}", ids[0]));
        let before = bucket.stored();
        let garbage: BTreeSet<String> = before.difference(&bucket.listed()).cloned().collect();
        assert!(garbage.iter().any(|key| key.starts_with("data/")), "{garbage:?}");

        if server.refuse_deletes(true) {
            let run = run_s3(&work, &server, &["prune", "--json", "--repo", &repo]).ok();
            let report = target_report(&run);
            assert_eq!(report["refused"]["objects"], garbage.len() as u64, "{}", run.stdout);
            assert!(report["refused"]["reason"].as_str().unwrap().contains("refused to delete"), "{report}");
            // One line for the target's refused deletes (besides the lock prune could not
            // remove either: it goes stale and the next command takes it over).
            let warnings: Vec<&str> =
                run.stderr.lines().filter(|l| l.starts_with("crmvault: warning:") && l.contains("refused")).collect();
            assert_eq!(warnings.len(), 1, "{}", run.stderr);
            let refused = format!("refused to delete {}", count_noun(garbage.len(), "object"));
            assert!(warnings[0].contains(&refused), "{}", warnings[0]);
            assert_eq!(bucket.stored(), before);
            server.refuse_deletes(false);
        }
        let run = run_s3(&work, &server, &["prune", "--json", "--repo", &repo]).ok();
        let report = target_report(&run);
        assert_eq!(report["refused"]["objects"], 0, "{}", run.stdout);
        assert_eq!(bucket.stored(), before.difference(&garbage).cloned().collect::<BTreeSet<_>>());

        run_s3(&work, &server, &["verify", "--repo", &repo, "--identity", &work.admin_key(), "--read-data"]).ok();
        let restored = TestDb::create("prune_s3_restored");
        let key = work.admin_key();
        run_s3(&work, &server, &["restore", "--repo", &repo, "--identity", &key, "--db", &restored.url()]).ok();
        assert_same_database(&source, &restored);
    }
}

#[test]
fn prune_killed_at_any_point_leaves_every_snapshot_restorable_and_the_next_prune_finishes() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_killed").crm().init("repo");
    let mut nights = three_nights(&source, &work, &repo);
    // More garbage: two more nights, each with a table of its own; all but the last go (the
    // fourth night stored nothing but its table: its index goes too).
    for n in 0..2 {
        // Rows of their own (not the first night's again, which would keep its packs alive).
        source.sql(
            &SCRATCH
                .replace("public.scratch", &format!("public.scratch_{n}"))
                .replace("(i * 3)", &format!("(i * {})", 5 + n)),
        );
        let report = work.backup(&source, &repo);
        nights.push((report["snapshot_id"].as_str().unwrap().to_string(), source.data()));
        source.sql(&format!("DROP TABLE public.scratch_{n}"));
    }
    work.run(&["forget", "--repo", &repo, "--keep-last", "1"]).ok();
    let before = garbage(&repo);
    assert!(count_in(&before, "index") > 0 && count_in(&before, "data") > 0, "{before:?}");
    let folder = |name: &str| count_in(&stored(&repo), name);
    let (indexes, packs) = (folder("index"), folder("data"));

    // Killed once an index is gone (before any pack), then once a pack is gone.
    // (On the backup host: the writer key shows the killed prune's pid, so the next one takes
    // its lock over at once instead of waiting out the lease.)
    let killed_early = kill_when(&work, &["prune", "--repo", &repo], || folder("index") < indexes);
    assert_every_snapshot_restores(&work, &repo, &nights);
    let killed_later = kill_when(&work, &["prune", "--repo", &repo], || folder("data") < packs);
    assert_every_snapshot_restores(&work, &repo, &nights);
    eprintln!("killed after an index: {killed_early}; after a pack: {killed_later}");

    // The next prune finishes the job: nothing any snapshot lists is gone, no garbage is left.
    work.run(&["prune", "--repo", &repo]).ok();
    assert!(garbage(&repo).is_empty(), "{:?}", garbage(&repo));
    assert!(listed(&repo).is_subset(&stored(&repo)));
    assert_every_snapshot_restores(&work, &repo, &nights);
}

#[test]
fn a_backup_and_a_prune_started_together_leave_every_snapshot_restorable() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_together").crm().filler().init("repo");
    let mut nights = three_nights(&source, &work, &repo);
    forget_oldest(&repo, &nights);
    for (first, second) in [("backup", "prune"), ("prune", "backup")] {
        source.sql("UPDATE public.filler SET body = upper(body) WHERE id % 50 = 0");
        let start = |command: &str| {
            let url = source.url();
            let mut args = vec![command, "--repo", &repo, "--lock-wait", "120s", "--json"];
            if command == "backup" {
                args.extend(["--db", &url]);
            }
            work.command()
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (start(first), start(second));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        for (name, output) in [(first, &a), (second, &b)] {
            assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
        }
        let backup = if first == "backup" { &a } else { &b };
        let report: serde_json::Value = serde_json::from_slice(&backup.stdout).unwrap();
        nights.push((report["snapshot_id"].as_str().unwrap().to_string(), source.data()));
        // No snapshot names an object that is gone.
        assert!(listed(&repo).is_subset(&stored(&repo)), "a snapshot names a deleted object");
    }
    assert_every_snapshot_restores(&work, &repo, &nights);
}

/// Whether a snapshot's header lists the pack `pack_key` (`data/xx/<id>`).
fn header_lists(repo: &str, snapshot: &str, pack_key: &str) -> bool {
    let text = std::fs::read(Path::new(repo).join("snapshots").join(snapshot)).unwrap();
    let header: serde_json::Value = serde_json::from_slice(text.split(|&b| b == b'\n').nth(1).unwrap()).unwrap();
    header["packs"].as_array().unwrap().iter().any(|p| pack_key.ends_with(p["id"].as_str().unwrap()))
}

/// A prune that stalls in the middle of deleting (here its delete of one garbage pack is held
/// 20 s by strace, and its lock is made to look as it does after a stall past its lease) while
/// a backup takes the lock over and commits: the backup reuses no pack the prune may be
/// deleting (only packs a snapshot lists, since it took over an exclusive lock), and the
/// prune, back, finds its lock gone and stops. Every snapshot still restores.
#[test]
fn a_prune_that_stalls_past_its_lease_never_deletes_what_the_backup_after_it_needs() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: needs strace to hold a delete");
        return;
    }
    let Ready { source, work, repo, .. } = Scenario::new("prune_stall").crm().init("repo");
    source.sql(SCRATCH);
    work.backup(&source, &repo);
    source.sql("DROP TABLE public.scratch");
    work.backup(&source, &repo);
    work.run(&["forget", "--repo", &repo, "--keep-last", "1"]).ok();
    let victim = garbage(&repo).into_iter().find(|key| key.starts_with("data/")).expect("a garbage pack");
    let victim_path = Path::new(&repo).canonicalize().unwrap().join(&victim);

    let prune = work
        .command_for("strace")
        .args(["-f", "-qq", "-e", "trace=unlink,unlinkat", "-e", "inject=unlink,unlinkat:delay_enter=20s", "-P"])
        // A delete is by name in the folder held open (`unlinkat` on its descriptor): held
        // are the deletes in the victim's folder.
        .arg(victim_path.parent().unwrap())
        .args([env!("CARGO_BIN_EXE_crmvault"), "prune", "--repo", &repo])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = Path::new(&repo).join("locks/writer");
    let started = Instant::now();
    while !lock.exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "prune never locked");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(victim_path.exists(), "prune is held at its delete of {victim}");
    // What an 11-minute stall leaves: its lock, not refreshed for longer than its lease.
    let mut stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
    let old = (chrono::Utc::now() - chrono::Duration::minutes(11)).to_rfc3339();
    stored["refreshed"] = serde_json::Value::String(old.clone());
    stored["since"] = serde_json::Value::String(old);
    std::fs::write(&lock, serde_json::to_vec(&stored).unwrap()).unwrap();

    // The scratch table is back: its chunks are in a garbage pack an index still describes.
    source.sql(SCRATCH);
    let backup = work.run(&["backup", "--json", "--db", &source.url(), "--repo", &repo]).ok();
    assert!(backup.stderr.contains("reuses only packs a snapshot lists"), "{}", backup.stderr);
    let snapshot = backup.json()["snapshot_id"].as_str().unwrap().to_string();
    assert!(!header_lists(&repo, &snapshot, &victim), "the new snapshot reuses {victim}");

    let out = prune.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "the stalled prune went on: {stderr}");
    assert!(stderr.contains("was taken over while it ran"), "{stderr}");
    work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("prune_stall_restored");
    work.restore(&repo, &restored).ok();
    assert_same_database(&source, &restored);
}

/// A prune stopped in the middle of deleting (SIGSTOP, as a suspended machine) while another
/// command takes its lock over, then woken: the first delete after the pause confirms the lock,
/// so it stops with at most the deletes already sent landing, instead of going on from its old
/// plan for up to 256 more.
#[test]
fn a_prune_woken_after_a_pause_confirms_its_lock_before_it_deletes_on() {
    const JUNK: usize = 3000;
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: needs strace to slow the deletes");
        return;
    }
    let Ready { work, repo, .. } = Scenario::new("prune_pause").crm().init("repo").backup();
    let junk: Vec<PathBuf> = (0..JUNK)
        .map(|n: usize| {
            let id = blake3::hash(&n.to_le_bytes()).to_hex().to_string();
            let path = Path::new(&repo).join("data").join(&id[..2]).join(&id);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"junk").unwrap();
            path
        })
        .collect();
    let left = || junk.iter().filter(|path| path.exists()).count();
    // Each delete held 10 ms, so that the prune is caught in the middle of them.
    let prune = work
        .command_for("strace")
        .args(["-f", "-qq", "-e", "trace=unlink,unlinkat", "-e", "inject=unlink,unlinkat:delay_enter=10ms"])
        .args([env!("CARGO_BIN_EXE_crmvault"), "prune", "--repo", &repo])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while left() > JUNK - 100 {
        assert!(started.elapsed() < Duration::from_secs(60), "prune never got to deleting");
        std::thread::sleep(Duration::from_millis(20));
    }
    let children = format!("/proc/{0}/task/{0}/children", prune.id());
    let pid = std::fs::read_to_string(&children).unwrap().trim().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_secs(1));
    let stopped_with = left();
    assert!(stopped_with > 300, "prune deleted too fast to be caught: {stopped_with} left");
    // Meanwhile another command takes the lock over; the prune sleeps past CONFIRM_AFTER.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(Path::new(&repo).join("locks/writer"), crate::locks::planted_lock("append", &now)).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let out = prune.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "the woken prune went on: {stderr}");
    assert!(stderr.contains("was taken over while it ran"), "{stderr}");
    let deleted_after = stopped_with - left();
    assert!(deleted_after <= 16, "the woken prune deleted {deleted_after} objects before it stopped");
}

#[test]
fn headers_rewritten_in_storage_to_list_nothing_do_not_make_the_backup_host_prune_everything() {
    let Ready { work, repo, .. } = Scenario::new("prune_forged_headers").crm().init("repo").backup();
    let before = stored(&repo);
    assert!(count_in(&before, "data") > 0);
    for file in snapshot_files(&repo) {
        rewrite_header(&file, |header| {
            header["packs"] = serde_json::json!([]);
            header["indexes"] = serde_json::json!([]);
            header["dictionaries"] = serde_json::json!([]);
        });
    }
    // The backup host holds the writer key: the snapshot's MAC no longer matches its header, so
    // prune refuses that target and deletes nothing.
    work.run(&["prune", "--repo", &repo]).fails_with(1, "MAC does not match");
    assert_eq!(stored(&repo), before, "prune deleted what a forged header left out");
}

/// A backup to two targets writes each its own packs, and each target's object of a snapshot
/// names that target's: its MAC holds wherever it lies. Put in the place of this target's
/// object of the snapshot, it must not make the backup host's prune delete what the object it
/// replaced needs (it deleted that snapshot's packs and index here before).
#[test]
fn another_targets_object_of_a_snapshot_put_in_its_place_does_not_make_prune_delete_what_it_needs() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_swapped").crm().init("repo");
    let other = work.path("other").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &other, "--copy-from", &repo]).ok();
    let report = work.backup_with(&source, &repo, &["--repo", &other]);
    let id = report["snapshot_id"].as_str().unwrap().to_string();
    let ours = Path::new(&repo).join("snapshots").join(&id);
    let theirs = std::fs::read(Path::new(&other).join("snapshots").join(&id)).unwrap();
    let kept = std::fs::read(&ours).unwrap();
    assert_ne!(kept, theirs, "each target's object names its own packs");
    std::fs::write(&ours, &theirs).unwrap();
    let before = stored(&repo);

    work.run(&["prune", "--repo", &repo]).fails_with(1, "does not hold");
    assert_eq!(stored(&repo), before, "prune deleted what the replaced snapshot object needed");
    // Nor with empty objects planted under the names it lacks.
    let header: serde_json::Value = serde_json::from_slice(theirs.split(|&b| b == b'\n').nth(1).unwrap()).unwrap();
    let mut named = Vec::new();
    for (folder, list) in [("data", "packs"), ("index", "indexes"), ("dicts", "dictionaries")] {
        for id in header[list].as_array().into_iter().flatten().map(|o| o["id"].as_str().unwrap()) {
            named.push(if folder == "data" { format!("data/{}/{id}", &id[..2]) } else { format!("{folder}/{id}") });
        }
    }
    for key in named {
        let path = Path::new(&repo).join(&key);
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"").unwrap();
        }
    }
    let planted = stored(&repo);
    assert!(planted.len() > before.len());
    work.run(&["prune", "--repo", &repo]).fails_with(1, "does not hold");
    assert_eq!(stored(&repo), planted, "prune deleted what the replaced snapshot object needed");
    for key in planted.iter().filter(|key| !before.contains(*key)) {
        std::fs::remove_file(Path::new(&repo).join(key)).unwrap();
    }
    // Its own object put back, the target is whole.
    std::fs::write(&ours, &kept).unwrap();
    work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key()]).ok();
    let target = TestDb::create("prune_swapped_target");
    work.restore(&repo, &target).ok();
    assert_same_database(&source, &target);
}

/// Two nights of a scratch table whose first 70% of rows changed on the second night: the first
/// night's scratch pack is then mostly garbage once the first snapshot is forgotten, and still
/// listed by the second (its last rows did not change). Returns the remaining nights.
fn mostly_garbage_packs(source: &TestDb, work: &Workspace, repo: &str) -> Vec<Night> {
    let mut nights = Vec::new();
    for change in [
        SCRATCH,
        "UPDATE public.scratch SET body = md5((id * 7)::text) || md5((id * 11)::text) WHERE id <= 14000",
        "UPDATE crm.deals SET amount = amount + 1 WHERE id % 4 = 0",
    ] {
        source.sql(change);
        let report = work.backup(source, repo);
        nights.push((report["snapshot_id"].as_str().unwrap().to_string(), source.data()));
    }
    forget_oldest(repo, &nights);
    nights.remove(0);
    nights
}

/// The id a night's snapshot has now: its own, or that of the copy that replaced it (a chain of
/// `replaces`, read from the headers as FORMAT.md says).
fn current_id(repo: &str, id: &str) -> Option<String> {
    let mut replaced_by = std::collections::BTreeMap::new();
    let mut present = BTreeSet::new();
    for file in snapshot_files(repo) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read(&file).unwrap();
        let header: serde_json::Value = serde_json::from_slice(text.split(|&b| b == b'\n').nth(1).unwrap()).unwrap();
        if let Some(old) = header["replaces"].as_str() {
            replaced_by.insert(old.to_string(), name.clone());
        }
        present.insert(name);
    }
    let mut id = id.to_string();
    while let Some(next) = replaced_by.get(&id) {
        id.clone_from(next);
    }
    present.contains(&id).then_some(id)
}

/// Every night verifies (admin key, every chunk read) and restores, by its id or its copy's,
/// to the data it was taken of.
fn assert_every_night_restores(work: &Workspace, repo: &str, nights: &[Night], label: &str) {
    work.run(&["verify", "--repo", repo, "--identity", &work.admin_key(), "--read-data"]).ok();
    for (id, data) in nights {
        let now = current_id(repo, id).unwrap_or_else(|| panic!("{label}: snapshot {id} is gone, and no copy of it"));
        let restored = TestDb::create("prune_repacked");
        work.restore_with(repo, &restored, &[&now]).ok();
        assert!(restored.data() == *data, "{label}: snapshot {id} (now {now}) does not restore its night's data");
    }
}

fn prune_as_admin(work: &Workspace, repo: &str, extra: &[&str]) -> Run {
    let key = work.admin_key();
    let mut args = vec!["prune", "--json", "--repo", repo, "--identity", &key];
    args.extend_from_slice(extra);
    work.run(&args)
}

fn repo_bytes(repo: &str) -> u64 {
    let stored = stored(repo);
    size_of(repo, &stored)
}

#[test]
fn prune_with_an_identity_repacks_mostly_unused_packs_and_every_snapshot_still_restores() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_repack").crm().init("repo");
    let nights = mostly_garbage_packs(&source, &work, &repo);
    // Without a key, the mostly unused pack stays: the second night lists it.
    work.run(&["prune", "--repo", &repo]).ok();
    let keyless = repo_bytes(&repo);

    let dry = prune_as_admin(&work, &repo, &["--dry-run"]).ok().json();
    let would = &dry["repacked"][0];
    assert!(would["packs_repacked"].as_u64().unwrap() >= 1, "{dry}");
    assert!(would["freed_bytes"].as_u64().unwrap() > 100_000, "{dry}");
    assert_eq!(repo_bytes(&repo), keyless, "a dry run changes nothing");

    let run = prune_as_admin(&work, &repo, &[]).ok().json();
    let done = &run["repacked"][0];
    assert!(done["packs_repacked"].as_u64().unwrap() >= 1, "{run}");
    assert_eq!(done["snapshots_resealed"], 2, "{run}");
    let repacked = repo_bytes(&repo);
    assert!(
        repacked + would["freed_bytes"].as_u64().unwrap() / 2 < keyless,
        "repacking freed too little: {keyless} -> {repacked} bytes ({run})"
    );
    assert!(garbage(&repo).is_empty(), "garbage left: {:?}", garbage(&repo));
    assert_eq!(snapshot_files(&repo).len(), 2);
    assert_every_night_restores(&work, &repo, &nights, "after repacking");

    // Nothing left to repack: a second run changes nothing.
    let again = prune_as_admin(&work, &repo, &[]).ok().json();
    assert_eq!(again["repacked"][0]["packs_repacked"], 0, "{again}");
    assert_eq!(again["repacked"][0]["snapshots_resealed"], 0, "{again}");
    assert_eq!(repo_bytes(&repo), repacked);
}

#[test]
fn prune_with_a_wrong_identity_is_refused_in_one_line_and_deletes_nothing() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_repack_wrong").crm().init("repo");
    mostly_garbage_packs(&source, &work, &repo);
    let before = stored(&repo);
    let snapshots_before = snapshot_files(&repo);
    let stranger = work.path("stranger.key");
    work.keygen("stranger.key");
    let run = work.run(&["prune", "--repo", &repo, "--identity", stranger.to_str().unwrap()]).fails_with(1, "");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("stranger.key"), "{}", run.stderr);
    assert_eq!(stored(&repo), before, "nothing deleted");
    assert_eq!(snapshot_files(&repo), snapshots_before, "no snapshot touched");
    work.run(&["prune", "--repo", &repo, "--identity", &work.admin_key(), "--max-unused", "lots"])
        .fails_with(1, "--max-unused \"lots\": give a percentage from 0 to 100");
    work.run(&["prune", "--repo", &repo, "--max-unused", "5%"]).fails_with(2, "--max-unused needs --identity");
    assert_eq!(stored(&repo), before, "nothing deleted");
}

#[test]
fn an_interrupted_repack_leaves_every_snapshot_restorable_and_the_next_prune_finishes() {
    use crate::rekey::{cut, written_since};
    let Ready { source, work, repo, .. } = Scenario::new("prune_repack_cut").crm().init("repo");
    let nights = mostly_garbage_packs(&source, &work, &repo);
    work.run(&["prune", "--repo", &repo]).ok();
    let keyless = repo_bytes(&repo);
    let root = PathBuf::from(&repo);
    let before = work.path("before");
    copy_dir(&root, &before);
    prune_as_admin(&work, &repo, &[]).ok();
    let finished = repo_bytes(&repo);
    // Everything the run wrote, in order (its deletes come after its last write).
    let written = written_since(&before, &root);
    let after = work.path("after");
    copy_dir(&root, &after);
    let first_copy = written.iter().position(|f| f.starts_with("snapshots")).expect("a snapshot sealed again");
    let packs_only = written.iter().position(|f| f.starts_with("index")).expect("an index written");
    assert!(packs_only > 0 && packs_only < first_copy, "packs, then indexes, then snapshots: {written:?}");
    // Killed after some packs; after every pack and index, before any snapshot is sealed
    // again; after the first copy; after every write, before any delete; after the first
    // replaced snapshot was deleted (None: every write, and the newest night's original gone:
    // they go newest first, so that the old ones left name predecessors still present).
    for k in [Some(packs_only), Some(first_copy), Some(first_copy + 1), Some(written.len()), None] {
        let label = format!("killed after {k:?} of {} writes", written.len());
        cut(&before, &after, &written, k.unwrap_or(written.len()), &root);
        if k.is_none() {
            std::fs::remove_file(root.join("snapshots").join(&nights.last().unwrap().0)).unwrap();
        }
        assert_every_night_restores(&work, &repo, &nights, &format!("{label}, before the next prune"));
        prune_as_admin(&work, &repo, &[]).ok();
        assert!(garbage(&repo).is_empty(), "{label}: garbage left: {:?}", garbage(&repo));
        assert_eq!(snapshot_files(&repo).len(), 2, "{label}");
        assert!(repo_bytes(&repo) < keyless, "{label}: {} bytes, {keyless} before", repo_bytes(&repo));
        assert!(
            repo_bytes(&repo) <= finished + finished / 20,
            "{label}: {} bytes, {finished} when not killed",
            repo_bytes(&repo)
        );
        assert_every_night_restores(&work, &repo, &nights, &label);
    }
}

#[test]
fn repacking_several_copies_gives_each_snapshot_one_new_id_on_all_of_them() {
    let source = TestDb::create("prune_repack_two");
    source.load_file(&fixture("examples/crm.sql"));
    let work = Workspace::new();
    let admin = work.keygen("admin.key");
    let (a, b) = (work.path("repo0"), work.path("repo1"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    work.run(&["init", "--recipient", &admin, "--repo", a, "--repo", b]).ok();
    let mut nights = Vec::new();
    for change in
        [SCRATCH, "UPDATE public.scratch SET body = md5((id * 7)::text) || md5((id * 11)::text) WHERE id <= 14000"]
    {
        source.sql(change);
        let url = source.url();
        let report = work.run(&["backup", "--json", "--db", &url, "--repo", a, "--repo", b]).ok().json();
        nights.push((report["snapshot_id"].as_str().unwrap().to_string(), source.data()));
    }
    for repo in [a, b] {
        forget_oldest(repo, &nights);
    }
    nights.remove(0);
    let before: Vec<u64> = [a, b].iter().map(|repo| repo_bytes(repo)).collect();
    let key = work.admin_key();
    // Every copy is needed: one alone would give its snapshots ids the other does not know.
    let run = work.run(&["prune", "--json", "--identity", &key, "--repo", a, "--repo", b]).ok().json();
    assert_eq!(run["repacked"].as_array().unwrap().len(), 2, "{run}");
    let names = |repo: &str| -> BTreeSet<String> {
        snapshot_files(repo).iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect()
    };
    assert_eq!(names(a), names(b), "one id on both copies");
    assert!(!names(a).contains(&nights[0].0), "the snapshot was sealed again");
    for (repo, before) in [a, b].iter().zip(before) {
        assert!(repo_bytes(repo) < before, "{repo}: {} bytes, {before} before", repo_bytes(repo));
        assert!(garbage(repo).is_empty(), "{repo}: {:?}", garbage(repo));
        assert_every_night_restores(&work, repo, &nights, repo);
    }
}

#[test]
fn a_profile_gives_prune_its_identity_and_threshold_and_the_flag_overrides_it() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_repack_profile").crm().init("repo");
    mostly_garbage_packs(&source, &work, &repo);
    let config =
        format!("[profile.admin]\nrepo = [\"{repo}\"]\nidentity = \"{}\"\nmax_unused = \"100%\"\n", work.admin_key());
    std::fs::write(work.config_dir().join("crmvault.toml"), config).unwrap();
    // At 100% no pack is unused enough.
    let lenient = work.run(&["prune", "--json", "--profile", "admin"]).ok().json();
    assert_eq!(lenient["repacked"][0]["packs_repacked"], 0, "{lenient}");
    assert!(lenient["repacked"][0]["unused_bytes"].as_u64().unwrap() > 100_000, "{lenient}");
    let strict = work.run(&["prune", "--json", "--profile", "admin", "--max-unused", "5"]).ok().json();
    assert!(strict["repacked"][0]["packs_repacked"].as_u64().unwrap() >= 1, "{strict}");
}

/// REVIEW: the backup host's pin names the newest snapshot it wrote; `prune --identity` seals
/// that snapshot again as a copy (`replaces`) and deletes it. The next backup must follow the
/// copy: no "deleted without being forgotten" warning, a predecessor that exists, and a clean
/// `verify` afterwards.
#[test]
fn a_backup_after_a_repack_follows_the_copy_of_its_pinned_snapshot() {
    let Ready { source, work, repo, .. } = Scenario::new("repack_then_backup").crm().init("repo");
    let nights = mostly_garbage_packs(&source, &work, &repo);
    let newest = nights.last().unwrap().0.clone();
    let run = prune_as_admin(&work, &repo, &[]).ok().json();
    assert!(run["repacked"][0]["snapshots_resealed"].as_u64().unwrap() >= 1, "{run}");
    let copy = current_id(&repo, &newest).expect("the newest night has a copy");
    assert_ne!(copy, newest, "the newest night was sealed again");
    source.sql("UPDATE crm.deals SET amount = amount + 1 WHERE id % 5 = 0");
    let backup = work.run(&["backup", "--json", "--db", &source.url(), "--repo", &repo]).ok();
    let report = backup.json();
    let snapshot = report["snapshot_id"].as_str().unwrap().to_string();
    let text = std::fs::read(Path::new(&repo).join("snapshots").join(&snapshot)).unwrap();
    let header: serde_json::Value = serde_json::from_slice(text.split(|&b| b == b'\n').nth(1).unwrap()).unwrap();
    let verify = work.run(&["verify", "--json", "--repo", &repo, "--identity", &work.admin_key()]);
    assert!(!backup.stderr.contains("deleted without being forgotten"), "false rollback alarm: {}", backup.stderr);
    assert_eq!(header["parent"].as_str(), Some(copy.as_str()), "the new snapshot names a deleted predecessor");
    assert_eq!(verify.code, 0, "verify fails after repack + backup: {} {}", verify.stdout, verify.stderr);
}

#[test]
fn repacking_compresses_mostly_unused_frames_again_with_their_used_chunks_alone() {
    // Four fifths of a table change in every stretch of rows, so each frame of the first night
    // (up to 512 KiB of text, dozens of chunks) keeps a few used chunks once that night is
    // forgotten. Copying such frames whole kept nearly all of the old night; compressed again
    // they keep only what is used, and the repository ends near one that only ever held the
    // second night.
    let table = "create table notes (id int primary key, body text);
        insert into notes select n, repeat(md5(n::text), 6) from generate_series(1, 40000) n;";
    let Ready { source, work, repo, .. } = Scenario::new("prune_frames").sql(table).init("repo");
    work.backup(&source, &repo);
    source.sql("UPDATE notes SET body = repeat(md5((id * 3)::text), 6) WHERE (id / 200) % 5 <> 0");
    work.backup(&source, &repo);
    work.run(&["forget", "--repo", &repo, "--keep-last", "1"]).ok();
    work.run(&["prune", "--repo", &repo]).ok();
    let before = repo_bytes(&repo);

    let run = prune_as_admin(&work, &repo, &[]).ok().json();
    let done = &run["repacked"][0];
    assert!(done["frames_recompressed"].as_u64().unwrap() > 0, "{run}");
    let after = repo_bytes(&repo);

    // The same data backed up once into a repository of its own.
    let alone = Workspace::new();
    let only = alone.init_repo("only");
    alone.backup(&source, &only);
    let kept_only = repo_bytes(&only);
    eprintln!("{before} bytes before repacking, {after} after, {kept_only} for the kept night alone");
    assert!(
        after * 100 < kept_only * 115,
        "{before} bytes before repacking, {after} after, against {kept_only} for the kept night alone ({run})"
    );
    work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("prune_frames_restored");
    work.restore(&repo, &restored).ok();
    assert_same_database(&source, &restored);
    // Nothing is left to compress again: a second repack changes nothing.
    let again = prune_as_admin(&work, &repo, &[]).ok().json();
    assert_eq!(again["repacked"][0]["packs_repacked"], 0, "{again}");
    assert_eq!(repo_bytes(&repo), after);
}

#[test]
fn repacking_merges_the_small_packs_of_many_nights_and_their_dictionaries_go() {
    let Ready { source, work, repo, .. } = Scenario::new("prune_merge").crm().init("repo");
    // Six nights, each rewriting its own stretch of a table: each night's new chunks (enough to
    // train a dictionary) go to a small pack of that night's dictionary, and the newest
    // snapshot needs every night's. The table has a key, so its stream is in key order: without
    // one, where PostgreSQL put each night's new row versions (room freed by pruning or not, as
    // other sessions' snapshots allowed) decided which chunks were new, and how many nights'
    // packs the newest snapshot listed varied under load.
    source.sql(SCRATCH);
    source.sql("ALTER TABLE public.scratch ADD PRIMARY KEY (id)");
    let mut nights = Vec::new();
    let mut report = serde_json::Value::Null;
    for night in 0..6 {
        source.sql(&format!(
            "UPDATE public.scratch SET body = md5((id * {}) ::text) || md5(id::text || '{night}') || md5(id::text) \
             || md5((id + {night})::text) WHERE id > {} AND id <= {}",
            night + 5,
            night * 3000,
            (night + 1) * 3000
        ));
        report = work.backup(&source, &repo);
        nights.push((report["snapshot_id"].as_str().unwrap().to_string(), source.data()));
    }
    let before = stored(&repo);
    let small_packs = count_in(&before, "data");
    assert!(small_packs >= 6, "{before:?}");
    // The backup counts the small packs its snapshot lists (a restore reads each).
    let listed_small = report["targets"][0]["small_packs"].as_u64().unwrap();
    assert!(listed_small >= 6, "{report}");
    assert!(count_in(&before, "dicts") >= 2, "the nights trained dictionaries: {before:?}");
    let run = prune_as_admin(&work, &repo, &[]).ok().json();
    let done = &run["repacked"][0];
    assert!(done["packs_repacked"].as_u64().unwrap() >= small_packs - 1, "{run}");
    let after = stored(&repo);
    assert!(count_in(&after, "data") <= 2, "the nights' packs are merged into one or two: {after:?}");
    assert!(
        count_in(&after, "dicts") < count_in(&before, "dicts").max(1),
        "dictionaries only the merged frames used are gone: {} before, {after:?}",
        count_in(&before, "dicts")
    );
    assert!(garbage(&repo).is_empty(), "{:?}", garbage(&repo));
    assert_every_night_restores(&work, &repo, &nights, "merged");
    let after_merge = work.backup(&source, &repo);
    assert!(after_merge["targets"][0]["small_packs"].as_u64().unwrap() <= 2, "{after_merge}");
}

#[test]
fn a_backup_stores_again_the_few_chunks_its_snapshot_takes_from_old_packs_so_restores_read_fewer() {
    // Nights 1-3 each change a stretch of their own (each night's chunks go to a small pack of
    // that night); night 4 changes four fifths of all three stretches again, so the newest
    // snapshot uses a fifth of each of those packs. The next backup stores those fifths again,
    // together in its own pack, and from then on snapshots list the three old packs no more: a
    // restore reads one small pack instead of three. Repository "plain" (no `--rewrite-budget`:
    // off by default) gets the same nights and keeps listing them.
    let Ready { source, work, repo, .. } = Scenario::new("rewrite_sparse").sql(SCRATCH).init("repo");
    source.sql("ALTER TABLE public.scratch ADD PRIMARY KEY (id)");
    let plain = work.init_repo("plain");
    let backup = |repo: &str, budget: &[&str]| work.backup_with(&source, repo, budget);
    let change = |night: u32, stretches: &[(u32, u32)]| {
        for (from, to) in stretches {
            source.sql(&format!(
                "UPDATE public.scratch SET body = md5((id * {night})::text) || md5(id::text || '{night}') \
                 || md5((id + {night})::text) WHERE id > {from} AND id <= {to}"
            ));
        }
    };
    let counts = |report: &serde_json::Value| {
        let target = &report["targets"][0];
        (target["small_packs"].as_u64().unwrap(), target["rewritten_bytes"].as_u64().unwrap())
    };
    let mut nights = Vec::new();
    let (mut ours, mut theirs) = (serde_json::Value::Null, serde_json::Value::Null);
    let plan: [&[(u32, u32)]; 6] =
        [&[], &[(1000, 4000)], &[(6000, 9000)], &[(11000, 14000)], &[(1000, 3400), (6000, 8400), (11000, 13400)], &[]];
    for (night, stretches) in (7..).zip(plan) {
        change(night, stretches);
        ours = backup(&repo, &["--rewrite-budget", "50"]);
        theirs = backup(&plain, &[]);
        nights.push((ours["snapshot_id"].as_str().unwrap().to_string(), source.data()));
    }
    // Night 5 changed nothing, and stored the used fifths of the three nights' packs again.
    let (small_ours, rewritten) = counts(&ours);
    let (small_theirs, none) = counts(&theirs);
    assert!(rewritten > 0, "{ours}");
    assert_eq!(none, 0, "{theirs}");
    assert!(
        small_ours + 2 <= small_theirs,
        "the newest snapshot lists {small_ours} small packs, against {small_theirs} without rewriting: {ours}"
    );
    // The next backup finds the new copies and stores nothing: the old packs stay unlisted.
    let again = backup(&repo, &["--rewrite-budget", "50"]);
    nights.push((again["snapshot_id"].as_str().unwrap().to_string(), source.data()));
    assert_eq!(counts(&again), (small_ours, 0), "{again}");
    assert_eq!(again["targets"][0]["new_chunks"], 0, "{again}");
    assert_every_night_restores(&work, &repo, &nights, "rewritten");
    // Once only the newest snapshots are kept, the three old packs go.
    work.run(&["forget", "--repo", &repo, "--keep-last", "2"]).ok();
    let pruned = target_report(&work.run(&["prune", "--json", "--repo", &repo]).ok());
    assert!(pruned["deleted"]["packs"]["objects"].as_u64().unwrap() >= 3, "{pruned}");
    assert_every_night_restores(&work, &repo, &nights[nights.len() - 2..], "pruned");
}

#[test]
fn the_rewrite_budget_caps_what_a_night_stores_again_even_when_it_takes_more_than_the_last_snapshot() {
    // Night 1 stores table s in a small pack of its own. Night 2 deletes four fifths of s: its
    // snapshot uses a fifth of that pack, so the plan for night 3 is to store that fifth again,
    // which fits in the budget. Night 3 puts the rows back as they were, and takes all of the
    // pack again: it must stop storing chunks again at the budget and reuse the rest, and its
    // snapshot restores.
    let tables = "CREATE TABLE public.big AS SELECT i AS id, md5(i::text) || md5((i * 3)::text) AS body \
                  FROM generate_series(1, 30000) i;
                  CREATE TABLE public.s AS SELECT i AS id, md5(i::text) || md5((i * 5)::text) AS body \
                  FROM generate_series(1, 4000) i;";
    let Ready { source, work, repo, .. } = Scenario::new("rewrite_cap").sql(tables).init("repo");
    let backup = || work.backup_with(&source, &repo, &["--rewrite-budget", "3"]);
    backup();
    source.sql("DELETE FROM public.s WHERE id > 800");
    let fifth = backup();
    source.sql("INSERT INTO public.s SELECT i, md5(i::text) || md5((i * 5)::text) FROM generate_series(801, 4000) i");
    let whole = backup();
    // 3% of night 2's bytes.
    let budget = fifth["bytes_read"].as_u64().unwrap() * 3 / 100;
    let rewritten = whole["targets"][0]["rewritten_bytes"].as_u64().unwrap();
    assert!(rewritten > 0, "the pack night 2 hardly used is rewritten: {whole}");
    assert!(rewritten <= budget, "{rewritten} bytes stored again, over the budget of {budget}: {whole}");
    let target = TestDb::create("rewrite_cap_target");
    work.restore(&repo, &target).ok();
    assert_same_database(&source, &target);
    // The pack the budget ran out in stays reused: the next backup stores nothing new.
    let again = backup();
    assert_eq!(again["targets"][0]["new_chunks"], 0, "{again}");
    let target = TestDb::create("rewrite_cap_again");
    work.restore(&repo, &target).ok();
    assert_same_database(&source, &target);
}

#[test]
fn a_table_filtered_backup_neither_plans_nor_avoids_for_the_full_ones() {
    // A `--table` backup's snapshot takes other chunks from a pack than a full one's: what it
    // found sparse is remembered apart. Full, full, `--table`, full with no change in between:
    // the last full backup stores again, within its budget, what the full one before it hardly
    // used (it was a way around the budget: the `--table` one planned the pack of s2's rows,
    // took nothing from it, and left it avoided, so the full one stored all of it again,
    // counted nowhere).
    let tables = "CREATE TABLE public.big AS SELECT i AS id, md5(i::text) || md5((i * 3)::text) AS body \
                  FROM generate_series(1, 30000) i;
                  CREATE TABLE public.s1 AS SELECT i AS id, md5(i::text) AS body FROM generate_series(1, 100) i;
                  CREATE TABLE public.s2 AS SELECT i AS id, md5(i::text) || md5((i * 5)::text) AS body \
                  FROM generate_series(1, 2000) i;";
    let Ready { source, work, repo, .. } = Scenario::new("rewrite_filtered").sql(tables).init("repo");
    let backup = |extra: &[&str]| work.backup_with(&source, &repo, &[&["--rewrite-budget", "100"], extra].concat());
    backup(&[]);
    source.sql("UPDATE public.s2 SET body = md5(body) WHERE id > 400");
    backup(&[]);
    backup(&["--table", "public.s1"]);
    // The full backup stores again, within its budget, what the last full one hardly used.
    let full = backup(&[]);
    assert!(full["targets"][0]["rewritten_bytes"].as_u64().unwrap() > 0, "{full}");
    let after = backup(&[]);
    assert_eq!(after["targets"][0]["new_chunks"], 0, "nothing changed since the last full backup: {after}");
    let target = TestDb::create("rewrite_filtered_target");
    work.restore(&repo, &target).ok();
    assert_same_database(&source, &target);
}

#[test]
fn repacking_after_a_rewrite_and_a_prune_reads_each_chunk_from_a_pack_a_snapshot_lists() {
    // Night 1 changes tables a and b (their chunks and list chunks go to that night's packs,
    // described by one index); night 2 changes a again, so night 1's pack of a's lists is
    // sparse, and night 3 stores those list chunks again. Once the nights before are forgotten
    // and pruned, that pack is gone while its index stays listed (night 1's pack of b's rows is
    // still used): repacking found a list chunk in the first copy the index gave, the deleted
    // one, about one round in four (which index sorts first is the index ids'). It must read
    // only the packs the snapshots list. Six rounds find it 82% of the time (eight took 40 s
    // more of a CI run this machine made last 21 minutes, against its 20).
    let tables = "CREATE TABLE public.a AS SELECT i AS id, md5(i::text) || md5((i * 3)::text) AS body \
                  FROM generate_series(1, 20000) i; ALTER TABLE public.a ADD PRIMARY KEY (id);
                  CREATE TABLE public.b AS SELECT i AS id, md5(i::text) || md5((i * 7)::text) AS body \
                  FROM generate_series(1, 5000) i; ALTER TABLE public.b ADD PRIMARY KEY (id);";
    let change = |source: &TestDb, table: &str, night: u32| {
        source.sql(&format!(
            "UPDATE public.{table} SET body = md5((id * {night})::text) || md5(id::text || '{night}') \
             || md5((id + {night})::text)"
        ));
    };
    for round in 0..6 {
        let Ready { source, work, repo, .. } = Scenario::new("repack_rewritten").sql(tables).init("repo");
        let backup = || work.backup_with(&source, &repo, &["--rewrite-budget", "50"]);
        backup();
        change(&source, "a", 11);
        change(&source, "b", 11);
        backup();
        change(&source, "a", 12);
        backup();
        backup();
        backup();
        work.run(&["forget", "--repo", &repo, "--keep-last", "2"]).ok();
        work.run(&["prune", "--repo", &repo]).ok();
        let repacked = prune_as_admin(&work, &repo, &["--max-unused", "0%"]);
        assert_eq!(repacked.code, 0, "round {round}: {}", repacked.stderr);
        work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key(), "--read-data"]).ok();
        let restored = TestDb::create("repack_rewritten_restored");
        work.restore(&repo, &restored).ok();
        assert_same_database(&source, &restored);
    }
}

/// The packs a local snapshot's header lists.
fn header_packs(repo: &str, id: &str) -> BTreeSet<String> {
    let text = std::fs::read(Path::new(repo).join("snapshots").join(id)).unwrap();
    let header: serde_json::Value = serde_json::from_slice(text.split(|&b| b == b'\n').nth(1).unwrap()).unwrap();
    header["packs"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
}

/// A pack lost with no copy to mend it from (one target): prune refuses to delete anything
/// while a snapshot names it, and removing that snapshot by hand would be a deletion verify
/// reports forever. `forget ID` removes it on the record (writer key enough), after which
/// verify is clean, prune finishes, and every other snapshot restores; with `--prune` while
/// another snapshot still names the pack, the forget is done and said, and the prune's refusal
/// is exit 3.
#[test]
fn a_snapshot_whose_pack_is_lost_is_forgotten_by_id_and_prune_runs_again() {
    let Ready { source, work, repo, .. } = Scenario::new("forget_lost_pack").crm().init("repo");
    let nights = three_nights(&source, &work, &repo);
    let (first, second) = (&nights[0].0, &nights[1].0);
    let others: BTreeSet<String> = nights[1..].iter().flat_map(|(id, _)| header_packs(&repo, id)).collect();
    let lost = header_packs(&repo, first).into_iter().find(|p| !others.contains(p)).expect("a pack of night 1 alone");
    std::fs::remove_file(Path::new(&repo).join("data").join(&lost[..2]).join(&lost)).unwrap();

    work.run(&["prune", "--repo", &repo]).fails_with(1, "forget");
    let verify = work.run(&["verify", "--json", "--repo", &repo]);
    assert_eq!(verify.code, 3, "{}", verify.stdout);
    let problems = verify.json()["problems"].to_string();
    assert!(problems.contains(&lost) && problems.contains(first.as_str()), "{problems}");

    // Refused: ids with a policy, an id no target holds, too few digits. Nothing changes.
    let before = snapshot_files(&repo);
    let short = &first[..12];
    work.run(&["forget", "--repo", &repo, "--keep-last", "1", short]).fails_with(2, "not both");
    work.run(&["forget", "--repo", &repo, "--database", "crm", short]).fails_with(2, "not both");
    work.run(&["forget", "--repo", &repo, short, "deadbeef"]).fails_with(1, "no snapshot deadbeef");
    work.run(&["forget", "--repo", &repo, "abc"]).fails_with(2, "at least 4 hex digits");
    let dry = work.run(&["forget", "--json", "--dry-run", "--repo", &repo, short]).ok().json();
    let plan = &dry["targets"][0];
    assert_eq!((plan["removed"].as_u64(), plan["kept"].as_u64()), (Some(1), Some(2)), "{dry}");
    assert_eq!(snapshot_files(&repo), before, "a refusal or a dry run changed nothing");

    // The backup host's key is enough; the record explains the gap. Forgetting night 2 first
    // with --prune: night 1 still names the pack, the prune after it refuses, and the forget is
    // said all the same (exit 3).
    let run = work.run(&["forget", "--prune", "--repo", &repo, &second[..10]]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("snapshots named by id") && run.stdout.contains("remove"), "{}", run.stdout);
    assert!(run.stderr.contains("PRUNE FAILED"), "{}", run.stderr);
    assert_eq!(snapshot_files(&repo).len(), 2);
    work.run(&["forget", "--repo", &repo, short]).ok();
    assert_eq!(snapshot_files(&repo).len(), 1);
    work.run(&["verify", "--repo", &repo]).ok();
    work.run(&["prune", "--repo", &repo]).ok();
    assert!(garbage(&repo).is_empty(), "garbage left: {:?}", garbage(&repo));
    assert_every_snapshot_restores(&work, &repo, &nights[2..]);
}
