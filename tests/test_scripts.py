"""The benchmark scripts in scripts/: their command lines parse, and each records through the harness."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# not benchmarks: an example server, the writer of docs/benchmarks.md (tests/test_docs.py), and the workers
# (`_*.py`) that benchmarks run in other virtual environments
NOT_BENCHMARKS = {"serve_example.py", "make_benchmarks_doc.py", "benchmarks_doc_text.py"}
BENCHMARKS = sorted(p for p in SCRIPTS.glob("*.py") if p.name not in NOT_BENCHMARKS and not p.name.startswith("_"))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_are_all_here():
    assert {p.stem for p in BENCHMARKS} == {
        "bench_calibration", "bench_export", "bench_genai", "bench_gguf", "bench_inference", "bench_llm_cpu",
        "bench_lm", "bench_lm_kernels", "bench_ort_grid", "bench_prune", "bench_quant_kernels", "bench_quant_minilm",
        "bench_run", "bench_serve", "bench_skip_layernorm", "check_extras", "distill_lm", "distill_movie_sentiment"}


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_help_parses_and_results_go_through_the_harness(path, monkeypatch, capsys):
    source = path.read_text()
    assert "BenchRun(" in source and ".write(" in source  # one schema, one atomic writer
    assert "json.dump(" not in source and ".write_text(" not in source  # no hand-rolled result files
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as e:
        _load(path).main()
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage:")


def test_check_extras_reads_the_versions_line_among_whatever_imports_log():
    mod = _load(SCRIPTS / "check_extras.py")
    out = ('2026-12-04 17:20:01 INFO worker.py: started\n'
           + mod._MARK + '{"torch": "2.13.0", "hf-optim": "0.1.0"}\n'
           + '2026-12-04 17:20:02 WARNING something logged at exit\n')
    assert mod._versions(out) == {"torch": "2.13.0", "hf-optim": "0.1.0"}
    assert mod._versions("2026-12-04 only noise\n") is None
