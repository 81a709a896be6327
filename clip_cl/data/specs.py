"""Dataset specs: a `DatasetSpec` names one split of one dataset, `load_spec` turns it into a `datasets.Dataset`.

A spec is what a recipe writes (a plain dict in YAML), so every field has a default except `name` and `path`, unknown
keys are rejected with a suggestion, and loading failures say what was expected and how to fix the config.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import datasets

__all__ = ["BUILDERS", "DatasetSpec", "check_keys", "class_names_of", "image_record", "infer_builder", "label_array",
           "load_spec", "subsample"]

logger = logging.getLogger(__name__)

BUILDERS: tuple[str, ...] = ("parquet", "imagefolder", "hub", "coco_objects", "coco_captions", "flickr30k",
                              "tiered_imagenet", "eurosat")
TASKS: tuple[str, ...] = ("classification", "retrieval")

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Sub-folder names that `datasets`' imagefolder reads as splits rather than as class names.
_SPLIT_DIR_NAMES = ("train", "training", "test", "testing", "eval", "validation", "valid", "val", "dev")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_keys(kind: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise a `ValueError` naming the unknown keys of a config dict, the valid keys and the closest valid key.

    Args:
        kind (`str`): what is being configured, for the message (e.g. `"DatasetSpec"`).
        given (`Iterable[str]`): the keys of the user's dict.
        valid (`Iterable[str]`): the accepted keys.
    """
    valid = list(valid)
    unknown = [k for k in given if k not in valid]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    raise ValueError(f"Unknown {kind} key(s): {', '.join(hints)}. Valid keys are: {', '.join(valid)}.")


