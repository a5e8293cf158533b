//! The repository format: config, keys, packs, indexes and snapshots. See docs/FORMAT.md.
//!
//! Objects and their order of writing:
//! - `config` (and its copy `configs/<hash>`): plaintext JSON, written once by `init`; the
//!   BLAKE3 of the first config is the repository's fingerprint ([`crate::trust`]).
//! - `keys/<hash>` (two copies since format 7): the repository secret and the authentication
//!   secret, age-encrypted to the admins and the writer.
//! - `data/<hh>/<hash>`: a pack: zstd-compressed chunks, concatenated, age-encrypted to the admins.
//! - `index/<hash>`: where each chunk of some packs lies, encrypted to the admins and the writer.
//! - `snapshots/<hash>`: a plaintext header (time, sizes, referenced objects), a MAC, and the
//!   encrypted manifest. Written last: it is the commit.
//!
//! `<hash>` is the unkeyed BLAKE3 of the stored bytes, so anyone can check an object's integrity
//! without a key, and nobody learns anything about the plaintext from its name.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkParams;
use crate::compress::FrameCoding;
use crate::crypto::{self, CHUNK_ID_BYTES, ChunkId, ChunkIdKey, DecryptFailure, MacKey, RepoSecret};
use crate::error::{Error, Result};
use crate::target::{PutOutcome, Target};
use crate::trust::{Fingerprint, SnapshotMark};

pub mod chunk_index;
mod index_codec;

pub use chunk_index::{ChunkIndex, PackEntry};

/// Index entries a backup or restore keeps in memory per target (2.5 MiB); past that a
/// target's index is a temporary file ([`ChunkIndex::with_budget`]), so that their memory does
/// not grow with the repository or the snapshot (docs/OPERATIONS.md, "Memory and temporary
/// files").
pub const INDEX_IN_MEMORY: usize = 1 << 16;

/// An I/O error of a temporary file (a large index's, a restore's chunk lists), naming where.
pub fn temporary_file_error(what: &str, error: std::io::Error) -> Error {
    Error::io(std::env::temp_dir().join(format!("(temporary {what})")), error)
}

fn temporary_index(error: std::io::Error) -> Error {
    temporary_file_error("chunk index", error)
}

/// The repository format version this build writes.
pub const FORMAT_VERSION: u32 = 7;
/// The first format whose objects are authenticated against a storage writer: the snapshot's
/// MAC covers its version line and names its predecessor, indexes carry a MAC, stream digests
/// are readable by admins only, and the config names two copies of the keys object.
pub const AUTHENTICATED_VERSION: u32 = 7;
/// The first format whose packs hold bytea's hex text packed into bytes (`compress::bytea`):
/// the packs an index file of this version or later describes.
pub const PACKED_BYTEA_VERSION: u32 = 6;
/// The oldest format version this build reads (format 3 stores dictionaries compressed, which
/// readers tell apart by their bytes, and adds levels of list chunks, which default to format
/// 2's one; format 4 puts consecutive chunks in one zstd frame, and a chunk's index entry says
/// where in the frame it starts, 0 when absent as in formats 2 and 3; format 5 stores chunk ids
/// of 16 bytes instead of 32, and readers keep the first 16 of older ones; format 6 packs
/// bytea's hex text into bytes in the frames of the packs its indexes describe;
/// docs/FORMAT.md).
pub const OLDEST_FORMAT_VERSION: u32 = 2;

/// How many bytes a chunk id takes in the list chunks and index of a snapshot or index object
/// of format `version` (readers keep the first [`CHUNK_ID_BYTES`] of them).
pub fn stored_id_bytes(version: u32) -> usize {
    if version <= 4 { crypto::OLD_CHUNK_ID_BYTES } else { CHUNK_ID_BYTES }
}
/// The config object's key.
pub const CONFIG_KEY: &str = "config";
const SNAPSHOT_MAGIC: &str = "crmvault-snapshot";
/// Upper bound on one chunk's plaintext, enforced when reading (guards decompression).
pub const MAX_CHUNK_BYTES: u32 = 16 << 20;

/// Object key of a pack.
pub fn pack_key(id: &str) -> String {
    format!("data/{}/{id}", &id[..2])
}
/// Object key of an index.
pub fn index_key(id: &str) -> String {
    format!("index/{id}")
}
/// Object key of a snapshot.
pub fn snapshot_key(id: &str) -> String {
    format!("snapshots/{id}")
}
/// Object key of a compression dictionary.
pub fn dictionary_key(id: &str) -> String {
    format!("dicts/{id}")
}
/// Object key of a keys object.
pub fn keys_key(id: &str) -> String {
    format!("keys/{id}")
}
/// Object key of a copy of a config (format 7), named by the BLAKE3 of its bytes.
pub fn config_copy_key(id: &str) -> String {
    format!("configs/{id}")
}
/// Object key of the marker `verify` leaves for a pack that failed its hash: later backups
/// store that pack's chunks again instead of reusing it.
pub fn damaged_key(pack_id: &str) -> String {
    format!("damaged/{pack_id}")
}

/// Choices fixed at `init` for the repository's life.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Chunk size bounds.
    pub chunking: ChunkParams,
    /// zstd level.
    pub compression_level: i32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning { chunking: ChunkParams::default(), compression_level: 3 }
    }
}

impl Tuning {
    /// Chunks averaging `average` bytes (min a quarter, max four times), checked for sanity.
    pub fn with_average_chunk(average: usize, compression_level: i32) -> Result<Tuning> {
        if !(1024..=4 << 20).contains(&average) {
            return Err(Error::Invalid(format!("a chunk size of {average} bytes is outside 1 KiB ..= 4 MiB")));
        }
        if !(1..=19).contains(&compression_level) {
            return Err(Error::Invalid(format!("zstd level {compression_level} is outside 1 ..= 19")));
        }
        Ok(Tuning { chunking: ChunkParams { min: average / 4, avg: average, max: average * 4 }, compression_level })
    }
}

/// The plaintext `config` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always "crmvault".
    pub format: String,
    /// Repository format version.
    pub version: u32,
    /// Random id; names the writer key on the backup host.
    pub id: String,
    /// When `init` ran.
    pub created: DateTime<Utc>,
    /// 0 for the config `init` wrote (format 7; absent before, also 0); one more at every
    /// `rekey`. Generation 0 is `config`; every generation is also `configs/<its hash>`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
    /// The BLAKE3 of the previous generation's config (generations after the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// When `rekey` made this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekeyed: Option<DateTime<Utc>>,
    /// The admins' age recipients: data is readable only by them.
    pub recipients: Vec<String>,
    /// The backup host's recipient: it can read metadata, never data.
    pub writer_recipient: String,
    /// Object keys of the keys objects: copies of one secret, encrypted apart, so that the
    /// loss of one leaves the repository readable (one before format 7, as a plain string).
    #[serde(deserialize_with = "one_or_many")]
    pub keys: Vec<String>,
    /// Object keys of the admin keys objects: this generation's signing secret, encrypted to
    /// the admins only (two copies). Absent in repositories made before key rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_keys: Vec<String>,
    /// The public half (hex Ed25519) of the key that signs the next generation's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
    /// Snapshots written under earlier generations that stay valid: whatever else claims an
    /// earlier generation was written with a key since retired, and is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carried: Vec<String>,
    /// Chunk size bounds.
    pub chunking: ChunkParams,
    /// zstd level for chunks.
    pub compression_level: i32,
    /// Target size of a pack, bytes.
    pub pack_size: usize,
    /// The previous generation's signing key's signature over this config without this field
    /// (hex Ed25519; generations after the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl RepoConfig {
    /// The bytes stored for this config: pretty JSON with a final newline (what is hashed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("serialisable");
        bytes.push(b'\n');
        bytes
    }

    /// The bytes a generation's signature covers: the config as stored, without its signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        RepoConfig { signature: None, ..self.clone() }.to_bytes()
    }

    /// Whether `next` is this generation's successor: same repository and settings, one
    /// generation on, naming this config's hash, signed with this generation's signing key.
    fn is_signed_successor(&self, hash: &str, next: &RepoConfig) -> bool {
        let (Some(public), Some(signature)) = (self.signing_key.as_deref(), next.signature.as_deref()) else {
            return false;
        };
        next.previous.as_deref() == Some(hash)
            && next.generation == self.generation + 1
            && next.id == self.id
            && next.format == self.format
            && next.version == self.version
            && next.created == self.created
            && next.chunking == self.chunking
            && crypto::config_signature_holds(public, &next.signed_bytes(), signature)
    }
}

#[allow(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// `"keys/…"` (formats 2-6) or `["keys/…", …]` (format 7).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let keys = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(key) => vec![key],
        OneOrMany::Many(keys) => keys,
    };
    if keys.is_empty() || keys.iter().any(|key| !key.starts_with("keys/")) {
        return Err(serde::de::Error::custom("keys must name keys/… objects"));
    }
    Ok(keys)
}

/// Plaintext of a keys object.
#[derive(Serialize, Deserialize)]
struct KeysFile {
    repository_id: String,
    repo_secret: String,
    /// The root of the MACs over snapshots and indexes (format 7; before, they derive from
    /// the repository secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_secret: Option<String>,
    /// The authentication secrets of earlier generations, by their config's hash: snapshots
    /// carried from them are checked with these (after a `rekey`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    history: Vec<PastSecret>,
}

/// One earlier generation's authentication secret.
#[derive(Serialize, Deserialize)]
struct PastSecret {
    config: String,
    auth_secret: String,
}

/// Plaintext of an admin keys object (encrypted to a generation's admins only).
#[derive(Serialize, Deserialize)]
struct AdminKeysFile {
    repository_id: String,
    generation: u32,
    signing_secret: String,
}

/// Who is opening the repository, and so what they may read.
#[derive(Clone)]
pub struct Keyring {
    identities: Vec<age::x25519::Identity>,
    identity_path: PathBuf,
    secret: RepoSecret,
    /// The authentication secret (format 7), else none: the repository secret serves.
    auth: Option<RepoSecret>,
    /// The hash of the config (generation) this keyring was unlocked under.
    head: String,
    /// Earlier generations' authentication secrets, by config hash (after a `rekey`).
    past: HashMap<String, RepoSecret>,
    /// Snapshots carried from earlier generations (the head config's list).
    carried: HashSet<String>,
    /// True when the identity is an admin's (can read data).
    pub is_admin: bool,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("identity_path", &self.identity_path)
            .field("is_admin", &self.is_admin)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// The chunk-id key.
    pub fn chunk_id_key(&self) -> ChunkIdKey {
        self.secret.chunk_id_key()
    }
    /// The stream-digest key (and the snapshot MAC key of formats 2-6).
    pub fn mac_key(&self) -> MacKey {
        self.secret.mac_key()
    }
    /// The key of format-7 snapshot MACs.
    pub fn snapshot_mac_key(&self) -> MacKey {
        self.auth.as_ref().unwrap_or(&self.secret).snapshot_mac_key()
    }
    /// The key of format-7 index MACs.
    pub fn index_mac_key(&self) -> MacKey {
        self.auth.as_ref().unwrap_or(&self.secret).index_mac_key()
    }
    /// The snapshot MAC key of the generation whose config hashes to `config_hash`, for the
    /// snapshot `id`: the head's, or an earlier generation's for a snapshot the head carries.
    fn snapshot_mac_key_for(&self, config_hash: &str, id: &str) -> Option<MacKey> {
        if config_hash == self.head {
            Some(self.snapshot_mac_key())
        } else if self.carried.contains(id) {
            self.past.get(config_hash).map(RepoSecret::snapshot_mac_key)
        } else {
            None
        }
    }
    /// The earlier generation (its config hash) whose index MAC key gives `mac` over `parts`
    /// (an index written before a `rekey`).
    fn past_index_config(&self, parts: &[&[u8]], mac: blake3::Hash) -> Option<String> {
        self.past
            .iter()
            .find(|(_, secret)| secret.index_mac_key().mac_bytes(parts) == mac)
            .map(|(hash, _)| hash.clone())
    }
    /// The identities, to open what is encrypted to admins only where the holder is one.
    pub fn identities(&self) -> &[age::x25519::Identity] {
        &self.identities
    }
    /// The chunker seed.
    pub fn chunker_seed(&self) -> [u8; 32] {
        self.secret.chunker_seed()
    }

