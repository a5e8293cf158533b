//! `verify`: prove the repository is whole.
//!
//! Without a key: every snapshot parses and hashes to its name, and every object it references
//! exists with the recorded size and BLAKE3. With the writer key or an admin identity: each
//! manifest's MAC holds and every chunk it names is in its indexes. With an admin identity and
//! `--read-data`: every referenced pack decrypts and every chunk in it re-hashes to its id, and
//! every snapshot's streams give the digest and row count its manifest records: what a restore
//! would prove. With `--read-data-subset`, the same chunk-level proof for a share of the packs
//! only ([`PackSubset`]); the other packs are checked against the storage's listing (present,
//! with the recorded size), so a nightly run downloads the share, not the repository.
//!
//! Always: every snapshot's predecessor (format 7) is present, and so is the newest snapshot
//! this machine knows of, so a snapshot deleted from storage is reported, not silently missed.
//! A referenced pack that fails its hash is marked (`damaged/<id>`), so that later backups store
//! its chunks again instead of reusing it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::crypto::{ChunkId, MacKey};
use crate::error::{Error, Result};
use crate::fetch::ChunkReader;
use crate::progress::{Progress, Unit};
use crate::repo::{
    self, ChunkIndex, FilterTally, Keyring, Manifest, ObjectRef, Repository, SnapshotFilter, StreamManifest,
};
use crate::trust::SnapshotMark;

/// How deep to look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Depth {
    /// Objects exist with the right size and hash.
    Structure,
    /// Structure and MACs, and for the packs `PackSubset` selects, what `ReadData` proves of a
    /// pack: it hashes to its name, decrypts, and every chunk in it re-hashes to its id (admin
    /// identity needed). The other packs are checked against the listing (present, right
    /// size). Streams' digests and row counts need every chunk of a stream: only `ReadData`
    /// checks them.
    ReadSubset(PackSubset),
    /// Also decrypt and re-hash every chunk, and check every stream (admin identity needed).
    ReadData,
}

/// How many days `auto` spreads the packs over: a month of nights reads every pack once, and
/// each night downloads about a thirtieth of the repository (egress is what a remote bucket
/// bills for reading).
pub const AUTO_SLICES: u64 = 30;

/// Which packs a subset run reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PackSubset {
    /// Slice `number` of `of` (1 ≤ number ≤ of): the packs whose id, its first 8 bytes read
    /// as a big-endian number, is `number - 1` modulo `of`. Slices 1..=of cover every pack
    /// once, on every target alike.
    Slice {
        /// Which slice, from 1.
        number: u64,
        /// How many slices.
        of: u64,
    },
    /// About `percent` % of the packs (rounded up, at least one), drawn at random each run.
    Sample {
        /// 0 < percent ≤ 100.
        percent: f64,
    },
}

impl PackSubset {
    /// Parses `N/M`, `P%` (decimals allowed) or `auto`: the slice of `now`'s day (UTC) out of
    /// [`AUTO_SLICES`], so that consecutive days read consecutive slices.
    pub fn parse(spec: &str, now: chrono::DateTime<chrono::Utc>) -> Result<PackSubset> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "{spec:?} is not a subset of the packs: {why} (N/M with 1 ≤ N ≤ M, e.g. 3/7; P% with 0 < P ≤ 100, \
                 e.g. 2.5%; or auto)"
            ))
        };
        let spec_trimmed = spec.trim();
        if spec_trimmed == "auto" {
            return Ok(PackSubset::auto(now));
        }
        if let Some(percent) = spec_trimmed.strip_suffix('%') {
            let percent: f64 = percent.trim().parse().map_err(|_| bad("the percentage is not a number"))?;
            if !(percent > 0.0 && percent <= 100.0) {
                return Err(bad("the percentage must be above 0 and at most 100"));
            }
            return Ok(PackSubset::Sample { percent });
        }
        let Some((number, of)) = spec_trimmed.split_once('/') else {
            return Err(bad("neither a slice nor a percentage"));
        };
        let (Ok(number), Ok(of)) = (number.trim().parse::<u64>(), of.trim().parse::<u64>()) else {
            return Err(bad("N and M must be whole numbers"));
        };
        if number == 0 || number > of {
            return Err(bad("the slice number must be from 1 to M"));
        }
        Ok(PackSubset::Slice { number, of })
    }

    /// The slice of `now`'s day: days since 1970-01-01 (UTC) modulo [`AUTO_SLICES`], plus one.
    pub fn auto(now: chrono::DateTime<chrono::Utc>) -> PackSubset {
        let day = now.timestamp().div_euclid(86_400);
        let slice = day.rem_euclid(i64::try_from(AUTO_SLICES).expect("30 is an i64"));
        PackSubset::Slice { number: u64::try_from(slice).expect("a remainder is not negative") + 1, of: AUTO_SLICES }
    }

    /// The packs of `packs` (each named once) this subset reads; `random` draws a sample.
    pub fn select<'a>(
        &self,
        packs: impl IntoIterator<Item = &'a repo::ObjectId>,
        random: &mut impl rand::Rng,
    ) -> BTreeSet<repo::ObjectId> {
        match *self {
            PackSubset::Slice { number, of } => {
                packs.into_iter().filter(|id| slice_of(id, of) == number - 1).cloned().collect()
            }
            PackSubset::Sample { percent } => {
                let mut packs: Vec<&repo::ObjectId> = packs.into_iter().collect();
                // Rounded up, less a rounding error of the multiplication (30% of 10 is 3).
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss,
                    reason = "a count of packs, positive, far below 2^52"
                )]
                let wanted = (packs.len() as f64 * percent / 100.0 - 1e-9).ceil().max(1.0) as usize;
                let (chosen, _) = rand::seq::SliceRandom::partial_shuffle(&mut packs[..], random, wanted);
                chosen.iter().map(|id| (*id).clone()).collect()
            }
        }
    }
}

