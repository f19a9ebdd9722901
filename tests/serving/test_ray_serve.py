"""A real local Ray Serve application (no mocks): 2 replicas of one variant and 1 of another behind the router,
concurrent HTTP clients on localhost, the A/B split, errors, back-pressure, the Prometheus series and a killed
replica. One Ray instance for the module; the whole file stays within a few minutes on 2 cores."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from hf_optim.serving import ServeConfig, build_app  # noqa: E402
from hf_optim.serving.app import resolve  # noqa: E402
from hf_optim.serving.metrics import METRICS, exported_name  # noqa: E402
from hf_optim.testing import save_tiny_bert, save_tiny_llama  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.multiprocess]

WORDS = "the a film movie good great bad awful fun boring best worst love hate funny dull story plot acting".split()
TEXTS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 9)) for i in range(200)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body, timeout: float = 60) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), {k.lower(): v for k, v in e.headers.items()}


def _expected(model_dir) -> dict[str, int]:
    """The label id of every test text from the model loaded here, in this process."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        return {t: model(**tok(t, return_tensors="pt")).logits[0].numpy() for t in TEXTS}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    a, b = save_tiny_bert(root / "a", seed=0), save_tiny_bert(root / "b", seed=1)
    metrics_port, http_port = _free_port(), _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 1000})
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    config = ServeConfig(
        name="ab", replicas=2, num_cpus=0, threads=1, max_texts=64, retries=2, request_timeout_s=30,
        inference={"max_batch_size": 16, "max_wait_ms": 2, "max_queue": 32, "cache_entries": 1000},
        variants=[{"name": "a", "artifact": str(a), "weight": 0.9}, {"name": "b", "artifact": str(b), "weight": 0.1,
                                                                     "replicas": 1}])
    serve.run(build_app(config), name=config.name, route_prefix="/")
    try:
        yield {"url": f"http://127.0.0.1:{http_port}", "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
               "config": resolve(config), "expected": {"a": _expected(a), "b": _expected(b)}, "root": root}
    finally:
        serve.shutdown()
        ray.shutdown()


def test_concurrent_traffic_split_results_and_fingerprints(served):
    url, expected = served["url"] + "/v1/classify", served["expected"]
    fingerprints = {v.name: v.fingerprint for v in served["config"].variants}
    n = 1000
    answers: list = [None] * n

    def one(i: int) -> None:
        status, body, headers = _post(url, {"texts": [TEXTS[i % len(TEXTS)]]})
        assert answers[i] is None
        answers[i] = (status, body, headers)

    with ThreadPoolExecutor(8) as pool:  # bounded concurrency from a real HTTP client
        list(pool.map(one, range(n)))
    assert all(a is not None for a in answers)  # every request answered, once
    counts = {"a": 0, "b": 0}
    for i, (status, body, headers) in enumerate(answers):
        assert status == 200, body
        v = body["variant"]
        counts[v] += 1
        assert body["fingerprint"] == fingerprints[v] and headers["x-hf-optim-fingerprint"] == fingerprints[v]
        assert headers["x-hf-optim-variant"] == v
        (result,) = body["results"]
        logits = expected[v][TEXTS[i % len(TEXTS)]]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert result["label_id"] == int(logits.argmax())
        np.testing.assert_allclose(result["scores"], probs, atol=1e-4)
    assert abs(counts["a"] / n - 0.9) <= 0.05, counts
    # sticky: one key, one variant; many keys follow the weights
    seen = {_post(url, {"texts": ["a good film"], "key": "user-42"})[1]["variant"] for _ in range(10)}
    assert len(seen) == 1
    keyed = [_post(url, {"texts": ["a good film"], "key": f"user-{k}"})[1]["variant"] for k in range(100)]
    assert 70 <= keyed.count("a") <= 100


def test_requests_are_validated_with_clear_4xx_and_backpressure_is_503(served):
    url = served["url"]
    cases = [({"texts": [""]}, 422, "texts[0] is empty"), ({"texts": [3]}, 422, "not a string"),
             ({"text": None}, 422, "NoneType, not a string"), ({"texts": "abc"}, 422, "non-empty list"),
             ({"nothing": 1}, 422, "expected"),
             ({"texts": ["x" * 20001]}, 413, "characters"), ({"texts": ["good " * 300]}, 413, "texts[0]"),
             ({"texts": ["a"] * 65}, 413, "at most 64"), (b"not json", 400, "JSON object"),
             ([1, 2], 400, "JSON object")]
    for body, status, words in cases:
        got, reply, headers = _post(url + "/v1/classify", body)
        assert (got, reply["error"]["status"]) == (status, status), (body, reply)
        assert words in reply["error"]["message"] and reply["variant"] in ("a", "b") and reply["fingerprint"]
    got, reply, _ = _post(url + "/v1/generate", {"prompt": "hello"})
    assert got == 404 and "/v1/classify" in reply["error"]["message"]
    # 64 texts in one request against an engine queue of 32: refused at once, with Retry-After
    got, reply, headers = _post(url + "/v1/classify", {"texts": [f"film {i} " + TEXTS[i] for i in range(64)]})
    assert got == 503 and reply["error"]["reason"] == "overloaded" and headers["retry-after"] == "1"
    with urllib.request.urlopen(url + "/healthz", timeout=30) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok" and [v["name"] for v in health["variants"]] == ["a", "b"]


