"""Precision planner: measure every candidate precision on *this* model, task and machine, then choose.

Replaces the rule-of-thumb table ("INT8: 2-4x faster, <1 % drop") with numbers: each candidate is
quantized, evaluated side by side (task metric, batch-1 latency, batch-32 throughput, size, peak memory),
the Pareto set is computed, and the best candidate that satisfies the budgets is picked — or the plan says
that none does and which one comes closest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from ..config import OptimConfig
from .schemes import SCHEMES

__all__ = ["Budgets", "PlanConfig", "PrecisionPlan", "plan_precision", "choose_plan", "pareto_front", "CANDIDATES"]

logger = logging.getLogger("hf_optim")

CANDIDATES = ("fp32", *SCHEMES)
DEFAULT_CANDIDATES = ("fp32", *(n for n, s in SCHEMES.items() if s.plan_by_default))
PREFER = ("throughput", "latency", "size", "metric")


@dataclasses.dataclass
class Budgets(OptimConfig):
    """Limits a precision must satisfy (unset = no limit).

    Args:
        max_size_mb (`float`, *optional*): weights on disk, MiB.
        max_latency_ms (`float`, *optional*): batch-1 p50 latency, ms.
        min_speedup (`float`, *optional*): batch-32 throughput relative to fp32 (e.g. 2.0).
        max_metric_drop (`float`, *optional*): allowed drop of the task metric vs fp32, in metric units
            (0.005 = half an accuracy point).
    """

    kind = "precision-budgets"
    version = 1

    max_size_mb: Optional[float] = None
    max_latency_ms: Optional[float] = None
    min_speedup: Optional[float] = None
    max_metric_drop: Optional[float] = None

    def validate(self) -> None:
        for f in ("max_size_mb", "max_latency_ms", "min_speedup"):
            v = getattr(self, f)
            if v is not None and v <= 0:
                self._fail(f, "must be > 0 or unset")
        if self.max_metric_drop is not None and self.max_metric_drop < 0:
            self._fail("max_metric_drop", "must be >= 0 (in metric units: 0.005 = 0.5 accuracy points)")

    def violations(self, row: dict[str, Any]) -> dict[str, float]:
        """``{budget: relative excess}`` for each budget ``row`` breaks (empty when it satisfies all)."""
        out = {}
        checks = (("max_size_mb", row.get("size_mb"), 1), ("max_latency_ms", row.get("latency_p50_ms"), 1),
                  ("min_speedup", row.get("speedup"), -1), ("max_metric_drop", row.get("metric_drop"), 1))
        for name, value, sign in checks:
            limit = getattr(self, name)
            if limit is None:
                continue
            if value is None:
                out[name] = float("inf")
                continue
            excess = (value - limit) * sign
            if excess > 1e-12:
                out[name] = excess / max(abs(limit), 1e-3)
        return out


@dataclasses.dataclass
class PlanConfig(OptimConfig):
    """What :func:`plan_precision` measures and how it chooses.

    Args:
        task (`str` or `dict`, *optional*, defaults to ``"movie-sentiment"``): the evaluation (and calibration)
            task.
        candidates (`list[str]`, *optional*): ``fp32`` plus any :class:`~hf_optim.quantize.QuantizeConfig` scheme
            (default: every scheme planned by default; ``int8_qat`` trains and is slow, ``fp16`` is slow on CPUs).
        budgets (`Budgets` or `dict`, *optional*): limits; see :class:`Budgets`.
        prefer (`str`, *optional*, defaults to ``"throughput"``): how to rank the candidates that fit.
        split (`str`, *optional*, defaults to ``"test"``): the evaluation split.
        max_samples (`int`, *optional*): evaluate on N examples of the split only.
        latency_samples (`int`, *optional*, defaults to 100): batch-1 calls timed per candidate.
        throughput_samples (`int`, *optional*, defaults to 256): examples per batch-32 throughput pass (0 skips it).
        measure_memory (`bool`, *optional*, defaults to `True`): peak memory in a fresh process.
        calibration_samples (`int`, *optional*, defaults to 256): calibration texts of ``int8_static``.
        work_dir (`str`, *optional*): where quantized candidates are written (a temp dir by default, deleted
            afterwards unless ``keep``).
        keep (`bool`, *optional*, defaults to `False`): keep the temp dir of quantized candidates.
        threads (`int`, *optional*): torch intra-op threads while measuring.
        rounds (`int`, *optional*, defaults to 3): batch-32 throughput passes per candidate. The passes are
            interleaved across candidates (A B C A B C ...) and the median is kept, so a load change on a
            shared machine hits every candidate alike instead of favouring whichever ran in a quiet moment.
    """

    kind = "precision-plan"
    version = 1

    task: Union[str, dict] = "movie-sentiment"
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    budgets: Optional[Budgets] = None
    prefer: Literal[PREFER] = "throughput"
    split: Literal["test", "validation", "train"] = "test"
    max_samples: Optional[int] = None
    latency_samples: int = 100
    throughput_samples: int = 256
    measure_memory: bool = True
    calibration_samples: int = 256
    work_dir: Optional[str] = None
    keep: bool = False
    threads: Optional[int] = None
    rounds: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.budgets, dict):
            self.budgets = Budgets.from_dict(self.budgets, strict=True)
        if isinstance(self.work_dir, Path):
            self.work_dir = str(self.work_dir)
        super().__post_init__()

    def validate(self) -> None:
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if unknown or not self.candidates:
            self._fail("candidates", f"unknown candidate(s) {unknown}; choose from {', '.join(CANDIDATES)}")
        if self.max_samples is not None and self.max_samples < 1:
            self._fail("max_samples", "must be >= 1 or unset")
        for f in ("latency_samples", "throughput_samples"):
            if getattr(self, f) < 0:
                self._fail(f, "must be >= 0")
        for f in ("calibration_samples", "rounds"):
            if getattr(self, f) < 1:
                self._fail(f, "must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["budgets"] = None if self.budgets is None else self.budgets.to_dict()
        return out


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the rows no other row beats on metric, throughput and size at once."""
    def key(r):
        return (r.get("metric_value") or 0.0, r.get("throughput") or 0.0, -(r.get("size_mb") or 0.0))

    front = []
    for r in rows:
        kr = key(r)
        dominated = any(all(a >= b for a, b in zip(key(o), kr)) and key(o) != kr for o in rows if o is not r)
        if not dominated:
            front.append(r["candidate"])
    return front


