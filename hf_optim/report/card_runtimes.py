"""What a model card tells someone without hf_optim: the runtimes that load the artifact, and code for each.

A portable artifact (a GGUF file, a compressed-tensors checkpoint, a plain Transformers checkpoint, pruned or not)
loads without hf_optim, so its card names those runtimes and carries loader code that needs none of hf_optim:
:func:`runtime_facts` reads what the directory holds (the export record ``hf_optim_export.json`` where there is
one, else the files themselves), and the ``*_lines`` functions write the card's sections from those facts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..artifact_kind import export_record, gguf_files

__all__ = ["RUNTIMES", "PORTABLE", "runtime_facts", "runtime_tags", "needs_lines", "weights_lines", "usage_lines",
           "limitation_lines", "pruned_lines", "ASYMMETRIC_ISSUE"]

# Which runtimes load each format without hf_optim (the card's first lines and its "How to use" section).
RUNTIMES = {
    "gguf": ["llama.cpp (`llama-cli`, `llama-server`)", "llama-cpp-python", "Ollama",
             "Transformers (`gguf_file=`, dequantized to float; needs `pip install gguf`)"],
    "compressed-tensors": ["Transformers (with `pip install compressed-tensors`)", "vLLM"],
    "transformers": ["Transformers"],
}
PORTABLE = tuple(RUNTIMES)
ASYMMETRIC_ISSUE = "https://github.com/vllm-project/llm-compressor/issues/1618"
_PAD_EXPORT = ("`hf-optim export DIR -o OUT --format compressed-tensors --pad-uneven` writes a plain checkpoint of "
               "it padded with zero units (the same outputs; as large as the widest layer) that loads without "
               "hf-optim.")
_NO_VOCAB = ("The file holds no vocabulary (the source model's tokenizer is not a byte-level BPE, the kind GGUF "
             "stores): runtimes take token ids, so tokenize with the source model's tokenizer.")


def runtime_facts(path: Path, fmt: str, config: dict[str, Any]) -> dict[str, Any]:
    """What the runtime sections of ``path``'s card state: the GGUF file and its tensor types, the tokenizer it
    holds, compressed-tensors' grids, and the export's notes (empty for formats that need hf_optim)."""
    if fmt not in PORTABLE:
        return {}
    record = export_record(path) or {}
    report = record.get("report") or {}
    facts: dict[str, Any] = {"notes": list(report.get("notes") or []), "tensors": report.get("tensors") or {},
                             "source_methods": list(record.get("source_methods") or []),
                             "padding": report.get("padding"), "size_mb": record.get("size_mb")}
    if fmt == "gguf":
        files = gguf_files(path)
        name = record.get("file_name") if record.get("file_name") in {f.name for f in files} else None
        facts["file"] = name or (files[0].name if files else "model.gguf")
        facts["vocabulary"] = report.get("tokenizer")
        if not facts["tensors"] and files:
            facts.update(_read_gguf(path / facts["file"]))
    if fmt == "compressed-tensors":
        qc = config.get("quantization_config") or {}
        groups = [g for g in (qc.get("config_groups") or {}).values() if isinstance(g, dict)]
        facts["grids"] = [{**(g.get("weights") or {}), "format": g.get("format") or qc.get("format")} for g in groups]
        facts["asymmetric_packed"] = any(not g.get("symmetric", True) and g.get("format") == "pack-quantized"
                                         for g in facts["grids"])
    facts["causal_lm"] = fmt == "gguf" or any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])
    facts["sizes"] = {k: config[k] for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                             "intermediate_size") if isinstance(config.get(k), int)}
    return facts


def _read_gguf(file: Path) -> dict[str, Any]:
    """Tensor types and tokenizer model of a GGUF file hf_optim did not record (a file copied in by hand); nothing
    where the ``gguf`` package is missing."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return {}
    try:
        reader = GGUFReader(str(file))
    except Exception:  # noqa: BLE001 - not a GGUF file hf_optim can read: the card states no types
        return {}
    tensors = {t.name: {"type": t.tensor_type.name, "source": "unknown", "from_grid": False} for t in reader.tensors}
    field = reader.fields.get("tokenizer.ggml.model")
    vocab = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    return {"tensors": tensors, "vocabulary": vocab}


