"""Model adapters: the one place that knows a model family (CLIP, SigLIP, SigLIP 2).

Every other module goes through [`get_adapter`] (by model) or [`adapter_for_tokenizer`] (by tokenizer); see
`docs/models.md` for what each family needs and how to add one.
"""

from .base import ModelAdapter, PseudoTextRules, unwrap_model
from .clip import CLIPAdapter
from .registry import (
    ADAPTERS,
    adapter_for_model_type,
    adapter_for_tiny_name,
    adapter_for_tokenizer,
    get_adapter,
    register_adapter,
    supported_families,
    tag_tokenizer,
)
from .siglip import Siglip2Adapter, SiglipAdapter, naflex_inputs, size_for_patch_budget

__all__ = [
    "ADAPTERS",
    "CLIPAdapter",
    "ModelAdapter",
    "PseudoTextRules",
    "Siglip2Adapter",
    "SiglipAdapter",
    "adapter_for_model_type",
    "adapter_for_tiny_name",
    "adapter_for_tokenizer",
    "get_adapter",
    "naflex_inputs",
    "register_adapter",
    "size_for_patch_budget",
    "supported_families",
    "tag_tokenizer",
    "unwrap_model",
]

# Registration order matters only for tokenizers of no known family, which get the first adapter's rules (CLIP's).
register_adapter(CLIPAdapter())
register_adapter(SiglipAdapter())
register_adapter(Siglip2Adapter())
