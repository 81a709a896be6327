"""`LwFTrainer`: cross-entropy plus knowledge distillation from the session's starting model on class-prompt logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ...features import tokenize
from ...losses import kd_kl_loss
from ...prompts import class_text_features, format_prompts
from ..base.trainer import CLIPCLTrainer, StudentOutputs

__all__ = ["LwFTrainer", "LWF_PAPER"]

LWF_PAPER = {
    "title": "Learning without Forgetting",
    "authors": "Zhizhong Li, Derek Hoiem",
    "id": "1606.09282",
    "citation": (
        "@article{li2017learning,\n  title={Learning without Forgetting},\n  author={Li, Zhizhong and Hoiem, Derek},\n"
        "  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},\n  volume={40},\n  number={12},\n"
        "  pages={2935--2947},\n  year={2017}\n}"
    ),
}


class LwFTrainer(CLIPCLTrainer):
    r"""Learning without Forgetting (Li & Hoiem 2017) for CLIP, as the baseline of Ding et al. (2022).

    The loss of a batch is

    `CE(s, y) + lwf_alpha * T^2 * KL(softmax(t / T) || softmax(s / T))`

    with student logits `s = exp(logit_scale) * f_img(x) · f_txt(prompt(c))` over the distilled classes `c` and
    teacher logits `t`, computed the same way by the teacher (the frozen model at the start of the session) with its
    own logit scale. The teacher's class-prompt features are computed once per session; its image features once per
    step.

    Which classes are distilled: by default the session's own classes (the cross-entropy's classes). Pass
    `distill_class_names` (e.g. every class seen so far in an MST protocol, as CL-CLIP's official code does) to
    distil the teacher's distribution over more classes: their prompts go through the student's text encoder in the
    same forward call as the session's prompts (see [`CLIPCLTrainer.extra_text_tokens`]), and the session's classes
    are always included.

    Args:
        model, args, train_dataset, processing_class, class_names, class_ids, teacher_model, **kwargs:
            as [`CLIPCLTrainer`]; `args` is an [`LwFConfig`].
        distill_class_names (`Sequence[str]`, *optional*): the classes whose logits are distilled (the session's
            classes are added if missing). Defaults to the session's classes.

    Example:
    ```python
    from clip_cl import LwFConfig, LwFTrainer, tiny_clip

    model, processor = tiny_clip()
    args = LwFConfig(output_dir="runs/lwf", num_train_epochs=1, per_device_train_batch_size=8)
    trainer = LwFTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                         class_names=["T-shirt/top", "trouser"], class_ids=[0, 1])
    trainer.train()
    ```
    """

    _name = "LwF"
    _method = "lwf"
    _tag_names: ClassVar[list[str]] = ["clip-cl", "continual-learning", "clip", "lwf", "distillation"]
    _paper: ClassVar[dict] = LWF_PAPER
    _uses_teacher = True
    # The runner may pass `distill_class_names` (the classes seen so far) to trainers that declare this.
    _accepts_distill_class_names: ClassVar[bool] = True

    def __init__(self, model, args, train_dataset=None, processing_class=None,
                 class_names: Sequence[str] | None = None, class_ids: Sequence[int] | None = None,
                 teacher_model=None, distill_class_names: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         class_names=class_names, class_ids=class_ids, teacher_model=teacher_model, **kwargs)
        session = set(self.class_names)
        extra = [] if distill_class_names is None else [str(c) for c in distill_class_names]
        # Classes distilled besides the session's own (in the given order, without duplicates).
        self.old_class_names: list[str] = [c for c in dict.fromkeys(extra) if c not in session]
        self.distill_class_names_given = distill_class_names is not None
        self._old_prompts = format_prompts(self.old_class_names, args.train_templates) if self.old_class_names else []
        self._old_tokens: dict[str, torch.Tensor] | None = None
        self._teacher_distill_cache: torch.Tensor | None = None

    # ------------------------------------------------------------------ the distilled classes
    @property
    def distill_class_names(self) -> list[str]:
        """The classes whose logits are distilled, in logit order: the session's, then the old ones."""
        return self.class_names + self.old_class_names

    def old_class_tokens(self, device) -> dict[str, torch.Tensor] | None:
        """Tokenised prompts of the old classes (tokenised once), or None when only the session's are distilled."""
        if not self._old_prompts:
            return None
        if self._old_tokens is None or self._old_tokens["input_ids"].device != torch.device(device):
            self._old_tokens = tokenize(self.clip_tokenizer, self._old_prompts, device)
        return self._old_tokens

    def extra_text_tokens(self, model) -> dict[str, torch.Tensor] | None:
        return self.old_class_tokens(self.args.device)

    def num_old_texts(self) -> int:
        """How many of the student's extra texts are old-class prompts (they come first)."""
        return len(self._old_prompts)

    @torch.no_grad()
    def teacher_distill_features(self) -> torch.Tensor:
        """Teacher's normalised class-prompt features `[K, D]` of [`distill_class_names`], once per session."""
        if not self.old_class_names:
            return self.teacher_class_features()
        if self._teacher_distill_cache is None:
            self._teacher_distill_cache = class_text_features(
                self.teacher, self.clip_tokenizer, self.distill_class_names, self.args.train_templates,
                device=self.args.device)
        return self._teacher_distill_cache

    def distill_logits(self, outputs: StudentOutputs, teacher_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher image-to-class-prompt logits `[B, K]` over [`distill_class_names`].

        Args:
            outputs ([`StudentOutputs`]): the student forward of the step.
            teacher_image (`torch.Tensor`): `[B, D]` teacher's normalised image features of the batch.

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: `(student_logits, teacher_logits)`, each with its model's logit scale.
        """
        student = outputs.logits
        n_old = self.num_old_texts()
        if n_old:
            old = outputs.extra_embeds[:n_old]
            n_templates = self._templates_count()
            if n_templates > 1:
                old = F.normalize(old.view(len(self.old_class_names), n_templates, -1).mean(1), dim=-1)
            student = torch.cat([student, outputs.logit_scale * outputs.image_embeds @ old.t()], dim=1)
        teacher = self.teacher_logit_scale() * teacher_image @ self.teacher_distill_features().t()
        return student, teacher

    # ------------------------------------------------------------------ the loss
    def method_losses(self, model, inputs: dict, outputs: StudentOutputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{"lwf": lwf_alpha * kd_kl_loss(student, teacher, lwf_temperature)}`."""
        teacher_image = self.teacher_image_features(inputs["pixel_values"])
        student, teacher = self.distill_logits(outputs, teacher_image)
        return {"lwf": self.args.lwf_alpha * kd_kl_loss(student, teacher, self.args.lwf_temperature)}
