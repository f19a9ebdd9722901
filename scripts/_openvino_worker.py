"""OpenVINO rows for ``scripts/bench_export.py``, run by the Python of a separate environment with Optimum Intel.

Optimum Intel pins its own Optimum and NNCF, so it lives in its own virtual environment (``make anchors-openvino``)
and this worker runs there as ``PYTHON -I -P scripts/_openvino_worker.py``: nothing is imported from the working
directory; ``hf_optim`` (for the pruned student's structure and the shared timing code) comes from the repository
root that the parent names. Protocol, one JSON object per line: the parent sends the setup, the worker builds
every variant and answers with sizes, logits and errors; then each ``{"round": NAME}`` is answered with one timed
round of that variant (the parent interleaves these with its own rows), until ``{"quit": true}``. Answers go to
the original stdout; everything else anything prints goes to stderr.

Variants: the teacher exported to OpenVINO IR in FP32, the teacher through NNCF static INT8 as Optimum Intel's docs
build it (``OVQuantizer`` + ``OVQuantizationConfig``, calibrated on the sentences the parent sends), the same INT8
model compiled for static shapes (``reshape(batch, seq_len)`` at the test set's padded length: batch 1 for
latency, batch 32 for throughput), and, given a student, the same two INT8 forms of it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path


def _size_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.glob("*.bin")) / 2**20, 2)


class _Dynamic:
    """Inputs padded to the longest in the batch, like the ONNX Runtime rows."""

    def __init__(self, model, tokenizer, max_length):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    def predict_logits(self, texts, pairs=None):
        import numpy as np

        enc = self.tokenizer(list(texts), pairs, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="np")
        return np.asarray(self.model(**enc).logits)


class _Static:
    """Every call padded to ``seq_len`` and to the compiled batch: the batch-1 model for single sentences, the
    batch-``n`` model otherwise (a short last batch is filled with copies of its last sentence, their logits
    dropped)."""

    def __init__(self, models: dict, tokenizer, seq_len):
        self.models, self.tokenizer, self.seq_len = models, tokenizer, seq_len

    def predict_logits(self, texts, pairs=None):
        import numpy as np

        texts = list(texts)
        batch = 1 if len(texts) == 1 else max(self.models)
        out = []
        for i in range(0, len(texts), batch):
            chunk = texts[i:i + batch]
            filled = chunk + [chunk[-1]] * (batch - len(chunk))
            enc = self.tokenizer(filled, truncation=True, max_length=self.seq_len, padding="max_length",
                                 return_tensors="np")
            out.append(np.asarray(self.models[batch](**enc).logits)[:len(chunk)])
        return np.concatenate(out)


def _build(setup: dict, errors: dict) -> dict:
    """``{row: (classifier, size_mb, build_seconds, info)}`` for every variant that builds."""
    import nncf
    from optimum.intel import OVConfig, OVModelForSequenceClassification, OVQuantizationConfig, OVQuantizer
    from transformers import AutoTokenizer

    work, threads, max_length = Path(setup["work"]), setup["threads"], setup["max_length"]
    ov_config = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
    rows = {}
    for role in ("teacher", "student"):
        src = setup.get(role)
        if not src:
            continue
        tok = AutoTokenizer.from_pretrained(src)
        seq_len = max(len(ids) for ids in tok(setup["texts"], truncation=True, max_length=max_length)["input_ids"])
        prefix = "openvino" if role == "teacher" else "openvino_student"
        try:
            t = time.perf_counter()
            fp32 = OVModelForSequenceClassification.from_pretrained(src, export=True, ov_config=ov_config)
            fp32.save_pretrained(work / f"{prefix}-fp32")
            if role == "teacher":
                rows[f"{prefix}_fp32"] = (_Dynamic(fp32, tok, max_length), _size_mb(work / f"{prefix}-fp32"),
                                          time.perf_counter() - t, {})
            t = time.perf_counter()
            # one sentence per sample, unpadded, as the OpenVINO model's inputs (the venv has no `datasets`)
            calibration = nncf.Dataset([dict(tok([s], truncation=True, max_length=max_length, return_tensors="np"))
                                        for s in setup["calibration"]])
            quantizer = OVQuantizer.from_pretrained(fp32)
            qdir = work / f"{prefix}-int8"
            quantizer.quantize(ov_config=OVConfig(quantization_config=OVQuantizationConfig(
                num_samples=len(setup["calibration"]))), calibration_dataset=calibration, save_directory=qdir)
            int8 = OVModelForSequenceClassification.from_pretrained(qdir, ov_config=ov_config)
            build_s = time.perf_counter() - t
            rows[f"{prefix}_nncf_int8"] = (_Dynamic(int8, tok, max_length), _size_mb(qdir), build_s, {})
            static = {}
            for batch in (1, setup["batch_size"]):
                m = OVModelForSequenceClassification.from_pretrained(qdir, ov_config=ov_config, compile=False)
                m.reshape(batch, seq_len)
                m.compile()
                static[batch] = m
            rows[f"{prefix}_nncf_int8_static_shape"] = (
                _Static(static, tok, seq_len), _size_mb(qdir), build_s,
                {"static_shape": {"seq_len": seq_len, "batches": sorted(static)}})
        except Exception as e:  # noqa: BLE001 - recorded for the parent; the other rows still run
            errors[prefix] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc()
    return rows


def _versions() -> dict:
    import importlib.metadata

    out = {}
    for pkg in ("optimum-intel", "openvino", "nncf", "optimum", "transformers", "torch"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def main() -> int:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # OpenVINO and NNCF print to stdout; the protocol owns the original one
    sys.stdout = sys.stderr

    def answer(obj):
        answers.write(json.dumps(obj) + "\n")
        answers.flush()

    setup = json.loads(sys.stdin.readline())
    sys.path.append(setup["repo_root"])  # the parent's hf_optim, named explicitly, never the working directory
    import numpy as np
    import torch

    import hf_optim  # noqa: F401 - registers the pruned student's structure with transformers
    from hf_optim.evaluation.bench import latency_ms, throughput
    from hf_optim.export.validate import ValidationData, predict_all

    torch.set_num_threads(setup["threads"])
    errors: dict = {}
    rows = _build(setup, errors)
    data = ValidationData(setup["texts"], None, np.zeros(len(setup["texts"]), dtype=np.int64), "accuracy",
                          "movie-sentiment", "test")
    built = {}
    for name, (clf, size, build_s, info) in rows.items():
        logits = predict_all(clf.predict_logits, data)
        built[name] = {"size_mb": size, "build_seconds": round(build_s, 1), "logits": logits.tolist(), **info}
    answer({"rows": built, "errors": errors, "versions": _versions()})
    lat = setup["texts"][:setup["latency_samples"]]
    tp = setup["texts"][:setup["throughput_samples"]]
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("quit"):
            break
        predict = rows[msg["round"]][0].predict_logits
        answer({"latency_ms": latency_ms(predict, lat, warmup=3),
                "samples_per_s": throughput(predict, tp, setup["batch_size"], repeats=1)["samples_per_s"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
