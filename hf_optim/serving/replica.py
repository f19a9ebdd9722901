"""``ArtifactModel``: what one Ray Serve replica of a variant runs.

A classifier (torch, hf_optim-quantized torch or ONNX export) is served by an
:class:`~hf_optim.inference.InferenceEngine`: every request the replica works on at once (``max_ongoing_requests``)
is submitted to the engine, which batches them by length bucket and caches results. A causal LM is served by
``generate`` on one worker thread. Both have a bounded queue: a full one answers ``overloaded`` (HTTP 503) at once.

Replies are plain dicts: ``{"results": [...]}`` / ``{"text": ...}``, or ``{"error": {"status", "reason",
"message"}}`` for a request's own fault or an overload, so the router needs no model code to answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .config import ServeConfig, VariantConfig

__all__ = ["ArtifactModel", "error_reply"]

logger = logging.getLogger("hf_optim")
_EXPORT_EVERY_S = 1.0


def error_reply(status: int, reason: str, message: str) -> dict[str, Any]:
    """The reply of a request that is not answered (``reason`` is the ``hf_optim_serve_errors`` tag)."""
    return {"error": {"status": status, "reason": reason, "message": message}}


def _labels(artifact: Path) -> dict[int, str]:
    cfg = artifact / "config.json" if artifact.is_dir() else artifact.parent / "config.json"
    try:
        id2label = json.loads(cfg.read_text()).get("id2label") or {}
    except (OSError, ValueError):
        id2label = {}
    return {int(k): str(v) for k, v in id2label.items()}


class _Generator:
    """Greedy ``generate`` of a causal LM on one worker thread, with a bounded number of waiting prompts."""

    def __init__(self, artifact: Path, config: ServeConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import hf_optim  # noqa: F401  (registers quant_method "hf_optim": quantized artifacts load as saved)

        if any(artifact.glob("*.onnx")) if artifact.is_dir() else artifact.suffix == ".onnx":
            from ..errors import ConfigError

            raise ConfigError(f"{artifact}: generation serves torch causal LMs; serve the artifact the ONNX export "
                              "was made from", field="artifact")
        self.tokenizer = AutoTokenizer.from_pretrained(artifact)
        self.model = AutoModelForCausalLM.from_pretrained(artifact).eval()
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_queue = config.inference.max_queue
        self.pending = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hf_optim-generate")

    def _run(self, ids: list[int], max_new_tokens: int) -> dict[str, Any]:
        import torch

        with torch.inference_mode():
            x = torch.tensor([ids])
            out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id
                                      or self.tokenizer.eos_token_id)
        new = out[0, len(ids):].tolist()
        return {"text": self.tokenizer.decode(new, skip_special_tokens=True), "tokens": len(new),
                "prompt_tokens": len(ids)}

    async def __call__(self, prompt: str, max_new_tokens: int) -> dict[str, Any]:
        ids = self.tokenizer(prompt)["input_ids"]
        if len(ids) + max_new_tokens > self.max_positions:
            return error_reply(413, "too_long", f"the prompt has {len(ids)} tokens; with max_new_tokens="
                               f"{max_new_tokens} that exceeds the model's {self.max_positions} positions")
        with self._lock:
            if self.pending >= self.max_queue:
                return error_reply(503, "overloaded", f"{self.pending} prompts are waiting (max_queue); retry later")
            self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, ids, max_new_tokens)
        finally:
            with self._lock:
                self.pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ArtifactModel:
    """One replica of one variant (the class behind each variant's Ray Serve deployment).

    Args:
        variant (`dict`): the :class:`~hf_optim.serving.VariantConfig` as a dict (fingerprint and task type set).
        config (`dict`): the application's :class:`~hf_optim.serving.ServeConfig` as a dict.
    """

    def __init__(self, variant: dict, config: dict):
        self.variant = VariantConfig.from_dict(variant)
        self.config = ServeConfig.from_dict(config)
        artifact = Path(self.variant.artifact)
        if self.config.threads:
            import torch

            torch.set_num_threads(self.config.threads)
        self.engine = self.generator = None
        self._inflight = 0  # texts admitted and not yet answered (requests run on the replica's event loop)
        if self.variant.task_type == "causal-lm":
            self.generator = _Generator(artifact, self.config)
        else:
            from ..inference import InferenceEngine

            # never "block": a full queue must answer 503 at once, not hold the request
            engine_config = self.config.inference.replace(
                on_full="raise", ort_threads=self.config.threads or self.config.inference.ort_threads)
            self.engine = InferenceEngine(str(artifact), config=engine_config, model_id=self.variant.fingerprint)
            self.id2label = _labels(artifact)
        self._stop = threading.Event()
        self._exporter = None
        try:
            from .metrics import make_metrics

            self.metrics = make_metrics("replica")
        except ImportError:  # used without Ray (tests of the reply format): nothing to export to
            self.metrics = {}
        if self.metrics:
            self._exporter = threading.Thread(target=self._export, name="hf_optim-metrics", daemon=True)
            self._exporter.start()

    # -- requests ---------------------------------------------------------------------------------------
    async def classify(self, texts: list[str]) -> dict[str, Any]:
        """Labels and class probabilities of ``texts`` (all answered, or one error for the request)."""
        if self.engine is None:
            return error_reply(404, "invalid", f"variant {self.variant.name!r} is a causal LM: POST /v1/generate")
        # admission: a request is taken only when all its texts fit in the queue bound now, so a full replica
        # refuses at once (503) instead of holding part of a request
        limit = self.config.inference.max_queue
        if self._inflight + len(texts) > limit:
            return error_reply(503, "overloaded", f"{self._inflight} texts are in flight on this replica and the "
                               f"request brings {len(texts)} (max_queue {limit}); retry later")
        self._inflight += len(texts)
        try:
            return await self._classify(texts)
        finally:
            self._inflight -= len(texts)

    async def _classify(self, texts: list[str]) -> dict[str, Any]:
        from ..inference import InputTooLong, QueueFull

        futures = []
        try:
            for text in texts:
                futures.append(self.engine.submit(text))
        except QueueFull as e:
            for f in futures:
                f.cancel()
            return error_reply(503, "overloaded", str(e))
        results = []
        for i, f in enumerate(futures):
            try:
                logits = await asyncio.wrap_future(f)
            except InputTooLong as e:
                return error_reply(413, "too_long", f"texts[{i}]: {e}")
            except (ValueError, TypeError) as e:
                return error_reply(422, "invalid", f"texts[{i}]: {e}")
            results.append(self._result(np.asarray(logits, dtype=np.float64)))
        return {"results": results}

    def _result(self, logits: np.ndarray) -> dict[str, Any]:
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = int(probs.argmax())
        return {"label": self.id2label.get(best, str(best)), "label_id": best, "score": round(float(probs[best]), 6),
                "scores": [round(float(p), 6) for p in probs]}

    async def generate(self, prompt: str, max_new_tokens: int) -> dict[str, Any]:
        """Greedy continuation of ``prompt``."""
        if self.generator is None:
            return error_reply(404, "invalid", f"variant {self.variant.name!r} is a classifier: POST /v1/classify")
        return await self.generator(prompt, max_new_tokens)

    def info(self) -> dict[str, Any]:
        """The variant, its fingerprint and this replica's Ray actor name (to find the replica again)."""
        import ray

        return {"variant": self.variant.name, "fingerprint": self.variant.fingerprint,
                "task_type": self.variant.task_type, "actor": ray.get_runtime_context().get_actor_name()}

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose engine stopped is replaced."""
        if self.engine is not None and self.engine.closed:
            raise RuntimeError("the inference engine is closed")

    def __del__(self) -> None:
        self._stop.set()
        if getattr(self, "engine", None) is not None:
            self.engine.close(cancel_pending=True, timeout=5)
        if getattr(self, "generator", None) is not None:
            self.generator.close()

    # -- metrics ----------------------------------------------------------------------------------------
    def _export(self) -> None:
        """Every second: the engine's statistics into the replica's Prometheus series."""
        tags = {"variant": self.variant.name}
        seen: dict[int, int] = {}
        m = self.metrics
        while not self._stop.wait(_EXPORT_EVERY_S):
            try:
                if self.engine is None:
                    m["hf_optim_serve_queue_depth"].set(self.generator.pending, tags=tags)
                    continue
                stats = self.engine.stats()
                for size, count in stats["batches"]["size_histogram"].items():
                    for _ in range(count - seen.get(size, 0)):
                        m["hf_optim_serve_batch_size"].observe(size, tags=tags)
                    seen[size] = count
                m["hf_optim_serve_padding_ratio"].set(stats["padding_ratio"], tags=tags)
                m["hf_optim_serve_queue_depth"].set(stats["queue_depth"], tags=tags)
                cache = stats["cache"] or {}
                m["hf_optim_serve_cache_hit_rate"].set(float(cache.get("hit_rate", 0.0)), tags=tags)
            except Exception:  # noqa: BLE001 - metrics never take a replica down
                logger.debug("metrics export failed", exc_info=True)
