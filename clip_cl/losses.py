"""Pure loss functions of the distillation methods (LwF, VR-LwF, GeoDL): tensor math only, testable without a Trainer.

- [`kd_kl_loss`]: knowledge-distillation KL divergence `T^2 * KL(softmax(t/T) || softmax(s/T))` (LwF and VR-LwF).
- [`sample_pseudo_tokens`]: VR-LwF's random pseudo-class token sequences `[bos, w_1..w_L, eos]`.
- [`pca_basis`], [`gfk_matrix`] / [`gfk_factors`] / [`gfk_bilinear`], [`geodesic_distillation_loss`]: GeoDL's
  geodesic-flow-kernel distillation.

Formulas and references are in `docs/methods/lwf.md`, `docs/methods/vr_lwf.md` and `docs/methods/geodl.md`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.nn.functional as F

__all__ = [
    "GEODL_FORMS",
    "kd_kl_loss",
    "sigmoid_kd_loss",
    "sample_pseudo_tokens",
    "sample_pseudo_texts",
    "allowed_token_ids",
    "resolve_subspace_dim",
    "pca_basis",
    "gfk_matrix",
    "gfk_factors",
    "gfk_bilinear",
    "geodesic_distillation_loss",
]

GEODL_FORMS = ("distance", "cosine")


# ---------------------------------------------------------------------------------------------------------------- KD
def _check_distillation_inputs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Knowledge-distillation loss of Hinton et al. (2015), as used by LwF (Li & Hoiem 2017):

    `T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T))`

    The `T^2` factor keeps the gradient magnitude independent of `T` (Hinton et al.), so with the paper's `T = 1` it is
    exactly CL-CLIP's `F.kl_div(log_softmax(s), softmax(t), reduction="batchmean")`. The teacher side is detached.

    Args:
        student_logits (`torch.Tensor`): `[B, K]` logits of the student (gradients flow through them).
        teacher_logits (`torch.Tensor`): `[B, K]` logits of the teacher (treated as constants).
        temperature (`float`, defaults to 1.0): softmax temperature `T > 0`.

    Returns:
        `torch.Tensor`: a scalar, the mean over the `B` rows of the KL divergence, times `T^2` (float32).
    """
    _check_distillation_inputs(student_logits, teacher_logits, temperature)
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean() * (t * t)


def sigmoid_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    r"""Distillation of pairwise sigmoid probabilities, for families trained with SigLIP's sigmoid loss:

    `T^2 * mean_i sum_j KL(Bernoulli(sigmoid(t_ij / T)) || Bernoulli(sigmoid(s_ij / T)))`

    Every image-text pair is its own binary "match" probability (SigLIP's view), so the teacher's probabilities are
    matched pair by pair instead of as a softmax over a row. The logits must include the family's logit bias. The
    teacher side is detached.

    Args:
        student_logits (`torch.Tensor`): `[B, K]` pair logits of the student (`scale * cos + bias`).
        teacher_logits (`torch.Tensor`): `[B, K]` pair logits of the teacher (constants).
        temperature (`float`, defaults to 1.0): temperature `T > 0`.

    Returns:
        `torch.Tensor`: a float32 scalar, 0 when student and teacher logits coincide.
    """
    _check_distillation_inputs(student_logits, teacher_logits, temperature)
    t = float(temperature)
    s = student_logits.float() / t
    q = teacher_logits.detach().float() / t
    p_teacher = torch.sigmoid(q)
    # KL(Bern(p) || Bern(r)) = p (log p - log r) + (1 - p) (log(1 - p) - log(1 - r)); logsigmoid keeps it stable.
    kl = p_teacher * (F.logsigmoid(q) - F.logsigmoid(s)) + (1 - p_teacher) * (F.logsigmoid(-q) - F.logsigmoid(-s))
    return kl.sum(-1).mean() * (t * t)


