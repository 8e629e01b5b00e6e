//! Path resolution and file operations confined beneath one directory, by file descriptor.
//!
//! [`Beneath::resolve`] walks a request one component at a time from a directory descriptor
//! opened on the root: `statat(.., AT_SYMLINK_NOFOLLOW)` says what each component is, a
//! directory is opened with `openat(.., O_DIRECTORY | O_NOFOLLOW)`, and a symlink is never
//! followed by the kernel: its target is read (`readlinkat`) and spliced into the remaining
//! components, lexically against the real directory it sits in. If the result leaves the root
//! the walk stops there and reports the escaped, lexical path: nothing outside the root is ever
//! opened or even stat-ed. The walk yields a [`Located`]: a descriptor on the directory that holds
//! the target and the target's name in it.
//!
//! How the time-of-check/time-of-use gap is closed: every operation after the check goes through
//! that held descriptor. Reads open the name with `O_NOFOLLOW | O_NONBLOCK` and check with
//! `fstat` that it is still a regular file; writes create a fresh temporary file with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` in the held directory and `renameat` it over the name; deletes
//! `unlinkat` the name in the held directory. So a symlink swapped in after the check, at the
//! target (the open fails with `ELOOP`, or the rename replaces the link itself) or at any parent
//! (the held descriptor still names the directory that was checked), cannot redirect the
//! operation outside the root. What remains is moving a checked directory out of the root
//! between check and use, which needs write access on both sides of the root: a container only
//! sees the sandbox mount, and renames across mounts fail with `EXDEV`.
//!
//! Written by hand on `rustix` (safe `openat`/`statat`/`readlinkat`/`renameat` wrappers): no
//! crate walks with per-component symlink splicing and reports the escaped path the pipeline's
//! stages need. `openat2(RESOLVE_BENEATH)` refuses symlinks outright instead of resolving them.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::domain::path::{RequestedPath, is_within, lexical_normalize};
use crate::domain::permission::{Resolution, TargetKind};

/// Most symlinks one resolution follows (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINKS: usize = 40;

/// A directory operations are confined to.
#[derive(Debug)]
pub struct Beneath {
    root: PathBuf,
    fd: OwnedFd,
}

/// Where a resolved target sits: a descriptor on its directory and its name there.
#[derive(Debug)]
pub struct Located {
    /// The directory that holds the target (the deepest existing one when directories are
    /// missing).
    pub dir: OwnedFd,
    /// Directories still to create below `dir` before `name` (a write into a new directory).
    pub missing_dirs: Vec<String>,
    /// The target's name in its directory; `None` for the root itself.
    pub name: Option<String>,
}

