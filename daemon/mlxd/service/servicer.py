"""mlxd.v1.Inference: a thin servicer on the grpc.aio event loop. Check sizes, prepare the request on a
preparation thread, hand it to the engine, stream its events back.

Nothing here blocks the loop: a stream waiting on its client is a suspended coroutine, and every pass over
client data (tokenizing, templates, stop strings, images) runs in `Preparation`, a bounded number at a time.
A request's CancelToken exists, and is registered (InFlight), before any of its work starts; whatever way the
call ends, the token is set, so nothing keeps working for a client that is gone.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from mlxd.engine.request import CancelToken, FinalEvent, FinishReason, GenerationRequest, PromptImage
from mlxd.engine.worker import WorkerState
from mlxd.errors import Cancelled, InvalidRequest, Unavailable, Unsupported
from mlxd.service import convert, multimodal, prompts
from mlxd.service.chat import RenderedChat, render_chat
from mlxd.service.engine import Engine
from mlxd.service.inflight import InFlight
from mlxd.service.limits import Limits
from mlxd.service.model_info import ServedModel, with_memory
from mlxd.service.preparation import Preparation, check
from mlxd.service.reply import ReplyStream, plan_reply
from mlxd.service.request_log import RequestLog, quoted
from mlxd.service.sizes import PromptBounds, check_response, check_token_ids
from mlxd.service.status import abort
from mlxd.service.stream_sink import StreamSink
from mlxd.service.streaming import Abandoned, ClientGone, StreamWriter, stream
from mlxd_proto.v1 import inference_pb2 as pb
from mlxd_proto.v1 import inference_pb2_grpc as pb_grpc

T = TypeVar("T")
# A generation call's request, and a unary call's.
GenerateCall = TypeVar("GenerateCall", pb.GenerateRequest, pb.MultimodalGenerateRequest)
UnaryCall = TypeVar("UnaryCall")
EXPECTED_MODEL_QUOTE_CHARS = 200   # of expected_model quoted in an error (the whole value could exceed the
                                   # client's metadata limit and turn the answer into RESOURCE_EXHAUSTED)



@dataclass
class Job:
    """What a preparation thread needs besides the request message to build its GenerationRequest."""

    model: ServedModel
    bounds: PromptBounds
    limits: Limits
    request_id: str
    cancel: CancelToken
    sink: StreamSink
    deadline: float | None
    reply: ReplyStream | None = None   # set by the preparation of a chat with parse_reply

    def request(self, options: pb.GenerationOptions, prompt_ids: list[int], images: tuple[PromptImage, ...] = (),
                constraint: pb.Constraint | None = None) -> GenerationRequest:
        """constraint: one the daemon chose (a required tool call's grammar) in place of options.constraint."""
        check(self.cancel)
        info = self.model.info
        gen = convert.generation_request(self.request_id, prompt_ids, options, defaults=self.model.sampling_defaults,
                                         vocab_size=info.vocab_size, bounds=self.bounds, limits=self.limits,
                                         deadline=self.deadline, cancel=self.cancel, events=self.sink, images=images)
        if constraint is None and options.HasField("constraint"):
            constraint = options.constraint
        if constraint is not None:  # compiled once the cheaper checks above have passed
            gen.constraint = self.model.grammars.constraint(constraint)
            check(self.cancel)  # a compile may have taken a while
        if self.reply is not None:
            gen.skip_special_tokens = False   # the reply's parser reads the markers; it keeps them out of text
        return gen

    def chat_request(self, options: pb.GenerationOptions, chat: pb.ChatMessages | pb.MultimodalChat,
                     rendered: RenderedChat, images: tuple[PromptImage, ...] = ()) -> GenerationRequest:
        """A chat's request, with its reply plan: parse_reply's parser, a required tool call's grammar."""
        model = self.model
        plan = plan_reply(chat, rendered, model.reply_formats, model.tokenizer.added_tokens, options)
        self.reply = ReplyStream(plan.parser) if plan.parser is not None else None
        return self.request(options, rendered.ids, images, constraint=plan.constraint)


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, engine: Engine, limits: Limits, preparation: Preparation, *,
                 request_log: RequestLog = RequestLog(), stream_limit: int = 1024,  # noqa: B008 (frozen)
                 stalled_seconds: float = 60.0) -> None:
        self._engine = engine
        self._limits = limits
        self._preparation = preparation
        self._request_log = request_log
        self._stream_limit = stream_limit      # events a stream may leave untaken before it is cancelled
        self._stalled_seconds = stalled_seconds   # a write waiting this long on its client ends the call
        self._inflight = InFlight()
        self._telling: set[StreamWriter] = set()   # abandoned calls waiting for their client to read again
        self._model: ServedModel | None = None
        self._bounds: PromptBounds | None = None

    def set_model(self, model: ServedModel) -> None:
        self._bounds = PromptBounds.of(self._limits, model.info.context_length, model.max_token_bytes)
        self._model = model

    def model_info(self) -> pb.ModelInfo:
        return self._served()[0].info

    def cancel_all(self, reason: str) -> None:
        """Shutdown: cancel every generation, those still being prepared included, and stop waiting on the
        clients of abandoned calls."""
        self._inflight.cancel_all(reason)
        for writer in list(self._telling):
            writer.give_up()

    def _served(self) -> tuple[ServedModel, PromptBounds]:
        if self._model is None or self._bounds is None:
            raise Unavailable("the model is still loading")
        if self._engine.state is not WorkerState.SERVING:
            raise Unavailable(f"the daemon is {self._engine.state.value}")
        return self._model, self._bounds

    # -- generation -----------------------------------------------------------------------------------------------

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        await self._generate("Generate", request, context, self._check_text, _prepare_text)

    async def MultimodalGenerate(self, request: pb.MultimodalGenerateRequest,
                                 context: grpc.aio.ServicerContext) -> None:
        await self._generate("MultimodalGenerate", request, context, self._check_multimodal, _prepare_multimodal)

    async def _generate(self, method: str, request: GenerateCall, context: grpc.aio.ServicerContext,
                        check: Callable[[GenerateCall, ServedModel, PromptBounds], None],
                        prepare: Callable[[GenerateCall, Job], GenerationRequest]) -> None:
        writer = StreamWriter(context, self._stalled_seconds)
        try:
            final = await self._generation(method, request, context, writer, check, prepare)
            await writer.write(final)
        except ClientGone:
            pass  # its request is cancelled already (_generation's finally); nobody is left to answer
        except Abandoned:
            self._telling.add(writer)
            try:
                await writer.tell_abandoned()   # the request is cancelled already; the status waits for its client
            finally:
                self._telling.discard(writer)
        finally:
            writer.close()

    def _check_text(self, request: pb.GenerateRequest, model: ServedModel, bounds: PromptBounds) -> None:
        prompts.check_generate(request, bounds, model.info.vocab_size, self._limits)

    def _check_multimodal(self, request: pb.MultimodalGenerateRequest, model: ServedModel,
                          bounds: PromptBounds) -> None:
        if model.vision is None:
            raise Unsupported(f"model {model.info.model_id!r} ({model.info.architecture}) is text-only; "
                              "it cannot take images")
        multimodal.check_request(request, bounds, model.info.vocab_size, self._limits)

    async def _generation(self, method: str, request: GenerateCall, context: grpc.aio.ServicerContext,
                          writer: StreamWriter, check: Callable[[GenerateCall, ServedModel, PromptBounds], None],
                          prepare: Callable[[GenerateCall, Job], GenerationRequest]) -> pb.GenerateResponse:
        """Prepare, submit and stream one generation; its final message, for the caller to write once this frame
        (and with it the request) is gone."""
        entry = self._request_log.entry(method, request)
        cancel = CancelToken()
        request_id = writer.request_id = request.request_id or uuid.uuid4().hex
        try:
            model, bounds = self._served()
            if len(request.request_id) > self._limits.max_request_id_length:
                raise InvalidRequest(f"request_id is longer than {self._limits.max_request_id_length} characters")
            self._check_expected_model(model, request.expected_model)
            check(request, model, bounds)
            self._inflight.add(request_id, cancel)
            try:
                sink = StreamSink(asyncio.get_running_loop(), self._stream_limit, cancel, request_id, writer.abandon)
                job = Job(model, bounds, self._limits, request_id, cancel, sink,
                          convert.deadline_of(context.time_remaining()))
                gen = await self._preparation.run(functools.partial(prepare, request, job), cancel)
                final = await stream(gen, sink, self._engine, writer, entry, model.tokenizer.id_to_token, job.reply)
                check_response(final, self._limits.max_message_bytes)   # prompt logprobs can make it large
                return final
            finally:
                self._inflight.remove(request_id, cancel)
        except ClientGone:
            raise  # no answer to give; the finally below cancels the request
        except Abandoned as error:
            entry.failed(error)
            raise  # its status waits for the write its client left (the caller's); the finally cancels the request
        except Cancelled:
            # Cancelled (Cancel RPC, shutdown) before it reached the worker: it ends as a queued one would.
            return convert.final_message(FinalEvent(FinishReason.CANCELLED, 0, 0), request_id, lambda token_id: "")
        except Exception as error:
            entry.failed(error)
            await abort(context, error)
        finally:
            cancel.cancel("the call ended")

    def _check_expected_model(self, model: ServedModel, expected: str) -> None:
        info = model.info
        if expected and expected not in (info.model_id, info.path, info.digest):
            raise Unsupported(f"expected model {quoted(expected, EXPECTED_MODEL_QUOTE_CHARS)}, but this daemon "
                              f"serves {info.model_id!r} ({info.digest})")

    # -- unary ------------------------------------------------------------------------------------------------------

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        return await self._prepared(context, prompts.check_tokenize, _tokenize, request)

    async def Detokenize(self, request: pb.DetokenizeRequest,
                         context: grpc.aio.ServicerContext) -> pb.DetokenizeResponse:
        return await self._prepared(context, prompts.check_detokenize, _detokenize, request)

    async def _prepared(self, context: grpc.aio.ServicerContext, check: Callable[[UnaryCall, PromptBounds], None],
                        job: Callable[[UnaryCall, ServedModel], T], request: UnaryCall) -> T:
        """A unary call whose work runs on a preparation thread."""
        cancel = CancelToken()
        try:
            model, bounds = self._served()
            check(request, bounds)
            response = await self._preparation.run(functools.partial(job, request, model), cancel)
            check_response(response, self._limits.max_message_bytes)
            return response
        except Exception as error:
            await abort(context, error)
        finally:
            cancel.cancel("the call ended")

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        return await _answer(context, lambda: with_memory(self._served()[0].info, self._engine.memory))

    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext) -> pb.CancelResponse:
        def cancel() -> pb.CancelResponse:
            if not request.request_id:
                raise InvalidRequest("request_id is required")
            found = self._inflight.cancel(request.request_id, "cancel rpc")
            return pb.CancelResponse(found=self._engine.cancel(request.request_id) or found)
        return await _answer(context, cancel)


