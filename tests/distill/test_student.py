"""make_student: exact copies, importance-based width, reload through plain from_pretrained, clear errors."""

import pytest
import torch

from hf_optim.distill import make_student
from hf_optim.testing import tiny_bert, tiny_llama


def _roberta(layers=4):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, attn_implementation="eager")).eval()


def _distilbert(layers=4):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=60, dim=32, n_layers=layers, n_heads=4, hidden_dim=64, max_position_embeddings=40,
        attn_implementation="eager")).eval()


FAMILIES = {
    "bert": lambda: tiny_bert(num_hidden_layers=4),
    "roberta": _roberta,
    "distilbert": _distilbert,
    "llama": lambda: tiny_llama(num_hidden_layers=4),
}


def _ids():
    return torch.randint(5, 55, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_full_student_reproduces_the_teacher_exactly(family):
    teacher = FAMILIES[family]()
    student = make_student(teacher, num_layers=4)
    assert torch.equal(student(input_ids=_ids()).logits, teacher(input_ids=_ids()).logits)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reduced_student_saves_and_reloads_with_plain_from_pretrained(family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    teacher = FAMILIES[family]()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = make_student(teacher, num_layers=2, hidden_size=16, num_heads=2, intermediate_size=24)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched
    student.save_pretrained(tmp_path)
    auto = AutoModelForCausalLM if family == "llama" else AutoModelForSequenceClassification
    reloaded = auto.from_pretrained(tmp_path, attn_implementation="eager").eval()  # same kernels as the original
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in student.state_dict().items())
    assert torch.equal(reloaded(input_ids=_ids()).logits, student(input_ids=_ids()).logits)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 2


@pytest.mark.parametrize("layers,expected", [("uniform", [0, 2, 5]), ("first", [0, 1, 2]), ("last", [3, 4, 5]),
                                             ([5, 1, 3], [5, 1, 3])])
def test_student_layers_are_the_teachers_selected_layers(layers, expected):
    teacher = tiny_bert(num_hidden_layers=6)
    student = make_student(teacher, num_layers=3, layers=layers)
    for i, t in enumerate(expected):
        for (k, v), (_, w) in zip(student.bert.encoder.layer[i].state_dict().items(),
                                  teacher.bert.encoder.layer[t].state_dict().items()):
            assert torch.equal(v, w), k
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)


def test_width_reduction_keeps_the_most_important_units_not_the_first():
    teacher = tiny_bert(num_hidden_layers=2)
    with torch.no_grad():  # make hidden dims 20..31, FFN neurons 40..63 and head 3 clearly the most important
        for layer in teacher.bert.encoder.layer:
            layer.intermediate.dense.weight[40:] *= 20
            layer.attention.self.query.weight[24:32] *= 20
        for p in teacher.parameters():
            if p.dim() == 2 and p.shape[-1] == 32:
                p[:, 20:] *= 10
    student = make_student(teacher, num_layers=2, hidden_size=12, num_heads=2, intermediate_size=24)
    emb = teacher.bert.embeddings.word_embeddings.weight
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, emb[:, 20:])
    t0, s0 = teacher.bert.encoder.layer[0], student.bert.encoder.layer[0]
    assert torch.equal(s0.intermediate.dense.weight, t0.intermediate.dense.weight[40:][:, 20:])
    kept_q_rows = s0.attention.self.query.weight  # head 3 (rows 24..31) is kept, 6 of its 8 dims
    head3 = t0.attention.self.query.weight[24:32][:, 20:]
    assert sum(any(torch.equal(r, h) for h in head3) for r in kept_q_rows) == 6
    # heads have 8 dims; 1 head of 12 > 8 dims is impossible, so this asks for 2 heads of 6 below


def test_llama_keeps_whole_kv_groups():
    teacher = tiny_llama()  # 4 heads, 2 kv heads, head_dim 8
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.self_attn.k_proj.weight[8:] *= 50  # kv head 1 (query heads 2, 3) dominates
    student = make_student(teacher, num_layers=2, num_heads=2)
    assert (student.config.num_attention_heads, student.config.num_key_value_heads) == (2, 1)
    t, s = teacher.model.layers[0].self_attn, student.model.layers[0].self_attn
    assert torch.equal(s.k_proj.weight, t.k_proj.weight[8:])
    assert torch.equal(s.q_proj.weight, t.q_proj.weight[16:])
    assert torch.equal(s.o_proj.weight, t.o_proj.weight[:, 16:])


def test_activation_importance_uses_sample_inputs():
    teacher = tiny_bert(num_hidden_layers=2)
    sample = {"input_ids": _ids(), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    student = make_student(teacher, num_layers=1, hidden_size=16, num_heads=2, sample_inputs=sample)
    assert student.config.hidden_size == 16 and student(**sample).logits.shape == (2, 2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_layers=3), "has 2 layers"),
    (dict(num_layers=0), "has 2 layers"),
    (dict(num_layers=2, layers=[0, 0]), "distinct"),
    (dict(num_layers=2, layers="middle"), "uniform"),
    (dict(num_layers=1, hidden_size=64), "cannot be wider"),
    (dict(num_layers=1, intermediate_size=128), "feed-forward"),
    (dict(num_layers=1, hidden_size=30, num_heads=4), "does not divide"),
    (dict(num_layers=1, hidden_size=32, num_heads=2), "head size 16 exceeds"),
    (dict(num_layers=1, num_heads=8), "1..4"),
])
def test_impossible_requests_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_student(tiny_bert(), **kwargs)


def test_llama_head_count_must_keep_groups_and_unsupported_architecture():
    with pytest.raises(ValueError, match="multiple of 2"):
        make_student(tiny_llama(), num_layers=1, num_heads=3)
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match="supports model types"):
        make_student(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50)), num_layers=1)
