"""A pytest plugin that lets the A2A conformance kit (a2aproject/a2a-tck, not vendored here)
call a Liquid a2a service, whose every operation needs a bearer token: it adds
`Authorization: Bearer $LIQUID_TCK_TOKEN` to every httpx request and gRPC call the kit makes,
and changes nothing else. Loaded by run.sh with `-p liquid_auth_plugin`.
"""

import os

import grpc
import httpx

TOKEN = os.environ["LIQUID_TCK_TOKEN"]
_send = httpx.Client.send


def _send_with_token(self, request, *args, **kwargs):
    request.headers.setdefault("authorization", f"Bearer {TOKEN}")
    return _send(self, request, *args, **kwargs)


httpx.Client.send = _send_with_token


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the token to every call of a synchronous channel."""

    def _details(self, details):
        metadata = list(details.metadata or [])
        metadata.append(("authorization", f"Bearer {TOKEN}"))
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, details, metadata):
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


_insecure_channel = grpc.insecure_channel


def _channel_with_token(target, *args, **kwargs):
    return grpc.intercept_channel(_insecure_channel(target, *args, **kwargs), _Bearer())


grpc.insecure_channel = _channel_with_token
