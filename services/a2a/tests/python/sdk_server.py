"""The official A2A Python SDK (a2a-sdk 1.3.0) as a server: its DefaultRequestHandler with an
echo agent, on JSON-RPC (/a2a), HTTP+JSON (/a2a/rest) and gRPC, with the card at
/.well-known/agent-card.json. The interop test drives it with the Liquid client; the benchmark
uses it as the baseline (uvicorn, one worker, as the SDK's samples run it).

The echo agent answers every message with a task holding one artifact that repeats the text,
then completes it; a message whose text starts with `input` asks for input instead, so
multi-turn and cancel can be exercised.

usage: sdk_server.py HTTP_PORT GRPC_PORT [memory|sqlite:PATH]
"""

import asyncio
import sys

import grpc
import uvicorn
from starlette.applications import Starlette

from a2a.helpers.proto_helpers import get_message_text, new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Part,
    a2a_pb2_grpc,
)


class EchoExecutor(AgentExecutor):
    """Echoes the user's text as an artifact and completes the task."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is None:
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        text = get_message_text(context.message)
        if text.startswith("input"):
            await updater.requires_input(updater.new_agent_message([Part(text="more input please")]))
            return
        await updater.add_artifact([Part(text=text)], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is not None:
            await TaskUpdater(event_queue, task.id, task.context_id).cancel()


async def task_store(kind):
    if kind.startswith("sqlite:"):
        from sqlalchemy.ext.asyncio import create_async_engine

        from a2a.server.tasks import DatabaseTaskStore

        store = DatabaseTaskStore(create_async_engine(f"sqlite+aiosqlite:///{kind[7:]}"))
        await store.initialize()
        return store
    return InMemoryTaskStore()


async def main(http_port, grpc_port, store_kind):
    base = f"http://127.0.0.1:{http_port}"
    card = AgentCard(
        name="echo",
        description="a2a-sdk 1.3.0 echo agent",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=f"{base}/a2a", protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=f"{base}/a2a/rest", protocol_binding="HTTP+JSON", protocol_version="1.0"),
            AgentInterface(url=f"127.0.0.1:{grpc_port}", protocol_binding="GRPC", protocol_version="1.0"),
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="echoes text", tags=["echo"])],
    )
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(), task_store=await task_store(store_kind), agent_card=card
    )
    app = Starlette(
        routes=create_agent_card_routes(card)
        + create_jsonrpc_routes(handler, "/a2a")
        + create_rest_routes(handler, path_prefix="/a2a/rest")
    )
    grpc_server = grpc.aio.server()
    a2a_pb2_grpc.add_A2AServiceServicer_to_server(GrpcHandler(handler), grpc_server)
    grpc_server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await grpc_server.start()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=http_port, log_level="warning", access_log=False)
    )
    await server.serve()
    await grpc_server.stop(0)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "memory"))
