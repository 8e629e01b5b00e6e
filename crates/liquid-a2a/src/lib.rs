//! The A2A protocol v1.0 (`lf.a2a.v1`) for Liquid: types, error model, server building blocks
//! for the three bindings and a client.
//!
//! - [`pb`]: the generated types of the normative proto. The same structs are the gRPC messages
//!   and, through generated serde impls, the exact ProtoJSON of the JSON bindings (camelCase,
//!   enum names, oneofs by member name, `Z` timestamps, base64 bytes, unknown fields ignored).
//! - [`error`]: [`A2aError`] and its JSON-RPC, HTTP and gRPC forms under both spec tables.
//! - [`handler`]: the [`A2aHandler`] trait an agent implements and the [`A2aEndpoint`] that
//!   applies the protocol rules once for every binding.
//! - [`jsonrpc`], [`rest`], [`grpc`]: the bindings; [`card`]: discovery; [`signature`]: JWS
//!   card signatures.
//! - [`client`]: one client over the three bindings, with SSE streaming and re-subscription.
//!
//! This crate holds no task store and no agent logic.

pub mod card;
pub mod client;
pub mod error;
pub mod grpc;
pub mod handler;
pub mod jsonrpc;
pub mod params;
pub mod pb;
pub mod rest;
pub mod signature;
pub mod sse;
pub mod timestamp;

pub use error::{A2aError, A2aErrorKind, ErrorTable};
pub use handler::{A2aEndpoint, A2aHandler, Binding, EventStream, RequestContext};
pub use params::{PROTOCOL_VERSION, ServiceParams};
