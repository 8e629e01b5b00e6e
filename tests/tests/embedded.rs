//! `liquid up` as a user runs it: a real process on free ports, its OTLP export pointed at an
//! in-memory receiver. Every service must become ready, a request through the gateway must
//! reach the service as one trace, bad tokens must be refused with stable codes, Ctrl-C must
//! stop it cleanly, and data must survive a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use liquid_testkit::otlp::OtlpReceiver;
use serde_json::Value;
use tokio::process::{Child, Command};

struct Up {
    child: Child,
    manifest: Value,
}

impl Up {
    /// `liquid up` started in `dir` as the README's `make run` starts it: on the default data
    /// directory, `.liquid`, relative to where it runs.
    async fn start(dir: &Path, otlp: &str) -> Up {
        let bin = liquid_testkit::workspace_binary("liquid").unwrap();
        let manifest_path = dir.join(".liquid").join("up.json");
        let _ = std::fs::remove_file(&manifest_path);
        let child = Command::new(bin)
            .args(["up", "--ephemeral-ports"])
            .current_dir(dir)
            .env_remove("LIQUID_DATA_DIR")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(bytes) = std::fs::read(&manifest_path)
                && let Ok(manifest) = serde_json::from_slice::<Value>(&bytes)
            {
                return Up { child, manifest };
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "liquid up did not write up.json within 60s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, service: &str) -> String {
        self.manifest["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .unwrap_or_else(|| panic!("{service} missing from up.json: {}", self.manifest))["http"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn token(&self) -> String {
        self.manifest["token"].as_str().unwrap().to_owned()
    }

    async fn interrupt(mut self) -> std::process::ExitStatus {
        // What Ctrl-C sends; `kill` gets the pid as an argument, no shell involved.
        let pid = self.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("liquid up did not stop within 30s of Ctrl-C")
            .unwrap()
    }
}

const SERVICES: [&str; 7] = [
    "gateway",
    "a2a",
    "cowork",
    "container-pool",
    "healer",
    "registry",
    "media",
];

#[tokio::test]
async fn liquid_up_serves_every_service_through_the_gateway_as_one_trace() {
    let otlp = OtlpReceiver::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &otlp.endpoint()).await;
    let http = reqwest::Client::new();

    for service in SERVICES {
        let r = http
            .get(format!("{}/readyz", up.url(service)))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{service} not ready: {body}");
        assert_eq!(body["ready"], true);
        let metrics = http
            .get(format!("{}/metrics", up.url(service)))
            .send()
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200);
    }

    let gateway = up.url("gateway");
    let info: Value = http
        .get(format!("{gateway}/api/v1/cowork/info"))
        .bearer_auth(up.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["service"], "cowork", "{info}");
    assert_eq!(info["caller"], "dev");
    assert_eq!(info["backends"]["database"], "sqlite");
    assert_eq!(info["starts"], 1);

    // One trace: the gateway's server span and cowork's server span share the trace id, and
    // cowork's span descends from the gateway's request.
    let spans = otlp
        .wait_for_spans(Duration::from_secs(20), |spans| {
            let gw = spans.iter().find(|s| {
                s.attributes.get("liquid.service").map(String::as_str) == Some("gateway")
                    && s.attributes.get("url.path").map(String::as_str)
                        == Some("/api/v1/cowork/info")
            });
            gw.is_some_and(|gw| {
                spans.iter().any(|s| {
                    s.trace_id == gw.trace_id
                        && s.attributes.get("liquid.service").map(String::as_str) == Some("cowork")
                })
            })
        })
        .await;
    let gw = spans
        .iter()
        .find(|s| {
            s.attributes.get("liquid.service").map(String::as_str) == Some("gateway")
                && s.attributes.get("url.path").map(String::as_str) == Some("/api/v1/cowork/info")
        })
        .unwrap_or_else(|| panic!("no gateway span for the request among {spans:#?}"));
    let cowork = spans
        .iter()
        .find(|s| {
            s.trace_id == gw.trace_id
                && s.attributes.get("liquid.service").map(String::as_str) == Some("cowork")
        })
        .unwrap_or_else(|| panic!("no cowork span in trace {}: {spans:#?}", gw.trace_id));
    assert_ne!(
        cowork.parent_span_id, "",
        "the cowork span must continue the gateway's trace"
    );

