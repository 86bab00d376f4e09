"""What the app's callback stack costs: its whole `fit` against a bare `model.fit`.

Usage: `python bench/callback_overhead.py [--epochs 30] [--architecture mlp|cnn]
[--repeat N] [--rounds 3] [--backends jax,torch]`. For each backend (one process each, one
after the other), the same compiled model (the default configuration: `build_compiled_model`,
so the same `steps_per_execution` and `jit_compile`) trains on the digits training split,
validated on its validation split, in four ways:

- bare: `model.fit(x, y, validation_data=..., shuffle=True)` with a timer callback only;
- bare with `keras.callbacks.TerminateOnNaN()`: Keras's own check of every batch's loss,
  which makes Keras wait for each call's result before it dispatches the next (JAX
  otherwise runs ahead);
- the app's feeding: `model.fit` on `app.feeding.fit_inputs` (the `Batches` that make the
  order of a resumed run the same, read in TensorFlow's graph there) with the timer only;
- app: `app.engine.train_model` as `fit` runs it: the same feeding, the learning-rate
  monitor, `NaNGuard`, `EarlyStopping` (patience above the epochs, so that all of them run
  every epoch), the best-epoch checkpoint (`best.keras`, kept in memory and written when
  training ends) and the training state gathered at epochs' ends (within its time budget)
  and written by a background thread (`fit --resume`).

An epoch's time runs from the end of the one before to its own end, so that it includes
every callback's epoch hooks, wherever they stand in the list. Each arm is trained
`--rounds` times, in turn, so that a machine's drift weighs on all; a round's figure is its
median steady epoch (the first two are not timed). It prints the medians over the rounds;
the median of the rounds' ratios, and for the callback stack (app / feeding) the lowest and
highest round's and the ratio of the fastest tenth of all rounds' epochs (their 10th
percentile, which a shared machine's slow spells reach least). The target is at most 1.05×.
Then the time the training thread spends in the hooks of the app's callbacks (their epoch
and batch hooks, timed one by one in the app's rounds), per epoch and as a share of the
feeding's epoch: a direct measure, which the machine's drift reaches less. Last, the CPU
time of an epoch (the process's, all its threads: work off the training thread counts, and
other tenants of a shared machine count less than in the wall-clock time): the median of
all rounds' epochs, the app over its feeding and over bare `fit`.
The stack's cost is per epoch (copies of the variables when the monitor improves, the
training state's gathering and writing), so it weighs most on digits' 20-batch epochs:
`--repeat N` repeats the training split N times for epochs of a realistic length.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

# This script's folder is on the path.
from throughput import WARMUP_EPOCHS, worker_result

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BACKENDS = ("tensorflow", "jax", "torch")


def epoch_intervals():
    """A callback that records the time from each epoch's end to the next one's in
    `.seconds` (the first epoch's from its start), and the CPU time the process's threads
    spent in it in `.cpu_seconds`."""
    import time

    import keras

    class _EpochIntervals(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds, self.cpu_seconds = [], []
            self._last = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter(), time.process_time()
            self.seconds.append(now[0] - self._last[0])
            self.cpu_seconds.append(now[1] - self._last[1])
            self._last = now

    return _EpochIntervals()


HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end",
         "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end")


def timing_hooks(fit, skipped, seconds):
    """`fit` (a model's) that adds the time the training thread spends in its callbacks'
    epoch and batch hooks to `seconds[0]`, except those of the `skipped` types.

    Keras's default hooks are left as they are: Keras tells them from a callback's own (a
    batch-end hook of its own makes it wait for each call's result).
    """
    import functools
    import threading
    import time

    def timed(hook):
        @functools.wraps(hook)
        def run(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return hook(*args, **kwargs)  # on Keras's callback threads
            started = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                seconds[0] += time.perf_counter() - started
        return run

    def timed_fit(*args, callbacks=(), **kwargs):
        for callback in callbacks:
            if isinstance(callback, skipped):
                continue
            for name in HOOKS:
                hook = getattr(callback, name)
                if not getattr(hook, "_is_default", False):
                    setattr(callback, name, timed(hook))
        return fit(*args, callbacks=callbacks, **kwargs)

    return timed_fit


def measure(architecture, epochs, repeat, rounds):
    import dataclasses

    import keras
    import numpy as np

    from app.config import load_config
    from app.data import load_dataset
    from app.engine import build_compiled_model, resolve_config, training_checkpoint, train_model
    from app.feeding import SetEpoch, fit_inputs

    config = resolve_config(load_config(overrides=[
        f"model.architecture={architecture}", f"training.epochs={epochs}",
        f"early_stopping.patience={epochs}", "training.verbose=0"]), "bench")
    dataset = load_dataset(config.data, seed=config.seed)
    dataset = dataclasses.replace(dataset, x_train=np.concatenate([dataset.x_train] * repeat),
                                  y_train=np.concatenate([dataset.y_train] * repeat))

    def bare(*callbacks):
        keras.utils.set_random_seed(config.seed)
        model = build_compiled_model(config, dataset)
        timer = epoch_intervals()
        model.fit(dataset.x_train, dataset.y_train,
                  validation_data=(dataset.x_val, dataset.y_val),
                  batch_size=config.training.batch_size, epochs=epochs, shuffle=True,
                  verbose=0, callbacks=[timer, *callbacks])
        return timer, model

    def checked():
        return bare(keras.callbacks.TerminateOnNaN())

    def fed():
        keras.utils.set_random_seed(config.seed)
        model = build_compiled_model(config, dataset)
        timer = epoch_intervals()
        inputs = fit_inputs(dataset, config)
        data_callbacks = inputs.pop("callbacks", [])
        model.fit(**inputs, epochs=epochs, verbose=0, callbacks=[*data_callbacks, timer])
        return timer, model

    hook_seconds = []  # per round of the app: its hooks' seconds per epoch

    def app():
        keras.utils.set_random_seed(config.seed)
        model = build_compiled_model(config, dataset)
        timer = epoch_intervals()
        seconds = [0.0]
        model.fit = timing_hooks(model.fit, (SetEpoch, type(timer)), seconds)
        with tempfile.TemporaryDirectory() as folder:
            state = training_checkpoint(config, dataset, Path(folder) / "training_state.npz",
                                        resume=False)
            train_model(model, config, dataset, Path(folder) / "best.keras",
                        extra_callbacks=[timer], state=state)
        hook_seconds.append(seconds[0] / epochs)
        return timer, model

    # Alternated, in turn forwards and backwards, so that a machine's drift weighs on all.
    seconds = {bare: [], checked: [], fed: [], app: []}
    cpu_seconds = {run: [] for run in seconds}
    for round_ in range(rounds):
        for run in list(seconds)[::1 if round_ % 2 == 0 else -1]:
            timer, model = run()
            seconds[run].append(timer.seconds[WARMUP_EPOCHS:])
            cpu_seconds[run].append(timer.cpu_seconds[WARMUP_EPOCHS:])
    medians = {run: [statistics.median(round_seconds) for round_seconds in per_round]
               for run, per_round in seconds.items()}

    def ratios(run, reference):
        return [ours / theirs for ours, theirs in zip(medians[run], medians[reference])]

    def fastest_tenth(run):
        return float(np.percentile(np.concatenate(seconds[run]), 10))

    stack = ratios(app, fed)
    cpu = {run: statistics.median(np.concatenate(per_round))
           for run, per_round in cpu_seconds.items()}
    return {"bare_s": statistics.median(medians[bare]),
            "checked_s": statistics.median(medians[checked]),
            "fed_s": statistics.median(medians[fed]),
            "app_s": statistics.median(medians[app]),
            "stack": statistics.median(stack), "lowest": min(stack), "highest": max(stack),
            "fastest_tenth": fastest_tenth(app) / fastest_tenth(fed),
            "hooks_s": statistics.median(hook_seconds),
            "hooks_share": statistics.median(
                hooks / fed_s for hooks, fed_s in zip(hook_seconds, medians[fed])),
            "checked_ratio": statistics.median(ratios(checked, bare)),
            "fed_ratio": statistics.median(ratios(fed, bare)),
            "app_ratio": statistics.median(ratios(app, bare)),
            "cpu_stack": cpu[app] / cpu[fed], "cpu_app_ratio": cpu[app] / cpu[bare],
            "steps_per_execution": model.steps_per_execution, "jit_compile": model.jit_compile}


def run_worker(backend, architecture, epochs, repeat, rounds):
    return worker_result([__file__, "--worker", "--architecture", architecture,
                          "--epochs", str(epochs), "--repeat", str(repeat),
                          "--rounds", str(rounds)], backend, label=backend)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--architecture", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--repeat", type=int, default=1,
                        help="repeat the training split this many times")
    parser.add_argument("--rounds", type=int, default=3,
                        help="train each this many times, alternately")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated, of " + ", ".join(BACKENDS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        print(json.dumps(measure(arguments.architecture, arguments.epochs, arguments.repeat,
                                 arguments.rounds)))
        return
    print(f"Default {arguments.architecture} on digits (training split × {arguments.repeat}), "
          f"{arguments.epochs} epochs, median epoch after the first {WARMUP_EPOCHS}, "
          f"{arguments.rounds} alternated rounds (medians; the ratio's lowest and highest "
          f"round in brackets; then the ratio of the 10th percentiles of all rounds' epochs); "
          f"{os.cpu_count()} CPU cores.\n")
    print("| backend | steps / call, jit | s / epoch: bare, TerminateOnNaN, app's feeding, app "
          "| TerminateOnNaN / bare | feeding / bare | callbacks: app / feeding | fastest tenth "
          "| hooks: ms / epoch (share) | app / bare | CPU: app / feeding, app / bare |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for backend in arguments.backends.split(","):
        row = run_worker(backend, arguments.architecture, arguments.epochs, arguments.repeat,
                         arguments.rounds)
        print(f"| {backend} | {row['steps_per_execution']}, {row['jit_compile']} | "
              f"{row['bare_s']:.4f}, {row['checked_s']:.4f}, {row['fed_s']:.4f}, "
              f"{row['app_s']:.4f} | {row['checked_ratio']:.2f}× | {row['fed_ratio']:.2f}× | "
              f"{row['stack']:.2f}× [{row['lowest']:.2f}–{row['highest']:.2f}] | "
              f"{row['fastest_tenth']:.2f}× | {1000 * row['hooks_s']:.2f} "
              f"({100 * row['hooks_share']:.1f} %) | {row['app_ratio']:.2f}× | "
              f"{row['cpu_stack']:.2f}×, {row['cpu_app_ratio']:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
