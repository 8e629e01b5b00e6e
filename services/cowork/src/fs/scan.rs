//! Whole-tree stat scans of a work copy, and the descriptor-relative removal and restoration a
//! container-change check needs.
//!
//! A container command writes the mounted work copy directly, so what it changed is found by
//! comparing two scans. Names are kept as raw bytes: a name no agent request could spell (a
//! newline, invalid UTF-8) must still be seen, judged and removed. Every step descends with
//! `openat(.., O_DIRECTORY | O_NOFOLLOW)` from a descriptor on the root and acts with
//! `unlinkat`/`renameat` in the held parent, so a symlink swapped in by a process still running
//! in the container cannot redirect a scan, a removal or a restore outside the tree. These
//! functions block: callers run them in `spawn_blocking`. Nothing here spawns a shell.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::beneath::temp_name;

/// A path relative to the scanned root: raw name bytes joined by `/`.
pub type RawPath = Vec<u8>;

/// What a scanned entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A symbolic link (never followed).
    Symlink,
    /// A directory.
    Dir,
    /// A fifo, socket or device.
    Other,
}

/// Stat facts of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: NodeKind,
    /// Bytes (files), target length (symlinks).
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status-change time, nanoseconds since the epoch (a `chmod` moves it).
    pub ctime_ns: i64,
    /// Inode.
    pub ino: u64,
    /// Permission bits including set-id and sticky.
    pub mode: u32,
}

/// Every entry below the root (not the root itself), by relative path.
pub type Scan = BTreeMap<RawPath, Node>;

/// Most entries one scan visits; a tree past this is refused rather than half-checked.
pub const MAX_ENTRIES: usize = 1_000_000;

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn node_of(st: &rustix::fs::Stat) -> Node {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => NodeKind::File,
        FileType::Symlink => NodeKind::Symlink,
        FileType::Directory => NodeKind::Dir,
        _ => NodeKind::Other,
    };
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    Node {
        kind,
        size: st.st_size as u64,
        mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
        ino: st.st_ino as u64,
        mode: st.st_mode & 0o7777,
    }
}

fn join(parent: &[u8], name: &[u8]) -> RawPath {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Scans everything below `root` without following a symlink.
pub fn scan(root: &Path) -> io::Result<Scan> {
    let fd = rustix::fs::open(root, dir_flags(), Mode::empty()).map_err(errno)?;
    let mut out = Scan::new();
    let mut dirs: Vec<(RawPath, OwnedFd)> = vec![(Vec::new(), fd)];
    while let Some((rel, dir)) = dirs.pop() {
        for entry in rustix::fs::Dir::read_from(&dir).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            // Gone between the listing and the stat: a temporary file renamed away.
            let st = match rustix::fs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(errno(e)),
            };
            let node = node_of(&st);
            let path = join(&rel, name);
            if node.kind == NodeKind::Dir {
                match rustix::fs::openat(&dir, entry.file_name(), dir_flags(), Mode::empty()) {
                    Ok(child) => dirs.push((path.clone(), child)),
                    Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            out.insert(path, node);
            if out.len() > MAX_ENTRIES {
                return Err(io::Error::other(format!(
                    "the work copy has more than {MAX_ENTRIES} entries"
                )));
            }
        }
    }
    Ok(out)
}

/// Descriptor on the directory holding `rel` and the final name; `create` makes missing
/// directories (mode 0755). `Ok(None)` when a parent is missing (and `create` is off) or is not
/// a directory (a symlink is never followed).
fn parent_of<'a>(
    root: &Path,
    rel: &'a [u8],
    create: bool,
) -> io::Result<Option<(OwnedFd, &'a [u8])>> {
    let mut parts: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    let Some(name) = parts.pop().filter(|n| !n.is_empty()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    };
    let mut dir = rustix::fs::open(root, dir_flags(), Mode::empty()).map_err(errno)?;
    for part in parts {
        let part = OsStr::from_bytes(part);
        if create {
            match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        dir = match rustix::fs::openat(&dir, part, dir_flags(), Mode::empty()) {
            Ok(d) => d,
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(None),
            Err(e) => return Err(errno(e)),
        };
    }
    Ok(Some((dir, name)))
}

/// Stat facts of `rel` now (not following a final symlink); `None` when it is not there.
pub fn stat(root: &Path, rel: &[u8]) -> io::Result<Option<Node>> {
    let Some((dir, name)) = parent_of(root, rel, false)? else {
        return Ok(None);
    };
    match rustix::fs::statat(&dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(node_of(&st))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

fn remove_dir_contents(dir: &OwnedFd) -> io::Result<()> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(errno)? {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push((name, entry.file_type()));
        }
    }
    for (name, kind) in names {
        remove_at(dir, &name, kind == FileType::Directory)?;
    }
    Ok(())
}

fn remove_at(dir: &OwnedFd, name: &std::ffi::CStr, is_dir: bool) -> io::Result<()> {
    if is_dir {
        match rustix::fs::openat(dir, name, dir_flags(), Mode::empty()) {
            Ok(child) => remove_dir_contents(&child)?,
            Err(Errno::NOENT) => return Ok(()),
            // Swapped for a non-directory since the listing: unlink that instead.
            Err(Errno::NOTDIR | Errno::LOOP) => return remove_at(dir, name, false),
            Err(e) => return Err(errno(e)),
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    } else {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) => remove_at(dir, name, true),
            Err(e) => Err(errno(e)),
        }
    }
}

/// Removes `rel` (a file, symlink, special file, or a directory with everything in it); a
/// missing path is fine.
pub fn remove(root: &Path, rel: &[u8]) -> io::Result<()> {
    let Some((dir, name)) = parent_of(root, rel, false)? else {
        return Ok(());
    };
    let name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name with NUL"))?;
    let is_dir = matches!(
        rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory
    );
    remove_at(&dir, &name, is_dir)
}

