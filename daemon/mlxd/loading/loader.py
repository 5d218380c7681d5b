"""Load a Hugging Face or MLX-quantized model folder into an evaluated MLX model."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn

from mlxd.errors import ModelLoadError
from mlxd.images.prompt import ImageTokens
from mlxd.loading import config as cfg
from mlxd.loading import mxfp4
from mlxd.loading import weights as wts
from mlxd.loading.fusion import Quantization, build_fused
from mlxd.models import architecture, ops
from mlxd.models.inventory import expert_counts
from mlxd.models.protocol import LanguageModel, VisionLanguageModel

logger = logging.getLogger(__name__)

DTYPE_CHOICES = ("auto", "keep", *cfg.DTYPES)
# A float32 copy may take this share of physical RAM before "auto" keeps the checkpoint dtype instead.
FLOAT32_RAM_SHARE = 0.6
# Context length assumed when config.json names none (transformers' own defaults range from 2048 to 131072).
DEFAULT_CONTEXT_LENGTH = 4096


@dataclass
class LoadedModel:
    model: LanguageModel
    # The same model when its architecture takes images (the registry says so: mlxd.models.architecture), else
    # None: what the engine gives the image encoder and the service reads image_tokens from.
    vision_language: VisionLanguageModel | None
    args: Any
    model_type: str
    config: dict[str, Any]
    context_length: int
    vocab_size: int
    dtype: str
    checkpoint_dtype: str
    quantization: dict[str, Any] | None  # the checkpoint's block, as stored
    quantized: bool  # whether the weights are held quantized now (False after dequantizing)
    files: list[Path]
    eos_token_ids: list[int]
    bos_token_id: int | None
    weight_bytes: int
    load_note: str
    kernels: str  # the models/ops.py backend chosen for this model: "mlx" or "numpy"

    def end_token_ids(self, tokenizer_eos: Iterable[int]) -> list[int]:
        """Every id that ends a sequence, sorted: the tokenizer's and the config's. One set for the engine, ModelInfo
        and every tensor-parallel rank's grammar compiler (a rank whose set differed from rank 0's built its
        compiler again at the first constrained row)."""
        return sorted(set(tokenizer_eos) | set(self.eos_token_ids))

    @property
    def image_tokens(self) -> ImageTokens | None:
        """How images sit in the prompt, for a vision-language model (plain data, no MLX)."""
        return None if self.vision_language is None else self.vision_language.image_tokens


@dataclass(frozen=True)
class DtypePlan:
    """How to hold the weights: cast to `dtype` (None: as stored), dequantizing first when `dequantize`."""

    dtype: str | None
    dequantize: bool
    note: str


def plan_dtype(
    requested: str,
    *,
    on_gpu: bool,
    checkpoint_dtype: str,
    quantized: bool,
    float32_bytes: int,
    ram_bytes: int | None,
    experts: bool = False,
) -> DtypePlan:
    """Decide the dtype the weights are held in. Pure: every fact about the machine comes in as an argument.
    experts: the model has MoE experts (stacked SwitchLinear layers)."""
    plan = _plan_dtype(requested, on_gpu, checkpoint_dtype, quantized, float32_bytes, ram_bytes)
    if experts and not on_gpu and (plan.dtype or checkpoint_dtype) != "float32" and (plan.dequantize or not quantized):
        # MLX 0.32.4's CPU gather_mm (float experts' matmul) computes float32 only; its gather_qmm takes bfloat16
        # and float16 activations, so quantized experts may stay quantized in those dtypes.
        if quantized:
            return DtypePlan(plan.dtype, False, f"{plan.note}, keeping the weights quantized: on a CPU, MLX "
                                                "multiplies float experts in float32 only")
        raise ModelLoadError(
            f"{plan.note}, but on a CPU MLX multiplies a MoE model's float experts in float32 only: use --dtype "
            "float32 (or auto where a float32 copy fits in RAM), a quantized copy of the model, or a GPU")
    return plan


def _plan_dtype(requested: str, on_gpu: bool, checkpoint_dtype: str, quantized: bool, float32_bytes: int,
                ram_bytes: int | None) -> DtypePlan:
    stored = f"{checkpoint_dtype}{' (MLX-quantized)' if quantized else ''}"
    if requested not in DTYPE_CHOICES:
        raise ModelLoadError(f"unknown dtype {requested!r}; expected one of {', '.join(DTYPE_CHOICES)}")
    if requested == "keep":
        return DtypePlan(None, False, f"keeping checkpoint dtype {stored} as requested")
    if requested != "auto":
        return DtypePlan(requested, quantized, f"converting {stored} to {requested} as requested")
    if on_gpu:
        return DtypePlan(None, False, f"keeping checkpoint dtype {stored}: on GPU it is the fast path")
    if ram_bytes is not None and float32_bytes > FLOAT32_RAM_SHARE * ram_bytes:
        return DtypePlan(
            None,
            False,
            f"keeping checkpoint dtype {stored} on CPU: a float32 copy ({float32_bytes / 2**30:.1f} GiB) would "
            f"exceed {FLOAT32_RAM_SHARE:.0%} of RAM ({ram_bytes / 2**30:.1f} GiB)",
        )
    if checkpoint_dtype == "float32" and not quantized:
        return DtypePlan(None, False, "keeping checkpoint dtype float32: already the fast CPU path")
    return DtypePlan(
        "float32", quantized, f"converting {stored} to float32 on CPU: float32 matmuls are the fast CPU path"
    )


def physical_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, None when there is no such file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"unreadable {path}: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def _require_json(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if data is None:
        raise ModelLoadError(f"missing {path}")
    return data


def context_length(config: dict[str, Any], args_context: int | None, source: Path) -> int:
    """The context length `config` names, else the architecture's default (`args_context`, from its ModelArgs), else
    DEFAULT_CONTEXT_LENGTH with a warning naming `source`."""
    context = cfg.context_length(config) or args_context or None
    if context is None:
        logger.warning("%s names no context length; assuming %d", source, DEFAULT_CONTEXT_LENGTH)
        context = DEFAULT_CONTEXT_LENGTH
    return context


def select_kernels(dtype: str) -> str:
    """Choose, once per load, the kernels every model call uses from now on (models/ops.py), from the device
    and the dtype the weights are held in."""
    name = ops.choose(mx.default_device(), dtype)
    ops.use(name)
    logger.info("%s weights on the %s: %s kernels", dtype, mx.default_device(), name)
    return name


def _final_layout(module: ModuleType, args: Any, model: nn.Module, weights: dict[str, mx.array],
                  kept: dict[str, Any] | None, fuse: bool) -> tuple[nn.Module, dict[str, mx.array]]:
    """The model that takes `weights`: rebuilt with its projections fused where they can share a matmul (when
    `fuse`), with quantized layers where the checkpoint's are kept quantized (`kept`: its quantization block)."""
    if fuse:
        def held(path: str) -> Quantization:
            params = cfg.layer_quantization(kept, path) if kept and f"{path}.scales" in weights else None
            return None if params is None else (params["bits"], params["group_size"], params.get("mode", "affine"))

        model, weights, fused = build_fused(module, args, model, weights, held)
        if kept is not None:  # a fused layer is quantized as its parts are
            kept = kept | {layer: kept[part] for layer, part in fused.items() if part in kept}
    if kept is not None:
        wts.quantize_model(model, weights, kept)
    return model, weights


