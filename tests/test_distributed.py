"""Recipe runs under torchrun: 2 CPU processes (gloo) give the artifacts and report of a 1-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hf_optim.distributed import RunGroup, is_main_process, stage_trains, world_size
from hf_optim.evaluation.config import EvalConfig
from hf_optim.finetune import FinetuneConfig
from hf_optim.quantize.config import QuantizeConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_which_stages_train_and_run_on_every_rank():
    assert stage_trains(FinetuneConfig(model="m"))
    assert not stage_trains(EvalConfig(model="m"))
    assert stage_trains(QuantizeConfig(model="m", scheme="int8_qat"))
    assert not stage_trains(QuantizeConfig(model="m", scheme="int8_dynamic"))


def test_a_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = RunGroup()
    assert (group.size, group.rank, group.is_main) == (1, 0, True) and world_size() == 1 and is_main_process()
    assert group.main_only(lambda: 3) == 3 and group.broadcast("x") == "x"
    group.agree("s", None)  # nothing to wait for
    group.close()


def _toy_recipe(tmp_path: Path, model_dir: Path) -> Path:
    good, bad = ["good", "great", "best", "love", "fun"], ["bad", "awful", "worst", "hate", "dull"]
    rows = ["sentence,sentiment"] + [
        f"the film was {(good if i % 2 else bad)[i % 5]} and {['the', 'a', 'so', 'very'][i % 4]} story,"
        f"{'pos' if i % 2 else 'neg'}" for i in range(200)]
    (tmp_path / "toy.csv").write_text("\n".join(rows) + "\n")
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"""name: toy
seed: 1
task: {{name: toy, dataset: toy.csv, text_column: sentence, label_column: sentiment, test_size: 40}}
stages:
  - {{name: ft, kind: finetune, model: {model_dir}, epochs: 6, learning_rate: 3.0e-3, batch_size: 8,
      warmup_ratio: 0.0}}
  - {{name: ev, kind: evaluate, model: ft, latency_samples: 2, throughput_samples: 8, measure_memory: false}}
""")
    return recipe


def _hf_optim_run(nproc: int, recipe: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
                "127.0.0.1", "--master_port", str(_free_port())] if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "hf_optim.cli", "run", str(recipe), "--output", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    if proc.returncode != 0:
        pytest.fail(f"{nproc}-process run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _files(stage_dir: Path) -> set[str]:
    return {p.relative_to(stage_dir).as_posix() for p in stage_dir.rglob("*") if p.is_file()}


@pytest.mark.multiprocess
def test_torchrun_two_processes_match_one_process(tmp_path, tiny_bert_dir):
    recipe = _toy_recipe(tmp_path, tiny_bert_dir)
    _hf_optim_run(1, recipe, tmp_path / "one")
    two = _hf_optim_run(2, recipe, tmp_path / "two")
    assert "another hf-optim run" not in two.stderr
    assert two.stdout.count("run complete:") == 1  # rank 0 reports; rank 1 prints nothing
    reports = {n: json.loads((tmp_path / n / "report.json").read_text()) for n in ("one", "two")}
    for name, report in reports.items():
        assert report["status"] == "complete" and [s["status"] for s in report["stages"]] == ["ran", "ran"]
        run_dir = tmp_path / name
        assert len(list((run_dir / "logs").iterdir())) == 1  # one log: rank 0's
        assert not [p.name for p in run_dir.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert _files(tmp_path / "one" / "ft") == _files(tmp_path / "two" / "ft")
    assert _files(tmp_path / "one" / "ev") == _files(tmp_path / "two" / "ev")
    ft1, ev1 = (s["metrics"] for s in reports["one"]["stages"])
    ft2, ev2 = (s["metrics"] for s in reports["two"]["stages"])
    # every example trained on once per epoch, split over the ranks: half the optimizer steps, same data
    assert ft1["train_examples"] == ft2["train_examples"] == 128
    assert ft2["steps"] * 2 == ft1["steps"]
    assert ev1["examples"] == ev2["examples"] == 40
    assert ev1["accuracy"] >= 0.9 and abs(ev1["accuracy"] - ev2["accuracy"]) <= 0.1
    # resuming the finished run under torchrun skips both stages on every rank
    again = _hf_optim_run(2, recipe, tmp_path / "two")
    assert again.stdout.count("skipped") == 2
