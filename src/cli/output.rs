//! Everything the CLI prints: text for people, one JSON document for scripts.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crmvault::backup;
use crmvault::commands::{copy, init, snapshots, verify};
use crmvault::postgres::Database;
use crmvault::progress::Unit;
use crmvault::prune;
use crmvault::rekey;
use crmvault::restore;

/// Set by `--log-format json`: warnings are log lines then, as JSON.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes warnings JSON log lines (`--log-format json`).
pub fn log_as_json() {
    JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A warning the command goes on after: `crmvault: warning: …` on stderr, or a JSON log line.
pub fn warning(text: std::fmt::Arguments<'_>) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!("{text}");
    } else {
        eprintln!("crmvault: warning: {text}");
    }
}

/// The error that ends a run (`code`), with what to do (`hint`): `crmvault: error: …` on
/// stderr, or a JSON log line.
pub fn error(message: &str, hint: Option<&str>, code: u8) {
    match hint {
        _ if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) => {
            tracing::error!(exit_code = code, hint, "{message}");
        }
        Some(hint) => eprintln!("crmvault: error: {message}; {hint}"),
        None => eprintln!("crmvault: error: {message}"),
    }
}

pub use crmvault::error::printable;

/// Set once stdout is closed by its reader: nothing more is written there.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes one line on stdout (the `say!` macro). A reader that went away (`| head`) ends the
/// output, not the command: a backup still finishes and releases what it holds.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(line).and_then(|()| stdout.write_all(b"\n")).and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => STDOUT_CLOSED.store(true, Ordering::Relaxed),
        Err(error) => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            warning(format_args!("cannot write to stdout: {error}"));
        }
    }
}

/// A JSON document as it is printed: indented for a person at a terminal, on one line
/// otherwise, so that a log that `--json >> crmvault.json` appends to every night holds one
/// document per line (JSON Lines).
pub fn json_text(value: &serde_json::Value) -> String {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        serde_json::to_string_pretty(value).expect("reports serialise")
    } else {
        serde_json::to_string(value).expect("reports serialise")
    }
}

/// Prints a successful command's report as one JSON document, with `"ok": true`.
pub(super) fn print_json<T: serde::Serialize>(value: &T) {
    print_json_ok(value, true);
}

/// Prints a report as one JSON document whose `ok` says whether the command did all it should
/// (false for a backup that missed a target or a verify that found problems: exit code 3).
pub(super) fn print_json_ok<T: serde::Serialize>(value: &T, ok: bool) {
    let mut value = serde_json::to_value(value).expect("reports serialise");
    if let Some(object) = value.as_object_mut() {
        object.insert("ok".into(), ok.into());
    }
    say!("{}", json_text(&value));
}

/// Under `--json`, a run that ended with exit 3 (finished, with problems) or 4 (the data-loss
/// alarm) says so on stderr as well: the document goes to a log, and cron mails stderr.
pub fn partial(command: Option<&str>, code: u8) {
    let what = match code {
        3 => "finished with problems (a target failed, or damage was found)",
        4 => "raised the data-loss alarm",
        _ => return,
    };
    let command = command.unwrap_or("crmvault");
    warning(format_args!("{command} {what}: exit {code}; the JSON document on stdout says what"));
}

/// The one JSON document of a command that failed (exit code 1 or 2): a cron job that appends
/// `--json` output to a log records the failed night too.
pub fn failure(command: Option<&str>, error: &str, hint: Option<&str>, exit_code: u8, elapsed: Duration) {
    print_json_ok(
        &serde_json::json!({
            "command": command,
            "error": error,
            "hint": hint,
            "exit_code": exit_code,
            "seconds": elapsed.as_secs_f64(),
        }),
        false,
    );
}

/// Bytes in binary units.
pub fn size(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

pub fn keygen(json: bool, recipient: &str, path: &Path) {
    if json {
        print_json(&serde_json::json!({ "recipient": recipient, "identity_file": path }));
    } else {
        say!("{recipient}");
        eprintln!(
            "identity written to {} (0600); keep it offline. Its public recipient, {recipient}, is what \
             `crmvault init --recipient` takes",
            path.display()
        );
    }
}

/// Why `keygen` wrote nothing, in one line: an existing file is never replaced, since it may be
/// the only copy of an identity that repositories are encrypted to.
pub fn keygen_failed(path: &Path, error: crmvault::Error) -> anyhow::Error {
    match &error {
        crmvault::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
            anyhow::anyhow!("{} exists; keygen never overwrites an identity: choose another path", path.display())
        }
        _ => anyhow::Error::new(error).context("writing the identity file"),
    }
}

