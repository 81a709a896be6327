"""GeoDL: geodesic-flow-kernel distillation (Simon, Koniusz & Harandi, CVPR 2021) on CLIP features."""

from ..registry import register_method
from .config import GEODL_TERMS, GeoDLConfig
from .trainer import GEODL_PAPER, GeoDLTrainer

__all__ = ["GeoDLConfig", "GeoDLTrainer", "GEODL_PAPER", "GEODL_TERMS"]

register_method("geodl", GeoDLConfig, GeoDLTrainer,
                "Cross-entropy + geodesic-flow-kernel distillation between student and teacher feature subspaces.")
