//! Whole-tree work for sandboxes: making the work copy with its SHA-256 baseline, observing the
//! work copy's stat facts, hashing, and writing files into a tree atomically.
//!
//! The work copy is made per file with a reflink (`FICLONE`: copy-on-write, on btrfs, XFS,
//! bcachefs), else a hard link to the source's inode, else a byte copy; the first refusal of a
//! kind (`EOPNOTSUPP`, `EXDEV`, ...) is remembered for the rest of the tree. A hard-linked file
//! shares its inode with the source, so it must never be written in place: the permission
//! pipeline replaces files by rename, and [`materialize`] copies the still-linked files before a
//! container (which writes in place) gets the directory. Symlinks are recreated as symlinks,
//! never followed; devices, sockets and pipes are skipped. These functions block: callers run
//! them in `spawn_blocking`. Nothing here spawns a shell.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::CopyMode;
use crate::domain::manifest::{CopyKind, Entry, EntryKind, Manifest, Observed};

/// What [`create_work_copy`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkCopy {
    /// The baseline.
    pub manifest: Manifest,
    /// Special files that were left out.
    pub skipped: Vec<String>,
}

/// Why a tree could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// More entries than allowed.
    #[error("the source has more than {0} entries")]
    TooManyFiles(usize),
    /// An I/O failure on a path.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// What.
        source: io::Error,
    },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Nanoseconds since the epoch of a metadata's mtime.
pub fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// Nanoseconds since the epoch of a metadata's ctime.
pub fn ctime_ns(m: &fs::Metadata) -> i64 {
    m.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.ctime_nsec())
}

/// `/`-joined relative path.
fn join_rel(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

struct Placer {
    reflink: bool,
    hardlink: bool,
}

impl Placer {
    fn place(&mut self, src: &Path, dst: &Path) -> io::Result<CopyKind> {
        if self.reflink {
            match reflink(src, dst) {
                Ok(()) => return Ok(CopyKind::Reflink),
                Err(_) => {
                    let _ = fs::remove_file(dst);
                    self.reflink = false;
                }
            }
        }
        if self.hardlink {
            match fs::hard_link(src, dst) {
                Ok(()) => return Ok(CopyKind::Hardlink),
                Err(_) => self.hardlink = false,
            }
        }
        fs::copy(src, dst)?;
        Ok(CopyKind::Copy)
    }
}

fn reflink(src: &Path, dst: &Path) -> io::Result<()> {
    let from = File::open(src)?;
    let mode = from.metadata()?.permissions().mode();
    let to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    rustix::fs::ioctl_ficlone(&to, &from).map_err(io::Error::from)?;
    to.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies `source` into the new directory `work` and records the baseline. `work` must not
/// exist yet.
pub fn create_work_copy(
    source: &Path,
    work: &Path,
    mode: CopyMode,
    max_files: usize,
) -> Result<WorkCopy, TreeError> {
    fs::create_dir_all(work).map_err(at(work))?;
    let mut placer = Placer {
        reflink: mode == CopyMode::Auto,
        hardlink: mode == CopyMode::Auto,
    };
    let mut entries = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut count = 0usize;
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let src_dir = source.join(&rel);
        let read = fs::read_dir(&src_dir).map_err(at(&src_dir))?;
        for item in read {
            let item = item.map_err(at(&src_dir))?;
            count += 1;
            if count > max_files {
                return Err(TreeError::TooManyFiles(max_files));
            }
            let name = item.file_name().to_string_lossy().into_owned();
            let child = join_rel(&rel, &name);
            let src = item.path();
            let dst = work.join(&child);
            let ft = item.file_type().map_err(at(&src))?;
            if ft.is_dir() {
                fs::create_dir(&dst).map_err(at(&dst))?;
                let perm = fs::symlink_metadata(&src).map_err(at(&src))?.permissions();
                fs::set_permissions(&dst, perm).map_err(at(&dst))?;
                dirs.push(child);
            } else if ft.is_symlink() {
                let target = fs::read_link(&src).map_err(at(&src))?;
                symlink(&target, &dst).map_err(at(&dst))?;
                let m = fs::symlink_metadata(&dst).map_err(at(&dst))?;
                let text = target.as_os_str().as_encoded_bytes();
                entries.insert(
                    child,
                    Entry {
                        kind: EntryKind::Symlink,
                        sha256: hex::encode(Sha256::digest(text)),
                        size: text.len() as u64,
                        mtime_ns: mtime_ns(&m),
                        ino: m.ino(),
                        ctime_ns: ctime_ns(&m),
                        mode: 0o777,
                        copy: CopyKind::Copy,
                    },
                );
            } else if ft.is_file() {
                let copy = placer.place(&src, &dst).map_err(at(&dst))?;
                let m = fs::symlink_metadata(&dst).map_err(at(&dst))?;
                entries.insert(
                    child,
                    Entry {
                        kind: EntryKind::File,
                        sha256: String::new(),
                        size: m.len(),
                        mtime_ns: mtime_ns(&m),
                        ino: m.ino(),
                        ctime_ns: ctime_ns(&m),
                        mode: m.mode() & 0o7777,
                        copy,
                    },
                );
            } else {
                skipped.push(child);
            }
        }
    }
    let files: Vec<&String> = entries
        .iter()
        .filter(|(_, e)| e.kind == EntryKind::File)
        .map(|(k, _)| k)
        .collect();
    let hashes = hash_many(work, &files)?;
    for (path, sha) in hashes {
        if let Some(e) = entries.get_mut(&path) {
            e.sha256 = sha;
        }
    }
    Ok(WorkCopy {
        manifest: Manifest { entries },
        skipped,
    })
}

/// Hashes files under `root` on every core (scoped threads; callers are already on a
/// blocking thread).
pub fn hash_many(root: &Path, files: &[&String]) -> Result<Vec<(String, String)>, TreeError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|rel| {
                            let p = root.join(rel);
                            hash_file(&p).map(|h| ((*rel).clone(), h)).map_err(at(&p))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(files.len());
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part?),
                Err(_) => {
                    return Err(TreeError::Io {
                        path: root.display().to_string(),
                        source: io::Error::other("a hashing thread panicked"),
                    });
                }
            }
        }
        Ok(out)
    })
}

