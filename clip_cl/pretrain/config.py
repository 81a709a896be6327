"""`PretrainConfig`: contrastive pretraining of a small CLIP from scratch on the world's image-text data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy, SchedulerType

from ..prompts import check_templates

__all__ = ["CAPTION_TEMPLATES", "DEFAULT_TRAIN_PARTS", "WORLD_CLIP_CONFIG", "ZERO_SHOT_TEMPLATES", "PretrainConfig"]

# The architecture of the embedded `examples/models/world-clip`, as overrides of `clip_cl.models.TINY_CLIP_CONFIG`
# (which keeps the real 49,408-token CLIP vocabulary). See docs/pretraining.md for why this size.
WORLD_CLIP_CONFIG: dict[str, Any] = {
    "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 192, "intermediate_size": 768,
                      "num_hidden_layers": 4, "num_attention_heads": 4},
    "text_config": {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4},
    "projection_dim": 128,
}

# Class-name captions: varied templates (CLIP's ensemble styles plus the paper's two prompts, so that the default
# prompts of clip-cl's continual-learning runs are in-distribution for the pretrained model).
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.", "a low contrast photo of a {}.",
    "a high contrast photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a photo of a small {}.",
    "a photo of a big {}.", "a photo of the {}.", "a close-up photo of a {}.", "a bright photo of a {}.",
    "a dark photo of a {}.", "a cropped photo of the {}.", "a pixelated photo of the {}.", "itap of a {}.",
    "a {} in a photo.", "there is a {} in the picture.", "{}", "this is a photo of {} .",
    "this is a photo of {} in the scene .",
)
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}.", "itap of a {}.", "this is a photo of {} .",
)
# World part -> repeats per epoch (the embedded model's since issue #14): 60% CIFAR-10, 29% Tiny-ImageNet (x3 for
# the 200-class set), and the 880 captioned images upweighted to 11% of the pairs (docs/pretraining.md).
DEFAULT_TRAIN_PARTS: dict[str, int] = {"cifar10_train": 1, "tiny_imagenet_train": 3, "pascal_train": 10,
                                       "coco_train": 15}


def _maybe_json(value: Any, name: str) -> Any:
    """Dict/list fields arrive as strings from the command line: parse them as JSON."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"--{name} must be JSON on the command line, got {value!r}: {err}") from err


