//! The cowork service's APIs: REST for staging sandboxes ([`http`]) and for deep-work
//! sessions, agents and the queue ([`cowork`]).

pub mod cowork;
pub mod http;
