"""The registry of model adapters: which family a model (or tokenizer, or config) belongs to."""

from __future__ import annotations

from .base import ModelAdapter, unwrap_model

__all__ = ["ADAPTERS", "register_adapter", "get_adapter", "adapter_for_tokenizer", "adapter_for_model_type",
           "adapter_for_tiny_name", "supported_families", "tag_tokenizer", "FAMILY_ATTRIBUTE"]

#: Attribute set on a tokenizer to the family of the model it serves (`tag_tokenizer`), so that tokenisation
#: follows the model's rules even for a tokenizer class of no registered family.
FAMILY_ATTRIBUTE = "clip_cl_family"

#: Registered adapters by family name, in registration order.
ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Add an adapter instance to the registry (a later one with the same family replaces it)."""
    if not adapter.family:
        raise ValueError(f"{type(adapter).__name__} has no family name.")
    ADAPTERS[adapter.family] = adapter
    return adapter


def supported_families() -> str:
    return ", ".join(f"{a.family} ({a.model_class.__name__})" for a in ADAPTERS.values())


def get_adapter(model) -> ModelAdapter:
    """The adapter of a model (DDP / FSDP / compile wrappers are looked through).

    Raises:
        TypeError: the model is of no supported family; the message names the supported ones.
    """
    bare = unwrap_model(model)
    # The most specific class wins (a family whose model class subclasses another's).
    best = None
    for adapter in ADAPTERS.values():
        if isinstance(bare, adapter.model_class) and (
                best is None or issubclass(adapter.model_class, best.model_class)):
            best = adapter
    if best is None:
        raise TypeError(f"{type(bare).__name__} is not a supported model; clip-cl supports {supported_families()}. "
                        "Load one of these (clip_cl.models.load_model), or add an adapter (docs/models.md).")
    return best


def adapter_for_tokenizer(tokenizer) -> ModelAdapter:
    """The adapter whose tokenisation rules apply to a tokenizer (or a processor holding one).

    A tokenizer of no registered family gets the first registered adapter's rules (CLIP's: pad to the longest text).
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    tagged = getattr(tokenizer, FAMILY_ATTRIBUTE, None)  # set by load_model and the trainers: the model's family
    if tagged in ADAPTERS:
        return ADAPTERS[tagged]
    for adapter in ADAPTERS.values():
        if adapter.matches_tokenizer(tokenizer):
            return adapter
    return next(iter(ADAPTERS.values()))


def tag_tokenizer(tokenizer, model) -> None:
    """Mark a tokenizer (or a processor's) as serving `model`, whose family's tokenisation rules then apply."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if tokenizer is not None:
        setattr(tokenizer, FAMILY_ATTRIBUTE, get_adapter(model).family)


def adapter_for_model_type(model_type: str) -> ModelAdapter:
    """The adapter of a config's `model_type` (e.g. "clip", "siglip", "siglip2")."""
    for adapter in ADAPTERS.values():
        if adapter.model_class.config_class.model_type == model_type:
            return adapter
    raise ValueError(f"Model type {model_type!r} is not supported; clip-cl supports {supported_families()}.")


def adapter_for_tiny_name(name: str) -> ModelAdapter | None:
    for adapter in ADAPTERS.values():
        if adapter.tiny_name == name:
            return adapter
    return None
