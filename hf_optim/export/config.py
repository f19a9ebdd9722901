"""``export`` and ``compile`` stage configs (light: no torch/onnx import)."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional, Union

from ..data.tasks import TaskSpec, check_corpus, is_text_corpus
from ..config import added_field, renamed_fields
from ..quantize.schemes import SCHEMES
from ..recipe import StageConfig

__all__ = ["ExportConfig", "CompileConfig"]


def _check_validation(cfg) -> None:
    # a causal LM is checked on a text corpus (bbc-news), a classifier on a task
    if cfg.task_type != "causal-lm" and not is_text_corpus(cfg.task):
        TaskSpec.coerce(cfg.task)
    if cfg.max_metric_drop < 0:
        cfg._fail("max_metric_drop", "must be >= 0 (in metric units: 0.01 = 1 accuracy point)")
    if cfg.validation_samples is not None and cfg.validation_samples < 1:
        cfg._fail("validation_samples", "must be >= 1 or unset (the whole validation split)")
    if cfg.max_length < 1:
        cfg._fail("max_length", "must be >= 1")


@renamed_fields(int4_block_size="group_size", int4_symmetric="symmetric", int4_min_size="min_weights",
                int4_method="method")
@dataclasses.dataclass
class ExportConfig(StageConfig):
    """Export ``model`` to ONNX Runtime, optimize the graph, quantize it, and validate it on the task metric.

    Args:
        model (`str`): ``builtin:<name>``, an earlier stage, or a model directory.
        task (`str` or `dict`, *optional*, defaults to ``"movie-sentiment"``): the task whose validation split
            checks a classifier's export (see :class:`~hf_optim.data.TaskSpec`).
        corpus (`str`, *optional*): the text corpus (``bbc-news``) on which a causal LM's export is checked
            (perplexity of the graph against the model); defaults to the recipe's top-level ``corpus``. A ``task``
            that names a corpus (how recipes named it before) is read as ``corpus``. Unset: ``bbc-news``.
        task_type (`str`, *optional*, defaults to ``"auto"``): ``sequence-classification``, ``causal-lm`` (exported
            with past key values) or ``auto`` (read from the checkpoint's ``architectures``).
        backend (`str`, *optional*, defaults to ``"auto"``): ``optimum`` (Optimum's exporter, optimizer and
            quantizer), ``torch`` (``torch.onnx`` + ONNX Runtime's own tools; works on transformers 5) or ``auto``
            (Optimum when installed).
        optimization (`str`, *optional*, defaults to ``"O2"``): ORT graph optimization level: ``none``, ``O1``
            (basic), ``O2`` (+ Attention/SkipLayerNorm/Gelu fusion), ``O3`` (+ approximate Gelu).
        quantization (`str`, *optional*, defaults to ``"dynamic"``): ``none``, ``dynamic`` (int8 weights,
            activations quantized at run time), ``static`` (int8 QDQ with MinMax calibration and the accuracy
            guard), ``int4`` or ``int8_weight_only`` (weight-only ``MatMulNBits`` on large MatMuls, 4 or 8 bits
            per weight, one scale per group of ``group_size`` inputs; activations stay float, which suits
            LLMs whose activation outliers per-tensor ``dynamic`` int8 cannot represent).
        per_channel (`bool`, *optional*, defaults to `False`): per-channel int8 weight scales.
        calibration_samples (`int`, *optional*, defaults to 128): training examples used to calibrate ``static``
            (stratified by label, the task's seed).
        calibration_batch_size (`int`, *optional*, defaults to 16): examples per calibration chunk; ranges are
            reduced after every chunk, so memory is bounded by one chunk's activations.
        guard (`bool`, *optional*, defaults to `True`): for ``static``, keep nodes in float (LayerNorm, Gelu,
            residual Add, then whole layers) until the metric drop is within ``max_metric_drop``.
        group_size (`int`, *optional*, defaults to 32): ``int4`` / ``int8_weight_only``: input features per scale
            (``MatMulNBits``' block size). Formerly ``int4_block_size``.
        symmetric (`bool`, *optional*, defaults to `True`): ``int4`` / ``int8_weight_only``: ``False`` stores a zero
            point per group (``MatMulNBits`` with ``zero_points``): a group's range need not be centred on zero.
            ``hqq`` is always asymmetric and ignores it. Formerly ``int4_symmetric``.
        min_weights (`int`, *optional*, defaults to 65536): only MatMuls with at least this many weights are
            quantized by ``int4`` / ``int8_weight_only``. Formerly ``int4_min_size``.
        method (`str`, *optional*, defaults to ``"rtn"``): how ``int4`` / ``int8_weight_only`` weights are
            rounded: ``rtn`` (round to nearest on each group's range) or ``hqq`` (each group's scale and float zero
            point optimised for the least weight error, no calibration data; asymmetric) or ``checkpoint``
            (causal LMs quantized by hf_optim, scheme ``int4_weight_only`` / ``int8_weight_only``, RTN or GPTQ:
            their own integers, scales and zero points go into ``MatMulNBits`` unchanged, except that
            fractional zero points are rounded to integers, the weight change recorded; ``group_size``,
            ``symmetric`` and ``min_weights`` then come from the checkpoint). Formerly ``int4_method``.
        accuracy_level (`int`, *optional*): ``MatMulNBits``' compute type: unset (ONNX Runtime's default), 1
            (fp32), 2 (fp16), 3 (bf16) or 4 (int8: activations quantized per block at run time, the fast CPU
            path).
        max_metric_drop (`float`, *optional*, defaults to 0.01): the stage fails (and writes nothing) when the
            validation metric drops more than this vs the source model (metric units; for causal LMs, the
            relative perplexity increase).
        validation_samples (`int`, *optional*, defaults to 500): validation examples (unset: the whole split), a
            sample stratified by label and drawn with the task's seed; the class counts are in the export record.
        max_length (`int`, *optional*, defaults to 128): tokens per example.
        opset (`int`, *optional*): ONNX opset (default: the exporter's choice).
        embeddings (`str`, *optional*, defaults to ``"float"``): ``int4`` stores the token-embedding table in
            4 bits (``GatherBlockQuantized``, block-wise scales; position/token-type tables stay float). In a small
            encoder that table is most of the file (MiniLM: 11.7M of 22.7M parameters). Disables the
            ``EmbedLayerNormalization`` fusion (the table must stay a plain lookup). Classifiers only.
        embeddings_block_size (`int`, *optional*, defaults to 64): hidden values per int4 embedding scale.
        split_skip_layernorm (`str`, *optional*, defaults to ``"on"``): after ``O2``/``O3`` fusion, ``on`` rewrites
            each ``SkipLayerNormalization`` as ``Sum`` + ``LayerNormalization`` (and ``BiasGelu`` as ``Add`` +
            ``Gelu``), ``off`` keeps the graph ORT's optimizer fused, ``auto`` times both kernels on the exporting
            machine and keeps the faster (so the graph depends on the machine; releases before this field did
            that). The record holds the setting, the probe's timings and the decision. On MiniLM-L6 (one thread,
            batch 1 / 32; ``scripts/results/bench_skip_layernorm.json``) the split graph took 0.93 / 0.92 of the
            fused one's time in FP32 and 0.85 / 0.79 with dynamic INT8 (paired medians), measured on an AVX-512 CPU only (no
            AVX2-only machine was available, so ``auto`` is not the default).
        format (`str`, *optional*, defaults to ``"onnx"``): ``onnx`` (everything above), or a portable checkpoint
            that other runtimes load without hf_optim: ``gguf`` (one ``model.gguf``, Llama-family causal LMs; see
            :func:`~hf_optim.export.save_gguf`) or ``compressed-tensors`` (weight-only checkpoints; see
            :func:`~hf_optim.export.save_compressed_tensors`) or ``genai`` (an onnxruntime-genai model built by its
            model builder from a weight-only Llama's own grid; see :func:`~hf_optim.export.save_genai`). Those
            skip the ONNX settings and the task validation; the output holds the export report (type and error of
            every tensor) instead.
        gguf_type (`str`, *optional*, defaults to ``"q8_0"``): ``gguf``: GGML type of the decoder weights:
            ``q8_0``, ``q4_0``, ``q4_1``, ``f16``, ``f32`` or ``auto`` (the type that holds each tensor's hf_optim
            grid exactly).
        pad_uneven (`bool`, *optional*, defaults to `False`): ``compressed-tensors`` / ``gguf``: a Llama or BERT
            model pruned to different sizes per layer (or BERT with pruned heads), which no plain config describes,
            is padded with zero units (zero weights in and out: the outputs do not change) to the widest layer's
            sizes (BERT: its heads back to the config's), so the checkpoint loads anywhere without hf_optim; it is
            as large as the widest layer, and the record and the card state the padding's share. For the speed of
            the pruning, use the hf_optim checkpoint or ``format: onnx``.
    """

    kind = "export"
    scores_task = True
    version = 1

    model: str
    task: Union[str, dict] = "movie-sentiment"
    task_type: Literal["auto", "sequence-classification", "causal-lm"] = "auto"
    corpus: Optional[str] = added_field(None)
    backend: Literal["auto", "optimum", "torch"] = "auto"
    optimization: Literal["none", "O1", "O2", "O3"] = "O2"
    quantization: Literal["none", "dynamic", "static", "int4", "int8_weight_only"] = "dynamic"
    per_channel: bool = False
    calibration_samples: int = 128
    calibration_batch_size: int = 16
    guard: bool = True
    group_size: int = SCHEMES["int4_weight_only"].default_group_size
    symmetric: bool = added_field(True)
    min_weights: int = 65536
    method: Literal["rtn", "hqq", "checkpoint"] = added_field("rtn")
    accuracy_level: Optional[int] = added_field(None)
    max_metric_drop: float = 0.01
    validation_samples: Optional[int] = 500
    max_length: int = 128
    opset: Optional[int] = None
    embeddings: Literal["float", "int4"] = "float"
    embeddings_block_size: int = 64
    split_skip_layernorm: Literal["auto", "on", "off"] = added_field("on", legacy="auto")
    format: Literal["onnx", "gguf", "compressed-tensors", "genai"] = added_field("onnx")
    gguf_type: Literal["q8_0", "q4_0", "q4_1", "f16", "f32", "auto"] = added_field("q8_0")
    pad_uneven: bool = added_field(False)

    def __post_init__(self) -> None:
        # YAML 1.1 reads an unquoted on / off as a boolean
        if isinstance(self.split_skip_layernorm, bool):
            self.split_skip_layernorm = "on" if self.split_skip_layernorm else "off"
        super().__post_init__()

    def validate(self) -> None:
        _check_validation(self)
        check_corpus(self)
        if self.embeddings_block_size < 16 or self.embeddings_block_size & (self.embeddings_block_size - 1):
            self._fail("embeddings_block_size", "must be a power of two >= 16 (16, 32, 64, 128)")
        if self.embeddings == "int4" and self.task_type == "causal-lm":
            self._fail("embeddings", "int4 embeddings are offered for classifiers only (an LM's table is its "
                                     "output layer too); use quantization: int4")
        for f in ("calibration_samples", "calibration_batch_size", "min_weights"):
            if getattr(self, f) < 1:
                self._fail(f, "must be >= 1")
        if self.accuracy_level is not None:
            if self.accuracy_level not in (1, 2, 3, 4):
                self._fail("accuracy_level", "must be 1 (fp32), 2 (fp16), 3 (bf16), 4 (int8) or unset")
            if self.quantization not in ("int4", "int8_weight_only"):
                self._fail("accuracy_level", "applies to int4 / int8_weight_only (MatMulNBits); remove it")
            if self.method == "hqq":
                self._fail("accuracy_level", "HQQ's float zero points run in fp32 whatever the level (ONNX Runtime "
                                             "ignores it); remove it, or use method: rtn for int8 compute")
        if self.method == "checkpoint" and self.quantization not in ("int4", "int8_weight_only"):
            self._fail("method", "checkpoint (the model's own weight-only grid) applies to quantization: int4 or "
                                 "int8_weight_only")
        if self.method == "hqq" and self.quantization != "int4":
            self._fail("method", "hqq is offered for quantization: int4 (ONNX Runtime has no 8-bit kernel "
                                 "with float zero points); use method: rtn")
        if self.group_size < 16 or self.group_size & (self.group_size - 1):
            self._fail("group_size", "must be a power of two >= 16 (16, 32, 64, 128)")
        if self.opset is not None and not 11 <= self.opset <= 23:
            self._fail("opset", "must be between 11 and 23, or unset")
        if self.task_type == "causal-lm" and self.quantization == "static":
            self._fail("quantization", "static int8 is offered for classifiers only; use 'dynamic' or 'int4'")
        if self.gguf_type != "q8_0" and self.format != "gguf":
            self._fail("gguf_type", f"applies to format: gguf, not {self.format!r}; remove it")
        if self.pad_uneven and self.format not in ("compressed-tensors", "gguf"):
            self._fail("pad_uneven", f"applies to format: compressed-tensors or gguf (checkpoints whose config "
                       f"states one size for every layer), not {self.format!r}: "
                       + ("ONNX keeps each pruned layer's own size; remove it" if self.format == "onnx" else
                          "remove it"))


@dataclasses.dataclass
class CompileConfig(StageConfig):
    """Compile a PyTorch classifier for inference and validate it on the task metric.

    Args:
        model (`str`): an earlier stage, ``builtin:<name>`` or a model directory.
        method (`str`, *optional*, defaults to ``"compile"``): ``compile`` (``torch.compile``; the artifact records
            the warm-up shapes, which are compiled again at load), ``export`` (``torch.export``, saved as
            ``model.pt2``) or ``torchscript`` (trace + freeze + optimize_for_inference; deprecated by PyTorch,
            offered while torch ships it).
        task (`str` or `dict`, *optional*, defaults to ``"movie-sentiment"``): the task that validates the output.
        task_type (`str`, *optional*, defaults to ``"sequence-classification"``): only classifiers for now.
        mode (`str`, *optional*, defaults to ``"default"``): ``torch.compile`` mode.
        warmup_batch_sizes (`list[int]`, *optional*, defaults to ``[1, 32]``): batch sizes compiled ahead.
        warmup_lengths (`list[int]`, *optional*, defaults to ``[32, 128]``): sequence lengths compiled ahead;
            inputs are padded up to the next one, so no call recompiles.
        max_metric_drop (`float`, *optional*, defaults to 0.01): see :class:`ExportConfig`.
        validation_samples (`int`, *optional*, defaults to 500): validation examples (stratified, the task's seed).
        max_length (`int`, *optional*, defaults to 128): tokens per example.
    """

    kind = "compile"
    scores_task = True
    version = 1

    model: str
    method: Literal["compile", "export", "torchscript"] = "compile"
    task: Union[str, dict] = "movie-sentiment"
    task_type: Literal["sequence-classification"] = "sequence-classification"
    mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    warmup_batch_sizes: tuple[int, ...] = (1, 32)
    warmup_lengths: tuple[int, ...] = (32, 128)
    max_metric_drop: float = 0.01
    validation_samples: Optional[int] = 500
    max_length: int = 128

    def validate(self) -> None:
        _check_validation(self)
        for f in ("warmup_batch_sizes", "warmup_lengths"):
            vals = getattr(self, f)
            if not vals or any(v < 1 for v in vals):
                self._fail(f, "must be a non-empty list of integers >= 1")
        if max(self.warmup_lengths) < self.max_length:
            self._fail("warmup_lengths", f"the largest length must be >= max_length ({self.max_length}); "
                       f"add {self.max_length}")
