"""`RKRTrainer`: fine-tune rectifiers only, merge them into the weights at the end of every session."""

from __future__ import annotations

import logging

from ...variants import tower_of
from ...tuners.rkr import inject_rkr, merge_rkr, rkr_layers
from ..base.trainer import PAPER, CLIPCLTrainer, unwrap
from .config import RKRConfig

__all__ = ["RKRTrainer", "RKR_PAPER"]

logger = logging.getLogger(__name__)

RKR_PAPER = {
    "title": "Rectification-based Knowledge Retention for Continual Learning",
    "authors": "Pravendra Singh, Pratik Mazumder, Piyush Rai, Vinay P. Namboodiri",
    "id": "2103.16597",
    "citation": (
        "@inproceedings{singh2021rectification,\n  title={Rectification-based Knowledge Retention for Continual "
        "Learning},\n  author={Singh, Pravendra and Mazumder, Pratik and Rai, Piyush and Namboodiri, Vinay P.},\n"
        "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n"
        "  pages={15282--15291},\n  year={2021}\n}\n\n" + PAPER["citation"]
    ),
}


class RKRTrainer(CLIPCLTrainer):
    """RKR: the session trains only low-rank weight rectifications and per-channel output scalings.

    Every selected `nn.Linear` of the trainable tower(s) (`variant`) becomes `y = s * (W x + B A x + b)` with
    `B A` of rank `rkr_rank` (zero at the start) and `s` (one at the start), so the session starts exactly at the
    model it was given; all original weights stay frozen and the loss is plain cross-entropy (no teacher). When the
    session ends the rectifiers are merged (`W <- s * (W + B A)`, `b <- s * b`) and removed, so `trainer.model` is a
    plain model again: the runner saves ordinary safetensors and the next session's trainer adds fresh
    rectifiers on top. Trainer checkpoints written *during* a session (for resuming) hold the base weights plus
    the rectifiers (`...base_layer.weight`, `...rkr_A`, ...); a resumed trainer re-injects before loading them.

    Example:
    ```python
    from clip_cl import RKRConfig, RKRTrainer, tiny_clip

    model, processor = tiny_clip()
    args = RKRConfig(output_dir="runs/rkr", variant="IO", num_train_epochs=1, per_device_train_batch_size=8)
    trainer = RKRTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                         class_names=["T-shirt/top", "trouser"], class_ids=[0, 1])
    trainer.train()  # trainer.model is a plain model again, rectifiers merged
    ```
    """

    _name = "RKR"
    _method = "rkr"
    _tag_names = ["clip-cl", "continual-learning", "clip", "rkr"]
    _paper = RKR_PAPER

    def __init__(self, model, args: RKRConfig, *pargs, **kwargs):
        if not isinstance(args, RKRConfig):
            raise TypeError(f"{type(self).__name__} needs a RKRConfig, got {type(args).__name__}.")
        # CLIPCLTrainer calls prepare_method() before transformers.Trainer.__init__ sets self.args; the method's
        # knobs are needed there, so set it early (Trainer.__init__ sets the same object again).
        self.args = args
        super().__init__(model, args, *pargs, **kwargs)

    def prepare_method(self, model) -> None:
        """Wrap the trainable tower(s)' linear layers in rectifiers (in place) and freeze everything else."""
        bare = unwrap(model)
        # Parameters outside both towers (logit scale, SigLIP's bias) keep what apply_variant set from
        # train_logit_scale; the injection below freezes them.
        outside = {n: p.requires_grad for n, p in bare.named_parameters() if tower_of(n, bare) is None}
        self.rkr_module_names = inject_rkr(bare, self.args.tuner_config())
        for n, p in bare.named_parameters():
            if n in outside:
                p.requires_grad_(outside[n])
        n_train = sum(p.numel() for p in bare.parameters() if p.requires_grad)
        logger.info("RKR: %d layers rectified (rank %d), %d trainable parameters", len(self.rkr_module_names),
                    self.args.rkr_rank, n_train)

    def on_session_end(self) -> None:
        """Merge the rectifiers into the weights and drop them: the model is a plain model of its family again."""
        bare = unwrap(self.model)
        if rkr_layers(bare):
            merge_rkr(bare, unload=True, safe_merge=True)
