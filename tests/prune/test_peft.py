"""LoRA (peft) on a structurally pruned model: trains, merges, and the merged model saves and reloads.

peft is not a dependency of hf_optim: the test runs where it is installed and is skipped elsewhere.
"""

import pytest
import torch

peft = pytest.importorskip("peft")


def test_lora_trains_and_merges_on_a_pruned_model(tmp_path):
    import hf_optim  # noqa: F401  from_pretrained restores the pruned shapes
    from transformers import AutoModelForSequenceClassification

    from hf_optim.prune import prune_structured_
    from hf_optim.testing import tiny_bert

    pruned = tiny_bert(seed=1)
    prune_structured_(pruned, heads={0: [0, 1]}, ffn={1: list(range(16))})
    pruned.save_pretrained(tmp_path / "pruned")
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned")
    model = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=4,
                                                      init_lora_weights=False))
    query = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert query.base_layer.weight.shape == (16, 32) and query.lora_A["default"].weight.shape == (4, 32)
    ids, labels = torch.randint(5, 60, (4, 7)), torch.tensor([0, 1, 0, 1])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert reloaded.bert.encoder.layer[0].attention.self.query.weight.shape == (16, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, adapted, rtol=0, atol=1e-5)