def _shard(model: nn.Module, group: mx.distributed.Group, model_type: str) -> None:
    """This rank's share of `model`, still lazy: `materialize` then reads one whole tensor at a time and keeps
    only the rank's slice of it."""
    try:
        cast(LanguageModel, model).shard(group)
    except ValueError as e:
        raise ModelLoadError(f"cannot split {model_type} across {group.size()} ranks: {e}") from e


def materialize(model: nn.Module) -> None:
    """Evaluate the model's arrays one at a time, each as an array of its own bytes (`mx.contiguous`, which keeps
    the buffer of an array that already is one). A slice of a checkpoint tensor (the halves of Qwen3.5's fused
    experts' gate_up, a tensor-parallel shard) would otherwise keep the whole tensor alive, and present a batch
    stride that MLX 0.32.4's CUDA grouped GEMM ignores: its sorted gather_mm (MoE prefill) read other experts' rows,
    3 logits off on the Qwen3.5-MoE fixture. One at a time, so each source tensor is freed once its slices are
    copied: the peak stays about one tensor above the model."""
    for _, module in model.named_modules():
        for key, value in list(module.items()):
            if isinstance(value, mx.array):
                module[key] = mx.contiguous(value)
                mx.eval(module[key])
    mx.eval(model.parameters())  # any array held in a list or dict of a module


