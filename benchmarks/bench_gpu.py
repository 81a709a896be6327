"""GPU only: FT throughput and model FLOPs utilisation on a ViT-B/32-shaped CLIP in bf16, and the Trainer's step
against a bare PyTorch loop on the same model, data and optimizer.

- `matmul`: an 8192^3 bf16 matrix product, the card's practical ceiling (measured in the same run).
- `trainer`: `CLIPFineTuneTrainer.train()` for `--steps` steps (the first `--warmup` untimed); images/s and MFU =
  model FLOPs per step (counted once with `torch.utils.flop_counter.FlopCounterMode` over forward + backward) /
  step time / peak.
- `bare`: the same FT loss written as a plain loop (autocast bf16, backward, clip, AdamW of the same class and
  arguments as the Trainer's, zero_grad), same DataLoader.
- data placement: the rows live on the GPU (so only the training step is timed), or on the host (fp32 tensors,
  pinned, `dataloader_num_workers` workers) to see whether the input pipeline keeps the model fed.
- `compile`: the Trainer with `torch_compile=True` (optional, `--compile`).
- JPEG input (CUDA only; skipped on CPU): the Trainer on COCO-sized JPEG rows (640x480, quality 90) through
  `clip_cl.data.with_image_transform(train=True)`, decoded by the loader's workers on the host
  (`trainer_jpeg_host_decode`) or left encoded and decoded on the GPU with nvjpeg (`decode_on_device=True`,
  `trainer_jpeg_device_decode`); same workers, pinning and model. `--decode-only` runs just these two rows.

    python benchmarks/bench_gpu.py --batch-size 256 --steps 30
    python benchmarks/bench_gpu.py --decode-only --batch-size 256 --steps 30 --workers 6
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import (
    CLASS_NAMES,
    HelpFormatter,
    base_args,
    build_model,
    collate,
    free_memory,
    machine_info,
    markdown_table,
    sync,
    write_json,
)

H100_SXM_BF16_DENSE_TFLOPS = 989.4  # NVIDIA datasheet, dense (no sparsity)


class Rows(torch.utils.data.Dataset):
    def __init__(self, pixels, num_classes):
        self.pixels, self.num_classes = pixels, num_classes

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i], "labels": i % self.num_classes}


def matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e12


class StepClock:
    """Trainer callback: wall time from the start of step `warmup` to the end of training (synchronised)."""

    def __init__(self, warmup: int, device="cuda"):
        from transformers import TrainerCallback

        clock = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == warmup:
                    sync(device)
                    clock.t0 = time.perf_counter()

            def on_train_end(self, args, state, control, **kw):
                sync(device)
                clock.t1 = time.perf_counter()

        self.callback = _CB()
        self.t0 = self.t1 = None


def run_trainer(model_name, batch_size, steps, warmup, data, workers, pin, compile_=False, device="cuda",
                method="ft", data_collator=collate, decode_on_device=False):
    from _common import method_specs

    config_cls, trainer_cls, overrides = method_specs()[method]
    model, processor = build_model(model_name)
    args = base_args(device, batch_size, "bf16")
    args.update({"max_steps": steps, "dataloader_num_workers": workers, "dataloader_pin_memory": pin,
                 "torch_compile": compile_, "dataloader_persistent_workers": workers > 0,
                 "decode_on_device": decode_on_device, **overrides})
    clock = StepClock(warmup, device)
    tr = trainer_cls(model=model, args=config_cls(**args), train_dataset=data, processing_class=processor,
                     class_names=CLASS_NAMES, data_collator=data_collator, callbacks=[clock.callback])
    t = time.perf_counter()
    tr.train()
    total = time.perf_counter() - t
    step_s = (clock.t1 - clock.t0) / (steps - warmup)
    del tr, model
    free_memory(device)
    return {"step_s": step_s, "images_per_s": batch_size / step_s, "total_s": total}


def run_bare(model_name, batch_size, steps, warmup, data, workers, pin, device="cuda"):
    """The FT step as a plain PyTorch loop: same model, loss, optimizer class and arguments, DataLoader."""
    import torch.nn.functional as F
    from transformers import Trainer

    from clip_cl.features import tokenize
    from clip_cl.methods.ft import FTConfig
    from clip_cl.prompts import format_prompts

    model, processor = build_model(model_name)
    model.to(device).train()
    from clip_cl.variants import apply_variant

    apply_variant(model, "WM")  # the same trainable parameters as the Trainer
    config = FTConfig(**base_args(device, batch_size, "bf16"))
    opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(config, model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = opt_cls(params, **opt_kwargs)
    tokens = tokenize(processor.tokenizer, format_prompts(CLASS_NAMES, config.train_templates), device)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                         num_workers=workers, pin_memory=pin, drop_last=True,
                                         persistent_workers=workers > 0)
    it, done = iter(loader), 0
    t0 = None
    while done < steps:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        if done == warmup:
            sync(device)
            t0 = time.perf_counter()
        pixels = batch["pixel_values"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        cuda = torch.device(device).type == "cuda"
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cuda):
            out = model(pixel_values=pixels, **tokens)
            logits = model.logit_scale.exp() * out.image_embeds @ out.text_embeds.t()
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done += 1
    sync(device)
    step_s = (time.perf_counter() - t0) / (steps - warmup)
    del model, opt
    free_memory(device)
    return {"step_s": step_s, "images_per_s": batch_size / step_s}


def jpeg_rows(num_images: int, height: int = 480, width: int = 640, unique: int = 64, seed: int = 0):
    """A `datasets.Dataset` of COCO-sized JPEGs (quality 90; smooth colour gradients plus noise, so they compress
    like photographs rather than like noise), `unique` distinct images cycled over `num_images` rows, labels cycling
    over the benchmark's classes."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    images = []
    for _ in range(unique):
        phase = rng.uniform(0, 2 * np.pi, 3)
        base = np.stack([127 + 100 * np.sin(x / (40 + 30 * k) + y / (60 + 20 * k) + phase[k]) for k in range(3)], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": images[i % unique], "path": None} for i in range(num_images)],
         "label": [i % len(CLASS_NAMES) for i in range(num_images)]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))


