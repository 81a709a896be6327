"""Input pipeline on CPU: images/s per loader worker and bytes per image through collation, before and after.

Rows are COCO-like object crops around 224 px (JPEG, quality 90, sides 160-400 px, aspect 1:2 to 2:1), cut from the
COCO images in `../shared/data/coco_mini` when present, otherwise synthesised (smooth random images). Each case reads
the whole set through a `DataLoader` with the training transform of a 224-px CLIP (resize the short side to 256,
random 224 crop, flip) and the library's collation, in one process (`num_workers=0`: the rate of one worker):

- `old`: the hand-written path this replaced (PIL decode via `datasets`, PIL resize, float32 normalised on the host,
  float32 collation), copied below from clip_cl/data/transforms.py as of commit 5388e6f;
- `new`: `clip_cl.data.with_image_transform` (torchvision decode, uint8 transforms, uint8 collation);
- `cached`: the same with `cache_dir` (decoded, resized images memory-mapped; built before timing).

Cases run round-robin (`--rounds`); each ratio is the median over rounds of the per-round ratio. `--workers` adds rows
with that many worker processes for `new` and `cached` (total images/s; on a shared CPU they measure contention).

`--loop` measures what decides the loader defaults: a training loop, not the loader alone. The main process runs a
small ViT's forward, backward and optimizer step on every batch (`normalize_pixels` on the batch first, as the trainers
do) for `--epochs` epochs, once per loader setting (workers, persistent workers, prefetch factor; JPEG and cached
input), round-robin; each row gives the loop's wall time against the same steps on batches already in memory (the
compute floor), so `x floor` - 1 is what the input pipeline adds.

    python benchmarks/bench_loader.py                      # 256 crops, 3 rounds
    python benchmarks/bench_loader.py --images 32 --rounds 1 --batch_size 8    # smoke run
    python benchmarks/bench_loader.py --loop --workers 0 1 2 --epochs 3        # loader settings in a training loop
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402

from clip_cl.data import collate_classification, normalize_pixels, with_image_transform  # noqa: E402

COCO = ROOT.parent / "shared" / "data" / "coco_mini"


# ---------------------------------------------------------------------------------------------------- the old path
class OldImageTransform:
    """clip_cl.data.ImageTransform at commit 5388e6f (PIL + torch): PIL image -> normalised float32 [3, H, W]."""

    def __init__(self, crop, resize, mean, std, train, resample=Image.BICUBIC):
        self.crop_size, self.resize, self.train, self.resample = crop, resize, train, resample
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def _resize(self, image):
        short = max(self.resize, *self.crop_size)
        w, h = image.size
        height, width = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        return image if (width, height) == image.size else image.resize((width, height), resample=self.resample)

    def __call__(self, image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = self._resize(image)
        w, h = image.size
        ch, cw = self.crop_size
        if self.train:
            top = int(torch.randint(0, max(h - ch, 0) + 1, (1,)))
            left = int(torch.randint(0, max(w - cw, 0) + 1, (1,)))
        else:
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        image = image.crop((left, top, left + cw, top + ch))
        if self.train and bool(torch.rand(()) < 0.5):
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        return (pixels - self.mean) / self.std


class OldRows:
    """The old lazy rows: `datasets`' PIL decoding, then the old transform (float32 rows)."""

    def __init__(self, raw, transform):
        self.raw, self.transform, self.feature = raw, transform, datasets.Image()

    def __len__(self):
        return len(self.raw)

    def __getitems__(self, indices):
        batch = self.raw[list(indices)]
        return [{"pixel_values": self.transform(self.feature.decode_example(v)), "labels": int(y)}
                for v, y in zip(batch["image"], batch["label"])]


# ---------------------------------------------------------------------------------------------------- data
def coco_like_crops(n: int, seed: int = 0) -> tuple[datasets.Dataset, str]:
    """`n` JPEG crops around 224 px: random boxes of the coco_mini photos, or smooth synthetic images."""
    rng = np.random.default_rng(seed)
    photos = sorted(COCO.glob("*2017/*.jpg")) if COCO.is_dir() else []
    images = []
    for i in range(n):
        side = int(rng.integers(160, 401))
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        w, h = max(32, int(side * aspect ** 0.5)), max(32, int(side / aspect ** 0.5))
        if photos:
            photo = Image.open(photos[i % len(photos)]).convert("RGB")
            pw, ph = photo.size
            bw, bh = min(pw, w), min(ph, h)
            x, y = int(rng.integers(0, pw - bw + 1)), int(rng.integers(0, ph - bh + 1))
            image = photo.crop((x, y, x + bw, y + bh))
        else:
            small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        images.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    source = "coco_mini crops" if photos else "synthetic"
    return datasets.Dataset.from_dict({"image": images, "label": [i % 10 for i in range(n)]}, features=features), source


