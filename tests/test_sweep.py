"""`clip-cl sweep`: expansion, merged configs, skipping finished runs, resuming, failures, errors (fake runners)."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from clip_cl.sweep import SweepError, expand_sweep, load_sweep, run_sweep, summary_table, sweep_main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "tests" / "tiny_quickstart.yaml"


def write_sweep(tmp_path, body, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).replace("OUT", str(tmp_path / "out")).replace("BASE", str(QUICKSTART)))
    return path


BASIC = """\
    base_config: BASE
    output_dir: OUT
    methods: [ft, original, lwf]
    variants: [WM, io]
    protocols: [ost, mst]
    seeds: [0, 1]
    overrides: {num_train_epochs: 1, num_sessions: 4, max_eval_samples: 20}
    protocol_overrides: {mst: {num_sessions: 2}}
    variant_overrides: {IO: {learning_rate: 1.0e-5}}
    method_overrides: {lwf: {lwf_alpha: 0.25}}
"""


def fake_launch(calls, fail=()):
    """Stands in for a training subprocess: writes run.json + a complete results.json (unless the run should fail)."""
    def launch(run, command):
        calls.append(run.name)
        if run.name in fail:
            run.log_path.write_text("Traceback ...\nRuntimeError: boom\n")
            return 1
        folder = Path(run.output_dir)
        (folder / "run.json").write_text(json.dumps({"fingerprint": run.fingerprint}))
        (folder / "results.json").write_text(json.dumps({"status": "complete", "method": run.method}))
        return 0
    return launch


def test_expansion_layout_and_merged_configs(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, BASIC))
    runs = expand_sweep(sweep)
    # 2 protocols x (ft, lwf over 2 variants + original once) x 2 seeds
    assert len(runs) == 2 * 5 * 2
    names = [r.name for r in runs]
    assert names[:4] == ["ost/WM/ft/seed0", "ost/WM/ft/seed1", "ost/WM/original/seed0", "ost/WM/original/seed1"]
    assert "ost/IO/original/seed0" not in names and "mst/IO/lwf/seed1" in names
    by = {r.name: r for r in runs}
    io_lwf = by["mst/IO/lwf/seed1"].config
    assert Path(by["mst/IO/lwf/seed1"].output_dir) == tmp_path / "out" / "mst" / "IO" / "lwf" / "seed1"
    assert io_lwf["num_sessions"] == 2 and io_lwf["learning_rate"] == 1e-5 and io_lwf["lwf_alpha"] == 0.25
    assert (io_lwf["method"], io_lwf["protocol"], io_lwf["variant"], io_lwf["seed"]) == ("lwf", "mst", "IO", 1)
    assert io_lwf["update_dataset"]["path"] == "examples/data/fashion_mnist"  # from the base config
    assert "num_sessions" not in by["ost/WM/ft/seed0"].config  # OST has one session whatever `overrides` says
    assert "lwf_alpha" not in by["mst/IO/ft/seed1"].config


def test_method_strengths_expand_one_run_per_setting_and_seed(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, """\
        base_config: BASE
        output_dir: OUT
        methods: [ft, lwf, zscl]
        protocols: [ost]
        seeds: [0, 1]
        method_overrides: {lwf: {lwf_alpha: 0.25, lwf_temperature: 2.0}}
        method_strengths:
          lwf: [{lwf_alpha: 0.1}, {lwf_alpha: 2}]
          zscl: [{zscl_image_loss_weight: 0.1, zscl_l2_weight: 0.1}]
    """))
    runs = expand_sweep(sweep)
    assert [r.name for r in runs] == [
        "ost/WM/ft/seed0", "ost/WM/ft/seed1", "ost/WM/lwf/lwf_alpha=0.1/seed0", "ost/WM/lwf/lwf_alpha=0.1/seed1",
        "ost/WM/lwf/lwf_alpha=2/seed0", "ost/WM/lwf/lwf_alpha=2/seed1",
        "ost/WM/zscl/zscl_image_loss_weight=0.1,zscl_l2_weight=0.1/seed0",
        "ost/WM/zscl/zscl_image_loss_weight=0.1,zscl_l2_weight=0.1/seed1"]
    by = {r.name: r for r in runs}
    lwf = by["ost/WM/lwf/lwf_alpha=2/seed1"]
    assert Path(lwf.output_dir) == tmp_path / "out" / "ost" / "WM" / "lwf" / "lwf_alpha=2" / "seed1"
    # the strength wins over method_overrides; the method's other overrides stay
    assert lwf.config["lwf_alpha"] == 2 and lwf.config["lwf_temperature"] == 2.0
    assert Path(lwf.config["output_dir"]) == Path(lwf.output_dir)


def test_skip_finished_resume_unfinished_and_report_failures(tmp_path, capsys):
    sweep = load_sweep(write_sweep(tmp_path, BASIC.replace("seeds: [0, 1]", "seeds: [0]")))
    calls = []
    runs = run_sweep(sweep, launch=fake_launch(calls, fail={"mst/WM/lwf/seed0"}), log=lambda s: None)
    assert len(calls) == len(runs) == 10
    status = {r.name: r.status for r in runs}
    assert status["mst/WM/lwf/seed0"] == "failed" and sum(s == "done" for s in status.values()) == 9
    first = Path(runs[0].output_dir) / ".sweep"
    assert yaml.safe_load((first / "config.yaml").read_text())["method"] == runs[0].method
    assert "-m clip_cl.cli train --config" in (first / "command.txt").read_text()
    table = summary_table(runs)
    assert "9 done, 0 skipped, 1 failed" in table and "mst/WM/lwf/seed0/.sweep/train.log" in table
    record = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [r["status"] for r in record["runs"]].count("failed") == 1

    # second invocation: finished runs are skipped, the failed one is launched again
    calls.clear()
    runs = run_sweep(sweep, launch=fake_launch(calls), log=lambda s: None)
    assert calls == ["mst/WM/lwf/seed0"]
    assert sum(r.status == "skipped" for r in runs) == 9 and all(r.status != "failed" for r in runs)

    # an unfinished run (status running) resumes; a folder holding other settings is a conflict, not overwritten
    unfinished = Path(runs[1].output_dir) / "results.json"
    unfinished.write_text(json.dumps({"status": "running"}))
    other = Path(runs[2].output_dir) / "run.json"
    other.write_text(json.dumps({"fingerprint": "something-else"}))
    calls.clear()
    runs = run_sweep(sweep, launch=fake_launch(calls), log=lambda s: None)
    assert calls == [runs[1].name]
    assert runs[2].status == "failed" and "different settings" in runs[2].note
    assert json.loads(other.read_text())["fingerprint"] == "something-else"


def test_real_subprocess_logs_and_exit_status(tmp_path, capsys):
    """The subprocess path with a stand-in for `clip_cl.cli train` (a tiny script), through `--launcher`."""
    script = tmp_path / "fake_train.py"
    script.write_text(textwrap.dedent("""\
        import json, sys, yaml
        from pathlib import Path
        cfg = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
        print("training", cfg["method"], sys.argv[1:4])
        if cfg["method"] == "lwf":
            sys.exit("lwf exploded")
        Path(cfg["output_dir"], "results.json").write_text(json.dumps({"status": "complete"}))
    """))
    path = write_sweep(tmp_path, """\
        base_config: BASE
        output_dir: OUT
        methods: [ft, lwf]
        protocols: [ost]
    """)
    with pytest.raises(SystemExit) as err:
        sweep_main([str(path), "--launcher", f"{sys.executable} {script}"])
    assert err.value.code == 1  # one run failed
    out = capsys.readouterr().out
    assert "1 done, 0 skipped, 1 failed" in out and "lwf exploded" in out  # the failing run's log tail is shown
    log = (tmp_path / "out" / "ost" / "WM" / "ft" / "seed0" / ".sweep" / "train.log").read_text()
    assert "training ft ['-m', 'clip_cl.cli', 'train']" in log
    # dry run: lists, writes nothing, knows what is finished
    before = sorted(p for p in (tmp_path / "out").rglob("*"))
    sweep_main([str(path), "--dry_run"])
    assert sorted(p for p in (tmp_path / "out").rglob("*")) == before
    out = capsys.readouterr().out
    assert "ost/WM/ft/seed0" in out and "1 to start, 0 to resume, 1 complete (skipped)" in out
    # a launcher that does not exist fails that run, not the sweep
    runs = run_sweep(load_sweep(path), launcher="/no/such/launcher", only=["*/lwf/*"], log=lambda s: None)
    assert [(r.name, r.status) for r in runs] == [("ost/WM/lwf/seed0", "failed")] and "could not start" in runs[0].note


@pytest.mark.parametrize("body, match", [
    ("metods: [ft]\noutput_dir: x\n",
     r"Unknown key\(s\).*'metods' Did you mean 'methods'\?.*Valid keys:.*protocol_overrides"),
    ("methods: [ft]\noutput_dir: x\nlearning_rate: 1.0e-5\n", r"'learning_rate'.*go under `overrides:`"),
    ("methods: [ftt]\noutput_dir: x\n", r"Unknown method 'ftt'.*Did you mean 'ft'"),
    ("methods: [ft]\noutput_dir: x\nvariants: [WN]\n", r"unknown variant 'WN'.*Did you mean 'WM'"),
    ("methods: [ft]\noutput_dir: x\nprotocols: [mts]\n", r"unknown protocol 'mts'"),
    ("methods: [ft]\noutput_dir: x\noverrides: {seed: 3}\n", r"sets 'seed', which the sweep sets"),
    ("methods: [ft]\noutput_dir: x\nmethod_overrides: {lwf: {lwf_alpha: 1}}\n", r"entry for 'lwf'.*not in the"),
    ("methods: [ft]\n", r"`output_dir` is required"),
    ("methods: [ft]\noutput_dir: x\nmethod_strengths: {lwf: [{lwf_alpha: 1}]}\n", r"entry for 'lwf'.*not in the"),
    ("methods: [lwf]\noutput_dir: x\nmethod_strengths: {lwf: [{}]}\n", r"non-empty list of non-empty mappings"),
    ("methods: [lwf]\noutput_dir: x\nmethod_strengths: {lwf: [{seed: 1}]}\n", r"sets 'seed', which the sweep"),
    ("methods: [lwf]\noutput_dir: x\nmethod_strengths: {lwf: [{lwf_alpha: 1}, {lwf_alpha: 1}]}\n",
     r"lists a setting twice"),
    ("methods: [ft]\noutput_dir: x\nbase_config: nowhere.yaml\n", r"base_config 'nowhere.yaml' was found neither"),
])
def test_sweep_file_errors(tmp_path, body, match):
    with pytest.raises(SweepError, match=f"(?s){match}"):
        load_sweep(write_sweep(tmp_path, body))


def test_train_config_errors_name_the_run(tmp_path):
    path = write_sweep(tmp_path, """\
        base_config: BASE
        output_dir: OUT
        methods: [ft, vr_lwf]
        protocols: [ost]
        overrides: {vr_lambda: 0.5}
    """)
    with pytest.raises(SystemExit, match=r"(?s)Run ost/WM/ft/seed0: .*vr_lambda.*method_overrides: \{ft: \.\.\.\}"):
        sweep_main([str(path), "--dry_run"])


def test_shipped_sweeps_expand():
    quick = expand_sweep(load_sweep(ROOT / "recipes" / "sweeps" / "quick.yaml"))
    assert {r.method for r in quick} == {"original", "ft", "lwf", "vr_lwf", "joint_ft"} and len(quick) == 10
    paper = expand_sweep(load_sweep(ROOT / "recipes" / "sweeps" / "paper.yaml"))
    assert {r.method for r in paper} == {"original", "ft", "lwf", "geodl", "imm", "rkr", "vr_lwf", "joint_ft"}
    assert len(paper) == 2 * (1 + 7 * 3)
    # The official protocol (docs/paper_protocol.md): MST = 8 phases of 10 COCO classes in COCO's order, OST from the
    # paper config; the COCO 2014 + Karpathy update task in both.
    mst = [r for r in paper if r.protocol == "mst"]
    assert all(r.config["num_sessions"] == 8 and r.config["class_order"] == "given" for r in mst)
    assert all(r.config["update_dataset"]["builder_kwargs"]["year"] == 2014 for r in paper)


def test_shipped_frontier_sweeps_expand():
    runs = [r for f in ("ost_seeds", "ost", "mst_seeds", "mst")
            for r in expand_sweep(load_sweep(ROOT / "recipes" / "sweeps" / "frontier" / f"{f}.yaml"))]
    assert len(runs) == 121
    strengths: dict = {}
    for r in runs:
        strengths.setdefault((r.protocol, r.method), set()).add(r.strength)
    for method in ("lwf", "vr_lwf", "geodl", "imm", "wise_ft", "zscl", "lora", "er", "gem"):
        assert len(strengths["ost", method]) == 4 and strengths["ost", method] == strengths["mst", method], method
    # A-GEM's one knob, the memory, exists only from a second session on: one OST run, four MST strengths
    assert strengths["ost", "agem"] == {""} and len(strengths["mst", "agem"]) == 4
    rehearsal = [r for r in runs if r.method in ("er", "agem", "gem")]
    assert all(r.config["replay_dataset"]["path"] == "data/world/pascal_train" for r in rehearsal)
    seeds = {(r.protocol, r.method): {x.seed for x in runs if (x.protocol, x.method) == (r.protocol, r.method)}
             for r in runs}
    assert all(seeds[p, m] == {0, 1, 2} for p in ("ost", "mst") for m in ("ft", "lwf", "vr_lwf"))
    assert all(r.config["num_sessions"] == 5 for r in runs if r.protocol == "mst")
    assert all(any(d["path"] == "data/world/tiny_imagenet_heldout" for d in r.config["zero_shot_datasets"])
               for r in runs)


@pytest.mark.parametrize("protocol, methods", [("ost", {"geodl", "er"}), ("mst", {"zscl", "er"})])
def test_best_seeds_match_the_seed0_runs(protocol, methods):
    # seeds 1, 2 of the two best single-seed methods: the configs of the seed-0 runs but for the seed, so the report
    # pools them
    frontier = ROOT / "recipes" / "sweeps" / "frontier"
    best = expand_sweep(load_sweep(frontier / f"{protocol}_best_seeds.yaml"))
    seed0 = {(r.method, r.strength): r for r in expand_sweep(load_sweep(frontier / f"{protocol}.yaml"))}
    assert len(best) == 16 and {r.seed for r in best} == {1, 2} and {r.method for r in best} == methods
    assert {r.protocol for r in best} == {protocol}
    drop = ("seed", "output_dir")
    for r in best:
        ref = seed0[r.method, r.strength]
        assert {k: v for k, v in r.config.items() if k not in drop} == \
            {k: v for k, v in ref.config.items() if k not in drop}, (r.method, r.strength)
