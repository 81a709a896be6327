import copy
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE_DATA = ROOT / "examples" / "data"

# Tests are CPU-only and small: keep them deterministic and quiet.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The tiny model's kernels are far too small to gain from threads; one thread per process is several times faster
# on 2 cores (and subprocesses inherit it through the environment).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


class RandomImages(torch.utils.data.Dataset):
    """Rows `{"pixel_values", "labels"}` with random pixels; labels cycle through `labels`."""

    def __init__(self, n: int, labels, size: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.pixels = torch.randn(n, 3, size, size, generator=g)
        self.labels = [labels[i % len(labels)] for i in range(n)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


@pytest.fixture(scope="session")
def pristine_tiny():
    from clip_cl.models import tiny_clip

    return tiny_clip(seed=0)


@pytest.fixture
def tiny(pristine_tiny):
    """A fresh copy of the tiny CLIP per test (building it, with its 49k-token embedding, is the slow part)."""
    model, processor = pristine_tiny
    return copy.deepcopy(model), processor


@pytest.fixture
def random_images():
    return RandomImages


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs the real data in {SHARED_DATA} (absent on this machine)")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)
