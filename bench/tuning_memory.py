"""Memory over a long search: resident memory after each trial, per backend and trial mode.

Usage: `python bench/tuning_memory.py [--trials 30] [--backends tensorflow,jax,torch]`.
Runs `python -m app tune` on digits with a student MLP (one epoch per trial) for each backend:
TensorFlow twice, with every trial in one process (`tuning.trials_per_process=0`) and with
the default of 10 trials per worker process; JAX and PyTorch in one process. Each trial
records the resident memory of the process that ran it (`trial_summary.json`); the table
shows it after trials 1, 10, 20 and the last, the growth per trial over the second half of
the search (least squares), and the peak.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# (backend, trials_per_process, label)
RUNS = [
    ("tensorflow", 0, "one process"),
    ("tensorflow", 10, "10 trials per process (default)"),
    ("jax", 0, "one process (default)"),
    ("torch", 0, "one process (default)"),
]


def search_memory(backend, trials_per_process, trials, directory):
    """Runs one search; returns the resident memory (MB) after each trial, in trial order."""
    overrides = [
        "model.size=student", "training.epochs=1", "training.verbose=0",
        "search={schedule.lr: {log_uniform: [1.0e-4, 1.0e-1]}, model.width: {int: [8, 64]}}",
        f"tuning.max_trials={trials}", f"tuning.trials_per_process={trials_per_process}",
        f"output.dir={directory}", "output.name=bench", "output.timestamp=false",
    ]
    command = [sys.executable, "-m", "app", "--backend", backend, "tune"]
    for override in overrides:
        command += ["--set", override]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    subprocess.run(command, check=True, cwd=REPO, env=environment, stdout=subprocess.DEVNULL)
    trial_dirs = sorted((Path(directory) / "bench-search" / "tuner").glob("trial_*"))
    return [json.loads((trial / "trial_summary.json").read_text())["memory_mb"]
            for trial in trial_dirs]


def growth_per_trial(memory):
    second_half = np.asarray(memory[len(memory) // 2:])
    return float(np.polyfit(np.arange(len(second_half)), second_half, 1)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    arguments = parser.parse_args()
    backends = arguments.backends.split(",")
    marks = sorted({1, 10, 20, arguments.trials} & set(range(1, arguments.trials + 1)))
    header = (f"{'backend':<11} {'trials':<32}"
              + "".join(f"{f'trial {mark}':>10}" for mark in marks)
              + f"{'MB/trial':>10}{'peak':>8}")
    print(f"resident memory (MB) after each trial, {arguments.trials} trials\n{header}")
    for backend, per_process, label in RUNS:
        if backend not in backends:
            continue
        with tempfile.TemporaryDirectory() as directory:
            memory = search_memory(backend, per_process, arguments.trials, directory)
        print(f"{backend:<11} {label:<32}"
              + "".join(f"{memory[mark - 1]:>10.0f}" for mark in marks)
              + f"{growth_per_trial(memory):>+10.1f}{max(memory):>8.0f}", flush=True)


if __name__ == "__main__":
    main()
