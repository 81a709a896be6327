"""The "pretraining world": a deterministic cut of the real data into the parts a small CLIP is pretrained on and the
parts that measure what it learned.

```
python recipes/prepare_world.py --source ../shared/data --out data/world
```

writes one folder per part, each a Parquet file with `datasets` features (so a `DatasetSpec` reads it unchanged), and
`world.json`, which records the seed, the source files and every split:

| part | file | rows | role |
|---|---|---|---|
| `cifar10_train` | `train.parquet` | 50,000 | world, class-name captions |
| `tiny_imagenet_train` | `train.parquet` | 8,000 | world, class-name captions (40 per class) |
| `pascal_train` | `train.parquet` | 800 | world, 5 captions each |
| `coco_train` | `train.parquet` | 80 | world, 5 captions each (COCO train2017) |
| `cifar10_test` | `test.parquet` | 10,000 | held out: zero-shot |
| `tiny_imagenet_heldout` | `test.parquet` | 2,000 | held out: 200-class zero-shot (10 per class, seeded) |
| `pascal_heldout` | `test.parquet` | 200 | held out: retrieval (10 images per VOC class, seeded) |
| `coco_heldout` | `test.parquet` | 159 | held out: retrieval (COCO val2017) |
| `fashion_mnist_test` | `test.parquet` | 10,000 | outside the world: zero-shot (the later update task) |

The CIFAR-10 and Fashion-MNIST parts are byte-for-byte copies of the source files; the Tiny-ImageNet and Pascal
splits are stratified (the same number of held-out images per class) and seeded; COCO keeps its own train/val split.
The Tiny-ImageNet held-out images come from Tiny-ImageNet's *train* images (`../shared/data/tiny_imagenet` holds no
others): its and ImageNet's validation images are never used. [`check_disjoint`] verifies, by the SHA-256 of every
encoded image, that no held-out image is also a training image.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_json, read_json

__all__ = ["WORLD_PARTS", "check_disjoint", "load_world", "main", "prepare_world", "world_spec"]

logger = logging.getLogger(__name__)

# part name -> (split file stem, role, kind)
WORLD_PARTS: dict[str, tuple[str, str, str]] = {
    "cifar10_train": ("train", "train", "classification"),
    "tiny_imagenet_train": ("train", "train", "classification"),
    "pascal_train": ("train", "train", "captions"),
    "coco_train": ("train", "train", "captions"),
    "cifar10_test": ("test", "heldout", "classification"),
    "tiny_imagenet_heldout": ("test", "heldout", "classification"),
    "pascal_heldout": ("test", "heldout", "captions"),
    "coco_heldout": ("test", "heldout", "captions"),
    "fashion_mnist_test": ("test", "outside", "classification"),
}
WORLD_FILE = "world.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stratified_heldout(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of `per_class` seeded random rows of every class."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < per_class:
            raise ValueError(f"Class {c} has only {len(rows)} rows, fewer than the {per_class} to hold out.")
        picked.append(rng.choice(rows, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def prepare_world(source: str | os.PathLike = "../shared/data", out: str | os.PathLike = "data/world", *,
                  seed: int = 0, pascal_heldout_per_class: int = 10, tiny_imagenet_heldout_per_class: int = 10,
                  overwrite: bool = False) -> dict[str, Any]:
    """Cut the real data into the world's training parts and its held-out parts (deterministic for a given seed).

    Args:
        source (`str` or `os.PathLike`, defaults to `"../shared/data"`): the shared data folder (`cifar10/`,
            `tiny_imagenet/`, `pascal_sentences/`, `coco_mini/`, `fashion_mnist/`; see its README).
        out (`str` or `os.PathLike`, defaults to `"data/world"`): where to write the parts and `world.json`.
        seed (`int`, defaults to 0): seed of the Pascal Sentences and Tiny-ImageNet splits.
        pascal_heldout_per_class (`int`, defaults to 10): held-out Pascal images per VOC class (20 classes, so 200 of
            the 1,000 images by default, all 5 captions each).
        tiny_imagenet_heldout_per_class (`int`, defaults to 10): held-out Tiny-ImageNet images per class (200
            classes of 50 images, so 2,000 held out and 8,000 kept for training by default); the many-class zero-shot
            set `tiny_imagenet_heldout`.
        overwrite (`bool`, defaults to `False`): rebuild even if `out/world.json` already describes the same cut.

    Returns:
        `dict`: the content of `world.json` (`seed`, `source`, `parts`: name -> `path`, `split`, `role`, `kind`,
        `rows`, `sha256`, and for caption parts `captions`; `pascal_heldout_indices` and
        `tiny_imagenet_heldout_indices`: the source rows held out; `disjoint`: the result of [`check_disjoint`]).
    """
    import datasets

    from ..data.coco import load_coco

    source, out = Path(source).expanduser(), Path(out).expanduser()
    wanted = {"seed": seed, "pascal_heldout_per_class": pascal_heldout_per_class,
              "tiny_imagenet_heldout_per_class": tiny_imagenet_heldout_per_class}
    world_file = out / WORLD_FILE
    if world_file.is_file() and not overwrite:
        existing = read_json(world_file)
        if all(existing.get(k) == v for k, v in wanted.items()) and all(
                (out / p["path"]).is_file() for p in existing["parts"].values()):
            logger.info("World already prepared in %s (delete it or pass --overwrite to rebuild).", out)
            return existing
    for sub in ("cifar10", "tiny_imagenet", "pascal_sentences", "coco_mini", "fashion_mnist"):
        if not (source / sub).is_dir():
            raise FileNotFoundError(f"{source / sub} does not exist: --source must be the shared data folder holding "
                                    "cifar10/, tiny_imagenet/, pascal_sentences/, coco_mini/ and fashion_mnist/.")
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, dict[str, Any]] = {}

    def record(name: str, rows: int, src: str, **extra: Any) -> None:
        stem, role, kind = WORLD_PARTS[name]
        rel = f"{name}/{stem}.parquet"
        parts[name] = {"path": rel, "split": stem, "role": role, "kind": kind, "rows": rows, "source": src,
                       "sha256": _sha256(out / rel), **extra}

    # Classification parts: copies of the source files.
    for name, src in (("cifar10_train", "cifar10/train.parquet"), ("cifar10_test", "cifar10/test.parquet"),
                      ("fashion_mnist_test", "fashion_mnist/test.parquet")):
        dest = out / name / f"{WORLD_PARTS[name][0]}.parquet"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / src, dest)
        rows = datasets.load_dataset("parquet", data_files={"x": str(dest)}, split="x").num_rows
        record(name, rows, src)

    # Tiny-ImageNet (its train images only) and Pascal Sentences: stratified seeded held-out parts; images stay as
    # stored (no re-encoding).
    heldout_indices: dict[str, list[int]] = {}
    for src, per_class, (train_name, held_name) in (
            ("tiny_imagenet/train.parquet", tiny_imagenet_heldout_per_class,
             ("tiny_imagenet_train", "tiny_imagenet_heldout")),
            ("pascal_sentences/test.parquet", pascal_heldout_per_class, ("pascal_train", "pascal_heldout"))):
        full = datasets.load_dataset("parquet", data_files={"x": str(source / src)}, split="x")
        labels = np.asarray(full.select_columns(["label"]).with_format("numpy")["label"])
        held = _stratified_heldout(labels, per_class, seed)
        train = np.setdiff1d(np.arange(len(full)), held)
        heldout_indices[held_name] = held.tolist()
        for name, rows in ((train_name, train), (held_name, held)):
            dest = out / name / f"{WORLD_PARTS[name][0]}.parquet"
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = full.select(rows.tolist())
            part.to_parquet(str(dest))
            extra = ({"captions": int(sum(len(c) for c in part.select_columns(["captions"])["captions"]))}
                     if WORLD_PARTS[name][2] == "captions" else {})
            record(name, len(part), src, **extra)

    # COCO captions: train2017 for the world, val2017 held out; images embedded as bytes.
    with tempfile.TemporaryDirectory(prefix="clip_cl_world_") as cache:
        for name, split in (("coco_train", "train"), ("coco_heldout", "val")):
            coco = load_coco(str(source / "coco_mini"), split, task="captions", cache_dir=cache, embed_images=True)
            coco = coco.select_columns(["image", "captions", "image_id"])
            dest = out / name / f"{WORLD_PARTS[name][0]}.parquet"
            dest.parent.mkdir(parents=True, exist_ok=True)
            coco.to_parquet(str(dest))
            record(name, len(coco), f"coco_mini/{split}2017 + annotations/captions_{split}2017.json",
                   captions=int(sum(len(c) for c in coco["captions"])))

    world = {**wanted, "source": str(source), "parts": parts,
             "pascal_heldout_indices": heldout_indices["pascal_heldout"],
             "tiny_imagenet_heldout_indices": heldout_indices["tiny_imagenet_heldout"]}
    world["disjoint"] = check_disjoint(out, parts)
    atomic_write_json(world_file, world)
    logger.info("Wrote the world to %s: %s", out, ", ".join(f"{k} ({v['rows']})" for k, v in parts.items()))
    return world


def _image_digests(path: Path) -> set[str]:
    """SHA-256 of every encoded image of a Parquet part (the bytes as stored, or the file they point to)."""
    import datasets

    ds = datasets.load_dataset("parquet", data_files={"x": str(path)}, split="x")
    ds = ds.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
    digests = set()
    for row in ds:
        value = row["image"]
        data = value["bytes"] if value.get("bytes") is not None else Path(value["path"]).read_bytes()
        digests.add(hashlib.sha256(data).hexdigest())
    return digests


def check_disjoint(world_dir: str | os.PathLike, parts: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Verify that no held-out (or outside) image of a world is also one of its training images.

    Images are compared by the SHA-256 of their encoded bytes, so an image copied into two parts is caught whatever
    its row or label; re-encoded near-duplicates are not (the sources are each split by rows of one file, or by
    COCO's own split, so such duplicates could only come from the source data sets themselves).

    Args:
        world_dir (`str` or `os.PathLike`): the world folder.
        parts (`dict`, *optional*): the `parts` of its `world.json` (read from the folder when omitted).

    Returns:
        `dict`: `{"train_images": int, "checked": {held-out part: number of its distinct images}}`.

    Raises:
        `ValueError`: if a held-out or outside part shares an image with a training part.
    """
    world_dir = Path(world_dir)
    parts = parts if parts is not None else load_world(world_dir)["parts"]
    train: set[str] = set()
    for name, part in parts.items():
        if part["role"] == "train":
            train |= _image_digests(world_dir / part["path"])
    checked = {}
    for name, part in parts.items():
        if part["role"] == "train":
            continue
        digests = _image_digests(world_dir / part["path"])
        shared = digests & train
        if shared:
            raise ValueError(f"World part {name!r} shares {len(shared)} image(s) with the training parts: the held-out "
                             "sets are not disjoint from training. Rebuild the world from the original source files.")
        checked[name] = len(digests)
    return {"train_images": len(train), "checked": checked}