/// Lower-case hex SHA-256 of a file's bytes.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    hash_reader(&mut file)
}

/// Lower-case hex SHA-256 of everything `r` yields.
pub fn hash_reader(r: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The `(kind, sha256)` of a path in a tree now, not following a final symlink; `None` when it
/// is missing (or is a directory or special file).
pub fn identify(path: &Path) -> io::Result<Option<(EntryKind, String)>> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if m.file_type().is_symlink() {
        let target = fs::read_link(path)?;
        let sha = hex::encode(Sha256::digest(target.as_os_str().as_encoded_bytes()));
        Ok(Some((EntryKind::Symlink, sha)))
    } else if m.is_file() {
        Ok(Some((EntryKind::File, hash_file(path)?)))
    } else {
        Ok(None)
    }
}

/// Stat facts of a path (not following a final symlink); `None` when missing, a directory or
/// a special file.
pub fn observe(path: &Path) -> io::Result<Option<Observed>> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let kind = if m.file_type().is_symlink() {
        EntryKind::Symlink
    } else if m.is_file() {
        EntryKind::File
    } else {
        return Ok(None);
    };
    Ok(Some(Observed {
        kind,
        size: m.len(),
        mtime_ns: mtime_ns(&m),
        ino: m.ino(),
        ctime_ns: ctime_ns(&m),
    }))
}

/// Every file and symlink below `dir` (relative to `root`), without following symlinks.
pub fn walk(root: &Path, dir: &str) -> io::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(rel) = dirs.pop() {
        let read = match fs::read_dir(root.join(&rel)) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
                continue;
            }
            Err(e) => return Err(e),
        };
        for item in read {
            let item = item?;
            let child = join_rel(&rel, &item.file_name().to_string_lossy());
            let ft = item.file_type()?;
            if ft.is_dir() {
                dirs.push(child);
            } else if ft.is_file() || ft.is_symlink() {
                out.insert(child);
            }
        }
    }
    Ok(out)
}

