"""Step time of every method relative to FT, to its floor, and to a naive reference, measured side by side.

Every method is a real clip-cl trainer; one step is `trainer.training_step(model, batch)` + gradient clipping +
`optimizer.step()` + `zero_grad()` on a fixed in-memory batch (the same for every method). Cases run round-robin
(order rotated every round) after warm-up; a ratio is the median over rounds of the ratio measured within a round.

Floors (what a method cannot avoid, measured in the same rounds):
- LwF, GeoDL, ZSCL: FT step + the teacher's image forward on the batch (`teacher_fwd`);
- ER, A-GEM, GEM: FT step + one forward/backward of CLIP's contrastive loss on the replay batch (`replay_fwd_bwd`,
  as many pairs as the update batch; no memory exemplars, as in a first session);
- VR-LwF: `floor_pseudo` (an FT step whose student text call also holds the M pseudo-texts, with a KL on them) +
  `teacher_fwd`; with fresh pseudo-texts every step the teacher's text forward over them (`teacher_pseudo_fwd`) is
  inherent too and is shown separately.

    python benchmarks/bench_steps.py --model vitb32 --batch-sizes 16 64 --rounds 3
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import (
    OWN_MODEL,
    REPLAY_METHODS,
    TEACHER_METHODS,
    HelpFormatter,
    StepRunner,
    base_args,
    build_model,
    default_clock,
    fixed_batch,
    fmt_ms,
    fmt_ratio,
    free_memory,
    machine_info,
    make_trainer,
    markdown_table,
    method_specs,
    pick_device,
    replay_rows,
    run_interleaved,
    write_json,
)

TARGETS = {  # name -> (what the ratio is measured against, bound)
    "lwf": ("floor", 1.05), "geodl": ("floor", 1.05), "zscl": ("floor", 1.05),
    "vr_lwf_pool": ("floor", 1.05), "vr_lwf": ("floor", 1.05),
    "imm": ("ft", 1.05), "wise_ft": ("ft", 1.05), "rkr": ("ft", 1.2),
    "er": ("floor", 1.05), "agem": ("floor", 1.05), "gem": ("floor", 1.05),
}
# name -> the cases whose sum is the method's floor (what it cannot avoid; see the module docstring).
FLOORS = {
    **{m: ["ft", "teacher_fwd"] for m in ("lwf", "geodl", "geodl_host", "zscl", "zscl_no_l2", "naive_lwf")},
    **{m: ["floor_pseudo", "teacher_fwd"] for m in ("vr_lwf", "vr_lwf_pool", "naive_vr_lwf", "vr_lwf_one_call",
                                                     "vr_lwf_recompute")},
    **{m: ["ft", "replay_fwd_bwd"] for m in ("er", "agem", "gem")},
}
DEFAULT_METHODS = ["ft", "lwf", "vr_lwf", "vr_lwf_pool", "geodl", "zscl", "imm", "wise_ft", "rkr", "lora",
                   "er", "agem", "gem", "naive_lwf", "naive_vr_lwf"]


def build_cases(model_name: str, device, precision: str, methods: list[str], pool_size: int, batch_sizes):
    """Trainers for every method (sharing one student and one teacher where they can) and the floor pieces."""
    from naive import (
        FloorPseudoTrainer,
        GeoDLHostTrainer,
        NaiveLwFTrainer,
        NaiveVRLwFTrainer,
    )

    from clip_cl.features import text_features
    from clip_cl.methods.geodl import GeoDLConfig
    from clip_cl.methods.lwf import LwFConfig
    from clip_cl.methods.vr_lwf import VRLwFConfig

    StepRunner.reset()
    model, processor = build_model(model_name)
    teacher = None
    specs = method_specs()
    specs["naive_lwf"] = (LwFConfig, NaiveLwFTrainer, {})
    specs["naive_vr_lwf"] = (VRLwFConfig, NaiveVRLwFTrainer, {})
    specs["geodl_host"] = (GeoDLConfig, GeoDLHostTrainer, {})
    specs["zscl_no_l2"] = (specs["zscl"][0], specs["zscl"][1], {"zscl_l2_weight": 0.0})
    specs["ft_fused_adamw"] = (specs["ft"][0], specs["ft"][1], {"optim": "adamw_torch_fused"})
    methods = [m for m in methods if m in specs]
    if "ft" not in methods:
        methods.insert(0, "ft")
    args = base_args(device, max(batch_sizes), precision)
    trainers, setup = {}, {}
    for name in methods:
        config_cls, trainer_cls, overrides = specs[name]
        overrides = dict(overrides)
        if name == "vr_lwf_pool":
            overrides["vr_pool_size"] = pool_size
        student = build_model(model_name)[0] if name in OWN_MODEL else model
        t_teacher = None
        if name in TEACHER_METHODS:
            if teacher is None:
                teacher = build_model(model_name)[0].requires_grad_(False).eval()
            # The naive teacher stays fp32: on GPU it needs its own copy (ours is converted to bf16 in place).
            t_teacher = teacher
            if name.startswith("naive") and torch.device(device).type == "cuda" and precision == "bf16":
                t_teacher = build_model(model_name)[0].requires_grad_(False).eval()
        extra = {"replay_dataset": replay_rows(student, max(batch_sizes))} if name in REPLAY_METHODS else {}
        t0 = time.perf_counter()
        try:
            trainers[name] = make_trainer(config_cls, trainer_cls, student, processor, {**args, **overrides},
                                          teacher=t_teacher, **extra)
        except Exception as err:  # report and go on with the other methods
            print(f"[steps] {name}: trainer could not be built: {err!r}"[:600])
            continue
        setup[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainers["floor_pseudo"] = make_trainer(specs["ft"][0], FloorPseudoTrainer, model, processor, args)
    setup["floor_pseudo"] = time.perf_counter() - t0
    ref = trainers.get("lwf") or trainers.get("vr_lwf") or trainers.get("geodl")
    pseudo = trainers["floor_pseudo"]._pseudo
    return trainers, setup, ref, pseudo, text_features


def make_cases(trainers: dict, ref, pseudo, text_features, batch: dict) -> dict:
    """name -> zero-argument callable: one step of every trainer, and the floor pieces run alone."""
    batch_size = batch["pixel_values"].shape[0]
    for name in REPLAY_METHODS & set(trainers):
        trainers[name].args.replay_batch_size = batch_size  # as many replay pairs as update rows
    cases = {name: StepRunner(tr, batch) for name, tr in trainers.items()}
    rehearsal = next((trainers[n] for n in ("er", "agem", "gem") if n in trainers), None)
    if rehearsal is not None:
        cases["replay_fwd_bwd"] = replay_floor(rehearsal, cases[rehearsal_name(trainers)].model, batch_size)
    if ref is not None:
        pixels = batch["pixel_values"]
        cases["teacher_fwd"] = lambda: ref.teacher_image_features(pixels)
        cases["teacher_pseudo_fwd"] = torch.no_grad()(lambda: text_features(ref.teacher, **pseudo))
    return cases


def rehearsal_name(trainers: dict) -> str:
    return next(n for n in ("er", "agem", "gem") if n in trainers)


def replay_floor(trainer, prepared_model, batch_size: int):
    """One forward/backward of CLIP's contrastive loss on a replay batch of `batch_size` pairs (the part of a
    rehearsal step that FT does not have), through the same model and autocast as the steps."""
    from clip_cl.features import image_features, logit_scale, text_features, tokenize
    from clip_cl.methods.base.trainer import unwrap
    from clip_cl.rehearsal import clip_contrastive_loss

    model = unwrap(prepared_model)
    rows = trainer.replay_data[:batch_size]
    pixels = torch.stack([r["pixel_values"] for r in rows]).to(trainer.args.device)
    tokens = tokenize(trainer.clip_tokenizer, [r["captions"][0] for r in rows], trainer.args.device)
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        with trainer.accelerator.autocast():
            loss = clip_contrastive_loss(image_features(model, pixels), text_features(model, **tokens),
                                         logit_scale(model))
        loss.backward()
        for p in params:
            p.grad = None

    return step


def bench(model_name: str, batch_sizes, device, precision: str, rounds: int, warmup: int, inner: int,
          methods: list[str], pool_size: int, log=print) -> dict:
    trainers, setup, ref, pseudo, text_features = build_cases(model_name, device, precision, methods, pool_size,
                                                              batch_sizes)
    if torch.device(device).type != "cuda":
        precision = "fp32"  # `--precision` applies to GPU runs only (base_args): label what ran
    log(f"[steps] {model_name} on {device} ({precision}): setup seconds "
        + ", ".join(f"{k} {v:.1f}" for k, v in setup.items()))
    results = {"model": model_name, "device": str(device), "precision": precision, "clock": default_clock(device),
               "rounds": rounds,
               "warmup": warmup, "inner": inner, "pool_size": pool_size, "setup_s": setup, "batches": {}}
    for bs in batch_sizes:
        batch = fixed_batch(trainers["ft"].model, bs, device)
        cases = make_cases(trainers, ref, pseudo, text_features, batch)
        log(f"[steps] batch {bs}: {len(cases)} cases x {rounds} rounds")
        t = run_interleaved(cases, rounds=rounds, warmup=warmup, device=device, inner=inner, log=log)
        results["batches"][bs] = summarise(t)
        del cases, batch
        free_memory(device)
    # One merge of IMM and WiSE-FT (what they add to FT, once per session).
    for name in ("imm", "wise_ft"):
        if name in trainers:
            torch.cuda.synchronize() if torch.device(device).type == "cuda" else None
            t0 = time.perf_counter()
            trainers[name].on_session_end()
            torch.cuda.synchronize() if torch.device(device).type == "cuda" else None
            results[f"{name}_merge_s"] = time.perf_counter() - t0
    return results


def summarise(t) -> dict:
    s = t.seconds
    has_teacher = "teacher_fwd" in s
    rows = {}
    for name in s:
        row = {"median_s": t.median(name), "spread": t.spread(name), "vs_ft": t.ratio(name, "ft")}
        if name in FLOORS and all(part in s for part in FLOORS[name]):
            row["floor_parts"] = FLOORS[name]
        if "floor_parts" in row:
            row["vs_floor"] = t.ratio(name, row["floor_parts"])
            row["floor_vs_ft"] = t.ratio(row["floor_parts"], "ft")
        if name == "vr_lwf" and has_teacher:
            row["vs_floor_with_teacher_text"] = t.ratio(name, ["floor_pseudo", "teacher_fwd", "teacher_pseudo_fwd"])
        rows[name] = row
    if "naive_lwf" in s and "lwf" in s:
        rows["naive_lwf"]["naive_over_ours"] = t.ratio("naive_lwf", "lwf")
    if "naive_vr_lwf" in s and "vr_lwf" in s:
        rows["naive_vr_lwf"]["naive_over_ours"] = t.ratio("naive_vr_lwf", "vr_lwf")
        if "vr_lwf_pool" in s:
            rows["naive_vr_lwf"]["naive_over_pool"] = t.ratio("naive_vr_lwf", "vr_lwf_pool")
    for variant in ("vr_lwf_one_call", "vr_lwf_recompute"):  # the student text path's alternatives, against the naive
        if "naive_vr_lwf" in s and variant in s:
            rows[variant]["naive_over_ours"] = t.ratio("naive_vr_lwf", variant)
    for name, (against, bound) in TARGETS.items():
        if name in rows:
            value = rows[name].get("vs_floor") if against == "floor" else rows[name]["vs_ft"]
            if value is not None:
                rows[name]["target"] = f"<= {bound} x {against}"
                rows[name]["met"] = bool(value <= bound)
    return {"rows": rows, "raw_s": s}


def table(results: dict) -> str:
    out = []
    for bs, summ in results["batches"].items():
        rows = []
        for name, r in summ["rows"].items():
            extra = ""
            if "naive_over_ours" in r:
                extra = f"naive/ours {r['naive_over_ours']:.2f}x"
                if "naive_over_pool" in r:
                    extra += f", naive/pool {r['naive_over_pool']:.2f}x"
            if "vs_floor_with_teacher_text" in r:
                extra = f"/(floor + teacher pseudo-text fwd) {r['vs_floor_with_teacher_text']:.2f}x"
            met = "" if "met" not in r else ("yes" if r["met"] else "NO")
            rows.append([name, fmt_ms(r["median_s"]), f"{100 * r['spread']:.0f}%", fmt_ratio(r["vs_ft"]),
                         fmt_ratio(r.get("floor_vs_ft")), fmt_ratio(r.get("vs_floor")), r.get("target", ""), met,
                         extra])
        out.append(f"{results['model']}, batch {bs}, {results['device']} {results['precision']} "
                   f"({results['rounds']} rounds x {results['inner']} steps, {results.get('clock', 'wall')} time):\n"
                   + markdown_table(["case", "ms", "spread", "/FT", "floor/FT", "/floor", "target", "met", "notes"],
                                    rows))
    merges = [f"{k[:-8]} merge {v:.2f} s" for k, v in results.items() if k.endswith("_merge_s")]
    if merges:
        out.append("one merge at session end: " + ", ".join(merges))
    return "\n\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="tiny", choices=["tiny", "vitb32"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="GPU only; CPU is fp32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--inner", type=int, default=1, help="steps per timed sample")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--pool-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    res = bench(a.model, a.batch_sizes, device, a.precision, a.rounds, a.warmup, a.inner, a.methods, a.pool_size)
    res["machine"] = machine_info(device)
    print(table(res))
    write_json(a.json, res)


if __name__ == "__main__":
    main()
