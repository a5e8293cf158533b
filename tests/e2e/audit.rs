//! The audit trail (issue 22): every backup, restore, drill, verify, forget, prune, rekey and
//! copy run with a key appends an encrypted, MACed, numbered and chained record to each
//! repository it opened; `crmvault audit` lists them, and a removed or forged one is reported
//! by `audit` and `verify`.

use crate::common::*;

/// (number, operation, result) of each record `audit --json` lists for the first target.
fn trail(run: &Run) -> Vec<(u64, String, String)> {
    run.json()["targets"][0]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let entry = &r["entry"];
            let text = |key: &str| entry[key].as_str().unwrap().to_string();
            (r["number"].as_u64().unwrap(), text("operation"), text("result"))
        })
        .collect()
}

fn audit_files(work: &Workspace) -> Vec<std::path::PathBuf> {
    let mut files = files_under(&work.path("repo/audit"));
    files.sort();
    files
}

#[test]
fn each_operation_leaves_its_record_in_order_and_a_failed_one_says_why() {
    let Ready { source, work, repo, report } = Scenario::new("audit").crm().init("repo").backup();
    let key = work.admin_key();
    let first = report["snapshot_id"].as_str().unwrap().to_string();
    let second = work.backup(&source, &repo)["snapshot_id"].as_str().unwrap().to_string();

    // A restore into a URL with a password: the record names the database, never the password.
    let restored = TestDb::create("audit_restored");
    let with_password = restored.url().replace("postgres@", "postgres:hunter2secret@");
    work.run(&["restore", "--repo", &repo, "--identity", &key, "--db", &with_password, &first]).ok();
    // The same restore again fails (the database is not empty): recorded as failed, with why.
    work.run(&["restore", "--repo", &repo, "--identity", &key, "--db", &restored.url(), &first])
        .fails_with(1, "not empty");
    work.run(&["verify", "--repo", &repo, "--identity", &key]).ok();
    let scratch = TestDb::create("audit_scratch");
    work.run(&["drill", "--repo", &repo, "--identity", &key, "--scratch-db", &scratch.url()]).ok();
    work.run(&["forget", "--repo", &repo, "--keep-last", "1"]).ok();
    // A dry run says so: it wrote nothing into the database it names.
    work.run(&["restore", "--repo", &repo, "--identity", &key, "--db", &restored.url(), "--dry-run", "latest"]).ok();
    // Listing snapshots is not an operation the trail records; neither is the audit itself.
    work.run(&["snapshots", "--repo", &repo]).ok();

    let listed = work.run(&["audit", "--repo", &repo, "--identity", &key, "--json"]).ok();
    let expected = [
        (1, "backup", "ok"),
        (2, "backup", "ok"),
        (3, "restore", "ok"),
        (4, "restore", "failed"),
        (5, "verify", "ok"),
        (6, "drill", "ok"),
        (7, "forget", "ok"),
        (8, "restore --dry-run", "ok"),
    ];
    let expected: Vec<(u64, String, String)> =
        expected.iter().map(|(n, op, result)| (*n, (*op).to_string(), (*result).to_string())).collect();
    assert_eq!(trail(&listed), expected, "{}", listed.stdout);
    let records = listed.json()["targets"][0]["records"].clone();
    let entry = |n: usize| records[n]["entry"].clone();
    assert_eq!(entry(0)["snapshots"], serde_json::json!([first]));
    assert_eq!(entry(1)["snapshots"], serde_json::json!([second]));
    assert_eq!(entry(0)["database"].as_str().unwrap(), source.url());
    assert_eq!(entry(2)["snapshots"], serde_json::json!([first]));
    assert_eq!(entry(2)["database"].as_str().unwrap(), restored.url().replace("postgres@", "postgres:***@"));
    assert!(entry(3)["error"].as_str().unwrap().contains("not empty"), "{}", entry(3));
    assert_eq!(entry(3)["exit_code"], 1);
    assert_eq!(entry(5)["database"].as_str().unwrap(), scratch.url());
    assert_eq!(entry(6)["snapshots"], serde_json::json!([first]), "forget names what it removed");
    for n in 0..8 {
        assert_eq!(records[n]["authenticated"], true);
        assert!(!entry(n)["user"].as_str().unwrap().is_empty() && !entry(n)["host"].as_str().unwrap().is_empty());
    }
    assert!(!listed.stdout.contains("hunter2secret"));
    for file in audit_files(&work) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("restore"), "records are encrypted: {}", file.display());
    }

    // The backup host reads it with its writer key; --since leaves earlier runs out; text.
    let text = work.run(&["audit", "--repo", &repo]).ok();
    assert_eq!(text.stdout.lines().count(), 8, "{}", text.stdout);
    assert!(text.stdout.lines().nth(3).unwrap().contains("restore  failed"), "{}", text.stdout);
    // Not why an admin's run failed: its error may quote data (a value PostgreSQL refused to
    // load, a row asked for), which the writer key must not read, then or after.
    assert!(text.stdout.lines().nth(3).unwrap().contains("error: kept for the admins"), "{}", text.stdout);
    let writer = work.run(&["audit", "--repo", &repo, "--json"]).ok();
    assert!(!writer.stdout.contains("not empty"), "{}", writer.stdout);
    assert!(writer.json()["targets"][0]["records"][3]["entry"]["error"].is_null(), "{}", writer.stdout);
    let since = work.run(&["audit", "--repo", &repo, "--json", "--since", "2999-01-01T00:00:00Z"]).ok();
    assert_eq!(trail(&since), vec![]);
}

