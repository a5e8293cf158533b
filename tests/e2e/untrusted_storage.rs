//! End-to-end: an attacker who can write to the storage, and no key at all (issue 18). Every
//! attack here worked before format 7: each test is one of them, and what stops it.

use std::path::Path;

use crate::common::*;

/// The victim: a database with a secret table, a repository, and the admin's workspace (which
/// ran `init`, so it holds the pin, the writer key and the admin key).
struct Victim {
    source: TestDb,
    work: Workspace,
    repo: String,
}

impl Victim {
    fn new(label: &str) -> Victim {
        let Ready { source, work, repo, .. } = Scenario::new(label).crm().init("repo").backup();
        Victim { source, work, repo }
    }

    fn recipient(&self) -> String {
        std::fs::read_to_string(self.work.path("admin.key"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("# public key: ").map(String::from))
            .unwrap()
    }

    fn file(&self, relative: &str) -> std::path::PathBuf {
        Path::new(&self.repo).join(relative)
    }

    fn only(&self, folder: &str) -> Vec<std::path::PathBuf> {
        files_under(&self.file(folder))
    }

    /// A copy of the repository beside it (`init --copy-from`, then `copy`): its path.
    fn copied(&self) -> String {
        let copy = self.work.path("copy").to_str().unwrap().to_string();
        self.work.run(&["init", "--repo", &copy, "--copy-from", &self.repo]).ok();
        self.work.run(&["copy", "--from", &self.repo, "--to", &copy]).ok();
        copy
    }

    /// Another repository this machine pins too (another team's, whose admin is the
    /// attacker): its path.
    fn others_repository(&self) -> String {
        let other = self.work.path("other").to_str().unwrap().to_string();
        let evil = self.work.keygen("evil.key");
        self.work.run(&["init", "--repo", &other, "--recipient", &evil]).ok();
        other
    }
}

/// The attacker's own repository, made with the victim's public recipient, holding a backup of
/// the attacker's database (whose materialized view would read a server file when refreshed).
fn forged_repository(victim: &Victim) -> (Workspace, String) {
    let evil = TestDb::create("evil");
    evil.sql(
        "CREATE SCHEMA crm; CREATE TABLE crm.contacts (id int PRIMARY KEY, email text); \
         INSERT INTO crm.contacts VALUES (1, 'attacker@example.test'); \
         CREATE MATERIALIZED VIEW crm.leak AS SELECT 'pwned'::text AS what",
    );
    let attacker = Workspace::new();
    let repo = attacker.path("repo").to_str().unwrap().to_string();
    attacker.run(&["init", "--repo", &repo, "--recipient", &victim.recipient()]).ok();
    attacker.backup(&evil, &repo);
    (attacker, repo)
}

#[test]
fn a_forged_repository_made_with_the_public_recipients_is_refused_everywhere() {
    let victim = Victim::new("forge");
    let fingerprint = victim.work.fingerprint(&victim.repo);
    let (_attacker, forged) = forged_repository(&victim);
    // The attacker replaces every object of the victim's repository with its own.
    std::fs::remove_dir_all(&victim.repo).unwrap();
    copy_dir(Path::new(&forged), Path::new(&victim.repo));

    // The admin who pinned the repository: refused, nothing restored.
    let target = TestDb::create("forge_target");
    victim.work.restore(&victim.repo, &target).fails_with(1, "it was forged or replaced in storage");
    assert!(target.is_empty());
    // A fresh machine with the fingerprint kept beside the identity: refused.
    let fresh = Workspace::new();
    std::fs::copy(victim.work.path("admin.key"), fresh.path("admin.key")).unwrap();
    let run = fresh.restore_with(&victim.repo, &target, &["--fingerprint", &fingerprint, "latest"]);
    run.fails_with(1, "is not the repository you trust");
    assert!(target.is_empty());
    // A fresh machine without it: refused, never trusted on first use.
    fresh.restore(&victim.repo, &target).fails_with(1, "not pinned on this machine");
    assert!(target.is_empty());
    // The backup host: refuses to write under the attacker's keys.
    victim
        .work
        .run(&["backup", "--db", &victim.source.url(), "--repo", &victim.repo])
        .fails_with(1, "forged or replaced in storage");
}

/// A backup host of two repositories (another team's, whose admin is the attacker): the other
/// copied over this one's folder by whoever can write the storage is refused there, though the
/// host pinned it too. Accepted, the host's backups of this database went to the other
/// repository's admins.
/// A repository made before pins (format 2-6) is pinned on first use from what the storage
/// shows. Given with a copy that shows another config under its id (forged), listed first, the
/// backup host pins neither: which one it would pin is only the order given.
#[test]
fn a_repository_made_before_pins_is_not_pinned_from_copies_that_disagree() {
    let fixture_dir = fixture("tests/fixtures/format5");
    let source = TestDb::create("legacy_pin_src");
    source.load_file(&fixture_dir.join("source.sql"));
    let work = Workspace::new();
    let (repo, forged) = (work.path("repo"), work.path("forged"));
    copy_dir(&fixture_dir.join("repo"), &repo);
    copy_dir(&fixture_dir.join("repo"), &forged);
    copy_dir(&fixture_dir.join("config"), &work.config_dir());
    let mut config = std::fs::read(forged.join("config")).unwrap();
    config.extend_from_slice(b"\n");
    std::fs::write(forged.join("config"), config).unwrap();
    let id = serde_json::from_slice::<serde_json::Value>(&std::fs::read(repo.join("config")).unwrap()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pin = work.config_dir().join("repos").join(&id).join("trust.json");
    let (repo, forged) = (repo.to_str().unwrap(), forged.to_str().unwrap());
    let url = source.url();
    let run = work.run(&["backup", "--no-alarm", "--db", &url, "--repo", forged, "--repo", repo]);
    run.fails_with(1, "disagree");
    assert!(!pin.exists(), "a copy was pinned");
    // Alone, the real one is pinned (with a warning naming its fingerprint) and backed up.
    let run = work.run(&["backup", "--no-alarm", "--db", &url, "--repo", repo]).ok();
    assert!(run.stderr.contains(&work.fingerprint(repo)), "{}", run.stderr);
    assert!(pin.exists());
}

#[test]
fn a_repository_the_host_also_trusts_is_refused_in_the_place_of_another() {
    let victim = Victim::new("swapped");
    let other = victim.others_repository();
    std::fs::remove_dir_all(&victim.repo).unwrap();
    copy_dir(Path::new(&other), Path::new(&victim.repo));
    victim
        .work
        .run(&["backup", "--db", &victim.source.url(), "--repo", &victim.repo])
        .fails_with(1, "forged or replaced in storage");
    let snapshots = victim.file("snapshots");
    assert!(!snapshots.exists() || files_under(&snapshots).is_empty(), "no backup was written there");
    // The other repository still works where it is.
    victim.work.run(&["backup", "--db", &victim.source.url(), "--repo", &other]).ok();
}

/// The same host and a place it never opened: a copy of the other trusted repository put there
/// is named, and nothing is written to it, until the admin says which repository is meant. A
/// true mirror of this repository is used once named.
#[test]
fn a_new_place_holding_one_of_several_trusted_repositories_is_named_before_it_is_used() {
    let victim = Victim::new("newplace");
    let other = victim.others_repository();
    let planted = victim.work.path("planted").to_str().unwrap().to_string();
    copy_dir(Path::new(&other), Path::new(&planted));
    let url = victim.source.url();
    // A backup to `repo` run from `folder` (this process's own when `None`).
    let backup_in = |folder: Option<&Path>, repo: &str, more: &[&str]| {
        let mut command = victim.work.command();
        if let Some(folder) = folder {
            command.current_dir(folder);
        }
        command.args(["backup", "--db", url.as_str(), "--repo", repo]).args(more);
        crate::common::Run::from(&command.output().expect("crmvault runs"))
    };
    let backup = |repo: &str, more: &[&str]| backup_in(None, repo, more);
    let run = backup(&planted, &[]).fails_with(1, "is new to this machine and holds repository");
    assert!(run.stderr.contains(&other), "names where it is known: {}", run.stderr);
    // Nor through another spelling of it: a file:// URL by way of `..`, a symbolic link.
    let url_spelling = format!("file://{}/../planted", victim.work.path("other").display());
    let link = victim.work.path("link");
    std::os::unix::fs::symlink(&planted, &link).unwrap();
    for spelling in [url_spelling.as_str(), link.to_str().unwrap()] {
        backup(spelling, &[]).fails_with(1, "is new to this machine and holds repository");
    }
    let snapshots = Path::new(&planted).join("snapshots");
    assert!(!snapshots.exists() || files_under(&snapshots).is_empty(), "no backup was written there");
    // The fingerprint of the repository meant refuses it too.
    let fingerprint = victim.work.fingerprint(&victim.repo);
    backup(&planted, &["--fingerprint", &fingerprint]).fails_with(1, "is not the repository you trust");
    // A mirror of this repository: named once, then known.
    let mirror = victim.work.path("mirror").to_str().unwrap().to_string();
    copy_dir(Path::new(&victim.repo), Path::new(&mirror));
    backup(&mirror, &[]).fails_with(1, "is new to this machine");
    backup(&mirror, &["--fingerprint", &fingerprint]).ok();
    backup(&mirror, &[]).ok();
    // A place is where a location leads, not how it is written: `other` given from the folder
    // above it is the known place, `other` from another folder is a new one (found by an
    // attack run: pins compared locations as written).
    let home = Path::new(&other).parent().unwrap();
    backup_in(Some(home), "other", &[]).ok();
    let other_fingerprint = victim.work.fingerprint(&other);
    let (first, second) = (victim.work.path("first"), victim.work.path("second"));
    for folder in [&first, &second] {
        std::fs::create_dir_all(folder).unwrap();
        copy_dir(Path::new(&other), &folder.join("copy"));
    }
    backup_in(Some(&first), "copy", &[]).fails_with(1, "is new to this machine");
    backup_in(Some(&first), "copy", &["--fingerprint", &other_fingerprint]).ok();
    backup_in(Some(&second), "copy", &[]).fails_with(1, "is new to this machine and holds repository");
}

#[test]
fn a_replaced_keys_object_or_an_added_recipient_is_refused_by_backup_and_restore() {
    let victim = Victim::new("rekeyed");
    let target = TestDb::create("rekeyed_target");
    let config_path = victim.file("config");
    let original = std::fs::read_to_string(&config_path).unwrap();

    // 1. One more recipient in the config: the next backup would encrypt to the attacker.
    let attacker_key = age::x25519::Identity::generate();
    let recipient = victim.recipient();
    let widened = original.replacen(
        &format!("\"{recipient}\""),
        &format!("\"{recipient}\", \"{}\"", attacker_key.to_public()),
        1,
    );
    assert_ne!(widened, original);
    std::fs::write(&config_path, &widened).unwrap();
    // While the pinned config's copy under configs/ is whole, the backup host uses it (and says
    // so): nothing it writes is readable with the attacker's key; verify names the edit.
    victim.source.sql("UPDATE crm.contacts SET email = email || '.new'");
    let before: std::collections::BTreeSet<_> = files_under(Path::new(&victim.repo)).into_iter().collect();
    let run = victim.work.run(&["backup", "--db", &victim.source.url(), "--repo", &victim.repo]).ok();
    assert!(run.stderr.contains("opened it at configs/"), "{}", run.stderr);
    let mut checked = 0;
    for file in files_under(Path::new(&victim.repo)).iter().filter(|f| !before.contains(*f)) {
        let bytes = std::fs::read(file).unwrap();
        let magic = b"age-encryption.org/v1";
        let at = bytes.windows(magic.len()).position(|w| w == magic).expect("an age ciphertext");
        let opened = crmvault::crypto::decrypt(std::slice::from_ref(&attacker_key), &bytes[at..]);
        assert!(opened.is_err(), "{} opens with the attacker's key", file.display());
        checked += 1;
    }
    assert!(checked >= 3);
    victim.work.run(&["verify", "--repo", &victim.repo]).fails_with(3, "missing, damaged or replaced");
    // With the copy gone too, nothing the host pinned is left: refused.
    std::fs::remove_dir_all(victim.file("configs")).unwrap();
    let packs_before = victim.only("data").len();
    victim
        .work
        .run(&["backup", "--db", &victim.source.url(), "--repo", &victim.repo])
        .fails_with(1, "recipients, keys or settings were changed in storage");
    assert_eq!(victim.only("data").len(), packs_before, "nothing was written");
    victim.work.restore(&victim.repo, &target).fails_with(1, "forged or replaced");

    // 2. A new keys object holding the attacker's secret, encrypted (as `age -r` would) to the
    //    public recipients, named by its hash, with the config pointing at it.
    let config: serde_json::Value = serde_json::from_str(&original).unwrap();
    let secret = |n: u8| hex::encode([n; 32]);
    let plaintext = serde_json::json!({
        "repository_id": config["id"], "repo_secret": secret(7), "auth_secret": secret(9),
    })
    .to_string();
    let recipients: Vec<age::x25519::Recipient> =
        [recipient.as_str(), config["writer_recipient"].as_str().unwrap()].iter().map(|r| r.parse().unwrap()).collect();
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient)).unwrap();
    let mut ciphertext = vec![];
    let mut writer = encryptor.wrap_output(&mut ciphertext).unwrap();
    std::io::Write::write_all(&mut writer, plaintext.as_bytes()).unwrap();
    writer.finish().unwrap();
    let name = blake3::hash(&ciphertext).to_hex().to_string();
    std::fs::write(victim.file(&format!("keys/{name}")), &ciphertext).unwrap();
    let mut replaced = config.clone();
    replaced["keys"] = serde_json::json!([format!("keys/{name}")]);
    std::fs::write(&config_path, serde_json::to_string_pretty(&replaced).unwrap() + "\n").unwrap();
    victim
        .work
        .run(&["backup", "--db", &victim.source.url(), "--repo", &victim.repo])
        .fails_with(1, "changed in storage");
    victim.work.restore(&victim.repo, &target).fails_with(1, "forged or replaced");

