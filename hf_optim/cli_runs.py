"""``hf-optim`` sub-commands on recipes, runs and what they wrote (``run``, ``recipe``, ``report``, ``card``,
``push``, ``compare``, ``verify``), and the option helpers every sub-command shares. The parser and the commands
on a model directory are in :mod:`hf_optim.cli`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import HfOptimError

__all__ = ["cmd_run", "cmd_recipe", "cmd_report", "cmd_card", "cmd_push", "cmd_compare", "cmd_verify",
           "show_progress", "price_options", "verbosity_options", "card_config"]


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars unless ``--no-progress`` or ``-q``."""
    return not (getattr(args, "no_progress", False) or args.quiet)


def cmd_run(args: argparse.Namespace) -> int:
    from .recipe import Recipe
    from .runner import run

    recipe = Recipe.from_yaml(args.recipe)
    output = args.output
    if output is None and not recipe.output_dir:
        output = Path("runs") / recipe.name
    result = run(recipe, output, force=args.force, progress=show_progress(args))
    if result.log_file is None:  # a rank other than 0 of torchrun / accelerate launch: rank 0 reports
        return 0
    print(f"run complete: {result.output_dir}")
    print(f"report: {result.output_dir / 'report.json'}")
    if (result.output_dir / "report.md").is_file():
        print(f"report: {result.output_dir / 'report.md'} (regenerate: hf-optim report {result.output_dir})")
    print(f"log: {result.log_file}")
    for st in result.report["stages"]:
        m = st.get("metrics") or {}
        metric = m.get("metric")
        summary = f"{metric}={m[metric]:.4f}" if metric and metric in m else ""
        print(f"  {st['name']:<20} {st['kind']:<10} {st['status']:<8} {summary}")
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from .recipe import Recipe

    recipe = Recipe.from_yaml(args.recipe)
    if args.action == "check":
        print(f"{args.recipe}: valid, {len(recipe.stages)} stages, fingerprint {recipe.fingerprint()}")
    else:
        print(recipe.to_yaml(), end="")
    return 0


def report_config(args: argparse.Namespace, stored: dict | None):
    """The report settings: the run's stored ones (or the defaults) with the command line's overrides."""
    from .report.config import ReportConfig

    base = ReportConfig.from_dict(stored) if stored else ReportConfig()
    changes = {k: v for k, v in (("price_per_hour", args.price_per_hour), ("currency", args.currency),
                                 ("requests", args.requests), ("baseline", args.baseline),
                                 ("reference", args.reference)) if v is not None}
    if "price_per_hour" in changes and args.price_source is None and base.price_source is None:
        changes["price_source"] = "set on the command line"
    if args.price_source is not None:
        changes["price_source"] = args.price_source
    return base.replace(**changes) if changes else base


def cmd_report(args: argparse.Namespace) -> int:
    import fcntl

    from .report.summary import load_report
    from .report.writer import REPORT_MD, write_report

    run_dir = Path(args.run_dir)
    report = load_report(run_dir)
    if not run_dir.is_dir():
        raise HfOptimError(f"{run_dir} is a file; pass the run directory that holds report.json")
    config = report_config(args, (report.get("cost") or {}).get("settings"))
    with open(run_dir / ".lock", "a") as lock:  # the runner's lock: never rewrite a report a run is writing
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise HfOptimError(f"a run is using {run_dir}; wait for it to finish (it writes the report itself)") from None
        summary = write_report(run_dir, report, config, plots=False if args.no_plots else None)
    print(f"wrote {run_dir / REPORT_MD} and {run_dir / 'report.json'}")
    cur = summary["cost"]["currency"]
    for r, c in zip(summary["artifacts"], summary["cost"]["artifacts"]):
        cpm = "—" if c["cost_per_million"] is None else f"{c['cost_per_million']:.4f} {cur}/1M"
        roi = "" if c["roi"] is None else f"  ROI {c['roi']:.1f}"
        tag = " (baseline)" if r["baseline"] else (" pareto" if r["pareto"] else "")
        print(f"  {r['artifact']:<20} {r['metric']}={r['value']}  {cpm}{roi}{tag}")
    return 0


def card_config(args: argparse.Namespace):
    """The :class:`~hf_optim.report.card_meta.CardConfig` the card options describe."""
    from .report.card_meta import CardConfig

    metric = value = None
    if args.metric is not None:
        metric, _, text = args.metric.partition("=")
        try:
            value = float(text)
        except ValueError:
            raise HfOptimError(f"--metric {args.metric!r}: write NAME=VALUE with a number, e.g. accuracy=0.91") from None
        if not metric.strip():
            raise HfOptimError(f"--metric {args.metric!r}: the metric needs a name, e.g. accuracy=0.91")
    try:
        return CardConfig(base_model=args.base_model, methods=args.methods or [], license=args.license,
                          datasets=args.datasets, language=args.language, metric=metric and metric.strip(),
                          metric_value=value)
    except ValueError as e:
        raise HfOptimError(str(e).replace("CardConfig.methods", "--method")) from None


