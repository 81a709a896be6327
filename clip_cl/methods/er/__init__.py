"""ER: experience replay (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning") for CLIP."""

from ..registry import register_method
from .config import ERConfig
from .trainer import ER_PAPER, ERTrainer

__all__ = ["ERConfig", "ERTrainer", "ER_PAPER"]

register_method("er", ERConfig, ERTrainer,
                "Cross-entropy + replay_weight x (contrastive loss on replay pairs + CE over seen classes on memory "
                "exemplars) (experience replay).")
