//! Repacking (`prune --identity`): packs that are mostly garbage, and small packs that can be
//! merged, are written again holding only the zstd frames some remaining snapshot uses; every
//! index that describes a pack about to go is written again without it; every snapshot that
//! lists one of them is sealed again as a copy (`replaces`) listing the new objects, the way
//! `rekey --reencrypt` does ([`crate::rekey::store_copy`]); the replaced snapshots are then
//! deleted, and [`crate::prune::run`] deletes what no remaining snapshot lists.
//!
//! Liveness comes from snapshots that prove themselves, read with an admin identity: their list
//! chunks give every chunk id they use. A frame is the unit: it is dropped when none of its
//! chunks is live, copied verbatim when most of its text is, and otherwise compressed again
//! with its live chunks alone (each proven against its id first), with the same dictionary. A
//! pack's chunks share one dictionary, so new packs are filled from packs of one dictionary each;
//! but small packs (a night's increments, each of its own dictionary) are merged whatever their
//! dictionaries: their live chunks are laid out anew in the newest snapshot's order, in full
//! frames without a dictionary, and the nights' dictionaries go.
//!
//! Write order (docs/FORMAT.md, *Prune*): new packs, then indexes (for the new packs, and the
//! old ones written again), then the copies of the snapshots oldest first, then the replaced
//! snapshot objects are deleted, then garbage as any prune deletes it. Killed anywhere, every
//! remaining snapshot is whole (an old one lists the old objects, which nothing deletes while
//! it is there; a copy lists only objects stored before it); run again, a prune takes a
//! snapshot whose copy is present as replaced, reuses that copy's manifest (one id on every
//! target) and finishes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::crypto::{self, ChunkId};
use crate::error::{Error, Result};
use crate::fetch::ChunkReader;
use crate::progress::{Progress, Unit};
use crate::prune::PruneMode;
use crate::rekey::{Listing, oldest_first, store_copy};
use crate::repo::ChunkSet;
use crate::repo::{
    self, AdminKeyring, ChunkLocation, IndexFile, Keyring, Manifest, ObjectId, ObjectRef, PackRecord, Repository,
    SealedManifest, SealedSnapshot, SnapshotId,
};

/// The share of a pack's bytes that no snapshot uses above which it is repacked, in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxUnused(f64);

impl MaxUnused {
    /// restic's default: a pack with more than 5% unused is repacked.
    pub const DEFAULT: MaxUnused = MaxUnused(5.0);

    /// The percentage.
    pub fn percent(self) -> f64 {
        self.0
    }
}

impl Default for MaxUnused {
    fn default() -> Self {
        MaxUnused::DEFAULT
    }
}

impl std::fmt::Display for MaxUnused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl std::str::FromStr for MaxUnused {
    type Err = Error;

    /// `5%` or `5`: a percentage from 0 to 100.
    fn from_str(text: &str) -> Result<MaxUnused> {
        let number = text.trim().strip_suffix('%').unwrap_or(text.trim()).trim();
        match number.parse::<f64>() {
            Ok(percent) if (0.0..=100.0).contains(&percent) => Ok(MaxUnused(percent)),
            _ => Err(Error::Invalid(format!("--max-unused {text:?}: give a percentage from 0 to 100, like 5%"))),
        }
    }
}

/// What repacking is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct RepackOptions {
    /// Repack, or only say what would be repacked.
    pub mode: PruneMode,
    /// The threshold.
    pub max_unused: MaxUnused,
}

/// What repacking did (or, in a dry run, would do) on one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Repacked {
    /// The target.
    pub location: String,
    /// Whether it only looked.
    pub dry_run: bool,
    /// Packs some remaining snapshot lists (before repacking).
    pub packs_listed: u64,
    /// Their bytes that no remaining snapshot uses (frames none of whose chunks is used, and
    /// the unused share of those mostly unused).
    pub unused_bytes: u64,
    /// Packs repacked (or to repack): over the threshold, or small ones merged.
    pub packs_repacked: u64,
    /// Their stored bytes.
    pub packs_repacked_bytes: u64,
    /// The bytes of theirs that no snapshot uses: what repacking them frees.
    pub freed_bytes: u64,
    /// Frames compressed again with their live chunks alone (the others were copied).
    pub frames_recompressed: u64,
    /// New packs written.
    pub packs_written: u64,
    /// Their stored bytes.
    pub packs_written_bytes: u64,
    /// Indexes written (for the new packs, and old ones written again without the packs that go).
    pub indexes_written: u64,
    /// Snapshots sealed again (or to seal again) as copies.
    pub snapshots_resealed: u64,
    /// Replaced snapshot objects deleted.
    pub snapshots_deleted: u64,
    /// Snapshots this identity cannot open (written before it was added): their packs are left
    /// as they are.
    pub left: Vec<(SnapshotId, String)>,
    /// Replaced snapshot objects the storage refused to delete (the next prune tries again).
    pub not_deleted: Vec<(String, String)>,
}

/// A pack's frames as its index describes them: (offset, compressed length) → chunks.
fn frames(record: &PackRecord) -> BTreeMap<(u64, u32), Vec<ChunkLocation>> {
    let mut frames: BTreeMap<(u64, u32), Vec<ChunkLocation>> = BTreeMap::new();
    for chunk in &record.chunks {
        frames.entry((chunk.offset(), chunk.length())).or_default().push(*chunk);
    }
    frames
}

/// A frame more than 1 / this of whose text is unused is compressed again with its live chunks
/// alone (a frame holds up to 512 KiB of text: one live 8 KiB chunk kept it whole).
const FRAME_UNUSED_SHARE: u64 = 4;

/// A frame's text bytes (its chunks' lengths), and those of its live chunks.
fn frame_text(chunks: &[ChunkLocation], live: &ChunkSet) -> (u64, u64) {
    let all = chunks.iter().map(|c| u64::from(c.raw_length())).sum();
    let used = chunks.iter().filter(|c| live.contains(&c.chunk())).map(|c| u64::from(c.raw_length())).sum();
    (all, used)
}

/// Whether a frame is used: one of its chunks is live.
fn used(chunks: &[ChunkLocation], live: &ChunkSet) -> bool {
    chunks.iter().any(|c| live.contains(&c.chunk()))
}

/// Whether a used frame is compressed again rather than copied ([`FRAME_UNUSED_SHARE`]).
fn rewrites(chunks: &[ChunkLocation], live: &ChunkSet) -> bool {
    let (all, used_text) = frame_text(chunks, live);
    used(chunks, live) && u128::from(all - used_text) * u128::from(FRAME_UNUSED_SHARE) > u128::from(all)
}

/// Bytes of a pack's frames that repacking it would free: frames that hold no live chunk, and
/// the unused share of those compressed again (estimated from their text).
fn unused_bytes(record: &PackRecord, live: &ChunkSet) -> u64 {
    frames(record)
        .iter()
        .map(|((_, length), chunks)| {
            if !used(chunks, live) {
                u64::from(*length)
            } else if rewrites(chunks, live) {
                let (all, used_text) = frame_text(chunks, live);
                let share = u128::from(*length) * u128::from(all - used_text) / u128::from(all.max(1));
                u64::try_from(share).unwrap_or(u64::MAX)
            } else {
                0
            }
        })
        .sum()
}

/// How many small packs of one dictionary make a merge worth sealing the snapshots again.
const SMALL_PACKS_TO_MERGE: usize = 4;
/// Chunks an index written by repacking describes at most (as a backup's).
const INDEX_CHUNKS: usize = 65_536;

