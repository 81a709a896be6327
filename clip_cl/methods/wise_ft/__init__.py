from ..registry import register_method
from .config import WiSEFTConfig
from .trainer import WiSEFTTrainer

__all__ = ["WiSEFTConfig", "WiSEFTTrainer"]

register_method("wise_ft", WiSEFTConfig, WiSEFTTrainer,
                "WiSE-FT: fine-tune, then interpolate with the session's starting weights; sweeps alpha for the "
                "UT-vs-ZS trade-off.")
