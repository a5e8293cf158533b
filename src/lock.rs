//! Repository locks (docs/ARCHITECTURE.md, *Locks*; docs/FORMAT.md, `locks/`): who may use a
//! target beside whom. Restore, verify and copy's source share it; backup and copy's
//! destination append (two of them would fork the snapshot chain); rekey (later prune and
//! forget) excludes everyone.
//!
//! One object, `locks/writer`, is taken with a create-only put by appenders and exclusive
//! holders; each shared holder writes its own `locks/shared-<id>`. An exclusive holder, once it
//! holds `locks/writer`, waits until no live shared lock remains; a shared taker writes its
//! object, then reads `locks/writer` and steps back when an exclusive holder has it. Holders
//! refresh their lock every third of its lease and delete it when done. A lock whose process
//! is gone (on this host) or that was not refreshed within its lease is stale and taken over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::target::{ObjectVersion, PutOutcome, Replaced, Target};

/// The folder every lock object lives in.
pub const LOCKS_FOLDER: &str = "locks";
/// The one lock appenders and exclusive holders take.
pub const WRITER_KEY: &str = "locks/writer";
/// How long a lock stays live without a refresh, unless the holder says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(600);
/// Lock objects are a few hundred bytes; anything larger is not read.
const MAX_LOCK_BYTES: usize = 64 << 10;
/// The longest pause between two attempts while waiting.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a command does to a target, hence whom it may run beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Reads (restore, verify, copy's source): beside readers and one appender.
    Shared,
    /// Adds snapshots (backup, copy's destination): beside readers, never another appender.
    Append,
    /// Changes or removes what others read (rekey; prune and forget later): alone.
    Exclusive,
}

impl LockMode {
    fn name(self) -> &'static str {
        match self {
            LockMode::Shared => "shared",
            LockMode::Append => "append",
            LockMode::Exclusive => "exclusive",
        }
    }
}

/// Who takes a lock: what the lock object says about its holder (sealed, docs/FORMAT.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// This host's name.
    pub hostname: String,
    /// This process's id.
    pub pid: u32,
    /// The command (`backup`, `restore`, …).
    pub command: String,
}

/// How to take locks; the CLI fills in what the library may not read itself (the clock, the
/// host, which processes run).
#[derive(Clone)]
pub struct LockOptions {
    /// Who takes the locks.
    pub holder: Holder,
    /// How long a lock stays live without a refresh; holders refresh every third of it.
    pub lease: Duration,
    /// How long to wait for a holder to finish (zero: fail at once).
    pub wait: Duration,
    /// Keys that may read who holds a lock (the writer key, an admin identity); without one a
    /// holder is "someone".
    pub readers: Arc<Vec<age::x25519::Identity>>,
    /// The wall clock.
    pub now: fn() -> DateTime<Utc>,
    /// Whether a process of this host runs.
    pub process_running: fn(u32) -> bool,
}

impl std::fmt::Debug for LockOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockOptions")
            .field("holder", &self.holder)
            .field("lease", &self.lease)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// A lock object as stored: the mode and times in the clear (a keyless reader must tell a stale
/// lock and an exclusive one), the holder sealed to the repository's metadata recipients.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredLock {
    format: String,
    id: String,
    mode: LockMode,
    since: DateTime<Utc>,
    refreshed: DateTime<Utc>,
    lease_seconds: u64,
    /// Hex of an age ciphertext of [`Holder`]'s JSON; absent when written without recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<String>,
}

const LOCK_FORMAT: &str = "crmvault-lock-1";
/// The longest lease a lock object is believed to have (holders write 600 s).
const MAX_LEASE_SECONDS: u64 = 24 * 3600;
/// How far ahead of this host's clock another host's may be.
const MAX_CLOCK_SKEW_SECONDS: i64 = 600;

impl StoredLock {
    fn parse(bytes: &[u8]) -> Option<StoredLock> {
        if bytes.len() > MAX_LOCK_BYTES {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }

    fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a lock serialises"))
    }
}

/// A lock someone else holds, as this process can see it.
#[derive(Debug, Clone)]
struct Seen {
    lock: Option<StoredLock>,
    holder: Option<Holder>,
}

impl Seen {
    fn read(bytes: &[u8], readers: &[age::x25519::Identity]) -> Seen {
        let lock = StoredLock::parse(bytes);
        let holder = lock
            .as_ref()
            .and_then(|lock| lock.holder.as_deref())
            .and_then(|sealed| hex::decode(sealed).ok())
            .and_then(|ciphertext| crypto::decrypt(readers, &ciphertext).ok())
            .and_then(|plaintext| serde_json::from_slice::<Holder>(&plaintext).ok());
        Seen { lock, holder }
    }

