"""What the app's callback stack costs: its whole `fit` against a bare `model.fit`.

Usage: `python bench/callback_overhead.py [--epochs 30] [--architecture mlp|cnn]
[--repeat N] [--rounds 3] [--backends jax,torch]`. For each backend (one process each, one
after the other), the same compiled model (the default configuration: `build_compiled_model`,
so the same `steps_per_execution` and `jit_compile`) trains on the digits training split,
validated on its validation split, in three ways:

- bare: `model.fit(x, y, validation_data=..., shuffle=True)` with a timer callback only;
- bare with `keras.callbacks.TerminateOnNaN()`: Keras's own check of every batch's loss.
  Any callback that reads a batch's logs makes Keras wait for that batch's result before it
  dispatches the next (JAX otherwise runs ahead), so this is what a per-batch check costs
  in itself; the app's `NaNGuard` and training state also act at a batch's end;
- app: `app.engine.train_model` as `fit` runs it: the app's data feeding, the learning-rate
  monitor, `NaNGuard`, `EarlyStopping` (patience above the epochs, so that all of them run
  every epoch), the best-epoch checkpoint (`best.keras`, kept in memory and written when
  training ends) and the training state gathered at epochs' ends (within its time budget)
  and written by a background thread (`fit --resume`).

Each is trained `--rounds` times, in turn, so that a machine's drift weighs on all; a
round's figure is its median steady epoch (the first two are not timed). It prints the
medians over the rounds and the median of the rounds' ratios, with the lowest and highest
ratio; the target is at most 1.05×. The app's cost is per epoch (copies of the variables
when the monitor improves, the training state's gathering and writing), so it weighs most
on digits' 20-batch epochs: `--repeat N` repeats the training split N times for epochs of a
realistic length.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

# This script's folder is on the path.
from throughput import WARMUP_EPOCHS, epoch_timer, worker_result

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BACKENDS = ("tensorflow", "jax", "torch")


def steady(seconds):
    return statistics.median(seconds[WARMUP_EPOCHS:])


def measure(architecture, epochs, repeat, rounds):
    import dataclasses

    import keras
    import numpy as np

    from app.config import load_config
    from app.data import load_dataset
    from app.engine import build_compiled_model, resolve_config, training_checkpoint, train_model

    config = resolve_config(load_config(overrides=[
        f"model.architecture={architecture}", f"training.epochs={epochs}",
        f"early_stopping.patience={epochs}", "training.verbose=0"]), "bench")
    dataset = load_dataset(config.data, seed=config.seed)
    dataset = dataclasses.replace(dataset, x_train=np.concatenate([dataset.x_train] * repeat),
                                  y_train=np.concatenate([dataset.y_train] * repeat))

    def bare(*callbacks):
        keras.utils.set_random_seed(config.seed)
        model = build_compiled_model(config, dataset)
        timer = epoch_timer()
        model.fit(dataset.x_train, dataset.y_train,
                  validation_data=(dataset.x_val, dataset.y_val),
                  batch_size=config.training.batch_size, epochs=epochs, shuffle=True,
                  verbose=0, callbacks=[timer, *callbacks])
        return steady(timer.seconds), model

    def checked():
        return bare(keras.callbacks.TerminateOnNaN())

    def app():
        keras.utils.set_random_seed(config.seed)
        model = build_compiled_model(config, dataset)
        timer = epoch_timer()
        with tempfile.TemporaryDirectory() as folder:
            state = training_checkpoint(config, dataset, Path(folder) / "training_state.npz",
                                        resume=False)
            train_model(model, config, dataset, Path(folder) / "best.keras",
                        extra_callbacks=[timer], state=state)
        return steady(timer.seconds), model

    # Alternated, in turn forwards and backwards, so that a machine's drift weighs on all.
    seconds = {bare: [], checked: [], app: []}
    for round_ in range(rounds):
        for run in list(seconds)[::1 if round_ % 2 == 0 else -1]:
            epoch_seconds, model = run()
            seconds[run].append(epoch_seconds)
    def to_bare(run):
        return [ours / theirs for ours, theirs in zip(seconds[run], seconds[bare])]

    ratios = to_bare(app)
    return {"bare_s": statistics.median(seconds[bare]),
            "checked_s": statistics.median(seconds[checked]),
            "app_s": statistics.median(seconds[app]),
            "ratio": statistics.median(ratios), "lowest": min(ratios), "highest": max(ratios),
            "checked_ratio": statistics.median(to_bare(checked)),
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
          f"round in brackets); {os.cpu_count()} CPU cores.\n")
    print("| backend | steps / call, jit | bare `model.fit` (s / epoch) | with TerminateOnNaN "
          "| app's `fit` | TerminateOnNaN / bare | app / bare |")
    print("|---|---|---|---|---|---|---|")
    for backend in arguments.backends.split(","):
        row = run_worker(backend, arguments.architecture, arguments.epochs, arguments.repeat,
                         arguments.rounds)
        print(f"| {backend} | {row['steps_per_execution']}, {row['jit_compile']} | "
              f"{row['bare_s']:.4f} | {row['checked_s']:.4f} | {row['app_s']:.4f} | "
              f"{row['checked_ratio']:.2f}× | {row['ratio']:.2f}× "
              f"[{row['lowest']:.2f}–{row['highest']:.2f}] |", flush=True)


if __name__ == "__main__":
    main()
