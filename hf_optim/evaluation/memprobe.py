"""Child process for :func:`hf_optim.evaluation.bench.peak_memory_mb` (reads JSON on stdin)."""

from __future__ import annotations

import json
import sys


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc, in MiB.

    Not ``getrusage().ru_maxrss``: Linux carries the parent's high-water mark into a forked-and-exec'd
    child's ``ru_maxrss``, so a probe started from a large process would report the parent's size.
    ``VmHWM`` belongs to this process's own address space.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    req = json.loads(sys.stdin.read())
    # Import the libraries before the baseline so only the model's own cost is counted.
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401

    try:  # ONNX artifacts are loaded through onnxruntime: keep its import out of the model's cost too
        import onnxruntime  # noqa: F401
    except ImportError:
        pass

    from hf_optim.artifacts import load_predictor

    baseline = _status_mb("VmRSS")
    clf = load_predictor(req["model"], max_length=req["max_length"])
    clf.predict_logits(req["texts"])
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_rss_mb": round(peak, 1), "model_peak_mb": round(peak - baseline, 1)}))


if __name__ == "__main__":
    main()
