"""Two-process DDP on CPU through `accelerate launch` (torchrun + gloo): training syncs, evaluation matches one process.

On a CPU-only machine `accelerate launch --cpu` starts a single process; `--multi_gpu --num_processes 2` with the
config's `use_cpu: true` runs two gloo processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"

pytestmark = pytest.mark.slow


def launch(*args, timeout=400):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_ddp_gradients_are_synchronised(tmp_path):
    out = launch(ROOT / "tests" / "distributed" / "ddp_sync.py", tmp_path / "sync", "lwf")
    assert "DDP_OK" in out


def test_ddp_recipe_trains_and_evaluates_like_one_process(tmp_path):
    run = tmp_path / "ddp"
    common = ["--config", ROOT / "tests" / "tiny_quickstart.yaml", "--max_steps", "3",
              "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--max_eval_samples", "40",
              "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
              "--zero_shot_datasets", json.dumps([{"name": "cifar10", "path": str(DATA / "cifar10"), "split": "test"}]),
              "--retrieval_datasets", json.dumps([{"name": "coco", "path": str(DATA / "coco_captions"),
                                                   "split": "test"}])]
    launch(ROOT / "recipes" / "train.py", *common, "--output_dir", run)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "complete" and results["sessions"][0]["train_steps"] == 3

    # The same checkpoint evaluated in one process gives the numbers the two processes computed together.
    from clip_cl.cli import parse_config
    from clip_cl.models import load_clip
    from clip_cl.runner import build_evaluator, build_protocol

    config = parse_config([*map(str, common), "--output_dir", str(tmp_path / "unused")])
    model, processor = load_clip(run / "model")
    evaluator = build_evaluator(build_protocol(config), processor, config)
    single = evaluator.evaluate(model, seen=1)
    two = results["sessions"][0]["eval"]
    assert_metrics_close(single["ut"], two["ut"])
    for kind in ("zero_shot", "retrieval"):
        for name, metrics in two[kind].items():
            assert_metrics_close(single[kind][name], metrics)


def assert_metrics_close(got: dict, expected: dict, tol: float = 1e-4) -> None:
    """Same keys, every number (also inside lists, e.g. per-session accuracies) within `tol`: pytest >= 9.2's approx
    does not compare nested containers."""
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=tol), key