    /// Why this lock is stale, or `None` while it is live.
    fn stale(&self, options: &LockOptions) -> Option<String> {
        let Some(lock) = &self.lock else {
            return Some("it is not a lock this crmvault can read".into());
        };
        if let Some(holder) = &self.holder
            && holder.hostname == options.holder.hostname
            && holder.pid != options.holder.pid
            && !(options.process_running)(holder.pid)
        {
            return Some(format!("process {} is gone", holder.pid));
        }
        // A lease is honoured up to a day: a forged lease of any size neither panics nor keeps
        // a lock live for ever.
        let lease = chrono::Duration::seconds(i64::try_from(lock.lease_seconds.min(MAX_LEASE_SECONDS)).unwrap_or(0));
        let age = (options.now)() - lock.refreshed;
        // A refresh from the future (beyond the clock skew allowed: the lease, at most ten
        // minutes) was never a real one: a lock forged that way would otherwise stay live for
        // ever, or a lease longer.
        if -age > lease.min(chrono::Duration::seconds(MAX_CLOCK_SKEW_SECONDS)) {
            return Some(format!(
                "its refresh time {} is in the future",
                lock.refreshed.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        (age > lease).then(|| format!("not refreshed for {} s (lease {} s)", age.num_seconds(), lock.lease_seconds))
    }

    /// The holder in one phrase: host, pid, command, since.
    fn describe(&self) -> String {
        let Some(lock) = &self.lock else {
            return "an unreadable lock object".into();
        };
        let since = lock.since.format("%Y-%m-%d %H:%M:%S UTC");
        match &self.holder {
            Some(holder) => format!(
                "{} (host {}, pid {}, {} lock since {since})",
                holder.command,
                holder.hostname,
                holder.pid,
                lock.mode.name()
            ),
            // Written without a holder: by a command that holds no key.
            None if lock.holder.is_none() => format!(
                "a holder it does not name (a command run without a key writes none: copy, or verify or prune \
                 without one; {} lock since {since})",
                lock.mode.name()
            ),
            None => format!("someone (key needed to see who; {} lock since {since})", lock.mode.name()),
        }
    }
}

/// A lock this process holds on one target; refreshed until released.
#[derive(Debug)]
pub struct RepositoryLock {
    target: Target,
    key: String,
    /// The id in the lock object, to tell ours from a taker's.
    id: String,
    refresher: Option<tokio::task::JoinHandle<()>>,
    lost: Arc<AtomicBool>,
    /// The wall clock (the options').
    now: fn() -> DateTime<Utc>,
    /// The lease it was taken with.
    lease: Duration,
    /// Whether it was taken over from an exclusive holder that went stale (or from an object
    /// that did not read): that holder, a prune perhaps, may only be stalled and go on
    /// deleting what it planned to.
    took_over_exclusive: bool,
    /// Whether a lock object was written: a reader whose storage refuses writes (read-only
    /// credentials or mount) or has no room for one reads without it ([`read_without_lock`]).
    written: bool,
}

impl RepositoryLock {
    /// The object this lock is.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether it was taken over from a stale exclusive holder (see the field).
    pub fn took_over_exclusive(&self) -> bool {
        self.took_over_exclusive
    }

    /// Whether someone took this lock over (it was not refreshed in time, or removed by
    /// `unlock --remove-all`).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Proves, by reading the lock object, that this process still holds the lock and that its
    /// lease has not run out: what a command checks right before a write that must not happen
    /// under someone else's lock (a backup's snapshot object: a `prune` that took over the lock
    /// of a backup stalled past its lease may have deleted the packs it wrote).
    pub async fn confirm(&self) -> Result<()> {
        let lost = || Error::LockLost { location: self.target.location().to_string(), key: self.key.clone() };
        if !self.written {
            return Ok(());
        }
        if self.lost() {
            return Err(lost());
        }
        let current = self.target.get_versioned(&self.key).await?;
        let Some(lock) = current.and_then(|(bytes, _)| StoredLock::parse(&bytes)).filter(|lock| lock.id == self.id)
        else {
            self.lost.store(true, Ordering::Relaxed);
            return Err(lost());
        };
        let lease = chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
        if lock.refreshed.checked_add_signed(lease).is_some_and(|end| end <= (self.now)()) {
            return Err(lost());
        }
        Ok(())
    }

    /// Stops refreshing and deletes the lock object.
    pub async fn release(mut self) -> Result<()> {
        if let Some(refresher) = self.refresher.take() {
            refresher.abort();
        }
        if self.lost() || !self.written {
            return Ok(());
        }
        let result = delete_if_ours(&self.target, &self.key, &self.id).await;
        // Done: the drop below has nothing left to do.
        self.lost.store(true, Ordering::Relaxed);
        result
    }
}

impl Drop for RepositoryLock {
    /// A lock not released (an error, Ctrl-C dropping the command) is deleted here, so that it
    /// never outlives its process when the process can still act.
    fn drop(&mut self) {
        if let Some(refresher) = self.refresher.take() {
            refresher.abort();
        }
        if self.lost() || !self.written {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (target, key, id) = (self.target.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.id));
        let delete = async move {
            if let Err(error) = tokio::time::timeout(Duration::from_secs(10), delete_if_ours(&target, &key, &id))
                .await
                .unwrap_or_else(|_| Err(Error::Invalid(format!("{}: deleting {key} timed out", target.location()))))
            {
                tracing::warn!("{}: could not remove lock {key}: {error}", target.location());
            }
        };
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| runtime.block_on(delete));
        } else {
            runtime.spawn(delete);
        }
    }
}

/// Deletes a lock this process took, unless someone took it over meanwhile (this process
/// stalled past its lease): their lock is not ours to delete. A shared lock's name is ours alone.
async fn delete_if_ours(target: &Target, key: &str, id: &str) -> Result<()> {
    if key == WRITER_KEY {
        let current = target.get_versioned(key).await?;
        let ours = current.is_some_and(|(bytes, _)| StoredLock::parse(&bytes).is_some_and(|lock| lock.id == id));
        if !ours {
            tracing::warn!("{}: lock {key} was taken over meanwhile; left to its new holder", target.location());
            return Ok(());
        }
    }
    target.delete(key).await
}

/// The locks of every target a command uses.
#[derive(Debug, Default)]
pub struct Locks(Vec<RepositoryLock>);

impl Locks {
    /// The locks held.
    pub fn held(&self) -> &[RepositoryLock] {
        &self.0
    }

