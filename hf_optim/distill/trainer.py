"""``DistillationTrainer``: a ``transformers.Trainer`` whose only change is the loss.

Turning a fine-tuning script into a distillation script is one class name and a teacher::

    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                                  distill_config=DistillConfig(temperature=2.0, alpha=0.5))
    trainer.train()

Only public hooks are overridden: ``compute_loss`` (the loss), ``create_optimizer`` (adds the learned
hidden-state projection, if any, as one more parameter group of the optimizer Trainer built), ``log``
(adds the separate loss terms to the logged metrics) and ``evaluate`` (reports the student's own task loss as
``eval_task_loss`` next to the distillation loss ``eval_loss``). Trainer's loop, data handling, checkpointing
and distributed setup are untouched.

The teacher is a plain attribute of the trainer, not of the model: Trainer never wraps it (no DDP, no
gradient sync), never hands it to the optimizer and never saves it in checkpoints. It is frozen, in eval mode
and on the student's device.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from transformers import Trainer

from .config import DistillConfig
from .losses import attention_kl, default_layer_map, hidden_mse, soft_kl, token_mask

__all__ = ["DistillationTrainer"]

logger = logging.getLogger("hf_optim")
_KEY_FIELDS = ("input_ids", "token_type_ids")


def _width(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "dim"))


class DistillationTrainer(Trainer):
    """``Trainer`` that trains ``model`` (the student) to imitate ``teacher_model``.

    Args:
        teacher_model (`torch.nn.Module` or `str`): the teacher (same tokenizer and label set / vocabulary as the
            student), or its directory (loaded with the class its ``config.json`` names). It is frozen, put in eval
            mode and moved to the student's device.
        distill_config (`DistillConfig`, *optional*): temperature, ``alpha``, intermediate losses, caching (see
            :class:`~hf_optim.distill.DistillConfig`; its training fields are ignored here, ``args`` rules).
        *args, **kwargs: everything ``transformers.Trainer`` accepts.

    Attributes:
        teacher (`torch.nn.Module`): the frozen teacher.
        teacher_forward_calls (`int`): how many batches the teacher has run on (cache misses included).
        distill_projection (`torch.nn.Linear` or `None`): learned student->teacher width map of the hidden loss.
    """

    def __init__(self, *args: Any, teacher_model: Optional[nn.Module] = None,
                 distill_config: Optional[DistillConfig] = None, **kwargs: Any):
        if teacher_model is None:
            raise ValueError("DistillationTrainer needs teacher_model=<the teacher nn.Module>")
        if distill_config is not None and not isinstance(distill_config, DistillConfig):
            raise TypeError(f"distill_config must be a DistillConfig, got {type(distill_config).__name__}")
        if isinstance(teacher_model, (str, os.PathLike)):
            from ..training import load_pretrained

            teacher_model = load_pretrained(Path(teacher_model))
        super().__init__(*args, **kwargs)
        self.distill_config = distill_config or DistillConfig()
        # Our loss is a per-micro-batch mean; this makes Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.teacher = teacher_model.eval().requires_grad_(False).to(self.args.device)
        self.teacher_forward_calls = 0
        self._cache: Optional[dict[bytes, torch.Tensor]] = {} if self.distill_config.cache_teacher_outputs else None
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._maps: dict[str, list[list[int]]] = {}
        self._task_loss: Optional[list[torch.Tensor]] = None  # [loss x batch size, examples] per batch, in evaluate
        self._task_prefix = "eval"
        self.distill_projection: Optional[nn.Linear] = None
        cfg = self.distill_config
        if cfg.hidden_weight > 0 and _width(self.model) != _width(self.teacher):
            gen = torch.Generator().manual_seed(self.args.seed)  # identical initialisation on every rank
            proj = nn.Linear(_width(self.model), _width(self.teacher))
            with torch.no_grad():
                bound = 1.0 / _width(self.model) ** 0.5
                proj.weight.copy_(torch.empty_like(proj.weight).uniform_(-bound, bound, generator=gen))
                proj.bias.zero_()
            self.distill_projection = proj.to(self.args.device)
            if self.args.world_size > 1:
                # Not part of the DDP-wrapped model: average its gradients across ranks ourselves.
                for p in self.distill_projection.parameters():
                    p.register_hook(self._all_reduce_grad)

    @staticmethod
    def _all_reduce_grad(grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            grad = grad.clone()
            dist.all_reduce(grad)
            grad /= dist.get_world_size()
        return grad

    # -- public hooks --------------------------------------------------------------------------------
    def create_optimizer(self, *args: Any, **kwargs: Any):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.distill_projection is not None:
            have = {id(p) for group in optimizer.param_groups for p in group["params"]}
            new = [p for p in self.distill_projection.parameters() if id(p) not in have]
            if new:
                optimizer.add_param_group({"params": new, "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.distill_config
        training = model.training
        need_hidden = cfg.hidden_weight > 0 and training
        need_attn = cfg.attention_weight > 0 and training
        extra = {}
        if need_hidden:
            extra["output_hidden_states"] = True
        if need_attn:
            extra["output_attentions"] = True
        labels = inputs.get("labels")
        if cfg.alpha < 1 and labels is None:
            raise ValueError(f"alpha = {cfg.alpha} mixes in the hard-label loss but the batch has no `labels`; "
                             "pass labelled data or use alpha=1 (pure distillation)")
        # evaluating: the student also computes its own task loss (what a plain Trainer reports as eval_loss)
        task_loss = self._task_loss is not None and not training and labels is not None
        student_inputs = inputs if cfg.alpha < 1 or task_loss else {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**student_inputs, **extra)
        if task_loss and outputs.get("loss") is not None:
            self._add_task_loss(outputs.loss, inputs)
        s_logits = outputs.logits
        kind = self._task_type(model, s_logits)
        t_logits, t_out = self._teacher_logits(inputs, extra, kind, s_logits)

        mask = None
        if kind != "sequence":
            mask = token_mask(s_logits.shape[:2], labels, inputs.get("attention_mask"), causal=kind == "causal_lm",
                              device=s_logits.device)
        terms: dict[str, torch.Tensor] = {}
        if cfg.alpha > 0:
            terms["soft"] = soft_kl(s_logits, t_logits, cfg.temperature, mask,
                                    cfg.kl_chunk_size if kind != "sequence" else None)
        if cfg.alpha < 1:
            if outputs.get("loss") is None:
                raise ValueError("the student returned no loss for the given labels; the hard loss needs a model "
                                 "head that computes one (…ForSequenceClassification, …ForCausalLM …)")
            terms["hard"] = outputs.loss
        attn_mask = inputs.get("attention_mask")
        if need_hidden:
            layer_map = self._layer_map("hidden", cfg.hidden_layer_map, len(outputs.hidden_states) - 1,
                                        len(t_out.hidden_states) - 1, with_embeddings=True)
            terms["hidden"] = hidden_mse(outputs.hidden_states, t_out.hidden_states, layer_map,
                                         self.distill_projection, attn_mask)
        if need_attn:
            if not outputs.get("attentions") or not t_out.get("attentions") or outputs.attentions[0] is None:
                raise ValueError("attention_weight > 0 needs attention probabilities: load both models with "
                                 "attn_implementation='eager'")
            layer_map = self._layer_map("attention", cfg.attention_layer_map, len(outputs.attentions),
                                        len(t_out.attentions), with_embeddings=False)
            terms["attention"] = attention_kl(outputs.attentions, t_out.attentions, layer_map, attn_mask)

        weights = {"soft": cfg.alpha, "hard": 1 - cfg.alpha, "hidden": cfg.hidden_weight,
                   "attention": cfg.attention_weight}
        loss = sum(weights[k] * v for k, v in terms.items())
        if training:
            for k, v in terms.items():
                v = v.detach().float()
                self._sums[k] = self._sums[k] + v if k in self._sums else v
            self._count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._task_loss is not None and f"{self._task_prefix}_loss" in logs:
            value = self._mean_task_loss(self._task_loss)
            if value is not None:
                logs[f"{self._task_prefix}_task_loss"] = value
        if "loss" in logs and self._count:
            names = sorted(self._sums)
            values = torch.stack([self._sums[k] for k in names]) / self._count
            if self.args.world_size > 1:
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    dist.all_reduce(values)
                    values /= dist.get_world_size()
            for k, v in zip(names, values.tolist()):
                logs[f"{k}_loss"] = round(v, 6)
            self._sums, self._count = {}, 0
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """``Trainer.evaluate``, plus ``{metric_key_prefix}_task_loss``: the student's own loss on the labels
        (cross-entropy for classifiers and causal LMs), averaged over examples exactly as a plain ``Trainer``
        averages ``eval_loss``, so the two runs compare. ``eval_loss`` stays the distillation loss."""
        self._task_loss, self._task_prefix = [], metric_key_prefix
        try:
            metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            key = f"{metric_key_prefix}_task_loss"
            if key not in metrics:  # log() adds it to the metrics Trainer logs (the dict it returns)
                value = self._mean_task_loss(self._task_loss)
                if value is not None:
                    metrics[key] = value
        finally:
            self._task_loss = None
        return metrics

    # -- helpers -------------------------------------------------------------------------------------
    def _add_task_loss(self, loss: torch.Tensor, inputs) -> None:
        from transformers.trainer_pt_utils import find_batch_size

        n = find_batch_size(inputs) or 1
        self._task_loss.append(torch.stack([loss.detach().float().mean() * n,
                                            torch.tensor(float(n), device=loss.device)]))

    def _mean_task_loss(self, sums: list[torch.Tensor]) -> Optional[float]:
        total = torch.stack(sums).sum(0) if sums else torch.zeros(2, device=self.args.device)
        if self.args.world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                total = total.to(self.args.device)
                dist.all_reduce(total)  # every rank calls evaluate, so every rank reaches this
        loss_sum, count = total.tolist()
        return loss_sum / count if count else None

    def _task_type(self, model, logits: torch.Tensor) -> str:
        if self.distill_config.task_type != "auto":
            return self.distill_config.task_type
        if logits.dim() == 2:
            return "sequence"
        name = type(self.accelerator.unwrap_model(model)).__name__
        return "causal_lm" if name.endswith(("ForCausalLM", "LMHeadModel")) else "token"

    def _layer_map(self, what: str, given, n_student: int, n_teacher: int, with_embeddings: bool):
        if what not in self._maps:
            layer_map = [list(p) for p in given] if given else default_layer_map(n_student, n_teacher,
                                                                                  with_embeddings)
            low = 0 if with_embeddings else 1
            for s, t in layer_map:
                if not (low <= s <= n_student and low <= t <= n_teacher):
                    raise ValueError(f"{what}_layer_map entry [{s}, {t}] is out of range: the student has "
                                     f"{n_student} layers and the teacher {n_teacher} (valid indices {low}..)")
            self._maps[what] = layer_map
        return self._maps[what]

    def _teacher_forward(self, inputs, extra):
        self.teacher_forward_calls += 1
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            return self.teacher(**teacher_inputs, **extra)

    def _row_keys(self, inputs) -> list[bytes]:
        """One key per example: its real tokens (and token types) plus its left-padding offset."""
        fields = [inputs[k].detach().cpu() for k in _KEY_FIELDS if k in inputs]
        am = inputs.get("attention_mask")
        am = am.detach().cpu().bool() if am is not None else torch.ones_like(fields[0], dtype=torch.bool)
        keys = []
        for r in range(am.shape[0]):
            m = am[r]
            h = hashlib.blake2b(digest_size=16)
            h.update(int(m.nonzero()[0, 0] if m.any() else 0).to_bytes(4, "little"))
            for f in fields:
                h.update(f[r][m].numpy().tobytes())
            keys.append(h.digest())
        return keys

    def _teacher_logits(self, inputs, extra, kind: str, s_logits: torch.Tensor):
        if self._cache is None:
            out = self._teacher_forward(inputs, extra)
            return out.logits, out
        keys = self._row_keys(inputs)
        am = inputs.get("attention_mask")
        rows = None if kind == "sequence" else (am.bool() if am is not None else
                                                 torch.ones(s_logits.shape[:2], dtype=torch.bool,
                                                            device=s_logits.device))
        if all(k in self._cache for k in keys):
            if kind == "sequence":
                return torch.stack([self._cache[k] for k in keys]).to(s_logits.device), None
            logits = s_logits.new_zeros(s_logits.shape, dtype=torch.float32)
            for r, k in enumerate(keys):
                logits[r, rows[r]] = self._cache[k].to(logits.device, torch.float32)
            return logits, None
        out = self._teacher_forward(inputs, extra)
        logits = out.logits.detach()
        for r, k in enumerate(keys):
            self._cache[k] = (logits[r] if kind == "sequence" else logits[r, rows[r]]).float().cpu()
        return logits, out