    /// Decrypts an object with this keyring's identities.
    pub fn decrypt(&self, object: &str, ciphertext: &[u8]) -> Result<Vec<u8>> {
        crypto::decrypt(&self.identities, ciphertext).map_err(|failure| match failure {
            DecryptFailure::NoMatchingKey if self.is_admin => Error::WrongIdentity { path: self.identity_path.clone() },
            DecryptFailure::NoMatchingKey => {
                Error::Invalid(format!("{object} is data; only an admin identity (--identity) can read it"))
            }
            DecryptFailure::Damaged(detail) => Error::corrupt(object, detail),
        })
    }
}

/// What a keys object names itself as belonging to.
trait HasRepositoryId {
    fn repository_id(&self) -> &str;
}

impl HasRepositoryId for KeysFile {
    fn repository_id(&self) -> &str {
        &self.repository_id
    }
}

impl HasRepositoryId for AdminKeysFile {
    fn repository_id(&self) -> &str {
        &self.repository_id
    }
}

/// Where the writer key of a repository lives on the backup host.
pub fn writer_key_path(config_dir: &Path, repository_id: &str) -> PathBuf {
    config_dir.join("repos").join(repository_id).join("writer.key")
}

/// An opened repository on one target.
#[derive(Debug, Clone)]
pub struct Repository {
    /// Where it is.
    pub target: Target,
    /// Its config.
    pub config: RepoConfig,
    /// BLAKE3 of the config object's bytes; recorded in every snapshot.
    pub config_hash: String,
    /// The generations this repository was followed through, oldest first, ending with this
    /// config: each signed by the one before ([`Repository::open`]).
    pub chain: Vec<(String, RepoConfig)>,
}

impl Repository {
    /// Creates a new repository: writer key (local, 0600) first, then keys, then config.
    pub async fn init(
        target: Target,
        recipients: &[age::x25519::Recipient],
        config_dir: &Path,
        secret: RepoSecret,
        tuning: Tuning,
    ) -> Result<(Repository, PathBuf)> {
        ensure_empty(&target).await?;
        if recipients.is_empty() {
            return Err(Error::Invalid("init needs at least one --recipient (an admin's age1… public key)".into()));
        }
        let mut id_bytes = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id_bytes);
        let repository_id = hex::encode(id_bytes);

        let writer = crypto::generate_identity();
        let writer_path = writer_key_path(config_dir, &repository_id);
        crypto::write_identity_file(
            &writer_path,
            &writer,
            &format!("crmvault writer key of repository {repository_id}"),
        )?;

        let keys = KeysFile {
            repository_id: repository_id.clone(),
            repo_secret: secret.to_hex(),
            auth_secret: Some(RepoSecret::generate().to_hex()),
            history: Vec::new(),
        };
        let mut metadata_recipients = recipients.to_vec();
        metadata_recipients.push(writer.to_public());
        let keys_objects = put_keys_objects(&[&target], &metadata_recipients, &keys).await?;
        let signing = crypto::SigningSecret::generate();
        let admin_keys =
            AdminKeysFile { repository_id: repository_id.clone(), generation: 0, signing_secret: signing.to_hex() };
        let admin_keys_objects = put_keys_objects(&[&target], recipients, &admin_keys).await?;