    /// Adds the locks of another set (copy: its source's and its destination's).
    pub fn join(&mut self, other: Locks) {
        self.0.extend(other.0);
    }

    /// [`RepositoryLock::confirm`] for the lock on `location`; Ok when this set holds none there
    /// (a command run without locks, as in the library's own tests).
    pub async fn confirm(&self, location: &str) -> Result<()> {
        for lock in self.0.iter().filter(|lock| lock.target.location() == location) {
            lock.confirm().await?;
        }
        Ok(())
    }

    /// Whether the lock on `location` was taken over from a stale exclusive holder: a backup
    /// then reuses only packs a snapshot lists, none a stalled prune may be deleting.
    pub fn took_over_exclusive(&self, location: &str) -> bool {
        self.0.iter().any(|lock| lock.target.location() == location && lock.took_over_exclusive)
    }

    /// Releases every lock; the first failure is the error, after trying all.
    pub async fn release(self) -> Result<()> {
        let mut first_error = None;
        for lock in self.0 {
            if let Err(error) = lock.release().await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Locks every repository in `mode`, in the order of their locations (so that two commands
/// given the same targets in another order cannot each hold one and wait for the other); a
/// location given twice is locked once. On any failure the locks already taken are released.
pub async fn lock_all(repositories: &[Repository], mode: LockMode, options: &LockOptions) -> Result<Locks> {
    lock_in_order(repositories, mode, options, false).await.map(|(locks, _)| locks)
}

/// [`lock_all`] for a command that goes on with the copies it can lock: a storage that fails
/// at it (full, unreachable), or whose lock another process still holds when the wait ends,
/// is passed over and returned with its error (one target's storage must not stop the
/// others' night: a lock is an object whoever holds that storage can plant).
pub async fn lock_each(
    repositories: &[Repository],
    mode: LockMode,
    options: &LockOptions,
) -> Result<(Locks, Vec<(String, Error)>)> {
    lock_in_order(repositories, mode, options, true).await
}

async fn lock_in_order(
    repositories: &[Repository],
    mode: LockMode,
    options: &LockOptions,
    pass_failed: bool,
) -> Result<(Locks, Vec<(String, Error)>)> {
    let mut ordered: Vec<&Repository> = repositories.iter().collect();
    ordered.sort_by(|a, b| a.target.location().cmp(b.target.location()));
    ordered.dedup_by(|a, b| a.target.location() == b.target.location());
    let deadline = tokio::time::Instant::now() + options.wait;
    let mut locks = Locks::default();
    let mut failed = Vec::new();
    for repository in ordered {
        let recipients = repository.metadata_recipients();
        match acquire_until(&repository.target, &recipients, mode, options, deadline).await {
            Ok(lock) => locks.0.push(lock),
            Err(error) if pass_failed => {
                failed.push((repository.target.location().to_string(), error));
            }
            Err(error) => {
                if let Err(release_error) = locks.release().await {
                    tracing::warn!("{release_error}");
                }
                return Err(error);
            }
        }
    }
    Ok((locks, failed))
}

/// Takes a lock on one target, waiting up to `options.wait`. The holder is sealed to
/// `recipients` (none: written without a holder).
pub async fn acquire(
    target: &Target,
    recipients: &[age::x25519::Recipient],
    mode: LockMode,
    options: &LockOptions,
) -> Result<RepositoryLock> {
    acquire_until(target, recipients, mode, options, tokio::time::Instant::now() + options.wait).await
}

async fn acquire_until(
    target: &Target,
    recipients: &[age::x25519::Recipient],
    mode: LockMode,
    options: &LockOptions,
    deadline: tokio::time::Instant,
) -> Result<RepositoryLock> {
    let mine = new_lock(recipients, mode, options);
    // Dropped before it is disarmed (Ctrl-C while storage writes or confirms our object), it
    // removes the object if it is ours: a lock written but not yet held by a `RepositoryLock`.
    let mut attempt = Attempt { target, mine: &mine, mode, armed: true };
    let mut backoff = Duration::from_millis(250);
    loop {
        let tried = match mode {
            LockMode::Shared => try_shared(target, &mine, options).await.map(|tried| tried.map(|key| (key, false))),
            LockMode::Append | LockMode::Exclusive => try_writer(target, &mine, options).await,
        };
        let blocked = match tried {
            Ok(blocked) => blocked,
            Err(error) => {
                remove_if_mine(target, &mine, mode).await;
                attempt.armed = false;
                if mode == LockMode::Shared && cannot_write(&error) {
                    return read_without_lock(target, options, deadline, &error).await;
                }
                return Err(error);
            }
        };
        let holder = match blocked {
            Ok((key, took_over_exclusive)) => {
                let lock = held(target, key, mine.clone(), options, took_over_exclusive);
                attempt.armed = false;
                if mode == LockMode::Exclusive {
                    wait_for_readers(target, options, deadline).await?;
                }
                return Ok(lock);
            }
            Err(holder) => holder,
        };
        wait_once(target, holder, deadline, &mut backoff).await?;
    }
}

/// One pause while `holder` has the lock: [`Error::Locked`] once `deadline` is reached, else
/// a sleep of `backoff` (doubled for the next, up to [`MAX_BACKOFF`]).
async fn wait_once(
    target: &Target,
    holder: String,
    deadline: tokio::time::Instant,
    backoff: &mut Duration,
) -> Result<()> {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return Err(Error::Locked { location: target.location().to_string(), holder });
    }
    tracing::info!("{}: locked by {holder}; waiting", target.location());
    tokio::time::sleep((*backoff).min(deadline - now)).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    Ok(())
}

/// A lock being taken: see [`acquire_until`].
struct Attempt<'a> {
    target: &'a Target,
    mine: &'a StoredLock,
    mode: LockMode,
    armed: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // As `RepositoryLock`'s drop: done before the process goes on (and perhaps exits).
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            let removed =
                tokio::time::timeout(Duration::from_secs(10), remove_if_mine(self.target, self.mine, self.mode));
            let _ = tokio::task::block_in_place(|| runtime.block_on(removed));
        } else {
            let (target, mine, mode) = (self.target.clone(), self.mine.clone(), self.mode);
            runtime.spawn(async move { remove_if_mine(&target, &mine, mode).await });
        }
    }
}

fn new_lock(recipients: &[age::x25519::Recipient], mode: LockMode, options: &LockOptions) -> StoredLock {
    let mut id = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    let holder = (!recipients.is_empty()).then(|| {
        let plaintext = serde_json::to_vec(&options.holder).expect("a holder serialises");
        hex::encode(crypto::encrypt(recipients, &plaintext))
    });
    let now = (options.now)();
    StoredLock {
        format: LOCK_FORMAT.into(),
        id: hex::encode(id),
        mode,
        since: now,
        refreshed: now,
        lease_seconds: options.lease.as_secs().max(1),
        holder,
    }
}

/// One attempt at `locks/writer`: `Ok(key)` when taken, `Err(holder)` when someone live has it.
async fn try_writer(
    target: &Target,
    mine: &StoredLock,
    options: &LockOptions,
) -> Result<std::result::Result<(String, bool), String>> {
    // A few rounds: the holder may release, or another taker take over, between two steps.
    for _ in 0..4 {
        if target.put_new(WRITER_KEY, mine.to_bytes()).await? == PutOutcome::Written {
            return Ok(Ok((WRITER_KEY.into(), false)));
        }
        let Some((bytes, version)) = read_lock_object(target, WRITER_KEY).await? else {
            continue;
        };
        let seen = Seen::read(&bytes, &options.readers);
        let exclusive = seen.lock.as_ref().is_none_or(|lock| lock.mode == LockMode::Exclusive);
        let Some(reason) = seen.stale(options) else {
            return Ok(Err(seen.describe()));
        };
        // Taking over: only one of several takers may win. Where storage replaces
        // conditionally (S3's If-Match) it decides; a local folder has no such write, so the
        // stale lock is read again just before it is deleted (docs/ARCHITECTURE.md, *Locks*:
        // the window that is left).
        match target.replace(WRITER_KEY, mine.to_bytes(), &version).await? {
            Replaced::Replaced => {
                warn_takeover(target, WRITER_KEY, &seen, &reason);
                return Ok(Ok((WRITER_KEY.into(), exclusive)));
            }
            Replaced::Changed => {}
            Replaced::Unsupported => {
                if read_lock_object(target, WRITER_KEY).await?.is_some_and(|(again, _)| again == bytes) {
                    target.delete(WRITER_KEY).await?;
                    if target.put_new(WRITER_KEY, mine.to_bytes()).await? == PutOutcome::Written {
                        warn_takeover(target, WRITER_KEY, &seen, &reason);
                        return Ok(Ok((WRITER_KEY.into(), exclusive)));
                    }
                }
            }
        }
    }
    let seen = match read_lock_object(target, WRITER_KEY).await? {
        Some((bytes, _)) => Seen::read(&bytes, &options.readers).describe(),
        None => "another taker".into(),
    };
    Ok(Err(seen))
}

/// One attempt at a shared lock: write ours, then step back if an exclusive holder has
/// `locks/writer` (it may have written it before our object existed, so it may not see us).
async fn try_shared(
    target: &Target,
    mine: &StoredLock,
    options: &LockOptions,
) -> Result<std::result::Result<String, String>> {
    let key = shared_key(&mine.id);
    target.put_new(&key, mine.to_bytes()).await?;
    let Some((bytes, _)) = read_lock_object(target, WRITER_KEY).await? else {
        return Ok(Ok(key));
    };
    let seen = Seen::read(&bytes, &options.readers);
    let exclusive = seen.lock.as_ref().is_some_and(|lock| lock.mode == LockMode::Exclusive);
    // A stale exclusive lock is passed over (the next exclusive taker takes it over).
    if !exclusive || seen.stale(options).is_some() {
        return Ok(Ok(key));
    }
    target.delete(&key).await?;
    Ok(Err(seen.describe()))
}

/// Waits (holding `locks/writer`) until no live shared lock remains; stale ones are removed.
async fn wait_for_readers(target: &Target, options: &LockOptions, deadline: tokio::time::Instant) -> Result<()> {
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut live = None;
        for (key, _) in target.list(LOCKS_FOLDER).await? {
            if !key.rsplit('/').next().is_some_and(|name| name.starts_with("shared-")) {
                continue;
            }
            let Some((bytes, _)) = read_lock_object(target, &key).await? else {
                continue;
            };
            let seen = Seen::read(&bytes, &options.readers);
            match seen.stale(options) {
                Some(reason) => {
                    warn_takeover(target, &key, &seen, &reason);
                    target.delete(&key).await?;
                }
                None => live = Some(seen.describe()),
            }
        }
        let Some(holder) = live else {
            return Ok(());
        };
        wait_once(target, holder, deadline, &mut backoff).await?;
    }
}

