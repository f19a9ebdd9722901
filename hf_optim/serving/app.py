"""Build the Ray Serve application of a :class:`~hf_optim.serving.ServeConfig`, and its ``serve deploy`` file.

One deployment per variant (``variant-<name>``, replicas running :class:`~hf_optim.serving.replica.ArtifactModel`)
and one ingress deployment (``router``, :class:`~hf_optim.serving.router.Router`). Ray Serve does the rest:
replica placement, load balancing across replicas, autoscaling (``replicas="auto"``), replacing replicas that die.

    from ray import serve
    from hf_optim.serving import ServeConfig, build_app

    config = ServeConfig(variants=[{"name": "fp32", "artifact": "runs/ms/teacher", "weight": 0.9},
                                   {"name": "int8", "artifact": "runs/ms/export", "weight": 0.1}], replicas="auto")
    serve.run(build_app(config), name=config.name, route_prefix=config.route_prefix)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from .config import ServeConfig, VariantConfig

__all__ = ["build_app", "app_builder", "resolve", "deployment_options", "serve_config_file"]

IMPORT_PATH = "hf_optim.serving.app:app_builder"


def resolve(config: ServeConfig) -> ServeConfig:
    """``config`` with each variant's artifact checked, made absolute, and its fingerprint and task type set."""
    from ..artifacts import checkpoint_kind
    from ..inference import dir_fingerprint

    variants = []
    for v in config.variants:
        path = Path(v.artifact).expanduser().resolve()
        if not path.exists():
            raise DataError(f"variant {v.name!r}: artifact {v.artifact} does not exist")
        kind = v.task_type or ("causal-lm" if checkpoint_kind(path if path.is_dir() else path.parent) == "causal-lm"
                               else "sequence-classification")
        variants.append(v.replace(artifact=str(path), fingerprint=v.fingerprint or dir_fingerprint(path),
                                  task_type=kind))
    return config.replace(variants=variants)


def deployment_options(config: ServeConfig, variant: VariantConfig | None = None) -> dict[str, Any]:
    """Ray Serve options of a variant's deployment (replicas or autoscaling, queue bounds, resources)."""
    replicas = variant.replicas if variant is not None and variant.replicas is not None else config.replicas
    opts: dict[str, Any] = {"max_ongoing_requests": config.max_ongoing_requests,
                            "max_queued_requests": config.max_queued_requests,
                            "ray_actor_options": {"num_cpus": config.num_cpus}}
    if replicas == "auto":
        opts["autoscaling_config"] = {"min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
                                      "target_ongoing_requests": config.target_ongoing_requests}
    else:
        opts["num_replicas"] = replicas
    return opts


def build_app(config: ServeConfig):
    """The Ray Serve ``Application`` serving ``config`` (run it with ``serve.run`` or deploy it)."""
    from ray import serve

    from .replica import ArtifactModel
    from .router import Router

    config = resolve(config)
    data = config.to_dict()
    model = serve.deployment(ArtifactModel)
    bound = [model.options(name=f"variant-{v.name}", **deployment_options(config, v)).bind(v.to_dict(), data)
             for v in config.variants]
    # the router only forwards (async, no model): a small share of a CPU and many requests at once
    router = serve.deployment(Router).options(
        name="router", num_replicas=1, max_ongoing_requests=max(1000, config.max_queued_requests),
        ray_actor_options={"num_cpus": 0})
    return router.bind(data, *bound)


def app_builder(args: dict[str, Any]):
    """The application builder ``serve run`` / ``serve deploy`` call with a config file's ``args`` (a
    :class:`~hf_optim.serving.ServeConfig` as a dict)."""
    return build_app(ServeConfig.from_dict(dict(args)))


def serve_config_file(config: ServeConfig, path: str | Path, host: str = "0.0.0.0", port: int = 8000) -> Path:
    """Write the Ray Serve config file of ``config`` (``serve deploy PATH`` on a cluster, ``serve run PATH``
    locally); returns the path."""
    import yaml

    from ..data.sources import atomic_write_text

    config = resolve(config)
    doc = {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port},
           "applications": [{"name": config.name, "route_prefix": config.route_prefix, "import_path": IMPORT_PATH,
                             "args": config.to_dict()}]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "# Ray Serve config written by hf-optim serve (docs/serving.md)\n"
                      + yaml.safe_dump(doc, sort_keys=False))
    return path


def variants_from_artifacts(artifacts: list[str], weights: list[float], names: list[str] | None = None) -> list[VariantConfig]:
    """One variant per artifact; names default to the artifacts' directory names (made unique)."""
    out, used = [], set()
    for i, (artifact, w) in enumerate(zip(artifacts, weights)):
        name = names[i] if names else "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(artifact).name)
        base, k = name or f"v{i}", 2
        while name in used or not name:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        out.append(VariantConfig(name=name, artifact=str(artifact), weight=w))
    return out
