"""Adapters that clip-cl implements itself, in peft's shape (one folder per tuner: config / layer / model).

LoRA is not here: it comes from peft (see `clip_cl.methods.lora`). RKR lives here because peft's method registry is
closed to outside methods (`register_peft_method` only accepts names of its own `PeftType` enum) and RKR must work
without the optional peft dependency; `docs/methods/rkr.md` has the full reasoning.
"""

from .registry import TUNERS, TunerSpec, get_tuner, register_tuner
from .targets import find_linear_targets, towers_of_variant
from . import rkr  # noqa: E402  (registers "rkr")
from .rkr import RKRLinear, RKRTunerConfig, inject_rkr, load_rkr_state_dict, merge_rkr, rkr_state_dict, unmerge_rkr

__all__ = ["TUNERS", "TunerSpec", "get_tuner", "register_tuner", "find_linear_targets", "towers_of_variant",
           "RKRLinear", "RKRTunerConfig", "inject_rkr", "merge_rkr", "unmerge_rkr", "rkr_state_dict",
           "load_rkr_state_dict"]
