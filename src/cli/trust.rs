//! The CLI's trust policy: which pin a command needs, where it comes from, and what happens
//! without one (docs/FORMAT.md, *Trust*; the library's side is `crmvault::trust`).
//!
//! - The backup host (writer key) needs the pin `init` left in the config folder and refuses a
//!   repository whose config changed since. A repository made by a build before format 7 has
//!   none: it is pinned on first use, with a warning that prints the fingerprint to compare.
//! - An admin command (an identity given) needs the fingerprint: `--fingerprint` /
//!   `CRMVAULT_FINGERPRINT`, or the one remembered from an earlier use on this machine. Without
//!   either it refuses: trusting on first use would trust a forged repository exactly when one is
//!   most likely (a fresh machine after an incident), and the fingerprint is one short string
//!   kept beside the identity.
//! - A keyless command checks what it is given or has remembered, and needs nothing.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crmvault::repo::{self, Repository};
use crmvault::repo_set::RepoSet;
use crmvault::trust::{self, Fingerprint, Pin, SnapshotMark};

/// How a command relies on the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Writes with the writer key (backup) or reads with it (snapshots, verify on the host).
    Writer,
    /// Reads with an admin identity.
    Admin,
    /// Reads what anyone may (ids, sizes, hashes).
    Keyless,
}

/// The role a reading command plays: admin with an identity, writer where this host holds the
/// writer key, keyless otherwise.
pub fn reading_role(repository: &Repository, identity: Option<&Path>, config_dir: &Path) -> Role {
    if identity.is_some() {
        Role::Admin
    } else if repo::writer_key_path(config_dir, &repository.config.id).exists() {
        Role::Writer
    } else {
        Role::Keyless
    }
}

/// A repository checked against its pin, and the pin, to raise its high-water mark.
pub struct Trusted {
    pin: Option<Pin>,
    config_dir: PathBuf,
}

impl Trusted {
    /// The newest snapshot this machine wrote or authenticated.
    pub fn newest(&self) -> Option<SnapshotMark> {
        self.pin.as_ref().and_then(|pin| pin.newest.clone())
    }

    /// The snapshots earlier backups here found no newer than [`Self::newest`].
    pub fn settled(&self) -> std::collections::BTreeSet<crmvault::repo::SnapshotId> {
        self.pin.as_ref().map(|pin| pin.settled.clone()).unwrap_or_default()
    }

    /// After a backup (`report`): its snapshot is the newest, the next backup need not look
    /// again at `settled`, and the pin notes which targets it missed and which it recorded
    /// missed snapshots on (saved in one replacement of the pin, made on the pin as it is on
    /// disk now: a backup that waited for the lock started from an older one).
    pub fn backed_up(&mut self, report: &crmvault::backup::BackupReport) -> Result<()> {
        let Some(pin) = self.pin.as_mut() else { return Ok(()) };
        trust::update_pin(&self.config_dir, pin, |pin| {
            // The new snapshot follows the mark, so the mark moves (a record made against
            // another mark is not kept).
            if pin.advance(&report.mark()) {
                pin.settled.clone_from(&report.settled);
            }
            let targets = report.targets.iter().map(|t| (t.location.as_str(), t.ok, t.recorded_missed.as_slice()));
            pin.note_backup(targets, &report.as_missed());
            true
        })
        .map_err(Into::into)
    }

    /// What earlier backups here stored on other targets but not at `location`.
    pub fn missed_at(&self, location: &str) -> Vec<crmvault::repo::ForgottenSnapshot> {
        self.pin.as_ref().map(|pin| trust::missed_at(&pin.missed, location)).unwrap_or_default()
    }

    /// What earlier backups here stored on other targets but not on these.
    pub fn missed(&self) -> std::collections::BTreeMap<String, Vec<crmvault::repo::ForgottenSnapshot>> {
        self.pin.as_ref().map(|pin| pin.missed.clone()).unwrap_or_default()
    }

    /// Moves the pin to the generation `config_hash` (after `rekey` on this machine).
    pub fn follow(&mut self, config_hash: &str) -> Result<()> {
        if let Some(pin) = self.pin.as_mut()
            && pin.config_hash != config_hash
        {
            // From the generation this command opened only: another command here may have
            // followed a later rekey meanwhile, and the pin never goes back.
            let opened = pin.config_hash.clone();
            trust::update_pin(&self.config_dir, pin, |pin| {
                let follows = pin.config_hash == opened;
                if follows {
                    config_hash.clone_into(&mut pin.config_hash);
                    pin.pending = None;
                    // Published by this machine's rekey (which builds on no generation it
                    // cannot vouch for that added a key it keeps).
                    pin.vouched = Some(config_hash.to_string());
                    pin.unchecked = None;
                }
                follows
            })?;
        }
        Ok(())
    }

    /// Before `rekey` publishes `next` on any target: the pin names it as the one successor of
    /// the pinned generation to follow ([`Pin::pending`]), so that the rekey, interrupted and
    /// run again, finishes this generation and follows no other. Refused when the pin is not at
    /// the generation `next` succeeds (another command here followed another meanwhile).
    pub fn publishing(&mut self, next: &crmvault::repo::NextGeneration) -> crmvault::Result<()> {
        let Some(pin) = self.pin.as_mut() else { return Ok(()) };
        let mut at_previous = true;
        trust::update_pin(&self.config_dir, pin, |pin| {
            at_previous = next.config.previous.as_ref() == Some(&pin.config_hash);
            let changed = at_previous && pin.pending.as_ref() != Some(&next.hash);
            if changed {
                pin.pending = Some(next.hash.clone());
            }
            changed
        })?;
        if !at_previous {
            return Err(crmvault::Error::Invalid(format!(
                "this machine's pin of repository {} moved to another generation while this rekey ran; nothing \
                 was published: run it again",
                pin.repository_id
            )));
        }
        Ok(())
    }

    /// Remembers `mark` if it is newer than what the pin holds.
    pub fn advance(&mut self, mark: Option<&SnapshotMark>) -> Result<()> {
        // The mark on disk only moves forward (under the folder's lock): not newer than the one
        // this command opened with, not newer than it.
        if let (Some(pin), Some(mark)) = (self.pin.as_mut(), mark)
            && pin.would_advance(mark)
        {
            trust::update_pin(&self.config_dir, pin, |pin| pin.advance(mark))?;
        }
        Ok(())
    }
}

/// Checks every repository (copies of one) against the pin `role` needs; refuses with one line
/// naming what did not match and what to do. A repository whose chain of generations (from its
/// `config`) does not hold the generation the pin or fingerprint names is opened again at that
/// generation (a `config` replaced in storage hides nothing a pin knows). Pins follow `rekey`:
/// a pinned generation that the repository's newest one descends from moves the pin there.
pub async fn check(
    repositories: &mut [Repository],
    role: Role,
    given: Option<&Fingerprint>,
    config_dir: &Path,
) -> Result<Trusted> {
    check_with(repositories, role, given, config_dir, Mode::default()).await
}

/// [`check`] for commands that go on with the copies of one repository they can use (backup,
/// restore, drill, forget), after [`leave_out_failing`].
pub async fn check_available(
    set: &mut RepoSet,
    role: Role,
    given: Option<&Fingerprint>,
    config_dir: &Path,
) -> Result<Trusted> {
    leave_out_failing(set, |_| role, given, config_dir, Copies::OfOne).await;
    // Copies of one repository, or nothing is checked (nor a pin written) for them.
    set.require_one_repository().map_err(|error| with_left_out(error.into(), set))?;
    check(set.repositories_mut(), role, given, config_dir).await.map_err(|error| with_left_out(error, set))
}