def bench_decode(model_name, batch_size, steps, warmup, num_images, workers, device="cuda", log=print,
                 image_hw: tuple[int, int] = (480, 640)) -> dict:
    """`Trainer.train()` on JPEG rows (`image_hw` pixels) decoded by the loader's workers (host) vs on `device`
    (`decode_on_device`): `{run name: [run]}`. Meant for CUDA (nvjpeg); on CPU both rows use the same decoder (a
    smoke test only)."""
    from clip_cl.data import collate_classification, with_image_transform

    raw = jpeg_rows(num_images, *image_hw, unique=min(64, num_images))
    image_processor = build_model(model_name)[1].image_processor
    pin = torch.device(device).type == "cuda"
    runs = {}
    for name, flag in (("trainer_jpeg_host_decode", False), ("trainer_jpeg_device_decode", True)):
        data = with_image_transform(raw, image_processor, train=True, label_column="label", decode_on_device=flag)
        runs[name] = [run_trainer(model_name, batch_size, steps, warmup, data, workers, pin, device=device,
                                  data_collator=collate_classification, decode_on_device=flag)]
        log(f"[gpu] JPEG rows, {'device' if flag else 'host'} decode ({workers} workers): "
            f"{runs[name][0]['step_s'] * 1000:.1f} ms/step, {runs[name][0]['images_per_s']:.0f} images/s")
    return runs


DECODE_SKIPPED = "JPEG decode rows skipped: they need a CUDA device (on CPU, device decoding is the host decoder)"


def count_flops(model_name, batch_size, device="cuda") -> float:
    """Model FLOPs of one FT training step (forward + backward of both towers), counted by PyTorch."""
    from _common import StepRunner, fixed_batch, make_trainer
    from torch.utils.flop_counter import FlopCounterMode

    from clip_cl.methods.ft import CLIPFineTuneTrainer, FTConfig

    StepRunner.reset()
    model, processor = build_model(model_name)
    tr = make_trainer(FTConfig, CLIPFineTuneTrainer, model, processor, base_args(device, batch_size, "bf16"))
    step = StepRunner(tr, fixed_batch(tr.model, batch_size, device))
    step()
    counter = FlopCounterMode(display=False)
    with counter:
        tr.training_step(step.model, step.batch)
    flops = float(counter.get_total_flops())
    del step, tr, model
    StepRunner.reset()
    free_memory(device)
    return flops


