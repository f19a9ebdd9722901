"""Write a Llama-family causal LM as one GGUF file that llama.cpp, Ollama and ``transformers`` (``gguf_file=``)
load without hf_optim.

Tensor names, the rotary q/k row order and the metadata keys follow llama.cpp's ``convert_hf_to_gguf.py``
(``LlamaModel``). Weights come from hf_optim's own grid where the GGML type can hold it (see
:mod:`.ggml_blocks`); everything else is re-quantized by llama.cpp's round-to-nearest, and the report says which
tensor was written how and with what error against the weight hf_optim computes with.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .ggml_blocks import QTYPES, decode, encode, exact_qtype
from .padding import plain_model
from .weights import ExportReport, error_stats, float_weight, grid_of, model_dir, source_of

__all__ = ["save_gguf"]

# llama.cpp's names for Llama's modules (``gguf.constants.MODEL_TENSOR`` / ``tensor_mapping.py``).
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7}  # llama.cpp's LlamaFileType


def _permute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute`` of q/k rows (rotary halves -> interleaved pairs), as a row index."""
    rows = torch.arange(n_rows)
    return rows.reshape(n_head, 2, n_rows // n_head // 2).transpose(1, 2).reshape(-1)


def _rope(config, writer) -> None:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or params
    theta = getattr(config, "rope_theta", None) or params.get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind not in (None, "default"):
        raise ValueError(f"rope scaling {kind!r} is not supported by the GGUF export (only none or linear)")


def _metadata(writer, config, name: str, file_type: int) -> None:
    import gguf

    head_dim = config.head_dim
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads or config.num_attention_heads))
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    _rope(config, writer)
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tensors(model: nn.Module, config) -> list[tuple[str, nn.Module | torch.Tensor, int | None, bool]]:
    """``(gguf_name, module_or_tensor, q/k head count for the row permutation, is_head_or_embedding)``."""
    inner = model.model
    out: list = [("token_embd.weight", inner.embed_tokens, None, True)]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    for i, layer in enumerate(inner.layers):
        for hf_name, short in _LAYER_NAMES.items():
            module = layer.get_submodule(hf_name)
            perm = heads if short == "attn_q" else kv_heads if short == "attn_k" else None
            if hasattr(module, "in_features") or hasattr(module, "embedding_dim"):
                out.append((f"blk.{i}.{short}.weight", module, perm, False))
                if getattr(module, "bias", None) is not None:
                    out.append((f"blk.{i}.{short}.bias", module.bias.detach().float(), perm, False))
            else:  # RMSNorm
                out.append((f"blk.{i}.{short}.weight", module.weight.detach().float(), None, False))
    out.append(("output_norm.weight", inner.norm.weight.detach().float(), None, False))
    head = model.get_output_embeddings()
    if getattr(head, "weight", None) is not getattr(inner.embed_tokens, "weight", None):  # tied: llama.cpp re-ties
        out.append(("output.weight", head, None, True))
    return out


def _write_weight(writer, name: str, module: nn.Module, perm: int | None, qtype: str) -> dict[str, Any]:
    grid = grid_of(module)
    weight = float_weight(module)
    if perm is not None:
        index = _permute_rows(weight.shape[0], perm)
        weight = weight[index]
        grid = None if grid is None else grid.rows(index)
    if qtype == "auto":
        qtype = exact_qtype(grid)
    data, written, from_grid = encode(weight, grid, qtype)
    import gguf

    raw = getattr(gguf.GGMLQuantizationType, written.upper()) if data.dtype == "uint8" else None
    writer.add_tensor(name, data, raw_dtype=raw)
    return {"type": written.upper(), "source": source_of(grid), "from_grid": from_grid,
            **error_stats(weight, decode(data, written).reshape(weight.shape))}


