"""Side-by-side CPU benchmark of ONNX Runtime exports against the anchors, in one process, on the same data.

Rows: torch FP32; Optimum ORT O2 FP32; Optimum's INT8 paths built as Optimum's docs do (``ORTOptimizer`` ->
``ORTQuantizer`` with ``AutoQuantizationConfig.avx512_vnni``/``avx2`` dynamic; O2 + INT8 is tried and its error
recorded, then O1 and no optimization); hf_optim's export (O2 fusion + dynamic INT8) and hf_optim's static INT8
with the accuracy guard. Each row: accuracy on the test split, batch-1 latency (p50/p95), batch-32 throughput and
the model file's size; ratios are against torch FP32 and the fastest working Optimum INT8 path (the anchor).
With ``--student-export``, hf_optim's final artifact of the default recipe (pruned student, its ONNX export) too.

OpenVINO rows (``--openvino-python``, the Python of a separate environment with Optimum Intel: ``make
anchors-openvino``): the teacher in FP32 and through NNCF static INT8, that INT8 model compiled for static shapes,
and with ``--student`` the pruned student through the same INT8 path. They run in a worker process of that
Python (``scripts/_openvino_worker.py``) whose rounds are interleaved with this process's; without the option, or
when it does not exist, they are skipped with a note.

Speed is measured in interleaved rounds (every row once per round, the order rotated each round:
:func:`hf_optim.evaluation.harness.interleaved`) and each number is the median over rounds, so a shared, noisy
machine slows every row alike. All ONNX rows run through ``ORTModelForSequenceClassification`` with the same
session options.

    python scripts/bench_export.py --model runs/movie-sentiment/teacher -o scripts/results/bench_export.json
    python scripts/bench_export.py --model runs/movie-sentiment/teacher --threads 1 \
        -o scripts/results/bench_export_threads1.json       # compute-bound: less sensitive to a busy machine
    python scripts/bench_export.py --model runs/movie-sentiment/teacher --student runs/movie-sentiment/prune \
        --student-export runs/movie-sentiment/export --openvino-python .venv-openvino/bin/python
    python scripts/bench_export.py            # minilm-l6 with an untrained 2-way head: speed numbers only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _OptimumClassifier:
    def __init__(self, model, tokenizer, max_length=128):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    def predict_logits(self, texts, pairs=None):
        enc = self.tokenizer(list(texts), pairs, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="np")
        return np.asarray(self.model(**enc).logits)


def _untrained_classifier(work: Path) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_optim.data import builtin_model

    base = builtin_model("minilm-l6")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    out = work / "minilm-l6-untrained-head"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def _size_mb(path: Path) -> float:
    files = [path, path.with_name(path.name + "_data"), path.with_suffix(".onnx.data")]
    return round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 2)


def _speed_round(predict, lat_texts, tp_texts, batch_size) -> dict:
    from hf_optim.evaluation.bench import latency_ms, throughput

    return {"latency_ms": latency_ms(predict, lat_texts, warmup=3),
            "samples_per_s": throughput(predict, tp_texts, batch_size, repeats=1)["samples_per_s"]}


def _summarize(rounds: list[dict]) -> dict:
    med = lambda xs: round(float(np.median(xs)), 3)  # noqa: E731
    return {"latency_ms": {"batch_size": 1, "n_per_round": rounds[0]["latency_ms"]["n"],
                           "p50": med([r["latency_ms"]["p50"] for r in rounds]),
                           "p95": med([r["latency_ms"]["p95"] for r in rounds]),
                           "p50_per_round": [r["latency_ms"]["p50"] for r in rounds]},
            "throughput": {"samples_per_s": med([r["samples_per_s"] for r in rounds]),
                           "per_round": [r["samples_per_s"] for r in rounds]}}


def _ratios(rows: dict, base: str, anchor: str) -> None:
    for m in rows.values():
        for key, ref in (("vs_torch_fp32", rows[base]), ("vs_int8_anchor", rows[anchor])):
            m[key] = {"latency_p50_speedup": round(ref["latency_ms"]["p50"] / m["latency_ms"]["p50"], 3),
                      "latency_p95_speedup": round(ref["latency_ms"]["p95"] / m["latency_ms"]["p95"], 3),
                      "throughput_ratio": round(m["throughput"]["samples_per_s"]
                                                / ref["throughput"]["samples_per_s"], 3),
                      "size_ratio": round(m["size_mb"] / ref["size_mb"], 3),
                      "accuracy_delta": round(m["accuracy"] - ref["accuracy"], 4)}


def _build_optimum_rows(src: Path, work: Path, session_options, tok, errors: dict) -> dict:
    """Optimum's anchors exactly as its docs build them; returns ``{row: (classifier, model_file)}``."""
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig

    from hf_optim.export.ort_quant import cpu_has_vnni

    def load(folder, name):
        return ORTModelForSequenceClassification.from_pretrained(folder, file_name=name,
                                                                 session_options=session_options)

    exported = ORTModelForSequenceClassification.from_pretrained(src, export=True)
    exported.save_pretrained(work / "optimum-onnx")
    rows = {}
    for level in ("O2", "O1"):
        ORTOptimizer.from_pretrained(exported).optimize(
            save_dir=work / f"optimum-{level.lower()}",
            optimization_config=AutoOptimizationConfig.with_optimization_level(level))
    rows["optimum_o2_fp32"] = (_OptimumClassifier(load(work / "optimum-o2", "model_optimized.onnx"), tok),
                               work / "optimum-o2" / "model_optimized.onnx")
    qmake = AutoQuantizationConfig.avx512_vnni if cpu_has_vnni() else AutoQuantizationConfig.avx2
    qconfig = qmake(is_static=False, per_channel=False)
    for level in ("O2", "O1", "none"):
        name = f"optimum_{level.lower()}_int8_dynamic"
        qdir, fname = ((work / "optimum-onnx", "model.onnx") if level == "none"
                       else (work / f"optimum-{level.lower()}", "model_optimized.onnx"))
        try:
            ORTQuantizer.from_pretrained(qdir, file_name=fname).quantize(save_dir=work / name,
                                                                         quantization_config=qconfig)
            qfile = next((work / name).glob("*_quantized.onnx"))
            rows[name] = (_OptimumClassifier(load(work / name, qfile.name), tok), qfile)
        except Exception as e:  # noqa: BLE001 - the point is to record which anchor paths fail
            errors[name] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"{name:<30} FAILED: {errors[name][:160]}", flush=True)
    return rows


