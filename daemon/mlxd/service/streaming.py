"""Stream one generation: submit it to the engine, then write its events as messages as the client takes them.

`context.write` returns once the message fits the stream's flow-control window, so a client that stops reading
stops this coroutine, not a thread; the events it leaves untaken wait in the request's StreamSink, whose backlog
holds the worker back. A write that waits on its client for --stalled-stream-seconds (a final message nobody takes
included) ends the call the way a client's cancel does, and with it everything the call held.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc._cython import cygrpc

from mlxd.engine.request import FinalEvent, GenerationRequest, TokenEvent
from mlxd.errors import Cancelled
from mlxd.loading.tokenizer import TokenText
from mlxd.service import convert
from mlxd.service.engine import Engine
from mlxd.service.reply import ReplyStream
from mlxd.service.request_log import RequestEntry
from mlxd.service.stream_sink import StreamSink
from mlxd_proto.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)


# grpc's core refused a write's batch of operations. Messages are sized below the send limit before they are
# written (sizes.check_response), so the one cause left is a call its client has ended; the context need not say
# so yet (a CI soak saw cancelled() and done() both False, and the abort that followed failed the same way).
_WRITE_BATCH_FAILED = cygrpc.ExecuteBatchError


class ClientGoneAtTheEnd(logging.Filter):
    """For grpc's own logger: a call whose client left just as its handler returned fails grpc's last batch (the
    status it sends after the stream), which grpc logs as an ERROR with a traceback though nothing was lost (the
    response was complete, the client gone). Such a record becomes one INFO line; anything else passes as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], _WRITE_BATCH_FAILED):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args, record.exc_info, record.exc_text = \
                "a call's client left before grpc sent its end", None, None, None
        return True


class ClientGone(Cancelled):
    """A write met a call its client had already ended: the client cancelled or went away while the message was on
    its way (grpc raises its internal ExecuteBatchError then, not the task cancellation it raises before a write).
    Nothing is left to tell that client; the request is cancelled like any other whose client left."""


class StreamWriter:
    """Writes a call's messages, and ends the call (cancels its task) when one write waits longer than
    `stalled_seconds` for the client, or when `abandon` is called (the request was cancelled because its client
    stopped reading). Costs one timer per call, re-armed every quarter of `stalled_seconds`."""

    def __init__(self, context: grpc.aio.ServicerContext, stalled_seconds: float, request_id: str = "") -> None:
        self._context = context
        self._stalled = stalled_seconds
        self.request_id = request_id
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._since: float | None = None
        self._timer = self._loop.call_later(stalled_seconds / 4, self._check)

    async def write(self, message: pb.GenerateResponse) -> None:
        self._since = self._loop.time()
        try:
            await self._context.write(message)
        except Exception as error:
            if isinstance(error, _WRITE_BATCH_FAILED) or self._context.cancelled() or self._context.done():
                raise ClientGone("the client ended the call during a write") from None
            raise
        self._since = None

    def abandon(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        if self._since is not None and self._loop.time() - self._since >= self._stalled:
            log.warning("request %r: a message waited %.0f s for its client; the call is ended", self.request_id,
                        self._stalled)
            self.abandon()
        else:
            self._timer = self._loop.call_later(self._stalled / 4, self._check)


async def stream(gen: GenerationRequest, sink: StreamSink, engine: Engine, writer: StreamWriter,
                 entry: RequestEntry, token_text: TokenText, reply: ReplyStream | None = None) -> pb.GenerateResponse:
    """Write the chunks of gen (split by reply when the chat asked for parse_reply); return its final message for
    the caller to write once it has let go of the request (a final message its client never takes then holds
    nothing else)."""
    engine.submit(gen)
    entry.started(gen)
    request_id = gen.request_id
    del gen   # the worker holds it while it runs
    while True:
        tokens: list[TokenEvent] = []
        for event in await sink.take(engine.is_alive):
            if isinstance(event, TokenEvent):
                tokens.append(event)
                continue
            await _write_chunk(tokens, writer, entry, token_text, reply)
            if isinstance(event, FinalEvent):
                entry.finished(event)
                if reply is None:
                    return convert.final_message(event, request_id, token_text)
                stop_text = token_text(event.stop_token_id) or "" if event.stop_token_id >= 0 else ""
                rest = reply.finish(event, stop_text)
                if rest.text or rest.reasoning or rest.tool_calls:
                    await writer.write(convert.chunk_message(TokenEvent("", []), token_text, rest))
                return convert.final_message(event, request_id, token_text, reply.ended_in_calls(event))
            raise event.error
        await _write_chunk(tokens, writer, entry, token_text, reply)


async def _write_chunk(tokens: list[TokenEvent], writer: StreamWriter, entry: RequestEntry,
                       token_text: TokenText, reply: ReplyStream | None) -> None:
    """Token events that queued up while the client was slow go out as one larger message."""
    if not tokens:
        return
    merged = tokens[0] if len(tokens) == 1 else TokenEvent(
        "".join(t.text for t in tokens), [i for t in tokens for i in t.token_ids],
        [lp for t in tokens for lp in t.logprobs])
    entry.add_output(merged.text)
    parsed = reply.feed(merged) if reply is not None else None
    await writer.write(convert.chunk_message(merged, token_text, parsed))
