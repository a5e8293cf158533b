//! End-to-end over the S3 protocol (s3s-fs in this process, or moto_server in CI), with a
//! local folder as the second target.

use std::time::{Duration, Instant};

use crate::common::s3::S3Server;
use crate::common::*;

/// Runs crmvault with the S3 server's credentials.
fn run_s3(work: &Workspace, server: &S3Server, args: &[&str]) -> Run {
    server.run(work, args)
}

fn admin_recipient(work: &Workspace) -> String {
    work.keygen("admin.key")
}

/// An admin key, and one repository on a local folder and in the bucket: (folder, bucket URL).
fn init_folder_and_bucket(work: &Workspace, server: &S3Server) -> (String, String) {
    let recipient = admin_recipient(work);
    let local = work.path("local").to_str().unwrap().to_string();
    let bucket = server.repo("crm");
    run_s3(work, server, &["init", "--repo", &local, "--repo", &bucket, "--recipient", &recipient]).ok();
    (local, bucket)
}

#[test]
fn backup_to_a_folder_and_a_bucket_then_restore_from_the_bucket_alone() {
    let server = S3Server::start();
    let source = TestDb::create("s3_both");
    source.load_file(&fixture("examples/crm.sql"));
    let work = Workspace::new();
    let (local, bucket) = init_folder_and_bucket(&work, &server);
    let report =
        run_s3(&work, &server, &["backup", "--json", "--db", &source.url(), "--repo", &local, "--repo", &bucket])
            .ok()
            .json();
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert!(targets.iter().all(|t| t["ok"] == true), "{report}");
    assert!(targets[1]["bytes_added"].as_u64().unwrap() > 1000, "{report}");
    // A second night: both targets dedup.
    let again =
        run_s3(&work, &server, &["backup", "--json", "--db", &source.url(), "--repo", &local, "--repo", &bucket])
            .ok()
            .json();
    assert_eq!(again["new_chunks"], 0, "{again}");

    run_s3(&work, &server, &["verify", "--repo", &bucket, "--identity", &work.admin_key(), "--read-data"]).ok();
    let listing = run_s3(&work, &server, &["snapshots", "--json", "--repo", &local, "--repo", &bucket]).ok().json();
    let snapshots = listing["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 2, "{listing}");
    assert_eq!(snapshots[0]["targets"].as_array().unwrap().len(), 2, "the same id on both targets: {listing}");

    let restored = TestDb::create("s3_both_restored");
    run_s3(&work, &server, &["restore", "--repo", &bucket, "--identity", &work.admin_key(), "--db", &restored.url()])
        .ok();
    assert_same_database(&source, &restored);
}

#[test]
fn a_damaged_object_on_one_target_is_named_and_restore_reads_it_from_the_other() {
    let server = S3Server::start();
    let source = TestDb::create("s3_fallback");
    source.load_file(&fixture("examples/crm.sql"));
    let work = Workspace::new();
    let (local, bucket) = init_folder_and_bucket(&work, &server);
    run_s3(&work, &server, &["backup", "--db", &source.url(), "--repo", &local, "--repo", &bucket]).ok();

    // Flip a byte in the local copy of a pack.
    let pack = files_under(&work.path("local/data")).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    let pack_name = pack.file_name().unwrap().to_str().unwrap().to_string();

    let verify = run_s3(&work, &server, &["verify", "--json", "--repo", &local, "--repo", &bucket]);
    assert_eq!(verify.code, 3, "{}", verify.stdout);
    let problems = verify.json()["problems"].as_array().unwrap().clone();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["target"], local.as_str());
    assert!(problems[0]["object"].as_str().unwrap().ends_with(&pack_name));

    let restored = TestDb::create("s3_fallback_restored");
    let run = run_s3(
        &work,
        &server,
        &[
            "restore",
            "--json",
            "--repo",
            &local,
            "--repo",
            &bucket,
            "--identity",
            &work.admin_key(),
            "--db",
            &restored.url(),
        ],
    )
    .ok();
    let report = run.json();
    let fallbacks = report["sources"]["fallbacks"].as_array().unwrap();
    assert!(!fallbacks.is_empty(), "{report}");
    assert!(fallbacks[0].as_str().unwrap().contains(&local), "{report}");
    let served = report["sources"]["served"].as_array().unwrap();
    assert!(served[1][1].as_u64().unwrap() > 0, "the bucket served nothing: {report}");
    assert_same_database(&source, &restored);

    // A pack deleted from the bucket is named with the bucket as its target.
    if let Some(dir) = server.bucket_dir() {
        let victim = files_under(&dir.join("crm/data")).into_iter().next().unwrap();
        std::fs::remove_file(&victim).unwrap();
        let verify = run_s3(&work, &server, &["verify", "--json", "--repo", &bucket]);
        assert_eq!(verify.code, 3, "{}", verify.stdout);
        let report = verify.json();
        assert_eq!(report["problems"][0]["target"], bucket.as_str(), "{report}");
        assert!(report["problems"][0]["problem"].as_str().unwrap().contains("missing"), "{report}");
    }
}

