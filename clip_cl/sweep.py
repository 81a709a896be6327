"""Sweeps: one YAML file runs methods x variants x protocols x seeds into one folder, resumably.

```yaml
base_config: recipes/configs/quickstart.yaml   # a train config (relative to this file, else to the working dir)
output_dir: runs/sweep-quick
methods: [original, ft, lwf, vr_lwf, joint_ft]
variants: [WM]                                 # WM / IO / TO
protocols: [ost, mst]
seeds: [0]
overrides: {num_train_epochs: 1}               # every run
protocol_overrides: {mst: {num_sessions: 5}}   # runs of one protocol
variant_overrides: {IO: {learning_rate: 1.0e-5}}
method_overrides: {vr_lwf: {vr_lambda: 0.5}}   # runs of one method
method_strengths:                              # optional: several settings of a method (a trade-off frontier)
  lwf: [{lwf_alpha: 0.1}, {lwf_alpha: 0.5}, {lwf_alpha: 2.0}]
```

Each run's config is the base config, then `overrides`, `protocol_overrides[protocol]`, `variant_overrides[variant]`
and `method_overrides[method]` (later ones win, top-level keys replace), then `method`, `protocol`, `variant`, `seed`
and `output_dir` set by the sweep. A method listed under `method_strengths` runs once per entry (each a mapping of
config keys applied after `method_overrides`), in `<method>/<key>=<value>[,...]/seed<k>`; the report draws each
method's settings as one curve (docs/reports.md, "Frontiers"). Run folders:

```
<output_dir>/sweep.json                               the expanded sweep and the outcome of each run (last invocation)
<output_dir>/<protocol>/<variant>/<method>/seed<k>/   one run folder (layout in clip_cl/runner.py)
    .sweep/config.yaml                                the merged train config the run was launched with
    .sweep/command.txt                                the command line
    .sweep/train.log                                  its stdout + stderr (appended on every launch)
```

Evaluation-only methods (`original`) do not depend on the variant: they run once per protocol and seed, in the folder
of the first variant listed, and `clip-cl report` shows them in every variant group.

Every run is launched as a subprocess (`python -m clip_cl.cli train --config .sweep/config.yaml`, or behind
`--launcher "accelerate launch --num_processes 2"`), so a failing run does not stop the sweep. Before launching, each
run's config is parsed and fingerprinted in-process: a run whose `results.json` is complete with the same fingerprint
is skipped, an unfinished one resumes (the runner continues from its last session), and a folder holding a run with
different settings is reported as a conflict instead of being overwritten.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SweepError", "SweepRun", "load_sweep", "expand_sweep", "run_sweep", "sweep_main", "SWEEP_KEYS"]

# key -> what it holds (shown in errors and `--help`)
SWEEP_KEYS: dict[str, str] = {
    "base_config": "train config YAML every run starts from (relative to the sweep file, else the working dir)",
    "output_dir": "folder of the sweep; runs go to <output_dir>/<protocol>/<variant>/<method>/seed<k>",
    "methods": "method names (`clip-cl methods`)",
    "variants": "WM / IO / TO (default [WM])",
    "protocols": "ost / mst (default [ost, mst])",
    "seeds": "values of `seed` (default [0])",
    "overrides": "train-config keys applied to every run",
    "protocol_overrides": "{ost|mst: {key: value}} applied to runs of that protocol",
    "variant_overrides": "{WM|IO|TO: {key: value}} applied to runs of that variant",
    "method_overrides": "{method: {key: value}} applied to runs of that method",
    "method_strengths": "{method: [{key: value}, ...]}: one run per entry (and seed), applied after method_overrides",
    "launcher": "command prefix, e.g. 'accelerate launch --num_processes 2' (default: this Python)",
}
# Set by the sweep for each run: not allowed in base_config overrides.
_SWEEP_SET = ("method", "protocol", "variant", "seed", "output_dir")
_EVAL_ONLY = ("original",)
# Words of config errors that come from this machine rather than from the settings (bf16 without a GPU, ...).
_HARDWARE_WORDS = ("bf16", "fp16", "gpu", "cuda", "xpu", "npu", "mps", "device")


class SweepError(ValueError):
    """A problem in a sweep file that the user must fix."""


@dataclass
class SweepRun:
    """One run of a sweep: where it goes, its merged config, and what happened to it."""

    protocol: str
    variant: str
    method: str
    seed: int
    output_dir: str
    config: dict[str, Any]
    strength: str = ""  # `<key>=<value>[,...]` of a `method_strengths` entry ("" for none)
    fingerprint: str | None = None
    status: str = "pending"  # pending / done / skipped / failed
    note: str = ""
    seconds: float | None = None
    command: list[str] = field(default_factory=list)
    settings: dict[str, Any] | None = field(default=None, repr=False)  # what the runner fingerprints

    @property
    def name(self) -> str:
        strength = f"/{self.strength}" if self.strength else ""
        return f"{self.protocol}/{self.variant}/{self.method}{strength}/seed{self.seed}"

    @property
    def log_path(self) -> Path:
        return Path(self.output_dir) / ".sweep" / "train.log"


def _suggest(key: str, valid: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise SweepError(f"{what} {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SweepError(f"{path} must hold a mapping of keys to values, got {type(data).__name__}.")
    return data


def _as_list(value: Any, key: str) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int)):
        return [value]
    raise SweepError(f"`{key}` must be a list (or a single value), got {type(value).__name__}.")


def _mapping(value: Any, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"`{key}` must be a mapping, got {type(value).__name__}: {value!r}.")
    return dict(value)


def _check_overrides(block: dict, where: str) -> None:
    for key in block:
        if key in _SWEEP_SET:
            raise SweepError(f"`{where}` sets {key!r}, which the sweep sets for each run (from methods / protocols / "
                             "variants / seeds / output_dir); remove it.")
        if key == "overwrite_run":
            raise SweepError(f"`{where}` sets 'overwrite_run', which would restart every run on every invocation; "
                             "delete the run folders you want redone instead.")


def load_sweep(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a sweep YAML file; returns a normalised dict (lists, upper-case variants, base config)."""
    path = Path(path)
    data = _read_yaml(path, "Sweep file")
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        hints = "; ".join(f"{k!r}{_suggest(k, list(SWEEP_KEYS))}" for k in unknown)
        valid = "\n".join(f"  {k}: {v}" for k, v in SWEEP_KEYS.items())
        raise SweepError(f"Unknown key(s) in sweep file {path}: {hints}\nValid keys:\n{valid}\n"
                         "Train-config keys (learning_rate, num_train_epochs, ...) go under `overrides:`.")
    if not data.get("output_dir"):
        raise SweepError(f"{path}: `output_dir` is required (the folder the runs go to).")
    if not data.get("methods"):
        raise SweepError(f"{path}: `methods` is required, e.g. methods: [original, ft, lwf] (`clip-cl methods`).")

    from .methods import get_method

    methods = []
    for m in _as_list(data["methods"], "methods"):
        try:
            methods.append(get_method(m).name)
        except ValueError as err:
            raise SweepError(f"{path}: {err}") from None
    variants = [str(v).upper() for v in _as_list(data.get("variants", ["WM"]), "variants")]
    for v in variants:
        if v not in ("WM", "IO", "TO"):
            raise SweepError(f"{path}: unknown variant {v!r}; use WM, IO or TO.{_suggest(v, ['WM', 'IO', 'TO'])}")
    protocols = [str(p).lower() for p in _as_list(data.get("protocols", ["ost", "mst"]), "protocols")]
    for p in protocols:
        if p not in ("ost", "mst"):
            raise SweepError(f"{path}: unknown protocol {p!r}; use ost or mst.{_suggest(p, ['ost', 'mst'])}")
    seeds = _as_list(data.get("seeds", [0]), "seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"{path}: `seeds` must be integers, got {seeds!r}.")
    for key, values in (("methods", methods), ("variants", variants), ("protocols", protocols), ("seeds", seeds)):
        if not values:
            raise SweepError(f"{path}: `{key}` is empty.")
        if len(set(values)) != len(values):
            raise SweepError(f"{path}: `{key}` lists a value twice: {values}.")

    overrides = _mapping(data.get("overrides"), "overrides")
    _check_overrides(overrides, "overrides")
    nested = {}
    for key, valid, norm in (("protocol_overrides", protocols, str.lower), ("variant_overrides", variants, str.upper),
                             ("method_overrides", methods, lambda s: s.lower().replace("-", "_"))):
        block = {norm(str(k)): _mapping(v, f"{key}.{k}") for k, v in _mapping(data.get(key), key).items()}
        for k, v in block.items():
            if k not in valid:
                raise SweepError(f"{path}: `{key}` has an entry for {k!r}, which is not in the sweep's "
                                 f"{key.split('_')[0]}s {valid}.{_suggest(k, valid)}")
            _check_overrides(v, f"{key}.{k}")
        nested[key] = block
    strengths: dict[str, list[dict]] = {}
    for k, entries in _mapping(data.get("method_strengths"), "method_strengths").items():
        method = str(k).lower().replace("-", "_")
        if method not in methods:
            raise SweepError(f"{path}: `method_strengths` has an entry for {k!r}, which is not in the sweep's methods "
                             f"{methods}.{_suggest(method, methods)}")
        entries = [_mapping(e, f"method_strengths.{k}") for e in _as_list(entries, f"method_strengths.{k}")]
        if not entries or not all(entries):
            raise SweepError(f"{path}: `method_strengths.{k}` must be a non-empty list of non-empty mappings, e.g. "
                             "[{lwf_alpha: 0.5}, {lwf_alpha: 2.0}].")
        for e in entries:
            _check_overrides(e, f"method_strengths.{k}")
        labels = [_strength_label(e) for e in entries]
        if len(set(labels)) != len(labels):
            raise SweepError(f"{path}: `method_strengths.{k}` lists a setting twice: {labels}.")
        strengths[method] = entries

    base: dict[str, Any] = {}
    base_path = None
    if data.get("base_config"):
        raw = Path(str(data["base_config"]))
        candidates = [raw] if raw.is_absolute() else [path.parent / raw, Path.cwd() / raw]
        base_path = next((c for c in candidates if c.is_file()), None)
        if base_path is None:
            raise SweepError(f"{path}: base_config {str(raw)!r} was found neither next to the sweep file nor in the "
                             f"working directory (looked at {', '.join(str(c) for c in candidates)}).")
        base = _read_yaml(base_path, "base_config")
        for key in _SWEEP_SET:
            base.pop(key, None)
        base.pop("overwrite_run", None)
    launcher = data.get("launcher")
    if launcher is not None and not isinstance(launcher, str):
        raise SweepError(f"{path}: `launcher` must be a string such as 'accelerate launch --num_processes 2'.")
    return {"path": str(path), "base_config": str(base_path) if base_path else None, "base": base,
            "output_dir": str(data["output_dir"]), "methods": methods, "variants": variants, "protocols": protocols,
            "seeds": seeds, "overrides": overrides, **nested, "method_strengths": strengths, "launcher": launcher}


def _strength_label(entry: dict[str, Any]) -> str:
    """Folder name of one `method_strengths` entry: `key=value` pairs joined by commas (path-safe)."""
    text = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in entry.items())
    return text.replace("/", "_").replace(" ", "")


