"""COCO 2014 / 2017 as `datasets` builders: object crops (the paper's update task) and captions (retrieval).

`datasets` 5 no longer runs loading scripts, so the builders are plain classes of this package, instantiated directly:

```python
builder = CocoObjects(data_dir="/data/coco", split="val", cache_dir="/tmp/cache")
builder.download_and_prepare()
crops = builder.as_dataset("val")
```

or, as `load_spec` does, `load_coco("/data/coco", "val", task="objects")`. The root keeps COCO's own layout:
`annotations/{instances,captions}_{split}{year}.json` and the images in `{split}{year}/` (`year` 2017, the default, or
2014, whose images are named `COCO_{split}2014_%012d.jpg`).

**The paper's protocol** (Ding et al. 2022, official `data_preprocess/coco_process.py`) is COCO 2014 with Karpathy's
split: `year=2014, karpathy_file="dataset_coco.json"` gives the splits

- `train`: crops of every box of `instances_train2014.json`;
- `val` / `test`: crops of the boxes of `instances_val2014.json` whose image is in Karpathy's `val` / `test` (5,000
  images each);

with the official tiny-box rule `min_box_size=4, min_box_size_inclusive=False` (a box is dropped when
`width <= 4 or height <= 4`) and `skip_crowd=False` (coco_process.py keeps crowd boxes). For captions the same file
gives Karpathy's `train` / `restval` / `val` / `test` images with their `raw` sentences (`test` = the COCO 5k
retrieval set).

The cache key includes the size and modification time of the annotation files, the Karpathy file and the image
folders, so editing any of them rebuilds the cache instead of serving stale rows.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import datasets
from PIL import Image

from .karpathy import karpathy_captions, karpathy_images, missing_images, read_karpathy
from .specs import check_keys, image_record, stat_fingerprint

__all__ = ["CocoCaptions", "CocoCaptionsConfig", "CocoObjects", "CocoObjectsConfig", "coco_annotation_file",
           "load_coco"]

_SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train"}
_KINDS = {"objects": "instances", "captions": "captions"}
_YEARS = (2014, 2017)
# coco_process.py: train crops come from train2014, Karpathy's val / test crops from val2014 (its restval is unused).
_KARPATHY_OBJECT_SPLITS = ("train", "val", "test")


def _coco_split(split: str) -> str:
    return _SPLIT_ALIASES.get(split, split)


def _check_year(year: Any) -> int:
    if year not in _YEARS:
        raise ValueError(f"COCO year must be 2014 or 2017, got {year!r}; set year in builder_kwargs.")
    return int(year)


def coco_annotation_file(root: str, split: str, task: str, year: int = 2017) -> str:
    """Path of the annotation file a COCO task needs, with an error that lists what the root does hold.

    Args:
        root (`str`): the COCO root (holds `annotations/`).
        split (`str`): `"train"`, `"val"` (or `"validation"`), or any `{split}` with `{kind}_{split}{year}.json`.
        task (`str`): `"objects"` (reads `instances_*`) or `"captions"` (reads `captions_*`).
        year (`int`, defaults to 2017): the COCO edition, 2014 or 2017.

    Returns:
        `str`: the path of `annotations/{kind}_{split}{year}.json`.
    """
    if task not in _KINDS:
        raise ValueError(f"COCO task must be one of {list(_KINDS)}, got {task!r}.")
    year = _check_year(year)
    kind = _KINDS[task]
    path = os.path.join(root, "annotations", f"{kind}_{_coco_split(split)}{year}.json")
    if not os.path.isfile(path):
        ann_dir = os.path.join(root, "annotations")
        found = sorted(os.listdir(ann_dir)) if os.path.isdir(ann_dir) else []
        other = [y for y in _YEARS if y != year and any(f.startswith(f"{kind}_") and f.endswith(f"{y}.json")
                                                        for f in found)]
        if other and not any(f.endswith(f"{year}.json") for f in found):
            raise FileNotFoundError(
                f"COCO {task}: {root!r} is a COCO {other[0]} root (annotations/ holds {found}) but year is {year}. "
                f"Set year: {other[0]} in builder_kwargs, or point path at the COCO {year} root.")
        raise FileNotFoundError(
            f"COCO {task}: annotation file {path!r} not found. A COCO root holds "
            f"annotations/{kind}_{{split}}{year}.json and {{split}}{year}/ images (split 'train' or 'val'); "
            f"annotations/ there holds {found or 'nothing'}. Fix the path, the split or the year."
        )
    return path


def _check_karpathy_year(year: int, who: str) -> None:
    if year != 2014:
        raise ValueError(f"{who}: Karpathy's split names COCO 2014 images; set year: 2014 (with a COCO 2014 root) or "
                         "drop karpathy_file.")


def _karpathy_path(root: str, karpathy_file: str | None) -> str | None:
    """A relative `karpathy_file` is read from the COCO root (where `dataset_coco.json` usually sits)."""
    if karpathy_file is None:
        return None
    return karpathy_file if os.path.isabs(karpathy_file) else os.path.join(root, karpathy_file)


def _fingerprint(data_dir: str | None, task: str, split: str | None, year: int = 2017,
                 karpathy_file: str | None = None) -> str | None:
    """Sizes and modification times of the annotation files, Karpathy file and image folders, so that edits
    invalidate the cache."""
    if not data_dir or not os.path.isdir(data_dir) or year not in _YEARS:
        return None
    files = [os.path.join(data_dir, "annotations", f"{_KINDS[task]}_{s}{year}.json") for s in ("train", "val")]
    folders = [os.path.join(data_dir, f"{s}{year}") for s in ("train", "val")]
    if split and not karpathy_file:
        files = [os.path.join(data_dir, "annotations", f"{_KINDS[task]}_{_coco_split(split)}{year}.json")]
        folders = [os.path.join(data_dir, f"{_coco_split(split)}{year}")]
    elif not karpathy_file:
        splits = sorted(_available_splits(data_dir, task, year))
        files = [os.path.join(data_dir, "annotations", f"{_KINDS[task]}_{s}{year}.json") for s in splits]
        folders = [os.path.join(data_dir, f"{s}{year}") for s in splits]
    karpathy = _karpathy_path(data_dir, karpathy_file)
    return stat_fingerprint([*files, *folders, *([karpathy] if karpathy else [])])


def _available_splits(root: str, task: str, year: int = 2017) -> list[str]:
    prefix, suffix = f"{_KINDS[task]}_", f"{year}.json"
    ann_dir = os.path.join(root, "annotations")
    if not os.path.isdir(ann_dir):
        return []
    return [f[len(prefix):-len(suffix)] for f in os.listdir(ann_dir) if f.startswith(prefix) and f.endswith(suffix)]


def _load_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _image_path(root: str, folder: str, file_name: str, split: str) -> str:
    path = os.path.join(root, folder, file_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO image {path!r} (listed in the {split} annotations) is missing. Copy the "
                                f"{folder}/ images next to annotations/, or remove the image from the annotation "
                                "file.")
    return path


def _check_karpathy_images(root: str, entries: list[dict[str, Any]], split: str, path: str) -> None:
    """Every image Karpathy's split names must be in the root: a silent gap would change the test set."""
    paths = [os.path.join(root, e.get("filepath", ""), e["filename"]) for e in entries]
    missing = missing_images(paths)
    if missing:
        raise FileNotFoundError(
            f"COCO: {len(missing)} of the {len(paths)} images that {os.path.basename(path)} puts in Karpathy's "
            f"{split!r} split are missing (first: {missing[0]!r}). Unpack the COCO 2014 images ({{filepath}}/ folders, "
            "e.g. val2014/) into the root, or point karpathy_file at the split file of these images.")


