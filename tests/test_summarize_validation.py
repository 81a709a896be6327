"""recipes/summarize_validation.py: retention table from results.json files, grouped by config keys on request."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

from summarize_validation import summarize  # noqa: E402


def fake_run(folder: Path, method: str, display: str, ut: float, zs: float, **config) -> None:
    folder.mkdir(parents=True)
    evaluation = lambda ut_acc, zs_top1: {  # noqa: E731
        "ut": {"acc": ut_acc}, "zero_shot": {"cifar10": {"top1": zs_top1}},
        "retrieval": {"coco": {"tr@1": 20.0, "ir@1": 30.0, "num_captions": 50, "num_images": 10}}}
    (folder / "results.json").write_text(json.dumps({
        "status": "complete", "protocol": "ost", "variant": "WM", "method": method, "method_display": display,
        "config": config, "splits": {"zero_shot": [{"name": "cifar10", "class_names": [str(i) for i in range(10)]}]},
        "before": evaluation(10.0, 50.0), "sessions": [{"eval": evaluation(ut, zs)}]}))


def test_grouping_by_a_config_key_keeps_hyperparameters_apart(tmp_path):
    fake_run(tmp_path / "a" / "ft0", "ft", "FT", 60.0, 30.0)
    fake_run(tmp_path / "a" / "ft1", "ft", "FT", 40.0, 30.0)
    fake_run(tmp_path / "a" / "vr", "vr_lwf", "VR-LwF", 50.0, 40.0, vr_lambda=0.5)
    fake_run(tmp_path / "b" / "vr", "vr_lwf", "VR-LwF", 45.0, 46.0, vr_lambda=2.0)
    merged = summarize([tmp_path / "a", tmp_path / "b"])
    assert "| OST | WM | VR-LwF | 2 | 47.50 ± 3.54 |" in merged
    table = summarize([tmp_path / "a", tmp_path / "b"], group_by=["vr_lambda"])
    # FT has no vr_lambda: still the reference of UT / FT (mean 50); ZS kept = (zs - 10) / (50 - 10)
    assert "| OST | WM | FT | 2 | 50.00 ± 14.14 | 100.00 ± 28.28 | 50.00 ± 0.00 |" in table
    assert "| OST | WM | VR-LwF (vr_lambda=0.5) | 1 | 50.00 | 100.00 | 75.00 |" in table
    assert "| OST | WM | VR-LwF (vr_lambda=2.0) | 1 | 45.00 | 90.00 | 90.00 |" in table
