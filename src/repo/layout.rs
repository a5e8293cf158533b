//! Where objects live: their names under the repository root, and the check that a
//! content-addressed object's bytes hash to its name (docs/FORMAT.md, *Objects*), and the
//! types of those names: [`ObjectId`] for packs, indexes and dictionaries, [`SnapshotId`] for
//! snapshots.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::crypto;
use crate::error::{Error, Result};

/// The config object's key (the first generation).
pub const CONFIG_KEY: &str = "config";

/// The largest config (`config`, `configs/…`) read: a few KiB, growing with the 64 hex digits
/// a `rekey` carries for each snapshot and record written under earlier keys (a quarter of a
/// million of them fit).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The largest keys object read: secrets of a few hundred bytes a generation, encrypted to at
/// most [`crate::crypto::MAX_RECIPIENTS`] recipients.
pub const MAX_KEYS_BYTES: u64 = 1 << 20;
/// The largest pack or dictionary read where no header gives its size: a pack is
/// 8 MiB and its last chunk (at most [`super::MAX_CHUNK_BYTES`] before compression), a
/// dictionary far less.
pub const MAX_DATA_BYTES: u64 = 64 << 20;

/// The most bytes a well-formed object stored under `key` can hold: every object is read whole
/// under a limit (whoever writes the storage can put anything under any name, and what is
/// read whole is held whole), this one where nothing tighter is known.
pub fn largest_object(key: &str) -> u64 {
    match key.split_once('/').map_or(key, |(folder, _)| folder) {
        "config" | "configs" => MAX_CONFIG_BYTES,
        "keys" => MAX_KEYS_BYTES,
        "snapshots" => super::MAX_SNAPSHOT_BYTES,
        "index" => super::MAX_INDEX_BYTES,
        "forgotten" => super::forgotten::MAX_RECORD_BYTES,
        "audit" => super::audit::MAX_AUDIT_BYTES,
        // Packs, dictionaries; and markers, locks and the rest, which are smaller still.
        _ => MAX_DATA_BYTES,
    }
}