#[test]
fn a_removed_or_forged_record_is_reported_by_audit_and_verify() {
    let Ready { source, work, repo, .. } = Scenario::new("audit_tamper").crm().init("repo").backup();
    let key = work.admin_key();
    for _ in 0..2 {
        work.backup(&source, &repo);
    }
    let files = audit_files(&work);
    assert_eq!(files.len(), 3);
    work.run(&["verify", "--repo", &repo]).ok();

    // Junk named like a record far ahead: named as junk, not as every record before it removed.
    let junk = b"junk".to_vec();
    let junk_path = files[0].with_file_name(format!("0000000099-{}", blake3::hash(&junk).to_hex()));
    std::fs::write(&junk_path, &junk).unwrap();
    for identity in [None, Some(key.as_str())] {
        let mut args = vec!["verify", "--repo", &repo];
        args.extend(identity.iter().flat_map(|key| ["--identity", key]));
        let run = work.run(&args);
        assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("0000000099-"), "{}", run.stdout);
        assert!(!run.stdout.contains("removed") && !run.stdout.contains("names it"), "{}", run.stdout);
    }
    std::fs::remove_file(&junk_path).unwrap();

    // The middle record removed: keyless verify sees the gap, audit too (and `verify` itself
    // appended a record, so the removed one is not the newest).
    let removed = std::fs::read(&files[1]).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    let run = work.run(&["verify", "--repo", &repo]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("audit record 2 removed"), "{}", run.stdout);
    let run = work.run(&["audit", "--repo", &repo, "--identity", &key]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("audit record 2 removed"), "{}", run.stdout);

    // Put back: whole again.
    std::fs::write(&files[1], &removed).unwrap();
    work.run(&["audit", "--repo", &repo, "--identity", &key]).ok();

    // Replaced by a forgery under its own name (a byte changed, renamed to its new hash): the
    // record after it names the one removed, and the forgery's MAC fails.
    let mut forged = removed.clone();
    let at = forged.len() / 2;
    forged[at] = if forged[at] == b'a' { b'b' } else { b'a' };
    std::fs::remove_file(&files[1]).unwrap();
    let name = files[1].file_name().unwrap().to_str().unwrap();
    let forged_name = format!("{}-{}", &name[..10], blake3::hash(&forged).to_hex());
    std::fs::write(files[1].with_file_name(forged_name), &forged).unwrap();
    let run = work.run(&["audit", "--repo", &repo, "--identity", &key, "--json"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let problems = run.json()["targets"][0]["problems"].to_string();
    assert!(problems.contains("is not there: removed"), "{problems}");
    assert!(problems.contains("MAC does not match") || problems.contains("not hex"), "{problems}");
    let run = work.run(&["verify", "--repo", &repo]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("is not there: removed"), "{}", run.stdout);
}

#[test]
fn records_grafted_from_another_copy_or_junk_numbers_do_not_hide_or_stop_the_trail() {
    let Ready { source, work, repo, .. } = Scenario::new("audit_graft").crm().init("repo");
    let copy = work.path("copy").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &copy, "--copy-from", &repo]).ok();
    for _ in 0..4 {
        work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--repo", &copy]).ok();
    }
    work.run(&["verify", "--repo", &repo]).ok();
    // Whoever holds the storage removes records 3 and 4 here and puts the copy's records in
    // (authentic: the copies share their keys): the records' numbers run on unbroken, but this
    // target's record 2 is named by nothing after it.
    for file in audit_files(&work) {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("0000000003-") || name.starts_with("0000000004-") {
            std::fs::remove_file(&file).unwrap();
        }
    }
    for file in files_under(&work.path("copy/audit")) {
        std::fs::copy(&file, work.path("repo/audit").join(file.file_name().unwrap())).unwrap();
    }
    for identity in [None, Some(work.admin_key())] {
        let mut args = vec!["verify".to_string(), "--repo".into(), repo.clone()];
        args.extend(identity.iter().flat_map(|key| ["--identity".to_string(), key.clone()]));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = work.run(&args);
        assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("no record after it names it"), "{}", run.stdout);
    }
    assert_eq!(work.run(&["audit", "--repo", &repo, "--identity", &work.admin_key()]).code, 3);

    // Junk named like the last record there can be, and a header naming what is no hash: the
    // next backup numbers its record after the last one that proves itself, and every reader
    // names the junk instead of stopping (or panicking on a character cut in half).
    let junk = b"crmvault-audit 7\n{\"number\":9999999999}\n-\n".to_vec();
    let junk_name = format!("9999999999-{}", blake3::hash(&junk).to_hex());
    std::fs::write(work.path("copy/audit").join(&junk_name), &junk).unwrap();
    let odd = "crmvault-audit 7\n{\"number\":2,\"previous\":[\"a€€€€€€€€€€€€€€\"],\"target\":\"x\",\"config_hash\":\"a€€€€\"}\n-\n";
    let odd_name = format!("0000000002-{}", blake3::hash(odd.as_bytes()).to_hex());
    std::fs::write(work.path("copy/audit").join(&odd_name), odd).unwrap();
    work.run(&["backup", "--no-alarm", "--db", &source.url(), "--repo", &copy]).ok();
    let newest = files_under(&work.path("copy/audit"))
        .into_iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
        .max_by_key(|name| (!name.starts_with("9999"), name.clone()))
        .unwrap();
    assert!(newest.starts_with("0000000005-"), "{newest}");
    for args in [vec!["verify", "--repo", &copy], vec!["audit", "--repo", &copy]] {
        let run = work.run(&args);
        assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert!(run.stdout.contains(&junk_name[..12]) && run.stdout.contains("not a BLAKE3 hash"), "{}", run.stdout);
    }
}
