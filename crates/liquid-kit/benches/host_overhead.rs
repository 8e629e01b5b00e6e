//! What the service host adds to every request (request id, trace span with W3C context
//! extraction, RED metrics, body limit), measured with wrk on loopback against the same
//! handler on a plain axum router in the same run.
//!
//! `cargo bench -p liquid-kit --bench host_overhead` (needs `wrk`; `make deps` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::process::Command;

use axum::Router;
use axum::routing::get;
use liquid_kit::ServiceHost;
use liquid_kit::config::ServerConfig;
use tokio_util::sync::CancellationToken;

fn app() -> Router {
    Router::new().route("/api/v1/bench/ping", get(|| async { "pong" }))
}

fn wrk(addr: SocketAddr, label: &str) -> String {
    let out = Command::new("wrk")
        .args(["-t1", "-c32", "-d5s", "--latency"])
        .arg(format!("http://{addr}/api/v1/bench/ping"))
        .output()
        .expect("wrk is not installed; run `make deps`");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_owned();
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    format!("| {label} | {rps} | {} | {} |", pct("50%"), pct("99%"))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (plain, hosted) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app()).await });
        let server = ServerConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            grpc_addr: None,
            ..ServerConfig::default()
        };
        let running = ServiceHost::new("bench", &server)
            .http(app())
            .start(CancellationToken::new())
            .await
            .unwrap();
        let hosted = running.http_addr();
        std::mem::forget(running);
        (plain, hosted)
    });
    println!("| server (1 worker thread, wrk -t1 -c32 -d5s) | requests/s | p50 | p99 |");
    println!("|---|---|---|---|");
    println!("{}", wrk(plain, "plain axum route"));
    println!("{}", wrk(hosted, "same route in ServiceHost"));
    println!("{}", wrk(plain, "plain axum route (again)"));
}
