//! Keys and the two primitives built on them: age encryption and keyed BLAKE3.
//!
//! A repository has one random 32-byte [`RepoSecret`], stored encrypted to the admins and the
//! writer. Everything keyed is derived from it with BLAKE3's key derivation, one context string
//! per purpose, so no key is used for two jobs.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use age::secrecy::ExposeSecret;
use rand::RngCore;

use crate::error::{Error, Result};

/// The repository's root secret: chunk-id key, chunker seed and MAC key all derive from it.
#[derive(Clone)]
pub struct RepoSecret([u8; 32]);

impl fmt::Debug for RepoSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RepoSecret(..)")
    }
}

impl RepoSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        RepoSecret(bytes)
    }

    /// From the hex form stored in the keys object.
    pub fn from_hex(text: &str) -> Result<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| Error::corrupt("keys", "repository secret is not 32 bytes of hex"))?;
        Ok(RepoSecret(bytes))
    }

    /// The hex form, only ever written inside an age-encrypted object.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0)
    }

    /// The key that names chunks.
    pub fn chunk_id_key(&self) -> ChunkIdKey {
        ChunkIdKey(self.derive("crmvault 2026 chunk id v1"))
    }

    /// The secret seed of the content-defined chunker.
    pub fn chunker_seed(&self) -> [u8; 32] {
        self.derive("crmvault 2026 chunker gear v1")
    }

    /// The key for table digests (and the snapshot MACs of formats 2-6).
    pub fn mac_key(&self) -> MacKey {
        MacKey(self.derive("crmvault 2026 mac v1"))
    }

    /// The key of snapshot MACs since format 7 (derived from the authentication secret).
    pub fn snapshot_mac_key(&self) -> MacKey {
        MacKey(self.derive("crmvault 2026 snapshot mac v7"))
    }

    /// The key of index MACs since format 7 (derived from the authentication secret).
    pub fn index_mac_key(&self) -> MacKey {
        MacKey(self.derive("crmvault 2026 index mac v7"))
    }

    /// The key of forget records' MACs (derived from the authentication secret).
    pub fn forget_mac_key(&self) -> MacKey {
        MacKey(self.derive("crmvault 2026 forget mac v7"))
    }

    /// The key of audit records' MACs (derived from the authentication secret).
    pub fn audit_mac_key(&self) -> MacKey {
        MacKey(self.derive("crmvault 2026 audit mac v7"))
    }
}

/// The secret half of a config generation's signing key (Ed25519): only the admins of that
/// generation hold it (inside its admin keys objects); it signs the next generation's config,
/// and whoever holds the config can check that signature with the public half it lists.
#[derive(Clone)]
pub struct SigningSecret([u8; 32]);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

/// What every config signature signs before the config's bytes: no other message of this
/// project can be taken for a config.
const CONFIG_SIGNATURE_CONTEXT: &[u8] = b"crmvault 2026 config generation v7\n";

impl SigningSecret {
    /// A fresh random signing key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        SigningSecret(bytes)
    }

    /// From the hex form stored in an admin keys object.
    pub fn from_hex(text: &str) -> Result<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| Error::corrupt("keys", "signing key is not 32 bytes of hex"))?;
        Ok(SigningSecret(bytes))
    }

    /// The hex form, only ever written inside an age-encrypted object.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The public half, as the config lists it (hex).
    pub fn public_hex(&self) -> String {
        hex::encode(ed25519_dalek::SigningKey::from_bytes(&self.0).verifying_key().to_bytes())
    }

    /// Signs a config's bytes (hex signature).
    pub fn sign_config(&self, config: &[u8]) -> String {
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::from_bytes(&self.0);
        hex::encode(key.sign(&[CONFIG_SIGNATURE_CONTEXT, config].concat()).to_bytes())
    }
}

/// Whether `signature` (hex) is the signature of `public` (hex, a config's `signing_key`) over a
/// config's bytes. Anything malformed is simply not a signature.
pub fn config_signature_holds(public: &str, config: &[u8], signature: &str) -> bool {
    let (mut key, mut sig) = ([0u8; 32], [0u8; 64]);
    if hex::decode_to_slice(public, &mut key).is_err() || hex::decode_to_slice(signature, &mut sig).is_err() {
        return false;
    }
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&key) else {
        return false;
    };
    key.verify_strict(&[CONFIG_SIGNATURE_CONTEXT, config].concat(), &ed25519_dalek::Signature::from_bytes(&sig)).is_ok()
}

/// Keyed BLAKE3 key that turns a chunk's plaintext into its [`ChunkId`].
#[derive(Clone)]
pub struct ChunkIdKey([u8; 32]);

impl fmt::Debug for ChunkIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkIdKey(..)")
    }
}

impl ChunkIdKey {
    /// The id of a plaintext chunk: the first [`CHUNK_ID_BYTES`] of its keyed BLAKE3.
    pub fn id_of(&self, plaintext: &[u8]) -> ChunkId {
        let hash = blake3::keyed_hash(&self.0, plaintext);
        ChunkId(hash.as_bytes()[..CHUNK_ID_BYTES].try_into().expect("a BLAKE3 hash has 32 bytes"))
    }
}

