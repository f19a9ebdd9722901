"""Artifact directories: what a stage's output holds, and one way to get logits out of it.

Every stage writes a directory, and whatever reads one (the next stage, the evaluator, export validation, the
precision planner, the inference engine) needs the same two answers, given here once:

* what it is: :func:`checkpoint_kind` / :func:`checkpoint_facts` read ``config.json`` (``sequence-classification``,
  ``causal-lm`` or ``base``); :func:`artifact_format` tells a ``from_pretrained`` checkpoint (``torch``), an ONNX
  export (``onnx``), a ``compile`` stage artifact (``compiled``) and a GGUF export (``gguf``) apart, and
  :func:`checkpoint_format` which reader loads it (these live in :mod:`hf_optim.artifact_kind`);
* how to run it: :func:`load_predictor` returns a :class:`Predictor` for any of them. ``predict(batch)`` maps a
  padded batch of token ids (numpy arrays by input name) to the model's output; ``predict_logits(texts)``
  tokenizes first. :class:`TorchPredictor`, :class:`OrtPredictor` and :class:`CompiledPredictor` implement it.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .artifact_kind import (COMPILE_RECORD, EXPORT_RECORD, _kind, artifact_format, checkpoint_architectures,  # noqa: F401
                            checkpoint_facts, checkpoint_format, checkpoint_kind, export_record, gguf_files,
                            is_onnx_dir, onnx_file, read_config)
from .errors import ConfigError, DataError

__all__ = ["checkpoint_kind", "checkpoint_facts", "checkpoint_architectures", "read_config", "is_onnx_dir", "artifact_format",
           "checkpoint_format", "gguf_files", "export_record", "onnx_file",
           "Predictor", "TorchPredictor", "OrtPredictor", "CompiledPredictor", "load_predictor", "load_tokenizer",
           "load_compiled", "make_session", "COMPILE_RECORD"]


def load_tokenizer(path: str | Path):
    """``AutoTokenizer.from_pretrained(path)``, or a :class:`DataError` saying what to add when the directory
    holds no usable tokenizer: transformers 4.x raises anything from ``OSError`` to ``TypeError`` there, and 5.x
    builds a tokenizer of special tokens only, which maps every word to ``[UNK]`` (a model scored through it
    reports a number that means nothing)."""
    from transformers import AutoTokenizer

    fix = "save it next to the weights with tokenizer.save_pretrained(DIR)"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise DataError(f"{path} has no usable tokenizer ({type(e).__name__}: {str(e)[:200]}); {fix}") from None
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise DataError(f"{path} has no usable tokenizer (it knows only its {len(tokenizer)} special tokens); {fix}")
    return tokenizer


# -- predictors ----------------------------------------------------------------------------------------------
def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (floating point as float32) or anything array-like, as a numpy array on the CPU."""
    if hasattr(value, "detach"):
        value = value.detach()
        if value.dtype.is_floating_point:
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


def pick_output(out: Any, name: str) -> Any:
    """Output ``name`` of a model's return value (a ``ModelOutput``, a dict, a tuple: its first item)."""
    if isinstance(out, Mapping) and name in out:
        return out[name]
    if hasattr(out, name):
        return getattr(out, name)
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        raise ConfigError(f"the model's output has no {name!r} (it has: {', '.join(out.keys())}); "
                          "set output= to one of them", field="output")
    return out