/// The outcome of a walk.
#[derive(Debug)]
pub struct Walk {
    /// What the pipeline decides on.
    pub resolution: Resolution,
    /// Where to operate; `None` when the walk escaped.
    pub located: Option<Located>,
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

fn flags_dir() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Beneath {
    /// Opens `root`, which must be an absolute, canonical directory path.
    pub fn open(root: &Path) -> std::io::Result<Beneath> {
        let fd = rustix::fs::open(root, flags_dir(), Mode::empty()).map_err(errno_io)?;
        Ok(Beneath {
            root: root.to_path_buf(),
            fd,
        })
    }

    /// The root's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves `req` beneath the root. `follow_final` follows a symlink in the last component
    /// (reads and writes act on its target; a delete acts on the link). `Err` is a normalize
    /// failure (a loop, a file used as a directory, an I/O error).
    pub fn resolve(&self, req: &RequestedPath, follow_final: bool) -> Result<Walk, String> {
        let absolute = req.to_absolute(&self.root);
        if !is_within(&absolute, &self.root) {
            return Ok(escaped(absolute));
        }
        let mut pending: VecDeque<String> = components_below(&absolute, &self.root);
        let mut stack: Vec<(String, OwnedFd)> = Vec::new();
        let mut links = 0usize;
        loop {
            let Some(name) = pending.pop_front() else {
                // Only reached for the root itself (`.`); every other walk ends on its last
                // component below.
                let dir = match stack.pop() {
                    Some((_, fd)) => fd,
                    None => self.dup_root()?,
                };
                return Ok(Walk {
                    resolution: Resolution {
                        canonical: self.here(&stack),
                        escaped: false,
                        kind: TargetKind::Directory,
                    },
                    located: Some(Located {
                        dir,
                        missing_dirs: Vec::new(),
                        name: None,
                    }),
                });
            };
            let last = pending.is_empty();
            let dir = match stack.last() {
                Some((_, fd)) => fd.as_fd(),
                None => self.fd.as_fd(),
            };
            let here = self.here(&stack);
            let stat = match rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(s) => s,
                Err(Errno::NOENT) => {
                    let mut canonical = here.join(&name);
                    let mut missing_dirs = Vec::new();
                    let mut final_name = name;
                    for rest in pending {
                        canonical.push(&rest);
                        missing_dirs.push(std::mem::replace(&mut final_name, rest));
                    }
                    let dir = self.dup(dir)?;
                    return Ok(Walk {
                        resolution: Resolution {
                            canonical,
                            escaped: false,
                            kind: TargetKind::Missing,
                        },
                        located: Some(Located {
                            dir,
                            missing_dirs,
                            name: Some(final_name),
                        }),
                    });
                }
                Err(e) => return Err(format!("cannot inspect `{name}`: {e}")),
            };
            let kind = FileType::from_raw_mode(stat.st_mode);
            match kind {
                FileType::Symlink if !last || follow_final => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err("too many levels of symbolic links".into());
                    }
                    let target = rustix::fs::readlinkat(dir, name.as_str(), Vec::new())
                        .map_err(|e| format!("cannot read the link `{name}`: {e}"))?;
                    let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                    let mut next = lexical_normalize(&here.join(target));
                    for rest in &pending {
                        next.push(rest);
                    }
                    if !is_within(&next, &self.root) {
                        return Ok(escaped(next));
                    }
                    pending = components_below(&next, &self.root);
                    stack.clear();
                }
                FileType::Directory if !last => {
                    let fd = rustix::fs::openat(dir, name.as_str(), flags_dir(), Mode::empty())
                        .map_err(|e| format!("cannot open the directory `{name}`: {e}"))?;
                    stack.push((name, fd));
                }
                _ if !last => return Err(format!("`{name}` is not a directory")),
                other => {
                    let kind = match other {
                        FileType::RegularFile => TargetKind::File,
                        FileType::Directory => TargetKind::Directory,
                        FileType::Symlink => TargetKind::Symlink,
                        _ => TargetKind::Other,
                    };
                    let dir = self.dup(dir)?;
                    return Ok(Walk {
                        resolution: Resolution {
                            canonical: here.join(&name),
                            escaped: false,
                            kind,
                        },
                        located: Some(Located {
                            dir,
                            missing_dirs: Vec::new(),
                            name: Some(name),
                        }),
                    });
                }
            }
        }
    }

    fn here(&self, stack: &[(String, OwnedFd)]) -> PathBuf {
        let mut p = self.root.clone();
        for (n, _) in stack {
            p.push(n);
        }
        p
    }

    fn dup_root(&self) -> Result<OwnedFd, String> {
        self.fd
            .try_clone()
            .map_err(|e| format!("cannot duplicate a descriptor: {e}"))
    }

    fn dup(&self, fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, String> {
        fd.try_clone_to_owned()
            .map_err(|e| format!("cannot duplicate a descriptor: {e}"))
    }
}

fn escaped(canonical: PathBuf) -> Walk {
    Walk {
        resolution: Resolution {
            canonical,
            escaped: true,
            kind: TargetKind::Missing,
        },
        located: None,
    }
}

