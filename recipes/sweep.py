"""Run a sweep: methods x variants x protocols x seeds from one YAML file, into one folder (resumable).

    python recipes/sweep.py recipes/sweeps/quick.yaml --dry_run     # list the runs
    python recipes/sweep.py recipes/sweeps/quick.yaml               # run them (finished runs are skipped)
    python recipes/sweep.py recipes/sweeps/paper.yaml --launcher "accelerate launch --num_processes 2"
    clip-cl report runs/sweep-quick                                  # tables and figures

Same as `clip-cl sweep`; the format and the run layout are in docs/reports.md.
"""

from clip_cl.cli import command
from clip_cl.sweep import sweep_main

if __name__ == "__main__":
    command(sweep_main)()  # a user error prints one `error: ...` line (exit 2); --debug shows the traceback
