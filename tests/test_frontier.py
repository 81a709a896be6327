"""Frontiers of `clip-cl report` on synthetic results: kept %, UT-Acc relative to FT, interpolation at matched UT-Acc
(checked by hand), curves that do not reach the matched UT-Acc, and the figure."""

import json
from pathlib import Path

import pytest

from clip_cl.report import (build_frontiers, find_runs, group_runs, identical_curves, interpolate_at, kept_percent,
                            write_report)


def _eval(ut, cifar, coco_tr):
    return {"ut": {"acc": ut, "top5": 100.0, "per_session": [ut], "per_session_task": [ut], "num_classes_seen": 10,
                   "num_images": 100},
            "zero_shot": {"cifar10": {"top1": cifar, "top5": 90.0, "num_images": 100}},
            "retrieval": {"coco": {"tr@1": coco_tr, "tr@5": 1.0, "tr@10": 1.0, "ir@1": coco_tr, "ir@5": 1.0,
                                   "ir@10": 1.0, "num_images": 50, "num_captions": 250}}}


def _run(root, name, method, seed, ut, cifar, coco_tr, **config):
    folder = Path(root) / name / f"seed{seed}"
    folder.mkdir(parents=True)
    results = {"method": method, "variant": "WM", "protocol": "ost", "num_sessions": 1, "seed": seed,
               "config": {"method": method, "variant": "WM", "protocol": "ost", "seed": seed, **config},
               "before": _eval(20.0, 40.0, 12.0), "status": "complete",
               "splits": {"zero_shot": [{"name": "cifar10", "class_names": [f"c{i}" for i in range(10)]}]},
               "sessions": [{"session": 1, "eval": _eval(ut, cifar, coco_tr)}]}
    (folder / "results.json").write_text(json.dumps(results))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "runs"
    for seed, ut in enumerate((50.0, 60.0, 70.0)):  # FT's mean UT-Acc: 60
        _run(root, "ft", "ft", seed, ut, 25.0, 7.0)
    # LwF: alpha 0.5 at 95% of FT's UT-Acc (two seeds), alpha 2 at 80%
    _run(root, "lwf_0.5", "lwf", 0, 56.0, 33.0, 10.0, lwf_alpha=0.5)
    _run(root, "lwf_0.5", "lwf", 1, 58.0, 35.0, 10.0, lwf_alpha=0.5)
    _run(root, "lwf_2", "lwf", 0, 48.0, 37.0, 11.0, lwf_alpha=2.0)
    # VR-LwF: only near FT (98% and 102%): it never reaches 90%
    _run(root, "vr_0.1", "vr_lwf", 0, 61.2, 31.0, 9.0, vr_lambda=0.1)
    _run(root, "vr_0.5", "vr_lwf", 0, 58.8, 34.0, 9.0, vr_lambda=0.5)
    return root


def test_kept_percent_and_interpolation_by_hand():
    assert kept_percent(25.0, 40.0, 10.0) == pytest.approx(50.0)  # (25 - 10) / (40 - 10)
    assert kept_percent(25.0, 40.0, None) == pytest.approx(62.5)  # chance unknown: plain ratio
    assert kept_percent(5.0, 10.0, 10.0) is None and kept_percent(None, 40.0, 10.0) is None
    pts = [(95.0, 80.0), (80.0, 90.0)]  # unsorted on purpose
    assert interpolate_at(pts, 90.0) == pytest.approx(90.0 - (10 / 15) * 10.0)
    assert interpolate_at(pts, 80.0) == 90.0 and interpolate_at(pts, 95.0) == 80.0
    assert interpolate_at(pts, 100.0) is None and interpolate_at(pts, 79.9) is None  # never extrapolated
    assert interpolate_at([(100.0, 50.0)], 100.0) == 50.0 and interpolate_at([(100.0, 50.0)], 90.0) is None
    assert interpolate_at([(90.0, 10.0), (90.0, 20.0), (100.0, 35.0)], 95.0) == pytest.approx(25.0)  # ties averaged
    assert interpolate_at([], 90.0) is None


