"""Serving through Ray Serve vs the in-process engine: what the HTTP and Ray hops cost, and what a second replica
buys, for a run's FP32 teacher and its final artifact.

Closed-loop client threads (each sends its next request when the last one was answered) send movie-sentiment
test sentences, one per request, to each artifact in each mode:

  in_process        the same InferenceEngine settings in this process (no HTTP, no Ray): the reference;
  serve_r1          ``hf_optim.serving`` on a local Ray instance, 1 replica, HTTP on 127.0.0.1 (keep-alive);
  serve_r2          the same with 2 replicas (Ray Serve balances the requests over them);
  *_1client         in_process and serve_r1 again with one client, one request at a time: the latency the
                    HTTP/Ray hop adds to a request, without queueing behind other clients.

Every application is deployed before the timing starts (one Ray application per artifact and replica count, on
its own route), so the modes run in interleaved rounds (every mode once per round, the order rotated) and medians
are reported. Served answers are checked against the in-process ones, and the in-process engine's last pass
against its first (an artifact with dynamic INT8 activations answers a text slightly differently in another
batch). Only localhost is used; the script starts
and stops its own Ray instance.

    python scripts/bench_serve.py --run runs/movie-sentiment --rounds 5 -o scripts/results/bench_serve.json
    python scripts/bench_serve.py --tiny --n 200 --rounds 1 -o /tmp/bench_serve_tiny.json     # a tiny random model
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


def http_sender(port: int, prefix: str):
    """``send(text) -> class probabilities`` over one keep-alive connection per client thread."""
    local = threading.local()

    def send(text: str) -> np.ndarray:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        local.conn.request("POST", f"{prefix}/v1/classify", body=json.dumps({"texts": [text]}).encode(),
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


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def run_artifacts(run_dir: Path) -> dict[str, Path]:
    """The run's FP32 baseline (``teacher``) and its final artifact (the last one its report evaluated)."""
    report = json.loads((run_dir / "report.json").read_text())
    names = [a["artifact"] for a in report["artifacts"]]
    baseline = (report.get("cost") or {}).get("baseline") or names[0]
    return {baseline: run_dir / baseline, names[-1]: run_dir / names[-1]}