/// Which packs to repack, and which of those to merge: packs whose unused share exceeds
/// `max_unused` are repacked; small packs, once there are at least [`SMALL_PACKS_TO_MERGE`]
/// of them, are all merged, whatever their dictionaries (a night's packs each hold one
/// dictionary's frames: a year of nights kept hundreds of small packs, each keeping its
/// night's dictionary and a line in every snapshot's header); not `fresh` ones, which an
/// interrupted repack wrote. Pure.
fn choose(
    records: &[&PackRecord],
    live: &ChunkSet,
    max_unused: MaxUnused,
    pack_size: usize,
    fresh: &HashSet<ObjectId>,
) -> (BTreeSet<ObjectId>, BTreeSet<ObjectId>) {
    let mut chosen = BTreeSet::new();
    let mut small = BTreeSet::new();
    for record in records {
        let unused = unused_bytes(record, live);
        #[expect(clippy::cast_precision_loss, reason = "a share, not an amount")]
        let over = unused > 0 && (unused as f64) * 100.0 > max_unused.percent() * record.pack.size as f64;
        if over {
            chosen.insert(record.pack.id.clone());
        }
        if repo::is_small_pack(record.pack.size, pack_size)
            && used(&record.chunks, live)
            && !fresh.contains(&record.pack.id)
        {
            small.insert(record.pack.id.clone());
        }
    }
    // 100% leaves every pack as it is.
    if small.len() < SMALL_PACKS_TO_MERGE || max_unused.percent() >= 100.0 {
        return (chosen, BTreeSet::new());
    }
    chosen.extend(small.iter().cloned());
    (chosen, small)
}

/// One target's side of a repack.
struct Repacking<'a> {
    repository: &'a Repository,
    out: Repacked,
    /// Snapshots that proved themselves and are not replaced by a copy present here.
    snapshots: HashMap<SnapshotId, (SealedSnapshot, Manifest)>,
    /// Snapshots whose copy is present here: deleted once the others are sealed again.
    replaced: Vec<(u64, chrono::DateTime<chrono::Utc>, SnapshotId)>,
    /// Every pack a snapshot here lists, as its indexes describe it.
    records: HashMap<ObjectId, PackRecord>,
    /// The chunks the remaining snapshots use, in the order merged chunks are laid out in:
    /// the newest snapshot's, then what older ones add.
    live: ChunkSet,
    /// Packs listed by a snapshot this identity cannot open: left alone.
    pinned: HashSet<ObjectId>,
    /// Indexes the snapshots list: their format version and the packs they describe (whose
    /// records are in `records`).
    indexes: BTreeMap<ObjectId, (ObjectRef, u32, Vec<ObjectId>)>,
    /// Packs that stay listed unless repacked: those a snapshot lists (pinned ones included).
    listed: HashSet<ObjectId>,
    /// Packs to repack.
    chosen: BTreeSet<ObjectId>,
    /// Of those, the small ones merged into full frames without a dictionary.
    merged: BTreeSet<ObjectId>,
    /// Packs listed by a copy whose original is still here: an interrupted repack wrote them.
    /// Never merged again: the copies listing them stay as they are, one id on every target.
    fresh: HashSet<ObjectId>,
    /// Listed indexes that describe a pack that goes: written again without it.
    stale_indexes: HashSet<ObjectId>,
    /// Old pack → the new packs its live frames went to.
    new_packs_of: HashMap<ObjectId, BTreeSet<ObjectRef>>,
    /// Repacked pack → packs that stay and hold some of its used chunks already.
    reused: HashMap<ObjectId, BTreeSet<ObjectId>>,
    /// Listed pack → a listed index that describes it.
    index_of_pack: HashMap<ObjectId, ObjectId>,
    /// New pack → its record.
    new_records: HashMap<ObjectId, PackRecord>,
    /// New pack → the index describing it.
    index_of: HashMap<ObjectId, ObjectRef>,
    /// Old index → what replaces it (none: it described only packs that go).
    rewritten: HashMap<ObjectId, Option<ObjectRef>>,
}

/// Repacks `repositories` (every copy of one repository; the caller holds their exclusive
/// locks): see the module's description. In a dry run, says what it would do and writes nothing.
/// Garbage (what no remaining snapshot lists afterwards) is left to [`crate::prune::run`].
pub async fn run(
    repositories: &[Repository],
    keyring: &AdminKeyring,
    options: &RepackOptions,
    locks: &crate::lock::Locks,
    progress: &dyn Progress,
) -> Result<Vec<Repacked>> {
    let mut targets = Vec::new();
    // Old id → the copy's sealed manifest, from whichever target holds a copy already.
    let mut copies: HashMap<SnapshotId, SealedManifest> = HashMap::new();
    for repository in repositories {
        let mut repacking = open_snapshots(repository, keyring, &mut copies, progress).await?;
        repacking.out.dry_run = options.mode == PruneMode::DryRun;
        repacking.plan(keyring, options.max_unused, progress).await?;
        targets.push(repacking);
    }
    // A snapshot is sealed again on every target that holds it (one id everywhere) when on any
    // of them it lists a pack or index that goes, when a copy of it exists already, or when its
    // predecessor is sealed again (its copy names the predecessor's copy): oldest first.
    let order = oldest_first(targets.iter().flat_map(|t| t.snapshots.values().map(|(s, _)| s)));
    let mut new_ids: HashMap<SnapshotId, SnapshotId> =
        copies.iter().map(|(old, copy)| (old.clone(), copy.id.clone())).collect();
    let mut resealed: Vec<SnapshotId> = Vec::new();
    for id in &order {
        let parent_moves = |t: &Repacking| {
            t.snapshots.get(id).and_then(|(s, _)| s.header.parent.as_ref()).is_some_and(|p| new_ids.contains_key(p))
        };
        let needed = copies.contains_key(id) || targets.iter().any(|t| t.lists_what_goes(id) || parent_moves(t));
        if needed {
            resealed.push(id.clone());
            // Only to say so in a dry run; a run makes the copy below.
            new_ids.entry(id.clone()).or_insert_with(|| id.clone());
        }
    }
    if options.mode == PruneMode::DryRun {
        for target in &mut targets {
            target.out.snapshots_resealed =
                resealed.iter().filter(|id| target.snapshots.contains_key(*id)).count() as u64;
        }
        return Ok(targets.into_iter().map(|t| t.out).collect());
    }
    for target in &mut targets {
        locks.confirm(target.repository.target.location()).await?;
        target.write_packs(keyring, progress).await?;
        target.write_indexes(keyring).await?;
    }
    // The copies, oldest first, each naming its predecessor's copy.
    let mut new_ids: HashMap<SnapshotId, SnapshotId> =
        copies.iter().map(|(old, copy)| (old.clone(), copy.id.clone())).collect();
    progress.phase("sealing snapshots again", Unit::Snapshots, Some(resealed.len() as u64));
    for old in resealed {
        progress.advance(1);
        for target in &mut targets {
            let Some((sealed, mut manifest)) = target.snapshots.get(&old).cloned() else { continue };
            if !copies.contains_key(&old) {
                let copy = SealedManifest::seal(&mut manifest, target.repository);
                copies.insert(old.clone(), copy);
            }
            let copy = &copies[&old];
            new_ids.insert(old.clone(), copy.id.clone());
            let repository = target.repository;
            if repository.target.size_of(&repo::snapshot_key(&copy.id)).await?.is_none() {
                let listing = target.listing(&sealed);
                let parent = sealed.header.parent.as_ref().map(|p| newest_copy(&new_ids, p));
                store_copy(repository, keyring, &sealed, copy, listing, parent).await?;
            }
            target.out.snapshots_resealed += 1;
            target.replaced.push((sealed.header.sequence, sealed.header.time, old.clone()));
        }
    }
    // Only now, with every copy stored, the replaced snapshots go.
    for target in &mut targets {
        locks.confirm(target.repository.target.location()).await?;
        target.delete_replaced().await;
    }
    Ok(targets.into_iter().map(|t| t.out).collect())
}

