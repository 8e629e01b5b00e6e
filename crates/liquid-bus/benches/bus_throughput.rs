//! Publish → consume throughput and latency of the event bus, in-process against NATS, in one
//! run, printed as a markdown table for BENCHMARKS.md.
//!
//! For each backend and path:
//! - throughput: `THROUGHPUT_MESSAGES` messages published as fast as the path allows, timed from
//!   the first publish until the consumer has received (and, for durable, acknowledged) the
//!   last one;
//! - latency: `LATENCY_SAMPLES` messages one at a time, each timed from just before the publish
//!   until the consumer has it; p50 and p99 of those.
//!
//! Core: a subscriber on its own connection. Durable: `publish_durable` (awaits the stream's
//! ack) from concurrent publishers, a pull consumer fetching batches of 100 and acknowledging
//! every message (acks confirmed by the server). NATS runs on a `nats-server -js` the bench
//! starts itself (liquid-testkit), on loopback, file storage.
//!
//! Run: `cargo bench -p liquid-bus --bench bus_throughput`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use liquid_bus::{ConsumerConfig, EventBus, Headers, MemoryBus, StreamConfig};
use liquid_testkit::nats::NatsServer;

const PAYLOAD_BYTES: usize = 128;
/// Below async-nats's and the in-process bus's 65 536-message subscription buffer, so a core
/// subscriber that falls behind does not drop (and the count stays exact).
const CORE_MESSAGES: usize = 50_000;
const DURABLE_MESSAGES: usize = 20_000;
const DURABLE_PUBLISHERS: usize = 8;
const FETCH_BATCH: usize = 100;
const LATENCY_SAMPLES: usize = 2_000;
/// Give up on a run after this long (reported as a failure, never as a figure).
const RUN_LIMIT: Duration = Duration::from_secs(30);

struct Row {
    backend: &'static str,
    path: &'static str,
    messages: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
}

/// A publishing side and a consuming side; for NATS two connections to the same server.
struct Pair {
    name: &'static str,
    publisher: Arc<dyn EventBus>,
    consumer: Arc<dyn EventBus>,
}

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; PAYLOAD_BYTES])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn core_throughput(pair: &Pair) -> anyhow::Result<f64> {
    let subject = "bench.core.throughput";
    let mut sub = pair.consumer.subscribe(subject).await?;
    pair.consumer.ping().await?;
    // Make sure the subscription is live end to end before timing.
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        pair.publisher
            .publish(subject, Headers::new(), Bytes::from_static(b"warmup"))
            .await?;
        if tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "subscription never became live");
    }
    while tokio::time::timeout(Duration::from_millis(50), sub.next())
        .await
        .is_ok()
    {}

    let receiver = tokio::spawn(async move {
        let mut received = 0;
        while received < CORE_MESSAGES {
            match tokio::time::timeout(RUN_LIMIT, sub.next()).await {
                Ok(Some(_)) => received += 1,
                _ => break,
            }
        }
        (received, Instant::now())
    });
    let body = payload();
    let start = Instant::now();
    for _ in 0..CORE_MESSAGES {
        pair.publisher
            .publish(subject, Headers::new(), body.clone())
            .await?;
    }
    let (received, end) = receiver.await?;
    anyhow::ensure!(
        received == CORE_MESSAGES,
        "{}: core subscriber got {received} of {CORE_MESSAGES}",
        pair.name
    );
    Ok((end - start).as_secs_f64())
}

async fn core_latency(pair: &Pair) -> anyhow::Result<Vec<Duration>> {
    let subject = "bench.core.latency";
    let mut sub = pair.consumer.subscribe(subject).await?;
    pair.consumer.ping().await?;
    let body = payload();
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    // The first few warm the path up and are not counted.
    for i in 0..LATENCY_SAMPLES + 100 {
        let t0 = Instant::now();
        pair.publisher
            .publish(subject, Headers::new(), body.clone())
            .await?;
        tokio::time::timeout(RUN_LIMIT, sub.next())
            .await
            .context("core latency message lost")?
            .context("subscription ended")?;
        if i >= 100 {
            samples.push(t0.elapsed());
        }
    }
    Ok(samples)
}

