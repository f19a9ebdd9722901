"""Cards of portable artifacts: they name the runtimes that load them, and their Python loader code runs, as
written, in an interpreter that cannot import hf_optim and gives hf_optim's logits."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from hf_optim.export import ExportConfig, export_model
from hf_optim.quantize import QuantizeConfig, quantize_model_
from hf_optim.report.card import build_model_card
from hf_optim.report.card_meta import CardConfig
from hf_optim.testing import tiny_llama

from ..isolated import run_without_hf_optim

# Runs after the card's code: the logits of the token ids in argv[1], saved to argv[2].
_LOGITS = """
import sys as _s
import torch as _t
_ids = _t.load(_s.argv[1], weights_only=True)
with _t.no_grad():
    _t.save(model(input_ids=_ids).logits.float(), _s.argv[2])
"""


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, re.S)


def bash_blocks(card: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", card, re.S)


def run_card_snippet(card: str, folder, ids: torch.Tensor, tmp_path) -> torch.Tensor:
    """The card's Transformers code, run from the folder its paths are relative to (the artifact's parent), then
    the logits of ``ids``."""
    code = next(b for b in python_blocks(card) if "from transformers import" in b)
    torch.save(ids, tmp_path / "ids.pt")
    run_without_hf_optim(code + _LOGITS, [str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")], folder)
    return torch.load(tmp_path / "out.pt", weights_only=True)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.fixture(scope="module")
def base():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def ids(base):
    return torch.randint(0, base.config.vocab_size - 3, (2, 12), generator=torch.Generator().manual_seed(1))


def _saved(model, path, tiny_llama_dir):
    """``model`` saved with the tiny Llama's tokenizer (what a quantize stage writes)."""
    from transformers import AutoTokenizer

    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    return path


@pytest.mark.multiprocess
@pytest.mark.parametrize("qtype,scheme,bound", [("f32", None, 1e-5), ("auto", "int4_weight_only", 2e-3)])
def test_gguf_card_code_loads_without_hf_optim(base, ids, tiny_llama_dir, tmp_path, qtype, scheme, bound,
                                                monkeypatch):
    """Transformers' GGUF reader (``gguf`` package) on the card's code: hf_optim's logits within ``bound`` (f32:
    the same weights; auto: hf_optim's int4 grid with its scales rounded to float16, GGML's block scale)."""
    pytest.importorskip("gguf", reason="transformers reads GGUF files with the gguf package, not installed here")
    monkeypatch.setenv("HF_OPTIM_INT4_KERNEL", "0")  # hf_optim's reference: the dequantized weights in fp32
    model = copy.deepcopy(base)
    if scheme:
        model = quantize_model_(model, QuantizeConfig(model="tiny-llama", scheme=scheme, group_size=32))
    src = _saved(model, tmp_path / "src", tiny_llama_dir)
    out = tmp_path / "pub" / "tiny-gguf"
    export_model(src, out, ExportConfig(model=str(src), format="gguf", gguf_type=qtype))
    card = (out / "README.md").read_text()
    head = card.split("## Results")[0]
    for runtime in ("llama.cpp", "llama-cpp-python", "Ollama", "Transformers"):
        assert runtime in head
    meta = card.split("---")[1]
    assert "library_name: gguf" in meta and "- gguf" in meta
    types = {t["type"] for t in json.loads((out / "hf_optim_export.json").read_text())["report"]["tensors"].values()}
    assert all(f"| {t} |" in card for t in types)  # the per-tensor types, summarised
    if scheme:
        assert "- q4_0" in meta and "hf_optim's grid, integers as they are" in card
    shell = "\n".join(bash_blocks(card))
    assert "llama-cli -m ./tiny-gguf/model.gguf" in shell and "FROM ./tiny-gguf/model.gguf" in shell
    assert 'Llama(model_path="./tiny-gguf/model.gguf")' in card
    got = run_card_snippet(card, out.parent, ids, tmp_path)
    torch.testing.assert_close(got, _logits(model, ids), atol=bound, rtol=0)
    hub = build_model_card(out, repo_id="someone/tiny-gguf", card=CardConfig())
    assert "hf download someone/tiny-gguf model.gguf --local-dir tiny-gguf" in hub
    assert 'from_pretrained("someone/tiny-gguf", gguf_file="model.gguf"' in hub


@pytest.mark.multiprocess
def test_compressed_tensors_card_code_loads_without_hf_optim(base, ids, tiny_llama_dir, tmp_path, monkeypatch):
    pytest.importorskip("compressed_tensors", reason="transformers reads compressed-tensors checkpoints with it")
    monkeypatch.setenv("HF_OPTIM_INT4_KERNEL", "0")
    model = quantize_model_(copy.deepcopy(base), QuantizeConfig(model="tiny-llama", scheme="int4_weight_only",
                                                                group_size=32))
    src = _saved(model, tmp_path / "src", tiny_llama_dir)
    out = tmp_path / "pub" / "tiny-w4a16"
    export_model(src, out, ExportConfig(model=str(src), format="compressed-tensors"))
    card = (out / "README.md").read_text()
    assert "Loads without hf-optim** in Transformers (with `pip install compressed-tensors`) and vLLM" in card
    meta = card.split("---")[1]
    assert "library_name: transformers" in meta and "- compressed-tensors" in meta and "- int4" in meta
    assert "base_model_relation" not in meta  # no Hub id for the tiny model: no base model to relate to
    assert "vllm serve ./tiny-w4a16" in "\n".join(bash_blocks(card))
    assert "pip install transformers compressed-tensors" in card and "import hf_optim" not in card
    got = run_card_snippet(card, out.parent, ids, tmp_path)
    torch.testing.assert_close(got, _logits(model, ids), atol=1e-4, rtol=0)