def bench(model_name: str, batch_size: int, steps: int, warmup: int, num_images: int, workers: int,
          compile_: bool = False, device="cuda", compile_only: bool = False, reps: int = 3,
          compile_methods=("ft", "rkr"), log=print, decode_only: bool = False) -> dict:
    res = {"model": model_name, "batch_size": batch_size, "steps": steps, "warmup": warmup}
    if compile_only:
        return bench_compile(res, model_name, batch_size, steps, warmup, num_images, device, log, compile_methods)
    cuda = torch.device(device).type == "cuda"
    if decode_only and not cuda:
        log(f"[gpu] {DECODE_SKIPPED}")
        return {**res, "decode_skipped": DECODE_SKIPPED, "runs": {}, "summary": {}}
    res["matmul_tflops"] = matmul_tflops() if cuda and not decode_only else float("nan")
    log(f"[gpu] bf16 matmul 8192^3: {res['matmul_tflops']:.0f} TFLOP/s")
    res["flops_per_step"] = count_flops(model_name, batch_size, device)
    log(f"[gpu] FT step FLOPs at batch {batch_size}: {res['flops_per_step'] / 1e12:.2f} TFLOP")
    if decode_only:
        return _summarise(res, bench_decode(model_name, batch_size, steps, warmup, num_images, workers, device, log),
                          batch_size)
    size = int(build_model(model_name)[0].config.vision_config.image_size)
    g = torch.Generator().manual_seed(0)
    host = torch.randn(num_images, 3, size, size, generator=g)
    on_gpu = Rows(host.to(device), len(CLASS_NAMES))
    on_host = Rows(host, len(CLASS_NAMES))
    runs = {}
    # Trainer and bare loop alternate, `reps` times each, so drifts hit both.
    for rep in range(reps):
        runs.setdefault("trainer_gpu_data", []).append(run_trainer(model_name, batch_size, steps, warmup, on_gpu, 0,
                                                                   False, device=device))
        runs.setdefault("bare_gpu_data", []).append(run_bare(model_name, batch_size, steps, warmup, on_gpu, 0, False,
                                                             device=device))
        log(f"[gpu] rep {rep}: trainer {runs['trainer_gpu_data'][-1]['step_s'] * 1000:.1f} ms, "
            f"bare {runs['bare_gpu_data'][-1]['step_s'] * 1000:.1f} ms")
    pin = device == "cuda"
    runs["trainer_host_data"] = [run_trainer(model_name, batch_size, steps, warmup, on_host, workers, pin,
                                             device=device)]
    runs["bare_host_data"] = [run_bare(model_name, batch_size, steps, warmup, on_host, workers, pin, device=device)]
    log(f"[gpu] host data ({workers} workers, pinned): trainer {runs['trainer_host_data'][0]['step_s'] * 1000:.1f} ms,"
        f" bare {runs['bare_host_data'][0]['step_s'] * 1000:.1f} ms")
    if cuda:
        runs.update(bench_decode(model_name, batch_size, steps, warmup, num_images, workers, device, log))
    else:
        res["decode_skipped"] = DECODE_SKIPPED
        log(f"[gpu] {DECODE_SKIPPED}")
    if compile_:
        try:
            runs["trainer_gpu_data_compile"] = [run_trainer(model_name, batch_size, steps, warmup + 3, on_gpu, 0,
                                                            False, compile_=True, device=device)]
            log(f"[gpu] compiled trainer {runs['trainer_gpu_data_compile'][0]['step_s'] * 1000:.1f} ms "
                f"(total incl. compilation {runs['trainer_gpu_data_compile'][0]['total_s']:.0f} s)")
        except Exception as err:  # compilation is optional
            runs["trainer_gpu_data_compile_error"] = repr(err)[:500]
            log(f"[gpu] torch.compile failed: {err!r}"[:500])
    return _summarise(res, runs, batch_size)


