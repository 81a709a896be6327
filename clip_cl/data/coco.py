"""COCO 2017 as `datasets` builders: object crops (the paper's update task) and captions (image-text retrieval).

`datasets` 5 no longer runs loading scripts, so the builders are plain classes of this package, instantiated directly:

```python
builder = CocoObjects(data_dir="/data/coco", split="val", cache_dir="/tmp/cache")
builder.download_and_prepare()
crops = builder.as_dataset("val")
```

or, as `load_spec` does, `load_coco("/data/coco", "val", task="objects")`. The root keeps COCO's own layout:
`annotations/{instances,captions}_{split}2017.json` and the images in `{split}2017/`.

The cache key includes the size and modification time of the annotation file and of the image folder, so editing
either rebuilds the cache instead of serving stale rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import datasets
from PIL import Image

from .specs import check_keys

__all__ = ["CocoCaptions", "CocoCaptionsConfig", "CocoObjects", "CocoObjectsConfig", "coco_annotation_file",
           "load_coco"]

_SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train"}
_KINDS = {"objects": "instances", "captions": "captions"}


def _coco_split(split: str) -> str:
    return _SPLIT_ALIASES.get(split, split)


def coco_annotation_file(root: str, split: str, task: str) -> str:
    """Path of the annotation file a COCO task needs, with an error that lists what the root does hold.

    Args:
        root (`str`): the COCO root (holds `annotations/`).
        split (`str`): `"train"`, `"val"` (or `"validation"`), or any `{split}` with `{kind}_{split}2017.json`.
        task (`str`): `"objects"` (reads `instances_*`) or `"captions"` (reads `captions_*`).

    Returns:
        `str`: the path of `annotations/{kind}_{split}2017.json`.
    """
    if task not in _KINDS:
        raise ValueError(f"COCO task must be one of {list(_KINDS)}, got {task!r}.")
    kind = _KINDS[task]
    path = os.path.join(root, "annotations", f"{kind}_{_coco_split(split)}2017.json")
    if not os.path.isfile(path):
        ann_dir = os.path.join(root, "annotations")
        found = sorted(os.listdir(ann_dir)) if os.path.isdir(ann_dir) else []
        raise FileNotFoundError(
            f"COCO {task}: annotation file {path!r} not found. A COCO root holds annotations/{kind}_{{split}}2017.json "
            f"and {{split}}2017/ images (split 'train' or 'val'); annotations/ there holds {found or 'nothing'}. "
            "Fix the path or the split."
        )
    return path


def _fingerprint(data_dir: str | None, task: str, split: str | None) -> str | None:
    """Sizes and modification times of the annotation files and image folders, so that edits invalidate the cache."""
    if not data_dir or not os.path.isdir(os.path.join(data_dir, "annotations")):
        return None
    parts = []
    splits = [_coco_split(split)] if split else sorted(_available_splits(data_dir, task))
    for s in splits:
        for path in (os.path.join(data_dir, "annotations", f"{_KINDS[task]}_{s}2017.json"),
                     os.path.join(data_dir, f"{s}2017")):
            if os.path.exists(path):
                st = os.stat(path)
                parts.append(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _available_splits(root: str, task: str) -> list[str]:
    prefix, suffix = f"{_KINDS[task]}_", "2017.json"
    ann_dir = os.path.join(root, "annotations")
    if not os.path.isdir(ann_dir):
        return []
    return [f[len(prefix):-len(suffix)] for f in os.listdir(ann_dir) if f.startswith(prefix) and f.endswith(suffix)]


def _load_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _image_path(root: str, split: str, file_name: str) -> str:
    path = os.path.join(root, f"{split}2017", file_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO image {path!r} (listed in the {split} annotations) is missing. Copy the "
                                f"{split}2017/ images next to annotations/, or remove the image from the annotation "
                                "file.")
    return path


class _CocoBuilder(datasets.GeneratorBasedBuilder):
    """Shared plumbing: the `data_dir` is the COCO root, `config.split` restricts which splits are prepared."""

    _task: str = ""

    def __init__(self, *args, **kwargs):
        # Both builders live in one module, and `datasets` names the cache folder after the module: name them apart.
        kwargs.setdefault("dataset_name", f"coco_{self._task}")
        if kwargs.get("hash") is None:
            kwargs["hash"] = _fingerprint(kwargs.get("data_dir"), self._task, kwargs.get("split"))
        super().__init__(*args, **kwargs)

    def _splits_to_build(self) -> list[str]:
        root = self.config.data_dir
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"{type(self).__name__} needs data_dir=<COCO root>, got {root!r}.")
        if self.config.split:
            coco_annotation_file(root, self.config.split, self._task)  # raises with the list of what exists
            return [_coco_split(self.config.split)]
        splits = sorted(_available_splits(root, self._task))
        if not splits:
            coco_annotation_file(root, "train", self._task)  # raises
        return splits


@dataclass
class CocoObjectsConfig(datasets.BuilderConfig):
    """Options of [`CocoObjects`].

    Args:
        split (`str`, *optional*): prepare only this split (`"train"` or `"val"`); `None` prepares every split whose
            `instances_{split}2017.json` exists.
        min_box_size (`int`, defaults to 16): drop boxes whose width or height is below this many pixels (tiny crops
            carry little more than noise once resized to the model's resolution).
        skip_crowd (`bool`, defaults to `True`): drop `iscrowd` boxes (they cover a group of objects, not one).
        jpeg_quality (`int`, defaults to 95): JPEG quality of the stored crops.
    """

    split: str | None = None
    min_box_size: int = 16
    skip_crowd: bool = True
    jpeg_quality: int = 95


class CocoObjects(_CocoBuilder):
    """COCO object crops: every kept instance box of `instances_{split}2017.json` becomes one labelled image.

    Columns: `image` (the crop, JPEG bytes), `label` (`ClassLabel` whose names are the category names ordered by
    category id, so label = rank of the category id), `image_id`, `annotation_id`, `bbox` (`[x, y, w, h]` in pixels of
    the source image). Rows follow image id, then annotation id.
    """

    BUILDER_CONFIG_CLASS = CocoObjectsConfig
    VERSION = datasets.Version("1.0.0")
    _task = "objects"

    def _info(self) -> datasets.DatasetInfo:
        # The class names come from the annotation file; they are filled in by `_split_generators`.
        return datasets.DatasetInfo(description="COCO 2017 object crops (one row per instance box).")

    def _split_generators(self, dl_manager):
        root = self.config.data_dir
        generators, names = [], None
        for split in self._splits_to_build():
            data = _load_json(coco_annotation_file(root, split, self._task))
            categories = sorted(data["categories"], key=lambda c: c["id"])
            split_names = [c["name"] for c in categories]
            if names is not None and split_names != names:
                raise ValueError(f"COCO categories differ between splits in {root!r}; prepare one split at a time.")
            names = split_names
            label_of = {c["id"]: i for i, c in enumerate(categories)}
            boxes = defaultdict(list)
            for ann in data["annotations"]:
                boxes[ann["image_id"]].append(ann)
            images = []
            for img in sorted(data["images"], key=lambda im: im["id"]):
                if img["id"] in boxes:
                    anns = sorted(boxes[img["id"]], key=lambda a: a["id"])
                    kept = [(a["id"], label_of[a["category_id"]], a["bbox"], a.get("iscrowd", 0)) for a in anns]
                    images.append((_image_path(root, split, img["file_name"]), img["id"], kept))
            # A list in gen_kwargs lets `download_and_prepare(num_proc=N)` shard the images across processes.
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs={"images": images}))
        self.info.features = datasets.Features({
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=names),
            "image_id": datasets.Value("int64"),
            "annotation_id": datasets.Value("int64"),
            "bbox": datasets.List(datasets.Value("float32"), length=4),
        })
        return generators

    def _generate_examples(self, images):
        cfg = self.config
        for path, image_id, anns in images:
            kept = [a for a in anns if not (cfg.skip_crowd and a[3]) and min(a[2][2], a[2][3]) >= cfg.min_box_size]
            if not kept:
                continue
            with Image.open(path) as im:
                # COCO has grayscale and CMYK JPEGs; CLIP wants RGB, and JPEG cannot store every mode.
                im = im.convert("RGB")
                for ann_id, label, (x, y, w, h), _ in kept:
                    box = (max(0, math.floor(x)), max(0, math.floor(y)),
                           min(im.width, math.ceil(x + w)), min(im.height, math.ceil(y + h)))
                    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                        continue  # a box outside the image (broken annotation)
                    buf = io.BytesIO()
                    im.crop(box).save(buf, format="JPEG", quality=cfg.jpeg_quality)
                    yield ann_id, {"image": {"bytes": buf.getvalue(), "path": None}, "label": label,
                                   "image_id": image_id, "annotation_id": ann_id, "bbox": [x, y, w, h]}


@dataclass
class CocoCaptionsConfig(datasets.BuilderConfig):
    """Options of [`CocoCaptions`].

    Args:
        split (`str`, *optional*): prepare only this split; `None` prepares every split with a captions file.
        embed_images (`bool`, defaults to `False`): store the image bytes in the cache instead of the file paths
            (the cache then survives moving the COCO folder, at the cost of a copy of the images).
    """

    split: str | None = None
    embed_images: bool = False


class CocoCaptions(_CocoBuilder):
    """COCO captions for image-text retrieval: one row per image, `captions` = all its captions (about 5).

    Columns: `image`, `captions` (list of strings, in annotation-id order), `image_id`, `file_name`. Rows follow image
    id; images without a caption are left out.
    """

    BUILDER_CONFIG_CLASS = CocoCaptionsConfig
    VERSION = datasets.Version("1.0.0")
    _task = "captions"

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="COCO 2017 captions (one row per image).",
            features=datasets.Features({
                "image": datasets.Image(),
                "captions": datasets.List(datasets.Value("string")),
                "image_id": datasets.Value("int64"),
                "file_name": datasets.Value("string"),
            }),
        )

    def _split_generators(self, dl_manager):
        root = self.config.data_dir
        generators = []
        for split in self._splits_to_build():
            data = _load_json(coco_annotation_file(root, split, self._task))
            captions = defaultdict(list)
            for ann in sorted(data["annotations"], key=lambda a: a["id"]):
                captions[ann["image_id"]].append(ann["caption"].strip())
            images = [(_image_path(root, split, img["file_name"]), img["id"], img["file_name"], captions[img["id"]])
                      for img in sorted(data["images"], key=lambda im: im["id"]) if captions.get(img["id"])]
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs={"images": images}))
        return generators

    def _generate_examples(self, images):
        for path, image_id, file_name, caps in images:
            if self.config.embed_images:
                with open(path, "rb") as f:
                    image = {"bytes": f.read(), "path": file_name}
            else:
                image = {"bytes": None, "path": os.path.abspath(path)}
            yield image_id, {"image": image, "captions": caps, "image_id": image_id, "file_name": file_name}


_BUILDERS = {"objects": CocoObjects, "captions": CocoCaptions}


def load_coco(root: str, split: str, *, task: str, cache_dir: str | None = None, num_proc: int | None = None,
              **options: Any) -> datasets.Dataset:
    """Prepare (once, then from the cache) and load one split of a COCO task.

    Args:
        root (`str`): the COCO root (`annotations/`, `{split}2017/`).
        split (`str`): `"train"` or `"val"` (`"validation"` is accepted); `datasets` slicing (`"val[:100]"`) works.
        task (`str`): `"objects"` ([`CocoObjects`]) or `"captions"` ([`CocoCaptions`]).
        cache_dir (`str`, *optional*): cache root of the prepared Arrow files (default: `HF_DATASETS_CACHE`).
        num_proc (`int`, *optional*): processes used to prepare the split (cropping all of COCO train takes a while).
        **options: fields of [`CocoObjectsConfig`] or [`CocoCaptionsConfig`], e.g. `min_box_size=32`.

    Returns:
        `datasets.Dataset`: the split.
    """
    if task not in _BUILDERS:
        raise ValueError(f"COCO task must be one of {list(_BUILDERS)}, got {task!r}.")
    base = split.split("[", 1)[0]
    coco_annotation_file(root, base, task)  # fail early, with the list of what the root holds
    valid = {f for f in _BUILDERS[task].BUILDER_CONFIG_CLASS.__dataclass_fields__} - {"name", "version", "data_dir",
                                                                                       "data_files", "description",
                                                                                       "split"}
    check_keys(f"{_BUILDERS[task].__name__} option", options, sorted(valid))
    builder = _BUILDERS[task](data_dir=os.path.abspath(root), split=_coco_split(base), cache_dir=cache_dir, **options)
    builder.download_and_prepare(num_proc=num_proc)
    return builder.as_dataset(split=_coco_split(base) + split[len(base):])
