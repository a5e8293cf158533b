//! Trust rooted outside the storage: the repository fingerprint and the pins that hold it.
//!
//! Whoever can write to the storage knows everything public in it (recipients, config, object
//! names) and can make age ciphertexts for the public recipients, so nothing read from storage
//! is believed because it decrypts. It is believed because it chains to something the storage
//! does not hold (docs/FORMAT.md, *Trust*):
//! - the **fingerprint**: the BLAKE3 of the repository's first `config`, which names its keys
//!   objects by their hashes. `init` prints it; admins keep it beside their identity; every
//!   admin command checks the repository against it (given with `--fingerprint`, or remembered
//!   here from an earlier use).
//! - the **pin** on the backup host: `init` remembers the exact config (hence recipients and
//!   keys) it wrote; `backup` refuses a repository whose config changed.
//! - the **high-water mark**: the newest snapshot (by sequence) this machine wrote or
//!   authenticated, so that a snapshot deleted from storage is noticed even when it was the
//!   newest one.
//!
//! This module is pure: the CLI decides where the pin file lives and when to save it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many bytes of the first config's BLAKE3 a fingerprint shows (128 bits: finding another
/// config with the same fingerprint is a second preimage, about 2^128 hashes).
pub const FINGERPRINT_BYTES: usize = 16;

/// A repository's fingerprint: the start of the BLAKE3 of its first config object.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; FINGERPRINT_BYTES]);

impl Fingerprint {
    /// The fingerprint of a repository whose first config hashes (BLAKE3, hex) to `config_hash`.
    pub fn of_config_hash(config_hash: &str) -> Result<Fingerprint> {
        let mut bytes = [0u8; FINGERPRINT_BYTES];
        hex::decode_to_slice(config_hash.get(..2 * FINGERPRINT_BYTES).unwrap_or(""), &mut bytes)
            .map_err(|_| Error::Invalid(format!("{config_hash:?} is not a BLAKE3 hash")))?;
        Ok(Fingerprint(bytes))
    }

