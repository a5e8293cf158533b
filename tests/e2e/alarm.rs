//! The data-loss alarm (issue 22): a backup that finds a table vanished, emptied or shrunk by
//! more than its threshold since the previous snapshot stores the snapshot flagged and exits
//! 4; `snapshots` shows the flag; `forget` keeps flagged snapshots and the last one before.

use crate::common::*;

const TABLES: &str = "CREATE TABLE public.accounts (id int PRIMARY KEY, name text); \
    INSERT INTO public.accounts SELECT i, 'account ' || i FROM generate_series(1, 100) i; \
    CREATE TABLE public.imports (id int PRIMARY KEY); \
    INSERT INTO public.imports SELECT generate_series(1, 50); \
    CREATE TABLE public.sessions (id int PRIMARY KEY); \
    INSERT INTO public.sessions SELECT generate_series(1, 40); \
    CREATE TABLE public.deals (id int PRIMARY KEY); \
    INSERT INTO public.deals SELECT generate_series(1, 30);";

fn backup(work: &Workspace, source: &TestDb, repo: &str, extra: &[&str]) -> Run {
    let url = source.url();
    let mut args = vec!["backup", "--json", "--db", &url, "--repo", repo];
    args.extend_from_slice(extra);
    work.run(&args)
}

/// (table, kind, rows before, rows after) of each alarm in a JSON list.
fn alarms(list: &serde_json::Value) -> Vec<(String, String, u64, u64)> {
    list.as_array()
        .map(|alarms| {
            alarms
                .iter()
                .map(|a| {
                    let text = |key: &str| a[key].as_str().unwrap().to_string();
                    (text("table"), text("kind"), a["rows_before"].as_u64().unwrap(), a["rows_after"].as_u64().unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_mass_deletion_flags_the_snapshot_exits_4_and_forget_keeps_the_evidence() {
    let source = TestDb::create("alarm");
    source.sql(TABLES);
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let first = backup(&work, &source, &repo, &[]).ok().json();
    assert_eq!(first["alarms"], serde_json::json!([]), "{first}");
    let first = first["snapshot_id"].as_str().unwrap().to_string();
    source.sql("INSERT INTO public.deals VALUES (0)");
    let before = backup(&work, &source, &repo, &[]).ok().json()["snapshot_id"].as_str().unwrap().to_string();

    // A fifth of one table deleted, one dropped, one truncated; another grows.
    source.sql(
        "DELETE FROM public.accounts WHERE id % 5 = 0; DROP TABLE public.imports; TRUNCATE public.sessions; \
         INSERT INTO public.deals SELECT generate_series(31, 60);",
    );
    let night = backup(&work, &source, &repo, &[]);
    assert_eq!(night.code, 4, "{}\n{}", night.stdout, night.stderr);
    let report = night.json();
    let flagged = report["snapshot_id"].as_str().unwrap().to_string();
    let found = alarms(&report["alarms"]);
    let expected = [
        ("public.accounts", "shrank", 100, 80),
        ("public.imports", "vanished", 50, 0),
        ("public.sessions", "emptied", 40, 0),
    ];
    let expected: Vec<(String, String, u64, u64)> =
        expected.iter().map(|(t, k, b, a)| ((*t).to_string(), (*k).to_string(), *b, *a)).collect();
    assert_eq!(found, expected, "{report}");
    assert!(report["alarms"].as_array().unwrap().iter().all(|a| a["since"] == before.as_str()), "{report}");
    // Stored all the same, every target: the snapshot is the evidence.
    assert_eq!(report["targets"][0]["ok"], true, "{report}");
    // The JSON goes to a log; cron mails stderr, which says it too.
    assert!(night.stderr.contains("ALARM public.imports vanished"), "{}", night.stderr);
    assert!(night.stderr.contains("backup raised the data-loss alarm: exit 4"), "{}", night.stderr);
    // In words, too (a cron mail).
    let unchecked = backup(&work, &source, &repo, &["--no-alarm"]).ok().json();
    let unchecked = unchecked["snapshot_id"].as_str().unwrap().to_string();
    source.sql("DELETE FROM public.accounts WHERE id % 2 = 0");
    let worded = work.run(&["backup", "--db", &source.url(), "--repo", &repo]);
    assert_eq!(worded.code, 4, "{}", worded.stderr);
    assert!(
        worded.stderr.contains("ALARM   public.accounts lost 50.0% of its rows (80 -> 40) since snapshot"),
        "{}",
        worded.stderr
    );
    assert!(worded.stderr.contains("data-loss alarm:"), "{}", worded.stderr);
    let worded = worded.stdout.trim().to_string();

    // `snapshots` (the writer key here) lists the flags.
    let listing = work.run(&["snapshots", "--json", "--repo", &repo]).ok().json();
    let flags: Vec<(String, bool)> = listing["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["contents"]["flagged"].as_bool().unwrap()))
        .collect();
    assert_eq!(flags.len(), 5, "{listing}");
    let flagged_ids: Vec<&str> = flags.iter().filter(|(_, f)| *f).map(|(id, _)| id.as_str()).collect();
    assert_eq!(flagged_ids, [flagged.as_str(), worded.as_str()], "{listing}");
    let text = work.run(&["snapshots", "--repo", &repo]).ok();
    assert!(
        text.stdout.contains("FLAGGED by the data-loss alarm: public.imports vanished (it held 50 rows)"),
        "{}",
        text.stdout
    );

    // A quiet night after: nothing lost since the last snapshot.
    let quiet = backup(&work, &source, &repo, &[]).ok().json();
    assert_eq!(quiet["alarms"], serde_json::json!([]), "{quiet}");
    let newest = quiet["snapshot_id"].as_str().unwrap().to_string();

    // forget --keep-last 1 keeps the flagged ones and the last unflagged before each.
    let dry = work.run(&["forget", "--json", "--dry-run", "--repo", &repo, "--keep-last", "1"]).ok().json();
    let decisions = dry["targets"][0]["snapshots"].as_array().unwrap().clone();
    let kept: std::collections::BTreeSet<String> = decisions
        .iter()
        .filter(|d| !d["reasons"].as_array().unwrap().is_empty())
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    let expected: std::collections::BTreeSet<String> =
        [&before, &flagged, &unchecked, &worded, &newest].iter().map(|s| (*s).clone()).collect();
    assert_eq!(kept, expected, "{dry}");
    let reasons = |id: &str| -> Vec<String> {
        let decision = decisions.iter().find(|d| d["id"] == id).expect("listed");
        decision["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(reasons(&flagged), ["flagged by the data-loss alarm"]);
    assert_eq!(reasons(&before), ["the last unflagged before a flagged one"]);
    work.run(&["forget", "--repo", &repo, "--keep-last", "1"]).ok();
    let left = work.run(&["snapshots", "--json", "--repo", &repo]).ok().json();
    let ids: Vec<&str> = left["snapshots"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(ids.len() == 5 && !ids.contains(&first.as_str()), "{left}");

    // Letting them go is an admin's decision, said explicitly.
    work.run(&["forget", "--repo", &repo, "--keep-last", "1", "--forget-flagged"])
        .fails_with(1, "--forget-flagged needs --identity");
    work.run(&["forget", "--repo", &repo, "--keep-last", "1", "--forget-flagged", "--identity", &work.admin_key()])
        .ok();
    let left = work.run(&["snapshots", "--json", "--repo", &repo]).ok().json();
    let ids: Vec<&str> = left["snapshots"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [newest.as_str()], "{left}");
}

#[test]
fn thresholds_are_set_per_table_and_the_alarm_can_be_turned_off() {
    let source = TestDb::create("alarm_thresholds");
    source.sql(TABLES);
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    backup(&work, &source, &repo, &[]).ok();

    // A fifth of accounts and all sessions: allowed for these two, by pattern.
    source.sql("DELETE FROM public.accounts WHERE id % 5 = 0; DELETE FROM public.sessions");
    let allowed = backup(&work, &source, &repo, &["--alarm-table", "accounts=25", "--alarm-table", "public.sess*=100"]);
    assert_eq!(allowed.code, 0, "{}\n{}", allowed.stdout, allowed.stderr);
    // A tenth of deals against a threshold of 5%.
    source.sql("DELETE FROM public.deals WHERE id % 10 = 0");
    let strict = backup(&work, &source, &repo, &["--alarm-threshold", "5"]);
    assert_eq!(strict.code, 4, "{}", strict.stderr);
    assert_eq!(alarms(&strict.json()["alarms"]), [("public.deals".to_string(), "shrank".to_string(), 30, 27)]);
    // Off: nothing compared, nothing flagged.
    source.sql("DROP TABLE public.deals");
    let off = backup(&work, &source, &repo, &["--no-alarm"]).ok().json();
    assert_eq!(off["alarms"], serde_json::json!([]), "{off}");
    // Tables the patterns leave out are not read, so they do not vanish.
    let narrowed = backup(&work, &source, &repo, &["--table", "public.accounts"]).ok().json();
    assert_eq!(narrowed["alarms"], serde_json::json!([]), "{narrowed}");
    // A pattern that names no table is said; a bad one is refused in one line.
    let typo = backup(&work, &source, &repo, &["--alarm-table", "acounts=50"]).ok();
    assert!(typo.stderr.contains("--alarm-table pattern \"acounts\" matches no table"), "{}", typo.stderr);
    backup(&work, &source, &repo, &["--alarm-table", "accounts"]).fails_with(1, "expected PATTERN=PERCENT");
    backup(&work, &source, &repo, &["--alarm-threshold", "150"]).fails_with(1, "not a percentage from 0 to 100");
}

/// Four nightly snapshots of [`TABLES`] in a new repository: a first, the one before a mass
/// deletion, the one the alarm flagged (half of `accounts` deleted), and a newest; their ids.
fn four_nights_one_flagged(label: &str) -> (TestDb, Workspace, String, [String; 4]) {
    let source = TestDb::create(label);
    source.sql(TABLES);
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let id = |run: Run| run.json()["snapshot_id"].as_str().unwrap().to_string();
    let first = id(backup(&work, &source, &repo, &[]).ok());
    source.sql("INSERT INTO public.deals VALUES (0)");
    let before = id(backup(&work, &source, &repo, &[]).ok());
    source.sql("DELETE FROM public.accounts WHERE id % 2 = 0");
    let flagged = backup(&work, &source, &repo, &[]);
    assert_eq!(flagged.code, 4, "{}", flagged.stderr);
    let flagged = id(flagged);
    let newest = id(backup(&work, &source, &repo, &[]).ok());
    (source, work, repo, [first, before, flagged, newest])
}

#[test]
fn a_flagged_snapshot_damaged_or_deleted_in_storage_does_not_let_forget_remove_the_one_before_it() {
    for attack in ["damage", "delete"] {
        let (_source, work, repo, [first, before, flagged, newest]) = four_nights_one_flagged("alarm_blind");

        // Whoever holds the storage hides the flag: the snapshot object damaged, or deleted.
        let object = std::path::Path::new(&repo).join("snapshots").join(&flagged);
        if attack == "damage" {
            let mut bytes = std::fs::read(&object).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            std::fs::write(&object, bytes).unwrap();
        } else {
            std::fs::remove_file(&object).unwrap();
        }
        // The backup host's nightly forget keeps the snapshot before what it cannot see, and
        // says so; the oldest goes.
        let run = work.run(&["forget", "--json", "--repo", &repo, "--keep-last", "1"]);
        assert_eq!(run.code, 3, "{attack}: {}\n{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("forget cannot see snapshot"), "{attack}: {}", run.stderr);
        let blind = run.json()["targets"][0]["blind"].as_str().unwrap_or_default().to_string();
        assert!(blind.contains(&flagged), "{attack}: {}", run.stdout);
        let left = work.run(&["snapshots", "--json", "--repo", &repo]).ok().json();
        let ids: Vec<&str> = left["snapshots"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert!(ids.contains(&before.as_str()) && ids.contains(&newest.as_str()), "{attack}: {left}");
        assert!(!ids.contains(&first.as_str()), "{attack}: {left}");
        // verify names what was done.
        let verify = work.run(&["verify", "--repo", &repo]);
        assert_eq!(verify.code, 3, "{attack}: {}", verify.stdout);
        assert!(
            verify.stdout.contains(&flagged[..12]) || verify.stdout.contains(&flagged),
            "{attack}: {}",
            verify.stdout
        );
    }
}

#[test]
fn a_table_name_with_control_characters_stays_on_its_alarm_line() {
    let source = TestDb::create("alarm_names");
    let name = "ev\u{1b}[31mil\r\nALARM   fake";
    source.sql(&format!(
        "CREATE TABLE public.\"{name}\" (id int); INSERT INTO public.\"{name}\" SELECT generate_series(1, 10); \
         CREATE TABLE public.keep (id int); INSERT INTO public.keep VALUES (1);"
    ));
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    work.run(&["backup", "--db", &source.url(), "--repo", &repo]).ok();
    source.sql(&format!("TRUNCATE public.\"{name}\""));
    let run = work.run(&["backup", "--db", &source.url(), "--repo", &repo]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(!run.stderr.contains('\u{1b}') && !run.stderr.contains('\r'), "{:?}", run.stderr);
    let alarms: Vec<&str> = run.stderr.lines().filter(|l| l.contains("ALARM")).collect();
    assert_eq!(alarms.len(), 1, "{:?}", run.stderr);
    assert!(alarms[0].contains(r"public.ev\u{1b}[31mil\r\nALARM   fake was emptied"), "{}", alarms[0]);
    let listing = work.run(&["snapshots", "--repo", &repo]).ok();
    assert!(!listing.stdout.contains('\u{1b}'), "{:?}", listing.stdout);
}

#[test]
fn a_junk_snapshot_or_a_second_deletion_does_not_hide_the_deleted_flagged_one_from_forget() {
    let source = TestDb::create("alarm_two_blind");
    source.sql(TABLES);
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let id = |run: Run| run.json()["snapshot_id"].as_str().unwrap().to_string();
    let mut ids = vec![id(backup(&work, &source, &repo, &[]).ok())];
    source.sql("INSERT INTO public.deals VALUES (0)");
    ids.push(id(backup(&work, &source, &repo, &[]).ok()));
    source.sql("DELETE FROM public.accounts WHERE id % 2 = 0");
    let flagged = backup(&work, &source, &repo, &[]);
    assert_eq!(flagged.code, 4, "{}", flagged.stderr);
    ids.push(id(flagged));
    for n in 1..=3 {
        source.sql(&format!("INSERT INTO public.deals VALUES ({})", 100 + n));
        ids.push(id(backup(&work, &source, &repo, &[]).ok()));
    }
    // The flagged snapshot (ids[2]) and a later one (ids[4]) deleted, and junk named like a
    // snapshot, which may be the newest of all.
    let snapshots = std::path::Path::new(&repo).join("snapshots");
    std::fs::remove_file(snapshots.join(&ids[2])).unwrap();
    std::fs::remove_file(snapshots.join(&ids[4])).unwrap();
    std::fs::write(snapshots.join("ab".repeat(32)), b"not a snapshot").unwrap();

    let run = work.run(&["forget", "--repo", &repo, "--keep-last", "1"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.stderr.matches("forget cannot see snapshot").count(), 3, "{}", run.stderr);
    let left = work.run(&["snapshots", "--json", "--repo", &repo]).ok().json();
    let left: Vec<&str> = left["snapshots"].as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
    // Before each place it cannot see: ids[1] (before the flagged one), ids[3], ids[5].
    for kept in [&ids[1], &ids[3], &ids[5]] {
        assert!(left.contains(&kept.as_str()), "{kept} gone: {left:?}\n{}", run.stderr);
    }
    assert!(!left.contains(&ids[0].as_str()), "{left:?}");
}

/// `forget ID` keeps the alarm's evidence as a policy does: the backup host cannot name the
/// flagged snapshot, nor the last good one before it, away; an admin can, with
/// --forget-flagged.
#[test]
fn forgetting_the_alarms_evidence_by_id_is_an_admins_decision() {
    let (_source, work, repo, [first, before, flagged, _]) = four_nights_one_flagged("alarm_named");
    let listed = || work.run(&["snapshots", "--json", "--repo", &repo]).ok().json()["snapshots"].to_string();

    for evidence in [&flagged, &before] {
        work.run(&["forget", "--repo", &repo, evidence]).fails_with(1, "an admin's decision");
        assert!(listed().contains(evidence.as_str()));
    }
    // The snapshot before those is no evidence: the host may name it.
    work.run(&["forget", "--repo", &repo, &first]).ok();
    assert!(!listed().contains(first.as_str()));
    work.run(&["forget", "--repo", &repo, "--forget-flagged", "--identity", &work.admin_key(), &flagged]).ok();
    assert!(!listed().contains(flagged.as_str()) && listed().contains(before.as_str()));
    work.run(&["verify", "--repo", &repo]).ok();
}
