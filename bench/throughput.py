"""Training throughput on digits: the app's default model per backend, and `fit` vs hand-written loops.

Usage: `python bench/throughput.py [--epochs 10]`. Each measurement runs in its own process (a
Keras backend is fixed per process), one after the other, and the two tables are printed as
Markdown, side by side from the same run:

1. The default `fit` model (MLP teacher, default config) on each backend: seconds for the first
   epoch (tracing/compilation included), steady seconds per epoch (median, validation included),
   training samples per second, `model.fit` for `--epochs` epochs, and the whole default
   `python -m app fit` command (process start, imports, early stopping, test, run directory),
   run twice: with JAX's compilation cache empty, then reading it.
2. The same MLP (64-256-256-10) and CNN (conv32-pool-conv64-pool-128-10) without normalisation
   or dropout, trained with Adam: Keras `fit` on each backend against a hand-written PyTorch
   loop and a hand-written JAX loop (median samples per second over the timed epochs).

`--execution` measures Keras `fit` per `steps_per_execution` and `jit_compile` instead, and
`--torch-steps` where a Keras training step on torch spends its time (forward, loss, backward,
optimizer, metrics, and between steps: data and callbacks), through Keras's layers and with the
forward pass compiled by `torch.compile` or exported by `torch.export`, against the hand-written
torch loop's step, at batch 64 and 512.
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BACKENDS = ("tensorflow", "jax", "torch")
BATCH_SIZE = 64
WARMUP_EPOCHS = 2


def digits():
    """Standardised digits training split, as float32 NHWC images and int labels."""
    from app.config import DataConfig
    from app.data import load_dataset

    dataset = load_dataset(DataConfig(), seed=0)
    x = (dataset.x_train - dataset.feature_mean) / dataset.feature_variance**0.5
    return x.astype("float32"), dataset.y_train.astype("int32")


def median_rate(epoch_seconds, samples):
    timed = epoch_seconds[WARMUP_EPOCHS:] or epoch_seconds
    return samples / statistics.median(timed)


def measure_app_default(epochs, steps_per_execution="auto", jit_compile="auto"):
    """The default `fit` configuration, built and trained as `python -m app fit` does (with
    `training.steps_per_execution` and `training.jit_compile` as given)."""
    import keras

    from app.config import load_config
    from app.data import load_dataset
    from app.engine import build_compiled_model, resolve_config

    config = resolve_config(load_config(overrides=[
        f"training.epochs={epochs}", f"training.steps_per_execution={steps_per_execution}",
        f"training.jit_compile={str(jit_compile).lower()}"]), "bench")
    dataset = load_dataset(config.data, seed=config.seed)
    keras.utils.set_random_seed(config.seed)
    model = build_compiled_model(config, dataset)
    timer = epoch_timer()
    started = time.perf_counter()
    model.fit(dataset.x_train, dataset.y_train, validation_data=(dataset.x_val, dataset.y_val),
              epochs=epochs, batch_size=config.training.batch_size, verbose=0, callbacks=[timer])
    total = time.perf_counter() - started
    steady = statistics.median(timer.seconds[WARMUP_EPOCHS:])
    return {"first_epoch_s": timer.seconds[0], "epoch_s": steady,
            "samples_per_s": len(dataset.x_train) / steady, "fit_s": total}


def epoch_timer():
    """A callback that records the wall time of every epoch in `.seconds`."""
    import keras

    class _EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return _EpochTimer()


def measure_keras(architecture, epochs, steps_per_execution=1, jit_compile="auto"):
    x, y = digits()
    model = bare_keras_model(architecture, x.shape[1:], steps_per_execution, jit_compile)
    timer = epoch_timer()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=[timer])
    return {"samples_per_s": median_rate(timer.seconds, len(x))}


def bare_keras_model(architecture, input_shape, steps_per_execution=1, jit_compile="auto"):
    """The MLP or CNN without normalisation or dropout, compiled with Adam, seeded."""
    import keras

    from models import build_cnn, build_mlp

    keras.utils.set_random_seed(0)
    options = dict(normalization="none", dropout=0.0, depth=2)
    if architecture == "mlp":
        model = build_mlp(input_shape, 10, width=256, **options)
    else:
        model = build_cnn(input_shape, 10, filters=32, width=128, **options)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    return model


PHASES = ("forward", "loss", "backward", "optimizer", "metrics", "between steps")
# `--torch-steps` at the throughput table's batch, and at one where the arithmetic of a step
# outweighs the framework's fixed work per step more.
TORCH_STEPS_BATCH_SIZES = (BATCH_SIZE, 512)


class StepPhases:
    """Wall time of the parts of training steps. `mark(phase)` ends `phase` now and starts the
    next one, so that the phases tile the run; `per_step()` gives ms per step of each."""

    def __init__(self):
        self.reset()

    def reset(self):
        """Forgets what was measured: the warm-up steps."""
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.pause()

    def pause(self):
        """Stops the clock until the next mark, which then ends no phase."""
        self._last = None

    def mark(self, phase):
        now = time.perf_counter()
        if self._last is not None:
            self.seconds[phase] += now - self._last
        self.steps += phase == "metrics"
        self._last = now

    def per_step(self):
        return {phase: 1e3 * seconds / self.steps for phase, seconds in self.seconds.items()}


def measure_torch_loop(architecture, epochs):
    x, y = digits()
    loop = TorchLoop(architecture, x, y)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        loop.run_epoch(StepPhases())
        seconds.append(time.perf_counter() - started)
    return {"samples_per_s": median_rate(seconds, len(x))}


class TorchLoop:
    """The hand-written PyTorch training loop (Adam, cross-entropy) on NCHW digits."""

    def __init__(self, architecture, x, y):
        import numpy as np
        import torch

        torch.manual_seed(0)
        nn = torch.nn
        if architecture == "mlp":
            self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(),
                                       nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        else:
            self.model = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(64 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, 10))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.inputs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(y).long()
        self.rng = np.random.default_rng(0)

    def run_epoch(self, phases, batch_size=BATCH_SIZE):
        """One epoch in shuffled batches, each step's parts marked in `phases`."""
        import torch

        order = torch.from_numpy(self.rng.permutation(len(self.inputs)))
        for start in range(0, len(order), batch_size):
            phases.mark("between steps")
            batch = order[start:start + batch_size]
            self.optimizer.zero_grad()
            logits = self.model(self.inputs[batch])
            phases.mark("forward")
            loss = torch.nn.functional.cross_entropy(logits, self.labels[batch])
            phases.mark("loss")
            loss.backward()
            phases.mark("backward")
            self.optimizer.step()
            phases.mark("optimizer")
            phases.mark("metrics")  # none: the loop keeps no running metrics


