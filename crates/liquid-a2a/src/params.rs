//! A2A service parameters (spec §3.2.6): `A2A-Version` and `A2A-Extensions`, read from HTTP
//! headers (or the `A2A-Version` query parameter, §3.6.1) and from gRPC metadata, and the
//! version negotiation rules (§3.6.2).

use http::HeaderMap;

/// Header / metadata key of the protocol version (lower case, as gRPC normalises it).
pub const VERSION_HEADER: &str = "a2a-version";
/// Header / metadata key of the extensions the client uses.
pub const EXTENSIONS_HEADER: &str = "a2a-extensions";
/// The protocol version this crate implements (`Major.Minor`).
pub const PROTOCOL_VERSION: &str = "1.0";
/// Media type of the HTTP+JSON binding (§14.1).
pub const A2A_JSON: &str = "application/a2a+json";

/// The service parameters of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceParams {
    /// `A2A-Version` as sent; `None` when absent or empty (which means 0.3, §3.6.2).
    pub version: Option<String>,
    /// Extension URIs from every `A2A-Extensions` value, comma-separated lists flattened.
    pub extensions: Vec<String>,
}

/// How a request's version was interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NegotiatedVersion {
    /// `1.0` (any patch level).
    V1_0,
    /// No version sent: a 0.3 client by the spec's rule. It still gets a well-formed 1.0 answer.
    Unspecified,
}

impl ServiceParams {
    /// Reads the parameters from HTTP headers and, for the version, the query string.
    pub fn from_http(headers: &HeaderMap, query: Option<&str>) -> ServiceParams {
        let mut version = headers
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        if version.is_none()
            && let Some(q) = query
        {
            version = query_value(q, "A2A-Version")
                .or_else(|| query_value(q, "a2a-version"))
                .filter(|v| !v.is_empty());
        }
        let extensions = headers
            .get_all(EXTENSIONS_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(split_list)
            .collect();
        ServiceParams {
            version,
            extensions,
        }
    }

    /// Reads the parameters from gRPC metadata.
    pub fn from_grpc(metadata: &tonic::metadata::MetadataMap) -> ServiceParams {
        ServiceParams::from_http(&metadata.clone().into_headers(), None)
    }

    /// Checks the version against the one this crate serves (§3.6.2: `Major.Minor` only).
    pub fn negotiate(&self) -> Result<NegotiatedVersion, crate::A2aError> {
        let Some(v) = self.version.as_deref() else {
            return Ok(NegotiatedVersion::Unspecified);
        };
        let mut parts = v.split('.');
        let major = parts.next().unwrap_or_default();
        let minor = parts.next().unwrap_or("0");
        if major == "1" && minor == "0" {
            Ok(NegotiatedVersion::V1_0)
        } else {
            Err(crate::A2aError::VersionNotSupported {
                version: v.to_owned(),
            })
        }
    }

    /// Whether the client declared `uri`.
    pub fn declares_extension(&self, uri: &str) -> bool {
        self.extensions.iter().any(|e| e == uri)
    }
}

fn split_list(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The first value of `key` in a URL query string, percent-decoded.
pub fn query_value(query: &str, key: &str) -> Option<String> {
    query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// All `key=value` pairs of a query string, percent-decoded (`+` is a space).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_headers_and_flattens_extension_lists() {
        let mut h = HeaderMap::new();
        h.insert("A2A-Version", "1.0".parse().unwrap());
        h.append("a2a-extensions", "urn:a, urn:b".parse().unwrap());
        h.append("a2a-extensions", "urn:c".parse().unwrap());
        let p = ServiceParams::from_http(&h, None);
        assert_eq!(p.version.as_deref(), Some("1.0"));
        assert_eq!(p.extensions, ["urn:a", "urn:b", "urn:c"]);
        assert_eq!(p.negotiate().unwrap(), NegotiatedVersion::V1_0);
    }

    #[test]
    fn version_from_query_and_patch_levels_ignored() {
        let p = ServiceParams::from_http(&HeaderMap::new(), Some("x=1&A2A-Version=1.0.1"));
        assert_eq!(p.negotiate().unwrap(), NegotiatedVersion::V1_0);
    }

    #[test]
    fn empty_means_unspecified_and_others_are_refused() {
        let mut h = HeaderMap::new();
        h.insert("a2a-version", "".parse().unwrap());
        let p = ServiceParams::from_http(&h, None);
        assert_eq!(p.negotiate().unwrap(), NegotiatedVersion::Unspecified);
        for v in ["0.3", "2.0", "1.1", "banana"] {
            let p = ServiceParams {
                version: Some(v.into()),
                extensions: vec![],
            };
            assert!(
                matches!(
                    p.negotiate(),
                    Err(crate::A2aError::VersionNotSupported { .. })
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab+c%2"), "a:b c%2");
        assert_eq!(
            query_value(
                "statusTimestampAfter=2025-01-01T00%3A00%3A00Z",
                "statusTimestampAfter"
            )
            .as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
    }
}
