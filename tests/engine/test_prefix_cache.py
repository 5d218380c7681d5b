"""Prefix cache: longest usable stored prefix, trimming rules for full and sliding-window layers, LRU within a byte
budget, independence of restored caches, and restored-cache logits equal to a cold prefill on tiny real models."""

from __future__ import annotations

import gc
from pathlib import Path

import mlx.core as mx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxd.engine.prefix_cache import PrefixCache
from mlxd.loading.loader import load_model
from mlxd.models.cache import KVCache, RotatingKVCache, make_layer_caches

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
HEADS, DIM = 2, 4
BYTES_PER_POSITION = 2 * HEADS * DIM * 4  # keys and values, float32, one layer
BIG = 1 << 30


# -- fake layers whose keys spell (token, position), so restored contents can be checked exactly ---------------

def _kv(tokens, start: int) -> tuple[mx.array, mx.array]:
    code = mx.array(tokens, dtype=mx.float32) * 1000 + mx.arange(start, start + len(tokens), dtype=mx.float32)
    keys = mx.broadcast_to(code[None, None, :, None], (1, HEADS, len(tokens), DIM))
    return keys, -keys


def _filled(tokens, windows, step: int = 4) -> list:
    """Caches fed `tokens` in chunks of 3, 1, 1 (so rotating layers both concatenate and wrap their ring)."""
    caches = [KVCache(step) if w is None else RotatingKVCache(w, step) for w in windows]
    start, sizes = 0, [3, 1, 1]
    while start < len(tokens):
        end = min(start + sizes[0], len(tokens))
        sizes = sizes[1:] + sizes[:1]
        keys, values = _kv(tokens[start:end], start)
        for cache in caches:
            cache.update_and_fetch(keys, values)
        start = end
    mx.eval([c.state for c in caches])
    return caches


def _assert_holds(caches, tokens, n: int, windows) -> None:
    """`caches` hold what a cache fed tokens[:n] keeps; checked after extending them by one position (in place)
    and then two (concatenated)."""
    for cache, window in zip(caches, windows):
        assert cache.offset == n
        cache.update_and_fetch(*_kv([9], n))
        cache.update_and_fetch(*_kv([8, 9], n + 1))
        snapshot = cache.snapshot()
        kept = n + 3 if window is None else min(n + 3, window)
        want, _ = _kv((list(tokens[:n]) + [9, 8, 9])[-kept:], n + 3 - kept)
        assert mx.array_equal(snapshot.keys, want) and mx.array_equal(snapshot.values, -want)


def _make(windows):
    return lambda: make_layer_caches(windows)


def _trimmable(tokens, windows) -> bool:
    return all(w is None or len(tokens) <= w for w in windows)


def _best(stored, query, windows) -> int:
    """Brute force: the longest prefix of `query` some stored sequence can serve."""
    best = 0
    for s in stored:
        if tuple(query[:len(s)]) == tuple(s):
            best = max(best, len(s))
        elif _trimmable(s, windows):
            common = next((i for i, (a, b) in enumerate(zip(s, query)) if a != b), min(len(s), len(query)))
            best = max(best, common)
    return best


def _stored(pc: PrefixCache) -> dict:
    """{tokens: entry} for every snapshot in the tree, checking the tree's invariants on the way."""
    out = {}

    def walk(node, prefix) -> int:
        prefix += node.edge
        trimmable = 0
        if node.entry is not None:
            assert node.entry.node is node and prefix not in out
            out[prefix] = node.entry
            trimmable += node.entry.trimmable
        if node.parent is not None:
            assert node.edge and node.parent.children[node.edge[0]] is node
            assert node.entry is not None or len(node.children) >= 2, "bare leaf or pass-through node left"
        for child in node.children.values():
            assert child.parent is node
            trimmable += walk(child, prefix)
        assert node.trimmable == trimmable
        return trimmable

    walk(pc._root, ())
    assert pc.entries == len(out)
    assert pc.bytes_used == sum(e.nbytes for e in out.values()) <= pc.budget_bytes
    return out


WINDOWS = [[None, None], [None, 4], [6, 6], [5, None, 3]]
SEQ = st.lists(st.integers(0, 2), min_size=1, max_size=9)


# -- lookup ------------------------------------------------------------------------------------------------------

