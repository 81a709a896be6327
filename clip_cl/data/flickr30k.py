"""Flickr30k with Karpathy's split as a `datasets` builder (image-text retrieval; the paper's 1k test set).

The root holds the images and Karpathy's split file, as they are downloaded:

```
/data/flickr30k/
  dataset_flickr30k.json      Karpathy's split (caption_datasets.zip)
  flickr30k-images/*.jpg      the 31,783 images
```

```python
from clip_cl.data import load_flickr30k

test = load_flickr30k("/data/flickr30k", "test", lowercase=True)   # 1,000 images, 5 captions each
```

or in a recipe: `{name: flickr30k, builder: flickr30k, path: /data/flickr30k, split: test,
builder_kwargs: {lowercase: true}}`. Rows follow the Karpathy file's order, as the official `data.py: RetriTask`
reads its `flickr_retri_test.json`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import datasets

from .coco import caption_features
from .karpathy import KARPATHY_SPLITS, karpathy_captions, karpathy_images, missing_images, read_karpathy
from .specs import check_keys, image_record, stat_fingerprint

__all__ = ["Flickr30k", "Flickr30kConfig", "load_flickr30k"]

_SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train"}


@dataclass
class Flickr30kConfig(datasets.BuilderConfig):
    """Options of [`Flickr30k`].

    Args:
        split (`str`, *optional*): prepare only this split (`"train"`, `"val"` or `"test"`); `None` prepares every
            split the Karpathy file lists.
        karpathy_file (`str`, defaults to `"dataset_flickr30k.json"`): Karpathy's split file; a relative path is read
            from the root.
        image_dir (`str`, defaults to `"flickr30k-images"`): folder of the images; a relative path is read from the
            root.
        lowercase (`bool`, defaults to `False`): lower-case every caption, as the official `data.py: RetriTask` does.
        max_captions_per_image (`int`, *optional*): keep only the first this many captions of each image (`None`
            keeps all; Flickr30k has 5 per image).
        embed_images (`bool`, defaults to `False`): store the image bytes in the cache instead of the file paths.
    """

    split: str | None = None
    karpathy_file: str = "dataset_flickr30k.json"
    image_dir: str = "flickr30k-images"
    lowercase: bool = False
    max_captions_per_image: int | None = None
    embed_images: bool = False


def _under(root: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


def _fingerprint(root: str | None, karpathy_file: str, image_dir: str) -> str | None:
    """Size and modification time of the split file and the image folder, so that edits invalidate the cache."""
    if not root or not os.path.isdir(root):
        return None
    return stat_fingerprint([_under(root, karpathy_file), _under(root, image_dir)])


class Flickr30k(datasets.GeneratorBasedBuilder):
    """Flickr30k captions in Karpathy's split: one row per image, `captions` = its sentences.

    Columns: `image`, `captions` (list of strings, Karpathy's order), `image_id` (Karpathy's `imgid`), `file_name`.
    """

    BUILDER_CONFIG_CLASS = Flickr30kConfig
    VERSION = datasets.Version("1.0.0")

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("dataset_name", "flickr30k")
        if kwargs.get("hash") is None:
            kwargs["hash"] = _fingerprint(kwargs.get("data_dir"),
                                          kwargs.get("karpathy_file", Flickr30kConfig.karpathy_file),
                                          kwargs.get("image_dir", Flickr30kConfig.image_dir))
        super().__init__(*args, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="Flickr30k captions in Karpathy's split (one row per image).",
            features=caption_features(),
        )

    def _split_generators(self, dl_manager):
        root, cfg = self.config.data_dir, self.config
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"Flickr30k needs data_dir=<folder with dataset_flickr30k.json and "
                                    f"flickr30k-images/>, got {root!r}.")
        if cfg.max_captions_per_image is not None and cfg.max_captions_per_image < 1:
            raise ValueError(f"max_captions_per_image must be a positive integer or None, got "
                             f"{cfg.max_captions_per_image!r}.")
        karpathy_path = _under(root, cfg.karpathy_file)
        entries = read_karpathy(karpathy_path, "Flickr30k")
        image_dir = _under(root, cfg.image_dir)
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"Flickr30k: image folder {image_dir!r} not found. Unpack flickr30k-images/ into "
                                    f"{root!r}, or set image_dir in builder_kwargs.")
        if cfg.split:
            splits = [_SPLIT_ALIASES.get(cfg.split, cfg.split)]
        else:
            splits = [s for s in KARPATHY_SPLITS if any(e["split"] == s for e in entries)]
        generators = []
        for split in splits:
            rows = karpathy_images(entries, split, karpathy_path, "Flickr30k")
            paths = [os.path.join(image_dir, e["filename"]) for e in rows]
            missing = missing_images(paths)
            if missing:
                raise FileNotFoundError(
                    f"Flickr30k: {len(missing)} of the {len(paths)} images that {os.path.basename(karpathy_path)} puts "
                    f"in split {split!r} are missing from {image_dir!r} (first: {os.path.basename(missing[0])!r}). "
                    "Unpack all of flickr30k-images/ there, or set image_dir to the folder that holds them.")
            images = [(path, int(e.get("imgid", i)), e["filename"],
                       karpathy_captions(e, cfg.lowercase, cfg.max_captions_per_image))
                      for i, (path, e) in enumerate(zip(paths, rows))]
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs={"images": images}))
        return generators

    def _generate_examples(self, images):
        for key, (path, image_id, file_name, caps) in enumerate(images):
            image = image_record(path, file_name, embed=self.config.embed_images)
            yield key, {"image": image, "captions": caps, "image_id": image_id, "file_name": file_name}


def load_flickr30k(root: str, split: str = "test", *, cache_dir: str | None = None, **options: Any) -> datasets.Dataset:
    """Prepare (once, then from the cache) and load one Karpathy split of Flickr30k.

    Args:
        root (`str`): folder holding `dataset_flickr30k.json` and `flickr30k-images/`.
        split (`str`, defaults to `"test"`): `"train"`, `"val"` or `"test"`; slicing (`"test[:100]"`) works.
        cache_dir (`str`, *optional*): cache root of the prepared Arrow files (default: `HF_DATASETS_CACHE`).
        **options: fields of [`Flickr30kConfig`], e.g. `lowercase=True`.

    Returns:
        `datasets.Dataset`: the split.
    """
    valid = sorted(set(Flickr30kConfig.__dataclass_fields__) - {"name", "version", "data_dir", "data_files",
                                                                "description", "split"})
    check_keys("Flickr30k option", options, valid)
    base = split.split("[", 1)[0]
    base = _SPLIT_ALIASES.get(base, base)
    if base not in KARPATHY_SPLITS:
        raise ValueError(f"Flickr30k split must be one of {list(KARPATHY_SPLITS[:1] + KARPATHY_SPLITS[2:])}, got "
                         f"{split!r}.")
    builder = Flickr30k(data_dir=os.path.abspath(root), split=base, cache_dir=cache_dir, **options)
    builder.download_and_prepare()
    return builder.as_dataset(split=base + split[len(split.split("[", 1)[0]):])