def _summarise(res: dict, runs: dict, batch_size: int) -> dict:
    res["runs"] = runs
    summary = {}
    for name, rs in runs.items():
        if not isinstance(rs, list):
            continue
        step_s = sorted(r["step_s"] for r in rs)[len(rs) // 2]
        tflops = res["flops_per_step"] / step_s / 1e12
        summary[name] = {"step_ms": 1000 * step_s, "images_per_s": batch_size / step_s, "model_tflops": tflops,
                         "mfu_datasheet": tflops / H100_SXM_BF16_DENSE_TFLOPS,
                         "mfu_measured_matmul": tflops / res["matmul_tflops"]}
    if "trainer_gpu_data" in summary and "bare_gpu_data" in summary:
        res["trainer_over_bare"] = summary["trainer_gpu_data"]["step_ms"] / summary["bare_gpu_data"]["step_ms"]
    if "trainer_host_data" in summary and "bare_host_data" in summary:
        res["trainer_over_bare_host"] = summary["trainer_host_data"]["step_ms"] / summary["bare_host_data"]["step_ms"]
    if "trainer_jpeg_host_decode" in summary and "trainer_jpeg_device_decode" in summary:
        res["device_over_host_decode"] = (summary["trainer_jpeg_device_decode"]["images_per_s"]
                                          / summary["trainer_jpeg_host_decode"]["images_per_s"])
    res["summary"] = summary
    return res


def bench_compile(res, model_name, batch_size, steps, warmup, num_images, device, log,
                  methods=("ft", "rkr")) -> dict:
    """Each method's `Trainer.train()` eager and with `torch_compile=True` (compilation counted apart)."""
    size = int(build_model(model_name)[0].config.vision_config.image_size)
    data = Rows(torch.randn(num_images, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device),
                len(CLASS_NAMES))
    runs = {}
    for method in methods:
        runs[f"{method}_eager"] = [run_trainer(model_name, batch_size, steps, warmup, data, 0, False, device=device,
                                               method=method)]
        log(f"[gpu] eager {method} {runs[f'{method}_eager'][0]['step_s'] * 1000:.1f} ms")
        try:
            runs[f"{method}_compiled"] = [run_trainer(model_name, batch_size, steps, warmup + 3, data, 0, False,
                                                      compile_=True, device=device, method=method)]
            log(f"[gpu] compiled {method} {runs[f'{method}_compiled'][0]['step_s'] * 1000:.1f} ms "
                f"(whole train() incl. compilation {runs[f'{method}_compiled'][0]['total_s']:.0f} s)")
        except Exception as err:  # compilation is optional
            res[f"{method}_compile_error"] = repr(err)[:1000]
            log(f"[gpu] torch.compile of {method} failed: {err!r}"[:1000])
    res["runs"] = runs
    res["summary"] = {k: {"step_ms": 1000 * v[0]["step_s"], "images_per_s": batch_size / v[0]["step_s"],
                          "total_s": v[0]["total_s"]} for k, v in runs.items()}
    ft = res["summary"]
    for method in methods:
        for mode in ("eager", "compiled"):
            if f"{method}_{mode}" in ft and f"ft_{mode}" in ft:
                ft[f"{method}_{mode}"]["vs_ft_same_mode"] = ft[f"{method}_{mode}"]["step_ms"] / ft[f"ft_{mode}"]["step_ms"]
        if f"{method}_compiled" in ft:
            ft[f"{method}_compiled"]["vs_own_eager"] = (ft[f"{method}_compiled"]["step_ms"]
                                                        / ft[f"{method}_eager"]["step_ms"])
    return res


def table(res: dict) -> str:
    if "flops_per_step" not in res and "decode_skipped" in res:  # --decode-only on CPU
        return res["decode_skipped"]
    if "flops_per_step" not in res:  # compile comparison
        rows = [[k, f"{v['step_ms']:.1f}", f"{v['images_per_s']:.0f}", f"{v['total_s']:.0f}",
                 f"{v['vs_ft_same_mode']:.2f}x" if "vs_ft_same_mode" in v else "",
                 f"{v['vs_own_eager']:.2f}x" if "vs_own_eager" in v else ""]
                for k, v in res["summary"].items()]
        out = (f"torch.compile, {res['model']} bf16, batch {res['batch_size']}:\n"
               + markdown_table(["run", "ms/step", "images/s", "whole train() s (incl. compilation)",
                                 "/FT (same mode)", "compiled/eager"], rows))
        errors = [f"{k}: {v}" for k, v in res.items() if k.endswith("_compile_error")]
        if errors:
            out += "\n" + "\n".join(errors)
        return out
    rows = [[name, f"{s['step_ms']:.1f}", f"{s['images_per_s']:.0f}", f"{s['model_tflops']:.0f}",
             f"{100 * s['mfu_datasheet']:.1f}%", f"{100 * s['mfu_measured_matmul']:.1f}%"]
            for name, s in res["summary"].items()]
    out = (f"FT on GPU, {res['model']} bf16, batch {res['batch_size']} ({res['flops_per_step'] / 1e12:.2f} TFLOP per "
           f"step; bf16 matmul ceiling measured {res['matmul_tflops']:.0f} TFLOP/s, datasheet "
           f"{H100_SXM_BF16_DENSE_TFLOPS:.0f}):\n"
           + markdown_table(["run", "ms/step", "images/s", "TFLOP/s", "MFU (datasheet)", "MFU (measured matmul)"],
                            rows))
    if "trainer_over_bare" in res:
        out += f"\nTrainer step / bare PyTorch loop (data on GPU): {res['trainer_over_bare']:.3f}x"
    if "trainer_over_bare_host" in res:
        out += f"\nTrainer step / bare PyTorch loop (data on host): {res['trainer_over_bare_host']:.3f}x"
    if "device_over_host_decode" in res:
        out += (f"\nFT on JPEG rows, images/s with device decode / host decode: "
                f"{res['device_over_host_decode']:.3f}x")
    if "decode_skipped" in res:
        out += f"\n{res['decode_skipped']}"
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="vitb32", choices=["tiny", "vitb32"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--num-images", type=int, default=2048)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--decode-only", action="store_true",
                   help="only FT on JPEG rows, host decode vs device decode (skipped on CPU)")
    p.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        if a.decode_only:
            print(DECODE_SKIPPED)
            return
        raise SystemExit("bench_gpu.py needs a CUDA device.")
    res = bench(a.model, a.batch_size, a.steps, a.warmup, a.num_images, a.workers, a.compile, a.device,
                decode_only=a.decode_only)
    res["machine"] = machine_info(torch.device(a.device))
    print(table(res))
    write_json(a.json, res)


if __name__ == "__main__":
    main()