/// Key for MACs over manifests and digests of table streams.
#[derive(Clone)]
pub struct MacKey([u8; 32]);

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// A streaming keyed hasher (table digests).
    pub fn hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.0)
    }

    /// MAC of several byte strings, each length-prefixed so boundaries cannot shift.
    pub fn mac(&self, parts: &[&[u8]]) -> String {
        self.mac_bytes(parts).to_hex().to_string()
    }

    /// [`MacKey::mac`] as bytes.
    pub fn mac_bytes(&self, parts: &[&[u8]]) -> blake3::Hash {
        let mut hasher = self.hasher();
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.finalize()
    }
}

/// How many bytes of a chunk's keyed BLAKE3 name it (format 5; formats 2-4 stored all 32, of
/// which readers keep these first bytes: the same id the chunk has now).
///
/// 128 bits: two different chunks share an id by chance with probability 2^-128 per pair
/// (2^-65 among 2^32 chunks), and nobody without the chunk-id key can compute an id at all.
/// Whoever holds the key (the backup host) could search for two rows with one id, about 2^64
/// keyed hashes; a restore would still refuse the result, because every table's digest is
/// computed over the source bytes, not over chunk ids.
pub const CHUNK_ID_BYTES: usize = 16;
/// How many bytes formats 2-4 stored of each id (the whole keyed BLAKE3).
pub const OLD_CHUNK_ID_BYTES: usize = 32;

/// A chunk's name in the repository: its keyed BLAKE3, cut to [`CHUNK_ID_BYTES`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; CHUNK_ID_BYTES]);

impl ChunkId {
    /// An id as formats 2-4 stored it (all 32 bytes of the keyed hash) or as format 5 does.
    pub fn from_stored(bytes: &[u8]) -> Option<ChunkId> {
        match bytes.len() {
            OLD_CHUNK_ID_BYTES | CHUNK_ID_BYTES => Some(ChunkId(bytes[..CHUNK_ID_BYTES].try_into().ok()?)),
            _ => None,
        }
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &hex::encode(self.0)[..16])
    }
}

impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let bytes = hex::decode(text.as_bytes()).map_err(serde::de::Error::custom)?;
        ChunkId::from_stored(&bytes).ok_or_else(|| serde::de::Error::custom("a chunk id has 16 or 32 bytes"))
    }
}

/// Unkeyed BLAKE3 of stored (encrypted) bytes, hex: the name of a content-addressed object.
pub fn object_hash(ciphertext: &[u8]) -> String {
    blake3::hash(ciphertext).to_hex().to_string()
}

/// Parses one `age1…` recipient.
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient> {
    text.trim().parse::<age::x25519::Recipient>().map_err(|_| {
        // An identity given by mistake is not said back (it would reach logs and cron mail).
        if text.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
            Error::BadKey(
                "an age identity (a secret key) was given where a recipient is asked for: give its public key, \
                 age1… (what `crmvault keygen` printed, or `age-keygen -y FILE`), and keep the identity offline"
                    .into(),
            )
        } else {
            Error::BadKey(format!("{:?} is not an age X25519 recipient (age1…)", text.trim()))
        }
    })
}

/// A freshly generated identity: the secret (to store 0600) and its public recipient.
pub fn generate_identity() -> age::x25519::Identity {
    age::x25519::Identity::generate()
}

/// Writes an identity file readable only by its owner, refusing to replace an existing file.
pub fn write_identity_file(path: &Path, identity: &age::x25519::Identity, comment: &str) -> Result<()> {
    let mut text = format!("# {comment}\n# public key: {}\n", identity.to_public());
    text.push_str(identity.to_string().expose_secret());
    text.push('\n');
    write_secret_file(path, text.as_bytes())
}

/// Creates `path` with mode 0600 (never following or replacing an existing file) and syncs it.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(contents).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Reads age X25519 identities from a file (comments and blank lines allowed).
pub fn read_identity_file(path: &Path) -> Result<Vec<age::x25519::Identity>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::BadKey(format!("cannot read identity file {}: {e}", path.display())))?;
    let mut identities = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Never echo the line: it may be a damaged secret key.
        let identity = line.parse::<age::x25519::Identity>().map_err(|_| {
            Error::BadKey(format!("{} is not an age identity file (expected AGE-SECRET-KEY-1… lines)", path.display()))
        })?;
        identities.push(identity);
    }
    if identities.is_empty() {
        return Err(Error::BadKey(format!("{} holds no age identity", path.display())));
    }
    warn_if_others_can_read(path);
    Ok(identities)
}

/// A secret key file that others may read is used (a key on a FAT stick has no modes to fix),
/// but said so, once per read, with the fix.
fn warn_if_others_can_read(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} holds a secret key but its mode {:o} lets others read it; run chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
}

/// Encrypts `plaintext` to every recipient.
pub fn encrypt(recipients: &[age::x25519::Recipient], plaintext: &[u8]) -> Vec<u8> {
    let mut encrypting = Encrypting::new(recipients, plaintext.len());
    encrypting.write(plaintext);
    encrypting.finish()
}

