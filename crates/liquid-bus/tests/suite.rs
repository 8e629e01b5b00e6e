//! The conformance suite: every scenario runs against the in-process bus and against a NATS
//! JetStream server of the test's own, through `Arc<dyn EventBus>` only. A behaviour that
//! differs between the two is a bug in one of them.
//!
//! Absence is checked with a sentinel message where possible (publish something that must not
//! arrive, then something that must, and expect the latter first); waits are generous and only
//! there to turn a hang into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use liquid_bus::{EventBus, MemoryBus};
use liquid_testkit::nats::NatsServer;

/// A bus under test and whatever keeps it alive.
struct Harness {
    bus: Arc<dyn EventBus>,
    _server: Option<NatsServer>,
}

async fn memory() -> Harness {
    Harness {
        bus: Arc::new(MemoryBus::new()),
        _server: None,
    }
}

async fn nats() -> Harness {
    let server = NatsServer::start().await.unwrap();
    let bus = liquid_bus::connect(&server.url()).await.unwrap();
    assert_eq!(bus.kind(), "nats");
    Harness {
        bus,
        _server: Some(server),
    }
}

/// One `#[tokio::test]` per scenario and backend.
macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod memory_bus {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let harness = super::memory().await;
                    super::scenarios::$scenario(harness.bus.clone()).await;
                }
            )*
        }
        mod nats_bus {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let harness = super::nats().await;
                    super::scenarios::$scenario(harness.bus.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    fan_out_reaches_every_matching_subscriber,
    wildcards_follow_nats_rules,
    a_dropped_subscription_stops_receiving,
    headers_and_trace_context_cross_every_hop,
    invalid_input_is_refused_with_invalid_argument,
    oversized_messages_are_refused,
    durable_publish_is_idempotent_within_the_window,
    a_repeated_id_is_stored_again_after_the_window,
    durable_publish_without_a_stream_fails_clearly,
    streams_must_not_overlap,
    ensure_stream_is_idempotent_and_updates,
    pull_consumer_delivers_in_order_and_ack_removes,
    nak_redelivers_at_once_or_after_a_delay,
    unacked_deliveries_come_back_after_ack_wait,
    in_progress_extends_the_ack_wait,
    max_deliver_is_honoured,
    term_stops_redelivery,
    a_consumer_resumes_by_name_after_being_dropped,
    filters_and_start_positions,
    max_ack_pending_limits_outstanding_deliveries,
    events_travel_durably_with_their_id_as_dedupe_id,
    core_and_durable_paths_see_each_other,
    request_reply_answers_and_fails_clearly,
    each_request_goes_to_one_responder,
    drain_delivers_buffered_messages_then_closes,
);

mod scenarios {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::{FutureExt, StreamExt};
    use liquid_bus::{
        BusError, ConsumerConfig, DeliverFrom, Delivery, Event, EventBus, Headers, Message,
        StreamConfig, Subscription,
    };
    use liquid_kit::{ErrorCode, HasErrorCode};
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::WAIT;

    fn body(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    async fn next(sub: &mut Subscription) -> Message {
        tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("no message within the wait")
            .expect("subscription ended")
    }

    async fn publish(bus: &Arc<dyn EventBus>, subject: &str, payload: &str) {
        bus.publish(subject, Headers::new(), body(payload))
            .await
            .unwrap();
    }

    /// Fetches until exactly `n` deliveries arrived (fails when one fetch waits in vain).
    async fn fetch_exactly(consumer: &liquid_bus::Consumer, n: usize) -> Vec<Delivery> {
        let mut got = Vec::new();
        while got.len() < n {
            let batch = consumer.fetch(n - got.len(), WAIT).await.unwrap();
            assert!(
                !batch.is_empty(),
                "expected {n} deliveries, got {}",
                got.len()
            );
            got.extend(batch);
        }
        assert_eq!(got.len(), n, "more deliveries than expected");
        got
    }

    /// Nothing is delivered within a short wait.
    async fn assert_nothing_to_fetch(consumer: &liquid_bus::Consumer) {
        let batch = consumer
            .fetch(10, Duration::from_millis(500))
            .await
            .unwrap();
        let seqs: Vec<u64> = batch.iter().map(|d| d.stream_sequence).collect();
        assert!(batch.is_empty(), "unexpected deliveries {seqs:?}");
    }

    fn payloads(deliveries: &[Delivery]) -> Vec<String> {
        deliveries
            .iter()
            .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
            .collect()
    }

    async fn events_stream(bus: &Arc<dyn EventBus>) {
        bus.ensure_stream(&StreamConfig::events("cowork"))
            .await
            .unwrap();
    }

    async fn durable(bus: &Arc<dyn EventBus>, subject: &str, payload: &str) -> u64 {
        bus.publish_durable(subject, Headers::new(), body(payload), None)
            .await
            .unwrap()
            .sequence
    }

    pub async fn fan_out_reaches_every_matching_subscriber(bus: Arc<dyn EventBus>) {
        bus.ping().await.unwrap();
        let mut exact = bus.subscribe("ws.prices.btc").await.unwrap();
        let mut one = bus.subscribe("ws.prices.*").await.unwrap();
        let mut rest = bus.subscribe("ws.>").await.unwrap();
        let mut other = bus.subscribe("ws.chat.*").await.unwrap();
        for i in 0..3 {
            publish(&bus, "ws.prices.btc", &i.to_string()).await;
        }
        publish(&bus, "ws.chat.general", "sentinel").await;
        for sub in [&mut exact, &mut one, &mut rest] {
            for i in 0..3 {
                let m = next(sub).await;
                assert_eq!(m.subject, "ws.prices.btc");
                assert_eq!(m.payload, i.to_string());
            }
        }
        assert_eq!(next(&mut rest).await.payload, "sentinel");
        // The first thing the non-matching subscriber sees is the sentinel.
        assert_eq!(next(&mut other).await.payload, "sentinel");
        assert_eq!(other.pattern(), "ws.chat.*");
    }

    pub async fn wildcards_follow_nats_rules(bus: Arc<dyn EventBus>) {
        let mut star = bus.subscribe("a.*").await.unwrap();
        let mut gt = bus.subscribe("a.>").await.unwrap();
        let mut mid = bus.subscribe("*.x.*").await.unwrap();
        publish(&bus, "a", "only the subject a").await;
        publish(&bus, "a.b.c", "three tokens").await;
        publish(&bus, "a.b", "two tokens").await;
        publish(&bus, "b.x.y", "middle").await;
        // `*` is exactly one token: not `a`, not `a.b.c`.
        assert_eq!(next(&mut star).await.payload, "two tokens");
        // `>` is one or more tokens: not `a` itself.
        assert_eq!(next(&mut gt).await.payload, "three tokens");
        assert_eq!(next(&mut gt).await.payload, "two tokens");
        assert_eq!(next(&mut mid).await.payload, "middle");
    }

    pub async fn a_dropped_subscription_stops_receiving(bus: Arc<dyn EventBus>) {
        let sub = bus.subscribe("gone.x").await.unwrap();
        drop(sub);
        bus.ping().await.unwrap();
        // With no subscriber left, a request on the subject finds no responders.
        let err = bus
            .request(
                "gone.x",
                Headers::new(),
                Bytes::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::NoResponders { .. }), "{err}");
    }

    pub async fn headers_and_trace_context_cross_every_hop(bus: Arc<dyn EventBus>) {
        // A real OpenTelemetry tracer: spans get valid, sampled contexts.
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("suite")));
        let _guard = tracing::subscriber::set_default(subscriber);

        let publisher = tracing::info_span!("publisher");
        let trace_id = publisher.context().span().span_context().trace_id();
        assert!(publisher.context().span().span_context().is_valid());

        // Core publish.
        let mut sub = bus.subscribe("ws.trace").await.unwrap();
        bus.publish(
            "ws.trace",
            Headers::new().with("x-tenant", "acme"),
            body("p"),
        )
        .instrument(publisher.clone())
        .await
        .unwrap();
        let m = next(&mut sub).await;
        assert_eq!(m.headers.get("x-tenant"), Some("acme"));
        assert!(m.headers.get("traceparent").is_some());
        assert_eq!(m.trace_context().span().span_context().trace_id(), trace_id);
        // A consumer span parented on it joins the same trace.
        let consumer = tracing::info_span!("consumer");
        let _ = consumer.set_parent(m.trace_context());
        assert_eq!(
            consumer.context().span().span_context().trace_id(),
            trace_id
        );

        // Durable publish → pull consumer.
        events_stream(&bus).await;
        bus.publish_durable(
            "evt.cowork.session.created",
            Headers::new(),
            body("d"),
            Some("t1"),
        )
        .instrument(publisher.clone())
        .await
        .unwrap();
        let c = bus
            .consumer(&ConsumerConfig::events("trace", "cowork"))
            .await
            .unwrap();
        let d = fetch_exactly(&c, 1).await;
        assert_eq!(
            d[0].message
                .trace_context()
                .span()
                .span_context()
                .trace_id(),
            trace_id
        );

        // Request → responder, and the reply carries the responder's trace.
        let mut requests = bus.serve("svc.trace").await.unwrap();
        let responder = tokio::spawn(async move {
            let request = requests.next().await.unwrap();
            let incoming = request.message.trace_context();
            let span = tracing::info_span!("responder");
            let _ = span.set_parent(incoming.clone());
            let id = span.context().span().span_context().trace_id();
            request
                .respond(Headers::new(), body("r"))
                .instrument(span)
                .await
                .unwrap();
            (incoming.span().span_context().trace_id(), id)
        });
        let reply = bus
            .request("svc.trace", Headers::new(), body("q"), WAIT)
            .instrument(publisher.clone())
            .await
            .unwrap();
        let (seen_by_responder, responder_trace) = responder.await.unwrap();
        assert_eq!(seen_by_responder, trace_id);
        assert_eq!(responder_trace, trace_id);
        assert_eq!(
            reply.trace_context().span().span_context().trace_id(),
            trace_id
        );

        // Without a span, an explicit traceparent from the caller is kept.
        let mut sub = bus.subscribe("ws.explicit").await.unwrap();
        let explicit = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        bus.publish(
            "ws.explicit",
            Headers::new().with("traceparent", explicit),
            body("e"),
        )
        .await
        .unwrap();
        let m = next(&mut sub).await;
        assert_eq!(m.headers.get("traceparent"), Some(explicit));
        assert_eq!(
            m.trace_context()
                .span()
                .span_context()
                .trace_id()
                .to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    pub async fn invalid_input_is_refused_with_invalid_argument(bus: Arc<dyn EventBus>) {
        let check = |err: BusError, what: &str| {
            assert_eq!(
                err.error_code(),
                ErrorCode::InvalidArgument,
                "{what}: {err}"
            );
        };
        for bad in ["", " ", "  \t", "a..b", ".a", "has space", "ws.*", "ws.>"] {
            let err = bus
                .publish(bad, Headers::new(), Bytes::new())
                .await
                .unwrap_err();
            assert!(matches!(err, BusError::InvalidSubject { .. }), "{bad:?}");
            check(err, bad);
            check(
                bus.publish_durable(bad, Headers::new(), Bytes::new(), None)
                    .await
                    .unwrap_err(),
                bad,
            );
            check(
                bus.request(bad, Headers::new(), Bytes::new(), WAIT)
                    .await
                    .unwrap_err(),
                bad,
            );
        }
        for bad in ["", " ", "a.>.b", "a b"] {
            check(bus.subscribe(bad).await.unwrap_err(), bad);
            check(bus.serve(bad).await.unwrap_err(), bad);
        }
        check(
            bus.publish("ok", Headers::new().with("bad name", "v"), Bytes::new())
                .await
                .unwrap_err(),
            "header name",
        );
        check(
            bus.publish("ok", Headers::new().with("x", "a\r\nb"), Bytes::new())
                .await
                .unwrap_err(),
            "header value",
        );
        check(
            bus.ensure_stream(&StreamConfig::new("bad.name", ["x.>"]))
                .await
                .unwrap_err(),
            "stream name",
        );
        check(
            bus.ensure_stream(&StreamConfig::new("ok", ["x..y"]))
                .await
                .unwrap_err(),
            "stream subject",
        );
        events_stream(&bus).await;
        check(
            bus.consumer(&ConsumerConfig::new("cowork-events", "has space"))
                .await
                .unwrap_err(),
            "consumer name",
        );
        check(
            bus.consumer(&ConsumerConfig::events("x", "cowork").with_max_deliver(0))
                .await
                .unwrap_err(),
            "max_deliver",
        );
        check(
            bus.publish_durable("evt.cowork.a.b", Headers::new(), Bytes::new(), Some(""))
                .await
                .unwrap_err(),
            "dedupe id",
        );
        let c = bus
            .consumer(&ConsumerConfig::events("x", "cowork"))
            .await
            .unwrap();
        check(c.fetch(0, WAIT).await.unwrap_err(), "fetch size");
    }

    pub async fn oversized_messages_are_refused(bus: Arc<dyn EventBus>) {
        // Both default to NATS's 1 MiB limit for payload plus headers.
        let big = Bytes::from(vec![b'x'; 1024 * 1024 + 1]);
        let err = bus
            .publish("big", Headers::new(), big.clone())
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::PayloadTooLarge, "{err}");
        events_stream(&bus).await;
        let err = bus
            .publish_durable("evt.cowork.big.blob", Headers::new(), big, None)
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::PayloadTooLarge, "{err}");
        // Well below the limit is fine.
        let mut sub = bus.subscribe("big").await.unwrap();
        bus.publish("big", Headers::new(), Bytes::from(vec![b'x'; 512 * 1024]))
            .await
            .unwrap();
        assert_eq!(next(&mut sub).await.payload.len(), 512 * 1024);
    }

    pub async fn durable_publish_is_idempotent_within_the_window(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        let publish = |id: Option<&'static str>, payload: &'static str| {
            let bus = bus.clone();
            async move {
                bus.publish_durable(
                    "evt.cowork.session.created",
                    Headers::new(),
                    body(payload),
                    id,
                )
                .await
                .unwrap()
            }
        };
        let first = publish(Some("a"), "one").await;
        assert_eq!(first.stream, "cowork-events");
        assert_eq!(first.sequence, 1);
        assert!(!first.duplicate);
        let again = publish(Some("a"), "one again").await;
        assert!(again.duplicate);
        assert_eq!(again.sequence, 1, "a duplicate reports the first copy");
        let b = publish(Some("b"), "two").await;
        assert_eq!((b.sequence, b.duplicate), (2, false));
        // Without an id nothing is de-duplicated.
        assert_eq!(publish(None, "three").await.sequence, 3);
        assert_eq!(publish(None, "three").await.sequence, 4);

        let c = bus
            .consumer(&ConsumerConfig::events("dedupe", "cowork"))
            .await
            .unwrap();
        let got = fetch_exactly(&c, 4).await;
        assert_eq!(payloads(&got), ["one", "two", "three", "three"]);
        assert_eq!(
            got[0].message.headers.get(liquid_bus::MSG_ID_HEADER),
            Some("a")
        );
        assert_nothing_to_fetch(&c).await;
    }

    pub async fn a_repeated_id_is_stored_again_after_the_window(bus: Arc<dyn EventBus>) {
        bus.ensure_stream(
            &StreamConfig::new("short-window", ["short.>"])
                .with_duplicate_window(Duration::from_secs(1)),
        )
        .await
        .unwrap();
        let publish = || bus.publish_durable("short.x", Headers::new(), body("x"), Some("same"));
        let first = publish().await.unwrap();
        assert!(!first.duplicate);
        assert!(publish().await.unwrap().duplicate);
        // Once the window has passed, the id is new again.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ack = publish().await.unwrap();
            if !ack.duplicate {
                assert_eq!(ack.sequence, first.sequence + 1);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the id never expired"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn durable_publish_without_a_stream_fails_clearly(bus: Arc<dyn EventBus>) {
        let err = bus
            .publish_durable("evt.nobody.thing.done", Headers::new(), body("x"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::NoStream { .. }), "{err}");
        assert_eq!(err.error_code(), ErrorCode::FailedPrecondition);
        let err = bus
            .consumer(&ConsumerConfig::events("x", "nobody"))
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::StreamNotFound { .. }), "{err}");
        assert_eq!(err.error_code(), ErrorCode::NotFound);
    }

    pub async fn streams_must_not_overlap(bus: Arc<dyn EventBus>) {
        bus.ensure_stream(&StreamConfig::new("first", ["evt.a.>"]))
            .await
            .unwrap();
        let err = bus
            .ensure_stream(&StreamConfig::new("second", ["evt.*.x"]))
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::Conflict, "{err}");
        bus.ensure_stream(&StreamConfig::new("second", ["evt.b.>"]))
            .await
            .unwrap();
    }

    pub async fn ensure_stream_is_idempotent_and_updates(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        durable(&bus, "evt.cowork.session.created", "kept").await;
        events_stream(&bus).await;
        // Adding a subject keeps what is stored.
        bus.ensure_stream(&StreamConfig::new(
            "cowork-events",
            ["evt.cowork.>", "legacy.cowork.>"],
        ))
        .await
        .unwrap();
        assert_eq!(durable(&bus, "legacy.cowork.x", "new subject").await, 2);
        let c = bus
            .consumer(&ConsumerConfig::events("ensure", "cowork"))
            .await
            .unwrap();
        assert_eq!(
            payloads(&fetch_exactly(&c, 2).await),
            ["kept", "new subject"]
        );
    }

    pub async fn pull_consumer_delivers_in_order_and_ack_removes(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        for p in ["a", "b", "c"] {
            durable(&bus, "evt.cowork.step.done", p).await;
        }
        let c = bus
            .consumer(&ConsumerConfig::events("worker", "cowork"))
            .await
            .unwrap();
        assert_eq!(c.name(), "worker-on-cowork-events");
        assert_eq!(c.stream(), "cowork-events");
        let info = c.info().await.unwrap();
        assert_eq!((info.pending, info.ack_pending), (3, 0));

        let got = fetch_exactly(&c, 3).await;
        assert_eq!(payloads(&got), ["a", "b", "c"]);
        assert_eq!(
            got.iter().map(|d| d.stream_sequence).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(got.iter().all(|d| d.delivery_count == 1));
        assert_eq!(got[0].message.subject, "evt.cowork.step.done");
        let info = c.info().await.unwrap();
        assert_eq!((info.pending, info.ack_pending), (0, 3));

        for d in &got {
            d.ack().await.unwrap();
        }
        // A second answer after the ack changes nothing.
        got[0].nak(None).await.unwrap();
        assert_nothing_to_fetch(&c).await;
        let info = c.info().await.unwrap();
        assert_eq!((info.pending, info.ack_pending), (0, 0));
        // A zero wait returns at once with what there is.
        assert!(c.fetch(5, Duration::ZERO).await.unwrap().is_empty());
    }

    pub async fn nak_redelivers_at_once_or_after_a_delay(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        durable(&bus, "evt.cowork.step.done", "job").await;
        let c = bus
            .consumer(&ConsumerConfig::events("nak", "cowork"))
            .await
            .unwrap();
        let first = fetch_exactly(&c, 1).await.remove(0);
        first.nak(None).await.unwrap();
        let second = fetch_exactly(&c, 1).await.remove(0);
        assert_eq!(second.stream_sequence, first.stream_sequence);
        assert_eq!(second.delivery_count, 2);
        second.nak(Some(Duration::from_millis(300))).await.unwrap();
        // The delayed one comes back on its own within the wait.
        let third = fetch_exactly(&c, 1).await.remove(0);
        assert_eq!(third.stream_sequence, first.stream_sequence);
        assert_eq!(third.delivery_count, 3);
        third.ack().await.unwrap();
        assert_nothing_to_fetch(&c).await;
    }

    pub async fn unacked_deliveries_come_back_after_ack_wait(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        durable(&bus, "evt.cowork.step.done", "slow").await;
        let c = bus
            .consumer(
                &ConsumerConfig::events("expiry", "cowork")
                    .with_ack_wait(Duration::from_millis(500)),
            )
            .await
            .unwrap();
        let first = fetch_exactly(&c, 1).await.remove(0);
        assert_eq!(first.delivery_count, 1);
        drop(first);
        let again = fetch_exactly(&c, 1).await.remove(0);
        assert_eq!(again.message.payload, "slow");
        assert_eq!(again.delivery_count, 2);
        again.ack().await.unwrap();
        assert_nothing_to_fetch(&c).await;
    }

    pub async fn in_progress_extends_the_ack_wait(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        durable(&bus, "evt.cowork.step.done", "long job").await;
        durable(&bus, "evt.cowork.step.done", "marker").await;
        let c = bus
            .consumer(
                &ConsumerConfig::events("progress", "cowork")
                    .with_ack_wait(Duration::from_millis(800))
                    .with_max_ack_pending(2),
            )
            .await
            .unwrap();
        let got = fetch_exactly(&c, 2).await;
        let (job, marker) = (&got[0], &got[1]);
        // Keep the job alive past several ack waits while the marker is left to expire.
        let until = tokio::time::Instant::now() + Duration::from_millis(2000);
        while tokio::time::Instant::now() < until {
            job.in_progress().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The expired marker comes back; the job, kept in progress, does not.
        let back = fetch_exactly(&c, 1).await.remove(0);
        assert_eq!(back.stream_sequence, marker.stream_sequence);
        job.ack().await.unwrap();
        back.ack().await.unwrap();
        assert_nothing_to_fetch(&c).await;
    }

    pub async fn max_deliver_is_honoured(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        durable(&bus, "evt.cowork.step.done", "poison").await;
        let c = bus
            .consumer(&ConsumerConfig::events("poison", "cowork").with_max_deliver(2))
            .await
            .unwrap();
        let first = fetch_exactly(&c, 1).await.remove(0);
        first.nak(None).await.unwrap();
        let second = fetch_exactly(&c, 1).await.remove(0);
        assert_eq!(second.delivery_count, 2);
        second.nak(None).await.unwrap();
        // Delivered twice: it does not come back, and the consumer moves on.
        durable(&bus, "evt.cowork.step.done", "next").await;
        let got = fetch_exactly(&c, 1).await;
        assert_eq!(payloads(&got), ["next"]);
        got[0].ack().await.unwrap();
        assert_nothing_to_fetch(&c).await;
    }

    pub async fn term_stops_redelivery(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        durable(&bus, "evt.cowork.step.done", "bad").await;
        let c = bus
            .consumer(
                &ConsumerConfig::events("term", "cowork").with_ack_wait(Duration::from_millis(300)),
            )
            .await
            .unwrap();
        fetch_exactly(&c, 1).await[0].term().await.unwrap();
        assert_nothing_to_fetch(&c).await;
        assert_eq!(c.info().await.unwrap().ack_pending, 0);
    }

    pub async fn a_consumer_resumes_by_name_after_being_dropped(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        for p in ["1", "2", "3", "4"] {
            durable(&bus, "evt.cowork.step.done", p).await;
        }
        let config =
            ConsumerConfig::events("resume", "cowork").with_ack_wait(Duration::from_secs(1));
        let c = bus.consumer(&config).await.unwrap();
        let got = fetch_exactly(&c, 3).await;
        got[0].ack().await.unwrap();
        got[1].ack().await.unwrap();
        // The third stays unacknowledged when the handle goes away.
        drop(got);
        drop(c);

        // The same name continues: the new message, and the unacked one once its wait is over.
        let c = bus.consumer(&config).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            for d in fetch_exactly(&c, 1).await {
                d.ack().await.unwrap();
                seen.push((d.message.payload.clone(), d.delivery_count));
            }
        }
        seen.sort();
        assert_eq!(seen, [(body("3"), 2), (body("4"), 1)]);
        assert_nothing_to_fetch(&c).await;

        // Another name has a position of its own.
        let other = bus
            .consumer(&ConsumerConfig::events("other", "cowork"))
            .await
            .unwrap();
        assert_eq!(
            payloads(&fetch_exactly(&other, 4).await),
            ["1", "2", "3", "4"]
        );
    }

    pub async fn filters_and_start_positions(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        durable(&bus, "evt.cowork.session.created", "old session").await;
        durable(&bus, "evt.cowork.step.done", "old step").await;

        let sessions = bus
            .consumer(
                &ConsumerConfig::events("sessions", "cowork")
                    .with_filter_subject("evt.cowork.session.*"),
            )
            .await
            .unwrap();
        let fresh = bus
            .consumer(
                &ConsumerConfig::events("fresh", "cowork").with_deliver_from(DeliverFrom::New),
            )
            .await
            .unwrap();
        assert_eq!(sessions.info().await.unwrap().pending, 1);
        assert_eq!(fresh.info().await.unwrap().pending, 0);

        durable(&bus, "evt.cowork.step.done", "new step").await;
        durable(&bus, "evt.cowork.session.closed", "new session").await;

        let got = fetch_exactly(&sessions, 2).await;
        assert_eq!(payloads(&got), ["old session", "new session"]);
        let got = fetch_exactly(&fresh, 2).await;
        assert_eq!(payloads(&got), ["new step", "new session"]);

        // The start position cannot change.
        let err = bus
            .consumer(&ConsumerConfig::events("fresh", "cowork"))
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::Conflict, "{err}");
        // A filter outside the stream's subjects is accepted and simply matches nothing.
        let outside = bus
            .consumer(
                &ConsumerConfig::events("outside", "cowork").with_filter_subject("evt.media.>"),
            )
            .await
            .unwrap();
        assert_eq!(outside.info().await.unwrap().pending, 0);
        assert_nothing_to_fetch(&outside).await;
    }

    pub async fn max_ack_pending_limits_outstanding_deliveries(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        for p in ["a", "b", "c"] {
            durable(&bus, "evt.cowork.step.done", p).await;
        }
        let c = bus
            .consumer(&ConsumerConfig::events("limited", "cowork").with_max_ack_pending(2))
            .await
            .unwrap();
        let got = fetch_exactly(&c, 2).await;
        assert_eq!(payloads(&got), ["a", "b"]);
        assert_nothing_to_fetch(&c).await;
        got[0].ack().await.unwrap();
        let got_more = fetch_exactly(&c, 1).await;
        assert_eq!(payloads(&got_more), ["c"]);
    }

    pub async fn events_travel_durably_with_their_id_as_dedupe_id(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        let event = Event::new(
            "cowork.session.created",
            "acme",
            serde_json::json!({"session_id": "s1"}),
        )
        .unwrap();
        let ack = bus.publish_event(&event).await.unwrap();
        assert!(!ack.duplicate);
        assert!(bus.publish_event(&event).await.unwrap().duplicate);

        let c = bus
            .consumer(&ConsumerConfig::events("healer", "cowork"))
            .await
            .unwrap();
        let got = fetch_exactly(&c, 1).await;
        let d = &got[0];
        assert_eq!(d.message.subject, "evt.cowork.session.created");
        assert_eq!(d.message.event().unwrap(), event);
        assert_eq!(
            d.message.headers.get(liquid_bus::MSG_ID_HEADER),
            Some(event.id.to_string().as_str())
        );
        d.ack().await.unwrap();
        assert_nothing_to_fetch(&c).await;

        let mut bad = event.clone();
        bad.tenant = String::new();
        let err = bus.publish_event(&bad).await.unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::InvalidArgument);
    }

    pub async fn core_and_durable_paths_see_each_other(bus: Arc<dyn EventBus>) {
        events_stream(&bus).await;
        let mut watcher = bus.subscribe("evt.cowork.>").await.unwrap();
        // A durable publish reaches core subscribers.
        durable(&bus, "evt.cowork.a.b", "durable").await;
        assert_eq!(next(&mut watcher).await.payload, "durable");
        // A core publish on a captured subject is stored.
        publish(&bus, "evt.cowork.a.c", "core").await;
        assert_eq!(next(&mut watcher).await.payload, "core");
        let c = bus
            .consumer(&ConsumerConfig::events("both", "cowork"))
            .await
            .unwrap();
        assert_eq!(payloads(&fetch_exactly(&c, 2).await), ["durable", "core"]);
        // A request on a captured subject is answered by the stream with its ack.
        let reply = bus
            .request("evt.cowork.a.d", Headers::new(), body("req"), WAIT)
            .await
            .unwrap();
        let ack: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(ack["stream"], "cowork-events");
        assert_eq!(ack["seq"], 3);
    }

    pub async fn request_reply_answers_and_fails_clearly(bus: Arc<dyn EventBus>) {
        let mut requests = bus.serve("svc.echo").await.unwrap();
        assert_eq!(requests.subject(), "svc.echo");
        let responder = tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let mut answer = request.message.payload.to_vec();
                answer.reverse();
                let tenant = request.message.headers.get("x-tenant").unwrap_or("none");
                request
                    .respond(
                        Headers::new().with("x-echo-tenant", tenant),
                        Bytes::from(answer),
                    )
                    .await
                    .unwrap();
            }
        });
        for i in 0..3 {
            let reply = bus
                .request(
                    "svc.echo",
                    Headers::new().with("x-tenant", format!("t{i}")),
                    body("abc"),
                    WAIT,
                )
                .await
                .unwrap();
            assert_eq!(reply.payload, "cba");
            assert_eq!(
                reply.headers.get("x-echo-tenant"),
                Some(format!("t{i}").as_str())
            );
        }

        let err = bus
            .request("svc.nobody", Headers::new(), body("x"), WAIT)
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::NoResponders { .. }), "{err}");
        assert_eq!(err.error_code(), ErrorCode::Unavailable);

        // A responder that takes the request and never answers: the requester times out.
        let mut silent = bus.serve("svc.silent").await.unwrap();
        let holder = tokio::spawn(async move {
            let held = silent.next().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(held);
        });
        let err = bus
            .request(
                "svc.silent",
                Headers::new(),
                body("x"),
                Duration::from_millis(300),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, BusError::Timeout { .. }), "{err}");
        assert_eq!(err.error_code(), ErrorCode::DeadlineExceeded);
        holder.abort();
        responder.abort();
    }

    pub async fn each_request_goes_to_one_responder(bus: Arc<dyn EventBus>) {
        let mut first = bus.serve("svc.shared").await.unwrap();
        let mut second = bus.serve("svc.shared").await.unwrap();
        for i in 0..6 {
            let requester = {
                let bus = bus.clone();
                tokio::spawn(async move {
                    bus.request("svc.shared", Headers::new(), body(&i.to_string()), WAIT)
                        .await
                })
            };
            let request = tokio::select! {
                Some(r) = first.next() => r,
                Some(r) = second.next() => r,
            };
            assert_eq!(request.message.payload, i.to_string());
            request.respond(Headers::new(), body("done")).await.unwrap();
            assert_eq!(requester.await.unwrap().unwrap().payload, "done");
            // Both responders' copies would have been routed before the reply came back.
            assert!(
                first.next().now_or_never().is_none(),
                "request {i} went twice"
            );
            assert!(
                second.next().now_or_never().is_none(),
                "request {i} went twice"
            );
        }
    }

    pub async fn drain_delivers_buffered_messages_then_closes(bus: Arc<dyn EventBus>) {
        let mut sub = bus.subscribe("ws.final").await.unwrap();
        publish(&bus, "ws.final", "last words").await;
        bus.drain().await.unwrap();
        assert_eq!(next(&mut sub).await.payload, "last words");
        let end = tokio::time::timeout(WAIT, sub.next()).await.unwrap();
        assert!(end.is_none(), "the subscription ends after a drain");

        for err in [
            bus.publish("ws.final", Headers::new(), Bytes::new())
                .await
                .unwrap_err(),
            bus.subscribe("ws.final").await.unwrap_err(),
            bus.ping().await.unwrap_err(),
        ] {
            assert!(matches!(err, BusError::Closed), "{err}");
            assert_eq!(err.error_code(), ErrorCode::Unavailable);
        }
        // Draining twice is harmless.
        bus.drain().await.unwrap();
    }
}

/// Upper bound for anything awaited; only there to turn a hang into a failure.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn connect_chooses_the_backend_by_url() {
    use liquid_kit::{ErrorCode, HasErrorCode};
    let bus = liquid_bus::connect("memory://").await.unwrap();
    assert_eq!(bus.kind(), "memory");
    bus.ping().await.unwrap();
    let err = liquid_bus::connect("redis://user:secret@host:6379")
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::InvalidConfig);
    assert!(!err.to_string().contains("secret"), "{err}");
}
