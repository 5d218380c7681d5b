"""MultimodalGenerateRequest -> prompt token ids and preprocessed images: size checks on the event loop
(`check_request`), the rest on a preparation thread (`build_prompt`).

Each image becomes its model's span (Gemma 3: "\\n\\n<start_of_image>" + image tokens + "<end_of_image>\\n\\n",
as Gemma3Processor writes it). Images are placed by image parts; in chat messages the chat template places
them (it writes `<start_of_image>` where an image item is), so the marker strings are refused in text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mlxd.engine.request import CancelToken, PromptImage
from mlxd.errors import InvalidRequest, ResourceExhausted, Unsupported
from mlxd.images.decode import decode_image
from mlxd.images.preprocess import ProcessorConfig, content_digest, preprocess
from mlxd.images.prompt import ImageTokens
from mlxd.loading.tokenizer import Tokenizer
from mlxd.service.chat import RenderedChat, TemplateOutput, apply_template, chat_texts
from mlxd.service.limits import Limits
from mlxd.service.preparation import check
from mlxd.service.prompts import check_chat
from mlxd.service.sizes import PromptBounds, check_options, check_token_ids
from mlxd_proto.v1 import inference_pb2 as pb


@dataclass(frozen=True)
class VisionInput:
    """What the service needs to turn images into a vision-language model's input."""

    tokens: ImageTokens
    processor: ProcessorConfig


@dataclass(frozen=True)
class _Image:
    data: bytes


@dataclass(frozen=True)
class _Tokens:
    ids: list[int]


Segment = str | _Image | _Tokens


def check_request(request: pb.MultimodalGenerateRequest, bounds: PromptBounds, vocab_size: int,
                  limits: Limits) -> None:
    """Counts and lengths only: every part takes at least one token, and the images are counted before any is
    decoded."""
    kind = request.WhichOneof("input")
    if kind == "prompt":
        parts = request.prompt.parts
        if not parts:
            raise InvalidRequest("prompt.parts is empty")
        if len(parts) > bounds.max_tokens:
            raise ResourceExhausted(f"prompt.parts has {len(parts)} parts; at most {bounds.max_tokens} tokens fit")
        kinds = [part.WhichOneof("part") for part in parts]
        bounds.check_chars(sum(len(p.text) for p, k in zip(parts, kinds) if k == "text"), "the text of prompt.parts")
        bounds.check_tokens(sum(len(p.tokens.ids) for p, k in zip(parts, kinds) if k == "tokens"),
                            "the token parts of prompt.parts")
        images = kinds.count("image")
    elif kind == "chat":
        check_chat(request.chat, bounds)
        images = sum(part.WhichOneof("part") == "image" for m in request.chat.messages for part in m.content)
    else:
        raise InvalidRequest("the request needs an input: prompt or chat")
    if images > limits.images.max_images:
        raise InvalidRequest(f"the request has {images} images; the limit is {limits.images.max_images}")
    check_options(request.options, vocab_size, limits)


@dataclass(frozen=True)
class BuiltPrompt:
    ids: list[int]
    images: tuple[PromptImage, ...]
    chat: RenderedChat | None    # a chat as its template rendered it (for its reply plan: tools, parse_reply)


def build_prompt(request: pb.MultimodalGenerateRequest, tokenizer: Tokenizer, vision: VisionInput, limits: Limits,
                 bounds: PromptBounds, *, vocab_size: int, cancel: CancelToken) -> BuiltPrompt:
    markers = [tokenizer.id_to_token(i) or "" for i in (vision.tokens.begin_id, vision.tokens.image_id,
                                                          vision.tokens.end_id)]
    template = None
    if request.WhichOneof("input") == "prompt":
        prefix, segments = _prompt_segments(request.prompt, tokenizer, markers, vision.tokens, vocab_size)
        encode = _raw_encoder(tokenizer)
    else:
        segments, template = _chat_segments(request.chat, tokenizer, markers)
        prefix, encode = [], template.guard.encode
    check(cancel)
    ids, positions = expand(segments, encode, vision.tokens)
    ids = prefix + ids
    positions = [len(prefix) + p for p in positions]
    _check_fits(len(ids), len(positions), vision.tokens, bounds)
    size = (vision.processor.width, vision.processor.height)
    images = []
    for index, (position, segment) in enumerate(zip(positions, [s for s in segments if isinstance(s, _Image)])):
        check(cancel)
        # One image at a time: its decoded pixels are dropped once they are preprocessed.
        pixels = preprocess(decode_image(segment.data, index, limits.images, target=size,
                                         cancelled=lambda: cancel.is_set), vision.processor)
        images.append(PromptImage(position, vision.tokens.per_image, pixels, content_digest(segment.data)))
    return BuiltPrompt(ids, tuple(images), None if template is None else template.rendered(ids))


def _raw_encoder(tokenizer: Tokenizer) -> Callable[[str], list[int]]:
    # Prompt parts are the client's own text, special tokens included, as in Generate's prompt.
    return lambda text: tokenizer.encode(text, add_special_tokens=False, parse_special=True)


