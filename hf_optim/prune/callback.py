"""``PruningCallback``: prune on a schedule while ``Trainer`` trains.

Adding pruning to an existing Trainer script is one callback::

    callback = PruningCallback(PruneConfig(granularity="structured", heads=0.25, ffn=0.5, importance="taylor",
                                           start_step=0.1, end_step=0.7))
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[callback])
    trainer.train()
    callback.finalize(trainer.model)        # structured: physically remove the pruned heads and neurons
    trainer.model.save_pretrained("pruned") # reloads with AutoModelFor*.from_pretrained after `import hf_optim`

With ``PruningCallback(config, finalize_on_train_end=True)`` the removal happens when training ends, so a plain
``trainer.save_model("pruned")`` writes the small model.

Masks are recomputed every ``frequency`` steps following the schedule and re-applied after every optimizer step,
so pruned weights stay exactly zero. Pruning is monotonic: a pruned unit never comes back. Resuming from a
checkpoint continues the same schedule: the schedule is a function of the global step, the masks are the zero
pattern of the checkpoint's weights, and gradient-based scores are saved next to each checkpoint
(``hf_optim_pruning.safetensors``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .config import PruneConfig
from .schedule import is_update_step, resolve_step, sparsity_at, units_to_prune
from .structure import UnitGroup, find_unit_groups, prune_structured_, pruned_units, unit_mask, unit_scores

__all__ = ["Pruner", "PruningCallback"]

logger = logging.getLogger("hf_optim")
SCORES_FILE = "hf_optim_pruning.safetensors"
_NEG, _POS = float("-inf"), float("inf")


class Pruner:
    """Masks, importance scores and the mask update of one model (the callback drives it; usable alone)."""

    def __init__(self, model: nn.Module, config: PruneConfig):
        self.model = model
        self.config = config
        self.groups: list[UnitGroup] = []
        self.keep: list[torch.Tensor] = []  # structured: per group, bool per unit
        self.masks: dict[str, torch.Tensor] = {}  # unstructured / nm: module name -> bool mask of weight
        if config.granularity == "structured":
            self.groups = [g for g in find_unit_groups(model) if self._fraction(g.kind) > 0]
            self.keep = [torch.ones(g.n_units, dtype=torch.bool) for g in self.groups]
            names = sorted({p.module for g in self.groups for p in g.parts})
        else:
            names = self._select_linears()
            for name in names:
                self.masks[name] = torch.ones_like(self._linear(name).weight, dtype=torch.bool)
        self.tracked = names
        self.scores: dict[str, torch.Tensor] = {}
        if config.importance in ("movement", "taylor"):
            for name in names:
                lin = self._linear(name)
                self.scores[name] = torch.zeros_like(lin.weight, dtype=torch.float32)
                if lin.bias is not None and config.granularity == "structured":
                    self.scores[f"{name}.bias"] = torch.zeros_like(lin.bias, dtype=torch.float32)

    # -- selection ------------------------------------------------------------------------------------
    def _fraction(self, kind: str) -> float:
        return {"heads": self.config.heads, "ffn": self.config.ffn}[kind]

    def _linear(self, name: str) -> nn.Linear:
        return self.model.get_submodule(name)

    def _select_linears(self) -> list[str]:
        cfg = self.config
        names = []
        for name, mod in self.model.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            if any(re.search(p, name) for p in cfg.exclude):
                continue
            if cfg.include and not any(re.search(p, name) for p in cfg.include):
                continue
            if self._target_sparsity(name, 1.0) == 0:
                continue
            if cfg.granularity == "nm" and mod.in_features % cfg.m:
                raise ValueError(f"N:M pruning: {name} has {mod.in_features} input features, not a multiple of "
                                 f"m={cfg.m}; exclude it (exclude: [{name!r}]) or choose another m")
            names.append(name)
        if not names:
            raise ValueError("pruning: no Linear layer matches include/exclude/targets; check the regexes "
                             f"(include={list(cfg.include)}, exclude={list(cfg.exclude)})")
        return names

    def _target_sparsity(self, name: str, progress: float) -> float:
        """``progress`` in [0, 1] of the final sparsity for Linear ``name`` (targets regex first)."""
        cfg = self.config
        if cfg.granularity == "nm":
            return 1.0 - cfg.n / cfg.m
        for pattern, value in cfg.targets.items():
            if re.search(pattern, name):
                return value * progress
        return cfg.sparsity * progress

    # -- importance -----------------------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self) -> None:
        """Add this step's gradient term to the movement / Taylor scores (call before the optimizer step)."""
        if not self.scores:
            return
        for name in self.tracked:
            lin = self._linear(name)
            for key, p in ((name, lin.weight), (f"{name}.bias", lin.bias)):
                if key not in self.scores or p is None or p.grad is None:
                    continue
                term = p.detach().float() * p.grad.detach().float()
                if self.config.importance == "movement":
                    self.scores[key] -= term
                else:
                    self.scores[key] += term.abs()

    def importance(self) -> dict[str, torch.Tensor]:
        """Per-weight importance of every tracked Linear (and bias, structured): higher = keep."""
        kind = self.config.importance
        if kind in ("movement", "taylor"):
            return self.scores
        out = {}
        for name in self.tracked:
            lin = self._linear(name)
            for key, p in ((name, lin.weight), (f"{name}.bias", lin.bias)):
                if p is not None and (key == name or self.config.granularity == "structured"):
                    w = p.detach().float()
                    out[key] = w.abs() if kind == "l1" else w * w
        return out

    # -- masks ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, progress: float) -> None:
        """Recompute the masks for ``progress`` (0..1) of the final sparsity; pruned weights stay pruned."""
        imp = self.importance()
        if self.config.granularity == "structured":
            self._update_structured(imp, progress)
        elif self.config.granularity == "nm":
            self._update_nm(imp)
        else:
            self._update_unstructured(imp, progress)
        self.apply()

    def _update_structured(self, imp: dict[str, torch.Tensor], progress: float) -> None:
        reduce = "l2" if self.config.importance == "l2" else "sum"
        for kind in ("heads", "ffn"):
            idx = [i for i, g in enumerate(self.groups) if g.kind == kind]
            if not idx:
                continue
            frac = self._fraction(kind) * progress
            scores = []
            for i in idx:
                s = unit_scores(self.groups[i], imp, reduce).clone()
                s[~self.keep[i]] = _NEG
                scores.append(s)
            if self.config.ranking == "per_layer":
                for i, s in zip(idx, scores):
                    k = units_to_prune(frac, self.groups[i].n_units)
                    self.keep[i] = torch.ones_like(self.keep[i])
                    if k:
                        self.keep[i][torch.topk(s, k, largest=False).indices] = False
                continue
            total = sum(self.groups[i].n_units for i in idx)
            k = units_to_prune(frac, total)
            flat = []
            for s in scores:
                s = s.clone()
                s[torch.argmax(s)] = _POS  # every layer keeps its best unit
                flat.append(s)
            cat = torch.cat(flat)
            drop = torch.zeros_like(cat, dtype=torch.bool)
            if k:
                drop[torch.topk(cat, min(k, len(cat) - len(idx)), largest=False).indices] = True
            for i, d in zip(idx, torch.split(drop, [self.groups[i].n_units for i in idx])):
                self.keep[i] = ~d

    def _update_unstructured(self, imp: dict[str, torch.Tensor], progress: float) -> None:
        def masked(name):
            s = imp[name].float().clone()
            s[~self.masks[name]] = _NEG
            return s

        if self.config.ranking == "global" and not self.config.targets:
            scores = [masked(n).flatten() for n in self.tracked]
            cat = torch.cat(scores)
            k = int(self.config.sparsity * progress * cat.numel())
            if k == 0:
                return
            threshold = torch.kthvalue(cat, k).values
            for name, s in zip(self.tracked, scores):
                # ties at the threshold: keep them unless already pruned
                self.masks[name] = (s > threshold).reshape(self.masks[name].shape)
            return
        for name in self.tracked:
            s = masked(name).flatten()
            k = int(self._target_sparsity(name, progress) * s.numel())
            mask = torch.ones_like(s, dtype=torch.bool)
            if k:
                mask[torch.topk(s, k, largest=False).indices] = False
            self.masks[name] = mask.reshape(self.masks[name].shape)

    def _update_nm(self, imp: dict[str, torch.Tensor]) -> None:
        n, m = self.config.n, self.config.m
        for name in self.tracked:
            s = imp[name].float()
            out_f, in_f = s.shape
            groups = s.reshape(out_f, in_f // m, m)
            mask = torch.zeros_like(groups, dtype=torch.bool)
            mask.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
            self.masks[name] = mask.reshape(out_f, in_f)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight (and bias row)."""
        if self.config.granularity == "structured":
            for g, keep in zip(self.groups, self.keep):
                if bool(keep.all()):
                    continue
                for part, lin in g.linears(self.model):
                    wmask, bmask = unit_mask(part, keep, lin)
                    lin.weight.mul_(wmask)
                    if bmask is not None:
                        lin.bias.mul_(bmask)
            return
        for name, mask in self.masks.items():
            w = self._linear(name).weight
            w.mul_(mask.to(w.device))

    def load_masks_from_weights(self) -> None:
        """Rebuild the masks from the model's zero pattern (after resuming from a checkpoint)."""
        if self.config.granularity == "structured":
            pruned = pruned_units(self.model, self.groups)
            for i, g in enumerate(self.groups):
                keep = torch.ones(g.n_units, dtype=torch.bool)
                keep[pruned[g.kind].get(g.layer, [])] = False
                self.keep[i] = keep
        else:
            for name in self.tracked:
                self.masks[name] = self._linear(name).weight.detach() != 0

    # -- reporting ------------------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Current sparsity: zero fraction of the tracked weights, and for structured pruning the fraction of
        heads / neurons removed."""
        zeros = total = 0
        for name in self.tracked:
            w = self._linear(name).weight.detach()
            zeros += int((w == 0).sum())
            total += w.numel()
        out = {"sparsity": round(zeros / max(total, 1), 6)}
        for kind in ("heads", "ffn"):
            sel = [k for g, k in zip(self.groups, self.keep) if g.kind == kind]
            if sel:
                n = sum(len(k) for k in sel)
                out[f"{kind}_pruned"] = round(sum(int((~k).sum()) for k in sel) / n, 6)
        return out


class PruningCallback(TrainerCallback, ExportableState):
    """Prunes the trained model on a schedule (see :class:`~hf_optim.prune.PruneConfig` for every option).

    Args:
        config (`PruneConfig` or `dict`, *optional*): what to prune, how and when; keyword arguments are
            ``PruneConfig`` fields (``PruningCallback(granularity="nm", n=2, m=4)``).
        finalize_on_train_end (`bool`, *optional*, defaults to `False`): structured pruning: call
            :meth:`finalize` when training ends, so ``trainer.save_model()`` writes the model with the pruned heads
            and neurons removed (the masked weights are exactly zero, so the outputs do not change). Evaluating or
            training further after that uses the smaller model; the optimizer's state no longer fits it.

    Attributes:
        pruner (`Pruner`): masks and scores (set when training begins).
        history (`list[dict]`): ``{"step", "target", **stats}`` after every mask update.
    """

    def __init__(self, config: Optional[Union[PruneConfig, dict]] = None, *, finalize_on_train_end: bool = False,
                 **kwargs: Any):
        if isinstance(config, dict):
            config = PruneConfig.from_dict({**config, **kwargs})
        elif config is None:
            config = PruneConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a PruneConfig or keyword arguments, not both")
        config.validate()
        self.config = config
        self.finalize_on_train_end = bool(finalize_on_train_end)
        self.pruner: Optional[Pruner] = None
        self.history: list[dict] = []
        self._bounds = (0, 0)

    # ExportableState: Trainer stores this in checkpoints (restored with restore_callback_states_from_checkpoint)
    def state(self) -> dict:
        return {"args": {"config": self.config.to_dict(), "finalize_on_train_end": self.finalize_on_train_end},
                "attributes": {"history": self.history}}

    def _maybe_update(self, step: int) -> None:
        start, end = self._bounds
        schedule = "oneshot" if self.config.granularity == "nm" else self.config.schedule
        if not is_update_step(step, schedule, start, end, self.config.frequency):
            return
        progress = sparsity_at(step, 1.0, schedule, start, end)
        self.pruner.update(progress)
        entry = {"step": step, "target": round(progress, 6), **self.pruner.stats()}
        self.history.append(entry)
        logger.info("pruning step %d: %s", step, ", ".join(f"{k}={v}" for k, v in entry.items() if k != "step"))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("PruningCallback needs the model (Trainer passes it)")
        self.pruner = Pruner(model, self.config)
        max_steps = max(int(state.max_steps or 0), 1)
        start = resolve_step(self.config.start_step, max_steps)
        end = max(resolve_step(self.config.end_step, max_steps), start)
        self._bounds = (start, end)
        if state.global_step > 0:  # resumed: the checkpoint's zeros are the masks
            self.pruner.load_masks_from_weights()
            self._load_scores(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            self.pruner.apply()
        else:
            self._maybe_update(0)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.pruner.accumulate()

    def on_step_end(self, args, state, control, **kwargs):
        self._maybe_update(state.global_step)
        self.pruner.apply()  # after every optimizer step: pruned weights stay zero

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.pruner is not None and "loss" in logs:
            stats = self.pruner.stats()
            logs.update(stats)
            if state.log_history:
                state.log_history[-1].update(stats)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.finalize_on_train_end and self.pruner is not None:
            remaining = self.finalize(model)
            if remaining:
                logger.info("pruning: removed the pruned units at the end of training; remaining per layer: %s",
                            remaining)

    def on_save(self, args, state, control, **kwargs):
        if self.pruner is None or not self.pruner.scores:
            return
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            save_file({k: v.contiguous().cpu() for k, v in self.pruner.scores.items()}, str(folder / SCORES_FILE))

    def _load_scores(self, folder: Path) -> None:
        if not self.pruner.scores:
            return
        path = folder / SCORES_FILE
        if not path.is_file():
            logger.warning("pruning: resumed without %s in %s; %s scores restart from zero", SCORES_FILE, folder,
                           self.config.importance)
            return
        from safetensors.torch import load_file

        saved = load_file(str(path))
        for key, value in saved.items():
            if key in self.pruner.scores and value.shape == self.pruner.scores[key].shape:
                self.pruner.scores[key] = value.to(self.pruner.scores[key].device)

    def finalize(self, model: Optional[nn.Module] = None) -> dict:
        """Structured pruning: physically remove the pruned heads and neurons from ``model`` (default: the trained
        one) and record the new shapes in its config. Returns the per-layer remaining counts (``{}`` for
        unstructured / N:M pruning, whose shapes stay dense)."""
        if self.config.granularity != "structured":
            return {}
        model = model if model is not None else self.pruner.model
        pruned = pruned_units(model)
        return prune_structured_(model, heads=pruned["heads"], ffn=pruned["ffn"])
