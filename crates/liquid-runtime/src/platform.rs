//! The platform contract every service serves: who this replica is and what it runs on, over
//! REST (`GET /api/v1/<svc>/info`) and gRPC (`liquid.platform.v1.PlatformService/GetInfo`),
//! both for verified callers only; plus the readiness checks of the shared backends and the
//! instance log that records every start in the service's own database.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use liquid_auth::{Authenticated, Claims, Verifier};
use liquid_bus::EventBus;
use liquid_kit::ApiError;
use liquid_kit::health::ReadinessCheck;
use liquid_proto::platform::v1 as pb;
use liquid_store::{Cache, Database, StoreError};
use serde::Serialize;
use uuid::Uuid;

use crate::Foundation;
use crate::config::ServiceDefaults;

/// What one running replica is.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    /// Service name.
    pub service: String,
    /// Crate version.
    pub version: String,
    /// UUIDv7 of this process lifetime.
    pub instance_id: Uuid,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Backend kind per role.
    pub backends: HashMap<String, String>,
    /// Fallbacks taken at start-up.
    pub fallbacks: Vec<String>,
}

impl InstanceInfo {
    /// Describes a replica of `defaults` on the given backends.
    pub fn new(
        defaults: &ServiceDefaults,
        database: &Database,
        bus: &Arc<dyn EventBus>,
        cache: &Arc<dyn Cache>,
        fallbacks: Vec<String>,
    ) -> Self {
        let backends = HashMap::from([
            ("database".to_owned(), database.kind().to_string()),
            ("bus".to_owned(), bus.kind().to_string()),
            ("cache".to_owned(), cache.kind().to_string()),
        ]);
        InstanceInfo {
            service: defaults.name.to_owned(),
            version: defaults.version.to_owned(),
            instance_id: Uuid::now_v7(),
            started_at: Utc::now(),
            backends,
            fallbacks,
        }
    }
}

/// The REST answer of `GET /api/v1/<svc>/info`.
#[derive(Debug, Serialize)]
struct InfoResponse<'a> {
    #[serde(flatten)]
    info: &'a InstanceInfo,
    /// Starts recorded in this service's database (grows across restarts).
    starts: i64,
    /// The verified caller.
    caller: String,
    /// The caller's tenant.
    tenant: String,
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Appends this start to the service's instance log.
pub async fn record_start(database: &Database, info: &InstanceInfo) -> Result<(), StoreError> {
    match database {
        Database::Postgres(pool) => {
            sqlx::query("INSERT INTO service_instances (instance_id, version, hostname, started_at) VALUES ($1, $2, $3, $4)")
                .bind(info.instance_id)
                .bind(&info.version)
                .bind(hostname())
                .bind(info.started_at)
                .execute(pool)
                .await
                .map_err(StoreError::from)?;
        }
        Database::Sqlite(pool) => {
            sqlx::query("INSERT INTO service_instances (instance_id, version, hostname, started_at) VALUES (?, ?, ?, ?)")
                .bind(info.instance_id.to_string())
                .bind(&info.version)
                .bind(hostname())
                .bind(info.started_at.to_rfc3339_opts(SecondsFormat::Millis, true))
                .execute(pool)
                .await
                .map_err(StoreError::from)?;
        }
    }
    Ok(())
}

async fn count_starts(database: &Database) -> Result<i64, StoreError> {
    let n = match database {
        Database::Postgres(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM service_instances")
                .fetch_one(pool)
                .await
        }
        Database::Sqlite(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM service_instances")
                .fetch_one(pool)
                .await
        }
    };
    n.map_err(StoreError::from)
}

/// `GET /api/v1/<svc>/info` for any verified caller.
pub fn info_router(foundation: Foundation) -> Router {
    let path = format!("/api/v1/{}/info", foundation.defaults.name);
    Router::new().route(
        &path,
        get(move |Authenticated(claims): Authenticated| {
            let foundation = foundation.clone();
            async move {
                let starts = count_starts(&foundation.database)
                    .await
                    .map_err(|e| ApiError::from_error(&e))?;
                let body = serde_json::to_value(InfoResponse {
                    info: &foundation.info,
                    starts,
                    caller: claims.sub.clone(),
                    tenant: claims.tenant_id().to_owned(),
                })
                .map_err(|e| ApiError::new(liquid_kit::ErrorCode::Internal, e.to_string()))?;
                Ok::<_, ApiError>(Json(body))
            }
        }),
    )
}

/// The gRPC side of the contract.
pub struct PlatformGrpc {
    info: Arc<InstanceInfo>,
    verifier: Arc<Verifier>,
}

fn verified(
    verifier: &Verifier,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Claims, tonic::Status> {
    let token = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                liquid_kit::ErrorCode::Unauthenticated,
                "missing bearer token in authorization metadata",
            )
            .into_status()
        })?;
    verifier
        .verify(token)
        .map_err(|e| ApiError::from_error(&e).into_status())
}

#[tonic::async_trait]
impl pb::platform_service_server::PlatformService for PlatformGrpc {
    async fn get_info(
        &self,
        request: tonic::Request<pb::GetInfoRequest>,
    ) -> Result<tonic::Response<pb::ServiceInfo>, tonic::Status> {
        let claims = verified(&self.verifier, request.metadata())?;
        let info = &self.info;
        Ok(tonic::Response::new(pb::ServiceInfo {
            service: info.service.clone(),
            version: info.version.clone(),
            instance_id: info.instance_id.to_string(),
            started_at: info.started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            backends: info.backends.clone(),
            fallbacks: info.fallbacks.clone(),
            caller: claims.sub,
        }))
    }
}

/// The tonic service for [`PlatformGrpc`].
pub fn grpc_service(
    foundation: Foundation,
) -> pb::platform_service_server::PlatformServiceServer<PlatformGrpc> {
    pb::platform_service_server::PlatformServiceServer::new(PlatformGrpc {
        info: foundation.info.clone(),
        verifier: foundation.verifier.clone(),
    })
}

/// Readiness of the service's database.
pub struct DatabaseReady(pub Database);
/// Readiness of the event bus.
pub struct BusReady(pub Arc<dyn EventBus>);
/// Readiness of the cache.
pub struct CacheReady(pub Arc<dyn Cache>);

#[async_trait]
impl ReadinessCheck for DatabaseReady {
    fn name(&self) -> &str {
        "database"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl ReadinessCheck for BusReady {
    fn name(&self) -> &str {
        "bus"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl ReadinessCheck for CacheReady {
    fn name(&self) -> &str {
        "cache"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}
