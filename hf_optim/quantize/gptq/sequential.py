"""GPTQ over a causal LM: the decoder layers in order, each seeing the outputs of the quantized layers before it.

Per layer: run the calibration batches through it while accumulating each target Linear's input Hessian,
solve every Linear with :func:`~hf_optim.quantize.gptq.gptq_quantize_weight`, optionally tune the layer's grid
against the float model (:func:`~hf_optim.quantize.gptq.tune_layer_qparams`), swap in the quantized modules and
run the batches through the quantized layer to get the next layer's inputs. So errors do not compound unseen.

Memory stays small: only the hidden states entering the current layer (calibration tokens x hidden size) and
one Hessian per distinct Linear input (q/k/v share one, gate/up share one) are held.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from typing import Any, Sequence

import torch
import torch.nn as nn

from ...console import progress as progress_bar
from ...checkpoint import set_module
from ..apply import _targets, check_group_sizes, describe_, quantize_embeddings_
from ..config import DEFAULT_EXCLUDE, QuantizeConfig
from ..modules import module_for_scheme
from ..schemes import SCHEMES, WEIGHT_ONLY_SCHEMES
from .algorithm import gptq_quantize_weight
from .calibration import PhaseTimer, calibration_threads, peak_rss_mb
from .tune import inputs_of, output_head, tune_layer_qparams, tune_model_qparams

__all__ = ["gptq_quantize_", "decoder_layers"]

logger = logging.getLogger("hf_optim")

Inputs = list[tuple[tuple, dict]]  # what a decoder layer is called with, per calibration batch: (args, kwargs)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers (the ``nn.ModuleList`` with ``num_hidden_layers`` entries)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            return mod
    raise ValueError(f"could not find the decoder layers of {type(model).__name__} (an nn.ModuleList of "
                     "config.num_hidden_layers blocks); GPTQ supports decoder-only transformers")


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, h: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _run(layer: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    out = layer(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


class _Hessians:
    """Forward pre-hooks that accumulate ``H = 2 X^T X / n`` of each Linear's inputs over the batches.

    Linears fed the same tensor (q/k/v, gate/up) share one Hessian. The tensor is kept referenced within a batch
    (:meth:`next_batch` forgets them) so its memory cannot be reused by another input of the same shape.
    """

    def __init__(self, linears: dict[str, nn.Linear]):
        self.h: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self._seen: dict[tuple, tuple[str, torch.Tensor]] = {}
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in linears.items()]

    def _hook(self, name: str):
        def hook(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            key = (x.data_ptr(), tuple(x.shape))
            if key in self._seen:
                first = self._seen[key][0]
                self.h[name], self.count[name] = self.h[first], self.count[first]
                return
            self._seen[key] = (name, x)
            n_old = self.count.get(name, 0)
            n_new = n_old + x.shape[0]
            h = self.h.get(name)
            h = torch.zeros(x.shape[1], x.shape[1]) if h is None else h * (n_old / n_new)
            h.addmm_(x.t(), x, alpha=2.0 / n_new)
            self.h[name], self.count[name] = h, n_new
        return hook

    def next_batch(self) -> None:
        self._seen.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _run_collecting_hessians(layer: nn.Module, linears: dict[str, nn.Linear], inputs: Inputs
                             ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The float layer's outputs on ``inputs`` and the Hessians of ``linears``' inputs on the way."""
    hessians = _Hessians(linears)
    try:
        outputs = []
        for args, kwargs in inputs:
            hessians.next_batch()
            outputs.append(_run(layer, args, kwargs))
    finally:
        hessians.remove()
    return hessians.h, outputs


