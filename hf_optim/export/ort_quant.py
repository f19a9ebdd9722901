"""INT8 (dynamic, static with MinMax calibration) and INT4 weight-only quantization of ONNX graphs.

Each function reads one ``.onnx`` file and writes another; scratch files (Optimum's augmented model, ORT's
calibration cache) go to a directory the caller passes, never the current working directory.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from ..cpu import cpu_flags

logger = logging.getLogger("hf_optim")

__all__ = ["quantize_dynamic_onnx", "calibrate_onnx", "quantize_static_onnx", "quantize_int4_onnx",
           "guard_groups", "cpu_has_vnni", "range_dict"]

# Optimum's ORT_DEFAULT_OPS_DYNAMIC_QUANTIZATION / _STATIC_QUANTIZATION_QDQ, read from the same registries.


def _dynamic_ops() -> list[str]:
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return list(IntegerOpsRegistry)


def _static_ops() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry

    return list(QDQRegistry)


def cpu_has_vnni() -> bool:
    return "avx512_vnni" in cpu_flags()


def _optimum_qconfig(is_static: bool, per_channel: bool, nodes_to_exclude: Sequence[str] = ()):
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    make = AutoQuantizationConfig.avx512_vnni if cpu_has_vnni() else AutoQuantizationConfig.avx2
    return make(is_static=is_static, per_channel=per_channel, nodes_to_exclude=list(nodes_to_exclude) or None)


def _optimum_quantize(src: Path, dst: Path, qconfig, ranges=None) -> Path:
    from optimum.onnxruntime import ORTQuantizer

    work = dst.parent / f".optimum-quantize-{dst.stem}"
    quantizer = ORTQuantizer.from_pretrained(src.parent, file_name=src.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer.quantize(quantization_config=qconfig, save_dir=work, calibration_tensors_range=ranges)
    shutil.move(str(work / f"{src.stem}_quantized.onnx"), dst)
    shutil.rmtree(work, ignore_errors=True)
    return dst


def quantize_dynamic_onnx(src: str | Path, dst: str | Path, backend: str, per_channel: bool = False) -> Path:
    """Dynamic INT8 (int8 weights, uint8 activations quantized at run time) of ``src`` into ``dst``."""
    src, dst = Path(src), Path(dst)
    if backend == "optimum":
        return _optimum_quantize(src, dst, _optimum_qconfig(False, per_channel))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # same settings as optimum's avx512_vnni/avx2 dynamic config: QOperator, s8 weights, no reduce_range
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=_dynamic_ops(), per_channel=per_channel,
                     reduce_range=False, weight_type=QuantType.QInt8)
    return dst


def calibrate_onnx(src: str | Path, features: dict, backend: str, work_dir: str | Path,
                   batch_size: int = 16, progress: bool = False):
    """MinMax activation ranges of ``src`` over ``features`` (``{input_name: int64 array [n, seq]}``).

    Ranges are reduced after every ``batch_size`` examples, so memory is bounded by one chunk's activations
    instead of growing with the calibration set. Returns ORT's ``TensorsData`` (see :func:`range_dict`).
    ``progress`` shows a bar over the chunks.
    """
    from ..console import progress as progress_bar

    src, work = Path(src), Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(features.values())))
    if backend == "optimum":
        import dataclasses

        from datasets import Dataset
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoCalibrationConfig

        ds = Dataset.from_dict({k: v.tolist() for k, v in features.items()})
        quantizer = ORTQuantizer.from_pretrained(src.parent, file_name=src.name)
        qconfig = _optimum_qconfig(True, False)
        calibration = AutoCalibrationConfig.minmax(ds)
        # Optimum's sharded calibration: `fit` would keep every batch's activations until the end; one
        # `partial_fit` per chunk reduces them to ranges as it goes. method=None reuses the first calibrator.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in progress_bar(range(0, n, batch_size), desc="calibrate (ONNX)", enabled=progress, unit="chunk"):
                quantizer.partial_fit(dataset=ds.select(range(i, min(i + batch_size, n))),
                                      calibration_config=calibration if i == 0 else dataclasses.replace(calibration,
                                                                                                       method=None),
                                      onnx_augmented_model_name=work / "augmented_model.onnx",
                                      operators_to_quantize=qconfig.operators_to_quantize, batch_size=batch_size)
            return quantizer.compute_ranges()

    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    class _Chunk(CalibrationDataReader):
        def __init__(self, batch):
            self.batch = batch

        def get_next(self):
            batch, self.batch = self.batch, None
            return batch

    # One collect_data call per chunk: each call reduces its outputs to ranges and merges them with the
    # previous ones. (ORT's max_intermediate_outputs option clears collected outputs without reducing them.)
    calibrator = create_calibrator(str(src), _static_ops(), augmented_model_path=str(work / "augmented_model.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    for i in progress_bar(range(0, n, batch_size), desc="calibrate (ONNX)", enabled=progress, unit="chunk"):
        calibrator.collect_data(_Chunk({k: v[i:i + batch_size] for k, v in features.items()}))
    return calibrator.compute_data()


def range_dict(tensors) -> dict[str, tuple[float, float]]:
    """``{tensor_name: (min, max)}`` of calibration ranges."""
    import numpy as np

    items = tensors.data.items() if hasattr(tensors, "data") else tensors.items()
    out = {}
    for k, v in items:
        lo, hi = v.range_value if hasattr(v, "range_value") else v
        out[k] = (float(np.min(lo)), float(np.max(hi)))
    return out


def quantize_static_onnx(src: str | Path, dst: str | Path, backend: str, ranges: dict, per_channel: bool = False,
                         nodes_to_exclude: Iterable[str] = ()) -> Path:
    """Static INT8 (QDQ; uint8 activations, int8 weights) of ``src`` with ranges from :func:`calibrate_onnx`."""
    src, dst = Path(src), Path(dst)
    exclude = sorted(set(nodes_to_exclude))
    if backend == "optimum":
        return _optimum_quantize(src, dst, _optimum_qconfig(True, per_channel, exclude), ranges=ranges)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    # The ranges go in as a calibration cache, so guard steps never calibrate again.
    cache = dst.parent / f".{dst.stem}-calibration.json"
    save_tensors_data(ranges, cache)
    try:
        quantize_static(str(src), str(dst), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=_static_ops(), per_channel=per_channel, reduce_range=False,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=cache)
    finally:
        cache.unlink(missing_ok=True)
    return dst


def quantize_int4_onnx(src: str | Path, dst: str | Path, group_size: int = 32, min_weights: int = 65536,
                       symmetric: bool = True, bits: int = 4, accuracy_level: int | None = None,
                       method: str = "rtn") -> tuple[Path, int]:
    """Weight-only ``MatMulNBits`` (``bits`` 4 or 8 per weight, one scale per ``group_size`` inputs, ORT's block;
    ``symmetric=False`` adds a zero point per group; ``accuracy_level`` is the kernel's compute type) for MatMuls
    whose weight has >= ``min_weights`` elements; returns the output path and the number of MatMuls converted.

    ``method="rtn"`` rounds to nearest on each group's range; ``"hqq"`` (Half-Quadratic Quantization, ONNX
    Runtime's implementation) optimises each group's scale and float zero point for the least weight error,
    asymmetric by construction; it needs no calibration data."""
    import numpy as np
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    small, large = [], 0
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        w = inits.get(node.input[1])
        shape = list(w.dims) if w is not None else []
        if w is None or len(shape) != 2 or int(np.prod(shape)) < min_weights or shape[0] % group_size:
            small.append(node.name)
        else:
            large += 1
    import inspect

    if bits != 4 and "bits" not in inspect.signature(MatMulNBitsQuantizer.__init__).parameters:
        from ..compat import FeatureUnavailable

        raise FeatureUnavailable(f"{bits}-bit MatMulNBits needs a newer onnxruntime (this one quantizes to 4 bits "
                                 "only; tested with 1.32): upgrade onnxruntime or use quantization: int4")
    if method == "hqq":
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

        algo = HQQWeightOnlyQuantConfig(block_size=group_size, bits=bits)
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=group_size, is_symmetric=False,
                                         accuracy_level=accuracy_level, nodes_to_exclude=small, algo_config=algo)
    elif method == "rtn":
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=group_size, is_symmetric=symmetric,
                                         accuracy_level=accuracy_level, nodes_to_exclude=small)
    else:
        raise ValueError(f"method={method!r}: use 'rtn' or 'hqq'")
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), False)
    return dst, large


_LAYER_RE = re.compile(r"(?:^|/)(?:layer|layers|h|block|blocks)[._](\d+)(?:/|$)")
_GELU_OPS = {"Gelu", "BiasGelu", "FastGelu", "Erf"}
_NORM_OPS = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
             "SkipSimplifiedLayerNormalization"}


def guard_groups(path: str | Path, ranges: dict | None = None) -> list[tuple[str, list[str]]]:
    """Node groups the static-INT8 accuracy guard keeps in float, cumulatively, in this order.

    LayerNorm, the Gelu activation, residual ``Add``/``Sum`` nodes (those feeding a LayerNorm), then whole layers
    (and the pooler/classifier head), widest calibrated activation range first: outliers are what a per-tensor
    int8 scale handles worst.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    nodes = list(graph.node)
    feeds_norm = {i for n in nodes if n.op_type in _NORM_OPS for i in n.input}
    # look through Q/DQ pairs so an already-quantized graph gives the same groups
    for _ in range(2):
        feeds_norm |= {i for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                       and n.output[0] in feeds_norm for i in n.input[:1]}
    groups = [
        ("layernorm", [n.name for n in nodes if n.op_type in _NORM_OPS]),
        ("gelu", [n.name for n in nodes if n.op_type in _GELU_OPS or "act_fn" in n.name or "/activation" in n.name]),
        ("residual-add", [n.name for n in nodes
                          if n.op_type in ("Add", "Sum") and any(o in feeds_norm for o in n.output)]),
    ]
    per_layer: dict[str, list] = {}
    for n in nodes:
        m = _LAYER_RE.search(n.name)
        key = f"layer.{m.group(1)}" if m else ("head" if re.search(r"classifier|pooler|score|lm_head", n.name) else None)
        if key:
            per_layer.setdefault(key, []).append(n)
    ranges = range_dict(ranges) if ranges is not None else {}

    def width(ns) -> float:
        vals = [abs(v) for n in ns for t in list(n.input) + list(n.output) for v in ranges.get(t, ())]
        return max(vals, default=0.0)

    for key in sorted(per_layer, key=lambda k: -width(per_layer[k])):
        groups.append((key, [n.name for n in per_layer[key]]))
    return [(k, v) for k, v in groups if v]