def test_hit_miss_and_longest_match():
    pc = PrefixCache(BIG)
    windows = [None, None]
    for tokens in ([1, 2, 3], [1, 2, 3, 4, 5, 6], [7, 8]):
        pc.insert(tokens, _filled(tokens, windows))
    assert pc.lookup([5, 5], _make(windows)) == (0, None)
    n, caches = pc.lookup([1, 2, 3, 4, 5, 6, 7], _make(windows))
    assert n == 6
    _assert_holds(caches, [1, 2, 3, 4, 5, 6], 6, windows)
    n, caches = pc.lookup([1, 2, 3, 4, 0], _make(windows))  # trims the 6-token snapshot to 4
    assert n == 4
    _assert_holds(caches, [1, 2, 3, 4], 4, windows)
    assert pc.lookup([7, 8, 9], _make(windows))[0] == 2
    assert pc.lookup([7, 0], _make(windows))[0] == 1
    assert (pc.hits, pc.misses, pc.hit_tokens) == (4, 1, 13)
    # [1, 2, 3] was redundant: the 6-token snapshot trims to it.
    assert pc.entries == 2 and set(_stored(pc)) == {(1, 2, 3, 4, 5, 6), (7, 8)}


def test_rotated_snapshot_serves_only_an_exact_prefix():
    windows = [None, 5]
    pc = PrefixCache(BIG)
    short, long = [1, 2, 3], [1, 2, 3, 4, 5, 6, 7, 8]
    pc.insert(short, _filled(short, windows))
    pc.insert(long, _filled(long, windows))
    assert pc.entries == 2  # the rotated snapshot cannot stand in for the short one
    n, caches = pc.lookup(long + [0], _make(windows))
    assert n == 8
    _assert_holds(caches, long, 8, windows)
    n, caches = pc.lookup(long[:7], _make(windows))  # shares 7 of 8: the rotated one is unusable
    assert n == 3
    _assert_holds(caches, short, 3, windows)
    assert pc.lookup([1, 2, 0], _make(windows))[0] == 2  # the short one (3 <= window) trims


def test_snapshot_filling_exactly_the_window_still_trims():
    windows = [4, None]
    pc = PrefixCache(BIG)
    pc.insert([1, 2, 3, 4], _filled([1, 2, 3, 4], windows))
    n, caches = pc.lookup([1, 2, 3, 0], _make(windows))
    assert n == 3
    _assert_holds(caches, [1, 2, 3], 3, windows)


@settings(max_examples=60, deadline=None)
@given(windows=st.sampled_from(WINDOWS), stored=st.lists(SEQ, min_size=1, max_size=8),
       queries=st.lists(SEQ, min_size=1, max_size=6))
def test_lookup_equals_brute_force(windows, stored, queries):
    pc = PrefixCache(BIG)
    for tokens in stored:
        pc.insert(tokens, _filled(tokens, windows))
    _stored(pc)
    for query in queries:
        n, caches = pc.lookup(query, _make(windows))
        assert n == _best(stored, query, windows)
        if n:
            _assert_holds(caches, query, n, windows)
        else:
            assert caches is None


@settings(max_examples=60, deadline=None)
@given(windows=st.sampled_from(WINDOWS), budget_positions=st.integers(0, 30),
       ops=st.lists(st.tuples(st.booleans(), SEQ), min_size=1, max_size=25))
def test_random_inserts_and_lookups_keep_the_budget_and_the_tree(windows, budget_positions, ops):
    pc = PrefixCache(budget_positions * BYTES_PER_POSITION)
    for is_insert, tokens in ops:
        stored = _stored(pc)
        if is_insert:
            pc.insert(tokens, _filled(tokens, windows))
        else:
            n, caches = pc.lookup(tokens, _make(windows))
            assert n == _best(stored, tokens, windows)
            if n:
                _assert_holds(caches, tokens, n, windows)
    _stored(pc)


# -- memory ----------------------------------------------------------------------------------------------------