/// After taking a lock failed midway (its write was done but its answer lost, and a later
/// request failed): removes our lock object if it is there, so that a target the command goes
/// on without is not left locked until the lease runs out. Best effort.
async fn remove_if_mine(target: &Target, mine: &StoredLock, mode: LockMode) {
    let key = match mode {
        LockMode::Shared => shared_key(&mine.id),
        LockMode::Append | LockMode::Exclusive => WRITER_KEY.to_string(),
    };
    if target.holds(&key, &mine.to_bytes()).await.is_ok_and(|holds| holds == Some(true))
        && let Err(error) = target.delete(&key).await
    {
        tracing::warn!("{}: could not remove {key}, this command's own lock: {error}", target.location());
    }
}

/// The object of the shared lock `id`.
fn shared_key(id: &str) -> String {
    format!("{LOCKS_FOLDER}/shared-{id}")
}

/// Reads a lock object. One that storage holds but that is no lock object a reader should
/// open (a FIFO planted on a local folder, an object past [`crate::target::MAX_MUTABLE_OBJECT`])
/// reads as empty, which is no lock: stale, so taken over or removed like any other.
async fn read_lock_object(target: &Target, key: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
    match target.get_versioned(key).await {
        Err(Error::Corrupt { detail, .. }) => {
            tracing::warn!("{}: {key} is not a lock ({detail})", target.location());
            Ok(Some((Bytes::new(), ObjectVersion::unknown())))
        }
        other => other,
    }
}

