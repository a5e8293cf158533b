//! Key rotation (`crmvault rekey`, issue 18): who can read and write after an admin is added
//! or removed and after the writer key is rotated; what a storage writer and a retired key
//! cannot do; and a rekey interrupted at every point it writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::s3::{FaultCount, Faults, S3Server};
use crate::common::*;

fn public_key(work: &Workspace, name: &str) -> String {
    std::fs::read_to_string(work.path(name))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(String::from))
        .unwrap()
}

/// A database, and a workspace that ran `init` (pin, writer key, `admin.key`) with a second
/// admin `other.key`, with one backup taken.
struct Setup {
    source: TestDb,
    work: Workspace,
    repos: Vec<String>,
}

impl Setup {
    fn new(label: &str, targets: usize) -> Setup {
        let source = TestDb::create(label);
        source.load_file(&fixture("examples/crm.sql"));
        let work = Workspace::new();
        let admin = work.keygen("admin.key");
        let other = work.keygen("other.key");
        let repos: Vec<String> =
            (0..targets).map(|i| work.path(&format!("repo{i}")).to_str().unwrap().to_string()).collect();
        let mut args = vec!["init", "--recipient", &admin, "--recipient", &other];
        for repo in &repos {
            args.extend(["--repo", repo]);
        }
        work.run(&args).ok();
        let setup = Setup { source, work, repos };
        setup.backup();
        setup
    }

    /// The repository's id, as its first target gives it.
    fn id(&self) -> String {
        let run = self.work.run(&["fingerprint", "--json", "--repo", &self.repos[0]]).ok();
        run.json()["repository_id"].as_str().unwrap().to_string()
    }

    /// A new backup host given the first fingerprint `zero` is refused, and writes nothing to
    /// `watched` nor pins anything (its pin would be `key_path`'s `trust.json`).
    fn new_host_refuses_an_older_fingerprint(&self, host: &Workspace, key_path: &Path, zero: &str, watched: &Path) {
        let before = relative_files(watched);
        let mut args = vec!["backup", "--no-alarm", "--db", self.source.url_str(), "--fingerprint", zero];
        args.extend(self.repo_args());
        let run = host.run(&args);
        assert_ne!(run.code, 0, "{}", run.stderr);
        assert!(run.stderr.contains("the fingerprint given is of an earlier generation"), "{}", run.stderr);
        assert_eq!(relative_files(watched), before, "written");
        assert!(!key_path.with_file_name("trust.json").exists(), "pinned");
    }

    fn repo_args(&self) -> Vec<&str> {
        self.repos.iter().flat_map(|r| ["--repo", r.as_str()]).collect()
    }

    fn backup(&self) -> serde_json::Value {
        let mut args = vec!["backup", "--json", "--no-alarm", "--db", self.source.url_str()];
        args.extend(self.repo_args());
        self.work.run(&args).ok().json()
    }

    fn rekey(&self, identity: &str, options: &[&str]) -> Run {
        let key = self.work.path(identity);
        let mut args = vec!["rekey", "--identity", key.to_str().unwrap()];
        args.extend(self.repo_args());
        args.extend_from_slice(options);
        self.work.run(&args)
    }

    /// X (the `other.key` admin, removed or about to be, who kept generation 0's keys) signs a
    /// generation of its own on target `target`, from its own machine, adding a key of its
    /// choosing (copied here as `evil.key`, to try it): that key's public half.
    fn x_signs_a_generation(&self, target: usize) -> String {
        // X builds on the head there, as one of its admins (its generation's fingerprint).
        let head = self.work.run(&["fingerprint", "--json", "--repo", &self.repos[target]]).ok().json();
        let zero = head["generation_fingerprint"].as_str().unwrap().to_string();
        let attacker = Workspace::new();
        std::fs::copy(self.work.path("other.key"), attacker.path("x.key")).unwrap();
        let evil = attacker.keygen("evil.key");
        std::fs::copy(attacker.path("evil.key"), self.work.path("evil.key")).unwrap();
        let x_key = attacker.path("x.key");
        let args =
            ["rekey", "--identity", x_key.to_str().unwrap(), "--repo", &self.repos[target], "--add-recipient", &evil];
        attacker.run(&[&args[..], &["--fingerprint", &zero]].concat()).ok();
        evil
    }

    /// Target `target`'s `configs/` made a file (a storage writer making a rekey fail there
    /// before it publishes), or put back.
    fn configs_writable(&self, target: usize, writable: bool) {
        let repo = PathBuf::from(&self.repos[target]);
        let (configs, kept) = (repo.join("configs"), repo.join("configs.kept"));
        if writable {
            std::fs::remove_file(&configs).unwrap();
            std::fs::rename(kept, &configs).unwrap();
        } else {
            std::fs::rename(&configs, kept).unwrap();
            std::fs::write(&configs, b"").unwrap();
        }
    }

    /// Every file of this machine's config folder (pins, keys), as bytes.
    /// Another machine of the admin's: `admin.key`, no pin, no writer key.
    fn admin_machine(&self) -> Workspace {
        let machine = Workspace::new();
        std::fs::copy(self.work.path("admin.key"), machine.path("admin.key")).unwrap();
        machine
    }

    /// After a change backed up, none of `keys` restores the latest snapshot.
    fn locked_out_after_a_backup(&self, keys: &[&str], label: &str) {
        self.source.sql("UPDATE crm.deals SET amount = amount + 1 WHERE id % 3 = 0");
        self.backup();
        for key in keys {
            let (run, target) = self.restore_as(key, "latest", label);
            run.fails_with(1, "not a recipient");
            assert!(target.is_empty(), "{key}");
        }
    }

    fn pins(&self) -> Vec<Vec<u8>> {
        files_under(&self.work.config_dir()).into_iter().map(|f| std::fs::read(f).unwrap()).collect()
    }

    /// Restores `snapshot` from the first target with `identity` into a new database.
    fn restore_as(&self, identity: &str, snapshot: &str, label: &str) -> (Run, TestDb) {
        let target = TestDb::create(label);
        let key = self.work.path(identity);
        let run = self.work.run(&[
            "restore",
            "--repo",
            &self.repos[0],
            "--identity",
            key.to_str().unwrap(),
            "--db",
            &target.url(),
            snapshot,
        ]);
        (run, target)
    }
}

trait UrlStr {
    fn url_str(&self) -> &'static str;
}

impl UrlStr for TestDb {
    /// The URL, leaked for an argument list (tests are short-lived).
    fn url_str(&self) -> &'static str {
        Box::leak(self.url().into_boxed_str())
    }
}

/// Every file under `dir`, relative.
/// A new backup host: a machine with the writer key of repository `id` (copied from `from`)
/// and no pin; the key's path there.
fn new_host(from: &Workspace, id: &str) -> (Workspace, PathBuf) {
    let host = Workspace::new();
    let key_path = host.config_dir().join("repos").join(id).join("writer.key");
    std::fs::create_dir_all(key_path.parent().unwrap()).unwrap();
    std::fs::copy(from.config_dir().join("repos").join(id).join("writer.key"), &key_path).unwrap();
    (host, key_path)
}

fn relative_files(dir: &Path) -> BTreeSet<PathBuf> {
    files_under(dir).into_iter().map(|f| f.strip_prefix(dir).unwrap().to_path_buf()).collect()
}

/// The age ciphertext inside a stored object (a snapshot object's manifest follows its
/// plaintext header lines).
fn ciphertext_of(bytes: &[u8]) -> &[u8] {
    let magic = b"age-encryption.org/v1";
    let at = bytes.windows(magic.len()).position(|w| w == magic).expect("an age ciphertext");
    &bytes[at..]
}

fn identity(work: &Workspace, name: &str) -> Vec<age::x25519::Identity> {
    crmvault::crypto::read_identity_file(&work.path(name)).unwrap()
}

#[test]
fn a_removed_admin_reads_nothing_written_after_and_every_snapshot_still_restores() {
    let setup = Setup::new("rekey_remove", 1);
    let repo = Path::new(&setup.repos[0]).to_path_buf();
    let before_rekey = relative_files(&repo);
    let first = setup.work.run(&["snapshots", "--json", "--repo", &setup.repos[0]]).ok().json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let old_data = setup.source.data();

    let other = public_key(&setup.work, "other.key");
    let rekey = setup.rekey("admin.key", &["--json", "--remove-recipient", &other]).ok().json();
    assert_eq!(rekey["generation"], 1);
    assert_eq!(rekey["removed"][0], other.as_str());
    assert_eq!(rekey["snapshots_carried"], 1);

    // The backup host follows the new generation and keeps deduplicating.
    setup.source.sql("UPDATE crm.contacts SET phone = '+1 555 0100' WHERE id % 7 = 0");
    let second = setup.backup();
    let added = second["targets"][0]["bytes_added"].as_u64().unwrap();
    assert!(added < 200_000, "the backup after a rekey stored {added} bytes: dedup was lost");

    // Nothing written since the rekey opens with the removed admin's key.
    let removed = identity(&setup.work, "other.key");
    let mut opened = 0;
    for file in relative_files(&repo).difference(&before_rekey) {
        if file.starts_with("configs") {
            continue; // plaintext by design, and holds no secret
        }
        let bytes = std::fs::read(repo.join(file)).unwrap();
        let result = crmvault::crypto::decrypt(&removed, ciphertext_of(&bytes));
        assert!(
            matches!(result, Err(crmvault::crypto::DecryptFailure::NoMatchingKey)),
            "{} opens with the removed admin's key",
            file.display()
        );
        opened += 1;
    }
    assert!(opened >= 6, "only {opened} new objects checked");
    // It cannot restore, even what it could before: the CLI refuses its identity.
    let (run, target) = setup.restore_as("other.key", "latest", "rekey_remove_t1");
    run.fails_with(1, "not a recipient");
    assert!(target.is_empty());

    // The admin who stays restores both snapshots, each as it was.
    let (run, target) = setup.restore_as("admin.key", "latest", "rekey_remove_t2");
    run.ok();
    assert_same_database(&setup.source, &target);
    let (run, target) = setup.restore_as("admin.key", &first, "rekey_remove_t3");
    run.ok();
    assert_eq!(target.data(), old_data);
    setup.work.run(&["verify", "--repo", &setup.repos[0], "--identity", &setup.work.admin_key(), "--read-data"]).ok();
    // A fresh machine given the generation's fingerprint (or the first one) restores too.
    let generation = rekey["generation_fingerprint"].as_str().unwrap().to_string();
    assert_ne!(generation, setup.work.fingerprint(&setup.repos[0]));
    for fingerprint in [generation, setup.work.fingerprint(&setup.repos[0])] {
        let target = TestDb::create("rekey_remove_t4");
        let fresh = Workspace::new();
        std::fs::copy(setup.work.path("admin.key"), fresh.path("admin.key")).unwrap();
        fresh.restore_with(&setup.repos[0], &target, &["--fingerprint", &fingerprint, "latest"]).ok();
        assert_same_database(&setup.source, &target);
    }
}

/// The generation fingerprint from a `rekey --json` run.
fn run_fingerprint(run: &Run) -> String {
    run.json()["generation_fingerprint"].as_str().unwrap().to_string()
}

#[test]
fn an_added_admin_restores_what_is_written_from_then_on() {
    let setup = Setup::new("rekey_add", 1);
    let newcomer = setup.work.keygen("new.key");
    let run = setup.rekey("admin.key", &["--json", "--add-recipient", &newcomer]).ok();
    let generation_fingerprint = run_fingerprint(&run);
    assert!(!generation_fingerprint.is_empty());
    // Adding again changes nothing.
    let again = setup.rekey("admin.key", &["--json", "--add-recipient", &newcomer]).ok().json();
    assert_eq!(again["changed"], false);
    assert_eq!(again["generation"], 1);

    setup.source.sql("DELETE FROM crm.activities WHERE id % 3 = 0");
    setup.backup();
    // On its own machine, with the fingerprint of the generation that added it.
    let fresh = Workspace::new();
    std::fs::copy(setup.work.path("new.key"), fresh.path("admin.key")).unwrap();
    let target = TestDb::create("rekey_add_t1");
    fresh.restore_with(&setup.repos[0], &target, &["--fingerprint", &generation_fingerprint, "latest"]).ok();
    assert_same_database(&setup.source, &target);
    // What was written before it was added stays closed to it, with a clear refusal.
    let oldest = snapshots_oldest_first(&fresh, &setup.repos[0], &[]).remove(0);
    let target = TestDb::create("rekey_add_t2");
    let run = fresh.restore_with(&setup.repos[0], &target, &[&oldest]);
    run.fails_with(1, "not a recipient");
    assert!(target.is_empty());
}

