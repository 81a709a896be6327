"""Rehearsal (er, agem, gem): the projections against closed forms and scipy's QP solver, the seeded replay draws,
exemplar selection and the memory record, the trainers' hooks, and bad input through the recipe."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_cl.rehearsal import (
    ExemplarMemory,
    RehearsalError,
    add_to_grads,
    agem_project,
    assign_flat_grad,
    clip_contrastive_loss,
    flat_dots,
    flat_grad,
    gem_dual_solve,
    gem_project,
    herding_order,
    replay_indices,
    select_exemplars,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"


# ---------------------------------------------------------------------------------------------------- projections
def test_agem_projection_closed_form():
    g, r = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    out, changed = agem_project(g, r)
    assert changed
    # g - (g.r / r.r) r = [1, 0] - (-1 / 2) [-1, 1] = [0.5, 0.5], orthogonal to r
    torch.testing.assert_close(out, torch.tensor([0.5, 0.5]))
    assert abs(float(out @ r)) < 1e-7


def test_agem_no_projection_when_gradients_agree():
    g, r = torch.randn(50), torch.randn(50)
    r = r if float(g @ r) >= 0 else -r
    out, changed = agem_project(g, r)
    assert not changed and out is g
    assert agem_project(g, torch.zeros(50)) == (g, False)


def test_gem_single_constraint_without_margin_is_agem():
    gen = torch.Generator().manual_seed(0)
    g, r = torch.randn(30, generator=gen), torch.randn(30, generator=gen)
    r = r if float(g @ r) < 0 else -r
    gem, changed = gem_project(g, r[None], margin=0.0, eps=0.0)
    assert changed
    torch.testing.assert_close(gem, agem_project(g, r)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed,k,margin", [(0, 3, 0.5), (1, 5, 0.0), (2, 4, 0.1)])
def test_gem_dual_matches_scipy(seed, k, margin):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(seed)
    memories, g = rng.normal(size=(k, 40)), rng.normal(size=40)
    eps = 1e-3
    P = memories @ memories.T + eps * np.eye(k)
    q = memories @ g
    res = scipy_optimize.minimize(lambda v: 0.5 * v @ P @ v + q @ v, x0=np.full(k, margin + 1.0),
                                  jac=lambda v: P @ v + q, bounds=[(margin, None)] * k, method="L-BFGS-B",
                                  options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000})
    v = gem_dual_solve(torch.tensor(memories), torch.tensor(g), margin=margin, eps=eps).numpy()
    np.testing.assert_allclose(v, res.x, atol=1e-5)
    # KKT of the dual: G g~ = (P v + q) - eps v with P v + q >= 0, so every constraint holds up to GEM's ridge
    projected, changed = gem_project(torch.tensor(g), torch.tensor(memories), margin=margin, eps=eps)
    assert changed == bool((q < 0).any())
    if changed:
        assert (torch.tensor(memories) @ projected.double() + eps * torch.tensor(v) >= -1e-6).all()


def test_gem_no_projection_when_constraints_hold():
    g = torch.randn(20)
    memories = torch.stack([g + 0.1 * torch.randn(20), 2 * g])
    out, changed = gem_project(g, memories)
    assert not changed and out is g


def test_flat_grad_round_trip_only_trainable():
    a = torch.nn.Parameter(torch.randn(2, 3))
    b = torch.nn.Parameter(torch.randn(4))
    (a.sum() * 2).backward()
    flat = flat_grad([a, b])  # b.grad is None -> zeros
    assert flat.shape == (10,) and flat[:6].eq(2).all() and flat[6:].eq(0).all()
    assign_flat_grad([a, b], torch.arange(10.0))
    assert a.grad.flatten().tolist() == list(range(6)) and b.grad.tolist() == [6.0, 7.0, 8.0, 9.0]


def test_flat_dots_and_add_to_grads_act_as_on_the_flat_gradient():
    a = torch.nn.Parameter(torch.randn(2, 3))
    b = torch.nn.Parameter(torch.randn(4))
    a.grad = torch.randn(2, 3)  # b.grad is None: zeros in the flat layout
    rows, v = torch.randn(3, 10), [0.5, 0.0, -2.0]
    g = flat_grad([a, b])
    torch.testing.assert_close(flat_dots([a, b], rows), (rows @ g).double())
    add_to_grads([a, b], rows, v)
    torch.testing.assert_close(flat_grad([a, b]), g + torch.tensor(v) @ rows)
    with pytest.raises(ValueError, match="10 entries"):
        flat_dots([a], rows)


def test_contrastive_loss_prefers_matching_pairs():
    x = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    good = clip_contrastive_loss(x, x, torch.tensor(10.0))
    bad = clip_contrastive_loss(x, x.roll(1, 0), torch.tensor(10.0))
    assert good < bad


# ------------------------------------------------------------------------------------------------- draws, memory
def test_replay_indices_are_keyed_by_draw_and_cover_every_row_per_pass():
    draws = [replay_indices(10, 4, d, seed=3) for d in range(5)]  # 20 rows = 2 passes, batch 2 straddles them
    assert draws == [replay_indices(10, 4, d, seed=3) for d in range(5)]  # no hidden state
    flat = [i for d in draws for i in d]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert replay_indices(10, 4, 2, seed=4) != draws[2] or replay_indices(10, 4, 3, seed=4) != draws[3]
    assert len(replay_indices(3, 7, 0, seed=0)) == 7  # a batch larger than the set spans several passes
    with pytest.raises(RehearsalError, match="replay set is empty"):
        replay_indices(0, 4, 0, seed=0)


def _herding_reference(feats: np.ndarray, m: int) -> list[int]:
    """iCaRL's herding written naively (numpy, with an explicit loop over candidates)."""
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    mu = feats.mean(0)
    chosen, total = [], np.zeros_like(mu)
    for k in range(1, m + 1):
        best, best_d = None, np.inf
        for i in range(len(feats)):
            if i in chosen:
                continue
            d = np.sum((mu - (total + feats[i]) / k) ** 2)
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
        total += feats[best]
    return chosen


