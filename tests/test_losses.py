"""The pure loss functions of clip_cl.losses against independent numpy / scipy references."""

import numpy as np
import pytest
import scipy.linalg as sl
import torch
from scipy.special import roots_legendre

from clip_cl.losses import (
    allowed_token_ids,
    geodesic_distillation_loss,
    gfk_bilinear,
    gfk_factors,
    gfk_matrix,
    kd_kl_loss,
    pca_basis,
    resolve_subspace_dim,
    sample_pseudo_tokens,
)


# ------------------------------------------------------------------------------------------------------------ KD
def kl_reference(student, teacher, temperature):
    """Explicit loops: T^2 * mean_i sum_k p_t log(p_t / p_s)."""
    student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        ps = np.exp(s_row / temperature - np.max(s_row / temperature))
        ps /= ps.sum()
        pt = np.exp(t_row / temperature - np.max(t_row / temperature))
        pt /= pt.sum()
        total += sum(pt[k] * (np.log(pt[k]) - np.log(ps[k])) for k in range(len(pt)))
    return temperature**2 * total / len(student)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kd_kl_matches_explicit_reference(temperature):
    g = torch.Generator().manual_seed(0)
    s, t = 5 * torch.randn(6, 9, generator=g), 5 * torch.randn(6, 9, generator=g)
    out = kd_kl_loss(s, t, temperature)
    assert out.item() == pytest.approx(kl_reference(s, t, temperature), rel=1e-5, abs=1e-6)


def test_kd_kl_at_t1_is_cl_clip_kl_div_batchmean():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    ref = torch.nn.functional.kl_div(torch.log_softmax(s, 1), torch.softmax(t, 1), reduction="batchmean")
    assert torch.allclose(kd_kl_loss(s, t), ref, atol=1e-6)


def test_kd_kl_zero_with_zero_gradient_when_equal_and_teacher_detached():
    s = torch.randn(3, 5, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)
    loss = kd_kl_loss(s, t, 2.0)
    loss.backward()
    assert abs(loss.item()) < 1e-6 and s.grad.abs().max() < 1e-6
    assert t.grad is None  # the teacher side is a constant


def test_kd_kl_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        kd_kl_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="positive"):
        kd_kl_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)


# ------------------------------------------------------------------------------------------------- pseudo tokens
def test_pseudo_tokens_wrapped_and_never_special():
    g = torch.Generator().manual_seed(0)
    out = sample_pseudo_tokens(500, 8, vocab_size=50, bos_id=48, eos_id=49, exclude_ids=[0, None], generator=g)
    ids = out["input_ids"]
    assert ids.shape == (500, 10) and torch.equal(out["attention_mask"], torch.ones_like(ids))
    assert (ids[:, 0] == 48).all() and (ids[:, -1] == 49).all()
    body = ids[:, 1:-1]
    assert not torch.isin(body, torch.tensor([0, 48, 49])).any()
    # uniform over the 47 allowed ids: all of them appear in 4000 draws
    assert set(body.unique().tolist()) == set(range(1, 48))


def test_pseudo_tokens_same_seed_same_tokens():
    def draw(seed):
        return sample_pseudo_tokens(100, 8, 49408, 49406, 49407, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3)["input_ids"], draw(3)["input_ids"])
    assert not torch.equal(draw(3)["input_ids"], draw(4)["input_ids"])


def test_allowed_token_ids():
    assert allowed_token_ids(5, [0, 4, None, 99]).tolist() == [1, 2, 3]
    with pytest.raises(ValueError):
        allowed_token_ids(2, [0, 1])


