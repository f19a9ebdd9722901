"""Tiny offline models and tokenizers built from configs, for hf_optim's tests and for yours.

Everything here is created locally in well under a second; nothing touches the network::

    from hf_optim.testing import save_tiny_bert
    model_dir = save_tiny_bert(tmp_path / "bert")          # config + weights + tokenizer
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["tiny_vocab", "tiny_bert_config", "tiny_bert", "tiny_bert_tokenizer", "save_tiny_bert",
           "tiny_llama_config", "tiny_llama", "tiny_llama_tokenizer", "save_tiny_llama", "save_tiny_onnx"]

_WORDS = ("the a an and or but not no is was are be this that it of to in for on with as by at from film movie "
          "good great bad awful fun boring best worst love hate funny dull story plot acting actor "
          "very too so really just one all more most some").split()


def tiny_vocab() -> list[str]:
    """WordPiece vocab: BERT's specials, letters, ``##`` letters, digits, punctuation and common words."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
    pieces = [f"##{c}" for c in string.ascii_lowercase + string.digits]
    return list(dict.fromkeys(specials + chars + pieces + list(_WORDS)))  # "a" is a letter and a word


def tiny_bert_config(**overrides: Any):
    """A 2-layer BERT config (hidden 32, 4 heads, FFN 64) sized for :func:`tiny_vocab`."""
    from transformers import BertConfig

    kw = dict(vocab_size=len(tiny_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=128, type_vocab_size=2, pad_token_id=0,
              attn_implementation="eager")
    kw.update(overrides)
    return BertConfig(**kw)


def tiny_bert(num_labels: int = 2, seed: int = 0, **config_overrides: Any):
    """A randomly initialised (seeded) tiny ``BertForSequenceClassification``."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = tiny_bert_config(num_labels=num_labels, **config_overrides)
    return BertForSequenceClassification(cfg).eval()


def tiny_bert_tokenizer(directory: str | Path | None = None):
    """A ``BertTokenizerFast`` over :func:`tiny_vocab` (written to ``directory`` or a temp dir)."""
    from transformers import BertTokenizerFast

    if directory is None:  # the vocabulary is read into memory: the folder is not needed afterwards
        with tempfile.TemporaryDirectory(prefix="hf_optim-tok-") as tmp:
            return tiny_bert_tokenizer(tmp)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # transformers 5 ignores BertTokenizerFast(vocab_file=...); loading from a folder works on both.
    (directory / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n")
    return BertTokenizerFast.from_pretrained(directory, model_max_length=128)


def save_tiny_bert(path: str | Path, num_labels: int = 2, seed: int = 0, **config_overrides: Any) -> Path:
    """Write a tiny BERT classifier and its tokenizer to ``path``; returns ``path``."""
    path = Path(path)
    model = tiny_bert(num_labels=num_labels, seed=seed, **config_overrides)
    model.save_pretrained(path)
    tiny_bert_tokenizer(path).save_pretrained(path)
    return path


def _llama_vocab() -> dict[str, int]:
    """Word-level vocab with contiguous ids; ``<s>``, ``</s>``, ``<pad>`` are the last three."""
    words = ["[UNK]"] + [w for w in dict.fromkeys(tiny_vocab()) if not w.startswith(("[", "##"))]
    words += ["<s>", "</s>", "<pad>"]
    return {w: i for i, w in enumerate(words)}


def tiny_llama_config(**overrides: Any):
    """A 2-layer Llama config (hidden 32, 4 heads, 2 KV heads, FFN 64) sized for :func:`tiny_vocab`."""
    from transformers import LlamaConfig

    n = len(_llama_vocab())
    kw = dict(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=64, max_position_embeddings=256, bos_token_id=n - 3, eos_token_id=n - 2,
              pad_token_id=n - 1, tie_word_embeddings=False, attn_implementation="eager")
    kw.update(overrides)
    return LlamaConfig(**kw)


def tiny_llama(seed: int = 0, **config_overrides: Any):
    """A randomly initialised (seeded) tiny ``LlamaForCausalLM``."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**config_overrides)).eval()


def tiny_llama_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` with ``<s>``, ``</s>`` and ``<pad>`` matching :func:`tiny_llama_config`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=_llama_vocab(), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="[UNK]", model_max_length=256,
                                   model_input_names=["input_ids", "attention_mask"])


def save_tiny_llama(path: str | Path, seed: int = 0, **config_overrides: Any) -> Path:
    """Write a tiny Llama causal LM and its tokenizer to ``path``; returns ``path``."""
    path = Path(path)
    tiny_llama(seed=seed, **config_overrides).save_pretrained(path)
    tiny_llama_tokenizer().save_pretrained(path)
    return path


def save_tiny_onnx(model_dir: str | Path, path: str | Path) -> Path:
    """Export the sequence classifier in ``model_dir`` (e.g. from :func:`save_tiny_bert`) to ``path/model.onnx``
    with ``torch.onnx`` (dynamic batch and length), next to its config and tokenizer but not its torch weights, as an
    ONNX export directory is; returns ``path``."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    src, path = Path(model_dir), Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, path / f.name)
    model = AutoModelForSequenceClassification.from_pretrained(src).eval()
    ids = torch.ones(2, 8, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path / "model.onnx"),
                      input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return path
