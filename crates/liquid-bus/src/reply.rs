//! Request/reply: the responder side. [`EventBus::serve`](crate::EventBus::serve) yields
//! [`Request`]s; each is answered with [`Request::respond`].
//!
//! All responders of one subject form one group: each request goes to exactly one of them
//! (NATS queue-group semantics), so replicas of a service can serve the same subject.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::{BusError, Headers, Message};

/// Queue group every responder joins.
pub(crate) const RESPONDER_GROUP: &str = "liquid-responders";

/// Sends a reply to a request's private reply subject; one implementation per backend.
#[async_trait]
pub(crate) trait ReplySink: Send + Sync {
    /// Publishes `payload` to `reply_to` (with the current trace context added).
    async fn reply(&self, reply_to: &str, headers: Headers, payload: Bytes)
    -> Result<(), BusError>;
}

/// One request waiting for its answer.
pub struct Request {
    /// The request as sent (subject, headers with the requester's trace context, payload).
    pub message: Message,
    reply_to: String,
    sink: Arc<dyn ReplySink>,
}

impl Request {
    pub(crate) fn new(message: Message, reply_to: String, sink: Arc<dyn ReplySink>) -> Request {
        Request {
            message,
            reply_to,
            sink,
        }
    }

    /// Answers the request. The requester takes the first answer; later ones are ignored.
    pub async fn respond(&self, headers: Headers, payload: Bytes) -> Result<(), BusError> {
        self.sink.reply(&self.reply_to, headers, payload).await
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

/// The stream of requests for one served subject. Dropping it stops serving.
pub struct Requests {
    subject: String,
    inner: Pin<Box<dyn Stream<Item = Request> + Send>>,
}

impl Requests {
    pub(crate) fn new(
        subject: &str,
        inner: impl Stream<Item = Request> + Send + 'static,
    ) -> Requests {
        Requests {
            subject: subject.to_owned(),
            inner: Box::pin(inner),
        }
    }

    /// The subject (or pattern) being served.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Stream for Requests {
    type Item = Request;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        self.inner.as_mut().poll_next(cx)
    }
}
