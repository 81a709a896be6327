"""`GeoDLTrainer`: cross-entropy plus geodesic-flow-kernel distillation from the session's starting model."""

from __future__ import annotations

from typing import ClassVar

import torch

from ...losses import geodesic_distillation_loss
from ...variants import trainable_towers
from ..base.trainer import CLIPCLTrainer, StudentOutputs

__all__ = ["GeoDLTrainer", "GEODL_PAPER"]

GEODL_PAPER = {
    "title": "On Learning the Geodesic Path for Incremental Learning",
    "authors": "Christian Simon, Piotr Koniusz, Mehrtash Harandi",
    "id": "2104.08572",
    "citation": (
        "@inproceedings{simon2021learning,\n  title={On Learning the Geodesic Path for Incremental Learning},\n"
        "  author={Simon, Christian and Koniusz, Piotr and Harandi, Mehrtash},\n"
        "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},\n"
        "  pages={1591--1600},\n  year={2021}\n}"
    ),
}


class GeoDLTrainer(CLIPCLTrainer):
    r"""GeoDL (Simon, Koniusz & Harandi, CVPR 2021) as a CLIP baseline, following CL-CLIP's use of it.

    For a set of features (the batch's images, or the session's class prompts) the student's and the teacher's
    L2-normalised features `s_i`, `t_i` give two PCA subspaces `P_S`, `P_T` of dimension `d`; their geodesic flow
    kernel `G` ([`clip_cl.losses.gfk_matrix`], constant within the step) weighs the student-teacher discrepancy:

    `L_GeoDL = mean_i (s_i - t_i)^T G (s_i - t_i)` (`geodl_form="distance"`, CL-CLIP) or
    `mean_i 1 - s_i^T G t_i / sqrt(s_i^T G s_i * t_i^T G t_i)` (`"cosine"`, the GeoDL paper),

    and the loss is `CE + geodl_weight * (L_GeoDL(image) + L_GeoDL(text))`, each term present when its tower trains
    (`geodl_terms="auto"`) or as chosen.

    Args:
        model, args, train_dataset, processing_class, class_names, class_ids, teacher_model, **kwargs:
            as [`CLIPCLTrainer`]; `args` is a [`GeoDLConfig`].
    """

    _name = "GeoDL"
    _method = "geodl"
    _tag_names: ClassVar[list[str]] = ["clip-cl", "continual-learning", "clip", "geodl", "distillation"]
    _paper: ClassVar[dict] = GEODL_PAPER
    _uses_teacher = True

    def distilled_terms(self) -> tuple[bool, bool]:
        """`(image, text)`: which features are distilled under `geodl_terms` and the variant."""
        terms = self.args.geodl_terms
        if terms == "auto":
            return trainable_towers(self.args.variant)
        return terms in ("image", "both"), terms in ("text", "both")

    def _geodl(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        args = self.args
        return args.geodl_weight * geodesic_distillation_loss(
            student, teacher, subspace_dim=args.geodl_subspace_dim, form=args.geodl_form, center=args.geodl_center)

    def method_losses(self, model, inputs: dict, outputs: StudentOutputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{"geodl_image": ..., "geodl_text": ...}` (weighted), the terms selected by [`distilled_terms`]."""
        image_on, text_on = self.distilled_terms()
        terms = {}
        if image_on:
            terms["geodl_image"] = self._geodl(outputs.image_embeds,
                                               self.teacher_image_features(inputs["pixel_values"]))
        if text_on:
            terms["geodl_text"] = self._geodl(outputs.class_embeds, self.teacher_class_features())
        return terms
