from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from ...merging import assign_parameters, fisher_weighted_merge, interpolate_state_dicts, trainable_state
from ..base.trainer import CLIPCLTrainer, unwrap
from .config import IMMConfig

__all__ = ["IMMTrainer", "IMM_PAPER", "diagonal_fisher"]

IMM_PAPER = {
    "title": "Overcoming Catastrophic Forgetting by Incremental Moment Matching",
    "authors": "Sang-Woo Lee, Jin-Hwa Kim, Jaehyun Jun, Jung-Woo Ha, Byoung-Tak Zhang",
    "id": "1703.08475",
    "citation": (
        "@inproceedings{lee2017overcoming,\n"
        "  title={Overcoming Catastrophic Forgetting by Incremental Moment Matching},\n"
        "  author={Lee, Sang-Woo and Kim, Jin-Hwa and Jun, Jaehyun and Ha, Jung-Woo and Zhang, Byoung-Tak},\n"
        "  booktitle={Advances in Neural Information Processing Systems},\n  year={2017}\n}"
    ),
}


def diagonal_fisher(
    log_probs_fn: Callable[[torch.Tensor], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    inputs: Sequence[torch.Tensor],
    labels: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information `E_x E_y [(d log p(y|x) / d theta)^2]`, from per-example gradients.

    Args:
        log_probs_fn (`Callable`): maps one input to the log-probabilities `[C]` (or `[1, C]`) of the classes,
            differentiably in `params`.
        params (`Mapping[str, Tensor]`): the parameters (requiring grad) whose Fisher is wanted.
        inputs (`Sequence[Tensor]`): the examples, one at a time (each is passed to `log_probs_fn` as is).
        labels (`Sequence[int]`, *optional*): the label of each example (the *empirical* Fisher). Without it, one
            label per example is sampled from the model's own prediction (the *true* Fisher, as in EWC and IMM).
        generator (`torch.Generator`, *optional*): a CPU generator for the sampled labels (reproducibility).

    Returns:
        `dict[str, Tensor]`: `name -> float32 tensor` of the parameter's shape: the mean over the examples of the
        squared gradient of `log p(y|x)`. Parameters that get no gradient have a zero Fisher.
    """
    if len(inputs) == 0:
        raise ValueError("diagonal_fisher needs at least one example.")
    if labels is not None and len(labels) != len(inputs):
        raise ValueError(f"diagonal_fisher got {len(labels)} labels for {len(inputs)} examples.")
    names = list(params)
    tensors = [params[n] for n in names]
    fisher = {n: torch.zeros_like(t, dtype=torch.float32) for n, t in zip(names, tensors)}
    for i, x in enumerate(inputs):
        log_probs = log_probs_fn(x).reshape(-1)
        if labels is None:
            probs = log_probs.detach().float().exp().cpu()
            y = int(torch.multinomial(probs, 1, generator=generator).item())
        else:
            y = int(labels[i])
        grads = torch.autograd.grad(log_probs[y], tensors, allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                fisher[n] += g.detach().float().pow(2)
    return {n: f / len(inputs) for n, f in fisher.items()}


class IMMTrainer(CLIPCLTrainer):
    """Incremental Moment Matching (IMM, Lee et al. 2017), the weight-merging baseline of Ding et al. 2022.

    A session trains exactly like FT (cross-entropy over the session's classes). When training ends
    ([`on_session_end`], called by `train()`), the trainable weights are merged with the weights the session
    started from (the previous session's model, or the original CLIP in session 1):

    - mean-IMM (`imm_mode="mean"`, the paper's): `theta = imm_alpha * theta_finetuned + (1 - imm_alpha) *
      theta_previous`;
    - mode-IMM (`imm_mode="mode"`): each scalar weighted by its diagonal Fisher,
      `theta = (a F_new theta_new + (1 - a) F_prev theta_prev) / (a F_new + (1 - a) F_prev)`, both Fishers being those
      of the classification log-likelihood over the session's classes, estimated on the same `imm_fisher_samples`
      training examples of the session (the data of earlier sessions is not available, so the previous model's
      Fisher is also measured on the current session's examples).

    Frozen tensors (the other tower under IO/TO) are equal in both models and are left untouched. `trainer.model`
    holds the merged weights after `train()`, so the runner evaluates and continues from the merged model.

    Example:
    ```python
    from clip_cl import IMMConfig, IMMTrainer, tiny_clip

    model, processor = tiny_clip()
    args = IMMConfig(output_dir="runs/imm", num_train_epochs=1, per_device_train_batch_size=8, imm_alpha=0.5)
    trainer = IMMTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                         class_names=["T-shirt/top", "trouser"], class_ids=[0, 1])
    trainer.train()  # trains, then merges: trainer.model is the IMM model
    ```
    """

    _name: ClassVar[str] = "IMM"
    _method: ClassVar[str] = "imm"
    _paper: ClassVar[dict] = IMM_PAPER
    _tag_names: ClassVar[list[str]] = ["clip-cl", "continual-learning", "clip", "imm", "model-merging"]

    def __init__(self, model, args, *pargs, **kwargs):
        if not isinstance(args, IMMConfig):
            raise TypeError(f"IMMTrainer needs an IMMConfig, got {type(args).__name__}.")
        super().__init__(model, args, *pargs, **kwargs)

    def _snapshot_initial_state(self, model) -> dict[str, torch.Tensor]:
        # Taken before variant freezing, so all parameters: the merge later picks the trainable ones.
        return {n: p.detach().to("cpu", copy=True) for n, p in unwrap(model).named_parameters()}

    # ------------------------------------------------------------------ merge
    def on_session_end(self) -> None:
        """Replace the trainable weights by the IMM merge of the fine-tuned and the starting weights."""
        model = unwrap(self.model)
        finetuned = trainable_state(model)
        previous = {n: self._initial_state[n] for n in finetuned}
        if self.args.imm_mode == "mean":
            merged = interpolate_state_dicts(finetuned, previous, self.args.imm_alpha)
        else:
            examples, labels = self._fisher_examples()
            self.fisher_finetuned = self.estimate_fisher(examples, labels)
            assign_parameters(model, previous)
            self.fisher_previous = self.estimate_fisher(examples, labels)
            merged = fisher_weighted_merge(finetuned, previous, self.fisher_finetuned, self.fisher_previous,
                                           alpha=self.args.imm_alpha, eps=self.args.imm_fisher_eps)
        assign_parameters(model, merged)

    # ------------------------------------------------------------------ Fisher (mode-IMM)
    def _fisher_examples(self) -> tuple[list[torch.Tensor], list[int]]:
        """This process's share of `imm_fisher_samples` training examples (CPU), with their session positions."""
        quota = math.ceil(self.args.imm_fisher_samples / max(1, self.accelerator.num_processes))
        pixels: list[torch.Tensor] = []
        labels: list[int] = []
        for batch in self.get_train_dataloader():
            targets = self.map_labels(batch["labels"]).tolist()
            for x, y in zip(self.model_pixels(batch["pixel_values"]), targets):
                pixels.append(x.detach().to("cpu"))
                labels.append(int(y))
                if len(pixels) >= quota:
                    return pixels, labels
        if not pixels:
            raise ValueError("Mode-IMM found no training example to estimate the Fisher information on.")
        return pixels, labels

    def estimate_fisher(self, examples: Sequence[torch.Tensor], labels: Sequence[int]) -> dict[str, torch.Tensor]:
        """Diagonal Fisher of the current weights of the trainable parameters, averaged over processes.

        Args:
            examples (`Sequence[Tensor]`): `[3, H, W]` images of the session.
            labels (`Sequence[int]`): their positions in `class_names` (used when `imm_fisher_type="empirical"`).

        Returns:
            `dict[str, Tensor]`: `name -> float32` Fisher on the parameters' device.
        """
        model = unwrap(self.model)
        device = next(model.parameters()).device
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        generator = torch.Generator().manual_seed(self.args.seed + self.accelerator.process_index)
        was_training = model.training
        model.eval()

        def log_probs(x: torch.Tensor) -> torch.Tensor:
            out = self.student_forward(model, x.unsqueeze(0).to(device))
            return F.log_softmax(out.logits.float(), dim=-1)

        try:
            with torch.enable_grad():
                fisher = diagonal_fisher(log_probs, params, examples,
                                         labels=labels if self.args.imm_fisher_type == "empirical" else None,
                                         generator=generator)
        finally:
            model.train(was_training)
        if self.accelerator.num_processes > 1:
            fisher = {n: self.accelerator.reduce(f, reduction="mean") for n, f in fisher.items()}
        return fisher
