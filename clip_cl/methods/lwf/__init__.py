"""LwF: Learning without Forgetting (Li & Hoiem 2017) on CLIP's class-prompt logits."""

from ..registry import register_method
from .config import LwFConfig
from .trainer import LWF_PAPER, LwFTrainer

__all__ = ["LwFConfig", "LwFTrainer", "LWF_PAPER"]

register_method("lwf", LwFConfig, LwFTrainer,
                "Cross-entropy + KL(teacher || student) on image-to-class-prompt logits (Learning without Forgetting).")
