//! The cache suite: the same assertions against Redis (a key prefix of the test's own on the
//! shared server) and the in-memory cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use liquid_kit::{ErrorCode, HasErrorCode};
use liquid_store::Cache;
use liquid_store::cache::{self, CacheConfig};
use liquid_testkit::redis::TestRedis;

const MINUTE: Duration = Duration::from_secs(60);

/// Two caches with sibling namespaces on one backend, and what keeps the backend alive.
struct Backend {
    mine: Arc<dyn Cache>,
    theirs: Arc<dyn Cache>,
    redis: Option<TestRedis>,
}

impl Backend {
    async fn redis() -> Backend {
        let redis = TestRedis::new().await.unwrap();
        let mine = cache::connect(redis.url(), &redis.key("mine:"))
            .await
            .unwrap();
        let theirs = cache::connect(redis.url(), &redis.key("theirs:"))
            .await
            .unwrap();
        assert_eq!(mine.kind(), "redis");
        Backend {
            mine,
            theirs,
            redis: Some(redis),
        }
    }

    async fn memory() -> Backend {
        // One process-wide moka per namespace, as each service gets in embedded mode.
        let mine = cache::connect("memory://", "mine:").await.unwrap();
        let theirs = cache::connect("memory://", "theirs:").await.unwrap();
        assert_eq!(mine.kind(), "memory");
        Backend {
            mine,
            theirs,
            redis: None,
        }
    }
}

async fn get_set_overwrite_delete(b: &Backend) {
    let c = b.mine.as_ref();
    c.ping().await.unwrap();
    assert_eq!(c.get("k").await.unwrap(), None);
    c.set("k", b"v1", MINUTE).await.unwrap();
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    c.set("k", b"v2", MINUTE).await.unwrap();
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    assert!(c.delete("k").await.unwrap());
    assert!(
        !c.delete("k").await.unwrap(),
        "a second delete finds nothing"
    );
    assert_eq!(c.get("k").await.unwrap(), None);

    let binary = [0u8, 255, 128, 10, 13, 0];
    c.set("bin", &binary, MINUTE).await.unwrap();
    assert_eq!(c.get("bin").await.unwrap().as_deref(), Some(&binary[..]));
}