    /// The 32 lowercase hex digits: the start of the config hash it names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses what a person typed: 32 hex digits, dashes and spaces anywhere, any case.
    pub fn parse(text: &str) -> Result<Fingerprint> {
        let digits: String = text.chars().filter(|c| !matches!(c, '-' | ' ' | ':')).collect();
        let mut bytes = [0u8; FINGERPRINT_BYTES];
        if digits.len() != 2 * FINGERPRINT_BYTES || hex::decode_to_slice(&digits, &mut bytes).is_err() {
            return Err(Error::Invalid(format!(
                "{text:?} is not a repository fingerprint (32 hex digits, as `crmvault init` and \
                 `crmvault fingerprint` print them: xxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxx)"
            )));
        }
        Ok(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = hex::encode(self.0);
        let groups: Vec<&str> = (0..digits.len()).step_by(4).map(|at| &digits[at..at + 4]).collect();
        f.write_str(&groups.join("-"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Fingerprint::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A snapshot's place in its repository's chain: what the high-water mark remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMark {
    /// Snapshot id.
    pub id: crate::repo::SnapshotId,
    /// Its sequence number (one more than its predecessor's).
    pub sequence: u64,
    /// Its time.
    pub time: chrono::DateTime<chrono::Utc>,
}

/// What one machine remembers of one repository (`repos/<id>/trust.json` in the config folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    /// The repository id (also the folder's name).
    pub repository_id: String,
    /// The fingerprint the repository must have.
    pub fingerprint: Fingerprint,
    /// BLAKE3 of the exact config this machine last accepted (the backup host's pin of
    /// recipients and keys).
    pub config_hash: String,
    /// The newest snapshot this machine wrote or authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<SnapshotMark>,
    /// Where this machine has opened the repository: a location that later claims to be
    /// another repository was replaced. Places ([`crate::target::place`]), absolute, so that a
    /// relative `--repo` given from another folder is another place (pins written before kept
    /// locations as given: a relative one is read from the current folder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<String>,
    /// Snapshots the last backup on this machine looked at and found no newer than `newest`
    /// (or older, by their headers' times, than one that proved itself): the next backup reads
    /// only the others to find its predecessor. Meaningless without `newest`, and written with
    /// it in one replacement of the file, so that it never names a snapshot newer than `newest`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub settled: std::collections::BTreeSet<crate::repo::SnapshotId>,
    /// Snapshots a backup here stored on other targets but not on these (location → the
    /// snapshots it missed): the next backup that reaches such a target records them there
    /// ([`crate::repo::RecordKind::Missed`]), so that its `verify` tells them from deleted ones.
    /// Only this host knows it: the target's listing cannot tell a snapshot it never got from
    /// one deleted from it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub missed: std::collections::BTreeMap<String, Vec<crate::repo::ForgottenSnapshot>>,
    /// The config hash of the generation a `rekey` on this machine was about to publish after
    /// `config_hash`, written before it published anything and cleared when the pin follows:
    /// the one successor of the pinned generation this machine accepts until then. A rekey
    /// interrupted before it reached every target, run again, must finish its own generation,
    /// not follow another successor that a removed admin (who kept the pinned generation's
    /// signing key) planted on a target it never reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// The config hash of the newest generation this machine vouched for by more than a
    /// signature: one its own `rekey` published, or one a `--fingerprint` given here named
    /// (with the generation [`Pin::fingerprint`] names, which `init` or a fingerprint given on
    /// first use set). `config_hash` may have moved past it by signatures alone, which a
    /// removed admin who kept an older generation's keys can make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouched: Option<String>,
    /// The config hash of the newest generation this machine took by signatures alone while
    /// it did not hold the repository's writer key (an admin's machine, whose rule lets one
    /// target's word move its pin, or a first pin from an earlier generation's fingerprint),
    /// until a generation at or after it is vouched for ([`Pin::vouched`]). A removed admin
    /// who kept an older generation's keys can sign such a generation where they write; a
    /// machine holding the writer key (this pin copied to a backup host, or the key installed
    /// here since) writes under none until the head's fingerprint is given. Pins written
    /// before it was kept hold none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchecked: Option<String>,
}

impl Pin {
    /// Whether this machine vouched for the generation whose config hashes to `hash` beyond
    /// its signature ([`Pin::vouched`], or the generation the pin's fingerprint names).
    pub fn vouches(&self, hash: &str) -> bool {
        self.vouched.as_deref() == Some(hash) || Fingerprint::of_config_hash(hash).is_ok_and(|f| f == self.fingerprint)
    }

    /// Whether the pin's generation was taken by signatures alone on a machine without the
    /// writer key and nothing vouched for it since ([`Pin::unchecked`]), as seen on `chain`
    /// (a copy's generations, oldest first): a generation at or after the unchecked one that
    /// this pin vouches for, or `also` vouches for (a fingerprint given), checks it.
    pub fn unchecked_on(&self, chain: &[String], also: impl Fn(&str) -> bool) -> bool {
        let Some(unchecked) = &self.unchecked else { return false };
        let Some(at) = chain.iter().position(|hash| hash == unchecked) else { return true };
        !chain[at..].iter().any(|hash| self.vouches(hash) || also(hash))
    }

    /// Whether this machine has opened the repository at `location`.
    pub fn knows(&self, location: &str) -> bool {
        self.locations.iter().any(|known| crate::target::same_place(known, location))
    }

    /// Remembers each of `locations` as a place of the repository; false when all were known.
    pub fn add_locations<'a>(&mut self, locations: impl IntoIterator<Item = &'a String>) -> bool {
        locations.into_iter().fold(false, |changed, location| self.add_location(location) | changed)
    }

    /// Remembers `location` as a place of the repository; false when it was known.
    pub fn add_location(&mut self, location: &str) -> bool {
        if self.knows(location) {
            return false;
        }
        self.locations.push(crate::target::place(location));
        true
    }

    /// After a backup: at each target it reached, the snapshots it recorded there are missed no
    /// more; at each it did not reach (`location`, not stored), `this` is missed too. Made on
    /// the pin as it is on disk now, so that what another backup noted since is kept.
    pub fn note_backup<'a>(
        &mut self,
        targets: impl IntoIterator<Item = (&'a str, bool, &'a [crate::repo::SnapshotId])>,
        this: &crate::repo::ForgottenSnapshot,
    ) {
        for (location, stored, recorded) in targets {
            let mut snapshots = missed_at(&self.missed, location);
            self.missed.retain(|known, _| !crate::target::same_place(known, location));
            snapshots.retain(|s| !recorded.contains(&s.id));
            if !stored && !snapshots.iter().any(|s| s.id == this.id) {
                snapshots.push(this.clone());
            }
            if !snapshots.is_empty() {
                self.missed.insert(crate::target::place(location), snapshots);
            }
        }
    }

    /// Raises the high-water mark to `mark` if it is newer; true when it changed.
    pub fn advance(&mut self, mark: &SnapshotMark) -> bool {
        if !self.would_advance(mark) {
            return false;
        }
        self.newest = Some(mark.clone());
        true
    }

    /// Whether `mark` is newer than the mark held ([`Pin::advance`] would move to it).
    pub fn would_advance(&self, mark: &SnapshotMark) -> bool {
        self.newest.as_ref().is_none_or(|newest| newest.sequence < mark.sequence)
    }
}

/// The snapshots `missed` ([`Pin::missed`]) says backups did not store at `location`, under
/// any spelling of its place, oldest first, each once.
pub fn missed_at(
    missed: &std::collections::BTreeMap<String, Vec<crate::repo::ForgottenSnapshot>>,
    location: &str,
) -> Vec<crate::repo::ForgottenSnapshot> {
    let mut snapshots: Vec<crate::repo::ForgottenSnapshot> = missed
        .iter()
        .filter(|(known, _)| crate::target::same_place(known, location))
        .flat_map(|(_, snapshots)| snapshots.iter().cloned())
        .collect();
    snapshots.sort_by_key(|s| s.sequence);
    snapshots.dedup_by(|a, b| a.id == b.id);
    snapshots
}

/// The ids of the repositories (other than `except`) this machine keeps a folder for.
fn other_repositories(config_dir: &Path, except: Option<&str>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(config_dir.join("repos")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|id| Some(id.as_str()) != except)
        .collect()
}

/// This machine's pins, as what it remembers of the places it opens
/// ([`crate::repo_set::Places`]).
pub struct Pins<'a>(pub Option<&'a Path>);

impl crate::repo_set::Places for Pins<'_> {
    fn held_before(&self, location: &str) -> Option<String> {
        held_before(self.0?, location)
    }

