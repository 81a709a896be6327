"""Model cards and pushing a run's final model to the Hugging Face Hub.

The card is built with `huggingface_hub`'s [`ModelCard`], [`ModelCardData`] and [`EvalResult`], so its YAML header
carries what the Hub reads: `base_model`, `datasets`, `tags`, and a `model-index` with the final model's metrics
(UT-Acc on the updated task, zero-shot top-1 and retrieval Recall@1 per dataset). Links go only to what exists (the
paper); datasets that were local folders are named in the text and the model-index, never listed as Hub ids.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .io import atomic_write_text

__all__ = ["model_card", "model_card_data", "write_model_card", "push_run_to_hub", "invocation"]

PAPER_URL = "https://arxiv.org/abs/2207.09248"

# transformers' optimiser names (`OptimizerNames` values) as a reader knows them; others are shown as given.
_OPTIMIZERS = {
    "adamw_torch": "AdamW (PyTorch)", "adamw_torch_fused": "AdamW (PyTorch, fused)", "adamw_hf": "AdamW",
    "adamw_torch_xla": "AdamW (PyTorch XLA)", "adamw_apex_fused": "AdamW (Apex, fused)", "adafactor": "Adafactor",
    "adamw_8bit": "AdamW 8-bit (bitsandbytes)", "adamw_bnb_8bit": "AdamW 8-bit (bitsandbytes)", "sgd": "SGD",
    "adagrad": "Adagrad", "rmsprop": "RMSprop", "lion_32bit": "Lion", "schedule_free_adamw": "Schedule-free AdamW",
}
_PROTOCOLS = {"ost": "OST (one session: every class of the update task at once)",
              "mst": "MST (several sessions, a disjoint set of classes in each)"}
_VARIANTS = {"WM": "WM (whole model)", "IO": "IO (image encoder only)", "TO": "TO (text encoder only)"}


def invocation(argv: list[str] | None = None) -> str:
    """The command line of this process as a user would type it again: `clip-cl train ...` for the console script,
    `python recipes/train.py ...` (path relative to the working directory when below it) for a script."""
    argv = list(sys.argv if argv is None else argv)
    prog, rest = argv[0], argv[1:]
    name = Path(prog).name
    if name == "clip-cl":
        head = ["clip-cl"]
    elif name.endswith(".py"):
        rel = os.path.relpath(prog) if os.path.isabs(prog) else prog
        head = ["python", prog if rel.startswith("..") else rel]
    else:
        head = [name]
    return " ".join(shlex.quote(a) for a in head + rest)


def optimizer_name(optim: Any) -> str:
    """`OptimizerNames.ADAMW_TORCH` or `"adamw_torch"` -> `"AdamW (PyTorch)"`."""
    value = optim.value if isinstance(optim, enum.Enum) else str(optim)
    return _OPTIMIZERS.get(value, value)


def _config_dict(config) -> dict[str, Any]:
    """The run's settings as a dict, from a config object or from `run.json`'s `config`."""
    if config is None:
        return {}
    if isinstance(config, dict):
        return dict(config)
    from .runner import result_config

    return result_config(config)


@functools.lru_cache(maxsize=None)
def method_defaults(method: str) -> dict[str, Any]:
    """The settings of a default config of `method`, after the config's own normalisation (cached).

    Building a `TrainingArguments` sets up the process's device state, and by default resets accelerate's
    process-wide state first (transformers' `_setup_devices`). Inside a run that state is the run's: reset by a bare
    config (no `use_cpu`, so not the run's own devices), it had every rank of a 2-process CPU run believe it was the
    main process, and both wrote the final model at once. So when a state is configured, the defaults config is told
    to use it (`use_configured_state`, which leaves the settings compared here unchanged). The runner still calls
    this on every rank before rank 0 alone writes the model card, so that no rank builds a config the others do not.
    """
    from accelerate import PartialState

    from .methods import get_method
    from .runner import result_config

    config_cls = get_method(method).config_cls
    # The test transformers itself makes before it accepts `use_configured_state`.
    keep_state = {"accelerator_config": {"use_configured_state": True}} if PartialState._shared_state else {}
    try:
        return result_config(config_cls(output_dir="clip-cl-defaults", **keep_state))
    except (ValueError, TypeError):  # a method config that cannot be built bare: compare with its field defaults
        return {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}


def _changed_settings(cfg: dict[str, Any], method: str) -> dict[str, Any]:
    """The settings of `cfg` that differ from a default config of the method (what a config file of the run must say;
    compared after the config's own normalisation, so defaults it rewrites do not show as changes)."""
    defaults = method_defaults(method)
    out = {"method": method}
    out.update({k: v for k, v in cfg.items() if k != "method" and (k not in defaults or v != defaults[k])})
    return out


def _is_hub_id(path: str | None) -> bool:
    """Whether a dataset or model path names a Hub repository (`name` or `owner/name`), not a local folder."""
    if not path or os.path.exists(os.path.expanduser(str(path))) or str(path).startswith((".", "/", "~")):
        return False
    parts = str(path).split("/")
    return len(parts) <= 2 and all(parts) and not str(path).endswith((".parquet", ".json", ".csv"))


def _final_eval(results: dict) -> dict:
    sessions = results.get("sessions") or []
    return (sessions[-1].get("eval") if sessions else None) or {}


def _eval_results(results: dict) -> list[EvalResult]:
    """The final model's metrics as `EvalResult`s (percentages), one per metric and dataset."""
    splits = results.get("splits") or {}
    update = (splits.get("update_task") or {}).get("test") or {}
    specs = {d.get("name"): d for d in splits.get("zero_shot", []) + splits.get("retrieval", [])}

    def dataset_type(name: str, spec: dict) -> str:
        return spec.get("path") if _is_hub_id(spec.get("path")) else name

    ev, out = _final_eval(results), []
    if ev.get("ut", {}).get("acc") is not None:
        name = update.get("name", "update task")
        out.append(EvalResult(
            task_type="image-classification", task_name="Updated task: accuracy over the classes seen so far",
            dataset_type=dataset_type(name, update), dataset_name=name, dataset_split=update.get("split"),
            metric_type="accuracy", metric_name="UT-Acc (%)", metric_value=round(float(ev["ut"]["acc"]), 4)))
    for name, metrics in (ev.get("zero_shot") or {}).items():
        spec = specs.get(name, {})
        out.append(EvalResult(
            task_type="zero-shot-image-classification", task_name="Zero-shot classification (held-out data)",
            dataset_type=dataset_type(name, spec), dataset_name=name, dataset_split=spec.get("split"),
            metric_type="accuracy", metric_name="ZS-Acc top-1 (%)", metric_value=round(float(metrics["top1"]), 4)))
    for name, metrics in (ev.get("retrieval") or {}).items():
        spec = specs.get(name, {})
        for key, label in (("tr@1", "TR@1, image-to-text Recall@1 (%)"), ("ir@1", "IR@1, text-to-image Recall@1 (%)")):
            out.append(EvalResult(
                task_type="image-text-retrieval", task_name="Zero-shot image-text retrieval (held-out data)",
                dataset_type=dataset_type(name, spec), dataset_name=name, dataset_split=spec.get("split"),
                metric_type="recall@1", metric_name=label, metric_value=round(float(metrics[key]), 4)))
    return out


def model_card_data(results: dict) -> ModelCardData:
    """The card's YAML header: library, pipeline, tags, `base_model` (a Hub model only), `datasets` (Hub datasets
    only) and the `model-index` of the final model's metrics."""
    from .methods import get_method
    from .methods.base.trainer import PAPER
    from .models import TINY_MODEL_NAMES

    trainer = get_method(results["method"]).trainer_cls
    tags = list(getattr(trainer, "_tag_names", ["clip-cl", "continual-learning", "clip"])) + [results["method"]]
    tags.append(f"arxiv:{PAPER['id']}")
    base = results.get("model")
    splits = results.get("splits") or {}
    update = splits.get("update_task") or {}
    paths = [(update.get("train") or {}).get("path"), (update.get("test") or {}).get("path")]
    paths += [d.get("path") for d in splits.get("zero_shot", []) + splits.get("retrieval", [])]
    datasets = list(dict.fromkeys(p for p in paths if _is_hub_id(p)))
    evals = _eval_results(results)
    base_name = Path(str(base)).name if base else "clip"
    return ModelCardData(
        library_name="transformers", pipeline_tag="zero-shot-image-classification", tags=list(dict.fromkeys(tags)),
        base_model=base if _is_hub_id(base) and base not in TINY_MODEL_NAMES else None, datasets=datasets or None,
        model_name=f"{base_name}-{results['method']}-{results['protocol']}" if evals else None,
        eval_results=evals or None)


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


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def model_card(results: dict, config=None, command: str | None = None) -> str:
    """A model card (README.md with the Hub's YAML metadata) for a run's final model.

    Args:
        results (`dict`): the run's results (as in `results.json`).
        config ([`CLIPCLConfig`] or `dict`, *optional*): the run's config, or `run.json`'s `config`; gives the
            hyper-parameters and the settings to reproduce the run (defaults to `results["config"]`).
        command (`str`, *optional*): the command that made the run (as recorded in `run.json`; defaults to this
            process's command line).

    Returns:
        `str`: the card's text (YAML header + Markdown).
    """
    import yaml

    from .methods.base.trainer import PAPER

    cfg = _config_dict(config) or dict(results.get("config") or {})
    method, display = results["method"], results.get("method_display", results["method"])
    base = results.get("model")
    protocol = str(results.get("protocol", "")).lower()
    splits = results.get("splits") or {}
    update = splits.get("update_task") or {}
    train_spec = update.get("train") or {}
    command = command or invocation()

    rows = [("before", _headline(results.get("before")))]
    rows += [(f"after session {s['session']}", _headline(s.get("eval"))) for s in results.get("sessions", [])]
    keys = ["UT-Acc", "ZS-Acc", "TR@1", "IR@1"]
    table = ["| | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    table += [f"| {label} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for label, r in rows if r]

    ev = _final_eval(results)
    per_dataset = [f"| zero-shot | {n} | top-1 {_fmt(m.get('top1'))} |" for n, m in (ev.get("zero_shot") or {}).items()]
    per_dataset += [f"| retrieval | {n} | TR@1 {_fmt(m.get('tr@1'))}, IR@1 {_fmt(m.get('ir@1'))} |"
                    for n, m in (ev.get("retrieval") or {}).items()]

    def describe(spec: dict) -> str:
        where = spec.get("path", "?")
        where = f"[{where}](https://huggingface.co/datasets/{where})" if _is_hub_id(where) else f"`{where}` (local)"
        return f"{spec.get('name', '?')} ({where}, split `{spec.get('split', '?')}`)"

    training = [
        f"- Base model: `{base}`",
        f"- Method: {display} (`method: {method}`), variant {_VARIANTS.get(results.get('variant'), results.get('variant'))}",
        f"- Protocol: {_PROTOCOLS.get(protocol, protocol.upper())}, {results.get('num_sessions')} session(s); seed "
        f"{results.get('seed')}",
        f"- Update data: {describe(train_spec) if train_spec else 'see results.json'}; classes per session: "
        + "; ".join(", ".join(s.get("classes", [])) for s in results.get("sessions", [])),
    ]
    evaluated = [describe(d) for d in splits.get("zero_shot", []) + splits.get("retrieval", [])]
    if evaluated:
        training.append("- Held-out evaluation data: " + "; ".join(evaluated))
    if cfg:
        schedule = (f"step decay x{cfg.get('step_lr_gamma')} every {cfg.get('step_lr_epochs')} epoch(s)"
                    if cfg.get("step_lr_epochs") is not None else f"{cfg.get('lr_scheduler_type', 'linear')} schedule")
        training.append(
            f"- Optimiser: {optimizer_name(cfg.get('optim', 'adamw_torch'))}, learning rate {cfg.get('learning_rate')}"
            f" ({schedule}), weight decay {cfg.get('weight_decay')}, batch {cfg.get('per_device_train_batch_size')} "
            f"per device x {cfg.get('gradient_accumulation_steps', 1)} accumulation step(s), "
            f"{cfg.get('num_train_epochs', 0):g} epoch(s) per session"
            + (f" (max {cfg['max_steps']} steps)" if (cfg.get("max_steps") or -1) > 0 else "")
            + f", max grad norm {cfg.get('max_grad_norm')}")

    reproduce = ["The command that made this run (from the run's `run.json`):", "", "```bash", command, "```"]
    if cfg:
        settings = yaml.safe_dump(_changed_settings(cfg, method), sort_keys=False, allow_unicode=True).strip()
        reproduce += ["", "The same run without the original config files: save these settings (every one that "
                      "differs from the method's defaults) as `config.yaml` and run `clip-cl train --config "
                      "config.yaml --output_dir my-run`.", "", "```yaml", settings, "```"]

    body = [
        f"# {display} on {Path(str(base)).name if base else 'CLIP'} ({results.get('variant')}, {protocol.upper()})", "",
        f"`{base}` updated with **{display}** for continual learning (clip-cl, a toolkit that reproduces Ding et al. "
        f"2022, [\"Don't Stop Learning: Towards Continual Learning for the CLIP Model\"]({PAPER_URL})): it learns the "
        "update task's classes while keeping as much as it can of the starting model's zero-shot and retrieval "
        "abilities.", "",
        "## Training", "", *training, "",
        "## Results", "",
        "Percentages; UT-Acc is the accuracy on the updated task over the classes seen so far, ZS-Acc zero-shot top-1 "
        "on held-out data, TR@1 / IR@1 image-to-text / text-to-image retrieval Recall@1 (means over the datasets in "
        "this table; per dataset below and in the metadata).", "", *table, "",
    ]
    if per_dataset:
        body += ["Final model, per dataset:", "", "| task | dataset | % |", "|---|---|---|", *per_dataset, ""]
    body += ["## Reproduce", "", *reproduce, "", "## Citation", "", "```bibtex", PAPER.get("citation", ""), "```", ""]
    data = model_card_data(results)
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def write_model_card(folder: str | os.PathLike, results: dict, config=None, command: str | None = None) -> Path:
    """Write `README.md` (the model card, [`model_card`]) into a saved model folder, atomically.

    Returns:
        `Path`: the card's path.
    """
    path = Path(folder) / "README.md"
    text = model_card(results, config, command)
    ModelCard(text)  # the Hub's own parser must read it (raises on a malformed header)
    atomic_write_text(path, text)
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
