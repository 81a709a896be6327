"""The `clip-cl` command line: `clip-cl train`, `clip-cl eval`, `clip-cl push`, `clip-cl report`, `clip-cl methods`.

Configs are YAML files whose keys are the fields of the method's config class (`method:` picks it); any field can be
overridden on the command line (`--learning_rate 1e-5`), as with trl's scripts.

Every entry point (these commands and `recipes/*.py`) goes through [`command`]: a problem the user can fix (see
`clip_cl.errors`) ends in one `error: ...` line on stderr and exit status 2, without a traceback; `--traceback` (or
a bare `--debug`) or `CLIP_CL_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, HubPushError, UserError

__all__ = ["parse_config", "main", "train_main", "eval_main", "push_main", "command", "ConfigError", "DEBUG_ENV"]

logger = logging.getLogger("clip_cl")

# Set to 1 (or pass --traceback) to see the traceback of a user error instead of its one line.
DEBUG_ENV = "CLIP_CL_DEBUG"


class ErrorExit(SystemExit):
    """Exit status 2 after the `error: ...` line was printed; `str()` is that line (what tests match)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _one_line(message: str) -> str:
    """A message on one line. Errors re-raised from DataLoader workers carry the worker's traceback: keep the
    original message (the last line, after the exception's type)."""
    text = str(message).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _user_message(err: BaseException) -> str | None:
    """The message to print for a user error, or None for anything else (a bug keeps its traceback)."""
    from .data import CorruptImageError

    chain, cause = [], err
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__
    corrupt = next((e for e in chain if isinstance(e, CorruptImageError)), None)
    if corrupt is not None:
        # The library's message points to a Python function; on the command line the fix is an option.
        text = _one_line(str(corrupt)).split(" Fix:", 1)[0]
        return (f"{text} Fix: replace or delete that image in the source data, or pass --skip_corrupt_images true "
                "(skip_corrupt_images: true in the YAML) to drop unreadable images; their count goes to results.json.")
    if isinstance(err, (UserError, FileNotFoundError, NotADirectoryError)):
        return str(err)
    return None


def _take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """Take `--traceback`, and `--debug` without a value, out of `argv`. `--debug VALUE` is left alone: it is the
    Trainer's own `debug` option (e.g. `--debug underflow_overflow`)."""
    out, asked = [], False
    for i, arg in enumerate(argv):
        bare_debug = arg == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
        if arg == "--traceback" or bare_debug:
            asked = True
        else:
            out.append(arg)
    return out, asked


def command(func):
    """Make `func(argv)` a command-line entry point: `--traceback` (or a bare `--debug`) is taken out of `argv`, and a
    user error (a
    `clip_cl.errors.UserError`, a missing file, a corrupt image, or a `SystemExit("error: ...")` of a module that
    reports its own errors) is printed as one `error: ...` line on stderr, exit status 2, without a traceback.
    With `--traceback`, a bare `--debug` or `CLIP_CL_DEBUG=1` the exception propagates with its traceback.

    Args:
        func (`Callable[[list[str]], Any]`): the entry point; called with the arguments (default `sys.argv[1:]`).

    Returns:
        the wrapped entry point, `entry(argv=None)`.
    """

    @functools.wraps(func)
    def entry(argv: Sequence[str] | None = None):
        argv, asked = _take_debug_flag(list(sys.argv[1:] if argv is None else argv))
        before = os.environ.get(DEBUG_ENV)
        if asked:
            os.environ[DEBUG_ENV] = "1"  # while it runs: for nested entry points and launched subprocesses
        debug = os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
        try:
            return func(argv)
        except ErrorExit:
            raise
        except SystemExit as exc:
            if debug or not (isinstance(exc.code, str) and exc.code.startswith("error:")):
                raise
            message = exc.code[len("error:"):].strip()
        except Exception as err:
            message = _user_message(err)
            if message is None or debug:
                raise
        finally:
            if asked:
                os.environ.pop(DEBUG_ENV) if before is None else os.environ.__setitem__(DEBUG_ENV, before)
        line = f"error: {_one_line(message)}"
        print(line, file=sys.stderr, flush=True)
        raise ErrorExit(line) from None

    return entry


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
    try:
        spec = get_method(method)
    except ValueError as err:
        raise ConfigError(str(err)) from None
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
    parser.add_argument("--traceback", action="store_true", help=f"Show the traceback of an error instead of one "
                        f"line (also a bare --debug, or {DEBUG_ENV}=1; `--debug OPTION` stays the Trainer's).")

    def parser_error(message: str):  # argparse would print the usage of every option (hundreds of lines) first
        raise ConfigError(f"{message}. Run `{prog} --method {spec.name} --help` to list every option.")

    parser.error = parser_error
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


def _cli_config(argv: Sequence[str], prog: str):
    """[`parse_config`] for a command: a value the config class rejects (its `__post_init__` raises `ValueError`
    naming the field and what it accepts) is a [`ConfigError`] that says where to fix it. (Library callers such as
    the sweep keep the `ValueError`: they tell values this machine cannot run, e.g. bf16 without a GPU, apart.)"""
    try:
        return parse_config(argv, prog=prog)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        config_path = _split_config_arg(list(argv))[0]
        where = f"in {config_path} or on the command line" if config_path else "on the command line"
        raise ConfigError(f"{str(err).rstrip('.')}. Fix the value {where}.") from None


