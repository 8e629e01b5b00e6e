//! Push notifications (spec §4.3, §13.2): after every stored task event, each push config of
//! the task gets the `StreamResponse` as an HTTP POST (`application/a2a+json`) with its
//! Authorization scheme and credentials and its token in `X-A2A-Notification-Token`, with a
//! timeout and retries with exponential back-off on 5xx, 408, 429 and transport errors (any
//! other 4xx is final). Deliveries for one task go out in event order; tasks do not wait for
//! each other. The queue is in memory: notifications of events stored just before a replica
//! stops are not sent after its restart.
//!
//! SSRF policy: webhook URLs must be http(s) and every address their host resolves to must be
//! public; loopback is allowed only with `allow_loopback` (a test mode), private ranges only
//! with `allow_private`. The request connects to the address that was checked, so a DNS answer
//! cannot change between the check and the connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use liquid_a2a::A2aError;
use liquid_a2a::pb;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::engine::EventObserver;
use crate::store::TaskStore;

/// Header carrying a push config's `token`.
pub const TOKEN_HEADER: &str = "x-a2a-notification-token";

/// Push delivery settings (`push` configuration section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Allow webhooks on loopback addresses (tests only).
    pub allow_loopback: bool,
    /// Allow webhooks on private, link-local and unique-local addresses.
    pub allow_private: bool,
    /// Seconds one POST may take.
    pub timeout_secs: u64,
    /// Attempts per event and webhook.
    pub max_attempts: u32,
    /// First back-off in milliseconds (doubles per attempt).
    pub backoff_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            allow_loopback: false,
            allow_private: false,
            timeout_secs: 10,
            max_attempts: 3,
            backoff_ms: 500,
        }
    }
}

/// The URL policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushPolicy {
    /// See [`PushConfig::allow_loopback`].
    pub allow_loopback: bool,
    /// See [`PushConfig::allow_private`].
    pub allow_private: bool,
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_link_local()
                || o[0] == 100 && (64..128).contains(&o[1])
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

impl PushPolicy {
    /// The policy of `config`.
    pub fn from_config(config: &PushConfig) -> PushPolicy {
        PushPolicy {
            allow_loopback: config.allow_loopback,
            allow_private: config.allow_private,
        }
    }

    /// Whether a resolved address may be called.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if ip.is_loopback() {
            return self.allow_loopback;
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        if let IpAddr::V4(v4) = ip
            && v4.is_broadcast()
        {
            return false;
        }
        !is_private(ip) || self.allow_private
    }

    /// Checks a webhook URL without resolving it (scheme, and the host when it is a literal
    /// address or `localhost`); names are checked again after resolution at delivery.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, A2aError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| A2aError::invalid_params(format!("push url: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(A2aError::invalid_params("push url must be http or https"));
        }
        let refused = || A2aError::invalid_params("push url points to a refused address");
        let host = parsed
            .host_str()
            .ok_or_else(|| A2aError::invalid_params("push url needs a host"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            if !self.allows(ip) {
                return Err(refused());
            }
        } else if (bare.eq_ignore_ascii_case("localhost") || bare.ends_with(".localhost"))
            && !self.allow_loopback
        {
            return Err(refused());
        }
        Ok(parsed)
    }

    /// Resolves the URL's host and returns the first allowed address, or why none is.
    pub async fn resolve(&self, url: &reqwest::Url) -> Result<SocketAddr, String> {
        let host = url.host_str().ok_or("no host")?;
        let port = url.port_or_known_default().ok_or("no port")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| e.to_string())?
            .collect();
        if addrs.is_empty() {
            return Err("host did not resolve".into());
        }
        // Every address must pass, or a second lookup could pick a refused one.
        if let Some(bad) = addrs.iter().find(|a| !self.allows(a.ip())) {
            return Err(format!("refused address {}", bad.ip()));
        }
        addrs
            .first()
            .copied()
            .ok_or_else(|| "host did not resolve".into())
    }
}

/// Most deliveries whose tasks are checked for push configs in one query.
const CHECK_BATCH: usize = 256;

struct Delivery {
    tenant: String,
    task_id: String,
    event: pb::StreamResponse,
}

/// Delivers push notifications; plug into the engine as an [`EventObserver`].
pub struct PushDelivery {
    queue: mpsc::UnboundedSender<Delivery>,
}

