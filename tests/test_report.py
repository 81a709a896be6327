"""`clip-cl report` on synthetic results.json files: tables (mean ± std checked by hand), row order, incomplete runs,
figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clip_cl.report import find_runs, group_runs, report_main, write_report


def _eval(seen, ut, zs, ret, per_session=None):
    return {"seen": seen,
            "ut": {"acc": ut, "top5": 100.0, "per_session": per_session or [ut],
                   "per_session_task": per_session or [ut], "num_classes_seen": 2 * seen, "num_images": 40},
            "zero_shot": {name: {"top1": v, "top5": 90.0, "num_images": 100} for name, v in zs.items()},
            "retrieval": {name: {"tr@1": tr, "tr@5": 50.0, "tr@10": 60.0, "ir@1": ir, "ir@5": 50.0, "ir@10": 60.0,
                                 "num_images": 60, "num_captions": 300} for name, (tr, ir) in ret.items()},
            "seconds": 1.0}


def write_run(root, method, variant, protocol, seed, *, ut, zs, ret, num_sessions=1, done=None, continual=None,
              config_extra=None, command=None):
    """A results.json in the runner's schema; `ut`, `zs` (dicts) and `ret` (dicts) are lists over sessions 0..done."""
    done = num_sessions if done is None else done
    folder = Path(root) / protocol / variant / method / f"seed{seed}"
    folder.mkdir(parents=True)
    config = {"method": method, "variant": variant, "protocol": protocol, "seed": seed, "num_sessions": num_sessions,
              "learning_rate": 1e-4, **(config_extra or {})}
    results = {"method": method, "method_display": method.upper(), "variant": variant, "protocol": protocol,
               "num_sessions": num_sessions, "model": "tiny-random", "seed": seed, "fingerprint": f"fp-{method}-{seed}",
               "config": config, "splits": {}, "before": _eval(0, ut[0], zs[0], ret[0]),
               "sessions": [{"session": t, "classes": [], "class_ids": [], "train_rows": 10, "train_loss": 0.5,
                             "train_steps": 2, "eval": _eval(t, ut[t], zs[t], ret[t]), "seconds": 1.0}
                            for t in range(1, done + 1)],
               "status": "complete" if done == num_sessions else "running"}
    if continual is not None and done == num_sessions:
        results["continual"] = continual
    (folder / "results.json").write_text(json.dumps(results))
    if command:
        (folder / ".sweep").mkdir()
        (folder / ".sweep" / "command.txt").write_text(command + "\n")
    return folder


ZS0, RET0 = {"cifar10": 40.0, "pets": 50.0}, {"coco": (30.0, 28.0), "flickr": (40.0, 38.0)}


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    # OST, WM: FT over three seeds with hand-checkable numbers, written out of order.
    for seed, (u, c, p, tr) in enumerate([(50, 30, 10, 5), (60, 32, 20, 5), (70, 34, 30, 5)]):
        write_run(root, "ft", "WM", "ost", seed, ut=[20.0, u], zs=[ZS0, {"cifar10": c, "pets": p}],
                  ret=[RET0, {"coco": (tr, 4.0), "flickr": (6.0, 7.0)}], command=f"python -m clip_cl.cli train {seed}")
    write_run(root, "joint_ft", "WM", "ost", 0, ut=[20.0, 90.0], zs=[ZS0, {"cifar10": 20.0, "pets": 20.0}],
              ret=[RET0, {"coco": (3.0, 3.0), "flickr": (3.0, 3.0)}])
    write_run(root, "vr_lwf", "WM", "ost", 0, ut=[20.0, 55.0], zs=[ZS0, {"cifar10": 39.0, "pets": 48.0}],
              ret=[RET0, {"coco": (25.0, 24.0), "flickr": (35.0, 33.0)}])
    write_run(root, "lwf", "IO", "ost", 0, ut=[20.0, 45.0], zs=[ZS0, {"cifar10": 36.0, "pets": 45.0}],
              ret=[RET0, {"coco": (22.0, 21.0), "flickr": (30.0, 31.0)}])
    write_run(root, "original", "WM", "ost", 0, ut=[20.0, 20.0], zs=[ZS0, ZS0], ret=[RET0, RET0])
    # MST (3 sessions), WM: LwF over two complete seeds and one unfinished one.
    curves = {0: [20.0, 80.0, 55.0, 40.0], 1: [20.0, 70.0, 45.0, 30.0], 2: [20.0, 75.0]}
    conts = {0: {"avg": 60.0, "last": 40.0, "bwt": -30.0, "transfer": 10.0, "forgetting": 30.0},
             1: {"avg": 50.0, "last": 30.0, "bwt": -20.0, "transfer": 14.0, "forgetting": 20.0}}
    for seed, ut in curves.items():
        zs = [ZS0] + [{"cifar10": 40.0 - 5 * t, "pets": 50.0 - 5 * t} for t in range(1, len(ut))]
        ret = [RET0] + [{"coco": (30.0 - 3 * t, 28.0 - 2 * t), "flickr": (40.0 - 3 * t, 38.0 - 3 * t)}
                        for t in range(1, len(ut))]
        write_run(root, "lwf", "WM", "mst", seed, ut=ut, zs=zs, ret=ret, num_sessions=3, done=len(ut) - 1,
                  continual=conts.get(seed))
    write_run(root, "original", "WM", "mst", 0, ut=[20.0] * 4, zs=[ZS0] * 4, ret=[RET0] * 4, num_sessions=3,
              continual={"avg": 30.0, "last": 20.0, "bwt": 0.0, "transfer": 20.0, "forgetting": 0.0})
    return root


