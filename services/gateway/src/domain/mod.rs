//! The gateway's decisions, without I/O: rate-limit arithmetic (GCRA) and tiers, client
//! addresses behind proxies, WebSocket channels and per-action scopes, upstream routing and
//! retry rules, the circuit breaker, session tokens and the simulated price feed. Everything
//! here is unit tested in place; the edges (`ratelimit`, `hub`, `ws`, `proxy`) call it.

pub mod breaker;
pub mod channel;
pub mod gcra;
pub mod price;
pub mod routing;
pub mod session_token;
pub mod tier;
