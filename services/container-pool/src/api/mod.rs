//! The pool's edges: REST under `/api/v1/containers` ([`http`]) and the gRPC service
//! `liquid.container_pool.v1.ContainerPoolService` ([`grpc`]). Both authorise by scope:
//! `containers:read` for status, templates and configuration; `containers:admin` (or
//! `admin:*`) for the REST acquire/release/exec/files and for changing templates;
//! `containers:exec` for the gRPC claim calls cowork and healer make with service tokens.
//! Claims belong to the caller's tenant; another tenant's claim is `not_found`.

pub mod grpc;
pub mod http;

/// Scope for reading pool status, templates and configuration.
pub const SCOPE_READ: &str = "containers:read";
/// Scope for administering the pool over REST.
pub const SCOPE_ADMIN: &str = "containers:admin";
/// Scope for claiming and using containers over gRPC.
pub const SCOPE_EXEC: &str = "containers:exec";
