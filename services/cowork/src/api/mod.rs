//! The cowork service's APIs: REST for staging sandboxes ([`http`]).

pub mod http;