class _CocoBuilder(datasets.GeneratorBasedBuilder):
    """Shared plumbing: the `data_dir` is the COCO root, `config.split` restricts which splits are prepared."""

    _task: str = ""

    def __init__(self, *args, **kwargs):
        # Both builders live in one module, and `datasets` names the cache folder after the module: name them apart.
        kwargs.setdefault("dataset_name", f"coco_{self._task}")
        if kwargs.get("hash") is None:
            kwargs["hash"] = _fingerprint(kwargs.get("data_dir"), self._task, kwargs.get("split"),
                                          kwargs.get("year", 2017), kwargs.get("karpathy_file"))
        super().__init__(*args, **kwargs)

    def _karpathy_splits(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _splits_to_build(self) -> list[str]:
        root, cfg = self.config.data_dir, self.config
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"{type(self).__name__} needs data_dir=<COCO root>, got {root!r}.")
        year = _check_year(cfg.year)
        if cfg.karpathy_file is not None:
            _check_karpathy_year(year, type(self).__name__)
            splits = self._karpathy_splits()
            if cfg.split and _coco_split(cfg.split) not in splits:
                raise ValueError(f"{type(self).__name__}: with karpathy_file the splits are {list(splits)}, got "
                                 f"{cfg.split!r}. Set split to one of those.")
            return [_coco_split(cfg.split)] if cfg.split else list(splits)
        if cfg.split:
            coco_annotation_file(root, cfg.split, self._task, year)  # raises with the list of what exists
            return [_coco_split(cfg.split)]
        splits = sorted(_available_splits(root, self._task, year))
        if not splits:
            coco_annotation_file(root, "train", self._task, year)  # raises
        return splits