def test_least_recently_used_is_evicted_first():
    windows = [None]
    pc = PrefixCache(2 * 4 * BYTES_PER_POSITION)  # room for two 4-token snapshots
    a, b, c = [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]
    pc.insert(a, _filled(a, windows))
    pc.insert(b, _filled(b, windows))
    assert pc.bytes_used == 8 * BYTES_PER_POSITION
    assert pc.lookup(a, _make(windows))[0] == 4  # a is now the most recently used
    pc.insert(c, _filled(c, windows))
    assert set(_stored(pc)) == {tuple(a), tuple(c)}
    pc.insert(a, _filled(a, windows))  # already stored: only refreshed
    pc.insert([4] * 6, _filled([4] * 6, windows))  # needs both slots' room
    assert set(_stored(pc)) == {(4,) * 6}
    pc.insert([5] * 9, _filled([5] * 9, windows))  # larger than the whole budget: not stored, nothing evicted
    assert set(_stored(pc)) == {(4,) * 6}
    pc.clear()
    assert pc.entries == 0 and pc.bytes_used == 0 and pc.lookup([4] * 6, _make(windows)) == (0, None)


def test_inserting_a_prefix_of_a_trimmable_snapshot_refreshes_it():
    windows = [None]
    pc = PrefixCache(2 * 4 * BYTES_PER_POSITION)
    pc.insert([1, 2, 3, 4], _filled([1, 2, 3, 4], windows))
    pc.insert([5, 6, 7, 8], _filled([5, 6, 7, 8], windows))
    pc.insert([1, 2], _filled([1, 2], windows))  # covered by [1, 2, 3, 4], which becomes most recent
    pc.insert([9, 9, 9], _filled([9, 9, 9], windows))
    assert set(_stored(pc)) == {(1, 2, 3, 4), (9, 9, 9)}


def test_budget_zero_disables_the_cache():
    pc = PrefixCache(0)
    pc.insert([1, 2], _filled([1, 2], [None]))
    assert pc.entries == 0 and pc.bytes_used == 0
    assert pc.lookup([1, 2, 3], _make([None])) == (0, None) and pc.misses == 1
    with pytest.raises(ValueError, match="-1"):
        PrefixCache(-1)


def test_snapshot_keeps_only_its_positions_alive():
    pc = PrefixCache(BIG)
    gc.collect()
    before = mx.get_active_memory()
    cache = KVCache(step=1 << 16)  # one big block holding 3 positions
    keys, values = _kv([1, 2, 3], 0)
    cache.update_and_fetch(keys[:, :1], values[:, :1])  # one head: a prefix slice of the buffer is contiguous
    mx.eval(cache.state)
    assert cache.keys.nbytes == (1 << 16) * DIM * 4
    pc.insert([1, 2, 3], [cache])
    del cache, keys, values
    gc.collect()
    assert pc.bytes_used == 3 * 2 * DIM * 4
    assert mx.get_active_memory() - before < 4096


def test_restored_caches_are_independent_of_the_snapshot_and_of_the_caller():
    windows = [None, 6]
    tokens = [1, 2, 0, 2, 1, 1]
    pc = PrefixCache(BIG)
    caches = _filled(tokens, windows)
    pc.insert(tokens, caches)
    # The caller goes on writing into its caches: a trim then new positions over the old ones.
    for cache in caches:
        cache.update_and_fetch(*_kv([7], 6))
    caches[0].trim(4)
    caches[0].update_and_fetch(*_kv([8, 8, 8], 3))
    for n in (6, 6, 3, 6):
        restored = pc.lookup(tokens[:n], _make(windows))[1]
        _assert_holds(restored, tokens, n, windows)
        # More writes: in place into the full layer's storage and the rotating layer's full ring.
        restored[0].trim(3)
        for cache in restored:
            cache.update_and_fetch(*_kv([5], cache.offset))


def test_mismatched_caches_are_refused():
    pc = PrefixCache(BIG)
    with pytest.raises(ValueError, match="2 positions, not the 3 tokens"):
        pc.insert([1, 2, 3], _filled([1, 2], [None]))
    pc.insert([1, 2, 3], _filled([1, 2, 3], [None, 4]))
    with pytest.raises(ValueError, match="window"):
        pc.lookup([1, 2, 3], _make([None, 8]))
    with pytest.raises(ValueError, match="layers"):
        pc.lookup([1, 2, 3], _make([None]))


# -- tiny real models: restored cache + rest of prompt == cold prefill ---------------------------------------

