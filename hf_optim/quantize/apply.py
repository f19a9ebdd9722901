"""Quantize a model in memory: choose the Linear layers, calibrate, swap modules, describe the result.

Entry points (trailing ``_`` = in place): :func:`quantize_model_`, :func:`calibrate`, :func:`prepare_qat_`,
:func:`convert_qat_`. After any of them ``model.save_pretrained(dir)`` writes a checkpoint that plain
``from_pretrained(dir)`` restores (after ``import hf_optim``).
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn

from ..checkpoint import HfOptimConfig, set_module
from .config import DEFAULT_EXCLUDE, QuantizeConfig
from .modules import FakeQuantLinear, QuantEmbedding, QuantLinear, module_for_scheme
from .schemes import SCHEMES

__all__ = ["target_linears", "quantize_model_", "calibrate", "prepare_qat_", "convert_qat_", "describe_",
           "untie_output_embeddings_", "quantize_embeddings_", "check_group_sizes"]

logger = logging.getLogger("hf_optim")


def target_linears(model: nn.Module, include: Iterable[str] | None = None,
                   exclude: Iterable[str] | None = None) -> list[tuple[str, nn.Linear]]:
    """``(name, module)`` of the float ``nn.Linear`` layers matched by ``include`` and not by ``exclude``."""
    inc = [re.compile(p) for p in (include or ())]
    exc = [re.compile(p) for p in (DEFAULT_EXCLUDE if exclude is None else exclude)]
    # A weight shared with another module (lm_head tied to the embeddings) stays float: the loader re-ties it.
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    out = []
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear or seen.get(id(mod.weight), 0) > 1:
            continue
        if inc and not any(p.search(name) for p in inc):
            continue
        if any(p.search(name) for p in exc):
            continue
        out.append((name, mod))
    return out


def describe_(model: nn.Module, scheme: str, **provenance: Any):
    """Write ``model.config.quantization_config`` (an ``HfOptimConfig``) for the modules ``model`` now holds.

    An existing hf_optim config (pruned shapes, head counts) is kept and extended.
    """
    old = getattr(getattr(model, "config", None), "quantization_config", None)
    if isinstance(old, dict) and old.get("quant_method") == "hf_optim":
        old = HfOptimConfig.from_dict(old)
    shapes = dict(old.linear_shapes) if isinstance(old, HfOptimConfig) else {}
    attrs = dict(old.module_attrs) if isinstance(old, HfOptimConfig) else {}
    modules = {n: m.spec() for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantEmbedding))}
    for n in modules:  # the quantized module's own spec carries its shape
        shapes.pop(n, None)
    dtype = SCHEMES[scheme].dtype or (old.dtype if isinstance(old, HfOptimConfig) else None)
    cfg = HfOptimConfig(scheme=scheme, modules=modules, linear_shapes=shapes, module_attrs=attrs, dtype=dtype,
                        provenance={k: v for k, v in provenance.items() if v is not None})
    if hasattr(model, "config"):
        model.config.quantization_config = cfg
    return cfg


def _name_of(model: nn.Module, module: nn.Module | None) -> str | None:
    for name, mod in model.named_modules():
        if mod is module:
            return name
    return None


def _is_tied(model: nn.Module) -> bool:
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return False
    emb, head = get_in(), get_out()
    return emb is not None and head is not None and getattr(head, "weight", None) is getattr(emb, "weight", None)


def untie_output_embeddings_(model: nn.Module) -> bool:
    """Give a head tied to the input embeddings its own copy of the weight and record it in the config
    (``tie_word_embeddings=False``), so the two can be stored differently and the loader does not re-tie them.

    Returns whether anything was untied.
    """
    if not _is_tied(model):
        return False
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    config = getattr(model, "config", None)
    if config is not None:
        config.tie_word_embeddings = False
        text = getattr(config, "get_text_config", lambda: None)()
        if text is not None and text is not config:
            text.tie_word_embeddings = False
    return True


@torch.no_grad()
def quantize_embeddings_(model: nn.Module, bits: int = 8, group_size: int | None = None,
                         symmetric: bool = True) -> str:
    """Store the input embedding table int8/int4 (:class:`QuantEmbedding`); an output head tied to it is untied
    first (it keeps a float copy unless it is quantized too). Returns the embedding's module name."""
    emb = model.get_input_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise ValueError(f"input embeddings are a {type(emb).__name__}; only nn.Embedding tables are quantized")
    name = _name_of(model, emb)
    untie_output_embeddings_(model)
    set_module(model, name, QuantEmbedding.from_embedding(emb, bits, group_size, symmetric))
    return name


