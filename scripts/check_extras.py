"""Does every extra of hf-optim install from the package index, quickly, without the repository's constraints?

Builds the wheel, then for each extra makes an empty virtual environment, installs the CPU torch wheel first (as
``make setup`` does, so pip does not fetch a CUDA build), then times ``pip install 'hf_optim-*.whl[EXTRA]'`` with
no constraint file (``PIP_CONSTRAINT`` emptied, so a machine-wide one does not help the resolver), imports hf_optim
in a fresh interpreter and records what pip chose. A resolve that backtracks for minutes fails the check.

    python scripts/check_extras.py --extras core,optimum,all --timeout 600 -o scripts/results/check_extras.json

Exit status 1 when an extra fails to install or import or takes longer than ``--max-seconds``. The result file
has the benchmark schema of ``hf_optim.evaluation.harness`` (command, commit, versions, CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PIP_CONSTRAINT"] = ""  # no constraint file: what a user without this repository gets
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd: list[str], timeout: float, cwd: Path) -> tuple[int, str, float]:
    """Exit status, stdout then the tail of stderr (kept apart, never interleaved), seconds."""
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd)
        return out.returncode, out.stdout + out.stderr[-2000:], time.perf_counter() - start
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s", time.perf_counter() - start


_MARK = "hf-optim-versions:"


def _versions(out: str) -> dict[str, str] | None:
    """The JSON line the import check prints after ``_MARK``; whatever else the imports log is ignored."""
    for line in out.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    return None


def build_wheel(dest: Path) -> Path:
    code, log, _ = _run([sys.executable, "-P", "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(ROOT)],
                        900, dest)
    wheels = sorted(dest.glob("hf_optim-*.whl"))
    if code or not wheels:
        raise SystemExit(f"error: building the wheel failed:\n{log}")
    return wheels[-1]


def check_extra(extra: str, wheel: Path, work: Path, torch_spec: str, timeout: float) -> dict:
    venv = work / f"venv-{extra}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    code, log, torch_s = _run([py, "-m", "pip", "install", "-q", torch_spec], timeout, work)
    row = {"extra": extra, "torch_install_s": round(torch_s, 1)}
    if code:
        return {**row, "ok": False, "stage": "torch", "log": log[-2000:]}
    target = f"{wheel}[{extra}]" if extra != "core" else str(wheel)
    code, log, install_s = _run([py, "-m", "pip", "install", "-q", target], timeout, work)
    row["install_s"] = round(install_s, 1)
    if code:
        return {**row, "ok": False, "stage": "install", "log": log[-2000:]}
    code, out, _ = _run([py, "-I", "-c", f"import hf_optim, importlib.metadata as m, json; print({_MARK!r} + "
                         "json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"], 300, work)
    versions = None if code else _versions(out)
    if versions is None:
        return {**row, "ok": False, "stage": "import", "log": out[-2000:]}
    noise = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith(_MARK)]
    if noise:
        row["import_output"] = noise[-20:]  # what a user sees on `import hf_optim`; recorded, not fatal
    keep = ("hf-optim", "torch", "transformers", "datasets", "huggingface-hub", "accelerate", "optimum",
            "optimum-onnx", "onnxruntime", "onnx", "gguf", "matplotlib")
    return {**row, "ok": True, "versions": {k: versions[k] for k in keep if k in versions}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extras", default="core,optimum,all", help="comma-separated; 'core' = no extra")
    ap.add_argument("--torch", default="torch==2.13.0", help="installed first in each venv (the CPU wheel)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per pip command")
    ap.add_argument("--max-seconds", type=float, default=300,
                    help="an extra whose install (resolve + download) takes longer fails the check")
    ap.add_argument("-o", "--output", help="result JSON (benchmark schema)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # the harness of the checkout being checked, not an installed copy
    from hf_optim.evaluation.harness import BenchRun

    run = BenchRun(args)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="hf-optim-extras-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work)
        for extra in [e.strip() for e in args.extras.split(",") if e.strip()]:
            row = check_extra(extra, wheel, work, args.torch, args.timeout)
            if row["ok"] and row["install_s"] > args.max_seconds:
                row.update(ok=False, stage="slow")
            rows[extra] = row
            status = "ok" if row["ok"] else f"FAILED at {row['stage']}"
            print(f"{extra:>8}: {status}, install {row.get('install_s', '-')} s, "
                  f"transformers {row.get('versions', {}).get('transformers', '-')}", flush=True)
    run.write(args.output, rows)
    return 0 if all(r["ok"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
