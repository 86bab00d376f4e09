"""Learning-rate benchmarks on digits: the LR finder against a grid, and the recipe against plain Adam.

Usage: `python bench/schedules.py [--seeds 3] [--backend jax]`. Runs in one process on one
backend and prints two Markdown tables from the same run:

1. The LR finder's suggestion (each rule) against the best of a grid of fixed learning rates
   on the default task (`python -m app fit`'s MLP teacher, Adam, early stopping), the best
   being the rate whose run has the lowest best-epoch validation loss (median over seeds).
   The target is a suggestion within 3x of the grid's best.
2. Epochs and seconds of training until the test accuracy first reaches 98.5%, for plain Adam
   at 1e-3 (batch 64, the default; and batch 32) against the recipe (`RECIPE` below). Test accuracy is measured after every epoch here only to time the runs; `fit`
   never looks at the test split before the end. The target is 2x fewer epochs.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
TARGET_ACCURACY = 0.985
EPOCH_BUDGET = 60  # for the plain runs; early stopping ends them sooner
QUIET = ["training.verbose=0"]
PLAIN = ["optimizer.name=adam", "schedule.lr=1e-3", "schedule.name=constant"]
# The README's recipe: LR finder (steepest rule), 1 epoch of warm-up, cosine over 15 epochs,
# label smoothing 0.1, batches of 32; early stopping stays on.
RECIPE = ["optimizer.name=adam", "schedule.lr=auto", "schedule.lr_rule=steepest",
          "schedule.name=cosine", "schedule.warmup=1", "training.label_smoothing=0.1",
          "training.batch_size=32", "training.epochs=15"]
# Plain Adam with the recipe's batch size: how much of the gain is the smaller batch alone.
RUNS = {"plain Adam 1e-3": PLAIN, "plain Adam 1e-3, batch 32": [*PLAIN, "training.batch_size=32"],
        "recipe": RECIPE}


def grid_versus_finder(seeds):
    from app.config import load_config
    from app.data import load_dataset
    from app.lr_find import find_learning_rate
    from app.commands.fit import run_fit
    from app.engine import resolve_config

    scores = {}
    for lr in GRID:
        losses = []
        for seed in range(seeds):
            with tempfile.TemporaryDirectory() as directory:
                config = load_config(overrides=[*QUIET, f"seed={seed}", f"schedule.lr={lr}",
                                                f"output.dir={directory}"])
                _, metrics = run_fit(config)
            losses.append(metrics["best"]["val_loss"])
        scores[lr] = statistics.median(losses)
        print(f"  grid lr {lr:g}: median best val_loss {scores[lr]:.4f}", file=sys.stderr)
    best_lr = min(scores, key=scores.get)
    suggestions = {}
    for seed in range(seeds):
        config = resolve_config(load_config(overrides=[*QUIET, f"seed={seed}"]), "bench")
        finder = find_learning_rate(config, load_dataset(config.data, seed=seed))
        for rule, value in finder.suggestions().items():
            suggestions.setdefault(rule, []).append(value)
    rows = ["| learning rate | median best val_loss | / grid best |", "|---|---|---|"]
    rows += [f"| grid {lr:g} | {scores[lr]:.4f} | {lr / best_lr:.2g}x |" for lr in GRID]
    for rule, values in suggestions.items():
        value = statistics.median(values)
        rows.append(f"| finder, {rule} rule: {value:.3g} | | {value / best_lr:.2g}x |")
    return "\n".join(rows)


class TestAccuracyClock:
    """Times training epochs and evaluates the test split after each (outside the timing)."""

    def __init__(self, dataset):
        import keras

        class Clock(keras.callbacks.Callback):
            def on_train_begin(inner, logs=None):
                self.train_seconds, self.accuracies = [], []

            def on_epoch_begin(inner, epoch, logs=None):
                inner.started = time.perf_counter()

            def on_epoch_end(inner, epoch, logs=None):
                self.train_seconds.append(time.perf_counter() - inner.started)
                _, accuracy = inner.model.evaluate(dataset.x_test, dataset.y_test, verbose=0)
                self.accuracies.append(accuracy)

        self.callback = Clock()

    def reached(self):
        """`(epochs, training seconds)` until the target accuracy, or `None`."""
        for epoch, accuracy in enumerate(self.accuracies):
            if accuracy >= TARGET_ACCURACY:
                return epoch + 1, sum(self.train_seconds[:epoch + 1])
        return None


def time_to_accuracy(overrides, seed):
    import keras

    from app.config import load_config
    from app.data import load_dataset
    from app.lr_find import find_learning_rate
    from app.engine import build_compiled_model, resolve_config, train_model

    config = resolve_config(load_config(overrides=[*QUIET, f"seed={seed}",
                                            f"training.epochs={EPOCH_BUDGET}", *overrides]), "b")
    dataset = load_dataset(config.data, seed=seed)
    if config.schedule.lr == "auto":
        suggestion = find_learning_rate(config, dataset, rule=config.schedule.lr_rule).suggestion
        config = dataclasses.replace(
            config, schedule=dataclasses.replace(config.schedule, lr=suggestion))
    keras.utils.set_random_seed(seed)
    model = build_compiled_model(config, dataset)
    clock = TestAccuracyClock(dataset)
    with tempfile.TemporaryDirectory() as directory:
        train_model(model, config, dataset, Path(directory) / "best.keras",
                    extra_callbacks=[clock.callback])
    return clock.reached(), len(clock.accuracies), max(clock.accuracies)


def recipe_versus_plain(seeds):
    rows = ["| run | seed | epochs to 98.5% | training s to 98.5% | epochs run | best test acc |",
            "|---|---|---|---|---|---|"]
    medians = ["| run | reached | median epochs | median training s |", "|---|---|---|---|"]
    for label, overrides in RUNS.items():
        reached_runs = []
        for seed in range(seeds):
            reached, epochs_run, best = time_to_accuracy(overrides, seed)
            epochs, seconds = reached if reached else (None, None)
            if reached:
                reached_runs.append(reached)
            rows.append(f"| {label} | {seed} | {epochs or 'never'} | "
                        f"{f'{seconds:.2f}' if seconds else '-'} | {epochs_run} | {best:.4f} |")
        if reached_runs:
            medians.append(f"| {label} | {len(reached_runs)}/{seeds} | "
                           f"{statistics.median(r[0] for r in reached_runs):g} | "
                           f"{statistics.median(r[1] for r in reached_runs):.2f} |")
    return "\n".join(rows) + "\n\n" + "\n".join(medians)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--backend", default="jax")
    arguments = parser.parse_args()
    os.environ["KERAS_BACKEND"] = arguments.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    print(f"backend {keras.backend.backend()}, keras {keras.__version__}, "
          f"{arguments.seeds} seeds\n")
    print("## LR finder against a grid of fixed rates\n")
    print(grid_versus_finder(arguments.seeds))
    print("\n## Epochs to 98.5% test accuracy\n")
    print(recipe_versus_plain(arguments.seeds))


if __name__ == "__main__":
    main()
