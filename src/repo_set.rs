//! The copies of one repository a command was given (several targets, each complete on its
//! own): which of them opened, the keys any of them unlocks, a snapshot looked for across all
//! of them. Every rule about several targets is written here once:
//!
//! - A command that can work with some of the copies (backup, restore, verify) opens what it
//!   can: a target that cannot be opened is left out and named, and the command goes on with
//!   the others. With one target, its error is the error; when none opens, every reason is.
//!   A command that changes or compares every copy (rekey, snapshots, copy, fingerprint)
//!   opens them all or fails.
//! - Copies are copies: one repository, at one generation of its keys. A rekey that did not
//!   reach every target is for an admin to finish, not for a backup to write past.
//! - Keys unlock from the first copy whose keys object reads: a wrong key is wrong on every
//!   copy, a damaged keys object is damaged on one.
//! - A snapshot is looked for on every copy; `latest` is the newest any of them holds of one
//!   database (the one named, or the only one present), and a
//!   restore reads each chunk from the first copy that has it ([`crate::fetch::Source`]).
//! - What fails on one copy of several is a warning naming the copy; the command's report
//!   says per target what happened ([`EachCopy`] for work done on each copy on its own).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::fetch::Source;
use crate::label_cache::{LabelCache, Labels};
use crate::repo::{AdminKeyring, FilterTally, Keyring, Manifest, Repository, SnapshotFilter, SnapshotId};
use crate::target::Target;
use crate::trust::SnapshotMark;

/// Manifests `latest` reads at once (those it does not remember the labels of).
const MANIFESTS_AHEAD: usize = 16;
/// The same when a copy is not a local folder, where each is two round trips (its size, then
/// its bytes, within [`crate::repo::READ_BUDGET`]): a year of snapshots on a machine that never
/// opened them (the admin's after an incident) took 1.8 s to order at 20 ms a request.
const REMOTE_MANIFESTS_AHEAD: usize = 32;

/// Each copy's listing of its snapshots with their objects' sizes (in the copies' order).
type Listed = Vec<HashMap<SnapshotId, u64>>;

/// Refuses two locations that lead to one storage: a backup took both locks of one folder and
/// waited for itself until `--lock-wait` ran out, naming its own process as the holder.
fn refuse_one_storage_twice(repositories: &[Repository]) -> Result<()> {
    for (at, repository) in repositories.iter().enumerate() {
        let storage = repository.target.storage();
        if let Some(earlier) = repositories[..at].iter().find(|earlier| earlier.target.storage() == storage) {
            return Err(Error::SameTargetTwice {
                first: earlier.target.location().to_string(),
                second: repository.target.location().to_string(),
                storage,
            });
        }
    }
    Ok(())
}

/// What the caller's machine remembers of the places it opens (on the CLI, its pins:
/// [`crate::trust::Pins`]). A closure is what the place held, nothing else.
pub trait Places {
    /// What the place held when this machine last opened it, said when it holds no repository
    /// now, instead of advice to `init` there ([`crate::trust::held_before`]).
    fn held_before(&self, location: &str) -> Option<String>;
    /// The configs (by hash) this machine pinned of the repositories it opened there.
    fn pinned_configs(&self, _location: &str) -> Vec<String> {
        Vec::new()
    }
}

impl<F: Fn(&str) -> Option<String>> Places for F {
    fn held_before(&self, location: &str) -> Option<String> {
        self(location)
    }
}

/// Opens the repository at `target`; when its `config` does not open (missing, junk, of a
/// format no build knows) and opening from what `configs/` holds is ambiguous, at a config the
/// caller's machine pinned there, from its copy `configs/<hash>`, if whole. Whether the
/// repository is then trusted is the caller's trust check, as for any copy: this only finds
/// the copy a storage writer's junk `config` and a planted second first generation hid.
async fn open_remembered(target: Target, places: &impl Places) -> Result<Repository> {
    match Repository::open(target.clone()).await {
        Err(error @ (Error::NotARepository { .. } | Error::Corrupt { .. } | Error::UnsupportedFormat { .. })) => {
            for hash in places.pinned_configs(target.location()) {
                if let Ok(repository) = Repository::open_at(target.clone(), &hash).await {
                    tracing::warn!(
                        "{}: {error}; opened at configs/{hash}, which this machine pinned (`crmvault verify` reports it)",
                        target.location()
                    );
                    return Ok(repository);
                }
            }
            Err(error)
        }
        other => other,
    }
}

/// Refuses copies of one repository whose chains of configs part: each copy must be on the
/// chain of the copy of its id at the newest generation (one behind it, left by an interrupted
/// rekey, is). A removed admin who kept a signing key and can write one copy's storage forks
/// the chain there; a command that checks its copies one at a time would follow the fork on
/// the first and find the good one "changed" after it. Nothing is read from either.
pub fn refuse_forked_copies(repositories: &[Repository]) -> Result<()> {
    let mut newest_first: Vec<&Repository> = repositories.iter().collect();
    newest_first.sort_by_key(|r| std::cmp::Reverse(r.config.generation));
    for (at, repository) in newest_first.iter().enumerate() {
        let Some(newest) = newest_first[..at].iter().find(|r| r.config.id == repository.config.id) else { continue };
        if !newest.has_generation(&repository.config_hash) {
            return Err(Error::CopiesDisagree {
                id: repository.config.id.clone(),
                newest: newest.target.location().to_string(),
                newest_generation: newest.config.generation,
                other: repository.target.location().to_string(),
                other_generation: repository.config.generation,
                other_config: repository.config_hash.chars().take(12).collect(),
            });
        }
    }
    Ok(())
}

