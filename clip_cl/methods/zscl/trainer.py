from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ...adapters import get_adapter
from ...features import encode_texts, tokenize
from ...merging import assign_parameters, running_average_update, trainable_state
from ...prompts import format_prompts
from ...seeding import keyed_generator
from ..base.trainer import CLIPCLTrainer, StudentOutputs, unwrap
from .config import ZSCLConfig

__all__ = ["ZSCLTrainer", "ZSCLStudentOutputs", "ZSCL_PAPER", "l2_to_reference"]

logger = logging.getLogger(__name__)

ZSCL_PAPER = {
    "title": "Preventing Zero-Shot Transfer Degradation in Continual Learning of Vision-Language Models",
    "authors": "Zangwei Zheng, Mingyuan Ma, Kai Wang, Ziheng Qin, Xiangyu Yue, Yang You",
    "id": "2303.06628",
    "citation": (
        "@inproceedings{zheng2023preventing,\n  title={Preventing Zero-Shot Transfer Degradation in Continual Learning "
        "of Vision-Language Models},\n  author={Zheng, Zangwei and Ma, Mingyuan and Wang, Kai and Qin, Ziheng and Yue, "
        "Xiangyu and You, Yang},\n  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision "
        "(ICCV)},\n  year={2023}\n}"
    ),
}

WEIGHT_ENSEMBLE_FILE = "zscl_weight_ensemble.safetensors"

# Streams of keyed draws (see clip_cl.seeding): the reference texts of a micro-batch, the order of a reference pass.
_TEXT_STREAM, _REFERENCE_STREAM = 1, 2


