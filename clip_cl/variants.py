"""Which parts of the model train: the paper's variants WM (whole model), IO (image encoder only), TO (text encoder
only).

This is the one place that decides freezing; every method goes through [`apply_variant`]. Which parameter belongs to
which tower is the model adapter's knowledge (`clip_cl.adapters`).
"""

from __future__ import annotations

import difflib

from torch import nn

__all__ = ["VARIANTS", "check_variant", "apply_variant", "tower_of", "trainable_towers"]

VARIANTS = ("WM", "IO", "TO")



def check_variant(variant: str) -> str:
    """Normalise a variant name (case-insensitive) or raise a helpful error."""
    v = str(variant).upper()
    if v not in VARIANTS:
        close = difflib.get_close_matches(v, VARIANTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown variant {variant!r}; valid variants are {', '.join(VARIANTS)} "
                         f"(WM = whole model, IO = image encoder only, TO = text encoder only).{hint}")
    return v


def trainable_towers(variant: str) -> tuple[bool, bool]:
    """`(image_tower_trains, text_tower_trains)` for a variant."""
    v = check_variant(variant)
    return v in ("WM", "IO"), v in ("WM", "TO")


def tower_of(name: str, model: nn.Module | None = None) -> str | None:
    """'image', 'text' or None (e.g. `logit_scale`, `logit_bias`) for a parameter name (wrappers' prefixes ignored).

    Args:
        name (`str`): a parameter or module name.
        model (`nn.Module`, *optional*): the model it belongs to; without it, any supported family's naming is
            recognised (their tower prefixes do not clash).
    """
    from .adapters import ADAPTERS, get_adapter

    adapters = [get_adapter(model)] if model is not None else list(ADAPTERS.values())
    for adapter in adapters:
        tower = adapter.tower_of(name)
        if tower is not None:
            return tower
    return None


def apply_variant(model: nn.Module, variant: str, train_logit_scale: bool = False) -> list[str]:
    """Set `requires_grad` of every parameter of a model according to the variant.

    Args:
        model (`nn.Module`): a model of a supported family (see `clip_cl.adapters`), possibly wrapped.
        variant (`str`): "WM", "IO" or "TO".
        train_logit_scale (`bool`, defaults to `False`): whether the parameters outside both towers (the temperature
            `logit_scale`, and SigLIP's `logit_bias`) train too (only with WM; the paper keeps the temperature).

    Returns:
        `list[str]`: the names of the trainable parameters.
    """
    from .adapters import get_adapter

    image_on, text_on = trainable_towers(variant)
    adapter = get_adapter(model)
    trainable = []
    for name, param in model.named_parameters():
        tower = adapter.tower_of(name)
        on = (tower == "image" and image_on) or (tower == "text" and text_on) or (
            tower is None and train_logit_scale and image_on and text_on)
        param.requires_grad_(on)
        if on:
            trainable.append(name)
    if not trainable:
        raise ValueError(f"Variant {variant!r} left no trainable parameter in {type(model).__name__}.")
    return trainable