/// An age ciphertext made piece by piece, in memory: each piece is encrypted as it comes, so
/// a pack is never held as plaintext and ciphertext at once.
pub struct Encrypting {
    writer: age::stream::StreamWriter<Vec<u8>>,
}

impl Encrypting {
    /// Starts a ciphertext to every recipient, with room for `plaintext_capacity` bytes.
    pub fn new(recipients: &[age::x25519::Recipient], plaintext_capacity: usize) -> Self {
        // age adds 16 bytes to every 64 KiB, and a header of about 200 bytes a recipient.
        let room = plaintext_capacity + plaintext_capacity / 4096 + 256 + recipients.len() * 256;
        let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .expect("at least one X25519 recipient is always given");
        let writer = encryptor.wrap_output(Vec::with_capacity(room)).expect("writing to a Vec cannot fail");
        Encrypting { writer }
    }

    /// Appends plaintext.
    pub fn write(&mut self, plaintext: &[u8]) {
        self.writer.write_all(plaintext).expect("writing to a Vec cannot fail");
    }

    /// The whole ciphertext.
    pub fn finish(self) -> Vec<u8> {
        self.writer.finish().expect("writing to a Vec cannot fail")
    }
}

/// Why a decryption failed: the key, or the bytes.
#[derive(Debug)]
pub enum DecryptFailure {
    /// None of the identities is a recipient.
    NoMatchingKey,
    /// The ciphertext is damaged.
    Damaged(String),
}

/// The label age derives an X25519 stanza's wrapping key with (age's specification).
const X25519_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
/// The tag of an X25519 stanza.
const X25519_TAG: &str = "X25519";

/// An X25519 identity made ready to unwrap many stanzas: a restore at a year of nights opens
/// thousands of objects, each with a stanza to it. age's own identity derives its public key
/// again for every stanza and exchanges keys with curve25519-dalek's portable code; this one
/// keeps the public key and exchanges keys with aws-lc-rs (already linked for TLS), together
/// about half the time an object's header takes. Everything else is age's, step for step
/// (its specification's X25519 recipient stanza), and what it returns for any stanza is what
/// age's `x25519::Identity` returns (`an_unwrapper_answers_every_stanza_as_ages_identity_does`).
pub struct Unwrapper {
    secret: aws_lc_rs::agreement::PrivateKey,
    public: [u8; 32],
}

impl fmt::Debug for Unwrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Unwrapper(..)")
    }
}

impl Unwrapper {
    /// The unwrapper of `identity`.
    pub fn new(identity: &age::x25519::Identity) -> Unwrapper {
        let encoded = identity.to_string();
        let secret = age_core::primitives::bech32_decode(
            encoded.expose_secret(),
            |_| (),
            |_| Ok(()),
            |_, bytes| Ok(zeroize::Zeroizing::new(bytes.collect::<Vec<u8>>())),
        )
        .expect("an identity's own encoding decodes");
        let secret = aws_lc_rs::agreement::PrivateKey::from_private_key(&aws_lc_rs::agreement::X25519, &secret)
            .expect("an identity is 32 bytes, and any 32 bytes are an X25519 secret");
        let public = secret.compute_public_key().expect("an X25519 secret has a public key");
        let public = public.as_ref().try_into().expect("an X25519 public key is 32 bytes");
        Unwrapper { secret, public }
    }
}

impl age::Identity for Unwrapper {
    fn unwrap_stanza(
        &self,
        stanza: &age_core::format::Stanza,
    ) -> Option<std::result::Result<age_core::format::FileKey, age::DecryptError>> {
        use base64::Engine;
        if stanza.tag != X25519_TAG {
            return None;
        }
        let invalid = Some(Err(age::DecryptError::InvalidHeader));
        // One argument, the ephemeral share in canonical unpadded base64; a body of the wrapped
        // file key and its tag.
        let [share] = &stanza.args[..] else { return invalid };
        let mut decoded = [0u8; 33];
        let share: [u8; 32] = match base64::prelude::BASE64_STANDARD_NO_PAD.decode_slice(share, &mut decoded) {
            Ok(32) => decoded[..32].try_into().expect("32 bytes"),
            _ => return invalid,
        };
        if stanza.body.len() != 16 + 16 {
            return invalid;
        }
        // aws-lc refuses to agree on an all-zero secret (a share of low order), as age refuses
        // the header; the check is made again here all the same.
        let shared = aws_lc_rs::agreement::agree(
            &self.secret,
            aws_lc_rs::agreement::UnparsedPublicKey::new(&aws_lc_rs::agreement::X25519, &share),
            (),
            |shared| <[u8; 32]>::try_from(shared).map(zeroize::Zeroizing::new).map_err(|_| ()),
        );
        let Some(shared) = shared.ok().filter(|shared| shared.iter().fold(0, |all, &byte| all | byte) != 0) else {
            return invalid;
        };
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(&share);
        salt[32..].copy_from_slice(&self.public);
        let key = zeroize::Zeroizing::new(age_core::primitives::hkdf(&salt, X25519_LABEL, &shared[..]));
        // Not to this identity: another may open it.
        let file_key = zeroize::Zeroizing::new(age_core::primitives::aead_decrypt(&key, 16, &stanza.body).ok()?);
        Some(Ok(age_core::format::FileKey::init_with_mut(|into| into.copy_from_slice(&file_key))))
    }
}