/// `checked`: the fingerprint is the repository's (made here, or a copy's source checked
/// against a pin or `--fingerprint`), not only what a copy's source claims.
pub fn init(json: bool, report: &init::InitReport, checked: bool) {
    if json {
        print_json(report);
        return;
    }
    for location in &report.locations {
        say!("initialised repository {} at {location}", report.repository_id);
    }
    if checked {
        say!(
            "fingerprint: {} (keep it beside each admin identity: restoring on another machine needs it)",
            report.fingerprint
        );
    } else {
        say!(
            "fingerprint claimed by the source: {} (NOT checked: this machine does not pin this repository and no --fingerprint \
             was given; compare it with the one the admins keep, never keep it as theirs)",
            report.fingerprint
        );
    }
    if let Some(writer_key) = &report.writer_key {
        say!("writer key: {} (stays on this backup host; it can write backups, never read them)", writer_key.display());
    }
}

pub fn backup(json: bool, report: &backup::BackupReport, elapsed: Duration) {
    if json {
        let mut value = serde_json::to_value(report).expect("reports serialise");
        value["seconds"] = serde_json::json!(elapsed.as_secs_f64());
        print_json_ok(&value, report.failed_targets() == 0 && report.damaged_targets() == 0);
        // The JSON goes to a log nobody reads each night; cron mails stderr: what went wrong
        // is said there too (a night that went well says nothing).
        for target in &report.targets {
            if let Some(error) = &target.error {
                warning(format_args!("{} (no snapshot written there)", target_failed(&target.location, error)));
            }
            for problem in &target.problems {
                warning(format_args!("DAMAGED {}: {}", target.location, printable(problem)));
            }
        }
        for alarm in &report.alarms {
            warning(format_args!("ALARM {}", printable(&alarm.to_string())));
        }
        return;
    }
    say!("{}", report.snapshot_id);
    eprintln!(
        "snapshot {} saved: {}, {}, read {}, {} of {} new, {:.1}s",
        report.snapshot_id.short(),
        count(report.tables as u64, "table"),
        count(report.rows, "row"),
        size(report.bytes_read),
        report.new_chunks,
        count(report.chunks as u64, "chunk"),
        elapsed.as_secs_f64()
    );
    for target in &report.targets {
        match &target.error {
            None if target.recorded_missed.is_empty() && target.rewritten_bytes > 0 => eprintln!(
                "  ok      {}: added {}, with {} of chunks stored again from packs the last snapshot hardly used",
                target.location,
                size(target.bytes_added),
                size(target.rewritten_bytes)
            ),
            None if target.recorded_missed.is_empty() => {
                eprintln!("  ok      {}: added {}", target.location, size(target.bytes_added));
            }
            None => eprintln!(
                "  ok      {}: added {}; recorded the {} earlier backups did not store there",
                target.location,
                size(target.bytes_added),
                count(target.recorded_missed.len() as u64, "snapshot")
            ),
            Some(error) => {
                eprintln!("  FAILED  {} (no snapshot written there)", target_failed(&target.location, error));
            }
        }
        for problem in &target.problems {
            eprintln!("  DAMAGED {}: {}", target.location, printable(problem));
        }
        if target.small_packs >= backup::SMALL_PACKS_ADVISED {
            eprintln!(
                "  note    {}: the snapshot is spread over {} small packs (a night's changes each), which slows \
                 restores; an admin's `crmvault prune --identity` merges them (docs/OPERATIONS.md, Prune)",
                target.location, target.small_packs
            );
        }
    }
    for alarm in &report.alarms {
        eprintln!("  ALARM   {}", printable(&alarm.to_string()));
    }
    if !report.alarms.is_empty() {
        eprintln!(
            "data-loss alarm: snapshot {} is stored and flagged (forget keeps it); check the tables above \
             before the next backup",
            report.snapshot_id.short()
        );
    }
}

/// A target's failure: its error, with its location first unless the error names it already
/// (most do: "no crmvault repository at …").
fn target_failed(location: &str, error: &str) -> String {
    if error.contains(location) { error.to_string() } else { format!("{location}: {error}") }
}

/// What `retire-target` forgot: (location, repository id).
pub fn retired(json: bool, retired: &[(String, String)]) {
    if json {
        let places: Vec<serde_json::Value> = retired
            .iter()
            .map(|(location, id)| serde_json::json!({ "location": location, "repository_id": id }))
            .collect();
        print_json(&serde_json::json!({ "command": "retire-target", "retired": places, "ok": true }));
        return;
    }
    for (location, id) in retired {
        say!(
            "{location}: no longer a place of repository {id} on this machine (nothing there was deleted; given to a \
             command again, it is opened as a new place)"
        );
    }
}

