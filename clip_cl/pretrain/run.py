"""`clip-cl pretrain` / `recipes/pretrain.py`: pretrain, evaluate on the held-out parts, save (and export) the model.

```
python recipes/prepare_world.py                                   # once: data/world/
python recipes/pretrain.py --config recipes/configs/pretrain.yaml # pretrain, evaluate, save, export
```
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_save_dir, atomic_write_json, atomic_write_text
from .config import PretrainConfig

__all__ = [
    "evaluate_pretrained",
    "export_model",
    "format_results",
    "main",
    "parse_pretrain_config",
    "run_pretrain",
    "world_model_card",
]

logger = logging.getLogger("clip_cl.pretrain")

RESULTS_FILE = "pretrain_results.json"


def parse_pretrain_config(argv: Sequence[str] | None = None, *, prog: str = "clip-cl pretrain") -> PretrainConfig:
    """Parse `--config file.yaml` plus command-line overrides (which win) into a [`PretrainConfig`].

    Args:
        argv (`Sequence[str]`, *optional*): the arguments (defaults to `sys.argv[1:]`).
        prog (`str`): program name shown in `--help`.

    Returns:
        [`PretrainConfig`]: the configuration.
    """
    import argparse
    import difflib

    from transformers import HfArgumentParser

    from ..cli import ConfigError, load_yaml_config

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    data = load_yaml_config(known.config) if known.config else {}
    valid = [f.name for f in fields(PretrainConfig) if f.init]
    unknown = [k for k in data if k not in valid]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"Unknown key(s) in {known.config}: {', '.join(hints)}. Run `{prog} --help` for the list.")
    parser = HfArgumentParser(PretrainConfig, prog=prog, description=(
        "Pretrain a small CLIP from scratch on the world's image-text data (recipes/prepare_world.py), then measure "
        "zero-shot accuracy and retrieval recall on the held-out parts. Options come from a YAML file (--config) and "
        "can be overridden here."))
    parser.add_argument("--config", default=None, help="YAML config file; command-line options override its keys.")
    parser.set_defaults(**data)  # YAML values become defaults, so explicit flags win
    for action in parser._actions:
        if action.dest in data:
            action.required = False
    args, remaining = parser.parse_known_args(rest)
    if remaining:
        raise ConfigError(f"Unknown option(s): {' '.join(remaining)}. Run `{prog} --help` for the list.")
    return PretrainConfig(**{k: v for k, v in vars(args).items() if k in valid})


def _eval_specs(config: PretrainConfig) -> tuple[list[dict], list[dict]]:
    from .world import world_spec

    zero_shot = config.zero_shot_datasets
    if zero_shot is None:
        zero_shot = [world_spec(config.world_dir, "cifar10_test"), world_spec(config.world_dir, "fashion_mnist_test")]
    retrieval = config.retrieval_datasets
    if retrieval is None:
        retrieval = [world_spec(config.world_dir, "pascal_heldout"), world_spec(config.world_dir, "coco_heldout")]
    if config.max_eval_samples is not None:
        zero_shot = [{**s, "max_samples": config.max_eval_samples} for s in zero_shot]
        retrieval = [{**s, "max_samples": config.max_eval_samples} for s in retrieval]
    return list(zero_shot), list(retrieval)


def evaluate_pretrained(model, processor, config: PretrainConfig) -> dict[str, Any]:
    """Zero-shot top-1/top-5 and retrieval recall of `model` on the configured (held-out) sets.

    Args:
        model (`CLIPModel`): the model.
        processor (`CLIPProcessor`): its processor (evaluation images go through `clip_cl.data`'s deterministic
            transform: bicubic resize of the short side, centre crop).
        config ([`PretrainConfig`]): reads `zero_shot_datasets`, `retrieval_datasets`, `zero_shot_templates`,
            `max_eval_samples` and `per_device_eval_batch_size`.

    Returns:
        `dict`: `{"zero_shot": {name: {"top1", "top5", "num_images"}}, "retrieval": {name: {"tr@1", ..., "ir@10",
        "num_images", "num_captions"}}, "seconds": float}` (percentages).
    """
    from ..data import DatasetSpec, class_names_of, load_spec, with_image_transform
    from ..evaluation import retrieval_eval, zero_shot_eval

    start = time.perf_counter()
    zero_shot_specs, retrieval_specs = _eval_specs(config)
    tokenizer = processor.tokenizer
    kw = {"batch_size": config.per_device_eval_batch_size, "image_processor": processor.image_processor}
    out: dict[str, Any] = {"zero_shot": {}, "retrieval": {}}
    for raw in zero_shot_specs:
        spec = DatasetSpec.from_dict(raw)
        ds = load_spec(spec, task="classification")
        names = class_names_of(ds, spec)
        ds = with_image_transform(ds, processor.image_processor, train=False, image_column=spec.image_column,
                                  label_column=spec.label_column, dataset_name=spec.name)
        out["zero_shot"][spec.name] = zero_shot_eval(model, tokenizer, ds, names, config.zero_shot_templates,
                                                     desc=f"zero-shot {spec.name}", **kw)
    for raw in retrieval_specs:
        spec = DatasetSpec.from_dict(raw)
        ds = load_spec(spec, task="retrieval")
        ds = with_image_transform(ds, processor.image_processor, train=False, image_column=spec.image_column,
                                  captions_column=spec.captions_column, dataset_name=spec.name)
        out["retrieval"][spec.name] = retrieval_eval(model, tokenizer, ds, desc=f"retrieval {spec.name}", **kw)
    out["seconds"] = time.perf_counter() - start
    return out


def format_results(results: dict[str, Any]) -> str:
    """The held-out numbers as a Markdown table (what `clip-cl pretrain` prints and the model card shows).

    Args:
        results (`dict`): the content of `pretrain_results.json` (or its `evaluation` part).

    Returns:
        `str`: one table for zero-shot classification and one for retrieval, percentages with 2 decimals.
    """
    ev = results.get("evaluation", results)
    lines = ["| zero-shot set | images | top-1 (%) | top-5 (%) |", "|---|---:|---:|---:|"]
    for name, r in ev["zero_shot"].items():
        lines.append(f"| {name} | {r['num_images']} | {r['top1']:.2f} | {r['top5']:.2f} |")
    lines += ["", "| retrieval set | images | captions | TR@1 | TR@5 | TR@10 | IR@1 | IR@5 | IR@10 |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in ev["retrieval"].items():
        lines.append(f"| {name} | {r['num_images']} | {r['num_captions']} | {r['tr@1']:.2f} | {r['tr@5']:.2f} | "
                     f"{r['tr@10']:.2f} | {r['ir@1']:.2f} | {r['ir@5']:.2f} | {r['ir@10']:.2f} |")
    return "\n".join(lines)


def world_model_card(results: dict[str, Any], config: PretrainConfig) -> str:
    """The `README.md` model card of an exported pretrained model, with the numbers of `results` as printed.

    Args:
        results (`dict`): the content of `pretrain_results.json`.
        config ([`PretrainConfig`]): the run's configuration.

    Returns:
        `str`: Markdown with YAML front matter: architecture, data and splits, training, held-out results, rebuild
        command.
    """
    from .world import load_world

    train, arch = results["train"], results["model"]
    world = load_world(config.world_dir)
    parts = "\n".join(f"| `{n}` | {p['role']} | {p['rows']} | {p.get('captions', '')} | {p['source']} |"
                      for n, p in world["parts"].items())
    v, t = arch["vision"], arch["text"]
    schedule = getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type)
    stopped = (" The time budget (`max_train_minutes`) stopped training before `max_steps`."
               if train.get("stopped_by_time_budget") else "")
    return f"""---