@dataclasses.dataclass
class _Sequential:
    """One GPTQ pass over ``model``: its settings and the statistics the summary reports."""

    model: nn.Module
    config: QuantizeConfig
    done: list[str] = dataclasses.field(default_factory=list)
    errors: list[float] = dataclasses.field(default_factory=list)
    tuned: list[dict[str, float]] = dataclasses.field(default_factory=list)
    timer: PhaseTimer = dataclasses.field(default_factory=PhaseTimer)

    @property
    def scheme(self):
        return SCHEMES[self.config.scheme]

    def _solve(self, weight: torch.Tensor, hessian: torch.Tensor):
        """GPTQ for one weight with this pass's settings: ``(q, scale, zero_point)``."""
        cfg = self.config
        return gptq_quantize_weight(
            weight, hessian, self.scheme.weight_bits, cfg.effective_group_size, cfg.symmetric, cfg.gptq_damp,
            partial=cfg.partial_groups, clip_search=cfg.gptq_clip_search, act_order=cfg.gptq_act_order,
            refit=cfg.gptq_refit, integer_zero_points=cfg.integer_zero_points)

    def _swap_in(self, name: str, qparams: tuple, bias: torch.Tensor | None) -> None:
        """Replace the Linear ``name`` by the quantized module holding ``qparams`` (``(q, scale, zero_point)``)."""
        cls = module_for_scheme(self.config.scheme)
        set_module(self.model, name, cls.from_quantized(*qparams, bias, group_size=self.config.effective_group_size))
        self.done.append(name)

    def quantize_layer(self, layer: nn.Module, prefix: str, linears: dict[str, nn.Linear], inputs: Inputs,
                       float_hidden: list[torch.Tensor] | None) -> Inputs:
        """Quantize ``linears`` (the target Linears of ``layer``) in place; the next layer's inputs."""
        cfg, group_size = self.config, self.config.effective_group_size
        with self.timer("gptq"):
            hessians, float_out = _run_collecting_hessians(layer, linears, inputs)
            param = {name: name[len(prefix) + 1:] + ".weight" for name in linears}  # the weight's name in the layer
            weights = {param[name]: self._solve(lin.weight, hessians[name]) for name, lin in linears.items()}
            hessians.clear()
        if cfg.gptq_tune_steps:
            with self.timer("layer_tuning"):
                self.tuned.append(tune_layer_qparams(layer, weights, inputs, float_hidden, group_size,
                                                     cfg.gptq_tune_steps, cfg.gptq_tune_lr, cfg.integer_zero_points))
        for name, lin in linears.items():
            self._swap_in(name, weights[param[name]], lin.bias)
        with self.timer("gptq"):
            return self._advance(layer, inputs, float_out)

    def _advance(self, layer: nn.Module, inputs: Inputs, reference: list[torch.Tensor]) -> Inputs:
        """The quantized layer's outputs as the next layer's inputs; records their error vs ``reference``."""
        out_inputs: Inputs = []
        num = den = 0.0
        for (args, kwargs), ref in zip(inputs, reference):
            out = _run(layer, args, kwargs)
            num += float((out - ref).pow(2).sum())
            den += float(ref.pow(2).sum())
            out_inputs.append(_with_hidden(args, kwargs, out))
        self.errors.append(math.sqrt(num / max(den, 1e-30)))
        return out_inputs

    def quantize_head(self, targets: dict[str, nn.Linear], batches: Sequence[dict[str, torch.Tensor]]) -> None:
        """GPTQ for the output head when it is a target: its Hessian comes from what the quantized model feeds it
        (the last layer's outputs through the final norm), as the layers' come from theirs."""
        head = self.model.get_output_embeddings()
        name = next((n for n, m in targets.items() if m is head and n not in self.done), None)
        if name is None:
            return
        with self.timer("gptq"):
            # inputs_of stops the model at the head: no logits are computed
            x = torch.cat([t.reshape(-1, t.shape[-1]).float() for t in inputs_of(self.model, head, batches)])
            qparams = self._solve(head.weight, x.t() @ x * (2.0 / x.shape[0]))
        self._swap_in(name, qparams, head.bias)

    def round_the_rest(self, targets: dict[str, nn.Linear]) -> int:
        """Round to nearest what the layers did not cover (``lm_head``, after the last layer), and the input
        embeddings when asked; returns the number of Linears rounded."""
        cfg = self.config
        rest = [(n, m) for n, m in targets.items() if n not in set(self.done)]
        cls = module_for_scheme(self.config.scheme)
        for name, lin in rest:
            set_module(self.model, name, cls.from_linear(lin, group_size=cfg.effective_group_size,
                                                    symmetric=cfg.symmetric, partial_groups=cfg.partial_groups,
                                                    integer_zero_points=cfg.integer_zero_points))
        if cfg.embedding_bits:
            quantize_embeddings_(self.model, cfg.embedding_bits, cfg.embedding_group_size, cfg.symmetric)
        return len(rest)

    def cost(self, threads: int, e2e: dict[str, float] | None) -> dict[str, Any]:
        """What the calibration took: wall seconds per phase (``gptq``: the float layers' forward passes, the
        Hessians, the solve and the quantized layers' outputs; ``float_targets``: the float model's hidden
        states the layer tuning fits), threads and the process's peak memory."""
        out = {"seconds": round(self.timer.total(), 2), **{f"{k}_s": round(v, 2) for k, v in self.timer.seconds.items()},
               "threads": threads, "peak_rss_mb": peak_rss_mb()}
        if e2e is not None:
            out.update({k: v for k, v in e2e.items() if k.startswith("teacher_")})
        return out

    def summary(self, tokens: int, rounded: int, e2e: dict[str, float] | None) -> dict[str, Any]:
        cfg = self.config
        out = {"method": "gptq", "clip_search": cfg.gptq_clip_search, "act_order": cfg.gptq_act_order,
               "refit": cfg.gptq_refit, "calibration_tokens": tokens, "modules_gptq": len(self.done),
               "modules_rtn": rounded,
               "layer_output_rel_error_mean": round(sum(self.errors) / max(1, len(self.errors)), 5)}
        if cfg.gptq_tune_steps:  # how much of the layers' output error (vs the float model) tuning removed
            out.update(tune_steps=cfg.gptq_tune_steps, tune_loss_reduction_mean=round(
                sum(1 - t["loss_after"] / max(t["loss_before"], 1e-30) for t in self.tuned) / max(1, len(self.tuned)),
                5))
        if e2e is not None:  # mean KL to the float model's next-token distribution on the calibration batches
            out.update(e2e_steps=cfg.gptq_e2e_steps, e2e_kl_before=float(f"{e2e['loss_before']:.4g}"),
                       e2e_kl_after=float(f"{e2e['loss_after']:.4g}"))
        return out


