"""Shared fixtures. The suite runs on the backend named by KERAS_BACKEND (see run_all_backends.py);
importable helpers are in `tests/helpers.py`."""

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.helpers import without_tensorflow_startup_lines  # noqa: E402  (imports Keras)


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


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"