def test_metrics_endpoint_exposes_the_documented_series(served):
    deadline, text = time.time() + 120, ""
    wanted = {exported_name(name) for name, (kind, *_rest) in METRICS.items() if name != "hf_optim_serve_retries"}
    labels = ('variant="b"', 'application="ab"', 'reason="invalid"', 'status="503"')
    while time.time() < deadline:  # replicas push their metrics every few seconds, later on a loaded machine
        text = urllib.request.urlopen(served["metrics"], timeout=30).read().decode()
        present = {line.split("{")[0] for line in text.splitlines() if line.startswith("ray_hf_optim")}
        if wanted <= present and all(label in text for label in labels):
            break
        time.sleep(1)
    assert wanted <= present, sorted(wanted - present)
    assert 'application="ab"' in text and 'reason="invalid"' in text and 'status="503"' in text


def test_compare_reads_the_live_per_variant_numbers_next_to_the_offline_ones(served, capsys):
    from hf_optim.cli import main

    from ..report.helpers import eval_stage, write_run

    run = write_run(served["root"], {"recipe": "ab", "status": "complete", "stages": [
        eval_stage("eval-a", "a", 0.5, 3.0, 300.0, 1.0), eval_stage("eval-b", "b", 0.6, 2.0, 400.0, 1.0)]})
    before = {v["name"]: v["requests"] for v in json.loads(urllib.request.urlopen(
        served["url"] + "/v1/stats", timeout=30).read())["variants"]}
    for i in range(20):
        assert _post(served["url"] + "/v1/classify", {"texts": [TEXTS[i]], "key": f"c{i}"})[0] == 200
    assert main(["compare", str(run), "--serving", served["url"], "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["serving"]["rows"]
    fingerprints = {v.name: v.fingerprint for v in served["config"].variants}
    assert [(r["artifact"], r["variant"]["name"]) for r in rows] == [("a", "a"), ("b", "b")]  # by fingerprint
    assert [r["variant"]["fingerprint"] for r in rows] == [fingerprints["a"], fingerprints["b"]]
    assert sum(r["variant"]["requests"] - before[r["variant"]["name"]] for r in rows) == 20  # each counted once
    live = rows[0]["variant"]
    assert live["latency_ms"]["p50"] > 0 and live["texts_per_s"] > 0 and rows[0]["offline"]["value"] == 0.5
    assert main(["compare", str(run), "--serving", served["url"]]) == 0
    assert "| a | 0.5000 | 3.00 | 4.50 | 300.0 | a |" in capsys.readouterr().out


def test_a_killed_replica_is_replaced_and_no_request_is_lost(served):
    url = served["url"] + "/v1/classify"
    handle = serve.get_deployment_handle("variant-a", app_name="ab")
    victim = handle.info.remote().result()["actor"]
    answers: list = [None] * 300
    started = threading.Event()

    def one(i: int) -> None:
        started.set()
        answers[i] = _post(url, {"texts": [TEXTS[i % len(TEXTS)] + " film"], "key": f"k{i % 50}"})

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(len(answers))]
        started.wait(30)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        for f in futures:
            f.result()
    statuses = [a[0] for a in answers]
    assert all(a is not None for a in answers)
    for status, body, _ in answers:  # answered, or refused with a reason the client can act on
        assert status == 200 or (status == 503 and body["error"]["reason"] == "replica_lost"), body
    assert statuses.count(200) >= len(answers) - 8
    deadline = time.time() + 90
    while time.time() < deadline:
        states = serve.status().applications["ab"].deployments["variant-a"].replica_states
        if states.get("RUNNING") == 2:
            break
        time.sleep(1)
    assert states.get("RUNNING") == 2, states
    assert victim not in {handle.info.remote().result()["actor"] for _ in range(20)}


def test_a_causal_lm_generates_through_its_own_application(served):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = save_tiny_llama(served["root"] / "lm")
    config = ServeConfig(name="lm", variants=[{"name": "lm", "artifact": str(lm)}], num_cpus=0, threads=1,
                         max_new_tokens=8)
    serve.run(build_app(config), name="lm", route_prefix="/lm")
    url = served["url"] + "/lm/v1/generate"
    status, body, _ = _post(url, {"prompt": "the film was", "max_new_tokens": 5})
    assert status == 200 and body["variant"] == "lm" and body["fingerprint"].startswith("dir:")
    model, tok = AutoModelForCausalLM.from_pretrained(lm).eval(), AutoTokenizer.from_pretrained(lm)
    ids = tok("the film was", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    new = ref[0, ids.shape[1]:]
    assert body["text"] == tok.decode(new, skip_special_tokens=True) and body["tokens"] == len(new) <= 5
    assert _post(url, {"prompt": "the film", "max_new_tokens": 9})[0] == 422
    assert _post(url, {"prompt": "  "})[0] == 422
    assert _post(served["url"] + "/lm/v1/classify", {"texts": ["a"]})[0] == 404
    serve.delete("lm")
