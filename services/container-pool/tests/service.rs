//! The service as a whole: on Postgres and NATS reached through the gateway and over gRPC with
//! events on the bus; the process runtime (no Docker) with its label; the store's one suite on
//! both databases; template changes through the admin API; and the Grafana dashboard's
//! queries against what `/metrics` really exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use common::*;
use futures_util::StreamExt;
use liquid_bus::Event;
use liquid_container_pool::config::{RuntimeChoice, TemplateConfig};
use liquid_container_pool::error::PoolError;
use liquid_container_pool::store::{self, ClaimRow, IdempotencyState, PoolStore, ReplicaRow};
use liquid_proto::container_pool::v1 as pb;
use liquid_testkit::nats::NatsServer;
use liquid_testkit::postgres::TestDatabase;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test]
async fn through_the_gateway_and_grpc_on_postgres_and_nats_with_events() {
    let keys = keys();
    let db = TestDatabase::create().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let mut cfg = config(settings(1, 2), &keys.auth, db.url());
    cfg.bus.url = nats.url();
    let mut svc = start_with(cfg, tempfile::tempdir().unwrap()).await;
    let running = svc.running.as_ref().unwrap();

    let bus = liquid_bus::connect(&nats.url()).await.unwrap();
    let mut events = bus.subscribe("evt.container-pool.>").await.unwrap();

    // The gateway forwards /api/v1/containers/... here.
    let mut gw = liquid_runtime::ServiceConfig::<
        <liquid_gateway::Gateway as liquid_runtime::Service>::Settings,
    >::defaults_for(&liquid_gateway::SERVICE);
    gw.server = gw.server.ephemeral();
    gw.auth = keys.auth.clone();
    gw.database.url = format!("sqlite://{}/gw.db", keys.dir.path().display());
    gw.peers.insert(
        "container_pool".into(),
        liquid_runtime::Peer {
            http: format!("http://{}", running.http_addr()),
            grpc: String::new(),
        },
    );
    let gateway = liquid_runtime::start::<liquid_gateway::Gateway>(&gw, CancellationToken::new())
        .await
        .unwrap();
    let admin = keys.admin("acme");
    let via = format!("http://{}/api/v1/containers", gateway.http_addr());
    let http = reqwest::Client::new();
    let status: Value = http
        .get(format!("{via}/status"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["runtime"], "docker", "{status}");
    let r = http
        .post(format!("{via}/claims"))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let claim: Value = r.json().await.unwrap();
    let r = http
        .post(format!(
            "{via}/claims/{}/exec",
            claim["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin)
        .json(&json!({"argv": ["echo", "via gateway"]}))
        .send()
        .await
        .unwrap();
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["stdout"], "via gateway\n");
    let r = http
        .delete(format!("{via}/claims/{}", claim["id"].as_str().unwrap()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // gRPC, as cowork would call it with a service token.
    let service = keys
        .key
        .mint(
            &liquid_auth::TokenRequest::service("cowork", ["containers:exec", "containers:read"])
                .tenant("acme")
                .issuer("liquid-test")
                .audience("liquid"),
        )
        .unwrap();
    let mut client =
        pb::container_pool_service_client::ContainerPoolServiceClient::connect(svc.grpc.clone())
            .await
            .unwrap();
    let refused = client
        .acquire(tonic::Request::new(pb::AcquireRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let c = client
        .acquire(authed(
            pb::AcquireRequest {
                env: [("X".to_owned(), "1".to_owned())].into(),
                ..Default::default()
            },
            &service,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.runtime, "docker");
    let mut stream = client
        .exec(authed(
            pb::ExecRequest {
                claim_id: c.id.clone(),
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo $X; echo err >&2; exit 4".into(),
                ],
                ..Default::default()
            },
            &service,
        ))
        .await
        .unwrap()
        .into_inner();
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some(ev) = stream.next().await {
        match ev.unwrap().event.unwrap() {
            pb::exec_event::Event::Stdout(b) => out.extend(b),
            pb::exec_event::Event::Stderr(b) => err.extend(b),
            pb::exec_event::Event::Exit(e) => exit = Some(e),
        }
    }
    assert_eq!(out, b"1\n");
    assert_eq!(err, b"err\n");
    assert_eq!(exit.unwrap().exit_code, 4);
    let other_tenant = keys
        .key
        .mint(
            &liquid_auth::TokenRequest::service("healer", ["containers:exec"])
                .tenant("other")
                .issuer("liquid-test")
                .audience("liquid"),
        )
        .unwrap();
    let hidden = client
        .release(authed(
            pb::ReleaseRequest {
                claim_id: c.id.clone(),
            },
            &other_tenant,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    let status = client
        .get_status(authed(pb::GetStatusRequest {}, &service))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.templates[0].busy, 1);
    client
        .release(authed(
            pb::ReleaseRequest {
                claim_id: c.id.clone(),
            },
            &service,
        ))
        .await
        .unwrap();

    // Events: acquired and released for both claims, on the durable stream's subjects.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen
        .iter()
        .filter(|(t, _)| t == "container-pool.container.released")
        .count()
        < 2
    {
        let msg = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("events arrive")
            .unwrap();
        let e = msg.event().unwrap();
        seen.push((e.event_type.clone(), e.tenant.clone()));
    }
    assert!(seen.contains(&("container-pool.container.acquired".into(), "acme".into())));

    gateway.stop().await.unwrap();
    svc.stop().await;
}

#[tokio::test]
async fn the_process_runtime_works_without_docker_and_says_it_is_not_isolated() {
    let keys = keys();
    let root = tempfile::tempdir().unwrap();
    let mut s = settings(1, 2);
    s.pool.runtime = RuntimeChoice::Process;
    s.pool.process_root = root.path().display().to_string();
    s.secrets.refs.insert("home".into(), "env:HOME".into());
    let mut svc = start(s, &keys).await;
    let admin = keys.admin("acme");
    svc.wait_status(&admin, "one idle", |t| t["idle"] == 1)
        .await;
    let (_, status) = svc.get(&admin, "/status").await;
    assert_eq!(status["runtime"], "process");
    assert_eq!(status["isolated"], false);
    let claim = svc
        .acquire(&admin, json!({"secrets": ["home"], "env": {"A": "b"}}))
        .await;
    assert_eq!(claim["runtime"], "process");
    assert_eq!(claim["isolated"], false);
    let id = claim["id"].as_str().unwrap();
    let out = svc
        .sh(
            &admin,
            id,
            "echo $A; cat \"$LIQUID_SECRETS_DIR/home\"; echo hi > f.txt; ls",
        )
        .await;
    assert_eq!(
        out["stdout"],
        format!("b\n{}f.txt\n", std::env::var("HOME").unwrap()),
        "{out}"
    );
    let out = svc
        .exec(
            &admin,
            id,
            json!({"argv": ["sleep", "30"], "timeout_ms": 300}),
        )
        .await;
    assert_eq!(
        (out["timed_out"].as_bool(), out["exit_code"].as_i64()),
        (Some(true), Some(137))
    );
    let tar = svc
        .http
        .get(format!(
            "{}/claims/{id}/archive?path=/workspace/f.txt",
            svc.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut a = tar::Archive::new(&tar[..]);
    let names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["f.txt"]);
    svc.release(&admin, id).await;
    let again = svc.acquire(&admin, json!({})).await;
    let out = svc
        .sh(
            &admin,
            again["id"].as_str().unwrap(),
            "ls -A; ls -A \"$LIQUID_SECRETS_DIR\"",
        )
        .await;
    assert_eq!(out["stdout"], "", "reset between claims: {out}");
    svc.stop().await;
    let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
    assert!(left.is_empty(), "shutdown removes the sandboxes");
}

#[tokio::test]
async fn concurrent_acquires_with_one_idempotency_key_share_one_claim() {
    let keys = keys();
    let root = tempfile::tempdir().unwrap();
    let mut s = settings(1, 4);
    s.pool.runtime = RuntimeChoice::Process;
    s.pool.process_root = root.path().display().to_string();
    let mut svc = start(s, &keys).await;
    let admin = keys.admin("acme");
    let acquire = |key: &'static str, token: String| {
        let req = svc
            .http
            .post(format!("{}/claims", svc.base))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({}));
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let answers =
        futures_util::future::join_all((0..4).map(|_| acquire("job-7", admin.clone()))).await;
    let ids: std::collections::BTreeSet<_> = answers
        .iter()
        .map(|(_, c)| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "one claim for one key: {answers:?}");
    let mut statuses: Vec<_> = answers.iter().map(|(s, _)| *s).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 201],
        "one created, three replayed"
    );
    let (_, status) = svc.get(&admin, "/status").await;
    assert_eq!(
        status["templates"][0]["busy"], 1,
        "one container claimed: {status}"
    );

    // Another tenant's key of the same name is its own.
    let other = acquire("job-7", keys.admin("globex")).await;
    assert_eq!(other.0, 201);
    assert!(!ids.contains(other.1["id"].as_str().unwrap()));

    // A key whose claim was released cannot claim again: the caller is told, nothing is claimed.
    let id = ids.into_iter().next().unwrap();
    svc.release(&admin, &id).await;
    let (code, body) = acquire("job-7", admin.clone()).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_claim_released_through_another_replica_is_reset_by_its_owner() {
    let keys = keys();
    let db = TestDatabase::create().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let replica = |root: &std::path::Path| {
        let mut s = settings(1, 2);
        s.pool.runtime = RuntimeChoice::Process;
        s.pool.process_root = root.display().to_string();
        let mut cfg = config(s, &keys.auth, db.url());
        cfg.bus.url = nats.url();
        cfg
    };
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = start_with(replica(root_a.path()), tempfile::tempdir().unwrap()).await;
    let mut b = start_with(replica(root_b.path()), tempfile::tempdir().unwrap()).await;
    let admin = keys.admin("acme");
    let claim = a.acquire(&admin, json!({})).await;
    let id = claim["id"].as_str().unwrap();
    a.sh(&admin, id, "echo left-behind > f.txt").await;

    // B sees the claim (shared database) but holds no container of it.
    let (code, seen) = b.get(&admin, &format!("/claims/{id}")).await;
    assert_eq!((code, seen["id"].as_str()), (200, Some(id)), "{seen}");
    let (code, body) = b.delete(&admin, &format!("/claims/{id}")).await;
    assert_eq!(code, 204, "{body}");

    // A got the request: its container is reset and idle again, the claim is gone everywhere.
    a.wait_status(&admin, "A's container back to idle", |t| {
        t["busy"] == 0 && t["resetting"] == 0
    })
    .await;
    assert_eq!(a.get(&admin, &format!("/claims/{id}")).await.0, 404);
    assert_eq!(
        b.delete(&admin, &format!("/claims/{id}")).await.0,
        404,
        "released once"
    );
    // The same container, claimed again, has a clean sandbox (the pool holds two at most, so
    // two claims include it).
    let container = claim["container_id"].as_str().unwrap();
    let again = [
        a.acquire(&admin, json!({})).await,
        a.acquire(&admin, json!({})).await,
    ];
    let reused = again
        .iter()
        .find(|c| c["container_id"] == container)
        .unwrap_or_else(|| panic!("{container} was not handed out again: {again:?}"));
    let out = a.sh(&admin, reused["id"].as_str().unwrap(), "ls -A").await;
    assert_eq!(
        out["stdout"], "",
        "the next claim finds a clean sandbox: {out}"
    );
    a.stop().await;
    b.stop().await;
}

async fn store_suite(s: &dyn PoolStore) {
    let now = Utc::now();
    let r1 = ReplicaRow {
        replica_id: Uuid::now_v7(),
        hostname: "h1".into(),
        process: "1:2".into(),
        started_at: now,
        heartbeat_at: now,
    };
    s.heartbeat(&r1).await.unwrap();
    let later = now + chrono::Duration::seconds(5);
    s.heartbeat(&ReplicaRow {
        heartbeat_at: later,
        ..r1.clone()
    })
    .await
    .unwrap();
    let all = s.replicas().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].heartbeat_at.timestamp_millis(),
        later.timestamp_millis(),
        "a heartbeat renews"
    );
    let claim = ClaimRow {
        claim_id: Uuid::now_v7(),
        tenant: "acme".into(),
        template: "default".into(),
        container_id: "c1".into(),
        host: "local".into(),
        runtime: "docker".into(),
        replica_id: r1.replica_id,
        served: "warm".into(),
        workdir: "/workspace".into(),
        env: BTreeMap::from([("A".into(), "b".into())]),
        secrets: vec!["gh".into()],
        acquired_at: now,
        released_at: None,
    };
    let acquired =
        Event::new("container-pool.container.acquired", "acme", json!({"n": 1})).unwrap();
    s.insert_claim(&claim, std::slice::from_ref(&acquired), None)
        .await
        .unwrap();
    let got = s.open_claim(claim.claim_id, "acme").await.unwrap().unwrap();
    assert_eq!(got.env, claim.env);
    assert_eq!(got.secrets, claim.secrets);
    assert_eq!(got.replica_id, r1.replica_id);
    assert!(
        s.open_claim(claim.claim_id, "other")
            .await
            .unwrap()
            .is_none(),
        "tenant scoped"
    );
    assert!(!s.is_released(claim.claim_id).await.unwrap());
    let released =
        Event::new("container-pool.container.released", "acme", json!({"n": 2})).unwrap();
    assert!(
        s.release_claim(claim.claim_id, now, std::slice::from_ref(&released))
            .await
            .unwrap()
    );
    assert!(
        !s.release_claim(claim.claim_id, now, std::slice::from_ref(&released))
            .await
            .unwrap(),
        "once"
    );
    assert!(s.is_released(claim.claim_id).await.unwrap());
    assert!(
        s.open_claim(claim.claim_id, "acme")
            .await
            .unwrap()
            .is_none()
    );
    let second = ClaimRow {
        claim_id: Uuid::now_v7(),
        ..claim.clone()
    };
    let t = now.timestamp_millis();
    assert!(
        matches!(
            s.insert_claim(&second, &[], Some("key-1")).await,
            Err(PoolError::Conflict(_))
        ),
        "a claim cannot take a key no request registered"
    );
    assert_eq!(
        s.begin_idempotent("acme", "key-1", t, t - 60_000)
            .await
            .unwrap(),
        IdempotencyState::Owned
    );
    s.insert_claim(&second, &[], Some("key-1")).await.unwrap();
    let gone = |row: &ClaimRow| {
        Event::new(
            "container-pool.container.released",
            &row.tenant,
            json!({"claim_id": row.claim_id}),
        )
        .ok()
    };
    assert_eq!(
        s.release_claims_of(r1.replica_id, now, &gone)
            .await
            .unwrap(),
        1
    );

    // The outbox: the events queued with the claim changes, oldest first, each once while
    // leased, again once the lease runs out, gone once deleted.
    let leased = s.lease_events(10, t, 10_000).await.unwrap();
    let kinds: Vec<_> = leased.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "container-pool.container.acquired",
            "container-pool.container.released",
            "container-pool.container.released"
        ],
        "the released event of an already released claim is not queued"
    );
    assert_eq!(leased[0].id, acquired.id);
    assert!(
        s.lease_events(10, t + 1, 10_000).await.unwrap().is_empty(),
        "leased"
    );
    let again = s.lease_events(1, t + 10_001, 10_000).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "an expired lease is taken again, up to the limit"
    );
    let ids: Vec<_> = leased.iter().map(|e| e.id).collect();
    s.delete_events(&ids).await.unwrap();
    assert!(
        s.lease_events(10, t + 60_000, 10_000)
            .await
            .unwrap()
            .is_empty()
    );

    // Idempotency keys: insert first; the claim recorded with the key answers later requests.
    assert_eq!(
        s.begin_idempotent("acme", "key-1", t, t - 60_000)
            .await
            .unwrap(),
        IdempotencyState::Claimed(second.claim_id)
    );
    assert_eq!(
        s.begin_idempotent("acme", "key-2", t, t - 60_000)
            .await
            .unwrap(),
        IdempotencyState::Owned
    );
    assert_eq!(
        s.begin_idempotent("acme", "key-2", t, t - 60_000)
            .await
            .unwrap(),
        IdempotencyState::Pending,
        "a second request waits for the first"
    );
    assert_eq!(
        s.begin_idempotent("other", "key-2", t, t - 60_000)
            .await
            .unwrap(),
        IdempotencyState::Owned,
        "keys are per tenant"
    );
    s.abandon_idempotent("acme", "key-2").await.unwrap();
    assert_eq!(
        s.begin_idempotent("acme", "key-2", t, t - 60_000)
            .await
            .unwrap(),
        IdempotencyState::Owned,
        "a failed acquire frees its key"
    );
    assert_eq!(
        s.begin_idempotent("acme", "key-2", t + 120_000, t + 60_000)
            .await
            .unwrap(),
        IdempotencyState::Owned,
        "a registration whose request died is taken over"
    );
    assert_eq!(
        s.expire_idempotent(t + 1).await.unwrap(),
        2,
        "acme's key-1 and other's key-2"
    );
    assert_eq!(
        s.begin_idempotent("acme", "key-1", t, t - 60_000)
            .await
            .unwrap(),
        IdempotencyState::Owned,
        "an expired key is new again"
    );
    assert!(
        s.is_released(Uuid::now_v7()).await.unwrap(),
        "unknown counts as released"
    );
    s.delete_replica(r1.replica_id).await.unwrap();
    assert!(s.replicas().await.unwrap().is_empty());

    let t = TemplateConfig {
        min_idle: Some(2),
        ..TemplateConfig::default()
    };
    s.put_template("big", &t).await.unwrap();
    s.put_template(
        "big",
        &TemplateConfig {
            min_idle: Some(3),
            ..t.clone()
        },
    )
    .await
    .unwrap();
    let ts = s.templates().await.unwrap();
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].1.min_idle, Some(3));
    assert!(s.delete_template("big").await.unwrap());
    assert!(!s.delete_template("big").await.unwrap());
}