        let config = RepoConfig {
            format: "crmvault".into(),
            version: FORMAT_VERSION,
            id: repository_id,
            created: Utc::now(),
            generation: 0,
            previous: None,
            rekeyed: None,
            recipients: recipients.iter().map(ToString::to_string).collect(),
            writer_recipient: writer.to_public().to_string(),
            keys: keys_objects,
            admin_keys: admin_keys_objects,
            signing_key: Some(signing.public_hex()),
            carried: Vec::new(),
            chunking: tuning.chunking,
            compression_level: tuning.compression_level,
            pack_size: 8 << 20,
            signature: None,
        };
        let config_bytes = config.to_bytes();
        let config_hash = crypto::object_hash(&config_bytes);
        let config_bytes = Bytes::from(config_bytes);
        // The copy first: `config` is what makes the folder a repository.
        target.put_new(&config_copy_key(&config_hash), config_bytes.clone()).await?;
        if target.put_new(CONFIG_KEY, config_bytes).await? == PutOutcome::AlreadyThere {
            return Err(Error::AlreadyExists {
                location: target.location().into(),
                what: "a crmvault repository".into(),
            });
        }
        let chain = vec![(config_hash.clone(), config.clone())];
        Ok((Repository { target, config, config_hash, chain }, writer_path))
    }

    /// Makes `target` a copy of this repository's identity (every generation's config and keys,
    /// byte for byte), so both share one chunk-id key and `copy` between them is a set
    /// difference of objects.
    pub async fn init_copy(&self, target: Target) -> Result<Repository> {
        ensure_empty(&target).await?;
        for (hash, config) in &self.chain {
            for key in config.keys.iter().chain(&config.admin_keys) {
                match self.target.get(key).await.and_then(|bytes| check_object_name(key, &bytes).map(|()| bytes)) {
                    Ok(keys) => {
                        target.put_new(key, keys).await?;
                    }
                    // One copy is enough to open the repository; verify reports the other.
                    Err(error) if config.keys.len() > 1 => tracing::warn!("{}: {error}", self.target.location()),
                    Err(error) => return Err(error),
                }
            }
            if config.version >= AUTHENTICATED_VERSION {
                target.put_new(&config_copy_key(hash), self.config_bytes_of(hash).await?).await?;
            }
        }
        let (first, _) = &self.chain[0];
        target.put_new(CONFIG_KEY, self.config_bytes_of(first).await?).await?;
        Repository::open_at(target, &self.config_hash).await
    }

    /// The head config's bytes as stored, checked against the hash this repository was opened
    /// with.
    pub async fn config_bytes(&self) -> Result<Bytes> {
        self.config_bytes_of(&self.config_hash).await
    }

    /// The bytes of the config (generation) that hashes to `hash`, from `configs/<hash>` or
    /// `config`.
    pub async fn config_bytes_of(&self, hash: &str) -> Result<Bytes> {
        for key in [config_copy_key(hash), CONFIG_KEY.to_string()] {
            if let Ok(bytes) = self.target.get(&key).await
                && crypto::object_hash(&bytes) == hash
            {
                return Ok(bytes);
            }
        }
        Err(Error::corrupt(format!("{}/{}", self.target.location(), config_copy_key(hash)), "missing or damaged"))
    }

    /// The repository's fingerprint: what admins keep to recognise it ([`Fingerprint`]): that
    /// of the oldest generation this repository was opened at (its first config, normally).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_config_hash(&self.chain[0].0).expect("a config hash is a BLAKE3 hash")
    }

    /// Whether `fingerprint` is that of one of the generations this repository was followed
    /// through (admins may keep the first one, or a later one `rekey` printed).
    pub fn has_fingerprint(&self, fingerprint: &Fingerprint) -> bool {
        self.chain.iter().any(|(hash, _)| Fingerprint::of_config_hash(hash).is_ok_and(|f| f == *fingerprint))
    }

    /// The hash of the generation `fingerprint` names, among the configs stored on this target
    /// (for opening a repository there: [`Repository::open_at`]).
    pub async fn find_generation(target: &Target, fingerprint: &Fingerprint) -> Result<Option<String>> {
        let prefix = fingerprint.hex();
        Ok(target
            .list("configs")
            .await?
            .into_iter()
            .filter_map(|(key, _)| key.strip_prefix("configs/").map(str::to_string))
            .find(|hash| is_object_hash(hash) && hash.starts_with(&prefix)))
    }

    /// Opens an existing repository and checks its format version, then follows its key
    /// rotations: from `config` (generation 0) to each next generation signed by the one
    /// before, up to the newest. A `config` that is missing or damaged is replaced by its copy
    /// under `configs/` (format 7), when exactly one first-generation copy is whole. Nothing here
    /// is trusted yet: the caller checks the chain against its pin or fingerprint.
    pub async fn open(target: Target) -> Result<Repository> {
        let first = match Self::open_config(target.clone(), CONFIG_KEY).await {
            Ok(repository) if repository.config.generation == 0 => repository,
            Ok(_) => {
                return Err(Error::corrupt(
                    format!("{}/config", target.location()),
                    "claims a later generation (only configs/ hold those)",
                ));
            }
            // A `config` claiming a format this build does not know may be an edit in storage
            // too (advising an upgrade would be wrong then): its whole copy decides.
            Err(error @ (Error::NotARepository { .. } | Error::Corrupt { .. } | Error::UnsupportedFormat { .. })) => {
                let mut whole = Vec::new();
                for (key, _) in target.list("configs").await.unwrap_or_default() {
                    if let Ok(repository) = Self::open_config(target.clone(), &key).await
                        && key.ends_with(&repository.config_hash)
                        && repository.config.generation == 0
                    {
                        whole.push(repository);
                    }
                }
                match whole.len() {
                    1 => {
                        tracing::warn!("{}: {error}; using its copy", target.location());
                        whole.remove(0)
                    }
                    _ => return Err(error),
                }
            }
            Err(error) => return Err(error),
        };
        first.follow().await
    }

    /// Opens the repository at the generation whose config hashes to `hash` (a pin's), from
    /// `configs/<hash>` (or `config`), and follows it to the newest generation: a `config`
    /// replaced in storage does not hide the generations a pin knows.
    pub async fn open_at(target: Target, hash: &str) -> Result<Repository> {
        let mut last_error = None;
        for key in [config_copy_key(hash), CONFIG_KEY.to_string()] {
            match Self::open_config(target.clone(), &key).await {
                Ok(repository) if repository.config_hash == hash => return repository.follow().await,
                Ok(_) => {}
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.filter(|e| !matches!(e, Error::NotARepository { .. } | Error::Missing { .. })).unwrap_or_else(
            || Error::corrupt(format!("{}/{}", target.location(), config_copy_key(hash)), "missing or damaged"),
        ))
    }

    /// Refuses when a newer generation was published since this repository was opened (a
    /// `rekey` while a backup ran): a snapshot written under the retired keys would be refused
    /// by every reader, so the backup stops before writing it and says to run again.
    pub async fn check_still_newest(&self) -> Result<()> {
        if self.config.version < AUTHENTICATED_VERSION {
            return Ok(());
        }
        let now = Self::open_at(self.target.clone(), &self.config_hash).await?;
        if now.config_hash != self.config_hash {
            return Err(Error::Invalid(format!(
                "{}: the repository was rekeyed (generation {}) while this backup ran; nothing it wrote is a \
                 snapshot yet: run the backup again",
                self.target.location(),
                now.config.generation
            )));
        }
        Ok(())
    }

    /// Follows the chain of generations from this one: each step to the one config that names
    /// this one as `previous` and carries its signing key's signature. Configs that fail that
    /// are passed over (anyone can write junk to storage; `verify` reports it); two that pass
    /// are a fork only a holder of a generation's signing key could make, and are refused.
    async fn follow(mut self) -> Result<Repository> {
        if self.config.version < AUTHENTICATED_VERSION {
            return Ok(self);
        }
        let mut later = Vec::new();
        for (key, _) in self.target.list("configs").await? {
            let Some(hash) = key.strip_prefix("configs/").filter(|hash| is_object_hash(hash)) else { continue };
            if hash == self.config_hash {
                continue;
            }
            if let Ok(candidate) = Self::open_config(self.target.clone(), &key).await
                && candidate.config_hash == hash
                && candidate.config.generation > self.config.generation
            {
                later.push(candidate);
            }
        }
        loop {
            let mut next: Vec<&Repository> = later
                .iter()
                .filter(|candidate| self.config.is_signed_successor(&self.config_hash, &candidate.config))
                .collect();
            let Some(successor) = next.pop() else { return Ok(self) };
            if !next.is_empty() {
                return Err(Error::corrupt(
                    format!("{}/configs", self.target.location()),
                    format!(
                        "holds two signed successors of generation {} (a fork: a signing key of that generation \
                         signed a config its admins did not publish; the key of a removed admin?); refusing to choose",
                        self.config.generation
                    ),
                ));
            }
            let successor = successor.clone();
            self.chain.push((successor.config_hash.clone(), successor.config.clone()));
            self.config = successor.config;
            self.config_hash = successor.config_hash;
        }
    }

    async fn open_config(target: Target, key: &str) -> Result<Repository> {
        let bytes = match target.get(key).await {
            Ok(bytes) => bytes,
            Err(Error::Missing { .. }) => {
                return Err(Error::NotARepository { location: target.location().into() });
            }
            Err(e) => return Err(e),
        };
        let config_hash = crypto::object_hash(&bytes);
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(format!("{}/config", target.location()), format!("not JSON: {e}")))?;
        let version = value.get("version").and_then(serde_json::Value::as_u64).unwrap_or(0);
        if value.get("format").and_then(serde_json::Value::as_str) != Some("crmvault") {
            return Err(Error::NotARepository { location: target.location().into() });
        }
        let version = u32::try_from(version).unwrap_or(u32::MAX);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::UnsupportedFormat {
                what: format!("repository {}", target.location()),
                found: version,
                supported: FORMAT_VERSION,
                advice: crate::error::format_advice(version, FORMAT_VERSION),
            });
        }
        let config: RepoConfig = serde_json::from_value(value)
            .map_err(|e| Error::corrupt(format!("{}/config", target.location()), e.to_string()))?;
        for recipient in config.recipients.iter().chain(std::iter::once(&config.writer_recipient)) {
            crypto::parse_recipient(recipient)
                .map_err(|_| Error::corrupt(format!("{}/config", target.location()), "holds a damaged recipient"))?;
        }
        // The id names folders on this machine (writer key, pin): nothing but 32 hex digits.
        if config.id.len() != 32 || !config.id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(Error::corrupt(format!("{}/config", target.location()), "holds an invalid repository id"));
        }
        let objects_named_right = config
            .keys
            .iter()
            .chain(&config.admin_keys)
            .all(|key| key.strip_prefix("keys/").is_some_and(is_object_hash))
            && config.carried.iter().all(|id| is_object_hash(id));
        if !objects_named_right {
            return Err(Error::corrupt(format!("{}/config", target.location()), "names an object that is not a hash"));
        }
        let chain = vec![(config_hash.clone(), config.clone())];
        Ok(Repository { target, config, config_hash, chain })
    }

    /// The admins' recipients (data).
    pub fn data_recipients(&self) -> Vec<age::x25519::Recipient> {
        self.config.recipients.iter().filter_map(|r| crypto::parse_recipient(r).ok()).collect()
    }

    /// Admins plus writer (metadata).
    pub fn metadata_recipients(&self) -> Vec<age::x25519::Recipient> {
        let mut all = self.data_recipients();
        all.extend(crypto::parse_recipient(&self.config.writer_recipient).ok());
        all
    }

    /// Unlocks with the writer key kept under `config_dir` (the backup host).
    pub async fn unlock_as_writer(&self, config_dir: &Path) -> Result<Keyring> {
        let path = writer_key_path(config_dir, &self.config.id);
        if !path.exists() {
            return Err(Error::NoWriterKey { repository_id: self.config.id.clone(), path });
        }
        let identities = crypto::read_identity_file(&path)?;
        if !identities.iter().any(|i| i.to_public().to_string() == self.config.writer_recipient) {
            return Err(Error::BadKey(format!(
                "{} is not the writer key of repository {}",
                path.display(),
                self.config.id
            )));
        }
        self.unlock(identities, path, false).await
    }

    /// Unlocks with an admin identity file.
    pub async fn unlock_as_admin(&self, identity_path: &Path) -> Result<Keyring> {
        let identities = crypto::read_identity_file(identity_path)?;
        let admin = identities.iter().any(|i| self.config.recipients.contains(&i.to_public().to_string()));
        if !admin {
            return Err(Error::WrongIdentity { path: identity_path.to_path_buf() });
        }
        self.unlock(identities, identity_path.to_path_buf(), true).await
    }

    async fn unlock(
        &self,
        identities: Vec<age::x25519::Identity>,
        identity_path: PathBuf,
        is_admin: bool,
    ) -> Result<Keyring> {
        let keys: KeysFile = self.open_keys_object(&self.config.keys, &identities, &identity_path).await?;
        let auth = keys.auth_secret.as_deref().map(RepoSecret::from_hex).transpose()?;
        if self.config.version >= AUTHENTICATED_VERSION && auth.is_none() {
            return Err(Error::corrupt(&self.config.keys[0], "holds no authentication secret"));
        }
        let mut past = HashMap::new();
        for entry in &keys.history {
            past.insert(entry.config.clone(), RepoSecret::from_hex(&entry.auth_secret)?);
        }
        Ok(Keyring {
            identities,
            identity_path,
            secret: RepoSecret::from_hex(&keys.repo_secret)?,
            auth,
            head: self.config_hash.clone(),
            past,
            carried: self.config.carried.iter().cloned().collect(),
            is_admin,
        })
    }

    /// The head generation's signing secret, from its admin keys objects (an admin's keyring):
    /// what signs the next generation. None in a repository made before key rotation.
    pub async fn unlock_signing(&self, keyring: &Keyring) -> Result<Option<crypto::SigningSecret>> {
        if self.config.admin_keys.is_empty() {
            return Ok(None);
        }
        let file: AdminKeysFile =
            self.open_keys_object(&self.config.admin_keys, &keyring.identities, &keyring.identity_path).await?;
        let signing = crypto::SigningSecret::from_hex(&file.signing_secret)?;
        if file.generation != self.config.generation || Some(signing.public_hex()) != self.config.signing_key {
            return Err(Error::corrupt(&self.config.admin_keys[0], "does not hold this generation's signing key"));
        }
        Ok(Some(signing))
    }

    /// Opens the first whole copy among `keys` (keys or admin keys objects): each named by its
    /// hash in the config, decrypted, checked to belong to this repository. A damaged copy is
    /// skipped with a warning (verify reports it).
    async fn open_keys_object<T: for<'de> Deserialize<'de> + HasRepositoryId>(
        &self,
        keys: &[String],
        identities: &[age::x25519::Identity],
        identity_path: &Path,
    ) -> Result<T> {
        let mut first_error = None;
        for key in keys {
            let opened = async {
                let ciphertext = self.target.get(key).await?;
                // The config names the object by its hash: a replaced keys object is refused here.
                check_object_name(key, &ciphertext)?;
                let plaintext = crypto::decrypt(identities, &ciphertext).map_err(|failure| match failure {
                    DecryptFailure::NoMatchingKey => Error::WrongIdentity { path: identity_path.to_path_buf() },
                    DecryptFailure::Damaged(detail) => Error::corrupt(key, detail),
                })?;
                let file: T = serde_json::from_slice(&plaintext).map_err(|e| Error::corrupt(key, e.to_string()))?;
                if file.repository_id() != self.config.id {
                    return Err(Error::corrupt(key, "belongs to another repository"));
                }
                Ok(file)
            };
            match opened.await {
                Ok(file) => return Ok(file),
                // Not a recipient: the same for every copy.
                Err(error @ Error::WrongIdentity { .. }) => return Err(error),
                Err(error) => {
                    if keys.len() > 1 {
                        tracing::warn!("{}: {error}", self.target.location());
                    }
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error
            .unwrap_or_else(|| Error::corrupt(format!("{}/config", self.target.location()), "names no keys")))
    }

    /// Lists snapshot ids.
    pub async fn snapshot_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .target
            .list("snapshots")
            .await?
            .into_iter()
            .filter_map(|(key, _)| key.strip_prefix("snapshots/").map(str::to_string))
            .collect())
    }

    /// Reads and checks (name = hash) a snapshot object, returning it parsed but still sealed.
    pub async fn read_snapshot(&self, id: &str) -> Result<SealedSnapshot> {
        let key = snapshot_key(id);
        let bytes = self.target.get(&key).await?;
        SealedSnapshot::parse(id, &bytes)
    }

    /// Reads only a snapshot's header (a range read of its start): what listing and `latest`
    /// need, without downloading the manifest.
    pub async fn read_snapshot_header(&self, id: &str) -> Result<SnapshotHeader> {
        const PROBE: u64 = 64 * 1024;
        let key = snapshot_key(id);
        let size = self
            .target
            .size_of(&key)
            .await?
            .ok_or_else(|| Error::Missing { object: key.clone(), location: self.target.location().into() })?;
        let bytes = self.target.get_range(&key, 0..size.min(PROBE)).await?;
        match parse_header(id, &bytes) {
            Ok(lines) => Ok(lines.header),
            // A header longer than the probe (a repository with very many packs).
            Err(Error::Corrupt { .. }) if size > PROBE => Ok(parse_header(id, &self.target.get(&key).await?)?.header),
            Err(error) => Err(error),
        }
    }

    /// Reads every snapshot header, newest last. Damaged snapshots are returned as errors.
    pub async fn snapshots(&self) -> Result<Vec<std::result::Result<SealedSnapshot, (String, Error)>>> {
        let mut all = Vec::new();
        for id in self.snapshot_ids().await? {
            all.push(self.read_snapshot(&id).await.map_err(|e| (id, e)));
        }
        all.sort_by_key(|s| s.as_ref().map(|s| s.header.time).ok());
        Ok(all)
    }

    /// Snapshot ids with their (unauthenticated) headers' times, newest first: the order in
    /// which `latest` tries them. Those whose header cannot be read come last, without a time:
    /// junk in `snapshots/` must not stop a restore or a backup, and is named when tried.
    pub async fn snapshots_newest_first(&self) -> Result<Vec<(Option<DateTime<Utc>>, String)>> {
        let mut found = Vec::new();
        for id in self.snapshot_ids().await? {
            let time = self.read_snapshot_header(&id).await.ok().map(|header| header.time);
            found.push((time, id));
        }
        found.sort_by(|a, b| b.cmp(a));
        Ok(found)
    }

    /// The newest snapshot that proves it was written with this repository's keys, opened;
    /// the newer ones that did not, with why. A forged or damaged snapshot dated in the future
    /// is passed over, never taken for the newest.
    pub async fn newest_authentic(&self, keyring: &Keyring) -> Result<(Option<SealedSnapshot>, Vec<(String, Error)>)> {
        let mut rejected = Vec::new();
        for (_, id) in self.snapshots_newest_first().await? {
            match self.read_snapshot(&id).await.and_then(|sealed| sealed.open(keyring).map(|_| sealed)) {
                Ok(sealed) => return Ok((Some(sealed), rejected)),
                Err(error @ (Error::Corrupt { .. } | Error::UnsupportedFormat { .. } | Error::Missing { .. })) => {
                    rejected.push((id, error));
                }
                Err(error) => return Err(error),
            }
        }
        Ok((None, rejected))
    }

    /// Resolves `latest` or an id prefix to one snapshot id.
    pub async fn resolve_snapshot(&self, selector: &str) -> Result<String> {
        if selector == "latest" {
            return self.snapshots_newest_first().await?.into_iter().next().map(|(_, id)| id).ok_or_else(|| {
                Error::SnapshotNotFound(format!("repository {} has no snapshots yet", self.target.location()))
            });
        }
        let ids = self.snapshot_ids().await?;
        if selector.len() < 4 || !selector.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::SnapshotNotFound(format!(
                "{selector:?} is not a snapshot id (give `latest` or at least 4 hex digits of an id)"
            )));
        }
        let matches: Vec<String> =
            ids.into_iter().filter(|id| id.starts_with(&selector.to_ascii_lowercase())).collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::SnapshotNotFound(format!("no snapshot {selector} in {}", self.target.location()))),
            _ => Err(Error::SnapshotNotFound(format!(
                "{selector} matches {} snapshots; give more digits",
                matches.len()
            ))),
        }
    }

    /// Loads all index objects (or the listed ones), returning chunk locations.
    pub async fn load_index(&self, keyring: &Keyring, only: Option<&[ObjectRef]>) -> Result<ChunkIndex> {
        let (index, mut failures) = self.load_index_lenient(keyring, only, None, usize::MAX).await?;
        match failures.pop() {
            Some((_, error)) => Err(error),
            None => Ok(index),
        }
    }

    /// Loads what it can of the index objects (all, or the listed ones), returning the ones
    /// that failed beside it. With `packs`, only the chunks of those packs are kept: an index
    /// file also describes packs a snapshot does not use, and a restore needs only its own
    /// (a repository's index grows with every night, a snapshot does not). Past
    /// `memory_entries` chunks the index goes to temporary files ([`ChunkIndex::with_budget`]).
    pub async fn load_index_lenient(
        &self,
        keyring: &Keyring,
        only: Option<&[ObjectRef]>,
        packs: Option<&[ObjectRef]>,
        memory_entries: usize,
    ) -> Result<(ChunkIndex, Vec<(String, Error)>)> {
        let packs: Option<HashSet<&str>> = packs.map(|list| list.iter().map(|p| p.id.as_str()).collect());
        let keys: Vec<String> = match only {
            Some(list) => list.iter().map(|o| index_key(&o.id)).collect(),
            None => self.target.list("index").await?.into_iter().map(|(key, _)| key).collect(),
        };
        let mut index = ChunkIndex::with_budget(memory_entries);
        let mut failures = Vec::new();
        // Indexes a snapshot lists are proven by the hashes in its authenticated header; any
        // other index must prove itself with its MAC in a repository whose indexes all carry one.
        let must_authenticate = only.is_none() && self.config.version >= AUTHENTICATED_VERSION;
        for key in keys {
            match self.read_index(keyring, &key).await {
                Ok((_, IndexProof::None)) if must_authenticate => failures.push((
                    key.clone(),
                    Error::corrupt(&key, "carries no MAC (not written with this repository's key)"),
                )),
                // Written before a `rekey`, which wrote it again under the new key: the copy
                // serves, this one is left for the snapshots that list it.
                Ok((_, IndexProof::Earlier(_))) if must_authenticate => {}
                Ok((file, _)) => {
                    index.add(key.trim_start_matches("index/"), file, packs.as_ref()).map_err(temporary_index)?;
                }
                Err(error) => failures.push((key, error)),
            }
        }
        index.seal().map_err(temporary_index)?;
        if index.is_on_disk() {
            tracing::debug!(chunks = index.len(), "{}: index kept in a temporary file", self.target.location());
        }
        Ok((index, failures))
    }

    /// Reads and authenticates one index object (for `verify`'s look at unreferenced ones):
    /// fails when it cannot be read, decrypted, authenticated (format 7 repositories) or parsed.
    pub async fn check_index(&self, keyring: &Keyring, key: &str) -> Result<()> {
        match self.read_index(keyring, key).await? {
            (_, IndexProof::None) if self.config.version >= AUTHENTICATED_VERSION => {
                Err(Error::corrupt(key, "carries no MAC (not written with this repository's key)"))
            }
            _ => Ok(()),
        }
    }

    /// Reads and authenticates an index a snapshot lists (written under this generation or an
    /// earlier one).
    pub async fn read_listed_index(&self, keyring: &Keyring, key: &str) -> Result<IndexFile> {
        Ok(self.read_index(keyring, key).await?.0)
    }

    /// Reads an index object: the file, and whether its MAC proved it was written with this
    /// repository's keys (format 7 and later; older indexes carry none).
    async fn read_index(&self, keyring: &Keyring, key: &str) -> Result<(IndexFile, IndexProof)> {
        let (plaintext, proof) = self.open_index(keyring, key).await?;
        let file: IndexFile = if plaintext.starts_with(index_codec::MAGIC) {
            index_codec::decode(&plaintext).map_err(|reason| Error::corrupt(key, format!("bad index: {reason}")))?
        } else {
            // Formats 2 and 3: zstd-compressed JSON.
            decode_json(key, &plaintext)?
        };
        // Written with the format version of the build; a later format may mean entries this
        // build would misread.
        if file.version > FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                what: key.to_string(),
                found: file.version,
                supported: FORMAT_VERSION,
                advice: crate::error::format_advice(file.version, FORMAT_VERSION),
            });
        }
        Ok((file, proof))
    }

    /// After a `rekey`: writes the indexes of earlier generations again under this generation's
    /// keys (the keyring's), so that the next backup still finds every chunk it may reuse.
    /// Idempotent: an index whose packs an index of this generation already describes is left
    /// alone, so an interrupted rekey is finished by running it again. Indexes written before an
    /// admin was added are left too: that admin cannot read their packs, so the next backup
    /// must store those chunks again. Returns how many indexes were written.
    pub async fn carry_indexes_over(&self, keyring: &Keyring) -> Result<usize> {
        let mut covered = HashSet::new();
        let mut earlier = Vec::new();
        for (key, _) in self.target.list("index").await? {
            match self.open_index(keyring, &key).await {
                Ok((body, proof)) if body.starts_with(index_codec::MAGIC) => {
                    let Ok(file) = index_codec::decode(&body) else { continue };
                    let packs = file.packs.iter().map(|record| record.pack.id.clone());
                    match proof {
                        IndexProof::Head => covered.extend(packs),
                        IndexProof::Earlier(config) => earlier.push((body, config, packs.collect::<Vec<_>>())),
                        IndexProof::None => {}
                    }
                }
                // Junk, another repository's, or unreadable here: nothing to carry.
                Ok(_) | Err(_) => {}
            }
        }
        let readers_kept = |config: &str| {
            self.chain.iter().any(|(hash, written_under)| {
                hash == config && self.config.recipients.iter().all(|r| written_under.recipients.contains(r))
            })
        };
        let recipients = self.metadata_recipients();
        let mut written = 0;
        for (mut body, config, packs) in earlier {
            if packs.iter().all(|pack| covered.contains(pack)) || !readers_kept(&config) {
                continue;
            }
            let mac = keyring.index_mac_key().mac_bytes(&[&body]);
            body.extend_from_slice(mac.as_bytes());
            let ciphertext = Bytes::from(crypto::encrypt(&recipients, &body));
            self.target.put_new(&index_key(&crypto::object_hash(&ciphertext)), ciphertext).await?;
            covered.extend(packs);
            written += 1;
        }
        Ok(written)
    }

    /// An index object's plaintext, its MAC checked and cut off (format 7) before anything but
    /// its magic and version is looked at, and what the MAC proved.
    async fn open_index(&self, keyring: &Keyring, key: &str) -> Result<(Vec<u8>, IndexProof)> {
        let mut plaintext = {
            let ciphertext = self.target.get(key).await?;
            check_object_name(key, &ciphertext)?;
            keyring.decrypt(key, &ciphertext)?
        };
        let mut proof = IndexProof::None;
        if plaintext.starts_with(index_codec::MAGIC) {
            let version = crate::varint::get(&plaintext[index_codec::MAGIC.len()..]).map_or(0, |(version, _)| version);
            if version >= u64::from(AUTHENTICATED_VERSION) {
                // Authenticate before parsing: only the magic and version were looked at.
                let body = plaintext
                    .len()
                    .checked_sub(blake3::OUT_LEN)
                    .ok_or_else(|| Error::corrupt(key, "truncated index"))?;
                let mac = blake3::Hash::from_bytes(plaintext[body..].try_into().expect("the last 32 bytes"));
                if keyring.index_mac_key().mac_bytes(&[&plaintext[..body]]) == mac {
                    proof = IndexProof::Head;
                } else if let Some(config) = keyring.past_index_config(&[&plaintext[..body]], mac) {
                    proof = IndexProof::Earlier(config);
                } else {
                    return Err(Error::corrupt(key, "its MAC does not match (not written with this repository's key)"));
                }
                // Written under an earlier generation: good for the snapshots that list it
                // (their headers prove it), passed over where an index must prove itself.
                plaintext.truncate(body);
            }
        }
        Ok((plaintext, proof))
    }
}