    // Refusals carry stable codes, at the gateway and at the service itself.
    for (url, token) in [
        (format!("{gateway}/api/v1/cowork/info"), None),
        (format!("{gateway}/api/v1/cowork/info"), Some("not-a-jwt")),
        (format!("{}/api/v1/cowork/info", up.url("cowork")), None),
    ] {
        let mut req = http.get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{url}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated", "{url}: {body}");
    }
    let r = http
        .get(format!("{gateway}/api/v1/nope/info"))
        .bearer_auth(up.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Cowork is an A2A agent of the a2a service (through the gateway, with the dev key's
    // service tokens between a2a and cowork): its card, and a request it cannot take without a
    // workspace, answered by cowork itself.
    let card: Value = http
        .get(format!(
            "{gateway}/agents/cowork/.well-known/agent-card.json"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        card["name"].as_str().map(|n| n.contains("cowork")),
        Some(true),
        "{card}"
    );
    let answer: Value = http
        .post(format!("{gateway}/agents/cowork/a2a/rest/message:send"))
        .bearer_auth(up.token())
        .header("A2A-Version", "1.0")
        .json(&serde_json::json!({"message": {
            "messageId": "embedded-1", "role": "ROLE_USER",
            "parts": [{"text": "Tidy the README"}]
        }}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["task"]["status"]["state"], "TASK_STATE_FAILED",
        "{answer}"
    );
    assert!(
        answer["task"]["status"]["message"]
            .to_string()
            .contains("name the workspace"),
        "{answer}"
    );

    // Agent work through the gateway: a warm container (or the labelled process runtime when
    // no Docker engine answers) claimed, used and released.
    let claim: Value = http
        .post(format!("{gateway}/api/v1/containers/claims"))
        .bearer_auth(up.token())
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claim_id = claim["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no claim id: {claim}"));
    let exec: Value = http
        .post(format!(
            "{gateway}/api/v1/containers/claims/{claim_id}/exec"
        ))
        .bearer_auth(up.token())
        .json(&serde_json::json!({"argv": ["echo", "hello from the pool"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(exec["exit_code"], 0, "{exec}");
    assert!(
        exec["stdout"]
            .as_str()
            .is_some_and(|o| o.contains("hello from the pool")),
        "{exec}"
    );
    let released = http
        .delete(format!("{gateway}/api/v1/containers/claims/{claim_id}"))
        .bearer_auth(up.token())
        .send()
        .await
        .unwrap();
    assert!(released.status().is_success(), "{}", released.status());

    // Every metric a Grafana dashboard queries is one the services really export.
    let mut scrape = String::new();
    for service in SERVICES {
        let text = http
            .get(format!("{}/metrics", up.url(service)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        scrape.push_str(&text);
    }
    let dashboards = dashboard_metric_names();
    assert!(
        !dashboards.is_empty(),
        "no dashboards found under deploy/grafana or helm/*/dashboards"
    );
    // A series exists only once something was recorded with its labels (a model call, a closed
    // WebSocket, a histogram's first observation), and recording a fake one would lie on the
    // dashboard; so a metric this run did not exercise must at least be a name the code records
    // (a literal in the sources). That still catches a typo or a rename.
    let sources = metric_names_in_sources();
    let missing: Vec<String> = dashboards
        .into_iter()
        .filter(|(_, metric)| {
            let exported = scrape
                .lines()
                .any(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']));
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| metric.strip_suffix(suffix))
                .unwrap_or(metric);
            !(exported || sources.contains(metric) || sources.contains(family))
        })
        .map(|(file, metric)| format!("{file}: {metric}"))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboards query metrics no service exports:\n{}",
        missing.join("\n")
    );

    let status = up.interrupt().await;
    assert!(
        status.success(),
        "liquid up exited with {status} after Ctrl-C"
    );

    // Restart on the same data directory: the dev key and every database persist.
    let up = Up::start(data.path(), &otlp.endpoint()).await;
    let info: Value = http
        .get(format!("{}/api/v1/cowork/info", up.url("gateway")))
        .bearer_auth(up.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["starts"], 2,
        "the cowork database did not survive the restart: {info}"
    );
    let status = up.interrupt().await;
    assert!(status.success());
}

/// `(dashboard file, metric name)` for every `liquid_*` metric named in a dashboard query.
fn dashboard_metric_names() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The platform overview, and each chart's own dashboard (shipped as a ConfigMap).
    let mut files: Vec<_> = std::fs::read_dir(root.join("deploy/grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for chart in std::fs::read_dir(root.join("helm")).unwrap() {
        if let Ok(dashboards) = std::fs::read_dir(chart.unwrap().path().join("dashboards")) {
            files.extend(dashboards.map(|e| e.unwrap().path()));
        }
    }
    let mut out = Vec::new();
    for path in files {
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for metric in liquid_testkit::dashboard::queried_metrics(&path) {
            out.push((file.clone(), metric));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Every `"liquid_..."` string literal in the services' and crates' sources.
fn metric_names_in_sources() -> std::collections::BTreeSet<String> {
    fn walk(dir: &Path, out: &mut std::collections::BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for piece in text.split('"').skip(1).step_by(2) {
                    if piece.starts_with("liquid_")
                        && piece
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        out.insert(piece.to_owned());
                    }
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = std::collections::BTreeSet::new();
    walk(&root.join("services"), &mut out);
    walk(&root.join("crates"), &mut out);
    out
}