async fn entries_expire_after_their_ttl(b: &Backend) {
    let c = b.mine.as_ref();
    c.set("short", b"x", Duration::from_millis(200))
        .await
        .unwrap();
    c.set("renewed", b"x", Duration::from_millis(200))
        .await
        .unwrap();
    // Setting again replaces the TTL.
    c.set("renewed", b"y", MINUTE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(c.get("short").await.unwrap(), None, "outlived its ttl");
    assert!(!c.delete("short").await.unwrap());
    assert_eq!(c.get("renewed").await.unwrap().as_deref(), Some(&b"y"[..]));
}

async fn set_nx_writes_only_when_absent(b: &Backend) {
    let c = b.mine.as_ref();
    assert!(
        c.set_nx("lock", b"first", Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(!c.set_nx("lock", b"second", MINUTE).await.unwrap());
    assert_eq!(c.get("lock").await.unwrap().as_deref(), Some(&b"first"[..]));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        c.set_nx("lock", b"third", MINUTE).await.unwrap(),
        "an expired key counts as absent"
    );
    assert_eq!(c.get("lock").await.unwrap().as_deref(), Some(&b"third"[..]));
}

async fn set_nx_has_one_winner_under_contention(b: &Backend) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u8 {
        let c = b.mine.clone();
        tasks.spawn(async move { c.set_nx("contended", &[i], MINUTE).await.unwrap() });
    }
    let winners = tasks.join_all().await.into_iter().filter(|w| *w).count();
    assert_eq!(winners, 1);
}

async fn set_if_guard_writes_only_while_the_guard_holds(b: &Backend) {
    let c = b.mine.as_ref();
    // An absent guard is expected as None.
    assert!(
        c.set_if_guard("a", b"1", MINUTE, "gen", None)
            .await
            .unwrap()
    );
    assert_eq!(c.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert!(
        !c.set_if_guard("a", b"2", MINUTE, "gen", Some(b"g1"))
            .await
            .unwrap(),
        "the guard is absent, not g1"
    );
    c.set("gen", b"g1", MINUTE).await.unwrap();
    assert!(
        !c.set_if_guard("b", b"stale", MINUTE, "gen", None)
            .await
            .unwrap(),
        "a writer that read the guard before it was set"
    );
    assert_eq!(c.get("b").await.unwrap(), None);
    assert!(
        c.set_if_guard(
            "b",
            b"fresh",
            Duration::from_millis(300),
            "gen",
            Some(b"g1")
        )
        .await
        .unwrap()
    );
    assert_eq!(c.get("b").await.unwrap().as_deref(), Some(&b"fresh"[..]));
    // The value keeps the TTL it was written with.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(c.get("b").await.unwrap(), None);
    // The guard of another namespace is another key.
    b.theirs.set("gen", b"g2", MINUTE).await.unwrap();
    assert!(
        c.set_if_guard("c", b"x", MINUTE, "gen", Some(b"g1"))
            .await
            .unwrap()
    );
    assert!(
        c.set_if_guard("c", b"y", MINUTE, "gen", Some(b"g1"))
            .await
            .unwrap(),
        "a value is replaced like set replaces it"
    );
    assert_eq!(c.get("c").await.unwrap().as_deref(), Some(&b"y"[..]));
    let err = c
        .set_if_guard("c", b"x", Duration::ZERO, "gen", Some(b"g1"))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::InvalidArgument, "{err}");
}

async fn incr_counts_in_a_fixed_window(b: &Backend) {
    let c = b.mine.as_ref();
    assert_eq!(c.incr("n", 1, Duration::from_millis(300)).await.unwrap(), 1);
    // Later increments keep the window the counter was created with.
    assert_eq!(c.incr("n", 5, MINUTE).await.unwrap(), 6);
    assert_eq!(c.incr("n", -2, MINUTE).await.unwrap(), 4);
    assert_eq!(c.get("n").await.unwrap().as_deref(), Some(&b"4"[..]));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(c.get("n").await.unwrap(), None, "the window closed");
    assert_eq!(c.incr("n", 1, MINUTE).await.unwrap(), 1, "a new window");
}

async fn incr_is_atomic(b: &Backend) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let c = b.mine.clone();
        tasks.spawn(async move { c.incr("hits", 1, MINUTE).await.unwrap() });
    }
    let mut seen = tasks.join_all().await;
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=50).collect::<Vec<i64>>(),
        "every caller saw a distinct count"
    );
}

async fn incr_refuses_values_that_are_not_integers(b: &Backend) {
    let c = b.mine.as_ref();
    c.set("text", b"hello", MINUTE).await.unwrap();
    let err = c.incr("text", 1, MINUTE).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::FailedPrecondition, "{err}");
    assert_eq!(c.get("text").await.unwrap().as_deref(), Some(&b"hello"[..]));

    c.set("max", i64::MAX.to_string().as_bytes(), MINUTE)
        .await
        .unwrap();
    let err = c.incr("max", 1, MINUTE).await.unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::FailedPrecondition, "{err}");
}

