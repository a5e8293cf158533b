//! A local folder's writes and deletes: create-only, synced with their folders, and never
//! through a link planted in the repository.
//!
//! Each one opens the folders from the repository's root to the object's one by one, each by
//! name in the one before and never following a link (`openat` with `O_NOFOLLOW`), and then
//! works in the last one by name (`linkat`, `renameat`, `unlinkat`). No path is resolved twice:
//! whoever can write to the storage may swap a folder for a link to anywhere at any moment
//! (`renameat2(RENAME_EXCHANGE)` in a loop), and a check of the path followed by a write or
//! delete by path would then reach past the repository into what this host may change
//! (another target's folder, the host's own state).

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Why a write or delete in a local folder failed.
#[derive(Debug)]
pub(super) enum Failed {
    /// A folder on the way is a symbolic link or no folder at all: crmvault makes none.
    NotAFolder(PathBuf),
    /// A key with an empty, `.` or `..` part: crmvault makes none.
    BadKey(String),
    /// The file system's error, on that path.
    Io(PathBuf, std::io::Error),
}

impl Failed {
    /// The error for the caller; `refused` turns a refusal by the storage (permissions, a
    /// read-only mount) into what the caller makes of it.
    pub(super) fn into_error(self, refused: impl FnOnce(PathBuf, std::io::Error) -> Error) -> Error {
        match self {
            Failed::NotAFolder(path) => Error::corrupt(
                path.display().to_string(),
                "a symbolic link inside the repository, or no folder; refusing to write or delete through it \
                 (crmvault makes none: planted in storage?)",
            ),
            Failed::BadKey(key) => Error::Internal(format!("{key:?} is not the name of an object")),
            Failed::Io(path, error) => refused(path, error),
        }
    }
}

/// What [`put_new`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Written and durable under its name.
    Written,
    /// The name was taken; nothing was changed.
    Exists,
}

/// A local repository's root folder, opened once, when the target is opened: every write and
/// delete starts from it, so that its path, renamed or made a link later by whoever may write
/// beside it, changes nothing (the path itself may be a link: the admin chose it).
#[derive(Debug)]
pub(super) struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    pub(super) fn open(path: &Path) -> std::io::Result<Root> {
        let fd = rustix::fs::open(path, directory(), Mode::empty())?;
        Ok(Root { fd, path: path.to_path_buf() })
    }

    /// The folder's path, links resolved (where object_store reads it).
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// How folders are opened: to read, list and sync, never through a link at their own name
/// (with [`OFlags::NOFOLLOW`] where it applies).
fn directory() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// The parts of `key` below the root: refused when one is empty, `.` or `..`.
fn parts(key: &str) -> std::result::Result<Vec<&str>, Failed> {
    let parts: Vec<&str> = key.split('/').collect();
    if parts.iter().any(|part| part.is_empty() || *part == "." || *part == "..") {
        return Err(Failed::BadKey(key.to_string()));
    }
    Ok(parts)
}

/// The folders from the root to an object's, each held open: where the object is written or
/// deleted, whatever is renamed in storage meanwhile.
struct Folders<'r> {
    root: &'r Root,
    /// Below the root, outermost first.
    open: Vec<OwnedFd>,
    /// The last folder's path, for messages.
    path: PathBuf,
}

impl<'r> Folders<'r> {
    /// Opens `folders` under `root`, one by one, each by name in the one before and never
    /// following a link, creating missing ones when `create`; `None` when one is missing and
    /// not created.
    fn open(root: &'r Root, folders: &[&str], create: bool) -> std::result::Result<Option<Folders<'r>>, Failed> {
        let mut opened = Folders { root, open: Vec::new(), path: root.path.clone() };
        for folder in folders {
            opened.path.push(folder);
            let parent = opened.last();
            let mut fd = rustix::fs::openat(parent, *folder, directory() | OFlags::NOFOLLOW, Mode::empty());
            if matches!(fd, Err(Errno::NOENT)) {
                if !create {
                    return Ok(None);
                }
                match rustix::fs::mkdirat(parent, *folder, Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => return Err(Failed::Io(opened.path, errno.into())),
                }
                fd = rustix::fs::openat(parent, *folder, directory() | OFlags::NOFOLLOW, Mode::empty());
            }
            match fd {
                Ok(fd) => opened.open.push(fd),
                // A link (`O_NOFOLLOW`), or a file where a folder belongs.
                Err(Errno::LOOP | Errno::NOTDIR) => return Err(Failed::NotAFolder(opened.path)),
                Err(errno) => return Err(Failed::Io(opened.path, errno.into())),
            }
        }
        Ok(Some(opened))
    }

    /// Opens the folders of the object `key`; returns them with its name.
    fn of<'k>(
        root: &'r Root,
        key: &'k str,
        create: bool,
    ) -> std::result::Result<Option<(Folders<'r>, &'k str)>, Failed> {
        let mut parts = parts(key)?;
        let name = parts.pop().expect("split gives at least one part");
        Ok(Folders::open(root, &parts, create)?.map(|folders| (folders, name)))
    }

