"""Distillation losses against hand computations on fixed tensors."""

import math

import pytest
import torch

from hf_optim.distill.losses import attention_kl, default_layer_map, hidden_mse, soft_kl, token_mask


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(xs, t):
    e = [math.exp(x / t) for x in xs]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_kl_matches_hand_computation(temperature):
    s = [[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]]
    t = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]
    expected = sum(_kl(_softmax(tr, temperature), _softmax(sr, temperature)) for sr, tr in zip(s, t)) / 2
    got = soft_kl(torch.tensor(s), torch.tensor(t), temperature)
    assert got.item() == pytest.approx(expected * temperature ** 2, rel=1e-5)


def test_soft_kl_is_zero_for_identical_logits_and_mask_drops_rows():
    x = torch.randn(4, 5)
    assert soft_kl(x, x.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    mask = torch.tensor([1, 0, 1, 0])
    assert soft_kl(s, t, 2.0, mask).item() == pytest.approx(soft_kl(s[[0, 2]], t[[0, 2]], 2.0).item(), rel=1e-6)


def test_chunked_kl_equals_unchunked_in_value_and_gradient():
    torch.manual_seed(0)
    s1 = torch.randn(3, 7, 50, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    t = torch.randn(3, 7, 50)
    mask = torch.rand(3, 7) > 0.3
    full = soft_kl(s1, t, 2.0, mask)
    chunked = soft_kl(s2, t, 2.0, mask, chunk_size=4)
    full.backward()
    chunked.backward()
    assert chunked.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7)
    assert s1.grad[~mask].abs().max() == 0  # masked positions receive no gradient


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="label set"):
        soft_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_token_mask_drops_padding_and_ignored_labels_and_shifts_for_causal_lm():
    am = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    labels = torch.tensor([[5, -100, 7, -100], [-100, 3, 4, 6]])
    tok = token_mask((2, 4), labels, am, causal=False)
    assert tok.tolist() == [[True, False, True, False], [False, True, True, True]]
    causal = token_mask((2, 4), labels, am, causal=True)
    # position i predicts token i+1: counts only if token i+1 is real and labelled; last position never counts
    assert causal.tolist() == [[False, True, False, False], [False, True, True, False]]
    no_labels = token_mask((2, 4), None, am, causal=True)
    assert no_labels.tolist() == [[True, True, False, False], [False, True, True, False]]


def test_hidden_mse_with_mask_and_projection():
    s = [torch.ones(1, 3, 2), torch.zeros(1, 3, 2)]
    t = [torch.zeros(1, 3, 4), torch.full((1, 3, 4), 2.0)]
    proj = torch.nn.Linear(2, 4, bias=False)
    torch.nn.init.zeros_(proj.weight)
    mask = torch.tensor([[1, 1, 0]])
    # projection outputs 0 everywhere: layer0 err 0, layer1 err 4 -> mean 2
    assert hidden_mse(s, t, [[0, 0], [1, 1]], proj, mask).item() == pytest.approx(2.0)
    t[1][0, 2] = 100.0  # a padded position: ignored
    assert hidden_mse(s, t, [[0, 0], [1, 1]], proj, mask).item() == pytest.approx(2.0)


def test_attention_kl_hand_value():
    t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # (1 batch, 1 head, 2 queries, 2 keys)
    s = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
    expected = (_kl([0.5, 0.5], [0.25, 0.75]) + math.log(1 / 0.5)) / 2
    assert attention_kl([s], [t], [[1, 1]]).item() == pytest.approx(expected, rel=1e-5)
    assert attention_kl([s], [t], [[1, 1]], torch.tensor([[1, 0]])).item() == pytest.approx(
        _kl([0.5, 0.5], [0.25, 0.75]), rel=1e-5)


def test_default_layer_map():
    assert default_layer_map(3, 6, with_embeddings=True) == [[0, 0], [1, 2], [2, 4], [3, 6]]
    assert default_layer_map(2, 2, with_embeddings=False) == [[1, 1], [2, 2]]
