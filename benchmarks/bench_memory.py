"""Peak memory of every method relative to FT, at the same model and batch.

What is measured:
- CPU: every method runs in a fresh Python process that imports everything, then builds the model and the trainer
  (the trainer makes its own teacher, as in a real run) and runs two optimisation steps. The figure is the process's
  peak resident set size (`VmHWM` in `/proc/self/status`) minus its resident size right after the imports: weights,
  teacher, gradients, optimizer state and activations, as the allocator holds them.
- GPU: methods run one after another in this process; the figure is `torch.cuda.max_memory_allocated()` over
  building the trainer and two steps, starting from an empty device (tensor memory only, without the caching
  allocator's reserve).

A method name with the suffix `_gc` (`ft_gc`, `vr_lwf_gc`) runs that method with gradient checkpointing in the
student (`activation_checkpointing: true` in a recipe), the knob that trades recomputation for activation memory.

    python benchmarks/bench_memory.py --model vitb32 --batch-size 16 --methods ft lwf vr_lwf ft_gc vr_lwf_gc --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_METHODS = ["ft", "lwf", "vr_lwf", "vr_lwf_pool", "geodl", "zscl", "imm", "wise_ft", "rkr", "lora"]
# `<method>_gc`: the same with activation (gradient) checkpointing in the student (`activation_checkpointing: true`).
GC_SUFFIX = "_gc"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's peak resident size (`VmHWM`). Not `ru_maxrss`: Linux carries the parent's high-water mark
    across fork + exec into it, so a child of a big parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(method: str, model_name: str, batch_size: int, device, precision: str, pool_size: int) -> dict:
    """Build `method`'s trainer (own teacher) and run two steps; return memory figures."""
    import torch
    from _common import (
        StepRunner,
        build_model,
        free_memory,
        standalone_spec,
        standalone_step,
    )

    cuda = torch.device(device).type == "cuda"
    checkpointing = method.endswith(GC_SUFFIX)
    spec = standalone_spec(method[:-len(GC_SUFFIX)] if checkpointing else method, pool_size)
    if spec is None:
        return {"skipped": "not available"}
    StepRunner.reset()
    if cuda:
        free_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    model, processor = build_model(model_name)
    if checkpointing:  # what Trainer.train() does for `activation_checkpointing: true` with
        # `activation_checkpointing_kwargs: {use_reentrant: false}` (the steps here bypass train())
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    rss_model = _rss_mb()
    step = standalone_step(spec, model, processor, batch_size, device, precision)
    t0 = time.perf_counter()
    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    out = {"seconds_2_steps": time.perf_counter() - t0}
    if cuda:
        out["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        del step, model
        StepRunner.reset()
        free_memory(device)
        out["leftover_mb"] = (torch.cuda.memory_allocated(device) - base) / 2**20
    else:
        out["rss_after_model_mb"] = rss_model
    return out


def worker(argv) -> None:
    """Child process (CPU): import, record the resident size, run one method, print one JSON line."""
    import torch

    method, model_name, batch_size, precision, pool_size, threads = argv
    if int(threads):
        torch.set_num_threads(int(threads))
    import _common  # noqa: F401  (imports transformers and clip_cl)
    from _common import method_specs

    method_specs()  # import every method module before the baseline
    rss_import = _rss_mb()
    out = run_one(method, model_name, int(batch_size), torch.device("cpu"), precision, int(pool_size))
    out.update({"rss_after_import_mb": rss_import, "peak_rss_mb": _peak_rss_mb()})
    out["peak_mb"] = out["peak_rss_mb"] - rss_import
    print("RESULT " + json.dumps(out), flush=True)


def bench(model_name: str, batch_size: int, device, precision: str, methods: list[str], pool_size: int,
          threads: int = 0, jobs: int = 1, log=print) -> dict:
    import torch

    res = {"model": model_name, "device": str(device), "precision": precision, "batch_size": batch_size,
           "pool_size": pool_size, "rows": {}}
    cuda = torch.device(device).type == "cuda"
    res["what"] = ("torch.cuda.max_memory_allocated over trainer build + 2 steps" if cuda else
                   "peak RSS of a fresh process minus its RSS after imports (model, teacher, optimizer, activations)")
    def one(method: str) -> dict:
        if cuda:
            try:
                return run_one(method, model_name, batch_size, device, precision, pool_size)
            except Exception as err:
                return {"error": repr(err)[:1000]}
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, model_name, str(batch_size),
               precision, str(pool_size), str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            return {"error": (proc.stderr or proc.stdout)[-2000:]}
        return json.loads(lines[-1][len("RESULT "):])

    # CPU: `jobs` fresh processes at a time (each measures its own peak, so they may overlap); GPU: one by one.
    with ThreadPoolExecutor(max_workers=1 if cuda else max(1, jobs)) as pool:
        for method, row in zip(methods, pool.map(one, methods)):
            res["rows"][method] = row
            log(f"[memory] {model_name} batch {batch_size} {method}: "
                + (f"{row['peak_mb']:.0f} MB" if "peak_mb" in row else str(row)[:300]))
    ft = res["rows"].get("ft", {}).get("peak_mb")
    ft_gc = res["rows"].get("ft" + GC_SUFFIX, {}).get("peak_mb")
    for method, row in res["rows"].items():
        if ft and "peak_mb" in row:
            row["vs_ft"] = row["peak_mb"] / ft
        if ft_gc and "peak_mb" in row and method.endswith(GC_SUFFIX):
            row["vs_ft_gc"] = row["peak_mb"] / ft_gc
    if "vr_lwf" in res["rows"] and "vs_ft" in res["rows"]["vr_lwf"]:
        res["rows"]["vr_lwf"]["met"] = bool(res["rows"]["vr_lwf"]["vs_ft"] <= 1.25)
    return res


def table(res: dict) -> str:
    from _common import markdown_table

    rows = []
    for method, r in res["rows"].items():
        if "peak_mb" not in r:
            rows.append([method, "-", "-", "", str(r)[:80]])
            continue
        met = ("yes" if r["met"] else "NO") if "met" in r else ""
        notes = "<= 1.25 x FT" if "met" in r else ""
        if "vs_ft_gc" in r and not method.startswith("ft"):
            notes = f"{r['vs_ft_gc']:.2f}x ft{GC_SUFFIX}"
        rows.append([method, f"{r['peak_mb']:.0f}", f"{r.get('vs_ft', float('nan')):.2f}x", met, notes])
    return (f"peak memory, {res['model']}, batch {res['batch_size']}, {res['device']} {res['precision']} "
            f"({res['what']}):\n" + markdown_table(["method", "MB", "/FT", "met", "target / notes"], rows))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return worker(argv[1:])
    from _common import HelpFormatter, machine_info, pick_device, write_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="tiny", choices=["tiny", "vitb32"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--pool-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process on CPU (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="CPU: fresh processes measured at the same time")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    device = pick_device(a.device)
    res = bench(a.model, a.batch_size, device, a.precision, a.methods, a.pool_size, a.threads, a.jobs)
    res["machine"] = machine_info(device)
    print(table(res))
    write_json(a.json, res)


if __name__ == "__main__":
    main()
