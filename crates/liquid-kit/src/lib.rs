//! Shared foundation of every Liquid service: configuration, telemetry, metrics, health, the
//! error vocabulary and the service bootstrap.
//!
//! This crate owns cross-cutting mechanics only; it must not know about any particular
//! service, store or bus.

pub mod config;
pub mod error;
pub mod health;
pub mod metrics;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use error::{ApiError, ErrorCode, HasErrorCode};
pub use secret::Secret;
pub use server::{RunningService, ServiceHost};
