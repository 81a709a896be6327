import pytest
import torch

from clip_cl.merging import (assign_parameters, fisher_weighted_merge, interpolate_state_dicts, running_average_update,
                             trainable_state)


def random_state(seed, shapes=(("w", (3, 4)), ("b", (4,)), ("s", ()))):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in shapes}


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_interpolate_is_exact(alpha):
    a, b = random_state(0), random_state(1)
    out = interpolate_state_dicts(a, b, alpha)
    assert set(out) == set(a)
    for k in a:
        ref = torch.empty_like(a[k])
        flat_a, flat_b, flat_r = a[k].reshape(-1), b[k].reshape(-1), ref.reshape(-1)
        for i in range(flat_a.numel()):  # explicit element loop, float32 arithmetic like the library
            w_a, w_b = torch.tensor(alpha, dtype=torch.float32), torch.tensor(1 - alpha, dtype=torch.float32)
            flat_r[i] = w_a * flat_a[i] + w_b * flat_b[i]
        assert torch.allclose(out[k], ref, atol=0, rtol=1e-6)
        assert torch.equal(out[k], alpha * a[k] + (1 - alpha) * b[k])
    # inputs untouched
    assert torch.equal(a["w"], random_state(0)["w"])


def test_interpolate_endpoints_keys_and_dtypes():
    a, b = random_state(0), random_state(1)
    assert all(torch.equal(interpolate_state_dicts(a, b, 1.0)[k], a[k]) for k in a)
    assert all(torch.equal(interpolate_state_dicts(a, b, 0.0)[k], b[k]) for k in a)
    only = interpolate_state_dicts(a, {"w": b["w"]}, 0.5, keys=["w"])
    assert list(only) == ["w"]
    half = interpolate_state_dicts({"w": a["w"].bfloat16()}, {"w": b["w"].bfloat16()}, 0.5)
    assert half["w"].dtype == torch.bfloat16
    ints = interpolate_state_dicts({"i": torch.arange(3)}, {"i": torch.arange(3)}, 0.5)
    assert torch.equal(ints["i"], torch.arange(3))
    with pytest.raises(KeyError, match="missing"):
        interpolate_state_dicts(a, {"w": b["w"]}, 0.5)
    with pytest.raises(KeyError, match="lacks"):
        interpolate_state_dicts({"w": a["w"]}, b, 0.5)
    with pytest.raises(ValueError, match="different shapes"):
        interpolate_state_dicts({"w": a["w"]}, {"w": a["w"].T}, 0.5)


def test_fisher_weighted_merge_against_loop():
    a, b = random_state(0), random_state(1)
    g = torch.Generator().manual_seed(2)
    fa = {k: torch.rand(v.shape, generator=g) for k, v in a.items()}
    fb = {k: torch.rand(v.shape, generator=g) for k, v in a.items()}
    fa["w"][0, 0] = 0.0
    fb["w"][0, 0] = 0.0  # no information in either model: the plain weighted mean
    alpha, eps = 0.3, 1e-8
    out = fisher_weighted_merge(a, b, fa, fb, alpha=alpha, eps=eps)
    for k in a:
        xa, xb = a[k].double().reshape(-1), b[k].double().reshape(-1)
        pa, pb = fa[k].double().reshape(-1) + eps, fb[k].double().reshape(-1) + eps
        ref = [(alpha * pa[i] * xa[i] + (1 - alpha) * pb[i] * xb[i]) / (alpha * pa[i] + (1 - alpha) * pb[i])
               for i in range(xa.numel())]
        assert torch.allclose(out[k].reshape(-1).double(), torch.stack(ref), atol=1e-6, rtol=1e-5)
    assert torch.allclose(out["w"][0, 0], alpha * a["w"][0, 0] + (1 - alpha) * b["w"][0, 0], atol=1e-6)
    # equal Fishers reduce mode-IMM to mean-IMM
    same = fisher_weighted_merge(a, b, fa, fa, alpha=alpha)
    mean = interpolate_state_dicts(a, b, alpha)
    assert all(torch.allclose(same[k], mean[k], atol=1e-6) for k in a)
    # a huge Fisher on one side pulls the merge to that model
    big = {k: torch.full_like(v, 1e6) for k, v in a.items()}
    pulled = fisher_weighted_merge(a, b, big, fb, alpha=alpha)
    assert all(torch.allclose(pulled[k], a[k], atol=1e-4) for k in a)


def test_running_average_is_the_uniform_mean():
    models = [random_state(s) for s in range(5)]
    avg = {k: v.clone() for k, v in models[0].items()}
    for n, m in enumerate(models[1:], start=1):
        before = {k: v.clone() for k, v in avg.items()}
        out = running_average_update(avg, m, count=n)
        assert out is avg
        for k in avg:  # the update rule, written out
            assert torch.allclose(avg[k], (before[k] * n + m[k]) / (n + 1), atol=0, rtol=1e-6)
    for k in avg:
        assert torch.allclose(avg[k], torch.stack([m[k] for m in models]).mean(0), atol=1e-6)
    with pytest.raises(ValueError, match=">= 1"):
        running_average_update(avg, models[0], count=0)


def test_assign_and_trainable_state_keep_parameter_identity():
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    weight = model.weight
    state = trainable_state(model)
    assert list(state) == ["weight"] and state["weight"] is not model.weight
    new = {"weight": torch.ones(2, 3)}
    assign_parameters(model, new)
    assert model.weight is weight and torch.equal(model.weight, torch.ones(2, 3))
    with pytest.raises(KeyError):
        assign_parameters(model, {"nope": torch.ones(1)})
