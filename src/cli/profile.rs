//! The config file (`crmvault.toml`) and its named profiles: where it is, reading it with every
//! mistake named by line, and the settings a command gets from `--profile NAME` where its flags
//! and environment variables are silent.
//!
//! Which file: `--config FILE` (or `CRMVAULT_CONFIG`) alone when given; else
//! `$CRMVAULT_CONFIG_DIR/crmvault.toml` (default `~/.config/crmvault`) when it exists; else
//! `/etc/crmvault/crmvault.toml` when it exists. One file, never merged with another: what a
//! command does is what that one file says. The old `$CRMVAULT_CONFIG_DIR/config.toml`
//! (`[repository."…"]` sections only) is still read beside it; a section of the same name in
//! `crmvault.toml` wins.
//!
//! A file found by default that this user may not read is passed over unless a profile is
//! asked for. A file that cannot be read stops only the commands that read settings (not `keygen`,
//! `--help`, `--version`): each of those fails with the file, line and column of the first
//! mistake, and `crmvault config check` lists them all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use crmvault::commands::verify;
use crmvault::postgres::Database;
use crmvault::target::Location;
use crmvault::trust::Fingerprint;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue, ValueDeserializer};

use super::secrets::{check_private, read_secret_file};
use super::storage::{RepositorySection, Sections, Storage};

/// The config file when neither `--config` nor the user's config folder gives one.
pub const SYSTEM_CONFIG: &str = "/etc/crmvault/crmvault.toml";
/// The config file's name in the user's config folder.
const USER_CONFIG: &str = "crmvault.toml";
/// The old config file's name in the config folder: `[repository."…"]` sections only.
const OLD_CONFIG: &str = "config.toml";

/// One `[profile.NAME]` section: what a command takes when neither its flag nor its
/// environment variable is given. A new command's setting is one more field here (and one line
/// in the command: `settings.switch(flag, |p| p.KEY)?` for a flag, `given.or(settings.profile()?.KEY)`
/// for a value).
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `backup --db`: the database backed up, without a password.
    pub db: Option<String>,
    /// A file holding the database password (not readable by others).
    pub password_file: Option<PathBuf>,
    /// `--repo`, every copy of the repository.
    pub repo: Option<Vec<String>>,
    /// `backup --table`.
    pub table: Option<Vec<String>>,
    /// `backup --exclude-table`.
    pub exclude_table: Option<Vec<String>>,
    /// `backup --jobs`, `restore --jobs`.
    pub jobs: Option<usize>,
    /// `--fingerprint`.
    pub fingerprint: Option<String>,
    /// `backup --pg-dump`.
    pub pg_dump: Option<PathBuf>,
    /// `backup --allow-empty`.
    pub allow_empty: Option<bool>,
    /// `backup --alarm-threshold`.
    pub alarm_threshold: Option<f64>,
    /// `backup --alarm-table` (every one).
    pub alarm_table: Option<Vec<String>>,
    /// `backup --no-alarm`.
    pub no_alarm: Option<bool>,
    /// `--allow-http`.
    pub allow_http: Option<bool>,
    /// `--identity` of `restore`, `verify`, `snapshots`, `prune` (on an admin's machine).
    pub identity: Option<PathBuf>,
    /// `restore --db`: the database restored into (never `db`).
    pub restore_db: Option<String>,
    /// `drill --scratch-db`: the database a drill restores into (created and dropped by it, or
    /// an empty one it empties again).
    pub scratch_db: Option<String>,
    /// `restore --parallel` (and `drill --parallel`).
    pub parallel: Option<bool>,
    /// `restore --trust-snapshot-code` (and `drill --trust-snapshot-code`).
    pub trust_snapshot_code: Option<bool>,
    /// `verify --read-data`.
    pub read_data: Option<bool>,
    /// `verify --read-data-subset` (`N/M`, `P%` or `auto`).
    pub read_data_subset: Option<String>,
    /// `forget --keep-last` (the profile's keep_* keys are its retention policy, taken when
    /// no --keep-* flag is given).
    pub keep_last: Option<u32>,
    /// `forget --keep-hourly`.
    pub keep_hourly: Option<u32>,
    /// `forget --keep-daily`.
    pub keep_daily: Option<u32>,
    /// `forget --keep-weekly`.
    pub keep_weekly: Option<u32>,
    /// `forget --keep-monthly`.
    pub keep_monthly: Option<u32>,
    /// `forget --keep-yearly`.
    pub keep_yearly: Option<u32>,
    /// `forget --keep-within`.
    pub keep_within: Option<String>,
    /// `forget --keep-tag`.
    pub keep_tag: Option<Vec<String>>,
    /// `prune --max-unused` (with an identity: repacking).
    pub max_unused: Option<String>,
}

/// A whole `crmvault.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    profile: BTreeMap<String, Profile>,
    #[serde(default)]
    repository: BTreeMap<String, RepositorySection>,
}

/// Which sections a file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// `crmvault.toml`: profiles and repositories.
    Profiles,
    /// The old `config.toml`: repositories only.
    RepositoriesOnly,
}

/// `crmvault config ACTION`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigAction {
    /// Validate the config file (syntax, unknown keys, types, profiles, secrets' file
    /// permissions): print each mistake with its line; exit 0 when valid, 1 when not.
    Check,
    /// Print the settings of --profile as the file gives them, secrets masked.
    Show,
}