def test_herding_matches_naive_icarl_and_is_a_priority_order():
    feats = np.random.default_rng(0).normal(size=(25, 6))
    order = herding_order(torch.tensor(feats), 10)
    assert order == _herding_reference(feats, 10)
    assert herding_order(torch.tensor(feats), 4) == order[:4]
    assert len(herding_order(torch.tensor(feats), 100)) == 25


def test_select_exemplars_per_class_and_deterministic():
    labels = [0, 1, 0, 1, 0, 2]
    rows = [10, 11, 12, 13, 14, 15]
    a = select_exemplars(labels, rows, 2, "random", seed=1)
    assert a == select_exemplars(labels, rows, 2, "random", seed=1)
    assert set(a) == {0, 1, 2} and len(a[0]) == 2 and set(a[0]) <= {10, 12, 14} and a[2] == [15]
    feats = torch.randn(6, 4)
    h = select_exemplars(labels, rows, 3, "herding", seed=0, features=feats)
    assert sorted(h[0]) == [10, 12, 14]


def test_memory_budget_save_load_and_redo(tmp_path):
    memory = ExemplarMemory(memory_size=4, per_class=False, selection="random")
    memory.check_budget(4)
    with pytest.raises(RehearsalError, match="raise memory_size to at least 5"):
        memory.check_budget(5)
    memory.add_session(1, {0: [1, 2, 3], 1: [4, 5, 6]})
    assert [r for *_, r in memory.exemplars()] == [1, 2, 4, 5]  # 4 in total over 2 classes
    memory.add_session(2, {2: [7, 8], 3: [9]})
    assert [r for *_, r in memory.exemplars()] == [1, 4, 7, 9]  # shrinks to 1 per class, keeping prefixes
    assert [r for *_, r in memory.exemplars(before_session=2)] == [1, 2, 4, 5]
    memory.save(tmp_path)
    loaded = ExemplarMemory.load(tmp_path, 4, False, "random")
    assert loaded.to_dict() == memory.to_dict()
    loaded.add_session(2, {2: [8]})  # a redone session replaces its record
    assert [s["session"] for s in loaded.sessions] == [1, 2] and loaded.sessions[1]["classes"] == {"2": [8]}
    with pytest.raises(RehearsalError, match="other memory settings"):
        ExemplarMemory.load(tmp_path, 8, False, "random")
    per_class = ExemplarMemory(memory_size=2, per_class=True)
    per_class.check_budget(1000)  # per class: any number of classes fits