/// The id `id` has now: that of its copy, of the copy's copy (two interrupted runs), … or its own.
fn newest_copy(new_ids: &HashMap<SnapshotId, SnapshotId>, id: &SnapshotId) -> SnapshotId {
    let mut id = id;
    // Each copy is sealed after what it replaces, so the chain ends; bounded all the same.
    for _ in 0..new_ids.len() {
        match new_ids.get(id) {
            Some(next) if next != id => id = next,
            _ => break,
        }
    }
    id.clone()
}

/// Reads and opens every snapshot of `repository`: a snapshot that does not prove itself stops
/// the repack (it may need anything), one this identity cannot open pins its packs, and one
/// whose copy is present is replaced (its copy's manifest goes to `copies`).
async fn open_snapshots<'a>(
    repository: &'a Repository,
    keyring: &AdminKeyring,
    copies: &mut HashMap<SnapshotId, SealedManifest>,
    progress: &dyn Progress,
) -> Result<Repacking<'a>> {
    let mut repacking = Repacking {
        repository,
        out: Repacked { location: repository.target.location().to_string(), ..Repacked::default() },
        snapshots: HashMap::new(),
        replaced: Vec::new(),
        records: HashMap::new(),
        live: ChunkSet::default(),
        pinned: HashSet::new(),
        indexes: BTreeMap::new(),
        listed: HashSet::new(),
        chosen: BTreeSet::new(),
        merged: BTreeSet::new(),
        fresh: HashSet::new(),
        stale_indexes: HashSet::new(),
        new_packs_of: HashMap::new(),
        reused: HashMap::new(),
        index_of_pack: HashMap::new(),
        new_records: HashMap::new(),
        index_of: HashMap::new(),
        rewritten: HashMap::new(),
    };
    let ids = repository.snapshot_ids().await?;
    progress.phase(
        &format!("opening snapshots of {}", repository.target.location()),
        Unit::Snapshots,
        Some(ids.len() as u64),
    );
    let mut left: Vec<SealedSnapshot> = Vec::new();
    for id in ids {
        progress.advance(1);
        let sealed =
            repository.read_snapshot(&id).await.map_err(|error| crate::prune::unreadable(repository, &id, error))?;
        match sealed.open(keyring) {
            Ok(manifest) => {
                repacking.snapshots.insert(id, (sealed, manifest));
            }
            // Written before this identity was added: left as it is, with what it lists.
            Err(error @ (Error::BadKey(_) | Error::WrongIdentity { .. })) => {
                repacking.out.left.push((id, error.to_string()));
                left.push(sealed);
            }
            Err(error) => return Err(crate::prune::unreadable(repository, &id, error)),
        }
    }
    // A copy present (an earlier prune or re-encryption was killed before deleting what it
    // replaced): the old snapshot is replaced here, and the copy's manifest is the one every
    // target stores (registered even where the old one is gone: another target may still
    // hold it), so the new id is one.
    let copied: Vec<(SnapshotId, SnapshotId)> = repacking
        .snapshots
        .values()
        .filter_map(|(s, _)| s.header.replaces.clone().map(|old| (old, s.id.clone())))
        .collect();
    for (old, copy) in &copied {
        let (sealed, _) = &repacking.snapshots[copy];
        if !copies.contains_key(old) {
            copies.insert(old.clone(), sealed.sealed_manifest(keyring)?);
        }
    }
    for (old, copy) in copied {
        if let Some((sealed, _)) = repacking.snapshots.remove(&old) {
            let listed = repacking.snapshots[&copy].0.header.packs.iter().map(|p| p.id.clone());
            repacking.fresh.extend(listed);
            repacking.replaced.push((sealed.header.sequence, sealed.header.time, old));
        }
    }
    for sealed in &left {
        repacking.pinned.extend(sealed.header.packs.iter().map(|p| p.id.clone()));
    }
    // Opened, and the copies' manifests taken: their headers are all that is used from here.
    for (sealed, _) in repacking.snapshots.values_mut() {
        sealed.keep_header_only();
    }
    repacking.listed = repacking
        .snapshots
        .values()
        .flat_map(|(s, _)| s.header.packs.iter().map(|p| p.id.clone()))
        .chain(repacking.pinned.iter().cloned())
        .collect();
    Ok(repacking)
}

