"""`RKRTunerConfig`: where the RKR rectifiers go and how they start."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..targets import TOWERS, check_towers, towers_of_variant

__all__ = ["RKRTunerConfig", "RKR_INITS"]

# "lora": A ~ kaiming-uniform, B = 0 (LoRA's convention); "cl-clip": A = 0, B ~ kaiming-uniform (the CL-CLIP code).
# Both make the rectification B A exactly zero at the start; they differ in which factor gets the first gradient.
RKR_INITS = ("lora", "cl-clip")


@dataclass
class RKRTunerConfig:
    r"""
    Configuration of the RKR tuner (Singh et al., CVPR 2021): every selected `nn.Linear` `y = W x + b` becomes
    `y = s * (W x + B A x + b)` with a rank-`r` weight rectification `B A` and a per-output-channel scaling factor `s`.

    Parameters that control where rectifiers go:
        towers (`tuple[str]`, defaults to `("image", "text")`):
            Which towers get rectifiers: `"image"` (`vision_model` + `visual_projection`), `"text"` (`text_model` +
            `text_projection`), or both. [`RKRTunerConfig.from_variant`] sets it from a WM / IO / TO variant.
        target_modules (`list[str]`, *optional*):
            Module names or dotted suffixes to wrap (`"q_proj"`, `"mlp.fc1"`, ...). `None` (or `["all-linear"]`)
            wraps every `nn.Linear` of the selected towers: q/k/v/out projections, both MLP layers, and the
            projection into the joint space.
        include_projections (`bool`, defaults to `True`):
            With `target_modules=None`, whether `visual_projection` / `text_projection` get rectifiers too.

    Parameters that control the rectifiers:
        r (`int`, defaults to 4):
            Rank of the weight rectification `B A` (`A` is `[r, in]`, `B` is `[out, r]`); RKR's rank K.
        init (`str`, defaults to `"lora"`):
            `"lora"`: `A` kaiming-uniform, `B` zero (LoRA's convention); `"cl-clip"`: `A` zero, `B` kaiming-uniform
            (the official CL-CLIP code). Either way the rectified model equals the base model exactly at the start,
            and the scaling factors start at 1.
    """

    r: int = field(default=4, metadata={"help": "Rank of the weight rectification B A (RKR's K; paper: 4)."})
    towers: tuple[str, ...] = field(default=TOWERS, metadata={
        "help": "Towers that get rectifiers: 'image', 'text' or both."})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "Module names or dotted suffixes to wrap; None wraps every nn.Linear of the towers."})
    include_projections: bool = field(default=True, metadata={
        "help": "With target_modules=None, also rectify visual_projection / text_projection."})
    init: str = field(default="lora", metadata={
        "help": "'lora' (A kaiming, B zero) or 'cl-clip' (A zero, B kaiming); both start exactly at the base model."})

    def __post_init__(self):
        if int(self.r) < 1:
            raise ValueError(f"RKR rank r must be >= 1, got {self.r}.")
        self.r = int(self.r)
        self.towers = check_towers(self.towers)
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                self.target_modules = [self.target_modules]
            self.target_modules = [str(t) for t in self.target_modules]
            if not self.target_modules:
                raise ValueError("target_modules is an empty list; use None to wrap every nn.Linear of the towers.")
        self.init = str(self.init).lower()
        if self.init not in RKR_INITS:
            raise ValueError(f"Unknown RKR init {self.init!r}; use one of {RKR_INITS}.")

    @classmethod
    def from_variant(cls, variant: str, **kwargs) -> RKRTunerConfig:
        """The config whose towers are the ones a WM / IO / TO variant trains."""
        return cls(towers=towers_of_variant(variant), **kwargs)

    def to_dict(self) -> dict:
        """A JSON-serialisable copy (stored next to saved rectifiers)."""
        out = asdict(self)
        out["towers"] = list(self.towers)
        return out
