//! The A2A bridge: cowork's two faces on the Agent2Agent protocol.
//!
//! - **Delegation** ([`directory`], [`matching`], [`delegate`]): remote agents configured
//!   under `[a2a] agents` are discovered by their agent card; a step whose domain or title
//!   matches one of a remote agent's skills ([`matching::pick`] states the rule) runs on that
//!   agent over `liquid-a2a` instead of in a container. File changes the remote agent returns
//!   go through the permission pipeline into the session's staging sandbox, never straight to
//!   disk.
//! - **Cowork as an agent** ([`executor_service`]): cowork implements
//!   `liquid.a2a.v1.AgentExecutorService`, so the a2a service hosts a `cowork` agent whose
//!   tasks are sessions (plan approval through `INPUT_REQUIRED`).
//!
//! This module speaks A2A only as a client and as an executor; it does not host A2A endpoints
//! itself (the a2a service owns the protocol, task store and push notifications).

pub mod delegate;
pub mod directory;
pub mod executor_service;
pub mod matching;