@command
def train_main(argv: Sequence[str] | None = None) -> dict:
    """Entry point of `recipes/train.py` and `clip-cl train`."""
    from .runner import run_protocol

    _setup_logging()
    config = _cli_config(argv, "clip-cl train")
    results = run_protocol(config)
    from accelerate import PartialState

    if PartialState().is_main_process:
        out = Path(config.output_dir)
        print((out / "results.md").read_text(encoding="utf-8"))
        if config.push_to_hub:
            url = _push(out, config.hub_model_id, private=config.hub_private_repo, token=config.hub_token,
                        revision=config.hub_revision, after_run=True)
            print(f"Pushed to {url}")
    # A launched run ends its process group itself: left to interpreter exit, gloo's threads can abort the process
    # ("terminate called without an active exception") after the run has finished and saved everything.
    PartialState().destroy_process_group()
    return results


def _push(run_dir: Path, repo_id: str | None, *, private=None, token=None, revision=None, commit_message=None,
          after_run: bool = False) -> str:
    """Push a finished run; a failure (offline, no token, network, permissions) becomes one [`HubPushError`] line
    that says the run is saved and how to push it later."""
    from .hub import push_run_to_hub

    repo = repo_id or run_dir.name
    try:
        return push_run_to_hub(run_dir, repo, private=private, token=token, revision=revision,
                               commit_message=commit_message)
    except UserError:
        raise
    except Exception as err:  # huggingface_hub and requests raise many types; none of them loses the run
        reason = _one_line(str(err)).split(". ", 1)[0][:300] or type(err).__name__
        later = f"clip-cl push {shlex.quote(str(run_dir))} --hub_model_id {shlex.quote(repo)}"
        saved = f"The run is complete and saved in {run_dir}, but p" if after_run else "P"
        raise HubPushError(f"{saved}ushing it to the Hub repository {repo!r} failed ({type(err).__name__}: "
                           f"{reason}). Check the network and your token (`hf auth login`, HF_TOKEN or --hub_token), "
                           f"then push it with `{later}`.") from err


def _setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        datefmt="%H:%M:%S")


@command
def eval_main(argv: Sequence[str] | None = None) -> dict:
    """`clip-cl eval`: evaluate a model on a config's datasets (UT-Acc over all sessions, zero-shot, retrieval), with
    no training. Writes `<output_dir>/eval_results.json` and prints a table."""
    import json

    from accelerate import PartialState

    from .io import atomic_write_json
    from .runner import build_evaluator, build_protocol, load_run_model

    _setup_logging()
    config = _cli_config(argv, "clip-cl eval")
    model, processor = load_run_model(config)
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


@command
def push_main(argv: Sequence[str] | None = None) -> str:
    """`clip-cl push RUN_DIR [--hub_model_id ID]`: push a finished run's final model (and a fresh model card) to the
    Hub, e.g. after `push_to_hub` failed at the end of the run."""
    import json

    from .hub import write_model_card
    from .io import read_json

    parser = argparse.ArgumentParser(prog="clip-cl push", description=(
        "Push a finished run's final model (RUN_DIR/model: safetensors, processor, model card) to the Hugging Face "
        "Hub. The model card is written again from RUN_DIR/results.json and run.json first."))
    parser.add_argument("run_dir", help="the run's output_dir (holds results.json, run.json and model/)")
    parser.add_argument("--hub_model_id", default=None, help="Hub repository, e.g. me/clip-vr-lwf (default: the "
                        "run's hub_model_id, else the run folder's name under your account)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--hub_token", default=None, help="Hub token (default: HF_TOKEN or the cached login)")
    parser.add_argument("--hub_revision", default=None, help="branch to push to (default: main)")
    parser.add_argument("--commit_message", default=None, help="commit message")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    results_file = run_dir / "results.json"
    if not results_file.is_file():
        raise UserError(f"{run_dir} holds no results.json: pass the output_dir of a clip-cl run.")
    try:
        results = read_json(results_file)
        run = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"Cannot read {results_file} or run.json ({err}); the run folder is damaged.") from None
    if results.get("status") != "complete" or not (run_dir / "model" / "model.safetensors").is_file():
        raise UserError(f"The run in {run_dir} is not finished (status {results.get('status')!r}, or no "
                        "model/model.safetensors): run the same training command again to finish it, then push.")
    write_model_card(run_dir / "model", results, run.get("config"), command=run.get("command"))
    repo = args.hub_model_id or run.get("hub_model_id")
    url = _push(run_dir, repo, private=args.private or None, token=args.hub_token, revision=args.hub_revision,
                commit_message=args.commit_message)
    print(f"Pushed to {url}")
    return url


@command
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
    "push": ("clip_cl.cli", "push_main", "push a finished run's model and model card to the Hugging Face Hub"),
    "methods": ("clip_cl.cli", "methods_main", "list the registered methods"),
    "pretrain": ("clip_cl.pretrain", "main", "pretrain a small CLIP from scratch on image-text data"),
    "sweep": ("clip_cl.sweep", "sweep_main", "run methods x variants x protocols x seeds from a sweep YAML (resumable)"),
    "report": ("clip_cl.report", "report_main", "paper-style tables and Fig. 4 / Fig. 5 from a folder of runs"),
}


@command
def main(argv: Sequence[str] | None = None) -> None:
    """`clip-cl <command> ...`"""
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(map(len, COMMANDS))
    usage = "usage: clip-cl <command> [options]\n\ncommands:\n" + "\n".join(
        f"  {name.ljust(width)}  {entry[2]}" for name, entry in COMMANDS.items())
    usage += (f"\n\nRun `clip-cl <command> --help` for a command's options. Errors print one line; add --traceback (or "
              f"set {DEBUG_ENV}=1) for the traceback.")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    if argv[0] not in COMMANDS:
        raise UserError(f"unknown command {argv[0]!r}.{_suggest(argv[0], list(COMMANDS))} Run `clip-cl --help` to "
                        "list the commands.")
    module, func, _ = COMMANDS[argv[0]]
    # Every command gets the same error handling, also those defined outside this module.
    command(getattr(importlib.import_module(module), func))(argv[1:])


if __name__ == "__main__":
    main()