pub fn snapshots(json: bool, list: &[snapshots::SnapshotSummary], locations: &[String]) {
    if json {
        print_json(&serde_json::json!({ "snapshots": list }));
        return;
    }
    if list.is_empty() {
        say!("no snapshots");
        return;
    }
    // SIZE: what the snapshot restores (needs a key); ADDED: what its backup stored.
    say!(
        "{:<12}  {:<20}  {:>10}  {:>10}  {:>6}  {:>10}  {:<16}  {:<16}  TAGS",
        "ID",
        "TIME (UTC)",
        "SIZE",
        "ADDED",
        "TABLES",
        "ROWS",
        "DATABASE",
        "HOST"
    );
    for snapshot in list {
        let time = snapshot.time.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
        let (tables, rows, database, host, tags) = match &snapshot.contents {
            Some(c) => (
                c.tables.len().to_string(),
                c.rows.to_string(),
                c.database.clone(),
                c.hostname.clone(),
                c.tags.join(","),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        say!(
            "{:<12}  {:<20}  {:>10}  {:>10}  {:>6}  {:>10}  {:<16}  {:<16}  {}",
            snapshot.id.short(),
            time,
            snapshot.size.map_or_else(|| "-".to_string(), size),
            snapshot.bytes_added.map(size).unwrap_or_default(),
            tables,
            rows,
            database,
            host,
            tags
        );
        if let Some(error) = &snapshot.error {
            say!("  unreadable: {error}");
        }
        for alarm in snapshot.contents.iter().flat_map(|c| &c.alarms) {
            say!("  FLAGGED by the data-loss alarm: {}", printable(&alarm.to_string()));
        }
        let missing: Vec<&str> =
            locations.iter().filter(|l| !snapshot.targets.contains(l)).map(String::as_str).collect();
        if !missing.is_empty() {
            say!("  not on: {}", missing.join(", "));
        }
    }
}

pub fn restore(json: bool, report: &restore::RestoreReport, database: &Database, elapsed: Duration) {
    if json {
        let mut value = serde_json::to_value(report).expect("reports serialise");
        value["seconds"] = serde_json::json!(elapsed.as_secs_f64());
        print_json(&value);
        return;
    }
    if report.sources.served.len() > 1 || !report.sources.fallbacks.is_empty() {
        for (location, chunks) in &report.sources.served {
            eprintln!("  {} from {location}", count(*chunks as u64, "chunk"));
        }
        for fallback in &report.sources.fallbacks {
            eprintln!("  fell back: {fallback}");
        }
    }
    if !report.rows_chosen.is_empty() {
        let width = report.rows_chosen.iter().map(|t| printable(&t.table).chars().count()).max().unwrap_or(5).max(5);
        for table in &report.rows_chosen {
            let outcome = match (table.inserted, table.updated, table.skipped) {
                (Some(inserted), Some(updated), Some(skipped)) => {
                    format!("  ({inserted} inserted, {updated} updated, {skipped} left as they were)")
                }
                _ => String::new(),
            };
            let size = table.bytes.map(|bytes| format!("  {:>10}", size(bytes))).unwrap_or_default();
            let renamed = table.restored_as.as_ref().map(|to| format!("  as {}", printable(to))).unwrap_or_default();
            say!("{:<width$}  {:>8} rows{size}{outcome}{renamed}", printable(&table.table), table.rows);
        }
    }
    if report.dry_run && !report.tables_planned {
        say!(
            "snapshot {}: --rows chooses {} in {} (every table read was proven); nothing was written",
            report.snapshot_id.short(),
            count(report.rows, "row"),
            count(report.tables as u64, "table")
        );
        return;
    }
    if report.dry_run {
        say!(
            "snapshot {}: the restore would load {} in {}, {} of data, into {database}; nothing was written",
            report.snapshot_id.short(),
            count(report.rows, "row"),
            count(report.tables as u64, "table"),
            size(report.bytes)
        );
        return;
    }
    say!(
        "restored snapshot {} into {database}: {}, {}, {} of data, every chunk and table digest checked, {:.1}s",
        report.snapshot_id.short(),
        count(report.tables as u64, "table"),
        count(report.rows, "row"),
        size(report.bytes),
        elapsed.as_secs_f64()
    );
}

pub fn ls(json: bool, listing: &crmvault::commands::ls::Listing) {
    if json {
        print_json(listing);
        return;
    }
    say!(
        "snapshot {} of {} ({}, host {})",
        listing.snapshot_id.short(),
        printable(&listing.database),
        listing.time.format("%Y-%m-%d %H:%M:%S UTC"),
        printable(&listing.hostname)
    );
    let name = |schema: &str, table: &str| printable(&format!("{schema}.{table}"));
    let width = listing.tables.iter().map(|t| name(&t.schema, &t.name).chars().count()).max().unwrap_or(5).max(5);
    say!("{:<width$}  {:>12}  {:>10}", "TABLE", "ROWS", "SIZE");
    for table in &listing.tables {
        say!("{:<width$}  {:>12}  {:>10}", name(&table.schema, &table.name), table.rows, size(table.bytes));
    }
    for schema in &listing.schemas {
        let label = format!("{} ({})", printable(&schema.name), count(schema.tables as u64, "table"));
        say!("{label:<width$}  {:>12}  {:>10}", schema.rows, size(schema.bytes));
    }
    if let Some((objects, bytes)) = listing.large_objects {
        say!("{:<width$}  {objects:>12}  {:>10}", "large objects", size(bytes));
    }
    say!("{}", count(listing.sequences as u64, "sequence"));
    if let Some(roles) = &listing.roles {
        let roles: Vec<String> = roles.iter().map(|r| printable(r)).collect();
        say!("roles its objects name: {}", if roles.is_empty() { "none".to_string() } else { roles.join(", ") });
    }
    for alarm in &listing.alarms {
        say!("FLAGGED by the data-loss alarm: {}", printable(alarm));
    }
}

pub fn verify(json: bool, report: &verify::VerifyReport) {
    if json {
        print_json_ok(report, report.problems.is_empty());
        return;
    }
    // One line per object and what is wrong with it (the library grouped them), then the sum.
    for problem in &report.problems {
        let mut affected = Vec::new();
        if problem.chunks > 0 {
            affected.push(format!("{} unreadable", count(problem.chunks, "chunk")));
        }
        if !problem.snapshots.is_empty() {
            let ids: Vec<&str> = problem.snapshots.iter().map(|s| &s[..12.min(s.len())]).collect();
            affected.push(format!("{} {}", noun(ids.len() as u64, "snapshot"), ids.join(", ")));
        }
        let affected = if affected.is_empty() { String::new() } else { format!(" ({})", affected.join("; ")) };
        // Most errors name their object already ("snapshots/… is corrupt …"): say it once.
        if problem.problem.starts_with(&problem.object) {
            say!("problem: {}: {}{affected}", problem.target, printable(&problem.problem));
        } else {
            say!(
                "problem: {}: {}: {}{affected}",
                problem.target,
                printable(&problem.object),
                printable(&problem.problem)
            );
        }
    }
    let chunks = if report.chunks > 0 {
        format!(", {} decrypted and re-hashed", count(report.chunks as u64, "chunk"))
    } else {
        String::new()
    };
    let verdict = if report.problems.is_empty() {
        "no problems".to_string()
    } else {
        count(report.problems.len() as u64, "problem")
    };
    let subset = report.subset.as_ref().map_or(String::new(), |subset| {
        let kind = if subset.slice.ends_with('%') { "sample" } else { "slice" };
        format!(", packs {kind} {} ({} of {} read)", subset.slice, subset.packs_read, subset.packs)
    });
    say!(
        "checked {}, {} ({}){subset}{chunks}: {verdict}",
        count(report.snapshots as u64, "snapshot"),
        count(report.objects as u64, "object"),
        size(report.bytes)
    );
}

/// How far a long command is, on stderr, drawn only on a terminal (never under `--json` or
/// in cron's log): a bar with rate and time left where the amount of work is known, a counter
/// where it is not, and tables done out of how many where the phase has them.
pub struct Bar {
    bar: Option<indicatif::ProgressBar>,
    items: Mutex<Items>,
}

/// The current phase's name and its items (tables) done out of how many.
#[derive(Default)]
struct Items {
    phase: String,
    done: u64,
    total: Option<u64>,
}

impl Items {
    fn message(&self) -> String {
        match self.total {
            Some(total) => format!("{} {}/{total} {}", self.phase, self.done, noun(total, "table")),
            None => self.phase.clone(),
        }
    }
}

/// The bar on the terminal now, if any: log lines are written above it, not through it.
static DRAWN: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Where log lines go: stderr, with the progress bar (if one is drawn) lifted out of the way
/// while a line is written, so that a warning is never torn by the bar's redraws.
#[derive(Clone, Copy)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let drawn = DRAWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match drawn {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

impl Bar {
    pub fn start(json: bool) -> Arc<Bar> {
        use std::io::IsTerminal;
        let items = Mutex::new(Items::default());
        if json || !std::io::stderr().is_terminal() {
            return Arc::new(Bar { bar: None, items });
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        *DRAWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bar.clone());
        Arc::new(Bar { bar: Some(bar), items })
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            DRAWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        }
    }

    fn update_items(&self, change: impl FnOnce(&mut Items)) {
        let Some(bar) = &self.bar else { return };
        let mut items = self.items.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut items);
        bar.set_message(items.message());
    }
}