/// Decrypts an age ciphertext with any of `identities`.
pub fn decrypt<I: age::Identity>(identities: &[I], ciphertext: &[u8]) -> Result<Vec<u8>, DecryptFailure> {
    header_end(ciphertext).map_err(DecryptFailure::Damaged)?;
    let decryptor = age::Decryptor::new_buffered(ciphertext).map_err(|e| DecryptFailure::Damaged(e.to_string()))?;
    let mut reader = decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity)).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => DecryptFailure::NoMatchingKey,
        other => DecryptFailure::Damaged(other.to_string()),
    })?;
    let mut plaintext = Vec::with_capacity(ciphertext.len());
    reader.read_to_end(&mut plaintext).map_err(|e| DecryptFailure::Damaged(e.to_string()))?;
    Ok(plaintext)
}

/// Admin recipients a repository may have at most: each is a stanza in the header of every
/// object, and a header is read before anything proves it (`header_end`).
pub const MAX_RECIPIENTS: usize = 64;
/// Refuses more admin recipients than [`MAX_RECIPIENTS`].
pub fn check_recipient_count(count: usize) -> crate::error::Result<()> {
    if count > MAX_RECIPIENTS {
        return Err(crate::error::Error::Invalid(format!(
            "{count} admin recipients: a repository has at most {MAX_RECIPIENTS}"
        )));
    }
    Ok(())
}

/// Stanzas an age header crmvault reads may have: the admins, the writer key, and room to spare.
const MAX_STANZAS: usize = MAX_RECIPIENTS + 4;
/// The longest header with [`MAX_STANZAS`] X25519 stanzas (about 100 bytes each), with room.
const MAX_HEADER_BYTES: usize = 256 * MAX_STANZAS;
/// Bytes of the payload's nonce, after the header.
const NONCE_BYTES: usize = 16;

/// Where an age header's text ends (after its MAC line), told from the first bytes of an
/// object; `None` when `prefix` ends first. Refuses a header of more stanzas, or more bytes,
/// than a repository's objects have: age parses a header in time that grows with its square,
/// and storage could otherwise stall a restore for hours with one object whose header is
/// padded (no key is needed for that).
pub fn header_end(prefix: &[u8]) -> Result<Option<usize>, String> {
    let mut stanzas = 0;
    let mut at = 0;
    for line in prefix.split_inclusive(|&byte| byte == b'\n') {
        if !line.ends_with(b"\n") {
            break;
        }
        at += line.len();
        if line.starts_with(b"-> ") {
            stanzas += 1;
            if stanzas > MAX_STANZAS {
                return Err(format!("its age header has more than {MAX_STANZAS} stanzas, more than crmvault writes"));
            }
        } else if line.starts_with(b"--- ") {
            return Ok(Some(at));
        }
        if at > MAX_HEADER_BYTES {
            break;
        }
    }
    if at > MAX_HEADER_BYTES || prefix.len() > MAX_HEADER_BYTES + NONCE_BYTES {
        return Err(format!("its age header is longer than {MAX_HEADER_BYTES} bytes, longer than crmvault writes"));
    }
    Ok(None)
}

/// Plaintext bytes in each authenticated piece of an age payload (its STREAM chunks).
pub const PAYLOAD_CHUNK: u64 = 64 * 1024;
/// Ciphertext bytes of a whole piece: the plaintext and its 16-byte tag.
const PAYLOAD_PIECE: u64 = PAYLOAD_CHUNK + 16;

