//! Where a repository lives: a local folder or an S3-compatible bucket, through `object_store`.
//!
//! Every write goes through [`Target::put_new`], which never overwrites an object (objects are
//! immutable) and, on a local folder, syncs the file and its directories before returning, so a
//! snapshot written after its packs can never survive a crash that lost them. On S3 a PUT is
//! durable when it returns; transient faults (5xx, timeouts, resets) are retried with backoff.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};

use crate::error::{Error, Result};

mod local;
mod location;
mod s3;

use local::refuse_special_file;
pub use location::{Location, displayable, place, same_place};
pub use s3::S3Settings;

/// The largest mutable object (a lock) a reader takes.
pub const MAX_MUTABLE_OBJECT: u64 = 64 * 1024;

/// Objects larger than this go to S3 in parts, each retried on its own.
const MULTIPART_THRESHOLD: usize = 8 << 20;
/// Size of one part (S3's minimum is 5 MiB).
const MULTIPART_PART: usize = 5 << 20;
/// How often a failed upload in parts is started again (each part is retried on its own
/// first; what fails whole is its start or completion, or a part out of retries).
const MULTIPART_RETRIES: usize = 3;

/// One storage location of a repository.
#[derive(Clone)]
pub struct Target {
    store: Arc<dyn ObjectStore>,
    location: String,
    /// A local folder's root, held open: where its writes and deletes start ([`local`]).
    local: Option<Arc<local::Root>>,
    /// How often a create whose answer was lost is sent again (object_store does not resend a
    /// request that is not idempotent, and a create is not).
    create_retries: usize,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("location", &self.location).finish_non_exhaustive()
    }
}

/// Bytes that concurrent whole-object reads may hold in memory at once ([`Target::get_within`]).
/// A year of nights is hundreds of small snapshots or indexes read several at a time; junk in
/// storage may be as large as a read's limit, and several such at once must not exhaust memory.
#[derive(Clone, Debug)]
pub struct ReadBudget {
    permits: Arc<tokio::sync::Semaphore>,
    units: u32,
}

impl ReadBudget {
    /// The budget's granularity.
    const UNIT: u64 = 64 * 1024;

    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: u64) -> ReadBudget {
        let units = u32::try_from((bytes / Self::UNIT).max(1)).unwrap_or(u32::MAX >> 3).min(u32::MAX >> 3);
        ReadBudget { permits: Arc::new(tokio::sync::Semaphore::new(units as usize)), units }
    }
}

/// An object's bytes read under a [`ReadBudget`], counted in it until dropped.
#[derive(Debug)]
pub struct Held {
    bytes: Bytes,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for Held {
    type Target = Bytes;
    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

/// Whether opening a target may create its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The location must already exist.
    Existing,
    /// Create the folder if missing (`init`).
    Create,
}

/// What `put_new` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Written,
    /// An object with that key was already there; nothing was changed.
    AlreadyThere,
}

/// The version of an object a read saw (its ETag and, where kept, version id), for
/// [`Target::replace`].
#[derive(Debug, Clone)]
pub struct ObjectVersion(UpdateVersion);

impl ObjectVersion {
    /// The version of an object that did not read as one (a conditional replace of it fails).
    pub fn unknown() -> ObjectVersion {
        ObjectVersion(UpdateVersion { e_tag: None, version: None })
    }
}

/// What a conditional replace did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// The object was the version expected and now holds the new bytes.
    Replaced,
    /// The object changed (or went) since that version was read; nothing was written.
    Changed,
    /// The storage has no conditional replace (a local folder); nothing was written.
    Unsupported,
}

impl Target {
    /// Opens a local location: a plain path or a `file:///` URL.
    pub fn open(location: &str, mode: OpenMode) -> Result<Target> {
        Target::open_with(location, mode, &S3Settings::default())
    }

    /// Opens any location; `s3` is used for `s3://` ones.
    pub fn open_with(location: &str, mode: OpenMode, s3: &S3Settings) -> Result<Target> {
        match Location::parse(location)? {
            Location::Local(path) => Target::open_local(location, &path, mode),
            Location::S3 { bucket, prefix, .. } => Target::open_s3(location, &bucket, &prefix, s3),
        }
    }

