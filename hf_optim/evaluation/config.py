"""``evaluate`` stage config (light: no torch import)."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Union

from ..config import added_field
from ..data.tasks import TaskSpec, check_corpus, is_text_corpus, named_corpus
from ..recipe import StageConfig


@dataclasses.dataclass
class EvalConfig(StageConfig):
    """Evaluate ``model`` on a task split and measure its speed, size and memory.

    Args:
        model (`str`): an earlier stage, ``builtin:<name>`` or a model directory.
        task (`str` or `dict`, *optional*, defaults to ``"movie-sentiment"``): see :class:`TaskSpec`.
        split (`str`, *optional*, defaults to ``"test"``): ``test``, ``validation`` or ``train``.
        max_samples (`int`, *optional*): evaluate on N examples of the split only: a sample stratified by label,
            drawn with the task's seed (the same rows for every model); the class counts are recorded.
        batch_size (`int`, *optional*, defaults to 64): batch size for the metric pass.
        max_length (`int`, *optional*, defaults to 128): tokens per example.
        latency_samples (`int`, *optional*, defaults to 200): batch-1 calls timed for p50/p95 latency.
        throughput_batch_size (`int`, *optional*, defaults to 32): batch size of the throughput pass.
        throughput_samples (`int`, *optional*, defaults to 512): examples in the throughput pass.
        measure_memory (`bool`, *optional*, defaults to `True`): measure peak memory in a fresh process.
        threads (`int`, *optional*): torch intra-op threads while measuring (default: torch's choice).
        corpus (`str`, *optional*): the text corpus (``bbc-news``) a causal LM is measured on; defaults to the
            recipe's top-level ``corpus``. A ``task`` that names a corpus (how recipes named it before) is read as
            ``corpus``. Unset: ``bbc-news``.
        task_type (`str`, *optional*, defaults to ``"auto"``): ``sequence-classification``, ``causal-lm`` or
            ``auto`` (causal LM when ``task`` names a text corpus, or when ``corpus`` is set and the model is a
            causal LM). Causal LMs are measured with :func:`hf_optim.evaluation.lm.evaluate_lm` on the corpus and
            ``split``: perplexity, time to first token, decode tokens/s, size, peak memory.
        lm_tokens (`int`, *optional*, defaults to 4096): causal LMs: tokens of the fixed perplexity slice.
        context (`int`, *optional*, defaults to 512) / stride (`int`, *optional*, defaults to 256): causal LMs:
            the sliding perplexity window (each window scores the tokens the previous one did not).
        prompt_tokens (`int`, *optional*, defaults to 64) / new_tokens (`int`, *optional*, defaults to 32):
            causal LMs: prompt length and generated tokens per timed ``generate`` (greedy, KV cache).
        generate_batch_sizes (`list[int]`, *optional*, defaults to ``[1, 8]``): causal LMs: batch sizes of the
            generation timing (empty skips it).
        generate_repeats (`int`, *optional*, defaults to 3): causal LMs: timed runs per measurement (median).
    """

    kind = "evaluate"
    produces = None
    scores_task = True
    version = 1

    model: str
    task: Union[str, dict] = "movie-sentiment"
    split: Literal["test", "validation", "train"] = "test"
    max_samples: Optional[int] = None
    batch_size: int = 64
    max_length: int = 128
    latency_samples: int = 200
    throughput_batch_size: int = 32
    throughput_samples: int = 512
    measure_memory: bool = True
    threads: Optional[int] = None
    task_type: Literal["auto", "sequence-classification", "causal-lm"] = "auto"
    lm_tokens: int = 4096
    context: int = 512
    stride: int = 256
    prompt_tokens: int = 64
    new_tokens: int = 32
    generate_batch_sizes: tuple[int, ...] = (1, 8)
    generate_repeats: int = 3
    corpus: Optional[str] = added_field(None)

    @property
    def text_corpus(self) -> str:
        """The text a causal LM is measured on."""
        return named_corpus(self) or "bbc-news"

    def validate(self) -> None:
        if not is_text_corpus(self.task):
            TaskSpec.coerce(self.task)
        elif self.task_type == "sequence-classification":
            self._fail("task", f"{self.task!r} is a text corpus for causal LMs, not a classification task")
        check_corpus(self)
        for f in ("lm_tokens", "context", "stride", "prompt_tokens", "generate_repeats"):
            if getattr(self, f) < 1:
                self._fail(f, "must be >= 1")
        if self.stride > self.context:
            self._fail("stride", f"must be <= context ({self.context}): windows may overlap, not leave gaps")
        if self.new_tokens < 2:
            self._fail("new_tokens", "must be >= 2 (the first token is timed separately)")
        if any(b < 1 for b in self.generate_batch_sizes):
            self._fail("generate_batch_sizes", "every batch size must be >= 1")
        for f in ("batch_size", "max_length", "throughput_batch_size"):
            if getattr(self, f) < 1:
                self._fail(f, "must be >= 1")
        for f in ("latency_samples", "throughput_samples"):
            if getattr(self, f) < 0:
                self._fail(f, "must be >= 0 (0 skips the measurement)")
        if self.max_samples is not None and self.max_samples < 1:
            self._fail("max_samples", "must be >= 1 or unset")
        if self.threads is not None and self.threads < 1:
            self._fail("threads", "must be >= 1 or unset")