fn warn_takeover(target: &Target, key: &str, seen: &Seen, reason: &str) {
    tracing::warn!("{}: taking over stale lock {key} held by {} ({reason})", target.location(), seen.describe());
}

/// The lock now held, with its refresher running.
fn held(
    target: &Target,
    key: String,
    mut mine: StoredLock,
    options: &LockOptions,
    took_over_exclusive: bool,
) -> RepositoryLock {
    let lost = Arc::new(AtomicBool::new(false));
    let id = mine.id.clone();
    let (refresh_target, refresh_key, refresh_lost) = (target.clone(), key.clone(), lost.clone());
    let (every, now) = (options.lease / 3, options.now);
    let readers = options.readers.clone();
    let refresher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            // Ours still? One taken over (we were not refreshed in time) is not taken back.
            let current = refresh_target.get_versioned(&refresh_key).await;
            let version = match current {
                Ok(Some((bytes, version))) if StoredLock::parse(&bytes).is_some_and(|l| l.id == mine.id) => version,
                Ok(found) => {
                    let by = found.map_or_else(
                        || "someone (removed)".into(),
                        |(bytes, _)| Seen::read(&bytes, &readers).describe(),
                    );
                    tracing::error!("{}: lock {refresh_key} was taken over by {by}", refresh_target.location());
                    refresh_lost.store(true, Ordering::Relaxed);
                    return;
                }
                Err(error) => {
                    tracing::warn!("{}: refreshing lock {refresh_key}: {error}", refresh_target.location());
                    continue;
                }
            };
            mine.refreshed = now();
            let written = match refresh_target.replace(&refresh_key, mine.to_bytes(), &version).await {
                Ok(Replaced::Unsupported) => refresh_target.overwrite(&refresh_key, mine.to_bytes()).await,
                Ok(_) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = written {
                tracing::warn!("{}: refreshing lock {refresh_key}: {error}", refresh_target.location());
            }
        }
    });
    RepositoryLock {
        target: target.clone(),
        key,
        id,
        refresher: Some(refresher),
        lost,
        now: options.now,
        lease: options.lease,
        took_over_exclusive,
        written: true,
    }
}

