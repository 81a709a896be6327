from dataclasses import dataclass, field

from ..base.config import CLIPCLConfig

__all__ = ["IMMConfig", "IMM_MODES", "IMM_FISHER_TYPES"]

IMM_MODES = ("mean", "mode")
IMM_FISHER_TYPES = ("true", "empirical")


@dataclass
class IMMConfig(CLIPCLConfig):
    r"""
    Configuration of Incremental Moment Matching (IMM, Lee et al. 2017) as used by Ding et al. 2022: each session
    trains like plain FT, then the fine-tuned weights are merged with the weights the session started from. The
    merged model is what is evaluated and what the next session starts from.

    Parameters that control the merge:
        imm_alpha (`float`, defaults to 0.5):
            Weight of the fine-tuned model: mean-IMM gives `imm_alpha * theta_finetuned + (1 - imm_alpha) *
            theta_previous` (the paper's `--alpha 0.5`). 1 is plain FT, 0 undoes the session.
        imm_mode (`str`, defaults to `"mean"`):
            `"mean"`: the weighted average above (the variant used by Ding et al.). `"mode"`: mode-IMM, each scalar
            weighted by the diagonal Fisher information of its model, `(a F_new theta_new + (1 - a) F_prev
            theta_prev) / (a F_new + (1 - a) F_prev)`.

    Parameters that control the Fisher information (mode-IMM only):
        imm_fisher_samples (`int`, defaults to 500):
            Training examples of the session on which both Fishers are estimated (per-example squared gradients,
            split over processes). Both models see the same examples.
        imm_fisher_type (`str`, defaults to `"true"`):
            `"true"`: the gradient of `log p(y | x)` with `y` sampled from the model's own prediction over the
            session's classes (the Fisher proper, as in EWC/IMM); `"empirical"`: with the dataset label.
        imm_fisher_eps (`float`, defaults to 1e-8):
            Added to both Fishers, so parameters without information in either model get the plain weighted mean.
    """

    _method = "imm"

    imm_alpha: float = field(default=0.5, metadata={
        "help": "Weight of the fine-tuned model in the merge: alpha * finetuned + (1 - alpha) * previous "
                "(paper: 0.5)."})
    imm_mode: str = field(default="mean", metadata={
        "help": "'mean' (weighted average, as in the paper) or 'mode' (weights scaled by their diagonal Fisher)."})
    imm_fisher_samples: int = field(default=500, metadata={
        "help": "Mode-IMM: training examples of the session on which both diagonal Fishers are estimated."})
    imm_fisher_type: str = field(default="true", metadata={
        "help": "Mode-IMM: 'true' (labels sampled from the model's prediction) or 'empirical' (dataset labels)."})
    imm_fisher_eps: float = field(default=1e-8, metadata={
        "help": "Mode-IMM: added to both Fishers (parameters without information get the plain weighted mean)."})

    def __post_init__(self):
        if not 0.0 <= float(self.imm_alpha) <= 1.0:
            raise ValueError(f"imm_alpha is the weight of the fine-tuned model and must lie in [0, 1], got "
                             f"{self.imm_alpha}.")
        self.imm_mode = str(self.imm_mode).lower()
        if self.imm_mode not in IMM_MODES:
            raise ValueError(f"imm_mode must be one of {IMM_MODES}, got {self.imm_mode!r}.")
        self.imm_fisher_type = str(self.imm_fisher_type).lower()
        if self.imm_fisher_type not in IMM_FISHER_TYPES:
            raise ValueError(f"imm_fisher_type must be one of {IMM_FISHER_TYPES}, got {self.imm_fisher_type!r}.")
        if int(self.imm_fisher_samples) < 1:
            raise ValueError(f"imm_fisher_samples must be a positive integer, got {self.imm_fisher_samples}.")
        if self.imm_fisher_eps < 0:
            raise ValueError(f"imm_fisher_eps must be >= 0, got {self.imm_fisher_eps}.")
        super().__post_init__()
