"""`clip-cl report RUNS_DIR`: paper-style tables and figures from every `results.json` under a folder.

Writes `report.md` with

- one table per protocol (OST, MST) and variant (WM / IO / TO): method x metric, mean ± sample std over seeds;
- Fig. 4 (`fig4_sessions.png/.svg`): UT-Acc and ZS-Acc after each session, one column per variant;
- Fig. 5 (`fig5_retrieval.png/.svg`): TR@1 against IR@1, one panel per retrieval set and protocol;
- frontiers (`frontier_<protocol>_<variant>.png/.svg`): per protocol and retention measure, kept % against UT-Acc
  relative to FT, one curve per method through its strengths, and a table of what each method keeps at matched UT-Acc
  (90% and 100% of FT's); `frontier_<protocol>_<variant>_near_ft.png/.svg` repeats them from 80% to 120% of FT's
  UT-Acc, where curves that end near FT crowd the full view;
- the definitions of the metrics, and every run with its status, fingerprint and command.

matplotlib is imported only when figures are drawn (with the Agg canvas, no pyplot state), so `import clip_cl` and
`import clip_cl.report` stay light. Documentation: docs/reports.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunRecord", "Row", "Frontier", "find_runs", "build_tables", "build_frontiers", "identical_curves",
           "interpolate_at", "kept_percent", "write_report", "report_main", "METHOD_ORDER"]

logger = logging.getLogger(__name__)

# Row order of the tables: Original CLIP, the paper's order, the later methods, then the upper bound.
METHOD_ORDER = ["original", "ft", "lwf", "geodl", "imm", "rkr", "vr_lwf", "zscl", "wise_ft", "lora", "er", "agem",
                "gem", "joint_ft"]
DISPLAY = {"original": "Original CLIP", "ft": "FT", "lwf": "LwF", "geodl": "GeoDL", "imm": "IMM", "rkr": "RKR",
           "vr_lwf": "VR-LwF", "zscl": "ZSCL", "wise_ft": "WiSE-FT", "lora": "LoRA", "er": "ER", "agem": "A-GEM",
           "gem": "GEM", "joint_ft": "Joint-FT"}
BOUNDS = ("original", "joint_ft")  # lower / upper bound of UT-Acc: drawn grey, never bold in the tables
VARIANT_NAMES = {"WM": "WM (whole model)", "IO": "IO (image encoder only)", "TO": "TO (text encoder only)"}
VARIANT_ORDER = ["WM", "IO", "TO"]
PROTOCOL_ORDER = ["ost", "mst"]
CONTINUAL_COLUMNS = [("Avg", "avg"), ("Last", "last"), ("BWT", "bwt"), ("Transfer", "transfer")]
# Settings that do not define a row: runs differing only in these are seeds of the same row.
_SEED_KEYS = {"seed", "data_seed"}
FIGURE_FILES = {"fig4": "fig4_sessions", "fig5": "fig5_retrieval"}


@dataclass
class RunRecord:
    """One run folder found under RUNS_DIR."""

    path: Path
    rel: str
    results: dict[str, Any]
    command: str | None = None

    @property
    def method(self) -> str:
        return str(self.results.get("method", "?"))

    @property
    def protocol(self) -> str:
        return str(self.results.get("protocol", "?")).lower()

    @property
    def variant(self) -> str:
        return str(self.results.get("variant", "?")).upper()

    @property
    def seed(self) -> Any:
        return self.results.get("seed")

    @property
    def complete(self) -> bool:
        return self.results.get("status") == "complete"

    @property
    def sessions_done(self) -> int:
        return len(self.results.get("sessions") or [])

    @property
    def num_sessions(self) -> int:
        return int(self.results.get("num_sessions") or 0)

    @property
    def display(self) -> str:
        return DISPLAY.get(self.method) or self.results.get("method_display") or self.method

    def setting(self, keys: set[str] | None = None) -> dict[str, Any]:
        """The config without the seed (and, for evaluation-only methods, without the variant), restricted to `keys`."""
        config = dict(self.results.get("config") or {})
        for key in _SEED_KEYS:
            config.pop(key, None)
        if self.method == "original":
            config.pop("variant", None)
        config.setdefault("method", self.method)
        config.setdefault("protocol", self.protocol)
        return config if keys is None else {k: v for k, v in config.items() if k in keys}

    def setting_id(self, keys: set[str] | None = None) -> str:
        blob = json.dumps(self.setting(keys), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def evals(self) -> list[dict]:
        """Evaluations in session order: index 0 = before training (when measured), then after each session."""
        out = [self.results["before"]] if self.results.get("before") else []
        return out + [s["eval"] for s in self.results.get("sessions") or [] if s.get("eval")]

    def zero_shot_classes(self) -> dict[str, int]:
        """Number of classes of each zero-shot set, from the run's recorded splits (empty when not recorded)."""
        splits = (self.results.get("splits") or {}).get("zero_shot") or []
        return {d["name"]: len(d["class_names"]) for d in splits
                if isinstance(d, dict) and d.get("name") and d.get("class_names")}

    def final_eval(self) -> dict | None:
        sessions = [s["eval"] for s in self.results.get("sessions") or [] if s.get("eval")]
        return sessions[-1] if sessions else None


def _common_keys(runs: Sequence[RunRecord]) -> set[str]:
    """Config keys every run records. A key only some runs have is an option added to clip-cl between them: it does
    not separate rows (older runs ran with its then-only behaviour)."""
    keys = [set(r.setting()) for r in runs]
    return set.intersection(*keys) if keys else set()


def find_runs(runs_dir: str | os.PathLike) -> list[RunRecord]:
    """Every run under `runs_dir` (any depth): a folder with a readable `results.json` holding a clip-cl run."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; give the folder that holds the runs (e.g. runs/sweep-quick).")
    runs = []
    for file in sorted(root.rglob("results.json")):
        try:
            results = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("Skipping %s: not readable JSON (%s)", file, err)
            continue
        if not isinstance(results, dict) or not {"method", "protocol", "sessions"} <= set(results):
            logger.warning("Skipping %s: not a clip-cl results file", file)
            continue
        command_file = file.parent / ".sweep" / "command.txt"
        command = command_file.read_text(encoding="utf-8").strip() if command_file.is_file() else None
        rel = file.parent.relative_to(root).as_posix() or "."
        runs.append(RunRecord(file.parent, rel, results, command))
    return runs


# ----------------------------------------------------------------------------------------------------------- metrics


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def zs_mean(ev: dict) -> float | None:
    """Mean zero-shot top-1 over the zero-shot sets of one evaluation (None without any)."""
    return _mean([v["top1"] for v in (ev.get("zero_shot") or {}).values() if v.get("top1") is not None])


def run_metrics(run: RunRecord) -> dict[str, float | None]:
    """The headline numbers of one run after its last finished session, keyed by table column."""
    out: dict[str, float | None] = {}
    if run.protocol == "mst":
        cont = run.results.get("continual") or {}
        for label, key in CONTINUAL_COLUMNS:
            out[label] = cont.get(key)
    ev = run.final_eval()
    if ev is None:
        return out
    out["UT-Acc"] = (ev.get("ut") or {}).get("acc")
    zs = ev.get("zero_shot") or {}
    for name, v in zs.items():
        out[f"ZS-Acc {name}"] = v.get("top1")
    if len(zs) > 1:
        out["ZS-Acc mean"] = zs_mean(ev)
    for name, v in (ev.get("retrieval") or {}).items():
        out[f"TR@1 {name}"] = v.get("tr@1")
        out[f"IR@1 {name}"] = v.get("ir@1")
    return out


@dataclass
class Stat:
    """Mean, sample standard deviation (n - 1; None for one value) and count of a metric over runs."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not vals:
            return cls(None, None, 0)
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
        return cls(mean, std, len(vals))

    def format(self, n_runs: int) -> str:
        if self.mean is None:
            return "–"
        text = f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"
        if self.n != n_runs:
            text += f" (n={self.n})"
        return text


