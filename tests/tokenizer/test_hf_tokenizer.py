"""load_tokenizer and Tokenizer over the fixture folder and variants of it built in tmp_path."""

import json
import shutil
import threading
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models

from mlxd.errors import InvalidRequest, ModelLoadError, Unsupported
from mlxd.loading.tokenizer import load_tokenizer

FIXTURE = Path(__file__).parent.parent / "fixtures" / "tokenizer"
USER = [{"role": "user", "content": "hi"}]


def folder_with(tmp_path: Path, config_changes: dict | None = None, drop: tuple[str, ...] = (),
                files: dict[str, str] | None = None) -> Path:
    """A copy of the fixture folder with tokenizer_config keys changed or dropped and extra files."""
    shutil.copy(FIXTURE / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    config.update(config_changes or {})
    for key in drop:
        config.pop(key, None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(FIXTURE)


def test_special_tokens_and_vocab(tok):
    assert tok.vocab_size == 320
    assert tok.bos_token_id == 1 == tok.token_to_id("<bos>")
    assert tok.eos_token_ids == [2]
    assert tok.id_to_token(2) == "<eos>"
    assert tok.token_to_id("no such token") is None
    assert tok.byte_fallback_ids == frozenset()  # byte-level BPE needs no byte-run holding


def test_bos_is_prepended_once(tok):
    plain = tok.encode("hello", add_special_tokens=False)
    assert plain and plain[0] != 1
    assert tok.encode("hello") == [1] + plain
    assert tok.encode("<bos>hello") == [1] + plain       # already there: not doubled
    assert tok.encode("") == [1]
    assert tok.decode(tok.encode("hello")) == "<bos>hello"
    assert tok.decode(tok.encode("hello"), skip_special_tokens=True) == "hello"


def test_parse_special_on_and_off(tok):
    parsed = tok.encode("a<eos>b", add_special_tokens=False)
    assert parsed == tok.encode("a", add_special_tokens=False) + [2] + tok.encode("b", add_special_tokens=False)
    literal = tok.encode("a<eos>b", add_special_tokens=False, parse_special=False)
    assert 2 not in literal and len(literal) > 3
    assert tok.decode(literal) == "a<eos>b"
    # A literal "<bos>" in user text is text, so BOS is still prepended in front of it.
    assert tok.encode("<bos>x", parse_special=False)[:2] == [1, tok.encode("<", add_special_tokens=False)[0]]


def test_add_bos_token_false(tmp_path):
    tok = load_tokenizer(folder_with(tmp_path, {"add_bos_token": False}))
    assert tok.encode("hello") == tok.encode("hello", add_special_tokens=False)


def test_without_add_bos_token_the_post_processor_decides(tmp_path):
    # The fixture's TemplateProcessing post-processor adds <bos>, so BOS is still prepended.
    tok = load_tokenizer(folder_with(tmp_path, drop=("add_bos_token",)))
    assert tok.encode("hello")[0] == 1


def test_chat_template_rendering(tok):
    assert tok.has_chat_template
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(messages) == "<bos><|system|>\nbe brief<eos>\n<|user|>\nhi<eos>\n<|assistant|>\n"
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == \
        "<bos><|system|>\nbe brief<eos>\n<|user|>\nhi<eos>\n"
    # The rendered text carries its BOS, so the engine encodes it without adding another.
    ids = tok.encode(tok.apply_chat_template(USER), add_special_tokens=False)
    assert ids[0] == 1 and ids[1] != 1 and 2 in ids


def test_template_list_prefers_default(tmp_path):
    templates = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT {{ eos_token }}"}]
    tok = load_tokenizer(folder_with(tmp_path, {"chat_template": templates}))
    assert tok.apply_chat_template(USER) == "DEFAULT <eos>"


def test_template_list_without_default_uses_the_first(tmp_path):
    tok = load_tokenizer(folder_with(tmp_path, {"chat_template": [{"name": "a", "template": "A"}]}))
    assert tok.apply_chat_template(USER) == "A"


def test_chat_template_jinja_file_takes_precedence(tmp_path):
    tok = load_tokenizer(folder_with(tmp_path, files={"chat_template.jinja": "FILE{{ messages[0]['content'] }}"}))
    assert tok.apply_chat_template(USER) == "FILEhi"


def test_chat_template_json_is_read(tmp_path):
    folder = folder_with(tmp_path, drop=("chat_template",),
                         files={"chat_template.json": json.dumps({"chat_template": "JSON"})})
    assert load_tokenizer(folder).apply_chat_template(USER) == "JSON"


def test_no_template_is_unsupported(tmp_path):
    tok = load_tokenizer(folder_with(tmp_path, drop=("chat_template",)))
    assert not tok.has_chat_template
    with pytest.raises(Unsupported, match="no chat template"):
        tok.apply_chat_template(USER)


def test_broken_template_loads_but_chat_is_unsupported(tmp_path):
    tok = load_tokenizer(folder_with(tmp_path, {"chat_template": "{% for m in messages %}"}))
    assert not tok.has_chat_template
    with pytest.raises(Unsupported, match="does not compile"):
        tok.apply_chat_template(USER)
    assert tok.encode("hi")[0] == 1


@pytest.mark.parametrize("template, messages, needle", [
    ("{{ raise_exception('roles must alternate') }}", USER, "roles must alternate"),
    ("{{ messages[0]['content'] + 1 }}", USER, "rejected"),
    ("{{ messages.append(1) }}", USER, "rejected"),   # the sandbox is immutable
])
def test_template_errors_are_invalid_requests(tmp_path, template, messages, needle):
    tok = load_tokenizer(folder_with(tmp_path, {"chat_template": template}))
    with pytest.raises(InvalidRequest, match=needle):
        tok.apply_chat_template(messages)


def test_template_features_like_transformers(tmp_path):
    template = ("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
                "{{ m | tojson }}{% endfor %}\n"
                "  {% if true %}\nx{% endif %}|{{ strftime_now('%Y') | length }}|{{ bos_token }}{{ pad_token }}"
                "{% generation %}G{% endgeneration %}")
    tok = load_tokenizer(folder_with(tmp_path, {"chat_template": template}))
    out = tok.apply_chat_template([{"role": "user", "content": "é<b>"}, {"role": "x", "content": "no"}])
    # tojson keeps non-ASCII and HTML characters; trim_blocks/lstrip_blocks eat the block's newline and indent.
    assert out == '{"role": "user", "content": "é<b>"}x|4|<bos><pad>G'


def test_eos_ids_union_with_generation_config(tmp_path):
    folder = folder_with(tmp_path, files={"generation_config.json": json.dumps({"eos_token_id": [2, 317]})})
    assert load_tokenizer(folder).eos_token_ids == [2, 317]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 318}))
    assert load_tokenizer(folder).eos_token_ids == [2, 318]


