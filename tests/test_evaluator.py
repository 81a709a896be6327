"""The evaluator on the tiny CLIP and small in-memory datasets: it must equal the metrics recomputed from features."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clip_cl.evaluation import (
    Evaluator,
    encode_image_dataset,
    retrieval_eval,
    retrieval_recall,
    topk_accuracy,
    updated_task_eval,
    zero_shot_eval,
)
from clip_cl.features import encode_texts, image_features
from clip_cl.models import tiny_clip
from clip_cl.prompts import DEFAULT_TRAIN_TEMPLATES, DEFAULT_ZERO_SHOT_TEMPLATES, class_text_features

UT_CLASSES = ["cat", "dog", "car", "tree", "boat", "house"]
UT_SESSIONS = [[0, 1], [2, 3], [4, 5]]
ZS_CLASSES = ["apple", "bird", "chair", "flower", "horse", "lamp", "train"]
WORDS = ["red", "small", "old", "bright", "wooden", "happy", "quiet"]


class ListDataset(torch.utils.data.Dataset):
    """The simplest map-style dataset: a list of row dicts."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _pixels(g: torch.Generator) -> torch.Tensor:
    return torch.randn(3, 32, 32, generator=g)


def build_datasets(seed: int = 0, n_update: int = 11, n_zs: int = 7, n_retrieval: int = 5) -> dict:
    """Deterministic tiny datasets (odd sizes so that two processes get uneven shards). Shared with the worker."""
    g = torch.Generator().manual_seed(seed)
    # Update task: session 2 (classes 4, 5) has images; class 5 has none.
    update = ListDataset([{"pixel_values": _pixels(g), "labels": i % 5} for i in range(n_update)])
    zs = ListDataset([{"pixel_values": _pixels(g), "labels": (3 * i) % len(ZS_CLASSES)} for i in range(n_zs)])
    retrieval = ListDataset([
        {"pixel_values": _pixels(g),
         "captions": [f"a {WORDS[(i + j) % len(WORDS)]} {ZS_CLASSES[i % len(ZS_CLASSES)]}" for j in range(1 + i % 3)]}
        for i in range(n_retrieval)
    ])
    one = ListDataset([{"pixel_values": _pixels(g), "captions": ["a lonely lamp", "one lamp"]}])
    return {"update": update, "zs": zs, "retrieval": retrieval, "one": one}


def build_evaluator(tokenizer, data: dict, batch_size: int = 4) -> Evaluator:
    return Evaluator(tokenizer, update=(data["update"], UT_CLASSES, UT_SESSIONS),
                     zero_shot={"zs": (data["zs"], ZS_CLASSES)},
                     retrieval={"ret": data["retrieval"], "one": data["one"]},
                     batch_size=batch_size, disable_tqdm=True)


@pytest.fixture(scope="module")
def clip():
    model, processor = tiny_clip(seed=0)
    return model, processor.tokenizer


@pytest.fixture(scope="module")
def data():
    return build_datasets()


def _direct_image_features(model, dataset) -> torch.Tensor:
    with torch.no_grad():
        return image_features(model, torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))]))


