"""ONNX Runtime inference for exported directories, with the same ``predict_logits`` as the torch classifier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["OrtClassifier", "is_onnx_dir", "make_session"]


def is_onnx_dir(path: str | Path) -> bool:
    """An exported directory: ``*.onnx`` and no torch weights (``*.safetensors``/``*.bin``)."""
    path = Path(path)
    if not path.is_dir():
        return False
    has_onnx = any(path.glob("*.onnx"))
    has_torch = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    return has_onnx and not has_torch


def make_session(onnx_path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    from ..console import ort_session_options

    opts = ort_session_options()
    # ORT_ENABLE_ALL also fuses QDQ pairs and MatMulInteger+scale at load; the offline levels (O1-O3) set the rest
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


class OrtClassifier:
    """A sequence classifier run by ONNX Runtime.

    Args:
        onnx_path (`str` or `Path`): the ``.onnx`` file (its directory holds the tokenizer and config).
        tokenizer: a tokenizer (default: ``AutoTokenizer.from_pretrained`` of the file's directory).
        max_length (`int`, *optional*, defaults to 128): tokens per example.
    """

    def __init__(self, onnx_path: str | Path, tokenizer=None, max_length: int = 128, threads: int | None = None):
        from transformers import AutoTokenizer

        self.path = Path(onnx_path)
        self.session = make_session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(self.path.parent)
        self.max_length = max_length

    @classmethod
    def from_dir(cls, model_dir: str | Path, max_length: int = 128) -> "OrtClassifier":
        path = Path(model_dir)
        name = "model.onnx"
        record = path / "hf_optim_export.json"
        if record.is_file():
            name = json.loads(record.read_text()).get("file_name", name)
        if not (path / name).is_file():
            files = sorted(path.glob("*.onnx"))
            name = files[0].name
        return cls(path / name, max_length=max_length)

    def num_parameters(self) -> int:
        """Elements in the graph's initializers (int8/int4 packed weights count as stored)."""
        import onnx

        model = onnx.load(str(self.path), load_external_data=False)
        return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))

    def predict_logits(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> np.ndarray:
        enc = self.tokenizer(list(texts), list(text_pairs) if text_pairs else None, truncation=True,
                             max_length=self.max_length, padding=True, return_tensors="np")
        feeds = {n: enc[n].astype(np.int64) for n in self.input_names if n in enc}
        if "token_type_ids" in self.input_names and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return self.session.run(None, feeds)[0].astype(np.float32)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_logits(texts)
