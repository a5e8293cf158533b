//! A local folder's writes: create-only, synced with their folders, never through a link
//! planted in the repository.

use std::path::Path;

use crate::error::{Error, Result};

/// Refuses to write `key` when one of its folders under the repository's root is a symbolic
/// link: whoever can write to the storage could otherwise send this host's writes anywhere it
/// may write (the root itself may be a link: the admin chose it).
pub(super) fn refuse_linked_folders(root: &Path, key: &str) -> Result<()> {
    let mut path = root.to_path_buf();
    let mut folders: Vec<&str> = key.split('/').collect();
    folders.pop();
    for folder in folders {
        path.push(folder);
        if std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_symlink()) {
            return Err(Error::corrupt(
                path.display().to_string(),
                "a symbolic link inside the repository; refusing to write through it (crmvault makes none: \
                 planted in storage?)",
            ));
        }
    }
    Ok(())
}

/// Whether `key` names a staging file, `<name>#<digits>`: where object_store's writes and the
/// direct writes below stage an object before giving it its name. object_store's listing
/// skips such files and refuses to delete them.
pub(super) fn is_staging_file(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.split_once('#').is_some_and(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
}

/// The staging files under `folder` (keys relative to `root`, with sizes): what writes that
/// never finished (a killed backup) left. No symbolic link is followed.
pub(super) fn staging_files(root: &Path, folder: &str) -> Result<Vec<(String, u64)>> {
    let mut found = Vec::new();
    let mut pending = vec![root.join(folder)];
    while let Some(directory) = pending.pop() {
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(Error::io(&directory, error)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&directory, e))?;
            let meta = entry.metadata().map_err(|e| Error::io(entry.path(), e))?;
            let path = entry.path();
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file()
                && let Ok(relative) = path.strip_prefix(root)
                && let Some(key) = relative.to_str()
                && is_staging_file(key)
            {
                found.push((key.to_string(), meta.len()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Syncs a file just written and the directories up to the root, so its name is durable too.
pub(super) fn sync_local(root: &Path, key: &str) -> Result<()> {
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
pub(super) mod direct {
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
