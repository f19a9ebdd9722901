"""Verbosity: one place sets it; progress bars and ONNX Runtime's log follow it."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from hf_optim import console


@pytest.fixture
def verbosity(monkeypatch):
    """Call set_verbosity; the environment, warning filters and level are restored afterwards."""
    for key in console._QUIET_ENV:
        monkeypatch.setenv(key, "")  # registered, so monkeypatch puts the old value back
    severities = []
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "set_default_logger_severity", severities.append)
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as tf_logging

    before = tf_logging.get_verbosity(), ds_logging.get_verbosity()
    with warnings.catch_warnings():
        yield lambda level: (console.set_verbosity(level), severities)[1]
    console.set_verbosity("normal")
    tf_logging.set_verbosity(before[0])
    ds_logging.set_verbosity(before[1])


def test_quiet_sets_ort_errors_only_and_silences_libraries(verbosity):
    import os

    assert verbosity("quiet") == [3]
    assert console.get_verbosity() == "quiet"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error" and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    from transformers.utils import logging as tf_logging

    assert tf_logging.get_verbosity() == tf_logging.ERROR
    assert console.ort_session_options().log_severity_level == 3


@pytest.mark.parametrize("level, severity", [("normal", 3), ("verbose", 2)])
def test_ort_severity_per_level(verbosity, level, severity):
    assert verbosity(level) == [severity]
    assert console.ort_log_severity() == severity
    assert console.ort_session_options().log_severity_level == severity


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="quiet, normal, verbose"):
        console.set_verbosity("loud")


def test_progress_bar_follows_flag_and_quiet(verbosity):
    assert not console.progress(range(3), desc="x").disable
    assert console.progress(range(3), desc="x", enabled=False).disable
    verbosity("quiet")
    bar = console.progress(range(3), desc="x")
    assert bar.disable and list(bar) == [0, 1, 2]  # a disabled bar still iterates


def test_package_sessions_get_the_quiet_options(tmp_path):
    """Every InferenceSession the package builds takes its options from console.ort_session_options."""
    import onnx
    from onnx import TensorProto, helper

    from hf_optim.export.runtime import make_session

    root = Path(console.__file__).parent
    for path in root.rglob("*.py"):
        src = path.read_text()
        code = re.sub(r'""".*?"""', "", src, flags=re.S)  # docstrings may name the class
        if path.name != "console.py":
            assert "SessionOptions()" not in code, f"{path}: use console.ort_session_options()"
        if "InferenceSession(" in code or "session_options=" in code:
            assert "ort_session_options" in code, f"{path} builds an ONNX Runtime session with default logging"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    assert make_session(tmp_path / "m.onnx").get_session_options().log_severity_level == 3


def test_long_steps_show_progress_and_quiet_hides_it(verbosity, capsys):
    """GPTQ layer by layer (and its end-to-end tuning), calibration and perplexity windows each show a bar that
    reaches its total; quiet hides them all, the work is the same."""
    import torch

    from hf_optim.evaluation.lm import perplexity
    from hf_optim.quantize.apply import calibrate
    from hf_optim.quantize import QuantizeConfig
    from hf_optim.quantize.gptq import gptq_quantize_
    from hf_optim.testing import tiny_llama

    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 60, (2, 16), generator=g)} for _ in range(3)]
    ids = torch.randint(0, 60, (1, 40), generator=g)

    def work():
        model = tiny_llama()
        ranges = calibrate(model, batches, progress=True)
        ppl = perplexity(model, ids, context=16, stride=8, progress=True)
        cfg = QuantizeConfig(model="tiny-llama", scheme="int4_weight_only", method="gptq", group_size=16,
                             gptq_e2e_steps=2)
        info = gptq_quantize_(model, batches, cfg, progress=True)
        return ranges, ppl, info

    ranges, ppl, info = work()
    err = capsys.readouterr().err
    assert ppl["windows"] == 4
    for bar in ("calibrate: 100%", "3/3", "perplexity: 100%", "4/4", "GPTQ layers: 100%", "2/2",
                "GPTQ end-to-end tuning: 100%"):
        assert bar in err, bar
    verbosity("quiet")
    quiet = work()
    assert capsys.readouterr().err == ""
    assert quiet[1] == ppl and quiet[2]["modules_gptq"] == info["modules_gptq"] and quiet[0] == ranges
