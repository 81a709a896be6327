"""Small helpers shared by the trainer tests (imported as `from helpers import ...`)."""

import torch


def collate(rows):
    """Stack `{"pixel_values", "labels"}` rows into a batch."""
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows])}


def snapshot(model):
    """A detached copy of every parameter, by name."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def trainer_args(config_cls, tmp_path, **overrides):
    """A method config for a few quiet CPU steps in `tmp_path` (keyword arguments override the defaults)."""
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, logging_steps=1)
    base.update(overrides)
    return config_cls(**base)
