"""Adding RKR rectifiers to a CLIP model in place, merging them back into plain `nn.Linear` layers, saving them."""

from __future__ import annotations

import torch
from torch import nn

from ..targets import find_linear_targets
from .config import RKRTunerConfig
from .layer import RKRLinear

__all__ = ["inject_rkr", "merge_rkr", "unmerge_rkr", "unload_rkr", "rkr_layers", "rkr_state_dict",
           "load_rkr_state_dict"]


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


def rkr_layers(model: nn.Module) -> dict[str, RKRLinear]:
    """The `RKRLinear` layers of a model by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, RKRLinear)}


def inject_rkr(model: nn.Module, config: RKRTunerConfig | None = None, freeze_base: bool = True) -> list[str]:
    """Wrap the selected `nn.Linear` layers of a CLIP model in [`RKRLinear`], in place.

    The model object stays the same (a Trainer or optimizer holding it sees the change); only the wrapped layers
    are replaced inside their parents.

    Args:
        model (`nn.Module`): a bare model of a supported family (not DDP-wrapped).
        config ([`RKRTunerConfig`], *optional*): where the rectifiers go; defaults to every `nn.Linear` of both
            towers, rank 4.
        freeze_base (`bool`, defaults to `True`): set `requires_grad=False` on every parameter of the model that is
            not a rectifier (RKR trains the rectifiers only).

    Returns:
        `list[str]`: the names of the wrapped modules.
    """
    config = config if config is not None else RKRTunerConfig()
    if rkr_layers(model):
        raise ValueError("The model already has RKR rectifiers; call merge_rkr(model) (or unload_rkr) before adding "
                         "fresh ones.")
    names = find_linear_targets(model, config.towers, config.target_modules, config.include_projections)
    if not names:
        raise ValueError(f"No nn.Linear matched the RKR config (towers={config.towers}, target_modules="
                         f"{config.target_modules}) in {type(model).__name__}; is it a supported model (clip_cl.adapters)?")
    too_small = [n for n in names if config.r > min(model.get_submodule(n).in_features,
                                                   model.get_submodule(n).out_features)]
    if too_small:
        raise ValueError(f"RKR rank {config.r} exceeds min(in, out) of {too_small[:3]}; lower r.")
    if freeze_base:
        model.requires_grad_(False)
    for name in names:
        parent_name, child = _split(name)
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, RKRLinear(getattr(parent, child), r=config.r, init=config.init))
    return names


def merge_rkr(model: nn.Module, unload: bool = True, safe_merge: bool = True) -> nn.Module:
    """Merge every rectifier into its weights: `W <- s * (W + B A)`, `b <- s * b`.

    Args:
        model (`nn.Module`): a model with [`RKRLinear`] layers.
        unload (`bool`, defaults to `True`): replace each `RKRLinear` by its (merged) plain `nn.Linear`, so the model
            is an ordinary model of its family again with its original state-dict keys; `False` keeps the wrappers in their
            merged state (see [`unmerge_rkr`]).
        safe_merge (`bool`, defaults to `True`): refuse to write non-finite weights.

    Returns:
        `nn.Module`: the same model object, modified in place.
    """
    for name, layer in rkr_layers(model).items():
        if not layer.merged:
            layer.merge(safe_merge=safe_merge)
        if unload:
            parent_name, child = _split(name)
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.get_base_layer())
    return model


def unmerge_rkr(model: nn.Module) -> nn.Module:
    """Take merged rectifiers out of the weights again (wrappers kept by `merge_rkr(..., unload=False)`)."""
    for layer in rkr_layers(model).values():
        if layer.merged:
            layer.unmerge()
    return model


def unload_rkr(model: nn.Module) -> nn.Module:
    """Drop the rectifiers without merging them: the model computes what it computed before [`inject_rkr`]."""
    for name, layer in rkr_layers(model).items():
        if layer.merged:
            layer.unmerge()
        parent_name, child = _split(name)
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    return model


def rkr_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the rectifier tensors (`...rkr_A`, `...rkr_B`, `...rkr_scale`), keyed by their names in the model.

    The result can be written with `safetensors.torch.save_file` and put back with [`load_rkr_state_dict`] into a
    model that got rectifiers at the same places.

    Returns:
        `dict[str, torch.Tensor]`: detached, contiguous tensors (on the model's device).
    """
    out = {}
    for name, layer in rkr_layers(model).items():
        for pname, param in layer.named_parameters(recurse=False):
            out[f"{name}.{pname}"] = param.detach().contiguous()
    return out


@torch.no_grad()
def load_rkr_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
    """Copy rectifier tensors (from [`rkr_state_dict`]) into a model with rectifiers at the same places.

    Args:
        model (`nn.Module`): a model after [`inject_rkr`] (unmerged).
        state_dict (`dict[str, torch.Tensor]`): rectifier tensors by name.
        strict (`bool`, defaults to `True`): raise if a rectifier of the model is missing or a key is unknown.

    Returns:
        `list[str]`: the keys that were loaded.
    """
    mine = rkr_state_dict(model)
    missing = sorted(set(mine) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(mine))
    if strict and (missing or unexpected):
        raise KeyError(f"RKR state dict does not match the model's rectifiers (missing {missing[:3]}, unexpected "
                       f"{unexpected[:3]}); inject with the same RKRTunerConfig first.")
    if any(layer.merged for layer in rkr_layers(model).values()):
        raise RuntimeError("load_rkr_state_dict needs unmerged rectifiers; call unmerge_rkr(model) first.")
    params = dict(model.named_parameters())
    loaded = []
    for key, value in state_dict.items():
        if key in mine:
            params[key].copy_(value.to(params[key].device, params[key].dtype))
            loaded.append(key)
    return loaded