impl EventObserver for PushDelivery {
    fn observe(&self, tenant: &str, task: &pb::Task, _seq: i64, event: &pb::StreamResponse) {
        let _ = self.queue.send(Delivery {
            tenant: tenant.to_owned(),
            task_id: task.id.clone(),
            event: event.clone(),
        });
    }
}

/// Counters of push deliveries (exported as metrics by the service).
pub const METRIC_DELIVERIES: &str = crate::metrics::PUSH_DELIVERIES;

fn count_attempt(outcome: &'static str) {
    metrics::counter!(crate::metrics::PUSH_ATTEMPTS, "outcome" => outcome).increment(1);
}

impl PushDelivery {
    /// Starts the delivery dispatcher: deliveries of one task go out one after another, in
    /// event order, on a worker of that task; different tasks do not wait for each other (a
    /// slow webhook delays only its own task).
    pub fn start(
        store: Arc<dyn TaskStore>,
        config: PushConfig,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<PushDelivery> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
        let policy = PushPolicy::from_config(&config);
        let worker_tracker = tracker.clone();
        tracker.spawn(
            async move {
                let mut workers: HashMap<String, mpsc::UnboundedSender<Delivery>> = HashMap::new();
                loop {
                    let first = tokio::select! {
                        d = rx.recv() => match d { Some(d) => d, None => return },
                        () = shutdown.cancelled() => return,
                    };
                    let mut batch = vec![first];
                    while batch.len() < CHECK_BATCH {
                        match rx.try_recv() {
                            Ok(d) => batch.push(d),
                            Err(_) => break,
                        }
                    }
                    // A task with a running worker gets its deliveries in order from it (which
                    // reads the task's configs for each). A worker that went idle closed its
                    // queue: the send fails and the delivery waits for a new one, so nothing
                    // is lost between the two.
                    let mut pending = Vec::new();
                    for delivery in batch {
                        let key = format!("{}/{}", delivery.tenant, delivery.task_id);
                        let delivery = match workers.get(&key) {
                            Some(worker) => match worker.send(delivery) {
                                Ok(()) => continue,
                                Err(mpsc::error::SendError(d)) => d,
                            },
                            None => delivery,
                        };
                        pending.push((key, delivery));
                    }
                    if pending.is_empty() {
                        continue;
                    }
                    // Most tasks have no push config: one query for all of them instead of
                    // one config read per event (a task without configs has nothing to send).
                    let mut tasks: Vec<(String, String)> = pending
                        .iter()
                        .map(|(_, d)| (d.tenant.clone(), d.task_id.clone()))
                        .collect();
                    tasks.sort_unstable();
                    tasks.dedup();
                    let with_configs = match store.tasks_with_push_configs(&tasks).await {
                        Ok(found) => Some(found),
                        Err(error) => {
                            // The workers read (and report) for themselves.
                            warn!(%error, "push configs could not be checked");
                            None
                        }
                    };
                    for (key, delivery) in pending {
                        if with_configs.as_ref().is_some_and(|found| {
                            !found.contains(&(delivery.tenant.clone(), delivery.task_id.clone()))
                        }) {
                            continue;
                        }
                        let delivery = match workers.get(&key) {
                            Some(worker) => match worker.send(delivery) {
                                Ok(()) => continue,
                                Err(mpsc::error::SendError(d)) => d,
                            },
                            None => delivery,
                        };
                        workers.retain(|_, w| !w.is_closed());
                        let (worker_tx, worker_rx) = mpsc::unbounded_channel();
                        let _ = worker_tx.send(delivery);
                        workers.insert(key, worker_tx);
                        worker_tracker.spawn(
                            task_worker(
                                store.clone(),
                                policy,
                                config.clone(),
                                worker_rx,
                                shutdown.clone(),
                            )
                            .instrument(info_span!("a2a_push_task_worker")),
                        );
                    }
                }
            }
            .instrument(info_span!("a2a_push_delivery")),
        );
        Arc::new(PushDelivery { queue: tx })
    }
}

