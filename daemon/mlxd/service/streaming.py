"""Stream one generation: submit it to the engine, then write its events as messages as the client takes them.

`context.write` returns once the message fits the stream's flow-control window, so a client that stops reading
stops this coroutine, not a thread; the events it leaves untaken wait in the request's StreamSink, whose backlog
holds the worker back. A write that waits on its client for --stalled-stream-seconds (a final message nobody takes
included), or a backlog past the sink's bound, abandons the call: the request is cancelled and lets go of everything
it held, and the client that reads again is told why (RESOURCE_EXHAUSTED) once the message it left waiting is taken.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc._cython import cygrpc

from mlxd.engine.request import FinalEvent, GenerationRequest, TokenEvent
from mlxd.errors import Cancelled, ResourceExhausted
from mlxd.loading.tokenizer import TokenText
from mlxd.service import convert
from mlxd.service.engine import Engine
from mlxd.service.loop import resolve
from mlxd.service.reply import ReplyStream
from mlxd.service.request_log import RequestEntry
from mlxd.service.status import abort
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


class Abandoned(ResourceExhausted):
    """The service ended a call whose client stopped reading: a message waited too long for it, or it left too many
    events unread. The request is cancelled at once; the status goes out once grpc has finished the write the client
    left waiting (StreamWriter.tell_abandoned)."""


class StreamWriter:
    """Writes a call's messages, and abandons the call when one write waits longer than `stalled_seconds` for the
    client, or when `abandon` is called (the request's sink passed its bound). Costs one timer per call, re-armed
    every quarter of `stalled_seconds`.

    Each write runs as a task of its own, awaited through a future the writer can also resolve: so an abandoned
    call stops waiting without cancelling grpc's write. Cancelling it would leave grpc's send pending in its core,
    where it refuses the status batch (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS), and the client that read again would
    wait for its deadline, or forever. The task costs ~9 us a message (a direct await ~4 us) on the 2-core CPU."""

    def __init__(self, context: grpc.aio.ServicerContext, stalled_seconds: float, request_id: str = "") -> None:
        self._context = context
        self._stalled = stalled_seconds
        self.request_id = request_id
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._abandoned: Abandoned | None = None
        self._waiter: asyncio.Future[None] | None = None   # what write() awaits: its task done, or the call abandoned
        self._pending: asyncio.Task[None] | None = None    # the write under way (left to finish when abandoned)
        self._since: float | None = None
        self._timer = self._loop.call_later(stalled_seconds / 4, self._check)

    async def write(self, message: pb.GenerateResponse) -> None:
        if self._abandoned is not None:
            raise self._abandoned
        self._since = self._loop.time()
        self._pending = task = self._loop.create_task(self._context.write(message))
        self._waiter = waiter = self._loop.create_future()
        task.add_done_callback(lambda _: resolve(waiter))
        try:
            await waiter
        except asyncio.CancelledError:   # grpc cancelled the handler: its client left
            task.cancel()
            raise
        self._since = self._waiter = None
        if self._abandoned is not None and not task.done():
            raise self._abandoned   # the write stays pending, for tell_abandoned
        self._pending = None
        try:
            task.result()
        except Exception as error:
            if isinstance(error, _WRITE_BATCH_FAILED) or self._context.cancelled() or self._context.done():
                raise ClientGone("the client ended the call during a write") from None
            raise

    def abandon(self, reason: str = "the client stopped reading: it left more events unread than a stream holds") \
            -> None:
        """End the call for a client that stopped reading: the write waiting on it (if any) raises Abandoned at
        once, and any later one too."""
        if self._abandoned is None:
            self._abandoned = Abandoned(f"{reason}; the request was cancelled")
        if self._waiter is not None:
            resolve(self._waiter)

    async def tell_abandoned(self) -> None:
        """The abandoned call's status, once the write its client left waiting has gone out (the client read again);
        nothing if the client leaves (or its deadline passes) first."""
        assert self._abandoned is not None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            try:
                await pending
            except asyncio.CancelledError:   # grpc cancelled the handler (the client left) while we waited
                pending.cancel()
                raise
            except Exception:
                return   # the call ended under the write: nobody is left to tell
        await abort(self._context, self._abandoned)

    def give_up(self) -> None:
        """Shutdown: stop waiting to tell an abandoned call's client. Its handler ends cancelled, as a call whose
        client left does: grpc sends no status then, and has no pending write of ours to log at its stop."""
        if self._abandoned is not None and self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        if self._since is not None and self._loop.time() - self._since >= self._stalled:
            log.warning("request %r: a message waited %g s for its client; the call is ended", self.request_id,
                        self._stalled)
            self.abandon(f"a message waited {self._stalled:g} s for the client to read it")
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
