"""Model cards: a ``README.md`` with Hub metadata (base_model and its relation, license, language, datasets, tags,
the task metric as model-index), lineage, usage, speed, limitations.

``hf-optim card DIR`` writes one into an artifact directory; ``hf-optim push`` writes it when missing. The
measured results come from the run's ``report.json`` (the artifact's parent directory). A model made with the
Python API has no run: :class:`~hf_optim.report.card_meta.CardConfig` says what was done to it (see
:func:`hf_optim.hub.push_to_hub`). The metadata rules are in :mod:`hf_optim.report.card_meta`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..artifact_kind import checkpoint_architectures, checkpoint_format, export_record, read_config
from ..data.tasks import is_text_corpus
from ..errors import HfOptimError
from ..integrity import MARKER  # the runner's completion marker
from ..registry import stage_kind_table
from .card_meta import (TRAINING_KINDS, CardConfig, base_model_relation, hub_dataset_id, inherited_metadata,
                        methods_in_config, quantization_tags)
from .card_runtimes import (PORTABLE, limitation_lines, needs_lines, pruned_lines, runtime_facts, runtime_tags,
                            usage_lines, weights_lines)
from .markdown import calibration_cost, fmt, money, table
from .summary import lineage, lineage_text, summarize

__all__ = ["check_artifact", "build_model_card", "write_model_card", "artifact_format", "card_is_generated",
           "CardConfig", "CARD_NAME"]

CARD_NAME = "README.md"
# The Hub has no snippet of its own for hf_optim checkpoints: naming another library would make it show one that
# fails (plain Transformers refuses the hf_optim format), so those cards name hf-optim and carry the code themselves.
# A GGUF repository's `gguf` library makes the Hub show its own llama.cpp / Ollama snippets.
_LIBRARIES = {"onnx": "optimum", "compiled": "hf-optim", "hf_optim": "hf-optim", "transformers": "transformers",
              "compressed-tensors": "transformers", "gguf": "gguf"}
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
    if not (path / "config.json").is_file() and checkpoint_format(path) != "gguf":
        what = "an evaluate stage's metrics" if marker.get("kind") == "evaluate" else "no config.json"
        model = (marker.get("config") or {}).get("model")
        hint = f"; the model it measured is the stage {model!r}" if model and marker.get("kind") == "evaluate" else ""
        raise HfOptimError(f"{path} holds {what}, not a model that from_pretrained loads{hint}")
    return marker


def artifact_format(path: Path) -> str:
    """``onnx`` (ONNX Runtime directory), ``compiled`` (compile stage), ``hf_optim`` (quantized or pruned
    checkpoint restored by ``from_pretrained`` after ``import hf_optim``), ``gguf``, ``compressed-tensors`` or
    ``transformers`` (see :func:`hf_optim.artifacts.checkpoint_format`)."""
    return checkpoint_format(path) or "transformers"


def card_is_generated(path: str | Path) -> bool:
    """Whether ``path``'s ``README.md`` is the card the export wrote, unchanged (a push may then rewrite it for its
    Hub repository); a card someone edited is theirs."""
    from ..data.sources import sha256_file

    digest = (export_record(path) or {}).get("card_sha256")
    card = Path(path) / CARD_NAME
    return bool(digest) and card.is_file() and sha256_file(card) == digest


def _head(path: Path) -> tuple[str, str | None]:
    if checkpoint_format(path) == "gguf":  # the GGUF export writes Llama-family causal LMs
        return "CausalLM", "text-generation"
    arch = (checkpoint_architectures(path) or [""])[0]
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
    if row.get("calibration"):  # what making it took, next to what it measures
        rows.append(["calibration", calibration_cost(row["calibration"])] + (["—"] if base else []))
    return table(header, rows)


def build_model_card(path: str | Path, repo_id: str | None = None, base_model: str | None = None,
                     card: CardConfig | None = None) -> str:
    """The ``README.md`` text for the model directory ``path``.

    Args:
        path (`str` or `Path`): a finished stage's model directory (see :func:`check_artifact`) or, with ``card``,
            any directory ``from_pretrained`` (or Optimum) loads, such as a model made with the Python API.
        repo_id (`str`, *optional*): the Hub repository it goes to (used in the name and the usage code).
        base_model (`str`, *optional*): Hub id of the model it derives from; defaults to ``card.base_model``, then
            to the Hub id of the lineage's root (the embedded ``builtin:`` models, or a Hub id / ``_name_or_path``
            of a local root).
        card (`CardConfig`, *optional*): what no run recorded (lineage, license, datasets, a metric) and
            overrides of what one did.
    """
    from huggingface_hub import EvalResult, ModelCardData

    from .. import __version__

    path = Path(path)
    facts = _facts(path, card, repo_id)
    card = card or CardConfig()
    config, fmt_, row = facts["config"], facts["format"], facts["row"]
    auto, pipeline = _head(path)
    inherited = inherited_metadata(base_model or card.base_model or facts["root"])
    base_id = inherited.get("base_model")
    runtime = runtime_facts(path, fmt_, config)
    format_tags = runtime_tags(fmt_, runtime)
    quant_tags = sorted({t for k, c in facts["configs"] for t in quantization_tags(k, c)}
                        | ({"quantization"} if "quantize" in methods_in_config(config) else set())
                        | ({"quantization"} & format_tags))
    kinds = [k for k, _ in facts["configs"]]
    kind_tags = {kind: r.tag for kind, r in stage_kind_table().items() if r.tag}
    if fmt_ in PORTABLE:  # the export stage's tags name ONNX Runtime; a portable artifact's name its own format
        kind_tags.pop("export", None)
    tags = sorted({"hf-optim", *quant_tags, *format_tags, *(kind_tags[k] for k in kinds if k in kind_tags)}
                  | ({"onnxruntime"} if fmt_ == "onnx" else set()))
    eval_results = None
    if row and row.get("value") is not None:
        dataset_id, dataset_name = hub_dataset_id(row.get("task_config") or row.get("task"))
        eval_results = [EvalResult(task_type=pipeline or "text-classification", dataset_type=dataset_id or dataset_name,
                                   dataset_name=dataset_name, dataset_split=row.get("split"),
                                   metric_type=row["metric"], metric_value=row["value"],
                                   metric_name=f"{row.get('split')} {row['metric']}")]
    data = ModelCardData(base_model=base_id, license=card.license or inherited.get("license"),
                         language=card.language or inherited.get("language"),
                         datasets=card.datasets or facts["datasets"] or None,
                         library_name=_LIBRARIES[fmt_], pipeline_tag=pipeline, tags=tags,
                         model_name=facts["model_name"], eval_results=eval_results)
    relation = base_model_relation(kinds, bool(quant_tags)) if base_id else None
    if relation:
        data.base_model_relation = relation
    repo = repo_id or f"./{path.name}"
    lines = ["---", data.to_yaml(), "---", "", f"# {facts['model_name']}", ""] + _needs(fmt_)
    lines += needs_lines(fmt_, runtime) + (pruned_lines(config) if fmt_ == "hf_optim" else [])
    lines += [card.description or facts["intro"], "", _made_with(__version__, facts["run_version"]), "",
              "## Results", ""]
    if row and facts["summary"]:
        machine = facts["machine"]
        where = ", ".join(f"{k} {v}" for k, v in machine.items()) if machine else "the run's machine"
        lines += [f"Measured by hf-optim on {where}, on the {row.get('split')} split of `{row.get('task')}`.", ""]
        cost = facts["summary"].get("cost")
        lines += _results(row, facts["base"], cost, cost["currency"] if cost else "") + [""]
    elif row:
        lines += [f"{row['metric']} {row['value']:.4f} on the {row.get('split')} split of `{row.get('task')}` "
                  "(as stated by the uploader; speed not measured by hf-optim). Measure latency, throughput and "
                  "size with `hf-optim eval DIR --task TASK`.", ""]
    else:
        how = "in the runtime that serves it" if fmt_ == "gguf" else "with `hf-optim eval DIR --task TASK`"
        lines += ["Not evaluated: the run has no `evaluate` stage for this artifact, so no result is claimed. "
                  f"Measure it {how}.", ""]
    lines += ["## Lineage", "", facts["lineage"], ""] + weights_lines(fmt_, runtime)
    usage = usage_lines(fmt_, runtime, auto, pipeline, repo, local=repo_id is None) if fmt_ in PORTABLE else \
        _usage(fmt_, auto, pipeline, repo)
    lines += ["## How to use", ""] + usage + [""]
    lines += ["## Limitations", ""] + _limitations(fmt_, row) + limitation_lines(fmt_, runtime) + [""]
    return "\n".join(lines)


def _facts(path: Path, card: CardConfig | None, repo_id: str | None) -> dict[str, Any]:
    """What the card states about ``path``: from its run (a stage output) or from ``card`` and its config.json."""
    if card is None or (path / MARKER).is_file():
        marker = check_artifact(path)
    else:
        _check_model_dir(path)
        marker = None
    config = read_config(path) or {}
    name = (marker or {}).get("name") or path.name
    summary = _run_summary(path, name) if marker else None
    stages = summary["stages"] if summary else [marker] if marker else []
    facts: dict[str, Any] = {"config": config, "format": artifact_format(path), "name": name, "summary": summary,
                             "run_version": (summary or {}).get("hf_optim")}
    recipe = (summary or {}).get("recipe")
    facts["model_name"] = repo_id.split("/")[-1] if repo_id else f"{recipe}-{name}" if recipe and marker else name
    if marker:
        steps = lineage(stages, name)
        by_name = {s.get("name"): s.get("config") or {} for s in stages}
        rows = [r for r in (summary or {}).get("artifacts", []) if r["artifact"] == name]
        row = dict(rows[0]) if rows else None
        if row:
            # a causal LM was measured on its corpus, which the config may name as `corpus`, not `task`
            measured = row.get("task") if is_text_corpus(row.get("task")) else None
            row["task_config"] = measured or (by_name.get(row.get("evaluated_by")) or {}).get("task")
        base = next((r for r in summary["artifacts"] if r.get("baseline")), None) if summary else None
        configs = [(s["kind"], by_name.get(s["stage"]) or {}) for s in steps]
        facts.update(
            row=row, base=None if base is not None and rows and base is rows[0] else base,
            configs=configs, root=steps[0]["inputs"].get("model") if steps else None,
            datasets=_training_datasets(configs),
            intro=f"`{name}` is the output of the `{marker.get('kind')}` stage of the hf-optim recipe "
                  f"`{recipe or '?'}` ({_kind_text(facts['format'])}).",
            lineage=lineage_text(steps) if steps else f"`{name}` ({marker.get('kind')})",
            machine=next(((s.get("metrics") or {}).get("machine") for s in stages
                          if (s.get("metrics") or {}).get("machine")), None))
        return facts
    card = card or CardConfig()
    origin = export_record(path) or {}  # what a portable export recorded about its source
    methods = list(dict.fromkeys([*card.methods, *methods_in_config(config), *(origin.get("source_methods") or [])]))
    if (facts["format"] in ("onnx", *PORTABLE[:2]) or origin) and "export" not in methods:
        methods.append("export")
    if card.base_model is None and origin.get("base_model"):
        card = dataclasses.replace(card, base_model=origin["base_model"])
    row = {"artifact": name, "metric": card.metric, "value": card.metric_value, "split": card.split,
           "task": card.task, "task_config": {"name": card.task, "dataset": card.task}} if card.metric else None
    chain = " → ".join(methods) or "no recorded step"
    root = card.base_model or "an unnamed base model"
    configs = [(m, {"format": facts["format"]} if m == "export" and facts["format"] in PORTABLE else {})
               for m in methods]
    facts.update(row=row, base=None, configs=configs, root=card.base_model,
                 datasets=[], machine=None,
                 intro=f"Made from `{root}` with hf-optim ({'an export' if origin else 'the Python API'}: {chain}); "
                       f"{_kind_text(facts['format'])}.",
                 lineage=f"`{root}` → {chain} → **{name}**")
    return facts


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise HfOptimError(f"{path} is not a directory; pass a saved model directory")
    if not (path / "config.json").is_file() and checkpoint_format(path) != "gguf":
        raise HfOptimError(f"{path} holds no config.json: not a model directory that from_pretrained loads")


def _training_datasets(configs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Hub ids of the datasets the training stages used (built-in tasks and local files have none)."""
    ids = [hub_dataset_id(c.get("task"))[0] for k, c in configs if k in TRAINING_KINDS]
    return list(dict.fromkeys(i for i in ids if i))


