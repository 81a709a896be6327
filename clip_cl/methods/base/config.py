"""`CLIPCLConfig`: the method-agnostic fields of every clip-cl run, on top of `transformers.TrainingArguments`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy, SchedulerType
from transformers.training_args import OptimizerNames

from ...errors import ConfigError
from ...prompts import DEFAULT_TRAIN_TEMPLATES, DEFAULT_ZERO_SHOT_TEMPLATES, check_templates
from ...variants import check_variant

__all__ = ["CLIPCLConfig", "PROTOCOLS", "maybe_json"]

PROTOCOLS = ("ost", "mst")


def maybe_json(value: Any, name: str) -> Any:
    """CLI values of dict/list fields arrive as strings: accept JSON there (YAML files give real lists/dicts)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"--{name} must be JSON on the command line (e.g. '{{\"path\": \"data/x\"}}'), got {value!r}: "
                         f"{err}") from err


@dataclass
class CLIPCLConfig(TrainingArguments):
    r"""
    Configuration shared by every clip-cl method. Method configs (e.g. [`LwFConfig`]) subclass it and add their own
    knobs. Defaults are the paper's (Ding et al. 2022): Adam, learning rate 1e-6, batch 100, 15 epochs for OST with
    StepLR(10 epochs, gamma 0.1), 10 epochs per MST session, gradient clipping 1.0. Mixed precision is `--bf16` /
    `--fp16` as in any Trainer (the GPU recipes switch it on).

    Parameters that control the model:
        model_name_or_path (`str`, defaults to `"tiny-random"`):
            Hub id or local folder of the starting model (CLIP, SigLIP or SigLIP 2; docs/models.md), or a tiny random
            test model: `"tiny-random"` (CLIP), `"tiny-random-siglip"`, `"tiny-random-siglip2"`.
        local_files_only (`bool`, defaults to `False`):
            Never touch the network when loading the model.
        variant (`str`, defaults to `"WM"`):
            Which part trains: `WM` whole model, `IO` image encoder only, `TO` text encoder only.
        train_logit_scale (`bool`, defaults to `False`):
            Whether CLIP's temperature trains too (WM only).

    Parameters that control the protocol:
        protocol (`str`, defaults to `"ost"`):
            `ost`: one session on all update classes; `mst`: `num_sessions` sessions of disjoint class groups.
        num_sessions (`int`, *optional*):
            Number of MST sessions (default 5); must be 1 (or unset) for OST.
        class_order_seed (`int`, defaults to 0):
            Seed of the class order from which sessions are cut.
        class_order (`str`, defaults to `"seeded"`):
            `seeded`: the classes are shuffled with `class_order_seed` before being cut into sessions; `given`: they
            keep the dataset's label order (COCO's category order in 8 sessions = the paper's phases).
        update_dataset (`dict`):
            The updated task: a dataset spec (`path`, optional `name`, `builder`, `image_column`, `label_column`,
            `class_names`, `max_samples`); see `docs/data.md`.
        update_train_split / update_test_split (`str`, defaults to `"train"` / `"test"`):
            Splits of the update dataset used for training and for UT-Acc.
        zero_shot_datasets (`list[dict]`, defaults to `[]`):
            Held-out classification sets for ZS-Acc, each a dataset spec with a `split`.
        retrieval_datasets (`list[dict]`, defaults to `[]`):
            Image-text sets for TR@K / IR@K (an image column and a list-of-captions column).

    Parameters that control prompts and evaluation:
        train_templates (`list[str]`):
            Prompt templates of the class texts during training (paper: `"this is a photo of {} in the scene ."`).
        zero_shot_templates (`list[str]`):
            Prompt templates for zero-shot and UT-Acc evaluation (paper: `"this is a photo of {} ."`).
        update_test_templates (`list[str]`, *optional*):
            Prompt templates of UT-Acc only; `None` uses `zero_shot_templates`. The official code scores the update
            task with its training prompt (`data.py: OST.get_ClsName`).
        eval_before_training (`bool`, defaults to `True`):
            Evaluate the starting model (the "before" row).
        max_eval_samples (`int`, *optional*):
            Cap every evaluation set at this many (seeded) samples, for quick runs.
        skip_corrupt_images (`bool`, defaults to `False`):
            Scan every dataset once and drop unreadable images, counting them in `results.json` (`skipped_images`);
            by default the first unreadable image stops the run with an error naming the dataset, row and file.
        image_cache_dir (`str`, *optional*):
            A folder for `uint8` caches of decoded, resized images (`clip_cl.data.ImageCache`), built once per dataset
            and transform and shared by sessions, evaluations and later runs; `None` (default) decodes every epoch.
            Results are identical either way; use it when the resized images fit on disk (docs/performance.md).
        dataloader_persistent_workers (`bool`, *optional*):
            Keep loader workers alive between epochs. `None` (default) means yes whenever `dataloader_num_workers` is
            above 0 (Trainer's own default is no); measured in docs/performance.md ("Loader defaults").
        dataloader_prefetch_factor (`int`, *optional*):
            Batches each loader worker prepares ahead. `None` (default) means 4 whenever `dataloader_num_workers` is
            above 0 (torch's own default is 2).
        decode_on_device (`bool`, defaults to `False`):
            Leave JPEGs encoded in the data loader and decode them on the training / evaluation device
            (`torchvision.io.decode_jpeg`, nvjpeg on CUDA), where the same resize, crop and flip follow; for GPUs
            whose host cannot decode fast enough. PNGs, grayscale images of other formats, CMYK JPEGs and JPEGs with
            an EXIF rotation are still decoded on the host. On CPU the batches are bit-identical to the default; on
            CUDA, nvjpeg's decode and the float resize may differ from the host's by a few levels (not bit-identical).
            Cannot be combined with `image_cache_dir`.
        step_lr_epochs (`float`, *optional*, defaults to 10):
            Decay the learning rate by `step_lr_gamma` every this many epochs (the paper's StepLR); `None` uses
            `lr_scheduler_type` instead.
        step_lr_gamma (`float`, defaults to 0.1):
            Decay factor of the step schedule.

    Parameters that control the run folder:
        save_session_models (`bool`, defaults to `True`):
            Keep every session's checkpoint under `session_<t>/model` (otherwise only the latest and `model/`).
        overwrite_run (`bool`, defaults to `False`):
            Delete what `output_dir` holds and start over. Without it, a folder holding the same run resumes and a
            folder holding a different run is refused.
    """

    # ---- model
    model_name_or_path: str = field(default="tiny-random", metadata={
        "help": "Hub id or local folder of the starting model (CLIP, SigLIP, SigLIP 2), or 'tiny-random' "
                "('tiny-random-siglip', 'tiny-random-siglip2') for a small random test model."})
    local_files_only: bool = field(default=False, metadata={"help": "Never touch the network when loading the model."})
    variant: str = field(default="WM", metadata={
        "help": "Which part trains: WM (whole model), IO (image encoder only) or TO (text encoder only)."})
    train_logit_scale: bool = field(default=False, metadata={"help": "Train CLIP's temperature too (WM only)."})

    # ---- protocol
    protocol: str = field(default="ost", metadata={
        "help": "'ost': one session on all update classes; 'mst': num_sessions sessions of disjoint class groups."})
    num_sessions: int | None = field(default=None, metadata={"help": "Number of MST sessions (default 5)."})
    class_order_seed: int = field(default=0, metadata={"help": "Seed of the class order sessions are cut from."})
    class_order: str = field(default="seeded", metadata={
        "help": "'seeded': classes shuffled with class_order_seed before the sessions are cut; 'given': the "
                "dataset's label order (the paper's COCO phases)."})
    update_dataset: dict | str | None = field(default=None, metadata={
        "help": "Update-task dataset spec (JSON on the CLI): path, name, builder, image_column, label_column, "
                "class_names, max_samples. See docs/data.md."})
    update_train_split: str = field(default="train", metadata={"help": "Split of the update dataset to train on."})
    update_test_split: str = field(default="test", metadata={"help": "Split of the update dataset for UT-Acc."})
    zero_shot_datasets: list | str | None = field(default=None, metadata={
        "help": "List of held-out classification dataset specs (each with a split) for ZS-Acc."})
    retrieval_datasets: list | str | None = field(default=None, metadata={
        "help": "List of image-text dataset specs (image + list-of-captions columns) for TR@K / IR@K."})

    # ---- prompts and evaluation
    train_templates: list[str] = field(default_factory=lambda: list(DEFAULT_TRAIN_TEMPLATES), metadata={
        "help": "Prompt templates of class texts during training; '{}' is the class name."})
    zero_shot_templates: list[str] = field(default_factory=lambda: list(DEFAULT_ZERO_SHOT_TEMPLATES), metadata={
        "help": "Prompt templates for zero-shot and UT-Acc evaluation; several make an ensemble."})
    update_test_templates: list[str] | None = field(default=None, metadata={
        "help": "Prompt templates of UT-Acc only; None uses zero_shot_templates."})
    eval_before_training: bool = field(default=True, metadata={"help": "Evaluate the starting model first."})
    max_eval_samples: int | None = field(default=None, metadata={
        "help": "Cap every evaluation set at this many seeded samples (quick runs)."})
    skip_corrupt_images: bool = field(default=False, metadata={
        "help": "Drop unreadable images (counted in results.json under skipped_images) instead of stopping with an "
                "error that names the dataset, row and file."})
    image_cache_dir: str | None = field(default=None, metadata={
        "help": "Folder for uint8 caches of decoded, resized images, shared by sessions, evaluations and runs "
                "(default: none, decode every epoch; results are identical either way)."})
    decode_on_device: bool = field(default=False, metadata={
        "help": "Decode JPEGs on the training/evaluation device (torchvision decode_jpeg; nvjpeg on CUDA) instead of "
                "in the data loader; other formats stay on the host. Bit-identical on CPU, within a few levels on "
                "CUDA. Not with image_cache_dir."})
    step_lr_epochs: float | None = field(default=10, metadata={
        "help": "StepLR: multiply the learning rate by step_lr_gamma every this many epochs (paper: 10). "
                "None uses lr_scheduler_type instead."})
    step_lr_gamma: float = field(default=0.1, metadata={"help": "StepLR decay factor."})

    # ---- run folder
    save_session_models: bool = field(default=True, metadata={
        "help": "Keep the safetensors checkpoint of every session (otherwise only the latest and the final one)."})
    overwrite_run: bool = field(default=False, metadata={
        "help": "Delete what output_dir holds and start over (otherwise the same run resumes, a different one is "
                "refused)."})

    # ---- TrainingArguments defaults changed to the paper's
    learning_rate: float = field(default=1e-6, metadata={"help": "Adam learning rate (paper: 1e-6)."})
    per_device_train_batch_size: int = field(default=100, metadata={"help": "Batch size per device (paper: 100)."})
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "Evaluation batch size per device."})
    num_train_epochs: float = field(default=-1, metadata={
        "help": "Epochs per session; -1 means the paper's: 15 for OST, 10 per MST session."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay (0 makes AdamW plain Adam)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (paper: 1.0)."})
    lr_scheduler_type: SchedulerType | str = field(default="constant", metadata={
        "help": "Scheduler used when step_lr_epochs is None."})
    logging_steps: float = field(default=10, metadata={"help": "Log every this many steps."})
    save_strategy: SaveStrategy | str = field(default="epoch", metadata={
        "help": "When to write Trainer checkpoints inside a session (for resuming)."})
    save_total_limit: int | None = field(default=1, metadata={"help": "Keep only this many Trainer checkpoints."})
    report_to: None | str | list[str] = field(default="none", metadata={
        "help": "Where to log: 'none', 'tensorboard', 'wandb', 'all'."})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "Keep image columns (the models' forward signatures do not list them)."})
    output_dir: str | None = field(default="runs/clip-cl", metadata={"help": "Run folder."})

    optim: OptimizerNames | str = field(default="adamw_torch", metadata={
        "help": "Optimizer; with weight_decay 0, AdamW is the paper's Adam."})
    # Loader defaults chosen by `benchmarks/bench_loader.py --loop` (docs/performance.md, "Loader defaults"): no
    # workers stays the default (on 2 CPU cores every worker setting was slower than none); once workers are asked
    # for, persistent workers and 4 batches of prefetch per worker recovered most of what restarting workers every
    # epoch cost. Batches are the same either way: augmentation is keyed by (seed, epoch, row), not by worker.
    dataloader_persistent_workers: bool | None = field(default=None, metadata={
        "help": "Keep loader workers alive between epochs; None (default): yes when dataloader_num_workers > 0."})
    dataloader_prefetch_factor: int | None = field(default=None, metadata={
        "help": "Batches each loader worker prepares ahead; None (default): 4 when dataloader_num_workers > 0."})

    def __post_init__(self):
        self.protocol = str(self.protocol).lower()
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"Unknown protocol {self.protocol!r}; use 'ost' (one session) or 'mst' (several).")
        if self.protocol == "ost":
            if self.num_sessions not in (None, 1):
                raise ValueError(f"protocol 'ost' has exactly one session, got num_sessions={self.num_sessions}; "
                                 "set protocol: mst for several sessions.")
            self.num_sessions = 1
        else:
            self.num_sessions = 5 if self.num_sessions is None else int(self.num_sessions)
            if self.num_sessions < 2:
                raise ValueError(f"protocol 'mst' needs num_sessions >= 2, got {self.num_sessions}.")
        if self.num_train_epochs is None or self.num_train_epochs < 0:
            self.num_train_epochs = 15.0 if self.protocol == "ost" else 10.0
        self.variant = check_variant(self.variant)
        self.train_templates = check_templates(self.train_templates)
        self.zero_shot_templates = check_templates(self.zero_shot_templates)
        if self.update_test_templates is not None:
            self.update_test_templates = check_templates(self.update_test_templates)
        if self.class_order not in ("seeded", "given"):
            raise ValueError(f"class_order must be 'seeded' or 'given', got {self.class_order!r}.")
        self.update_dataset = maybe_json(self.update_dataset, "update_dataset")
        self.zero_shot_datasets = maybe_json(self.zero_shot_datasets, "zero_shot_datasets") or []
        self.retrieval_datasets = maybe_json(self.retrieval_datasets, "retrieval_datasets") or []
        if isinstance(self.zero_shot_datasets, dict):
            self.zero_shot_datasets = [self.zero_shot_datasets]
        if isinstance(self.retrieval_datasets, dict):
            self.retrieval_datasets = [self.retrieval_datasets]
        if self.decode_on_device and self.image_cache_dir is not None:
            raise ConfigError(f"decode_on_device and image_cache_dir={self.image_cache_dir!r} cannot be combined: the "
                              "image cache already stores decoded, resized images. Drop one of them (image_cache_dir: "
                              "null, or decode_on_device: false).")
        if self.step_lr_epochs is not None and self.step_lr_epochs <= 0:
            raise ValueError("step_lr_epochs must be positive, or null to use lr_scheduler_type.")
        if self.dataloader_num_workers > 0:
            if self.dataloader_persistent_workers is None:
                self.dataloader_persistent_workers = True
            if self.dataloader_prefetch_factor is None:
                self.dataloader_prefetch_factor = 4
        elif self.dataloader_persistent_workers:
            raise ValueError("dataloader_persistent_workers needs loader workers: set dataloader_num_workers > 0 "
                             "or drop dataloader_persistent_workers.")
        else:
            self.dataloader_persistent_workers = False
        super().__post_init__()

    @property
    def method_name(self) -> str:
        """Registry name of the method this config belongs to (set on each subclass)."""
        return getattr(type(self), "_method", "ft")