/// Refuses `repository` where this machine opened another repository at its place before: it
/// was forged or replaced in storage.
fn refuse_replaced(repository: &Repository, config_dir: &Path) -> Result<()> {
    let location = repository.target.location();
    if let Some(other) = trust::pin_of_location(config_dir, location, &repository.config.id)? {
        bail!(
            "{location} held repository {} (fingerprint {}) when this machine last opened it, and now claims to be \
             repository {} (fingerprint {}): it was forged or replaced in storage; nothing was read from it",
            other.repository_id,
            other.fingerprint,
            repository.config.id,
            repository.fingerprint()
        );
    }
    Ok(())
}

/// [`RepoSet::require_one_repository`] for commands that need every copy given (ls, a repacking
/// prune): a copy this machine knew as another repository's place is named as replaced in
/// storage, not as a repository given by mistake.
pub fn require_one_repository(set: &RepoSet, config_dir: &Path) -> Result<()> {
    let Err(error) = set.require_one_repository() else { return Ok(()) };
    for repository in set.repositories() {
        refuse_replaced(repository, config_dir)?;
    }
    Err(error.into())
}

/// What the copies given to a command are meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copies {
    /// Copies of one repository (backup, restore, forget): one that claims another id than the
    /// anchor's is not one of them.
    OfOne,
    /// Repositories each checked on its own (verify), which may be several.
    Each,
}

/// `error` of the copies that stayed, with why the others were left out before it.
pub fn with_left_out(error: anyhow::Error, set: &RepoSet) -> anyhow::Error {
    if set.left_out().is_empty() {
        return error;
    }
    let left_out: Vec<String> =
        set.left_out().iter().map(|l| format!("{} left out: {}", l.location, l.reason)).collect();
    error.context(format!("{}; and then", left_out.join("; ")))
}

/// Of several copies, leaves out ([`RepoSet::left_out`], for the caller to say) each one that
/// fails its own check as `role_of` it needs, against this machine's pin or the fingerprint
/// given: its `config` changed in storage with no `configs/` copy of the pinned generation
/// left, another repository copied there, a place new to a machine of several pins; and, of
/// `Copies::OfOne`, one that claims another repository than the anchor. Whoever can write one
/// target's storage must not stop the commands that go on with the others.
///
/// Only against an anchor: a fingerprint given, or a copy that passes alone against a pin
/// already on this machine that knows its place. A copy that passes through a pin made on first
/// use, or one new to its pin, is storage's word: on a host that lost its pin, a storage writer
/// could present one as a repository made before pins and have it pinned in place of the real
/// one; without an anchor nothing is left out. What only the copies together show (two that
/// part in a fork, one behind another's generation), a fork inside one copy (a signing key's
/// work) and a failure of every copy are left for the check of the copies together to refuse.
pub async fn leave_out_failing(
    set: &mut RepoSet,
    role_of: impl Fn(&Repository) -> Role,
    given: Option<&Fingerprint>,
    config_dir: &Path,
    copies: Copies,
) {
    if !set.several() {
        return;
    }
    let mut checked = Vec::with_capacity(set.repositories().len());
    let mut anchors: Vec<String> = Vec::new();
    for repository in set.repositories_mut().iter_mut() {
        // Alone, against the pin as it is on disk: its failure is its own, not another copy's
        // (a pin made or moved by this run for another copy plays no part).
        let role = role_of(repository);
        let mut alone = repository.clone();
        let dry = Mode { dry: true, ..Mode::default() };
        let result = check_with(std::slice::from_mut(&mut alone), role, given, config_dir, dry)
            .await
            .map(|_| ())
            .or_else(|error| if error.is::<FirstPinPastGiven>() { Ok(()) } else { Err(error) });
        let location = alone.target.location().to_string();
        let pinned_here = matches!(
            trust::load_pin(config_dir, &alone.config.id),
            Ok(Some(pin)) if pin.knows(&location)
        );
        if result.is_ok() && (given.is_some() || pinned_here) && !anchors.contains(&alone.config.id) {
            anchors.push(alone.config.id.clone());
        }
        // A fork in one copy's `configs/` is a signing key's work, not storage's: the check of
        // the copies together refuses it.
        let forked = alone.fork_error().is_some();
        checked.push((result.err().filter(|_| !forked), alone.config.id.clone(), forked));
        // As opened for the check (at the pinned generation, when its `config` does not lead
        // there): the check after finds it so and says nothing twice.
        *repository = alone;
    }
    if anchors.is_empty() {
        return;
    }
    // Copies of one repository: of one anchored id, a copy claiming another is not a copy.
    let one = (copies == Copies::OfOne && anchors.len() == 1).then(|| anchors[0].clone());
    let passed: Vec<bool> = checked.iter().map(|(error, _, forked)| error.is_none() && !forked).collect();
    let repositories = set.repositories();
    let failed = checked
        .into_iter()
        .enumerate()
        .filter_map(|(at, (error, id, _))| match (error, &one) {
            (Some(error), _) => Some((at, format!("{error:#}{}", behind(repositories, &passed, at)))),
            (None, Some(anchor)) if *anchor != id => Some((
                at,
                format!("it holds repository {id}, not repository {anchor}, of which the other --repo are copies"),
            )),
            _ => None,
        })
        .collect();
    set.leave_out(failed);
}

/// Why a copy that failed its own check is behind, when a copy that passed it leads through its
/// generation (signed from the pin): the clearest thing to say of a copy the pin has gone past
/// (a rekey that did not reach it, or its newer config deleted in storage), whose own failure
/// reads as a config changed in storage. Only said: the copy is left out for its own failure.
fn behind(repositories: &[Repository], passed: &[bool], at: usize) -> String {
    let copy = &repositories[at];
    let ahead = repositories.iter().zip(passed).find(|(ahead, passed)| {
        **passed
            && ahead.config.id == copy.config.id
            && ahead.config.generation > copy.config.generation
            && ahead.has_generation(&copy.config_hash)
    });
    match ahead {
        Some((ahead, _)) => format!(
            " (it is at generation {} of the repository's keys, behind {} at generation {}: a rekey that did not \
             reach it, or its newer config deleted in storage; `crmvault rekey --identity KEY` given every --repo \
             brings it up)",
            copy.config.generation,
            ahead.target.location(),
            ahead.config.generation
        ),
        None => String::new(),
    }
}

/// For commands that work on their copies one at a time (a problem on one is a finding): each
/// copy checked as its role needs ([`reading_role`]), after its repository's copies were
/// checked together ([`check_copies_together`]); the trust of each, in order.
pub async fn check_each_copy(
    repositories: &mut [Repository],
    identity: Option<&Path>,
    given: Option<&Fingerprint>,
    config_dir: &Path,
) -> Result<Vec<Trusted>> {
    check_copies_together(repositories, identity, given, config_dir).await?;
    let mut trusted = Vec::with_capacity(repositories.len());
    for repository in repositories {
        let role = reading_role(repository, identity, config_dir);
        trusted.push(check(std::slice::from_mut(repository), role, given, config_dir).await?);
    }
    Ok(trusted)
}

