"""``quantize`` stage config (light: no torch import)."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, Optional, Union

from ..data.tasks import TaskSpec, check_corpus, is_text_corpus, named_corpus
from ..config import added_field
from ..recipe import StageConfig
from .schemes import LINEAR_SCHEMES  # noqa: F401 - importable from here, as before the scheme table
from .schemes import SCHEME_NAMES, SCHEMES, WEIGHT_ONLY_SCHEMES

DEFAULT_EXCLUDE = (r"(^|\.)classifier(\.|$)", r"(^|\.)score$", r"(^|\.)lm_head$")


@dataclasses.dataclass
class QuantizeConfig(StageConfig):
    """Quantize ``model`` and save it so that ``from_pretrained`` (after ``import hf_optim``) restores it.

    Args:
        model (`str`): an earlier stage, ``builtin:<name>`` or a model directory.
        scheme (`str`, *optional*, defaults to ``"int8_dynamic"``): ``int8_dynamic`` (int8 weights per
            channel, activations quantized at run time), ``int8_static`` (activation ranges from
            calibration), ``int8_qat`` (fine-tune with fake quantization, then convert to static int8),
            ``int8_weight_only`` / ``int4_weight_only`` (group-wise scales; int4 packed two per byte),
            ``fp16`` or ``bf16`` (cast).
        group_size (`int`, *optional*): weight-only schemes: input features per scale, a power of two (must divide
            the input size of every target Linear, else quantizing raises naming the layers: exclude them or pick
            another size; with ``partial_groups`` any size >= 2). Unset: the scheme's default (int4: 32; int8: one
            scale per output channel).
        partial_groups (`bool`, *optional*, defaults to `False`): let the last group of a row be shorter where
            ``group_size`` does not divide the input size (group 128 on 576 inputs: 4 x 128 + 64).
        symmetric (`bool`, *optional*, defaults to `True`): weight-only schemes: ``False`` stores a zero point
            per group next to its scale (asymmetric range, min..max of the group).
        integer_zero_points (`bool`, *optional*, defaults to `False`): asymmetric weight-only schemes: keep every
            zero point an integer, the grid ONNX Runtime's ``MatMulNBits`` holds exactly (export ``method:
            checkpoint``). Round to nearest widens a group's range to include 0 and rounds the zero point before
            the values are chosen; GPTQ does the same for each group's grid, its refit keeps the zero points it
            rounds only when the output error still drops, and the tuning passes move the scales alone.
        method (`str`, *optional*, defaults to ``"rtn"``): weight-only schemes: ``rtn`` (round to nearest) or
            ``gptq`` (layer by layer, each Linear's rounding error is compensated on its not yet quantized
            input columns using second-order statistics of calibration activations; causal LMs).
        calibration_text (`str`, *optional*): ``gptq``: a text corpus for :func:`hf_optim.data.load_text`
            (``"bbc-news"``) whose ``calibration_split`` is cut into ``calibration_samples`` sequences of
            ``max_length`` tokens. Unset: ``corpus``.
        gptq_damp (`float`, *optional*, defaults to 0.01): ``gptq``: fraction of the mean Hessian diagonal added
            to its diagonal (numerical stability).
        gptq_act_order (`bool`, *optional*, defaults to `True`): ``gptq``: quantize each weight's input columns
            in order of decreasing activation energy, with static groups (every group's grid from the original
            weights, so the stored layout is unchanged). On SmolLM2-135M int4 group 128 it halves the perplexity
            rise of column order (docs/benchmarks.md, "bench_lm").
        gptq_refit (`bool`, *optional*, defaults to `False`): ``gptq``: after a layer's values are chosen,
            re-solve its scales and zero points by least squares on the layer's output error.
        gptq_clip_search (`bool`, *optional*, defaults to `False`): ``gptq``: shrink each group's range to the
            factor (1.0 .. 0.7) with the least squared rounding error before quantizing.
        gptq_tune_steps (`int`, *optional*, defaults to 0): ``gptq``: then tune each decoder layer's scales and zero
            points (integer values fixed) for this many Adam steps, one calibration batch per step, so the
            layer's output follows the float model's on the float model's own hidden states; 0 skips it. On
            SmolLM2-135M int4 group 128, 40 steps roughly halve GPTQ's perplexity rise (docs/benchmarks.md, "bench_lm").
        gptq_tune_lr (`float`, *optional*, defaults to 0.005): ``gptq``: the tuning's Adam learning rate (on the
            log of each scale and on each zero point in integer steps).
        gptq_e2e_steps (`int`, *optional*, defaults to 0): ``gptq``: last, tune all the layers' scales and zero
            points together for this many Adam steps (one calibration batch each) so the model's next-token
            distribution follows the float model's (KL divergence); 0 skips it. Each step is a forward and backward
            pass of the whole model; the float model's output-head inputs on the calibration text are held in
            memory (tokens x hidden size). On SmolLM2-135M int4 group 128 after 40 layer-tuning steps, 40 steps
            took the perplexity rise from +5.8 % to +4.6 % (docs/benchmarks.md, "bench_lm").
        gptq_e2e_lr (`float`, *optional*, defaults to 0.001): ``gptq``: that tuning's Adam learning rate.
        lm_head (`bool`, *optional*, defaults to `False`): quantize the output head too; a head tied to the
            input embeddings is untied (stored separately) first. ``gptq`` solves it like the layers.
        embeddings (`str`, *optional*, defaults to ``"float"``): ``int8`` (one scale per row) or ``int4``
            (groups of ``group_size`` or 32) stores the input embedding table quantized; ``float`` keeps it.
        activations (`str`, *optional*, defaults to ``"tensor"``): ``int8_dynamic``: one activation scale per
            ``tensor`` or per ``token`` (causal LMs: per token avoids outlier-channel damage).
        include (`list[str]`, *optional*): regexes (``re.search`` on module names); only matching Linear
            layers are quantized. Empty: every Linear.
        exclude (`list[str]`, *optional*, defaults to the classifier/score/lm_head heads): regexes of
            Linear layers to keep in float.
        task (`str` or `dict`, *optional*, defaults to ``"movie-sentiment"``): a classifier's data for calibration
            and QAT.
        corpus (`str`, *optional*): a causal LM's text corpus (``bbc-news``) for calibration and the quality probe;
            defaults to the recipe's top-level ``corpus``. A ``task`` that names a corpus (how recipes named it
            before) is read as ``corpus``. Unset for a causal LM: ``bbc-news``.
        observer (`str`, *optional*, defaults to ``"minmax"``): static int8 activation ranges: ``minmax``
            (overall min/max), ``moving_average`` (mean of per-batch min/max) or ``percentile``.
        percentile (`float`, *optional*, defaults to 99.99): the ``percentile`` observer's upper percentile
            (the lower one is ``100 - percentile``).
        calibration_split (`str`, *optional*, defaults to ``"train"``): split the calibration texts come from.
        calibration_samples (`int`, *optional*, defaults to 256): texts used to calibrate (bounds memory:
            only per-module running statistics are kept).
        batch_size (`int`, *optional*, defaults to 32): calibration / QAT batch size.
        max_length (`int`, *optional*, defaults to 128): tokens per text.
        qat_epochs (`float`, *optional*, defaults to 1.0): QAT fine-tuning epochs.
        qat_learning_rate (`float`, *optional*, defaults to 2e-5): QAT learning rate.
        qat_max_train_samples (`int`, *optional*): QAT on N training examples only (stratified by label, the
            task's seed).
        qat_freeze_observers (`float`, *optional*, defaults to 0.5): fraction of QAT steps after which the
            activation ranges are frozen (the remaining steps adapt the weights to fixed ranges).
    """

    kind = "quantize"
    version = 1
    removed = {"gptq_tune_rounding_lr": "learned rounding offsets did not lower perplexity; the layer tuning keeps "
                                        "GPTQ's integer values"}

    model: str
    scheme: Literal[SCHEME_NAMES] = "int8_dynamic"
    group_size: Optional[int] = None
    partial_groups: bool = False
    symmetric: bool = True
    integer_zero_points: bool = added_field(False)
    method: Literal["rtn", "gptq"] = "rtn"
    calibration_text: Optional[str] = None
    gptq_damp: float = 0.01
    gptq_act_order: bool = added_field(True, legacy=False)  # GPTQ ran in column order before the field existed
    gptq_refit: bool = added_field(False)
    gptq_clip_search: bool = added_field(False)
    gptq_tune_steps: int = added_field(0)
    gptq_tune_lr: float = added_field(5e-3)
    gptq_e2e_steps: int = added_field(0)
    gptq_e2e_lr: float = added_field(1e-3)
    lm_head: bool = False
    embeddings: Literal["float", "int8", "int4"] = "float"
    activations: Literal["tensor", "token"] = "tensor"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    task: Union[str, dict] = "movie-sentiment"
    corpus: Optional[str] = added_field(None)
    observer: Literal["minmax", "moving_average", "percentile"] = "minmax"
    percentile: float = 99.99
    calibration_split: Literal["train", "validation"] = "train"
    calibration_samples: int = 256
    batch_size: int = 32
    max_length: int = 128
    qat_epochs: float = 1.0
    qat_learning_rate: float = 2e-5
    qat_max_train_samples: Optional[int] = None
    qat_freeze_observers: float = 0.5

    def validate(self) -> None:
        if not is_text_corpus(self.task):  # a text corpus serves causal LMs
            TaskSpec.coerce(self.task)
        check_corpus(self)
        check_corpus(self, "calibration_text")
        weight_only = SCHEMES[self.scheme].weight_only
        if self.group_size is not None:
            if not weight_only:
                self._fail("group_size", f"only applies to weight-only schemes, not {self.scheme!r}; remove it")
            # any size >= 2 works with a shorter last group; without one, a power of two divides most widths
            if self.group_size < 2 or (self.group_size & (self.group_size - 1) and not self.partial_groups):
                self._fail("group_size", "must be a power of two >= 2 (e.g. 32, 64, 128), any size >= 2 with "
                                         "partial_groups, or unset")
        if self.partial_groups and not (weight_only and self.group_size):
            self._fail("partial_groups", "applies to weight-only schemes with a group_size")
        if not self.symmetric and not weight_only:
            self._fail("symmetric", f"zero points apply to weight-only schemes, not {self.scheme!r}; remove it")
        if self.integer_zero_points and self.symmetric:
            self._fail("integer_zero_points", "applies to asymmetric grids (symmetric: false); remove it")
        if self.method == "gptq" and not weight_only:
            self._fail("method", f"gptq quantizes weights only ({' / '.join(WEIGHT_ONLY_SCHEMES)}), "
                                 f"not {self.scheme!r}")
        if self.activations != "tensor" and self.scheme != "int8_dynamic":
            self._fail("activations", f"applies to int8_dynamic only, not {self.scheme!r}; remove it")
        if not 0 < self.gptq_damp < 1:
            self._fail("gptq_damp", "must be in (0, 1), e.g. 0.01")
        if self.gptq_tune_steps < 0:
            self._fail("gptq_tune_steps", "must be >= 0 (0 skips tuning), e.g. 40")
        if not 0 < self.gptq_tune_lr < 1:
            self._fail("gptq_tune_lr", "must be in (0, 1), e.g. 0.005")
        if self.gptq_e2e_steps < 0:
            self._fail("gptq_e2e_steps", "must be >= 0 (0 skips it), e.g. 40")
        if not 0 < self.gptq_e2e_lr < 1:
            self._fail("gptq_e2e_lr", "must be in (0, 1), e.g. 0.001")
        if self.method != "gptq":
            for f in ("gptq_refit", "gptq_clip_search", "gptq_tune_steps", "gptq_e2e_steps"):
                if getattr(self, f):
                    self._fail(f, "applies to method: gptq only; remove it or set method: gptq")
        for f in ("include", "exclude"):
            for pattern in getattr(self, f):
                try:
                    re.compile(pattern)
                except re.error as e:
                    self._fail(f, f"{pattern!r} is not a valid regular expression ({e})")
        if not 50 < self.percentile <= 100:
            self._fail("percentile", "must be in (50, 100], e.g. 99.99")
        for f in ("calibration_samples", "batch_size", "max_length"):
            if getattr(self, f) < 1:
                self._fail(f, "must be >= 1")
        if self.qat_epochs <= 0:
            self._fail("qat_epochs", "must be > 0")
        if not 0 < self.qat_learning_rate < 1:
            self._fail("qat_learning_rate", "must be in (0, 1), e.g. 2e-5")
        if self.qat_max_train_samples is not None and self.qat_max_train_samples < 1:
            self._fail("qat_max_train_samples", "must be >= 1 or unset")
        if not 0 <= self.qat_freeze_observers <= 1:
            self._fail("qat_freeze_observers", "must be in [0, 1]")

    def fingerprint_dict(self) -> dict:
        out = super().fingerprint_dict()
        if self.method != "gptq":  # the GPTQ settings do nothing for round-to-nearest
            for f in ("gptq_act_order", "gptq_refit", "gptq_clip_search", "gptq_tune_steps", "gptq_tune_lr",
                      "gptq_e2e_steps", "gptq_e2e_lr"):
                out.pop(f, None)
            return out
        for steps, lr in (("gptq_tune_steps", "gptq_tune_lr"), ("gptq_e2e_steps", "gptq_e2e_lr")):
            if not getattr(self, steps):  # no tuning: its learning rate does nothing
                out.pop(lr, None)
        return out

    @property
    def text_corpus(self) -> Optional[str]:
        """The text a causal LM is calibrated and probed on: ``calibration_text``, else the corpus the config names
        (:func:`~hf_optim.data.tasks.named_corpus`)."""
        return self.calibration_text or named_corpus(self)

    @property
    def effective_group_size(self) -> Optional[int]:
        """``group_size``, or the scheme's default (int4: 32; others: one scale per output channel)."""
        return self.group_size if self.group_size is not None else SCHEMES[self.scheme].default_group_size

    @property
    def embedding_bits(self) -> Optional[int]:
        """Bits of the quantized input embedding table (``None``: it stays float)."""
        return None if self.embeddings == "float" else SCHEMES[f"{self.embeddings}_weight_only"].weight_bits

    @property
    def embedding_group_size(self) -> Optional[int]:
        """int4 embedding rows need groups (the Linear layers', or the int4 default); int8 rows one scale each."""
        if self.embeddings != "int4":
            return None
        return self.effective_group_size or SCHEMES["int4_weight_only"].default_group_size