def check_group_sizes(layers: Iterable[tuple[str, nn.Linear]], group_size: int | None) -> None:
    """Raise ``ValueError`` naming every target layer whose input size ``group_size`` does not divide."""
    bad = [(n, m.in_features) for n, m in layers if group_size and m.in_features % group_size]
    if bad:
        sizes = sorted({f for _, f in bad})
        fits = [g for g in (16, 32, 64, 128, 256) if all(f % g == 0 for f in sizes)]
        names = ", ".join(n for n, _ in bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
        raise ValueError(f"group_size={group_size} does not divide the input size {', '.join(map(str, sizes))} of "
                         f"{len(bad)} target layer(s): {names}. Use a group size that does "
                         f"({', '.join(map(str, fits)) or 'none of 16..256'}), exclude those layers, or allow a "
                         "shorter last group (partial_groups=True)")


def _targets(model: nn.Module, include, exclude, lm_head: bool) -> list[tuple[str, nn.Linear]]:
    """Target Linear layers; with ``lm_head`` the output head too (untied from the embeddings if needed)."""
    targets = target_linears(model, include, exclude)
    if lm_head:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            raise ValueError(f"lm_head=True but {type(model).__name__} has no output embeddings (get_output_embeddings)")
        if isinstance(head, nn.Linear) and type(head) is nn.Linear:
            untie_output_embeddings_(model)
            head = model.get_output_embeddings()
            name = _name_of(model, head)
            if name not in dict(targets):
                targets.append((name, head))
    return targets


def _config_from_arguments(scheme: str, group_size: int | None = None, include: Iterable[str] | None = None,
                           exclude: Iterable[str] | None = None, symmetric: bool = True, lm_head: bool = False,
                           embeddings: str | None = None, activations: str = "tensor",
                           partial_groups: bool = False) -> QuantizeConfig:
    """The :class:`QuantizeConfig` the keyword form of :func:`quantize_model_` (before the config form) meant."""
    return QuantizeConfig(model="", scheme=scheme, group_size=group_size, include=tuple(include or ()),
                          exclude=DEFAULT_EXCLUDE if exclude is None else tuple(exclude), symmetric=symmetric,
                          lm_head=lm_head, embeddings=embeddings or "float", activations=activations,
                          partial_groups=partial_groups)


@torch.no_grad()
def quantize_model_(model: nn.Module, config: QuantizeConfig | str | None = None, *,
                    ranges: Mapping[str, tuple[float, float]] | None = None, **kwargs: Any) -> nn.Module:
    """Quantize ``model`` in place by round-to-nearest and describe it in ``model.config.quantization_config``.

    Args:
        model (`nn.Module`): a float model (usually a ``PreTrainedModel``) in eval mode.
        config (`QuantizeConfig`): its scheme, group size, symmetry, include/exclude, lm_head, embeddings,
            activations and partial groups are used (``method`` and the calibration settings are the stage's:
            see :func:`~hf_optim.quantize.gptq.gptq_quantize_` and :func:`calibrate`). Every target layer's input
            size must be a multiple of the group size (``ValueError`` otherwise; exclude the others or allow
            ``partial_groups``). A scheme name with the other settings as keyword arguments (the form before
            this one) is deprecated and still read, with a ``FutureWarning``, until the next release.
        ranges (`dict`, *optional*): ``int8_static`` only: ``{name: (min, max)}`` from :func:`calibrate`.

    Returns:
        The same ``model``.

    Example:

    ```python
    >>> from hf_optim.quantize import QuantizeConfig, quantize_model_
    >>> quantize_model_(model, QuantizeConfig(model="my-model", scheme="int4_weight_only", group_size=64))
    ```
    """
    if not isinstance(config, QuantizeConfig):
        warnings.warn("quantize_model_(model, scheme, **options) is deprecated: pass a QuantizeConfig, e.g. "
                      "quantize_model_(model, QuantizeConfig(model=..., scheme=..., group_size=...))",
                      FutureWarning, stacklevel=3)
        config = _config_from_arguments(config or "int8_dynamic", **kwargs)
    elif kwargs:
        raise TypeError(f"quantize_model_ takes a QuantizeConfig; set {', '.join(kwargs)} on the config instead")
    spec = SCHEMES[config.scheme]
    if spec.dtype is not None:
        nn.Module.to(model, getattr(torch, spec.dtype))
        describe_(model, config.scheme)
        return model
    if spec.data == "training":
        raise ValueError(f"scheme {config.scheme!r} trains: prepare_qat_ + training + convert_qat_ (quantize_model_ "
                         f"applies {', '.join(n for n, s in SCHEMES.items() if s.data != 'training')})")
    if spec.data == "calibration" and ranges is None:
        raise ValueError(f"{config.scheme} needs activation ranges: ranges=calibrate(model, batches)")
    cls, group_size = module_for_scheme(config.scheme), config.effective_group_size
    targets = _targets(model, config.include, config.exclude, config.lm_head)
    if not config.partial_groups:
        check_group_sizes(targets, group_size)
    for name, lin in targets:
        if spec.data == "calibration":
            if name not in ranges:
                raise ValueError(f"no calibrated range for {name}; calibrate with the same include/exclude")
            lo, hi = ranges[name]
            new = cls.from_linear(lin, input_min=lo, input_max=hi)
        elif spec.weight_only:
            new = cls.from_linear(lin, group_size=group_size, symmetric=config.symmetric,
                                  partial_groups=config.partial_groups, integer_zero_points=config.integer_zero_points)
        else:
            new = cls.from_linear(lin, group_size=group_size)
            new.activations = config.activations
        set_module(model, name, new)
    if config.embedding_bits:
        quantize_embeddings_(model, config.embedding_bits, config.embedding_group_size, config.symmetric)
    describe_(model, config.scheme, group_size=group_size, symmetric=None if config.symmetric else False,
              partial_groups=config.partial_groups or None)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], observer: str = "minmax",
              percentile: float = 99.99, include: Iterable[str] | None = None,
              exclude: Iterable[str] | None = None, progress: bool = False) -> dict[str, tuple[float, float]]:
    """Run ``batches`` through ``model`` and return each target Linear's input range ``{name: (min, max)}``.

    Only running statistics are kept (two floats per module per batch), so memory does not grow with the
    calibration set. ``observer``: ``minmax`` (overall extremes), ``moving_average`` (mean of per-batch
    extremes) or ``percentile`` (mean of per-batch ``100-p`` / ``p`` percentiles of a sample of values).
    ``progress`` shows a bar over the batches.
    """
    from ..console import progress as progress_bar

    if observer not in ("minmax", "moving_average", "percentile"):
        raise ValueError(f"observer {observer!r}: use minmax, moving_average or percentile")
    stats: dict[str, list[tuple[float, float]]] = {}
    gen = torch.Generator().manual_seed(0)

    def hook_for(name):
        def hook(mod, args):
            x = args[0].detach().float().reshape(-1)
            if observer == "percentile":
                if x.numel() > 1 << 20:
                    x = x[torch.randint(0, x.numel(), (1 << 20,), generator=gen)]
                q = torch.quantile(x, torch.tensor([(100 - percentile) / 100, percentile / 100]))
                stats.setdefault(name, []).append((float(q[0]), float(q[1])))
            else:
                stats.setdefault(name, []).append((float(x.min()), float(x.max())))
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in target_linears(model, include, exclude)]
    was_training = model.training
    model.eval()
    try:
        n = 0
        for batch in progress_bar(batches, desc="calibrate", enabled=progress, unit="batch"):
            model(**batch)
            n += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n == 0:
        raise ValueError("calibration got no batches")
    out = {}
    for name, values in stats.items():
        los, his = zip(*values)
        if observer == "minmax":
            out[name] = (min(los), max(his))
        else:
            out[name] = (sum(los) / len(los), sum(his) / len(his))
    return out