def l2_to_reference(params: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Squared L2 distance of the weights to reference weights: `sum_k sum((params[k] - reference[k]) ** 2)`.

    Args:
        params (`Mapping[str, Tensor]`): the current weights (gradients flow into them).
        reference (`Mapping[str, Tensor]`): the reference weights, same names (no gradient flows into them).

    Returns:
        `Tensor`: the scalar distance (float32).
    """
    if not params:
        raise ValueError("l2_to_reference got no parameters.")
    names = list(params)
    tensors = [params[n] for n in names]
    refs = [reference[n].detach() for n in names]
    if all(p.dtype == torch.float32 and r.dtype == torch.float32 and r.device == p.device
           for p, r in zip(tensors, refs)):
        # One fused pass over all tensors (a handful of kernels instead of ~8 per tensor: on GPU the per-tensor
        # version cost more in launches than in memory traffic).
        return _SquaredDistance.apply(len(tensors), *tensors, *refs)
    total = None
    for p, r in zip(tensors, refs):
        d = (p.float() - r.to(p.device, torch.float32)).pow(2).sum()
        total = d if total is None else total + d
    return total


class _SquaredDistance(torch.autograd.Function):
    """`sum_k ||p_k - r_k||^2` over float32 tensors on one device, with `torch._foreach_*` kernels; the gradient
    `2 (p_k - r_k)` is recomputed in backward instead of keeping the differences alive (no extra memory)."""

    @staticmethod
    def forward(ctx, n: int, *tensors: torch.Tensor) -> torch.Tensor:
        params, refs = tensors[:n], tensors[n:]
        diffs = torch._foreach_sub(params, refs)
        total = torch.stack(torch._foreach_norm(diffs)).pow(2).sum()
        ctx.n = n
        ctx.save_for_backward(*tensors)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        tensors = ctx.saved_tensors
        params, refs = tensors[:ctx.n], tensors[ctx.n:]
        grads = torch._foreach_sub(params, refs)
        torch._foreach_mul_(grads, 2.0 * grad)
        return (None, *grads, *([None] * ctx.n))


@dataclass
class ZSCLStudentOutputs(StudentOutputs):
    """[`StudentOutputs`] of the training batch, plus the student's features of the step's reference images.

    Attributes:
        reference_image_embeds: `[R, D]` normalised student features of the reference images (computed in the same
            forward as the batch).
        reference_pixel_values: `[R, 3, H, W]` the reference images (for the teacher).
    """

    reference_image_embeds: torch.Tensor | None = None
    reference_pixel_values: torch.Tensor | None = None


class _WeightEnsembleCallback(TrainerCallback):
    """Adds the weights to ZSCL's running average after optimizer steps, and saves the average with checkpoints."""

    def __init__(self, trainer: ZSCLTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._maybe_average(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        self.trainer._save_weight_ensemble(folder)


class _ReferenceBatches(torch.utils.data.Sampler):
    """Endless batches of reference-set indices, from batch number `start` on: the set is cycled through in passes,
    each pass a permutation keyed by `(seed, pass)` cut into batches of `batch_size` (the last one of a pass smaller,
    as a shuffling `DataLoader` gives). Batch `c` depends on `c` only, so a resumed session reads what the
    uninterrupted one read."""

    def __init__(self, num_rows: int, batch_size: int, seed: Sequence[int], start: int = 0):
        self.num_rows, self.batch_size, self.seed, self.start = int(num_rows), int(batch_size), tuple(seed), int(start)

    def __iter__(self):
        per_pass = -(-self.num_rows // self.batch_size)
        number = self.start
        while True:
            pass_index, j = divmod(number, per_pass)
            order = torch.randperm(self.num_rows, generator=keyed_generator(*self.seed, _REFERENCE_STREAM, pass_index))
            yield order[j * self.batch_size:(j + 1) * self.batch_size].tolist()
            number += 1


def _collate_reference(rows: Sequence[Any]) -> torch.Tensor:
    if not rows:
        raise ValueError("Empty reference batch.")
    first = rows[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(list(rows))
    if isinstance(first, Mapping) and "pixel_values" in first:
        return torch.stack([r["pixel_values"] for r in rows])
    raise TypeError("Reference dataset rows must be image tensors or dicts with 'pixel_values' (build it with "
                    f"clip_cl.data.with_image_transform); got {type(first).__name__}.")


def _load_initial_model(args, student) -> torch.nn.Module:
    """The zero-shot model ZSCL distils from: `model_name_or_path`, checked against the student's architecture."""
    from ...models import load_model

    teacher, _ = load_model(args.model_name_or_path, local_files_only=args.local_files_only)
    mine = {k: tuple(v.shape) for k, v in unwrap(student).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in teacher.state_dict().items()}
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ValueError(f"zscl_teacher='initial' loads model_name_or_path={args.model_name_or_path!r}, whose "
                         f"weights do not match the model being trained ({diff[:5]}...). Set model_name_or_path to "
                         "the starting model, pass teacher_model=, or use zscl_teacher='previous'.")
    return teacher


class ZSCLTrainer(CLIPCLTrainer):
    """ZSCL (Zheng et al., ICCV 2023): distillation on reference data in feature space, L2 and weight ensemble in
    parameter space.

    Per micro-batch the loss is

    - the cross-entropy over the session's classes with label smoothing (`label_smoothing_factor`, 0.2);
    - `zscl_image_loss_weight * T^2 KL(p_teacher || p_student)` where `p` is the softmax over the reference texts of
      `logit_scale * f_img(reference image) . f_txt(reference text) / T`, one row per reference image, plus
      `zscl_text_loss_weight *` the same on the transposed logits (one row per reference text, over the batch's
      reference images). The teacher (`zscl_teacher`: the zero-shot model by default, as in ZSCL) gives both its
      image and text features; the student gives its image features and, by default as in ZSCL's code, uses the
      teacher's text features (`zscl_text_features: student` uses its own, so the text tower is distilled too);
    - `zscl_l2_weight * sum ||theta - theta_start||^2` over the trainable weights (`theta_start`: the session's
      starting weights).

    The reference images (`zscl_reference_dataset`, or `reference_dataset=`) go through the student in the same
    forward as the batch (one DDP forward per step), one reference batch per micro-batch, cycling through a shuffled
    loader; without a reference set the batch's own images are the reference images. The teacher's features of the
    reference texts are computed once per session.

    Weight ensemble: every `zscl_wa_every` optimizer steps the weights are added to a uniform running average that
    starts with the session's starting weights; at the end of the session the final weights are added too and the
    average replaces the model ([`on_session_end`]). The average is saved with every Trainer checkpoint and restored
    when a session resumes.

    Args:
        reference_dataset (*optional*): rows `{"pixel_values"}` (or image tensors) of reference images, already
            transformed; overrides `zscl_reference_dataset` (handy in Python and tests).
        **kwargs: as [`CLIPCLTrainer`].

    Example:
    ```python
    from clip_cl import ZSCLConfig, ZSCLTrainer, tiny_clip

    model, processor = tiny_clip()
    args = ZSCLConfig(output_dir="runs/zscl", num_train_epochs=1, per_device_train_batch_size=8,
                      zscl_reference_dataset={"path": "examples/data/coco_captions", "split": "test"},
                      zscl_reference_texts=["a dog on a sofa", "a red bus in the street", "two people skiing"])
    trainer = ZSCLTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                          class_names=["T-shirt/top", "trouser"], class_ids=[0, 1])
    trainer.train()  # trainer.model is the weight-ensembled model
    ```
    """

    _name: ClassVar[str] = "ZSCL"
    _method: ClassVar[str] = "zscl"
    _paper: ClassVar[dict] = ZSCL_PAPER
    _tag_names: ClassVar[list[str]] = ["clip-cl", "continual-learning", "clip", "zscl", "distillation"]
    _uses_teacher: ClassVar[bool] = True

    def __init__(self, model, args, train_dataset=None, processing_class=None, class_names=None, class_ids=None,
                 teacher_model=None, reference_dataset=None, **kwargs: Any):
        if not isinstance(args, ZSCLConfig):
            raise TypeError(f"ZSCLTrainer needs a ZSCLConfig, got {type(args).__name__}.")
        if teacher_model is None and args.zscl_teacher == "initial":
            teacher_model = _load_initial_model(args, model)
        self._reference_dataset = reference_dataset
        self._reference_data = None
        self._reference_loader = None
        self._reference_iter = None
        self._reference_next = 0
        self._draw_key: tuple[int, int, int] | None = None
        self._reference_texts: list[str] | None = None
        self._reference_tokens: dict[str, torch.Tensor] | None = None
        self._teacher_reference_cache: torch.Tensor | None = None
        self._step_text_index: torch.Tensor | None = None
        self._l2_reference: dict[str, torch.Tensor] | None = None
        self._average: dict[str, torch.Tensor] | None = None
        self._average_count = 0
        self._last_averaged_step: int | None = None
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         class_names=class_names, class_ids=class_ids, teacher_model=teacher_model, **kwargs)
        if args.variant == "TO" and args.zscl_text_features == "teacher" and (
                args.zscl_image_loss_weight or args.zscl_text_loss_weight):
            logger.warning("ZSCL with variant TO and zscl_text_features='teacher' (ZSCL's code) distils the frozen "
                           "image tower only: the distillation terms have no gradient. Set "
                           "zscl_text_features='student' to distil the text tower.")
        if args.zscl_wa_every > 0:
            self.add_callback(_WeightEnsembleCallback(self))

    def _snapshot_initial_state(self, model) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True) for n, p in unwrap(model).named_parameters()}

    # ------------------------------------------------------------------ loss
    def _distills(self) -> bool:
        return bool(self.args.zscl_image_loss_weight or self.args.zscl_text_loss_weight)

    def extra_text_tokens(self, model) -> dict[str, torch.Tensor] | None:
        """With `zscl_text_features="student"`: this micro-batch's reference texts, encoded in the student's forward."""
        if self.args.zscl_text_features != "student" or not self._distills():
            return None
        tokens = self.reference_tokens(self.args.device)
        n = tokens["input_ids"].shape[0]
        k = self.args.zscl_texts_per_step
        if k is None or k >= n:
            index = torch.arange(n)
        else:
            key = self._draw_key if self._draw_key is not None else self.micro_batch_key(model)
            generator = keyed_generator(self.args.seed, _TEXT_STREAM, self.accelerator.process_index, *key)
            index = torch.randperm(n, generator=generator)[:k].sort().values
        self._step_text_index = index
        index = index.to(tokens["input_ids"].device)
        return {"input_ids": tokens["input_ids"][index], "attention_mask": tokens["attention_mask"][index]}

    def student_forward(self, model, pixel_values: torch.Tensor) -> ZSCLStudentOutputs:
        """The base forward on `[batch; reference images]` in one call, split back into the two parts.

        The micro-batch's reference images and texts are keyed by the global step and the micro-batch index
        ([`micro_batch_key`]), not drawn from a generator's running state, so a session resumed from a checkpoint
        reads the same ones as an uninterrupted session.
        """
        self._draw_key = self.micro_batch_key(model)
        number = self._draw_key[0] * self.args.gradient_accumulation_steps + self._draw_key[1]
        reference = self.reference_batch(pixel_values.device, number=number) if self._distills() else None
        n = pixel_values.shape[0]
        pixels = pixel_values if reference is None else torch.cat([pixel_values, reference.to(pixel_values.dtype)])
        out = super().student_forward(model, pixels)
        return ZSCLStudentOutputs(
            image_embeds=out.image_embeds[:n], class_embeds=out.class_embeds, extra_embeds=out.extra_embeds,
            logit_scale=out.logit_scale, logits=out.logits[:n], logit_bias=out.logit_bias,
            reference_image_embeds=out.image_embeds[n:] if reference is not None else out.image_embeds,
            reference_pixel_values=reference if reference is not None else pixel_values)

    def method_losses(self, model, inputs: dict, outputs: ZSCLStudentOutputs,
                      targets: torch.Tensor) -> dict[str, torch.Tensor]:
        args = self.args
        terms: dict[str, torch.Tensor] = {}
        if self._distills():
            teacher_text = self.teacher_reference_text_features()
            teacher_image = self.teacher_image_features(outputs.reference_pixel_values)
            if args.zscl_text_features == "student":
                teacher_text = teacher_text[self._step_text_index.to(teacher_text.device)]
                student_text = outputs.extra_embeds.float()
            else:
                student_text = teacher_text
            # The image-text term in the family's own form (adapter): CLIP's softmax over texts (image term) and
            # over images (text term); SigLIP's per-pair sigmoid, which needs the logit bias.
            adapter = get_adapter(model)
            student_bias = outputs.logit_bias.float() if outputs.logit_bias is not None else None
            student_logits = adapter.pair_logits(outputs.reference_image_embeds.float(), student_text,
                                                 outputs.logit_scale.float(), student_bias)
            teacher_logits = adapter.pair_logits(teacher_image, teacher_text, self.teacher_logit_scale(),
                                                 self.teacher_logit_bias())
            if args.zscl_image_loss_weight:
                terms["zscl_image"] = args.zscl_image_loss_weight * adapter.pair_distillation_loss(
                    student_logits, teacher_logits, args.zscl_temperature, over="texts")
            if args.zscl_text_loss_weight:
                terms["zscl_text"] = args.zscl_text_loss_weight * adapter.pair_distillation_loss(
                    student_logits, teacher_logits, args.zscl_temperature, over="images")
        if args.zscl_l2_weight:
            params = {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}
            terms["l2"] = args.zscl_l2_weight * l2_to_reference(params, self.l2_reference())
        return terms

    # ------------------------------------------------------------------ reference data
    def reference_texts(self) -> list[str]:
        """The reference texts: `zscl_reference_texts`, else the prompts of `zscl_reference_class_names`, else the
        session's class prompts."""
        if self._reference_texts is None:
            args = self.args
            texts = args.zscl_reference_texts
            if isinstance(texts, str):
                if not os.path.isfile(texts):
                    raise FileNotFoundError(f"zscl_reference_texts={texts!r} is neither a list of texts nor an "
                                            "existing text file (one text per line).")
                with open(texts, encoding="utf-8") as f:
                    texts = [line.strip() for line in f if line.strip()]
                if not texts:
                    raise ValueError(f"The reference text file {args.zscl_reference_texts!r} holds no text.")
            elif texts is None and args.zscl_reference_class_names:
                texts = format_prompts(args.zscl_reference_class_names,
                                       args.zscl_reference_templates or args.zero_shot_templates)
            elif texts is None:
                texts = list(self._class_prompts)
            self._reference_texts = list(texts)
        return self._reference_texts

    def reference_tokens(self, device) -> dict[str, torch.Tensor]:
        """The tokenised reference texts (tokenised once per session)."""
        if self._reference_tokens is None or self._reference_tokens["input_ids"].device != torch.device(device):
            self._reference_tokens = tokenize(self.clip_tokenizer, self.reference_texts(), device)
        return self._reference_tokens

    @torch.no_grad()
    def teacher_reference_text_features(self) -> torch.Tensor:
        """The teacher's normalised features `[N, D]` (float32) of the reference texts, computed once per session."""
        if self._teacher_reference_cache is None:
            self._teacher_reference_cache = encode_texts(
                self.teacher, self.clip_tokenizer, self.reference_texts(),
                batch_size=self.args.per_device_eval_batch_size, device=self.args.device).float()
        return self._teacher_reference_cache

    def _build_reference_dataset(self):
        spec_dict = self.args.zscl_reference_dataset
        if spec_dict is None:
            return None
        from ...data import DatasetSpec, load_spec, with_image_transform

        image_processor = getattr(self.processing_class, "image_processor", None)
        if image_processor is None:
            raise ValueError("zscl_reference_dataset needs processing_class= the model's processor (its image processor "
                             "transforms the reference images).")
        spec = DatasetSpec.from_dict(spec_dict)
        raw = load_spec(spec)
        return with_image_transform(raw, image_processor, train=False, image_column=spec.image_column,
                                    label_column=None, dataset_name=spec.name)

    def reference_batch(self, device, number: int | None = None) -> torch.Tensor | None:
        """A batch of reference images on `device`, or None when no reference set is configured.

        The reference set is loaded on first use and cycled through, reshuffled every pass; batch `number` of the
        session is a function of `(seed, process, number)` only ([`_ReferenceBatches`]).

        Args:
            device: where to put the images.
            number (`int`, *optional*): which batch of the session; by default the one after the last one read.
                Training reads batch `global_step * gradient_accumulation_steps + micro_batch`.

        Returns:
            `Tensor | None`: `[R, 3, H, W]` images.
        """
        if self._reference_data is None:
            dataset = self._reference_dataset if self._reference_dataset is not None else \
                self._build_reference_dataset()
            if dataset is None:
                return None
            if len(dataset) == 0:
                raise ValueError("The ZSCL reference dataset is empty.")
            self._reference_data = dataset
        number = self._reference_next if number is None else int(number)
        if self._reference_iter is None or number != self._reference_next:
            # Sequential reads reuse the loader's iterator (and its prefetching workers); a jump (the first read of
            # a resumed session) starts a new one at the wanted batch.
            sampler = _ReferenceBatches(
                len(self._reference_data), self.args.zscl_reference_batch_size or self.args.per_device_train_batch_size,
                seed=(self.args.seed, self.accelerator.process_index), start=number)
            self._reference_loader = torch.utils.data.DataLoader(
                self._reference_data, batch_sampler=sampler, collate_fn=_collate_reference,
                num_workers=self.args.dataloader_num_workers)
            self._reference_iter = iter(self._reference_loader)
        batch = next(self._reference_iter)
        self._reference_next = number + 1
        return self.model_pixels(batch, device)

    # ------------------------------------------------------------------ parameter space
    def l2_reference(self) -> dict[str, torch.Tensor]:
        """The session's starting values of the trainable weights, on their devices (copied once)."""
        if self._l2_reference is None:
            model = unwrap(self.model)
            self._l2_reference = {n: self._initial_state[n].to(p.device, p.dtype)
                                  for n, p in model.named_parameters() if p.requires_grad}
        return self._l2_reference

    def _start_weight_ensemble(self, resume_from_checkpoint) -> None:
        model = unwrap(self.model)
        self._average = {n: self._initial_state[n].to(p.device, p.dtype, copy=True)
                         for n, p in model.named_parameters() if p.requires_grad}
        self._average_count, self._last_averaged_step = 1, None
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        if not resume_from_checkpoint:
            return
        path = os.path.join(resume_from_checkpoint, WEIGHT_ENSEMBLE_FILE)
        if not os.path.isfile(path):
            logger.warning("%s has no %s: the ZSCL weight ensemble restarts from the session's starting weights.",
                           resume_from_checkpoint, WEIGHT_ENSEMBLE_FILE)
            return
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            for name, value in self._average.items():
                value.copy_(f.get_tensor(name))
        self._average_count = int(meta["count"])
        self._last_averaged_step = int(meta["last_step"]) if meta.get("last_step") else None

    def _maybe_average(self, step: int) -> None:
        every = self.args.zscl_wa_every
        if every > 0 and self._average is not None and step % every == 0 and step != self._last_averaged_step:
            self._add_to_average(step)

    def _add_to_average(self, step: int) -> None:
        current = trainable_state(unwrap(self.model))
        running_average_update(self._average, current, self._average_count)
        self._average_count += 1
        self._last_averaged_step = step

    def _save_weight_ensemble(self, checkpoint_dir: str) -> None:
        if self._average is None or not self.args.should_save or not os.path.isdir(checkpoint_dir):
            return
        from safetensors.torch import save_file

        meta = {"count": str(self._average_count), "last_step": str(self._last_averaged_step or "")}
        save_file({n: t.detach().contiguous().cpu() for n, t in self._average.items()},
                  os.path.join(checkpoint_dir, WEIGHT_ENSEMBLE_FILE), metadata=meta)

    @property
    def weight_ensemble_count(self) -> int:
        """How many models the running average holds (the starting weights count as one)."""
        return self._average_count

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if self.args.zscl_wa_every > 0:
            self._start_weight_ensemble(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def on_session_end(self) -> None:
        """Weight ensemble: add the final weights (unless just added) and load the average into the model."""
        if self.args.zscl_wa_every <= 0 or self._average is None:
            return
        if self._last_averaged_step != self.state.global_step:
            self._add_to_average(self.state.global_step)
        assign_parameters(unwrap(self.model), self._average)
