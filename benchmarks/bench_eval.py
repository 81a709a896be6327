"""Evaluation throughput (zero-shot + retrieval through `clip_cl.Evaluator`) against the encoders' own forward.

The same N images serve a zero-shot set (10 classes, labels) and a retrieval set (5 captions per image). Cases,
interleaved round-robin:

- `evaluate`: `Evaluator.evaluate(model, seen=0)` on both sets (DataLoader from in-memory rows, collation, host to
  device copies, tokenisation of the captions, metrics);
- `image_encoder`: `get_image_features` on the same 2N images, batch by batch, already stacked on the device;
- `encoders`: `image_encoder` plus the text encoder on the same captions and class prompts (pre-tokenised);
- on GPU, `encoders_h2d`: `encoders` with the images copied from pinned host memory every batch (what any evaluation
  whose data lives on the host must also do).

Throughput ratios are time(limit) / time(evaluate) per round, median over rounds.

    python benchmarks/bench_eval.py --model vitb32 --num-images 128 --batch-size 64
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from _common import (
    CLASS_NAMES,
    HelpFormatter,
    build_model,
    default_clock,
    fmt_ms,
    machine_info,
    markdown_table,
    pick_device,
    run_interleaved,
    write_json,
)

CAPTION_TEMPLATES = ["a photo of a {}.", "a close-up photo of the {} on a table.", "someone holding a {} outside.",
                     "a blurry picture of a {} in the dark.", "there is a {} next to a chair in the room."]


class Rows(torch.utils.data.Dataset):
    def __init__(self, pixels: torch.Tensor, labels=None, captions=None):
        self.pixels, self.labels, self.captions = pixels, labels, captions

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        row = {"pixel_values": self.pixels[i]}
        if self.labels is not None:
            row["labels"] = self.labels[i]
        if self.captions is not None:
            row["captions"] = self.captions[i]
        return row


def bench(model_name: str, num_images: int, batch_size: int, device, precision: str, rounds: int, warmup: int,
          num_workers: list[int], log=print) -> dict:
    from clip_cl.evaluation import Evaluator
    from clip_cl.features import image_features, text_features, tokenize
    from clip_cl.prompts import DEFAULT_ZERO_SHOT_TEMPLATES, format_prompts

    model, processor = build_model(model_name)
    model.to(device).eval()
    cuda = device.type == "cuda"
    autocast_dtype = torch.bfloat16 if cuda and precision == "bf16" else None
    size = int(model.config.vision_config.image_size)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(num_images, 3, size, size, generator=g)
    labels = [i % len(CLASS_NAMES) for i in range(num_images)]
    captions = [[t.format(CLASS_NAMES[(i + k) % len(CLASS_NAMES)]) + f" {i}" for k, t in enumerate(CAPTION_TEMPLATES)]
                for i in range(num_images)]
    zs, rt = Rows(pixels, labels=labels), Rows(pixels, captions=captions)
    evaluators = {w: Evaluator(processor.tokenizer, zero_shot={"zs": (zs, CLASS_NAMES)}, retrieval={"rt": rt},
                               batch_size=batch_size, num_workers=w, autocast_dtype=autocast_dtype, device=device,
                               disable_tqdm=True) for w in num_workers}

    # The limits: the same images and texts, inputs prepared ahead.
    dev_pixels = pixels.to(device)
    host_pixels = pixels.pin_memory() if cuda else pixels
    flat_captions = [c for caps in captions for c in caps]
    caption_tokens = [tokenize(processor.tokenizer, flat_captions[i:i + batch_size], device)
                      for i in range(0, len(flat_captions), batch_size)]
    prompt_tokens = tokenize(processor.tokenizer, format_prompts(CLASS_NAMES, DEFAULT_ZERO_SHOT_TEMPLATES), device)

    def ctx():
        return torch.autocast("cuda", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    @torch.no_grad()
    def image_encoder(from_host: bool = False):
        with ctx():
            for _ in range(2):  # zero-shot set and retrieval set
                for i in range(0, num_images, batch_size):
                    x = host_pixels[i:i + batch_size].to(device, non_blocking=True) if from_host else \
                        dev_pixels[i:i + batch_size]
                    image_features(model, x, normalize=False).float()

    @torch.no_grad()
    def encoders(from_host: bool = False):
        image_encoder(from_host)
        with ctx():
            text_features(model, **prompt_tokens)
            for tokens in caption_tokens:
                text_features(model, **tokens)

    cases = {f"evaluate_w{w}": (lambda e=e: e.evaluate(model, seen=0)) for w, e in evaluators.items()}
    cases["image_encoder"] = image_encoder
    cases["encoders"] = encoders
    if cuda:
        cases["encoders_h2d"] = lambda: encoders(True)
    log(f"[eval] {model_name} on {device}: {num_images} images x 2 sets, {len(flat_captions)} captions, "
        f"batch {batch_size}, {rounds} rounds")
    t = run_interleaved(cases, rounds=rounds, warmup=warmup, device=device, log=log)
    res = {"model": model_name, "device": str(device), "precision": precision, "clock": default_clock(device),
           "num_images": num_images,
           "num_captions": len(flat_captions), "batch_size": batch_size, "rounds": rounds, "raw_s": t.seconds,
           "rows": {}}
    for w in evaluators:
        name = f"evaluate_w{w}"
        row = {"median_s": t.median(name), "images_per_s": 2 * num_images / t.median(name),
               "vs_image_encoder": t.ratio("image_encoder", name), "vs_encoders": t.ratio("encoders", name)}
        if cuda:
            row["vs_encoders_h2d"] = t.ratio("encoders_h2d", name)
        row["met"] = bool(row["vs_encoders"] >= 0.9)
        res["rows"][name] = row
    for name in ("image_encoder", "encoders", "encoders_h2d"):
        if name in t.seconds:
            res["rows"][name] = {"median_s": t.median(name), "images_per_s": 2 * num_images / t.median(name)}
    return res


def table(res: dict) -> str:
    rows = []
    for name, r in res["rows"].items():
        rows.append([name, fmt_ms(r["median_s"]), f"{r['images_per_s']:.1f}",
                     f"{r['vs_image_encoder']:.2f}" if "vs_image_encoder" in r else "",
                     f"{r['vs_encoders']:.2f}" if "vs_encoders" in r else "",
                     f"{r['vs_encoders_h2d']:.2f}" if "vs_encoders_h2d" in r else "",
                     ("yes" if r["met"] else "NO") if "met" in r else ""])
    return (f"evaluation, {res['model']}, {res['device']} {res['precision']}, {res['num_images']} images x 2 sets "
            f"(zero-shot + retrieval, {res['num_captions']} captions), batch {res['batch_size']}, "
            f"{res.get('clock', 'wall')} time:\n"
            + markdown_table(["case", "ms", "images/s", "throughput / image encoder", "/ encoders",
                              "/ encoders incl. H2D", ">= 0.9 x encoders"], rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="tiny", choices=["tiny", "vitb32"])
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--num-workers", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    res = bench(a.model, a.num_images, a.batch_size, device, a.precision, a.rounds, a.warmup, a.num_workers)
    res["machine"] = machine_info(device)
    print(table(res))
    write_json(a.json, res)


if __name__ == "__main__":
    main()