impl Repacking<'_> {
    /// Reads the indexes the snapshots list, finds the live chunks, and chooses the packs.
    async fn plan(&mut self, keyring: &AdminKeyring, max_unused: MaxUnused, progress: &dyn Progress) -> Result<()> {
        let repository = self.repository;
        let listed_indexes: BTreeSet<ObjectRef> =
            self.snapshots.values().flat_map(|(s, _)| s.header.indexes.iter().cloned()).collect();
        for index in &listed_indexes {
            let file = repository.read_listed_index(keyring, &repo::index_key(&index.id)).await?;
            let packs = file.packs.iter().map(|record| record.pack.id.clone()).collect();
            for record in file.packs {
                self.records.entry(record.pack.id.clone()).or_insert(record);
            }
            self.indexes.insert(index.id.clone(), (index.clone(), file.version, packs));
        }
        let listed_packs: BTreeSet<ObjectRef> =
            self.snapshots.values().flat_map(|(s, _)| s.header.packs.iter().cloned()).collect();
        self.out.packs_listed = listed_packs.len() as u64;
        for pack in &listed_packs {
            if !self.records.contains_key(&pack.id) {
                return Err(Error::corrupt(
                    repo::pack_key(&pack.id),
                    "no index a snapshot lists describes it; run verify",
                ));
            }
        }
        // Every chunk a remaining snapshot uses: its list chunks, and what they list.
        let keyring: &Keyring = keyring;
        // Of the packs they list only: a listed index also describes packs no snapshot lists any
        // more, pruned since, and a chunk stored again elsewhere (`backup --rewrite-budget`)
        // would be looked for in the first copy the index found.
        let indexes: Vec<ObjectRef> = listed_indexes.iter().cloned().collect();
        let packs: Vec<ObjectRef> = listed_packs.iter().cloned().collect();
        let index = repository.load_index(keyring, Some(&indexes), Some(&packs)).await?;
        let reader = ChunkReader::new(repository.target.clone(), keyring.clone(), Arc::new(index), 4);
        let mut live = ChunkSet::default();
        progress.phase(
            &format!("finding used chunks on {}", repository.target.location()),
            Unit::Snapshots,
            Some(self.snapshots.len() as u64),
        );
        // Newest first: the order merged chunks are laid out in is the newest snapshot's, then
        // what older ones add (a restore of the newest reads its tables front to back).
        let mut newest_first = oldest_first(self.snapshots.values().map(|(s, _)| s));
        newest_first.reverse();
        for id in &newest_first {
            progress.advance(1);
            let mut expanded = self.snapshots[id].1.clone();
            crate::fetch::expand_lists(&mut expanded, &reader).await?;
            for chunk in expanded.all_chunks() {
                live.insert(*chunk);
            }
        }
        drop(reader);
        // Packs an index older than format 6 describes hold their text unpacked; the indexes
        // repacking writes (format 7) say their packs hold packed text. Such packs and indexes
        // are left as they are (*Packed text*: text with a 0xFF byte would be misread).
        let legacy: HashSet<ObjectId> = self
            .indexes
            .values()
            .filter(|(_, version, _)| *version < repo::PACKED_BYTEA_VERSION)
            .flat_map(|(_, _, packs)| packs.iter().cloned())
            .collect();
        let candidates: Vec<&PackRecord> = listed_packs
            .iter()
            .filter(|p| !self.pinned.contains(&p.id) && !legacy.contains(&p.id))
            .map(|p| &self.records[&p.id])
            .collect();
        self.out.unused_bytes = candidates.iter().map(|r| unused_bytes(r, &live)).sum();
        (self.chosen, self.merged) = choose(&candidates, &live, max_unused, repository.config.pack_size, &self.fresh);
        for id in &self.chosen {
            let record = &self.records[id];
            self.out.packs_repacked += 1;
            self.out.packs_repacked_bytes += record.pack.size;
            self.out.freed_bytes += unused_bytes(record, &live);
        }
        self.stale_indexes = self
            .indexes
            .iter()
            .filter(|(_, (_, version, packs))| {
                *version >= repo::PACKED_BYTEA_VERSION && packs.iter().any(|pack| !self.stays(pack))
            })
            .map(|(id, _)| id.clone())
            .collect();
        // Which frames are copied: those with a used chunk, unless every used chunk of the frame
        // is in a pack that stays already (a copy an interrupted prune made lists it): then
        // the snapshots that listed the repacked pack list that one instead.
        // Only the used chunks of the chosen packs are looked for (a year of nights has millions
        // of chunks in the packs that stay).
        let mut wanted = ChunkSet::default();
        for id in &self.chosen {
            for chunk in self.records[id].chunks.iter().filter(|c| live.contains(&c.chunk())) {
                wanted.insert(chunk.chunk());
            }
        }
        let mut held: HashMap<ChunkId, &ObjectId> = HashMap::new();
        for (id, record) in &self.records {
            if self.listed.contains(id) && !self.chosen.contains(id) {
                for chunk in record.chunks.iter().filter(|c| wanted.contains(&c.chunk())) {
                    held.entry(chunk.chunk()).or_insert(id);
                }
            }
        }
        drop(wanted);
        let held: HashMap<ChunkId, ObjectId> = held.into_iter().map(|(chunk, id)| (chunk, id.clone())).collect();
        for (index, (_, _, packs)) in &self.indexes {
            for pack in packs {
                self.index_of_pack.entry(pack.clone()).or_insert_with(|| index.clone());
            }
        }
        for id in &self.chosen {
            let record = self.records.get_mut(id).expect("chosen from the records");
            let mut reused = BTreeSet::new();
            record.chunks = frames(record)
                .into_values()
                .filter(|chunks| {
                    let used: Vec<ChunkId> =
                        chunks.iter().map(ChunkLocation::chunk).filter(|c| live.contains(c)).collect();
                    if !used.is_empty() && used.iter().all(|c| held.contains_key(c)) {
                        reused.extend(used.iter().map(|c| held[c].clone()));
                        return false;
                    }
                    !used.is_empty()
                })
                .flatten()
                .collect();
            self.reused.insert(id.clone(), reused);
        }
        self.live = live;
        Ok(())
    }

    /// Whether a pack stays as it is: listed by a snapshot, and not repacked.
    fn stays(&self, pack: &ObjectId) -> bool {
        self.listed.contains(pack) && !self.chosen.contains(pack)
    }

    /// Whether snapshot `id` lists, here, a pack that is repacked or an index written again.
    fn lists_what_goes(&self, id: &SnapshotId) -> bool {
        self.snapshots.get(id).is_some_and(|(s, _)| {
            s.header.packs.iter().any(|p| self.chosen.contains(&p.id))
                || s.header.indexes.iter().any(|i| self.stale_indexes.contains(&i.id))
        })
    }

    /// Writes the live frames of the chosen packs into new packs, a dictionary at a time.
    async fn write_packs(&mut self, keyring: &Keyring, progress: &dyn Progress) -> Result<()> {
        let repository = self.repository;
        let recipients = repository.data_recipients();
        let pack_size = repository.config.pack_size;
        let mut by_dictionary: BTreeMap<Option<ObjectRef>, Vec<ObjectId>> = BTreeMap::new();
        for id in self.chosen.iter().filter(|id| !self.merged.contains(*id)) {
            by_dictionary.entry(self.records[id].dictionary.clone()).or_default().push(id.clone());
        }
        progress.phase(
            &format!("repacking {}", repository.target.location()),
            Unit::Objects,
            Some(self.chosen.len() as u64),
        );
        for (dictionary, packs) in by_dictionary {
            let mut pack = NewPack::default();
            let mut rewriter: Option<FrameRewriter> = None;
            for id in packs {
                progress.advance(1);
                let record = &self.records[&id];
                if record.chunks.is_empty() {
                    continue;
                }
                let key = repo::pack_key(&id);
                let plaintext = read_pack(repository, keyring, record).await?;
                for ((offset, length), chunks) in frames(record) {
                    let frame = frame_of(&key, &plaintext, offset, length)?;
                    if rewrites(&chunks, &self.live) {
                        let rewriter = match &mut rewriter {
                            Some(rewriter) => rewriter,
                            None => {
                                rewriter.insert(FrameRewriter::new(repository, keyring, dictionary.as_ref()).await?)
                            }
                        };
                        let (frame, chunks) = rewriter.rewrite(&key, frame, &chunks, &self.live)?;
                        pack.add(&frame, &chunks);
                        self.out.frames_recompressed += 1;
                    } else {
                        pack.add(frame, &chunks);
                    }
                    pack.from.insert(id.clone());
                    if pack.plaintext.len() >= pack_size {
                        self.store(std::mem::take(&mut pack), &recipients, dictionary.clone()).await?;
                    }
                }
            }
            if !pack.chunks.is_empty() {
                self.store(pack, &recipients, dictionary.clone()).await?;
            }
        }
        self.merge_small_packs(keyring, progress).await
    }

    /// Writes the live chunks of the small packs chosen to merge into full frames compressed
    /// without a dictionary, in new packs of the repository's pack size: their dictionaries and
    /// most of the small packs go. Two passes: every used chunk of those packs, proven, into a
    /// temporary file (packs read a dictionary at a time, so one decoder is held), then into
    /// frames in the newest snapshot's order, so that its tables lie front to back.
    async fn merge_small_packs(&mut self, keyring: &Keyring, progress: &dyn Progress) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let repository = self.repository;
        let recipients = repository.data_recipients();
        let pack_size = repository.config.pack_size;
        let mut packs: Vec<ObjectId> = self.merged.iter().cloned().collect();
        packs.sort_by(|a, b| (&self.records[a].dictionary, a).cmp(&(&self.records[b].dictionary, b)));
        let spill = |e: std::io::Error| Error::Internal(format!("repacking's temporary file: {e}"));
        let mut file = std::io::BufWriter::new(tempfile::tempfile().map_err(spill)?);
        let sealing = Keystream::new();
        let mut written = 0u64;
        // (place in the order, offset in the file, length, the old pack it came from); the
        // place names the chunk ([`ChunkSet::get`]). A year of nights merges millions of chunks.
        let mut gathered: Vec<(u32, u64, u32, u32)> = Vec::new();
        let mut seen = vec![0u64; self.live.len().div_ceil(64)];
        let place_of = |chunk: &ChunkId| {
            let place = self.live.position(chunk).expect("live chunks only");
            u32::try_from(place).map_err(|_| Error::Internal("over 4 billion chunks".into()))
        };
        // A chunk stored in several of the packs: every one of them names the new pack its one
        // copy goes to (a snapshot listing either must list that pack).
        let mut also_from: HashMap<ChunkId, Vec<usize>> = HashMap::new();
        let ids = keyring.chunk_id_key();
        let (mut scratch, mut text) = (Vec::new(), Vec::new());
        let mut decoder: Option<(ObjectId, crate::compress::DecompressionDictionary)> = None;
        for (from, id) in packs.iter().enumerate() {
            progress.advance(1);
            let record = &self.records[id];
            if record.chunks.is_empty() {
                continue;
            }
            let key = repo::pack_key(id);
            let plaintext = read_pack(repository, keyring, record).await?;
            let dictionary = match &record.dictionary {
                None => None,
                Some(reference) => {
                    if decoder.as_ref().is_none_or(|(held, _)| *held != reference.id) {
                        decoder =
                            Some((reference.id.clone(), read_dictionary(repository, keyring, reference).await?.0));
                    }
                    decoder.as_ref().map(|(_, d)| d)
                }
            };
            for ((offset, length), chunks) in frames(record) {
                let frame = frame_of(&key, &plaintext, offset, length)?;
                text.clear();
                let live = &self.live;
                for (chunk, raw, at) in
                    live_chunks(&key, frame, dictionary, &chunks, live, (&ids, &mut scratch, &mut text))?
                {
                    let place = place_of(&chunk)?;
                    let (word, bit) = (place as usize / 64, 1u64 << (place % 64));
                    if seen[word] & bit == 0 {
                        seen[word] |= bit;
                        let sealed = &mut text[at as usize..at as usize + raw as usize];
                        sealing.apply(written, sealed);
                        file.write_all(sealed).map_err(spill)?;
                        let from = u32::try_from(from).map_err(|_| Error::Internal("over 4 billion packs".into()))?;
                        gathered.push((place, written, raw, from));
                        written += u64::from(raw);
                    } else {
                        also_from.entry(chunk).or_default().push(from);
                    }
                }
            }
        }
        let file = file.into_inner().map_err(|e| spill(e.into_error()))?;
        drop(seen);
        gathered.sort_unstable_by_key(|&(place, ..)| place);
        // Frames of a pack's worth of text are compressed at once, one thread a core.
        let mut batch: Vec<MergedFrame> = vec![MergedFrame::default()];
        let mut batch_text = 0;
        let mut pack = NewPack::default();
        let mut buffer = Vec::new();
        let count = gathered.len();
        for (n, (place, at, raw, from)) in gathered.into_iter().enumerate() {
            let chunk = *self.live.get(place as usize).expect("a place in the order");
            let from = from as usize;
            buffer.resize(raw as usize, 0);
            file.read_exact_at(&mut buffer, at).map_err(spill)?;
            sealing.apply(at, &mut buffer);
            // Proven again: the file was out of this process's hands.
            if ids.id_of(&buffer) != chunk {
                return Err(Error::Internal(
                    "repacking's temporary file was changed while it ran; nothing was deleted".into(),
                ));
            }
            // A frame holds at most FRAME_CAPACITY of text (a chunk larger alone).
            if batch.last().is_some_and(|f| !f.text.is_empty() && f.text.len() + buffer.len() > FRAME_CAPACITY) {
                batch.push(MergedFrame::default());
            }
            let frame = batch.last_mut().expect("a frame being filled");
            let start =
                u32::try_from(frame.text.len()).map_err(|_| Error::Internal("a merged frame too large".into()))?;
            frame.text.extend_from_slice(&buffer);
            frame.chunks.push((chunk, raw, start));
            frame.from.insert(packs[from].clone());
            for other in also_from.remove(&chunk).into_iter().flatten() {
                frame.from.insert(packs[other].clone());
            }
            batch_text += buffer.len();
            let last = n + 1 == count;
            if batch_text >= pack_size || last {
                for (frame, chunks, from) in compress_frames(std::mem::take(&mut batch))? {
                    pack.add(&frame, &chunks);
                    pack.from.extend(from);
                    self.out.frames_recompressed += 1;
                    if pack.plaintext.len() >= pack_size {
                        self.store(std::mem::take(&mut pack), &recipients, None).await?;
                    }
                }
                batch.push(MergedFrame::default());
                batch_text = 0;
            }
        }
        if !pack.chunks.is_empty() {
            self.store(pack, &recipients, None).await?;
        }
        Ok(())
    }

    /// Encrypts and stores one new pack.
    async fn store(
        &mut self,
        pack: NewPack,
        recipients: &[age::x25519::Recipient],
        dictionary: Option<ObjectRef>,
    ) -> Result<()> {
        let ciphertext = bytes::Bytes::from(crypto::encrypt(recipients, &pack.plaintext));
        let reference = ObjectRef { id: ObjectId::of(&ciphertext), size: ciphertext.len() as u64 };
        self.repository.target.put_new(&repo::pack_key(&reference.id), ciphertext).await?;
        self.out.packs_written += 1;
        self.out.packs_written_bytes += reference.size;
        for old in pack.from {
            self.new_packs_of.entry(old).or_default().insert(reference.clone());
        }
        self.new_records.insert(reference.id.clone(), PackRecord { pack: reference, dictionary, chunks: pack.chunks });
        Ok(())
    }

    /// Writes the indexes of the new packs, then every listed index that describes a pack that
    /// goes again without it.
    async fn write_indexes(&mut self, keyring: &Keyring) -> Result<()> {
        let recipients = self.repository.metadata_recipients();
        let mac_key = keyring.index_mac_key();
        let mut records: Vec<PackRecord> = self.new_records.values().cloned().collect();
        records.sort_by(|a, b| a.pack.id.cmp(&b.pack.id));
        let mut batch: Vec<PackRecord> = Vec::new();
        let mut chunks = 0;
        for record in records {
            chunks += record.chunks.len();
            batch.push(record);
            if chunks >= INDEX_CHUNKS {
                self.store_index(std::mem::take(&mut batch), &recipients, &mac_key).await?;
                chunks = 0;
            }
        }
        if !batch.is_empty() {
            self.store_index(batch, &recipients, &mac_key).await?;
        }
        let mut rewritten = HashMap::new();
        for (id, (_, _, packs)) in &self.indexes {
            if !self.stale_indexes.contains(id) {
                continue;
            }
            let packs: Vec<PackRecord> =
                packs.iter().filter(|pack| self.stays(pack)).map(|pack| self.records[pack].clone()).collect();
            let replacement = if packs.is_empty() {
                None
            } else {
                let file = IndexFile { version: repo::FORMAT_VERSION, packs };
                let (key, index, bytes) = repo::seal_index(file, &recipients, &mac_key);
                self.repository.target.put_new(&key, bytes).await?;
                self.out.indexes_written += 1;
                Some(index)
            };
            rewritten.insert(id.clone(), replacement);
        }
        self.rewritten = rewritten;
        Ok(())
    }

    async fn store_index(
        &mut self,
        packs: Vec<PackRecord>,
        recipients: &[age::x25519::Recipient],
        mac_key: &crypto::MacKey,
    ) -> Result<()> {
        let ids: Vec<ObjectId> = packs.iter().map(|r| r.pack.id.clone()).collect();
        let file = IndexFile { version: repo::FORMAT_VERSION, packs };
        let (key, index, bytes) = repo::seal_index(file, recipients, mac_key);
        self.repository.target.put_new(&key, bytes).await?;
        self.out.indexes_written += 1;
        for id in ids {
            self.index_of.insert(id, index.clone());
        }
        Ok(())
    }

    /// What the copy of `sealed` lists here: its packs that stay, the new packs its repacked
    /// ones went to, the indexes describing them, and their dictionaries.
    fn listing(&self, sealed: &SealedSnapshot) -> Listing {
        let mut listing = Listing::default();
        for pack in &sealed.header.packs {
            if self.chosen.contains(&pack.id) {
                for new in self.new_packs_of.get(&pack.id).into_iter().flatten() {
                    listing.packs.insert(new.clone());
                    listing.indexes.insert(self.index_of[&new.id].clone());
                    listing.dictionaries.extend(self.new_records[&new.id].dictionary.clone());
                }
                for other in self.reused.get(&pack.id).into_iter().flatten() {
                    let record = &self.records[other];
                    listing.packs.insert(record.pack.clone());
                    listing.dictionaries.extend(record.dictionary.clone());
                    let index = &self.index_of_pack[other];
                    match self.rewritten.get(index) {
                        Some(Some(new)) => listing.indexes.insert(new.clone()),
                        _ => listing.indexes.insert(self.indexes[index].0.clone()),
                    };
                }
            } else {
                listing.packs.insert(pack.clone());
                if let Some(record) = self.records.get(&pack.id) {
                    listing.dictionaries.extend(record.dictionary.clone());
                }
            }
        }
        for index in &sealed.header.indexes {
            match self.rewritten.get(&index.id) {
                Some(Some(new)) => {
                    listing.indexes.insert(new.clone());
                }
                Some(None) => {}
                None => {
                    listing.indexes.insert(index.clone());
                }
            }
        }
        // A pack no index here describes (never: the plan checked) keeps its dictionaries listed.
        if sealed.header.packs.iter().any(|p| !self.records.contains_key(&p.id)) {
            listing.dictionaries.extend(sealed.header.dictionaries.iter().cloned());
        }
        listing
    }

    /// Deletes the snapshot objects whose copies are stored, newest first: killed part-way, the
    /// old snapshots left are the oldest, each naming a predecessor still present (an old
    /// one's successor that is gone was replaced by a copy, which names copies), so the chain
    /// `verify` checks has no gap.
    async fn delete_replaced(&mut self) {
        self.replaced.sort();
        self.replaced.dedup();
        for (_, _, id) in std::mem::take(&mut self.replaced).into_iter().rev() {
            let key = repo::snapshot_key(&id);
            match self.repository.target.delete(&key).await {
                Ok(()) => self.out.snapshots_deleted += 1,
                Err(error) => self.out.not_deleted.push((key, error.to_string())),
            }
        }
    }
}

