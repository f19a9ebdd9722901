"""Shared fixtures for the inference tests: an instrumented fake model and a tiny BERT with its ONNX export."""

from __future__ import annotations

import threading

import numpy as np
import pytest


class EchoModel:
    """A Hugging Face style callable whose output row identifies its own request.

    ``logits = [sum of real token ids, number of real tokens]``; every batch's real lengths and padded width are
    recorded. ``gate`` (an Event) holds the model inside a call until set; ``poison`` makes any batch holding
    that token id raise.
    """

    def __init__(self, gate: threading.Event | None = None, poison: int | None = None):
        self.batches: list[tuple[int, list[int]]] = []  # (padded width, real lengths)
        self.calls = 0
        self.entered = threading.Event()
        self.gate = gate
        self.poison = poison
        self._lock = threading.Lock()

    def __call__(self, input_ids, attention_mask, **kwargs):
        with self._lock:
            self.calls += 1
            self.batches.append((input_ids.shape[1], attention_mask.sum(1).tolist()))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.poison is not None and (input_ids[attention_mask.astype(bool)] == self.poison).any():
            raise ValueError("poisoned batch")
        return {"logits": np.stack([(input_ids * attention_mask).sum(1), attention_mask.sum(1)], 1).astype(np.float64)}

    @staticmethod
    def expected(ids) -> list[float]:
        return [float(sum(ids)), float(len(ids))]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: the engine's worker and the reference runs share a small (often busy) machine, where
    a second thread mostly waits at each op's barrier. Restored afterwards for the rest of the suite."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def echo():
    return EchoModel()


WORDS = ("the a film movie good great bad awful fun boring best worst love hate funny dull story plot acting actor "
         "very too so really just one all more most some zebra quixotic 42 !").split()


def make_texts(n: int, seed: int = 0, max_words: int = 45) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, max_words)))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """``{"dir": torch checkpoint dir, "onnx_dir": dir with model.onnx + config + tokenizer}`` of one tiny BERT."""
    from hf_optim.testing import save_tiny_bert, save_tiny_onnx

    root = tmp_path_factory.mktemp("inference-models")
    d = save_tiny_bert(root / "bert", seed=3)
    onnx_dir = save_tiny_onnx(d, root / "bert-onnx")
    return {"dir": d, "onnx_dir": onnx_dir}