/// Whether a lock object could not be written because the storage refuses writes (read-only
/// credentials, an immutable folder or a read-only mount) or has no room left: asking again
/// gets the same answer.
fn cannot_write(error: &Error) -> bool {
    let Error::Storage { source, .. } = error else {
        return false;
    };
    crate::target::is_refusal(source)
        || matches!(
            crate::target::io_kind(source),
            Some(std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        )
}

/// A reader that cannot write its shared lock (`why`): an auditor's read-only credentials, a
/// full disk that `verify` is run to look at. It still waits, up to `deadline`, while a live
/// exclusive holder (a prune, a rekey) has `locks/writer`, then reads without a lock object;
/// one that starts meanwhile does not see it, and may delete what it reads: what then goes
/// missing fails the command (a restore changes nothing) or is reported (verify), with a
/// warning that says why.
async fn read_without_lock(
    target: &Target,
    options: &LockOptions,
    deadline: tokio::time::Instant,
    why: &Error,
) -> Result<RepositoryLock> {
    let mut backoff = Duration::from_millis(250);
    loop {
        let holder = match read_lock_object(target, WRITER_KEY).await? {
            Some((bytes, _)) => {
                let seen = Seen::read(&bytes, &options.readers);
                let exclusive = seen.lock.as_ref().is_some_and(|lock| lock.mode == LockMode::Exclusive);
                (exclusive && seen.stale(options).is_none()).then(|| seen.describe())
            }
            None => None,
        };
        let Some(holder) = holder else { break };
        wait_once(target, holder, deadline, &mut backoff).await?;
    }
    tracing::warn!(
        "{}: cannot write a shared lock ({why}): reading without one; a prune, forget or rekey started meanwhile \
         would not wait for this command, and what it removed would be reported missing",
        target.location()
    );
    Ok(RepositoryLock {
        target: target.clone(),
        key: String::new(),
        id: String::new(),
        refresher: None,
        lost: Arc::new(AtomicBool::new(false)),
        now: options.now,
        lease: options.lease,
        took_over_exclusive: false,
        written: false,
    })
}

/// Which locks `unlock` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Only stale ones (their process gone on this host, or not refreshed within their lease).
    Stale,
    /// Every lock, live or not (a holder on another host known to be dead).
    All,
}

/// A lock `unlock` found.
#[derive(Debug, Clone, Serialize)]
pub struct FoundLock {
    /// The target.
    pub location: String,
    /// The lock object.
    pub key: String,
    /// Who holds it.
    pub holder: String,
    /// Why it is stale, if it is.
    pub stale: Option<String>,
    /// Whether it was removed.
    pub removed: bool,
}