#[test]
fn a_rotated_writer_key_cannot_write_and_the_new_backup_host_can() {
    let setup = Setup::new("rekey_writer", 1);
    let repo = &setup.repos[0];
    // Before the rotation, the old host's storage as it was: to plant what it writes later.
    let stale = setup.work.path("stale");
    copy_dir(Path::new(repo), &stale);
    let new_key = setup.work.path("new-writer.key");
    let run = setup
        .rekey("admin.key", &["--json", "--rotate-writer-key", "--writer-key-out", new_key.to_str().unwrap()])
        .ok()
        .json();
    let generation_fingerprint = run["generation_fingerprint"].as_str().unwrap().to_string();
    let id = run["repository_id"].as_str().unwrap().to_string();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&new_key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // The old backup host: its key is no longer the writer's.
    setup.source.sql("UPDATE crm.companies SET website = 'retired.example' WHERE id = 1");
    setup
        .work
        .run(&["backup", "--db", &setup.source.url(), "--repo", repo])
        .fails_with(1, "is not the writer key of repository");

    // The new backup host: the new key in its config folder, pinned with the fingerprint.
    let host = Workspace::new();
    let key_path = host.config_dir().join("repos").join(&id).join("writer.key");
    std::fs::create_dir_all(key_path.parent().unwrap()).unwrap();
    std::fs::copy(&new_key, &key_path).unwrap();
    host.run(&["backup", "--db", &setup.source.url(), "--repo", repo, "--fingerprint", &generation_fingerprint]).ok();
    let (run, target) = setup.restore_as("admin.key", "latest", "rekey_writer_t1");
    run.ok();
    assert_same_database(&setup.source, &target);

    // What the retired key still can do: write a snapshot under the old generation (here into
    // the copy it had), which an attacker then plants in the live repository, dated later.
    setup.source.sql("UPDATE crm.companies SET website = 'forged.example' WHERE id = 2");
    let old_host = Workspace::new();
    copy_dir(&setup.work.config_dir(), &old_host.config_dir());
    std::fs::remove_file(old_host.config_dir().join("repos").join(&id).join("trust.json")).unwrap();
    let stale = stale.to_str().unwrap();
    let fingerprint = setup.work.fingerprint(repo);
    old_host.run(&["backup", "--db", &setup.source.url(), "--repo", stale, "--fingerprint", &fingerprint]).ok();
    let live = relative_files(Path::new(repo));
    for file in relative_files(Path::new(stale)).difference(&live) {
        let to = Path::new(repo).join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(Path::new(stale).join(file), to).unwrap();
    }
    let (run, target) = setup.restore_as("admin.key", "latest", "rekey_writer_t2");
    let run = run.ok();
    assert!(run.stderr.contains("written under another config"), "{}", run.stderr);
    assert_eq!(target.sql("SELECT count(*) FROM crm.companies WHERE website = 'forged.example'").trim(), "0");
    assert_eq!(target.sql("SELECT count(*) FROM crm.companies WHERE website = 'retired.example'").trim(), "1");
    setup
        .work
        .run(&["verify", "--repo", repo, "--identity", &setup.work.admin_key()])
        .fails_with(3, "written under another config");
}

#[test]
fn a_generation_forged_in_storage_is_not_followed_and_a_fork_is_refused() {
    let setup = Setup::new("rekey_forge", 1);
    let repo = Path::new(&setup.repos[0]).to_path_buf();
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(repo.join("config")).unwrap()).unwrap();
    let config_hash = blake3::hash(&std::fs::read(repo.join("config")).unwrap()).to_hex().to_string();
    // The attacker's next generation: its own recipient added, a signature by its own key.
    let attacker = Workspace::new();
    let evil = attacker.keygen("evil.key");
    let mut forged = config.clone();
    forged["generation"] = 1.into();
    forged["previous"] = config_hash.into();
    forged["recipients"].as_array_mut().unwrap().push(evil.into());
    forged["signature"] = "00".repeat(64).into();
    let bytes = format!("{}\n", serde_json::to_string_pretty(&forged).unwrap());
    let name = blake3::hash(bytes.as_bytes()).to_hex().to_string();
    std::fs::write(repo.join("configs").join(&name), &bytes).unwrap();

    // The backup host keeps writing to the admins only; verify names the planted config.
    let before = relative_files(&repo);
    setup.source.sql("UPDATE crm.companies SET website = 'after.example' WHERE id = 1");
    setup.backup();
    let evil_key = identity(&attacker, "evil.key");
    for file in relative_files(&repo).difference(&before) {
        let bytes = std::fs::read(repo.join(file)).unwrap();
        assert!(crmvault::crypto::decrypt(&evil_key, ciphertext_of(&bytes)).is_err(), "{}", file.display());
    }
    setup
        .work
        .run(&["verify", "--repo", &setup.repos[0], "--identity", &setup.work.admin_key()])
        .fails_with(3, "is not a generation of this repository");
    std::fs::remove_file(repo.join("configs").join(&name)).unwrap();

    // Two validly signed successors (what a leaked signing key could make): refused. The fork
    // is made by rekeying a copy of generation 0 on a second machine.
    let copy = setup.work.path("fork");
    copy_dir(&repo, &copy);
    let second = Workspace::new();
    copy_dir(&setup.work.config_dir(), &second.config_dir());
    std::fs::copy(setup.work.path("admin.key"), second.path("admin.key")).unwrap();
    let other = public_key(&setup.work, "other.key");
    setup.rekey("admin.key", &["--remove-recipient", &other]).ok();
    let fork_writer = second.path("fork-writer.key");
    let copy_path = copy.to_str().unwrap();
    let fork_writer = fork_writer.to_str().unwrap();
    let admin = second.admin_key();
    second
        .run(&[
            "rekey",
            "--repo",
            copy_path,
            "--identity",
            &admin,
            "--rotate-writer-key",
            "--writer-key-out",
            fork_writer,
        ])
        .ok();
    for file in files_under(&copy.join("configs")) {
        let name = file.file_name().unwrap();
        if !repo.join("configs").join(name).exists() {
            std::fs::copy(&file, repo.join("configs").join(name)).unwrap();
        }
    }
    for file in files_under(&copy.join("keys")) {
        let to = repo.join("keys").join(file.file_name().unwrap());
        if !to.exists() {
            std::fs::copy(&file, to).unwrap();
        }
    }
    // This machine pinned the real generation 1, past the fork: it goes on (from there).
    let (run, target) = setup.restore_as("admin.key", "latest", "rekey_forge_t1");
    run.ok();
    assert_same_database(&setup.source, &target);
    setup.backup();
    // A fresh machine given the first fingerprint cannot tell which branch is real: refused.
    let fresh = setup.admin_machine();
    let target = TestDb::create("rekey_forge_t2");
    let first = fresh.run(&["fingerprint", "--repo", &setup.repos[0]]).ok().stdout.trim().to_string();
    fresh.restore_with(&setup.repos[0], &target, &["--fingerprint", &first, "latest"]).fails_with(1, "fork");
    assert!(target.is_empty());
}

/// The secrets inside a keys object, as whoever it is encrypted to reads them.
fn keys_object(repo: &Path, key: &str, identity: &[age::x25519::Identity]) -> serde_json::Value {
    let bytes = std::fs::read(repo.join(key)).unwrap();
    serde_json::from_slice(&crmvault::crypto::decrypt(identity, &bytes).unwrap()).unwrap()
}

/// Generation 0's config, as stored.
fn first_config(repo: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repo.join("config")).unwrap()).unwrap()
}

/// The config of `generation` under configs/: its hash (the file's name) and its JSON.
fn generation_config(repo: &Path, generation: u64) -> (String, serde_json::Value) {
    files_under(&repo.join("configs"))
        .into_iter()
        .map(|f| {
            let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            (f.file_name().unwrap().to_str().unwrap().to_string(), config)
        })
        .find(|(_, config)| config["generation"].as_u64().unwrap_or(0) == generation)
        .unwrap()
}

/// Snapshot ids as `snapshots --json` lists them with `extra` arguments, oldest first.
fn snapshots_oldest_first(work: &Workspace, repo: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["snapshots", "--json", "--repo", repo];
    args.extend_from_slice(extra);
    let listed = work.run(&args).ok().json();
    let mut snapshots: Vec<(String, String)> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["time"].as_str().unwrap().to_string(), s["id"].as_str().unwrap().to_string()))
        .collect();
    snapshots.sort();
    snapshots.into_iter().map(|(_, id)| id).collect()
}

/// A snapshot object's bytes: version line, header line, the header's BLAKE3, MAC, manifest.
fn snapshot_object(version_line: &[u8], header: &[u8], mac: &str, ciphertext: &[u8]) -> Vec<u8> {
    let mut object = version_line.to_vec();
    for line in [header, blake3::hash(header).to_hex().as_bytes(), mac.as_bytes(), ciphertext] {
        object.push(b'\n');
        object.extend_from_slice(line);
    }
    object
}

#[test]
fn keys_a_rekey_retired_cannot_rewrite_a_carried_snapshot_nor_plant_an_index() {
    let setup = Setup::new("rekey_retired", 1);
    let repo = PathBuf::from(&setup.repos[0]);
    // A backup that dies before its snapshot: its index is listed by no snapshot.
    setup.source.sql("UPDATE crm.contacts SET phone = '+1 555 0111' WHERE id % 5 = 0");
    let before = relative_files(&repo);
    let orphan = setup.backup()["snapshot_id"].as_str().unwrap().to_string();
    std::fs::remove_file(repo.join("snapshots").join(&orphan)).unwrap();
    let orphan_indexes: Vec<PathBuf> =
        relative_files(&repo).difference(&before).filter(|f| f.starts_with("index")).cloned().collect();
    assert_eq!(orphan_indexes.len(), 1);
    setup.source.sql("UPDATE crm.contacts SET phone = '+1 555 0112' WHERE id % 5 = 0");
    // This host wrote the snapshot deleted above, so the next backup says so (exit 3).
    let mut args = vec!["backup", "--json", "--no-alarm", "--db", setup.source.url_str()];
    args.extend(setup.repo_args());
    setup.work.run(&args).fails_with(3, "deleted without being forgotten");
    let listed = setup.work.run(&["snapshots", "--json", "--repo", &setup.repos[0]]).ok().json();
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 2);

    let other = public_key(&setup.work, "other.key");
    let rekey = setup.rekey("admin.key", &["--json", "--remove-recipient", &other]).ok().json();
    // Only the indexes carried snapshots list are carried over, never the orphan.
    assert_eq!(rekey["indexes_rewritten"], 2, "{rekey}");
    setup
        .work
        .run(&["verify", "--repo", &setup.repos[0], "--identity", &setup.work.admin_key()])
        .fails_with(3, "MACed with a key a rekey retired");
    std::fs::remove_file(repo.join(&orphan_indexes[0])).unwrap();
    setup.source.sql("UPDATE crm.companies SET website = 'after.example' WHERE id = 1");
    setup.backup();

    // The removed admin re-MACs the oldest snapshot's header with generation 0's key: dated
    // last, numbered last, so that `latest` would bring back old data.
    let removed = identity(&setup.work, "other.key");
    let config = first_config(&repo);
    let keys = keys_object(&repo, config["keys"][0].as_str().unwrap(), &removed);
    let auth = crmvault::crypto::RepoSecret::from_hex(keys["auth_secret"].as_str().unwrap()).unwrap();
    let all = snapshots_oldest_first(&setup.work, &setup.repos[0], &[]);
    let (oldest, newest) = (all[0].clone(), all[all.len() - 1].clone());
    let object = std::fs::read(repo.join("snapshots").join(&oldest)).unwrap();
    let parts: Vec<&[u8]> = object.splitn(5, |&b| b == b'\n').collect();
    let mut header: serde_json::Value = serde_json::from_slice(parts[1]).unwrap();
    header["time"] = "2099-01-01T00:00:00Z".into();
    header["sequence"] = 99.into();
    header["parent"] = newest.clone().into();
    let header = serde_json::to_vec(&header).unwrap();
    let compressed = crmvault::crypto::decrypt(&removed, parts[4]).unwrap();
    let mac = auth.snapshot_mac_key().mac(&[parts[0], &header, &compressed]);
    std::fs::write(repo.join("snapshots").join(&oldest), snapshot_object(parts[0], &header, &mac, parts[4])).unwrap();

    let (run, target) = setup.restore_as("admin.key", "latest", "rekey_retired_t1");
    let run = run.ok();
    assert!(run.stderr.contains("written under another config"), "{}", run.stderr);
    assert_same_database(&setup.source, &target);
    setup
        .work
        .run(&["verify", "--repo", &setup.repos[0], "--identity", &setup.work.admin_key()])
        .fails_with(3, "written under another config");
}

