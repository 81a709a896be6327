"""EuroSAT (RGB) with the split of the paper's second update task (official `main_EuroSAT.py` / `data.py: EuroSAT`).

The official code reads the EuroSAT RGB folder (`{root}/AnnualCrop/AnnualCrop_1.jpg`, ... 10 class folders, 27,000
images) with torchvision's `ImageFolder`, so classes and files are in sorted (string) order, and splits each class:
its **last 500** images are the test set, the others the training set. Class names are the folder names split at
capitals and lower-cased (`"HerbaceousVegetation"` -> `"herbaceous vegetation"`); its prompt is
`"this is a satellite photo of {} ."`; MST has 5 phases of 2 classes (`phase = class index // 2`).

```python
from clip_cl.data import load_eurosat

train = load_eurosat("/data/EuroSAT/2750", "train")   # 22,000 images
test = load_eurosat("/data/EuroSAT/2750", "test")     # 5,000 images (500 per class)
```

or in a recipe: `{name: eurosat, builder: eurosat, path: /data/EuroSAT/2750}` with `update_train_split: train`,
`update_test_split: test`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

import datasets

from .specs import check_keys, image_record

__all__ = ["EuroSAT", "EuroSATConfig", "eurosat_class_name", "load_eurosat"]

# torchvision.datasets.folder.IMG_EXTENSIONS, which the official ImageFolder filters by.
_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def eurosat_class_name(folder: str) -> str:
    """The official class name of a EuroSAT folder: `" ".join(re.findall('[A-Z][^A-Z]*', folder)).lower()`."""
    return " ".join(re.findall(r"[A-Z][^A-Z]*", folder)).lower() or folder.lower()


@dataclass
class EuroSATConfig(datasets.BuilderConfig):
    """Options of [`EuroSAT`].

    Args:
        split (`str`, *optional*): prepare only `"train"` or `"test"`; `None` prepares both.
        test_per_class (`int`, defaults to 500): the last this many images of each class (sorted file names) are the
            test split, as in the official `data.py: EuroSAT` (`samples_split[c][-500:]`).
        embed_images (`bool`, defaults to `False`): store the image bytes in the cache instead of the file paths.
    """

    split: str | None = None
    test_per_class: int = 500
    embed_images: bool = False


def _files(root: str) -> tuple[list[str], list[list[str]]]:
    """Class folders and their image files, in torchvision `ImageFolder`'s order (sorted walk, sorted names)."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"EuroSAT: {root!r} holds no class folder. Point path at the folder with AnnualCrop/, "
                                "Forest/, ... (EuroSAT RGB, usually 2750/).")
    files = []
    for c in classes:
        found = []
        for folder, _, names in sorted(os.walk(os.path.join(root, c), followlinks=True)):
            found += [os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(_EXTENSIONS)]
        files.append(found)
    return classes, files


class EuroSAT(datasets.GeneratorBasedBuilder):
    """EuroSAT RGB split per class as the official code does. Columns: `image`, `label`, `file_name`."""

    BUILDER_CONFIG_CLASS = EuroSATConfig
    VERSION = datasets.Version("1.0.0")

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("dataset_name", "eurosat")
        root = kwargs.get("data_dir")
        if kwargs.get("hash") is None and root and os.path.isdir(root):
            parts = [f"{e.name}:{e.stat().st_mtime_ns}" for e in sorted(os.scandir(root), key=lambda e: e.name)]
            kwargs["hash"] = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
        super().__init__(*args, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description="EuroSAT RGB, last test_per_class images of each class as test.")

    def _split_generators(self, dl_manager):
        root, cfg = self.config.data_dir, self.config
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"EuroSAT needs data_dir=<EuroSAT RGB folder>, got {root!r}.")
        if not isinstance(cfg.test_per_class, int) or cfg.test_per_class < 1:
            raise ValueError(f"test_per_class must be a positive integer, got {cfg.test_per_class!r}.")
        classes, files = _files(root)
        short = [(c, len(f)) for c, f in zip(classes, files) if len(f) <= cfg.test_per_class]
        if short:
            raise ValueError(f"EuroSAT: class folder {short[0][0]!r} holds {short[0][1]} images, not more than "
                             f"test_per_class={cfg.test_per_class}, so it would have no training image. Check the "
                             "folder, or lower test_per_class.")
        self.info.features = datasets.Features({
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[eurosat_class_name(c) for c in classes]),
            "file_name": datasets.Value("string"),
        })
        n = cfg.test_per_class
        splits = {"train": [(p, label) for label, f in enumerate(files) for p in f[:-n]],
                  "test": [(p, label) for label, f in enumerate(files) for p in f[-n:]]}
        wanted = [cfg.split] if cfg.split else ["train", "test"]
        for s in wanted:
            if s not in splits:
                raise ValueError(f"EuroSAT split must be 'train' or 'test', got {s!r}.")
        return [datasets.SplitGenerator(name=s, gen_kwargs={"rows": splits[s]}) for s in wanted]

    def _generate_examples(self, rows):
        root = self.config.data_dir
        for key, (path, label) in enumerate(rows):
            image = image_record(path, os.path.basename(path), embed=self.config.embed_images)
            yield key, {"image": image, "label": label, "file_name": os.path.relpath(path, root)}


def load_eurosat(root: str, split: str = "train", *, cache_dir: str | None = None, **options: Any) -> datasets.Dataset:
    """Prepare (once) and load the official train or test split of EuroSAT RGB.

    Args:
        root (`str`): the EuroSAT RGB folder (class sub-folders `AnnualCrop/`, ..., `SeaLake/`).
        split (`str`, defaults to `"train"`): `"train"` or `"test"`; slicing works.
        cache_dir (`str`, *optional*): `datasets` cache root.
        **options: fields of [`EuroSATConfig`], e.g. `test_per_class=500`.

    Returns:
        `datasets.Dataset`: columns `image`, `label` (`ClassLabel` of the official class names), `file_name`.
    """
    check_keys("EuroSAT option", options, ["test_per_class", "embed_images"])
    base = split.split("[", 1)[0]
    if base not in ("train", "test"):
        raise ValueError(f"EuroSAT split must be 'train' or 'test', got {split!r}.")
    builder = EuroSAT(data_dir=os.path.abspath(root), split=base, cache_dir=cache_dir, **options)
    builder.download_and_prepare()
    return builder.as_dataset(split=split)
