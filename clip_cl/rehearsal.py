"""Rehearsal: the pure math of A-GEM and GEM, seeded replay draws, and the exemplar memory of the update data.

Everything here is plain functions or a small record class, testable without a Trainer:

- [`flat_grad`] / [`assign_flat_grad`]: gradients of the trainable parameters as one vector, and back.
- [`agem_project`]: A-GEM's projection (Chaudhry et al. 2019).
- [`gem_dual_solve`] / [`gem_project`]: GEM's projection through its dual quadratic program (Lopez-Paz & Ranzato 2017),
  solved in torch.
- [`replay_indices`]: the rows of the `draw`-th replay batch, a pure function of `(seed, stream, draw)`, so a resumed
  run draws exactly what an uninterrupted one would (no dependence on the global RNG's history).
- [`herding_order`] / [`random_order`]: exemplar selection (iCaRL's herding, Rebuffi et al. 2017; or random).
- [`ExemplarMemory`]: which update-train rows (by index, with their session and label) are kept after each session,
  saved atomically as JSON in the run folder.

Formulas and the differences from the official CL-CLIP code are in `docs/methods/er.md`, `agem.md` and `gem.md`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .io import atomic_write_json, read_json

__all__ = [
    "MEMORY_FILE",
    "MEMORY_SELECTIONS",
    "ExemplarMemory",
    "add_to_grads",
    "agem_coefficients",
    "agem_project",
    "assign_flat_grad",
    "flat_dots",
    "flat_grad",
    "gem_coefficients",
    "gem_dual_from_products",
    "gem_dual_solve",
    "gem_project",
    "herding_order",
    "random_order",
    "replay_indices",
    "select_exemplars",
    "clip_contrastive_loss",
    "RehearsalError",
]

MEMORY_FILE = "memory.json"
MEMORY_SELECTIONS = ("random", "herding")


class RehearsalError(DataError):
    """A rehearsal setting that does not fit the data (empty replay set, replay set without captions, too small a
    memory); the message names the fix. The command-line entry points print it as one `error:` line."""


# --------------------------------------------------------------------------------------------------------- losses
def clip_contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor
                          ) -> torch.Tensor:
    r"""CLIP's symmetric contrastive loss on `B` matching pairs (the replay loss of the official A-GEM/GEM code):

    `1/2 [CE(S, I) + CE(S^T, I)]`,  `S = logit_scale * image_embeds @ text_embeds^T`, targets on the diagonal.

    Args:
        image_embeds (`torch.Tensor`): `[B, D]` normalised image features.
        text_embeds (`torch.Tensor`): `[B, D]` normalised text features (row `i` is the caption of image `i`).
        logit_scale (`torch.Tensor`): `exp(logit_scale)` of the model (a scalar).

    Returns:
        `torch.Tensor`: the scalar loss (float32).
    """
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"image {tuple(image_embeds.shape)} and text {tuple(text_embeds.shape)} features of the "
                         "pairs must have the same shape.")
    logits = logit_scale.float() * image_embeds.float() @ text_embeds.float().t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits.t(), target))


# ------------------------------------------------------------------------------------------------------ flat gradients
def flat_grad(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None] | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """The gradients of `params` as one float32 vector (a missing gradient counts as zeros).

    Args:
        params (`Sequence[torch.Tensor]`): the trainable parameters, in a fixed order.
        grads (`Sequence[torch.Tensor | None]`, *optional*): gradients to flatten instead of `p.grad`.
        out (`torch.Tensor`, *optional*): a float32 buffer of the right size to write into (no new allocation).

    Returns:
        `torch.Tensor`: `[sum(p.numel())]` float32, on the first parameter's device.
    """
    if not params:
        raise ValueError("flat_grad got no parameters: nothing trains (check the variant).")
    grads = [p.grad for p in params] if grads is None else list(grads)
    parts = [(torch.zeros(p.numel(), device=p.device) if g is None else g.detach().reshape(-1).float())
             for p, g in zip(params, grads)]
    return torch.cat(parts) if out is None else torch.cat(parts, out=out)


def _flat_views(params: Sequence[torch.Tensor], flat: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`(p, flat[..., slice of p])` in the layout of [`flat_grad`] (the last dimension of `flat` is the flat one)."""
    offset = 0
    for p in params:
        n = p.numel()
        yield p, flat[..., offset:offset + n]
        offset += n
    if offset != flat.shape[-1]:
        raise ValueError(f"The flat gradient has {flat.shape[-1]} entries but the parameters hold {offset}.")


