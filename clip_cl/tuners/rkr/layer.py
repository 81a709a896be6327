"""`RKRLinear`: an `nn.Linear` with an RKR weight rectification and output scaling, mergeable into the weights."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .config import RKR_INITS

__all__ = ["RKRLinear"]


class RKRLinear(nn.Module):
    r"""A frozen `nn.Linear` with Rectification-based Knowledge Retention (Singh et al., CVPR 2021):

    `y = s * (W x + B A x + b)`, i.e. the weights are rectified to `W + B A` (rank `r`) and every output channel
    is multiplied by a learned scaling factor `s`. **The scaling applies to the bias too**: `s` scales the layer's
    output as a whole, as RKR's scaling-factor generator scales whole output maps and as the official CL-CLIP code
    computes `(linear(x) + up(down(x))) * scale`. Merging is therefore `W' = s * (W + B A)` (row-wise),
    `b' = s * b`, and the merged `nn.Linear` computes the same function.

    Only `rkr_A`, `rkr_B` and `rkr_scale` are trainable; the wrapped layer's weight and bias are frozen.

    Args:
        base_layer (`nn.Linear`): the layer to wrap (kept as `self.base_layer`, weights shared, not copied).
        r (`int`, defaults to 4): rank of the rectification.
        init (`str`, defaults to `"lora"`): `"lora"` (A kaiming-uniform, B zero) or `"cl-clip"` (A zero, B
            kaiming-uniform). Both start with `B A = 0` and `s = 1`, so the output equals the base layer's exactly.

    Attributes:
        merged (`bool`): whether the rectification currently lives in `base_layer`'s weights (then `forward` is the
            base layer alone and [`unmerge`] restores the separate form).
    """

    adapter_prefix = "rkr_"

    def __init__(self, base_layer: nn.Linear, r: int = 4, init: str = "lora"):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"RKRLinear wraps an nn.Linear, got {type(base_layer).__name__}.")
        if r < 1:
            raise ValueError(f"RKR rank r must be >= 1, got {r}.")
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = int(r)
        self.merged = False
        base_layer.requires_grad_(False)
        kw = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.rkr_A = nn.Parameter(torch.empty(self.r, self.in_features, **kw))
        self.rkr_B = nn.Parameter(torch.empty(self.out_features, self.r, **kw))
        self.rkr_scale = nn.Parameter(torch.empty(self.out_features, **kw))
        self.reset_rkr_parameters(init)

    # ---- parameters
    @torch.no_grad()
    def reset_rkr_parameters(self, init: str = "lora") -> None:
        """Start from the identity: `B A = 0` and `s = 1` (which factor is random depends on `init`)."""
        if init not in RKR_INITS:
            raise ValueError(f"Unknown RKR init {init!r}; use one of {RKR_INITS}.")
        random, zero = (self.rkr_A, self.rkr_B) if init == "lora" else (self.rkr_B, self.rkr_A)
        nn.init.kaiming_uniform_(random, a=math.sqrt(5))  # nn.Linear's default (as peft's LoRA A)
        nn.init.zeros_(zero)
        nn.init.ones_(self.rkr_scale)

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's weight (merged or not), for code that reads `layer.weight` (e.g. its dtype)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def get_base_layer(self) -> nn.Linear:
        """The wrapped `nn.Linear` (peft's name)."""
        return self.base_layer

    # ---- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        # The low-rank path keeps the cost at O(r (in + out)) per token and never forms a full weight gradient. At
        # the start B A x is exactly +0 and s is exactly 1, so the output equals the base layer's bit for bit.
        lora_in = x if x.dtype == self.rkr_A.dtype or torch.is_autocast_enabled() else x.to(self.rkr_A.dtype)
        delta = F.linear(F.linear(lora_in, self.rkr_A), self.rkr_B)
        return (result + delta.to(result.dtype)) * self.rkr_scale.to(result.dtype)

    # ---- merge / unmerge
    def rectified_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(s * (W + B A), s * b)` computed in float32 from the *unmerged* weights, cast to the weight's dtype."""
        if self.merged:
            raise RuntimeError("rectified_weight_and_bias needs the unmerged weights; call unmerge() first.")
        w = self.base_layer.weight
        s = self.rkr_scale.detach().float()
        new_w = s[:, None] * (w.detach().float() + self.rkr_B.detach().float() @ self.rkr_A.detach().float())
        b = self.base_layer.bias
        new_b = None if b is None else s * b.detach().float()
        return new_w.to(w.dtype), None if new_b is None else new_b.to(b.dtype)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """Write the rectification into the base layer: `W <- s * (W + B A)`, `b <- s * b`.

        Args:
            safe_merge (`bool`, defaults to `False`): check that the merged weights are finite before writing them.
        """
        if self.merged:
            warnings.warn("RKRLinear is already merged; nothing to do.", stacklevel=2)
            return
        new_w, new_b = self.rectified_weight_and_bias()
        if safe_merge and not (torch.isfinite(new_w).all() and (new_b is None or torch.isfinite(new_b).all())):
            raise ValueError("RKR merge would write non-finite weights (the rectifiers diverged); not merged.")
        self.base_layer.weight.copy_(new_w)
        if new_b is not None:
            self.base_layer.bias.copy_(new_b)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the rectification out of the base layer again: `W <- W' / s - B A`, `b <- b' / s`.

        Exact up to float rounding (~1e-7 relative in float32). Impossible when a scaling factor is 0 (that output
        channel's original weights are gone), which raises.
        """
        if not self.merged:
            warnings.warn("RKRLinear is not merged; nothing to unmerge.", stacklevel=2)
            return
        s = self.rkr_scale.detach().float()
        if (s == 0).any():
            raise ValueError(f"Cannot unmerge: {int((s == 0).sum())} RKR scaling factor(s) are exactly 0, so the "
                             "original weights of those output channels cannot be recovered.")
        w = self.base_layer.weight
        old_w = w.float() / s[:, None] - self.rkr_B.detach().float() @ self.rkr_A.detach().float()
        w.copy_(old_w.to(w.dtype))
        if self.base_layer.bias is not None:
            b = self.base_layer.bias
            b.copy_((b.float() / s).to(b.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, merged={self.merged}"
