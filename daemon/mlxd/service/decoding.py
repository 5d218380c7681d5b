"""Parse requests inside the handler, so a message that is not valid protobuf gets INVALID_ARGUMENT.

gRPC Python answers a request its deserializer cannot parse (corrupt wire format, a string field with bad
UTF-8) with INTERNAL, which DESIGN.md §2 keeps for our bugs. This interceptor hands the handler raw bytes and
parses them itself, for every service on the server.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import grpc
from google.protobuf.message import DecodeError


class StrictDecodingInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _parsing_handler(handler, handler.request_deserializer)


def _parsing_handler(handler: grpc.RpcMethodHandler, parse: Callable[[bytes], Any]) -> grpc.RpcMethodHandler:
    def parse_or_abort(data: bytes, context: grpc.ServicerContext) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {error}")

    def parsed_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
        for data in requests:
            yield parse_or_abort(data, context)

    def wrap(behavior: Callable, streaming_request: bool) -> Callable:
        # wraps() also copies the health servicer's experimental_non_blocking / thread-pool attributes; a
        # non-blocking handler gets its send_response_callback as a third positional argument.
        @functools.wraps(behavior)
        def parsed(request: Any, context: grpc.ServicerContext, *callback: Any) -> Any:
            parsed_request = parsed_stream(request, context) if streaming_request else parse_or_abort(request, context)
            return behavior(parsed_request, context, *callback)
        return parsed

    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    key = (handler.request_streaming, handler.response_streaming)
    behavior = {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
                (True, False): handler.stream_unary, (True, True): handler.stream_stream}[key]
    return make[key](wrap(behavior, handler.request_streaming), request_deserializer=None,
                     response_serializer=handler.response_serializer)
