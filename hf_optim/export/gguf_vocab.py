"""The tokenizer part of a GGUF file (``tokenizer.ggml.*`` keys and the chat template), as llama.cpp's
``convert_hf_to_gguf.py`` writes it for byte-level BPE tokenizers (``_set_vocab_gpt2``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["load_tokenizer", "add_tokenizer", "pre_tokenizer_name"]


def load_tokenizer(tokenizer: Any):
    """A tokenizer object, loaded from a directory when given one; ``None`` when there is none."""
    if tokenizer is None or not isinstance(tokenizer, (str, Path)):
        return tokenizer
    path = Path(tokenizer)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _tokenizer_json(tok) -> dict | None:
    backend = getattr(tok, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def _has(node: Any, kind: str, **fields: Any) -> bool:
    """Whether a tokenizers component (or a ``Sequence`` of them) contains ``kind`` with ``fields``."""
    if not isinstance(node, dict):
        return False
    if node.get("type") == kind and all(node.get(k) == v for k, v in fields.items()):
        return True
    return any(_has(child, kind, **fields) for child in node.get("pretokenizers", node.get("decoders", [])) or [])


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for the tokenizer's pre-tokenizer: the GPT-2 split (``gpt-2``), the
    same with single digits split first (SmolLM's, ``smollm``), else llama.cpp's ``default``."""
    pre = spec.get("pre_tokenizer")
    if not _has(pre, "ByteLevel", use_regex=True):
        return "default"
    if _has(pre, "Digits", individual_digits=True):
        return "smollm"
    return "gpt-2"


def add_tokenizer(writer, tok, vocab_size: int, notes: list[str]) -> str:
    """Add ``tok`` to ``writer``; returns the ``tokenizer.ggml.model`` written (``"gpt2"`` or ``"none"``)."""
    import gguf

    spec = _tokenizer_json(tok) if tok is not None else None
    model = (spec or {}).get("model", {})
    if spec is None or model.get("type") != "BPE" or not _has(spec.get("pre_tokenizer"), "ByteLevel"):
        kind = "no tokenizer" if tok is None else f"a {model.get('type') or type(tok).__name__} tokenizer"
        notes.append(f"{kind}: the GGUF file has no vocabulary (tokenizer.ggml.model 'none'); runtimes need token "
                     "ids (GGUF holds byte-level BPE tokenizers)")
        writer.add_tokenizer_model("none")
        return "none"
    pre = pre_tokenizer_name(spec)
    if pre == "default":
        notes.append("pre-tokenizer not recognised: llama.cpp's 'default' split is used")
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in getattr(tok, "added_tokens_decoder", {}).values()}
    tokens, types = [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:  # the embedding has rows the tokenizer never produces
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif text in added:
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL if added[text] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    if len(by_id) > vocab_size:
        notes.append(f"the tokenizer has {len(by_id)} tokens, the model {vocab_size} rows: ids >= {vocab_size} dropped")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # gguf's SpecialVocab reads merges, special ids, add_bos/eos and the chat template from saved tokenizer files.
    with tempfile.TemporaryDirectory(prefix="hf_optim-gguf-tok-") as tmp:
        tok.save_pretrained(tmp)
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=vocab_size)
        for kind in ("bos", "eos", "unk", "pad"):  # the tokenizer object is the authority, not its config files
            tid = getattr(tok, f"{kind}_token_id", None)
            if tid is not None and 0 <= tid < vocab_size:
                special.special_token_ids[kind] = tid
        if isinstance(getattr(tok, "chat_template", None), str):
            special.chat_template = tok.chat_template
        special.add_to_gguf(writer, quiet=True)
    return "gpt2"
