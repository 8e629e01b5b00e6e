//! Delta batching: merges runs of small streamed deltas into fewer, larger ones before they
//! are sent on, so a burst (a provider streaming word by word, a late joiner of a shared call
//! replaying its whole log at once) becomes a few messages instead of one per word.
//!
//! [`batch_deltas`] wraps a [`ChatStream`]. Consecutive [`StreamEvent::TextDelta`]s are
//! concatenated, and so are consecutive [`StreamEvent::ToolCallDelta`]s of one tool call. A
//! batch is sent on when the next delta would take it over [`DeltaBatching::max_bytes`], when
//! [`DeltaBatching::max_delay`] has passed since its first delta while the stream has nothing
//! more ready, when any other event arrives (a tool call start, `Completed`, an error; the
//! batch goes first) or when the stream ends. Nothing is reordered, dropped or split: the
//! concatenated text is exactly the source's, and one delta larger than the bound passes as is.
//!
//! While the source has events ready the batcher keeps reading, so the time bound only adds
//! latency when the source itself is waiting; it never holds text back for longer than
//! `max_delay` after it arrived.
//!
//! Hand-written because it is a few dozen lines over `futures_util::stream::unfold`; the stream
//! combinator crates that chunk by count or time (`tokio-stream`'s `chunks_timeout`) collect
//! items into vectors and know nothing of merging deltas by kind and size.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::assemble::ChatStream;
use crate::error::LlmError;
use crate::types::StreamEvent;

/// The bounds of one batch of deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaBatching {
    /// Most bytes of text (or tool-call arguments) one batch carries, unless a single delta
    /// is larger.
    pub max_bytes: usize,
    /// Longest a delta waits for more to join it while the source has nothing ready.
    pub max_delay: Duration,
}

impl DeltaBatching {
    /// 4 KiB per batch, sent at most 25 ms after its first delta: a reader sees text flow
    /// at least 40 times a second, and a burst of a long answer is a message per 4 KiB.
    pub const DEFAULT: DeltaBatching = DeltaBatching {
        max_bytes: 4 * 1024,
        max_delay: Duration::from_millis(25),
    };
}

impl Default for DeltaBatching {
    fn default() -> Self {
        DeltaBatching::DEFAULT
    }
}

/// `stream` with runs of consecutive deltas merged into batches bounded by `bounds` (see the
/// module docs); every other event passes unchanged and in order.
pub fn batch_deltas(stream: ChatStream, bounds: DeltaBatching) -> ChatStream {
    let batcher = Batcher {
        source: stream,
        bounds,
        batch: None,
        held: None,
        ended: false,
    };
    Box::pin(futures_util::stream::unfold(batcher, Batcher::step))
}

type Item = Result<StreamEvent, LlmError>;

/// A batch being built.
struct Batch {
    /// A `TextDelta` or `ToolCallDelta` holding the merged text so far.
    event: StreamEvent,
    /// When it must be sent even if no more deltas come.
    deadline: Instant,
}

struct Batcher {
    source: ChatStream,
    bounds: DeltaBatching,
    batch: Option<Batch>,
    /// An item read after the batch that must follow it out.
    held: Option<Item>,
    /// The source returned `None` (it is not polled again).
    ended: bool,
}

/// The text a delta carries; `None` for events that are not deltas.
fn delta_text(event: &StreamEvent) -> Option<&str> {
    match event {
        StreamEvent::TextDelta { text } => Some(text),
        StreamEvent::ToolCallDelta { arguments, .. } => Some(arguments),
        StreamEvent::ToolCallStart { .. } | StreamEvent::Completed { .. } => None,
    }
}

/// Appends `next` to `batch` if it is the same kind of delta (of the same tool call) and the
/// result stays within `max_bytes`; otherwise hands `next` back.
fn absorb(batch: &mut StreamEvent, next: StreamEvent, max_bytes: usize) -> Option<StreamEvent> {
    match (batch, &next) {
        (StreamEvent::TextDelta { text }, StreamEvent::TextDelta { text: more })
            if text.len() + more.len() <= max_bytes =>
        {
            text.push_str(more);
            None
        }
        (
            StreamEvent::ToolCallDelta { index, arguments },
            StreamEvent::ToolCallDelta {
                index: next_index,
                arguments: more,
            },
        ) if index == next_index && arguments.len() + more.len() <= max_bytes => {
            arguments.push_str(more);
            None
        }
        _ => Some(next),
    }
}

impl Batcher {
    /// Sends the batch on (there must be one), keeping `after` for the next step.
    fn flush(mut self, after: Option<Item>) -> Option<(Item, Batcher)> {
        self.held = after;
        let batch = self.batch.take()?;
        Some((Ok(batch.event), self))
    }