#[test]
fn a_pinned_generation_is_never_given_up_and_a_fork_behind_the_pin_does_not_stop_backups() {
    let setup = Setup::new("rekey_pinned", 1);
    let repo = PathBuf::from(&setup.repos[0]);
    let first = setup.work.fingerprint(&setup.repos[0]);
    let other = public_key(&setup.work, "other.key");
    let rekey = setup.rekey("admin.key", &["--json", "--remove-recipient", &other]).ok().json();
    setup.backup();
    let gen1 = repo.join("configs").join(generation_config(&repo, 1).0);
    assert!(rekey["generation_fingerprint"].as_str().unwrap().replace('-', "").len() == 32);

    // The newest config deleted: the pinned machine does not go back, even when told the first
    // fingerprint (that generation still lists the removed admin).
    let saved = std::fs::read(&gen1).unwrap();
    std::fs::remove_file(&gen1).unwrap();
    let admin = setup.work.admin_key();
    let run = setup.work.run(&["snapshots", "--repo", &setup.repos[0], "--identity", &admin, "--fingerprint", &first]);
    run.fails_with(1, "refusing to go back to keys a rekey retired");
    setup.work.run(&["backup", "--db", &setup.source.url(), "--repo", &setup.repos[0]]).fails_with(1, "pinned");
    std::fs::write(&gen1, &saved).unwrap();

    // A later generation copied over `config`: read as a damaged `config`, its copy decides.
    std::fs::write(repo.join("config"), &saved).unwrap();
    let run = setup.work.run(&["backup", "--db", &setup.source.url(), "--repo", &setup.repos[0]]).ok();
    assert!(run.stderr.contains("claims a later generation"), "{}", run.stderr);
    std::fs::copy(repo.join("configs").join(generation_config(&repo, 0).0), repo.join("config")).unwrap();

    // The removed admin signs a second successor of generation 0 with the signing key it held.
    let removed = identity(&setup.work, "other.key");
    let config = first_config(&repo);
    let admin_keys = keys_object(&repo, config["admin_keys"][0].as_str().unwrap(), &removed);
    let signing = crmvault::crypto::SigningSecret::from_hex(admin_keys["signing_secret"].as_str().unwrap()).unwrap();
    let mut fork: crmvault::repo::RepoConfig = serde_json::from_slice(&saved).unwrap();
    fork.recipients.push(public_key(&setup.work, "other.key"));
    fork.rekeyed = Some(chrono::Utc::now());
    fork.signature = Some(signing.sign_config(&fork.signed_bytes()));
    let bytes = fork.to_bytes();
    std::fs::write(repo.join("configs").join(blake3::hash(&bytes).to_hex().as_str()), &bytes).unwrap();

    // Machines pinned past the fork go on; nothing new is readable with the removed key.
    let before = relative_files(&repo);
    setup.source.sql("UPDATE crm.companies SET website = 'fork.example' WHERE id = 2");
    setup.backup();
    for file in relative_files(&repo).difference(&before) {
        let bytes = std::fs::read(repo.join(file)).unwrap();
        assert!(crmvault::crypto::decrypt(&removed, ciphertext_of(&bytes)).is_err(), "{}", file.display());
    }
    let (run, target) = setup.restore_as("admin.key", "latest", "rekey_pinned_t1");
    run.ok();
    assert_same_database(&setup.source, &target);
}

/// A removed admin who kept generation 0's signing key and can write one target's storage
/// forks the chain there. A backup host still pinned at generation 0, given that target and a
/// good one, refuses both and changes no pin: it used to move its pin onto the fork as it
/// checked that target first, fail on the good one, and from then on refuse the good one and
/// take the forked one alone (whose backups the removed admin reads). Also when the fork hides
/// behind another root put in the forked target's `config` (a check against the pin opens it
/// again at the pinned generation and follows its `configs/` from there), whatever the order.
#[test]
fn copies_forked_in_storage_are_refused_together_and_move_no_pin() {
    for hidden in [false, true] {
        let fork = Fork::new(if hidden { "rekey_fork_hidden" } else { "rekey_fork_targets" }, hidden);
        let (host, good, forked) = (&fork.host, fork.good.as_str(), fork.forked.as_str());
        let url = fork.setup.source.url_str();
        let pin = std::fs::read(&fork.pin_path).unwrap();
        for repos in [[forked, good], [good, forked]] {
            let run = host.run(&["backup", "--no-alarm", "--db", url, "--repo", repos[0], "--repo", repos[1]]);
            run.fails_with(1, "disagree");
            assert_eq!(std::fs::read(&fork.pin_path).unwrap(), pin, "a pin changed ({repos:?})");
        }
        // Commands that check their copies one at a time (a problem on one is a finding)
        // refuse them together too: the first would have followed the fork.
        let one_at_a_time: [&[&str]; 5] = [
            &["verify", "--repo", forked, "--repo", good],
            &["snapshots", "--repo", forked, "--repo", good],
            &["audit", "--repo", forked, "--repo", good],
            &["prune", "--dry-run", "--repo", forked, "--repo", good],
            &["copy", "--from", forked, "--to", good],
        ];
        for args in one_at_a_time {
            host.run(args).fails_with(1, "disagree");
            assert_eq!(std::fs::read(&fork.pin_path).unwrap(), pin, "{args:?} changed a pin");
        }
        // Given the good target alone, the host does not follow the real generation 1 either:
        // where the forked target is absent, it cannot tell which of two is the admins'. Given
        // that generation's fingerprint (from the admins), it follows it; what it writes there,
        // the removed admin cannot read.
        let before = relative_files(Path::new(good));
        let alone = ["backup", "--no-alarm", "--db", url, "--repo", good];
        host.run(&alone).fails_with(1, "could not be checked beside it");
        assert_eq!(std::fs::read(&fork.pin_path).unwrap(), pin, "a pin changed (alone)");
        let real = host.run(&["fingerprint", "--json", "--repo", good]).ok().json()["generation_fingerprint"]
            .as_str()
            .unwrap()
            .to_string();
        host.run(&[&alone[..], &["--fingerprint", &real]].concat()).ok();
        let written = relative_files(Path::new(good));
        let new: Vec<_> = written.difference(&before).collect();
        assert!(new.iter().any(|f| f.starts_with("snapshots")), "{new:?}");
        for file in new {
            let bytes = std::fs::read(Path::new(good).join(file)).unwrap();
            assert!(crmvault::crypto::decrypt(&fork.removed, ciphertext_of(&bytes)).is_err(), "{}", file.display());
        }
        // And the forked target, given with it again, is refused: a copy off the pinned chain is
        // left out, named, nothing written to it; the good one gets the night (exit 3).
        let (forked_before, pin) = (relative_files(Path::new(forked)), std::fs::read(&fork.pin_path).unwrap());
        let run = host.run(&["backup", "--no-alarm", "--db", url, "--repo", forked, "--repo", good]);
        let run = run.fails_with(3, "not the one this host pinned");
        assert!(run.stderr.contains(&format!("FAILED  the config of the repository at {forked}")), "{}", run.stderr);
        assert_eq!(relative_files(Path::new(forked)), forked_before, "something was written to the forked copy");
        let pinned: serde_json::Value = serde_json::from_slice(&std::fs::read(&fork.pin_path).unwrap()).unwrap();
        let before: serde_json::Value = serde_json::from_slice(&pin).unwrap();
        assert_eq!(pinned["config_hash"], before["config_hash"], "the pin left the good generation");
    }
}

/// Two targets rekeyed from generation 0 to 1 (removing `other.key`), a backup host whose
/// config folder is as it was before the rekey (pinned at generation 0), and the second target
/// forked by the removed admin: its generation 1 replaced by another successor of generation 0,
/// signed with the key the removed admin held then, that adds it back as a recipient.
/// Both successors of generation 0 in one copy's `configs/` (the admins' and one signed with
/// a removed admin's key): a host pinned at generation 0 cannot tell which is the admins', so it
/// refuses every copy given with that one, rather than leaving it out and following the other
/// copy's successor, which a storage writer of that other copy could have made the forged one.
#[test]
fn a_fork_inside_one_copy_stops_every_copy_given_with_it() {
    let fork = Fork::new("rekey_fork_inside", false);
    let (host, good, forked) = (&fork.host, fork.good.as_str(), fork.forked.as_str());
    let (gen1, _) = generation_config(Path::new(good), 1);
    std::fs::copy(Path::new(good).join("configs").join(&gen1), Path::new(forked).join("configs").join(&gen1)).unwrap();
    let url = fork.setup.source.url_str();
    let pin = std::fs::read(&fork.pin_path).unwrap();
    for repos in [[forked, good], [good, forked]] {
        let (before_good, before_forked) = (relative_files(Path::new(good)), relative_files(Path::new(forked)));
        let run = host.run(&["backup", "--no-alarm", "--db", url, "--repo", repos[0], "--repo", repos[1]]);
        run.fails_with(1, "fork");
        assert_eq!(std::fs::read(&fork.pin_path).unwrap(), pin, "a pin changed ({repos:?})");
        assert_eq!(relative_files(Path::new(good)), before_good, "written to the good copy ({repos:?})");
        assert_eq!(relative_files(Path::new(forked)), before_forked, "written to the forked copy ({repos:?})");
    }
}

struct Fork {
    setup: Setup,
    host: Workspace,
    good: String,
    forked: String,
    pin_path: PathBuf,
    removed: Vec<age::x25519::Identity>,
}

impl Fork {
    /// With `hidden`, the forked target's `config` shows another root of the same id (with a
    /// chain of its own up to generation 2), its `configs/` the fork.
    fn new(label: &str, hidden: bool) -> Fork {
        let setup = Setup::new(label, 2);
        let host = Workspace::new();
        copy_dir(&setup.work.config_dir(), &host.config_dir());
        let other = public_key(&setup.work, "other.key");
        setup.rekey("admin.key", &["--remove-recipient", &other]).ok();
        let forked = PathBuf::from(&setup.repos[1]);
        let (gen0_name, gen0) = generation_config(&forked, 0);
        let (gen1_name, _) = generation_config(&forked, 1);
        let removed = identity(&setup.work, "other.key");
        let admin_keys = keys_object(&forked, gen0["admin_keys"][0].as_str().unwrap(), &removed);
        let signing =
            crmvault::crypto::SigningSecret::from_hex(admin_keys["signing_secret"].as_str().unwrap()).unwrap();
        let gen1 = std::fs::read(forked.join("configs").join(&gen1_name)).unwrap();
        let mut fork: crmvault::repo::RepoConfig = serde_json::from_slice(&gen1).unwrap();
        fork.recipients.push(other.clone());
        fork.rekeyed = Some(chrono::Utc::now());
        fork.signature = Some(signing.sign_config(&fork.signed_bytes()));
        let bytes = fork.to_bytes();
        std::fs::remove_file(forked.join("configs").join(&gen1_name)).unwrap();
        std::fs::write(forked.join("configs").join(blake3::hash(&bytes).to_hex().as_str()), &bytes).unwrap();
        std::fs::write(forked.join("config"), &bytes).unwrap();
        if hidden {
            let own = crmvault::crypto::SigningSecret::generate();
            let gen0_bytes = std::fs::read(forked.join("configs").join(&gen0_name)).unwrap();
            let mut root: crmvault::repo::RepoConfig = serde_json::from_slice(&gen0_bytes).unwrap();
            root.signing_key = Some(own.public_hex());
            let mut previous = root.to_bytes();
            std::fs::write(forked.join("config"), &previous).unwrap();
            for generation in 1..=2 {
                let mut next = root.clone();
                next.generation = generation;
                next.previous = Some(blake3::hash(&previous).to_hex().to_string());
                next.rekeyed = Some(chrono::Utc::now());
                next.signature = Some(own.sign_config(&next.signed_bytes()));
                previous = next.to_bytes();
                std::fs::write(forked.join("configs").join(blake3::hash(&previous).to_hex().as_str()), &previous)
                    .unwrap();
            }
        }
        assert!(forked.join("configs").join(&gen0_name).exists());
        let pin_path = host.config_dir().join("repos").join(gen0["id"].as_str().unwrap()).join("trust.json");
        let (good, forked) = (setup.repos[0].clone(), setup.repos[1].clone());
        Fork { setup, host, good, forked, pin_path, removed }
    }
}

