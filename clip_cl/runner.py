"""Run a whole protocol (OST or MST) for one method: evaluate, train session by session, evaluate, save, resume.

Layout of a run folder (`output_dir`):

```
run.json                 the configuration and its fingerprint (a different run is refused in the same folder)
results.json             everything measured so far (schema in docs/run_folder.md), rewritten atomically
results.md               the before/after table
session_1/model/         safetensors checkpoint + processor after session 1 (written atomically)
session_1/trainer/       Trainer checkpoints while session 1 runs (for resuming; removed when it ends) and logs
...
model/                   the final model (a copy of the last session's), with a model card
```

Running the same command again continues from the last finished session, and inside a session from the last
Trainer checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import PreTrainedModel
from transformers.trainer_utils import set_seed

from .errors import DataError, ModelLoadError, UserError, user_input
from .io import atomic_save_dir, atomic_write_json, atomic_write_text, read_json
from .methods import get_method
from .methods.base.config import CLIPCLConfig
from .models import load_model

__all__ = ["run_protocol", "build_protocol", "build_evaluator", "check_launch_setup", "load_run_model",
           "config_fingerprint", "RunFolderError", "UnsupportedSetupError"]

logger = logging.getLogger(__name__)

# Config fields that do not change what a run computes: they may differ between a run and its resumption.
_NON_RESULT_FIELDS = {
    "output_dir", "overwrite_run", "logging_steps", "logging_strategy", "logging_first_step", "report_to",
    "run_name", "disable_tqdm", "push_to_hub", "hub_model_id", "hub_token", "hub_private_repo", "hub_strategy",
    "hub_revision", "hub_always_push", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_prefetch_factor",
    "dataloader_persistent_workers", "save_strategy", "save_steps", "save_total_limit", "local_rank", "log_level",
    "log_level_replica", "project", "trackio_space_id", "per_device_eval_batch_size", "resume_from_checkpoint",
    "ddp_timeout", "ddp_backend", "skip_memory_metrics", "log_on_each_node", "do_train", "do_eval", "do_predict",
    "torch_compile", "torch_compile_backend", "torch_compile_mode", "vr_recompute_pseudo_texts",
}


# Settings added after runs were recorded: left out of `result_config` at these (default) values, so the fingerprints
# of existing run folders and sweeps do not change. (`decode_on_device` is a result field: on CUDA, nvjpeg's pixels
# may differ from the host decoder's by a few levels.)
_OMITTED_AT_DEFAULT = {"class_order": "seeded", "update_test_templates": None, "decode_on_device": False}


class RunFolderError(UserError, RuntimeError):
    """The output folder holds a different run."""


class UnsupportedSetupError(UserError, RuntimeError):
    """A launch setup (sharding back-end, device) that clip-cl cannot run correctly; raised before anything is
    written."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def _zero_stage(config: CLIPCLConfig) -> int | None:
    """The DeepSpeed ZeRO stage of the launch: `accelerate launch` exports it; a `deepspeed` config may set it."""
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    ds = config.deepspeed
    if stage is None and isinstance(ds, str) and os.path.isfile(ds):
        ds = read_json(ds)
    if stage is None and isinstance(ds, dict):
        stage = ds.get("zero_optimization", {}).get("stage")
    return int(stage) if stage not in (None, "", "auto") else None


