//! liquid-auth as callers meet it: the layer in front of a real axum router and a real tonic
//! server, every kind of bad token refused with the right status, code and reason, good tokens
//! of each algorithm accepted, JWKS served over HTTP and rotated, and the signing key on disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cache;
mod common;
mod grpc;
mod http_layer;
mod jwks;
mod signing;
