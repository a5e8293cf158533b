//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden, and free to change).
//!
//! Every byte read from storage may be an attacker's (docs/FORMAT.md, *Threat model*), so each
//! parser of a stored object must answer any input with a value or an error, never a panic and
//! never an allocation the input's size does not justify. These wrappers take raw bytes, run
//! one parser the way the repository code does, and check what can be checked without a key
//! (round trips, limits); a panic in them is a bug in the parser they call.

use bytes::Bytes;

use crate::compress::bytea;
use crate::crypto;
use crate::repo::{Manifest, SealedSnapshot, index_codec};

/// Most bytes an unpacked run may make in [`packed_text`] (like a frame's 16 MiB limit, smaller
/// so that the fuzzer spends its time on structure).
const UNPACK_LIMIT: usize = 1 << 20;

/// An index object's plaintext (after the magic): decoded, and when it decodes, encoded again
/// (as compaction and `rekey --reencrypt` do with indexes they read) and decoded to the same.
pub fn index(body: &[u8]) {
    let mut plaintext = index_codec::MAGIC.to_vec();
    plaintext.extend_from_slice(body);
    let Ok(file) = index_codec::decode(&plaintext) else { return };
    // Only format 5 and later are written; older ones are read, never encoded.
    if file.version < 5 {
        return;
    }
    let again = index_codec::decode(&index_codec::encode(&file)).expect("an encoded index decodes");
    assert_eq!(again.version, file.version);
    assert_eq!(again.packs.len(), file.packs.len());
    for (before, after) in file.packs.iter().zip(&again.packs) {
        assert_eq!(before.pack, after.pack);
        assert_eq!(before.dictionary, after.dictionary);
        assert_eq!(before.chunks, after.chunks);
    }
}

/// A snapshot object as stored, parsed with its header (the part read before any MAC);
/// `bytes` is taken twice: as a whole object, and as a header line given a valid version line
/// and BLAKE3 line, so that the fuzzer reaches the header's JSON.
pub fn snapshot(bytes: &[u8]) {
    let whole = Bytes::copy_from_slice(bytes);
    let _ = SealedSnapshot::parse(&manifest_id(&whole), &whole);
    if bytes.contains(&b'\n') {
        return;
    }
    let mut object = format!("crmvault-snapshot {}\n", crate::repo::FORMAT_VERSION).into_bytes();
    object.extend_from_slice(bytes);
    object.push(b'\n');
    object.extend_from_slice(crypto::object_hash(bytes).as_bytes());
    object.extend_from_slice(b"\nmac\nmanifest");
    let object = Bytes::from(object);
    let _ = SealedSnapshot::parse(&manifest_id(&object), &object);
}

/// The id a snapshot object would have: the BLAKE3 of what follows its fourth line.
fn manifest_id(object: &[u8]) -> crate::repo::SnapshotId {
    let start = memchr::memchr_iter(b'\n', object).nth(3).map_or(object.len(), |end| end + 1);
    crate::repo::SnapshotId::of(&object[start..])
}

/// A manifest's plaintext as decrypted (zstd-compressed JSON); also `bytes` as the JSON itself,
/// compressed here, so that the fuzzer reaches the JSON.
pub fn manifest(bytes: &[u8]) {
    let _ = crate::repo::decode_json::<Manifest>("fuzz", bytes);
    let compressed = zstd::bulk::compress(bytes, 1).expect("compressing to memory cannot fail");
    let _ = crate::repo::decode_json::<Manifest>("fuzz", &compressed);
}

/// A `config` object as stored.
pub fn config(bytes: &[u8]) {
    let _ = crate::repo::parse_config("fuzz", bytes);
}

/// A frame's packed text (format 6), unpacked with a limit; and `bytes` as text, which packs
/// and unpacks to itself.
pub fn packed_text(bytes: &[u8]) {
    let mut out = b"kept".to_vec();
    match bytea::unpack_onto(bytes, UNPACK_LIMIT, &mut out) {
        Ok(()) => assert!(out.len() <= 4 + UNPACK_LIMIT, "unpacked past the limit"),
        Err(_) => assert_eq!(out, b"kept", "a refused unpacking left bytes behind"),
    }
    let mut packed = Vec::new();
    bytea::pack(bytes, &mut packed);
    let mut text = Vec::new();
    bytea::unpack_onto(&packed, bytes.len(), &mut text).expect("packed text unpacks");
    assert_eq!(text, bytes, "packing is not undone by unpacking");
}

/// A list chunk of every format's id width, and the varints of the index and packed text.
pub fn list_chunk(bytes: &[u8]) {
    for version in [4, crate::repo::FORMAT_VERSION] {
        if let Ok(ids) = crate::repo::parse_list("fuzz", bytes, version) {
            assert_eq!(ids.len() * crate::repo::stored_id_bytes(version), bytes.len());
        }
    }
    if let Some((value, width)) = crate::varint::get(bytes) {
        let mut again = Vec::new();
        crate::varint::put(&mut again, value);
        assert!(again.len() <= width && width <= 10);
    }
}