    fn pinned_configs(&self, location: &str) -> Vec<String> {
        let Some(config_dir) = self.0 else { return Vec::new() };
        pins_at(config_dir, location).map(|pin| pin.config_hash).collect()
    }
}

/// The pins here that know `location` (those that do not read are passed over).
fn pins_at<'a>(config_dir: &'a Path, location: &'a str) -> impl Iterator<Item = Pin> + 'a {
    other_repositories(config_dir, None)
        .into_iter()
        .filter_map(move |id| load_pin(config_dir, &id).ok().flatten())
        .filter(move |pin| pin.knows(location))
}

/// What this machine remembers of the repository it last opened at `location`, said when
/// `location` holds none now: a place emptied or moved in storage is not a new place, and
/// "run `crmvault init` first" would have the admin start over where the backups were.
pub fn held_before(config_dir: &Path, location: &str) -> Option<String> {
    // Of several pins naming it (older pins, kept before `init` took places out of them), the
    // one that saw the newest snapshot there.
    let pin = pins_at(config_dir, location).max_by_key(|pin| pin.newest.as_ref().map(|mark| mark.time))?;
    Some(format!(
        "it held repository {}{} when this machine last opened it: unless it was emptied or moved on purpose (or \
         is not mounted, or another endpoint answered), its backups were deleted in storage (another copy may \
         hold them; `crmvault init` there would start a new repository)",
        pin.repository_id,
        newest_seen(&pin)
    ))
}

/// ", newest snapshot seen there: ID, TIME" of a pin that saw one.
fn newest_seen(pin: &Pin) -> String {
    pin.newest.as_ref().map_or_else(String::new, |mark| {
        format!(" (newest snapshot seen there: {}, {})", mark.id.short(), mark.time.format("%Y-%m-%d %H:%M UTC"))
    })
}

/// The pins of repositories other than `repository_id` that this machine opened at `location`
/// before.
fn pins_of_location(config_dir: &Path, location: &str, repository_id: &str) -> Vec<Pin> {
    other_repositories(config_dir, Some(repository_id))
        .iter()
        .filter_map(|id| load_pin(config_dir, id).ok().flatten())
        .filter(|pin| pin.knows(location))
        .collect()
}