# ------------------------------------------------------------------------------------------------------ GFK
def gfk_reference_gong(ps, pt):
    """Gong et al. (2012), eq. for G with an explicit orthogonal complement R_S (scipy.linalg.null_space)."""
    rs = sl.null_space(ps.T)
    u1, gamma, vh = sl.svd(ps.T @ pt)
    v = vh.T
    theta = np.arccos(np.clip(gamma, -1.0, 1.0))
    # exactly shared directions (theta = 0, when d > D/2) take the limits lambda = (1, 0, 0), their U_2 column is moot
    zero = theta < 1e-12
    safe = np.where(zero, 1.0, theta)
    u2 = np.where(zero, 0.0, -(rs.T @ pt @ v) / np.sin(safe))  # R_S^T P_T = -U_2 Sigma V^T
    lam1 = np.where(zero, 1.0, 0.5 * (1 + np.sin(2 * safe) / (2 * safe)))
    lam2 = np.where(zero, 0.0, 0.5 * (np.cos(2 * safe) - 1) / (2 * safe))
    lam3 = np.where(zero, 0.0, 0.5 * (1 - np.sin(2 * safe) / (2 * safe)))
    omega = np.hstack([ps @ u1, rs @ u2])
    lam = np.block([[np.diag(lam1), np.diag(lam2)], [np.diag(lam2), np.diag(lam3)]])
    return omega @ lam @ omega.T, theta


def gfk_reference_quadrature(ps, pt, nodes=64):
    """G = ∫_0^1 Y(t) Y(t)^T dt along the Grassmann geodesic of Edelman et al. (exp/log maps), Gauss-Legendre."""
    dim = ps.shape[0]
    tangent = (np.eye(dim) - ps @ ps.T) @ pt @ np.linalg.inv(ps.T @ pt)
    u, s, vt = sl.svd(tangent, full_matrices=False)
    theta = np.arctan(s)
    x, w = roots_legendre(nodes)
    total = np.zeros((dim, dim))
    for xi, wi in zip(x, w):
        t = (xi + 1) / 2
        y = ps @ vt.T @ np.diag(np.cos(t * theta)) + u @ np.diag(np.sin(t * theta))
        total += (wi / 2) * y @ y.T
    return total


def random_basis(rng, dim, d):
    return sl.orth(rng.standard_normal((dim, d)))


@pytest.mark.parametrize("dim, d", [(10, 3), (64, 2), (40, 20)])
def test_gfk_matches_gong_closed_form_with_null_space(dim, d):
    rng = np.random.default_rng(dim + d)
    ps, pt = random_basis(rng, dim, d), random_basis(rng, dim, d)
    ref, theta = gfk_reference_gong(ps, pt)
    out = gfk_matrix(torch.from_numpy(ps), torch.from_numpy(pt)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-10)
    # principal angles as scipy computes them
    np.testing.assert_allclose(np.sort(theta), np.sort(sl.subspace_angles(ps, pt)), atol=1e-8)


@pytest.mark.parametrize("dim, d", [(10, 3), (10, 7), (64, 62), (16, 1)])
def test_gfk_matches_geodesic_quadrature(dim, d):
    """Also for d > D/2, where some principal angles are 0 and the closed form must take the limits."""
    rng = np.random.default_rng(7 * dim + d)
    ps, pt = random_basis(rng, dim, d), random_basis(rng, dim, d)
    out = gfk_matrix(torch.from_numpy(ps), torch.from_numpy(pt)).numpy()
    np.testing.assert_allclose(out, gfk_reference_quadrature(ps, pt), atol=1e-9)


def test_gfk_properties():
    rng = np.random.default_rng(0)
    ps, pt = (torch.from_numpy(random_basis(rng, 12, 4)) for _ in range(2))
    g = gfk_matrix(ps, pt)
    assert torch.allclose(g, g.T, atol=1e-12)
    assert torch.linalg.eigvalsh(g).min() > -1e-10  # positive semi-definite
    assert torch.allclose(g, gfk_matrix(pt, ps), atol=1e-10)  # the geodesic reversed
    assert torch.allclose(gfk_matrix(ps, ps), ps @ ps.T, atol=1e-12)  # same subspace: its projector
    # a rotated basis of the same subspace gives the same kernel
    rot = torch.from_numpy(sl.orth(rng.standard_normal((4, 4))))
    assert torch.allclose(gfk_matrix(ps @ rot, pt), g, atol=1e-10)


