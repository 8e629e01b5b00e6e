//! The gateway's hot paths, each against its baseline in the same run:
//!
//! 1. HTTP: a plain axum route, the gateway route with JWT verification only, and the gateway
//!    route with JWT verification and a Redis GCRA check (plus, to split the cost, the plain
//!    route behind the service host's layers and the plain route with the Redis check). First the closed-loop maximum (wrk,
//!    every connection sends its next request when the last one is answered); then, in the same
//!    run, an open-loop load at half of the gateway+Redis maximum: this file's own fixed-rate
//!    generator (below, `open_loop`) schedules requests at a constant arrival rate over a pool
//!    of keep-alive HTTP/1.1 connections (a minimal client: one prepared request, the answer's
//!    head parsed with httparse and its body read to its end) and measures each latency from the request's
//!    *scheduled* send time, so a stalled server is charged for the requests it delayed
//!    (coordinated omission corrected, as wrk2 does), into an HDR histogram. The same generator
//!    also drives the rate limiter's Redis check alone (`RateLimiter::check`, no HTTP), for the
//!    share of the Redis round trip, and the check of a key whose quota is spent, which the
//!    limiter refuses from the refusal it holds (what a client that keeps sending once refused
//!    costs).
//! 2. Idle WebSocket connections: the gateway binary in its own process, N authenticated idle
//!    connections from this process, resident memory before and after.
//! 3. Cross-replica broadcast: two gateway replicas on one NATS server; messages published
//!    through replica A's REST endpoint, received by WebSocket subscribers on replica B.
//!
//! `cargo bench -p liquid-gateway --bench edge` (needs wrk, redis-server on
//! `LIQUID_TEST_REDIS_URL` or 127.0.0.1:6379, nats-server; `make deps` and `make dev-up`).
//! `EDGE_WS_CONNECTIONS` sets N (default 15000; the process file limit is 20000),
//! `EDGE_WRK_CONNECTIONS` the connections of wrk and of the open-loop generator (default 64),
//! `EDGE_OPEN_SECS` each open-loop run's measured seconds (default 10, after 2 s of warm-up),
//! `EDGE_OPEN_RATE` the open-loop rate in requests/s (default half the closed-loop gateway+Redis
//! maximum; a fixed rate compares two builds back to back),
//! `EDGE_ROUNDS` how many times the plain route and the full edge then run alternately at
//! the open-loop rate (default 5; the added latency is reported per round and as the median),
//! `EDGE_SERVER_THREADS` the servers' tokio worker threads (default one per core, as deployed),
//! `EDGE_QUIET_STEAL_MS` the most CPU time per second (default 5 ms) the hypervisor may take
//! from any CPU in both halves of a round for the pair to count among the quiet rounds, whose
//! added latency is also reported on its own (every table shows each run's steal),
//! `EDGE_PIN=1` pins the system under test (the servers' threads, and redis-server when it is a
//! process of this machine) to CPU 0 and wrk and the generator to CPU 1 (`taskset`), so the load
//! does not compete with what it measures (`EDGE_REDIS_CPU=1` pins redis-server to CPU 1
//! instead, beside the load, as a Redis of its own host would not share the gateway's core),
//! `EDGE_ONLY` one section
//! (`http`, `broadcast`, `ws`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use liquid_auth::{AuthConfig, SigningKey, TokenRequest};
use liquid_gateway::Settings;
use liquid_gateway::config::ClassLimits;
use liquid_gateway::domain::session_token::SessionSigner;
use liquid_gateway::domain::tier::{Charge, Tier};
use liquid_gateway::ratelimit::{Backend, RateLimiter};
use liquid_runtime::ServiceConfig;
use liquid_testkit::nats::NatsServer;
use liquid_testkit::redis::TestRedis;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{Message, WebSocketConfig};
use tokio_util::sync::CancellationToken;

struct Keys {
    dir: tempfile::TempDir,
    key: SigningKey,
    auth: AuthConfig,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = dir.path().join("pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let auth = AuthConfig::dev_public_key(&public, "bench", "liquid");
    Keys { dir, key, auth }
}

fn token(keys: &Keys, scopes: &[&str]) -> String {
    keys.key
        .mint(
            &TokenRequest::user("bench", scopes.iter().copied())
                .tenant("bench")
                .issuer("bench")
                .audience("liquid")
                .ttl(Duration::from_secs(3_600)),
        )
        .unwrap()
}

fn gateway_config(keys: &Keys, db: &str, bus: &str, cache: &str) -> ServiceConfig<Settings> {
    let mut c = ServiceConfig::<Settings>::defaults_for(&liquid_gateway::SERVICE);
    c.server = c.server.ephemeral();
    c.database.url = db.into();
    c.bus.url = bus.into();
    c.cache.url = cache.into();
    c.auth = keys.auth.clone();
    c.telemetry.log_filter = "warn".into();
    c.settings.prices.simulated_feed = false;
    // Quotas no run can spend: the bench measures the check, not refusals. The longest period
    // the configuration takes, with the most requests it allows in it (one per millisecond):
    // each request adds 1 ms to the TAT, and a whole run sends a few million.
    c.settings.rate_limit.classes.insert(
        "default".into(),
        ClassLimits {
            user: 86_400_000,
            session: 86_400_000,
            ip: 86_400_000,
            period_secs: 86_400,
        },
    );
    c
}

/// Pins the calling thread to `cpu` with `taskset` (the workspace forbids the `unsafe` a
/// direct `sched_setaffinity` would need).
fn pin_thread(cpu: usize) {
    let me = std::fs::read_link("/proc/thread-self").unwrap();
    let tid = me.file_name().unwrap().to_string_lossy().into_owned();
    let status = Command::new("taskset")
        .args(["-pc", &cpu.to_string(), &tid])
        .stdout(Stdio::null())
        .status()
        .expect("taskset is not installed");
    assert!(status.success(), "taskset -pc {cpu} {tid} failed");
}

/// `EDGE_PIN=1`: the system under test (the servers and redis-server) on CPU 0, wrk and the
/// load generator on CPU 1, so the load does not take the gateway's CPU.
fn pinned() -> bool {
    std::env::var("EDGE_PIN").is_ok_and(|v| v == "1")
}

/// With `EDGE_PIN=1`, the CPU redis-server is pinned to: `EDGE_REDIS_CPU`, else 0, beside the
/// servers (1 puts it beside wrk and the generator instead, as a Redis on a host of its own
/// takes nothing from the gateway's core).
fn redis_cpu() -> usize {
    std::env::var("EDGE_REDIS_CPU")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&cpu| cpu <= 1)
        .unwrap_or(0)
}