def _pruned_sizes(config: dict[str, Any]) -> list[tuple[int, int]] | None:
    """``(heads, FFN width)`` per layer of a pruned hf_optim checkpoint, from the shapes its config records; `None`
    when it records none (or a layout other than Llama's and BERT's)."""
    import re

    shapes = (config.get("quantization_config") or {}).get("linear_shapes") or {}
    layers, heads, hidden = config.get("num_hidden_layers"), config.get("num_attention_heads"), config.get("hidden_size")
    if not shapes or not all(isinstance(v, int) for v in (layers, heads, hidden)):
        return None
    head_dim = config.get("head_dim") or hidden // heads
    sizes = [[heads * head_dim, config.get("intermediate_size")] for _ in range(layers)]
    for name, shape in shapes.items():
        found = re.search(r"\.(?:layers|layer)\.(\d+)\.(self_attn\.q_proj|attention\.self\.query|mlp\.gate_proj|"
                          r"intermediate\.dense)$", name)
        if found and int(found.group(1)) < layers and isinstance(shape.get("out_features"), int):
            column = 0 if found.group(2) in ("self_attn.q_proj", "attention.self.query") else 1
            sizes[int(found.group(1))][column] = shape["out_features"]
    return [(q // head_dim, ffn) for q, ffn in sizes]


def pruned_lines(config: dict[str, Any]) -> list[str]:
    """What a reader of a pruned hf_optim checkpoint needs to know: whether a plain checkpoint of it can exist
    (the same sizes in every layer, stated by the model's own config), and how to write one."""
    sizes = _pruned_sizes(config)
    if not sizes:
        return []
    arch = f"`{config.get('model_type', 'model')}` config"
    per_layer = "; ".join(f"layer {i}: {h} heads, FFN {f}" for i, (h, f) in enumerate(sizes))
    if len(set(sizes)) > 1:
        return [f"Pruned to different sizes per layer ({per_layer}). A {arch} states one size for every layer, so "
                "no plain Transformers checkpoint holds this model: hf-optim's loader rebuilds each layer from the "
                f"shapes `config.json` records. {_PAD_EXPORT}", ""]
    if config.get("model_type") != "llama" and sizes[0][0] != config.get("num_attention_heads"):
        return [f"Pruned attention heads ({per_layer}). A {arch} derives the head size from `hidden_size / "
                f"num_attention_heads`, so it cannot state pruned heads: only hf-optim's loader rebuilds them. "
                f"{_PAD_EXPORT}", ""]
    return [f"Pruned to the same sizes in every layer ({sizes[0][0]} heads, FFN {sizes[0][1]}), which the model's own "
            "config can state: `hf-optim export DIR -o OUT --format compressed-tensors` writes a checkpoint of it that "
            "loads without hf-optim.", ""]


def _quant_types(facts: dict[str, Any]) -> list[str]:
    return sorted({t["type"].lower() for t in facts.get("tensors", {}).values()
                   if t.get("type", "").upper().startswith("Q")})


def runtime_tags(fmt: str, facts: dict[str, Any]) -> set[str]:
    """Hub tags of the format: ``gguf`` and its GGML types (``q4_1`` ...), or ``compressed-tensors`` and its bits."""
    if fmt == "gguf":
        types = _quant_types(facts)
        return {"gguf", *types} | ({"quantization"} if types else set())
    if fmt == "compressed-tensors":
        bits = {f"int{g['num_bits']}" for g in facts.get("grids", []) if g.get("num_bits")}
        return {"compressed-tensors", *bits} | ({"quantization"} if bits else set())
    return set()


def needs_lines(fmt: str, facts: dict[str, Any]) -> list[str]:
    """The card's first words on loading: which runtimes load it without hf_optim."""
    if fmt not in PORTABLE:
        return []
    if fmt == "compressed-tensors" and facts.get("asymmetric_packed"):
        return ["> **Loads without hf-optim in vLLM.** Transformers does not load asymmetric `pack-quantized` "
                f"checkpoints yet (upstream: [llm-compressor#1618]({ASYMMETRIC_ISSUE})); a symmetric export loads in "
                "both (see [How to use](#how-to-use)).", ""]
    runtimes = RUNTIMES[fmt] + (["vLLM"] if fmt == "transformers" and facts.get("causal_lm") else [])
    padded = [f"> Zero-padded: {_padding_text(facts['padding'], facts.get('size_mb'))}. It loads anywhere; it is "
              "as large as the widest layer; for the speed of the pruning use hf-optim or ONNX."] \
        if facts.get("padding") else []
    return [f"> **Loads without hf-optim** in {_join(runtimes)}: see [How to use](#how-to-use).",
            *([">", *padded] if padded else []), ""]


_CONFIG_NAMES = {"heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "ffn": "intermediate_size"}


def _padding_text(padding: dict[str, Any], size_mb: float | None) -> str:
    sizes = ", ".join(f"`{_CONFIG_NAMES.get(k, k)}` {v}" for k, v in padding["padded_to"].items())
    size = f" of this {size_mb:.3g} MB checkpoint" if size_mb else ""
    return (f"every layer padded with zero units to the same sizes ({sizes}); {padding['padding_parameters']:,} of "
            f"{padding['parameters']:,} parameters{size} ({padding['share']:.1%}) are padding, which adds nothing "
            "to the outputs")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def weights_lines(fmt: str, facts: dict[str, Any]) -> list[str]:
    """A ``## Weights`` section: GGUF tensor types and where their values came from, compressed-tensors' grids,
    a pruned model's sizes; empty when there is nothing to say."""
    out: list[str] = []
    if fmt == "gguf" and facts.get("tensors"):
        rows: Counter = Counter()
        worst: dict[tuple, float] = {}
        for t in facts["tensors"].values():
            how = ("hf_optim's grid, integers as they are (scales rounded to float16)" if t.get("from_grid") else
                   {"F32": "float32", "F16": "float16"}[t["type"]] if t.get("type") in ("F32", "F16") else
                   "re-quantized by round-to-nearest" if t.get("source") not in (None, "unknown") else "as read")
            key = (t.get("type", "?"), t.get("source", "unknown"), how)
            rows[key] += 1
            worst[key] = max(worst.get(key, 0.0), float(t.get("max_abs_error") or 0.0))
        out += [f"`{facts['file']}` holds {sum(rows.values())} tensors:", "",
                "| GGML type | tensors | hf_optim's weights | written as | max abs error |",
                "| --- | --- | --- | --- | --- |"]
        out += [f"| {ty} | {n} | {src} | {how} | {worst[(ty, src, how)]:.3g} |"
                for (ty, src, how), n in sorted(rows.items())]
        out += ["", "The error is against the weights hf_optim computes with (its dequantized grid, or the float "
                "weight)."]
        if facts.get("vocabulary") == "none" and not any("vocabulary" in n for n in facts.get("notes", [])):
            out += ["", _NO_VOCAB]
    if fmt == "compressed-tensors" and facts.get("grids"):
        out += [f"- int{g.get('num_bits')} {'symmetric' if g.get('symmetric') else 'asymmetric'}, "
                f"{'group ' + str(g['group_size']) if g.get('group_size') else 'per channel'}, `{g.get('format')}`"
                for g in facts["grids"]]
        out += ["", "Linear layers listed in `config.json`'s `ignore` (the output head) stay in float."]
    if facts.get("padding"):
        per_layer = "; ".join(f"layer {i}: {s.get('heads')} heads"
                              + (f" ({s['kv_heads']} key/value)" if "kv_heads" in s else "") + f", FFN {s.get('ffn')}"
                              for i, s in enumerate(facts["padding"]["layers"]))
        out += [f"Structurally pruned to different sizes per layer ({per_layer}), then "
                f"{_padding_text(facts['padding'], facts.get('size_mb'))}: zero rows in the weights into each "
                "padded unit, zero columns in the weights out of it. The model's own config states the padded "
                "sizes, so the runtimes above build it without hf_optim."]
    elif "prune" in facts.get("source_methods", []) and fmt in ("transformers", "compressed-tensors", "gguf"):
        sizes = ", ".join(f"`{k}` {v}" for k, v in facts.get("sizes", {}).items())
        out += ["", f"Structurally pruned to the same sizes in every layer ({sizes or 'see the metadata'}); the "
                "model's own config states them, so the runtimes above build it without hf_optim."]
    notes = [n for n in facts.get("notes", []) if not (facts.get("padding") and n.startswith("zero-padded"))]
    if notes:  # the padding's own note is the paragraph above
        out += ["", "Export notes:", "", *(f"- {n}" for n in notes)]
    return ["## Weights", "", *out, ""] if out else []


def _gguf_usage(facts: dict[str, Any], repo: str, local: bool) -> list[str]:
    file = facts["file"]
    folder = repo if local else repo.split("/")[-1]
    path = f"{folder}/{file}"
    vocab = facts.get("vocabulary") != "none"
    prompt = ' -p "The capital of France is" -n 32' if vocab else ""
    download = [] if local else [f"hf download {repo} {file} --local-dir {folder}  # pip install huggingface_hub"]
    run = ['print(llm("The capital of France is", max_tokens=32)["choices"][0]["text"])'] if vocab else \
        ["llm.eval([1, 2, 3])  # token ids: the file holds no vocabulary"]
    tok = [f'tokenizer = AutoTokenizer.from_pretrained("{repo}", gguf_file="{file}")'] if vocab else \
        ["# the file holds no vocabulary: pass token ids (tokenize with the source model's tokenizer)"]
    imports = "AutoModelForCausalLM, AutoTokenizer" if vocab else "AutoModelForCausalLM"
    return [
        f"One GGUF file, `{file}`. llama.cpp:", "", "```bash", *download, f"llama-cli -m {path}{prompt}", "```", "",
        "Ollama (a `Modelfile` next to the folder):", "", "```bash",
        f"echo 'FROM {path if path.startswith('./') else './' + path}' > Modelfile",
        f"ollama create {Path(folder).name or 'model'} -f Modelfile", "```", "",
        "llama-cpp-python (`pip install llama-cpp-python`):", "", "```python", "from llama_cpp import Llama", "",
        f'llm = Llama(model_path="{path}")', *run, "```", "",
        "Transformers dequantizes it to float32 (`pip install transformers gguf`; no hf-optim):", "",
        "```python", "import torch", f"from transformers import {imports}", "",
        f'model = AutoModelForCausalLM.from_pretrained("{repo}", gguf_file="{file}", dtype=torch.float32)', *tok,
        "```"]


def usage_lines(fmt: str, facts: dict[str, Any], auto: str, pipeline: str | None, repo: str,
                local: bool) -> list[str]:
    """The ``## How to use`` body for a portable format: each runtime with its code (``repo``: the Hub id, or the
    local folder when ``local``)."""
    if fmt == "gguf":
        return _gguf_usage(facts, repo, local)
    cls = f"AutoModelFor{auto}" if auto else "AutoModel"
    vllm = ["", "vLLM serves it (`pip install vllm`):", "", "```bash", f"vllm serve {repo}", "```"]
    if fmt == "compressed-tensors" and facts.get("asymmetric_packed"):
        return ["A compressed-tensors checkpoint with asymmetric `pack-quantized` weights: vLLM loads it "
                "(`pip install vllm`); Transformers does not yet (its loader expects an unpacked zero point; "
                f"upstream [llm-compressor#1618]({ASYMMETRIC_ISSUE})).", "", "```bash", f"vllm serve {repo}", "```",
                "", "```python", "from vllm import LLM", "", f'llm = LLM("{repo}")',
                'print(llm.generate("The capital of France is")[0].outputs[0].text)', "```"]
    pipe = [f'pipe = pipeline("{pipeline}", model=model, tokenizer=tokenizer)'] if pipeline else []
    install = "pip install transformers compressed-tensors" if fmt == "compressed-tensors" else "pip install transformers"
    note = ("A compressed-tensors checkpoint (`quant_method: compressed-tensors`): Transformers decompresses it at "
            "load with the `compressed-tensors` package; no hf-optim." if fmt == "compressed-tensors" else
            "A standard Transformers checkpoint: plain `from_pretrained`, no hf-optim.")
    if fmt == "compressed-tensors":  # without a dtype its loader picks float16, which rounds the float layers
        imports, load = ["import torch"], [f'model = {cls}.from_pretrained("{repo}", dtype=torch.float32)  '
                                           "# or torch.bfloat16 on a GPU"]
    else:
        imports, load = [], [f'model = {cls}.from_pretrained("{repo}")']
    code = [note, "", "```python", f"# {install}", *imports, f"from transformers import AutoTokenizer, {cls}, pipeline",
            "", *load, f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', *pipe, "```"]
    return code + (vllm if facts.get("causal_lm") else [])


def limitation_lines(fmt: str, facts: dict[str, Any]) -> list[str]:
    """What a reader of a portable format should know about its precision and its readers."""
    if fmt == "gguf":
        out = ["- GGML blocks store float16 scales: the weights differ from hf_optim's by the errors in "
               "[Weights](#weights); evaluate the file in the runtime that serves it (`llama-perplexity -m FILE -f "
               "TEXT`).", "- Transformers dequantizes GGUF to float: it loads the file, not its speed or size."]
        return out + (["- " + _NO_VOCAB] if facts.get("vocabulary") == "none" else [])
    if fmt == "compressed-tensors":
        return ["- Weight-only quantization: activations stay in float; vLLM runs the packed weights with its "
                "mixed-precision kernels, Transformers decompresses them to float at load."]
    return []
