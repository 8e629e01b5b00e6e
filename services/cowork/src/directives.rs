//! The planner's prompt and the agents' directives: versioned files in
//! `services/cowork/directives/` (`planner.md`, `agents/<domain>.md`) listed with their
//! version and SHA-256 in `manifest.json`. They are verified at start-up — the copies built
//! into the binary, or the directory `directives.dir` names — and a file whose checksum does not
//! match, a listed file that is missing and an unlisted file all stop the service, naming the
//! file. [`verify`] is what `liquid directives verify` calls: a [`VerifyReport`] with every
//! problem, printable for people.
//!
//! This module reads and checks text; what the text says belongs to the planner and the agent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::CoworkError;

/// The manifest's name inside a directives directory.
pub const MANIFEST: &str = "manifest.json";
/// The planner's prompt.
pub const PLANNER: &str = "planner.md";

/// The files built into the binary, by manifest path.
const EMBEDDED: [(&str, &str); 6] = [
    (PLANNER, include_str!("../directives/planner.md")),
    ("agents/api.md", include_str!("../directives/agents/api.md")),
    (
        "agents/general.md",
        include_str!("../directives/agents/general.md"),
    ),
    (
        "agents/security.md",
        include_str!("../directives/agents/security.md"),
    ),
    (
        "agents/test.md",
        include_str!("../directives/agents/test.md"),
    ),
    ("agents/ui.md", include_str!("../directives/agents/ui.md")),
];
const EMBEDDED_MANIFEST: &str = include_str!("../directives/manifest.json");

/// One manifest entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// The file's version (raised on every change of its text).
    pub version: u32,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format (1).
    pub format: u32,
    /// Entries by path relative to the directory.
    pub files: BTreeMap<String, ManifestEntry>,
}

/// A verified directive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directive {
    /// Path relative to the directory (`agents/ui.md`).
    pub path: String,
    /// Version from the manifest.
    pub version: u32,
    /// SHA-256, verified.
    pub sha256: String,
    /// The text.
    #[serde(skip)]
    pub text: String,
}

/// A verified set of directives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// Where they came from (`embedded` or the directory).
    pub origin: String,
    /// By path.
    pub files: BTreeMap<String, Directive>,
}

fn failure(file: &str, reason: impl Into<String>) -> CoworkError {
    CoworkError::Directive {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

/// What verification found for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileStatus {
    /// Present, listed, and its bytes hash to the listed SHA-256.
    Ok,
    /// Its bytes hash to something else than the manifest lists.
    ChecksumMismatch {
        /// SHA-256 the manifest lists.
        expected: String,
        /// SHA-256 of the bytes on disk.
        actual: String,
    },
    /// Listed in the manifest, absent from the directory.
    Missing,
    /// In the directory, not listed in the manifest.
    Unlisted,
    /// A symlink, socket or other non-regular file where a directive should be.
    NotRegularFile,
    /// Checksum matches but the bytes are not UTF-8 text.
    NotUtf8,
}

impl FileStatus {
    /// The one-line reason, as the start-up error and the report print it.
    fn reason(&self) -> String {
        match self {
            FileStatus::Ok => "ok".into(),
            FileStatus::ChecksumMismatch { expected, actual } => {
                format!("checksum mismatch: manifest says {expected}, the file hashes to {actual}")
            }
            FileStatus::Missing => "is listed in manifest.json but missing".into(),
            FileStatus::Unlisted => "is not listed in manifest.json".into(),
            FileStatus::NotRegularFile => "is not a regular file".into(),
            FileStatus::NotUtf8 => "is not UTF-8 text".into(),
        }
    }
}

/// One file of a [`VerifyReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileCheck {
    /// Path relative to the directory (`agents/ui.md`).
    pub path: String,
    /// Version the manifest lists (none for an unlisted file).
    pub version: Option<u32>,
    /// What was found.
    #[serde(flatten)]
    pub status: FileStatus,
}

/// The outcome of verifying a directives directory: every file's status and the manifest's
/// own problems, all of them (not only the first). `Display` renders it for people, one line
/// per file and a closing summary line, each ending in a newline; it serializes to JSON for
/// machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The directory verified, or `embedded`.
    pub origin: String,
    /// Manifest format.
    pub format: u32,
    /// Problems of the manifest itself (wrong format, a required file not listed).
    pub manifest_problems: Vec<String>,
    /// Every listed or present file, sorted by path.
    pub files: Vec<FileCheck>,
}

