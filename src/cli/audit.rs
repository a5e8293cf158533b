//! The audit trail from the CLI's side: what a run did (the repositories it opened with a key,
//! the snapshots, the database), appended to each of those repositories when the run ends,
//! whatever its outcome; and `crmvault audit`, which lists a trail.

use std::fmt::Write as _;
use std::sync::Mutex;

use crmvault::postgres::Database;
use crmvault::repo::{AuditEntry, Keyring, Repository};

use super::output::{print_json_ok, printable};

/// The commands whose runs are recorded.
const AUDITED: [&str; 10] =
    ["backup", "restore", "drill", "dump", "diff", "verify", "forget", "prune", "rekey", "copy"];

/// What one run did, gathered by the command as it goes.
pub struct AuditLog {
    started: chrono::DateTime<chrono::Utc>,
    inner: Mutex<Gathered>,
}

#[derive(Default)]
struct Gathered {
    /// Each repository opened with a key, by location (the last keyring wins: a rekey's new one).
    targets: Vec<(Repository, Keyring)>,
    snapshots: Vec<String>,
    database: Option<String>,
    /// A `--dry-run`: recorded as such, not as the operation it only planned.
    dry_run: bool,
}

impl Default for AuditLog {
    fn default() -> AuditLog {
        AuditLog { started: chrono::Utc::now(), inner: Mutex::default() }
    }
}

impl AuditLog {
    fn gathered(&self) -> std::sync::MutexGuard<'_, Gathered> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The run opened `repositories` with `keyring`: its record goes to each.
    pub fn opened(&self, repositories: &[Repository], keyring: &Keyring) {
        let mut gathered = self.gathered();
        for repository in repositories {
            let location = repository.target.location();
            gathered.targets.retain(|(known, _)| known.target.location() != location);
            gathered.targets.push((repository.clone(), keyring.clone()));
        }
    }

    /// The run wrote, restored, removed or copied `snapshot`.
    pub fn snapshot(&self, snapshot: impl std::fmt::Display) {
        let snapshot = snapshot.to_string();
        let mut gathered = self.gathered();
        if !gathered.snapshots.contains(&snapshot) {
            gathered.snapshots.push(snapshot);
        }
    }

    /// The run is a `--dry-run`: its record says so (`restore --dry-run`), so that the trail
    /// tells a planned restore from one that wrote into the database it names.
    pub fn dry_run(&self) {
        self.gathered().dry_run = true;
    }

    /// The database the run backed up, restored into or drilled into (shown without password).
    pub fn database(&self, database: &Database) {
        self.gathered().database = Some(database.to_string());
    }

    /// Appends the run's record to every repository it opened with a key, if `command` is one
    /// that is audited; what could not be written is said in a warning each (the run's own
    /// outcome stands).
    pub async fn write(&self, command: Option<&str>, code: u8, error: Option<&str>) {
        let Some(operation) = command.filter(|command| AUDITED.contains(command)) else { return };
        let (targets, snapshots, database, dry_run) = {
            let mut gathered = self.gathered();
            let targets = std::mem::take(&mut gathered.targets);
            (targets, gathered.snapshots.clone(), gathered.database.clone(), gathered.dry_run)
        };
        let entry = AuditEntry {
            operation: if dry_run { format!("{operation} --dry-run") } else { operation.to_string() },
            started: self.started,
            ended: chrono::Utc::now(),
            snapshots,
            user: os_user(),
            host: super::hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            result: match code {
                0 => "ok",
                3 => "partial",
                4 => "alarm",
                _ => "failed",
            }
            .to_string(),
            exit_code: code,
            error: error.map(String::from),
            error_admin: None,
            database,
        };
        for (repository, keyring) in targets {
            // A run that could read data may quote it in its error: for the admins alone.
            let mut entry = entry.clone();
            if keyring.is_admin() {
                entry.seal_error(&repository.data_recipients());
            }
            if let Err(error) = repository.append_audit(&entry, &keyring).await {
                super::output::warning(format_args!(
                    "{}: the audit record of this {operation} was not written: {}",
                    repository.target.location(),
                    printable(&error.to_string())
                ));
            }
        }
    }
}

/// The user this process runs as: its name in /etc/passwd, else `uid N`. Not `$USER`, which
/// the caller sets.
fn os_user() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else { return "unknown".into() };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Prints the trails of the targets (location, trail), in order, and their problems.
pub fn print(
    json: bool,
    trails: &[(String, crmvault::repo::AuditTrail)],
    since: Option<chrono::DateTime<chrono::Utc>>,
) {
    let shown = |record: &&crmvault::repo::AuditRecord| {
        since.is_none_or(|since| record.entry.as_ref().is_none_or(|entry| entry.ended >= since))
    };
    let ok = trails.iter().all(|(_, trail)| trail.problems.is_empty());
    if json {
        let targets: Vec<serde_json::Value> = trails
            .iter()
            .map(|(location, trail)| {
                let records: Vec<serde_json::Value> = trail
                    .records
                    .iter()
                    .filter(shown)
                    .map(|record| {
                        serde_json::json!({
                            "number": record.header.number,
                            "key": record.key,
                            "authenticated": record.authenticated,
                            "entry": record.entry,
                        })
                    })
                    .collect();
                serde_json::json!({ "target": location, "records": records, "problems": trail.problems })
            })
            .collect();
        print_json_ok(&serde_json::json!({ "targets": targets }), ok);
        return;
    }
    for (location, trail) in trails {
        if trails.len() > 1 {
            say!("{location}:");
        }
        for record in trail.records.iter().filter(shown) {
            let Some(entry) = &record.entry else {
                say!("{:>5}  (written before this key could read the trail)", record.header.number);
                continue;
            };
            let snapshots: Vec<String> =
                entry.snapshots.iter().map(|s| printable(&s.chars().take(12).collect::<String>())).collect();
            let forged = if record.authenticated == Some(true) { "" } else { "NOT AUTHENTICATED  " };
            let mut line = format!(
                "{:>5}  {forged}{}  {:<8} {:<7} {}@{}",
                record.header.number,
                entry.ended.format("%Y-%m-%d %H:%M:%S"),
                printable(&entry.operation),
                printable(&entry.result),
                printable(&entry.user),
                printable(&entry.host)
            );
            if !snapshots.is_empty() {
                let _ = write!(line, "  snapshots {}", snapshots.join(", "));
            }
            if let Some(database) = &entry.database {
                let _ = write!(line, "  database {}", printable(database));
            }
            if let Some(error) = &entry.error {
                let _ = write!(line, "  error: {}", printable(error));
            } else if entry.error_admin.is_some() {
                let _ = write!(line, "  error: kept for the admins (give --identity)");
            }
            say!("{line}");
        }
        for problem in &trail.problems {
            say!("problem: {location}: {}", printable(problem));
        }
    }
}
