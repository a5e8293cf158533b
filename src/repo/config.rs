//! The `config` object and its generations: reading them, and following the signed chain of
//! key rotations from the first to the newest (docs/FORMAT.md, *config*, *Generations*).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkParams;
use crate::crypto;
use crate::error::{Error, Result};
use crate::target::Target;
use crate::trust::Fingerprint;

use super::{
    AUTHENTICATED_VERSION, CONFIG_KEY, FORMAT_VERSION, MAX_CONFIG_BYTES, OLDEST_FORMAT_VERSION, Repository,
    config_copy_key, is_object_hash,
};

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
    /// Snapshot objects written under earlier generations that stay valid, by the BLAKE3 of
    /// their whole bytes (version line, header, MAC, manifest; one per target where headers
    /// differ): whatever else claims an earlier generation was written or rewritten with a key
    /// since retired, and is refused.
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

impl Repository {
    /// The head config's bytes as stored, checked against the hash this repository was opened
    /// with.
    pub async fn config_bytes(&self) -> Result<Bytes> {
        self.config_bytes_of(&self.config_hash).await
    }

    /// The bytes of the config (generation) that hashes to `hash`, from `configs/<hash>` or
    /// `config`.
    pub async fn config_bytes_of(&self, hash: &str) -> Result<Bytes> {
        for key in [config_copy_key(hash), CONFIG_KEY.to_string()] {
            if let Ok(bytes) = self.target.get_at_most(&key, MAX_CONFIG_BYTES).await
                && crypto::object_hash(&bytes) == hash
            {
                return Ok(bytes);
            }
        }
        Err(Error::corrupt(format!("{}/{}", self.target.location(), config_copy_key(hash)), "missing or damaged"))
    }

    /// This repository, opened at a later generation (a pin's), with the generations before it
    /// read back from `configs/` through each one's `previous`: the hash a trusted config
    /// names binds the config it names, so no signature is needed going back. Stops at a copy
    /// missing or damaged, whose hash is returned with the repository as far as it got.
    pub async fn with_earlier_generations(&self) -> Result<(Repository, Option<String>)> {
        let mut chain = self.chain.clone();
        while let Some(previous) = chain[0].1.previous.clone().filter(|_| chain[0].1.generation > 0) {
            let config = match self.config_bytes_of(&previous).await {
                Ok(bytes) => parse_config(self.target.location(), &bytes).ok(),
                Err(Error::Corrupt { .. } | Error::Missing { .. }) => None,
                Err(error) => return Err(error),
            };
            match config.filter(|config| config.generation + 1 == chain[0].1.generation) {
                Some(config) => chain.insert(0, (previous, config)),
                None => return Ok((Repository { chain, ..self.clone() }, Some(previous))),
            }
        }
        Ok((Repository { chain, ..self.clone() }, None))
    }