def _layer_names(model: nn.Module, layers: nn.ModuleList) -> dict[int, str]:
    ids = {id(layer) for layer in layers}
    return {id(mod): name for name, mod in model.named_modules() if id(mod) in ids}


_OLD_NAMES = {"damp": "gptq_damp", "clip_search": "gptq_clip_search", "act_order": "gptq_act_order",
              "refit": "gptq_refit", "tune_steps": "gptq_tune_steps", "tune_lr": "gptq_tune_lr",
              "e2e_steps": "gptq_e2e_steps", "e2e_lr": "gptq_e2e_lr"}


def _config_from_arguments(scheme: str = "int4_weight_only", group_size: int | None = 128, include=None,
                           exclude=None, embeddings: str | None = None, **kwargs: Any) -> QuantizeConfig:
    """The :class:`QuantizeConfig` the keyword form of :func:`gptq_quantize_` (before the config form) meant."""
    unknown = sorted(set(kwargs) - set(_OLD_NAMES) - {"symmetric", "lm_head", "partial_groups"})
    if unknown:
        raise TypeError(f"gptq_quantize_() got unexpected keyword argument(s) {', '.join(unknown)}")
    return QuantizeConfig(model="", scheme=scheme, method="gptq", group_size=group_size,
                          include=tuple(include or ()), exclude=DEFAULT_EXCLUDE if exclude is None else tuple(exclude),
                          embeddings=embeddings or "float", **{_OLD_NAMES.get(k, k): v for k, v in kwargs.items()})