def prepare_qat_(model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                 momentum: float = 0.01) -> nn.Module:
    """Swap target Linear layers for :class:`FakeQuantLinear` (same Parameters) so training sees int8 rounding."""
    for name, lin in target_linears(model, include, exclude):
        set_module(model, name, FakeQuantLinear(lin, momentum=momentum))
    return model


def set_qat_observers_(model: nn.Module, enabled: bool) -> None:
    """Freeze (``False``) or resume (``True``) the activation-range tracking of every FakeQuantLinear."""
    for m in model.modules():
        if isinstance(m, FakeQuantLinear):
            m.observe = enabled


@torch.no_grad()
def convert_qat_(model: nn.Module) -> nn.Module:
    """Replace every :class:`FakeQuantLinear` with the :class:`Int8StaticLinear` it was training for."""
    names = [n for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if not names:
        raise ValueError("convert_qat_: the model has no fake-quantized layers; call prepare_qat_ before training")
    for name in names:
        set_module(model, name, model.get_submodule(name).to_quantized())
    describe_(model, "int8_qat")
    return model


def qat_callback(freeze_observers_at: int | None = None):
    """A ``TrainerCallback`` that freezes the activation ranges at step ``freeze_observers_at`` (the model must
    have been through :func:`prepare_qat_`; :func:`convert_qat_` turns it into int8 after training)."""
    from transformers import TrainerCallback

    class QATCallback(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if freeze_observers_at is not None and state.global_step == freeze_observers_at and model is not None:
                set_qat_observers_(model, False)
                logger.info("QAT: activation ranges frozen at step %d", state.global_step)

    return QATCallback()
