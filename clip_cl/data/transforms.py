"""Image pipeline on torchvision: images stay `uint8` from decoding to the device, where [`normalize_pixels`] turns
them into the model's float input.

Decoding is `torchvision.io.decode_image` (RGB, EXIF orientation applied), with PIL as the fallback for formats
torchvision does not read (BMP, TIFF, ...). Training follows the paper (Ding et al. 2022, after the ImageNet recipe of
the official code: `Resize(256, BICUBIC)`, `RandomCrop(224)`, `RandomHorizontalFlip`): resize the shortest edge to
`round(crop * 256 / 224)`, random crop to the crop size, random horizontal flip, scaled to the model's crop size.
Evaluation is the model's own image processor (`CLIPImageProcessor`'s torchvision backend): resize the shortest edge
to `size["shortest_edge"]` (long edge truncated as transformers does), centre crop. Both run on `uint8` tensors with
`torchvision.transforms.v2.functional`, and collation stacks `uint8` batches (4x fewer bytes than float32 through
the loader, pinning and the host-to-device copy). [`normalize_pixels`] is the one place where pixels become floats:
the trainers, the evaluator and ZSCL's reference images all call it on the device.

Training randomness is keyed by `(seed, epoch, row)`, not drawn from torch's global RNG (see [`KeyedTrainDataset`]).

With `decode_on_device=True` (see [`with_image_transform`]) the loader does not decode JPEGs: rows carry the encoded
bytes ([`EncodedImage`]), collation gathers them ([`EncodedImages`]), and [`pixels_to_device`] decodes the batch with
`torchvision.io.decode_jpeg(..., device=device)` (nvjpeg on CUDA) and applies the same transform there, with the
same keyed generators. Other formats, and JPEGs a device decoder would read differently, are decoded on the host.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvF

__all__ = [
    "CachedRows",
    "CorruptImageError",
    "EncodedImage",
    "EncodedImages",
    "EpochSampler",
    "ImageTransform",
    "KeyedTrainDataset",
    "build_image_transform",
    "collate_classification",
    "collate_pixels",
    "collate_retrieval",
    "decode_rgb",
    "normalize_pixels",
    "pixels_to_device",
    "verify_images",
    "with_image_transform",
]

logger = logging.getLogger(__name__)

# The paper's training resize: 256 px before a 224 px crop, scaled to the model's crop size.
TRAIN_RESIZE_RATIO = 256 / 224

# PIL resampling filters (what image processors store in `resample`) -> torchvision's modes for tensors. Tensors have
# no Lanczos/box/Hamming kernel; bicubic is the closest (as transformers' torchvision backend also falls back).
_INTERPOLATION = {
    0: v2.InterpolationMode.NEAREST,
    1: v2.InterpolationMode.BICUBIC,  # LANCZOS
    2: v2.InterpolationMode.BILINEAR,
    3: v2.InterpolationMode.BICUBIC,
    4: v2.InterpolationMode.BILINEAR,  # BOX
    5: v2.InterpolationMode.BILINEAR,  # HAMMING
}


class CorruptImageError(ValueError):
    """An image of a dataset could not be decoded."""


def _get(size: Any, key: str) -> int | None:
    """Read a field of a processor size (a dict, a transformers `SizeDict`, or a bare int)."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
    return int(value) if value is not None else None


def _pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """A PIL image as `uint8 [3, H, W]` RGB, EXIF orientation applied (Fashion-MNIST is "L", some PNGs are "P"/"RGBA",
    some COCO JPEGs are "CMYK")."""
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return tvF.pil_to_tensor(image)


