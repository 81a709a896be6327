from .config import PROTOCOLS, CLIPCLConfig
from .trainer import PAPER, CLIPCLTrainer, StudentOutputs, unwrap

__all__ = ["CLIPCLConfig", "CLIPCLTrainer", "PAPER", "PROTOCOLS", "StudentOutputs", "unwrap"]