/// The objects in `after` that `before` lacks, in the order they were written (rekey only
/// creates objects, and their modification times give the order).
pub(crate) fn written_since(before: &Path, after: &Path) -> Vec<PathBuf> {
    // Files written within one tick of the file system's clock (4 ms here) share a time: those
    // go in the order the commit protocol writes their kinds (docs/FORMAT.md, *Write order*),
    // and snapshots in the order they are sealed (a tie broken by name once made a copy of the
    // newest night come before its predecessor's copy, a state no run leaves).
    let kind = |file: &Path| {
        let top = file.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or_default().to_string();
        ["keys", "configs", "config", "dicts", "data", "index", "snapshots", "forgotten", "audit"]
            .iter()
            .position(|k| *k == top)
            .unwrap_or(9)
    };
    // Snapshots (copies sealed again) go oldest first: by their header's sequence.
    let sequence = |file: &Path| {
        if kind(file) != 6 {
            return 0;
        }
        let text = std::fs::read(after.join(file)).unwrap();
        let header = text.split(|&b| b == b'\n').nth(1).unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(header).ok().and_then(|h| h["sequence"].as_u64()).unwrap_or(0)
    };
    let old = relative_files(before);
    let mut new: Vec<(std::time::SystemTime, usize, u64, PathBuf)> = relative_files(after)
        .difference(&old)
        .map(|f| (std::fs::metadata(after.join(f)).unwrap().modified().unwrap(), kind(f), sequence(f), f.clone()))
        .collect();
    new.sort();
    new.into_iter().map(|(_, _, _, f)| f).collect()
}

/// The pins under `config_dir` as a rekey publishing the config `hash` leaves them until it
/// follows it (`pending`, written before it stores anything).
pub(crate) fn set_pending(config_dir: &Path, hash: &str) {
    for file in files_under(config_dir).into_iter().filter(|f| f.ends_with("trust.json")) {
        let mut pin: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        pin["pending"] = hash.into();
        std::fs::write(&file, serde_json::to_vec_pretty(&pin).unwrap()).unwrap();
    }
}

/// The state a rekey killed after its first `written` new objects would leave: `before` plus
/// those objects, taken from `after`.
pub(crate) fn cut(before: &Path, after: &Path, new: &[PathBuf], written: usize, into: &Path) {
    let _ = std::fs::remove_dir_all(into);
    copy_dir(before, into);
    for file in new.iter().take(written) {
        let to = into.join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(after.join(file), to).unwrap();
    }
}

#[test]
fn a_rekey_interrupted_anywhere_leaves_every_snapshot_restorable_and_finishes_when_run_again() {
    let setup = Setup::new("rekey_cut", 2);
    setup.source.sql("UPDATE crm.deals SET amount = amount + 1 WHERE id % 5 = 0");
    setup.backup();
    let (a, b) = (PathBuf::from(&setup.repos[0]), PathBuf::from(&setup.repos[1]));
    let (before_a, before_b) = (setup.work.path("before0"), setup.work.path("before1"));
    copy_dir(&a, &before_a);
    copy_dir(&b, &before_b);
    let pins_before = setup.work.path("pins-before");
    copy_dir(&setup.work.config_dir(), &pins_before);
    let other = public_key(&setup.work, "other.key");
    let admin_machine = setup.admin_machine();
    setup.rekey("admin.key", &["--remove-recipient", &other]).ok();
    let (written_a, written_b) = (written_since(&before_a, &a), written_since(&before_b, &b));
    let (after_a, after_b) = (setup.work.path("after0"), setup.work.path("after1"));
    copy_dir(&a, &after_a);
    copy_dir(&b, &after_b);
    let (new_a, new_b) = (written_a.len(), written_b.len());
    let pending = generation_config(&after_a, 1).0;
    // 4 keys objects on each target, then configs on each, then indexes on each.
    assert!(new_a >= 6 && new_b >= 6, "{new_a} {new_b}");

    // Cut points on the first target, with the second untouched or whole.
    let mut cuts: Vec<(usize, usize)> = (0..=new_a).map(|k| (k, 0)).collect();
    cuts.extend([(new_a, 4), (new_a, 5), (new_a, new_b)]);
    cuts.extend([(5, 5), (4, 5)]);
    for (k, l) in cuts {
        cut(&before_a, &after_a, &written_a, k, &a);
        cut(&before_b, &after_b, &written_b, l, &b);
        let label = format!("cut {k}/{l}");
        // Every snapshot restores with the admin who stays, from either target, on the admin's
        // machine (that has not seen the new generation: one that has refuses a target still
        // behind it, as it would a rollback of the keys; the backup host follows a generation
        // from one target alone no more than it writes there).
        for repo in [&setup.repos[0], &setup.repos[1]] {
            let _ = std::fs::remove_dir_all(admin_machine.config_dir());
            copy_dir(&pins_before, &admin_machine.config_dir());
            for key in files_under(&admin_machine.config_dir()).into_iter().filter(|f| f.ends_with("writer.key")) {
                std::fs::remove_file(key).unwrap();
            }
            let target = TestDb::create("rekey_cut_t");
            admin_machine.restore_with(repo, &target, &["latest"]).ok();
            assert_same_database(&setup.source, &target);
            let verify = admin_machine.run(&["verify", "--repo", repo, "--identity", &admin_machine.admin_key()]);
            assert_eq!(verify.code, 0, "{label}: {}\n{}", verify.stdout, verify.stderr);
        }
        let _ = std::fs::remove_dir_all(setup.work.config_dir());
        copy_dir(&pins_before, &setup.work.config_dir());
        // Run again, the rekey finishes: both targets at one generation, the admin removed. The
        // machine's pin is as the kill left it: naming the generation being published.
        set_pending(&setup.work.config_dir(), &pending);
        setup.rekey("admin.key", &["--remove-recipient", &other]).ok();
        let fingerprints: BTreeSet<String> = setup
            .repos
            .iter()
            .map(|r| {
                setup.work.run(&["fingerprint", "--json", "--repo", r]).ok().json()["generation_fingerprint"]
                    .to_string()
            })
            .collect();
        assert_eq!(fingerprints.len(), 1, "{label}: the targets differ");
        let (run, target) = setup.restore_as("other.key", "latest", "rekey_cut_t2");
        run.fails_with(1, "not a recipient");
        assert!(target.is_empty(), "{label}");
        // And backups deduplicate against everything stored before.
        let backup = setup.backup();
        for t in backup["targets"].as_array().unwrap() {
            assert!(t["bytes_added"].as_u64().unwrap() < 200_000, "{label}: {t}");
        }
    }
}

/// Every stored object that opens with `key`, except configs (plaintext) and the keys objects
/// of generations before the newest (they hold only secrets their recipients had).
fn readable_with(repo: &Path, key: &[age::x25519::Identity]) -> Vec<PathBuf> {
    let newest: serde_json::Value = {
        let mut newest = serde_json::Value::Null;
        for file in files_under(&repo.join("configs")) {
            let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            if config["generation"].as_u64().unwrap_or(0) >= newest["generation"].as_u64().unwrap_or(0) {
                newest = config;
            }
        }
        newest
    };
    let current: Vec<String> = ["keys", "admin_keys"]
        .iter()
        .flat_map(|field| newest[field].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()))
        .collect();
    let mut readable = Vec::new();
    for file in relative_files(repo) {
        let name = file.to_str().unwrap();
        if name.starts_with("configs/")
            || name == "config"
            || (name.starts_with("keys/") && !current.iter().any(|k| k == name))
        {
            continue;
        }
        let bytes = std::fs::read(repo.join(&file)).unwrap();
        if crmvault::crypto::decrypt(key, ciphertext_of(&bytes)).is_ok() {
            readable.push(file);
        }
    }
    readable
}

#[test]
fn a_host_whose_snapshot_was_reencrypted_while_another_wrote_the_newest_raises_no_alarm() {
    let setup = Setup::new("rekey_two_hosts", 1);
    // A second backup host of the same repository, writing the second snapshot; the first
    // writes the third, the newest.
    let second = Workspace::new();
    copy_dir(&setup.work.config_dir(), &second.config_dir());
    let backup = |host: &Workspace| host.run(&["backup", "--db", setup.source.url_str(), "--repo", &setup.repos[0]]);
    setup.source.sql("UPDATE crm.contacts SET phone = '+1 555 0142' WHERE id % 5 = 0");
    backup(&second).ok();
    setup.backup();
    // Every snapshot copied under a new id, the old ids deleted: the second host's snapshot is
    // there, as a copy that is not the newest.
    setup.rekey("admin.key", &["--reencrypt"]).ok();
    let target = TestDb::create("rekey_two_hosts_t");
    let admin = setup.work.admin_key();
    let restore = ["restore", "--repo", &setup.repos[0], "--identity", &admin, "--db", &target.url(), "latest"];
    second.run(&restore).ok();
    second.run(&["verify", "--repo", &setup.repos[0]]).ok();
    let run = backup(&second).ok();
    assert!(!run.stderr.contains("deleted without being forgotten"), "{}", run.stderr);
    // Deleted for real (and the copy with it), it is reported.
    setup.source.sql("UPDATE crm.contacts SET phone = '+1 555 0143' WHERE id % 5 = 0");
    let newest = backup(&second).ok();
    let id = newest.stdout.lines().find(|l| l.len() == 64).unwrap().to_string();
    setup.backup();
    std::fs::remove_file(Path::new(&setup.repos[0]).join("snapshots").join(&id)).unwrap();
    backup(&second).fails_with(3, "deleted without being forgotten");
}

#[test]
fn reencrypt_leaves_a_removed_admin_nothing_and_gives_an_added_one_everything() {
    let setup = Setup::new("rekey_reencrypt", 2);
    let first_data = setup.source.data();
    setup.source.sql("UPDATE crm.contacts SET phone = '+1 555 0199' WHERE id % 4 = 0");
    setup.backup();
    let other = public_key(&setup.work, "other.key");
    let removed = identity(&setup.work, "other.key");
    assert!(!readable_with(Path::new(&setup.repos[0]), &removed).is_empty(), "the test reads nothing to begin with");

    // Junk planted under snapshots/ keeps nothing readable: it proves nothing.
    let junk = b"junk that claims to be a snapshot";
    let junk_path = Path::new(&setup.repos[0]).join("snapshots").join(blake3::hash(junk).to_hex().as_str());
    std::fs::write(&junk_path, junk).unwrap();
    let run = setup.rekey("admin.key", &["--json", "--remove-recipient", &other, "--reencrypt"]).ok().json();
    assert_eq!(run["reencrypted"][0]["ignored"].as_array().unwrap().len(), 1, "{run}");
    std::fs::remove_file(&junk_path).unwrap();
    for done in run["reencrypted"].as_array().unwrap() {
        assert_eq!(done["snapshots"], 2, "{done}");
        assert!(done["packs"].as_u64().unwrap() >= 1 && done["deleted"].as_u64().unwrap() >= 4, "{done}");
        assert!(done["not_deleted"].as_array().unwrap().is_empty(), "{done}");
    }
    for repo in &setup.repos {
        assert_eq!(readable_with(Path::new(repo), &removed), Vec::<PathBuf>::new(), "{repo}");
        setup.work.run(&["verify", "--repo", repo, "--identity", &setup.work.admin_key(), "--read-data"]).ok();
    }
    // Both snapshots restore as they were, from their new ids.
    let snapshots = snapshots_oldest_first(&setup.work, &setup.repos[1], &[]);
    assert_eq!(snapshots.len(), 2);
    let (run, target) = setup.restore_as("admin.key", &snapshots[0], "rekey_reencrypt_t1");
    run.ok();
    assert_eq!(target.data(), first_data);
    let (run, target) = setup.restore_as("admin.key", "latest", "rekey_reencrypt_t2");
    run.ok();
    assert_same_database(&setup.source, &target);
    // Backups go on deduplicating against the re-encrypted packs.
    let backup = setup.backup();
    assert!(backup["targets"][0]["bytes_added"].as_u64().unwrap() < 200_000, "{backup}");

    // An admin added with --reencrypt reads the oldest snapshot too.
    let newcomer = setup.work.keygen("new.key");
    let run = setup.rekey("admin.key", &["--json", "--add-recipient", &newcomer, "--reencrypt"]).ok();
    let fresh = Workspace::new();
    std::fs::copy(setup.work.path("new.key"), fresh.path("admin.key")).unwrap();
    let fingerprint = run_fingerprint(&run);
    let oldest = snapshots_oldest_first(&fresh, &setup.repos[0], &["--fingerprint", &fingerprint]).remove(0);
    let target = TestDb::create("rekey_reencrypt_t3");
    fresh.restore_with(&setup.repos[0], &target, &["--fingerprint", &fingerprint, &oldest]).ok();
    assert_eq!(target.data(), first_data);
}

