"""VR-LwF: Learning without Forgetting with Vocabulary Replay (Ding et al. 2022), the paper's method."""

from ..registry import register_method
from .config import VRLwFConfig
from .trainer import VRLwFTrainer

__all__ = ["VRLwFConfig", "VRLwFTrainer"]

register_method("vr_lwf", VRLwFConfig, VRLwFTrainer,
                "LwF with Vocabulary Replay: KL(teacher || student) on image-to-random-pseudo-text logits "
                "(+ LwF on class prompts in MST). The paper's method.")