def test_pca_basis_spans_scipy_principal_subspace():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 12)) @ np.diag(np.linspace(3, 0.1, 12))
    basis = pca_basis(torch.from_numpy(x), 4).numpy()
    _, _, vh = sl.svd(x - x.mean(0), full_matrices=False)
    ref = vh[:4].T
    np.testing.assert_allclose(basis @ basis.T, ref @ ref.T, atol=1e-10)
    raw = pca_basis(torch.from_numpy(x), 4, center=False).numpy()
    ref_raw = sl.svd(x, full_matrices=False)[2][:4].T
    np.testing.assert_allclose(raw @ raw.T, ref_raw @ ref_raw.T, atol=1e-10)


@pytest.mark.parametrize("n, dim, d", [(30, 12, 4), (8, 40, 6), (100, 512, 98), (64, 64, 62)])
def test_pca_basis_eigh_routes_span_the_svd_subspace(n, dim, d):
    """Both eigh routes (n x n Gram for n <= D, D x D scatter for n > D) give an orthonormal basis of the subspace
    an SVD gives."""
    rng = np.random.default_rng(n * dim)
    x = rng.standard_normal((n, dim)) @ np.diag(np.linspace(2, 0.2, dim))
    basis = pca_basis(torch.from_numpy(x), d).numpy()
    ref = sl.svd(x - x.mean(0), full_matrices=False)[2][:d].T
    np.testing.assert_allclose(basis.T @ basis, np.eye(d), atol=1e-9)
    np.testing.assert_allclose(basis @ basis.T, ref @ ref.T, atol=1e-8)
    batched = pca_basis(torch.from_numpy(np.stack([x, 2 * x])), d).numpy()
    for b in batched:
        np.testing.assert_allclose(b @ b.T, ref @ ref.T, atol=1e-8)


def test_pca_basis_rank_deficient_batch_stays_orthonormal():
    """Repeated samples leave fewer directions than kept: the basis is still orthonormal (SVD fallback) and holds
    the data's span."""
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((5, 32))
    x = torch.from_numpy(np.concatenate([rows, rows]))  # 10 samples, rank 5 (4 after centring)
    basis = pca_basis(x, 8)
    assert torch.allclose(basis.T @ basis, torch.eye(8, dtype=basis.dtype), atol=1e-9)
    centred = x - x.mean(0)
    assert torch.allclose(centred @ basis @ basis.T, centred, atol=1e-9)


def test_gfk_bilinear_equals_the_formed_kernel():
    rng = np.random.default_rng(4)
    ps, pt = (torch.from_numpy(random_basis(rng, 20, 6)) for _ in range(2))
    u, v = torch.from_numpy(rng.standard_normal((7, 20))), torch.from_numpy(rng.standard_normal((7, 20)))
    g = gfk_matrix(ps, pt)
    factors = gfk_factors(ps, pt)
    assert torch.allclose(gfk_bilinear(u, v, factors), ((u @ g) * v).sum(-1), atol=1e-12)
    assert torch.allclose(gfk_bilinear(u, u, factors), ((u @ g) * u).sum(-1), atol=1e-12)


@pytest.mark.parametrize("n, dim, d, expected", [(100, 512, None, 98), (4, 64, None, 2), (2, 64, None, 1),
                                                  (3, 64, 50, 2), (100, 8, None, 6), (1, 64, None, 0),
                                                  (100, 512, 20, 20)])
def test_resolve_subspace_dim(n, dim, d, expected):
    assert resolve_subspace_dim(n, dim, d) == expected


