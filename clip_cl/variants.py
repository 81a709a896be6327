"""Which parts of CLIP train: the paper's variants WM (whole model), IO (image encoder only), TO (text encoder only).

This is the one place that decides freezing; every method goes through [`apply_variant`].
"""

from __future__ import annotations

import difflib

from torch import nn

__all__ = ["VARIANTS", "check_variant", "apply_variant", "tower_of", "trainable_towers"]

VARIANTS = ("WM", "IO", "TO")

# Parameter-name prefixes of a `transformers.CLIPModel` per tower (projections belong to their tower).
_IMAGE_PREFIXES = ("vision_model.", "visual_projection.")
_TEXT_PREFIXES = ("text_model.", "text_projection.")


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


def tower_of(name: str) -> str | None:
    """'image', 'text' or None (e.g. `logit_scale`) for a parameter name of a CLIPModel (wrappers' prefixes ignored)."""
    for prefix in ("module.", "base_model.model.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    if name.startswith(_IMAGE_PREFIXES):
        return "image"
    if name.startswith(_TEXT_PREFIXES):
        return "text"
    return None


def apply_variant(model: nn.Module, variant: str, train_logit_scale: bool = False) -> list[str]:
    """Set `requires_grad` of every parameter of a CLIP model according to the variant.

    Args:
        model (`nn.Module`): a `CLIPModel` (or a model whose parameter names start with its towers' names).
        variant (`str`): "WM", "IO" or "TO".
        train_logit_scale (`bool`, defaults to `False`): whether the temperature `logit_scale` trains too (only with
            WM, the paper keeps CLIP's temperature otherwise).

    Returns:
        `list[str]`: the names of the trainable parameters.
    """
    image_on, text_on = trainable_towers(variant)
    trainable = []
    for name, param in model.named_parameters():
        tower = tower_of(name)
        on = (tower == "image" and image_on) or (tower == "text" and text_on) or (
            tower is None and train_logit_scale and image_on and text_on)
        param.requires_grad_(on)
        if on:
            trainable.append(name)
    if not trainable:
        raise ValueError(f"Variant {variant!r} left no trainable parameter in {type(model).__name__}; is it a CLIPModel?")
    return trainable