@dataclass
class CocoObjectsConfig(datasets.BuilderConfig):
    """Options of [`CocoObjects`].

    Args:
        split (`str`, *optional*): prepare only this split (`"train"` or `"val"`; with `karpathy_file` also
            `"test"`); `None` prepares every split.
        year (`int`, defaults to 2017): COCO edition, 2014 or 2017 (annotation and image folder names end in it).
        karpathy_file (`str`, *optional*): Karpathy's `dataset_coco.json` (a relative path is read from the COCO
            root). With it (year 2014 only), `train` crops all of `instances_train2014.json` and `val` / `test` crop
            the val2014 images of Karpathy's `val` / `test`, as the official `coco_process.py` does.
        min_box_size (`float`, defaults to 16): size threshold of the tiny-box rule, in pixels of the source image.
        min_box_size_inclusive (`bool`, defaults to `True`): how a box's width `w` and height `h` meet the threshold.
            `True` keeps a box when `w >= min_box_size and h >= min_box_size` (a box of exactly the threshold stays).
            `False` is the official rule of `coco_process.py`: a box is dropped when `w <= min_box_size or
            h <= min_box_size` (a box of exactly the threshold goes); the paper uses it with `min_box_size=4`.
        skip_crowd (`bool`, defaults to `True`): drop `iscrowd` boxes (they cover a group of objects, not one). The
            official code keeps them (`False`).
        crop_rounding (`str`, defaults to `"outward"`): how the float box `[x, y, x + w, y + h]` becomes pixels.
            `"outward"`: floor the corner, ceil the far edge, clip to the image (the crop holds the whole box).
            `"nearest"`: PIL's `Image.crop` on the float box, as the official `data.py: OST.__getitem__` does (each
            coordinate rounded to the nearest integer, area outside the image filled with black).
        jpeg_quality (`int`, defaults to 95): JPEG quality of the stored crops.
    """

    split: str | None = None
    year: int = 2017
    karpathy_file: str | None = None
    min_box_size: float = 16
    min_box_size_inclusive: bool = True
    skip_crowd: bool = True
    crop_rounding: str = "outward"
    jpeg_quality: int = 95


def keep_box(width: float, height: float, min_box_size: float, inclusive: bool) -> bool:
    """The tiny-box rule of [`CocoObjectsConfig`] (`inclusive=False` is `coco_process.py`'s, negated).

    Args:
        width (`float`): box width `bbox[2]`.
        height (`float`): box height `bbox[3]`.
        min_box_size (`float`): threshold in pixels.
        inclusive (`bool`): `True` keeps `w >= t and h >= t`; `False` drops `w <= t or h <= t`.

    Returns:
        `bool`: whether the box is kept.
    """
    if inclusive:
        return width >= min_box_size and height >= min_box_size
    return not (width <= min_box_size or height <= min_box_size)


