"""Cut the shared real data into the pretraining world and its held-out parts (see `docs/pretraining.md`).

    python recipes/prepare_world.py --source ../shared/data --out data/world

Writes Parquet folders (`cifar10_train/`, `tiny_imagenet_train/`, `pascal_train/`, `coco_train/`, `cifar10_test/`,
`pascal_heldout/`, `coco_heldout/`, `fashion_mnist_test/`) and `world.json` with the seeded splits.
"""

from clip_cl.cli import command
from clip_cl.pretrain.world import main

if __name__ == "__main__":
    command(main)()  # a user error prints one `error: ...` line (exit 2); --debug shows the traceback
