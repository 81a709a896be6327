from dataclasses import dataclass, field
from pathlib import Path

from ..base.config import CLIPCLConfig, maybe_json

__all__ = ["ZSCLConfig", "ZSCL_TEACHERS", "ZSCL_TEXT_FEATURES"]

ZSCL_TEACHERS = ("initial", "previous")
ZSCL_TEXT_FEATURES = ("teacher", "student")


@dataclass
class ZSCLConfig(CLIPCLConfig):
    r"""
    Configuration of ZSCL (Zheng et al., ICCV 2023, "Preventing Zero-Shot Transfer Degradation in Continual Learning of
    Vision-Language Models"). The loss of a step is

    `CE_ls(logits, y) + w_img * KD(teacher -> student, rows = reference images) + w_txt * KD(same logits transposed,
    rows = reference texts) + w_l2 * sum ||theta - theta_start||^2`,

    where the distilled logits are `logit_scale * image_features(reference images) @ text_features(reference texts).T`
    and `KD` is the temperature-scaled KL divergence. During the session the weights are averaged every
    `zscl_wa_every` optimizer steps (ZSCL's weight ensemble, WE); the average becomes the session's model. Defaults
    are those of ZSCL's official MTIL script (`--ls 0.2 --image_loss --text_loss --we --avg_freq 100 --l2 1`, `T = 2`,
    the zero-shot model as reference model). The optimisation recipe (learning rate, batch size, epochs, StepLR)
    stays the shared one of Ding et al. 2022, so all methods are compared under the same budget.

    Parameters that control the classification loss:
        label_smoothing_factor (`float`, defaults to 0.2):
            Label smoothing of the cross-entropy on the session's classes (ZSCL's `--ls 0.2`).

    Parameters that control the teacher (ZSCL's reference model):
        zscl_teacher (`str`, defaults to `"initial"`):
            `"initial"`: the model loaded from `model_name_or_path` (the zero-shot CLIP), as in ZSCL;
            `"previous"`: the model the session starts from (the previous session's model).

    Parameters that control the reference data:
        zscl_reference_dataset (`dict`, *optional*):
            Dataset spec of the reference images (ZSCL uses ImageNet or Conceptual Captions images): `path` and
            optionally `name`, `split` (defaults to `"train"`), `builder`, `image_column`, `max_samples`; see
            `docs/data.md`. Labels are not used. Read lazily with the evaluation transform, shuffled, one batch per
            micro-batch, cycling. Without it the current training batch is used as reference images.
        zscl_reference_batch_size (`int`, *optional*):
            Reference images per micro-batch (defaults to `per_device_train_batch_size`, as in ZSCL).
        zscl_reference_texts (`list[str]` or `str`, *optional*):
            The reference texts (ZSCL uses Conceptual Captions captions), or the path of a text file with one text per
            line.
        zscl_reference_class_names (`list[str]`, *optional*):
            Used when `zscl_reference_texts` is not set: every (class, template) prompt of these names with
            `zscl_reference_templates` is a reference text (ZSCL's fallback: the reference dataset's class names).
            Without either, the reference texts are the session's class prompts.
        zscl_reference_templates (`list[str]`, *optional*):
            Templates of `zscl_reference_class_names` (defaults to `zero_shot_templates`).

    Parameters that control the distillation:
        zscl_temperature (`float`, defaults to 2.0):
            Temperature `T` of both distillation terms (multiplied back by `T^2`).
        zscl_image_loss_weight (`float`, defaults to 1.0):
            Weight of the image-to-text term (each reference image's distribution over the reference texts).
        zscl_text_loss_weight (`float`, defaults to 1.0):
            Weight of the text-to-image term (each reference text's distribution over the batch's reference images).
        zscl_text_features (`str`, defaults to `"teacher"`):
            Which text features the student's logits use. `"teacher"` (ZSCL's code): the teacher's, so only the
            image tower is distilled (with `variant: TO` the distillation then has no effect). `"student"`: the
            student's own features of the reference texts, computed in the same forward as the class prompts, so
            the text tower is distilled too.
        zscl_texts_per_step (`int`, *optional*):
            With `zscl_text_features: student`, encode this many randomly drawn reference texts per micro-batch
            (default: all of them, which is only affordable for a few hundred texts).

    Parameters that control the parameter-space terms:
        zscl_l2_weight (`float`, defaults to 1.0):
            Weight of the L2 distance (sum of squared differences) of the trainable weights to the session's starting
            weights (ZSCL's `--l2 1`); 0 turns it off.
        zscl_wa_every (`int`, defaults to 100):
            Weight ensemble: add the current weights to a uniform running average every this many optimizer steps
            (ZSCL's `--avg_freq 100`); the average starts from the session's starting weights, also receives the
            final weights, and replaces the model at the end of the session. 0 turns it off (the last weights are
            kept).
    """

    _method = "zscl"

    label_smoothing_factor: float = field(default=0.2, metadata={
        "help": "Label smoothing of the cross-entropy on the session's classes (ZSCL: 0.2)."})

    zscl_teacher: str = field(default="initial", metadata={
        "help": "Reference model: 'initial' (model_name_or_path, the zero-shot CLIP, as in ZSCL) or 'previous' "
                "(the model the session starts from)."})

    zscl_reference_dataset: dict | str | None = field(default=None, metadata={
        "help": "Dataset spec of the reference images (JSON on the CLI): path, name, split (default train), "
                "image_column, max_samples. Unset: the current batch's images are the reference images."})
    zscl_reference_batch_size: int | None = field(default=None, metadata={
        "help": "Reference images per micro-batch (default: per_device_train_batch_size)."})
    zscl_reference_texts: list[str] | str | None = field(default=None, metadata={
        "help": "Reference texts (a JSON list on the command line) or the path of a text file with one text per "
                "line."})
    zscl_reference_class_names: list[str] | None = field(default=None, metadata={
        "help": "If no reference texts: class names whose prompts (with zscl_reference_templates) are the reference "
                "texts. Neither set: the session's class prompts."})
    zscl_reference_templates: list[str] | None = field(default=None, metadata={
        "help": "Templates of zscl_reference_class_names (default: zero_shot_templates)."})

    zscl_temperature: float = field(default=2.0, metadata={"help": "Distillation temperature (ZSCL: 2)."})
    zscl_image_loss_weight: float = field(default=1.0, metadata={
        "help": "Weight of the image-to-text distillation term (ZSCL: 1)."})
    zscl_text_loss_weight: float = field(default=1.0, metadata={
        "help": "Weight of the text-to-image (transposed) distillation term (ZSCL: 1)."})
    zscl_text_features: str = field(default="teacher", metadata={
        "help": "Text features of the student's distilled logits: 'teacher' (ZSCL's code; distils the image tower "
                "only) or 'student' (distils the text tower too)."})
    zscl_texts_per_step: int | None = field(default=None, metadata={
        "help": "With zscl_text_features=student: reference texts encoded per micro-batch (default: all)."})

    zscl_l2_weight: float = field(default=1.0, metadata={
        "help": "Weight of sum ||theta - theta_start||^2 over the trainable weights (ZSCL: 1); 0 turns it off."})
    zscl_wa_every: int = field(default=100, metadata={
        "help": "Weight ensemble: average the weights every this many optimizer steps (ZSCL: 100); 0 turns it off."})

    def __post_init__(self):
        self.zscl_teacher = str(self.zscl_teacher).lower()
        if self.zscl_teacher not in ZSCL_TEACHERS:
            raise ValueError(f"zscl_teacher must be one of {ZSCL_TEACHERS}, got {self.zscl_teacher!r}.")
        self.zscl_text_features = str(self.zscl_text_features).lower()
        if self.zscl_text_features not in ZSCL_TEXT_FEATURES:
            raise ValueError(f"zscl_text_features must be one of {ZSCL_TEXT_FEATURES}, got "
                             f"{self.zscl_text_features!r}.")
        for name in ("zscl_temperature",):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("zscl_image_loss_weight", "zscl_text_loss_weight", "zscl_l2_weight", "label_smoothing_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.label_smoothing_factor >= 1:
            raise ValueError(f"label_smoothing_factor must be < 1, got {self.label_smoothing_factor}.")
        if self.zscl_wa_every is None or int(self.zscl_wa_every) < 0:
            raise ValueError(f"zscl_wa_every must be >= 0 (0 turns the weight ensemble off), got {self.zscl_wa_every}.")
        self.zscl_wa_every = int(self.zscl_wa_every)
        for name in ("zscl_reference_batch_size", "zscl_texts_per_step"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be a positive integer or unset, got {value}.")

        ref = maybe_json(self.zscl_reference_dataset, "zscl_reference_dataset")
        if ref is not None:
            if not isinstance(ref, dict):
                raise ValueError(f"zscl_reference_dataset must be a dataset spec dict, got {ref!r}.")
            ref = dict(ref)
            ref.setdefault("name", Path(str(ref.get("path", "reference"))).name or "reference")
            ref.setdefault("split", "train")
            from ...data import DatasetSpec

            DatasetSpec.from_dict(ref)  # fail at configuration time on unknown keys or a missing path
        self.zscl_reference_dataset = ref

        texts = self.zscl_reference_texts
        if isinstance(texts, str) and texts.lstrip().startswith("["):
            texts = maybe_json(texts, "zscl_reference_texts")
        if isinstance(texts, (list, tuple)):
            texts = [str(t) for t in texts]
            if not texts:
                raise ValueError("zscl_reference_texts is an empty list; leave it unset to use the fallbacks.")
        self.zscl_reference_texts = texts
        for name in ("zscl_reference_class_names", "zscl_reference_templates"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = maybe_json(value, name) if value.lstrip().startswith("[") else [value]
            setattr(self, name, None if value is None else [str(v) for v in value])
        if self.zscl_reference_templates is not None:
            from ...prompts import check_templates

            self.zscl_reference_templates = check_templates(self.zscl_reference_templates)
        super().__post_init__()
