"""clip-cl: continual learning of CLIP on Hugging Face transformers.

The public API is imported lazily (as in transformers), so `import clip_cl` stays light: torch, transformers and
datasets load only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_import_structure: dict[str, list[str]] = {
    "models": ["TINY_CLIP_CONFIG", "TINY_MODEL_NAMES", "clip_tokenizer", "load_clip", "load_model", "tiny_clip",
               "tiny_model"],
    "adapters": ["ModelAdapter", "get_adapter", "register_adapter"],
    "prompts": ["DEFAULT_TRAIN_TEMPLATES", "DEFAULT_ZERO_SHOT_TEMPLATES", "class_text_features", "format_prompts"],
    "variants": ["VARIANTS", "apply_variant"],
    "methods": ["get_method", "list_methods", "register_method"],
    "methods.base": ["CLIPCLConfig", "CLIPCLTrainer"],
    "methods.ft": ["FTConfig", "CLIPFineTuneTrainer"],
    "methods.joint_ft": ["JointFTConfig", "JointFTTrainer"],
    "methods.original": ["OriginalConfig"],
    "methods.lwf": ["LwFConfig", "LwFTrainer"],
    "methods.geodl": ["GeoDLConfig", "GeoDLTrainer"],
    "methods.imm": ["IMMConfig", "IMMTrainer"],
    "methods.rkr": ["RKRConfig", "RKRTrainer"],
    "methods.vr_lwf": ["VRLwFConfig", "VRLwFTrainer"],
    "methods.wise_ft": ["WiSEFTConfig", "WiSEFTTrainer"],
    "methods.zscl": ["ZSCLConfig", "ZSCLTrainer"],
    "methods.lora": ["LoRAConfig", "LoRATrainer"],
    "data": ["DatasetSpec", "Protocol", "build_sessions", "with_image_transform"],
    "evaluation": ["Evaluator", "continual_metrics", "retrieval_recall", "topk_accuracy"],
    "runner": ["run_protocol"],
    "hub": ["model_card", "push_run_to_hub"],
    "pretrain": ["PretrainConfig", "CLIPPretrainTrainer", "run_pretrain"],
}
_name_to_module = {name: module for module, names in _import_structure.items() for name in names}

__all__ = ["__version__", *sorted(_name_to_module)]


def __getattr__(name: str) -> Any:
    module = _name_to_module.get(name)
    if module is None:
        raise AttributeError(f"module 'clip_cl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .adapters import ModelAdapter, get_adapter, register_adapter
    from .data import DatasetSpec, Protocol, build_sessions, with_image_transform
    from .evaluation import Evaluator, continual_metrics, retrieval_recall, topk_accuracy
    from .methods import get_method, list_methods, register_method
    from .methods.base import CLIPCLConfig, CLIPCLTrainer
    from .methods.ft import CLIPFineTuneTrainer, FTConfig
    from .models import TINY_CLIP_CONFIG, TINY_MODEL_NAMES, clip_tokenizer, load_clip, load_model, tiny_clip, tiny_model
    from .runner import run_protocol