# ---------------------------------------------------------------------------------------------------- timing
def one_pass(dataset, batch_size: int, num_workers: int, collate) -> tuple[float, float]:
    """Seconds to read every row once, and bytes of `pixel_values` per image."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                                         shuffle=False)
    start = time.perf_counter()
    nbytes = count = 0
    for batch in loader:
        pixels = batch["pixel_values"]
        nbytes += pixels.numel() * pixels.element_size()
        count += pixels.shape[0]
    return time.perf_counter() - start, nbytes / count


def old_collate(rows):
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows])}


def bench(num_images: int = 256, rounds: int = 3, batch_size: int = 32, crop: int = 224, workers=(),
          log=print) -> dict:
    torch.manual_seed(0)
    raw, source = coco_like_crops(num_images)
    processor = CLIPImageProcessor(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop})
    cache_dir = tempfile.mkdtemp(prefix="bench-loader-cache-")
    old = OldRows(raw, OldImageTransform((crop, crop), round(crop * 256 / 224), processor.image_mean,
                                         processor.image_std, train=True))
    new = with_image_transform(raw, processor, train=True, label_column="label")
    start = time.perf_counter()
    cached = with_image_transform(raw, processor, train=True, label_column="label", cache_dir=cache_dir)
    build_s = time.perf_counter() - start
    cases = {"old": (old, old_collate), "new": (new, collate_classification), "cached": (cached, collate_classification)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    per_image_bytes: dict[str, float] = {}
    for _ in range(rounds):
        for name, (ds, collate) in cases.items():
            seconds, per_image_bytes[name] = one_pass(ds, batch_size, 0, collate)
            times[name].append(seconds)
    rows = {}
    for name in cases:
        rows[name] = {"images_per_s_per_worker": num_images / statistics.median(times[name]),
                      "bytes_per_image": per_image_bytes[name],
                      "vs_old": statistics.median(o / t for o, t in zip(times["old"], times[name]))}
    for w in workers:
        for name in ("new", "cached"):
            ds, collate = cases[name]
            seconds, _ = one_pass(ds, batch_size, w, collate)
            rows[f"{name}_workers{w}"] = {"images_per_s_total": num_images / seconds, "workers": w}
    cache_mb = sum(f.stat().st_size for f in Path(cache_dir).iterdir()) / 1e6
    result = {"images": num_images, "source": source, "rounds": rounds, "batch_size": batch_size, "crop": crop,
              "cache_build_s": build_s, "cache_mb": cache_mb, "cpu_threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "rows": rows}
    log(table(result))
    return result


# ---------------------------------------------------------------------------------------------------- in a loop
def loader_settings(workers) -> list[tuple[int, bool, int | None]]:
    """(num_workers, persistent_workers, prefetch_factor) to compare: no workers, and per worker count the
    DataLoader's defaults (not persistent, prefetch 2), persistent workers, and persistent with prefetch 4."""
    out = [(0, False, None)]
    for w in sorted(set(workers) - {0}):
        out += [(w, False, 2), (w, True, 2), (w, True, 4)]
    return out


def setting_name(setting) -> str:
    w, persistent, prefetch = setting
    return "workers0" if w == 0 else f"workers{w}" + ("_persistent" if persistent else "") + f"_prefetch{prefetch}"


def small_vit_step(crop: int, processor, seed: int = 0):
    """A training step of a small ViT (4 layers, width 128, patch 32) on a uint8 batch: the consumer of the loop."""
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=crop, patch_size=32, hidden_size=128,
                                                           intermediate_size=512, num_hidden_layers=4,
                                                           num_attention_heads=4, projection_dim=64))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step(batch):
        pixels = normalize_pixels(batch["pixel_values"], processor)
        model(pixel_values=pixels).image_embeds.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def loop_pass(dataset, collate, batch_size: int, epochs: int, setting, step) -> float:
    """Wall seconds of `epochs` epochs of `step` over a DataLoader with `setting` (its start-up included)."""
    w, persistent, prefetch = setting
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate,
                                         num_workers=w, persistent_workers=persistent, prefetch_factor=prefetch)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            step(batch)
    seconds = time.perf_counter() - start
    del loader  # persistent workers end here, outside the timing
    return seconds