/// A required setting nobody gave, one given in a form the command cannot use, or two that
/// contradict each other: a usage error (exit 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The exit code of a failed command: 2 when a required setting is missing or unusable, else 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(<dyn std::error::Error>::is::<Usage>) { 2 } else { 1 }
}

/// What the config files say, or what is wrong with them (told only to a command that asks).
pub struct Settings {
    state: std::result::Result<Loaded, Vec<String>>,
    /// The main file, when there is one.
    file: Option<PathBuf>,
    /// Where it was looked for.
    looked_at: Vec<PathBuf>,
}

struct Loaded {
    profile_name: Option<String>,
    profile: Profile,
    profile_names: Vec<String>,
    sections: BTreeMap<String, RepositorySection>,
    /// Which files were read.
    files: Vec<PathBuf>,
}

impl Settings {
    /// Finds and reads the config files; never fails (see [`Settings`]).
    pub fn load(given: Option<&Path>, profile_name: Option<&str>, config_dir: &Path) -> Settings {
        let user = config_dir.join(USER_CONFIG);
        let system = PathBuf::from(SYSTEM_CONFIG);
        let (file, looked_at) = if let Some(path) = given {
            (Some(path.to_path_buf()), vec![path.to_path_buf()])
        } else {
            let found = [&user, &system].into_iter().find(|path| path.exists()).cloned();
            (found, vec![user, system])
        };
        // A service's file this user may not read (/etc/crmvault/crmvault.toml, 0600 for the
        // crmvault user) stops nobody who did not ask for a profile from it.
        let file = file.filter(|path| {
            let unreadable =
                std::fs::File::open(path).is_err_and(|error| error.kind() == std::io::ErrorKind::PermissionDenied);
            !(unreadable && given.is_none() && profile_name.is_none())
        });
        let mut mistakes = Vec::new();
        let mut files = Vec::new();
        let main = match &file {
            Some(path) => {
                files.push(path.clone());
                read_file(path, FileKind::Profiles).unwrap_or_else(|found| {
                    mistakes.extend(found);
                    ConfigFile::default()
                })
            }
            None => ConfigFile::default(),
        };
        let old_path = config_dir.join(OLD_CONFIG);
        let old = if old_path.exists() {
            files.push(old_path.clone());
            read_file(&old_path, FileKind::RepositoriesOnly).unwrap_or_else(|found| {
                mistakes.extend(found);
                ConfigFile::default()
            })
        } else {
            ConfigFile::default()
        };
        let profile_names: Vec<String> = main.profile.keys().cloned().collect();
        let profile = match (profile_name, &file) {
            (None, _) => Profile::default(),
            (Some(_), _) if !mistakes.is_empty() => Profile::default(),
            (Some(name), None) => {
                mistakes.push(format!(
                    "no profile {name}: no config file ({} and {} do not exist; give --config FILE)",
                    looked_at[0].display(),
                    looked_at[1].display()
                ));
                Profile::default()
            }
            (Some(name), Some(path)) => main.profile.get(name).cloned().unwrap_or_else(|| {
                let known = if profile_names.is_empty() { "none".to_string() } else { profile_names.join(", ") };
                mistakes.push(format!("{}: no profile {name} (profiles there: {known})", path.display()));
                Profile::default()
            }),
        };
        if !mistakes.is_empty() {
            return Settings { state: Err(mistakes), file, looked_at };
        }
        let mut sections = old.repository;
        sections.extend(main.repository);
        let loaded = Loaded { profile_name: profile_name.map(String::from), profile, profile_names, sections, files };
        Settings { state: Ok(loaded), file, looked_at }
    }

    fn loaded(&self) -> Result<&Loaded> {
        self.state.as_ref().map_err(|mistakes| anyhow!(summary(mistakes)))
    }

    /// The selected profile's settings (empty without --profile).
    pub fn profile(&self) -> Result<&Profile> {
        Ok(&self.loaded()?.profile)
    }

    /// Storage with the files' `[repository."…"]` sections.
    pub fn storage(&self, allow_http: bool) -> Storage {
        let sections: Sections = match &self.state {
            Ok(loaded) => Ok(loaded.sections.clone()),
            Err(mistakes) => Err(summary(mistakes)),
        };
        let from_profile = self.state.as_ref().is_ok_and(|l| l.profile.allow_http == Some(true));
        Storage::new(sections, allow_http || from_profile)
    }

    /// The error for a setting nobody gave.
    fn missing(&self, what: &str, flag: &str, variable: Option<&str>, key: &str) -> anyhow::Error {
        let variable = variable.map(|name| format!(", set {name}")).unwrap_or_default();
        let profile = match (self.state.as_ref().ok().and_then(|l| l.profile_name.as_deref()), &self.file) {
            (Some(name), Some(file)) => format!("profile {name} of {}", file.display()),
            _ => "a profile of the config file (--profile NAME)".to_string(),
        };
        Usage(format!("no {what}: give {flag}{variable}, or `{key}` in {profile}")).into()
    }