/// zstd level of frames compressed again: an admin's occasional job over little text, as a
/// backup's increments (`backup::compress::STRONG_LEVEL`).
const REWRITE_LEVEL: i32 = 12;
/// zstd level of merged frames (full frames, no dictionary). On the 120-night benchmark
/// (BENCHMARKS.md, session 25) the repository after housekeeping was 1.094× the kept-only one
/// at level 3, 1.047× at 5, 1.020× at 6 and 0.975× at 12, and the repacking prune took 3.7,
/// 4.4, 5.3 and 10.4 s: 5 keeps the goal (1.1×) with room and the prune under restic's.
const MERGE_LEVEL: i32 = 5;

/// The text a backup puts in one frame (`backup::encode::FRAME_BYTES`): what a dictionary's
/// tables are laid out for (larger text compresses from where it is).
const FRAME_CAPACITY: usize = 512 * 1024;

/// More text than any frame holds (a backup's are at most [`FRAME_CAPACITY`], a chunk at most
/// a few MiB): an index that says otherwise is not followed.
const MAX_FRAME_TEXT: usize = 64 << 20;

/// Compresses frames again with their live chunks alone, with one dictionary (or none).
struct FrameRewriter {
    decoding: Option<crate::compress::DecompressionDictionary>,
    encoding: Option<crate::compress::FrameDictionary>,
    compressor: crate::compress::ChunkCompressor,
    ids: crypto::ChunkIdKey,
    text: Vec<u8>,
    kept: Vec<u8>,
    packed: Vec<u8>,
}

