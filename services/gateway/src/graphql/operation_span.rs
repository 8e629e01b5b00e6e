//! One span per GraphQL operation on a WebSocket.
//!
//! A GraphQL socket can stay open for hours, while the HTTP request that opened it ends with its
//! upgrade. So the socket carries no span of its own: each operation sent on it (a query, a
//! mutation, or a subscription from `subscribe` to `complete`) runs in a root span, which makes
//! a trace of the operation and the service calls it makes. The span names the socket and links
//! to the upgrade request's span, which ends when the upgrade is answered.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
    NextSubscribe,
};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument};
use async_graphql::{Request, Response, ServerResult, Variables};
use futures_util::Stream;
use futures_util::stream::BoxStream;
use liquid_kit::telemetry::{SpanLink, target};

/// The socket an operation runs on, in the socket's connection data.
#[derive(Debug, Clone)]
pub(crate) struct SocketTrace {
    /// The socket's id, unique in this process (the gateway's logs of the socket carry it).
    pub id: u64,
    /// The upgrade request's span; `None` when nothing exports traces.
    pub upgrade: Option<SpanLink>,
}

/// The schema extension that opens the spans; operations outside a socket (`POST /graphql`)
/// run in their HTTP request's span and get none.
pub(crate) struct OperationSpans;

impl ExtensionFactory for OperationSpans {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(OperationSpan::default())
    }
}

/// The extension of one request (async-graphql makes one per request).
#[derive(Default)]
struct OperationSpan {
    /// The operation the request names, for picking its type out of a document of several.
    name: OnceLock<String>,
}

#[async_trait::async_trait]
impl Extension for OperationSpan {
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let stream = next.run(ctx, stream);
        let Some(socket) = ctx.data_opt::<SocketTrace>() else {
            return stream;
        };
        let span = tracing::info_span!(
            target: target::GRAPHQL,
            parent: None,
            "graphql operation",
            socket = socket.id,
            "graphql.operation.type" = tracing::field::Empty,
            "graphql.operation.name" = tracing::field::Empty,
        );
        if let Some(upgrade) = &socket.upgrade {
            upgrade.add_to(&span);
        }
        Box::pin(InSpan {
            inner: stream,
            span,
        })
    }

    // The request is prepared and parsed while the stream is polled, so inside its span.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if let Some(name) = &request.operation_name {
            tracing::Span::current().record("graphql.operation.name", name.as_str());
            let _ = self.name.set(name.clone());
        }
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let span = tracing::Span::current();
        let operation = match &document.operations {
            DocumentOperations::Single(operation) => Some(operation),
            // One named operation runs without the request naming it: its name is the span's.
            DocumentOperations::Multiple(named) if named.len() == 1 => {
                named.iter().next().map(|(name, operation)| {
                    if self.name.get().is_none() {
                        span.record("graphql.operation.name", name.as_str());
                    }
                    operation
                })
            }
            DocumentOperations::Multiple(named) => {
                self.name.get().and_then(|name| named.get(name.as_str()))
            }
        };
        if let Some(operation) = operation {
            span.record(
                "graphql.operation.type",
                operation.node.ty.to_string().as_str(),
            );
        }
        Ok(document)
    }
}

/// A stream polled inside `span`.
struct InSpan<'s> {
    inner: BoxStream<'s, Response>,
    span: tracing::Span,
}

impl Stream for InSpan<'_> {
    type Item = Response;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Response>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        this.inner.as_mut().poll_next(cx)
    }
}
