"""Sharded launches clip-cl cannot run correctly are refused at start with one `error:` line saying why and what to
launch instead, before anything is written (the reasons were measured; docs/reliability.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clip_cl.cli import train_main
from clip_cl.methods import get_method
from clip_cl.runner import UnsupportedSetupError, check_launch_setup

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"


def tiny_args(out, *extra):
    return ["--config", str(ROOT / "tests" / "tiny_quickstart.yaml"), "--output_dir", str(out), "--max_steps", "1",
            "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
            "--zero_shot_datasets", "[]", "--retrieval_datasets", "[]", *extra]


def test_fsdp_refused_at_start_with_one_line_and_nothing_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config exports
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train_main(tiny_args(out))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: FSDP cannot shard a CLIP model") and err.count("\n") == 1, err
    assert "Launch with" in err and not out.exists()


def test_deepspeed_on_cpu_is_refused(monkeypatch):
    # Set after the config is built: without deepspeed installed, transformers' TrainingArguments itself rejects a
    # DeepSpeed launch first.
    config = get_method("ft").config_cls(output_dir="unused", report_to="none", use_cpu=True)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    with pytest.raises(UnsupportedSetupError, match="DeepSpeed needs GPUs here: .* hung. Launch with .*cpu_2proc"):
        check_launch_setup(config)


def test_zero3_is_refused_for_methods_that_merge_weights_only(monkeypatch):
    methods = ("imm", "wise_ft", "zscl", "rkr", "lora", "ft", "lwf", "vr_lwf")
    configs = {m: get_method(m).config_cls(output_dir="unused", report_to="none") for m in methods}
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # the check for GPU launches
    for method in ("imm", "wise_ft", "zscl", "rkr", "lora"):
        with pytest.raises(UnsupportedSetupError, match="ZeRO-3 partitions every parameter"):
            check_launch_setup(configs[method])
    for method in ("ft", "lwf", "vr_lwf"):
        check_launch_setup(configs[method])  # no end-of-session merge: allowed
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    check_launch_setup(configs["imm"])  # ZeRO-2 keeps whole parameters


@pytest.mark.slow
def test_fsdp2_config_launched_with_two_cpu_processes_is_refused(tmp_path):
    """The real launcher path: `accelerate launch --config_file recipes/accelerate/fsdp2.yaml` with 2 CPU processes
    (which accelerate would otherwise run as plain DDP) stops with the error line and writes nothing."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / "fsdp2.yaml"), "--num_processes", "2", "--mixed_precision", "no",
           str(ROOT / "recipes" / "train.py"), *tiny_args(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
    assert proc.returncode != 0
    assert "error: FSDP cannot shard a CLIP model" in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()
