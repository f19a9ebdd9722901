"""Recipes: ordered stages of configs, read from and written to YAML.

A recipe file looks like::

    name: movie-sentiment
    seed: 42
    task: movie-sentiment          # default for every stage that has a `task` field
    # corpus: bbc-news             # default for every stage that has a `corpus` field (causal LMs' text)
    stages:
      - name: teacher
        kind: finetune
        model: builtin:minilm-l6   # builtin:<name>, an earlier stage's name, or a path
        epochs: 2
      - name: eval-teacher
        kind: evaluate
        model: teacher

Each stage reads the artifact directories named by its input fields (``model`` ...) and writes one directory.
A stage's fingerprint hashes its config and the fingerprints of the stages it reads, so editing a stage
invalidates it and everything downstream, and nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .config import OptimConfig, short_repr
from .errors import ConfigError, RecipeError
from .registry import stage_kind_table

__all__ = ["StageConfig", "Stage", "Recipe", "stage_kinds", "BUILTIN_PREFIX"]

BUILTIN_PREFIX = "builtin:"
STAGE_FORMAT = 1  # bump when the artifact layout changes, so old outputs are not reused
# How a stage with a `task` reads its rows, part of its fingerprint. 2: every split in a seeded, stratified order
# and every count of rows a stratified sample (1, before it was recorded: file order and the first N rows).
DATA_ORDER = 2
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RESERVED = {"logs", "report.json", "recipe.yaml", "report.md", "report-accuracy-latency.png", "report-size.png"}
_TOP_LEVEL = {"name", "description", "seed", "task", "corpus", "output_dir", "report", "stages"}


class StageConfig(OptimConfig):
    """Base of configs that can be a recipe stage.

    ``inputs`` names the fields that refer to an artifact directory: an earlier stage's name,
    ``builtin:<model>`` or a path. ``has_task`` stages inherit the recipe's top-level ``task``.
    ``sets_task``: the stage fits its model to ``task``'s labels, so its output records ``task`` as the model's
    task (``hf_optim_task.json``, see :mod:`hf_optim.task_record`); other stages' outputs carry over their input's.
    """

    inputs: ClassVar[tuple[str, ...]] = ("model",)
    # What the stage's output holds: "input" (the same kind of model as its `model`), a checkpoint kind
    # ("sequence-classification" for finetune), or None (no model: evaluate). Checked before anything runs.
    produces: ClassVar[str | None] = "input"
    # Whether the stage scores its `model` on its `task` (evaluate, export, compile): then a classifier needs a
    # classification task and a causal LM a text corpus.
    scores_task: ClassVar[bool] = False
    # Whether the stage's output records its own `task` (hf_optim_task.json): finetune, distill, prune.
    sets_task: ClassVar[bool] = False

    def fingerprint_dict(self) -> dict[str, Any]:
        """A causal LM's corpus was written as ``task`` before ``corpus`` existed: a stage that sets ``corpus`` and
        leaves ``task`` at its default has the fingerprint of the same stage written the old way."""
        out = super().fingerprint_dict()
        fields = {f.name: f for f in dataclasses.fields(self)}
        if out.get("corpus") is not None and "task" in fields and self.task == fields["task"].default:
            out["task"] = out.pop("corpus")
        return out


def stage_kinds() -> dict[str, type[StageConfig]]:
    """``{kind: config class}`` of every stage kind in the stage table (:mod:`hf_optim.registry`)."""
    classes = {kind: row.config_class() for kind, row in stage_kind_table().items()}
    return {k: c for k, c in classes.items() if issubclass(c, StageConfig)}


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    config: StageConfig

    def to_dict(self) -> dict[str, Any]:
        d = self.config.to_dict()
        d.pop("version")
        return {"name": self.name, **d}

    def fingerprint_dict(self) -> dict[str, Any]:
        d = self.config.fingerprint_dict()
        d.pop("version")
        return {"name": self.name, **d}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An ordered, validated list of stages.

    Args:
        name (`str`): recipe name (used for the default output directory).
        stages (`list[Stage]`): the stages, in order.
        seed (`int`, *optional*, defaults to 42): seed passed to every stage.
        description (`str`, *optional*): one paragraph shown in the report.
        base_dir (`Path`, *optional*): where relative paths in the recipe are resolved (the recipe's folder).
        output_dir (`str`, *optional*): default output directory (relative to ``base_dir``).
        report (`dict`, *optional*): the run report's settings (price per machine-hour, request volume ...),
            the fields of :class:`~hf_optim.report.ReportConfig`; they do not change any stage's fingerprint.
    """

    name: str
    stages: tuple[Stage, ...]
    seed: int = 42
    description: str = ""
    base_dir: Path = Path(".")
    output_dir: str | None = None
    report: dict = dataclasses.field(default_factory=dict)

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        """Read and validate a recipe file. Errors name the file, the stage and the field."""
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} does not exist")
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise RecipeError(f"{path}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8") from None
        except (yaml.YAMLError, ValueError) as e:  # ValueError: an integer of more than 4300 digits
            raise RecipeError(f"{path}: not valid YAML: {str(e)[:500]}") from None
        except RecursionError:  # thousands of nested [ or {: the parser recurses once per level
            raise RecipeError(f"{path}: not valid YAML: nested too deeply; a recipe needs a few levels") from None
        try:
            return cls.from_dict(data, base_dir=path.resolve().parent)
        except RecipeError as e:
            raise RecipeError(f"{path}: {e}", field=e.field) from None

    @classmethod
    def from_dict(cls, data: Any, base_dir: str | Path = ".") -> "Recipe":
        if not isinstance(data, dict):
            raise RecipeError("a recipe must be a mapping with `name` and `stages`")
        unknown = sorted(set(data) - _TOP_LEVEL)
        if unknown:
            raise RecipeError(f"unknown top-level field(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(sorted(_TOP_LEVEL))}", field=unknown[0])
        name = data.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise RecipeError(f"`name` must be a simple name (letters, digits, - _ .), got {short_repr(name)}", field="name")
        seed = data.get("seed", 42)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise RecipeError(f"`seed` must be an integer, got {short_repr(seed)}", field="seed")
        raw_stages = data.get("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            raise RecipeError("`stages` must be a non-empty list of stages", field="stages")
        kinds = stage_kinds()
        defaults = {"task": data.get("task"), "corpus": data.get("corpus")}
        stages: list[Stage] = []
        for i, raw in enumerate(raw_stages):
            stages.append(_parse_stage(i, raw, kinds, defaults))
        base_dir = Path(base_dir).resolve()
        stages = [_resolve_dataset_path(s, base_dir) for s in stages]
        output_dir = data.get("output_dir")
        if output_dir is not None:
            rel = Path(str(output_dir))
            if not isinstance(output_dir, str) or not output_dir or rel.is_absolute() or \
                    output_dir.startswith("~") or ".." in rel.parts:
                raise RecipeError(f"`output_dir` = {str(output_dir)[:100]!r} must be a relative path inside the recipe's "
                                  "folder (a recipe file must not choose where outside it hf_optim writes); to write "
                                  "elsewhere pass it on the command line: hf-optim run RECIPE --output DIR",
                                  field="output_dir")
        recipe = cls(name=name, stages=tuple(stages), seed=seed, description=str(data.get("description", "")),
                     base_dir=base_dir, output_dir=data.get("output_dir"), report=_parse_report(data.get("report"), [s.name for s in stages]))
        recipe._check_references()
        recipe._check_task_kinds()
        return recipe

    def _check_references(self) -> None:
        from .data import BUILTIN_MODELS

        seen: list[str] = []
        for stage in self.stages:
            if stage.name in seen:
                raise RecipeError(f"stage {stage.name!r}: the name is used twice; stage names must be unique",
                                  field="name")
            for field in type(stage.config).inputs:
                ref = getattr(stage.config, field)
                if ref is None or ref in seen:
                    continue
                if ref.startswith(BUILTIN_PREFIX):
                    if ref[len(BUILTIN_PREFIX):] not in BUILTIN_MODELS:
                        raise RecipeError(
                            f"stage {stage.name!r}: {field} = {short_repr(ref)} is not a builtin model; available: "
                            + ", ".join(BUILTIN_PREFIX + m for m in sorted(BUILTIN_MODELS)), field=field)
                    continue
                if ref in {s.name for s in self.stages}:
                    raise RecipeError(f"stage {stage.name!r}: {field} = {short_repr(ref)} refers to a later stage; "
                                      "a stage can only read stages above it", field=field)
                if not _exists(self.resolve_path(ref)):
                    raise RecipeError(
                        f"stage {stage.name!r}: {field} = {short_repr(ref)} is not an earlier stage "
                        f"({', '.join(seen) or 'none'}), a builtin model (builtin:...) or an existing path "
                        f"(looked for {short_repr(str(self.resolve_path(ref)), 300)})", field=field)
            seen.append(stage.name)

    def _check_task_kinds(self) -> None:
        """What each stage's model is, followed from its source through the stages: a stage that scores a model on
        a task gets the kind of task its model answers (a classification task for a sequence classifier, a text
        corpus for a causal LM; a base model without a task head neither), ``max_length`` stays within the
        model's positions, and a student has at most its teacher's layers. Found here, before any stage runs."""
        from .data.models import BUILTIN_MODEL_FACTS
        from .data.tasks import checkpoint_facts, is_text_corpus, named_corpus

        facts: dict[str, dict] = {}
        for stage in self.stages:
            cfg = stage.config
            ref = getattr(cfg, "model", None)
            if ref is None:
                model = {}
            elif ref in facts:
                model = facts[ref]
            elif ref.startswith(BUILTIN_PREFIX):
                model = BUILTIN_MODEL_FACTS.get(ref[len(BUILTIN_PREFIX):], {})
            else:
                model = checkpoint_facts(self.resolve_path(ref))
            out = dict(model)
            if cfg.produces != "input":
                out["kind"] = cfg.produces
            where = f"stage {stage.name!r} ({cfg.kind}): model {ref!r}"
            layers = model.get("num_layers")
            if cfg.kind == "student" and layers and cfg.num_layers > layers:
                raise RecipeError(f"{where} has {layers} layers; a student has at most its teacher's "
                                  f"(num_layers = {cfg.num_layers})", field="num_layers")
            if cfg.kind == "student":
                out["num_layers"] = cfg.num_layers
            positions, max_length = model.get("max_positions"), getattr(cfg, "max_length", None)
            if positions and isinstance(max_length, int) and max_length > positions:
                raise RecipeError(f"{where} reads at most {positions} positions; max_length = {max_length} must be "
                                  f"<= {positions}", field="max_length")
            facts[stage.name] = out
            kind = model.get("kind")
            if not cfg.scores_task or kind is None:
                continue
            task, lm_type = getattr(cfg, "task", None), getattr(cfg, "task_type", None) == "causal-lm"
            shown = task if isinstance(task, str) else (task or {}).get("name", task)
            if kind == "causal-lm" and not (named_corpus(cfg) or lm_type):
                raise RecipeError(f"{where} is a causal LM, but task {shown!r} is a classification task; measure a "
                                  "causal LM on a text corpus: set `corpus: bbc-news` on the stage (or the recipe; "
                                  "older recipes wrote `task: bbc-news`)", field="task")
            # a corpus named as the task, not a `corpus` (a recipe's top-level one reaches its classifiers too)
            if kind == "sequence-classification" and (is_text_corpus(task) or lm_type):
                raise RecipeError(f"{where} is a sequence classifier, but {shown!r} is a text corpus for causal LMs; "
                                  "set `task:` to the classification task it was trained on", field="task")
            if kind == "base":
                raise RecipeError(f"{where} is a base model without a task head (no classifier, no causal LM); "
                                  "fine-tune it first (a `finetune` stage) and point this stage at that stage",
                                  field="model")

    def stage_inputs(self, stage: Stage) -> list[tuple[str, str, str]]:
        """``(field, what, ref)`` of each artifact ``stage`` reads: ``what`` is ``"stage"`` (an earlier stage's
        name), ``"builtin"`` (``builtin:<model>``) or ``"path"`` (resolve it with :meth:`resolve_path`)."""
        names = {s.name for s in self.stages}
        refs = [(f, getattr(stage.config, f)) for f in type(stage.config).inputs]
        return [(f, "stage" if ref in names else "builtin" if ref.startswith(BUILTIN_PREFIX) else "path", ref)
                for f, ref in refs if ref is not None]

    def resolve_path(self, ref: str) -> Path:
        p = Path(ref).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    # -- serialization -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["seed"] = self.seed
        if self.output_dir:
            out["output_dir"] = self.output_dir
        if self.report:
            out["report"] = dict(self.report)
        out["stages"] = [s.to_dict() for s in self.stages]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    # -- fingerprints ---------------------------------------------------------------------------------
    def stage_fingerprints(self) -> dict[str, str]:
        """``{stage name: fingerprint}``; each covers the stage's config and everything it reads."""
        fps: dict[str, str] = {}
        for stage in self.stages:
            upstream = {field: fps[ref] if what == "stage" else ref if what == "builtin"
                        else _path_identity(self.resolve_path(ref)) for field, what, ref in self.stage_inputs(stage)}
            task = getattr(stage.config, "task", None)
            if isinstance(task, dict) and task.get("dataset") and Path(task["dataset"]).exists():
                upstream["dataset"] = _path_identity(Path(task["dataset"]))  # edited data -> re-run
            payload = {"format": STAGE_FORMAT, "seed": self.seed, "stage": stage.fingerprint_dict(),
                       "upstream": upstream}
            if "task" in type(stage.config).field_names():
                payload["data"] = DATA_ORDER
            fps[stage.name] = _digest(payload)
        return fps

    def fingerprint(self) -> str:
        """Stable hash of the whole recipe (independent of key order, comments and file location)."""
        return _digest({"format": STAGE_FORMAT, "stages": self.stage_fingerprints()})


MAX_ALIASES = 100  # a recipe needs few; "billion laughs" documents need millions of expansions


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (the last ``kind:`` would silently win) and bounds alias
    use (nested aliases expand exponentially)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name); write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.YAMLError(f"duplicate key {str(key)[:60]!r} (line {key_node.start_mark.line + 1}); each "
                                     "key may appear once in a mapping")
            seen.add(key) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse recipe YAML safely: plain data only, no duplicate keys, bounded aliases."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _parse_report(raw: Any, stage_names: list[str]) -> dict:
    from .report.config import ReportConfig

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError(f"`report` must be a mapping (e.g. `report: {{price_per_hour: 0.09}}`), got {short_repr(raw)}",
                          field="report")
    try:
        ReportConfig.from_dict(raw, strict=True)
    except ConfigError as e:
        raise RecipeError(f"report: {e}", field=e.field) from None
    for field in ("baseline", "reference"):
        if raw.get(field) is not None and raw[field] not in stage_names:
            raise RecipeError(f"report.{field} = {short_repr(raw[field])} is not a stage of this recipe; use the name of the "
                              f"stage whose evaluated model it is ({', '.join(stage_names)})", field=field)
    return dict(raw)