def check_launch_setup(config: CLIPCLConfig) -> None:
    """Refuse, before anything is written, the sharded setups that cannot run correctly (see docs/reliability.md,
    where each reason was measured).

    - FSDP (1 or 2): torch's `fully_shard` refuses a parameter with no dimension ("fully_shard doesn't support
      scalar parameters"), and every CLIP model has one (`logit_scale`), so `accelerate` fails while preparing the
      model; with CPU processes accelerate does not even get there: it runs plain DDP and ignores the FSDP settings.
    - DeepSpeed on CPU: a 2-process ZeRO-2 run on CPU (gloo) hung here.
    - DeepSpeed ZeRO-3 with a method that rewrites weights at the end of a session (IMM, WiSE-FT, ZSCL, RKR, LoRA):
      ZeRO-3 partitions every parameter, and the merge reads and writes whole parameters.

    Args:
        config ([`CLIPCLConfig`]): the run's configuration.

    Raises:
        [`UnsupportedSetupError`]: naming the problem and what to launch instead.
    """
    if _env_flag("ACCELERATE_USE_FSDP") or config.fsdp:
        raise UnsupportedSetupError(
            "FSDP cannot shard a CLIP model: torch's fully_shard refuses its 0-d logit_scale parameter (\"fully_shard "
            "doesn't support scalar parameters\"), and with CPU processes accelerate silently runs DDP instead. "
            "Launch with recipes/accelerate/multi_gpu.yaml (DDP) or deepspeed_zero2.yaml on GPUs, or cpu_2proc.yaml "
            "on CPU.")
    if _env_flag("ACCELERATE_USE_DEEPSPEED") or config.deepspeed:
        if config.use_cpu or not torch.cuda.is_available():
            raise UnsupportedSetupError(
                "DeepSpeed needs GPUs here: a 2-process ZeRO-2 run on CPU (gloo) hung. Launch with "
                "recipes/accelerate/cpu_2proc.yaml (DDP) on CPU.")
        from .methods.base.trainer import CLIPCLTrainer

        trainer_cls = get_method(config.method_name).trainer_cls
        merges = trainer_cls is not None and trainer_cls.on_session_end is not CLIPCLTrainer.on_session_end
        if merges and _zero_stage(config) == 3:
            raise UnsupportedSetupError(
                f"{config.method_name} rewrites whole weights at the end of every session, and DeepSpeed ZeRO-3 "
                "partitions every parameter across the processes. Launch with "
                "recipes/accelerate/deepspeed_zero2.yaml (ZeRO-2 keeps whole parameters) or multi_gpu.yaml (DDP).")


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def result_config(config: CLIPCLConfig) -> dict[str, Any]:
    """The configuration fields that define what a run computes."""
    out = {}
    for key, value in sorted(config.to_dict().items()):
        if key in _NON_RESULT_FIELDS or key.startswith("_"):
            continue
        if key in _OMITTED_AT_DEFAULT and value == _OMITTED_AT_DEFAULT[key]:
            continue
        out[key] = _jsonable(value)
    out["method"] = config.method_name
    return out