impl crmvault::progress::Progress for Bar {
    fn is_shown(&self) -> bool {
        self.bar.is_some()
    }

    fn phase(&self, name: &str, unit: Unit, total: Option<u64>) {
        let Some(bar) = &self.bar else { return };
        let template = match (total, unit) {
            (Some(_), Unit::Bytes) => {
                "{spinner} {msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta} left)"
            }
            (Some(_), Unit::Objects) => "{spinner} {msg} [{wide_bar}] {human_pos}/{human_len} objects ({eta} left)",
            (Some(_), Unit::Snapshots) => "{spinner} {msg} [{wide_bar}] {human_pos}/{human_len} snapshots ({eta} left)",
            (None, Unit::Bytes) => "{spinner} {msg} {binary_bytes} ({binary_bytes_per_sec}) {elapsed}",
            (None, Unit::Objects) => "{spinner} {msg} {human_pos} objects {elapsed}",
            (None, Unit::Snapshots) => "{spinner} {msg} {human_pos} snapshots {elapsed}",
            (Some(_), Unit::Checks) => "{spinner} {msg} [{wide_bar}] {human_pos}/{human_len} ({eta} left)",
            (None, Unit::Checks) => "{spinner} {msg} {elapsed}",
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(template).expect("the templates are valid").progress_chars("=> "),
        );
        bar.reset();
        match total {
            Some(total) => bar.set_length(total),
            None => bar.unset_length(),
        }
        self.update_items(|items| *items = Items { phase: name.to_string(), done: 0, total: None });
    }