/// An audit record as stored, read as a keyless `verify` reads it (under the name its header's
/// number and its hash give it): a header that reads must hold what every reader relies on.
pub fn audit(bytes: &[u8]) {
    if let Some(header) = crate::repo::parse_audit_record(bytes) {
        assert!(header.number >= 1);
        for hash in header.previous.iter().chain([&header.config_hash]) {
            assert!(crate::repo::is_object_hash(hash), "a header that reads names a non-hash");
        }
    }
}

/// A few valid objects for each target (fuzz/corpus/<target>/seed-*): the fuzzer starts from
/// real structure instead of finding magic words and hashes by chance.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::repo::{ChunkLocation, IndexFile, ObjectRef, PackRecord, RepoConfig, SnapshotHeader, StreamManifest};

    let id = |n: u8| crypto::ChunkId([n; crypto::CHUNK_ID_BYTES]);
    let object = |n: u8| ObjectRef { id: crate::repo::ObjectId::of(&[n]), size: 1000 + u64::from(n) };
    let index = IndexFile {
        version: crate::repo::FORMAT_VERSION,
        packs: vec![
            PackRecord {
                pack: object(1),
                dictionary: Some(object(2)),
                chunks: vec![
                    ChunkLocation::in_frame(id(1), 0, 700, 300, 0),
                    ChunkLocation::in_frame(id(2), 0, 700, 400, 300),
                    ChunkLocation::new(id(3), 700, 50, 90),
                ],
            },
            PackRecord { pack: object(3), dictionary: None, chunks: vec![ChunkLocation::new(id(4), 0, 10, 20)] },
        ],
    };
    let index_body = index_codec::encode(&index)[index_codec::MAGIC.len()..].to_vec();

    let time = chrono::DateTime::from_timestamp(1_780_000_000, 0).expect("a valid time");
    let header = SnapshotHeader {
        version: crate::repo::FORMAT_VERSION,
        time,
        config_hash: crypto::object_hash(b"config"),
        total_bytes: 5000,
        added_bytes: 700,
        packs: vec![object(1), object(3)],
        indexes: vec![object(4)],
        dictionaries: vec![object(2)],
        parent: Some(crate::repo::SnapshotId::of(b"parent")),
        sequence: 3,
        replaces: None,
    };
    let header_line = serde_json::to_vec(&header).expect("serialisable");
    let mut snapshot = format!("crmvault-snapshot {}\n", crate::repo::FORMAT_VERSION).into_bytes();
    snapshot.extend_from_slice(&header_line);
    snapshot.push(b'\n');
    snapshot.extend_from_slice(crypto::object_hash(&header_line).as_bytes());
    snapshot.push(b'\n');
    snapshot.extend_from_slice(crypto::object_hash(b"mac").as_bytes());
    snapshot.extend_from_slice(b"\nage-encryption.org/v1\n");

    let stream = |n: u8| StreamManifest { bytes: 4096, lists: vec![id(n), id(n + 1)], ..StreamManifest::default() };
    let table = crate::repo::TableManifest {
        schema: "public".into(),
        name: "contacts".into(),
        columns: vec!["id".into(), "email".into()],
        primary_key: vec!["id".into()],
        rows: 12,
        data: StreamManifest { list_levels: 2, ..stream(5) },
    };
    let manifest = Manifest {
        version: crate::repo::FORMAT_VERSION,
        database: "crm".into(),
        server_version: "15.4".into(),
        hostname: "backup-host".into(),
        tags: vec!["nightly".into()],
        pre_data: stream(1),
        post_data: stream(3),
        tables: vec![table.clone()],
        sequences: vec![crate::repo::SequenceState {
            schema: "public".into(),
            name: "contacts_id_seq".into(),
            last_value: 12,
            is_called: true,
        }],
        materialized_views: vec![("public".into(), "totals".into())],
        large_objects: Some(table),
        admin_only: Some(hex::encode(b"age ciphertext")),
        alarms: vec![],
        session: None,
        roles: None,
        database_object: None,
    };
    let manifest_json = serde_json::to_vec(&manifest).expect("serialisable");
    let manifest_compressed = zstd::bulk::compress(&manifest_json, 3).expect("compressing to memory cannot fail");

    let recipient = |identity: age::x25519::Identity| identity.to_public().to_string();
    let config = RepoConfig {
        format: "crmvault".into(),
        version: crate::repo::FORMAT_VERSION,
        id: "0123456789abcdef0123456789abcdef".into(),
        created: time,
        generation: 1,
        previous: Some(crypto::object_hash(b"generation 0")),
        rekeyed: Some(time),
        recipients: vec![recipient(crypto::generate_identity())],
        writer_recipient: recipient(crypto::generate_identity()),
        keys: vec![
            format!("keys/{}", crypto::object_hash(b"keys 1")),
            format!("keys/{}", crypto::object_hash(b"keys 2")),
        ],
        admin_keys: vec![format!("keys/{}", crypto::object_hash(b"admin keys"))],
        signing_key: Some(hex::encode([7u8; 32])),
        carried: vec![crypto::object_hash(b"a carried snapshot")],
        chunking: crate::chunk::ChunkParams::default(),
        compression_level: 3,
        pack_size: 16 << 20,
        signature: Some(hex::encode([9u8; 64])),
    };

    let text = format!("1\t\\\\x{}\tnote \u{e9}\n2\t\\\\x0a1b\t\\N\n", "00ff7a".repeat(20)).into_bytes();
    let mut packed = Vec::new();
    bytea::pack(&text, &mut packed);
    let list: Vec<u8> = (1..=5).flat_map(|n| id(n).0).collect();

    vec![
        ("index", index_body),
        ("snapshot", snapshot),
        ("snapshot", header_line),
        ("manifest", manifest_compressed),
        ("manifest", manifest_json),
        ("config", config.to_bytes()),
        ("packed_text", packed),
        ("packed_text", text),
        ("list_chunk", list),
        ("audit", audit_seed(1, &[])),
        ("audit", audit_seed(12, &[&"ab".repeat(32), &"cd".repeat(32)])),
    ]
}