/// A pack's plaintext, its size and name checked (an admin decrypts every pack).
async fn read_pack(repository: &Repository, keyring: &Keyring, record: &PackRecord) -> Result<Vec<u8>> {
    let key = repo::pack_key(&record.pack.id);
    let ciphertext = repository.target.get_at_most(&key, record.pack.size).await?;
    if ciphertext.len() as u64 != record.pack.size {
        return Err(Error::corrupt(&key, format!("size is {} bytes, expected {}", ciphertext.len(), record.pack.size)));
    }
    repo::check_object_name(&key, &ciphertext)?;
    keyring.decrypt(&key, &ciphertext)
}

/// The frame at `offset` (`length` bytes) of pack `key`'s plaintext.
fn frame_of<'p>(key: &str, plaintext: &'p [u8], offset: u64, length: u32) -> Result<&'p [u8]> {
    let end = offset.checked_add(u64::from(length)).filter(|end| *end <= plaintext.len() as u64);
    let Some(end) = end else {
        return Err(Error::corrupt(key, "a frame reaches past the pack's end; run verify"));
    };
    #[expect(clippy::cast_possible_truncation, reason = "within the plaintext, checked above")]
    Ok(&plaintext[offset as usize..end as usize])
}

/// Reads `reference` (an admin reads every dictionary): laid out for decoding, and its bytes.
async fn read_dictionary(
    repository: &Repository,
    keyring: &Keyring,
    reference: &ObjectRef,
) -> Result<(crate::compress::DecompressionDictionary, Vec<u8>)> {
    let key = repo::dictionary_key(&reference.id);
    let ciphertext = repository.target.get_at_most(&key, reference.size).await?;
    repo::check_object_name(&key, &ciphertext)?;
    let bytes = crate::compress::dictionary_bytes(&keyring.decrypt(&key, &ciphertext)?)
        .ok_or_else(|| Error::corrupt(&key, "is not a zstd dictionary"))?;
    let decoding = crate::compress::DecompressionDictionary::new(&bytes)
        .ok_or_else(|| Error::corrupt(&key, "is not a zstd dictionary"))?;
    Ok((decoding, bytes))
}

/// The live chunks of `frame` (packed text, decoded with `dictionary`), each proven against
/// its id, appended to `text`: (id, length, start in `text`).
fn live_chunks(
    key: &str,
    frame: &[u8],
    dictionary: Option<&crate::compress::DecompressionDictionary>,
    chunks: &[ChunkLocation],
    live: &ChunkSet,
    (ids, scratch, text): (&crypto::ChunkIdKey, &mut Vec<u8>, &mut Vec<u8>),
) -> Result<Vec<(ChunkId, u32, u32)>> {
    let limit = chunks.iter().map(|c| c.start() as usize + c.raw_length() as usize).max().unwrap_or(0);
    if limit > MAX_FRAME_TEXT {
        return Err(Error::corrupt(key, "its index gives a frame more text than any backup writes; run verify"));
    }
    scratch.clear();
    let coding = crate::compress::FrameCoding { dictionary, packed: true };
    coding
        .decode_onto(frame, limit, scratch)
        .map_err(|e| Error::corrupt(key, format!("a frame does not decompress ({e}); run verify --read-data")))?;
    let mut kept = Vec::new();
    for chunk in chunks.iter().filter(|c| live.contains(&c.chunk())) {
        let start = chunk.start() as usize;
        let data =
            scratch.get(start..start + chunk.raw_length() as usize).filter(|data| ids.id_of(data) == chunk.chunk());
        let Some(data) = data else {
            return Err(Error::corrupt(key, "a chunk does not match its id; run verify --read-data"));
        };
        let at = u32::try_from(text.len()).map_err(|_| Error::corrupt(key, "a frame too large"))?;
        text.extend_from_slice(data);
        kept.push((chunk.chunk(), chunk.raw_length(), at));
    }
    Ok(kept)
}

