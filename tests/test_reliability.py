"""Faults that must not cost a user their results: NaN loss, disk full while saving, corrupt images."""

import errno
import json
from pathlib import Path
from unittest import mock

import datasets
import pytest

from clip_cl.cli import train_main
from clip_cl.methods.base.trainer import CLIPCLTrainer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"


def args_for(out, update=None, *extra):
    update = update or {"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}
    return ["--config", str(ROOT / "tests/tiny_quickstart.yaml"), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--max_eval_samples", "30",
            "--protocol", "mst", "--num_sessions", "2", "--update_dataset", json.dumps(update),
            "--zero_shot_datasets", "[]", "--retrieval_datasets", "[]", *extra]


def session_one_is_intact(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "running" and [s["session"] for s in results["sessions"]] == [1]
    from clip_cl.models import load_clip

    load_clip(out / "session_1" / "model")  # still a loadable checkpoint
    return results


def test_nan_loss_stops_and_keeps_what_was_written(tmp_path):
    out = tmp_path / "run"
    original = CLIPCLTrainer.classification_loss

    def nan_in_session_two(self, logits, targets):
        loss = original(self, logits, targets)
        return loss * float("nan") if self.args.seed == 1 else loss  # session t runs with seed + t

    with mock.patch.object(CLIPCLTrainer, "classification_loss", nan_in_session_two):
        with pytest.raises(SystemExit, match="Non-finite loss at step 0.*checkpoint and results are intact"):
            train_main(args_for(out))
    session_one_is_intact(out)
    assert not (out / "session_2" / "model").exists()


def test_disk_full_while_saving_keeps_previous_checkpoint_and_results(tmp_path):
    out = tmp_path / "run"
    from transformers import CLIPModel

    real_save = CLIPModel.save_pretrained
    def failing_save(self, path, *a, **kw):
        if "session_2" in str(path) and "trainer" not in str(path):  # session 2's model: half written, disk full
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, path, *a, **kw)

    with mock.patch.object(CLIPModel, "save_pretrained", failing_save):
        with pytest.raises(OSError, match="No space left"):
            train_main(args_for(out))
    before = session_one_is_intact(out)
    assert not (out / "session_2" / "model").exists()  # the half-written folder was a temporary one, removed
    assert not [p for p in (out / "session_2").iterdir() if p.name.endswith(".tmp")]
    # With space again, the same command finishes the run.
    resumed = train_main(args_for(out))
    assert resumed["status"] == "complete" and resumed["sessions"][0] == before["sessions"][0]


def corrupt_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "fm"
    folder.mkdir()
    for split in ("train", "test"):
        ds = datasets.load_dataset("parquet", data_files=str(DATA / "fashion_mnist" / f"{split}.parquet"),
                                   split="train")
        if split == "train":
            rows = ds.cast_column("image", datasets.Image(decode=False))
            broken = rows[3]["image"]
            broken = {"bytes": b"\x89PNG not really an image", "path": broken.get("path") or "row3.png"}
            rows = rows.map(lambda r, i: {"image": broken if i == 3 else r["image"]}, with_indices=True)
            ds = rows.cast_column("image", datasets.Image())
        ds.to_parquet(str(folder / f"{split}.parquet"))
    return folder


def test_corrupt_image_error_names_dataset_and_row_or_is_skipped_and_counted(tmp_path):
    folder = corrupt_copy(tmp_path)
    update = {"name": "fm_broken", "path": str(folder)}
    with pytest.raises(SystemExit, match=r"(?s)(fm_broken.*row 3|row 3.*fm_broken).*--skip_corrupt_images"):
        train_main(args_for(tmp_path / "a", update, "--protocol", "ost", "--num_sessions", "1", "--max_steps", "100",
                            "--num_train_epochs", "1"))
    results = train_main(args_for(tmp_path / "b", update, "--skip_corrupt_images", "true"))
    assert results["status"] == "complete"
    assert sum(results["skipped_images"].values()) >= 1 and results["skipped_images"]["fm_broken/train"] == 1


def test_clip_cl_console_help(capsys):
    from clip_cl.cli import main

    main(["--help"])
    text = capsys.readouterr().out
    for command in ("train", "eval", "methods", "report", "sweep"):
        assert command in text
    with pytest.raises(SystemExit, match="Did you mean 'train'"):
        main(["trian"])


def test_eval_command_writes_results(tmp_path):
    from clip_cl.cli import eval_main

    out = tmp_path / "ev"
    res = eval_main(["--config", str(ROOT / "tests/tiny_quickstart.yaml"), "--output_dir", str(out),
                     "--max_eval_samples", "20", "--disable_tqdm", "true",
                     "--update_dataset", json.dumps({"name": "fm", "path": str(DATA / "fashion_mnist")}),
                     "--zero_shot_datasets", "[]", "--retrieval_datasets", "[]"])
    assert json.loads((out / "eval_results.json").read_text())["eval"]["ut"]["num_images"] == res["eval"]["ut"]["num_images"]


def test_checkpoint_with_a_state_cut_short_is_not_resumed_from(tmp_path):
    """SIGKILL while the Trainer writes `trainer_state.json` leaves the file empty or cut short: resuming must go back
    to the previous complete checkpoint instead of failing on the JSON."""
    from clip_cl.runner import last_complete_checkpoint

    for step, state in [(4, '{"global_step": 4, "log_history": []}'), (8, ""), (12, '{"global_step": 1'),
                        (16, None)]:
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        if state is not None:
            (ckpt / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("[]")
    assert last_complete_checkpoint(tmp_path) is None