def config_fingerprint(config: CLIPCLConfig) -> str:
    """A short hash of [`result_config`]: two configs with the same fingerprint compute the same run."""
    blob = json.dumps(result_config(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_run_model(config: CLIPCLConfig):
    """`(model, processor)` of `config.model_name_or_path`; a path or id that cannot be loaded is a
    [`ModelLoadError`]."""
    with user_input(ModelLoadError, (OSError, ValueError)):
        return load_model(config.model_name_or_path, local_files_only=config.local_files_only)


def build_protocol(config: CLIPCLConfig):
    """The [`Protocol`] described by a config's data fields (a spec that cannot be used is a [`DataError`])."""
    with user_input(DataError):
        return _build_protocol(config)


def _build_protocol(config: CLIPCLConfig):
    from .data import DatasetSpec, Protocol

    if not config.update_dataset:
        raise ValueError("update_dataset is not set: give the update task as a dataset spec, e.g. "
                         "update_dataset: {path: examples/data/fashion_mnist} (see docs/data.md).")
    update = dict(config.update_dataset)
    if "split" in update:
        raise ValueError("update_dataset must not set 'split'; use update_train_split and update_test_split.")
    update.setdefault("name", Path(str(update.get("path", "update"))).name or "update")
    train = DatasetSpec.from_dict({**update, "split": config.update_train_split})
    test_spec = {**update, "split": config.update_test_split}
    if config.max_eval_samples is not None:
        test_spec["max_samples"] = config.max_eval_samples

    def eval_spec(d: dict) -> dict:
        d = dict(d)
        if config.max_eval_samples is not None and d.get("max_samples") is None:
            d["max_samples"] = config.max_eval_samples
        return d

    return Protocol(
        update_train=train,
        update_test=DatasetSpec.from_dict(test_spec),
        num_sessions=config.num_sessions,
        class_order_seed=config.class_order_seed,
        class_order=config.class_order,
        zero_shot=[DatasetSpec.from_dict(eval_spec(d)) for d in config.zero_shot_datasets],
        retrieval=[DatasetSpec.from_dict(eval_spec(d)) for d in config.retrieval_datasets],
        replay=getattr(config, "replay_dataset", None),  # rehearsal methods (er, agem, gem) only
    )


def _checked(dataset, name: str, config: CLIPCLConfig, skipped: dict[str, int] | None):
    """With `skip_corrupt_images`, drop unreadable rows once and count them; otherwise the data is used as is and the
    first unreadable image raises an error naming the dataset, row and file."""
    if not config.skip_corrupt_images:
        return dataset
    from .data import verify_images

    dataset, dropped = verify_images(dataset, dataset_name=name, skip_corrupt=True)
    if skipped is not None:
        skipped[name] = skipped.get(name, 0) + dropped
    return dataset


def build_evaluator(protocol, processor, config: CLIPCLConfig, skipped: dict[str, int] | None = None):
    """An [`Evaluator`] over the protocol's update-test, zero-shot and retrieval sets (evaluation transforms); loads
    them, so a dataset that cannot be used is a [`DataError`]."""
    with user_input(DataError):
        return _build_evaluator(protocol, processor, config, skipped)


def _build_evaluator(protocol, processor, config: CLIPCLConfig, skipped: dict[str, int] | None = None):
    from .data import with_image_transform
    from .evaluation import Evaluator

    # Protocol datasets carry canonical column names: image, label / captions.
    ip = processor.image_processor
    test_name = f"{protocol.update_test.name}/{protocol.update_test.split}"
    update = (
        with_image_transform(_checked(protocol.update_test_dataset(), test_name, config, skipped), ip, train=False,
                             label_column="label", dataset_name=test_name, cache_dir=config.image_cache_dir,
                             decode_on_device=config.decode_on_device),
        protocol.class_names,
        protocol.sessions,
    )
    zero_shot = {name: (with_image_transform(_checked(ds, name, config, skipped), ip, train=False,
                                             label_column="label", dataset_name=name,
                                             cache_dir=config.image_cache_dir,
                                             decode_on_device=config.decode_on_device), names)
                 for name, (ds, names) in protocol.zero_shot_datasets().items()}
    retrieval = {name: with_image_transform(_checked(ds, name, config, skipped), ip, train=False,
                                            captions_column="captions", dataset_name=name,
                                            cache_dir=config.image_cache_dir, decode_on_device=config.decode_on_device)
                 for name, ds in protocol.retrieval_datasets().items()}
    autocast = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None
    return Evaluator(
        processor.tokenizer,
        update=update,
        zero_shot=zero_shot,
        retrieval=retrieval,
        retrieval_folds={spec.name: spec.eval_folds for spec in protocol.retrieval},
        zero_shot_templates=config.zero_shot_templates,
        ut_templates=config.update_test_templates or config.zero_shot_templates,
        batch_size=config.per_device_eval_batch_size,
        num_workers=config.dataloader_num_workers,
        autocast_dtype=autocast,
        image_processor=ip,
    )


def _prepare_folder(out: Path, config: CLIPCLConfig, state: PartialState) -> None:
    """Refuse a folder holding a different run; wipe it on `overwrite_run`; record `run.json`."""
    run_file = out / "run.json"
    if state.is_main_process:
        if config.overwrite_run and out.exists():
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        if run_file.exists():
            previous = read_json(run_file)
            mine, theirs = result_config(config), previous.get("config", {})
            defaults = _field_defaults(type(config))
            # A setting added to clip-cl after the run started is absent from its run.json: at its default value it
            # cannot have changed the run, so it does not block resuming.
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)
                          and not (k not in theirs and _jsonable(defaults.get(k, object())) == mine.get(k)))
            if diff:
                raise RunFolderError(
                    f"{out} holds a different run (differing settings: {', '.join(diff[:12]) or 'unknown'}). "
                    "Use another output_dir, or pass --overwrite_run to delete it and start over.")
        elif out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise RunFolderError(
                f"{out} is not empty and holds no clip-cl run.json. Use another output_dir, or pass --overwrite_run "
                "to delete its content.")
        out.mkdir(parents=True, exist_ok=True)
        from .hub import invocation

        # The command as typed (for the model card's "Reproduce"), where it ran (relative paths), and the Hub
        # repository asked for (`clip-cl push` uses it).
        record = {"fingerprint": config_fingerprint(config), "config": result_config(config),
                  "command": invocation(), "cwd": os.getcwd(), "hub_model_id": config.hub_model_id}
        atomic_write_json(run_file, record)
    state.wait_for_everyone()


