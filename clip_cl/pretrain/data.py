"""Training data of the pretraining: the world's images decoded once into a uint8 tensor cache, texts drawn per
sample, and a collator that crops, flips and tokenises on whole batches.

At 32 px, decoding JPEGs costs as much CPU as the model, so every training image is decoded once (resized to the
short side `round(crop * 256 / 224)` with bicubic filtering and centre-cropped to a square, as `clip_cl.data`'s
training transform resizes) and kept as `uint8 [N, 3, S, S]`; each batch then gets a random `crop x crop` window and
a random horizontal flip per image, on tensors. The cache (about 250 MB for the default world at 32 px) lives next
to the world (`data/world/cache/`, git-ignored) and is rebuilt whenever a part's checksum changes.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.transforms import TRAIN_RESIZE_RATIO
from .world import load_world

__all__ = [
    "PretrainCollator",
    "TrainPart",
    "WorldTrainDataset",
    "build_train_cache",
    "decode_to_uint8",
    "load_train_parts",
]

logger = logging.getLogger(__name__)

_CACHE_VERSION = 1


@dataclass
class TrainPart:
    """One part of the training world, decoded.

    Attributes:
        name (`str`): the part's name, e.g. `"cifar10_train"`.
        pixels (`torch.Tensor`): `uint8 [N, 3, S, S]` images.
        labels (`torch.Tensor`, *optional*): `int64 [N]` class ids (classification parts).
        class_names (`list[str]`, *optional*): names of the class ids; each image's text is a template filled with its
            class name.
        captions (`list[list[str]]`, *optional*): the captions of each image (caption parts); each time an image is
            drawn, one of its captions is its text.
        repeat (`int`, defaults to 1): how many times the part appears in one epoch (upweights small caption sets).
    """

    name: str
    pixels: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None
    captions: list[list[str]] | None = None
    repeat: int = 1

    def __post_init__(self):
        if self.pixels.dtype != torch.uint8 or self.pixels.dim() != 4 or self.pixels.shape[1] != 3:
            raise ValueError(f"Part {self.name!r}: pixels must be uint8 [N, 3, S, S], got {self.pixels.dtype} "
                             f"{tuple(self.pixels.shape)}.")
        if (self.labels is None) == (self.captions is None):
            raise ValueError(f"Part {self.name!r} needs exactly one of labels (with class_names) or captions.")
        n = len(self.pixels)
        if self.labels is not None:
            if not self.class_names:
                raise ValueError(f"Part {self.name!r} has labels but no class_names.")
            if len(self.labels) != n:
                raise ValueError(f"Part {self.name!r}: {len(self.labels)} labels for {n} images.")
        if self.captions is not None:
            if len(self.captions) != n or any(not c for c in self.captions):
                raise ValueError(f"Part {self.name!r}: every one of the {n} images needs at least one caption.")
        if int(self.repeat) < 1:
            raise ValueError(f"Part {self.name!r}: repeat must be >= 1, got {self.repeat}.")
        self.repeat = int(self.repeat)

    def __len__(self) -> int:
        return len(self.pixels)


def decode_to_uint8(data: bytes | Image.Image, size: int, resample: int = Image.BICUBIC) -> np.ndarray:
    """Decode an image, resize its short side to `size` and centre-crop a `size x size` square.

    Args:
        data (`bytes` or `PIL.Image.Image`): encoded image bytes (JPEG, PNG, ...) or an image.
        size (`int`): side of the output square.
        resample (`int`, defaults to bicubic): PIL resampling filter.

    Returns:
        `np.ndarray`: `uint8 [3, size, size]`.
    """
    image = Image.open(io.BytesIO(data)) if isinstance(data, (bytes, bytearray)) else data
    if getattr(image, "format", None) == "JPEG":
        image.draft("RGB", (size, size))  # decode large JPEGs at a reduced scale that is still >= size
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), resample=resample)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def _decode_part(path: Path, size: int, kind: str, desc: str) -> dict[str, Any]:
    import datasets
    from tqdm.auto import tqdm

    ds = datasets.load_dataset("parquet", data_files={"x": str(path)}, split="x")
    class_names = ds.features["label"].names if kind == "classification" else None
    ds = ds.cast_column("image", datasets.Image(decode=False))
    pixels = np.empty((len(ds), 3, size, size), dtype=np.uint8)
    for i, row in enumerate(tqdm(ds.select_columns(["image"]), desc=desc, mininterval=5)):
        value = row["image"]
        data = value["bytes"] if value.get("bytes") is not None else Path(value["path"]).read_bytes()
        pixels[i] = decode_to_uint8(data, size)
    out: dict[str, Any] = {"pixels": torch.from_numpy(pixels)}
    if kind == "classification":
        out["labels"] = torch.as_tensor(np.asarray(ds.select_columns(["label"]).with_format("numpy")["label"]),
                                        dtype=torch.long)
        out["class_names"] = list(class_names)
    else:
        out["captions"] = [list(c) for c in ds.select_columns(["captions"])["captions"]]
    return out


def build_train_cache(world_dir: str | os.PathLike, parts: Sequence[str], crop_size: int,
                      cache_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Decode the training parts of a world once and cache them as uint8 tensors (reused while unchanged).

    Args:
        world_dir (`str` or `os.PathLike`): the world folder (see [`prepare_world`]).
        parts (`Sequence[str]`): names of the parts to decode (e.g. `["cifar10_train", "pascal_train"]`).
        crop_size (`int`): the model's image size; images are stored at `round(crop_size * 256 / 224)`.
        cache_dir (`str` or `os.PathLike`, *optional*): where to keep the cache (default `<world_dir>/cache`).

    Returns:
        `dict[str, dict]`: per part, `pixels` (`uint8 [N, 3, S, S]`) and either `labels` + `class_names` or
        `captions`.
    """
    world = load_world(world_dir)
    size = round(crop_size * TRAIN_RESIZE_RATIO)
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(world_dir) / "cache"
    out: dict[str, dict[str, Any]] = {}
    for name in parts:
        if name not in world["parts"]:
            raise ValueError(f"Part {name!r} is not in {world_dir}/world.json; parts are {list(world['parts'])}.")
        part = world["parts"][name]
        file = cache_dir / f"{name}_{size}px.pt"
        if file.is_file():
            cached = torch.load(file, weights_only=False)
            if cached.get("version") == _CACHE_VERSION and cached.get("sha256") == part["sha256"]:
                out[name] = cached["data"]
                continue
        logger.info("Decoding %s (%d images) to %dx%d uint8 (once; cached in %s).", name, part["rows"], size, size, file)
        data = _decode_part(Path(world_dir) / part["path"], size, part["kind"], desc=f"decode {name}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".pt.tmp")
        torch.save({"version": _CACHE_VERSION, "sha256": part["sha256"], "data": data}, tmp)
        os.replace(tmp, file)
        out[name] = data
    return out


def load_train_parts(world_dir: str | os.PathLike, repeats: Mapping[str, int], crop_size: int,
                     cache_dir: str | os.PathLike | None = None) -> list[TrainPart]:
    """The world's training parts as [`TrainPart`]s, decoded through the cache.

    Args:
        world_dir (`str` or `os.PathLike`): the world folder.
        repeats (`Mapping[str, int]`): part name -> repeats per epoch; parts with 0 are left out.
        crop_size (`int`): the model's image size.
        cache_dir (`str` or `os.PathLike`, *optional*): cache folder (default `<world_dir>/cache`).

    Returns:
        `list[TrainPart]`: the parts, in the order of `repeats`.
    """
    names = [n for n, r in repeats.items() if int(r) > 0]
    decoded = build_train_cache(world_dir, names, crop_size, cache_dir)
    return [TrainPart(name=n, repeat=int(repeats[n]), **decoded[n]) for n in names]


class WorldTrainDataset(torch.utils.data.Dataset):
    """Image-text pairs of the world: each row is an image with a text drawn when it is read.

    A class image's text is a random template filled with its class name; a captioned image's text is one of its
    captions at random. Each row also carries a `positive_key`: `"class:<name>"` for class images, so that the
    multi-positive loss treats every image of the same class as a positive of each other's texts, and for captioned
    images either `"image:<part>:<row>"` (`caption_positives="image"`: the same image drawn twice into a batch with
    two of its captions is one group, so neither caption is pushed away from its own image) or `"text:<caption>"`
    (`"text"`: grouped by identical caption only, the recipe of the first world-clip).

    Args:
        parts (`Sequence[TrainPart]`): the decoded parts; part `p` appears `p.repeat` times per epoch.
        templates (`Sequence[str]`): templates of class-name captions, each with one `{}`.
        caption_positives (`str`, defaults to `"image"`): how captioned pairs are grouped, `"image"` or `"text"`.
    """

    def __init__(self, parts: Sequence[TrainPart], templates: Sequence[str], caption_positives: str = "image"):
        from ..prompts import check_templates

        if not parts:
            raise ValueError("WorldTrainDataset needs at least one part.")
        sizes = {tuple(p.pixels.shape[1:]) for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"All parts must share one image size, got {sorted(sizes)}.")
        if caption_positives not in ("image", "text"):
            raise ValueError(f"caption_positives must be 'image' or 'text', got {caption_positives!r}.")
        self.parts = list(parts)
        self.templates = check_templates(templates)
        self.caption_positives = caption_positives
        index = [np.stack([np.full(len(p), k), np.arange(len(p))], 1) for k, p in enumerate(self.parts)
                 for _ in range(p.repeat)]
        self.index = np.concatenate(index).astype(np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def part_sizes(self) -> dict[str, int]:
        """Rows per part in one epoch (after repeats)."""
        return {p.name: len(p) * p.repeat for p in self.parts}

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, row = self.index[i]
        part = self.parts[int(k)]
        if part.labels is not None:
            name = part.class_names[int(part.labels[row])]
            text = self.templates[int(torch.randint(len(self.templates), ()))].format(name)
            key = f"class:{name.lower()}"
        else:
            captions = part.captions[row]
            text = captions[int(torch.randint(len(captions), ()))]
            key = (f"image:{part.name}:{int(row)}" if self.caption_positives == "image"
                   else f"text:{text.strip().lower()}")
        return {"pixels": part.pixels[row], "text": text, "positive_key": key}


class PretrainCollator:
    """Batches [`WorldTrainDataset`] rows: random crop and flip (or centre crop), normalisation, tokenisation.

    Args:
        tokenizer: the CLIP tokenizer (pads to the longest text, truncates at its `model_max_length`).
        crop_size (`int`): side of the crops fed to the model.
        image_mean (`Sequence[float]`): per-channel mean (of `[0, 1]` pixels).
        image_std (`Sequence[float]`): per-channel standard deviation.
        train (`bool`, defaults to `True`): random crop + horizontal flip; `False` takes the centre crop.

    Returns (when called on a list of rows):
        `dict`: `pixel_values` (`float [B, 3, crop, crop]`), `input_ids`, `attention_mask` and `positive_groups`
        (`int64 [B]`, equal ids mark rows whose texts are positives of each other's images).
    """

    def __init__(self, tokenizer, crop_size: int, image_mean: Sequence[float], image_std: Sequence[float],
                 train: bool = True):
        self.tokenizer = tokenizer
        self.crop_size = int(crop_size)
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.train = train
        self._ids: dict[str, list[int]] = {}  # tokenised texts: class captions repeat all the time

    def _token_ids(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self.tokenizer(text, truncation=True)["input_ids"]
            if len(self._ids) < 200_000:
                self._ids[text] = ids
        return ids

    def crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """Random (or centre) `crop x crop` windows of `uint8 [B, 3, S, S]`, flipped at random when training."""
        b, _, h, w = pixels.shape
        c = self.crop_size
        if (h, w) == (c, c) and not self.train:
            return pixels
        if h < c or w < c:
            raise ValueError(f"Cached images are {h}x{w}, smaller than the crop {c}; rebuild the cache for this model.")
        if not self.train:
            top, left = (h - c) // 2, (w - c) // 2
            return pixels[:, :, top:top + c, left:left + c]
        tops = torch.randint(0, h - c + 1, (b,)).tolist()
        lefts = torch.randint(0, w - c + 1, (b,)).tolist()
        out = torch.stack([pixels[i, :, t:t + c, l:l + c] for i, (t, l) in enumerate(zip(tops, lefts))])
        flip = torch.rand(b) < 0.5
        out[flip] = out[flip].flip(-1)
        return out

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = self.crop(torch.stack([r["pixels"] for r in rows]))
        pixel_values = (pixels.float() - self.mean) / self.std
        ids = [self._token_ids(r["text"]) for r in rows]
        length = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, seq in enumerate(ids):
            input_ids[i, :len(seq)] = torch.tensor(seq)
            attention_mask[i, :len(seq)] = 1
        keys: dict[str, int] = {}
        groups = torch.tensor([keys.setdefault(r["positive_key"], len(keys)) for r in rows], dtype=torch.long)
        return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask,
                "positive_groups": groups}