    // 3. The same secret written over the existing keys objects, config untouched: the config
    //    names them by their hashes, so they are refused as damaged, not believed.
    std::fs::write(&config_path, &original).unwrap();
    for keys in victim.only("keys").iter().filter(|k| !k.ends_with(&name)) {
        std::fs::write(keys, &ciphertext).unwrap();
    }
    victim.work.restore(&victim.repo, &target).fails_with(1, "do not match its name");
    assert!(target.is_empty());
    victim
        .work
        .run(&["backup", "--db", &victim.source.url(), "--repo", &victim.repo])
        .fails_with(1, "do not match its name");
}

#[test]
fn a_deleted_newest_snapshot_is_reported_by_verify_and_restore() {
    let victim = Victim::new("rollback");
    victim
        .source
        .sql("UPDATE crm.contacts SET email = 'changed@example.test' WHERE id IN (SELECT min(id) FROM crm.contacts)");
    let newest = victim.work.backup(&victim.source, &victim.repo)["snapshot_id"].as_str().unwrap().to_string();
    std::fs::remove_file(victim.file(&format!("snapshots/{newest}"))).unwrap();

    // The machine that wrote it knows it is gone.
    let verify = victim.work.run(&["verify", "--repo", &victim.repo]);
    assert_eq!(verify.code, 3, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains(&newest) && verify.stdout.contains("deleted without being forgotten"),
        "{}",
        verify.stdout
    );
    let target = TestDb::create("rollback_target");
    let report = victim.work.restore_with(&victim.repo, &target, &["--json"]).ok().json();
    let warning = report["warnings"][0].as_str().unwrap();
    assert!(warning.contains(&newest) && warning.contains("older than the newest"), "{report}");

    // The next backup names the lost snapshot as its predecessor, so even a machine that never
    // saw it (no pin, no key) finds the gap.
    // It is stored, and exits 3: a deletion behind the host's back is a problem to look at.
    let next = victim.work.run(&["backup", "--json", "--db", &victim.source.url(), "--repo", &victim.repo]);
    let next = next.fails_with(3, "deleted without being forgotten");
    assert_eq!(next.json()["parent"].as_str(), Some(newest.as_str()), "{}", next.stdout);
    assert_eq!(next.json()["deleted_snapshot"].as_str(), Some(newest.as_str()), "{}", next.stdout);
    assert!(next.stderr.contains("so `verify` reports the gap"), "{}", next.stderr);
    // Said once: the backup after it knows the new snapshot as the newest, which is held.
    victim.work.backup(&victim.source, &victim.repo);
    let stranger = Workspace::new();
    let verify = stranger.run(&["verify", "--repo", &victim.repo]);
    assert_eq!(verify.code, 3, "{}", verify.stdout);
    assert!(verify.stdout.contains(&newest), "{}", verify.stdout);
}

#[test]
fn junk_and_a_foreign_future_snapshot_neither_stop_backups_nor_win_latest() {
    let victim = Victim::new("junk");
    let real = victim.work.run(&["snapshots", "--json", "--repo", &victim.repo]).ok().json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A copy of the real snapshot whose (unauthenticated) header names a pack "x".
    let real_object = std::fs::read(victim.file(&format!("snapshots/{real}"))).unwrap();
    let mut lines: Vec<Vec<u8>> = real_object.splitn(5, |&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let header = String::from_utf8(lines[1].clone()).unwrap().replacen(
        "\"packs\":[",
        "\"packs\":[{\"id\":\"x\",\"size\":1},",
        1,
    );
    lines[2] = blake3::hash(header.as_bytes()).to_hex().as_bytes().to_vec();
    lines[1] = header.into_bytes();
    lines[4].push(b'!');
    let name = blake3::hash(&lines[4]).to_hex().to_string();
    std::fs::write(victim.file(&format!("snapshots/{name}")), lines.join(&b'\n')).unwrap();
    assert_eq!(victim.work.run(&["verify", "--repo", &victim.repo]).fails_with(3, "not a BLAKE3 hash").code, 3);
    // Junk named by its own hash under index/ and snapshots/.
    for folder in ["index", "snapshots"] {
        let junk = format!("junk in {folder}").into_bytes();
        std::fs::write(victim.file(&format!("{folder}/{}", blake3::hash(&junk).to_hex())), &junk).unwrap();
    }
    // A snapshot of the attacker's repository, made later, so newer by its header.
    let (_attacker, forged) = forged_repository(&victim);
    for file in files_under(&Path::new(&forged).join("snapshots")) {
        std::fs::copy(&file, victim.file(&format!("snapshots/{}", file.file_name().unwrap().to_str().unwrap())))
            .unwrap();
    }
    let backup = victim.work.run(&["backup", "--json", "--db", &victim.source.url(), "--repo", &victim.repo]).ok();
    assert!(backup.stderr.contains("skipped"), "{}", backup.stderr);
    assert_eq!(backup.json()["parent"].as_str(), Some(real.as_str()), "the forgery is no predecessor");
    let newest = backup.json()["snapshot_id"].as_str().unwrap().to_string();

    // Restore takes the newest snapshot that proves itself, and names what it passed over.
    let target = TestDb::create("junk_target");
    let report = victim.work.restore_with(&victim.repo, &target, &["--json"]).ok().json();
    assert_eq!(report["snapshot_id"].as_str(), Some(newest.as_str()));
    assert_same_database(&victim.source, &target);
    // verify names the forgery and the junk index.
    let verify = victim.work.run(&["verify", "--repo", &victim.repo, "--identity", &victim.work.admin_key()]);
    assert_eq!(verify.code, 3);
    assert!(verify.stdout.contains("written under another config"), "{}", verify.stdout);
    assert!(verify.stdout.contains("no snapshot lists it"), "{}", verify.stdout);

    // A name crmvault never writes (a newline, bytes that are not UTF-8) ends the store's
    // listing there: said in one line that names it, never read as fewer objects. A backup
    // that cannot list snapshots goes on from its pin; one that cannot list packs stops.
    for (name, code) in [(&b"snapshots/ab\ncd"[..], 0), (b"data/x\xff", 1)] {
        let path = Path::new(&victim.repo).join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
        std::fs::write(&path, b"junk").unwrap();
        let run = victim.work.run(&["backup", "--db", &victim.source.url(), "--repo", &victim.repo]);
        assert_eq!(run.code, code, "{}", run.stderr);
        assert!(run.stderr.contains("holds an object whose name crmvault cannot read"), "{}", run.stderr);
        assert!(!run.stderr.contains("ab\ncd"), "a name's newline is escaped: {}", run.stderr);
        std::fs::remove_file(&path).unwrap();
    }
    victim.work.run(&["backup", "--db", &victim.source.url(), "--repo", &victim.repo]).ok();
}

/// The pin of the repository in `work`'s config folder, as JSON.
fn pin_of(work: &Workspace) -> serde_json::Value {
    let path = files_under(&work.config_dir()).into_iter().find(|p| p.ends_with("trust.json")).unwrap();
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_new_copy_adds_its_place_to_the_pin_and_keeps_the_mark() {
    // `init --copy-from` on the host that pins the repository wrote a new pin naming the copy
    // alone: the mark of the newest snapshot (what tells a deleted snapshot from none) was
    // reset and the first place forgotten.
    let victim = Victim::new("copypin");
    victim.work.backup(&victim.source, &victim.repo);
    let before = pin_of(&victim.work);
    assert!(before["newest"].is_object(), "{before}");
    let copy = victim.work.path("copy").to_str().unwrap().to_string();
    victim.work.run(&["init", "--copy-from", &victim.repo, "--repo", &copy]).ok();
    let after = pin_of(&victim.work);
    assert_eq!(after["newest"], before["newest"], "{after}");
    let locations = after["locations"].as_array().unwrap();
    assert_eq!(locations.len(), before["locations"].as_array().unwrap().len() + 1, "{after}");
    assert!(locations.iter().any(|l| l.as_str().unwrap().ends_with("/copy")), "{after}");
    // Before a `copy` fills it, verify says what the copy lacks without calling it a deletion
    // only; after, it verifies.
    let run = victim.work.run(&["verify", "--repo", &copy]).fails_with(3, "holds no snapshot at all");
    assert!(run.stdout.contains("unless this is a copy `init --copy-from` made"), "{}", run.stdout);
    victim.work.run(&["copy", "--from", &victim.repo, "--to", &copy]).ok();
    victim.work.run(&["verify", "--repo", &copy]).ok();
}

#[test]
fn a_copy_made_on_a_machine_that_pins_nothing_does_not_pin_what_the_storage_claims() {
    // Copying needs no key, so a fresh machine may make a copy; it checked the source against
    // nothing, and pinning the fingerprint the storage claims would let an admin command there
    // trust a forged repository on first use.
    let victim = Victim::new("copytofu");
    let stranger = Workspace::new();
    let copy = stranger.path("copy").to_str().unwrap().to_string();
    let init = stranger.run(&["init", "--copy-from", &victim.repo, "--repo", &copy]).ok();
    // Nor does it tell the admin to keep that fingerprint as theirs.
    assert!(init.stdout.contains("NOT checked") && !init.stdout.contains("keep it beside"), "{}", init.stdout);
    stranger.run(&["copy", "--from", &victim.repo, "--to", &copy]).ok();
    let config = stranger.config_dir();
    let pins: Vec<_> = if config.exists() {
        files_under(&config).into_iter().filter(|p| p.ends_with("trust.json")).collect()
    } else {
        Vec::new()
    };
    assert!(pins.is_empty(), "{pins:?}");
    let target = TestDb::create("copytofu_target");
    let url = target.url();
    let admin_key = victim.work.admin_key();
    let run = stranger.run(&["restore", "--repo", &copy, "--identity", &admin_key, "--db", &url]);
    run.fails_with(1, "--fingerprint");
    assert!(target.is_empty());
    // With the fingerprint the admins keep, it restores.
    let fingerprint = victim.work.fingerprint(&victim.repo);
    stranger
        .run(&["restore", "--repo", &copy, "--identity", &admin_key, "--db", &url, "--fingerprint", &fingerprint])
        .ok();
    assert_same_database(&victim.source, &target);
}

#[test]
fn a_source_header_that_misstates_a_packs_size_is_blamed_not_the_good_copy_at_the_destination() {
    // Whoever writes the source's storage rewrites a snapshot's header (no key checks it in a
    // copy) to give a pack the destination already holds one byte more: copy called the
    // destination's good pack corrupt and said to remove it, which would break the snapshot
    // already copied there. That snapshot is not copied; the copy goes on to the next one
    // (it ended at the first such snapshot) and exits 3.
    let victim = Victim::new("copyblame");
    let copy = victim.work.path("copy").to_str().unwrap().to_string();
    victim.work.run(&["init", "--copy-from", &victim.repo, "--repo", &copy]).ok();
    victim.work.run(&["copy", "--from", &victim.repo, "--to", &copy]).ok();
    let rewritten = victim.work.backup(&victim.source, &victim.repo)["snapshot_id"].as_str().unwrap().to_string();
    victim.source.sql("INSERT INTO crm.companies (name, country) VALUES ('after the rewritten one', 'NL')");
    let newest = victim.work.backup(&victim.source, &victim.repo)["snapshot_id"].as_str().unwrap().to_string();
    let object = victim.file(&format!("snapshots/{rewritten}"));
    let bytes = std::fs::read(&object).unwrap();
    std::fs::write(
        &object,
        with_header(&bytes, |header| {
            let size = header["packs"][0]["size"].as_u64().unwrap();
            header["packs"][0]["size"] = (size + 1).into();
        }),
    )
    .unwrap();
    let run = victim.work.run(&["copy", "--from", &victim.repo, "--to", &copy]);
    let run = run.fails_with(3, "header is wrong");
    assert!(run.stdout.contains(&format!("not copied: snapshot {rewritten}")), "{}", run.stdout);
    assert!(!run.stderr.contains("remove it") && !run.stdout.contains("remove it"), "{}", run.stderr);
    let listed = victim.work.run(&["snapshots", "--repo", &copy, "--json"]).ok().json();
    let ids: Vec<&str> = listed["snapshots"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&newest.as_str()) && !ids.contains(&rewritten.as_str()), "{ids:?}");
    // The destination's snapshots restore: the first, and the newest copied past the failure.
    let target = TestDb::create("copyblame_target");
    victim.work.restore_with(&copy, &target, &[&newest]).ok();
    assert_same_database(&victim.source, &target);
}

#[test]
fn a_backup_reads_only_snapshots_its_pin_has_not_settled_yet_still_follows_and_names_the_new_ones() {
    let victim = Victim::new("settled");
    // A second backup host with the writer key, as the first one was after the first backup.
    let other = Workspace::new();
    copy_dir(&victim.work.config_dir(), &other.config_dir());
    let second = victim.work.backup(&victim.source, &victim.repo);
    let id = |report: &serde_json::Value| report["snapshot_id"].as_str().unwrap().to_string();
    let settled = pin_of(&victim.work)["settled"].as_array().unwrap().len();
    assert_eq!(settled, 2, "both snapshots are settled: {}", pin_of(&victim.work));

    // The other host has not seen the second snapshot, and finds it.
    victim
        .source
        .sql("UPDATE crm.contacts SET email = 'third@example.test' WHERE id IN (SELECT min(id) FROM crm.contacts)");
    let third = other.backup(&victim.source, &victim.repo);
    assert_eq!((third["parent"].as_str(), third["sequence"].as_u64()), (Some(id(&second).as_str()), Some(3)));
    // The first host has settled the second, not the third, which it reads and follows.
    let fourth = victim.work.backup(&victim.source, &victim.repo);
    assert_eq!((fourth["parent"].as_str(), fourth["sequence"].as_u64()), (Some(id(&third).as_str()), Some(4)));

    // A foreign snapshot dated later appears, and the newest one (the pin's mark) is damaged:
    // both are named, and the chain goes on after the mark.
    let (_attacker, forged) = forged_repository(&victim);
    for file in files_under(&Path::new(&forged).join("snapshots")) {
        std::fs::copy(&file, victim.file(&format!("snapshots/{}", file.file_name().unwrap().to_str().unwrap())))
            .unwrap();
    }
    let newest = victim.file(&format!("snapshots/{}", id(&fourth)));
    let mut bytes = std::fs::read(&newest).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&newest, bytes).unwrap();
    // The mark damaged is this host's newest snapshot damaged in storage: stored, and exit 3.
    let run = victim.work.run(&["backup", "--json", "--db", &victim.source.url(), "--repo", &victim.repo]);
    let run = run.fails_with(3, "replaced or damaged in storage");
    assert_eq!(run.json()["deleted_snapshot"].as_str(), Some(id(&fourth).as_str()), "{}", run.stdout);
    assert!(run.stderr.contains("written under another config"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("snapshot {} passed over", id(&fourth))), "{}", run.stderr);
    assert_eq!(run.json()["parent"].as_str(), Some(id(&fourth).as_str()), "the mark, damaged or not");
    assert_eq!(run.json()["sequence"].as_u64(), Some(5));
}