/// An audit record whose header reads (its MAC is no MAC: no keyring here).
fn audit_seed(number: u64, previous: &[&str]) -> Vec<u8> {
    let header = crate::repo::AuditHeader {
        number,
        previous: previous.iter().map(ToString::to_string).collect(),
        target: "/srv/backups/crm".into(),
        config_hash: "ef".repeat(32),
        replaces: None,
    };
    let mut object = format!("crmvault-audit {}\n", crate::repo::FORMAT_VERSION).into_bytes();
    object.extend_from_slice(&serde_json::to_vec(&header).expect("serialisable"));
    object.push(b'\n');
    object.extend_from_slice("0".repeat(64).as_bytes());
    object.extend_from_slice(b"\nage-encryption.org/v1\n");
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_a_valid_object_and_no_target_panics_on_it() {
        for (target, seed) in seeds() {
            match target {
                "index" => {
                    let mut plaintext = index_codec::MAGIC.to_vec();
                    plaintext.extend_from_slice(&seed);
                    index_codec::decode(&plaintext).unwrap();
                    index(&seed);
                }
                "snapshot" if seed.contains(&b'\n') => {
                    let object = Bytes::from(seed.clone());
                    SealedSnapshot::parse(&manifest_id(&object), &object).unwrap();
                    snapshot(&seed);
                }
                "snapshot" => snapshot(&seed),
                "manifest" if seed.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) => {
                    crate::repo::decode_json::<Manifest>("seed", &seed).unwrap();
                    manifest(&seed);
                }
                "manifest" => manifest(&seed),
                "config" => {
                    crate::repo::parse_config("seed", &seed).unwrap();
                    config(&seed);
                }
                "packed_text" => packed_text(&seed),
                "list_chunk" => {
                    assert_eq!(crate::repo::parse_list("seed", &seed, crate::repo::FORMAT_VERSION).unwrap().len(), 5);
                    list_chunk(&seed);
                }
                "audit" => {
                    assert!(crate::repo::parse_audit_record(&seed).is_some());
                    audit(&seed);
                }
                other => panic!("a seed for no target: {other}"),
            }
        }
    }

    /// What the fuzz targets start from, as committed (the seeds, and any input a crash was
    /// fixed for): each runs through its target in every `cargo test`, without cargo-fuzz.
    #[test]
    fn every_committed_fuzz_input_runs_through_its_target() {
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 7] = [
            ("index", index),
            ("snapshot", snapshot),
            ("manifest", manifest),
            ("config", config),
            ("packed_text", packed_text),
            ("list_chunk", list_chunk),
            ("audit", audit),
        ];
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut inputs = 0;
        for (target, run) in targets {
            for entry in std::fs::read_dir(corpus.join(target)).unwrap() {
                let path = entry.unwrap().path();
                run(&std::fs::read(&path).unwrap());
                inputs += 1;
            }
        }
        let folders = std::fs::read_dir(&corpus).unwrap().count();
        assert_eq!(folders, targets.len(), "a corpus folder for every target, and a target for every folder");
        assert!(inputs >= targets.len(), "{inputs} inputs");
    }

    /// Writes the seeds into `$CRMVAULT_FUZZ_SEEDS/<target>/seed-<n>` (fuzz/README.md):
    /// `CRMVAULT_FUZZ_SEEDS=$PWD/fuzz/corpus cargo test --lib fuzzing -- --ignored`.
    #[test]
    #[ignore = "writes files; run by hand to renew fuzz/corpus"]
    fn write_seeds() {
        let root = std::path::PathBuf::from(std::env::var("CRMVAULT_FUZZ_SEEDS").expect("CRMVAULT_FUZZ_SEEDS"));
        for (n, (target, seed)) in seeds().into_iter().enumerate() {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{n}")), seed).unwrap();
        }
    }
}