/// What to put back at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A regular file's bytes and permission bits.
    File(Vec<u8>, u32),
    /// A symlink's target.
    Symlink(Vec<u8>),
}

/// Reads what `rel` holds under `root` (a file or the symlink itself), never following a
/// symlink; `None` when it is not there or is neither.
pub fn read(root: &Path, rel: &[u8]) -> io::Result<Option<Content>> {
    let Some((dir, name)) = parent_of(root, rel, false)? else {
        return Ok(None);
    };
    let name = OsStr::from_bytes(name);
    let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(errno(e)),
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(&dir, name, Vec::new()).map_err(errno)?;
            Ok(Some(Content::Symlink(target.into_bytes())))
        }
        FileType::RegularFile => {
            let fd = rustix::fs::openat(
                &dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?;
            let st = rustix::fs::fstat(&fd).map_err(errno)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                return Ok(None);
            }
            let mut bytes = Vec::new();
            std::fs::File::from(fd).read_to_end(&mut bytes)?;
            Ok(Some(Content::File(bytes, st.st_mode & 0o777)))
        }
        _ => Ok(None),
    }
}

/// Puts `content` at `rel` atomically (a fresh temporary in the parent, renamed over the name),
/// creating missing parent directories and first removing a directory that stands there.
pub fn restore(root: &Path, rel: &[u8], content: &Content) -> io::Result<()> {
    let Some((dir, name)) = parent_of(root, rel, true)? else {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "a parent is not a directory",
        ));
    };
    let name = OsStr::from_bytes(name);
    if let Ok(st) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
        && FileType::from_raw_mode(st.st_mode) == FileType::Directory
    {
        let cname = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name with NUL"))?;
        remove_at(&dir, &cname, true)?;
    }
    let tmp = temp_name();
    match content {
        Content::Symlink(target) => {
            rustix::fs::symlinkat(OsStr::from_bytes(target), &dir, tmp.as_str()).map_err(errno)?;
        }
        Content::File(bytes, mode) => {
            let fd = rustix::fs::openat(
                &dir,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(*mode & 0o777),
            )
            .map_err(errno)?;
            // The umask may have narrowed the bits: set them as recorded.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(*mode & 0o777)).map_err(errno)?;
            let mut f = std::fs::File::from(fd);
            if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
                let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
                return Err(e);
            }
        }
    }
    if let Err(e) = rustix::fs::renameat(&dir, tmp.as_str(), &dir, name) {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        return Err(errno(e));
    }
    Ok(())
}

/// Sets the permission bits of the file at `rel` (never through a symlink).
pub fn chmod(root: &Path, rel: &[u8], mode: u32) -> io::Result<()> {
    let Some((dir, name)) = parent_of(root, rel, false)? else {
        return Ok(());
    };
    let fd = rustix::fs::openat(
        &dir,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(errno)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn scans_raw_names_and_never_follows_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root = t.path();
        std::fs::create_dir(root.join("src")).unwrap();
        std::fs::write(root.join("src/a.txt"), b"hello").unwrap();
        std::fs::write(root.join(OsStr::from_bytes(b"bad\nname")), b"x").unwrap();
        symlink(outside.path(), root.join("out")).unwrap();
        let s = scan(root).unwrap();
        let keys: Vec<&[u8]> = s.keys().map(Vec::as_slice).collect();
        assert_eq!(
            keys,
            vec![&b"bad\nname"[..], b"out", b"src", b"src/a.txt"],
            "the symlinked directory is listed, not entered"
        );
        assert_eq!(s[&b"src/a.txt".to_vec()].kind, NodeKind::File);
        assert_eq!(s[&b"src/a.txt".to_vec()].size, 5);
        assert_eq!(s[&b"out".to_vec()].kind, NodeKind::Symlink);
        assert_eq!(s[&b"src".to_vec()].kind, NodeKind::Dir);
    }

    #[test]
    fn remove_and_restore_stay_beneath_the_root() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"outside").unwrap();
        let root = t.path();
        symlink(outside.path(), root.join("link")).unwrap();
        // A path through the symlink is not a path beneath the root: nothing outside moves.
        remove(root, b"link/keep").unwrap();
        assert!(outside.path().join("keep").exists());
        assert!(restore(root, b"link/keep", &Content::File(b"no".to_vec(), 0o644)).is_err());
        assert_eq!(
            std::fs::read(outside.path().join("keep")).unwrap(),
            b"outside"
        );
        // Removing the link removes the link.
        remove(root, b"link").unwrap();
        assert!(!root.join("link").exists() && outside.path().join("keep").exists());

        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/f"), b"f").unwrap();
        remove(root, b"d").unwrap();
        assert!(!root.join("d").exists());

        restore(
            root,
            b"new/dir/file.sh",
            &Content::File(b"#!/bin/sh\n".to_vec(), 0o755),
        )
        .unwrap();
        assert_eq!(
            read(root, b"new/dir/file.sh").unwrap(),
            Some(Content::File(b"#!/bin/sh\n".to_vec(), 0o755))
        );
        restore(root, b"new/l", &Content::Symlink(b"dir/file.sh".to_vec())).unwrap();
        assert_eq!(
            read(root, b"new/l").unwrap(),
            Some(Content::Symlink(b"dir/file.sh".to_vec()))
        );
        // A directory standing where the file was is replaced by the file.
        std::fs::create_dir_all(root.join("x/y")).unwrap();
        restore(root, b"x", &Content::File(b"back".to_vec(), 0o600)).unwrap();
        assert_eq!(std::fs::read(root.join("x")).unwrap(), b"back");
    }
}
