"""Worker for test_ddp.py: run by `torchrun --nproc_per_node 2`; writes one JSON per rank to argv[1]."""

import faulthandler
import gc
import hashlib
import json
import os
import sys

import torch


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out_dir: str) -> None:
    faulthandler.dump_traceback_later(200, exit=True)  # a hung rank prints its stacks before the test's 240 s timeout
    from hf_optim.distill import DistillConfig, DistillationTrainer
    from hf_optim.finetune import training_arguments
    from hf_optim.testing import tiny_bert

    rank = int(os.environ["RANK"])
    student = tiny_bert(seed=1, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    teacher = tiny_bert(seed=2)
    t_before = digest(teacher.state_dict().values())
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(5, 60, (6,), generator=g), "labels": torch.tensor(i % 2)} for i in range(32)]
    args = training_arguments(os.path.join(out_dir, "trainer"), per_device_train_batch_size=4, num_train_epochs=1,
                              learning_rate=1e-3, logging_steps=2, seed=0, disable_tqdm=True, ddp_backend="gloo")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows,
                                  distill_config=DistillConfig(alpha=0.5, hidden_weight=1.0))
    s_before = digest(student.state_dict().values())
    trainer.train()
    result = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "student_wrapped": type(trainer.model_wrapped).__name__,
        "teacher_type": type(trainer.teacher).__name__,
        "student": digest(trainer.model.state_dict().values()),
        "student_changed": digest(trainer.model.state_dict().values()) != s_before,
        "projection": digest(trainer.distill_projection.parameters()),
        "teacher_unchanged": digest(teacher.state_dict().values()) == t_before,
        "teacher_grads": [p.grad is not None for p in trainer.teacher.parameters()].count(True),
        "logged": sorted(k for h in trainer.state.log_history for k in h if k.endswith("_loss")),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    # Tear down in order: the DDP wrapper (its reducer holds the gloo process group) first, then the group.
    # Left to interpreter exit, the two are destroyed in no fixed order and a rank can abort ("terminate called
    # without an active exception") or hang.
    del trainer, student
    gc.collect()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
