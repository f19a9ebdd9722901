"""Tasks: which data, which columns, which metric. Built-in names or a user's own dataset."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal, Optional

# what a checkpoint is has one home; these names stay importable from here
from ..artifacts import checkpoint_facts, checkpoint_kind, read_config  # noqa: F401
from ..config import OptimConfig
from ..errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclasses.dataclass
class TaskSpec(OptimConfig):
    """What a stage trains or evaluates on.

    Args:
        name (`str`): a built-in task (``movie-sentiment``, ``bbc-topic``) or a label for your own data.
        dataset (`str`, *optional*): your data: a local ``.csv``/``.tsv``/``.json``/``.jsonl``/``.parquet``
            file, a folder holding ``train``/``validation``/``test`` files, or a Hub dataset name. Leave
            unset for a built-in task.
        text_column (`str`, *optional*, defaults to ``"text"``): input text column.
        text_pair_column (`str`, *optional*): second text column for sentence-pair tasks.
        label_column (`str`, *optional*, defaults to ``"label"``): integer or string label column.
        metric (`str`, *optional*, defaults to ``"accuracy"``): ``accuracy``, ``f1`` (macro),
            ``precision``, ``recall`` or ``matthews_correlation``.
        seed (`int`, *optional*, defaults to 42): seed for splitting data that lacks validation/test splits, for
            the (stratified) order of every split's rows and for every subset taken of them.
        test_size (`int`, *optional*, defaults to 1000): rows held out for test (and for validation) when
            the data has only one split.
    """

    kind = "task"
    version = 1

    name: str
    dataset: Optional[str] = None
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    metric: Literal["accuracy", "f1", "precision", "recall", "matthews_correlation"] = "accuracy"
    seed: int = 42
    test_size: int = 1000

    def validate(self) -> None:
        if self.dataset is None and self.name not in BUILTIN_TASKS:
            self._fail("name", f"not a built-in task (built-in: {', '.join(sorted(BUILTIN_TASKS))}); "
                               "for your own data also set `dataset:` to a file, folder or Hub dataset name")
        if self.test_size < 1:
            self._fail("test_size", "must be >= 1")

    @classmethod
    def coerce(cls, value: Any) -> "TaskSpec":
        """Accept a task name, a dict (recipe form) or a TaskSpec."""
        if isinstance(value, TaskSpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, dict):
            return cls.from_dict({"name": value.get("dataset", "custom"), **value}, strict=True)
        raise ConfigError(f"task must be a name or a mapping, got {value!r}")


BUILTIN_TASKS = {
    "movie-sentiment": "binary sentiment of 10,568 movie review sentences (accuracy)",
    "bbc-topic": "5-way topic of 2,127 distinct BBC News articles (accuracy)",
}


def load_task(task: str | TaskSpec | dict):
    """Load a task's data as a ``datasets.DatasetDict`` with ``train``, ``validation`` and ``test`` splits.

    Args:
        task (`str`, `dict` or `TaskSpec`): a built-in task name (``"movie-sentiment"``, ``"bbc-topic"``) or
            the description of your own data (see :class:`TaskSpec`).

    The returned splits always have the columns ``text`` (and ``text_pair`` when set) and ``label`` (a
    ``ClassLabel``, so label names travel into the model's ``id2label``). Each split's rows come in an order
    drawn with the task's ``seed`` in which every prefix holds the classes in the split's proportion
    (:func:`hf_optim.data.sampling.stratified_order`): ``split.select(range(n))`` is a stratified sample.
    """
    spec = TaskSpec.coerce(task)
    if spec.dataset is None:
        from . import corpora

        data = corpora.movie_sentiment() if spec.name == "movie-sentiment" else corpora.bbc_topic()
    else:
        data = _load_user_dataset(spec)
    return stratify_splits(data, spec.seed, "label")


def stratify_splits(data, seed: int, column: str):
    """Every split of ``data`` in a seeded order whose every prefix is stratified by ``column`` (see
    :mod:`hf_optim.data.sampling`), so the first N rows of a split represent it."""
    import datasets

    from .sampling import stratified_order

    return datasets.DatasetDict({name: ds.select(stratified_order(ds[column], seed))
                                 for name, ds in data.items()})


def _load_user_dataset(spec: TaskSpec):
    import datasets

    raw = _read_dataset(spec.dataset)
    columns = raw[next(iter(raw))].column_names
    needed = [spec.text_column, spec.label_column] + ([spec.text_pair_column] if spec.text_pair_column else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(f"dataset {spec.dataset!r} has no column(s) {', '.join(missing)} (columns: "
                        f"{', '.join(columns)}); set text_column / label_column in the task")
    _check_cells(spec, raw, needed)
    raw = _ensure_splits(raw, spec)
    rename = {spec.text_column: "text", spec.label_column: "label"}
    if spec.text_pair_column:
        rename[spec.text_pair_column] = "text_pair"
    out = {}
    for split in SPLITS:
        ds = raw[split].select_columns(list(rename)).rename_columns({k: v for k, v in rename.items() if k != v})
        out[split] = ds
    out = datasets.DatasetDict(out)
    for column in ("text", "text_pair"):  # a column of numbers reads as int64; a tokenizer takes text only
        if getattr(out["train"].features.get(column), "dtype", "string") != "string":
            out = out.cast_column(column, datasets.Value("string"))
    if isinstance(out["train"].features["label"], datasets.ClassLabel):
        _check_classes(spec, out["train"].features["label"].names, out)
        return out
    kinds = {type(v).__name__ for s in SPLITS for v in out[s]["label"]}
    if len(kinds) > 1:
        raise DataError(f"dataset {spec.dataset!r}: column {spec.label_column!r} mixes {' and '.join(sorted(kinds))} "
                        "labels; use one kind (all names or all integers 0..N-1)")
    values = sorted({v for s in SPLITS for v in out[s]["label"]})
    _check_classes(spec, values, out)
    if all(isinstance(v, str) for v in values):
        label = datasets.ClassLabel(names=values)  # string labels: ids follow sorted names
    elif values == list(range(len(values))):
        label = datasets.ClassLabel(num_classes=len(values))
    else:
        raise DataError(f"labels in {spec.dataset!r} must be strings or integers 0..N-1, found {values[:10]}")
    features = out["train"].features.copy()
    features["label"] = label
    return out.map(lambda b: {"label": [label.str2int(v) if isinstance(v, str) else v for v in b["label"]]},
                   batched=True, features=features, desc="encode labels")


def _check_cells(spec: TaskSpec, raw, columns: list[str]) -> None:
    """Every split read has rows and every row its text and label: an empty cell is named by split, data row (1 =
    the first row after a header) and column, as in the file."""
    for split, ds in raw.items():
        if len(ds) == 0:
            raise DataError(f"dataset {spec.dataset!r}: the {split} split has no rows (a header without data?)")
        for column in columns:
            for i, v in enumerate(ds[column]):
                if v is None or (column != spec.label_column and isinstance(v, str) and not v.strip()):
                    raise DataError(f"dataset {spec.dataset!r}: {split} row {i + 1} has an empty {column!r} cell; "
                                    "fill it or drop the row")


def _check_classes(spec: TaskSpec, classes: list, data) -> None:
    # one class would make transformers build a regression head (num_labels=1) that scores 1.0 on anything
    if len(classes) < 2:
        raise DataError(f"dataset {spec.dataset!r}: column {spec.label_column!r} holds one class ({classes}); a "
                        "classification task needs at least two")
    train = set(data["train"]["label"])
    unseen = [c for c in classes if c not in train and classes.index(c) not in train]
    if unseen:
        raise DataError(f"dataset {spec.dataset!r}: label(s) {unseen} never occur in the train split, so no model "
                        "can learn them; add training rows for them or drop those rows")


def _load_files(builder: str, files: dict[str, str], tabs: bool):
    import logging

    import datasets

    lib = logging.getLogger("datasets")
    level = lib.level
    lib.setLevel(logging.CRITICAL)  # it logs the failure that is raised below as one DataError
    try:
        return datasets.load_dataset(builder, data_files=files, **({"delimiter": "\t"} if tabs else {}))
    except Exception as e:  # noqa: BLE001 - pyarrow/pandas/datasets raise many types for one "unreadable file"
        while "error occurred while generating" in str(e) and (e.__cause__ or e.__context__):
            e = e.__cause__ or e.__context__  # the parser's own words say which line is wrong
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        if "corresponds to no data" in msg:
            msg = "no data rows (a header without data?)"
        raise DataError(f"could not read {', '.join(Path(f).name for f in files.values())} as {builder}: {msg}") from None
    finally:
        lib.setLevel(level)


def _read_dataset(source: str):
    import datasets

    path = Path(os.path.expanduser(source))
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"cannot read {path}: use one of {', '.join(sorted(FILE_BUILDERS))}")
        return _load_files(builder, {"train": str(path)}, path.suffix.lower() == ".tsv")
    if path.is_dir():
        files, builders = {}, set()
        for split in SPLITS:
            found = [path / f"{split}{ext}" for ext in FILE_BUILDERS if (path / f"{split}{ext}").is_file()]
            if len(found) > 1:
                raise DataError(f"{path} holds {' and '.join(f.name for f in found)}: keep one file per split")
            if found:
                files[split] = str(found[0])
                builders.add((FILE_BUILDERS[found[0].suffix], found[0].suffix == ".tsv"))
        if "train" not in files:
            raise DataError(f"{path} holds no train.csv/.json/.jsonl/.parquet file")
        if len(builders) > 1:
            raise DataError(f"{path} mixes file formats ({', '.join(Path(f).name for f in files.values())}); use one "
                            "format (.csv, .tsv, .json/.jsonl or .parquet) for every split")
        builder, tabs = builders.pop()
        return _load_files(builder, files, tabs)
    if source.startswith((".", "/", "~")) or source.endswith(tuple(FILE_BUILDERS)):
        raise DataError(f"dataset file {source!r} does not exist; check the path (relative to the recipe file)")
    try:
        return datasets.load_dataset(source)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "could not load"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set; unset it or use a local file)" if offline else ""
        raise DataError(f"could not load Hub dataset {source!r}{hint}: {type(e).__name__}: {e}") from None


def _ensure_splits(raw, spec: TaskSpec):
    import datasets

    raw = dict(raw)
    if "validation" not in raw and "dev" in raw:
        raw["validation"] = raw.pop("dev")
    if "test" not in raw:
        n = len(raw["train"])
        if n < 3:
            raise DataError(f"dataset {spec.dataset!r} has only {n} rows")
        size = min(spec.test_size, max(1, n // 5))
        split = raw["train"].train_test_split(test_size=size, seed=spec.seed)
        raw["train"], raw["test"] = split["train"], split["test"]
    if "validation" not in raw:
        n = len(raw["train"])
        size = min(spec.test_size, max(1, n // 5))
        split = raw["train"].train_test_split(test_size=size, seed=spec.seed)
        raw["train"], raw["validation"] = split["train"], split["test"]
    return datasets.DatasetDict(raw)


def is_text_corpus(task: Any) -> bool:
    """Whether ``task`` names a text corpus for causal-LM evaluation (``bbc-news``), not a classification task."""
    from . import BUILTIN_TEXTS

    return isinstance(task, str) and task in BUILTIN_TEXTS


def named_corpus(config: Any) -> Optional[str]:
    """The text corpus a stage config names for causal LMs: its ``corpus``, else its ``task`` when that names a
    corpus (how recipes named it before ``corpus`` existed, still read), else `None`."""
    corpus = getattr(config, "corpus", None)
    if corpus is not None:
        return corpus
    task = getattr(config, "task", None)
    return task if is_text_corpus(task) else None


def check_corpus(config: Any, field: str = "corpus") -> None:
    """Fail on ``config.<field>`` when it is set and names no known text corpus."""
    from . import BUILTIN_TEXTS

    value = getattr(config, field)
    if value is not None and value not in BUILTIN_TEXTS:
        config._fail(field, f"unknown text corpus {value!r}; available: {', '.join(BUILTIN_TEXTS)}")


def _is_generic(labels: list[str]) -> bool:
    return all(name == f"LABEL_{i}" for i, name in enumerate(labels))


def check_model_labels(model_dir: str | Path, label_names: list[str], task_name: str) -> None:
    """Raise :class:`DataError` when the classifier in ``model_dir`` was not trained on these labels.

    The model's ``num_labels`` must equal the task's class count, and where its ``id2label`` names its classes
    (not transformers' ``LABEL_<i>`` defaults) they must be the task's names in the task's order (compared
    without case): a model scored against another label set reports a number with no meaning.
    """
    path = Path(model_dir) / "config.json"
    cfg = read_config(model_dir)
    if cfg is None:
        return  # not a config.json checkpoint: the loader says what is wrong
    id2label = cfg.get("id2label") or {}
    try:
        model_labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (TypeError, ValueError, AttributeError):
        raise DataError(f"{path}: id2label {str(id2label)[:200]} must map class ids 0..N-1 to names") from None
    # transformers leaves its default (2 classes, LABEL_0/LABEL_1) out of config.json
    n_model = int(cfg.get("num_labels") or len(model_labels) or 2)
    task_labels = list(label_names)
    def listed(labels: list) -> str:  # both sets, bounded: a model may have thousands of classes
        text = str(dict(enumerate(labels)))
        return text if len(text) <= 300 else text[:300] + f"... ({len(labels)} labels)"

    shown = (f"the model's labels {listed(model_labels) if model_labels else n_model}, the task "
             f"{task_name!r}'s labels {listed(task_labels)}")
    if n_model != len(task_labels):
        raise DataError(f"{model_dir} predicts {n_model} classes but task {task_name!r} has {len(task_labels)} "
                        f"({shown}); evaluate it on the task it was trained on (--task / `task:`), or fine-tune "
                        "it on this task first")
    if model_labels and not _is_generic(model_labels) and \
            [m.lower() for m in model_labels] != [t.lower() for t in task_labels]:
        same = sorted(m.lower() for m in model_labels) == sorted(t.lower() for t in task_labels)
        what = "the same names in another order" if same else "other label names"
        raise DataError(f"{model_dir} was trained on {what} than task {task_name!r} ({shown}); class ids would be "
                        "scored against the wrong labels. Evaluate it on the task it was trained on, or give the "
                        "task's labels the model's names and order")
