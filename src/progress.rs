//! How long operations say how far they are. The library reports; the CLI draws (with
//! indicatif, on a terminal) or stays silent (`--json`, cron). A report is a few atomic
//! additions at most per chunk, so the engines call it freely from any thread.

use std::sync::Arc;

/// What a backup, restore, verify or re-encryption reports as it goes.
pub trait Progress: Send + Sync {
    /// A new phase begins (`"reading"`, `"loading"`, `"checking"`, …), with the amount of work
    /// it has in `unit`s when that is known ahead.
    fn phase(&self, name: &str, unit: Unit, total: Option<u64>) {
        let _ = (name, unit, total);
    }

    /// `amount` more units of the current phase are done.
    fn advance(&self, amount: u64);

    /// Whether anyone sees this report: an engine skips the work it would do only to size
    /// it (a backup reading the previous snapshot to know how many bytes to expect).
    fn is_shown(&self) -> bool {
        true
    }

    /// The current phase works through `total` named items (tables) besides its units.
    fn items(&self, total: u64) {
        let _ = total;
    }

    /// One item of the current phase (a table, by its `schema.name`) is done.
    fn item_done(&self, name: &str) {
        let _ = name;
    }
}

/// What a phase counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of table data (read from the database, or loaded into it).
    Bytes,
    /// Objects in storage.
    Objects,
    /// Snapshots.
    Snapshots,
    /// Checks (a drill's constraints and indexes).
    Checks,
}

/// Reports nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn advance(&self, _amount: u64) {}

    fn is_shown(&self) -> bool {
        false
    }
}

/// A progress report shared by the tasks and threads of one operation.
pub type Shared = Arc<dyn Progress>;

/// A report that goes nowhere, for callers that want none.
pub fn silent() -> Shared {
    Arc::new(Silent)
}
