"""Small helpers shared by the trainer tests (imported as `from helpers import ...`)."""

import os
import signal
import subprocess
import time

import torch


def collate(rows):
    """Stack `{"pixel_values", "labels"}` rows into a batch."""
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows])}


def ranks_hold_equal_weights(model) -> bool:
    """Under a launched process group: whether every rank holds exactly rank 0's parameters (all-gathered)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def snapshot(model):
    """A detached copy of every parameter, by name."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def trainer_args(config_cls, tmp_path, **overrides):
    """A method config for a few quiet CPU steps in `tmp_path` (keyword arguments override the defaults)."""
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, logging_steps=1)
    base.update(overrides)
    return config_cls(**base)


def start_run(cmd, **kw):
    """Start a `recipes/train.py` command offline, stdout discarded, stderr kept for the failure message."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, **kw)


def kill_after_first_checkpoint(proc, session_dir, timeout: float = 600):
    """SIGKILL a running `recipes/train.py` process once a finished Trainer checkpoint exists in `session_dir`
    (its `trainer_state.json` is written last), i.e. in the middle of that session."""
    deadline = time.time() + timeout
    ckpt_dir = session_dir / "trainer"
    while time.time() < deadline and proc.poll() is None:
        if any((p / "trainer_state.json").exists() for p in ckpt_dir.glob("checkpoint-*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
