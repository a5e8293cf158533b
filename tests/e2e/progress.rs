//! Progress: reported through `crmvault::progress::Progress` with its totals (tables and
//! bytes) by backup and restore, drawn on a terminal only, never into a log.

use std::path::Path;
use std::sync::Mutex;

use crate::common::{Scenario, TestDb, assert_same_database};

#[test]
fn nothing_is_drawn_on_stderr_without_a_terminal() {
    let ready = Scenario::new("quiet").crm().init("repo");
    let (work, repo) = (&ready.work, &ready.repo);
    let url = ready.source.url();
    let backup = work.run(&["backup", "--db", &url, "--repo", repo]).ok();
    let target = TestDb::create("quiet_target");
    let restore = work.restore(repo, &target).ok();
    let verify = work.run(&["verify", "--repo", repo, "--identity", &work.admin_key(), "--read-data"]).ok();
    for (run, expected) in [(&backup, 2), (&restore, 0), (&verify, 0)] {
        assert!(!run.stderr.contains('\r') && !run.stderr.contains('\u{1b}'), "{:?}", run.stderr);
        assert_eq!(run.stderr.lines().count(), expected, "{:?}", run.stderr);
    }
    assert!(backup.stderr.starts_with("snapshot ") && backup.stderr.contains("  ok  "), "{}", backup.stderr);
}

/// Everything a command reported through `Progress`.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Phase(String, Option<u64>),
    Items(u64),
    ItemDone(String),
    Advance(u64),
}

impl crmvault::progress::Progress for Recorder {
    fn phase(&self, name: &str, _unit: crmvault::progress::Unit, total: Option<u64>) {
        self.events.lock().unwrap().push(Event::Phase(name.to_string(), total));
    }

    fn advance(&self, amount: u64) {
        self.events.lock().unwrap().push(Event::Advance(amount));
    }

    fn items(&self, total: u64) {
        self.events.lock().unwrap().push(Event::Items(total));
    }

    fn item_done(&self, name: &str) {
        self.events.lock().unwrap().push(Event::ItemDone(name.to_string()));
    }
}

impl Recorder {
    /// The phase named, its total, its items' total, the items done and the units advanced.
    fn phase(&self, name: &str) -> (Option<u64>, Option<u64>, Vec<String>, u64) {
        let events = self.events.lock().unwrap();
        let start = events.iter().position(|e| matches!(e, Event::Phase(n, _) if n == name)).expect("the phase");
        let Event::Phase(_, total) = events[start] else { unreachable!() };
        let (mut items, mut done, mut advanced) = (None, Vec::new(), 0);
        for event in events[start + 1..].iter().take_while(|e| !matches!(e, Event::Phase(..))) {
            match event {
                Event::Items(total) => items = Some(*total),
                Event::ItemDone(name) => done.push(name.clone()),
                Event::Advance(amount) => advanced += amount,
                Event::Phase(..) => unreachable!(),
            }
        }
        (total, items, done, advanced)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_and_restore_report_their_totals_tables_and_bytes() {
    use std::sync::Arc;

    use crmvault::postgres::Database;
    use crmvault::repo::{Repository, SnapshotFilter};
    use crmvault::repo_set::RepoSet;
    use crmvault::target::{OpenMode, Target};

    let ready = Scenario::new("recorded").crm().init("repo");
    let targets =
        RepoSet::of(vec![Repository::open(Target::open(&ready.repo, OpenMode::Existing).unwrap()).await.unwrap()])
            .unwrap();
    let writer = targets.unlock_as_writer(&ready.work.config_dir()).await.unwrap();
    let options = crmvault::backup::BackupOptions {
        database: Database::parse(&ready.source.url()).unwrap(),
        jobs: 2,
        include: vec![],
        exclude: vec![],
        allow_empty: false,
        pg_dump: None,
        hostname: "recorder".into(),
        tags: vec![],
        index_chunks: crmvault::backup::INDEX_CHUNKS,
        index_in_memory: crmvault::repo::INDEX_IN_MEMORY,
        newest_known: None,
        settled: std::collections::BTreeSet::new(),
        missed: std::collections::BTreeMap::new(),
        time: None,
        alarm: Some(crmvault::backup::alarm::AlarmRules::default()),
        rewrite: crmvault::sparse_packs::RewritePlan::default(),
    };
    let mut expected_tables: Vec<String> = ready
        .source
        .sql("SELECT format('%s.%s', schemaname, relname) FROM pg_stat_user_tables ORDER BY 1")
        .lines()
        .map(String::from)
        .collect();
    expected_tables.sort();

    // The first backup's total is the tables' size on disk; the second's, what the first read.
    let mut table_bytes = 0;
    for round in 0..2 {
        let recorder = Arc::new(Recorder::default());
        let report =
            crmvault::backup::run(&targets, &writer, &options, &crmvault::lock::Locks::default(), recorder.clone())
                .await
                .unwrap();
        let (total, items, mut done, advanced) = recorder.phase("reading");
        assert_eq!(items, Some(report.tables as u64));
        done.sort();
        assert_eq!(done, expected_tables);
        assert!(advanced > 0 && advanced <= report.bytes_read, "{advanced} of {}", report.bytes_read);
        if round == 1 {
            assert_eq!(total, Some(table_bytes), "the first backup's table bytes");
        }
        let repository = targets.first();
        let sealed = repository.read_snapshot(&report.snapshot_id).await.unwrap();
        let manifest = sealed.open(&writer).unwrap();
        table_bytes = manifest.tables.iter().chain(manifest.large_objects.iter()).map(|t| t.data.bytes).sum();
        assert_eq!(advanced, table_bytes, "every table byte read is reported");
    }

    let admin = targets.unlock_as_admin(Path::new(&ready.work.admin_key())).await.unwrap();
    let restored = TestDb::create("recorded_target");
    let options = crmvault::restore::RestoreOptions {
        database: Database::parse(&restored.url()).unwrap(),
        snapshot: "latest".into(),
        filter: SnapshotFilter::default(),
        jobs: 2,
        existing: crmvault::restore::ExistingContents::Refuse,
        parallel: false,
        index_in_memory: crmvault::repo::INDEX_IN_MEMORY,
        toast_compression: crmvault::postgres::ToastCompression::Lz4,
        maintenance_work_mem: crmvault::postgres::RESTORE_MAINTENANCE_WORK_MEM.into(),
        newest_known: None,
        create: None,
        leave_out: crmvault::postgres::script::LeaveOut::default(),
        create_roles: false,
        role: None,
        trust_snapshot_code: false,
        search_path: None,
        part: crmvault::restore::PartOptions::default(),
    };
    let recorder = Arc::new(Recorder::default());
    let report = crmvault::restore::run(&targets, &admin, &options, recorder.clone()).await.unwrap();
    let (total, items, mut done, advanced) = recorder.phase("loading");
    assert_eq!(items, Some(report.tables as u64));
    done.sort();
    assert_eq!(done, expected_tables);
    assert_eq!(total, Some(table_bytes));
    assert_eq!(advanced, table_bytes);
    assert_same_database(&ready.source, &restored);
}