def _table(md, heading):
    block = md.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    return [line for line in block.splitlines() if line.startswith("|")]


def test_tables_mean_std_order_and_columns(runs_dir, tmp_path):
    path = write_report(runs_dir, tmp_path / "out", figures=False)
    md = path.read_text()
    wm = _table(md, "### OST · WM")
    assert wm[0] == ("| Method | n | UT-Acc | ZS-Acc cifar10 | ZS-Acc pets | ZS-Acc mean | TR@1 coco | IR@1 coco | "
                     "TR@1 flickr | IR@1 flickr |")
    labels = [line.split("|")[1].strip() for line in wm[2:]]
    assert labels == ["Original CLIP", "FT", "VR-LwF", "Joint-FT"]  # the paper's order, whatever the disk order
    ft = wm[3]
    # UT 50/60/70 -> 60 ± 10; cifar10 30/32/34 -> 32 ± 2; pets 10/20/30 -> 20 ± 10; mean per run 20/26/32 -> 26 ± 6
    assert ft.startswith("| FT | 3 | **60.00 ± 10.00** | 32.00 ± 2.00 | 20.00 ± 10.00 | 26.00 ± 6.00 | 5.00 ± 0.00 |")
    assert "| Original CLIP | 1 | 20.00 | 40.00 | 50.00 | 45.00 | 30.00 | 28.00 | 40.00 | 38.00 |" in wm
    # the best non-bound mean is bold (UT-Acc: FT's 60 > VR-LwF's 55; cifar10: VR-LwF's 39); bounds never are
    assert "**39.00**" in wm[4] and "**" not in wm[2] and "**" not in wm[5]
    # Original CLIP (run under WM) is also shown in the IO table
    io = _table(md, "### OST · IO")
    assert [line.split("|")[1].strip() for line in io[2:]] == ["Original CLIP", "LwF"]


def test_mst_table_continual_metrics_and_incomplete_flag(runs_dir, tmp_path):
    md = write_report(runs_dir, tmp_path / "out", figures=False).read_text()
    mst = _table(md, "### MST · WM")
    assert mst[0].startswith("| Method | n | Avg | Last | BWT | Transfer | UT-Acc (final) | ZS-Acc cifar10 (final) |")
    lwf = next(line for line in mst if line.startswith("| LwF"))
    # Avg 60/50 -> 55 ± 7.07 (n=2 of 3 runs: the unfinished seed has none); UT-Acc final 40/30/75 -> 48.33 ± 23.63
    assert lwf.startswith("| LwF † | 3 | 55.00 ± 7.07 (n=2) | 35.00 ± 7.07 (n=2) | -25.00 ± 7.07 (n=2) | "
                          "12.00 ± 2.83 (n=2) | 48.33 ± 23.63 |")
    assert "† incomplete: `mst/WM/lwf/seed2` (1 of 3 sessions)" in md
    assert "## MST: several sessions of disjoint classes (3 sessions)" in md
    # per-run section: fingerprint, status and the sweep command
    assert ("| `ost/WM/ft/seed1` | FT | WM | OST | 1 | 1/1 | complete | `fp-ft-1` | "
            "`python -m clip_cl.cli train 1` |") in md
    assert "| `mst/WM/lwf/seed2` | LwF | WM | MST | 2 | 1/3 | running |" in md
    assert "**BWT**" in md and "metrics.md" in md  # definitions


def test_group_runs_separates_settings(tmp_path):
    root = tmp_path / "runs"
    for seed, lr in ((0, 1e-4), (1, 1e-4), (0, 1e-5)):
        write_run(root / f"lr{lr}", "ft", "WM", "ost", seed, ut=[10.0, 20.0 + seed], zs=[{"c": 1.0}] * 2,
                  ret=[{"coco": (1.0, 1.0)}] * 2, config_extra={"learning_rate": lr})
    # an option added to clip-cl later (present in one run's config only) does not split a row
    write_run(root / "newer", "ft", "WM", "ost", 2, ut=[10.0, 22.0], zs=[{"c": 1.0}] * 2,
              ret=[{"coco": (1.0, 1.0)}] * 2, config_extra={"learning_rate": 1e-4, "skip_corrupt_images": False})
    rows = group_runs(find_runs(root))["ost"]["WM"]
    assert sorted((r.label, r.n) for r in rows) == [("FT (learning_rate=0.0001)", 3), ("FT (learning_rate=1e-05)", 1)]


def test_figures_written_and_embedded(runs_dir, tmp_path):
    out = tmp_path / "out"
    report_main([str(runs_dir), "--output", str(out)])
    md = (out / "report.md").read_text()
    for stem in ("fig4_sessions", "fig5_retrieval"):
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").stat().st_size > 5000
        assert f"]({stem}.png)" in md and f"({stem}.svg)" in md
    assert (out / "fig4_sessions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    md = write_report(tmp_path / "empty").read_text()
    assert "No runs found." in md
    with pytest.raises(SystemExit, match="not a folder"):
        report_main([str(tmp_path / "nope")])


def test_import_stays_light():
    code = "import sys, clip_cl.report; assert not {'matplotlib', 'torch'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)