def choose_plan(rows: Sequence[dict[str, Any]], budgets: Budgets | None = None,
                prefer: str = "throughput") -> dict[str, Any]:
    """Pick the best row that satisfies ``budgets`` (by ``prefer``), or the closest one when none does. Under a
    latency or throughput budget a candidate measured slower than ``fp32`` never satisfies it.

    Returns ``{"choice", "satisfied", "reason", "violations"}``.
    """
    if prefer not in PREFER:
        raise ValueError(f"prefer={prefer!r}: use one of {', '.join(PREFER)}")
    budgets = budgets or Budgets()
    base = next((r for r in rows if r["candidate"] == "fp32"), None)
    viol = {r["candidate"]: {**budgets.violations(r), **_slower_than_fp32(r, base, budgets)} for r in rows}
    ok = [r for r in rows if not viol[r["candidate"]]]
    rank = {"throughput": lambda r: -(r.get("throughput") or 0.0), "latency": lambda r: r.get("latency_p50_ms") or 1e18,
            "size": lambda r: r.get("size_mb") or 1e18, "metric": lambda r: -(r.get("metric_value") or 0.0)}[prefer]
    if ok:
        best = min(ok, key=lambda r: (rank(r), -(r.get("metric_value") or 0.0)))
        return {"choice": best["candidate"], "satisfied": True, "violations": viol,
                "reason": f"{best['candidate']} satisfies every budget and is the best by {prefer} "
                          f"among {len(ok)} that do ({', '.join(r['candidate'] for r in ok)})"}
    closest = min(rows, key=lambda r: (sum(viol[r["candidate"]].values()), rank(r)))
    broken = ", ".join(f"{k} by {v:.1%}" for k, v in viol[closest["candidate"]].items())
    return {"choice": None, "closest": closest["candidate"], "satisfied": False, "violations": viol,
            "reason": f"no candidate satisfies the budgets; closest is {closest['candidate']} (misses {broken})"}