async def _answer(context: grpc.aio.ServicerContext, answer: Callable[[], T]) -> T:
    try:
        return answer()
    except Exception as error:
        await abort(context, error)


# -- preparation jobs (on a preparation thread) ---------------------------------------------------------------------

def _prepare_text(request: pb.GenerateRequest, job: Job) -> GenerationRequest:
    model = job.model
    if request.WhichOneof("input") != "chat":
        return job.request(request.options, prompts.generate_ids(request, model.tokenizer, model.info.vocab_size))
    return job.chat_request(request.options, request.chat, render_chat(model.tokenizer, request.chat))


def _prepare_multimodal(request: pb.MultimodalGenerateRequest, job: Job) -> GenerationRequest:
    model = job.model
    assert model.vision is not None   # checked on the loop
    prompt = multimodal.build_prompt(request, model.tokenizer, model.vision, job.limits, job.bounds,
                                     vocab_size=model.info.vocab_size, cancel=job.cancel)
    if prompt.chat is None:
        return job.request(request.options, prompt.ids, prompt.images)
    return job.chat_request(request.options, request.chat, prompt.chat, prompt.images)


def _tokenize(request: pb.TokenizeRequest, model: ServedModel) -> pb.TokenizeResponse:
    tokenizer = model.tokenizer
    ids = prompts.tokenize_ids(request, tokenizer)
    return pb.TokenizeResponse(ids=ids, tokens=[tokenizer.id_to_token(i) or "" for i in ids])


def _detokenize(request: pb.DetokenizeRequest, model: ServedModel) -> pb.DetokenizeResponse:
    ids = check_token_ids(request.ids, model.info.vocab_size, "ids")
    return pb.DetokenizeResponse(text=model.tokenizer.decode(ids, skip_special_tokens=request.skip_special_tokens))