/// Delivers one task's notifications in order until its queue is empty, then closes it.
async fn task_worker(
    store: Arc<dyn TaskStore>,
    policy: PushPolicy,
    config: PushConfig,
    mut rx: mpsc::UnboundedReceiver<Delivery>,
    shutdown: CancellationToken,
) {
    loop {
        let delivery = match rx.try_recv() {
            Ok(d) => d,
            Err(_) => {
                rx.close();
                match rx.try_recv() {
                    Ok(d) => d,
                    Err(_) => return,
                }
            }
        };
        if shutdown.is_cancelled() {
            return;
        }
        let configs = match store
            .list_push_configs(&delivery.tenant, &delivery.task_id)
            .await
        {
            Ok(c) => c,
            Err(error) => {
                warn!(%error, "push configs could not be read");
                continue;
            }
        };
        for target in configs {
            tokio::select! {
                () = deliver(&policy, &config, &target, &delivery.event) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

async fn deliver(
    policy: &PushPolicy,
    config: &PushConfig,
    target: &pb::TaskPushNotificationConfig,
    event: &pb::StreamResponse,
) {
    let started = std::time::Instant::now();
    let outcome = attempt_all(policy, config, target, event).await;
    let result = if outcome.is_ok() {
        "delivered"
    } else {
        "failed"
    };
    metrics::counter!(METRIC_DELIVERIES, "result" => result).increment(1);
    metrics::histogram!(crate::metrics::PUSH_DELIVERY_SECONDS)
        .record(started.elapsed().as_secs_f64());
    if let Err(reason) = outcome {
        warn!(task_id = %target.task_id, config_id = %target.id, %reason, "push notification not delivered");
    }
}

async fn attempt_all(
    policy: &PushPolicy,
    config: &PushConfig,
    target: &pb::TaskPushNotificationConfig,
    event: &pb::StreamResponse,
) -> Result<(), String> {
    let refused = |e: String| {
        count_attempt("refused");
        e
    };
    let url = policy
        .check_url(&target.url)
        .map_err(|e| refused(e.to_string()))?;
    let addr = policy.resolve(&url).await.map_err(refused)?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, addr)
        .build()
        .map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    let mut backoff = Duration::from_millis(config.backoff_ms);
    let mut last_error = String::new();
    for attempt in 1..=config.max_attempts.max(1) {
        let mut request = client
            .post(url.clone())
            .header("content-type", liquid_a2a::params::A2A_JSON)
            .body(body.clone());
        if let Some(auth) = &target.authentication {
            let value = if auth.credentials.is_empty() {
                auth.scheme.clone()
            } else {
                format!("{} {}", auth.scheme, auth.credentials)
            };
            request = request.header("authorization", value);
        }
        if !target.token.is_empty() {
            request = request.header(TOKEN_HEADER, &target.token);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                count_attempt("ok");
                return Ok(());
            }
            Ok(r) if r.status().is_client_error() && !matches!(r.status().as_u16(), 408 | 429) => {
                // The receiver refused this notification; sending it again will not help.
                count_attempt("client_error");
                return Err(format!("status {}", r.status()));
            }
            Ok(r) => {
                count_attempt("server_error");
                last_error = format!("status {}", r.status());
            }
            Err(e) => {
                count_attempt(if e.is_timeout() {
                    "timeout"
                } else {
                    "connect_error"
                });
                last_error = e.to_string();
            }
        }
        if attempt < config.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    Err(last_error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_private_and_loopback_by_default() {
        let p = PushPolicy::default();
        for url in [
            "http://127.0.0.1/hook",
            "http://localhost:8080/hook",
            "http://10.1.2.3/hook",
            "http://192.168.0.1/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/hook",
            "http://[fd00::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://0.0.0.0/hook",
            "ftp://example.com/hook",
        ] {
            assert!(p.check_url(url).is_err(), "{url}");
        }
        assert!(p.check_url("https://example.com/hook").is_ok());
        assert!(p.check_url("https://93.184.216.34/hook").is_ok());
    }

    #[test]
    fn test_mode_allows_loopback_only() {
        let p = PushPolicy {
            allow_loopback: true,
            allow_private: false,
        };
        assert!(p.check_url("http://127.0.0.1:9/hook").is_ok());
        assert!(p.check_url("http://localhost:9/hook").is_ok());
        assert!(p.check_url("http://10.0.0.1/hook").is_err());
    }

    #[tokio::test]
    async fn resolution_is_checked() {
        let p = PushPolicy::default();
        let url = reqwest::Url::parse("http://localhost:1/").unwrap();
        assert!(p.resolve(&url).await.is_err());
        let allowed = PushPolicy {
            allow_loopback: true,
            allow_private: false,
        };
        assert!(allowed.resolve(&url).await.unwrap().ip().is_loopback());
    }
}
