//! The data-loss alarm: a backup compares every table it read with the previous snapshot of
//! the same database, and names each that vanished, was emptied or lost more of its rows than
//! its threshold allows. The snapshot is still stored (it may be the evidence) with what was
//! found in its manifest ([`crate::repo::TableAlarm`]); the CLI exits 4, and `forget` keeps it.

use globset::{Glob, GlobMatcher};

use crate::error::{Error, Result};
use crate::repo::{AlarmKind, Manifest, SnapshotId, TableAlarm, TableManifest};

/// The threshold when none is given: more than a tenth of a table's rows gone in a night.
pub const DEFAULT_PERCENT: f64 = 10.0;

/// How much of a table may go between two backups before the alarm is raised.
#[derive(Debug, Clone)]
pub struct AlarmRules {
    /// For tables no override names.
    percent: f64,
    /// `PATTERN=PCT` overrides, the first that matches a table deciding.
    tables: Vec<(String, GlobMatcher, f64)>,
}

impl Default for AlarmRules {
    fn default() -> Self {
        AlarmRules { percent: DEFAULT_PERCENT, tables: Vec::new() }
    }
}

impl AlarmRules {
    /// Rules with `percent` for every table and `overrides` (`PATTERN=PCT`, patterns as
    /// `--table` takes them) for some; a percentage of 100 never raises the alarm.
    pub fn new(percent: f64, overrides: &[String]) -> Result<AlarmRules> {
        let percent = check_percent(percent, "the alarm threshold")?;
        let mut tables = Vec::new();
        for given in overrides {
            let bad = |why: &str| Error::Invalid(format!("--alarm-table {given:?}: {why} (expected PATTERN=PERCENT)"));
            let (pattern, value) = given.rsplit_once('=').ok_or_else(|| bad("no ="))?;
            let value: f64 = value.trim().trim_end_matches('%').parse().map_err(|_| bad("not a percentage"))?;
            let value = check_percent(value, &format!("--alarm-table {given:?}"))?;
            let glob = Glob::new(&crate::table_filter::qualified(pattern)).map_err(|e| bad(&e.to_string()))?;
            tables.push((pattern.to_string(), glob.compile_matcher(), value));
        }
        Ok(AlarmRules { percent, tables })
    }

    /// The share of its rows (percent) `table` (`schema.table`) may lose.
    fn percent(&self, table: &str) -> f64 {
        self.tables.iter().find(|(_, glob, _)| glob.is_match(table)).map_or(self.percent, |(_, _, p)| *p)
    }

    /// The override patterns that name none of `tables` (`schema.table`): a mistake that would
    /// leave a table at the default without a word.
    pub fn unmatched<'a>(&'a self, tables: &[String]) -> Vec<&'a str> {
        self.tables
            .iter()
            .filter(|(_, glob, _)| !tables.iter().any(|t| glob.is_match(t)))
            .map(|(pattern, _, _)| pattern.as_str())
            .collect()
    }
}

fn check_percent(value: f64, what: &str) -> Result<f64> {
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(Error::Invalid(format!("{what}: {value} is not a percentage from 0 to 100")))
    }
}

