//! Which packs a database's newest snapshot hardly uses, remembered on the backup host, so that
//! the next backup stores those chunks again beside its own (history-aware rewriting, after Fu
//! et al., FAST 2014).
//!
//! Each night stores each table's changes in a small pack of its own, and later nights replace
//! most of what it holds: after a year the newest snapshot takes its chunks from ~1,700 packs,
//! most of them a few live chunks among dead ones, and a restore reads a piece, an age header
//! and a dictionary for each. A backup sees which packs its snapshot uses and how much of each
//! (the index says where every chunk lies and how long it is; no key beyond the writer's is
//! needed), and a pack used for less than [`SPARSE_BELOW`] of what it holds is *sparse*. The next
//! backup of the same database stores the chunks it takes from the sparsest of them again, up to
//! a budget (a share of the snapshot's bytes, `backup --rewrite-budget`), in its own new packs,
//! in stream order; from then on backups reuse the new copies and never the packs rewritten from
//! (*avoided*), so the snapshots after it no longer list them. Older snapshots keep them until
//! `forget` and `prune` let them go.
//!
//! The file changes what a backup uploads, never what a snapshot holds: a chunk stored again is
//! the same chunk under the same id, proven by it as any other. It lives beside the
//! repository's pin (`repos/<id>/sparse.json`, 0600), names the fingerprint it belongs to, and is
//! rewritten atomically; a damaged or missing one is read as empty (nothing is rewritten that
//! night, and the packs avoided before are reused again: a copy of a chunk in two packs is
//! read from either).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::trust::Fingerprint;

/// A pack the snapshot uses for less than this share (percent) of the chunk bytes it holds is
/// sparse.
pub const SPARSE_BELOW_PERCENT: u64 = 50;

/// The default budget of `backup --rewrite-budget`: chunk bytes stored again per backup, in
/// percent of the previous snapshot's bytes. None: it costs storage (a third more upload and
/// repository at a year of the history benchmark's nights) for a restore that reads a third of
/// the packs with 0.72× the client's CPU, which this machine's local folders did not turn into
/// less time (BENCHMARKS.md, session 39); where each pack is a request (a bucket) it may.
pub const DEFAULT_BUDGET_PERCENT: f64 = 0.0;

/// A pack a snapshot used little of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparsePack {
    /// The pack's id.
    pub pack: String,
    /// Bytes of the snapshot's chunks in it (each time the snapshot names one).
    pub used: u64,
    /// Bytes of the chunks it holds.
    pub holds: u64,
}

impl SparsePack {
    /// Whether the snapshot used less than [`SPARSE_BELOW_PERCENT`] of it.
    pub fn is_sparse(&self) -> bool {
        u128::from(self.used) * 100 < u128::from(self.holds) * u128::from(SPARSE_BELOW_PERCENT)
    }

    /// Orders packs by the share of them used, the least used first.
    fn sparser(&self, other: &SparsePack) -> std::cmp::Ordering {
        (u128::from(self.used) * u128::from(other.holds)).cmp(&(u128::from(other.used) * u128::from(self.holds)))
    }
}

/// What a backup stores again and what it does not reuse.
#[derive(Debug, Clone, Default)]
pub struct RewritePlan {
    /// Packs whose chunks this backup stores again, by id.
    pub rewrite: HashSet<String>,
    /// Bytes of chunks stored again at most: the budget (the chunks of a pack to rewrite past
    /// it are reused from the pack, which then stays listed and is not avoided).
    pub budget: u64,
    /// Packs earlier backups stored the used chunks of again: their chunks are not reused.
    pub avoid: HashSet<String>,
    /// Whether the backup counts the sparse packs of its snapshot for the next one (rewriting
    /// is on, or was: the packs avoided are still to be kept track of).
    pub counting: bool,
}

/// What the last backup of one database left for the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// Packs stored again by earlier backups, still present.
    pub avoid: BTreeSet<String>,
    /// The sparse packs its snapshot used.
    pub sparse: Vec<SparsePack>,
    /// The snapshot's bytes (table data, large objects and schema read).
    pub bytes: u64,
}

impl Remembered {
    /// The plan of the next backup: the sparsest packs whose used bytes fit within `percent` of
    /// the last snapshot's bytes (a pack is rewritten whole or not at all, so that the new
    /// snapshot stops listing it), and the packs avoided before. The budget is also a cap on
    /// what the backup stores again: tonight's snapshot may take more from those packs than
    /// the last one did (a full backup after a `--table` one).
    pub fn plan(&self, percent: f64) -> RewritePlan {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a share of a byte count, rounded down; percent is 0-100"
        )]
        let budget = (self.bytes as f64 * percent.clamp(0.0, 100.0) / 100.0) as u64;
        let mut sparse: Vec<&SparsePack> = self.sparse.iter().filter(|p| p.is_sparse()).collect();
        sparse.sort_by(|a, b| a.sparser(b).then_with(|| a.pack.cmp(&b.pack)));
        let mut spent = 0u64;
        let mut rewrite = HashSet::new();
        for pack in sparse {
            if spent.saturating_add(pack.used) <= budget {
                spent += pack.used;
                rewrite.insert(pack.pack.clone());
            }
        }
        let counting = percent > 0.0 || !self.avoid.is_empty();
        RewritePlan { rewrite, budget, avoid: self.avoid.iter().cloned().collect(), counting }
    }
}

