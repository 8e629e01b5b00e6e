//! What only the NATS implementation can show: an unreachable server, a server that dies and
//! comes back (the client reconnects by itself), and durable state that survives a restart of
//! the server because JetStream keeps it on disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use liquid_bus::{ConsumerConfig, EventBus, Headers, StreamConfig};
use liquid_kit::{ErrorCode, HasErrorCode};
use liquid_testkit::nats::NatsServer;

/// Upper bound for anything awaited; only there to turn a hang into a failure.
const WAIT: Duration = Duration::from_secs(20);

/// Polls `ping` until it gives the wanted outcome.
async fn ping_until(bus: &dyn EventBus, healthy: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if bus.ping().await.is_ok() == healthy {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ping never became {}",
            if healthy { "healthy" } else { "unhealthy" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let err = liquid_bus::connect("nats://user:hunter2@127.0.0.1:1")
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Unavailable);
    let text = err.to_string();
    assert!(text.contains("make dev-up"), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

#[tokio::test]
async fn readiness_follows_the_server_and_the_client_reconnects() {
    let mut server = NatsServer::start().await.unwrap();
    let bus = liquid_bus::connect(&server.url()).await.unwrap();
    bus.ping().await.unwrap();

    server.kill().await.unwrap();
    ping_until(bus.as_ref(), false).await;
    let err = bus.ping().await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::Unavailable, "{err}");

    server.restart().await.unwrap();
    ping_until(bus.as_ref(), true).await;
    // Subscriptions made before the outage are restored with the connection.
    let mut sub = bus.subscribe("ws.after").await.unwrap();
    bus.ping().await.unwrap();
    bus.publish("ws.after", Headers::new(), Bytes::from_static(b"back"))
        .await
        .unwrap();
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, "back");
}

#[tokio::test]
async fn streams_and_consumer_positions_survive_a_server_restart() {
    let mut server = NatsServer::start().await.unwrap();
    let bus = liquid_bus::connect(&server.url()).await.unwrap();
    bus.ensure_stream(&StreamConfig::events("media"))
        .await
        .unwrap();
    for p in ["1", "2", "3"] {
        bus.publish_durable(
            "evt.media.job.queued",
            Headers::new(),
            Bytes::copy_from_slice(p.as_bytes()),
            Some(p),
        )
        .await
        .unwrap();
    }
    let config = ConsumerConfig::events("worker", "media");
    let consumer = bus.consumer(&config).await.unwrap();
    let first = consumer.fetch(1, WAIT).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].message.payload, "1");
    first[0].ack().await.unwrap();
    // A consumer info round trip makes sure the server has processed the ack.
    assert_eq!(consumer.info().await.unwrap().ack_pending, 0);

    server.restart().await.unwrap();
    ping_until(bus.as_ref(), true).await;

    // The same client, reconnected, and a re-opened handle continue after the acked message.
    let consumer = bus.consumer(&config).await.unwrap();
    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        let batch = consumer.fetch(2 - payloads.len(), WAIT).await.unwrap();
        assert!(!batch.is_empty(), "nothing delivered after the restart");
        for d in batch {
            d.ack().await.unwrap();
            payloads.push(d.message.payload.clone());
        }
    }
    assert_eq!(payloads, ["2", "3"]);
    // De-duplication ids survive too.
    let again = bus
        .publish_durable(
            "evt.media.job.queued",
            Headers::new(),
            Bytes::from_static(b"1"),
            Some("1"),
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, 1);
}
