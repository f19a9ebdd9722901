"""Tampered checkpoints: torch weights, hf_optim stage outputs and ONNX exports. Loading one fails with one
``error:`` line naming the directory and what is wrong; none is scored as if it were sound."""

from __future__ import annotations

import json
import struct

import pytest

from .conftest import CliCase, cli, ids, one_error, quantized_run

FAST = ["--no-memory", "--max-samples", "8", "--latency-samples", "2", "--throughput-samples", "4", "-q"]


def _eval_tampered(kind: str, tamper, dataset: bool = True):
    """Copy the tiny ``kind`` model, apply ``tamper(model_dir)``, and evaluate it on a small CSV."""
    def build(lab):
        model = lab.model(kind)
        tamper(model)
        return ["eval", model, "--dataset", lab.csv(), *FAST]
    return build


def _weights(fn):
    """Rewrite model.safetensors through ``fn(state_dict)`` (returns the new dict)."""
    def tamper(model):
        from safetensors.torch import load_file, save_file

        sd = fn(load_file(model / "model.safetensors"))
        save_file(sd, model / "model.safetensors", metadata={"format": "pt"})
    return tamper


def _bytes(fn, name="model.safetensors"):
    def tamper(model):
        path = model / name
        path.write_bytes(fn(path.read_bytes()))
    return tamper


def _config(fn):
    def tamper(model):
        cfg = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps(fn(cfg)))
    return tamper


def _key(sd, part):
    return next(k for k in sd if part in k)


def _pop(part):
    def fn(sd):
        del sd[_key(sd, part)]
        return sd
    return fn


def _set(part, value):
    def fn(sd):
        sd[_key(sd, part)] = value(sd[_key(sd, part)])
        return sd
    return fn


def _header(text: bytes):
    return lambda b: struct.pack("<Q", len(text)) + text + b[8 + struct.unpack("<Q", b[:8])[0]:]


def _unlink(*names):
    def tamper(model):
        for name in names:
            (model / name).unlink(missing_ok=True)  # transformers 5 writes no special_tokens_map.json
    return tamper


def _write(name, content):
    def tamper(model):
        (model / name).write_text(content)
    return tamper


