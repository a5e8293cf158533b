//! Command-line interface: argument parsing, environment, output and exit codes.
//!
//! Exit codes: 0 ok, 1 error, 2 usage, 3 problems found (verify).

mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crmvault::commands::{backup, init, restore, snapshots, verify};
use crmvault::repo::{Keyring, Repository};
use crmvault::source::Database;
use crmvault::target::{OpenMode, Target};

/// Encrypted, deduplicated, verifiable backups of PostgreSQL CRM databases.
#[derive(Debug, Parser)]
#[command(name = "crmvault", version, about, propagate_version = true)]
struct Cli {
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr (-v info, -vv debug). CRMVAULT_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an admin identity file (0600) and print its public recipient.
    Keygen {
        /// Where to write the identity; never overwritten.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Create a repository readable only by the given recipients.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// An admin's public key (age1…); repeat for several admins.
        #[arg(long = "recipient", value_name = "AGE1…")]
        recipients: Vec<String>,
        /// A file of recipients, one per line.
        #[arg(long, value_name = "FILE")]
        recipients_file: Option<PathBuf>,
    },
    /// Back up a database (needs only the writer key made by init).
    Backup {
        /// Source database URL; a password is better given in PGPASSWORD.
        #[arg(long, env = "CRMVAULT_DB", hide_env_values = true)]
        db: String,
        #[command(flatten)]
        repo: RepoArgs,
        /// Tables read in parallel (each on its own connection, same snapshot).
        #[arg(long, short, default_value_t = 2)]
        jobs: usize,
        /// Only tables matching this `schema.table` glob (repeatable).
        #[arg(long = "table", value_name = "PATTERN")]
        tables: Vec<String>,
        /// Leave out tables matching this `schema.table` glob (repeatable).
        #[arg(long = "exclude-table", value_name = "PATTERN")]
        exclude_tables: Vec<String>,
        /// pg_dump binary to use for the schema (default: the newest suitable one found).
        #[arg(long, env = "CRMVAULT_PG_DUMP")]
        pg_dump: Option<PathBuf>,
    },
    /// List snapshots (tables and row counts where the writer key or --identity is at hand).
    Snapshots {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file.
        #[arg(long, short)]
        identity: Option<PathBuf>,
    },
    /// Restore a snapshot into an empty database, all or nothing.
    Restore {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file.
        #[arg(long, short)]
        identity: PathBuf,
        /// Target database URL.
        #[arg(long, env = "CRMVAULT_RESTORE_DB", hide_env_values = true)]
        db: String,
        /// Chunks fetched and decoded in parallel.
        #[arg(long, short, default_value_t = 2)]
        jobs: usize,
        /// Replace whatever the target database holds (dropped inside the restore transaction).
        #[arg(long)]
        clean: bool,
        /// `latest` or a snapshot id (a unique prefix of at least 4 digits).
        #[arg(default_value = "latest")]
        snapshot: String,
    },
    /// Check that every snapshot is complete (exit 3 when problems are found).
    Verify {
        #[command(flatten)]
        repo: RepoArgs,
        /// Admin identity file (needed for --read-data).
        #[arg(long, short)]
        identity: Option<PathBuf>,
        /// Decrypt, decompress and re-hash every chunk.
        #[arg(long, requires = "identity")]
        read_data: bool,
    },
}

#[derive(Debug, Args)]
struct RepoArgs {
    /// Repository: a folder or file:/// URL.
    #[arg(long, env = "CRMVAULT_REPO")]
    repo: String,
}

/// Runs the CLI and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("crmvault: error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("crmvault: error: {}", one_line(&error));
            ExitCode::from(1)
        }
    }
}

/// The error chain on one line, without repeating what a wrapper already said.
fn one_line(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message.replace('\n', " ")
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRMVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("crmvault={default},warn")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// `CRMVAULT_CONFIG_DIR`, default `~/.config/crmvault`.
fn config_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CRMVAULT_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("neither CRMVAULT_CONFIG_DIR nor HOME is set")?;
    Ok(Path::new(&home).join(".config/crmvault"))
}

/// Parses a database URL, taking the password from PGPASSWORD when the URL has none.
fn database(url: &str) -> Result<Database> {
    let mut database = Database::parse(url)?;
    if let Ok(password) = std::env::var("PGPASSWORD") {
        database.set_password_if_missing(&password);
    }
    Ok(database)
}

