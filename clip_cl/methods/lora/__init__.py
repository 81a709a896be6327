"""LoRA through peft. Importing this folder does not import peft (so `clip-cl methods` lists `lora` without it);
`LoRAConfig` raises an `ImportError` with the install command when peft is missing."""

from ..registry import register_method
from .config import DEFAULT_LORA_TARGETS, LoRAConfig, require_peft
from .trainer import LoRATrainer, inject_lora, merge_and_unload_lora

__all__ = ["LoRAConfig", "LoRATrainer", "DEFAULT_LORA_TARGETS", "require_peft", "inject_lora",
           "merge_and_unload_lora"]

register_method("lora", LoRAConfig, LoRATrainer,
                "LoRA (peft) on the trainable tower(s)' attention projections, merged into the weights each session.")
