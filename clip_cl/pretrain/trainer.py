"""`CLIPPretrainTrainer`: CLIP's contrastive pretraining (symmetric InfoNCE, learnable temperature) on the HF Trainer."""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from ..methods.base.trainer import unwrap
from .config import PretrainConfig

__all__ = ["CLIP_PAPER", "CLIPPretrainTrainer", "TimeBudgetCallback", "clip_contrastive_loss", "positive_targets"]

CLIP_PAPER = {
    "title": "Learning Transferable Visual Models From Natural Language Supervision",
    "authors": "Alec Radford, Jong Wook Kim, Chris Hallacy, Aditya Ramesh, Gabriel Goh, Sandhini Agarwal, Girish "
               "Sastry, Amanda Askell, Pamela Mishkin, Jack Clark, Gretchen Krueger, Ilya Sutskever",
    "id": "2103.00020",
    "citation": (
        "@inproceedings{radford2021learning,\n  title={Learning Transferable Visual Models From Natural Language "
        "Supervision},\n  author={Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, "
        "Gabriel and Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and "
        "Krueger, Gretchen and Sutskever, Ilya},\n  booktitle={ICML},\n  year={2021}\n}"
    ),
}


def positive_targets(positive_groups: torch.Tensor) -> torch.Tensor:
    """Row-normalised target distribution of the multi-positive loss.

    Args:
        positive_groups (`torch.Tensor` of shape `[B]`): group id of each pair; pairs with equal ids are positives.

    Returns:
        `torch.Tensor` of shape `[B, B]`: `T[i, j] = 1 / |P(i)|` if `j` is in `P(i) = {j : g_j = g_i}`, else 0
        (each row sums to 1; the identity when all ids differ). `T` is symmetric because "same group" is.
    """
    groups = positive_groups.reshape(-1)
    same = (groups[:, None] == groups[None, :]).float()
    return same / same.sum(1, keepdim=True)


def clip_contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float,
                          positive_groups: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss over a batch of paired image and text embeddings.

    With `logits = logit_scale * image_embeds @ text_embeds.T`, the loss is the mean of the image-to-text
    cross-entropy (rows of `logits`) and the text-to-image cross-entropy (columns). Without `positive_groups`, the
    target of pair `i` is its own text/image (Radford et al. 2021). With `positive_groups`, the target of row `i` is
    uniform over its positives `P(i) = {j : g_j = g_i}` (a soft-target cross-entropy, as in UniCL):
    `L_i2t = -1/B sum_i 1/|P(i)| sum_{j in P(i)} log softmax_j(logits[i, :])`, and `L_t2i` likewise on the columns.
    This stops a batch holding two cat images with the texts "a photo of a cat." and "a blurry photo of a cat."
    from pushing each cat image away from the other's text. When all group ids differ it is exactly the plain loss.

    Args:
        image_embeds (`torch.Tensor` of shape `[B, D]`): L2-normalised image embeddings.
        text_embeds (`torch.Tensor` of shape `[B, D]`): L2-normalised text embeddings; row `i` is paired with image `i`.
        logit_scale (`torch.Tensor` or `float`): the multiplier `exp(t)` (already exponentiated and clamped).
        positive_groups (`torch.Tensor` of shape `[B]`, *optional*): group ids for the multi-positive loss.

    Returns:
        `torch.Tensor`: the scalar loss `(L_i2t + L_t2i) / 2`.
    """
    if image_embeds.shape != text_embeds.shape or image_embeds.dim() != 2:
        raise ValueError(f"image_embeds and text_embeds must both be [B, D], got {tuple(image_embeds.shape)} and "
                         f"{tuple(text_embeds.shape)}.")
    dtype = torch.promote_types(image_embeds.dtype, torch.float32)  # half-precision features are scored in float32
    logits = logit_scale * image_embeds.to(dtype) @ text_embeds.to(dtype).T
    if positive_groups is None:
        targets = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    if positive_groups.numel() != len(logits):
        raise ValueError(f"positive_groups has {positive_groups.numel()} ids for a batch of {len(logits)}.")
    targets = positive_targets(positive_groups.to(logits.device))
    i2t = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(targets * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


class TimeBudgetCallback(TrainerCallback):
    """Stops training once `max_minutes` of wall-clock have passed since the first step (a safety net on shared
    machines: the step budget is the plan, this keeps a slowed-down run from overrunning)."""

    def __init__(self, max_minutes: float):
        self.max_seconds = float(max_minutes) * 60.0
        self.start: float | None = None
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is not None and time.perf_counter() - self.start > self.max_seconds:
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


class CLIPPretrainTrainer(Trainer):
    """Contrastive pretraining of a `CLIPModel` from scratch.

    Each batch holds `B` image-text pairs (see [`WorldTrainDataset`] and [`PretrainCollator`]): images and texts are
    encoded by the model's forward (so DDP wrappers see the call), and the loss is [`clip_contrastive_loss`] with the
    learnable temperature `exp(logit_scale)`. As in CLIP, `logit_scale` is clamped to `[0, ln(max_logit_scale)]`
    before every step, so the multiplier never exceeds 100 (also in the saved model). With `multi_positive`, pairs
    whose texts describe the same class (any template), or are the identical caption, are positives of each other.
    The contrastive batch is the per-device batch (features are not gathered across processes).

    Weight decay follows OpenCLIP: biases, LayerNorm weights, the class embedding and `logit_scale` (every tensor
    with fewer than 2 dimensions) are not decayed.

    Args:
        model (`CLIPModel`): the model to train, in float32.
        args ([`PretrainConfig`]): the configuration.
        **kwargs: passed to `transformers.Trainer` (`train_dataset`, `data_collator`, `processing_class`, ...).
    """

    _name: ClassVar[str] = "CLIP pretraining"
    _tag_names: ClassVar[list[str]] = ["clip-cl", "clip", "contrastive-pretraining"]
    _paper: ClassVar[dict] = CLIP_PAPER

    # compute_loss returns the mean over the micro-batch; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: PretrainConfig, **kwargs: Any):
        if not isinstance(args, PretrainConfig):
            raise TypeError(f"CLIPPretrainTrainer needs a PretrainConfig, got {type(args).__name__}.")
        super().__init__(model=model, args=args, **kwargs)
        self._last_logit_scale: float | None = None

    def _set_signature_columns_if_needed(self):
        # The collator's keys (pixel_values, input_ids, attention_mask, positive_groups) are not all in
        # CLIPModel.forward's signature; nothing may be dropped.
        self._signature_columns = ["pixel_values", "input_ids", "attention_mask", "positive_groups"]

    def get_decay_parameter_names(self, model) -> list[str]:
        """Names of the parameters that weight decay applies to: every tensor with at least 2 dimensions."""
        return [n for n, p in model.named_parameters() if p.dim() >= 2 and "logit_scale" not in n]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        clip = unwrap(model)
        with torch.no_grad():
            clip.logit_scale.clamp_(0.0, math.log(self.args.max_logit_scale))
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                        pixel_values=inputs["pixel_values"], return_loss=False)
        groups = inputs.get("positive_groups") if self.args.multi_positive else None
        scale = clip.logit_scale.exp()
        loss = clip_contrastive_loss(outputs.image_embeds, outputs.text_embeds, scale, groups)
        self._last_logit_scale = float(scale.detach())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._last_logit_scale is not None and "loss" in logs:
            logs["logit_scale"] = round(self._last_logit_scale, 3)
        super().log(logs, start_time)