library_name: transformers
pipeline_tag: zero-shot-image-classification
tags: [clip, clip-cl, contrastive-pretraining]
---

# world-clip: a small CLIP pretrained from scratch on CPU

A {arch['num_parameters'] / 1e6:.2f}M-parameter `CLIPModel` with the real CLIP BPE tokenizer (49,408 tokens),
pretrained from scratch by `clip-cl` on the "world" of the project's shared data, so that continual-learning examples
start from a model that has something to lose. Weights are stored in {config.export_dtype}; `config.json` asks
`from_pretrained` for float32, so `clip_cl.models.load_clip("examples/models/world-clip")` returns a float32 model
ready to train. How it was made: `docs/pretraining.md`.

## Architecture

`clip_cl.models.tiny_clip(seed={config.seed}, **overrides)` with these overrides:

```json
{json.dumps(config.model_overrides(), indent=2)}
```

- Image tower: ViT, {v['image_size']} px input, {v['patch_size']} px patches, {v['num_hidden_layers']} layers of width
  {v['hidden_size']} (MLP {v['intermediate_size']}, {v['num_attention_heads']} heads).
- Text tower: {t['num_hidden_layers']} layers of width {t['hidden_size']} (MLP {t['intermediate_size']},
  {t['num_attention_heads']} heads), {t['max_position_embeddings']}-token context.