def _slower_than_fp32(row: dict[str, Any], base: dict[str, Any] | None, budgets: Budgets) -> dict[str, float]:
    """Under a latency (throughput) budget, a candidate measured slower than fp32 at batch 1 (batch 32) is never
    chosen, whatever the budget's value: float32 would meet the same budget faster, and weight-only schemes can
    save memory while costing time. ``{"slower_than_fp32_...": relative shortfall}`` when it is."""
    if base is None or row is base:
        return {}
    out = {}
    lat, base_lat = row.get("latency_p50_ms"), base.get("latency_p50_ms")
    if budgets.max_latency_ms is not None and lat and base_lat and lat > base_lat:
        out["slower_than_fp32_latency"] = lat / base_lat - 1
    rate, base_rate = row.get("throughput"), base.get("throughput")
    if budgets.min_speedup is not None and rate and base_rate and rate < base_rate:
        out["slower_than_fp32_throughput"] = 1 - rate / base_rate
    return out


@dataclasses.dataclass
class PrecisionPlan:
    """The measured table, its Pareto set and the decision. ``to_dict()`` is JSON-ready."""

    rows: list[dict[str, Any]]
    pareto: list[str]
    decision: dict[str, Any]
    budgets: dict[str, Any]
    metric: str

    @property
    def choice(self) -> str | None:
        return self.decision.get("choice")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        """A Markdown table of the measurements (Pareto members marked with ``*``)."""
        head = (f"| candidate | {self.metric} | drop (pts) | p50 ms | samples/s (b32) | speedup | size MiB | "
                "peak MiB |\n|---|---|---|---|---|---|---|---|")
        lines = [head]
        for r in self.rows:
            mark = "*" if r["candidate"] in self.pareto else ""
            lines.append(f"| {r['candidate']}{mark} | {_f(r.get('metric_value'), 4)} | "
                         f"{_f(None if r.get('metric_drop') is None else 100 * r['metric_drop'], 2)} | "
                         f"{_f(r.get('latency_p50_ms'), 2)} | {_f(r.get('throughput'), 1)} | {_f(r.get('speedup'), 2)} | "
                         f"{_f(r.get('size_mb'), 2)} | {_f(r.get('peak_mb'), 0)} |")
        return "\n".join(lines)