    /// `--repo` (flag or `CRMVAULT_REPO`), else the profile's `repo`.
    pub fn repos(&self, given: Vec<String>) -> Result<Vec<String>> {
        let profile = self.profile()?;
        if !given.is_empty() {
            return Ok(given);
        }
        match &profile.repo {
            Some(repos) if !repos.is_empty() => Ok(repos.clone()),
            _ => Err(self.missing("repository", "--repo", Some("CRMVAULT_REPO"), "repo")),
        }
    }

    /// `backup --db` (flag or `CRMVAULT_DB`), else the profile's `db`.
    pub fn db(&self, given: Option<String>) -> Result<String> {
        let profile = self.profile()?;
        given.or_else(|| profile.db.clone()).ok_or_else(|| self.missing("database", "--db", Some("CRMVAULT_DB"), "db"))
    }

    /// `restore --db` (flag or `CRMVAULT_RESTORE_DB`), else the profile's `restore_db`.
    pub fn restore_db(&self, given: Option<String>) -> Result<String> {
        let profile = self.profile()?;
        given
            .or_else(|| profile.restore_db.clone())
            .ok_or_else(|| self.missing("database to restore into", "--db", Some("CRMVAULT_RESTORE_DB"), "restore_db"))
    }

    /// `drill --scratch-db` (flag or `CRMVAULT_SCRATCH_DB`), else the profile's `scratch_db`.
    pub fn scratch_db(&self, given: Option<String>) -> Result<String> {
        let profile = self.profile()?;
        given.or_else(|| profile.scratch_db.clone()).ok_or_else(|| {
            self.missing("scratch database for the drill", "--scratch-db", Some("CRMVAULT_SCRATCH_DB"), "scratch_db")
        })
    }

    /// `--identity`, else the profile's `identity`, if either.
    pub fn identity(&self, given: Option<PathBuf>) -> Result<Option<PathBuf>> {
        let profile = self.profile()?;
        Ok(given.or_else(|| profile.identity.clone()))
    }

    /// `--identity`, else the profile's `identity`; one is needed.
    pub fn require_identity(&self, given: Option<PathBuf>) -> Result<PathBuf> {
        self.identity(given)?.ok_or_else(|| self.missing("admin identity", "--identity FILE", None, "identity"))
    }

    /// `--jobs`, else the profile's `jobs`, else 2.
    pub fn jobs(&self, given: Option<usize>) -> Result<usize> {
        Ok(given.or(self.profile()?.jobs).unwrap_or(2))
    }

    /// `--table` (all of them), else the profile's `table`.
    pub fn tables(&self, given: Vec<String>) -> Result<Vec<String>> {
        let profile = self.profile()?;
        Ok(if given.is_empty() { profile.table.clone().unwrap_or_default() } else { given })
    }

    /// `--exclude-table` (all of them), else the profile's `exclude_table`.
    pub fn exclude_tables(&self, given: Vec<String>) -> Result<Vec<String>> {
        let profile = self.profile()?;
        Ok(if given.is_empty() { profile.exclude_table.clone().unwrap_or_default() } else { given })
    }

    /// The data-loss alarm's rules from `--no-alarm`, `--alarm-threshold` and `--alarm-table`
    /// (all of them), else the profile's `no_alarm`, `alarm_threshold` and `alarm_table`
    /// keys; None when it is off.
    pub fn alarm(
        &self,
        off: bool,
        threshold: Option<f64>,
        tables: Vec<String>,
    ) -> Result<Option<crmvault::backup::alarm::AlarmRules>> {
        let profile = self.profile()?;
        if off || (threshold.is_none() && tables.is_empty() && profile.no_alarm == Some(true)) {
            return Ok(None);
        }
        let threshold = threshold.or(profile.alarm_threshold).unwrap_or(crmvault::backup::alarm::DEFAULT_PERCENT);
        let tables = if tables.is_empty() { profile.alarm_table.clone().unwrap_or_default() } else { tables };
        Ok(Some(crmvault::backup::alarm::AlarmRules::new(threshold, &tables)?))
    }

    /// `--pg-dump` (or `CRMVAULT_PG_DUMP`), else the profile's `pg_dump`.
    pub fn pg_dump(&self, given: Option<PathBuf>) -> Result<Option<PathBuf>> {
        let profile = self.profile()?;
        Ok(given.or_else(|| profile.pg_dump.clone()))
    }

    /// A flag (`--allow-empty`), else its key in the profile (`|p| p.allow_empty`).
    pub fn switch(&self, given: bool, key: fn(&Profile) -> Option<bool>) -> Result<bool> {
        Ok(given || key(self.profile()?) == Some(true))
    }

    /// `--parallel`, else the profile's `parallel`.
    pub fn parallel(&self, given: bool) -> Result<bool> {
        self.switch(given, |p| p.parallel)
    }

    /// `--trust-snapshot-code`, else the profile's `trust_snapshot_code`.
    pub fn trust_snapshot_code(&self, given: bool) -> Result<bool> {
        self.switch(given, |p| p.trust_snapshot_code)
    }