LOAD = ("could not load the model",)
CONFIG = ("config.json", "not a readable model config")
TORCH_CASES = [
    CliCase("weights-truncated", _eval_tampered("bert", _bytes(lambda b: b[:len(b) // 2])), LOAD),
    CliCase("weights-header-only", _eval_tampered("bert", _bytes(lambda b: b[:8 + struct.unpack("<Q", b[:8])[0]])), LOAD),
    CliCase("weights-empty-file", _eval_tampered("bert", _bytes(lambda b: b"")), LOAD),
    CliCase("weights-all-0xff", _eval_tampered("bert", _bytes(lambda b: b"\xff" * len(b))), LOAD),
    CliCase("weights-header-length-1e15", _eval_tampered("bert", _bytes(lambda b: struct.pack("<Q", 10 ** 15) + b[8:])), LOAD),
    CliCase("weights-header-not-json", _eval_tampered("bert", _bytes(_header(b"{not json at all}"))), LOAD),
    CliCase("weights-header-offsets-beyond-file", _eval_tampered("bert", _bytes(_header(
        b'{"x": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 4000000]}}'))), LOAD),
    CliCase("weights-wrong-shape", _eval_tampered("bert", _weights(_set("query.weight", lambda t: t[:16]))),
            LOAD),  # transformers 4 says "size mismatch", 5 "ignore_mismatched_sizes"
    CliCase("weights-missing-tensor", _eval_tampered("bert", _weights(_pop("query.weight"))),
            ("lack 1 tensor(s)", "query.weight", "incomplete")),
    CliCase("weights-missing-classifier", _eval_tampered("bert", _weights(_pop("classifier.weight"))),
            ("lack 1 tensor(s)", "classifier.weight")),
    CliCase("weights-nan", _eval_tampered("bert", _weights(_set("classifier.weight", lambda t: t * float("nan")))),
            ("NaN or infinite logits",)),
    CliCase("weights-inf", _eval_tampered("bert", _weights(_set("classifier.bias", lambda t: t + float("inf")))),
            ("NaN or infinite logits",)),
    CliCase("weights-file-missing", _eval_tampered("bert", _unlink("model.safetensors")), LOAD + ("no file named",)),
    CliCase("weights-a-directory", _eval_tampered("bert", lambda m: ((m / "model.safetensors").unlink(),
                                                                    (m / "model.safetensors").mkdir())), LOAD),
    CliCase("config-not-json", _eval_tampered("bert", _write("config.json", "{not json")), CONFIG),
    CliCase("config-a-list", _eval_tampered("bert", _write("config.json", "[]")), CONFIG),
    CliCase("config-empty-mapping", _eval_tampered("bert", _write("config.json", "{}")), ("bert",)),  # 4.x guesses BERT from the name
    CliCase("config-unknown-model-type", _eval_tampered("bert", _config(lambda c: {**c, "model_type": "nonexistent"})),
            LOAD + ("model type `nonexistent`",)),
    CliCase("config-missing", _eval_tampered("bert", _unlink("config.json")), ("no config.json",)),
    CliCase("config-five-labels", _eval_tampered("bert", _config(lambda c: {
        k: v for k, v in {**c, "num_labels": 5}.items() if k not in ("id2label", "label2id")})), ("predicts 5 classes",)),
    CliCase("config-hidden-size-changed", _eval_tampered("bert", _config(lambda c: {**c, "hidden_size": 64})),
            LOAD),  # transformers 4 says "size mismatch", 5 "ignore_mismatched_sizes"
    CliCase("config-base-encoder", _eval_tampered("bert", _config(lambda c: {**c, "architectures": ["BertModel"]})),
            ("not a sequence classifier",)),
    CliCase("tokenizer-missing", _eval_tampered("bert", _unlink("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                                                "special_tokens_map.json")), ("no usable tokenizer",)),
    CliCase("tokenizer-garbage", _eval_tampered("bert", _write("tokenizer.json", "{garbage")), ("no usable tokenizer",)),
    CliCase("quantization-unknown-scheme", lambda lab: _stage_eval(lab, _config(lambda c: _qset(c, scheme="int3_magic"))),
            ("int3_magic",)),
    CliCase("quantization-newer-format", lambda lab: _stage_eval(lab, _config(lambda c: _qtop(c, format_version=99))),
            ("format_version 99 is newer",)),
    CliCase("quantization-config-dropped", lambda lab: _stage_eval(lab, _config(
        lambda c: {k: v for k, v in c.items() if k != "quantization_config"})), ("could not load the model",)),
]


def _qtop(cfg, **changes):
    cfg["quantization_config"].update(changes)
    return cfg


def _qset(cfg, **changes):
    for module in cfg["quantization_config"]["modules"].values():
        module.update(changes)
    return cfg


_RUN = {}


def _stage_eval(lab, tamper):
    """The int8 stage output of a one-stage run, tampered, evaluated."""
    import shutil

    if "run" not in _RUN:
        _RUN["run"] = quantized_run(lab._sources, lab._sources.root / "q-run")
    model = shutil.copytree(_RUN["run"] / "q", lab.root / "q")
    tamper(model)
    return ["eval", model, "--dataset", lab.csv(), *FAST]


@pytest.mark.parametrize("case", ids(TORCH_CASES))
def test_a_tampered_checkpoint_is_one_clear_error(case, lab, capsys):
    case.replay(lab, capsys)


@pytest.mark.parametrize("change", ["float16-weights", "extra-tensor"])
def test_what_transformers_loads_faithfully_is_scored(change, lab, capsys):
    """A weight stored in float16 is cast exactly; an unused extra tensor is ignored: both score as the original."""
    import torch

    fn = (_set("query.weight", lambda t: t.to(torch.float16)) if change == "float16-weights"
          else lambda sd: {**sd, "evil.weight": torch.zeros(3)})
    rc, out, err = cli(capsys, _eval_tampered("bert", _weights(fn))(lab))
    assert rc == 0 and '"accuracy"' in out, err[-2000:]


# stage outputs: `hf-optim verify` (and every run that reuses or reads them) checks the recorded digests
def _verify_tampered(tamper, *words):
    def build(lab):
        import shutil

        if "run" not in _RUN:
            _RUN["run"] = quantized_run(lab._sources, lab._sources.root / "q-run")
        run = shutil.copytree(_RUN["run"], lab.root / "run")
        tamper(run / "q")
        return ["verify", run]
    return build


def _flip(model):
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def _marker(fn):
    def tamper(model):
        path = model / "hf_optim_stage.json"
        path.write_text(fn(path.read_text()))
    return tamper


def _digests(fn):
    return _marker(lambda t: json.dumps({**json.loads(t), "files_sha256": fn(json.loads(t)["files_sha256"])}))


STAGE_CASES = [
    CliCase("stage-flipped-byte", _verify_tampered(_flip), ("model.safetensors",)),
    CliCase("stage-truncated-weights", _verify_tampered(_bytes(lambda b: b[:100])), ("model.safetensors",)),
    CliCase("stage-weights-deleted", _verify_tampered(_unlink("model.safetensors")), ("model.safetensors",)),
    CliCase("stage-weights-replaced", _verify_tampered(_weights(_set("query.weight", lambda t: t * 0))),
            ("model.safetensors",)),
    CliCase("stage-digest-edited", _verify_tampered(_digests(lambda d: {k: "0" * 64 for k in d})), ("model.safetensors",)),
    CliCase("stage-marker-removed", _verify_tampered(_unlink("hf_optim_stage.json")), ("holds no hf_optim stage output",)),
]


@pytest.mark.parametrize("case", ids(STAGE_CASES))
def test_a_tampered_stage_output_fails_verify(case, lab, capsys):
    case.replay(lab, capsys)


# ONNX exports
def _onnx(tamper):
    return _eval_tampered("onnx", tamper)


def _export_record(fn):
    def tamper(model):
        path = model / "hf_optim_export.json"
        path.write_text(fn(path.read_text()))
    return tamper


def _external_data(model):
    """model.onnx pointing its weights at a file that holds other bytes."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    m = onnx.load(str(model / "model.onnx"))
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=0)
    onnx.save(m, str(model / "model.onnx"))
    data = model / "model.onnx_data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])


ONNX_CASES = [
    CliCase("onnx-truncated", _onnx(_bytes(lambda b: b[:len(b) // 2], "model.onnx")), ("model.onnx",)),
    CliCase("onnx-garbage", _onnx(_bytes(lambda b: b"\x00garbage" * 100, "model.onnx")), ("model.onnx",)),
    CliCase("onnx-empty", _onnx(_bytes(lambda b: b"", "model.onnx")), ("model.onnx",)),
    CliCase("onnx-wrong-external-data", _onnx(_external_data), ("model.onnx",)),
    CliCase("onnx-missing-tokenizer", _onnx(_unlink("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                                    "special_tokens_map.json")), ("no usable tokenizer",)),
    CliCase("onnx-record-not-json", _onnx(_export_record(lambda t: "{garbage")), ("hf_optim_export.json",)),
    CliCase("onnx-record-a-list", _onnx(_export_record(lambda t: "[1, 2]")), ("hf_optim_export.json",)),
    CliCase("onnx-record-names-another-file", _onnx(_export_record(lambda t: json.dumps(
        {**json.loads(t), "file_name": "../../etc/passwd"}))), ("hf_optim_export.json", "export the model again")),
    CliCase("onnx-config-five-labels", _onnx(_config(lambda c: {
        k: v for k, v in {**c, "num_labels": 5}.items() if k not in ("id2label", "label2id")})), ("5",)),
]


@pytest.mark.parametrize("case", ids(ONNX_CASES))
def test_a_corrupted_onnx_export_is_one_clear_error(case, lab, capsys):
    case.replay(lab, capsys)


def test_an_onnx_export_with_its_model_removed_is_not_a_model(lab, capsys):
    model = lab.model("onnx")
    (model / "model.onnx").unlink()
    rc, _, err = cli(capsys, ["eval", model, "--dataset", lab.csv(), *FAST])
    assert rc == 2 and one_error(err, ())
