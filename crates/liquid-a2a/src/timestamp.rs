//! `google.protobuf.Timestamp` with the ProtoJSON form the A2A specification requires (§5.6.1):
//! an RFC 3339 string in UTC with a `Z` suffix and millisecond precision when that is all the
//! value carries. `pbjson-types` writes `+00:00`, hence this type; on the wire in gRPC it is the
//! ordinary two-field message.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, as seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Message)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Non-negative fraction of a second in nanoseconds (0..=999_999_999).
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from(Utc::now())
    }

    /// The time as a chrono value, `None` when out of chrono's range.
    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        let nanos = u32::try_from(self.nanos).ok()?;
        DateTime::from_timestamp(self.seconds, nanos)
    }

    /// The ProtoJSON string: `Z` suffix, 3 fractional digits when the value has at most
    /// millisecond precision, otherwise 6 or 9.
    pub fn to_rfc3339(self) -> Option<String> {
        let time = self.to_datetime()?;
        let format = if self.nanos % 1_000_000 == 0 {
            SecondsFormat::Millis
        } else {
            SecondsFormat::AutoSi
        };
        Some(time.to_rfc3339_opts(format, true))
    }

    /// Parses any RFC 3339 time (an offset is converted to UTC).
    pub fn parse(text: &str) -> Option<Timestamp> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Timestamp::from(t.with_timezone(&Utc)))
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(time: DateTime<Utc>) -> Timestamp {
        Timestamp {
            seconds: time.timestamp(),
            nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.to_rfc3339() {
            Some(text) => serializer.serialize_str(&text),
            None => Err(serde::ser::Error::custom("timestamp out of range")),
        }
    }
}

struct TimestampVisitor;

impl Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an RFC 3339 timestamp string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Timestamp, E> {
        Timestamp::parse(text).ok_or_else(|| E::custom("invalid RFC 3339 timestamp"))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        deserializer.deserialize_str(TimestampVisitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_z_suffix_and_milliseconds() {
        let t = Timestamp::parse("2025-10-28T10:30:00Z").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2025-10-28T10:30:00.000Z\""
        );
        let t = Timestamp::parse("2025-10-28T14:25:33.142Z").unwrap();
        assert_eq!(t.to_rfc3339().unwrap(), "2025-10-28T14:25:33.142Z");
    }

    #[test]
    fn converts_offsets_to_utc_and_keeps_sub_millisecond_precision() {
        let t = Timestamp::parse("2025-10-28T12:30:00.000001+02:00").unwrap();
        assert_eq!(t.to_rfc3339().unwrap(), "2025-10-28T10:30:00.000001Z");
    }

    #[test]
    fn rejects_non_timestamps() {
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("12").is_err());
    }
}