/// Replaces every file of `work` that still shares its inode with the source (hard links) by
/// a private copy, so that in-place writes (a container's) cannot reach the source. Returns
/// how many files were copied.
pub fn materialize(work: &Path, manifest: &Manifest) -> io::Result<u64> {
    let mut copied = 0;
    for (rel, e) in &manifest.entries {
        if e.copy != CopyKind::Hardlink {
            continue;
        }
        let path = work.join(rel);
        let m = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        if !m.is_file() || m.ino() != e.ino {
            continue;
        }
        let tmp = path.with_file_name(super::beneath::temp_name());
        fs::copy(&path, &tmp)?;
        let mtime = filetime_of(&m);
        // Keep the mtime so the stat pre-check still recognises the file as unchanged.
        File::options()
            .write(true)
            .open(&tmp)?
            .set_modified(mtime)?;
        fs::rename(&tmp, &path)?;
        copied += 1;
    }
    Ok(copied)
}

fn filetime_of(m: &fs::Metadata) -> std::time::SystemTime {
    m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH)
}

/// Writes the file or symlink at `from` to `dest_root/rel` atomically (temporary file in the
/// same directory, synced, renamed), creating parent directories, never following a symlink
/// inside `dest_root`. Returns the SHA-256 written.
pub fn install(from: &Path, dest: &super::beneath::Beneath, rel: &str) -> io::Result<String> {
    let req = crate::domain::path::parse_request(rel)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let walk = dest
        .resolve(&req, false)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if walk.resolution.escaped {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the destination passes through a symlink out of the tree",
        ));
    }
    let located = walk
        .located
        .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "outside the tree"))?;
    let m = fs::symlink_metadata(from)?;
    if m.file_type().is_symlink() {
        let target = fs::read_link(from)?;
        let dir = located.make_dirs()?;
        let name = located
            .name
            .as_deref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let tmp = super::beneath::temp_name();
        rustix::fs::symlinkat(target.as_path(), &dir, tmp.as_str()).map_err(io::Error::from)?;
        rustix::fs::renameat(&dir, tmp.as_str(), &dir, name).map_err(io::Error::from)?;
        return Ok(hex::encode(Sha256::digest(
            target.as_os_str().as_encoded_bytes(),
        )));
    }
    let bytes = fs::read(from)?;
    let sha = hex::encode(Sha256::digest(&bytes));
    located
        .write_atomic::<io::Error>(&bytes, || Ok(()))
        .map_err(|e| match e {
            super::beneath::WriteError::Io(e) | super::beneath::WriteError::Refused(e) => e,
        })?;
    // Keep the work copy's permission bits (the executable bit matters).
    let dir = located.make_dirs()?;
    if let Some(name) = located.name.as_deref() {
        let fd = rustix::fs::openat(
            &dir,
            name,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(io::Error::from)?;
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(m.mode() & 0o7777))
            .map_err(io::Error::from)?;
    }
    Ok(sha)
}

/// Removes `dest_root/rel` (a file or symlink), never following a symlink inside the tree;
/// a missing file is fine.
pub fn remove(dest: &super::beneath::Beneath, rel: &str) -> io::Result<()> {
    let req = crate::domain::path::parse_request(rel)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let walk = dest
        .resolve(&req, false)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    match walk.located {
        Some(l) if !walk.resolution.escaped => match l.delete() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
        _ => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the path passes through a symlink out of the tree",
        )),
    }
}

/// Removes a directory tree if it exists.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Canonical form of an existing directory.
pub fn canonical_dir(path: &Path) -> io::Result<PathBuf> {
    let c = fs::canonicalize(path)?;
    if !c.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    Ok(c)
}

/// When this process runs as root (it owns `work`'s parent as uid 0), changes the owner of
/// `work` and everything beneath it (symlinks themselves, never their targets) to `uid:gid`;
/// returns the paths that changed. As any other user, changes nothing.
pub fn hand_over(work: &Path, uid: u32, gid: u32) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let parent = work.parent().unwrap_or(work);
    if std::fs::metadata(parent)?.uid() != 0 {
        return Ok(Vec::new());
    }
    let mut changed = Vec::new();
    let mut stack = vec![work.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
            changed.push(path.clone());
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(changed)
}
