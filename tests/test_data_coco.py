"""Tests of the COCO builders on a small generated COCO root (plus one check on the shared coco_mini, if present)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_cl.data import CocoCaptions, CocoObjects, DatasetSpec, class_names_of, infer_builder, load_coco, load_spec

SHARED_COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco_mini"

# Category ids are sparse and listed out of order, as in COCO: names must follow the ids.
CATEGORIES = [{"id": 7, "name": "zebra"}, {"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}]
COLORS = {2: (255, 0, 0), 5: (0, 255, 0), 7: (0, 0, 255)}


def _annotations(drop_last: bool = False) -> dict:
    anns = [
        # id, image, category, bbox, crowd
        (10, 1, 5, [4.0, 6.0, 20.0, 30.0], 0),     # dog, kept
        (11, 1, 2, [30.5, 2.2, 24.0, 18.0], 0),    # cat, kept (fractional box)
        (12, 1, 7, [56.0, 0.0, 8.0, 40.0], 0),     # zebra, 8 px wide: below min_box_size=16
        (13, 2, 7, [10.0, 10.0, 40.0, 30.0], 1),   # crowd: skipped by default
        (14, 2, 7, [50.0, 20.0, 30.0, 30.0], 0),   # zebra, runs past the right edge (64 px image): clipped
        (15, 3, 2, [0.0, 0.0, 16.0, 16.0], 0),     # cat, exactly the minimum size
    ]
    if drop_last:
        anns = anns[:-1]
    return {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in (3, 1, 2)],
        "annotations": [{"id": a, "image_id": im, "category_id": c, "bbox": b, "iscrowd": crowd, "area": b[2] * b[3]}
                        for a, im, c, b, crowd in anns],
        "categories": CATEGORIES,
    }


def _captions() -> dict:
    caps = [(100, 1, "a dog and a cat."), (101, 1, " two animals "), (102, 2, "a zebra."), (103, 1, "pets")]
    return {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (1, 2, 3)],  # image 3 has no caption
        "annotations": [{"id": a, "image_id": im, "caption": c} for a, im, c in caps],
    }


@pytest.fixture
def coco_root(tmp_path) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    instances = _annotations()
    for img in instances["images"]:
        pixels = np.full((48, 64, 3), 128, dtype=np.uint8)
        for ann in instances["annotations"]:
            if ann["image_id"] == img["id"] and not ann["iscrowd"]:
                x, y, w, h = (int(v) for v in ann["bbox"])
                pixels[y:y + h, x:x + w] = COLORS[ann["category_id"]]
        Image.fromarray(pixels).save(root / "val2017" / img["file_name"], quality=100)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(instances))
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(_captions()))
    return root


def test_coco_objects_crops_labels_and_filters(coco_root, tmp_path):
    crops = load_coco(str(coco_root), "val", task="objects", cache_dir=str(tmp_path / "cache"))
    assert crops.features["label"].names == ["cat", "dog", "zebra"]  # ordered by category id 2, 5, 7
    assert crops["annotation_id"][:] == [10, 11, 14, 15]  # tiny box 12 and crowd box 13 are gone
    assert crops["image_id"][:] == [1, 1, 2, 3]
    names = crops.features["label"].names
    assert [names[i] for i in crops["label"][:]] == ["dog", "cat", "zebra", "cat"]
    sizes = [im.size for im in crops["image"]]
    assert sizes == [(20, 30), (25, 19), (14, 28), (16, 16)]  # (w, h); box 11 rounded outwards, 14 clipped
    for image, label in zip(crops["image"], crops["label"][:]):
        color = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
        expected = COLORS[CATEGORIES[[c["name"] for c in CATEGORIES].index(names[label])]["id"]]
        assert np.abs(color - expected).max() < 20  # the crop shows the object's colour, so the box is right
    assert crops[0]["bbox"] == pytest.approx([4.0, 6.0, 20.0, 30.0])


def test_coco_objects_options(coco_root, tmp_path):
    cache = str(tmp_path / "cache")
    everything = load_coco(str(coco_root), "validation", task="objects", cache_dir=cache, min_box_size=1,
                           skip_crowd=False)
    assert everything["annotation_id"][:] == [10, 11, 12, 13, 14, 15]
    with pytest.raises(ValueError, match="did you mean 'min_box_size'"):
        load_coco(str(coco_root), "val", task="objects", cache_dir=cache, min_box=4)


def test_coco_captions_one_row_per_image(coco_root, tmp_path):
    rows = load_coco(str(coco_root), "val", task="captions", cache_dir=str(tmp_path / "cache"))
    assert rows["image_id"][:] == [1, 2]
    assert rows["captions"][:] == [["a dog and a cat.", "two animals", "pets"], ["a zebra."]]
    assert rows[1]["image"].size == (64, 48)
    embedded = load_coco(str(coco_root), "val", task="captions", cache_dir=str(tmp_path / "cache"), embed_images=True)
    assert embedded[0]["image"].size == (64, 48)


def test_builder_classes_direct_use_and_cache_location(coco_root, tmp_path):
    cache = tmp_path / "cache"
    builder = CocoObjects(data_dir=str(coco_root), cache_dir=str(cache))
    builder.download_and_prepare()
    assert len(builder.as_dataset("val")) == 4
    assert str(builder.cache_dir).startswith(str(cache))
    captions = CocoCaptions(data_dir=str(coco_root), cache_dir=str(cache), split="val")
    captions.download_and_prepare()
    assert len(captions.as_dataset("val")) == 2
    assert {p.name for p in cache.iterdir() if p.is_dir()} >= {"coco_objects", "coco_captions"}


def test_editing_annotations_invalidates_the_cache(coco_root, tmp_path):
    cache = str(tmp_path / "cache")
    assert len(load_coco(str(coco_root), "val", task="objects", cache_dir=cache)) == 4
    path = coco_root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(_annotations(drop_last=True)))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert len(load_coco(str(coco_root), "val", task="objects", cache_dir=cache)) == 3


def test_coco_through_specs_and_errors(coco_root, tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match="looks like a COCO root"):
        infer_builder(DatasetSpec(name="coco", path=str(coco_root)))
    spec = DatasetSpec(name="coco", path=str(coco_root), split="val", builder="coco_objects",
                       builder_kwargs={"min_box_size": 1})
    crops = load_spec(spec, task="classification", cache_dir=cache)
    assert len(crops) == 5 and class_names_of(crops, spec) == ["cat", "dog", "zebra"]
    captions = load_spec({"name": "coco", "path": str(coco_root), "split": "val", "builder": "coco_captions"},
                         task="retrieval", cache_dir=cache)
    assert len(captions) == 2
    with pytest.raises(FileNotFoundError, match=r"instances_train2017.json' not found.*instances_val2017.json"):
        load_spec({"name": "coco", "path": str(coco_root), "split": "train", "builder": "coco_objects"},
                  cache_dir=cache)
    os.remove(coco_root / "val2017" / f"{2:012d}.jpg")
    with pytest.raises(FileNotFoundError, match=r"000000000002.jpg.*is missing"):
        load_coco(str(coco_root), "val", task="objects", cache_dir=str(tmp_path / "other_cache"))


@pytest.mark.data
@pytest.mark.skipif(not SHARED_COCO.is_dir(), reason="needs ../shared/data/coco_mini (the shared real data)")
def test_coco_mini_objects_have_80_classes(tmp_path):
    crops = load_coco(str(SHARED_COCO), "val", task="objects", cache_dir=str(tmp_path))
    names = crops.features["label"].names
    assert len(names) == 80 and names[0] == "person" and names[-1] == "toothbrush"
    assert len(crops) > 100 and min(min(im.size) for im in crops.select(range(20))["image"]) >= 16