def test_frontier_points_and_matched_table(sweep, tmp_path):
    (frontier,) = build_frontiers(group_runs(find_runs(sweep)))
    assert frontier.ft_ut == pytest.approx(60.0) and frontier.start_x == pytest.approx(100 * 20 / 60)
    assert [m.label for m in frontier.measures] == ["ZS top-1 cifar10", "TR@1 coco", "IR@1 coco"]
    lwf = frontier.curves["lwf"]
    assert [p.strength for p in lwf] == ["2.0", "0.5"]  # sorted by x
    assert lwf[1].x.mean == pytest.approx(95.0) and lwf[1].x.std == pytest.approx(100 * 2 ** 0.5 / 60) and lwf[1].n == 2
    # kept on CIFAR-10 (chance 10%, start 40%): alpha 0.5 -> (23/30 + 25/30) / 2 = 80%; alpha 2 -> 27/30 = 90%
    assert lwf[1].kept["ZS top-1 cifar10"].mean == pytest.approx(80.0)
    assert lwf[0].kept["ZS top-1 cifar10"].mean == pytest.approx(90.0)
    cifar = frontier.measures[0]
    assert frontier.matched("lwf", cifar, 90.0) == pytest.approx(90.0 - (10 / 15) * 10.0)  # 83.33
    assert frontier.matched("lwf", cifar, 100.0) is None  # LwF's curve stops at 95%
    # VR-LwF at x = 98 (kept 80%) and 102 (70%): 75% at 100, and 90% is out of its range
    assert frontier.matched("vr_lwf", cifar, 100.0) == pytest.approx(75.0)
    assert frontier.matched("vr_lwf", cifar, 90.0) is None
    # FT is one point at exactly 100%: (25 - 10) / 30 = 50%
    assert frontier.matched("ft", cifar, 100.0) == pytest.approx(50.0) and frontier.matched("ft", cifar, 90.0) is None
    # R@1 chance = 1 / 50 images = 2%: FT keeps (7 - 2) / (12 - 2) = 50%
    assert frontier.matched("ft", frontier.measures[1], 100.0) == pytest.approx(50.0)

    # best kept at >= 90% of FT's UT-Acc, read off the points: LwF's alpha 0.5 (x 95, kept 80; alpha 2 is at x 80),
    # VR-LwF's lambda 0.5 (x 98, kept 80) over lambda 0.1 (x 102, kept 70); none of LwF's points reach 100%
    best = frontier.best_from("lwf", cifar)
    assert best[0].strength == "0.5" and best[1] == pytest.approx(80.0)
    best = frontier.best_from("vr_lwf", cifar)
    assert best[0].strength == "0.5" and best[1] == pytest.approx(80.0)
    assert frontier.best_from("lwf", cifar, 100.0) is None
    assert frontier.best_from("vr_lwf", cifar, 100.0)[1] == pytest.approx(70.0)

    md = write_report(sweep, tmp_path / "out", figures=False).read_text()
    table = [line for line in md.split("## Frontiers", 1)[1].split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    assert table[0] == ("| Method | strengths | UT-Acc range (% of FT) | ZS top-1 cifar10 @ 90% / 100% | "
                        "TR@1 coco @ 90% / 100% | IR@1 coco @ 90% / 100% |")
    assert table[2].startswith("| FT | 1 | 100.0 | n.r. / 50.0 | n.r. / 50.0 |")
    assert table[3].startswith("| LwF (α) | 2 | 80.0–95.0 | 83.3 / n.r. |")
    assert table[4].startswith("| VR-LwF (λ) | 2 | 98.0–102.0 | n.r. / 75.0 |")
    # the best-at->=-90% table follows: FT 50 (one point, no strength), LwF 80.0 at alpha 0.5
    assert table[5] == "| Method | ZS top-1 cifar10 | TR@1 coco | IR@1 coco |"
    assert table[7].startswith("| FT | 50.0 | ") and table[8].startswith("| LwF (α) | 80.0 (0.5) | ")
    assert table[9].startswith("| VR-LwF (λ) | 80.0 (0.5) | ")
    assert "plain ratio" not in md  # every measure recorded its chance level


def test_frontier_figure_and_plain_ratio_note(sweep, tmp_path):
    # a run that does not record its zero-shot classes: kept % falls back to the plain ratio, and the report says so
    file = next(sweep.glob("lwf_2/seed0/results.json"))
    results = json.loads(file.read_text())
    del results["splits"]
    file.write_text(json.dumps(results))
    out = tmp_path / "out"
    md = write_report(sweep, out).read_text()
    for ext in ("png", "svg"):
        assert (out / f"frontier_ost_WM.{ext}").stat().st_size > 5000
    assert "](frontier_ost_WM.png)" in md and "(frontier_ost_WM.svg)" in md
    assert "Chance level not recorded for ZS top-1 cifar10" in md


def test_near_ft_figure_only_when_points_lie_outside_it(sweep, tmp_path):
    # the fixture's points lie within 80-102% of FT's UT-Acc: the full figure already is the near-FT view
    md = write_report(sweep, tmp_path / "a").read_text()
    assert not (tmp_path / "a" / "frontier_ost_WM_near_ft.png").exists() and "_near_ft.png" not in md
    _run(sweep, "lwf_8", "lwf", 0, 30.0, 39.0, 11.5, lwf_alpha=8.0)  # 50% of FT's UT-Acc
    md = write_report(sweep, tmp_path / "b").read_text()
    for ext in ("png", "svg"):
        assert (tmp_path / "b" / f"frontier_ost_WM_near_ft.{ext}").stat().st_size > 5000
    assert "](frontier_ost_WM_near_ft.png)" in md and "(frontier_ost_WM_near_ft.svg)" in md
    assert md.index("](frontier_ost_WM.png)") < md.index("](frontier_ost_WM_near_ft.png)")
    (sweep / "lwf_8").rename(tmp_path / "lwf_8")  # and to the right: 150% of FT's UT-Acc (MST's rehearsal methods)
    _run(sweep, "er", "er", 0, 90.0, 39.0, 11.5, replay_weight=1.0)
    write_report(sweep, tmp_path / "c")
    assert (tmp_path / "c" / "frontier_ost_WM_near_ft.png").is_file()


def test_fig4_names_a_strength_sweep_once_per_method(sweep):
    from clip_cl.report import _settings_of

    _run(sweep, "rkr_a", "rkr", 0, 59.0, 30.0, 9.0, learning_rate=1e-5)  # RKR (no strength knob), two settings
    _run(sweep, "rkr_b", "rkr", 0, 59.5, 30.0, 9.0, learning_rate=2e-5)
    (rows,) = group_runs(find_runs(sweep))["ost"].values()
    strengths, knobs = _settings_of(rows)
    assert knobs == {"lwf": "α", "vr_lwf": "λ"}  # FT has one row; RKR keeps its per-row labels
    assert sorted(strengths[id(r)] for r in rows if r.method == "lwf") == ["0.5", "2.0"]
    assert not any(r.method in ("ft", "rkr") for r in rows if id(r) in strengths)
    assert len([r for r in rows if r.method == "rkr"]) == 2


def test_no_frontier_without_ft(tmp_path):
    _run(tmp_path / "runs", "lwf", "lwf", 0, 50.0, 30.0, 9.0, lwf_alpha=0.5)
    assert build_frontiers(group_runs(find_runs(tmp_path / "runs"))) == []
    assert "## Frontiers" not in write_report(tmp_path / "runs", figures=False).read_text()


def test_frontier_at_recall_k(sweep, tmp_path):
    # FT's seed 0 goes from TR@5 / IR@5 30 / 40 (start) to 20 / 25; the other runs keep their stand-in 1.0
    for file in sweep.glob("*/seed*/results.json"):
        results = json.loads(file.read_text())
        for ev in (results["before"], results["sessions"][0]["eval"]):
            ev["retrieval"]["coco"].update({"tr@5": 30.0, "ir@5": 40.0})
        if file.parent.parent.name == "ft" and file.parent.name == "seed0":
            results["sessions"][0]["eval"]["retrieval"]["coco"].update({"tr@5": 20.0, "ir@5": 25.0})
        file.write_text(json.dumps(results))
    (frontier,) = build_frontiers(group_runs(find_runs(sweep)), recall_at=5)
    assert [m.label for m in frontier.measures] == ["ZS top-1 cifar10", "TR@5 coco", "IR@5 coco"]
    # random ranking of 50 images with 5 of 250 captions each: IR@5 = 5 / 50 = 10%; TR@5 = 1 - prod (1 - 5 / (250 - i))
    tr_chance = 100 * (1 - (245 / 250) * (244 / 249) * (243 / 248) * (242 / 247) * (241 / 246))
    ft = frontier.curves["ft"][0]
    # FT's three seeds pooled: seed 0 lost, seeds 1 and 2 kept everything
    tr_kept = (100 * (20 - tr_chance) / (30 - tr_chance) + 200) / 3
    assert ft.kept["TR@5 coco"].mean == pytest.approx(tr_kept)
    assert ft.kept["IR@5 coco"].mean == pytest.approx((100 * 15 / 30 + 200) / 3)
    # the CLI takes K and refuses K < 1 with one error line
    from clip_cl.report import report_main

    md = report_main([str(sweep), "--output", str(tmp_path / "k5"), "--no_figures", "--recall_at", "5"]).read_text()
    assert "TR@5 coco @ 90% / 100%" in md
    with pytest.raises(SystemExit, match="^error: --recall_at must be at least 1, got 0"):
        report_main([str(sweep), "--no_figures", "--recall_at", "0"])


def test_pareto_front_and_knob_labels(sweep, tmp_path):
    # GEM varies its margin at a fixed memory: its points are labelled by the margin alone
    _run(sweep, "gem_0", "gem", 0, 30.0, 38.0, 12.0, gem_margin=0.0, memory_size=200)
    _run(sweep, "gem_2", "gem", 0, 24.0, 39.0, 12.0, gem_margin=2.0, memory_size=200)
    (frontier,) = build_frontiers(group_runs(find_runs(sweep)))
    assert frontier.knobs["gem"] == "margin" and [p.strength for p in frontier.curves["gem"]] == ["2.0", "0.0"]
    cifar = frontier.measures[0]
    # mean points (x, kept): FT (100, 50), LwF 0.5 (95, 80) and 2 (80, 90), VR-LwF 0.1 (102, 70) and 0.5 (98, 80),
    # GEM 2 (40, 96.7) and 0 (50, 93.3). LwF 0.5 is beaten by VR-LwF 0.5 (higher x, same kept), FT by VR-LwF 0.1.
    front = [(m, p.strength) for m, p in frontier.pareto(cifar)]
    assert front == [("gem", "2.0"), ("gem", "0.0"), ("lwf", "2.0"), ("vr_lwf", "0.5"), ("vr_lwf", "0.1")]
    assert frontier.reaching(cifar) == []
    assert [(m, p.strength) for m, p in frontier.reaching(cifar, 75.0, 85.0)] == [("lwf", "2.0")]
    md = write_report(sweep, tmp_path / "out", figures=False).read_text()
    assert ("- ZS top-1 cifar10: front GEM (margin 2.0, 0.0), LwF (α 2.0), VR-LwF (λ 0.5, 0.1); ≥ 90 / 90: none"
            in md)
    assert "| GEM (margin) | 2 |" in md


def test_identical_curves_are_named(sweep, tmp_path):
    # IMM and WiSE-FT with the same numbers (one session: the same interpolation) are drawn on top of each other
    for method, key in (("imm", "imm_alpha"), ("wise_ft", "wise_alpha")):
        _run(sweep, f"{method}_0.5", method, 0, 45.0, 36.0, 11.0, **{key: 0.5})
        _run(sweep, f"{method}_0.3", method, 0, 30.0, 38.0, 11.5, **{key: 0.3})
    (frontier,) = build_frontiers(group_runs(find_runs(sweep)))
    assert identical_curves(frontier) == [["imm", "wise_ft"]]
    md = write_report(sweep, tmp_path / "out", figures=False).read_text()
    assert "IMM and WiSE-FT have identical points on every measure: the figure draws IMM under WiSE-FT." in md
    # one differing value separates them
    file = next(sweep.glob("wise_ft_0.3/seed0/results.json"))
    results = json.loads(file.read_text())
    results["sessions"][0]["eval"]["retrieval"]["coco"]["ir@1"] = 10.0
    file.write_text(json.dumps(results))
    assert identical_curves(build_frontiers(group_runs(find_runs(sweep)))[0]) == []


def test_figures_are_byte_identical_when_regenerated(sweep, tmp_path):
    write_report(sweep, tmp_path / "a")
    write_report(sweep, tmp_path / "b")
    for name in ("frontier_ost_WM.svg", "frontier_ost_WM.png", "fig5_retrieval.svg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
