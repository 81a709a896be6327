from ..registry import register_method
from .config import RKRConfig
from .trainer import RKRTrainer

__all__ = ["RKRConfig", "RKRTrainer"]

register_method("rkr", RKRConfig, RKRTrainer,
                "RKR: low-rank weight rectifications + per-channel scalings, merged into the weights each session.")
