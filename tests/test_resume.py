"""Kill a real run with SIGKILL in the middle of a session, run the same command again, and get the results of an
uninterrupted run (CPU, fixed seed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import kill_after_first_checkpoint, start_run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"

pytestmark = pytest.mark.slow


def command(out):
    return [sys.executable, str(ROOT / "recipes" / "train.py"), "--config", str(ROOT / "tests/tiny_quickstart.yaml"),
            "--output_dir", str(out), "--protocol", "mst", "--num_sessions", "2", "--num_train_epochs", "3",
            "--per_device_train_batch_size", "16", "--disable_tqdm", "true", "--max_eval_samples", "40",
            "--method", "lwf",
            "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
            "--zero_shot_datasets", json.dumps([{"name": "cifar10", "path": str(DATA / "cifar10"), "split": "test"}]),
            "--retrieval_datasets", json.dumps([{"name": "coco", "path": str(DATA / "coco_captions"),
                                                 "split": "test"}])]


def comparable(results):
    """Everything measured, without wall-clock times."""
    drop = lambda d: {k: v for k, v in d.items() if k != "seconds"}
    return {"before": drop(results["before"]),
            "sessions": [{**drop(s), "eval": drop(s["eval"])} for s in results["sessions"]],
            "continual": results["continual"]}


def test_sigkill_mid_session_then_resume_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    proc = start_run(command(reference))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-4000:]

    out = tmp_path / "killed"
    proc = start_run(command(out))
    # Wait for a finished Trainer checkpoint inside session 2 (session 1 done, session 2 under way), then kill -9.
    kill_after_first_checkpoint(proc, out / "session_2")
    partial = json.loads((out / "results.json").read_text())
    assert partial["status"] == "running" and len(partial["sessions"]) == 1

    proc = start_run(command(out))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-4000:]
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["status"] == "complete"
    assert comparable(resumed) == comparable(json.loads((reference / "results.json").read_text()))


# ---------------------------------------------------------------------------------------------------- per-step draws
# The methods' own per-step randomness (ZSCL's reference images and texts, VR-LwF's pseudo-classes) must not depend on
# a generator's running state, which a resumed process starts over: after resuming from a checkpoint, a trainer draws
# what the uninterrupted one drew at the same steps, and ends with the same weights. Data without augmentation and
# no dropout, so these draws are the only randomness.
DRAW_SETTINGS = {
    "zscl": dict(zscl_teacher="previous", zscl_text_features="student", zscl_texts_per_step=2,
                 zscl_reference_texts=["a", "b c", "d", "e f g", "h"], zscl_reference_batch_size=3, zscl_wa_every=2),
    "vr_lwf": dict(vr_num_pseudo_classes=3),
}


def _recording_trainer(method, model, processor, out, random_images):
    from clip_cl.methods import get_method
    from helpers import collate, trainer_args

    spec = get_method(method)
    args = trainer_args(spec.config_cls, out, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                        max_steps=6, save_strategy="steps", save_steps=2, save_total_limit=None, **DRAW_SETTINGS[method])
    extra = {"reference_dataset": random_images(7, [0], seed=1)} if method == "zscl" else {}
    trainer = spec.trainer_cls(model=model, args=args, train_dataset=random_images(12, [3, 7]),
                               processing_class=processor, class_names=["cat", "dog"], class_ids=[3, 7],
                               data_collator=collate, **extra)
    trainer.draws = []

    def record(name, fn):
        def wrapped(*a, **kw):
            out = fn(*a, **kw)
            value = out["input_ids"] if isinstance(out, dict) else out
            if value is not None:
                trainer.draws.append((trainer.state.global_step, name, value.detach().cpu().clone()))
            return out
        return wrapped

    trainer.extra_text_tokens = record("texts", trainer.extra_text_tokens)
    if method == "zscl":
        trainer.reference_batch = record("reference", trainer.reference_batch)
    return trainer


@pytest.mark.parametrize("method", sorted(DRAW_SETTINGS))
def test_per_step_draws_after_resuming_equal_the_uninterrupted_ones(method, tmp_path, pristine_tiny, random_images):
    import copy

    import torch

    model, processor = pristine_tiny
    full = _recording_trainer(method, copy.deepcopy(model), processor, tmp_path / "run", random_images)
    full.train()
    expected = {n: p.detach().clone() for n, p in full.model.named_parameters()}
    assert {step for step, _, _ in full.draws} == set(range(6))
    for checkpoint in (2, 4):  # inside the first epoch (3 steps), inside the second
        torch.manual_seed(1234 + checkpoint)  # a resumed process's global RNG is anywhere
        resumed = _recording_trainer(method, copy.deepcopy(model), processor, tmp_path / "run", random_images)
        resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "out" / f"checkpoint-{checkpoint}"))
        tail = [d for d in full.draws if d[0] >= checkpoint]
        assert [(s, n) for s, n, _ in resumed.draws] == [(s, n) for s, n, _ in tail]
        for (step, name, got), (_, _, want) in zip(resumed.draws, tail):
            assert torch.equal(got, want), f"{name} drawn at step {step} differs after resuming from {checkpoint}"
        for name, p in resumed.model.named_parameters():
            assert torch.equal(p.detach(), expected[name]), name


# ---------------------------------------------------------------------------------------------------- resume matrix
def test_resume_matrix_fast_subset_mid_epoch_step_checkpoint():
    """The fast corner of `recipes/resume_matrix.py` (the whole matrix is run by hand; docs/reliability.md): FT and
    VR-LwF killed one step after a step checkpoint inside session 2's first epoch resume to the uninterrupted
    results and weights."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "resume_matrix.py"), "--methods", "ft,vr_lwf",
                           "--kill-points", "epoch1-step", "--jobs", "2"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 of 2 kill points resumed to the uninterrupted results" in proc.stdout, proc.stdout


def test_resume_matrix_refuses_unknown_names(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("resume_matrix", ROOT / "recipes" / "resume_matrix.py")
    matrix = importlib.util.module_from_spec(spec)
    sys.modules["resume_matrix"] = matrix  # dataclasses look their module up there
    spec.loader.exec_module(matrix)
    for args in (["--methods", "ft,nope"], ["--kill-points", "sometime"], ["--jobs", "0"]):
        assert matrix.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (args, err)


def test_resume_matrix_forks_get_the_threads_the_parent_gives_up(tmp_path, monkeypatch):
    """The matrix's own process compares weights with torch ops; were it multi-threaded, its OpenMP pool would make
    every later fork hang in its first parallel region. It keeps one thread and hands the count to each fork."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("resume_matrix", ROOT / "recipes" / "resume_matrix.py")
    matrix = importlib.util.module_from_spec(spec)
    sys.modules["resume_matrix"] = matrix
    spec.loader.exec_module(matrix)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        launcher = matrix.Launcher("fork", [])
        assert torch.get_num_threads() == 1 and launcher.child_threads == 2
        monkeypatch.setattr(matrix, "child_main", lambda point, argv, log: (
            (log.parent / "threads").write_text(str(torch.get_num_threads())) and 0))
        launcher.start(matrix.Cell("ft", None, tmp_path, [None]))
        cell, code = launcher.wait_one()
        assert code == 0 and (tmp_path / "threads").read_text() == "2"
    finally:
        torch.set_num_threads(before)
