//! Keys objects and what they unlock: the [`Keyring`] of a writer or an admin, and the next
//! generation of keys that `rekey` publishes (docs/FORMAT.md, *Keys*, *Generations*).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, ChunkIdKey, DecryptFailure, MacKey, RepoSecret};
use crate::error::{Error, Result};
use crate::target::Target;

use super::{AUTHENTICATED_VERSION, RepoConfig, Repository, check_object_name, config_copy_key, keys_key};

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

/// Who is opening the repository, and so what they may read: the writer key (the backup
/// host: dedup, chunk lists, row counts; never data) or an admin's identity (everything, as an
/// [`AdminKeyring`]).
#[derive(Clone)]
pub struct Keyring {
    identities: Vec<age::x25519::Identity>,
    identity_path: PathBuf,
    secret: RepoSecret,
    /// The authentication secret (format 7), else none: the repository secret serves.
    auth: Option<RepoSecret>,
    /// The hash of the config (generation) this keyring was unlocked under.
    pub(super) head: String,
    /// Earlier generations' authentication secrets, by config hash (after a `rekey`).
    past: HashMap<String, RepoSecret>,
    /// Snapshot objects carried from earlier generations, by the BLAKE3 of their bytes (the head
    /// config's list).
    carried: HashSet<String>,
    /// True when the identity is an admin's (can read data).
    admin: bool,
    /// Packs' file keys, for reading parts of them (shared by the keyring's clones).
    file_keys: std::sync::Arc<crypto::FileKeys>,
    /// `identities`, each ready to unwrap many stanzas.
    unwrappers: std::sync::Arc<[crypto::Unwrapper]>,
}

/// An admin's keyring: reads data and signs the next generation of keys. Only
/// [`Repository::unlock_as_admin`] makes one, so what needs an admin (a restore, a rekey) says
/// so in its signature instead of checking at run time; everything a writer may do takes the
/// [`Keyring`] it derefs to.
#[derive(Clone, Debug)]
pub struct AdminKeyring(Keyring);

impl std::ops::Deref for AdminKeyring {
    type Target = Keyring;

    fn deref(&self) -> &Keyring {
        &self.0
    }
}

impl From<AdminKeyring> for Keyring {
    fn from(admin: AdminKeyring) -> Keyring {
        admin.0
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("identity_path", &self.identity_path)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// A keyring of fresh random secrets, for unit tests of what it MACs.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Keyring {
        let identities = vec![crypto::generate_identity()];
        Keyring {
            unwrappers: identities.iter().map(crypto::Unwrapper::new).collect(),
            identities,
            identity_path: PathBuf::from("test.key"),
            secret: RepoSecret::generate(),
            auth: Some(RepoSecret::generate()),
            head: crypto::object_hash(b"config"),
            past: HashMap::new(),
            carried: HashSet::new(),
            admin: false,
            file_keys: std::sync::Arc::default(),
        }
    }

