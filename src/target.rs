//! Where a repository lives: a local folder or an S3-compatible bucket, through `object_store`.
//!
//! Every write goes through [`Target::put_new`], which never overwrites an object (objects are
//! immutable) and, on a local folder, syncs the file and its directories before returning, so a
//! snapshot written after its packs can never survive a crash that lost them. On S3 a PUT is
//! durable when it returns; transient faults (5xx, timeouts, resets) are retried with backoff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use age::secrecy::{ExposeSecret, SecretString};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, Checksum, S3ConditionalPut, S3CopyIfNotExists};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, RetryConfig, WriteMultipart};

/// Objects larger than this go to S3 in parts, each retried on its own.
const MULTIPART_THRESHOLD: usize = 8 << 20;
/// Size of one part (S3's minimum is 5 MiB).
const MULTIPART_PART: usize = 5 << 20;
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

/// A repository location as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local folder.
    Local(PathBuf),
    /// `s3://bucket/prefix?option=value…`
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (may be empty).
        prefix: String,
        /// Options given in the URL's query.
        options: BTreeMap<String, String>,
    },
}

impl Location {
    /// Parses a plain path, a `file:///` URL or an `s3://bucket/prefix` URL. An S3 URL that
    /// holds credentials (`s3://KEY:SECRET@bucket`, `?secret_access_key=…`, anything that looks
    /// like a key, secret, token or signature) is refused, and no error here repeats them.
    pub fn parse(text: &str) -> Result<Location> {
        if text.is_empty() {
            return Err(Error::Invalid("the repository location is empty".into()));
        }
        if text.starts_with("file://") {
            let shown = displayable(text);
            let url =
                url::Url::parse(text).map_err(|e| Error::Invalid(format!("{shown:?} is not a valid file URL: {e}")))?;
            let path = url.to_file_path().map_err(|()| {
                Error::Invalid(format!("{shown:?} is not a local file URL (expected file:///absolute/path)"))
            })?;
            return Ok(Location::Local(path));
        }
        if text.starts_with("s3://") {
            return Location::parse_s3(text);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(Error::Invalid(format!(
                "{:?}: unsupported scheme {scheme}:// (use a folder, file:///path or s3://bucket/prefix)",
                displayable(text)
            )));
        }
        Ok(Location::Local(PathBuf::from(text)))
    }

    fn parse_s3(text: &str) -> Result<Location> {
        let url = url::Url::parse(text)
            .map_err(|e| Error::Invalid(format!("{:?} is not a valid S3 URL: {e}", displayable(text))))?;
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                Error::Invalid(format!("{:?} names no bucket (expected s3://bucket/prefix)", displayable(text)))
            })?
            .to_string();
        let prefix = url.path().trim_matches('/').to_string();
        let options: BTreeMap<String, String> =
            url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let mut found = Vec::new();
        if !url.username().is_empty() || url.password().is_some() {
            found.push("a user name or password before the bucket".to_string());
        }
        found.extend(options.iter().filter(|(key, value)| holds_credential(key, value)).map(|(key, _)| key.clone()));
        if !found.is_empty() {
            let name = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
            return Err(Error::Invalid(format!(
                "refusing the repository location {name} because it holds credentials ({}), and locations \
                 are shown in logs and messages; give them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (AWS_SESSION_TOKEN) or in the [repository.\"{name}\"] section of the config file \
                 ($CRMVAULT_CONFIG_DIR/config.toml, mode 0600)",
                found.join(", ")
            )));
        }
        Ok(Location::S3 { bucket, prefix, options })
    }
}

/// Words that make a URL option look like a credential.
const CREDENTIAL_WORDS: [&str; 8] = ["key", "secret", "token", "password", "passwd", "credential", "signature", "auth"];

/// Whether a URL option carries a credential: its name looks like one (`access_key_id`,
/// `secret_access_key`, `session_token`, `X-Amz-Signature`, `sig`…), or its value is a URL with a
/// user or password (an `endpoint=https://key:secret@host`).
fn holds_credential(key: &str, value: &str) -> bool {
    let key = key.to_ascii_lowercase();
    CREDENTIAL_WORDS.iter().any(|word| key.contains(word))
        || key == "sig"
        || url::Url::parse(value).is_ok_and(|url| !url.username().is_empty() || url.password().is_some())
}

