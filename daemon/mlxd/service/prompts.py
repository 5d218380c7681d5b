"""The token ids of a text request (Generate, Tokenize, Detokenize): size checks first, on the event loop, then the
tokenization itself, on a preparation thread."""

from __future__ import annotations

from mlxd.errors import InvalidRequest, ResourceExhausted
from mlxd.loading.tokenizer import Tokenizer
from mlxd.service.chat import chat_ids, chat_texts
from mlxd.service.limits import Limits
from mlxd.service.sizes import PromptBounds, check_options, check_token_ids
from mlxd_proto.v1 import inference_pb2 as pb

# Tokenize and Detokenize serve documents longer than one prompt (to count or trim them), within this many prompts.
UNARY_PROMPTS = 4


def check_chat(chat: pb.ChatMessages | pb.MultimodalChat, bounds: PromptBounds, field: str = "chat.messages") -> None:
    bounds.check_messages(len(chat.messages), field)
    bounds.check_chars(sum(map(len, chat_texts(chat))), f"the text of {field}")


def check_generate(request: pb.GenerateRequest, bounds: PromptBounds, vocab_size: int, limits: Limits) -> None:
    kind = request.WhichOneof("input")
    if kind == "prompt":
        bounds.check_chars(len(request.prompt), "prompt")
    elif kind == "tokens":
        bounds.check_tokens(len(request.tokens.ids), "tokens.ids")
    elif kind == "chat":
        check_chat(request.chat, bounds)
    else:
        raise InvalidRequest("the request needs an input: prompt, tokens or chat")
    check_options(request.options, vocab_size, limits)


def generate_ids(request: pb.GenerateRequest, tokenizer: Tokenizer, vocab_size: int) -> list[int]:
    """The ids of a prompt or tokens input (a chat is rendered with its reply plan: service.chat.render_chat)."""
    if request.WhichOneof("input") == "prompt":
        # A raw prompt is the client's own text, special tokens included, as it wrote them.
        return tokenizer.encode(request.prompt, add_special_tokens=True, parse_special=True)
    return check_token_ids(request.tokens.ids, vocab_size, "tokens.ids")


def check_tokenize(request: pb.TokenizeRequest, bounds: PromptBounds) -> None:
    if request.HasField("chat"):
        check_chat(request.chat, bounds)
    else:
        bounds.check_chars(len(request.text), "text", scale=UNARY_PROMPTS)


def tokenize_ids(request: pb.TokenizeRequest, tokenizer: Tokenizer) -> list[int]:
    if request.HasField("chat"):
        return chat_ids(tokenizer, request.chat)
    return tokenizer.encode(request.text, add_special_tokens=request.add_special_tokens,
                            parse_special=request.parse_special)


def check_detokenize(request: pb.DetokenizeRequest, bounds: PromptBounds) -> None:
    most = bounds.max_tokens * UNARY_PROMPTS
    if len(request.ids) > most:
        raise ResourceExhausted(f"ids has {len(request.ids)} ids; at most {most} are detokenized at once")
