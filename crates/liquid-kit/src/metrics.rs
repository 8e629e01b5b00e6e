//! Process-wide metrics: the `metrics` facade recorded into Prometheus (always, for
//! `/metrics`) and, once OTLP is configured, mirrored into OpenTelemetry instruments so the same
//! numbers also leave over OTLP.
//!
//! Services record with the `metrics` macros and never talk to an exporter directly. Metric
//! names follow `liquid_<service>_<what>` with `_total` for counters and `_seconds` for
//! histograms of durations.
//!
//! Histogram samples queue in the recorder until they are folded into their buckets; a thread
//! does that every [`UPKEEP_INTERVAL`], so memory stays flat however rarely `/metrics` is
//! scraped, and a scrape never has a large backlog to fold on a request thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};

/// How often queued histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Bucket bounds (seconds) for every `*_seconds` histogram: 0.5 ms to 30 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

struct TeeRecorder {
    prometheus: PrometheusRecorder,
    handle: PrometheusHandle,
    otel: OnceLock<Meter>,
}

static RECORDER: OnceLock<&'static TeeRecorder> = OnceLock::new();

fn recorder() -> &'static TeeRecorder {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let prometheus = match builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        {
            Ok(b) => b.build_recorder(),
            // Only fails for an empty bucket list, which DURATION_BUCKETS is not.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = prometheus.handle();
        let tee: &'static TeeRecorder = Box::leak(Box::new(TeeRecorder {
            prometheus,
            handle,
            otel: OnceLock::new(),
        }));
        // Fails only if something else installed a recorder first; metrics then go there and
        // `/metrics` renders what this recorder saw (nothing), which a test would catch.
        let _ = metrics::set_global_recorder(tee);
        let upkeep = tee.handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the metrics upkeep thread; histogram samples are folded only when /metrics is scraped");
        }
        tee
    })
}

/// Installs the process-wide recorder (idempotent) and returns the Prometheus handle.
pub fn handle() -> &'static PrometheusHandle {
    &recorder().handle
}

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    let h = handle();
    h.run_upkeep();
    h.render()
}

/// Mirrors metrics registered from now on into OpenTelemetry instruments of `provider`.
pub fn export_to_otel(provider: &opentelemetry_sdk::metrics::SdkMeterProvider) {
    let _ = recorder().otel.set(provider.meter("liquid"));
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned()))
        .collect()
}

struct TeeCounter {
    prometheus: Counter,
    otel: Option<(opentelemetry::metrics::Counter<u64>, Vec<KeyValue>)>,
    last_absolute: AtomicU64,
}

impl CounterFn for TeeCounter {
    fn increment(&self, value: u64) {
        self.prometheus.increment(value);
        if let Some((c, attrs)) = &self.otel {
            c.add(value, attrs);
        }
    }

    fn absolute(&self, value: u64) {
        self.prometheus.absolute(value);
        // OTel counters take deltas; convert a monotonic absolute into one.
        let prev = self.last_absolute.swap(value, Ordering::Relaxed);
        if let Some((c, attrs)) = &self.otel
            && value > prev
        {
            c.add(value - prev, attrs);
        }
    }
}

struct TeeGauge {
    prometheus: Gauge,
    otel: Option<(opentelemetry::metrics::Gauge<f64>, Vec<KeyValue>)>,
    // f64 bits, to turn increments into the absolute value an OTel gauge records.
    value: AtomicU64,
}

impl TeeGauge {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let mut current = self.value.load(Ordering::Relaxed);
        loop {
            let next = f(f64::from_bits(current)).to_bits();
            match self.value.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        if let Some((g, attrs)) = &self.otel {
            g.record(f64::from_bits(self.value.load(Ordering::Relaxed)), attrs);
        }
    }
}

impl GaugeFn for TeeGauge {
    fn increment(&self, value: f64) {
        self.prometheus.increment(value);
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.prometheus.decrement(value);
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.prometheus.set(value);
        self.update(|_| value);
    }
}

struct TeeHistogram {
    prometheus: Histogram,
    otel: Option<(opentelemetry::metrics::Histogram<f64>, Vec<KeyValue>)>,
}

impl HistogramFn for TeeHistogram {
    fn record(&self, value: f64) {
        self.prometheus.record(value);
        if let Some((h, attrs)) = &self.otel {
            h.record(value, attrs);
        }
    }
}

impl Recorder for TeeRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let otel = self.otel.get().map(|m| {
            (
                m.u64_counter(key.name().to_owned()).build(),
                attributes(key),
            )
        });
        Counter::from_arc(Arc::new(TeeCounter {
            prometheus: self.prometheus.register_counter(key, metadata),
            otel,
            last_absolute: AtomicU64::new(0),
        }))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let otel = self
            .otel
            .get()
            .map(|m| (m.f64_gauge(key.name().to_owned()).build(), attributes(key)));
        Gauge::from_arc(Arc::new(TeeGauge {
            prometheus: self.prometheus.register_gauge(key, metadata),
            otel,
            value: AtomicU64::new(0f64.to_bits()),
        }))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let otel = self.otel.get().map(|m| {
            let builder = m.f64_histogram(key.name().to_owned());
            let builder = if key.name().ends_with("_seconds") {
                builder
                    .with_unit("s")
                    .with_boundaries(DURATION_BUCKETS.to_vec())
            } else {
                builder
            };
            (builder.build(), attributes(key))
        });
        Histogram::from_arc(Arc::new(TeeHistogram {
            prometheus: self.prometheus.register_histogram(key, metadata),
            otel,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_metrics_render_in_prometheus_text() {
        let _ = handle();
        metrics::counter!("liquid_kittest_things_total", "kind" => "a").increment(3);
        metrics::histogram!("liquid_kittest_wait_seconds").record(0.003);
        metrics::gauge!("liquid_kittest_depth").set(5.0);
        let text = render();
        assert!(
            text.contains("liquid_kittest_things_total{kind=\"a\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("liquid_kittest_wait_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("liquid_kittest_depth 5"), "{text}");
    }
}
