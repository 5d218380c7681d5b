"""Images on the worker: where a prefill chunk may end, and the vision encoder with its embedding cache."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import mlx.core as mx

from mlxd.engine.request import PromptImage
from mlxd.models.protocol import VisionLanguageModel


def chunk_end(start: int, chunk: int, limit: int, images: Sequence[PromptImage]) -> int:
    """End of the prefill chunk that begins at `start`: `start + chunk` capped at `limit`, moved so that no
    image's span is split (the image tokens of one image attend to each other, so they go in one pass).

    A span the end would cut goes to the next chunk when the chunk holds anything before it; a chunk that
    begins at a span grows to hold all of it.
    """
    end = min(start + chunk, limit)
    for image in images:
        stop = image.position + image.length
        if image.position < end < stop:
            end = image.position if image.position > start else stop
            break
    return end


class ImageEncoder:
    """Runs the vision tower (+ projector) and keeps embeddings by content hash, least recently used out first,
    so a multi-turn chat that resends an image skips the vision tower."""

    def __init__(self, model: VisionLanguageModel, max_cache_bytes: int) -> None:
        self.model = model
        self._max_bytes = max_cache_bytes
        self._cache: collections.OrderedDict[str, mx.array] = collections.OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def encode(self, image: PromptImage) -> mx.array:
        """Embeddings [tokens, hidden] of one image, evaluated."""
        cached = self._cache.get(image.digest)
        if cached is not None:
            self._cache.move_to_end(image.digest)
            self.hits += 1
            return cached
        self.misses += 1
        embeddings = self.model.encode_images(mx.array(image.pixels[None]))[0]
        mx.eval(embeddings)
        if embeddings.nbytes <= self._max_bytes:
            self._cache[image.digest] = embeddings
            self._bytes += embeddings.nbytes
            while self._bytes > self._max_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._bytes -= evicted.nbytes
        return embeddings

    @property
    def cached_bytes(self) -> int:
        return self._bytes
