"""Configs of the ``student`` and ``distill`` stages (light: no torch import)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional, Union

from ..data.tasks import TaskSpec
from ..errors import ConfigError
from ..recipe import StageConfig
from ..training import TeacherTrainingConfig, validate_training_fields

__all__ = ["DistillConfig", "StudentConfig"]

LAYER_CHOICES = ("uniform", "first", "last")


def _check_layer_map(cfg, field: str) -> None:
    pairs = getattr(cfg, field)
    if pairs is None:
        return
    if not pairs:
        cfg._fail(field, "must be a non-empty list of [student_layer, teacher_layer] pairs or unset (automatic)")
    for p in pairs:
        if len(p) != 2 or min(p) < 0:
            cfg._fail(field, f"entry {p!r} is not a [student_layer, teacher_layer] pair of indices >= 0 "
                             "(0 = embeddings, i = output of layer i)")


@dataclasses.dataclass
class DistillConfig(TeacherTrainingConfig):
    """Knowledge distillation of a student from a teacher with :class:`~hf_optim.distill.DistillationTrainer`.

    Used both as a recipe stage (``kind: distill``; then ``model`` and ``teacher`` are required) and from Python
    as the loss configuration of ``DistillationTrainer(..., distill_config=DistillConfig(temperature=4))``.

    The training loss is ``alpha * soft + (1 - alpha) * hard + hidden_weight * hidden + attention_weight * attention``
    where ``soft = KL(teacher/T || student/T) * T^2`` and ``hard`` is the student's own loss on the labels.

    Args:
        model (`str`, *optional*): the student to train: an earlier stage (e.g. ``student``), ``builtin:<name>`` or
            a model directory. Required in recipes.
        teacher (`str`, *optional*): the teacher: an earlier stage, ``builtin:<name>`` or a directory. Required in
            recipes.
        task (`str` or `dict`, *optional*, defaults to ``"movie-sentiment"``): see :class:`TaskSpec` (stage only).
        temperature (`float`, *optional*, defaults to 2.0): softmax temperature ``T`` of the soft loss.
        alpha (`float`, *optional*, defaults to 0.5): weight of the soft loss; ``1 - alpha`` weighs the hard loss.
            ``alpha=1`` is pure distillation and needs no labels.
        hidden_weight (`float`, *optional*, defaults to 0.0): weight of the hidden-state MSE (0 disables it).
        hidden_layer_map (`list` of `[int, int]`, *optional*): ``[student, teacher]`` hidden-state indices
            (0 = embeddings, ``i`` = output of layer ``i``). Default: ``0 -> 0`` and student layer ``i`` ->
            teacher layer ``round(i * L_teacher / L_student)``. A learned projection maps the student's width to
            the teacher's when they differ.
        attention_weight (`float`, *optional*, defaults to 0.0): weight of the attention-distribution KL
            (MiniLM/TinyBERT style; needs equal head counts and eager attention).
        attention_layer_map (`list` of `[int, int]`, *optional*): ``[student, teacher]`` layer numbers (1-based);
            default: student layer ``i`` -> teacher layer ``round(i * L_teacher / L_student)``.
        task_type (`str`, *optional*, defaults to ``"auto"``): ``sequence`` (one logit vector per example),
            ``token`` (per-token logits, e.g. NER) or ``causal_lm`` (next-token logits; positions shifted);
            ``auto`` decides from the logits' shape and the model class.
        kl_chunk_size (`int`, *optional*, defaults to 2048): token positions per chunk of the token-level KL; the
            chunks are recomputed in backward, so peak memory grows with ``chunk * vocab``, not ``tokens * vocab``.
        cache_teacher_outputs (`bool`, *optional*, defaults to `False`): compute the teacher's logits once per
            example (keyed by the example's token content) and reuse them in later epochs. Only for the logit
            loss: not with ``hidden_weight`` / ``attention_weight`` > 0. Costs ``examples x logits`` host memory.
        epochs, learning_rate, batch_size, max_length, weight_decay, warmup_ratio, max_train_samples,
        max_eval_samples: training settings of the stage, as in :class:`~hf_optim.finetune.FinetuneConfig`.
    """

    kind = "distill"
    version = 1

    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0
    hidden_layer_map: Optional[list[list[int]]] = None
    attention_weight: float = 0.0
    attention_layer_map: Optional[list[list[int]]] = None
    task_type: Literal["auto", "sequence", "token", "causal_lm"] = "auto"
    kl_chunk_size: int = 2048
    cache_teacher_outputs: bool = False
    epochs: float = dataclasses.field(default=3.0, kw_only=True)  # + the other TrainingFields

    def validate(self) -> None:
        TaskSpec.coerce(self.task)
        if self.temperature <= 0:
            self._fail("temperature", "must be > 0 (typical: 1 to 8)")
        if not 0 <= self.alpha <= 1:
            self._fail("alpha", "must be in [0, 1]: 1 = soft loss only, 0 = hard loss only")
        for f in ("hidden_weight", "attention_weight"):
            if getattr(self, f) < 0:
                self._fail(f, "must be >= 0 (0 disables the loss)")
        _check_layer_map(self, "hidden_layer_map")
        _check_layer_map(self, "attention_layer_map")
        if self.attention_layer_map and min(min(p) for p in self.attention_layer_map) < 1:
            self._fail("attention_layer_map", "layers are numbered from 1")
        if self.kl_chunk_size < 1:
            self._fail("kl_chunk_size", "must be >= 1")
        if self.cache_teacher_outputs and (self.hidden_weight > 0 or self.attention_weight > 0):
            self._fail("cache_teacher_outputs", "caches logits only; set hidden_weight and attention_weight to 0 "
                                                "or disable the cache")
        validate_training_fields(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], strict: bool = False) -> "DistillConfig":
        config = super().from_dict(data, strict=strict)
        # strict = a hand-written recipe stage: fail at parse time, not after the teacher has trained
        if strict:
            for f in ("model", "teacher"):
                if getattr(config, f) is None:
                    raise ConfigError(f"distill.{f} is required in a recipe stage: an earlier stage "
                                      "(e.g. `student` / `teacher`), builtin:<name> or a model directory", field=f)
        return config


@dataclasses.dataclass
class StudentConfig(StageConfig):
    """Build a smaller student from ``model`` (the teacher) with :func:`~hf_optim.distill.make_student`.

    Args:
        model (`str`): the teacher: an earlier stage, ``builtin:<name>`` or a model directory.
        num_layers (`int`): layers of the student (at most the teacher's).
        layers (`str` or `list[int]`, *optional*, defaults to ``"uniform"``): which teacher layers initialise the
            student: ``uniform`` (evenly spaced, first and last kept), ``first``, ``last``, or explicit 0-based
            indices (``num_layers`` of them).
        hidden_size (`int`, *optional*): student width (default: the teacher's).
        num_heads (`int`, *optional*): attention heads (default: chosen to keep the teacher's head size).
        intermediate_size (`int`, *optional*): feed-forward width (default: the teacher's).
    """

    kind = "student"
    version = 1

    model: str
    num_layers: int
    layers: Union[str, list[int]] = "uniform"
    hidden_size: Optional[int] = None
    num_heads: Optional[int] = None
    intermediate_size: Optional[int] = None

    def validate(self) -> None:
        if self.num_layers < 1:
            self._fail("num_layers", "must be >= 1")
        if isinstance(self.layers, str) and self.layers not in LAYER_CHOICES:
            self._fail("layers", f"must be one of {', '.join(LAYER_CHOICES)} or a list of layer indices")
        if isinstance(self.layers, list):
            if len(self.layers) != self.num_layers:
                self._fail("layers", f"lists {len(self.layers)} layers but num_layers = {self.num_layers}")
            if len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
                self._fail("layers", "indices must be distinct and >= 0")
        for f in ("hidden_size", "num_heads", "intermediate_size"):
            if getattr(self, f) is not None and getattr(self, f) < 1:
                self._fail(f, "must be >= 1 or unset (keep the teacher's)")
