"""`GEMTrainer`: project the accumulated update gradient with GEM's dual QP, one constraint per earlier session
plus one for the replay set."""

from __future__ import annotations

from typing import ClassVar

import torch

from ...rehearsal import gem_coefficients
from ..base.rehearsal import _SESSION, GradientProjectionTrainer, ReplayBatch

__all__ = ["GEMTrainer", "GEM_PAPER"]

GEM_PAPER = {
    "title": "Gradient Episodic Memory for Continual Learning",
    "authors": "David Lopez-Paz, Marc'Aurelio Ranzato",
    "id": "1706.08840",
    "citation": (
        "@inproceedings{lopezpaz2017gradient,\n  title={Gradient Episodic Memory for Continual Learning},\n"
        "  author={Lopez-Paz, David and Ranzato, Marc'Aurelio},\n  booktitle={Advances in Neural Information "
        "Processing Systems},\n  year={2017}\n}"
    ),
}


class GEMTrainer(GradientProjectionTrainer):
    r"""GEM for CLIP. Once per optimizer step, with `g` the accumulated update gradient and the rows of `G` the
    reference gradients (one per earlier session with memory: CE over the seen classes on a draw of its exemplars;
    one for the replay set: the contrastive loss on a draw of replay pairs), all flattened over the trainable
    parameters: if `G g` has a negative entry,

    `g <- G^T v* + g`,  `v* = argmin_{v >= margin} 1/2 v^T (G G^T + eps I) v + (G g)^T v`

    ([`clip_cl.rehearsal.gem_project`], solved in torch). The fraction of projected steps is logged as `projected`.
    Each constraint costs one forward/backward of its draw and one flat gradient in memory.

    Args:
        as [`RehearsalTrainer`]; `args` is a [`GEMConfig`].
    """

    _name = "GEM"
    _method = "gem"
    _tag_names: ClassVar[list[str]] = ["clip-cl", "continual-learning", "clip", "gem", "rehearsal"]
    _paper: ClassVar[dict] = GEM_PAPER

    def reference_batches(self, draw: int) -> list[ReplayBatch]:
        """One memory draw per earlier session (sessions in order), then one draw of replay pairs."""
        batches = [self.draw(draw, sessions=[s], with_pairs=False, stream_offset=_SESSION + s)
                   for s in sorted(set(self.memory_sessions))]
        if self.replay_data is not None:
            batches.append(self.draw(draw, sessions=[]))
        return batches

    def coefficients(self, dots: torch.Tensor, references: torch.Tensor) -> torch.Tensor | None:
        return gem_coefficients(dots, references, margin=self.args.gem_margin, eps=self.args.gem_eps)
