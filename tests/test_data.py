"""Tests of `clip_cl.data`: sessions, dataset specs, transforms, corrupt images, collation."""

from __future__ import annotations

import io
import pickle

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clip_cl.data import (
    CorruptImageError,
    DatasetSpec,
    build_image_transform,
    build_sessions,
    class_names_of,
    collate_classification,
    collate_retrieval,
    decode_rgb,
    infer_builder,
    load_spec,
    normalize_pixels,
    verify_images,
    with_image_transform,
)

from torchvision.transforms.v2 import functional as tvF
from transformers import CLIPImageProcessor


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _toy(n: int = 12, num_classes: int = 3, corrupt: tuple[int, ...] = (), gray: bool = False) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    shape = (20, 24) if gray else (20, 24, 3)
    images = [{"bytes": _png(rng.integers(0, 256, shape, dtype=np.uint8)), "path": f"img_{i}.png"} for i in range(n)]
    for i in corrupt:
        images[i] = {"bytes": b"definitely not an image", "path": f"broken_{i}.png"}
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"class {c}" for c in range(num_classes)])})
    labels = [i % num_classes for i in range(n)]
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def tiny_processor():
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


# --------------------------------------------------------------------------------------------------------------------
# Sessions


@pytest.mark.parametrize("num_classes,num_sessions", [(10, 1), (10, 3), (10, 10), (80, 4), (7, 2)])
def test_sessions_disjoint_cover_and_balanced(num_classes, num_sessions):
    sessions = build_sessions(num_classes, num_sessions, seed=0)
    flat = [c for s in sessions for c in s]
    assert len(sessions) == num_sessions
    assert sorted(flat) == list(range(num_classes))  # cover all, each once (disjoint)
    sizes = [len(s) for s in sessions]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # first sessions take the extra
    assert all(isinstance(c, int) for c in flat)


def test_sessions_deterministic_and_seeded():
    assert build_sessions(10, 3, seed=4) == build_sessions(10, 3, seed=4)
    assert build_sessions(10, 3, seed=4) != build_sessions(10, 3, seed=5)
    assert [len(s) for s in build_sessions(10, 3, seed=0)] == [4, 3, 3]


@pytest.mark.parametrize("num_classes,num_sessions,match", [
    (10, 0, "at least 1"), (10, -2, "at least 1"), (3, 4, "exceeds the 3 classes"), (0, 1, "no classes"),
])
def test_sessions_errors(num_classes, num_sessions, match):
    with pytest.raises(ValueError, match=match):
        build_sessions(num_classes, num_sessions, seed=0)


# --------------------------------------------------------------------------------------------------------------------
# Specs


def test_spec_from_dict_unknown_key_suggests_closest():
    with pytest.raises(ValueError) as err:
        DatasetSpec.from_dict({"name": "c", "path": "x", "max_sample": 5})
    message = str(err.value)
    assert "'max_sample' (did you mean 'max_samples'?)" in message
    assert "Valid keys are:" in message and "label_column" in message


def test_spec_from_dict_roundtrip_and_identity():
    spec = DatasetSpec.from_dict({"name": "c", "path": "x", "split": "train", "class_names": ("a", "b")})
    assert DatasetSpec.from_dict(spec) is spec
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    assert spec.class_names == ["a", "b"]
    with pytest.raises(ValueError, match="missing required key"):
        DatasetSpec.from_dict({"name": "c"})
    with pytest.raises(ValueError, match="Did you mean 'imagefolder'"):
        DatasetSpec(name="c", path="x", builder="imagefolders")
    with pytest.raises(ValueError, match="max_samples"):
        DatasetSpec(name="c", path="x", max_samples=0)