@dataclass
class Row:
    """One table row: a method (and setting) in one protocol and variant, aggregated over its seeds."""

    method: str
    label: str
    runs: list[RunRecord]
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def incomplete(self) -> list[RunRecord]:
        return [r for r in self.runs if not r.complete]


def _method_rank(method: str) -> tuple[int, str]:
    if method in METHOD_ORDER:
        rank = METHOD_ORDER.index(method)
        return (rank if method != "joint_ft" else len(METHOD_ORDER) + 1, method)
    return (len(METHOD_ORDER), method)  # unknown methods: after GEM, before Joint-FT


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:21] + "..."


def _setting_labels(runs: list[RunRecord], keys: set[str]) -> dict[str, str]:
    """When one method has several settings in one group, name each by the keys that differ (else by a hash)."""
    settings = {}
    for r in runs:
        settings.setdefault(r.setting_id(keys), r.setting(keys))
    if len(settings) < 2:
        return {sid: "" for sid in settings}
    all_keys = set().union(*settings.values())
    keys = sorted(k for k in all_keys
                  if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in settings.values()}) > 1)
    labels = {}
    for sid, s in settings.items():
        if 0 < len(keys) <= 3:
            labels[sid] = ", ".join(f"{k}={_short(s.get(k))}" for k in keys)
        else:
            labels[sid] = f"setting {sid}"
    return labels


def _dedupe_original(runs: list[RunRecord]) -> list[RunRecord]:
    """Original CLIP never trains: runs with the same setting and seed under several variants are one run."""
    seen, out = set(), []
    keys = _common_keys([r for r in runs if r.method == "original"])
    for r in runs:
        key = (r.setting_id(keys), json.dumps(r.seed))
        if r.method == "original":
            if key in seen:
                continue
            seen.add(key)
        out.append(r)
    return out


def group_runs(runs: Sequence[RunRecord]) -> dict[str, dict[str, list[Row]]]:
    """`{protocol: {variant: [Row, ...]}}` in table order. Original CLIP rows appear in every variant of a protocol."""
    out: dict[str, dict[str, list[Row]]] = {}
    protocols = sorted({r.protocol for r in runs}, key=lambda p: (PROTOCOL_ORDER + [p]).index(p))
    for protocol in protocols:
        prot_runs = _dedupe_original([r for r in runs if r.protocol == protocol])
        trained = [r for r in prot_runs if r.method != "original"]
        originals = [r for r in prot_runs if r.method == "original"]
        variants = sorted({r.variant for r in trained} or {r.variant for r in originals},
                          key=lambda v: (VARIANT_ORDER + [v]).index(v))
        out[protocol] = {}
        for variant in variants:
            members = originals + [r for r in trained if r.variant == variant]
            rows = []
            for method in sorted({r.method for r in members}, key=_method_rank):
                mruns = [r for r in members if r.method == method]
                keys = _common_keys(mruns)
                labels = _setting_labels(mruns, keys)
                for sid in sorted(labels):
                    sruns = sorted([r for r in mruns if r.setting_id(keys) == sid], key=lambda r: json.dumps(r.seed))
                    label = sruns[0].display + (f" ({labels[sid]})" if labels[sid] else "")
                    row = Row(method, label, sruns)
                    per_run = [run_metrics(r) for r in sruns]
                    for col in dict.fromkeys(k for m in per_run for k in m):
                        row.stats[col] = Stat.of([m.get(col) for m in per_run])
                    rows.append(row)
            out[protocol][variant] = rows
    return out


def build_tables(runs: Sequence[RunRecord]) -> dict[str, dict[str, list[Row]]]:
    """Alias of [`group_runs`]: the rows of every table, with their statistics."""
    return group_runs(runs)


def _columns(protocol: str, rows_by_variant: dict[str, list[Row]]) -> list[str]:
    present = list(dict.fromkeys(c for rows in rows_by_variant.values() for row in rows for c in row.stats))
    zs = [c for c in present if c.startswith("ZS-Acc ") and c != "ZS-Acc mean"]
    ret = [c for c in present if c.startswith(("TR@1 ", "IR@1 "))]
    ret_sets = list(dict.fromkeys(c.split(" ", 1)[1] for c in ret))
    ret_cols = [c for name in ret_sets for c in (f"TR@1 {name}", f"IR@1 {name}") if c in present]
    cols = [label for label, _ in CONTINUAL_COLUMNS] if protocol == "mst" else []
    cols += ["UT-Acc"] + zs + (["ZS-Acc mean"] if "ZS-Acc mean" in present else []) + ret_cols
    return cols


def _bold_best(rows: list[Row], col: str) -> set[int]:
    """Indices of the rows holding the best mean in `col`, among non-bound methods (higher is better)."""
    cands = [(i, r.stats[col].mean) for i, r in enumerate(rows)
             if r.method not in BOUNDS and col in r.stats and r.stats[col].mean is not None]
    if len(cands) < 2:
        return set()
    best = max(v for _, v in cands)
    return {i for i, v in cands if round(v, 2) == round(best, 2)}


def render_table(protocol: str, variant: str, rows: list[Row], columns: list[str]) -> list[str]:
    head = ["Method", "n"] + [c + (" (final)" if protocol == "mst" and c not in dict(CONTINUAL_COLUMNS) else "")
                              for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(columns)]
    bold = {c: _bold_best(rows, c) for c in columns}
    for i, row in enumerate(rows):
        label = row.label + (" †" if row.incomplete else "")
        cells = []
        for c in columns:
            stat = row.stats.get(c)
            text = stat.format(row.n) if stat else "–"
            cells.append(f"**{text}**" if i in bold[c] else text)
        lines.append(f"| {label} | {row.n} | " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------------------------------------- figures


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    """One colour per trained method (stable across figures); bounds are drawn in grey / black."""
    from matplotlib import colormaps

    # tab10 without its grey (kept for the bounds), then tab20's lighter shades for more methods
    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 7]
    palette += [c for i, c in enumerate(colormaps["tab20"].colors) if i % 2 and i != 15]
    trained = [m for m in sorted(set(methods), key=_method_rank) if m not in BOUNDS]
    out = {m: palette[i % len(palette)] for i, m in enumerate(trained)}
    out.update({"original": "0.45", "joint_ft": "0.1"})
    return out


def _markers(methods: Sequence[str]) -> dict[str, str]:
    """One marker per trained method, so that overlapping curves stay distinguishable (and in grey print)."""
    shapes = ["o", "s", "^", "v", "D", "P", "X", "h", "<", ">", "p", "*"]
    trained = [m for m in sorted(set(methods), key=_method_rank) if m not in BOUNDS]
    return {m: shapes[i % len(shapes)] for i, m in enumerate(trained)}


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150)
    # A fixed salt and no date: the same runs give the same SVG bytes (matplotlib's ids are random otherwise), so a
    # regenerated report in git changes only where the results do.
    with matplotlib.rc_context({"svg.hashsalt": "clip-cl"}):
        fig.savefig(paths[1], metadata={"Date": None})
    return paths


