"""A small typed client over the generated stubs: streaming generation, cancel, health, model info."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypedDict

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlxd_client.channel import TlsOptions, open_channel
from mlxd_client.chat import content_parts
from mlxd_proto.v1 import inference_pb2 as pb
from mlxd_proto.v1 import inference_pb2_grpc as pb_grpc

INFERENCE_SERVICE = "mlxd.v1.Inference"


class MlxdClientError(Exception):
    """A failed RPC, with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class Completion:
    """A whole generation: the concatenated text and the final message."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    final: pb.Final | None = None
    reasoning: str = ""                                   # with ChatMessages.parse_reply
    tool_calls: list[pb.ToolCall] = field(default_factory=list)


def options(**kwargs: Any) -> pb.GenerationOptions:
    """GenerationOptions from keyword arguments (None values are left unset); the message checks their types."""
    return pb.GenerationOptions(**{k: v for k, v in kwargs.items() if v is not None})


Part: TypeAlias = str | bytes | Sequence[int]


class MultimodalChatMessage(TypedDict):
    """One message of `multimodal_generate(messages=...)`: content is text, an image or a sequence of parts."""

    role: str
    content: str | bytes | Sequence[Part]


def collect(responses: Iterable[pb.GenerateResponse]) -> Completion:
    """Read a response stream to its end: the whole text, every token id and the final message."""
    result = Completion(text="")
    texts, reasoning = [], []
    for response in responses:
        if response.HasField("chunk"):
            texts.append(response.chunk.text)
            reasoning.append(response.chunk.reasoning)
            result.token_ids.extend(response.chunk.token_ids)
            result.tool_calls.extend(response.chunk.tool_calls)
        else:
            result.final = response.final
    result.text, result.reasoning = "".join(texts), "".join(reasoning)
    return result


def _stream(start: Callable[[], grpc.Call]) -> Iterator[pb.GenerateResponse]:
    """The responses of a streaming call, started when iteration starts (as a generator would)."""
    call = start()
    try:
        yield from call
    except grpc.RpcError as error:
        raise _raise(error) from None
    finally:
        call.cancel()  # a consumer that stops early cancels the generation on the daemon


def _raise(error: grpc.RpcError) -> MlxdClientError:
    return MlxdClientError(error.code(), error.details() or "")


class Client:
    """`Client("127.0.0.1:50051")` or `Client("unix:/path/to.sock")`; use as a context manager.
    `token` is sent as `authorization: Bearer <token>`; `tls` (TlsOptions) makes the channel TLS or mutual TLS."""

    def __init__(self, addr: str, *, max_message_bytes: int = 64 << 20, token: str | None = None,
                 tls: TlsOptions | None = None) -> None:
        self.addr = addr
        self._channel = open_channel(addr, token=token, tls=tls,
                                     options=[("grpc.max_receive_message_length", max_message_bytes),
                                              ("grpc.max_send_message_length", max_message_bytes)])
        self.stub = pb_grpc.InferenceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- generation ---------------------------------------------------------------------------------------------

    def generate(self, prompt: str | None = None, *, tokens: Sequence[int] | None = None,
                 messages: Sequence[Mapping[str, str]] | None = None, chat: pb.ChatMessages | None = None,
                 request_id: str = "", expected_model: str = "", timeout: float | None = None,
                 **option_values: Any) -> Iterator[pb.GenerateResponse]:
        """Stream responses: chunks (`.chunk`), then one `.final`. Exactly one of prompt, tokens, messages (role and
        content each) or chat (tools, tool calls, template arguments: see mlxd_client.chat.chat_messages)."""
        request = pb.GenerateRequest(request_id=request_id or uuid.uuid4().hex, expected_model=expected_model,
                                     options=options(**option_values))
        if prompt is not None:
            request.prompt = prompt
        elif tokens is not None:
            request.tokens.ids.extend(tokens)
        elif messages is not None:
            request.chat.messages.extend(pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages)
        elif chat is not None:
            request.chat.CopyFrom(chat)
        return _stream(lambda: self.stub.Generate(request, timeout=timeout))

    def multimodal_generate(self, parts: Sequence[Part] | None = None, *,
                            messages: Sequence[MultimodalChatMessage] | None = None,
                            chat: pb.MultimodalChat | None = None, request_id: str = "", expected_model: str = "",
                            timeout: float | None = None, **option_values: Any) -> Iterator[pb.GenerateResponse]:
        """Like generate, with images. `parts`: str (text), bytes (an encoded image: PNG, JPEG, ...) or a list of
        token ids, in prompt order; or `messages`: {"role": ..., "content": str or a sequence of such parts}; or
        `chat` (tools, tool calls, template arguments: see mlxd_client.chat.multimodal_chat)."""
        request = pb.MultimodalGenerateRequest(request_id=request_id or uuid.uuid4().hex,
                                               expected_model=expected_model, options=options(**option_values))
        if parts is not None:
            request.prompt.parts.extend(content_parts(parts))
        elif messages is not None:
            request.chat.messages.extend(pb.MultimodalMessage(role=m["role"], content=content_parts(m["content"]))
                                         for m in messages)
        elif chat is not None:
            request.chat.CopyFrom(chat)
        return _stream(lambda: self.stub.MultimodalGenerate(request, timeout=timeout))

    def complete(self, prompt: str | None = None, **kwargs: Any) -> Completion:
        """Run a generation to its end and return the whole text and the final message (`kwargs`: generate's)."""
        return collect(self.generate(prompt, **kwargs))

    def cancel(self, request_id: str) -> bool:
        return self._unary(self.stub.Cancel, pb.CancelRequest(request_id=request_id)).found

    # -- the rest -------------------------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special_tokens: bool = True, parse_special: bool = True) -> list[int]:
        request = pb.TokenizeRequest(text=text, add_special_tokens=add_special_tokens, parse_special=parse_special)
        return list(self._unary(self.stub.Tokenize, request).ids)

    def detokenize(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        request = pb.DetokenizeRequest(ids=list(ids), skip_special_tokens=skip_special_tokens)
        return self._unary(self.stub.Detokenize, request).text

    def model_info(self) -> pb.ModelInfo:
        return self._unary(self.stub.GetModelInfo, pb.GetModelInfoRequest())

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """"SERVING", "NOT_SERVING", ... for the service ("" = the whole daemon)."""
        try:
            response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            raise _raise(error) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_serving(self, timeout: float = 60.0, service: str = "") -> None:
        """Follow health Watch until SERVING (raises MlxdClientError on timeout)."""
        try:
            for response in self._health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout):
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as error:
            raise _raise(error) from None
        raise MlxdClientError(grpc.StatusCode.UNAVAILABLE, "health watch ended before SERVING")

    def _unary(self, method, request):
        try:
            return method(request)
        except grpc.RpcError as error:
            raise _raise(error) from None
