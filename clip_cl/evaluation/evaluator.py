"""Evaluating a CLIP model on the update task, zero-shot classification sets and retrieval sets.

Datasets are any map-style dataset (`len` + `__getitem__`, e.g. a `datasets.Dataset` with a transform) whose rows
are `{"pixel_values": Tensor[3, H, W], "labels": int}` (classification) or `{"pixel_values": ..., "captions":
list[str]}` (retrieval): `uint8` pixels (normalised on the device with the `image_processor`), float pixels (taken as
normalised), or encoded JPEGs (`with_image_transform(..., decode_on_device=True)`, decoded on the device). Under `accelerate` with several processes, each process
encodes one shard and the features are gathered back in dataset order, so every process computes the same metrics
as a single-process run. The results schema is documented in `docs/metrics.md`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import PartialState
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..data.transforms import EncodedImage, collate_pixels, normalize_pixels, pixels_to_device
from ..features import encode_texts, image_features, text_features, tokenize
from ..prompts import DEFAULT_TRAIN_TEMPLATES, DEFAULT_ZERO_SHOT_TEMPLATES, check_templates, class_text_features
from .distributed import gather_list, gather_rows, shard_indices
from .metrics import retrieval_recall, topk_accuracy

__all__ = [
    "Evaluator",
    "encode_image_dataset",
    "eval_mode",
    "retrieval_eval",
    "updated_task_eval",
    "zero_shot_eval",
]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put `model` in eval mode and afterwards restore every submodule's own `training` flag.

    A plain `model.train(was_training)` would also flip submodules that the trainer deliberately keeps in eval mode
    (e.g. a frozen tower), so the flags are saved and restored one by one.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, (param.dtype if param.dtype.is_floating_point else torch.float32)


def _autocast(device: torch.device, autocast_dtype: torch.dtype | None):
    # Autocast only pays off (and is only well supported for these models) on CUDA.
    if device.type == "cuda" and autocast_dtype is not None:
        return torch.autocast("cuda", dtype=autocast_dtype)
    return contextlib.nullcontext()


def _as_caption_list(captions) -> list[str]:
    return [captions] if isinstance(captions, str) else [str(c) for c in captions]


def _collate(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    if "pixel_values" not in rows[0]:
        raise KeyError(f"Dataset rows need a 'pixel_values' tensor [3, H, W]; got keys {sorted(rows[0])}. "
                       "Apply the image transform (e.g. `dataset.set_transform(...)`) before evaluating.")
    batch: dict[str, Any] = {"pixel_values": collate_pixels([_as_pixels(r["pixel_values"]) for r in rows])}
    batch.update(_collate_meta(rows))
    return batch


def _as_pixels(value):
    # Still-encoded JPEGs (`decode_on_device`) pass as they are; anything else becomes a tensor.
    return value if isinstance(value, EncodedImage) else torch.as_tensor(value)


def _collate_pinned(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """[`_collate`] with the pixels stacked directly into page-locked memory (one host copy instead of two)."""
    if "pixel_values" not in rows[0]:
        return _collate(rows)  # raises its error
    pixels = [_as_pixels(r["pixel_values"]) for r in rows]
    if any(isinstance(p, EncodedImage) for p in pixels):
        batch = _collate(rows)
        batch["pixel_values"] = batch["pixel_values"].pin_memory()
        return batch
    out = torch.empty((len(pixels), *pixels[0].shape), dtype=pixels[0].dtype, pin_memory=True)
    torch.stack(pixels, out=out)
    batch = _collate_meta(rows)
    batch["pixel_values"] = out
    return batch


def _collate_meta(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The labels / captions of a batch (everything [`_collate`] returns but the pixels)."""
    batch: dict[str, Any] = {}
    label_key = "labels" if "labels" in rows[0] else "label" if "label" in rows[0] else None
    if label_key is not None:
        batch["labels"] = [int(r[label_key]) for r in rows]
    if "captions" in rows[0]:
        batch["captions"] = [_as_caption_list(r["captions"]) for r in rows]
    return batch


