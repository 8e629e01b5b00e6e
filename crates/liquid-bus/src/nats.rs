//! The NATS implementation (core publish/subscribe; trace context in NATS headers).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::{BusError, EventBus, Message, Subscription, headers_with_trace, subject};

/// A NATS connection.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    url: String,
}

impl NatsBus {
    /// Connects, failing after 5 s without an answer.
    pub async fn connect(url: &str) -> Result<NatsBus, BusError> {
        let unreachable = |reason: String| BusError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        let client = tokio::time::timeout(
            Duration::from_secs(5),
            async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(5))
                .connect(url),
        )
        .await
        .map_err(|_| unreachable("no answer within 5s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        Ok(NatsBus {
            client,
            url: url.to_owned(),
        })
    }
}

#[async_trait]
impl EventBus for NatsBus {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(
        &self,
        subject: &str,
        headers: BTreeMap<String, String>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        subject::validate(subject, false)?;
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers_with_trace(headers) {
            map.insert(k.as_str(), v.as_str());
        }
        self.client
            .publish_with_headers(subject.to_owned(), map, payload)
            .await
            .map_err(|e| BusError::Io(e.to_string()))
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        subject::validate(pattern, true)?;
        let sub = self
            .client
            .subscribe(pattern.to_owned())
            .await
            .map_err(|e| BusError::Io(e.to_string()))?;
        Ok(Box::pin(sub.map(|m| {
            let headers = m
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .filter_map(|(k, v)| v.first().map(|v| (k.to_string(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            Message {
                subject: m.subject.to_string(),
                headers,
                payload: m.payload,
            }
        })))
    }

    async fn ping(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => {
                self.client
                    .flush()
                    .await
                    .map_err(|e| BusError::Unreachable {
                        url: self.url.clone(),
                        reason: e.to_string(),
                    })
            }
            state => Err(BusError::Unreachable {
                url: self.url.clone(),
                reason: format!("{state}"),
            }),
        }
    }
}
