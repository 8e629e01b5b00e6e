//! Cowork's events: `session:created`, `plan:generated`, `plan:approved`, `plan:rejected`,
//! `session:updated`, `subtask:started`, `subtask:progress`, `subtask:completed`,
//! `session:completed`, `agent:spawned`, `agent:health`, `queue:stats`.
//!
//! Each is written to the session's event log (`GET .../events`; except `queue:stats` and the
//! periodic `agent:health` of live agents), published durably on the bus as a liquid-bus
//! [`Event`] of type `cowork.<entity>.<verb>` (stream `cowork-events`, the event id as the
//! de-duplication id), and published on core subject `ws.tenant.<tenant>.cowork:<session>` —
//! the gateway's WebSocket hub delivers that to subscribers of channel `cowork:<session>`.
//! Publishing runs in one background task in emission order, so a slow bus never holds up a
//! step and a session's events reach WebSocket clients in order.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use liquid_bus::{Event, EventBus, Headers, StreamConfig};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::CoworkError;
use crate::store::SessionStore;
use crate::store::sessions::{EventRow, now_ms, rfc3339};

/// The event kinds, as the WebSocket channel and the event log name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A session was created.
    SessionCreated,
    /// A plan is ready for review.
    PlanGenerated,
    /// The plan was approved; steps start.
    PlanApproved,
    /// The plan was rejected.
    PlanRejected,
    /// The session was paused, resumed, cancelled or re-planned.
    SessionUpdated,
    /// A step's agent started.
    SubtaskStarted,
    /// A step's output.
    SubtaskProgress,
    /// A step finished (succeeded, failed, cancelled, skipped).
    SubtaskCompleted,
    /// Every step is final.
    SessionCompleted,
    /// An agent was queued for a step.
    AgentSpawned,
    /// An agent's heartbeat, or its death.
    AgentHealth,
    /// The tenant's queue sizes.
    QueueStats,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 12] = [
        EventKind::SessionCreated,
        EventKind::PlanGenerated,
        EventKind::PlanApproved,
        EventKind::PlanRejected,
        EventKind::SessionUpdated,
        EventKind::SubtaskStarted,
        EventKind::SubtaskProgress,
        EventKind::SubtaskCompleted,
        EventKind::SessionCompleted,
        EventKind::AgentSpawned,
        EventKind::AgentHealth,
        EventKind::QueueStats,
    ];

    /// `session:created`, ...
    pub fn name(self) -> &'static str {
        match self {
            EventKind::SessionCreated => "session:created",
            EventKind::PlanGenerated => "plan:generated",
            EventKind::PlanApproved => "plan:approved",
            EventKind::PlanRejected => "plan:rejected",
            EventKind::SessionUpdated => "session:updated",
            EventKind::SubtaskStarted => "subtask:started",
            EventKind::SubtaskProgress => "subtask:progress",
            EventKind::SubtaskCompleted => "subtask:completed",
            EventKind::SessionCompleted => "session:completed",
            EventKind::AgentSpawned => "agent:spawned",
            EventKind::AgentHealth => "agent:health",
            EventKind::QueueStats => "queue:stats",
        }
    }

    /// The bus event type: `cowork.<entity>.<verb>`.
    pub fn bus_type(self) -> String {
        let (entity, verb) = self.name().split_once(':').unwrap_or(("session", "event"));
        format!("cowork.{entity}.{verb}")
    }
}

/// The gateway's bus subject of channel `cowork:<session>` for `tenant` (its
/// `Channel::subject`): a tenant of letters, digits, `-` and `_` as is, otherwise `~` and its
/// unpadded base64url form.
pub fn ws_subject(tenant: &str, session: Uuid) -> String {
    let plain = !tenant.is_empty()
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let t = if plain {
        tenant.to_owned()
    } else {
        format!(
            "~{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tenant)
        )
    };
    format!("ws.tenant.{t}.cowork:{session}")
}

struct Outgoing {
    event: Event,
    ws_subject: String,
    ws_payload: Value,
}

