"""Hypothesis strategies for hostile requests to mlxd.v1.Inference, and the raw bytes no Python stub can send.

Each strategy yields a `Call`: the gRPC method, the serialized request and whether the response streams. Raw
bytes let the fuzzer send what the protobuf library refuses to encode (lone surrogates, bad UTF-8).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from hypothesis import strategies as st
from PIL import Image

from mlxd_client import pb

VOCAB = 320  # the tiny llama fixture
INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)
TOKEN = st.one_of(st.integers(0, VOCAB - 1), st.sampled_from([-1, VOCAB, 2**31 - 1, -(2**31)]), INT32)
FLOAT = st.one_of(st.floats(width=32), st.sampled_from([0.0, -0.0, 1.0, 1e-45, 3.4e38, -1.0, 2.0, 100.0, 101.0]))

# NULs, controls, the model's special-token strings, emoji, combining marks, right-to-left text: everything
# that is valid UTF-8 (what protobuf can carry as a string).
TEXT = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.sampled_from(["", "\x00", "\x00" * 64, "<bos>", "<eos>", "<pad>", "<|user|>", "\ufeff", "\U0001f600" * 8,
                     "e\u0301" * 16, "\u202e", "\r\n\t"]),
)
# Large prompts: beyond the context length, and beyond the daemon's message-size limit.
HUGE_TEXT = st.tuples(TEXT.filter(bool), st.sampled_from([1_000, 50_000, 600_000])).map(lambda t: t[0] * t[1])
# Byte sequences that are not UTF-8: a lone surrogate as CESU-8, an overlong NUL, beyond U+10FFFF, stray bytes.
BAD_UTF8 = st.sampled_from([b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xff", b"\x80",
                            b"\xe2\x82"])


@dataclass(frozen=True)
class Call:
    method: str
    request: bytes
    streaming: bool

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        return f"Call({self.method}, {self.request[:300]!r}{'...' if len(self.request) > 300 else ''})"


def _mostly(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly unset or valid, so that requests with several fields still reach the model; one time in eight
    hostile."""
    return st.integers(0, 7).flatmap(lambda i: hostile if i == 0 else st.none() if i < 3 else valid)


# Each sampling field: (valid values, hostile values).
_SAMPLING = {
    "temperature": (st.floats(0, 2), FLOAT), "top_p": (st.floats(0.01, 1), FLOAT), "min_p": (st.floats(0, 1), FLOAT),
    "repetition_penalty": (st.floats(0.5, 2), FLOAT), "presence_penalty": (st.floats(-2, 2), FLOAT),
    "frequency_penalty": (st.floats(-2, 2), FLOAT), "top_k": (st.integers(0, 400), INT32),
    "repetition_window": (st.integers(0, 64), UINT32), "seed": (st.integers(0, 2**64 - 1), st.just(2**64 - 1)),
}


@st.composite
def generation_options(draw: st.DrawFn) -> pb.GenerationOptions:
    options = pb.GenerationOptions(
        max_tokens=draw(_mostly(st.integers(0, 8), st.sampled_from([2**31 - 1, 2**31, 2**32 - 1]))) or 0,
        ignore_eos=draw(st.booleans()), logprobs=draw(st.booleans()), prompt_logprobs=draw(st.booleans()))
    top_valid = st.integers(0, 5) if options.logprobs or options.prompt_logprobs else st.just(0)
    options.top_logprobs = draw(_mostly(top_valid, st.one_of(st.integers(0, 25), UINT32))) or 0
    for name, (valid, hostile) in _SAMPLING.items():
        value = draw(_mostly(valid, hostile))
        if value is not None:
            setattr(options, name, value)
    options.stop.extend(draw(_mostly(st.lists(TEXT.filter(bool), max_size=3), st.one_of(
        st.lists(TEXT, min_size=250, max_size=300),
        st.lists(st.text(min_size=1, max_size=3).map(lambda s: s * 500), max_size=2)))) or [])
    options.stop_token_ids.extend(draw(_mostly(st.lists(st.integers(0, VOCAB - 1), max_size=4),
                                               st.lists(TOKEN, max_size=8))) or [])
    options.logit_bias.update(draw(_mostly(
        st.dictionaries(st.integers(0, VOCAB - 1), st.floats(-100, 100), max_size=4),
        st.one_of(st.dictionaries(TOKEN, FLOAT, max_size=4),
                  st.dictionaries(st.integers(0, VOCAB - 1), st.floats(-100, 100), min_size=300, max_size=320)))) or {})
    return options


@st.composite
def _chat(draw: st.DrawFn) -> pb.ChatMessages:
    role = st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "", "robot"]), TEXT)
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role=draw(role), content=draw(TEXT))
                                     for _ in range(draw(st.integers(0, 4)))])
    if draw(st.booleans()):
        chat.add_generation_prompt = draw(st.booleans())
    return chat


@st.composite
def generate_calls(draw: st.DrawFn) -> Call:
    request = pb.GenerateRequest(
        request_id=draw(_mostly(st.just(""), st.one_of(TEXT, st.text(min_size=257, max_size=300)))) or "",
        expected_model=draw(_mostly(st.sampled_from(["", "llama"]), TEXT)) or "",
        options=draw(generation_options()))
    kind = draw(st.sampled_from(["prompt", "prompt", "huge", "tokens", "tokens", "chat", "chat", "none"]))
    if kind == "prompt":
        request.prompt = draw(_mostly(TEXT.filter(bool), st.just(""))) or "hi"
    elif kind == "huge":
        request.prompt = draw(HUGE_TEXT)
    elif kind == "tokens":
        request.tokens.ids.extend(draw(_mostly(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=16),
                                               st.one_of(st.lists(TOKEN, max_size=16),
                                                         st.sampled_from([2047, 2048, 5000]).map(lambda n: [7] * n))))
                                  or [])
    elif kind == "chat":
        request.chat.CopyFrom(draw(_chat()))
    return Call("/mlxd.v1.Inference/Generate", request.SerializeToString(), True)