def load_model(path: Path, *, dtype: str = "auto", fuse: bool = False,
               group: mx.distributed.Group | None = None) -> LoadedModel:
    """Read config, weights and generation config from the folder `path` into an evaluated model. With `fuse`
    (as served), its input projections share one matmul where the weights allow (loading/fusion.py); without,
    its parameters are the checkpoint's, as mlx-lm holds them. With a `group` of several ranks, this rank's
    tensor-parallel share only (models/sharding.py), unfused: the lazily read weights are sliced before they are
    evaluated, so no rank holds the whole model."""
    path = Path(path)
    sharded = group is not None and group.size() > 1
    fuse = fuse and not sharded
    if not path.is_dir():
        raise ModelLoadError(f"model folder {path} does not exist")
    config_file = path / "config.json"
    raw = _require_json(config_file)
    generation_file = path / "generation_config.json"
    generation = _read_json(generation_file)
    model_type = raw.get("model_type")
    if not model_type:
        raise ModelLoadError(f"{config_file} has no model_type")
    arch = architecture(model_type)
    try:
        args = arch.module.ModelArgs.from_dict(cfg.normalize_config(raw))
        model = arch.module.Model(args)
    except (TypeError, KeyError, ValueError) as e:
        raise ModelLoadError(f"{config_file} does not describe a valid {model_type} model: {e}") from e

    files = wts.find_weight_files(path)
    quant = cfg.quantization(raw)
    weights = wts.read_weights(files)
    if quant is not None and quant.get("quant_method") == mxfp4.QUANT_METHOD:
        weights = mxfp4.unpack(weights)  # *_blocks + *_scales as MLX mxfp4 .weight + .scales, for sanitize to place
    stored, weights = weights, model.sanitize(weights)
    if quant is not None:
        quant = wts.follow_layer_overrides(quant, stored, weights, getattr(type(model), "SPLIT_LAYERS", None))
    del stored
    checkpoint_dtype = wts.weights_dtype(weights) or cfg.config_dtype(raw) or "float32"
    plan = plan_dtype(
        dtype,
        on_gpu=mx.default_device().type == mx.gpu,
        checkpoint_dtype=checkpoint_dtype,
        quantized=quant is not None,
        float32_bytes=wts.float32_bytes(weights, quant),
        ram_bytes=physical_ram_bytes(),
        experts=expert_counts(model)[0] > 0,
    )
    logger.info("loading %s from %s: %s", model_type, path, plan.note)
    if quant is not None and plan.dequantize:
        weights = wts.dequantize_weights(weights, quant)
    # Where the checkpoint's dtype is kept (a GPU's "auto") too: a router computing in float32 would otherwise widen
    # its weight at every step (a graph node a layer, for a step bound by the host's work per node).
    weights = wts.cast_weights(weights, plan.dtype, wts.float32_parameters(model))
    kept = quant if quant is not None and not plan.dequantize else None
    model, weights = _final_layout(arch.module, args, model, weights, kept, fuse)

    wts.check_weight_names(model, weights, f"weights in {path}")
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ModelLoadError(f"weights in {path} do not fit {model_type}: {str(e).splitlines()[0][:300]}") from e
    del weights  # the model holds what it needs: nothing else keeps a whole tensor alive once read
    if sharded:
        assert group is not None
        _shard(model, group, model_type)
    materialize(model)

    # Published Gemma 3 vision configs omit text_config.max_position_embeddings: it equals the default.
    context = context_length(raw, args.max_position_embeddings, config_file)
    files_read = [config_file, *([generation_file] if generation is not None else []), *files]
    return LoadedModel(
        model=cast(LanguageModel, model),
        vision_language=cast(VisionLanguageModel, model) if arch.takes_images else None,
        args=args,
        model_type=model_type,
        config=raw,
        context_length=context,
        vocab_size=args.vocab_size,
        dtype=plan.dtype or checkpoint_dtype,
        checkpoint_dtype=checkpoint_dtype,
        quantization=quant,
        quantized=quant is not None and not plan.dequantize,
        files=files_read,
        eos_token_ids=cfg.eos_token_ids(raw, generation),
        bos_token_id=cfg.bos_token_id(raw, generation),
        weight_bytes=sum(v.nbytes for _, v in wts.parameter_arrays(model)),
        load_note=plan.note,
        kernels=select_kernels(plan.dtype or checkpoint_dtype),
    )
