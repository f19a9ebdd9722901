"""`hf-optim compare RUN --serving URL`: live per-variant serving numbers next to a run's offline ones, read from a
real HTTP server on localhost that answers a recorded ``/v1/stats`` payload."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hf_optim.cli import main
from hf_optim.inference.cache import dir_fingerprint
from hf_optim.report.live import compare_live, fetch_serving_stats, render_live

from .helpers import pipeline_report, write_run

RECORDED = json.loads((Path(__file__).parents[1] / "fixtures" / "serving_stats.json").read_text())


def _artifact(directory: Path, seed: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "bert", "seed": seed}))
    (directory / "model.safetensors").write_bytes(seed.encode())
    return directory


@pytest.fixture
def stats_server():
    """``serve(payload)`` answers ``payload`` on GET /v1/stats (404 elsewhere); yields the base URL."""
    state: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = json.dumps(state["payload"]).encode() if self.path == "/v1/stats" else b'{"detail": "Not Found"}'
            self.send_response(200 if self.path == "/v1/stats" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(payload: dict) -> str:
        state["payload"] = payload
        return f"http://127.0.0.1:{server.server_address[1]}"

    try:
        yield serve
    finally:
        server.shutdown()
        server.server_close()


def _run_and_payload(tmp_path):
    """A run whose teacher and export exist on disk, and the payload recorded from `hf-optim serve` of a run's
    teacher and export, its variants renamed (matching goes by fingerprint, not name) and given this run's
    fingerprints, plus a third variant that is no artifact of the run."""
    run = write_run(tmp_path / "run", pipeline_report())
    teacher, export = _artifact(run / "teacher", "t"), _artifact(run / "export", "e")
    payload = copy.deepcopy(RECORDED)
    assert [v["name"] for v in payload["variants"]] == ["teacher", "export"]
    payload["variants"].append({**payload["variants"][1], "name": "other", "fingerprint": "dir:0123456789abcdef"})
    for v, name, directory in zip(payload["variants"], ("fp32", "int8"), (teacher, export)):
        v["name"], v["fingerprint"] = name, dir_fingerprint(directory)
    return run, payload


def test_live_numbers_sit_next_to_the_offline_rows_matched_by_fingerprint(tmp_path, stats_server):
    run, payload = _run_and_payload(tmp_path)
    url = stats_server(payload)
    stats = fetch_serving_stats(url + "/")
    assert stats["url"] == url and [v["name"] for v in stats["variants"]] == ["fp32", "int8", "other"]
    cmp = compare_live(run, stats)
    rows = [(r["artifact"], (r["variant"] or {}).get("name")) for r in cmp["rows"]]
    assert rows == [("teacher", "fp32"), ("distill", None), ("export", "int8"), (None, "other")]
    teacher = cmp["rows"][0]
    assert teacher["offline"] == {"value": 0.85, "latency_ms_p50": 10.0, "latency_ms_p95": 15.0,
                                  "throughput_samples_per_s": 100.0}
    live = payload["variants"][0]
    assert teacher["variant"]["requests"] == live["requests"] and teacher["variant"]["latency_ms"] == live["latency_ms"]
    text = render_live(cmp)
    lat = live["latency_ms"]
    assert f"| teacher | 0.8500 | 10.00 | 15.00 | 100.0 | fp32 | {live['fingerprint'][:16]} | {live['requests']:,d} |" in text
    assert f"| {lat['p50']:.2f} | {lat['p95']:.2f} | {live['texts_per_s']:.1f} |" in text
    assert "| distill | 0.8400 | 5.00 | 7.50 | 200.0 | not served |" in text
    assert "| (not in this run) | — | — | — | — | other |" in text


def test_cli_compare_serving_text_json_and_with_a_second_run(tmp_path, stats_server, capsys):
    run, payload = _run_and_payload(tmp_path)
    url = stats_server(payload)
    assert main(["compare", str(run), "--serving", url]) == 0
    out = capsys.readouterr().out
    assert f"Serving: {payload['application']} at {url}" in out and "| export | 0.8450 |" in out
    assert main(["compare", str(run), "--serving", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["serving"] and data["serving"]["rows"][2]["variant"]["name"] == "int8"
    other = write_run(tmp_path / "b", pipeline_report(student_tp=500.0))
    assert main(["compare", str(run), str(other), "--serving", url]) == 0
    out = capsys.readouterr().out
    assert out.index("| final: export vs export |") < out.index("Serving: ")


@pytest.mark.parametrize("target,match", [
    ("closed", r"no serving application answers at http://127\.0\.0\.1:\d+ \(.*refused.*\)"),
    ("wrong-route", r"answered HTTP 404: is .* an hf-optim serve application"),
    ("not-stats", r"did not answer hf_optim serving statistics"),
    ("ftp://x", r"expected an http:// or https:// URL"),
    (None, r"compare needs a second run directory or --serving URL"),
])
def test_cli_compare_serving_errors_are_one_line_exit_2(tmp_path, stats_server, capsys, target, match):
    import re
    import socket

    run, payload = _run_and_payload(tmp_path)
    if target == "closed":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
    elif target == "wrong-route":
        url = stats_server(payload) + "/elsewhere"
    elif target == "not-stats":
        url = stats_server({"status": "ok"})
    else:
        url = target
    argv = ["compare", str(run)] + (["--serving", url] if url else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err), err
