import pytest

from clip_cl.cli import ConfigError, parse_config
from clip_cl.methods import get_method
from clip_cl.methods.base.config import CLIPCLConfig


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_yaml_and_cli_overrides(tmp_path):
    path = write(tmp_path, "method: ft\nlearning_rate: 0.001\nvariant: io\nprotocol: mst\nnum_sessions: 3\n"
                           "update_dataset: {path: some/dir}\nzero_shot_datasets:\n  - {name: z, path: p, split: test}\n"
                           f"output_dir: {tmp_path}/run\n")
    cfg = parse_config(["--config", path, "--learning_rate", "0.01", "--train_templates", "a {}", "b {}"])
    assert cfg.learning_rate == 0.01 and cfg.variant == "IO" and cfg.num_sessions == 3
    assert cfg.num_train_epochs == 10  # paper default per MST session
    assert cfg.update_dataset == {"path": "some/dir"}
    assert cfg.zero_shot_datasets == [{"name": "z", "path": "p", "split": "test"}]
    assert cfg.train_templates == ["a {}", "b {}"]


def test_paper_defaults():
    cfg = CLIPCLConfig(output_dir="x")
    assert (cfg.learning_rate, cfg.per_device_train_batch_size, cfg.num_train_epochs, cfg.max_grad_norm) == (
        1e-6, 100, 15, 1.0)
    assert cfg.step_lr_epochs == 10 and cfg.step_lr_gamma == 0.1 and cfg.weight_decay == 0.0
    assert cfg.train_templates == ["this is a photo of {} in the scene ."]
    assert cfg.zero_shot_templates == ["this is a photo of {} ."]


def test_unknown_yaml_key_suggests(tmp_path):
    path = write(tmp_path, "method: ft\nlearning_rte: 0.1\n")
    with pytest.raises(ConfigError, match="'learning_rte' Did you mean 'learning_rate'"):
        parse_config(["--config", path])


def test_unknown_cli_flag_suggests(tmp_path):
    with pytest.raises(ConfigError, match="--varaint Did you mean 'variant'"):
        parse_config(["--varaint", "IO"])


def test_unknown_method_and_variant():
    with pytest.raises(ValueError, match="Did you mean 'ft'"):
        get_method("fft")
    with pytest.raises(ValueError, match="valid variants are WM, IO, TO"):
        CLIPCLConfig(output_dir="x", variant="IT")


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(["--config", "nope.yaml"])


@pytest.mark.parametrize("kw, match", [
    ({"protocol": "ost", "num_sessions": 3}, "exactly one session"),
    ({"protocol": "mst", "num_sessions": 1}, "num_sessions >= 2"),
    ({"protocol": "xst"}, "Unknown protocol"),
    ({"train_templates": ["no placeholder"]}, "exactly one"),
    ({"train_templates": []}, "empty"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        CLIPCLConfig(output_dir="x", **kw)


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = capsys.readouterr().out
    for option in ("--variant", "--protocol", "--update_dataset", "--learning_rate", "--train_templates"):
        assert option in text


def test_shipped_configs_parse_and_point_at_existing_files():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in ["recipes/configs/quickstart.yaml", *map(str, (root / "recipes/configs/paper").glob("*.yaml"))]:
        cfg = parse_config(["--config", str(root / path), "--use_cpu", "true"])  # the paper's configs ask for bf16
        assert cfg.update_dataset, path
    quick = parse_config(["--config", str(root / "recipes/configs/quickstart.yaml")])
    for spec in [quick.update_dataset, *quick.zero_shot_datasets, *quick.retrieval_datasets]:
        assert (root / spec["path"]).is_dir(), spec
    assert (root / quick.model_name_or_path / "model.safetensors").is_file()


def test_loader_defaults_follow_the_worker_count():
    none = CLIPCLConfig(output_dir="x")
    assert none.dataloader_num_workers == 0 and none.dataloader_persistent_workers is False
    assert none.dataloader_prefetch_factor is None  # torch refuses a prefetch factor without workers
    two = CLIPCLConfig(output_dir="x", dataloader_num_workers=2)
    assert two.dataloader_persistent_workers is True and two.dataloader_prefetch_factor == 4
    chosen = CLIPCLConfig(output_dir="x", dataloader_num_workers=2, dataloader_persistent_workers=False,
                          dataloader_prefetch_factor=2)
    assert chosen.dataloader_persistent_workers is False and chosen.dataloader_prefetch_factor == 2
    with pytest.raises(ValueError, match="dataloader_num_workers > 0"):
        CLIPCLConfig(output_dir="x", dataloader_persistent_workers=True)
    cli = parse_config(["--method", "ft", "--output_dir", "x", "--dataloader_num_workers", "1",
                        "--dataloader_persistent_workers", "false"])
    assert cli.dataloader_persistent_workers is False and cli.dataloader_prefetch_factor == 4