    /// The next item out: a batch, or an event that is not a delta.
    async fn step(mut self) -> Option<(Item, Batcher)> {
        loop {
            let item = if let Some(item) = self.held.take() {
                Some(item)
            } else if self.ended {
                None
            } else if let Some(deadline) = self.batch.as_ref().map(|b| b.deadline) {
                tokio::select! {
                    // Ready events first: the time bound only matters while the source waits.
                    biased;
                    item = self.source.next() => item,
                    () = tokio::time::sleep_until(deadline) => return self.flush(None),
                }
            } else {
                self.source.next().await
            };
            let Some(item) = item else {
                self.ended = true;
                return match self.batch {
                    Some(_) => self.flush(None),
                    None => None,
                };
            };
            let event = match item {
                Ok(event) if delta_text(&event).is_some() => event,
                other if self.batch.is_some() => return self.flush(Some(other)),
                other => return Some((other, self)),
            };
            let max_bytes = self.bounds.max_bytes;
            match self.batch.as_mut() {
                Some(batch) => {
                    if let Some(event) = absorb(&mut batch.event, event, max_bytes) {
                        return self.flush(Some(Ok(event)));
                    }
                }
                None => {
                    self.batch = Some(Batch {
                        event,
                        deadline: Instant::now() + self.bounds.max_delay,
                    });
                }
            }
            let full = self
                .batch
                .as_ref()
                .and_then(|b| delta_text(&b.event))
                .is_some_and(|text| text.len() >= max_bytes);
            if full {
                return self.flush(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ChatResponse, FinishReason, Usage};

    fn text(t: &str) -> Item {
        Ok(StreamEvent::TextDelta { text: t.into() })
    }

    fn args(index: usize, a: &str) -> Item {
        Ok(StreamEvent::ToolCallDelta {
            index,
            arguments: a.into(),
        })
    }

    fn completed(text: &str) -> Item {
        Ok(StreamEvent::Completed {
            response: ChatResponse {
                id: None,
                provider: "test".into(),
                model: "test".into(),
                text: text.into(),
                tool_calls: Vec::new(),
                finish_reason: FinishReason::Stop,
                usage: Usage::default(),
                cost_usd: None,
            },
        })
    }

    async fn batched(items: Vec<Item>, max_bytes: usize) -> Vec<Item> {
        let source: ChatStream = Box::pin(futures_util::stream::iter(items));
        let bounds = DeltaBatching {
            max_bytes,
            ..DeltaBatching::DEFAULT
        };
        batch_deltas(source, bounds).collect().await
    }

    fn texts(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .filter_map(|i| match i {
                Ok(StreamEvent::TextDelta { text }) => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_burst_of_a_thousand_words_becomes_a_few_bounded_batches_in_order() {
        let words: Vec<String> = (0..1000).map(|i| format!("word{i} ")).collect();
        let whole: String = words.concat();
        let mut items: Vec<Item> = words.iter().map(|w| text(w)).collect();
        items.push(completed(&whole));
        let out = batched(items, 4096).await;
        let batches = texts(&out);
        assert_eq!(batches.concat(), whole, "no text lost or reordered");
        assert_eq!(batches.len(), whole.len().div_ceil(4096));
        assert!(batches.iter().all(|b| b.len() <= 4096));
        assert!(
            matches!(out.last(), Some(Ok(StreamEvent::Completed { .. }))),
            "the answer comes last"
        );
        assert_eq!(out.len(), batches.len() + 1);
    }

    #[tokio::test]
    async fn other_events_flush_the_batch_and_keep_their_place() {
        let out = batched(
            vec![
                text("a"),
                text("b"),
                Ok(StreamEvent::ToolCallStart {
                    index: 0,
                    id: "c0".into(),
                    name: "f".into(),
                }),
                args(0, "{\"x\""),
                args(0, ":1}"),
                args(1, "{}"),
                text("c"),
                Err(LlmError::Protocol {
                    provider: "test".into(),
                    reason: "cut".into(),
                }),
                text("after the error"),
            ],
            4096,
        )
        .await;
        let shown: Vec<String> = out
            .iter()
            .map(|i| match i {
                Ok(StreamEvent::TextDelta { text }) => format!("text {text}"),
                Ok(StreamEvent::ToolCallStart { index, .. }) => format!("start {index}"),
                Ok(StreamEvent::ToolCallDelta { index, arguments }) => {
                    format!("args {index} {arguments}")
                }
                Ok(StreamEvent::Completed { .. }) => "completed".into(),
                Err(_) => "error".into(),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "text ab",
                "start 0",
                "args 0 {\"x\":1}",
                "args 1 {}",
                "text c",
                "error",
                "text after the error"
            ]
        );
    }

    #[tokio::test]
    async fn a_delta_larger_than_the_bound_passes_whole() {
        let big = "x".repeat(50);
        let out = batched(vec![text("ab"), text(&big), text("cd"), text("ef")], 10).await;
        assert_eq!(texts(&out), ["ab", big.as_str(), "cdef"]);
    }

    #[tokio::test]
    async fn a_batch_is_sent_while_the_source_waits() {
        // One delta, then a source that never sends again: the delta still reaches the reader.
        let source: ChatStream = Box::pin(
            futures_util::stream::iter(vec![text("hello")]).chain(futures_util::stream::pending()),
        );
        let mut stream = batch_deltas(source, DeltaBatching::DEFAULT);
        // The limit only turns a hang (the defect) into a failure.
        let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a delta was held back while the source waited");
        assert_eq!(texts(&[first.unwrap()]), ["hello"]);
    }
}
