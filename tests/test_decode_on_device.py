"""`decode_on_device`: JPEGs left encoded by the loader and decoded where the batch is used. On CPU the batches, the
evaluation features and a short training run must equal the default (host decoding) bit for bit; PNG, CMYK and
EXIF-rotated JPEG rows stay on the host; the image cache cannot be combined with it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from clip_cl.cli import train_main
from clip_cl.data import (
    CorruptImageError,
    EncodedImage,
    EncodedImages,
    EpochSampler,
    collate_classification,
    collate_retrieval,
    pixels_to_device,
    with_image_transform,
)
from clip_cl.errors import ConfigError
from clip_cl.evaluation import encode_image_dataset
from clip_cl.methods.ft import CLIPFineTuneTrainer, FTConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
CPU = torch.device("cpu")


def _encoded(array: np.ndarray, fmt: str, mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _mixed(tmp_path: Path) -> tuple[datasets.Dataset, list[bool]]:
    """Odd sizes and aspect ratios: RGB and grayscale JPEGs (device), a PNG, an EXIF-rotated and a CMYK JPEG (host),
    and a JPEG stored as a file path. Returns the dataset and which rows a device may decode."""
    rng = np.random.default_rng(0)

    def pixels(h, w):  # smooth content plus noise, so the JPEG is not all high frequencies
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], -1)
        return np.clip(base + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = tmp_path / "file.jpg"
    path.write_bytes(_encoded(pixels(47, 31), "JPEG", quality=85))
    images = [
        ({"bytes": _encoded(pixels(37, 53), "JPEG"), "path": None}, True),
        ({"bytes": _encoded(pixels(61, 29), "JPEG", quality=70), "path": None}, True),
        ({"bytes": _encoded(pixels(45, 45), "PNG"), "path": None}, False),
        ({"bytes": _encoded(pixels(40, 71), "JPEG", mode="L"), "path": None}, True),
        ({"bytes": _encoded(pixels(50, 33), "JPEG", exif=exif.tobytes()), "path": None}, False),
        ({"bytes": _encoded(pixels(33, 90), "JPEG", mode="CMYK"), "path": None}, False),
        ({"bytes": None, "path": str(path)}, True),
        ({"bytes": _encoded(pixels(32, 32), "JPEG", subsampling=0), "path": None}, True),
    ]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"),
                                  "captions": datasets.Sequence(datasets.Value("string"))})
    ds = datasets.Dataset.from_dict({"image": [v for v, _ in images], "label": [i % 3 for i in range(len(images))],
                                     "captions": [[f"image {i}"] for i in range(len(images))]}, features=features)
    return ds, [d for _, d in images]


@pytest.fixture(scope="module")
def processor():
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _epoch_batches(dataset, epoch: int, num_workers: int = 0) -> list[dict]:
    sampler = EpochSampler(len(dataset), seed=5)
    sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=num_workers,
                                         collate_fn=collate_classification)
    return list(loader)


def test_training_and_evaluation_batches_equal_host_decoding(tmp_path, processor):
    ds, device_rows = _mixed(tmp_path)
    host = with_image_transform(ds, processor, train=True, label_column="label", seed=11)
    dev = with_image_transform(ds, processor, train=True, label_column="label", seed=11, decode_on_device=True)
    # JPEGs in RGB or grayscale stay encoded; the PNG, the EXIF-rotated and the CMYK JPEG are decoded on the host.
    rows = dev.__getitems__(list(range(len(ds))))
    assert [isinstance(r["pixel_values"], EncodedImage) for r in rows] == device_rows
    assert all(isinstance(r["pixel_values"], torch.Tensor) for r in host.__getitems__(list(range(len(ds)))))
    # A fixed epoch through a loader (one worker: the encoded batch crosses a process boundary), with crops and
    # flips drawn from the same (seed, epoch, row) keys on the device side.
    expected = _epoch_batches(host, epoch=2)
    got = _epoch_batches(dev, epoch=2, num_workers=1)
    assert any(isinstance(b["pixel_values"], EncodedImages) for b in got)
    for a, b in zip(expected, got, strict=True):
        pixels = pixels_to_device(b["pixel_values"], CPU)
        assert pixels.dtype == torch.uint8 and torch.equal(pixels, a["pixel_values"])
        assert torch.equal(a["labels"], b["labels"])
    # another epoch draws other crops on both paths alike
    other = pixels_to_device(_epoch_batches(dev, epoch=3)[0]["pixel_values"], CPU)
    assert torch.equal(other, _epoch_batches(host, epoch=3)[0]["pixel_values"])
    # evaluation (centre crop), classification and retrieval rows
    for collate, kw in ((collate_classification, {"label_column": "label"}),
                        (collate_retrieval, {"captions_column": "captions"})):
        host = with_image_transform(ds, processor, train=False, **kw)
        dev = with_image_transform(ds, processor, train=False, decode_on_device=True, **kw)
        a = collate([host[i] for i in range(len(ds))])
        b = collate([dev[i] for i in range(len(ds))])
        assert isinstance(b["pixel_values"], EncodedImages)
        assert torch.equal(pixels_to_device(b["pixel_values"], CPU), a["pixel_values"])


def test_evaluation_features_equal_host_decoding(tmp_path, tiny):
    model, processor = tiny
    ds, _ = _mixed(tmp_path)
    ip = processor.image_processor
    outs = []
    for flag in (False, True):
        rows = with_image_transform(ds, ip, train=False, label_column="label", decode_on_device=flag)
        outs.append(encode_image_dataset(model, rows, batch_size=3, image_processor=ip, disable_tqdm=True))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1]["labels"], outs[1][1]["labels"])


def test_short_training_run_gives_the_same_loss_and_weights(tmp_path, tiny, pristine_tiny):
    import copy

    ds, _ = _mixed(tmp_path)
    results = []
    for flag in (False, True):
        model, processor = copy.deepcopy(pristine_tiny[0]), pristine_tiny[1]
        train = with_image_transform(ds, processor.image_processor, train=True, label_column="label", seed=0,
                                     decode_on_device=flag)
        args = FTConfig(output_dir=str(tmp_path / f"out{flag}"), per_device_train_batch_size=3, max_steps=4,
                        learning_rate=1e-3, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                        logging_steps=1, decode_on_device=flag)
        trainer = CLIPFineTuneTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                                      class_names=["a", "b", "c"])
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        results.append((losses, {k: v.detach().clone() for k, v in model.named_parameters()}))
    (losses_host, weights_host), (losses_dev, weights_dev) = results
    assert len(losses_host) == 4 and losses_dev == losses_host
    assert all(torch.equal(weights_host[k], weights_dev[k]) for k in weights_host)
    assert any(not torch.equal(weights_host[k], v) for k, v in pristine_tiny[0].named_parameters())


def test_runner_evaluation_equal_with_decode_on_device(tiny):
    """`build_evaluator` passes the option to every evaluation set (cifar10 and COCO samples are JPEGs)."""
    from clip_cl.runner import build_evaluator, build_protocol

    model, processor = tiny
    results = []
    for flag in (False, True):
        config = FTConfig(output_dir="unused", use_cpu=True, report_to="none", max_eval_samples=12,
                          disable_tqdm=True, decode_on_device=flag,
                          update_dataset={"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")},
                          zero_shot_datasets=[{"name": "cifar10", "path": str(DATA / "cifar10"), "split": "test"}],
                          retrieval_datasets=[{"name": "coco", "path": str(DATA / "coco_captions"),
                                               "split": "test"}])
        evaluator = build_evaluator(build_protocol(config), processor, config)
        if flag:
            assert isinstance(evaluator.zero_shot["cifar10"][0][0]["pixel_values"], EncodedImage)
            assert isinstance(evaluator.retrieval["coco"][0]["pixel_values"], EncodedImage)
        result = evaluator.evaluate(model, seen=0)
        result.pop("seconds")
        results.append(result)
    assert results[0] == results[1]


def test_corrupt_jpeg_decoded_on_device_names_dataset_and_path(processor):
    good = _encoded(np.zeros((40, 40, 3), np.uint8), "JPEG")
    broken = good[:200] + b"\0" * (len(good) - 200)  # a readable header, then garbage
    ds = datasets.Dataset.from_dict({"image": [{"bytes": good, "path": "ok.jpg"}, {"bytes": broken, "path": "bad.jpg"}],
                                     "label": [0, 1]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    dev = with_image_transform(ds, processor, train=False, label_column="label", dataset_name="toy",
                               decode_on_device=True)
    batch = collate_classification([dev[0], dev[1]])
    with pytest.raises(CorruptImageError, match=r"dataset 'toy' \(image path 'bad.jpg'\)"):
        pixels_to_device(batch["pixel_values"], CPU)


def test_image_cache_and_decode_on_device_are_refused_together(tmp_path, capsys, processor):
    with pytest.raises(ConfigError, match="decode_on_device and image_cache_dir") as info:
        FTConfig(output_dir=str(tmp_path), decode_on_device=True, image_cache_dir=str(tmp_path / "cache"))
    assert "\n" not in str(info.value) and "image_cache_dir: null" in str(info.value)
    ds, _ = _mixed(tmp_path)
    with pytest.raises(ValueError, match="cannot be combined"):
        with_image_transform(ds, processor, train=False, decode_on_device=True, cache_dir=tmp_path / "cache")
    # the command line: one `error:` line, exit status 2, nothing written
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"method": "ft", "decode_on_device": True, "image_cache_dir": str(tmp_path / "c"),
                                  "output_dir": str(tmp_path / "run")}))
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.endswith(lines[0]) and "Traceback" not in err
    assert "decode_on_device" in lines[0] and "image_cache_dir" in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()