def test_bad_path_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*Expected a Parquet file"):
        load_spec({"name": "c", "path": str(tmp_path / "nope" / "deeper")})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_spec({"name": "c", "path": "./missing.parquet"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither Parquet files nor images"):
        load_spec({"name": "c", "path": str(tmp_path / "empty")})


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("parquet")
    toy = _toy(12)
    toy.to_parquet(str(root / "train.parquet"))
    toy.select(range(6)).to_parquet(str(root / "test-00000-of-00002.parquet"))
    toy.select(range(6, 9)).to_parquet(str(root / "test-00001-of-00002.parquet"))
    return root


def test_load_parquet_folder_file_and_shards(parquet_dir, tmp_path):
    assert infer_builder(DatasetSpec(name="t", path=str(parquet_dir))) == "parquet"
    train = load_spec({"name": "t", "path": str(parquet_dir), "split": "train"}, cache_dir=str(tmp_path))
    assert len(train) == 12 and isinstance(train.features["image"], datasets.Image)
    assert train.features["label"].names == ["class 0", "class 1", "class 2"]
    assert len(load_spec({"name": "t", "path": str(parquet_dir)}, cache_dir=str(tmp_path))) == 9  # test-* shards
    single = load_spec({"name": "t", "path": str(parquet_dir / "train.parquet"), "split": "train[:5]"},
                       cache_dir=str(tmp_path))
    assert len(single) == 5
    with pytest.raises(FileNotFoundError, match=r"no Parquet file for split 'validation'.*train.parquet"):
        load_spec({"name": "t", "path": str(parquet_dir), "split": "validation"}, cache_dir=str(tmp_path))


def test_missing_column_names_it_and_lists_available(parquet_dir, tmp_path):
    with pytest.raises(ValueError) as err:
        load_spec({"name": "t", "path": str(parquet_dir), "split": "train", "label_column": "fine_label"},
                  task="classification", cache_dir=str(tmp_path))
    assert "'fine_label' not found" in str(err.value) and "['image', 'label']" in str(err.value)
    with pytest.raises(ValueError, match="'captions' not found"):
        load_spec({"name": "t", "path": str(parquet_dir), "split": "train"}, task="retrieval", cache_dir=str(tmp_path))


def test_max_samples_is_seeded_and_deterministic(parquet_dir, tmp_path):
    def stored_paths(seed):
        spec = {"name": "t", "path": str(parquet_dir), "split": "train", "max_samples": 5, "seed": seed}
        subset = load_spec(spec, cache_dir=str(tmp_path)).cast_column("image", datasets.Image(decode=False))
        return [row["path"] for row in subset["image"]]

    first = stored_paths(0)
    assert len(first) == 5 and first == stored_paths(0)
    assert first == sorted(first, key=lambda p: int(p[4:-4]))  # the subset keeps the source order
    assert any(stored_paths(seed) != first for seed in (1, 2))


def test_imagefolder_flat_and_split(tmp_path):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / "split" / split / cls).mkdir(parents=True)
            (tmp_path / "flat" / cls).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (8, 8)).save(tmp_path / "split" / split / cls / f"{i}.png")
                Image.new("RGB", (8, 8)).save(tmp_path / "flat" / cls / f"{split}{i}.png")
    cache = str(tmp_path / "cache")
    spec = DatasetSpec(name="f", path=str(tmp_path / "split"), split="test")
    assert infer_builder(spec) == "imagefolder"
    test = load_spec(spec, task="classification", cache_dir=cache)
    assert len(test) == 4 and class_names_of(test, spec) == ["cat", "dog"]
    flat = load_spec({"name": "f", "path": str(tmp_path / "flat")}, cache_dir=cache)
    assert len(flat) == 8  # the folder is the split, whatever its file names say
    with pytest.raises(FileNotFoundError, match="split folders"):
        load_spec({"name": "f", "path": str(tmp_path / "split"), "split": "validation"}, cache_dir=cache)


def test_hub_ids_go_through_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = DatasetSpec(name="c", path="uoft-cs/cifar10", split="test")
    assert infer_builder(spec) == "hub"
    with pytest.raises(FileNotFoundError, match=r"Hub dataset 'uoft-cs/cifar10'.*offline"):
        load_spec(spec)
    assert calls == [("uoft-cs/cifar10", {"split": "test", "cache_dir": None})]


def test_class_names_validation():
    toy = _toy(6, num_classes=3)
    assert class_names_of(toy, {"name": "t", "path": "x"}) == ["class 0", "class 1", "class 2"]
    assert class_names_of(toy, {"name": "t", "path": "x", "class_names": ["a", "b", "c"]}) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="duplicate class names"):
        class_names_of(toy, {"name": "t", "path": "x", "class_names": ["a", "a", "c"]})
    with pytest.raises(ValueError, match="empty"):
        class_names_of(toy, {"name": "t", "path": "x", "class_names": []})
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        class_names_of(toy, {"name": "t", "path": "x", "class_names": ["a", " ", "c"]})
    with pytest.raises(ValueError, match=r"span \[0, 2\] but there are 2 class names"):
        class_names_of(toy, {"name": "t", "path": "x", "class_names": ["a", "b"]})
    plain = toy.cast_column("label", datasets.Value("int64"))
    with pytest.raises(ValueError, match="not a ClassLabel"):
        class_names_of(plain, {"name": "t", "path": "x"})
    negative = datasets.Dataset.from_dict({"label": [0, -1]})
    with pytest.raises(ValueError, match="label -1"):
        class_names_of(negative, {"name": "t", "path": "x", "class_names": ["a", "b"]})


