"""The serving configs, the traffic split and ``hf-optim serve --dry-run`` (no Ray instance started)."""

from __future__ import annotations

import pytest
import yaml

from hf_optim.errors import ConfigError
from hf_optim.serving import ServeConfig, parse_split


def test_config_round_trips_and_validates():
    config = ServeConfig(variants=[{"name": "a", "artifact": "x", "weight": 0.9},
                                   {"name": "b", "artifact": "y", "weight": 0.1, "replicas": "auto"}],
                         replicas=2, inference={"max_queue": 8})
    again = ServeConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again == config and again.inference.max_queue == 8 and again.variants[1].replicas == "auto"
    for bad, field in [({"variants": []}, "variants"),
                       ({"variants": [{"name": "a", "artifact": "x"}, {"name": "a", "artifact": "y"}]}, "variants"),
                       ({"variants": [{"name": "a b", "artifact": "x"}]}, "name"),
                       ({"variants": [{"name": "a", "artifact": "x", "weight": 0}]}, "variants"),
                       ({"variants": [{"name": "a", "artifact": "x"}], "replicas": "many"}, "replicas"),
                       ({"variants": [{"name": "a", "artifact": "x"}], "replicas": 0}, "replicas")]:
        with pytest.raises(ConfigError) as e:
            ServeConfig.from_dict(bad)
        assert e.value.field == field
    assert parse_split("0.9,0.1", 2) == [0.9, 0.1] and parse_split(None, 3) == [1.0, 1.0, 1.0]
    for bad in ("0.9", "a,b", "-1,2"):
        with pytest.raises(ConfigError):
            parse_split(bad, 2)


def test_split_is_weighted_and_sticky_by_key():
    router = pytest.importorskip("hf_optim.serving.router")
    names, weights = ["a", "b"], [0.9, 0.1]
    drawn = [router.pick_variant(names, weights) for _ in range(5000)]
    assert abs(drawn.count("a") / 5000 - 0.9) < 0.03
    assert len({router.pick_variant(names, weights, "user-7") for _ in range(20)}) == 1
    keyed = [router.pick_variant(names, weights, f"user-{i}") for i in range(2000)]
    assert abs(keyed.count("a") / 2000 - 0.9) < 0.04
    assert {router.pick_variant(names, [1, 0], f"k{i}") for i in range(100)} == {"a"}  # weight 0: no traffic


def test_cli_dry_run_writes_a_serve_deploy_file(tmp_path, tiny_bert_dir, tiny_llama_dir, capsys):
    from hf_optim.cli import main
    from hf_optim.serving.app import app_builder  # noqa: F401  (the import_path the file names)

    out = tmp_path / "cfg" / "serve_config.yaml"
    assert main(["serve", str(tiny_bert_dir), str(tiny_bert_dir), "--split", "0.9,0.1", "--replicas", "auto",
                 "--port", "8123", "--config-out", str(out), "--dry-run"]) == 0
    doc = yaml.safe_load(out.read_text())
    (app,) = doc["applications"]
    assert app["import_path"] == "hf_optim.serving.app:app_builder" and doc["http_options"]["port"] == 8123
    config = ServeConfig.from_dict(app["args"])
    assert [v.name for v in config.variants] == ["tiny-bert", "tiny-bert-2"] and config.replicas == "auto"
    assert [v.weight for v in config.variants] == [0.9, 0.1]
    assert all(v.fingerprint.startswith("dir:") and v.task_type == "sequence-classification" for v in config.variants)
    assert f"serve config: {out}" in capsys.readouterr().out
    # user errors: one line, exit 2
    assert main(["serve", str(tmp_path / "missing"), "--dry-run", "--config-out", str(out)]) == 2
    assert main(["serve", str(tiny_bert_dir), "--split", "0.5,0.5", "--dry-run", "--config-out", str(out)]) == 2
    assert main(["serve", str(tiny_bert_dir), str(tiny_llama_dir), "--dry-run", "--config-out", str(out)]) == 2
    assert "same task" in capsys.readouterr().err
