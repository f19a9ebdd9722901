"""``prune`` stage config, also the configuration of :class:`~hf_optim.prune.PruningCallback` (light: no torch)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from ..data.tasks import TaskSpec
from ..errors import ConfigError
from ..training import TeacherTrainingConfig, validate_training_fields

__all__ = ["PruneConfig", "DEFAULT_EXCLUDE"]

DEFAULT_EXCLUDE = (r"(^|\.)classifier(\.|$)", r"(^|\.)pooler\.", r"(^|\.)score$", r"(^|\.)lm_head$")
GRADIENT_IMPORTANCE = ("movement", "taylor")


@dataclasses.dataclass
class PruneConfig(TeacherTrainingConfig):
    """Prune a model while it trains (:class:`~hf_optim.prune.PruningCallback`), optionally distilling from a teacher.

    Three granularities:

    * ``unstructured``: individual weights of the targeted Linear layers are zeroed (``sparsity`` of them);
    * ``nm``: in every run of ``m`` consecutive input weights, ``m - n`` are zeroed (e.g. 2:4);
    * ``structured``: whole attention heads (``heads``: the fraction removed; for grouped-query attention whole
      key/value groups) and feed-forward neurons (``ffn``) are masked, then physically removed when training
      ends (``finalize``), so the matrices really shrink and the model really gets faster.

    Unstructured and N:M sparsity keep the dense shapes: they make nothing faster on CPU without sparse kernels
    (the stage reports this); structured pruning does.

    Args:
        model (`str`, *optional*): the model to prune: an earlier stage, ``builtin:<name>`` or a directory.
            Required in recipes.
        teacher (`str`, *optional*): distil from this model while pruning (recovery); unset: train on the labels.
        task (`str` or `dict`, *optional*, defaults to ``"movie-sentiment"``): the training task.
        granularity (`str`, *optional*, defaults to ``"structured"``): ``unstructured``, ``nm`` or ``structured``.
        importance (`str`, *optional*, defaults to ``"l1"``): ``l1`` / ``l2`` (weight magnitude), ``movement``
            (Sanh et al. 2020: scores accumulate ``-w * grad``, weights moving towards zero are pruned) or
            ``taylor`` (first-order Taylor, accumulated ``|w * grad|``). The gradient-based ones need training
            steps before the first pruning step (``start_step`` > 0).
        sparsity (`float`, *optional*, defaults to 0.5): ``unstructured``: fraction of weights zeroed in each
            targeted layer (``per_layer``) or over all of them (``global``).
        targets (`dict`, *optional*): ``unstructured``: ``{regex: sparsity}`` overriding ``sparsity`` for the
            Linear layers whose name matches (first match wins), e.g. ``{"attention": 0.3, "intermediate": 0.7}``.
        include (`list[str]`, *optional*): regexes of the Linear layers to prune (unstructured / nm); empty:
            every Linear not excluded.
        exclude (`list[str]`, *optional*): regexes of Linear layers never pruned (default: classifier, pooler and
            LM heads).
        heads (`float`, *optional*, defaults to 0.0): ``structured``: fraction of attention heads removed.
        ffn (`float`, *optional*, defaults to 0.0): ``structured``: fraction of feed-forward neurons removed.
        n (`int`, *optional*, defaults to 2) / m (`int`, *optional*, defaults to 4): ``nm``: keep ``n`` of every
            ``m`` consecutive input weights.
        schedule (`str`, *optional*, defaults to ``"cubic"``): ``oneshot`` (everything at ``start_step``),
            ``linear`` or ``cubic`` (Zhu & Gupta 2017: fast early, slow near the end) from ``start_step`` to
            ``end_step``. ``nm`` is always one-shot.
        start_step (`float`, *optional*, defaults to 0.0) / end_step (`float`, *optional*, defaults to 0.7):
            values in [0, 1] are fractions of the training steps, larger values are step numbers.
        frequency (`int`, *optional*, defaults to 10): steps between two mask updates.
        ranking (`str`, *optional*, defaults to ``"per_layer"``): ``per_layer`` prunes every layer by the same
            fraction; ``global`` ranks units across layers (every layer keeps at least one head and one neuron).
        finalize (`bool`, *optional*, defaults to `True`): ``structured``: physically remove the pruned heads and
            neurons when training ends (the saved model reloads with ``from_pretrained`` after
            ``import hf_optim``).
        temperature, alpha, cache_teacher_outputs: distillation settings when ``teacher`` is set (see
            :class:`~hf_optim.distill.DistillConfig`).
        epochs, learning_rate, batch_size, max_length, weight_decay, warmup_ratio, max_train_samples,
        max_eval_samples: training settings, as in :class:`~hf_optim.finetune.FinetuneConfig`.
    """

    kind = "prune"
    version = 1

    granularity: Literal["unstructured", "nm", "structured"] = "structured"
    importance: Literal["l1", "l2", "movement", "taylor"] = "l1"
    sparsity: float = 0.5
    targets: dict[str, float] = dataclasses.field(default_factory=dict)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    heads: float = 0.0
    ffn: float = 0.0
    n: int = 2
    m: int = 4
    schedule: Literal["oneshot", "linear", "cubic"] = "cubic"
    start_step: float = 0.0
    end_step: float = 0.7
    frequency: int = 10
    ranking: Literal["per_layer", "global"] = "per_layer"
    finalize: bool = True
    temperature: float = 2.0
    alpha: float = 0.5
    cache_teacher_outputs: bool = True
    epochs: float = dataclasses.field(default=3.0, kw_only=True)  # + the other TrainingFields

    def validate(self) -> None:
        TaskSpec.coerce(self.task)
        fractions = {"sparsity": self.sparsity, "heads": self.heads, "ffn": self.ffn}
        fractions.update({f"targets[{k!r}]": v for k, v in self.targets.items()})
        for name, value in fractions.items():
            if not 0 <= value < 1:
                self._fail(name.split("[")[0], f"{name} = {value!r} must be in [0, 1) (the fraction removed)")
        for f in ("include", "exclude"):
            for pattern in list(getattr(self, f)) + (list(self.targets) if f == "include" else []):
                try:
                    re.compile(pattern)
                except re.error as e:
                    self._fail(f, f"{pattern!r} is not a valid regular expression ({e})")
        if self.granularity == "structured" and self.heads == 0 and self.ffn == 0:
            self._fail("heads", "structured pruning needs heads > 0 and/or ffn > 0 (fractions removed)")
        if self.granularity == "unstructured" and self.sparsity == 0 and not any(self.targets.values()):
            self._fail("sparsity", "unstructured pruning needs sparsity > 0 (or a targets entry > 0)")
        if self.granularity == "nm" and not 0 < self.n < self.m:
            self._fail("n", f"N:M needs 0 < n < m (keep n of every m weights), got n={self.n}, m={self.m}")
        for f in ("start_step", "end_step"):
            if getattr(self, f) < 0:
                self._fail(f, "must be >= 0 (a fraction in [0, 1] or a step number)")
        if self.schedule != "oneshot" and self.end_step <= self.start_step and self.granularity != "nm":
            self._fail("end_step", f"must be after start_step ({self.start_step}) for a {self.schedule} schedule")
        if self.frequency < 1:
            self._fail("frequency", "must be >= 1 (steps between mask updates)")
        if self.importance in GRADIENT_IMPORTANCE and self.start_step == 0:
            self._fail("start_step", f"{self.importance} importance is accumulated from gradients: start pruning "
                                     "after some training steps (e.g. start_step: 0.1)")
        if self.temperature <= 0:
            self._fail("temperature", "must be > 0")
        if not 0 <= self.alpha <= 1:
            self._fail("alpha", "must be in [0, 1]: 1 = soft loss only, 0 = hard loss only")
        validate_training_fields(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], strict: bool = False) -> "PruneConfig":
        config = super().from_dict(data, strict=strict)
        if strict and config.model is None:
            raise ConfigError("prune.model is required in a recipe stage: an earlier stage, builtin:<name> or a "
                              "model directory", field="model")
        return config