def measure_jax_loop(architecture, epochs):
    import jax
    import jax.numpy as jnp
    import numpy as np

    x, y = digits()
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 8))

    def dense(fan_in, fan_out):
        return {"w": jax.random.normal(next(keys), (fan_in, fan_out)) * (2 / fan_in) ** 0.5,
                "b": jnp.zeros(fan_out)}

    def conv(channels_in, channels_out):
        return {"w": jax.random.normal(next(keys), (3, 3, channels_in, channels_out))
                * (2 / (9 * channels_in)) ** 0.5, "b": jnp.zeros(channels_out)}

    def pool(h):
        return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    if architecture == "mlp":
        params = [dense(64, 256), dense(256, 256), dense(256, 10)]

        def forward(params, images):
            h = images.reshape(len(images), -1)
            for layer in params[:-1]:
                h = jax.nn.relu(h @ layer["w"] + layer["b"])
            return h @ params[-1]["w"] + params[-1]["b"]
    else:
        params = [conv(1, 32), conv(32, 64), dense(64 * 2 * 2, 128), dense(128, 10)]

        def forward(params, images):
            h = images
            for layer in params[:2]:
                h = jax.lax.conv_general_dilated(h, layer["w"], (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
                h = pool(jax.nn.relu(h + layer["b"]))
            h = jax.nn.relu(h.reshape(len(h), -1) @ params[2]["w"] + params[2]["b"])
            return h @ params[3]["w"] + params[3]["b"]

    def loss_fn(params, images, labels):
        log_probs = jax.nn.log_softmax(forward(params, images))
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))

    @jax.jit
    def step(params, m, v, t, images, labels):
        # Adam, written out: the same update as torch.optim.Adam and keras.optimizers.Adam.
        grads = jax.grad(loss_fn)(params, images, labels)
        m = jax.tree_util.tree_map(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
        v = jax.tree_util.tree_map(lambda a, g: 0.999 * a + 0.001 * g * g, v, grads)
        scale = 1e-3 * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        params = jax.tree_util.tree_map(lambda p, a, b: p - scale * a / (jnp.sqrt(b) + 1e-7),
                                        params, m, v)
        return params, m, v

    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    rng = np.random.default_rng(0)
    seconds, t = [], 0
    for _ in range(epochs):
        started = time.perf_counter()
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            t += 1
            params, m, v = step(params, m, v, t, x[batch], y[batch])
        jax.block_until_ready(params)
        seconds.append(time.perf_counter() - started)
    return {"samples_per_s": median_rate(seconds, len(x))}


def mark_keras_steps(model, phases):
    """Marks `phases` in a Keras model's PyTorch training step from outside, by wrapping the
    methods that Keras's `train_step` calls: forward (with `zero_grad`) until the loss, the
    loss, then the backward pass until the optimizer, the optimizer, then the metrics."""
    train_step, compute_loss, apply = (model.train_step, model._compute_loss,
                                       model.optimizer.apply)

    def marked(before, function, after):
        def call(*args, **kwargs):
            phases.mark(before)
            result = function(*args, **kwargs)
            phases.mark(after)
            return result
        return call

    model.train_step = marked("between steps", train_step, "metrics")
    model._compute_loss = marked("forward", compute_loss, "loss")
    model.optimizer.apply = marked("backward", apply, "optimizer")


def replace_forward(model, how):
    """Runs `model`'s training-mode forward pass, in `fit`, as a program of PyTorch operations
    captured from Keras's layers instead of through them: `how="export"` with `torch.export`
    (one program per batch shape), `how="compile"` with `torch.compile` (which guards on the
    Python state it read, and compiles again when a guard fails). Both programs read the
    model's own parameters, so the optimizer trains them as before."""
    import torch

    keras_call = type(model).__call__

    class Forward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inputs):
            return keras_call(self.model, inputs, training=True)

    if how == "compile":
        program = torch.compile(Forward())
    else:
        programs = {}

        def program(inputs):
            if inputs.shape not in programs:
                programs[inputs.shape] = torch.export.export(Forward(), (inputs,),
                                                             strict=True).module()
            return programs[inputs.shape](inputs)

    def call(self, inputs, training=None):
        return program(inputs)

    model.__class__ = type(type(model).__name__, (type(model),), {"__call__": call})