# --------------------------------------------------------------------------------------------------------------------
# Transforms


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("train", [True, False])
def test_transform_shapes_from_processor(size, train):
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    transform = build_image_transform(processor, train=train)
    for shape in [(20, 30, 3), (300, 200, 3), (size, size, 3)]:
        image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)).permute(2, 0, 1)
        out = transform(image, torch.Generator().manual_seed(0)) if train else transform(image)
        assert out.shape == (3, size, size) and out.dtype == torch.uint8
    if train:
        assert transform.resize == round(size * 256 / 224)


def _processor_pixels(processor, image: Image.Image) -> torch.Tensor:
    return processor(images=image, return_tensors="pt")["pixel_values"][0]


# Odd sizes and aspect ratios, both orientations, sides that round differently when scaled, and already-small images.
ODD_SHAPES = [(50, 70), (90, 40), (33, 33), (31, 200), (201, 29), (37, 38), (300, 451), (17, 23)]


@pytest.mark.parametrize("size,shapes", [(32, ODD_SHAPES), (224, [(375, 500), (333, 517), (500, 281), (225, 224)])])
def test_eval_pixels_equal_clip_image_processor(size, shapes):
    # The reference users compare with: transformers 5's CLIPImageProcessor (torchvision back-end), given PIL images.
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    transform = build_image_transform(processor, train=False)
    rng = np.random.default_rng(1)
    for h, w in shapes:
        for mode in ("RGB", "L"):
            array = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
            image = Image.fromarray(array, mode=mode)
            ours = normalize_pixels(transform(decode_rgb({"bytes": _png(array), "path": None}))[None], processor)[0]
            assert torch.equal(ours, _processor_pixels(processor, image)), (h, w, mode)


def test_eval_pixels_against_the_pil_processor_within_tolerance():
    # The PIL back-end (CLIPImageProcessorPil, what transformers serves without torchvision) resizes with PIL's
    # bicubic kernel (a = -0.5) where torchvision's antialiased tensor bicubic uses a = -0.75; sizes and crop offsets
    # are the same. Stated tolerance, in 1/255 steps before normalisation: mean |difference| <= 0.5 and max <= 16
    # (measured on uniform noise, the worst case for a kernel difference: max 16 at 90x40 -> 32 px, else <= 2).
    pil_cls = getattr(__import__("transformers"), "CLIPImageProcessorPil", None)
    if pil_cls is None:
        pytest.skip("this transformers has no PIL back-end class")
    processor = pil_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transform = build_image_transform(processor, train=False)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    rng = np.random.default_rng(2)
    for h, w in ODD_SHAPES:
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = normalize_pixels(transform(decode_rgb({"bytes": _png(array), "path": None}))[None], processor)[0]
        steps = ((ours - _processor_pixels(processor, Image.fromarray(array))) * std).abs() * 255
        assert steps.mean() <= 0.5 and steps.max() <= 16 + 1e-3, (h, w, steps.mean(), steps.max())


