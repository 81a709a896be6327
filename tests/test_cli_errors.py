"""User errors of `clip-cl` and `recipes/*.py`: one `error: ...` line naming the problem and the fix, exit status 2,
no traceback (unless asked for); a failed Hub push keeps the finished run and says how to push it later."""

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import datasets
import pytest
from huggingface_hub import ModelCard

from clip_cl.cli import eval_main, main, push_main, train_main
from clip_cl.errors import ConfigError, DataError, ModelLoadError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
CONFIG = str(ROOT / "tests" / "tiny_quickstart.yaml")


def fails_with(capsys, entry, argv, *needles):
    """`entry(argv)` exits with status 2 after printing exactly one `error: ...` line naming every needle."""
    with pytest.raises(SystemExit) as info:
        entry(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    # Log lines and progress bars may come before it; the error itself is one line, the last, without a traceback.
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]) and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_args(out, *extra, update=None):
    update = update or {"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}
    return ["--config", CONFIG, "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "8",
            "--disable_tqdm", "true", "--max_eval_samples", "24", "--update_dataset", json.dumps(update),
            "--zero_shot_datasets", json.dumps([{"name": "cifar10", "path": str(DATA / "cifar10"), "split": "test"}]),
            "--retrieval_datasets", json.dumps([{"name": "coco", "path": str(DATA / "coco_captions"),
                                                 "split": "test"}]), *extra]


def test_unknown_command_and_missing_config(capsys, tmp_path):
    fails_with(capsys, main, ["trian"], "unknown command 'trian'", "Did you mean 'train'", "clip-cl --help")
    fails_with(capsys, train_main, ["--config", str(tmp_path / "nope.yaml")], "nope.yaml", "does not exist",
               "recipes/configs/")


def test_unknown_key_and_option(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: ft\nnum_sesions: 3\n")
    fails_with(capsys, train_main, ["--config", str(bad)], "num_sesions", "Did you mean 'num_sessions'", "--help")
    fails_with(capsys, train_main, ["--config", CONFIG, "--learnig_rate", "1"], "--learnig_rate",
               "learning_rate", "--help")
    fails_with(capsys, train_main, ["--config", CONFIG, "--method", "vr_lwff"], "Unknown method 'vr_lwff'",
               "Did you mean 'vr_lwf'")


def test_bad_values(capsys):
    fails_with(capsys, train_main, ["--config", CONFIG, "--learning_rate", "abc"], "--learning_rate",
               "invalid float value: 'abc'", "--help")
    fails_with(capsys, train_main, ["--config", CONFIG, "--method", "vr_lwf", "--vr_lambda", "-1"],
               "vr_lambda must be >= 0", "Fix the value in", "tiny_quickstart.yaml")


def test_bad_dataset_path_and_too_many_sessions(capsys, tmp_path):
    fails_with(capsys, train_main, run_args(tmp_path / "a", update={"path": "no/such/folder"}), "no/such/folder",
               "does not exist")
    fails_with(capsys, train_main, run_args(tmp_path / "b", "--protocol", "mst", "--num_sessions", "11"),
               "num_sessions=11 exceeds the 10 classes", "set num_sessions to at most 10")
    assert not (tmp_path / "b" / "session_1").exists()


def test_missing_model_path(capsys, tmp_path):
    fails_with(capsys, eval_main, run_args(tmp_path / "e", "--model_name_or_path", str(tmp_path / "no-model")),
               "no-model", "does not exist", "save_pretrained")


def test_corrupt_image_points_to_the_option(capsys, tmp_path):
    folder = tmp_path / "fm"
    folder.mkdir()
    for split in ("train", "test"):
        ds = datasets.load_dataset("parquet", data_files=str(DATA / "fashion_mnist" / f"{split}.parquet"),
                                   split="train").cast_column("image", datasets.Image(decode=False))
        broken = {"bytes": b"\x89PNG not really an image", "path": "row0.png"}
        ds = ds.map(lambda r, i: {"image": broken if i == 0 else r["image"]}, with_indices=True)
        ds.cast_column("image", datasets.Image()).to_parquet(str(folder / f"{split}.parquet"))
    argv = ["--config", CONFIG, "--output_dir", str(tmp_path / "ev"), "--disable_tqdm", "true",
            "--update_dataset", json.dumps({"name": "fm_broken", "path": str(folder)}),
            "--zero_shot_datasets", "[]", "--retrieval_datasets", "[]"]
    fails_with(capsys, eval_main, argv, "fm_broken", "row 0", "--skip_corrupt_images true")


def test_traceback_on_request(capsys, tmp_path, monkeypatch):
    argv = run_args(tmp_path / "a", "--model_name_or_path", str(tmp_path / "no-model"))
    with pytest.raises(ModelLoadError):
        eval_main([*argv, "--traceback"])
    monkeypatch.setenv("CLIP_CL_DEBUG", "1")
    with pytest.raises(ConfigError):
        train_main(["--config", CONFIG, "--learning_rate", "abc"])
    with pytest.raises(DataError, match="no/such/folder"):
        train_main(run_args(tmp_path / "b", update={"path": "no/such/folder"}))


def test_recipe_exit_status_and_one_line_in_a_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "--config", CONFIG, "--num_sessions",
                           "0"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "num_sessions=0" in proc.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run whose push at the end fails (offline): the run is kept, one line says how to push it."""
    out = tmp_path_factory.mktemp("push") / "run"
    api = mock.MagicMock()
    api.create_repo.side_effect = OSError("Cannot reach https://huggingface.co: offline mode is enabled.\nmore")
    with mock.patch("clip_cl.hub.HfApi", return_value=api), pytest.raises(SystemExit) as info:
        train_main(run_args(out, "--push_to_hub", "--hub_model_id", "me/clip-ft"))
    return out, info.value


def test_failed_push_keeps_the_run_and_says_how_to_push(finished_run):
    out, exit_ = finished_run
    assert exit_.code == 2
    line = str(exit_)
    assert line.startswith("error: ") and "\n" not in line
    assert f"saved in {out}" in line and f"clip-cl push {out} --hub_model_id me/clip-ft" in line and "offline" in line
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    assert (out / "model" / "model.safetensors").is_file()


def test_push_command_pushes_a_finished_run(finished_run, capsys, tmp_path):
    out, _ = finished_run
    (out / "model" / "README.md").write_text("stale card")
    api = mock.MagicMock()
    api.upload_folder.return_value = mock.Mock(commit_url="https://hf.co/me/clip-ft/commit/1")
    with mock.patch("clip_cl.hub.HfApi", return_value=api) as make_api:
        url = main(["push", str(out), "--hub_model_id", "me/clip-ft", "--private", "--hub_token", "hf_x"])
    assert url is None or url == "https://hf.co/me/clip-ft/commit/1"
    assert "Pushed to https://hf.co/me/clip-ft/commit/1" in capsys.readouterr().out
    make_api.assert_called_once_with(token="hf_x")
    assert api.create_repo.call_args.args[0] == "me/clip-ft" and api.create_repo.call_args.kwargs["private"] is True
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/clip-ft" and Path(kwargs["folder_path"]) == out / "model"
    card = ModelCard.load(out / "model" / "README.md")  # written again, and the Hub's parser reads it
    assert card.data.eval_results and "stale" not in card.text
    # the repository recorded in run.json is the default; an unfinished run is refused with a line
    api.reset_mock()
    with mock.patch("clip_cl.hub.HfApi", return_value=api):
        push_main([str(out)])
    assert api.create_repo.call_args.args[0] == "me/clip-ft"
    fails_with(capsys, push_main, [str(tmp_path)], "holds no results.json")
    api.create_repo.side_effect = RuntimeError("401 Unauthorized: invalid token")
    with mock.patch("clip_cl.hub.HfApi", return_value=api):
        fails_with(capsys, push_main, [str(out)], "Pushing it to the Hub repository 'me/clip-ft' failed",
                   "401 Unauthorized", "hf auth login", f"clip-cl push {out}")
