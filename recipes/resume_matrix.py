"""Kill a run with SIGKILL at chosen points, run the same command again, and check it ends exactly like an
uninterrupted run: every registered method x every kill point, on the tiny test model.

    python recipes/resume_matrix.py                                  # the whole matrix (docs/reliability.md)
    python recipes/resume_matrix.py --methods ft,vr_lwf --kill-points epoch1-step --jobs 2
    python recipes/resume_matrix.py --methods zscl -- --num_train_epochs 3   # extra recipes/train.py options

For each method: one uninterrupted reference run; then for each kill point a run that is killed with SIGKILL at that
point (it kills itself, so the point is exact and not a matter of timing), followed by the same command once more,
which must finish. The resumed run's `results.json` (without wall-clock times) and every saved model
(`session_*/model`, `model`) must equal the reference's, weights bit for bit. A summary table is printed; the exit
status is 1 if any cell differs or fails, 2 on bad options.

The run is a tiny-model MST protocol like issue #17's: `tests/tiny_quickstart.yaml`, 2 sessions of 5 classes
(200 images each), 2 epochs, batch 32 (7 steps per epoch), a Trainer checkpoint every 3 steps. Kill points:

- `epoch1-step`: session 2, first epoch, one step after a mid-epoch step checkpoint (resumes mid-epoch);
- `epoch2-step`: session 2, second epoch, the same (resumes inside a later epoch);
- `between-sessions`: session 1 is finished and recorded, session 2's trainer is built but has not trained;
- `evaluation`: during the evaluation after session 2 (training done, nothing recorded yet);
- `saving-checkpoint`: inside a Trainer checkpoint of session 2 (weights written, `trainer_state.json` not yet);
- `saving-model`: inside the atomic save of session 1's model (files written to the temporary folder, not renamed).

Runs start as forks of this process after it has imported the package once (`--start-method fork`, the default on
Linux; about half the time of a fresh interpreter per run) or as fresh interpreters (`--start-method spawn`); either
way each run is its own process, killed for real, and nothing but the files on disk carries over to the next run.

Methods get settings that exercise their per-step randomness and saved state (`METHOD_SETTINGS` below): ZSCL with a
reference image set, sampled reference texts and a weight ensemble every 5 steps; mode-IMM (Fisher sampling); LoRA
with dropout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"

KILL_POINTS = {
    "epoch1-step": "session 2, first epoch, one step after a mid-epoch step checkpoint",
    "epoch2-step": "session 2, second epoch, one step after a mid-epoch step checkpoint",
    "between-sessions": "session 1 recorded, session 2's trainer built, before its first step",
    "evaluation": "during the evaluation after session 2",
    "saving-checkpoint": "inside a Trainer checkpoint of session 2, before trainer_state.json",
    "saving-model": "inside the atomic save of session 1's model, before the rename",
}
# Kill points that need a trainer (methods without one, such as Original CLIP, only evaluate).
TRAINING_POINTS = {"epoch1-step", "epoch2-step", "between-sessions", "saving-checkpoint", "saving-model"}

# Settings per method that exercise its per-step draws and the state it saves with checkpoints.
METHOD_SETTINGS = {
    "zscl": {"zscl_reference_dataset": {"name": "coco", "path": str(DATA / "coco_captions"), "split": "test"},
             "zscl_reference_batch_size": 8, "zscl_text_features": "student", "zscl_texts_per_step": 4,
             "zscl_wa_every": 5},
    "imm": {"imm_mode": "mode", "imm_fisher_samples": 16},
    "lora": {"lora_dropout": 0.1},
}


def train_args(method: str, out: Path, extra: list[str]) -> list[str]:
    """The `recipes/train.py` command line of one run (without the interpreter and script)."""
    args = ["--config", str(ROOT / "tests" / "tiny_quickstart.yaml"), "--output_dir", str(out), "--method", method,
            "--protocol", "mst", "--num_sessions", "2", "--num_train_epochs", "2", "--per_device_train_batch_size",
            "32", "--save_strategy", "steps", "--save_steps", "3", "--max_eval_samples", "40", "--disable_tqdm",
            "true", "--report_to", "none",
            "--update_dataset", json.dumps({"name": "fashion_mnist", "path": str(DATA / "fashion_mnist")}),
            "--zero_shot_datasets", json.dumps([{"name": "cifar10", "path": str(DATA / "cifar10"),
                                                 "split": "test"}]),
            "--retrieval_datasets", json.dumps([{"name": "coco", "path": str(DATA / "coco_captions"),
                                                 "split": "test"}])]
    for key, value in METHOD_SETTINGS.get(method, {}).items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args + list(extra)


# ---------------------------------------------------------------------------------------------------- fault injection
def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _session_of(trainer) -> int:
    """1-based session of a trainer, from its output folder `<run>/session_<n>/trainer`."""
    name = Path(trainer.args.output_dir).parent.name
    return int(name.rsplit("_", 1)[-1]) if name.startswith("session_") else 0


def install_kill_point(point: str | None) -> None:
    """Patch the package so that this process SIGKILLs itself at `point` (None: never)."""
    if point is None:
        return
    if point not in KILL_POINTS:
        raise ValueError(point)
    from clip_cl import runner
    from clip_cl.evaluation import evaluator as evaluation
    from clip_cl.methods.base.trainer import CLIPCLTrainer

    saved: list[tuple[int, int, float]] = []  # (session, global step, epoch) of checkpoints completed here

    original_save = CLIPCLTrainer._save_checkpoint

    def save_checkpoint(self, model, trial):
        session = _session_of(self)
        if point == "saving-checkpoint" and session == 2 and any(s == 2 for s, _, _ in saved):
            # The second checkpoint of session 2: die once the weights are written, before the optimizer,
            # RNG and trainer_state.json files.
            original_save_model = self.save_model

            def save_model_then_die(*args, **kwargs):
                original_save_model(*args, **kwargs)
                _die()

            self.save_model = save_model_then_die
        original_save(self, model, trial)
        saved.append((session, self.state.global_step, float(self.state.epoch or 0)))

    CLIPCLTrainer._save_checkpoint = save_checkpoint

    if point in ("epoch1-step", "epoch2-step"):
        epoch = int(point[5]) - 1
        original_step = CLIPCLTrainer.training_step

        def training_step(self, model, inputs, *args, **kwargs):
            if _session_of(self) == 2 and int(self.state.epoch or 0) == epoch:
                # A checkpoint strictly inside this epoch, and at least one step done since: work is lost.
                inside = [step for s, step, ep in saved if s == 2 and int(ep) == epoch and ep > epoch]
                if inside and self.state.global_step > min(inside):
                    _die()
            return original_step(self, model, inputs, *args, **kwargs)

        CLIPCLTrainer.training_step = training_step

    if point == "between-sessions":
        original_train = CLIPCLTrainer.train

        def train(self, *args, **kwargs):
            if _session_of(self) == 2:
                _die()
            return original_train(self, *args, **kwargs)

        CLIPCLTrainer.train = train

    if point == "evaluation":
        original_evaluate = evaluation.Evaluator.evaluate
        armed = {"on": False}

        def evaluate(self, model, seen):
            armed["on"] = seen == 2
            result = original_evaluate(self, model, seen)
            if armed["on"]:  # no zero-shot or retrieval set to die in: die before the results are returned
                _die()
            return result

        def dying(fn):
            def wrapped(*args, **kwargs):
                if armed["on"]:  # the update task is evaluated; die inside the zero-shot / retrieval part
                    _die()
                return fn(*args, **kwargs)
            return wrapped

        evaluation.Evaluator.evaluate = evaluate
        evaluation.zero_shot_eval = dying(evaluation.zero_shot_eval)
        evaluation.retrieval_eval = dying(evaluation.retrieval_eval)

    if point == "saving-model":
        original_atomic = runner.atomic_save_dir

        def atomic_save_dir(path, write):
            if Path(path).parent.name == "session_1" and Path(path).name == "model":
                def write_then_die(tmp):
                    write(tmp)
                    _die()
                return original_atomic(path, write_then_die)
            return original_atomic(path, write)

        runner.atomic_save_dir = atomic_save_dir


def child_main(point: str | None, argv: list[str], log: Path) -> int:
    """Run `recipes/train.py argv` in this process with output to `log`; returns its exit status."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    install_kill_point(point)
    from clip_cl.cli import train_main

    try:
        train_main(argv)
        return 0
    except SystemExit as err:
        print(err, file=sys.stderr)
        return err.code if isinstance(err.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1


# ---------------------------------------------------------------------------------------------------- the matrix
@dataclass
class Cell:
    method: str
    point: str | None  # None: the reference run
    folder: Path
    stages: list[str | None] = field(default_factory=list)  # kill point of each run still to start
    status: str = "pending"
    detail: str = ""
    seconds: float = 0.0
    exits: list[int] = field(default_factory=list)


def comparable(results: dict):
    """Everything measured, without wall-clock times (`seconds` anywhere)."""
    if isinstance(results, dict):
        return {k: comparable(v) for k, v in results.items() if k != "seconds"}
    if isinstance(results, list):
        return [comparable(v) for v in results]
    return results


def _saved_models(run: Path) -> dict[str, Path]:
    return {str(p.parent.relative_to(run)): p for p in sorted(run.glob("**/model/model.safetensors"))
            if not any(part.startswith(".") for part in p.relative_to(run).parts)}


def compare_runs(reference: Path, run: Path) -> str:
    """'' when `run` ended exactly like `reference`, else what differs first."""
    from safetensors.torch import load_file

    want = json.loads((reference / "results.json").read_text())
    got_file = run / "results.json"
    if not got_file.exists():
        return "no results.json"
    got = json.loads(got_file.read_text())
    if got.get("status") != "complete":
        return f"status {got.get('status')!r}"
    a, b = comparable(want), comparable(got)
    if a != b:
        return "results.json: " + _first_difference(a, b)
    models_a, models_b = _saved_models(reference), _saved_models(run)
    if models_a.keys() != models_b.keys():
        return f"saved models {sorted(models_b)} != {sorted(models_a)}"
    for name, path in models_a.items():
        x, y = load_file(str(path)), load_file(str(models_b[name]))
        if x.keys() != y.keys():
            return f"{name}: tensor names differ"
        for key in x:
            if not x[key].equal(y[key]):
                diff = (x[key].double() - y[key].double()).abs().max().item()
                return f"{name}: {key} differs (max |diff| {diff:.3g})"
    return ""


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {json.dumps(a)[:60]} (uninterrupted) vs {json.dumps(b)[:60]} (resumed)"


class Launcher:
    """Starts runs as forks of this process or as fresh interpreters, at most `jobs` at a time."""

    def __init__(self, start_method: str, extra: list[str]):
        self.start_method, self.extra = start_method, extra
        self.running: dict[int, tuple[Cell, float, subprocess.Popen | None]] = {}
        self.child_threads: int | None = None
        if start_method == "fork":
            # Import once here, so that every fork starts with the package, torch and transformers loaded.
            import torch

            import clip_cl.cli  # noqa: F401
            import clip_cl.runner  # noqa: F401
            from clip_cl.methods import list_methods

            list_methods()
            # This process compares the runs' weights with torch ops. With more than one thread those start an
            # OpenMP thread pool, and a process forked after that hangs in its first parallel region (the pool's
            # threads do not exist in the fork; libgomp is not fork-safe): the whole matrix stopped, every fork
            # waiting in a LayerNorm. So this process stays on one thread, and each fork gets the count back.
            self.child_threads = torch.get_num_threads()
            torch.set_num_threads(1)

    def start(self, cell: Cell) -> None:
        point = cell.stages.pop(0)
        argv = train_args(cell.method, cell.folder / "run", self.extra)
        log = cell.folder / "log.txt"
        with open(log, "a") as f:
            f.write(f"\n===== run {len(cell.exits) + 1}: kill point {point or 'none'}\n")
        if self.start_method == "fork":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    import torch

                    torch.set_num_threads(self.child_threads)
                    code = child_main(point, argv, log)
                finally:
                    os._exit(code)
            proc = None
        else:
            cmd = [sys.executable, __file__, "--_child", point or "none", "--_log", str(log), "--", *argv]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            pid = proc.pid
        self.running[pid] = (cell, time.perf_counter(), proc)

    def wait_one(self) -> tuple[Cell, int]:
        """Wait for any run to end; returns its cell and exit code (negative: killed by that signal)."""
        pid, status = os.waitpid(-1, 0)
        while pid not in self.running:  # not ours (should not happen)
            pid, status = os.waitpid(-1, 0)
        cell, start, proc = self.running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if proc is not None:
            proc.returncode = code
        cell.seconds += time.perf_counter() - start
        return cell, code


def expected_kill(cell: Cell, code: int) -> str:
    """'' if the killed run died by SIGKILL before the end, else the problem."""
    if code != -signal.SIGKILL:
        return f"the run meant to be killed exited with {code} (kill point not reached?)"
    results = cell.folder / "run" / "results.json"
    if results.exists() and json.loads(results.read_text()).get("status") == "complete":
        return "the run meant to be killed had completed"
    return ""


def run_matrix(methods: list[str], points: list[str], jobs: int, start_method: str, work: Path,
               extra: list[str], quiet: bool = False) -> list[Cell]:
    from clip_cl.methods import get_method

    references = {m: Cell(m, None, work / m / "uninterrupted", [None]) for m in methods}
    cells: list[Cell] = []
    for m in methods:
        has_trainer = get_method(m).trainer_cls is not None
        for p in points:
            cell = Cell(m, p, work / m / p, [p, None])
            if not has_trainer and p in TRAINING_POINTS:
                cell.status, cell.stages = "n/a", []
            cells.append(cell)
    queue = [c for c in references.values()] + [c for c in cells if c.stages]
    for c in queue:
        c.folder.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(start_method, extra)
    ready = list(queue)
    finished = 0
    while ready or launcher.running:
        while ready and len(launcher.running) < jobs:
            launcher.start(ready.pop(0))
        cell, code = launcher.wait_one()
        cell.exits.append(code)
        if len(cell.exits) == 1 and cell.point is not None:  # the killed run
            problem = expected_kill(cell, code)
            if problem:
                cell.status, cell.detail, cell.stages = "FAIL", problem, []
        elif code != 0:
            cell.status, cell.detail, cell.stages = "FAIL", f"exit status {code} (see {cell.folder}/log.txt)", []
        if cell.stages:
            ready.insert(0, cell)  # the resumed run next, before other cells' first runs
            continue
        if cell.status == "pending":
            cell.status = "done"
        done = [cell] if cell.point is not None else [c for c in cells if c.method == cell.method]
        for c in done:  # compare as soon as both the cell and its reference are finished
            if c.status == "done" and references[c.method].status != "pending":
                _judge(c, references[c.method])
        finished += 1
        if not quiet:
            label = f"{cell.method} / {cell.point or 'uninterrupted'}"
            note = f" ({cell.detail})" if cell.detail else ""
            print(f"[{finished}/{len(queue)}] {label}: {cell.status} in {cell.seconds:.0f} s{note}", flush=True)
    return [references[m] for m in methods] + cells


def _judge(cell: Cell, reference: Cell) -> None:
    if reference.status != "done":
        cell.status, cell.detail = "FAIL", f"the uninterrupted run failed: {reference.detail}"
        return
    difference = compare_runs(reference.folder / "run", cell.folder / "run")
    cell.status, cell.detail = ("ok", "") if not difference else ("DIFF", difference)


def summary(methods: list[str], points: list[str], cells: list[Cell]) -> str:
    by_key = {(c.method, c.point): c for c in cells}
    width = max(len(m) for m in methods + ["method"])
    head = f"| {'method':<{width}} | " + " | ".join(points) + " |"
    lines = [head, "|" + "-" * (width + 2) + "|" + "|".join("-" * (len(p) + 2) for p in points) + "|"]
    for m in methods:
        row = [f"{by_key[(m, p)].status:<{len(p)}}" for p in points]
        lines.append(f"| {m:<{width}} | " + " | ".join(row) + " |")
    problems = [c for c in cells if c.status not in ("ok", "n/a", "done")]
    for c in problems:
        lines.append(f"- {c.method} / {c.point or 'uninterrupted'}: {c.status}: {c.detail}")
    ok = sum(c.status == "ok" for c in cells)
    lines.append(f"{ok} of {sum(c.point is not None and c.status != 'n/a' for c in cells)} kill points resumed to "
                 f"the uninterrupted results ({len(problems)} problem(s)).")
    return "\n".join(lines)


def parse(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Kill points: " + "; ".join(f"{k}: {v}" for k, v in KILL_POINTS.items())
        + ". Options after `--` are passed to recipes/train.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--methods", default="all",
                        help="comma-separated method names, or 'all' (every registered method)")
    parser.add_argument("--kill-points", default="all", help="comma-separated kill points, or 'all'")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    parser.add_argument("--start-method", choices=["fork", "spawn"], default="fork" if hasattr(os, "fork") else "spawn",
                        help="fork this process (package imported once) or start a fresh interpreter per run")
    parser.add_argument("--out", default=None,
                        help="folder for the runs (kept); default: a temporary folder, removed at the end")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_log", default=None, help=argparse.SUPPRESS)
    if argv is None:
        argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    return parser, parser.parse_args(argv), extra


def main(argv: list[str] | None = None) -> int:
    parser, args, extra = parse(argv)
    if args._child is not None:
        return child_main(None if args._child == "none" else args._child, extra, Path(args._log))

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    from clip_cl.methods import list_methods

    registered = list(list_methods())
    methods = registered if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in registered]
    if unknown or not methods:
        return fail(f"unknown method(s) {unknown or args.methods!r}; registered: {', '.join(registered)}.")
    points = list(KILL_POINTS) if args.kill_points == "all" else [
        p.strip() for p in args.kill_points.split(",") if p.strip()]
    bad = [p for p in points if p not in KILL_POINTS]
    if bad or not points:
        return fail(f"unknown kill point(s) {bad or args.kill_points!r}; valid: {', '.join(KILL_POINTS)}.")
    if args.jobs < 1:
        return fail(f"--jobs must be at least 1, got {args.jobs}.")
    if args.out is not None and Path(args.out).exists() and any(Path(args.out).iterdir()):
        return fail(f"--out {args.out} is not empty; give a new folder (runs of an earlier matrix would be mixed in).")

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="resume-matrix-"))
    start = time.perf_counter()
    print(f"Resume matrix: {len(methods)} method(s) x {len(points)} kill point(s), {args.jobs} job(s), "
          f"runs in {work}", flush=True)
    try:
        cells = run_matrix(methods, points, args.jobs, args.start_method, work, extra)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    print(summary(methods, points, cells))
    print(f"Total {time.perf_counter() - start:.0f} s.")
    return 0 if all(c.status in ("ok", "n/a", "done") for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
