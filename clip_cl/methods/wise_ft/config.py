from dataclasses import dataclass, field

from ..base.config import CLIPCLConfig, maybe_json

__all__ = ["WiSEFTConfig"]


@dataclass
class WiSEFTConfig(CLIPCLConfig):
    r"""
    Configuration of WiSE-FT (weight-space ensembling, Wortsman et al. CVPR 2022): each session trains like plain FT,
    then the weights are interpolated between the session's starting model and the fine-tuned one.

    Convention (as in the WiSE-FT paper): `alpha` is the weight of the **fine-tuned** model,
    `theta = (1 - alpha) * theta_start + alpha * theta_finetuned`; `alpha = 0` is the starting model (the zero-shot
    CLIP in session 1), `alpha = 1` is plain FT.

    Parameters that control the merge:
        wise_alpha (`float`, defaults to 0.5):
            The mixing coefficient of the model that is evaluated, saved and continued from (WiSE-FT's recommended
            0.5).
        wise_alphas (`list[float]`, defaults to `[0.0, 0.25, 0.5, 0.75, 1.0]`):
            Coefficients evaluated after each session (the UT-Acc vs ZS-Acc trade-off curve), reported under
            `extra.wise_sweep` of the session's results. Every coefficient costs one full evaluation; an empty list
            turns the sweep off.
    """

    _method = "wise_ft"

    wise_alpha: float = field(default=0.5, metadata={
        "help": "Weight of the fine-tuned model: (1 - alpha) * start + alpha * finetuned (WiSE-FT: 0.5)."})
    wise_alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], metadata={
        "help": "Mixing coefficients evaluated after each session (UT-Acc vs ZS-Acc curve); [] turns it off."})

    def __post_init__(self):
        self.wise_alphas = maybe_json(self.wise_alphas, "wise_alphas")
        if self.wise_alphas is None:
            self.wise_alphas = []
        if isinstance(self.wise_alphas, (int, float)):
            self.wise_alphas = [self.wise_alphas]
        self.wise_alphas = [float(a) for a in self.wise_alphas]
        for a in [self.wise_alpha, *self.wise_alphas]:
            if not 0.0 <= float(a) <= 1.0:
                raise ValueError(f"WiSE-FT coefficients are the weight of the fine-tuned model and must lie in "
                                 f"[0, 1], got {a}.")
        self.wise_alpha = float(self.wise_alpha)
        super().__post_init__()
