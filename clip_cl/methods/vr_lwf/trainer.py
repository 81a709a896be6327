"""`VRLwFTrainer`: LwF with Vocabulary Replay (Ding et al. 2022), the method of the paper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ...adapters import get_adapter
from ...features import concat_tokens, text_features
from ...losses import kd_kl_loss, sample_pseudo_texts
from ...seeding import keyed_generator
from ..base.trainer import PAPER, StudentOutputs, teacher_call, unwrap
from ..lwf.trainer import LwFTrainer

__all__ = ["VRLwFTrainer"]

# Chunk size of the teacher's one-off encoding of a pseudo-class pool.
_POOL_CHUNK = 1024


class VRLwFTrainer(LwFTrainer):
    r"""VR-LwF: Learning without Forgetting with Vocabulary Replay (Ding et al. 2022).

    Every training step draws `M` pseudo-classes, each `[bos, w_1..w_L, eos]` with `w_i` uniform over the
    vocabulary without special tokens. With `p` the image-to-pseudo-text distributions (each model with its own
    logit scale and the same pseudo-texts),

    `L_VR = T^2 * KL(p_teacher || p_student)`,  and the loss is
    `CE + vr_lambda * L_VR` (OST) or `CE + vr_lambda * (L_LwF + L_VR)` (MST),

    where `L_LwF` is [`LwFTrainer`]'s KL on the class-prompt logits. The pseudo-texts go through the student's text
    encoder in the same forward call as the class prompts (one student text-encoder call per step) and through the
    teacher's text encoder in one call (none with `vr_pool_size`, whose teacher features are computed once per
    session).

    Draws are reproducible and resumable: the generator of a micro-batch is seeded from (`vr_seed` or `seed`, global
    step, micro-batch index inside the step), so nothing needs saving in checkpoints. All processes of a distributed
    run draw the same pseudo-classes (one set per global batch, as on one GPU).

    In MST, `L_LwF` covers the session's classes, or [`LwFTrainer`]'s `distill_class_names` when given (the runner
    can pass every class seen so far, as CL-CLIP does); when those are given and hold no class before this session
    (the first session), `L_LwF` is left out, as in CL-CLIP's code.

    Args:
        model, args, train_dataset, processing_class, class_names, class_ids, teacher_model, distill_class_names,
        **kwargs: as [`LwFTrainer`]; `args` is a [`VRLwFConfig`].
    """

    _name = "VR-LwF"
    _method = "vr_lwf"
    _tag_names: ClassVar[list[str]] = ["clip-cl", "continual-learning", "clip", "vr-lwf", "distillation"]
    _paper: ClassVar[dict] = PAPER

    def __init__(self, model, args, train_dataset=None, processing_class=None,
                 class_names: Sequence[str] | None = None, class_ids: Sequence[int] | None = None,
                 teacher_model=None, distill_class_names: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         class_names=class_names, class_ids=class_ids, teacher_model=teacher_model,
                         distill_class_names=distill_class_names, **kwargs)
        # The family's text rules (start / end tokens, sampleable ids without special, padding and unused ids,
        # padding to a fixed length for SigLIP) come from the model's adapter.
        bare = unwrap(self.model)
        self._pseudo_rules = get_adapter(bare).pseudo_text_rules(self.clip_tokenizer, bare)
        rules = self._pseudo_rules
        framed = len(rules.prefix) + args.vr_pseudo_length + len(rules.suffix)
        max_len = get_adapter(bare).text_length(self.clip_tokenizer, bare)
        if framed > max_len:
            raise ValueError(f"vr_pseudo_length + {len(rules.prefix) + len(rules.suffix)} = {framed} exceeds the text "
                             f"encoder's context length {max_len}.")
        self._vr_seed = args.seed if args.vr_seed is None else args.vr_seed
        # Memory for time on the pseudo-texts' own student call (see `CLIPCLTrainer.extra_text_features`).
        self._recompute_extra_texts = bool(args.vr_recompute_pseudo_texts)
        self._step_pseudo: dict[str, torch.Tensor] | None = None
        self._step_pool_index: torch.Tensor | None = None
        # L_LwF is part of the MST loss, except in a first session known to have no earlier classes (CL-CLIP).
        self.use_lwf = args.protocol == "mst" and not (self.distill_class_names_given and not self.old_class_names)
        self._pool_tokens: dict[str, torch.Tensor] | None = None
        self._pool_teacher: torch.Tensor | None = None
        if args.vr_pool_size:
            self._build_pool(args.vr_pool_size)
        if self.use_lwf:
            self.teacher_distill_features()  # once per session, before the first step

    # ------------------------------------------------------------------ pseudo-classes
    def _generator(self, *key: int) -> torch.Generator:
        """A CPU generator seeded from (vr_seed, *key), well mixed by numpy's SeedSequence."""
        return keyed_generator(self._vr_seed, *key)

    def sample_pseudo_tokens(self, num: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`num` pseudo-class token sequences on CPU, framed and padded by the family's rules (CLIP:
        `[bos, w_1..w_L, eos]`; SigLIP: `[w_1..w_L, </s>]` padded to 64) ([`clip_cl.losses.sample_pseudo_texts`])."""
        rules = self._pseudo_rules
        return sample_pseudo_texts(num, self.args.vr_pseudo_length, rules.allowed, rules.prefix, rules.suffix,
                                   rules.pad_id, rules.length, rules.padding_side, generator=generator)

    @torch.no_grad()
    def _build_pool(self, size: int) -> None:
        """Draw the session's pool and encode it once with the teacher."""
        tokens = self.sample_pseudo_tokens(size, self._generator(0x7FFFFFFF, 0x7FFFFFFF))
        device = self.args.device
        self._pool_tokens = {k: v.to(device) for k, v in tokens.items()}
        feats = [text_features(self.teacher, self._pool_tokens["input_ids"][i:i + _POOL_CHUNK],
                               self._pool_tokens["attention_mask"][i:i + _POOL_CHUNK]).float()
                 for i in range(0, size, _POOL_CHUNK)]
        self._pool_teacher = torch.cat(feats)

    def draw_pseudo_classes(self, model) -> dict[str, torch.Tensor]:
        """The step's `M` pseudo-class tokens (on the training device); remembered for the teacher side."""
        generator = self._generator(*self.micro_batch_key(model))
        m = self.args.vr_num_pseudo_classes
        if self._pool_tokens is not None:
            index = torch.randperm(self._pool_tokens["input_ids"].shape[0], generator=generator)[:m]
            index = index.to(self._pool_tokens["input_ids"].device)
            tokens = {k: v[index] for k, v in self._pool_tokens.items()}
            self._step_pool_index = index
        else:
            tokens = {k: v.to(self.args.device) for k, v in self.sample_pseudo_tokens(m, generator).items()}
            self._step_pool_index = None
        self._step_pseudo = tokens
        return tokens

    def extra_text_tokens(self, model) -> dict[str, torch.Tensor]:
        """Old-class prompts (MST with `distill_class_names`) then the step's pseudo-classes, for one student call."""
        pseudo = self.draw_pseudo_classes(model)
        old = self.old_class_tokens(self.args.device) if self.use_lwf else None
        return pseudo if old is None else concat_tokens(old, pseudo, self.clip_tokenizer.pad_token_id)

    def num_old_texts(self) -> int:
        return super().num_old_texts() if self.use_lwf else 0

    def teacher_pseudo_features(self) -> torch.Tensor:
        """Teacher's normalised features `[M, D]` of the step's pseudo-classes: one teacher text call (in inference
        mode), or a look-up in the pool's cached features."""
        if self._step_pool_index is not None:
            return self._pool_teacher[self._step_pool_index]
        mask = self._step_pseudo.get("attention_mask")
        if mask is not None and mask.device.type == "cpu" and bool(mask.all()):
            mask = None  # no padding (CLIP's pseudo-texts all have one length): the same features, faster without
        return teacher_call(text_features, self.teacher, self._step_pseudo["input_ids"], mask)

    # ------------------------------------------------------------------ the loss
    def method_losses(self, model, inputs: dict, outputs: StudentOutputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{"vr": vr_lambda * L_VR}` (OST), plus `"lwf": vr_lambda * L_LwF` (MST)."""
        args = self.args
        teacher_image = self.teacher_image_features(inputs["pixel_values"])
        student_pseudo = outputs.extra_embeds[self.num_old_texts():]
        student_logits = outputs.logit_scale * outputs.image_embeds @ student_pseudo.t()
        teacher_logits = self.teacher_logit_scale() * teacher_image @ self.teacher_pseudo_features().t()
        terms = {"vr": args.vr_lambda * kd_kl_loss(student_logits, teacher_logits, args.vr_temperature)}
        if self.use_lwf:
            student, teacher = self.distill_logits(outputs, teacher_image)
            terms["lwf"] = args.vr_lambda * kd_kl_loss(student, teacher, args.vr_temperature)
        return terms
