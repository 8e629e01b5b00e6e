//! ListTasks page tokens: an opaque, URL-safe encoding of the last row's sort key
//! (status time in microseconds, task id), so the next page starts strictly after it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The position after which the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Status time of the last task returned, microseconds since the epoch.
    pub status_at_us: i64,
    /// Id of the last task returned.
    pub id: String,
}

impl Cursor {
    /// The page token.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.status_at_us, self.id))
    }

    /// Reads a page token; `None` when it was not made by [`Cursor::encode`].
    pub fn decode(token: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (time, id) = text.split_once(':')?;
        Some(Cursor {
            status_at_us: time.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let c = Cursor {
            status_at_us: 1_777_000_000_123_456,
            id: "0196-abc".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not a cursor!"), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("x:y")), None);
    }
}
