"""Cut the quickstart sample in `examples/data/` from the real data in `../shared/data` (deterministic, rerunnable).

    python examples/data/make_sample.py                      # from the project root
    python examples/data/make_sample.py --source /path/to/shared/data

Writes, with `datasets` (Parquet keeps the `Image` / `ClassLabel` features in its schema metadata):

- `fashion_mnist/train.parquet`: 40 images per class (400), the update task's training split;
- `fashion_mnist/test.parquet`: 20 per class (200), its test split;
- `cifar10/test.parquet`: 20 per class (200), for zero-shot classification;
- `coco_captions/test.parquet`: 60 COCO val2017 images with their captions, short side downscaled to 128 px (JPEG),
  for image-text retrieval, with each image's Flickr licence and URL; read through `clip_cl.data`'s own
  `coco_captions` builder.

Per-class rows are a seeded random choice (`numpy.random.default_rng(seed)`), kept in source order.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from clip_cl.data import DatasetSpec, label_array, load_spec  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED = 0


def per_class(dataset: datasets.Dataset, n: int, seed: int) -> datasets.Dataset:
    """`n` seeded random rows of every class, in source order."""
    labels = label_array(dataset, "label")
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(dataset.features["label"].num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) < n:
            raise ValueError(f"class {c} has only {len(rows)} rows, {n} asked")
        keep.append(rng.choice(rows, size=n, replace=False))
    return dataset.select(np.sort(np.concatenate(keep)))


def shrink(image: Image.Image, short_side: int, quality: int = 90) -> dict:
    """Downscale so the short side is `short_side` px (never upscale) and re-encode as JPEG."""
    image = image.convert("RGB")
    w, h = image.size
    scale = short_side / min(w, h)
    if scale < 1:
        image = image.resize((round(w * scale), round(h * scale)), resample=Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return {"bytes": buf.getvalue(), "path": None}


def write(dataset: datasets.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Flatten the indices mapping first so the file holds only the chosen rows, in one row group.
    dataset.flatten_indices().to_parquet(str(path))
    print(f"{path.relative_to(ROOT)}: {len(dataset)} rows, {path.stat().st_size / 1024:.0f} KiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the shared data folder (default: ../shared/data from the project root)")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: examples/data)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    if not (args.source / "README.md").is_file():
        raise SystemExit(f"{args.source} is not the shared data folder (no README.md); pass --source.")

    with tempfile.TemporaryDirectory() as cache:  # keep the one-off Arrow caches out of the user's HF cache
        for name, split, n in [("fashion_mnist", "train", 40), ("fashion_mnist", "test", 20), ("cifar10", "test", 20)]:
            dataset = load_spec(DatasetSpec(name=name, path=str(args.source / name), split=split), cache_dir=cache)
            write(per_class(dataset, n, args.seed), args.out / name / f"{split}.parquet")

        coco = load_spec(DatasetSpec(name="coco", path=str(args.source / "coco_mini"), split="val",
                                     builder="coco_captions"), task="retrieval", cache_dir=cache)
        rng = np.random.default_rng(args.seed)
        coco = coco.select(np.sort(rng.choice(len(coco), size=60, replace=False)))
        features = datasets.Features({**coco.features, "image": datasets.Image()})
        rows = {key: coco[key][:] for key in coco.column_names if key != "image"}
        rows["image"] = [shrink(img, 128) for img in coco["image"]]
        # Flickr licences differ per image: keep each image's licence and source with it.
        meta = json.loads((args.source / "coco_mini" / "annotations" / "captions_val2017.json").read_text())
        licences = {lic["id"]: f"{lic['name']} ({lic['url']})" for lic in meta["licenses"]}
        info = {img["id"]: img for img in meta["images"]}
        rows["license"] = [licences[info[i]["license"]] for i in rows["image_id"]]
        rows["flickr_url"] = [info[i].get("flickr_url", "") for i in rows["image_id"]]
        features.update({"license": datasets.Value("string"), "flickr_url": datasets.Value("string")})
        columns = [*coco.column_names, "license", "flickr_url"]
        sample = datasets.Dataset.from_dict(rows, features=features).select_columns(columns)
        write(sample, args.out / "coco_captions" / "test.parquet")


if __name__ == "__main__":
    main()