- Joint space: {arch['projection_dim']}-d. Parameters: {arch['num_parameters']:,}, of which
  {arch['token_embedding_parameters']:,} are the token embedding.

## Data and splits (seed {world['seed']}, `data/world/world.json`)

| part | role | images | captions | source |
|---|---|---:|---:|---|
{parts}

Classification images get class-name captions from {len(config.caption_templates)} templates (one drawn per image
each time it is read); Pascal and COCO images get one of their own captions. Repeats per epoch:
`{json.dumps(config.train_parts)}`. Loss: symmetric InfoNCE with a learnable temperature (clamped at
{config.max_logit_scale:g}), multi-positive {'on' if config.multi_positive else 'off'} (pairs naming the same class
are positives of each other). Fashion-MNIST is outside the world: it is the later update task.

## Training

{train['steps']} steps of {config.per_device_train_batch_size} pairs: AdamW (lr {config.learning_rate:g}, beta2
{config.adam_beta2:g}, weight decay {config.weight_decay:g}), {schedule} schedule with warm-up {config.warmup_steps:g},
seed {config.seed}, {results['machine']['cpu_threads']} CPU threads of a shared machine. Training took
{train['train_seconds'] / 60:.1f} min wall-clock ({train['seconds_per_step']:.2f} s/step); the whole run (cache,
training, evaluation, saving) {results['wall_clock_seconds'] / 60:.1f} min.{stopped} Final training loss (last
logging window): {train['final_loss']:.4f}; final temperature multiplier {train['logit_scale']:.2f}.

## Held-out results

Zero-shot: top-1 / top-5 accuracy (%) with the {len(config.zero_shot_templates)}-template ensemble
`{json.dumps(list(config.zero_shot_templates))}`. Retrieval: recall (%) with all captions of each image (TR: image to
text, IR: text to image).

{format_results(results)}

## Rebuild

From the repository root:

```
python recipes/prepare_world.py --source ../shared/data --out data/world
{results['command']}
```

