"""INT4 token embeddings in the ONNX export, and export of structurally pruned models."""

import onnx
import pytest

import hf_optim  # noqa: F401
from hf_optim.errors import ConfigError
from hf_optim.export import ExportConfig, export_model
from hf_optim.export.embeddings import quantize_embeddings_int4, word_embedding_gathers
from hf_optim.prune import prune_structured_
from hf_optim.testing import tiny_bert, tiny_bert_tokenizer


@pytest.fixture
def pruned_dir(tmp_path):
    model = tiny_bert(seed=2, vocab_size=2048)  # a table big enough that its int4 form is clearly smaller
    prune_structured_(model, heads={0: [0, 3]}, ffn={1: [1, 2]})
    model.save_pretrained(tmp_path / "m")
    tiny_bert_tokenizer(tmp_path / "m").save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_pruned_model_exports_with_int4_embeddings(tmp_path, pruned_dir):
    common = dict(validation_samples=32, optimization="O2", quantization="dynamic", max_metric_drop=0.05)
    plain = export_model(pruned_dir, tmp_path / "plain", **common)
    small = export_model(pruned_dir, tmp_path / "emb4", embeddings="int4", embeddings_block_size=32, **common)
    assert small["int4_embedding_tables"] == 1 and small["ops"]["GatherBlockQuantized"] == 1
    assert "EmbedLayerNormalization" not in small["ops"]
    assert small["validation"]["drop"] <= 0.05 and small["validation"]["agreement"] >= 0.9
    lat = small["validation"]["latency"]  # batch-1 p50 of source and export, measured alternately
    assert lat["n"] == 32 and lat["source_p50_ms"] > 0 and lat["candidate_p50_ms"] > 0
    # 2048 x 32 table: int8 (plain, 64 KiB) -> int4 + one float scale per 32 values (40 KiB)
    assert small["size_mb"] < plain["size_mb"] - 0.015
    graph = onnx.load(str(tmp_path / "emb4" / "model.onnx"))
    assert word_embedding_gathers(graph) == []  # the token lookup is no longer a plain Gather


def test_int4_embeddings_need_a_plain_gather(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["input_ids"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="EmbedLayerNormalization"):
        quantize_embeddings_int4(tmp_path / "m.onnx", tmp_path / "q.onnx")
    with pytest.raises(ValueError, match="power of two"):
        quantize_embeddings_int4(tmp_path / "m.onnx", tmp_path / "q.onnx", block_size=24)


def test_embedding_options_are_validated():
    with pytest.raises(ConfigError, match="power of two"):
        ExportConfig(model="m", embeddings="int4", embeddings_block_size=48).validate()
    with pytest.raises(ConfigError, match="classifiers only"):
        ExportConfig(model="m", task="bbc-news", task_type="causal-lm", embeddings="int4").validate()