def _needs(fmt_: str) -> list[str]:
    if fmt_ == "hf_optim":
        return ["> **Loading needs hf-optim.** This checkpoint is in the hf_optim format (pruned shapes and/or "
                "quantized modules): `pip install hf-optim`, then `import hf_optim` before `from_pretrained` (see "
                "[How to use](#how-to-use)). Plain Transformers refuses to load it.", ""]
    if fmt_ == "compiled":
        return ["> **Loading needs hf-optim.** A compiled PyTorch artifact: `pip install hf-optim` and load it "
                "with `hf_optim.export.compile.load_compiled` (see [How to use](#how-to-use)).", ""]
    return []


def _made_with(version: str, run_version: str | None) -> str:
    text = f"Card written by hf-optim {version}"
    if run_version and run_version != version:
        text += f"; the run that made the model used hf-optim {run_version}"
    return text + "."


def _kind_text(fmt_: str) -> str:
    return {"onnx": "an ONNX Runtime model", "compiled": "a compiled PyTorch model",
            "hf_optim": "a Transformers checkpoint in the hf_optim quantized/pruned format",
            "gguf": "a GGUF file for llama.cpp, Ollama and Transformers",
            "compressed-tensors": "a compressed-tensors checkpoint for Transformers and vLLM",
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


def write_model_card(path: str | Path, repo_id: str | None = None, base_model: str | None = None,
                     card: CardConfig | None = None) -> Path:
    """Write :func:`build_model_card`'s text to ``path/README.md`` (whole, then renamed) and return its path."""
    from .writer import atomic_write

    text = build_model_card(path, repo_id=repo_id, base_model=base_model, card=card)
    out = Path(path) / CARD_NAME
    atomic_write(out, text)
    return out