@torch.no_grad()
def gptq_quantize_(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                   config: QuantizeConfig | str | None = None, *, progress: bool = False,
                   cost: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Quantize the decoder layers' Linear weights of a causal LM with GPTQ, in place, layer by layer.

    Args:
        model (`nn.Module`): a float decoder-only model (``LlamaForCausalLM`` and alike), eval mode.
        batches (`list[dict]`): calibration inputs (``input_ids`` and optionally ``attention_mask``).
        config (`QuantizeConfig`): a weight-only scheme (``int4_weight_only`` / ``int8_weight_only``) and its
            group size, symmetry, include/exclude, partial groups and the ``gptq_*`` settings (damping,
            act-order, clip search, refit, layer and end-to-end tuning). With ``lm_head`` the head is solved after
            the last layer, on what the quantized model feeds it; ``embeddings`` are rounded to nearest. The
            end-to-end tuning, last, tunes them too. A scheme name with the settings as keyword arguments
            (``group_size=128``, ``act_order=True``, ``tune_steps=40`` ...; the form before this one) is
            deprecated and still read, with a ``FutureWarning``, until the next release.
        progress (`bool`, *optional*, defaults to `False`): progress bars over the layers and the tuning steps.
        cost (`dict`, *optional*): filled with what the calibration took: wall seconds in all and per phase,
            threads, peak memory (see :mod:`~hf_optim.quantize.gptq.calibration` for the threads and what is
            computed once). Kept out of the returned summary, which depends on the inputs alone.

    Returns:
        `dict`: calibration tokens, layers and modules quantized, mean relative output error of the layers.
    """
    if not isinstance(config, QuantizeConfig):
        warnings.warn("gptq_quantize_(model, batches, scheme, **options) is deprecated: pass a QuantizeConfig, "
                      "e.g. gptq_quantize_(model, batches, QuantizeConfig(model=..., scheme='int4_weight_only', "
                      "method='gptq', group_size=128))", FutureWarning, stacklevel=3)
        config = _config_from_arguments(config or "int4_weight_only", **kwargs)
    elif kwargs:
        raise TypeError(f"gptq_quantize_ takes a QuantizeConfig; set {', '.join(kwargs)} on the config instead")
    if not SCHEMES[config.scheme].weight_only:
        raise ValueError(f"GPTQ applies to {' / '.join(WEIGHT_ONLY_SCHEMES)}, not {config.scheme!r}")
    with calibration_threads() as threads:
        summary, run, e2e = _gptq_quantize(model, batches, config, progress)
    if cost is not None:
        cost.update(run.cost(threads, e2e))
    return summary


def _gptq_quantize(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], config: QuantizeConfig,
                   progress: bool) -> tuple[dict[str, Any], _Sequential, dict[str, float] | None]:
    targets = dict(_targets(model, config.include, config.exclude, config.lm_head))
    if not config.partial_groups:
        check_group_sizes(targets.items(), config.effective_group_size)
    layers = decoder_layers(model)
    timer = PhaseTimer()
    with timer("float_targets"):
        # End-to-end tuning compares against the float model's logits: its output head and what it feeds it.
        float_head = output_head(model) if config.gptq_e2e_steps else None
        head_inputs = inputs_of(model, float_head, batches) if config.gptq_e2e_steps else None
    with timer("gptq"):
        # Inputs of the first layer (hidden states + the keyword arguments the model passes to every layer).
        inputs: Inputs = inputs_of(model, layers[0], batches, with_kwargs=True)
    if not inputs:
        raise ValueError("GPTQ calibration got no batches")
    tokens = sum(int(b["input_ids"].numel()) for b in batches)
    run = _Sequential(model, config, timer=timer)
    # Tuning follows the float model: its hidden states are carried next to the quantized model's, each layer's
    # computed once (not per tuning step).
    float_hidden = [_hidden(a, k) for a, k in inputs] if config.gptq_tune_steps else None
    names = _layer_names(model, layers)
    for layer in progress_bar(layers, desc="GPTQ layers", enabled=progress, unit="layer"):
        prefix = names[id(layer)]
        linears = {n: m for n, m in targets.items() if n.startswith(prefix + ".")}
        if float_hidden is not None:
            with run.timer("float_targets"):
                float_hidden = [_run(layer, *_with_hidden(a, k, h)) for (a, k), h in zip(inputs, float_hidden)]
        if linears:
            inputs = run.quantize_layer(layer, prefix, linears, inputs, float_hidden)
        else:
            inputs = [_with_hidden(a, k, _run(layer, a, k)) for a, k in inputs]
    run.quantize_head(targets, batches)
    rounded = run.round_the_rest(targets)
    # Last, so it also makes up for what was rounded to nearest (embeddings, Linears outside the layers).
    with run.timer("e2e_tuning"):
        e2e = tune_model_qparams(model, batches, head_inputs, config.gptq_e2e_steps, config.gptq_e2e_lr, float_head,
                                 progress, config.integer_zero_points) if config.gptq_e2e_steps else None
    del float_head, head_inputs
    describe_(model, config.scheme, group_size=config.effective_group_size,
              symmetric=None if config.symmetric else False, method="gptq", calibration_tokens=tokens,
              partial_groups=config.partial_groups or None)
    logger.info("GPTQ: %d modules in %d layers on %d calibration tokens", len(run.done), len(run.errors), tokens)
    return run.summary(tokens, rounded, e2e), run, e2e