    /// The retention policy of `forget`: the --keep-* flags when any is given, else the
    /// profile's keep_* keys.
    pub fn policy(&self, given: crmvault::retention::Policy) -> Result<crmvault::retention::Policy> {
        if !given.is_empty() {
            return Ok(given);
        }
        let profile = self.profile()?;
        let within = match profile.keep_within.as_deref().map(str::parse::<crmvault::retention::Span>) {
            Some(Ok(span)) => Some(span),
            Some(Err(message)) => anyhow::bail!("keep_within in the profile: {message}"),
            None => None,
        };
        let policy = crmvault::retention::Policy {
            last: profile.keep_last.unwrap_or(0),
            hourly: profile.keep_hourly.unwrap_or(0),
            daily: profile.keep_daily.unwrap_or(0),
            weekly: profile.keep_weekly.unwrap_or(0),
            monthly: profile.keep_monthly.unwrap_or(0),
            yearly: profile.keep_yearly.unwrap_or(0),
            within,
            tags: profile.keep_tag.clone().unwrap_or_default(),
        };
        if policy.is_empty() {
            return Err(self.missing(
                "retention policy",
                "--keep-daily N (or another --keep-* flag)",
                None,
                "keep_daily",
            ));
        }
        Ok(policy)
    }

    /// `--read-data`, else the profile's `read_data`.
    pub fn read_data(&self, given: bool) -> Result<bool> {
        self.switch(given, |p| p.read_data)
    }

    /// `verify`'s `--identity` and how deep to look: `--read-data` or `--read-data-subset SPEC`
    /// (`auto` is the slice of `now`'s day), else the profile's; reading data needs an identity.
    /// Reading every pack covers any subset the profile names; a subset flag against a profile
    /// that reads everything is a contradiction.
    pub fn verify_depth(
        &self,
        identity: Option<PathBuf>,
        read_data: bool,
        subset: Option<String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(Option<PathBuf>, verify::Depth)> {
        let identity = self.identity(identity)?;
        let full = self.read_data(read_data)?;
        if full && subset.is_some() {
            return Err(Usage(
                "--read-data-subset reads a share of the packs, and the profile's `read_data = true` reads every \
                 one: give --read-data-subset with a profile that does not set read_data"
                    .into(),
            )
            .into());
        }
        let (subset, source) = match subset {
            Some(spec) => (Some(spec), "--read-data-subset".to_string()),
            None => (self.profile()?.read_data_subset.clone(), "`read_data_subset` of the profile".to_string()),
        };
        let depth = match subset {
            _ if full => verify::Depth::ReadData,
            Some(spec) => verify::Depth::ReadSubset(
                verify::PackSubset::parse(&spec, now).map_err(|error| Usage(format!("{source}: {error}")))?,
            ),
            None => verify::Depth::Structure,
        };
        let flag = match depth {
            verify::Depth::Structure => return Ok((identity, depth)),
            verify::Depth::ReadData => "--read-data",
            verify::Depth::ReadSubset(_) => "--read-data-subset",
        };
        if identity.is_none() {
            return Err(self.missing(&format!("admin identity for {flag}"), "--identity FILE", None, "identity"));
        }
        Ok((identity, depth))
    }

    /// `--fingerprint` (or `CRMVAULT_FINGERPRINT`), else the profile's `fingerprint` (checked
    /// when the file was read). A broken file gives none here: the command stops at its next
    /// setting with the file's mistake.
    pub fn fingerprint(&self, given: Option<Fingerprint>) -> Option<Fingerprint> {
        given.or_else(|| {
            let text = self.state.as_ref().ok()?.profile.fingerprint.as_deref()?;
            Fingerprint::parse(text).ok()
        })
    }

    /// Parses a database URL and finds its password where the URL has none: `PGPASSWORD`, the
    /// profile's `password_file`, the systemd credential `db-password`, then `.pgpass`.
    pub fn database(&self, url: &str) -> Result<Database> {
        let mut database = Database::parse_with(url, &super::connection::defaults()?)?;
        if let Ok(password) = std::env::var("PGPASSWORD") {
            database.set_password_if_missing(&password);
        }
        if !database.has_password()
            && let Some(path) = &self.profile()?.password_file
        {
            database.set_password_if_missing(&read_secret_file(path)?);
        }
        if !database.has_password()
            && let Some(password) = super::secrets::password_from_credentials()?
        {
            database.set_password_if_missing(&password);
        }
        if !database.has_password()
            && let Some(password) = super::secrets::password_from_pgpass(&database)
        {
            database.set_password_if_missing(&password);
        }
        Ok(database)
    }
}

/// Parses `--jobs`: a count of connections, at least 1 (as `jobs` in a profile).
pub fn parse_jobs(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(jobs) => Ok(jobs),
        Err(_) => Err("not a whole number".into()),
    }
}

/// The first mistake, for a command that cannot go on: the others are for `config check`.
fn summary(mistakes: &[String]) -> String {
    let first = mistakes.first().map_or("the config file cannot be read", String::as_str);
    match mistakes.len() {
        0 | 1 => first.to_string(),
        more => format!("{first} (and {} more: `crmvault config check` lists them)", more - 1),
    }
}

/// Line and column (from 1) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Collects a file's mistakes as `FILE:LINE:COLUMN: what`.
struct Mistakes<'a> {
    path: &'a Path,
    text: &'a str,
    found: Vec<((usize, usize), String)>,
}