def expand_sweep(sweep: dict[str, Any]) -> list[SweepRun]:
    """The runs of a loaded sweep, in order protocol > variant > method > seed, with their merged configs."""
    out = Path(sweep["output_dir"])
    runs = []
    for protocol in sweep["protocols"]:
        for variant in sweep["variants"]:
            for method in sweep["methods"]:
                if method in _EVAL_ONLY and variant != sweep["variants"][0]:
                    continue  # the starting model does not depend on the variant
                for strength in sweep.get("method_strengths", {}).get(method) or [{}]:
                    label = _strength_label(strength) if strength else ""
                    for seed in sweep["seeds"]:
                        config = dict(sweep["base"])
                        config.update(sweep["overrides"])
                        if protocol == "ost":
                            config.pop("num_sessions", None)  # OST has one session; num_sessions is for MST
                        config.update(sweep["protocol_overrides"].get(protocol, {}))
                        config.update(sweep["variant_overrides"].get(variant, {}))
                        config.update(sweep["method_overrides"].get(method, {}))
                        config.update(strength)
                        folder = out / protocol / variant / method
                        folder = (folder / label if label else folder) / f"seed{seed}"
                        config.update(method=method, protocol=protocol, variant=variant, seed=seed,
                                      output_dir=str(folder))
                        runs.append(SweepRun(protocol, variant, method, seed, str(folder), config, label))
    return runs


