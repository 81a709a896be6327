"""Metrics as pure tensor functions: top-k accuracy, image-text retrieval recall, continual-learning summaries.

Every accuracy or recall is a Python `float` in percent (0-100). Ranking metrics resolve ties **pessimistically**: a
wrong candidate that scores exactly as high as the correct one is ranked before it. A collapsed model whose
embeddings are all identical therefore scores at chance or below, never 100%. Only exact equality is a tie; scores
that differ by float rounding are ordered as they are. Definitions with a worked example: `docs/metrics.md`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["topk_accuracy", "retrieval_recall", "class_oracle_recall", "continual_metrics", "trajectory_summary"]

# Upper bound on the elements of one similarity chunk (64 MiB in float32): 5k images x 25k captions is done in
# slices of a few hundred rows instead of one 500 MB matrix plus masks of the same shape.
_CHUNK_ELEMENTS = 1 << 24


def _rows_per_chunk(num_columns: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}.")
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // max(1, num_columns))


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks}.")
    return ks


def _percent(correct: int, total: int) -> float:
    return 100.0 * correct / total


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # Half-precision scores would create ties that the model did not make; float64 inputs stay float64.
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5), *,
                  chunk_size: int | None = None) -> dict[str, float]:
    """Top-k classification accuracy with pessimistic ties.

    A sample is correct at `k` iff fewer than `k` *other* classes have a logit `>=` the logit of the true class (so a
    class tied with the true one counts as ranked before it). `k` larger than the number of classes `C` is clipped
    to `C` (every sample is then correct), the key keeps the requested `k`. A NaN true logit is always wrong.

    Args:
        logits (`torch.Tensor` of shape `[N, C]`): scores, higher is better.
        labels (`torch.Tensor` of shape `[N]`): true class indices in `[0, C)`.
        ks (`Sequence[int]`, defaults to `(1, 5)`): the values of `k`.
        chunk_size (`int`, *optional*): rows per chunk; by default chosen to keep each chunk near 16M elements.

    Returns:
        `dict[str, float]`: `{"top1": ..., "top5": ...}` (one `f"top{k}"` per `k`), in percent.
    """
    ks = _check_ks(ks)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}.")
    num, num_classes = logits.shape
    labels = torch.as_tensor(labels, device=logits.device).long().reshape(-1)
    if labels.numel() != num:
        raise ValueError(f"Got {num} rows of logits but {labels.numel()} labels.")
    if num == 0 or num_classes == 0:
        raise ValueError("topk_accuracy needs at least one sample and one class.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}].")
    dtype = _compute_dtype(logits)
    correct = {k: 0 for k in ks}
    step = _rows_per_chunk(num_classes, chunk_size)
    for start in range(0, num, step):
        scores = logits[start:start + step].to(dtype)
        y = labels[start:start + step, None]
        true = scores.gather(1, y)
        # The true class always satisfies `>=` itself (unless NaN), so it is removed from the count explicitly.
        ge = scores >= true
        ge.scatter_(1, y, False)
        beaten_by = ge.sum(1)
        finite = ~torch.isnan(true.squeeze(1))
        for k in ks:
            correct[k] += int(((beaten_by < min(k, num_classes)) & finite).sum())
    return {f"top{k}": _percent(correct[k], num) for k in ks}


def retrieval_recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_image: torch.Tensor,
                     ks: Sequence[int] = (1, 5, 10), *, chunk_size: int | None = None) -> dict[str, float]:
    """Image-text retrieval Recall@K with several (possibly unequal numbers of) captions per image.

    The score of a pair is the dot product of the embeddings (the cosine similarity when they are normalised).

    - TR@K (image -> text): an image is correct iff ANY of its captions is among its top `K` texts. With
      pessimistic ties this means: fewer than `K` texts that are *not* its captions score `>=` its best caption.
    - IR@K (text -> image): a caption is correct iff its image is among its top `K` images, i.e. fewer than `K`
      other images score `>=` its image.

    Ties are pessimistic: a wrong candidate scoring exactly as high as the correct one ranks before it, so identical
    embeddings give (near) zero recall rather than 100%. Ties between two correct captions do not matter. The
    similarity matrix is computed in chunks of rows, so memory stays at ~`chunk_size x max(N, T)` elements.

    Args:
        image_embeds (`torch.Tensor` of shape `[N, D]`): image embeddings.
        text_embeds (`torch.Tensor` of shape `[T, D]`): caption embeddings.
        text_to_image (`torch.LongTensor` of shape `[T]`): the image index in `[0, N)` of each caption. Every image
            needs at least one caption.
        ks (`Sequence[int]`, defaults to `(1, 5, 10)`): the values of `K`; `K` above the number of candidates is
            clipped (recall 100%).
        chunk_size (`int`, *optional*): rows of the similarity matrix per chunk; by default near 16M elements a chunk.

    Returns:
        `dict[str, float]`: `{"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10"}` (one pair per `K`), in percent.
    """
    ks = _check_ks(ks)
    if image_embeds.dim() != 2 or text_embeds.dim() != 2 or image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"Expected image_embeds [N, D] and text_embeds [T, D], got {tuple(image_embeds.shape)} "
                         f"and {tuple(text_embeds.shape)}.")
    num_images, num_texts = image_embeds.shape[0], text_embeds.shape[0]
    t2i = torch.as_tensor(text_to_image, device=image_embeds.device).long().reshape(-1)
    if t2i.numel() != num_texts:
        raise ValueError(f"text_to_image has {t2i.numel()} entries for {num_texts} captions.")
    if num_images == 0 or num_texts == 0:
        raise ValueError("retrieval_recall needs at least one image and one caption.")
    if t2i.min() < 0 or t2i.max() >= num_images:
        raise ValueError(f"text_to_image must lie in [0, {num_images}), got range [{t2i.min()}, {t2i.max()}].")
    captions_per_image = torch.bincount(t2i, minlength=num_images)
    if (captions_per_image == 0).any():
        missing = torch.nonzero(captions_per_image == 0).flatten()[:10].tolist()
        raise ValueError(f"Every image needs at least one caption; images {missing} (first 10) have none.")

    dtype = _compute_dtype(image_embeds, text_embeds)
    images = image_embeds.to(dtype)
    texts = text_embeds.to(dtype)
    tr = {k: 0 for k in ks}
    ir = {k: 0 for k in ks}

    # Image -> text: one chunk of images against all captions.
    step = _rows_per_chunk(num_texts, chunk_size)
    for start in range(0, num_images, step):
        sims = images[start:start + step] @ texts.T  # [B, T]
        rows = torch.arange(start, start + sims.shape[0], device=sims.device)
        is_caption = t2i[None, :] == rows[:, None]
        best = sims.masked_fill(~is_caption, float("-inf")).amax(1, keepdim=True)
        beaten_by = ((sims >= best) & ~is_caption).sum(1)
        finite = ~torch.isnan(best.squeeze(1))
        for k in ks:
            tr[k] += int(((beaten_by < k) & finite).sum())

    # Text -> image: one chunk of captions against all images.
    step = _rows_per_chunk(num_images, chunk_size)
    for start in range(0, num_texts, step):
        sims = texts[start:start + step] @ images.T  # [B, N]
        target = t2i[start:start + step, None]
        true = sims.gather(1, target)
        ge = sims >= true
        ge.scatter_(1, target, False)
        beaten_by = ge.sum(1)
        finite = ~torch.isnan(true.squeeze(1))
        for k in ks:
            ir[k] += int(((beaten_by < k) & finite).sum())

    out = {f"tr@{k}": _percent(tr[k], num_images) for k in ks}
    out.update({f"ir@{k}": _percent(ir[k], num_texts) for k in ks})
    return out


def class_oracle_recall(image_labels: Sequence[int], text_to_image: Sequence[int],
                        ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected Recall@K of a model that knows every image's class exactly and nothing finer.

    Such a model ranks the candidates of the query's class first, in random order among themselves (each class's
    candidates are interchangeable to it). On a caption set whose images fall into classes (Pascal Sentences: 20 VOC
    classes) this is the recall that class-level knowledge alone buys; beating it needs instance-level matching.

    - TR@K of an image with `c` captions in a class with `C` captions: `1 - comb(C - c, K) / comb(C, K)` (at least one
      of its captions among `K` drawn without replacement from its class's).
    - IR@K of a caption whose image's class has `n` images: `min(1, K / n)`.

    Args:
        image_labels (`Sequence[int]`): the class of each image, length `N`.
        text_to_image (`Sequence[int]`): the image index in `[0, N)` of each caption, as in [`retrieval_recall`].
        ks (`Sequence[int]`, defaults to `(1, 5, 10)`): the values of `K`.

    Returns:
        `dict[str, float]`: the keys of [`retrieval_recall`], in percent (expected values, not rounded to counts).
    """
    from math import comb

    ks = _check_ks(ks)
    labels = [int(x) for x in image_labels]
    t2i = [int(x) for x in text_to_image]
    if not labels or not t2i:
        raise ValueError("class_oracle_recall needs at least one image and one caption.")
    if min(t2i) < 0 or max(t2i) >= len(labels):
        raise ValueError(f"text_to_image must lie in [0, {len(labels)}), got range [{min(t2i)}, {max(t2i)}].")
    captions = np.bincount(t2i, minlength=len(labels))
    if (captions == 0).any():
        raise ValueError("Every image needs at least one caption.")
    captions = captions.tolist()
    class_captions: dict[int, int] = {}
    class_images: dict[int, int] = {}
    for label, c in zip(labels, captions):
        class_captions[label] = class_captions.get(label, 0) + c
        class_images[label] = class_images.get(label, 0) + 1
    out = {}
    for k in ks:
        # K at or above the class's caption count finds every caption of the class (the comb(C, K) = 0 case).
        tr = [1.0 - comb(class_captions[y] - c, k) / comb(class_captions[y], k) if k < class_captions[y] else 1.0
              for y, c in zip(labels, captions)]
        out[f"tr@{k}"] = 100.0 * sum(tr) / len(labels)
    for k in ks:
        ir = [min(1.0, k / class_images[labels[i]]) for i in t2i]
        out[f"ir@{k}"] = 100.0 * sum(ir) / len(t2i)
    return out