#[test]
fn an_interrupted_reencrypt_leaves_every_snapshot_restorable_and_finishes_when_run_again() {
    let setup = Setup::new("rekey_recut", 1);
    setup.source.sql("UPDATE crm.deals SET amount = amount * 2 WHERE id % 3 = 0");
    setup.backup();
    let repo = PathBuf::from(&setup.repos[0]);
    let before = setup.work.path("before");
    copy_dir(&repo, &before);
    let pins_before = setup.work.path("pins-before");
    copy_dir(&setup.work.config_dir(), &pins_before);
    let other = public_key(&setup.work, "other.key");
    setup.rekey("admin.key", &["--remove-recipient", &other, "--reencrypt"]).ok();
    // Everything the run wrote (its deletions come after the last write).
    let written = written_since(&before, &repo);
    let after = setup.work.path("after");
    copy_dir(&repo, &after);
    let removed = identity(&setup.work, "other.key");
    for k in [written.len() / 3, 2 * written.len() / 3, written.len()] {
        cut(&before, &after, &written, k, &repo);
        let _ = std::fs::remove_dir_all(setup.work.config_dir());
        copy_dir(&pins_before, &setup.work.config_dir());
        let (run, target) = setup.restore_as("admin.key", "latest", "rekey_recut_t1");
        run.ok();
        assert_same_database(&setup.source, &target);
        let verify = setup.work.run(&["verify", "--repo", &setup.repos[0], "--identity", &setup.work.admin_key()]);
        assert_eq!(verify.code, 0, "cut {k}: {}\n{}", verify.stdout, verify.stderr);
        setup.rekey("admin.key", &["--remove-recipient", &other, "--reencrypt"]).ok();
        assert_eq!(readable_with(&repo, &removed), Vec::<PathBuf>::new(), "cut {k}");
        let listed = setup.work.run(&["snapshots", "--json", "--repo", &setup.repos[0]]).ok().json();
        assert_eq!(listed["snapshots"].as_array().unwrap().len(), 2, "cut {k}: {listed}");
        let (run, target) = setup.restore_as("admin.key", "latest", "rekey_recut_t2");
        run.ok();
        assert_same_database(&setup.source, &target);
    }
}

#[test]
fn a_snapshot_of_an_older_format_forged_with_the_repository_secret_is_refused() {
    let setup = Setup::new("rekey_downgrade", 1);
    let repo = PathBuf::from(&setup.repos[0]);
    let other = public_key(&setup.work, "other.key");
    setup.rekey("admin.key", &["--remove-recipient", &other]).ok();
    setup.source.sql("UPDATE crm.companies SET website = 'newest.example' WHERE id = 1");
    setup.backup();
    let (head_hash, head) = generation_config(&repo, 1);

    // The removed admin still knows the repository secret (it does not change at a rekey) and
    // can read the first snapshot's manifest: it writes it as a format-6 snapshot, MACed the
    // way format 6 was, under today's config, newest of all, encrypted to today's recipients.
    let removed = identity(&setup.work, "other.key");
    let keys = keys_object(&repo, first_config(&repo)["keys"][0].as_str().unwrap(), &removed);
    let secret = crmvault::crypto::RepoSecret::from_hex(keys["repo_secret"].as_str().unwrap()).unwrap();
    let oldest = snapshots_oldest_first(&setup.work, &setup.repos[0], &[]).remove(0);
    let object = std::fs::read(repo.join("snapshots").join(&oldest)).unwrap();
    let parts: Vec<&[u8]> = object.splitn(5, |&b| b == b'\n').collect();
    let compressed = crmvault::crypto::decrypt(&removed, parts[4]).unwrap();
    let mut header: serde_json::Value = serde_json::from_slice(parts[1]).unwrap();
    header["version"] = 6.into();
    header["config_hash"] = head_hash.into();
    header["time"] = "2099-01-01T00:00:00Z".into();
    header["sequence"] = 999.into();
    let header = serde_json::to_vec(&header).unwrap();
    let recipients: Vec<age::x25519::Recipient> = head["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .chain(std::iter::once(&head["writer_recipient"]))
        .map(|r| r.as_str().unwrap().parse().unwrap())
        .collect();
    let ciphertext = crmvault::crypto::encrypt(&recipients, &compressed);
    let mac = secret.mac_key().mac(&[&header, &compressed]);
    let forged = snapshot_object(b"crmvault-snapshot 6", &header, &mac, &ciphertext);
    std::fs::write(repo.join("snapshots").join(blake3::hash(&ciphertext).to_hex().as_str()), forged).unwrap();

    let (run, target) = setup.restore_as("admin.key", "latest", "rekey_downgrade_t1");
    let run = run.ok();
    assert!(run.stderr.contains("claims an older format"), "{}", run.stderr);
    assert_same_database(&setup.source, &target);
    setup
        .work
        .run(&["verify", "--repo", &setup.repos[0], "--identity", &setup.work.admin_key()])
        .fails_with(3, "claims an older format");
}

#[test]
fn reencrypt_goes_on_past_a_snapshot_whose_pack_is_gone_and_says_what_it_left() {
    let setup = Setup::new("rekey_gone", 1);
    let repo = PathBuf::from(&setup.repos[0]);
    // A pack the snapshot needs is deleted from storage.
    let pack = files_under(&repo.join("data")).into_iter().next().unwrap();
    std::fs::remove_file(&pack).unwrap();
    let other = public_key(&setup.work, "other.key");
    let run = setup.rekey("admin.key", &["--remove-recipient", &other, "--reencrypt"]);
    let run = run.fails_with(3, "re-encryption incomplete");
    assert!(run.stdout.contains("left as it was"), "{}", run.stdout);
    // The recipient is removed all the same, and what was left is still named by verify.
    let listed = setup.work.run(&["snapshots", "--json", "--repo", &setup.repos[0]]).ok().json();
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 1);
    setup.work.run(&["verify", "--repo", &setup.repos[0]]).fails_with(3, "missing");
}

#[test]
fn a_copy_rolled_back_to_retired_keys_is_not_read_beside_one_that_is_not() {
    let setup = Setup::new("rekey_rollback2", 2);
    let other = public_key(&setup.work, "other.key");
    setup.rekey("admin.key", &["--remove-recipient", &other]).ok();
    setup.backup();
    // On the second target only, the new generation's config is deleted: that copy now opens at
    // generation 0, whose keys the removed admin and the retired writer still hold.
    let second = PathBuf::from(&setup.repos[1]);
    std::fs::remove_file(second.join("configs").join(generation_config(&second, 1).0)).unwrap();
    for order in [[1, 0], [0, 1]] {
        let target = TestDb::create("rekey_rollback2_t");
        let admin = setup.work.admin_key();
        let url = target.url();
        let (a, b) = (&setup.repos[order[0]], &setup.repos[order[1]]);
        let run = setup.work.run(&["restore", "--repo", a, "--repo", b, "--identity", &admin, "--db", &url]);
        // The machine pinned the new generation: the copy that does not lead there is left out,
        // named, and the restore reads the other.
        let run = run.ok();
        let left_out = format!("{} left out: the repository at {0} does not lead to the generation", setup.repos[1]);
        assert!(run.stderr.contains(&left_out) && run.stderr.contains("rekey retired"), "{}", run.stderr);
        // And why: the other copy's chain leads through its generation.
        let behind = format!("(it is at generation 0 of the repository's keys, behind {}", setup.repos[0]);
        assert!(run.stderr.contains(&behind), "{}", run.stderr);
        assert_same_database(&setup.source, &target);
    }
    // A machine that never followed the rekey (pinned at generation 0) cannot tell which copy is
    // right: it reads neither.
    let fresh = Workspace::new();
    std::fs::copy(setup.work.admin_key(), fresh.path("admin.key")).unwrap();
    let first = setup.work.fingerprint(&setup.repos[1]);
    let target = TestDb::create("rekey_rollback2_fresh");
    let (admin, url) = (fresh.path("admin.key"), target.url());
    let admin = admin.to_str().unwrap();
    let args = ["restore", "--repo", &setup.repos[0], "--repo", &setup.repos[1], "--identity", admin, "--db", &url];
    let run = fresh.run(&[&args[..], &["--fingerprint", &first]].concat());
    run.fails_with(1, "older generation of its keys");
    assert!(target.is_empty());
    // rekey, given both, brings the copy back up; then both restore.
    setup.rekey("admin.key", &[]).ok();
    let (run, target) = setup.restore_as("admin.key", "latest", "rekey_rollback2_t2");
    run.ok();
    assert_same_database(&setup.source, &target);
}

/// Why a copy behind another's generation still stops a machine whose pin has not followed the
/// rekey: the copy "ahead" may be a removed admin's. An admin removes X, and the rekey reaches
/// the first target only (interrupted; X, writing that storage, can make it fail there). X, who
/// kept generation 0's admin key, deletes the new generation on the first target and signs a
/// successor of its own there (a rekey of its own adding a key of its choosing). To the backup
/// host, pinned at generation 0, that copy is ahead of the second, signed from its pin: had it
/// left the second out as behind, it would have followed X's generation and written the night
/// readable to X (session 48's review). It refuses both, moves no pin, writes nothing.
#[test]
fn a_removed_admins_generation_on_one_copy_is_not_followed_past_a_copy_the_rekey_did_not_reach() {
    let setup = Setup::new("rekey_x_fork", 2);
    let host_pins = setup.work.path("host-pins");
    copy_dir(&setup.work.config_dir(), &host_pins);
    let (first, second) = (PathBuf::from(&setup.repos[0]), PathBuf::from(&setup.repos[1]));
    let x = public_key(&setup.work, "other.key");
    let admin = setup.work.admin_key();
    let zero = setup.work.fingerprint(&setup.repos[1]);
    // The admin's rekey reaches the first target only.
    let args = ["rekey", "--json", "--identity", &admin, "--remove-recipient", &x, "--repo", &setup.repos[0]];
    let admin_rekey = setup.work.run(&args).ok();
    std::fs::remove_file(first.join("configs").join(generation_config(&first, 1).0)).unwrap();
    // X's own generation 1 on the first target, from X's machine.
    let attacker = Workspace::new();
    std::fs::copy(setup.work.path("other.key"), attacker.path("x.key")).unwrap();
    let evil = attacker.keygen("evil.key");
    let x_key = attacker.path("x.key");
    let args = ["rekey", "--identity", x_key.to_str().unwrap(), "--repo", &setup.repos[0], "--add-recipient", &evil];
    attacker.run(&[&args[..], &["--fingerprint", &zero]].concat()).ok();
    assert_eq!(generation_config(&first, 1).1["generation"], 1);

    // The backup host, its pin at generation 0.
    std::fs::remove_dir_all(setup.work.config_dir()).unwrap();
    copy_dir(&host_pins, &setup.work.config_dir());
    let pins = files_under(&setup.work.config_dir()).into_iter().map(|f| std::fs::read(f).unwrap()).collect::<Vec<_>>();
    let (before_first, before_second) = (relative_files(&first), relative_files(&second));
    let mut args = vec!["backup", "--no-alarm", "--db", setup.source.url_str()];
    args.extend(setup.repo_args());
    setup.work.run(&args).fails_with(1, "older generation of its keys");
    let before = (before_first, before_second);
    assert_eq!((relative_files(&first), relative_files(&second)), before, "written");
    let after =
        files_under(&setup.work.config_dir()).into_iter().map(|f| std::fs::read(f).unwrap()).collect::<Vec<_>>();
    assert_eq!(after, pins, "a pin moved");
    // Given the admins' new fingerprint, the host trusts neither X's generation nor the copy
    // behind: still nothing written.
    let real = run_fingerprint(&admin_rekey);
    setup.work.run(&[&args[..], &["--fingerprint", &real]].concat()).fails_with(1, "");
    assert_eq!((relative_files(&first), relative_files(&second)), before, "written");
}