async fn open_repository(location: &str) -> Result<Repository> {
    let target = Target::open(location, OpenMode::Existing)?;
    Ok(Repository::open(target).await?)
}

/// The best keyring at hand: an admin identity if given, else this host's writer key, else none.
async fn keyring(repository: &Repository, identity: Option<&Path>) -> Result<Option<Keyring>> {
    if let Some(path) = identity {
        return Ok(Some(repository.unlock_as_admin(path).await?));
    }
    match repository.unlock_as_writer(&config_dir()?).await {
        Ok(keyring) => Ok(Some(keyring)),
        Err(crmvault::Error::NoWriterKey { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "unknown".into(), |h| h.trim().to_string())
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let json = cli.json;
    match cli.command {
        Command::Keygen { output } => {
            let identity = crmvault::crypto::generate_identity();
            crmvault::crypto::write_identity_file(&output, &identity, "crmvault admin identity: keep it offline")
                .context("writing the identity file")?;
            output::keygen(json, &identity.to_public().to_string(), &output);
        }
        Command::Init { repo, recipients, recipients_file } => {
            let mut texts = recipients;
            if let Some(file) = recipients_file {
                let content = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                texts.extend(
                    content.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
                );
            }
            let parsed = texts.iter().map(|t| crmvault::crypto::parse_recipient(t)).collect::<Result<Vec<_>, _>>()?;
            let report = init::run(&repo.repo, &parsed, &config_dir()?).await?;
            output::init(json, &report);
        }
        Command::Backup { db, repo, jobs, tables, exclude_tables, pg_dump } => {
            let started = Instant::now();
            let repository = open_repository(&repo.repo).await?;
            let keyring = repository.unlock_as_writer(&config_dir()?).await?;
            let options = backup::BackupOptions {
                database: database(&db)?,
                jobs: jobs.max(1),
                include: tables,
                exclude: exclude_tables,
                pg_dump,
                hostname: hostname(),
            };
            let progress = output::Progress::start(json, "reading");
            let report = backup::run(&repository, &keyring, &options, progress.callback())
                .await
                .with_context(|| format!("backing up {} to {}", options.database, repo.repo))?;
            progress.finish();
            output::backup(json, &report, started.elapsed());
        }
        Command::Snapshots { repo, identity } => {
            let repository = open_repository(&repo.repo).await?;
            let keyring = keyring(&repository, identity.as_deref()).await?;
            let list = snapshots::list(&repository, keyring.as_ref()).await?;
            output::snapshots(json, &list);
        }
        Command::Restore { repo, identity, db, jobs, clean, snapshot } => {
            let started = Instant::now();
            let repository = open_repository(&repo.repo).await?;
            let keyring = repository.unlock_as_admin(&identity).await?;
            let options = restore::RestoreOptions {
                database: database(&db)?,
                snapshot,
                jobs: jobs.max(1),
                existing: if clean { restore::ExistingContents::Replace } else { restore::ExistingContents::Refuse },
            };
            let report = restore::run(&repository, &keyring, &options)
                .await
                .with_context(|| format!("restoring into {} (left unchanged)", options.database))?;
            output::restore(json, &report, &options.database, started.elapsed());
        }
        Command::Verify { repo, identity, read_data } => {
            let repository = open_repository(&repo.repo).await?;
            let depth = if read_data { verify::Depth::ReadData } else { verify::Depth::Structure };
            let report = match keyring(&repository, identity.as_deref()).await {
                Ok(keyring) => verify::run(&repository, keyring.as_ref(), depth).await?,
                // A damaged keys object is a finding, not a reason to stop looking.
                Err(error) if matches!(error.downcast_ref(), Some(crmvault::Error::Corrupt { .. })) => {
                    let mut report = verify::run(&repository, None, verify::Depth::Structure).await?;
                    report.problems.push(verify::Problem {
                        target: repository.target.location().to_string(),
                        object: repository.config.keys.clone(),
                        snapshots: vec![],
                        problem: format!("cannot unlock the repository: {error}"),
                    });
                    report
                }
                Err(error) => return Err(error),
            };
            output::verify(json, &report);
            if !report.problems.is_empty() {
                return Ok(ExitCode::from(3));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
