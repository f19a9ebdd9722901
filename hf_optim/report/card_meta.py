"""The Hub metadata of a model card: base model and how the card's model relates to it, license and language
inherited from it, training datasets, tags and the one evaluation result the Hub's model-index is meant for.

The Hub accepts four ``base_model_relation`` values: ``adapter``, ``merge``, ``quantized`` and ``finetune``.
hf_optim changes weights by training (fine-tuning, distillation, pruning with its fine-tuning), which is a
``finetune``, or by quantization alone, which is ``quantized``; a format conversion (ONNX export or compilation
without quantization) changes no weights and has no relation value, so the field is left out.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Optional

from ..artifacts import read_config

__all__ = ["CardConfig", "HUB_RELATIONS", "BUILTIN_BASE_MODELS", "base_model_relation", "hub_dataset_id",
           "inherited_metadata", "quantization_tags", "methods_in_config"]

HUB_RELATIONS = ("adapter", "merge", "quantized", "finetune")
# The embedded models (builtin:<name>): their Hub ids and what their own model cards declare.
BUILTIN_BASE_MODELS = {
    "minilm-l6": {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "license": "apache-2.0",
                  "language": ["en"]},
    "smollm2-135m": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0",
                     "language": ["en"]},
}
TRAINING_KINDS = ("finetune", "distill", "prune")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_DATASET = re.compile(r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt", ".arrow")


@dataclasses.dataclass
class CardConfig:
    """What a model card says about a model that no run recorded (one made with the Python API), and overrides of
    what a run recorded.

    Args:
        base_model (`str`, *optional*): Hub id of the model it derives from (``builtin:<name>`` is translated).
        methods (`list[str]`, *optional*): what was done to it, in order: ``finetune``, ``distill``, ``prune``,
            ``quantize``, ``export``, ``compile``. Pruned shapes and hf_optim quantization are also read from its
            ``config.json``, so they need not be listed.
        license (`str`, *optional*): defaults to the base model's license where known (the embedded models', or
            the one a local base model's ``README.md`` declares).
        language (`list[str]`, *optional*): defaults to the base model's languages where known.
        datasets (`list[str]`, *optional*): Hub ids of the datasets it was trained on.
        task (`str`, *optional*): the dataset its metric was measured on: a Hub dataset id or a name.
        metric (`str`, *optional*): the task metric's name (``accuracy``, ``f1`` ...).
        metric_value (`float`, *optional*): its value.
        split (`str`, *optional*, defaults to ``"test"``): the split it was measured on.
        description (`str`, *optional*): a paragraph for the card's opening.
    """

    base_model: Optional[str] = None
    methods: list[str] = dataclasses.field(default_factory=list)
    license: Optional[str] = None
    language: Optional[list[str]] = None
    datasets: Optional[list[str]] = None
    task: Optional[str] = None
    metric: Optional[str] = None
    metric_value: Optional[float] = None
    split: str = "test"
    description: Optional[str] = None

    def __post_init__(self) -> None:
        known = ("finetune", "distill", "prune", "quantize", "export", "compile")
        bad = [m for m in self.methods if m not in known]
        if bad:
            raise ValueError(f"CardConfig.methods = {bad!r}: unknown; use any of {', '.join(known)}")
        if (self.metric is None) != (self.metric_value is None):
            raise ValueError("CardConfig.metric and metric_value go together: set both or neither")


def base_model_relation(kinds: list[str], quantized: bool) -> Optional[str]:
    """The Hub's ``base_model_relation`` for a model made by the stage ``kinds`` (``quantized``: any of them
    quantized the weights): ``finetune`` once weights were trained, else ``quantized``, else `None`."""
    if any(k in TRAINING_KINDS for k in kinds):
        return "finetune"
    return "quantized" if quantized else None


def quantization_tags(kind: str, config: dict[str, Any]) -> list[str]:
    """Tags for the quantization a ``quantize`` or ``export`` stage config applied (``[]`` for none)."""
    if kind == "quantize":
        scheme = str(config.get("scheme") or "")
        return ["quantization", scheme.split("_")[0]] if scheme else ["quantization"]
    if kind == "export":
        if config.get("format", "onnx") != "onnx":  # GGUF / compressed-tensors: their card tags what the file holds
            return []
        q = config.get("quantization", "dynamic")  # the ExportConfig default when the recipe leaves it out
        if q in (None, "none"):
            return []
        return ["quantization", "int4" if q == "int4" else "int8"]
    return []


def methods_in_config(config: dict[str, Any]) -> list[str]:
    """What a checkpoint's ``config.json`` shows was done to it: ``prune`` (pruned shapes) and ``quantize``."""
    qc = config.get("quantization_config") or {}
    if qc.get("quant_method") != "hf_optim":
        return []
    return (["prune"] if qc.get("linear_shapes") else []) + (["quantize"] if qc.get("scheme") else [])


def hub_dataset_id(task: Any) -> tuple[Optional[str], str]:
    """``(Hub dataset id or None, display name)`` of a task: a built-in task name or a local file has no Hub id."""
    if isinstance(task, dict):
        name, dataset = str(task.get("name") or task.get("dataset") or "custom"), task.get("dataset")
    else:
        name, dataset = str(task or "unknown"), None
    if isinstance(dataset, str) and _HUB_DATASET.match(dataset) and not dataset.lower().endswith(_FILE_SUFFIXES) \
            and not Path(dataset).exists():
        return dataset, name
    return None, name


def inherited_metadata(root: Optional[str]) -> dict[str, Any]:
    """``base_model`` (Hub id), ``license`` and ``language`` of a lineage's root, where known offline: the embedded
    models' facts, or a local directory's ``README.md`` metadata and ``config.json`` ``_name_or_path``."""
    if not root:
        return {}
    if root.startswith("builtin:"):
        return dict(BUILTIN_BASE_MODELS.get(root[len("builtin:"):], {}))
    if _HUB_ID.match(root) and not Path(root).exists():
        return {"base_model": root}
    out: dict[str, Any] = {}
    name = (read_config(root) or {}).get("_name_or_path", "")
    if isinstance(name, str) and _HUB_ID.match(name) and not Path(name).exists():
        out["base_model"] = name
    readme = Path(root) / "README.md"
    if readme.is_file():
        from huggingface_hub.repocard import metadata_load

        try:
            meta = metadata_load(readme) or {}
        except Exception:  # a README without valid YAML metadata declares nothing
            meta = {}
        for key in ("license", "language"):
            if meta.get(key):
                out[key] = meta[key] if key == "license" or isinstance(meta[key], list) else [meta[key]]
        base = meta.get("base_model")
        if "base_model" not in out and isinstance(base, str) and _HUB_ID.match(base):
            out["base_model"] = base
    return out