/// Where the payload of an age ciphertext starts (after its header and nonce), told from its
/// first bytes; `None` when `prefix` is too short to tell.
pub fn payload_start(prefix: &[u8]) -> Result<Option<usize>, String> {
    let Some(header) = header_end(prefix)? else { return Ok(None) };
    let mut cursor = std::io::Cursor::new(&prefix[..prefix.len().min(header + NONCE_BYTES)]);
    // `Decryptor::new_buffered` reads exactly the header and the nonce, no further (and a line
    // at a time: `Decryptor::new` parses the header again after each byte it reads).
    match age::Decryptor::new_buffered(&mut cursor) {
        Ok(_) => Ok(usize::try_from(cursor.position()).ok()),
        Err(age::DecryptError::Io(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// The bytes of an age ciphertext of `len` bytes, whose payload starts at `payload_start`,
/// that hold plaintext bytes `range`: the whole authenticated pieces around them.
pub fn ciphertext_range(payload_start: u64, range: &std::ops::Range<u64>, len: u64) -> std::ops::Range<u64> {
    let first = range.start / PAYLOAD_CHUNK;
    let last = range.end.max(range.start + 1).div_ceil(PAYLOAD_CHUNK);
    let at = |piece: u64| payload_start.saturating_add(piece.saturating_mul(PAYLOAD_PIECE)).min(len);
    at(first)..at(last)
}

/// Part of an age ciphertext of `len` bytes: its first bytes (`head`, through the nonce at
/// least) and the bytes at `body_offset`. Reading anywhere else fails.
struct Window<'a> {
    head: &'a [u8],
    body_offset: u64,
    body: &'a [u8],
    len: u64,
    position: u64,
}

impl<'a> Read for Window<'a> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.position;
        let within = |bytes: &'a [u8], from: u64| usize::try_from(from).ok().and_then(|from| bytes.get(from..));
        let from = if let Some(rest) = within(self.head, at).filter(|rest| !rest.is_empty()) {
            rest
        } else if let Some(rest) =
            at.checked_sub(self.body_offset).and_then(|from| within(self.body, from)).filter(|rest| !rest.is_empty())
        {
            rest
        } else if at >= self.len {
            &[]
        } else {
            return Err(std::io::Error::other("a part of the ciphertext that was not fetched"));
        };
        let n = from.len().min(buf.len());
        buf[..n].copy_from_slice(&from[..n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Window<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let position = match to {
            std::io::SeekFrom::Start(at) => Some(at),
            std::io::SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            std::io::SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = position.ok_or_else(|| std::io::Error::other("seek before the start"))?;
        Ok(self.position)
    }
}

/// File keys unwrapped before, by the BLAKE3 of the stanza that held them: decrypting many parts
/// of one pack exchanges keys (an X25519 for every stanza tried) once, not for every part. A
/// stanza is the same bytes only in the same header, so a key found here is the key that stanza
/// holds; age still checks the header's MAC with it. Each key is wiped when it is dropped (the
/// keyring's end, or the map cleared when full).
#[derive(Default)]
pub struct FileKeys(std::sync::Mutex<std::collections::HashMap<[u8; 32], zeroize::Zeroizing<[u8; 16]>>>);

/// File keys remembered at most (16 bytes each, and the stanza's hash).
const FILE_KEYS_KEPT: usize = 1 << 16;

impl fmt::Debug for FileKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKeys(..)")
    }
}

/// One of a keyring's identities, remembering the file keys it unwraps in a [`FileKeys`].
struct Remembering<'a> {
    identity: &'a Unwrapper,
    keys: &'a FileKeys,
}

impl age::Identity for Remembering<'_> {
    fn unwrap_stanza(
        &self,
        stanza: &age_core::format::Stanza,
    ) -> Option<std::result::Result<age_core::format::FileKey, age::DecryptError>> {
        let mut hasher = blake3::Hasher::new();
        for part in std::iter::once(stanza.tag.as_bytes())
            .chain(stanza.args.iter().map(String::as_bytes))
            .chain(std::iter::once(stanza.body.as_slice()))
        {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let name = *hasher.finalize().as_bytes();
        let keys = self.keys.0.lock().expect("file key lock is never poisoned");
        if let Some(key) = keys.get(&name) {
            return Some(Ok(age_core::format::FileKey::new(Box::new(**key))));
        }
        drop(keys);
        let unwrapped = age::Identity::unwrap_stanza(self.identity, stanza)?;
        if let Ok(key) = &unwrapped {
            let mut keys = self.keys.0.lock().expect("file key lock is never poisoned");
            if keys.len() >= FILE_KEYS_KEPT {
                keys.clear();
            }
            keys.insert(name, zeroize::Zeroizing::new(*key.expose_secret()));
        }
        Some(unwrapped)
    }
}

/// Decrypts plaintext bytes `range` (those of them there are) of an age ciphertext of `len`
/// bytes, from its first bytes (`head`, through the payload's nonce) and `body`, the ciphertext at
/// [`ciphertext_range`]`(payload start, range, len)`. Each 64 KiB piece read is authenticated
/// on its own (its place in the payload, and whether it is the last, included), so bytes that
/// decrypt are the ones the writer put there.
pub fn decrypt_range(
    (identities, keys): (&[Unwrapper], &FileKeys),
    head: &[u8],
    body_offset: u64,
    body: &[u8],
    len: u64,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, DecryptFailure> {
    use std::io::Seek;
    let damaged = |e: std::io::Error| DecryptFailure::Damaged(e.to_string());
    let window = Window { head, body_offset, body, len, position: 0 };
    let decryptor = age::Decryptor::new_buffered(std::io::BufReader::new(window))
        .map_err(|e| DecryptFailure::Damaged(e.to_string()))?;
    let remembering: Vec<Remembering> = identities.iter().map(|identity| Remembering { identity, keys }).collect();
    let mut reader = decryptor.decrypt(remembering.iter().map(|i| i as &dyn age::Identity)).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => DecryptFailure::NoMatchingKey,
        other => DecryptFailure::Damaged(other.to_string()),
    })?;
    if range.start > 0 && range.start.is_multiple_of(PAYLOAD_CHUNK) {
        // age authenticates the payload's length when a seek lands on a piece's first byte,
        // reading the last piece, which is not at hand: land one byte in and step back.
        reader.seek(std::io::SeekFrom::Start(range.start + 1)).map_err(damaged)?;
        reader.seek(std::io::SeekFrom::Current(-1)).map_err(damaged)?;
    } else {
        reader.seek(std::io::SeekFrom::Start(range.start)).map_err(damaged)?;
    }
    // As far as the payload goes, at most: a range rounded out to whole pieces ends past it.
    let length = range.end.saturating_sub(range.start);
    let mut plaintext = Vec::with_capacity(usize::try_from(length.min(len)).unwrap_or(0));
    reader.take(length).read_to_end(&mut plaintext).map_err(damaged)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_depend_on_the_key() {
        let a = RepoSecret::generate().chunk_id_key();
        let b = RepoSecret::generate().chunk_id_key();
        assert_eq!(a.id_of(b"row"), a.id_of(b"row"));
        assert_ne!(a.id_of(b"row"), b.id_of(b"row"));
        assert_ne!(a.id_of(b"row").0, blake3::hash(b"row").as_bytes()[..CHUNK_ID_BYTES]);
        // The id is the start of the keyed hash, which formats 2-4 stored whole.
        let full = blake3::keyed_hash(&a.0, b"row");
        assert_eq!(ChunkId::from_stored(full.as_bytes()), Some(a.id_of(b"row")));
        assert_eq!(a.id_of(b"row").to_string(), full.to_hex()[..2 * CHUNK_ID_BYTES]);
        let old_json = format!("\"{}\"", full.to_hex());
        assert_eq!(serde_json::from_str::<ChunkId>(&old_json).unwrap(), a.id_of(b"row"));
        assert!(serde_json::from_str::<ChunkId>("\"abcd\"").is_err());
    }

    #[test]
    fn a_header_of_more_stanzas_or_bytes_than_crmvault_writes_is_refused_before_age_parses_it() {
        let owners: Vec<_> = (0..MAX_RECIPIENTS).map(|_| generate_identity()).collect();
        let recipients: Vec<_> = owners.iter().map(age::x25519::Identity::to_public).collect();
        let most = encrypt(&recipients, b"for every admin");
        assert_eq!(decrypt(&owners[MAX_RECIPIENTS - 1..], &most).unwrap(), b"for every admin");
        let start = payload_start(&most).unwrap().unwrap();
        assert_eq!(payload_start(&most[..start - 1]).unwrap(), None, "a prefix too short to tell");
        assert!(check_recipient_count(MAX_RECIPIENTS).is_ok());
        assert!(check_recipient_count(MAX_RECIPIENTS + 1).is_err());

        let one = encrypt(&recipients[..1], b"secret");
        let first_line = one.iter().position(|&b| b == b'\n').unwrap() + 1;
        let padded = |stanzas: usize| {
            let mut padded = one[..first_line].to_vec();
            for n in 0..stanzas {
                padded.extend_from_slice(format!("-> junk{n}\nQUJD\n").as_bytes());
            }
            padded.extend_from_slice(&one[first_line..]);
            padded
        };
        // Within the bound, age itself refuses the padding (the header's MAC covers it).
        assert!(matches!(decrypt(&owners[..1], &padded(3)), Err(DecryptFailure::Damaged(_))));
        let beyond = padded(MAX_STANZAS);
        let error = payload_start(&beyond).unwrap_err();
        assert!(error.contains("stanzas"), "{error}");
        match decrypt(&owners[..1], &beyond) {
            Err(DecryptFailure::Damaged(error)) => assert!(error.contains("stanzas"), "{error}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        // One endless line: no header ends within the bound.
        let mut endless = one[..first_line].to_vec();
        endless.extend(std::iter::repeat_n(b'A', MAX_HEADER_BYTES + 100));
        let error = payload_start(&endless).unwrap_err();
        assert!(error.contains("longer than"), "{error}");
    }

    #[test]
    fn decrypt_refuses_a_stranger_and_a_flipped_byte() {
        let owner = generate_identity();
        let stranger = generate_identity();
        let mut ciphertext = encrypt(&[owner.to_public()], b"customer list");
        assert_eq!(decrypt(std::slice::from_ref(&owner), &ciphertext).unwrap(), b"customer list");
        assert!(matches!(decrypt(&[stranger], &ciphertext), Err(DecryptFailure::NoMatchingKey)));
        let last = ciphertext.len() - 3;
        ciphertext[last] ^= 1;
        assert!(matches!(decrypt(&[owner], &ciphertext), Err(DecryptFailure::Damaged(_))));
    }

    /// What `identity` makes of `stanza`, comparably: not its (`None`), which error, or the key.
    fn unwrapped(identity: &dyn age::Identity, stanza: &age_core::format::Stanza) -> Option<Result<[u8; 16], String>> {
        identity.unwrap_stanza(stanza).map(|unwrapped| match unwrapped {
            Ok(key) => Ok(*key.expose_secret()),
            Err(error) => Err(format!("{error:?}")),
        })
    }

    /// The stanzas of an age ciphertext's header, as age reads them.
    fn stanzas_of(ciphertext: &[u8]) -> Vec<age_core::format::Stanza> {
        use base64::Engine;
        let header = std::str::from_utf8(&ciphertext[..header_end(ciphertext).unwrap().unwrap()]).unwrap();
        // A stanza starts at a line beginning "-> " (age's grease stanzas may hold "-> " inside
        // a line, among their random arguments); its body is the lines up to the next stanza.
        let mut stanzas = Vec::new();
        let mut lines = header.lines().skip(1).peekable();
        while let Some(line) = lines.next() {
            let Some(words) = line.strip_prefix("-> ") else { break };
            let mut words = words.split(' ');
            let tag = words.next().unwrap().to_string();
            let mut body = String::new();
            while let Some(next) = lines.next_if(|l| !l.starts_with("-> ") && !l.starts_with("---")) {
                body.push_str(next);
            }
            let body = base64::prelude::BASE64_STANDARD_NO_PAD.decode(body).unwrap();
            stanzas.push(age_core::format::Stanza { tag, args: words.map(String::from).collect(), body });
        }
        stanzas
    }

    #[test]
    fn an_unwrapper_answers_every_stanza_as_ages_identity_does() {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::prelude::BASE64_STANDARD_NO_PAD.encode(bytes);
        let (owner, other) = (generate_identity(), generate_identity());
        let fast = Unwrapper::new(&owner);
        let mut stanzas = Vec::new();
        for recipients in [vec![owner.to_public()], vec![other.to_public()], vec![other.to_public(), owner.to_public()]]
        {
            for _ in 0..20 {
                stanzas.extend(stanzas_of(&encrypt(&recipients, b"x")));
            }
        }
        let genuine = stanzas_of(&encrypt(&[owner.to_public()], b"x")).remove(0);
        let with =
            |tag: &str, args: Vec<String>, body: Vec<u8>| age_core::format::Stanza { tag: tag.into(), args, body };
        let share = genuine.args[0].clone();
        // Shares of low order (the all-zero secret age refuses), malformed ones, other tags.
        let mut low_order = vec![[0u8; 32], [1u8; 32].map(|_| 0)];
        low_order[1][0] = 1;
        let mut order_8 = [0u8; 32];
        order_8
            .copy_from_slice(&hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800").unwrap());
        low_order.push(order_8);
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        low_order.push(p_minus_1);
        for point in &low_order {
            stanzas.push(with("X25519", vec![b64(point)], genuine.body.clone()));
        }
        // A last character whose low bits are not zero: a non-canonical encoding.
        let non_canonical = format!("{}B", &share[..42]);
        // Shares given as u + p (not reduced), with the high bit set, the other point of order 8:
        // each under a body made for what the owner's exchange with it gives, so that an answer
        // other than age's shows.
        let p = {
            let mut p = [0xffu8; 32];
            p[0] = 0xed;
            p[31] = 0x7f;
            p
        };
        let add = |a: [u8; 32], k: u8| {
            let mut sum = a;
            let mut carry = u16::from(k);
            for byte in &mut sum {
                let total = u16::from(*byte) + carry;
                *byte = total.to_le_bytes()[0];
                carry = total >> 8;
            }
            sum
        };
        let nine = {
            let mut nine = [0u8; 32];
            nine[0] = 9;
            nine
        };
        let mut other_order_8 = [0u8; 32];
        other_order_8
            .copy_from_slice(&hex::decode("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157").unwrap());
        let high = |mut point: [u8; 32]| {
            point[31] |= 0x80;
            point
        };
        // The owner's exchange with the base point 9 is its public key: a body wrapped with it.
        let body_for = |point: &[u8; 32]| {
            let key = age_core::primitives::hkdf(&[&point[..], &fast.public[..]].concat(), X25519_LABEL, &fast.public);
            age_core::primitives::aead_encrypt(&key, &[5u8; 16])
        };
        for point in
            [nine, add(p, 9), high(nine), high(add(p, 9)), add(p, 0), add(p, 1), other_order_8, high(other_order_8)]
        {
            stanzas.push(with("X25519", vec![b64(&point)], body_for(&point)));
        }
        let real_share: [u8; 32] = {
            use base64::Engine;
            base64::prelude::BASE64_STANDARD_NO_PAD.decode(&share).unwrap().try_into().unwrap()
        };
        stanzas.push(with("X25519", vec![b64(&high(real_share))], genuine.body.clone()));
        stanzas.push(with("X25519", vec![b64(&[7u8; 34])], genuine.body.clone()));
        let mut random = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut random);
        stanzas.extend([
            with("X25519", vec![non_canonical], genuine.body.clone()),
            with("X25519", vec![format!("{share}=")], genuine.body.clone()),
            with("X25519", vec![b64(&[7u8; 31])], genuine.body.clone()),
            with("X25519", vec![b64(&[7u8; 33])], genuine.body.clone()),
            with("X25519", vec![], genuine.body.clone()),
            with("X25519", vec![share.clone(), share.clone()], genuine.body.clone()),
            with("X25519", vec![share.clone()], genuine.body[..31].to_vec()),
            with("X25519", vec![share.clone()], [&genuine.body[..], &[0]].concat()),
            with("X25519", vec![share.clone()], vec![0; 32]),
            with("X25519", vec![b64(&random)], genuine.body.clone()),
            with("scrypt", vec![share.clone()], genuine.body.clone()),
            with("x25519", vec![share.clone()], genuine.body.clone()),
            with(&genuine.tag, genuine.args.clone(), genuine.body.clone()),
        ]);
        let mut answers = [0usize; 3];
        for stanza in &stanzas {
            let expected = unwrapped(&owner, stanza);
            assert_eq!(unwrapped(&fast, stanza), expected, "{stanza:?}");
            answers[match expected {
                None => 0,
                Some(Err(_)) => 1,
                Some(Ok(_)) => 2,
            }] += 1;
        }
        // Each kind of answer was given: the comparison covered them all.
        assert!(answers.iter().all(|&n| n >= 4), "{answers:?}");
        // And whole objects decrypt with it, or do not, as with age's identity.
        let ciphertext = encrypt(&[other.to_public(), owner.to_public()], b"customer list");
        assert_eq!(decrypt(std::slice::from_ref(&fast), &ciphertext).unwrap(), b"customer list");
        let stranger = Unwrapper::new(&generate_identity());
        assert!(matches!(decrypt(&[stranger], &ciphertext), Err(DecryptFailure::NoMatchingKey)));
    }

    #[test]
    #[allow(clippy::cast_possible_truncation)] // offsets of a 300 KB test ciphertext
    fn a_range_decrypts_alone_and_a_flipped_byte_in_it_is_refused() {
        let owner = generate_identity();
        let plaintext: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let ciphertext = encrypt(&[owner.to_public()], &plaintext);
        let len = ciphertext.len() as u64;
        let start = payload_start(&ciphertext[..4096]).unwrap().unwrap();
        assert_eq!(payload_start(&ciphertext[..20]).unwrap(), None);
        let head = &ciphertext[..start];
        let start = start as u64;
        let keys = FileKeys::default();
        let owner = [Unwrapper::new(&owner)];
        let identities = (&owner[..], &keys);
        for range in [0..10, 65_530..65_540, 131_072..200_000, 299_990..300_000, 0..300_000, 65_536..65_537] {
            let fetched = ciphertext_range(start, &range, len);
            let body = &ciphertext[fetched.start as usize..fetched.end as usize];
            let got = decrypt_range(identities, head, fetched.start, body, len, range.clone()).unwrap();
            assert_eq!(got, plaintext[range.start as usize..range.end as usize], "{range:?}");
            // Fewer bytes than the range needs: refused, never made up.
            let short = &body[..body.len() - 1];
            assert!(decrypt_range(identities, head, fetched.start, short, len, range.clone()).is_err());
        }
        // Past the end of the plaintext: as far as it goes (a range rounded out to whole pieces).
        let fetched = ciphertext_range(start, &(299_990..300_010), len);
        let body = &ciphertext[fetched.start as usize..];
        let got = decrypt_range(identities, head, fetched.start, body, len, 299_990..300_010).unwrap();
        assert_eq!(got, plaintext[299_990..]);
        let fetched = ciphertext_range(start, &(262_144..u64::MAX), len);
        let body = &ciphertext[fetched.start as usize..];
        let got = decrypt_range(identities, head, fetched.start, body, len, 262_144..u64::MAX).unwrap();
        assert_eq!(got, plaintext[262_144..]);
        // ...but only when the end is there: the last piece short by a byte is refused.
        let short = &body[..body.len() - 1];
        assert!(decrypt_range(identities, head, fetched.start, short, len, 262_144..u64::MAX).is_err());
        // A flipped byte in the piece read, and a stranger's key.
        let range = 131_072..140_000;
        let fetched = ciphertext_range(start, &range, len);
        let mut body = ciphertext[fetched.start as usize..fetched.end as usize].to_vec();
        body[100] ^= 1;
        let failure = decrypt_range(identities, head, fetched.start, &body, len, range.clone());
        assert!(matches!(failure, Err(DecryptFailure::Damaged(_))));
        let body = &ciphertext[fetched.start as usize..fetched.end as usize];
        let stranger = Unwrapper::new(&generate_identity());
        let failure = decrypt_range((&[stranger], &FileKeys::default()), head, fetched.start, body, len, range.clone());
        assert!(matches!(failure, Err(DecryptFailure::NoMatchingKey)));
        // The file key was unwrapped once and is remembered for the pack's next parts (a
        // stranger's keyring never holds it: each keyring has its own).
        assert_eq!(keys.0.lock().unwrap().len(), 1);
        let remembered = decrypt_range(
            (&[Unwrapper::new(&generate_identity())], &keys),
            head,
            fetched.start,
            body,
            len,
            range.clone(),
        );
        assert_eq!(remembered.unwrap(), plaintext[range.start as usize..range.end as usize]);
        // A piece moved to another place in the payload does not decrypt there.
        let other = ciphertext_range(start, &(0..10), len);
        let moved = &ciphertext[other.start as usize..other.end as usize];
        assert!(decrypt_range(identities, head, fetched.start, moved, len, range).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let secret = RepoSecret::generate();
        assert!(!format!("{secret:?}").contains(&secret.to_hex()[..8]));
    }
}
