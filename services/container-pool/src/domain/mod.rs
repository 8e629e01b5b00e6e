//! Pure logic of the pool: no I/O, no clocks read, no Docker. Templates and their limits,
//! defaults derived from host facts, capacity accounting, placement scoring, and the coding
//! runners' task analysis, command lines and output parsing. Most unit tests live here.

pub mod agent_stream;
pub mod autoconf;
pub mod capacity;
pub mod placement;
pub mod runner;
pub mod template;
