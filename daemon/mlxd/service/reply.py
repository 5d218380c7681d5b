"""A chat's reply as the client asked for it: split into reasoning, answer text and tool calls (parse_reply), and
shaped by tool_choice ("required" or a named function: the calls are constrained by a grammar, so their arguments
always validate against the function's schema).

The engine streams the raw text, special tokens included; the split happens here, on the event loop, per chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlxd.constraints.errors import ConstraintError
from mlxd.engine.request import FinalEvent, FinishReason, TokenEvent
from mlxd.errors import InvalidRequest
from mlxd.reply import Parsed, ReplyFormat, ReplyParser, reply_format
from mlxd.reply.tool_grammar import tool_call_grammar
from mlxd.service.chat import RenderedChat
from mlxd_proto.v1 import inference_pb2 as pb


@dataclass
class ReplyPlan:
    """What a chat request's tools and parse_reply ask of its generation."""

    parser: ReplyParser | None = None         # parse_reply: the family's parser, fresh for this reply
    constraint: pb.Constraint | None = None   # tool_choice required / named: the calls' grammar


def plan_reply(chat: pb.ChatMessages | pb.MultimodalChat, rendered: RenderedChat,
               model_formats: Mapping[str, ReplyFormat], added_tokens: dict[str, int],
               options: pb.GenerationOptions) -> ReplyPlan:
    """The parser and the constraint of one chat request. The formats of the model's own templates (source ->
    format) are found once, at load; a request's template override has its format found here."""
    fmt = model_formats.get(rendered.template) or reply_format(rendered.template, added_tokens)
    plan = ReplyPlan()
    choice = chat.tool_choice.WhichOneof("choice") if chat.HasField("tool_choice") else None
    function = chat.tool_choice.function if choice == "function" else None
    forced = function is not None or (choice == "mode" and chat.tool_choice.mode == pb.TOOL_CHOICE_REQUIRED)
    if forced:
        if options.HasField("constraint"):
            raise InvalidRequest("options.constraint and a required tool_choice both shape the reply; send one")
        try:
            grammar, after = tool_call_grammar(fmt, rendered.tools, function, rendered.text)
        except ConstraintError as error:
            raise InvalidRequest(f"chat.tool_choice: {error.message}") from error
        plan.constraint = pb.Constraint(lark=grammar, after=after)
    if chat.parse_reply:
        plan.parser = fmt.parser(rendered.text, tools_enabled=bool(rendered.tools))
    return plan


class ReplyStream:
    """Turns the engine's events into the chunks and the finish of a parsed reply."""

    def __init__(self, parser: ReplyParser) -> None:
        self._parser = parser
        self.called_tools = False

    def feed(self, event: TokenEvent) -> Parsed:
        return self._seen(self._parser.feed(event.text))

    def finish(self, final: FinalEvent, stop_text: str) -> Parsed:
        """The rest of the reply once it has ended; stop_text is the text of the token that ended it."""
        return self._seen(self._parser.finish(stop_text if final.finish_reason is FinishReason.STOP else ""))

    def ended_in_calls(self, final: FinalEvent) -> bool:
        """The turn ended (not cut short) after tool calls: its finish reason is TOOL_CALLS."""
        return self.called_tools and final.finish_reason is FinishReason.STOP

    def _seen(self, parsed: Parsed) -> Parsed:
        self.called_tools |= bool(parsed.tool_calls)
        return parsed