/// For commands that check their copies one at a time (a problem on one is a finding): the
/// copies of each repository id checked together first, as [`check`] checks them (each opened
/// again at the pinned generation where its `config` does not lead there, then compared), and
/// the pins moved only if they all pass. Each copy's own check after it could otherwise follow
/// a fork its `configs/` showed at that moment (a storage writer renaming a config in and out
/// while the command runs) and move the pin before the other copies were looked at. The
/// copies are left as this check opened them, so that each copy's own check after reads no
/// config again (a storage answering otherwise the second time could not make it follow).
pub async fn check_copies_together(
    repositories: &mut [Repository],
    identity: Option<&Path>,
    given: Option<&Fingerprint>,
    config_dir: &Path,
) -> Result<()> {
    let mut ids: Vec<String> = repositories.iter().map(|r| r.config.id.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let at: Vec<usize> = (0..repositories.len()).filter(|&i| repositories[i].config.id == id).collect();
        if at.len() < 2 {
            continue;
        }
        let mut copies: Vec<Repository> = at.iter().map(|&i| repositories[i].clone()).collect();
        let role = reading_role(&copies[0], identity, config_dir);
        check(&mut copies, role, given, config_dir).await?;
        for (i, copy) in at.into_iter().zip(copies) {
            repositories[i] = copy;
        }
    }
    Ok(())
}

/// [`check`] for `rekey`, the one command that may meet a copy left at an older generation (by
/// an interrupted rekey, or because its newer config was deleted) and brings it up with the
/// newest generation's keys. Every other command refuses such a copy: it would be read, and
/// its keys unlocked, under a generation that the newest one retired.
///
/// Before any pin moves, refuses to build on generations after the newest one this machine
/// vouches for while an admin or writer key they put in would stay in the generation the
/// rekey makes (`removing` the admins it removes, `rotating` whether it puts in a writer key
/// of its own): with a single target, a removed admin's generation signed before the rekey
/// that removes them looks like any colleague's. `given` naming the head vouches for it.
pub async fn check_for_rekey(
    repositories: &mut [Repository],
    given: Option<&Fingerprint>,
    config_dir: &Path,
    (removing, rotating): (&[String], bool),
) -> Result<Trusted> {
    let mode = Mode { allow_behind: true, ..Mode::default() };
    // Decided on the copies as this check opened them, which the rekey then builds on (the
    // storage is not read again in between), before any pin moves.
    let checked = check_copies(repositories, Role::Admin, given, config_dir, mode).await?;
    let head = repositories.iter().max_by_key(|r| r.config.generation).expect("one at least");
    // The whole chain (a copy opened at the pinned generation starts there).
    let (head, missing) = head.with_earlier_generations().await?;
    let pin = trust::load_pin(config_dir, &head.config.id)?;
    let Some(changes) = unvouched_changes(&head, pin.as_ref(), given) else {
        let missing = missing.map(|hash| format!(" (configs/{hash} is missing or damaged there)")).unwrap_or_default();
        bail!(
            "the generations of the repository's keys at {}{missing} do not lead back to one this machine made or \
             was given the fingerprint of: who they added cannot be told; refusing, nothing was written. Copy the \
             missing config back from another target, or give the fingerprint the admin who made generation {} has \
             (--fingerprint)",
            head.target.location(),
            head.config.generation
        );
    };
    let (kept, undone): (Vec<_>, Vec<_>) =
        changes.into_iter().partition(|change| change.kept_by(&head.config, removing, rotating));
    if !kept.is_empty() {
        let writer = kept.iter().any(|change| matches!(change, KeyChange::Writer { .. }));
        let admins = kept.len() > usize::from(writer);
        let undo = match (admins, writer) {
            (true, true) => {
                "--remove-recipient for an admin, --rotate-writer-key --writer-key-out FILE for the writer key"
            }
            (true, false) => "--remove-recipient",
            _ => "--rotate-writer-key --writer-key-out FILE",
        };
        let them = if kept.len() == 1 { "it" } else { "them" };
        let kept: Vec<String> = kept.iter().map(ToString::to_string).collect();
        bail!(
            "{}: this rekey would keep {them}, and this machine did not make nor was given the fingerprint of the \
             generation that put {them} in; refusing, nothing was written. If an admin you trust made it, give the \
             generation fingerprint their rekey printed (\"this generation's\") with --fingerprint; otherwise \
             undo {them} in this rekey ({undo})",
            kept.join("; ")
        );
    }
    for change in undone {
        // What was written with that writer key stays: this rekey carries every snapshot that
        // proves itself, and whoever held that key (an admin of the generation before) could
        // write them.
        let carried = match change {
            KeyChange::Writer { .. } => {
                "; snapshots written with that writer key are carried as they are: check the ones made since \
                 (`crmvault snapshots` names the host of each)"
            }
            KeyChange::Admin { .. } => "",
        };
        super::output::warning(format_args!(
            "{change}, a generation this machine did not make nor was given the fingerprint of: this rekey undoes \
             it{carried}"
        ));
    }
    checked.commit()
}

/// The refusal, on a machine with the writer key, of generations taken by signatures alone: a
/// first pin from the fingerprint of a generation before the head, or a pin an admin's machine
/// moved so ([`Pin::unchecked`]). The machine's, not a copy's (a copy checked alone is not
/// left out for it; the copies checked together refuse it).
#[derive(Debug)]
struct FirstPinPastGiven(String);

impl std::fmt::Display for FirstPinPastGiven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FirstPinPastGiven {}

/// How [`check_with`] goes about its copies.
#[derive(Debug, Clone, Copy, Default)]
struct Mode {
    /// A copy at an older generation than another is one to bring up (rekey), not a refusal.
    allow_behind: bool,
    /// Only to see whether the copies pass: no pin is written and what a check would say on
    /// the way (a pin made on first use, a rekey followed) is left for the real one.
    dry: bool,
}

async fn check_with(
    repositories: &mut [Repository],
    role: Role,
    given: Option<&Fingerprint>,
    config_dir: &Path,
    mode: Mode,
) -> Result<Trusted> {
    let checked = check_copies(repositories, role, given, config_dir, mode).await?;
    if mode.dry {
        return Ok(checked.trusted);
    }
    checked.commit()
}

/// What [`check_copies`] decided, not yet done: the pins to write, what following a generation
/// changes (said as the pins move).
struct Checked {
    trusted: Trusted,
    writes: Vec<PinWrite>,
    said: Vec<String>,
}

impl Checked {
    /// Every target passed: now the pins change, each on the pin as it is on disk now (another
    /// command here may have changed it since), and what they follow is said, once.
    fn commit(self) -> Result<Trusted> {
        let Checked { mut trusted, writes, mut said } = self;
        said.sort();
        said.dedup();
        for change in said {
            super::output::warning(format_args!(
                "{change}, followed by this machine by its signature; if nobody you trust rekeyed, a removed admin \
                 who kept older keys may have: check with the admins"
            ));
        }
        for write in writes {
            let written = write.apply(&trusted.config_dir)?;
            if let Some(pin) = trusted.pin.as_mut()
                && pin.repository_id == written.repository_id
            {
                *pin = written;
            }
        }
        Ok(trusted)
    }
}