    /// Whether this is an admin's keyring (reads data), not the writer key.
    pub fn is_admin(&self) -> bool {
        self.admin
    }
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
    /// The key of forget records' MACs.
    pub fn forget_mac_key(&self) -> MacKey {
        self.auth.as_ref().unwrap_or(&self.secret).forget_mac_key()
    }
    /// The key of audit records' MACs.
    pub fn audit_mac_key(&self) -> MacKey {
        self.auth.as_ref().unwrap_or(&self.secret).audit_mac_key()
    }
    /// The audit-record MAC key of the generation whose config hashes to `config_hash`, for
    /// the record hashing to `object_hash`: as [`Keyring::snapshot_mac_key_for`].
    pub(super) fn audit_mac_key_for(&self, config_hash: &str, object_hash: &str) -> Option<MacKey> {
        self.mac_key_for(config_hash, object_hash, RepoSecret::audit_mac_key)
    }
    /// The forget-record MAC key of the generation whose config hashes to `config_hash`, for
    /// the record hashing to `object_hash`: as [`Keyring::snapshot_mac_key_for`].
    pub(super) fn forget_mac_key_for(&self, config_hash: &str, object_hash: &str) -> Option<MacKey> {
        self.mac_key_for(config_hash, object_hash, RepoSecret::forget_mac_key)
    }
    /// The MAC key `key` derives for the generation whose config hashes to `config_hash`: the
    /// head's, or an earlier generation's for an object (hashing to `object_hash`) the head
    /// carries byte for byte.
    fn mac_key_for(&self, config_hash: &str, object_hash: &str, key: fn(&RepoSecret) -> MacKey) -> Option<MacKey> {
        if config_hash == self.head {
            Some(key(self.auth.as_ref().unwrap_or(&self.secret)))
        } else if self.carried.contains(object_hash) {
            self.past.get(config_hash).map(key)
        } else {
            None
        }
    }
    /// The snapshot MAC key of the generation whose config hashes to `config_hash`, for the
    /// snapshot object hashing to `object_hash`: the head's, or an earlier generation's for an
    /// object the head carries, byte for byte (a retired key could MAC any other header).
    pub(super) fn snapshot_mac_key_for(&self, config_hash: &str, object_hash: &str) -> Option<MacKey> {
        self.mac_key_for(config_hash, object_hash, RepoSecret::snapshot_mac_key)
    }
    /// The earlier generation (its config hash) whose index MAC key gives `mac` over `parts`
    /// (an index written before a `rekey`).
    pub(super) fn past_index_config(&self, parts: &[&[u8]], mac: blake3::Hash) -> Option<String> {
        self.past
            .iter()
            .find(|(_, secret)| secret.index_mac_key().mac_bytes(parts) == mac)
            .map(|(hash, _)| hash.clone())
    }
    /// Whether the repository authenticates with its own secret (format 7): then nothing MACed
    /// with the repository secret alone is believed.
    pub fn authenticated(&self) -> bool {
        self.auth.is_some()
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
        crypto::decrypt(&self.unwrappers, ciphertext).map_err(|failure| self.decrypt_error(object, failure))
    }