    fn open_local(location: &str, path: &Path, mode: OpenMode) -> Result<Target> {
        // A folder this process may not look into is not a place without a repository: said
        // as what it is, never as "deleted" nor as a place to `init`.
        let out_of_reach = |error: std::io::Error| {
            let said = format!("{error}{}", crate::error::NEEDS_ACCESS);
            Error::io(path, std::io::Error::new(error.kind(), said))
        };
        if mode == OpenMode::Create {
            std::fs::create_dir_all(path).map_err(|error| match error.kind() {
                std::io::ErrorKind::PermissionDenied => out_of_reach(error),
                _ => Error::io(path, error),
            })?;
        }
        match std::fs::metadata(path) {
            Ok(metadata) if metadata.is_dir() => {}
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => return Err(out_of_reach(error)),
            Ok(_) | Err(_) => return Err(Error::NotARepository { location: location.to_string() }),
        }
        let root = path.canonicalize().map_err(|e| Error::io(path, e))?;
        let held = local::Root::open(&root).map_err(|error| match error.kind() {
            std::io::ErrorKind::PermissionDenied => out_of_reach(error),
            _ => Error::io(&root, error),
        })?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|source| Error::Storage { location: location.to_string(), source })?;
        Ok(Target {
            store: Arc::new(store),
            location: location.to_string(),
            local: Some(Arc::new(held)),
            create_retries: 0,
        })
    }

    /// Where this target's objects are: the folder it opened (links resolved), or the bucket,
    /// prefix and endpoint. Two targets with the same storage are one target.
    pub fn storage(&self) -> String {
        match &self.local {
            Some(root) => root.path().to_string_lossy().into_owned(),
            None => place(&self.location),
        }
    }

    /// Whether this is a local folder (read on blocking threads) rather than a bucket.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The location as the user gave it (never holds credentials).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether a folder holding anything sits at the object `key` on a local target (never in
    /// a bucket): crmvault makes none there, so it was planted, and no write takes its name
    /// while it holds anything (an empty one is removed by the next write).
    pub fn has_full_folder_at(&self, key: &str) -> bool {
        self.local.as_ref().is_some_and(|root| {
            let path = root.path().join(key);
            std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_dir())
                && std::fs::read_dir(&path).is_ok_and(|mut entries| entries.next().is_some())
        })
    }

    /// On a local folder, refuses an object that is not a regular file (see
    /// `local::refuse_special_file`).
    fn refuse_special(&self, key: &str) -> Result<()> {
        match &self.local {
            Some(root) => refuse_special_file(root.path(), key),
            None => Ok(()),
        }
    }

    /// Reads a whole object of at most `limit` bytes; a larger one is refused as corrupt before
    /// its body is read (what storage holds is not believed about its own size). Every read
    /// of a whole object states its limit: whoever writes the storage can put anything under
    /// any name, and an object read whole is held whole.
    pub async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes> {
        self.get_if_at_most(key, limit).await?.map_err(|size| {
            Error::corrupt(format!("{}/{key}", self.location), format!("{size} bytes: too large for what it is"))
        })
    }

    /// [`Self::get_at_most`], with a larger object's size (`Err`) for the caller to report.
    pub async fn get_if_at_most(&self, key: &str, limit: u64) -> Result<std::result::Result<Bytes, u64>> {
        self.refuse_special(key)?;
        let result = self.store.get_opts(&ObjectPath::from(key), GetOptions::default()).await;
        let result = result.map_err(|e| self.map_error(key, e))?;
        if result.meta.size > limit {
            return Ok(Err(result.meta.size));
        }
        Ok(Ok(result.bytes().await.map_err(|e| self.map_error(key, e))?))
    }

    /// [`Self::get_at_most`] under a shared `budget` of bytes in memory: the read waits until
    /// the object's size fits beside the others being read (one larger than the whole budget
    /// waits for all of them, then is read alone). What is read stays counted until the
    /// returned [`Held`] is dropped.
    /// The size is asked first and the read waits with no request open (a response left
    /// unread while others are read could time out); the object is then read up to that size.
    pub async fn get_within(&self, key: &str, limit: u64, budget: &ReadBudget) -> Result<Held> {
        // `size_of` refuses what is not a regular file.
        let size = self
            .size_of(key)
            .await?
            .ok_or_else(|| Error::Missing { object: key.to_string(), location: self.location.clone() })?;
        if size > limit {
            return Err(Error::corrupt(key, format!("{size} bytes: too large for what it is")));
        }
        self.get_within_sized(key, size, budget).await
    }

    /// [`Self::get_within`] of an object whose size the caller knows (an authenticated header
    /// or a listing gave it): no request to ask for it, which from a bucket is a round trip
    /// per object (365 of them to load a year's indexes). A larger object is refused as
    /// damaged before its body is read; a shorter one is read as it is, for the caller's check
    /// of its contents to find.
    pub async fn get_within_sized(&self, key: &str, size: u64, budget: &ReadBudget) -> Result<Held> {
        let units = u32::try_from(size.div_ceil(ReadBudget::UNIT)).unwrap_or(u32::MAX).clamp(1, budget.units);
        let permit = Arc::clone(&budget.permits)
            .acquire_many_owned(units)
            .await
            .map_err(|_| Error::Internal("the read budget was closed".into()))?;
        // Replaced by a larger object meanwhile (objects are immutable): refused.
        let bytes = self.get_at_most(key, size).await?;
        Ok(Held { bytes, _permit: permit })
    }

    /// Reads a byte range of an object, which must hold all of it: an object cut shorter in
    /// storage is refused as damaged, by name.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.refuse_special(key)?;
        let shorter =
            |size: u64| Error::corrupt(key, format!("is {size} bytes, shorter than the {} read from it", range.end));
        match self.store.get_range(&ObjectPath::from(key), range.clone()).await {
            Ok(bytes) if bytes.len() as u64 == range.end.saturating_sub(range.start) => Ok(bytes),
            Ok(bytes) => Err(shorter(range.start + bytes.len() as u64)),
            Err(error @ object_store::Error::NotFound { .. }) => Err(self.map_error(key, error)),
            // The stores say a range past the end in their own words ("Requested range was
            // invalid", a 416): the object's size says it plainly.
            Err(error) => match self.size_of(key).await {
                Ok(Some(size)) if size < range.end => Err(shorter(size)),
                _ => Err(self.map_error(key, error)),
            },
        }
    }

    /// The size of an object, or `None` when it does not exist.
    pub async fn size_of(&self, key: &str) -> Result<Option<u64>> {
        // A local folder's `HEAD` opens the file: a FIFO planted there would hang it.
        self.refuse_special(key)?;
        match self.store.head(&ObjectPath::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.map_error(key, e)),
        }
    }

    /// Writes a new object, durably. An existing object is left untouched.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        if self.local.is_some() {
            let payload = bytes.clone();
            return match self.in_folder(key, false, move |root, key| local::put_new(root, key, &payload)).await? {
                local::Outcome::Written => Ok(PutOutcome::Written),
                local::Outcome::Exists => self.claim(key, bytes).await,
            };
        }
        if bytes.len() > MULTIPART_THRESHOLD {
            return self.put_new_in_parts(key, bytes).await;
        }
        match self.create(key, &bytes).await {
            Ok(()) => {}
            Err(Created::Exists) => return self.claim(key, bytes).await,
            Err(Created::Failed(e)) => return Err(self.map_error(key, e)),
            // Services without conditional PUT: look first. Content-addressed objects make a
            // lost race harmless (same name, same bytes); `init` is the only other writer.
            Err(Created::Unsupported) => {
                if self.size_of(key).await?.is_some() {
                    return Ok(PutOutcome::AlreadyThere);
                }
                self.store
                    .put(&ObjectPath::from(key), PutPayload::from_bytes(bytes))
                    .await
                    .map_err(|e| self.map_error(key, e))?;
            }
        }
        Ok(PutOutcome::Written)
    }

    /// A local folder's write or delete ([`local`]), on a blocking thread. Its failure is said
    /// as object_store's would be; a refusal (permissions, a read-only mount) to a delete is
    /// [`Error::DeleteRefused`].
    async fn in_folder<T: Send + 'static>(
        &self,
        key: &str,
        deleting: bool,
        work: impl FnOnce(&local::Root, &str) -> std::result::Result<T, local::Failed> + Send + 'static,
    ) -> Result<T> {
        let root = Arc::clone(self.local.as_ref().expect("only for local folders"));
        let owned = key.to_string();
        let done =
            tokio::task::spawn_blocking(move || work(&root, &owned)).await.expect("a local write does not panic");
        done.map_err(|failed| {
            failed.into_error(|path, error| {
                let said = std::io::Error::new(error.kind(), format!("{}: {error}", path.display()));
                let source = object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(said) };
                if deleting && is_refusal(&source) {
                    Error::DeleteRefused { location: self.location.clone(), object: key.to_string(), source }
                } else {
                    Error::Storage { location: self.location.clone(), source }
                }
            })
        })
    }

    /// A conditional create (`If-None-Match: *`), sent again, up to `create_retries` times,
    /// when the connection broke before the answer came: the create may have been done.
    async fn create(&self, key: &str, bytes: &Bytes) -> std::result::Result<(), Created> {
        let mut lost = 0;
        loop {
            let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
            match self.store.put_opts(&ObjectPath::from(key), PutPayload::from_bytes(bytes.clone()), options).await {
                Ok(_) => return Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => return Err(Created::Exists),
                Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                    return Err(Created::Unsupported);
                }
                Err(error) if lost < self.create_retries && answer_was_lost(&error) => {
                    lost += 1;
                    tracing::info!(
                        "{}: {key}: the connection broke before the answer; sending it again",
                        self.location
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(200 << lost.min(6))).await;
                }
                Err(error) => return Err(Created::Failed(error)),
            }
        }
    }

    /// A create found the object. An earlier try of it may have made it, its answer lost (ours
    /// above, or object_store's own, which resends a request whose connection closed before
    /// the answer): an object that is not named by its content and holds the same bytes is this
    /// writer's (a lock holds a random id), so it was written. Anything else is another
    /// writer's, or a leftover, as [`Target::heal`] decides.
    async fn claim(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        if is_content_addressed(key) {
            return self.heal(key, bytes).await;
        }
        match self.holds(key, &bytes).await? {
            Some(true) => Ok(PutOutcome::Written),
            Some(false) => self.heal(key, bytes).await,
            // Gone since (a lock released between the two requests): it was not ours, and a
            // caller that wants the name asks again.
            None => Ok(PutOutcome::AlreadyThere),
        }
    }

    /// Whether the object `key` holds exactly `bytes` (None: there is no such object). One
    /// larger than `bytes`, or that is no regular file, does not.
    pub async fn holds(&self, key: &str, bytes: &[u8]) -> Result<Option<bool>> {
        match self.get_at_most(key, bytes.len() as u64).await {
            Ok(found) => Ok(Some(found == bytes)),
            Err(Error::Corrupt { .. }) => Ok(Some(false)),
            Err(Error::Missing { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// A large content-addressed object, in parts. S3 makes it visible only when the upload
    /// completes, so a dropped connection leaves no partial object behind.
    async fn put_new_in_parts(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        // As `heal` decides: only a content-addressed object of another size is replaced.
        if let Some(size) = self.size_of(key).await?
            && (size == bytes.len() as u64 || !is_content_addressed(key))
        {
            return Ok(PutOutcome::AlreadyThere);
        }
        let path = ObjectPath::from(key);
        let mut tries = 0;
        loop {
            let upload = self.store.put_multipart(&path).await.map_err(|e| self.map_error(key, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
            writer.put(bytes.clone());
            let Err(error) = writer.finish().await else {
                return Ok(PutOutcome::Written);
            };
            // The completion may have been done before its answer was lost for good, and what
            // failed may be the abort after a part, not the part: look before sending again.
            if self.size_of(key).await? == Some(bytes.len() as u64) {
                return Ok(PutOutcome::Written);
            }
            tries += 1;
            if tries > self.create_retries.min(MULTIPART_RETRIES) {
                return Err(self.map_error(key, error));
            }
            tracing::info!("{}: {key}: the upload in parts failed ({error}); sending it again", self.location);
            tokio::time::sleep(std::time::Duration::from_millis(500 << tries)).await;
        }
    }

    /// An object already has this name. Names are content hashes, so a copy of another size is
    /// a leftover of an interrupted upload on a server without atomic writes: replace it.
    async fn heal(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        // Only an object named by its hash can be told to be a leftover by its size.
        if !is_content_addressed(key) || self.size_of(key).await? == Some(bytes.len() as u64) {
            return Ok(PutOutcome::AlreadyThere);
        }
        tracing::warn!("{}: replacing {key}, which has the wrong size (an interrupted upload?)", self.location);
        self.rewrite(key, bytes).await?;
        Ok(PutOutcome::Written)
    }

    /// Writes `bytes` over the object named `key`, durably, in one step (a reader sees the old
    /// bytes or the new): a content-addressed object found damaged, replaced by bytes checked
    /// against its name (`copy --repair`, a leftover [`Self::put_new`] heals). Needs no right
    /// to delete.
    pub async fn rewrite(&self, key: &str, bytes: Bytes) -> Result<()> {
        if self.local.is_some() {
            return self.in_folder(key, false, move |root, key| local::replace(root, key, &bytes, true)).await;
        }
        self.store
            .put(&ObjectPath::from(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.map_error(key, e))?;
        Ok(())
    }

    /// Reads a whole object with its version, or `None` when it does not exist. Only for the
    /// few mutable objects (locks), which are small: one over [`MAX_MUTABLE_OBJECT`] bytes is
    /// refused as corrupt before its body is read.
    pub async fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
        self.refuse_special(key)?;
        let result = match self.store.get_opts(&ObjectPath::from(key), GetOptions::default()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.map_error(key, e)),
        };
        if result.meta.size > MAX_MUTABLE_OBJECT {
            return Err(Error::corrupt(key, format!("{} bytes: too large for what it is", result.meta.size)));
        }
        let version = UpdateVersion { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
        match result.bytes().await {
            Ok(bytes) => Ok(Some((bytes, ObjectVersion(version)))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.map_error(key, e)),
        }
    }

    /// Replaces an object only if it is still at `expected` (S3's `If-Match`; exclusive on AWS
    /// S3, MinIO and moto, a check-then-write on s3s-fs). A local folder has no such write:
    /// [`Replaced::Unsupported`], and the caller decides.
    pub async fn replace(&self, key: &str, bytes: Bytes, expected: &ObjectVersion) -> Result<Replaced> {
        if self.local.is_some() {
            return Ok(Replaced::Unsupported);
        }
        let options = PutOptions { mode: PutMode::Update(expected.0.clone()), ..PutOptions::default() };
        match self.store.put_opts(&ObjectPath::from(key), PutPayload::from_bytes(bytes.clone()), options).await {
            Ok(_) => Ok(Replaced::Replaced),
            // A replace whose answer was lost and that object_store resent finds the object
            // changed by itself: holding exactly our bytes (a lock's random id), it is ours.
            Err(object_store::Error::Precondition { .. }) => match self.holds(key, &bytes).await? {
                Some(true) => Ok(Replaced::Replaced),
                Some(false) | None => Ok(Replaced::Changed),
            },
            Err(object_store::Error::NotFound { .. }) => Ok(Replaced::Changed),
            Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                Ok(Replaced::Unsupported)
            }
            Err(e) => Err(self.map_error(key, e)),
        }
    }

    /// Writes an object whether or not it exists (atomically: a reader sees the old bytes or the
    /// new). Only for the few mutable objects (locks); not synced, since they need not outlive
    /// a crash.
    pub async fn overwrite(&self, key: &str, bytes: Bytes) -> Result<()> {
        if self.local.is_some() {
            return self.in_folder(key, false, move |root, key| local::replace(root, key, &bytes, false)).await;
        }
        self.store
            .put(&ObjectPath::from(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.map_error(key, e))?;
        Ok(())
    }

    /// Lists objects under a prefix: (key, size), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = ObjectPath::from(prefix);
        let mut objects: Vec<(String, u64)> = Vec::new();
        let mut listing = self.store.list(Some(&prefix));
        while let Some(listed) = listing.next().await {
            match listed {
                Ok(meta) => objects.push((meta.location.to_string(), meta.size)),
                // A name crmvault never writes (a newline in it, bytes that are not UTF-8): a
                // stray file, or planted. The store's listing ends at it, so what follows would
                // be missed: refused, in one line that names it.
                Err(object_store::Error::InvalidPath { source }) => {
                    return Err(Error::Invalid(format!(
                        "{}: holds an object whose name crmvault cannot read ({}): move it out of the repository",
                        self.location,
                        source.to_string().escape_debug()
                    )));
                }
                Err(e) => return Err(self.map_error(prefix.as_ref(), e)),
            }
        }
        objects.sort();
        Ok(objects)
    }

    /// Whether the location holds any object at all.
    pub async fn is_empty(&self) -> Result<bool> {
        let mut listing = self.store.list(None);
        Ok(listing.try_next().await.map_err(|e| self.map_error("", e))?.is_none())
    }

    /// Removes an object (prune, `rekey --reencrypt`, tests); one already gone is no error.
    /// A delete the storage refuses, rather than fails at, is [`Error::DeleteRefused`]
    /// ([`is_refusal`]): prune leaves such objects and goes on.
    pub async fn delete(&self, key: &str) -> Result<()> {
        // By name in its folder, reached without following a link: a folder swapped for one
        // would send the delete outside the repository. Staging files too (object_store
        // refuses their names).
        if self.local.is_some() {
            return self.in_folder(key, true, local::remove).await;
        }
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) if is_refusal(&source) => {
                Err(Error::DeleteRefused { location: self.location.clone(), object: key.to_string(), source })
            }
            Err(e) => Err(self.map_error(key, e)),
        }
    }

    /// The staging files (`<key>#<n>`) that writes which never finished left under `folder`,
    /// with their sizes: on a local folder, what a backup killed while it wrote an object
    /// leaves; object_store's listing skips them. None on S3, where an unfinished upload never
    /// becomes an object. Only prune deletes them ([`Target::delete`]), under the exclusive
    /// lock, when no write can be running.
    pub async fn staging_files(&self, folder: &str) -> Result<Vec<(String, u64)>> {
        if self.local.is_none() {
            return Ok(Vec::new());
        }
        self.in_folder(folder, false, local::staging_files).await
    }

    fn map_error(&self, key: &str, error: object_store::Error) -> Error {
        match error {
            object_store::Error::NotFound { .. } => {
                Error::Missing { object: key.to_string(), location: self.location.clone() }
            }
            other => Error::Storage { location: self.location.clone(), source: other },
        }
    }
}

/// Whether the storage refused an operation rather than failed at it: S3's 403 (AccessDenied:
/// no permission, or an Object Lock retention on the version) and 401, which object_store
/// reports as `PermissionDenied` and `Unauthenticated`; on a local folder, `EACCES` and `EPERM`
/// (permissions, an immutable file: `chattr +i`) and `EROFS` (a read-only mount), which its
/// `LocalFileSystem` wraps in a generic error with the `io::Error` as its source. Asking again
/// gets the same answer; a network fault or a 5xx is not a refusal.
pub fn is_refusal(error: &object_store::Error) -> bool {
    if matches!(error, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }) {
        return true;
    }
    matches!(io_kind(error), Some(std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem))
}

/// The kind of the file system's error behind a storage error, if one is (a local folder's:
/// `LocalFileSystem` wraps it in a generic error).
pub fn io_kind(error: &object_store::Error) -> Option<std::io::ErrorKind> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

/// Why a conditional create did not make the object.
enum Created {
    /// An object has the name.
    Exists,
    /// The storage has no conditional create.
    Unsupported,
    /// Anything else.
    Failed(object_store::Error),
}

/// Whether a request failed after it was sent and before its answer came: a connection reset,
/// cut short or timed out. object_store resends such a request only if it is idempotent.
fn answer_was_lost(error: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(http) = cause.downcast_ref::<HttpError>() {
            return matches!(http.kind(), HttpErrorKind::Interrupted | HttpErrorKind::Timeout);
        }
        source = cause.source();
    }
    false
}