/// Checks `repositories` against this machine's pins (see [`check`]); the pins are left as
/// they are on disk, and what to write returned.
async fn check_copies(
    repositories: &mut [Repository],
    role: Role,
    given: Option<&Fingerprint>,
    config_dir: &Path,
    mode: Mode,
) -> Result<Checked> {
    let Mode { allow_behind, dry } = mode;
    // Where the copies checked in this run are: the backup host follows a new generation only
    // when every place its pin knows is among them.
    let checked: Vec<String> = repositories.iter().map(|r| r.target.location().to_string()).collect();
    // What following a generation changes of who reads and writes, said once the pins move.
    let mut said: Vec<String> = Vec::new();
    let mut trusted = Trusted { pin: None, config_dir: config_dir.to_path_buf() };
    // The generations accepted on the targets checked so far: a copy that an interrupted rekey
    // left at an earlier one is not a forgery (commands that need the copies equal say so).
    let mut accepted: Vec<String> = Vec::new();
    // The copy that set the head (the first accepted), for a rekey to bring the copies behind
    // it up to.
    let mut ahead: Option<Repository> = None;
    // Every target is checked against the pin as this machine had it, and the pins are written
    // only once every target passed: a target checked first must not move a pin (follow a
    // generation, add a place) that a target checked after it then fails against. A removed
    // admin who kept a signing key and can write one target's storage forks the chain there;
    // had the first target moved the pin onto the fork, the good one would fail from then on.
    let mut pins: std::collections::HashMap<String, Option<Pin>> = std::collections::HashMap::new();
    // The pins as they were on disk before this run: one this run makes vouches for nothing.
    let mut on_disk: std::collections::HashMap<String, Option<Pin>> = std::collections::HashMap::new();
    let mut writes: Vec<PinWrite> = Vec::new();
    // Repositories given a place in their pin by this run: a second new place of one of them
    // is asked about as if the first had been saved.
    let mut placed: std::collections::HashSet<String> = std::collections::HashSet::new();
    // Copies of one repository lie on one chain of configs (compared again below, as the check
    // opened them; commands that go on with the copies they can use compare them as
    // [`leave_out_failing`] opened them).
    crmvault::repo_set::refuse_forked_copies(repositories)?;
    // Each copy opened at its pinned generation first (where its `config` does not lead
    // there), so that the order below is of the generations checked: a copy that reopening
    // takes ahead of the others must set the head, not be taken as one behind it.
    // Each pin is read once, here.
    for repository in repositories.iter_mut() {
        if !on_disk.contains_key(&repository.config.id) {
            let pin = trust::load_pin(config_dir, &repository.config.id)?;
            on_disk.insert(repository.config.id.clone(), pin.clone());
            pins.insert(repository.config.id.clone(), pin);
        }
        anchor(repository, on_disk[&repository.config.id].as_ref(), given).await?;
    }
    let mut order: Vec<usize> = (0..repositories.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(repositories[i].config.generation));
    for i in order {
        let repository = &mut repositories[i];
        let pinned = pins[&repository.config.id].clone();
        // Anchored above, not read again: a storage answering otherwise the second time would
        // reorder the copies (a pin this run makes anchors nothing: a copy that does not lead
        // to it is refused as it opened).
        if let Some(error) = repository.fork_error() {
            return Err(error.into());
        }
        let location = repository.target.location().to_string();
        let location = location.as_str();
        let actual = repository.fingerprint();
        // A fingerprint is met by a generation of the chain, or by the pin: the pinned generation
        // (opened directly when `config` no longer leads to it) was reached from the fingerprint
        // the pin holds, through signatures this machine checked then.
        let pinned_here =
            pinned.as_ref().filter(|pin| repository.has_generation(&pin.config_hash)).map(|pin| pin.fingerprint);
        let vouched = |fingerprint: &Fingerprint| {
            repository.has_fingerprint(fingerprint) || pinned_here.is_some_and(|pinned| pinned == *fingerprint)
        };
        if let Some(given) = given
            && !vouched(given)
        {
            bail!(
                "the repository at {location} has fingerprint {actual}, not {given}: it is not the repository \
                 you trust (forged, replaced or another one); nothing was read from it"
            );
        }
        // Whether or not this machine pinned the repository presented too: a backup host of two
        // repositories must not write one's backups where the other's were.
        refuse_replaced(repository, config_dir)?;
        // A rekey this machine started and did not finish names the one successor to follow.
        if let Some(pin) = pinned.as_ref()
            && let Some(other) = foreign_successor(repository, pin, given)
        {
            bail!(
                "the repository at {location} holds a generation {} of its keys (config {other}) that is not the \
                 one the rekey this machine started was publishing (config {}): another successor signed with the \
                 keys that rekey retires (a removed admin's, or another admin's rekey meanwhile); refusing to follow \
                 it, nothing was written. If an admin you trust made it, give its generation fingerprint (from that \
                 admin) once with --fingerprint; if nobody did, delete configs/{other} from {location} and run the \
                 rekey again",
                repository.config.generation,
                pin.pending.as_deref().unwrap_or_default()
            );
        }
        // Targets are checked newest generation first: the first one accepted sets the head.
        let behind = accepted.contains(&repository.config_hash)
            && ahead.as_ref().is_some_and(|ahead| ahead.config_hash != repository.config_hash);
        if behind && !allow_behind {
            bail!(
                "the repository at {location} is at an older generation of its keys than another --repo given \
                 (an interrupted rekey, or its newer config was deleted from storage): refusing to read it under \
                 retired keys; an admin brings it up with `crmvault rekey` and every --repo, or leave it out"
            );
        }
        if behind
            && let Some(ahead) = &ahead
            && !catch_up_vouched(ahead, &repository.config_hash, on_disk[&repository.config.id].as_ref(), given)
        {
            let (hash, config) = ahead.successor_of(&repository.config_hash).unwrap_or(&ahead.chain[0]);
            // A pin that followed it already (by its signature, a command given that target
            // alone) never goes back: deleting it from storage then leaves nothing to open.
            let followed = on_disk[&repository.config.id].as_ref().is_some_and(|pin| {
                let at = |wanted: &str| ahead.chain.iter().position(|(known, _)| known == wanted);
                at(&pin.config_hash).zip(at(hash)).is_some_and(|(pinned, named)| pinned >= named)
            });
            if followed {
                bail!(
                    "the repository at {location} is at generation {} of its keys, behind {} at generation {} \
                     (config {hash}), which this machine followed by its signature alone but did not make nor was \
                     given the fingerprint of: bringing {location} up would take it on the word of one storage. If \
                     an admin you trust made it, give its generation fingerprint, from that admin, with \
                     --fingerprint; if nobody did, remove {} (this machine's pin: it then forgets the newest \
                     snapshot it knew), delete configs/{hash} from {}, and run this again with --fingerprint and the \
                     fingerprint the admins keep; nothing was written",
                    repository.config.generation,
                    ahead.target.location(),
                    config.generation,
                    trust::pin_path(config_dir, &repository.config.id).display(),
                    ahead.target.location()
                );
            }
            bail!(
                "the repository at {location} is at generation {} of its keys, behind {} at generation {} \
                 (config {}), which this machine did not make nor was given the fingerprint of: bringing it up would take that \
                 generation on the word of the storage that holds it, and whoever kept the older generation's keys \
                 (a removed admin) can sign one where they write. If an admin you trust made it (a rekey that did \
                 not reach {location}), give its generation fingerprint, from that admin, with --fingerprint; if \
                 nobody did, delete configs/{hash} from {} and run this again; nothing was written",
                repository.config.generation,
                ahead.target.location(),
                config.generation,
                hash.chars().take(12).collect::<String>(),
                ahead.target.location()
            );
        }
        let in_chain = |hash: &str| behind || repository.has_generation(hash);
        let pin = match (role, pinned) {
            (Role::Writer, Some(pin)) if !in_chain(&pin.config_hash) => bail!(
                "the config of the repository at {location} is not the one this host pinned, nor a generation \
                 signed after it: its recipients, keys or settings were changed in storage; refusing to use it \
                 (recipients change with `crmvault rekey`, never by editing storage)"
            ),
            (_, Some(pin)) if given.is_none() && !vouched(&pin.fingerprint) => bail!(
                "the repository at {location} has fingerprint {actual}, but this machine pinned {} for repository {}: \
                 it was forged or replaced in storage; nothing was read from it",
                pin.fingerprint,
                repository.config.id
            ),
            // Never back: an older generation may hold a removed admin's key.
            (_, Some(pin)) if !in_chain(&pin.config_hash) => bail!(
                "the repository at {location} does not lead to the generation of its keys this machine pinned \
                 (config {}): the newer config was deleted or replaced in storage; refusing to go back to keys a \
                 rekey retired. Put configs/{} back (another target or copy holds it); to trust an older \
                 generation on purpose, remove {}",
                &pin.config_hash[..12],
                pin.config_hash,
                trust::pin_path(config_dir, &repository.config.id).display()
            ),
            (_, Some(mut pin)) => {
                let new_location = !pin.knows(location);
                // A place never opened that holds one of several repositories pinned here may
                // hold another than the one meant: whoever writes the storage can copy there a
                // repository this machine trusts for something else (another team's, whose
                // admins would then read these backups). The first use names which, once.
                if new_location
                    && given.is_none()
                    && (!pin.locations.is_empty() || placed.contains(&pin.repository_id))
                    && trust::pins_another(config_dir, &repository.config.id)
                {
                    bail!(
                        "{location} is new to this machine and holds repository {} (fingerprint {actual}), which it \
                         knows at {}; as this machine pins more than one repository, say that this is the one you \
                         mean once with --fingerprint (or CRMVAULT_FINGERPRINT), from the admins' records",
                        repository.config.id,
                        pin.locations.join(", ")
                    );
                }
                let follow = pin.config_hash != repository.config_hash && !behind;
                let from = repository.chain.iter().position(|(hash, _)| *hash == pin.config_hash);
                // The backup host (any command on a machine with its writer key, whatever role
                // it runs in: backup, verify, copy, an admin's restore there; its pin is the one
                // the backups follow) takes a new generation by its signature only where every
                // place its pin knows shows it: a removed admin who kept an older generation's keys can sign a
                // sibling of the rekey that removed them where they write and the rekey did not
                // reach; the place it did reach, absent from this run, would have shown the fork.
                // The host would write its nights for the removed admin.
                let absent: Vec<&str> = pin
                    .locations
                    .iter()
                    .filter(|known| !checked.iter().any(|here| crmvault::target::same_place(known, here)))
                    .map(String::as_str)
                    .collect();
                // A generation this machine knows of its own: a fingerprint given, its rekey's.
                let own = |hash: &str| vouches(None, given, hash) || pin.pending.as_deref() == Some(hash);
                let head_vouched = own(&repository.config_hash);
                let writer_here = writes_here(role, config_dir, &pin.repository_id);
                let chain: Vec<String> = repository.chain.iter().map(|(hash, _)| hash.clone()).collect();
                // A pin an admin's machine moved by signatures alone (one target's word, where a
                // removed admin can sign a generation), copied to the backup host or with the
                // writer key installed here since: its backups would write for whoever signed
                // it. The machine's refusal, not a copy's.
                if writer_here && pin.unchecked_on(&chain, own) {
                    let generation = repository.config.generation;
                    return Err(FirstPinPastGiven(format!(
                        "this machine holds the writer key of repository {}, and its pin took {} of the keys \
                         (config {}) by signatures alone on a machine without that key (an admin's, whose pin \
                         follows one target's word; a removed admin can sign a generation where they write): its \
                         backups would write for keys nothing here checked. Give generation {generation}'s \
                         fingerprint from the admins' records (what their rekey printed, not what `crmvault \
                         fingerprint` reads from the storage) with --fingerprint, or copy {} from the machine that \
                         ran `init` or the backup host before; nothing was written",
                        pin.repository_id,
                        chain.iter().position(|hash| Some(hash) == pin.unchecked.as_ref()).map_or_else(
                            || "a generation".to_string(),
                            |at| format!("generation {}", repository.chain[at].1.generation)
                        ),
                        pin.unchecked.as_deref().unwrap_or_default().chars().take(12).collect::<String>(),
                        trust::pin_path(config_dir, &pin.repository_id).display()
                    ))
                    .into());
                }
                // Not in a copy's check alone (leaving out those that fail on their own): the
                // others' absence is not its failure; the check of the copies kept decides.
                if follow && writer_here && !dry && !absent.is_empty() && !head_vouched {
                    bail!(
                        "{location} is at generation {} of the repository's keys, which this machine has not \
                         followed yet, and {} of the repository's targets it knows could not be checked beside it; \
                         this machine holds the repository's writer key, so its pin is the one its backups follow, \
                         and a new generation taken on one storage's word could have it write for keys a removed \
                         admin kept (one signed where the rekey that removed them did not reach): refusing, nothing \
                         was written. Run again with every target reachable and given, or give generation {}'s \
                         fingerprint from the admins' records (what their rekey printed, not what `crmvault \
                         fingerprint` reads from this storage) with --fingerprint; an admin machine without the \
                         writer key reads the target as it is, with a warning",
                        repository.config.generation,
                        absent.join(", "),
                        repository.config.generation
                    );
                }
                if follow && !dry {
                    tracing::info!(
                        "repository {} was rekeyed since this machine last used it: following it to generation {}",
                        repository.config.id,
                        repository.config.generation
                    );
                    // Who reads or writes from now on that did not: once, as the pin moves
                    // (rekey says it of every generation it builds on), after the newest
                    // generation this machine knows of its own, or the pin's.
                    let from = repository.chain.iter().rposition(|(hash, _)| own(hash)).max(from);
                    let changes = from.filter(|_| !allow_behind).map(|from| changes_after(repository, from));
                    said.extend(changes.unwrap_or_default().iter().map(ToString::to_string));
                }
                // A fingerprint given names a generation this machine now vouches for.
                let vouch = given.and_then(|_| {
                    let at = repository.chain.iter().rposition(|(hash, _)| vouches(None, given, hash))?;
                    let known = repository.chain.iter().rposition(|(hash, _)| pin.vouches(hash));
                    (known.is_none_or(|known| at > known)).then(|| repository.chain[at].0.clone())
                });
                // Taken by its signature alone where the writer's rule did not apply.
                let unchecked = follow && !writer_here && !head_vouched && !pin.vouches(&repository.config_hash);
                if new_location || follow || vouch.is_some() {
                    let change = PinChange {
                        location: location.to_string(),
                        follow: follow.then(|| repository.config_hash.clone()),
                        chain,
                        vouch,
                        unchecked,
                    };
                    change.apply(&mut pin);
                    if new_location {
                        placed.insert(pin.repository_id.clone());
                    }
                    writes.push(PinWrite::Update(pin.clone(), change));
                }
                Some(pin)
            }
            (Role::Admin, None) if given.is_none() => bail!(
                "repository {} at {location} is not pinned on this machine: give --fingerprint (or \
                 CRMVAULT_FINGERPRINT) with the fingerprint the admins keep (`crmvault init` printed it; \
                 `crmvault fingerprint --repo {location}` shows what the storage claims, to compare)",
                repository.config.id
            ),
            // A host without the writer key: unlocking says so, which is the useful message.
            (Role::Writer, None) if !repo::writer_key_path(config_dir, &repository.config.id).exists() => None,
            (Role::Writer, None) if given.is_none() && repository.config.version >= repo::AUTHENTICATED_VERSION => {
                bail!(
                    "repository {} at {location} is not pinned on this host: copy {} from the host that ran \
                     `init` (beside writer.key), or give --fingerprint",
                    repository.config.id,
                    trust::pin_path(config_dir, &repository.config.id).display()
                )
            }
            (Role::Keyless, None) => {
                // No pin here, but `init --copy-from` pins what it copied from: said as below.
                if !dry {
                    said.extend(taken_past(repository, given));
                }
                None
            }
            // A first pin on a machine with the writer key, from a fingerprint of an earlier
            // generation than the head: the generations after it are taken by their signatures
            // on the word of the copies given, maybe one (the others unreachable or not given),
            // where a removed admin can sign one. Its backups would follow that pin.
            (role, None)
                if given.is_some()
                    && !vouches(None, given, &repository.config_hash)
                    && writes_here(role, config_dir, &repository.config.id) =>
            {
                return Err(FirstPinPastGiven(format!(
                    "repository {} at {location} is at generation {} of its keys, and the fingerprint given is of an \
                     earlier generation: this machine holds the writer key, and its first pin would take the \
                     generations since on the word of the storage, where a removed admin can sign one; give \
                     generation {}'s fingerprint from the admins' records (what the last rekey printed, not what \
                     `crmvault fingerprint` reads from the storage) with --fingerprint, or copy {} from the machine \
                     that ran `init` or the backup host before; nothing was written",
                    repository.config.id,
                    repository.config.generation,
                    repository.config.generation,
                    trust::pin_path(config_dir, &repository.config.id).display()
                ))
                .into());
            }
            (role, None) => {
                if !dry {
                    said.extend(taken_past(repository, given));
                }
                if given.is_none() && !dry {
                    tracing::warn!(
                        "repository {} at {location} was made before repositories were pinned; pinning it now with \
                         fingerprint {actual}: compare it with the one the admins keep",
                        repository.config.id
                    );
                }
                let pin = Pin {
                    repository_id: repository.config.id.clone(),
                    fingerprint: given.copied().unwrap_or(actual),
                    config_hash: repository.config_hash.clone(),
                    newest: None,
                    locations: vec![location.to_string()],
                    settled: std::collections::BTreeSet::new(),
                    missed: std::collections::BTreeMap::new(),
                    pending: None,
                    vouched: None,
                    // The generations after the one the fingerprint names, taken by their
                    // signatures (a machine with the writer key was refused that above).
                    unchecked: given
                        .filter(|_| !vouches(None, given, &repository.config_hash))
                        .map(|_| repository.config_hash.clone()),
                };
                writes.push(PinWrite::Create(pin.clone(), role == Role::Admin));
                // Later copies of it are checked against what this run pins.
                pins.insert(repository.config.id.clone(), Some(pin.clone()));
                Some(pin)
            }
        };
        if trusted.pin.is_none() {
            trusted.pin = pin;
        }
        accepted.extend(repository.chain.iter().map(|(hash, _)| hash.clone()));
        if ahead.is_none() {
            ahead = Some(repository.clone());
        }
    }
    // The copies lie on one chain as they were opened for the check too (a copy whose `config`
    // does not lead to the pin is opened again at the pinned generation, and follows what its
    // `configs/` hold from there).
    crmvault::repo_set::refuse_forked_copies(repositories)?;
    Ok(Checked { trusted, writes, said })
}

