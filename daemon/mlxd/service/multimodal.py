"""MultimodalGenerateRequest -> prompt token ids and preprocessed images, on the gRPC thread.

Each image becomes its model's span (Gemma 3: "\\n\\n<start_of_image>" + image tokens + "<end_of_image>\\n\\n",
as Gemma3Processor writes it). Images are placed by image parts; in chat messages the chat template places
them (it writes `<start_of_image>` where an image item is), so the marker strings are refused in text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlxd.engine.request import PromptImage
from mlxd.errors import InvalidRequest, ResourceExhausted, Unsupported
from mlxd.images.preprocess import ProcessorConfig, content_digest, decode_image, preprocess
from mlxd.images.prompt import ImageTokens
from mlxd.service.convert import check_token_ids
from mlxd.service.limits import Limits
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


def build_prompt(request: pb.MultimodalGenerateRequest, tokenizer: Any, vision: VisionInput, limits: Limits, *,
                 vocab_size: int, context_length: int) -> tuple[list[int], tuple[PromptImage, ...]]:
    markers = [tokenizer.id_to_token(i) or "" for i in (vision.tokens.begin_id, vision.tokens.image_id,
                                                          vision.tokens.end_id)]
    kind = request.WhichOneof("input")
    if kind == "prompt":
        prefix, segments = _prompt_segments(request.prompt, tokenizer, markers, vision.tokens, vocab_size)
    elif kind == "chat":
        prefix, segments = [], _chat_segments(request.chat, tokenizer, markers)
    else:
        raise InvalidRequest("the request needs an input: prompt or chat")
    images = [s.data for s in segments if isinstance(s, _Image)]
    if len(images) > limits.images.max_images:
        raise InvalidRequest(f"the request has {len(images)} images; the limit is {limits.images.max_images}")
    ids, positions = expand(segments, tokenizer, vision.tokens)
    ids = prefix + ids
    positions = [len(prefix) + p for p in positions]
    _check_fits(len(ids), len(images), vision.tokens, limits, context_length)
    per_image = vision.tokens.per_image
    return ids, tuple(
        PromptImage(position, per_image, preprocess(decode_image(data, index, limits.images), vision.processor),
                    content_digest(data))
        for index, (position, data) in enumerate(zip(positions, images)))


def _check_text(text: str, field: str, markers: list[str]) -> None:
    for marker in markers:
        if marker and marker in text:
            raise InvalidRequest(f"{field} contains the image marker {marker!r}; send images as image parts")


def _prompt_segments(prompt: pb.MultimodalPrompt, tokenizer: Any, markers: list[str], tokens: ImageTokens,
                     vocab_size: int) -> tuple[list[int], list[Segment]]:
    if not prompt.parts:
        raise InvalidRequest("prompt.parts is empty")
    segments: list[Segment] = []
    for i, part in enumerate(prompt.parts):
        which = part.WhichOneof("part")
        if which == "text":
            _check_text(part.text, f"prompt.parts[{i}].text", markers)
            segments.append(part.text)
        elif which == "image":
            segments.append(_Image(part.image.data))
        elif which == "tokens":
            ids = list(part.tokens.ids)
            field = f"prompt.parts[{i}].tokens.ids"
            check_token_ids(ids, vocab_size, field)
            if tokens.image_id in ids:
                raise InvalidRequest(f"{field} contains the image token id {tokens.image_id}; send images as "
                                     "image parts")
            segments.append(_Tokens(ids))
        else:
            raise InvalidRequest(f"prompt.parts[{i}] is empty: it needs text, an image or tokens")
    # Like Generate's prompt: BOS when the model wants one, unless the prompt starts with the client's own ids.
    prefix = [] if isinstance(segments[0], _Tokens) else tokenizer.encode("", add_special_tokens=True)
    return prefix, segments


def _chat_segments(chat: pb.MultimodalChat, tokenizer: Any, markers: list[str]) -> list[Segment]:
    if not chat.messages:
        raise InvalidRequest("chat.messages is empty")
    messages, images = [], []
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
        content: Any = items if has_image else "".join(item["text"] for item in items)
        messages.append({"role": message.role, "content": content})
    if not markers[0]:
        raise Unsupported("the tokenizer has no image marker token; images cannot go in chat messages")
    add_prompt = chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
    pieces = tokenizer.apply_chat_template(messages, add_generation_prompt=add_prompt).split(markers[0])
    if len(pieces) - 1 != len(images):
        raise Unsupported(f"the model's chat template wrote {len(pieces) - 1} image markers for {len(images)} "
                          "images; it does not place images in messages")
    segments: list[Segment] = [pieces[0]]
    for image, piece in zip(images, pieces[1:]):
        segments += [image, piece]
    return segments


def expand(segments: list[Segment], tokenizer: Any, tokens: ImageTokens) -> tuple[list[int], list[int]]:
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
            ids += tokenizer.encode(text, add_special_tokens=False, parse_special=True)
            text = ""
        if isinstance(piece, _Image):
            positions.append(len(ids) + 1)
            ids += tokens.span()
        else:
            ids += piece.ids
    return ids, positions


def _check_fits(n_ids: int, n_images: int, tokens: ImageTokens, limits: Limits, context_length: int) -> None:
    max_prompt = min(limits.max_prompt_tokens or context_length, context_length - 1)
    if n_ids > max_prompt:
        image_part = len(tokens.span()) * n_images
        raise ResourceExhausted(f"the prompt needs {n_ids} tokens, {image_part} of them for {n_images} image(s) "
                                f"({len(tokens.span())} each); at most {max_prompt} fit (context length "
                                f"{context_length})")