    fn advance(&self, amount: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(amount);
        }
    }

    fn items(&self, total: u64) {
        self.update_items(|items| items.total = Some(total));
    }

    fn item_done(&self, _name: &str) {
        self.update_items(|items| items.done += 1);
    }
}

pub fn copy(json: bool, report: &copy::CopyReport, from: &str, to: &str) {
    if json {
        // Exit 3 when a snapshot could not be copied or something could not be repaired.
        print_json_ok(report, report.complete());
        return;
    }
    say!(
        "copied {} from {from} to {to} ({}, {}); {} already there",
        count(report.snapshots_copied.len() as u64, "snapshot"),
        count(report.objects_copied as u64, "object"),
        size(report.bytes_copied),
        if report.snapshots_present == 1 { "1 was".to_string() } else { format!("{} were", report.snapshots_present) }
    );
    for (id, why) in &report.snapshots_skipped {
        say!("left out snapshot {id}: {why}");
    }
    for (id, why) in &report.snapshots_failed {
        say!("not copied: snapshot {id}: {why}");
    }
    if report.objects_repaired > 0 || report.markers_cleared > 0 {
        say!(
            "repaired {} at {to} (in the counts above); {} of damage cleared",
            count(report.objects_repaired as u64, "object"),
            count(report.markers_cleared as u64, "marker")
        );
    }
    for (key, why) in &report.not_repaired {
        say!("not repaired: {to}/{key}: {why}");
    }
}

pub fn fingerprint(json: bool, repository: &crmvault::repo::Repository, locations: &[String]) {
    let generation = crmvault::trust::Fingerprint::of_config_hash(&repository.config_hash).expect("a BLAKE3 hash");
    if json {
        print_json(&serde_json::json!({
            "fingerprint": repository.fingerprint(), "repository_id": repository.config.id, "locations": locations,
            "generation": repository.config.generation, "generation_fingerprint": generation,
        }));
    } else {
        say!("{}", repository.fingerprint());
        if repository.config.generation > 0 {
            eprintln!(
                "(rekeyed: generation {}, whose fingerprint {generation} is also accepted)",
                repository.config.generation
            );
        }
    }
}