def test_asymmetric_compressed_tensors_card_sends_readers_to_vllm(base, tmp_path, tiny_llama_dir):
    model = quantize_model_(copy.deepcopy(base), QuantizeConfig(model="tiny-llama", scheme="int4_weight_only",
                                                                group_size=32, symmetric=False))
    src = _saved(model, tmp_path / "src", tiny_llama_dir)
    export_model(src, tmp_path / "asym", ExportConfig(model=str(src), format="compressed-tensors"))
    card = (tmp_path / "asym" / "README.md").read_text()
    assert "Loads without hf-optim in vLLM" in card and "llm-compressor/issues/1618" in card
    assert not any("from transformers import" in b for b in python_blocks(card))  # no code that would fail
    assert "vllm serve ./asym" in card and 'LLM("./asym")' in card


@pytest.mark.multiprocess
def test_dense_checkpoint_card_code_loads_without_hf_optim(ids, tmp_path, tiny_llama_dir):
    """A float model uniformly pruned (a narrower FFN in every layer): a plain dense checkpoint and card."""
    model = tiny_llama(seed=0, intermediate_size=48)
    src = _saved(model, tmp_path / "src", tiny_llama_dir)
    out = tmp_path / "pub" / "dense"
    export_model(src, out, ExportConfig(model=str(src), format="compressed-tensors"))
    card = (out / "README.md").read_text()
    assert "Loads without hf-optim** in Transformers and vLLM" in card and "library_name: transformers" in card
    torch.testing.assert_close(run_card_snippet(card, out.parent, ids, tmp_path), _logits(model, ids),
                               atol=1e-5, rtol=0)


