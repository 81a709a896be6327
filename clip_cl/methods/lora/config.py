"""`LoRAConfig`: LoRA (through peft) on the trainable tower(s), on top of [`CLIPCLConfig`]."""

from dataclasses import dataclass, field

from ..base.config import CLIPCLConfig

__all__ = ["LoRAConfig", "DEFAULT_LORA_TARGETS", "PEFT_MISSING", "require_peft"]

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

PEFT_MISSING = ("method 'lora' needs the optional dependency peft, which is not installed. Install it with "
                "`pip install 'clip-cl[peft]'` (or `pip install peft`).")


def require_peft():
    """Import peft, or raise an `ImportError` that says how to install it.

    Returns:
        the `peft` module.
    """
    try:
        import peft
    except ImportError as err:
        raise ImportError(PEFT_MISSING) from err
    return peft


@dataclass
class LoRAConfig(CLIPCLConfig):
    r"""
    Configuration of LoRA (Hu et al. 2021) applied with peft to the trainable tower(s) of CLIP: each session adds
    fresh low-rank adapters `W x + (alpha / r) B A x` (B = 0 at the start) to the attention projections, trains only
    them, and merges them into the weights at the end of the session. Not a method of Ding et al. 2022: a modern
    parameter-efficient baseline next to RKR. Needs `pip install 'clip-cl[peft]'`.

    Parameters that control the optimisation:
        learning_rate (`float`, defaults to `1e-5`):
            Adam learning rate of the adapters (not from a paper: the same as RKR's, the other low-rank method here;
            the full-model methods use 1e-6).

    Parameters that control the adapters:
        lora_r (`int`, defaults to 8):
            Rank of each adapter.
        lora_alpha (`float`, defaults to 16):
            Scaling numerator: the update is `(lora_alpha / lora_r) B A x`.
        lora_dropout (`float`, defaults to 0.0):
            Dropout on the adapter's input.
        lora_target_modules (`list[str]`, defaults to `["q_proj", "k_proj", "v_proj", "out_proj"]`):
            Module names or dotted suffixes to adapt inside the trainable tower(s) (e.g. add `"fc1"`, `"fc2"`);
            `["all-linear"]` adapts every `nn.Linear` of the tower(s), projections included.
    """

    _method = "lora"

    learning_rate: float = field(default=1e-5, metadata={
        "help": "Adam learning rate of the LoRA adapters (same as RKR's; full-model methods use 1e-6)."})
    lora_r: int = field(default=8, metadata={"help": "Rank of each LoRA adapter."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator: update = (alpha / r) B A x."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapter's input."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), metadata={
        "help": "Module names or dotted suffixes adapted in the trainable tower(s); 'all-linear' for every "
                "nn.Linear (projections included)."})

    def __post_init__(self):
        import importlib.util

        # Fail at configuration time, before any evaluation runs, rather than at the first session.
        if importlib.util.find_spec("peft") is None:
            raise ImportError(PEFT_MISSING)
        if int(self.lora_r) < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}.")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        if not self.lora_target_modules:
            raise ValueError("lora_target_modules is empty; give module names such as q_proj v_proj, or all-linear.")
        super().__post_init__()
