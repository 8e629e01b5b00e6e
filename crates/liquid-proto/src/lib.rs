//! Generated tonic/prost code for the platform's own contracts under `proto/liquid/`.
//!
//! Nothing here is written by hand except the module tree; edit the .proto files instead.

/// `liquid.platform.v1`: the contract every service serves (identity and backends).
pub mod platform {
    /// Version 1.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("liquid.platform.v1");
    }
}
