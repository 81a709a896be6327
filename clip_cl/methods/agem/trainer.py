"""`AGEMTrainer`: project the accumulated update gradient off one replay gradient per optimizer step."""

from __future__ import annotations

from typing import ClassVar

import torch

from ...rehearsal import agem_coefficients
from ..base.rehearsal import GradientProjectionTrainer, ReplayBatch

__all__ = ["AGEMTrainer", "AGEM_PAPER"]

AGEM_PAPER = {
    "title": "Efficient Lifelong Learning with A-GEM",
    "authors": "Arslan Chaudhry, Marc'Aurelio Ranzato, Marcus Rohrbach, Mohamed Elhoseiny",
    "id": "1812.00420",
    "citation": (
        "@inproceedings{chaudhry2019efficient,\n  title={Efficient Lifelong Learning with A-GEM},\n  author={Chaudhry, "
        "Arslan and Ranzato, Marc'Aurelio and Rohrbach, Marcus and Elhoseiny, Mohamed},\n  booktitle={International "
        "Conference on Learning Representations},\n  year={2019}\n}"
    ),
}


class AGEMTrainer(GradientProjectionTrainer):
    r"""A-GEM for CLIP. Once per optimizer step, with `g` the accumulated update gradient (cross-entropy on the
    session's classes) and `g_ref` the gradient of `contrastive(replay pairs) + CE_seen(memory exemplars)` on one
    replay draw, both vectors over the trainable parameters:

    `g <- g - (g . g_ref / g_ref . g_ref) g_ref`   if `g . g_ref < 0`, else unchanged

    ([`clip_cl.rehearsal.agem_project`]). The fraction of projected steps is logged as `projected`.

    Args:
        as [`RehearsalTrainer`]; `args` is an [`AGEMConfig`].
    """

    _name = "A-GEM"
    _method = "agem"
    _tag_names: ClassVar[list[str]] = ["clip-cl", "continual-learning", "clip", "agem", "rehearsal"]
    _paper: ClassVar[dict] = AGEM_PAPER

    def reference_batches(self, draw: int) -> list[ReplayBatch]:
        """One draw of replay pairs and memory exemplars (all earlier sessions together)."""
        return [self.draw(draw)]

    def coefficients(self, dots: torch.Tensor, references: torch.Tensor) -> torch.Tensor | None:
        return agem_coefficients(dots, references[0])