@dataclass
class PretrainConfig(TrainingArguments):
    r"""
    Configuration of [`CLIPPretrainTrainer`]: CLIP's contrastive pretraining (symmetric InfoNCE with a learnable
    temperature) of a small model from scratch, on the "world" written by `recipes/prepare_world.py`, followed by a
    held-out evaluation. Defaults are the recipe of the embedded `examples/models/world-clip` (docs/pretraining.md).

    Parameters that control the model:
        model_config (`dict`, defaults to [`WORLD_CLIP_CONFIG`]):
            Overrides merged into `clip_cl.models.TINY_CLIP_CONFIG` by `tiny_clip(seed, **model_config)`, so the
            model keeps the real CLIP tokenizer and vocabulary. JSON on the command line.
        max_text_length (`int`, defaults to 32):
            Context length of the text tower (its `max_position_embeddings`, also the tokenizer's truncation length).
        max_logit_scale (`float`, defaults to 100):
            The temperature multiplier `exp(logit_scale)` is clamped to at most this (CLIP: 100).

    Parameters that control the data:
        world_source (`str`, defaults to `"../shared/data"`):
            The real data the world is cut from (with the default seed) when `world_dir` holds no `world.json`, so
            that one command rebuilds the embedded model.
        world_dir (`str`, defaults to `"data/world"`):
            Folder written by `recipes/prepare_world.py` (Parquet parts plus `world.json`).
        train_parts (`dict[str, int]`, defaults to [`DEFAULT_TRAIN_PARTS`]):
            World parts to train on, each with its number of repeats per epoch (0 leaves a part out).
        cache_dir (`str`, *optional*):
            Where the decoded uint8 image cache is kept (default: `<world_dir>/cache`).
        caption_templates (`list[str]`, defaults to [`CAPTION_TEMPLATES`]):
            Templates of the class-name captions of classification images; one is drawn at random per image per
            epoch.
        multi_positive (`bool`, defaults to `True`):
            Count pairs whose texts name the same class (any template), or are the identical caption, as positives
            of each other instead of as negatives (soft-target InfoNCE, see [`clip_contrastive_loss`]).
        caption_positives (`str`, defaults to `"image"`):
            How captioned pairs are grouped under `multi_positive`: `"image"` (pairs of the same image, whatever their
            captions, are positives of each other) or `"text"` (only identical captions; the first world-clip).

    Parameters that control the evaluation (run once, after training):
        zero_shot_datasets (`list[dict]`, *optional*):
            Classification dataset specs (with `split`) for zero-shot top-1/top-5; default: the world's
            `cifar10_test` and `tiny_imagenet_heldout` (held out) and `fashion_mnist_test` (outside the world).
        retrieval_datasets (`list[dict]`, *optional*):
            Image-caption dataset specs for TR@K / IR@K; default: the world's `pascal_heldout` and `coco_heldout`.
        zero_shot_templates (`list[str]`, defaults to [`ZERO_SHOT_TEMPLATES`]):
            Prompt templates of the zero-shot classifiers (ensembled).
        max_eval_samples (`int`, *optional*):
            Cap every evaluation set at this many seeded samples (pilot runs).

    Parameters that control the run:
        torch_num_threads (`int`, *optional*, defaults to 2):
            `torch.set_num_threads` for the run (`None` leaves torch's default).
        max_train_minutes (`float`, *optional*):
            Safety net on shared machines: stop training (then evaluate and save as usual) once this much wall-clock
            has passed. The planned length is `max_steps`; the results record whether the net was used.
        export_dir (`str`, *optional*):
            Also write a compact copy of the final model there (weights in `export_dtype`, config asking
            `from_pretrained` for float32, processor files and a `README.md` model card with the results).
        export_dtype (`str`, defaults to `"float16"`):
            Storage dtype of the exported weights: `"float16"`, `"bfloat16"` or `"float32"`.
    """

    # ---- model
    model_config: dict | str | None = field(default_factory=lambda: json.loads(json.dumps(WORLD_CLIP_CONFIG)),
                                            metadata={"help": "Overrides merged into TINY_CLIP_CONFIG (JSON on the "
                                                              "CLI), e.g. '{\"vision_config\": {\"num_hidden_layers\": 6}}'."})
    max_text_length: int = field(default=32, metadata={
        "help": "Context length of the text tower (max_position_embeddings and tokenizer truncation)."})
    max_logit_scale: float = field(default=100.0, metadata={"help": "Clamp exp(logit_scale) to at most this (CLIP: 100)."})

    # ---- data
    world_dir: str = field(default="data/world", metadata={
        "help": "Folder written by recipes/prepare_world.py (Parquet parts and world.json); cut from world_source "
                "first if it holds no world.json."})
    world_source: str = field(default="../shared/data", metadata={
        "help": "The real data the world is cut from when world_dir is empty (see recipes/prepare_world.py)."})
    train_parts: dict | str | None = field(default_factory=lambda: dict(DEFAULT_TRAIN_PARTS), metadata={
        "help": "World parts to train on -> repeats per epoch (JSON on the CLI); 0 leaves a part out."})
    cache_dir: str | None = field(default=None, metadata={
        "help": "Folder of the decoded uint8 image cache (default: <world_dir>/cache)."})
    caption_templates: list[str] = field(default_factory=lambda: list(CAPTION_TEMPLATES), metadata={
        "help": "Templates of class-name captions ('{}' is the class name); one is drawn per image."})
    multi_positive: bool = field(default=True, metadata={
        "help": "Pairs naming the same class (or with identical captions) are positives of each other."})
    caption_positives: str = field(default="image", metadata={
        "help": "With multi_positive, group captioned pairs by image ('image': two captions of one image are "
                "positives) or by identical caption ('text', the first world-clip's recipe)."})

    # ---- evaluation
    zero_shot_datasets: list | str | None = field(default=None, metadata={
        "help": "Zero-shot classification specs (JSON on the CLI); default: world cifar10_test, "
                "tiny_imagenet_heldout and fashion_mnist_test."})
    retrieval_datasets: list | str | None = field(default=None, metadata={
        "help": "Retrieval specs (JSON on the CLI); default: world pascal_heldout and coco_heldout."})
    zero_shot_templates: list[str] = field(default_factory=lambda: list(ZERO_SHOT_TEMPLATES), metadata={
        "help": "Prompt templates of the zero-shot classifiers (ensembled)."})
    max_eval_samples: int | None = field(default=None, metadata={
        "help": "Cap every evaluation set at this many seeded samples (pilot runs)."})

    # ---- run
    torch_num_threads: int | None = field(default=2, metadata={"help": "torch.set_num_threads for the run."})
    max_train_minutes: float | None = field(default=None, metadata={
        "help": "Stop training after this much wall-clock (safety net; max_steps is the plan)."})
    export_dir: str | None = field(default=None, metadata={
        "help": "Also write a compact copy of the final model (and a model card) to this folder."})
    export_dtype: str = field(default="float16", metadata={
        "help": "Storage dtype of the exported weights: float16, bfloat16 or float32."})

    # ---- TrainingArguments defaults changed for pretraining from scratch
    output_dir: str | None = field(default="runs/pretrain", metadata={"help": "Run folder."})
    max_steps: int = field(default=3900, metadata={"help": "Optimizer steps of the run."})
    per_device_train_batch_size: int = field(default=128, metadata={
        "help": "Pairs per batch (also the contrastive batch: each image is scored against the batch's texts)."})
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "Evaluation batch size."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (tensors of rank >= 2 only)."})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2 (CLIP: 0.98)."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps, or a fraction of max_steps if < 1."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    logging_steps: float = field(default=25, metadata={"help": "Log every this many steps."})
    save_strategy: SaveStrategy | str = field(default="no", metadata={
        "help": "Trainer checkpoints during the run ('no': only the final model is saved)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Where to log."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep every collated key."})
    dataloader_num_workers: int = field(default=0, metadata={
        "help": "DataLoader workers (0: the batches come from an in-memory tensor cache)."})
    dataloader_pin_memory: bool = field(default=False, metadata={
        "help": "Pin batches in page-locked memory (only useful when training on a GPU)."})

    def __post_init__(self):
        self.model_config = _maybe_json(self.model_config, "model_config") or {}
        if not isinstance(self.model_config, dict):
            raise ValueError(f"model_config must be a dict of overrides, got {type(self.model_config).__name__}.")
        self.train_parts = _maybe_json(self.train_parts, "train_parts")
        if not isinstance(self.train_parts, dict) or not any(int(v) > 0 for v in self.train_parts.values()):
            raise ValueError(f"train_parts must map world parts to repeats (at least one > 0), got {self.train_parts!r}.")
        self.train_parts = {str(k): int(v) for k, v in self.train_parts.items()}
        for key in ("zero_shot_datasets", "retrieval_datasets"):
            value = _maybe_json(getattr(self, key), key)
            setattr(self, key, [value] if isinstance(value, dict) else value)
        if self.caption_positives not in ("image", "text"):
            raise ValueError(f"caption_positives must be 'image' or 'text', got {self.caption_positives!r}.")
        self.caption_templates = check_templates(self.caption_templates)
        self.zero_shot_templates = check_templates(self.zero_shot_templates)
        if self.max_text_length < 8:
            raise ValueError(f"max_text_length must be at least 8 tokens, got {self.max_text_length}.")
        if self.max_logit_scale <= 1:
            raise ValueError(f"max_logit_scale must be > 1, got {self.max_logit_scale}.")
        if self.export_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"export_dtype must be float16, bfloat16 or float32, got {self.export_dtype!r}.")
        super().__post_init__()

    def model_overrides(self) -> dict[str, Any]:
        """The keyword overrides for `tiny_clip`: `model_config` plus the text context length."""
        overrides = json.loads(json.dumps(self.model_config))
        overrides.setdefault("text_config", {})["max_position_embeddings"] = int(self.max_text_length)
        return overrides