    /// The generation after the one that hashes to `hash` on this repository's chain.
    pub fn successor_of(&self, hash: &str) -> Option<&(String, RepoConfig)> {
        let at = self.chain.iter().position(|(known, _)| known == hash)?;
        self.chain.get(at + 1)
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

    /// Whether the config that hashes to `hash` is one of the generations this repository was
    /// followed through.
    pub fn has_generation(&self, hash: &str) -> bool {
        self.chain.iter().any(|(known, _)| known == hash)
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
        let opened = match Self::open_config(target.clone(), CONFIG_KEY).await {
            Ok(repository) if repository.config.generation > 0 => Err(Error::corrupt(
                format!("{}/config", target.location()),
                "claims a later generation (only configs/ hold those)",
            )),
            other => other,
        };
        let first = match opened {
            Ok(repository) => repository,
            // A `config` claiming a format this build does not know may be an edit in storage
            // too (advising an upgrade would be wrong then): its whole copy decides.
            Err(error @ (Error::NotARepository { .. } | Error::Corrupt { .. } | Error::UnsupportedFormat { .. })) => {
                // The first whole one and how many there are (planted ones are not held).
                let (mut whole, mut count) = (None, 0);
                for (key, _) in target.list("configs").await.unwrap_or_default() {
                    if let Ok(repository) = Self::open_config(target.clone(), &key).await
                        && key.ends_with(&repository.config_hash)
                        && repository.config.generation == 0
                    {
                        count += 1;
                        whole.get_or_insert(repository);
                    }
                }
                match (whole, count) {
                    (Some(whole), 1) => {
                        let what = match error {
                            Error::NotARepository { .. } => "its `config` is missing".to_string(),
                            error => error.to_string(),
                        };
                        tracing::warn!(
                            "{}: {what}; using its whole copy configs/{} (`crmvault verify` reports it)",
                            target.location(),
                            whole.config_hash
                        );
                        whole
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
        if let Some(error) = now.fork_error() {
            return Err(error);
        }
        if now.config_hash != self.config_hash {
            return Err(Error::ChangedMeanwhile {
                location: self.target.location().to_string(),
                generation: now.config.generation,
                operation: "backup",
                outcome: "nothing it wrote is a snapshot yet: run the backup again",
            });
        }
        Ok(())
    }

    /// The refusal a fork in the chain calls for, if there is one.
    pub fn fork_error(&self) -> Option<Error> {
        self.fork.map(|generation| {
            Error::corrupt(
                format!("{}/configs", self.target.location()),
                format!(
                    "holds two signed successors of generation {generation} (a fork: a signing key of that \
                     generation signed a config its admins did not publish; the key of a removed admin?); refusing \
                     to choose (a machine pinned at a later generation is not affected)"
                ),
            )
        })
    }

    /// Follows the chain of generations from this one: each step to the one config that names
    /// this one as `previous` and carries its signing key's signature. Configs that fail that
    /// are passed over (anyone can write junk to storage; `verify` reports it); two that pass
    /// are a fork only a holder of a generation's signing key could make: the chain stops there
    /// and [`Repository::fork`] says so (a pin past the fork opens the repository there instead;
    /// without one, the CLI refuses).
    async fn follow(mut self) -> Result<Repository> {
        if self.config.version < AUTHENTICATED_VERSION {
            return Ok(self);
        }
        // Of each later config, its name and what it claims to follow; only those that claim
        // to follow the one reached are read again and checked (whoever writes the storage can
        // plant any number, each as large as a config may be: none is held longer).
        let mut later = Vec::new();
        for (key, _) in self.target.list("configs").await? {
            let Some(hash) = key.strip_prefix("configs/").filter(|hash| is_object_hash(hash)) else { continue };
            if hash == self.config_hash {
                continue;
            }
            if let Ok(candidate) = Self::open_config(self.target.clone(), &key).await
                && candidate.config_hash == hash
                && candidate.config.generation > self.config.generation
                && let Some(previous) = candidate.config.previous
            {
                later.push((key, previous, candidate.config.generation));
            }
        }
        loop {
            let mut successors = Vec::new();
            for (key, _, _) in later.iter().filter(|(_, previous, generation)| {
                *previous == self.config_hash && *generation == self.config.generation + 1
            }) {
                if let Ok(candidate) = Self::open_config(self.target.clone(), key).await
                    && key.ends_with(&candidate.config_hash)
                    && self.config.is_signed_successor(&self.config_hash, &candidate.config)
                {
                    successors.push(candidate);
                    if successors.len() > 1 {
                        break;
                    }
                }
            }
            let Some(successor) = successors.pop() else { return Ok(self) };
            if !successors.is_empty() {
                self.fork = Some(self.config.generation);
                return Ok(self);
            }
            self.chain.push((successor.config_hash.clone(), successor.config.clone()));
            self.config = successor.config;
            self.config_hash = successor.config_hash;
        }
    }

    async fn open_config(target: Target, key: &str) -> Result<Repository> {
        let bytes = match target.get_at_most(key, MAX_CONFIG_BYTES).await {
            Ok(bytes) => bytes,
            Err(Error::Missing { .. }) => {
                return Err(Error::NotARepository { location: target.location().into() });
            }
            Err(e) => return Err(e),
        };
        let config_hash = crypto::object_hash(&bytes);
        let config = parse_config(target.location(), &bytes)?;
        let chain = vec![(config_hash.clone(), config.clone())];
        Ok(Repository { target, config, config_hash, chain, fork: None })
    }
}

/// Parses and checks the bytes of a `config` object (or a copy) read from `location`: JSON
/// naming format "crmvault", a version this build reads, recipients that parse, a well-formed
/// id, objects named by their hashes. Nothing here is trusted yet (see [`Repository::open`]).
pub(crate) fn parse_config(location: &str, bytes: &[u8]) -> Result<RepoConfig> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(format!("{location}/config"), format!("not JSON: {e}")))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64).unwrap_or(0);
    if value.get("format").and_then(serde_json::Value::as_str) != Some("crmvault") {
        return Err(Error::NotARepository { location: location.into() });
    }
    let version = u32::try_from(version).unwrap_or(u32::MAX);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(Error::UnsupportedFormat {
            what: format!("repository {location}"),
            found: version,
            oldest: super::OLDEST_FORMAT_VERSION,
            supported: FORMAT_VERSION,
            advice: crate::error::format_advice(version, FORMAT_VERSION),
        });
    }
    let config: RepoConfig =
        serde_json::from_value(value).map_err(|e| Error::corrupt(format!("{location}/config"), e.to_string()))?;
    for recipient in config.recipients.iter().chain(std::iter::once(&config.writer_recipient)) {
        crypto::parse_recipient(recipient)
            .map_err(|_| Error::corrupt(format!("{location}/config"), "holds a damaged recipient"))?;
    }
    // The id names folders on this machine (writer key, pin): nothing but 32 hex digits.
    if config.id.len() != 32 || !config.id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(Error::corrupt(format!("{location}/config"), "holds an invalid repository id"));
    }
    let objects_named_right = config.keys.iter().chain(&config.admin_keys).all(|key| key.strip_prefix("keys/").is_some_and(is_object_hash))
            && config.carried.iter().all(|id| is_object_hash(id))
            // Held for each config that claims a later generation (`Repository::follow`).
            && config.previous.as_deref().is_none_or(is_object_hash);
    if !objects_named_right {
        return Err(Error::corrupt(format!("{location}/config"), "names an object that is not a hash"));
    }
    Ok(config)
}
