//! The gateway's sections load from the environment beside the shared ones, as the Helm chart
//! sets them, and a misspelt key or a bad value stops start-up naming the key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use liquid_gateway::{SERVICE, Settings};
use liquid_runtime::ServiceConfig;

#[test]
fn gateway_sections_load_from_the_environment() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("LIQUID_GATEWAY__RATE_LIMIT__CLASSES__DEFAULT__USER", "7");
        jail.set_env(
            "LIQUID_GATEWAY__RATE_LIMIT__TRUSTED_PROXIES",
            r#"["10.0.0.0/8"]"#,
        );
        jail.set_env(
            "LIQUID_GATEWAY__RATE_LIMIT__REDIS_URL",
            "redis://127.0.0.1:6379",
        );
        jail.set_env(
            "LIQUID_GATEWAY__CORS__ALLOWED_ORIGINS",
            r#"["https://console.example.com"]"#,
        );
        jail.set_env("LIQUID_GATEWAY__WEBSOCKET__REQUIRE_AUTH", "false");
        jail.set_env("LIQUID_GATEWAY__CACHE__URL", "redis://127.0.0.1:6379");
        let cfg = ServiceConfig::<Settings>::load(&SERVICE, None).unwrap();
        let s = &cfg.settings;
        let default = &s.rate_limit.classes["default"];
        assert_eq!((default.user, default.session, default.ip), (7, 50, 30));
        assert_eq!(s.rate_limit.trusted_proxies, ["10.0.0.0/8"]);
        assert_eq!(s.rate_limit.redis_url.expose(), "redis://127.0.0.1:6379");
        assert_eq!(s.cors.allowed_origins, ["https://console.example.com"]);
        assert!(!s.websocket.require_auth);
        assert_eq!(cfg.cache.url, "redis://127.0.0.1:6379");

        jail.set_env("LIQUID_GATEWAY__WEBSOCKET__HEARTBEAT_SECONDS", "5");
        let err = ServiceConfig::<Settings>::load(&SERVICE, None).unwrap_err();
        assert!(err.to_string().contains("heartbeat_seconds"), "{err}");

        jail.clear_env();
        jail.set_env(
            "LIQUID_GATEWAY__RATE_LIMIT__TRUSTED_PROXIES",
            r#"["10.0.0.0/40"]"#,
        );
        let err = ServiceConfig::<Settings>::load(&SERVICE, None).unwrap_err();
        assert!(
            err.to_string().contains("rate_limit.trusted_proxies"),
            "{err}"
        );
        Ok(())
    });
}
