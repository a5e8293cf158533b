//! `forget`: remove the snapshots a retention policy does not keep ([`crate::retention`]),
//! deliberately and on the record.
//!
//! Per target: every snapshot is read and opened with the keyring (the writer key is enough:
//! manifests name their database and tags); the policy is applied to each database's snapshots
//! apart; then a forget record (`forgotten/<hash>`, authenticated with the repository's keys)
//! lists what goes, and only then are those snapshot objects deleted. Killed in between, the
//! record names snapshots still present, which the next `forget` removes: the record explains
//! a gap, it never hides a snapshot. What the removed snapshots alone used stays until `prune`.
//!
//! A snapshot that does not open (damaged, forged, written with a key this keyring lacks) is
//! never removed by a policy, only named: what cannot be read cannot be judged.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{ForgetRecord, ForgottenSnapshot, Keyring, Repository, SnapshotFilter, SnapshotId};
use crate::repo_set::RepoSet;
use crate::retention::{self, Candidate, Policy};

/// What to forget.
#[derive(Debug, Clone)]
pub struct ForgetOptions<Tz: TimeZone> {
    /// The rules: what to keep.
    pub policy: Policy,
    /// Only snapshots this filter lets through are considered (the rest are left alone).
    pub filter: SnapshotFilter,
    /// Say what would go, change nothing.
    pub dry_run: bool,
    /// The time zone days, weeks, months and years are reckoned in.
    pub zone: Tz,
    /// When this runs (the record's time).
    pub now: DateTime<Utc>,
    /// Then prune each target, under the same lock (in a dry run: say what that would free).
    pub prune: bool,
    /// Let the policy remove snapshots the data-loss alarm flagged, and the last unflagged
    /// one before each (kept otherwise: [`retention::keep_flagged`]).
    pub forget_flagged: bool,
    /// Instead of a policy, the snapshots to remove: ids, or at least 4 leading hex digits of
    /// one, each naming one snapshot across every target (a snapshot whose packs are lost,
    /// which keeps prune from running: docs/OPERATIONS.md, *Repairing damaged packs*). The
    /// rest are kept ("not named"); the data-loss alarm's evidence and the snapshot before a
    /// place forget cannot see are refused as a policy would keep them, unless
    /// `forget_flagged`.
    pub named: Vec<String>,
}

impl<Tz: TimeZone> ForgetOptions<Tz> {
    /// What the forget record and the output say was applied: the policy, or that snapshots
    /// were named.
    pub fn rule(&self) -> String {
        if self.named.is_empty() { self.policy.without_tag_names() } else { NAMED.into() }
    }
}

/// The rule of a forget that named its snapshots.
const NAMED: &str = "snapshots named by id";

/// The reason a snapshot a forget by name did not name is kept.
const NOT_NAMED: &str = "not named";

/// Refuses a selector that cannot name a snapshot: at least 4 hex digits of an id.
pub fn check_selector(selector: &str) -> Result<()> {
    if selector.len() < 4 || !selector.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::SnapshotNotFound(format!(
            "{selector:?} is not a snapshot id (forget names snapshots by at least 4 hex digits of their id)"
        )));
    }
    Ok(())
}

/// What `forget` did on every target.
#[derive(Debug)]
pub struct ForgetReport {
    /// Per target that was forgotten on: its plan, carried out (unless a dry run).
    pub plans: Vec<TargetPlan>,
    /// Per such target, what prune did after (with `prune`).
    pub pruned: Vec<crate::prune::PruneReport>,
    /// The targets that failed (location, why): left out, or failed along the way.
    pub failed: Vec<(String, String)>,
    /// With `prune`: the targets whose forget was done but whose prune then failed (location,
    /// why).
    pub prune_failed: Vec<(String, String)>,
}

