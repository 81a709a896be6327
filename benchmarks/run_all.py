"""Run every clip-cl benchmark and print the ratios, with whether each target of issue #7 is met.

    python benchmarks/run_all.py --quick            # CPU: every method on the tiny model, FT / LwF / VR-LwF on ViT-B/32
                                                    #      shapes (7 min 45 s on an idle 2-core machine)
    python benchmarks/run_all.py                    # CPU: every method on ViT-B/32 shapes at batch 16 (and 64 with
                                                    #      --batch-sizes 16 64): its ViT-B/32 entries took 34 min
                                                    #      (the step table 17 of them; batch 64 about 4x that)
    python benchmarks/run_all.py --gpu              # GPU: throughput/MFU, Trainer vs bare loop, every method, bf16

On CPU every timing uses one torch thread and this process's CPU time (`--threads 1`, the default), which other jobs
on the machine move far less than wall time (still 10-35 % between rounds on a 2-core VM: read the `spread` column).

Each benchmark also runs alone (`bench_steps.py`, `bench_flops.py`, `bench_memory.py`, `bench_eval.py`, `bench_gpu.py`,
`bench_gfk.py`; `--help`).
Results are written as JSON (and the printed tables as `summary.md`) under `--out`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_eval  # noqa: E402
import bench_memory  # noqa: E402
import bench_steps  # noqa: E402
import torch  # noqa: E402
from _common import HelpFormatter, machine_info, write_json  # noqa: E402

ALL = bench_steps.DEFAULT_METHODS
QUICK_VITB32 = ["ft", "lwf", "vr_lwf", "naive_lwf", "naive_vr_lwf"]
# Peak memory with gradient checkpointing in the student, the knob for VR-LwF's pseudo-text activations.
MEMORY_GC = ["ft_gc", "vr_lwf_gc"]


def plan(mode: str) -> list[tuple[str, dict]]:
    """(benchmark, keyword arguments) in the order they run."""
    if mode == "gpu":
        return [
            ("gpu", {"model_name": "vitb32", "batch_size": 256, "steps": 30, "warmup": 8, "num_images": 2048,
                     "workers": 6, "reps": 3}),
            ("steps", {"model_name": "vitb32", "batch_sizes": [64, 256], "precision": "bf16", "rounds": 7,
                       "warmup": 2, "inner": 3, "methods": ALL + ["geodl_host"], "pool_size": 10000}),
            ("memory", {"model_name": "vitb32", "batch_size": 256, "precision": "bf16",
                        "methods": bench_memory.DEFAULT_METHODS, "pool_size": 10000}),
            ("eval", {"model_name": "vitb32", "num_images": 1024, "batch_size": 256, "precision": "bf16",
                      "rounds": 3, "warmup": 1, "num_workers": [0, 6]}),
            ("profile", {"model_name": "vitb32", "batch_size": 256, "precision": "bf16",
                         "methods": ["ft", "geodl", "zscl", "vr_lwf"], "steps": 2, "eval_images": 512}),
            ("gfk", {}),
            ("steps", {"model_name": "vitb32", "batch_sizes": [256], "precision": "bf16", "rounds": 7, "warmup": 2,
                       "inner": 3, "methods": ["ft", "zscl", "zscl_no_l2", "ft_fused_adamw", "rkr", "lwf"],
                       "pool_size": 10000}),
            ("gpu", {"model_name": "vitb32", "batch_size": 256, "steps": 30, "warmup": 8, "num_images": 2048,
                     "workers": 0, "compile_only": True, "compile_methods": ["ft", "rkr"]}),
        ]
    quick = mode == "quick"
    return [
        ("steps", {"model_name": "tiny", "batch_sizes": [16, 64], "precision": "fp32", "rounds": 5 if quick else 11,
                   "warmup": 2, "inner": 3 if quick else 5, "methods": ALL, "pool_size": 1000}),
        ("memory", {"model_name": "tiny", "batch_size": 16, "precision": "fp32", "methods": bench_memory.DEFAULT_METHODS,
                    "pool_size": 1000}),
        ("eval", {"model_name": "tiny", "num_images": 256, "batch_size": 64, "precision": "fp32",
                  "rounds": 5 if quick else 7, "warmup": 1, "num_workers": [0]}),
        ("steps", {"model_name": "vitb32", "batch_sizes": [8] if quick else [16], "precision": "fp32",
                   "rounds": 2 if quick else 5, "warmup": 1, "inner": 1,
                   "methods": QUICK_VITB32 if quick else ALL, "pool_size": 1000}),
        ("memory", {"model_name": "vitb32", "batch_size": 16, "precision": "fp32",
                    "methods": ["ft", "lwf", "vr_lwf"] if quick else bench_memory.DEFAULT_METHODS + MEMORY_GC,
                    "pool_size": 1000}),
        ("eval", {"model_name": "vitb32", "num_images": 16 if quick else 64, "batch_size": 16 if quick else 32,
                  "precision": "fp32", "rounds": 2 if quick else 3, "warmup": 1, "num_workers": [0]}),
        ("gfk", {}),
        ("flops", {"model_name": "tiny", "batch_size": 16, "methods": ALL, "pool_size": 1000}),
    ] + ([] if quick else [
        ("flops", {"model_name": "vitb32", "batch_size": 16, "methods": ALL, "pool_size": 1000}),
    ])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CPU, short")
    mode.add_argument("--gpu", action="store_true", help="on the CUDA device")
    p.add_argument("--only", nargs="+", default=None, help="run only these entries of the plan (by index)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--jobs", type=int, default=2, help="CPU memory entries: fresh processes measured at once")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="batch sizes of the ViT-B/32 step entries (instead of the plan's)")
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/benchmarks")
    p.add_argument("--budget-s", type=float, default=None, help="skip the remaining entries after this many seconds")
    a = p.parse_args(argv)
    m = "gpu" if a.gpu else "quick" if a.quick else "full"
    device = torch.device("cuda" if m == "gpu" else "cpu")
    if m == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device.")
    if a.threads and m != "gpu":
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(device)
    print(f"[run_all] mode {m}, machine {info}", flush=True)
    tables, start = [], time.perf_counter()
    for i, (kind, kw) in enumerate(plan(m)):
        if a.only is not None and str(i) not in a.only:
            continue
        if a.budget_s is not None and time.perf_counter() - start > a.budget_s:
            print(f"[run_all] budget of {a.budget_s:.0f} s spent: skipping entry {i} ({kind})", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            res, text = run_entry(kind, kw, device, a)
        except Exception as err:  # one failing benchmark must not lose the others' results
            import traceback

            traceback.print_exc()
            res, text = {"error": repr(err)[:2000]}, f"entry {i} ({kind}) failed: {err!r}"[:2000]
        res["machine"], res["seconds"] = info, time.perf_counter() - t0
        write_json(out / f"{m}_{i}_{kind}.json", res)
        text += f"\n({kind} took {res['seconds']:.0f} s)"
        tables.append(text)
        print("\n" + text + "\n", flush=True)
        with open(out / f"summary_{m}.md", "w") as f:
            f.write(f"machine: {info}\n\n" + "\n\n".join(tables) + "\n")
    print(f"[run_all] done in {time.perf_counter() - start:.0f} s; tables in {out / f'summary_{m}.md'}")


def run_entry(kind: str, kw: dict, device, a):
    if kind == "steps":
        kw = dict(kw)
        if a.batch_sizes and kw["model_name"] == "vitb32":
            kw["batch_sizes"] = a.batch_sizes
        res = bench_steps.bench(kw.pop("model_name"), kw.pop("batch_sizes"), device, **kw)
        text = bench_steps.table(res)
    elif kind == "memory":
        kw = dict(kw)
        res = bench_memory.bench(kw.pop("model_name"), kw.pop("batch_size"), device,
                                 threads=0 if a.gpu else a.threads, jobs=a.jobs, **kw)
        text = bench_memory.table(res)
    elif kind == "eval":
        kw = dict(kw)
        res = bench_eval.bench(kw.pop("model_name"), kw.pop("num_images"), kw.pop("batch_size"), device, **kw)
        text = bench_eval.table(res)
    elif kind == "flops":
        import bench_flops

        kw = dict(kw)
        res = bench_flops.bench(kw.pop("model_name"), kw.pop("batch_size"), device, **kw)
        text = bench_flops.table(res)
    elif kind == "gfk":
        import bench_gfk

        res = bench_gfk.bench(device)
        text = bench_gfk.table(res)
    elif kind == "profile":
        import bench_profile

        kw = dict(kw)
        n_eval = kw.pop("eval_images", 0)
        res = {"steps": bench_profile.profile_steps(kw.pop("model_name"), kw.pop("batch_size"), device, **kw)}
        if n_eval:
            res["eval"] = bench_profile.profile_eval("vitb32", n_eval, 256, device, "bf16")
        text = "(profiles printed above and saved in the JSON)"
    else:
        import bench_gpu

        res = bench_gpu.bench(**kw)
        text = bench_gpu.table(res)
    return res, text


if __name__ == "__main__":
    main()