/// Encrypts `plaintext` (a keys or admin keys object) twice, apart, to `recipients` and stores
/// both copies on every target: the secret outlives the loss or damage of either. Returns their
/// object keys (the same on every target).
pub async fn put_keys_objects<T: Serialize>(
    targets: &[&Target],
    recipients: &[age::x25519::Recipient],
    plaintext: &T,
) -> Result<Vec<String>> {
    let plaintext = serde_json::to_vec(plaintext).expect("serialisable");
    let mut keys = Vec::new();
    for _ in 0..2 {
        let ciphertext = Bytes::from(crypto::encrypt(recipients, &plaintext));
        let key = keys_key(&crypto::object_hash(&ciphertext));
        for target in targets {
            target.put_new(&key, ciphertext.clone()).await?;
        }
        keys.push(key);
    }
    Ok(keys)
}

/// A repository's next generation of keys, made by `rekey`: its keys objects are stored on
/// every target, its config not yet (storing it is the commit: [`NextGeneration::publish`]).
pub struct NextGeneration {
    /// The new config.
    pub config: RepoConfig,
    /// Its bytes, as they will be stored.
    pub bytes: Bytes,
    /// Their BLAKE3.
    pub hash: String,
}

impl NextGeneration {
    /// Makes the next generation of `repository`'s keys, readable by `recipients` and written by
    /// `writer`, carrying `carried` (the snapshots of earlier generations that stay valid):
    /// a new authentication secret (so keys that can no longer read the keys objects cannot
    /// forge snapshots or indexes either), the same repository secret (chunk ids stay, and so
    /// does dedup), a new signing key, the earlier authentication secrets for carried
    /// snapshots, and a config signed with the current generation's signing key. The keys and
    /// admin keys objects are stored on every target; nothing refers to them yet.
    pub async fn make(
        repository: &Repository,
        targets: &[&Target],
        keyring: &Keyring,
        signing: &crypto::SigningSecret,
        recipients: &[age::x25519::Recipient],
        writer: &age::x25519::Recipient,
        carried: Vec<String>,
    ) -> Result<NextGeneration> {
        let head = &repository.config;
        let auth = RepoSecret::generate();
        let mut history: Vec<PastSecret> = keyring
            .past
            .iter()
            .map(|(config, secret)| PastSecret { config: config.clone(), auth_secret: secret.to_hex() })
            .collect();
        if let Some(current) = &keyring.auth {
            history.push(PastSecret { config: keyring.head.clone(), auth_secret: current.to_hex() });
        }
        history.sort_by(|a, b| a.config.cmp(&b.config));
        let keys = KeysFile {
            repository_id: head.id.clone(),
            repo_secret: keyring.secret.to_hex(),
            auth_secret: Some(auth.to_hex()),
            history,
        };
        let mut metadata_recipients = recipients.to_vec();
        metadata_recipients.push(writer.clone());
        let keys_objects = put_keys_objects(targets, &metadata_recipients, &keys).await?;
        let next_signing = crypto::SigningSecret::generate();
        let admin_keys = AdminKeysFile {
            repository_id: head.id.clone(),
            generation: head.generation + 1,
            signing_secret: next_signing.to_hex(),
        };
        let admin_keys_objects = put_keys_objects(targets, recipients, &admin_keys).await?;
        let mut config = RepoConfig {
            generation: head.generation + 1,
            previous: Some(repository.config_hash.clone()),
            rekeyed: Some(Utc::now()),
            recipients: recipients.iter().map(ToString::to_string).collect(),
            writer_recipient: writer.to_string(),
            keys: keys_objects,
            admin_keys: admin_keys_objects,
            signing_key: Some(next_signing.public_hex()),
            carried,
            signature: None,
            ..head.clone()
        };
        config.signature = Some(signing.sign_config(&config.signed_bytes()));
        let bytes = Bytes::from(config.to_bytes());
        let hash = crypto::object_hash(&bytes);
        Ok(NextGeneration { config, bytes, hash })
    }

    /// Stores the new config on `repository`'s target: from now on the repository there is
    /// this generation. Returns it, at this generation.
    pub async fn publish(&self, repository: &Repository) -> Result<Repository> {
        repository.target.put_new(&config_copy_key(&self.hash), self.bytes.clone()).await?;
        let mut next = repository.clone();
        next.chain.push((self.hash.clone(), self.config.clone()));
        next.config = self.config.clone();
        next.config_hash.clone_from(&self.hash);
        Ok(next)
    }
}

/// What an index's MAC proved.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IndexProof {
    /// Written with the keys of the generation the keyring was unlocked under.
    Head,
    /// Written with an earlier generation's keys (before a `rekey`): that generation's config
    /// hash.
    Earlier(String),
    /// Carries no MAC (formats 2-6).
    None,
}

/// Refuses to initialise over a repository or other files.
pub async fn ensure_empty(target: &Target) -> Result<()> {
    if target.size_of(CONFIG_KEY).await?.is_some() {
        return Err(Error::AlreadyExists { location: target.location().into(), what: "a crmvault repository".into() });
    }
    if !target.is_empty().await? {
        return Err(Error::AlreadyExists { location: target.location().into(), what: "other files".into() });
    }
    Ok(())
}