/// The admin's rekey removing X reaches the first target only; X signs a sibling generation of
/// its own on the second with generation 0's keys. On a night the first target cannot be
/// reached, the backup host, pinned at generation 0, sees only X's: it does not follow a new
/// generation on that one storage's word (it would have written the night readable to X), says
/// why, and writes nothing. (Session 49's second attack run.)
#[test]
fn a_backup_host_does_not_follow_a_new_generation_while_a_target_given_cannot_be_checked_beside_it() {
    let setup = Setup::new("rekey_hold", 2);
    let host_pins = setup.work.path("host-pins");
    copy_dir(&setup.work.config_dir(), &host_pins);
    let (first, second) = (PathBuf::from(&setup.repos[0]), PathBuf::from(&setup.repos[1]));
    let x = public_key(&setup.work, "other.key");
    let admin = setup.work.admin_key();
    let args = ["rekey", "--json", "--identity", &admin, "--remove-recipient", &x, "--repo", &setup.repos[0]];
    let real = run_fingerprint(&setup.work.run(&args).ok());
    setup.x_signs_a_generation(1);

    std::fs::remove_dir_all(setup.work.config_dir()).unwrap();
    copy_dir(&host_pins, &setup.work.config_dir());
    let away = setup.work.path("first-away");
    std::fs::rename(&first, &away).unwrap();
    let pins = files_under(&setup.work.config_dir()).into_iter().map(|f| std::fs::read(f).unwrap()).collect::<Vec<_>>();
    let before = relative_files(&second);
    let mut args = vec!["backup", "--no-alarm", "--db", setup.source.url_str()];
    args.extend(setup.repo_args());
    setup.work.run(&args).fails_with(1, "could not be checked beside it");
    // Nor does any other command of the host follow it (the units run verify after backup), nor
    // one given the second target alone.
    let mut verify = vec!["verify"];
    verify.extend(setup.repo_args());
    setup.work.run(&verify).fails_with(1, "could not be checked beside it");
    let alone = ["backup", "--no-alarm", "--db", setup.source.url_str(), "--repo", &setup.repos[1]];
    setup.work.run(&alone).fails_with(1, "could not be checked beside it");
    setup.work.run(&["snapshots", "--repo", &setup.repos[1]]).fails_with(1, "could not be checked beside it");
    assert_eq!(relative_files(&second), before, "written");
    let after =
        files_under(&setup.work.config_dir()).into_iter().map(|f| std::fs::read(f).unwrap()).collect::<Vec<_>>();
    assert_eq!(after, pins, "a pin moved");
    // The admins' new fingerprint does not lead there either.
    setup.work.run(&[&args[..], &["--fingerprint", &real]].concat()).fails_with(1, "");
    assert_eq!(relative_files(&second), before, "written");
    std::fs::rename(&away, &first).unwrap();
}

/// The way out FORMAT gives a backup host whose pin had not followed a rekey that did not reach
/// every target (or whose new config a storage writer deleted on one): the new generation's
/// fingerprint, given once. The copy behind then fails against it and is left out, named; the
/// others get the night.
#[test]
fn a_host_given_the_new_fingerprint_backs_up_past_a_copy_the_rekey_did_not_reach() {
    let setup = Setup::new("rekey_behind_fp", 2);
    let host_pins = setup.work.path("host-pins");
    copy_dir(&setup.work.config_dir(), &host_pins);
    let x = public_key(&setup.work, "other.key");
    let admin = setup.work.admin_key();
    let args = ["rekey", "--json", "--identity", &admin, "--remove-recipient", &x, "--repo", &setup.repos[0]];
    let new = run_fingerprint(&setup.work.run(&args).ok());
    std::fs::remove_dir_all(setup.work.config_dir()).unwrap();
    copy_dir(&host_pins, &setup.work.config_dir());
    let mut args = vec!["backup", "--json", "--no-alarm", "--db", setup.source.url_str()];
    args.extend(setup.repo_args());
    setup.work.run(&args).fails_with(1, "older generation of its keys");
    let run = setup.work.run(&[&args[..], &["--fingerprint", &new]].concat());
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let targets = run.json()["targets"].as_array().unwrap().clone();
    assert_eq!((targets[0]["ok"].as_bool(), targets[1]["ok"].as_bool()), (Some(true), Some(false)), "{targets:?}");
    // Written under the new generation: the removed admin reads none of it.
    let (run, target) = setup.restore_as("other.key", "latest", "rekey_behind_fp_x");
    run.fails_with(1, "not a recipient");
    assert!(target.is_empty());
}

/// An admin removes X with a rekey that X, who writes the second target's storage, makes fail
/// there before it published anything; X then signs a generation 1 of its own on that target
/// (X kept generation 0's signing key), adding a key of its choosing. The admin runs the rekey
/// again, on the machine that started it: that copy is ahead, signed from the admin's pin,
/// and the other is behind; followed, the rerun would have carried X's recipient into every
/// generation after. The pin names the generation the first run was publishing
/// (`Pin::pending`), so the rerun refuses X's, writes nothing and moves no pin; with X's config
/// taken out of storage, it finishes, and X's key reads nothing written after.
#[test]
fn a_rekey_run_again_does_not_follow_a_successor_a_removed_admin_planted_where_it_failed() {
    let setup = Setup::new("rekey_rerun_fork", 2);
    let (first, second) = (PathBuf::from(&setup.repos[0]), PathBuf::from(&setup.repos[1]));
    let x = public_key(&setup.work, "other.key");
    let admin = setup.work.admin_key();
    // X makes the second target refuse the new config; the rekey publishes there first.
    setup.configs_writable(1, false);
    let rekey = |extra: &[&str]| {
        let args = ["rekey", "--identity", &admin, "--remove-recipient", &x, "--repo", &setup.repos[1]];
        setup.work.run(&[&args[..], &["--repo", &setup.repos[0]], extra].concat())
    };
    rekey(&[]).fails_with(1, "configs");
    setup.configs_writable(1, true);
    assert_eq!(files_under(&first.join("configs")).len(), 1, "published on the first");
    // X's own generation 1 on the second target, from X's machine.
    let evil = setup.x_signs_a_generation(1);
    let (forged, _) = generation_config(&second, 1);

    // Run again, the admin's rekey refuses X's generation: nothing written, no pin moved.
    let pins = setup.pins();
    let before = (relative_files(&first), relative_files(&second));
    rekey(&[]).fails_with(1, "not the one the rekey this machine started was publishing");
    assert_eq!((relative_files(&first), relative_files(&second)), before, "written");
    let after = setup.pins();
    assert_eq!(after, pins, "a pin moved");

    // X's config taken out of storage, the rerun finishes: X and X's key read nothing new.
    std::fs::remove_file(second.join("configs").join(&forged)).unwrap();
    let report = rekey(&["--json"]).ok().json();
    assert!(!report["recipients"].to_string().contains(&evil), "{report}");
    setup.locked_out_after_a_backup(&["evil.key", "other.key"], "rekey_rerun_fork_t");
}

/// Without any sabotage: X, still an admin (or removed, keeping generation 0's keys), signs a
/// generation 1 of its own on the one target it writes, adding a key of its choosing, before
/// the admin's rekey that removes X. The admin's machine never saw that generation and made
/// none: bringing the other target up to it would take it on the word of X's storage. The
/// rekey refuses, names the config; with it deleted, the rekey removes X and X's key reads
/// nothing after. (Followed, the admin was told "removed admin X: it reads nothing written
/// from now on" while X's key stayed a recipient: session 49's review.)
#[test]
fn a_removal_rekey_does_not_bring_a_copy_up_to_a_generation_this_machine_never_saw() {
    let setup = Setup::new("rekey_unseen", 2);
    let second = PathBuf::from(&setup.repos[1]);
    let x = public_key(&setup.work, "other.key");
    let zero = setup.work.fingerprint(&setup.repos[1]);
    let evil = setup.x_signs_a_generation(1);
    let (planted, _) = generation_config(&second, 1);

    // A fresh machine given the first fingerprint vouches for nothing after it either.
    let fresh = setup.admin_machine();
    let admin_key = fresh.path("admin.key");
    let mut args = vec!["rekey", "--identity", admin_key.to_str().unwrap(), "--fingerprint", &zero];
    args.extend(setup.repo_args());
    fresh
        .run(&[&args[..], &["--remove-recipient", &x]].concat())
        .fails_with(1, "did not make nor was given the fingerprint of");
    // On a copy of the admin's machine, a command given that target alone follows X's
    // generation by its signature, as it follows any admin's rekey, and says what it added; the
    // pin vouches for it no more than before, and the rekey is refused there too.
    let other_machine = Workspace::new();
    let _ = std::fs::remove_dir_all(other_machine.config_dir());
    copy_dir(&setup.work.config_dir(), &other_machine.config_dir());
    // An admin's machine, not the backup host (which follows no generation one target shows).
    for key in files_under(&other_machine.config_dir()).into_iter().filter(|f| f.ends_with("writer.key")) {
        std::fs::remove_file(key).unwrap();
    }
    std::fs::copy(setup.work.path("admin.key"), other_machine.path("admin.key")).unwrap();
    let verify = other_machine.run(&["verify", "--repo", &setup.repos[1]]).ok();
    let said =
        format!("generation 1 of the repository's keys added admin {evil}, followed by this machine by its signature");
    assert!(verify.stderr.contains(&said), "{}", verify.stderr);
    let admin_key = other_machine.path("admin.key");
    let mut args = vec!["rekey", "--identity", admin_key.to_str().unwrap(), "--remove-recipient", &x];
    args.extend(setup.repo_args());
    other_machine.run(&args).fails_with(1, "did not make nor was given the fingerprint of");
    let pins = setup.pins();
    let before = (relative_files(&PathBuf::from(&setup.repos[0])), relative_files(&second));
    let run = setup.rekey("admin.key", &["--remove-recipient", &x]);
    assert!(run.stderr.contains(&format!("delete configs/{planted}")), "{}", run.stderr);
    run.fails_with(1, "did not make nor was given the fingerprint of");
    assert_eq!((relative_files(&PathBuf::from(&setup.repos[0])), relative_files(&second)), before, "written");
    let after = setup.pins();
    assert_eq!(after, pins, "a pin moved");

    std::fs::remove_file(second.join("configs").join(&planted)).unwrap();
    let report = setup.rekey("admin.key", &["--json", "--remove-recipient", &x]).ok().json();
    assert!(!report["recipients"].to_string().contains(&evil), "{report}");
    setup.locked_out_after_a_backup(&["evil.key", "other.key"], "rekey_unseen_t");
}

