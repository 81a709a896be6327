"""tieredImageNet as a zero-shot set: the paper's ZS-Acc dataset, built from ImageNet images (folder or Parquet).

The official code (CL-CLIP @ 877a69f, `main.py`) evaluates zero-shot accuracy on `--zs_data ZS_train_test.json` with
images under `--zs_img .../tiered-imagenet-tools-master/`, read by `data.py: ZSTask` (`image_names`, `image_labels`,
`label_names`; prompt `"this is a photo of " + label_name.lower() + " ."`). The JSON itself was never published; what is
public is the class split of tieredImageNet (Ren et al. 2018): 608 ImageNet classes in 34 super-categories, split into
351 `train`, 97 `val` and 160 `test` classes. That split ships with clip-cl (`clip_cl/assets/tiered_imagenet/`, source
in its README), and this module turns ImageNet images into a labelled zero-shot set over one class split:

```python
from clip_cl.data import load_tiered_imagenet

zs = load_tiered_imagenet("/data/imagenet/train", "test")   # the 160 test classes, every image of each
```

`path` may be an ImageNet folder with one sub-folder per WordNet id (`{path}/n01530575/*.JPEG`, ILSVRC-12 train as
unpacked), the output of tiered-imagenet-tools (`{path}/{train,val,test}/n01530575/*.jpg`, also under
`tiered_imagenet/`), or a Parquet file / folder of ImageNet whose `label` `ClassLabel` names are WordNet ids or
ILSVRC synset glosses (`"tench, Tinca tinca"`, the names of the Hub's `ILSVRC/imagenet-1k`).

Splits (class subsets): `train`, `val`, `test`, `train_test` (train + test classes, 511) and `all` (608). Labels index
the chosen classes in the asset's order; class names are each class's first WordNet synonym, lower-cased as `ZSTask`
does. tieredImageNet's images are ILSVRC-12 *train* images: evaluating on them is fine, but a model trained on
ImageNet train has seen them.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

import datasets
import numpy as np

from .specs import _IMAGE_EXTENSIONS, check_keys, image_record, label_array

__all__ = ["TIERED_SPLITS", "TieredImageNet", "TieredImageNetConfig", "load_tiered_imagenet",
           "tiered_imagenet_classes"]

TIERED_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train",), "val": ("val",), "test": ("test",), "train_test": ("train", "test"),
    "all": ("train", "val", "test"),
}


def tiered_imagenet_classes(split: str = "test") -> list[dict[str, str]]:
    """The classes of one tieredImageNet class split, in the asset's order.

    Args:
        split (`str`, defaults to `"test"`): one of `train`, `val`, `test`, `train_test`, `all`.

    Returns:
        `list[dict]`: rows with `split`, `category_wnid`, `category_name`, `wnid`, `words` (WordNet synonyms) and
        `name` (the first synonym, lower-cased).
    """
    if split not in TIERED_SPLITS:
        raise ValueError(f"tieredImageNet split must be one of {list(TIERED_SPLITS)}, got {split!r}.")
    text = resources.files("clip_cl").joinpath("assets/tiered_imagenet/classes.csv").read_text(encoding="utf-8")
    rows = [dict(r) for r in csv.DictReader(text.splitlines())]
    for r in rows:
        r["name"] = r["words"].split(",")[0].strip().lower()
    wanted = TIERED_SPLITS[split]
    return [r for s in wanted for r in rows if r["split"] == s]


def _class_folder(root: str, row: dict[str, str]) -> str | None:
    for candidate in (os.path.join(root, row["wnid"]), os.path.join(root, row["split"], row["wnid"]),
                      os.path.join(root, "tiered_imagenet", row["split"], row["wnid"])):
        if os.path.isdir(candidate):
            return candidate
    return None


@dataclass
class TieredImageNetConfig(datasets.BuilderConfig):
    """Options of [`TieredImageNet`].

    Args:
        split (`str`, *optional*): the class split to prepare (`train`, `val`, `test`, `train_test`, `all`); `None`
            prepares `test`.
        max_images_per_class (`int`, *optional*): keep the first this many images of each class, in sorted file-name
            order (`None` keeps all; tieredImageNet's test classes hold 206,209 images).
        embed_images (`bool`, defaults to `False`): store the image bytes in the cache instead of the file paths.
    """

    split: str | None = None
    max_images_per_class: int | None = None
    embed_images: bool = False


class TieredImageNet(datasets.GeneratorBasedBuilder):
    """tieredImageNet images of one class split from an ImageNet folder. Columns: `image`, `label`, `wnid`."""

    BUILDER_CONFIG_CLASS = TieredImageNetConfig
    VERSION = datasets.Version("1.0.0")

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("dataset_name", "tiered_imagenet")
        root = kwargs.get("data_dir")
        if kwargs.get("hash") is None and root and os.path.isdir(root):
            st = os.stat(root)
            kwargs["hash"] = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        super().__init__(*args, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description="tieredImageNet (Ren et al. 2018) class split from ImageNet images.")

    def _split_generators(self, dl_manager):
        root, cfg = self.config.data_dir, self.config
        split = cfg.split or "test"
        classes = tiered_imagenet_classes(split)
        if cfg.max_images_per_class is not None and cfg.max_images_per_class < 1:
            raise ValueError(f"max_images_per_class must be a positive integer or None, got "
                             f"{cfg.max_images_per_class!r}.")
        folders = [_class_folder(root, r) for r in classes]
        missing = [r["wnid"] for r, f in zip(classes, folders) if f is None]
        if missing:
            raise FileNotFoundError(
                f"tieredImageNet {split!r}: {len(missing)} of its {len(classes)} class folders are missing under "
                f"{root!r} (first: {missing[0]}). Point path at the ImageNet train folder ({{wnid}}/*.JPEG) or at "
                "tiered-imagenet-tools' output ({train,val,test}/{wnid}/).")
        files = []
        for label, (row, folder) in enumerate(zip(classes, folders)):
            names = sorted(f for f in os.listdir(folder) if f.lower().endswith(_IMAGE_EXTENSIONS))
            if not names:
                raise FileNotFoundError(f"tieredImageNet: class folder {folder!r} ({row['name']}) holds no image; "
                                        "copy its images there.")
            files += [(os.path.join(folder, n), label, row["wnid"]) for n in names[:cfg.max_images_per_class]]
        self.info.features = datasets.Features({
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[r["name"] for r in classes]),
            "wnid": datasets.Value("string"),
        })
        return [datasets.SplitGenerator(name=split, gen_kwargs={"files": files})]

    def _generate_examples(self, files):
        for key, (path, label, wnid) in enumerate(files):
            image = image_record(path, os.path.basename(path), embed=self.config.embed_images)
            yield key, {"image": image, "label": label, "wnid": wnid}


def _from_parquet(path: str, classes: list[dict[str, str]], source_split: str, label_column: str,
                  max_images_per_class: int | None, cache_dir: str | None) -> datasets.Dataset:
    """The rows of an ImageNet Parquet whose class is one of `classes`, relabelled (no image is decoded)."""
    if os.path.isfile(path):
        files = [path]
    else:
        files = sorted(glob.glob(os.path.join(glob.escape(path), "**", f"{source_split}*.parquet"), recursive=True))
        if not files:
            raise FileNotFoundError(f"tieredImageNet: no {source_split}*.parquet under {path!r}; set source_split to "
                                    "the Parquet split holding the ImageNet images, or point path at the file.")
    dataset = datasets.load_dataset("parquet", data_files={"data": files}, split="data", cache_dir=cache_dir)
    feature = dataset.features.get(label_column)
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(f"tieredImageNet: column {label_column!r} of {path!r} is not a ClassLabel; the Parquet must "
                         "name its classes by WordNet id or ILSVRC gloss. Set label_column, or use the image folder.")
    index = {}
    for i, name in enumerate(feature.names):
        index[name.strip()] = i
    source_ids = []
    for r in classes:
        i = index.get(r["wnid"], index.get(r["words"]))
        if i is None:
            raise ValueError(f"tieredImageNet: class {r['wnid']} ({r['words']}) is not among the {len(feature.names)} "
                             f"class names of {path!r}. Use an ImageNet-1k Parquet whose label names are WordNet ids "
                             "or ILSVRC glosses, or the image folder.")
        source_ids.append(i)
    labels = label_array(dataset, label_column)
    new_of = np.full(len(feature.names), -1, dtype=np.int64)
    new_of[source_ids] = np.arange(len(source_ids))
    keep = np.flatnonzero(new_of[labels] >= 0)
    if max_images_per_class is not None:
        keep = np.concatenate([keep[new_of[labels[keep]] == c][:max_images_per_class] for c in range(len(classes))])
        keep.sort()
    subset = dataset.select(keep)
    subset = subset.remove_columns([c for c in subset.column_names if c not in ("image", label_column)])
    subset = subset.cast_column(label_column, datasets.Value("int64"))
    # Only the label column is read and rewritten; the images are copied as bytes, never decoded.
    subset = subset.map(lambda batch: {label_column: new_of[np.asarray(batch[label_column])].tolist()}, batched=True)
    return subset.cast_column(label_column, datasets.ClassLabel(names=[r["name"] for r in classes]))


def load_tiered_imagenet(path: str, split: str = "test", *, cache_dir: str | None = None,
                         **options: Any) -> datasets.Dataset:
    """Prepare (once) and load one tieredImageNet class split as a zero-shot classification set.

    Args:
        path (`str`): an ImageNet folder (`{wnid}/` sub-folders, or tiered-imagenet-tools' `{split}/{wnid}/`), or an
            ImageNet Parquet file / folder whose `label` names are WordNet ids or ILSVRC glosses.
        split (`str`, defaults to `"test"`): the class split: `train`, `val`, `test`, `train_test` or `all`.
        cache_dir (`str`, *optional*): `datasets` cache root.
        **options: `max_images_per_class`, `embed_images` (folder); for Parquet also `source_split` (defaults to
            `"train"`, the Parquet split name) and `label_column` (defaults to `"label"`).

    Returns:
        `datasets.Dataset`: columns `image` and `label` (a `ClassLabel` of the split's class names).
    """
    base = split.split("[", 1)[0]
    if base not in TIERED_SPLITS:
        raise ValueError(f"tieredImageNet split must be one of {list(TIERED_SPLITS)}, got {split!r}.")
    is_parquet = path.endswith(".parquet") or (os.path.isdir(path) and glob.glob(
        os.path.join(glob.escape(path), "**", "*.parquet"), recursive=True))
    if is_parquet:
        if base != split:
            raise ValueError(f"tieredImageNet from Parquet: slicing ({split!r}) is not supported; use max_samples in "
                             "the dataset spec or max_images_per_class.")
        check_keys("tieredImageNet (Parquet) option", options, ["max_images_per_class", "source_split",
                                                                 "label_column"])
        dataset = _from_parquet(path, tiered_imagenet_classes(base), options.get("source_split", "train"),
                                options.get("label_column", "label"), options.get("max_images_per_class"),
                                cache_dir)
        return dataset
    check_keys("tieredImageNet option", options, ["max_images_per_class", "embed_images"])
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tieredImageNet: {path!r} is not a folder or Parquet file; point path at the ImageNet "
                                "train folder, tiered-imagenet-tools' output, or an ImageNet Parquet.")
    builder = TieredImageNet(data_dir=os.path.abspath(path), split=base, cache_dir=cache_dir, **options)
    builder.download_and_prepare()
    return builder.as_dataset(split=split)
