//! Secrets never show: every command, run with known secrets in every place they can be given
//! (database passwords in a URL, a keyword/value string, PGPASSWORD, CRMVAULT_DB and
//! CRMVAULT_RESTORE_DB; S3 credentials in the environment and, refused, in repository URLs),
//! succeeding and failing, with `--json`, `-vv` and `CRMVAULT_LOG=debug`. Nothing it prints
//! and no file in the repositories or the config folder may contain any of them.

use std::path::PathBuf;
use std::process::Command;

use crate::common::s3::S3Server;
use crate::common::*;

/// A login role with a password, dropped at the end (after the databases, which are declared
/// after it). The server trusts loopback, so a wrong password connects too: what is tested is
/// that the password never shows, not that the server checks it.
struct Role {
    name: String,
}

impl Role {
    fn create(label: &str, password: &str) -> Role {
        let name = format!("cvt_{label}_{}", std::process::id());
        psql("postgres", &format!("DROP ROLE IF EXISTS {name}"));
        psql("postgres", &format!("CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{password}'"));
        Role { name }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = Command::new(pg_program("psql"))
            .args(["-X", "-q", "-d", &format!("{}/postgres", server_url()), "-c"])
            .arg(format!("DROP ROLE IF EXISTS {}", self.name))
            .output();
    }
}

/// `host:port` of the test server.
fn server_address() -> String {
    server_url().rsplit('@').next().unwrap().trim_end_matches('/').to_string()
}

/// Runs commands, keeps everything they print, and looks for the secrets in it.
struct Watch {
    /// Each secret and each of its words of 5 characters or more (a redaction that stopped at
    /// a space or a quote would show a part).
    needles: Vec<String>,
    /// (what ran, what it printed).
    printed: Vec<(String, String)>,
}

impl Watch {
    fn new(secrets: &[&str]) -> Watch {
        let mut watch = Watch { needles: Vec::new(), printed: Vec::new() };
        for secret in secrets {
            watch.add_secret(secret);
        }
        watch
    }

    fn add_secret(&mut self, secret: &str) {
        self.needles.push(secret.to_string());
        for word in secret.split([' ', '\'', '\\', '"', '@', '/']).filter(|word| word.len() >= 5) {
            self.needles.push(word.to_string());
        }
    }

    /// Runs `command` (labelled `what`) and keeps its output.
    fn run(&mut self, what: &str, command: &mut Command) -> Run {
        let run = Run::from(&command.output().expect("crmvault runs"));
        assert!(!run.stderr.contains("panicked"), "{what}: {}", run.stderr);
        self.printed.push((what.to_string(), format!("{}\n{}", run.stdout, run.stderr)));
        run
    }

