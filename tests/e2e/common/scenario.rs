//! The setup most tests start with, said once: a database loaded with fixtures, a workspace
//! whose admin ran `init` on a local repository, and often a first backup.
//!
//! ```ignore
//! let Ready { source, work, repo, report } = Scenario::new("clean").crm().init("repo").backup();
//! ```

use std::path::PathBuf;

use super::{TestDb, Workspace, fixture};

/// What goes into the source database, in order.
enum Step {
    /// A SQL file (relative to the crate root) with psql variables.
    File { path: PathBuf, variables: Vec<String> },
    /// SQL run through psql.
    Sql(String),
    /// `TestDb::add_filler`.
    Filler,
}

/// A database to create and fill; `init` makes it, the workspace and the repository.
#[must_use = "a scenario does nothing until init"]
pub struct Scenario {
    label: String,
    steps: Vec<Step>,
}

impl Scenario {
    /// A scenario whose database names start with `label`.
    pub fn new(label: &str) -> Scenario {
        Scenario { label: label.to_string(), steps: Vec::new() }
    }

    /// Loads a SQL file, named relative to the crate root (`tests/fixtures/everything.sql`).
    pub fn fixture(self, path: &str) -> Scenario {
        self.fixture_with(path, &[])
    }

    /// Loads a SQL file with psql variables (`scale=0.1`).
    pub fn fixture_with(mut self, path: &str, variables: &[&str]) -> Scenario {
        let variables = variables.iter().map(ToString::to_string).collect();
        self.steps.push(Step::File { path: fixture(path), variables });
        self
    }

    /// Loads the example CRM (`examples/crm.sql`), what most tests back up.
    pub fn crm(self) -> Scenario {
        self.fixture("examples/crm.sql")
    }

    /// Adds `public.filler`, enough rows for a backup or restore to be interrupted.
    pub fn filler(mut self) -> Scenario {
        self.steps.push(Step::Filler);
        self
    }

    /// Runs SQL in the database.
    pub fn sql(mut self, sql: &str) -> Scenario {
        self.steps.push(Step::Sql(sql.to_string()));
        self
    }

    /// Creates and fills the database, then a workspace with a fresh admin key `admin.key`
    /// and a repository in its folder `repo_name`, made by `init`.
    pub fn init(self, repo_name: &str) -> Ready {
        let source = TestDb::create(&self.label);
        for step in self.steps {
            match step {
                Step::File { path, variables } => {
                    let variables: Vec<&str> = variables.iter().map(String::as_str).collect();
                    source.load_file_with(&path, &variables);
                }
                Step::Sql(sql) => {
                    source.sql(&sql);
                }
                Step::Filler => source.add_filler(),
            }
        }
        let work = Workspace::new();
        let repo = work.init_repo(repo_name);
        Ready { source, work, repo, report: serde_json::Value::Null }
    }
}

/// A filled database and an initialised repository, ready for a test.
pub struct Ready {
    /// The database backed up.
    pub source: TestDb,
    /// The admin's workspace: its config folder holds the pin and the writer key.
    pub work: Workspace,
    /// The repository's path.
    pub repo: String,
    /// The last backup's `--json` report (`Null` before `backup`).
    pub report: serde_json::Value,
}

impl Ready {
    /// Takes a backup of the database into the repository; its report goes to `report`.
    pub fn backup(mut self) -> Ready {
        self.report = self.work.backup(&self.source, &self.repo);
        self
    }
}