Everything random is seeded (initialisation, data order, templates, crops and flips); floating-point reductions on
another machine or thread count can still move the numbers by a few tenths of a point.
"""


def export_model(model, processor, export_dir: str | Path, dtype: str = "float16", card: str | None = None) -> Path:
    """Write a compact copy of `model` (weights in `dtype`) that loads back as float32, with its processor.

    Args:
        model (`CLIPModel`): the model (left unchanged; a copy is cast).
        processor (`CLIPProcessor`): saved next to it.
        export_dir (`str` or `Path`): the folder (replaced atomically).
        dtype (`str`, defaults to `"float16"`): storage dtype of the weights.
        card (`str`, *optional*): written as `README.md`.

    Returns:
        `Path`: the folder.
    """
    def write(tmp: Path) -> None:
        copy.deepcopy(model).to(getattr(torch, dtype)).save_pretrained(tmp)
        processor.save_pretrained(tmp)
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        # transformers 5 loads a checkpoint in the dtype its config names ("auto"): ask for float32, so training and
        # evaluation start from full precision although the file stores half precision.
        for node in (config, config.get("text_config", {}), config.get("vision_config", {})):
            if "dtype" in node or node is config:
                node["dtype"] = "float32"
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp and safetensors create owner-only files; a shipped model is world-readable
        for file in tmp.iterdir():
            file.chmod(0o644)

    return atomic_save_dir(export_dir, write)


def _arch(model) -> dict[str, Any]:
    cfg = model.config
    return {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "token_embedding_parameters": model.text_model.embeddings.token_embedding.weight.numel(),
        "vision": {k: getattr(cfg.vision_config, k) for k in ("image_size", "patch_size", "hidden_size",
                                                               "intermediate_size", "num_hidden_layers",
                                                               "num_attention_heads")},
        "text": {k: getattr(cfg.text_config, k) for k in ("vocab_size", "max_position_embeddings", "hidden_size",
                                                           "intermediate_size", "num_hidden_layers",
                                                           "num_attention_heads")},
        "projection_dim": cfg.projection_dim,
    }


def run_pretrain(config: PretrainConfig, command: str | None = None) -> dict[str, Any]:
    """Pretrain a small CLIP as `config` says, evaluate it, save it and write `pretrain_results.json`.

    Args:
        config ([`PretrainConfig`]): the configuration.
        command (`str`, *optional*): the command line, recorded in the results and the model card.

    Returns:
        `dict`: the results (also in `<output_dir>/pretrain_results.json`).
    """
    from accelerate import PartialState
    from transformers import set_seed

    from ..models import tiny_clip
    from .data import PretrainCollator, WorldTrainDataset, load_train_parts
    from .trainer import CLIPPretrainTrainer, TimeBudgetCallback

    wall_start = time.perf_counter()
    if config.torch_num_threads is not None:
        torch.set_num_threads(int(config.torch_num_threads))
    set_seed(config.seed)
    model, processor = tiny_clip(seed=config.seed, **config.model_overrides())
    model.train()
    arch = _arch(model)
    logger.info("Model: %.2fM parameters (%.2fM token embedding); %s", arch["num_parameters"] / 1e6,
                arch["token_embedding_parameters"] / 1e6, json.dumps(config.model_overrides()))
    crop = model.config.vision_config.image_size
    cache_start = time.perf_counter()
    if not (Path(config.world_dir) / "world.json").is_file():
        from .world import prepare_world

        logger.info("%s holds no world.json: cutting the world from %s first", config.world_dir, config.world_source)
        prepare_world(config.world_source, config.world_dir)
    parts = load_train_parts(config.world_dir, config.train_parts, crop, config.cache_dir)
    cache_seconds = time.perf_counter() - cache_start
    dataset = WorldTrainDataset(parts, config.caption_templates)
    logger.info("Training pairs per epoch: %d (%s); cache ready in %.1fs", len(dataset), dataset.part_sizes(),
                cache_seconds)
    ip = processor.image_processor
    collator = PretrainCollator(processor.tokenizer, crop, ip.image_mean, ip.image_std, train=True)
    callbacks = []
    budget = TimeBudgetCallback(config.max_train_minutes) if config.max_train_minutes else None
    if budget is not None:
        callbacks.append(budget)
    trainer = CLIPPretrainTrainer(model=model, args=config, train_dataset=dataset, data_collator=collator,
                                  processing_class=processor, callbacks=callbacks)
    train_start = time.perf_counter()
    output = trainer.train()
    train_seconds = time.perf_counter() - train_start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model = trainer.model
    model.eval()
    evaluation = evaluate_pretrained(model, processor, config)
    results: dict[str, Any] = {
        "command": command or "",
        "model": arch,
        "train": {
            "steps": trainer.state.global_step,
            "planned_steps": config.max_steps,
            "stopped_by_time_budget": bool(budget and budget.stopped_at is not None),
            "batch_size": config.per_device_train_batch_size,
            "pairs_per_epoch": len(dataset),
            "parts": dataset.part_sizes(),
            "train_seconds": train_seconds,
            "seconds_per_step": train_seconds / max(1, trainer.state.global_step),
            "cache_seconds": cache_seconds,
            "final_loss": losses[-1] if losses else None,
            "mean_train_loss": output.training_loss,
            "logit_scale": float(model.logit_scale.detach().exp()),
            "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
        },
        "evaluation": evaluation,
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform()},
    }
    state = PartialState()
    if state.is_main_process:
        trainer.save_model(config.output_dir)  # safetensors + processor files
        results["wall_clock_seconds"] = time.perf_counter() - wall_start
        if config.export_dir:
            export_model(model, processor, config.export_dir, config.export_dtype, card=world_model_card(results, config))
            logger.info("Exported the model (%s) to %s", config.export_dtype, config.export_dir)
        results["wall_clock_seconds"] = time.perf_counter() - wall_start
        atomic_write_json(Path(config.output_dir) / RESULTS_FILE, results)
        atomic_write_text(Path(config.output_dir) / "pretrain_results.md", format_results(results) + "\n")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of `clip-cl pretrain` and `recipes/pretrain.py`."""
    from ..cli import ConfigError

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        datefmt="%H:%M:%S")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_pretrain_config(argv)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    command = "python recipes/pretrain.py " + " ".join(shlex.quote(a) for a in argv)
    results = run_pretrain(config, command=command.strip())
    print(format_results(results))
    print(f"steps {results['train']['steps']}, training {results['train']['train_seconds'] / 60:.1f} min, "
          f"whole run {results.get('wall_clock_seconds', 0) / 60:.1f} min; results in "
          f"{Path(config.output_dir) / RESULTS_FILE}")
    return results


if __name__ == "__main__":
    main()