def assign_flat_grad(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Write a flat vector back into `p.grad` (in each gradient's dtype), the inverse of [`flat_grad`]."""
    for p, chunk in _flat_views(params, flat):
        chunk = chunk.view_as(p)
        if p.grad is None:
            p.grad = chunk.to(p.dtype).clone()
        else:
            p.grad.copy_(chunk)


def flat_dots(params: Sequence[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """`rows @ flat_grad(params)` without building the flat gradient: reduced parameter by parameter over views of
    `rows` (float32 each, combined in float64); a missing gradient counts as zeros.

    Args:
        params (`Sequence[torch.Tensor]`): the trainable parameters, in [`flat_grad`]'s order.
        rows (`torch.Tensor`): `[K, P]` flat vectors (e.g. reference gradients).

    Returns:
        `torch.Tensor`: `[K]` float64.
    """
    dots = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
    for p, chunk in _flat_views(params, rows):
        if p.grad is not None:
            dots += (chunk @ p.grad.detach().reshape(-1).to(rows.dtype)).double()
    return dots


def add_to_grads(params: Sequence[torch.Tensor], rows: torch.Tensor, coefficients: Sequence[float]) -> None:
    """`p.grad += sum_k coefficients[k] * rows[k]` in [`flat_grad`]'s layout, in place (a missing gradient is zero):
    a projection `g + G^T v` without building the flat `g`."""
    for p, chunk in _flat_views(params, rows):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        for k, c in enumerate(coefficients):
            if c != 0.0:
                p.grad.add_(chunk[k].view(p.shape).to(p.grad.dtype), alpha=c)


# ------------------------------------------------------------------------------------------------------------ A-GEM
def agem_coefficients(dots: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor | None:
    r"""A-GEM's projection as a coefficient: the projected gradient is `g + v g_ref` with `v = -(g . g_ref) /
    (g_ref . g_ref)` when `g . g_ref < 0`, and `None` (no projection) otherwise or when `g_ref` is zero.

    Args:
        dots (`torch.Tensor`): `[1]` the product `g . g_ref`.
        g_ref (`torch.Tensor`): `[P]` the reference gradient (read only when there is a conflict).

    Returns:
        `torch.Tensor | None`: `[1]` float64 `v`, or `None`.
    """
    dot = float(dots[0])
    if not dot < 0:
        return None
    ref_sq = float(torch.dot(g_ref, g_ref))
    if not ref_sq > 0:
        return None
    return torch.tensor([-dot / ref_sq], dtype=torch.float64)


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> tuple[torch.Tensor, bool]:
    r"""A-GEM's projection (Chaudhry et al., ICLR 2019): if the update gradient conflicts with the reference gradient
    (`g . g_ref < 0`), remove the conflicting component,

    `g <- g - (g . g_ref / g_ref . g_ref) g_ref`,

    so that the projected gradient is orthogonal to `g_ref`; otherwise `g` is returned unchanged.

    Args:
        g (`torch.Tensor`): `[P]` the update gradient.
        g_ref (`torch.Tensor`): `[P]` the reference (replay) gradient.

    Returns:
        `tuple[torch.Tensor, bool]`: the (possibly) projected gradient, in `g`'s dtype, and whether it was projected.
        A zero `g_ref` never projects. The two dot products are reduced in `g`'s dtype (float32: a copy of a
        150M-entry gradient to float64 would cost more than the rest of the step) and combined in float64.
    """
    if g.shape != g_ref.shape:
        raise ValueError(f"g {tuple(g.shape)} and g_ref {tuple(g_ref.shape)} must have the same shape.")
    v = agem_coefficients(torch.dot(g, g_ref.to(g.dtype)).double().reshape(1), g_ref)
    if v is None:
        return g, False
    return torch.add(g, g_ref.to(g.dtype), alpha=float(v[0])), True


# -------------------------------------------------------------------------------------------------------------- GEM
def gem_dual_solve(memories: torch.Tensor, g: torch.Tensor, margin: float = 0.5, eps: float = 1e-3,
                   max_iter: int = 10_000, tol: float = 1e-12) -> torch.Tensor:
    r"""Solve GEM's dual quadratic program (Lopez-Paz & Ranzato 2017, eq. 11, with the official code's margin):

    `min_v  1/2 v^T (G G^T + eps I) v + (G g)^T v   subject to   v >= margin`

    where the rows of `G` (`memories`) are the reference gradients of the constraints. Solved exactly (to `tol`) by
    cyclic coordinate descent on the shifted variable `u = v - margin >= 0`, in float64: the problem has one variable
    per constraint (a handful), and a strictly convex box-constrained QP converges linearly under coordinate descent.

    Args:
        memories (`torch.Tensor`): `[K, P]` the constraint gradients `G`.
        g (`torch.Tensor`): `[P]` the update gradient.
        margin (`float`, defaults to 0.5): GEM's `memory_strength` (lower bound of every dual variable).
        eps (`float`, defaults to 1e-3): ridge added to `G G^T` (GEM's code), which makes the problem strictly convex.
        max_iter (`int`, defaults to 10000): maximum coordinate-descent sweeps.
        tol (`float`, defaults to 1e-12): stop when no variable moves by more than `tol` (relative to `max |v|`).

    Returns:
        `torch.Tensor`: `[K]` the optimal `v` (float64).
    """
    if memories.dim() != 2 or g.dim() != 1 or memories.shape[1] != g.shape[0]:
        raise ValueError(f"memories must be [K, P] and g [P], got {tuple(memories.shape)} and {tuple(g.shape)}.")
    # The [K, K] Gram matrix and [K] products are reduced in the inputs' dtype (no float64 copy of [K, P]); the
    # small QP itself runs in float64.
    return gem_dual_from_products(memories @ memories.t(), memories @ g.to(memories.dtype), margin=margin, eps=eps,
                                  max_iter=max_iter, tol=tol)


def gem_dual_from_products(gram: torch.Tensor, dots: torch.Tensor, margin: float = 0.5, eps: float = 1e-3,
                           max_iter: int = 10_000, tol: float = 1e-12) -> torch.Tensor:
    r"""[`gem_dual_solve`] from the products alone: `gram = G G^T` (`[K, K]`) and `dots = G g` (`[K]`), which is all
    the dual needs, so a caller that has them (the trainers reduce them parameter by parameter, without flattening
    the update gradient) never builds the `[P]` vectors.

    Returns:
        `torch.Tensor`: `[K]` the optimal `v` (float64).
    """
    if margin < 0 or eps < 0:
        raise ValueError(f"margin and eps must be >= 0, got {margin} and {eps}.")
    P = gram.double()
    P = 0.5 * (P + P.t()) + eps * torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
    q = dots.double()
    k = P.shape[0]
    diag = torch.diagonal(P).clamp_min(torch.finfo(P.dtype).tiny)
    # In u = v - margin: minimise 1/2 u'Pu + c'u, u >= 0, with c = q + P (margin * 1).
    c = q + P.sum(1) * margin
    u = torch.zeros(k, dtype=P.dtype, device=P.device)
    Pu = torch.zeros_like(u)
    for _ in range(max_iter):
        largest = 0.0
        for i in range(k):
            new = torch.clamp(u[i] - (Pu[i] + c[i]) / diag[i], min=0.0)
            delta = new - u[i]
            if delta != 0:
                u[i] = new
                Pu += delta * P[:, i]
                largest = max(largest, abs(float(delta)))
        if largest <= tol * max(1.0, float(u.abs().max()) + margin):
            break
    return u + margin


def gem_project(g: torch.Tensor, memories: torch.Tensor, margin: float = 0.5, eps: float = 1e-3
                ) -> tuple[torch.Tensor, bool]:
    r"""GEM's projection: when some constraint is violated (`G g < 0` for a row of `G`), replace `g` by

    `g~ = G^T v* + g`, with `v*` from [`gem_dual_solve`],

    the primal solution of `min ||g~ - g||^2 s.t. G g~ >= 0` (with GEM's margin pushing slightly inside the cone).
    When every constraint holds, `g` is returned unchanged (GEM's code projects only then).

    Args:
        g (`torch.Tensor`): `[P]` the update gradient.
        memories (`torch.Tensor`): `[K, P]` the constraint gradients (one per earlier session, plus the replay set).
        margin (`float`, defaults to 0.5): GEM's `memory_strength`.
        eps (`float`, defaults to 1e-3): ridge of the dual (GEM's code).

    Returns:
        `tuple[torch.Tensor, bool]`: the gradient (in `g`'s dtype) and whether it was projected.
    """
    if memories.numel() == 0 or memories.shape[0] == 0:
        return g, False
    v = gem_coefficients(memories @ g.to(memories.dtype), memories, margin=margin, eps=eps)
    if v is None:
        return g, False
    return g + (v.to(memories.dtype) @ memories).to(g.dtype), True


def gem_coefficients(dots: torch.Tensor, memories: torch.Tensor, margin: float = 0.5, eps: float = 1e-3
                     ) -> torch.Tensor | None:
    r"""GEM's projection as coefficients: `None` when every constraint holds (`G g >= 0`), otherwise the dual `v*` of
    [`gem_dual_solve`], so that the projected gradient is `g + G^T v*`.

    Args:
        dots (`torch.Tensor`): `[K]` the products `G g`.
        memories (`torch.Tensor`): `[K, P]` the constraint gradients `G`; their Gram matrix (a pass over all `K x P`
            entries) is computed only when a constraint is violated.
        margin (`float`, defaults to 0.5), eps (`float`, defaults to 1e-3): as in [`gem_dual_solve`].

    Returns:
        `torch.Tensor | None`: `[K]` float64 `v*`, or `None`.
    """
    if not bool((dots < 0).any()):
        return None
    return gem_dual_from_products(memories @ memories.t(), dots, margin=margin, eps=eps)


# --------------------------------------------------------------------------------------------------- replay draws
def _permutation(num_rows: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(stream), int(epoch)]).permutation(num_rows)


def replay_indices(num_rows: int, batch_size: int, draw: int, seed: int, stream: int = 0) -> list[int]:
    """Rows of the `draw`-th replay batch: consecutive slices of seeded per-pass permutations of `range(num_rows)`.

    A pass ("epoch") over the set visits every row once; batch `draw` takes rows `draw * batch_size` onwards of the
    concatenated permutations (a batch may straddle two passes; a batch larger than the set spans several). The
    result depends only on the arguments, so a run resumed at any step draws what an uninterrupted run draws.

    Args:
        num_rows (`int`): rows in the replay set (> 0).
        batch_size (`int`): rows per batch (> 0).
        draw (`int`): index of the batch (0, 1, 2, ...).
        seed (`int`): the run's seed.
        stream (`int`, defaults to 0): separates independent streams (e.g. the replay set, each session's memory,
            each process under DDP).

    Returns:
        `list[int]`: `batch_size` row indices.
    """
    if num_rows < 1:
        raise RehearsalError("The replay set is empty: give a replay_dataset with rows, or a memory_size > 0.")
    if batch_size < 1 or draw < 0:
        raise ValueError(f"batch_size must be >= 1 and draw >= 0, got {batch_size} and {draw}.")
    start = int(draw) * int(batch_size)
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start, num_rows)
        take = _permutation(num_rows, seed, stream, epoch)[offset:offset + batch_size - len(out)]
        out.extend(int(i) for i in take)
        start += len(take)
    return out


# ------------------------------------------------------------------------------------------------ memory selection
def random_order(num: int, seed: int) -> list[int]:
    """A seeded random priority order of `num` candidates (keeping the first `m` is a uniform random sample)."""
    return [int(i) for i in np.random.default_rng(int(seed)).permutation(int(num))]


def herding_order(features: torch.Tensor, m: int) -> list[int]:
    r"""iCaRL's herding selection (Rebuffi et al., CVPR 2017, Algorithm 4): greedily pick the exemplars whose running
    mean stays closest to the class mean of the L2-normalised features,

    `p_k = argmin_x || mu - (f(x) + sum_{j<k} f(p_j)) / k ||`,  `mu = mean_x f(x)`,

    each sample at most once. The order is a priority: the first `m'` of the list are the herding selection of size
    `m'` (what iCaRL keeps when it shrinks the per-class budget). Ties go to the lowest index.

    Args:
        features (`torch.Tensor`): `[N, D]` image features of one class (normalised here).
        m (`int`): how many to select (at most `N`).

    Returns:
        `list[int]`: `min(m, N)` row positions into `features`, in selection order.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [N, D], got {tuple(features.shape)}.")
    feats = torch.nn.functional.normalize(features.double(), dim=-1)
    n = feats.shape[0]
    m = min(int(m), n)
    mu = feats.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool)
    for k in range(1, m + 1):
        dist = ((mu - (running + feats) / k) ** 2).sum(-1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        running += feats[i]
    return chosen


# ---------------------------------------------------------------------------------------------------- the memory
@dataclass
class ExemplarMemory:
    """Exemplars of the update data kept after each session, as row indices into the update-train split.

    Each session stores its classes' candidates in priority order (herding or random order), so shrinking the
    per-class budget when later sessions add classes (`per_class=False`, iCaRL's fixed total) keeps a prefix and
    never needs the images again.

    Args:
        memory_size (`int`): exemplars in total (`per_class=False`) or per class (`per_class=True`).
        per_class (`bool`, defaults to `False`): how `memory_size` is counted.
        selection (`str`, defaults to `"herding"`): `"herding"` or `"random"`.
        sessions (`list[dict]`): one record per finished session: `{"session": t (1-based), "classes": {label:
            [rows in priority order]}}` (JSON object keys are strings).
    """

    memory_size: int
    per_class: bool = False
    selection: str = "herding"
    sessions: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self):
        if self.selection not in MEMORY_SELECTIONS:
            raise ValueError(f"memory_selection must be one of {MEMORY_SELECTIONS}, got {self.selection!r}.")
        if int(self.memory_size) < 0:
            raise ValueError(f"memory_size must be >= 0, got {self.memory_size}.")
        self.memory_size = int(self.memory_size)

    # ---------------------------------------------------------------- budget
    @property
    def classes(self) -> list[int]:
        """Every label stored so far, in session order."""
        return [int(c) for s in self.sessions for c in s["classes"]]

    def per_class_budget(self, num_classes: int | None = None) -> int:
        """Exemplars kept per class when `num_classes` classes are stored (default: those stored now)."""
        if self.per_class:
            return self.memory_size
        n = len(self.classes) if num_classes is None else int(num_classes)
        return self.memory_size // n if n else self.memory_size

    def check_budget(self, num_classes: int) -> None:
        """Raise if a total budget cannot keep one exemplar for each of `num_classes` classes."""
        if self.memory_size and not self.per_class and self.memory_size < num_classes:
            raise RehearsalError(f"memory_size={self.memory_size} (in total) cannot keep one exemplar for each of the "
                             f"{num_classes} classes; raise memory_size to at least {num_classes}, or set "
                             "memory_per_class: true.")

    # ---------------------------------------------------------------- contents
    def add_session(self, session: int, orders: dict[int, list[int]]) -> None:
        """Record session `session`'s candidates (label -> rows in priority order); a redone session replaces its
        record and every later one (resuming after a kill between the memory write and the results write)."""
        self.sessions = [s for s in self.sessions if int(s["session"]) < int(session)]
        self.sessions.append({"session": int(session), "classes": {str(int(c)): [int(i) for i in rows]
                                                                    for c, rows in orders.items()}})

    def truncate(self, sessions_done: int) -> None:
        """Forget the records of sessions after `sessions_done` (1-based)."""
        self.sessions = [s for s in self.sessions if int(s["session"]) <= int(sessions_done)]

    def exemplars(self, before_session: int | None = None) -> list[tuple[int, int, int]]:
        """The kept exemplars as `(session, label, row)` triples, each class cut to the current per-class budget.

        Args:
            before_session (`int`, *optional*): only sessions `< before_session` (1-based).
        """
        records = [s for s in self.sessions if before_session is None or int(s["session"]) < int(before_session)]
        budget = self.per_class_budget(sum(len(s["classes"]) for s in records))
        return [(int(s["session"]), int(c), int(r)) for s in records for c, rows in s["classes"].items()
                for r in rows[:budget]]

    def summary(self) -> dict[str, Any]:
        """What `results.json` records: the settings, and per session the exemplar rows kept now."""
        budget = self.per_class_budget()
        return {"memory_size": self.memory_size, "per_class": self.per_class, "selection": self.selection,
                "per_class_budget": budget,
                "sessions": [{"session": int(s["session"]),
                              "rows": {c: rows[:budget] for c, rows in s["classes"].items()}}
                             for s in self.sessions]}

    # ---------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        return {"memory_size": self.memory_size, "per_class": self.per_class, "selection": self.selection,
                "sessions": self.sessions}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `memory.json` into `folder` atomically."""
        path = Path(folder) / MEMORY_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike, memory_size: int, per_class: bool, selection: str) -> ExemplarMemory:
        """The memory saved in `folder`, or an empty one; settings that differ from the saved ones are an error."""
        path = Path(folder) / MEMORY_FILE
        memory = cls(memory_size, per_class, selection)
        if path.exists():
            saved = read_json(path)
            if (saved["memory_size"], bool(saved["per_class"]), saved["selection"]) != (memory_size, per_class,
                                                                                         selection):
                raise RehearsalError(f"{path} was written with other memory settings ({saved['memory_size']}, per_class="
                                 f"{saved['per_class']}, {saved['selection']}); use another output_dir or "
                                 "--overwrite_run.")
            memory.sessions = list(saved["sessions"])
        return memory


def select_exemplars(labels: Iterable[int], rows: Sequence[int], budget: int, selection: str, seed: int,
                     features: torch.Tensor | None = None) -> dict[int, list[int]]:
    """Candidates of each class in priority order, at most `budget` per class.

    Args:
        labels (`Iterable[int]`): the label of each candidate row.
        rows (`Sequence[int]`): the candidate's row index in the update-train split.
        budget (`int`): how many to keep per class (the most the memory can ever hold per class of this session).
        selection (`str`): `"random"` (seeded by `seed` and the label) or `"herding"` (needs `features`).
        seed (`int`): seed of the random order.
        features (`torch.Tensor`, *optional*): `[len(rows), D]` image features for herding.

    Returns:
        `dict[int, list[int]]`: label -> row indices, in priority order.
    """
    labels = np.asarray(list(labels), dtype=np.int64)
    rows = np.asarray(list(rows), dtype=np.int64)
    if selection == "herding" and features is None:
        raise ValueError("herding selection needs the candidates' image features.")
    out: dict[int, list[int]] = {}
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c)
        if selection == "herding":
            order = herding_order(features[torch.as_tensor(idx)], budget)
        else:
            order = random_order(len(idx), seed * 100_003 + c)[:budget]
        out[int(c)] = [int(rows[idx[i]]) for i in order]
    return out
