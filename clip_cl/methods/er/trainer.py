"""`ERTrainer`: cross-entropy on the update batch plus the replay loss on a replay draw, in one forward call."""

from __future__ import annotations

from typing import ClassVar

import torch

from ...features import concat_tokens, tokenize
from ...prompts import format_prompts
from ..base.rehearsal import RehearsalTrainer
from ..base.trainer import StudentOutputs

__all__ = ["ERTrainer", "ER_PAPER"]

ER_PAPER = {
    "title": "On Tiny Episodic Memories in Continual Learning",
    "authors": "Arslan Chaudhry, Marcus Rohrbach, Mohamed Elhoseiny, Thalaiyasingam Ajanthan, Puneet K. Dokania, "
               "Philip H. S. Torr, Marc'Aurelio Ranzato",
    "id": "1902.10486",
    "citation": (
        "@article{chaudhry2019tiny,\n  title={On Tiny Episodic Memories in Continual Learning},\n  author={Chaudhry, "
        "Arslan and Rohrbach, Marcus and Elhoseiny, Mohamed and Ajanthan, Thalaiyasingam and Dokania, Puneet K. and "
        "Torr, Philip H. S. and Ranzato, Marc'Aurelio},\n  journal={arXiv preprint arXiv:1902.10486},\n"
        "  year={2019}\n}"
    ),
}


class ERTrainer(RehearsalTrainer):
    r"""Experience replay for CLIP. The loss of a micro-batch is

    `CE(s, y) + replay_weight * [1/2 (CE(S, I) + CE(S^T, I)) + CE(s_mem, y_mem)]`

    with `s` the update batch's logits over the session's class prompts, `S = logit_scale * f_img(replay images) .
    f_txt(replay captions)^T` on the replay pairs (CLIP's contrastive loss), and `s_mem` the logits of memory
    exemplars of earlier sessions over the prompts of every class seen so far. The update batch, the replay images
    and the memory images go through the student in one forward call (one DDP forward per micro-batch), and so do
    the class prompts, the older classes' prompts and the replay captions.

    Args:
        as [`RehearsalTrainer`]; `args` is an [`ERConfig`].

    Example:
    ```python
    from clip_cl import ERConfig, ERTrainer, tiny_clip

    model, processor = tiny_clip()
    args = ERConfig(output_dir="runs/er", protocol="mst", num_sessions=2, per_device_train_batch_size=8)
    trainer = ERTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                        class_names=["T-shirt/top", "trouser"], class_ids=[0, 1], replay_dataset=pairs)
    trainer.train()
    ```
    """

    _name = "ER"
    _method = "er"
    _tag_names: ClassVar[list[str]] = ["clip-cl", "continual-learning", "clip", "er", "rehearsal"]
    _paper: ClassVar[dict] = ER_PAPER

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        n_session = len(self.class_names)
        self._old_prompts = format_prompts(self.seen_class_names[n_session:], self.args.train_templates)
        self._old_tokens: dict[str, torch.Tensor] | None = None
        self._extra_tokens: dict[str, torch.Tensor] | None = None
        self._replay_terms: dict[str, torch.Tensor] = {}

    def extra_text_tokens(self, model):
        return self._extra_tokens

    def _old_class_tokens(self, device) -> dict[str, torch.Tensor] | None:
        if not self._old_prompts:
            return None
        if self._old_tokens is None or self._old_tokens["input_ids"].device != torch.device(device):
            self._old_tokens = tokenize(self.clip_tokenizer, self._old_prompts, device)
        return self._old_tokens

    def student_forward(self, model, pixel_values: torch.Tensor) -> StudentOutputs:
        """The base forward on `[update batch; replay images; memory images]` and `[class prompts; older classes'
        prompts; replay captions]`, split back; the replay terms are kept for [`method_losses`]."""
        if not model.training:
            return super().student_forward(model, pixel_values)
        batch = self.draw(self.next_draw_index())
        if batch.empty:
            self._replay_terms = {}
            return super().student_forward(model, pixel_values)
        device = pixel_values.device
        pad = self.clip_tokenizer.pad_token_id
        old = self._old_class_tokens(device) if batch.memory_pixels is not None else None
        n_old_prompts = 0 if old is None else old["input_ids"].shape[0]
        extra = [t for t in (old, batch.pair_tokens) if t is not None]
        self._extra_tokens = extra[0] if len(extra) == 1 else concat_tokens(extra[0], extra[1], pad)
        pixels = torch.cat([pixel_values] + [t.to(pixel_values.dtype) for t in (batch.pair_pixels, batch.memory_pixels)
                                             if t is not None])
        try:
            out = super().student_forward(model, pixels)
        finally:
            self._extra_tokens = None
        b = pixel_values.shape[0]
        r = 0 if batch.pair_pixels is None else batch.pair_pixels.shape[0]
        images = out.image_embeds
        seen = None
        if batch.memory_pixels is not None:
            seen = out.class_embeds
            if n_old_prompts:
                n_old = len(self.seen_class_names) - len(self.class_names)
                seen = torch.cat([seen, self.ensemble(out.extra_embeds[:n_old_prompts], n_old)])
        self._replay_terms = self.replay_losses(
            images[b:b + r] if r else None, out.extra_embeds[n_old_prompts:] if r else None,
            images[b + r:] if batch.memory_pixels is not None else None, seen, batch.memory_targets,
            out.logit_scale)
        return StudentOutputs(image_embeds=images[:b], class_embeds=out.class_embeds, extra_embeds=None,
                              logit_scale=out.logit_scale, logits=out.logits[:b], logit_bias=out.logit_bias)

    def method_losses(self, model, inputs, outputs, targets) -> dict[str, torch.Tensor]:
        """`{"replay_pairs": w * contrastive, "replay_memory": w * CE_seen}` of this micro-batch's draw."""
        terms, self._replay_terms = self._replay_terms, {}
        return {name: self.args.replay_weight * value for name, value in terms.items()}