fn components_below(path: &Path, root: &Path) -> VecDeque<String> {
    path.strip_prefix(root)
        .map(|rest| {
            rest.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A directory entry as [`Located::list`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListedEntry {
    /// Name.
    pub name: String,
    /// `file`, `directory`, `symlink` or `other`.
    pub kind: &'static str,
}

impl Located {
    fn name(&self) -> std::io::Result<&str> {
        self.name.as_deref().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "the sandbox root")
        })
    }

    /// Opens the target for reading, refusing anything but a regular file reached without a
    /// symlink.
    pub fn open_read(&self) -> std::io::Result<File> {
        let name = self.name()?;
        let fd = rustix::fs::openat(
            &self.dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_io)?;
        let st = rustix::fs::fstat(&fd).map_err(errno_io)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(File::from(fd))
    }

    /// Reads the whole target, at most `limit` bytes.
    pub fn read(&self, limit: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_read()?.take(limit).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Creates the missing directories and returns a descriptor on the target's directory.
    pub fn make_dirs(&self) -> std::io::Result<OwnedFd> {
        let mut dir = self.dir.try_clone()?;
        for d in &self.missing_dirs {
            match rustix::fs::mkdirat(&dir, d.as_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno_io(e)),
            }
            dir = rustix::fs::openat(&dir, d.as_str(), flags_dir(), Mode::empty())
                .map_err(errno_io)?;
        }
        Ok(dir)
    }

    /// Writes `bytes` as the target, atomically: a fresh temporary file in the held directory,
    /// synced, then renamed over the name. A hard-linked or reflinked baseline file is thereby
    /// replaced, never written through. `before_commit` runs between the sync and the rename
    /// (the session's byte budget is charged there); its error aborts the write.
    pub fn write_atomic<E>(
        &self,
        bytes: &[u8],
        before_commit: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), WriteError<E>> {
        let name = self.name().map_err(WriteError::Io)?;
        let dir = self.make_dirs().map_err(WriteError::Io)?;
        let mode = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(WriteError::Io(std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "the target is a directory",
                )));
            }
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                st.st_mode & 0o7777
            }
            _ => 0o644,
        };
        let tmp = temp_name();
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| WriteError::Io(errno_io(e)))?;
        let cleanup = |dir: &OwnedFd| {
            let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        };
        let mut file = File::from(fd);
        if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
            cleanup(&dir);
            return Err(WriteError::Io(e));
        }
        if let Err(e) = before_commit() {
            cleanup(&dir);
            return Err(WriteError::Refused(e));
        }
        if let Err(e) = rustix::fs::renameat(&dir, tmp.as_str(), &dir, name) {
            cleanup(&dir);
            return Err(WriteError::Io(errno_io(e)));
        }
        Ok(())
    }

    /// Removes the target (a file or a symlink itself, never what a symlink points at).
    pub fn delete(&self) -> std::io::Result<()> {
        let name = self.name()?;
        rustix::fs::unlinkat(&self.dir, name, AtFlags::empty()).map_err(errno_io)
    }

    /// Lists the target directory, sorted by name.
    pub fn list(&self) -> std::io::Result<Vec<ListedEntry>> {
        let fd = match &self.name {
            Some(name) => rustix::fs::openat(&self.dir, name.as_str(), flags_dir(), Mode::empty())
                .map_err(errno_io)?,
            None => self.dir.try_clone()?,
        };
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd).map_err(errno_io)? {
            let entry = entry.map_err(errno_io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                FileType::RegularFile => "file",
                FileType::Directory => "directory",
                FileType::Symlink => "symlink",
                _ => "other",
            };
            out.push(ListedEntry { name, kind });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Why [`Located::write_atomic`] did not commit.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The filesystem failed (nothing was replaced).
    Io(std::io::Error),
    /// The pre-commit hook refused (nothing was replaced).
    Refused(E),
}

/// A fresh temporary file name (hidden, unique).
pub fn temp_name() -> String {
    format!(".liquid-{}.tmp", uuid::Uuid::now_v7().simple())
}
