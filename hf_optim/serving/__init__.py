"""Serving hf_optim artifacts with Ray Serve (the ``serve`` extra: ``pip install hf-optim[serve]``).

One application serves one or more artifacts (torch, hf_optim-quantized torch, ONNX exports) with a weighted,
optionally sticky traffic split; each replica runs an :class:`~hf_optim.inference.InferenceEngine`. Ray Serve
places, balances, autoscales and replaces the replicas. ``hf-optim serve`` is the command line; docs/serving.md
has the HTTP API and the Prometheus series.

    from ray import serve
    from hf_optim.serving import ServeConfig, build_app

    config = ServeConfig(variants=[{"name": "a", "artifact": "runs/ms/teacher"}], replicas=2)
    serve.run(build_app(config), name=config.name, route_prefix="/")

Only the configs import without Ray.
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .config import ServeConfig, VariantConfig, parse_split

_LAZY = {
    "build_app": "hf_optim.serving.app",
    "app_builder": "hf_optim.serving.app",
    "serve_config_file": "hf_optim.serving.app",
    "METRICS": "hf_optim.serving.metrics",
    "ArtifactModel": "hf_optim.serving.replica",
    "LiveStats": "hf_optim.serving.stats",
}

__all__ = ["ServeConfig", "VariantConfig", "parse_split", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
