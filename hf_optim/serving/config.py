"""``ServeConfig`` and ``VariantConfig``: what a Ray Serve application of hf_optim artifacts serves and how (data
only; :mod:`hf_optim.serving.app` builds the application)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ..config import OptimConfig
from ..inference.config import InferenceConfig

__all__ = ["ServeConfig", "VariantConfig", "parse_split"]


@dataclasses.dataclass
class VariantConfig(OptimConfig):
    """One artifact of an application and its share of the traffic.

    Args:
        name (`str`): the variant's name in responses and metrics (letters, digits, ``-`` and ``_``).
        artifact (`str`): a model directory (torch, hf_optim-quantized torch, or an ONNX export) or a ``.onnx``
            file. It must exist at this path on every node that runs a replica.
        weight (`float`, *optional*, defaults to 1.0): relative share of the requests (weights need not sum to 1).
        fingerprint (`str`, *optional*): the artifact's identity named in every response; computed from the
            directory (:func:`~hf_optim.inference.dir_fingerprint`) when the application is built.
        task_type (`str`, *optional*): ``"sequence-classification"`` or ``"causal-lm"``; read from the artifact's
            ``config.json`` when the application is built.
        replicas (`int | str`, *optional*): this variant's replicas (a count or ``"auto"``) instead of the
            application's ``replicas`` (a variant with a small share of the traffic needs fewer).
    """

    kind = "serve-variant"
    version = 1

    name: str
    artifact: str
    weight: float = 1.0
    fingerprint: Optional[str] = None
    task_type: Optional[str] = None
    replicas: Optional[Union[int, str]] = None

    def validate(self) -> None:
        if self.replicas is not None and self.replicas != "auto" and (not isinstance(self.replicas, int)
                                                                      or self.replicas < 1):
            self._fail("replicas", "expected a replica count >= 1, 'auto', or null for the application's setting")
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            self._fail("name", "use letters, digits, '-' and '_' only (it names a Ray Serve deployment)")
        if self.weight < 0:
            self._fail("weight", "must be >= 0 (0 = deployed but sent no traffic)")
        if self.task_type not in (None, "sequence-classification", "causal-lm"):
            self._fail("task_type", "expected 'sequence-classification' or 'causal-lm'")


@dataclasses.dataclass
class ServeConfig(OptimConfig):
    """A Ray Serve application of one or more artifacts with a weighted, optionally sticky traffic split.

    Args:
        variants (`list[VariantConfig | dict]`): the artifacts served, each with its weight.
        name (`str`, *optional*, defaults to ``"hf-optim"``): the Ray Serve application name.
        route_prefix (`str`, *optional*, defaults to ``"/"``): where the HTTP API is mounted.
        replicas (`str | int`, *optional*, defaults to 1): replicas per variant, or ``"auto"`` for Ray Serve's
            autoscaling between ``min_replicas`` and ``max_replicas``, aiming at ``target_ongoing_requests``
            requests per replica.
        min_replicas, max_replicas (`int`, *optional*, default to 1 and 4): the autoscaling range.
        target_ongoing_requests (`float`, *optional*, defaults to 16): the autoscaling target; several requests
            per replica at once is what lets the engine batch them.
        max_ongoing_requests (`int`, *optional*, defaults to 64): requests one replica works on at once; Ray Serve
            routes further ones to other replicas or queues them.
        max_queued_requests (`int`, *optional*, defaults to 1024): requests the router queues for a variant when
            all its replicas are busy; beyond it a request is refused with 503 and ``Retry-After``.
        num_cpus (`float`, *optional*, defaults to 1.0): CPUs Ray reserves per model replica.
        threads (`int`, *optional*): torch / ONNX Runtime threads per replica; `None` leaves the libraries'
            defaults.
        inference (`InferenceConfig | dict`, *optional*): each replica's engine (batching, queue, cache). The
            engine's bounded queue (``max_queue``, ``on_full="raise"``) is the back-pressure: a full queue
            answers 503 with ``Retry-After``.
        max_texts (`int`, *optional*, defaults to 64): most texts in one classify request.
        max_chars (`int`, *optional*, defaults to 20000): longest text (characters) before tokenizing.
        max_new_tokens (`int`, *optional*, defaults to 256): most tokens one generate request may ask for.
        request_timeout_s (`float`, *optional*, defaults to 60): a request not answered by then gets 504.
        retries (`int`, *optional*, defaults to 2): times a request is sent again when its replica died.
        retry_after_s (`int`, *optional*, defaults to 1): the ``Retry-After`` of a 503.
    """

    kind = "serve"
    version = 1

    variants: list[Union[VariantConfig, dict]]
    name: str = "hf-optim"
    route_prefix: str = "/"
    replicas: Union[int, str] = 1
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 16.0
    max_ongoing_requests: int = 64
    max_queued_requests: int = 1024
    num_cpus: float = 1.0
    threads: Optional[int] = None
    inference: Union[InferenceConfig, dict] = dataclasses.field(default_factory=dict)
    max_texts: int = 64
    max_chars: int = 20_000
    max_new_tokens: int = 256
    request_timeout_s: float = 60.0
    retries: int = 2
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        self.variants = [v if isinstance(v, VariantConfig) else VariantConfig.from_dict(v, strict=True)
                         for v in self.variants]
        if not isinstance(self.inference, InferenceConfig):
            self.inference = InferenceConfig.from_dict(self.inference or {}, strict=True)
        super().__post_init__()

    def validate(self) -> None:
        if not self.variants:
            self._fail("variants", "serve at least one artifact")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            self._fail("variants", f"variant names must differ, got {names}")
        if sum(v.weight for v in self.variants) <= 0:
            self._fail("variants", "at least one variant needs a weight > 0")
        kinds = {v.task_type for v in self.variants} - {None}
        if len(kinds) > 1:
            self._fail("variants", "all variants of one application serve the same task (classifiers or causal LMs)")
        if self.replicas != "auto" and (not isinstance(self.replicas, int) or self.replicas < 1):
            self._fail("replicas", "expected a replica count >= 1 or 'auto'")
        if not 1 <= self.min_replicas <= self.max_replicas:
            self._fail("max_replicas", "expected 1 <= min_replicas <= max_replicas")
        for f in ("max_ongoing_requests", "max_queued_requests", "max_texts", "max_chars", "max_new_tokens"):
            if getattr(self, f) < 1:
                self._fail(f, "must be >= 1")
        if self.target_ongoing_requests <= 0 or self.request_timeout_s <= 0 or self.num_cpus < 0:
            self._fail("target_ongoing_requests", "target_ongoing_requests and request_timeout_s must be > 0, "
                       "num_cpus >= 0")
        if self.retries < 0 or self.retry_after_s < 0:
            self._fail("retries", "retries and retry_after_s must be >= 0")
        if self.threads is not None and self.threads < 1:
            self._fail("threads", "must be >= 1, or null for the libraries' defaults")
        if not self.route_prefix.startswith("/"):
            self._fail("route_prefix", "must start with '/'")

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["variants"] = [v.to_dict() for v in self.variants]
        out["inference"] = self.inference.to_dict()
        return out


def parse_split(text: str | None, n: int) -> list[float]:
    """``"0.9,0.1"`` -> ``[0.9, 0.1]`` for ``n`` artifacts (an even split when ``text`` is empty)."""
    from ..errors import ConfigError

    if not text:
        return [1.0] * n
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--split {text!r}: expected comma-separated weights such as 0.9,0.1") from None
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"--split {text!r}: expected {n} non-negative weights (one per artifact) with a positive sum")
    return weights