/// The successor of the pinned generation in `repository`'s chain when the pin names another
/// one as pending (a rekey here was publishing it, [`Pin::pending`]) and `given` names neither
/// it nor a generation after it: that successor's config hash.
fn foreign_successor<'a>(repository: &'a Repository, pin: &Pin, given: Option<&Fingerprint>) -> Option<&'a str> {
    let pending = pin.pending.as_deref()?;
    let at = repository.chain.iter().position(|(hash, _)| *hash == pin.config_hash)?;
    let (next, _) = repository.chain.get(at + 1)?;
    let named = repository.chain[at + 1..].iter().any(|(hash, _)| vouches(None, given, hash));
    (next != pending && !named).then_some(next.as_str())
}

/// Whether this machine may bring a copy at generation `behind` up to `ahead`'s (rekey): the
/// generation after it on `ahead`'s chain is vouched for by more than the signature of a key
/// that every admin of `behind`'s generation held, removed ones included: a rekey here was
/// publishing it ([`Pin::pending`]), or it or a later one is one the pin vouches for
/// ([`Pin::vouches`]: not merely followed) or `given` names. The copy behind is the other
/// storage's word that `behind` is the newest.
fn catch_up_vouched(ahead: &Repository, behind: &str, pin: Option<&Pin>, given: Option<&Fingerprint>) -> bool {
    let Some(at) = ahead.chain.iter().position(|(hash, _)| hash == behind) else { return false };
    let after = &ahead.chain[at + 1..];
    let own = pin.is_some_and(|pin| after.first().is_some_and(|(next, _)| pin.pending.as_ref() == Some(next)));
    own || after.iter().any(|(hash, _)| vouches(pin, given, hash))
}

