"""The benchmark scripts still run against the current API and print their ratios (smoke tests on the tiny model:
one round, a few methods; nothing here asserts a timing)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

CPU = torch.device("cpu")


def test_bench_steps_prints_ratios_to_ft_floor_and_naive():
    import bench_steps

    res = bench_steps.bench("tiny", [4], CPU, "fp32", rounds=1, warmup=1, inner=1,
                            methods=["ft", "lwf", "vr_lwf", "vr_lwf_pool", "imm", "naive_vr_lwf"], pool_size=200,
                            log=lambda *a: None)
    rows = res["batches"][4]["rows"]
    assert {"ft", "lwf", "vr_lwf", "vr_lwf_pool", "imm", "naive_vr_lwf", "floor_pseudo", "teacher_fwd",
            "teacher_pseudo_fwd"} <= set(rows)
    assert rows["ft"]["vs_ft"] == pytest.approx(1.0)
    assert rows["lwf"]["floor_parts"] == ["ft", "teacher_fwd"] and rows["lwf"]["vs_floor"] > 0
    assert rows["vr_lwf"]["floor_parts"] == ["floor_pseudo", "teacher_fwd"]
    assert "naive_over_ours" in rows["naive_vr_lwf"] and "met" in rows["imm"]
    assert res["imm_merge_s"] >= 0
    text = bench_steps.table(res)
    assert "| vr_lwf |" in text and "naive/ours" in text


def test_bench_memory_in_process_and_gc_variant():
    import bench_memory

    row = bench_memory.run_one("vr_lwf_gc", "tiny", 4, CPU, "fp32", pool_size=8)
    assert row["seconds_2_steps"] > 0 and row["rss_after_model_mb"] > 0
    assert bench_memory.run_one("nope", "tiny", 4, CPU, "fp32", pool_size=8) == {"skipped": "not available"}


def test_bench_eval_and_gfk_print_tables():
    import bench_eval
    import bench_gfk

    res = bench_eval.bench("tiny", num_images=8, batch_size=4, device=CPU, precision="fp32", rounds=1, warmup=1,
                           num_workers=[0], log=lambda *a: None)
    assert res["rows"]["evaluate_w0"]["vs_encoders"] > 0 and "met" in res["rows"]["evaluate_w0"]
    assert "evaluate_w0" in bench_eval.table(res)
    gfk = bench_gfk.bench(CPU, sizes=(8,), dim=16, reps=1, log=lambda *a: None)
    # the three routes compute the same loss
    assert all(v["rel_diff_vs_current"] < 1e-5 for v in gfk.values())
    assert "before_svd_formed_kernel" in bench_gfk.table(gfk)


def test_run_all_plans_name_known_benchmarks():
    import run_all

    for mode in ("quick", "full", "gpu"):
        kinds = [kind for kind, _ in run_all.plan(mode)]
        assert set(kinds) <= {"steps", "memory", "eval", "gfk", "profile", "gpu", "flops"}


def test_bench_flops_floors_are_exact():
    """FLOPs are deterministic: LwF's step is exactly FT + the teacher's image forward, VR-LwF's with a pool exactly
    its floor, fresh VR-LwF exactly that + the teacher's pseudo-text forward; the naive LwF re-encodes the prompts."""
    import bench_flops

    res = bench_flops.bench("tiny", 4, CPU, ["ft", "lwf", "vr_lwf", "vr_lwf_pool", "naive_lwf"], pool_size=200,
                            log=lambda *a: None)
    rows = res["rows"]
    assert rows["lwf"]["vs_floor"] == pytest.approx(1.0, abs=1e-3)
    assert rows["vr_lwf_pool"]["vs_floor"] == pytest.approx(1.0, abs=1e-3)
    assert rows["vr_lwf"]["vs_floor_with_teacher_text"] == pytest.approx(1.0, abs=1e-3)
    assert rows["naive_lwf"]["vs_floor"] > 1.01
    assert "| lwf |" in bench_flops.table(res)


def test_bench_text_call_and_right_padding_never_reaches_the_pooled_feature():
    import bench_text_call

    res = bench_text_call.bench("tiny", CPU, rounds=1, num_pseudo=8, log=lambda *a: None)
    assert res["shapes"]["one_call"][0] == res["shapes"]["prompts"][0] + 8
    assert res["max_abs_diff_no_mask"] < 1e-6  # CLIP's text tower is causal and pools at the first end-of-text
    assert res["one_over_two"] > 0 and res["no_mask_over_two"] > 0


def test_bench_loader_runs_old_new_and_cached_paths():
    import bench_loader

    res = bench_loader.bench(num_images=6, rounds=1, batch_size=3, crop=32, log=lambda *a: None)
    rows = res["rows"]
    assert {"old", "new", "cached"} <= set(rows) and rows["old"]["vs_old"] == pytest.approx(1.0)
    # float32 before, uint8 after: exactly 4x fewer bytes per image through collation
    assert rows["old"]["bytes_per_image"] == 4 * rows["new"]["bytes_per_image"] == 4 * 3 * 32 * 32
    assert rows["cached"]["bytes_per_image"] == rows["new"]["bytes_per_image"]
    assert "| cached |" in bench_loader.table(res)


def test_bench_loader_loop_times_every_setting_against_the_compute_floor():
    import bench_loader

    res = bench_loader.bench_loop(num_images=6, rounds=1, batch_size=3, crop=32, workers=[0, 1], epochs=1,
                                  log=lambda *a: None)
    names = set(res["loop_rows"])
    assert names == {f"{kind}_{bench_loader.setting_name(s)}" for kind in ("jpeg", "cached")
                     for s in bench_loader.loader_settings([0, 1])}
    assert len(names) == 8 and all(r["x_floor"] > 0 for r in res["loop_rows"].values())
    assert "| cached_workers1_persistent_prefetch4 |" in bench_loader.loop_table(res)


def test_bench_gpu_jpeg_decode_rows_skip_on_cpu_and_run_when_called():
    import bench_gpu

    quiet = {"log": lambda *a: None}
    res = bench_gpu.bench("tiny", 4, 3, 1, 8, 0, device="cpu", decode_only=True, **quiet)
    assert res["decode_skipped"] == bench_gpu.DECODE_SKIPPED == bench_gpu.table(res)
    # called directly, the two rows run on any device (on CPU both decode with libjpeg-turbo: a smoke test)
    runs = bench_gpu.bench_decode("tiny", batch_size=4, steps=3, warmup=1, num_images=8, workers=0, device="cpu",
                                  image_hw=(48, 64), **quiet)
    assert set(runs) == {"trainer_jpeg_host_decode", "trainer_jpeg_device_decode"}
    assert all(r[0]["images_per_s"] > 0 for r in runs.values())