async fn delete_prefix_touches_only_its_prefix_and_namespace(b: &Backend) {
    let (c, other) = (b.mine.as_ref(), b.theirs.as_ref());
    for k in ["p:1", "p:2", "p:3", "q:1", "pp:1"] {
        c.set(k, b"x", MINUTE).await.unwrap();
    }
    other.set("p:1", b"theirs", MINUTE).await.unwrap();
    assert_eq!(c.delete_prefix("p:").await.unwrap(), 3);
    assert_eq!(c.get("p:2").await.unwrap(), None);
    assert_eq!(c.get("q:1").await.unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(c.get("pp:1").await.unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(
        other.get("p:1").await.unwrap().as_deref(),
        Some(&b"theirs"[..]),
        "another namespace was touched"
    );
    // Glob characters in a prefix are literal.
    c.set("g*:1", b"x", MINUTE).await.unwrap();
    assert_eq!(c.delete_prefix("g*").await.unwrap(), 1);
    assert_eq!(
        c.delete_prefix("").await.unwrap(),
        2,
        "q:1 and pp:1 were left"
    );
    assert_eq!(
        other.get("p:1").await.unwrap().as_deref(),
        Some(&b"theirs"[..])
    );
}

async fn invalid_ttls_are_refused(b: &Backend) {
    let c = b.mine.as_ref();
    for result in [
        c.set("k", b"x", Duration::ZERO).await.err(),
        c.set_nx("k", b"x", Duration::ZERO).await.err(),
        c.incr("k", 1, Duration::ZERO).await.err(),
        c.set("k", b"x", cache::MAX_TTL * 2).await.err(),
    ] {
        let err = result.expect("refused");
        assert_eq!(err.error_code(), ErrorCode::InvalidArgument, "{err}");
    }
    assert_eq!(c.get("k").await.unwrap(), None);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Backend::redis().await).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Backend::memory().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    get_set_overwrite_delete,
    entries_expire_after_their_ttl,
    set_nx_writes_only_when_absent,
    set_nx_has_one_winner_under_contention,
    set_if_guard_writes_only_while_the_guard_holds,
    incr_counts_in_a_fixed_window,
    incr_is_atomic,
    incr_refuses_values_that_are_not_integers,
    delete_prefix_touches_only_its_prefix_and_namespace,
    invalid_ttls_are_refused,
);

#[tokio::test]
async fn redis_keys_live_under_the_namespace_and_the_fixture_cleans_up() {
    let b = Backend::redis().await;
    let redis = b.redis.as_ref().unwrap();
    b.mine.set("a", b"1", MINUTE).await.unwrap();
    b.theirs.set("b", b"2", MINUTE).await.unwrap();
    let mut keys = redis.keys().await.unwrap();
    keys.sort();
    assert_eq!(keys, vec![redis.key("mine:a"), redis.key("theirs:b")]);
    assert_eq!(b.mine.prefix(), redis.key("mine:"));
    // A service namespaces its keys in front of a prefix a test configured: they are the
    // fixture's too.
    let namespaced = format!("liquid:gateway:{}x", redis.prefix());
    let mut raw = redis.connection().await.unwrap();
    let () = ::redis::cmd("SET")
        .arg(&namespaced)
        .arg("1")
        .arg("EX")
        .arg(86_400)
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut keys = redis.keys().await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![namespaced, redis.key("mine:a"), redis.key("theirs:b")]
    );

    let url = redis.url().to_owned();
    let prefix = redis.prefix().to_owned();
    drop(b);
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let (_, left): (u64, Vec<String>) = ::redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(format!("*{prefix}*"))
        .arg("COUNT")
        .arg(10_000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(left.is_empty(), "the fixture left {left:?}");
}

#[tokio::test]
async fn unreachable_redis_names_the_url_without_its_password() {
    let err = match cache::connect("redis://:hunter2@127.0.0.1:1", "p:").await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e,
    };
    assert_eq!(err.error_code(), ErrorCode::Unavailable, "{err}");
    let message = err.to_string();
    assert!(
        !message.contains("hunter2"),
        "the password leaked: {message}"
    );
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(message.contains("make dev-up"), "{message}");
}

#[tokio::test]
async fn misconfigured_caches_are_invalid_config() {
    for config in [
        CacheConfig::new("memcached://h:11211", "p:"),
        CacheConfig::new("memory://", ""),
        CacheConfig::new("redis://127.0.0.1:6379", ""),
    ] {
        let err = match cache::connect_with(&config).await {
            Ok(_) => panic!("{config:?} was accepted"),
            Err(e) => e,
        };
        assert_eq!(err.error_code(), ErrorCode::InvalidConfig, "{err}");
    }
}
