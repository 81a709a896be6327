"""`VRLwFConfig`: LwF with Vocabulary Replay, the method of Ding et al. (2022)."""

from dataclasses import dataclass, field

from ..base.config import CLIPCLConfig

__all__ = ["VRLwFConfig"]


@dataclass
class VRLwFConfig(CLIPCLConfig):
    r"""
    Configuration of VR-LwF (Ding et al. 2022, "Don't Stop Learning"): every step, `vr_num_pseudo_classes` random
    pseudo-class texts of `vr_pseudo_length` vocabulary tokens are drawn, and the student's image-to-pseudo-text
    distribution is distilled from the teacher's (the model at the start of the session):

    - OST: `CE + vr_lambda * L_VR`;
    - MST: `CE + vr_lambda * (L_LwF + L_VR)`, where `L_LwF` is LwF's KL on the class-prompt logits.

    Defaults are those of the official CL-CLIP code: 100 pseudo-classes of 8 tokens (10 with the start and end
    tokens), weight 0.5, temperature 1. All other fields are those of [`CLIPCLConfig`].

    Parameters that control the distillation:
        vr_lambda (`float`, defaults to 0.5):
            Weight of the distillation terms (CL-CLIP's `--alpha`).
        vr_temperature (`float`, defaults to 1.0):
            Softmax temperature `T` of both KL terms (each multiplied by `T^2`).

    Parameters that control the pseudo-classes:
        vr_num_pseudo_classes (`int`, defaults to 100):
            `M`, the number of pseudo-classes per step.
        vr_pseudo_length (`int`, defaults to 8):
            `L`, the number of random tokens per pseudo-class, drawn uniformly from the vocabulary without the special
            tokens and wrapped in the start/end tokens.
        vr_seed (`int`, *optional*):
            Seed of the pseudo-class draws; defaults to `seed`. The draw of a step depends only on this seed, the
            global step and the micro-batch index inside the step, so a resumed run draws the same pseudo-classes.
        vr_pool_size (`int`, *optional*):
            When set, a pool of this many pseudo-classes is drawn once per session, the teacher's text features of the
            pool are computed once, and every step uses `M` pseudo-classes sampled from the pool. This removes the
            teacher's text-encoder call of every step (the student still encodes the `M` texts); the replayed
            vocabulary is then limited to the pool (the effect on results is measured in `docs/methods/vr_lwf.md`).
        vr_recompute_pseudo_texts (`bool`, defaults to `False`):
            On the CPU the student encodes the pseudo-texts in a text-encoder call of their own (no padding to the
            class prompts' length). With this flag that call keeps only each text layer's input for the backward and
            recomputes the rest there: identical loss and gradients, the pseudo-texts' activations no longer in the
            peak memory, one more forward of the call in time (figures in `docs/performance.md`). Off by default, so
            that a step is never slower than the naive reference's.
    """

    _method = "vr_lwf"

    vr_lambda: float = field(default=0.5, metadata={
        "help": "Weight of the distillation terms: CE + vr_lambda * L_VR (OST) or CE + vr_lambda * (L_LwF + L_VR) "
                "(MST). CL-CLIP: 0.5."})
    vr_temperature: float = field(default=1.0, metadata={
        "help": "Softmax temperature T of the KL terms; each is multiplied by T^2 (CL-CLIP: 1)."})
    vr_num_pseudo_classes: int = field(default=100, metadata={
        "help": "M: pseudo-classes drawn per step (CL-CLIP: 100)."})
    vr_pseudo_length: int = field(default=8, metadata={
        "help": "L: random vocabulary tokens per pseudo-class, wrapped in start/end tokens (CL-CLIP: 8, i.e. 10 "
                "tokens with start and end)."})
    vr_seed: int | None = field(default=None, metadata={
        "help": "Seed of the pseudo-class draws (defaults to seed); a step's draw depends on it, the global step and "
                "the micro-batch index only, so resuming reproduces it."})
    vr_pool_size: int | None = field(default=None, metadata={
        "help": "If set, draw a pool of this many pseudo-classes once per session, encode it once with the teacher, "
                "and sample the M pseudo-classes of each step from it (no teacher text call per step)."})
    vr_recompute_pseudo_texts: bool = field(default=False, metadata={
        "help": "Where the pseudo-texts get a student text call of their own (CPU, single process), keep only each "
                "text layer's input and recompute the rest in the backward: the same loss and gradients, less peak "
                "memory (ViT-B/32 batch 16 on CPU: about 1.2x FT instead of 1.37x), about 7 % more step time."})

    def __post_init__(self):
        if self.vr_lambda < 0:
            raise ValueError(f"vr_lambda must be >= 0, got {self.vr_lambda}.")
        if self.vr_temperature <= 0:
            raise ValueError(f"vr_temperature must be positive, got {self.vr_temperature}.")
        if self.vr_num_pseudo_classes < 1 or self.vr_pseudo_length < 1:
            raise ValueError("vr_num_pseudo_classes and vr_pseudo_length must be >= 1, got "
                             f"{self.vr_num_pseudo_classes} and {self.vr_pseudo_length}.")
        if self.vr_pool_size is not None and self.vr_pool_size < self.vr_num_pseudo_classes:
            raise ValueError(f"vr_pool_size ({self.vr_pool_size}) must be at least vr_num_pseudo_classes "
                             f"({self.vr_num_pseudo_classes}), or null to draw fresh pseudo-classes every step.")
        super().__post_init__()
