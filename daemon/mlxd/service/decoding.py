"""Parse requests inside the handler, so a message that is not valid protobuf gets INVALID_ARGUMENT.

gRPC Python answers a request its deserializer cannot parse (corrupt wire format, a string field with bad
UTF-8) with INTERNAL, which DESIGN.md §2 keeps for our bugs. This interceptor hands the handler raw bytes and
parses them itself, for every service on the server. Every handler on the server is a coroutine or an async
generator function.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class StrictDecodingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _parsing_handler(handler, handler.request_deserializer)


def _parsing_handler(handler: grpc.RpcMethodHandler, parse: Callable[[bytes], Any]) -> grpc.RpcMethodHandler:
    async def parse_or_abort(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {error}")

    async def parsed_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for data in requests:
            yield await parse_or_abort(data, context)

    async def parsed_request(request: Any, context: grpc.aio.ServicerContext, streaming: bool) -> Any:
        return parsed_stream(request, context) if streaming else await parse_or_abort(request, context)

    def wrap(behavior: Callable, streaming_request: bool) -> Callable:
        # grpc.aio tells a handler's kind by its function type, so the wrapper keeps it: an async generator
        # function stays one, a coroutine function stays one.
        if inspect.isasyncgenfunction(behavior):
            @functools.wraps(behavior)
            async def parsed_generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for response in behavior(await parsed_request(request, context, streaming_request), context):
                    yield response
            return parsed_generator

        @functools.wraps(behavior)
        async def parsed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await behavior(await parsed_request(request, context, streaming_request), context)
        return parsed

    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    key = (handler.request_streaming, handler.response_streaming)
    behavior = {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
                (True, False): handler.stream_unary, (True, True): handler.stream_stream}[key]
    return make[key](wrap(behavior, handler.request_streaming), request_deserializer=None,
                     response_serializer=handler.response_serializer)
