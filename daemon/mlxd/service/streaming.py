"""Stream one generation: submit it to the engine, then write its events as messages as the client takes them.

`context.write` returns once the message is on its way within the stream's flow-control window, so a client that
stops reading stops this coroutine, not a thread; the events it leaves untaken wait in the request's StreamSink,
whose backlog holds the worker back.
"""

from __future__ import annotations

from typing import Any

import grpc

from mlxd.engine.request import FinalEvent, GenerationRequest, TokenEvent
from mlxd.service import convert
from mlxd.service.engine import Engine
from mlxd.service.request_log import RequestEntry
from mlxd.service.stream_sink import StreamSink
from mlxd_proto.v1 import inference_pb2 as pb


async def stream(gen: GenerationRequest, sink: StreamSink, engine: Engine, context: grpc.aio.ServicerContext,
                 entry: RequestEntry, token_text: Any) -> pb.GenerateResponse:
    """Write the chunks of gen; return its final message for the caller to write once it has let go of the
    request (a final message its client never takes then holds nothing else)."""
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
            await _write_chunk(tokens, context, entry, token_text)
            if isinstance(event, FinalEvent):
                entry.finished(event)
                return convert.final_message(event, request_id, token_text)
            raise event.error
        await _write_chunk(tokens, context, entry, token_text)


async def _write_chunk(tokens: list[TokenEvent], context: grpc.aio.ServicerContext, entry: RequestEntry,
                       token_text: Any) -> None:
    """Token events that queued up while the client was slow go out as one larger message."""
    if not tokens:
        return
    merged = tokens[0] if len(tokens) == 1 else TokenEvent(
        "".join(t.text for t in tokens), [i for t in tokens for i in t.token_ids],
        [lp for t in tokens for lp in t.logprobs])
    entry.add_output(merged.text)
    await context.write(convert.chunk_message(merged, token_text))
