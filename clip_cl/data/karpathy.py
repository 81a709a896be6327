"""Karpathy's splits of COCO and Flickr30k (`dataset_coco.json`, `dataset_flickr30k.json`), read and checked once.

Karpathy & Fei-Fei (2015) published one JSON per dataset: `{"images": [{"filename", "filepath" (COCO only),
"split" ("train" / "restval" / "val" / "test"), "sentences": [{"raw", "tokens", ...}], "imgid", "cocoid" (COCO)},
...]}`. Ding et al. (2022) use them for the update task's val / test images (COCO) and for the retrieval test sets
(COCO 5k, Flickr30k 1k). This module holds the parts both builders share: reading the file with messages that say
what to fix, selecting a split, and the caption rule of the official `data.py: RetriTask` (`sent.lower()`).
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["KARPATHY_SPLITS", "karpathy_captions", "karpathy_images", "missing_images", "read_karpathy"]

KARPATHY_SPLITS: tuple[str, ...] = ("train", "restval", "val", "test")


def read_karpathy(path: str, dataset: str) -> list[dict[str, Any]]:
    """The `images` list of a Karpathy split file, checked for the keys the builders read.

    Args:
        path (`str`): the JSON file (`dataset_coco.json` or `dataset_flickr30k.json`).
        dataset (`str`): the dataset it describes, for messages (`"COCO"`, `"Flickr30k"`).

    Returns:
        `list[dict]`: one entry per image, in file order.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{dataset}: Karpathy split file {path!r} not found. Download Karpathy's "
                                f"dataset_{dataset.lower()}.json (caption_datasets.zip) and set karpathy_file to it.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{dataset}: Karpathy split file {path!r} is not valid JSON ({err.msg} at line {err.lineno}); "
                         "download it again.") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{dataset}: {path!r} has no 'images' list, so it is not a Karpathy split file "
                         f"(dataset_{dataset.lower()}.json); set karpathy_file to that file.")
    for i, entry in enumerate(images):
        missing = [k for k in ("filename", "split", "sentences") if k not in entry]
        if missing:
            raise ValueError(f"{dataset}: entry {i} of {path!r} lacks {missing}; a Karpathy split file names each "
                             "image's filename, split and sentences. Use the original file.")
    return images


def karpathy_images(images: list[dict[str, Any]], split: str, path: str, dataset: str) -> list[dict[str, Any]]:
    """The entries of one Karpathy split, in file order (the order the official JSON files list them).

    Args:
        images (`list[dict]`): the output of [`read_karpathy`].
        split (`str`): `"train"`, `"restval"`, `"val"` or `"test"`.
        path (`str`): the file, for messages.
        dataset (`str`): the dataset, for messages.

    Returns:
        `list[dict]`: the entries whose `split` is `split`.
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"{dataset}: unknown Karpathy split {split!r}; use one of {list(KARPATHY_SPLITS)}.")
    rows = [entry for entry in images if entry["split"] == split]
    if not rows:
        found = sorted({entry["split"] for entry in images})
        raise ValueError(f"{dataset}: {path!r} lists no image in split {split!r} (its splits: {found}); set split to "
                         "one of those.")
    return rows


def karpathy_captions(entry: dict[str, Any], lowercase: bool, max_captions: int | None) -> list[str]:
    """The captions of one entry: its `raw` sentences, stripped, optionally lower-cased and capped.

    Args:
        entry (`dict`): one image of a Karpathy file.
        lowercase (`bool`): lower-case them, as the official `data.py: RetriTask` does (`sent.lower()`).
        max_captions (`int`, *optional*): keep only the first this many (the official retrieval metrics,
            `methods/base.py: i2t / t2i`, assume exactly 5 per image).

    Returns:
        `list[str]`: the captions, in the file's order.
    """
    captions = [str(s.get("raw", " ".join(s.get("tokens", [])))).strip() for s in entry["sentences"]]
    if lowercase:
        captions = [c.lower() for c in captions]
    return captions if max_captions is None else captions[:max_captions]


def missing_images(paths: list[str]) -> list[str]:
    """The paths of `paths` that are not files (checked before preparing, so a run never stops half-way)."""
    return [p for p in paths if not os.path.isfile(p)]
