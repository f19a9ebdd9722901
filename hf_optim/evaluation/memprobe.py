"""Child process for :func:`hf_optim.evaluation.bench.peak_memory_mb` (reads JSON on stdin)."""

from __future__ import annotations

import json
import resource
import sys


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    req = json.loads(sys.stdin.read())
    import torch  # noqa: F401 - imported before the baseline so only the model's cost is counted

    from hf_optim.evaluation.classifier import load_classifier

    baseline = _rss_mb()
    clf = load_classifier(req["model"], max_length=req["max_length"])
    clf.predict_logits(req["texts"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_rss_mb": round(peak, 1), "model_peak_mb": round(peak - baseline, 1)}))


if __name__ == "__main__":
    main()
