"""`--report_to`: the Trainer's logs, including the loss terms `CLIPCLTrainer.log` adds, reach TensorBoard under
`<run>/session_<t>/trainer/runs/`; a missing wandb breaks nothing unless it is asked for."""

import importlib.util
import json
from pathlib import Path

import pytest

from clip_cl.cli import train_main

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"


def test_tensorboard_events_hold_the_loss_terms(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_main(["--config", str(ROOT / "tests" / "tiny_quickstart.yaml"), "--method", "lwf",
                "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "8",
                "--logging_steps", "1", "--report_to", "tensorboard", "--disable_tqdm", "true",
                "--eval_before_training", "false", "--max_eval_samples", "20",
                "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
                "--zero_shot_datasets", "[]", "--retrieval_datasets", "[]"])
    events = list((out / "session_1" / "trainer" / "runs").glob("*/events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_ce", "train/loss_lwf", "train/train_acc", "train/learning_rate"} <= tags
    assert [e.step for e in acc.Scalars("train/loss_lwf")] == [1, 2]  # logging_steps 1, two steps


def test_wandb_absent_breaks_nothing(tmp_path, tiny, random_images):
    from transformers.integrations import get_available_reporting_integrations

    from clip_cl import CLIPCLConfig, CLIPFineTuneTrainer

    kw = dict(output_dir=str(tmp_path / "out"), use_cpu=True, disable_tqdm=True, save_strategy="no")
    # "all" means every installed integration: wandb only when it is installed
    assert CLIPCLConfig(report_to="all", **kw).report_to == get_available_reporting_integrations()
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed: the missing-wandb error cannot be checked here")
    assert "wandb" not in get_available_reporting_integrations()
    model, processor = tiny
    # asking for wandb explicitly without it installed is a clear error when the Trainer is built (before training)
    with pytest.raises(RuntimeError, match="wandb"):
        CLIPFineTuneTrainer(model=model, args=CLIPCLConfig(report_to="wandb", **kw),
                            train_dataset=random_images(4, [0, 1]), processing_class=processor,
                            class_names=["a", "b"])