def _band(values_per_run: list[list[float | None]]) -> tuple[list[int], list[float], list[float]]:
    """x, mean and std (0 for one run) per index, over runs of possibly different lengths."""
    xs, means, stds = [], [], []
    for i in range(max(len(v) for v in values_per_run)):
        vals = [v[i] for v in values_per_run if i < len(v) and v[i] is not None]
        if not vals:
            continue
        s = Stat.of(vals)
        xs.append(i)
        means.append(s.mean)
        stds.append(s.std or 0.0)
    return xs, means, stds


def _curve(run: RunRecord, metric: str) -> list[float | None]:
    """UT-Acc or ZS-Acc by session index (0 = before training; None where the run did not measure it)."""
    evals = run.evals()
    if not run.results.get("before"):
        evals = [None] + evals
    if metric == "ut":
        return [None if e is None else (e.get("ut") or {}).get("acc") for e in evals]
    return [None if e is None else zs_mean(e) for e in evals]


def draw_fig4(tables: dict[str, dict[str, list[Row]]], out_dir: Path) -> tuple[list[Path], str] | None:
    """Fig. 4: UT-Acc (top) and ZS-Acc (bottom) after each session, one column per variant. MST runs (OST if none)."""
    protocol = "mst" if "mst" in tables else "ost" if "ost" in tables else None
    if protocol is None:
        return None
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    by_variant = tables[protocol]
    variants = list(by_variant)
    colors = _colors([row.method for rows in by_variant.values() for row in rows])
    markers = _markers([row.method for rows in by_variant.values() for row in rows])
    zs_names = sorted({n for rows in by_variant.values() for row in rows for r in row.runs
                       for e in r.evals() for n in (e.get("zero_shot") or {})})
    zs_label = f"ZS-Acc on {zs_names[0]} (%)" if len(zs_names) == 1 else "ZS-Acc, mean of zero-shot sets (%)"
    fig = Figure(figsize=(4.2 * len(variants) + 2.6, 7.0), layout="constrained")
    axes = fig.subplots(2, len(variants), squeeze=False, sharex="col")
    handles: dict[str, Any] = {}
    max_x = 1
    for col, variant in enumerate(variants):
        # A sweep over strengths: one legend entry per method, each line's strength written at its last point.
        strengths, knobs = _settings_of(by_variant[variant])
        for row_i, (metric, ylabel) in enumerate((("ut", "UT-Acc (%)"), ("zs", zs_label))):
            ax = axes[row_i][col]
            for row in by_variant[variant]:
                xs, means, stds = _band([_curve(r, metric) for r in row.runs])
                if not xs:
                    continue
                max_x = max(max_x, xs[-1])
                if row.method == "original":
                    style = dict(color=colors["original"], linestyle="--", linewidth=1.6, marker=None)
                elif row.method == "joint_ft":
                    style = dict(color=colors["joint_ft"], linestyle="-.", linewidth=1.6, marker=None)
                else:
                    style = dict(color=colors.get(row.method), linestyle="-", linewidth=1.8,
                                 marker=markers.get(row.method, "o"), markersize=5)
                label = row.label + (" (lower bound)" if row.method == "original" else
                                     " (upper bound)" if row.method == "joint_ft" else "")
                if row.method in knobs:
                    label = _method_label(row.method, 2, knobs[row.method])
                    ax.annotate(strengths.get(id(row), ""), (xs[-1], means[-1]), textcoords="offset points",
                                xytext=(4, 0), fontsize=6, color=style["color"], va="center")
                (line,) = ax.plot(xs, means, label=label, **style)
                if any(stds):
                    lo = [m - s for m, s in zip(means, stds)]
                    hi = [m + s for m, s in zip(means, stds)]
                    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
                handles.setdefault(label, (row.method, line))
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row_i == 0:
                ax.set_title(VARIANT_NAMES.get(variant, variant))
            else:
                ax.set_xlabel("Session (0 = before training)")
    for ax in axes.flat:
        ax.set_xlim(-0.2, max_x + 0.2)
    order = sorted(handles, key=lambda lab: (_method_rank(handles[lab][0]), lab))
    legend_handles = [handles[k][1] for k in order]
    if any(len(r.runs) > 1 for rows in by_variant.values() for r in rows):
        legend_handles.append(Line2D([], [], color="0.6", linewidth=8, alpha=0.3))
        order.append("± 1 std over seeds")
    fig.legend(legend_handles, order, loc="outside right center", title="Method", frameon=False)
    title = "MST" if protocol == "mst" else "OST"
    fig.suptitle(f"Fig. 4 - UT-Acc and ZS-Acc after each session ({title})")
    caption = (f"UT-Acc and ZS-Acc after each {title} session (session 0 = the starting model), one column per "
               "variant; Original CLIP (dashed) and Joint-FT (dash-dot) are the lower and upper bounds of UT-Acc; lines "
               "are means over seeds with ± 1 std shaded, and unfinished runs count up to their last session.")
    return _save(fig, out_dir, FIGURE_FILES["fig4"]), caption