class Predictor:
    """What hf_optim runs a model through, whatever its format.

    Subclasses implement :meth:`predict`; :meth:`predict_logits` tokenizes with ``tokenizer`` (padding to the
    longest text, truncating to ``max_length``) and calls it. ``max_positions`` is the model's position limit
    (`None` when unknown).
    """

    tokenizer: Any = None
    max_length: int = 128
    max_positions: Optional[int] = None

    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's output for a padded batch ``{input name: int array (batch, length)}``."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        return 0

    def encode(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if self.tokenizer is None:
            raise ConfigError("this predictor has no tokenizer: pass tokenizer= or call predict() with token ids",
                              field="tokenizer")
        enc = self.tokenizer(list(texts), list(text_pairs) if text_pairs else None, truncation=True,
                             max_length=self.max_length, padding=True, return_tensors="np")
        return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}

    def predict_logits(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> np.ndarray:
        """Float32 logits ``(len(texts), ...)`` of ``texts`` (and ``text_pairs`` for sentence-pair tasks)."""
        return np.asarray(self.predict(self.encode(texts, text_pairs)), dtype=np.float32)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_logits(texts)


class TorchPredictor(Predictor):
    """A torch model (a ``from_pretrained`` sequence classifier, or any module taking token ids), in eval mode.

    Args:
        model (`nn.Module`): the model; inputs its ``forward`` does not take are left out of each call.
        tokenizer (*optional*): for :meth:`predict_logits`.
        max_length (`int`, *optional*, defaults to 128): tokens per text.
        output (`str`, *optional*, defaults to ``"logits"``): which output to return.
    """

    def __init__(self, model, tokenizer=None, max_length: int = 128, output: str = "logits"):
        import torch

        self.model, self.tokenizer, self.max_length, self.output = model.eval(), tokenizer, max_length, output
        params = inspect.signature(model.forward).parameters
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self.accepts = None if var_kw else set(params)
        first = next(iter(model.parameters()), None)
        if first is None:
            first = next(iter(model.buffers()), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        import torch

        feed = {k: torch.from_numpy(np.asarray(v)).to(self.device) for k, v in batch.items()
                if self.accepts is None or k in self.accepts}
        with torch.inference_mode():
            out = self.model(**feed)
        return to_numpy(pick_output(out, self.output))


def make_session(onnx_path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimization and ``threads`` intra-op threads."""
    import onnxruntime as ort

    from .console import ort_session_options

    opts = ort_session_options()
    # ORT_ENABLE_ALL also fuses QDQ pairs and MatMulInteger+scale at load; the offline levels (O1-O3) set the rest
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


class OrtPredictor(Predictor):
    """A model run by ONNX Runtime.

    Args:
        onnx_path (`str` or `Path`, *optional*): the ``.onnx`` file (its directory holds the tokenizer and config).
        tokenizer (*optional*, defaults to ``"auto"``): a tokenizer, ``"auto"`` to load the file's directory's,
            or `None` for none (then only :meth:`predict` works).
        max_length (`int`, *optional*, defaults to 128): tokens per text.
        threads (`int`, *optional*): ONNX Runtime intra-op threads.
        session (*optional*): an ``onnxruntime.InferenceSession`` to use instead of opening ``onnx_path``.
        output (`str`, *optional*, defaults to ``"logits"``): which output to return (``"logits"`` also means the
            first output of a graph that names it otherwise).
    """

    _DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}

    def __init__(self, onnx_path: str | Path | None = None, tokenizer: Any = "auto", max_length: int = 128,
                 threads: int | None = None, *, session=None, output: str = "logits"):
        self.path = Path(onnx_path) if onnx_path is not None else None
        try:
            self.session = session if session is not None else make_session(self.path, threads)
        except Exception as e:  # noqa: BLE001 - truncated protobuf, missing or short external data ...
            raise DataError(f"ONNX Runtime cannot load {self.path} ({type(e).__name__}: {' '.join(str(e).split())[:300]}"
                            "); the export is damaged: export the model again") from None
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(self.path.parent) if self.path is not None else None
        self.tokenizer, self.max_length = tokenizer, max_length
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._inputs = [(i.name, self._DTYPES.get(i.type, np.int64)) for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if output not in outputs and output != "logits":  # the default: a single-output export names it anything
            raise ConfigError(f"output={output!r} is not an output of this ONNX model (it has: {', '.join(outputs)})",
                              field="output")
        self.output = output if output in outputs else outputs[0]

    @classmethod
    def from_dir(cls, model_dir: str | Path, max_length: int = 128, **kwargs: Any) -> "OrtPredictor":
        """The predictor of an export directory's ONNX file (see :func:`onnx_file`; a ``.onnx`` path is taken as
        it is)."""
        predictor = cls(onnx_file(model_dir), max_length=max_length, **kwargs)
        predictor.max_positions = checkpoint_facts(model_dir)["max_positions"]
        return predictor

    def num_parameters(self) -> int:
        """Elements in the graph's initializers (int8/int4 packed weights count as stored)."""
        import onnx

        model = onnx.load(str(self.path), load_external_data=False)
        return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))

    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        feed = {}
        for name, dtype in self._inputs:
            if name in batch:
                feed[name] = np.asarray(batch[name]).astype(dtype, copy=False)
            elif name == "token_type_ids":
                feed[name] = np.zeros_like(batch["input_ids"], dtype=dtype)
            else:
                raise ValueError(f"the ONNX model needs input {name!r}, which the request does not have")
        return np.asarray(self.session.run([self.output], feed)[0])


def logits_module(model):
    """``model`` as a module of positional token-id tensors returning its logits (what torch.compile, torch.export
    and TorchScript take)."""
    import torch

    class _Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            return self.m(**kw).logits

    return _Logits(model).eval()


def compile_warm(module, n_inputs: int, mode: str, batch_sizes: Sequence[int], lengths: Sequence[int]):
    """``(torch.compile(module), {"BxL": seconds})``: compiled for fixed shapes and run once on each
    ``batch size x length``, so later calls padded to one of those lengths never recompile."""
    import torch

    fn = torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)
    warm = {}
    with torch.inference_mode():
        for bs in batch_sizes:
            for n in lengths:
                t = time.perf_counter()
                fn(*(torch.ones(bs, n, dtype=torch.long) for _ in range(n_inputs)))
                warm[f"{bs}x{n}"] = round(time.perf_counter() - t, 3)
    return fn, warm


