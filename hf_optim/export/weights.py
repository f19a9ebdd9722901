"""What the portable exporters (:mod:`.gguf`, :mod:`.compressed_tensors`) read from an hf_optim model: the model
itself, each quantized module's integer grid, and a plain config that describes its (possibly pruned) shapes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
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
        padding (`dict`, *optional*): a zero-padded export's :class:`~hf_optim.export.padding.Padding` (each
            layer's sizes before, the sizes after, how many parameters are padding and their share).
    """

    path: Path
    format: str
    tensors: dict[str, dict[str, Any]]
    notes: list[str]
    tokenizer: str | None = None
    padding: dict[str, Any] | None = None

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
    """The model in float32 from a directory, with the head its ``config.json`` names (a causal LM, a sequence
    classifier, or a bare encoder; hf_optim checkpoints restore their quantized modules), or the model object
    itself."""
    path = model_dir(model_or_dir)
    if path is None:
        return model_or_dir
    import transformers

    import hf_optim  # noqa: F401 - registers the from_pretrained integration that restores quantized modules
    from ..artifact_kind import checkpoint_kind

    auto = {"sequence-classification": "AutoModelForSequenceClassification",
            "base": "AutoModel"}.get(checkpoint_kind(path) or "", "AutoModelForCausalLM")
    return getattr(transformers, auto).from_pretrained(path, dtype=torch.float32).eval()


def write_checkpoint(out_dir: str | Path, tensors: dict[str, torch.Tensor], config, model: nn.Module,
                     tokenizer: Any = None) -> Path:
    """A checkpoint directory plain Transformers reads: ``model.safetensors`` from ``tensors``, ``config``, the
    model's generation config and ``tokenizer`` (each when there is one)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def _out_in(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, QuantEmbedding):
        return module.num_embeddings, module.embedding_dim
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    return module.out_features, module.in_features


def layer_sizes(model: nn.Module) -> list[dict[str, int]] | None:
    """Per layer, the sizes a config states once for all layers: ``heads``, ``kv_heads`` (Llama), ``ffn`` and the
    ``head_dim`` the layer computes with; `None` for layouts other than Llama's and BERT's."""
    inner = getattr(model, "model", None) or getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    config = model.config
    layers = getattr(inner, "layers", None)
    if layers is not None and hasattr(layers[0], "self_attn") and hasattr(layers[0].self_attn, "q_proj"):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return [{"heads": _out_in(l.self_attn.q_proj)[0] // head_dim, "kv_heads": _out_in(l.self_attn.k_proj)[0]
                 // head_dim, "ffn": _out_in(l.mlp.gate_proj)[0], "head_dim": head_dim,
                 "hidden": _out_in(l.self_attn.q_proj)[1]} for l in layers]
    layers = getattr(getattr(inner, "encoder", None), "layer", None)
    if layers is not None and hasattr(layers[0], "attention") and hasattr(layers[0], "intermediate"):
        head_dim = config.hidden_size // config.num_attention_heads
        return [{"heads": _out_in(l.attention.self.query)[0] // head_dim, "ffn": _out_in(l.intermediate.dense)[0],
                 "head_dim": head_dim, "hidden": _out_in(l.attention.self.query)[1]} for l in layers]
    return None


def _sizes_text(sizes: list[dict[str, int]]) -> str:
    def one(s: dict[str, int]) -> str:
        kv = f" ({s['kv_heads']} key/value)" if "kv_heads" in s else ""
        return f"{s['heads']} heads{kv}, FFN {s['ffn']}"

    return "; ".join(f"layer {i}: {one(s)}" for i, s in enumerate(sizes))


def _no_plain_config(model: nn.Module, sizes: list[dict[str, int]], why: str) -> ConfigError:
    arch = type(model.config).__name__
    fix = ("prune FFN neurons only (the prune stage's `heads: 0`), the same number in every layer (`ranking: "
           "per_layer`, its default)") if "kv_heads" not in sizes[0] else \
        "prune the same number of heads and FFN neurons in every layer (the prune stage's `ranking: per_layer`, its default)"
    return ConfigError(
        f"this pruned model has no plain {arch} (per layer: {_sizes_text(sizes)}): {why}, so this checkpoint needs "
        "hf_optim to load. Publish the hf_optim checkpoint itself (its readers `pip install hf-optim`, then `import "
        f"hf_optim` before `from_pretrained`), or {fix} and export again, or export it zero-padded (`hf-optim "
        "export DIR -o OUT --format compressed-tensors --pad-uneven`, the export stage's `pad_uneven: true`): every "
        "layer padded with zero units to the widest, a plain checkpoint that loads anywhere with the same outputs, "
        "as large as the widest layer", field="model")


def plain_config(model: nn.Module):
    """A copy of the model's config whose sizes describe the modules it holds, without hf_optim's
    ``quantization_config``; :class:`~hf_optim.errors.ConfigError` (a ``ValueError``) naming every layer's sizes
    when no plain config does: only hf_optim, which records each layer's shapes, loads those.

    Llama-family layers pruned uniformly (every layer with the same heads and FFN width) get a plain dense config
    with those sizes; BERT-family layers an ``intermediate_size`` for a uniformly pruned FFN (BERT's config derives
    the head size from ``hidden_size / num_attention_heads``, so it cannot state pruned heads); other architectures
    must have their config's shapes.
    """
    import copy

    config = copy.deepcopy(model.config)
    for name in ("quantization_config", "_pre_quantization_dtype"):  # what loading hf_optim's format set
        if hasattr(config, name):
            delattr(config, name)
    sizes = layer_sizes(model)
    if sizes is None:
        _check_shapes(model, config)  # an unknown layout: only an unpruned model has a plain config
        return config
    if any(s != sizes[0] for s in sizes):
        raise _no_plain_config(model, sizes, f"{type(config).__name__} states one size for every layer")
    size = sizes[0]
    if "kv_heads" in size:
        config.num_attention_heads, config.num_key_value_heads = size["heads"], size["kv_heads"]
        config.intermediate_size, config.hidden_size, config.head_dim = size["ffn"], size["hidden"], size["head_dim"]
    elif size["heads"] != config.num_attention_heads:
        raise _no_plain_config(model, sizes, f"{type(config).__name__} derives the head size from hidden_size / "
                               "num_attention_heads, so it cannot state pruned attention heads")
    else:
        config.intermediate_size = size["ffn"]
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
