"""Distill a 3-layer student from the fine-tuned 6-layer MiniLM teacher on movie-sentiment, with ablations.

Reports, side by side on the 1,000-sentence test split:
  * the teacher's accuracy;
  * the 3-layer student (``make_student``, layers 0/2/5) trained with ``DistillationTrainer``;
  * the same student trained on labels alone with the same budget (epochs, learning rate, batch size);
  * teacher-output caching: seconds per epoch after the first, cached vs live teacher.

The teacher comes from the default recipe::

    hf-optim run recipes/movie-sentiment.yaml -o runs/movie-sentiment                           # make demo
    python scripts/distill_movie_sentiment.py --teacher runs/movie-sentiment/teacher --epochs 1 \
        --cache-bench-samples 320 --out scripts/results/distill_movie_sentiment.json

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


def _epoch_timer():
    from transformers import TrainerCallback

    class EpochTimer(TrainerCallback):
        def __init__(self):
            self.seconds = []

        def on_epoch_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kw):
            self.seconds.append(round(time.perf_counter() - self._t, 2))

    return EpochTimer()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="runs/movie-sentiment/teacher", help="fine-tuned teacher directory")
    p.add_argument("--out", default=None, help="JSON file to write (default: a temp file, printed)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--num-layers", type=int, default=3)
    p.add_argument("--train-samples", type=int, default=None, help="use only the first N training sentences")
    p.add_argument("--cache-bench-samples", type=int, default=512,
                   help="sentences of the cached-vs-live epoch timing (0 skips it)")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()

    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              set_seed)

    from hf_optim.data import load_task
    from hf_optim.distill import DistillConfig, DistillationTrainer, make_student
    from hf_optim.evaluation.harness import BenchRun
    from hf_optim.evaluation.metrics import compute_metric
    from hf_optim.finetune import tokenize_splits, training_arguments

    run = BenchRun(a)
    out = Path(a.out or tempfile.mkstemp(prefix="distill-", suffix=".json")[1])
    result: dict = {}

    def save():
        rows = {k: v for k, v in result.items() if k != "cache_benchmark"}
        run.write(out, rows, **({"cache_benchmark": result["cache_benchmark"]} if "cache_benchmark" in result else {}))

    data = load_task("movie-sentiment")
    if a.train_samples:
        data["train"] = data["train"].select(range(a.train_samples))
    tok = AutoTokenizer.from_pretrained(a.teacher)
    enc = tokenize_splits(data, tok, 128)
    collate = DataCollatorWithPadding(tok)
    teacher = AutoModelForSequenceClassification.from_pretrained(a.teacher).eval()
    scratch = tempfile.mkdtemp(prefix="distill-demo-")

    def args(epochs=a.epochs, **kw):
        steps = int(len(enc["train"]) / a.batch_size * epochs)
        return training_arguments(scratch, per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=128,
                                  learning_rate=a.learning_rate, num_train_epochs=epochs, weight_decay=0.01,
                                  warmup_steps=int(0.06 * steps), logging_steps=max(1, steps // 10), seed=a.seed,
                                  disable_tqdm=True, **kw)

    def accuracy(trainer, split):
        pred = trainer.predict(enc[split])
        return round(compute_metric("accuracy", pred.predictions.argmax(-1), pred.label_ids), 4)

    def params(m):
        return sum(p.numel() for p in m.parameters())

    t = Trainer(model=teacher, args=args(), data_collator=collate)
    result["teacher"] = {"params": params(teacher), "layers": teacher.config.num_hidden_layers,
                         "test_accuracy": accuracy(t, "test"), "validation_accuracy": accuracy(t, "validation")}
    save()
    print(json.dumps(result["teacher"]), flush=True)

    def fresh_student():
        set_seed(a.seed)
        return make_student(teacher, num_layers=a.num_layers, layers="uniform")

    # 1) distilled student (teacher logits cached after epoch 1)
    student = fresh_student()
    timer = _epoch_timer()
    cfg = DistillConfig(alpha=a.alpha, temperature=a.temperature, cache_teacher_outputs=True)
    tr = DistillationTrainer(model=student, teacher_model=teacher, distill_config=cfg, args=args(),
                             train_dataset=enc["train"], data_collator=collate, callbacks=[timer])
    t0 = time.perf_counter()
    tr.train()
    seconds = time.perf_counter() - t0
    r = {"params": params(student), "layers": a.num_layers, "alpha": a.alpha, "temperature": a.temperature,
         "train_seconds": round(seconds, 1), "epoch_seconds": timer.seconds,
         "teacher_forward_calls": tr.teacher_forward_calls,
         "losses_logged": [{k: v for k, v in h.items() if k.endswith("loss")} for h in tr.state.log_history
                           if "soft_loss" in h][-3:],
         "test_accuracy": accuracy(tr, "test"), "validation_accuracy": accuracy(tr, "validation")}
    r["retention_vs_teacher"] = round(r["test_accuracy"] / result["teacher"]["test_accuracy"], 4)
    result["distilled_student"] = r
    save()
    print(json.dumps(r), flush=True)

    # 2) ablation: the same student, labels only, same budget
    student = fresh_student()
    timer = _epoch_timer()
    tr = Trainer(model=student, args=args(), train_dataset=enc["train"], data_collator=collate, callbacks=[timer])
    t0 = time.perf_counter()
    tr.train()
    r = {"params": params(student), "layers": a.num_layers, "train_seconds": round(time.perf_counter() - t0, 1),
         "epoch_seconds": timer.seconds, "test_accuracy": accuracy(tr, "test"),
         "validation_accuracy": accuracy(tr, "validation")}
    r["retention_vs_teacher"] = round(r["test_accuracy"] / result["teacher"]["test_accuracy"], 4)
    result["label_only_student"] = r
    save()
    print(json.dumps(r), flush=True)

    # 3) caching benchmark: epoch 2 time, cached vs live teacher, on a subset
    if a.cache_bench_samples:
        sub = enc["train"].select(range(min(a.cache_bench_samples, len(enc["train"]))))
        bench = {"examples": len(sub)}
        for cached in (False, True):
            timer = _epoch_timer()
            tr = DistillationTrainer(model=fresh_student(), teacher_model=teacher, args=args(epochs=2),
                                     distill_config=DistillConfig(alpha=a.alpha, temperature=a.temperature,
                                                                  cache_teacher_outputs=cached),
                                     train_dataset=sub, data_collator=collate, callbacks=[timer])
            tr.train()
            bench["cached" if cached else "live"] = {"epoch_seconds": timer.seconds,
                                                     "teacher_forward_calls": tr.teacher_forward_calls}
        bench["epoch2_speedup"] = round(bench["live"]["epoch_seconds"][1] / bench["cached"]["epoch_seconds"][1], 2)
        result["cache_benchmark"] = bench
        save()
        print(json.dumps(bench), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