#[test]
fn one_damaged_keys_object_leaves_the_repository_readable() {
    let victim = Victim::new("keys_copy");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(victim.file("config")).unwrap()).unwrap();
    let keys: Vec<std::path::PathBuf> =
        config["keys"].as_array().unwrap().iter().map(|k| victim.file(k.as_str().unwrap())).collect();
    assert_eq!(keys.len(), 2, "two copies of the keys object");
    let mut bytes = std::fs::read(&keys[0]).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 1;
    std::fs::write(&keys[0], bytes).unwrap();
    let target = TestDb::create("keys_copy_target");
    victim.work.restore(&victim.repo, &target).ok();
    assert_same_database(&victim.source, &target);
    // The backup reads the other copy, and names the damaged one: the repository still
    // unlocks on its own (the other copy is whole), so the night is not failed for it.
    let url = victim.source.url();
    let backup = victim.work.run(&["backup", "--no-alarm", "--db", &url, "--repo", &victim.repo]).ok();
    assert!(backup.stderr.contains(keys[0].file_name().unwrap().to_str().unwrap()), "{}", backup.stderr);
    let verify = victim.work.run(&["verify", "--repo", &victim.repo]);
    assert_eq!(verify.code, 3);
    assert!(verify.stdout.contains(keys[0].file_name().unwrap().to_str().unwrap()), "{}", verify.stdout);
}

/// Every pack of the victim's repository, largest first.
fn packs_by_size(victim: &Victim) -> Vec<std::path::PathBuf> {
    let mut packs = victim.only("data");
    packs.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    packs
}

#[test]
fn a_pack_whose_header_storage_padded_with_stanzas_fails_the_restore_at_once_not_after_hours() {
    // age parses a header in time that grows with its square: 200 000 junk stanzas (no key
    // needed) stalled a restore for over 15 minutes, deaf to SIGTERM. The restore now refuses a
    // header with more stanzas than crmvault writes before age reads it.
    let victim = Victim::new("padded");
    let pack = packs_by_size(&victim).remove(0);
    let bytes = std::fs::read(&pack).unwrap();
    let first_line = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let mut padded = bytes[..first_line].to_vec();
    for n in 0..200 {
        padded.extend_from_slice(format!("-> junk{n} a\nQUJD\n").as_bytes());
    }
    padded.extend_from_slice(&bytes[first_line..]);
    // The size the index names (a larger object is refused for that before its header is read).
    padded.truncate(bytes.len());
    std::fs::write(&pack, padded).unwrap();
    let target = TestDb::create("padded_target");
    let run = victim.work.restore(&victim.repo, &target);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("stanzas, more than crmvault writes"), "{}", run.stderr);
    assert!(target.is_empty(), "a refused restore leaves the database as it was");
}

#[test]
fn a_pack_replaced_by_a_strangers_age_file_is_reported_as_replaced_not_as_a_wrong_key() {
    // The storage writer puts an age file of the same size, to a key of their own, in the place
    // of each of the two largest packs (one read whole, one in ranges when it is larger than
    // 512 KiB). The admin's identity opened the snapshot: the key is not what is wrong.
    let victim = Victim::new("replaced");
    let stranger = crmvault::crypto::generate_identity();
    for pack in packs_by_size(&victim).into_iter().take(2) {
        let original = std::fs::read(&pack).unwrap();
        let size = original.len();
        // age adds a random "grease" stanza to some headers: try until one has the length of
        // the header the plaintext length was chosen for.
        let forged = (0..1000)
            .find_map(|_| {
                let header_and_nonce = crmvault::crypto::encrypt(&[stranger.to_public()], &[]).len() - 16;
                let body = size.checked_sub(header_and_nonce)?;
                let n = body.checked_sub(16 * body.div_ceil(65_536 + 16))?;
                let forged = crmvault::crypto::encrypt(&[stranger.to_public()], &vec![0; n]);
                (forged.len() == size).then_some(forged)
            })
            .expect("an age file of the pack's size");
        std::fs::write(&pack, forged).unwrap();
        let target = TestDb::create("replaced_target");
        let run = victim.work.restore(&victim.repo, &target);
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert!(!run.stderr.contains("not a recipient"), "{}", run.stderr);
        assert!(
            run.stderr.contains("do not match its name") || run.stderr.contains("it was replaced in storage"),
            "{}",
            run.stderr
        );
        assert!(target.is_empty());
        std::fs::write(&pack, original).unwrap();
    }
}

#[test]
fn a_pack_that_failed_verify_is_not_reused_by_the_next_backup() {
    let victim = Victim::new("packflip");
    let pack = victim.only("data").into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    assert_eq!(victim.work.run(&["verify", "--repo", &victim.repo]).code, 3);
    // The next backup stores the damaged pack's chunks again, so its snapshot restores.
    let report = victim.work.backup(&victim.source, &victim.repo);
    assert!(report["new_chunks"].as_u64().unwrap() > 0, "{report}");
    let target = TestDb::create("packflip_target");
    victim.work.restore(&victim.repo, &target).ok();
    assert_same_database(&victim.source, &target);
}

#[test]
fn a_pack_moved_to_another_folder_is_not_reused_by_the_next_backup() {
    // A storage writer moves a pack out of the folder its name puts it in: a restore looks
    // for it where its name says and does not find it. The next backup must store its chunks
    // again, as for a deleted pack, not reuse it where a restore will never look.
    let victim = Victim::new("packmoved");
    let pack = packs_by_size(&victim).remove(0);
    let name = pack.file_name().unwrap().to_owned();
    let elsewhere = victim.file("data").join("zz");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::rename(&pack, elsewhere.join(&name)).unwrap();
    let report = victim.work.backup(&victim.source, &victim.repo);
    assert!(report["new_chunks"].as_u64().unwrap() > 0, "the moved pack's chunks are stored again: {report}");
    let target = TestDb::create("packmoved_target");
    victim.work.restore(&victim.repo, &target).ok();
    assert_same_database(&victim.source, &target);
}