def load_world(world_dir: str | os.PathLike) -> dict[str, Any]:
    """Read `world.json` of a prepared world folder (with an error that says how to prepare one).

    Args:
        world_dir (`str` or `os.PathLike`): the folder written by [`prepare_world`].

    Returns:
        `dict`: the content of `world.json`.
    """
    path = Path(world_dir).expanduser() / WORLD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist. Prepare the world first: "
                                f"`python recipes/prepare_world.py --source ../shared/data --out {world_dir}`.")
    return read_json(path)


def world_spec(world_dir: str | os.PathLike, part: str) -> dict[str, Any]:
    """A `DatasetSpec` dict for one part of a prepared world (e.g. for `zero_shot_datasets` of a run).

    Args:
        world_dir (`str` or `os.PathLike`): the world folder.
        part (`str`): a name of [`WORLD_PARTS`], e.g. `"pascal_heldout"`.

    Returns:
        `dict`: `{"name", "path", "split"}`.
    """
    if part not in WORLD_PARTS:
        raise ValueError(f"Unknown world part {part!r}; parts are {list(WORLD_PARTS)}.")
    return {"name": part, "path": str(Path(world_dir) / part), "split": WORLD_PARTS[part][0]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python recipes/prepare_world.py`: cut the shared data into the pretraining world."""
    parser = argparse.ArgumentParser(prog="prepare_world", description=(
        "Cut ../shared/data into the pretraining world (CIFAR-10 train, 8,000 Tiny-ImageNet train images, Pascal "
        "Sentences and COCO captions) and its held-out parts (CIFAR-10 test, 2,000 Tiny-ImageNet train images of all "
        "200 classes, 200 Pascal images, COCO val2017; Fashion-MNIST test as the outside domain), as Parquet folders "
        "plus world.json."))
    parser.add_argument("--source", default="../shared/data", help="shared data folder (default: ../shared/data)")
    parser.add_argument("--out", default="data/world", help="output folder (default: data/world, git-ignored)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the Pascal Sentences and Tiny-ImageNet splits (default: 0)")
    parser.add_argument("--pascal_heldout_per_class", type=int, default=10,
                        help="held-out Pascal images per VOC class (default: 10, i.e. 200 images)")
    parser.add_argument("--tiny_imagenet_heldout_per_class", type=int, default=10,
                        help="held-out Tiny-ImageNet images per class (default: 10, i.e. 2,000 of 10,000)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the folder is up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        datefmt="%H:%M:%S")
    world = prepare_world(args.source, args.out, seed=args.seed,
                          pascal_heldout_per_class=args.pascal_heldout_per_class,
                          tiny_imagenet_heldout_per_class=args.tiny_imagenet_heldout_per_class,
                          overwrite=args.overwrite)
    for name, part in world["parts"].items():
        print(f"{name:20s} {part['role']:8s} {part['rows']:6d} rows  {Path(args.out) / part['path']}")
    return world


if __name__ == "__main__":
    main()
