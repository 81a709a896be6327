"""Random draws that are a function of a key, not of a generator's history.

A training run that is killed and resumed from a checkpoint must draw exactly what the uninterrupted run drew. A
generator created once and advanced step after step (or torch's global RNG) holds its position only in memory, so a
resumed process starts it over; a generator seeded from `(seed, what, global step, micro-batch)` gives the same draws
whatever happened before, in any process, with nothing to save in checkpoints. Methods draw their per-step randomness
(VR-LwF's pseudo-classes, ZSCL's reference texts and images) from [`keyed_generator`].
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["keyed_generator"]


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU `torch.Generator` seeded from a tuple of integers, well mixed by numpy's `SeedSequence` (nearby keys give
    unrelated streams).

    Args:
        *key (`int`): the key, e.g. `(seed, stream, global_step, micro_batch)`; each entry is taken modulo 2**32.

    Returns:
        `torch.Generator`: a fresh generator; the same key always gives the same draws.
    """
    entropy = [int(k) & 0xFFFFFFFF for k in key]
    seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]) >> 1
    return torch.Generator().manual_seed(seed)
