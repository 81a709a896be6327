"""Kill a real run with SIGKILL in the middle of a session, run the same command again, and get the results of an
uninterrupted run (CPU, fixed seed)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def run(cmd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_sigkill_mid_session_then_resume_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    proc = run(command(reference))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-4000:]

    out = tmp_path / "killed"
    proc = run(command(out))
    # Wait for a finished Trainer checkpoint inside session 2 (session 1 done, session 2 under way), then kill -9.
    deadline = time.time() + 600
    ckpt_dir = out / "session_2" / "trainer"
    while time.time() < deadline and proc.poll() is None:
        if any((p / "trainer_state.json").exists() for p in ckpt_dir.glob("checkpoint-*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = json.loads((out / "results.json").read_text())
    assert partial["status"] == "running" and len(partial["sessions"]) == 1

    proc = run(command(out))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-4000:]
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["status"] == "complete"
    assert comparable(resumed) == comparable(json.loads((reference / "results.json").read_text()))
