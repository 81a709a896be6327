"""`GEMConfig`: GEM's projection with one constraint per earlier session and one for the replay set."""

from dataclasses import dataclass, field

from ..base.rehearsal import RehearsalConfig

__all__ = ["GEMConfig"]


@dataclass
class GEMConfig(RehearsalConfig):
    r"""
    Configuration of GEM (Lopez-Paz & Ranzato, NeurIPS 2017). Once per optimizer step, the reference gradients are
    one per earlier session (CE over the seen classes on a draw of that session's memory exemplars) plus one for the
    replay set (contrastive loss on a draw of replay pairs); if the update gradient `g` conflicts with any of them,
    it is replaced by `G^T v* + g`, with `v*` the solution of GEM's dual QP
    `min_v 1/2 v^T (G G^T + eps I) v + (G g)^T v  s.t.  v >= margin`. The replay set and memory fields are those of
    [`RehearsalConfig`]; everything else is [`CLIPCLConfig`]'s.

    Parameters that control the projection:
        gem_margin (`float`, defaults to 0.5):
            GEM's `memory_strength`: the lower bound of the dual variables, which pushes the projected gradient
            inside the cone (0: onto its border). GEM's code uses 0.5.
        gem_eps (`float`, defaults to 1e-3):
            Ridge added to `G G^T` (GEM's code), which keeps the dual strictly convex.
    """

    _method = "gem"

    gem_margin: float = field(default=0.5, metadata={
        "help": "GEM's memory_strength: lower bound of the dual variables (GEM: 0.5; 0 projects onto the border)."})
    gem_eps: float = field(default=1e-3, metadata={"help": "Ridge added to G G^T in GEM's dual (GEM: 1e-3)."})

    def __post_init__(self):
        if self.gem_margin < 0 or self.gem_eps < 0:
            raise ValueError(f"gem_margin and gem_eps must be >= 0, got {self.gem_margin} and {self.gem_eps}.")
        super().__post_init__()
