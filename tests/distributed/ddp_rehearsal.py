"""Launched with 2 processes: A-GEM / GEM under DDP, each rank drawing different replay rows. The projection is
forced to depend on the reference gradient (`g - g_ref`), so the ranks end with identical weights only if the
reference gradients were all-reduced like the update gradient."""

import sys

import torch
import torch.distributed as dist

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0] + "/tests")
from conftest import RandomImages  # noqa: E402
from helpers import collate, ranks_hold_equal_weights  # noqa: E402

from clip_cl import tiny_clip  # noqa: E402


def main(out_dir: str, method: str) -> None:
    from clip_cl.methods import get_method

    spec = get_method(method)

    class Forced(spec.trainer_cls):
        def coefficients(self, dots, references):
            return -torch.ones_like(dots)  # g - sum_k references[k]

    model, processor = tiny_clip(seed=0)
    g = torch.Generator().manual_seed(1)
    replay = [{"pixel_values": torch.randn(3, 32, 32, generator=g), "captions": [f"a photo number {i}"]}
              for i in range(40)]
    args = spec.config_cls(output_dir=out_dir, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
                           save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, protocol="mst",
                           num_sessions=2, gradient_accumulation_steps=2)
    trainer = Forced(model=model, args=args, train_dataset=RandomImages(32, [0, 1, 2]), processing_class=processor,
                     class_names=["a", "b", "c"], data_collator=collate, replay_dataset=replay)
    assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
    trainer.train()
    assert ranks_hold_equal_weights(trainer.model), "ranks diverged: reference gradients were not all-reduced"
    if dist.get_rank() == 0:
        print(f"DDP_REHEARSAL_OK method={method}")


if __name__ == "__main__":
    for name in sys.argv[2:]:  # one launch for several methods (each launch costs a process group start)
        main(f"{sys.argv[1]}/{name}", name)
    dist.destroy_process_group()  # left to interpreter exit, gloo's threads can abort a process that passed