def bench_loop(num_images: int = 256, rounds: int = 3, batch_size: int = 32, crop: int = 224, workers=(0, 1, 2),
               epochs: int = 3, log=print) -> dict:
    raw, source = coco_like_crops(num_images)
    processor = CLIPImageProcessor(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop})
    cache_dir = tempfile.mkdtemp(prefix="bench-loader-cache-")
    inputs = {"jpeg": with_image_transform(raw, processor, train=True, label_column="label"),
              "cached": with_image_transform(raw, processor, train=True, label_column="label", cache_dir=cache_dir)}
    step = small_vit_step(crop, processor)
    in_memory = list(torch.utils.data.DataLoader(inputs["cached"], batch_size=batch_size, collate_fn=collate_classification))
    for batch in in_memory[:2]:  # warm-up
        step(batch)
    settings = loader_settings(workers)
    times: dict[str, list[float]] = {}
    floors: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(epochs):
            for batch in in_memory:
                step(batch)
        floors.append(time.perf_counter() - start)
        for kind, dataset in inputs.items():
            for setting in settings:
                name = f"{kind}_{setting_name(setting)}"
                seconds = loop_pass(dataset, collate_classification, batch_size, epochs, setting, step)
                times.setdefault(name, []).append(seconds)
    floor = statistics.median(floors)
    rows = {name: {"seconds": statistics.median(t), "images_per_s": num_images * epochs / statistics.median(t),
                   "x_floor": statistics.median(s / f for s, f in zip(t, floors))} for name, t in times.items()}
    result = {"images": num_images, "source": source, "rounds": rounds, "batch_size": batch_size, "crop": crop,
              "epochs": epochs, "floor_seconds": floor, "cpu_threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "loop_rows": rows}
    log(loop_table(result))
    return result


def loop_table(result: dict) -> str:
    lines = [f"{result['images']} {result['source']}, train transform to {result['crop']} px, batch "
             f"{result['batch_size']}, {result['epochs']} epochs of a small ViT's training step in the main process "
             f"({result['cpu_threads']} torch threads, {result['cpus']} CPUs), median of {result['rounds']} round(s); "
             f"compute floor (batches in memory) {result['floor_seconds']:.2f} s",
             "", "| input, loader setting | wall s | images/s | x floor |", "|---|---:|---:|---:|"]
    for name, r in result["loop_rows"].items():
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['images_per_s']:.1f} | {r['x_floor']:.2f} |")
    return "\n".join(lines)


def table(result: dict) -> str:
    lines = [f"{result['images']} {result['source']} (JPEG q90, 160-400 px), train transform to "
             f"{result['crop']} px, batch {result['batch_size']}, median of {result['rounds']} round(s); cache built in "
             f"{result['cache_build_s']:.2f} s ({result['cache_mb']:.1f} MB)",
             "", "| path | images/s per worker | x old | bytes/image through collation | x fewer bytes |",
             "|---|---:|---:|---:|---:|"]
    old_bytes = result["rows"]["old"]["bytes_per_image"]
    for name in ("old", "new", "cached"):
        r = result["rows"][name]
        lines.append(f"| {name} | {r['images_per_s_per_worker']:.1f} | {r['vs_old']:.2f} | "
                     f"{r['bytes_per_image']:,.0f} | {old_bytes / r['bytes_per_image']:.1f} |")
    for name, r in result["rows"].items():
        if "workers" in r:
            lines.append(f"| {name} (total) | {r['images_per_s_total']:.1f} | | | |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="number of JPEG crops")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds (median reported)")
    parser.add_argument("--batch_size", type=int, default=32, help="loader batch size")
    parser.add_argument("--crop", type=int, default=224, help="model input size")
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="also time these worker counts")
    parser.add_argument("--loop", action="store_true", help="time loader settings inside a training loop instead")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per setting with --loop")
    parser.add_argument("--json", type=str, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.loop:
        result = bench_loop(args.images, args.rounds, args.batch_size, args.crop, args.workers or [0, 1, 2],
                            args.epochs)
    else:
        result = bench(args.images, args.rounds, args.batch_size, args.crop, args.workers)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
