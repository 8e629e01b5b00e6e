//! The platform's event envelope: what goes on `evt.<service>.<entity>.<verb>` subjects.
//!
//! An [`Event`] is JSON with an id (UUIDv7, also the de-duplication id when published), a type
//! (`<service>.<entity>.<verb>`, which is also its subject after `evt.`), a UTC time, the tenant,
//! a schema version and the data. The trace context travels in the message headers, not here.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::BusError;

/// Subject prefix of every durable event.
pub const EVENT_SUBJECT_PREFIX: &str = "evt";

/// An event envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique, time-ordered id; consumers use it to process each event once.
    pub id: Uuid,
    /// `<service>.<entity>.<verb>`, for example `cowork.session.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened (UTC, RFC 3339 on the wire).
    pub time: DateTime<Utc>,
    /// The tenant whose data this is.
    pub tenant: String,
    /// Version of `data`'s schema for this type; bump it on incompatible changes.
    pub schema_version: u32,
    /// The payload.
    pub data: serde_json::Value,
}

impl Event {
    /// A new event of schema version 1 with a fresh UUIDv7 id and the current time.
    pub fn new(
        event_type: impl Into<String>,
        tenant: impl Into<String>,
        data: serde_json::Value,
    ) -> Result<Event, BusError> {
        let event = Event {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            time: Utc::now(),
            tenant: tenant.into(),
            schema_version: 1,
            data,
        };
        event.validate()?;
        Ok(event)
    }

    /// Sets the schema version.
    pub fn with_schema_version(mut self, version: u32) -> Event {
        self.schema_version = version;
        self
    }

    /// The subject it is published on: `evt.<service>.<entity>.<verb>`.
    pub fn subject(&self) -> String {
        format!("{EVENT_SUBJECT_PREFIX}.{}", self.event_type)
    }

    /// The owning service (first token of the type).
    pub fn service(&self) -> &str {
        self.event_type.split('.').next().unwrap_or_default()
    }

    /// Checks the type is three lowercase tokens, the tenant is set and the version is not 0.
    pub fn validate(&self) -> Result<(), BusError> {
        let invalid = |reason: String| BusError::InvalidEvent { reason };
        let tokens: Vec<&str> = self.event_type.split('.').collect();
        let token_ok = |t: &&str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        };
        if tokens.len() != 3 || !tokens.iter().all(token_ok) {
            return Err(invalid(format!(
                "type `{}` is not `<service>.<entity>.<verb>` in lowercase",
                self.event_type
            )));
        }
        if self.tenant.trim().is_empty() {
            return Err(invalid("tenant must not be empty".to_owned()));
        }
        if self.schema_version == 0 {
            return Err(invalid("schema_version starts at 1".to_owned()));
        }
        Ok(())
    }

    /// The JSON body.
    pub fn to_json(&self) -> Result<Bytes, BusError> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| BusError::InvalidEvent {
                reason: e.to_string(),
            })
    }

    /// Parses and validates a JSON body.
    pub fn from_json(payload: &[u8]) -> Result<Event, BusError> {
        let event: Event = serde_json::from_slice(payload).map_err(|e| BusError::InvalidEvent {
            reason: e.to_string(),
        })?;
        event.validate()?;
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_round_trips_as_the_documented_json() {
        let event = Event::new(
            "cowork.session.created",
            "acme",
            serde_json::json!({"session_id": "s1"}),
        )
        .unwrap();
        assert_eq!(event.id.get_version_num(), 7);
        assert_eq!(event.subject(), "evt.cowork.session.created");
        assert_eq!(event.service(), "cowork");

        let json: serde_json::Value = serde_json::from_slice(&event.to_json().unwrap()).unwrap();
        assert_eq!(json["type"], "cowork.session.created");
        assert_eq!(json["tenant"], "acme");
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["data"]["session_id"], "s1");
        let time = json["time"].as_str().unwrap();
        assert!(DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        assert!(time.ends_with('Z'), "{time}");

        let back = Event::from_json(&event.to_json().unwrap()).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn malformed_events_are_refused() {
        for bad_type in [
            "cowork.session",
            "Cowork.session.created",
            "a.b.c.d",
            "a..c",
            "",
        ] {
            assert!(
                matches!(
                    Event::new(bad_type, "acme", serde_json::Value::Null),
                    Err(BusError::InvalidEvent { .. })
                ),
                "{bad_type:?}"
            );
        }
        assert!(Event::new("a.b.c", " ", serde_json::Value::Null).is_err());
        assert!(Event::from_json(b"{\"id\":1}").is_err());
        assert!(Event::from_json(b"not json").is_err());
    }
}