def _summary(passes: list[dict], clients: int) -> dict:
    rates = [p["requests_per_s"] for p in passes]
    return {"clients": clients, "requests_per_s": round(float(np.median(rates)), 1),
            "requests_per_s_runs": [round(float(r), 1) for r in rates],
            "latency_ms": {k: round(float(np.median([p["latency_ms"][k] for p in passes])), 2)
                           for k in ("p50", "p95", "p99")}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a finished run: serve its teacher and its final artifact")
    ap.add_argument("--model", action="append", default=[], help="an artifact to serve (repeatable)")
    ap.add_argument("--tiny", action="store_true", help="serve a tiny random BERT (hf_optim.testing) instead")
    ap.add_argument("--n", type=int, default=400, help="requests per pass with --clients clients")
    ap.add_argument("--hop-n", type=int, default=100, help="requests per pass with one client (0: skip)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--replicas", default="1,2", help="replica counts to measure through Ray Serve")
    ap.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads per engine")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("-o", "--out", type=Path, help="write the JSON here (it is always printed)")
    args = ap.parse_args(argv)
    if not (args.run or args.model or args.tiny):
        ap.error("pass --run RUN_DIR, --model DIR or --tiny")

    import ray
    import torch
    from ray import serve

    from hf_optim.data import load_task
    from hf_optim.evaluation.harness import BenchRun, interleaved
    from hf_optim.inference import InferenceConfig, InferenceEngine, dir_fingerprint
    from hf_optim.serving import ServeConfig, build_app

    run = BenchRun(args, argv, threads=args.threads)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="hf_optim-bench-serve-")
    models: dict[str, Path] = run_artifacts(args.run) if args.run else {}
    models.update({Path(m).name: Path(m) for m in args.model})
    if args.tiny:
        from hf_optim.testing import save_tiny_bert

        models["tiny-bert"] = Path(save_tiny_bert(Path(tmp.name) / "tiny-bert"))
    texts = list(load_task("movie-sentiment")["test"]["text"][: max(args.n, args.hop_n)])
    many, few = texts[: args.n], texts[: args.hop_n]
    # the engine truncates to its last bucket alike in every mode
    engine_config = InferenceConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, truncation=True,
                                    max_queue=100_000, ort_threads=args.threads)
    replica_counts = [int(r) for r in args.replicas.split(",")]
    run_clients = _run_clients()
    engines = {name: InferenceEngine(str(path.resolve()), config=engine_config) for name, path in models.items()}
    port = _free_port()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        senders: dict[str, dict] = {}
        for name, path in models.items():
            local = engines[name]
            senders[name] = {"in_process": lambda text, e=local: e.submit(text).result()}
            for replicas in replica_counts:
                app = f"{name}-r{replicas}"
                config = ServeConfig(name=app, variants=[{"name": "m", "artifact": str(path.resolve())}],
                                     replicas=replicas, num_cpus=0, threads=args.threads,
                                     inference=engine_config.to_dict(), max_ongoing_requests=max(64, args.clients),
                                     max_chars=1_000_000)
                serve.run(build_app(config), name=app, route_prefix=f"/{app}")
                senders[name][f"serve_r{replicas}"] = http_sender(port, f"/{app}")
        outputs: dict[str, np.ndarray] = {}
        first: dict[str, np.ndarray] = {}

        def measure(key: str, send, batch: list[str], clients: int) -> dict:
            result = run_clients(send, batch, clients)
            outputs[key] = result.pop("outputs")  # the last pass's answers, checked below
            first.setdefault(key, outputs[key])
            return result

        modes = {}
        for name, by_mode in senders.items():
            for mode, send in by_mode.items():
                run_clients(send, texts[:64], args.clients)  # warm-up: every replica, bucket and connection
                key = f"{name}/{mode}"
                modes[key] = lambda s=send, k=key: measure(k, s, many, args.clients)
                if args.hop_n and mode in ("in_process", f"serve_r{replica_counts[0]}"):
                    modes[f"{key}_1client"] = lambda s=send, k=f"{key}_1client": measure(k, s, few, 1)
        passes = interleaved(modes, args.rounds, warmup=0)
    finally:
        serve.shutdown()
        ray.shutdown()
        for engine in engines.values():
            engine.close()
        tmp.cleanup()

    rows, overhead, agreement = {}, {}, {}
    for key, runs in passes.items():
        name, mode = key.split("/")
        clients = 1 if mode.endswith("_1client") else args.clients
        rows[key] = {"artifact": name, "mode": mode, **_summary(runs, clients)}
    for name in models:
        ref = rows[f"{name}/in_process"]
        reference = _softmax(np.asarray(outputs[f"{name}/in_process"], dtype=np.float64))

        def agree(got) -> dict:
            got = np.asarray(got, dtype=np.float64)
            return {"same_label": float((got.argmax(-1) == reference.argmax(-1)).mean()),
                    "max_abs_prob_diff": float(np.abs(got - reference).max())}

        # the engine against itself (first and last pass): how much the answers depend on which requests
        # happened to share a batch (dynamic INT8 quantizes activations with one scale per call)
        agreement[f"{name}/in_process_first_pass"] = agree(_softmax(np.asarray(first[f"{name}/in_process"])))
        for key, row in rows.items():
            if row["artifact"] == name and not key.endswith(("/in_process", "_1client")):
                row["vs_in_process"] = round(row["requests_per_s"] / ref["requests_per_s"], 3)
                agreement[key] = agree(outputs[key])
        one, hop = rows.get(f"{name}/in_process_1client"), rows.get(f"{name}/serve_r{replica_counts[0]}_1client")
        if one and hop:
            overhead[name] = {k: round(hop["latency_ms"][k] - one["latency_ms"][k], 2) for k in ("p50", "p95")}
    report = run.write(args.out, rows, artifacts={name: {"path": str(path), "fingerprint": dir_fingerprint(path)}
                                                  for name, path in models.items()},
                       requests=len(many), requests_1client=len(few), clients=args.clients, rounds=args.rounds,
                       hop_overhead_ms=overhead, agreement=agreement, engine_config=engine_config.to_dict())
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