def continual_metrics(acc, initial: Sequence[float] | None = None) -> dict[str, float | None]:
    """Summaries of an accuracy matrix `a[i][j]` = accuracy after session `i` on task (session) `j`, both 0-based.

    With `T` sessions (`a` is `T x T`, every entry given):

    - `last` = mean_j a[T-1][j]
    - `avg` = mean_i ( mean_{j<=i} a[i][j] ): average incremental accuracy (class-incremental convention)
    - `bwt` = mean_{j<T-1} ( a[T-1][j] - a[j][j] ): backward transfer (negative = forgetting)
    - `forgetting` = mean_{j<T-1} ( max_{j<=i<T-1} a[i][j] - a[T-1][j] ) (Chaudhry et al. 2018: the best accuracy
      on task `j` once it was learned, minus the final one; rows before task `j` was learned do not count)
    - `transfer` = mean_{j>=1} ( mean_{i<j} a[i][j] ): accuracy on a task before it is learned (MTIL "Transfer",
      Zheng et al., ZSCL, ICCV 2023). With `initial` (accuracies before any training, row `i = -1`) the inner mean
      also includes `initial[j]` and the outer mean runs over every `j >= 0`.

    With `T == 1` `bwt`, `forgetting` and `transfer` are `None` (undefined, not 0), whether or not `initial` is given.

    Args:
        acc (`Sequence[Sequence[float]]`, `np.ndarray` or `torch.Tensor` of shape `[T, T]`): the accuracy matrix.
        initial (`Sequence[float]` of length `T`, *optional*): accuracies on each task before any training.

    Returns:
        `dict[str, float | None]`: `{"avg", "last", "bwt", "transfer", "forgetting"}` in the units of `acc`.
    """
    a = np.asarray(acc.tolist() if isinstance(acc, torch.Tensor) else acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"The accuracy matrix must be square T x T with T >= 1, got shape {a.shape}.")
    num = a.shape[0]
    a0 = None
    if initial is not None:
        a0 = np.asarray(initial.tolist() if isinstance(initial, torch.Tensor) else initial, dtype=np.float64)
        if a0.shape != (num,):
            raise ValueError(f"initial must hold {num} accuracies (one per task), got shape {a0.shape}.")
    last = float(a[-1].mean())
    avg = float(np.mean([a[i, :i + 1].mean() for i in range(num)]))
    if num == 1:
        return {"avg": avg, "last": last, "bwt": None, "transfer": None, "forgetting": None}
    old = np.arange(num - 1)
    bwt = float((a[-1, old] - a[old, old]).mean())
    forgetting = float(np.mean([a[j:-1, j].max() - a[-1, j] for j in old]))
    if a0 is None:
        transfer = float(np.mean([a[:j, j].mean() for j in range(1, num)]))
    else:
        transfer = float(np.mean([np.concatenate([a0[j:j + 1], a[:j, j]]).mean() for j in range(num)]))
    return {"avg": avg, "last": last, "bwt": bwt, "transfer": transfer, "forgetting": forgetting}


def trajectory_summary(values: Sequence[float]) -> dict[str, float]:
    """Summary of one metric over sessions, e.g. zero-shot accuracy or TR@1 after each session.

    Args:
        values (`Sequence[float]`): the metric at session 0 (usually before training), 1, 2, ...

    Returns:
        `dict[str, float]`: `start` (first value), `end` (last value), `min` (lowest value) and
        `drop` = `start - end` (positive when the metric went down).
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("trajectory_summary needs at least one value.")
    return {"start": values[0], "end": values[-1], "min": min(values), "drop": values[0] - values[-1]}
