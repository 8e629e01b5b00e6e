//! Pure A2A task rules: which states end a task or a stream, what may be canceled or continued,
//! how an agent's event changes the task snapshot, history trimming and ListTasks cursors.
//! No I/O here; the engine applies these to the store and the streams.

pub mod apply;
pub mod cursor;
pub mod state;

pub use apply::{AgentEvent, apply_event, trim_history};
