"""Train one method over an OST or MST protocol.

    python recipes/train.py --config recipes/configs/quickstart.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/train.py --config ... [--key value ...]

Every field of the method's config can be set in the YAML file or overridden on the command line; `--help` lists
them with their defaults (add `--method NAME` to see a method's own options).
"""

from clip_cl.cli import train_main

if __name__ == "__main__":
    train_main()
