"""`RKRConfig`: the RKR method's knobs on top of [`CLIPCLConfig`]."""

from dataclasses import dataclass, field

from ...tuners.rkr.config import RKR_INITS
from ..base.config import CLIPCLConfig

__all__ = ["RKRConfig"]


@dataclass
class RKRConfig(CLIPCLConfig):
    r"""
    Configuration of RKR (Singh et al., CVPR 2021, as compared in Ding et al. 2022): each session wraps every
    `nn.Linear` of the trainable tower(s) in a rank-`rkr_rank` weight rectification and a per-channel output scaling,
    trains only those, and merges them into the weights at the end of the session. Everything else (variant,
    protocol, schedule) is [`CLIPCLConfig`]'s.

    Parameters that control the optimisation:
        learning_rate (`float`, defaults to `1e-5`):
            Adam learning rate of the rectifiers (the paper's RKR setting; the full-model methods use 1e-6).

    Parameters that control the rectifiers:
        rkr_rank (`int`, defaults to 4):
            Rank `r` of the weight rectification `B A` of each layer (paper: 4).
        rkr_target_modules (`list[str]`, *optional*):
            Module names or dotted suffixes to rectify (e.g. `["out_proj", "fc1", "fc2"]`, which is what the
            official CL-CLIP code reaches in OpenAI's CLIP). `None` rectifies every `nn.Linear` of the trainable
            tower(s): q/k/v/out projections, both MLP layers and (see `rkr_include_projections`) the projection into
            the joint space.
        rkr_include_projections (`bool`, defaults to `True`):
            With `rkr_target_modules` unset, also rectify `visual_projection` / `text_projection`.
        rkr_init (`str`, defaults to `"lora"`):
            `"lora"`: A kaiming-uniform, B zero; `"cl-clip"`: A zero, B kaiming-uniform (the official code). Both
            start exactly at the session's starting model (scaling factors start at 1).
    """

    _method = "rkr"

    learning_rate: float = field(default=1e-5, metadata={
        "help": "Adam learning rate of the rectifiers (paper's RKR setting: 1e-5)."})
    rkr_rank: int = field(default=4, metadata={"help": "Rank of each layer's weight rectification B A (paper: 4)."})
    rkr_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Module names or dotted suffixes to rectify (e.g. out_proj fc1 fc2); unset: every nn.Linear of the "
                "trainable tower(s)."})
    rkr_include_projections: bool = field(default=True, metadata={
        "help": "With rkr_target_modules unset, also rectify visual_projection / text_projection."})
    rkr_init: str = field(default="lora", metadata={
        "help": f"Rectifier initialisation, one of {RKR_INITS}: 'lora' (A kaiming, B zero) or 'cl-clip' (A zero, "
                "B kaiming). Both start exactly at the base model."})

    def __post_init__(self):
        if int(self.rkr_rank) < 1:
            raise ValueError(f"rkr_rank must be >= 1, got {self.rkr_rank}.")
        self.rkr_init = str(self.rkr_init).lower()
        if self.rkr_init not in RKR_INITS:
            raise ValueError(f"Unknown rkr_init {self.rkr_init!r}; use one of {RKR_INITS}.")
        if isinstance(self.rkr_target_modules, str):
            self.rkr_target_modules = [self.rkr_target_modules]
        super().__post_init__()

    def tuner_config(self):
        """The [`RKRTunerConfig`] of this run: towers from `variant`, the rest from the `rkr_*` fields."""
        from ...tuners.rkr.config import RKRTunerConfig

        return RKRTunerConfig.from_variant(self.variant, r=self.rkr_rank, target_modules=self.rkr_target_modules,
                                           include_projections=self.rkr_include_projections, init=self.rkr_init)