impl VerifyReport {
    /// True when the manifest is sound and every file is [`FileStatus::Ok`].
    pub fn is_ok(&self) -> bool {
        self.manifest_problems.is_empty() && self.files.iter().all(|f| f.status == FileStatus::Ok)
    }

    /// How many problems were found (manifest and files).
    pub fn problem_count(&self) -> usize {
        self.manifest_problems.len()
            + self
                .files
                .iter()
                .filter(|f| f.status != FileStatus::Ok)
                .count()
    }

    /// The first problem as the error start-up fails with, if any.
    fn first_error(&self) -> Option<CoworkError> {
        if let Some(p) = self.manifest_problems.first() {
            return Some(failure(MANIFEST, p.clone()));
        }
        self.files
            .iter()
            .find(|f| f.status != FileStatus::Ok)
            .map(|f| failure(&f.path, f.status.reason()))
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "directives: {} (manifest format {})",
            self.origin, self.format
        )?;
        for p in &self.manifest_problems {
            writeln!(f, "  FAIL  {MANIFEST}: {p}")?;
        }
        for file in &self.files {
            let version = file
                .version
                .map_or_else(|| "-".to_owned(), |v| format!("v{v}"));
            match &file.status {
                FileStatus::Ok => writeln!(f, "  ok    {} {version}", file.path)?,
                other => writeln!(f, "  FAIL  {} {version}: {}", file.path, other.reason())?,
            }
        }
        if self.is_ok() {
            writeln!(f, "{} files verified", self.files.len())
        } else {
            writeln!(
                f,
                "{} problem(s) in {} files",
                self.problem_count(),
                self.files.len()
            )
        }
    }
}

/// Checks `files` (relative path → bytes) and the non-regular entries against the manifest.
/// Errs only when the manifest cannot be read as one; every other problem is in the report.
fn inspect(
    origin: String,
    manifest_text: &str,
    files: &BTreeMap<String, Vec<u8>>,
    irregular: &[String],
) -> Result<(VerifyReport, BTreeMap<String, Directive>), CoworkError> {
    let manifest: Manifest = serde_json::from_str(manifest_text)
        .map_err(|e| failure(MANIFEST, format!("not a directives manifest: {e}")))?;
    let mut manifest_problems = Vec::new();
    if manifest.format != 1 {
        manifest_problems.push(format!("format {} is not 1", manifest.format));
    }
    for required in [PLANNER, "agents/general.md"] {
        if !manifest.files.contains_key(required) {
            manifest_problems.push(format!("must list {required}"));
        }
    }
    let mut paths: Vec<&String> = manifest
        .files
        .keys()
        .chain(files.keys())
        .chain(irregular.iter())
        .collect();
    paths.sort();
    paths.dedup();
    let mut checks = Vec::new();
    let mut verified = BTreeMap::new();
    for path in paths {
        let entry = manifest.files.get(path);
        let status = match (entry, files.get(path)) {
            (None, _) => FileStatus::Unlisted,
            (Some(_), None) if irregular.contains(path) => FileStatus::NotRegularFile,
            (Some(_), None) => FileStatus::Missing,
            (Some(entry), Some(bytes)) => {
                let actual = hex::encode(Sha256::digest(bytes));
                if actual != entry.sha256.to_ascii_lowercase() {
                    FileStatus::ChecksumMismatch {
                        expected: entry.sha256.clone(),
                        actual,
                    }
                } else if let Ok(text) = String::from_utf8(bytes.clone()) {
                    verified.insert(
                        path.clone(),
                        Directive {
                            path: path.clone(),
                            version: entry.version,
                            sha256: actual,
                            text,
                        },
                    );
                    FileStatus::Ok
                } else {
                    FileStatus::NotUtf8
                }
            }
        };
        checks.push(FileCheck {
            path: path.clone(),
            version: entry.map(|e| e.version),
            status,
        });
    }
    let report = VerifyReport {
        origin,
        format: manifest.format,
        manifest_problems,
        files: checks,
    };
    Ok((report, verified))
}

/// Verification for start-up: the first problem stops the service.
fn verified(
    origin: String,
    manifest_text: &str,
    files: &BTreeMap<String, Vec<u8>>,
    irregular: &[String],
) -> Result<Directives, CoworkError> {
    let (report, files) = inspect(origin.clone(), manifest_text, files, irregular)?;
    match report.first_error() {
        Some(e) => Err(e),
        None => Ok(Directives { origin, files }),
    }
}

