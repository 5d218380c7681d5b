"""Builds the ModelInfo message and the servicer's view of the loaded model."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxd.constraints.mask_pool import processes_for
from mlxd.engine.worker import MlxMemory, Worker
from mlxd.errors import ModelLoadError
from mlxd.images.preprocess import load_processor_config
from mlxd.images.prompt import ImageTokens
from mlxd.loading.generation_defaults import sampling_defaults
from mlxd.loading.tokenizer import Tokenizer
from mlxd.models.inventory import expert_counts, quantization_modes
from mlxd.reply import ReplyFormat, reply_format
from mlxd.service.constraints import Grammars
from mlxd.service.multimodal import VisionInput
from mlxd.service.sizes import longest_token_bytes
from mlxd_proto.v1 import inference_pb2 as pb


@dataclass
class ServedModel:
    """What the servicer knows about the model once the worker has loaded it."""

    info: pb.ModelInfo
    tokenizer: Tokenizer
    sampling_defaults: dict[str, Any]
    vision: VisionInput | None = None    # set for vision-language models
    max_token_bytes: int = 0             # of the longest token string (sizes.py); 0 = compute from the tokenizer
    mask_processes: int = 0              # processes filling constrained rows' masks (constraints/mask_pool.py)
    grammars: Grammars = field(init=False)  # requests' constraints, compiled for this tokenizer
    reply_formats: dict[str, ReplyFormat] = field(init=False)   # of each of its templates (default, tool_use)

    def __post_init__(self) -> None:
        if not self.max_token_bytes:
            self.max_token_bytes = longest_token_bytes(self.tokenizer.id_to_token, self.info.vocab_size)
        self.grammars = Grammars(self.tokenizer, self.info.vocab_size, list(self.info.eos_token_ids),
                                 self.mask_processes)
        tokenizer = self.tokenizer
        self.reply_formats = {source: reply_format(source, tokenizer.added_tokens)
                              for source in (tokenizer.chat_template, tokenizer.tool_use_template) if source}
        # The format of the model's own (default) template's replies; a model without one replies plain text.
        default = tokenizer.chat_template
        self.info.reply_format = self.reply_formats[default].name if default else "plain"


def quantization_text(quantization: dict | None, held_quantized: bool) -> str:
    """The checkpoint's quantization, and whether the weights are still held that way."""
    if not quantization:
        return ""
    if quantization.get("format") == "gguf":
        types = sorted(quantization["tensor_types"].items(), key=lambda kv: -kv[1])
        text = "gguf " + ", ".join(f"{name} ({count} tensors)" for name, count in types)
    else:
        mode = quantization.get("mode", "affine")
        text = f"{mode} {quantization.get('bits')}-bit, group {quantization.get('group_size')}"
    return text if held_quantized else f"{text} (dequantized at load)"


def served_model(path: Path, worker: Worker, digest: str) -> ServedModel:
    loaded, tokenizer = worker.loaded, worker.tokenizer
    if loaded is None or tokenizer is None:
        raise ModelLoadError("the worker is serving without a loaded model and tokenizer")
    vision = _vision_input(path, loaded.image_tokens)
    experts, experts_per_token = expert_counts(loaded.model)
    info = pb.ModelInfo(
        model_id=path.name,
        path=str(path.resolve()),
        digest=digest,
        architecture=loaded.model_type,
        context_length=loaded.context_length,
        vocab_size=loaded.vocab_size,
        eos_token_ids=loaded.end_token_ids(tokenizer.eos_token_ids),
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else -1,
        dtype=loaded.dtype,
        checkpoint_dtype=loaded.checkpoint_dtype,
        quantization=quantization_text(loaded.quantization, loaded.quantized),
        has_chat_template=tokenizer.has_chat_template,
        supports_vision=vision is not None,
        device=worker.device,
        load_note=loaded.load_note,
        num_experts=experts,
        experts_per_token=experts_per_token,
        quantization_modes=quantization_modes(loaded.model),
    )
    defaults = sampling_defaults(path) if path.is_dir() else {}
    return ServedModel(info=info, tokenizer=tokenizer, sampling_defaults=defaults, vision=vision,
                       mask_processes=processes_for(worker.options.mask_processes, worker.device, os.cpu_count()))


def with_memory(info: pb.ModelInfo, memory: MlxMemory) -> pb.ModelInfo:
    """info with the MLX memory figures the worker last published (gRPC threads make no MLX calls)."""
    current = pb.ModelInfo()
    current.CopyFrom(info)
    current.mlx_active_memory_bytes = memory.active_bytes
    current.mlx_cache_memory_bytes = memory.cache_bytes
    current.mlx_peak_memory_bytes = memory.peak_bytes
    current.prefix_cache_bytes = memory.prefix_cache_bytes
    return current


def _vision_input(path: Path, tokens: ImageTokens | None) -> VisionInput | None:
    """How images reach the model, for models that take them (`image_tokens` is plain data, no MLX)."""
    if tokens is None:
        return None
    folder = path if path.is_dir() else path.parent
    return VisionInput(tokens, load_processor_config(folder, tokens.image_size))