/// The pin of a repository other than `repository_id` that this machine opened at `location`
/// before, if any.
pub fn pin_of_location(config_dir: &Path, location: &str, repository_id: &str) -> Result<Option<Pin>> {
    Ok(pins_of_location(config_dir, location, repository_id).into_iter().next())
}

/// Whether this machine pins a repository other than `repository_id`.
pub fn pins_another(config_dir: &Path, repository_id: &str) -> bool {
    other_repositories(config_dir, Some(repository_id)).iter().any(|id| pin_path(config_dir, id).exists())
}

/// Where a repository's pin lives under a config folder.
pub fn pin_path(config_dir: &Path, repository_id: &str) -> PathBuf {
    config_dir.join("repos").join(repository_id).join("trust.json")
}

/// Reads the pin of `repository_id`, if this machine has one.
pub fn load_pin(config_dir: &Path, repository_id: &str) -> Result<Option<Pin>> {
    let path = pin_path(config_dir, repository_id);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io(&path, error)),
    };
    let pin: Pin = serde_json::from_slice(&text).map_err(|e| Error::BadPin {
        path: path.clone(),
        detail: format!("damaged ({e}); remove it and pin the repository again"),
    })?;
    if pin.repository_id != repository_id {
        return Err(Error::BadPin { path, detail: "names another repository; remove it".into() });
    }
    // Shown shortened in messages: a hand-edited hash must be refused here, not cut there.
    if !crate::repo::is_object_hash(&pin.config_hash) {
        return Err(Error::BadPin {
            path,
            detail: "damaged (its config_hash is not a hash); remove it and pin the repository again".into(),
        });
    }
    Ok(Some(pin))
}

/// Writes a pin (mode 0600, replacing the previous one atomically: a crash leaves the old or
/// the new file, never half of one).
pub fn save_pin(config_dir: &Path, pin: &Pin) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(pin).expect("serialisable");
    text.push(b'\n');
    replace_private_file(&pin_path(config_dir, &pin.repository_id), &text)
}

/// Changes the pin on disk as `change` says and saves it when `change` returns true, holding an
/// exclusive lock on the repository's folder here from reading it to replacing it: commands
/// on one machine (two backups of different databases, a verify during a backup) each change
/// the pin as the other left it, and neither undoes the other's change (a mark moved back, a
/// missed snapshot forgotten). `pin` is what the command opened with, used when the file is
/// gone (or names another repository), and becomes the pin as saved.
pub fn update_pin(config_dir: &Path, pin: &mut Pin, change: impl FnOnce(&mut Pin) -> bool) -> Result<()> {
    let path = pin_path(config_dir, &pin.repository_id);
    let _lock = lock_folder(path.parent().expect("a pin is in a folder"))?;
    if let Ok(Some(now)) = load_pin(config_dir, &pin.repository_id) {
        *pin = now;
    }
    if change(pin) {
        save_pin(config_dir, pin)?;
    }
    Ok(())
}

/// Saves `pin` as this machine's first pin of its repository, under the same lock as
/// [`update_pin`]: when another command pinned the repository meanwhile (two first uses at
/// once), its pin stays, with `pin`'s places added, and is returned; one naming another
/// fingerprint is refused (run again: the command then checks against it).
pub fn create_pin(config_dir: &Path, pin: Pin) -> Result<Pin> {
    let path = pin_path(config_dir, &pin.repository_id);
    let _lock = lock_folder(path.parent().expect("a pin is in a folder"))?;
    match load_pin(config_dir, &pin.repository_id)? {
        None => {
            save_pin(config_dir, &pin)?;
            Ok(pin)
        }
        Some(mut now) if now.fingerprint == pin.fingerprint => {
            if now.add_locations(&pin.locations) {
                save_pin(config_dir, &now)?;
            }
            Ok(now)
        }
        Some(now) => Err(Error::BadPin {
            path,
            detail: format!(
                "another command pinned the repository with fingerprint {} meanwhile, not {}: run again",
                now.fingerprint, pin.fingerprint
            ),
        }),
    }
}

