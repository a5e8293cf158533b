//! `--metrics-file PATH`: what a run did, as a Prometheus textfile for node_exporter's textfile
//! collector (text format 0.0.4, written by prometheus-client), replaced atomically so that the
//! collector never reads half a file. Every run writes when it ended, how long it took, its exit
//! code and the time of the last success (kept from the file it replaces when this run failed);
//! backup, verify, forget and prune add what they found, per target and per table.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use anyhow::{Context, Result};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type Value = Gauge<f64, AtomicU64>;

/// The last-success gauge's name, read back from the file a failed run replaces.
const LAST_SUCCESS: &str = "crmvault_last_success_timestamp_seconds";

/// The values one run reports, by metric: (name, help, labels → value).
#[derive(Default)]
pub struct Metrics {
    values: Mutex<Vec<(&'static str, &'static str, Labels, f64)>>,
}

impl Metrics {
    /// Records `value` for `name` with `labels`.
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        let labels = labels.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        self.values.lock().expect("metrics lock is never poisoned").push((name, help, labels, value));
    }

    /// What a backup stored, per target and per table, and its alarm.
    #[allow(clippy::cast_precision_loss, reason = "gauges are floats")]
    pub fn backup(&self, report: &crmvault::backup::BackupReport) {
        self.set("crmvault_backup_bytes_read", "Bytes of table data and schema read", &[], report.bytes_read as f64);
        self.set("crmvault_backup_rows", "Rows backed up", &[], report.rows as f64);
        self.set("crmvault_backup_tables", "Tables backed up", &[], report.tables as f64);
        self.set("crmvault_backup_chunks_new", "Chunks new to at least one target", &[], report.new_chunks as f64);
        self.set(
            "crmvault_backup_alarm_tables",
            "Tables the data-loss alarm named (0: none; the snapshot is flagged otherwise)",
            &[],
            report.alarms.len() as f64,
        );
        for target in &report.targets {
            let labels = [("target", target.location.as_str())];
            let ok = if target.ok { 1.0 } else { 0.0 };
            self.set("crmvault_backup_target_ok", "1 when the snapshot is committed on the target", &labels, ok);
            self.set(
                "crmvault_backup_target_bytes_added",
                "Bytes the backup added to the target",
                &labels,
                target.bytes_added as f64,
            );
            self.set(
                "crmvault_backup_target_bytes_total",
                "Stored bytes of every object the snapshot references on the target",
                &labels,
                target.bytes_total as f64,
            );
            self.set(
                "crmvault_backup_target_small_packs",
                "Small packs the snapshot lists on the target (restores slow down past a few hundred: prune --identity merges them)",
                &labels,
                target.small_packs as f64,
            );
            self.set(
                "crmvault_backup_target_problems",
                "Kinds of keys objects (keys, admin keys) of which none is whole on the target: it cannot be unlocked or rekeyed on its own",
                &labels,
                target.problems.len() as f64,
            );
            self.set(
                "crmvault_backup_target_rewritten_bytes",
                "Plaintext bytes of chunks the target held that the backup stored again, from packs the last snapshot hardly used",
                &labels,
                target.rewritten_bytes as f64,
            );
        }
        for (schema, table, rows) in &report.table_rows {
            let labels = [("schema", schema.as_str()), ("table", table.as_str())];
            self.set("crmvault_backup_table_rows", "Rows of each table backed up", &labels, *rows as f64);
        }
        for alarm in &report.alarms {
            let labels = [("table", alarm.table.as_str()), ("kind", alarm.kind.as_str())];
            self.set("crmvault_backup_alarm", "A table the data-loss alarm named (1)", &labels, 1.0);
        }
    }

    /// What each drill found, by the targets it read from.
    #[allow(clippy::cast_precision_loss, reason = "gauges are floats")]
    pub fn drill(&self, reports: &[crmvault::drill::DrillReport]) {
        for report in reports {
            let targets = report.targets.join(",");
            let labels = [("targets", targets.as_str())];
            let passed = if report.passed { 1.0 } else { 0.0 };
            self.set("crmvault_drill_passed", "1 when the restore drill passed, 0 when it failed", &labels, passed);
            if let Some(seconds) = report.restore_seconds() {
                self.set(
                    "crmvault_drill_restore_seconds",
                    "How long the drill's restore took (RTO evidence)",
                    &labels,
                    seconds,
                );
            }
            self.set(
                "crmvault_drill_tables",
                "Tables the drill read back and compared",
                &labels,
                report.tables.len() as f64,
            );
            self.set("crmvault_drill_failures", "Checks the drill failed", &labels, report.failures.len() as f64);
            if let Some(snapshot) = &report.snapshot {
                let time = snapshot.time.timestamp() as f64;
                self.set(
                    "crmvault_drill_snapshot_timestamp_seconds",
                    "Time of the snapshot the drill restored",
                    &labels,
                    time,
                );
            }
        }
    }

    /// What a verify found.
    #[allow(clippy::cast_precision_loss, reason = "gauges are floats")]
    pub fn verify(&self, report: &crmvault::commands::verify::VerifyReport) {
        self.set("crmvault_verify_snapshots", "Snapshots checked", &[], report.snapshots as f64);
        self.set("crmvault_verify_bytes", "Bytes of objects read and checked", &[], report.bytes as f64);
        self.set("crmvault_verify_problems", "Problems found (0: all is well)", &[], report.problems.len() as f64);
    }

    /// What a forget kept and removed on each target.
    #[allow(clippy::cast_precision_loss, reason = "gauges are floats")]
    pub fn forget(&self, plans: &[crmvault::forget::TargetPlan]) {
        for plan in plans {
            let labels = [("target", plan.location.as_str())];
            self.set("crmvault_forget_kept", "Snapshots kept", &labels, plan.kept().count() as f64);
            self.set(
                "crmvault_forget_removed",
                "Snapshots removed (or that a dry run would remove)",
                &labels,
                plan.removed().count() as f64,
            );
        }
    }

    /// What a prune deleted on each target.
    #[allow(clippy::cast_precision_loss, reason = "gauges are floats")]
    pub fn prune(&self, reports: &[crmvault::prune::PruneReport]) {
        for report in reports {
            let labels = [("target", report.location.as_str())];
            self.set("crmvault_prune_deleted_bytes", "Bytes deleted", &labels, report.deleted.total().bytes as f64);
            self.set(
                "crmvault_prune_kept_bytes",
                "Bytes of the objects that stay",
                &labels,
                report.kept.total().bytes as f64,
            );
        }
    }

    /// Writes the file at `path` for a run of `command` that ended `now` after `seconds` with
    /// `code`: into a file beside it, synced, then renamed over it.
    pub fn write(
        &self,
        path: &Path,
        command: &str,
        code: u8,
        seconds: f64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        #[allow(clippy::cast_precision_loss, reason = "a Unix time in seconds")]
        let now = now.timestamp_millis() as f64 / 1000.0;
        let last_success = if code == 0 { Some(now) } else { last_success(path, command) };
        let run = [("command", command)];
        self.set("crmvault_last_run_timestamp_seconds", "When the last run ended (Unix time)", &run, now);
        self.set("crmvault_last_run_duration_seconds", "How long the last run took", &run, seconds);
        self.set(
            "crmvault_last_run_exit_code",
            "Exit code of the last run (0 done, 3 partial, 4 data-loss alarm)",
            &run,
            f64::from(code),
        );
        if let Some(time) = last_success {
            self.set(LAST_SUCCESS, "When a run last ended with exit code 0 (Unix time)", &run, time);
        }
        let text = self.render()?;
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut file = tempfile::Builder::new()
            .prefix(".crmvault-metrics")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(folder)
            .with_context(|| format!("--metrics-file {}: cannot write in {}", path.display(), folder.display()))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .and_then(|()| file.as_file().sync_all())
            .with_context(|| format!("--metrics-file {}", path.display()))?;
        file.persist(path).with_context(|| format!("--metrics-file {}", path.display()))?;
        Ok(())
    }

    fn render(&self) -> Result<String> {
        let values = self.values.lock().expect("metrics lock is never poisoned");
        let mut registry = Registry::default();
        let mut families: Vec<(&'static str, Family<Labels, Value>)> = Vec::new();
        for (name, help, labels, value) in values.iter() {
            let known = families.iter().find(|(known, _)| known == name).map(|(_, family)| family.clone());
            let family = known.unwrap_or_else(|| {
                let family = Family::<Labels, Value>::default();
                registry.register(*name, *help, family.clone());
                families.push((name, family.clone()));
                family
            });
            family.get_or_create(labels).set(*value);
        }
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).context("encoding the metrics")?;
        Ok(text)
    }
}