def test_special_tokens_as_added_token_dicts(tmp_path):
    folder = folder_with(tmp_path, {"bos_token": {"content": "<bos>", "lstrip": False},
                                    "eos_token": {"content": "<end_of_image>"}})
    tok = load_tokenizer(folder)
    assert tok.bos_token_id == 1 and tok.eos_token_ids == [318]


@pytest.mark.parametrize("broken", ["tokenizer.json", "tokenizer_config.json"])
def test_load_errors(tmp_path, broken):
    folder = folder_with(tmp_path)
    (folder / broken).write_text("{not json")
    with pytest.raises(ModelLoadError, match=broken):
        load_tokenizer(folder)


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_concurrent_encoding_with_and_without_special_parsing(tok):
    expected = {True: tok.encode("x<eos>y"), False: tok.encode("x<eos>y", parse_special=False)}
    errors: list[str] = []

    def worker(parse: bool) -> None:
        for _ in range(300):
            if tok.encode("x<eos>y", parse_special=parse) != expected[parse]:
                errors.append("mismatch")

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and expected[True] != expected[False]


def test_byte_fallback_pieces_are_found(tmp_path):
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}, "a": 257}
    Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True)).save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert tok.byte_fallback_ids == frozenset(range(1, 257))
    assert tok.bos_token_id is None and tok.eos_token_ids == [] and not tok.has_chat_template
    assert tok.encode("a") == [257]  # no BOS token known: nothing is prepended