def measure_torch_steps(architecture, epochs):
    """`measure_torch_steps_of_batch` for each of `TORCH_STEPS_BATCH_SIZES`."""
    return {batch_size: measure_torch_steps_of_batch(architecture, epochs, batch_size)
            for batch_size in TORCH_STEPS_BATCH_SIZES}


def measure_torch_steps_of_batch(architecture, epochs, batch_size):
    """ms per training step of each phase, and samples per second over the steps, of Keras
    `fit` on torch (through its layers, and with the forward pass compiled or exported) and of
    the hand-written loop. They take turns, an epoch each, so that the machine's drift reaches
    them alike."""
    x, y = digits()
    trainers = {}
    for arm, forward in (("keras", None), ("keras, compiled forward", "compile"),
                         ("keras, exported forward", "export"), ("torch loop", None)):
        phases = StepPhases()
        if arm == "torch loop":
            train = functools.partial(TorchLoop(architecture, x, y).run_epoch,
                                      batch_size=batch_size)
        else:
            model = bare_keras_model(architecture, x.shape[1:])
            if forward:
                replace_forward(model, forward)
            mark_keras_steps(model, phases)

            def train(phases, model=model):
                model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        trainers[arm] = train, phases

    def take_turns(rounds):
        for _ in range(rounds):
            for train, phases in trainers.values():
                train(phases)
                phases.pause()  # the other arms' epochs are not this one's time

    take_turns(WARMUP_EPOCHS)
    for _, phases in trainers.values():
        phases.reset()
    take_turns(epochs)
    return {arm: {"ms": phases.per_step(),
                  "samples_per_s": epochs * len(x) / sum(phases.seconds.values())}
            for arm, (_, phases) in trainers.items()}