/// One target, which X writes: a generation 1 X signed there before the rekey that removes X
/// (adding a key of X's) is, to every machine, an admin's rekey like any other, followed by its
/// signature. A removal rekey built on it would keep that key a reader while saying X reads
/// nothing from now on: refused, naming the key, nothing written (on the admin's machine, and
/// on a fresh one given the first fingerprint). Removed too, as the refusal says, it reads
/// nothing written after. (Before, the rekey only warned, and finished.)
#[test]
fn a_rekey_that_would_keep_an_admin_a_generation_it_never_saw_added_is_refused() {
    let setup = Setup::new("rekey_added_since", 1);
    let x = public_key(&setup.work, "other.key");
    let zero = setup.work.fingerprint(&setup.repos[0]);
    let evil = setup.x_signs_a_generation(0);
    let repo = PathBuf::from(&setup.repos[0]);
    let before = relative_files(&repo);

    let said = format!("generation 1 of the repository's keys added admin {evil}: this rekey would keep it");
    let pins = setup.pins();
    setup.rekey("admin.key", &["--remove-recipient", &x]).fails_with(1, &said);
    assert_eq!(setup.pins(), pins, "a pin moved");
    let fresh = setup.admin_machine();
    let admin_key = fresh.path("admin.key");
    let args = ["rekey", "--identity", admin_key.to_str().unwrap(), "--repo", &setup.repos[0], "--fingerprint", &zero];
    fresh.run(&[&args[..], &["--remove-recipient", &x]].concat()).fails_with(1, &said);
    assert_eq!(relative_files(&repo), before, "written");

    let run = setup.rekey("admin.key", &["--remove-recipient", &x, "--remove-recipient", &evil]).ok();
    assert!(run.stderr.contains("this rekey undoes it"), "{}", run.stderr);
    let admins = run.stdout.lines().find(|l| l.starts_with("admins now: ")).unwrap_or_default().to_string();
    assert!(!admins.contains(&evil) && !admins.contains(&x), "{}", run.stdout);
    // Nothing new to say on the next rekey: the machine vouches for generations it made.
    let later = setup.work.keygen("later.key");
    let run = setup.rekey("admin.key", &["--add-recipient", &later]).ok();
    assert!(!run.stderr.contains("added admin"), "{}", run.stderr);
    setup.locked_out_after_a_backup(&["evil.key", "other.key"], "rekey_added_since_t");
}

/// The same, with the chain cut where the machine could see what X's generation added: the
/// admin's machine followed X's generation by its signature (the nightly verify), then X deletes
/// the generation before it and makes `config` junk. The copy opens at the pinned generation,
/// which this machine only followed: the removal rekey cannot tell what it added, and refuses.
/// (Before, it saw no change at all, kept X's key a reader, and printed X's generation's
/// fingerprint as the repository's.)
#[test]
fn a_rekey_refuses_when_the_generations_back_to_one_it_vouches_for_cannot_be_read() {
    let setup = Setup::new("rekey_cut_chain", 1);
    let x = public_key(&setup.work, "other.key");
    let evil = setup.x_signs_a_generation(0);
    let repo = PathBuf::from(&setup.repos[0]);
    let verify = setup.work.run(&["verify", "--repo", &setup.repos[0]]).ok();
    assert!(verify.stderr.contains(&format!("added admin {evil}, followed by this machine")), "{}", verify.stderr);
    let (first, _) = generation_config(&repo, 0);
    std::fs::remove_file(repo.join("configs").join(&first)).unwrap();
    std::fs::write(repo.join("config"), "junk").unwrap();
    let before = relative_files(&repo);
    let pins = setup.pins();

    setup
        .rekey("admin.key", &["--remove-recipient", &x])
        .fails_with(1, &format!("configs/{first} is missing or damaged there"))
        .fails_with(1, "who they added cannot be told");
    assert_eq!((relative_files(&repo), setup.pins()), (before, pins), "written");
}

/// Two targets; the admin's own rekey (generation 1, adding a newcomer, X still an admin)
/// reached both; X signs generation 2 on the bucket, adding a key of its choosing, and the
/// bucket's listings leave generation 1 out while it serves it by name. The bucket's copy
/// opens at generation 0 and reaches X's generation only once reopened at the generation the
/// pin names. Ordered as first opened, it was taken as level with the head rather than ahead
/// of the folder: the pin followed X's generation, the rekey brought the folder up to it, and
/// X's key stayed a reader while the rekey said X reads nothing from now on (an attack review
/// found it as a storage answering a second read otherwise). Now every copy is opened at its
/// pinned generation before they are ordered, and read once: the folder is behind a
/// generation this machine never vouched for, and the rekey refuses; nothing written, no pin
/// moved.
#[test]
fn a_copy_reopened_at_its_pinned_generation_is_ordered_as_reopened() {
    let count = std::sync::Arc::new(FaultCount::default());
    let Some(server) = S3Server::start_faulty(Faults::default(), count.clone()) else {
        return; // the listing is changed only by the server in this process
    };
    let source = TestDb::create("rekey_listing");
    source.load_file(&fixture("examples/crm.sql"));
    let work = Workspace::new();
    let admin = work.keygen("admin.key");
    let other = work.keygen("other.key");
    let local = work.path("repo0").to_str().unwrap().to_string();
    let bucket = server.repo("rekey-listing");
    let repos = ["--repo", local.as_str(), "--repo", bucket.as_str()];
    server.run(&work, &[&["init", "--recipient", &admin, "--recipient", &other][..], &repos].concat()).ok();
    server.run(&work, &[&["backup", "--no-alarm", "--db", source.url_str()][..], &repos].concat()).ok();
    let admin_key = work.admin_key();
    let newcomer = work.keygen("new.key");
    let add = ["rekey", "--identity", &admin_key, "--add-recipient", &newcomer];
    let own = server.run(&work, &[&add[..], &["--json"], &repos].concat()).ok().json();
    let head = own["generation_fingerprint"].as_str().unwrap().to_string();
    let (config_hash, _) = generation_config(Path::new(&local), 1);
    // X, an admin of generation 1, signs generation 2 on the bucket.
    let attacker = Workspace::new();
    std::fs::copy(work.path("other.key"), attacker.path("x.key")).unwrap();
    let evil = attacker.keygen("evil.key");
    let x_key = attacker.path("x.key");
    let x_args = ["rekey", "--identity", x_key.to_str().unwrap(), "--repo", &bucket, "--fingerprint", &head];
    server.run(&attacker, &[&x_args[..], &["--add-recipient", &evil]].concat()).ok();
    count.hidden.lock().unwrap().push(format!("configs/{config_hash}"));
    let stored = || (relative_files(Path::new(&local)), relative_files(&server.bucket_dir().unwrap()));
    let pins = || files_under(&work.config_dir()).into_iter().map(|f| std::fs::read(f).unwrap()).collect::<Vec<_>>();
    let before = (stored(), pins());

    let x = public_key(&work, "other.key");
    let run = server.run(&work, &[&["rekey", "--identity", &admin_key, "--remove-recipient", &x][..], &repos].concat());
    run.fails_with(1, "which this machine did not make nor was given the fingerprint of");
    assert!((stored(), pins()) == before, "written");

    // A new backup host, given the first fingerprint: no pin of its own to anchor the copies
    // at, it makes one in the run. The bucket's copy, opened low, is behind the folder's; it is
    // not reopened at the pin just made (which took it to X's generation, pinned the host
    // there, and had its next nights written to X's keys).
    let first = own["fingerprint"].as_str().unwrap().to_string();
    let id = own["repository_id"].as_str().unwrap().to_string();
    let (host, _) = new_host(&work, &id);
    let backup = ["backup", "--no-alarm", "--db", source.url_str()];
    server.run(&host, &[&backup[..], &["--fingerprint", &first], &repos].concat());
    server.run(&host, &[&backup[..], &repos].concat());
    let (x_generation, _) = generation_config(&server.bucket_dir().unwrap().join("rekey-listing"), 2);
    let pin = std::fs::read_to_string(host.config_dir().join("repos").join(&id).join("trust.json")).unwrap_or_default();
    assert!(!pin.contains(&x_generation), "the new host pinned X's generation: {pin}");
}

/// The backup host's pin is what its backups follow, whatever command moves it. On the machine
/// with the writer key, X's generation on the one target X writes is followed by no command
/// given that target alone (an admin's `snapshots` there), and a `copy` from it into another
/// repository is refused before any check. (Before, `copy` checked each side keyless, moved the
/// host's pin onto X's generation, then refused the two repositories; the next nights left the
/// other target out and went to X's keys: an attack review.)
#[test]
fn no_command_on_the_backup_host_follows_a_generation_one_target_shows() {
    let setup = Setup::new("host_pin", 2);
    setup.x_signs_a_generation(1);
    let unrelated = setup.work.init_repo("unrelated");
    let pins = setup.pins();
    let copy = ["copy", "--from", &setup.repos[1], "--to", &unrelated];
    setup.work.run(&copy).fails_with(1, "are not copies of one repository");
    assert_eq!(setup.pins(), pins, "copy moved a pin");
    let admin = setup.work.admin_key();
    let listing = ["snapshots", "--identity", &admin, "--repo", &setup.repos[1]];
    setup.work.run(&listing).fails_with(1, "could not be checked beside it");
    assert_eq!(setup.pins(), pins, "snapshots moved a pin");
}

/// A new backup host given the first fingerprint: its first pin would take the generations
/// since by their signatures, on the word of the copies it reaches. With the target X writes
/// the only one up, it pinned X's generation (no warning), wrote its nights for X's keys, and
/// left the good target out from then on (an attack review). On a machine with the writer key
/// a first pin needs the head's fingerprint: nothing written, no pin made.
#[test]
fn a_new_backup_host_given_an_older_fingerprint_pins_nothing_past_it() {
    let setup = Setup::new("new_host_old_fp", 2);
    let zero = setup.work.fingerprint(&setup.repos[0]);
    let evil = setup.x_signs_a_generation(1);
    let id = setup.id();
    let (host, key_path) = new_host(&setup.work, &id);
    let (first, second) = (PathBuf::from(&setup.repos[0]), PathBuf::from(&setup.repos[1]));
    let away = setup.work.path("repo0.away");
    std::fs::rename(&first, &away).unwrap();
    setup.new_host_refuses_an_older_fingerprint(&host, &key_path, &zero, &second);
    std::fs::rename(&away, &first).unwrap();
    // An admin's machine pins it, and says what the generations it took by their signatures
    // added (its pin is not one to copy to a backup host).
    let admin = setup.admin_machine();
    let listing = ["snapshots", "--identity", &admin.admin_key(), "--fingerprint", &zero, "--repo", &setup.repos[1]];
    let run = admin.run(&listing).ok();
    let said =
        format!("generation 1 of the repository's keys added admin {evil}, followed by this machine by its signature");
    assert!(run.stderr.contains(&said), "{}", run.stderr);
    // So does `init --copy-from` on a machine with no key, which pins what it copied from.
    let keyless = Workspace::new();
    let place = keyless.path("copy");
    let args = ["init", "--copy-from", &setup.repos[1], "--fingerprint", &zero, "--repo", place.to_str().unwrap()];
    let run = keyless.run(&args).ok();
    assert!(run.stderr.contains(&said), "{}", run.stderr);
}

/// The same refusal is the machine's, not a copy's: after a removal rekey reached both
/// targets, X rolls the one it writes back to the first generation (deletes the newer config
/// there). A new backup host given the first fingerprint refused the folder alone (its head is
/// past that fingerprint), left it out, passed the rolled-back copy alone, and wrote its night
/// there under the keys X holds (an attack review). Now the copies are refused together.
#[test]
fn a_new_backup_host_does_not_leave_out_the_copy_ahead_of_an_older_fingerprint() {
    let setup = Setup::new("new_host_rolled_back", 2);
    let zero = setup.work.fingerprint(&setup.repos[0]);
    let x = public_key(&setup.work, "other.key");
    let report = setup.rekey("admin.key", &["--json", "--remove-recipient", &x]).ok().json();
    let id = report["repository_id"].as_str().unwrap().to_string();
    let second = PathBuf::from(&setup.repos[1]);
    let (newer, _) = generation_config(&second, 1);
    std::fs::remove_file(second.join("configs").join(newer)).unwrap();
    let (host, key_path) = new_host(&setup.work, &id);
    // Nothing written where X reads.
    setup.new_host_refuses_an_older_fingerprint(&host, &key_path, &zero, &second);
}