def save_gguf(model_or_dir: Any, out_path: str | Path, *, qtype: str = "q8_0", head_qtype: str | None = None,
              tokenizer: Any = None, pad_uneven: bool = False) -> ExportReport:
    """Write a Llama-family causal LM (float, hf_optim-quantized or uniformly pruned) as a GGUF file.

    Args:
        model_or_dir (`str`, `Path` or `PreTrainedModel`): a model directory (an hf_optim checkpoint restores its
            quantized modules), ``"builtin:smollm2-135m"``, or the model itself.
        out_path (`str` or `Path`): the ``.gguf`` file to write (replaced atomically).
        qtype (`str`, *optional*, defaults to ``"q8_0"``): GGML type of the decoder layers' weights: ``q8_0``,
            ``q4_0``, ``q4_1``, ``f16``, ``f32``, or ``auto`` (each tensor in the type that holds hf_optim's grid
            exactly: int4 symmetric -> Q4_0, int4 asymmetric -> Q4_1, int8 -> Q8_0, float -> F16).
        head_qtype (`str`, *optional*): type of the token embeddings and output head. Defaults to ``q8_0`` when
            ``qtype`` is a 4-bit type (what llama.cpp's quantizer keeps them at for quality), else ``qtype``.
        tokenizer (`PreTrainedTokenizerBase` or `str`, *optional*): the tokenizer (or its directory); defaults to
            the one saved with ``model_or_dir``. Byte-level BPE tokenizers (GPT-2 / SmolLM2 style) are written with
            their merges, token types, special ids and chat template; others as ``"none"`` (no vocabulary).
        pad_uneven (`bool`, *optional*, defaults to `False`): layers pruned to different sizes are padded with
            zero units to the widest (see :mod:`~hf_optim.export.padding`) instead of refused.

    Returns:
        [`~hf_optim.export.weights.ExportReport`]: the path, the type and error of every tensor, the tokenizer
        model written, and notes.
    """
    if qtype not in QTYPES + ("auto",):
        raise ValueError(f"qtype={qtype!r}; use one of {', '.join(QTYPES + ('auto',))}")
    if head_qtype is None:
        head_qtype = "q8_0" if qtype in ("q4_0", "q4_1") else qtype
    if head_qtype not in QTYPES + ("auto",):
        raise ValueError(f"head_qtype={head_qtype!r}; use one of {', '.join(QTYPES + ('auto',))}")
    import gguf

    from .gguf_vocab import add_tokenizer, load_tokenizer

    source_dir = model_dir(model_or_dir)
    model, config, padding = plain_model(model_or_dir, pad_uneven)
    if getattr(model.config, "model_type", None) != "llama":
        raise ValueError(f"GGUF export supports Llama-family causal LMs (model_type 'llama'), got "
                         f"{getattr(model.config, 'model_type', None)!r}")
    notes: list[str] = [padding.note()] if padding else []
    tok = load_tokenizer(tokenizer if tokenizer is not None else source_dir)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        name = Path(str(getattr(config, "_name_or_path", "") or "model")).name or "model"
        file_type = _FILE_TYPES.get(qtype, _FILE_TYPES["q8_0"])
        _metadata(writer, config, name, file_type)
        tok_model = add_tokenizer(writer, tok, int(config.vocab_size), notes)
        report: dict[str, dict[str, Any]] = {}
        with torch.no_grad():
            for gname, obj, perm, is_head in _tensors(model, config):
                if isinstance(obj, torch.Tensor):  # norms and biases stay float32, as llama.cpp keeps them
                    t = obj[_permute_rows(obj.shape[0], perm)] if perm is not None else obj
                    writer.add_tensor(gname, t.numpy().astype("float32"))
                    report[gname] = {"type": "F32", "source": "float", "from_grid": False,
                                     "max_abs_error": 0.0, "mean_abs_error": 0.0}
                    continue
                report[gname] = _write_weight(writer, gname, obj, perm, head_qtype if is_head else qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    regridded = [n for n, t in report.items() if t["source"] != "float" and not t["from_grid"]]
    if regridded:
        notes.append(f"{len(regridded)} quantized tensor(s) re-quantized onto the GGML grid (their grid does not "
                     f"fit {qtype}); errors per tensor in `tensors`: {', '.join(regridded[:4])}"
                     + (" ..." if len(regridded) > 4 else ""))
    return ExportReport(path=out_path, format=f"gguf {qtype}", tensors=report, notes=notes, tokenizer=tok_model,
                        padding=padding.to_dict() if padding else None)