class ImageTransform:
    """`uint8` image `[C, H, W]` (or a PIL image) -> `uint8 [3, h, w]`, with `torchvision.transforms.v2.functional`.
    Picklable, so it works inside `DataLoader` workers.

    Args:
        crop_size (`tuple[int, int]`): output `(height, width)`.
        resize (`int` or `tuple[int, int]`): an int resizes the shortest edge to it (aspect kept, the long edge
            truncated to an int as transformers' image processors do; never below the crop); a pair resizes to exactly
            `(height, width)`.
        train (`bool`): random crop and horizontal flip if `True` (drawn from the `generator` passed to the call),
            centre crop if `False` (offsets truncated, as `CLIPImageProcessor.center_crop`).
        interpolation (`InterpolationMode`, defaults to bicubic): resize filter, antialiased (CLIP uses bicubic).
    """

    def __init__(self, crop_size: tuple[int, int], resize: int | tuple[int, int], train: bool,
                 interpolation: v2.InterpolationMode = v2.InterpolationMode.BICUBIC):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.resize = resize if isinstance(resize, int) else (int(resize[0]), int(resize[1]))
        self.train = train
        self.interpolation = interpolation

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(train={self.train}, resize={self.resize}, crop_size={self.crop_size}, "
                f"interpolation={self.interpolation.value})")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The `(height, width)` an image of `height x width` is resized to before cropping."""
        if isinstance(self.resize, tuple):
            return self.resize
        # Never below the crop: a crop larger than the image would need padding, which CLIP never saw.
        short = max(self.resize, *self.crop_size)
        # int() truncation as transformers' `get_resize_output_image_size`, so evaluation matches the image processor.
        return (short, int(short * width / height)) if height <= width else (int(short * height / width), short)

    def cache_key(self) -> dict:
        """What [`prepare`] depends on (names an [`ImageCache`] entry)."""
        return {"resize": self.resize, "crop_size": self.crop_size, "train": self.train,
                "interpolation": self.interpolation.value, "antialias": True}

    def prepare(self, image: torch.Tensor | Image.Image) -> torch.Tensor:
        """The deterministic part: RGB, resize, and for evaluation the centre crop (what an [`ImageCache`] stores)."""
        if isinstance(image, Image.Image):
            image = _pil_to_uint8(image)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        height, width = image.shape[-2:]
        size = self.output_size(height, width)
        if size != (height, width):
            image = tvF.resize(image, list(size), interpolation=self.interpolation, antialias=True)
            height, width = size
        if not self.train:
            ch, cw = self.crop_size
            image = tvF.crop(image, int((height - ch) / 2.0), int((width - cw) / 2.0), ch, cw)
        return image.contiguous()

    def finish(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The random part, on a [`prepare`]d image: random crop and horizontal flip when training, else nothing."""
        if not self.train:
            return image
        height, width = image.shape[-2:]
        ch, cw = self.crop_size
        top = int(torch.randint(0, max(height - ch, 0) + 1, (1,), generator=generator))
        left = int(torch.randint(0, max(width - cw, 0) + 1, (1,), generator=generator))
        image = tvF.crop(image, top, left, ch, cw)
        if bool(torch.rand((), generator=generator) < 0.5):
            image = tvF.horizontal_flip(image)
        return image.contiguous()

    def __call__(self, image: torch.Tensor | Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.finish(self.prepare(image), generator)


def build_image_transform(image_processor, train: bool) -> ImageTransform:
    """The training or evaluation transform for a model, sized from its image processor.

    Args:
        image_processor: the model's image processor (`processor.image_processor`); reads `crop_size`
            (`{height, width}`), `size` (`{shortest_edge}`, or `{height, width}`) and `resample`.
        train (`bool`): training transform (resize to `round(crop * 256 / 224)`, random crop, random horizontal flip)
            or evaluation transform (resize to `size["shortest_edge"]`, centre crop).

    Returns:
        `ImageTransform`: a callable `uint8 [C, H, W] -> uint8 [3, h, w]`; normalise on the device with
        [`normalize_pixels`].
    """
    size = getattr(image_processor, "size", None)
    crop = getattr(image_processor, "crop_size", None)
    if not getattr(image_processor, "do_center_crop", True) or _get(crop, "height") is None:
        crop = size  # processors that resize to a fixed (height, width) and do not crop
    crop_hw = (_get(crop, "height"), _get(crop, "width"))
    shortest = _get(size, "shortest_edge")
    budget, patch = getattr(image_processor, "max_num_patches", None), getattr(image_processor, "patch_size", None)
    if None in crop_hw and shortest is None and budget and patch:
        # Patch-budget (NaFlex) processors have no fixed size: crop the largest square that fits the budget; the
        # model's adapter turns it into patches (clip_cl.adapters).
        crop_hw = (math.isqrt(int(budget)) * int(patch),) * 2
        shortest = crop_hw[0]
    if None in crop_hw:
        if shortest is None:
            raise ValueError(f"Cannot read the image size from {type(image_processor).__name__}: it has neither "
                             f"crop_size {{height, width}} nor size {{shortest_edge}} (size={size}, crop_size={crop}).")
        crop_hw = (shortest, shortest)
    resample = getattr(image_processor, "resample", None)
    interpolation = (resample if isinstance(resample, v2.InterpolationMode)
                     else _INTERPOLATION.get(int(resample), v2.InterpolationMode.BICUBIC) if resample is not None
                     else v2.InterpolationMode.BICUBIC)
    if train:
        resize: int | tuple[int, int] = round(max(crop_hw) * TRAIN_RESIZE_RATIO)
    elif shortest is not None:
        resize = shortest
    else:
        resize = (_get(size, "height"), _get(size, "width"))
    return ImageTransform(crop_hw, resize, train=train, interpolation=interpolation)


# --------------------------------------------------------------------------------------------------------------------
# On the device: uint8 -> the model's float input


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...], scale: float, device: str
              ) -> tuple[torch.Tensor, torch.Tensor]:
    # The same float32 arithmetic as transformers' fused rescale-and-normalise, so evaluation pixels equal the image
    # processor's bit for bit: (x - mean / scale) / (std / scale).
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device) * (1.0 / scale)
    std_t = torch.tensor(std, dtype=torch.float32, device=device) * (1.0 / scale)
    return mean_t.view(-1, 1, 1), std_t.view(-1, 1, 1)