/// Whether `key` names its object by the hash of its content (64 hex digits, as packs are).
fn is_content_addressed(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(os_error: i32) -> object_store::Error {
        object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from_raw_os_error(os_error)),
        }
    }

    #[tokio::test]
    async fn staging_files_left_by_unfinished_writes_are_listed_apart_and_deleted() {
        let root = tempfile::tempdir().unwrap();
        let target = Target::open(root.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        let pack = format!("data/ab/{}", "ab".repeat(32));
        target.put_new(&pack, Bytes::from_static(b"pack")).await.unwrap();
        std::fs::write(root.path().join(format!("{pack}#0")), b"half a pack").unwrap();
        std::fs::write(root.path().join("data/ab/notes#draft"), b"not a staging name").unwrap();
        let listed: Vec<String> = target.list("data").await.unwrap().into_iter().map(|(key, _)| key).collect();
        assert!(listed.contains(&pack) && !listed.iter().any(|key| key.ends_with("#0")), "{listed:?}");
        // Nothing is listed through a link planted in the repository.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("outside#1"), b"not the repository's").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("data/zz")).unwrap();
        assert_eq!(target.staging_files("data").await.unwrap(), [(format!("{pack}#0"), 11)]);
        assert!(target.staging_files("index").await.unwrap().is_empty(), "a missing folder holds none");
        target.delete(&format!("{pack}#0")).await.unwrap();
        assert!(target.staging_files("data").await.unwrap().is_empty());
        assert!(root.path().join(&pack).exists() && root.path().join("data/ab/notes#draft").exists());
    }

    /// A storage writer who swaps a folder of a local repository for a link to another folder,
    /// over and over, never gets one of this host's writes or deletes to land there: a check of
    /// the path followed by a delete by path did (prune deleted another target's pack).
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_folder_swapped_for_a_link_meanwhile_never_takes_a_write_or_delete_outside() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let repository = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = Target::open(repository.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        let (folder, link) = (repository.path().join("data/ab"), repository.path().join("data/swap"));
        let outside = elsewhere.path().join("ab");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        // Another target's objects, under the names of the ones deleted here.
        let names: Vec<String> = (0..400u32).map(|n| format!("{n:064x}")).collect();
        for name in &names {
            std::fs::write(outside.join(name), b"another target's pack").unwrap();
            std::fs::write(folder.join(name), b"a pack no snapshot needs").unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let flags = rustix::fs::RenameFlags::EXCHANGE;
                    rustix::fs::renameat_with(rustix::fs::CWD, &folder, rustix::fs::CWD, &link, flags).unwrap();
                    swaps += 1;
                }
                swaps
            }
        });
        let (mut refused, mut other_errors) = (0, Vec::new());
        for (n, name) in names.iter().enumerate() {
            // Now and then a pack past the page cache's threshold (O_DIRECT where it is taken).
            let new = if n % 40 == 0 { Bytes::from(vec![7u8; 1 << 20]) } else { Bytes::from_static(b"written") };
            for done in [
                target.delete(&format!("data/ab/{name}")).await,
                target.put_new(&format!("data/ab/new-{name}"), new).await.map(drop),
                target.rewrite(&format!("data/ab/mended-{name}"), Bytes::from_static(b"mended")).await,
                target.overwrite(&format!("data/ab/lock-{name}"), Bytes::from_static(b"lock")).await,
            ] {
                match done {
                    Ok(()) => {}
                    Err(error) if error.to_string().contains("symbolic link inside the repository") => refused += 1,
                    Err(error) => other_errors.push(error.to_string()),
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        let mut found: Vec<String> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        found.sort();
        assert!(found == names, "{} of {} objects outside, {swaps} swaps", found.len(), names.len());
        assert!(other_errors.is_empty(), "{other_errors:?}");
        assert!(refused > 0, "the link was met at least once in {swaps} swaps");
    }

    /// The repository's own folder renamed away and a link to elsewhere left at its path while
    /// a command runs (by whoever may write beside it): its writes and deletes stay in the
    /// folder it opened.
    #[tokio::test]
    async fn the_root_made_a_link_after_it_was_opened_takes_no_write_or_delete_elsewhere() {
        let base = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let path = base.path().join("repo");
        std::fs::create_dir_all(path.join("data")).unwrap();
        std::fs::write(path.join("data/old"), b"garbage").unwrap();
        std::fs::create_dir_all(elsewhere.path().join("data")).unwrap();
        std::fs::write(elsewhere.path().join("data/old"), b"precious").unwrap();
        let target = Target::open(path.to_str().unwrap(), OpenMode::Existing).unwrap();
        std::fs::rename(&path, base.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), &path).unwrap();
        target.delete("data/old").await.unwrap();
        target.put_new("data/new", Bytes::from_static(b"new")).await.unwrap();
        target.overwrite("locks/writer", Bytes::from_static(b"lock")).await.unwrap();
        assert_eq!(std::fs::read(elsewhere.path().join("data/old")).unwrap(), b"precious");
        assert!(!elsewhere.path().join("data/new").exists() && !elsewhere.path().join("locks").exists());
        let moved = base.path().join("moved");
        assert!(!moved.join("data/old").exists());
        assert_eq!(std::fs::read(moved.join("data/new")).unwrap(), b"new");
        assert_eq!(std::fs::read(moved.join("locks/writer")).unwrap(), b"lock");
        // A key that climbs out is no object's name.
        assert!(target.put_new("data/../../escaped", Bytes::from_static(b"x")).await.is_err());
        assert!(target.delete("data/../../repo").await.is_err());
        assert!(!base.path().join("escaped").exists() && path.exists());
    }

    #[tokio::test]
    async fn reads_within_a_budget_wait_for_room_and_one_larger_than_it_is_read_alone() {
        use std::time::Duration;
        let root = tempfile::tempdir().unwrap();
        let target = Target::open(root.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        let unit = usize::try_from(ReadBudget::UNIT).unwrap();
        for (name, units) in [("a", 6), ("b", 6), ("huge", 40), ("tiny", 0)] {
            target.put_new(name, Bytes::from(vec![7u8; units * unit + 1])).await.unwrap();
        }
        let budget = ReadBudget::new(ReadBudget::UNIT * 10);
        let waits = |read| async move { tokio::time::timeout(Duration::from_millis(200), read).await.is_err() };
        let a = target.get_within("a", u64::MAX, &budget).await.unwrap();
        assert_eq!(a.len(), 6 * unit + 1);
        // 7 units held, 3 left: b (7) waits, a one-unit object does not.
        assert!(waits(target.get_within("b", u64::MAX, &budget)).await);
        let tiny = target.get_within("tiny", u64::MAX, &budget).await.unwrap();
        // Larger than the whole budget: read once nothing else is held.
        assert!(waits(target.get_within("huge", u64::MAX, &budget)).await);
        drop(a);
        assert!(waits(target.get_within("huge", u64::MAX, &budget)).await);
        drop(tiny);
        let huge = target.get_within("huge", u64::MAX, &budget).await.unwrap();
        assert_eq!(huge.len(), 40 * unit + 1);
        assert!(waits(target.get_within("tiny", u64::MAX, &budget)).await);
        drop(huge);
        target.get_within("b", u64::MAX, &budget).await.unwrap();
        // The limit still refuses before anything is read.
        let refused = target.get_within("huge", 1024, &budget).await;
        assert!(matches!(refused, Err(Error::Corrupt { .. })), "{refused:?}");
        // A size the caller knows: an object larger than it (replaced in storage) is refused,
        // not read into what the budget counted.
        let sized = target.get_within_sized("b", 6 * ReadBudget::UNIT + 1, &budget).await.unwrap();
        assert_eq!(sized.len(), 6 * unit + 1);
        drop(sized);
        let refused = target.get_within_sized("huge", 6 * ReadBudget::UNIT + 1, &budget).await;
        assert!(matches!(refused, Err(Error::Corrupt { .. })), "{refused:?}");
    }

    #[tokio::test]
    async fn a_range_past_an_object_cut_short_in_storage_is_damage_named_by_its_key() {
        let root = tempfile::tempdir().unwrap();
        let target = Target::open(root.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        let pack = format!("data/ab/{}", "ab".repeat(32));
        target.put_new(&pack, Bytes::from(vec![1u8; 100])).await.unwrap();
        assert_eq!(target.get_range(&pack, 10..100).await.unwrap().len(), 90);
        for range in [0..4096, 50..101, 100..200, 4000..4096] {
            match target.get_range(&pack, range.clone()).await {
                Err(Error::Corrupt { object, detail }) => {
                    assert_eq!(object, pack);
                    assert!(detail.contains("is 100 bytes, shorter than"), "{range:?}: {detail}");
                }
                other => panic!("{range:?}: {other:?}"),
            }
        }
        std::fs::write(root.path().join(&pack), b"").unwrap();
        let emptied = target.get_range(&pack, 0..64).await;
        assert!(matches!(&emptied, Err(Error::Corrupt { object, .. }) if *object == pack), "{emptied:?}");
        let missing = target.get_range("data/cd/gone", 0..64).await;
        assert!(matches!(missing, Err(Error::Missing { .. })), "{missing:?}");
    }

    #[test]
    fn a_refused_delete_is_told_from_a_failed_one() {
        const EPERM: i32 = 1;
        const EACCES: i32 = 13;
        const EROFS: i32 = 30;
        const ENOSPC: i32 = 28;
        const ECONNRESET: i32 = 104;
        for refused in [EPERM, EACCES, EROFS] {
            assert!(is_refusal(&local(refused)), "errno {refused}");
        }
        for failed in [ENOSPC, ECONNRESET] {
            assert!(!is_refusal(&local(failed)), "errno {failed}");
        }
        let denied = object_store::Error::PermissionDenied { path: "data/ab/x".into(), source: "AccessDenied".into() };
        assert!(is_refusal(&denied));
        let unauthenticated = object_store::Error::Unauthenticated { path: "x".into(), source: "401".into() };
        assert!(is_refusal(&unauthenticated));
        let server = object_store::Error::Generic { store: "S3", source: "500 Internal Server Error".into() };
        assert!(!is_refusal(&server));
        assert!(!is_refusal(&object_store::Error::NotFound { path: "x".into(), source: "gone".into() }));
    }
}