/// Whether this machine vouches for the generation whose config hashes to `hash` by more than
/// a signature: its pin does ([`Pin::vouches`]) or the fingerprint given names it.
fn vouches(pin: Option<&Pin>, given: Option<&Fingerprint>, hash: &str) -> bool {
    pin.is_some_and(|pin| pin.vouches(hash))
        || given.is_some_and(|given| Fingerprint::of_config_hash(hash).is_ok_and(|f| f == *given))
}

/// Whether the command runs where the repository's backups are written from: with the writer
/// role, or on a machine holding its writer key in another role (its pin is the one the
/// backups follow).
fn writes_here(role: Role, config_dir: &Path, repository_id: &str) -> bool {
    role == Role::Writer || repo::writer_key_path(config_dir, repository_id).exists()
}

/// What one generation changed of who reads or who writes (said when a machine takes
/// generations it did not vouch for: a removed admin who kept an older generation's keys can
/// sign one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyChange {
    /// The generation added this admin recipient.
    Admin { generation: u32, recipient: String },
    /// The generation put in this writer key.
    Writer { generation: u32, recipient: String },
}

impl KeyChange {
    /// Whether the change still holds in the generation a rekey from `head` makes when it
    /// removes `removing` and, when `rotating`, puts in a writer key of its own.
    pub fn kept_by(&self, head: &crmvault::repo::RepoConfig, removing: &[String], rotating: bool) -> bool {
        match self {
            KeyChange::Admin { recipient, .. } => head.recipients.contains(recipient) && !removing.contains(recipient),
            KeyChange::Writer { recipient, .. } => head.writer_recipient == *recipient && !rotating,
        }
    }
}

impl std::fmt::Display for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyChange::Admin { generation, recipient } => {
                write!(f, "generation {generation} of the repository's keys added admin {recipient}")
            }
            KeyChange::Writer { generation, recipient } => {
                write!(f, "generation {generation} of the repository's keys put in writer key {recipient}")
            }
        }
    }
}