#[test]
fn a_fresh_machine_needs_the_fingerprint_once_then_remembers_it() {
    let victim = Victim::new("fresh");
    let fingerprint = victim.work.fingerprint(&victim.repo);
    let init_output = std::fs::read_to_string(victim.work.path("config").join("repos")).is_err();
    assert!(init_output, "the pins live in a folder per repository");
    let fresh = Workspace::new();
    std::fs::copy(victim.work.path("admin.key"), fresh.path("admin.key")).unwrap();
    let target = TestDb::create("fresh_target");
    fresh.restore(&victim.repo, &target).fails_with(1, "give --fingerprint");
    let wrong = "0000-0000-0000-0000-0000-0000-0000-0000";
    fresh.restore_with(&victim.repo, &target, &["--fingerprint", wrong, "latest"]).fails_with(1, "not the repository");
    assert!(target.is_empty());
    // Given as an admin types it (no dashes, upper case) through the environment.
    let typed = fingerprint.replace('-', "").to_uppercase();
    let run = Run::from(
        &fresh
            .command()
            .env("CRMVAULT_FINGERPRINT", &typed)
            .args(["restore", "--repo", &victim.repo, "--identity", &fresh.admin_key(), "--db", &target.url()])
            .output()
            .unwrap(),
    )
    .ok();
    assert!(run.stderr.contains("pinned repository"), "{}", run.stderr);
    assert_same_database(&victim.source, &target);
    // Remembered: the next admin command needs no flag.
    fresh.run(&["verify", "--repo", &victim.repo, "--identity", &fresh.admin_key(), "--read-data"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_writer_key_reads_no_digest_and_a_re_maced_row_count_fails_verify() {
    use crmvault::repo::{Repository, SealedManifest};
    use crmvault::target::{OpenMode, Target};
    let victim = Victim::new("digest");
    let repository = Repository::open(Target::open(&victim.repo, OpenMode::Existing).unwrap()).await.unwrap();
    let writer = repository.unlock_as_writer(&victim.work.config_dir()).await.unwrap();
    let admin = repository.unlock_as_admin(Path::new(&victim.work.admin_key())).await.unwrap();
    let id = repository.resolve_snapshot("latest").await.unwrap();
    let sealed = repository.read_snapshot(&id).await.unwrap();

    // The backup host's files open the manifest (table names, row counts) but no digest: the
    // guess oracle of a small table is gone.
    let as_writer = sealed.open(&writer).unwrap();
    assert!(as_writer.tables.iter().any(|t| t.rows > 0));
    assert!(as_writer.streams().all(|s| s.digest.is_empty()), "the writer reads a digest");
    let mut as_admin = sealed.open(&admin).unwrap();
    assert!(as_admin.streams().all(|s| s.digest.len() == 64), "an admin reads every digest");

    // Whoever holds the keys re-MACs a manifest with a wrong row count: verify --read-data
    // proves what restore would, so it finds it.
    let table = as_admin.tables.iter().position(|t| t.rows > 0).unwrap();
    as_admin.tables[table].rows += 1;
    let (name, rows) =
        (format!("{}.{}", as_admin.tables[table].schema, as_admin.tables[table].name), as_admin.tables[table].rows);
    let forged = SealedManifest::seal(&mut as_admin, &repository);
    let object = forged.snapshot_object(&sealed.header, &admin);
    repository.target.put_new(&format!("snapshots/{}", forged.id), object).await.unwrap();
    let work = &victim.work;
    work.run(&["verify", "--repo", &victim.repo, "--identity", &work.admin_key()]).ok();
    let verify = work.run(&["verify", "--repo", &victim.repo, "--identity", &work.admin_key(), "--read-data"]);
    assert_eq!(verify.code, 3, "{}", verify.stdout);
    assert!(verify.stdout.contains(&format!("table {name}")), "{}", verify.stdout);
    assert!(verify.stdout.contains(&format!("its manifest records {rows}")), "{}", verify.stdout);
}

/// The backup host seals an old snapshot's manifest again with its writer key, first and last
/// names exchanged in the contacts' column list, and carries the admin-only part (the digests
/// it cannot make) as it is: the rows' bytes are the same, so their digests held, and a restore
/// loaded every contact with its names exchanged. The admin-only part records the layout the
/// backup wrote: restore and verify refuse the snapshot, and the database is left untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_the_backup_host_sealed_again_with_columns_exchanged_is_refused() {
    use crmvault::repo::Repository;
    use crmvault::target::{OpenMode, Target};
    let victim = Victim::new("exchanged");
    let repository = Repository::open(Target::open(&victim.repo, OpenMode::Existing).unwrap()).await.unwrap();
    let writer = repository.unlock_as_writer(&victim.work.config_dir()).await.unwrap();
    let id = repository.resolve_snapshot("latest").await.unwrap();
    let object = std::fs::read(victim.file(&format!("snapshots/{id}"))).unwrap();
    let mut lines = object.splitn(5, |&b| b == b'\n');
    let (version_line, header_line, hash_line) = (lines.next().unwrap(), lines.next().unwrap(), lines.next().unwrap());
    let (_, ciphertext) = (lines.next().unwrap(), lines.next().unwrap());
    let compressed = writer.decrypt("manifest", ciphertext).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&zstd::decode_all(&compressed[..]).unwrap()).unwrap();
    assert!(manifest["admin_only"].is_string(), "the writer carries the admins' part unread");
    let contacts = manifest["tables"].as_array_mut().unwrap().iter_mut().find(|t| t["name"] == "contacts").unwrap();
    let columns = contacts["columns"].as_array_mut().unwrap();
    let first = columns.iter().position(|c| c == "first_name").unwrap();
    let last = columns.iter().position(|c| c == "last_name").unwrap();
    columns.swap(first, last);
    let compressed = zstd::encode_all(&serde_json::to_vec(&manifest).unwrap()[..], 3).unwrap();
    let ciphertext = crmvault::crypto::encrypt(&repository.metadata_recipients(), &compressed);
    let mac = writer.snapshot_mac_key().mac(&[version_line, header_line, &compressed]);
    let mut forged = [version_line, header_line, hash_line, mac.as_bytes()].join(&b'\n');
    forged.push(b'\n');
    forged.extend_from_slice(&ciphertext);
    let forged_id = blake3::hash(&ciphertext).to_hex().to_string();
    std::fs::write(victim.file(&format!("snapshots/{forged_id}")), forged).unwrap();

    let work = &victim.work;
    let target = TestDb::create("exchanged_target");
    let run = work.restore_with(&victim.repo, &target, &[&forged_id]);
    run.fails_with(1, "sealed again since");
    assert!(target.is_empty());
    let verify = work.run(&["verify", "--repo", &victim.repo, "--identity", &work.admin_key()]);
    assert_eq!(verify.code, 3, "{}", verify.stdout);
    assert!(verify.stdout.contains(&forged_id[..12]) && verify.stdout.contains("sealed again"), "{}", verify.stdout);
    // The snapshot as the backup wrote it restores.
    let restored = TestDb::create("exchanged_restored");
    work.restore_with(&victim.repo, &restored, &[id.to_string().as_str()]).ok();
    assert_same_database(&victim.source, &restored);
}

#[test]
fn a_repository_id_that_is_not_hex_is_refused_before_it_names_a_folder_here() {
    // The id names the writer key's and the pin's folders on this machine: a storage writer
    // must not steer them elsewhere.
    let victim = Victim::new("badid");
    let config_path = victim.file("config");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let id = serde_json::from_str::<serde_json::Value>(&config).unwrap()["id"].as_str().unwrap().to_string();
    std::fs::write(&config_path, config.replace(&id, "../../../../tmp/escape00000000000")).unwrap();
    for folder in ["configs", "keys"] {
        std::fs::remove_dir_all(victim.file(folder)).unwrap();
    }
    victim.work.run(&["snapshots", "--repo", &victim.repo]).fails_with(1, "holds an invalid repository id");
}

#[test]
fn a_linked_folder_or_a_forged_format_version_in_storage_changes_nothing() {
    let victim = Victim::new("links");
    // A folder of the repository replaced by a link to a place the backup host may write.
    let outside = victim.work.path("outside");
    std::fs::rename(victim.file("index"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, victim.file("index")).unwrap();
    let before = files_under(&outside).len();
    victim.source.sql("UPDATE crm.contacts SET email = email || '.linked'");
    let run = victim.work.run(&["backup", "--db", &victim.source.url(), "--repo", &victim.repo]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("symbolic link inside the repository"), "{}", run.stderr);
    assert_eq!(files_under(&outside).len(), before, "a write went through the link");
    std::fs::remove_file(victim.file("index")).unwrap();
    std::fs::rename(&outside, victim.file("index")).unwrap();

    // `config` claiming a future format: not an upgrade to make, an edit; its copy decides.
    let config = std::fs::read_to_string(victim.file("config")).unwrap();
    let current = format!("\"version\": {}", crmvault::repo::FORMAT_VERSION);
    std::fs::write(victim.file("config"), config.replace(&current, "\"version\": 99")).unwrap();
    let run = victim.work.run(&["backup", "--db", &victim.source.url(), "--repo", &format!("{}/", victim.repo)]).ok();
    assert!(run.stderr.contains("using its whole copy configs/"), "{}", run.stderr);
    let target = TestDb::create("links_target");
    victim.work.restore(&victim.repo, &target).ok();
    assert_same_database(&victim.source, &target);
    // `config` deleted: said as such, not as a repository to `init`.
    std::fs::remove_file(victim.file("config")).unwrap();
    victim.source.sql("UPDATE crm.contacts SET email = email || '.again'");
    let run = victim.work.run(&["backup", "--db", &victim.source.url(), "--repo", &victim.repo]).ok();
    assert!(run.stderr.contains("its `config` is missing; using its whole copy configs/"), "{}", run.stderr);
    assert!(!run.stderr.contains("crmvault init"), "{}", run.stderr);
    let target = TestDb::create("links_target_again");
    victim.work.restore(&victim.repo, &target).ok();
    assert_same_database(&victim.source, &target);
    victim.work.run(&["verify", "--repo", &victim.repo]).fails_with(3, "missing, damaged or replaced");
}

#[test]
fn latest_is_chosen_by_the_labels_this_machine_proved_and_a_remembered_snapshot_that_no_longer_opens_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let Ready { source, work, repo, report } = Scenario::new("remembered").crm().init("repo").backup();
    let id = |report: &serde_json::Value| report["snapshot_id"].as_str().unwrap().to_string();
    let first = id(&report);
    source.sql(
        "UPDATE crm.contacts SET email = 'remembered@example.test' WHERE id IN (SELECT min(id) FROM crm.contacts)",
    );
    let second = id(&work.backup(&source, &repo));
    // A restore remembers both snapshots' labels beside the pin, readable by this user only.
    let target = TestDb::create("remembered_before");
    assert_eq!(id(&work.restore_with(&repo, &target, &["--json"]).ok().json()), second);
    let labels = files_under(&work.config_dir()).into_iter().find(|p| p.ends_with("labels.json")).unwrap();
    assert_eq!(std::fs::metadata(&labels).unwrap().permissions().mode() & 0o777, 0o600);
    let remembered: serde_json::Value = serde_json::from_slice(&std::fs::read(&labels).unwrap()).unwrap();
    for snapshot in [&first, &second] {
        assert!(remembered["snapshots"][snapshot]["time"].is_string(), "{remembered}");
    }
    let damage = |snapshot: &str| {
        let path = Path::new(&repo).join(format!("snapshots/{snapshot}"));
        let original = std::fs::read(&path).unwrap();
        let mut bytes = original.clone();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, bytes).unwrap();
        (path, original)
    };

    // The older one damaged in storage: `latest` knows it is older without reading it, so the
    // newest is restored with nothing to say (finding damage is verify's, which reads it).
    let (path, original) = damage(&first);
    let target = TestDb::create("remembered_older_damaged");
    let run = work.restore_with(&repo, &target, &["--json"]).ok();
    assert_eq!(id(&run.json()), second);
    assert_ne!(run.json()["skipped_newer"], true, "{}", run.stdout);
    assert!(!run.stderr.contains("passed over"), "{}", run.stderr);
    assert_same_database(&source, &target);
    let verify = work.run(&["verify", "--repo", &repo, "--identity", &work.admin_key()]);
    assert_eq!(verify.code, 3, "{}", verify.stdout);
    assert!(verify.stdout.contains(&first[..12]), "{}", verify.stdout);
    std::fs::write(&path, original).unwrap();

    // The newest damaged: what it remembers is only an order. The snapshot is opened as ever,
    // refused, named as one that does not open (not as deleted), and the older one restored.
    let (path, original) = damage(&second);
    let target = TestDb::create("remembered_newest_damaged");
    let run = work.restore_with(&repo, &target, &["--json"]).ok();
    assert_eq!(id(&run.json()), first);
    assert_eq!(run.json()["skipped_newer"], true, "{}", run.stdout);
    assert!(run.stderr.contains(&format!("snapshot {second} passed over")), "{}", run.stderr);
    assert!(run.stderr.contains("does not open"), "{}", run.stderr);
    assert!(!run.stderr.contains("deleted from storage"), "{}", run.stderr);
    // `ls latest` lists the older one and names it too; a drill of `latest` fails on it.
    let ls = work.run(&["ls", "--json", "--repo", &repo, "--identity", &work.admin_key(), "latest"]).ok();
    assert_eq!(id(&ls.json()), first);
    assert!(ls.json()["warnings"].to_string().contains(&format!("snapshot {second} passed over")), "{}", ls.stdout);
    let scratch = TestDb::unmade("remembered_scratch");
    let drill = work.run(&["drill", "--repo", &repo, "--identity", &work.admin_key(), "--scratch-db", &scratch.url()]);
    assert_eq!(drill.code, 3, "{}\n{}", drill.stdout, drill.stderr);
    std::fs::write(&path, original).unwrap();

    // A file that is not this repository's labels (damaged, or another's) is not believed.
    std::fs::write(&labels, b"{\"fingerprint\": \"0000\"").unwrap();
    let target = TestDb::create("remembered_damaged_file");
    assert_eq!(id(&work.restore_with(&repo, &target, &["--json"]).ok().json()), second);
    let rewritten: serde_json::Value = serde_json::from_slice(&std::fs::read(&labels).unwrap()).unwrap();
    assert_eq!(rewritten["snapshots"].as_object().unwrap().len(), 2, "{rewritten}");
}