impl std::fmt::Display for PackSubset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackSubset::Slice { number, of } => write!(f, "{number}/{of}"),
            PackSubset::Sample { percent } => write!(f, "{percent}%"),
        }
    }
}

/// Which of `of` slices a pack falls in, from 0: its id's first 8 bytes (16 hex digits) as a
/// big-endian number, modulo `of`.
fn slice_of(id: &repo::ObjectId, of: u64) -> u64 {
    let leading = u64::from_str_radix(&id.as_str()[..16], 16).expect("an object id is 64 hex digits");
    leading % of
}

/// One thing wrong.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// The target it was found on.
    pub target: String,
    /// The object (or chunk) concerned.
    pub object: String,
    /// Snapshots affected.
    pub snapshots: Vec<String>,
    /// What is wrong.
    pub problem: String,
    /// Chunks the affected snapshots need that this leaves unreadable (absent when not counted).
    #[serde(skip_serializing_if = "is_zero")]
    pub chunks: u64,
}

impl Problem {
    /// A problem of `object` on the target at `location`, chunks not counted.
    fn at(location: &str, object: &str, snapshots: Vec<String>, problem: String) -> Problem {
        Problem { target: location.to_string(), object: object.to_string(), snapshots, problem, chunks: 0 }
    }
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// Problems that say the same about the same object, as one: the snapshots of each together,
/// chunk counts added up, in the order first found.
pub fn group(problems: Vec<Problem>) -> Vec<Problem> {
    let mut grouped: Vec<Problem> = Vec::new();
    for problem in problems {
        let same = grouped
            .iter_mut()
            .find(|p| p.target == problem.target && p.object == problem.object && p.problem == problem.problem);
        match same {
            Some(existing) => {
                for snapshot in problem.snapshots {
                    if !existing.snapshots.contains(&snapshot) {
                        existing.snapshots.push(snapshot);
                    }
                }
                existing.chunks += problem.chunks;
            }
            None => grouped.push(problem),
        }
    }
    grouped
}

/// What verify looked at and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Snapshots checked (those the filter let through).
    pub snapshots: usize,
    /// Objects read and checked against their names or recorded sizes: configs, keys,
    /// snapshots, and the packs, indexes and dictionaries the snapshots reference.
    pub objects: usize,
    /// Bytes of those objects that were read (a subset run checks the packs it does not read
    /// against the listing, without reading them).
    pub bytes: u64,
    /// Chunks decrypted and re-hashed.
    pub chunks: usize,
    /// Problems, empty when all is well: one per object and what is wrong with it, naming
    /// every snapshot it affects.
    pub problems: Vec<Problem>,
    /// What a subset run read (absent for other runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<SubsetRead>,
    /// The newest snapshot that proved itself (for the caller's high-water mark).
    #[serde(skip)]
    pub newest: Option<SnapshotMark>,
}

/// The packs a subset run read, out of how many.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubsetRead {
    /// The subset: a slice (`7/30`) or a sample (`2.5%`).
    pub slice: String,
    /// Packs read, hashed and proven chunk by chunk.
    pub packs_read: usize,
    /// Packs the checked snapshots reference.
    pub packs: usize,
}

impl VerifyReport {
    fn count_object(&mut self, bytes: &[u8]) {
        self.objects += 1;
        self.bytes += bytes.len() as u64;
    }

