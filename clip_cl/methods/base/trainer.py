"""`CLIPCLTrainer`: the machinery every clip-cl method shares.

It owns, in one place each: variant freezing, class-prompt tokens, the teacher (a frozen copy of the model at the
start of the session, placed once under accelerate), the teacher's cached class-prompt features, the step learning-
rate schedule, logging of loss terms, and the end-of-session hook (used by IMM and WiSE-FT to merge weights).
A method subclasses it and overrides [`~CLIPCLTrainer.method_losses`] (and rarely more).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from transformers import Trainer

from ...adapters import get_adapter, tag_tokenizer
from ...errors import NonFiniteLossError
from ...features import concat_tokens, image_features, logit_bias, logit_scale, text_features, tokenize
from ...io import atomic_write_json, read_json
from ...prompts import class_text_features, format_prompts
from ...variants import apply_variant
from .config import CLIPCLConfig

__all__ = ["CLIPCLTrainer", "StudentOutputs", "PAPER", "teacher_call"]

_STATE_FILE = "clip_cl_trainer_state.json"

PAPER = {
    "title": "Don't Stop Learning: Towards Continual Learning for the CLIP Model",
    "authors": "Yuxuan Ding, Lingqiao Liu, Chunna Tian, Jingyuan Yang, Haoxuan Ding",
    "id": "2207.09248",
    "citation": (
        "@article{ding2022dont,\n  title={Don't Stop Learning: Towards Continual Learning for the CLIP Model},\n"
        "  author={Ding, Yuxuan and Liu, Lingqiao and Tian, Chunna and Yang, Jingyuan and Ding, Haoxuan},\n"
        "  journal={arXiv preprint arXiv:2207.09248},\n  year={2022}\n}"
    ),
}


@contextlib.contextmanager
def _checkpointed_layers(module):
    """Switch on the non-reentrant activation checkpointing of `module`'s transformer layers (transformers'
    `GradientCheckpointingLayer`s, what `gradient_checkpointing_enable` sets on every layer) for the enclosed calls
    only, then restore them. `module=None` does nothing."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)] if module is not None else []
    saved = [(m, m.__dict__.get("gradient_checkpointing"), m.__dict__.get("_gradient_checkpointing_func"))
             for m in layers]
    func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    for m in layers:
        m.gradient_checkpointing, m._gradient_checkpointing_func = True, func
    try:
        yield
    finally:
        for m, flag, old in saved:
            for name, value in (("gradient_checkpointing", flag), ("_gradient_checkpointing_func", old)):
                if value is None:
                    m.__dict__.pop(name, None)
                else:
                    setattr(m, name, value)