/// The snapshots a selector names, to try in order ([`RepoSet::resolve_snapshot`]).
#[derive(Debug)]
pub struct Resolved {
    /// Newest first: those whose manifests opened (an id prefix: its one snapshot).
    pub ids: Vec<SnapshotId>,
    /// For `latest`, the listed snapshots whose manifests did not open anywhere (damaged,
    /// forged, of a newer format, not to this key, unreadable) and that may be newer than the
    /// first of `ids`: their header's time is later, or unknown. Their database is unknown, so
    /// they are never chosen, nor left out unsaid: a restore names each with why.
    pub unreadable: Vec<Unreadable>,
    /// Those of `ids` ordered by labels this machine remembered ([`RepoSet::remember_labels`]),
    /// not read this time: one that does not open now is passed over as an unreadable one
    /// would have been.
    pub remembered: HashSet<SnapshotId>,
}

/// Snapshots that do not open named one by one ([`Resolved::passed_over`]); more are counted.
const UNREADABLE_NAMED: usize = 5;

impl Resolved {
    /// What a command that takes the first of `ids` says of `unreadable`: a few named with
    /// why, the rest counted.
    pub fn passed_over(&self) -> Vec<String> {
        let all =
            (self.unreadable.iter()).map(|skipped| format!("snapshot {} passed over: {}", skipped.id, skipped.why));
        crate::error::a_few(all.collect(), UNREADABLE_NAMED, |more| {
            format!(
                "{more} more snapshots under snapshots/ do not open with this key (written before a rekey added \
                 it, or damaged: `crmvault verify` with this key says which)"
            )
        })
    }
}

/// A snapshot `latest` could not open anywhere ([`Resolved::unreadable`]).
#[derive(Debug)]
pub struct Unreadable {
    /// Its id.
    pub id: SnapshotId,
    /// Its header's time, when the header read.
    pub time: Option<DateTime<Utc>>,
    /// Why it did not open (on the first copy that has it).
    pub why: Error,
    /// A copy served it and it did not prove itself (damaged, forged, of a newer format), or
    /// reading it failed otherwise than by a refusal (a timeout, a server error), as opposed to
    /// no copy serving it at all (access denied, an archive storage class, gone since listed).
    pub damaged: bool,
}

impl Unreadable {
    /// Whether it may be the newest backup: its header gives a later time, or it is `damaged`
    /// (a header's time is storage's word until the snapshot opens, and a damaged header reads
    /// like junk). One no copy would serve (say an old snapshot moved to an archive class) is
    /// not counted: it cannot be dated, and counting it would fail every drill for it.
    pub fn may_be_newer(&self) -> bool {
        self.time.is_some() || self.damaged
    }
}

/// Whether a failed read of a snapshot object means storage would not serve it (a refusal: access
/// denied, an archive storage class; or gone since it was listed), not that what it served, or
/// failed to serve (a timeout, a server error), may hide the newest snapshot.
fn not_served(error: &Error) -> bool {
    match error {
        Error::Storage { source, .. } => crate::target::is_refusal(source),
        Error::Missing { .. } | Error::SnapshotNotFound(_) => true,
        _ => false,
    }
}

/// A snapshot `latest` opened, or the time its header gives (if it read) and why it did not.
type Opened = std::result::Result<Labels, Unreadable>;

/// A target that could not be opened, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeftOut {
    /// Where it is.
    pub location: String,
    /// Why it was left out (one line).
    pub reason: String,
}

/// The copies of one repository a command works with.
#[derive(Debug)]
pub struct RepoSet {
    repositories: Vec<Repository>,
    left_out: Vec<LeftOut>,
    /// Where `latest` finds the labels of snapshots opened before ([`RepoSet::remember_labels`]).
    labels: Option<LabelCache>,
}

impl RepoSet {
    /// Opens every location with `open` (which turns a location into a target); any failure
    /// is the error.
    pub async fn open_all<F>(locations: &[String], open: F, places: &impl Places) -> Result<RepoSet>
    where
        F: Fn(&str) -> Result<Target>,
    {
        if locations.is_empty() {
            return Err(Error::NoTarget);
        }
        let mut repositories = Vec::with_capacity(locations.len());
        for location in locations {
            repositories.push(open_remembered(open(location)?, places).await?);
        }
        refuse_one_storage_twice(&repositories)?;
        refuse_forked_copies(&repositories)?;
        Ok(RepoSet { repositories, left_out: Vec::new(), labels: None })
    }

    /// Opens what can be opened: of several locations, one that fails is left out (see
    /// [`RepoSet::left_out`]); with one location, its error is the error. Copies whose chains
    /// of configs part are refused by the caller's trust check, once each copy is opened at the
    /// generation its pin names ([`refuse_forked_copies`]), not here: a `config` replaced in one
    /// copy's storage must not stop the others. `places` says what the caller knows of a place
    /// ([`Places`]).
    pub async fn open_available<F>(locations: &[String], open: F, places: &impl Places) -> Result<RepoSet>
    where
        F: Fn(&str) -> Result<Target>,
    {
        if locations.is_empty() {
            return Err(Error::NoTarget);
        }
        let mut repositories = Vec::new();
        let mut left_out = Vec::new();
        for location in locations {
            let opened = match open(location) {
                Ok(target) => open_remembered(target, places).await,
                Err(error) => Err(error),
            };
            match opened {
                Ok(repository) => repositories.push(repository),
                Err(error) if locations.len() > 1 => {
                    let held =
                        matches!(error, Error::NotARepository { .. }).then(|| places.held_before(location)).flatten();
                    let reason = match held {
                        Some(held) => format!("no crmvault repository at {location}: {held}"),
                        None => error.to_string(),
                    };
                    left_out.push(LeftOut { location: location.clone(), reason });
                }
                Err(error) => return Err(error),
            }
        }
        if repositories.is_empty() {
            return Err(Error::EveryTargetFailed(left_out.into_iter().map(|l| (l.location, l.reason)).collect()));
        }
        refuse_one_storage_twice(&repositories)?;
        Ok(RepoSet { repositories, left_out, labels: None })
    }