/// Takes `location` out of every pin here but `repository_id`'s: `init` made a repository
/// there, so the one this machine knew there is gone (a folder or bucket emptied and used
/// again). Left in, that pin would have every command refuse the place as replaced.
pub fn release_location(config_dir: &Path, location: &str, repository_id: &str) -> Result<()> {
    for mut pin in pins_of_location(config_dir, location, repository_id) {
        update_pin(config_dir, &mut pin, |pin| {
            let before = pin.locations.len();
            pin.locations.retain(|known| !crate::target::same_place(known, location));
            pin.locations.len() != before
        })?;
        let (id, newest) = (&pin.repository_id, newest_seen(&pin));
        tracing::warn!(
            "{location} held repository {id}{newest} when this machine last used it; init made a new repository \
             there, so it is no longer a place of {id} here: if you did not empty it yourself, its history there \
             was deleted in storage"
        );
    }
    Ok(())
}

/// Forgets each of `locations` as a place of every repository this machine pins there (targets
/// retired for good: `crmvault retire-target`). A machine with the writer key follows a new
/// generation by its signature only where every place its pin knows is checked, so a place gone
/// for good stopped that until a fingerprint was given. Every location is checked before any
/// pin changes: one that no pin knows (a typo) is refused, naming the places known, and so is
/// one that would leave a pin knowing no place (such a pin no longer asks which repository a
/// new place holds, which a storage writer could use to have another repository's backups
/// written into this one). The nights noted as missed there stay noted (given again, the
/// target records them). Returns (place, repository id) for each place forgotten. Storage is
/// not touched.
pub fn retire_locations(config_dir: &Path, locations: &[String]) -> Result<Vec<(String, String)>> {
    let mut pins = Vec::new();
    for id in other_repositories(config_dir, None) {
        if let Some(pin) = load_pin(config_dir, &id)? {
            pins.push(pin);
        }
    }
    let mut places: Vec<String> = Vec::new();
    for location in locations {
        crate::target::Location::parse(location)?;
        let place = crate::target::place(location);
        if places.contains(&place) {
            continue;
        }
        if !pins.iter().any(|pin| pin.knows(&place)) {
            let known: Vec<&str> = pins.iter().flat_map(|pin| pin.locations.iter().map(String::as_str)).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(Error::Invalid(format!(
                "{place} is not a place of any repository this machine pins (the places it knows: {known}); nothing \
                 was changed"
            )));
        }
        places.push(place);
    }
    let retiring = |known: &String| places.iter().any(|place| crate::target::same_place(known, place));
    // Each pin that knows one of them, with the ones it knows.
    let mut changes = Vec::new();
    for pin in pins {
        let knew: Vec<&String> = places.iter().filter(|place| pin.knows(place)).collect();
        if knew.is_empty() {
            continue;
        }
        if pin.locations.iter().all(retiring) {
            return Err(Error::Invalid(format!(
                "that would leave this machine's pin of repository {} knowing no place of it: retire a target only \
                 once another one is backed up to (and known here); to stop using the repository on this machine, \
                 move {} away; nothing was changed",
                pin.repository_id,
                pin_path(config_dir, &pin.repository_id).display()
            )));
        }
        changes.push((pin, knew));
    }
    let mut retired = Vec::new();
    for (mut pin, knew) in changes {
        update_pin(config_dir, &mut pin, |pin| {
            let before = pin.locations.len();
            pin.locations.retain(|known| !knew.iter().any(|place| crate::target::same_place(known, place)));
            pin.locations.len() != before
        })?;
        retired.extend(knew.into_iter().map(|place| (place.clone(), pin.repository_id.clone())));
    }
    Ok(retired)
}

/// An exclusive advisory lock on `folder` (made if missing), held until the file is dropped:
/// around a read, change and write of a file in it, so that another process's change made
/// meanwhile is not written over. Only crmvault takes it, for moments.
pub fn lock_folder(folder: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
    let handle = std::fs::File::open(folder).map_err(|e| Error::io(folder, e))?;
    handle.lock().map_err(|e| Error::io(folder, e))?;
    Ok(handle)
}

/// Reads a file a command keeps beside a repository's pin (remembered labels, sparse packs):
/// JSON naming the fingerprint it was written for (`fingerprint_of`). `None` when it is
/// missing, damaged, or names a fingerprint `accepts` does not (another repository's; a
/// repository accepts those of the generations it was opened through); said at debug level,
/// since such files save work and prove nothing.
pub fn read_beside_pin<T: serde::de::DeserializeOwned>(
    path: &Path,
    fingerprint_of: impl Fn(&T) -> &Fingerprint,
    accepts: impl Fn(&Fingerprint) -> bool,
) -> Option<T> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice::<T>(&text) {
        Ok(stored) if accepts(fingerprint_of(&stored)) => Some(stored),
        Ok(_) => {
            tracing::debug!("{}: another repository's, not used", path.display());
            None
        }
        Err(error) => {
            tracing::debug!("{}: damaged ({error}), not used", path.display());
            None
        }
    }
}