/// What `tables` (this backup's) lost since `previous` (snapshot `since`), by `rules`.
/// `selected` says whether this backup's table patterns take a table: one they leave out is
/// not read, so it did not vanish.
pub fn compare(
    previous: &Manifest,
    since: &SnapshotId,
    tables: &[TableManifest],
    selected: impl Fn(&str, &str) -> bool,
    rules: &AlarmRules,
) -> Vec<TableAlarm> {
    let mut alarms = Vec::new();
    for before in &previous.tables {
        if !selected(&before.schema, &before.name) {
            continue;
        }
        let table = format!("{}.{}", before.schema, before.name);
        let percent = rules.percent(&table);
        let now = tables.iter().find(|t| t.schema == before.schema && t.name == before.name);
        let (kind, after) = match now {
            None => (AlarmKind::Vanished, 0),
            Some(now) if now.rows == 0 && before.rows > 0 => (AlarmKind::Emptied, 0),
            Some(now) => (AlarmKind::Shrank, now.rows),
        };
        let raised = match kind {
            AlarmKind::Vanished | AlarmKind::Emptied => percent < 100.0,
            #[allow(clippy::cast_precision_loss, reason = "row counts compared as a share")]
            AlarmKind::Shrank => {
                after < before.rows && (before.rows - after) as f64 * 100.0 > percent * before.rows as f64
            }
        };
        if raised {
            alarms.push(TableAlarm { table, kind, rows_before: before.rows, rows_after: after, since: since.clone() });
        }
    }
    alarms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::StreamManifest;

    fn table(name: &str, rows: u64) -> TableManifest {
        let (schema, name) = name.split_once('.').unwrap();
        TableManifest {
            schema: schema.into(),
            name: name.into(),
            columns: vec![],
            primary_key: vec![],
            rows,
            data: StreamManifest::default(),
        }
    }

    fn manifest(tables: Vec<TableManifest>) -> Manifest {
        let mut manifest: Manifest =
            serde_json::from_str(r#"{"version":7,"database":"crm","server_version":"15","hostname":"h","pre_data":{"bytes":0,"lists":[]},"post_data":{"bytes":0,"lists":[]},"tables":[],"sequences":[],"materialized_views":[],"large_objects":null}"#)
                .unwrap();
        manifest.tables = tables;
        manifest
    }

    fn kinds(alarms: &[TableAlarm]) -> Vec<(&str, AlarmKind)> {
        alarms.iter().map(|a| (a.table.as_str(), a.kind)).collect()
    }

    #[test]
    fn vanished_emptied_and_shrunk_tables_raise_it_and_the_rest_do_not() {
        let since: SnapshotId = "ab".repeat(32).parse().unwrap();
        let before = manifest(vec![
            table("crm.contacts", 1000),
            table("crm.deals", 500),
            table("crm.notes", 40),
            table("crm.tags", 10),
            table("crm.empty", 0),
            table("crm.audit", 100),
            table("tmp.scratch", 100),
        ]);
        let now = vec![
            table("crm.contacts", 899), // 10.1% lost
            table("crm.deals", 450),    // exactly 10%: not more than the threshold
            table("crm.notes", 0),
            table("crm.empty", 0),
            table("crm.audit", 150),
            table("crm.new", 5),
        ];
        let selected = |schema: &str, _: &str| schema != "tmp";
        let alarms = compare(&before, &since, &now, selected, &AlarmRules::default());
        assert_eq!(
            kinds(&alarms),
            [("crm.contacts", AlarmKind::Shrank), ("crm.notes", AlarmKind::Emptied), ("crm.tags", AlarmKind::Vanished)]
        );
        assert_eq!((alarms[0].rows_before, alarms[0].rows_after), (1000, 899));
        assert_eq!(
            alarms[0].to_string(),
            format!("crm.contacts lost 10.1% of its rows (1000 -> 899) since snapshot {}", since.short())
        );

        // Overrides: the first pattern that matches decides; 100 never raises it.
        let rules = AlarmRules::new(10.0, &["contacts=50".into(), "crm.*=100".into()]).unwrap();
        assert!(compare(&before, &since, &now, selected, &rules).is_empty());
        let strict = AlarmRules::new(5.0, &[]).unwrap();
        assert_eq!(compare(&before, &since, &now, selected, &strict).len(), 4);
        assert_eq!(rules.unmatched(&["crm.contacts".into()]), Vec::<&str>::new());
        assert_eq!(
            AlarmRules::new(10.0, &["nosuch.*=5".into()]).unwrap().unmatched(&["crm.contacts".into()]),
            ["nosuch.*"]
        );
    }

    #[test]
    fn bad_rules_are_refused_in_one_line() {
        for bad in ["contacts", "contacts=x", "contacts=101", "contacts=-1", "[=5"] {
            let error = AlarmRules::new(10.0, &[bad.into()]).expect_err(bad).to_string();
            assert!(error.contains(bad) && !error.contains('\n'), "{error}");
        }
        assert!(AlarmRules::new(150.0, &[]).is_err());
        assert!(AlarmRules::new(20.0, &["crm.contacts=25%".into()]).is_ok());
    }
}
