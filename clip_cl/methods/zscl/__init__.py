from ..registry import register_method
from .config import ZSCLConfig
from .trainer import ZSCLStudentOutputs, ZSCLTrainer, l2_to_reference

__all__ = ["ZSCLConfig", "ZSCLStudentOutputs", "ZSCLTrainer", "l2_to_reference"]

register_method("zscl", ZSCLConfig, ZSCLTrainer,
                "ZSCL: distillation from the zero-shot model on reference images and texts, L2 to the starting "
                "weights, and weight ensembling.")