def normalize_pixels(pixel_values: torch.Tensor, image_processor=None, *, dtype: torch.dtype | None = None
                     ) -> torch.Tensor:
    """The model's float input from `uint8` pixels, computed where `pixel_values` lies (the training or evaluation
    device). This is the one place where pixels become floats: the trainers, the evaluator and ZSCL's reference
    images call it.

    Args:
        pixel_values (`Tensor`): `uint8 [..., 3, H, W]` from [`with_image_transform`]; a floating-point tensor is
            taken as already normalised and only cast to `dtype`.
        image_processor: the model's image processor; reads `image_mean`, `image_std` (default 0.5) and
            `rescale_factor` (default 1/255).
        dtype (`torch.dtype`, *optional*): the result's dtype (defaults to float32; the model's dtype under bf16).

    Returns:
        `Tensor`: `(pixel_values * rescale_factor - mean) / std` as `dtype`, on `pixel_values`' device.
    """
    if pixel_values.is_floating_point():
        return pixel_values if dtype is None else pixel_values.to(dtype)
    if image_processor is None:
        raise ValueError("normalize_pixels got uint8 pixels but no image processor: pass the model's image processor "
                         "(processor.image_processor), whose image_mean / image_std normalise them.")
    mean = tuple(float(m) for m in (getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)))
    std = tuple(float(s) for s in (getattr(image_processor, "image_std", None) or (0.5, 0.5, 0.5)))
    scale = float(getattr(image_processor, "rescale_factor", None) or 1 / 255)
    mean_t, std_t = _mean_std(mean, std, scale, str(pixel_values.device))
    out = (pixel_values.to(torch.float32) - mean_t) / std_t
    return out if dtype is None or dtype == torch.float32 else out.to(dtype)