@dataclass
class DatasetSpec:
    """One split of one dataset, as written in a recipe.

    Parameters that identify the data:
        name (`str`): short name used in results and logs, e.g. `"cifar10"`.
        path (`str`): where the data is. One of: a Hub dataset id (`"uoft-cs/cifar10"`); a local folder holding
            `{split}.parquet` or `{split}-*.parquet` (also under `data/`); a single local `.parquet` file; an image
            folder in `datasets`' imagefolder layout (`{path}/{split}/{class}/*.jpg`, or `{path}/{class}/*.jpg` for a
            folder that is the split); a COCO 2014 or 2017 root (`annotations/`, `{split}{year}/`) for the COCO
            builders; a Flickr30k folder (`dataset_flickr30k.json`, `flickr30k-images/`); or, for `tiered_imagenet`,
            an ImageNet folder or Parquet; for `eurosat`, the EuroSAT RGB folder.
        split (`str`, defaults to `"test"`): split to load. `datasets`' slicing works (`"train[:1000]"`). COCO splits
            are `"train"` and `"val"` (`"validation"` is accepted), plus `"test"` with a Karpathy file; Flickr30k's
            are Karpathy's `"train"`, `"val"`, `"test"`; tieredImageNet's are its class splits (`"test"`, ...).
        builder (`str`, *optional*): how to read `path`: `"parquet"`, `"imagefolder"`, `"hub"`, `"coco_objects"`,
            `"coco_captions"`, `"flickr30k"`, `"tiered_imagenet"` or `"eurosat"`. `None` infers it from `path` (a
            folder holding `dataset_flickr30k.json` is Flickr30k); the COCO, tieredImageNet and EuroSAT builders must
            be named explicitly.
        builder_kwargs (`dict`, *optional*): options of the builder, e.g. `{"year": 2014, "karpathy_file":
            "dataset_coco.json", "min_box_size": 4, "min_box_size_inclusive": false}` for `coco_objects`,
            `{"lowercase": true}` for `flickr30k`, or `{"name": "plain_text"}` (a Hub config name) for `"hub"`.

    Parameters that name the columns:
        image_column (`str`, defaults to `"image"`): column of `datasets.Image` (a column of file paths is cast to it).
        label_column (`str`, defaults to `"label"`): integer class column (classification only).
        captions_column (`str`, defaults to `"captions"`): list of strings, or one string, per image (retrieval only).
        class_names (`list[str]`, *optional*): class names in label-id order; overrides the `ClassLabel` names (e.g.
            to give prompts nicer names) and is required when the label column is a plain integer.

    Parameters of the evaluation:
        eval_folds (`int`, defaults to 1): retrieval sets only: average Recall@K over this many consecutive folds of
            equal size (5 on COCO's Karpathy 5k test = the official code's "COCO 1k" numbers).

    Parameters for quick runs:
        max_samples (`int`, *optional*): keep a seeded random subset of this many rows (in their original order).
        seed (`int`, defaults to 0): seed of that subset.
    """

    name: str = field(metadata={"help": "Short name used in results, e.g. 'cifar10'."})
    path: str = field(metadata={"help": "Hub id, Parquet folder or file, image folder, or COCO root."})
    split: str = field(default="test", metadata={"help": "Split to load; slicing such as 'train[:100]' works."})
    builder: str | None = field(default=None, metadata={"help": f"One of {BUILDERS}; None infers it from path."})
    builder_kwargs: dict[str, Any] | None = field(default=None, metadata={"help": "Options of the builder."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Column holding the integer class ids."})
    captions_column: str = field(default="captions", metadata={"help": "Column holding the captions of each image."})
    class_names: list[str] | None = field(default=None, metadata={"help": "Class names overriding the ClassLabel's."})
    eval_folds: int = field(default=1, metadata={"help": "Retrieval: average recalls over this many equal folds."})
    max_samples: int | None = field(default=None, metadata={"help": "Seeded random subset size, for quick runs."})
    seed: int = field(default=0, metadata={"help": "Seed of the max_samples subset."})

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DatasetSpec.name must be a non-empty string, got {self.name!r}.")
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise ValueError(f"DatasetSpec {self.name!r}: path must be a non-empty string, got {self.path!r}.")
        self.path = os.fspath(self.path)
        if self.builder is not None and self.builder not in BUILDERS:
            close = difflib.get_close_matches(str(self.builder), BUILDERS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"DatasetSpec {self.name!r}: unknown builder {self.builder!r}; use one of {BUILDERS} "
                             f"or leave it unset to infer it from the path.{hint}")
        if not isinstance(self.eval_folds, int) or self.eval_folds < 1:
            raise ValueError(f"DatasetSpec {self.name!r}: eval_folds must be a positive integer, got "
                             f"{self.eval_folds!r}.")
        if self.max_samples is not None and (not isinstance(self.max_samples, int) or self.max_samples < 1):
            raise ValueError(f"DatasetSpec {self.name!r}: max_samples must be a positive integer or None, "
                             f"got {self.max_samples!r}.")
        if self.class_names is not None:
            self.class_names = list(self.class_names)

    @classmethod
    def from_dict(cls, d: DatasetSpec | Mapping[str, Any]) -> DatasetSpec:
        """Build a spec from a recipe dict (or return an existing spec unchanged).

        Args:
            d (`DatasetSpec` or `Mapping`): the spec, or a dict of its fields.

        Returns:
            `DatasetSpec`: the spec. Unknown keys raise a `ValueError` that lists the valid keys and the closest one.
        """
        if isinstance(d, DatasetSpec):
            return d
        if not isinstance(d, Mapping):
            raise TypeError(f"A dataset spec must be a dict or a DatasetSpec, got {type(d).__name__}: {d!r}.")
        check_keys("DatasetSpec", d.keys(), [f.name for f in fields(cls)])
        missing = [k for k in ("name", "path") if k not in d]
        if missing:
            raise ValueError(f"DatasetSpec is missing required key(s) {missing} in {dict(d)!r}.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain, JSON-serialisable dict (the inverse of [`DatasetSpec.from_dict`])."""
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------------
# Loading


def stat_fingerprint(paths: Iterable[str]) -> str:
    """A local builder's cache key: the name, size and modification time of each of `paths` that exists, hashed, so
    that editing an annotation file or an image folder invalidates the `datasets` cache."""
    parts = []
    for path in paths:
        if os.path.exists(path):
            st = os.stat(path)
            parts.append(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def image_record(path: str, name: str, embed: bool) -> dict[str, Any]:
    """A `datasets.Image` value for a file of a local builder: its bytes (stored under `name`) when `embed`, else
    its absolute path (the file is read when the row is)."""
    if embed:
        with open(path, "rb") as f:
            return {"bytes": f.read(), "path": name}
    return {"bytes": None, "path": os.path.abspath(path)}


def _base_split(split: str) -> str:
    """`"train[:10%]"` -> `"train"`: the name under which data files are registered."""
    return re.split(r"[\[+]", split, maxsplit=1)[0].strip()


def _parquet_files(folder: str, split: str) -> list[str]:
    base = _base_split(split)
    for sub in ("", "data"):
        root = os.path.join(folder, sub)
        files = [os.path.join(root, f"{base}.parquet")] if os.path.isfile(os.path.join(root, f"{base}.parquet")) else []
        files += sorted(glob.glob(os.path.join(glob.escape(root), f"{base}-*.parquet")))
        if files:
            return files
    return []


def _has_images(folder: str, max_dirs: int = 10_000) -> bool:
    for i, (_, _, files) in enumerate(os.walk(folder)):
        if any(f.lower().endswith(_IMAGE_EXTENSIONS) for f in files):
            return True
        if i > max_dirs:  # a huge tree without images near the top is not an image folder worth waiting for
            break
    return False


def infer_builder(spec: DatasetSpec) -> str:
    """The builder that reads `spec.path`: the one named in the spec, or the one its layout implies.

    Args:
        spec (`DatasetSpec`): the spec.

    Returns:
        `str`: one of [`BUILDERS`].
    """
    if spec.builder is not None:
        return spec.builder
    path = os.path.expanduser(spec.path)
    if os.path.isfile(path):
        if path.endswith(".parquet"):
            return "parquet"
        raise ValueError(f"DatasetSpec {spec.name!r}: {path!r} is a file but not a .parquet file. Point path at a "
                         "Parquet file, a folder of Parquet files or images, or a Hub dataset id.")
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "annotations")) and any(
                glob.glob(os.path.join(glob.escape(path), "annotations", f"*{year}.json")) for year in (2014, 2017)):
            raise ValueError(f"DatasetSpec {spec.name!r}: {path!r} looks like a COCO root; set builder to "
                             "'coco_objects' (object crops, 80 classes) or 'coco_captions' (image-text retrieval).")
        if any(glob.glob(os.path.join(glob.escape(path), sub, "*.parquet")) for sub in ("", "data")):
            return "parquet"
        if os.path.isfile(os.path.join(path, "dataset_flickr30k.json")):
            return "flickr30k"
        if _has_images(path):
            return "imagefolder"
        raise FileNotFoundError(f"DatasetSpec {spec.name!r}: folder {path!r} holds neither Parquet files nor images. "
                                f"Expected {spec.split}.parquet / {spec.split}-*.parquet, or class sub-folders of "
                                "images.")
    looks_local = spec.path.startswith((".", "/", "~")) or spec.path.endswith(".parquet") or spec.path.count("/") > 1
    if looks_local or not _HUB_ID.match(spec.path):
        raise FileNotFoundError(
            f"DatasetSpec {spec.name!r}: path {spec.path!r} does not exist (working directory {os.getcwd()!r}). "
            "Expected a Parquet file, a folder holding {split}.parquet or {split}-*.parquet, an image folder, a COCO "
            "root, or a Hub dataset id such as 'uoft-cs/cifar10'. Fix the path or use an absolute one."
        )
    return "hub"


def _load_parquet(spec: DatasetSpec, path: str, cache_dir: str | None) -> datasets.Dataset:
    if os.path.isfile(path):
        files = [path]
    else:
        files = _parquet_files(path, spec.split)
        if not files:
            found = sorted(os.path.relpath(f, path) for sub in ("", "data")
                           for f in glob.glob(os.path.join(glob.escape(path), sub, "*.parquet")))
            raise FileNotFoundError(
                f"DatasetSpec {spec.name!r}: no Parquet file for split {spec.split!r} in {path!r}. Expected "
                f"{_base_split(spec.split)}.parquet or {_base_split(spec.split)}-*.parquet (also under data/); found "
                f"{found[:10] or 'none'}. Set split to one of those names or point path at the file itself."
            )
    return datasets.load_dataset("parquet", data_files={_base_split(spec.split): files}, split=spec.split,
                                 cache_dir=cache_dir,
                                 **(spec.builder_kwargs or {}))


def _load_imagefolder(spec: DatasetSpec, path: str, cache_dir: str | None) -> datasets.Dataset:
    base = _base_split(spec.split)
    kwargs = dict(spec.builder_kwargs or {})
    if os.path.isdir(os.path.join(path, base)):
        folder = os.path.join(path, base)
    else:
        subdirs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        split_dirs = [d for d in subdirs if d.lower() in _SPLIT_DIR_NAMES]
        if split_dirs:
            raise FileNotFoundError(f"DatasetSpec {spec.name!r}: image folder {path!r} has split folders {split_dirs} "
                                    f"but none named {base!r}. Set split to one of them.")
        logger.info("Image folder %s has no %r sub-folder: reading the whole folder as split %r.", path, base, base)
        folder = path
    # Explicit data files: left to itself, `datasets` would also split a flat folder by file names ("test_1.jpg").
    files = os.path.join(glob.escape(folder), "**")
    return datasets.load_dataset("imagefolder", data_files={base: files}, split=spec.split, cache_dir=cache_dir,
                                 **kwargs)


def _load_hub(spec: DatasetSpec, cache_dir: str | None) -> datasets.Dataset:
    kwargs = dict(spec.builder_kwargs or {})
    try:
        return datasets.load_dataset(spec.path, split=spec.split, cache_dir=cache_dir, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError) as err:
        raise FileNotFoundError(
            f"DatasetSpec {spec.name!r}: could not load Hub dataset {spec.path!r} (split {spec.split!r}): {err}\n"
            f"No local file or folder {spec.path!r} exists either (working directory {os.getcwd()!r}). Check the "
            "id and your network; offline, point path at a local Parquet file/folder, or set HF_DATASETS_OFFLINE=1 "
            "with the dataset already in the cache."
        ) from err


def _check_columns(dataset: datasets.Dataset, spec: DatasetSpec, task: str | None) -> datasets.Dataset:
    required = {"image_column": spec.image_column}
    if task == "classification":
        required["label_column"] = spec.label_column
    elif task == "retrieval":
        required["captions_column"] = spec.captions_column
    for key, column in required.items():
        if column not in dataset.column_names:
            close = difflib.get_close_matches(column, dataset.column_names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"DatasetSpec {spec.name!r}: column {column!r} not found in {spec.path!r} (split "
                             f"{spec.split!r}); available columns: {dataset.column_names}. Set {key} in the spec."
                             f"{hint}")
    feature = dataset.features[spec.image_column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        # A column of file paths: casting only changes the feature, images are still read lazily.
        dataset = dataset.cast_column(spec.image_column, datasets.Image())
    elif not isinstance(feature, datasets.Image):
        raise ValueError(f"DatasetSpec {spec.name!r}: column {spec.image_column!r} is {feature}, not a "
                         "datasets.Image (or a column of image paths). Set image_column to the image column.")
    return dataset


def subsample(dataset: datasets.Dataset, max_samples: int | None, seed: int = 0) -> datasets.Dataset:
    """A seeded random subset of `max_samples` rows, kept in their original order (so reads stay sequential).

    Args:
        dataset (`datasets.Dataset`): the dataset.
        max_samples (`int`, *optional*): rows to keep; `None` or more than the dataset holds keeps everything.
        seed (`int`, defaults to 0): seed of the subset.

    Returns:
        `datasets.Dataset`: the subset (an indices mapping over the same data, nothing is copied).
    """
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    keep = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:max_samples])
    return dataset.select(keep)


def load_spec(spec: DatasetSpec | Mapping[str, Any], *, task: str | None = None,
              cache_dir: str | None = None) -> datasets.Dataset:
    """Load the split a spec describes.

    Images stay lazy (`datasets.Image` decodes a row only when it is read), and `max_samples` keeps a seeded subset.

    Args:
        spec (`DatasetSpec` or `dict`): the spec.
        task (`str`, *optional*): `"classification"` also requires the label column, `"retrieval"` the captions
            column; `None` checks only the image column.
        cache_dir (`str`, *optional*): where `datasets` writes its Arrow cache (default: `HF_DATASETS_CACHE`).

    Returns:
        `datasets.Dataset`: the split, with the source's column names.
    """
    spec = DatasetSpec.from_dict(spec)
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}.")
    builder = infer_builder(spec)
    path = os.path.expanduser(spec.path)
    if builder != "hub" and not os.path.exists(path):
        raise FileNotFoundError(f"DatasetSpec {spec.name!r}: path {spec.path!r} does not exist (working directory "
                                f"{os.getcwd()!r}); builder {builder!r} needs a local "
                                f"{'file or folder' if builder == 'parquet' else 'folder'}. Fix the path.")
    if builder == "parquet":
        dataset = _load_parquet(spec, path, cache_dir)
    elif builder == "imagefolder":
        dataset = _load_imagefolder(spec, path, cache_dir)
    elif builder == "hub":
        dataset = _load_hub(spec, cache_dir)
    elif builder == "flickr30k":
        from .flickr30k import load_flickr30k

        dataset = load_flickr30k(path, spec.split, cache_dir=cache_dir, **(spec.builder_kwargs or {}))
    elif builder == "tiered_imagenet":
        from .tiered_imagenet import load_tiered_imagenet

        dataset = load_tiered_imagenet(path, spec.split, cache_dir=cache_dir, **(spec.builder_kwargs or {}))
    elif builder == "eurosat":
        from .eurosat import load_eurosat

        dataset = load_eurosat(path, spec.split, cache_dir=cache_dir, **(spec.builder_kwargs or {}))
    else:
        from .coco import load_coco  # the builders are only imported for COCO specs

        dataset = load_coco(path, spec.split, task=builder.removeprefix("coco_"), cache_dir=cache_dir,
                            **(spec.builder_kwargs or {}))
    dataset = _check_columns(dataset, spec, task)
    return subsample(dataset, spec.max_samples, spec.seed)