def _build_hf_optim_rows(src: Path, work: Path, session_options, tok, trained: bool, records: dict) -> dict:
    from optimum.onnxruntime import ORTModelForSequenceClassification

    from hf_optim.export import ExportConfig, export_model

    rows = {}
    budget = 0.01 if trained else 1.0
    for name, quant in (("hf_optim_o2_int8_dynamic", "dynamic"), ("hf_optim_o2_int8_static_guard", "static")):
        cfg = ExportConfig(model=str(src), optimization="O2", quantization=quant, guard=True, max_metric_drop=budget)
        t = time.perf_counter()
        rec = export_model(src, work / name, cfg)
        rec["bench_export_seconds"] = round(time.perf_counter() - t, 1)
        records[name] = rec
        model = ORTModelForSequenceClassification.from_pretrained(work / name, session_options=session_options)
        rows[name] = (_OptimumClassifier(model, tok), work / name / "model.onnx")
    return rows


class _OpenVINOWorker:
    """The OpenVINO rows, built and timed by ``scripts/_openvino_worker.py`` under another environment's Python.

    ``-I -P``: that interpreter imports nothing from the working directory or this environment's variables; the
    worker is told where this ``hf_optim`` lives. Each :meth:`round` times one variant there while this process
    waits, so the worker's rounds interleave with the in-process ones.
    """

    def __init__(self, python: str, setup: dict):
        import hf_optim

        script = Path(__file__).resolve().with_name("_openvino_worker.py")
        setup = {**setup, "repo_root": str(Path(hf_optim.__file__).resolve().parents[1])}
        self.proc = subprocess.Popen([python, "-I", "-P", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=setup["work"])
        self.built = self._ask(setup)

    def _ask(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the OpenVINO worker exited ({self.proc.wait()}); its errors are above")
        return json.loads(line)

    def round(self, name: str) -> dict:
        return self._ask({"round": name})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=120)


def _start_openvino(args, work: Path, texts, notes: dict) -> _OpenVINOWorker | None:
    if not args.openvino_python or not Path(args.openvino_python).exists():
        notes["openvino"] = (f"skipped: --openvino-python {args.openvino_python} does not exist"
                             if args.openvino_python else "skipped: no --openvino-python given")
        return None
    from hf_optim.data import load_task

    train = load_task("movie-sentiment")["train"].shuffle(seed=0).select(range(args.calibration_samples))
    setup = {"work": str(work), "threads": args.threads, "max_length": 128, "texts": texts,
             "calibration": list(train["text"]), "teacher": args.model, "student": args.student,
             "batch_size": args.batch_size,
             "latency_samples": args.latency_samples, "throughput_samples": args.throughput_samples}
    worker = _OpenVINOWorker(args.openvino_python, setup)
    notes["openvino"] = {"versions": worker.built["versions"], "errors": worker.built["errors"],
                         "calibration": f"{args.calibration_samples} movie-sentiment training sentences",
                         "build_seconds": {n: r["build_seconds"] for n, r in worker.built["rows"].items()},
                         "static_shape": next((r["static_shape"] for r in worker.built["rows"].values()
                                               if "static_shape" in r), None)}
    return worker


def _record_summary(rec: dict) -> dict:
    out = {k: rec.get(k) for k in ("backend", "optimization", "quantization", "size_mb", "validation",
                                   "bench_export_seconds")}
    out["ops"] = dict(list(rec["ops"].items())[:16])
    if "guard" in rec:
        out["guard"] = {k: rec["guard"][k] for k in ("steps", "reached", "calibration_samples")}
        out["guard"]["excluded_nodes"] = len(rec["guard"]["excluded_nodes"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="fine-tuned classifier dir (default: minilm-l6 + untrained head, speed only)")
    p.add_argument("--samples", type=int, default=1000, help="test examples for accuracy")
    p.add_argument("--rounds", type=int, default=7, help="interleaved speed rounds (medians are reported)")
    p.add_argument("--latency-samples", type=int, default=100, help="batch-1 calls per row per round")
    p.add_argument("--throughput-samples", type=int, default=128, help="examples per row per round at --batch-size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and ONNX Runtime")
    p.add_argument("--student", help="the default recipe's pruned student (OpenVINO INT8 rows)")
    p.add_argument("--student-export", help="hf_optim's ONNX export of that student (the recipe's final artifact)")
    p.add_argument("--openvino-python", help="Python of an environment with optimum-intel (OpenVINO rows)")
    p.add_argument("--calibration-samples", type=int, default=300, help="NNCF calibration sentences (OpenVINO)")
    p.add_argument("-o", "--output", help="write the JSON here too")
    args = p.parse_args(argv)

    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    from hf_optim.data import load_task
    from hf_optim.evaluation.classifier import load_classifier
    from hf_optim.evaluation.metrics import compute_metric
    from hf_optim.evaluation.harness import BenchRun, interleaved
    from hf_optim.export.ort_quant import cpu_has_vnni
    from hf_optim.export.validate import ValidationData, predict_all

    run = BenchRun(args, argv, threads=args.threads)
    torch.set_num_threads(args.threads)
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = args.threads
    model_arg = Path(args.model).resolve() if args.model else None
    # absolute before the chdir below; abspath, not resolve: a venv's python is found as a venv through its symlink
    for key in ("model", "student", "student_export", "openvino_python"):
        if getattr(args, key):
            setattr(args, key, os.path.abspath(getattr(args, key)))
    output = Path(args.output).resolve() if args.output else None
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    cwd = os.getcwd()
    os.chdir(work)  # Optimum writes scratch files to the CWD in places: keep them in the scratch dir
    errors, records, notes, worker = {}, {}, {}, None
    try:
        src = model_arg or _untrained_classifier(work)
        test = load_task("movie-sentiment")["test"].select(range(args.samples))
        texts, labels = list(test["text"]), np.asarray(test["label"])
        data = ValidationData(texts, None, labels, "accuracy", "movie-sentiment", "test")
        lat, tp = texts[:args.latency_samples], texts[:args.throughput_samples]
        tok = AutoTokenizer.from_pretrained(src)

        built = {"torch_fp32": (load_classifier(src), src / "model.safetensors")}
        built.update(_build_optimum_rows(src, work, session_options, tok, errors))
        built.update(_build_hf_optim_rows(src, work, session_options, tok, model_arg is not None, records))
        if args.student_export:
            final = Path(args.student_export)
            model = ORTModelForSequenceClassification.from_pretrained(final, session_options=session_options)
            built["hf_optim_student_export"] = (_OptimumClassifier(model, AutoTokenizer.from_pretrained(final)),
                                                final / "model.onnx")

        rows, logits = {}, {}
        for name, (clf, path) in built.items():
            logits[name] = predict_all(clf.predict_logits, data)
            rows[name] = {"accuracy": None, "size_mb": _size_mb(path)}
        if model_arg is not None:
            worker = _start_openvino(args, work, texts, notes)  # args' paths are absolute by now
        for name, r in (worker.built["rows"] if worker else {}).items():
            logits[name] = np.asarray(r["logits"], dtype=np.float32)
            rows[name] = {"accuracy": None, "size_mb": r["size_mb"]}
        for name in rows:
            rows[name]["accuracy"] = round(compute_metric("accuracy", logits[name].argmax(-1), labels), 4)
            rows[name]["max_logit_diff_vs_torch"] = round(float(np.abs(logits[name] - logits["torch_fp32"]).max()), 4)
            rows[name]["agreement_with_torch"] = round(float((logits[name].argmax(-1) ==
                                                              logits["torch_fp32"].argmax(-1)).mean()), 4)

        names = list(rows)

        def speed(name):
            def one_round() -> dict:
                out = (_speed_round(built[name][0].predict_logits, lat, tp, args.batch_size) if name in built
                       else worker.round(name))
                print(f"{name:<30} p50 {out['latency_ms']['p50']:.2f} ms  {out['samples_per_s']:.1f}/s", flush=True)
                return out
            return one_round

        per_round = interleaved({name: speed(name) for name in names}, args.rounds, warmup=0)
        for name in names:
            rows[name].update(_summarize(per_round[name]))

        worker = worker.close() if worker else None
        int8 = [n for n in rows if n.startswith("optimum_") and "int8" in n]
        anchor = max(int8, key=lambda n: rows[n]["throughput"]["samples_per_s"])
        _ratios(rows, "torch_fp32", anchor)
        ours, static = rows["hf_optim_o2_int8_dynamic"], rows["hf_optim_o2_int8_static_guard"]
        extra = {
            "model": str(src), "trained": model_arg is not None,
            "note": None if model_arg else "untrained classification head: accuracy is meaningless, speed only",
            "data": f"movie-sentiment test, {len(texts)} examples (accuracy); per round and row: {len(lat)} "
                    f"batch-1 calls and {len(tp)} examples at batch {args.batch_size}; {args.rounds} interleaved "
                    "rounds, medians reported",
            "cpu_vnni": cpu_has_vnni(),
            "int8_anchor": anchor,
            "targets": {
                "hf_optim_faster_than_anchor_p50": ours["vs_int8_anchor"]["latency_p50_speedup"] > 1,
                "hf_optim_faster_than_anchor_throughput": ours["vs_int8_anchor"]["throughput_ratio"] > 1,
                "hf_optim_accuracy_at_least_anchor": ours["vs_int8_anchor"]["accuracy_delta"] >= 0,
                "static_guard_within_1pt_of_fp32": rows["torch_fp32"]["accuracy"] - static["accuracy"] <= 0.01,
            },
            "anchor_errors": errors,
            "openvino": notes.get("openvino", "skipped: speed-only run (no --model)"),
            "hf_optim_exports": {n: _record_summary(r) for n, r in records.items()},
        }
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if worker:
            worker.close()
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(run.write(output, rows, **extra), indent=2))
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    sys.exit(main())