    /// A set of repositories already open (a library caller's, or a test's).
    pub fn of(repositories: Vec<Repository>) -> Result<RepoSet> {
        if repositories.is_empty() {
            return Err(Error::NoTarget);
        }
        Ok(RepoSet { repositories, left_out: Vec::new(), labels: None })
    }

    /// The copies that opened, in the order given.
    pub fn repositories(&self) -> &[Repository] {
        &self.repositories
    }

    /// The copies that opened, to be checked against their pins (which may reopen one at the
    /// generation this machine trusts) or caught up by a rekey.
    pub fn repositories_mut(&mut self) -> &mut [Repository] {
        &mut self.repositories
    }

    /// The first copy given that opened.
    pub fn first(&self) -> &Repository {
        &self.repositories[0]
    }

    /// The targets that could not be opened.
    pub fn left_out(&self) -> &[LeftOut] {
        &self.left_out
    }

    /// Leaves out the copies at the positions given ([`RepoSet::repositories`]), each for its
    /// reason (a check of that copy alone failed: its trust), as one that did not open is. At
    /// least one copy stays.
    pub fn leave_out(&mut self, failed: Vec<(usize, String)>) {
        let mut reasons: HashMap<usize, String> = failed.into_iter().collect();
        if reasons.len() >= self.repositories.len() {
            return;
        }
        let mut at = 0;
        let left_out = &mut self.left_out;
        self.repositories.retain(|repository| {
            let reason = reasons.remove(&at);
            at += 1;
            match reason {
                Some(reason) => {
                    left_out.push(LeftOut { location: repository.target.location().to_string(), reason });
                    false
                }
                None => true,
            }
        });
    }

    /// Whether more than one copy is open (then what fails on one is a warning, and the
    /// others go on; with one, its failure is the error and is said once).
    pub fn several(&self) -> bool {
        self.repositories.len() > 1
    }

    /// Says that `location` failed at something the command goes on without, when it has
    /// other copies to go on with.
    pub fn warn(&self, location: &str, error: &dyn std::fmt::Display) {
        if self.several() {
            tracing::warn!("{location}: {error}");
        }
    }

    /// Says the failures of the copies that did not serve, once another copy did.
    fn warn_all(&self, failures: Failures) {
        for (location, error) in failures.0 {
            self.warn(&location, &error);
        }
    }

    /// Locks every copy in `mode` for this command (crate::lock: the rules of one target, the
    /// order several are taken in).
    pub async fn lock_all(
        &self,
        mode: crate::lock::LockMode,
        options: &crate::lock::LockOptions,
    ) -> Result<crate::lock::Locks> {
        crate::lock::lock_all(&self.repositories, mode, options).await
    }

    /// Locks every copy in `mode` for a command that goes on with the copies it can write (a
    /// backup: each target is complete on its own). Of several, a copy whose storage fails at
    /// taking its lock (a full disk, a bucket that does not answer), or whose lock another
    /// process still holds when `--lock-wait` ends, is left out, as one that did not open is
    /// ([`RepoSet::left_out`]); when none is left, every failure is the error.
    pub async fn lock_available(
        &mut self,
        mode: crate::lock::LockMode,
        options: &crate::lock::LockOptions,
    ) -> Result<crate::lock::Locks> {
        if !self.several() {
            return self.lock_all(mode, options).await;
        }
        let (locks, failed) = crate::lock::lock_each(&self.repositories, mode, options).await?;
        for (location, error) in failed {
            self.repositories.retain(|r| r.target.location() != location);
            self.left_out.push(LeftOut { location, reason: error.to_string() });
        }
        if self.repositories.is_empty() {
            let failed = self.left_out.iter().map(|l| (l.location.clone(), l.reason.clone()));
            return Err(Error::EveryTargetFailed(failed.collect()));
        }
        Ok(locks)
    }

    /// Refuses targets given as copies of one repository that hold several (each made by an
    /// `init` of its own: another database's repository given by mistake, or a copy whose
    /// storage claims another id). Before their pins are checked, so that nothing is written to
    /// a pin for a command refused; a restore, drill or forget would otherwise read one with the
    /// other's keys and report its snapshots as tampered with, or pass over the newer ones.
    pub fn require_one_repository(&self) -> Result<()> {
        let first = self.first();
        match self.repositories.iter().find(|r| r.config.id != first.config.id) {
            None => Ok(()),
            Some(other) => Err(Error::NotCopies {
                first: first.target.location().to_string(),
                other: other.target.location().to_string(),
                detail: format!("they hold repositories {} and {}", first.config.id, other.config.id),
            }),
        }
    }