#[tokio::test]
async fn the_store_behaves_the_same_on_postgres_and_sqlite() {
    let pg = TestDatabase::create().await.unwrap();
    let db = liquid_store::Database::connect(pg.url()).await.unwrap();
    db.migrate(&liquid_container_pool::MIGRATIONS)
        .await
        .unwrap();
    store_suite(store::for_database(&db).as_ref()).await;

    let dir = tempfile::tempdir().unwrap();
    let db = liquid_store::Database::connect(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .unwrap();
    db.migrate(&liquid_container_pool::MIGRATIONS)
        .await
        .unwrap();
    store_suite(store::for_database(&db).as_ref()).await;
}

#[tokio::test]
async fn templates_and_configuration_through_the_admin_api_and_the_dashboard_matches_metrics() {
    let keys = keys();
    let mut svc = start(settings(0, 1), &keys).await;
    let admin = keys.admin("acme");

    // A new template, validated, served at once.
    let bad = svc
        .http
        .put(format!("{}/templates/tiny", svc.base))
        .bearer_auth(&admin)
        .json(&json!({"min_idle": 3, "max_total": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("templates.tiny.min_idle"),
        "{body}"
    );
    let ok = svc
        .http
        .put(format!("{}/templates/tiny", svc.base))
        .bearer_auth(&admin)
        .json(&json!({"min_idle": 0, "max_total": 1, "memory_mib": 32, "tmp_size_mib": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let claim = svc.acquire(&admin, json!({"template": "tiny"})).await;
    assert_eq!(claim["template"], "tiny");
    let out = svc
        .sh(&admin, claim["id"].as_str().unwrap(), "echo tiny")
        .await;
    assert_eq!(out["stdout"], "tiny\n");
    svc.release(&admin, claim["id"].as_str().unwrap()).await;
    let (_, templates) = svc.get(&admin, "/templates").await;
    assert!(
        templates["templates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "tiny")
    );
    let (status, _) = svc.delete(&admin, "/templates/tiny").await;
    assert_eq!(status, 204);
    let (status, _) = svc
        .post(&admin, "/claims", json!({"template": "tiny"}))
        .await;
    assert_eq!(status, 404);

    // Configuration: shown without secret values, validated by key.
    let (_, config) = svc.get(&admin, "/config").await;
    assert_eq!(config["runtime"], "docker");
    assert!(config["secrets"].get("vault").is_some());
    let (status, body) = svc
        .post(
            &admin,
            "/config/validate",
            json!({"pool": {"heartbeat_secs": 0}}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pool.heartbeat_secs"),
        "{body}"
    );
    let (status, body) = svc
        .post(&admin, "/config/validate", json!({"pool": {"name": "ok"}}))
        .await;
    assert_eq!((status, &body["valid"]), (200, &json!(true)));
    let (status, body) = svc
        .post(
            &admin,
            "/runners/choose",
            json!({"task": "fix the xss hole"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["kind"], "security");
    assert_eq!(body["runner"], "platform", "no cli is configured: {body}");

    // Every metric the dashboard queries is in a scrape.
    let running = svc.running.as_ref().unwrap();
    let scrape = reqwest::get(format!("http://{}/metrics", running.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dashboard = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../helm/container-pool/dashboards/container-pool.json"
    );
    let queried = liquid_testkit::dashboard::queried_metrics(dashboard.as_ref());
    assert!(queried.len() >= 8, "{queried:?}");
    liquid_testkit::dashboard::assert_exported(&scrape, dashboard.as_ref());
    svc.stop().await;
}
