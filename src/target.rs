//! Where a repository lives: an `object_store` backend plus the location the user typed.
//!
//! Every write goes through [`Target::put_new`], which never overwrites an object (objects are
//! immutable) and, on a local folder, syncs the file and its directories before returning, so a
//! snapshot written after its packs can never survive a crash that lost them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};

/// One storage location of a repository.
#[derive(Clone)]
pub struct Target {
    store: Arc<dyn ObjectStore>,
    location: String,
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("location", &self.location).finish_non_exhaustive()
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

impl Target {
    /// Opens a location: a plain path or a `file:///` URL.
    pub fn open(location: &str, mode: OpenMode) -> Result<Target> {
        let path = local_path(location)?;
        if mode == OpenMode::Create {
            std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        if !path.is_dir() {
            return Err(Error::NotARepository { location: location.to_string() });
        }
        let root = path.canonicalize().map_err(|e| Error::io(&path, e))?;
        let store = LocalFileSystem::new_with_prefix(&root)?;
        Ok(Target { store: Arc::new(store), location: location.to_string(), local_root: Some(root) })
    }

    /// The location as the user gave it (never holds credentials).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let result = self.store.get(&ObjectPath::from(key)).await;
        match result {
            Ok(object) => Ok(object.bytes().await.map_err(|e| self.map_error(key, e))?),
            Err(e) => Err(self.map_error(key, e)),
        }
    }

    /// Reads a byte range of an object.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.store.get_range(&ObjectPath::from(key), range).await.map_err(|e| self.map_error(key, e))
    }

    /// The size of an object, or `None` when it does not exist.
    pub async fn size_of(&self, key: &str) -> Result<Option<u64>> {
        match self.store.head(&ObjectPath::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a new object, durably. An existing object is left untouched.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&ObjectPath::from(key), PutPayload::from_bytes(bytes), options).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return Ok(PutOutcome::AlreadyThere),
            Err(e) => return Err(e.into()),
        }
        if let Some(root) = &self.local_root {
            let root = root.clone();
            let key = key.to_string();
            tokio::task::spawn_blocking(move || sync_local(&root, &key))
                .await
                .expect("the fsync task does not panic")?;
        }
        Ok(PutOutcome::Written)
    }

    /// Lists objects under a prefix: (key, size), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = ObjectPath::from(prefix);
        let mut objects: Vec<(String, u64)> =
            self.store.list(Some(&prefix)).map_ok(|meta| (meta.location.to_string(), meta.size)).try_collect().await?;
        objects.sort();
        Ok(objects)
    }

    /// Whether the location holds any object at all.
    pub async fn is_empty(&self) -> Result<bool> {
        let mut listing = self.store.list(None);
        Ok(listing.try_next().await?.is_none())
    }

    /// Removes an object (tests and, later, prune).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn map_error(&self, key: &str, error: object_store::Error) -> Error {
        match error {
            object_store::Error::NotFound { .. } => {
                Error::Missing { object: key.to_string(), location: self.location.clone() }
            }
            other => other.into(),
        }
    }
}

/// Turns a user's location into a local folder, or says which kinds are supported.
fn local_path(location: &str) -> Result<PathBuf> {
    if let Some(rest) = location.strip_prefix("file://") {
        let url = url::Url::parse(location)
            .map_err(|e| Error::Invalid(format!("{location:?} is not a valid file URL: {e}")))?;
        return url.to_file_path().map_err(|()| {
            Error::Invalid(format!(
                "{location:?} is not a local file URL (expected file:///absolute/path, got {rest:?})"
            ))
        });
    }
    if location.contains("://") {
        return Err(Error::Invalid(format!(
            "{location:?}: only local folders and file:/// URLs are supported by this build"
        )));
    }
    if location.is_empty() {
        return Err(Error::Invalid("the repository location is empty".into()));
    }
    Ok(PathBuf::from(location))
}

/// Syncs a file just written and the directories up to the root, so its name is durable too.
fn sync_local(root: &Path, key: &str) -> Result<()> {
    let path = root.join(key);
    std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| Error::io(&path, e))?;
    let mut directory = path.parent();
    while let Some(dir) = directory {
        std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))?;
        if dir == root {
            break;
        }
        directory = dir.parent();
    }
    Ok(())
}