/// What repacking writes to its temporary file, XORed with BLAKE3's output under a key drawn
/// for this run and held in memory only (from the byte's place in the file on): the used text
/// of the merged packs, which is row data, never reaches the disk in the clear.
struct Keystream {
    key: [u8; 32],
}

impl Keystream {
    fn new() -> Keystream {
        Keystream { key: rand::random() }
    }

    /// Seals or opens `data`, which lies at `offset` in the file.
    fn apply(&self, offset: u64, data: &mut [u8]) {
        let mut stream = blake3::Hasher::new_keyed(&self.key).finalize_xof();
        stream.set_position(offset);
        let mut pad = [0u8; 4096];
        for part in data.chunks_mut(pad.len()) {
            let pad = &mut pad[..part.len()];
            stream.fill(pad);
            part.iter_mut().zip(pad.iter()).for_each(|(byte, key)| *byte ^= key);
        }
    }
}

/// A frame of merged chunks being filled: their text, (id, length, start), the old packs.
#[derive(Default)]
struct MergedFrame {
    text: Vec<u8>,
    chunks: Vec<(ChunkId, u32, u32)>,
    from: BTreeSet<ObjectId>,
}

/// `frames` compressed at [`MERGE_LEVEL`], on one thread a core, in their order.
#[allow(clippy::type_complexity)]
fn compress_frames(frames: Vec<MergedFrame>) -> Result<Vec<(Vec<u8>, Vec<ChunkLocation>, BTreeSet<ObjectId>)>> {
    let frames: Vec<MergedFrame> = frames.into_iter().filter(|f| !f.chunks.is_empty()).collect();
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get).min(frames.len()).max(1);
    let share = frames.len().div_ceil(threads).max(1);
    let compressed: Vec<Result<Vec<(Vec<u8>, Vec<ChunkLocation>)>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = frames
            .chunks(share)
            .map(|part| {
                scope.spawn(move || {
                    let (mut compressor, mut packed) = (crate::compress::ChunkCompressor::default(), Vec::new());
                    part.iter()
                        .map(|f| {
                            let encoding = Encoding::Level(MERGE_LEVEL);
                            compress_frame(
                                "a merged frame",
                                &f.text,
                                &f.chunks,
                                encoding,
                                (&mut compressor, &mut packed),
                            )
                        })
                        .collect()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("compressing does not panic")).collect()
    });
    let mut out = Vec::with_capacity(frames.len());
    for (part, done) in frames.chunks(share).zip(compressed) {
        for (frame, (bytes, chunks)) in part.iter().zip(done?) {
            out.push((bytes, chunks, frame.from.clone()));
        }
    }
    Ok(out)
}

/// How a frame is compressed: with a dictionary, or without one at a level.
enum Encoding<'e> {
    Dictionary(&'e mut crate::compress::FrameDictionary),
    Level(i32),
}

/// Text packed and compressed as one frame, without a dictionary or with `encoding`; where each
/// chunk lies in it (offsets 0: [`NewPack::add`] places the frame).
fn compress_frame(
    key: &str,
    text: &[u8],
    chunks: &[(ChunkId, u32, u32)],
    encoding: Encoding<'_>,
    (compressor, packed): (&mut crate::compress::ChunkCompressor, &mut Vec<u8>),
) -> Result<(Vec<u8>, Vec<ChunkLocation>)> {
    packed.clear();
    crate::compress::bytea::pack(text, packed);
    let compressed = match encoding {
        Encoding::Dictionary(dictionary) => dictionary.compress(compressor, packed),
        Encoding::Level(level) => compressor.compress(packed, level, None),
    };
    let length = u32::try_from(compressed.len()).map_err(|_| Error::corrupt(key, "a frame too large"))?;
    let chunks = chunks.iter().map(|(id, raw, start)| ChunkLocation::in_frame(*id, 0, length, *raw, *start)).collect();
    Ok((compressed, chunks))
}

impl FrameRewriter {
    /// Reads `dictionary` (an admin reads every dictionary) and lays it out for both ways.
    async fn new(repository: &Repository, keyring: &Keyring, dictionary: Option<&ObjectRef>) -> Result<FrameRewriter> {
        let (decoding, encoding) = match dictionary {
            None => (None, None),
            Some(reference) => {
                let (decoding, bytes) = read_dictionary(repository, keyring, reference).await?;
                let key = repo::dictionary_key(&reference.id);
                let encoding = crate::compress::FrameDictionary::new(&bytes, REWRITE_LEVEL, FRAME_CAPACITY)
                    .ok_or_else(|| Error::corrupt(&key, "zstd cannot compress with this dictionary"))?;
                (Some(decoding), Some(encoding))
            }
        };
        Ok(FrameRewriter {
            decoding,
            encoding,
            compressor: crate::compress::ChunkCompressor::default(),
            ids: keyring.chunk_id_key(),
            text: Vec::new(),
            kept: Vec::new(),
            packed: Vec::new(),
        })
    }

    /// The frame `frame` of pack `key` (packed text, format 6 on) with only its `live` chunks,
    /// each proven against its id, compressed again; and where its chunks now lie in it
    /// (offsets 0: [`NewPack::add`] places the frame).
    fn rewrite(
        &mut self,
        key: &str,
        frame: &[u8],
        chunks: &[ChunkLocation],
        live: &ChunkSet,
    ) -> Result<(Vec<u8>, Vec<ChunkLocation>)> {
        self.kept.clear();
        let kept =
            live_chunks(key, frame, self.decoding.as_ref(), chunks, live, (&self.ids, &mut self.text, &mut self.kept))?;
        let encoding = self.encoding.as_mut().map_or(Encoding::Level(REWRITE_LEVEL), Encoding::Dictionary);
        compress_frame(key, &self.kept, &kept, encoding, (&mut self.compressor, &mut self.packed))
    }
}

/// A new pack being filled: its plaintext, its chunks, and the old packs its frames came from.
#[derive(Default)]
struct NewPack {
    plaintext: Vec<u8>,
    chunks: Vec<ChunkLocation>,
    from: BTreeSet<ObjectId>,
}

