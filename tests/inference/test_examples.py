"""The light import promise and the web-handler example in scripts/."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.multiprocess
def test_importing_the_inference_package_does_not_import_torch():
    code = ("import sys, hf_optim, hf_optim.inference as i; i.InferenceConfig(); "
            "print(json.dumps(['torch' in sys.modules, hf_optim.InferenceConfig is i.InferenceConfig]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, True]


@pytest.mark.multiprocess
def test_serve_example_self_test(capsys):
    spec = importlib.util.spec_from_file_location("serve_example", ROOT / "scripts" / "serve_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--self-test"])
    out = capsys.readouterr().out
    first = json.loads(out[: out.index("\n}\n") + 2])
    preds = first["predictions"]
    assert len(preds) == 3 and preds[0] == preds[2] and "label" in preds[0]
    assert preds[1]["error"].startswith("TypeError")          # the bad item failed alone
    stats = json.loads(out[out.index("\n}\n") + 3:])
    assert stats["requests"]["submitted"] == 8 * 3 + 3 and stats["requests"]["failed"] == 1
