"""mlxd.v1.Inference: a thin servicer. Validate, convert, hand to the worker, stream its events back."""

from __future__ import annotations

import collections
import functools
import queue
from typing import Any, Iterator

import grpc

from mlxd.engine.request import ErrorEvent, FinalEvent, GenerationRequest, TokenEvent
from mlxd.engine.worker import Worker, WorkerState
from mlxd.errors import InternalError, InvalidRequest, MlxdError, Unavailable, Unsupported
from mlxd.service import convert, multimodal
from mlxd.service.limits import Limits
from mlxd.service.model_info import ServedModel, with_memory
from mlxd.service.request_log import RequestEntry, RequestLog
from mlxd.service.status import abort
from mlxd_proto.v1 import inference_pb2 as pb
from mlxd_proto.v1 import inference_pb2_grpc as pb_grpc


# The handlers never call context.abort themselves: every error they raise ends here. Any other exception is
# a bug: INTERNAL, logged with its traceback by abort (gRPC would answer UNKNOWN and log the bare message).

def _rpc(method):
    """Turn errors raised by a handler into their status codes."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as error:
            abort(context, error)
    return wrapper


def _generation_rpc(method):
    """A generation: errors to status codes, and its --log-requests entry."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        entry = self._request_log.entry(method.__name__, request)
        try:
            yield from method(self, request, context, entry)
        except Exception as error:
            entry.failed(error)
            abort(context, error)
    return wrapper


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, worker: Worker, limits: Limits, request_log: RequestLog = RequestLog()) -> None:
        self._worker = worker
        self._limits = limits
        self._request_log = request_log
        self._model: ServedModel | None = None

    def set_model(self, model: ServedModel) -> None:
        self._model = model

    def model_info(self) -> pb.ModelInfo:
        return self._served().info

    def _served(self) -> ServedModel:
        if self._model is None:
            raise Unavailable("the model is still loading")
        if self._worker.state is not WorkerState.SERVING:
            raise Unavailable(f"the daemon is {self._worker.state.value}")
        return self._model

    # -- generation -----------------------------------------------------------------------------------------------

    @_generation_rpc
    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext,
                 entry: RequestEntry) -> Iterator[pb.GenerateResponse]:
        model = self._served()
        self._check_expected_model(model, request.expected_model)
        prompt_ids = self._prompt_ids(model, request)
        gen = convert.generation_request(
            request.request_id, prompt_ids, request.options, defaults=model.sampling_defaults,
            vocab_size=model.info.vocab_size, context_length=model.info.context_length, limits=self._limits,
            time_remaining=context.time_remaining())
        yield from self._stream(gen, context, model, entry)

    @_generation_rpc
    def MultimodalGenerate(self, request: pb.MultimodalGenerateRequest, context: grpc.ServicerContext,
                           entry: RequestEntry) -> Iterator[pb.GenerateResponse]:
        model = self._served()
        self._check_expected_model(model, request.expected_model)
        if model.vision is None:
            raise Unsupported(f"model {model.info.model_id!r} ({model.info.architecture}) is text-only; "
                              "it cannot take images")
        # Tokenizing, decoding and preprocessing the images happen here, on the gRPC thread.
        prompt_ids, images = multimodal.build_prompt(request, model.tokenizer, model.vision, self._limits,
                                                     vocab_size=model.info.vocab_size,
                                                     context_length=model.info.context_length)
        gen = convert.generation_request(
            request.request_id, prompt_ids, request.options, defaults=model.sampling_defaults,
            vocab_size=model.info.vocab_size, context_length=model.info.context_length, limits=self._limits,
            time_remaining=context.time_remaining(), images=images)
        yield from self._stream(gen, context, model, entry)

    def _prompt_ids(self, model: ServedModel, request: pb.GenerateRequest) -> list[int]:
        tokenizer = model.tokenizer
        kind = request.WhichOneof("input")
        if kind == "prompt":
            return tokenizer.encode(request.prompt, add_special_tokens=True, parse_special=True)
        if kind == "tokens":
            ids = list(request.tokens.ids)
            convert.check_token_ids(ids, model.info.vocab_size, "tokens.ids")
            return ids
        if kind == "chat":
            return self._chat_ids(tokenizer, request.chat)
        raise InvalidRequest("the request needs an input: prompt, tokens or chat")

    @staticmethod
    def _chat_ids(tokenizer: Any, chat: pb.ChatMessages) -> list[int]:
        if not chat.messages:
            raise InvalidRequest("chat.messages is empty")
        messages = [{"role": m.role, "content": m.content} for m in chat.messages]
        add_prompt = chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_prompt)
        # The rendered template carries BOS itself.
        return tokenizer.encode(text, add_special_tokens=False, parse_special=True)

    def _check_expected_model(self, model: ServedModel, expected: str) -> None:
        info = model.info
        if expected and expected not in (info.model_id, info.path, info.digest):
            raise Unsupported(f"expected model {expected!r}, but this daemon serves {info.model_id!r} "
                              f"({info.digest})")

    def _stream(self, gen: GenerationRequest, context: grpc.ServicerContext, model: ServedModel,
                entry: RequestEntry) -> Iterator[pb.GenerateResponse]:
        token_text = model.tokenizer.id_to_token
        context.add_callback(lambda: gen.cancel.cancel("client went away"))
        self._worker.submit(gen)
        entry.started(gen)
        buffered: collections.deque[Any] = collections.deque()
        while True:
            if not buffered:
                buffered.append(self._next_event(gen))
            _drain_into(gen.events, buffered)
            event = buffered.popleft()
            if isinstance(event, TokenEvent):
                # Token events that queued up while the client was slow go out as one larger message.
                while buffered and isinstance(buffered[0], TokenEvent):
                    more = buffered.popleft()
                    event = TokenEvent(event.text + more.text, event.token_ids + more.token_ids,
                                       event.logprobs + more.logprobs)
                entry.add_output(event.text)
                yield convert.chunk_message(event, token_text)
            elif isinstance(event, FinalEvent):
                entry.finished(event)
                yield convert.final_message(event, gen.request_id, token_text)
                return
            else:
                raise event.error

    def _next_event(self, gen: GenerationRequest) -> Any:
        while True:
            try:
                return gen.events.get(timeout=1.0)
            except queue.Empty:
                if not self._worker.is_alive():
                    return ErrorEvent(InternalError("the MLX worker thread is gone"))

    # -- unary ------------------------------------------------------------------------------------------------------

    @_rpc
    def Tokenize(self, request: pb.TokenizeRequest, context: grpc.ServicerContext) -> pb.TokenizeResponse:
        tokenizer = self._served().tokenizer
        if request.HasField("chat"):
            ids = self._chat_ids(tokenizer, request.chat)
        else:
            ids = tokenizer.encode(request.text, add_special_tokens=request.add_special_tokens,
                                   parse_special=request.parse_special)
        return pb.TokenizeResponse(ids=ids, tokens=[tokenizer.id_to_token(i) or "" for i in ids])

    @_rpc
    def Detokenize(self, request: pb.DetokenizeRequest, context: grpc.ServicerContext) -> pb.DetokenizeResponse:
        model = self._served()
        ids = list(request.ids)
        convert.check_token_ids(ids, model.info.vocab_size, "ids")
        return pb.DetokenizeResponse(text=model.tokenizer.decode(ids, skip_special_tokens=request.skip_special_tokens))

    @_rpc
    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        return with_memory(self._served().info, self._worker.memory)

    @_rpc
    def Cancel(self, request: pb.CancelRequest, context: grpc.ServicerContext) -> pb.CancelResponse:
        if not request.request_id:
            raise InvalidRequest("request_id is required")
        return pb.CancelResponse(found=self._worker.cancel(request.request_id))


def _drain_into(events: "queue.SimpleQueue[Any]", buffered: "collections.deque[Any]") -> None:
    while True:
        try:
            buffered.append(events.get_nowait())
        except queue.Empty:
            return