@pytest.fixture(scope="module")
def models():
    loaded = {}

    def get(arch: str):
        if arch not in loaded:
            loaded[arch] = load_model(PARITY / arch, dtype="float32").model
        return loaded[arch]

    return get


def _run(model, tokens, cache, chunks) -> mx.array:
    """Logits [len(tokens), vocab] of `tokens` fed through `cache` in the given chunk sizes (the last repeats)."""
    out, start, i = [], 0, 0
    while start < len(tokens):
        end = start + chunks[min(i, len(chunks) - 1)]
        out.append(model(mx.array([tokens[start:end]]), cache)[0])
        mx.eval(out[-1], [c.state for c in cache])
        start, i = end, i + 1
    return mx.concatenate(out, axis=0)


# (arch, stored length, shared length, prompt length, expected n); gemma3_text slides 12, mistral and gpt_oss 16,
# gemma4 14, gemma4_moe 13.
MODEL_CASES = [
    ("llama", 20, 20, 26, 20),
    ("llama", 20, 20, 21, 20),   # prompt[:-1] is exactly the stored prefix
    ("llama", 20, 13, 24, 13),   # trims a full-attention snapshot
    ("gemma3_text", 10, 6, 30, 6),   # trims a sliding-window snapshot that has not rotated
    ("gemma3_text", 10, 6, 7, 6),    # ... and goes straight to a single-token step
    ("gemma3_text", 12, 7, 30, 7),   # one that has exactly filled its window
    ("gemma3_text", 30, 30, 38, 30),  # restores a rotated one, on a prompt past the window
    ("gemma3_text", 30, 30, 31, 30),
    ("gemma3_text", 30, 25, 38, 0),  # a rotated snapshot cannot be trimmed
    ("mistral", 40, 40, 45, 40),
    ("mistral", 14, 9, 25, 9),
    ("gpt_oss", 40, 40, 45, 40),  # sliding and full layers: a rotated snapshot beside a full one
    ("gpt_oss", 14, 9, 25, 9),
    ("gpt_oss", 30, 25, 38, 0),
    ("glm4_moe_lite", 20, 13, 24, 13),  # latent caches (one "head" of kv_lora_rank keys, rope-part values)
    ("gemma4", 10, 6, 30, 6),     # KV-shared layers (no cache of their own) read a restored sliding and full cache
    ("gemma4", 30, 30, 38, 30),   # ... a rotated one
    ("gemma4", 30, 25, 38, 0),
    ("gemma4_moe", 40, 40, 45, 40),
    ("gemma4_moe", 12, 7, 30, 7),
    ("nemotron_h", 20, 20, 26, 20),  # Mamba-2 states restore at their exact length only
    ("nemotron_h", 20, 13, 24, 0),
]


@pytest.mark.parametrize("arch,stored_len,shared,prompt_len,expected", MODEL_CASES)
def test_restored_cache_gives_cold_prefill_logits(models, arch, stored_len, shared, prompt_len, expected):
    model = models(arch)
    stored = mx.random.randint(3, 320, (stored_len,), key=mx.random.key(stored_len)).tolist()
    tail = mx.random.randint(3, 320, (prompt_len,), key=mx.random.key(prompt_len + 1000)).tolist()
    prompt = stored[:shared] + [t if t != stored[min(shared, stored_len - 1)] else t + 1 for t in tail]
    prompt = prompt[:prompt_len]
    pc = PrefixCache(BIG)
    source = model.make_cache()
    _run(model, stored, source, [8, 1, 1, 3, 1])  # ring writes in place and wraps, chunks concatenate
    pc.insert(stored, source)

    n, restored = pc.lookup(prompt[:-1], model.make_cache)
    assert n == expected
    if not n:
        assert restored is None
        return
    cold = model.make_cache()
    want = _run(model, prompt, cold, [5])
    got = _run(model, prompt[n:], restored, [5])
    assert mx.abs(got - want[n:]).max().item() < 1e-4
    # A few greedy decode steps: single-token updates on the restored caches, one of them past the window.
    token = int(want[-1].argmax())
    for _ in range(4):
        got = _run(model, [token], restored, [1])
        want = _run(model, [token], cold, [1])
        assert mx.abs(got - want).max().item() < 1e-4
        token = int(want[-1].argmax())