    /// The last folder opened (the root when none below it was).
    fn last(&self) -> std::os::fd::BorrowedFd<'_> {
        self.open.last().map_or(self.root.fd.as_fd(), AsFd::as_fd)
    }

    fn io(&self, name: &str, errno: impl Into<std::io::Error>) -> Failed {
        Failed::Io(self.path.join(name), errno.into())
    }

    /// Syncs every folder from the object's up to the root, so a new name in them (and a
    /// folder just made) is durable.
    fn sync(&self) -> std::result::Result<(), Failed> {
        let below = self.open.iter().rev().map(AsFd::as_fd);
        for fd in below.chain(std::iter::once(self.root.fd.as_fd())) {
            rustix::fs::fsync(fd).map_err(|errno| Failed::Io(self.path.clone(), errno.into()))?;
        }
        Ok(())
    }

    /// A new staging file `<name>#<n>` (the names object_store's listing skips) in the object's
    /// folder; `None` when `direct` is asked and the file system refuses `O_DIRECT`.
    fn staging(&self, name: &str, direct: bool) -> std::result::Result<Option<(std::fs::File, String)>, Failed> {
        let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        #[cfg(target_os = "linux")]
        if direct {
            flags |= OFlags::DIRECT;
        }
        for n in 1u32.. {
            let staging = format!("{name}#{n}");
            match rustix::fs::openat(self.last(), staging.as_str(), flags, Mode::from_raw_mode(0o666)) {
                Ok(fd) => return Ok(Some((std::fs::File::from(fd), staging))),
                Err(Errno::EXIST) => {}
                Err(Errno::INVAL) if direct => return Ok(None),
                Err(errno) => return Err(self.io(&staging, errno)),
            }
        }
        unreachable!("some staging name is free")
    }

    /// Whether `name` in the object's folder is a folder itself (not followed if a link).
    fn is_folder(&self, name: &str) -> bool {
        rustix::fs::statat(self.last(), name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory)
    }

    /// Whether `name` in the object's folder is a symbolic link that leads to no regular file
    /// (nowhere, or a folder).
    fn is_link_to_no_file(&self, name: &str) -> bool {
        let link = rustix::fs::statat(self.last(), name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink);
        link && !rustix::fs::statat(self.last(), name, AtFlags::empty())
            .is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile)
    }

    /// Removes `name` from the object's folder; one already gone is no error.
    fn unlink(&self, name: &str) -> std::result::Result<(), Failed> {
        match rustix::fs::unlinkat(self.last(), name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(errno) => Err(self.io(name, errno)),
        }
    }

    /// Removes a staging file whose work is done or failed: what it leaves, prune removes
    /// later, so its failure is not what the caller hears of.
    fn drop_staging(&self, staging: &str) {
        if let Err(Failed::Io(path, error)) = self.unlink(staging) {
            tracing::warn!("{}: left behind ({error}); prune removes it", path.display());
        }
    }
}

/// Writes `bytes` as the object `key` under `root`, durably, unless the name is taken: staged
/// as `<name>#<n>`, synced, then hard-linked to its name, which fails if the name exists. Large
/// objects (packs) are written past the page cache ([`direct`]) where the file system allows.
/// A folder in the object's place is no object that takes the name (crmvault makes none there:
/// planted in storage, it would block a lock's name for good): an empty one is removed and the
/// name taken; one holding anything is left for a person, and said so.
pub(super) fn put_new(root: &Root, key: &str, bytes: &[u8]) -> std::result::Result<Outcome, Failed> {
    let (folders, name) = Folders::of(root, key, true)?.expect("missing folders are made");
    let staging = stage(&folders, name, bytes, true)?;
    let link = || rustix::fs::linkat(folders.last(), staging.as_str(), folders.last(), name, AtFlags::empty());
    let mut linked = link();
    // A link in the object's place (crmvault writes plain files) that leads to no file: it
    // reads as missing, so would hold the name for good. The link itself is removed, never
    // what it leads to.
    if linked == Err(Errno::EXIST)
        && folders.is_link_to_no_file(name)
        && rustix::fs::unlinkat(folders.last(), name, AtFlags::empty()).is_ok()
    {
        tracing::warn!("{}: removed a link to no file in this object's place", folders.path.join(name).display());
        linked = link();
    }
    if linked == Err(Errno::EXIST) && folders.is_folder(name) {
        linked = match rustix::fs::unlinkat(folders.last(), name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                tracing::warn!("{}: removed an empty folder in this object's place", folders.path.join(name).display());
                link()
            }
            Err(_) if folders.is_folder(name) => {
                folders.drop_staging(&staging);
                return Err(not_empty(&folders, name));
            }
            Err(_) => link(),
        };
    }
    folders.drop_staging(&staging);
    match linked {
        Ok(()) => {}
        Err(Errno::EXIST) => return Ok(Outcome::Exists),
        Err(errno) => return Err(folders.io(name, errno)),
    }
    folders.sync()?;
    Ok(Outcome::Written)
}