class CocoObjects(_CocoBuilder):
    """COCO object crops: every kept instance box becomes one labelled image.

    Columns: `image` (the crop, JPEG bytes), `label` (`ClassLabel` whose names are the category names ordered by
    category id, so label = rank of the category id; COCO's files list categories in id order, so this is also the
    official `data.py`'s index in the file's category list), `image_id`, `annotation_id`, `bbox` (`[x, y, w, h]` in
    pixels of the source image). Rows follow image id, then annotation id.
    """

    BUILDER_CONFIG_CLASS = CocoObjectsConfig
    VERSION = datasets.Version("1.1.0")
    _task = "objects"

    def _info(self) -> datasets.DatasetInfo:
        # The class names come from the annotation file; they are filled in by `_split_generators`.
        return datasets.DatasetInfo(description="COCO object crops (one row per instance box).")

    def _karpathy_splits(self) -> tuple[str, ...]:
        return _KARPATHY_OBJECT_SPLITS

    def _split_generators(self, dl_manager):
        root, cfg = self.config.data_dir, self.config
        year = _check_year(cfg.year)
        karpathy_path = _karpathy_path(root, cfg.karpathy_file)
        karpathy = read_karpathy(karpathy_path, "COCO") if karpathy_path else None
        generators, names = [], None
        for split in self._splits_to_build():
            source = split if karpathy is None else ("train" if split == "train" else "val")
            data = _load_json(coco_annotation_file(root, source, self._task, year))
            selected = None
            if karpathy is not None and split != "train":
                # coco_process.py: a val2014 box goes to Karpathy's split when its image file name is listed there.
                entries = karpathy_images(karpathy, split, karpathy_path, "COCO")
                _check_karpathy_images(root, entries, split, karpathy_path)
                selected = {e["filename"] for e in entries}
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
                if img["id"] not in boxes or (selected is not None and img["file_name"] not in selected):
                    continue
                anns = sorted(boxes[img["id"]], key=lambda a: a["id"])
                kept = [(a["id"], label_of[a["category_id"]], a["bbox"], a.get("iscrowd", 0)) for a in anns]
                images.append((_image_path(root, f"{source}{year}", img["file_name"], split), img["id"], kept))
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
        if cfg.crop_rounding not in ("outward", "nearest"):
            raise ValueError(f"crop_rounding must be 'outward' or 'nearest', got {cfg.crop_rounding!r}.")
        for path, image_id, anns in images:
            kept = [a for a in anns if not (cfg.skip_crowd and a[3])
                    and keep_box(a[2][2], a[2][3], cfg.min_box_size, cfg.min_box_size_inclusive)]
            if not kept:
                continue
            with Image.open(path) as im:
                # COCO has grayscale and CMYK JPEGs; CLIP wants RGB, and JPEG cannot store every mode.
                im = im.convert("RGB")
                for ann_id, label, (x, y, w, h), _ in kept:
                    if cfg.crop_rounding == "nearest":
                        box = (x, y, x + w, y + h)  # PIL rounds each coordinate itself
                        if round(x + w) - round(x) < 1 or round(y + h) - round(y) < 1:
                            continue
                    else:
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
        split (`str`, *optional*): prepare only this split; `None` prepares every split.
        year (`int`, defaults to 2017): COCO edition, 2014 or 2017.
        karpathy_file (`str`, *optional*): Karpathy's `dataset_coco.json` (a relative path is read from the COCO
            root; year 2014 only). With it the splits are Karpathy's `train`, `restval`, `val` and `test` (5,000
            images, the paper's COCO retrieval set), the captions its `raw` sentences, and no captions file is read.
        lowercase (`bool`, defaults to `False`): lower-case every caption, as the official `data.py: RetriTask` does.
        max_captions_per_image (`int`, *optional*): keep only the first this many captions of each image (`None`
            keeps all). The official retrieval metrics (`methods/base.py: i2t / t2i`) assume exactly 5.
        embed_images (`bool`, defaults to `False`): store the image bytes in the cache instead of the file paths
            (the cache then survives moving the COCO folder, at the cost of a copy of the images).
    """

    split: str | None = None
    year: int = 2017
    karpathy_file: str | None = None
    lowercase: bool = False
    max_captions_per_image: int | None = None
    embed_images: bool = False


class CocoCaptions(_CocoBuilder):
    """COCO captions for image-text retrieval: one row per image, `captions` = all its captions (about 5).

    Columns: `image`, `captions` (list of strings, in annotation-id order, or in Karpathy's order), `image_id`,
    `file_name`. Rows follow image id (or Karpathy's file order); images without a caption are left out.
    """

    BUILDER_CONFIG_CLASS = CocoCaptionsConfig
    VERSION = datasets.Version("1.1.0")
    _task = "captions"

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="COCO captions (one row per image).",
            features=caption_features(),
        )

    def _karpathy_splits(self) -> tuple[str, ...]:
        return ("train", "restval", "val", "test")

    def _split_generators(self, dl_manager):
        root, cfg = self.config.data_dir, self.config
        year = _check_year(cfg.year)
        if cfg.max_captions_per_image is not None and cfg.max_captions_per_image < 1:
            raise ValueError(f"max_captions_per_image must be a positive integer or None, got "
                             f"{cfg.max_captions_per_image!r}.")
        karpathy_path = _karpathy_path(root, cfg.karpathy_file)
        karpathy = read_karpathy(karpathy_path, "COCO") if karpathy_path else None
        generators = []
        for split in self._splits_to_build():
            if karpathy is not None:
                entries = karpathy_images(karpathy, split, karpathy_path, "COCO")
                _check_karpathy_images(root, entries, split, karpathy_path)
                images = [(os.path.join(root, e.get("filepath", ""), e["filename"]), _coco_id(e), e["filename"],
                           karpathy_captions(e, cfg.lowercase, cfg.max_captions_per_image)) for e in entries]
            else:
                data = _load_json(coco_annotation_file(root, split, self._task, year))
                captions = defaultdict(list)
                for ann in sorted(data["annotations"], key=lambda a: a["id"]):
                    text = ann["caption"].strip()
                    captions[ann["image_id"]].append(text.lower() if cfg.lowercase else text)
                images = [(_image_path(root, f"{split}{year}", img["file_name"], split), img["id"], img["file_name"],
                           captions[img["id"]][:cfg.max_captions_per_image])
                          for img in sorted(data["images"], key=lambda im: im["id"]) if captions.get(img["id"])]
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs={"images": images}))
        return generators

    def _generate_examples(self, images):
        for key, (path, image_id, file_name, caps) in enumerate(images):
            if not caps:
                continue
            image = image_record(path, file_name, embed=self.config.embed_images)
            yield key, {"image": image, "captions": caps, "image_id": image_id, "file_name": file_name}


def caption_features() -> datasets.Features:
    """The row schema of every caption builder (COCO, Flickr30k): one row per image with all its captions."""
    return datasets.Features({
        "image": datasets.Image(),
        "captions": datasets.List(datasets.Value("string")),
        "image_id": datasets.Value("int64"),
        "file_name": datasets.Value("string"),
    })


def _coco_id(entry: dict[str, Any]) -> int:
    """COCO image id of a Karpathy entry: `cocoid`, else the number in `COCO_val2014_%012d.jpg`."""
    if "cocoid" in entry:
        return int(entry["cocoid"])
    match = re.search(r"(\d+)\.\w+$", entry["filename"])
    return int(match.group(1)) if match else -1


_BUILDERS = {"objects": CocoObjects, "captions": CocoCaptions}


def load_coco(root: str, split: str, *, task: str, cache_dir: str | None = None, num_proc: int | None = None,
              **options: Any) -> datasets.Dataset:
    """Prepare (once, then from the cache) and load one split of a COCO task.

    Args:
        root (`str`): the COCO root (`annotations/`, `{split}{year}/`).
        split (`str`): `"train"` or `"val"` (`"validation"` is accepted); with `karpathy_file` also `"test"`
            (and `"restval"` for captions); `datasets` slicing (`"val[:100]"`) works.
        task (`str`): `"objects"` ([`CocoObjects`]) or `"captions"` ([`CocoCaptions`]).
        cache_dir (`str`, *optional*): cache root of the prepared Arrow files (default: `HF_DATASETS_CACHE`).
        num_proc (`int`, *optional*): processes used to prepare the split (cropping all of COCO train takes a while).
        **options: fields of [`CocoObjectsConfig`] or [`CocoCaptionsConfig`], e.g. `year=2014`,
            `karpathy_file="dataset_coco.json"`, `min_box_size=4`.

    Returns:
        `datasets.Dataset`: the split.
    """
    if task not in _BUILDERS:
        raise ValueError(f"COCO task must be one of {list(_BUILDERS)}, got {task!r}.")
    base = split.split("[", 1)[0]
    valid = {f for f in _BUILDERS[task].BUILDER_CONFIG_CLASS.__dataclass_fields__} - {"name", "version", "data_dir",
                                                                                       "data_files", "description",
                                                                                       "split"}
    check_keys(f"{_BUILDERS[task].__name__} option", options, sorted(valid))
    year = _check_year(options.get("year", 2017))
    # Fail early, with the list of what the root holds (a 2017 root given with year 2014 is named as such). With a
    # Karpathy file, object crops read instances_train / instances_val; captions read no annotation file.
    if options.get("karpathy_file") is None:
        coco_annotation_file(root, base, task, year)
    else:
        _check_karpathy_year(year, _BUILDERS[task].__name__)
        if task == "objects":
            coco_annotation_file(root, "train" if _coco_split(base) == "train" else "val", task, year)
    builder = _BUILDERS[task](data_dir=os.path.abspath(root), split=_coco_split(base), cache_dir=cache_dir, **options)
    builder.download_and_prepare(num_proc=num_proc)
    return builder.as_dataset(split=_coco_split(base) + split[len(base):])
