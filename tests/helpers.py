"""What several test modules share: paths, the backend, command runners, data writers, small
models with known updates, and the optimizer-trajectory references.

`tests/conftest.py` keeps the pytest fixtures; everything importable lives here, so that no
test module imports another.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

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


# Running the application ------------------------------------------------------------------

# `python -c APP_TELLING_IF_TENSORFLOW_CAME ARGUMENTS...` runs the command line like `python -m
# app`, then says last whether TensorFlow came into the process: on JAX and torch nothing
# should bring it (Keras seeds through it, `keras.distribution.initialize` too).
APP_TELLING_IF_TENSORFLOW_CAME = (
    "import sys; from app.cli import main; code = main(sys.argv[1:]); "
    "print('tensorflow imported:', 'tensorflow' in sys.modules); sys.exit(code)")


def subprocess_environment(backend=BACKEND, env=None):
    """The environment of a fresh process on `backend` that imports this checkout's packages,
    with `env`'s variables added."""
    return dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=str(REPO), **(env or {}))


def run_subprocess(arguments, backend=BACKEND, cwd=None, timeout=300, env=None):
    """Runs a Python command line in a fresh process on `backend` (`env`: more variables)."""
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True,
                          env=subprocess_environment(backend, env), cwd=cwd or REPO,
                          timeout=timeout)


def without_tensorflow_startup_lines(text):
    """`text` without the lines a new TensorFlow process writes before absl starts (no
    setting turns them off: `WARNING: All log messages before absl...`, then log lines such
    as `I0000 00:00:...` or, with the GPU build on a machine without one, `E0000 ... cuInit`),
    so that tests see the app's own messages."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith("WARNING: All log messages before absl")
                   and not re.match(r"[IWEF]\d{4} \d\d:\d\d:", line))


def fit_arguments(*overrides):
    """`fit` with the fast settings and `overrides`, as command-line arguments."""
    arguments = ["fit"]
    for override in [*FAST, *overrides]:
        arguments += ["--set", override]
    return arguments


def fit(run_cli, *overrides):
    """Runs `fit` with the fast settings through the `run_cli` fixture; returns its stdout."""
    code, out, err = run_cli(*fit_arguments(*overrides))
    assert code == 0, err
    return out


def interrupt_at(monkeypatch, epoch, batch, signum=signal.SIGINT, times=1):
    """Sends `signum` `times` times at the end of `batch` of `epoch` (0-based) of training,
    or as `epoch` begins if `batch` is None."""
    def send():
        for _ in range(times):
            os.kill(os.getpid(), signum)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, current, logs=None):
            self.epoch = current
            if (current, batch) == (epoch, None):
                send()

        def on_train_batch_end(self, current, logs=None):
            if (self.epoch, current) == (epoch, batch):
                send()

    import app.engine

    train_model = app.engine.train_model
    monkeypatch.setattr(app.engine, "train_model", lambda *args, **kwargs: train_model(
        *args, **{**kwargs, "extra_callbacks": [Interrupt()]}))


def only_run(runs_dir):
    """The one run directory in `runs_dir`."""
    runs = list(runs_dir.iterdir())
    assert len(runs) == 1, runs
    return runs[0]


# Data ------------------------------------------------------------------------------------

def write_npz(path, n=90, classes=3, features=5, seed=0, **overrides):
    """A small separable dataset as an .npz file with arrays x and y."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, features)).astype(np.float32) + 3.0 * y[:, None]
    arrays = {"x": x, "y": y}
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


# Models with known updates ---------------------------------------------------------------

def constant_gradient_model(schedule):
    """A model whose SGD update is exactly `-lr`: one weight, loss = the weight itself."""
    inputs = keras.Input(shape=(1,))
    outputs = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(schedule),
                  loss=lambda y_true, y_pred: keras.ops.mean(y_pred), jit_compile="auto")
    return model


class WeightRecorder(keras.callbacks.Callback):
    """Records the single weight of a `constant_gradient_model` at the start and each epoch."""

    def on_train_begin(self, logs=None):
        self.weights = [float(keras.ops.convert_to_numpy(self.model.trainable_weights[0])[0, 0])]

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(float(keras.ops.convert_to_numpy(self.model.trainable_weights[0])[0, 0]))


class WithSpareWeight(keras.layers.Layer):
    """A layer whose second weight takes no part in the output."""

    def build(self, input_shape):
        self.used = self.add_weight(shape=(input_shape[-1], 2), name="used")
        self.spare = self.add_weight(shape=(2,), name="spare")

    def call(self, x):
        return keras.ops.matmul(x, self.used)


# Optimizer trajectories: Keras against torch.optim on one quadratic ------------------------

RNG = np.random.default_rng(0)
START = RNG.normal(size=5).astype(np.float32)
TARGET = RNG.normal(size=5).astype(np.float32)
SCALE = np.arange(1, 6, dtype=np.float32)  # uneven curvature, so clipping and scaling matter


def keras_trajectory(optimizer, steps=6):
    """The weights after `steps` updates of `optimizer` on the quadratic, from `START`."""
    variable = keras.Variable(START.copy())
    for _ in range(steps):
        weights = keras.ops.convert_to_numpy(variable)
        gradient = 2 * (weights - TARGET) * SCALE
        optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
    return keras.ops.convert_to_numpy(variable)


def torch_trajectory(make_optimizer, clip=None, steps=6):
    """The same in float64 with the torch optimizer `make_optimizer(parameters)`."""
    import torch

    parameter = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    optimizer = make_optimizer([parameter])
    for _ in range(steps):
        optimizer.zero_grad()
        ((parameter - torch.tensor(TARGET, dtype=torch.float64)) ** 2 * torch.tensor(SCALE)).sum().backward()
        if clip is not None:
            clip(parameter)
        optimizer.step()
    return parameter.detach().numpy()