/// Whoever can write one copy's storage, with no key, rewrites its `config` (an attacker's
/// recipient added). Before, every command given that copy with a good one refused both ("the
/// copies disagree"): a keyless storage writer of one target stopped the nightly backups to
/// every target. Now the copy is opened at the generation the host pinned while its
/// `configs/` copy is whole, and left out, named, once that is gone too: the backup goes on to
/// the other target (exit 3), as restore and verify do.
#[test]
fn a_config_replaced_in_one_copys_storage_stops_no_backup_restore_or_verify_of_the_others() {
    let victim = Victim::new("config_one_copy");
    let copy = victim.copied();
    let url = victim.source.url();
    let backup = |first: &str, second: &str| {
        victim.work.run(&["backup", "--json", "--no-alarm", "--db", &url, "--repo", first, "--repo", second])
    };
    let attacker = age::x25519::Identity::generate();
    let config = Path::new(&copy).join("config");
    let original = std::fs::read_to_string(&config).unwrap();
    let recipient = victim.recipient();
    let widened =
        original.replacen(&format!("\"{recipient}\""), &format!("\"{recipient}\", \"{}\"", attacker.to_public()), 1);
    assert_ne!(widened, original);
    std::fs::write(&config, &widened).unwrap();
    let opens_for_attacker = |file: &Path| {
        let bytes = std::fs::read(file).unwrap();
        let magic = b"age-encryption.org/v1";
        let at = bytes.windows(magic.len()).position(|w| w == magic).expect("an age ciphertext");
        crmvault::crypto::decrypt(std::slice::from_ref(&attacker), &bytes[at..]).is_ok()
    };

    // 1. Its `configs/` whole: both copies are opened at the pinned generation and backed up.
    victim.source.sql("UPDATE crm.contacts SET email = email || '.one' WHERE id IN (SELECT min(id) FROM crm.contacts)");
    let before: std::collections::BTreeSet<_> = files_under(Path::new(&copy)).into_iter().collect();
    let run = backup(&victim.repo, &copy).ok();
    assert!(run.json()["targets"].as_array().unwrap().iter().all(|t| t["ok"] == true), "{}", run.stdout);
    let written: Vec<_> = files_under(Path::new(&copy)).into_iter().filter(|f| !before.contains(f)).collect();
    assert!(written.iter().any(|f| f.starts_with(Path::new(&copy).join("snapshots"))), "{written:?}");
    for file in &written {
        assert!(!opens_for_attacker(file), "{} opens with the attacker's key", file.display());
    }

    // 2. Its `configs/` gone too: nothing the host pinned is left there. The copy is left out,
    //    named, nothing is written to it; the other target gets the night, in either order.
    std::fs::remove_dir_all(Path::new(&copy).join("configs")).unwrap();
    let pin = files_under(&victim.work.config_dir()).into_iter().find(|p| p.ends_with("trust.json")).unwrap();
    let pinned = |path: &Path| {
        let pin: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        (pin["fingerprint"].clone(), pin["config_hash"].clone())
    };
    let trusted = pinned(&pin);
    for (first, second) in [(victim.repo.as_str(), copy.as_str()), (copy.as_str(), victim.repo.as_str())] {
        victim
            .source
            .sql("UPDATE crm.contacts SET email = email || '.two' WHERE id IN (SELECT min(id) FROM crm.contacts)");
        let before = files_under(Path::new(&copy));
        let run = backup(first, second).fails_with(3, "changed in storage");
        assert_eq!(files_under(Path::new(&copy)), before, "something was written to the copy");
        let report = run.json();
        for target in report["targets"].as_array().unwrap() {
            assert_eq!(target["ok"], target["location"] == victim.repo.as_str(), "{report}");
        }
        assert!(report["snapshot_id"].is_string(), "{report}");
        assert_eq!(pinned(&pin), trusted, "the pin moved");
    }
    // The copy made to claim a repository of its own (an id nothing here pins): the place is
    // the pinned repository's, so it is refused as forged, and left out.
    let mut claimed: serde_json::Value = serde_json::from_str(&widened).unwrap();
    claimed["id"] = "0123456789abcdef0123456789abcdef".into();
    std::fs::write(&config, serde_json::to_vec_pretty(&claimed).unwrap()).unwrap();
    let run = backup(&victim.repo, &copy).fails_with(3, "it was forged or replaced in storage");
    let newest = run.json()["snapshot_id"].as_str().unwrap().to_string();
    std::fs::write(&config, &widened).unwrap();
    // forget, with the writer key: the copy is named among the failed targets, exit 3.
    let run = victim.work.run(&["forget", "--json", "--keep-last", "9", "--repo", &copy, "--repo", &victim.repo]);
    let run = run.fails_with(3, "");
    assert!(run.json()["failed"][0]["location"] == copy.as_str(), "{}", run.stdout);

    // The admin's restore with both copies: the forged one named and left out, the newest
    // snapshot restored from the other.
    let target = TestDb::create("config_one_copy_target");
    let run = victim.work.restore_with(&victim.repo, &target, &["--json", "--repo", &copy]).ok();
    assert_eq!(run.json()["snapshot_id"].as_str(), Some(newest.as_str()), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{copy} left out")), "{}", run.stderr);
    assert_same_database(&victim.source, &target);
    // verify: the copy is a finding, the other verified.
    let run = victim.work.run(&["verify", "--json", "--repo", &victim.repo, "--repo", &copy]).fails_with(3, "");
    let problems = run.json()["problems"].clone();
    assert!(problems.as_array().unwrap().iter().all(|p| p["target"] == copy.as_str()), "{problems}");
    assert!(problems.to_string().contains("changed in storage"), "{problems}");
    victim.work.run(&["verify", "--repo", &victim.repo]).ok();
}

/// Whoever can write one copy's storage makes its `keys/` folder a file, or a link to itself:
/// the keys objects there cannot even be opened. Keys unlock from the next copy (they are the
/// same objects), so the backup goes to both in either order; verify names that copy and
/// verifies the other. Both stopped every copy before (exit 1, nothing written).
#[test]
fn a_keys_folder_made_unreadable_on_one_copy_stops_no_backup_or_verify_of_the_others() {
    let victim = Victim::new("keys_folder_one_copy");
    let copy = victim.copied();
    let url = victim.source.url();
    let keys = Path::new(&copy).join("keys");
    let saved = victim.work.path("saved-keys");
    std::fs::rename(&keys, &saved).unwrap();
    let plant_file = |keys: &Path| std::fs::write(keys, b"x").unwrap();
    let plant_loop = |keys: &Path| std::os::unix::fs::symlink(keys, keys).unwrap();
    for plant in [&plant_file as &dyn Fn(&Path), &plant_loop] {
        plant(&keys);
        for (first, second) in [(victim.repo.as_str(), copy.as_str()), (copy.as_str(), victim.repo.as_str())] {
            victim
                .source
                .sql("UPDATE crm.contacts SET email = email || '.k' WHERE id IN (SELECT min(id) FROM crm.contacts)");
            let run =
                victim.work.run(&["backup", "--json", "--no-alarm", "--db", &url, "--repo", first, "--repo", second]);
            // Stored on both, and exit 3: that copy could not be unlocked on its own.
            let run = run.fails_with(3, "");
            assert!(run.json()["targets"].as_array().unwrap().iter().all(|t| t["ok"] == true), "{}", run.stdout);
            let damaged: Vec<serde_json::Value> = run.json()["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["problems"].is_array())
                .cloned()
                .collect();
            assert_eq!(damaged.len(), 1, "{}", run.stdout);
            assert_eq!(damaged[0]["location"], copy.as_str(), "{}", run.stdout);
            let run = victim.work.run(&["verify", "--json", "--repo", first, "--repo", second]).fails_with(3, "");
            let problems = run.json()["problems"].clone();
            assert!(problems.as_array().unwrap().iter().all(|p| p["target"] == copy.as_str()), "{problems}");
            assert!(run.json()["snapshots"].as_u64().unwrap() >= 2, "{}", run.stdout);
        }
        std::fs::remove_file(&keys).unwrap();
    }
    std::fs::rename(&saved, &keys).unwrap();
    victim.work.run(&["verify", "--repo", &victim.repo, "--repo", &copy]).ok();
}

/// Storage replaces both keys objects of one of two targets with its own age files (to the
/// admins and the writer, a secret of its choosing inside). Keys unlock from the other target,
/// so the night goes to both; but that target could not be unlocked on its own any more: the
/// backup says so and exits 3, whichever order the targets are given in, until `copy --repair`
/// writes the keys objects again from the whole target.
#[test]
fn a_target_whose_keys_objects_storage_replaced_fails_the_night_until_copy_repair_mends_it() {
    let victim = Victim::new("keys_replaced_one_copy");
    let copy = victim.copied();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&copy).join("config")).unwrap()).unwrap();
    let recipients: Vec<age::x25519::Recipient> =
        [victim.recipient().as_str(), config["writer_recipient"].as_str().unwrap()]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
    let plaintext =
        serde_json::json!({ "repository_id": config["id"], "repo_secret": hex::encode([7; 32]) }).to_string();
    let keys: Vec<String> = config["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().into()).collect();
    let originals: Vec<Vec<u8>> = keys.iter().map(|k| std::fs::read(Path::new(&copy).join(k)).unwrap()).collect();
    for key in &keys {
        let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient)).unwrap();
        let mut ciphertext = vec![];
        let mut writer = encryptor.wrap_output(&mut ciphertext).unwrap();
        std::io::Write::write_all(&mut writer, plaintext.as_bytes()).unwrap();
        writer.finish().unwrap();
        std::fs::write(Path::new(&copy).join(key), ciphertext).unwrap();
    }
    let url = victim.source.url();
    let metrics = victim.work.path("backup.prom");
    let metrics = metrics.to_str().unwrap();
    for (first, second) in [(victim.repo.as_str(), copy.as_str()), (copy.as_str(), victim.repo.as_str())] {
        victim
            .source
            .sql("UPDATE crm.contacts SET email = email || '.r' WHERE id IN (SELECT min(id) FROM crm.contacts)");
        let args = ["backup", "--no-alarm", "--db", &url, "--repo", first, "--repo", second];
        let run = victim.work.run(&[&args[..], &["--json", "--metrics-file", metrics]].concat()).fails_with(3, "");
        let report = run.json();
        assert_eq!(report["ok"], false, "{}", run.stdout);
        for target in report["targets"].as_array().unwrap() {
            assert_eq!(target["ok"], true, "the snapshot is stored on both: {}", run.stdout);
            let problems = target["problems"].as_array().map_or(0, Vec::len);
            if target["location"] == copy.as_str() {
                assert_eq!(problems, 1, "{}", run.stdout);
                for key in &keys {
                    assert!(target["problems"].to_string().contains(key.as_str()), "{key} not named: {}", run.stdout);
                }
            } else {
                assert_eq!(problems, 0, "{}", run.stdout);
            }
        }
        let prom = std::fs::read_to_string(metrics).unwrap();
        assert!(prom.contains(&format!("crmvault_backup_target_problems{{target=\"{copy}\"}} 1")), "{prom}");
        victim.work.run(&args).fails_with(3, "cannot be unlocked on its own");
    }
    victim.work.run(&["copy", "--from", &victim.repo, "--to", &copy]).ok();
    assert_ne!(std::fs::read(Path::new(&copy).join(&keys[0])).unwrap(), originals[0], "a plain copy leaves them");
    victim.work.run(&["copy", "--repair", "--from", &victim.repo, "--to", &copy]).ok();
    for (key, original) in keys.iter().zip(&originals) {
        assert_eq!(&std::fs::read(Path::new(&copy).join(key)).unwrap(), original, "{key} written again");
    }
    // Something that is no object in a keys object's place (a FIFO) is written over too, and so
    // is the first generation's config copy, damaged.
    let fifo = Path::new(&copy).join(&keys[1]);
    std::fs::remove_file(&fifo).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let config_copy = files_under(&Path::new(&copy).join("configs")).remove(0);
    let config_bytes = std::fs::read(&config_copy).unwrap();
    std::fs::write(&config_copy, b"{}").unwrap();
    victim.work.run(&["copy", "--repair", "--from", &victim.repo, "--to", &copy]).ok();
    assert_eq!(std::fs::read(&fifo).unwrap(), originals[1]);
    assert_eq!(std::fs::read(&config_copy).unwrap(), config_bytes, "the config copy written again");
    // A folder in the place of a keys object and of a pack reads as a missing object (verify
    // goes on and reports it); `copy --repair` writes over an empty one and leaves one holding
    // anything to a person, saying so.
    let folder = Path::new(&copy).join(&keys[0]);
    std::fs::remove_file(&folder).unwrap();
    std::fs::create_dir_all(folder.join("inside")).unwrap();
    let pack = files_under(&Path::new(&copy).join("data")).remove(0);
    let pack_bytes = std::fs::read(&pack).unwrap();
    std::fs::remove_file(&pack).unwrap();
    std::fs::create_dir_all(pack.join("inside")).unwrap();
    let args = ["backup", "--no-alarm", "--db", &url, "--repo", &copy, "--repo", &victim.repo];
    let run = victim.work.run(&args).ok();
    assert!(run.stderr.contains(&format!("{} is missing", keys[0])), "{}", run.stderr);
    let pack_key = pack.strip_prefix(&copy).unwrap().to_str().unwrap().trim_start_matches('/').to_string();
    let verify = victim.work.run(&["verify", "--repo", &copy]);
    assert_eq!(verify.code, 3, "{}{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains(&pack_key) && verify.stdout.contains(&keys[0]), "{}", verify.stdout);
    // (A pack is each target's own: no other target holds it to mend it from.)
    std::fs::remove_dir_all(&pack).unwrap();
    std::fs::write(&pack, &pack_bytes).unwrap();
    let repair = ["copy", "--repair", "--from", &victim.repo, "--to", &copy];
    victim.work.run(&repair).fails_with(1, "a folder that is not empty is in this object's place");
    std::fs::remove_dir(folder.join("inside")).unwrap();
    victim.work.run(&repair).ok();
    assert_eq!(std::fs::read(&folder).unwrap(), originals[0], "the empty folder written over");
    // `config` itself, deleted or replaced (the target opens from its copy meanwhile): written
    // again from the first generation's bytes.
    let config_path = Path::new(&copy).join("config");
    let config_original = std::fs::read(&config_path).unwrap();
    for replaced in [None, Some(&b"{}"[..])] {
        match replaced {
            None => std::fs::remove_file(&config_path).unwrap(),
            Some(bytes) => std::fs::write(&config_path, bytes).unwrap(),
        }
        victim.work.run(&["verify", "--repo", &copy]).fails_with(3, "missing, damaged or replaced");
        victim.work.run(&repair).ok();
        assert_eq!(std::fs::read(&config_path).unwrap(), config_original, "{replaced:?}: config written again");
    }
    // One that cannot be written (a folder holding something in its place) is named, and the
    // rest of the repair goes on.
    std::fs::remove_file(&config_path).unwrap();
    std::fs::create_dir_all(config_path.join("inside")).unwrap();
    std::fs::remove_file(&fifo).unwrap();
    let run = victim.work.run(&[&repair[..], &["--json"]].concat()).fails_with(3, "");
    assert!(run.json()["not_repaired"].to_string().contains("\"config\""), "{}", run.stdout);
    assert_eq!(std::fs::read(&fifo).unwrap(), originals[1], "the keys object written again beside it");
    std::fs::remove_dir_all(&config_path).unwrap();
    victim.work.run(&repair).ok();
    assert_eq!(std::fs::read(&config_path).unwrap(), config_original);
    victim.work.run(&["verify", "--repo", &copy]).ok();
    let run =
        victim.work.run(&["backup", "--json", "--no-alarm", "--db", &url, "--repo", &copy, "--repo", &victim.repo]);
    assert!(run.ok().json()["targets"].as_array().unwrap().iter().all(|t| t["problems"].is_null()));
    let target = TestDb::create("keys_replaced_one_copy_target");
    victim.work.restore(&copy, &target).ok();
    assert_same_database(&victim.source, &target);
}

/// A backup host that lost its pin (rebuilt, `writer.key` restored from a secrets store) is
/// given a good copy and one whose `config` a storage writer rewrote as a repository made
/// before pins (same id, the attacker's recipient). Checked alone, that one would be pinned on
/// first use and the good one, unpinned, left out: the backups would go to the attacker from
/// then on. Without a pin or a fingerprint nothing is left out and nothing is pinned; given
/// the admins' fingerprint, the forged copy is the one left out.
#[test]
fn a_copy_passed_off_as_made_before_pins_is_not_pinned_in_place_of_the_real_one() {
    let victim = Victim::new("downgraded_copy");
    let copy = victim.copied();
    let fingerprint = victim.work.fingerprint(&victim.repo);
    let config_path = Path::new(&copy).join("config");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    let id = config["id"].as_str().unwrap().to_string();
    let pin = victim.work.config_dir().join("repos").join(&id).join("trust.json");
    std::fs::remove_file(&pin).unwrap();
    let attacker = age::x25519::Identity::generate();
    config["version"] = 5.into();
    config["recipients"] = serde_json::json!([attacker.to_public().to_string()]);
    for field in ["generation", "previous", "rekeyed", "admin_keys", "signing_key", "carried", "signature"] {
        config.as_object_mut().unwrap().remove(field);
    }
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    std::fs::remove_dir_all(Path::new(&copy).join("configs")).unwrap();
    let url = victim.source.url();
    let data = Path::new(&copy).join("data");
    let packs = files_under(&data);
    for (first, second) in [(victim.repo.as_str(), copy.as_str()), (copy.as_str(), victim.repo.as_str())] {
        let run = victim.work.run(&["backup", "--no-alarm", "--db", &url, "--repo", first, "--repo", second]);
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert!(!pin.exists(), "a copy was pinned: {}", std::fs::read_to_string(&pin).unwrap());
        assert_eq!(files_under(&data), packs);
    }
    // The admins' fingerprint anchors it again: the real copy is pinned and backed up, the
    // forged one left out.
    let args = ["backup", "--no-alarm", "--db", &url, "--repo", &copy, "--repo", &victim.repo];
    let run = victim.work.run(&[&args[..], &["--fingerprint", &fingerprint]].concat());
    run.fails_with(3, "not the repository you trust");
    let pinned: serde_json::Value = serde_json::from_slice(&std::fs::read(&pin).unwrap()).unwrap();
    assert_eq!(pinned["fingerprint"].as_str(), Some(fingerprint.as_str()), "{pinned}");
    assert_eq!(files_under(&data), packs);
    // The copy made to claim another repository, at a place this pin does not know (it was
    // left out above): not a copy of the one the host backs up; left out, the night goes on.
    config["id"] = "0123456789abcdef0123456789abcdef".into();
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let args = ["backup", "--no-alarm", "--db", &url, "--repo", &copy, "--repo", &victim.repo];
    let run = victim.work.run(&args).fails_with(3, "it holds repository 0123456789abcdef0123456789abcdef, not");
    assert!(run.stderr.contains(&format!("FAILED  {copy}")), "{}", run.stderr);
    assert_eq!(files_under(&data), packs);
}