/// Whether `id` has the form of an object name: 64 lowercase hex digits.
pub fn is_object_hash(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks that a content-addressed object's bytes hash to its name.
pub fn check_object_name(key: &str, bytes: &[u8]) -> Result<()> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let actual = crypto::object_hash(bytes);
    if actual != name {
        return Err(Error::corrupt(key, "its contents do not match its name (BLAKE3 mismatch)"));
    }
    Ok(())
}

/// zstd-compressed JSON, parsed as it is decompressed: the JSON of a large index (about 100
/// bytes a chunk: 50 MiB at 3 GiB of data) is never held whole.
fn decode_json<T: for<'de> Deserialize<'de>>(object: &str, compressed: &[u8]) -> Result<T> {
    let decoder = zstd::stream::Decoder::new(compressed).map_err(|e| Error::corrupt(object, format!("zstd: {e}")))?;
    serde_json::from_reader(std::io::BufReader::with_capacity(64 << 10, decoder)).map_err(|e| {
        if e.is_io() {
            Error::corrupt(object, format!("zstd: {e}"))
        } else {
            Error::corrupt(object, format!("bad JSON: {e}"))
        }
    })
}

/// JSON straight into zstd: the uncompressed JSON of a large index or manifest (hex chunk ids,
/// tens of MiB at a few GiB of data) is never held whole.
fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).expect("zstd level 3 is valid");
    serde_json::to_writer(&mut encoder, value).expect("serialising to memory cannot fail");
    encoder.finish().expect("writing to memory cannot fail")
}

/// A stored object referenced by a snapshot: its id (hash) and size.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    /// BLAKE3 hex of the stored bytes.
    pub id: String,
    /// Stored size in bytes.
    pub size: u64,
}

/// Where one chunk lies inside a pack's plaintext: in the zstd frame at `offset` (`length`
/// bytes), which may hold several consecutive chunks (format 4), at `start` of its plaintext.
///
/// Format 4 indexes store it in binary (`index_codec`); formats 2 and 3 stored
/// `[id, offset, length, raw_length]` in JSON, one frame per chunk, hence `start` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    chunk: ChunkId,
    offset: u64,
    length: u32,
    raw_length: u32,
    start: u32,
}

impl ChunkLocation {
    /// A chunk alone in its frame.
    pub fn new(chunk: ChunkId, offset: u64, length: u32, raw_length: u32) -> Self {
        ChunkLocation { chunk, offset, length, raw_length, start: 0 }
    }
    /// A chunk `start` bytes into the plaintext of the frame at `offset`.
    pub fn in_frame(chunk: ChunkId, offset: u64, length: u32, raw_length: u32, start: u32) -> Self {
        ChunkLocation { chunk, offset, length, raw_length, start }
    }
    /// The chunk.
    pub fn chunk(&self) -> ChunkId {
        self.chunk
    }
    /// Offset of its frame in the decrypted pack.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Compressed length of its frame.
    pub fn length(&self) -> u32 {
        self.length
    }
    /// Plaintext length of the chunk.
    pub fn raw_length(&self) -> u32 {
        self.raw_length
    }
    /// Where the chunk starts in its frame's plaintext.
    pub fn start(&self) -> u32 {
        self.start
    }
}

impl<'de> Deserialize<'de> for ChunkLocation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ChunkLocation;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[chunk id, offset, length, raw length]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<ChunkLocation, A::Error> {
                use serde::de::Error as _;
                let missing = |n| A::Error::invalid_length(n, &self);
                let chunk = seq.next_element()?.ok_or_else(|| missing(0))?;
                let offset = seq.next_element()?.ok_or_else(|| missing(1))?;
                let length = seq.next_element()?.ok_or_else(|| missing(2))?;
                let raw_length = seq.next_element()?.ok_or_else(|| missing(3))?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(5, &self));
                }
                Ok(ChunkLocation { chunk, offset, length, raw_length, start: 0 })
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

/// One pack as an index describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct PackRecord {
    /// The pack.
    pub pack: ObjectRef,
    /// The zstd dictionary its chunks were compressed with, if any.
    #[serde(default)]
    pub dictionary: Option<ObjectRef>,
    /// Its chunks.
    pub chunks: Vec<ChunkLocation>,
}

/// Plaintext of an index object (read from JSON for formats 2 and 3, see `index_codec` for 4).
#[derive(Debug, Clone, Deserialize)]
pub struct IndexFile {
    /// Format version.
    pub version: u32,
    /// Packs described.
    pub packs: Vec<PackRecord>,
}

/// A growing set of chunk ids (those a backup has sent to a target), exact and compact: the
/// ids in blocks that never move, and an open-addressing table of their positions, at most
/// half full, probed from each id's leading bytes (ids are keyed hashes, so evenly spread).
/// 40-48 bytes an id; a `HashSet<ChunkId>` took 38-75 with its slack, and up to 113 while
/// growing.
#[derive(Debug, Default)]
pub struct ChunkSet {
    blocks: Vec<Vec<ChunkId>>,
    len: usize,
    /// 0: empty; otherwise 1 + the id's position in `blocks`.
    slots: Vec<u32>,
}

/// Ids per block of a [`ChunkSet`] (128 KiB).
const SET_BLOCK: usize = 4096;

impl ChunkSet {
    /// How many ids it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &ChunkId) -> bool {
        matches!(self.probe(id), Some(Ok(_)))
    }

    /// Adds `id`; false when it was there already.
    pub fn insert(&mut self, id: ChunkId) -> bool {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        match self.probe(&id) {
            Some(Ok(_)) => false,
            Some(Err(empty)) => {
                if self.blocks.last().is_none_or(|block| block.len() == SET_BLOCK) {
                    self.blocks.push(Vec::with_capacity(SET_BLOCK));
                }
                self.blocks.last_mut().expect("a block with room").push(id);
                self.len += 1;
                self.slots[empty] = u32::try_from(self.len).expect("fewer than 4 billion chunks");
                true
            }
            None => unreachable!("the table is never full"),
        }
    }

    fn id_at(&self, position: usize) -> &ChunkId {
        &self.blocks[position / SET_BLOCK][position % SET_BLOCK]
    }

    /// `Ok(slot)` holding `id`, or `Err(slot)`, the empty one where it would go; `None` while
    /// there is no table.
    fn probe(&self, id: &ChunkId) -> Option<std::result::Result<usize, usize>> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut slot = Self::start(id) & mask;
        loop {
            match self.slots[slot] {
                0 => return Some(Err(slot)),
                taken if self.id_at(taken as usize - 1) == id => return Some(Ok(slot)),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    fn start(id: &ChunkId) -> usize {
        let lead = u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"));
        // Only the low bits are used, through the table's mask.
        usize::try_from(lead & u64::from(u32::MAX)).expect("32 bits fit a usize")
    }

    /// Doubles the table (at least 1024 slots) and places every id again.
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(1024);
        self.slots = vec![0; size];
        let mask = size - 1;
        for position in 0..self.len {
            let mut slot = Self::start(self.id_at(position)) & mask;
            while self.slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            self.slots[slot] = u32::try_from(position + 1).expect("fewer than 4 billion chunks");
        }
    }
}

/// Builds one pack: compressed chunks appended, encrypted as they come, then sealed as one
/// object.
pub struct PackWriter {
    ciphertext: crypto::Encrypting,
    /// Plaintext bytes appended.
    len: usize,
    chunks: Vec<ChunkLocation>,
    dictionary: Option<ObjectRef>,
}

/// A pack ready to upload.
pub struct SealedPack {
    /// Its object key.
    pub key: String,
    /// Reference (id, size).
    pub reference: ObjectRef,
    /// Ciphertext.
    pub bytes: Bytes,
    /// Its chunks.
    pub chunks: Vec<ChunkLocation>,
    /// The dictionary its chunks need.
    pub dictionary: Option<ObjectRef>,
}

impl PackWriter {
    /// An empty pack for the data recipients, with room for `capacity` bytes, for chunks
    /// compressed with `dictionary`.
    pub fn new(recipients: &[age::x25519::Recipient], capacity: usize, dictionary: Option<ObjectRef>) -> Self {
        PackWriter { ciphertext: crypto::Encrypting::new(recipients, capacity), len: 0, chunks: Vec::new(), dictionary }
    }

    /// The dictionary of the chunks in this pack.
    pub fn dictionary(&self) -> Option<&ObjectRef> {
        self.dictionary.as_ref()
    }

    /// Appends one zstd frame holding the plaintexts of `chunks` (id, length), in order.
    pub fn add(&mut self, compressed: &[u8], chunks: &[(ChunkId, u32)]) {
        let offset = self.len as u64;
        self.ciphertext.write(compressed);
        self.len += compressed.len();
        let length = u32::try_from(compressed.len()).expect("a frame is < 4 GiB");
        let mut start = 0u32;
        for &(id, raw_length) in chunks {
            self.chunks.push(ChunkLocation::in_frame(id, offset, length, raw_length, start));
            start = start.checked_add(raw_length).expect("a frame is < 4 GiB");
        }
    }

    /// Plaintext bytes appended so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Ends the pack's ciphertext and names it.
    pub fn seal(self) -> SealedPack {
        let ciphertext = self.ciphertext.finish();
        let id = crypto::object_hash(&ciphertext);
        SealedPack {
            key: pack_key(&id),
            reference: ObjectRef { id, size: ciphertext.len() as u64 },
            bytes: Bytes::from(ciphertext),
            // Kept until the backup ends: no room to spare for growth.
            chunks: {
                let mut chunks = self.chunks;
                chunks.shrink_to_fit();
                chunks
            },
            dictionary: self.dictionary,
        }
    }
}

/// Encrypts an index file for the metadata recipients: (key, reference, bytes). Takes the file
/// so that its chunk records, the largest thing a full backup holds at the end, are freed
/// before the ciphertext is made.
///
/// Since format 7 the plaintext ends with a MAC of the rest under the index MAC key, so that a
/// backup can tell an index this repository's keys wrote from one a storage writer made for the
/// public recipients (docs/FORMAT.md, *Index*).
pub fn seal_index(
    file: IndexFile,
    recipients: &[age::x25519::Recipient],
    mac_key: &MacKey,
) -> (String, ObjectRef, Bytes) {
    let mut plaintext = index_codec::encode(&file);
    if file.version >= AUTHENTICATED_VERSION {
        let mac = mac_key.mac_bytes(&[&plaintext]);
        plaintext.extend_from_slice(mac.as_bytes());
    }
    drop(file);
    let ciphertext = crypto::encrypt(recipients, &plaintext);
    let id = crypto::object_hash(&ciphertext);
    (index_key(&id), ObjectRef { id, size: ciphertext.len() as u64 }, Bytes::from(ciphertext))
}

/// Decompresses one chunk out of a decrypted pack and proves its id.
pub fn open_chunk(
    key: &ChunkIdKey,
    pack_plaintext: &[u8],
    location: &ChunkLocation,
    pack_key: &str,
    coding: FrameCoding<'_>,
) -> Result<Vec<u8>> {
    let mut plaintext = Vec::new();
    open_chunk_onto(key, pack_plaintext, location, pack_key, coding, &mut plaintext)?;
    Ok(plaintext)
}

