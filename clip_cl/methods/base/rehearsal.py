"""What the rehearsal methods (`er`, `agem`, `gem`) share: their config fields, the trainer that draws replay and
memory batches (seeded by step, so they resume exactly) and computes the replay losses, and the runner hooks that
build the replay set and keep the exemplar memory of the update data between sessions.

The pure math (projections, the GEM dual, herding, the seeded draws, the memory record) is in `clip_cl.rehearsal`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ...features import concat_tokens, image_features, logit_scale, text_features, tokenize
from ...prompts import format_prompts
from ...rehearsal import (
    MEMORY_SELECTIONS,
    ExemplarMemory,
    RehearsalError,
    add_to_grads,
    clip_contrastive_loss,
    flat_dots,
    flat_grad,
    replay_indices,
    select_exemplars,
)
from .config import CLIPCLConfig, maybe_json
from .trainer import CLIPCLTrainer, unwrap

__all__ = ["GradientProjectionTrainer", "RehearsalConfig", "RehearsalTrainer", "ReplayBatch", "rehearsal_inputs",
           "update_memory"]

logger = logging.getLogger(__name__)

# Draw streams: the replay set, the memory of all earlier sessions, then one per earlier session (GEM); spaced per
# process so that every DDP rank draws different rows.
_PAIRS, _MEMORY, _SESSION = 0, 1, 100
_RANK_STRIDE = 10_000


@dataclass
class RehearsalConfig(CLIPCLConfig):
    r"""
    Fields shared by the rehearsal methods (`er`, `agem`, `gem`), on top of [`CLIPCLConfig`].

    Parameters that control the replay set:
        replay_dataset (`dict`, *optional*):
            Dataset spec of a replay set (JSON on the CLI): image-caption pairs (`captions_column`, one caption or a
            list per image; one is drawn per use), or an image-label set (`label_column`, class names) whose images
            are captioned with the training prompt of their class. `split` defaults to `"train"`. It must be
            disjoint from every evaluation set. Rows are read with the evaluation transform.
        replay_batch_size (`int`, *optional*):
            Replay pairs per draw (defaults to `per_device_train_batch_size`).

    Parameters that control the memory of the update data (MST):
        memory_size (`int`, defaults to 200):
            Exemplars kept from the update data of finished sessions: in total (divided evenly over the classes seen
            so far, iCaRL's fixed budget) or per class (`memory_per_class`). 0 keeps none.
        memory_per_class (`bool`, defaults to `False`):
            Count `memory_size` per class instead of in total.
        memory_selection (`str`, defaults to `"herding"`):
            `"herding"` (iCaRL: exemplars whose mean image feature, under the model after the session, stays
            closest to the class mean) or `"random"` (seeded).
        memory_batch_size (`int`, *optional*):
            Memory exemplars per draw (defaults to `per_device_train_batch_size`).
    """

    replay_dataset: dict | str | None = field(default=None, metadata={
        "help": "Replay set spec (JSON on the CLI): image-caption pairs (captions_column) or an image-label set "
                "(captioned with the training prompt); split defaults to train."})
    replay_batch_size: int | None = field(default=None, metadata={
        "help": "Replay pairs per draw (default: per_device_train_batch_size)."})
    memory_size: int = field(default=200, metadata={
        "help": "Exemplars kept from finished sessions' update data, in total (or per class with memory_per_class); "
                "0 keeps none."})
    memory_per_class: bool = field(default=False, metadata={"help": "Count memory_size per class, not in total."})
    memory_selection: str = field(default="herding", metadata={
        "help": "Exemplar selection: 'herding' (iCaRL, on the model's image features) or 'random'."})
    memory_batch_size: int | None = field(default=None, metadata={
        "help": "Memory exemplars per draw (default: per_device_train_batch_size)."})

    def __post_init__(self):
        ref = maybe_json(self.replay_dataset, "replay_dataset")
        if ref is not None:
            if not isinstance(ref, dict):
                raise ValueError(f"replay_dataset must be a dataset spec dict, got {ref!r}.")
            ref = dict(ref)
            ref.setdefault("name", Path(str(ref.get("path", "replay"))).name or "replay")
            ref.setdefault("split", "train")
            from ...data import DatasetSpec

            DatasetSpec.from_dict(ref)  # unknown keys fail now, not after the first session
        self.replay_dataset = ref
        self.memory_selection = str(self.memory_selection).lower()
        if self.memory_selection not in MEMORY_SELECTIONS:
            raise ValueError(f"memory_selection must be one of {MEMORY_SELECTIONS}, got {self.memory_selection!r}.")
        if self.memory_size is None or int(self.memory_size) < 0:
            raise ValueError(f"memory_size must be >= 0 (0 keeps no exemplars), got {self.memory_size}.")
        self.memory_size = int(self.memory_size)
        for name in ("replay_batch_size", "memory_batch_size"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be a positive integer or unset, got {value}.")
        super().__post_init__()
        if self.replay_dataset is None and (self.protocol == "ost" or self.memory_size == 0):
            raise ValueError(
                f"{self.method_name}: the replay set is empty (no replay_dataset, and "
                f"{'OST has no earlier session to remember' if self.protocol == 'ost' else 'memory_size is 0'}); "
                "set replay_dataset to an image-caption (or image-label) dataset spec"
                f"{'' if self.protocol == 'ost' else ', or memory_size > 0'}.")


def _rows(dataset, indices: list[int]) -> list[dict]:
    """Rows of a `datasets.Dataset` (one batched read, transform applied) or of any indexable dataset."""
    getitems = getattr(dataset, "__getitems__", None)
    return list(getitems(indices)) if getitems is not None else [dataset[i] for i in indices]


@dataclass
class ReplayBatch:
    """One draw of replay data, on the training device.

    Attributes:
        pair_pixels: `[R, 3, H, W]` images of the replay pairs, or None.
        pair_tokens: tokenised captions of the pairs (`input_ids`, `attention_mask`), or None.
        memory_pixels: `[M, 3, H, W]` memory exemplars, or None.
        memory_targets: `[M]` positions of their labels in the seen classes, or None.
    """

    pair_pixels: torch.Tensor | None = None
    pair_tokens: dict[str, torch.Tensor] | None = None
    memory_pixels: torch.Tensor | None = None
    memory_targets: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.pair_pixels is None and self.memory_pixels is None


class RehearsalTrainer(CLIPCLTrainer):
    """Base of the rehearsal trainers: seeded replay draws and the replay losses.

    The replay loss of a draw is `contrastive(pairs) + CE_seen(memory)`: CLIP's symmetric contrastive loss on the
    replay pairs, plus cross-entropy over every class seen so far (prompts with the training templates) on memory
    exemplars of earlier sessions. Either part is absent when there is nothing to draw it from.

    Draws are pure functions of `(seed, stream, draw index)` ([`clip_cl.rehearsal.replay_indices`]), with draw index
    the micro-batch (ER) or optimizer step (A-GEM, GEM) counted by the Trainer's `global_step`, so a run resumed
    from a checkpoint draws exactly the rows an uninterrupted run draws.

    Args:
        model, args, train_dataset, processing_class, class_names, class_ids, **kwargs: as [`CLIPCLTrainer`]; `args`
            is a [`RehearsalConfig`] subclass.
        replay_dataset (*optional*): rows `{"pixel_values", "captions": list[str]}` (pairs) or
            `{"pixel_values", "labels"}` with `replay_class_names` (captioned with the first training template).
        replay_class_names (`list[str]`, *optional*): class names of an image-label replay set.
        memory_dataset (*optional*): rows `{"pixel_values", "labels"}` of memory exemplars (update-task labels).
        memory_sessions (`list[int]`, *optional*): the session (1-based) of each memory row.
        seen_class_names / seen_class_ids (`list`, *optional*): every class seen so far (name and dataset label);
            default: the session's.
    """

    _uses_memory: ClassVar[bool] = True
    # How draws are indexed: "micro" (one per micro-batch: ER) or "step" (one per optimizer step: A-GEM, GEM).
    _draw_every: ClassVar[str] = "micro"

    def __init__(self, model, args, train_dataset=None, processing_class=None, class_names=None, class_ids=None,
                 replay_dataset=None, replay_class_names=None, memory_dataset=None, memory_sessions=None,
                 seen_class_names=None, seen_class_ids=None, **kwargs: Any):
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         class_names=class_names, class_ids=class_ids, **kwargs)
        self.replay_data = replay_dataset
        self.replay_class_names = None if replay_class_names is None else [str(c) for c in replay_class_names]
        if replay_dataset is not None and len(replay_dataset) == 0:
            raise RehearsalError("The replay dataset has no rows; give a non-empty replay_dataset.")
        self.memory_data = memory_dataset if memory_dataset is not None and len(memory_dataset) else None
        self.memory_sessions = [int(s) for s in (memory_sessions or [])]
        if self.memory_data is not None and len(self.memory_sessions) != len(self.memory_data):
            raise ValueError("memory_sessions must give the session of every memory row.")
        # The seen classes: the session's first (same logit order as the cross-entropy), then the older ones.
        names = list(self.class_names)
        ids = list(self.class_ids)
        for n, i in zip(seen_class_names or [], seen_class_ids or []):
            if str(n) not in names:
                names.append(str(n))
                ids.append(int(i))
        self.seen_class_names, self.seen_class_ids = names, ids
        lookup = torch.full((max(ids) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(ids)] = torch.arange(len(ids))
        self._seen_lookup = lookup
        self._seen_prompts = format_prompts(names, args.train_templates)
        self._seen_tokens: dict[str, torch.Tensor] | None = None
        self._trainable: list[torch.nn.Parameter] | None = None
        self._draw_step, self._micro = -1, 0
        if self.replay_data is None and self.memory_data is None:
            logger.info("%s: nothing to replay in this session (no replay set, no memory yet): it trains as FT.",
                        self._name)

    # ------------------------------------------------------------------ sizes and tokens
    @property
    def replay_batch_size(self) -> int:
        return int(self.args.replay_batch_size or self.args.per_device_train_batch_size)

    @property
    def memory_batch_size(self) -> int:
        return int(self.args.memory_batch_size or self.args.per_device_train_batch_size)

    def seen_class_tokens(self, device) -> dict[str, torch.Tensor]:
        """Tokenised training prompts of every seen class (tokenised once)."""
        if self._seen_tokens is None or self._seen_tokens["input_ids"].device != torch.device(device):
            self._seen_tokens = tokenize(self.clip_tokenizer, self._seen_prompts, device)
        return self._seen_tokens

    def ensemble(self, text: torch.Tensor, num_classes: int) -> torch.Tensor:
        """`[C * T, D]` prompt features -> `[C, D]` normalised template ensemble (a no-op with one template)."""
        n_templates = self._templates_count()
        if n_templates == 1:
            return text
        return F.normalize(text.view(num_classes, n_templates, -1).mean(1), dim=-1)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters, in a fixed order (what gradients are flattened over)."""
        if self._trainable is None:
            self._trainable = [p for p in unwrap(self.model).parameters() if p.requires_grad]
        return self._trainable

    # ------------------------------------------------------------------ seeded draws
    def _stream(self, stream: int) -> int:
        return self.accelerator.process_index * _RANK_STRIDE + stream

    def next_draw_index(self) -> int:
        """The index of this draw: `global_step * accumulation + micro-batch` (ER) or `global_step` (A-GEM, GEM)."""
        step = int(self.state.global_step)
        if self._draw_every == "step":
            return step
        if step != self._draw_step:
            self._draw_step, self._micro = step, 0
        index = step * self.args.gradient_accumulation_steps + self._micro
        self._micro += 1
        return index

    def draw(self, draw: int, sessions: list[int] | None = None, with_pairs: bool = True,
             stream_offset: int = 0) -> ReplayBatch:
        """Replay pairs and/or memory exemplars of draw number `draw`.

        Args:
            draw (`int`): the draw index.
            sessions (`list[int]`, *optional*): draw memory only from these sessions (GEM's per-session constraint);
                `None` draws from the whole memory; `[]` draws no memory.
            with_pairs (`bool`, defaults to `True`): whether to draw replay pairs.
            stream_offset (`int`, defaults to 0): separates this memory stream from others.

        Returns:
            [`ReplayBatch`] on the training device.
        """
        device = self.args.device
        out = ReplayBatch()
        seed = int(self.args.seed)
        if with_pairs and self.replay_data is not None:
            idx = replay_indices(len(self.replay_data), self.replay_batch_size, draw, seed, self._stream(_PAIRS))
            rows = _rows(self.replay_data, idx)
            out.pair_pixels = self.model_pixels(torch.stack([r["pixel_values"] for r in rows]), device)
            out.pair_tokens = tokenize(self.clip_tokenizer, self._captions(rows, idx, draw), device)
        if self.memory_data is not None and sessions != []:
            pool = list(range(len(self.memory_data))) if sessions is None else [
                i for i, s in enumerate(self.memory_sessions) if s in sessions]
            if pool:
                stream = self._stream(_MEMORY + stream_offset)
                idx = [pool[i] for i in replay_indices(len(pool), self.memory_batch_size, draw, seed, stream)]
                rows = _rows(self.memory_data, idx)
                out.memory_pixels = self.model_pixels(torch.stack([r["pixel_values"] for r in rows]), device)
                labels = torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long)
                targets = self._seen_lookup[labels.clamp(0, self._seen_lookup.numel() - 1)]
                if (labels >= self._seen_lookup.numel()).any() or (targets < 0).any():
                    raise ValueError(f"Memory rows have labels {sorted(set(labels.tolist()))} outside the seen "
                                     f"classes {self.seen_class_ids}.")
                out.memory_targets = targets.to(device)
        return out

    def _captions(self, rows: list[dict], idx: list[int], draw: int) -> list[str]:
        """One caption per pair: a seeded choice among an image's captions, or its class's training prompt."""
        templates = self.args.train_templates
        if self.replay_class_names is not None:
            return [templates[(i + draw) % len(templates)].format(self.replay_class_names[int(r["labels"])])
                    for i, r in zip(idx, rows)]
        captions = []
        for i, row in zip(idx, rows):
            caps = row["captions"]
            caps = [caps] if isinstance(caps, str) else list(caps)
            if not caps:
                raise RehearsalError(f"Replay row {i} has no caption; drop caption-less rows from replay_dataset.")
            captions.append(caps[(i + draw) % len(caps)])
        return captions

    # ------------------------------------------------------------------ losses
    def replay_losses(self, image_pairs: torch.Tensor | None, text_pairs: torch.Tensor | None,
                      image_memory: torch.Tensor | None, seen_class_embeds: torch.Tensor | None,
                      memory_targets: torch.Tensor | None, logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """The replay loss terms (unweighted): `{"replay_pairs": contrastive, "replay_memory": CE over seen}`."""
        terms = {}
        if image_pairs is not None:
            terms["replay_pairs"] = clip_contrastive_loss(image_pairs, text_pairs, logit_scale)
        if image_memory is not None:
            logits = logit_scale.float() * image_memory.float() @ seen_class_embeds.float().t()
            terms["replay_memory"] = F.cross_entropy(logits, memory_targets)
        return terms

    def replay_loss_of(self, model, batch: ReplayBatch) -> dict[str, torch.Tensor]:
        """The replay loss terms of `batch` through `model` (the bare model: a reference gradient's own forward,
        outside DDP), via `clip_cl.features`."""
        device = self.args.device
        terms: dict[str, torch.Tensor] = {}
        if batch.empty:
            return terms
        pixels = [t for t in (batch.pair_pixels, batch.memory_pixels) if t is not None]
        images = image_features(model, torch.cat(pixels))
        n_pairs = 0 if batch.pair_pixels is None else batch.pair_pixels.shape[0]
        texts = []
        if batch.memory_pixels is not None:
            texts.append(self.seen_class_tokens(device))
        if batch.pair_tokens is not None:
            texts.append(batch.pair_tokens)
        tokens = texts[0] if len(texts) == 1 else concat_tokens(texts[0], texts[1], self.clip_tokenizer.pad_token_id)
        text = text_features(model, tokens["input_ids"], tokens["attention_mask"])
        n_seen = len(self._seen_prompts) if batch.memory_pixels is not None else 0
        seen = self.ensemble(text[:n_seen], len(self.seen_class_names)) if n_seen else None
        scale = logit_scale(model)
        return self.replay_losses(images[:n_pairs] if n_pairs else None, text[n_seen:] if n_pairs else None,
                                  images[n_pairs:] if batch.memory_pixels is not None else None, seen,
                                  batch.memory_targets, scale)


# ---------------------------------------------------------------------------------------------------- runner hooks
def _check_replay_config(config: RehearsalConfig) -> None:
    if not isinstance(config, RehearsalConfig):
        raise TypeError(f"A rehearsal method needs a RehearsalConfig, got {type(config).__name__}.")


def rehearsal_inputs(protocol, processor, config: RehearsalConfig, run_dir: Path, session: int) -> dict[str, Any]:
    """The trainer keyword arguments of session `session` (0-based): the replay set, the memory of the earlier
    sessions (restored from `run_dir/memory.json`), and the seen classes.

    Args:
        protocol ([`Protocol`]): the run's protocol (its `replay` spec is `config.replay_dataset`).
        processor: the CLIP processor (its image processor transforms the rows).
        config ([`RehearsalConfig`]): the run's config.
        run_dir (`Path`): the run folder.
        session (`int`): the session about to train (0-based).

    Returns:
        `dict`: keyword arguments for the rehearsal trainer.
    """
    from ...data import with_image_transform

    _check_replay_config(config)
    memory = ExemplarMemory.load(run_dir, config.memory_size, config.memory_per_class, config.memory_selection)
    memory.check_budget(len(protocol.class_names))
    memory.truncate(session)
    ip = processor.image_processor
    out: dict[str, Any] = {}
    replay = protocol.replay_dataset()
    if replay is not None:
        dataset, names = replay
        name = f"{protocol.replay.name}/{protocol.replay.split}"
        out["replay_dataset"] = with_image_transform(
            dataset, ip, train=False, label_column="label" if names is not None else None,
            captions_column=None if names is not None else "captions", dataset_name=name)
        out["replay_class_names"] = names
    exemplars = memory.exemplars(before_session=session + 1)
    if exemplars:
        rows = protocol.train_rows([r for _, _, r in exemplars])
        out["memory_dataset"] = with_image_transform(rows, ip, train=False, label_column="label",
                                                     dataset_name="memory")
        out["memory_sessions"] = [s for s, _, _ in exemplars]
    seen = [c for s in protocol.sessions[: session + 1] for c in s]
    out["seen_class_names"] = [protocol.class_names[i] for i in seen]
    out["seen_class_ids"] = seen
    return out


@torch.no_grad()
def _candidate_features(model, dataset, image_processor, batch_size: int, num_workers: int, device, autocast
                        ) -> torch.Tensor:
    from ...data import collate_classification, normalize_pixels

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_classification)
    feats = []
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                pixels = normalize_pixels(batch["pixel_values"].to(device), image_processor)
                feats.append(image_features(model, pixels).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(feats)


def update_memory(model, protocol, processor, config: RehearsalConfig, run_dir: Path, session: int,
                  state) -> dict[str, Any] | None:
    """After session `session` (0-based) trained: select its exemplars, write `run_dir/memory.json` atomically (main
    process), and return what `results.json` records. The last session's exemplars are not selected (no later
    session uses them).

    Returns:
        `dict` or None: the memory summary (settings, and per session the kept rows by label).
    """
    from ...data import label_array, with_image_transform

    _check_replay_config(config)
    memory = ExemplarMemory.load(run_dir, config.memory_size, config.memory_per_class, config.memory_selection)
    memory.truncate(session)
    if config.memory_size == 0 or session + 1 >= protocol.num_sessions:
        return memory.summary()
    if state.is_main_process:
        rows = protocol.session_train_indices(session)
        candidates = protocol.train_rows(rows)
        labels = label_array(candidates, "label")
        seen = sum(len(s) for s in protocol.sessions[: session + 1])
        budget = memory.per_class_budget(seen)
        features = None
        if config.memory_selection == "herding":
            ds = with_image_transform(candidates, processor.image_processor, train=False, label_column="label",
                                      dataset_name="memory candidates")
            autocast = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None
            features = _candidate_features(unwrap(model), ds, processor.image_processor,
                                           config.per_device_eval_batch_size,
                                           config.dataloader_num_workers, next(unwrap(model).parameters()).device,
                                           autocast)
        orders = select_exemplars(labels, rows, budget, config.memory_selection, config.seed + session, features)
        memory.add_session(session + 1, orders)
        memory.save(run_dir)
    state.wait_for_everyone()
    memory = ExemplarMemory.load(run_dir, config.memory_size, config.memory_per_class, config.memory_selection)
    return memory.summary()


class GradientProjectionTrainer(RehearsalTrainer):
    """Base of A-GEM and GEM: once per optimizer step, on the gradient accumulated over the micro-batches (and
    all-reduced by DDP), compute the reference gradients of the replay data and project the update gradient.

    Reference gradients come from their own forward of the bare model (outside DDP, so no gradient hook fires) under
    the accelerator's autocast, with `torch.autograd.grad` over the trainable parameters only (so `p.grad`, the
    update gradient, is untouched); under DDP they are then averaged over the processes, like the update gradient.
    Under fp16 the update gradient is still multiplied by the loss scale when it is projected: it is divided by it
    for the projection (GEM's margin is not scale-invariant) and multiplied back. The projection runs before
    gradient clipping, as in A-GEM's and GEM's code.
    """

    _draw_every: ClassVar[str] = "step"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(f"{self._name} projects the whole flat gradient, which DeepSpeed and FSDP shard; run it "
                             "on one process or under DDP (accelerate's multi_gpu config).")

    def reference_batches(self, draw: int) -> list[ReplayBatch]:
        """The replay batches whose gradients constrain the update at optimizer step `draw`."""
        raise NotImplementedError

    def coefficients(self, dots: torch.Tensor, references: torch.Tensor) -> torch.Tensor | None:
        """The projection as coefficients `v` (`[K]`, float64): the projected update gradient is `g + sum_k v_k
        references[k]`; `None` leaves `g` unchanged. `dots` (`[K]`, float64) holds `references @ g`, already
        divided by the loss scale under fp16."""
        raise NotImplementedError

    def reference_gradient(self, batch: ReplayBatch, out: torch.Tensor | None = None) -> torch.Tensor:
        """The flat gradient `[P]` (float32) of the replay loss of `batch`, averaged over processes (written into
        `out` when given)."""
        params = self.trainable_parameters()
        model = unwrap(self.model)
        with self.accelerator.autocast():
            terms = self.replay_loss_of(model, batch)
        loss = sum(terms.values())
        for name, value in terms.items():
            self._metrics[f"ref_{name}"].append(value.detach().float().item())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = flat_grad(params, grads, out=out)
        if self.accelerator.num_processes > 1:
            flat = self.accelerator.reduce(flat, reduction="mean")
            if out is not None:
                out.copy_(flat)
        return flat

    def _buffer(self, name: str, shape: tuple[int, ...], device) -> torch.Tensor:
        """A float32 buffer kept across steps (flat gradients are the size of the model: allocate them once)."""
        buf = getattr(self, name, None)
        if buf is None or tuple(buf.shape) != shape or buf.device != torch.device(device):
            buf = torch.empty(shape, dtype=torch.float32, device=device)
            setattr(self, name, buf)
        return buf

    def project_gradients(self) -> bool:
        """Project the accumulated gradient in place (called once per optimizer step). Returns whether it changed.

        Every projection of A-GEM and GEM is `g + G^T v` for a few coefficients `v` computed from `G g` (and `G G^T`):
        so the update gradient is never flattened. `G g` is reduced parameter by parameter over views of the flat
        reference buffer, and the projection is added into `p.grad` in place: two passes over the update gradient
        instead of four (flatten, project into a new vector, copy back), which is most of what A-GEM and GEM add to
        their floor on a CPU (docs/performance.md).
        """
        batches = [b for b in self.reference_batches(int(self.state.global_step)) if not b.empty]
        if not batches:
            return False
        params = self.trainable_parameters()
        size, device = sum(p.numel() for p in params), params[0].device
        references = self._buffer("_reference_buffer", (len(batches), size), device)
        for k, batch in enumerate(batches):
            self.reference_gradient(batch, out=references[k])
        scaler = getattr(self.accelerator, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        v = self.coefficients(flat_dots(params, references) / scale, references)
        changed = v is not None
        if changed:
            add_to_grads(params, references, [float(c) * scale for c in v])
        self._metrics["projected"].append(float(changed))
        return changed

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The Trainer marks the last micro-batch of an optimizer step with sync_gradients, before its training step:
        # after its backward, p.grad holds the whole (DDP-reduced) accumulated gradient, not yet clipped.
        if self.accelerator.sync_gradients:
            self.project_gradients()
        return loss