# ----------------------------------------------------------------------------------------------------- GeoDL
def geodl_reference(student, teacher, d, form, center=True):
    """numpy/scipy: normalise, PCA by scipy SVD, Gong's G with null space, then the loss form."""
    s = student / np.linalg.norm(student, axis=1, keepdims=True)
    t = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)

    def basis(x):
        x = x - x.mean(0) if center else x
        return sl.svd(x, full_matrices=False)[2][:d].T

    g, _ = gfk_reference_gong(basis(s), basis(t))
    if form == "distance":
        return np.mean([(si - ti) @ g @ (si - ti) for si, ti in zip(s, t)])
    return np.mean([1 - (si @ g @ ti) / np.sqrt((si @ g @ si) * (ti @ g @ ti)) for si, ti in zip(s, t)])


@pytest.mark.parametrize("form", ["distance", "cosine"])
@pytest.mark.parametrize("n, dim, d", [(12, 16, None), (100, 512, None), (4, 64, None), (20, 64, 5)])
def test_geodesic_distillation_matches_reference(form, n, dim, d):
    rng = np.random.default_rng(n + dim)
    teacher = rng.standard_normal((n, dim))
    student = teacher + 0.3 * rng.standard_normal((n, dim))
    out = geodesic_distillation_loss(torch.tensor(student, dtype=torch.float32),
                                     torch.tensor(teacher, dtype=torch.float32), subspace_dim=d, form=form)
    ref = geodl_reference(student, teacher, resolve_subspace_dim(n, dim, d), form)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_geodesic_distillation_uncentred_matches_reference():
    rng = np.random.default_rng(5)
    teacher = rng.standard_normal((10, 16))
    student = teacher + 0.5 * rng.standard_normal((10, 16))
    out = geodesic_distillation_loss(torch.tensor(student), torch.tensor(teacher), subspace_dim=4, center=False)
    assert out.item() == pytest.approx(geodl_reference(student, teacher, 4, "distance", center=False), rel=1e-4)


@pytest.mark.parametrize("form", ["distance", "cosine"])
def test_geodesic_distillation_zero_with_zero_gradient_when_equal(form):
    x = torch.randn(10, 64)
    s = x.clone().requires_grad_(True)
    loss = geodesic_distillation_loss(s, x, form=form)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert s.grad.abs().max() < 1e-5


def test_geodesic_distillation_gradient_with_constant_kernel():
    """The gradient is that of the quadratic form with G held constant (detached kernel, as the official codes)."""
    rng = np.random.default_rng(2)
    teacher = torch.tensor(rng.standard_normal((8, 16)))
    student = (teacher + 0.4 * torch.tensor(rng.standard_normal((8, 16)))).requires_grad_(True)
    geodesic_distillation_loss(student, teacher, subspace_dim=3).backward()
    # reference: G from numpy (a constant), loss re-written in torch on the normalised features
    s_np, t_np = student.detach().numpy(), teacher.numpy()
    s_n, t_n = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (s_np, t_np))
    basis = [sl.svd(a - a.mean(0), full_matrices=False)[2][:3].T for a in (s_n, t_n)]
    g = torch.tensor(gfk_reference_gong(*basis)[0])
    s_ref = student.detach().clone().requires_grad_(True)
    diff = torch.nn.functional.normalize(s_ref, dim=-1) - torch.nn.functional.normalize(teacher, dim=-1)
    ((diff @ g) * diff).sum(-1).mean().backward()
    assert torch.allclose(student.grad.double(), s_ref.grad, atol=1e-6)
    assert student.grad.abs().max() > 1e-4


def test_geodesic_distillation_small_batches():
    one = torch.randn(1, 64, requires_grad=True)
    out = geodesic_distillation_loss(one, torch.randn(1, 64))
    assert out.item() == 0.0
    out.backward()  # a zero with a (zero) gradient, so the step still works
    two = torch.randn(2, 64, requires_grad=True)
    out = geodesic_distillation_loss(two, torch.randn(2, 64))
    assert torch.isfinite(out) and out.item() > 0
    with pytest.raises(ValueError, match="form"):
        geodesic_distillation_loss(two, two, form="nope")