/// [`open_chunk`] onto the end of `out`, which keeps what it held if the chunk fails.
///
/// A chunk alone in its frame decompresses straight onto `out`. A frame of several chunks is
/// decompressed once into a buffer of the calling thread, which the frame's next chunks are
/// then copied from (a restore asks for them in order, on one thread per run).
pub fn open_chunk_onto(
    key: &ChunkIdKey,
    pack_plaintext: &[u8],
    location: &ChunkLocation,
    pack_key: &str,
    coding: FrameCoding<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = usize::try_from(location.offset()).unwrap_or(usize::MAX);
    let end = start.saturating_add(location.length() as usize);
    let compressed = pack_plaintext
        .get(start..end)
        .ok_or_else(|| Error::corrupt(pack_key, format!("chunk {} lies outside the pack", location.chunk())))?;
    if location.raw_length() > MAX_CHUNK_BYTES {
        return Err(Error::corrupt(pack_key, format!("chunk {} claims an impossible size", location.chunk())));
    }
    let content = crate::compress::frame_content_size(compressed);
    let before = out.len();
    if !coding.packed && location.start() == 0 && content.is_none_or(|size| size == u64::from(location.raw_length())) {
        coding
            .decode_onto(compressed, location.raw_length() as usize, out)
            .map_err(|e| Error::corrupt(pack_key, format!("chunk {} does not decompress: {e}", location.chunk())))?;
    } else {
        // A packed frame's text is as long as its chunks (unknown here) and never > 16 MiB.
        let frame_size = if coding.packed {
            Some(MAX_CHUNK_BYTES as usize)
        } else {
            content.filter(|&size| size <= u64::from(MAX_CHUNK_BYTES)).and_then(|size| usize::try_from(size).ok())
        }
        .ok_or_else(|| {
            Error::corrupt(pack_key, format!("the frame of chunk {} has no valid size", location.chunk()))
        })?;
        FRAME.with_borrow_mut(|frame| {
            let place = (pack_key, location.offset());
            if frame.at.as_ref().is_none_or(|(key, offset)| (key.as_str(), *offset) != place) {
                frame.at = None;
                frame.plaintext.clear();
                coding.decode_onto(compressed, frame_size, &mut frame.plaintext).map_err(|e| {
                    Error::corrupt(
                        pack_key,
                        format!("the frame of chunk {} does not decompress: {e}", location.chunk()),
                    )
                })?;
                frame.at = Some((pack_key.to_string(), location.offset()));
            }
            let piece = (location.start() as usize)
                .checked_add(location.raw_length() as usize)
                .and_then(|piece_end| frame.plaintext.get(location.start() as usize..piece_end))
                .ok_or_else(|| {
                    Error::corrupt(pack_key, format!("chunk {} lies outside its frame", location.chunk()))
                })?;
            out.extend_from_slice(piece);
            Ok::<_, Error>(())
        })?;
    }
    let plaintext = &out[before..];
    if plaintext.len() != location.raw_length() as usize || key.id_of(plaintext) != location.chunk() {
        out.truncate(before);
        return Err(Error::corrupt(pack_key, format!("chunk {} fails its keyed hash", location.chunk())));
    }
    Ok(())
}

/// [`open_chunk_onto`] for chunks that follow each other in one pack: where consecutive chunks
/// make up a whole frame, in order (a run of a full backup's stream is mostly such frames), the
/// frame decompresses straight onto `out` and each chunk is proven where it lies, with no copy
/// out of a frame buffer. On an error `out` keeps what it held.
pub fn open_chunks_onto(
    key: &ChunkIdKey,
    pack_plaintext: &[u8],
    locations: &[ChunkLocation],
    pack_key: &str,
    coding: FrameCoding<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let before = out.len();
    let mut rest = locations;
    while let Some(first) = rest.first() {
        let same_frame =
            rest.iter().take_while(|l| l.offset() == first.offset() && l.length() == first.length()).count();
        let (frame, after) = rest.split_at(same_frame);
        rest = after;
        let opened = match whole_frame(frame, pack_plaintext) {
            Some((compressed, size)) => open_whole_frame(key, compressed, size, frame, pack_key, coding, out),
            None => frame.iter().try_for_each(|l| open_chunk_onto(key, pack_plaintext, l, pack_key, coding, out)),
        };
        if let Err(error) = opened {
            out.truncate(before);
            return Err(error);
        }
    }
    Ok(())
}

/// The compressed bytes and size of the frame that `frame` (several chunks of one frame) fills
/// exactly, from its start to its end; `None` if they do not.
fn whole_frame<'p>(frame: &[ChunkLocation], pack_plaintext: &'p [u8]) -> Option<(&'p [u8], usize)> {
    let first = frame.first()?;
    let mut size: u64 = 0;
    for location in frame {
        if u64::from(location.start()) != size {
            return None;
        }
        size += u64::from(location.raw_length());
    }
    let start = usize::try_from(first.offset()).ok()?;
    let compressed = pack_plaintext.get(start..start.checked_add(first.length() as usize)?)?;
    let whole = frame.len() > 1
        && size <= u64::from(MAX_CHUNK_BYTES)
        && crate::compress::frame_content_size(compressed) == Some(size);
    whole.then_some((compressed, usize::try_from(size).ok()?))
}

fn open_whole_frame(
    key: &ChunkIdKey,
    compressed: &[u8],
    size: usize,
    frame: &[ChunkLocation],
    pack_key: &str,
    coding: FrameCoding<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let first = frame[0].chunk();
    let mut at = out.len();
    coding
        .decode_onto(compressed, size, out)
        .map_err(|e| Error::corrupt(pack_key, format!("the frame of chunk {first} does not decompress: {e}")))?;
    if out.len() - at != size {
        return Err(Error::corrupt(pack_key, format!("the frame of chunk {first} has the wrong size")));
    }
    for location in frame {
        let end = at + location.raw_length() as usize;
        if key.id_of(&out[at..end]) != location.chunk() {
            return Err(Error::corrupt(pack_key, format!("chunk {} fails its keyed hash", location.chunk())));
        }
        at = end;
    }
    Ok(())
}

/// The last frame of several chunks a thread decompressed: (pack key, offset) and plaintext.
#[derive(Default)]
struct FrameCache {
    at: Option<(String, u64)>,
    plaintext: Vec<u8>,
}

thread_local! {
    static FRAME: std::cell::RefCell<FrameCache> = std::cell::RefCell::default();
}

/// The plaintext header of a snapshot: what anyone may see.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Format version.
    pub version: u32,
    /// When the database snapshot was taken.
    pub time: DateTime<Utc>,
    /// BLAKE3 of the repository config it was written under.
    pub config_hash: String,
    /// Stored bytes of every object it references.
    pub total_bytes: u64,
    /// Bytes this backup added.
    pub added_bytes: u64,
    /// Packs it needs.
    pub packs: Vec<ObjectRef>,
    /// Indexes it needs.
    pub indexes: Vec<ObjectRef>,
    /// Compression dictionaries its packs need.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dictionaries: Vec<ObjectRef>,
    /// The newest snapshot of the repository when this one was written (format 7): a snapshot
    /// deleted from storage leaves its successor naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// One more than the parent's (0 before format 7).
    #[serde(default)]
    pub sequence: u64,
    /// The snapshot this one is a re-encrypted copy of (`rekey --reencrypt`): same data, same
    /// place in the chain, new id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// One stream of bytes (a table's COPY data, or a schema section), as chunks.
///
/// The list of its chunk ids is itself stored as chunks ("list chunks", data like any other),
/// cut where an id's last byte is a multiple of [`LIST_CUT`]: unchanged runs of chunks give
/// unchanged list chunks, so a snapshot stores only the parts of its lists that changed. A
/// long list of list chunks is cut the same way again, level upon level, until at most
/// [`LIST_TOP_MAX`] ids are left for the manifest (format 3; format 2 had one level).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamManifest {
    /// Plaintext length.
    pub bytes: u64,
    /// Keyed BLAKE3 of the whole plaintext (hex). Since format 7 it is stored in the manifest's
    /// admin-only part, not beside the rest: empty when the manifest was opened with the
    /// writer key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The top list chunks, in order: they hold `chunks` when `list_levels` is 1, else the ids
    /// of the list chunks one level down.
    pub lists: Vec<ChunkId>,
    /// Levels of list chunks from `lists` down to the data chunks.
    #[serde(default = "StreamManifest::one_level")]
    pub list_levels: u32,
    /// The list chunks below the top level: filled by the backup, or by [`crate::fetch::expand_lists`].
    #[serde(skip)]
    pub inner_lists: Vec<ChunkId>,
    /// Its chunks, in order: filled by the backup, or by [`crate::fetch::expand_lists`].
    #[serde(skip)]
    pub chunks: Vec<ChunkId>,
    /// Where a restore keeps its chunks instead, in a [`crate::fetch::ChunkSpool`].
    #[serde(skip)]
    pub spooled: std::ops::Range<u64>,
}

impl Default for StreamManifest {
    fn default() -> Self {
        StreamManifest {
            bytes: 0,
            digest: String::new(),
            lists: Vec::new(),
            list_levels: 1,
            inner_lists: Vec::new(),
            chunks: Vec::new(),
            spooled: 0..0,
        }
    }
}

impl StreamManifest {
    fn one_level() -> u32 {
        1
    }
}

/// Most list-chunk ids a manifest holds per stream before another level of list chunks is cut
/// (a CRM table at scale 1 has ~10 000 list chunks: 0.3 MiB in every snapshot with one level).
pub const LIST_TOP_MAX: usize = 64;
/// More levels than this cannot come from a real stream (64^8 chunks): the manifest is damaged.
pub const LIST_LEVELS_MAX: u32 = 8;

/// A list chunk ends after an id whose last byte is a multiple of this (16 ids on average;
/// format 5's ids end where formats 2-4 had their 16th byte, so a repository's first format-5
/// snapshot writes all its list chunks anew, once).
pub const LIST_CUT: u8 = 16;
/// A list chunk holds at least this many ids (unless it is a stream's last) ...
const LIST_MIN: usize = 4;
/// ... and at most this many.
const LIST_MAX: usize = 64;

/// Cuts a run of chunk ids into list chunks as the ids come, by a rule that looks only at the
/// ids of the piece being cut: a backup cuts a stream's first level while it reads the stream,
/// instead of keeping every id of it until the end.
#[derive(Debug, Default)]
pub struct ListCutter {
    piece: Vec<u8>,
}

impl ListCutter {
    /// Takes the next id; returns a finished list chunk (the concatenation of its ids) when
    /// this id ends one.
    pub fn push(&mut self, id: &ChunkId) -> Option<Vec<u8>> {
        if self.piece.is_empty() {
            self.piece.reserve_exact(LIST_MAX * CHUNK_ID_BYTES);
        }
        self.piece.extend_from_slice(&id.0);
        let held = self.piece.len() / CHUNK_ID_BYTES;
        ((held >= LIST_MIN && id.0[CHUNK_ID_BYTES - 1] % LIST_CUT == 0) || held >= LIST_MAX)
            .then(|| std::mem::take(&mut self.piece))
    }

    /// The last list chunk, when ids are left after the last cut.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.piece.is_empty()).then_some(self.piece)
    }
}

/// Cuts a stream's chunk ids into list chunks (each the concatenation of its ids).
pub fn split_list(ids: &[ChunkId]) -> Vec<Vec<u8>> {
    let mut cutter = ListCutter::default();
    let mut lists: Vec<Vec<u8>> = ids.iter().filter_map(|id| cutter.push(id)).collect();
    lists.extend(cutter.finish());
    lists
}

/// Builds a stream's levels of list chunks: `store` stores the pieces of one level (from
/// [`split_list`]) and returns their ids, in order. Sets `lists`, `inner_lists` and
/// `list_levels` from `stream.chunks`.
pub fn build_lists(
    stream: &mut StreamManifest,
    mut store: impl FnMut(Vec<Vec<u8>>) -> Result<Vec<ChunkId>>,
) -> Result<()> {
    let first = store(split_list(&stream.chunks))?;
    build_upper_lists(stream, first, store)
}

/// [`build_lists`] from the ids of the stream's first level of list chunks, already stored
/// (cut by a [`ListCutter`]).
pub fn build_upper_lists(
    stream: &mut StreamManifest,
    first_level: Vec<ChunkId>,
    mut store: impl FnMut(Vec<Vec<u8>>) -> Result<Vec<ChunkId>>,
) -> Result<()> {
    let mut lists = first_level;
    stream.list_levels = 1;
    stream.inner_lists.clear();
    while lists.len() > LIST_TOP_MAX {
        let upper = store(split_list(&lists))?;
        stream.inner_lists.append(&mut lists);
        lists = upper;
        stream.list_levels += 1;
    }
    stream.lists = lists;
    Ok(())
}

/// The ids a list chunk of a format-`version` snapshot holds.
pub fn parse_list(object: &str, bytes: &[u8], version: u32) -> Result<Vec<ChunkId>> {
    let width = stored_id_bytes(version);
    if bytes.len() % width != 0 || bytes.is_empty() {
        return Err(Error::corrupt(object, "is not a list of chunk ids"));
    }
    Ok(bytes.chunks_exact(width).filter_map(ChunkId::from_stored).collect())
}

/// One table's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableManifest {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in the COPY stream (generated columns are left out).
    pub columns: Vec<String>,
    /// Rows.
    pub rows: u64,
    /// Its COPY text stream.
    pub data: StreamManifest,
}

/// A sequence's state at snapshot time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SequenceState {
    /// Schema name.
    pub schema: String,
    /// Sequence name.
    pub name: String,
    /// last_value.
    pub last_value: i64,
    /// is_called.
    pub is_called: bool,
}