/// A location as it may be shown in a message: without anything before an `@` (a user and
/// password) and with the values of options that look like credentials replaced by `***`. For
/// text that may not parse: it errs toward hiding too much.
pub fn displayable(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    // The last `@` anywhere: a password may hold `/` or `?` when nobody percent-encoded it.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    let Some((before_query, query)) = rest.split_once('?') else {
        return format!("{scheme}://{rest}");
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !holds_credential(key, value) => pair.to_string(),
            Some((key, _)) => format!("{key}=***"),
            None => "***".to_string(),
        })
        .collect();
    format!("{scheme}://{before_query}?{}", pairs.join("&"))
}

/// How to reach an S3-compatible service. The CLI fills it from URL options, the config file
/// and the `AWS_*` environment; the library never reads the environment itself.
#[derive(Clone)]
pub struct S3Settings {
    /// Endpoint URL for non-AWS services (MinIO, Ceph, Garage, R2, B2, Wasabi…).
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<SecretString>,
    /// Session token (temporary credentials).
    pub session_token: Option<SecretString>,
    /// Allow `http://` to a non-loopback endpoint.
    pub allow_http: bool,
    /// Use `bucket.host` addressing instead of `host/bucket`.
    pub virtual_hosted_style: bool,
    /// Retries of a failed request.
    pub max_retries: usize,
    /// Give up retrying a request after this long.
    pub retry_timeout: Duration,
    /// Without keys, ask the cloud's instance or container metadata service for credentials.
    /// Off unless asked for: it sends requests to a link-local address.
    pub instance_credentials: bool,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: false,
            virtual_hosted_style: false,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            instance_credentials: false,
        }
    }
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

/// Announces the SHA-256 checksums object_store sends, which buckets with S3 Object Lock
/// require on every upload (a retention period cannot be set on an unchecked body).
fn checksum_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-amz-sdk-checksum-algorithm", http::HeaderValue::from_static("SHA256"));
    headers
}