#[test]
fn one_hostile_copy_neither_stops_nor_rolls_back_a_restore_of_the_newest_snapshot_with_or_without_remembered_labels() {
    let Ready { source, work, repo, .. } = Scenario::new("remembered_copies").crm().init("repo").backup();
    let copy = work.path("copy").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &copy, "--copy-from", &repo]).ok();
    // An older snapshot and the newest on both copies.
    let both = ["backup", "--json", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--repo", &copy];
    work.run(&both).ok();
    source.sql("UPDATE crm.contacts SET email = 'copies@example.test' WHERE id IN (SELECT min(id) FROM crm.contacts)");
    let newest = work.run(&both).ok().json()["snapshot_id"].as_str().unwrap().to_string();
    let warm = TestDb::create("remembered_copies_warm");
    work.restore_with(&repo, &warm, &["--repo", &copy]).ok();
    // The copy turned hostile: its newest snapshot damaged, and a name under index/ that stops
    // the copy's listing. The newest is intact on the first copy: it is restored from there,
    // the copy named, on a machine that remembers the labels (a remembered snapshot passed
    // over for the copy's failure restored an older one) as on one that does not (the copy's
    // listing failed the whole restore).
    let path = Path::new(&copy).join(format!("snapshots/{newest}"));
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&path, bytes).unwrap();
    std::fs::write(Path::new(&copy).join("index/x\nplanted"), b"junk").unwrap();
    let labels = files_under(&work.config_dir()).into_iter().find(|p| p.ends_with("labels.json")).unwrap();
    for machine in ["remembering", "not remembering"] {
        if machine == "not remembering" {
            std::fs::remove_file(&labels).unwrap();
        }
        let target = TestDb::create(&format!("remembered_copies_{}", machine.replace(' ', "_")));
        let run = work.restore_with(&repo, &target, &["--json", "--repo", &copy]).ok();
        assert_eq!(run.json()["snapshot_id"].as_str(), Some(newest.as_str()), "{machine}: {}", run.stderr);
        assert_ne!(run.json()["skipped_newer"], true, "{machine}: {}", run.stdout);
        assert!(run.stderr.contains(&copy) && run.stderr.contains("cannot read"), "{machine}: {}", run.stderr);
        assert_same_database(&source, &target);
    }
}

#[test]
fn restore_latest_names_a_newest_snapshot_that_does_not_open_and_never_calls_it_deleted() {
    let Ready { source, work, repo, report } = Scenario::new("unreadable_newest").crm().init("repo").backup();
    let victim = Victim { source, work, repo };
    let id = |report: &serde_json::Value| report["snapshot_id"].as_str().unwrap().to_string();
    let first = id(&report);
    victim
        .source
        .sql("UPDATE crm.contacts SET email = 'second@example.test' WHERE id IN (SELECT min(id) FROM crm.contacts)");
    let second = id(&victim.work.backup(&victim.source, &victim.repo));
    // A machine that has never seen the repository: no pin, only the admin's key.
    let unpinned = Workspace::new();
    let fingerprint = victim.work.fingerprint(&victim.repo);
    std::fs::copy(victim.work.admin_key(), unpinned.admin_key()).unwrap();
    let newest = victim.file(&format!("snapshots/{second}"));
    let original = std::fs::read(&newest).unwrap();

    // The newest as a later crmvault would write it (its header unreadable here), then damaged.
    let newer_format = String::from_utf8_lossy(&original).replacen("crmvault-snapshot 7", "crmvault-snapshot 99", 1);
    assert_ne!(newer_format.as_bytes(), &original[..], "the version line is rewritten");
    let mut damaged = original.clone();
    *damaged.last_mut().unwrap() ^= 1;
    // Its header damaged: its time unknown, so it may be newer than what is restored.
    let damaged_header = String::from_utf8_lossy(&original).replacen("\"total_bytes\":", "\"total_bytez\":", 1);
    assert_ne!(damaged_header.as_bytes(), &original[..], "the header is rewritten");
    // Its header dated a year before the other, its hash line made to match (no key needed for
    // that; the MAC cannot be): it would sort below the older snapshot and go unsaid.
    let lines: Vec<&[u8]> = original.splitn(5, |&b| b == b'\n').collect();
    let mut header: serde_json::Value = serde_json::from_slice(lines[1]).unwrap();
    header["time"] = "2000-01-01T00:00:00Z".into();
    let header = serde_json::to_vec(&header).unwrap();
    let backdated = [lines[0], &header, blake3::hash(&header).to_hex().as_bytes(), lines[3], lines[4]].join(&b'\n');
    for (case, bytes, says) in [
        ("newer format", newer_format.into_bytes(), "uses repository format 99"),
        ("damaged", damaged, "corrupt"),
        ("damaged header", damaged_header.into_bytes(), "corrupt"),
        ("backdated header", backdated, "corrupt"),
    ] {
        std::fs::write(&newest, &bytes).unwrap();
        for (machine, work) in [("pinned", &victim.work), ("unpinned", &unpinned)] {
            let target = TestDb::create(&format!("unreadable_{}_{machine}", case.replace(' ', "_")));
            let run = work.restore_with(&victim.repo, &target, &["--json", "--fingerprint", &fingerprint]).ok();
            assert_eq!(id(&run.json()), first, "{case}, {machine}: the older snapshot is restored");
            let named = format!("snapshot {second} passed over");
            assert!(run.stderr.contains(&named) && run.stderr.contains(says), "{case}, {machine}: {}", run.stderr);
            assert!(!run.stderr.contains("deleted from storage"), "{case}, {machine}: {}", run.stderr);
            // What a drill of `latest` fails on, on a machine that knows nothing of it too.
            assert_eq!(run.json()["skipped_newer"], true, "{case}, {machine}: {}", run.stdout);
            if machine == "pinned" {
                assert!(run.stderr.contains("does not open"), "{case}: {}", run.stderr);
            }
        }
    }
    std::fs::write(&newest, original).unwrap();
}

#[test]
fn junk_named_with_a_snapshots_first_digits_does_not_make_its_prefix_ambiguous() {
    let Ready { source, work, repo, report } = Scenario::new("prefix_junk").crm().init("repo").backup();
    let id = report["snapshot_id"].as_str().unwrap().to_string();
    let junk = Path::new(&repo).join(format!("snapshots/{}{}", &id[..12], "0".repeat(52)));
    std::fs::write(&junk, b"junk").unwrap();
    let target = TestDb::create("prefix_junk_target");
    let run = work.restore_with(&repo, &target, &["--json", &id[..12]]).ok();
    assert_eq!(run.json()["snapshot_id"].as_str(), Some(id.as_str()));
    assert_same_database(&source, &target);
    // A copy of the snapshot under that name is not named by its manifest's hash: passed over too.
    std::fs::copy(Path::new(&repo).join(format!("snapshots/{id}")), &junk).unwrap();
    let other = TestDb::create("prefix_junk_other");
    let run = work.restore_with(&repo, &other, &["--json", &id[..12]]).ok();
    assert_eq!(run.json()["snapshot_id"].as_str(), Some(id.as_str()));
}

#[test]
fn snapshots_that_open_nowhere_are_named_never_tried_and_a_drill_of_every_copy_fails_on_a_newer_one() {
    let Ready { source, work, repo, .. } = Scenario::new("unreadable_copies").crm().init("repo").backup();
    let copy = work.path("copy").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &copy, "--copy-from", &repo]).ok();
    source.sql("UPDATE crm.contacts SET email = 'copies@example.test' WHERE id IN (SELECT min(id) FROM crm.contacts)");
    let newest =
        work.run(&["backup", "--json", "--no-alarm", "--db", &source.url(), "--repo", &repo, "--repo", &copy]).ok();
    let newest = newest.json()["snapshot_id"].as_str().unwrap().to_string();
    // Junk named by its hash under snapshots/ of both copies, and many of them: each copy
    // fails to open it, which must not stop the restore nor load every index once per junk.
    for folder in [&repo, &copy] {
        for n in 0..8 {
            let junk = format!("junk {n} in both").into_bytes();
            std::fs::write(Path::new(folder).join(format!("snapshots/{}", blake3::hash(&junk).to_hex())), &junk)
                .unwrap();
        }
    }
    let target = TestDb::create("unreadable_copies_target");
    let run = work.restore_with(&repo, &target, &["--json", "--repo", &copy]).ok();
    assert_eq!(run.json()["snapshot_id"].as_str(), Some(newest.as_str()));
    assert_same_database(&source, &target);
    assert!(run.stderr.contains("passed over") && run.stderr.contains("3 more snapshots"), "{}", run.stderr);
    // Junk has no time of its own, and a newest snapshot whose header is damaged reads the same:
    // either may be newer than what was restored, so a drill of `latest` fails on it, naming it.
    assert_eq!(run.json()["skipped_newer"], true, "{}", run.stdout);
    let scratch = TestDb::unmade("unreadable_copies_scratch");
    let (key, url) = (work.admin_key(), scratch.url());
    let plain = ["drill", "--repo", &repo, "--repo", &copy, "--identity", &key, "--scratch-db", &url];
    let run = work.run(&[&plain[..], &["--json"]].concat());
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let drill = &run.json()["drills"][0];
    assert_eq!(drill["snapshot"]["id"].as_str(), Some(newest.as_str()), "{}", run.stdout);
    assert!(drill["failures"][0].as_str().unwrap().contains("may be newer"), "{}", run.stdout);
    assert!(drill["warnings"].to_string().contains("passed over"), "{}", run.stdout);
    // The junk removed by hand, as docs/OPERATIONS.md says, the drill passes.
    for folder in [&repo, &copy] {
        for n in 0..8 {
            let junk = format!("junk {n} in both").into_bytes();
            std::fs::remove_file(Path::new(folder).join(format!("snapshots/{}", blake3::hash(&junk).to_hex())))
                .unwrap();
        }
    }
    let run = work.run(&plain);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    // The newest damaged on both copies: a drill of every copy drills it, and fails.
    for folder in [&repo, &copy] {
        let path = Path::new(folder).join(format!("snapshots/{newest}"));
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, bytes).unwrap();
    }
    let args =
        ["drill", "--repo", &repo, "--repo", &copy, "--identity", &key, "--scratch-db", &url, "--from-every-target"];
    let run = work.run(&args);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains(&newest[..12]) || run.stdout.contains(&newest), "{}", run.stdout);
    // A plain drill restores and proves the older one, and fails all the same: the newest
    // backup is what an incident needs.
    let run = work.run(&[&plain[..], &["--json"]].concat());
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let drill = &run.json()["drills"][0];
    assert_eq!(drill["restore"]["skipped_newer"], true, "{}", run.stdout);
    assert!(drill["failures"][0].as_str().unwrap().contains("the newest backup does not restore"), "{}", run.stdout);
    assert!(drill["warnings"].to_string().contains(&format!("snapshot {newest} passed over")), "{}", run.stdout);
    // `ls latest` lists the older one and names the newest with why.
    let run = work.run(&["ls", "--json", "--repo", &repo, "--repo", &copy, "--identity", &key, "latest"]).ok();
    assert_ne!(run.json()["snapshot_id"].as_str(), Some(newest.as_str()), "{}", run.stdout);
    assert!(run.json()["warnings"].to_string().contains(&format!("snapshot {newest} passed over")), "{}", run.stdout);
    assert!(run.stderr.contains(&format!("snapshot {newest} passed over")), "{}", run.stderr);
    // A restore of latest names it and restores the older one.
    let older = TestDb::create("unreadable_copies_older");
    let run = work.restore_with(&repo, &older, &["--json", "--repo", &copy]).ok();
    assert!(run.stderr.contains(&format!("snapshot {newest} passed over")), "{}", run.stderr);
    assert_eq!(run.json()["skipped_newer"], true, "{}", run.stdout);
}

