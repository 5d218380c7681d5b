"""What the log may say about requests (issue 7): prompts and outputs only with `mlxd serve --log-requests`.

With the flag, each generation gets a line when it starts (request id, prompt) and one when it ends (finish
reason, token counts, output) or fails (status, message). Client text is truncated and written as Python
literals, so a newline in a prompt cannot forge a log line. Without the flag no request text reaches the log,
and tracebacks leave out exception messages, which can quote a request.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass
from typing import Any

from mlxd.engine.request import FinalEvent, GenerationRequest
from mlxd.service.status import status_for
from mlxd_proto.v1 import inference_pb2 as pb

LOGGER_NAME = "mlxd.requests"
log = logging.getLogger(LOGGER_NAME)

WITHHELD = "(message withheld: it may quote a request; mlxd serve --log-requests logs it)"


@dataclass(frozen=True)
class RequestLog:
    """The --log-requests setting; `entry` gives each generation its log entry (a silent one when off)."""

    enabled: bool = False
    max_chars: int = 1000     # client text (prompt, output, error message) kept per field

    def entry(self, method: str, request: pb.GenerateRequest | pb.MultimodalGenerateRequest) -> RequestEntry:
        return RequestEntry(self, method, request)


class RequestEntry:
    """The log lines of one generation. Every method returns at once when request logging is off."""

    def __init__(self, settings: RequestLog, method: str, request: Any) -> None:
        self.enabled = settings.enabled
        self._max = settings.max_chars
        self._method = method
        self._request = request
        self._request_id = request.request_id
        self._started = False
        self._output: list[str] = []
        self._output_chars = 0

    def started(self, gen: GenerationRequest) -> None:
        if not self.enabled:
            return
        self._request_id, self._started = gen.request_id, True
        log.info("request %r %s: %d prompt tokens, %s", gen.request_id, self._method, len(gen.prompt_ids),
                 self._prompt())

    def add_output(self, text: str) -> None:
        # Keeps one character more than is logged, so the line can say that it was cut.
        if self.enabled and self._output_chars <= self._max:
            self._output.append(text)
        self._output_chars += len(text)

    def finished(self, event: FinalEvent) -> None:
        if not self.enabled:
            return
        log.info("request %r done: finish %s, %d prompt tokens (%d cached), %d generated; output %s",
                 self._request_id, event.finish_reason.value, event.prompt_tokens, event.cached_tokens,
                 event.completion_tokens, self._quoted_output())

    def failed(self, error: BaseException) -> None:
        if not self.enabled:
            return
        message = quoted(str(error) or type(error).__name__, self._max)
        if self._started:
            log.info("request %r failed: %s %s; output so far %s", self._request_id, status_for(error).name,
                     message, self._quoted_output())
        else:
            # Refused before it reached the worker: this line is the only one, so it carries the prompt.
            log.info("request %r %s refused: %s %s; %s", self._request_id, self._method, status_for(error).name,
                     message, self._prompt())

    def _quoted_output(self) -> str:
        return quoted("".join(self._output), self._max, total_chars=self._output_chars)

    def _prompt(self) -> str:
        return describe_prompt(self._request, self._max)


def quoted(text: str, max_chars: int, total_chars: int | None = None) -> str:
    """text as a Python literal (control characters, quotes and line breaks escaped) of about max_chars at
    most, escapes included; total_chars: the length of the whole text when `text` is only its beginning."""
    kept = text[:max_chars]
    literal = repr(kept)
    while len(literal) > max_chars + 2:   # escapes made it longer: keep proportionally fewer characters
        kept = kept[:len(kept) * max_chars // len(literal) - 1]
        literal = repr(kept)
    return literal + _more((len(text) if total_chars is None else total_chars) - len(kept), "chars")


def _more(count: int, unit: str) -> str:
    return f" (+{count} more {unit})" if count > 0 else ""


def describe_prompt(request: Any, max_chars: int) -> str:
    """The prompt of a GenerateRequest or MultimodalGenerateRequest, for one log line."""
    kind = request.WhichOneof("input")
    if kind == "tokens":
        return "tokens " + _ids(request.tokens.ids, max_chars)
    if kind == "prompt" and isinstance(request.prompt, str):
        return "prompt " + quoted(request.prompt, max_chars)
    if kind == "prompt":
        return "prompt " + quoted("".join(_part(p) for p in request.prompt.parts), max_chars)
    if kind == "chat":
        lines = [f"{m.role}: " + (m.content if isinstance(m.content, str) else "".join(_part(p) for p in m.content))
                 for m in request.chat.messages]
        return f"chat ({len(lines)} messages) " + quoted("\n".join(lines), max_chars)
    return "no input"


def _ids(ids: Any, max_chars: int) -> str:
    text = repr(list(ids))
    return text if len(text) <= max_chars else text[:max_chars] + f"... ({len(ids)} ids)"


def _part(part: pb.ContentPart) -> str:
    which = part.WhichOneof("part")
    if which == "text":
        return part.text
    if which == "image":
        return f"<image: {len(part.image.data)} bytes>"
    if which == "tokens":
        return f"<tokens: {list(part.tokens.ids)}>"
    return "<empty part>"


class LogFormatter(logging.Formatter):
    """Formats tracebacks with their frames and exception types, and their messages only when asked."""

    def __init__(self, fmt: str, exception_messages: bool) -> None:
        super().__init__(fmt)
        self._messages = exception_messages

    def formatException(self, ei: Any) -> str:
        if self._messages or ei[1] is None:
            return super().formatException(ei)
        return withheld_traceback(ei[1])


def withheld_traceback(error: BaseException) -> str:
    """Python's traceback of error and the exceptions chained to it, with every message withheld."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ if current.__cause__ is not None else \
            None if current.__suppress_context__ else current.__context__
    lines: list[str] = []
    earlier: BaseException | None = None
    for exc in reversed(chain):
        if earlier is not None:
            lines.append("\nThe above exception was the direct cause of the following exception:\n\n"
                         if exc.__cause__ is earlier else
                         "\nDuring handling of the above exception, another exception occurred:\n\n")
        if exc.__traceback__ is not None:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(traceback.format_tb(exc.__traceback__))
        lines.append(f"{_type_name(type(exc))}: {WITHHELD}\n")
        earlier = exc
    return "".join(lines).rstrip("\n")


def _type_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"


def configure_logging(level: str, log_requests: bool) -> None:
    """The daemon's stderr log. Warnings (Pillow's about a corrupt image, ...) and an exception that ends a
    thread go through it too, not around it."""
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                      exception_messages=log_requests))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.captureWarnings(True)
    from mlxd.service.streaming import ClientGoneAtTheEnd  # streaming imports this module
    logging.getLogger("grpc._cython.cygrpc").addFilter(ClientGoneAtTheEnd())
    if log_requests:
        log.setLevel(logging.INFO)   # the flag asks for these lines whatever --log-level says

    def thread_died(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not SystemExit:
            # exc_value is typed optional, but an exception a thread raised is normalized: it is always there.
            error = args.exc_value
            exc_info = None if error is None else (args.exc_type, error, args.exc_traceback)
            logging.getLogger("mlxd").critical("thread %r died", args.thread.name if args.thread else "?",
                                               exc_info=exc_info)
    threading.excepthook = thread_died
