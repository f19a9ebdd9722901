"""An hf_optim weight-only causal LM (Llama family) as an onnxruntime-genai model: ``model.onnx`` with fused
``GroupQueryAttention`` and ``MatMulNBits`` holding hf_optim's own integers, scales and zero points, plus the
``genai_config.json`` and tokenizer files its native generation loop reads.

The graph is built by onnxruntime-genai's own model builder (``onnxruntime_genai.models.builder``), which
accepts pre-quantized checkpoints. :func:`write_prequantized` writes the checkpoint in the builder's ``olive``
layout, the one it copies into ``MatMulNBits`` without touching the values (GPTQ's layout goes through a float
dequantize / re-round on the way):

- ``<layer>.qweight``: uint8 ``[out, in * bits / 8]``, unsigned values ``q + 2^(bits-1)``, low nibble first;
- ``<layer>.scales``: float32 ``[out, in / block]``;
- ``<layer>.qzeros``: uint8 ``[out, ceil(in / block * bits / 8)]``, unsigned zero points (8 / 128 when
  symmetric: the builder fuses q/k/v and needs every part to carry them);
- ``config.json`` ``quantization_config``: ``{"quant_method": "olive", "bits", "group_size", "overrides"}``
  (``overrides`` gives per-layer block sizes).

The builder runs in a subprocess, in the interpreter ``GenaiConfig.python`` / ``$HF_OPTIM_GENAI_PYTHON`` (default:
this one), so onnxruntime-genai and the transformers release it needs can live in their own environment. After the
build, every ``MatMulNBits`` of the produced graph is decoded and compared with hf_optim's grid.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from ..quantize import kernels
from .matmulnbits import decode_matmulnbits, matmulnbits_tensors
from .weights import (ExportReport, Grid, error_stats, grid_of, load_model, model_dir, plain_config, source_of,
                      write_checkpoint)

__all__ = ["GenaiConfig", "save_genai", "write_prequantized", "check_genai_model", "GENAI_PYTHON_ENV"]

GENAI_PYTHON_ENV = "HF_OPTIM_GENAI_PYTHON"
_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_MIN_BLOCK, _MAX_BLOCK = 16, 256  # MLAS' block-quantized GEMM: powers of two in this range
# The builder's node names (``/model/layers.3/attn/qkv_proj/MatMul...``) -> the hf_optim modules they hold
_NODE = re.compile(r"^/model/layers\.(\d+)/(attn|mlp)/(\w+?)/MatMul")
_FUSED = {"qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


@dataclasses.dataclass
class GenaiConfig:
    """How :func:`save_genai` builds the onnxruntime-genai model.

    Args:
        lm_head (`str`, *optional*, defaults to ``"int8"``): the output head when hf_optim kept it in float (its
            default): ``int8`` (the builder's int8 ``MatMulNBits``, close to lossless and faster than fp32),
            ``int4`` (the builder's round-to-nearest int4, what its own int4 models use) or ``float`` (fp32, as
            hf_optim computes it). A head tied to the input embeddings shares its table with them (quantized:
            ``GatherBlockQuantized``). A head hf_optim quantized is written from its grid whatever this says.
        accuracy_level (`int`, *optional*, defaults to 4): ``MatMulNBits`` compute type: 4 (int8 activations,
            the fast CPU path), 3 (bf16), 2 (fp16) or 1 (fp32).
        execution_provider (`str`, *optional*, defaults to ``"cpu"``): the builder's ``-e``.
        python (`str`, *optional*): the interpreter that has ``onnxruntime-genai`` (and the transformers release it
            needs); defaults to ``$HF_OPTIM_GENAI_PYTHON``, else this interpreter.
        timeout_s (`float`, *optional*, defaults to 3600): the builder's time limit.
        verify (`bool`, *optional*, defaults to `True`): decode the produced ``MatMulNBits`` and check that they
            hold hf_optim's grid exactly (raises otherwise).
    """

    lm_head: Literal["int8", "int4", "float"] = "int8"
    accuracy_level: int = 4
    execution_provider: Literal["cpu", "cuda", "dml", "webgpu"] = "cpu"
    python: str | None = None
    timeout_s: float = 3600.0
    verify: bool = True

    def __post_init__(self) -> None:
        if self.lm_head not in ("int8", "int4", "float"):
            raise ValueError(f"lm_head={self.lm_head!r}; use 'int8', 'int4' or 'float'")
        if self.accuracy_level not in (1, 2, 3, 4):
            raise ValueError(f"accuracy_level={self.accuracy_level!r}; use 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8)")

    def interpreter(self) -> str:
        python = self.python or os.environ.get(GENAI_PYTHON_ENV) or sys.executable
        # a relative path names a file from here, not from the builder's scratch directory (no resolve(): a venv's
        # python is a symlink whose target is not the venv)
        return os.path.abspath(python) if os.sep in python else python


def _block(grid: Grid, in_features: int, name: str) -> int:
    """The ``MatMulNBits`` block for a grid: the largest power of two (16..256) dividing both its group and the
    input size, so every block lies in one group (a partial group of 64 after 4 x 128 on 576 inputs: blocks of 64)
    and the blocks tile the row exactly (the builder's layout has no padding)."""
    group = grid.group_size or in_features
    block = min(group & -group, in_features & -in_features, _MAX_BLOCK)
    if block < _MIN_BLOCK:
        from ..errors import HfOptimError

        raise HfOptimError(f"{name}: group size {group} on {in_features} inputs leaves blocks of {block} inputs; "
                           f"MatMulNBits runs blocks of {_MIN_BLOCK} to {_MAX_BLOCK} (powers of two): quantize with "
                           "a group size that is a power of two >= 16 dividing the layer's input size (e.g. 32 or 64)")
    return block


def _decoder_grids(model: torch.nn.Module) -> dict[str, Grid]:
    """``{module name: Grid}`` of every decoder projection; raises naming what to change when the model is not an
    hf_optim weight-only Llama with all of them quantized to one bit width."""
    from ..errors import HfOptimError
    from ..quantize.modules import QuantLinear

    if getattr(model.config, "model_type", None) != "llama":
        raise HfOptimError(f"the onnxruntime-genai export takes Llama-family causal LMs (model_type 'llama'), got "
                           f"{getattr(model.config, 'model_type', None)!r}")
    grids: dict[str, Grid] = {}
    for i, layer in enumerate(model.model.layers):
        for proj in _PROJECTIONS:
            name = f"model.layers.{i}.{proj}"
            module = layer.get_submodule(proj)
            if not isinstance(module, QuantLinear) or not module.weight_only:
                kind = getattr(module, "scheme", "float")
                raise HfOptimError(f"{name} is {kind}: the onnxruntime-genai export takes a model whose every decoder "
                                   "Linear hf_optim quantized weight-only (scheme int4_weight_only or "
                                   "int8_weight_only, RTN or GPTQ); quantize it first, without include/exclude "
                                   "patterns that keep decoder layers in float")
            grids[name] = grid_of(module)
    bits = {g.bits for g in grids.values()}
    if len(bits) != 1:
        raise HfOptimError(f"the decoder layers mix {sorted(bits)}-bit grids; the builder takes one bit width "
                           "(quantize every decoder Linear with one scheme)")
    return grids


def _layer_tensors(name: str, grid: Grid, in_features: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The olive-layout tensors of one layer and its report entry."""
    block = _block(grid, in_features, name)
    t = matmulnbits_tensors(grid, name, block=block)
    n_out = t["attrs"]["N"]
    zp = t["zero_points"]
    if zp is None:  # symmetric: MatMulNBits' implicit zero point, written out
        n_blocks = t["scales"].shape[1]
        width = -(-n_blocks * grid.bits // 8)
        fill = 0x88 if grid.bits == 4 else 0x80
        zp = torch.full((n_out, width), fill, dtype=torch.uint8).numpy()
    tensors = {f"{name}.qweight": torch.from_numpy(t["B"].reshape(n_out, -1).copy()),
               f"{name}.scales": torch.from_numpy(t["scales"].copy()),
               f"{name}.qzeros": torch.from_numpy(zp.copy())}
    rounding = t["zero_point_rounding"]
    exact = rounding is None or rounding["fractional_groups"] == 0
    entry = {"type": f"MatMulNBits int{grid.bits} block {block}", "source": source_of(grid), "from_grid": exact,
             "block_size": block, "max_abs_error": 0.0, "mean_abs_error": 0.0}
    if not exact:
        offset = 2 ** (grid.bits - 1)
        integral = (grid.zero_point.float() + offset).round().clamp(0, 2 ** grid.bits - 1) - offset
        moved = kernels.dequantize_weight(grid.q, grid.scale, torch.float32, integral, grid.group_size)
        entry.update(error_stats(grid.dequantized(), moved))
        entry["zero_point_rounding"] = {k: rounding[k] for k in ("fractional_groups", "max_shift", "mean_shift")}
    return tensors, entry


def write_prequantized(model_or_dir: Any, out_dir: str | Path) -> dict[str, Any]:
    """Write an hf_optim weight-only Llama as a pre-quantized checkpoint in the builder's ``olive`` layout (config,
    ``model.safetensors``, tokenizer) in ``out_dir``.

    Returns:
        `dict`: ``bits``, ``grids`` (``{module name: Grid}``, what the built graph must hold), ``tensors`` (the
        per-layer report) and ``notes``.
    """
    from ..errors import HfOptimError
    from ..quantize.modules import QuantEmbedding, QuantLinear
    from .gguf_vocab import load_tokenizer

    source_dir = model_dir(model_or_dir)
    model = load_model(model_or_dir)
    grids = _decoder_grids(model)
    bits = next(iter(grids.values())).bits
    tok = load_tokenizer(source_dir)
    if tok is None:
        raise HfOptimError("onnxruntime-genai needs the tokenizer: pass a model directory that holds one "
                           "(tokenizer.json / tokenizer_config.json)")
    notes: list[str] = []
    tensors: dict[str, torch.Tensor] = {}
    report: dict[str, dict[str, Any]] = {}
    blocks: dict[str, int] = {}
    head = model.get_output_embeddings()
    head_grid = grid_of(head) if isinstance(head, QuantLinear) and head.weight_only else None
    if head_grid is not None:
        grids["lm_head"] = head_grid
    elif isinstance(head, QuantLinear):
        raise HfOptimError(f"lm_head is {head.scheme}: only weight-only heads can be written as MatMulNBits")
    with torch.no_grad():
        for name, grid in grids.items():
            in_features = grid.q.shape[1]
            out, report[name] = _layer_tensors(name, grid, in_features)
            tensors.update(out)
            blocks[name] = report[name]["block_size"]
        quantized = set(grids)
        seen: set[int] = set()
        for name, module in model.named_modules():
            if name in quantized:
                continue
            if isinstance(module, QuantEmbedding):  # the builder gathers from a float table
                tensors[f"{name}.weight"] = module.dequantized_weight().float().contiguous()
                seen.add(id(module))
                notes.append(f"{name}: quantized embedding table written dequantized (float32)")
            elif isinstance(module, QuantLinear):
                raise HfOptimError(f"{name} is {module.scheme}; the onnxruntime-genai export writes weight-only "
                                   "grids only")
        for key, value in model.state_dict().items():
            owner = key.rpartition(".")[0]
            if owner in quantized or f"{owner}.weight" in tensors or value.data_ptr() in seen:
                continue
            seen.add(value.data_ptr())  # tied weights are stored once; the builder re-ties them
            tensors[key] = value.detach().float().contiguous()
    fractional = [n for n, r in report.items() if not r["from_grid"]]
    if fractional:
        notes.append(f"{len(fractional)} layer(s) have fractional zero points, rounded to integers (MatMulNBits "
                     "holds integer zero points; quantize with integer_zero_points: true for an exact copy)")
    default_block = max(set(blocks.values()), key=list(blocks.values()).count)
    config = plain_config(model)
    config.__dict__.pop("_pre_quantization_dtype", None)
    config.quantization_config = {
        "quant_method": "olive", "bits": bits, "group_size": default_block,
        "overrides": {n: {"bits": bits, "group_size": b} for n, b in blocks.items() if b != default_block}}
    write_checkpoint(out_dir, tensors, config, model, tok)
    tied = bool(getattr(config, "tie_word_embeddings", False)) and head_grid is None
    return {"bits": bits, "grids": grids, "tensors": report, "notes": notes, "tied": tied}


def builder_command(checkpoint: Path, out_dir: Path, cache_dir: Path, bits: int, config: GenaiConfig) -> list[str]:
    """The model builder's command line for a pre-quantized checkpoint."""
    extra = [f"accuracy_level={config.accuracy_level}", "hf_token=false"]
    if config.lm_head == "float":
        extra.append("nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather")
    elif config.lm_head != f"int{bits}":  # the builder quantizes what is left float at -p's width
        extra.append(f"matmul_mixed_precision=last_matmul:{config.lm_head}")
    if config.lm_head == "int8":
        # RTN names the int8 head's initializers as a tied embedding's GatherBlockQuantized expects them (with the
        # default method a tied model's graph references a missing initializer); the head is the only float MatMul
        # left, so the method touches nothing else
        extra.append("algo_config=rtn")
    precision = f"int{bits}"
    return [config.interpreter(), "-I", "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint),
            "-o", str(out_dir), "-p", precision, "-e", config.execution_provider, "-c", str(cache_dir),
            "--extra_options", *extra]


def _expected(grids: dict[str, Grid], names: tuple[str, ...], blocks: dict[str, int]) -> dict[str, torch.Tensor]:
    """What a (possibly fused) ``MatMulNBits`` must hold: the rows of ``names`` stacked, signed as hf_optim
    stores them."""
    parts = []
    for name in names:
        t = matmulnbits_tensors(grids[name], name, block=blocks[name])
        grid = grids[name]
        q = grid.q.to(torch.int16)
        zp = None
        if grid.zero_point is not None:
            offset = 2 ** (grid.bits - 1)
            zp = ((grid.zero_point.float() + offset).round().clamp(0, 2 ** grid.bits - 1) - offset)
            group = grid.group_size or q.shape[1]
            n_blocks = t["scales"].shape[1]
            zp = zp[:, torch.arange(n_blocks) * blocks[name] // group].to(torch.int16)
        parts.append((q, torch.from_numpy(t["scales"]), zp))
    zps = [p[2] for p in parts]
    return {"q": torch.cat([p[0] for p in parts]), "scales": torch.cat([p[1] for p in parts]),
            "zero_points": None if all(z is None for z in zps) else torch.cat(
                [z if z is not None else torch.zeros_like(p[1], dtype=torch.int16) for z, p in zip(zps, parts)])}


def check_genai_model(model_path: str | Path, grids: dict[str, Grid], blocks: dict[str, int]) -> dict[str, Any]:
    """Decode every ``MatMulNBits`` in the built ``model.onnx`` that holds hf_optim layers and compare its integer
    values, scales and zero points with the grids; returns ``{"checked": n, "mismatches": [...]}``."""
    import onnx

    model = onnx.load(str(model_path))
    inits = {i.name: i for i in model.graph.initializer}
    checked, mismatches, found = 0, [], set()
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        m = _NODE.match(node.name)
        if m:
            layer, proj = m.group(1), m.group(3)
            names = tuple(f"model.layers.{layer}.{p}" for p in _FUSED.get(proj, ()))
            if not names:
                names = tuple(f"model.layers.{layer}.{p}" for p in _PROJECTIONS if p.endswith("." + proj))
        elif node.name.startswith("/lm_head/") and "lm_head" in grids:
            names = ("lm_head",)
        else:
            continue
        if not names or any(n not in grids for n in names):
            continue
        got = decode_matmulnbits(node, inits)
        want = _expected(grids, names, blocks)
        zp_got = got["zero_points"]
        ok = (torch.equal(got["q"].to(torch.int16), want["q"]) and torch.equal(got["scales"], want["scales"])
              and (want["zero_points"] is None and (zp_got is None or bool((zp_got == 0).all()))
                   or want["zero_points"] is not None and zp_got is not None
                   and torch.equal(zp_got.to(torch.int16), want["zero_points"])))
        checked += 1
        found.update(names)
        if not ok:
            mismatches.append(node.name)
    missing = sorted(set(grids) - found)
    return {"checked": checked, "layers": len(found), "mismatches": mismatches, "missing": missing}


def save_genai(model_or_dir: Any, out_dir: str | Path, config: GenaiConfig | None = None) -> ExportReport:
    """Build an onnxruntime-genai model (``model.onnx`` + ``genai_config.json`` + tokenizer) from an hf_optim
    weight-only Llama, its ``MatMulNBits`` holding hf_optim's own grid (RTN or GPTQ; int4 or int8).

    Args:
        model_or_dir (`str` or `Path`): an hf_optim checkpoint directory (with its tokenizer) whose every decoder
            Linear is ``int4_weight_only`` (or every one ``int8_weight_only``).
        out_dir (`str` or `Path`): the output directory (``og.Model(out_dir)`` loads it).
        config ([`GenaiConfig`], *optional*): output head, accuracy level, interpreter with onnxruntime-genai.

    Grids with fractional zero points (hf_optim's asymmetric RTN / GPTQ without ``integer_zero_points``) are
    rounded to integer zero points and the report says so; group sizes must be powers of two >= 16 dividing the
    layers' input sizes (partial groups run as smaller blocks).

    Returns:
        [`~hf_optim.export.weights.ExportReport`]: per quantized layer its block size and whether its grid was
        copied exactly; notes (the builder's command, the verification).
    """
    from ..errors import HfOptimError, StageError

    config = config or GenaiConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".genai-ckpt-", dir=out_dir.parent) as tmp:
        ckpt = Path(tmp) / "checkpoint"
        written = write_prequantized(model_or_dir, ckpt)
        cmd = builder_command(ckpt, out_dir, Path(tmp) / "cache", written["bits"], config)
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=config.timeout_s)
        except FileNotFoundError as e:
            raise HfOptimError(f"no interpreter {cmd[0]!r} (set ${GENAI_PYTHON_ENV} to a Python with "
                               "onnxruntime-genai, e.g. `make anchors-genai`)") from e
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-2000:]
            if "No module named" in tail and "onnxruntime_genai" in tail:
                raise HfOptimError(f"{cmd[0]} has no onnxruntime-genai: `pip install onnxruntime-genai` there, or "
                                   f"set ${GENAI_PYTHON_ENV} to an interpreter that has it (`make anchors-genai`)")
            if "cannot import name" in tail and "transformers" in tail:
                raise HfOptimError(f"onnxruntime-genai's model builder needs a newer transformers than {cmd[0]} "
                                   f"has (a 5.x release): set ${GENAI_PYTHON_ENV} to a separate environment with "
                                   f"it (`make anchors-genai`)\n{tail[-500:]}")
            raise StageError(f"onnxruntime-genai's model builder failed (exit {proc.returncode}):\n{tail}")
    blocks = {n: r["block_size"] for n, r in written["tensors"].items()}
    notes = list(written["notes"])
    head = "from hf_optim's grid" if "lm_head" in written["grids"] else config.lm_head
    if written["tied"] and config.lm_head != "float":
        notes.append(f"the input embeddings share the output head's {config.lm_head} table (round-to-nearest, "
                     "the builder's own); lm_head 'float' keeps both in float")
    notes.append(f"built by onnxruntime-genai's model builder ({config.execution_provider}, accuracy_level "
                 f"{config.accuracy_level}, output head {head})")
    if config.verify:
        check = check_genai_model(out_dir / "model.onnx", written["grids"], blocks)
        if check["missing"] or check["mismatches"]:
            raise StageError(f"the built model does not hold hf_optim's grid: {len(check['mismatches'])} "
                             f"MatMulNBits differ (first: {(check['mismatches'] or ['-'])[0]}), "
                             f"{len(check['missing'])} layer(s) not found (first: {(check['missing'] or ['-'])[0]})")
        notes.append(f"verified: {check['checked']} MatMulNBits hold the grids of {check['layers']} layers "
                     "(integers, scales and zero points)")
    fmt = f"onnxruntime-genai int{written['bits']}"
    return ExportReport(path=out_dir, format=fmt, tensors=written["tensors"], notes=notes)