impl Mistakes<'_> {
    fn add(&mut self, span: Range<usize>, message: &str) {
        let (line, column) = position(self.text, span.start);
        self.found.push(((line, column), format!("{}:{line}:{column}: {message}", self.path.display())));
    }

    /// The mistakes in the order of the file's lines.
    fn in_order(mut self) -> Vec<String> {
        self.found.sort_by_key(|(position, _)| *position);
        self.found.into_iter().map(|(_, message)| message).collect()
    }
}

/// Reads one config file: what it says, or every mistake in it (each on its line), found in
/// one pass: a key with a wrong type is left out and the rest is still checked for meaning.
fn read_file(path: &Path, kind: FileKind) -> std::result::Result<ConfigFile, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|error| vec![format!("reading {}: {error}", path.display())])?;
    let mut mistakes = Mistakes { path, text: &text, found: Vec::new() };
    let (root, errors) = DeTable::parse_recoverable(&text);
    // The parser recovers from a syntax error by guessing, and each later line it misreads is
    // one more error: the first is the mistake, the rest follow from it.
    if let Some(error) = errors.iter().min_by_key(|error| error.span().map_or(0, |span| span.start)) {
        mistakes.add(error.span().unwrap_or(0..0), &format!("syntax error: {}", error.message().trim()));
        return Err(mistakes.in_order());
    }
    let root = root.into_inner();
    let mut file = ConfigFile::default();
    for (key, value) in &root {
        match (key.get_ref().as_ref(), kind) {
            ("profile", FileKind::Profiles) => file.profile = check_sections(&mut mistakes, "profile", value),
            ("repository", _) => file.repository = check_sections(&mut mistakes, "repository", value),
            (other, FileKind::Profiles) => {
                mistakes.add(key.span(), &format!("unknown key `{other}` (known: profile, repository)"));
            }
            (other, FileKind::RepositoriesOnly) => mistakes.add(
                key.span(),
                &format!(
                    "unknown key `{other}` (this old file holds only [repository.\"…\"]; profiles go in {USER_CONFIG})"
                ),
            ),
        }
    }
    resolve_paths(&mut file, path.parent().unwrap_or(Path::new(".")));
    check_meaning(&mut mistakes, &root, &file);
    if mistakes.found.is_empty() { Ok(file) } else { Err(mistakes.in_order()) }
}

/// Makes the file names in a config file relative to its folder, not to wherever the command
/// runs (cron, systemd).
fn resolve_paths(file: &mut ConfigFile, folder: &Path) {
    let resolve = |path: &mut Option<PathBuf>| {
        if let Some(relative) = path.as_ref().filter(|p| p.is_relative()) {
            *path = Some(folder.join(relative));
        }
    };
    for profile in file.profile.values_mut() {
        resolve(&mut profile.password_file);
        resolve(&mut profile.identity);
    }
    for section in file.repository.values_mut() {
        resolve(&mut section.secret_access_key_file);
    }
}

/// Checks each key of each `[WHAT.NAME]` section on its own, so that every wrong key and
/// wrong type is found, not only the first; returns the sections made of their right keys.
fn check_sections<T: DeserializeOwned>(
    mistakes: &mut Mistakes<'_>,
    what: &str,
    value: &Spanned<DeValue<'_>>,
) -> BTreeMap<String, T> {
    let mut found = BTreeMap::new();
    let Some(sections) = value.get_ref().as_table() else {
        mistakes.add(value.span(), &format!("`{what}` must hold [{what}.NAME] sections"));
        return found;
    };
    for (name, section) in sections {
        let Some(keys) = section.get_ref().as_table() else {
            mistakes.add(section.span(), &format!("{what} {}: must be a table", name.get_ref()));
            continue;
        };
        let mut right = DeTable::new();
        for (key, value) in keys {
            let mut one = DeTable::new();
            one.insert(key.clone(), value.clone());
            let single = Spanned::new(section.span(), DeValue::Table(one));
            match T::deserialize(ValueDeserializer::from(single)) {
                Ok(_) => {
                    right.insert(key.clone(), value.clone());
                }
                Err(error) => {
                    let message = error.message().trim();
                    let span = if message.starts_with("unknown field") {
                        key.span()
                    } else {
                        error.span().filter(|s| s.start >= value.span().start).unwrap_or_else(|| value.span())
                    };
                    mistakes.add(span, &format!("[{what}.{}] {message}", name.get_ref()));
                }
            }
        }
        match T::deserialize(ValueDeserializer::from(Spanned::new(section.span(), DeValue::Table(right)))) {
            Ok(parsed) => {
                found.insert(name.get_ref().to_string(), parsed);
            }
            Err(error) => {
                mistakes.add(section.span(), &format!("[{what}.{}] {}", name.get_ref(), error.message().trim()));
            }
        }
    }
    found
}

/// Where `[SECTION.NAME] KEY` is in the file.
fn span_of(root: &DeTable<'_>, section: &str, name: &str, key: &str) -> Range<usize> {
    fn find<'t, 'i>(
        table: &'t DeTable<'i>,
        wanted: &str,
    ) -> Option<(&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>)> {
        table.iter().find(|(k, _)| k.get_ref() == wanted)
    }
    let Some((_, sections)) = find(root, section) else { return 0..0 };
    let Some((_, named)) = sections.get_ref().as_table().and_then(|t| find(t, name)) else { return 0..0 };
    named.get_ref().as_table().and_then(|t| find(t, key)).map_or(named.span(), |(k, _)| k.span())
}

