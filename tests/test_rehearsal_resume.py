"""Kill a GEM run (replay set + herding memory) with SIGKILL in session 2, run the same command again, and get the
results.json and memory.json of an uninterrupted run: the memory is restored from the run folder and the replay
draws are keyed by step, so the resumed session draws what the uninterrupted one drew."""

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
            "--output_dir", str(out), "--method", "gem", "--protocol", "mst", "--num_sessions", "2",
            "--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "2",
            "--disable_tqdm", "true", "--max_eval_samples", "20", "--eval_before_training", "false",
            "--memory_size", "10", "--memory_selection", "herding", "--memory_batch_size", "8",
            "--replay_dataset", json.dumps({"path": str(DATA / "coco_captions"), "split": "test"}),
            "--replay_batch_size", "8",
            "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
            "--zero_shot_datasets", "[]", "--retrieval_datasets", "[]"]


def comparable(results):
    drop = lambda d: {k: v for k, v in d.items() if k != "seconds"}
    return {"sessions": [{**drop(s), "eval": drop(s["eval"])} for s in results["sessions"]],
            "continual": results["continual"], "memory": results["memory"]}


def test_sigkill_in_session_two_then_resume_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    proc = start_run(command(reference))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-4000:]

    out = tmp_path / "killed"
    proc = start_run(command(out))
    kill_after_first_checkpoint(proc, out / "session_2")
    partial = json.loads((out / "results.json").read_text())
    assert partial["status"] == "running" and len(partial["sessions"]) == 1
    assert json.loads((out / "memory.json").read_text())["sessions"][0]["session"] == 1

    proc = start_run(command(out))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-4000:]
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["status"] == "complete"
    assert comparable(resumed) == comparable(json.loads((reference / "results.json").read_text()))
    assert (out / "memory.json").read_text() == (reference / "memory.json").read_text()


def test_ddp_reference_gradients_are_all_reduced(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "tests" / "distributed" / "ddp_rehearsal.py"), str(tmp_path), "agem", "gem"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "DDP_REHEARSAL_OK method=agem" in proc.stdout and "DDP_REHEARSAL_OK method=gem" in proc.stdout
