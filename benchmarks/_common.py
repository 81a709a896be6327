"""Shared pieces of the clip-cl benchmarks: models, a fixed in-memory batch, trainers built the same way for every
method, and a timer that runs cases round-robin and reports medians of per-round ratios.

Nothing here needs `datasets` (the device machine has none): batches are in-memory tensors and every trainer gets
an explicit `data_collator`.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# ViT-B/32 shapes (openai/clip-vit-base-patch32), randomly initialised: the timing of a step does not depend on the
# weights' values, only on the shapes.
VITB32 = {
    "vision_config": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                      "intermediate_size": 3072, "image_size": 224, "patch_size": 32},
    "text_config": {"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
                    "intermediate_size": 2048},
    "projection_dim": 512,
}
MODELS = {"tiny": {}, "vitb32": VITB32}

# A session of 10 classes (Fashion-MNIST's), the paper's training template.
CLASS_NAMES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot"]


def build_model(name: str, seed: int = 0):
    """`(model, processor)`: the tiny test CLIP or a ViT-B/32-shaped random CLIP (both with the real tokenizer)."""
    from clip_cl.models import tiny_clip

    return tiny_clip(seed=seed, **copy.deepcopy(MODELS[name]))


def image_size(model) -> int:
    return int(model.config.vision_config.image_size)


def fixed_batch(model, batch_size: int, device, num_classes: int = len(CLASS_NAMES), seed: int = 0,
                dtype=torch.float32) -> dict[str, torch.Tensor]:
    """One in-memory batch `{"pixel_values", "labels"}` on `device` (labels cycle over the classes)."""
    g = torch.Generator().manual_seed(seed)
    size = image_size(model)
    pixels = torch.randn(batch_size, 3, size, size, generator=g).to(device=device, dtype=dtype)
    labels = torch.arange(batch_size) % num_classes
    return {"pixel_values": pixels, "labels": labels.to(device)}


def collate(rows):
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long)}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def machine_info(device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": torch.cuda.get_device_name(device), "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "cuda": torch.version.cuda})
    return info


# ---------------------------------------------------------------------------------------------------------- timing
@dataclass
class Timings:
    """Seconds per call of every case, one entry per round (all cases ran once per round, interleaved)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, num: str | Sequence[str], den: str | Sequence[str]) -> float:
        """Median over rounds of `sum(num) / sum(den)` measured in the same round."""
        num = [num] if isinstance(num, str) else list(num)
        den = [den] if isinstance(den, str) else list(den)
        rounds = len(self.seconds[num[0]])
        values = [sum(self.seconds[n][r] for n in num) / sum(self.seconds[d][r] for d in den) for r in range(rounds)]
        return statistics.median(values)

    def spread(self, name: str) -> float:
        """(max - min) / median of a case's rounds: how noisy the machine was."""
        v = self.seconds[name]
        return (max(v) - min(v)) / statistics.median(v)


def default_clock(device) -> str:
    """`"process"` on CPU (this process's CPU time: on a machine shared with other jobs it counts only the cycles this
    process ran, so other jobs barely move it; meaningful with `--threads 1`), `"wall"` on GPU."""
    return "wall" if torch.device(device).type == "cuda" else "process"


def run_interleaved(cases: dict[str, Callable[[], Any]], rounds: int, warmup: int, device, inner: int = 1,
                    log: Callable[[str], None] | None = print, clock: str | None = None) -> Timings:
    """Run every case `warmup` times, then `rounds` rounds in which every case runs `inner` times back to back
    (timed together, per-call mean recorded). The order inside a round rotates, so no case always follows the same
    one; slow drifts of a shared machine hit every case of a round alike, which is what per-round ratios cancel.
    `clock`: `"wall"` (`time.perf_counter`, after synchronising the device) or `"process"` (`time.process_time`),
    by default [`default_clock`]."""
    now = time.process_time if (clock or default_clock(device)) == "process" else time.perf_counter
    names = list(cases)
    for w in range(warmup):
        for name in list(names):
            try:
                cases[name]()
            except Exception as err:  # a case that cannot run is dropped, not the whole benchmark
                if w or not log:
                    raise
                log(f"  case {name} failed in warm-up and is dropped: {err!r}"[:600])
                names.remove(name)
    sync(device)
    out = Timings({n: [] for n in names})
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            t0 = now()
            for _ in range(inner):
                cases[name]()
            sync(device)
            out.seconds[name].append((now() - t0) / inner)
        if log:
            log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {1000 * out.seconds[n][-1]:.0f} ms" for n in names))
    return out