/// Forgets on every copy in `targets`, which the caller has locked (exclusive, or shared for a
/// dry run). Every copy's plan is made first: a policy refused on one changes nothing on any.
/// Then, copy after copy, the plan is carried out and, with `options.prune`, the copy pruned.
/// What fails on one copy of several is that copy's failure ([`crate::repo_set::EachCopy`]).
pub async fn run<Tz: TimeZone>(
    targets: &RepoSet,
    keyring: &Keyring,
    options: &ForgetOptions<Tz>,
    locks: &crate::lock::Locks,
    progress: &dyn Progress,
) -> Result<ForgetReport> {
    // Each id named is one snapshot on every target: a short one that matches two, here or
    // across targets, is refused, so that the same snapshot is removed everywhere.
    let resolved = ForgetOptions { named: resolve_named(targets, &options.named).await?, ..options.clone() };
    let options = &resolved;
    let mut each = targets.each_copy();
    let mut planned = Vec::new();
    for repository in targets.repositories() {
        match plan(repository, keyring, options).await {
            Ok(plan) => planned.push((repository, plan)),
            Err(error @ (Error::Retention(_) | Error::SnapshotNotFound(_))) => return Err(error),
            Err(error) => each.take(repository.target.location(), Err(error))?,
        }
    }
    let (mut pruned, mut prune_failed) = (Vec::new(), Vec::new());
    for (repository, mut plan) in planned {
        let outcome = async {
            if !options.dry_run {
                // Still ours: what the plan read may have changed under a lock taken over.
                locks.confirm(repository.target.location()).await?;
                apply(repository, keyring, &mut plan, options.now, &options.rule()).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if outcome.is_ok() && options.prune {
            // What was forgotten stays reported (and audited) when the prune after it fails.
            let prune = async {
                let prune_options = if options.dry_run {
                    // What the plan removes counts as gone already.
                    crate::prune::PruneOptions {
                        mode: crate::prune::PruneMode::DryRun,
                        as_if_gone: plan.removed().map(|d| d.id.clone()).collect(),
                    }
                } else {
                    crate::prune::PruneOptions::new(crate::prune::PruneMode::Delete)
                };
                crate::prune::run(repository, &prune_options, (Some(keyring), locks), progress).await
            };
            match prune.await {
                Ok(report) => pruned.push(report),
                Err(error) => prune_failed.push((repository.target.location().to_string(), error.to_string())),
            }
        }
        each.take(repository.target.location(), outcome.map(|()| plan))?;
    }
    let (plans, failed) = each.finish()?;
    Ok(ForgetReport { plans, pruned, failed, prune_failed })
}

/// One snapshot and what the policy decided.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    /// Snapshot id.
    pub id: SnapshotId,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Its database.
    pub database: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// The rules that keep it; empty when it is removed.
    pub reasons: Vec<String>,
    /// Whether its backup raised the data-loss alarm.
    pub flagged: bool,
    #[serde(skip)]
    sequence: u64,
    #[serde(skip)]
    parent: Option<SnapshotId>,
}

impl Decision {
    /// Whether it is kept.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// What `forget` did (or would do) on one target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetPlan {
    /// The target.
    pub location: String,
    /// Every snapshot the filter let through, newest first per database.
    pub snapshots: Vec<Decision>,
    /// Snapshots that did not open, left alone: id and why.
    pub unreadable: Vec<(String, String)>,
    /// Where in the chain forget could not see a snapshot (one that does not open, or one
    /// deleted without a record), when it kept the snapshot before it for that: said, and the
    /// exit code is 3, since `verify` has a problem to name there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blind: Option<String>,
    /// The record written (absent in a dry run or when nothing is removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Snapshots whose delete the storage refused (Object Lock, no delete right): id and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<(String, String)>,
}

impl TargetPlan {
    /// The snapshots removed (or to remove).
    pub fn removed(&self) -> impl Iterator<Item = &Decision> {
        self.snapshots.iter().filter(|d| !d.keep())
    }

    /// The snapshots kept.
    pub fn kept(&self) -> impl Iterator<Item = &Decision> {
        self.snapshots.iter().filter(|d| d.keep())
    }
}

/// Decides, on one target, what `options.policy` keeps (or, with `options.named`, the full ids
/// [`resolve_named`] gave, which are removed); refuses a plan that would remove every snapshot
/// of a database.
async fn plan<Tz: TimeZone>(
    repository: &Repository,
    keyring: &Keyring,
    options: &ForgetOptions<Tz>,
) -> Result<TargetPlan> {
    if options.named.is_empty() {
        retention::check(&options.policy)?;
    }
    let mut groups: BTreeMap<String, Vec<Decision>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut tally = crate::repo::FilterTally::default();
    // Each opened in its turn: a year of parsed manifests at once is many times their size.
    for snapshot in repository.snapshots(crate::repo::authentic(keyring)).await? {
        let (sealed, manifest) = match snapshot {
            Ok((sealed, proven)) => match proven.and_then(|()| sealed.open(keyring)) {
                Ok(manifest) => (sealed, manifest),
                Err(error) => {
                    unreadable.push((sealed.id.to_string(), error.to_string()));
                    continue;
                }
            },
            Err((name, error)) => {
                unreadable.push((name, error.to_string()));
                continue;
            }
        };
        if !tally.see(&options.filter, &manifest) {
            continue;
        }
        groups.entry(manifest.database.clone()).or_default().push(Decision {
            id: sealed.id.clone(),
            time: sealed.header.time,
            database: manifest.database,
            tags: manifest.tags,
            reasons: Vec::new(),
            flagged: !manifest.alarms.is_empty(),
            sequence: sealed.header.sequence,
            parent: sealed.header.parent.clone(),
        });
    }
    tally.check(&options.filter)?;
    let named = named_here(&options.named, &groups, &unreadable, repository)?;
    let blind = if options.forget_flagged {
        Vec::new()
    } else {
        blind_spots(repository, keyring, &groups, &unreadable).await?
    };
    let mut snapshots = Vec::new();
    for (database, mut group) in groups {
        let candidates: Vec<Candidate> =
            group.iter().map(|d| Candidate { time: d.time, tags: d.tags.clone(), flagged: d.flagged }).collect();
        let mut verdicts = if options.named.is_empty() {
            retention::plan(&candidates, &options.policy, &options.zone)
        } else {
            let verdict = |d: &Decision| retention::Verdict {
                reasons: if named.contains(&d.id) { Vec::new() } else { vec![NOT_NAMED.into()] },
            };
            group.iter().map(verdict).collect()
        };
        if !options.forget_flagged {
            retention::keep_flagged(&candidates, &mut verdicts);
        }
        // What forget cannot see may be a flagged snapshot: the newest before each such place
        // stays (each: one place must not hide another).
        for (sequence, why) in &blind {
            let before = (0..group.len()).filter(|&i| group[i].sequence < *sequence).max_by_key(|&i| group[i].sequence);
            if let Some(index) = before {
                let reason = format!("the last before {why}, which may be flagged by the data-loss alarm");
                verdicts[index].reasons.push(reason);
            }
        }
        for (decision, verdict) in group.iter_mut().zip(verdicts) {
            decision.reasons = verdict.reasons;
        }
        // A snapshot named but kept by the rules above is refused, not quietly kept.
        if let Some(kept) = group.iter().find(|d| named.contains(&d.id) && d.keep()) {
            return Err(Error::Retention(format!(
                "snapshot {} on {} is kept as {}: forgetting it is an admin's decision (--forget-flagged \
                 --identity)",
                kept.id,
                repository.target.location(),
                kept.reasons.join(", ")
            )));
        }
        if !group.iter().any(Decision::keep) {
            return Err(Error::Retention(format!(
                "{} would remove all {} snapshots of database {database} on {}",
                options.rule(),
                group.len(),
                repository.target.location()
            )));
        }
        group.sort_by_key(|d| std::cmp::Reverse(d.time));
        snapshots.extend(group);
    }
    Ok(TargetPlan {
        location: repository.target.location().to_string(),
        snapshots,
        unreadable,
        blind: (!blind.is_empty()).then(|| blind.into_iter().map(|(_, why)| why).collect::<Vec<_>>().join("; ")),
        record: None,
        refused: vec![],
    })
}

/// The full id of each snapshot `selectors` name, from every target's listing: one snapshot
/// for each, wherever it is (a short id matching two, on one target or across two, is refused:
/// each target resolving it alone could remove a different snapshot on each).
async fn resolve_named(targets: &RepoSet, selectors: &[String]) -> Result<Vec<String>> {
    if selectors.is_empty() {
        return Ok(Vec::new());
    }
    let (mut ids, mut unlisted) = (std::collections::BTreeSet::new(), Vec::new());
    for repository in targets.repositories() {
        match repository.snapshot_ids().await {
            Ok(listed) => ids.extend(listed.into_iter().map(|id| id.to_string())),
            Err(error) => unlisted.push(format!("{}: {error}", repository.target.location())),
        }
    }
    let mut named = Vec::new();
    for selector in selectors {
        check_selector(selector)?;
        let selector = selector.to_ascii_lowercase();
        let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(&selector)).collect();
        match matches.as_slice() {
            [one] => named.push((*one).clone()),
            [] => {
                let places: Vec<&str> = targets.repositories().iter().map(|r| r.target.location()).collect();
                let unread =
                    if unlisted.is_empty() { String::new() } else { format!(" (not listed: {})", unlisted.join("; ")) };
                return Err(Error::SnapshotNotFound(format!(
                    "no snapshot {selector} in {}{unread}",
                    places.join(", ")
                )));
            }
            _ => {
                return Err(Error::SnapshotNotFound(format!(
                    "{selector} matches {} snapshots; give more digits",
                    matches.len()
                )));
            }
        }
    }
    Ok(named)
}

