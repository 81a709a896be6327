"""Retention table of a validation folder (docs/results.md): how much of the starting model's above-chance ability
each method keeps, and how much of FT's updated-task accuracy it reaches.

    python recipes/summarize_validation.py runs/validation
    python recipes/summarize_validation.py runs/validation runs/validation_vr_lambda --group-by vr_lambda

Several folders are read together (FT's runs in one serve as the reference of the others). `--group-by KEY ...` keeps
runs whose configs differ in those keys apart (e.g. VR-LwF at several `vr_lambda`), naming them `method (KEY=value)`;
runs whose config has no such key (FT) are grouped as before.

For every OST/MST x variant x method (means over seeds, sample std when several):
  UT-Acc                  final updated-task accuracy (%)
  UT / FT                 UT-Acc divided by FT's mean UT-Acc in the same protocol and variant
  ZS kept                 (ZS - chance) / (ZS_before - chance), chance = 100 / number of classes of the zero-shot set
  TR@1 kept, IR@1 kept    the same for retrieval Recall@1, chance = 100 / number of candidates (captions or images)
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from clip_cl.cli import command
from clip_cl.errors import UserError


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _kept(after: float, before: float, chance: float) -> float:
    return 100.0 * (after - chance) / (before - chance)


def _results(roots: Sequence[Path]):
    for root in roots:
        if not root.is_dir():
            raise UserError(f"{root} is not a folder: pass folders of runs (results.json files below them), e.g. "
                            "runs/validation.")
        for path in sorted(root.rglob("results.json")):
            yield json.loads(path.read_text())


def summarize(roots: Path | Sequence[Path], group_by: Sequence[str] = ()) -> str:
    roots = [roots] if isinstance(roots, Path) else list(roots)
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    names: dict[str, str] = {}
    for r in _results(roots):
        if r.get("status") != "complete" or not r.get("before"):
            continue
        before, after = r["before"], r["sessions"][-1]["eval"]
        config = r.get("config", {})
        extra = ", ".join(f"{k}={config[k]}" for k in group_by if k in config)
        method = f"{r['method']} ({extra})" if extra else r["method"]
        key = (r["protocol"], r["variant"], method)
        names[method] = f"{r['method_display']} ({extra})" if extra else r["method_display"]
        g = groups[key]
        g["ut"].append(after["ut"]["acc"])
        n_classes = {d["name"]: len(d["class_names"]) for d in r["splits"]["zero_shot"]}
        zs_kept = [_kept(zs["top1"], before["zero_shot"][name]["top1"], 100.0 / n_classes[name])
                   for name, zs in after["zero_shot"].items()]
        if zs_kept:
            g["zs"].append(statistics.mean(zs_kept))
        tr, ir = [], []
        for name, ret in after["retrieval"].items():
            b = before["retrieval"][name]
            tr.append(_kept(ret["tr@1"], b["tr@1"], 100.0 / ret["num_captions"]))
            ir.append(_kept(ret["ir@1"], b["ir@1"], 100.0 / ret["num_images"]))
        if tr:
            g["tr"].append(statistics.mean(tr))
            g["ir"].append(statistics.mean(ir))
    lines = ["| protocol | variant | method | n | UT-Acc | UT / FT | ZS kept | TR@1 kept | IR@1 kept |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for (protocol, variant, method), g in sorted(groups.items()):
        ft = groups.get((protocol, variant, "ft"), {}).get("ut")
        ratio = [100.0 * u / statistics.mean(ft) for u in g["ut"]] if ft else []
        lines.append(f"| {protocol.upper()} | {variant} | {names[method]} | {len(g['ut'])} | {_mean_std(g['ut'])} | "
                     f"{_mean_std(ratio)} | {_mean_std(g['zs'])} | {_mean_std(g['tr'])} | {_mean_std(g['ir'])} |")
    return "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


@command
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("folders", nargs="*", type=Path, default=[Path("runs/validation")],
                   help="folders of runs (default: runs/validation)")
    p.add_argument("--group-by", nargs="+", default=[], metavar="KEY",
                   help="config keys whose values keep runs apart (e.g. vr_lambda)")
    a = p.parse_args(argv)
    print(summarize(a.folders, a.group_by))


if __name__ == "__main__":
    main()