/// redis-server pinned to [`redis_cpu`], for as long as this lives; its own CPU list again
/// when dropped (the development Redis is shared with the tests).
struct RedisPin {
    pid: u32,
    /// The CPU list it had (`taskset -pc`'s form, e.g. `0,1`).
    before: String,
}

impl RedisPin {
    /// Pins the server behind `redis` when it is a `redis-server` process of this machine:
    /// Redis reports its pid (`INFO server`), and `/proc/<pid>/comm` must agree (a Redis in a
    /// container or on another host reports a pid of another namespace). `None` otherwise,
    /// with the reason printed.
    async fn new(redis: &TestRedis) -> Option<RedisPin> {
        let mut conn = redis.connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .ok()?;
        let pid: Option<u32> = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok());
        let local = pid.filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "redis-server")
        });
        let Some(pid) = local else {
            println!("(EDGE_PIN: redis-server is not a process of this machine; left unpinned)");
            return None;
        };
        // The list it has now: this thread's own count of CPUs would be 1 once pinned.
        let current = Command::new("taskset")
            .args(["-pc", &pid.to_string()])
            .output()
            .ok()?;
        let before = String::from_utf8_lossy(&current.stdout)
            .rsplit(':')
            .next()?
            .trim()
            .to_owned();
        taskset_all(pid, &redis_cpu().to_string()).then_some(RedisPin { pid, before })
    }
}

impl Drop for RedisPin {
    fn drop(&mut self) {
        taskset_all(self.pid, &self.before);
    }
}

/// Sets the CPU list of every thread of `pid`; false (printed) when `taskset` refuses.
fn taskset_all(pid: u32, cpus: &str) -> bool {
    let ok = Command::new("taskset")
        .args(["-a", "-pc", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("(EDGE_PIN: taskset -a -pc {cpus} {pid} failed; redis-server left as it was)");
    }
    ok
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Wrk {
    rps: f64,
    p50: String,
    p99: String,
    load: String,
}

fn wrk(url: &str, token: Option<&str>, threads: u32, conns: u32, secs: u32) -> Wrk {
    let mut cmd = if pinned() {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency");
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk is not installed; run `make deps`");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    if text.contains("Non-2xx") {
        eprintln!("warning: non-2xx answers in this run:\n{text}");
    }
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    Wrk {
        rps,
        p50: pct("50%"),
        p99: pct("99%"),
        load: load_average(),
    }
}

/// CPU time and time spent runnable but waiting for a CPU, in nanoseconds, of this process's
/// threads named `tokio-rt-worker`: the servers' runtime (its worker and its blocking
/// threads); the load generator's threads have other names and wrk is a process of its own.
fn server_cpu_ns() -> (u64, u64) {
    threads_cpu_ns(&["tokio-rt-worker"])
}

/// CPU time and run-queue wait (ns) of this process's threads with one of these names.
fn threads_cpu_ns(names: &[&str]) -> (u64, u64) {
    let mut total = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if names.contains(&comm.trim_end()) {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let mut fields = stat
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            total.0 += fields.next().unwrap_or(0);
            total.1 += fields.next().unwrap_or(0);
        }
    }
    total
}

/// Counters of this process's `tokio-rt-worker` threads so far: voluntary context switches
/// and the kernel's `syscw` (write-class system calls). A voluntary switch is a worker that
/// had nothing to run and slept until an event woke it, so switches per request count the
/// wake-ups a request costs. `syscw` per request is 1.00 for the plain route (its answer);
/// with Redis it reads higher than strace's count of write calls (BENCHMARKS.md, 2026-12-02),
/// so read it as a relative figure.
fn server_counters() -> (u64, u64) {
    let mut total = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != "tokio-rt-worker" {
            continue;
        }
        let field = |file: &str, name: &str| -> u64 {
            std::fs::read_to_string(task.path().join(file))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        total.0 += field("status", "voluntary_ctxt_switches:");
        total.1 += field("io", "syscw:");
    }
    total
}

/// redis-server's `total_commands_processed` and `total_reads_processed` (`INFO stats`): their
/// ratio over a run is how many commands one read event of Redis carried, i.e. how well the
/// checks of concurrent requests were batched on the shared connection.
fn redis_io(url: &str) -> (u64, u64) {
    let info: String = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("INFO").arg("stats").query(&mut c))
        .unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("total_commands_processed"),
        field("total_reads_processed"),
    )
}

/// The open-loop generator's threads (its runtime and its pacer).
const GENERATOR_THREADS: &[&str] = &["edge-client", "edge-pacer"];

