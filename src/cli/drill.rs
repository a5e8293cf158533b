//! `crmvault drill`: one restore drill (or one per target), its result on stdout (text or
//! JSON) and, with `--report FILE`, in Markdown for an auditor.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use crmvault::drill::DrillReport;

use super::output::{print_json_ok, printable, size};

/// Prints the drills' results: a line per drill, its failures and warnings.
pub fn print(json: bool, reports: &[DrillReport]) {
    let passed = reports.iter().all(|report| report.passed);
    if json {
        print_json_ok(&serde_json::json!({ "passed": passed, "drills": reports }), passed);
        return;
    }
    for report in reports {
        say!("{}", summary(report));
        for failure in &report.failures {
            say!("  FAILED: {}", printable(failure));
        }
        for warning in &report.warnings {
            say!("  warning: {}", printable(warning));
        }
    }
}

/// One line: the verdict, what was restored from where into where, how long it took, and what
/// was proven.
fn summary(report: &DrillReport) -> String {
    let verdict = if report.passed { "drill PASSED" } else { "drill FAILED" };
    let targets = report.targets.join(", ");
    let Some(snapshot) = &report.snapshot else {
        return format!("{verdict}: no snapshot restored from {targets}");
    };
    let restore = report.restore_seconds().unwrap_or_default();
    let rows: u64 = report.tables.iter().filter_map(|t| t.rows_found).sum();
    format!(
        "{verdict}: snapshot {} of {} ({}) from {targets}, restored in {restore:.1}s; read back {} tables ({rows} rows), \
         {} sequences, {} constraints, {} indexes",
        snapshot.id.short(),
        printable(&snapshot.database),
        snapshot.time.format("%Y-%m-%d %H:%M:%S UTC"),
        report.tables.len(),
        report.sequences.checked,
        report.constraints.checked,
        report.indexes.checked,
    )
}

/// Writes the Markdown report to `path` (replaced atomically; created 0600, as it names the
/// database's tables and row counts).
/// A drill that could not run (refused while opening, or stopped before it had a report): a
/// failed drill for the metrics and `--report` too, so that last week's PASSED does not stand.
/// Returns `error`, to be the command's.
pub fn not_run(
    metrics: &super::metrics::Metrics,
    report: Option<&Path>,
    (locations, scratch): (Vec<String>, &crmvault::postgres::Database),
    error: anyhow::Error,
) -> anyhow::Error {
    let failed = [DrillReport::not_run(locations, scratch, super::one_line(&error))];
    metrics.drill(&failed);
    match report.map(|path| write_report(path, &failed)) {
        Some(Err(written)) => written,
        _ => error,
    }
}

pub fn write_report(path: &Path, reports: &[DrillReport]) -> Result<()> {
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(directory)
        .with_context(|| format!("writing the drill report {}", path.display()))?;
    std::io::Write::write_all(&mut file, markdown(reports).as_bytes())
        .with_context(|| format!("writing the drill report {}", path.display()))?;
    file.as_file().sync_all().with_context(|| format!("writing the drill report {}", path.display()))?;
    file.persist(path).with_context(|| format!("writing the drill report {}", path.display()))?;
    Ok(())
}