#[test]
fn a_newest_snapshot_replaced_in_storage_by_one_that_does_not_read_is_reported_by_the_next_backup() {
    let victim = Victim::new("replaced_newest");
    // Junk under its name: the name is still there, so it is not "deleted", but it is not the
    // snapshot (an id is the hash of its manifest's ciphertext). Its header rewritten, the hash
    // line made again (the time backdated, so that it sorts below an older snapshot, or one
    // more backup recorded): no key makes its MAC again. Its MAC damaged.
    let junk = |_: &[u8]| b"crmvault-snapshot 7\njunk\n".to_vec();
    let backdated = |bytes: &[u8]| with_header(bytes, |header| header["time"] = "2000-01-01T00:00:00Z".into());
    let renumbered = |bytes: &[u8]| {
        with_header(bytes, |header| header["sequence"] = (header["sequence"].as_u64().unwrap() + 1).into())
    };
    let mac_flipped = |bytes: &[u8]| {
        let mut bytes = bytes.to_vec();
        let mac = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(2).unwrap().0 + 1;
        bytes[mac] = if bytes[mac] == b'0' { b'1' } else { b'0' };
        bytes
    };
    let cases: [(&str, Replace<'_>); 4] =
        [("junk", &junk), ("backdated", &backdated), ("renumbered", &renumbered), ("MAC flipped", &mac_flipped)];
    for (case, replace) in cases {
        victim.source.sql(&format!(
            "UPDATE crm.contacts SET email = '{}@example.test' WHERE id IN (SELECT min(id) FROM crm.contacts)",
            case.replace(' ', "_")
        ));
        let newest = victim.work.backup(&victim.source, &victim.repo)["snapshot_id"].as_str().unwrap().to_string();
        let path = victim.file(&format!("snapshots/{newest}"));
        std::fs::write(&path, replace(&std::fs::read(&path).unwrap())).unwrap();
        let next = victim.work.run(&["backup", "--json", "--db", &victim.source.url(), "--repo", &victim.repo]);
        let next = next.fails_with(3, "replaced or damaged in storage");
        assert_eq!(next.json()["deleted_snapshot"].as_str(), Some(newest.as_str()), "{case}: {}", next.stdout);
        // Once: the one after it knows the new snapshot as the newest.
        victim.work.backup(&victim.source, &victim.repo);
    }
}

#[test]
fn a_fifo_planted_as_the_newest_snapshot_hangs_no_backup_and_is_reported_by_it() {
    use std::os::unix::fs::OpenOptionsExt;

    let victim = Victim::new("fifo_newest");
    let newest = victim.work.backup(&victim.source, &victim.repo)["snapshot_id"].as_str().unwrap().to_string();
    let path = victim.file(&format!("snapshots/{newest}"));
    std::fs::remove_file(&path).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&path).status().expect("mkfifo runs").success());
    // Should the backup open it (which waits for a writer), its other end is opened later on, so
    // that the test ends, and fails.
    let fifo = path.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(60));
        let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fifo);
    });
    let started = std::time::Instant::now();
    let next = victim.work.run(&["backup", "--json", "--db", &victim.source.url(), "--repo", &victim.repo]);
    assert!(started.elapsed() < std::time::Duration::from_secs(45), "the backup hung on the FIFO");
    let next = next.fails_with(3, "replaced or damaged in storage");
    assert_eq!(next.json()["deleted_snapshot"].as_str(), Some(newest.as_str()), "{}", next.stdout);
}

/// How a test replaces a stored object's bytes.
type Replace<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;

/// The 3 a.m. runbook's first step, `snapshots --identity`, proves every snapshot: the newest
/// it proved is remembered, so that one deleted afterwards is named as deleted by the restore
/// (found by an attack run: only restore, verify and the others remembered it).
#[test]
fn a_snapshot_listed_with_a_key_and_deleted_after_is_named_as_a_deletion() {
    let victim = Victim::new("listed_deleted");
    let fingerprint = victim.work.fingerprint(&victim.repo);
    let admin = Workspace::new();
    std::fs::copy(victim.work.path("admin.key"), admin.path("admin.key")).unwrap();
    let listing =
        ["snapshots", "--repo", &victim.repo, "--identity", &admin.admin_key(), "--fingerprint", &fingerprint];
    admin.run(&listing).ok();
    let newest = victim.only("snapshots").pop().unwrap();
    let newest_id = newest.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(newest).unwrap();
    let target = TestDb::create("listed_deleted_target");
    let run = admin.restore(&victim.repo, &target).fails_with(1, "deleted from storage without being forgotten");
    assert!(run.stderr.contains(&format!("this machine knows of snapshot {newest_id}")), "{}", run.stderr);
    assert!(target.is_empty());
}

#[test]
fn every_snapshot_deleted_is_named_as_a_deletion_on_a_machine_that_knew_them() {
    let victim = Victim::new("all_deleted");
    let newest = std::fs::read_dir(victim.file("snapshots")).unwrap().next().unwrap().unwrap();
    let newest = newest.file_name().into_string().unwrap();
    for snapshot in victim.only("snapshots") {
        std::fs::remove_file(snapshot).unwrap();
    }
    let target = TestDb::create("all_deleted_target");
    let run = victim.work.restore(&victim.repo, &target).fails_with(1, "deleted from storage without being forgotten");
    assert!(run.stderr.contains(&format!("this machine knows of snapshot {newest}")), "{}", run.stderr);
    assert!(!run.stderr.contains("no snapshot yet"), "{}", run.stderr);
    assert!(target.is_empty());
    victim.work.run(&["verify", "--repo", &victim.repo]).fails_with(3, "`restore latest` finds no snapshot at all");
    // The next backup is the only one left: `verify` cannot tell it from a target's first
    // snapshot afterwards, so the backup's own exit code is the alarm, with the wording to match.
    let next = victim.work.run(&["backup", "--json", "--db", &victim.source.url(), "--repo", &victim.repo]);
    let next = next.fails_with(3, "deleted without being forgotten");
    assert_eq!(next.json()["deleted_snapshot"].as_str(), Some(newest.as_str()), "{}", next.stdout);
    assert!(next.stderr.contains("nothing but this backup's exit code reports it"), "{}", next.stderr);
    assert!(!next.stderr.contains("`verify` reports the gap"), "{}", next.stderr);
}

#[test]
fn an_emptied_repository_is_named_as_the_one_this_machine_knew_there_not_as_a_place_to_init() {
    let victim = Victim::new("emptied");
    let newest = victim.only("snapshots").pop().unwrap();
    let newest = newest.file_name().unwrap().to_str().unwrap()[..8].to_string();
    let repository_id = pin_of(&victim.work)["repository_id"].as_str().unwrap().to_string();
    let copy = victim.copied();
    // Emptied in storage (the folder kept), then removed altogether: either way the place is
    // the one this machine's pin names, and "run `crmvault init` first" would start over there.
    for entry in std::fs::read_dir(&victim.repo).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }.unwrap();
    }
    for gone in [false, true] {
        if gone {
            std::fs::remove_dir(&victim.repo).unwrap();
        }
        let target = TestDb::create("emptied_target");
        let restore = victim.work.restore(&victim.repo, &target).fails_with(1, "no crmvault repository at");
        let snapshots = victim.work.run(&["snapshots", "--repo", &victim.repo]).fails_with(1, "no crmvault repository");
        for run in [&restore, &snapshots] {
            assert!(run.stderr.contains(&format!("it held repository {repository_id}")), "{}", run.stderr);
            assert!(run.stderr.contains(&format!("newest snapshot seen there: {newest}")), "{}", run.stderr);
            assert!(!run.stderr.contains("run `crmvault init` first"), "{}", run.stderr);
        }
        assert!(target.is_empty());
        // One of several copies: what is said of it where the others go on.
        let verify = victim.work.run(&["verify", "--repo", &victim.repo, "--repo", &copy]).fails_with(3, "");
        let said = format!("{}{}", verify.stdout, verify.stderr);
        assert!(said.contains(&format!("it held repository {repository_id}")), "{said}");
        assert!(!said.contains("run `crmvault init` first"), "{said}");
    }
    // A place this machine never opened keeps the plain advice.
    let elsewhere = victim.work.path("never").to_str().unwrap().to_string();
    let run = victim.work.run(&["snapshots", "--repo", &elsewhere]).fails_with(1, "run `crmvault init` first");
    assert!(!run.stderr.contains("it held repository"), "{}", run.stderr);
}

/// `copy` reads a source snapshot's header to know what to copy, and its whole object again
/// last, to write it: an object put in its place between the two reads (whoever writes the
/// source's storage) must not be written to the destination under the name of the one read.
#[test]
fn a_source_snapshot_replaced_while_a_copy_runs_is_not_written_to_the_destination() {
    use std::process::{Command, Stdio};
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: needs strace to hold the copy");
        return;
    }
    let victim = Victim::new("copy_swap");
    let (work, repo) = (&victim.work, &victim.repo);
    let copy = work.path("copy").to_str().unwrap().to_string();
    work.run(&["init", "--repo", &copy, "--copy-from", repo]).ok();
    let snapshot = victim.only("snapshots").pop().unwrap().canonicalize().unwrap();
    let original = std::fs::read(&snapshot).unwrap();
    let objects = |root: &str| -> usize {
        ["data", "index", "dicts"]
            .iter()
            .map(|f| Path::new(root).join(f))
            .filter(|f| f.exists())
            .map(|f| files_under(&f).len())
            .sum()
    };
    // Every open of the snapshot waits 2 s: the second (the read that is written) too.
    let child = work
        .command_for("strace")
        .args(["-f", "-qq", "-e", "trace=openat", "-e", "inject=openat:delay_enter=2s", "-P"])
        .arg(&snapshot)
        .args([env!("CARGO_BIN_EXE_crmvault"), "copy", "--from", repo, "--to", &copy])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once every pack, index and dictionary is there, the snapshot's header was read long ago
    // and its second read is waiting: the object is replaced (its last byte flipped).
    let started = std::time::Instant::now();
    while objects(&copy) < objects(repo) {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the copy never copied the objects");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut swapped = original.clone();
    *swapped.last_mut().unwrap() ^= 0x01;
    std::fs::write(&snapshot, &swapped).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // That snapshot is not copied (exit 3); the copy is not ended at it.
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("changed in storage while it was copied"), "{stderr}");
    let written = Path::new(&copy).join("snapshots");
    assert!(!written.exists() || files_under(&written).is_empty(), "a snapshot was written");
    // Put back, the next copy completes, and the copy restores.
    std::fs::write(&snapshot, &original).unwrap();
    work.run(&["copy", "--from", repo, "--to", &copy]).ok();
    let restored = TestDb::create("copy_swap_restored");
    work.restore(&copy, &restored).ok();
    assert_same_database(&victim.source, &restored);
}

/// The command's exit code, stdout and peak memory (KiB: the largest high-water mark its
/// /proc status showed while it ran, read every few milliseconds).
fn run_measured(mut command: std::process::Command) -> (i32, String, u64) {
    use std::io::Read;
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut stdout = String::new();
        out.read_to_string(&mut stdout).unwrap();
        stdout
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        let status = std::fs::read_to_string(&status_file).unwrap_or_default();
        let hwm = status.lines().find_map(|line| line.strip_prefix("VmHWM:"));
        peak = peak.max(hwm.and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, reader.join().unwrap(), peak)
}

/// Listings and `latest` read snapshot headers 16 at once: objects planted under `snapshots/`
/// at the size a snapshot may take (here 32 MiB each, headers that never end, so that each is
/// read whole) must be read within a bound, not 16 at once (512 MiB here; 4 GiB at the limit).
#[test]
fn snapshots_planted_large_are_read_within_a_memory_bound_by_listings() {
    let victim = Victim::new("planted_large");
    for n in 0..16u8 {
        let name = format!("{:064x}", u128::from(n) + 0xfeed_0000);
        std::fs::write(victim.file("snapshots").join(name), vec![b'x'; 32 << 20]).unwrap();
    }
    let admin = victim.work.admin_key();
    for key in [None, Some(admin.as_str())] {
        let mut command = victim.work.command_for(env!("CARGO_BIN_EXE_crmvault"));
        command.args(["snapshots", "--repo", &victim.repo]);
        if let Some(key) = key {
            command.args(["--identity", key]);
        }
        let (code, stdout, peak_kib) = run_measured(command);
        assert!(code == 0 || code == 3, "exit {code}: {stdout}");
        assert!(stdout.contains("00000000feed000f"), "{stdout}");
        assert!(peak_kib < 300 << 10, "{key:?}: peak {} MiB", peak_kib >> 10);
    }
}

