"""Reference steps for the step-time benchmark (never used for training).

- `NaiveLwFTrainer`, `NaiveVRLwFTrainer`: LwF and VR-LwF written the way the official CL-CLIP loop computes them:
  the teacher stays in float32 (also on GPU under bf16 mixed precision), re-encodes the class prompts every step
  instead of caching them, and VR-LwF's pseudo-texts go through the student's text encoder in a call of their own
  (two student text calls per step) and through the teacher's text encoder every step. The losses are the same as
  clip-cl's, so only the cost differs.
- `VRLwFOneCallTrainer`: clip-cl's VR-LwF with the pseudo-texts in the class prompts' padded student call (what it
  did on every device before it gave them a call of their own on the CPU), measured side by side with today's.
- `FloorPseudoTrainer`: FT plus what VR-LwF cannot avoid on the student side: the `M` pseudo-texts in the student's
  text-encoder call, and a KL on the image-to-pseudo-text logits against constant targets (forward and backward
  through them). Its step plus the teacher's image forward is VR-LwF's floor.
"""

from __future__ import annotations

import torch

from clip_cl.features import concat_tokens, text_features
from clip_cl.losses import kd_kl_loss
from clip_cl.methods.ft import CLIPFineTuneTrainer
from clip_cl.methods.geodl import GeoDLTrainer
from clip_cl.methods.lwf import LwFTrainer
from clip_cl.methods.vr_lwf import VRLwFTrainer


class NaiveLwFTrainer(LwFTrainer):
    def _teacher_dtype(self) -> torch.dtype:
        return torch.float32

    @torch.no_grad()
    def teacher_distill_features(self) -> torch.Tensor:
        # The official loop encodes the (pre-tokenised) class prompts with the teacher at every step.
        tokens = self.class_tokens(self.args.device)
        return text_features(self.teacher, **tokens).float()

    @torch.no_grad()
    def teacher_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        from clip_cl.features import image_features

        return image_features(self.teacher, pixel_values.float()).float()


class NaiveVRLwFTrainer(VRLwFTrainer):
    def _teacher_dtype(self) -> torch.dtype:
        return torch.float32

    def extra_text_tokens(self, model):
        return None  # the pseudo-texts get a student text call of their own (below)

    @torch.no_grad()
    def teacher_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        from clip_cl.features import image_features

        return image_features(self.teacher, pixel_values.float()).float()

    def method_losses(self, model, inputs, outputs, targets):
        args = self.args
        pseudo = self.draw_pseudo_classes(model)
        # Teacher: class prompts and pseudo-texts re-encoded every step (one call), image features; fp32.
        with torch.no_grad():
            tokens = self.class_tokens(self.args.device)
            n = tokens["input_ids"].shape[0]
            both = concat_tokens(tokens, pseudo, self.clip_tokenizer.pad_token_id)
            teacher_text = text_features(self.teacher, **both).float()
            teacher_pseudo = teacher_text[n:]
            teacher_image = self.teacher_image_features(inputs["pixel_values"])
        with self.accelerator.autocast():
            student_pseudo = text_features(model, **pseudo)
        student_logits = outputs.logit_scale * outputs.image_embeds @ student_pseudo.t()
        teacher_logits = self.teacher_logit_scale() * teacher_image @ teacher_pseudo.t()
        return {"vr": args.vr_lambda * kd_kl_loss(student_logits, teacher_logits, args.vr_temperature)}


class VRLwFOneCallTrainer(VRLwFTrainer):
    def separate_extra_text_call(self, model, extra) -> bool:
        return False


class FloorPseudoTrainer(CLIPFineTuneTrainer):
    """FT + the student's forward and backward over `num_pseudo` fixed pseudo-texts (see the module docstring)."""


    def __init__(self, *args, num_pseudo: int = 100, pseudo_length: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        from clip_cl.losses import sample_pseudo_tokens

        tok = self.clip_tokenizer
        vocab = self.model.config.text_config.vocab_size
        tokens = sample_pseudo_tokens(num_pseudo, pseudo_length, vocab, tok.bos_token_id, tok.eos_token_id,
                                      exclude_ids=tok.all_special_ids, generator=torch.Generator().manual_seed(0))
        self._pseudo = {k: v.to(self.args.device) for k, v in tokens.items()}
        self._targets: torch.Tensor | None = None

    def extra_text_tokens(self, model):
        return self._pseudo

    def method_losses(self, model, inputs, outputs, targets):
        logits = outputs.logit_scale * outputs.image_embeds @ outputs.extra_embeds.t()
        if self._targets is None or self._targets.shape != logits.shape:
            g = torch.Generator().manual_seed(1)
            self._targets = torch.randn(logits.shape, generator=g).to(logits.device)
        return {"vr": 0.5 * kd_kl_loss(logits, self._targets)}


class GeoDLHostTrainer(GeoDLTrainer):
    """Variant (GPU only): GeoDL's loss, SVDs included, computed on the host in float64 instead of on the GPU."""

    def _geodl(self, student, teacher):
        if student.device.type == "cpu":
            return super()._geodl(student, teacher)
        return super()._geodl(student.float().cpu(), teacher.float().cpu()).to(student.device)