def draw_fig5(tables: dict[str, dict[str, list[Row]]], out_dir: Path) -> tuple[list[Path], str] | None:
    """Fig. 5: TR@1 vs IR@1 after the last session, one panel per retrieval set (rows) and protocol (columns)."""
    protocols = [p for p in tables if any(row.stats for rows in tables[p].values() for row in rows)]
    datasets = list(dict.fromkeys(n for p in protocols for rows in tables[p].values() for row in rows
                                  for r in row.runs for n in ((r.final_eval() or {}).get("retrieval") or {})))
    if not protocols or not datasets:
        return None
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.transforms import ScaledTranslation

    all_rows = [row for p in protocols for rows in tables[p].values() for row in rows]
    colors = _colors([row.method for row in all_rows])
    markers = {"WM": "o", "IO": "s", "TO": "^"}
    fig = Figure(figsize=(4.3 * len(protocols) + 2.8, 3.9 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), len(protocols), squeeze=False)
    used_methods, used_variants = {}, set()
    for i, name in enumerate(datasets):
        for j, protocol in enumerate(protocols):
            ax = axes[i][j]
            starts, points, drawn = set(), [], set()
            for variant, rows in tables[protocol].items():
                for row in rows:
                    if row.method == "original":  # listed under every variant, drawn once
                        if row.label in drawn:
                            continue
                        drawn.add(row.label)
                    finished = [r for r in row.runs if r.complete]  # unfinished runs stopped at other sessions
                    pts = [((r.final_eval() or {}).get("retrieval") or {}).get(name) for r in finished]
                    pts = [p for p in pts if p]
                    for r in row.runs:
                        b = ((r.results.get("before") or {}).get("retrieval") or {}).get(name)
                        if b:
                            starts.add((round(b["tr@1"], 6), round(b["ir@1"], 6)))
                    if not pts:
                        continue
                    tr, ir = Stat.of([p["tr@1"] for p in pts]), Stat.of([p["ir@1"] for p in pts])
                    points.append((tr, ir, row.method, variant))
                    used_methods.setdefault(row.method, row.runs[0].display)
                    if row.method != "original":
                        used_variants.add(variant)
            # Points that coincide (FT and Joint-FT in OST, identical runs) are spread sideways by a few pixels.
            groups: dict[tuple, list[int]] = {}
            for k, (tr, ir, _, _) in enumerate(points):
                groups.setdefault((round(tr.mean, 2), round(ir.mean, 2)), []).append(k)
            for members in groups.values():
                for rank, k in enumerate(members):
                    tr, ir, method, variant = points[k]
                    dx = (rank - (len(members) - 1) / 2) * 7 / 72  # inches
                    shift = ax.transData + ScaledTranslation(dx, 0, fig.dpi_scale_trans)
                    marker = "D" if method == "original" else markers.get(variant, "o")
                    ax.errorbar(tr.mean, ir.mean, xerr=tr.std, yerr=ir.std, fmt=marker, markersize=8,
                                color=colors.get(method), markeredgecolor="black", markeredgewidth=0.6,
                                elinewidth=1, capsize=2, zorder=3, transform=shift)
            # shifted artists do not count for autoscaling: give the axes the points (with their error bars)
            ax.update_datalim([(tr.mean + sx * (tr.std or 0), ir.mean + sy * (ir.std or 0))
                               for tr, ir, _, _ in points for sx in (-1, 1) for sy in (-1, 1)])
            ax.autoscale_view()
            for tr0, ir0 in starts:
                ax.scatter([tr0], [ir0], marker="*", s=320, color="gold", edgecolor="black", linewidth=0.8, zorder=2)
            ax.set_xlabel("TR@1 (%)")
            ax.set_ylabel("IR@1 (%)")
            ax.set_title(f"{name} - {protocol.upper()}")
            ax.grid(True, alpha=0.3)
            ax.margins(0.15)
    handles = [Line2D([], [], linestyle="none", marker="s", markersize=9, color=colors.get(m),
                      markeredgecolor="black", markeredgewidth=0.6)
               for m in sorted(used_methods, key=_method_rank)]
    labels = [used_methods[m] for m in sorted(used_methods, key=_method_rank)]
    for v in [v for v in VARIANT_ORDER if v in used_variants] + sorted(used_variants - set(VARIANT_ORDER)):
        handles.append(Line2D([], [], linestyle="none", marker=markers.get(v, "o"), markersize=8, color="white",
                              markeredgecolor="black"))
        labels.append(f"variant {v}")
    if "original" in used_methods:
        handles.append(Line2D([], [], linestyle="none", marker="D", markersize=8, color="white",
                              markeredgecolor="black"))
        labels.append("Original CLIP (any variant)")
    handles.append(Line2D([], [], linestyle="none", marker="*", markersize=15, color="gold", markeredgecolor="black"))
    labels.append("starting model")
    fig.legend(handles, labels, loc="outside right center", frameon=False, title="Colour: method\nShape: variant")
    fig.suptitle("Fig. 5 - image-text retrieval after the last session: TR@1 vs IR@1")
    caption = ("TR@1 against IR@1 after the last session, one panel per retrieval set (rows) and protocol (columns); "
               "colour = method, marker = variant, gold star = the starting model (drawn behind); error bars = ± 1 std "
               "over seeds; points that coincide are spread sideways by a few pixels; unfinished runs are left out.")
    return _save(fig, out_dir, FIGURE_FILES["fig5"]), caption


# --------------------------------------------------------------------------------------------------------- frontiers

# The strength knob of each method (what its frontier sweeps vary); used to label the points of a curve. Methods
# without a knob (FT, RKR, Joint-FT) are single points.
STRENGTH_KEYS: dict[str, tuple[str, ...]] = {
    "lwf": ("lwf_alpha",), "vr_lwf": ("vr_lambda",), "geodl": ("geodl_weight",), "imm": ("imm_alpha",),
    "wise_ft": ("wise_alpha",), "zscl": ("zscl_image_loss_weight", "zscl_text_loss_weight", "zscl_l2_weight"),
    "lora": ("lora_r",), "er": ("replay_weight", "memory_size"), "agem": ("memory_size",),
    "gem": ("gem_margin", "memory_size"),
}
# Short names of the knobs for legends and tables; a method's label names the knobs its settings vary.
KNOB_NAMES: dict[str, str] = {"lwf_alpha": "α", "vr_lambda": "λ", "geodl_weight": "weight", "imm_alpha": "α",
                              "wise_alpha": "α", "zscl_image_loss_weight": "loss weights",
                              "zscl_text_loss_weight": "loss weights", "zscl_l2_weight": "loss weights",
                              "lora_r": "rank", "replay_weight": "replay weight", "memory_size": "memory",
                              "gem_margin": "margin"}
MATCHED_UT = (90.0, 100.0)  # the matched-UT table: kept % interpolated at these % of FT's UT-Acc
NEAR_FT = (80.0, 120.0)  # the near-FT frontier figure shows x in this range (% of FT's UT-Acc), where the table reads


@dataclass
class Measure:
    """A retention measure: zero-shot top-1 on a set (`kind="zs"`), or TR@K / IR@K on a retrieval set (K = `k`)."""

    kind: str
    name: str
    k: int = 1

    @property
    def label(self) -> str:
        return {"zs": "ZS top-1", "tr": f"TR@{self.k}", "ir": f"IR@{self.k}"}[self.kind] + f" {self.name}"

    def value_and_chance(self, ev: dict | None, run: RunRecord | None = None) -> tuple[float | None, float | None]:
        """The measure in one evaluation of `run` and its chance level (zero-shot: from the number of class names
        in the run's recorded `splits`; None when they are not recorded)."""
        if not ev:
            return None, None
        if self.kind == "zs":
            v = (ev.get("zero_shot") or {}).get(self.name) or {}
            n = run.zero_shot_classes().get(self.name) if run is not None else None
            return v.get("top1"), (100.0 / n if n else None)
        v = (ev.get("retrieval") or {}).get(self.name) or {}
        return v.get(f"{self.kind}@{self.k}"), _random_recall(self.kind, self.k, v.get("num_images"),
                                                             v.get("num_captions"))


def _random_recall(kind: str, k: int, num_images: int | None, num_captions: int | None) -> float | None:
    """Recall@K (%) of a random ranking: IR@K = K / N; TR@K = P(one of an image's T / N captions in K drawn from T)
    (both 100 / N at K = 1). None when the set's sizes are not recorded."""
    if not num_images:
        return None
    if kind == "ir" or k == 1:
        return 100.0 * min(1.0, k / num_images)
    if not num_captions:
        return None
    own, miss = num_captions / num_images, 1.0
    for i in range(min(k, num_captions)):
        miss *= max(0.0, 1.0 - own / (num_captions - i))
    return 100.0 * (1.0 - miss)


def kept_percent(after: float | None, before: float | None, chance: float | None) -> float | None:
    """Share of the starting model's above-chance score that is left: `100 * (after - chance) / (before - chance)`.

    Args:
        after (`float`): the score after the last session.
        before (`float`): the starting model's score.
        chance (`float`, *optional*): the chance level (0 when unknown: then the plain ratio `after / before`).

    Returns:
        `float` or `None`: the kept %, or `None` when a score is missing or the starting model is not above chance.
    """
    if after is None or before is None:
        return None
    chance = chance or 0.0
    if before - chance <= 0:
        return None
    return 100.0 * (after - chance) / (before - chance)