/// What types alone cannot check: values that must parse, files that must be private.
fn check_meaning(mistakes: &mut Mistakes<'_>, root: &DeTable<'_>, file: &ConfigFile) {
    let mut secrets_in_clear: Vec<(Range<usize>, String)> = Vec::new();
    for (name, profile) in &file.profile {
        let at = |key: &str| span_of(root, "profile", name, key);
        for (key, url) in
            [("db", &profile.db), ("restore_db", &profile.restore_db), ("scratch_db", &profile.scratch_db)]
        {
            let Some(url) = url else { continue };
            match Database::parse(url) {
                Ok(database) if database.has_password() => {
                    secrets_in_clear.push((at(key), format!("profile {name}'s {key} password")));
                }
                Ok(_) => {}
                Err(error) => mistakes.add(at(key), &format!("[profile.{name}] {key}: {error}")),
            }
        }
        for location in profile.repo.iter().flatten() {
            if let Err(error) = Location::parse(location) {
                mistakes.add(at("repo"), &format!("[profile.{name}] repo: {error}"));
            }
        }
        if profile.repo.as_ref().is_some_and(Vec::is_empty) {
            mistakes.add(at("repo"), &format!("[profile.{name}] repo: names no repository"));
        }
        for (key, patterns) in [("table", &profile.table), ("exclude_table", &profile.exclude_table)] {
            for pattern in patterns.iter().flatten() {
                if let Err(error) = globset::Glob::new(pattern) {
                    mistakes.add(at(key), &format!("[profile.{name}] {key}: bad pattern {pattern:?}: {error}"));
                }
            }
        }
        if let Some(Err(message)) = profile.keep_within.as_deref().map(str::parse::<crmvault::retention::Span>) {
            mistakes.add(at("keep_within"), &format!("[profile.{name}] keep_within: {message}"));
        }
        if profile.jobs == Some(0) {
            mistakes.add(at("jobs"), &format!("[profile.{name}] jobs: must be at least 1"));
        }
        let rules = |threshold: Option<f64>, tables: &[String]| {
            let threshold = threshold.unwrap_or(crmvault::backup::alarm::DEFAULT_PERCENT);
            crmvault::backup::alarm::AlarmRules::new(threshold, tables)
        };
        if let Err(error) = rules(profile.alarm_threshold, &[]) {
            mistakes.add(at("alarm_threshold"), &format!("[profile.{name}] alarm_threshold: {error}"));
        }
        if let Err(error) = rules(None, profile.alarm_table.as_deref().unwrap_or_default()) {
            mistakes.add(at("alarm_table"), &format!("[profile.{name}] alarm_table: {error}"));
        }
        // `auto` reads the date only to pick its slice: any date tells a good spec from a bad one.
        let subset = |spec| verify::PackSubset::parse(spec, chrono::DateTime::UNIX_EPOCH);
        if let Some(Err(error)) = profile.read_data_subset.as_deref().map(subset) {
            mistakes.add(at("read_data_subset"), &format!("[profile.{name}] read_data_subset: {error}"));
        }
        if let Some(Err(error)) = profile.fingerprint.as_deref().map(Fingerprint::parse) {
            mistakes.add(at("fingerprint"), &format!("[profile.{name}] fingerprint: {error}"));
        }
        if let Some(Err(message)) = profile.password_file.as_deref().map(check_private) {
            mistakes.add(at("password_file"), &format!("[profile.{name}] password_file: {message}"));
        }
    }
    for (name, section) in &file.repository {
        let at = |key: &str| span_of(root, "repository", name, key);
        if let Some(Err(message)) = section.secret_access_key_file.as_deref().map(check_private) {
            mistakes.add(
                at("secret_access_key_file"),
                &format!("[repository.\"{name}\"] secret_access_key_file: {message}"),
            );
        }
        for (key, value) in
            [("secret_access_key", &section.secret_access_key), ("session_token", &section.session_token)]
        {
            if value.is_some() {
                secrets_in_clear.push((at(key), format!("repository {name}'s {key}")));
            }
        }
    }
    let Some((span, what)) = secrets_in_clear.first() else { return };
    let path = mistakes.path;
    let mode = std::fs::metadata(path).map_or(0, |m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    if mode & 0o077 != 0 {
        let message = format!(
            "holds secrets but others can read it ({what}); run chmod 600 {}, or move the secret to a file \
             (password_file, secret_access_key_file)",
            path.display()
        );
        mistakes.add(span.clone(), &message);
    }
}

/// `crmvault config check` and `config show`.
pub fn run(action: &ConfigAction, settings: &Settings, json: bool) -> Result<u8> {
    match action {
        ConfigAction::Check => Ok(check(settings, json)),
        ConfigAction::Show => show(settings, json),
    }
}

fn check(settings: &Settings, json: bool) -> u8 {
    let mistakes: &[String] = settings.state.as_ref().err().map_or(&[], Vec::as_slice);
    let files: Vec<String> = match &settings.state {
        Ok(loaded) => loaded.files.iter().map(|f| f.display().to_string()).collect(),
        Err(_) => settings.file.iter().map(|f| f.display().to_string()).collect(),
    };
    if json {
        super::output::print_json_ok(&serde_json::json!({ "files": files, "mistakes": mistakes }), mistakes.is_empty());
    } else if mistakes.is_empty() {
        match &settings.state {
            Ok(loaded) if settings.file.is_some() => {
                let profiles =
                    if loaded.profile_names.is_empty() { "none".into() } else { loaded.profile_names.join(", ") };
                println!("{}: valid (profiles: {profiles})", files.join(", "));
            }
            _ => {
                let looked: Vec<String> = settings.looked_at.iter().map(|p| p.display().to_string()).collect();
                println!("no config file ({} not found); nothing to check", looked.join(", "));
            }
        }
    } else {
        for mistake in mistakes {
            println!("{mistake}");
        }
        let plural = if mistakes.len() == 1 { "" } else { "s" };
        println!("{} mistake{plural}", mistakes.len());
    }
    u8::from(!mistakes.is_empty())
}

/// The environment variables that stand for a profile key, as clap reads them.
const VARIABLES: [(&str, &str); 6] = [
    ("CRMVAULT_DB", "db"),
    ("CRMVAULT_RESTORE_DB", "restore_db"),
    ("CRMVAULT_SCRATCH_DB", "scratch_db"),
    ("CRMVAULT_REPO", "repo"),
    ("CRMVAULT_FINGERPRINT", "fingerprint"),
    ("CRMVAULT_PG_DUMP", "pg_dump"),
];

/// The profile with what the environment sets over it, and which keys that was.
fn with_environment(mut profile: Profile) -> (Profile, Vec<String>) {
    let mut overridden = Vec::new();
    for (variable, key) in VARIABLES {
        let Some(value) = std::env::var(variable).ok().filter(|v| !v.is_empty()) else { continue };
        match key {
            "db" => profile.db = Some(value),
            "restore_db" => profile.restore_db = Some(value),
            "scratch_db" => profile.scratch_db = Some(value),
            "repo" => profile.repo = Some(vec![value]),
            "fingerprint" => profile.fingerprint = Some(value),
            _ => profile.pg_dump = Some(value.into()),
        }
        overridden.push(format!("{key} ({variable})"));
    }
    (profile, overridden)
}

/// Where a command would find the database password, first found first (see
/// [`Settings::database`]), without reading it.
fn password_source(profile: &Profile) -> String {
    if std::env::var_os("PGPASSWORD").is_some() {
        return "PGPASSWORD".into();
    }
    if let Some(path) = &profile.password_file {
        return format!("password_file {}", path.display());
    }
    if let Some(directory) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let credential = Path::new(&directory).join("db-password");
        if credential.exists() {
            return format!("systemd credential {}", credential.display());
        }
    }
    "the URL, else libpq's password file (PGPASSFILE or ~/.pgpass), if any".into()
}