/// Everything a snapshot holds, encrypted to admins and writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Database name.
    pub database: String,
    /// Server version string.
    pub server_version: String,
    /// Host that ran the backup.
    pub hostname: String,
    /// pg_dump pre-data section (DDL before data).
    pub pre_data: StreamManifest,
    /// pg_dump post-data section (indexes, constraints, triggers).
    pub post_data: StreamManifest,
    /// Table data.
    pub tables: Vec<TableManifest>,
    /// Sequence values.
    pub sequences: Vec<SequenceState>,
    /// Materialized views that were populated, to refresh after restore.
    pub materialized_views: Vec<(String, String)>,
    /// Large objects' contents as a COPY stream of (oid, bytea), when the database has any.
    pub large_objects: Option<TableManifest>,
    /// What only restore needs and the backup host must not read later (format 7): the hex of
    /// an age ciphertext, to the admins only, of [`AdminOnly`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_only: Option<String>,
}

/// The part of a manifest encrypted to the admins only: every stream's digest, in the order of
/// [`Manifest::streams`]. A keyed digest the writer could read would confirm guesses about a
/// small table's rows (docs/FORMAT.md, *Threat model*).
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminOnly {
    /// Stream digests (hex).
    pub digests: Vec<String>,
}

impl Manifest {
    /// Every stream: schema sections, tables, large objects.
    pub fn streams(&self) -> impl Iterator<Item = &StreamManifest> {
        [&self.pre_data, &self.post_data]
            .into_iter()
            .chain(self.tables.iter().chain(self.large_objects.iter()).map(|t| &t.data))
    }

    /// The same, to fill in.
    pub fn streams_mut(&mut self) -> impl Iterator<Item = &mut StreamManifest> {
        [&mut self.pre_data, &mut self.post_data]
            .into_iter()
            .chain(self.tables.iter_mut().chain(self.large_objects.iter_mut()).map(|t| &mut t.data))
    }

    /// Every list chunk it references.
    pub fn list_chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.streams().flat_map(|s| s.lists.iter().chain(s.inner_lists.iter()))
    }

    /// Every chunk it references: list chunks, and data chunks once the lists are expanded.
    pub fn all_chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.list_chunks().chain(self.streams().flat_map(|s| s.chunks.iter()))
    }
}

/// A snapshot object's first four lines, parsed.
struct HeaderLines {
    header: SnapshotHeader,
    version: u32,
    version_line: Bytes,
    header_line: Bytes,
    mac: String,
    /// Where the manifest ciphertext starts.
    end: usize,
}

/// Parses a snapshot object's first four lines. `bytes` may stop after the MAC line; the
/// header is checked against its own BLAKE3 (a keyless check; the MAC is checked on opening).
fn parse_header(id: &str, bytes: &Bytes) -> Result<HeaderLines> {
    let key = snapshot_key(id);
    let mut lines = Vec::with_capacity(4);
    let mut start = 0;
    while lines.len() < 4 {
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| start + p)
            .ok_or_else(|| Error::corrupt(&key, "truncated snapshot object"))?;
        lines.push(bytes.slice(start..end));
        start = end + 1;
    }
    let magic = std::str::from_utf8(&lines[0]).unwrap_or("");
    let Some(version) = magic.strip_prefix(SNAPSHOT_MAGIC).map(str::trim) else {
        return Err(Error::corrupt(&key, "not a crmvault snapshot"));
    };
    let version: u32 = version.parse().map_err(|_| Error::corrupt(&key, "bad version line"))?;
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(Error::UnsupportedFormat {
            what: format!("snapshot {id}"),
            found: version,
            supported: FORMAT_VERSION,
            advice: crate::error::format_advice(version, FORMAT_VERSION),
        });
    }
    if crypto::object_hash(&lines[1]).as_bytes() != &lines[2][..] {
        return Err(Error::corrupt(&key, "its header does not match the header's BLAKE3"));
    }
    let header: SnapshotHeader =
        serde_json::from_slice(&lines[1]).map_err(|e| Error::corrupt(&key, format!("bad header: {e}")))?;
    // Ids become object keys: anything but a BLAKE3 hex hash is refused before it is used.
    let referenced = header.packs.iter().chain(&header.indexes).chain(&header.dictionaries).map(|o| o.id.as_str());
    if !referenced.chain(header.parent.as_deref()).all(is_object_hash) {
        return Err(Error::corrupt(&key, "its header names an object that is not a BLAKE3 hash"));
    }
    let mac = String::from_utf8(lines[3].to_vec()).map_err(|_| Error::corrupt(&key, "bad MAC line"))?;
    Ok(HeaderLines { header, version, version_line: lines[0].clone(), header_line: lines[1].clone(), mac, end: start })
}

/// A snapshot object as read: header visible, manifest still encrypted.
#[derive(Debug, Clone)]
pub struct SealedSnapshot {
    /// Snapshot id (BLAKE3 of the object).
    pub id: String,
    /// The plaintext header (believe it only once [`SealedSnapshot::open`] succeeded).
    pub header: SnapshotHeader,
    version: u32,
    version_line: Bytes,
    header_line: Bytes,
    mac: String,
    manifest_ciphertext: Bytes,
}

/// A manifest encrypted once for every target: its ciphertext names the snapshot everywhere.
pub struct SealedManifest {
    /// The snapshot id: BLAKE3 of `ciphertext`.
    pub id: String,
    compressed: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl SealedManifest {
    /// Compresses and encrypts a manifest for the repository's metadata recipients, its stream
    /// digests apart, for the admins only ([`AdminOnly`]).
    pub fn seal(manifest: &mut Manifest, repository: &Repository) -> SealedManifest {
        let admin_only =
            AdminOnly { digests: manifest.streams_mut().map(|stream| std::mem::take(&mut stream.digest)).collect() };
        let plaintext = serde_json::to_vec(&admin_only).expect("serialisable");
        manifest.admin_only = Some(hex::encode(crypto::encrypt(&repository.data_recipients(), &plaintext)));
        let compressed = encode_json(manifest);
        let ciphertext = crypto::encrypt(&repository.metadata_recipients(), &compressed);
        // The caller keeps the digests it computed, as before sealing.
        for (stream, digest) in manifest.streams_mut().zip(admin_only.digests) {
            stream.digest = digest;
        }
        manifest.admin_only = None;
        SealedManifest { id: crypto::object_hash(&ciphertext), compressed, ciphertext }
    }

    /// The snapshot object for one target, whose header lists that target's packs and indexes.
    /// Its MAC covers the version line, the header and the manifest.
    pub fn snapshot_object(&self, header: &SnapshotHeader, keyring: &Keyring) -> Bytes {
        let header_line = serde_json::to_vec(header).expect("serialisable");
        let version_line = format!("{SNAPSHOT_MAGIC} {FORMAT_VERSION}");
        let mac = keyring.snapshot_mac_key().mac(&[version_line.as_bytes(), &header_line, &self.compressed]);
        let mut object = format!("{version_line}\n").into_bytes();
        object.extend_from_slice(&header_line);
        object.push(b'\n');
        object.extend_from_slice(crypto::object_hash(&header_line).as_bytes());
        object.push(b'\n');
        object.extend_from_slice(mac.as_bytes());
        object.push(b'\n');
        object.extend_from_slice(&self.ciphertext);
        Bytes::from(object)
    }
}

impl SealedSnapshot {
    fn parse(id: &str, bytes: &Bytes) -> Result<SealedSnapshot> {
        let key = snapshot_key(id);
        let lines = parse_header(id, bytes)?;
        let manifest_ciphertext = bytes.slice(lines.end..);
        if crypto::object_hash(&manifest_ciphertext) != id {
            return Err(Error::corrupt(&key, "its manifest does not match its name (BLAKE3 mismatch)"));
        }
        Ok(SealedSnapshot {
            id: id.to_string(),
            header: lines.header,
            version: lines.version,
            version_line: lines.version_line,
            header_line: lines.header_line,
            mac: lines.mac,
            manifest_ciphertext,
        })
    }

    /// Its manifest as sealed, to store the same snapshot (same id, same manifest) again with
    /// another header (`rekey --reencrypt` on a second target). Call after [`Self::open`].
    pub fn sealed_manifest(&self, keyring: &Keyring) -> Result<SealedManifest> {
        let compressed = keyring.decrypt(&snapshot_key(&self.id), &self.manifest_ciphertext)?;
        Ok(SealedManifest { id: self.id.clone(), compressed, ciphertext: self.manifest_ciphertext.to_vec() })
    }

    /// The snapshot's place in the chain (its header, once authenticated).
    pub fn mark(&self) -> SnapshotMark {
        SnapshotMark { id: self.id.clone(), sequence: self.header.sequence, time: self.header.time }
    }

