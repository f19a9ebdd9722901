"""What the portable exporters (:mod:`.gguf`, :mod:`.compressed_tensors`) read from an hf_optim model: the model
itself, each quantized module's integer grid, and a plain config that describes its (possibly pruned) shapes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..quantize import kernels
from ..quantize.modules import QuantEmbedding, QuantLinear

__all__ = ["Grid", "ExportReport", "grid_of", "load_model", "model_dir", "plain_config", "error_stats"]


@dataclasses.dataclass
class ExportReport:
    """What a portable export wrote.

    Args:
        path (`Path`): the file or directory written.
        format (`str`): what it holds (``"gguf q4_1"``, ``"compressed-tensors pack-quantized"`` ...).
        tensors (`dict`): per written weight: ``type``, ``source`` (hf_optim's grid: ``"int4 asym g32"``, or
            ``"float"``), ``from_grid`` (integer values copied from hf_optim's grid; only scales rounded to the
            target's precision), ``max_abs_error`` / ``mean_abs_error`` against the weight hf_optim computes with.
        notes (`list[str]`): what could not be carried over exactly.
        tokenizer (`str`, *optional*): GGUF only: the ``tokenizer.ggml.model`` written (``"gpt2"`` or ``"none"``).
    """

    path: Path
    format: str
    tensors: dict[str, dict[str, Any]]
    notes: list[str]
    tokenizer: str | None = None

    @property
    def max_abs_error(self) -> float:
        return max((t["max_abs_error"] for t in self.tensors.values()), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        return out


@dataclasses.dataclass
class Grid:
    """hf_optim's stored grid of one weight: ``w = (q - zero_point) * scale`` per group of ``group_size`` input
    columns (``None``: one group per row).

    Args:
        q (`torch.Tensor`): int8 ``[out, in]`` integer values.
        scale (`torch.Tensor`): float32 ``[out, groups]``.
        zero_point (`torch.Tensor`, *optional*): float32 ``[out, groups]``; ``None`` when symmetric.
        bits (`int`): 4 or 8.
        group_size (`int`, *optional*): input columns per scale; ``None`` per channel.
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bits: int
    group_size: int | None

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    def dequantized(self) -> torch.Tensor:
        return kernels.dequantize_weight(self.q, self.scale, torch.float32, self.zero_point, self.group_size)

    def rows(self, index: torch.Tensor) -> "Grid":
        """The same grid with its rows reordered (a permutation of output features keeps every group intact)."""
        zp = None if self.zero_point is None else self.zero_point[index]
        return Grid(self.q[index], self.scale[index], zp, self.bits, self.group_size)


def grid_of(module: nn.Module) -> Grid | None:
    """The grid of a :class:`QuantLinear` or :class:`QuantEmbedding`; ``None`` for float modules."""
    if isinstance(module, QuantLinear):
        return Grid(module.int_weight(), module.weight_scale.float(),
                    None if module.symmetric else module.weight_zero_point.float(), module.bits, module.group_size)
    if isinstance(module, QuantEmbedding):
        n, dim = module.num_embeddings, module.embedding_dim
        q = kernels.unpack_int4(module.weight, n, dim) if module.bits == 4 else module.weight.view(n, dim)
        return Grid(q, module.weight_scale.float(), None if module.symmetric else module.weight_zero_point.float(),
                    module.bits, module.group_size)
    return None


def source_of(grid: Grid | None) -> str:
    if grid is None:
        return "float"
    sym = "sym" if grid.symmetric else "asym"
    return f"int{grid.bits} {sym} {'g' + str(grid.group_size) if grid.group_size else 'per-channel'}"


def float_weight(module: nn.Module) -> torch.Tensor:
    """The weight hf_optim computes with: dequantized for quantized modules, else the float weight."""
    grid = grid_of(module)
    return grid.dequantized() if grid is not None else module.weight.detach().float()


def error_stats(reference: torch.Tensor, approx: torch.Tensor) -> dict[str, float]:
    diff = (approx.float() - reference.float()).abs()
    return {"max_abs_error": float(diff.max()) if diff.numel() else 0.0,
            "mean_abs_error": float(diff.mean()) if diff.numel() else 0.0}


def model_dir(model_or_dir: Any) -> Path | None:
    """The directory a model reference names (``builtin:<name>`` resolves to the packaged model); ``None`` for a
    model object."""
    if not isinstance(model_or_dir, (str, Path)):
        return None
    text = str(model_or_dir)
    if text.startswith("builtin:"):
        from ..data.models import builtin_model

        return builtin_model(text.split(":", 1)[1])
    path = Path(text)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
    return path


def load_model(model_or_dir: Any) -> nn.Module:
    """A causal LM in float32 from a directory (hf_optim checkpoints restore their quantized modules) or the model
    object itself."""
    path = model_dir(model_or_dir)
    if path is None:
        return model_or_dir
    import hf_optim  # noqa: F401 - registers the from_pretrained integration that restores quantized modules
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _out_in(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, QuantEmbedding):
        return module.num_embeddings, module.embedding_dim
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    return module.out_features, module.in_features


def plain_config(model: nn.Module):
    """A copy of the model's config whose sizes describe the modules it holds, without hf_optim's
    ``quantization_config``; ``ValueError`` when no plain config does (layers pruned to different sizes: only
    hf_optim, which records each layer's shapes, loads those).

    Llama-family layers pruned uniformly (every layer with the same heads and FFN width) get a plain dense config
    with those sizes; other architectures must have their config's shapes.
    """
    import copy

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not hasattr(layers[0], "self_attn") or not hasattr(layers[0].self_attn, "q_proj"):
        _check_shapes(model, config)  # not a Llama layout: only an unpruned model has a plain config
        return config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sizes = set()
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        sizes.add((_out_in(attn.q_proj)[0] // head_dim, _out_in(attn.k_proj)[0] // head_dim,
                   _out_in(mlp.gate_proj)[0], _out_in(attn.q_proj)[1]))
    if len(sizes) != 1:
        raise ValueError("the layers were pruned to different sizes (heads / FFN width per layer: "
                         f"{sorted(sizes)}); a plain config describes one size for all layers, so this checkpoint "
                         "needs hf_optim to load (`pip install hf-optim`)")
    heads, kv_heads, ffn, hidden = sizes.pop()
    config.num_attention_heads, config.num_key_value_heads = heads, kv_heads
    config.intermediate_size, config.hidden_size, config.head_dim = ffn, hidden, head_dim
    _check_shapes(model, config)
    return config


def _check_shapes(model: nn.Module, config) -> None:
    with torch.device("meta"):
        fresh = type(model)(config)
    expected = {n: _out_in(m) for n, m in fresh.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    actual = {n: _out_in(m) for n, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Embedding, QuantLinear, QuantEmbedding))}
    wrong = {n: (actual.get(n), s) for n, s in expected.items() if actual.get(n) != s}
    if wrong:
        name, (got, want) = next(iter(wrong.items()))
        raise ValueError(f"{len(wrong)} module(s) do not have the shapes a plain config gives them (first: {name} "
                         f"is {got}, expected {want}); this checkpoint needs hf_optim to load")
