from ..registry import register_method
from .config import JointFTConfig
from .trainer import JointFTTrainer

__all__ = ["JointFTConfig", "JointFTTrainer"]

register_method("joint_ft", JointFTConfig, JointFTTrainer,
                "Fine-tuning on the union of all sessions' data so far, from the original model (UT-Acc upper bound).")
