from ..registry import register_method
from .config import FTConfig
from .trainer import CLIPFineTuneTrainer

__all__ = ["FTConfig", "CLIPFineTuneTrainer"]

register_method("ft", FTConfig, CLIPFineTuneTrainer, "Fine-tuning with cross-entropy on class prompts (baseline).")
