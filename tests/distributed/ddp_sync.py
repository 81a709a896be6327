"""Launched with 2 processes: train a few steps under DDP and check the ranks hold identical weights that moved.

Each rank sees different images (DistributedSampler), so identical weights after the steps prove that gradients
were all-reduced through the trainer's single forward call per step.
"""

import sys

import torch
import torch.distributed as dist

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0] + "/tests")
from conftest import RandomImages  # noqa: E402
from helpers import collate, ranks_hold_equal_weights, snapshot  # noqa: E402

from clip_cl import tiny_clip  # noqa: E402


def main(out_dir: str, method: str) -> None:
    from clip_cl.methods import get_method

    spec = get_method(method)
    model, processor = tiny_clip(seed=0)
    start = snapshot(model)
    args = spec.config_cls(output_dir=out_dir, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
                           save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True)
    trainer = spec.trainer_cls(model=model, args=args, train_dataset=RandomImages(32, [0, 1, 2]),
                               processing_class=processor, class_names=["a", "b", "c"], data_collator=collate)
    assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
    trainer.train()
    model = trainer.model
    assert ranks_hold_equal_weights(model), "ranks diverged: gradients were not synchronised"
    moved = sum(not torch.equal(v, start[k]) for k, v in model.named_parameters())
    assert moved > 0, "no parameter moved"
    if dist.get_rank() == 0:
        print(f"DDP_OK method={method} moved={moved}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ft")
    dist.destroy_process_group()  # left to interpreter exit, gloo's threads can abort a process that passed
