//! Task state predicates (spec §3.1: terminal states; §3.2.2: interrupted states).

use liquid_a2a::pb::TaskState;

fn state(value: i32) -> TaskState {
    TaskState::try_from(value).unwrap_or(TaskState::Unspecified)
}

/// Completed, failed, canceled or rejected: the task takes no more messages.
pub fn is_terminal(value: i32) -> bool {
    matches!(
        state(value),
        TaskState::Completed | TaskState::Failed | TaskState::Canceled | TaskState::Rejected
    )
}

/// Input or auth required: the task waits for the client.
pub fn is_interrupted(value: i32) -> bool {
    matches!(
        state(value),
        TaskState::InputRequired | TaskState::AuthRequired
    )
}

/// Where a blocking SendMessage returns and a SendStreamingMessage stream closes.
pub fn is_final(value: i32) -> bool {
    is_terminal(value) || is_interrupted(value)
}

/// Whether CancelTask may cancel a task in this state (every non-terminal state, including
/// input-required).
pub fn is_cancelable(value: i32) -> bool {
    !is_terminal(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn predicates() {
        use TaskState::*;
        for s in [Completed, Failed, Canceled, Rejected] {
            assert!(is_terminal(s as i32) && is_final(s as i32) && !is_cancelable(s as i32));
        }
        for s in [InputRequired, AuthRequired] {
            assert!(is_interrupted(s as i32) && is_final(s as i32) && is_cancelable(s as i32));
        }
        for s in [Submitted, Working] {
            assert!(!is_final(s as i32) && is_cancelable(s as i32));
        }
    }
}
