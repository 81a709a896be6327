"""Floating-point operations of one step of every method, against FT and against the method's floor: the
deterministic side of the step-time table (`bench_steps.py`), with the same cases and the same floors.

Wall or CPU time on a shared machine moves by 10-30 % from one round to the next; the FLOPs of a step do not. They
count the matrix products and attention (`torch.utils.flop_counter.FlopCounterMode`), which are nearly all of a
CLIP step's arithmetic, so a method that recomputes something (the naive references' per-step teacher text calls, a
padded text call) shows it here exactly; what they miss is elementwise work and overheads (kernel launches, Python),
which only the timings see.

    python benchmarks/bench_flops.py --model vitb32 --batch-size 16
"""

from __future__ import annotations

import argparse

import bench_steps
import torch
from _common import (
    HelpFormatter,
    fmt_ratio,
    machine_info,
    markdown_table,
    pick_device,
    write_json,
)
from bench_steps import FLOORS
from torch.utils.flop_counter import FlopCounterMode


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bench(model_name: str, batch_size: int, device, methods: list[str], pool_size: int, log=print) -> dict:
    trainers, _, ref, pseudo, text_features = bench_steps.build_cases(model_name, device, "fp32", methods,
                                                                      pool_size, [batch_size])
    batch = bench_steps.fixed_batch(trainers["ft"].model, batch_size, device)
    cases = bench_steps.make_cases(trainers, ref, pseudo, text_features, batch)
    for fn in cases.values():  # first steps build optimizer state and caches (teacher class features, pools)
        fn()
    flops = {}
    for name, fn in cases.items():
        flops[name] = count(fn)
        log(f"[flops] {model_name} batch {batch_size} {name}: {flops[name] / 1e9:.2f} GFLOP")
    rows = {}
    for name, f in flops.items():
        row = {"gflop": f / 1e9, "vs_ft": f / flops["ft"]}
        parts = FLOORS.get(name)
        if parts and all(p in flops for p in parts):
            row["vs_floor"] = f / sum(flops[p] for p in parts)
        if name == "vr_lwf" and "teacher_pseudo_fwd" in flops:
            row["vs_floor_with_teacher_text"] = f / sum(flops[p] for p in FLOORS[name] + ["teacher_pseudo_fwd"])
        rows[name] = row
    return {"model": model_name, "batch_size": batch_size, "device": str(device), "rows": rows}


def table(res: dict) -> str:
    rows = []
    for name, r in res["rows"].items():
        note = ""
        if "vs_floor_with_teacher_text" in r:
            note = f"/(floor + teacher pseudo-text fwd) {r['vs_floor_with_teacher_text']:.3f}x"
        rows.append([name, f"{r['gflop']:.2f}", fmt_ratio(r["vs_ft"]),
                     "-" if "vs_floor" not in r else f"{r['vs_floor']:.3f}x", note])
    return (f"FLOPs per step (matrix products and attention), {res['model']}, batch {res['batch_size']}:\n"
            + markdown_table(["case", "GFLOP", "/FT", "/floor", "notes"], rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="tiny", choices=["tiny", "vitb32"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", nargs="+", default=bench_steps.DEFAULT_METHODS)
    p.add_argument("--pool-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    res = bench(a.model, a.batch_size, device, a.methods, a.pool_size)
    res["machine"] = machine_info(device)
    print(table(res))
    write_json(a.json, res)


if __name__ == "__main__":
    main()