def interpolate_at(points: Sequence[tuple[float, float]], x0: float) -> float | None:
    """Linear interpolation of a curve at `x0`, never extrapolated.

    Args:
        points (`Sequence[tuple[float, float]]`): `(x, y)` points of one curve, in any order.
        x0 (`float`): where to read the curve.

    Returns:
        `float` or `None`: `y` at `x0` on the polyline through the points sorted by `x` (points with equal `x` are
        averaged), or `None` when `x0` lies outside `[min x, max x]` (the curve does not reach it).
    """
    by_x: dict[float, list[float]] = {}
    for x, y in points:
        if x is not None and y is not None:
            by_x.setdefault(float(x), []).append(float(y))
    xs = sorted(by_x)
    ys = [sum(by_x[x]) / len(by_x[x]) for x in xs]
    tol = 1e-9
    if not xs or x0 < xs[0] - tol or x0 > xs[-1] + tol:
        return None
    for i, x in enumerate(xs):
        if abs(x - x0) <= tol:
            return ys[i]
        if i and xs[i - 1] < x0 < x:
            t = (x0 - xs[i - 1]) / (x - xs[i - 1])
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return None


@dataclass
class FrontierPoint:
    """One strength of one method, over its seeds: UT-Acc relative to FT (x) and kept % per measure (y)."""

    strength: str
    x: Stat
    kept: dict[str, Stat]
    n: int


@dataclass
class Frontier:
    """The frontiers of one protocol and variant."""

    protocol: str
    variant: str
    ft_ut: float
    measures: list[Measure]
    curves: dict[str, list[FrontierPoint]]  # method -> points sorted by x
    start_x: float | None  # the starting model's UT-Acc relative to FT
    chance_known: dict[str, bool]  # measure label -> chance level recorded (else kept % is the plain ratio)
    knobs: dict[str, str] = field(default_factory=dict)  # method -> the name of the knob its points vary

    def matched(self, method: str, measure: Measure, x0: float) -> float | None:
        """Kept % of `method` on `measure` at `x0` % of FT's UT-Acc, on its mean curve (None: not reached)."""
        return interpolate_at([(x, y) for m, _, x, y in self._points(measure) if m == method], x0)

    def _points(self, measure: Measure) -> list[tuple[str, FrontierPoint, float, float]]:
        """`(method, point, x, kept)` of every mean point that has both values."""
        return [(method, p, p.x.mean, p.kept[measure.label].mean) for method, pts in self.curves.items() for p in pts
                if p.x.mean is not None and measure.label in p.kept and p.kept[measure.label].mean is not None]

    def pareto(self, measure: Measure) -> list[tuple[str, FrontierPoint]]:
        """The mean points (method, strength) that no other point beats on both UT-Acc and kept % of `measure`
        (at least as high on both and higher on one), in order of UT-Acc."""
        pts = self._points(measure)
        front = [(m, p, x, y) for m, p, x, y in pts
                 if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for _, _, x2, y2 in pts)]
        return [(m, p) for m, p, _, _ in sorted(front, key=lambda t: t[2])]

    def best_from(self, method: str, measure: Measure,
                  min_x: float = MATCHED_UT[0]) -> tuple[FrontierPoint, float] | None:
        """The mean point of `method` that keeps the most of `measure` among those at ≥ `min_x` % of FT's UT-Acc, with
        its kept % (None: no point there). Unlike [`matched`] it reads no line between points: a strength that another
        strength beats on both axes (curves that double back, as in MST) cannot lower it, and curves lying wholly
        above FT's UT-Acc (MST's rehearsal methods) have a value."""
        pts = [(y, p) for m, p, x, y in self._points(measure) if m == method and x >= min_x]
        if not pts:
            return None
        y, point = max(pts, key=lambda t: t[0])
        return point, y

    def reaching(self, measure: Measure, min_x: float = 90.0,
                 min_kept: float = 90.0) -> list[tuple[str, FrontierPoint]]:
        """The mean points with UT-Acc ≥ `min_x` % of FT's and kept % of `measure` ≥ `min_kept`."""
        return [(m, p) for m, p, x, y in self._points(measure) if x >= min_x and y >= min_kept]


def _strength_label(run: RunRecord, keys: Sequence[str]) -> str:
    """The knob's value(s) of a run: one value when its keys are set alike (ZSCL's weights scaled together)."""
    config = run.results.get("config") or {}
    values = list(dict.fromkeys(_short(config.get(k)) for k in keys))
    return ", ".join(values)


def _method_label(method: str, n_points: int, knob: str = "strength") -> str:
    name = DISPLAY.get(method, method)
    return f"{name} ({knob})" if n_points > 1 else name


def _varying_keys(method: str, configs: Sequence[dict]) -> list[str]:
    """The strength keys of `method` whose values differ between its settings (all present ones if none differ)."""
    keys = [k for k in STRENGTH_KEYS.get(method, ()) if any(k in c for c in configs)]
    varying = [k for k in keys if len({_short(c.get(k)) for c in configs}) > 1]
    return varying or keys[:1]


def _knob_name(keys: Sequence[str]) -> str:
    """What a method's settings vary, for labels: "α", "loss weights", ... (`KNOB_NAMES`)."""
    return " / ".join(dict.fromkeys(KNOB_NAMES.get(k, k) for k in keys)) or "strength"


def _configs_by_method(rows: Sequence[Row], runs_of=lambda row: row.runs) -> dict[str, list[dict]]:
    """The config of each setting (row) of each method, read from its first run; rows without runs are left out."""
    configs: dict[str, list[dict]] = {}
    for row in rows:
        if runs := runs_of(row):
            configs.setdefault(row.method, []).append(runs[0].results.get("config") or {})
    return configs


def _settings_of(rows: Sequence[Row]) -> tuple[dict[int, str], dict[str, str]]:
    """For methods with several rows (a sweep over strengths): each row's strength label and each method's knob."""
    configs = _configs_by_method(rows)
    keys = {m: k for m, c in configs.items() if len(c) > 1 and (k := _varying_keys(m, c))}  # else: per-row labels
    strengths = {id(row): _strength_label(row.runs[0], keys[row.method]) for row in rows
                 if row.method in keys and row.runs}
    return strengths, {m: _knob_name(k) for m, k in keys.items()}