def unwrap(model):
    """The bare model under DDP / FSDP / compile wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


@dataclass
class StudentOutputs:
    """What one student forward produced.

    Attributes:
        image_embeds: `[B, D]` normalised image features of the batch.
        class_embeds: `[C, D]` normalised (template-ensembled) class-prompt features.
        extra_embeds: `[M, D]` normalised features of the method's extra texts (e.g. VR-LwF pseudo-classes) or None.
        logit_scale: the student's `exp(logit_scale)` (a scalar tensor).
        logits: `[B, C]` = logit_scale * image_embeds @ class_embeds.T (no bias: a constant per row cancels in
            every softmax over classes, the cross-entropy's and the distillation's).
        logit_bias: the student's learned logit bias (sigmoid-trained families such as SigLIP), else None; only
            pair losses in the family's own form (ZSCL's image-text term) use it.
    """

    image_embeds: torch.Tensor
    class_embeds: torch.Tensor
    extra_embeds: torch.Tensor | None
    logit_scale: torch.Tensor
    logits: torch.Tensor
    logit_bias: torch.Tensor | None = None


class CLIPCLTrainer(Trainer):
    """Base trainer of clip-cl: cross-entropy over `logit_scale * cos(image, class-prompt text)` for the session's
    classes, plus whatever [`method_losses`] adds.

    Args:
        model (`PreTrainedModel`): a model of a supported family (`clip_cl.adapters`), the model to train (the current student). It is modified in place.
        args ([`CLIPCLConfig`]): the run configuration (the method's config subclass).
        train_dataset: rows `{"pixel_values": Tensor[3,H,W], "labels": int}` (see `clip_cl.data.with_image_transform`).
        processing_class: the model's processor or tokenizer (only the tokenizer is used here).
        class_names (`Sequence[str]`): the classes of this session's cross-entropy, in logit order.
        class_ids (`Sequence[int]`, *optional*): the dataset label of each class name (defaults to 0..C-1).
        teacher_model (`PreTrainedModel`, *optional*): the teacher for distillation methods; by default a frozen copy of
            `model` as it is when the trainer is created (the model after the previous session).
        **kwargs: passed to `transformers.Trainer` (e.g. `data_collator`, `callbacks`).
    """

    _name: ClassVar[str] = "FT"
    _method: ClassVar[str] = "ft"
    _tag_names: ClassVar[list[str]] = ["clip-cl", "continual-learning", "clip"]
    _paper: ClassVar[dict] = PAPER
    # Whether the method distils from a teacher (a frozen copy of the session's starting model).
    _uses_teacher: ClassVar[bool] = False
    # Which data a session trains on: "session" (its own classes) or "seen" (all classes seen so far: Joint-FT).
    _train_data: ClassVar[str] = "session"
    # Whether every session restarts from the original model (Joint-FT's upper bound).
    _restart_from_initial: ClassVar[bool] = False
    # Whether the extra texts' separate call recomputes its activations in the backward (see `extra_text_features`).
    _recompute_extra_texts: ClassVar[bool] = False

    # compute_loss returns a mean over the micro-batch; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model,
        args: CLIPCLConfig,
        train_dataset=None,
        processing_class=None,
        class_names: Sequence[str] | None = None,
        class_ids: Sequence[int] | None = None,
        teacher_model=None,
        **kwargs: Any,
    ):
        if not isinstance(args, CLIPCLConfig):
            raise TypeError(f"{type(self).__name__} needs a CLIPCLConfig (or a method config), got {type(args).__name__}.")
        if processing_class is None:
            raise ValueError(f"{type(self).__name__} needs processing_class= the model's processor or tokenizer "
                             "(class prompts are tokenised with it).")
        if not class_names:
            raise ValueError("class_names is empty: a session needs at least one class to train on.")
        class_names = [str(c) for c in class_names]
        if len(set(class_names)) != len(class_names):
            dup = sorted({c for c in class_names if class_names.count(c) > 1})
            raise ValueError(f"class_names has duplicates {dup}; every class needs a distinct name.")
        self.class_names = class_names
        self.class_ids = list(range(len(class_names))) if class_ids is None else [int(i) for i in class_ids]
        if len(self.class_ids) != len(self.class_names):
            raise ValueError(f"class_ids has {len(self.class_ids)} entries for {len(class_names)} class names.")
        self.clip_tokenizer = getattr(processing_class, "tokenizer", processing_class)
        tag_tokenizer(self.clip_tokenizer, model)  # texts follow the model family's rules (padding, frame)
        # Normalises the uint8 batches on the device (None when only a tokenizer is given: float pixels then).
        self.image_processor = getattr(processing_class, "image_processor", None)

        # The teacher is the model as it is now (session start), before any step: copy before anything changes it.
        teacher = None
        if self._uses_teacher:
            teacher = teacher_model if teacher_model is not None else copy.deepcopy(unwrap(model))
            teacher.requires_grad_(False).eval()
        self._initial_state = self._snapshot_initial_state(model)

        apply_variant(model, args.variant, args.train_logit_scale)
        self.args = args  # methods read their settings in prepare_method; Trainer.__init__ sets it again
        self.prepare_method(model)

        if kwargs.get("data_collator") is None:
            from ...data import collate_classification

            kwargs["data_collator"] = collate_classification
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         **kwargs)

        # Our loss is a mean over the micro-batch, never normalised by `num_items_in_batch`. The models' forward takes
        # **kwargs, which older transformers (< 5.24, no `loss_is_scaled_for_ga`) read as "the model scales the loss
        # for gradient accumulation" and then skip the division: say explicitly that it does not.
        self.model_accepts_loss_kwargs = False

        if teacher is not None:
            teacher = teacher.to(dtype=self._teacher_dtype())
            # evaluation_mode=True: placed on the device (and sharded under DeepSpeed/FSDP) but never wrapped for
            # training and never in the optimizer.
            self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
            self.teacher.eval()
        else:
            self.teacher = None

        lookup = torch.full((max(self.class_ids) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.class_ids)] = torch.arange(len(self.class_ids))
        self._label_lookup = lookup
        self._class_prompts = format_prompts(self.class_names, args.train_templates)
        self._class_tokens: dict[str, torch.Tensor] | None = None
        self._teacher_class_cache: torch.Tensor | None = None
        self._metrics: dict[str, list[float]] = defaultdict(list)
        # Sum and count of the training loss over the whole session; saved in every checkpoint so that a resumed
        # session reports the same mean loss as an uninterrupted one (the Trainer's own counts restart at resume).
        self._loss_sum, self._loss_count = 0.0, 0
        self._key_step: int | None = None
        self._key_micro = 0

    # ------------------------------------------------------------------ hooks for methods
    def prepare_method(self, model) -> None:
        """Called once, after variant freezing and before the optimizer exists (e.g. RKR adds its rectifiers)."""

    def extra_text_tokens(self, model) -> dict[str, torch.Tensor] | None:
        """Extra texts sent through the student's text encoder in the same call as the class prompts (VR-LwF)."""
        return None

    def classification_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The updated task's loss: cross-entropy over the session's classes (with `label_smoothing_factor`)."""
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.args.label_smoothing_factor)

    def method_losses(self, model, inputs: dict, outputs: StudentOutputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method's extra loss terms, already weighted; their sum is added to the cross-entropy."""
        return {}

    def on_session_end(self) -> None:
        """Called after training (IMM and WiSE-FT merge weights here)."""

    def extra_evaluations(self, evaluate) -> dict:
        """Extra evaluations after the session (WiSE-FT's alpha sweep); `evaluate(model)` returns a results dict."""
        return {}

    # ------------------------------------------------------------------ shared machinery
    def micro_batch_key(self, model) -> tuple[int, int, int]:
        """`(global step, micro-batch index inside the step, 0)` in training, `(global step, 0, 1)` in evaluation: the
        key of the current micro-batch's random draws ([`clip_cl.seeding.keyed_generator`]). Call it once per
        micro-batch. It depends on the Trainer's state only, so a run resumed from a checkpoint gets the keys of the
        uninterrupted run (checkpoints fall between optimizer steps, where the micro-batch index restarts).
        """
        step = int(self.state.global_step)
        if not model.training:  # evaluation: a fixed key per step that never disturbs training's sequence
            return step, 0, 1
        if step != self._key_step:
            self._key_step, self._key_micro = step, 0
        key = (step, self._key_micro, 0)
        self._key_micro += 1
        return key

    def _snapshot_initial_state(self, model) -> dict[str, torch.Tensor] | None:
        """A CPU copy of the starting weights, for methods that merge with them (IMM, WiSE-FT, ZSCL)."""
        return None

    def _teacher_dtype(self) -> torch.dtype:
        """The teacher runs in half precision on GPU under mixed precision (it never needs fp32 master weights)."""
        if self.args.device.type == "cuda":
            if self.args.bf16:
                return torch.bfloat16
            if self.args.fp16:
                return torch.float16
        return torch.float32

    def _get_train_sampler(self, train_dataset=None):
        # Rows built by `clip_cl.data.with_image_transform(train=True)` draw their crops and flips from keys that the
        # epoch-aware sampler hands out (see clip_cl/data/transforms.py): augmentation then does not depend on the
        # global RNG's history, so a run resumed mid-epoch trains on the same pixels as an uninterrupted one.
        from ...data import KeyedTrainDataset

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, KeyedTrainDataset):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return dataset.epoch_sampler(seed)
        return super()._get_train_sampler(train_dataset)

    def model_pixels(self, pixel_values, device: torch.device | None = None) -> torch.Tensor:
        """The model's float input from a batch's `uint8` pixels, on `device` (defaults to the training device);
        float pixels pass as they are, and a batch of still-encoded JPEGs (`decode_on_device`) is decoded there.
        Every image a method feeds the student or the teacher goes through here."""
        from ...data import normalize_pixels, pixels_to_device

        device = self.args.device if device is None else device
        return normalize_pixels(pixels_to_device(pixel_values, device), self.image_processor)

    def _prepare_inputs(self, inputs):
        # Batches arrive as uint8 (4x fewer bytes through collation, pinning and the copy), or as encoded JPEGs with
        # `decode_on_device` (the Trainer leaves that object on the host): decode and normalise once on the device,
        # so that every method's compute_loss sees the float pixels it always did.
        from ...data import EncodedImages

        inputs = super()._prepare_inputs(inputs)
        if isinstance(inputs.get("pixel_values"), (torch.Tensor, EncodedImages)):
            inputs["pixel_values"] = self.model_pixels(inputs["pixel_values"])
        return inputs

    def _set_signature_columns_if_needed(self):
        # The models' forward does not list `pixel_values`/`labels` the way we use them: keep them explicitly.
        if self._signature_columns is None:
            self._signature_columns = ["pixel_values", "labels"]

    def class_tokens(self, device) -> dict[str, torch.Tensor]:
        """Tokenised class prompts (tokenised once per session)."""
        if self._class_tokens is None or self._class_tokens["input_ids"].device != device:
            self._class_tokens = tokenize(self.clip_tokenizer, self._class_prompts, device)
        return self._class_tokens

    def map_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Dataset labels -> positions in `class_names`; a label outside the session is an error, not a silent drop."""
        lookup = self._label_lookup.to(labels.device)
        bad = (labels < 0) | (labels >= lookup.numel())
        targets = torch.where(bad, torch.full_like(labels, -1), lookup[labels.clamp(0, lookup.numel() - 1)])
        if (targets < 0).any():
            wrong = sorted(set(labels[targets < 0].tolist()))
            raise ValueError(f"Batch has labels {wrong} that are not among this session's classes {self.class_ids}; "
                             "the training set must hold only the session's classes (check the protocol split).")
        return targets

    @torch.no_grad()
    def teacher_class_features(self) -> torch.Tensor:
        """Teacher's normalised class-prompt features, computed once per session (the teacher never changes)."""
        if self._teacher_class_cache is None:
            self._teacher_class_cache = class_text_features(
                self.teacher, self.clip_tokenizer, self.class_names, self.args.train_templates,
                device=self.args.device)
        return self._teacher_class_cache

    def teacher_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Teacher's normalised image features of the batch (float32), computed in inference mode."""
        dtype = next(self.teacher.parameters()).dtype
        return teacher_call(image_features, self.teacher, pixel_values.to(dtype))

    def teacher_logit_scale(self) -> torch.Tensor:
        """The teacher's `exp(logit_scale)` (float32 constant)."""
        return logit_scale(self.teacher).detach().float()

    def teacher_logit_bias(self) -> torch.Tensor | None:
        """The teacher's logit bias (float32 constant), or None for families without one."""
        bias = logit_bias(self.teacher)
        return bias.detach().float() if bias is not None else None

    def _templates_count(self) -> int:
        return len(self.args.train_templates)

    def separate_extra_text_call(self, model, extra: dict[str, torch.Tensor]) -> bool:
        """Whether the method's extra texts get a text-encoder call of their own instead of sharing the class prompts'.

        One call pads both groups to the longer one (VR-LwF's 10-token pseudo-texts to the 16-token class prompts
        of the default templates: 1.5x the tokens) but is one launch sequence; two calls encode only their own
        lengths. Two calls are used on the CPU when one call would pad by more than 10 % of the tokens: there the
        encoder's arithmetic, proportional to the tokens, dominates, and the padded call measured 1.5-1.6x the text
        work of two (`benchmarks/bench_text_call.py`, docs/performance.md). One call is kept on accelerators (fewer
        kernel launches at these small text batches) and under any wrapper (DDP, FSDP, DeepSpeed): FSDP and
        DeepSpeed ZeRO-3 gather sharded weights only in the wrapper's forward, so a second call on the bare module
        would see shards; DDP alone would synchronise correctly (autograd sums a weight's gradients from both calls
        before DDP's hook fires) but multi-process runs are GPU runs in practice, so it keeps the single call too.
        """
        if unwrap(model) is not model or extra["input_ids"].device.type != "cpu":
            return False
        prompts = self.class_tokens(extra["input_ids"].device)["input_ids"]
        (n_a, len_a), (n_b, len_b) = prompts.shape, extra["input_ids"].shape
        return (n_a + n_b) * max(len_a, len_b) > 1.1 * (n_a * len_a + n_b * len_b)

    def extra_text_features(self, model, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised student features of the extra texts, in a call of their own (see [`separate_extra_text_call`]).

        With `_recompute_extra_texts` (VR-LwF), the text tower's layers keep only their inputs for the backward and
        recompute the rest in it, layer by layer, in this call only (the transformer layers' own non-reentrant
        activation checkpointing, switched on around the call): the values are the same, the pseudo-texts' share of
        the peak memory goes, one more forward of the layers is the price. An all-ones attention mask (CLIP's
        pseudo-texts all have one length) is dropped: it masks nothing, and the call is faster without it.
        """
        mask = extra.get("attention_mask")
        if mask is not None and bool(mask.all()):
            mask = None
        recompute = self._recompute_extra_texts and torch.is_grad_enabled() and model.training and not getattr(
            model, "is_activation_checkpointing", False)  # under the model's own checkpointing nothing is kept anyway
        with _checkpointed_layers(getattr(unwrap(model), "text_model", None) if recompute else None):
            return text_features(model, extra["input_ids"], mask)

    def student_forward(self, model, pixel_values: torch.Tensor) -> StudentOutputs:
        """The student's features and logits of the batch and all texts of the step.

        The batch and the class prompts go through one call of the (possibly DDP-wrapped) model: DDP only
        synchronises gradients of a forward it saw. The method's extra texts join that call, or get one of their own
        where that is faster ([`separate_extra_text_call`]).
        """
        tokens = self.class_tokens(pixel_values.device)
        extra = self.extra_text_tokens(model)
        n_prompts = tokens["input_ids"].shape[0]
        input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]
        extra_embeds = None
        if extra is not None and self.separate_extra_text_call(model, extra):
            extra_embeds = self.extra_text_features(model, extra)
        elif extra is not None:
            both = concat_tokens(tokens, extra, self.clip_tokenizer.pad_token_id)
            input_ids, attention_mask = both["input_ids"], both["attention_mask"]
        # The family's image inputs (SigLIP 2: NaFlex patches and masks) for one call of the wrapper's forward.
        out = model(**get_adapter(model).forward_inputs(model, pixel_values, input_ids, attention_mask))
        text = out.text_embeds
        class_embeds = text[:n_prompts]
        if extra is not None and extra_embeds is None:
            extra_embeds = text[n_prompts:]
        n_templates = self._templates_count()
        if n_templates > 1:
            class_embeds = F.normalize(class_embeds.view(len(self.class_names), n_templates, -1).mean(1), dim=-1)
        scale = logit_scale(model)
        image_embeds = out.image_embeds
        logits = scale * image_embeds @ class_embeds.t()
        return StudentOutputs(image_embeds=image_embeds, class_embeds=class_embeds, extra_embeds=extra_embeds,
                              logit_scale=scale, logits=logits, logit_bias=logit_bias(model))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = self.map_labels(inputs["labels"])
        outputs = self.student_forward(model, inputs["pixel_values"])
        ce = self.classification_loss(outputs.logits, targets)
        terms = self.method_losses(model, inputs, outputs, targets)
        loss = ce + sum(terms.values()) if terms else ce
        if not torch.isfinite(loss.detach()):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in {"ce": ce, **terms}.items())
            raise NonFiniteLossError(
                f"Non-finite loss at step {self.state.global_step} ({parts}). The run stopped before this update; "
                "the last saved checkpoint and results are intact. Lower the learning rate, enable gradient clipping "
                "(max_grad_norm), or switch fp16 to bf16.")
        if model.training:
            self._loss_sum += loss.detach().float().item()
            self._loss_count += 1
            self._metrics["loss_ce"].append(ce.detach().float().item())
            for name, value in terms.items():
                self._metrics[f"loss_{name}"].append(value.detach().float().item())
            acc = (outputs.logits.detach().argmax(-1) == targets).float().mean().item()
            self._metrics["train_acc"].append(100.0 * acc)
        return (loss, {"logits": outputs.logits}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Add the averages of the loss terms since the last log (trl's pattern), so every term shows in report_to.
        if self._metrics and "loss" in logs:
            for key, values in self._metrics.items():
                logs[key] = round(sum(values) / len(values), 6)
            self._metrics.clear()
        super().log(logs, start_time)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The paper's StepLR (x gamma every `step_lr_epochs` epochs), else the Trainer's `lr_scheduler_type`."""
        if self.args.step_lr_epochs is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = optimizer if optimizer is not None else self.optimizer
        epochs = self.args.num_train_epochs if self.args.max_steps <= 0 else None
        steps_per_epoch = num_training_steps / epochs if epochs else len(self.get_train_dataloader()) / max(
            1, self.args.gradient_accumulation_steps)
        step_size = max(1, math.ceil(self.args.step_lr_epochs * steps_per_epoch))
        self.lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=self.args.step_lr_gamma)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    @property
    def session_train_loss(self) -> float | None:
        """Mean training loss over every micro-batch of the session (also across a resume)."""
        return self._loss_sum / self._loss_count if self._loss_count else None

    def _save_checkpoint(self, model, trial):
        # Written before the Trainer's files: the checkpoint counts as complete only once trainer_state.json exists,
        # which the Trainer writes last.
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        if self.args.should_save:
            atomic_write_json(os.path.join(folder, _STATE_FILE), {"loss_sum": self._loss_sum,
                                                                  "loss_count": self._loss_count})
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if isinstance(resume_from_checkpoint, str) and os.path.isfile(os.path.join(resume_from_checkpoint, _STATE_FILE)):
            state = read_json(os.path.join(resume_from_checkpoint, _STATE_FILE))
            self._loss_sum, self._loss_count = float(state["loss_sum"]), int(state["loss_count"])
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        self.on_session_end()
        return output


def teacher_call(fn, *args, **kwargs) -> torch.Tensor:
    """`fn(*args, **kwargs).float()` under `torch.inference_mode()` (no autograd bookkeeping at all), returned as an
    ordinary tensor: an inference tensor cannot be saved for backward, and the losses multiply teacher features with
    student tensors that require grad. The copy is of the `[N, D]` features only."""
    with torch.inference_mode():
        out = fn(*args, **kwargs).float()
    return out.clone()