def _prefetched(iterable, depth: int = 2) -> Iterator[Any]:
    """Iterate `iterable` in a background thread, `depth` items ahead (torch releases the GIL while copying)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterable:
                if not put(item):
                    return
            put(end)
        except BaseException as err:  # re-raised in the consumer
            put(_Failure(err))

    thread = threading.Thread(target=work, name="clip-cl-eval-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is end:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


@torch.no_grad()
def encode_image_dataset(
    model: torch.nn.Module,
    dataset,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    desc: str | None = None,
    disable_tqdm: bool = False,
    image_processor=None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Normalised image features of a whole dataset, in dataset order, with its labels or captions.

    Runs without gradient with the model in eval mode (each submodule's mode is restored afterwards). With several
    `accelerate` processes each encodes a contiguous shard and the results are gathered on every process.

    Args:
        model (`torch.nn.Module`): a model of a supported family (DDP/FSDP/compiled wrappers are fine).
        dataset: map-style dataset whose rows hold `pixel_values` and `labels` (or `label`) and/or `captions`.
        batch_size (`int`, defaults to 256): images per forward pass (per process).
        num_workers (`int`, defaults to 0): `DataLoader` workers.
        device (`torch.device` or `str`, *optional*): where to run; defaults to the model's device.
        autocast_dtype (`torch.dtype`, *optional*): e.g. `torch.bfloat16`; used only on CUDA.
        desc (`str`, *optional*): progress-bar label.
        disable_tqdm (`bool`, defaults to `False`): hide the progress bar (always hidden off the main process).
        image_processor (*optional*): the model's image processor; normalises `uint8` rows (those of
            `clip_cl.data.with_image_transform`) on `device` with `clip_cl.data.normalize_pixels`. Rows of float
            pixels are taken as already normalised. Rows built with `decode_on_device=True` carry encoded JPEGs,
            which are decoded and transformed on `device` (`clip_cl.data.pixels_to_device`) before that.

    Returns:
        `tuple[torch.Tensor, dict]`: features `[N, D]` in float32 on `device`, L2-normalised, and `extras` with
        `"labels"` (`LongTensor[N]` on CPU) and/or `"captions"` (`list[list[str]]`) when the rows have them.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("Cannot evaluate on an empty dataset.")
    state = PartialState()
    distributed = state.num_processes > 1
    model_device, param_dtype = _model_device_dtype(model)
    device = torch.device(device) if device is not None else model_device
    indices = shard_indices(n) if distributed else list(range(n))
    # On a GPU without loader workers, batches are collated straight into pinned memory by a background thread, so
    # that stacking the next batch on the host overlaps the kernel launches of the current one (the evaluation is
    # host-bound otherwise; see docs/performance.md). With workers, the DataLoader's own pinning thread does it.
    prefetch = device.type == "cuda" and num_workers == 0
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate_pinned if prefetch else _collate,
                        pin_memory=device.type == "cuda" and not prefetch)
    feats: list[torch.Tensor] = []
    labels: list[int] = []
    captions: list[list[str]] = []
    with eval_mode(model), _autocast(device, autocast_dtype):
        batches = _prefetched(loader) if prefetch else loader
        for batch in tqdm(batches, desc=desc, total=len(loader), disable=disable_tqdm or not state.is_main_process):
            # A batch of still-encoded JPEGs (`decode_on_device`) is decoded and transformed on `device` here.
            pixel_values = normalize_pixels(pixels_to_device(batch["pixel_values"], device), image_processor,
                                            dtype=param_dtype)
            # Normalise in float32: under bf16 autocast the norm itself would be rounded.
            feats.append(F.normalize(image_features(model, pixel_values, normalize=False).float(), dim=-1))
            labels.extend(batch.get("labels", ()))
            captions.extend(batch.get("captions", ()))
    features = torch.cat(feats)
    extras: dict[str, Any] = {}
    if labels:
        # On the features' device: NCCL can only gather CUDA tensors.
        extras["labels"] = torch.tensor(labels, dtype=torch.long, device=features.device)
    if captions:
        extras["captions"] = captions
    if distributed:
        features = gather_rows(features, n)
        if "labels" in extras:
            extras["labels"] = gather_rows(extras["labels"], n)
        if "captions" in extras:
            extras["captions"] = gather_list(extras["captions"], n)
    if "labels" in extras:
        extras["labels"] = extras["labels"].cpu()
    return features, extras


def _split_kwargs(kw: dict[str, Any]) -> tuple[int, torch.device | None, torch.dtype | None]:
    return kw.get("batch_size", 256), kw.get("device"), kw.get("autocast_dtype")


@torch.no_grad()
def _text_side(model, fn, device, autocast_dtype, *args, **kwargs) -> torch.Tensor:
    device = torch.device(device) if device is not None else _model_device_dtype(model)[0]
    with eval_mode(model), _autocast(device, autocast_dtype):
        return fn(model, *args, device=device, **kwargs).float()


# Tokenised caption batches of recent retrieval evaluations, kept on the host. A run evaluates the same captions after
# every session, and on a GPU tokenising them costs more than encoding them (docs/performance.md).
_TOKEN_CACHE: OrderedDict[tuple, tuple[Any, list[str], list[dict[str, torch.Tensor]]]] = OrderedDict()
_TOKEN_CACHE_SIZE = 4


def _tokenized_batches(tokenizer, texts: list[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """`tokenize` of every `batch_size` slice of `texts` (as `encode_texts` does), cached across calls."""
    key = (id(tokenizer), batch_size, len(texts), hash(tuple(texts)))
    hit = _TOKEN_CACHE.get(key)
    if hit is not None and hit[0]() is tokenizer and hit[1] == texts:
        _TOKEN_CACHE.move_to_end(key)
        return hit[2]
    batches = [tokenize(tokenizer, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    _TOKEN_CACHE[key] = (weakref.ref(tokenizer), list(texts), batches)
    while len(_TOKEN_CACHE) > _TOKEN_CACHE_SIZE:
        _TOKEN_CACHE.popitem(last=False)
    return batches


@torch.no_grad()
def _encode_texts_cached(model, tokenizer, texts: list[str], batch_size: int, device=None) -> torch.Tensor:
    """[`encode_texts`] with the tokenisation cached (same batches, same features)."""
    if not texts:
        return encode_texts(model, tokenizer, texts, batch_size, device)  # raises its error
    device = device if device is not None else _model_device_dtype(model)[0]
    return torch.cat([text_features(model, b["input_ids"].to(device, non_blocking=True),
                                    b["attention_mask"].to(device, non_blocking=True)).float()
                      for b in _tokenized_batches(tokenizer, texts, batch_size)])


def _encode_texts_sharded(model, tokenizer, texts: Sequence[str], batch_size: int, device=None) -> torch.Tensor:
    # Tens of thousands of captions cost as much as the images, so they are sharded over processes the same way.
    if PartialState().num_processes == 1:
        return _encode_texts_cached(model, tokenizer, list(texts), batch_size, device)
    shard = [texts[i] for i in shard_indices(len(texts))]
    return gather_rows(_encode_texts_cached(model, tokenizer, shard, batch_size, device), len(texts))


def zero_shot_eval(model, tokenizer, dataset, class_names: Sequence[str],
                   templates: Sequence[str] = DEFAULT_ZERO_SHOT_TEMPLATES, **kw: Any) -> dict[str, Any]:
    """Zero-shot classification accuracy with a prompt-ensemble classifier.

    Args:
        model: a model of a supported family (`clip_cl.adapters`).
        tokenizer: its tokenizer.
        dataset: rows with `pixel_values` and `labels` indexing `class_names`.
        class_names (`Sequence[str]`): the class names, in label order.
        templates (`Sequence[str]`, defaults to `DEFAULT_ZERO_SHOT_TEMPLATES`): prompt templates, ensembled.
        **kw: passed to [`encode_image_dataset`] (`batch_size`, `num_workers`, `device`, `autocast_dtype`, `desc`,
            `disable_tqdm`, `image_processor`).

    Returns:
        `dict`: `{"top1": float, "top5": float, "num_images": int}` (percent; top-5 clipped to the class count).
    """
    batch_size, device, autocast_dtype = _split_kwargs(kw)
    text = _text_side(model, class_text_features, device, autocast_dtype, tokenizer, list(class_names),
                      check_templates(templates), batch_size=batch_size)
    feats, extras = encode_image_dataset(model, dataset, **kw)
    if "labels" not in extras:
        raise KeyError("zero_shot_eval needs rows with 'labels'.")
    out: dict[str, Any] = topk_accuracy(feats @ text.to(feats.device).T, extras["labels"], ks=(1, 5))
    out["num_images"] = len(feats)
    return out


def retrieval_eval(model, tokenizer, dataset, folds: int = 1, **kw: Any) -> dict[str, Any]:
    """Image-text retrieval Recall@{1,5,10} in both directions, several captions per image.

    Args:
        model: a model of a supported family (`clip_cl.adapters`).
        tokenizer: its tokenizer.
        dataset: rows with `pixel_values` and `captions` (a list of at least one string).
        folds (`int`, defaults to 1): split the images into this many consecutive folds of equal size, rank each
            fold's captions and images among that fold only, and average the recalls over the folds. 5 on COCO's
            Karpathy 5k test is the "COCO 1k" protocol of the official CL-CLIP code (`methods/base.py: retri`).
        **kw: passed to [`encode_image_dataset`]; `batch_size` also batches the captions.

    Returns:
        `dict`: `{"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10"}` in percent (see [`retrieval_recall`]) plus
        `"num_images"` and `"num_captions"` (and `"folds"` when above 1).
    """
    if not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be a positive integer, got {folds!r}.")
    batch_size, device, autocast_dtype = _split_kwargs(kw)
    feats, extras = encode_image_dataset(model, dataset, **kw)
    if "captions" not in extras:
        raise KeyError("retrieval_eval needs rows with 'captions'.")
    captions = extras["captions"]
    empty = [i for i, caps in enumerate(captions) if not caps]
    if empty:
        raise ValueError(f"Every retrieval image needs at least one caption; images {empty[:10]} (first 10) have none.")
    texts = [c for caps in captions for c in caps]
    text_to_image = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], dtype=torch.long)
    text = _text_side(model, _encode_texts_sharded, device, autocast_dtype, tokenizer, texts, batch_size)
    text = text.to(feats.device)
    if folds == 1:
        out: dict[str, Any] = retrieval_recall(feats, text, text_to_image, ks=(1, 5, 10))
    else:
        if len(feats) % folds:
            raise ValueError(f"{len(feats)} retrieval images cannot be split into {folds} equal folds; set eval_folds "
                             "to a divisor of the number of images (5 for COCO's 5k test), or 1.")
        size = len(feats) // folds
        per_fold = []
        for f in range(folds):
            in_fold = (text_to_image >= f * size) & (text_to_image < (f + 1) * size)
            per_fold.append(retrieval_recall(feats[f * size:(f + 1) * size], text[in_fold.to(text.device)],
                                             text_to_image[in_fold] - f * size, ks=(1, 5, 10)))
        out = {key: sum(r[key] for r in per_fold) / folds for key in per_fold[0]}
        out["folds"] = folds
    out["num_images"] = len(feats)
    out["num_captions"] = len(texts)
    return out


def _check_sessions(sessions: Sequence[Sequence[int]], num_classes: int, seen: int) -> list[list[int]]:
    sessions = [[int(c) for c in s] for s in sessions]
    flat = [c for s in sessions for c in s]
    if not sessions or any(not s for s in sessions):
        raise ValueError("sessions must be a non-empty list of non-empty lists of class ids.")
    if len(set(flat)) != len(flat) or min(flat) < 0 or max(flat) >= num_classes:
        raise ValueError(f"Session class ids must be distinct and lie in [0, {num_classes}).")
    if not 0 <= seen <= len(sessions):
        raise ValueError(f"seen must lie in [0, {len(sessions)}], got {seen}.")
    return sessions


def updated_task_eval(model, tokenizer, dataset, class_names: Sequence[str], sessions: Sequence[Sequence[int]],
                      seen: int, templates: Sequence[str] = DEFAULT_TRAIN_TEMPLATES, **kw: Any) -> dict[str, Any]:
    """Class-incremental accuracy on the update task after `seen` sessions (the paper's UT-Acc), plus per session.

    Image features and class text features are computed once, then sliced per question. "All classes" below means
    the union of all sessions; images whose label is in no session are ignored.

    Args:
        model: a model of a supported family (`clip_cl.adapters`).
        tokenizer: its tokenizer.
        dataset: update-task test rows with `pixel_values` and `labels` (indices into `class_names`).
        class_names (`Sequence[str]`): all update-task classes.
        sessions (`Sequence[Sequence[int]]`): the label ids learned in each session (disjoint).
        seen (`int`): sessions learned so far, 0 (before training) to `len(sessions)`.
        templates (`Sequence[str]`, defaults to `DEFAULT_TRAIN_TEMPLATES`): prompt templates, ensembled.
        **kw: passed to [`encode_image_dataset`].

    Returns:
        `dict`: `"acc"`/`"top5"`: accuracy on the images of the seen classes, classifying among the seen classes (all
        classes when `seen == 0`); `"per_session"`: for each session `j`, accuracy on its images among the classes
        of sessions `0..max(seen - 1, j)`; `"per_session_task"`: for each `j`, accuracy among session `j`'s classes
        only; `"num_classes_seen"` (classes of sessions `< seen`); `"num_images"` (images behind `"acc"`);
        `"balanced_per_session"`: for each `j`, the mean over session `j`'s classes of their per-class accuracy,
        classifying among all classes; `"balanced_acc"`: the mean of those over the seen sessions (all sessions when
        `seen == 0`). The balanced pair is the UT-Acc of the official CL-CLIP code (`methods/base.py: test` and
        `get_acc_bwt`: predictions over every class, per-class accuracy averaged per phase, then over the phases
        learned). Accuracies are percent, `None` where a subset has no images (classes without images are left out
        of the balanced means).
    """
    batch_size, device, autocast_dtype = _split_kwargs(kw)
    sessions = _check_sessions(sessions, len(class_names), seen)
    text = _text_side(model, class_text_features, device, autocast_dtype, tokenizer, list(class_names),
                      check_templates(templates), batch_size=batch_size)
    feats, extras = encode_image_dataset(model, dataset, **kw)
    if "labels" not in extras:
        raise KeyError("updated_task_eval needs rows with 'labels'.")
    labels = extras["labels"]
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"Update-task labels must lie in [0, {len(class_names)}).")
    text = text.to(feats.device)

    def accuracy(image_classes: list[int], classifier: list[int]) -> dict[str, float] | None:
        rows = torch.isin(labels, torch.tensor(image_classes))
        if not rows.any():
            return None
        column = torch.full((len(class_names),), -1, dtype=torch.long)
        column[classifier] = torch.arange(len(classifier))
        rows_dev = rows.to(feats.device)
        return topk_accuracy(feats[rows_dev] @ text[classifier].T, column[labels[rows]], ks=(1, 5))

    def upto(j: int) -> list[int]:
        return [c for s in sessions[:j + 1] for c in s]

    seen_classes = upto(seen - 1) if seen > 0 else upto(len(sessions) - 1)
    head = accuracy(seen_classes, seen_classes)
    per_session = [accuracy(s, upto(max(seen - 1, j))) for j, s in enumerate(sessions)]
    per_session_task = [accuracy(s, s) for s in sessions]
    every = upto(len(sessions) - 1)
    column = torch.full((len(class_names),), -1, dtype=torch.long)
    column[every] = torch.arange(len(every))
    in_any = torch.isin(labels, torch.tensor(every))
    predicted = torch.tensor(every)[(feats[in_any.to(feats.device)] @ text[every].T).argmax(1).cpu()]
    hits = predicted == labels[in_any]
    per_class = {c: 100.0 * hits[labels[in_any] == c].float().mean().item() for c in every
                 if bool((labels[in_any] == c).any())}
    balanced = [sum(per_class[c] for c in s if c in per_class) / n if (n := sum(c in per_class for c in s)) else None
                for s in sessions]
    counted = [b for b in balanced[:seen if seen > 0 else len(sessions)] if b is not None]
    return {
        "acc": head["top1"] if head else None,
        "top5": head["top5"] if head else None,
        "per_session": [r["top1"] if r else None for r in per_session],
        "per_session_task": [r["top1"] if r else None for r in per_session_task],
        "num_classes_seen": len(upto(seen - 1)) if seen > 0 else 0,
        "num_images": int(torch.isin(labels, torch.tensor(seen_classes)).sum()),
        "balanced_acc": sum(counted) / len(counted) if counted else None,
        "balanced_per_session": balanced,
    }


class Evaluator:
    """Evaluates a model on everything a continual-learning run tracks, with one call per session.

    Args:
        tokenizer: the CLIP tokenizer.
        update (`tuple`, *optional*): `(dataset, class_names, sessions)` of the update task's test split, see
            [`updated_task_eval`].
        zero_shot (`dict[str, tuple]`, *optional*): `name -> (dataset, class_names)` zero-shot classification sets.
        retrieval (`dict[str, Dataset]`, *optional*): `name -> dataset` retrieval sets (rows with `captions`).
        retrieval_folds (`dict[str, int]`, *optional*): `name -> folds` of [`retrieval_eval`] (default 1).
        zero_shot_templates (`Sequence[str]`, defaults to `DEFAULT_ZERO_SHOT_TEMPLATES`): prompts of the zero-shot
            sets (the paper's `"this is a photo of {} ."`).
        ut_templates (`Sequence[str]`, defaults to `DEFAULT_TRAIN_TEMPLATES`): prompts of the update task (the
            paper's training prompt, so the evaluated classifier is the one being trained).
        batch_size (`int`, defaults to 256): images (and captions) per forward pass, per process.
        num_workers (`int`, defaults to 0): `DataLoader` workers.
        autocast_dtype (`torch.dtype`, *optional*): autocast dtype on CUDA, e.g. `torch.bfloat16`.
        device (`torch.device` or `str`, *optional*): where to evaluate; defaults to the model's device.
        disable_tqdm (`bool`, defaults to `False`): hide progress bars.
        image_processor (*optional*): the model's image processor, which normalises `uint8` rows on the device (see
            [`encode_image_dataset`]).
    """

    def __init__(
        self,
        tokenizer,
        *,
        update: tuple[Any, Sequence[str], Sequence[Sequence[int]]] | None = None,
        zero_shot: Mapping[str, tuple[Any, Sequence[str]]] | None = None,
        retrieval: Mapping[str, Any] | None = None,
        retrieval_folds: Mapping[str, int] | None = None,
        zero_shot_templates: Sequence[str] = DEFAULT_ZERO_SHOT_TEMPLATES,
        ut_templates: Sequence[str] = DEFAULT_TRAIN_TEMPLATES,
        batch_size: int = 256,
        num_workers: int = 0,
        autocast_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        disable_tqdm: bool = False,
        image_processor=None,
    ):
        self.tokenizer = tokenizer
        if update is not None:
            dataset, class_names, sessions = update
            _check_sessions(sessions, len(class_names), 0)
            update = (dataset, list(class_names), [list(s) for s in sessions])
        self.update = update
        self.zero_shot = {name: (ds, list(names)) for name, (ds, names) in (zero_shot or {}).items()}
        self.retrieval = dict(retrieval or {})
        self.retrieval_folds = {name: int((retrieval_folds or {}).get(name, 1)) for name in self.retrieval}
        self.zero_shot_templates = check_templates(zero_shot_templates)
        self.ut_templates = check_templates(ut_templates)
        self.encode_kwargs = {"batch_size": batch_size, "num_workers": num_workers, "autocast_dtype": autocast_dtype,
                              "device": device, "disable_tqdm": disable_tqdm, "image_processor": image_processor}

    def evaluate(self, model, seen: int) -> dict[str, Any]:
        """Evaluate `model` after `seen` learned sessions (0 = before training).

        Args:
            model: the model (possibly wrapped); its train/eval modes are restored afterwards.
            seen (`int`): number of update-task sessions learned so far.

        Returns:
            `dict`: `{"seen": int, "ut": dict | None, "zero_shot": {name: dict}, "retrieval": {name: dict},
            "seconds": float}`, JSON-serialisable and identical on every process.
        """
        start = time.perf_counter()
        ut = None
        if self.update is not None:
            dataset, class_names, sessions = self.update
            ut = updated_task_eval(model, self.tokenizer, dataset, class_names, sessions, seen, self.ut_templates,
                                   desc="eval update task", **self.encode_kwargs)
        zero_shot = {name: zero_shot_eval(model, self.tokenizer, ds, names, self.zero_shot_templates,
                                          desc=f"eval zero-shot {name}", **self.encode_kwargs)
                     for name, (ds, names) in self.zero_shot.items()}
        retrieval = {name: retrieval_eval(model, self.tokenizer, ds, folds=self.retrieval_folds[name],
                                          desc=f"eval retrieval {name}", **self.encode_kwargs)
                     for name, ds in self.retrieval.items()}
        return {"seen": int(seen), "ut": ut, "zero_shot": zero_shot, "retrieval": retrieval,
                "seconds": time.perf_counter() - start}

    @staticmethod
    def summary_row(results: Mapping[str, Any]) -> dict[str, Any]:
        """The headline numbers of one [`Evaluator.evaluate`] result, flat (for a log line or a CSV row).

        Args:
            results (`dict`): the output of [`Evaluator.evaluate`].

        Returns:
            `dict`: `seen`, `ut_acc`, `zs_acc` (mean top-1 over zero-shot sets), `tr@1` and `ir@1` (means over
            retrieval sets), then `zs_acc/<name>`, `tr@1/<name>`, `ir@1/<name>` per dataset. Means over no dataset
            are `None`.
        """
        def mean(values: list[float]) -> float | None:
            return sum(values) / len(values) if values else None

        zs = results.get("zero_shot") or {}
        rt = results.get("retrieval") or {}
        ut = results.get("ut")
        row: dict[str, Any] = {
            "seen": results.get("seen"),
            "ut_acc": ut["acc"] if ut else None,
            "zs_acc": mean([r["top1"] for r in zs.values()]),
            "tr@1": mean([r["tr@1"] for r in rt.values()]),
            "ir@1": mean([r["ir@1"] for r in rt.values()]),
        }
        row.update({f"zs_acc/{name}": r["top1"] for name, r in zs.items()})
        for name, r in rt.items():
            row[f"tr@1/{name}"] = r["tr@1"]
            row[f"ir@1/{name}"] = r["ir@1"]
        return row