/// Removes a target's stale locks (or all of them), saying what it found.
pub async fn remove_locks(target: &Target, removal: Removal, options: &LockOptions) -> Result<Vec<FoundLock>> {
    let mut found = Vec::new();
    for (key, _) in target.list(LOCKS_FOLDER).await? {
        let Some((bytes, _)) = read_lock_object(target, &key).await? else {
            continue;
        };
        let seen = Seen::read(&bytes, &options.readers);
        let stale = seen.stale(options);
        let removed = removal == Removal::All || stale.is_some();
        if removed {
            target.delete(&key).await?;
        }
        found.push(FoundLock { location: target.location().to_string(), key, holder: seen.describe(), stale, removed });
    }
    // A folder at `locks/writer` that still holds anything (what is not listed: folders, names
    // the listing skips) blocks every appender: said, for a person to remove.
    if target.has_full_folder_at(WRITER_KEY) {
        found.push(FoundLock {
            location: target.location().to_string(),
            key: WRITER_KEY.into(),
            holder: "no one: a folder is in its place (crmvault makes none: planted in storage?); remove it by hand"
                .into(),
            stale: Some("not a lock".into()),
            removed: false,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::OpenMode;

    fn options(command: &str, pid: u32) -> LockOptions {
        LockOptions {
            holder: Holder { hostname: "here".into(), pid, command: command.into() },
            lease: DEFAULT_LEASE,
            wait: Duration::ZERO,
            readers: Arc::new(Vec::new()),
            now: Utc::now,
            process_running: |pid| pid != 4_000_000,
        }
    }

    fn folder() -> (tempfile::TempDir, Target) {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        (dir, target)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn modes_conflict_as_documented() {
        let (_dir, target) = folder();
        let identity = crypto::generate_identity();
        let recipients = [identity.to_public()];
        let mut reading = options("verify", 1);
        reading.readers = Arc::new(vec![identity]);
        let shared = acquire(&target, &recipients, LockMode::Shared, &reading).await.unwrap();
        let shared_too = acquire(&target, &recipients, LockMode::Shared, &reading).await.unwrap();
        let append = acquire(&target, &recipients, LockMode::Append, &options("backup", 2)).await.unwrap();
        let error = acquire(&target, &recipients, LockMode::Append, &reading).await.unwrap_err();
        assert!(matches!(error, Error::Locked { .. }), "{error}");
        assert!(error.to_string().contains("backup (host here, pid 2, append lock since"), "{error}");
        append.release().await.unwrap();
        // Readers still there: an exclusive taker waits for them, then gives up and lets go.
        let error = acquire(&target, &recipients, LockMode::Exclusive, &options("rekey", 3)).await.unwrap_err();
        assert!(error.to_string().contains("someone (key needed to see who; shared lock"), "{error}");
        assert!(target.size_of(WRITER_KEY).await.unwrap().is_none());
        shared.release().await.unwrap();
        shared_too.release().await.unwrap();
        let exclusive = acquire(&target, &recipients, LockMode::Exclusive, &options("rekey", 3)).await.unwrap();
        for mode in [LockMode::Shared, LockMode::Append, LockMode::Exclusive] {
            let error = acquire(&target, &recipients, mode, &reading).await.unwrap_err();
            assert!(error.to_string().contains("rekey (host here, pid 3, exclusive lock"), "{mode:?}: {error}");
        }
        exclusive.release().await.unwrap();
        assert!(target.list(LOCKS_FOLDER).await.unwrap().is_empty());
    }

    #[test]
    fn a_lock_object_from_storage_is_never_believed_into_a_panic() {
        let reading = options("backup", 1);
        let forged = |lease: &str, refreshed: &str| {
            let text = format!(
                r#"{{"format":"crmvault-lock-1","id":"1","mode":"append","since":"{refreshed}","refreshed":"{refreshed}","lease_seconds":{lease}}}"#
            );
            Seen::read(text.as_bytes(), &[])
        };
        // A lease is believed up to a day, and a refresh from the future not at all: a forged
        // lock stops backups for a day at most (FORMAT.md, *Locks*).
        assert!(forged("18446744073709551615", "2020-01-01T00:00:00Z").stale(&reading).is_some());
        assert!(forged("9223372036854775807", "0001-01-01T00:00:00Z").stale(&reading).is_some());
        let future = forged("18446744073709551615", "9999-01-01T00:00:00Z").stale(&reading);
        assert!(future.is_some_and(|why| why.contains("in the future")));
        assert!(forged("1", "2020-01-01T00:00:00Z").stale(&reading).is_some());
        let now = chrono::Utc::now().to_rfc3339();
        assert!(forged("600", &now).stale(&reading).is_none());
        // Nearly a day ahead with a day's lease would live two days: more than ten minutes
        // ahead is no refresh at all.
        let ahead = (chrono::Utc::now() + chrono::Duration::minutes(23 * 60 + 59)).to_rfc3339();
        assert!(forged("86400", &ahead).stale(&reading).is_some());
        let skewed = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
        assert!(forged("600", &skewed).stale(&reading).is_none());
        assert!(forged("18446744073709551615", &now).stale(&reading).is_none());
        let oversized = vec![b'{'; 70_000];
        for junk in [&b"{}"[..], b"not json", &oversized] {
            let seen = Seen::read(junk, &[]);
            assert!(seen.stale(&reading).is_some());
            assert_eq!(seen.describe(), "an unreadable lock object");
        }
        // A holder sealed to someone else reads as someone.
        let stranger = crypto::generate_identity();
        let mine = new_lock(&[stranger.to_public()], LockMode::Shared, &reading);
        let seen = Seen::read(&mine.to_bytes(), &[crypto::generate_identity()]);
        assert!(
            seen.describe().starts_with("someone (key needed to see who; shared lock since "),
            "{}",
            seen.describe()
        );
        let seen = Seen::read(&mine.to_bytes(), &[stranger]);
        assert!(seen.describe().starts_with("backup (host here, pid 1, shared lock since "), "{}", seen.describe());
        // Written without a key: no holder to read, which the key does not change.
        let keyless = new_lock(&[], LockMode::Shared, &reading);
        let seen = Seen::read(&keyless.to_bytes(), &[crypto::generate_identity()]);
        assert!(
            seen.describe().starts_with("a holder it does not name (a command run without a key"),
            "{}",
            seen.describe()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unlock_deletes_nothing_through_a_locks_folder_planted_as_a_link() {
        let (dir, target) = folder();
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("writer"), "precious").unwrap();
        std::fs::write(victim.path().join("a.txt"), "precious").unwrap();
        std::os::unix::fs::symlink(victim.path(), dir.path().join(LOCKS_FOLDER)).unwrap();
        let _ = remove_locks(&target, Removal::All, &options("unlock", 1)).await;
        assert!(victim.path().join("writer").exists() && victim.path().join("a.txt").exists());
    }

    /// A folder planted at `locks/writer` (which `unlock` does not list) would block every
    /// backup of the target for good: an empty one is taken away by the next taker; one
    /// holding files is named, and `unlock` then removes those files as unreadable locks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_folder_planted_at_the_writer_lock_blocks_no_backup_for_good() {
        let (dir, target) = folder();
        let planted = dir.path().join(WRITER_KEY);
        std::fs::create_dir_all(&planted).unwrap();
        let quick = options("backup", 1);
        let lock = acquire(&target, &[], LockMode::Append, &quick).await.unwrap();
        assert!(planted.is_file(), "the lock object took the empty folder's place");
        lock.release().await.unwrap();

        std::fs::create_dir_all(&planted).unwrap();
        std::fs::write(planted.join("junk"), "planted").unwrap();
        let error = acquire(&target, &[], LockMode::Exclusive, &quick).await.unwrap_err();
        assert!(error.to_string().contains("a folder that is not empty is in this object's place"), "{error}");
        let found = remove_locks(&target, Removal::Stale, &quick).await.unwrap();
        assert!(found.iter().any(|lock| lock.removed && lock.key == format!("{WRITER_KEY}/junk")), "{found:?}");
        acquire(&target, &[], LockMode::Append, &quick).await.unwrap().release().await.unwrap();
        assert!(target.list(LOCKS_FOLDER).await.unwrap().is_empty());
        // A link to nowhere in its place is taken away too.
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &planted).unwrap();
        acquire(&target, &[], LockMode::Append, &quick).await.unwrap().release().await.unwrap();
        assert!(dir.path().join(LOCKS_FOLDER).read_dir().unwrap().next().is_none());
        // One holding what unlock cannot list (a folder, a name like a staging file's) is named.
        std::fs::create_dir_all(planted.join("inside")).unwrap();
        std::fs::write(planted.join("junk#1"), "planted").unwrap();
        let found = remove_locks(&target, Removal::All, &quick).await.unwrap();
        assert!(found.iter().any(|lock| !lock.removed && lock.key == WRITER_KEY), "{found:?}");
    }

    #[test]
    fn a_lock_object_shows_storage_neither_the_host_nor_the_command() {
        let mut holder = options("backup-of-crm", 4242);
        holder.holder.hostname = "db-backup-host.internal".into();
        let admin = crypto::generate_identity();
        let bytes = new_lock(&[admin.to_public()], LockMode::Append, &holder).to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["db-backup-host.internal", "backup-of-crm"] {
            assert!(!text.contains(secret), "{secret} in a lock object: {text}");
        }
        let seen = Seen::read(&bytes, &[admin]);
        assert!(
            seen.describe().starts_with("backup-of-crm (host db-backup-host.internal, pid 4242"),
            "{}",
            seen.describe()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_lock_is_refreshed_and_outlives_its_lease_while_one_left_alone_goes_stale() {
        let (_dir, target) = folder();
        let mut short = options("backup", 1);
        short.lease = Duration::from_secs(1);
        let held = acquire(&target, &[], LockMode::Append, &short).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let error = acquire(&target, &[], LockMode::Append, &options("backup", 2)).await.unwrap_err();
        assert!(matches!(error, Error::Locked { .. }), "{error}");
        // Without its refresher (a stopped process) the same lock is stale after its lease.
        let mut held = held;
        held.refresher.take().unwrap().abort();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let taken = acquire(&target, &[], LockMode::Append, &options("backup", 2)).await.unwrap();
        assert!(!taken.lost());
        // The first holder, back, must not delete the new holder's lock.
        held.release().await.unwrap();
        assert!(target.size_of(WRITER_KEY).await.unwrap().is_some());
        taken.release().await.unwrap();
        assert!(target.size_of(WRITER_KEY).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_lock_is_removed_and_a_dead_holder_is_taken_over() {
        let (_dir, target) = folder();
        let lock = acquire(&target, &[], LockMode::Append, &options("backup", 1)).await.unwrap();
        drop(lock);
        assert!(target.list(LOCKS_FOLDER).await.unwrap().is_empty());

        let identity = crypto::generate_identity();
        let recipients = [identity.to_public()];
        let dead = acquire(&target, &recipients, LockMode::Append, &options("backup", 4_000_000)).await.unwrap();
        std::mem::forget(dead);
        let mut reading = options("backup", 5);
        reading.readers = Arc::new(vec![identity]);
        let taken = acquire(&target, &recipients, LockMode::Append, &reading).await.unwrap();
        taken.release().await.unwrap();
    }
}