/// Verifies the directives built into this binary.
pub fn verify_embedded() -> Result<Directives, CoworkError> {
    verified("embedded".into(), EMBEDDED_MANIFEST, &embedded_files(), &[])
}

fn embedded_files() -> BTreeMap<String, Vec<u8>> {
    EMBEDDED
        .iter()
        .map(|(p, t)| ((*p).to_owned(), t.as_bytes().to_vec()))
        .collect()
}

/// The files under `dir` (relative path → bytes, the manifest left out) and the entries that
/// are not regular files (symlinks are never followed).
#[derive(Default)]
struct Collected {
    files: BTreeMap<String, Vec<u8>>,
    irregular: Vec<String>,
}

fn collect(root: &Path, dir: &Path, out: &mut Collected) -> Result<(), CoworkError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CoworkError::io(format!("directives {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CoworkError::io("directives", e))?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .map(|p| p.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        let kind = entry
            .file_type()
            .map_err(|e| CoworkError::io(format!("directives {rel}"), e))?;
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if rel != MANIFEST {
            if kind.is_file() {
                let bytes = std::fs::read(&path)
                    .map_err(|e| CoworkError::io(format!("directives {rel}"), e))?;
                out.files.insert(rel, bytes);
            } else {
                out.irregular.push(rel);
            }
        }
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<(String, Collected), CoworkError> {
    let manifest_path: PathBuf = dir.join(MANIFEST);
    let manifest = std::fs::read_to_string(&manifest_path).map_err(|e| {
        failure(
            MANIFEST,
            format!("cannot read {}: {e}", manifest_path.display()),
        )
    })?;
    let mut collected = Collected::default();
    collect(dir, dir, &mut collected)?;
    Ok((manifest, collected))
}

/// Verifies the directives in `dir` against its `manifest.json`: every listed file present
/// with the listed SHA-256, no unlisted file. The error names the first file at fault.
pub fn verify_dir(dir: &Path) -> Result<Directives, CoworkError> {
    let (manifest, c) = read_dir(dir)?;
    verified(dir.display().to_string(), &manifest, &c.files, &c.irregular)
}

/// `liquid directives verify DIR`: checks every file in `dir` against its `manifest.json` and
/// reports all problems, not only the first. Errs (naming `manifest.json` or the directory)
/// only when there is nothing to verify against: the manifest is unreadable or not a
/// manifest, or the directory cannot be listed. Print the report with `{}`; exit non-zero
/// when [`VerifyReport::is_ok`] is false.
pub fn verify(dir: &Path) -> Result<VerifyReport, CoworkError> {
    let (manifest, c) = read_dir(dir)?;
    inspect(dir.display().to_string(), &manifest, &c.files, &c.irregular).map(|(r, _)| r)
}

/// The report for the directives built into this binary (what a service without
/// `directives.dir` runs with).
pub fn verify_builtin() -> Result<VerifyReport, CoworkError> {
    inspect("embedded".into(), EMBEDDED_MANIFEST, &embedded_files(), &[]).map(|(r, _)| r)
}

/// Loads and verifies the directives: from `dir` when configured, else the embedded ones.
pub fn load(dir: Option<&str>) -> Result<Directives, CoworkError> {
    match dir {
        Some(d) if !d.trim().is_empty() => verify_dir(Path::new(d)),
        _ => verify_embedded(),
    }
}

impl Directives {
    /// The planner's prompt.
    pub fn planner(&self) -> &Directive {
        // `verify` refuses a manifest without it.
        &self.files[PLANNER]
    }

    /// The directive of the agent for `domain` (`agents/<domain>.md`), else the general one.
    pub fn agent(&self, domain: &str) -> &Directive {
        self.files
            .get(&format!("agents/{domain}.md"))
            .unwrap_or_else(|| &self.files["agents/general.md"])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn copy_to(dir: &Path) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("directives");
        let mut c = Collected::default();
        collect(&src, &src, &mut c).unwrap();
        for (rel, bytes) in c.files {
            let p = dir.join(&rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        std::fs::copy(src.join(MANIFEST), dir.join(MANIFEST)).unwrap();
    }

    #[test]
    fn the_shipped_directives_verify_embedded_and_on_disk() {
        let e = verify_embedded().unwrap();
        assert_eq!(e.files.len(), 6);
        assert!(e.planner().text.contains("submit_plan"));
        assert_eq!(e.agent("ui").path, "agents/ui.md");
        assert_eq!(e.agent("kitchen").path, "agents/general.md");
        let d = verify_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("directives")).unwrap();
        assert_eq!(
            d.files, e.files,
            "the embedded copies are the files in the directory"
        );
    }

    #[test]
    fn a_changed_missing_or_unlisted_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        copy_to(tmp.path());
        std::fs::write(tmp.path().join("agents/ui.md"), "be evil").unwrap();
        let err = verify_dir(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("agents/ui.md") && err.contains("checksum"),
            "{err}"
        );

        let tmp = tempfile::tempdir().unwrap();
        copy_to(tmp.path());
        std::fs::remove_file(tmp.path().join("agents/test.md")).unwrap();
        let err = verify_dir(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("agents/test.md") && err.contains("missing"),
            "{err}"
        );

        let tmp = tempfile::tempdir().unwrap();
        copy_to(tmp.path());
        std::fs::write(tmp.path().join("agents/extra.md"), "x").unwrap();
        let err = verify_dir(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("agents/extra.md") && err.contains("not listed"),
            "{err}"
        );

        let tmp = tempfile::tempdir().unwrap();
        let err = verify_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("manifest.json"), "{err}");
    }

    #[test]
    fn the_report_lists_every_problem_and_reads_for_people() {
        let shipped = verify(&Path::new(env!("CARGO_MANIFEST_DIR")).join("directives")).unwrap();
        assert!(shipped.is_ok(), "{shipped}");
        assert_eq!(shipped.files.len(), 6);
        assert!(
            shipped.to_string().ends_with("\n6 files verified\n"),
            "{shipped}"
        );
        assert_eq!(verify_builtin().unwrap().files, shipped.files);

        let tmp = tempfile::tempdir().unwrap();
        copy_to(tmp.path());
        std::fs::write(tmp.path().join("agents/ui.md"), "be evil").unwrap();
        std::fs::remove_file(tmp.path().join("agents/test.md")).unwrap();
        std::fs::write(tmp.path().join("agents/extra.md"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("agents/link.md")).unwrap();
        let report = verify(tmp.path()).unwrap();
        assert!(!report.is_ok());
        assert_eq!(report.problem_count(), 4);
        let status = |p: &str| {
            report
                .files
                .iter()
                .find(|f| f.path == p)
                .map(|f| f.status.clone())
                .unwrap()
        };
        assert!(matches!(
            status("agents/ui.md"),
            FileStatus::ChecksumMismatch { .. }
        ));
        assert_eq!(status("agents/test.md"), FileStatus::Missing);
        assert_eq!(status("agents/extra.md"), FileStatus::Unlisted);
        assert_eq!(status("agents/link.md"), FileStatus::Unlisted);
        assert_eq!(status("planner.md"), FileStatus::Ok);
        let text = report.to_string();
        assert!(
            text.contains("FAIL  agents/ui.md v1: checksum mismatch"),
            "{text}"
        );
        assert!(
            text.contains("FAIL  agents/test.md v1: is listed in manifest.json but missing"),
            "{text}"
        );
        assert!(text.contains("ok    planner.md v1"), "{text}");
        assert!(text.ends_with("\n4 problem(s) in 8 files\n"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["files"][0]["path"], "agents/api.md");
        assert_eq!(json["files"][0]["status"], "ok");

        // A listed file replaced by a symlink is refused, not followed.
        let tmp = tempfile::tempdir().unwrap();
        copy_to(tmp.path());
        std::fs::remove_file(tmp.path().join("agents/api.md")).unwrap();
        std::os::unix::fs::symlink(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("directives/agents/api.md"),
            tmp.path().join("agents/api.md"),
        )
        .unwrap();
        let report = verify(tmp.path()).unwrap();
        assert_eq!(
            report.files[0].status,
            FileStatus::NotRegularFile,
            "{report}"
        );
        assert!(
            verify_dir(tmp.path())
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );

        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(MANIFEST), "{").unwrap();
        assert!(
            verify(tmp.path())
                .unwrap_err()
                .to_string()
                .contains("manifest.json")
        );
    }
}