impl NewPack {
    /// Appends one frame with its chunks (their places in the frame unchanged).
    fn add(&mut self, frame: &[u8], chunks: &[ChunkLocation]) {
        let offset = self.plaintext.len() as u64;
        self.plaintext.extend_from_slice(frame);
        self.chunks.extend(
            chunks.iter().map(|c| ChunkLocation::in_frame(c.chunk(), offset, c.length(), c.raw_length(), c.start())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> ChunkId {
        ChunkId([n; crypto::CHUNK_ID_BYTES])
    }

    /// A pack of `size` bytes whose frames are `frames` (compressed length, chunk numbers).
    fn record(name: &str, size: u64, dictionary: Option<&str>, frames: &[(u32, &[u8])]) -> PackRecord {
        let mut chunks = Vec::new();
        let mut offset = 0;
        for (length, ids) in frames {
            let mut start = 0;
            for id in *ids {
                chunks.push(ChunkLocation::in_frame(chunk(*id), offset, *length, 10, start));
                start += 10;
            }
            offset += u64::from(*length);
        }
        let object = |n: &str| ObjectRef { id: ObjectId::of(n.as_bytes()), size };
        PackRecord { pack: object(name), dictionary: dictionary.map(object), chunks }
    }

    #[test]
    fn the_merge_file_holds_no_text_in_the_clear_and_each_piece_opens_at_its_place() {
        let sealing = Keystream::new();
        let text: Vec<u8> = b"alice@example.com\t+1 555 0100\n".repeat(300);
        let mut sealed = text.clone();
        sealing.apply(7, &mut sealed);
        assert!(!sealed.windows(17).any(|w| w == b"alice@example.com"), "row text in the clear");
        // Sealed whole, opened in pieces at their places (as chunks are read back).
        let (head, tail) = sealed.split_at_mut(5000);
        sealing.apply(7, head);
        sealing.apply(7 + 5000, tail);
        assert_eq!(sealed, text);
        // Another run's key opens nothing.
        let mut other = text.clone();
        Keystream::new().apply(7, &mut other);
        sealing.apply(7, &mut other);
        assert_ne!(other, text);
    }

    #[test]
    fn a_predecessor_copied_twice_is_named_by_its_newest_copy() {
        let id = |n: &str| SnapshotId::of(n.as_bytes());
        let new_ids = HashMap::from([(id("s"), id("c")), (id("c"), id("c2")), (id("t"), id("t"))]);
        assert_eq!(newest_copy(&new_ids, &id("s")), id("c2"));
        assert_eq!(newest_copy(&new_ids, &id("t")), id("t"));
        assert_eq!(newest_copy(&new_ids, &id("u")), id("u"));
    }

    #[test]
    fn max_unused_reads_a_percentage_with_or_without_its_sign_and_refuses_the_rest() {
        assert_eq!("5%".parse::<MaxUnused>().unwrap(), MaxUnused(5.0));
        assert_eq!("12.5".parse::<MaxUnused>().unwrap(), MaxUnused(12.5));
        assert_eq!(" 0 % ".parse::<MaxUnused>().unwrap(), MaxUnused(0.0));
        for bad in ["", "%", "101", "-1", "five", "5%%", "NaN"] {
            let error = bad.parse::<MaxUnused>().unwrap_err().to_string();
            assert!(error.contains("percentage from 0 to 100"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_frame_mostly_used_is_copied_one_mostly_unused_compressed_again_and_one_unused_dropped() {
        // Chunks of 10 bytes of text each.
        let pack = record("p", 300, None, &[(100, &[1, 2]), (200, &[3])]);
        // Half of the first frame's text is unused: compressed again, freeing about half.
        assert_eq!(unused_bytes(&pack, &ChunkSet::from_iter([chunk(2)])), 200 + 50);
        assert_eq!(unused_bytes(&pack, &ChunkSet::from_iter([chunk(3)])), 100);
        assert_eq!(unused_bytes(&pack, &ChunkSet::default()), 300);
        // A fifth unused: copied as it is.
        let mostly = record("q", 100, None, &[(100, &[1, 2, 3, 4, 5])]);
        let four: ChunkSet = (1..=4).map(chunk).collect();
        assert_eq!(unused_bytes(&mostly, &four), 0);
        assert!(!rewrites(&mostly.chunks, &four));
        assert!(rewrites(&mostly.chunks, &ChunkSet::from_iter([chunk(5)])));
        assert!(!rewrites(&mostly.chunks, &ChunkSet::default()));
    }

    #[test]
    fn a_frame_compressed_again_holds_its_live_chunks_proven_and_nothing_else() {
        let keyring = Keyring::for_tests();
        let ids = keyring.chunk_id_key();
        let texts: [&[u8]; 3] =
            [b"first chunk \\\\x00ff00ff00ff00ff00ff00ff00ff00ff00ff", b"second \xff", b"third one"];
        let mut text = Vec::new();
        let mut chunks = Vec::new();
        for data in texts {
            let (length, start) = (u32::try_from(data.len()).unwrap(), u32::try_from(text.len()).unwrap());
            chunks.push(ChunkLocation::in_frame(ids.id_of(data), 0, 0, length, start));
            text.extend_from_slice(data);
        }
        let mut packed = Vec::new();
        crate::compress::bytea::pack(&text, &mut packed);
        let frame = crate::compress::ChunkCompressor::default().compress(&packed, 3, None);
        let mut rewriter = FrameRewriter {
            decoding: None,
            encoding: None,
            compressor: crate::compress::ChunkCompressor::default(),
            ids: ids.clone(),
            text: Vec::new(),
            kept: Vec::new(),
            packed: Vec::new(),
        };
        let live = ChunkSet::from_iter([chunks[0].chunk(), chunks[2].chunk()]);
        let (again, kept) = rewriter.rewrite("data/p", &frame, &chunks, &live).expect("rewritten");
        assert_eq!(
            kept.iter().map(ChunkLocation::chunk).collect::<Vec<_>>(),
            vec![chunks[0].chunk(), chunks[2].chunk()]
        );
        let mut decoded = Vec::new();
        let coding = crate::compress::FrameCoding { dictionary: None, packed: true };
        coding.decode_onto(&again, 1 << 20, &mut decoded).expect("decodes");
        assert_eq!(decoded, [texts[0], texts[2]].concat());
        for (location, data) in kept.iter().zip([texts[0], texts[2]]) {
            assert_eq!(location.length() as usize, again.len());
            let at = location.start() as usize;
            assert_eq!(&decoded[at..at + location.raw_length() as usize], data);
        }
        // A chunk whose text is not what its id says is refused, not carried on.
        let mut wrong = chunks.clone();
        wrong[2] = ChunkLocation::in_frame(ids.id_of(b"other"), 0, 0, chunks[2].raw_length(), chunks[2].start());
        let error =
            rewriter.rewrite("data/p", &frame, &wrong, &ChunkSet::from_iter([wrong[2].chunk()])).expect_err("refused");
        assert!(error.to_string().contains("does not match its id"), "{error}");
    }

    #[test]
    fn packs_over_the_threshold_are_chosen_and_small_ones_only_in_numbers() {
        let pack_size: usize = 8 << 20;
        let mostly_used = record("a", 1030, None, &[(1000, &[1]), (30, &[2])]);
        let much_unused = record("b", 1100, None, &[(1000, &[3]), (100, &[4])]);
        let live = ChunkSet::from_iter([chunk(1), chunk(3)]);
        let (chosen, merged) = choose(&[&mostly_used, &much_unused], &live, MaxUnused(5.0), pack_size, &HashSet::new());
        assert_eq!(chosen, BTreeSet::from([much_unused.pack.id.clone()]));
        assert!(merged.is_empty(), "two small packs are not worth merging");
        // Three small packs stay; a fourth makes them worth merging, whatever their
        // dictionaries; at 100% nothing is repacked.
        let small: Vec<PackRecord> = (0..5)
            .map(|n| record(&format!("s{n}"), 1000, Some(&format!("d{}", n % 2)), &[(1000, &[10 + n])]))
            .collect();
        let live: ChunkSet = (10..14).map(chunk).collect();
        let three: Vec<&PackRecord> = small.iter().take(3).collect();
        assert_eq!(
            choose(&three, &live, MaxUnused(50.0), pack_size, &HashSet::new()),
            (BTreeSet::new(), BTreeSet::new())
        );
        let five: Vec<&PackRecord> = small.iter().collect();
        assert_eq!(
            choose(&five, &live, MaxUnused(100.0), pack_size, &HashSet::new()),
            (BTreeSet::new(), BTreeSet::new())
        );
        let (chosen, merged) = choose(&five, &live, MaxUnused(50.0), pack_size, &HashSet::new());
        assert_eq!(merged.len(), 4, "the unused one is not merged (it is repacked: over the threshold)");
        assert!(!merged.contains(&small[4].pack.id) && chosen.contains(&small[4].pack.id));
        // Packs an interrupted repack wrote are not merged again.
        let fresh = HashSet::from([small[0].pack.id.clone()]);
        assert_eq!(choose(&five, &live, MaxUnused(50.0), pack_size, &fresh).1.len(), 0, "three left");
    }
}
