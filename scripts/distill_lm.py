"""Causal-LM distillation on a small budget: a layer-reduced SmolLM2 student, distilled vs trained on the LM loss.

Both students start from the same ``make_student(teacher, num_layers=N)`` (teacher layers evenly spaced, first
and last kept, embeddings and head copied) and see the same BBC News training chunks in the same order, with
the same optimizer, learning rate, batch size and number of steps; the only difference is the loss:

  * ``lm_loss``   next-token cross-entropy on the text (``DistillationTrainer`` is not used);
  * ``distilled`` ``DistillationTrainer``: token-level KL to the 30-layer teacher (temperature ``--temperature``)
                  mixed with the LM loss (``--alpha`` on the KL), padding and the last position masked.

Perplexity is measured as in ``hf_optim.evaluation.lm`` (BBC test text, fixed slice, sliding window) for the
teacher, the untrained student and both trained students::

    python scripts/distill_lm.py --layers 10 --steps 100 --threads 2 \
        --out scripts/results/distill_lm.json                                     # make bench-lm

Results are written after every phase, so an interrupted run still leaves the finished numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def chunks(tokenizer, texts: list[str], length: int, limit: int) -> list[list[int]]:
    """Documents joined by a blank line, tokenized, cut into ``limit`` chunks of ``length`` tokens."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    n = min(limit, len(ids) // length)
    if n < limit:
        raise SystemExit(f"the training text has {len(ids)} tokens: only {n} chunks of {length}, asked for {limit}")
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=10, help="student depth (the teacher has 30)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--length", type=int, default=256, help="tokens per training chunk")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.9, help="weight of the KL term (1 - alpha on the LM loss)")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    from hf_optim import DistillationTrainer, make_student
    from hf_optim.data import builtin_model, load_text
    from hf_optim.distill import DistillConfig
    from hf_optim.evaluation.harness import BenchRun
    from hf_optim.evaluation.lm import perplexity, text_token_ids

    run = BenchRun(args, argv, threads=args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = builtin_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    eval_ids = text_token_ids(tok, "bbc-news", "test", args.eval_tokens)
    train = chunks(tok, list(load_text("bbc-news")["train"]["text"]), args.length, args.steps * args.batch_size)
    data = Dataset.from_dict({"input_ids": train, "attention_mask": [[1] * len(c) for c in train],
                              "labels": train})

    result: dict = {
        "setup": {"teacher": "SmolLM2-135M (builtin_model('smollm2-135m')), 30 layers",
                  "student": f"make_student(teacher, num_layers={args.layers}) (uniform layers, teacher weights)",
                  "train": f"bbc-news train: {len(train)} chunks x {args.length} tokens, {args.steps} steps of "
                           f"{args.batch_size}, AdamW lr {args.lr}, linear decay, seed {args.seed}, one pass",
                  "distill": {"alpha": args.alpha, "temperature": args.temperature},
                  "perplexity": f"bbc-news test, first {args.eval_tokens} tokens, context {args.context}, "
                                f"stride {args.stride}"},
        "models": {},
    }

    def save() -> dict:
        return run.write(args.out, result["models"], **{k: v for k, v in result.items() if k != "models"})

    def record(name: str, model, **extra) -> None:
        t0 = time.perf_counter()
        ppl = perplexity(model.eval(), eval_ids, args.context, args.stride)["perplexity"]
        params = sum(p.numel() for p in model.parameters())
        result["models"][name] = {"perplexity": round(ppl, 3), "params_m": round(params / 1e6, 2),
                                  "layers": model.config.num_hidden_layers, "eval_s": round(time.perf_counter() - t0, 1),
                                  **extra}
        print(name, result["models"][name], flush=True)
        save()

    record("teacher", teacher)
    torch.manual_seed(args.seed)
    init = make_student(teacher, num_layers=args.layers)
    record("student_init", init)
    init_state = {k: v.clone() for k, v in init.state_dict().items()}

    def targs(out: str) -> TrainingArguments:
        return TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                                 learning_rate=args.lr, warmup_steps=max(1, args.steps // 10),
                                 lr_scheduler_type="linear", weight_decay=0.0, logging_steps=max(1, args.steps // 10),
                                 save_strategy="no", report_to=[], seed=args.seed, data_seed=args.seed,
                                 use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)

    for name in ("lm_loss", "distilled"):
        student = make_student(teacher, num_layers=args.layers)
        student.load_state_dict(init_state)
        student.train()
        with tempfile.TemporaryDirectory() as out:
            common = {"model": student, "args": targs(out), "train_dataset": data,
                      "data_collator": default_data_collator}
            if name == "lm_loss":
                trainer = Trainer(**common)
            else:
                trainer = DistillationTrainer(teacher_model=teacher, distill_config=DistillConfig(
                    alpha=args.alpha, temperature=args.temperature), **common)
            t0 = time.perf_counter()
            out_ = trainer.train()
            seconds = time.perf_counter() - t0
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        record(name, student, train_s=round(seconds, 1), train_loss_first_last=[losses[0], losses[-1]] if losses else None,
               final_train_loss=round(out_.training_loss, 4))

    m = result["models"]
    result["summary"] = {
        "distilled_vs_lm_loss_perplexity": round(m["distilled"]["perplexity"] / m["lm_loss"]["perplexity"], 4),
        "distilled_vs_teacher_perplexity": round(m["distilled"]["perplexity"] / m["teacher"]["perplexity"], 4),
        "student_params_vs_teacher": round(m["distilled"]["params_m"] / m["teacher"]["params_m"], 4),
    }
    print(json.dumps(result["summary"], indent=2))
    return save()


if __name__ == "__main__":
    main()