/// The file's content.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The repository it was written for (one of its generations' fingerprints).
    fingerprint: Fingerprint,
    /// By database (`host/database`).
    databases: BTreeMap<String, Remembered>,
}

/// The remembered sparse packs of one repository.
#[derive(Debug)]
pub struct SparseCache {
    path: PathBuf,
    fingerprint: Fingerprint,
}

impl SparseCache {
    /// The file of repository `repository_id` under `config_dir`, for the repository that
    /// `fingerprint` names.
    pub fn new(config_dir: &Path, repository_id: &str, fingerprint: Fingerprint) -> Self {
        SparseCache { path: config_dir.join("repos").join(repository_id).join("sparse.json"), fingerprint }
    }

    fn load_all(&self, accepts: &impl Fn(&Fingerprint) -> bool) -> BTreeMap<String, Remembered> {
        crate::trust::read_beside_pin(&self.path, |stored: &Stored| &stored.fingerprint, accepts)
            .map(|stored| stored.databases)
            .unwrap_or_default()
    }

    /// What the last backup of `database` left, or nothing when the file is missing, damaged
    /// or another repository's.
    pub fn load(&self, database: &str, accepts: impl Fn(&Fingerprint) -> bool) -> Remembered {
        self.load_all(&accepts).remove(database).unwrap_or_default()
    }

    /// Replaces what `database` left with `remembered` (mode 0600; a crash leaves the old file
    /// or the new one; other databases' entries are kept as they are on disk now). A failure
    /// is said at debug level: it costs the next backup's rewriting, nothing else.
    pub fn save(&self, database: &str, remembered: Remembered, accepts: impl Fn(&Fingerprint) -> bool) {
        // Other databases' backups on this host save theirs beside it: read and written under
        // the folder's lock, so that neither drops the other's entry.
        let _lock = self.path.parent().and_then(|folder| crate::trust::lock_folder(folder).ok());
        let mut databases = self.load_all(&accepts);
        databases.insert(database.to_string(), remembered);
        crate::trust::write_beside_pin(&self.path, &Stored { fingerprint: self.fingerprint, databases });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(name: &str, used: u64, holds: u64) -> SparsePack {
        SparsePack { pack: name.into(), used, holds }
    }

    #[test]
    fn the_sparsest_packs_are_rewritten_whole_within_the_budget() {
        let remembered = Remembered {
            avoid: BTreeSet::from(["old".to_string()]),
            sparse: vec![
                pack("half", 50, 100),      // not sparse: used for half of it
                pack("tenth", 10, 100),     // the sparsest
                pack("third", 30, 90),      // next
                pack("quarter", 250, 1000), // would pass the budget
            ],
            bytes: 5000,
        };
        // 1% of 5,000 bytes: 50.
        let plan = remembered.plan(1.0);
        assert_eq!(plan.rewrite, HashSet::from(["tenth".to_string(), "third".to_string()]));
        assert_eq!(plan.budget, 50);
        assert_eq!(plan.avoid, HashSet::from(["old".to_string()]));
        // A budget of 0 rewrites nothing and still avoids what was rewritten before.
        let none = remembered.plan(0.0);
        assert!(none.rewrite.is_empty());
        assert_eq!(none.avoid.len(), 1);
        assert!(none.counting, "packs avoided are still kept track of");
        assert!(!Remembered::default().plan(0.0).counting, "off, and never on: nothing to count");
        assert!(Remembered::default().plan(1.0).counting);
        // 10%: all three sparse ones.
        assert_eq!(remembered.plan(10.0).rewrite.len(), 3);
    }

    #[test]
    fn each_database_is_remembered_for_its_repository_only() {
        use std::os::unix::fs::PermissionsExt;
        let fingerprint = |seed: &[u8]| Fingerprint::of_config_hash(&blake3::hash(seed).to_hex()).unwrap();
        let (ours, other) = (fingerprint(b"ours"), fingerprint(b"other"));
        let dir = tempfile::tempdir().unwrap();
        let cache = SparseCache::new(dir.path(), "r1", ours);
        let is_ours = |f: &Fingerprint| *f == ours;
        assert_eq!(cache.load("h/crm", is_ours), Remembered::default());
        let crm = Remembered { avoid: BTreeSet::new(), sparse: vec![pack("p", 1, 10)], bytes: 100 };
        let erp = Remembered { avoid: BTreeSet::from(["q".to_string()]), sparse: vec![], bytes: 7 };
        cache.save("h/crm", crm.clone(), is_ours);
        cache.save("h/erp", erp.clone(), is_ours);
        let path = dir.path().join("repos/r1/sparse.json");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(cache.load("h/crm", is_ours), crm);
        assert_eq!(cache.load("h/erp", is_ours), erp);
        // Another repository under the same id is given nothing; a damaged file is empty.
        assert_eq!(cache.load("h/crm", |f: &Fingerprint| *f == other), Remembered::default());
        std::fs::write(&path, b"{").unwrap();
        assert_eq!(cache.load("h/crm", is_ours), Remembered::default());
    }
}