# ------------------------------------------------------------------------------------------------------ trainers
def _tiny_trainer(trainer_cls, config_cls, tmp_path, **overrides):
    from helpers import trainer_args

    from clip_cl.data import Protocol, with_image_transform
    from clip_cl.models import tiny_clip

    model, processor = tiny_clip()
    protocol = Protocol.from_dict({
        "update_train": {"name": "fm", "path": str(DATA / "fashion_mnist"), "split": "train", "max_samples": 40},
        "update_test": {"name": "fm", "path": str(DATA / "fashion_mnist"), "split": "test", "max_samples": 10},
        "replay": {"name": "coco", "path": str(DATA / "coco_captions"), "split": "test"}})
    ip = processor.image_processor
    train = with_image_transform(protocol.train_rows(range(40)), ip, train=False, label_column="label")
    pairs = with_image_transform(protocol.replay_dataset()[0], ip, train=False, captions_column="captions")
    args = trainer_args(config_cls, tmp_path, protocol="mst", num_sessions=2, memory_size=0,
                        replay_dataset={"path": str(DATA / "coco_captions"), "split": "test"}, **overrides)
    return trainer_cls(model=model, args=args, train_dataset=train, processing_class=processor,
                       class_names=protocol.class_names, replay_dataset=pairs)


@pytest.mark.parametrize("method", ["agem", "gem"])
def test_projection_once_per_optimizer_step_on_the_accumulated_gradient(tmp_path, method):
    from clip_cl.methods import get_method

    spec = get_method(method)
    trainer = _tiny_trainer(spec.trainer_cls, spec.config_cls, tmp_path, gradient_accumulation_steps=2, max_steps=2)
    seen = []
    original = trainer.coefficients

    def spy(dots, references):
        # G g of the accumulated gradient of the step, before clipping: the one flat_grad reads now
        g = flat_grad(trainer.trainable_parameters())
        torch.testing.assert_close(dots, (references @ g).double(), rtol=1e-4, atol=1e-6)
        v = original(dots, references)
        seen.append((int(trainer.state.global_step), references.shape[0]))
        if v is None:  # force a projection: the in-place update below must be checked on every step
            v = torch.full_like(dots, -0.25)
        spy.expected = g + (v.to(references.dtype) @ references)  # the flat projection
        return v

    trainer.coefficients = spy
    original_step = trainer.project_gradients

    def checked_step():
        changed = original_step()
        assert changed
        torch.testing.assert_close(flat_grad(trainer.trainable_parameters()), spy.expected, rtol=1e-5, atol=1e-7)
        checked.append(True)
        return changed

    checked = []
    trainer.project_gradients = checked_step
    trainer.train()
    assert seen == [(0, 1), (1, 1)]  # one projection per optimizer step, one (replay-set) constraint
    assert len(checked) == 2