/// Writes `bytes` over the object `key` (or as it, when there is none) in one step: staged,
/// then renamed over it, so that a reader sees the old bytes or the new. Synced with its
/// folders when `durable` (locks need not outlive a crash).
pub(super) fn replace(root: &Root, key: &str, bytes: &[u8], durable: bool) -> std::result::Result<(), Failed> {
    let (folders, name) = Folders::of(root, key, true)?.expect("missing folders are made");
    let staging = stage(&folders, name, bytes, durable)?;
    let mut renamed = rustix::fs::renameat(folders.last(), staging.as_str(), folders.last(), name);
    // An empty folder in the object's place (planted in storage: crmvault makes none there) is
    // removed and the object written again; one holding anything is left for a person.
    if renamed == Err(Errno::ISDIR) && rustix::fs::unlinkat(folders.last(), name, AtFlags::REMOVEDIR).is_ok() {
        renamed = rustix::fs::renameat(folders.last(), staging.as_str(), folders.last(), name);
    }
    if let Err(errno) = renamed {
        folders.drop_staging(&staging);
        if errno == Errno::ISDIR {
            return Err(not_empty(&folders, name));
        }
        return Err(folders.io(name, errno));
    }
    if durable {
        folders.sync()?;
    }
    Ok(())
}

/// A folder holding something, in the place of the object `name`: no write takes it away.
fn not_empty(folders: &Folders, name: &str) -> Failed {
    Failed::Io(
        folders.path.join(name),
        std::io::Error::other("a folder that is not empty is in this object's place: remove it, then run again"),
    )
}

/// Removes the object `key` (a staging file too); one already gone is no error.
pub(super) fn remove(root: &Root, key: &str) -> std::result::Result<(), Failed> {
    match Folders::of(root, key, false)? {
        Some((folders, name)) => folders.unlink(name),
        None => Ok(()),
    }
}

/// A staging file beside `name` holding `bytes`, synced when `durable`; removed again when
/// writing it fails.
fn stage(folders: &Folders, name: &str, bytes: &[u8], durable: bool) -> std::result::Result<String, Failed> {
    #[cfg(target_os = "linux")]
    if durable
        && bytes.len() >= direct::THRESHOLD
        && let Some((file, staging)) = folders.staging(name, true)?
    {
        match direct::write_aligned(file, bytes) {
            Ok(()) => return Ok(staging),
            Err(error) => {
                folders.drop_staging(&staging);
                if !direct::is_unsupported(&error) {
                    return Err(folders.io(&staging, error));
                }
            }
        }
    }
    let (mut file, staging) = folders.staging(name, false)?.expect("a buffered staging file opens");
    let written = file.write_all(bytes).and_then(|()| if durable { file.sync_all() } else { Ok(()) });
    if let Err(error) = written {
        folders.drop_staging(&staging);
        return Err(folders.io(&staging, error));
    }
    Ok(staging)
}