@st.composite
def _picture(draw: st.DrawFn) -> bytes:
    """A real image in some mode, size and format."""
    mode, fmt = draw(st.sampled_from([("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("P", "GIF"), ("1", "BMP"),
                                      ("I;16", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG"), ("RGB", "WEBP"),
                                      ("RGB", "TIFF"), ("F", "TIFF")]))
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    out = io.BytesIO()
    Image.new(mode, size, draw(st.integers(0, 255))).save(out, fmt)
    return out.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims a size, with one tiny IDAT: a decompression bomb's shape without the bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Images, and bytes that only look like one: truncated, bit-flipped, a bomb's header, random, empty."""
    kind = draw(st.sampled_from(["picture", "truncated", "flipped", "bomb", "random", "magic"]))
    if kind == "bomb":
        return _png_claiming(draw(st.sampled_from([1, 2**31 - 1, 100_000])), draw(st.sampled_from([0, 1, 100_000])))
    if kind == "random":
        return draw(st.binary(max_size=64))
    if kind == "magic":
        return draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP",
                                     b"BM", b"II*\x00", b"<svg/>", b"%PDF-1.7"])) + draw(st.binary(max_size=32))
    data = draw(_picture())
    if kind == "truncated":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "flipped":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    return data


@st.composite
def multimodal_calls(draw: st.DrawFn) -> Call:
    image = st.builds(pb.Image, data=image_bytes(),
                      mime_type=_mostly(st.sampled_from(["", "image/png"]), TEXT).map(lambda m: m or ""))
    ids = _mostly(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8), st.lists(TOKEN, max_size=8))
    part = st.one_of(st.builds(pb.ContentPart, text=TEXT.filter(bool)), st.builds(pb.ContentPart, image=image),
                     st.builds(pb.ContentPart, image=image),
                     st.builds(pb.ContentPart, tokens=st.builds(pb.TokenIds, ids=ids.map(lambda i: i or [1]))))
    request = pb.MultimodalGenerateRequest(request_id=draw(_mostly(st.just(""), TEXT)) or "",
                                           options=draw(generation_options()))
    # Mostly a prompt: a chat needs a template that places images, which a model may not have (a documented
    # FAILED_PRECONDITION that would hide the image paths behind it).
    if draw(st.integers(0, 3)):
        request.prompt.parts.extend(draw(_mostly(st.lists(part, min_size=1, max_size=4), st.just([]))) or [])
    else:
        request.chat.messages.extend(draw(st.lists(st.builds(pb.MultimodalMessage, role=TEXT,
                                                             content=st.lists(part, max_size=3)), max_size=3)))
    return Call("/mlxd.v1.Inference/MultimodalGenerate", request.SerializeToString(), True)


@st.composite
def unary_calls(draw: st.DrawFn) -> Call:
    kind = draw(st.sampled_from(["tokenize", "tokenize_chat", "detokenize", "cancel", "info"]))
    if kind == "tokenize":
        request = pb.TokenizeRequest(text=draw(st.one_of(TEXT, HUGE_TEXT)), add_special_tokens=draw(st.booleans()),
                                     parse_special=draw(st.booleans()))
        return Call("/mlxd.v1.Inference/Tokenize", request.SerializeToString(), False)
    if kind == "tokenize_chat":
        return Call("/mlxd.v1.Inference/Tokenize", pb.TokenizeRequest(chat=draw(_chat())).SerializeToString(), False)
    if kind == "detokenize":
        request = pb.DetokenizeRequest(ids=draw(st.lists(TOKEN, max_size=32)), skip_special_tokens=draw(st.booleans()))
        return Call("/mlxd.v1.Inference/Detokenize", request.SerializeToString(), False)
    if kind == "cancel":
        return Call("/mlxd.v1.Inference/Cancel", pb.CancelRequest(request_id=draw(TEXT)).SerializeToString(), False)
    return Call("/mlxd.v1.Inference/GetModelInfo", b"", False)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, sub-messages) on the wire."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@st.composite
def raw_calls(draw: st.DrawFn) -> Call:
    """Strings with bad UTF-8 where the schema has strings, and plain random bytes, to every method."""
    text = draw(st.text(max_size=8)).encode() + draw(BAD_UTF8) + draw(st.text(max_size=8)).encode()
    message = draw(st.sampled_from([
        ("Generate", _field(2, text), True),                                          # prompt
        ("Generate", _field(1, text) + _field(2, b"hi"), True),                       # request_id
        ("Generate", _field(4, _field(1, _field(2, text))), True),                    # chat.messages[0].content
        ("Generate", _field(2, b"hi") + _field(5, _field(12, text)), True),          # options.stop[0]
        ("Tokenize", _field(1, text), False),
        ("Cancel", _field(1, text), False),
        ("MultimodalGenerate", _field(2, _field(1, _field(1, text))), True),          # prompt.parts[0].text
    ]))
    if draw(st.booleans()):
        return Call(f"/mlxd.v1.Inference/{message[0]}", message[1], message[2])
    method, streaming = draw(st.sampled_from([("Generate", True), ("Tokenize", False), ("Detokenize", False),
                                              ("GetModelInfo", False), ("Cancel", False),
                                              ("MultimodalGenerate", True)]))
    return Call(f"/mlxd.v1.Inference/{method}", draw(st.binary(max_size=64)), streaming)


def any_call() -> st.SearchStrategy[Call]:
    return st.one_of(generate_calls(), generate_calls(), multimodal_calls(), unary_calls(), raw_calls())