/// The report an auditor reads: per drill, the repository, the snapshot, the versions, the
/// phases' times, every table with its rows and result, and the verdict with its reasons.
pub fn markdown(reports: &[DrillReport]) -> String {
    let mut text = String::new();
    let passed = reports.iter().all(|report| report.passed);
    let _ = writeln!(text, "# crmvault restore drill: {}\n", if passed { "PASSED" } else { "FAILED" });
    for report in reports {
        let _ = writeln!(text, "## {}: {}\n", cell(&report.targets.join(", ")), verdict(report.passed));
        let _ = writeln!(text, "| | |\n|---|---|");
        let mut row = |key: &str, value: String| {
            let _ = writeln!(text, "| {key} | {} |", cell(&value));
        };
        row("Repository fingerprint", report.fingerprint.clone());
        row("Read from", report.targets.join(", "));
        if let Some(snapshot) = &report.snapshot {
            row("Snapshot", snapshot.id.to_string());
            row("Snapshot time", snapshot.time.to_rfc3339());
            row("Database", snapshot.database.clone());
            row("Backed up on host", snapshot.hostname.clone());
            row("Source server", format!("PostgreSQL {}", snapshot.source_server_version));
            if let Some(version) = &snapshot.scratch_server_version {
                row("Drill server", format!("PostgreSQL {version}"));
            }
        }
        row("crmvault", report.crmvault_version.to_string());
        let created = if report.scratch_created {
            "created for the drill, dropped after it"
        } else {
            "given empty, emptied after it"
        };
        row("Scratch database", format!("{} ({created})", report.scratch_database));
        if let Some(restore) = &report.restore {
            let mode = if restore.parallel { "parallel" } else { "one transaction" };
            row("Restore", format!("{mode}, {} of table data, {} chunks proven", size(restore.bytes), restore.chunks));
        }
        row("Started", report.started.to_rfc3339());
        row("Ended", report.ended.to_rfc3339());
        if let Some(seconds) = report.restore_seconds() {
            row("Restore time (RTO evidence)", format!("{seconds:.1} s"));
        }
        row("Result", verdict(report.passed).to_string());

        let _ = writeln!(text, "\n### Phases\n\n| Phase | Seconds |\n|---|---:|");
        for phase in &report.phases {
            let _ = writeln!(text, "| {} | {:.2} |", phase.name, phase.seconds);
        }
        if !report.failures.is_empty() {
            let _ = writeln!(text, "\n### Failures\n");
            for failure in &report.failures {
                let _ = writeln!(text, "- {}", cell(failure));
            }
        }
        if !report.warnings.is_empty() {
            let _ = writeln!(text, "\n### Warnings\n");
            for warning in &report.warnings {
                let _ = writeln!(text, "- {}", cell(warning));
            }
        }
        let _ = writeln!(text, "\n### Tables (read back with COPY, rows and keyed digest compared)\n");
        let _ = writeln!(text, "| Table | Rows in snapshot | Rows read back | Result |\n|---|---:|---:|---|");
        for table in &report.tables {
            let found = table.rows_found.map_or_else(|| "-".to_string(), |rows| rows.to_string());
            let _ = writeln!(
                text,
                "| {} | {} | {found} | {} |",
                cell(&format!("{}.{}", table.schema, table.name)),
                table.rows_expected,
                cell(&table.result)
            );
        }
        let _ = writeln!(text, "\n### Other checks\n\n| Check | Checked | Problems |\n|---|---:|---|");
        for (name, checked) in [
            ("Sequences (value and is_called)", &report.sequences),
            ("Constraints (foreign keys, checks, not-null; row by row)", &report.constraints),
            ("B-tree indexes (amcheck, every row indexed)", &report.indexes),
        ] {
            let problems = match (&checked.skipped, checked.problems.is_empty()) {
                (Some(reason), _) => format!("not checked: {reason}"),
                (None, true) => "none".to_string(),
                (None, false) => checked.problems.join("; "),
            };
            let _ = writeln!(text, "| {name} | {} | {} |", checked.checked, cell(&problems));
        }
        text.push('\n');
    }
    text
}

fn verdict(passed: bool) -> &'static str {
    if passed { "PASSED" } else { "FAILED" }
}

/// Text as one Markdown table cell or list item: control characters escaped, `|` and the
/// characters Markdown or HTML would read as markup escaped, so a table name cannot change
/// the report's structure.
fn cell(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in printable(text).chars() {
        match c {
            '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' => {
                escaped.push('\\');
                escaped.push(c);
            }
            _ => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_name_cannot_break_the_report() {
        assert_eq!(cell("crm.x| y\n<b>"), "crm.x\\| y\\\\n\\<b\\>");
    }
}
