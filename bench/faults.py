"""Fault injection: kill `fit` with SIGKILL at random points, resume it, and check that the
resumed run ends exactly as the uninterrupted one.

For each backend: one uninterrupted run, then `--runs` runs each killed `--kills` times at
a random moment of its training (SIGKILL: no handler runs, as in a power cut or an
out-of-memory kill) and resumed with `fit --resume` until it finishes. It prints, per backend:

| column | meaning |
|---|---|
| interruptions | kills that landed while the run was training |
| survived | of those, the runs that `fit --resume` finished |
| identical | finished runs whose `history.csv` and test metrics equal the uninterrupted run's |
| within 1e-5 | finished runs whose history and test metrics are within a relative 1e-5 of it, with the same best epoch (resumed within an epoch under several steps per execution, that epoch's running loss adds up in another order) |
| lost | runs that could not be resumed (no state to resume from, or resume failed) |
| stale bytes | bytes left in the output directory besides the finished runs |

```console
$ python bench/faults.py --backends jax,torch --runs 3 --kills 3
```
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--runs", type=int, default=3, help="killed runs per backend")
    parser.add_argument("--kills", type=int, default=3, help="kills per run")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--checkpoint-minutes", type=float, default=0.02,
                        help="training.checkpoint_minutes (mid-epoch states)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="more configuration overrides, e.g. model.architecture=cnn")
    parser.add_argument("--seed", type=int, default=0, help="of the kill times")
    arguments = parser.parse_args()
    chooser = random.Random(arguments.seed)
    rows = []
    for backend in arguments.backends.split(","):
        with tempfile.TemporaryDirectory() as scratch:
            rows.append(_measure(backend, Path(scratch), arguments, chooser))
    print("| backend | interruptions | survived | identical | within 1e-5 | lost | stale bytes |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(value) for value in row) + " |")


def _measure(backend, scratch, arguments, chooser):
    settings = [f"training.epochs={arguments.epochs}", "output.timestamp=false",
                f"training.checkpoint_minutes={arguments.checkpoint_minutes}",
                *arguments.overrides]
    _fit(backend, scratch, ["fit", *_sets([*settings, "output.name=reference"])])
    reference = scratch / "runs" / "reference"
    duration = json.loads((reference / "metrics.json").read_text())["wall_time_seconds"]
    interruptions = survived = identical = close = lost = 0
    for number in range(arguments.runs):
        name = f"killed-{number}"
        partial = scratch / "runs" / f"{name}.partial"
        command = ["fit", *_sets([*settings, f"output.name={name}"])]
        for _ in range(arguments.kills):
            # Kill at a random moment of the training (and testing) that follows start-up.
            if _run_and_kill(backend, scratch, command, partial, chooser.uniform(0, duration)):
                interruptions += 1
            if not partial.is_dir():
                break  # finished before the kill, or lost
            command = ["fit", "--resume", str(partial)]
        finished = scratch / "runs" / name
        if partial.is_dir():
            _fit(backend, scratch, command, check=False)
        if not finished.is_dir():
            lost += 1
            print(f"{backend}: run {number} was lost", file=sys.stderr)
            continue
        survived += 1
        identical += _same_results(reference, finished)
        close += _close_results(reference, finished)
    kept = {reference, *(scratch / "runs" / f"killed-{n}" for n in range(arguments.runs))}
    stale = sum(path.stat().st_size for path in (scratch / "runs").rglob("*")
                if path.is_file() and not any(folder in path.parents for folder in kept))
    return backend, interruptions, survived, identical, close, lost, stale


def _sets(settings):
    return [argument for setting in settings for argument in ("--set", setting)]


def _environment(backend):
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _fit(backend, scratch, arguments, check=True):
    """Runs `python -m app ARGUMENTS` to the end in `scratch`."""
    result = subprocess.run([sys.executable, "-m", "app", *arguments], cwd=scratch,
                            env=_environment(backend), capture_output=True, text=True)
    if result.returncode != 0:
        message = f"{backend}: {' '.join(arguments[:2])} failed: {result.stderr.strip()[-2000:]}"
        if check:
            raise SystemExit(message)
        print(message, file=sys.stderr)


def _run_and_kill(backend, scratch, arguments, partial, delay):
    """Starts `python -m app ARGUMENTS` and SIGKILLs it `delay` seconds after the run has
    started (its `partial` folder holds `classes.json`); whether the kill landed (the
    process was still running)."""
    process = subprocess.Popen([sys.executable, "-m", "app", *arguments], cwd=scratch,
                               env=_environment(backend), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while not (partial / "classes.json").exists() and process.poll() is None:
        time.sleep(0.02)
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def _same_results(reference, run):
    same_history = (reference / "history.csv").read_text() == (run / "history.csv").read_text()
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (reference, run)]
    same_metrics = all(metrics[0][key] == metrics[1][key] for key in ("best", "test"))
    if not (same_history and same_metrics):
        print(f"{run.name}: differs from the uninterrupted run", file=sys.stderr)
    return int(same_history and same_metrics)


def _close_results(reference, run):
    import numpy as np

    histories = [np.genfromtxt(folder / "history.csv", delimiter=",", names=True)
                 for folder in (reference, run)]
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (reference, run)]
    return int(histories[0].dtype.names == histories[1].dtype.names
               and histories[0].shape == histories[1].shape
               and all(np.allclose(histories[0][name], histories[1][name], rtol=1e-5, atol=0)
                       for name in histories[0].dtype.names)
               and metrics[0]["best"]["epoch"] == metrics[1]["best"]["epoch"]
               and np.allclose([metrics[0]["test"]["loss"], metrics[0]["test"]["accuracy"]],
                               [metrics[1]["test"]["loss"], metrics[1]["test"]["accuracy"]],
                               rtol=1e-5, atol=0))


if __name__ == "__main__":
    main()
