"""Weight-space operations shared by the merging methods: IMM, WiSE-FT and ZSCL's weight ensemble.

Every function is pure tensor math on `name -> tensor` dicts (state dicts, or the trainable subset of one), so it can
be tested against explicit loops without a model or a Trainer. The trainers decide *which* tensors to merge (the
trainable ones: frozen tensors are equal in both models anyway) and write the result back into the model.

Conventions (one for the whole package):

- [`interpolate_state_dicts`]`(a, b, alpha)` returns `alpha * a + (1 - alpha) * b`. The trainers pass the fine-tuned
  weights as `a` and the session's starting weights as `b`, so `alpha` is always *the weight of the fine-tuned model*
  (WiSE-FT's `alpha`, mean-IMM's `alpha`).
- Arithmetic is done in float32 (or float64 for float64 inputs) and cast back to `a`'s dtype, so half-precision
  weights are not rounded at every intermediate step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = [
    "assign_parameters",
    "fisher_weighted_merge",
    "interpolate_state_dicts",
    "running_average_update",
    "trainable_state",
]

StateDict = Mapping[str, torch.Tensor]


def _check_same(kind: str, first: StateDict, *others: StateDict, keys: Iterable[str] | None = None) -> list[str]:
    """The keys to merge: `keys` if given (each must be in every dict), else `first`'s keys (the same in every dict)."""
    names = list(first) if keys is None else list(keys)
    for i, other in enumerate(others, start=1):
        missing = [k for k in names if k not in other]
        if missing:
            raise KeyError(f"{kind}: tensor(s) {missing[:5]} of the first state dict are missing from argument {i + 1} "
                           f"({len(missing)} in all); the models must have the same architecture.")
        if keys is None:
            extra = [k for k in other if k not in first]
            if extra:
                raise KeyError(f"{kind}: argument {i + 1} has tensor(s) {extra[:5]} that the first state dict lacks; "
                               "pass keys= to merge a subset.")
    for k in names:
        if k not in first:
            raise KeyError(f"{kind}: key {k!r} is not in the first state dict.")
        shapes = {tuple(d[k].shape) for d in (first, *others)}
        if len(shapes) > 1:
            raise ValueError(f"{kind}: tensor {k!r} has different shapes {sorted(shapes)} in the state dicts.")
    return names


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def interpolate_state_dicts(a: StateDict, b: StateDict, alpha: float,
                            keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Linear interpolation of two sets of weights: `alpha * a + (1 - alpha) * b`, tensor by tensor.

    Args:
        a (`Mapping[str, Tensor]`): the first weights (the trainers pass the fine-tuned model here).
        b (`Mapping[str, Tensor]`): the second weights (the session's starting model). Tensors are moved to `a`'s
            device.
        alpha (`float`): weight of `a`; `1` returns `a`, `0` returns `b` (up to dtype casts).
        keys (`Iterable[str]`, *optional*): merge only these tensors; by default all, and both dicts must have the
            same keys.

    Returns:
        `dict[str, Tensor]`: new tensors (the inputs are not modified) in `a`'s dtype and on `a`'s device. Non-floating
        tensors (integer buffers) are copied from `a`.
    """
    names = _check_same("interpolate_state_dicts", a, b, keys=keys)
    alpha = float(alpha)
    out = {}
    for k in names:
        x, y = a[k], b[k].to(a[k].device)
        if not x.is_floating_point():
            out[k] = x.clone()
            continue
        dt = _compute_dtype(x)
        out[k] = (alpha * x.to(dt) + (1 - alpha) * y.to(dt)).to(x.dtype)
    return out


def fisher_weighted_merge(a: StateDict, b: StateDict, fisher_a: StateDict, fisher_b: StateDict, alpha: float = 0.5,
                          eps: float = 1e-8, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Mode-IMM (Lee et al. 2017): merge two models weighting each parameter by its diagonal Fisher information.

    For each scalar parameter,

    `theta = (alpha * Fa * a + (1 - alpha) * Fb * b) / (alpha * Fa + (1 - alpha) * Fb)` with `Fa = fisher_a + eps` and
    `Fb = fisher_b + eps`,

    i.e. the mode of the product of the two diagonal Gaussian posteriors, each raised to its mixing weight. With equal
    Fishers (or both zero) it is mean-IMM, `alpha * a + (1 - alpha) * b`.

    Args:
        a, b (`Mapping[str, Tensor]`): the two sets of weights (the trainers pass the fine-tuned model as `a`).
        fisher_a, fisher_b (`Mapping[str, Tensor]`): their diagonal Fisher information, same keys and shapes,
            non-negative.
        alpha (`float`, defaults to 0.5): mixing weight of `a`.
        eps (`float`, defaults to 1e-8): added to both Fishers, so parameters without information in either model
            get the plain weighted mean instead of 0/0.
        keys (`Iterable[str]`, *optional*): merge only these tensors.

    Returns:
        `dict[str, Tensor]`: the merged tensors, in `a`'s dtype and on `a`'s device.
    """
    names = _check_same("fisher_weighted_merge", a, b, fisher_a, fisher_b, keys=keys)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    alpha = float(alpha)
    out = {}
    for k in names:
        x = a[k]
        if not x.is_floating_point():
            out[k] = x.clone()
            continue
        dt, dev = _compute_dtype(x), x.device
        fa = fisher_a[k].to(dev, dt) + eps
        fb = fisher_b[k].to(dev, dt) + eps
        if (fa < 0).any() or (fb < 0).any():
            raise ValueError(f"fisher_weighted_merge: negative Fisher values in {k!r}.")
        wa, wb = alpha * fa, (1 - alpha) * fb
        out[k] = ((wa * x.to(dt) + wb * b[k].to(dev, dt)) / (wa + wb)).to(x.dtype)
    return out


@torch.no_grad()
def running_average_update(average: StateDict, new: StateDict, count: int,
                           keys: Iterable[str] | None = None) -> StateDict:
    """Add one model to a uniform running average, in place: `average <- (average * count + new) / (count + 1)`.

    This is ZSCL's weight ensemble (`merge_we`): after `n` calls starting from `count = 1` with the starting weights
    as `average`, it holds the uniform mean of the starting weights and the `n` added models.

    Args:
        average (`Mapping[str, Tensor]`): the current average of `count` models; updated in place.
        new (`Mapping[str, Tensor]`): the model to add (moved to `average`'s device).
        count (`int`): how many models `average` already holds (>= 1).
        keys (`Iterable[str]`, *optional*): update only these tensors.

    Returns:
        `Mapping[str, Tensor]`: `average` itself.
    """
    if int(count) < 1:
        raise ValueError(f"count is the number of models already in the average and must be >= 1, got {count}.")
    names = _check_same("running_average_update", average, new, keys=keys)
    n = float(count)
    for k in names:
        avg = average[k]
        if not avg.is_floating_point():
            continue
        dt = _compute_dtype(avg)
        avg.copy_(((avg.to(dt) * n + new[k].to(avg.device, dt)) / (n + 1.0)).to(avg.dtype))
    return average


def trainable_state(model: torch.nn.Module, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters that require a gradient, by name.

    Args:
        model (`nn.Module`): the (unwrapped) model.
        device (`torch.device` or `str`, *optional*): where to put the copies (default: where each parameter is).

    Returns:
        `dict[str, Tensor]`: `name -> tensor` for every trainable parameter.
    """
    return {name: p.detach().to(device if device is not None else p.device, copy=True)
            for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def assign_parameters(model: torch.nn.Module, state: StateDict) -> None:
    """Copy `state`'s tensors into the model's parameters of the same names, in place (dtype and device follow the
    model's parameters; the parameters keep their identity, so an optimizer or a DDP wrapper still points at them).

    Args:
        model (`nn.Module`): the (unwrapped) model.
        state (`Mapping[str, Tensor]`): `name -> tensor` for some of its parameters.
    """
    params = dict(model.named_parameters())
    unknown = [k for k in state if k not in params]
    if unknown:
        raise KeyError(f"assign_parameters: {unknown[:5]} are not parameters of {type(model).__name__}.")
    for name, value in state.items():
        params[name].copy_(value)