def _write_config(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by `clip-cl sweep`: the merged train config of this run.\n"
                    + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def fingerprint_runs(runs: Sequence[SweepRun], log: Callable[[str], None] = print) -> None:
    """Parse each run's config as `clip-cl train` would and store its fingerprint (errors name the run)."""
    from .cli import ConfigError, parse_config
    from .runner import config_fingerprint, result_config

    warned = False
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            file = Path(tmp) / f"run{i}.yaml"
            _write_config(file, run.config)
            try:
                config = parse_config(["--config", str(file)], prog="clip-cl train")
            except ConfigError as err:
                msg = str(err).replace(str(file), "the merged config")
                raise SweepError(f"Run {run.name}: {msg}\n(The run's config is base_config + overrides + "
                                 "protocol/variant/method_overrides; keys of one method belong under "
                                 f"method_overrides: {{{run.method}: ...}}.)") from None
            except ValueError as err:
                if any(word in str(err).lower() for word in _HARDWARE_WORDS):
                    # e.g. bf16 on a machine without a GPU: the settings are fine, this host just cannot build them.
                    if not warned:
                        log(f"warning: cannot check the run configs on this machine ({err}); finished runs are "
                            "recognised by their status only, and each run checks its config when it starts.")
                        warned = True
                    continue
                raise SweepError(f"Run {run.name}: {err}") from None
            run.fingerprint = config_fingerprint(config)
            run.settings = result_config(config)


def plan_run(run: SweepRun) -> str:
    """What a run needs: 'skip' (complete, same settings), 'resume', 'start', or 'conflict' (different settings)."""
    from .io import read_json

    folder = Path(run.output_dir)
    results_file, run_file = folder / "results.json", folder / "run.json"
    if run_file.exists():
        previous = read_json(run_file)
        if run.fingerprint is not None and previous.get("fingerprint") != run.fingerprint:
            mine, theirs = run.settings or {}, previous.get("config") or {}
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            run.note = (f"{folder} holds a run with different settings ({', '.join(diff[:8]) or 'unknown'}); "
                        "delete the folder to redo it, or change output_dir")
            return "conflict"
    if results_file.exists():
        try:
            results = read_json(results_file)
        except ValueError:
            return "resume"
        if results.get("status") == "complete":
            return "skip"
        return "resume"
    if run_file.exists():
        return "resume"
    return "start"


def build_command(run: SweepRun, launcher: str | None = None) -> list[str]:
    """The command line that trains one run from its `.sweep/config.yaml`."""
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    return [*prefix, "-m", "clip_cl.cli", "train", "--config", str(Path(run.output_dir) / ".sweep" / "config.yaml")]


def launch_subprocess(run: SweepRun, command: list[str]) -> int:
    """Run `command`, appending its stdout and stderr to the run's log; returns the exit status."""
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(run.log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            return proc.wait()
        except BaseException:  # Ctrl-C: stop the child too, then let the sweep report
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _status_after(run: SweepRun) -> bool:
    from .io import read_json

    results_file = Path(run.output_dir) / "results.json"
    try:
        return results_file.exists() and read_json(results_file).get("status") == "complete"
    except ValueError:
        return False


def run_sweep(sweep: dict[str, Any], *, launcher: str | None = None, dry_run: bool = False,
              only: Sequence[str] | None = None, launch: Callable[[SweepRun, list[str]], int] = launch_subprocess,
              log: Callable[[str], None] = print) -> list[SweepRun]:
    """Run (or, with `dry_run`, list) every run of a loaded sweep; returns the runs with their status.

    Args:
        sweep (`dict`): from [`load_sweep`].
        launcher (`str`, *optional*): command prefix (overrides the sweep's `launcher`).
        dry_run (`bool`): only plan; nothing is written.
        only (`Sequence[str]`, *optional*): glob patterns on run names (`mst/WM/*/seed0`); other runs are left out.
        launch (`Callable`): starts one run and returns its exit status (tests pass a fake).
        log (`Callable`): where progress lines go.
    """
    runs = expand_sweep(sweep)
    if only:
        runs = [r for r in runs if any(fnmatch.fnmatchcase(r.name, pat) for pat in only)]
        if not runs:
            raise SweepError(f"--only {' '.join(only)} matches no run; run names look like "
                             f"{expand_sweep(sweep)[0].name}.")
    fingerprint_runs(runs, log=log)
    launcher = launcher if launcher is not None else sweep.get("launcher")
    plans = [plan_run(r) for r in runs]
    for run in runs:
        run.command = build_command(run, launcher)
    if dry_run:
        for i, (run, plan) in enumerate(zip(runs, plans), 1):
            run.status = {"skip": "skipped", "conflict": "failed"}.get(plan, "pending")
            run.note = run.note or {"skip": "complete", "resume": "would resume", "start": "would start"}[plan]
            detail = run.note if plan == "conflict" else shlex.join(run.command)
            log(f"[{i}/{len(runs)}] {run.name:32s} {plan:8s} {detail}")
        return runs

    total = len(runs)
    try:
        for i, (run, plan) in enumerate(zip(runs, plans), 1):
            if plan == "skip":
                run.status, run.note = "skipped", "already complete"
                log(f"[{i}/{total}] {run.name}: skipped (already complete)")
                continue
            if plan == "conflict":
                run.status = "failed"
                log(f"[{i}/{total}] {run.name}: not run: {run.note}")
                continue
            sweep_dir = Path(run.output_dir) / ".sweep"
            _write_config(sweep_dir / "config.yaml", run.config)
            (sweep_dir / "command.txt").write_text(shlex.join(run.command) + "\n", encoding="utf-8")
            log(f"[{i}/{total}] {run.name}: {'resuming' if plan == 'resume' else 'starting'} (log: {run.log_path})")
            start = time.perf_counter()
            try:
                rc = launch(run, run.command)
            except OSError as err:  # the launcher itself is missing (e.g. `accelerate` not installed)
                run.status, run.note = "failed", f"could not start {run.command[0]!r}: {err}"
                log(f"[{i}/{total}] {run.name}: FAILED ({run.note})")
                continue
            run.seconds = round(time.perf_counter() - start, 1)
            if rc == 0 and _status_after(run):
                run.status, run.note = "done", ""
                log(f"[{i}/{total}] {run.name}: done in {run.seconds:.0f} s")
            else:
                run.status = "failed"
                run.note = f"exit status {rc}" if rc != 0 else "exited 0 but results.json is not complete"
                log(f"[{i}/{total}] {run.name}: FAILED ({run.note}); last lines of {run.log_path}:\n"
                    + _tail(run.log_path))
    except KeyboardInterrupt:
        for run in runs:
            if run.status == "pending":
                run.status, run.note = "failed", "interrupted"
        _write_summary(sweep, runs)
        log(summary_table(runs))
        raise
    _write_summary(sweep, runs)
    return runs


def _write_summary(sweep: dict[str, Any], runs: Sequence[SweepRun]) -> None:
    from .io import atomic_write_json

    record = {k: v for k, v in sweep.items() if k != "base"}
    record["runs"] = [{k: v for k, v in asdict(r).items() if k not in ("config", "settings")} | {"name": r.name,
                      "log": str(r.log_path)} for r in runs]
    atomic_write_json(Path(sweep["output_dir"]) / "sweep.json", record)


def summary_table(runs: Sequence[SweepRun]) -> str:
    """A plain-text table of the runs and their outcome, with counts and the logs of failed runs."""
    width = max([len(r.name) for r in runs] + [3])
    lines = [f"{'run'.ljust(width)}  status   time     note", f"{'-' * width}  -------  -------  ----"]
    for r in runs:
        secs = f"{r.seconds:6.0f}s" if r.seconds is not None else "      -"
        note = r.note
        if r.status == "failed" and r.log_path.exists():
            note = f"{note}; log: {r.log_path}" if note else f"log: {r.log_path}"
        lines.append(f"{r.name.ljust(width)}  {r.status:7s}  {secs}  {note}")
    counts = {s: sum(r.status == s for r in runs) for s in ("done", "skipped", "failed", "pending")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n or s != "pending"))
    return "\n".join(lines)


def sweep_main(argv: Sequence[str] | None = None) -> list[SweepRun]:
    """`clip-cl sweep SWEEP.yaml [--dry_run] [--launcher CMD] [--only PATTERN ...]`."""
    keys = "\n".join(f"  {k:19s}{v}" for k, v in SWEEP_KEYS.items())
    parser = argparse.ArgumentParser(
        prog="clip-cl sweep", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run methods x variants x protocols x seeds from one YAML file into one folder. Finished runs "
                    "are skipped, unfinished ones resume, and a failing run does not stop the others. Layout and "
                    "examples: docs/reports.md.",
        epilog=f"sweep file keys:\n{keys}\n\nexamples:\n  clip-cl sweep recipes/sweeps/quick.yaml --dry_run\n"
               "  clip-cl sweep recipes/sweeps/quick.yaml && clip-cl report runs/sweep-quick")
    parser.add_argument("sweep_file", help="sweep YAML file (e.g. recipes/sweeps/quick.yaml)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs and what each needs; run nothing")
    parser.add_argument("--launcher", default=None,
                        help="command prefix of each run, e.g. \"accelerate launch --num_processes 2\" "
                             "(default: the sweep file's `launcher`, else this Python)")
    parser.add_argument("--only", nargs="+", default=None, metavar="PATTERN",
                        help="run only runs whose name matches one of these globs, e.g. 'mst/WM/*' or '*/lwf/*'")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        sweep = load_sweep(args.sweep_file)
        runs = run_sweep(sweep, launcher=args.launcher, dry_run=args.dry_run, only=args.only)
    except SweepError as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if args.dry_run:
        notes = [r.note if r.status != "failed" else "conflict" for r in runs]
        kinds = (("would start", "to start"), ("would resume", "to resume"), ("complete", "complete (skipped)"),
                 ("conflict", "conflicts"))
        print(f"\nDry run, nothing written: {len(runs)} runs; "
              + ", ".join(f"{notes.count(n)} {label}" for n, label in kinds))
    else:
        print()
        print(summary_table(runs))
        print(f"\nReport: clip-cl report {sweep['output_dir']}")
    if any(r.status == "failed" for r in runs):
        raise SystemExit(1)
    return runs


if __name__ == "__main__":
    sweep_main()
