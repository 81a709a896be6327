"""A `uint8` cache of decoded, resized images, so that small and medium runs decode each JPEG once, not every epoch.

What is cached is the deterministic part of a transform ([`ImageTransform.prepare`]): for evaluation the final
centre crop, for training the resized image (the random crop and flip still happen per sample, keyed as before), so
results are bit-identical with and without the cache. One file pair per (image column content, transform) lives in
`cache_dir`: `<key>.u8` (all images back to back, memory-mapped: the OS page cache holds what fits in memory, and
DataLoader workers share it) and `<key>.idx.npy` (offset, height, width per row). The key is a SHA-1 of the image
column's Arrow buffers of the *whole underlying table* and of the transform's geometry, so the sessions of a protocol
(row selections of one table), its evaluations, later runs and several processes all find the same file; files are
written to a temporary name and renamed, so a killed build leaves nothing half-written behind.

Default: off (`image_cache_dir: null`). Turn it on where the resized images fit on disk: about
`rows x 3 x short_edge^2 x aspect` bytes (400 Fashion-MNIST rows at 37 px: 1.6 MB; 600k COCO object crops at 256 px:
about 120 GB, which is where the cache stops paying).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import datasets
import numpy as np
import torch

__all__ = ["ImageCache"]

logger = logging.getLogger(__name__)

_VERSION = 1  # bump when the layout or the decoding changes


def _base_rows(dataset: datasets.Dataset) -> np.ndarray:
    """Row numbers of `dataset`'s rows in its underlying Arrow table (a `select` keeps the table, adds an index)."""
    indices = getattr(dataset, "_indices", None)
    if indices is None:
        return np.arange(len(dataset))
    return indices.column(0).to_numpy()


def _table_checksum(dataset: datasets.Dataset, image_column: str) -> str:
    """SHA-1 of the image column of the whole underlying table (its Arrow buffers: bytes and paths)."""
    table = dataset._data.table  # noqa: SLF001 - the underlying table, shared by every selection of it
    digest = hashlib.sha1()
    digest.update(str(table.num_rows).encode())
    for chunk in table.column(image_column).chunks:
        for child in chunk.flatten():  # struct<bytes, path>
            for buf in child.buffers():
                if buf is not None:
                    digest.update(memoryview(buf))
    return digest.hexdigest()


class ImageCache:
    """Decoded, resized `uint8` images of one table for one transform, memory-mapped from `cache_dir`.

    Build or open with [`ImageCache.for_dataset`]; read row `i` of the dataset given there with `cache[i]`.
    Picklable (it pickles its paths, and reopens the memory map in DataLoader workers).

    Args:
        data_path (`str`): the `.u8` file.
        index_path (`str`): the `.idx.npy` file (`int64 [rows, 3]`: offset, height, width).
        rows (`np.ndarray`): for each row of the dataset, its row in the underlying table.
    """

    def __init__(self, data_path: str, index_path: str, rows: np.ndarray):
        self.data_path, self.index_path, self.rows = data_path, index_path, rows
        self._data: np.memmap | None = None
        self._index: np.ndarray | None = None

    def __getstate__(self):
        return {"data_path": self.data_path, "index_path": self.index_path, "rows": self.rows}

    def __setstate__(self, state):
        self.__init__(**state)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return os.path.getsize(self.data_path)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._data is None:
            self._index = np.load(self.index_path)
            self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r") if self.nbytes else np.zeros(0, np.uint8)
        offset, h, w = (int(v) for v in self._index[self.rows[i]])
        if h == 0:
            raise ValueError(f"Row {i} could not be decoded when the cache {self.data_path} was built; drop unreadable "
                             "rows first (clip_cl.data.verify_images(dataset, skip_corrupt=True), or "
                             "--skip_corrupt_images true).")
        return torch.from_numpy(np.array(self._data[offset:offset + 3 * h * w]).reshape(3, h, w))

    @classmethod
    def for_dataset(cls, raw: datasets.Dataset, image_column: str, transform, cache_dir: str | os.PathLike,
                    decode, dataset_name: str | None = None) -> ImageCache:
        """Open the cache of `raw`'s table for `transform`, building it first (one pass over the whole table) if absent.

        Args:
            raw (`datasets.Dataset`): the rows to read, with the image column undecoded (`{"bytes", "path"}`).
            image_column (`str`): the image column.
            transform ([`ImageTransform`]): its `prepare` is what is cached; `cache_key()` names the geometry.
            cache_dir (`str` or `os.PathLike`): the folder of cache files (created if needed).
            decode (`Callable`): `value -> uint8 [3, H, W]`; a row it cannot read is stored empty and raises when read.
            dataset_name (`str`, *optional*): for the log line.

        Returns:
            [`ImageCache`]: `cache[i]` is `transform.prepare(decode(raw[i][image_column]))`.
        """
        key = hashlib.sha1(json.dumps([_VERSION, _table_checksum(raw, image_column), transform.cache_key()])
                           .encode()).hexdigest()[:24]
        folder = Path(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        data_path, index_path = folder / f"{key}.u8", folder / f"{key}.idx.npy"
        if not (data_path.exists() and index_path.exists()):
            cls._build(raw, image_column, transform, decode, data_path, index_path, dataset_name)
        return cls(str(data_path), str(index_path), _base_rows(raw))

    @staticmethod
    def _build(raw, image_column, transform, decode, data_path: Path, index_path: Path, dataset_name) -> None:
        table = raw._data.table  # noqa: SLF001 - every row of the table, so that every selection of it can share
        index = np.zeros((table.num_rows, 3), dtype=np.int64)
        offset = 0
        fd, tmp_data = tempfile.mkstemp(dir=data_path.parent, prefix=".tmp-", suffix=".u8")
        try:
            with os.fdopen(fd, "wb") as out:
                row = 0
                for batch in table.select([image_column]).to_batches(max_chunksize=256):
                    for value in batch.column(0).to_pylist():  # {"bytes", "path"}: the stored, undecoded image
                        try:
                            pixels = transform.prepare(decode(value)).contiguous()
                        except Exception:  # noqa: BLE001 - an unreadable row (rows dropped by verify_images stay in the table)
                            pixels = torch.zeros((3, 0, 0), dtype=torch.uint8)
                        _, h, w = pixels.shape
                        index[row] = (offset, h, w)
                        out.write(pixels.numpy().tobytes())
                        offset += pixels.numel()
                        row += 1
            tmp_index = str(index_path) + ".tmp.npy"
            np.save(tmp_index, index)
            os.chmod(tmp_data, 0o644)  # mkstemp creates 0600; other users' runs may share the folder
            os.replace(tmp_data, data_path)  # data first: the index's presence marks a complete cache
            os.replace(tmp_index, index_path)
        except BaseException:
            Path(tmp_data).unlink(missing_ok=True)
            raise
        logger.info("Cached %d decoded images of %r (%.1f MB) in %s", table.num_rows, dataset_name or "<unnamed>",
                    offset / 1e6, data_path)