def build_frontiers(tables: dict[str, dict[str, list[Row]]], recall_at: int = 1) -> list[Frontier]:
    """Kept % against UT-Acc relative to FT, per protocol and variant, one curve per method through its settings.

    x of a run: `100 * UT-Acc / mean UT-Acc of the FT runs` of the same protocol and variant. y: [`kept_percent`] of
    each retention measure (zero-shot top-1 per set, TR@K and IR@K per retrieval set) against the run's own starting
    evaluation (`before`). Each setting of a method (its rows; seeds pooled) is one point with mean ± std over seeds.
    Unfinished runs are left out. Groups without a finished FT run have no frontier.

    Args:
        tables: the output of [`group_runs`].
        recall_at (`int`, defaults to 1): the K of the retrieval measures (R@1 is the paper's; R@5 or R@10 read what
            is kept where R@1 sits near the floor, e.g. a 200-image set at R@1 = 5%).

    Returns:
        `list[Frontier]`.
    """
    out = []
    for protocol, by_variant in tables.items():
        for variant, rows in by_variant.items():
            finished = {id(row): [r for r in row.runs if r.complete and r.final_eval()] for row in rows}
            ft_runs = [r for row in rows if row.method == "ft" for r in finished[id(row)]]
            ft_ut = Stat.of([(r.final_eval().get("ut") or {}).get("acc") for r in ft_runs]).mean
            if not ft_ut:
                continue
            measures: list[Measure] = []
            for row in rows:
                for r in finished[id(row)]:
                    ev = r.final_eval()
                    for name in ev.get("zero_shot") or {}:
                        measures.append(Measure("zs", name))
                    for name in ev.get("retrieval") or {}:
                        measures += [Measure("tr", name, recall_at), Measure("ir", name, recall_at)]
            measures = list({m.label: m for m in measures}.values())
            # One rule per measure: chance-corrected only when every run (and its start) records the chance level.
            chance_known = {m.label: all(m.value_and_chance(ev, r)[1] is not None for row in rows
                                         for r in finished[id(row)] for ev in (r.final_eval(), r.results.get("before"))
                                         if ev) for m in measures}
            curves: dict[str, list[FrontierPoint]] = {}
            starts = []
            configs = _configs_by_method(rows, lambda row: finished[id(row)])
            strength_keys = {method: _varying_keys(method, cfgs) for method, cfgs in configs.items()}
            for row in rows:
                runs = finished[id(row)]
                if row.method == "original" or not runs:
                    continue
                xs, kept = [], {m.label: [] for m in measures}
                for r in runs:
                    ev, before = r.final_eval(), r.results.get("before")
                    xs.append(100.0 * (ev.get("ut") or {}).get("acc", math.nan) / ft_ut)
                    if before and (before.get("ut") or {}).get("acc") is not None:
                        starts.append(100.0 * before["ut"]["acc"] / ft_ut)
                    for m in measures:
                        after, chance = m.value_and_chance(ev, r)
                        start, _ = m.value_and_chance(before, r)
                        kept[m.label].append(kept_percent(after, start, chance if chance_known[m.label] else None))
                keys = strength_keys.get(row.method, [])
                point = FrontierPoint(_strength_label(runs[0], keys) if keys else "", Stat.of(xs),
                                      {k: Stat.of(v) for k, v in kept.items()}, len(runs))
                curves.setdefault(row.method, []).append(point)
            for method in curves:
                curves[method].sort(key=lambda p: p.x.mean if p.x.mean is not None else math.inf)
            knobs = {method: _knob_name(keys) for method, keys in strength_keys.items()}
            out.append(Frontier(protocol, variant, ft_ut, measures, curves, Stat.of(starts).mean, chance_known,
                                knobs))
    return out


def _point_names(points: Sequence[tuple[str, FrontierPoint]], knobs: dict[str, str]) -> str:
    """`VR-LwF (λ 0.5, 2), FT`: the methods of `points` in order of first appearance, with their strengths."""
    by_method: dict[str, list[str]] = {}
    for method, point in points:
        by_method.setdefault(method, []).append(point.strength)
    parts = []
    for method, strengths in by_method.items():
        name = DISPLAY.get(method, method)
        named = [s for s in strengths if s]
        parts.append(f"{name} ({knobs.get(method, 'strength')} {', '.join(named)})" if named else name)
    return ", ".join(parts) if parts else "none"


def render_front_lines(frontier: Frontier) -> list[str]:
    """Markdown bullets per measure: the Pareto front of the mean points, and the points that keep ≥ 90% at ≥ 90% of
    FT's UT-Acc."""
    lines = ["Per measure, over the mean points: **front** = the points no other point beats on both UT-Acc and kept "
             "% (in order of UT-Acc); **≥ 90 / 90** = the points that keep at least 90% at 90% or more of FT's "
             "UT-Acc.", ""]
    for m in frontier.measures:
        lines.append(f"- {m.label}: front {_point_names(frontier.pareto(m), frontier.knobs)}; "
                     f"≥ 90 / 90: {_point_names(frontier.reaching(m), frontier.knobs)}")
    for group in identical_curves(frontier):
        names = [DISPLAY.get(method, method) for method in group]
        lines += ["", f"{' and '.join(names)} have identical points on every measure: the figure draws "
                      f"{names[0]} under {names[-1]}."]
    return lines


def identical_curves(frontier: Frontier) -> list[list[str]]:
    """Groups of methods (two or more) whose curves have the same points on every measure, e.g. IMM and WiSE-FT in
    one session, where both interpolate the starting and fine-tuned weights."""
    def key(method: str):
        return tuple((round(p.x.mean, 9), tuple(round(p.kept[m.label].mean, 9) if p.kept.get(m.label) and
                                                  p.kept[m.label].mean is not None else None
                                                  for m in frontier.measures))
                     for p in frontier.curves[method] if p.x.mean is not None)
    groups: dict = {}
    for method in sorted(frontier.curves, key=_method_rank):
        groups.setdefault(key(method), []).append(method)
    return [g for k, g in groups.items() if len(g) > 1 and k]


def render_matched_table(frontier: Frontier) -> list[str]:
    """Markdown: what each method keeps at matched UT-Acc (90% and 100% of FT's), read off its mean curve."""
    head = ["Method", "strengths", "UT-Acc range (% of FT)"]
    at = " / ".join(f"{x:g}%" for x in MATCHED_UT)
    head += [f"{m.label} @ {at}" for m in frontier.measures]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * (len(head) - 3)]
    for method in sorted(frontier.curves, key=_method_rank):
        pts = frontier.curves[method]
        xs = [p.x.mean for p in pts if p.x.mean is not None]
        rng = f"{min(xs):.1f}–{max(xs):.1f}" if len(xs) > 1 else (f"{xs[0]:.1f}" if xs else "–")
        cells = []
        for m in frontier.measures:
            values = [frontier.matched(method, m, x0) for x0 in MATCHED_UT]
            cells.append(" / ".join("n.r." if v is None else f"{v:.1f}" for v in values))
        label = _method_label(method, len(pts), frontier.knobs.get(method, "strength"))
        lines.append(f"| {label} | {len(pts)} | {rng} | " + " | ".join(cells) + " |")
    return lines


