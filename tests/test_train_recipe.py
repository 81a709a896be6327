"""End-to-end runs of recipes/train.py on the tiny model and the quickstart sample (a few steps each)."""

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from safetensors.torch import load_file

from clip_cl.cli import train_main
from clip_cl.runner import RunFolderError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "tests" / "tiny_quickstart.yaml")
DATA = ROOT / "examples" / "data"


def args_for(out, *extra):
    return ["--config", QUICKSTART, "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "8",
            "--disable_tqdm", "true", "--max_eval_samples", "40",
            "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
            "--zero_shot_datasets", json.dumps([{"name": "cifar10", "path": str(DATA / "cifar10"), "split": "test"}]),
            "--retrieval_datasets", json.dumps([{"name": "coco", "path": str(DATA / "coco_captions"),
                                                 "split": "test"}]), *extra]


def test_ost_run_writes_results_checkpoint_and_card(tmp_path):
    out = tmp_path / "run"
    results = train_main(args_for(out))
    assert results["status"] == "complete"
    saved = json.loads((out / "results.json").read_text())
    assert saved["before"]["ut"]["num_images"] == 40 and len(saved["before"]["ut"]["per_session"]) == 1
    after = saved["sessions"][0]["eval"]
    assert set(after) >= {"ut", "zero_shot", "retrieval"}
    assert set(after["retrieval"]["coco"]) >= {"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10"}
    assert saved["splits"]["class_order"] and saved["sessions"][0]["train_steps"] == 3
    table = (out / "results.md").read_text()
    assert "| before |" in table and "| after session 1 |" in table and "UT-Acc" in table and "IR@1" in table
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert "text_model.embeddings.token_embedding.weight" in weights
    card = (out / "model" / "README.md").read_text()
    assert "library_name: transformers" in card and "| after session 1 |" in card
    assert not list((out / "session_1" / "trainer").glob("checkpoint-*"))  # Trainer checkpoints are dropped once a session ends


def test_rerun_resumes_and_a_different_run_is_refused(tmp_path):
    out = tmp_path / "run"
    first = train_main(args_for(out))
    stamp = (out / "session_1" / "model" / "model.safetensors").stat().st_mtime_ns
    again = train_main(args_for(out))  # nothing left to do: same results, checkpoint untouched
    assert again["sessions"] == first["sessions"]
    assert (out / "session_1" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="holds a different run.*learning_rate"):  # no traceback, a message
        train_main(args_for(out, "--learning_rate", "0.5"))
    from clip_cl.runner import run_protocol
    from clip_cl.cli import parse_config

    with pytest.raises(RunFolderError):  # the library call raises the typed error
        run_protocol(parse_config(args_for(out, "--learning_rate", "0.5")))
    fresh = train_main(args_for(out, "--learning_rate", "0.5", "--overwrite_run"))
    assert fresh["config"]["learning_rate"] == 0.5


def test_same_seed_same_results(tmp_path):
    a = train_main(args_for(tmp_path / "a", "--protocol", "mst", "--num_sessions", "2"))
    b = train_main(args_for(tmp_path / "b", "--protocol", "mst", "--num_sessions", "2"))
    strip = lambda r: [{k: v for k, v in s.items() if k != "seconds"} | {"eval": {k: v for k, v in s["eval"].items()
                       if k != "seconds"}} for s in r["sessions"]]
    assert strip(a) == strip(b)
    assert len(a["acc_matrix"]) == 2 and set(a["continual"]) >= {"avg", "last", "bwt", "transfer"}


def test_push_to_hub_with_mocked_api(tmp_path):
    out = tmp_path / "run"
    api = mock.MagicMock()
    api.upload_folder.return_value = mock.Mock(commit_url="https://hf.co/me/x/commit/1")
    with mock.patch("clip_cl.hub.HfApi", return_value=api):
        train_main(args_for(out, "--push_to_hub", "--hub_model_id", "me/clip-ft"))
    api.create_repo.assert_called_once()
    assert api.create_repo.call_args.args[0] == "me/clip-ft"
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/clip-ft" and Path(kwargs["folder_path"]) == out / "model"
    assert {"README.md", "model.safetensors", "config.json"} <= {p.name for p in (out / "model").iterdir()}


@pytest.mark.parametrize("override, message", [
    (["--update_dataset", '{"path": "no/such/folder"}'], "no/such/folder"),
    (["--update_dataset", json.dumps({"path": str(DATA / "fashion_mnist"), "class_names": []})], "class"),
    (["--protocol", "mst", "--num_sessions", "11"], "sessions"),
])
def test_bad_input_fails_before_training(tmp_path, override, message):
    with pytest.raises(SystemExit, match=message):  # one `error:` line, exit status 2 (tests/test_cli_errors.py)
        train_main(args_for(tmp_path / "run", *override))
    assert not (tmp_path / "run" / "session_1").exists()


def test_cli_help_and_unknown_key(tmp_path):
    help_text = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "--variant" in help_text and "--protocol" in help_text and "(default:" in help_text
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: ft\nnum_sesions: 3\n")
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "--config", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Did you mean 'num_sessions'" in proc.stderr
