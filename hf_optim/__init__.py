"""hf_optim: make Transformers models smaller and faster for inference, inside the Transformers workflow.

Importing ``hf_optim`` is light (no torch import). The public API is loaded on first use.
"""

from __future__ import annotations

from ._lazy import lazy_exports
__version__ = "0.1.0"

_LAZY = {
    "OptimConfig": "hf_optim.config",
    "ConfigError": "hf_optim.errors",
    "DataError": "hf_optim.errors",
    "HfOptimError": "hf_optim.errors",
    "RecipeError": "hf_optim.errors",
    "StageError": "hf_optim.errors",
    "register": "hf_optim.registry",
    "Recipe": "hf_optim.recipe",
    "Stage": "hf_optim.recipe",
    "StageConfig": "hf_optim.recipe",
    "run": "hf_optim.runner",
    "load_task": "hf_optim.data",
    "load_text": "hf_optim.data",
    "builtin_model": "hf_optim.data",
    "TaskSpec": "hf_optim.data",
    "FinetuneConfig": "hf_optim.finetune",
    "EvalConfig": "hf_optim.evaluation",
    "evaluate_model": "hf_optim.evaluation",
    "compute_metric": "hf_optim.evaluation",
    "DistillConfig": "hf_optim.distill",
    "StudentConfig": "hf_optim.distill",
    "DistillationTrainer": "hf_optim.distill",
    "make_student": "hf_optim.distill",
    "QuantizeConfig": "hf_optim.quantize",
    "quantize_model_": "hf_optim.quantize",
    "plan_precision": "hf_optim.quantize",
    "HfOptimConfig": "hf_optim.integrations.transformers",
    "ExportConfig": "hf_optim.export", "CompileConfig": "hf_optim.export", "export_model": "hf_optim.export", "compile_model": "hf_optim.export",
    "PruneConfig": "hf_optim.prune",
    "PruningCallback": "hf_optim.prune",
    "prune_structured_": "hf_optim.prune",
    "InferenceConfig": "hf_optim.inference",
    "InferenceEngine": "hf_optim.inference",
    "InferenceCache": "hf_optim.inference",
    "tune_allocator": "hf_optim.cpu",
}

__all__ = ["__version__", *_LAZY]


# `from_pretrained` must understand `quant_method: "hf_optim"` once hf_optim is imported, without making this
# import pay for transformers/torch: the integration registers itself when transformers' quantizer registry
# is first imported (or now, if it already is). See hf_optim/integrations/__init__.py.
from .integrations import install_import_hook as _install_import_hook  # noqa: E402

_install_import_hook()

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