/// What the head of `repository`'s chain has of who reads and who writes that the generation
/// at position `from` had not: each admin and writer key, with the generation that put it in
/// (last, when one was taken out and put in again).
pub fn changes_after(repository: &Repository, from: usize) -> Vec<KeyChange> {
    let chain = repository.chain.get(from..).unwrap_or_default();
    let (Some((_, base)), Some((_, head))) = (chain.first(), chain.last()) else { return Vec::new() };
    // The generation from which `holds` held without a break up to the head.
    let since = |holds: &dyn Fn(&crmvault::repo::RepoConfig) -> bool| {
        let run = chain.iter().rev().take_while(|(_, config)| holds(config)).count();
        chain[chain.len() - run].1.generation
    };
    let mut changes: Vec<KeyChange> = head
        .recipients
        .iter()
        .filter(|r| !base.recipients.contains(r))
        .map(|r| KeyChange::Admin { generation: since(&|c| c.recipients.contains(r)), recipient: r.clone() })
        .collect();
    if head.writer_recipient != base.writer_recipient {
        let writer = &head.writer_recipient;
        changes.push(KeyChange::Writer {
            generation: since(&|c| c.writer_recipient == *writer),
            recipient: writer.clone(),
        });
    }
    changes
}

/// What a first pin from the fingerprint `given` takes by signatures: what the generations after
/// the one it names put in ([`changes_after`]), said as when a pin follows.
fn taken_past(repository: &Repository, given: Option<&Fingerprint>) -> Vec<String> {
    let named = repository.chain.iter().position(|(hash, _)| vouches(None, given, hash));
    named.map(|named| changes_after(repository, named).iter().map(ToString::to_string).collect()).unwrap_or_default()
}

/// What the head of `repository`'s chain has of who reads and writes that the newest generation
/// this machine vouches for ([`vouches`], or the one its own rekey was publishing) had not
/// ([`changes_after`]). None when the chain does not reach back to such a generation (a config
/// on the way is missing or damaged): what the generations after it put in cannot be told.
pub fn unvouched_changes(
    repository: &Repository,
    pin: Option<&Pin>,
    given: Option<&Fingerprint>,
) -> Option<Vec<KeyChange>> {
    let own = |hash: &str| pin.is_some_and(|pin| pin.pending.as_deref() == Some(hash));
    let from = repository.chain.iter().rposition(|(hash, _)| vouches(pin, given, hash) || own(hash))?;
    Some(changes_after(repository, from))
}

/// A change to a pin that a command's check of its targets decided, made once every target
/// passed.
enum PinWrite {
    /// Of the repository's pin (as this command read it): a place added, a generation followed.
    Update(Pin, PinChange),
    /// The first pin of a repository made before pins (format 2-6); whether to say so (an
    /// admin's command).
    Create(Pin, bool),
}

impl PinWrite {
    /// Makes the change on the pin as it is on disk; returns the pin as saved.
    fn apply(self, config_dir: &Path) -> Result<Pin> {
        match self {
            PinWrite::Update(mut pin, change) => {
                // `update_pin` reads the pin again under its lock.
                trust::update_pin(config_dir, &mut pin, |pin| change.apply(pin))?;
                Ok(pin)
            }
            PinWrite::Create(pin, say) => {
                let pin = trust::create_pin(config_dir, pin)?;
                if say {
                    eprintln!(
                        "crmvault: pinned repository {} (fingerprint {}) in {}",
                        pin.repository_id,
                        pin.fingerprint,
                        trust::pin_path(config_dir, &pin.repository_id).display()
                    );
                }
                Ok(pin)
            }
        }
    }
}

/// A place to add to a pin and, when the repository was rekeyed, the generation to follow.
struct PinChange {
    location: String,
    /// The config hash of the generation reached.
    follow: Option<String>,
    /// The chain of configs of the copy that reached it.
    chain: Vec<String>,
    /// A generation a fingerprint given named ([`Pin::vouched`]).
    vouch: Option<String>,
    /// Whether the generation followed is taken by its signature alone on a machine without
    /// the writer key ([`Pin::unchecked`]).
    unchecked: bool,
}

impl PinChange {
    /// Makes the change on `pin`; false when it changed nothing.
    fn apply(&self, pin: &mut Pin) -> bool {
        let mut changed = pin.add_location(&self.location);
        if let Some(hash) = &self.vouch
            && pin.vouched.as_ref() != Some(hash)
        {
            pin.vouched = Some(hash.clone());
            changed = true;
        }
        // Forward only: never back from a generation another command followed.
        if let Some(hash) = &self.follow
            && pin.config_hash != *hash
            && self.chain.contains(&pin.config_hash)
        {
            pin.config_hash.clone_from(hash);
            // Followed through the generation this machine's rekey was publishing: its own, so
            // vouched for (unless a later one is already). Nothing is pending after a follow.
            if let Some(pending) = pin.pending.take()
                && let Some(at) = self.chain.iter().position(|known| *known == pending)
                && pin.vouched.as_ref().is_none_or(|vouched| !self.chain[at..].contains(vouched))
            {
                pin.vouched = Some(pending);
            }
            if self.unchecked {
                pin.unchecked = Some(hash.clone());
            }
            changed = true;
        }
        // Checked once a generation at or after the one taken by signatures is vouched for.
        if pin.unchecked.is_some() && !pin.unchecked_on(&self.chain, |_| false) {
            pin.unchecked = None;
            changed = true;
        }
        changed
    }
}

/// Opens `repository` again at the generation its pin (or else the fingerprint given) names,
/// when the chain followed from its `config` does not hold it: that `config` may have been
/// replaced in storage, or the chain forked before the pinned generation, while the
/// generation the pin knows is still whole under `configs/`. Whether the result is trusted is
/// decided after, by the caller. A storage that fails to answer is the error.
async fn anchor(repository: &mut Repository, pin: Option<&Pin>, given: Option<&Fingerprint>) -> crmvault::Result<()> {
    let holds = |r: &Repository| {
        r.fork.is_none()
            && pin.is_none_or(|pin| r.has_generation(&pin.config_hash))
            && given.is_none_or(|given| r.has_fingerprint(given) || pin.is_some_and(|pin| pin.fingerprint == *given))
    };
    if holds(repository) {
        return Ok(());
    }
    let hash = match (given, pin) {
        (_, Some(pin)) => Some(pin.config_hash.clone()),
        (Some(given), None) => Repository::find_generation(&repository.target, given).await?,
        (None, None) => None,
    };
    let Some(hash) = hash else { return Ok(()) };
    match Repository::open_at(repository.target.clone(), &hash).await {
        Ok(reopened) if holds(&reopened) => {
            tracing::warn!(
                "{}: its config does not lead to the generation this machine trusts; opened it at configs/{hash}",
                repository.target.location()
            );
            *repository = reopened;
            Ok(())
        }
        // The storage did not answer: said as such, not taken for a config changed in storage
        // (of several copies, this one is left out for it, and not as a tampered one).
        Err(error @ (crmvault::Error::Storage { .. } | crmvault::Error::Io { .. })) => Err(error),
        // Missing or damaged, or not the pinned generation: the check refuses what is left.
        _ => Ok(()),
    }
}