def test_train_transform_has_the_paper_geometry():
    # Resize the shortest edge to round(crop * 256 / 224), RandomCrop(crop), RandomHorizontalFlip: every output is a
    # window of the resized image (flipped or not), windows cover the whole range, and about half are flipped.
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transform = build_image_transform(processor, train=True)
    assert transform.resize == 37 and transform.crop_size == (32, 32)
    image = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)).permute(2, 0, 1)
    assert transform.output_size(50, 70) == (37, 51) and transform.output_size(70, 50) == (51, 37)
    resized = tvF.resize(image, [37, 51], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    windows = {(t, l, f): (resized[:, t:t + 32, l:l + 32].flip(-1) if f else resized[:, t:t + 32, l:l + 32])
               for t in range(6) for l in range(20) for f in (False, True)}
    seen = []
    for key in range(200):
        out = transform(image, torch.Generator().manual_seed(key))
        match = [k for k, v in windows.items() if torch.equal(out, v)]
        assert match, key
        seen.append(match[0])
    assert {t for t, _, _ in seen} == set(range(6)) and {l for _, l, _ in seen} == set(range(20))
    assert 70 <= sum(f for _, _, f in seen) <= 130
    # the same generator state draws the same crop; the evaluation transform is deterministic
    assert torch.equal(transform(image, torch.Generator().manual_seed(5)), transform(image, torch.Generator().manual_seed(5)))
    evaluation = build_image_transform(processor, train=False)
    assert torch.equal(evaluation(image), evaluation(image))


def test_decode_applies_exif_orientation_and_reads_other_formats():
    array = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif, quality=95)
    decoded = decode_rgb({"bytes": buf.getvalue(), "path": None})
    assert decoded.shape == (3, 30, 20) and decoded.dtype == torch.uint8
    reference = tvF.pil_to_tensor(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    assert (decoded.int() - reference.int()).abs().max() <= 1  # libjpeg-turbo in both; at most an IDCT rounding
    buf = io.BytesIO()
    image.save(buf, format="BMP")  # not a torchvision format: read by PIL
    assert torch.equal(decode_rgb({"bytes": buf.getvalue(), "path": None}), torch.from_numpy(array).permute(2, 0, 1))
    with pytest.raises(Exception):
        decode_rgb({"bytes": b"definitely not an image", "path": None})


def test_normalize_pixels_on_device_and_float_passthrough(tiny_processor):
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = normalize_pixels(pixels, tiny_processor)
    mean = torch.tensor(tiny_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(tiny_processor.image_std).view(3, 1, 1)
    torch.testing.assert_close(out, (pixels.float() / 255 - mean) / std, atol=1e-5, rtol=0)
    assert normalize_pixels(out, tiny_processor) is out
    assert normalize_pixels(pixels, tiny_processor, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="image processor"):
        normalize_pixels(pixels)


def test_grayscale_becomes_rgb(tiny_processor):
    array = np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8)
    out = build_image_transform(tiny_processor, train=False)(decode_rgb({"bytes": _png(array), "path": None}))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_with_image_transform_classification_and_collate(tiny_processor):
    dataset = with_image_transform(_toy(6, gray=True), tiny_processor, train=True, label_column="label",
                                   dataset_name="toy")
    row = dataset[4]
    assert set(row) == {"pixel_values", "labels"} and row["pixel_values"].shape == (3, 32, 32) and row["labels"] == 1
    batch = collate_classification(dataset.__getitems__([0, 1, 2, 3]))
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 2, 0]
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_classification)
    assert [b["pixel_values"].shape[0] for b in loader] == [4, 2]
    clone = pickle.loads(pickle.dumps(dataset))  # DataLoader workers under "spawn" pickle the dataset
    assert clone[0]["pixel_values"].shape == (3, 32, 32)