def test_er_adds_replay_terms_in_one_forward(tmp_path):
    from clip_cl import ERConfig, ERTrainer

    trainer = _tiny_trainer(ERTrainer, ERConfig, tmp_path, max_steps=1, logging_steps=1)
    calls = []
    model = trainer.model
    hook = model.register_forward_hook(lambda m, args, kwargs_out: calls.append(1))
    trainer.train()
    hook.remove()
    assert len(calls) == 1  # update batch and replay pairs in a single forward
    logged = [h for h in trainer.state.log_history if "loss_replay_pairs" in h]
    assert logged and np.isfinite(logged[0]["loss_replay_pairs"])


# ----------------------------------------------------------------------------------------------- recipe + errors
def _argv(out, method, *extra):
    return ["--config", str(ROOT / "tests/tiny_quickstart.yaml"), "--method", method, "--output_dir", str(out),
            "--protocol", "mst", "--num_sessions", "2", "--max_steps", "2", "--gradient_accumulation_steps", "2",
            "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--max_eval_samples", "20",
            "--eval_before_training", "false", "--learning_rate", "1e-4",
            "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
            "--zero_shot_datasets", "[]", "--retrieval_datasets", "[]", *extra]


def test_gem_with_replay_pairs_and_memory_records_the_memory(tmp_path):
    from clip_cl.cli import train_main

    out = tmp_path / "gem"
    results = train_main(_argv(out, "gem", "--memory_size", "10", "--memory_selection", "herding",
                               "--replay_dataset", json.dumps({"path": str(DATA / "cifar10"), "split": "test",
                                                               "max_samples": 30})))
    assert results["status"] == "complete"
    memory = json.loads((out / "results.json").read_text())["memory"]
    assert memory["selection"] == "herding" and memory["per_class_budget"] == 2  # 10 exemplars over 5 classes
    rows = memory["sessions"][0]["rows"]
    assert len(rows) == 5 and all(len(r) == 2 for r in rows.values())
    assert json.loads((out / "memory.json").read_text())["sessions"][0]["session"] == 1
    assert results["splits"]["replay"]["pairs"] == "class prompts"


@pytest.mark.parametrize("extra,message", [
    (["--memory_size", "0"], "the replay set is empty"),
    (["--memory_size", "3"], "raise memory_size to at least 10"),
    (["--replay_dataset", json.dumps({"path": str(DATA / "cifar10"), "split": "test", "captions_column": "text",
                                      "label_column": "fine"})], "no captions column 'text'"),
])
def test_bad_rehearsal_input_is_one_error_line(tmp_path, extra, message):
    from clip_cl.cli import train_main

    with pytest.raises(SystemExit) as err:
        train_main(_argv(tmp_path / "bad", "agem", *extra))
    text = str(err.value)
    assert text.startswith("error: ") and message in text and "\n" not in text


def test_empty_replay_dataset_is_refused(tmp_path):
    from helpers import trainer_args

    from clip_cl import AGEMConfig, AGEMTrainer, tiny_clip

    model, processor = tiny_clip()
    args = trainer_args(AGEMConfig, tmp_path, protocol="mst", num_sessions=2)
    with pytest.raises(RehearsalError, match="no rows"):
        AGEMTrainer(model=model, args=args, processing_class=processor, class_names=["a"], replay_dataset=[])


def test_rehearsal_flops_are_their_floor():
    """FLOPs are exact: A-GEM's and GEM's step is FT + one replay forward/backward. ER computes the same plus the
    padding of its single text call (class prompts padded to the replay captions' length): 1.052x at batch 4, 1.028x
    at 16, 1.009x at 64 (docs/performance.md); the bound only says nothing else is added."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_flops

    res = bench_flops.bench("tiny", 4, torch.device("cpu"), ["ft", "er", "agem", "gem"], pool_size=8,
                            log=lambda *a: None)
    rows = res["rows"]
    assert rows["agem"]["vs_floor"] == pytest.approx(1.0, abs=1e-3)
    assert rows["gem"]["vs_floor"] == pytest.approx(1.0, abs=1e-3)
    assert 1.0 <= rows["er"]["vs_floor"] < 1.1
