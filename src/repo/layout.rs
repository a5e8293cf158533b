//! Where objects live: their names under the repository root, and the check that a
//! content-addressed object's bytes hash to its name (docs/FORMAT.md, *Objects*).

use serde::{Deserialize, Serialize};

use crate::crypto;
use crate::error::{Error, Result};

/// The config object's key (the first generation).
pub const CONFIG_KEY: &str = "config";

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

/// A stored object referenced by a snapshot: its id (hash) and size.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    /// BLAKE3 hex of the stored bytes.
    pub id: String,
    /// Stored size in bytes.
    pub size: u64,
}
