"""Model cards and pushing a run's final model to the Hugging Face Hub."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from .io import atomic_write_text

__all__ = ["model_card", "write_model_card", "push_run_to_hub"]


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _headline(ev: dict | None) -> dict[str, float | None]:
    if not ev:
        return {}
    row: dict[str, float | None] = {"UT-Acc": ev.get("ut", {}).get("acc")}
    zs = [v["top1"] for v in ev.get("zero_shot", {}).values()]
    row["ZS-Acc"] = sum(zs) / len(zs) if zs else None
    for key, label in (("tr@1", "TR@1"), ("ir@1", "IR@1")):
        vals = [v[key] for v in ev.get("retrieval", {}).values()]
        row[label] = sum(vals) / len(vals) if vals else None
    return row


def model_card(results: dict, config=None, command: str | None = None) -> str:
    """A model card (README.md with YAML metadata) for a run's final model.

    Args:
        results (`dict`): the run's results (as in `results.json`).
        config ([`CLIPCLConfig`], *optional*): the run's config, for the hyper-parameters.
        command (`str`, *optional*): the command that made the run (defaults to this process's command line).

    Returns:
        `str`: the card's Markdown.
    """
    from .methods import get_method
    from .methods.base.trainer import PAPER

    spec = get_method(results["method"])
    trainer = spec.trainer_cls
    paper = getattr(trainer, "_paper", PAPER) if trainer else PAPER
    tags = list(getattr(trainer, "_tag_names", ["clip-cl", "continual-learning", "clip"])) + [results["method"]]
    base = results.get("model")
    command = command or " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    splits = results.get("splits") or {}
    datasets = [d for d in [splits.get("update_train", {}).get("path")] if d]
    header = ["---", "library_name: transformers", "pipeline_tag: zero-shot-image-classification", "tags:"]
    header += [f"- {t}" for t in dict.fromkeys(tags)]
    from .models import TINY_MODEL_NAMES

    if base and base not in TINY_MODEL_NAMES and not os.path.isdir(base):
        header.append(f"base_model: {base}")
    header += ["license: apache-2.0", "---", ""]

    rows = [("before", _headline(results.get("before")))]
    rows += [(f"after session {s['session']}", _headline(s.get("eval"))) for s in results.get("sessions", [])]
    keys = ["UT-Acc", "ZS-Acc", "TR@1", "IR@1"]
    table = ["| | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    table += [f"| {label} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for label, r in rows if r]

    body = [
        f"# {results.get('method_display', results['method'])} on {Path(str(base)).name if base else 'CLIP'} "
        f"({results['variant']}, "
        f"{results['protocol'].upper()})",
        "",
        f"This model is `{base}` updated with **{results.get('method_display', results['method'])}** by "
        "[clip-cl](https://github.com/clip-cl/clip-cl), a toolkit for continual learning of CLIP that keeps its "
        "zero-shot and retrieval abilities while it learns new classes.",
        "",
        "## Training",
        "",
        f"- Base model: `{base}`",
        f"- Method: `{results['method']}`, variant `{results['variant']}` (WM whole model, IO image encoder only, "
        "TO text encoder only)",
        f"- Protocol: {results['protocol'].upper()}, {results['num_sessions']} session(s); seed {results.get('seed')}",
        f"- Update data: {', '.join(datasets) or 'see results.json'}; classes per session: "
        + "; ".join(", ".join(s.get("classes", [])) for s in results.get("sessions", [])),
    ]
    if config is not None:
        body.append(f"- Optimiser: {config.optim}, lr {config.learning_rate}, batch {config.per_device_train_batch_size}"
                    f", {config.num_train_epochs:g} epoch(s) per session, max grad norm {config.max_grad_norm}")
    body += ["", "## Results", "", "Percentages; UT-Acc over the classes seen so far, ZS-Acc zero-shot top-1 on "
             "held-out data, TR@1 / IR@1 image-to-text / text-to-image retrieval.", "", *table, "",
             "## Reproduce", "", "```bash", command, "```", "", "## Citation", "", "```bibtex",
             paper.get("citation", ""), "```", ""]
    return "\n".join(header + body)


def write_model_card(folder: str | os.PathLike, results: dict, config=None) -> Path:
    """Write `README.md` (the model card) into a saved model folder."""
    path = Path(folder) / "README.md"
    atomic_write_text(path, model_card(results, config))
    return path


def push_run_to_hub(run_dir: str | os.PathLike, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    revision: str | None = None, commit_message: str | None = None, api: HfApi | None = None) -> str:
    """Push a run's final model folder (`run_dir/model`, safetensors + processor + card) to the Hub.

    Args:
        run_dir (`str` or `os.PathLike`): the run folder written by `recipes/train.py`.
        repo_id (`str`): the Hub repository, e.g. `"me/clip-vit-b32-vr-lwf"`.
        private (`bool`, *optional*): create the repository as private.
        token (`str`, *optional*): Hub token (defaults to the cached login).
        revision (`str`, *optional*): branch to push to.
        commit_message (`str`, *optional*): the commit message.
        api (`HfApi`, *optional*): the client to use (tests pass a mock).

    Returns:
        `str`: the URL of the commit.
    """
    folder = Path(run_dir) / "model"
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"{folder} holds no model.safetensors; push only a finished run (its final model is "
                                "written to <output_dir>/model when the last session ends).")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                             commit_message=commit_message or "Upload CLIP model trained with clip-cl",
                             allow_patterns=["*.safetensors", "*.json", "*.txt", "README.md"])
    return str(getattr(info, "commit_url", info))
