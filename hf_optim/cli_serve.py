"""``hf-optim serve``: serve artifacts with Ray Serve on a local Ray instance (or the cluster at ``RAY_ADDRESS``).

    hf-optim serve runs/ms/teacher runs/ms/export --split 0.9,0.1 --replicas auto --port 8000

It prints the URL, writes the Ray Serve config file (``serve deploy`` of it runs the same application on a
cluster) and serves until Ctrl-C, then removes the application (and stops the Ray instance it started).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

from .errors import HfOptimError

__all__ = ["add_serve_parser", "cmd_serve"]


def add_serve_parser(sub, common: argparse.ArgumentParser) -> None:
    """Register the ``serve`` sub-command on ``sub`` (the parser's sub-parsers)."""
    sv = sub.add_parser("serve", parents=[common], help="serve artifacts over HTTP with Ray Serve (A/B split, autoscaling)",
                        description="Serve one or more artifacts (torch, quantized torch, ONNX) with Ray Serve: "
                        "POST /v1/classify (or /v1/generate for causal LMs), GET /healthz, Prometheus metrics. "
                        "Starts a local Ray instance, or joins the cluster at RAY_ADDRESS. Needs the serve extra.")
    sv.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="model directories or .onnx files")
    sv.add_argument("--split", help="traffic weights, one per artifact (e.g. 0.9,0.1; default: even)")
    sv.add_argument("--names", help="variant names, comma-separated (default: the artifacts' directory names)")
    sv.add_argument("--replicas", default="1", help="replicas per variant: a count or 'auto' (Ray Serve autoscaling)")
    sv.add_argument("--max-replicas", type=int, default=4, help="upper bound with --replicas auto")
    sv.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs Ray reserves per replica")
    sv.add_argument("--threads", type=int, help="torch / ONNX Runtime threads per replica")
    sv.add_argument("--max-batch-size", type=int, default=32)
    sv.add_argument("--max-wait-ms", type=float, default=5.0)
    sv.add_argument("--max-queue", type=int, default=256, help="texts in flight per replica before 503")
    sv.add_argument("--cache-entries", type=int, default=0, help="result cache per replica (0: none)")
    sv.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 to listen on every interface)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--metrics-port", type=int, help="Prometheus port of a local Ray instance (default: a free one)")
    sv.add_argument("--app-name", default="hf-optim", help="the Ray Serve application name")
    sv.add_argument("--config-out", help="where to write the Ray Serve config file (default: in hf_optim's "
                    "state folder; the path is printed)")
    sv.add_argument("--dry-run", action="store_true", help="write and print the Ray Serve config file; start nothing")
    sv.set_defaults(fn=cmd_serve)


def _config(args: argparse.Namespace):
    from .serving.app import variants_from_artifacts
    from .serving.config import ServeConfig, parse_split

    replicas = args.replicas if args.replicas == "auto" else _count(args.replicas)
    names = args.names.split(",") if args.names else None
    if names is not None and len(names) != len(args.artifacts):
        raise HfOptimError(f"--names has {len(names)} names for {len(args.artifacts)} artifacts")
    variants = variants_from_artifacts(args.artifacts, parse_split(args.split, len(args.artifacts)), names)
    return ServeConfig(variants=variants, name=args.app_name, replicas=replicas, max_replicas=args.max_replicas,
                       num_cpus=args.cpus_per_replica, threads=args.threads,
                       inference={"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                                  "max_queue": args.max_queue, "cache_entries": args.cache_entries})


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise HfOptimError(f"--replicas {text!r}: expected a count or 'auto'") from None


def _config_path(args: argparse.Namespace) -> Path:
    if args.config_out:
        return Path(args.config_out).expanduser()
    import platformdirs

    return Path(platformdirs.user_state_dir("hf_optim")) / "serve" / args.app_name / "serve_config.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving.app import build_app, resolve, serve_config_file

    config = resolve(_config(args))  # artifacts checked before Ray starts
    path = serve_config_file(config, _config_path(args), host="0.0.0.0", port=args.port)
    if args.dry_run:
        print(path.read_text(), end="")
        print(f"serve config: {path}")
        return 0
    try:
        import ray
        from ray import serve
    except ImportError:
        raise HfOptimError("hf-optim serve needs Ray Serve: pip install 'hf-optim[serve]'") from None
    address = os.environ.get("RAY_ADDRESS")
    metrics_port = None
    if address:
        ray.init(address=address)
    else:
        metrics_port = args.metrics_port or _free_port()
        # logical CPUs: enough for every replica asked for, even on a small machine (they share the cores)
        counts = [config.max_replicas if r == "auto" else r for r in
                  (v.replicas if v.replicas is not None else config.replicas for v in config.variants)]
        ray.init(num_cpus=max(os.cpu_count() or 1, int(sum(counts) * config.num_cpus + 0.999)),
                 include_dashboard=False, _metrics_export_port=metrics_port)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(config), name=config.name, route_prefix=config.route_prefix)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{host}:{args.port}{config.route_prefix.rstrip('/')}"
        route = "/v1/generate" if config.variants[0].task_type == "causal-lm" else "/v1/classify"
        print(f"serving {', '.join(f'{v.name}={v.weight:g}' for v in config.variants)} at {url}")
        print(f"  POST {url}{route}   GET {url}/healthz   GET {url}/v1/stats")
        print(f"  live numbers next to a run's: hf-optim compare RUN_DIR --serving {url}")
        if metrics_port:
            print(f"  metrics: http://127.0.0.1:{metrics_port}/metrics")
        print(f"  serve config: {path} (serve deploy {path})")
        print("Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        if address:
            serve.delete(config.name)
        else:
            serve.shutdown()
            ray.shutdown()
    return 0