    /// Decrypts the manifest and proves that it and the header were written with this
    /// repository's keys (the MAC is checked before the manifest is parsed). An admin's
    /// keyring also opens the admin-only part and fills in the stream digests.
    pub fn open(&self, keyring: &Keyring) -> Result<Manifest> {
        let key = snapshot_key(&self.id);
        // Written under the config this keyring was unlocked with, or carried from an earlier
        // generation by a `rekey`: anything else was written with a key since retired, or is
        // another repository's.
        let Some(mac_key) = keyring.snapshot_mac_key_for(&self.header.config_hash, &self.id) else {
            return Err(Error::corrupt(
                &key,
                "was written under another config (a key retired by `rekey`, or another repository's)",
            ));
        };
        let compressed = keyring.decrypt(&key, &self.manifest_ciphertext).map_err(|error| match error {
            Error::WrongIdentity { path } if self.header.config_hash != keyring.head => Error::BadKey(format!(
                "the identity in {} is not a recipient of snapshot {}: it was written before a `rekey` added that \
                 identity (an admin of that time can read it)",
                path.display(),
                &self.id[..12]
            )),
            other => other,
        })?;
        let mac = if self.version >= AUTHENTICATED_VERSION {
            mac_key.mac_bytes(&[&self.version_line, &self.header_line, &compressed])
        } else {
            keyring.mac_key().mac_bytes(&[&self.header_line, &compressed])
        };
        if blake3::Hash::from_hex(&self.mac).ok() != Some(mac) {
            return Err(Error::corrupt(&key, "its MAC does not match (not written with this repository's key)"));
        }
        let mut manifest: Manifest = decode_json(&key, &compressed)?;
        match manifest.admin_only.take() {
            Some(sealed) if keyring.is_admin => {
                let ciphertext = hex::decode(sealed).map_err(|_| Error::corrupt(&key, "bad admin-only part"))?;
                let plaintext = keyring.decrypt(&key, &ciphertext)?;
                let AdminOnly { digests } = serde_json::from_slice(&plaintext)
                    .map_err(|e| Error::corrupt(&key, format!("bad admin-only part: {e}")))?;
                if digests.len() != manifest.streams().count() {
                    return Err(Error::corrupt(&key, "its admin-only part does not match its streams"));
                }
                for (stream, digest) in manifest.streams_mut().zip(digests) {
                    stream.digest = digest;
                }
            }
            None if self.version >= AUTHENTICATED_VERSION => {
                return Err(Error::corrupt(&key, "has no admin-only part"));
            }
            // The writer's keyring, or a manifest from before format 7.
            Some(_) | None => {}
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::OpenMode;

    fn ids(range: std::ops::Range<u32>) -> Vec<ChunkId> {
        range.map(|n| ChunkId::from_stored(blake3::hash(&n.to_le_bytes()).as_bytes()).unwrap()).collect()
    }

    #[test]
    fn a_chunk_set_holds_each_id_once_and_knows_every_one() {
        let all = ids(0..20_000);
        let mut set = ChunkSet::default();
        assert!(!set.contains(&all[0]) && set.is_empty());
        for (n, id) in all.iter().enumerate() {
            assert!(set.insert(*id), "id {n} is new");
            if n % 997 == 0 {
                assert!(!set.insert(*id), "id {n} again");
            }
        }
        assert_eq!(set.len(), all.len());
        assert!(all.iter().all(|id| set.contains(id)));
        assert!(ids(20_000..25_000).iter().all(|id| !set.contains(id)));
        // Ids sharing their leading bytes (the probe's start) are still told apart.
        let mut twins = ChunkSet::default();
        let twin = |last: u8| {
            let mut bytes = [9u8; CHUNK_ID_BYTES];
            bytes[CHUNK_ID_BYTES - 1] = last;
            ChunkId(bytes)
        };
        assert!(twins.insert(twin(1)) && twins.insert(twin(2)) && !twins.insert(twin(1)));
        assert!(twins.contains(&twin(2)) && !twins.contains(&twin(3)));
    }

    #[test]
    fn a_format_3_index_entry_has_four_elements() {
        // Formats 2-4 wrote all 32 bytes of an id; this build keeps the first 16.
        let id = ChunkId([7; CHUNK_ID_BYTES]);
        let hex = format!("{id}{}", "ab".repeat(16));
        let entry: ChunkLocation = serde_json::from_str(&format!("[\"{hex}\",10,20,30]")).unwrap();
        assert_eq!(entry, ChunkLocation::new(id, 10, 20, 30));
        assert_eq!(entry.start(), 0);
        for bad in [format!("[\"{hex}\",10,20]"), format!("[\"{hex}\",10,20,30,40]")] {
            assert!(serde_json::from_str::<ChunkLocation>(&bad).is_err(), "{bad}");
        }
    }

    /// Chunks of `key` in a sealed pack, each slice of `frames` compressed as one frame; the
    /// locations, the pack's decrypted plaintext, and the length the writer counted.
    fn pack_of_frames(key: &ChunkIdKey, frames: &[&[Vec<u8>]]) -> (Vec<ChunkLocation>, Vec<u8>, usize) {
        let mut zstd = crate::compress::ChunkCompressor::default();
        let admin = crypto::generate_identity();
        let mut pack = PackWriter::new(&[admin.to_public()], 1 << 16, None);
        for rows in frames {
            let chunks: Vec<(ChunkId, u32)> =
                rows.iter().map(|row| (key.id_of(row), u32::try_from(row.len()).unwrap())).collect();
            pack.add(&zstd.compress(&rows.concat(), 3, None), &chunks);
        }
        let length = pack.len();
        let sealed = pack.seal();
        (sealed.chunks.clone(), crypto::decrypt(&[admin], &sealed.bytes).unwrap(), length)
    }

    #[test]
    fn chunks_sharing_a_frame_open_in_any_order_and_a_bad_start_is_refused() {
        let key = RepoSecret::generate().chunk_id_key();
        let rows: Vec<Vec<u8>> = (0..5).map(|n| format!("{n}\trow number {n}\n").repeat(50 + n).into_bytes()).collect();
        let chunks: Vec<(ChunkId, u32)> =
            rows.iter().map(|row| (key.id_of(row), u32::try_from(row.len()).unwrap())).collect();
        let alone = [b"a chunk alone\n".to_vec()];
        let (locations, plaintext, length) = pack_of_frames(&key, &[&alone, &rows[..3], &rows[3..]]);
        assert_eq!(plaintext.len(), length);
        assert_eq!(locations.len(), 6);
        assert_eq!(locations[0].start(), 0);
        assert_eq!(locations[2].offset(), locations[1].offset(), "two chunks of one frame");
        assert_eq!(locations[2].start(), chunks[0].1);
        assert_eq!(
            open_chunk(&key, &plaintext, &locations[0], "p", FrameCoding::default()).unwrap(),
            b"a chunk alone\n"
        );
        // Backwards, across frames, and the same frame again: each chunk is proven on its own.
        for at in [5, 2, 4, 1, 3, 2] {
            let opened = open_chunk(&key, &plaintext, &locations[at], "p", FrameCoding::default()).unwrap();
            assert_eq!(opened, rows[at - 1], "chunk {at}");
        }
        let shifted =
            ChunkLocation::in_frame(chunks[1].0, locations[2].offset(), locations[2].length(), chunks[1].1, 1);
        let error = open_chunk(&key, &plaintext, &shifted, "p", FrameCoding::default()).unwrap_err().to_string();
        assert!(error.contains("fails its keyed hash"), "{error}");
        let beyond =
            ChunkLocation::in_frame(chunks[1].0, locations[2].offset(), locations[2].length(), chunks[1].1, 1 << 20);
        let error = open_chunk(&key, &plaintext, &beyond, "p", FrameCoding::default()).unwrap_err().to_string();
        assert!(error.contains("lies outside its frame"), "{error}");
        // A format-3 style entry (no start) for the first chunk of a frame of three: the
        // frame's header, not the entry, says how much to decompress.
        let first = ChunkLocation::new(chunks[0].0, locations[1].offset(), locations[1].length(), chunks[0].1);
        assert_eq!(open_chunk(&key, &plaintext, &first, "p", FrameCoding::default()).unwrap(), rows[0]);
    }

    #[test]
    fn chunks_opened_together_decompress_whole_frames_and_still_prove_each_chunk() {
        let key = RepoSecret::generate().chunk_id_key();
        let rows: Vec<Vec<u8>> = (0..6).map(|n| format!("{n}\trow {n}\n").repeat(40 + n).into_bytes()).collect();
        let chunks: Vec<ChunkId> = rows.iter().map(|row| key.id_of(row)).collect();
        let (locations, plaintext, _) = pack_of_frames(&key, &[&rows[..3], &rows[3..4], &rows[4..]]);
        let open = |locations: &[ChunkLocation]| {
            let mut out = b"kept".to_vec();
            let result = open_chunks_onto(&key, &plaintext, locations, "p", FrameCoding::default(), &mut out);
            (result, out)
        };
        // Whole frames, a chunk alone, and frames entered in the middle or left early.
        for picked in [vec![0, 1, 2, 3, 4, 5], vec![1, 2, 3, 4], vec![0, 1, 5], vec![2, 1, 0], vec![4, 5, 4, 5]] {
            let (result, out) = open(&picked.iter().map(|&at| locations[at]).collect::<Vec<_>>());
            result.unwrap();
            let expected: Vec<u8> = b"kept".iter().chain(picked.iter().flat_map(|&at| &rows[at])).copied().collect();
            assert_eq!(out, expected, "{picked:?}");
        }
        // A whole frame whose second chunk's id is wrong: refused, and `out` keeps what it held.
        let mut forged = locations[..3].to_vec();
        forged[1] = ChunkLocation::in_frame(
            chunks[0],
            forged[1].offset(),
            forged[1].length(),
            forged[1].raw_length(),
            forged[1].start(),
        );
        let (result, out) = open(&forged);
        let error = result.unwrap_err().to_string();
        assert!(error.contains("fails its keyed hash"), "{error}");
        assert_eq!(out, b"kept");
    }

    #[test]
    fn long_lists_get_levels_that_expand_back_and_change_one_chunk_per_level() {
        use std::collections::HashMap;
        let ids: Vec<ChunkId> =
            (0..100_000u32).map(|i| ChunkId::from_stored(blake3::hash(&i.to_le_bytes()).as_bytes()).unwrap()).collect();
        let build = |ids: &[ChunkId]| {
            let mut stored: HashMap<ChunkId, Vec<u8>> = HashMap::new();
            let mut stream = StreamManifest { chunks: ids.to_vec(), ..StreamManifest::default() };
            build_lists(&mut stream, |pieces| {
                Ok(pieces
                    .into_iter()
                    .map(|piece| {
                        let id = ChunkId::from_stored(blake3::hash(&piece).as_bytes()).unwrap();
                        stored.insert(id, piece);
                        id
                    })
                    .collect())
            })
            .unwrap();
            (stream, stored)
        };
        let (stream, stored) = build(&ids);
        assert!(stream.lists.len() <= LIST_TOP_MAX, "{}", stream.lists.len());
        assert_eq!(stream.list_levels, 3, "100 000 ids: ~6 000 list chunks, ~400, then ~25");
        // Expanding level by level gives the ids back.
        let mut level = stream.lists.clone();
        for _ in 0..stream.list_levels {
            level = level.iter().flat_map(|id| parse_list("list", &stored[id], FORMAT_VERSION).unwrap()).collect();
        }
        assert_eq!(level, ids);
        assert_eq!(stream.inner_lists.len() + stream.lists.len(), stored.len());
        // One changed id changes one list chunk per level (and the top).
        let mut changed = ids.clone();
        // (with the same last byte, so the cuts stay where they were)
        let mut other = [7; CHUNK_ID_BYTES];
        other[CHUNK_ID_BYTES - 1] = ids[50_000].0[CHUNK_ID_BYTES - 1];
        changed[50_000] = ChunkId(other);
        let (_, stored_after) = build(&changed);
        let new = stored_after.keys().filter(|id| !stored.contains_key(*id)).count();
        assert_eq!(new, 3, "{new} new list chunks");
        // Format 2 manifests have no list_levels: one level.
        let old: StreamManifest = serde_json::from_str(r#"{"bytes": 0, "digest": "", "lists": []}"#).unwrap();
        assert_eq!(old.list_levels, 1);
    }

    #[test]
    fn list_chunks_round_trip_and_change_only_where_the_list_changes() {
        let before = ids(0..5000);
        let lists = split_list(&before);
        let parsed: Vec<ChunkId> =
            lists.iter().flat_map(|list| parse_list("list", list, FORMAT_VERSION).unwrap()).collect();
        assert_eq!(parsed, before);
        let counts: Vec<usize> = lists.iter().map(|list| list.len() / CHUNK_ID_BYTES).collect();
        assert!(counts[..counts.len() - 1].iter().all(|&n| (LIST_MIN..=LIST_MAX).contains(&n)), "{counts:?}");
        let average = before.len() / lists.len();
        assert!((10..=24).contains(&average), "{average} ids per list chunk");
        // One id replaced in the middle: one or two list chunks differ, the rest are shared.
        let mut after = before.clone();
        after[2500] = ids(9000..9001)[0];
        let new: std::collections::HashSet<Vec<u8>> = split_list(&after).into_iter().collect();
        let changed = new.iter().filter(|list| !lists.contains(list)).count();
        assert!((1..=2).contains(&changed), "{changed} list chunks changed");
        // Not a list: refused.
        assert!(parse_list("list", &[0u8; 17], FORMAT_VERSION).is_err());
        assert!(parse_list("list", &[], FORMAT_VERSION).is_err());
        // A format-4 list chunk: 32 bytes an id, of which the first 16 are kept.
        let old: Vec<u8> = before[..3].iter().flat_map(|id| [&id.0[..], &[0xcd; 16]].concat()).collect();
        assert_eq!(parse_list("list", &old, 4).unwrap(), before[..3]);
        assert!(parse_list("list", &old[..48], 4).is_err());
    }

    fn empty_manifest() -> Manifest {
        Manifest {
            version: FORMAT_VERSION,
            database: "crm".into(),
            server_version: "15".into(),
            hostname: "test".into(),
            pre_data: StreamManifest::default(),
            post_data: StreamManifest::default(),
            tables: vec![],
            sequences: vec![],
            materialized_views: vec![],
            large_objects: None,
            admin_only: None,
        }
    }

    #[tokio::test]
    async fn a_header_longer_than_the_probe_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path().join("repo").to_str().unwrap(), OpenMode::Create).unwrap();
        let admin = crypto::generate_identity();
        let (repository, _) = Repository::init(
            target,
            &[admin.to_public()],
            &dir.path().join("config"),
            RepoSecret::generate(),
            Tuning::default(),
        )
        .await
        .unwrap();
        let keyring = repository.unlock_as_writer(&dir.path().join("config")).await.unwrap();
        // 2 000 packs make a header of ~160 KiB, past the 64 KiB first read.
        let packs = (0..2000u64).map(|i| ObjectRef { id: format!("{i:064x}"), size: i }).collect();
        let header = SnapshotHeader {
            version: FORMAT_VERSION,
            time: Utc::now(),
            config_hash: repository.config_hash.clone(),
            total_bytes: 1,
            added_bytes: 1,
            packs,
            indexes: vec![],
            dictionaries: vec![],
            parent: None,
            sequence: 1,
            replaces: None,
        };
        let sealed = SealedManifest::seal(&mut empty_manifest(), &repository);
        let object = sealed.snapshot_object(&header, &keyring);
        assert!(object.len() > 128 * 1024);
        repository.target.put_new(&snapshot_key(&sealed.id), object).await.unwrap();

        let read = repository.read_snapshot_header(&sealed.id).await.unwrap();
        assert_eq!(read.packs.len(), 2000);
        assert_eq!(repository.resolve_snapshot("latest").await.unwrap(), sealed.id);
        let full = repository.read_snapshot(&sealed.id).await.unwrap();
        assert_eq!(full.open(&keyring).unwrap().database, "crm");
    }
}