MEASUREMENTS = {
    "app": lambda architecture, epochs, **execution: measure_app_default(epochs, **execution),
    "keras": measure_keras,
    "torch-loop": lambda architecture, epochs, **execution: measure_torch_loop(architecture,
                                                                             epochs),
    "jax-loop": lambda architecture, epochs, **execution: measure_jax_loop(architecture, epochs),
    "torch-steps": lambda architecture, epochs, **execution: measure_torch_steps(architecture,
                                                                               epochs),
}
# The `--execution` grid: batches per call to the compiled step, and `jit_compile` (XLA on
# TensorFlow, `torch.compile` on torch; JAX always compiles, and its `False` is eager).
# Keras 3.15 runs one step per call on torch.
EXECUTION_STEPS = {"tensorflow": (1, 4, 8, 16, 32), "jax": (1, 4, 8, 16, 32), "torch": (1,)}
EXECUTION_JIT = {"tensorflow": (False, True), "jax": (True,), "torch": (False, True)}


def measure_default_command(backend):
    """Wall times of the unchanged `python -m app fit`, as a user runs it: a first time, with
    JAX's compilation cache empty, then again, reading it (other backends have none); and
    the epochs and test accuracy of the second run."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XDG_CACHE_HOME=scratch)
        environment.pop("JAX_COMPILATION_CACHE_DIR", None)  # the app's folder, in `scratch`
        seconds = []
        for output in (Path(scratch) / "first", Path(scratch) / "again"):
            command = [sys.executable, "-m", "app", "--backend", backend, "fit",
                       "--set", "training.verbose=0", "--set", f"output.dir={output}"]
            started = time.perf_counter()
            subprocess.run(command, cwd=REPO, check=True, capture_output=True, env=environment)
            seconds.append(time.perf_counter() - started)
        metrics = json.loads(next(output.glob("*/metrics.json")).read_text())
    return seconds, metrics["epochs_run"], metrics["test"]["accuracy"]


def run_worker(kind, backend, architecture, epochs, steps_per_execution="auto",
               jit_compile="auto"):
    """Runs one measurement in a fresh process and returns its JSON result."""
    return worker_result(
        [__file__, "--worker", kind, "--architecture", architecture, "--epochs", str(epochs),
         "--steps-per-execution", str(steps_per_execution), "--jit-compile", str(jit_compile)],
        backend, label=f"{kind}/{backend}/{architecture}")


def worker_result(arguments, backend, label):
    """Runs `python *arguments` on `backend` in a fresh process and returns the JSON of the
    last line it prints; raises with its error output, naming `label`, if it fails."""
    environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, *arguments], capture_output=True, text=True,
                            env=environment, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--worker", choices=sorted(MEASUREMENTS), help=argparse.SUPPRESS)
    parser.add_argument("--architecture", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--execution", action="store_true",
                        help="measure steps_per_execution x jit_compile per backend instead")
    parser.add_argument("--torch-steps", action="store_true",
                        help="time the parts of Keras's training step on torch against the "
                             "torch loop instead")
    parser.add_argument("--steps-per-execution", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--jit-compile", default="auto", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        jit = {"True": True, "False": False}.get(arguments.jit_compile, arguments.jit_compile)
        steps = arguments.steps_per_execution
        print(json.dumps(MEASUREMENTS[arguments.worker](
            arguments.architecture, arguments.epochs,
            steps_per_execution=steps if steps == "auto" else int(steps), jit_compile=jit)))
        return
    if arguments.execution:
        execution_grid(arguments.epochs)
        return
    if arguments.torch_steps:
        torch_steps(arguments.epochs)
        return

    epochs = arguments.epochs
    print(f"Digits train split (1257 samples), batch {BATCH_SIZE}, {epochs} epochs, "
          f"first {WARMUP_EPOCHS} not timed for rates; {os.cpu_count()} CPU cores.\n")
    print("Default `fit` model (MLP teacher, batch norm, dropout, Adam) per backend:\n")
    print(f"| backend | first epoch (s) | s / epoch | samples / s | {epochs} epochs (s) "
          "| `python -m app fit` (s): first, again | its epochs | its test accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for backend in BACKENDS:
        row = run_worker("app", backend, "mlp", epochs)
        command_seconds, command_epochs, accuracy = measure_default_command(backend)
        print(f"| {backend} | {row['first_epoch_s']:.2f} | {row['epoch_s']:.3f} | "
              f"{row['samples_per_s']:,.0f} | {row['fit_s']:.1f} | "
              f"{command_seconds[0]:.1f}, {command_seconds[1]:.1f} | "
              f"{command_epochs} | {accuracy:.4f} |", flush=True)

    print("\nSame model, Keras `fit` versus hand-written loops (samples / s, Adam, no validation):\n")
    print("| model | Keras TF | Keras JAX | Keras torch | torch loop | JAX loop |")
    print("|---|---|---|---|---|---|")
    for architecture in ("mlp", "cnn"):
        # Keras's own defaults: one batch per call ("auto" is the app's, not Keras's).
        rates = [run_worker("keras", backend, architecture, epochs,
                            steps_per_execution=1)["samples_per_s"] for backend in BACKENDS]
        rates.append(run_worker("torch-loop", "torch", architecture, epochs)["samples_per_s"])
        rates.append(run_worker("jax-loop", "jax", architecture, epochs)["samples_per_s"])
        print(f"| {architecture} | " + " | ".join(f"{rate:,.0f}" for rate in rates) + " |",
              flush=True)


def execution_grid(epochs):
    """Keras `fit` samples/s per backend, model, `steps_per_execution` and `jit_compile`,
    against the hand-written loops, measured in one run; then the app's default model."""
    print(f"The default `fit` model (MLP teacher, batch norm, dropout) per setting, "
          f"{epochs} epochs:\n")
    print("| backend | jit_compile | steps / call | first epoch (s) | samples / s "
          f"| {epochs} epochs (s) |")
    print("|---|---|---|---|---|---|")
    for backend in BACKENDS:
        for jit in EXECUTION_JIT[backend]:
            for steps in EXECUTION_STEPS[backend][::2]:
                row = run_worker("app", backend, "mlp", epochs, steps, jit)
                print(f"| {backend} | {jit} | {steps} | {row['first_epoch_s']:.2f} | "
                      f"{row['samples_per_s']:,.0f} | {row['fit_s']:.1f} |", flush=True)
    print()
    print(f"Keras `fit` (samples / s, Adam, batch {BATCH_SIZE}, {epochs} epochs) per "
          "steps_per_execution and jit_compile, and the ratio to the framework's own loop "
          "(TensorFlow: to the torch loop):\n")
    columns = EXECUTION_STEPS["jax"]
    print("| model | backend | jit_compile | " + " | ".join(
        f"{steps} / call" for steps in columns) + " | loop | best / loop |")
    print("|---|---|---|" + "---|" * (len(columns) + 2))
    for architecture in ("mlp", "cnn"):
        loops = {"torch": run_worker("torch-loop", "torch", architecture, epochs),
                 "jax": run_worker("jax-loop", "jax", architecture, epochs)}
        for backend in BACKENDS:
            loop = loops.get(backend, loops["torch"])["samples_per_s"]
            for jit in EXECUTION_JIT[backend]:
                rates = [run_worker("keras", backend, architecture, epochs, steps,
                                    jit)["samples_per_s"] for steps in EXECUTION_STEPS[backend]]
                cells = [f"{rate:,.0f}" for rate in rates] + ["–"] * (len(columns) - len(rates))
                print(f"| {architecture} | {backend} | {jit} | " + " | ".join(cells)
                      + f" | {loop:,.0f} | {max(rates) / loop:.2f} |", flush=True)


def torch_steps(epochs):
    """Where a Keras training step on torch spends its time, part by part, against the
    hand-written loop's step: one process per model."""
    print(f"ms per training step on torch ({epochs} epochs after {WARMUP_EPOCHS} not timed), "
          "and samples / s:\n")
    print("| model | batch | step | " + " | ".join(PHASES)
          + " | ms / step | samples / s | / loop |")
    print("|---|---|---|" + "---|" * (len(PHASES) + 3))
    for architecture in ("mlp", "cnn"):
        for batch_size, arms in run_worker("torch-steps", "torch", architecture, epochs).items():
            loop = arms["torch loop"]["samples_per_s"]
            for arm, measured in arms.items():
                cells = [f"{measured['ms'][phase]:.2f}" for phase in PHASES]
                print(f"| {architecture} | {batch_size} | {arm} | " + " | ".join(cells)
                      + f" | {sum(measured['ms'].values()):.2f} | "
                      f"{measured['samples_per_s']:,.0f} | "
                      f"{measured['samples_per_s'] / loop:.2f} |", flush=True)


if __name__ == "__main__":
    main()
