//! `--metrics-file`: a Prometheus textfile for node_exporter, replaced at every run, failed
//! ones included (issue 22).

use std::os::unix::fs::PermissionsExt;

use crate::common::*;

/// The value of the sample `series` (name and labels, as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn every_run_writes_its_outcome_and_a_failed_one_keeps_the_last_success() {
    let source = TestDb::create("metrics");
    source
        .sql("CREATE TABLE public.queue (id int PRIMARY KEY); INSERT INTO public.queue SELECT generate_series(1, 25);");
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let file = work.path("crmvault-backup.prom");
    let metrics = file.to_str().unwrap();
    work.run(&["backup", "--metrics-file", metrics, "--db", &source.url(), "--repo", &repo]).ok();
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(sample(&text, r#"crmvault_last_run_exit_code{command="backup"}"#), Some(0.0), "{text}");
    let success = sample(&text, r#"crmvault_last_success_timestamp_seconds{command="backup"}"#).expect("a success");
    let now = chrono::Utc::now().timestamp();
    assert!((success - f64::from(i32::try_from(now).unwrap())).abs() < 120.0, "{text}");
    assert_eq!(sample(&text, &format!(r#"crmvault_backup_target_ok{{target="{repo}"}}"#)), Some(1.0), "{text}");
    // A tiny table: its one pack is small.
    let small = sample(&text, &format!(r#"crmvault_backup_target_small_packs{{target="{repo}"}}"#));
    assert!(small.is_some_and(|packs| packs >= 1.0), "{text}");
    assert_eq!(sample(&text, r#"crmvault_backup_table_rows{schema="public",table="queue"}"#), Some(25.0), "{text}");
    assert_eq!(sample(&text, "crmvault_backup_alarm_tables"), Some(0.0), "{text}");
    assert!(text.contains("# TYPE crmvault_backup_rows gauge"), "{text}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644);

    // The alarm, as metrics.
    source.sql("TRUNCATE public.queue");
    let alarmed = work.run(&["backup", "--metrics-file", metrics, "--db", &source.url(), "--repo", &repo]);
    assert_eq!(alarmed.code, 4, "{}", alarmed.stderr);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(sample(&text, r#"crmvault_last_run_exit_code{command="backup"}"#), Some(4.0), "{text}");
    assert_eq!(sample(&text, r#"crmvault_backup_alarm{table="public.queue",kind="emptied"}"#), Some(1.0), "{text}");
    // Failed runs keep the time of the last success (exit 0), and say how they ended.
    assert_eq!(sample(&text, r#"crmvault_last_success_timestamp_seconds{command="backup"}"#), Some(success), "{text}");
    let refused = work.run(&[
        "backup",
        "--metrics-file",
        metrics,
        "--db",
        "postgresql://postgres@127.0.0.1:1/none",
        "--repo",
        &repo,
    ]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(sample(&text, r#"crmvault_last_run_exit_code{command="backup"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"crmvault_last_success_timestamp_seconds{command="backup"}"#), Some(success), "{text}");
    assert!(!text.contains("crmvault_backup_rows"), "{text}");

    // Verify too; a file that cannot be written is an error in one line.
    let verified = work.path("crmvault-verify.prom");
    work.run(&["verify", "--metrics-file", verified.to_str().unwrap(), "--repo", &repo]).ok();
    let text = std::fs::read_to_string(&verified).unwrap();
    assert_eq!(sample(&text, "crmvault_verify_problems"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "crmvault_verify_snapshots"), Some(2.0), "{text}");
    let nowhere = work.path("no/such/folder/x.prom");
    work.run(&["verify", "--metrics-file", nowhere.to_str().unwrap(), "--repo", &repo]).fails_with(1, "--metrics-file");
}

#[test]
fn log_format_json_makes_every_stderr_line_a_json_object_errors_and_warnings_included() {
    let source = TestDb::create("json_logs");
    source.sql("CREATE TABLE public.queue (id int PRIMARY KEY); INSERT INTO public.queue VALUES (1);");
    let work = Workspace::new();
    let repo = work.init_repo("repo");
    let lines = |stderr: &str| -> Vec<serde_json::Value> {
        stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{stderr}")))
            .collect()
    };
    // Results on stdout (--json), logs on stderr: info lines and a warning (an exclude
    // pattern that matches nothing), each an object with a level and a message.
    let run = work.run(&[
        "backup",
        "--json",
        "--log-format",
        "json",
        "-v",
        "--db",
        &source.url(),
        "--repo",
        &repo,
        "--exclude-table",
        "nosuch",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let logged = lines(&run.stderr);
    assert!(logged.iter().any(|l| l["level"] == "INFO"), "{}", run.stderr);
    assert!(
        logged.iter().any(|l| l["level"] == "WARN"
            && l["fields"]["message"].as_str().is_some_and(|m| m.contains("\"nosuch\" matches no table"))),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains('\u{1b}'), "colour codes in a log: {}", run.stderr);
    // Without --json too: results go to stdout as JSON, the alarm included; stderr is logs.
    source.sql("TRUNCATE public.queue");
    let alarmed = work.run(&["backup", "--log-format", "json", "--db", &source.url(), "--repo", &repo]);
    assert_eq!(alarmed.code, 4, "{}", alarmed.stderr);
    lines(&alarmed.stderr);
    assert_eq!(alarmed.json()["alarms"][0]["table"], "public.queue", "{}", alarmed.stdout);
    // The error that ends a run is a log line too.
    let failed = work.run(&[
        "backup",
        "--log-format",
        "json",
        "--db",
        "postgresql://postgres@127.0.0.1:1/none",
        "--repo",
        &repo,
    ]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    let logged = lines(&failed.stderr);
    let error = logged.iter().find(|l| l["level"] == "ERROR").expect("an error line");
    assert_eq!(error["fields"]["exit_code"], 1, "{error}");
    assert!(error["fields"]["message"].as_str().unwrap().contains("127.0.0.1"), "{error}");
    // So is a metrics file that cannot be written.
    let nowhere = work.path("no/such/folder/x.prom");
    let unwritten =
        work.run(&["verify", "--log-format", "json", "--metrics-file", nowhere.to_str().unwrap(), "--repo", &repo]);
    assert_eq!(unwritten.code, 1, "{}", unwritten.stderr);
    assert!(lines(&unwritten.stderr).iter().any(|l| l["level"] == "ERROR"), "{}", unwritten.stderr);
}