/// CPU time every thread of the machine has run so far, nanoseconds (the first field of each
/// `/proc/<pid>/task/<tid>/schedstat`, kernel threads included). `/proc/stat`'s ticks are not
/// used: they charge each tick to whatever runs at that instant, so short bursts between
/// ticks on an otherwise idle CPU (the pinned layout) went uncounted.
fn machine_cpu_ns() -> u64 {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for process in processes.flatten() {
        if !process
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(process.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            total += std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// Time the hypervisor gave each of this VM's CPUs to someone else while it had work
/// (`/proc/stat`'s steal field), milliseconds since boot, by CPU. A stolen stretch stalls
/// whatever that CPU was running, so a round's steal tells the host's stalls from the code's.
fn stolen_ms() -> Vec<f64> {
    // /proc/stat counts in USER_HZ ticks, 100 per second on every Linux ABI.
    const MS_PER_TICK: f64 = 10.0;
    cpu_lines(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
        .map(|l| {
            // cpuN user nice system idle iowait irq softirq steal ...
            l.split_whitespace()
                .nth(8)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                * MS_PER_TICK
        })
        .collect()
}

/// Steal per second of wall time, by CPU, between two [`stolen_ms`] readings `secs` apart
/// (ms per s).
fn stolen_per_s(before: &[f64], after: &[f64], secs: f64) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| (a - b) / secs.max(f64::EPSILON))
        .collect()
}

/// Steal per CPU as `a / b` (ms per s).
fn show_stolen(stolen: &[f64]) -> String {
    stolen
        .iter()
        .map(|ms| format!("{ms:.1}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// With `EDGE_QUIET_STEAL_MS`, the most steal (ms per s, on any CPU) a round may have for its
/// pair to count as quiet (default 5).
fn quiet_steal_ms() -> f64 {
    std::env::var("EDGE_QUIET_STEAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0)
}

/// The machine's CPUs (`/proc/stat`'s `cpuN` lines: this thread's own affinity may be one CPU).
fn machine_cpus() -> u64 {
    let cpus = cpu_lines(&std::fs::read_to_string("/proc/stat").unwrap_or_default()).count();
    u64::try_from(cpus).unwrap_or(1).max(1)
}

/// `/proc/stat`'s line of each CPU (`cpu0 …`, `cpu1 …`; not the `cpu …` total).
fn cpu_lines(stat: &str) -> impl Iterator<Item = &str> {
    stat.lines().filter(|l| {
        l.strip_prefix("cpu")
            .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// What one open-loop run calls.
#[derive(Clone)]
enum Target {
    /// `GET path` on `addr`, with this bearer token if any; 200 expected.
    Http {
        addr: SocketAddr,
        path: &'static str,
        token: Option<String>,
    },
    /// The gateway's rate limiter alone: one `RateLimiter::check` of the user `bench/bench`,
    /// expected decided by `backend`: `Redis`, allowed after a round trip; `Held`, a refusal
    /// Redis gave earlier, repeated by the limiter without one.
    Limiter {
        limiter: RateLimiter,
        backend: Backend,
    },
}

/// One connection of the generator's pool.
enum Caller {
    Http(HttpCaller),
    Limiter(RateLimiter, Backend),
}

/// A keep-alive HTTP/1.1 connection that sends one prepared request again and again. It does
/// only what the measurement needs, so the generator takes as little of the machine's CPU as it
/// can: one write per request, reads until the answer's body has ended, no task or channel
/// between the caller and the socket (hyper's client adds both).
struct HttpCaller {
    stream: tokio::net::TcpStream,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

/// Where the body of an answer ends.
enum BodyEnd {
    /// After this many bytes.
    Length(usize),
    /// At the terminating zero-length chunk.
    Chunked,
}

impl HttpCaller {
    /// One request; true when the answer was a `200` read to its end.
    async fn call(&mut self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.stream.write_all(&self.request).await.is_err() {
            return false;
        }
        self.buffer.clear();
        let mut head: Option<(usize, u16, BodyEnd)> = None;
        loop {
            if self.buffer.capacity() - self.buffer.len() < 1024 {
                self.buffer.reserve(4096);
            }
            match self.stream.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            if head.is_none() {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&self.buffer) {
                    Ok(httparse::Status::Complete(len)) => {
                        let header = |name: &str| {
                            response
                                .headers
                                .iter()
                                .find(|h| h.name.eq_ignore_ascii_case(name))
                                .map(|h| h.value)
                        };
                        let end = match header("content-length") {
                            Some(v) => match std::str::from_utf8(v)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                            {
                                Some(n) => BodyEnd::Length(n),
                                None => return false,
                            },
                            None if header("transfer-encoding")
                                .is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) =>
                            {
                                BodyEnd::Chunked
                            }
                            None => return false,
                        };
                        head = Some((len, response.code.unwrap_or(0), end));
                    }
                    Ok(httparse::Status::Partial) => continue,
                    Err(_) => return false,
                }
            }
            if let Some((len, code, end)) = &head {
                let body = &self.buffer[*len..];
                let done = match end {
                    BodyEnd::Length(n) => body.len() >= *n,
                    BodyEnd::Chunked => body.ends_with(b"0\r\n\r\n"),
                };
                if done {
                    return *code == 200;
                }
            }
        }
    }
}

impl Target {
    async fn connect(&self) -> Caller {
        match self {
            Target::Http { addr, path, token } => {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let mut request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n");
                if let Some(token) = token {
                    request.push_str(&format!("authorization: Bearer {token}\r\n"));
                }
                request.push_str("\r\n");
                Caller::Http(HttpCaller {
                    stream,
                    request: request.into_bytes(),
                    buffer: Vec::with_capacity(4096),
                })
            }
            Target::Limiter { limiter, backend } => Caller::Limiter(limiter.clone(), *backend),
        }
    }
}

impl Caller {
    /// One request; true when it was answered as expected.
    async fn call(&mut self) -> bool {
        match self {
            Caller::Http(http) => http.call().await,
            Caller::Limiter(limiter, backend) => limiter
                .check("default", bench_user())
                .await
                .is_some_and(|o| {
                    o.backend == *backend && o.decision.allowed == (*backend == Backend::Redis)
                }),
        }
    }
}

/// The user every limiter-only check is charged to.
fn bench_user() -> Charge {
    Charge {
        tier: Tier::User,
        key: "bench/bench".into(),
    }
}

/// One open-loop run's latencies, in microseconds from each request's scheduled send time.
struct OpenLoop {
    histogram: Histogram<u64>,
    /// The worst latency of the requests due in each 100 ms of the measured part, µs.
    windows: Vec<u64>,
    errors: u64,
    /// Requests answered per second of the measured part.
    rps: f64,
    /// The servers' CPU time per request over the whole run (warm-up included), microseconds.
    server_cpu_us: f64,
    /// The servers' CPU time over the run's wall time.
    server_busy: f64,
    /// Time the servers' threads were runnable but not running (another process had the CPU),
    /// per request, microseconds.
    server_wait_us: f64,
    /// The servers' voluntary context switches per request (wake-ups from an idle sleep).
    server_wakeups: f64,
    /// The servers' write system calls per request.
    server_writes: f64,
    /// Redis commands per read event of redis-server (1.0: every check read on its own;
    /// `None` when the run's target uses no Redis).
    redis_batch: Option<f64>,
    /// The generator's threads' CPU time over the run's wall time (cores).
    generator_busy: f64,
    /// The whole machine's busy share over the run (every process, all CPUs).
    machine_busy: f64,
    /// CPU time the host took from each CPU over the run, ms per s ([`stolen_per_s`]).
    stolen: Vec<f64>,
    load: String,
}

impl OpenLoop {
    fn ms(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Where the tail came from: how many 100 ms windows of the run had a request slower than
    /// 10 ms, and the worst windows as `start: worst latency` (a few long stalls, or slowness
    /// spread over the run).
    fn stalls(&self) -> String {
        const SLOW_US: u64 = 10_000;
        let slow = self.windows.iter().filter(|&&w| w > SLOW_US).count();
        let mut worst: Vec<(usize, u64)> = self.windows.iter().copied().enumerate().collect();
        worst.sort_by_key(|w| std::cmp::Reverse(w.1));
        let listed: Vec<String> = worst
            .iter()
            .take(3)
            .filter(|(_, us)| *us > SLOW_US)
            .map(|(i, us)| format!("{:.1} s: {:.0} ms", *i as f64 / 10.0, *us as f64 / 1000.0))
            .collect();
        if listed.is_empty() {
            format!("0 of {}", self.windows.len())
        } else {
            format!("{slow} of {} ({})", self.windows.len(), listed.join(", "))
        }
    }
}

/// Sends requests to `target` at a fixed `rate` per second over `conns` keep-alive
/// connections, for `warmup` (not recorded) then `measure`. Request `i` is due at
/// `t0 + i / rate`; a pacer thread releases each due request as a semaphore permit, and the
/// first idle connection takes the oldest due request, so a request that finds every
/// connection busy waits, and that wait is part of its latency. The client runs on one tokio
/// thread of its own (plus the pacer thread), apart from the servers' runtime.
fn open_loop(
    target: Target,
    redis_url: &str,
    rate: f64,
    conns: usize,
    warmup: Duration,
    measure: Duration,
) -> OpenLoop {
    let redis_url = redis_url.to_owned();
    std::thread::Builder::new()
        .name("edge-client".into())
        .spawn(move || {
            if pinned() {
                pin_thread(1);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut callers = Vec::with_capacity(conns);
                for _ in 0..conns {
                    callers.push(target.connect().await);
                }
                let interval = 1e9 / rate;
                let skipped = (warmup.as_secs_f64() * rate) as u64;
                let total = skipped + (measure.as_secs_f64() * rate) as u64;
                let due_at = move |t0: Instant, i: u64| {
                    t0 + Duration::from_nanos((i as f64 * interval) as u64)
                };
                let permits = Arc::new(tokio::sync::Semaphore::new(0));
                let claimed = Arc::new(AtomicU64::new(0));
                let per_window = (rate / 10.0).max(1.0);
                let windows: Arc<Vec<AtomicU64>> = Arc::new(
                    (0..((total - skipped) as f64 / per_window).ceil() as usize)
                        .map(|_| AtomicU64::new(0))
                        .collect(),
                );
                let t0 = Instant::now() + Duration::from_millis(20);
                let pacer = {
                    let permits = permits.clone();
                    std::thread::Builder::new()
                        .name("edge-pacer".into())
                        .spawn(move || {
                            if pinned() {
                                pin_thread(1);
                            }
                            let mut released = 0u64;
                            while released < total {
                                let now = Instant::now();
                                if now >= t0 {
                                    let due = ((now - t0).as_nanos() as f64 / interval) as u64 + 1;
                                    let due = due.min(total);
                                    if due > released {
                                        permits.add_permits((due - released) as usize);
                                        released = due;
                                    }
                                }
                                let next = due_at(t0, released);
                                let now = Instant::now();
                                if next > now {
                                    std::thread::sleep(next - now);
                                }
                            }
                            // One more permit per connection: each then claims an index past the end
                            // and stops.
                            permits.add_permits(conns);
                        })
                        .unwrap()
                };
                let cpu_before = server_cpu_ns();
                let switches_before = server_counters();
                let redis_before = redis_io(&redis_url);
                let generator_before = threads_cpu_ns(GENERATOR_THREADS).0;
                let (machine_before, machine_since) = (machine_cpu_ns(), Instant::now());
                let stolen_before = stolen_ms();
                let mut workers = Vec::with_capacity(conns);
                for mut caller in callers {
                    let (permits, claimed) = (permits.clone(), claimed.clone());
                    let windows = windows.clone();
                    workers.push(tokio::spawn(async move {
                        let mut histogram =
                            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                        let mut errors = 0u64;
                        let mut last = t0;
                        loop {
                            permits.acquire().await.unwrap().forget();
                            let i = claimed.fetch_add(1, Ordering::Relaxed);
                            if i >= total {
                                break;
                            }
                            let scheduled = due_at(t0, i);
                            let ok = caller.call().await;
                            let done = Instant::now();
                            if i >= skipped {
                                last = last.max(done);
                                if ok {
                                    let us = (done - scheduled).as_micros().max(1);
                                    let us = u64::try_from(us).unwrap_or(u64::MAX);
                                    histogram.saturating_record(us);
                                    let window = ((i - skipped) as f64 / per_window) as usize;
                                    if let Some(w) = windows.get(window) {
                                        w.fetch_max(us, Ordering::Relaxed);
                                    }
                                } else {
                                    errors += 1;
                                }
                            }
                        }
                        (histogram, errors, last)
                    }));
                }
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut errors = 0;
                let mut last = t0;
                for w in workers {
                    let (h, e, l) = w.await.unwrap();
                    histogram.add(h).unwrap();
                    errors += e;
                    last = last.max(l);
                }
                pacer.join().unwrap();
                let (cpu, wait) = server_cpu_ns();
                let switches = server_counters();
                let wakeups = switches.0 - switches_before.0;
                let writes = switches.1 - switches_before.1;
                let redis_after = redis_io(&redis_url);
                let (commands, reads) = (
                    redis_after.0.saturating_sub(redis_before.0),
                    redis_after.1.saturating_sub(redis_before.1),
                );
                let (cpu, wait) = (cpu - cpu_before.0, wait - cpu_before.1);
                let generator = threads_cpu_ns(GENERATOR_THREADS)
                    .0
                    .saturating_sub(generator_before);
                let machine_busy = machine_cpu_ns().saturating_sub(machine_before) as f64
                    / (machine_since.elapsed().as_nanos() as f64 * machine_cpus() as f64);
                let stolen = stolen_per_s(
                    &stolen_before,
                    &stolen_ms(),
                    machine_since.elapsed().as_secs_f64(),
                );
                let measured = (last - due_at(t0, skipped)).as_secs_f64();
                OpenLoop {
                    windows: windows.iter().map(|w| w.load(Ordering::Relaxed)).collect(),
                    rps: (histogram.len() + errors) as f64 / measured,
                    server_cpu_us: cpu as f64 / 1000.0 / total as f64,
                    server_busy: cpu as f64 / (last - t0).as_nanos() as f64,
                    server_wait_us: wait as f64 / 1000.0 / total as f64,
                    server_wakeups: wakeups as f64 / total as f64,
                    server_writes: writes as f64 / total as f64,
                    // Each run's INFO calls are one command and one read of their own.
                    redis_batch: (commands > 10).then(|| commands as f64 / reads.max(1) as f64),
                    generator_busy: generator as f64 / (last - t0).as_nanos() as f64,
                    machine_busy,
                    stolen,
                    histogram,
                    errors,
                    load: load_average(),
                }
            })
        })
        .unwrap()
        .join()
        .unwrap()
}

async fn http_section(keys: &Keys, redis: &TestRedis, redis_pinned: bool) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain: SocketAddr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/api/v1/gateway/whoami",
        get(|| async { axum::Json(json!({"subject": "bench"})) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let db = tempfile::tempdir().unwrap();
    let mut jwt_only = gateway_config(
        keys,
        &format!("sqlite://{}/a.db", db.path().display()),
        "memory://",
        "memory://",
    );
    jwt_only.settings.rate_limit.enabled = false;
    let jwt = liquid_runtime::start::<liquid_gateway::Gateway>(&jwt_only, CancellationToken::new())
        .await
        .unwrap();
    let mut limited = gateway_config(
        keys,
        &format!("sqlite://{}/b.db", db.path().display()),
        "memory://",
        redis.url(),
    );
    limited.settings.rate_limit.redis_url = liquid_kit::Secret::new(redis.url().to_owned());
    limited.settings.rate_limit.key_prefix = redis.prefix().to_owned();
    let full = liquid_runtime::start::<liquid_gateway::Gateway>(&limited, CancellationToken::new())
        .await
        .unwrap();
    // The limiter alone, for the open-loop Redis row: the same settings, its own connection.
    let new_limiter = |namespace: &str| {
        RateLimiter::new(
            &limited.settings.rate_limit,
            namespace,
            Arc::new(SessionSigner::new(&[7; 32])),
        )
        .unwrap()
    };
    let limiter = new_limiter("alone:");
    // A limiter whose user quota is one request a day, spent before the runs: each of its
    // checks is then the refusal it holds (Redis refused the second request).
    let holding = {
        let mut settings = limited.settings.rate_limit.clone();
        if let Some(default) = settings.classes.get_mut("default") {
            default.user = 1;
        }
        let limiter =
            RateLimiter::new(&settings, "held:", Arc::new(SessionSigner::new(&[7; 32]))).unwrap();
        for expect_allowed in [true, false] {
            let o = limiter.check("default", bench_user()).await.unwrap();
            assert_eq!(
                (o.decision.allowed, o.backend),
                (expect_allowed, Backend::Redis)
            );
        }
        limiter
    };
    // The plain route with the limiter's check in its handler, on the servers' runtime: the
    // Redis step without the gateway's middleware and JWT.
    let checked = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limiter = new_limiter("checked:");
        let app = Router::new().route(
            "/api/v1/gateway/whoami",
            get(move || {
                let limiter = limiter.clone();
                async move {
                    let o = limiter.check("default", bench_user()).await.unwrap();
                    assert_eq!(o.backend, Backend::Redis);
                    axum::Json(json!({"subject": "bench"}))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    };
    // The plain route behind the service host's own layers (request id, trace span, RED
    // metrics, body limit), which every service has: the host's share of the gateway's cost.
    let hosted = {
        let app = Router::new().route(
            "/api/v1/gateway/whoami",
            get(|| async { axum::Json(json!({"subject": "bench"})) }),
        );
        let server = liquid_kit::config::ServerConfig::on_ports(0, None);
        let running = liquid_kit::server::ServiceHost::new("bench", &server)
            .http(app)
            .start(CancellationToken::new())
            .await
            .unwrap();
        let addr = running.http_addr();
        std::mem::forget(running);
        addr
    };
    let token = token(keys, &["read:prices"]);
    let path = "/api/v1/gateway/whoami";
    let plain_url = format!("http://{plain}{path}");
    let jwt_url = format!("http://{}{path}", jwt.http_addr());
    let full_url = format!("http://{}{path}", full.http_addr());
    // Check the gateway really answers 200 through the limiter before measuring.
    let r = reqwest::Client::new()
        .get(&full_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-tier"], "user");

    let targets = [
        (
            "plain axum route",
            Target::Http {
                addr: plain,
                path,
                token: None,
            },
        ),
        (
            "plain axum route behind the service host's layers (no JWT)",
            Target::Http {
                addr: hosted,
                path,
                token: None,
            },
        ),
        (
            "gateway: JWT (EdDSA, cached verification) + scope check",
            Target::Http {
                addr: jwt.http_addr(),
                path,
                token: Some(token.clone()),
            },
        ),
        (
            "gateway: JWT + Redis GCRA",
            Target::Http {
                addr: full.http_addr(),
                path,
                token: Some(token.clone()),
            },
        ),
        (
            "plain axum route + `RateLimiter::check` in the handler (no JWT, no gateway middleware)",
            Target::Http {
                addr: checked,
                path,
                token: None,
            },
        ),
        (
            "Redis GCRA check alone (`RateLimiter::check`, no HTTP)",
            Target::Limiter {
                limiter,
                backend: Backend::Redis,
            },
        ),
        (
            "a refusal held by the limiter (`RateLimiter::check` of a spent key, no HTTP, no Redis)",
            Target::Limiter {
                limiter: holding,
                backend: Backend::Held,
            },
        ),
        (
            "plain axum route (again)",
            Target::Http {
                addr: plain,
                path,
                token: None,
            },
        ),
    ];
    let conns: u32 = std::env::var("EDGE_WRK_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let open_secs: u64 = std::env::var("EDGE_OPEN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // A fixed rate for comparing two builds back to back: half of each run's own maximum moves
    // with that run's noise.
    let fixed_rate: Option<f64> = std::env::var("EDGE_OPEN_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|r: &f64| *r > 0.0);
    let rounds: usize = std::env::var("EDGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let paired_targets = (targets[0].1.clone(), targets[3].1.clone());
    let redis_url = redis.url().to_owned();
    let started = load_average();
    let (closed, rate, open, paired) = tokio::task::spawn_blocking(move || {
        let closed = vec![
            ("plain axum route", wrk(&plain_url, None, 1, conns, 8)),
            (
                "gateway: JWT (EdDSA, cached verification) + scope check",
                wrk(&jwt_url, Some(&token), 1, conns, 8),
            ),
            (
                "gateway: JWT + Redis GCRA",
                wrk(&full_url, Some(&token), 1, conns, 8),
            ),
        ];
        let rate = fixed_rate.unwrap_or((closed[2].1.rps / 2.0).round());
        let mut open = Vec::new();
        for (label, target) in targets {
            let run = open_loop(
                target,
                &redis_url,
                rate,
                conns as usize,
                Duration::from_secs(2),
                Duration::from_secs(open_secs),
            );
            open.push((label, run));
        }
        // The plain route and the full edge alternately, so each pair shares the machine's
        // state of that minute: a VM stall lands in one row of one pair, not in the verdict.
        let (plain, full) = paired_targets;
        let paired: Vec<(OpenLoop, OpenLoop)> = (0..rounds)
            .map(|_| {
                let run = |target: &Target| {
                    open_loop(
                        target.clone(),
                        &redis_url,
                        rate,
                        conns as usize,
                        Duration::from_secs(2),
                        Duration::from_secs(open_secs),
                    )
                };
                (run(&plain), run(&full))
            })
            .collect();
        (closed, rate, open, paired)
    })
    .await
    .unwrap();
    let placement = match (pinned(), redis_pinned, redis_cpu()) {
        (true, true, 0) => {
            "servers and redis-server pinned to CPU 0, wrk and the generator to CPU 1"
        }
        (true, true, _) => "servers pinned to CPU 0, redis-server, wrk and the generator to CPU 1",
        (true, false, _) => {
            "servers pinned to CPU 0 (redis-server not), wrk and the generator to CPU 1"
        }
        (false, _, _) => "no pinning",
    };
    println!(
        "\n### HTTP, closed loop (servers on {} worker thread(s); wrk -t1 -c{conns} -d8s; {placement}; load average at start {started})\n",
        server_threads()
    );
    println!("| route | requests/s | p50 | p99 | load average after |");
    println!("|---|---:|---:|---:|---|");
    for (label, w) in &closed {
        println!(
            "| {label} | {:.0} | {} | {} | {} |",
            w.rps, w.p50, w.p99, w.load
        );
    }
    let chosen = if fixed_rate.is_some() {
        "fixed by EDGE_OPEN_RATE"
    } else {
        "half the gateway+Redis maximum"
    };
    println!(
        "\n### HTTP, open loop at {rate:.0} requests/s ({chosen}; {conns} connections; {open_secs} s measured after 2 s; latency from the scheduled send time)\n"
    );
    println!(
        "| route | answered/s | errors | p50 | p90 | p99 | p99.9 | max | server CPU per request | servers busy (cores) | server waited for a CPU, per request | server wake-ups per request | server writes per request | Redis commands per read | generator busy (cores) | machine busy | stolen by the host, each CPU (ms per s) | 100 ms windows with a request over 10 ms | load average after |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for (label, r) in &open {
        println!(
            "| {label} | {:.0} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.1} µs | {:.2} | {:.1} µs | {:.2} | {:.2} | {} | {:.2} | {:.0}% | {} | {} | {} |",
            r.rps,
            r.errors,
            r.ms(0.5),
            r.ms(0.9),
            r.ms(0.99),
            r.ms(0.999),
            r.histogram.max() as f64 / 1000.0,
            r.server_cpu_us,
            r.server_busy,
            r.server_wait_us,
            r.server_wakeups,
            r.server_writes,
            redis_batch(r),
            r.generator_busy,
            r.machine_busy * 100.0,
            show_stolen(&r.stolen),
            r.stalls(),
            r.load
        );
    }
    let base = &open[0].1;
    let again = &open[open.len() - 1].1;
    for (label, r) in &open[1..5] {
        println!(
            "\nadded over the plain route, {label}: p50 {:+.3} ms, p99 {:+.3} ms (over the second plain run: p50 {:+.3} ms, p99 {:+.3} ms)",
            r.ms(0.5) - base.ms(0.5),
            r.ms(0.99) - base.ms(0.99),
            r.ms(0.5) - again.ms(0.5),
            r.ms(0.99) - again.ms(0.99),
        );
    }
    print_paired(&paired);
    std::mem::forget(jwt);
    std::mem::forget(full);
}

/// A run's Redis commands per read, or "-" when it used no Redis.
fn redis_batch(run: &OpenLoop) -> String {
    run.redis_batch
        .map_or_else(|| "-".into(), |b| format!("{b:.2}"))
}

/// The paired rounds: each round's plain route and full edge at the same rate, the added
/// latency per round, and the median over the rounds (the middle round for an odd count).
fn print_paired(paired: &[(OpenLoop, OpenLoop)]) {
    if paired.is_empty() {
        return;
    }
    println!(
        "\n### Paired rounds at the same rate: plain axum route, then gateway: JWT + Redis GCRA ({} rounds)\n",
        paired.len()
    );
    println!(
        "| round | plain p50 | plain p99 | edge p50 | edge p99 | added p50 | added p99 | edge: servers' CPU per request | edge: wake-ups per request | edge: writes per request | edge: Redis commands per read | machine busy | stolen by the host, each CPU (ms per s): plain round; edge round | edge: 100 ms windows with a request over 10 ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut added_p50 = Vec::new();
    let mut added_p99 = Vec::new();
    for (i, (plain, edge)) in paired.iter().enumerate() {
        let p50 = edge.ms(0.5) - plain.ms(0.5);
        let p99 = edge.ms(0.99) - plain.ms(0.99);
        added_p50.push(p50);
        added_p99.push(p99);
        println!(
            "| {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {p50:+.3} ms | {p99:+.3} ms | {:.1} µs | {:.2} | {:.2} | {} | {:.0}% | {}; {} | {} |",
            i + 1,
            plain.ms(0.5),
            plain.ms(0.99),
            edge.ms(0.5),
            edge.ms(0.99),
            edge.server_cpu_us,
            edge.server_wakeups,
            edge.server_writes,
            redis_batch(edge),
            edge.machine_busy * 100.0,
            show_stolen(&plain.stolen),
            show_stolen(&edge.stolen),
            edge.stalls(),
        );
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "\nmedian over {} rounds: added p50 {:+.3} ms, added p99 {:+.3} ms",
        paired.len(),
        median(&mut added_p50),
        median(&mut added_p99),
    );
    // The pairs the host left alone: a round's added latency is the gateway's only when
    // neither half was stalled by the hypervisor.
    let limit = quiet_steal_ms();
    let quiet = |run: &OpenLoop| run.stolen.iter().all(|&ms| ms < limit);
    let mut quiet_p50 = Vec::new();
    let mut quiet_p99 = Vec::new();
    for (plain, edge) in paired.iter().filter(|(p, e)| quiet(p) && quiet(e)) {
        quiet_p50.push(edge.ms(0.5) - plain.ms(0.5));
        quiet_p99.push(edge.ms(0.99) - plain.ms(0.99));
    }
    if quiet_p99.is_empty() {
        println!(
            "no round pair where the host stole under {limit} ms per second of every CPU in both halves"
        );
    } else {
        let each: Vec<String> = quiet_p99.iter().map(|p| format!("{p:+.3}")).collect();
        println!(
            "median over the {} round pairs where the host stole under {limit} ms per second of every CPU in both halves: added p50 {:+.3} ms, added p99 {:+.3} ms (each: {} ms)",
            quiet_p99.len(),
            median(&mut quiet_p50),
            median(&mut quiet_p99),
            each.join(", ")
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn websocket_memory_section(keys: &Keys, n: usize) {
    let binary = env!("CARGO_BIN_EXE_liquid-gateway");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pem = keys.dir.path().join("pub.pem");
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary)
        .env(
            "LIQUID_GATEWAY__SERVER__HTTP_ADDR",
            format!("127.0.0.1:{port}"),
        )
        .env(
            "LIQUID_GATEWAY__DATABASE__URL",
            format!("sqlite://{}/gw.db", data.path().display()),
        )
        .env("LIQUID_GATEWAY__AUTH__PUBLIC_KEY_PEM_FILE", &pem)
        .env("LIQUID_GATEWAY__AUTH__ISSUER", "bench")
        .env("LIQUID_GATEWAY__AUTH__AUDIENCE", "liquid")
        .env("LIQUID_GATEWAY__PRICES__SIMULATED_FEED", "false")
        .env("LIQUID_GATEWAY__RATE_LIMIT__ENABLED", "false")
        .env("LIQUID_GATEWAY__WEBSOCKET__MAX_CONNECTIONS", "19500")
        .env("LIQUID_GATEWAY__TELEMETRY__LOG_FILTER", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "gateway binary did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = token(keys, &["read:prices"]);
    let connect = |url: String, token: String| async move {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), false)
                .await
                .unwrap();
        let welcome = ws.next().await.unwrap().unwrap();
        assert!(matches!(welcome, Message::Text(_)));
        ws
    };
    // Warm up: the allocator, the runtime and the first connections' one-off costs.
    let mut warm = Vec::new();
    for _ in 0..200 {
        warm.push(connect(url.clone(), token.clone()).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(child.id());
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let ws = connect(url, token).await;
            drop(permit);
            ws
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kib(child.id());
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    println!("\n### Idle WebSocket connections (gateway binary in its own process)\n");
    println!(
        "| connections | RSS before (MiB) | RSS after (MiB) | per connection | connect rate |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {:.1} | {:.1} | {:.1} KB ({per:.0} bytes) | {:.0} conn/s (JWT verified each) |",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per / 1000.0,
        n as f64 / connect_secs
    );
    drop(clients);
    drop(warm);
    let _ = child.kill();
    let _ = child.wait();
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn broadcast_section(keys: &Keys) {
    let nats = NatsServer::start().await.unwrap();
    let db = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let c = gateway_config(
            keys,
            &format!("sqlite://{}/{name}.db", db.path().display()),
            &nats.url(),
            "memory://",
        );
        async move {
            liquid_runtime::start::<liquid_gateway::Gateway>(&c, CancellationToken::new())
                .await
                .unwrap()
        }
    };
    let a = start("a").await;
    let b = start("b").await;
    let subscribers = 20;
    let messages = 500;
    let token_sub = token(keys, &["healer:read"]);
    let url_b = format!("ws://{}/ws", b.http_addr());
    let mut receivers = Vec::new();
    for _ in 0..subscribers {
        let mut request = url_b.as_str().into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token_sub}").parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        ws.next().await.unwrap().unwrap();
        ws.send(Message::Text(
            json!({"type":"subscribe","channel":"healing"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        ws.next().await.unwrap().unwrap();
        receivers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(messages);
            while latencies.len() < messages {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        let sent = v["data"]["sent_us"].as_u64().unwrap();
                        latencies.push(now_us().saturating_sub(sent));
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            latencies
        }));
    }
    // `healing` is platform-wide: publishing on it takes admin:*.
    let publisher = token(keys, &["admin:*"]);
    let http = reqwest::Client::new();
    let url_a = format!(
        "http://{}/api/v1/gateway/channels/healing/messages",
        a.http_addr()
    );
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for i in 0..messages {
        tick.tick().await;
        let r = http
            .post(&url_a)
            .bearer_auth(&publisher)
            .json(&json!({"data": {"seq": i, "sent_us": now_us()}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let mut all = Vec::new();
    for r in receivers {
        all.extend(r.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!(
        "\n### Cross-replica broadcast (REST publish on replica A → NATS → WebSocket on replica B)\n"
    );
    println!("| subscribers on B | messages | delivered | p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {subscribers} | {messages} at 200/s | {} of {} | {:.2} ms | {:.2} ms | {:.2} ms |",
        all.len(),
        subscribers * messages,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    std::mem::forget(a);
    std::mem::forget(b);
}

/// The allocator the gateway binary runs with (its `main.rs`), for every server of this bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Worker threads of the servers' runtime: `EDGE_SERVER_THREADS`, else one per core, as a
/// deployed gateway runs (tokio's default).
fn server_threads() -> usize {
    std::env::var("EDGE_SERVER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

fn main() {
    let n: usize = std::env::var("EDGE_WS_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15_000);
    let keys = keys();
    // The servers of sections 1 and 3 run on one worker thread per core (`EDGE_SERVER_THREADS`
    // to change it), sharing the cores with wrk, the generator and redis-server.
    // With `EDGE_PIN=1` every thread of the servers' runtime, and this one, runs on CPU 0.
    if pinned() {
        pin_thread(0);
    }
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads())
        .on_thread_start(|| {
            if pinned() {
                pin_thread(0);
            }
        })
        .enable_all()
        .build()
        .unwrap();
    let redis = server_rt.block_on(TestRedis::new()).unwrap();
    let redis_pin = if pinned() {
        server_rt.block_on(RedisPin::new(&redis))
    } else {
        None
    };
    let only = std::env::var("EDGE_ONLY").unwrap_or_default();
    if only.is_empty() || only == "http" {
        server_rt.block_on(http_section(&keys, &redis, redis_pin.is_some()));
    }
    if only.is_empty() || only == "broadcast" {
        server_rt.block_on(broadcast_section(&keys));
    }
    if only.is_empty() || only == "ws" {
        let client_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        client_rt.block_on(websocket_memory_section(&keys, n));
    }
}