def _f(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"


def plan_precision(model_dir: Union[str, Path], config: PlanConfig | None = None, *, progress: bool = False,
                   **kwargs: Any) -> PrecisionPlan:
    """Measure the candidate precisions of the classifier in ``model_dir`` and choose one under the budgets.

    Args:
        model_dir (`str` or `Path`): a float sequence classifier directory.
        config (`PlanConfig`, *optional*): candidates, budgets, ranking and measurement settings (defaults: a
            ``PlanConfig()``). Its fields as keyword arguments (the form before this one) are deprecated and
            still read, with a ``FutureWarning``, until the next release.
        progress (`bool`, *optional*, defaults to `False`): progress bars over the candidates, their
            calibration and evaluation, and the throughput rounds.

    Returns:
        :class:`PrecisionPlan`.
    """
    if config is None:
        if kwargs:
            warnings.warn("plan_precision(model_dir, **options) is deprecated: pass a PlanConfig, e.g. "
                          "plan_precision(model_dir, PlanConfig(candidates=[...], budgets=Budgets(...)))",
                          FutureWarning, stacklevel=2)
        config = PlanConfig(**kwargs)
    elif kwargs:
        raise TypeError(f"plan_precision takes a PlanConfig; set {', '.join(kwargs)} on the config instead")
    return _Planner(Path(model_dir), config, progress).run()


@dataclasses.dataclass
class _Planner:
    model_dir: Path
    config: PlanConfig
    progress: bool

    def run(self) -> PrecisionPlan:
        from ..console import progress as progress_bar

        cfg = self.config
        candidates = ["fp32"] + [c for c in cfg.candidates if c != "fp32"]  # the baseline is always measured
        own_tmp = cfg.work_dir is None
        work = Path(tempfile.mkdtemp(prefix="hf_optim-plan-") if own_tmp else cfg.work_dir)
        rows: list[dict[str, Any]] = []
        metric = ""
        try:
            for cand in progress_bar(candidates, desc="plan", enabled=self.progress, unit="candidate"):
                row, metric = self._measure(cand, work)
                rows.append(row)
                logger.info("plan: %s", row)
            if cfg.throughput_samples:
                rates = _interleaved_throughput([r["path"] for r in rows], cfg.task, cfg.split, cfg.throughput_samples,
                                                cfg.rounds, cfg.threads, self.progress)
                for r, rate in zip(rows, rates):
                    r["throughput"] = rate
        finally:
            if own_tmp and not cfg.keep:
                shutil.rmtree(work, ignore_errors=True)
        base = rows[0]
        for r in rows:
            r["metric_drop"] = round(base["metric_value"] - r["metric_value"], 6)
            r["speedup"] = (round(r["throughput"] / base["throughput"], 3)
                            if r.get("throughput") and base.get("throughput") else None)
        budgets = cfg.budgets or Budgets()
        return PrecisionPlan(rows=rows, pareto=pareto_front(rows), decision=choose_plan(rows, budgets, cfg.prefer),
                             budgets=budgets.to_dict(), metric=metric)

    def _measure(self, cand: str, work: Path) -> tuple[dict[str, Any], str]:
        """Quantize (unless fp32) and evaluate one candidate: its row (throughput comes later, interleaved) and the
        name of the task metric."""
        from ..evaluation.config import EvalConfig
        from ..evaluation.stage import evaluate_model
        from .config import QuantizeConfig
        from .stage import quantize_dir

        cfg = self.config
        if cand == "fp32":
            cand_dir, qmetrics = self.model_dir, {}
        else:
            cand_dir = work / cand
            if cand_dir.exists():
                shutil.rmtree(cand_dir)
            qmetrics = quantize_dir(self.model_dir, cand_dir, QuantizeConfig(
                model=str(self.model_dir), scheme=cand, task=cfg.task, calibration_samples=cfg.calibration_samples),
                progress=self.progress)
        ev = evaluate_model(cand_dir, EvalConfig(
            model=str(cand_dir), task=cfg.task, split=cfg.split, max_samples=cfg.max_samples,
            latency_samples=cfg.latency_samples, throughput_samples=0, measure_memory=cfg.measure_memory,
            threads=cfg.threads), progress=self.progress)
        metric = ev["metric"]
        return {"candidate": cand, "metric_value": ev[metric],
                "latency_p50_ms": (ev.get("latency_ms") or {}).get("p50"), "size_mb": ev["size"]["weights_mb"], "peak_mb": (ev.get("memory") or {}).get("model_peak_mb"),
                "logits_sqnr_db": qmetrics.get("logits_sqnr_db"), "path": str(cand_dir)}, metric


def _interleaved_throughput(paths: list[str], task, split: str, samples: int, rounds: int,
                            threads: int | None, progress: bool = False) -> list[float]:
    import statistics
    import time

    import torch

    from ..console import progress as progress_bar
    from ..data import load_task
    from ..artifacts import load_predictor

    texts = load_task(task)[split]["text"][:samples]
    batches = [texts[i:i + 32] for i in range(0, len(texts), 32)]
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        clfs = [load_predictor(p) for p in paths]
        for clf in clfs:
            clf(batches[0])  # warm-up
        rates: list[list[float]] = [[] for _ in clfs]
        for _ in progress_bar(range(max(1, rounds)), desc="plan: throughput rounds", enabled=progress, unit="round"):
            for i, clf in enumerate(clfs):
                start = time.perf_counter()
                for b in batches:
                    clf(b)
                rates[i].append(len(texts) / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(prev)
    return [round(statistics.median(r), 2) for r in rates]


def plan_to_json(plan: PrecisionPlan) -> str:
    return json.dumps(plan.to_dict(), indent=2)