    /// Plaintext bytes `range` of `object`, an age ciphertext of `len` bytes, from its first
    /// bytes (`head`, through the payload nonce) and `body`, the bytes at `body_offset` that
    /// [`crypto::ciphertext_range`] says hold them (a few frames of a pack, not all of it).
    pub fn decrypt_range(
        &self,
        object: &str,
        (head, body_offset, body): (&[u8], u64, &[u8]),
        len: u64,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>> {
        crypto::decrypt_range((&self.unwrappers, &self.file_keys), head, body_offset, body, len, range).map_err(
            |failure| match failure {
                // Only packs are read in ranges, and only after their snapshot opened: the key
                // is not what is wrong (unless the pack predates the key's generation).
                DecryptFailure::NoMatchingKey if self.admin => Error::corrupt(
                    object,
                    "is not encrypted to the identity that opened its snapshot: it was replaced in storage, \
                     or it is older than a key rotation that added this admin without `rekey --reencrypt`",
                ),
                failure => self.decrypt_error(object, failure),
            },
        )
    }

    fn decrypt_error(&self, object: &str, failure: DecryptFailure) -> Error {
        match failure {
            DecryptFailure::NoMatchingKey if self.admin => Error::WrongIdentity { path: self.identity_path.clone() },
            DecryptFailure::NoMatchingKey => Error::AdminOnly { what: format!("reading {object} (data)") },
            DecryptFailure::Damaged(detail) => Error::corrupt(object, detail),
        }
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

/// Encrypts `plaintext` (a keys or admin keys object) twice, apart, to `recipients` and stores
/// both copies on every target: the secret outlives the loss or damage of either. Returns their
/// object keys (the same on every target).
pub async fn put_keys_objects<T: Serialize>(
    targets: &[&Target],
    recipients: &[age::x25519::Recipient],
    plaintext: &T,
) -> Result<Vec<String>> {
    let objects = seal_keys_objects(recipients, plaintext);
    store_objects(targets, &objects).await?;
    Ok(objects.into_iter().map(|(key, _)| key).collect())
}

/// The two keys objects of `plaintext` for `recipients` (named, not stored).
fn seal_keys_objects<T: Serialize>(recipients: &[age::x25519::Recipient], plaintext: &T) -> Vec<(String, Bytes)> {
    let plaintext = serde_json::to_vec(plaintext).expect("serialisable");
    (0..2)
        .map(|_| {
            let ciphertext = Bytes::from(crypto::encrypt(recipients, &plaintext));
            (keys_key(&crypto::object_hash(&ciphertext)), ciphertext)
        })
        .collect()
}

async fn store_objects(targets: &[&Target], objects: &[(String, Bytes)]) -> Result<()> {
    for (key, bytes) in objects {
        for target in targets {
            target.put_new(key, bytes.clone()).await?;
        }
    }
    Ok(())
}

/// The first generation's keys objects, stored by `init`: the repository secret with a new
/// authentication secret, for the admins and the writer; a new signing key, for the admins.
pub(super) struct FirstKeys {
    /// The keys objects.
    pub keys: Vec<String>,
    /// The admin keys objects.
    pub admin_keys: Vec<String>,
    /// The signing key's public half (hex).
    pub signing_key: String,
}

impl FirstKeys {
    pub(super) async fn put(
        target: &Target,
        repository_id: &str,
        secret: &RepoSecret,
        recipients: &[age::x25519::Recipient],
        writer: &age::x25519::Recipient,
    ) -> Result<FirstKeys> {
        let keys = KeysFile {
            repository_id: repository_id.to_string(),
            repo_secret: secret.to_hex(),
            auth_secret: Some(RepoSecret::generate().to_hex()),
            history: Vec::new(),
        };
        let mut metadata_recipients = recipients.to_vec();
        metadata_recipients.push(writer.clone());
        let keys = put_keys_objects(&[target], &metadata_recipients, &keys).await?;
        let signing = crypto::SigningSecret::generate();
        let admin_keys =
            AdminKeysFile { repository_id: repository_id.to_string(), generation: 0, signing_secret: signing.to_hex() };
        let admin_keys = put_keys_objects(&[target], recipients, &admin_keys).await?;
        Ok(FirstKeys { keys, admin_keys, signing_key: signing.public_hex() })
    }
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
    /// The keys and admin keys objects it names, sealed, to store before it is published.
    objects: Vec<(String, Bytes)>,
}

impl NextGeneration {
    /// Makes the next generation of `repository`'s keys, readable by `recipients` and written by
    /// `writer`, carrying `carried` (the snapshots of earlier generations that stay valid):
    /// a new authentication secret (so keys that can no longer read the keys objects cannot
    /// forge snapshots or indexes either), the same repository secret (chunk ids stay, and so
    /// does dedup), a new signing key, the earlier authentication secrets for carried
    /// snapshots, and a config signed with the current generation's signing key. Nothing is
    /// stored: [`NextGeneration::store_keys`], then [`NextGeneration::publish`] on each target.
    pub fn make(
        repository: &Repository,
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
        let mut objects = seal_keys_objects(&metadata_recipients, &keys);
        let next_signing = crypto::SigningSecret::generate();
        let admin_keys = AdminKeysFile {
            repository_id: head.id.clone(),
            generation: head.generation + 1,
            signing_secret: next_signing.to_hex(),
        };
        objects.extend(seal_keys_objects(recipients, &admin_keys));
        let admin_keys_objects: Vec<String> = objects[2..].iter().map(|(key, _)| key.clone()).collect();
        let keys_objects: Vec<String> = objects[..2].iter().map(|(key, _)| key.clone()).collect();
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
        // No reader would open it (the keys objects just stored are named by nothing).
        if bytes.len() as u64 > super::MAX_CONFIG_BYTES {
            return Err(Error::Invalid(format!(
                "the new config would be {} bytes, more than readers take ({}): it carries {} objects of earlier \
                 generations; forget and prune old snapshots first",
                bytes.len(),
                super::MAX_CONFIG_BYTES,
                config.carried.len()
            )));
        }
        let hash = crypto::object_hash(&bytes);
        Ok(NextGeneration { config, bytes, hash, objects })
    }

    /// Stores the new keys and admin keys objects on every target; nothing refers to them
    /// until the config is published.
    pub async fn store_keys(&self, targets: &[&Target]) -> Result<()> {
        store_objects(targets, &self.objects).await
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

/// The two kinds of keys objects a generation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysKind {
    /// Keys objects: the repository and authentication secrets (admins and writer).
    Keys,
    /// Admin keys objects: the generation's signing key (admins).
    AdminKeys,
}

impl KeysKind {
    /// Its name, as a person reads it.
    pub fn name(self) -> &'static str {
        match self {
            KeysKind::Keys => "keys",
            KeysKind::AdminKeys => "admin keys",
        }
    }

    /// What a copy cannot be on its own without a whole object of this kind.
    pub fn needed_to(self) -> &'static str {
        match self {
            KeysKind::Keys => "unlocked",
            KeysKind::AdminKeys => "rekeyed",
        }
    }

    /// The objects of this kind `config` names.
    pub fn objects(self, config: &RepoConfig) -> &[String] {
        match self {
            KeysKind::Keys => &config.keys,
            KeysKind::AdminKeys => &config.admin_keys,
        }
    }
}

/// This copy's keys objects of its generation, each checked against its name (no key needed):
/// what [`Repository::check_keys_objects`] found.
#[derive(Debug, Default)]
pub struct KeysObjectsCheck {
    /// Each keys or admin keys object missing, unreadable or not matching its name, and why.
    pub damaged: Vec<(String, String)>,
    /// The kinds of which no whole object is left: the copy cannot be unlocked (or, for admin
    /// keys, rekeyed) on its own until they are written again.
    pub none_whole: Vec<KeysKind>,
}

impl Repository {
    /// Reads this copy's keys and admin keys objects of its generation and checks each against
    /// the name its config gives it: storage that damaged or replaced them (re-encrypted to the
    /// config's recipients) leaves a copy that keys from another copy still unlock, and that
    /// could not be unlocked alone. A storage error is the object's finding, not the check's.
    pub async fn check_keys_objects(&self) -> KeysObjectsCheck {
        let mut check = KeysObjectsCheck::default();
        for kind in [KeysKind::Keys, KeysKind::AdminKeys] {
            let keys = kind.objects(&self.config);
            let mut whole = keys.is_empty();
            for key in keys {
                let found = match self.target.get_at_most(key, super::MAX_KEYS_BYTES).await {
                    Ok(bytes) => check_object_name(key, &bytes),
                    Err(error) => Err(error),
                };
                match found {
                    Ok(()) => whole = true,
                    Err(error) => check.damaged.push((key.clone(), error.to_string())),
                }
            }
            if !whole {
                check.none_whole.push(kind);
            }
        }
        check
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
    pub async fn unlock_as_admin(&self, identity_path: &Path) -> Result<AdminKeyring> {
        let identities = crypto::read_identity_file(identity_path)?;
        let admin = identities.iter().any(|i| self.config.recipients.contains(&i.to_public().to_string()));
        if !admin {
            return Err(Error::WrongIdentity { path: identity_path.to_path_buf() });
        }
        self.unlock(identities, identity_path.to_path_buf(), true).await.map(AdminKeyring)
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
            unwrappers: identities.iter().map(crypto::Unwrapper::new).collect(),
            identities,
            identity_path,
            secret: RepoSecret::from_hex(&keys.repo_secret)?,
            auth,
            head: self.config_hash.clone(),
            past,
            carried: self.config.carried.iter().cloned().collect(),
            admin: is_admin,
            file_keys: std::sync::Arc::default(),
        })
    }

    /// The head generation's signing secret, from its admin keys objects (an admin's keyring):
    /// what signs the next generation. None in a repository made before key rotation.
    pub async fn unlock_signing(&self, keyring: &AdminKeyring) -> Result<Option<crypto::SigningSecret>> {
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
                let ciphertext = self.target.get_at_most(key, super::MAX_KEYS_BYTES).await?;
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
}
