"""Recipe parsing, validation errors (stage, field, allowed values) and fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hf_optim.errors import RecipeError
from hf_optim.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, data) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _base(**stage_changes):
    teacher = {"name": "teacher", "kind": "finetune", "model": "builtin:minilm-l6", "epochs": 1}
    teacher.update(stage_changes)
    return {"name": "r", "task": "movie-sentiment",
            "stages": [teacher, {"name": "eval", "kind": "evaluate", "model": "teacher"}]}


def test_shipped_recipes_are_valid():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        recipe = Recipe.from_yaml(path)
        assert recipe.stages, path
        assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml()), base_dir=path.parent) == recipe


def test_default_task_applies_to_stages(tmp_path):
    recipe = Recipe.from_yaml(_write(tmp_path, _base()))
    assert [s.name for s in recipe.stages] == ["teacher", "eval"]
    assert recipe.stages[0].config.task == "movie-sentiment"
    assert recipe.stages[0].config.epochs == 1.0


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"name": "r", "stages": [{"name": "a", "kind": "frobnicate", "model": "x"}]},
         r"stage 'a': unknown kind 'frobnicate'; allowed kinds: .*evaluate.*finetune"),
        (_base(epocs=3), r"stage 'teacher' \(kind finetune\): finetune: unknown field\(s\) epocs; allowed fields: .*epochs"),
        (_base(epochs="three"), r"stage 'teacher' \(kind finetune\): finetune.epochs = 'three' is not valid: expected float"),
        (_base(batch_size=0), r"stage 'teacher'.*batch_size = 0: must be >= 1"),
        (_base(model="missing/model-dir"), r"stage 'teacher': model = 'missing/model-dir' is not an earlier stage.*existing path"),
        (_base(model="builtin:bert-huge"), r"builtin:bert-huge' is not a builtin model; available: builtin:minilm-l6"),
        (_base(model="eval"), r"refers to a later stage"),
        ({"name": "r", "stages": []}, r"`stages` must be a non-empty list"),
        ({"name": "r", "stagse": []}, r"unknown top-level field\(s\) stagse"),
        ({"name": "bad name!", "stages": [{}]}, r"`name` must be a simple name"),
        ({"name": "r", "seed": "x", "stages": [{}]}, r"`seed` must be an integer"),
        ({"name": "r", "stages": [{"kind": "evaluate", "model": "x"}]}, r"stage #1: `name` must be"),
        ({"name": "r", "stages": [{"name": "a", "kind": "evaluate"}]}, r"stage 'a' \(kind evaluate\): evaluate: missing required field\(s\) model"),
        ({"name": "r", "stages": [{"name": "a", "kind": "evaluate", "model": "builtin:minilm-l6"},
                                  {"name": "a", "kind": "evaluate", "model": "builtin:minilm-l6"}]}, r"stage 'a': the name is used twice"),
        ({"name": "r", "stages": [{"name": "a", "kind": "evaluate", "model": "builtin:minilm-l6", "task": "imdb"}]},
         r"stage 'a'.*not a built-in task.*movie-sentiment"),
        ({"name": "r", "stages": [{"name": "a", "kind": "evaluate", "model": "builtin:minilm-l6", "split": "dev"}]},
         r"evaluate.split = 'dev' is not valid: expected 'test' \| 'validation' \| 'train'"),
    ],
)
def test_validation_errors_name_stage_field_and_allowed(tmp_path, data, pattern):
    path = _write(tmp_path, data)
    with pytest.raises(RecipeError, match=pattern) as e:
        Recipe.from_yaml(path)
    assert str(path) in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        Recipe.from_yaml(_write(tmp_path, "name: [unclosed"))
    with pytest.raises(RecipeError, match="must be a mapping"):
        Recipe.from_yaml(_write(tmp_path, "- just\n- a list\n"))


def test_relative_model_path_resolves_against_recipe_dir(tmp_path):
    (tmp_path / "my-model").mkdir()
    data = {"name": "r", "stages": [{"name": "e", "kind": "evaluate", "model": "my-model"}]}
    recipe = Recipe.from_yaml(_write(tmp_path, data))
    assert recipe.resolve_path("my-model") == (tmp_path / "my-model").resolve()


def test_fingerprint_is_stable_and_tracks_changes(tmp_path):
    a = Recipe.from_dict(_base())
    # key order and formatting do not matter
    reordered = _base()
    reordered["stages"][0] = dict(reversed(list(reordered["stages"][0].items())))
    assert Recipe.from_dict(reordered).fingerprint() == a.fingerprint()
    # explicit default == implicit default
    assert Recipe.from_dict(_base(batch_size=32)).stage_fingerprints() == a.stage_fingerprints()
    b = Recipe.from_dict(_base(epochs=2))
    fa, fb = a.stage_fingerprints(), b.stage_fingerprints()
    assert fa["teacher"] != fb["teacher"]
    assert fa["eval"] != fb["eval"]  # downstream of a change is invalidated too
    c = _base()
    c["stages"][1]["max_samples"] = 5
    fc = Recipe.from_dict(c).stage_fingerprints()
    assert fc["teacher"] == fa["teacher"] and fc["eval"] != fa["eval"]  # upstream untouched
    assert len(a.fingerprint()) == 16


def test_a_field_added_later_changes_the_fingerprint_only_when_set():
    from hf_optim.export.config import ExportConfig

    data = {"name": "r", "stages": [{"name": "t", "kind": "finetune", "model": "builtin:minilm-l6"},
                                    {"name": "x", "kind": "export", "model": "t", "quantization": "int4"}]}
    plain = Recipe.from_dict(data).stage_fingerprints()["x"]
    data["stages"][1]["symmetric"] = True                 # the default, spelled out: same stage
    assert Recipe.from_dict(data).stage_fingerprints()["x"] == plain
    data["stages"][1]["symmetric"] = False
    assert Recipe.from_dict(data).stage_fingerprints()["x"] != plain
    cfg = ExportConfig(model="m", quantization="int4")
    assert "symmetric" in cfg.to_dict() and not {"symmetric", "int4_symmetric"} & set(cfg.fingerprint_dict())
    assert ExportConfig.from_dict(cfg.to_dict()) == cfg


def test_a_changed_default_changes_the_fingerprint_and_unused_settings_do_not():
    def fp(**stage):
        data = {"name": "r", "stages": [{"name": "q", "kind": "quantize", "model": "builtin:smollm2-135m",
                                         "task": "bbc-news", "scheme": "int4_weight_only", **stage}]}
        return Recipe.from_dict(data).stage_fingerprints()["q"]

    # GPTQ ran in column order before gptq_act_order existed: only that legacy value leaves the fingerprint alone
    assert fp(method="gptq") == fp(method="gptq", gptq_act_order=True) != fp(method="gptq", gptq_act_order=False)
    # round to nearest ignores the GPTQ settings: they never re-run it
    assert fp() == fp(gptq_act_order=False)
    with pytest.raises(RecipeError, match="gptq_refit"):
        fp(gptq_refit=True)
    # no tuning is the old behaviour; the tuning's learning rate only counts once it tunes
    assert fp(method="gptq") == fp(method="gptq", gptq_tune_steps=0) == fp(method="gptq", gptq_tune_lr=0.01)
    tuned = fp(method="gptq", gptq_tune_steps=40)
    assert tuned != fp(method="gptq") and tuned != fp(method="gptq", gptq_tune_steps=40, gptq_tune_lr=0.01)
    # the removed rounding experiment is read and dropped: a stage that set it now does what the others do
    with pytest.warns(FutureWarning, match="gptq_tune_rounding_lr was removed"):
        assert tuned == fp(method="gptq", gptq_tune_steps=40, gptq_tune_rounding_lr=0.015)
    assert fp(method="gptq") == fp(method="gptq", gptq_e2e_steps=0) == fp(method="gptq", gptq_e2e_lr=0.01)
    e2e = fp(method="gptq", gptq_e2e_steps=40)
    assert e2e not in (fp(method="gptq"), tuned, fp(method="gptq", gptq_e2e_steps=40, gptq_e2e_lr=0.01))
    assert fp() == fp(gptq_e2e_lr=0.01)


@pytest.mark.parametrize("text, pattern", [
    ("name: r\nstages:\n  - name: a\n    kind: evaluate\n    kind: finetune\n", r"duplicate key 'kind' \(line 5\)"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(  # 8 levels of 20: 20**8 strings once expanded
        f"{b}: &{b} [{', '.join(['*' + a] * 20)}]\n" for a, b in zip("abcdefgh", "bcdefghi")), r"more than 100 aliases"),
    ("name: r\nstages: !!python/object/apply:os.system ['true']\n", r"not valid YAML"),
])
def test_recipe_yaml_is_plain_data_without_duplicate_keys_or_alias_bombs(tmp_path, text, pattern):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=pattern):
        Recipe.from_yaml(path)


def test_a_recipe_that_is_not_utf8_is_one_clear_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes("name: r\ndescription: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(RecipeError, match="not UTF-8 text.*save the recipe as UTF-8"):
        Recipe.from_yaml(path)


@pytest.mark.parametrize("dataset", ["data/missing.csv", "./nope", "~/no-such-file.parquet", "/no/such/dir/x.jsonl"])
def test_a_missing_dataset_file_is_found_at_validation(tmp_path, dataset):
    data = {"name": "r", "task": {"name": "mine", "dataset": dataset},
            "stages": [{"name": "t", "kind": "finetune", "model": "builtin:minilm-l6"}]}
    with pytest.raises(RecipeError, match=r"stage 't': task.dataset = .* does not exist.*relative to the recipe file"):
        Recipe.from_dict(data, base_dir=tmp_path)


def test_errors_quote_what_was_written_but_never_megabytes_of_it():
    huge = "x" * 1_000_000
    for data in ({"name": "r", "stages": [{"name": "a", "kind": huge}]},
                 {"name": "r", "stages": [{"name": "a", "kind": "evaluate", "model": huge}]},
                 {"name": "r", "stages": [{"name": "a", "kind": "evaluate", "model": "builtin:smollm2-135m",
                                           "task": "bbc-news", "batch_size": huge}]},
                 {"name": "not a name " * 100_000, "stages": []}):
        with pytest.raises(RecipeError) as info:
            Recipe.from_dict(data)
        assert len(str(info.value)) < 1000 and "characters)" in str(info.value)
