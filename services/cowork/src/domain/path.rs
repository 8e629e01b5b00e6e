//! Path syntax for agent file operations, without touching the filesystem.
//!
//! A requested path is text from an agent (a model, a coding CLI, a remote A2A agent), so it is
//! hostile until proven otherwise. [`parse_request`] turns it into components or refuses it:
//! NUL, newlines and other control characters, `..` (an agent never needs to climb: paths are
//! relative to its sandbox, or absolute), empty input and over-long input are refused here, at
//! the normalize stage. `.` and repeated separators are dropped. Everything about matching is on
//! components, never on string prefixes (`/etc-backup` is not under `/etc`).

use std::path::{Component, Path, PathBuf};

/// Longest request accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single component accepted, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// A syntactically acceptable request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedPath {
    /// True when the text started with `/`.
    pub absolute: bool,
    /// The components, without `.` and empty ones; none is `..`.
    pub components: Vec<String>,
}

impl RequestedPath {
    /// The request as an absolute path, relative ones taken from `base`.
    pub fn to_absolute(&self, base: &Path) -> PathBuf {
        let mut p = if self.absolute {
            PathBuf::from("/")
        } else {
            base.to_path_buf()
        };
        for c in &self.components {
            p.push(c);
        }
        p
    }

    /// The file name asked for, if any.
    pub fn file_name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }
}

/// Why a request's text is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRejection {
    /// Nothing was asked for.
    Empty,
    /// Longer than [`MAX_PATH_BYTES`] or a component longer than [`MAX_NAME_BYTES`].
    TooLong,
    /// A NUL byte.
    Nul,
    /// A newline, carriage return or other control character.
    ControlCharacter,
    /// A `..` component.
    ParentTraversal,
}

impl std::fmt::Display for PathRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathRejection::Empty => "empty path",
            PathRejection::TooLong => "path or file name too long",
            PathRejection::Nul => "path contains a nul byte",
            PathRejection::ControlCharacter => "path contains a newline or control character",
            PathRejection::ParentTraversal => "path climbs with `..`",
        })
    }
}

/// Parses an agent's path text.
pub fn parse_request(raw: &str) -> Result<RequestedPath, PathRejection> {
    if raw.is_empty() {
        return Err(PathRejection::Empty);
    }
    if raw.contains('\0') {
        return Err(PathRejection::Nul);
    }
    if raw.chars().any(char::is_control) {
        return Err(PathRejection::ControlCharacter);
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathRejection::TooLong);
    }
    let absolute = raw.starts_with('/');
    let mut components = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathRejection::ParentTraversal),
            name if name.len() > MAX_NAME_BYTES => return Err(PathRejection::TooLong),
            name => components.push(name.to_owned()),
        }
    }
    Ok(RequestedPath {
        absolute,
        components,
    })
}

/// Lexically resolves `path` (absolute): drops `.`, lets `..` remove the previous component (never
/// above `/`). Used for symlink targets, which the filesystem, not the agent, supplies.
pub fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// True when `path` is `prefix` or lies beneath it, compared component by component.
pub fn is_within(path: &Path, prefix: &Path) -> bool {
    let mut p = path.components();
    for want in prefix.components() {
        match p.next() {
            Some(got) if got == want => {}
            _ => return false,
        }
    }
    true
}

/// `path` relative to `root` as `/`-joined text, when it is within it.
pub fn relative_to(path: &Path, root: &Path) -> Option<String> {
    let rest = path.strip_prefix(root).ok()?;
    let parts: Vec<String> = rest
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    Some(parts.join("/"))
}

/// The extension of a file name, lower-cased, after trailing dots and spaces are stripped
/// (`evil.EXE.` is an `exe`); `None` for names without one (and for dot-files such as `.env`).
pub fn extension_of(name: &str) -> Option<String> {
    let trimmed = name.trim_end_matches(['.', ' ']);
    let (stem, ext) = trimmed.rsplit_once('.')?;
    if stem.is_empty() || ext.is_empty() {
        return None;
    }
    Some(ext.to_ascii_lowercase())
}

/// A tenant as a directory name: kept when it is a plain name, else `None`.
pub fn plain_name(tenant: &str) -> Option<&str> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 128
        && tenant != "."
        && tenant != ".."
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    ok.then_some(tenant)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hostile_text_is_refused_at_parse() {
        assert_eq!(parse_request("a/\0b"), Err(PathRejection::Nul));
        assert_eq!(parse_request("a\nb"), Err(PathRejection::ControlCharacter));
        assert_eq!(parse_request("a\rb"), Err(PathRejection::ControlCharacter));
        assert_eq!(parse_request("../x"), Err(PathRejection::ParentTraversal));
        assert_eq!(
            parse_request("a/../../x"),
            Err(PathRejection::ParentTraversal)
        );
        assert_eq!(
            parse_request("/tmp/.."),
            Err(PathRejection::ParentTraversal)
        );
        assert_eq!(parse_request(""), Err(PathRejection::Empty));
        assert_eq!(parse_request(&"a".repeat(300)), Err(PathRejection::TooLong));
        assert_eq!(
            parse_request(&"a/".repeat(3000)),
            Err(PathRejection::TooLong)
        );
    }

    #[test]
    fn ordinary_paths_parse_into_components() {
        let p = parse_request("./src//lib.rs").unwrap();
        assert!(!p.absolute);
        assert_eq!(p.components, ["src", "lib.rs"]);
        let p = parse_request("/etc/passwd").unwrap();
        assert!(p.absolute);
        assert_eq!(p.to_absolute(Path::new("/x")), Path::new("/etc/passwd"));
        let p = parse_request(".").unwrap();
        assert!(p.components.is_empty());
        assert_eq!(
            parse_request("..."),
            Ok(RequestedPath {
                absolute: false,
                components: vec!["...".into()]
            })
        );
    }

    #[test]
    fn prefixes_match_on_components() {
        assert!(is_within(Path::new("/etc/passwd"), Path::new("/etc")));
        assert!(is_within(Path::new("/etc"), Path::new("/etc")));
        assert!(!is_within(Path::new("/etc-backup/x"), Path::new("/etc")));
        assert!(!is_within(Path::new("/work/sb2/x"), Path::new("/work/sb")));
        assert_eq!(
            lexical_normalize(Path::new("/a/b/../../../etc/./x")),
            Path::new("/etc/x")
        );
        assert_eq!(
            relative_to(Path::new("/r/a/b"), Path::new("/r")).as_deref(),
            Some("a/b")
        );
    }

    #[test]
    fn extensions_are_lower_cased_and_trailing_dots_do_not_hide_them() {
        assert_eq!(extension_of("a.EXE").as_deref(), Some("exe"));
        assert_eq!(extension_of("a.exe. ").as_deref(), Some("exe"));
        assert_eq!(extension_of("archive.tar.gz").as_deref(), Some("gz"));
        assert_eq!(extension_of(".env"), None);
        assert_eq!(extension_of("Makefile"), None);
        assert_eq!(plain_name("acme"), Some("acme"));
        assert_eq!(plain_name("../x"), None);
        assert_eq!(plain_name(".."), None);
    }
}
