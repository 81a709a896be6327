"""Pretrain a small CLIP from scratch on the world's image-text data, evaluate it on the held-out parts, save it.

    python recipes/prepare_world.py --source ../shared/data --out data/world   # once
    python recipes/pretrain.py --config recipes/configs/pretrain.yaml

Every field of `clip_cl.pretrain.PretrainConfig` can be set in the YAML file or overridden on the command line
(`--max_steps 200`); `--help` lists them. Same as `clip-cl pretrain`. See docs/pretraining.md.
"""

import os

# On a shared CPU, OpenMP threads that spin while waiting for a busy core make every step several times slower;
# passive waiting keeps 2 threads efficient under contention (set OMP_WAIT_POLICY yourself to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from clip_cl.cli import command  # noqa: E402  (after the environment variable: OpenMP reads it at start-up)
from clip_cl.pretrain import main  # noqa: E402

if __name__ == "__main__":
    command(main)()  # a user error prints one `error: ...` line (exit 2); --debug shows the traceback