def test_with_image_transform_retrieval_and_collate(tiny_processor):
    toy = _toy(3)
    toy = toy.add_column("captions", [["a", "b"], ["c"], ["d", "e", "f"]]).add_column("caption", ["x", "y", "z"])
    dataset = with_image_transform(toy, tiny_processor, train=False, captions_column="captions")
    batch = collate_retrieval([dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["captions"] == [["a", "b"], ["c"], ["d", "e", "f"]]
    single = with_image_transform(toy, tiny_processor, train=False, captions_column="caption")
    assert single[1]["captions"] == ["y"]
    with pytest.raises(KeyError, match="label_column"):
        collate_classification([dataset[0]])
    with pytest.raises(ValueError, match="'labels_x' not found"):
        with_image_transform(toy, tiny_processor, train=False, label_column="labels_x")


def test_corrupt_image_error_names_dataset_row_and_path(tiny_processor):
    toy = _toy(8, corrupt=(5,))
    dataset = with_image_transform(toy, tiny_processor, train=False, label_column="label", dataset_name="toy-set")
    assert dataset[4]["labels"] == 1
    with pytest.raises(CorruptImageError) as err:
        dataset[3:7]
    message = str(err.value)
    assert "row 5" in message and "'toy-set'" in message and "broken_5.png" in message
    assert "verify_images" in message and "skip_corrupt=True" in message
    # In a subset the row is counted in that subset, which is what the caller indexes.
    subset = with_image_transform(toy.select([7, 6, 5, 4]), tiny_processor, train=False, label_column="label",
                                  dataset_name="toy-set")
    with pytest.raises(CorruptImageError, match="row 2 "):
        collate_classification(subset.__getitems__([0, 1, 2, 3]))


def test_verify_images_raises_or_drops_and_counts():
    toy = _toy(8, corrupt=(2, 6))
    with pytest.raises(CorruptImageError, match=r"row 2 of dataset 'toy'.*broken_2.png"):
        verify_images(toy, dataset_name="toy")
    kept, dropped = verify_images(toy, dataset_name="toy", skip_corrupt=True, batch_size=3)
    assert dropped == 2 and len(kept) == 6
    assert kept["label"][:] == [0, 1, 0, 1, 2, 1]  # rows 2 and 6 (labels 2 and 0) are gone, order kept
    clean, none = verify_images(_toy(4))
    assert none == 0 and len(clean) == 4


# --------------------------------------------------------------------------------------------------------------------
# Training randomness keyed by (seed, epoch, row)


def _epoch_pixels(dataset, epoch: int, num_workers: int = 0, persistent: bool = False):
    from clip_cl.data import EpochSampler

    sampler = EpochSampler(len(dataset), seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=num_workers,
                                         persistent_workers=persistent, collate_fn=collate_classification)
    out = []
    for e in range(epoch + 1):
        sampler.set_epoch(e)
        out = [b["pixel_values"] for b in loader]
    return torch.cat(out)


def test_keyed_augmentation_ignores_global_rng_and_workers(tiny_processor):
    dataset = with_image_transform(_toy(12), tiny_processor, train=True, label_column="label", seed=7)
    torch.manual_seed(0)
    reference = _epoch_pixels(dataset, epoch=1)
    torch.manual_seed(99)  # another process history
    assert torch.equal(_epoch_pixels(dataset, epoch=1), reference)
    assert torch.equal(_epoch_pixels(dataset, epoch=1, num_workers=2, persistent=True), reference)
    # epochs draw different crops/flips and orders; another seed draws other crops
    assert not torch.equal(_epoch_pixels(dataset, epoch=0), reference)
    other = with_image_transform(_toy(12), tiny_processor, train=True, label_column="label", seed=8)
    assert not torch.equal(_epoch_pixels(other, epoch=1), reference)
    # a key is epoch * rows + row: the same row in the same epoch is always the same pixels
    assert torch.equal(dataset[12 + 5]["pixel_values"], dataset.__getitems__([3, 12 + 5])[1]["pixel_values"])


def test_image_cache_gives_identical_rows_and_is_shared_by_selections(tmp_path, tiny_processor):
    toy = _toy(12)
    cache_dir = tmp_path / "cache"
    for train in (True, False):
        plain = with_image_transform(toy, tiny_processor, train=train, label_column="label", seed=4)
        cached = with_image_transform(toy, tiny_processor, train=train, label_column="label", seed=4,
                                      cache_dir=cache_dir)
        keys = [0, 5, 11] + ([12 + 3, 24 + 7] if train else [])
        for a, b in zip(plain.__getitems__(keys), cached.__getitems__(keys)):
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["labels"] == b["labels"]
    assert len(list(cache_dir.glob("*.u8"))) == 2  # one per transform geometry
    # a session's selection of the same table reuses the file, and maps its rows onto it
    part = toy.select([7, 2, 9])
    before = sorted(p.stat().st_mtime_ns for p in cache_dir.iterdir())
    cached = with_image_transform(part, tiny_processor, train=False, label_column="label", cache_dir=cache_dir)
    assert sorted(p.stat().st_mtime_ns for p in cache_dir.iterdir()) == before
    plain = with_image_transform(part, tiny_processor, train=False, label_column="label")
    assert all(torch.equal(cached[i]["pixel_values"], plain[i]["pixel_values"]) for i in range(3))
    # other pixels, other checksum: a new file
    with_image_transform(_toy(12, gray=True), tiny_processor, train=False, label_column="label", cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.u8"))) == 3
    # workers reopen the memory map from the pickled paths
    clone = pickle.loads(pickle.dumps(cached))
    assert torch.equal(clone[1]["pixel_values"], plain[1]["pixel_values"])