/// Replaces a file kept beside a pin ([`read_beside_pin`]) with `contents` as JSON
/// ([`replace_private_file`]); a failure is said at debug level: the next command does the
/// work the file would have saved.
pub fn write_beside_pin(path: &Path, contents: &impl Serialize) {
    let text = serde_json::to_vec(contents).expect("a file beside a pin serialises");
    if let Err(error) = replace_private_file(path, &text) {
        tracing::debug!("{}: not saved: {error}", path.display());
    }
}

/// Replaces `path` with `contents`, mode 0600, atomically (written beside it, synced, renamed
/// over it, the folder synced): a crash leaves the old file or the new one.
pub fn replace_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    /// Staging files made by this process: each write its own (threads write at once too).
    static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let folder = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
    let name = path.file_name().expect("a file name").to_string_lossy();
    let staged = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = folder.join(format!(".{name}.{}.{staged}", std::process::id()));
    let written = (|| {
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&staging)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&staging, path)?;
        std::fs::File::open(folder)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&staging);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_reads_back_from_how_it_is_shown_and_refuses_anything_else() {
        let hash = blake3::hash(b"config").to_hex().to_string();
        let fingerprint = Fingerprint::of_config_hash(&hash).unwrap();
        let shown = fingerprint.to_string();
        assert_eq!(shown.len(), 39, "{shown}");
        assert_eq!(shown.replace('-', ""), hash[..32]);
        assert_eq!(Fingerprint::parse(&shown).unwrap(), fingerprint);
        assert_eq!(Fingerprint::parse(&shown.to_uppercase().replace('-', " ")).unwrap(), fingerprint);
        for bad in ["", "abcd", &shown[1..], &format!("{shown}0"), &shown.replace('a', "g")] {
            if bad.chars().any(|c| c == 'g') || bad.len() != shown.len() {
                assert!(Fingerprint::parse(bad).is_err(), "{bad}");
            }
        }
    }

    /// A pin of repository "r1" with nothing remembered yet.
    fn new_pin() -> Pin {
        Pin {
            repository_id: "r1".into(),
            fingerprint: Fingerprint::of_config_hash(&blake3::hash(b"c").to_hex()).unwrap(),
            config_hash: blake3::hash(b"c").to_hex().to_string(),
            newest: None,
            locations: vec![],
            settled: std::collections::BTreeSet::new(),
            missed: std::collections::BTreeMap::new(),
            pending: None,
            vouched: None,
            unchecked: None,
        }
    }

    #[test]
    fn retiring_targets_checks_every_one_before_any_pin_changes() {
        let dir = tempfile::tempdir().unwrap();
        let missed = crate::repo::ForgottenSnapshot {
            id: crate::repo::SnapshotId::of(b"s"),
            sequence: 3,
            time: chrono::Utc::now(),
            parent: None,
        };
        let pin = Pin {
            locations: vec!["/srv/a".into(), "/srv/b".into(), "s3://bucket/crm http://127.0.0.1:9000".into()],
            missed: [("/srv/b".to_string(), vec![missed])].into(),
            ..new_pin()
        };
        save_pin(dir.path(), &pin).unwrap();
        let on_disk = || load_pin(dir.path(), "r1").unwrap().unwrap();
        let retire = |locations: &[&str]| {
            retire_locations(dir.path(), &locations.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        // A typo beside a real one: refused, naming what is known; nothing changed.
        let error = retire(&["/srv/b", "/srv/typo"]).unwrap_err().to_string();
        assert!(error.contains("/srv/typo is not a place") && error.contains("/srv/a, /srv/b"), "{error}");
        assert_eq!(on_disk().locations, pin.locations);
        // Every place: refused.
        let every = ["/srv/a", "/srv/b/", "s3://bucket/crm?endpoint=http://127.0.0.1:9000/"];
        assert!(retire(&every).unwrap_err().to_string().contains("knowing no place"));
        assert_eq!(on_disk().locations, pin.locations);
        // The same place twice, spelled two ways: once; the nights missed there stay noted.
        assert_eq!(retire(&["/srv/b/", "file:///srv/b"]).unwrap(), vec![("/srv/b".to_string(), "r1".to_string())]);
        assert_eq!(on_disk().locations, vec!["/srv/a".to_string(), pin.locations[2].clone()]);
        assert_eq!(on_disk().missed, pin.missed);
    }

    #[test]
    fn a_pin_whose_config_hash_was_edited_by_hand_is_refused_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        for hash in ["h", "é".repeat(32).as_str(), &"0".repeat(63)] {
            save_pin(dir.path(), &Pin { config_hash: hash.to_string(), ..new_pin() }).unwrap();
            let error = load_pin(dir.path(), "r1").unwrap_err();
            assert!(error.to_string().contains("config_hash is not a hash"), "{hash}: {error}");
        }
        save_pin(dir.path(), &new_pin()).unwrap();
        assert!(load_pin(dir.path(), "r1").unwrap().is_some());
    }

    #[test]
    fn commands_changing_the_pin_at_once_each_keep_the_others_change() {
        // Sixteen commands of one machine (threads here: the lock is per open folder, so
        // threads exclude each other as processes do) each add their location to one pin,
        // starting from the pin as they opened it, empty: every location is kept.
        let dir = tempfile::tempdir().unwrap();
        save_pin(dir.path(), &new_pin()).unwrap();
        std::thread::scope(|scope| {
            for n in 0..16 {
                let dir = dir.path();
                scope.spawn(move || {
                    for round in 0..8 {
                        let mut opened = new_pin();
                        update_pin(dir, &mut opened, |pin| {
                            pin.locations.push(format!("/srv/{n}/{round}"));
                            true
                        })
                        .unwrap();
                    }
                });
            }
        });
        let pin = load_pin(dir.path(), "r1").unwrap().unwrap();
        assert_eq!(pin.locations.len(), 16 * 8, "{:?}", pin.locations);
    }

    #[test]
    fn a_pin_is_saved_private_and_its_mark_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let mut pin = new_pin();
        let mark = |sequence| SnapshotMark {
            id: format!("{sequence:064x}").parse().unwrap(),
            sequence,
            time: chrono::Utc::now(),
        };
        assert!(pin.advance(&mark(3)));
        assert!(!pin.advance(&mark(2)));
        assert!(!pin.advance(&mark(3)));
        save_pin(dir.path(), &pin).unwrap();
        let path = pin_path(dir.path(), "r1");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let read = load_pin(dir.path(), "r1").unwrap().unwrap();
        assert_eq!(read.newest.unwrap().sequence, 3);
        assert!(load_pin(dir.path(), "r2").unwrap().is_none());
        std::fs::write(&path, b"{").unwrap();
        assert!(load_pin(dir.path(), "r1").unwrap_err().to_string().contains("damaged"));
    }

    #[test]
    fn a_backup_notes_the_targets_it_missed_and_forgets_what_it_recorded_keeping_the_rest() {
        let snapshot = |sequence: u64| crate::repo::ForgottenSnapshot {
            id: format!("{sequence:064x}").parse().unwrap(),
            sequence,
            time: "2026-12-01T01:00:00Z".parse().unwrap(),
            parent: None,
        };
        let mut pin = new_pin();
        // Noted by another backup, under another spelling of the place.
        pin.missed.insert("/srv/b/".to_string(), vec![snapshot(4)]);
        // This backup (number 5) reached /srv/a, missed s3://bucket/c and did not name /srv/b.
        let none: &[crate::repo::SnapshotId] = &[];
        pin.note_backup([("/srv/a", true, none), ("s3://bucket/c?retries=3", false, none)], &snapshot(5));
        assert_eq!(pin.missed.len(), 2, "{:?}", pin.missed);
        assert_eq!(pin.missed["/srv/b/"], vec![snapshot(4)]);
        assert_eq!(pin.missed["s3://bucket/c"], vec![snapshot(5)]);
        // Number 6 reaches /srv/b, recording 4 there, and misses the bucket again.
        let recorded = [snapshot(4).id];
        pin.note_backup([("/srv/b", true, &recorded[..]), ("s3://bucket/c", false, none)], &snapshot(6));
        assert_eq!(pin.missed.len(), 1, "{:?}", pin.missed);
        assert_eq!(pin.missed["s3://bucket/c"], vec![snapshot(5), snapshot(6)]);
    }
}