fn show(settings: &Settings, json: bool) -> Result<u8> {
    let loaded = settings.loaded()?;
    let sections: BTreeMap<&String, RepositorySection> =
        loaded.sections.iter().map(|(name, section)| (name, section.masked())).collect();
    let files: Vec<String> = loaded.files.iter().map(|f| f.display().to_string()).collect();
    let Some(profile_name) = &loaded.profile_name else {
        return show_without_profile(loaded, &files, &sections, json);
    };
    let (mut profile, overridden) = with_environment(loaded.profile.clone());
    let password = password_source(&profile);
    for url in [&mut profile.db, &mut profile.restore_db, &mut profile.scratch_db].into_iter().flatten() {
        *url = crmvault::postgres::redact(url);
    }
    if json {
        super::output::print_json(&serde_json::json!({
            "files": files,
            "profile": profile_name,
            "profiles": loaded.profile_names,
            "settings": profile,
            "from_environment": overridden,
            "database_password_from": password,
            "repository": sections,
        }));
        return Ok(0);
    }
    let mut text = String::new();
    let _ = writeln!(text, "# files: {}", if files.is_empty() { "none".into() } else { files.join(", ") });
    if !overridden.is_empty() {
        let _ = writeln!(text, "# from the environment: {}", overridden.join(", "));
    }
    let _ = writeln!(text, "# database password from: {password}");
    let _ = writeln!(text, "[profile.{}]", toml_key(profile_name));
    text.push_str(&toml::to_string(&profile)?);
    text.push_str(&repository_sections(&sections)?);
    print!("{text}");
    Ok(0)
}

/// `config show` without `--profile`: which profiles there are to name, and the repository
/// sections, which every command reads.
fn show_without_profile(
    loaded: &Loaded,
    files: &[String],
    sections: &BTreeMap<&String, RepositorySection>,
    json: bool,
) -> Result<u8> {
    if json {
        super::output::print_json(&serde_json::json!({
            "files": files,
            "profile": null,
            "profiles": loaded.profile_names,
            "repository": sections,
        }));
        return Ok(0);
    }
    let profiles = if loaded.profile_names.is_empty() { "none".into() } else { loaded.profile_names.join(", ") };
    let mut text = String::new();
    let _ = writeln!(text, "# files: {}", if files.is_empty() { "none".into() } else { files.join(", ") });
    let _ = writeln!(text, "# profiles: {profiles}; name one with --profile NAME to see its settings");
    if sections.is_empty() {
        let _ = writeln!(text, "# no [repository.\"…\"] sections");
    }
    text.push_str(&repository_sections(sections)?);
    print!("{text}");
    Ok(0)
}

