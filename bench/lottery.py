"""The lottery ticket experiment, with its controls: does a pruned network's initialization matter?

Usage: `python bench/lottery.py [--tasks digits,shapes] [--seeds 1 2 3] [--levels 0.5,0.8,0.9,0.95]
[--rate 0.2] [--data-dir bench-data]` (JAX; about 4 minutes per seed on digits).

Seed 004 (after Frankle & Carbin, 2019): train a large network, prune the weights near 0,
revert the survivors to their exact initialization and retrain: the sparse network trains as
well as the dense one; "if we revert to random weights, performance plummets". For each task
and seed this trains the CNN teacher (dense), then, at each sparsity level, three sparse
networks with the same budget (epochs, schedule, best epoch on validation data):

- **ticket**: iterative magnitude pruning, at most `--rate` of the survivors per round, each
  round rewound to the initialization and retrained (`prune --rewind init --rounds R`);
- **random re-init**: the ticket's mask, with the weights of another random initialization;
- **one-shot**: the dense network pruned once to the level, then fine-tuned from its trained
  weights (`prune`, no rewinding).

Prints the test accuracy of every run, then mean ± sd over the seeds per level.
"""

import argparse
import dataclasses
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DIGITS = ["model.architecture=cnn", "model.size=teacher", "training.epochs=15"]
SHAPES = ["data.color_mode=rgb", "data.cache=memory", "data.split_seed=0",
          "augmentation.rotation=0.5", "augmentation.flip=both", "augmentation.translation=0.1",
          "model.architecture=cnn", "model.size=teacher", "schedule.name=cosine",
          "training.epochs=24"]
COMMON = ["early_stopping.enabled=false", "training.verbose=0", "training.batch_size=64"]


def task_overrides(task, data_dir, per_class):
    if task == "digits":
        return DIGITS
    folder = data_dir / f"shapes-{per_class}-seed0"
    if not folder.exists():
        subprocess.run([sys.executable, "-m", "app", "make-dataset", "shapes", str(folder),
                        "--per-class", str(per_class), "--size", "32", "--seed", "0"],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return [f"data.source={folder}", *SHAPES]


def rounds_through(levels, rate):
    """IMP sparsities: geometric steps of at most `rate` of the survivors, through each level."""
    sparsities, done = [], 0.0
    for level in levels:
        steps = max(1, math.ceil(math.log((1 - level) / (1 - done)) / math.log(1 - rate)))
        keep = ((1 - level) / (1 - done)) ** (1 / steps)
        sparsities += [1 - (1 - done) * keep ** step for step in range(1, steps)] + [level]
        done = level
    return sparsities


def run_seed(overrides, seed, levels, rate, folder):
    from app.config import load_config
    from app.data import load_dataset
    from app.engine import resolve_config, train_and_test
    from app.model_files import load_model_file
    from app.pruning import rewound_weights, round_config, starting_from
    from callbacks import magnitude_masks, prunable_weights
    from callbacks.training_state import to_numpy

    config = resolve_config(load_config(overrides=[*overrides, *COMMON, f"seed={seed}"]), "dense")
    dataset = load_dataset(config.data, seed=config.seed)
    epochs = config.training.epochs
    path = folder / "best.keras"

    def train(sparsity, values, masks):
        _, metrics = train_and_test(round_config(config, sparsity, epochs, "layer"), dataset,
                                    path, start=starting_from(values, masks))
        return metrics["test"]["accuracy"], load_model_file(path)

    def kernels(model):
        return to_numpy([kernel.value for kernel in prunable_weights(model)])

    _, dense_metrics = train_and_test(config, dataset, path)
    dense = load_model_file(path)
    results = {"dense": dense_metrics["test"]["accuracy"]}
    initial = rewound_weights(config, dataset, 0)
    other = rewound_weights(dataclasses.replace(config, seed=config.seed + 1000), dataset, 0)
    trained_weights = to_numpy([weight.value for weight in dense.weights])
    masks, current = None, dense
    for sparsity in rounds_through(levels, rate):
        masks = magnitude_masks(kernels(current), sparsity, pruned=masks)
        accuracy, current = train(sparsity, initial, masks)
        if sparsity in levels:
            results[("ticket", sparsity)] = accuracy
            results[("random re-init", sparsity)] = train(sparsity, other, masks)[0]
            one_shot = magnitude_masks(kernels(dense), sparsity)
            results[("one-shot", sparsity)] = train(sparsity, trained_weights, one_shot)[0]
            print(f"  seed {seed}, {sparsity:.0%}: ticket {accuracy:.4f}, random re-init "
                  f"{results[('random re-init', sparsity)]:.4f}, one-shot "
                  f"{results[('one-shot', sparsity)]:.4f} (dense {results['dense']:.4f})",
                  flush=True)
    return results


def mean_sd(values):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,shapes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--levels", default="0.5,0.8,0.9,0.95")
    parser.add_argument("--rate", type=float, default=0.2,
                        help="the most of the survivors one round prunes (Frankle & Carbin: 0.2)")
    parser.add_argument("--shapes-per-class", type=int, default=300)
    parser.add_argument("--data-dir", default="bench-data")
    arguments = parser.parse_args()
    levels = [float(level) for level in arguments.levels.split(",")]
    for task in arguments.tasks.split(","):
        overrides = task_overrides(task, Path(arguments.data_dir).resolve(),
                                   arguments.shapes_per_class)
        rounds = len(rounds_through(levels, arguments.rate))
        print(f"{task}: {rounds} rounds of iterative pruning per seed", flush=True)
        runs = []
        for seed in arguments.seeds:
            with tempfile.TemporaryDirectory() as folder:
                runs.append(run_seed(overrides, seed, levels, arguments.rate, Path(folder)))
        print(f"\n{task}, {len(runs)} seeds; dense: {mean_sd([run['dense'] for run in runs])}")
        print("| sparsity | ticket (rewound to init) | same mask, random re-init | one-shot + "
              "fine-tune |\n|---|---|---|---|")
        for level in levels:
            cells = [mean_sd([run[(kind, level)] for run in runs])
                     for kind in ("ticket", "random re-init", "one-shot")]
            print(f"| {level:.0%} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
