from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from ...merging import assign_parameters, interpolate_state_dicts, trainable_state
from ..base.trainer import CLIPCLTrainer, unwrap
from .config import WiSEFTConfig

__all__ = ["WiSEFTTrainer", "WISE_FT_PAPER"]

WISE_FT_PAPER = {
    "title": "Robust fine-tuning of zero-shot models",
    "authors": "Mitchell Wortsman, Gabriel Ilharco, Jong Wook Kim, Mike Li, Simon Kornblith, Rebecca Roelofs, "
               "Raphael Gontijo Lopes, Hannaneh Hajishirzi, Ali Farhadi, Hongseok Namkoong, Ludwig Schmidt",
    "id": "2109.01903",
    "citation": (
        "@inproceedings{wortsman2022robust,\n  title={Robust fine-tuning of zero-shot models},\n"
        "  author={Wortsman, Mitchell and Ilharco, Gabriel and Kim, Jong Wook and Li, Mike and Kornblith, Simon and "
        "Roelofs, Rebecca and Gontijo Lopes, Raphael and Hajishirzi, Hannaneh and Farhadi, Ali and Namkoong, "
        "Hongseok and Schmidt, Ludwig},\n  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and "
        "Pattern Recognition (CVPR)},\n  year={2022}\n}"
    ),
}


def _headline(results: dict) -> tuple[float | None, float | None]:
    """`(ut_acc, zs_acc)` of an evaluation result (as in `Evaluator.summary_row`)."""
    ut = results.get("ut") or {}
    zs = [r["top1"] for r in (results.get("zero_shot") or {}).values()]
    return ut.get("acc"), (sum(zs) / len(zs) if zs else None)


class WiSEFTTrainer(CLIPCLTrainer):
    """WiSE-FT (Wortsman et al. 2022): fine-tune, then interpolate the weights with the session's starting model.

    A session trains exactly like FT. When training ends ([`on_session_end`], called by `train()`), the trainable
    weights become `(1 - wise_alpha) * theta_start + wise_alpha * theta_finetuned`, where `theta_start` is the model
    the session started from (the original CLIP in session 1, the previous session's WiSE-FT model afterwards) and
    `alpha` is the weight of the fine-tuned model, as in the WiSE-FT paper. Frozen tensors are left untouched.

    [`extra_evaluations`] evaluates every coefficient of `wise_alphas` (the UT-Acc vs ZS-Acc trade-off) and then
    restores the `wise_alpha` model exactly, so what the runner saves and continues from does not depend on the sweep.

    Example:
    ```python
    from clip_cl import WiSEFTConfig, WiSEFTTrainer, tiny_clip

    model, processor = tiny_clip()
    args = WiSEFTConfig(output_dir="runs/wise", num_train_epochs=1, per_device_train_batch_size=8, wise_alpha=0.5)
    trainer = WiSEFTTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                            class_names=["T-shirt/top", "trouser"], class_ids=[0, 1])
    trainer.train()                              # trainer.model is the alpha = 0.5 model
    sweep = trainer.extra_evaluations(evaluate)  # {"wise_sweep": [{"alpha": 0.0, "ut_acc": ..., ...}, ...]}
    ```
    """

    _name: ClassVar[str] = "WiSE-FT"
    _method: ClassVar[str] = "wise_ft"
    _paper: ClassVar[dict] = WISE_FT_PAPER
    _tag_names: ClassVar[list[str]] = ["clip-cl", "continual-learning", "clip", "wise-ft", "model-merging"]

    # The session's fine-tuned trainable weights (CPU), kept by on_session_end for the alpha sweep.
    finetuned_state: dict[str, torch.Tensor] | None = None

    def __init__(self, model, args, *pargs, **kwargs):
        if not isinstance(args, WiSEFTConfig):
            raise TypeError(f"WiSEFTTrainer needs a WiSEFTConfig, got {type(args).__name__}.")
        super().__init__(model, args, *pargs, **kwargs)

    def _snapshot_initial_state(self, model) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True) for n, p in unwrap(model).named_parameters()}

    def interpolated(self, alpha: float) -> dict[str, torch.Tensor]:
        """The trainable weights at coefficient `alpha`: `(1 - alpha) * start + alpha * finetuned`.

        Args:
            alpha (`float`): weight of the fine-tuned model.

        Returns:
            `dict[str, Tensor]`: `name -> tensor` (CPU) for the trainable parameters.
        """
        if self.finetuned_state is None:
            raise RuntimeError("No fine-tuned weights yet: call train() first.")
        start = {n: self._initial_state[n] for n in self.finetuned_state}
        return interpolate_state_dicts(self.finetuned_state, start, alpha)

    def on_session_end(self) -> None:
        """Keep the fine-tuned weights (CPU) and load the `wise_alpha` interpolation into the model."""
        model = unwrap(self.model)
        self.finetuned_state = trainable_state(model, device="cpu")
        assign_parameters(model, self.interpolated(self.args.wise_alpha))

    def extra_evaluations(self, evaluate: Callable) -> dict:
        """Evaluate the interpolated model at every `wise_alphas` coefficient, then restore the `wise_alpha` model.

        Args:
            evaluate (`Callable`): `evaluate(model) -> results dict` (the runner's evaluator for this session).

        Returns:
            `dict`: `{"wise_sweep": [{"alpha", "ut_acc", "zs_acc", "eval"}, ...]}` in the order of `wise_alphas`
            (`ut_acc`/`zs_acc` are the headline numbers of `eval`, `None` where nothing measures them), or `{}` when
            the sweep is off or the session did not train.
        """
        if not self.args.wise_alphas or self.finetuned_state is None:
            return {}
        model = unwrap(self.model)
        current = trainable_state(model, device="cpu")
        sweep = []
        try:
            for alpha in self.args.wise_alphas:
                assign_parameters(model, self.interpolated(alpha))
                results = evaluate(self.model)
                ut_acc, zs_acc = _headline(results)
                sweep.append({"alpha": float(alpha), "ut_acc": ut_acc, "zs_acc": zs_acc, "eval": results})
        finally:
            assign_parameters(model, current)
        return {"wise_sweep": sweep}