    /// Refuses copies that are not one repository at one generation of its keys: a backup
    /// writes the same objects to every copy, under the same keys.
    pub fn require_one_generation(&self) -> Result<()> {
        let first = self.first();
        let Some(other) = self.repositories.iter().find(|r| r.config_hash != first.config_hash) else {
            return Ok(());
        };
        if other.config.id == first.config.id {
            return Err(Error::GenerationsDiffer {
                first: first.target.location().to_string(),
                first_generation: first.config.generation,
                other: other.target.location().to_string(),
                other_generation: other.config.generation,
            });
        }
        Err(Error::NotCopies {
            first: first.target.location().to_string(),
            other: other.target.location().to_string(),
            detail: "each was made by an init of its own".into(),
        })
    }

    /// Refuses copies whose fingerprints differ (what `fingerprint` shows must be one value).
    pub fn require_one_fingerprint(&self) -> Result<()> {
        let first = self.first();
        match self.repositories.iter().find(|r| r.fingerprint() != first.fingerprint()) {
            None => Ok(()),
            Some(other) => Err(Error::NotCopies {
                first: first.target.location().to_string(),
                other: other.target.location().to_string(),
                detail: format!("their fingerprints are {} and {}", first.fingerprint(), other.fingerprint()),
            }),
        }
    }

