"""Embedding the inference engine in a web handler (standard library only; any framework works the same way).

Every HTTP request is handled in its own thread and submits its texts to one shared engine; requests from
different users that arrive together are batched by length. ``GET /stats`` shows the engine's metrics.

    python scripts/serve_example.py runs/movie-sentiment/teacher --port 8000
    curl -s localhost:8000/predict -d '{"texts": ["a gripping film", "dull and far too long"]}'
    curl -s localhost:8000/stats

    python scripts/serve_example.py --self-test     # tiny built-in model, ephemeral port, a few requests, exit
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_handler(engine, id2label: dict[int, str]):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/stats":
                return self._reply(200, engine.stats())
            self._reply(404, {"error": "GET /stats or POST /predict"})

        def do_POST(self):  # noqa: N802
            if self.path != "/predict":
                return self._reply(404, {"error": "POST /predict"})
            from hf_optim.inference import QueueFull

            try:
                texts = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))["texts"]
                futures = [engine.submit(t) for t in texts]
            except QueueFull as e:
                return self._reply(503, {"error": str(e)})          # back-pressure: the client retries later
            except (ValueError, KeyError, TypeError):
                return self._reply(400, {"error": 'expected JSON {"texts": ["...", ...]}'})
            out = []
            for f in futures:                                       # one bad text fails alone
                try:
                    logits = f.result(timeout=30)
                    probs = (lambda e: e / e.sum())(__import__("numpy").exp(logits - logits.max()))
                    out.append({"label": id2label.get(int(probs.argmax()), str(int(probs.argmax()))),
                                "score": round(float(probs.max()), 4)})
                except Exception as e:
                    out.append({"error": f"{type(e).__name__}: {e}"})
            self._reply(200, {"predictions": out})

        def log_message(self, *args):  # keep the example's output readable
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="a model directory (from_pretrained or ONNX export)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args(argv)

    from hf_optim.inference import InferenceEngine

    model = args.model
    if args.self_test:
        from hf_optim.testing import save_tiny_bert

        scratch = tempfile.mkdtemp(prefix="hf_optim-serve-")  # removed when the self-test ends
        model = save_tiny_bert(os.path.join(scratch, "tiny-bert"))
        args.port = 0
    elif model is None:
        ap.error("a model directory is required (or --self-test)")

    engine = InferenceEngine(model, max_batch_size=32, max_wait_ms=5, truncation=True, cache=True,
                             cache_ttl_s=3600, max_queue=1024)
    config = getattr(engine.model, "config", None)
    id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(engine, id2label))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    if not args.self_test:
        print(f"serving {model} on {url} (POST /predict, GET /stats); Ctrl-C stops", file=sys.stderr)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            engine.close()
        return

    try:
        threading.Thread(target=server.serve_forever, daemon=True).start()

        def post(texts):
            req = urllib.request.Request(url + "/predict", data=json.dumps({"texts": texts}).encode())
            return json.loads(urllib.request.urlopen(req, timeout=30).read())

        clients = [threading.Thread(target=post, args=(["good film", "the plot was dull", "fun"],)) for _ in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        print(json.dumps(post(["a great story", 42, "a great story"]), indent=1))
        stats = json.loads(urllib.request.urlopen(url + "/stats", timeout=30).read())
        print(json.dumps({k: stats[k] for k in ("requests", "batches", "padding_ratio", "latency_ms")}, indent=1))
    finally:
        server.shutdown()
        server.server_close()
        engine.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
