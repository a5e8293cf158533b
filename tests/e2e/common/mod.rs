//! Shared test harness: real PostgreSQL databases, the real `crmvault` binary, comparisons.
#![allow(dead_code, missing_docs)]

mod password_catcher;
pub mod s3;
mod scenario;

pub use password_catcher::PasswordCatcher;
pub use scenario::{Ready, Scenario};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Server the tests use: `CRMVAULT_TEST_PG` or the local one.
pub fn server_url() -> String {
    std::env::var("CRMVAULT_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A PostgreSQL client program (`psql`, `pg_dump`, `pg_restore`): the newest version's own
/// binary under `/usr/lib/postgresql` where Debian keeps them, else the one on `PATH`. Debian's
/// `PATH` entry is pg_wrapper, a Perl script that spends ~35 ms of CPU choosing that same
/// binary: the suite's thousands of calls made it a fifth of the CPU the e2e tests use.
pub fn pg_program(name: &str) -> PathBuf {
    static NEWEST: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let bin = NEWEST.get_or_init(|| {
        let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
        versions
            .flatten()
            .filter_map(|entry| Some((entry.file_name().to_str()?.parse::<u32>().ok()?, entry.path().join("bin"))))
            .filter(|(_, bin)| bin.join("psql").exists())
            .max()
            .map(|(_, bin)| bin)
    });
    bin.as_ref().map(|bin| bin.join(name)).filter(|path| path.exists()).unwrap_or_else(|| PathBuf::from(name))
}

/// A table's rows as [`TestDb::data`] sums them up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableData {
    pub rows: u64,
    /// The sums of the rows' two hashes and of their text's length.
    pub digest: String,
}

/// A database created for one test and dropped at the end of it.
pub struct TestDb {
    pub name: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    pub fn create(label: &str) -> TestDb {
        TestDb::create_with(label, "")
    }

    /// A name of its own for a database `restore --create` makes (dropped at the end if made).
    pub fn unmade(label: &str) -> TestDb {
        let db = TestDb::create(label);
        psql("postgres", &format!("DROP DATABASE {}", db.name));
        db
    }

    /// A database made with `options` of `CREATE DATABASE` (`ENCODING 'SQL_ASCII'`, …).
    pub fn create_with(label: &str, options: &str) -> TestDb {
        let name = format!("cvt_{label}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        psql("postgres", &format!("CREATE DATABASE {name} TEMPLATE template0 {options}"));
        TestDb { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", server_url(), self.name)
    }

    /// Adds `public.filler`: about 30 MiB of poorly compressible rows, several packs' worth,
    /// so that a backup or restore lasts long enough to be interrupted.
    pub fn add_filler(&self) {
        self.sql(
            "CREATE TABLE public.filler (id bigint PRIMARY KEY, body text); \
             INSERT INTO public.filler SELECT i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text) \
             FROM generate_series(1, 300000) i",
        );
    }

    pub fn sql(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }

    pub fn load_file(&self, path: &Path) {
        self.load_file_with(path, &[]);
    }

    /// Runs a SQL file with psql variables (`-v name=value`).
    pub fn load_file_with(&self, path: &Path, variables: &[&str]) {
        let mut command = Command::new(pg_program("psql"));
        command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url()]);
        for variable in variables {
            command.args(["-v", variable]);
        }
        let output = command.arg("-f").arg(path).output().expect("psql runs");
        assert!(output.status.success(), "loading {}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    }

    /// Every table's rows, as a count and digests of the multiset of their text, keyed by
    /// `schema.table` (one psql session for the whole database). Two 64-bit row hashes summed
    /// (each row's text hashed with two seeds) and the text's total length: a missing,
    /// doubled or changed row changes them; row order does not. Sorting every row's md5 and
    /// reading them all out took a sixth of the suite's CPU (3 s for a 300,000-row table).
    pub fn data(&self) -> Vec<(String, TableData)> {
        const LIST: &str = "SELECT format('%I.%I', n.nspname, c.relname) AS name \
                            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                            WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                            AND n.nspname NOT LIKE 'pg_toast%'";
        let script = format!(
            "SELECT format('SELECT %L::text, count(*), coalesce(sum(hashtextextended(r, 1)), 0), \
             coalesce(sum(hashtextextended(r, 2)), 0), coalesce(sum(length(r)), 0) FROM (SELECT t::text AS r FROM %s t) x', \
             name, name) FROM ({LIST}) tables ORDER BY name COLLATE \"C\" \\gexec\n"
        );
        let mut child = Command::new(pg_program("psql"))
            .args(["-X", "-q", "-A", "-t", "-F", "\u{1f}", "-v", "ON_ERROR_STOP=1", "-d", &self.url(), "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql runs");
        std::io::Write::write_all(&mut child.stdin.take().expect("psql's stdin"), script.as_bytes())
            .expect("psql reads");
        let output = child.wait_with_output().expect("psql runs");
        assert!(output.status.success(), "psql (data): {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout)
            .expect("psql prints UTF-8")
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| {
                let fields: Vec<&str> = line.split('\u{1f}').collect();
                assert_eq!(fields.len(), 5, "psql (data) printed {line:?}");
                let rows = fields[1].parse().expect("a row count");
                (fields[0].to_string(), TableData { rows, digest: fields[2..].join("/") })
            })
            .collect()
    }

    /// `pg_dump --schema-only`, without the random `\restrict` lines, lines sorted.
    pub fn schema(&self) -> Vec<String> {
        let output = Command::new(pg_program("pg_dump"))
            .args(["--schema-only", "-d", &self.url()])
            .output()
            .expect("pg_dump runs");
        assert!(output.status.success(), "pg_dump: {}", String::from_utf8_lossy(&output.stderr));
        let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| {
                !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict") && !l.starts_with("--") && !l.is_empty()
            })
            .map(String::from)
            .collect();
        lines.sort();
        lines
    }

    /// No relation, large object or schema besides `public` (a fresh database).
    pub fn is_empty(&self) -> bool {
        self.sql(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%') \
                  + (SELECT count(*) FROM pg_largeobject_metadata) \
                  + (SELECT count(*) FROM pg_namespace n \
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'public') AND n.nspname NOT LIKE 'pg\\_%')",
        )
        .trim()
            == "0"
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new(pg_program("psql"))
            .args(["-X", "-q", "-d", &format!("{}/postgres", server_url()), "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .output();
    }
}

/// Drops a role at the end of a test, whatever happened: declared before the databases that
/// name it, it is dropped after them.
pub struct DropRole(pub String);

impl Drop for DropRole {
    fn drop(&mut self) {
        let _ = Command::new(pg_program("psql"))
            .args(["-X", "-q", "-d", &format!("{}/postgres", server_url()), "-c"])
            .arg(format!("DROP ROLE IF EXISTS {}", self.0))
            .output();
    }
}

/// Runs SQL through psql, returning unaligned tuples.
pub fn psql(database: &str, sql: &str) -> String {
    let output = Command::new(pg_program("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &format!("{}/{database}", server_url()),
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("psql prints UTF-8")
}

/// A place for one test: a temp dir holding the config dir (writer keys), repos and keys.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

/// What a command did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(output: &Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    /// A clean failure: the exit code, one error line, no panic.
    pub fn fails_with(self, code: i32, needle: &str) -> Run {
        assert_eq!(self.code, code, "expected exit {code}:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        assert!(!self.stderr.contains("panicked"), "panic: {}", self.stderr);
        assert!(
            self.stderr.contains(needle) || self.stdout.contains(needle),
            "expected {needle:?} in output:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", self.stdout))
    }
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_dir(&self) -> PathBuf {
        self.path("config")
    }

    pub fn command(&self) -> Command {
        self.command_for(env!("CARGO_BIN_EXE_crmvault"))
    }

    /// `program` (crmvault, or what runs it: script(1), a shell) with the environment
    /// `command` gives crmvault.
    pub fn command_for(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("CRMVAULT_CONFIG_DIR", self.config_dir()).env_remove("CRMVAULT_LOG").env_remove("PGPASSWORD");
        command.env_remove("CREDENTIALS_DIRECTORY");
        // The TLS defaults a test expects are crmvault's, not the developer's.
        for name in ["PGSSLMODE", "PGSSLROOTCERT", "CRMVAULT_DB_REMOTE_HOSTS"] {
            command.env_remove(name);
        }
        // Nor do the developer's config file, profile and password sources count.
        for name in ["CRMVAULT_CONFIG", "CRMVAULT_PROFILE", "CRMVAULT_REPO", "PGPASSFILE", "CREDENTIALS_DIRECTORY"] {
            command.env_remove(name);
        }
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AWS_") {
                command.env_remove(name);
            }
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(&self.command().args(args).output().expect("crmvault runs"))
    }

    /// keygen into `name`, returning the recipient.
    pub fn keygen(&self, name: &str) -> String {
        let run = self.run(&["keygen", "-o", self.path(name).to_str().unwrap()]).ok();
        run.stdout.trim().to_string()
    }

    /// A repository at `name` for a fresh admin key `admin.key`; returns the repo path.
    pub fn init_repo(&self, name: &str) -> String {
        let recipient = if self.path("admin.key").exists() {
            std::fs::read_to_string(self.path("admin.key"))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("# public key: ").map(String::from))
                .unwrap()
        } else {
            self.keygen("admin.key")
        };
        let repo = self.path(name).to_str().unwrap().to_string();
        self.run(&["init", "--repo", &repo, "--recipient", &recipient]).ok();
        repo
    }

    /// The repository's fingerprint, as `crmvault fingerprint` prints it.
    pub fn fingerprint(&self, repo: &str) -> String {
        self.run(&["fingerprint", "--repo", repo]).ok().stdout.trim().to_string()
    }

    pub fn admin_key(&self) -> String {
        self.path("admin.key").to_str().unwrap().to_string()
    }

    /// A backup that must succeed. Tests drop and empty tables between backups to make
    /// garbage for prune, so the data-loss alarm (exit 4; alarm.rs tests it) is off here.
    pub fn backup(&self, db: &TestDb, repo: &str) -> serde_json::Value {
        self.backup_with(db, repo, &[])
    }

    /// `backup --json --no-alarm` of `db` into `repo`, with `options` added: its report.
    pub fn backup_with(&self, db: &TestDb, repo: &str, options: &[&str]) -> serde_json::Value {
        let url = db.url();
        let mut args = vec!["backup", "--json", "--no-alarm", "--db", &url, "--repo", repo];
        args.extend_from_slice(options);
        self.run(&args).ok().json()
    }

    pub fn restore(&self, repo: &str, db: &TestDb) -> Run {
        self.restore_with(repo, db, &["latest"])
    }

    /// `restore` with the admin key into `db`, with `options` (flags, a snapshot) added.
    pub fn restore_with(&self, repo: &str, db: &TestDb, options: &[&str]) -> Run {
        let mut args = vec!["restore", "--repo", repo];
        let (key, url) = (self.admin_key(), db.url());
        args.extend(["--identity", &key, "--db", &url]);
        args.extend_from_slice(options);
        self.run(&args)
    }
}

/// Writes a credential as systemd does (`$CREDENTIALS_DIRECTORY/NAME`): only its owner reads it.
pub fn write_credential(dir: &Path, name: &str, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
}

/// Copies every file under `from` to the same place under `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    for file in files_under(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// Every regular file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).expect("readable dir") {
            let entry = entry.expect("dir entry");
            if entry.file_type().expect("file type").is_dir() {
                stack.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Asserts two databases hold the same schema and data.
pub fn assert_same_database(source: &TestDb, restored: &TestDb) {
    let (a, b) = (source.schema(), restored.schema());
    if a != b {
        let only_a: Vec<&String> = a.iter().filter(|l| !b.contains(l)).take(20).collect();
        let only_b: Vec<&String> = b.iter().filter(|l| !a.contains(l)).take(20).collect();
        panic!("schemas differ\nonly in source: {only_a:#?}\nonly in restored: {only_b:#?}");
    }
    let (a, b) = (source.data(), restored.data());
    assert_eq!(
        a.iter().map(|t| &t.0).collect::<Vec<_>>(),
        b.iter().map(|t| &t.0).collect::<Vec<_>>(),
        "table lists differ"
    );
    for ((table, data_a), (_, data_b)) in a.iter().zip(b.iter()) {
        assert_eq!(data_a.rows, data_b.rows, "row count of {table}");
        assert!(data_a == data_b, "data of {table} differs");
    }
}

/// Files or folders made immutable (`chattr +i`) until dropped: the tests run as root, whom
/// file modes do not stop; an immutable file refuses even root a write, an immutable folder a
/// new name in it.
pub struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// `None` where the file system has no such flag (or root may still write).
    pub fn set(paths: &[PathBuf]) -> Option<Immutable> {
        let frozen = Immutable(paths.to_vec());
        let done = Command::new("chattr").arg("+i").args(paths).status().is_ok_and(|status| status.success());
        let refused = paths.first().is_some_and(|path| {
            if path.is_dir() {
                std::fs::File::create(path.join("probe")).is_err()
            } else {
                std::fs::OpenOptions::new().append(true).open(path).is_err()
            }
        });
        (done && refused).then_some(frozen)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

/// Says why a test cannot run on this machine, for a test that then returns. Under CI (`CI`
/// set, as .ci/run sets it) a test that cannot run fails instead: a missing server must not
/// pass as a green test there.
pub fn skip(reason: &str) {
    assert!(std::env::var_os("CI").is_none(), "this test cannot run here, and CI is set: {reason}");
    eprintln!("skipped: {reason}");
}

/// The test server's log (`CRMVAULT_TEST_SERVER_LOG`, or where Debian's packages write it for
/// the server's major version), to check what reached it.
pub fn server_log_path() -> PathBuf {
    if let Ok(path) = std::env::var("CRMVAULT_TEST_SERVER_LOG") {
        return PathBuf::from(path);
    }
    let version = psql("postgres", "SHOW server_version_num");
    let major = version.trim().parse::<u32>().expect("a server version") / 10000;
    PathBuf::from(format!("/var/log/postgresql/postgresql-{major}-main.log"))
}

/// How long the server's log is now: [`server_log_since`] reads what comes after.
pub fn server_log_length() -> u64 {
    let path = server_log_path();
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set CRMVAULT_TEST_SERVER_LOG to the server's log)", path.display()))
        .len()
}

/// What the server logged after `start` ([`server_log_length`]).
pub fn server_log_since(start: u64) -> String {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(server_log_path()).expect("the server's log");
    file.seek(std::io::SeekFrom::Start(start)).expect("seek in the server's log");
    let mut text = Vec::new();
    file.read_to_end(&mut text).expect("read the server's log");
    String::from_utf8_lossy(&text).into_owned()
}

/// A `pg_dump` that writes what the real one does, with entries of type `kind` added at the
/// end of the pre-data section (`pre`) and of the post-data one (`post`), each one entry.
pub fn forging_pg_dump_sections(work: &Workspace, kind: &str, pre: &[&str], post: &[&str]) -> String {
    let header = format!("--\n-- Name: forged; Type: {kind}; Schema: public; Owner: -\n--\n\n");
    let entries = |statements: &[&str]| -> String {
        statements.iter().map(|statement| format!("{header}{statement}\n\n")).collect::<Vec<_>>().concat()
    };
    let then = format!(
        "pg_dump \"$@\" || exit $?\n\
         case \" $* \" in\n*--section=pre-data*) cat <<'SQL'\n\n{}\nSQL\n;;\n*--section=post-data*) cat <<'SQL'\n\n{}\nSQL\n;;\nesac\n",
        entries(pre),
        entries(post)
    );
    fake_pg_dump(work, "pg_dump", &then)
}

/// A `pg_dump` in the workspace (`--pg-dump` takes its path) that says the real one's version
/// and otherwise runs `then`, a shell script given pg_dump's arguments.
pub fn fake_pg_dump(work: &Workspace, name: &str, then: &str) -> String {
    let fake = work.path(name);
    let real = pg_program("pg_dump");
    let real_bin = real
        .parent()
        .filter(|bin| !bin.as_os_str().is_empty())
        .map_or(String::new(), |bin| format!("PATH='{}':\"$PATH\"\n", bin.display()));
    let script = format!("#!/bin/bash\n{real_bin}if [ \"$1\" = --version ]; then exec pg_dump --version; fi\n{then}");
    std::fs::write(&fake, script).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fake.to_str().unwrap().to_string()
}

/// A snapshot object's bytes with its header changed as a storage writer can: the hash line
/// after it (no key needed) made to match.
pub fn with_header(bytes: &[u8], change: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let lines: Vec<&[u8]> = bytes.splitn(5, |&b| b == b'\n').collect();
    let mut header: serde_json::Value = serde_json::from_slice(lines[1]).unwrap();
    change(&mut header);
    let header = serde_json::to_vec(&header).unwrap();
    [lines[0], &header, blake3::hash(&header).to_hex().as_bytes(), lines[3], lines[4]].join(&b'\n')
}

/// Rewrites the header of the snapshot object at `path` as a storage writer can ([`with_header`]).
pub fn rewrite_header(path: &std::path::Path, change: impl Fn(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, with_header(&bytes, change)).unwrap();
}

/// The comparison every restore test rests on: [`TestDb::data`] tells apart databases whose
/// rows differ by one value, one row missing or one row doubled (with the count held), rows
/// swapping values, or a table empty, and not databases whose rows are only stored in another
/// order.
#[test]
fn the_data_digest_tells_a_changed_a_missing_and_a_doubled_row_apart() {
    let schema = "CREATE SCHEMA \"odd|name\"; CREATE TABLE \"odd|name\".t (id integer, body text, at timestamptz); \
                  CREATE TABLE public.empty (id integer)";
    let rows = "INSERT INTO \"odd|name\".t VALUES (1, 'one', '2024-01-01 10:00+00'), (2, 'two', NULL), (3, 'three', '1900-01-01 00:00+00')";
    let database = |changes: &str| {
        let db = TestDb::create("digest");
        db.sql(&format!("{schema}; {changes}"));
        db
    };
    let reference = database(rows);
    let expected = reference.data();
    assert_eq!(expected.len(), 2, "{expected:?}");
    assert_eq!(expected[0].0, "\"odd|name\".t");
    assert_eq!(expected[0].1.rows, 3);
    let other_order = database(
        "INSERT INTO \"odd|name\".t VALUES (3, 'three', '1900-01-01 00:00+00'), (2, 'two', NULL), (1, 'one', '2024-01-01 10:00+00')",
    );
    assert_eq!(other_order.data(), expected, "row order is not data");
    for (change, what) in [
        ("UPDATE \"odd|name\".t SET body = 'Two' WHERE id = 2", "one value changed"),
        ("UPDATE \"odd|name\".t SET at = at + interval '1 microsecond' WHERE id = 1", "a time stamp a microsecond off"),
        ("DELETE FROM \"odd|name\".t WHERE id = 3", "a row missing"),
        (
            "DELETE FROM \"odd|name\".t WHERE id = 3; INSERT INTO \"odd|name\".t VALUES (2, 'two', NULL)",
            "a row doubled in place of another",
        ),
        (
            "UPDATE \"odd|name\".t SET body = CASE id WHEN 1 THEN 'two' WHEN 2 THEN 'one' ELSE body END",
            "values swapped",
        ),
        ("INSERT INTO public.empty VALUES (1)", "a row in the empty table"),
    ] {
        let changed = database(&format!("{rows}; {change}"));
        assert_ne!(changed.data(), expected, "{what}");
    }
}
