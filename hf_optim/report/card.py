"""Model cards: a ``README.md`` with Hub metadata (base_model, tags, model-index), lineage, usage, limitations.

``hf-optim card DIR`` writes one into an artifact directory; ``hf-optim push`` writes it when missing. The
measured results come from the run's ``report.json`` (the artifact's parent directory).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import HfOptimError
from ..integrity import MARKER  # the runner's completion marker
from ..registry import stage_kind_table
from .markdown import fmt, money, table
from .summary import lineage, lineage_text, summarize

__all__ = ["check_artifact", "build_model_card", "write_model_card", "artifact_format", "CARD_NAME"]

CARD_NAME = "README.md"
# Hub ids of the embedded models (builtin:<name>), for `base_model`.
_BUILTIN_HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
                    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HEADS = (("ForSequenceClassification", "SequenceClassification", "text-classification"),
          ("ForCausalLM", "CausalLM", "text-generation"),
          ("ForTokenClassification", "TokenClassification", "token-classification"),
          ("ForQuestionAnswering", "QuestionAnswering", "question-answering"),
          ("ForMaskedLM", "MaskedLM", "fill-mask"))


def check_artifact(path: str | Path) -> dict[str, Any]:
    """Return the completion marker of a finished stage's model directory, or raise naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise HfOptimError(f"{path} is not a directory; pass a stage's output directory (e.g. runs/NAME/export)")
    if path.name.startswith(".tmp-") or path.name.startswith(".old-"):
        raise HfOptimError(f"{path} is an unfinished or discarded stage output (a {path.name[:5]}* directory); "
                           "run the recipe again and use the stage's final directory")
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        raise HfOptimError(f"{path} is not a complete hf-optim artifact: it has no readable {MARKER} (only "
                           "a stage that finished writes one); run the recipe (`hf-optim run`) to produce it") from None
    if not (path / "config.json").is_file():
        what = "an evaluate stage's metrics" if marker.get("kind") == "evaluate" else "no config.json"
        model = (marker.get("config") or {}).get("model")
        hint = f"; the model it measured is the stage {model!r}" if model and marker.get("kind") == "evaluate" else ""
        raise HfOptimError(f"{path} holds {what}, not a model that from_pretrained loads{hint}")
    return marker


def artifact_format(path: Path) -> str:
    """``onnx`` (ONNX Runtime directory), ``compiled`` (compile stage), ``hf_optim`` (quantized or pruned
    checkpoint restored by ``from_pretrained`` after ``import hf_optim``) or ``transformers``."""
    if any(path.glob("*.onnx")):
        return "onnx"
    if (path / "hf_optim_compile.json").is_file():
        return "compiled"
    config = json.loads((path / "config.json").read_text())
    if (config.get("quantization_config") or {}).get("quant_method") == "hf_optim":
        return "hf_optim"
    return "transformers"


def _head(config: dict[str, Any]) -> tuple[str, str | None]:
    arch = (config.get("architectures") or [""])[0]
    for suffix, auto, pipeline in _HEADS:
        if arch.endswith(suffix):
            return auto, pipeline
    return "", None


def _run_summary(path: Path, name: str) -> dict[str, Any] | None:
    """The summarized report of the run that made ``path`` (its parent), when it has one."""
    file = path.parent / "report.json"
    try:
        report = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if not any(s.get("name") == name for s in report.get("stages", [])):
        return None
    return summarize(report)


