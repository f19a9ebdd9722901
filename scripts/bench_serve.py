"""Serving through Ray Serve vs the in-process engine: what the HTTP and Ray hops cost, and what a second replica
buys.

``--clients`` closed-loop client threads (each sends its next request when the last one was answered) send
``--n`` movie-sentiment test sentences, one per request:

  in_process   the same InferenceEngine settings in this process (no HTTP, no Ray): the reference;
  serve_r1     ``hf_optim.serving`` on a local Ray instance, 1 replica, HTTP on 127.0.0.1 (keep-alive connections);
  serve_r2     the same with 2 replicas (Ray Serve balances the requests over them).

Reported per mode: requests/s and latency p50/p95/p99 (ms), and the share of the in-process throughput. Modes run
one after the other (a Ray application takes seconds to start), ``--rounds`` times each, medians reported. Only
localhost is used; the Ray instance is started and stopped by the script.

    python scripts/bench_serve.py --model runs/movie-sentiment/export --threads 1 -o scripts/results/bench_serve.json
    python scripts/bench_serve.py --tiny --n 400 -o /tmp/bench_serve_tiny.json     # a tiny random model
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402


def _run_clients():
    """The closed-loop clients of bench_inference.py: both benchmarks load the server the same way."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_inference", Path(__file__).with_name("bench_inference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_clients


def http_sender(port: int):
    """``send(text) -> class probabilities`` over one keep-alive connection per client thread."""
    local = threading.local()

    def send(text: str) -> np.ndarray:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        local.conn.request("POST", "/v1/classify", body=json.dumps({"texts": [text]}).encode(),
                           headers={"Content-Type": "application/json"})
        r = local.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
        return np.asarray(json.loads(data)["results"][0]["scores"])

    return send


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="artifact to serve (model directory or ONNX export)")
    ap.add_argument("--tiny", action="store_true", help="serve a tiny random BERT (hf_optim.testing) instead")
    ap.add_argument("--n", type=int, default=2000, help="requests per pass")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--replicas", default="1,2", help="replica counts to measure through Ray Serve")
    ap.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads per engine")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1, help="passes per mode; medians are reported")
    ap.add_argument("-o", "--out", type=Path, help="write the JSON here (it is always printed)")
    args = ap.parse_args(argv)
    if not args.model and not args.tiny:
        ap.error("pass --model DIR or --tiny")

    import ray
    import torch
    from ray import serve

    from hf_optim.data import load_task
    from hf_optim.evaluation.harness import BenchRun
    from hf_optim.inference import InferenceConfig, InferenceEngine
    from hf_optim.serving import ServeConfig, build_app

    run = BenchRun(args, argv, threads=args.threads)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="hf_optim-bench-serve-")
    if args.tiny:
        from hf_optim.testing import save_tiny_bert

        model = str(save_tiny_bert(Path(tmp.name) / "tiny-bert"))
    else:
        model = str(Path(args.model).resolve())
    texts = list(load_task("movie-sentiment")["test"]["text"][: args.n])
    # the engine truncates to its last bucket alike in every mode
    engine_config = InferenceConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, truncation=True,
                                    max_queue=100_000, ort_threads=args.threads)
    rows: dict = {}

    def record(name: str, passes: list[dict]) -> None:
        rows[name] = {"requests_per_s": round(float(np.median([p["requests_per_s"] for p in passes])), 1),
                      "latency_ms": {k: round(float(np.median([p["latency_ms"][k] for p in passes])), 2)
                                     for k in ("p50", "p95", "p99")}}

    run_clients = _run_clients()
    with InferenceEngine(model, config=engine_config) as engine:
        local = lambda text: engine.submit(text).result()  # noqa: E731
        run_clients(local, texts[:64], args.clients)  # warm-up
        record("in_process", [run_clients(local, texts, args.clients) for _ in range(args.rounds)])

    port = _free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas in (int(r) for r in args.replicas.split(",")):
            config = ServeConfig(name="bench", variants=[{"name": "m", "artifact": model}], replicas=replicas,
                                 num_cpus=0, threads=args.threads, inference=engine_config.to_dict(),
                                 max_ongoing_requests=max(64, args.clients), max_chars=1_000_000)
            serve.run(build_app(config), name="bench", route_prefix="/")
            send = http_sender(port)
            run_clients(send, texts[:64], args.clients)
            record(f"serve_r{replicas}", [run_clients(send, texts, args.clients) for _ in range(args.rounds)])
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()
    base = rows["in_process"]["requests_per_s"]
    ratios = {f"{name}_vs_in_process": round(r["requests_per_s"] / base, 3) for name, r in rows.items()
              if name != "in_process"}
    report = run.write(args.out, rows, model="tiny-bert (random, hf_optim.testing)" if args.tiny else str(args.model),
                       requests=len(texts), clients=args.clients, rounds=args.rounds, ratios=ratios,
                       engine_config=engine_config.to_dict())
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