def _field_defaults(config_cls) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _session_args(config: CLIPCLConfig, session_dir: Path, session: int) -> CLIPCLConfig:
    args = copy.deepcopy(config)
    args.output_dir = str(session_dir / "trainer")
    # A per-session seed makes a resumed session draw exactly what an uninterrupted run would.
    args.seed = config.seed + session
    args.push_to_hub = False
    if args.run_name is None or args.run_name == config.output_dir:
        args.run_name = f"{Path(config.output_dir).name}-session{session + 1}"
    return args


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest Trainer checkpoint in `folder` that was written to the end.

    The Trainer writes `trainer_state.json` last, so a checkpoint without it, or with a state cut short (killed while
    writing it), was interrupted (killed, disk full) and is skipped; the previous one is still there because old
    checkpoints are rotated out only after a new one is complete.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.rsplit("-", 1)[-1]
        if step.isdigit() and _complete_trainer_state(path / "trainer_state.json"):
            found.append((int(step), path))
    return str(max(found)[1]) if found else None


def _complete_trainer_state(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()).get("global_step"), int)
    except (OSError, ValueError, AttributeError):  # missing, cut short, not an object
        return False


def _save_model(model: PreTrainedModel, processor, path: Path) -> None:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)  # safetensors
        processor.save_pretrained(tmp)

    atomic_save_dir(path, write)


def _load_weights(model: PreTrainedModel, path: Path) -> None:
    from safetensors.torch import load_file

    file = path / "model.safetensors"
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing: the session folder is incomplete; delete {path.parent} to redo "
                                "that session.")
    state = load_file(str(file), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"{file} does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]}).")


def _summary_rows(evaluator, results: dict) -> list[tuple[str, dict]]:
    rows = []
    if results.get("before"):
        rows.append(("before", evaluator.summary_row(results["before"])))
    for s in results.get("sessions", []):
        rows.append((f"after session {s['session']}", evaluator.summary_row(s["eval"])))
    return rows


def _headline(row: dict) -> dict[str, float | None]:
    """Headline columns of a summary row; per-dataset columns only when there are several datasets."""
    out = {"UT-Acc": row.get("ut_acc"), "ZS-Acc": row.get("zs_acc"), "TR@1": row.get("tr@1"), "IR@1": row.get("ir@1")}
    per = [k for k in row if "/" in k]
    for prefix in ("zs_acc", "tr@1", "ir@1"):
        keys = [k for k in per if k.startswith(prefix + "/")]
        if len(keys) > 1:
            label = {"zs_acc": "ZS-Acc", "tr@1": "TR@1", "ir@1": "IR@1"}[prefix]
            out.update({f"{label} {k.split('/', 1)[1]}": row[k] for k in keys})
    return {k: v for k, v in out.items() if v is not None or k == "UT-Acc"}


