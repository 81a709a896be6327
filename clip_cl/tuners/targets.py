"""Which `nn.Linear` layers of a model an adapter wraps: one selection rule shared by RKR and LoRA.

The towers' module names, their projections and the layers a wrapper could never act on come from the model's
adapter (`clip_cl.adapters`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from ..adapters import get_adapter
from ..variants import trainable_towers

__all__ = ["TOWERS", "PROJECTIONS", "towers_of_variant", "check_towers", "find_linear_targets"]

TOWERS = ("image", "text")
#: The projections into the joint space of the first registered family (kept for existing imports); each model's
#: own are `get_adapter(model).projections`.
PROJECTIONS = ("visual_projection", "text_projection")


def towers_of_variant(variant: str) -> tuple[str, ...]:
    """The towers a variant trains: WM -> ("image", "text"), IO -> ("image",), TO -> ("text",)."""
    image_on, text_on = trainable_towers(variant)
    return tuple(t for t, on in zip(TOWERS, (image_on, text_on)) if on)


def check_towers(towers: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise a tower selection (`"image"`, `"text"`, a list of them, or `"both"`) or raise a helpful error."""
    if isinstance(towers, str):
        towers = TOWERS if towers.lower() in ("both", "all") else (towers,)
    out = tuple(dict.fromkeys(str(t).lower() for t in towers))
    bad = [t for t in out if t not in TOWERS]
    if bad or not out:
        raise ValueError(f"towers must be a non-empty selection of {TOWERS}, got {list(towers)!r}.")
    return out


def _matches(name: str, targets: Sequence[str]) -> bool:
    # peft's rule: a target names the module itself or a dotted suffix of its full name.
    return any(name == t or name.endswith("." + t) for t in targets)


def find_linear_targets(
    model: nn.Module,
    towers: Sequence[str] = TOWERS,
    target_modules: Sequence[str] | None = None,
    include_projections: bool = True,
    skip: tuple[type, ...] = (),
) -> list[str]:
    """Full names of the `nn.Linear` layers of a model that an adapter should wrap.

    Layers the model never calls through their `forward` (SigLIP's attention-pooling `out_proj`, whose weight
    `nn.MultiheadAttention` reads directly) are never selected: a wrapper there would not run.

    Args:
        model (`nn.Module`): a model of a supported family (unwrapped).
        towers (`Sequence[str]`, defaults to `("image", "text")`): which towers to search; each projection belongs
            to its tower (CLIP: `visual_projection` / `text_projection`; SigLIP: the towers' `head` modules).
        target_modules (`Sequence[str]`, *optional*): module names or dotted suffixes (e.g. `"q_proj"`,
            `"mlp.fc1"`, `"visual_projection"`); `None` or `["all-linear"]` selects every `nn.Linear` of the towers.
        include_projections (`bool`, defaults to `True`): with `target_modules=None`, whether the two projections
            into the joint space are selected too (an explicit `target_modules` list decides this by itself).
        skip (`tuple[type]`): module types whose sub-modules are never selected (already-wrapped layers).

    Returns:
        `list[str]`: module names in `named_modules()` order; empty if nothing matched.
    """
    towers = check_towers(towers)
    adapter = get_adapter(model)
    if target_modules is not None and list(target_modules) in (["all-linear"], ["all_linear"]):
        target_modules = None
    skipped: list[str] = []
    names = []
    for name, module in model.named_modules():
        if skip and isinstance(module, skip):
            skipped.append(name + ".")
            continue
        if not isinstance(module, nn.Linear) or any(name.startswith(s) for s in skipped):
            continue
        if adapter.tower_of(name + ".") not in towers or not adapter.can_wrap(name):
            continue
        if target_modules is None:
            if not include_projections and adapter.is_projection(name):
                continue
        elif not _matches(name, target_modules):
            continue
        names.append(name)
    return names