/// The snapshots of this target that the full ids `named` name (a target may lack one that
/// another holds), among those that open: one that does not open cannot be forgotten by name,
/// since its header (time, sequence, predecessor) cannot be believed for the record.
fn named_here(
    named: &[String],
    groups: &BTreeMap<String, Vec<Decision>>,
    unreadable: &[(String, String)],
    repository: &Repository,
) -> Result<Vec<SnapshotId>> {
    let mut here = Vec::new();
    for id in named {
        if let Some(decision) = groups.values().flatten().find(|d| *d.id.as_str() == **id) {
            here.push(decision.id.clone());
        } else if let Some((_, error)) = unreadable.iter().find(|(name, _)| name == id) {
            return Err(Error::SnapshotNotFound(format!(
                "snapshot {id} on {} does not open ({error}): forget removes only snapshots it can read",
                repository.target.location()
            )));
        }
    }
    Ok(here)
}

/// Every place in the chain where forget cannot see a snapshot (the sequence it stands below,
/// and what is there): one that does not open (damaged, or forged), or one deleted without a
/// record (its successor names it, no forget or missed record explains it). Each may have been
/// flagged by the data-loss alarm, so the snapshot before it may be the last good data before a
/// loss; the caller keeps it. Each is said in a warning: `verify` names the snapshot.
async fn blind_spots(
    repository: &Repository,
    keyring: &Keyring,
    groups: &BTreeMap<String, Vec<Decision>>,
    unreadable: &[(String, String)],
) -> Result<Vec<(u64, String)>> {
    let decisions: Vec<&Decision> = groups.values().flatten().collect();
    let listed = |id: &SnapshotId| {
        decisions.iter().any(|d| d.id == *id) || unreadable.iter().any(|(name, _)| **name == *id.as_str())
    };
    let mut blind = Vec::new();
    for (name, _) in unreadable {
        // Where it stands is what its successor says (its own header is not believed); with
        // none, it may be the newest of all.
        let successor = decisions.iter().find(|d| d.parent.as_ref().is_some_and(|p| *p.as_str() == **name));
        blind.push((successor.map_or(u64::MAX, |d| d.sequence), format!("snapshot {name}, which does not open")));
    }
    let forgotten = repository.forgotten(Some(keyring)).await?;
    // The oldest snapshot here may name a predecessor this target never held (a target added
    // with `init --copy-from`): verify's rule too.
    let oldest = decisions.iter().map(|d| d.sequence).min();
    for decision in decisions.iter().filter(|d| Some(d.sequence) != oldest) {
        if let Some(parent) = &decision.parent
            && let Some(gap) = forgotten.gap_below(parent, listed)
        {
            blind.push((decision.sequence, format!("snapshot {gap}, deleted without being forgotten")));
        }
    }
    for (_, why) in &blind {
        tracing::warn!(
            "{}: forget cannot see {why}; the snapshot before it is kept (run verify)",
            repository.target.location()
        );
    }
    Ok(blind)
}

/// Carries out a plan on its target: the record first, then the deletes. A delete the storage
/// refuses (Object Lock, a bucket without delete rights) is noted in the plan and skipped.
async fn apply(
    repository: &Repository,
    keyring: &Keyring,
    plan: &mut TargetPlan,
    now: DateTime<Utc>,
    rule: &str,
) -> Result<()> {
    let removed: Vec<ForgottenSnapshot> = plan
        .removed()
        .map(|d| ForgottenSnapshot { id: d.id.clone(), sequence: d.sequence, time: d.time, parent: d.parent.clone() })
        .collect();
    if removed.is_empty() {
        return Ok(());
    }
    let record = ForgetRecord {
        time: now,
        kind: crate::repo::RecordKind::Forgotten,
        target: None,
        config_hash: repository.config_hash.clone(),
        policy: rule.to_string(),
        snapshots: removed.clone(),
    };
    plan.record = Some(repository.put_forget_record(&record, keyring).await?.0);
    for mark in removed {
        match repository.target.delete(&crate::repo::snapshot_key(&mark.id)).await {
            Ok(()) => {}
            Err(error @ Error::DeleteRefused { .. }) => plan.refused.push((mark.id.to_string(), error.to_string())),
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
