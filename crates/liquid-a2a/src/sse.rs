//! Reading Server-Sent Events responses (client side): each event's `data` is one JSON
//! document. Parsing of the event-stream framing is `eventsource-stream`'s.

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};

use crate::error::A2aError;

/// One received event: its `event` name (`message` when none was sent) and `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event name.
    pub event: String,
    /// The data payload.
    pub data: String,
}

/// The events of an SSE response body that carry data, in order. Comments and keep-alives are
/// skipped; a transport failure ends the stream with an `Internal` error.
pub fn events(
    response: reqwest::Response,
) -> impl Stream<Item = Result<SseEvent, A2aError>> + Send + 'static {
    response
        .bytes_stream()
        .eventsource()
        .filter_map(|event| async move {
            match event {
                Ok(e) if e.data.is_empty() => None,
                Ok(e) => Some(Ok(SseEvent {
                    event: e.event,
                    data: e.data,
                })),
                Err(e) => Some(Err(A2aError::Internal {
                    reason: format!("event stream: {e}"),
                })),
            }
        })
}