    /// Adds another target's findings.
    pub fn merge(&mut self, other: VerifyReport) {
        self.snapshots += other.snapshots;
        self.objects += other.objects;
        self.bytes += other.bytes;
        self.chunks += other.chunks;
        match (&mut self.subset, other.subset) {
            (Some(mine), Some(theirs)) => {
                mine.packs_read += theirs.packs_read;
                mine.packs += theirs.packs;
            }
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        self.problems.extend(other.problems);
        self.problems = group(std::mem::take(&mut self.problems));
        if other.newest.as_ref().is_some_and(|n| self.newest.as_ref().is_none_or(|m| n.sequence > m.sequence)) {
            self.newest = other.newest;
        }
    }
}

/// The snapshot ids a problem names.
fn names(ids: &[Arc<str>]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

/// The repository's own objects, which every snapshot needs: `config` (it leads to the
/// generation this machine trusts, or the repository was opened from its copy), each
/// generation's config copy and keys objects, and no config under `configs/` that no
/// generation leads to (planted in storage).
async fn check_configs_and_keys(repository: &Repository, report: &mut VerifyReport) -> Result<()> {
    let location = repository.target.location().to_string();
    let problem = |object: &str, snapshots, what| Problem::at(&location, object, snapshots, what);
    // Opened at a later generation (from a pin or fingerprint of one, or because `config` did
    // not lead to the generation this machine pinned): `config`, as a reader without a pin
    // opens it, must lead here too, and its chain names the generations before.
    let reopened = if repository.chain[0].1.generation == 0 {
        None
    } else {
        match Repository::open(repository.target.clone()).await {
            Ok(opened) if opened.config_hash == repository.config_hash && opened.fork.is_none() => Some(opened),
            Ok(_)
            | Err(
                Error::Missing { .. }
                | Error::Corrupt { .. }
                | Error::NotARepository { .. }
                | Error::UnsupportedFormat { .. },
            ) => {
                // The generations before, read back from the trusted one: the first generation
                // is named exactly (a second "generation 0" planted under configs/ is not it), and
                // `config` is checked against it below, the other configs against the chain.
                let (walked, gap) = repository.with_earlier_generations().await?;
                if let Some(hash) = gap {
                    let generation = walked.chain[0].1.generation - 1;
                    report.problems.push(problem(
                        &repo::config_copy_key(&hash),
                        vec![],
                        format!(
                            "missing or damaged: generation {generation}'s config, which generation {} names; without \
                             it `config` does not lead to the generation this machine trusts: copy it (and `config`) \
                             from another target",
                            generation + 1
                        ),
                    ));
                }
                Some(walked)
            }
            Err(e) => return Err(e),
        }
    };
    let repository = reopened.as_ref().unwrap_or(repository);
    // `config` itself (the first generation): a repository opened from its copy (format 7)
    // still needs it mended.
    let (first_hash, first) = &repository.chain[0];
    if first.generation == 0 {
        match repository.target.get_at_most(repo::CONFIG_KEY, repo::MAX_CONFIG_BYTES).await {
            Ok(bytes) if crate::crypto::object_hash(&bytes) == *first_hash => report.count_object(&bytes),
            Ok(_) | Err(Error::Missing { .. } | Error::Corrupt { .. }) => report.problems.push(problem(
                repo::CONFIG_KEY,
                vec![],
                format!(
                    "missing, damaged or replaced; its copy {} is whole: copy it back to `config` (`crmvault copy \
                     --repair --from <another target> --to <this one>` writes one missing or unreadable again)",
                    repo::config_copy_key(first_hash)
                ),
            )),
            Err(e) => return Err(e),
        }
    }
    // Every generation's config copy and keys objects (a rekeyed repository has several).
    for (hash, config) in &repository.chain {
        if config.version >= repo::AUTHENTICATED_VERSION {
            let copy = repo::config_copy_key(hash);
            match repository.target.get_at_most(&copy, repo::MAX_CONFIG_BYTES).await {
                Ok(bytes) if crate::crypto::object_hash(&bytes) == *hash => report.count_object(&bytes),
                Ok(_) => report.problems.push(problem(&copy, vec![], mend("its BLAKE3 does not match its name"))),
                Err(e @ Error::Corrupt { .. }) => report.problems.push(problem(&copy, vec![], mend(&e.to_string()))),
                Err(Error::Missing { .. }) => report.problems.push(problem(&copy, vec![], mend("missing"))),
                Err(e) => return Err(e),
            }
        }
        for key in config.keys.iter().chain(&config.admin_keys) {
            match repository.target.get_at_most(key, repo::MAX_KEYS_BYTES).await {
                Ok(bytes) => {
                    report.count_object(&bytes);
                    if let Err(e) = repo::check_object_name(key, &bytes) {
                        report.problems.push(problem(key, vec![], mend(&e.to_string())));
                    }
                }
                Err(e) => report.problems.push(problem(key, vec![], mend(&e.to_string()))),
            }
        }
    }

    // A config no generation leads to: junk, or a forgery no reader follows.
    if first.generation == 0 && repository.config.version >= repo::AUTHENTICATED_VERSION {
        for (key, _) in repository.target.list("configs").await? {
            if !key.strip_prefix("configs/").is_some_and(|hash| repository.has_generation(hash)) {
                report.problems.push(problem(
                    &key,
                    vec![],
                    "is not a generation of this repository (damaged, or not signed by its admins: planted in \
                     storage?); no command follows it: remove it"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

/// A config copy's or keys object's problem, with how to mend it: the same object is on every
/// target, and `copy --repair` writes it again once it matches its name there.
fn mend(problem: &str) -> String {
    format!("{problem}; `crmvault copy --repair --from <a target holding it whole> --to <this one>` writes it again")
}

/// What [`run`] finds wrong with the repository's own objects (`config`, `configs/`, `keys/`)
/// without reading a snapshot: for a command that reads the repository through its pinned
/// generation and would otherwise not see that its storage was written (a drill).
pub async fn configs_and_keys(repository: &Repository) -> Result<Vec<Problem>> {
    let mut report = VerifyReport::default();
    check_configs_and_keys(repository, &mut report).await?;
    Ok(report.problems)
}

/// Verifies one repository: the snapshots `filter` lets through (a snapshot whose manifest
/// does not open is checked whatever the filter) and what they need. `newest_known` is the
/// newest snapshot the caller wrote or authenticated before (its pin's high-water mark);
/// `missed`, the snapshots the caller's backups stored elsewhere but not here (its pin's
/// record, not yet written here by a later backup).
pub async fn run(
    repository: &Repository,
    keyring: Option<&Keyring>,
    depth: Depth,
    filter: &SnapshotFilter,
    (newest_known, missed): (Option<&SnapshotMark>, &[repo::ForgottenSnapshot]),
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let reads_data = matches!(depth, Depth::ReadData | Depth::ReadSubset(_));
    if reads_data && !keyring.is_some_and(Keyring::is_admin) {
        let what = if depth == Depth::ReadData { "reading every table's data" } else { "reading packs' data" };
        return Err(Error::AdminOnly { what: what.into() });
    }
    if keyring.is_none() && !filter.is_empty() {
        return Err(Error::FilterNeedsKey);
    }
    let location = repository.target.location().to_string();
    let mut report = VerifyReport::default();
    let problem = |object: &str, snapshots, what| Problem::at(&location, object, snapshots, what);

    check_configs_and_keys(repository, &mut report).await?;

    // Which objects each snapshot needs.
    // Each snapshot's id once, shared by every object it lists (365 snapshots of thousands of
    // packs each made a copy per object the most memory verify used).
    let mut referenced: BTreeMap<(String, ObjectRef), Vec<Arc<str>>> = BTreeMap::new();
    let mut sealed_snapshots = Vec::new();
    // With a key, why each snapshot that did not prove itself as it was read did not (its
    // stored bytes let go of: see `Repository::snapshots`); those that did are opened in turn.
    let mut refusals = Vec::new();
    let mut tally = FilterTally::default();
    let read = |sealed: repo::SealedSnapshot| {
        if let Some(keyring) = keyring {
            let (sealed, proven) = repo::authentic(keyring)(sealed);
            (sealed, proven.err())
        } else {
            (repo::header_only(sealed), None)
        }
    };
    for entry in repository.snapshots(read).await? {
        let (sealed, refused) = match entry {
            Ok(read) => read,
            Err((id, error)) => {
                report.snapshots += 1;
                report.problems.push(problem(&format!("snapshots/{id}"), vec![id.clone()], error.to_string()));
                continue;
            }
        };
        if let Some(keyring) = keyring.filter(|_| !filter.is_empty() && refused.is_none())
            && sealed.open(keyring).is_ok_and(|manifest| !tally.see(filter, &manifest))
        {
            continue;
        }
        report.snapshots += 1;
        report.objects += 1;
        report.bytes += sealed.object_size;
        if !repository.claims_this_config(&sealed) {
            report.problems.push(problem(
                &repo::snapshot_key(&sealed.id),
                vec![sealed.id.to_string()],
                "was written under another config than this repository's (damaged or replaced config, a key \
                 retired by `rekey`, or another repository's snapshot)"
                    .into(),
            ));
        }
        let id: Arc<str> = sealed.id.to_string().into();
        for pack in &sealed.header.packs {
            referenced.entry((repo::pack_key(&pack.id), pack.clone())).or_default().push(id.clone());
        }
        for index in &sealed.header.indexes {
            referenced.entry((repo::index_key(&index.id), index.clone())).or_default().push(id.clone());
        }
        for dictionary in &sealed.header.dictionaries {
            referenced.entry((repo::dictionary_key(&dictionary.id), dictionary.clone())).or_default().push(id.clone());
        }
        sealed_snapshots.push(sealed);
        refusals.push(refused);
    }
    tally.check(filter)?;

    // The chain: every predecessor a snapshot names, and the newest one known, must be here.
    let present: BTreeSet<&repo::SnapshotId> = sealed_snapshots.iter().map(|s| &s.id).collect();
    let ids: BTreeSet<repo::SnapshotId> = repository.snapshot_ids().await?.into_iter().collect();
    // A target's history may start later than the repository's (a target added with `init
    // --copy-from`): its oldest snapshot may name a predecessor it never held.
    let oldest = sealed_snapshots.iter().map(|s| s.header.sequence).min();
    // A gap `forget` left is explained by its record (authenticated when there is a key).
    let forgotten = repository.forgotten(keyring).await?;
    for (_, size) in &forgotten.objects {
        report.objects += 1;
        report.bytes += size;
    }
    for (key, error) in &forgotten.rejected {
        report.problems.push(problem(key, vec![], format!("a forget record that explains nothing: {error}")));
    }
    // The audit trail: a removed record leaves a gap in its numbers or a predecessor missing;
    // with a key, each record must prove itself.
    let trail = repository.audit_trail(keyring).await?;
    report.objects += trail.records.len();
    report.bytes += trail.bytes;
    for trouble in &trail.problems {
        report.problems.push(problem("audit", vec![], format!("audit trail: {trouble}")));
    }
    // ...unless `forget` removed snapshots of this target before it: then its history started
    // earlier, and the oldest snapshot's predecessor must be here or forgotten too (deleting
    // the only snapshot `forget --keep-last 1` left is otherwise never reported).
    // Where its history starts then is the predecessor of the first snapshot forgotten there.
    // Only what `forget` removed here tells: a snapshot this target missed was never here.
    let oldest = oldest.filter(|&oldest| forgotten.removed().all(|s| s.sequence >= oldest));
    let start = forgotten.removed().min_by_key(|s| s.sequence).and_then(|s| s.parent.clone());
    // A snapshot `prune --identity` or `rekey --reencrypt` replaced lives on as its copy.
    let replaced: BTreeSet<&repo::SnapshotId> =
        sealed_snapshots.iter().filter_map(|s| s.header.replaces.as_ref()).collect();
    let here = |id: &repo::SnapshotId| ids.contains(id) || replaced.contains(id);
    for sealed in sealed_snapshots.iter().filter(|s| Some(s.header.sequence) != oldest) {
        // A forgotten predecessor explains the gap only down to a snapshot that is here.
        let gap = sealed.header.parent.as_ref().and_then(|parent| forgotten.gap_below(parent, here));
        let history_starts =
            |gap: &repo::SnapshotId| sealed.header.parent.as_ref() != Some(gap) && start.as_ref() == Some(gap);
        if let Some(gap) = gap.filter(|gap| !history_starts(gap)) {
            let relation = if sealed.header.parent.as_ref() == Some(&gap) {
                "names it as its predecessor"
            } else {
                "comes after it"
            };
            report.problems.push(problem(
                &repo::snapshot_key(&gap),
                vec![sealed.id.to_string()],
                format!("missing: snapshot {} {relation}; it was deleted without being forgotten", sealed.id),
            ));
        }
    }
    let known_gap = newest_known
        .filter(|known| !present.contains(&known.id) && !here(&known.id))
        .and_then(|known| forgotten.gap_below(&known.id, here).map(|gap| (known, gap)));
    if let Some((known, gap)) = known_gap.as_ref().filter(|(_, gap)| missed.iter().any(|m| m.id == *gap)) {
        report.problems.push(problem(
            &repo::snapshot_key(gap),
            vec![gap.to_string()],
            format!(
                "missing: the backup that wrote it (snapshot number {}, {}, or one before it) did not reach this \
                 target; the next backup that reaches it records that, and until then `restore latest` from this \
                 target alone restores an older snapshot",
                known.sequence, known.time
            ),
        ));
    } else if let Some((known, gap)) = known_gap {
        let what = if gap == known.id {
            format!(
                "it is the newest snapshot this machine wrote or checked (number {}, {})",
                known.sequence, known.time
            )
        } else {
            format!(
                "the newest snapshot this machine wrote or checked, {} (number {}), was forgotten, and this one \
                 before it was not",
                known.id, known.sequence
            )
        };
        // A target that holds no snapshot at all may be a copy `init --copy-from` made and no
        // `copy` filled yet, which its listing cannot tell from one whose snapshots were all
        // deleted: both are said.
        let how = if present.is_empty() {
            "this target holds no snapshot at all: they were deleted without being forgotten, unless this is a copy \
             `init --copy-from` made that `crmvault copy` has not filled yet; `restore latest` finds no snapshot at all"
        } else {
            "it was deleted without being forgotten, and `restore latest` would restore an older one"
        };
        report.problems.push(problem(
            &repo::snapshot_key(&gap),
            vec![gap.to_string()],
            format!("missing: {what}; {how}"),
        ));
    }

    // A subset run reads the packs it selected, and finds the others in the listing: present,
    // with the size the snapshots recorded.
    let is_pack = |key: &str| key.starts_with("data/");
    let packs = referenced.keys().filter(|(key, _)| is_pack(key)).map(|(_, reference)| &reference.id);
    let (selected, listed) = match depth {
        Depth::ReadSubset(subset) => {
            let selected = subset.select(packs.clone(), &mut rand::thread_rng());
            report.subset =
                Some(SubsetRead { slice: subset.to_string(), packs_read: selected.len(), packs: packs.count() });
            let listed: BTreeMap<String, u64> = repository.target.list("data").await?.into_iter().collect();
            (Some(selected), listed)
        }
        _ => (None, BTreeMap::new()),
    };
    let unread = |key: &str, id: &repo::ObjectId| is_pack(key) && selected.as_ref().is_some_and(|s| !s.contains(id));
    // The packs whose data is read are checked when they are read: downloaded once.
    let read_later = |key: &str, id: &repo::ObjectId| reads_data && is_pack(key) && !unread(key, id);

    let mut damaged: BTreeSet<repo::ObjectId> = BTreeSet::new();
    progress.phase("checking objects", Unit::Objects, Some(referenced.len() as u64));
    for ((key, reference), snapshots) in &referenced {
        progress.advance(1);
        if unread(key, &reference.id) {
            report.objects += 1;
            let what = match listed.get(key) {
                Some(&size) if size == reference.size => continue,
                Some(&size) => wrong_size(size, reference.size),
                None => "missing".into(),
            };
            damaged.insert(reference.id.clone());
            report.problems.push(problem(key, names(snapshots), what));
            if listed.contains_key(key) {
                mark_damaged(repository, &reference.id).await;
            }
            continue;
        }
        if read_later(key, &reference.id) {
            continue;
        }
        if let Err(what) = fetch_checked(repository, key, reference, &mut report).await? {
            damaged.insert(reference.id.clone());
            report.problems.push(problem(key, names(snapshots), what));
        }
    }

    let Some(keyring) = keyring else {
        return Ok(report);
    };
    // Indexes no snapshot lists (left by interrupted backups, or put there by someone else):
    // backups read them, so one that fails to prove itself is reported (backups skip it).
    let listed: BTreeSet<String> = referenced.keys().map(|(key, _)| key.clone()).collect();
    for (key, _) in repository.target.list("index").await? {
        if listed.contains(&key) {
            continue;
        }
        if let Err(error) = repository.check_index(keyring, &key).await {
            report.problems.push(problem(
                &key,
                vec![],
                format!("no snapshot lists it and backups skip it: {error}; it can be deleted"),
            ));
        }
    }
    // With a key: manifests and indexes agree.
    let mut needed_chunks: BTreeMap<repo::ObjectId, BTreeSet<ChunkId>> = BTreeMap::new();
    // Chunks a snapshot reads from a pack other than the one the merged index keeps for them
    // (stored again after a pack was found damaged, or by `--rewrite-budget`): where they lie
    // in the pack each is needed from, so that every copy is read there.
    let mut elsewhere: BTreeMap<repo::ObjectId, BTreeMap<ChunkId, repo::ChunkLocation>> = BTreeMap::new();
    // Counted, not one problem per chunk: (pack, snapshot) → chunks it holds unlisted, and
    // snapshot → chunks in no index it lists.
    let mut unlisted: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut unindexed: BTreeMap<String, u64> = BTreeMap::new();
    let mut index = ChunkIndex::default();
    progress.phase("checking snapshots", Unit::Snapshots, Some(sealed_snapshots.len() as u64));
    for (sealed, refused) in sealed_snapshots.iter().zip(&mut refusals) {
        progress.advance(1);
        let opened = match refused.take() {
            Some(error) => Err(error),
            None => sealed.open(keyring),
        };
        let mut manifest = match opened {
            Ok(manifest) => {
                if report.newest.as_ref().is_none_or(|n| sealed.header.sequence > n.sequence) {
                    report.newest = Some(sealed.mark());
                }
                manifest
            }
            Err(e) => {
                report.problems.push(problem(
                    &repo::snapshot_key(&sealed.id),
                    vec![sealed.id.to_string()],
                    e.to_string(),
                ));
                continue;
            }
        };
        let readable: Vec<ObjectRef> =
            sealed.header.indexes.iter().filter(|i| !damaged.contains(&i.id)).cloned().collect();
        // Only the snapshot's own packs: an index it lists may also describe a pack prune
        // deleted since, holding a chunk this snapshot reads from another pack.
        let loaded =
            repository.load_index_lenient(keyring, Some(&readable), Some(&sealed.header.packs), usize::MAX).await;
        let loaded = loaded.and_then(|(index, mut failures)| match failures.pop() {
            Some((_, error)) => Err(error),
            None => Ok(index),
        });
        let snapshot_index = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                report.problems.push(problem("index", vec![sealed.id.to_string()], e.to_string()));
                continue;
            }
        };
        // The lists of data chunks are data: only an admin reads them; the writer key checks
        // the list chunks themselves.
        let snapshot_index = Arc::new(snapshot_index);
        if keyring.is_admin() {
            let reader = ChunkReader::new(repository.target.clone(), keyring.clone(), snapshot_index.clone(), 4);
            let lists_an_unreadable_index = sealed.header.indexes.iter().any(|i| damaged.contains(&i.id));
            match crate::fetch::expand_lists(&mut manifest, &reader).await {
                // Said once, on the index's own line, with the chunks counted below.
                Err(Error::Missing { .. }) if lists_an_unreadable_index => {}
                Err(e) => {
                    report.problems.push(problem(
                        &repo::snapshot_key(&sealed.id),
                        vec![sealed.id.to_string()],
                        e.to_string(),
                    ));
                }
                Ok(()) if depth == Depth::ReadData => {
                    for (label, what) in check_streams(&manifest, &reader, &keyring.mac_key()).await {
                        report.problems.push(problem(&label, vec![sealed.id.to_string()], what));
                    }
                }
                Ok(()) => {}
            }
        }
        let snapshot_index = Arc::try_unwrap(snapshot_index).expect("the list reader has been dropped");
        let packs: BTreeSet<&repo::ObjectId> = sealed.header.packs.iter().map(|p| &p.id).collect();
        for id in manifest.all_chunks() {
            match snapshot_index.get(id) {
                Some((entry, location)) if packs.contains(&entry.pack.id) => {
                    let pack = &entry.pack.id;
                    let first_need = needed_chunks.entry(pack.clone()).or_default().insert(*id);
                    // The merged index keeps the first snapshot's place of a chunk (looked up
                    // once for each chunk of each pack, not for each snapshot that needs it).
                    if reads_data && first_need && index.get(id).is_some_and(|(kept, _)| kept.pack.id != *pack) {
                        elsewhere.entry(pack.clone()).or_default().insert(*id, location);
                    }
                }
                Some((entry, _)) => {
                    *unlisted.entry((repo::pack_key(&entry.pack.id), sealed.id.to_string())).or_default() += 1;
                }
                None => *unindexed.entry(sealed.id.to_string()).or_default() += 1,
            }
        }
        index.merge(&snapshot_index).map_err(|e| repo::temporary_file_error("chunk index", e))?;
    }

    for ((key, snapshot), chunks) in unlisted {
        report.problems.push(Problem {
            chunks,
            ..problem(&key, vec![snapshot], "holds chunks the snapshot needs but does not list that pack".into())
        });
    }
    for sealed in &sealed_snapshots {
        let Some(&chunks) = unindexed.get(&*sealed.id.as_str()) else { continue };
        // Chunks that were in an index found missing or damaged are counted on its problem.
        let lost = sealed.header.indexes.iter().find(|i| damaged.contains(&i.id)).map(|i| repo::index_key(&i.id));
        match lost.and_then(|key| report.problems.iter_mut().find(|p| p.object == key)) {
            Some(index_problem) => index_problem.chunks += chunks,
            None => report.problems.push(Problem {
                chunks,
                ..problem("chunks", vec![sealed.id.to_string()], "in no index the snapshot lists".into())
            }),
        }
    }

    if reads_data {
        let index = Arc::new(index);
        let reader = ChunkReader::new(repository.target.clone(), keyring.clone(), index.clone(), 2);
        // Every pack, or those of the subset: checked against its name, then every chunk the
        // snapshots need from it proven from the same download.
        let to_read: Vec<_> =
            referenced.iter().filter(|((key, reference), _)| read_later(key, &reference.id)).collect();
        progress.phase("reading packs", Unit::Objects, Some(to_read.len() as u64));
        for ((key, reference), users) in to_read {
            progress.advance(1);
            let ciphertext = match fetch_checked(repository, key, reference, &mut report).await? {
                Ok(ciphertext) => ciphertext,
                Err(what) => {
                    report.problems.push(problem(key, names(users), what));
                    continue;
                }
            };
            let Some(chunks) = needed_chunks.get(&reference.id) else { continue };
            if let Err(e) = reader.hold_pack(reference, ciphertext).await {
                report.problems.push(problem(key, names(users), e.to_string()));
                continue;
            }
            // Where each lies in this pack, in that order and in runs, as a restore reads them,
            // so a frame of several chunks is decompressed once for all of them.
            let moved = elsewhere.get(&reference.id);
            let mut locations: Vec<repo::ChunkLocation> = chunks
                .iter()
                .filter_map(|id| match moved.and_then(|moved| moved.get(id)) {
                    Some(location) => Some(*location),
                    None => index.get(id).map(|(_, location)| location),
                })
                .collect();
            locations.sort_by_key(|location| (location.offset(), location.start()));
            // Every chunk needed from a pack was located in it when it was found needed: one that
            // is not would go unread, which must not pass for read.
            let runs = reader.runs_in_pack(&reference.id, &locations).filter(|_| locations.len() == chunks.len());
            let Some(runs) = runs else {
                let what = "its chunks could not all be located in it: not read (a fault of this verify)";
                report.problems.push(problem(key, names(users), what.into()));
                continue;
            };
            for run in runs {
                match reader.read_located(&run).await {
                    Ok(_) => report.chunks += run.len(),
                    Err(e) => {
                        report.problems.push(problem(key, names(users), e.to_string()));
                        break;
                    }
                }
            }
        }
    }
    report.problems = group(report.problems);
    Ok(report)
}

/// Downloads an object a snapshot references and checks it against its recorded size and its
/// name: its bytes, or what is wrong with it. A pack found damaged is marked.
async fn fetch_checked(
    repository: &Repository,
    key: &str,
    reference: &ObjectRef,
    report: &mut VerifyReport,
) -> Result<std::result::Result<bytes::Bytes, String>> {
    // Read no larger than the snapshot says; a header that says more than such an object holds
    // (as one rewritten in storage can) is not followed, and says nothing of the object.
    let largest = repo::largest_object(key);
    if reference.size > largest {
        return Ok(Err(format!(
            "the snapshot records {} bytes for it, more than such an object holds ({largest})",
            reference.size
        )));
    }
    let what = match repository.target.get_if_at_most(key, reference.size).await {
        Ok(Ok(bytes)) => {
            report.count_object(&bytes);
            if bytes.len() as u64 == reference.size {
                match repo::check_object_name(key, &bytes) {
                    Ok(()) => return Ok(Ok(bytes)),
                    Err(_) => "its BLAKE3 does not match its name".to_string(),
                }
            } else {
                wrong_size(bytes.len() as u64, reference.size)
            }
        }
        Ok(Err(size)) => wrong_size(size, reference.size),
        Err(Error::Missing { .. }) => return Ok(Err("missing".into())),
        Err(e) => return Err(e),
    };
    if key.starts_with("data/") {
        mark_damaged(repository, &reference.id).await;
    }
    Ok(Err(what))
}

/// A size that differs from the one the snapshot recorded, as a problem.
fn wrong_size(size: u64, recorded: u64) -> String {
    format!("size is {size} bytes, the snapshot recorded {recorded}")
}

/// Leaves the marker that keeps later backups from reusing a damaged pack. Best effort: verify
/// may run with read-only credentials, and the finding is reported either way. A marker that a
/// storage writer adds only makes the next backup store some chunks again.
async fn mark_damaged(repository: &Repository, pack_id: &repo::ObjectId) {
    let key = repo::damaged_key(pack_id);
    if let Err(error) = repository.target.put_new(&key, bytes::Bytes::new()).await {
        tracing::warn!("{}: cannot mark {pack_id} damaged: {error}", repository.target.location());
    }
}

/// Reads every stream of a snapshot whose lists are expanded, as a restore would, and compares
/// each stream's digest (admins only) and each table's row count with the manifest: (what,
/// problem) for each that differs or cannot be read.
async fn check_streams(manifest: &Manifest, reader: &ChunkReader, mac_key: &MacKey) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let schema = [
        ("schema (pre-data)".to_string(), &manifest.pre_data, None),
        ("schema (post-data)".to_string(), &manifest.post_data, None),
    ];
    let tables = manifest
        .tables
        .iter()
        .chain(manifest.large_objects.iter())
        .map(|t| (format!("table {}.{}", t.schema, t.name), &t.data, Some(t.rows)));
    for (label, stream, rows) in schema.into_iter().chain(tables) {
        if let Err(what) = check_stream(stream, rows, reader, mac_key).await {
            problems.push((label, what));
        }
    }
    problems
}

async fn check_stream(
    stream: &StreamManifest,
    rows: Option<u64>,
    reader: &ChunkReader,
    mac_key: &MacKey,
) -> std::result::Result<(), String> {
    let mut digest = mac_key.hasher();
    let (mut bytes, mut lines) = (0u64, 0u64);
    for run in reader.runs(&stream.chunks) {
        let data = reader.read_run(run).await.map_err(|e| e.to_string())?;
        digest.update(&data);
        bytes += data.len() as u64;
        lines += memchr::memchr_iter(b'\n', &data).count() as u64;
    }
    if bytes != stream.bytes {
        return Err(format!("holds {bytes} bytes, its manifest records {}", stream.bytes));
    }
    if digest.finalize().to_hex().as_str() != stream.digest {
        return Err("its data does not match the snapshot's digest".into());
    }
    // COPY's text format ends every row with a newline and escapes those inside values.
    match rows {
        Some(rows) if rows != lines => Err(format!("holds {lines} rows, its manifest records {rows}")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use rand::SeedableRng;

    fn packs(count: u32) -> Vec<repo::ObjectId> {
        (0..count).map(|n| repo::ObjectId::of(&n.to_le_bytes())).collect()
    }

    fn parse(spec: &str) -> Result<PackSubset> {
        PackSubset::parse(spec, Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 0).unwrap())
    }

    #[test]
    fn the_slices_of_m_partition_the_packs() {
        let packs = packs(500);
        let mut random = rand::rngs::StdRng::seed_from_u64(1);
        for of in [1, 2, 3, 7, 30, 600] {
            let mut seen = BTreeSet::new();
            let mut total = 0;
            for number in 1..=of {
                let slice = PackSubset::Slice { number, of }.select(&packs, &mut random);
                total += slice.len();
                seen.extend(slice);
            }
            assert_eq!((total, seen.len()), (packs.len(), packs.len()), "slices of {of}");
        }
        // Roughly even: no slice of 7 holds more than twice its share.
        let sizes: Vec<usize> =
            (1..=7).map(|number| PackSubset::Slice { number, of: 7 }.select(&packs, &mut random).len()).collect();
        assert!(sizes.iter().all(|&size| size > 0 && size < 2 * 500 / 7), "{sizes:?}");
    }

    #[test]
    fn a_slice_is_the_packs_whose_leading_8_bytes_fall_in_it() {
        let low: repo::ObjectId = format!("{:016x}{}", 10u64, "0".repeat(48)).parse().unwrap();
        let high: repo::ObjectId = format!("{:016x}{}", u64::MAX, "f".repeat(48)).parse().unwrap();
        let mut random = rand::rngs::StdRng::seed_from_u64(1);
        let slice = |number, of| PackSubset::Slice { number, of }.select([&low, &high], &mut random.clone());
        assert_eq!(slice(11, 100), BTreeSet::from([low.clone()]));
        assert_eq!(slice(u64::MAX % 7 + 1, 7), BTreeSet::from([high.clone()]));
        assert_eq!(slice(1, 1).len(), 2);
        assert!(PackSubset::Slice { number: 1, of: 10 }.select([&low, &high], &mut random).contains(&low));
    }

    #[test]
    fn auto_reads_every_pack_once_in_30_consecutive_days() {
        let packs = packs(300);
        let mut random = rand::rngs::StdRng::seed_from_u64(1);
        // From a late hour, across a month and a year end: the day is UTC's.
        let start = Utc.with_ymd_and_hms(2026, 12, 20, 23, 30, 0).unwrap();
        let mut read = BTreeMap::<repo::ObjectId, usize>::new();
        let mut names = BTreeSet::new();
        for day in 0..30 {
            let subset = PackSubset::auto(start + chrono::Duration::days(day));
            names.insert(subset.to_string());
            for pack in subset.select(&packs, &mut random) {
                *read.entry(pack).or_default() += 1;
            }
        }
        assert_eq!(names.len(), 30);
        assert_eq!(read.len(), packs.len());
        assert!(read.values().all(|&times| times == 1));
        // The 31st day starts over.
        assert_eq!(PackSubset::auto(start + chrono::Duration::days(30)), PackSubset::auto(start));
    }

    #[test]
    fn auto_names_the_slice_of_the_utc_day() {
        let slice = |y, m, d, h| PackSubset::auto(Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()).to_string();
        assert_eq!(slice(1970, 1, 1, 0), "1/30");
        assert_eq!(slice(1970, 1, 30, 23), "30/30");
        assert_eq!(slice(1970, 1, 31, 12), "1/30");
        // 2026-12-03 is day 20_790 since 1970-01-01: 20_790 mod 30 = 0.
        assert_eq!(slice(2026, 12, 3, 8), "1/30");
        assert_eq!(slice(2026, 12, 4, 0), "2/30");
        assert_eq!(parse("auto").unwrap(), PackSubset::Slice { number: 1, of: 30 });
    }

    #[test]
    fn a_sample_reads_its_share_rounded_up_and_differs_between_runs() {
        let packs = packs(200);
        let mut random = rand::rngs::StdRng::seed_from_u64(7);
        for (percent, expected) in [(0.1, 1), (2.5, 5), (30.0, 60), (33.3, 67), (99.9, 200), (100.0, 200)] {
            let sample = PackSubset::Sample { percent }.select(&packs, &mut random);
            assert_eq!(sample.len(), expected, "{percent}%");
            assert!(sample.iter().all(|pack| packs.contains(pack)));
        }
        assert_eq!(PackSubset::Sample { percent: 30.0 }.select(&packs[..10], &mut random).len(), 3);
        assert_eq!(PackSubset::Sample { percent: 50.0 }.select(&[], &mut random).len(), 0);
        let first = PackSubset::Sample { percent: 10.0 }.select(&packs, &mut random);
        let second = PackSubset::Sample { percent: 10.0 }.select(&packs, &mut random);
        assert_ne!(first, second);
    }

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!(parse("3/7").unwrap(), PackSubset::Slice { number: 3, of: 7 });
        assert_eq!(parse("1/1").unwrap(), PackSubset::Slice { number: 1, of: 1 });
        assert_eq!(parse("2.5%").unwrap(), PackSubset::Sample { percent: 2.5 });
        assert_eq!(parse("100%").unwrap().to_string(), "100%");
        assert_eq!(parse("2.5%").unwrap().to_string(), "2.5%");
        for bad in ["0/3", "4/3", "3/0", "0%", "101%", "-5%", "NaN%", "x", "", "1/x", "1/2/3", "auto2", "%"] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("is not a subset of the packs") && error.contains("N/M"), "{bad:?}: {error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }
    }
}
