"""`torch.profiler` tables of a few methods' steps (and of one evaluation), to explain a missed target.

    python benchmarks/bench_profile.py --model vitb32 --batch-size 16 --methods ft geodl zscl --steps 2
"""

from __future__ import annotations

import argparse

import torch
from _common import (
    HelpFormatter,
    StepRunner,
    build_model,
    free_memory,
    pick_device,
    standalone_spec,
    standalone_step,
    sync,
)
from torch.profiler import ProfilerActivity, profile


def profile_steps(model_name: str, batch_size: int, device, precision: str, methods: list[str], steps: int,
                  pool_size: int = 1000, row_limit: int = 15, log=print) -> dict:
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    out = {}
    for name in methods:
        spec = standalone_spec(name, pool_size)
        if spec is None:
            log(f"[profile] {name}: not a benchmarked method here (LoRA needs peft); skipped")
            continue
        StepRunner.reset()
        model, processor = build_model(model_name)
        step = standalone_step(spec, model, processor, batch_size, device, precision)
        for _ in range(2):
            step()
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            sync(device)
        text = prof.key_averages().table(sort_by=sort, row_limit=row_limit, max_name_column_width=60)
        out[name] = text
        log(f"[profile] {model_name} batch {batch_size} {name} ({steps} steps, sorted by {sort}):\n{text}")
        del step, model
        StepRunner.reset()
        free_memory(device)
    return out


def profile_eval(model_name: str, num_images: int, batch_size: int, device, precision: str, row_limit: int = 15,
                 log=print) -> str:
    from _common import CLASS_NAMES
    from bench_eval import CAPTION_TEMPLATES, Rows

    from clip_cl.evaluation import Evaluator

    model, processor = build_model(model_name)
    model.to(device).eval()
    size = int(model.config.vision_config.image_size)
    pixels = torch.randn(num_images, 3, size, size, generator=torch.Generator().manual_seed(0))
    captions = [[t.format(CLASS_NAMES[i % 10]) + f" {i}" for t in CAPTION_TEMPLATES] for i in range(num_images)]
    cuda = device.type == "cuda"
    ev = Evaluator(processor.tokenizer, zero_shot={"zs": (Rows(pixels, labels=[i % 10 for i in range(num_images)]),
                                                         CLASS_NAMES)},
                   retrieval={"rt": Rows(pixels, captions=captions)}, batch_size=batch_size,
                   autocast_dtype=torch.bfloat16 if cuda and precision == "bf16" else None, device=device,
                   disable_tqdm=True)
    ev.evaluate(model, seen=0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        ev.evaluate(model, seen=0)
        sync(device)
    text = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit, max_name_column_width=60)
    log(f"[profile] evaluate {model_name} {num_images} images x 2 sets (sorted by self CPU time):\n{text}")
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="tiny", choices=["tiny", "vitb32"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--methods", nargs="+", default=["ft", "lwf", "geodl", "zscl"])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--eval-images", type=int, default=0, help="also profile one evaluation on this many images")
    p.add_argument("--count-ops", action="store_true", help="only count the operators of one step per method")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.count_ops:
        return count_ops(a.model, a.batch_size, a.methods)
    device = pick_device(a.device)
    profile_steps(a.model, a.batch_size, device, a.precision, a.methods, a.steps)
    if a.eval_images:
        profile_eval(a.model, a.eval_images, a.batch_size, device, a.precision)



def count_ops(model_name: str, batch_size: int, methods: list[str], log=print) -> dict:
    """ATen operators dispatched by one step of each method (CPU; on GPU each is at least one kernel launch), as
    counted by `torch.profiler` (operators called by other operators are not counted twice)."""
    device = torch.device("cpu")
    out = {}
    for name in methods:
        spec = standalone_spec(name)
        if spec is None:
            log(f"[ops] {name}: not a benchmarked method here (LoRA needs peft); skipped")
            continue
        StepRunner.reset()
        model, processor = build_model(model_name)
        step = standalone_step(spec, model, processor, batch_size, device, "fp32")
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        top = [e for e in prof.events() if e.name.startswith("aten::") and not _has_aten_parent(e)]
        out[name] = len(top)
        log(f"[ops] {model_name} {name}: {len(top)} top-level ATen operators per step")
        del step, model
    StepRunner.reset()
    return out


def _has_aten_parent(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


if __name__ == "__main__":
    main()
