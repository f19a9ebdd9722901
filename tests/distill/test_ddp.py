"""DistillationTrainer under 2-process DDP on CPU (torchrun + gloo): ranks agree, the teacher stays out of DDP."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess  # torchrun starts two worker processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_keeps_ranks_identical_and_teacher_gradient_free(tmp_path):
    worker = Path(__file__).with_name("_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["student_wrapped"] == "DistributedDataParallel" and r0["teacher_type"] == "BertForSequenceClassification"
    assert r0["student_changed"] and r0["student"] == r1["student"]
    assert r0["projection"] == r1["projection"]  # the learned projection's gradients are averaged too
    assert r0["teacher_unchanged"] and r1["teacher_unchanged"]
    assert r0["teacher_grads"] == r1["teacher_grads"] == 0
    assert {"hard_loss", "soft_loss", "hidden_loss"} <= set(r0["logged"])