def render_results_md(results: dict, rows: list[tuple[str, dict]]) -> str:
    """The human-readable `results.md`: a before/after table of the headline metrics."""
    n = results["num_sessions"]
    lines = [f"# {results['method_display']} ({results['variant']}, {results['protocol'].upper()}, "
             f"{n} session{'s' if n > 1 else ''})", "",
             f"Model: `{results['model']}` · seed {results['seed']} · status: {results['status']}", ""]
    if rows:
        table = [(label, _headline(row)) for label, row in rows]
        keys = list(dict.fromkeys(k for _, r in table for k in r))
        lines.append("| | " + " | ".join(keys) + " |")
        lines.append("|---|" + "---:|" * len(keys))
        for label, row in table:
            cells = ["" if row.get(k) is None else f"{row[k]:.2f}" for k in keys]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cont = results.get("continual")
    if cont:
        lines += ["", "Continual metrics on UT-Acc per session (%): " + ", ".join(
            f"{k} {v:.2f}" for k, v in cont.items() if isinstance(v, (int, float)))]
    lines += ["", "UT-Acc: accuracy on the updated task over the classes seen so far; ZS-Acc: zero-shot top-1 on "
              "held-out data; TR@1 / IR@1: image-to-text / text-to-image retrieval. All in %, defined in "
              "docs/metrics.md.", ""]
    return "\n".join(lines)