pub fn rekey(json: bool, report: &rekey::RekeyReport) {
    if json {
        print_json_ok(report, !report.reencrypted.iter().any(rekey::Reencrypted::incomplete));
        return;
    }
    for location in &report.caught_up {
        say!("brought {location} to the newest generation (it was behind: a rekey that did not reach it)");
    }
    if !report.changed {
        say!(
            "nothing to change: repository {} is at generation {} on every target",
            report.repository_id,
            report.generation
        );
        return;
    }
    for recipient in &report.added {
        say!(
            "added admin {recipient}: it reads what is written from now on (the next backup stores every chunk \
             again, so that it can read that snapshot whole)"
        );
    }
    for recipient in &report.removed {
        say!("removed admin {recipient}: it reads nothing written from now on");
    }
    for (location, key) in &report.settled_records_removed {
        say!("{location}: removed {key}, a missed record whose snapshots were copied there since");
    }
    say!(
        "repository {} is at generation {} on {}: {} carried, {} rewritten",
        report.repository_id,
        report.generation,
        count(report.locations.len() as u64, "target"),
        count(report.snapshots_carried as u64, "snapshot"),
        count_of(report.indexes_rewritten as u64, "index", "indexes")
    );
    // Who reads from now on, in full: a generation this rekey built on may have changed it too.
    say!("admins now: {}", report.recipients.join(", "));
    for done in &report.reencrypted {
        say!(
            "re-encrypted {}: {}, {}, {}, {} written again; {} deleted",
            done.location,
            count(done.snapshots as u64, "snapshot"),
            count(done.packs as u64, "pack"),
            count_of(done.dictionaries as u64, "dictionary", "dictionaries"),
            count_of(done.indexes as u64, "index", "indexes"),
            count(done.deleted as u64, "object")
        );
        for (key, why) in &done.not_deleted {
            say!("  not deleted (still readable by whoever could read it): {key}: {why}");
        }
        for (id, why) in &done.left {
            say!("  left as it was (still readable by whoever could read it): snapshot {id}: {why}");
        }
        for key in &done.audit_left {
            say!("  left as it was (still readable by whoever could read it; this identity cannot): {key}");
        }
        for (id, why) in &done.ignored {
            say!("  ignored, proves nothing (junk or forged; remove it): snapshot {id}: {why}");
        }
    }
    for (id, why) in &report.snapshots_dropped {
        say!("not carried (it did not prove itself): {id}: {why}");
    }
    if let Some(path) = &report.writer_key {
        say!(
            "new writer key: {} (move it to the backup host as $CRMVAULT_CONFIG_DIR/repos/{}/writer.key and run its \
             first backup with --fingerprint {}; the old writer key can no longer write)",
            path.display(),
            report.repository_id,
            report.generation_fingerprint
        );
    }
    say!(
        "fingerprint: {} (unchanged); this generation's: {} (give this one to fresh machines: it trusts no key \
         retired before it)",
        report.fingerprint,
        report.generation_fingerprint
    );
}

/// `forget`: per target, what is kept (and by which rule) and what is removed; `failed` names
/// targets left out or that failed.
pub fn forget(json: bool, report: &crmvault::forget::ForgetReport, policy: &str, dry_run: bool) {
    let (plans, pruned, failed, prune_failed) = (&report.plans, &report.pruned, &report.failed, &report.prune_failed);
    for plan in plans {
        for (id, error) in &plan.refused {
            warning(format_args!(
                "{}: snapshot {id} not removed: the storage refused the delete ({error})",
                plan.location
            ));
        }
    }
    prune_refusals(pruned);
    if json {
        let targets: Vec<serde_json::Value> = plans
            .iter()
            .map(|plan| {
                let mut value = serde_json::to_value(plan).expect("reports serialise");
                if let Some(object) = value.as_object_mut() {
                    object.insert("kept".into(), plan.kept().count().into());
                    object.insert("removed".into(), plan.removed().count().into());
                }
                value
            })
            .collect();
        let failed: Vec<serde_json::Value> =
            failed.iter().map(|(location, error)| serde_json::json!({"location": location, "error": error})).collect();
        let ok = failed.is_empty() && prune_failed.is_empty() && plans.iter().all(|plan| plan.blind.is_none());
        let mut document =
            serde_json::json!({"policy": policy, "dry_run": dry_run, "targets": targets, "failed": failed});
        if !prune_failed.is_empty() {
            document["prune_failed"] = prune_failed
                .iter()
                .map(|(location, error)| serde_json::json!({"location": location, "error": error}))
                .collect();
        }
        if !pruned.is_empty() {
            document["prune"] = serde_json::to_value(pruned).expect("reports serialise");
        }
        print_json_ok(&document, ok);
        return;
    }
    for plan in plans {
        let (kept, removed) = (plan.kept().count() as u64, plan.removed().count() as u64);
        let verb = if dry_run { "would remove" } else { "removed" };
        say!("{}: {policy}: keep {}, {verb} {}", plan.location, count(kept, "snapshot"), count(removed, "snapshot"));
        for decision in &plan.snapshots {
            let time = decision.time.format("%Y-%m-%d %H:%M:%S");
            let action = if decision.keep() { "keep  " } else { "remove" };
            let why = if decision.keep() { decision.reasons.join(", ") } else { String::new() };
            let line = format!("  {action}  {}  {time}  {:<16}  {why}", decision.id.short(), decision.database);
            say!("{}", line.trim_end());
        }
        for (id, error) in &plan.unreadable {
            say!("  left alone (does not open): {id}: {error}");
        }
        if removed > 0 && !dry_run && pruned.is_empty() {
            say!("  what only these snapshots used stays stored until `crmvault prune`");
        }
    }
    prune_text(pruned);
    for (location, error) in failed {
        eprintln!("  FAILED  {location}: {error} (nothing forgotten there)");
    }
    for (location, error) in prune_failed {
        eprintln!("  PRUNE FAILED  {location}: {error} (the snapshots above were forgotten there)");
    }
}