/// Defines a name of a content-addressed object: the BLAKE3 hash of its stored bytes, checked
/// on the way in (parsed, deserialised) to be 64 lowercase hex digits, so that it is safe to put
/// in an object key. It serialises as that plain string, and is held as the hash's 32 bytes: a
/// year of snapshot headers lists millions of them (a `String` took 88 bytes and an allocation
/// each).
macro_rules! object_name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The name of an object with these stored bytes.
            pub fn of(bytes: &[u8]) -> $name {
                $name(*blake3::hash(bytes).as_bytes())
            }

            /// The 64 hex digits (ordered as the names are).
            pub fn as_str(&self) -> impl std::ops::Deref<Target = str> + fmt::Display + use<> {
                blake3::Hash::from_bytes(self.0).to_hex()
            }

            /// The first 12 hex digits: what a person reads and types.
            pub fn short(&self) -> String {
                self.as_str()[..12].to_string()
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(text: &str) -> Result<$name> {
                match hash_digits(text) {
                    Some(bytes) => Ok($name(bytes)),
                    None => Err(Error::Invalid(format!("{text:?} is not a BLAKE3 hash (64 lowercase hex digits)"))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                *self.as_str() == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<$name, D::Error> {
                // Read where the text lies: no String made and dropped for each of a year of
                // headers' ids.
                struct Digits;
                impl serde::de::Visitor<'_> for Digits {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a BLAKE3 hash (64 lowercase hex digits)")
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> std::result::Result<$name, E> {
                        text.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Digits)
            }
        }
    };
}

object_name! {
    /// Name of a pack, an index or a compression dictionary: the BLAKE3 hex of its stored
    /// bytes. One type for the three, as [`ObjectRef`] serves them all.
    ObjectId
}

object_name! {
    /// Id of a snapshot: the BLAKE3 hex of its encrypted manifest. A prefix a user types is
    /// not one until it is resolved.
    SnapshotId
}

/// Object key of a pack.
pub fn pack_key(id: &ObjectId) -> String {
    format!("data/{}/{id}", &id.as_str()[..2])
}
/// Object key of an index.
pub fn index_key(id: &ObjectId) -> String {
    format!("index/{id}")
}
/// Object key of a snapshot.
pub fn snapshot_key(id: &SnapshotId) -> String {
    format!("snapshots/{id}")
}
/// Object key of a compression dictionary.
pub fn dictionary_key(id: &ObjectId) -> String {
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
pub fn damaged_key(pack_id: &ObjectId) -> String {
    format!("damaged/{pack_id}")
}

/// Each byte's value as a lowercase hex digit, or 0xFF.
const HEX_DIGITS: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut digit: u8 = 0;
    while digit < 16 {
        table[b"0123456789abcdef"[digit as usize] as usize] = digit;
        digit += 1;
    }
    table
};

/// The 32 bytes that 64 lowercase hex digits spell, or `None` for any other text. One pass,
/// a table lookup a digit and one test at the end: a year of headers holds millions of them
/// (matching each digit took a quarter of `snapshots --identity` at 365 nights).
fn hash_digits(text: &str) -> Option<[u8; 32]> {
    let text: &[u8; 64] = text.as_bytes().try_into().ok()?;
    let mut bytes = [0u8; 32];
    let mut invalid = 0u8;
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (HEX_DIGITS[usize::from(pair[0])], HEX_DIGITS[usize::from(pair[1])]);
        invalid |= high | low;
        *byte = high << 4 | low;
    }
    (invalid < 16).then_some(bytes)
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
    pub id: ObjectId,
    /// Stored size in bytes.
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_id_serialises_as_its_plain_hex_string() {
        let id = ObjectId::of(b"pack");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", crypto::object_hash(b"pack")));
        assert_eq!(serde_json::from_str::<ObjectId>(&json).unwrap(), id);
        assert_eq!(id.as_str().parse::<ObjectId>().unwrap(), id);
        let snapshot = SnapshotId::of(b"manifest");
        assert_eq!(serde_json::to_string(&snapshot).unwrap(), format!("\"{snapshot}\""));
        // Held as bytes, ordered as their digits.
        let mut ids: Vec<ObjectId> = (0..64u8).map(|n| ObjectId::of(&[n])).collect();
        ids.sort();
        assert!(ids.windows(2).all(|pair| *pair[0].as_str() < *pair[1].as_str()));
        assert_eq!(ids.iter().map(|id| id.as_str().parse().unwrap()).collect::<Vec<ObjectId>>(), ids);
    }

    #[test]
    fn an_id_that_is_not_a_blake3_hash_is_refused_with_a_clear_error() {
        let upper = crypto::object_hash(b"x").to_uppercase();
        for bad in ["x", "", "../../config", &"a".repeat(63), &"a".repeat(65), &upper, &"g".repeat(64)] {
            let error = bad.parse::<ObjectId>().unwrap_err().to_string();
            assert!(error.contains("is not a BLAKE3 hash"), "{bad:?}: {error}");
            assert!(bad.parse::<SnapshotId>().is_err(), "{bad:?}");
            assert!(serde_json::from_str::<ObjectId>(&format!("{bad:?}")).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hash_digits_take_every_lowercase_hex_digit_and_refuse_every_other_byte_anywhere() {
        let text = crypto::object_hash(b"digits");
        assert_eq!(hash_digits(&text).map(hex::encode), Some(text.clone()));
        let all: String = "0123456789abcdef".repeat(4);
        assert_eq!(hash_digits(&all).map(hex::encode), Some(all.clone()));
        for at in 0..64 {
            for byte in (0..=255u8).filter(|b| !b"0123456789abcdef".contains(b)) {
                let mut bad = all.clone().into_bytes();
                bad[at] = byte;
                if let Ok(bad) = String::from_utf8(bad) {
                    assert_eq!(hash_digits(&bad), None, "{bad:?}");
                }
            }
        }
    }

    #[test]
    fn keys_are_built_from_typed_ids() {
        let pack = ObjectId::of(b"pack");
        assert_eq!(pack_key(&pack), format!("data/{}/{pack}", &pack.as_str()[..2]));
        let snapshot = SnapshotId::of(b"manifest");
        assert_eq!(snapshot_key(&snapshot), format!("snapshots/{snapshot}"));
    }
}
