//! Repository locks as the CLI takes them: `--lock-wait`, who this process is (host, pid,
//! command), which keys may read who holds a lock, and `crmvault unlock`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use crmvault::lock::{self, FoundLock, Holder, LockOptions, Locks, Removal};
use crmvault::repo::Repository;

/// Parses `--lock-wait`: a number of seconds, or a number followed by `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let seconds_per = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{text:?} is not a duration (like 90s, 30m or 2h)")),
    };
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration (like 90s, 30m or 2h)"))?;
    number.checked_mul(seconds_per).map(Duration::from_secs).ok_or_else(|| format!("{text:?} is too long"))
}

/// Whether process `pid` of this host runs (it has a /proc entry).
fn process_running(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The options this process takes locks with, as `command`, reading holders with `readers`.
pub fn options(wait: Duration, command: &str, readers: Vec<age::x25519::Identity>) -> LockOptions {
    LockOptions {
        holder: Holder { hostname: super::hostname(), pid: std::process::id(), command: command.into() },
        lease: lock::DEFAULT_LEASE,
        wait,
        readers: Arc::new(readers),
        now: chrono::Utc::now,
        process_running,
    }
}

/// Keys at hand that may read who holds a lock: the admin identity given, and this host's
/// writer keys of these repositories. Unreadable ones are passed over (a holder is then
/// "someone"); the command that needs the key says why it does not read.
pub fn readers(repositories: &[Repository], identity: Option<&Path>, config_dir: &Path) -> Vec<age::x25519::Identity> {
    let mut found = Vec::new();
    if let Some(path) = identity {
        found.extend(crmvault::crypto::read_identity_file(path).unwrap_or_default());
    }
    for repository in repositories {
        let path = crmvault::repo::writer_key_path(config_dir, &repository.config.id);
        if path.exists() {
            found.extend(crmvault::crypto::read_identity_file(&path).unwrap_or_default());
        }
    }
    found
}

/// Releases a command's locks; a failure is a warning (the work is done, and a lock left behind
/// goes stale).
pub async fn release(locks: Locks) {
    if let Err(error) = locks.release().await {
        tracing::warn!("could not remove a lock: {error}");
    }
}

/// `crmvault unlock`: every target's stale locks, or all of them.
pub async fn unlock(repositories: &[Repository], removal: Removal, options: &LockOptions) -> Result<Vec<FoundLock>> {
    let mut found = Vec::new();
    for repository in repositories {
        found.extend(lock::remove_locks(&repository.target, removal, options).await?);
    }
    Ok(found)
}

/// Prints what `unlock` found and did.
pub fn print_unlock(json: bool, found: &[FoundLock]) {
    if json {
        let document = serde_json::json!({ "command": "unlock", "locks": found, "ok": true });
        say!("{}", super::output::json_text(&document));
        return;
    }
    if found.is_empty() {
        say!("no locks");
    }
    for lock in found {
        let state = match (&lock.stale, lock.removed) {
            (Some(reason), _) => format!("stale: {reason}"),
            (None, true) => "live, removed as asked".into(),
            (None, false) => "live".into(),
        };
        let verb = if lock.removed { "removed" } else { "kept" };
        say!("{verb} {}/{} held by {} ({state})", lock.location, lock.key, lock.holder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_wait_takes_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "m", "10d", "-5", "1.5h", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
