//! The in-process bus: a broadcast channel per process, filtered per subscriber by the same
//! subject rules as NATS. A subscriber that falls behind by more than the channel's capacity
//! loses the oldest messages, as a slow core-NATS subscriber would.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::{BusError, EventBus, Message, Subscription, headers_with_trace, subject};

/// In-process bus.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    sender: broadcast::Sender<Message>,
}

impl MemoryBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        MemoryBus {
            sender: broadcast::channel(4096).0,
        }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new()
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(
        &self,
        subject: &str,
        headers: BTreeMap<String, String>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        subject::validate(subject, false)?;
        let _ = self.sender.send(Message {
            subject: subject.to_owned(),
            headers: headers_with_trace(headers),
            payload,
        });
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        subject::validate(pattern, true)?;
        let pattern = pattern.to_owned();
        let stream = BroadcastStream::new(self.sender.subscribe()).filter_map(move |m| {
            let keep = m.ok().filter(|m| subject::matches(&pattern, &m.subject));
            async move { keep }
        });
        Ok(Box::pin(stream))
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}