# ---------------------------------------------------------------------------------------------------------- VR-LwF
def allowed_token_ids(vocab_size: int, exclude_ids: Iterable[int | None] = ()) -> torch.Tensor:
    """The token ids `0..vocab_size-1` without `exclude_ids` (special tokens), as a sorted LongTensor."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}.")
    keep = torch.ones(vocab_size, dtype=torch.bool)
    for i in exclude_ids:
        if i is not None and 0 <= int(i) < vocab_size:
            keep[int(i)] = False
    ids = keep.nonzero().flatten()
    if ids.numel() == 0:
        raise ValueError("No token id is left to sample from after excluding the special tokens.")
    return ids


def sample_pseudo_tokens(
    num: int,
    length: int,
    vocab_size: int,
    bos_id: int,
    eos_id: int,
    exclude_ids: Iterable[int | None] = (),
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """VR-LwF's pseudo-classes: `num` sequences of `length` token ids drawn uniformly (with replacement) from the
    vocabulary without special tokens, each wrapped as `[bos, w_1, ..., w_length, eos]`.

    Args:
        num (`int`): number of pseudo-classes `M`.
        length (`int`): number of random tokens `L` per pseudo-class (the sequence has `L + 2` tokens).
        vocab_size (`int`): size of the text model's vocabulary (ids `0..vocab_size-1`).
        bos_id (`int`): start token (CLIP's `<|startoftext|>`), never sampled.
        eos_id (`int`): end token (CLIP's `<|endoftext|>`), never sampled.
        exclude_ids (`Iterable[int]`): further ids never sampled (e.g. the pad id and the tokenizer's special ids).
        generator (`torch.Generator`, *optional*): a CPU generator, for reproducible draws.

    Returns:
        `dict`: `{"input_ids": LongTensor[num, length + 2], "attention_mask": LongTensor[num, length + 2]}` on CPU.
    """
    if num <= 0 or length <= 0:
        raise ValueError(f"num and length must be positive, got num={num}, length={length}.")
    allowed = allowed_token_ids(vocab_size, [bos_id, eos_id, *exclude_ids])
    idx = torch.randint(allowed.numel(), (num, length), generator=generator)
    body = allowed[idx]
    ids = torch.cat([torch.full((num, 1), int(bos_id)), body, torch.full((num, 1), int(eos_id))], dim=1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def sample_pseudo_texts(
    num: int,
    length: int,
    allowed_ids: torch.Tensor,
    prefix: Iterable[int] = (),
    suffix: Iterable[int] = (),
    pad_id: int = 0,
    padded_length: int | None = None,
    padding_side: str = "right",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """VR-LwF's pseudo-classes framed by any family's rules: `num` sequences `[*prefix, w_1..w_length, *suffix]`
    with words drawn uniformly (with replacement) from `allowed_ids`, padded to `padded_length` when the family
    pads every text to a fixed length (SigLIP: 64, pooling the last position).

    With CLIP's frame (`prefix=[bos]`, `suffix=[eos]`, no padding) and the same allowed ids this draws exactly what
    [`sample_pseudo_tokens`] draws from the same generator.

    Args:
        num (`int`): number of pseudo-classes `M`.
        length (`int`): number of random words `L` per pseudo-class.
        allowed_ids (`torch.Tensor`): the ids a word may take (see `ModelAdapter.sampleable_token_ids`).
        prefix, suffix (`Iterable[int]`): ids the family's tokenizer puts before / after the words.
        pad_id (`int`): padding id (attention mask 0 there).
        padded_length (`int`, *optional*): total length to pad to; `None` = no padding.
        padding_side (`str`, defaults to `"right"`): where padding goes ("right" or "left").
        generator (`torch.Generator`, *optional*): a CPU generator, for reproducible draws.

    Returns:
        `dict`: `{"input_ids", "attention_mask"}` LongTensors `[num, padded_length or len(prefix) + L + len(suffix)]`.
    """
    if num <= 0 or length <= 0:
        raise ValueError(f"num and length must be positive, got num={num}, length={length}.")
    if allowed_ids.numel() == 0:
        raise ValueError("No token id is left to sample from after excluding the special tokens.")
    prefix, suffix = [int(i) for i in prefix], [int(i) for i in suffix]
    idx = torch.randint(allowed_ids.numel(), (num, length), generator=generator)
    parts = [torch.tensor(prefix, dtype=torch.long).expand(num, -1), allowed_ids[idx].long(),
             torch.tensor(suffix, dtype=torch.long).expand(num, -1)]
    ids = torch.cat(parts, dim=1)
    mask = torch.ones_like(ids)
    if padded_length is not None:
        extra = int(padded_length) - ids.shape[1]
        if extra < 0:
            raise ValueError(f"A pseudo-text of {ids.shape[1]} tokens exceeds the padded length {padded_length}; "
                             "lower vr_pseudo_length.")
        pad = (extra, 0) if padding_side == "left" else (0, extra)
        ids, mask = F.pad(ids, pad, value=int(pad_id)), F.pad(mask, pad, value=0)
    return {"input_ids": ids, "attention_mask": mask}


# ----------------------------------------------------------------------------------------------------------- GeoDL
def resolve_subspace_dim(num_samples: int, feature_dim: int, subspace_dim: int | None = None) -> int:
    """The PCA subspace dimension actually used for `num_samples` features of size `feature_dim`.

    `None` is GeoDL's and CL-CLIP's rule, `min(n, D) - 2` (98 for a batch of 100 with 512-d features). Any value is
    then clipped to `[1, min(n - 1, D)]`: centred data of `n` samples span at most `n - 1` directions.

    Returns:
        `int`: the dimension, or 0 when `num_samples < 2` (no subspace can be estimated).
    """
    cap = min(num_samples - 1, feature_dim)
    if cap < 1:
        return 0
    d = min(num_samples, feature_dim) - 2 if subspace_dim is None else int(subspace_dim)
    return max(1, min(d, cap))


def pca_basis(features: torch.Tensor, dim: int, center: bool = True) -> torch.Tensor:
    """Orthonormal basis `[D, dim]` of the top-`dim` principal directions of `features` `[n, D]`.

    Computed from the eigenvectors of the smaller of the two Gram matrices (`x x^T`, n x n, when `n <= D`; else the
    `D x D` scatter matrix): the same subspace as an SVD of `x`, at about half the cost of the SVD on GPU and CPU
    (`benchmarks/bench_gfk.py`). Through `x x^T` the basis is `x^T v_i / sqrt(lambda_i)`, accurate only while the
    kept eigenvalues are well above rounding; when the data are (numerically) rank-deficient in the kept directions
    (e.g. repeated samples in a batch) the SVD of `x` is used instead. Use float64 for accuracy.

    Args:
        features (`torch.Tensor`): `[n, D]` samples in rows, or `[..., n, D]` for a batch of sets (batched calls).
        dim (`int`): number of directions kept (`1 <= dim <= min(n, D)`).
        center (`bool`, defaults to `True`): subtract the mean sample first (PCA); `False` spans the raw samples.

    Returns:
        `torch.Tensor`: `[D, dim]` (or `[..., D, dim]`) with orthonormal columns, in the dtype of `features`.
    """
    x = features - features.mean(-2, keepdim=True) if center else features
    n, size = x.shape[-2:]
    xt = x.transpose(-2, -1)
    if n > size:  # eigenvectors of the D x D scatter matrix are the basis itself
        _, vecs = torch.linalg.eigh(xt @ x)  # ascending eigenvalues
        return vecs[..., -dim:].flip(-1)
    vals, vecs = torch.linalg.eigh(x @ xt)
    vals, vecs = vals[..., -dim:].flip(-1), vecs[..., -dim:].flip(-1)
    # x^T v / sqrt(lambda) loses orthonormality as lambda nears rounding noise of the largest eigenvalue (one host
    # synchronisation to check; the SVD it replaces synchronises several times).
    if bool((vals[..., -1] <= _GRAM_RTOL * vals[..., 0].clamp_min(torch.finfo(x.dtype).tiny)).any()):
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        return vh[..., :dim, :].transpose(-2, -1)
    return (xt @ vecs) / vals.sqrt().unsqueeze(-2)


# Smallest kept eigenvalue of x x^T, relative to the largest, for which x^T v / sqrt(lambda) is used (float64: the
# basis is then accurate to ~eps / rtol = 1e-8, below the float32 the loss is computed in).
_GRAM_RTOL = 1e-8


def _gfk_coefficients(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`k1 = ∫cos²(tθ)`, `k2 = ∫cos(tθ)sin(tθ) / sin θ`, `k3 = ∫sin²(tθ) / sin²θ` over `t ∈ [0, 1]`.

    Stable at θ → 0, where `k2 → 1/2` and `k3 → 1/3` (series `1/3 + 2θ²/45` below θ = 1e-3).
    """
    k1 = 0.5 * (1.0 + torch.sinc(2.0 * theta / torch.pi))  # sinc(x) = sin(pi x) / (pi x)
    k2 = 0.5 * torch.sinc(theta / torch.pi)
    small = theta < 1e-3
    safe = torch.where(small, torch.ones_like(theta), theta)
    exact = 0.5 * (1.0 - torch.sin(2.0 * safe) / (2.0 * safe)) / torch.sin(safe) ** 2
    k3 = torch.where(small, 1.0 / 3.0 + (2.0 / 45.0) * theta**2, exact)
    return k1, k2, k3


def gfk_matrix(source_basis: torch.Tensor, target_basis: torch.Tensor) -> torch.Tensor:
    r"""Geodesic flow kernel `G = ∫_0^1 Φ(t) Φ(t)^T dt` of Gong et al. (CVPR 2012), in closed form.

    `Φ(t)` is the Grassmann geodesic from `span(P_S)` (t = 0) to `span(P_T)` (t = 1). With the SVD
    `P_S^T P_T = U_1 cos(Θ) V^T` (principal angles `θ_i`), `A = P_S U_1` and `Q = (I - P_S P_S^T) P_T V`
    (so that `R_S U_2 = -Q / sin Θ` in Gong et al.'s notation, no explicit orthogonal complement needed):

    `G = A K_1 A^T + A K_2 Q^T + Q K_2 A^T + Q K_3 Q^T`, with
    `K_1 = diag(1/2 (1 + sin 2θ / 2θ))`, `K_2 = diag(sin θ / 2θ)`, `K_3 = diag(1/2 (1 - sin 2θ / 2θ) / sin²θ)`,

    which equals Gong et al.'s `[P_S U_1, R_S U_2] [[Λ_1, Λ_2], [Λ_2, Λ_3]] [P_S U_1, R_S U_2]^T`. `G` is symmetric,
    equals `P_S P_S^T` when the subspaces coincide, and is unchanged when source and target swap.

    Args:
        source_basis (`torch.Tensor`): `[D, d]` orthonormal basis `P_S`.
        target_basis (`torch.Tensor`): `[D, d]` orthonormal basis `P_T` (same `d`).

    Returns:
        `torch.Tensor`: `[D, D]` positive semi-definite kernel, in the inputs' dtype (use float64 for accuracy).
    """
    a, q, k1, k2, k3 = gfk_factors(source_basis, target_basis)
    cross = (a * k2) @ q.transpose(0, 1)
    return (a * k1) @ a.transpose(0, 1) + cross + cross.transpose(0, 1) + (q * k3) @ q.transpose(0, 1)


def gfk_factors(
    source_basis: torch.Tensor, target_basis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The factors of [`gfk_matrix`]: `(A, Q, k1, k2, k3)` with `G = A K_1 A^T + A K_2 Q^T + Q K_2 A^T + Q K_3 Q^T`.

    `A`, `Q` are `[D, d]`, `k1..k3` the `[d]` diagonals. Quadratic forms `u^T G v` computed from `u^T A`, `u^T Q`
    cost `O(n D d)` instead of forming the `D x D` kernel ([`gfk_bilinear`]).
    """
    ps, pt = source_basis, target_basis
    if ps.shape != pt.shape:
        raise ValueError(f"source and target bases must have the same shape, got {tuple(ps.shape)} and "
                         f"{tuple(pt.shape)}.")
    u1, cos_theta, vh = torch.linalg.svd(ps.transpose(0, 1) @ pt)
    theta = torch.arccos(cos_theta.clamp(0.0, 1.0))
    v = vh.transpose(0, 1)
    ptv = pt @ v
    a = ps @ u1
    q = ptv - ps @ (ps.transpose(0, 1) @ ptv)
    return (a, q, *_gfk_coefficients(theta))


def gfk_bilinear(u: torch.Tensor, v: torch.Tensor, factors) -> torch.Tensor:
    """Row-wise `u_i^T G v_i` for `[n, D]` `u`, `v` and the [`gfk_factors`] of `G` (same dtype), as `[n]`."""
    a, q, k1, k2, k3 = factors
    ua, uq = u @ a, u @ q
    va, vq = (ua, uq) if v is u else (v @ a, v @ q)
    return (k1 * ua * va + k2 * (ua * vq + uq * va) + k3 * uq * vq).sum(-1)


def geodesic_distillation_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    subspace_dim: int | None = None,
    form: str = "distance",
    center: bool = True,
    detach_kernel: bool = True,
) -> torch.Tensor:
    r"""GeoDL (Simon, Koniusz & Harandi, CVPR 2021): distil features along the geodesic between the PCA subspaces of
    the student's and the teacher's features of the batch.

    Both feature sets are L2-normalised (`s_i`, `t_i`); `P_S`, `P_T` are their top-`d` PCA bases; `G` =
    [`gfk_matrix`]`(P_S, P_T)`. Then

    - `form="distance"` (CL-CLIP's `GFK_distill_normalise`, the default): `mean_i (s_i - t_i)^T G (s_i - t_i)`;
    - `form="cosine"` (the GeoDL paper's `1 - sim_G`): `mean_i 1 - s_i^T G t_i / sqrt(s_i^T G s_i * t_i^T G t_i)`.

    As in both official codes the kernel is a constant of the step (`detach_kernel=True`): gradients reach the student
    through `s_i` only (gradients through SVDs of nearly degenerate spectra are unstable).

    Args:
        student_features (`torch.Tensor`): `[n, D]` student features (normalised here).
        teacher_features (`torch.Tensor`): `[n, D]` teacher features of the same samples (constants).
        subspace_dim (`int`, *optional*): PCA dimension `d`; `None` = `min(n, D) - 2` (see [`resolve_subspace_dim`]).
        form (`str`, defaults to `"distance"`): `"distance"` or `"cosine"`, see above.
        center (`bool`, defaults to `True`): centre the features before PCA.
        detach_kernel (`bool`, defaults to `True`): treat `G` as a constant.

    Returns:
        `torch.Tensor`: a float32 scalar; 0 with zero gradient when student and teacher features coincide, and when
        `n < 2` (no subspace can be estimated from one sample).
    """
    if form not in GEODL_FORMS:
        raise ValueError(f"Unknown GeoDL form {form!r}; use one of {GEODL_FORMS}.")
    if student_features.shape != teacher_features.shape or student_features.dim() != 2:
        raise ValueError(f"student and teacher features must both be [n, D], got {tuple(student_features.shape)} and "
                         f"{tuple(teacher_features.shape)}.")
    n, dim = student_features.shape
    d = resolve_subspace_dim(n, dim, subspace_dim)
    s = F.normalize(student_features.float(), dim=-1)
    t = F.normalize(teacher_features.detach().float(), dim=-1)
    if d == 0:
        return (s * 0.0).sum()
    with torch.autocast(device_type=s.device.type, enabled=False):
        with torch.no_grad() if detach_kernel else contextlib.nullcontext():
            bases = pca_basis(torch.stack([s, t]).double(), d, center)  # both subspaces in one call
            factors = tuple(f.float() for f in gfk_factors(bases[0], bases[1]))
        # The kernel stays factored: u^T G v from the [n, d] projections, never the [D, D] matrix.
        if form == "distance":
            diff = s - t
            return gfk_bilinear(diff, diff, factors).mean()
        num = gfk_bilinear(s, t, factors)
        ss = gfk_bilinear(s, s, factors).clamp_min(1e-12)
        tt = gfk_bilinear(t, t, factors).clamp_min(1e-12)
        return (1.0 - num / torch.sqrt(ss * tt)).mean()
