"""`LwFConfig`: Learning without Forgetting on CLIP's image-to-class-prompt logits."""

from dataclasses import dataclass, field

from ..base.config import CLIPCLConfig

__all__ = ["LwFConfig"]


@dataclass
class LwFConfig(CLIPCLConfig):
    r"""
    Configuration of LwF (Li & Hoiem 2017) as a CLIP baseline in Ding et al. (2022): cross-entropy plus
    `lwf_alpha * T^2 * KL(p_teacher || p_student)` on the image-to-class-prompt logits, where the teacher is the model
    at the start of the session. Defaults follow the official CL-CLIP code (`--alpha 0.5`, `T = 1`). All other fields
    are those of [`CLIPCLConfig`].

    Parameters that control the distillation:
        lwf_alpha (`float`, defaults to 0.5):
            Weight of the distillation term (CL-CLIP's `--alpha`).
        lwf_temperature (`float`, defaults to 1.0):
            Softmax temperature `T` of both distributions; the term is multiplied by `T^2` (Hinton et al. 2015) so
            that its gradient scale does not depend on `T`. With `T = 1` it is CL-CLIP's plain KL.
    """

    _method = "lwf"

    lwf_alpha: float = field(default=0.5, metadata={
        "help": "Weight of the LwF distillation term KL(teacher || student) (CL-CLIP: 0.5)."})
    lwf_temperature: float = field(default=1.0, metadata={
        "help": "Softmax temperature T of the distillation; the KL is multiplied by T^2 (CL-CLIP: 1)."})

    def __post_init__(self):
        if self.lwf_alpha < 0:
            raise ValueError(f"lwf_alpha must be >= 0, got {self.lwf_alpha}.")
        if self.lwf_temperature <= 0:
            raise ValueError(f"lwf_temperature must be positive, got {self.lwf_temperature}.")
        super().__post_init__()