def render_best_table(frontier: Frontier, min_x: float = MATCHED_UT[0]) -> list[str]:
    """Markdown: per method and measure, the most it keeps at any strength with UT-Acc ≥ `min_x` % of FT's."""
    head = ["Method"] + [m.label for m in frontier.measures]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for method in sorted(frontier.curves, key=_method_rank):
        cells = []
        for m in frontier.measures:
            best = frontier.best_from(method, m, min_x)
            if best is None:
                cells.append("–")
            else:
                point, kept = best
                cells.append(f"{kept:.1f} ({point.strength})" if point.strength else f"{kept:.1f}")
        label = _method_label(method, len(frontier.curves[method]), frontier.knobs.get(method, "strength"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def draw_frontier(frontier: Frontier, out_dir: Path, near_ft: bool = False) -> tuple[list[Path], str] | None:
    """Kept % (y) against UT-Acc relative to FT (x), one panel per retention measure, one curve per method.

    Args:
        frontier: the curves ([`build_frontiers`]).
        out_dir: folder for `frontier_<protocol>_<variant>.png/.svg`.
        near_ft (`bool`, defaults to `False`): draw only x within `NEAR_FT` (the region the matched-UT table reads,
            where curves that end near FT crowd the full figure) into `..._near_ft.png/.svg`, each panel's y range
            fitted to the points shown there.

    Returns:
        `(paths, caption)`, or `None` for `near_ft` when no point lies outside `NEAR_FT` (the full figure is already
        that view).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    measures = frontier.measures
    xs_all = [p.x.mean for pts in frontier.curves.values() for p in pts if p.x.mean is not None]
    if near_ft and (not xs_all or (min(xs_all) >= NEAR_FT[0] and max(xs_all) <= NEAR_FT[1])):
        return None
    ncols = min(3, len(measures))
    nrows = math.ceil(len(measures) / ncols)
    methods = sorted(frontier.curves, key=_method_rank)
    colors, markers = _colors(methods), _markers(methods)
    fig = Figure(figsize=(4.6 * ncols + 2.6, 4.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(measures):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, measures):
        shown: list[tuple[float, float]] = []  # (mean, std) of the points inside the near-FT view
        for x0 in MATCHED_UT:
            ax.axvline(x0, color="0.5", linestyle=":", linewidth=1, zorder=1)
        ax.axhline(100, color="0.7", linestyle="-", linewidth=0.8, zorder=1)
        for method in methods:
            pts = [p for p in frontier.curves[method] if p.kept[m.label].mean is not None and p.x.mean is not None]
            if not pts:
                continue
            xs, ys = [p.x.mean for p in pts], [p.kept[m.label].mean for p in pts]
            if near_ft:
                shown += [(p.kept[m.label].mean, p.kept[m.label].std or 0) for p in pts
                          if NEAR_FT[0] <= p.x.mean <= NEAR_FT[1]]
            style = dict(color=colors.get(method), marker=markers.get(method, "o"), markersize=6,
                         markeredgecolor="black", markeredgewidth=0.5)
            if method == "joint_ft":
                style.update(marker="P", linestyle="none")
            ax.plot(xs, ys, linewidth=1.6, zorder=3, **style)
            ax.errorbar(xs, ys, xerr=[p.x.std or 0 for p in pts], yerr=[p.kept[m.label].std or 0 for p in pts],
                        fmt="none", ecolor=colors.get(method), elinewidth=0.9, capsize=2, alpha=0.8, zorder=2)
            if len(pts) > 1:
                for p, x, y in zip(pts, xs, ys):
                    ax.annotate(p.strength, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                                color=colors.get(method))
        ax.set_xlabel("UT-Acc relative to FT (%)")
        ax.set_ylabel("kept (%)" if frontier.chance_known[m.label] else "kept, plain ratio (%)")
        ax.set_title(m.label)
        ax.grid(True, alpha=0.3)
        ax.margins(0.08)
        if near_ft:
            # Lines to points outside leave the view at its edge; the y range is that of the points inside.
            right = min(max(xs_all) + 0.08 * (max(xs_all) - NEAR_FT[0]), NEAR_FT[1])
            ax.set_xlim(NEAR_FT[0], max(right, MATCHED_UT[-1] + 2))
            if shown:
                lo, hi = min(y - s for y, s in shown), max(y + s for y, s in shown)
                pad = 0.08 * (hi - lo) or 1.0
                ax.set_ylim(lo - pad, hi + pad)
    handles = [Line2D([], [], color=colors.get(k), marker=markers.get(k, "o"), markeredgecolor="black",
                      markeredgewidth=0.5, linestyle="-" if k != "joint_ft" else "none") for k in methods]
    labels = [_method_label(k, len(frontier.curves[k]), frontier.knobs.get(k, "strength")) for k in methods]
    fig.legend(handles, labels, loc="outside right center", frameon=False, title="Method (strength knob)")
    start = (f"; starting model at {frontier.start_x:.0f}%, kept 100%" if frontier.start_x is not None else "")
    view = f", near FT (x from {NEAR_FT[0]:g} to {NEAR_FT[1]:g}%)" if near_ft else ""
    fig.suptitle(f"Frontiers - {frontier.protocol.upper()} · {frontier.variant}{view}: what is kept against UT-Acc "
                 f"(x = 100: FT's UT-Acc, {frontier.ft_ut:.1f}%{start})")
    stem = f"frontier_{frontier.protocol}_{frontier.variant}" + ("_near_ft" if near_ft else "")
    if near_ft:
        caption = (f"The same curves from {NEAR_FT[0]:g}% to {NEAR_FT[1]:g}% of FT's UT-Acc, where the table reads "
                   "them and the full figure crowds; each panel's y range fits the points shown (lines to points "
                   "outside leave at the edge).")
        return _save(fig, out_dir, stem), caption
    caption = ("Kept % of the starting model's above-chance score (y; 100 = nothing lost) against UT-Acc relative to "
               "FT's (x), one panel per retention measure; one curve per method through its strengths (labels: the "
               "knob's value), points are means over seeds with ± 1 std bars in both directions; dotted lines at "
               f"{' and '.join(f'{x:g}%' for x in MATCHED_UT)} of FT's UT-Acc, where the table reads the curves (the "
               "starting model, kept 100% at its own UT-Acc, is named in the title rather than drawn, so that the "
               "axes stay on the methods). Up and to the right is better.")
    return _save(fig, out_dir, stem), caption


# ------------------------------------------------------------------------------------------------------------ report

_DEFINITIONS = """\
All numbers are percentages (0-100), measured after the last finished session unless the column says otherwise.
Ranking ties count against the model (docs/metrics.md, "The tie rule").

- **UT-Acc** (updated task): top-1 accuracy on the update-task test images of the classes learned so far, classified
  among those classes (before training: all classes). For MST "(final)" is after the last session.
- **ZS-Acc <set>**: zero-shot top-1 accuracy on a held-out classification set, class prompts from
  `zero_shot_templates`; **ZS-Acc mean** is the plain mean over the sets (shown when there are several).
- **TR@1 / IR@1 <set>**: image-to-text / text-to-image Recall@1 on an image-caption set; an image counts as retrieved
  when any of its captions ranks first.
- MST only, from the accuracy matrix `a[i][j]` = UT-Acc per session `j` after session `i` (class-incremental: session
  `j` classified among the classes of sessions `0..max(i, j)`):
  - **Avg**: mean over sessions `i` of the mean of `a[i][j]` for `j <= i` (average incremental accuracy);
  - **Last**: mean of the last row `a[T-1][j]`;
  - **BWT**: mean over `j < T-1` of `a[T-1][j] - a[j][j]` (negative = forgetting);
  - **Transfer**: accuracy on a session before it is learned, averaged over sessions; the starting model's row counts
    as `i = -1` when it was evaluated (the default).
- **n**: runs (seeds) behind a row; cells show mean ± sample standard deviation (n − 1 denominator) when n > 1, and
  `(n=k)` when only `k` runs have that value. **Bold**: best mean among the non-bound methods of a table.
- **†**: at least one run of the row is incomplete; its values come from the sessions finished so far, and Avg / Last /
  BWT / Transfer (which need every session) from the complete runs only.
- Original CLIP (never trained; lower bound of UT-Acc) appears in every variant's table; Joint-FT (trained on all data
  seen so far from the starting model) is the upper bound.
"""


def _metrics_doc_link(out_dir: Path) -> str:
    doc = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    if doc.is_file():
        return f"[docs/metrics.md]({Path(os.path.relpath(doc, out_dir.resolve())).as_posix()})"
    return "`docs/metrics.md` in the clip-cl repository"


def render_report(runs: Sequence[RunRecord], tables: dict[str, dict[str, list[Row]]], figures: dict[str, Any],
                  runs_dir: Path, out_dir: Path) -> str:
    lines = [f"# clip-cl report: `{runs_dir}`", ""]
    n_incomplete = sum(not r.complete for r in runs)
    lines += [f"{len(runs)} runs ({len(runs) - n_incomplete} complete, {n_incomplete} incomplete). "
              "Generated by `clip-cl report`; definitions at the end.", ""]
    names = {"ost": "OST: one session on all update classes", "mst": "MST: several sessions of disjoint classes"}
    for protocol, by_variant in tables.items():
        num = sorted({r.num_sessions for rows in by_variant.values() for row in rows for r in row.runs})
        sessions = f" ({'/'.join(map(str, num))} sessions)" if protocol == "mst" else ""
        lines += [f"## {names.get(protocol, protocol.upper())}{sessions}", ""]
        columns = _columns(protocol, by_variant)
        for variant, rows in by_variant.items():
            lines += [f"### {protocol.upper()} · {VARIANT_NAMES.get(variant, variant)}", ""]
            lines += render_table(protocol, variant, rows, columns)
            flagged = [r for row in rows for r in row.incomplete]
            if flagged:
                lines += ["", "† incomplete: " + "; ".join(
                    f"`{r.rel}` ({r.sessions_done} of {r.num_sessions} sessions)" for r in flagged)]
            lines.append("")
    if not tables:
        lines += ["No runs found.", ""]
    for key, title in (("fig4", "Fig. 4: accuracy after each session"), ("fig5", "Fig. 5: retrieval trade-off")):
        if figures.get(key):
            paths, caption = figures[key]
            png = Path(os.path.relpath(paths[0], out_dir)).as_posix()
            svg = Path(os.path.relpath(paths[1], out_dir)).as_posix()
            lines += [f"## {title}", "", f"![{title}]({png})", "", f"{caption} ([SVG]({svg}))", ""]
    frontiers = figures.get("frontiers") or []
    if frontiers:
        lines += ["## Frontiers: what each method keeps against UT-Acc", "",
                  "Kept % = `100 * (after - chance) / (before - chance)` of each retention measure (the share of the "
                  "starting model's above-chance score that is left; chance = 1 / classes for zero-shot top-1, "
                  "a random ranking's recall for retrieval); x = UT-Acc as % of FT's mean UT-Acc. Each table cell "
                  "reads a method's curve (means over seeds, linear between its strengths, never extrapolated) at "
                  f"{' and '.join(f'{x:g}%' for x in MATCHED_UT)} of FT's UT-Acc; **n.r.**: the curve does not reach "
                  "that UT-Acc (its strengths span the range in the third column).", ""]
        for frontier, drawn in frontiers:
            lines += [f"### {frontier.protocol.upper()} · {VARIANT_NAMES.get(frontier.variant, frontier.variant)} "
                      f"(FT's UT-Acc {frontier.ft_ut:.2f}%)", ""]
            lines += render_matched_table(frontier)
            lines += ["", f"Best kept at **≥ {MATCHED_UT[0]:g}% of FT's UT-Acc**, over each method's strengths (the "
                      "strength in brackets; `–`: no strength gets there). It reads the points themselves, so a "
                      "strength that another beats on both axes cannot lower it, and curves that lie wholly above FT's "
                      "UT-Acc have a value (in MST, methods that forget less than FT also score higher UT-Acc).", ""]
            lines += render_best_table(frontier)
            lines += [""] + render_front_lines(frontier)
            raw = [label for label, known in frontier.chance_known.items() if not known]
            if raw:
                lines += ["", "Chance level not recorded for " + ", ".join(raw) + " (no class names in a run's "
                          "`splits`): kept % is the plain ratio `100 * after / before` there."]
            for paths, caption in drawn:
                png = Path(os.path.relpath(paths[0], out_dir)).as_posix()
                svg = Path(os.path.relpath(paths[1], out_dir)).as_posix()
                lines += ["", f"![frontiers {frontier.protocol} {frontier.variant}]({png})", "",
                          f"{caption} ([SVG]({svg}))"]
            lines.append("")
    lines += ["## Definitions", "", _DEFINITIONS, f"Formulas and a worked example: {_metrics_doc_link(out_dir)}.", ""]
    lines += ["## Runs", "",
              "Fingerprint: hash of the settings that define what a run computes (`run.json` holds them). Command: "
              "as launched by `clip-cl sweep` (`.sweep/command.txt`; runs started otherwise record none).", "",
              "| run | method | variant | protocol | seed | sessions | status | fingerprint | command |",
              "|---|---|---|---|---:|---:|---|---|---|"]
    for r in sorted(runs, key=lambda r: r.rel):
        status = r.results.get("status", "?")
        cmd = f"`{r.command}`" if r.command else "–"
        lines.append(f"| `{r.rel}` | {r.display} | {r.variant} | {r.protocol.upper()} | {r.seed} | "
                     f"{r.sessions_done}/{r.num_sessions} | {status} | `{r.results.get('fingerprint', '?')}` | {cmd} |")
    lines.append("")
    return "\n".join(lines)


def write_report(runs_dir: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 figures: bool = True, recall_at: int = 1) -> Path:
    """Scan `runs_dir` for runs and write `report.md` (and the figures) to `output` (default: `runs_dir`).

    Args:
        runs_dir: the folder holding the runs (any depth).
        output: the folder for `report.md` and the figures.
        figures (`bool`, defaults to `True`): draw the figures (matplotlib).
        recall_at (`int`, defaults to 1): the K of the frontiers' retrieval measures ([`build_frontiers`]).

    Returns:
        `Path`: the written `report.md`.
    """
    runs_dir = Path(runs_dir)
    out_dir = Path(output) if output is not None else runs_dir
    runs = find_runs(runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = group_runs(runs)
    figs: dict[str, Any] = {}
    if figures and runs:
        figs["fig4"] = draw_fig4(tables, out_dir)
        figs["fig5"] = draw_fig5(tables, out_dir)
    figs["frontiers"] = [(f, [d for d in (draw_frontier(f, out_dir), draw_frontier(f, out_dir, near_ft=True)) if d]
                          if figures else []) for f in build_frontiers(tables, recall_at) if f.curves]
    from .io import atomic_write_text

    path = out_dir / "report.md"
    atomic_write_text(path, render_report(runs, tables, figs, runs_dir, out_dir))
    return path


def report_main(argv: Sequence[str] | None = None) -> Path:
    """`clip-cl report RUNS_DIR [--output DIR] [--no_figures] [--recall_at K]`."""
    parser = argparse.ArgumentParser(
        prog="clip-cl report",
        description="Scan RUNS_DIR (any depth) for results.json files and write report.md: per protocol and variant, "
                    "a method x metric table (mean ± std over seeds), Fig. 4 (UT-Acc / ZS-Acc per session) and Fig. 5 "
                    "(TR@1 vs IR@1) as PNG and SVG, metric definitions, and every run with its fingerprint. "
                    "See docs/reports.md.")
    parser.add_argument("runs_dir", help="folder holding the runs (e.g. runs/sweep-quick)")
    parser.add_argument("--output", default=None, help="folder for report.md and the figures (default: RUNS_DIR)")
    parser.add_argument("--no_figures", action="store_true", help="write the tables only (no matplotlib)")
    parser.add_argument("--recall_at", type=int, default=1, metavar="K",
                        help="K of the retrieval measures in the frontiers: TR@K / IR@K kept (default 1, the paper's "
                             "R@1; 5 or 10 where R@1 sits near the floor). The tables and Fig. 5 stay at R@1.")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.recall_at < 1:
        raise SystemExit(f"error: --recall_at must be at least 1, got {args.recall_at}; pass 1 (R@1), 5 or 10.")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        path = write_report(args.runs_dir, args.output, figures=not args.no_figures, recall_at=args.recall_at)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"Wrote {path}")
    return path


if __name__ == "__main__":
    report_main()
