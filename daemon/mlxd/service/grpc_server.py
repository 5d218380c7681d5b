"""The grpc.aio server with its services: mlxd.v1.Inference, grpc.health.v1 and reflection.

Every handler is a coroutine on one event loop, so a call waiting on its client (a request message that never
comes, a reply it does not read) holds no thread, and health is never queued behind other calls.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from mlxd.service.listen import Listener, bind, bind_private
from mlxd.service.servicer import InferenceServicer
from mlxd_proto.v1 import inference_pb2, inference_pb2_grpc

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
HEALTH_NAMES = ["", SERVICE_NAME]


async def start_server(addr: str, servicer: InferenceServicer, health: health_aio.HealthServicer, *,
                       credentials: grpc.ServerCredentials | None = None,
                       interceptors: list[grpc.aio.ServerInterceptor] | None = None,
                       options: list[tuple[str, int]] | None = None,
                       parent_socket: bool = False) -> tuple[grpc.aio.Server, list[Listener]]:
    """Bind and start; health says NOT_SERVING until the caller publishes otherwise. The listeners: addr's, then
    with parent_socket a unix socket in a new private directory, for the parent alone. gRPC caps connections per
    listener (grpc.max_allowed_incoming_connections), so clients that fill addr's cap leave the parent's free."""
    server = grpc.aio.server(interceptors=interceptors or [], options=options or [])
    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in HEALTH_NAMES:
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    listeners = [bind(server, addr, credentials)]
    if parent_socket:
        listeners.append(bind_private(server))
    await server.start()
    return server, listeners
