//! Warm acquire + first exec against cold create + start + first exec, on the real Docker
//! engine, at concurrency 1, 4 and 16, in one run. Prints a Markdown table (p50, p99,
//! throughput) for BENCHMARKS.md.
//!
//! Warm: `WarmPools::acquire` (an idle container is claimed and bound) then `exec true`; the
//! release that follows (reset) is not timed. Cold: what a pool-less service does per task:
//! create + start a container of the same template, then `exec true`; the removal is not timed.
//!
//! `cargo bench -p liquid-container-pool --bench warm_acquire`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use liquid_container_pool::config::{PoolSettings, TemplateConfig};
use liquid_container_pool::domain::autoconf::HostFacts;
use liquid_container_pool::domain::template::{Template, WORKDIR};
use liquid_container_pool::events::PoolEvents;
use liquid_container_pool::pool::{
    AcquireRequest, ExecRequest, PoolParts, ReplicaIdentity, WarmPools,
};
use liquid_container_pool::runtime::{ContainerRuntime, CreateSpec, ExecSpec};
use liquid_container_pool::secrets::SecretResolver;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Row {
    what: String,
    c: usize,
    n: usize,
    p50_acquire: Option<f64>,
    p50: f64,
    p99: f64,
    per_sec: f64,
}

async fn exec_true(pools: &WarmPools, claim: uuid::Uuid) {
    let (tx, _rx) = mpsc::channel(8);
    let o = pools
        .exec(
            "bench",
            claim,
            ExecRequest {
                argv: vec!["true".into()],
                ..ExecRequest::default()
            },
            tx,
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, 0);
}

async fn warm(pools: &WarmPools, c: usize, per_worker: usize) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..c {
        let pools = pools.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..per_worker {
                let t0 = Instant::now();
                let claim = pools
                    .acquire("bench", AcquireRequest::default())
                    .await
                    .unwrap();
                let acquired = t0.elapsed().as_secs_f64();
                exec_true(&pools, claim.id).await;
                let total = t0.elapsed().as_secs_f64();
                assert_eq!(
                    claim.served, "warm",
                    "the pool was not warm; raise min_idle"
                );
                pools.release("bench", claim.id).await.unwrap();
                out.push((acquired, total));
            }
            out
        }));
    }
    let mut acq = Vec::new();
    let mut tot = Vec::new();
    for w in workers {
        for (a, t) in w.await.unwrap() {
            acq.push(a);
            tot.push(t);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    acq.sort_by(f64::total_cmp);
    tot.sort_by(f64::total_cmp);
    Row {
        what: "warm acquire + first exec".into(),
        c,
        n: tot.len(),
        p50_acquire: Some(pct(&acq, 0.5)),
        p50: pct(&tot, 0.5),
        p99: pct(&tot, 0.99),
        per_sec: tot.len() as f64 / wall,
    }
}

async fn cold(
    rt: Arc<dyn ContainerRuntime>,
    template: &Template,
    pool: &str,
    c: usize,
    per_worker: usize,
) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..c {
        let rt = rt.clone();
        let template = template.clone();
        let pool = pool.to_owned();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..per_worker {
                let spec = CreateSpec {
                    template: template.clone(),
                    labels: [
                        ("io.liquid.owner".to_owned(), "liquid".to_owned()),
                        (
                            "io.liquid.component".to_owned(),
                            "container-pool".to_owned(),
                        ),
                        ("io.liquid.pool".to_owned(), pool.clone()),
                    ]
                    .into(),
                    name: format!("liquid-bench-cold-{pool}-{w}-{i}"),
                    staging_dir: None,
                };
                let t0 = Instant::now();
                let id = rt.create(&spec).await.unwrap();
                let (tx, _rx) = mpsc::channel(8);
                let o = rt
                    .exec(
                        &id,
                        &ExecSpec {
                            argv: vec!["true".into()],
                            workdir: WORKDIR.into(),
                            timeout: Duration::from_secs(30),
                            ..ExecSpec::default()
                        },
                        tx,
                    )
                    .await
                    .unwrap();
                out.push(t0.elapsed().as_secs_f64());
                assert_eq!(o.exit_code, 0);
                rt.remove(&id).await.unwrap();
            }
            out
        }));
    }
    let mut tot = Vec::new();
    for w in workers {
        tot.extend(w.await.unwrap());
    }
    let wall = started.elapsed().as_secs_f64();
    tot.sort_by(f64::total_cmp);
    Row {
        what: "cold create + start + first exec".into(),
        c,
        n: tot.len(),
        p50_acquire: None,
        p50: pct(&tot, 0.5),
        p99: pct(&tot, 0.99),
        per_sec: tot.len() as f64 / wall,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool_name = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut settings = PoolSettings::default();
        settings.pool.name = pool_name.clone();
        settings.pool.replenish_interval_ms = 50;
        let template = TemplateConfig {
            min_idle: Some(16),
            max_total: Some(20),
            memory_mib: 64,
            ..TemplateConfig::default()
        };
        settings
            .templates
            .insert("default".into(), template.clone());
        let dir = tempfile::tempdir().unwrap();
        let db =
            liquid_store::Database::connect(&format!("sqlite://{}/b.db", dir.path().display()))
                .await
                .unwrap();
        db.migrate(&liquid_container_pool::MIGRATIONS)
            .await
            .unwrap();
        let hosts = liquid_container_pool::connect_runtimes(&settings)
            .await
            .unwrap();
        let docker = hosts[0].0.clone();
        assert_eq!(
            docker.kind().as_str(),
            "docker",
            "the benchmark needs Docker"
        );
        let shutdown = CancellationToken::new();
        let pools = WarmPools::start(PoolParts {
            settings: settings.clone(),
            hosts,
            store: liquid_container_pool::store::for_database(&db),
            events: PoolEvents::new(Arc::new(liquid_bus::MemoryBus::new()))
                .await
                .unwrap(),
            secrets: SecretResolver::new(&settings.secrets).unwrap(),
            replica: ReplicaIdentity::current(uuid::Uuid::now_v7()),
            shutdown: shutdown.clone(),
        })
        .await
        .unwrap();
        pools.spawn_tasks(|_, f| {
            tokio::spawn(f);
        });
        let wait_warm = || async {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let s = pools.status();
                if s.templates[0].counts.idle >= 16 {
                    break;
                }
                assert!(Instant::now() < deadline, "pool never warmed: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let resolved = Template::resolve("default", &template, &HostFacts::default());
        let mut rows = Vec::new();
        for (c, per) in [(1usize, 40usize), (4, 15), (16, 5)] {
            wait_warm().await;
            rows.push(warm(&pools, c, per).await);
            rows.push(cold(docker.clone(), &resolved, &pool_name, c, per.min(10)).await);
        }
        println!("| path | concurrency | n | acquire p50 | p50 | p99 | per second |");
        println!("|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} |",
                r.what,
                r.c,
                r.n,
                r.p50_acquire
                    .map_or("–".to_owned(), |a| format!("{:.1} ms", a * 1000.0)),
                r.p50 * 1000.0,
                r.p99 * 1000.0,
                r.per_sec
            );
        }
        for pair in rows.chunks(2) {
            println!(
                "c={}: warm p50 is {:.2} of cold p50",
                pair[0].c,
                pair[0].p50 / pair[1].p50
            );
        }
        shutdown.cancel();
        pools.drain().await;
    });
}