def _base_model(steps: list[dict[str, Any]], explicit: str | None) -> str | None:
    if explicit:
        return explicit
    root = steps[0]["inputs"].get("model") if steps else None
    if not root:
        return None
    if root.startswith("builtin:"):
        return _BUILTIN_HUB_IDS.get(root[len("builtin:"):])
    if _HUB_ID.match(root) and not Path(root).exists():
        return root
    try:
        name = json.loads((Path(root) / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError):
        return None
    return name if _HUB_ID.match(name) and not Path(name).exists() else None


def _usage(fmt_: str, auto: str, pipeline: str | None, repo: str) -> list[str]:
    auto = auto or ""
    pipe = [f'pipe = pipeline("{pipeline}", model=model, tokenizer=tokenizer)'] if pipeline else []
    if fmt_ == "onnx":
        cls = f"ORTModelFor{auto}" if auto else "ORTModel"
        code = [f"from optimum.onnxruntime import {cls}", "from transformers import AutoTokenizer, pipeline", "",
                f'model = {cls}.from_pretrained("{repo}")', f'tokenizer = AutoTokenizer.from_pretrained("{repo}")']
        note = ("An ONNX Runtime directory: load it with Optimum (`pip install 'optimum-onnx[onnxruntime]'`). "
                "It needs neither torch weights nor hf_optim.")
    elif fmt_ == "compiled":
        code = ["from huggingface_hub import snapshot_download", "from hf_optim.export.compile import load_compiled",
                "", f'model = load_compiled(snapshot_download("{repo}"))  # predict_logits(texts)']
        pipe, note = [], "A compiled PyTorch artifact: `pip install hf-optim`; it is rebuilt for this machine at load."
    else:
        cls = f"AutoModelFor{auto}" if auto else "AutoModel"
        head = ["import hf_optim  # registers the hf_optim checkpoint format with from_pretrained"] \
            if fmt_ == "hf_optim" else []
        code = head + [f"from transformers import AutoTokenizer, {cls}, pipeline", "",
                       f'model = {cls}.from_pretrained("{repo}")', f'tokenizer = AutoTokenizer.from_pretrained("{repo}")']
        note = ("Its `config.json` carries the hf_optim format (quantized modules and/or pruned shapes): plain "
                "`from_pretrained` restores it exactly after `import hf_optim` (`pip install hf-optim`); without "
                "that import it fails to load instead of loading wrong weights.") if fmt_ == "hf_optim" else \
            "A standard Transformers checkpoint."
    return [note, "", "```python", *code, *pipe, "```"]


def _results(row: dict[str, Any], base: dict[str, Any] | None, cost: dict[str, Any] | None,
             currency: str) -> list[str]:
    cols = [("metric", "value", ".4f"), ("latency p50 ms (batch 1)", "latency_ms_p50", ".2f"),
            ("latency p95 ms (batch 1)", "latency_ms_p95", ".2f"),
            ("throughput samples/s (batch 32)", "throughput_samples_per_s", ".1f"), ("size MB", "size_mb", ".1f"),
            ("peak memory MB", "peak_memory_mb", ".0f")]
    header = ["", row["artifact"]] + ([f"{base['artifact']} (baseline)"] if base else [])
    rows = [[label if key != "value" else row["metric"], fmt(row.get(key), spec)]
            + ([fmt(base.get(key), spec)] if base else []) for label, key, spec in cols]
    if cost:
        base_cost = next((c for c in cost["artifacts"] if c["baseline"]), None)
        mine = next((c for c in cost["artifacts"] if c["evaluated_by"] == row.get("evaluated_by")), None)
        if mine:
            rows.append(["cost / 1M requests (batch 32)", money(mine["cost_per_million"], currency)]
                        + ([money(base_cost["cost_per_million"], currency)] if base and base_cost else []))
    return table(header, rows)


def build_model_card(path: str | Path, repo_id: str | None = None, base_model: str | None = None) -> str:
    """The ``README.md`` text for the artifact directory ``path``.

    Args:
        path (`str` or `Path`): a finished stage's model directory (see :func:`check_artifact`).
        repo_id (`str`, *optional*): the Hub repository it goes to (used in the name and the usage code).
        base_model (`str`, *optional*): Hub id of the model it derives from; defaults to the Hub id of the
            lineage's root (the embedded ``builtin:`` models, or a Hub id / ``_name_or_path`` of a local root).
    """
    from huggingface_hub import EvalResult, ModelCardData

    path = Path(path)
    marker = check_artifact(path)
    name = marker.get("name") or path.name
    config = json.loads((path / "config.json").read_text())
    summary = _run_summary(path, name)
    stages = summary["stages"] if summary else [marker]
    steps = lineage(stages, name)
    rows = [r for r in (summary or {}).get("artifacts", []) if r["artifact"] == name]
    row = rows[0] if rows else None
    base = next((r for r in summary["artifacts"] if r.get("baseline")), None) if summary else None
    if base is row:
        base = None
    fmt_ = artifact_format(path)
    auto, pipeline = _head(config)
    recipe = (summary or {}).get("recipe")
    model_name = repo_id.split("/")[-1] if repo_id else f"{recipe}-{name}" if recipe else name
    kind_tags = {kind: row.tag for kind, row in stage_kind_table().items() if row.tag}
    tags = ["hf-optim"] + sorted({kind_tags[s["kind"]] for s in steps if s["kind"] in kind_tags})
    if fmt_ == "onnx":
        tags += ["onnxruntime"]
    scheme = (config.get("quantization_config") or {}).get("scheme")
    if scheme:
        tags.append(str(scheme).split("_")[0])
    eval_results = None
    if row and row.get("value") is not None:
        task_type = pipeline or "text-classification"
        dataset = row.get("task") or "unknown"
        measured = [(row["metric"], row["value"], f"{row['split']} {row['metric']}"),
                    ("latency_p50_ms", row.get("latency_ms_p50"), "latency p50 at batch 1 (ms)"),
                    ("latency_p95_ms", row.get("latency_ms_p95"), "latency p95 at batch 1 (ms)"),
                    ("throughput_batch32", row.get("throughput_samples_per_s"), "throughput at batch 32 (samples/s)"),
                    ("size_mb", row.get("size_mb"), "weights size (MB)")]
        eval_results = [EvalResult(task_type=task_type, dataset_type=dataset, dataset_name=dataset,
                                   dataset_split=row.get("split"), metric_type=t, metric_value=v, metric_name=n)
                        for t, v, n in measured if v is not None]
    data = ModelCardData(base_model=_base_model(steps, base_model),
                         library_name="optimum" if fmt_ == "onnx" else "transformers", pipeline_tag=pipeline,
                         tags=tags, model_name=model_name, eval_results=eval_results)
    repo = repo_id or str(path)
    machine = next(((s.get("metrics") or {}).get("machine") for s in stages if (s.get("metrics") or {}).get("machine")),
                   None)
    lines = ["---", data.to_yaml(), "---", "", f"# {model_name}", ""]
    lines += [f"`{name}` is the output of the `{marker.get('kind')}` stage of the hf-optim recipe "
              f"`{recipe or '?'}` ({_kind_text(fmt_)}).", "", "## Results", ""]
    if row:
        where = ", ".join(f"{k} {v}" for k, v in machine.items()) if machine else "the run's machine"
        lines += [f"Measured by hf-optim on {where}, on the {row.get('split')} split of `{row.get('task')}`.", ""]
        lines += _results(row, base, summary.get("cost"), summary["cost"]["currency"]) + [""]
    else:
        lines += ["Not evaluated: the run has no `evaluate` stage for this artifact, so no result is claimed. "
                  f"Measure it with `hf-optim eval {path} --task TASK`.", ""]
    lines += ["## Lineage", "", lineage_text(steps) if steps else f"`{name}` ({marker.get('kind')})", ""]
    lines += ["## How to use", ""] + _usage(fmt_, auto, pipeline, repo) + [""]
    lines += ["## Limitations", ""] + _limitations(fmt_, row) + [""]
    return "\n".join(lines)


def _kind_text(fmt_: str) -> str:
    return {"onnx": "an ONNX Runtime model", "compiled": "a compiled PyTorch model",
            "hf_optim": "a Transformers checkpoint in the hf_optim quantized/pruned format",
            "transformers": "a standard Transformers checkpoint"}[fmt_]


def _limitations(fmt_: str, row: dict[str, Any] | None) -> list[str]:
    out = ["- Speed and memory were measured on one machine at batch sizes 1 and 32 with the evaluation's "
           "sequence lengths; they change with hardware, thread count and input length. Re-measure on yours with "
           "`hf-optim eval DIR --task TASK`.",
           "- The metric holds for the evaluation data only; on other data it can be lower, and the model inherits "
           "the limitations and biases of its base model and training data."]
    if row:
        out.append(f"- Evaluated on the `{row.get('split')}` split of `{row.get('task')}` only.")
    if fmt_ == "hf_optim":
        out.append("- Needs `hf-optim` installed and imported before `from_pretrained`; INT8 kernels are CPU "
                   "(FBGEMM) kernels.")
    if fmt_ == "onnx":
        out.append("- The ONNX graph is optimized and quantized for CPU execution with ONNX Runtime; it cannot be "
                   "fine-tuned further.")
    if fmt_ == "compiled":
        out.append("- Tied to the PyTorch version that built it.")
    return out


def write_model_card(path: str | Path, repo_id: str | None = None, base_model: str | None = None) -> Path:
    """Write :func:`build_model_card`'s text to ``path/README.md`` (whole, then renamed) and return its path."""
    from .writer import atomic_write

    text = build_model_card(path, repo_id=repo_id, base_model=base_model)
    out = Path(path) / CARD_NAME
    atomic_write(out, text)
    return out
