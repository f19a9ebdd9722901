"""``hf-optim`` command line: run recipes, evaluate models, manage the embedded data.

Every user error (bad recipe, missing file, wrong task ...) prints one ``error:`` line and exits with 2;
an unexpected failure exits with 1 and points to the run log. ``-q`` (before or after the command) leaves only
errors and results on the terminal, ``-v`` shows more (see :mod:`hf_optim.console`).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .cli_options import config_options, field_choices, resolve_model
from .cli_options import model_task as _model_task
from .cli_quantize import quantize_parser
from .cli_runs import (cmd_card, cmd_compare, cmd_push, cmd_recipe, cmd_report, cmd_run, cmd_verify, price_options,
                       verbosity_options)
from .cli_runs import show_progress as _progress
from .cli_serve import add_serve_parser
from .errors import HfOptimError

EXIT_USAGE = 2
_CANNOT_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)  # the user can fix these
logger = logging.getLogger("hf_optim")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.config import EvalConfig
    from .evaluation.stage import evaluate_model

    if args.output and (Path(args.output).is_dir() or not Path(args.output).absolute().parent.is_dir()):
        raise HfOptimError(f"--output {args.output!r} must be a file in an existing directory")  # before, not after
    if args.dataset:
        task = {"dataset": args.dataset, "text_column": args.text_column, "label_column": args.label_column,
                **({"name": args.task} if args.task else {})}
    else:
        task = _model_task(args)
    config = EvalConfig(model=args.model_dir, task=task, **{n: getattr(args, n) for n in _EVAL_OPTIONS})
    metrics = evaluate_model(args.model_dir, config, progress=_progress(args))
    text = json.dumps(metrics, indent=2)
    if args.output:
        from .data.sources import atomic_write_text

        atomic_write_text(Path(args.output), text)  # a full disk leaves the old file, not half a new one
    print(text)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import BUILTIN_MODELS, BUILTIN_TASKS, BUILTIN_TEXTS, cache_dir, fetch

    if args.action == "fetch":
        for name, path in fetch(force=args.force, models=not args.no_models).items():
            print(f"{name:<16} {path}")
        return 0
    print(f"cache: {cache_dir()}")
    for title, table in (("tasks", BUILTIN_TASKS), ("texts", BUILTIN_TEXTS), ("models", BUILTIN_MODELS)):
        print(f"{title}:")
        for k, v in table.items():
            print(f"  {k:<16} {v}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .quantize.planner import Budgets, PlanConfig, plan_precision

    budgets = Budgets(**{n: getattr(args, n) for n in _BUDGETS})
    task = _model_task(args, texts=False)
    plan = plan_precision(args.model_dir, PlanConfig(
        task=task, budgets=budgets, keep=bool(args.work_dir), **{n: getattr(args, n) for n in _PLAN_OPTIONS}),
        progress=_progress(args))
    if args.output:  # the plan in the benchmark result schema: the command, commit, versions and CPU it ran with
        from .evaluation.harness import BenchRun

        record = plan.to_dict()
        options = {k: v for k, v in vars(args).items() if k not in ("fn", "argv")}
        BenchRun(options, argv=args.argv, script="hf-optim", interpreter=None).write(
            args.output, record.pop("rows"), **record)
    print(plan.table())
    print(f"pareto: {', '.join(plan.pareto)}")
    print(("choice: " if plan.choice else "no choice: ") + plan.decision["reason"])
    return 0 if plan.choice else 3


def _cmd_export(args: argparse.Namespace) -> int:
    from .artifacts import EXPORT_RECORD
    from .export import CompileConfig, ExportConfig
    from .task_record import inherit_task

    portable = args.format != "onnx"  # GGUF / compressed-tensors / genai: no ONNX validation by hf_optim
    if portable and args.compile:
        raise HfOptimError(f"--compile builds a PyTorch artifact; --format {args.format} writes a checkpoint: "
                           "choose one")
    if not portable:
        from .data.tasks import checkpoint_facts

        positions = checkpoint_facts(args.model_dir)["max_positions"]
        if isinstance(positions, int) and args.max_length > positions:
            raise HfOptimError(f"--max-length {args.max_length}: {args.model_dir} reads at most {positions} positions")
    common = dict(model=args.model_dir, max_metric_drop=args.max_metric_drop,
                  validation_samples=args.validation_samples, max_length=args.max_length)
    if not portable:
        common["task"] = _model_task(args, texts=not args.compile)
    if args.compile:
        from .export.compile import compile_model

        record = compile_model(args.model_dir, args.output, CompileConfig(method=args.compile, **common),
                               progress=_progress(args))
    else:
        from .export.stage import export_model

        record = export_model(args.model_dir, args.output, ExportConfig(
            **{n: getattr(args, n) for n in _EXPORT_OPTIONS}, **common), progress=_progress(args))
    inherit_task(args.model_dir, args.output)  # an exported or compiled model keeps its source's task
    if portable:
        print(f"wrote {args.output} ({record['written']}): {record['tensors_written']} weight tensors, max abs "
              f"error {record['max_abs_error']:.4g} vs the weights hf_optim computes with "
              f"(per tensor: {Path(args.output) / EXPORT_RECORD})")
        for note in record["report"]["notes"]:
            print(f"  note: {note}")
        return 0
    v = record["validation"]
    print(f"wrote {args.output} ({record.get('backend', record.get('method'))}): validation {v['metric']} "
          f"{v['source']:.4f} -> {v['candidate']:.4f} (drop {v['drop']:.4f}), max logit diff {v['max_logit_diff']:.4g}")
    return 0


# The config fields each command offers as options (see ``config_options``: default, choices and help come from
# the config).
_EVAL_OPTIONS = ["split", "max_samples", "latency_samples", "throughput_samples", "measure_memory"]
_PLAN_OPTIONS = ["candidates", "prefer", "split", "max_samples", "latency_samples", "throughput_samples",
                 "measure_memory", "work_dir"]
_BUDGETS = ["max_size_mb", "max_latency_ms", "min_speedup", "max_metric_drop"]
_EXPORT_OPTIONS = ["format", "gguf_type", "pad_uneven", "task_type", "backend", "optimization", "quantization",
                   "per_channel", "group_size", "symmetric", "method", "embeddings", "split_skip_layernorm",
                   "calibration_samples"]
_NO_MEMORY = {"measure_memory": "--no-memory"}
_NO_MEMORY_HELP = {"measure_memory": "skip the peak-memory probe (in a fresh process)"}
_MODEL_HELP = "a model directory (from_pretrained loads it) or a Hub model id (org/name)"


_TASK_DEFAULT = ("(default: the task the model directory records, i.e. the one a finetune/distill/prune stage "
                 "trained it on; a classifier that records none needs --task)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-optim", description="Make Transformers models smaller and faster.")
    p.add_argument("--version", action="version", version=f"hf-optim {__version__}")
    verbosity_options(p, False)
    # -q / -v after the command too; SUPPRESS keeps a subcommand from resetting what was given before it
    common = argparse.ArgumentParser(add_help=False)
    verbosity_options(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from .data.tasks import TaskSpec
    from .evaluation.config import EvalConfig
    from .export.config import CompileConfig, ExportConfig
    from .quantize.planner import CANDIDATES, Budgets, PlanConfig

    r = sub.add_parser("run", parents=[common],
                       help="run a recipe (resumable)", description="Run a recipe stage by stage. "
                       "Stages whose output exists with the same fingerprint are skipped.")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument("--output", "-o", help="output directory (default: the recipe's output_dir or runs/<name>)")
    r.add_argument("--force", action="store_true", help="re-run every stage")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("eval", parents=[common], help="evaluate a model directory on a task",
                       description="Task metric, batch-1 latency, batch-32 throughput, size and peak memory.")
    e.add_argument("model_dir", help=_MODEL_HELP)
    e.add_argument("--task", help="built-in task (movie-sentiment, bbc-topic), a text (bbc-news, causal LMs: the "
                   "default for them) or a name for --dataset " + _TASK_DEFAULT)
    e.add_argument("--dataset", help="your data: csv/json/parquet file, folder or Hub dataset name")
    config_options(e, TaskSpec, ["text_column", "label_column"])
    config_options(e, EvalConfig, _EVAL_OPTIONS, flags=_NO_MEMORY, helps=_NO_MEMORY_HELP)
    e.add_argument("--output", "-o", help="also write the JSON to this file")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(fn=_cmd_eval)

    d = sub.add_parser("data", parents=[common],
                       help="embedded data and models", description="List or fetch (download, verify, "
                       "cache) the embedded real data and models.")
    d.add_argument("action", choices=["fetch", "list"])
    d.add_argument("--force", action="store_true", help="re-download even if cached")
    d.add_argument("--no-models", action="store_true", help="fetch data only (skip the model conversion)")
    d.set_defaults(fn=_cmd_data)

    rc = sub.add_parser("recipe", parents=[common],
                        help="check or print a recipe", description="Validate a recipe file "
                        "(check) or print it normalized (show).")
    rc.add_argument("action", choices=["check", "show"])
    rc.add_argument("recipe")
    rc.set_defaults(fn=cmd_recipe)
    pl = sub.add_parser("plan", parents=[common],
                        help="measure precisions (fp32/bf16/int8/int4) and pick one under budgets",
                        description="Quantize the model every candidate way, measure metric, latency, throughput, "
                        "size and memory side by side, print the table and Pareto set, and pick the best candidate "
                        "within the budgets (exit 3 when none fits).")
    pl.add_argument("model_dir", help="a float sequence classifier: " + _MODEL_HELP)
    pl.add_argument("--task", help="evaluation and calibration task " + _TASK_DEFAULT)
    config_options(pl, PlanConfig, _PLAN_OPTIONS, flags={**_NO_MEMORY, "work_dir": "--keep-dir"},
                   helps={**_NO_MEMORY_HELP, "work_dir": "keep the quantized candidates in this directory",
                          "candidates": f"any of {', '.join(CANDIDATES)}"})
    config_options(pl, Budgets, _BUDGETS)
    pl.add_argument("--output", "-o", help="also write the plan as JSON")
    pl.add_argument("--no-progress", action="store_true", help="no progress bars")
    pl.set_defaults(fn=_cmd_plan)
    ex = sub.add_parser("export", parents=[common],
                        help="export to ONNX Runtime (optimize + quantize), GGUF or compressed-tensors, or compile",
                        description="Export a model directory to ONNX Runtime (Optimum, or torch.onnx on transformers 5), "
                        "apply graph optimization and quantization, and check the task metric against the source; "
                        "nothing is written when the drop exceeds --max-metric-drop. --compile METHOD builds a "
                        "torch.compile / torch.export / TorchScript artifact instead. --format gguf / "
                        "compressed-tensors writes a checkpoint that llama.cpp / vLLM load without hf_optim, --format "
                        "genai an onnxruntime-genai model (built in $HF_OPTIM_GENAI_PYTHON), with the error of "
                        "every tensor in its record.")
    ex.add_argument("model_dir", help="a sequence classifier or causal LM: " + _MODEL_HELP)
    ex.add_argument("--output", "-o", required=True, help="output directory (new or empty)")
    ex.add_argument("--task", help="validation task (causal LMs: a text, default bbc-news) " + _TASK_DEFAULT)
    config_options(ex, ExportConfig, _EXPORT_OPTIONS + ["max_metric_drop", "validation_samples", "max_length"],
                   flags={"symmetric": "--asymmetric"},
                   helps={"symmetric": "int4 / int8_weight_only: a zero point per group (MatMulNBits zero_points)"})
    ex.add_argument("--compile", choices=field_choices(CompileConfig, "method"),
                    help="build a torch.compile / torch.export / TorchScript artifact instead of ONNX")
    ex.add_argument("--no-progress", action="store_true", help="no progress bars")
    ex.set_defaults(fn=_cmd_export)

    rp = sub.add_parser("report", parents=[common], help="write report.md (+ plots) and the cost section of a run",
                        description="Re-derive a run's report from its report.json: lineage, Pareto front, cost per "
                        "million requests, savings vs the baseline and ROI; writes report.md and PNG plots (matplotlib, "
                        "the `plots` extra) next to it. `hf-optim run` does this at the end of every run.")
    rp.add_argument("run_dir", help="a run directory (holds report.json)")
    price_options(rp)
    rp.add_argument("--no-plots", action="store_true", help="write report.md without the PNG plots")
    rp.set_defaults(fn=cmd_report)

    cd = sub.add_parser("card", parents=[common], help="write a model card (README.md) into an artifact directory",
                        description="Write README.md with Hub metadata (base_model, tags, model-index with the "
                        "measured results), lineage, how to load it and limitations, from the run's report.json.")
    cd.add_argument("dir", help="a finished stage's model directory, e.g. runs/movie-sentiment/export")
    cd.add_argument("--repo-id", help="the Hub repository it will be pushed to (used in the name and the usage code)")
    _card_options(cd)
    cd.add_argument("--stdout", action="store_true", help="print the card instead of writing README.md")
    cd.set_defaults(fn=cmd_card)

    pu = sub.add_parser("push", parents=[common], help="upload an artifact directory to the Hugging Face Hub",
                        description="Upload a finished stage's model directory (create_repo + upload_folder), writing "
                        "its model card first when it has none. Refuses unfinished (.tmp-*) and non-model directories.")
    pu.add_argument("dir", help="a finished stage's model directory")
    pu.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME (created when missing)")
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.add_argument("--dry-run", action="store_true", help="list the files and sizes that would be uploaded; send nothing")
    pu.add_argument("--no-card", action="store_true", help="do not write README.md when the directory has none")
    _card_options(pu)
    pu.set_defaults(fn=cmd_push)

    cp = sub.add_parser("compare", parents=[common], help="A/B table of two runs' reports, or of a run and its "
                        "live serving metrics",
                        description="Compare two runs artifact by artifact (matched by stage name) and final artifact "
                        "against final artifact: metric, latency p50/p95, batch-32 throughput, size, peak memory and "
                        "cost per million requests (both priced alike). With --serving URL: the live per-variant "
                        "requests, errors, latency and throughput of an `hf-optim serve` application next to the "
                        "run's offline numbers, variants matched to the run's artifacts by fingerprint.")
    cp.add_argument("run_a", help="run directory A (the reference)")
    cp.add_argument("run_b", nargs="?", help="run directory B")
    cp.add_argument("--serving", metavar="URL", help="an `hf-optim serve` application's URL (e.g. "
                    "http://127.0.0.1:8000): its live per-variant metrics next to run A's offline ones")
    price_options(cp)
    cp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    cp.set_defaults(fn=cmd_compare)

    vf = sub.add_parser("verify", parents=[common], help="check that a run's or stage's weight files are as written",
                        description="Check every weight file of a stage output (or of every stage of a run "
                        "directory) against the SHA-256 recorded in its hf_optim_stage.json when it was written. "
                        "Exit 2 and name the files when any is missing or changed.")
    vf.add_argument("dirs", nargs="+", help="stage output or run directories")
    vf.set_defaults(fn=cmd_verify)
    add_serve_parser(sub, common)
    quantize_parser(sub, [common])
    return p


def _card_options(p: argparse.ArgumentParser) -> None:
    """What the model card states (a run's output: overrides of what the run recorded; any other model
    directory, such as one saved from the Python API: all it states)."""
    from .report.card_meta import CardConfig

    config_options(p, CardConfig, ["base_model", "methods", "license", "datasets", "language", "task"],
                   flags={"methods": "--method", "datasets": "--dataset"},
                   helps={"base_model": "Hub id of the model it derives from (default: from the run's lineage)"})
    p.add_argument("--metric", metavar="NAME=VALUE", help="the measured task metric, e.g. accuracy=0.91 (a run's "
                   "output: from its report)")


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that an option the sub-command does not know is reported with the
    sub-command's usage (argparse leaves it to the top-level parser, whose usage lists only the commands)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from .console import set_verbosity

    args = _parse(build_parser(), argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for the command a result file records
    set_verbosity("quiet" if args.quiet else "verbose" if args.verbose else "normal")
    from .cpu import tune_allocator

    tune_allocator()  # this process only runs hf_optim's own work (HF_OPTIM_ALLOCATOR=default: glibc's defaults)
    from .runner import _terminate_as_interrupt

    previous = _terminate_as_interrupt()  # SIGTERM unwinds like Ctrl-C: every command removes its scratch files
    try:
        if getattr(args, "model_dir", None) is not None:  # a directory, or a Hub id resolved to the cache's copy
            args.model_dir = resolve_model(args.model_dir)
        return args.fn(args)
    except HfOptimError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if e.errno not in _CANNOT_WRITE or args.verbose or os.environ.get("HF_OPTIM_DEBUG"):
            raise
        print(f"error: {e.strerror}: {e.filename or ''}; free some space or make the directory writable, or choose "
              "another output directory (nothing half-written was kept)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept (a run keeps its completed stages)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: one line, the details are in the log
        if args.verbose or os.environ.get("HF_OPTIM_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {e} (rerun with -v for the traceback)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
