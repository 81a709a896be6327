"""Pretrain a small CLIP from scratch on the world's image-text data, evaluate it on the held-out parts, save it.

    python recipes/prepare_world.py --source ../shared/data --out data/world   # once
    python recipes/pretrain.py --config recipes/configs/pretrain.yaml

Every field of `clip_cl.pretrain.PretrainConfig` can be set in the YAML file or overridden on the command line
(`--max_steps 200`); `--help` lists them. Same as `clip-cl pretrain`. See docs/pretraining.md.
"""

from clip_cl.pretrain import main

if __name__ == "__main__":
    main()
