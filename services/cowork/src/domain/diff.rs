//! Text diffs and binary detection for sandbox changes, with the `similar` crate (Myers diff,
//! unified format with three lines of context). Pure: the edge reads the bytes.

use similar::TextDiff;

/// How many leading bytes binary detection looks at (as git does).
const SNIFF_BYTES: usize = 8000;

/// True for content that is not shown as text: a NUL byte near the start, or not UTF-8.
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(SNIFF_BYTES)].contains(&0) || std::str::from_utf8(bytes).is_err()
}

/// A unified diff of `old` to `new` for `path` (`a/<path>` and `b/<path>` headers; `/dev/null`
/// for an added or deleted side).
pub fn unified(path: &str, old: Option<&str>, new: Option<&str>) -> String {
    let a = if old.is_some() {
        format!("a/{path}")
    } else {
        "/dev/null".to_owned()
    };
    let b = if new.is_some() {
        format!("b/{path}")
    } else {
        "/dev/null".to_owned()
    };
    let diff = TextDiff::from_lines(old.unwrap_or(""), new.unwrap_or(""));
    diff.unified_diff()
        .context_radius(3)
        .header(&a, &b)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_detection() {
        assert!(!is_binary(b"fn main() {}\n"));
        assert!(is_binary(b"\x89PNG\r\n\x1a\n\0\0"));
        assert!(is_binary(&[0xff, 0xfe, 0x41]));
        assert!(!is_binary(b""));
    }

    #[test]
    fn unified_diff_has_headers_and_hunks() {
        let d = unified(
            "src/a.rs",
            Some("one\ntwo\nthree\n"),
            Some("one\n2\nthree\n"),
        );
        assert!(d.starts_with("--- a/src/a.rs\n+++ b/src/a.rs\n"), "{d}");
        assert!(d.contains("-two\n+2\n"), "{d}");
        let added = unified("n.txt", None, Some("hi\n"));
        assert!(added.starts_with("--- /dev/null\n+++ b/n.txt\n"), "{added}");
        assert!(added.contains("+hi\n"), "{added}");
    }
}
