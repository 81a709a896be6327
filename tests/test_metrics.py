"""Every metric against an independent brute-force reference (plain Python loops, sorting, explicit ranks)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from clip_cl.evaluation import (class_oracle_recall, continual_metrics, retrieval_recall, topk_accuracy,
                                trajectory_summary)

# ----------------------------------------------------------------------------- brute-force references
# Pessimistic ties by construction: candidates are sorted by (-score, is_correct), so among equal scores every wrong
# candidate comes before the correct ones. The rank is then the position of the first correct candidate.


def _first_correct_position(scores: list[float], correct: set[int]) -> int:
    order = sorted(range(len(scores)), key=lambda c: (-scores[c], c in correct))
    return next(pos for pos, c in enumerate(order) if c in correct)


def ref_topk(logits: np.ndarray, labels: np.ndarray, ks) -> dict[str, float]:
    n, num_classes = logits.shape
    out = {}
    for k in ks:
        hits = 0
        for i in range(n):
            pos = _first_correct_position([float(x) for x in logits[i]], {int(labels[i])})
            hits += pos < min(k, num_classes)
        out[f"top{k}"] = 100.0 * hits / n
    return out


def ref_retrieval(images: np.ndarray, texts: np.ndarray, t2i: list[int], ks) -> dict[str, float]:
    num_images, num_texts = len(images), len(texts)
    sims = [[float(np.dot(images[i], texts[t])) for t in range(num_texts)] for i in range(num_images)]
    tr_pos = [_first_correct_position(sims[i], {t for t in range(num_texts) if t2i[t] == i}) for i in range(num_images)]
    ir_pos = [_first_correct_position([sims[i][t] for i in range(num_images)], {t2i[t]}) for t in range(num_texts)]
    out = {f"tr@{k}": 100.0 * sum(p < k for p in tr_pos) / num_images for k in ks}
    out.update({f"ir@{k}": 100.0 * sum(p < k for p in ir_pos) / num_texts for k in ks})
    return out


def ref_continual(a: list[list[float]], initial=None) -> dict:
    num = len(a)
    last = sum(a[num - 1]) / num
    avg = sum(sum(a[i][: i + 1]) / (i + 1) for i in range(num)) / num
    if num == 1:
        return {"avg": avg, "last": last, "bwt": None, "transfer": None, "forgetting": None}
    bwt = sum(a[num - 1][j] - a[j][j] for j in range(num - 1)) / (num - 1)
    forgetting = sum(max(a[i][j] for i in range(j, num - 1)) - a[num - 1][j] for j in range(num - 1)) / (num - 1)
    per_task = []
    for j in range(0 if initial is not None else 1, num):
        before = ([initial[j]] if initial is not None else []) + [a[i][j] for i in range(j)]
        per_task.append(sum(before) / len(before))
    return {"avg": avg, "last": last, "bwt": bwt, "transfer": sum(per_task) / len(per_task), "forgetting": forgetting}


def _assert_dict_close(got: dict, want: dict, tol: float = 1e-9):
    assert got.keys() == want.keys()
    for key in want:
        if want[key] is None:
            assert got[key] is None, key
        else:
            assert isinstance(got[key], float), key
            assert math.isclose(got[key], want[key], abs_tol=tol), (key, got[key], want[key])


# ----------------------------------------------------------------------------- top-k accuracy


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("integer", [False, True])
def test_topk_matches_reference(seed, integer):
    rng = np.random.default_rng(seed)
    n, num_classes = int(rng.integers(1, 60)), int(rng.integers(1, 12))
    # Integer logits in a small range force many ties with the true class.
    if integer:
        logits = rng.integers(-2, 3, (n, num_classes)).astype(np.float32)
    else:
        logits = rng.standard_normal((n, num_classes))
    labels = rng.integers(0, num_classes, n)
    ks = (1, 2, 5, 20)  # 20 > C: clipped
    args = (torch.from_numpy(logits), torch.from_numpy(labels))
    got = topk_accuracy(*args, ks=ks)
    _assert_dict_close(got, ref_topk(logits, labels, ks))
    for chunk in (1, 3):
        _assert_dict_close(topk_accuracy(*args, ks=ks, chunk_size=chunk), got)


def test_topk_ties_are_pessimistic_and_k_clipped():
    logits = torch.zeros(4, 3)  # collapsed model: every class ties
    labels = torch.tensor([0, 1, 2, 0])
    assert topk_accuracy(logits, labels, ks=(1, 2, 3, 5)) == {"top1": 0.0, "top2": 0.0, "top3": 100.0, "top5": 100.0}
    logits = torch.tensor([[1.0, 1.0, 0.0], [2.0, 1.0, 1.0]])
    assert topk_accuracy(logits, torch.tensor([0, 0]), ks=(1, 2)) == {"top1": 50.0, "top2": 100.0}


def test_topk_errors():
    with pytest.raises(ValueError):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 1]), ks=(0,))


# ----------------------------------------------------------------------------- retrieval recall


def _random_retrieval_case(seed: int, integer: bool):
    rng = np.random.default_rng(seed)
    num_images, dim = int(rng.integers(1, 25)), int(rng.integers(1, 6))
    counts = rng.integers(1, 5, num_images)  # unequal caption counts, at least one each
    t2i = [i for i, c in enumerate(counts) for _ in range(c)]
    rng.shuffle(t2i)  # captions of one image need not be contiguous
    if integer:  # small integers: exact float dot products and many exact ties
        images = rng.integers(-1, 2, (num_images, dim)).astype(np.float32)
        texts = rng.integers(-1, 2, (len(t2i), dim)).astype(np.float32)
    else:
        images = rng.standard_normal((num_images, dim))
        texts = rng.standard_normal((len(t2i), dim))
    return images, texts, t2i


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("integer", [False, True])
def test_retrieval_matches_reference(seed, integer):
    images, texts, t2i = _random_retrieval_case(seed, integer)
    ks = (1, 5, 10)
    want = ref_retrieval(images, texts, t2i, ks)
    args = (torch.from_numpy(images), torch.from_numpy(texts), torch.tensor(t2i))
    got = retrieval_recall(*args, ks=ks)
    _assert_dict_close(got, want)
    for chunk in (1, 4):
        _assert_dict_close(retrieval_recall(*args, ks=ks, chunk_size=chunk), want)


def test_retrieval_collapsed_model_scores_low():
    images = torch.ones(10, 4)
    texts = torch.ones(50, 4)
    t2i = torch.arange(10).repeat_interleave(5)
    got = retrieval_recall(images, texts, t2i)
    # TR@K: the 45 captions of other images all tie with the best own caption; IR@K: 9 other images tie.
    assert got == {"tr@1": 0.0, "tr@5": 0.0, "tr@10": 0.0, "ir@1": 0.0, "ir@5": 0.0, "ir@10": 100.0}


def test_retrieval_hand_example():
    # image 0 has captions 0 and 2, image 1 has caption 1. Scores chosen by hand.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    got = retrieval_recall(images, texts, torch.tensor([0, 1, 0]), ks=(1, 2))
    # TR: image 0's best own caption (2, score 1.0) beats all others -> hit; image 1's only caption (1, score 0.5)
    # ties the wrong caption 0 -> rank 1. IR: captions 0 and 1 score 0.5 on both images -> rank 1 each;
    # caption 2 prefers its image 0 -> hit.
    assert got == {"tr@1": 50.0, "tr@2": 100.0, "ir@1": 100.0 / 3, "ir@2": 100.0}


def test_retrieval_errors():
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_recall(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 0]))
    with pytest.raises(ValueError):
        retrieval_recall(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError):
        retrieval_recall(torch.eye(3), torch.ones(3, 2), torch.tensor([0, 1, 2]))


def test_retrieval_large_chunked():
    # 1k x 5k: the default chunking and an odd explicit one agree (5k x 25k takes ~4 s and ~250 MB on CPU).
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(1000, 16, generator=g), dim=-1)
    t2i = torch.arange(1000).repeat_interleave(5)
    texts = torch.nn.functional.normalize(images[t2i] + 0.5 * torch.randn(5000, 16, generator=g), dim=-1)
    got = retrieval_recall(images, texts, t2i)
    assert got == retrieval_recall(images, texts, t2i, chunk_size=777)
    assert 0 < got["ir@1"] < got["ir@10"] <= 100


# ----------------------------------------------------------------------------- continual metrics

HAND = [[80.0, 30.0, 20.0],
        [70.0, 85.0, 25.0],
        [60.0, 75.0, 90.0]]


def test_continual_hand_example():
    # Worked in docs/metrics.md.
    got = continual_metrics(HAND)
    assert got == {"avg": 77.5, "last": 75.0, "bwt": -15.0, "transfer": 26.25, "forgetting": 15.0}
    got = continual_metrics(HAND, initial=[56.0, 40.0, 15.0])
    assert got["transfer"] == pytest.approx(37.0) and got["avg"] == 77.5


def test_continual_forgetting_ignores_rows_before_a_task_is_learned():
    # Task 1 is better before it is learned (row 0) than right after (row 1): that row must not count.
    a = [[50.0, 70.0, 10.0],
         [45.0, 60.0, 20.0],
         [40.0, 50.0, 30.0]]
    got = continual_metrics(a)
    # forgetting: task 0: max(50, 45) - 40 = 10; task 1: max(60) - 50 = 10 (row 0 predates learning task 1).
    assert got["forgetting"] == pytest.approx(10.0) and got["bwt"] == pytest.approx(-10.0)
    assert got["transfer"] == pytest.approx((70.0 + 15.0) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_continual_matches_reference(seed):
    rng = np.random.default_rng(seed)
    num = int(rng.integers(1, 7))
    a = rng.uniform(0, 100, (num, num)).tolist()
    initial = rng.uniform(0, 100, num).tolist()
    _assert_dict_close(continual_metrics(a), ref_continual(a))
    got = continual_metrics(torch.tensor(a, dtype=torch.float64), initial=initial)
    _assert_dict_close(got, ref_continual(a, initial))


def test_continual_single_session():
    assert continual_metrics([[70.0]]) == {"avg": 70.0, "last": 70.0, "bwt": None, "transfer": None, "forgetting": None}
    assert continual_metrics([[70.0]], initial=[10.0])["transfer"] is None


def test_continual_errors():
    with pytest.raises(ValueError):
        continual_metrics([[1.0, 2.0]])
    with pytest.raises(ValueError):
        continual_metrics(HAND, initial=[1.0, 2.0])


def test_trajectory_summary():
    assert trajectory_summary([60.0, 55.0, 50.0, 52.0]) == {"start": 60.0, "end": 52.0, "min": 50.0, "drop": 8.0}
    assert trajectory_summary([5]) == {"start": 5.0, "end": 5.0, "min": 5.0, "drop": 0.0}
    with pytest.raises(ValueError):
        trajectory_summary([])


def test_reference_self_check():
    # The reference's tie rule, checked on every permutation of a tiny tied case.
    for perm in itertools.permutations(range(3)):
        scores = [1.0, 1.0, 0.0]
        scores = [scores[p] for p in perm]
        correct = {perm.index(0)}
        assert _first_correct_position(scores, correct) == 1


def test_class_oracle_recall_matches_a_simulated_class_level_model():
    # Unequal classes and caption counts. A simulated model scores a pair 100 when image and caption share a class,
    # plus iid noise (random order within the class); its recall averaged over many draws is the closed form's.
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    t2i = [i for i, c in enumerate([5, 4, 5, 2, 5, 1, 3, 5, 5]) for _ in range(c)]
    ks = (1, 2, 5, 30)
    want = class_oracle_recall(labels, t2i, ks)
    onehot = torch.nn.functional.one_hot(torch.tensor(labels), 3).double() * 10.0
    text_class = onehot[torch.tensor(t2i)]
    gen = torch.Generator().manual_seed(0)
    trials, got = 3000, {k: 0.0 for k in want}
    for _ in range(trials):
        images = torch.cat([onehot, torch.randn(len(labels), 8, generator=gen, dtype=torch.float64)], 1)
        texts = torch.cat([text_class, torch.randn(len(t2i), 8, generator=gen, dtype=torch.float64)], 1)
        for k, v in retrieval_recall(images, texts, torch.tensor(t2i), ks).items():
            got[k] += v / trials
    for k in want:
        assert abs(got[k] - want[k]) < 1.5, (k, got[k], want[k])
    assert want["tr@30"] == 100.0 and want["ir@5"] == 100.0
    # Pascal-like: 10 images per class, 5 captions each -> R@1 is exactly 10%.
    assert class_oracle_recall([i // 10 for i in range(200)], [i // 5 for i in range(1000)], (1,)) == \
        pytest.approx({"tr@1": 10.0, "ir@1": 10.0})
    with pytest.raises(ValueError, match="at least one caption"):
        class_oracle_recall([0, 1], [0, 0])