/// A table name as TOML writes it: bare when it can be, else quoted.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { name.to_string() } else { toml::Value::String(name.to_string()).to_string() }
}

/// The `[repository."…"]` sections as TOML, secrets already masked.
fn repository_sections(sections: &BTreeMap<&String, RepositorySection>) -> Result<String> {
    let mut text = String::new();
    for (name, section) in sections {
        let _ = writeln!(text, "\n[repository.{}]", toml::Value::String((*name).clone()));
        text.push_str(&toml::to_string(section)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mistakes_in(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("crmvault.toml");
        std::fs::write(&path, text).expect("write");
        match read_file(&path, FileKind::Profiles) {
            Ok(_) => Vec::new(),
            Err(found) => found.into_iter().map(|m| m.replace(&path.display().to_string(), "FILE")).collect(),
        }
    }

    #[test]
    fn a_subset_of_packs_the_profile_names_is_checked_with_the_file() {
        let found = mistakes_in("[profile.check]\nrepo = [\"/srv/a\"]\nread_data_subset = \"7/5\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("FILE:3:1: [profile.check] read_data_subset: \"7/5\" is not a subset of the packs"),
            "{found:?}"
        );
        for good in ["auto", "3/7", "2.5%"] {
            let text = format!("[profile.check]\nrepo = [\"/srv/a\"]\nread_data_subset = \"{good}\"\n");
            assert!(mistakes_in(&text).is_empty(), "{good}");
        }
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_named_with_its_line() {
        let found = mistakes_in("[profile.nightly]\nrepo = [\"/srv/a\"]\ntabels = [\"crm.*\"]\njobs = \"four\"\n");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("FILE:3:1: [profile.nightly] unknown field `tabels`"), "{found:?}");
        assert!(found[1].starts_with("FILE:4:8: [profile.nightly] invalid type"), "{found:?}");
    }

    #[test]
    fn every_mistake_is_found_in_one_pass_even_beside_a_wrong_type() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("crmvault.toml");
        let text = "[profile.a]\njobs = \"four\"\n[profile.b]\njobs = 0\ndb = \"postgres://u:hunter2@h/d\"\n\
                    password_file = \"missing\"\n";
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
        let found = read_file(&path, FileKind::Profiles).expect_err("mistakes");
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].contains(":2:8: [profile.a] invalid type"), "{found:?}");
        assert!(found[1].contains(":4:1: [profile.b] jobs: must be at least 1"), "{found:?}");
        assert!(found[2].contains(":5:1: holds secrets but others can read it"), "{found:?}");
        assert!(
            found[3].contains(":6:1: [profile.b] password_file:") && found[3].ends_with("does not exist"),
            "{found:?}"
        );
        assert!(!found.iter().any(|m| m.contains("hunter2")), "{found:?}");
    }

    #[test]
    fn a_missing_bracket_is_one_mistake_on_its_line() {
        let found = mistakes_in("# nightly\n[profile.nightly\njobs = 2\nrepo = [\"/a\"]\n[profile.weekly]\njobs = 1\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("FILE:2:") && found[0].contains("syntax error"), "{found:?}");
    }

    #[test]
    fn jobs_on_the_command_line_must_be_at_least_one() {
        assert_eq!(parse_jobs("3"), Ok(3));
        assert_eq!(parse_jobs("0"), Err("must be at least 1".to_string()));
        assert!(parse_jobs("-1").is_err());
    }

    #[test]
    fn a_syntax_error_names_its_line_and_column() {
        let found = mistakes_in("[profile.nightly]\njobs = = 2\n");
        assert!(found.first().is_some_and(|m| m.starts_with("FILE:2:")), "{found:?}");
    }

    #[test]
    fn a_valid_file_has_no_mistakes() {
        let found =
            mistakes_in("[profile.nightly]\ndb = \"postgres://backup@db/crm\"\nrepo = [\"/srv/a\"]\njobs = 4\n");
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_bad_table_pattern_and_zero_jobs_are_named() {
        let found = mistakes_in("[profile.nightly]\ntable = [\"crm.[\"]\njobs = 0\n");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("FILE:2:1: [profile.nightly] table: bad pattern"), "{found:?}");
        assert!(found[1].starts_with("FILE:3:1: [profile.nightly] jobs: must be at least 1"), "{found:?}");
    }

    #[test]
    fn file_names_are_relative_to_the_config_file() {
        let mut file: ConfigFile =
            toml::from_str("[profile.p]\nidentity = \"keys/admin.key\"\npassword_file = \"/abs/pw\"\n")
                .expect("parses");
        resolve_paths(&mut file, Path::new("/etc/crmvault"));
        let profile = &file.profile["p"];
        assert_eq!(profile.identity.as_deref(), Some(Path::new("/etc/crmvault/keys/admin.key")));
        assert_eq!(profile.password_file.as_deref(), Some(Path::new("/abs/pw")));
    }

    #[test]
    fn position_counts_lines_and_columns_from_one() {
        assert_eq!(position("ab\ncd", 4), (2, 2));
        assert_eq!(position("ab", 0), (1, 1));
    }
}