/// Snapshot objects planted so that they parse without a key (a real snapshot's header and
/// its hash line, then a MAC of zeros and tens of MiB named by their BLAKE3): the commands that
/// read every snapshot (`verify` with and without a key, `forget`, `copy`) keep no more than
/// each one's header, not every object whole (12 × 48 MiB: 576 MiB held before).
#[test]
fn snapshots_planted_to_parse_are_not_all_held_by_the_commands_that_read_every_snapshot() {
    let victim = Victim::new("planted_parse");
    let real = victim.only("snapshots").pop().unwrap();
    let bytes = std::fs::read(&real).unwrap();
    let lines: Vec<&[u8]> = bytes.splitn(4, |&b| b == b'\n').collect();
    for n in 0..12u8 {
        let filler = vec![n; 48 << 20];
        let mut planted = [lines[0], lines[1], lines[2]].join(&b'\n');
        planted.extend_from_slice(format!("\n{}\n", "0".repeat(64)).as_bytes());
        planted.extend_from_slice(&filler);
        let name = blake3::hash(&filler).to_hex().to_string();
        std::fs::write(victim.file("snapshots").join(name), planted).unwrap();
    }
    let copy = victim.work.path("copy").to_str().unwrap().to_string();
    victim.work.run(&["init", "--repo", &copy, "--copy-from", &victim.repo]).ok();
    let admin = victim.work.admin_key();
    let runs: [&[&str]; 4] = [
        &["verify", "--repo", &victim.repo],
        &["verify", "--repo", &victim.repo, "--identity", &admin],
        &["forget", "--dry-run", "--repo", &victim.repo, "--keep-last", "1"],
        &["copy", "--from", &victim.repo, "--to", &copy],
    ];
    for args in runs {
        let mut command = victim.work.command_for(env!("CARGO_BIN_EXE_crmvault"));
        command.args(args);
        let (code, stdout, peak_kib) = run_measured(command);
        assert!(code != 101 && code != -1, "{args:?}: exit {code}: {stdout}");
        assert!(peak_kib < 300 << 10, "{args:?}: peak {} MiB", peak_kib >> 10);
    }
    // With a key they are reported; the real snapshot still verifies and restores.
    let verified = victim.work.run(&["verify", "--repo", &victim.repo, "--identity", &admin]);
    verified.fails_with(3, "is corrupt or was tampered with");
    let target = TestDb::create("planted_parse_target");
    let id = real.file_name().unwrap().to_str().unwrap();
    victim.work.restore_with(&victim.repo, &target, &[id]).ok();
    assert_same_database(&victim.source, &target);
}

/// A keyless `verify` takes forget records as they read (it cannot prove them): records
/// planted to name millions of made-up snapshots (24 × 15 MiB here) must not all be held. Each
/// is read within its limit, and past what a repository holds they are named, not taken
/// (~500 MiB held without that bound; 40 such records took 844 MiB).
#[test]
fn forget_records_planted_to_name_millions_of_snapshots_are_not_all_held_by_a_keyless_verify() {
    let victim = Victim::new("planted_forgotten");
    let folder = victim.file("forgotten");
    std::fs::create_dir_all(&folder).unwrap();
    let mut entry_number = 0u64;
    for _ in 0..24 {
        let mut entries = Vec::new();
        let mut length = 0;
        while length < 15 << 20 {
            entry_number += 1;
            let entry = format!(
                r#"{{"id":"{:064x}","sequence":{entry_number},"time":"2026-01-01T00:00:00Z","parent":"{:064x}"}}"#,
                entry_number,
                entry_number + (1 << 40)
            );
            length += entry.len() + 1;
            entries.push(entry);
        }
        let line = format!(
            r#"{{"time":"2026-02-01T00:00:00Z","config_hash":"{}","policy":"keep-last 1","snapshots":[{}]}}"#,
            "0".repeat(64),
            entries.join(",")
        );
        let record = format!("crmvault-forgotten 7\n{line}\n{}\n", "0".repeat(64));
        std::fs::write(folder.join(blake3::hash(record.as_bytes()).to_hex().as_str()), record).unwrap();
    }
    // Keyless: a machine without the writer key (the backup host's verify proves each record
    // and refuses these).
    let keyless = Workspace::new();
    let mut command = keyless.command_for(env!("CARGO_BIN_EXE_crmvault"));
    command.args(["verify", "--repo", &victim.repo]);
    let (code, stdout, peak_kib) = run_measured(command);
    assert!(peak_kib < 300 << 10, "peak {} MiB", peak_kib >> 10);
    assert_eq!(code, 3, "{stdout}");
    assert!(stdout.contains("names more forgotten snapshots than a repository holds"), "{stdout}");
}

/// `copy --repair` reads the indexes a destination snapshot's header names at the sizes the
/// header gives: a header rewritten in storage (its hash line is no MAC) to name large objects
/// planted under `index/` must not have them all read at once (6 × 160 MiB here; 3.2 GB seen
/// with 6 × 512 MiB before reads were held to a budget).
#[test]
fn a_rewritten_header_naming_large_planted_objects_does_not_exhaust_a_repair() {
    let victim = Victim::new("repair_planted");
    let copy = victim.copied();
    let snapshot = files_under(&victim.work.path("copy/snapshots")).pop().unwrap();
    name_large_planted_indexes(&snapshot);
    let mut command = victim.work.command_for(env!("CARGO_BIN_EXE_crmvault"));
    command.args(["copy", "--repair", "--from", &victim.repo, "--to", &copy]);
    let (code, stdout, peak_kib) = run_measured(command);
    assert!(code == 0 || code == 3, "exit {code}: {stdout}");
    assert!(peak_kib < 450 << 10, "peak {} MiB", peak_kib >> 10);
}

/// Plants six objects of 160 MiB, each named by its hash, beside the snapshot object at
/// `snapshot` (under its repository's `index/`), and rewrites its header to name them, as a
/// storage writer can (the hash line after the header needs no key).
fn name_large_planted_indexes(snapshot: &Path) {
    let index = snapshot.parent().unwrap().parent().unwrap().join("index");
    let mut planted = Vec::new();
    for n in 0..6u8 {
        let bytes = vec![n; 160 << 20];
        let id = blake3::hash(&bytes).to_hex().to_string();
        std::fs::write(index.join(&id), &bytes).unwrap();
        planted.push(serde_json::json!({ "id": id, "size": bytes.len() }));
    }
    rewrite_header(snapshot, |header| header["indexes"].as_array_mut().unwrap().extend(planted.iter().cloned()));
}

/// A plain `copy` reads the objects a source snapshot's header names eight at a time, at the
/// sizes the header gives: a header rewritten in storage to name large objects planted beside
/// it (6 × 160 MiB here) must not have them all held at once (~1 GB without a read budget).
#[test]
fn a_rewritten_source_header_naming_large_planted_objects_does_not_exhaust_a_copy() {
    let victim = Victim::new("copy_planted");
    name_large_planted_indexes(&victim.only("snapshots").pop().unwrap());
    let copy = victim.work.path("copy").to_str().unwrap().to_string();
    victim.work.run(&["init", "--repo", &copy, "--copy-from", &victim.repo]).ok();
    let mut command = victim.work.command_for(env!("CARGO_BIN_EXE_crmvault"));
    command.args(["copy", "--from", &victim.repo, "--to", &copy]);
    let (code, stdout, peak_kib) = run_measured(command);
    assert!(code != 101 && code != -1, "exit {code}: {stdout}");
    assert!(peak_kib < 450 << 10, "peak {} MiB", peak_kib >> 10);
}

/// A dictionary a restore needs, replaced in storage by a huge object (sparse here), is
/// refused unread at the size its snapshot's index gives, not read whole into memory first.
#[test]
fn a_huge_object_planted_as_a_dictionary_is_refused_unread_by_a_restore() {
    let victim = Victim::new("huge_dict");
    // A table large enough for its chunks to be compressed with a dictionary of their own.
    victim.source.sql(
        "CREATE TABLE public.notes AS SELECT i AS id, md5(i::text) || md5((i * 3)::text) AS body \
         FROM generate_series(1, 20000) i",
    );
    victim.work.backup(&victim.source, &victim.repo);
    let dictionary = victim.only("dicts").pop().expect("a dictionary");
    std::fs::File::options().write(true).open(&dictionary).unwrap().set_len(1 << 30).unwrap();
    let target = TestDb::create("huge_dict_target");
    victim.work.restore(&victim.repo, &target).fails_with(1, "too large for what it is");
    assert!(target.is_empty());
}

/// Objects whoever writes the storage can replace or add where configs, keys objects and packs
/// live are read no larger than what they hold: a backup to two targets, `verify` and `copy`
/// each read them (1 GiB each here, sparse; a 64 GiB `config` ended a backup to every target,
/// killed for its memory, before reads were bounded), refuse them as damaged, and the targets
/// they spare still get their snapshot.
#[test]
fn large_objects_planted_as_configs_keys_and_packs_are_refused_unread() {
    let victim = Victim::new("planted_configs");
    let copy = victim.copied();
    let huge = |path: &Path| std::fs::File::create(path).unwrap().set_len(1 << 30).unwrap();
    let in_copy = |folder: &str| files_under(&victim.work.path(&format!("copy/{folder}")));
    for n in 0..3u8 {
        huge(&victim.work.path(&format!("copy/configs/{:064x}", u128::from(n) + 0xbad0)));
    }
    huge(&victim.work.path("copy/config"));
    huge(&in_copy("keys")[0]);
    huge(&in_copy("data")[0]);
    let measured = |args: &[&str]| {
        let mut command = victim.work.command_for(env!("CARGO_BIN_EXE_crmvault"));
        command.args(args);
        let (code, stdout, peak_kib) = run_measured(command);
        assert!(peak_kib < 300 << 10, "{args:?}: peak {} MiB: {stdout}", peak_kib >> 10);
        (code, stdout)
    };

    let url = victim.source.url();
    let (code, stdout) =
        measured(&["backup", "--json", "--no-alarm", "--db", &url, "--repo", &victim.repo, "--repo", &copy]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(victim.only("snapshots").len(), 2);
    assert_eq!(in_copy("snapshots").len(), 2);

    let (code, stdout) = measured(&["verify", "--json", "--repo", &copy]);
    assert_eq!(code, 3, "{stdout}");
    for named in ["\"config\"", "configs/000000000000000000000000000000000000000000000000000000000000bad0", "keys/"] {
        assert!(stdout.contains(named), "{named} not reported: {stdout}");
    }
    assert!(stdout.contains("size is 1073741824 bytes"), "{stdout}");

    // A source pack that large, refused by a copy to a new place before it is read.
    let packs = victim.only("data");
    huge(&packs[0]);
    let fresh = victim.work.path("fresh").to_str().unwrap().to_string();
    victim.work.run(&["init", "--repo", &fresh, "--copy-from", &victim.repo]).ok();
    let (code, stdout) = measured(&["copy", "--json", "--from", &victim.repo, "--to", &fresh]);
    assert_ne!(code, 0, "{stdout}");
}

/// An index object made for the public recipients of a repository of format 4 or later, whose
/// plaintext is zstd-compressed JSON (as formats 2 and 3 wrote) naming millions of packs in a
/// few KB: refused before it is decompressed, not parsed whole into memory (~2 GiB seen with
/// 10 million entries) before its missing MAC was found.
#[test]
fn an_index_of_compressed_json_in_a_binary_index_repository_is_not_decompressed() {
    use std::io::Write;
    let victim = Victim::new("json_index");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(victim.file("config")).unwrap()).unwrap();
    let recipients: Vec<age::x25519::Recipient> = config["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .chain(std::iter::once(&config["writer_recipient"]))
        .map(|r| r.as_str().unwrap().parse().unwrap())
        .collect();
    let mut json = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    json.write_all(b"{\"version\":3,\"packs\":[").unwrap();
    let entry = format!("{{\"pack\":{{\"id\":\"{}\",\"size\":1}},\"chunks\":[]}},", "ab".repeat(32));
    let block = entry.repeat(10_000);
    for _ in 0..600 {
        json.write_all(block.as_bytes()).unwrap();
    }
    json.write_all(entry.trim_end_matches(',').as_bytes()).unwrap();
    json.write_all(b"]}").unwrap();
    let ciphertext = crmvault::crypto::encrypt(&recipients, &json.finish().unwrap());
    std::fs::write(victim.file("index").join(blake3::hash(&ciphertext).to_hex().as_str()), &ciphertext).unwrap();

    let mut command = victim.work.command_for(env!("CARGO_BIN_EXE_crmvault"));
    command.args(["backup", "--json", "--no-alarm", "--db", &victim.source.url(), "--repo", &victim.repo]);
    let (code, stdout, peak_kib) = run_measured(command);
    assert_eq!(code, 0, "{stdout}");
    assert!(peak_kib < 300 << 10, "backup: peak {} MiB", peak_kib >> 10);
    let mut command = victim.work.command_for(env!("CARGO_BIN_EXE_crmvault"));
    command.args(["verify", "--json", "--repo", &victim.repo, "--identity", &victim.work.admin_key()]);
    let (code, stdout, peak_kib) = run_measured(command);
    assert_eq!(code, 3, "{stdout}");
    assert!(stdout.contains("not an index of this repository's format"), "{stdout}");
    assert!(peak_kib < 300 << 10, "verify: peak {} MiB", peak_kib >> 10);
}

/// Configs planted to claim to follow the repository's (generation 1, naming its config as
/// their predecessor, unsigned), each as large as a config may be with what a reader keeps of
/// it (a carried list of 200,000 hashes): every command that opens the repository reads them,
/// and must hold none of them beyond the check of its signature (all were held, parsed, before).
#[test]
fn configs_planted_to_follow_the_repositorys_are_not_all_held_by_whoever_opens_it() {
    let victim = Victim::new("planted_successors");
    let bytes = std::fs::read(victim.file("config")).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    config["generation"] = 1.into();
    config["previous"] = blake3::hash(&bytes).to_hex().to_string().into();
    for n in 0..16u64 {
        config["carried"] = (0..200_000u64).map(|i| format!("{:064x}", n << 32 | i)).collect();
        let planted = serde_json::to_vec(&config).unwrap();
        std::fs::write(victim.file("configs").join(blake3::hash(&planted).to_hex().as_str()), planted).unwrap();
    }
    let mut command = victim.work.command_for(env!("CARGO_BIN_EXE_crmvault"));
    command.args(["backup", "--json", "--no-alarm", "--db", &victim.source.url(), "--repo", &victim.repo]);
    let (code, stdout, peak_kib) = run_measured(command);
    assert_eq!(code, 0, "{stdout}");
    assert!(peak_kib < 200 << 10, "peak {} MiB", peak_kib >> 10);
}