/// Per target: what was deleted (or would be, in a dry run) and what stays; one warning per
/// target whose storage refused deletes, and one per target that failed.
pub fn prune(
    json: bool,
    repacked: &[crmvault::repack::Repacked],
    reports: &[prune::PruneReport],
    failed: &[(String, String)],
) {
    prune_refusals(reports);
    for report in repacked {
        for (key, error) in &report.not_deleted {
            warning(format_args!(
                "{}: {key} (replaced) was not deleted, left for a later prune: {error}",
                report.location
            ));
        }
        for (id, error) in &report.left {
            warning(format_args!(
                "{}: snapshot {id} left as it is (this identity cannot open it): {error}",
                report.location
            ));
        }
    }
    for (location, error) in failed {
        // Most errors name their target already: say it once.
        if error.contains(location.as_str()) {
            warning(format_args!("not pruned: {error}"));
        } else {
            warning(format_args!("not pruned: {location}: {error}"));
        }
    }
    if json {
        let failed: Vec<serde_json::Value> = failed
            .iter()
            .map(|(location, error)| serde_json::json!({ "location": location, "error": error }))
            .collect();
        let mut value = serde_json::json!({ "targets": reports, "failed": failed });
        if !repacked.is_empty() {
            value["repacked"] = serde_json::json!(repacked);
        }
        print_json_ok(&value, failed.is_empty());
        return;
    }
    repack_text(repacked);
    prune_text(reports);
}

/// What repacking did (or would do) on each target, one line each.
fn repack_text(repacked: &[crmvault::repack::Repacked]) {
    for report in repacked {
        if report.packs_repacked == 0 && report.snapshots_resealed == 0 {
            say!(
                "{}: nothing to repack ({} unused in {})",
                report.location,
                size(report.unused_bytes),
                count(report.packs_listed, "pack")
            );
            continue;
        }
        let into = if report.dry_run {
            String::new()
        } else {
            let again = match report.frames_recompressed {
                0 => String::new(),
                frames => format!(", {} of mostly unused text compressed again", count(frames, "frame")),
            };
            format!(" into {} ({}{again})", count(report.packs_written, "new pack"), size(report.packs_written_bytes))
        };
        let (verb, sealed) =
            if report.dry_run { ("would repack", "would seal again") } else { ("repacked", "sealed again") };
        say!(
            "{}: {verb} {} ({}, {} of it unused){into}; {sealed} {}",
            report.location,
            count(report.packs_repacked, "pack"),
            size(report.packs_repacked_bytes),
            size(report.freed_bytes),
            count(report.snapshots_resealed, "snapshot"),
        );
    }
}

/// One warning per target whose storage refused some of prune's deletes.
fn prune_refusals(reports: &[prune::PruneReport]) {
    for report in reports.iter().filter(|report| report.refused.objects > 0) {
        warning(format_args!(
            "{}: the storage refused to delete {} ({}), left for a later prune: {}",
            report.location,
            count(report.refused.objects, "object"),
            size(report.refused.bytes),
            report.refused.reason.as_deref().unwrap_or("no reason given")
        ));
    }
}