class EncodedImages:
    """A batch whose JPEGs are still encoded (rows of `with_image_transform(..., decode_on_device=True)`, collated by
    [`collate_pixels`]); [`pixels_to_device`] decodes it on the training / evaluation device.

    It is deliberately neither a tensor nor a sequence and has no `.to()`: `accelerate` and the Trainer move what they
    recognise to the device, and the encoded bytes must stay on the host (`decode_jpeg` reads them from CPU memory).

    Args:
        pixels (`Sequence`): per row, an [`EncodedImage`] or the row's already transformed `uint8 [3, H, W]` (images
            decoded on the host: PNGs, CMYK or EXIF-rotated JPEGs).
    """

    def __init__(self, pixels: Sequence[torch.Tensor | EncodedImage]):
        encoded = [p for p in pixels if isinstance(p, EncodedImage)]
        host = [p for p in pixels if not isinstance(p, EncodedImage)]
        self.is_encoded = [isinstance(p, EncodedImage) for p in pixels]
        # One buffer for all JPEGs of the batch (one shared-memory segment out of a loader worker), cut by offsets.
        joined = b"".join(e.data for e in encoded)
        self.data = (torch.frombuffer(bytearray(joined), dtype=torch.uint8) if joined
                     else torch.empty(0, dtype=torch.uint8))
        self.offsets = np.cumsum([0] + [len(e.data) for e in encoded]).tolist()
        self.transforms = [e.transform for e in encoded]
        self.keys = [e.key for e in encoded]
        self.sources = [(e.dataset_name, e.path) for e in encoded]
        self.host = torch.stack(host) if host else None

    def __len__(self) -> int:
        return len(self.is_encoded)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(rows={len(self)}, encoded={len(self.keys)}, "
                f"encoded_bytes={self.data.numel()})")

    def pin_memory(self, device=None) -> EncodedImages:
        """Called by the `DataLoader`'s pinning thread: pins the byte buffer and the host-decoded rows in place."""
        self.data = self.data.pin_memory()
        if self.host is not None:
            self.host = self.host.pin_memory()
        return self

    def decode(self, device: torch.device | str) -> torch.Tensor:
        """`uint8 [B, 3, H, W]` on `device`, rows in batch order: the JPEGs decoded there in one batched call
        (`torchvision.io.decode_jpeg`, nvjpeg on CUDA) and transformed there; the host-decoded rows copied there."""
        device = torch.device(device)
        chunks = [self.data[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]
        decoded = _decode_jpegs(chunks, device, self.sources) if chunks else []
        host = iter(self.host.to(device, non_blocking=True)) if self.host is not None else iter(())
        out, j = [], 0
        for encoded in self.is_encoded:
            if not encoded:
                out.append(next(host))
                continue
            transform = self.transforms[j]
            # The crop and flip come from the row's keyed CPU generator: the same integers as on the host.
            out.append(transform.finish(transform.prepare(decoded[j]), _generator(self.keys[j])))
            j += 1
        return torch.stack(out)


_decode_fallback_warned = False


def _decode_jpegs(chunks: list[torch.Tensor], device: torch.device,
                  sources: list[tuple[str | None, str | None]]) -> list[torch.Tensor]:
    """Decode JPEGs on `device` in one batched call. One image the device decoder rejects fails the whole call, so
    then each is decoded alone, and those it still rejects go through the host decoder ([`decode_rgb`]: what the
    default path would have given; a truly corrupt image raises [`CorruptImageError`] naming the dataset and file)."""
    try:
        return decode_jpeg(chunks, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as err:
        global _decode_fallback_warned
        # Said once: if the device decoder rejects every batch (e.g. torchvision built without nvjpeg), decoding
        # silently degrades to one-by-one and host decoding, and the user should know why it is slow.
        if not _decode_fallback_warned:
            _decode_fallback_warned = True
            logger.warning("decode_jpeg on %s rejected a batch of %d JPEGs (%s); decoding them one by one, and on the "
                           "host where the device cannot. Said once per process.", device, len(chunks),
                           str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
    out = []
    for chunk, (name, path) in zip(chunks, sources):
        try:
            out.append(decode_jpeg(chunk, mode=ImageReadMode.RGB, device=device))
            continue
        except RuntimeError:
            pass
        value = {"bytes": chunk.numpy().tobytes(), "path": path}
        try:
            out.append(decode_rgb(value).to(device))
        except Exception as err:  # PIL raises many types
            raise CorruptImageError(_corrupt_message(name, None, value, err)) from err
    return out


def pixels_to_device(pixel_values: torch.Tensor | EncodedImages, device: torch.device | str,
                     non_blocking: bool = True) -> torch.Tensor:
    """A batch's pixels on `device`: a tensor is copied there, an [`EncodedImages`] batch is decoded and transformed
    there. The trainers and the evaluator call it before [`normalize_pixels`].

    Args:
        pixel_values (`Tensor` or [`EncodedImages`]): a collated batch's `pixel_values`.
        device (`torch.device` or `str`): the training / evaluation device.
        non_blocking (`bool`, defaults to `True`): asynchronous copy of a (pinned) tensor.

    Returns:
        `Tensor`: `[B, 3, H, W]` on `device` (`uint8`, or the float pixels that were passed).
    """
    if isinstance(pixel_values, EncodedImages):
        return pixel_values.decode(device)
    return pixel_values.to(device, non_blocking=non_blocking)


# --------------------------------------------------------------------------------------------------------------------
# Decoding with errors that point at the row


def _undecoded(dataset: datasets.Dataset, image_column: str) -> datasets.Dataset:
    """The dataset with its image column left as `{"bytes", "path"}`, so decoding happens (and fails) in our code."""
    feature = dataset.features.get(image_column)
    if not isinstance(feature, datasets.Image):
        raise ValueError(f"Column {image_column!r} is {feature}, not a datasets.Image; available columns: "
                         f"{dataset.column_names}.")
    if not feature.decode:
        return dataset
    return dataset.cast_column(image_column, datasets.Image(mode=feature.mode, decode=False))


def _find_row(raw: datasets.Dataset, image_column: str, value: Mapping[str, Any]) -> int | None:
    """Index of the first row whose stored image equals `value` (only called on the error path: a linear scan)."""
    needle_bytes, needle_path = value.get("bytes"), value.get("path")
    start = 0
    for batch in raw.select_columns([image_column]).with_format("arrow").iter(batch_size=4096):
        column = batch.column(0).combine_chunks()
        if needle_bytes is not None:
            hits = pc.equal(column.field("bytes"), pa.scalar(needle_bytes, column.type.field("bytes").type))
        else:
            hits = pc.equal(column.field("path"), pa.scalar(needle_path, column.type.field("path").type))
        found = pc.index(hits, True).as_py()
        if found >= 0:
            return start + found
        start += len(column)
    return None


def _corrupt_message(name: str | None, index: int | None, value: Mapping[str, Any], err: Exception) -> str:
    where = f"row {index}" if index is not None else "a row"
    path = value.get("path") if isinstance(value, Mapping) else None
    return (f"Could not read the image at {where} of dataset {name or '<unnamed>'!r}"
            f"{f' (image path {path!r})' if path else ''}: {type(err).__name__}: {err}. Fix: replace or delete that "
            "image (or row) in the source data, or drop unreadable rows before training with "
            "`dataset, n_dropped = clip_cl.data.verify_images(dataset, skip_corrupt=True)`.")


def decode_rgb(value: Any) -> torch.Tensor:
    """Decode a stored image (`{"bytes", "path"}` as `datasets.Image(decode=False)` holds it) to `uint8 [3, H, W]` RGB.

    `torchvision.io.decode_image` (libjpeg-turbo, libpng, libwebp) reads JPEG, PNG, GIF and WebP with the EXIF
    orientation applied; anything else (BMP, TIFF, ...), and anything it rejects, goes through `datasets`' PIL decoder,
    which resolves relative and hf:// paths and forces the pixels to load, so a corrupt or truncated file raises.

    Args:
        value (`dict`): `{"bytes": bytes | None, "path": str | None}`.

    Returns:
        `torch.Tensor`: `uint8 [3, H, W]`.
    """
    if value is None:
        raise ValueError("the image is missing (None)")
    data = _stored_bytes(value)
    if data:
        try:
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                apply_exif_orientation=True)
        except RuntimeError:
            pass  # not a format torchvision reads, or corrupt: PIL decides below (and raises if it cannot read it)
    return _pil_to_uint8(datasets.Image().decode_example(value))


def _stored_bytes(value: Any) -> bytes | None:
    """The encoded bytes of a stored image: its `bytes`, else the file at its local `path`; `None` for anything else
    (a missing value, a remote or relative path, which `datasets`' decoder resolves)."""
    if not isinstance(value, Mapping):
        return None
    data, path = value.get("bytes"), value.get("path")
    if data is None and path and os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    return data or None


# JPEG files start with SOI (FF D8) followed by a marker (FF xx); EXIF's orientation tag.
_JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112


def _device_decodable(data: bytes) -> bool:
    """Whether `decode_jpeg(data, mode=RGB, device=...)` gives what [`decode_rgb`] gives on the host: a JPEG (by its
    magic bytes) in RGB or grayscale, without an EXIF rotation. EXIF orientation is applied by the host decoder only
    (`apply_exif_orientation` is CPU-only in torchvision and nvjpeg ignores EXIF), and CMYK/YCCK JPEGs need a colour
    conversion nvjpeg does not make, so those stay on the host. Reads the header only (PIL parses markers up to the
    scan), not the pixels."""
    if not data.startswith(_JPEG_MAGIC):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.mode in ("RGB", "L") and image.getexif().get(_EXIF_ORIENTATION, 1) == 1
    except Exception:  # an unreadable header: the host decoder reads it or reports it with its row
        return False


def _generator(key: tuple[int, ...] | None) -> torch.Generator | None:
    return _keyed_generator(*key) if key is not None else None


@dataclass(frozen=True)
class EncodedImage:
    """A row's JPEG left encoded, for decoding on the training / evaluation device (`decode_on_device=True`).

    Attributes:
        data (`bytes`): the encoded JPEG (plain bytes, so a loader worker sends one buffer per batch after
            [`collate_pixels`], not one shared-memory tensor per image).
        transform ([`ImageTransform`]): the row's transform, applied after decoding.
        key (`tuple[int, ...]`, *optional*): `(seed, epoch, row)` of the row's training augmentation; the device side
            draws the crop and flip from the same keyed CPU generator as host decoding would. `None` for evaluation.
        dataset_name (`str`, *optional*) / path (`str`, *optional*): named if the image turns out to be corrupt.
    """

    data: bytes
    transform: ImageTransform
    key: tuple[int, ...] | None = None
    dataset_name: str | None = None
    path: str | None = None


class _RowTransform:
    """The batch transform installed by [`with_image_transform`] (a class rather than a closure, to be picklable)."""

    def __init__(self, raw: datasets.Dataset, image_transform: Callable, image_column: str, label_column: str | None,
                 captions_column: str | None, dataset_name: str | None, decode_on_device: bool = False):
        self.raw = raw  # kept only to locate a corrupt image's row for the error message
        self.image_transform = image_transform
        self.image_column = image_column
        self.label_column = label_column
        self.captions_column = captions_column
        self.dataset_name = dataset_name
        self.decode_on_device = decode_on_device

    def decode(self, value: Any) -> torch.Tensor:
        """`uint8 [3, H, W]` of a stored image, or a [`CorruptImageError`] naming the dataset, the row and the path."""
        try:
            return decode_rgb(value)
        except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
            index = _find_row(self.raw, self.image_column, value) if isinstance(value, Mapping) else None
            raise CorruptImageError(_corrupt_message(self.dataset_name, index, value or {}, err)) from err

    def pixels(self, value: Any, key: tuple[int, ...] | None = None) -> torch.Tensor | EncodedImage:
        """A row's transformed `uint8` pixels, or its [`EncodedImage`] when it is left for the device to decode."""
        if self.decode_on_device:
            data = _stored_bytes(value)
            if data is not None and _device_decodable(data):
                return EncodedImage(data, self.image_transform, key, self.dataset_name, value.get("path"))
        return self.image_transform(self.decode(value), _generator(key))

    def __call__(self, batch: dict[str, list], keys: Sequence[tuple[int, ...]] | None = None,
                 prepared: Sequence[torch.Tensor] | None = None) -> dict[str, list]:
        """Rows of `batch`. `keys` are the rows' `(seed, epoch, row)` augmentation keys (training); `prepared` (from
        an [`ImageCache`]) replaces decoding and the deterministic resize."""
        values = batch[self.image_column] if prepared is None else prepared
        keys = keys if keys is not None else [None] * len(values)
        if prepared is None:
            pixels = [self.pixels(v, k) for v, k in zip(values, keys)]
        else:
            pixels = [self.image_transform.finish(p, _generator(k)) for p, k in zip(prepared, keys)]
        out: dict[str, list] = {"pixel_values": pixels}
        if self.label_column is not None:
            out["labels"] = [int(v) for v in batch[self.label_column]]
        if self.captions_column is not None:
            out["captions"] = [[c] if isinstance(c, str) else list(c) for c in batch[self.captions_column]]
        return out


# --------------------------------------------------------------------------------------------------------------------
# Training randomness keyed by (seed, epoch, row)
#
# Why keys and not the global RNG: a lazy transform that draws from torch's global RNG gives each sample whatever
# state that RNG happens to be in, which depends on the process's history. On a mid-epoch resume, transformers'
# Trainer restores the checkpoint's RNG state only *after* it has fetched the first batch following the skipped ones,
# so that batch (and, through the shifted stream, every later one) got different crops and flips than in the
# uninterrupted run. With several loader workers the draws also depend on which worker read which sample.
#
# Why the key travels through the sampler: `datasets.Dataset.with_transform` never sees a row's index or the epoch,
# and an epoch stored on the dataset (`set_epoch`) does not reach DataLoader workers, which hold their own copy of the
# dataset (persistent workers keep the copy from the first epoch). The sampler runs in the main process, and the
# Trainer (and accelerate's `skip_first_batches` on resume) calls its `set_epoch` before every epoch; so it yields
# `epoch * len(dataset) + row`, a plain int that passes unchanged through accelerate's batch samplers, shards and
# skips, and through worker queues, and the dataset decodes `(epoch, row)` from it. Each sample's crop and flip then
# come from a generator seeded by `(seed, epoch, row)`: the same in a resumed run, with any number of workers.


def _keyed_generator(*key: int) -> torch.Generator:
    """A torch generator seeded from a tuple of non-negative ints, mixed by numpy's `SeedSequence` (nearby keys give
    unrelated streams). Keys: `(seed, epoch, row)` for a sample's augmentation, `(seed, epoch)` for an epoch's order."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class EpochSampler(torch.utils.data.Sampler):
    """Yields the keys `epoch * num_rows + row` of one epoch, rows shuffled by `(seed, epoch)`, for a
    [`KeyedTrainDataset`]. The Trainer calls [`set_epoch`] before each epoch (also when it resumes mid-epoch).

    Args:
        num_rows (`int`): rows of the dataset.
        seed (`int`): seed of the row order (the Trainer's `data_seed`, else `seed`).
        shuffle (`bool`, defaults to `True`): shuffle the rows every epoch.
    """

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True):
        self.num_rows, self.seed, self.shuffle = int(num_rows), int(seed), shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.num_rows, generator=_keyed_generator(self.seed, self.epoch))
        else:
            order = torch.arange(self.num_rows)
        return iter((order + self.epoch * self.num_rows).tolist())


class _Rows(torch.utils.data.Dataset):
    """Rows of `rows` through `row_transform`, read a batch at a time; images come from `cache` when given."""

    def __init__(self, rows: datasets.Dataset, row_transform: _RowTransform, cache=None):
        self.rows, self.row_transform, self.cache = rows, row_transform, cache
        # With a cache the image column is never read (nor its bytes copied out of Arrow).
        meta = [c for c in rows.column_names if c != row_transform.image_column]
        self._meta = rows.select_columns(meta) if cache is not None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, rows: list[int], keys=None) -> list[dict[str, Any]]:
        batch = self._meta[rows]  # one Arrow read for the whole batch
        prepared = [self.cache[r] for r in rows] if self.cache is not None else None
        out = self.row_transform(batch, keys, prepared)
        return [dict(zip(out, values)) for values in zip(*out.values())]


class CachedRows(_Rows):
    """Evaluation rows whose decoded, centre-cropped images come from an [`ImageCache`] (see `image_cache_dir`)."""

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return self._read([int(i) for i in indices])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._read([int(index)])[0]


class KeyedTrainDataset(_Rows):
    """Training rows whose random augmentation is a function of `(seed, epoch, row)` only (see the comment above).

    Index it with a key `epoch * len(self) + row` (what [`EpochSampler`] yields); a plain row index reads epoch 0.
    [`clip_cl.CLIPCLTrainer`] samples it with [`epoch_sampler`] automatically.

    Args:
        rows (`datasets.Dataset`): the split with its image column undecoded, restricted to the columns used.
        row_transform: the batch transform (decoding, augmentation with a per-sample generator, labels).
        seed (`int`): seed of the augmentation.
        cache ([`ImageCache`], *optional*): decoded, resized images of `rows` (the crops and flips stay per sample).
    """

    def __init__(self, rows: datasets.Dataset, row_transform: _RowTransform, seed: int, cache=None):
        super().__init__(rows, row_transform, cache)
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_rows={len(self)}, seed={self.seed}, transform={self.row_transform.image_transform})"

    def epoch_sampler(self, seed: int, shuffle: bool = True) -> EpochSampler:
        """The sampler that feeds this dataset its keys (rows shuffled by `(seed, epoch)`)."""
        return EpochSampler(len(self), seed, shuffle)

    def __getitems__(self, keys: Sequence[int]) -> list[dict[str, Any]]:
        n = len(self)
        pairs = [divmod(int(k), n) for k in keys]
        if any(epoch < 0 for epoch, _ in pairs):
            raise IndexError(f"Negative keys {[k for k in keys if int(k) < 0]} for a dataset of {n} rows.")
        return self._read([row for _, row in pairs], [(self.seed, e, r) for e, r in pairs])

    def __getitem__(self, key: int) -> dict[str, Any]:
        return self.__getitems__([key])[0]


def with_image_transform(dataset: datasets.Dataset, image_processor, *, train: bool, image_column: str = "image",
                         label_column: str | None = None, captions_column: str | None = None,
                         dataset_name: str | None = None, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                         decode_on_device: bool = False) -> datasets.Dataset | KeyedTrainDataset | CachedRows:
    """A view of `dataset` whose rows are model inputs, transformed lazily (`dataset.with_transform`) as they are read.

    Args:
        dataset (`datasets.Dataset`): the split, with a `datasets.Image` column.
        image_processor: the model's image processor, read by [`build_image_transform`].
        train (`bool`): training (random) or evaluation (deterministic) transform.
        image_column (`str`, defaults to `"image"`): the image column.
        label_column (`str`, *optional*): for classification: rows get `"labels"` (an `int`).
        captions_column (`str`, *optional*): for retrieval: rows get `"captions"` (a `list[str]`).
        dataset_name (`str`, *optional*): named in the error raised for an unreadable image.
        seed (`int`, defaults to 0): seed of the training augmentation (ignored when `train=False`).
        cache_dir (`str`, *optional*): a folder for a `uint8` cache of the decoded, resized images
            ([`ImageCache`], built on first use over the whole underlying table and shared by every selection of it);
            `None` (default) decodes every time. Results are identical either way.
        decode_on_device (`bool`, defaults to `False`): leave JPEGs encoded ([`EncodedImage`] rows) and decode them
            where [`pixels_to_device`] sends the batch (`torchvision.io.decode_jpeg`, nvjpeg on CUDA), then apply the
            same transform there with the same keyed generators. Other formats, CMYK JPEGs and JPEGs with an EXIF
            rotation are decoded on the host as usual. On CPU the pixels are bit-identical to the default; on CUDA,
            nvjpeg and the float resize may differ from the host's by a few levels. Cannot be combined with
            `cache_dir` (the cache already stores decoded images).

    Returns:
        `datasets.Dataset` (evaluation) or [`KeyedTrainDataset`] (training: crops and flips keyed by seed, epoch and
        row, so a resumed run or another number of loader workers draws the same ones): rows
        `{"pixel_values": uint8 Tensor[3, H, W], "labels": int}` or
        `{"pixel_values", "captions": list[str]}` ([`CachedRows`] when evaluating from a cache). An unreadable image raises [`CorruptImageError`] naming the
        dataset, the row and the image path. Batch rows with [`collate_classification`] / [`collate_retrieval`].
    """
    if decode_on_device and cache_dir is not None:
        raise ValueError("decode_on_device and cache_dir cannot be combined: the image cache already stores decoded, "
                         "resized images. Use one of them (decode_on_device=False, or cache_dir=None).")
    for column in (image_column, label_column, captions_column):
        if column is not None and column not in dataset.column_names:
            raise ValueError(f"Column {column!r} not found in dataset {dataset_name or '<unnamed>'!r}; available "
                             f"columns: {dataset.column_names}.")
    raw = _undecoded(dataset, image_column)
    transform = _RowTransform(raw, build_image_transform(image_processor, train), image_column, label_column,
                              captions_column, dataset_name, decode_on_device)
    columns = [c for c in (image_column, label_column, captions_column) if c is not None]
    cache = None
    if cache_dir is not None:
        from .cache import ImageCache

        cache = ImageCache.for_dataset(raw, image_column, transform.image_transform, cache_dir, transform.decode,
                                       dataset_name)
    if train:
        return KeyedTrainDataset(raw.select_columns(columns), transform, seed, cache)
    if cache is not None:
        return CachedRows(raw.select_columns(columns), transform, cache)
    return raw.with_transform(transform, columns=columns)


def verify_images(dataset: datasets.Dataset, *, image_column: str = "image", dataset_name: str | None = None,
                  skip_corrupt: bool = False, batch_size: int = 256) -> tuple[datasets.Dataset, int]:
    """Decode every image once, and either fail on the first unreadable one or drop all unreadable rows.

    This is a full pass over the images (seconds for thousands of small images, longer for big sets): run it once
    on data of unknown quality rather than on every epoch.

    Args:
        dataset (`datasets.Dataset`): the split.
        image_column (`str`, defaults to `"image"`): the image column.
        dataset_name (`str`, *optional*): named in errors and in the log line.
        skip_corrupt (`bool`, defaults to `False`): drop unreadable rows instead of raising [`CorruptImageError`].
        batch_size (`int`, defaults to 256): rows read at a time.

    Returns:
        `tuple[datasets.Dataset, int]`: the dataset without the unreadable rows (unchanged if none), and how many rows
        were dropped (report it with the results).
    """
    raw = _undecoded(dataset, image_column)
    bad: list[int] = []
    start = 0
    for batch in raw.select_columns([image_column]).iter(batch_size=batch_size):
        for offset, value in enumerate(batch[image_column]):
            try:
                decode_rgb(value)
            except Exception as err:  # PIL raises many types; every one means "cannot train on this row"
                if not skip_corrupt:
                    raise CorruptImageError(_corrupt_message(dataset_name, start + offset, value or {}, err)) from err
                bad.append(start + offset)
        start += len(batch[image_column])
    if not bad:
        return dataset, 0
    logger.warning("Dropped %d unreadable image(s) from dataset %r (rows %s%s).", len(bad), dataset_name or "<unnamed>",
                   bad[:10], ", ..." if len(bad) > 10 else "")
    keep = np.setdiff1d(np.arange(len(dataset)), np.asarray(bad))
    return dataset.select(keep), len(bad)


# --------------------------------------------------------------------------------------------------------------------
# Collation


def collate_pixels(pixels: Sequence[torch.Tensor | EncodedImage]) -> torch.Tensor | EncodedImages:
    """Batch the `pixel_values` of rows: a stacked `uint8 [B, 3, H, W]` tensor, or [`EncodedImages`] when some rows
    left their JPEG encoded (`decode_on_device=True`); [`pixels_to_device`] takes either.

    Args:
        pixels (`Sequence`): the rows' `pixel_values` (tensors and/or [`EncodedImage`]s).

    Returns:
        `torch.Tensor` or [`EncodedImages`].
    """
    if any(isinstance(p, EncodedImage) for p in pixels):
        return EncodedImages(pixels)
    return torch.stack(list(pixels))


def _stack_pixels(rows: Sequence[Mapping[str, Any]]) -> torch.Tensor | EncodedImages:
    if not rows:
        raise ValueError("Cannot collate an empty batch.")
    if "pixel_values" not in rows[0]:
        raise KeyError(f"Rows have no 'pixel_values' (keys: {sorted(rows[0])}); build the dataset with "
                       "with_image_transform.")
    return collate_pixels([row["pixel_values"] for row in rows])


def collate_classification(rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch classification rows.

    Args:
        rows (`Sequence[dict]`): rows of [`with_image_transform`] with `label_column` set.

    Returns:
        `dict`: `{"pixel_values": uint8 Tensor[B, 3, H, W], "labels": LongTensor[B]}` (normalise on the device with
        [`normalize_pixels`]; `CLIPCLTrainer` and the evaluator do). With `decode_on_device`, `pixel_values` is an
        [`EncodedImages`] that [`pixels_to_device`] decodes.
    """
    pixels = _stack_pixels(rows)
    if "labels" not in rows[0]:
        raise KeyError("Rows have no 'labels'; pass label_column to with_image_transform.")
    return {"pixel_values": pixels, "labels": torch.tensor([int(row["labels"]) for row in rows], dtype=torch.long)}


def collate_retrieval(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch retrieval rows.

    Args:
        rows (`Sequence[dict]`): rows of [`with_image_transform`] with `captions_column` set.

    Returns:
        `dict`: `{"pixel_values": uint8 Tensor[B, 3, H, W], "captions": list[list[str]]}` (captions per image, in row
        order; images may have different numbers of captions). With `decode_on_device`, `pixel_values` is an
        [`EncodedImages`] that [`pixels_to_device`] decodes.
    """
    pixels = _stack_pixels(rows)
    if "captions" not in rows[0]:
        raise KeyError("Rows have no 'captions'; pass captions_column to with_image_transform.")
    return {"pixel_values": pixels, "captions": [list(row["captions"]) for row in rows]}