/// The staging files under `folder` (keys relative to the root, with sizes): what writes that
/// never finished (a killed backup) left. Listed through the folders held open, never through
/// a link.
pub(super) fn staging_files(root: &Root, folder: &str) -> std::result::Result<Vec<(String, u64)>, Failed> {
    let mut found = Vec::new();
    let Some(mut top) = Folders::open(root, &parts(folder)?, false)? else { return Ok(found) };
    let mut pending = vec![(folder.to_string(), top.open.pop().expect("a folder below the root"))];
    while let Some((prefix, fd)) = pending.pop() {
        let at = root.path.join(&prefix);
        let mut entries = rustix::fs::Dir::new(fd).map_err(|errno| Failed::Io(at.clone(), errno.into()))?;
        let mut names = Vec::new();
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|errno| Failed::Io(at.clone(), errno.into()))?;
            let Ok(name) = entry.file_name().to_str() else { continue };
            if name != "." && name != ".." {
                names.push(name.to_string());
            }
        }
        let dir = entries.fd().map_err(|errno| Failed::Io(at.clone(), errno.into()))?;
        for name in names {
            let Ok(stat) = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) else { continue };
            let key = format!("{prefix}/{name}");
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    if let Ok(fd) =
                        rustix::fs::openat(dir, name.as_str(), directory() | OFlags::NOFOLLOW, Mode::empty())
                    {
                        pending.push((key, fd));
                    }
                }
                FileType::RegularFile if is_staging_file(&key) => {
                    found.push((key, u64::try_from(stat.st_size).unwrap_or(0)));
                }
                _ => {}
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Refuses to read `key` when it is there but is not a regular file (a FIFO, a device, a
/// socket planted in storage): opening a FIFO blocks until someone writes to it, so a planted
/// `locks/writer` would hang a backup past any `--lock-wait`. A folder reads as a missing
/// object, which `verify` reports and `copy --repair` writes ([`replace`] removes it when
/// empty). A link to a file is read as the
/// file (the root may be one; objects are written as plain files).
pub(super) fn refuse_special_file(root: &Path, key: &str) -> Result<()> {
    let path = root.join(key);
    match std::fs::metadata(&path) {
        Ok(meta) if !meta.is_file() && !meta.is_dir() => Err(Error::corrupt(
            key,
            "is not a regular file (a FIFO, device or socket; crmvault writes none: planted in storage?)",
        )),
        _ => Ok(()),
    }
}

/// Whether `key` names a staging file, `<name>#<digits>`: where object_store's writes and the
/// direct writes below stage an object before giving it its name. object_store's listing
/// skips such files and refuses to delete them.
pub(super) fn is_staging_file(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.split_once('#').is_some_and(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
}

/// Large objects (packs) written to a local folder with `O_DIRECT`, past the page cache.
///
/// A buffered write copies every byte into the page cache: 0.7 s of CPU for the 275 MB of a
/// scale-1 full backup on a 2-core VM, a tenth of the backup's own CPU while PostgreSQL needs
/// the other core, and it fills the backup host's cache (often the database server's) with
/// data nobody reads back soon. The staging file is opened with `O_DIRECT` and written in
/// aligned blocks; its publication is every write's ([`put_new`]). Linux only (`O_DIRECT`);
/// elsewhere every write is buffered.
#[cfg(target_os = "linux")]
mod direct {
    use std::io::Write;

    /// Objects at least this large take this path.
    pub const THRESHOLD: usize = 1 << 20;
    /// Alignment of buffers, lengths and offsets that every Linux file system accepts.
    const ALIGN: usize = 4096;
    /// Bytes copied at a time when the caller's buffer is not aligned.
    const BOUNCE: usize = 1 << 20;

    /// Writes `bytes` in aligned blocks (the last one padded with zeros, then cut back to the
    /// true length) and syncs the file.
    pub fn write_aligned(mut file: std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
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
    pub fn is_unsupported(error: &std::io::Error) -> bool {
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
        use super::super::{Outcome, Root, put_new};
        use super::*;

        fn content(length: usize) -> Vec<u8> {
            (0..length).map(|i| u8::try_from((i * 7 + i / 4096) % 251).expect("below 251")).collect()
        }

        #[test]
        fn a_direct_write_of_any_length_reads_back_unchanged_and_leaves_no_staging_file() {
            let folder = tempfile::tempdir().unwrap();
            let root = Root::open(folder.path()).unwrap();
            let mut expected = Vec::new();
            for length in [THRESHOLD, THRESHOLD + 1, 3 * ALIGN + 123, (8 << 20) + 4095] {
                let bytes = content(length);
                // Straight from an aligned buffer, and from an unaligned one through the bounce buffer.
                let mut aligned = AlignedBuffer::new(length);
                aligned.get(length).copy_from_slice(&bytes);
                let unaligned = &content(length + 1)[1..];
                for (way, view) in [("aligned", &*aligned.get(length)), ("unaligned", unaligned)] {
                    let key = format!("data/ab/{way}-{length}");
                    assert_eq!(put_new(&root, &key, view).unwrap(), Outcome::Written);
                    assert_eq!(std::fs::read(folder.path().join(&key)).unwrap(), view, "{key}");
                    expected.push(format!("{way}-{length}"));
                }
            }
            let mut names: Vec<_> = std::fs::read_dir(folder.path().join("data/ab"))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            expected.sort();
            assert_eq!(names, expected);
        }

        #[test]
        fn a_direct_write_never_replaces_an_existing_object() {
            let folder = tempfile::tempdir().unwrap();
            let root = Root::open(folder.path()).unwrap();
            let first = content(THRESHOLD);
            assert_eq!(put_new(&root, "data/pack", &first).unwrap(), Outcome::Written);
            let other = vec![1u8; THRESHOLD];
            assert_eq!(put_new(&root, "data/pack", &other).unwrap(), Outcome::Exists);
            assert_eq!(std::fs::read(folder.path().join("data/pack")).unwrap(), first);
            assert_eq!(std::fs::read_dir(folder.path().join("data")).unwrap().count(), 1);
        }
    }
}
