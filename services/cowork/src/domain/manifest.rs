//! Baseline manifests and change classification.
//!
//! A sandbox's baseline is the SHA-256 of every file and symlink of its source when it was
//! created, with the size, modification time and inode its work copy had then. A later look at
//! the work copy first compares stat facts ([`unchanged_by_stat`]): a file whose inode is still
//! the one hard-linked from the source was never written through the sandbox (the pipeline and a
//! container attach both replace it), and a file whose size, mtime and inode are all unchanged
//! is taken as unchanged, as git does; only the rest is hashed. Pure: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file; the hash is of its bytes.
    File,
    /// A symbolic link; the hash is of its target text.
    Symlink,
}

/// How a work-copy file came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyKind {
    /// A reflink (copy-on-write clone).
    Reflink,
    /// A hard link to the source's inode.
    Hardlink,
    /// A byte copy.
    Copy,
}

/// One baseline entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// File or symlink.
    pub kind: EntryKind,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Modification time of the work copy, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Inode of the work copy.
    pub ino: u64,
    /// Status-change time of the work copy, nanoseconds since the epoch (0 in manifests made
    /// before it was recorded). Unlike the mtime it cannot be set back from user space, so an
    /// in-place rewrite that restores size and mtime (`cp -p`, `touch -r`) is still seen.
    #[serde(default)]
    pub ctime_ns: i64,
    /// Permission bits.
    pub mode: u32,
    /// How the work copy was made.
    pub copy: CopyKind,
}

/// The baseline of a sandbox, keyed by `/`-separated path relative to the tree's root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Every file and symlink.
    pub entries: BTreeMap<String, Entry>,
}

impl Manifest {
    /// Total bytes of the files.
    pub fn total_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }

    /// How many entries were made each way.
    pub fn copy_counts(&self) -> BTreeMap<CopyKind, u64> {
        let mut out = BTreeMap::new();
        for e in self.entries.values() {
            *out.entry(e.copy).or_insert(0) += 1;
        }
        out
    }
}

impl PartialOrd for CopyKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CopyKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// Stat facts of a work-copy entry now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// File or symlink.
    pub kind: EntryKind,
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Inode.
    pub ino: u64,
    /// Status-change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
}

/// True when the stat facts prove (linked inode) or strongly suggest (same size, mtime and
/// inode) that the entry is what the baseline recorded, so it need not be hashed.
pub fn unchanged_by_stat(baseline: &Entry, now: &Observed) -> bool {
    if baseline.kind != now.kind || baseline.ino != now.ino {
        return false;
    }
    baseline.copy == CopyKind::Hardlink
        || (baseline.size == now.size
            && baseline.mtime_ns == now.mtime_ns
            && (baseline.ctime_ns == 0 || baseline.ctime_ns == now.ctime_ns))
}

/// How a path differs from the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Not in the baseline.
    Added,
    /// In the baseline with other content.
    Modified,
    /// In the baseline, gone now.
    Deleted,
}

/// Classifies a path from its baseline entry and its current `(kind, sha256)`.
pub fn classify(baseline: Option<&Entry>, now: Option<(EntryKind, &str)>) -> Option<ChangeKind> {
    match (baseline, now) {
        (None, None) => None,
        (None, Some(_)) => Some(ChangeKind::Added),
        (Some(_), None) => Some(ChangeKind::Deleted),
        (Some(b), Some((kind, sha))) => {
            (b.kind != kind || b.sha256 != sha).then_some(ChangeKind::Modified)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(copy: CopyKind) -> Entry {
        Entry {
            kind: EntryKind::File,
            sha256: "aa".into(),
            size: 3,
            mtime_ns: 10,
            ino: 7,
            ctime_ns: 20,
            mode: 0o644,
            copy,
        }
    }

    #[test]
    fn stat_precheck_spares_hashing_only_when_it_may() {
        let same = Observed {
            kind: EntryKind::File,
            size: 3,
            mtime_ns: 10,
            ino: 7,
            ctime_ns: 20,
        };
        assert!(unchanged_by_stat(&entry(CopyKind::Copy), &same));
        // Size and mtime put back after an in-place rewrite: the ctime still moved.
        let rewritten = Observed {
            ctime_ns: 21,
            ..same
        };
        assert!(!unchanged_by_stat(&entry(CopyKind::Copy), &rewritten));
        // A manifest from before ctimes were recorded falls back to size and mtime.
        let old = Entry {
            ctime_ns: 0,
            ..entry(CopyKind::Copy)
        };
        assert!(unchanged_by_stat(&old, &rewritten));
        let touched = Observed {
            mtime_ns: 11,
            ..same
        };
        assert!(!unchanged_by_stat(&entry(CopyKind::Copy), &touched));
        // Still the source's inode: the source changed, not the sandbox.
        assert!(unchanged_by_stat(&entry(CopyKind::Hardlink), &touched));
        let replaced = Observed { ino: 8, ..same };
        assert!(!unchanged_by_stat(&entry(CopyKind::Hardlink), &replaced));
    }

    #[test]
    fn classification() {
        let b = entry(CopyKind::Copy);
        assert_eq!(
            classify(None, Some((EntryKind::File, "x"))),
            Some(ChangeKind::Added)
        );
        assert_eq!(classify(Some(&b), None), Some(ChangeKind::Deleted));
        assert_eq!(classify(Some(&b), Some((EntryKind::File, "aa"))), None);
        assert_eq!(
            classify(Some(&b), Some((EntryKind::File, "bb"))),
            Some(ChangeKind::Modified)
        );
        assert_eq!(
            classify(Some(&b), Some((EntryKind::Symlink, "aa"))),
            Some(ChangeKind::Modified)
        );
    }
}
