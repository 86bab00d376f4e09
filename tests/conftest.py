"""Shared fixtures. The suite runs on the backend named by KERAS_BACKEND (see run_all_backends.py)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402  (after KERAS_BACKEND: fixes the backend for the whole session)

REPO = Path(__file__).resolve().parent.parent
BACKEND = keras.backend.backend()

# A short, fast training configuration: enough to learn digits, small enough for CI.
FAST = [
    "training.epochs=8",
    "training.batch_size=64",
    "training.verbose=0",
    "model.width=64",
    "early_stopping.patience=3",
]


@pytest.fixture
def run_cli(tmp_path, capfd):
    """Runs `python -m app` in this process with output under `tmp_path/runs`.

    Returns `(exit_code, stdout, stderr)`.
    """
    from app.cli import main

    def run(*arguments):
        arguments = list(arguments)
        if arguments and arguments[0] in ("fit", "tune", "distill", "lr-find") and "--resume" not in arguments:
            arguments += ["--set", f"output.dir={tmp_path / 'runs'}"]
        code = main(arguments)
        captured = capfd.readouterr()  # fd level: includes trial worker processes
        return code, captured.out, without_tensorflow_startup_lines(captured.err)

    return run


def without_tensorflow_startup_lines(text):
    """`text` without the lines a new TensorFlow process writes before absl starts (no
    setting turns them off: `WARNING: All log messages before absl...`, then log lines such
    as `I0000 00:00:...` or, with the GPU build on a machine without one, `E0000 ... cuInit`),
    so that tests see the app's own messages."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith("WARNING: All log messages before absl")
                   and not re.match(r"[IWEF]\d{4} \d\d:\d\d:", line))


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"


def run_subprocess(arguments, backend=BACKEND, cwd=None, timeout=300, env=None):
    """Runs a Python command line in a fresh process on `backend` (`env`: more variables)."""
    environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True,
                          env=environment, cwd=cwd or REPO, timeout=timeout)


def write_npz(path, n=90, classes=3, features=5, seed=0, **overrides):
    """A small separable dataset as an .npz file with arrays x and y."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, features)).astype(np.float32) + 3.0 * y[:, None]
    arrays = {"x": x, "y": y}
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path
