"""The paper's protocol on generated fixtures in the official layouts: COCO 2014 + Karpathy, Flickr30k, EuroSAT,
tieredImageNet, and the paper configs built on them.

The expected crops and phases come from an independent re-implementation of CL-CLIP's `data_preprocess/coco_process.py`
(`_official_coco_process` below), written from that file, not from clip-cl's builders.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from clip_cl.data import (
    DatasetSpec,
    Protocol,
    build_sessions,
    infer_builder,
    load_coco,
    load_eurosat,
    load_flickr30k,
    load_spec,
    load_tiered_imagenet,
    tiered_imagenet_classes,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER = dict(year=2014, karpathy_file="dataset_coco.json", min_box_size=4, min_box_size_inclusive=False,
             skip_crowd=False, crop_rounding="nearest")
# 80 categories with sparse ids, listed in id order as COCO's files list them.
CATEGORIES = [{"id": i + 1 + i // 9, "name": f"class {i:02d}", "supercategory": "thing"} for i in range(80)]
W, H = 96, 64


def _jpeg(path: Path, color=(128, 128, 128), size=(W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=90)


def _coco_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


@pytest.fixture(scope="module")
def coco2014(tmp_path_factory) -> Path:
    """COCO 2014 layout: train images 1-2 (one box of each of the 80 classes, plus boundary boxes), val images 11-14
    (Karpathy: 11 val, 12 and 13 test, 14 restval), and dataset_coco.json."""
    root = tmp_path_factory.mktemp("coco2014")
    train_anns, ann_id = [], 1000
    for i, cat in enumerate(CATEGORIES):  # 80 boxes of 6 x 5 px, each class once
        train_anns.append({"id": ann_id, "image_id": 1 + i % 2, "category_id": cat["id"], "iscrowd": 0,
                           "bbox": [float(i % 10) * 8, float(i // 10) * 7, 6.0, 5.0]})
        ann_id += 1
    boundary = [  # (width, height, crowd): the official rule drops width <= 4 or height <= 4
        (4.0, 10.0, 0), (10.0, 4.0, 0), (4.01, 4.01, 0), (5.0, 5.0, 1), (3.9, 30.0, 0), (40.0, 40.0, 0)]
    for w, h, crowd in boundary:
        train_anns.append({"id": ann_id, "image_id": 2, "category_id": CATEGORIES[3]["id"], "iscrowd": crowd,
                           "bbox": [2.0, 2.0, w, h]})
        ann_id += 1
    val_anns = []
    for image_id in (11, 12, 13, 14):
        for k, (w, h) in enumerate([(20.0, 30.0), (4.0, 9.0), (12.5, 7.25)]):
            val_anns.append({"id": 100 * image_id + k, "image_id": image_id, "iscrowd": 0,
                             "category_id": CATEGORIES[(image_id * 7 + k) % 80]["id"], "bbox": [3.0, 4.0, w, h]})
    for split, ids, anns in (("train", (1, 2), train_anns), ("val", (11, 12, 13, 14), val_anns)):
        images = [{"id": i, "file_name": _coco_name(split, i), "width": W, "height": H} for i in ids]
        for i in ids:
            _jpeg(root / f"{split}2014" / _coco_name(split, i), color=(10 * i, 100, 200))
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    karpathy = []
    for image_id, split, n_caps in ((1, "train", 5), (13, "test", 5), (11, "val", 5), (12, "test", 6),
                                    (14, "restval", 5)):
        folder = "train2014" if image_id < 10 else "val2014"
        karpathy.append({"filepath": folder, "filename": _coco_name(folder[:-4], image_id), "split": split,
                         "cocoid": image_id, "imgid": len(karpathy),
                         "sentences": [{"raw": f"Image {image_id} Caption {c}. ", "tokens": []}
                                       for c in range(n_caps)]})
    (root / "dataset_coco.json").write_text(json.dumps({"images": karpathy, "dataset": "coco"}))
    return root


def _official_coco_process(root: Path) -> dict:
    """coco_process.py, re-implemented: crops of train (all boxes) / val / test (Karpathy), and the MST phases."""
    trainset = json.loads((root / "annotations" / "instances_train2014.json").read_text())
    valset = json.loads((root / "annotations" / "instances_val2014.json").read_text())
    gt = json.loads((root / "dataset_coco.json").read_text())["images"]
    test5k = [i["filename"] for i in gt if i["split"] == "test"]
    val5k = [i["filename"] for i in gt if i["split"] == "val"]
    tiny = lambda b: b[2] <= 4.0 or b[3] <= 4.0  # noqa: E731
    crop = {"train": [a for a in trainset["annotations"] if not tiny(a["bbox"])],
            "val": [a for a in valset["annotations"] if not tiny(a["bbox"])
                    and "COCO_val2014_%012d.jpg" % a["image_id"] in val5k],
            "test": [a for a in valset["annotations"] if not tiny(a["bbox"])
                     and "COCO_val2014_%012d.jpg" % a["image_id"] in test5k]}
    categories = [c["id"] for c in trainset["categories"]]
    phase: dict[str, list] = {}
    for anno in crop["train"]:
        phase.setdefault(str(categories.index(anno["category_id"]) // 10), []).append(anno)
    return {"crop": crop, "phase": phase, "categories": trainset["categories"]}


def test_crops_of_each_split_match_coco_process(coco2014, tmp_path):
    official = _official_coco_process(coco2014)
    cache = str(tmp_path / "cache")
    for split in ("train", "val", "test"):
        crops = load_coco(str(coco2014), split, task="objects", cache_dir=cache, **PAPER)
        assert sorted(crops["annotation_id"][:]) == sorted(a["id"] for a in official["crop"][split]), split
        names = crops.features["label"].names
        assert names == [c["name"] for c in official["categories"]]  # label = index in COCO's category list
        by_ann = {a["id"]: a for a in official["crop"][split]}
        for row in crops.select(range(min(3, len(crops)))):
            ann = by_ann[row["annotation_id"]]
            assert names[row["label"]] == next(c["name"] for c in CATEGORIES if c["id"] == ann["category_id"])
            x, y, w, h = ann["bbox"]  # data.py: img.crop([x, y, x + w, y + h]), which PIL rounds to the nearest pixel
            assert row["image"].size == (round(x + w) - round(x), round(y + h) - round(y))
    test = load_coco(str(coco2014), "test", task="objects", cache_dir=cache, **PAPER)
    assert sorted(set(test["image_id"][:])) == [12, 13]  # Karpathy's test images only (11 is val, 14 restval)


def test_box_rule_at_the_boundary(coco2014, tmp_path):
    crops = load_coco(str(coco2014), "train", task="objects", cache_dir=str(tmp_path / "cache"), **PAPER)
    boxes = {tuple(round(v, 2) for v in b[2:]) for b in crops["bbox"][:]}
    assert (4.0, 10.0) not in boxes and (10.0, 4.0) not in boxes and (3.9, 30.0) not in boxes  # <= 4 goes
    assert (4.01, 4.01) in boxes and (40.0, 40.0) in boxes and (5.0, 5.0) in boxes  # > 4 stays, crowd box too
    # clip-cl's own rule keeps a box of exactly the threshold; skip_crowd drops the crowd box.
    inclusive = load_coco(str(coco2014), "train", task="objects", cache_dir=str(tmp_path / "cache"), year=2014,
                          karpathy_file="dataset_coco.json", min_box_size=4)
    kept = {tuple(round(v, 2) for v in b[2:]) for b in inclusive["bbox"][:]}
    assert (4.0, 10.0) in kept and (10.0, 4.0) in kept and (3.9, 30.0) not in kept and (5.0, 5.0) not in kept


def test_given_class_order_reproduces_the_official_phases(coco2014, tmp_path):
    official = _official_coco_process(coco2014)
    spec = {"name": "coco", "path": str(coco2014), "builder": "coco_objects", "builder_kwargs": PAPER}
    protocol = Protocol(update_train={**spec, "split": "train"}, update_test={**spec, "split": "test"},
                        num_sessions=8, class_order="given", cache_dir=str(tmp_path / "cache"))
    assert protocol.sessions == [list(range(10 * t, 10 * t + 10)) for t in range(8)]
    for t in range(8):
        ours = sorted(protocol.session_train(t)["annotation_id"][:])
        assert ours == sorted(a["id"] for a in official["phase"][str(t)]), t
    assert protocol.describe()["class_order_rule"] == "given"
    # The default stays the seeded shuffle, so earlier runs keep their sessions.
    assert build_sessions(80, 8, seed=0) != build_sessions(80, 8, seed=0, order="given")
    assert build_sessions(10, 5, seed=3, order="given") == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    with pytest.raises(ValueError, match="class_order must be one of"):
        build_sessions(10, 2, 0, order="sorted")


def test_karpathy_retrieval_sets(coco2014, tmp_path):
    cache = str(tmp_path / "cache")
    test = load_coco(str(coco2014), "test", task="captions", cache_dir=cache, year=2014,
                     karpathy_file="dataset_coco.json", lowercase=True)
    assert test["image_id"][:] == [13, 12]  # Karpathy's file order
    assert test["captions"][1] == [f"image 12 caption {c}." for c in range(6)]  # all captions, lower-cased, stripped
    assert test[0]["image"].size == (W, H)
    five = load_coco(str(coco2014), "test", task="captions", cache_dir=cache, year=2014,
                     karpathy_file="dataset_coco.json", max_captions_per_image=5)
    assert [len(c) for c in five["captions"][:]] == [5, 5] and five["captions"][0][0] == "Image 13 Caption 0."
    restval = load_coco(str(coco2014), "restval", task="captions", cache_dir=cache, year=2014,
                        karpathy_file=str(coco2014 / "dataset_coco.json"))
    assert restval["image_id"][:] == [14]


@pytest.fixture(scope="module")
def flickr(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flickr30k")
    entries = []
    for i, split in enumerate(["train", "test", "val", "test", "test"]):
        name = f"{1000 + i}.jpg"
        _jpeg(root / "flickr30k-images" / name, size=(40, 30))
        entries.append({"filename": name, "imgid": i, "split": split,
                        "sentences": [{"raw": f"A Dog {i}-{c}", "tokens": []} for c in range(5)]})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return root


def test_flickr30k_builder_and_spec(flickr, tmp_path):
    cache = str(tmp_path / "cache")
    test = load_flickr30k(str(flickr), "test", cache_dir=cache, lowercase=True)
    assert test["file_name"][:] == ["1001.jpg", "1003.jpg", "1004.jpg"]
    assert test["captions"][0] == [f"a dog 1-{c}" for c in range(5)]
    assert test[0]["image"].size == (40, 30)
    spec = DatasetSpec(name="flickr30k", path=str(flickr), split="test")
    assert infer_builder(spec) == "flickr30k"
    rows = load_spec(spec, task="retrieval", cache_dir=cache)
    assert len(rows) == 3 and rows["captions"][2][0] == "A Dog 4-0"
    assert len(load_flickr30k(str(flickr), "val", cache_dir=cache)) == 1


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_input_fails_with_what_to_fix(coco2014, flickr, tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match="looks like a COCO root; set builder"):
        infer_builder(DatasetSpec(name="coco", path=str(coco2014)))  # a 2014 root is recognised too
    broken = tmp_path / "coco_broken"
    broken.mkdir()
    for item in coco2014.iterdir():  # same annotations and Karpathy file, one Karpathy test image gone
        target = broken / item.name
        if item.is_dir():
            target.mkdir()
            for f in item.iterdir():
                if f.name != _coco_name("val", 12):
                    (target / f.name).symlink_to(f)
        else:
            target.symlink_to(item)
    with pytest.raises(FileNotFoundError) as err:
        load_coco(str(broken), "test", task="objects", cache_dir=cache, **PAPER)
    message = _one_line(err)
    assert "1 of the 2 images" in message and _coco_name("val", 12) in message and "Unpack the COCO 2014" in message
    with pytest.raises(FileNotFoundError) as err:
        load_coco(str(broken), "test", task="captions", cache_dir=cache, year=2014, karpathy_file="dataset_coco.json")
    assert "missing" in _one_line(err)

    root2017 = tmp_path / "coco2017"
    (root2017 / "annotations").mkdir(parents=True)
    (root2017 / "annotations" / "instances_train2017.json").write_text("{}")
    (root2017 / "annotations" / "instances_val2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as err:
        load_coco(str(root2017), "train", task="objects", cache_dir=cache, **PAPER)
    assert "is a COCO 2017 root" in _one_line(err) and "Set year: 2017" in str(err.value)
    with pytest.raises(ValueError) as err:
        load_coco(str(coco2014), "train", task="objects", cache_dir=cache, karpathy_file="dataset_coco.json")
    assert "set year: 2014" in _one_line(err)
    with pytest.raises(ValueError) as err:
        load_coco(str(coco2014), "restval", task="objects", cache_dir=cache, **PAPER)
    assert "the splits are ['train', 'val', 'test']" in _one_line(err)

    (flickr / "flickr30k-images" / "1003.jpg").rename(tmp_path / "moved.jpg")
    try:
        with pytest.raises(FileNotFoundError) as err:
            load_flickr30k(str(flickr), "test", cache_dir=str(tmp_path / "cache2"))
        assert "'1003.jpg'" in _one_line(err) and "are missing" in str(err.value)
    finally:
        (tmp_path / "moved.jpg").rename(flickr / "flickr30k-images" / "1003.jpg")


def test_eurosat_official_split(tmp_path):
    root = tmp_path / "2750"
    for c, folder in enumerate(["SeaLake", "AnnualCrop", "HerbaceousVegetation"]):
        for i in (1, 2, 3, 10, 11):  # string order: 1, 10, 11, 2, 3
            _jpeg(root / folder / f"{folder}_{i}.jpg", size=(16, 16), color=(50 * c, 0, 0))
    train = load_eurosat(str(root), "train", cache_dir=str(tmp_path / "cache"), test_per_class=2)
    test = load_eurosat(str(root), "test", cache_dir=str(tmp_path / "cache"), test_per_class=2)
    assert train.features["label"].names == ["annual crop", "herbaceous vegetation", "sea lake"]
    assert test["file_name"][:2] == ["AnnualCrop/AnnualCrop_2.jpg", "AnnualCrop/AnnualCrop_3.jpg"]  # the last two
    assert len(train) == 9 and len(test) == 6 and test["label"][:] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="holds 5 images, not more than test_per_class=500"):
        load_eurosat(str(root), "test", cache_dir=str(tmp_path / "cache"))


def test_tiered_imagenet_split_and_builders(tmp_path):
    test_classes = tiered_imagenet_classes("test")
    assert len(test_classes) == 160 and len({c["category_wnid"] for c in test_classes}) == 8
    all_classes = tiered_imagenet_classes("all")
    assert len(all_classes) == 608 and len({c["category_wnid"] for c in all_classes}) == 34
    assert [len(tiered_imagenet_classes(s)) for s in ("train", "val", "train_test")] == [351, 97, 511]
    # tiered-imagenet-tools' layout: {split}/{wnid}/*.jpg
    root = tmp_path / "tiered"
    for c in test_classes:
        for k in range(2):
            _jpeg(root / "test" / c["wnid"] / f"{c['wnid']}{k:08d}.jpg", size=(8, 8))
    zs = load_tiered_imagenet(str(root), "test", cache_dir=str(tmp_path / "cache"), max_images_per_class=1)
    assert len(zs) == 160 and zs["label"][:] == list(range(160))
    assert zs.features["label"].names == [c["name"] for c in test_classes]
    assert zs["wnid"][:3] == [c["wnid"] for c in test_classes[:3]]
    with pytest.raises(FileNotFoundError, match="class folders are missing") as err:
        load_tiered_imagenet(str(root), "train", cache_dir=str(tmp_path / "cache"))
    _one_line(err)
    # An ImageNet Parquet whose labels are WordNet ids (only a few rows; the other classes have none).
    names = sorted(c["wnid"] for c in all_classes)
    rows = [(test_classes[5]["wnid"], 0), (all_classes[0]["wnid"], 1), (test_classes[0]["wnid"], 2)]
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": _png_bytes(), "path": None}] * 3, "label": [names.index(w) for w, _ in rows],
         "idx": [i for _, i in rows]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names),
                                    "idx": datasets.Value("int64")}))
    table.to_parquet(str(tmp_path / "train.parquet"))
    spec = DatasetSpec(name="tiered", path=str(tmp_path / "train.parquet"), split="test", builder="tiered_imagenet")
    subset = load_spec(spec, task="classification", cache_dir=str(tmp_path / "cache"))
    assert subset["label"][:] == [5, 0] and subset.features["label"].names[0] == test_classes[0]["name"]


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


def test_paper_configs_build_the_official_protocol(coco2014, flickr, tmp_path):
    from clip_cl.cli import parse_config
    from clip_cl.runner import build_protocol, config_fingerprint

    for path in sorted((ROOT / "recipes/configs/paper").glob("*.yaml")):
        config = parse_config(["--config", str(path), "--use_cpu", "true"])
        protocol = build_protocol(config)
        kwargs = protocol.update_train.builder_kwargs
        if path.name.startswith("eurosat"):
            assert config.train_templates == ["this is a satellite photo of {} ."]
            assert config.num_sessions == (5 if "mst" in path.name else 1)
        else:
            assert kwargs == PAPER and protocol.update_test.split == "test", path.name
            assert config.num_sessions == (8 if "mst" in path.name else 1)
            assert config.update_test_templates == ["this is a photo of {} in the scene ."]
        assert config.num_train_epochs == 15 and config.dataloader_drop_last and config.learning_rate == 1e-6
        assert config.step_lr_epochs == (None if "mst" in path.name else 10)
        assert protocol.class_order == ("given" if "mst" in path.name else "seeded")
        assert [s.builder for s in protocol.retrieval] == ["coco_captions", "flickr30k"]
        assert [s.eval_folds for s in protocol.retrieval] == [5, 1]  # COCO: mean of 5 folds of 1k (methods/base.py)
        assert protocol.zero_shot[0].builder == "tiered_imagenet"
    # A dry build of ft_mst on the generated fixtures: 8 sessions of 10 classes in COCO's order.
    config = parse_config(["--config", str(ROOT / "recipes/configs/paper/ft_mst.yaml"), "--use_cpu", "true",
                           "--update_dataset", json.dumps({"name": "coco", "builder": "coco_objects",
                                                           "path": str(coco2014), "builder_kwargs": PAPER})])
    protocol = build_protocol(config)
    protocol.cache_dir = str(tmp_path / "cache")
    assert protocol.sessions == [list(range(10 * t, 10 * t + 10)) for t in range(8)]
    assert len(protocol.update_test_dataset()) == 4  # Karpathy test crops of images 12 and 13
    # The new settings at their defaults leave the fingerprint of an existing config as it was.
    base = parse_config(["--config", str(ROOT / "recipes/configs/paper/ft_ost.yaml"), "--use_cpu", "true"])
    explicit = parse_config(["--config", str(ROOT / "recipes/configs/paper/ft_ost.yaml"), "--use_cpu", "true",
                             "--class_order", "seeded"])
    assert config_fingerprint(base) == config_fingerprint(explicit)
    from clip_cl.runner import result_config

    assert "class_order" not in result_config(base) and "class_order" in result_config(config)


def test_paper_mst_config_runs_end_to_end(coco2014, flickr, tmp_path):
    # ft_mst.yaml as shipped, on the tiny random model and the generated COCO 2014 / Flickr30k (CPU, a step a session).
    from clip_cl.cli import train_main

    out = tmp_path / "run"
    spec = {"name": "coco", "builder": "coco_objects", "path": str(coco2014), "builder_kwargs": PAPER}
    retrieval = [{"name": "coco5k", "builder": "coco_captions", "path": str(coco2014), "split": "test", "eval_folds": 2,
                  "builder_kwargs": {"year": 2014, "karpathy_file": "dataset_coco.json", "lowercase": True}},
                 {"name": "flickr30k", "path": str(flickr), "split": "test"}]
    results = train_main(["--config", str(ROOT / "recipes/configs/paper/ft_mst.yaml"), "--model_name_or_path",
                          "tiny-random", "--use_cpu", "true", "--fp16", "false", "--output_dir", str(out),
                          "--update_dataset", json.dumps(spec), "--zero_shot_datasets", "[]",
                          "--retrieval_datasets", json.dumps(retrieval), "--per_device_train_batch_size", "8",
                          "--dataloader_drop_last", "false", "--max_steps", "1", "--dataloader_num_workers", "0",
                          "--dataloader_pin_memory", "false", "--disable_tqdm", "true", "--save_strategy", "no"])
    assert results["status"] == "complete"
    saved = json.loads((out / "results.json").read_text())
    assert [s["class_ids"] for s in saved["sessions"]] == [list(range(10 * t, 10 * t + 10)) for t in range(8)]
    last = saved["sessions"][-1]["eval"]
    assert last["retrieval"]["coco5k"]["folds"] == 2 and last["retrieval"]["coco5k"]["num_captions"] == 11
    assert len(last["ut"]["balanced_per_session"]) == 8 and last["ut"]["balanced_acc"] is not None
