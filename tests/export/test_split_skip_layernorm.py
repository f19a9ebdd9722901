"""The ``split_skip_layernorm`` export setting: config round trips and errors, the stage fingerprint, the graph
each value gives, and what the export record and the stage metrics hold."""

from __future__ import annotations

import json

import pytest
import yaml

from hf_optim.errors import ConfigError
from hf_optim.export import ExportConfig, export_model
from hf_optim.export.onnx import op_counts
from hf_optim.recipe import Recipe

FAST = dict(backend="torch", optimization="O2", quantization="none", validation_samples=32)


@pytest.mark.parametrize("value", ["auto", "on", "off"])
def test_setting_round_trips(value):
    cfg = ExportConfig(model="m", split_skip_layernorm=value)
    assert cfg.to_dict()["split_skip_layernorm"] == value
    assert ExportConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert ExportConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_unquoted_yaml_on_off_and_bad_values():
    # YAML 1.1 reads an unquoted on / off as a boolean: it still means the setting
    for text, value in (("on", "on"), ("off", "off"), ("auto", "auto")):
        data = yaml.safe_load(f"model: m\nsplit_skip_layernorm: {text}")
        assert ExportConfig.from_dict(data).split_skip_layernorm == value
    assert ExportConfig(model="m").split_skip_layernorm == "on"
    for bad in ("fused", "ON", 1, None):
        with pytest.raises(ConfigError, match="split_skip_layernorm") as e:
            ExportConfig(model="m", split_skip_layernorm=bad)
        assert e.value.field == "split_skip_layernorm"


def _fingerprint(**stage):
    data = {"name": "r", "stages": [{"name": "t", "kind": "finetune", "model": "builtin:minilm-l6"},
                                    {"name": "x", "kind": "export", "model": "t", **stage}]}
    return Recipe.from_dict(data).stage_fingerprints()["x"]


def test_setting_is_part_of_the_fingerprint_except_its_legacy_value():
    auto, on, off = (_fingerprint(split_skip_layernorm=v) for v in ("auto", "on", "off"))
    assert len({auto, on, off}) == 3
    assert _fingerprint() == on  # the default is on
    # auto is what releases before the field did: a stage that ran then keeps its fingerprint
    legacy = ExportConfig(model="m", split_skip_layernorm="auto")
    assert "split_skip_layernorm" not in legacy.fingerprint_dict()
    assert ExportConfig(model="m", split_skip_layernorm="off").fingerprint_dict()["split_skip_layernorm"] == "off"
    assert {k: v for k, v in ExportConfig(model="m").fingerprint_dict().items()
            if k != "split_skip_layernorm"} == legacy.fingerprint_dict()


@pytest.mark.parametrize("setting", ["off", "on"])
def test_off_keeps_the_fused_graph_and_on_splits_it(setting, bert_dir, tmp_path, clean_cwd):
    out = tmp_path / setting
    record = export_model(bert_dir, out, ExportConfig(model=str(bert_dir), split_skip_layernorm=setting, **FAST))
    ops = record["ops"]
    if setting == "off":  # ORT's fused graph: 2 layers x 2 SkipLayerNormalization, 2 BiasGelu
        assert ops["SkipLayerNormalization"] == 4 and ops["BiasGelu"] == 2
        assert "Sum" not in ops and "Gelu" not in ops
        expected = {"setting": "off", "decision": "off", "nodes_split": 0}
    else:
        assert "SkipLayerNormalization" not in ops and "BiasGelu" not in ops
        assert ops["Sum"] == 4 and ops["Gelu"] == 2 and ops["LayerNormalization"] >= 4
        expected = {"setting": "on", "decision": "on", "nodes_split": 6}
    assert ops["Attention"] == 2  # attention stays fused either way
    saved = json.loads((out / "hf_optim_export.json").read_text())
    assert record["skip_layernorm"] == saved["skip_layernorm"] == expected
    assert saved["config"]["split_skip_layernorm"] == setting


def test_auto_records_the_probe_and_follows_it(bert_dir, tmp_path, clean_cwd):
    """Through the stage handler: the record and the metrics hold the probe's timings and the decision, and the
    graph is the form the decision names."""
    from hf_optim.export.stage import run_export
    from hf_optim.runner import StageContext

    out = tmp_path / "stage"
    out.mkdir()
    ctx = StageContext(name="export", inputs={"model": bert_dir}, output_dir=out, run_dir=tmp_path, seed=0,
                       progress=False)
    metrics = run_export(ExportConfig(model=str(bert_dir), split_skip_layernorm="auto", **FAST), ctx)
    record = json.loads((out / "hf_optim_export.json").read_text())
    sln = record["skip_layernorm"]
    probe = sln["probe_ms"]
    assert sln["setting"] == "auto" and probe["shape"] == [8, 64, 32]  # hidden size of the tiny BERT
    assert probe["fused"] > 0 and probe["split"] > 0
    assert sln["decision"] == ("on" if probe["split"] < 0.8 * probe["fused"] else "off")
    assert (record["ops"].get("Sum") == 4) == (sln["decision"] == "on")
    assert (record["ops"].get("SkipLayerNormalization") == 4) == (sln["decision"] == "off")
    assert metrics["split_skip_layernorm"] == sln["decision"] and metrics["skip_layernorm_probe_ms"] == probe


@pytest.mark.parametrize("timings, decision", [({"fused": 1.0, "split": 0.5}, "on"),
                                               ({"fused": 1.0, "split": 0.9}, "off")])
def test_auto_splits_only_when_the_probe_says_split_is_faster(timings, decision, bert_dir, tmp_path, monkeypatch):
    from hf_optim.export.onnx import export_onnx, optimize_onnx

    monkeypatch.setattr("hf_optim.export.graph.skip_layernorm_timings", lambda *a, **k: dict(timings))
    path = export_onnx(bert_dir, tmp_path / "e", "sequence-classification", "torch")
    graph, record = optimize_onnx(path, tmp_path / "e" / "o2.onnx", "O2", "torch", split="auto")
    assert record == {"setting": "auto", "decision": decision, "nodes_split": 6 if decision == "on" else 0,
                      "probe_ms": {**timings, "shape": [8, 64, 32]}}
    assert ("SkipLayerNormalization" in op_counts(graph)) == (decision == "off")
