"""Every registered method runs two MST sessions through recipes/train.py's entry point on the tiny model, with
gradient accumulation 2, and leaves a plain CLIPModel checkpoint."""

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from clip_cl.cli import train_main
from clip_cl.methods import list_methods
from clip_cl.models import tiny_clip

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
PLAIN_KEYS = set(tiny_clip()[0].state_dict())


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_method_runs_two_sessions_with_grad_accumulation(tmp_path, method):
    out = tmp_path / method
    extra = []
    if method == "zscl":  # a reference image set: the CIFAR-10 sample
        extra = ["--zscl_reference_dataset", json.dumps({"path": str(DATA / "cifar10"), "split": "test",
                                                         "max_samples": 16})]
    results = train_main([
        "--config", str(ROOT / "tests/tiny_quickstart.yaml"), "--method", method, "--output_dir", str(out),
        "--protocol", "mst", "--num_sessions", "2", "--max_steps", "2", "--gradient_accumulation_steps", "2",
        "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--max_eval_samples", "20",
        "--eval_before_training", "false", "--learning_rate", "1e-4",
        "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
        "--zero_shot_datasets", json.dumps([{"name": "cifar10", "path": str(DATA / "cifar10"), "split": "test"}]),
        "--retrieval_datasets", "[]", *extra])
    assert results["status"] == "complete" and len(results["sessions"]) == 2
    if list_methods()[method].trainer_cls is None:  # Original CLIP: evaluation only
        assert not (out / "model").exists()
        return
    for session in results["sessions"]:
        assert session["train_steps"] == 2 and math.isfinite(session["train_loss"])
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert set(weights) == PLAIN_KEYS  # adapters merged, nothing extra saved