    /// Fails naming every secret found in the output or in a file under `folders`.
    fn assert_nothing_leaked(&self, folders: &[PathBuf]) {
        let mut leaks = Vec::new();
        for (what, text) in &self.printed {
            for needle in &self.needles {
                if text.contains(needle.as_str()) {
                    leaks.push(format!("{needle:?} in the output of {what}"));
                }
            }
        }
        for folder in folders.iter().filter(|folder| folder.exists()) {
            for file in files_under(folder) {
                let bytes = std::fs::read(&file).unwrap();
                for needle in &self.needles {
                    if bytes.windows(needle.len()).any(|window| window == needle.as_bytes()) {
                        leaks.push(format!("{needle:?} in {}", file.display()));
                    }
                }
            }
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
        assert!(self.printed.len() > 10, "too few runs to mean anything");
    }
}

/// The three ways of asking for more output, cycled through the runs.
#[derive(Clone, Copy)]
enum Verbosity {
    JsonVeryVerbose,
    DebugLog,
    JsonDebugLog,
}

impl Verbosity {
    fn apply(self, command: &mut Command) {
        match self {
            Verbosity::JsonVeryVerbose => command.args(["--json", "-vv"]),
            Verbosity::DebugLog => command.env("CRMVAULT_LOG", "debug"),
            Verbosity::JsonDebugLog => command.arg("--json").env("CRMVAULT_LOG", "debug"),
        };
    }
}

/// Where a backup is told its database and password.
struct DatabaseGiven {
    what: &'static str,
    /// `--db`.
    db: Option<String>,
    /// An environment variable.
    env: Option<(&'static str, String)>,
}

const URL_PASSWORD: &str = "UrlPwQz7wordX";
/// Percent-encoded in the URL; `Enc@PwQzJ/k` once decoded.
const ENCODED_URL_PASSWORD: &str = "Enc%40PwQzJ%2Fk";
const DECODED_URL_PASSWORD: &str = "Enc@PwQzJ/k";
/// As written in a keyword/value string: quoted, with a space and an escaped quote.
const KEYWORD_VALUE_PASSWORD: &str = "'KvPwZy ZyMoreQ\\'s'";
const QUERY_PASSWORD: &str = "QryPwYxKq";
const SSL_PASSWORD: &str = "SslPwYq VxLmno";
const PGPASSWORD: &str = "PgEnvPwKqZ";
const CRMVAULT_DB_PASSWORD: &str = "DbEnvPwJxQ";
const RESTORE_DB_PASSWORD: &str = "RestEnvPwWvQ";
/// Given under a misspelt keyword (`pasword=`), which libpq refuses quoting the string.
const MISSPELT_PASSWORD: &str = "MisPwZqXv";

#[test]
fn database_passwords_never_show_in_output_logs_or_the_repository() {
    let role = Role::create("secrets_role", URL_PASSWORD);
    let source = TestDb::create("secrets");
    source.load_file(&fixture("examples/crm.sql"));
    let restored = TestDb::create("secrets_restored");
    let restored_again = TestDb::create("secrets_restored_again");
    let work = Workspace::new();
    let mut watch = Watch::new(&[
        URL_PASSWORD,
        ENCODED_URL_PASSWORD,
        DECODED_URL_PASSWORD,
        "KvPwZy ZyMoreQ's",
        "ZyMoreQ\\'s",
        QUERY_PASSWORD,
        SSL_PASSWORD,
        PGPASSWORD,
        CRMVAULT_DB_PASSWORD,
        RESTORE_DB_PASSWORD,
        MISSPELT_PASSWORD,
    ]);
    let (address, user) = (server_address(), role.name.clone());
    let (host, port) = address.split_once(':').unwrap_or((&address, "5432"));
    let url = |password: &str, database: &str| format!("postgres://{user}:{password}@{address}/{database}");
    let keyword_value = |password: &str, database: &str| {
        format!("host={host} port = {port} user={user} password = {password} dbname='{database}'")
    };

    let key = work.path("admin.key");
    let mut keygen = work.command();
    keygen.args(["keygen", "--json", "-o", key.to_str().unwrap()]);
    let recipient = watch.run("keygen", &mut keygen).ok().json()["recipient"].as_str().unwrap().to_string();
    let identity = std::fs::read_to_string(&key).unwrap();
    watch.add_secret(identity.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap());
    let repo = work.path("repo").to_str().unwrap().to_string();
    let copy = work.path("copy").to_str().unwrap().to_string();
    let mut init = work.command();
    init.args(["init", "-vv", "--repo", &repo, "--repo", &copy, "--recipient", &recipient]);
    watch.run("init", &mut init).ok();
    // The identity given by mistake where a recipient is asked for: refused, not said back.
    let mistaken = work.path("mistaken").to_str().unwrap().to_string();
    for (what, given) in
        [("a line", identity.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap()), ("the file", &identity)]
    {
        for json in [false, true] {
            let mut init = work.command();
            init.args(["init", "--repo", &mistaken, "--recipient", given]);
            if json {
                init.arg("--json");
            }
            watch
                .run(&format!("init, an identity ({what}) for a recipient"), &mut init)
                .fails_with(1, "an age identity");
        }
    }

    // Backups that succeed, the password given every way there is.
    let given = |what, db: Option<String>, env: Option<(&'static str, String)>| DatabaseGiven { what, db, env };
    let backups = [
        given("backup, password in the URL", Some(url(URL_PASSWORD, &source.name)), None),
        given("backup, percent-encoded password", Some(url(ENCODED_URL_PASSWORD, &source.name)), None),
        given("backup, keyword/value password", Some(keyword_value(KEYWORD_VALUE_PASSWORD, &source.name)), None),
        given(
            "backup, password in the URL's query",
            Some(format!("postgres://{user}@{address}/{}?password={QUERY_PASSWORD}", source.name)),
            None,
        ),
        given(
            "backup, PGPASSWORD",
            Some(format!("postgres://{user}@{address}/{}", source.name)),
            Some(("PGPASSWORD", PGPASSWORD.to_string())),
        ),
        given("backup, CRMVAULT_DB", None, Some(("CRMVAULT_DB", url(CRMVAULT_DB_PASSWORD, &source.name)))),
    ];
    let cycle = [Verbosity::JsonVeryVerbose, Verbosity::DebugLog, Verbosity::JsonDebugLog];
    for (index, backup) in backups.iter().enumerate() {
        for verbosity in [cycle[index % 3], cycle[(index + 1) % 3]] {
            let mut command = work.command();
            command.args(["backup", "--repo", &repo]);
            if let Some(db) = &backup.db {
                command.args(["--db", db]);
            }
            command.envs(backup.env.iter().cloned());
            verbosity.apply(&mut command);
            watch.run(backup.what, &mut command).ok();
        }
    }
    // The debug log names the database, redacted: the redaction is what is being tested.
    let mut logged = work.command();
    logged.args(["backup", "--repo", &repo, "--db", &keyword_value(KEYWORD_VALUE_PASSWORD, &source.name)]);
    let run = watch.run("backup, keyword/value, debug log", logged.env("CRMVAULT_LOG", "debug")).ok();
    assert!(
        run.stderr.contains(&format!("host={host} port = {port} user={user} password=*** dbname=")),
        "{}",
        run.stderr
    );

    // The most verbose log there is: what the libraries say about the connection too.
    let mut traced = work.command();
    traced.args(["backup", "--repo", &repo, "--db", &url(URL_PASSWORD, &source.name)]).env("CRMVAULT_LOG", "trace");
    watch.run("backup, password in the URL, trace log", &mut traced).ok();

    // Backups that fail, each with a password in the string.
    let failures: Vec<(&str, String, &str)> = vec![
        (
            "backup, no such role",
            format!("postgres://no_such_role:{URL_PASSWORD}@{address}/{}", source.name),
            "does not exist",
        ),
        ("backup, no such database", url(URL_PASSWORD, "cvt_no_such_database"), "does not exist"),
        (
            "backup, unreachable host",
            format!("postgres://{user}:{URL_PASSWORD}@127.0.0.1:1/{}", source.name),
            "cannot connect",
        ),
        (
            "backup, unreachable keyword/value host",
            format!("host=127.0.0.1 port=1 user={user} password={KEYWORD_VALUE_PASSWORD} dbname=x"),
            "cannot connect",
        ),
        ("backup, unterminated quote", format!("host={host} password='KvPwZy ZyMoreQ"), "is never closed"),
        (
            "backup, sslpassword",
            format!("host={host} user={user} sslpassword='{SSL_PASSWORD}'"),
            "unknown option `sslpassword`",
        ),
        (
            "backup, misspelt password keyword",
            format!("host={host} user={user} pasword={MISSPELT_PASSWORD}"),
            "unknown option `pasword`",
        ),
        (
            "backup, misspelt password in the URL's query",
            format!("postgres://{user}@{address}/x?passwd={MISSPELT_PASSWORD}"),
            "unknown option `passwd`",
        ),
        (
            "backup, a URL with a space before it",
            format!(" postgres://{user}:{MISSPELT_PASSWORD}@127.0.0.1:1/x?sslmode=disable"),
            "error",
        ),
        (
            "backup, another scheme's URL",
            format!("postgresql+asyncpg://{user}:{MISSPELT_PASSWORD}@{address}/x?a=1"),
            "error",
        ),
        ("backup, unencoded @ in the password", format!("postgres://{user}:Enc@PwQzJ/k@{address}/x"), "malformed URL"),
        ("backup, bad sslmode", format!("{}?sslmode=sometimes", url(URL_PASSWORD, &source.name)), "sslmode=sometimes"),
    ];
    // A key=value string not quoted in the shell: two arguments, the second quoted by clap.
    for json in [false, true] {
        let mut command = work.command();
        let (host_arg, password_arg) = (format!("host={host}"), format!("password={MISSPELT_PASSWORD}"));
        command.args(["backup", "--repo", &repo, "--db", &host_arg, &password_arg]);
        if json {
            command.arg("--json");
        }
        watch.run("backup, unquoted key=value --db", &mut command).fails_with(2, "unexpected argument");
    }
    for (index, (what, db, message)) in failures.iter().enumerate() {
        let mut command = work.command();
        command.args(["backup", "--repo", &repo, "--db", db]).env("CRMVAULT_DB_REMOTE_HOSTS", "127.0.0.1");
        cycle[index % 3].apply(&mut command);
        watch.run(what, &mut command).fails_with(1, message);
    }

    // Restores, listing, verify, copy.
    let key = key.to_str().unwrap();
    let mut restore = work.command();
    restore.args([
        "restore",
        "--json",
        "-vv",
        "--repo",
        &repo,
        "--identity",
        key,
        "--db",
        &url(URL_PASSWORD, &restored.name),
    ]);
    watch.run("restore, password in the URL", &mut restore).ok();
    let mut restore = work.command();
    restore
        .args(["restore", "--repo", &repo, "--identity", key])
        .env("CRMVAULT_RESTORE_DB", keyword_value(&format!("'{RESTORE_DB_PASSWORD}'"), &restored_again.name))
        .env("CRMVAULT_LOG", "debug");
    watch.run("restore, CRMVAULT_RESTORE_DB", &mut restore).ok();
    assert_same_database(&source, &restored_again);
    let mut refused = work.command();
    refused.args([
        "restore",
        "--json",
        "-vv",
        "--repo",
        &repo,
        "--identity",
        key,
        "--db",
        &url(URL_PASSWORD, &source.name),
    ]);
    watch.run("restore into a database that is not empty", &mut refused).fails_with(1, "is not empty");
    let mut unreachable = work.command();
    unreachable
        .args(["restore", "--repo", &repo, "--identity", key])
        .env("CRMVAULT_RESTORE_DB", format!("postgres://{user}:{RESTORE_DB_PASSWORD}@127.0.0.1:1/x"))
        .env("CRMVAULT_LOG", "debug");
    watch.run("restore, unreachable host", &mut unreachable).fails_with(1, "cannot connect");
    for verbosity in cycle {
        let mut snapshots = work.command();
        snapshots.args(["snapshots", "--repo", &repo, "--repo", &copy, "--identity", key]);
        verbosity.apply(&mut snapshots);
        watch.run("snapshots", &mut snapshots).ok();
        let mut verify = work.command();
        verify.args(["verify", "--read-data", "--repo", &repo, "--identity", key]);
        verbosity.apply(&mut verify);
        watch.run("verify", &mut verify).ok();
    }
    let mut copy_command = work.command();
    copy_command.args(["copy", "--json", "-vv", "--from", &repo, "--to", &copy]);
    watch.run("copy", &mut copy_command).ok();

    watch.assert_nothing_leaked(&[work.config_dir(), PathBuf::from(&repo), PathBuf::from(&copy)]);
}

const URL_ACCESS_KEY: &str = "AKIAQUERYKQZ";
const URL_SECRET_KEY: &str = "QuerySkVzXw";
const USERINFO_ACCESS_KEY: &str = "AKIAUSERINFOKQ";
const USERINFO_SECRET_KEY: &str = "UserinfoSkVzQ";
const URL_SESSION_TOKEN: &str = "SessTokVzQxW";
const ENDPOINT_SECRET_KEY: &str = "EpSkVzQxWm";
const WRONG_SECRET_KEY: &str = "WrongSkVzQxJ";
const ENVIRONMENT_SESSION_TOKEN: &str = "EnvSessTokVzQxWm";

/// crmvault with the S3 server's credentials (its secret is one of those watched).
fn s3_command(work: &Workspace, server: &S3Server) -> Command {
    let mut command = work.command();
    command.envs(server.env()).env("AWS_SESSION_TOKEN", ENVIRONMENT_SESSION_TOKEN);
    command
}

#[test]
fn s3_credentials_never_show_in_output_logs_or_the_repository() {
    let role = Role::create("secrets_s3_role", URL_PASSWORD);
    let source = TestDb::create("secrets_s3");
    source.load_file(&fixture("examples/crm.sql"));
    let restored = TestDb::create("secrets_s3_restored");
    let server = S3Server::start();
    let work = Workspace::new();
    let mut watch = Watch::new(&[
        crate::common::s3::SECRET_KEY,
        URL_ACCESS_KEY,
        URL_SECRET_KEY,
        USERINFO_ACCESS_KEY,
        USERINFO_SECRET_KEY,
        URL_SESSION_TOKEN,
        ENDPOINT_SECRET_KEY,
        WRONG_SECRET_KEY,
        ENVIRONMENT_SESSION_TOKEN,
        URL_PASSWORD,
    ]);
    let recipient = work.keygen("admin.key");
    let identity = std::fs::read_to_string(work.path("admin.key")).unwrap();
    watch.add_secret(identity.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap());
    let key = work.admin_key();
    let bucket = server.repo("crm");
    let local = work.path("local").to_str().unwrap().to_string();
    let db = format!("postgres://{}:{URL_PASSWORD}@{}/{}", role.name, server_address(), source.name);

    // Credentials in the repository URL: refused by every command, named but never shown.
    let (name, query) = bucket.split_once('?').unwrap();
    let refused = [
        format!("{name}?{query}&secret_access_key={URL_SECRET_KEY}&access_key_id={URL_ACCESS_KEY}"),
        format!("s3://{USERINFO_ACCESS_KEY}:{USERINFO_SECRET_KEY}@{}?{query}", name.trim_start_matches("s3://")),
        format!("{name}?{query}&session_token={URL_SESSION_TOKEN}"),
        format!(
            "{name}?endpoint=http://{URL_ACCESS_KEY}:{ENDPOINT_SECRET_KEY}@{}",
            server.endpoint.trim_start_matches("http://")
        ),
        format!("s3://{USERINFO_ACCESS_KEY}:{USERINFO_SECRET_KEY}/x@{}", name.trim_start_matches("s3://")),
    ];
    let cycle = [Verbosity::JsonVeryVerbose, Verbosity::DebugLog, Verbosity::JsonDebugLog];
    for (index, location) in refused.iter().enumerate() {
        let verbosity = cycle[index % 3];
        let commands: [Vec<&str>; 6] = [
            vec!["init", "--repo", location, "--recipient", &recipient],
            vec!["backup", "--repo", location, "--db", &db],
            vec!["snapshots", "--repo", location],
            vec!["verify", "--repo", location, "--identity", &key],
            vec!["restore", "--repo", location, "--identity", &key, "--db", &db],
            vec!["copy", "--from", location, "--to", &local],
        ];
        for args in commands {
            let mut command = s3_command(&work, &server);
            command.args(&args);
            verbosity.apply(&mut command);
            let run = watch.run(&format!("{} with credentials in the URL ({index})", args[0]), &mut command);
            if index < 4 {
                let run = run.fails_with(1, "because it holds credentials (");
                assert_eq!(run.stderr.lines().filter(|l| l.contains("error")).count(), 1, "{}", run.stderr);
            } else {
                assert_eq!(run.code, 1, "{}", run.stderr);
            }
        }
    }
    let mut in_environment = s3_command(&work, &server);
    in_environment.args(["snapshots", "-vv"]).env("CRMVAULT_REPO", &refused[0]);
    watch.run("snapshots, credentials in CRMVAULT_REPO", &mut in_environment).fails_with(1, "holds credentials");

    // Credentials in the environment: everything works, at every verbosity.
    let mut init = s3_command(&work, &server);
    init.args(["init", "--repo", &bucket, "--repo", &local, "--recipient", &recipient]).env("CRMVAULT_LOG", "debug");
    watch.run("init", &mut init).ok();
    for verbosity in cycle {
        let mut backup = s3_command(&work, &server);
        backup.args(["backup", "--repo", &bucket, "--repo", &local, "--db", &db]);
        verbosity.apply(&mut backup);
        watch.run("backup", &mut backup).ok();
        let mut snapshots = s3_command(&work, &server);
        snapshots.args(["snapshots", "--repo", &bucket, "--identity", &key]);
        verbosity.apply(&mut snapshots);
        watch.run("snapshots", &mut snapshots).ok();
        let mut verify = s3_command(&work, &server);
        verify.args(["verify", "--read-data", "--repo", &bucket, "--identity", &key]);
        verbosity.apply(&mut verify);
        watch.run("verify", &mut verify).ok();
    }
    let mut restore = s3_command(&work, &server);
    restore
        .args(["restore", "--repo", &bucket, "--identity", &key, "--db", &restored.url()])
        .env("CRMVAULT_LOG", "trace");
    watch.run("restore, trace log", &mut restore).ok();
    assert_same_database(&source, &restored);
    let copy = work.path("copy").to_str().unwrap().to_string();
    let mut init_copy = s3_command(&work, &server);
    init_copy.args(["init", "--json", "-vv", "--repo", &copy, "--copy-from", &bucket]);
    watch.run("init --copy-from", &mut init_copy).ok();
    let mut copy_command = s3_command(&work, &server);
    copy_command.args(["copy", "--from", &bucket, "--to", &copy]).env("CRMVAULT_LOG", "debug");
    watch.run("copy", &mut copy_command).ok();

    // Failing runs: a wrong secret, an unreachable endpoint.
    for verbosity in cycle {
        let mut wrong = s3_command(&work, &server);
        wrong.args(["snapshots", "--repo", &bucket]).env("AWS_SECRET_ACCESS_KEY", WRONG_SECRET_KEY);
        verbosity.apply(&mut wrong);
        let run = watch.run("snapshots with a wrong secret", &mut wrong);
        assert_eq!(run.code, 1, "{}", run.stderr);
        let mut unreachable = s3_command(&work, &server);
        let nowhere = format!("{name}?endpoint=http://127.0.0.1:1&retries=0");
        unreachable.args(["backup", "--repo", &nowhere, "--db", &db]);
        verbosity.apply(&mut unreachable);
        let run = watch.run("backup to an unreachable endpoint", &mut unreachable);
        assert_eq!(run.code, 1, "{}", run.stderr);
    }

    let mut folders = vec![work.config_dir(), PathBuf::from(&local), PathBuf::from(&copy)];
    folders.extend(server.bucket_dir());
    watch.assert_nothing_leaked(&folders);
}