class CompiledPredictor(Predictor):
    """A compiled module of positional inputs ``names``; pads each batch to the next of the ``lengths`` it was
    built for (``max_length`` when none fits), so a call never triggers a recompile."""

    def __init__(self, fn, tokenizer, names: Sequence[str], lengths: Sequence[int], max_length: int, params: int = 0):
        self.fn, self.tokenizer, self.names = fn, tokenizer, list(names)
        self.lengths = sorted(lengths)
        self.max_length = max_length
        self._params = params

    def num_parameters(self) -> int:
        return self._params

    def _pad_to(self, longest: int) -> int:
        return next((n for n in self.lengths if n >= longest), self.max_length)

    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        import torch

        ids = np.asarray(batch["input_ids"])
        extra = max(self._pad_to(ids.shape[1]) - ids.shape[1], 0)
        side = (extra, 0) if getattr(self.tokenizer, "padding_side", "right") == "left" else (0, extra)
        pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0

        def padded(name: str):
            arr = np.asarray(batch[name]) if name in batch else np.zeros_like(ids)
            arr = np.pad(arr, ((0, 0), side), constant_values=pad_id if name == "input_ids" else 0)
            return torch.from_numpy(arr.astype(np.int64, copy=False))

        with torch.inference_mode():
            return self.fn(*[padded(n) for n in self.names]).float().numpy()


def load_compiled(model_dir: str | Path, max_length: int | None = None) -> CompiledPredictor:
    """Load a ``compile`` stage artifact as a :class:`CompiledPredictor` (``torch.compile`` is redone here: its
    graph cannot be saved; ``torch.export`` and TorchScript files are read)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = Path(model_dir)
    record = json.loads((path / COMPILE_RECORD).read_text())
    cfg = record["config"]
    warm = set(cfg["warmup_lengths"])
    if max_length and max_length != cfg["max_length"]:
        warm.add(max_length)
    max_length = max_length or cfg["max_length"]
    tokenizer = load_tokenizer(path)
    method, params, names = record["method"], int(record.get("params", 0)), record["input_names"]
    if method == "compile":
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        fn, _ = compile_warm(logits_module(model), len(names), cfg["mode"], cfg["warmup_batch_sizes"], sorted(warm))
        params = int(sum(p.numel() for p in model.parameters()))
    elif method == "export":
        fn = torch.export.load(str(path / record["file_name"])).module()
    else:
        fn = torch.jit.load(str(path / record["file_name"]), map_location="cpu")
    return CompiledPredictor(fn, tokenizer, names, record["lengths"], max_length, params)


def load_predictor(model_dir: str | Path, max_length: int = 128, *, output: str = "logits", tokenizer: Any = "auto",
                   threads: int | None = None) -> Predictor:
    """The :class:`Predictor` of a directory: a ``compile`` stage artifact, an ONNX export (``*.onnx`` and no
    torch weights, or a ``.onnx`` file: run by ONNX Runtime) or a ``from_pretrained`` sequence classifier
    (hf_optim's pruned and quantized checkpoints included).

    Args:
        model_dir (`str` or `Path`): the directory (or ``.onnx`` file).
        max_length (`int`, *optional*, defaults to 128): tokens per text in :meth:`Predictor.predict_logits`.
        output (`str`, *optional*, defaults to ``"logits"``): which model output ``predict`` returns.
        tokenizer (*optional*, defaults to ``"auto"``): ``"auto"`` loads the directory's (a :class:`DataError`
            when it has none), `None` loads none (``predict`` on token ids only), or a tokenizer to use.
        threads (`int`, *optional*): ONNX Runtime intra-op threads.

    Raises:
        DataError: the directory is missing, or is not a sequence-classification checkpoint.
    """
    path = Path(model_dir)
    fmt = artifact_format(path)

    if fmt == "compiled":
        return load_compiled(path, max_length=max_length)
    if fmt == "onnx":
        return OrtPredictor.from_dir(path, max_length, tokenizer=tokenizer, threads=threads, output=output)
    if fmt == "gguf":
        raise DataError(f"{path} is a GGUF export: llama.cpp, Ollama or transformers (gguf_file=) run it; pass "
                        "the checkpoint it was exported from")
    if fmt is None:
        what = "does not exist" if not path.exists() else "is not a model directory (no config.json)"
        raise DataError(f"{path} {what}; pass a folder written by save_pretrained, by a recipe stage or by an "
                        "ONNX export")
    cfg = read_config(path)
    if cfg is None:
        raise DataError(f"{path}/config.json is not a readable model config (a JSON mapping); write it with save_pretrained")
    if _kind(cfg) != "sequence-classification":
        archs = cfg.get("architectures") or []
        raise DataError(f"{path} holds a {', '.join(archs) or cfg.get('model_type')} model, not a sequence "
                        "classifier; fine-tune it first (a `finetune` stage)")
    from transformers import AutoModelForSequenceClassification

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - a truncated or garbled weight file raises SafetensorError, not OSError
        raise DataError(f"could not load the model in {path}: {type(e).__name__}: {' '.join(str(e).split())[:500]}") from None
    if info.get("missing_keys"):  # transformers fills them with random numbers and scores those
        raise DataError(f"the weights in {path} lack {len(info['missing_keys'])} tensor(s) the model needs "
                        f"({', '.join(sorted(info['missing_keys'])[:3])} ...); the checkpoint is incomplete")
    return TorchPredictor(model, load_tokenizer(path) if isinstance(tokenizer, str) else tokenizer, max_length,
                          output=output)
