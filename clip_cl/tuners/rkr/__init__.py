"""RKR (Rectification-based Knowledge Retention, Singh et al. CVPR 2021) as a small tuner in peft's shape:
`config.py` (where rectifiers go), `layer.py` (`RKRLinear` with merge/unmerge), `model.py` (inject, merge, save)."""

from ..registry import register_tuner
from .config import RKR_INITS, RKRTunerConfig
from .layer import RKRLinear
from .model import inject_rkr, load_rkr_state_dict, merge_rkr, rkr_layers, rkr_state_dict, unload_rkr, unmerge_rkr

__all__ = ["RKR_INITS", "RKRTunerConfig", "RKRLinear", "inject_rkr", "merge_rkr", "unmerge_rkr", "unload_rkr",
           "rkr_layers", "rkr_state_dict", "load_rkr_state_dict"]

register_tuner("rkr", config_cls=RKRTunerConfig, layer_cls=RKRLinear, inject=inject_rkr, merge=merge_rkr,
               state_dict=rkr_state_dict, load_state_dict=load_rkr_state_dict)
