"""The `clip-cl` command line: `clip-cl train`, `clip-cl eval`, `clip-cl report`, `clip-cl methods`.

Configs are YAML files whose keys are the fields of the method's config class (`method:` picks it); any field can be
overridden on the command line (`--learning_rate 1e-5`), as with trl's scripts.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["parse_config", "main", "train_main"]

logger = logging.getLogger("clip_cl")


class ConfigError(ValueError):
    """A configuration problem the user must fix (unknown key, bad file)."""


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist; pass --config path/to/config.yaml "
                          "(examples in recipes/configs/).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys to values, got {type(data).__name__}.")
    return data


def _split_config_arg(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """Take `--config` and `--method` out of argv (they decide which parser to build)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--method", default=None)
    known, rest = pre.parse_known_args(argv)
    return known.config, known.method, rest


def parse_config(argv: Sequence[str] | None = None, *, prog: str = "clip-cl train"):
    """Parse `--config file.yaml` plus command-line overrides into the method's config dataclass.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments (defaults to `sys.argv[1:]`).
        prog (`str`): program name shown in `--help`.

    Returns:
        the method's config (a [`CLIPCLConfig`] subclass) with every field set.
    """
    from dataclasses import fields

    from transformers import HfArgumentParser

    from .methods import get_method, list_methods

    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, method_cli, rest = _split_config_arg(argv)
    data = load_yaml_config(config_path) if config_path else {}
    method = method_cli or data.pop("method", None) or "ft"
    data.pop("method", None)
    spec = get_method(method)
    config_cls = spec.config_cls
    valid = [f.name for f in fields(config_cls) if f.init]
    unknown = [k for k in data if k not in valid]
    if unknown:
        msgs = [f"{k!r}{_suggest(k, valid)}" for k in unknown]
        raise ConfigError(f"Unknown key(s) in {config_path} for method {spec.name!r}: {'; '.join(msgs)}. "
                          f"Run `{prog} --method {spec.name} --help` to list every option.")

    parser = HfArgumentParser(config_cls, prog=prog, description=(
        f"Run method '{spec.name}' ({spec.description}) over an OST/MST protocol. Options come from a YAML file "
        "(--config) and can be overridden here. Methods: " + ", ".join(list_methods())))
    parser.add_argument("--config", default=None, help="YAML config file; command-line options override its keys.")
    parser.add_argument("--method", default=spec.name, help="Method name (overrides the YAML's `method:`).")
    # YAML values become the parser's defaults, so explicit CLI flags win.
    parser.set_defaults(**data)
    for action in parser._actions:  # a YAML value satisfies a required option
        if action.dest in data:
            action.required = False
    args, remaining = parser.parse_known_args(rest)
    if remaining:
        flags = [r for r in remaining if r.startswith("--")]
        hints = "; ".join(f"{f}{_suggest(f[2:].replace('-', '_'), valid)}" for f in flags) or " ".join(remaining)
        raise ConfigError(f"Unknown option(s): {hints}. Run `{prog} --method {spec.name} --help` for the list.")
    values = {k: v for k, v in vars(args).items() if k in valid}
    return config_cls(**values)


def train_main(argv: Sequence[str] | None = None) -> dict:
    """Entry point of `recipes/train.py` and `clip-cl train`."""
    from .rehearsal import RehearsalError
    from .runner import RunFolderError, UnsupportedSetupError, run_protocol

    _setup_logging()
    try:
        config = parse_config(argv)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    try:
        results = run_protocol(config)
    except (RunFolderError, UnsupportedSetupError, FloatingPointError, RehearsalError) as err:
        # Expected failures with a message that says what to do: no traceback. Results written so far are intact.
        raise SystemExit(f"error: {err}") from None
    from accelerate import PartialState

    if PartialState().is_main_process:
        out = Path(config.output_dir)
        print((out / "results.md").read_text(encoding="utf-8"))
        if config.push_to_hub:
            from .hub import push_run_to_hub

            repo = config.hub_model_id or Path(config.output_dir).name
            url = push_run_to_hub(out, repo, private=config.hub_private_repo, token=config.hub_token,
                                  revision=config.hub_revision)
            print(f"Pushed to {url}")
    return results


def _setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        datefmt="%H:%M:%S")


def eval_main(argv: Sequence[str] | None = None) -> dict:
    """`clip-cl eval`: evaluate a model on a config's datasets (UT-Acc over all sessions, zero-shot, retrieval), with
    no training. Writes `<output_dir>/eval_results.json` and prints a table."""
    import json

    from accelerate import PartialState

    from .io import atomic_write_json
    from .models import load_model
    from .runner import build_evaluator, build_protocol

    _setup_logging()
    try:
        config = parse_config(argv, prog="clip-cl eval")
    except (ConfigError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    model, processor = load_model(config.model_name_or_path, local_files_only=config.local_files_only)
    model.to(PartialState().device)
    protocol = build_protocol(config)
    skipped: dict[str, int] = {}
    evaluator = build_evaluator(protocol, processor, config, skipped)
    results = {"model": config.model_name_or_path, "eval": evaluator.evaluate(model, seen=config.num_sessions),
               "splits": protocol.describe()}
    if config.skip_corrupt_images:
        results["skipped_images"] = skipped
    if PartialState().is_main_process:
        out = Path(config.output_dir) / "eval_results.json"
        atomic_write_json(out, results)
        row = evaluator.summary_row(results["eval"])
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, indent=2))
        print(f"Written to {out}")
    return results


def methods_main(argv: Sequence[str] | None = None) -> None:
    """`clip-cl methods`: list the registered methods."""
    from .methods import list_methods

    if argv and argv[0] in ("-h", "--help"):
        print("usage: clip-cl methods\n\nList every registered method with its config and trainer classes.")
        return
    for name, spec in list_methods().items():
        trainer = spec.trainer_cls.__name__ if spec.trainer_cls else "(evaluation only)"
        print(f"{name:10s} {spec.config_cls.__name__:16s} {trainer:24s} {spec.description}")


# name -> (module, function, help); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("clip_cl.cli", "train_main", "run a method over an OST/MST protocol from a YAML config"),
    "eval": ("clip_cl.cli", "eval_main", "evaluate a model on a config's datasets, without training"),
    "methods": ("clip_cl.cli", "methods_main", "list the registered methods"),
    "pretrain": ("clip_cl.pretrain", "main", "pretrain a small CLIP from scratch on image-text data"),
    "sweep": ("clip_cl.sweep", "sweep_main", "run methods x variants x protocols x seeds from a sweep YAML (resumable)"),
    "report": ("clip_cl.report", "report_main", "paper-style tables and Fig. 4 / Fig. 5 from a folder of runs"),
}


def main(argv: Sequence[str] | None = None) -> None:
    """`clip-cl <command> ...`"""
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(map(len, COMMANDS))
    usage = "usage: clip-cl <command> [options]\n\ncommands:\n" + "\n".join(
        f"  {name.ljust(width)}  {entry[2]}" for name, entry in COMMANDS.items())
    usage += "\n\nRun `clip-cl <command> --help` for a command's options."
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    if argv[0] not in COMMANDS:
        raise SystemExit(f"error: unknown command {argv[0]!r}.{_suggest(argv[0], list(COMMANDS))}\n\n{usage}")
    module, func, _ = COMMANDS[argv[0]]
    getattr(importlib.import_module(module), func)(argv[1:])


if __name__ == "__main__":
    main()