async fn durable_throughput(pair: &Pair) -> anyhow::Result<f64> {
    let stream = StreamConfig::new("bench-throughput", ["bench.durable.throughput"]);
    pair.publisher.ensure_stream(&stream).await?;
    let consumer = pair
        .consumer
        .consumer(&ConsumerConfig::new(
            "bench-throughput",
            "bench-throughput-reader",
        ))
        .await?;
    let receiver = tokio::spawn(async move {
        let mut received = 0;
        while received < DURABLE_MESSAGES {
            let batch = consumer.fetch(FETCH_BATCH, RUN_LIMIT).await?;
            anyhow::ensure!(!batch.is_empty(), "durable consumer starved");
            received += batch.len();
            try_join_all(batch.iter().map(liquid_bus::Delivery::ack)).await?;
        }
        Ok((received, Instant::now()))
    });
    let body = payload();
    let start = Instant::now();
    let per_publisher = DURABLE_MESSAGES / DURABLE_PUBLISHERS;
    let publishers = (0..DURABLE_PUBLISHERS).map(|_| {
        let bus = pair.publisher.clone();
        let body = body.clone();
        tokio::spawn(async move {
            for _ in 0..per_publisher {
                bus.publish_durable(
                    "bench.durable.throughput",
                    Headers::new(),
                    body.clone(),
                    None,
                )
                .await?;
            }
            anyhow::Ok(())
        })
    });
    for publisher in publishers.collect::<Vec<_>>() {
        publisher.await??;
    }
    let (received, end) = receiver.await??;
    anyhow::ensure!(
        received == DURABLE_MESSAGES,
        "{}: got {received}",
        pair.name
    );
    Ok((end - start).as_secs_f64())
}

async fn durable_latency(pair: &Pair) -> anyhow::Result<Vec<Duration>> {
    let stream = StreamConfig::new("bench-latency", ["bench.durable.latency"]);
    pair.publisher.ensure_stream(&stream).await?;
    let consumer = pair
        .consumer
        .consumer(&ConsumerConfig::new(
            "bench-latency",
            "bench-latency-reader",
        ))
        .await?;
    let body = payload();
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES + 100 {
        let t0 = Instant::now();
        pair.publisher
            .publish_durable("bench.durable.latency", Headers::new(), body.clone(), None)
            .await?;
        let batch = consumer.fetch(1, RUN_LIMIT).await?;
        let elapsed = t0.elapsed();
        let delivery = batch.first().context("durable latency message lost")?;
        delivery.ack().await?;
        if i >= 100 {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

async fn measure(pair: &Pair) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let seconds = core_throughput(pair).await?;
    let mut latency = core_latency(pair).await?;
    latency.sort();
    rows.push(Row {
        backend: pair.name,
        path: "core publish → subscribe",
        messages: CORE_MESSAGES,
        seconds,
        p50: percentile(&latency, 0.50),
        p99: percentile(&latency, 0.99),
    });
    let seconds = durable_throughput(pair).await?;
    let mut latency = durable_latency(pair).await?;
    latency.sort();
    rows.push(Row {
        backend: pair.name,
        path: "durable publish → pull + ack",
        messages: DURABLE_MESSAGES,
        seconds,
        p50: percentile(&latency, 0.50),
        p99: percentile(&latency, 0.99),
    });
    Ok(rows)
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

async fn run() -> anyhow::Result<()> {
    let wall = Instant::now();
    let memory: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
    let memory = Pair {
        name: "memory://",
        publisher: memory.clone(),
        consumer: memory,
    };
    let server = NatsServer::start().await?;
    let nats = Pair {
        name: "nats:// (JetStream, file)",
        publisher: liquid_bus::connect(&server.url()).await?,
        consumer: liquid_bus::connect(&server.url()).await?,
    };

    let mut rows = measure(&memory).await?;
    rows.extend(measure(&nats).await?);

    println!();
    println!(
        "| backend | path | messages | throughput (msg/s) | p50 latency (µs) | p99 latency (µs) |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} |",
            row.backend,
            row.path,
            row.messages,
            row.messages as f64 / row.seconds,
            micros(row.p50),
            micros(row.p99),
        );
    }
    println!();
    println!(
        "payload {PAYLOAD_BYTES} B; latency over {LATENCY_SAMPLES} one-at-a-time messages; \
         durable: {DURABLE_PUBLISHERS} concurrent publishers, fetch batches of {FETCH_BATCH}; \
         whole run {:.1}s",
        wall.elapsed().as_secs_f64()
    );
    nats.publisher.drain().await?;
    nats.consumer.drain().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; this harness has no options of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}