@pytest.mark.multiprocess
def test_plain_classifier_card_code_loads_without_hf_optim(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    card = build_model_card(tiny_bert_dir, card=CardConfig(methods=["finetune"]))
    assert "Loads without hf-optim** in Transformers:" in card
    ids = torch.randint(5, 90, (2, 10), generator=torch.Generator().manual_seed(0))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    torch.testing.assert_close(run_card_snippet(card, tiny_bert_dir.parent, ids, tmp_path), _logits(model, ids),
                               atol=1e-5, rtol=0)


def test_hf_optim_format_card_still_says_it_needs_hf_optim(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    quantize_model_(model, QuantizeConfig(model="tiny-bert", scheme="int8_weight_only"))
    model.save_pretrained(tmp_path / "q")
    card = build_model_card(tmp_path / "q", card=CardConfig())
    first = card.split("---", 2)[2].strip().splitlines()[:4]
    assert any("Loading needs hf-optim" in line for line in first) and "Loads without hf-optim" not in card
    assert "library_name: hf-optim" in card


def test_every_path_to_a_gguf_card(tiny_llama_dir, tmp_path, fake_hub, capsys):
    """The export stage and `hf-optim export` write the card; `hf-optim card` and both pushes recognise a GGUF
    folder, upload the .gguf with its card, and write that card again for the Hub repository while unchanged."""
    pytest.importorskip("gguf")
    from hf_optim.cli import main
    from hf_optim.hub import push_artifact, push_to_hub

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nstages:\n  - {{name: gg, kind: export, model: {tiny_llama_dir}, task: bbc-news, "
                      "format: gguf, gguf_type: q8_0}\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "run"), "-q"]) == 0
    stage = tmp_path / "run" / "gg"
    card = (stage / "README.md").read_text()
    assert "llama-cli -m ./gg/model.gguf" in card and "- q8_0" in card and "- int8" not in card
    assert not (stage / ".staging").exists()
    assert main(["card", str(stage), "--stdout"]) == 0
    run_card = capsys.readouterr().out
    assert "`gg` is the output of the `export` stage" in run_card and "Loads without hf-optim" in run_card
    pushed = push_artifact(stage, "someone/gg", dry_run=True)
    assert {"model.gguf", "README.md"} <= {name for name, _ in pushed.files}
    push_artifact(stage, "someone/gg")
    uploaded = fake_hub["create_commit"]["contents"]["README.md"].decode()
    assert 'from_pretrained("someone/gg", gguf_file="model.gguf"' in uploaded

    out = tmp_path / "cli-gguf"
    assert main(["export", str(tiny_llama_dir), "-o", str(out), "--format", "gguf", "-q"]) == 0
    assert "llama-cli -m ./cli-gguf/model.gguf" in (out / "README.md").read_text()
    capsys.readouterr()
    assert main(["card", str(out), "--stdout"]) == 0
    assert "library_name: gguf" in capsys.readouterr().out
    push_to_hub(out, "someone/cli-gguf")
    contents = fake_hub["create_commit"]["contents"]
    assert "model.gguf" in contents and "hf download someone/cli-gguf model.gguf" in contents["README.md"].decode()
    (out / "README.md").write_text("my own words\n")  # an edited card is the author's: uploaded as it is
    push_to_hub(out, "someone/cli-gguf")
    assert fake_hub["create_commit"]["contents"]["README.md"] == b"my own words\n"


def _pruned(model, tokenizer_dir, path, heads=None, ffn=None):
    from transformers import AutoTokenizer

    from hf_optim.prune.structure import prune_structured_

    prune_structured_(model, heads=heads, ffn=ffn)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_layers_pruned_to_different_sizes_say_exactly_what_readers_need(arch, tiny_llama_dir, tiny_bert_dir,
                                                                       tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hf_optim.errors import ConfigError

    if arch == "llama":
        src = _pruned(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tiny_llama_dir, tmp_path / "p",
                      heads={1: [0]}, ffn={0: list(range(20))})
        layers, fix = "layer 0: 4 heads (2 key/value), FFN 44; layer 1: 2 heads (1 key/value), FFN 64", "ranking: per_layer"
    else:
        src = _pruned(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir), tiny_bert_dir,
                      tmp_path / "p", heads={0: [0]}, ffn={1: list(range(10))})
        layers, fix = "layer 0: 3 heads, FFN 64; layer 1: 4 heads, FFN 54", "heads: 0"
    with pytest.raises(ConfigError) as error:
        export_model(src, tmp_path / "ct", ExportConfig(model=str(src), format="compressed-tensors"))
    message = str(error.value)
    assert layers in message and "needs hf_optim to load" in message and "pip install hf-optim" in message
    assert "import hf_optim` before `from_pretrained`" in message and fix in message
    assert "--format compressed-tensors --pad-uneven`, the export stage's `pad_uneven: true`" in message
    assert not (tmp_path / "ct").exists()
    card = build_model_card(src, card=CardConfig())
    assert "Loading needs hf-optim" in card and "Pruned to different sizes per layer" in card
    assert layers.replace(" (2 key/value)", "").replace(" (1 key/value)", "") in card
    assert "`hf-optim export DIR -o OUT --format compressed-tensors --pad-uneven` writes a plain checkpoint" in card


@pytest.mark.multiprocess
def test_uniformly_pruned_classifier_is_a_plain_checkpoint(tiny_bert_dir, tmp_path):
    """A BERT classifier whose FFN lost the same neurons in every layer: its config's intermediate_size states
    that, so the export is a plain checkpoint (the classifier head kept) that loads without hf_optim."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    src = _pruned(model, tiny_bert_dir, tmp_path / "p", ffn={0: list(range(16)), 1: list(range(16, 32))})
    assert "`hf-optim export DIR -o OUT --format compressed-tensors`" in build_model_card(src, card=CardConfig())
    out = tmp_path / "pub" / "plain"
    export_model(src, out, ExportConfig(model=str(src), format="compressed-tensors"))
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 48 and config["architectures"] == ["BertForSequenceClassification"]
    card = (out / "README.md").read_text()
    assert "Structurally pruned to the same sizes in every layer" in card and "prune" in card.split("## Lineage")[1]
    ids = torch.randint(5, 90, (2, 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run_card_snippet(card, out.parent, ids, tmp_path), _logits(model, ids),
                               atol=1e-5, rtol=0)


def test_directory_kinds_have_one_home(tmp_path, tiny_llama_dir):
    from hf_optim import artifacts
    from hf_optim.artifact_kind import artifact_format, checkpoint_format
    from hf_optim.errors import DataError
    from hf_optim.report.card import artifact_format as card_format

    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF")
    assert artifact_format(folder) == artifact_format(folder / "m.gguf") == checkpoint_format(folder) == "gguf"
    assert artifacts.artifact_format is artifact_format and card_format(folder) == "gguf"
    with pytest.raises(DataError, match="GGUF export"):
        artifacts.load_predictor(folder)
    assert checkpoint_format(tiny_llama_dir) == "transformers" and artifact_format(tiny_llama_dir) == "torch"
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    for method in ("compressed-tensors", "hf_optim"):
        (tiny_llama_dir / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": method}}))
        assert checkpoint_format(tiny_llama_dir) == method


def test_a_gguf_file_saved_from_python_is_carded_from_the_file_itself(base, tmp_path):
    pytest.importorskip("gguf")
    from hf_optim.export import save_gguf

    save_gguf(base, tmp_path / "mine" / "tiny.Q8_0.gguf", qtype="q8_0")  # no export record next to it
    card = build_model_card(tmp_path / "mine", card=CardConfig(base_model="someone/tiny"))
    assert "| Q8_0 | 16 |" in card and "- q8_0" in card and "base_model_relation: quantized" in card
    assert "llama-cli -m ./mine/tiny.Q8_0.gguf" in card and 'gguf_file="tiny.Q8_0.gguf"' in card
    assert "tokenize with the source model's tokenizer" in card  # its tokenizer model is "none"
