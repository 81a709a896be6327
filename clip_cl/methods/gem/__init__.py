"""GEM: gradient episodic memory (Lopez-Paz & Ranzato, NeurIPS 2017) for CLIP."""

from ..registry import register_method
from .config import GEMConfig
from .trainer import GEM_PAPER, GEMTrainer

__all__ = ["GEMConfig", "GEMTrainer", "GEM_PAPER"]

register_method("gem", GEMConfig, GEMTrainer,
                "Cross-entropy; the update gradient is projected onto the cone of the earlier sessions' memory "
                "gradients and the replay gradient through GEM's dual QP (GEM).")