def _stage_output(path: str) -> bool:
    """Whether ``path`` is (or claims to be) a recipe stage's output, finished or not, or no model directory at
    all (a run directory ...): those go through :func:`~hf_optim.report.card.check_artifact`, which names what is
    wrong with them. The others are models saved without a recipe."""
    from .artifact_kind import checkpoint_format
    from .integrity import MARKER

    p = Path(path)
    model = (p / "config.json").is_file() or checkpoint_format(p) == "gguf"
    return (p / MARKER).is_file() or p.name.startswith((".tmp-", ".old-")) or not model


def _card(args: argparse.Namespace):
    """The card options; `None` for a stage output where they state nothing (its run says it all)."""
    from .report.card_meta import CardConfig

    card = card_config(args)
    return None if _stage_output(args.dir) and card == CardConfig() else card


def cmd_card(args: argparse.Namespace) -> int:
    from .report.card import build_model_card, write_model_card

    if args.stdout:
        print(build_model_card(args.dir, repo_id=args.repo_id, card=_card(args)))
        return 0
    print(f"wrote {write_model_card(args.dir, repo_id=args.repo_id, card=_card(args))}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_artifact, push_to_hub

    card = _card(args)
    if _stage_output(args.dir):
        result = push_artifact(args.dir, args.repo_id, private=args.private, dry_run=args.dry_run,
                               card=not args.no_card, base_model=args.base_model)
    else:  # a model saved from the Python API: the card states what the options say
        result = push_to_hub(args.dir, args.repo_id, dry_run=args.dry_run, private=args.private,
                             card=None if args.no_card else card)
    head = "would upload" if result.dry_run else "uploaded"
    print(f"{head} {len(result.files)} files ({result.total_bytes / 1e6:.2f} MB) from {args.dir} to "
          f"{result.repo_id}{' (private)' if args.private else ''}:")
    for name, size in result.files:
        print(f"  {size:>14,}  {name}")
    if result.url:
        print(result.url)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report.compare import compare_runs, render_comparison
    from .report.summary import load_report

    if args.run_b is None and not args.serving:
        raise HfOptimError("compare needs a second run directory or --serving URL")
    stored = (load_report(args.run_a).get("cost") or {}).get("settings")
    config = report_config(args, stored)
    out, texts = {}, []
    if args.run_b is not None:
        out["runs"] = compare_runs(args.run_a, args.run_b, config)
        texts.append(render_comparison(out["runs"]))
    if args.serving:
        from .report.live import compare_live, fetch_serving_stats, render_live

        out["serving"] = compare_live(args.run_a, fetch_serving_stats(args.serving), config)
        texts.append(render_live(out["serving"]))
    if args.json:  # two runs alone: the comparison itself, as before
        print(json.dumps(out.get("runs") if args.serving is None else out, indent=2))
    else:
        print("\n\n".join(texts))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .integrity import verify_artifact
    from .runner import MARKER

    for target in map(Path, args.dirs):
        if not target.is_dir():
            raise HfOptimError(f"{target} is not a directory; pass a stage output or a run directory")
        # a run directory: every stage output in it; a stage output: itself
        dirs = [target] if (target / MARKER).is_file() else sorted(p.parent for p in target.glob(f"*/{MARKER}"))
        if not dirs:
            raise HfOptimError(f"{target} holds no hf_optim stage output ({MARKER}); nothing to verify")
        for d in dirs:
            n = verify_artifact(d)
            print(f"ok  {d}: {n} weight file(s) match" if n else f"--  {d}: no digests recorded (written before "
                  "hf_optim recorded them)")
    return 0


def price_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--price-per-hour", type=float, help="price of one machine-hour (default: the run's `report:` "
                   "setting, else 0.08925 = AWS c7i.large on-demand, us-east-1)")
    p.add_argument("--price-source", help="where the price comes from (shown in the report)")
    p.add_argument("--currency", help="currency label (default USD)")
    p.add_argument("--requests", type=int, help="request volume the benefit and ROI are stated for (default 100,000,000)")
    p.add_argument("--baseline", help="artifact the savings are measured against (default: the first evaluated one)")
    p.add_argument("--reference", help="a second artifact to compare every one with (e.g. the Optimum INT8 teacher)")


def verbosity_options(p: argparse.ArgumentParser, default) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="print only results and errors: no progress bars, no INFO lines, no library warnings")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="debug logging, library INFO lines and ONNX Runtime's warnings")