def _check_text(text: str, field: str, markers: list[str]) -> None:
    for marker in markers:
        if marker and marker in text:
            raise InvalidRequest(f"{field} contains the image marker {marker!r}; send images as image parts")


def _prompt_segments(prompt: pb.MultimodalPrompt, tokenizer: Tokenizer, markers: list[str], tokens: ImageTokens,
                     vocab_size: int) -> tuple[list[int], list[Segment]]:
    segments: list[Segment] = []
    for i, part in enumerate(prompt.parts):
        which = part.WhichOneof("part")
        if which == "text":
            _check_text(part.text, f"prompt.parts[{i}].text", markers)
            segments.append(part.text)
        elif which == "image":
            segments.append(_Image(part.image.data))
        elif which == "tokens":
            field = f"prompt.parts[{i}].tokens.ids"
            ids = check_token_ids(part.tokens.ids, vocab_size, field)
            if tokens.image_id in ids:
                raise InvalidRequest(f"{field} contains the image token id {tokens.image_id}; send images as "
                                     "image parts")
            segments.append(_Tokens(ids))
        else:
            raise InvalidRequest(f"prompt.parts[{i}] is empty: it needs text, an image or tokens")
    # Like Generate's prompt: BOS when the model wants one, unless the prompt starts with the client's own ids.
    prefix = [] if isinstance(segments[0], _Tokens) else tokenizer.encode("", add_special_tokens=True)
    return prefix, segments


def _chat_segments(chat: pb.MultimodalChat, tokenizer: Tokenizer,
                   markers: list[str]) -> tuple[list[Segment], TemplateOutput]:
    contents: list[str | list[dict[str, str]]] = []
    images: list[_Image] = []
    for i, message in enumerate(chat.messages):
        items: list[dict[str, str]] = []
        for j, part in enumerate(message.content):
            which = part.WhichOneof("part")
            field = f"chat.messages[{i}].content[{j}]"
            if which == "text":
                _check_text(part.text, f"{field}.text", markers)
                items.append({"type": "text", "text": part.text})
            elif which == "image":
                items.append({"type": "image"})
                images.append(_Image(part.image.data))
            elif which == "tokens":
                raise InvalidRequest(f"{field}: token ids go in prompt parts, not chat messages")
            else:
                raise InvalidRequest(f"{field} is empty: it needs text or an image")
        # Text-only messages stay plain strings, which every chat template renders; images need the list form.
        has_image = any(item["type"] == "image" for item in items)
        contents.append(items if has_image else "".join(item["text"] for item in items))
    for text in chat_texts(chat):  # tools, tool calls, template arguments: the text parts were checked above
        _check_text(text, "a role, tool, tool call or template argument of chat", markers)
    if not markers[0]:
        raise Unsupported("the tokenizer has no image marker token; images cannot go in chat messages")
    template = apply_template(tokenizer, chat, contents)
    pieces = template.guarded.split(markers[0])
    if len(pieces) - 1 != len(images):
        raise Unsupported(f"the model's chat template wrote {len(pieces) - 1} image markers for {len(images)} "
                          "images; it does not place images in messages")
    segments: list[Segment] = [pieces[0]]
    for image, piece in zip(images, pieces[1:]):
        segments += [image, piece]
    return segments, template


def expand(segments: list[Segment], encode: Callable[[str], list[int]],
           tokens: ImageTokens) -> tuple[list[int], list[int]]:
    """Token ids of the segments with each image's span in place, and the position of each image's first
    image token. The processor's text around an image joins the neighbouring text before tokenization (as the
    processor does), but is left out next to the client's own token ids, which are used exactly as sent."""
    pieces: list[Segment] = []
    for k, segment in enumerate(segments):
        if not isinstance(segment, _Image):
            pieces.append(segment)
            continue
        if not (k > 0 and isinstance(segments[k - 1], _Tokens)):
            pieces.append(tokens.text_before)
        pieces.append(segment)
        if not (k + 1 < len(segments) and isinstance(segments[k + 1], _Tokens)):
            pieces.append(tokens.text_after)
    ids: list[int] = []
    positions: list[int] = []
    text = ""
    for piece in pieces + [_Tokens([])]:
        if isinstance(piece, str):
            text += piece
            continue
        if text:
            # Special tokens split the text anyway, so tokenizing between spans equals tokenizing it whole.
            ids += encode(text)
            text = ""
        if isinstance(piece, _Image):
            positions.append(len(ids) + 1)
            ids += tokens.span()
        else:
            ids += piece.ids
    return ids, positions


def _check_fits(n_ids: int, n_images: int, tokens: ImageTokens, bounds: PromptBounds) -> None:
    if n_ids > bounds.max_tokens:
        image_part = len(tokens.span()) * n_images
        raise ResourceExhausted(f"the prompt needs {n_ids} tokens, {image_part} of them for {n_images} image(s) "
                                f"({len(tokens.span())} each); at most {bounds.max_tokens} fit (context length "
                                f"{bounds.context_length})")
