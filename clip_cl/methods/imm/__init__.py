from ..registry import register_method
from .config import IMMConfig
from .trainer import IMMTrainer, diagonal_fisher

__all__ = ["IMMConfig", "IMMTrainer", "diagonal_fisher"]

register_method("imm", IMMConfig, IMMTrainer,
                "Incremental Moment Matching: fine-tune, then merge with the session's starting weights (mean or "
                "Fisher-weighted mode).")