    /// Unlocks with the first copy whose keys object reads. A wrong or missing key is the same
    /// on every copy and is the error at once; a damaged, missing or unreadable keys object
    /// (the storage failing, `keys/` made a file or a link loop there) sends it on to the next
    /// copy.
    pub async fn unlock_any<K, F, Fut>(&self, unlock: F) -> Result<K>
    where
        F: Fn(Repository) -> Fut,
        Fut: Future<Output = Result<K>>,
    {
        let mut failures = Failures::default();
        for repository in &self.repositories {
            match unlock(repository.clone()).await {
                Ok(keyring) => {
                    self.warn_all(failures);
                    return Ok(keyring);
                }
                // A keys object damaged, gone or unreadable on this copy's storage (its folder
                // made a file or a link loop there) is this copy's; a wrong key is wrong on all.
                Err(
                    error @ (Error::Corrupt { .. } | Error::Missing { .. } | Error::Storage { .. } | Error::Io { .. }),
                ) => {
                    failures.push(repository, error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(failures.into_error())
    }

    /// Unlocks with this host's writer key (kept under `config_dir`).
    pub async fn unlock_as_writer(&self, config_dir: &Path) -> Result<Keyring> {
        self.unlock_any(|repository| {
            let config_dir = config_dir.to_path_buf();
            async move { repository.unlock_as_writer(&config_dir).await }
        })
        .await
    }

    /// Unlocks with the admin identity in the file at `identity`.
    pub async fn unlock_as_admin(&self, identity: &Path) -> Result<AdminKeyring> {
        self.unlock_any(|repository| {
            let identity = identity.to_path_buf();
            async move { repository.unlock_as_admin(&identity).await }
        })
        .await
    }

    /// Resolves `latest` or an id prefix over every copy, among the snapshots `filter` lets
    /// through: the snapshots to try, in order. An id gives one (refused if it does not pass
    /// the filter); `latest` gives every snapshot that passes, newest first, so that a restore
    /// can pass over one that fails to prove itself (a forgery dated in the future, a damaged
    /// object); those whose manifests do not open are apart ([`Resolved::unreadable`]).
    ///
    /// `latest` is of one database: the one `filter` names, or the only one whose snapshots
    /// pass; of several, it is refused as ambiguous ([`Error::AmbiguousLatest`]). Each
    /// snapshot's manifest is read for it (the database is encrypted).
    pub async fn resolve_snapshot(
        &self,
        selector: &str,
        filter: &SnapshotFilter,
        keyring: &Keyring,
    ) -> Result<Resolved> {
        let (candidates, listed) = self.resolve_selector(selector).await?;
        if selector != "latest" {
            if !filter.is_empty()
                && let Some(manifest) = self.open_manifest(&candidates[0], keyring).await
                && !filter.matches(&manifest)
            {
                return Err(Error::SnapshotNotFound(format!(
                    "snapshot {} is not {filter} (it is of database {}, from host {})",
                    candidates[0].short(),
                    manifest.database,
                    manifest.hostname
                )));
            }
            return Ok(Resolved { ids: candidates, unreadable: Vec::new(), remembered: HashSet::new() });
        }
        let mut chosen = Vec::new();
        let mut unreadable = Vec::new();
        let mut tally = FilterTally::default();
        // The databases whose snapshots pass every other part of the filter.
        let mut databases = BTreeSet::new();
        let others = SnapshotFilter { database: None, ..filter.clone() };
        // The hosts that made snapshots passing every other part of it, newest first.
        let mut hosts: Vec<String> = Vec::new();
        let any_host = SnapshotFilter { hostname: None, ..filter.clone() };
        // Each read and opened once, a few at a time (a year of nights is 365 manifests, on S3
        // as many round trips), then taken newest first by the time of the header that opened;
        // those this machine opened before, by the labels it remembers.
        let first = self.first();
        let remembered_labels = match &self.labels {
            Some(cache) => cache.load(|fingerprint| first.has_fingerprint(fingerprint)),
            None => BTreeMap::new(),
        };
        let cores = crate::repo::Cores::new();
        let budget = crate::target::ReadBudget::new(crate::repo::READ_BUDGET);
        let opened = candidates.into_iter().map(|id| {
            let (cores, budget, remembered, listed) = (&cores, &budget, &remembered_labels, &listed);
            async move {
                let opened = match remembered.get(&id) {
                    Some(labels) => Ok(labels.clone()),
                    None => self.open_labels(&id, keyring, (cores, budget), listed).await,
                };
                (id, opened)
            }
        });
        let ahead = if self.repositories.iter().all(|r| r.target.is_local()) {
            MANIFESTS_AHEAD
        } else {
            REMOTE_MANIFESTS_AHEAD
        };
        let mut opened: Vec<(SnapshotId, Opened)> =
            futures::StreamExt::collect(futures::StreamExt::buffered(futures::stream::iter(opened), ahead)).await;
        if let Some(cache) = &self.labels {
            // Written when a snapshot was opened for the first time. Those this listing lacks
            // stay: another copy of the repository may hold them (a target behind, the copy a
            // repacking prune made), and a forgotten one is never listed again to be looked up.
            let new: Vec<(SnapshotId, Labels)> = (opened.iter())
                .filter(|(id, _)| !remembered_labels.contains_key(id))
                .filter_map(|(id, opened)| Some((id.clone(), opened.as_ref().ok()?.clone())))
                .collect();
            if !new.is_empty() {
                let mut all = remembered_labels.clone();
                all.extend(new);
                cache.save(all);
            }
        }
        let time = |opened: &Opened| match opened {
            Ok(labels) => Some(labels.time),
            Err(unreadable) => unreadable.time,
        };
        opened.sort_by(|(a_id, a), (b_id, b)| (time(b), b_id).cmp(&(time(a), a_id)));
        let mut newest_chosen = None;
        for (id, opened) in opened {
            let Labels { time, database, hostname, tags } = match opened {
                Ok(labels) => labels,
                Err(skipped) => {
                    // Older than the newest chosen by its header: not what `latest` means anyway,
                    // unless it was served and does not open, when its header's time is only
                    // storage's word (rewritten, it would hide the newest snapshot unsaid).
                    if newest_chosen.is_none() || skipped.time.is_none() || skipped.damaged {
                        unreadable.push(skipped);
                    }
                    continue;
                }
            };
            if others.admits(&database, &hostname, &tags) {
                databases.insert(database.clone());
            }
            if any_host.admits(&database, &hostname, &tags) && !hosts.contains(&hostname) {
                hosts.push(hostname.clone());
            }
            if tally.see_parts(filter, &database, &hostname, &tags) {
                newest_chosen.get_or_insert(time);
                chosen.push(id);
            }
        }
        if filter.database.is_none() && databases.len() > 1 {
            return Err(Error::AmbiguousLatest { databases: databases.into_iter().collect() });
        }
        tally.check(filter)?;
        // Several backup hosts for one database is a move to a new host more often than two
        // servers' databases of one name: the newest is taken, and the others are named.
        if filter.hostname.is_none() && hosts.len() > 1 {
            tracing::warn!(
                "`latest` is the newest snapshot, made on host {}; this database also has snapshots made on {} (name \
                 the host to choose)",
                hosts[0],
                hosts[1..].join(", ")
            );
        }
        let remembered = chosen.iter().filter(|id| remembered_labels.contains_key(*id)).cloned().collect();
        Ok(Resolved { ids: chosen, unreadable, remembered })
    }

    /// Lets `latest` order the snapshots this machine opened before by the labels it remembers
    /// under `config_dir` ([`crate::label_cache`]), reading only the others. For copies of one
    /// repository checked against this machine's pins, and a command that opens manifests with
    /// the repository's keys.
    pub fn remember_labels(&mut self, config_dir: &Path) {
        if let Some(first) = self.one_repository() {
            self.labels = Some(LabelCache::new(config_dir, &first.config.id, first.fingerprint()));
        }
    }

    /// The first target, when every target is a copy of its repository: files kept beside
    /// a pin speak for one repository only.
    fn one_repository(&self) -> Option<&Repository> {
        let first = self.first();
        self.repositories.iter().all(|r| r.config.id == first.config.id).then_some(first)
    }

    /// The sparse packs backups of this repository remember under `config_dir`
    /// ([`crate::sparse_packs`]), with what tells the file is this repository's; `None` when the
    /// targets are copies of different repositories (no single file speaks for them).
    pub fn sparse_cache(
        &self,
        config_dir: &Path,
    ) -> Option<(crate::sparse_packs::SparseCache, impl Fn(&crate::trust::Fingerprint) -> bool + '_)> {
        self.one_repository().map(|first| {
            let cache = crate::sparse_packs::SparseCache::new(config_dir, &first.config.id, first.fingerprint());
            (cache, move |fingerprint: &crate::trust::Fingerprint| first.has_fingerprint(fingerprint))
        })
    }

    /// What `latest` looks at in a snapshot, from the first copy where it reads and opens with
    /// `keyring`: one read of the object, opened on a blocking thread (a year of nights is 365
    /// manifests to decrypt and headers of thousands of packs to parse), kept small.
    /// `listed`: each copy's listing with the objects' sizes, as far as one was made (a read
    /// of known size is one request, not two).
    async fn open_labels(
        &self,
        snapshot_id: &SnapshotId,
        keyring: &Keyring,
        (cores, budget): (&crate::repo::Cores, &crate::target::ReadBudget),
        listed: &Listed,
    ) -> Opened {
        let (mut header_time, mut why, mut damaged) = (None, None, false);
        for (number, repository) in self.repositories.iter().enumerate() {
            let size = listed.get(number).and_then(|sizes| sizes.get(snapshot_id)).copied();
            let bytes = match repository.read_snapshot_object(snapshot_id, size, budget).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    // Not served: only a refusal (access denied, an archive storage class) or its
                    // absence since the listing counts as such. A timeout or a server's error
                    // may hide the newest snapshot as well as damage does.
                    damaged |= !not_served(&error);
                    why.get_or_insert(error);
                    continue;
                }
            };
            damaged = true;
            let (keyring, id) = (keyring.clone(), snapshot_id.clone());
            match cores.run(move || crate::repo::open_time_and_manifest(&id, &bytes, &keyring)).await {
                Ok((time, Ok(manifest))) => {
                    return Ok(Labels {
                        time,
                        database: manifest.database,
                        hostname: manifest.hostname,
                        tags: manifest.tags,
                    });
                }
                Ok((time, Err(error))) => {
                    header_time.get_or_insert(time);
                    why.get_or_insert(error);
                }
                Err(error) => {
                    why.get_or_insert(error);
                }
            }
        }
        let why = why.unwrap_or_else(|| Error::SnapshotNotFound(format!("snapshot {snapshot_id}")));
        Err(Unreadable { id: snapshot_id.clone(), time: header_time, why, damaged })
    }

    /// Why a snapshot's object does not read or open with `keyring` on any copy (`None`: it
    /// does), as `latest` reads snapshots it does not remember: what tells a remembered snapshot
    /// that no longer opens from one whose opening failed for another reason (a copy's index
    /// unreadable).
    pub async fn why_snapshot_does_not_open(&self, snapshot_id: &SnapshotId, keyring: &Keyring) -> Option<Error> {
        let cores = crate::repo::Cores::new();
        let budget = crate::target::ReadBudget::new(crate::repo::READ_BUDGET);
        self.open_labels(snapshot_id, keyring, (&cores, &budget), &Listed::new())
            .await
            .err()
            .map(|unreadable| unreadable.why)
    }

    /// A snapshot's manifest, from the first copy where it reads and opens with `keyring`.
    async fn open_manifest(&self, snapshot_id: &SnapshotId, keyring: &Keyring) -> Option<Manifest> {
        for repository in &self.repositories {
            if let Ok(manifest) = repository.read_snapshot(snapshot_id).await.and_then(|sealed| sealed.open(keyring)) {
                return Some(manifest);
            }
        }
        None
    }

    /// `latest` (every snapshot, newest first) or the one snapshot an id prefix names.
    /// With each copy's listing (sizes included) for `latest`, none for an id.
    async fn resolve_selector(&self, selector: &str) -> Result<(Vec<SnapshotId>, Listed)> {
        if selector == "latest" {
            let (mut found, mut listed) = (Vec::new(), Listed::new());
            // Every copy's, once each, in no order: resolve_snapshot orders them as it opens them.
            for repository in &self.repositories {
                match repository.listed_snapshots().await {
                    Ok(list) => {
                        found.extend(list.iter().map(|(id, _)| id.clone()));
                        listed.push(list.into_iter().collect());
                    }
                    Err(error) if self.several() => {
                        self.warn(repository.target.location(), &error);
                        listed.push(HashMap::new());
                    }
                    Err(error) => return Err(error),
                }
            }
            let mut seen = HashSet::new();
            found.retain(|id| seen.insert(id.clone()));
            if found.is_empty() {
                let locations: Vec<&str> = self.repositories.iter().map(|r| r.target.location()).collect();
                return Err(Error::SnapshotNotFound(format!("{} holds no snapshot yet", locations.join(", "))));
            }
            return Ok((found, listed));
        }
        let mut found: Vec<(DateTime<Utc>, SnapshotId)> = Vec::new();
        let mut failures = Failures::default();
        for repository in &self.repositories {
            let resolved = match repository.resolve_snapshot(selector).await {
                Ok(id) => repository.read_snapshot_header(&id, None).await.map(|header| (header.time, id)),
                Err(error) => Err(error),
            };
            match resolved {
                Ok(entry) => found.push(entry),
                Err(error) => failures.push(repository, error),
            }
        }
        found.sort();
        found.dedup_by(|a, b| a.1 == b.1);
        if found.len() > 1 {
            return Err(Error::SnapshotNotFound(format!(
                "{selector} matches {} snapshots; give more digits",
                found.len()
            )));
        }
        match found.pop() {
            Some((_, id)) => {
                self.warn_all(failures);
                Ok((vec![id], Listed::new()))
            }
            None => Err(failures.into_error()),
        }
    }

    /// Whether forget records on any copy, proven with `keyring`, explain `id`'s absence all
    /// the way back to a snapshot that is there ([`Repository::absence_explained`]).
    pub async fn absence_explained(&self, id: &SnapshotId, keyring: &Keyring) -> bool {
        for repository in &self.repositories {
            if repository.absence_explained(id, keyring).await {
                return true;
            }
        }
        false
    }

    /// Opens a snapshot on every copy that holds it, and gathers where its chunks can be read:
    /// each copy's index (only what the snapshot lists, where its copy of the snapshot reads;
    /// all of it where that copy is lost or damaged, since the chunks may still be there).
    pub async fn open_snapshot(
        &self,
        keyring: &Keyring,
        snapshot_id: &SnapshotId,
        index_in_memory: usize,
    ) -> Result<(Manifest, Vec<Source>, SnapshotMark)> {
        let mut manifest = None;
        let mut mark = None;
        let mut sources = Vec::new();
        let mut failures = Failures::default();
        for repository in &self.repositories {
            // Opening checks the config it was written under (SealedSnapshot::open).
            let opened = match repository.read_snapshot(snapshot_id).await {
                Ok(sealed) => sealed.open(keyring).map(|m| {
                    mark.get_or_insert_with(|| sealed.mark());
                    (Some(m), Some((sealed.header.indexes, sealed.header.packs)))
                }),
                Err(Error::Missing { .. }) => Ok((None, None)),
                Err(error) => Err(error),
            };
            let listed = match opened {
                Ok((opened, listed)) => {
                    if manifest.is_none() {
                        manifest = opened;
                    }
                    listed
                }
                Err(error) => {
                    failures.push(repository, error);
                    None
                }
            };
            let (indexes, packs) = match &listed {
                Some((indexes, packs)) => (Some(indexes.as_slice()), Some(packs.as_slice())),
                None => (None, None),
            };
            let (index, index_failures) =
                match repository.load_index_lenient(keyring, indexes, packs, index_in_memory).await {
                    Ok(loaded) => loaded,
                    // One copy of several whose indexes cannot be found (its `index/` does not
                    // list): that copy's failure, said, while the others serve the chunks.
                    Err(error) if self.several() => {
                        failures.push(repository, error);
                        continue;
                    }
                    Err(error) => return Err(error),
                };
            for (key, error) in index_failures {
                // Chunks may still be found through another index or copy: the restore says
                // what it could not find, if anything.
                tracing::warn!("{}: {key}: {error}", repository.target.location());
            }
            sources.push(Source::new(repository.target.clone(), Arc::new(index)));
        }
        match manifest {
            Some(_) if sources.is_empty() => Err(failures.into_error()),
            Some(manifest) => {
                self.warn_all(failures);
                Ok((manifest, sources, mark.expect("set with the manifest")))
            }
            None if failures.0.is_empty() => {
                Err(Error::SnapshotNotFound(format!("no target holds snapshot {snapshot_id}")))
            }
            None => Err(failures.into_error()),
        }
    }
}

/// A copy that failed, and why (one line).
pub type FailedCopy = (String, String);

/// Work a command does on each copy on its own (forget, prune): what each copy that served
/// gave, and the copies that failed with why. The rule, as for opening: with several copies
/// given, one that fails is a failure the others go on without (the command's exit code says
/// it); with one, its error is the error; when none served, every reason is.
#[derive(Debug)]
pub struct EachCopy<T> {
    several: bool,
    done: Vec<T>,
    failed: Vec<FailedCopy>,
}

impl<T> EachCopy<T> {
    /// Takes one copy's outcome: its error comes back only when it is the command's error
    /// (the only copy given); otherwise it is kept as that copy's failure.
    pub fn take<E: std::fmt::Display>(
        &mut self,
        location: &str,
        outcome: std::result::Result<T, E>,
    ) -> std::result::Result<(), E> {
        match outcome {
            Ok(done) => self.done.push(done),
            // `{:#}`: the causes too, for an error that has them (anyhow's).
            Err(error) if self.several => self.failed.push((location.to_string(), format!("{error:#}"))),
            Err(error) => return Err(error),
        }
        Ok(())
    }

    /// What each copy gave, and the failures (location, why); every reason as the error when
    /// no copy served.
    pub fn finish(self) -> Result<(Vec<T>, Vec<FailedCopy>)> {
        if self.done.is_empty() && !self.failed.is_empty() {
            return Err(Error::EveryTargetFailed(self.failed));
        }
        Ok((self.done, self.failed))
    }
}

impl RepoSet {
    /// Starts the tally of work done on each copy on its own ([`EachCopy`]); the copies that
    /// could not be opened are failures already.
    pub fn each_copy<T>(&self) -> EachCopy<T> {
        EachCopy {
            several: self.repositories.len() + self.left_out.len() > 1,
            done: Vec::new(),
            failed: self.left_out.iter().map(|l| (l.location.clone(), l.reason.clone())).collect(),
        }
    }
}

/// What failed on which copy, while other copies may still serve: warnings if one does, the
/// error if none does, each said once.
#[derive(Default)]
struct Failures(Vec<(String, Error)>);

impl Failures {
    fn push(&mut self, repository: &Repository, error: Error) {
        self.0.push((repository.target.location().to_string(), error));
    }

    /// Every copy failed: with one, its error as it is; with several, each copy's reason.
    fn into_error(mut self) -> Error {
        match self.0.len() {
            0 => Error::NoTarget,
            1 => self.0.pop().expect("one failure").1,
            _ => Error::EveryTargetFailed(self.0.into_iter().map(|(l, e)| (l, e.to_string())).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_refusal_or_an_absence_counts_as_a_snapshot_storage_would_not_serve() {
        use super::{Error, not_served};
        let storage = |source| Error::Storage { location: "s3://b".into(), source };
        let denied = object_store::Error::PermissionDenied { path: "snapshots/x".into(), source: "403".into() };
        assert!(not_served(&storage(denied)));
        assert!(not_served(&Error::Missing { object: "snapshots/x".into(), location: "s3://b".into() }));
        // A server's error or a timeout may hide the newest snapshot as damage does.
        let failed = object_store::Error::Generic { store: "S3", source: "500 Internal Server Error".into() };
        assert!(!not_served(&storage(failed)));
        assert!(!not_served(&Error::corrupt("snapshots/x", "truncated snapshot object")));
    }

    use super::*;
    use crate::crypto::{self, RepoSecret};
    use crate::repo::Tuning;
    use crate::target::OpenMode;

    /// A repository in `dir/name`, and where it is.
    async fn repository(dir: &Path, name: &str) -> String {
        let location = dir.join(name).to_str().unwrap().to_string();
        let target = Target::open(&location, OpenMode::Create).unwrap();
        let admin = crypto::generate_identity();
        Repository::init(target, &[admin.to_public()], &dir.join("config"), RepoSecret::generate(), Tuning::default())
            .await
            .unwrap();
        location
    }

    fn open(location: &str) -> Result<Target> {
        Target::open(location, OpenMode::Existing)
    }

    #[tokio::test]
    async fn work_on_each_copy_fails_that_copy_of_several_and_is_the_error_of_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (repository(dir.path(), "a").await, repository(dir.path(), "b").await);
        let gone = dir.path().join("gone").to_str().unwrap().to_string();
        let failing =
            |location: &str| if location == b { Err(Error::Invalid("b broke".into())) } else { Ok(location.len()) };

        // Several: a copy left out and a copy that fails are failures; the rest is done.
        let set = RepoSet::open_available(&[a.clone(), b.clone(), gone.clone()], open, &|_: &str| None).await.unwrap();
        let mut each = set.each_copy();
        for repository in set.repositories() {
            let location = repository.target.location();
            each.take(location, failing(location)).unwrap();
        }
        let (done, failed) = each.finish().unwrap();
        assert_eq!(done, [a.len()]);
        let failed: Vec<&str> = failed.iter().map(|(location, _)| location.as_str()).collect();
        assert_eq!(failed, [gone.as_str(), b.as_str()]);

        // One copy: its error is the error, as it is.
        let set = RepoSet::open_available(std::slice::from_ref(&b), open, &|_: &str| None).await.unwrap();
        let mut each = set.each_copy::<usize>();
        assert!(matches!(each.take(&b, failing(&b)), Err(Error::Invalid(_))));

        // Several, none served: every reason.
        let set = RepoSet::open_available(&[b.clone(), gone.clone()], open, &|_: &str| None).await.unwrap();
        let mut each = set.each_copy();
        each.take(&b, failing(&b)).unwrap();
        assert!(matches!(each.finish(), Err(Error::EveryTargetFailed(ref reasons)) if reasons.len() == 2));
    }

    #[tokio::test]
    async fn what_cannot_be_opened_is_left_out_named_or_is_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = repository(dir.path(), "good").await;
        let gone = dir.path().join("gone").to_str().unwrap().to_string();
        let gone_too = dir.path().join("gone-too").to_str().unwrap().to_string();

        // Of several, one that cannot be opened is left out, with why.
        let set = RepoSet::open_available(&[gone.clone(), good.clone()], open, &|_: &str| None).await.unwrap();
        assert_eq!(set.repositories().len(), 1);
        assert_eq!(set.first().target.location(), good);
        assert_eq!(set.left_out().len(), 1);
        assert_eq!(set.left_out()[0].location, gone);
        assert!(set.left_out()[0].reason.contains("no crmvault repository"), "{:?}", set.left_out());
        assert!(!set.several());
        // Where the caller knows what the place held, that is said instead of advice to init.
        let held = |location: &str| (location == gone).then(|| "it held repository R0".to_string());
        let set = RepoSet::open_available(&[gone.clone(), good.clone()], open, &held).await.unwrap();
        let reason = &set.left_out()[0].reason;
        assert_eq!(*reason, format!("no crmvault repository at {gone}: it held repository R0"));
        let error = RepoSet::open_available(&[gone.clone(), gone_too.clone()], open, &held).await.unwrap_err();
        assert!(error.to_string().contains("it held repository R0"), "{error}");

        // None: every reason, each naming its target.
        let error =
            RepoSet::open_available(&[gone.clone(), gone_too.clone()], open, &|_: &str| None).await.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, Error::EveryTargetFailed(ref reasons) if reasons.len() == 2), "{text}");
        assert!(
            text.starts_with("every target failed: ") && text.contains(&gone) && text.contains(&gone_too),
            "{text}"
        );

        // One: its own error, as it is.
        let error = RepoSet::open_available(std::slice::from_ref(&gone), open, &|_: &str| None).await.unwrap_err();
        assert!(matches!(error, Error::NotARepository { .. }), "{error}");

        // A command that needs every copy fails on the first it cannot open.
        let error = RepoSet::open_all(&[good.clone(), gone.clone()], open, &|_: &str| None).await.unwrap_err();
        assert!(matches!(error, Error::NotARepository { ref location } if *location == gone), "{error}");
        assert!(matches!(RepoSet::open_all(&[], open, &|_: &str| None).await, Err(Error::NoTarget)));
    }

    #[tokio::test]
    async fn two_repositories_are_not_copies_of_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = repository(dir.path(), "first").await;
        let other = repository(dir.path(), "other").await;
        // A copy: the same objects in another folder.
        let copy = dir.path().join("copy").to_str().unwrap().to_string();
        let copied = std::process::Command::new("cp").args(["-a", &first, &copy]).status().unwrap();
        assert!(copied.success());
        let set = RepoSet::open_all(&[first.clone(), copy], open, &|_: &str| None).await.unwrap();
        set.require_one_repository().unwrap();
        set.require_one_generation().unwrap();
        set.require_one_fingerprint().unwrap();
        assert!(set.several());

        // One folder twice is one target, not two copies.
        let twice = RepoSet::open_all(&[first.clone(), format!("{first}/")], open, &|_: &str| None).await.unwrap_err();
        assert!(matches!(twice, Error::SameTargetTwice { .. }), "{twice}");

        let set = RepoSet::open_all(&[first, other], open, &|_: &str| None).await.unwrap();
        let errors = [
            set.require_one_repository().unwrap_err(),
            set.require_one_generation().unwrap_err(),
            set.require_one_fingerprint().unwrap_err(),
        ];
        for error in errors {
            assert!(matches!(error, Error::NotCopies { .. }), "{error}");
            assert!(error.to_string().contains("are not copies of one repository"), "{error}");
        }
    }
}