/// Emits cowork's events.
#[derive(Clone)]
pub struct CoworkEvents {
    store: Arc<dyn SessionStore>,
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl CoworkEvents {
    /// Makes sure the `cowork-events` stream exists and returns the emitter with its publishing
    /// loop (spawn it; it ends when every emitter is dropped or `shutdown` fires and the
    /// backlog is published).
    pub async fn new(
        bus: Arc<dyn EventBus>,
        store: Arc<dyn SessionStore>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(CoworkEvents, impl Future<Output = ()> + Send + 'static), CoworkError> {
        bus.ensure_stream(&StreamConfig::events("cowork"))
            .await
            .map_err(|e| CoworkError::ExecutorUnavailable(format!("bus: {e}")))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        let run = async move {
            loop {
                let next = tokio::select! {
                    m = rx.recv() => m,
                    () = shutdown.cancelled() => {
                        // Publish what is already queued, then stop.
                        rx.close();
                        rx.recv().await
                    }
                };
                let Some(out) = next else { break };
                if let Err(error) = bus.publish_event(&out.event).await {
                    tracing::warn!(%error, event = %out.event.event_type, "cowork event not published durably");
                }
                let payload = Bytes::from(out.ws_payload.to_string());
                if let Err(error) = bus.publish(&out.ws_subject, Headers::new(), payload).await {
                    tracing::debug!(%error, "cowork event not broadcast");
                }
            }
        };
        Ok((CoworkEvents { store, tx }, run))
    }

    /// Records (when `persist`) and publishes `kind` for `session` of `tenant`.
    pub async fn emit_with(
        &self,
        tenant: &str,
        session: Uuid,
        kind: EventKind,
        data: Value,
        persist: bool,
    ) {
        let event = match Event::new(kind.bus_type(), tenant, data.clone()) {
            Ok(mut e) => {
                if let Value::Object(map) = &mut e.data {
                    map.insert("session_id".into(), json!(session));
                }
                e
            }
            Err(error) => {
                tracing::warn!(%error, kind = kind.name(), "cowork event refused");
                return;
            }
        };
        let at = now_ms();
        if persist {
            let row = EventRow {
                event_id: event.id,
                tenant: tenant.to_owned(),
                session_id: session,
                kind: kind.name().to_owned(),
                data: data.to_string(),
                at_ms: at,
            };
            if let Err(error) = self.store.insert_event(&row).await {
                tracing::warn!(%error, kind = kind.name(), "cowork event not logged");
            }
        }
        let ws_payload = json!({
            "event_id": event.id,
            "type": kind.name(),
            "session_id": session,
            "time": rfc3339(at),
            "data": data,
        });
        let _ = self.tx.send(Outgoing {
            event,
            ws_subject: ws_subject(tenant, session),
            ws_payload,
        });
    }

    /// Records and publishes `kind`.
    pub async fn emit(&self, tenant: &str, session: Uuid, kind: EventKind, data: Value) {
        self.emit_with(tenant, session, kind, data, true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bus_types_follow_the_conventions() {
        for k in EventKind::ALL {
            let t = k.bus_type();
            assert!(t.starts_with("cowork."), "{t}");
            assert_eq!(t.split('.').count(), 3, "{t}");
            assert_eq!(t.replacen("cowork.", "", 1).replace('.', ":"), k.name());
        }
        assert_eq!(
            EventKind::SubtaskProgress.bus_type(),
            "cowork.subtask.progress"
        );
    }

    #[test]
    fn the_ws_subject_is_the_gateways_channel_subject() {
        let s = Uuid::nil();
        assert_eq!(
            ws_subject("acme-1", s),
            "ws.tenant.acme-1.cowork:00000000-0000-0000-0000-000000000000"
        );
        // `a.b c` in unpadded base64url is `YS5iIGM`: the tenant stays one subject token.
        let odd = ws_subject("a.b c", s);
        assert_eq!(
            odd,
            "ws.tenant.~YS5iIGM.cowork:00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            odd.split('.').count(),
            4,
            "ws, tenant, the tenant, the channel"
        );
    }
}
