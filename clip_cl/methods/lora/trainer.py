"""`LoRATrainer`: peft LoRA adapters on the trainable tower(s), merged into the weights at the end of each session."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from ...variants import tower_of
from ...tuners.targets import find_linear_targets, towers_of_variant
from ..base.trainer import PAPER, CLIPCLTrainer, unwrap
from .config import LoRAConfig, require_peft

__all__ = ["LoRATrainer", "LORA_PAPER", "inject_lora", "merge_and_unload_lora", "lora_layers"]

logger = logging.getLogger(__name__)

LORA_PAPER = {
    "title": "LoRA: Low-Rank Adaptation of Large Language Models",
    "authors": "Edward J. Hu, Yelong Shen, Phillip Wallis, Zeyuan Allen-Zhu, Yuanzhi Li, Shean Wang, Lu Wang, "
               "Weizhu Chen",
    "id": "2106.09685",
    "citation": (
        "@inproceedings{hu2022lora,\n  title={LoRA: Low-Rank Adaptation of Large Language Models},\n"
        "  author={Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and "
        "Wang, Shean and Wang, Lu and Chen, Weizhu},\n  booktitle={International Conference on Learning "
        "Representations},\n  year={2022}\n}\n\n" + PAPER["citation"]
    ),
}


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """peft tuner layers (LoRA-wrapped modules) of a model by name; empty if peft is not installed."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def inject_lora(model: nn.Module, towers: Sequence[str], target_modules: Sequence[str], r: int = 8,
                alpha: float = 16, dropout: float = 0.0) -> list[str]:
    """Add peft LoRA adapters to the selected linear layers of a model, in place.

    Uses `peft.inject_adapter_in_model`, so the model object stays the same (no `PeftModel` wrapper) and every
    parameter but the adapters' is frozen. The target list is resolved here to full module names restricted to
    `towers`, so a `q_proj` of a frozen tower is never adapted.

    Args:
        model (`nn.Module`): a bare model of a supported family (`clip_cl.adapters`).
        towers (`Sequence[str]`): `"image"` and/or `"text"`.
        target_modules (`Sequence[str]`): module names or dotted suffixes, or `["all-linear"]`.
        r (`int`): rank. alpha (`float`): scaling numerator. dropout (`float`): input dropout of the adapters.

    Returns:
        `list[str]`: the adapted module names.
    """
    require_peft()
    from peft import LoraConfig, inject_adapter_in_model

    if lora_layers(model):
        raise ValueError("The model already has peft adapters; merge them (merge_and_unload_lora) before adding new "
                         "ones.")
    names = find_linear_targets(model, towers, list(target_modules))
    if not names:
        raise ValueError(f"No nn.Linear of towers {tuple(towers)} matches lora_target_modules={list(target_modules)}.")
    config = LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=float(dropout), target_modules=names, bias="none")
    inject_adapter_in_model(config, model)
    return names


def merge_and_unload_lora(model: nn.Module, safe_merge: bool = True) -> nn.Module:
    """Merge every peft adapter into its base layer and put the plain base layer back, in place.

    Afterwards the model has exactly its original modules and state-dict keys (what `PeftModel.merge_and_unload`
    gives, without needing the `PeftModel` wrapper), and the `peft_config` attribute peft left on it is removed.

    Returns:
        `nn.Module`: the same model object.
    """
    for name, layer in lora_layers(model).items():
        layer.merge(safe_merge=safe_merge)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config
    return model


class LoRATrainer(CLIPCLTrainer):
    """LoRA through peft: each session trains fresh low-rank adapters on the trainable tower(s) and merges them.

    The adapters (`lora_target_modules`, default q/k/v/out projections of the attention layers of the tower(s)
    `variant` trains) start with `B = 0`, so the session starts exactly at the model it was given; all original
    weights are frozen and the loss is plain cross-entropy. At the end of the session the adapters are merged into
    the weights and removed (`W <- W + (alpha / r) B A`), so `trainer.model` is a plain model (e.g. `CLIPModel`) that the runner
    saves as ordinary safetensors and the next session adapts afresh. Needs `pip install 'clip-cl[peft]'`.

    Example:
    ```python
    from clip_cl import LoRAConfig, LoRATrainer, tiny_clip

    model, processor = tiny_clip()
    args = LoRAConfig(output_dir="runs/lora", num_train_epochs=1, per_device_train_batch_size=8)
    trainer = LoRATrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                          class_names=["T-shirt/top", "trouser"], class_ids=[0, 1])
    trainer.train()  # trainer.model is a plain model again, adapters merged
    ```
    """

    _name = "LoRA"
    _method = "lora"
    _tag_names = ["clip-cl", "continual-learning", "clip", "lora", "peft"]
    _paper = LORA_PAPER

    def __init__(self, model, args: LoRAConfig, *pargs, **kwargs):
        if not isinstance(args, LoRAConfig):
            raise TypeError(f"{type(self).__name__} needs a LoRAConfig, got {type(args).__name__}.")
        # CLIPCLTrainer calls prepare_method() before transformers.Trainer.__init__ sets self.args; the method's
        # knobs are needed there, so set it early (Trainer.__init__ sets the same object again).
        self.args = args
        super().__init__(model, args, *pargs, **kwargs)

    def prepare_method(self, model) -> None:
        """Inject the adapters in place (peft freezes every other parameter)."""
        bare = unwrap(model)
        # Parameters outside both towers (logit scale, SigLIP's bias) keep what apply_variant set from
        # train_logit_scale; the injection below freezes them.
        outside = {n: p.requires_grad for n, p in bare.named_parameters() if tower_of(n, bare) is None}
        self.lora_module_names = inject_lora(bare, towers_of_variant(self.args.variant), self.args.lora_target_modules,
                                             r=self.args.lora_r, alpha=self.args.lora_alpha,
                                             dropout=self.args.lora_dropout)
        for n, p in bare.named_parameters():
            if n in outside:
                p.requires_grad_(outside[n])
        n_train = sum(p.numel() for p in bare.parameters() if p.requires_grad)
        logger.info("LoRA: %d layers adapted (r=%d, alpha=%g), %d trainable parameters", len(self.lora_module_names),
                    self.args.lora_r, self.args.lora_alpha, n_train)

    def on_session_end(self) -> None:
        """Merge the adapters into the weights and remove them: the model is a plain model of its family again."""
        merge_and_unload_lora(unwrap(self.model), safe_merge=True)
