"""A-GEM: averaged gradient episodic memory (Chaudhry et al., ICLR 2019) for CLIP."""

from ..registry import register_method
from .config import AGEMConfig
from .trainer import AGEM_PAPER, AGEMTrainer

__all__ = ["AGEMConfig", "AGEMTrainer", "AGEM_PAPER"]

register_method("agem", AGEMConfig, AGEMTrainer,
                "Cross-entropy; the update gradient is projected off the replay gradient when they conflict (A-GEM).")