#[test]
fn a_target_that_fails_midway_gets_no_snapshot_says_so_and_the_next_backup_completes_it() {
    let mut server = S3Server::start();
    if !server.in_process() {
        eprintln!("skipped: needs the in-process S3 server to stop it mid-backup");
        return;
    }
    let source = TestDb::create("s3_midway");
    source.load_file(&fixture("examples/crm.sql"));
    source.add_filler();
    let work = Workspace::new();
    let (local, bucket) = init_folder_and_bucket(&work, &server);
    // A night both targets got, then one the bucket fails in.
    run_s3(&work, &server, &["backup", "--db", &source.url(), "--repo", &local, "--repo", &bucket]).ok();
    let data = server.bucket_dir().unwrap().join("crm/data");
    let before = files_under(&data).len();
    source.sql("UPDATE public.filler SET body = body || 'x' WHERE id % 3 = 0");

    let mut command = work.command();
    command.args(["backup", "--json", "--db", &source.url(), "--repo", &local, "--repo", &bucket]);
    for (name, value) in server.env() {
        command.env(name, value);
    }
    let child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Stop the server once the first new pack has reached it.
    let started = Instant::now();
    while files_under(&data).len() <= before && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    server.stop();
    let output = child.wait_with_output().unwrap();
    let run = Run {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&output.stdout).into(),
        stderr: String::from_utf8_lossy(&output.stderr).into(),
    };
    assert_eq!(run.code, 3, "expected a partial backup:\n{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["targets"][0]["ok"], true, "{report}");
    assert_eq!(report["targets"][1]["ok"], false, "{report}");
    assert!(report["targets"][1]["error"].as_str().unwrap().contains(&bucket), "{report}");
    let snapshots = server.bucket_dir().unwrap().join("crm/snapshots");
    assert_eq!(files_under(&snapshots).len(), 1, "the failed target got a snapshot");
    let missed = report["snapshot_id"].as_str().unwrap().to_string();

    // The local target alone restores the whole database.
    let restored = TestDb::create("s3_midway_restored");
    work.run(&["restore", "--repo", &local, "--identity", &work.admin_key(), "--db", &restored.url()]).ok();
    assert_same_database(&source, &restored);

    // Back, the bucket lacks that night's snapshot, and this host says why (under the name its
    // backups used, whatever the options: the endpoint is part of the place).
    server.restart();
    let plain = format!("s3://{}/crm/?retry_timeout=9&endpoint={}/", server.bucket, server.endpoint);
    let verify = run_s3(&work, &server, &["verify", "--json", "--repo", &plain, "--identity", &work.admin_key()]);
    assert_eq!(verify.code, 3, "{}\n{}", verify.stdout, verify.stderr);
    let problems = verify.json()["problems"].as_array().unwrap().clone();
    assert_eq!(problems.len(), 1, "{}", verify.stdout);
    assert!(problems[0]["problem"].as_str().unwrap().contains("did not reach this target"), "{}", verify.stdout);
    assert!(problems[0]["object"].as_str().unwrap().ends_with(&missed), "{}", verify.stdout);

    // Repaired: the next backup completes the bucket and records the night it missed; the
    // bucket then verifies and restores on its own.
    let report =
        run_s3(&work, &server, &["backup", "--json", "--db", &source.url(), "--repo", &local, "--repo", &bucket])
            .ok()
            .json();
    assert_eq!(report["targets"][0]["new_chunks"], 0, "{report}");
    assert!(report["targets"][1]["new_chunks"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["targets"][1]["recorded_missed"], serde_json::json!([missed]), "{report}");
    run_s3(&work, &server, &["verify", "--repo", &bucket, "--identity", &work.admin_key(), "--read-data"]).ok();
    let again = TestDb::create("s3_midway_again");
    run_s3(&work, &server, &["restore", "--repo", &bucket, "--identity", &work.admin_key(), "--db", &again.url()]).ok();
    assert_same_database(&source, &again);
}

#[test]
fn copy_brings_only_missing_snapshots_and_the_copy_restores() {
    let server = S3Server::start();
    let Ready { source, work, repo: local, .. } = Scenario::new("s3_copy").crm().init("local").backup();
    source.sql("UPDATE crm.contacts SET phone = '+1 555 0199' WHERE id % 7 = 0");
    work.backup(&source, &local);
    let bucket = server.repo("copy");
    // The writer's host is not needed: copy works without any key.
    let stranger = Workspace::new();
    run_s3(&stranger, &server, &["copy", "--from", &local, "--to", &bucket]).fails_with(1, "no crmvault repository");
    run_s3(&stranger, &server, &["init", "--copy-from", &local, "--repo", &bucket]).ok();
    let report = run_s3(&stranger, &server, &["copy", "--json", "--from", &local, "--to", &bucket]).ok().json();
    assert_eq!(report["snapshots_copied"].as_array().unwrap().len(), 2, "{report}");
    let report = run_s3(&stranger, &server, &["copy", "--json", "--from", &local, "--to", &bucket]).ok().json();
    assert_eq!(report["snapshots_copied"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["snapshots_present"], 2, "{report}");

    run_s3(&work, &server, &["verify", "--repo", &bucket, "--identity", &work.admin_key(), "--read-data"]).ok();
    let restored = TestDb::create("s3_copy_restored");
    run_s3(&work, &server, &["restore", "--repo", &bucket, "--identity", &work.admin_key(), "--db", &restored.url()])
        .ok();
    assert_same_database(&source, &restored);

    // Damage in the bucket (a pack flipped, an index deleted) is mended from the folder.
    if let Some(dir) = server.bucket_dir() {
        let pack = files_under(&dir.join("copy/data")).into_iter().next().unwrap();
        let mut bytes = std::fs::read(&pack).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&pack, bytes).unwrap();
        std::fs::remove_file(files_under(&dir.join("copy/index")).into_iter().next().unwrap()).unwrap();
        run_s3(&stranger, &server, &["verify", "--repo", &bucket]).fails_with(3, "missing");
        let args = ["copy", "--json", "--repair", "--from", &local, "--to", &bucket];
        let report = run_s3(&stranger, &server, &args).ok().json();
        assert_eq!((report["objects_repaired"].as_u64(), report["markers_cleared"].as_u64()), (Some(2), Some(1)));
        run_s3(&work, &server, &["verify", "--repo", &bucket, "--identity", &work.admin_key(), "--read-data"]).ok();
    }

    // A repository made by another init is refused.
    let other = work.path("other");
    let recipient = work.keygen("other.key");
    work.run(&["init", "--repo", other.to_str().unwrap(), "--recipient", &recipient]).ok();
    run_s3(&work, &server, &["copy", "--from", &local, "--to", other.to_str().unwrap()])
        .fails_with(1, "are not copies of one repository");
}

#[test]
fn copy_lists_what_the_bucket_holds_once_instead_of_asking_for_every_object_of_every_snapshot() {
    // Each snapshot's header names every pack it uses, most of them the nights' before: asking
    // the bucket whether it holds each one, snapshot after snapshot, grew as nights × packs
    // (620,000 requests for a year of nights).
    use crate::common::s3::{FaultCount, Faults};
    let count = std::sync::Arc::new(FaultCount::default());
    let Some(server) = S3Server::start_faulty(Faults::default(), count.clone()) else {
        eprintln!("skipped: requests are counted by the in-process S3 server only");
        return;
    };
    let table = "CREATE TABLE public.t AS SELECT i AS id, md5(i::text) AS body FROM generate_series(1, 20000) i";
    let Ready { source, work, repo: local, .. } = Scenario::new("s3_copy_requests").sql(table).init("local");
    let nights = 12;
    for night in 1..=nights {
        source.sql(&format!("UPDATE public.t SET body = md5(body) WHERE id % 13 = {night}"));
        work.backup(&source, &local);
    }
    let bucket = server.repo("copy");
    run_s3(&work, &server, &["init", "--copy-from", &local, "--repo", &bucket]).ok();
    let before = count.requests.load(std::sync::atomic::Ordering::SeqCst);
    let report = run_s3(&work, &server, &["copy", "--json", "--from", &local, "--to", &bucket]).ok().json();
    let requests = count.requests.load(std::sync::atomic::Ordering::SeqCst) - before;
    let copied = report["objects_copied"].as_u64().unwrap();
    assert_eq!(report["snapshots_copied"].as_array().unwrap().len(), nights, "{report}");
    // One write per object, and a few dozen requests besides (listings, keys, lock, audit),
    // however many snapshots name each object.
    let copied = usize::try_from(copied).unwrap();
    assert!(requests < copied + 40, "{requests} requests to copy {copied} objects: {report}");
    let restored = TestDb::create("s3_copy_requests_restored");
    run_s3(&work, &server, &["restore", "--repo", &bucket, "--identity", &work.admin_key(), "--db", &restored.url()])
        .ok();
    assert_same_database(&source, &restored);
}

#[test]
fn settings_come_from_the_config_file_which_must_be_private() {
    let server = S3Server::start();
    let work = Workspace::new();
    let recipient = admin_recipient(&work);
    let repo = format!("s3://{}/configured", server.bucket);
    std::fs::create_dir_all(work.config_dir()).unwrap();
    let config = work.config_dir().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[repository.\"{repo}\"]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            server.endpoint,
            crate::common::s3::ACCESS_KEY,
            crate::common::s3::SECRET_KEY
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    work.run(&["init", "--repo", &repo, "--recipient", &recipient])
        .fails_with(1, "holds secrets but others can read it");
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // No AWS_* variables: everything comes from the file.
    work.run(&["init", "--repo", &repo, "--recipient", &recipient]).ok();
    let source = TestDb::create("s3_config");
    source.load_file(&fixture("examples/crm.sql"));
    work.backup(&source, &repo);
    work.run(&["verify", "--repo", &repo]).ok();
    // Credentials in a URL are refused, without repeating them: URLs end up in logs.
    let run = work
        .run(&["snapshots", "--repo", &format!("{repo}?secret_access_key=wJalrXUtnFEMI")])
        .fails_with(1, "because it holds credentials (secret_access_key)");
    assert!(!run.stderr.contains("wJalrXUtnFEMI"), "{}", run.stderr);
}

#[test]
fn a_profile_and_a_secret_key_file_reach_the_bucket() {
    let server = S3Server::start();
    let work = Workspace::new();
    let recipient = admin_recipient(&work);
    let repo = format!("s3://{}/profiled", server.bucket);
    let secret = work.path("s3-secret");
    std::fs::write(&secret, format!("{}\n", crate::common::s3::SECRET_KEY)).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::create_dir_all(work.config_dir()).unwrap();
    // No secret in the file itself, so others may read it.
    std::fs::write(
        work.config_dir().join("crmvault.toml"),
        format!(
            "[profile.offsite]\nrepo = [\"{repo}\"]\n\n[repository.\"{repo}\"]\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"{}\"\nsecret_access_key_file = \"{}\"\n",
            server.endpoint,
            crate::common::s3::ACCESS_KEY,
            secret.display()
        ),
    )
    .unwrap();
    work.run(&["init", "--profile", "offsite", "--recipient", &recipient])
        .fails_with(1, &format!("run chmod 600 {}", secret.display()));
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // No AWS_* variables and no --repo: the profile and the key file give everything.
    work.run(&["init", "--profile", "offsite", "--recipient", &recipient]).ok();
    let source = TestDb::create("s3_profile");
    source.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    work.run(&["backup", "--profile", "offsite", "--db", &source.url()]).ok();
    let listed = work.run(&["snapshots", "--json", "--profile", "offsite"]).ok().json();
    assert_eq!(listed["snapshots"].as_array().map(Vec::len), Some(1), "{listed}");
}

#[test]
fn backups_work_on_a_bucket_with_object_lock_whose_objects_cannot_be_deleted() {
    let server = S3Server::start();
    let Some(repo) = server.locked_bucket_repo("crm") else {
        eprintln!("skipped: the in-process S3 server has no object lock (CI runs this against moto)");
        return;
    };
    let source = TestDb::create("s3_locked");
    source.load_file(&fixture("examples/crm.sql"));
    let work = Workspace::new();
    let recipient = admin_recipient(&work);
    run_s3(&work, &server, &["init", "--repo", &repo, "--recipient", &recipient]).ok();
    let snapshot = run_s3(&work, &server, &["backup", "--json", "--db", &source.url(), "--repo", &repo]).ok().json();
    // A compromised backup host with the same credentials cannot remove what it wrote.
    let id = snapshot["snapshot_id"].as_str().unwrap();
    let status = server.delete_version(&repo, &format!("snapshots/{id}"));
    assert!(status.contains("403"), "a locked snapshot was not refused deletion: {status}");
    let restored = TestDb::create("s3_locked_restored");
    run_s3(&work, &server, &["restore", "--repo", &repo, "--identity", &work.admin_key(), "--db", &restored.url()])
        .ok();
    assert_same_database(&source, &restored);
}

#[test]
fn s3_keys_come_from_systemd_credentials_when_the_environment_has_none() {
    let server = S3Server::start();
    let work = Workspace::new();
    let recipient = admin_recipient(&work);
    let repo = server.repo("credentials");
    let credentials = work.path("credentials");
    write_credential(&credentials, "s3-access-key-id", &format!("{}\n", crate::common::s3::ACCESS_KEY));
    write_credential(&credentials, "s3-secret-access-key", &format!("{}\n", crate::common::s3::SECRET_KEY));
    let run = |args: &[&str], with_credentials: bool| {
        let mut command = work.command();
        command.args(args).env("AWS_REGION", "us-east-1");
        if with_credentials {
            command.env("CREDENTIALS_DIRECTORY", &credentials);
        }
        Run::from(&command.output().expect("crmvault runs"))
    };
    assert_ne!(run(&["init", "--repo", &repo, "--recipient", &recipient], false).code, 0, "init without keys");
    run(&["init", "--repo", &repo, "--recipient", &recipient], true).ok();
    run(&["verify", "--repo", &repo], true).ok();
}

#[test]
fn a_lock_in_a_bucket_names_its_holder_a_stale_one_is_taken_over_and_none_is_left_behind() {
    let server = S3Server::start();
    let source = TestDb::create("s3_lock");
    source.load_file(&fixture("examples/crm.sql"));
    let work = Workspace::new();
    let recipient = admin_recipient(&work);
    let bucket = server.repo("locked");
    run_s3(&work, &server, &["init", "--repo", &bucket, "--recipient", &recipient]).ok();
    let target = crmvault::target::Target::open_with(&bucket, crmvault::target::OpenMode::Existing, &server.settings())
        .expect("the bucket opens");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let plant = |refreshed: &str| {
        let lock = format!(
            r#"{{"format":"crmvault-lock-1","id":"00aa","mode":"append","since":"{refreshed}","refreshed":"{refreshed}","lease_seconds":600}}"#
        );
        runtime.block_on(target.overwrite(crmvault::lock::WRITER_KEY, lock.into())).unwrap();
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    plant(&now);
    run_s3(&work, &server, &["backup", "--db", &source.url(), "--repo", &bucket])
        .fails_with(1, "is locked by a holder it does not name (a command run without a key writes none");

    // Not refreshed within its lease: replaced (If-Match on the version read) and backed up.
    plant("2020-01-01T00:00:00Z");
    let run = run_s3(&work, &server, &["backup", "--db", &source.url(), "--repo", &bucket]).ok();
    assert!(
        run.stderr.contains("taking over stale lock locks/writer held by a holder it does not name"),
        "{}",
        run.stderr
    );
    run_s3(&work, &server, &["verify", "--repo", &bucket]).ok();
    assert_eq!(runtime.block_on(target.list(crmvault::lock::LOCKS_FOLDER)).unwrap(), vec![]);

    plant("2020-01-01T00:00:00Z");
    let run = run_s3(&work, &server, &["unlock", "--repo", &bucket]).ok();
    assert!(run.stdout.contains("removed"), "{}", run.stdout);
    assert_eq!(runtime.block_on(target.list(crmvault::lock::LOCKS_FOLDER)).unwrap(), vec![]);
}

#[test]
fn a_flaky_bucket_gets_whole_snapshots_through_retries_or_none_and_never_one_naming_a_missing_object() {
    use crate::common::s3::{FaultCount, Faults};
    let count = std::sync::Arc::new(FaultCount::default());
    // Of every 100 requests: 8 answered 503 SlowDown, 4 cut off without an answer, 4 answered
    // after 1.5 s, 4 done but cut off before the answer (a lock, a pack: sent again, found).
    let faults = Faults { errors: 8, drops: 4, slow: 4, lost: 4, delay: Duration::from_millis(1500) };
    let Some(mut server) = S3Server::start_faulty(faults, count.clone()) else {
        eprintln!("skipped: faults are injected by the in-process S3 server only");
        return;
    };
    let source = TestDb::create("s3_flaky");
    source.load_file(&fixture("examples/crm.sql"));
    source.add_filler();
    let work = Workspace::new();
    let recipient = admin_recipient(&work);
    let local = work.path("local").to_str().unwrap().to_string();
    // More retries than the other tests' URLs: a tenth of requests fail here.
    let bucket = format!("s3://{}/crm?endpoint={}&retries=10&retry_timeout=120", server.bucket, server.endpoint);
    run_s3(&work, &server, &["init", "--repo", &local, "--repo", &bucket, "--recipient", &recipient]).ok();

    count.enabled.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut complete = 0;
    // Snapshots stored on the folder but not on the bucket (a night the bucket failed).
    let mut missed = Vec::new();
    let mut unrecorded: Vec<String> = Vec::new();
    for night in 1..=3 {
        source.sql(&format!("UPDATE public.filler SET body = body || '{night}' WHERE id % 97 = {night}"));
        let run =
            run_s3(&work, &server, &["backup", "--json", "--db", &source.url(), "--repo", &local, "--repo", &bucket]);
        assert!(matches!(run.code, 0 | 3), "night {night}: exit {}:\n{}\n{}", run.code, run.stdout, run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        complete += usize::from(run.code == 0);
        if run.code == 3 {
            missed.push(run.json()["snapshot_id"].as_str().expect("the folder got it").to_string());
        } else {
            // A night that reaches the bucket records the nights it missed before.
            unrecorded.clear();
        }
        if run.code == 3 {
            unrecorded.push(missed.last().expect("just pushed").clone());
        }
    }
    let injected = count.injected.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        injected > 0,
        "no fault was injected in {} requests",
        count.requests.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(complete > 0, "retries never got a backup through");
    eprintln!("{complete} of 3 backups complete on the bucket; {injected} faults injected");

    // Whatever got through, the bucket is whole: served without faults now, it verifies (no
    // snapshot names an object it lacks) and its newest snapshot restores the database. A night
    // it missed is said as such until the next backup reaches it, and nothing else is wrong.
    server.stop();
    server.restart();
    let plain = server.repo("crm");
    let verify =
        run_s3(&work, &server, &["verify", "--json", "--repo", &plain, "--identity", &work.admin_key(), "--read-data"]);
    for problem in verify.json()["problems"].as_array().expect("a list of problems") {
        let detail = problem["problem"].as_str().unwrap_or_default();
        let object = problem["object"].as_str().unwrap_or_default();
        assert!(
            detail.contains("did not reach this target")
                && missed.last().is_some_and(|id| object.ends_with(id.as_str())),
            "{problem}\n{}",
            verify.stdout
        );
    }
    // The next night reaches the bucket (named with other options: the same place), records the
    // nights it missed, and from then on it verifies with no problem at all. A night whose
    // snapshot the bucket stored after all (the answer to its write was the fault) is not one:
    // the record leaves it out.
    let snapshots = server.bucket_dir().expect("an in-process server").join("crm/snapshots");
    let lacking: Vec<&String> = unrecorded.iter().filter(|id| !snapshots.join(id.as_str()).exists()).collect();
    source.sql("UPDATE public.filler SET body = body || '4' WHERE id % 97 = 4");
    let night =
        run_s3(&work, &server, &["backup", "--json", "--db", &source.url(), "--repo", &local, "--repo", &plain]);
    assert_eq!(night.code, 0, "{}{}", night.stdout, night.stderr);
    assert_eq!(night.json()["targets"][1]["recorded_missed"], serde_json::json!(lacking), "{}", night.stdout);
    run_s3(&work, &server, &["verify", "--repo", &plain, "--identity", &work.admin_key()]).ok();
    let restored = TestDb::create("s3_flaky_restored");
    run_s3(&work, &server, &["restore", "--repo", &plain, "--identity", &work.admin_key(), "--db", &restored.url()])
        .ok();
    assert_same_database(&source, &restored);
}