/// An admin's machine (no writer key) pinned the repository; then X signs a generation adding
/// its own key on the one target X writes, and the machine's next look at that target follows
/// it by its signature (its rule lets one target's word move the pin, with a warning). That
/// pin, with the writer key installed there since, or copied to a backup host, wrote the
/// nights under X's generation. Now a machine holding the writer key refuses a generation its
/// pin took by signatures alone until the head's fingerprint is given.
#[test]
fn a_pin_an_admins_machine_took_by_signatures_writes_nothing_where_the_writer_key_is() {
    let setup = Setup::new("unchecked_pin", 2);
    let zero = setup.work.fingerprint(&setup.repos[0]);
    let id = setup.id();
    let admin = setup.admin_machine();
    let key = admin.admin_key();
    let listing = ["snapshots", "--identity", &key, "--repo", &setup.repos[1]];
    admin.run(&[&listing[..], &["--fingerprint", &zero]].concat()).ok();
    setup.x_signs_a_generation(1);
    admin.run(&listing).fails_with(0, "followed by this machine by its signature");
    let pin_file = admin.config_dir().join("repos").join(&id).join("trust.json");
    let pinned = std::fs::read(&pin_file).unwrap();
    let second = PathBuf::from(&setup.repos[1]);
    let before = relative_files(&second);
    let backup = ["backup", "--no-alarm", "--db", setup.source.url_str(), "--repo", &setup.repos[1]];
    // The writer key installed on that machine.
    let writer_key = setup.work.config_dir().join("repos").join(&id).join("writer.key");
    std::fs::copy(&writer_key, pin_file.with_file_name("writer.key")).unwrap();
    admin.run(&backup).fails_with(1, "by signatures alone on a machine without that key");
    // The pin copied to a backup host.
    let (host, key_path) = new_host(&setup.work, &id);
    std::fs::copy(&pin_file, key_path.with_file_name("trust.json")).unwrap();
    host.run(&backup).fails_with(1, "by signatures alone on a machine without that key");
    // Any command there: the pin is the one its backups would follow from then on.
    host.run(&["verify", "--repo", &setup.repos[1]]).fails_with(1, "by signatures alone on a machine without that key");
    assert_eq!(relative_files(&second), before, "written where X reads");
    assert_eq!(std::fs::read(&pin_file).unwrap(), pinned, "the pin moved");
}

/// The way past it when the generation is the admins': a colleague rekeys from their machine,
/// an admin's machine pins from the first fingerprint (taking the colleague's generation by its
/// signature), and later becomes the backup host: refused once, then given the fingerprint the
/// colleague's rekey printed, it backs up, and needs nothing more after.
#[test]
fn a_pin_taken_by_signatures_is_checked_once_given_the_heads_fingerprint() {
    let setup = Setup::new("unchecked_pin_vouched", 2);
    let zero = setup.work.fingerprint(&setup.repos[0]);
    let colleague = Workspace::new();
    std::fs::copy(setup.work.path("other.key"), colleague.path("other.key")).unwrap();
    let other_key = colleague.path("other.key");
    let newcomer = colleague.keygen("new.key");
    let mut args = vec!["rekey", "--json", "--identity", other_key.to_str().unwrap(), "--fingerprint", &zero];
    args.extend(setup.repo_args());
    let run = colleague.run(&[&args[..], &["--add-recipient", &newcomer]].concat()).ok();
    let theirs = run_fingerprint(&run);
    let id = run.json()["repository_id"].as_str().unwrap().to_string();
    let admin = setup.admin_machine();
    let key = admin.admin_key();
    let mut listing = vec!["snapshots", "--identity", &key, "--fingerprint", &zero];
    listing.extend(setup.repo_args());
    admin.run(&listing).ok();
    let pin_file = admin.config_dir().join("repos").join(&id).join("trust.json");
    let writer_key = setup.work.config_dir().join("repos").join(&id).join("writer.key");
    std::fs::copy(&writer_key, pin_file.with_file_name("writer.key")).unwrap();
    let mut backup = vec!["backup", "--no-alarm", "--db", setup.source.url_str()];
    backup.extend(setup.repo_args());
    admin.run(&backup).fails_with(1, "by signatures alone on a machine without that key");
    admin.run(&[&backup[..], &["--fingerprint", &theirs]].concat()).ok();
    admin.run(&backup).ok();
    let pin: serde_json::Value = serde_json::from_slice(&std::fs::read(&pin_file).unwrap()).unwrap();
    assert!(pin.get("unchecked").is_none(), "{pin}");
}

/// A target retired for good (the second bucket given up) stays a place in the backup host's
/// pin, and the host follows a new generation by its signature only where every place it knows
/// is checked: after the admins' next rekey its nights stopped until a fingerprint was given.
/// `retire-target` forgets the place (without reaching it), and the host follows on its own.
#[test]
fn a_target_retired_on_the_backup_host_does_not_stop_it_following_the_next_rekey() {
    let setup = Setup::new("retired_target", 2);
    let zero = setup.work.fingerprint(&setup.repos[0]);
    let (kept, retired) = (&setup.repos[0], &setup.repos[1]);
    std::fs::rename(retired, setup.work.path("given-up")).unwrap();
    let admin = setup.admin_machine();
    let key = admin.admin_key();
    let later = admin.keygen("later.key");
    let args = ["rekey", "--identity", &key, "--fingerprint", &zero, "--repo", kept, "--add-recipient", &later];
    admin.run(&args).ok();
    let backup = ["backup", "--no-alarm", "--db", setup.source.url_str(), "--repo", kept];
    setup.work.run(&backup).fails_with(1, "could not be checked beside it");

    setup.work.run(&["retire-target", "--repo", "/nowhere/never-used"]).fails_with(1, "not a place of any repository");
    let run = setup.work.run(&["retire-target", "--json", "--repo", retired]).ok();
    assert_eq!(run.json()["retired"][0]["location"], retired.as_str(), "{}", run.stdout);
    let id = run.json()["retired"][0]["repository_id"].as_str().unwrap().to_string();
    let pin = std::fs::read_to_string(setup.work.config_dir().join("repos").join(&id).join("trust.json")).unwrap();
    assert!(!pin.contains(retired.as_str()), "{pin}");
    setup.work.run(&backup).ok();
    // Written for the admin the rekey added.
    let target = TestDb::create("retired_target_t");
    let later_key = admin.path("later.key");
    let later_key = later_key.to_str().unwrap();
    let restore = ["restore", "--identity", later_key, "--repo", kept, "--db", &target.url(), "latest"];
    admin.run(&restore).ok();
    assert_same_database(&setup.source, &target);
}

/// The way past that refusal when the generation is a colleague's: another admin rotates the
/// writer key from their machine; this admin's next rekey would keep a writer key this machine
/// cannot vouch for, and is refused until given the fingerprint the colleague has; then it
/// builds on it and the backup host with the colleague's writer key writes on.
#[test]
fn a_rekey_builds_on_a_colleagues_generation_once_given_its_fingerprint() {
    let setup = Setup::new("rekey_colleague", 1);
    let zero = setup.work.fingerprint(&setup.repos[0]);
    let colleague = Workspace::new();
    std::fs::copy(setup.work.path("other.key"), colleague.path("other.key")).unwrap();
    let other_key = colleague.path("other.key");
    let writer_key = colleague.path("writer.key");
    let args = [
        "rekey",
        "--json",
        "--identity",
        other_key.to_str().unwrap(),
        "--fingerprint",
        &zero,
        "--repo",
        &setup.repos[0],
        "--rotate-writer-key",
        "--writer-key-out",
        writer_key.to_str().unwrap(),
    ];
    let run = colleague.run(&args).ok();
    let theirs = run_fingerprint(&run);
    let id = run.json()["repository_id"].as_str().unwrap().to_string();

    let later = setup.work.keygen("later.key");
    setup
        .rekey("admin.key", &["--add-recipient", &later])
        .fails_with(1, "generation 1 of the repository's keys put in writer key");
    let run = setup.rekey("admin.key", &["--add-recipient", &later, "--fingerprint", &theirs]).ok();
    assert!(!run.stderr.contains("put in writer key"), "{}", run.stderr);
    // The backup host, given the colleague's writer key, writes on; the added admin reads it.
    std::fs::copy(&writer_key, setup.work.config_dir().join("repos").join(&id).join("writer.key")).unwrap();
    setup.backup();
    let (run, target) = setup.restore_as("later.key", "latest", "rekey_colleague_t");
    run.ok();
    assert_same_database(&setup.source, &target);
}

/// A rekey interrupted after it published on the first target, and the pin then moved to its
/// generation by another command here (a nightly `verify` of that target): the generation is
/// still this machine's own, so the rerun brings the other target up, nothing is said of the
/// admin it added, and the next rekey says nothing of it either. (Before, the rerun was refused
/// as "did not make", with advice to delete the admin's own generation.)
#[test]
fn a_rekey_finished_after_another_command_followed_its_generation_is_still_this_machines_own() {
    let setup = Setup::new("rekey_own", 2);
    let newcomer = setup.work.keygen("new.key");
    setup.configs_writable(1, false);
    let admin = setup.work.admin_key();
    let args = ["rekey", "--identity", &admin, "--add-recipient", &newcomer, "--repo", &setup.repos[0]];
    setup.work.run(&[&args[..], &["--repo", &setup.repos[1]]].concat()).fails_with(1, "configs");
    setup.configs_writable(1, true);
    let verify = setup.work.run(&["verify", "--repo", &setup.repos[0]]).ok();
    assert!(!verify.stderr.contains("added admin"), "{}", verify.stderr);
    let run = setup.rekey("admin.key", &[]).ok();
    assert!(run.stdout.contains("brought"), "{}", run.stdout);
    assert!(!run.stderr.contains("added admin"), "{}", run.stderr);
    let later = setup.work.keygen("later.key");
    let run = setup.rekey("admin.key", &["--add-recipient", &later]).ok();
    assert!(!run.stderr.contains("added admin"), "{}", run.stderr);
}

/// The way out the refusal above names, when the other successor is an admin's: the admin's
/// rekey fails on the second target, another admin rekeys both from another machine meanwhile;
/// the first admin's machine refuses that generation until it is given its fingerprint once,
/// then follows it and needs nothing more.
#[test]
fn another_admins_rekey_after_an_interrupted_one_is_followed_once_its_fingerprint_is_given() {
    let setup = Setup::new("rekey_rerun_other", 2);
    let admin = setup.work.admin_key();
    let zero = setup.work.fingerprint(&setup.repos[1]);
    let newcomer = setup.work.keygen("new.key");
    setup.configs_writable(1, false);
    let args = ["rekey", "--identity", &admin, "--add-recipient", &newcomer, "--repo", &setup.repos[1]];
    setup.work.run(&[&args[..], &["--repo", &setup.repos[0]]].concat()).fails_with(1, "configs");
    setup.configs_writable(1, true);
    // The other admin, on another machine.
    let colleague = Workspace::new();
    std::fs::copy(setup.work.path("other.key"), colleague.path("other.key")).unwrap();
    let other_key = colleague.path("other.key");
    let mut args = vec!["rekey", "--json", "--identity", other_key.to_str().unwrap(), "--fingerprint", &zero];
    args.extend(setup.repo_args());
    args.extend(["--add-recipient", &newcomer]);
    let theirs = run_fingerprint(&colleague.run(&args).ok());

    let mut list = vec!["snapshots", "--identity", &admin];
    list.extend(setup.repo_args());
    setup.work.run(&list).fails_with(1, "not the one the rekey this machine started was publishing");
    setup.work.run(&[&list[..], &["--fingerprint", &theirs]].concat()).ok();
    setup.work.run(&list).ok();
    // Nothing is pending any more: the colleague's next rekey is followed as any other.
    let mut args = vec!["rekey", "--identity", other_key.to_str().unwrap(), "--remove-recipient", &newcomer];
    args.extend(setup.repo_args());
    colleague.run(&args).ok();
    setup.work.run(&list).ok();
    let (run, target) = setup.restore_as("admin.key", "latest", "rekey_rerun_other_t");
    run.ok();
    assert_same_database(&setup.source, &target);
}

/// Another target's object of a snapshot, put in the place of this target's (its MAC holds
/// wherever it lies), names packs this target does not hold: `rekey --reencrypt` deletes
/// nothing old there, where it deleted that snapshot's own packs as old ones, and says so.
#[test]
fn reencrypt_deletes_nothing_where_a_snapshot_names_what_the_target_lacks() {
    let setup = Setup::new("rekey_swapped", 2);
    let (first, second) = (PathBuf::from(&setup.repos[0]), PathBuf::from(&setup.repos[1]));
    let ours = files_under(&first.join("snapshots")).pop().unwrap();
    std::fs::copy(second.join("snapshots").join(ours.file_name().unwrap()), &ours).unwrap();
    let packs = files_under(&first.join("data"));
    let run = setup.rekey("admin.key", &["--json", "--reencrypt"]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("nothing old deleted"), "{}", run.stdout);
    for pack in packs {
        assert!(pack.exists(), "{} was deleted", pack.display());
    }
}
