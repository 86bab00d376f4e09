"""Shared fixtures. The suite runs on the backend named by KERAS_BACKEND (see run_all_backends.py);
importable helpers are in `tests/helpers.py`."""

import atexit
import gc
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def share_jax_compilations():
    """Keeps every program JAX compiles in a cache for this session and the processes it
    starts: the suite builds and trains the same few models many times, and on two cores
    compiling them again was most of JAX's time (a MobileNet built and trained for one step
    took 21 s, 5 s from the cache). The compiled programs are the same, so are the results."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="jax-compilations-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=folder,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


share_jax_compilations()


def compile_quickly_on_jax():
    """Has XLA compile without LLVM's optimisations, on JAX, for the session and the processes
    it starts: tests run small programs a few times, so compiling them, not running them, is
    most of their time (`tests/test_backbones.py`: 218 s to 152 s). Comparisons within the
    suite compare programs compiled the same way."""
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ["KERAS_BACKEND"] == "jax" and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


compile_quickly_on_jax()

# A process the tests start that crashes prints every thread's Python stack, which the test's
# failure shows with the process's stderr: TensorFlow processes on two logical devices ended
# with SIGSEGV in CI under load, and never in 22 runs under load here.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

from tests.helpers import without_tensorflow_startup_lines  # noqa: E402  (imports Keras)


@pytest.fixture(autouse=True)
def freeze_what_each_test_leaves():
    """After each test, collects its garbage and moves what survives out of the collector's
    sight (`gc.freeze`). TensorFlow keeps every traced function's graph alive after its model
    is gone (a MobileNet's training step left 220,000 objects), and full collections walk all
    of them: coremltools collects three times per conversion, KerasTuner at every trial, so
    after the backbone tests an export test of 1 s took 7 s, 6 of them collecting. The
    survivors are kept either way; only the time spent walking them goes."""
    yield
    gc.collect()
    gc.freeze()


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