/// Pins what `init` made on this host (the backup host, or an admin's machine that ran it).
/// New copies of a repository this machine pins already (`init --copy-from`, its source
/// checked against that pin, whose fingerprint may be a later generation's) are added to its
/// pin as places of it: the pin's mark, generation and notes stay. Then the places are taken
/// out of any other pin here ([`trust::release_location`]).
pub fn pin_new(
    config_dir: &Path,
    report: &crmvault::commands::init::InitReport,
    given: Option<&Fingerprint>,
) -> Result<()> {
    if let Some(mut pin) = trust::load_pin(config_dir, &report.repository_id)? {
        trust::update_pin(config_dir, &mut pin, |pin| pin.add_locations(&report.locations))?;
    } else {
        let pin = Pin {
            repository_id: report.repository_id.clone(),
            fingerprint: report.fingerprint,
            config_hash: report.config_hash.clone(),
            newest: None,
            locations: report.locations.iter().map(|location| crmvault::target::place(location)).collect(),
            settled: std::collections::BTreeSet::new(),
            missed: std::collections::BTreeMap::new(),
            pending: None,
            vouched: None,
            // `init --copy-from` given an earlier generation's fingerprint than the source's
            // head took the generations since by their signatures (refused where the writer
            // key is).
            unchecked: (Fingerprint::of_config_hash(&report.config_hash).ok() != Some(report.fingerprint)
                && !vouches(None, given, &report.config_hash))
            .then(|| report.config_hash.clone()),
        };
        trust::create_pin(config_dir, pin)?;
    }
    for location in &report.locations {
        trust::release_location(config_dir, location, &report.repository_id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config hash a test calls `name`.
    fn h(name: &str) -> String {
        blake3::hash(name.as_bytes()).to_hex().to_string()
    }

    fn pin_at(config: &str) -> Pin {
        Pin {
            repository_id: "r1".into(),
            fingerprint: Fingerprint::of_config_hash(&blake3::hash(b"c").to_hex()).unwrap(),
            config_hash: h(config),
            newest: None,
            locations: vec![],
            settled: std::collections::BTreeSet::new(),
            missed: std::collections::BTreeMap::new(),
            pending: None,
            vouched: None,
            unchecked: None,
        }
    }

    /// What `init` of repository r1 (first fingerprint `pin_at`'s) reports at `location`.
    fn init_report(config: &str, location: &str) -> crmvault::commands::init::InitReport {
        crmvault::commands::init::InitReport {
            repository_id: "r1".into(),
            fingerprint: pin_at("g1").fingerprint,
            config_hash: h(config),
            locations: vec![location.into()],
            writer_key: None,
        }
    }

    #[test]
    fn init_on_a_place_another_pin_names_takes_it_from_that_pin() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = pin_at("g1");
        old.repository_id = "r0".into();
        old.locations = vec!["/srv/backups/crm".into(), "/srv/other".into()];
        trust::save_pin(dir.path(), &old).unwrap();
        pin_new(dir.path(), &init_report("h1", "/srv/backups/crm"), None).unwrap();
        let old = trust::load_pin(dir.path(), "r0").unwrap().unwrap();
        assert_eq!(old.locations, ["/srv/other"], "the emptied place stays in the old pin");
        let new = trust::load_pin(dir.path(), "r1").unwrap().unwrap();
        assert!(new.knows("/srv/backups/crm"));
        assert!(trust::pin_of_location(dir.path(), "/srv/backups/crm", "r1").unwrap().is_none());
    }

    #[test]
    fn a_copy_of_a_repository_pinned_at_a_later_generations_fingerprint_is_added_to_its_pin() {
        let dir = tempfile::tempdir().unwrap();
        // Pinned with the fingerprint the admins gave after a rekey (generation 2's).
        let mut pinned = pin_at("g2");
        pinned.fingerprint = Fingerprint::of_config_hash(&blake3::hash(b"g2").to_hex()).unwrap();
        pinned.locations = vec!["/srv/a".into()];
        trust::save_pin(dir.path(), &pinned).unwrap();
        // init --copy-from reports the repository's first fingerprint.
        pin_new(dir.path(), &init_report("g2", "/srv/b"), None).unwrap();
        let on_disk = trust::load_pin(dir.path(), "r1").unwrap().unwrap();
        assert!(on_disk.knows("/srv/a") && on_disk.knows("/srv/b"));
        assert_eq!(on_disk.fingerprint, pinned.fingerprint);
    }

    #[test]
    fn a_first_pin_another_command_made_meanwhile_is_kept_and_one_of_another_fingerprint_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = pin_at("g1");
        first.locations = vec!["/srv/a".into()];
        first.newest = Some(SnapshotMark {
            id: blake3::hash(b"s").to_hex().as_str().parse().unwrap(),
            sequence: 7,
            time: chrono::Utc::now(),
        });
        trust::save_pin(dir.path(), &first).unwrap();
        // A second first use, which found no pin when it looked.
        let mut second = pin_at("g1");
        second.locations = vec!["/srv/b".into()];
        let kept = trust::create_pin(dir.path(), second).unwrap();
        let on_disk = trust::load_pin(dir.path(), "r1").unwrap().unwrap();
        assert_eq!(on_disk.newest.as_ref().map(|m| m.sequence), Some(7), "the mark was reset");
        assert!(on_disk.knows("/srv/a") && on_disk.knows("/srv/b"));
        assert_eq!(kept.locations, on_disk.locations);
        let mut forged = pin_at("g1");
        forged.fingerprint = Fingerprint::of_config_hash(&blake3::hash(b"other").to_hex()).unwrap();
        assert!(trust::create_pin(dir.path(), forged).is_err());
        assert_eq!(trust::load_pin(dir.path(), "r1").unwrap().unwrap().fingerprint, first.fingerprint);
    }

    #[test]
    fn following_a_rekey_never_takes_the_pin_back_from_a_later_one_another_command_followed() {
        let dir = tempfile::tempdir().unwrap();
        let on_disk = || trust::load_pin(dir.path(), "r1").unwrap().unwrap();
        trust::save_pin(dir.path(), &pin_at("g1")).unwrap();
        // This command opened generation 1 and rekeyed to 2: the pin follows.
        let mut trusted = Trusted { pin: Some(pin_at("g1")), config_dir: dir.path().to_path_buf() };
        trusted.follow(&h("g2")).unwrap();
        assert_eq!(on_disk().config_hash, h("g2"));
        // Meanwhile another command followed a later rekey (3): this one's follow to 2, from
        // the 1 it opened, changes nothing.
        let mut late = Trusted { pin: Some(pin_at("g1")), config_dir: dir.path().to_path_buf() };
        trust::save_pin(dir.path(), &pin_at("g3")).unwrap();
        late.follow(&h("g2")).unwrap();
        assert_eq!(on_disk().config_hash, h("g3"));
    }

    #[test]
    fn a_generation_taken_by_signature_stays_unchecked_until_one_at_or_after_it_is_vouched() {
        let chain: Vec<String> = ["c", "g1", "g2", "g3"].iter().map(|name| h(name)).collect();
        let change = |follow: Option<&str>, vouch: Option<&str>, unchecked: bool| PinChange {
            location: "/srv/b".into(),
            follow: follow.map(h),
            chain: chain.clone(),
            vouch: vouch.map(h),
            unchecked,
        };
        let mut pin = pin_at("c");
        change(Some("g2"), None, true).apply(&mut pin);
        assert_eq!(pin.unchecked, Some(h("g2")));
        assert!(pin.unchecked_on(&chain, |_| false));
        // Followed on from there by the writer's rule: still built on it.
        change(Some("g3"), None, false).apply(&mut pin);
        assert_eq!(pin.unchecked, Some(h("g2")));
        // A fingerprint of a generation before it checks nothing; of it or a later one, all.
        change(None, Some("g1"), false).apply(&mut pin);
        assert!(pin.unchecked_on(&chain, |_| false));
        assert!(!pin.unchecked_on(&chain, |hash| hash == h("g3")));
        change(None, Some("g3"), false).apply(&mut pin);
        assert_eq!(pin.unchecked, None);
        // A copy whose chain does not hold the generation taken cannot check it.
        let pin = Pin { unchecked: Some(h("g9")), ..pin_at("g9") };
        assert!(pin.unchecked_on(&chain, |_| true));
    }
}