def free_memory(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------- trainers
def base_args(device, batch_size: int, precision: str, output_dir: str | None = None) -> dict[str, Any]:
    """TrainingArguments shared by every method of a benchmark (the methods' own defaults otherwise)."""
    cuda = torch.device(device).type == "cuda"
    return {"output_dir": output_dir or tempfile.mkdtemp(prefix="clip_cl_bench_"),
            "per_device_train_batch_size": batch_size, "use_cpu": not cuda,
            "bf16": cuda and precision == "bf16", "report_to": "none", "save_strategy": "no",
            "disable_tqdm": True, "logging_steps": 10_000, "seed": 0, "learning_rate": 1e-6,
            "dataloader_pin_memory": False}


def method_specs() -> dict[str, tuple[Any, Any, dict[str, Any]]]:
    """name -> (config class, trainer class, config overrides) of every method benchmarked."""
    from clip_cl.methods.ft import CLIPFineTuneTrainer, FTConfig
    from clip_cl.methods.geodl import GeoDLConfig, GeoDLTrainer
    from clip_cl.methods.imm import IMMConfig, IMMTrainer
    from clip_cl.methods.lwf import LwFConfig, LwFTrainer
    from clip_cl.methods.rkr import RKRConfig, RKRTrainer
    from clip_cl.methods.vr_lwf import VRLwFConfig, VRLwFTrainer
    from clip_cl.methods.wise_ft import WiSEFTConfig, WiSEFTTrainer
    from clip_cl.methods.zscl import ZSCLConfig, ZSCLTrainer

    from clip_cl.methods.agem import AGEMConfig, AGEMTrainer
    from clip_cl.methods.er import ERConfig, ERTrainer
    from clip_cl.methods.gem import GEMConfig, GEMTrainer

    # Rehearsal methods get their replay pairs as a trainer argument (`replay_rows`); MST with a memory passes their
    # config check without a replay_dataset spec (no memory exists in a benchmark's first session).
    rehearsal = {"protocol": "mst", "num_sessions": 2}
    specs = {
        "ft": (FTConfig, CLIPFineTuneTrainer, {}),
        "er": (ERConfig, ERTrainer, rehearsal),
        "agem": (AGEMConfig, AGEMTrainer, rehearsal),
        "gem": (GEMConfig, GEMTrainer, rehearsal),
        "lwf": (LwFConfig, LwFTrainer, {}),
        "vr_lwf": (VRLwFConfig, VRLwFTrainer, {}),
        "vr_lwf_pool": (VRLwFConfig, VRLwFTrainer, {"vr_pool_size": None}),  # size set by the caller
        "geodl": (GeoDLConfig, GeoDLTrainer, {}),
        "zscl": (ZSCLConfig, ZSCLTrainer, {}),
        "imm": (IMMConfig, IMMTrainer, {}),
        "wise_ft": (WiSEFTConfig, WiSEFTTrainer, {}),
        "rkr": (RKRConfig, RKRTrainer, {}),
    }
    # VR-LwF's student text path as it was (one padded call), and with the pseudo-texts' layers recomputed.
    from naive import VRLwFOneCallTrainer

    specs["vr_lwf_one_call"] = (VRLwFConfig, VRLwFOneCallTrainer, {})
    specs["vr_lwf_recompute"] = (VRLwFConfig, VRLwFTrainer, {"vr_recompute_pseudo_texts": True})
    try:
        from clip_cl.methods.lora import LoRAConfig, LoRATrainer
        from clip_cl.methods.lora.config import require_peft

        require_peft()
        specs["lora"] = (LoRAConfig, LoRATrainer, {})
    except Exception:  # peft missing: LoRA is optional
        pass
    return specs


# Methods that change the model's modules (adapters): they get their own copy of the model.
REPLAY_METHODS = {"er", "agem", "gem"}


def replay_rows(model, num: int, seed: int = 1) -> list[dict[str, Any]]:
    """In-memory replay pairs `{"pixel_values", "captions"}` for the rehearsal methods (random pixels, class
    captions): the benchmark measures compute, not image decoding."""
    g = torch.Generator().manual_seed(seed)
    size = image_size(model)
    return [{"pixel_values": torch.randn(3, size, size, generator=g),
             "captions": [f"a photo of a {CLASS_NAMES[i % len(CLASS_NAMES)]} seen from the side, number {i}"]}
            for i in range(num)]


OWN_MODEL = {"rkr", "lora", "ft_fused_adamw"}
TEACHER_METHODS = {"lwf", "vr_lwf", "vr_lwf_pool", "vr_lwf_one_call", "vr_lwf_recompute", "geodl", "geodl_host", "zscl", "zscl_no_l2", "naive_lwf",
                   "naive_vr_lwf"}


def make_trainer(config_cls, trainer_cls, model, processor, args: dict[str, Any], teacher=None, **trainer_kwargs):
    config = config_cls(**args)
    kwargs = {"teacher_model": teacher} if teacher is not None else {}
    return trainer_cls(model=model, args=config, processing_class=processor, class_names=CLASS_NAMES,
                       data_collator=collate, **kwargs, **trainer_kwargs)


class StepRunner:
    """One optimisation step through a trainer's real path: `training_step` (forward, loss, backward under the
    trainer's accelerator), gradient clipping, `optimizer.step()`, `zero_grad` -- the same for every method.

    Trainers that share a model object also share one optimizer (the same parameters, so the same optimizer work).
    The model is prepared once by accelerate (mixed-precision autocast on GPU), as `Trainer.train` does.
    """

    _prepared: dict[int, torch.nn.Module] = {}
    _optimizers: dict[int, torch.optim.Optimizer] = {}

    def __init__(self, trainer, batch: dict[str, torch.Tensor]):
        self.trainer = trainer
        self.batch = batch
        key = id(trainer.model)
        if key not in StepRunner._prepared:
            StepRunner._prepared[key] = trainer.accelerator.prepare_model(trainer.model)
            StepRunner._optimizers[key] = trainer.create_optimizer()
        else:
            trainer.optimizer = StepRunner._optimizers[key]
        self.model = StepRunner._prepared[key]
        self.optimizer = StepRunner._optimizers[key]
        self.params = [p for p in trainer.model.parameters() if p.requires_grad]
        # Set by Trainer.train() for every step; one micro-batch per step here.
        trainer.current_gradient_accumulation_steps = 1

    @classmethod
    def reset(cls) -> None:
        cls._prepared.clear()
        cls._optimizers.clear()

    def __call__(self) -> None:
        tr = self.trainer
        tr.training_step(self.model, self.batch)
        if tr.args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, tr.args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def standalone_spec(name: str, pool_size: int = 1000) -> tuple[Any, Any, dict[str, Any]] | None:
    """`(config class, trainer class, overrides)` of `name` run on its own (building its own teacher), or None when
    the method is not available. ZSCL then distils from a copy of the student, like the other methods' teachers."""
    specs = method_specs()
    if name not in specs:
        return None
    config_cls, trainer_cls, overrides = specs[name]
    overrides = dict(overrides)
    if name == "vr_lwf_pool":
        overrides["vr_pool_size"] = pool_size
    if name == "zscl":
        overrides["zscl_teacher"] = "previous"
    return config_cls, trainer_cls, overrides


def standalone_step(spec: tuple[Any, Any, dict[str, Any]], model, processor, batch_size: int, device,
                    precision: str) -> StepRunner:
    """A [`StepRunner`] of a fresh trainer of `spec` ([`standalone_spec`]) on `model` and a fixed batch."""
    config_cls, trainer_cls, overrides = spec
    trainer = make_trainer(config_cls, trainer_cls, model, processor,
                           {**base_args(device, batch_size, precision), **overrides})
    return StepRunner(trainer, fixed_batch(trainer.model, batch_size, device))


# ---------------------------------------------------------------------------------------------------------- output
class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """`--help` of the benchmark scripts: the module docstring as written, and every option's default (also of the
    options without a help text, which argparse would otherwise list bare)."""

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is None and action.option_strings:
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        super().add_argument(action)



def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else (f"{1000 * x:.0f}" if x >= 0.1 else f"{1000 * x:.1f}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike | None, payload: dict) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