def run_protocol(config: CLIPCLConfig) -> dict:
    """Run a method over its protocol and return the results dict (also written to `output_dir/results.json`).

    Args:
        config ([`CLIPCLConfig`]): the method's config (its class decides the method through the registry).

    Returns:
        `dict`: the results (schema in `docs/run_folder.md`).
    """
    check_launch_setup(config)
    state = PartialState()
    spec = get_method(config.method_name)
    out = Path(config.output_dir)
    _prepare_folder(out, config, state)
    set_seed(config.seed)

    model, processor = load_run_model(config)
    model.to(state.device)
    protocol = build_protocol(config)
    skipped: dict[str, int] = {}
    evaluator = build_evaluator(protocol, processor, config, skipped)
    trainer_cls = spec.trainer_cls
    display = getattr(trainer_cls, "_name", None) or {"original": "Original CLIP"}.get(spec.name, spec.name)

    results_file = out / "results.json"
    results = read_json(results_file) if results_file.exists() else {
        "method": spec.name, "method_display": display, "variant": config.variant, "protocol": config.protocol,
        "num_sessions": config.num_sessions, "model": config.model_name_or_path, "seed": config.seed,
        "fingerprint": config_fingerprint(config), "config": result_config(config), "splits": protocol.describe(),
        "before": None, "sessions": [], "status": "running",
    }
    if config.skip_corrupt_images:
        results["skipped_images"] = skipped

    def save_results() -> None:
        if state.is_main_process:
            acc = [s["eval"]["ut"]["per_session"] for s in results["sessions"]]
            if len(acc) == config.num_sessions:
                from .evaluation import continual_metrics

                initial = results["before"]["ut"]["per_session"] if results.get("before") else None
                results["continual"] = continual_metrics(acc, initial=initial)
                results["acc_matrix"] = acc
            atomic_write_json(results_file, results)
            atomic_write_text(out / "results.md", render_results_md(results, _summary_rows(evaluator, results)))
        state.wait_for_everyone()

    if config.eval_before_training and results.get("before") is None:
        logger.info("Evaluating the starting model")
        results["before"] = evaluator.evaluate(model, seen=0)
        save_results()

    initial_state = None
    if trainer_cls is not None and trainer_cls._restart_from_initial:
        initial_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    done = len(results["sessions"])
    if done and trainer_cls is not None:
        _load_weights(model, out / f"session_{done}" / "model")
        logger.info("Resuming after session %d of %d", done, config.num_sessions)

    for t in range(done, config.num_sessions):
        session_dir = out / f"session_{t + 1}"
        entry: dict[str, Any] = {"session": t + 1, "classes": protocol.session_class_names(t),
                                 "class_ids": list(protocol.sessions[t])}
        start = time.perf_counter()
        if trainer_cls is not None:
            if initial_state is not None:
                model.load_state_dict(initial_state)
            seen_ids = [c for s in protocol.sessions[: t + 1] for c in s]
            from .data import with_image_transform

            args = _session_args(config, session_dir, t)
            with user_input(DataError):  # the training split is loaded here
                if trainer_cls._train_data == "seen":
                    raw, ids = protocol.joint_train(t), seen_ids
                else:
                    raw, ids = protocol.session_train(t), list(protocol.sessions[t])
                train_name = f"{protocol.update_train.name}/{protocol.update_train.split}"
                raw = _checked(raw, train_name, config, skipped)
                train_ds = with_image_transform(raw, processor.image_processor, train=True, label_column="label",
                                                dataset_name=train_name, seed=args.seed,
                                                cache_dir=config.image_cache_dir,
                                                decode_on_device=config.decode_on_device)
            names = [protocol.class_names[i] for i in ids]
            set_seed(args.seed)
            extra_kwargs = {}
            if getattr(trainer_cls, "_accepts_distill_class_names", False):
                # LwF-style methods distil the logits of every class seen so far (as CL-CLIP's code does in MST).
                extra_kwargs["distill_class_names"] = [protocol.class_names[i] for i in seen_ids]
            if getattr(trainer_cls, "_uses_memory", False):
                # Rehearsal: the replay set and the exemplar memory of the earlier sessions (memory.json).
                from .methods.base.rehearsal import rehearsal_inputs

                extra_kwargs.update(rehearsal_inputs(protocol, processor, config, out, t))
            trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, processing_class=processor,
                                  class_names=names, class_ids=ids, **extra_kwargs)
            last = last_complete_checkpoint(args.output_dir)
            if last:
                logger.info("Resuming session %d from %s", t + 1, last)
            train_out = trainer.train(resume_from_checkpoint=last)
            model = trainer.model
            entry.update({"train_rows": len(train_ds), "train_loss": trainer.session_train_loss,
                          "train_steps": train_out.global_step})
            entry["eval"] = evaluator.evaluate(model, seen=t + 1)
            if getattr(trainer_cls, "_uses_memory", False):
                from .methods.base.rehearsal import update_memory

                results["memory"] = update_memory(model, protocol, processor, config, out, t, state)
            extra = trainer.extra_evaluations(lambda m, _t=t: evaluator.evaluate(m, seen=_t + 1))
            if extra:
                entry["extra"] = extra
            del trainer
        else:
            entry["eval"] = evaluator.evaluate(model, seen=t + 1)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        if state.is_main_process and trainer_cls is not None:
            _save_model(model, processor, session_dir / "model")
        state.wait_for_everyone()
        results["sessions"].append(entry)
        if t + 1 == config.num_sessions:
            results["status"] = "complete"
        save_results()
        if state.is_main_process:
            # The session's model is saved: its Trainer checkpoints (weights + optimizer) are no longer needed.
            for ckpt in (session_dir / "trainer").glob("checkpoint-*"):
                shutil.rmtree(ckpt, ignore_errors=True)
            if t > 0 and not config.save_session_models:
                shutil.rmtree(out / f"session_{t}" / "model", ignore_errors=True)

    if results["sessions"] and trainer_cls is not None:
        from .hub import method_defaults

        method_defaults(results["method"])  # on every rank: see its docstring
    if state.is_main_process and results["sessions"] and trainer_cls is not None:
        final = out / f"session_{config.num_sessions}" / "model"

        def copy_final(tmp: Path) -> None:
            for f in final.iterdir():
                shutil.copy2(f, tmp / f.name)
            from .hub import write_model_card

            write_model_card(tmp, results, config, command=read_json(out / "run.json").get("command"))

        atomic_save_dir(out / "model", copy_final)
    state.wait_for_everyone()
    results["status"] = "complete"
    return results