/// What prune did (or would do) on each target, one line each.
fn prune_text(reports: &[prune::PruneReport]) {
    for report in reports {
        let kept = format!(
            "kept {} ({}) for {}",
            count(report.kept.packs.objects, "pack"),
            size(report.kept.packs.bytes),
            count(report.snapshots as u64, "snapshot")
        );
        let (done, verb, freed) = if report.dry_run {
            (&report.garbage, "would delete", "to free")
        } else {
            (&report.deleted, "deleted", "freed")
        };
        if done.total().objects == 0 {
            say!("{}: nothing to delete; {kept}", report.location);
            continue;
        }
        // The kinds there are some of: "2 packs, 1 dictionary".
        let parts: Vec<String> = [
            (done.packs.objects, count(done.packs.objects, "pack")),
            (done.indexes.objects, count_of(done.indexes.objects, "index", "indexes")),
            (done.dictionaries.objects, count_of(done.dictionaries.objects, "dictionary", "dictionaries")),
            (done.damaged_markers.objects, count(done.damaged_markers.objects, "damaged marker")),
        ]
        .into_iter()
        .filter(|(objects, _)| *objects > 0)
        .map(|(_, text)| text)
        .collect();
        say!("{}: {verb} {}: {} {freed}; {kept}", report.location, parts.join(", "), size(done.total().bytes));
    }
}

/// `count` with its noun, singular or plural ("1 table", "2 tables").
fn count(count: u64, singular: &str) -> String {
    format!("{count} {}", noun(count, singular))
}

/// `count` with a noun whose plural is not singular + s ("1 index", "2 indexes").
fn count_of(count: u64, singular: &str, plural: &str) -> String {
    format!("{count} {}", if count == 1 { singular } else { plural })
}

/// A noun after `count` (which is not printed): "table" or "tables".
fn noun(count: u64, singular: &str) -> String {
    if count == 1 { singular.to_string() } else { format!("{singular}s") }
}

pub fn diff(json: bool, report: &crmvault::restore::diff::DiffReport) {
    use crmvault::restore::diff::Status;
    // Warnings were logged as they came.
    if json {
        print_json(report);
        return;
    }
    let side = |side: &crmvault::restore::diff::Side| {
        format!("{} ({})", side.snapshot_id.short(), side.time.format("%Y-%m-%d %H:%M:%S UTC"))
    };
    say!("{} → {}, database {}", side(&report.from), side(&report.to), printable(&report.to.database));
    say!("schema: {}", if report.schema_changed { "changed" } else { "unchanged" });
    let name = |t: &crmvault::restore::diff::TableDiff| printable(&format!("{}.{}", t.schema, t.name));
    let shown: Vec<_> = report.tables.iter().filter(|t| t.status != Status::Unchanged).collect();
    let width = shown.iter().map(|t| name(t).chars().count()).max().unwrap_or(5).max(5);
    if !shown.is_empty() {
        say!("{:<width$}  {:>10}  {:>10}  {:>10}", "TABLE", "ADDED", "REMOVED", "CHANGED");
    }
    for table in &shown {
        let note = match table.status {
            Status::Added => "  (table added)".to_string(),
            Status::Removed => "  (table removed)".to_string(),
            _ if table.columns_changed => "  (columns changed: rows compared on the columns both have)".to_string(),
            _ => String::new(),
        };
        let changed = if table.by_key { table.changed.to_string() } else { "-".to_string() };
        say!("{:<width$}  {:>10}  {:>10}  {changed:>10}{note}", name(table), table.added, table.removed);
        if let Some(because) = &table.whole_rows_because {
            say!("  rows matched whole ({because}): a changed row counts as removed and added");
        }
        if let Some(keys) = &table.keys {
            let columns: Vec<String> = table.key_columns.iter().map(|c| printable(c)).collect();
            let key = |values: &[Option<String>]| {
                let values: Vec<String> =
                    values.iter().map(|v| v.as_deref().map_or_else(|| "NULL".to_string(), printable)).collect();
                if table.by_key && columns.len() == 1 {
                    format!("{}={}", columns[0], values[0])
                } else {
                    format!("({})=({})", columns.join(", "), values.join(", "))
                }
            };
            for (mark, list) in [("+", &keys.added), ("-", &keys.removed), ("~", &keys.changed)] {
                for values in list {
                    say!("  {mark} {}", key(values));
                }
            }
        }
    }
    let unchanged = report.tables.len() - shown.len();
    let (added, removed, changed) =
        shown.iter().fold((0, 0, 0), |(a, r, c), t| (a + t.added, r + t.removed, c + t.changed));
    say!(
        "{} changed ({added} rows added, {removed} removed, {changed} changed), {} unchanged",
        count(shown.len() as u64, "table"),
        unchanged
    );
    say!(
        "read {} of the {} chunks of the tables that changed ({}); every chunk read was proven",
        report.chunks_read,
        report.chunks,
        size(report.bytes_read)
    );
}
