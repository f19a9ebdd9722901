"""The HTTP front of a served application: validation, the A/B split, retries and errors (a Ray Serve ingress).

Routes (JSON in, JSON out; every response names ``variant`` and ``fingerprint``, also as the
``X-HF-Optim-Variant`` / ``X-HF-Optim-Fingerprint`` headers):

* ``POST /v1/classify`` ``{"texts": ["..."], "key": "user-42"}`` (or ``"text": "..."``): a label and class
  probabilities per text;
* ``POST /v1/generate`` ``{"prompt": "...", "max_new_tokens": 32, "key": ...}``: a greedy continuation
  (causal-LM applications);
* ``GET /healthz``: the application, its variants, weights and fingerprints;
* ``GET /v1/stats``: per variant, requests, errors, latency percentiles and throughput of this router
  (:class:`~hf_optim.serving.stats.LiveStats`; ``hf-optim compare RUN --serving URL`` reads it).

A request with a ``key`` always goes to the same variant (a hash of the key against the weights); one without goes
by chance. Errors: 400 (not JSON), 404 (a route this application's task does not serve), 413 (too many texts or
tokens), 422 (empty text, wrong types), 503 with ``Retry-After`` (queues full or the replica lost after the
retries), 504 (no answer within ``request_timeout_s``), 500 (the model raised).
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime

import asyncio
import hashlib
import random
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from .config import ServeConfig
from .replica import error_reply
from .stats import STATS_ROUTE, LiveStats

__all__ = ["Router", "api", "pick_variant"]

api = FastAPI(title="hf_optim", description="hf_optim artifacts served by Ray Serve (docs/serving.md)")


def pick_variant(names: list[str], weights: list[float], key: str | None = None) -> str:
    """The variant for one request: a hash of ``key`` (sticky) or a random draw, against the weights."""
    if key is None:
        u = random.random()
    else:
        u = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2 ** 64
    total = sum(weights)
    acc = 0.0
    for name, w in zip(names, weights):
        acc += w / total
        if u < acc and w > 0:
            return name
    return [n for n, w in zip(names, weights) if w > 0][-1]


def _texts(body: dict, config: ServeConfig) -> tuple[list[str] | None, dict | None]:
    texts = body.get("texts", [body["text"]] if "text" in body else None)
    if texts is None:
        return None, error_reply(422, "invalid", 'expected {"texts": ["...", ...]} or {"text": "..."}')
    if not isinstance(texts, list) or not texts:
        return None, error_reply(422, "invalid", "texts must be a non-empty list of strings")
    if len(texts) > config.max_texts:
        return None, error_reply(413, "too_long", f"{len(texts)} texts in one request; at most {config.max_texts}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            return None, error_reply(422, "invalid", f"texts[{i}] is a {type(t).__name__}, not a string")
        if not t.strip():
            return None, error_reply(422, "invalid", f"texts[{i}] is empty")
        if len(t) > config.max_chars:
            return None, error_reply(413, "too_long", f"texts[{i}] has {len(t)} characters; at most {config.max_chars}")
    return texts, None


def _prompt(body: dict, config: ServeConfig) -> tuple[tuple | None, dict | None]:
    prompt, n = body.get("prompt"), body.get("max_new_tokens", 32)
    if not isinstance(prompt, str) or not prompt.strip():
        return None, error_reply(422, "invalid", 'expected {"prompt": "a non-empty string", "max_new_tokens": 32}')
    if len(prompt) > config.max_chars:
        return None, error_reply(413, "too_long", f"the prompt has {len(prompt)} characters; at most {config.max_chars}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= config.max_new_tokens:
        return None, error_reply(422, "invalid", f"max_new_tokens must be an integer in [1, {config.max_new_tokens}]")
    return (prompt, n), None


@serve.ingress(api)
class Router:
    """The ingress deployment: one replica holds a handle to every variant's deployment.

    Args:
        config (`dict`): the application's :class:`~hf_optim.serving.ServeConfig` (variants resolved).
        *handles: the variants' deployment handles, in the order of ``config["variants"]``.
    """

    def __init__(self, config: dict, *handles: Any):
        self.config = ServeConfig.from_dict(config)
        self.variants = {v.name: v for v in self.config.variants}
        self.handles = dict(zip(self.variants, handles))
        self.names = list(self.variants)
        self.weights = [v.weight for v in self.config.variants]
        self.task_type = next((v.task_type for v in self.config.variants if v.task_type), None)
        from .metrics import make_metrics

        self.metrics = make_metrics("router")
        self.stats = LiveStats([v.to_dict() for v in self.config.variants])

    @api.get("/healthz")
    async def healthz(self) -> dict:
        total = sum(self.weights)
        return {"status": "ok", "application": self.config.name, "task_type": self.task_type,
                "variants": [{"name": v.name, "weight": v.weight, "share": round(v.weight / total, 6),
                              "fingerprint": v.fingerprint, "artifact": v.artifact}
                             for v in self.config.variants]}

    @api.get(STATS_ROUTE)
    async def live_stats(self) -> dict:
        return {"application": self.config.name, "task_type": self.task_type, **self.stats.snapshot()}

    @api.post("/v1/classify")
    async def classify(self, request: Request) -> JSONResponse:
        return await self._serve(request, "classify")

    @api.post("/v1/generate")
    async def generate(self, request: Request) -> JSONResponse:
        return await self._serve(request, "generate")

    async def _serve(self, request: Request, route: str) -> JSONResponse:
        start = time.perf_counter()
        try:
            body = await request.json()
        except ValueError:
            body = None
        key = body.get("key") if isinstance(body, dict) else None
        key = request.headers.get("x-hf-optim-key") if key is None else key
        variant = pick_variant(self.names, self.weights, None if key is None else str(key))
        n = 1
        if not isinstance(body, dict):
            reply = error_reply(400, "invalid", "the body must be a JSON object")
        elif (route == "generate") != (self.task_type == "causal-lm"):
            other = "/v1/generate" if self.task_type == "causal-lm" else "/v1/classify"
            reply = error_reply(404, "invalid", f"this application serves {self.task_type} models: POST {other}")
        else:
            args, reply = _texts(body, self.config) if route == "classify" else _prompt(body, self.config)
            if reply is None:
                args = (args,) if route == "classify" else args
                n = len(args[0]) if route == "classify" else 1
                reply = await self._call(variant, route, args, start)
        return self._respond(variant, route, reply, n, start)

    async def _call(self, variant: str, route: str, args: tuple, start: float) -> dict:
        from ray.exceptions import ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError

        handle = getattr(self.handles[variant], route)
        for attempt in range(self.config.retries + 1):
            left = self.config.request_timeout_s - (time.perf_counter() - start)
            try:
                return await asyncio.wait_for(handle.remote(*args), timeout=max(left, 0.001))
            except (RayActorError, ActorUnavailableError) as e:
                if attempt == self.config.retries:  # the request's replica died each time
                    return error_reply(503, "replica_lost", f"the replica serving this request stopped "
                                       f"({type(e).__name__}) {attempt + 1} times; retry later")
                self.metrics["hf_optim_serve_retries"].inc(tags={"variant": variant})
            except BackPressureError as e:
                return error_reply(503, "overloaded", f"variant {variant!r} is at capacity: {e}")
            except asyncio.TimeoutError:
                return error_reply(504, "timeout", f"no answer within {self.config.request_timeout_s} s")
            except Exception as e:  # noqa: BLE001 - the model raised: the client gets the reason
                return error_reply(500, "internal", f"{type(e).__name__}: {str(e)[-500:]}")
        raise AssertionError("unreachable")

    def _respond(self, variant: str, route: str, reply: dict, n: int, start: float) -> JSONResponse:
        v = self.variants[variant]
        error = reply.get("error")
        status = error["status"] if error else 200
        tags = {"variant": variant, "route": route}
        m = self.metrics
        m["hf_optim_serve_requests"].inc(tags={**tags, "status": str(status)})
        latency_ms = (time.perf_counter() - start) * 1e3
        m["hf_optim_serve_latency_ms"].observe(latency_ms, tags=tags)
        self.stats.record(variant, status, latency_ms, n)
        if error:
            m["hf_optim_serve_errors"].inc(tags={**tags, "reason": error["reason"]})
        else:
            m["hf_optim_serve_texts"].inc(n, tags=tags)
        headers = {"X-HF-Optim-Variant": variant, "X-HF-Optim-Fingerprint": v.fingerprint or ""}
        if status == 503:
            headers["Retry-After"] = str(self.config.retry_after_s)
        body = {"variant": variant, "fingerprint": v.fingerprint, **reply}
        return JSONResponse(body, status_code=status, headers=headers)