/// Whether a URL's host is this machine (plain HTTP is fine there).
fn is_loopback(endpoint: &url::Url) -> bool {
    match endpoint.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
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
        if mode == OpenMode::Create {
            std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        }
        if !path.is_dir() {
            return Err(Error::NotARepository { location: location.to_string() });
        }
        let root = path.canonicalize().map_err(|e| Error::io(path, e))?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|source| Error::Storage { location: location.to_string(), source })?;
        Ok(Target { store: Arc::new(store), location: location.to_string(), local_root: Some(root) })
    }

    fn open_s3(location: &str, bucket: &str, prefix: &str, settings: &S3Settings) -> Result<Target> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(settings.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_virtual_hosted_style_request(settings.virtual_hosted_style)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // The server checks every upload against its SHA-256: a body cut short is refused.
            .with_checksum_algorithm(Checksum::SHA256)
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(20),
                    base: 2.0,
                },
                max_retries: settings.max_retries,
                retry_timeout: settings.retry_timeout,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300))
                    .with_default_headers(checksum_headers()),
            );
        if let Some(endpoint) = &settings.endpoint {
            let url = url::Url::parse(endpoint).map_err(|e| {
                Error::Invalid(format!("S3 endpoint {:?} for {location} is not a URL: {e}", displayable(endpoint)))
            })?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(Error::Invalid(format!(
                    "refusing the S3 endpoint {} for {location} because it holds a user or password; give \
                     credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or the config file",
                    displayable(endpoint)
                )));
            }
            let plain = url.scheme() == "http";
            if plain && !settings.allow_http && !is_loopback(&url) {
                return Err(Error::Invalid(format!(
                    "refusing plain HTTP to {endpoint} for {location}: credentials and backups would cross the network \
                     unencrypted; use https://, or pass --allow-http if this network is trusted"
                )));
            }
            builder = builder.with_endpoint(endpoint.trim_end_matches('/')).with_allow_http(plain);
        }
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(key), Some(_)) => builder = builder.with_access_key_id(key),
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Invalid(format!(
                    "{location}: give both an access key id and a secret access key (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                )));
            }
            (None, None) if settings.instance_credentials => {}
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "{location}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a [repository] \
                     section in the config file (instance_credentials = true to use the cloud's metadata service)"
                )));
            }
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        if let Some(token) = &settings.session_token {
            builder = builder.with_token(token.expose_secret());
        }
        let store = builder.build().map_err(|e| Error::Invalid(format!("{location}: {e}")))?;
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { Arc::new(store) } else { Arc::new(PrefixStore::new(store, prefix)) };
        Ok(Target { store, location: location.to_string(), local_root: None })
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
            Err(e) => Err(self.map_error(key, e)),
        }
    }

    /// Writes a new object, durably. An existing object is left untouched.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        if let Some(root) = &self.local_root {
            refuse_linked_folders(root, key)?;
        }
        if self.local_root.is_none() && bytes.len() > MULTIPART_THRESHOLD {
            return self.put_new_in_parts(key, bytes).await;
        }
        #[cfg(target_os = "linux")]
        if let Some(root) = &self.local_root
            && bytes.len() >= direct::THRESHOLD
        {
            let (root, key_owned, payload) = (root.clone(), key.to_string(), bytes.clone());
            let written = tokio::task::spawn_blocking(move || direct::put_new(&root, &key_owned, &payload))
                .await
                .expect("the direct write task does not panic")?;
            match written {
                direct::Outcome::Written => return Ok(PutOutcome::Written),
                direct::Outcome::Exists => return self.heal(key, bytes).await,
                direct::Outcome::Unsupported => {}
            }
        }
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&ObjectPath::from(key), PutPayload::from_bytes(bytes.clone()), options).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return self.heal(key, bytes).await,
            // Services without conditional PUT: look first. Content-addressed objects make a
            // lost race harmless (same name, same bytes); `init` is the only other writer.
            Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                if self.size_of(key).await?.is_some() {
                    return Ok(PutOutcome::AlreadyThere);
                }
                self.store
                    .put(&ObjectPath::from(key), PutPayload::from_bytes(bytes))
                    .await
                    .map_err(|e| self.map_error(key, e))?;
            }
            Err(e) => return Err(self.map_error(key, e)),
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
        let upload = self.store.put_multipart(&path).await.map_err(|e| self.map_error(key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
        writer.put(bytes);
        match writer.finish().await {
            Ok(_) => Ok(PutOutcome::Written),
            Err(error) => Err(self.map_error(key, error)),
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
        self.store
            .put(&ObjectPath::from(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.map_error(key, e))?;
        if let Some(root) = &self.local_root {
            let (root, key) = (root.clone(), key.to_string());
            tokio::task::spawn_blocking(move || sync_local(&root, &key))
                .await
                .expect("the fsync task does not panic")?;
        }
        Ok(PutOutcome::Written)
    }

    /// Lists objects under a prefix: (key, size), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = ObjectPath::from(prefix);
        let mut objects: Vec<(String, u64)> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
            .map_err(|e| self.map_error(prefix.as_ref(), e))?;
        objects.sort();
        Ok(objects)
    }

    /// Whether the location holds any object at all.
    pub async fn is_empty(&self) -> Result<bool> {
        let mut listing = self.store.list(None);
        Ok(listing.try_next().await.map_err(|e| self.map_error("", e))?.is_none())
    }

    /// Removes an object (tests and, later, prune).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_error(key, e)),
        }
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

/// Whether `key` names its object by the hash of its content (64 hex digits, as packs are).
fn is_content_addressed(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Refuses to write `key` when one of its folders under the repository's root is a symbolic
/// link: whoever can write to the storage could otherwise send this host's writes anywhere it
/// may write (the root itself may be a link: the admin chose it).
fn refuse_linked_folders(root: &Path, key: &str) -> Result<()> {
    let mut path = root.to_path_buf();
    let mut folders: Vec<&str> = key.split('/').collect();
    folders.pop();
    for folder in folders {
        path.push(folder);
        if std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_symlink()) {
            return Err(Error::Invalid(format!(
                "{} is a symbolic link inside the repository; refusing to write through it (it was not made \
                 by crmvault: planted in storage?)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Syncs a file just written and the directories up to the root, so its name is durable too.
fn sync_local(root: &Path, key: &str) -> Result<()> {
    let path = root.join(key);
    std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| Error::io(&path, e))?;
    sync_directories(root, &path)
}

/// Syncs the directories from `path`'s parent up to the root, so a new name in them is durable.
fn sync_directories(root: &Path, path: &Path) -> Result<()> {
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

/// Large objects (packs) written to a local folder with `O_DIRECT`, past the page cache.
///
/// A buffered write copies every byte into the page cache: 0.7 s of CPU for the 275 MB of a
/// scale-1 full backup on a 2-core VM, a tenth of the backup's own CPU while PostgreSQL needs
/// the other core, and it fills the backup host's cache (often the database server's) with
/// data nobody reads back soon. The object is staged as `<key>#<n>` (the name object_store's
/// listing skips), synced, then hard-linked to its name, which fails if the name exists: the
/// same create-only, crash-safe publication as every other write. Linux only (`O_DIRECT`);
/// elsewhere every write is buffered.
#[cfg(target_os = "linux")]
mod direct {
    use std::io::Write;
    use std::path::Path;

    use crate::error::{Error, Result};

    /// Objects at least this large take this path.
    pub const THRESHOLD: usize = 1 << 20;
    /// Alignment of buffers, lengths and offsets that every Linux file system accepts.
    const ALIGN: usize = 4096;
    /// Bytes copied at a time when the caller's buffer is not aligned.
    const BOUNCE: usize = 1 << 20;

    /// What a direct write did.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Outcome {
        /// Written and durable under its name.
        Written,
        /// The name was taken; nothing was changed.
        Exists,
        /// The file system does not take `O_DIRECT` (tmpfs, some FUSE or network file
        /// systems): write it the buffered way.
        Unsupported,
    }

    /// Writes `bytes` as the object `key` under `root`, durably, unless the name is taken.
    pub fn put_new(root: &Path, key: &str, bytes: &[u8]) -> Result<Outcome> {
        let path = root.join(key);
        let parent = path.parent().expect("an object's path is inside the root");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let Some((file, staging)) = open_staging(&path)? else {
            return Ok(Outcome::Unsupported);
        };
        match write_aligned(file, bytes) {
            Ok(()) => {}
            Err(e) => {
                let _ = std::fs::remove_file(&staging);
                return if is_unsupported(&e) { Ok(Outcome::Unsupported) } else { Err(Error::io(&staging, e)) };
            }
        }
        let linked = std::fs::hard_link(&staging, &path);
        let _ = std::fs::remove_file(&staging);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(Outcome::Exists),
            Err(e) => return Err(Error::io(&path, e)),
        }
        super::sync_directories(root, &path)?;
        Ok(Outcome::Written)
    }

    /// A new staging file `<path>#<n>` opened for direct writes; `None` when the file system
    /// refuses `O_DIRECT`.
    fn open_staging(path: &Path) -> Result<Option<(std::fs::File, std::path::PathBuf)>> {
        use std::os::unix::fs::OpenOptionsExt;

        for n in 1u32.. {
            let mut staging = path.as_os_str().to_owned();
            staging.push(format!("#{n}"));
            let staging = std::path::PathBuf::from(staging);
            let opened =
                std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(&staging);
            match opened {
                Ok(file) => return Ok(Some((file, staging))),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) if is_unsupported(&e) => return Ok(None),
                Err(e) => return Err(Error::io(&staging, e)),
            }
        }
        unreachable!("some staging name is free")
    }

    /// Writes `bytes` in aligned blocks (the last one padded with zeros, then cut back to the
    /// true length) and syncs the file.
    fn write_aligned(mut file: std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
        let whole = bytes.len() / ALIGN * ALIGN;
        let (body, tail) = bytes.split_at(whole);
        let aligned = body.as_ptr().align_offset(ALIGN) == 0;
        let mut bounce = AlignedBuffer::new(if aligned { ALIGN } else { BOUNCE });
        if aligned {
            file.write_all(body)?;
        } else {
            for piece in body.chunks(BOUNCE) {
                let buffer = bounce.get(piece.len());
                buffer.copy_from_slice(piece);
                file.write_all(buffer)?;
            }
        }
        if !tail.is_empty() {
            let buffer = bounce.get(ALIGN);
            buffer.fill(0);
            buffer[..tail.len()].copy_from_slice(tail);
            file.write_all(buffer)?;
            file.set_len(bytes.len() as u64)?;
        }
        // The data is on the device already; this flushes its cache and the file's size.
        file.sync_all()
    }

    /// Whether an error means "this file system or buffer does not do direct I/O".
    fn is_unsupported(error: &std::io::Error) -> bool {
        error.raw_os_error() == Some(libc::EINVAL)
    }

    /// A zeroed buffer whose usable part starts at an [`ALIGN`] boundary.
    struct AlignedBuffer {
        bytes: Vec<u8>,
        start: usize,
    }

    impl AlignedBuffer {
        fn new(size: usize) -> Self {
            let bytes = vec![0u8; size + ALIGN];
            let start = bytes.as_ptr().align_offset(ALIGN);
            AlignedBuffer { bytes, start }
        }

        /// The first `length` aligned bytes.
        fn get(&mut self, length: usize) -> &mut [u8] {
            &mut self.bytes[self.start..self.start + length]
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn content(length: usize) -> Vec<u8> {
            (0..length).map(|i| u8::try_from((i * 7 + i / 4096) % 251).expect("below 251")).collect()
        }

        #[test]
        fn a_direct_write_of_any_length_reads_back_unchanged_and_leaves_no_staging_file() {
            let root = tempfile::tempdir().unwrap();
            let mut expected = Vec::new();
            for length in [THRESHOLD, THRESHOLD + 1, 3 * ALIGN + 123, (8 << 20) + 4095] {
                let bytes = content(length);
                // Straight from an aligned buffer, and from an unaligned one through the bounce buffer.
                let mut aligned = AlignedBuffer::new(length);
                aligned.get(length).copy_from_slice(&bytes);
                let unaligned = &content(length + 1)[1..];
                for (way, view) in [("aligned", &*aligned.get(length)), ("unaligned", unaligned)] {
                    let key = format!("data/ab/{way}-{length}");
                    assert_eq!(put_new(root.path(), &key, view).unwrap(), Outcome::Written);
                    assert_eq!(std::fs::read(root.path().join(&key)).unwrap(), view, "{key}");
                    expected.push(format!("{way}-{length}"));
                }
            }
            let mut names: Vec<_> = std::fs::read_dir(root.path().join("data/ab"))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            expected.sort();
            assert_eq!(names, expected);
        }

        #[test]
        fn a_direct_write_never_replaces_an_existing_object() {
            let root = tempfile::tempdir().unwrap();
            let first = content(THRESHOLD);
            assert_eq!(put_new(root.path(), "data/pack", &first).unwrap(), Outcome::Written);
            let other = vec![1u8; THRESHOLD];
            assert_eq!(put_new(root.path(), "data/pack", &other).unwrap(), Outcome::Exists);
            assert_eq!(std::fs::read(root.path().join("data/pack")).unwrap(), first);
            assert_eq!(std::fs::read_dir(root.path().join("data")).unwrap().count(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parse error of `text`, which must not contain `secret`.
    fn refusal(text: &str, secret: &str) -> String {
        let error = Location::parse(text).expect_err(text).to_string();
        assert!(!error.contains(secret), "{text} → {error}");
        assert!(!error.contains('\n'), "{text} → {error}");
        error
    }

    #[test]
    fn s3_urls_with_credentials_are_refused_without_repeating_them() {
        for (text, secret) in [
            ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/x", "wJalrXUtnFEMI"),
            ("s3://AKIAEXAMPLE@bucket/x", "AKIAEXAMPLE"),
            ("s3://bucket/x?secret_access_key=wJalrXUtnFEMI&access_key_id=AKIAEXAMPLE", "wJalrXUtnFEMI"),
            ("s3://bucket/x?secret_access_key=wJalrXUtnFEMI&access_key_id=AKIAEXAMPLE", "AKIAEXAMPLE"),
            ("s3://bucket/x?session_token=FwoGZXIvYXdzE", "FwoGZXIvYXdzE"),
            ("s3://bucket/x?AWS_SESSION_TOKEN=FwoGZXIvYXdzE", "FwoGZXIvYXdzE"),
            ("s3://bucket/x?X-Amz-Credential=AKIAEXAMPLE%2F20250101", "AKIAEXAMPLE"),
            ("s3://bucket/x?X-Amz-Signature=0f1e2d3c4b5a", "0f1e2d3c4b5a"),
            ("s3://bucket/x?password=hunter22", "hunter22"),
            ("s3://bucket/x?sig=0f1e2d3c4b5a", "0f1e2d3c4b5a"),
            ("s3://bucket/x?endpoint=https://AKIAEXAMPLE:wJalrXUtnFEMI@minio:9000", "wJalrXUtnFEMI"),
        ] {
            let error = refusal(text, secret);
            assert!(error.starts_with("refusing the repository location s3://bucket/x because it holds credentials ("));
            assert!(error.contains("AWS_SECRET_ACCESS_KEY") && error.contains("[repository.\"s3://bucket/x\"]"));
        }
    }

    #[test]
    fn unparseable_locations_are_shown_without_what_may_be_credentials() {
        // A `/` or `?` in an unencoded password breaks the URL; the message still hides it.
        refusal("s3://AKIAEXAMPLE:wJalr/XUtnFEMI@bucket/x", "wJalr");
        refusal("s3://AKIAEXAMPLE:wJalr?XUtnFEMI@bucket/x", "XUtnFEMI");
        refusal("s3://AKIAEXAMPLE:wJalr XUtnFEMI@/x", "XUtnFEMI");
        refusal("ftp://AKIAEXAMPLE:wJalrXUtnFEMI@host/x", "wJalrXUtnFEMI");
        refusal("file://AKIAEXAMPLE:wJalrXUtnFEMI@host/x", "wJalrXUtnFEMI");
        assert_eq!(displayable("s3://k:s@bucket/x?region=eu&secret=s"), "s3://bucket/x?region=eu&secret=***");
        assert_eq!(displayable("/srv/backups"), "/srv/backups");
    }

    #[test]
    fn s3_urls_without_credentials_keep_their_options() {
        let Location::S3 { bucket, prefix, options } =
            Location::parse("s3://bucket/crm/x?endpoint=http://127.0.0.1:9000&region=eu-1").unwrap()
        else {
            panic!("not S3");
        };
        assert_eq!((bucket.as_str(), prefix.as_str()), ("bucket", "crm/x"));
        assert_eq!(options.get("endpoint").map(String::as_str), Some("http://127.0.0.1:9000"));
        assert_eq!(options.get("region").map(String::as_str), Some("eu-1"));
    }

    #[test]
    fn an_endpoint_with_a_password_is_refused_without_repeating_it() {
        let settings = S3Settings {
            endpoint: Some("https://AKIAEXAMPLE:wJalrXUtnFEMI@minio:9000".into()),
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI".to_string().into()),
            ..S3Settings::default()
        };
        let error = Target::open_with("s3://bucket/x", OpenMode::Existing, &settings).expect_err("refused").to_string();
        assert!(error.starts_with("refusing the S3 endpoint https://minio:9000 for s3://bucket/x"), "{error}");
        assert!(!error.contains("wJalrXUtnFEMI") && !error.contains("AKIAEXAMPLE"), "{error}");
    }
}