# --------------------------------------------------------------------------------------------------------------------
# Labels


def label_array(dataset: datasets.Dataset, column: str = "label") -> np.ndarray:
    """The label column as an `int64` numpy array, read through Arrow without touching the images.

    Args:
        dataset (`datasets.Dataset`): the dataset (an indices mapping from `select`/`filter` is honoured).
        column (`str`, defaults to `"label"`): the label column.

    Returns:
        `np.ndarray`: the labels, shape `[len(dataset)]`.
    """
    if column not in dataset.column_names:
        raise ValueError(f"Label column {column!r} not found; available columns: {dataset.column_names}.")
    if len(dataset) == 0:
        return np.zeros(0, dtype=np.int64)
    # `dataset[column]` is a lazy Column whose numpy conversion goes row by row (seconds for 60k rows); Arrow is not.
    values = dataset.select_columns([column]).with_format("arrow")[:][column]
    if values.null_count:
        raise ValueError(f"Label column {column!r} has {values.null_count} missing value(s); drop those rows first.")
    return values.to_numpy().astype(np.int64, copy=False)


def class_names_of(dataset: datasets.Dataset, spec: DatasetSpec | Mapping[str, Any]) -> list[str]:
    """Class names of a classification split, in label-id order, validated against the labels.

    Args:
        dataset (`datasets.Dataset`): the split (as returned by [`load_spec`]).
        spec (`DatasetSpec` or `dict`): its spec; `spec.class_names` wins over the `ClassLabel` names.

    Returns:
        `list[str]`: the names. Raises `ValueError` if they are empty, duplicated or blank, if the label column is a
        plain integer without `class_names`, or if a label falls outside `[0, len(names))`.
    """
    spec = DatasetSpec.from_dict(spec)
    column = spec.label_column
    if column not in dataset.column_names:
        raise ValueError(f"DatasetSpec {spec.name!r}: label column {column!r} not found; available columns: "
                         f"{dataset.column_names}. Set label_column in the spec.")
    feature = dataset.features[column]
    if spec.class_names is not None:
        names = list(spec.class_names)
    elif isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    else:
        raise ValueError(f"DatasetSpec {spec.name!r}: column {column!r} is {feature}, not a ClassLabel, so it carries "
                         "no class names. Give them in label-id order with class_names: [...] in the spec.")
    if not names:
        raise ValueError(f"DatasetSpec {spec.name!r}: the list of class names is empty.")
    blank = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if blank:
        raise ValueError(f"DatasetSpec {spec.name!r}: class names at positions {blank} are empty or not strings.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"DatasetSpec {spec.name!r}: duplicate class names {duplicates}; prompts could not tell "
                         "those classes apart. Rename them with class_names in the spec.")
    labels = label_array(dataset, column)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"DatasetSpec {spec.name!r}: labels of column {column!r} span [{labels.min()}, {labels.max()}]"
                         " "
                         f"but there are {len(names)} class names, so ids must lie in [0, {len(names) - 1}]. Fix "
                         "class_names (one per class, in label-id order) or drop unlabelled rows (label -1).")
    return names