def test_encode_image_dataset_matches_direct(clip, data):
    model, _ = clip
    feats, extras = encode_image_dataset(model, data["update"], batch_size=3, disable_tqdm=True)
    assert feats.dtype == torch.float32 and feats.shape == (11, 64)
    torch.testing.assert_close(feats, _direct_image_features(model, data["update"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(11))
    assert extras["labels"].tolist() == [i % 5 for i in range(11)] and extras["labels"].dtype == torch.long
    _, extras = encode_image_dataset(model, data["retrieval"], disable_tqdm=True)
    assert extras["captions"] == [data["retrieval"][i]["captions"] for i in range(5)]


def test_zero_shot_eval_matches_metric(clip, data):
    model, tok = clip
    got = zero_shot_eval(model, tok, data["zs"], ZS_CLASSES, DEFAULT_ZERO_SHOT_TEMPLATES, disable_tqdm=True)
    feats = _direct_image_features(model, data["zs"])
    text = class_text_features(model, tok, ZS_CLASSES, DEFAULT_ZERO_SHOT_TEMPLATES)
    labels = torch.tensor([data["zs"][i]["labels"] for i in range(7)])
    assert got == {**topk_accuracy(feats @ text.T, labels, ks=(1, 5)), "num_images": 7}


def test_retrieval_eval_matches_metric(clip, data):
    model, tok = clip
    got = retrieval_eval(model, tok, data["retrieval"], disable_tqdm=True)
    feats = _direct_image_features(model, data["retrieval"])
    caps = [data["retrieval"][i]["captions"] for i in range(5)]
    texts = [c for cs in caps for c in cs]
    t2i = torch.tensor([i for i, cs in enumerate(caps) for _ in cs])
    want = retrieval_recall(feats, encode_texts(model, tok, texts), t2i)
    assert got == {**want, "num_images": 5, "num_captions": len(texts)}
    assert len(texts) == 1 + 2 + 3 + 1 + 2  # unequal caption counts


def test_retrieval_eval_folds_average_equal_consecutive_folds(clip):
    # CL-CLIP's COCO numbers average 5 folds of 1k images; here 6 images in 2 folds, against each half on its own.
    model, tok = clip
    rows = build_datasets(n_retrieval=6)["retrieval"].rows
    halves = [retrieval_eval(model, tok, ListDataset(rows[:3]), disable_tqdm=True),
              retrieval_eval(model, tok, ListDataset(rows[3:]), disable_tqdm=True)]
    got = retrieval_eval(model, tok, ListDataset(rows), folds=2, disable_tqdm=True)
    for key in ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10"):
        assert got[key] == pytest.approx((halves[0][key] + halves[1][key]) / 2)
    assert got["folds"] == 2 and got["num_images"] == 6
    with pytest.raises(ValueError, match="cannot be split into 4 equal folds"):
        retrieval_eval(model, tok, ListDataset(rows), folds=4, disable_tqdm=True)


def test_retrieval_eval_rejects_image_without_captions(clip):
    model, tok = clip
    ds = ListDataset([{"pixel_values": torch.zeros(3, 32, 32), "captions": ["a cat"]},
                      {"pixel_values": torch.zeros(3, 32, 32), "captions": []}])
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_eval(model, tok, ds, disable_tqdm=True)


def _ut_reference(feats, text, labels, sessions, seen):
    """Slices written out by hand: images of `image_classes`, classifier over `classifier`."""
    def acc(image_classes, classifier):
        rows = [i for i, y in enumerate(labels) if y in image_classes]
        if not rows:
            return None
        logits = feats[rows] @ text[classifier].T
        return topk_accuracy(logits, torch.tensor([classifier.index(labels[i]) for i in rows]), ks=(1, 5))

    def upto(j):
        return sum(sessions[:j + 1], [])

    seen_classes = upto(seen - 1) if seen else upto(len(sessions) - 1)
    head = acc(seen_classes, seen_classes)
    # CL-CLIP (methods/base.py: test, get_acc_bwt): argmax over every class, per-class accuracy, mean per session.
    everything = upto(len(sessions) - 1)
    pred = [everything[int((feats[i] @ text[everything].T).argmax())] for i in range(len(labels))]
    per_class = {c: 100.0 * sum(p == c for p, y in zip(pred, labels) if y == c) / labels.count(c)
                 for c in everything if c in labels}
    balanced = [sum(per_class[c] for c in s if c in per_class) / len([c for c in s if c in per_class])
                if any(c in per_class for c in s) else None for s in sessions]
    counted = [b for b in balanced[:seen or len(sessions)] if b is not None]
    return {
        "acc": head and head["top1"], "top5": head and head["top5"],
        "per_session": [(r := acc(s, upto(max(seen - 1, j)))) and r["top1"] for j, s in enumerate(sessions)],
        "per_session_task": [(r := acc(s, s)) and r["top1"] for s in sessions],
        "num_classes_seen": len(upto(seen - 1)) if seen else 0,
        "num_images": sum(y in seen_classes for y in labels),
        "balanced_acc": sum(counted) / len(counted) if counted else None,
        "balanced_per_session": balanced,
    }


@pytest.mark.parametrize("seen", [0, 1, 2, 3])
def test_updated_task_eval_matches_slices(clip, data, seen):
    model, tok = clip
    got = updated_task_eval(model, tok, data["update"], UT_CLASSES, UT_SESSIONS, seen, DEFAULT_TRAIN_TEMPLATES,
                            batch_size=5, disable_tqdm=True)
    feats = _direct_image_features(model, data["update"])
    text = class_text_features(model, tok, UT_CLASSES, DEFAULT_TRAIN_TEMPLATES)
    labels = [data["update"][i]["labels"] for i in range(11)]
    want = _ut_reference(feats, text, labels, UT_SESSIONS, seen)
    assert {k: v for k, v in got.items() if not k.startswith("balanced")} == {
        k: v for k, v in want.items() if not k.startswith("balanced")}
    assert got["balanced_acc"] == pytest.approx(want["balanced_acc"])
    assert got["balanced_per_session"] == pytest.approx(want["balanced_per_session"])
    assert got["num_images"] == {0: 11, 1: 5, 2: 9, 3: 11}[seen]
    assert got["per_session_task"][0] is not None and len(got["per_session"]) == 3


def test_updated_task_eval_validates_sessions(clip, data):
    model, tok = clip
    with pytest.raises(ValueError):
        updated_task_eval(model, tok, data["update"], UT_CLASSES, [[0, 1], [1, 2]], 1, disable_tqdm=True)
    with pytest.raises(ValueError):
        updated_task_eval(model, tok, data["update"], UT_CLASSES, UT_SESSIONS, 4, disable_tqdm=True)


def test_evaluator_schema_json_and_summary(clip, data):
    model, tok = clip
    results = build_evaluator(tok, data).evaluate(model, seen=2)
    assert set(results) == {"seen", "ut", "zero_shot", "retrieval", "seconds"}
    assert set(results["ut"]) == {"acc", "top5", "per_session", "per_session_task", "num_classes_seen", "num_images",
                                  "balanced_acc", "balanced_per_session"}
    assert set(results["zero_shot"]["zs"]) == {"top1", "top5", "num_images"}
    assert set(results["retrieval"]["ret"]) == {"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "num_images",
                                                "num_captions"}
    assert json.loads(json.dumps(results)) == results
    row = Evaluator.summary_row(results)
    ret = results["retrieval"]
    assert row["ut_acc"] == results["ut"]["acc"] and row["zs_acc"] == results["zero_shot"]["zs"]["top1"]
    assert row["tr@1"] == pytest.approx((ret["ret"]["tr@1"] + ret["one"]["tr@1"]) / 2)
    assert row["ir@1/one"] == 100.0 and row["tr@1/one"] == 100.0  # one image: nothing to confuse it with
    assert {"seen", "ut_acc", "zs_acc", "tr@1", "ir@1", "zs_acc/zs", "tr@1/ret", "ir@1/ret"} <= set(row)
    empty = Evaluator.summary_row(Evaluator(tok).evaluate(model, seen=0))
    assert empty["ut_acc"] is None and empty["zs_acc"] is None and empty["tr@1"] is None


def test_model_modes_restored(clip, data):
    model, tok = clip
    model.train()
    model.text_model.eval()  # mixed modes must come back exactly, not as one global flag
    before = [m.training for m in model.modules()]
    try:
        build_evaluator(tok, data).evaluate(model, seen=1)
        assert [m.training for m in model.modules()] == before
    finally:
        model.eval()


def test_batch_size_does_not_change_results(clip, data):
    model, tok = clip
    a = build_evaluator(tok, data, batch_size=3).evaluate(model, seen=1)
    b = build_evaluator(tok, data, batch_size=64).evaluate(model, seen=1)
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    f2, _ = encode_image_dataset(model, data["update"], batch_size=2, disable_tqdm=True)
    f64, _ = encode_image_dataset(model, data["update"], batch_size=64, disable_tqdm=True)
    torch.testing.assert_close(f2, f64, atol=1e-5, rtol=0)


def test_hf_datasets_with_transform(clip, data):
    datasets = pytest.importorskip("datasets")
    model, tok = clip
    rows = [data["zs"][i] for i in range(len(data["zs"]))]
    ds = datasets.Dataset.from_dict({"pixel_values": [r["pixel_values"].numpy() for r in rows],
                                     "labels": [r["labels"] for r in rows]})
    ds.set_transform(lambda batch: {"pixel_values": [torch.tensor(p) for p in batch["pixel_values"]],
                                    "labels": batch["labels"]})
    got = zero_shot_eval(model, tok, ds, ZS_CLASSES, batch_size=3, disable_tqdm=True)
    assert got == zero_shot_eval(model, tok, data["zs"], ZS_CLASSES, disable_tqdm=True)


# ----------------------------------------------------------------------------- two processes (accelerate, CPU)

WORKER = """
import datetime, json, sys
from accelerate import PartialState

# gloo on CPU; must come before the library's own PartialState() calls. A short timeout so a failing peer
# cannot leave the other process waiting in a collective for the default 30 minutes.
state = PartialState(cpu=True, timeout=datetime.timedelta(seconds=90))
sys.path.insert(0, sys.argv[1])
from test_evaluator import build_datasets, build_evaluator
from clip_cl.evaluation import encode_image_dataset
from clip_cl.models import tiny_clip

assert state.num_processes == 2
model, processor = tiny_clip(seed=0)
data = build_datasets()
results = build_evaluator(processor.tokenizer, data, batch_size=2).evaluate(model, seen=1)
results.pop("seconds")
feats, extras = encode_image_dataset(model, data["update"], batch_size=2, disable_tqdm=True)
_, caps = encode_image_dataset(model, data["retrieval"], batch_size=2, disable_tqdm=True)
out = {"results": results, "feats": feats.tolist(), "labels": extras["labels"].tolist(), "captions": caps["captions"]}
with open(f"{sys.argv[2]}/rank{state.process_index}.json", "w") as f:
    json.dump(out, f)
state.destroy_process_group()
# Leave without interpreter teardown: gloo's threads can still call std::terminate there ("terminate called without an
# active exception", SIGABRT) after both ranks have written their results, which failed a full-suite run once.
sys.stdout.flush()
import os
os._exit(0)
"""


@pytest.mark.slow  # ~16 s on 2 idle cores (three interpreters import torch), up to ~45 s on a loaded machine
def test_two_processes_match_one(clip, data, tmp_path):
    model, tok = clip
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(Path(__file__).resolve().parent), str(tmp_path)]
    # Own process group, so that on a timeout the launcher and both workers are stopped together.
    proc = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail("two-process evaluation timed out:\n" + log[-3000:])
    assert proc.returncode == 0, log[-6000:]

    single = build_evaluator(tok, data, batch_size=2).evaluate(model, seen=1)
    single.pop("seconds")
    feats, extras = encode_image_dataset(model, data["update"], batch_size=2, disable_tqdm=True)
    for rank in (0, 1):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert out["results"] == single, rank
        torch.testing.assert_close(torch.tensor(out["feats"]), feats, atol=1e-5, rtol=0)
        assert out["labels"] == extras["labels"].tolist()
        assert out["captions"] == [data["retrieval"][i]["captions"] for i in range(5)]