/// The last success of `command` in the file at `path`, if it holds one.
fn last_success(path: &Path, command: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let prefix = format!("{LAST_SUCCESS}{{command=\"{command}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_keeps_the_last_success_and_labels_are_escaped() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("crmvault.prom");
        let first: chrono::DateTime<chrono::Utc> = "2026-12-01T02:00:00Z".parse().unwrap();
        let metrics = Metrics::default();
        metrics.set("crmvault_backup_target_ok", "ok", &[("target", "/srv/a \"b\"\\c")], 1.0);
        metrics.write(&path, "backup", 0, 1.5, first).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("crmvault_last_success_timestamp_seconds{command=\"backup\"} 1796090400.0"), "{text}");
        assert!(text.contains(r#"crmvault_backup_target_ok{target="/srv/a \"b\"\\c"} 1.0"#), "{text}");
        assert!(text.contains("# TYPE crmvault_last_run_exit_code gauge"), "{text}");

        let later = first + chrono::Duration::days(1);
        Metrics::default().write(&path, "backup", 3, 2.0, later).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("crmvault_last_success_timestamp_seconds{command=\"backup\"} 1796090400.0"), "{text}");
        assert!(text.contains("crmvault_last_run_exit_code{command=\"backup\"} 3.0"), "{text}");
        assert!(text.contains("crmvault_last_run_timestamp_seconds{command=\"backup\"} 1796176800.0"), "{text}");
        // Replaced whole: nothing of the first run but the kept time, and no file left beside it.
        assert!(!text.contains("crmvault_backup_target_ok"), "{text}");
        assert_eq!(std::fs::read_dir(folder.path()).unwrap().count(), 1);
    }
}