def _parse_stage(index: int, raw: Any, kinds: dict[str, type[StageConfig]], defaults: dict[str, Any]) -> Stage:
    where = f"stage #{index + 1}"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping with `name` and `kind`, got {short_repr(raw)}")
    raw = dict(raw)
    name = raw.pop("name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in _RESERVED:
        raise RecipeError(f"{where}: `name` must be a simple name (letters, digits, - _ .) and not one of "
                          f"{', '.join(sorted(_RESERVED))}; got {short_repr(name)}", field="name")
    where = f"stage {name!r}"
    kind = raw.pop("kind", None)
    if not isinstance(kind, str) or kind not in kinds:
        raise RecipeError(f"{where}: unknown kind {short_repr(kind)}; allowed kinds: {', '.join(kinds)}", field="kind")
    cls = kinds[kind]
    for field, default in defaults.items():  # the recipe's top-level `task` and `corpus`
        if field in cls.field_names() and field not in raw and default is not None:
            raw[field] = default
    try:
        config = cls.from_dict({"kind": kind, **raw}, strict=True)
    except ConfigError as e:
        raise RecipeError(f"{where} (kind {kind}): {e}", field=e.field) from None
    except TypeError as e:  # a required field is missing
        raise RecipeError(f"{where} (kind {kind}): {e}; fields: {', '.join(cls.field_names())}") from None
    return Stage(name=name, config=config)


def _resolve_dataset_path(stage: Stage, base_dir: Path) -> Stage:
    """A task's local ``dataset`` path is relative to the recipe file, like model paths."""
    task = getattr(stage.config, "task", None)
    if not isinstance(task, dict) or not isinstance(task.get("dataset"), str):
        return stage
    from .data.tasks import FILE_BUILDERS

    path = Path(task["dataset"]).expanduser()
    looks_local = task["dataset"].startswith((".", "/", "~")) or path.suffix.lower() in FILE_BUILDERS
    if looks_local and not (path if path.is_absolute() else base_dir / path).exists():
        raise RecipeError(f"stage {stage.name!r}: task.dataset = {task['dataset'][:200]!r} does not exist (looked for "
                          f"{str(path if path.is_absolute() else base_dir / path)[:300]}); paths are relative to the "
                          "recipe file", field="dataset")
    if path.is_absolute() or not (base_dir / path).exists():
        return stage  # absolute, or a Hub dataset name
    task = {**task, "dataset": str(base_dir / path)}
    return Stage(name=stage.name, config=stage.config.replace(task=task))


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name longer than the filesystem allows, ...: nothing is there
        return False


def _path_identity(path: Path) -> dict[str, Any]:
    """Cheap identity of an input path: resolved location plus size/mtime of its files (not their bytes)."""
    path = path.resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())[:200]
    return {"path": str(path), "files": [[str(f.relative_to(path.parent)), f.stat().st_size, f.stat().st_mtime_ns]
                                         for f in files]}


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
