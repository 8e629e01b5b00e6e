"""The official A2A Python SDK (a2a-sdk 1.3.0) as a client of the Liquid a2a service.

Run by services/a2a/tests/interop.rs: resolves the agent card at BASE_URL with the SDK's card
resolver, picks the interface of BINDING (JSONRPC, HTTP+JSON or GRPC) from it, and drives the
conformance agent through the SDK's client: blocking and streaming sends, GetTask with a
history length, ListTasks, CancelTask, SubscribeToTask, the push notification config
operations, the extended card and the error a missing task maps to. Prints one JSON object
with what the SDK saw; the Rust test asserts on it.

usage: sdk_client.py BASE_URL BINDING TOKEN [GRPC_TARGET]
"""

import asyncio
import json
import sys
import uuid

import grpc
import httpx

from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import A2ACardResolver
from a2a.types import (
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskPushNotificationConfig,
    TaskState,
)


def with_bearer(details, token):
    metadata = list(details.metadata or [])
    metadata.append(("authorization", f"Bearer {token}"))
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class UnaryBearer(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the bearer token to unary gRPC calls."""

    def __init__(self, token):
        self.token = token

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(with_bearer(details, self.token), request)


class StreamBearer(grpc.aio.UnaryStreamClientInterceptor):
    """Adds the bearer token to server-streaming gRPC calls (grpc.aio files an interceptor
    under its first matching kind only, hence two classes)."""

    def __init__(self, token):
        self.token = token

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(with_bearer(details, self.token), request)


def message(prefix, text="hello", task_id=""):
    return Message(
        message_id=f"{prefix}-{uuid.uuid4()}",
        role=Role.ROLE_USER,
        parts=[Part(text=text)],
        task_id=task_id,
    )


def state_name(state):
    return TaskState.Name(state)


def describe(event):
    kind = event.WhichOneof("payload")
    if kind == "task":
        return {"kind": "task", "state": state_name(event.task.status.state)}
    if kind == "status_update":
        return {"kind": "status", "state": state_name(event.status_update.status.state)}
    if kind == "artifact_update":
        parts = [p.text for p in event.artifact_update.artifact.parts]
        return {
            "kind": "artifact",
            "text": "".join(parts),
            "append": event.artifact_update.append,
            "lastChunk": event.artifact_update.last_chunk,
        }
    if kind == "message":
        return {"kind": "message", "text": "".join(p.text for p in event.message.parts)}
    return {"kind": str(kind)}


async def collect(stream):
    return [describe(e) async for e in stream]


async def main(base_url, binding, token, grpc_target):
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    card = await A2ACardResolver(http, base_url).get_agent_card()
    if grpc_target:
        # The card names the gRPC port the service would use by default; tests bind port 0.
        for iface in card.supported_interfaces:
            if iface.protocol_binding == "GRPC":
                iface.url = grpc_target

    def channel(url):
        return grpc.aio.insecure_channel(url, interceptors=[UnaryBearer(token), StreamBearer(token)])

    out = {"card": {"name": card.name, "bindings": [i.protocol_binding for i in card.supported_interfaces]}}

    def client(streaming):
        config = ClientConfig(
            streaming=streaming,
            httpx_client=http,
            grpc_channel_factory=channel,
            supported_protocol_bindings=[binding],
        )
        return ClientFactory(config).create(card)

    blocking = client(False)
    streaming = client(True)

    # Blocking SendMessage: one task, completed, with the agent's status message.
    events = await collect(
        blocking.send_message(SendMessageRequest(message=message("tck-complete-task")))
    )
    out["send"] = events
    first = None
    async for e in blocking.send_message(SendMessageRequest(message=message("tck-complete-task"))):
        first = e.task
    out["sendStatusText"] = "".join(p.text for p in first.status.message.parts)

    # GetTask with historyLength.
    task = await blocking.get_task(GetTaskRequest(id=first.id, history_length=1))
    out["get"] = {"id": task.id == first.id, "state": state_name(task.status.state), "history": len(task.history)}

    # A direct message, no task.
    out["messageResponse"] = await collect(
        blocking.send_message(SendMessageRequest(message=message("tck-message-response")))
    )

    # Streaming: task, working, artifact, completed.
    out["stream"] = await collect(
        streaming.send_message(SendMessageRequest(message=message("tck-stream-001")))
    )
    out["chunked"] = await collect(
        streaming.send_message(SendMessageRequest(message=message("tck-stream-artifact-chunked")))
    )

    # Multi-turn: input-required, then a follow-up on the same task completes it.
    ir = None
    async for e in blocking.send_message(SendMessageRequest(message=message("tck-input-required"))):
        ir = e.task
    follow = None
    async for e in blocking.send_message(
        SendMessageRequest(message=message("tck-complete-task", "done", task_id=ir.id))
    ):
        follow = e.task
    out["multiTurn"] = [state_name(ir.status.state), state_name(follow.status.state), follow.id == ir.id]

    # Cancel an input-required task; cancelling again is TaskNotCancelable.
    ir2 = None
    async for e in blocking.send_message(SendMessageRequest(message=message("tck-input-required"))):
        ir2 = e.task
    canceled = await blocking.cancel_task(CancelTaskRequest(id=ir2.id))
    try:
        await blocking.cancel_task(CancelTaskRequest(id=ir2.id))
        again = "no error"
    except Exception as e:  # noqa: BLE001 - the class name is the result
        again = type(e).__name__
    out["cancel"] = [state_name(canceled.status.state), again]

    # ListTasks pages.
    page = await blocking.list_tasks(ListTasksRequest(page_size=2))
    out["list"] = {"tasks": len(page.tasks), "next": bool(page.next_page_token), "total": page.total_size}

    # SubscribeToTask on a running task: the Task first, then to COMPLETED.
    running = None
    async for e in blocking.send_message(
        SendMessageRequest(
            message=message("test-resubscribe-message-id"),
            configuration=SendMessageConfiguration(return_immediately=True),
        )
    ):
        running = e.task
    out["subscribe"] = await collect(streaming.subscribe(SubscribeToTaskRequest(id=running.id)))

    # Push notification configs: create, get, list, delete.
    created = await blocking.create_task_push_notification_config(
        TaskPushNotificationConfig(task_id=first.id, id="sdk-config", url="https://example.com/hook", token="tok")
    )
    got = await blocking.get_task_push_notification_config(
        GetTaskPushNotificationConfigRequest(task_id=first.id, id="sdk-config")
    )
    listed = await blocking.list_task_push_notification_configs(
        ListTaskPushNotificationConfigsRequest(task_id=first.id)
    )
    await blocking.delete_task_push_notification_config(
        DeleteTaskPushNotificationConfigRequest(task_id=first.id, id="sdk-config")
    )
    after = await blocking.list_task_push_notification_configs(
        ListTaskPushNotificationConfigsRequest(task_id=first.id)
    )
    out["push"] = {
        "created": created.id,
        "got": [got.url, got.token],
        "listed": [c.id for c in listed.configs],
        "after": len(after.configs),
    }

    # The extended card.
    extended = await blocking.get_extended_agent_card(GetExtendedAgentCardRequest())
    out["extended"] = [s.id for s in extended.skills]

    # Errors map to the SDK's error classes.
    try:
        await blocking.get_task(GetTaskRequest(id=str(uuid.uuid4())))
        out["missing"] = "no error"
    except Exception as e:  # noqa: BLE001 - the class name is the result
        out["missing"] = type(e).__name__

    await blocking.close()
    await streaming.close()
    await http.aclose()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else ""))
