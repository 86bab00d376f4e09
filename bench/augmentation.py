"""Test accuracy with and without augmentation, when training data are scarce.

Usage: `python bench/augmentation.py [--seeds 3] [--epochs 40] [--data-dir bench-data]`.
Two small-data tasks, the project's CNN teacher, the same splits for every row (only the
training seed varies), early stopping on validation loss with best-weight restore:

- the generated shapes task at 32×32 RGB with 50 training images per class (200 per class
  written; 25 % train, 12.5 % validation, 62.5 % test, so 1,250 test images);
- digits with 10 % of its training split (126 images; full validation and test splits).

Each row is the mean ± standard deviation of test accuracy over `--seeds` training seeds.
Seed 004 warns that "some invariances can harm your performance": flips and large rotations
turn a 6 into a 9 and a 2 into a 5, and the digits rows show what they cost.

`python bench/augmentation.py --speed` instead times the augmentation of one batch (64 RGB
images of 64×64) on each backend, each in its own process, in milliseconds (median of 10
batches after 3 warm-up batches, one thread).
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GEOMETRIC = ["augmentation.flip=horizontal", "augmentation.rotation=0.1",
             "augmentation.translation=0.1", "augmentation.zoom=0.1"]
TASKS = {
    "shapes, 50 / class": {
        "none": [],
        "flip, rotation, translation, zoom": GEOMETRIC,
        "same + mixup 0.2": [*GEOMETRIC, "augmentation.mixup=0.2"],
        "randaugment 0.5 + erasing 0.25": ["augmentation.randaugment=0.5",
                                           "augmentation.erasing=0.25"],
    },
    "digits, 10 % of train": {
        "none": [],
        "translation 0.1, zoom 0.1": ["augmentation.translation=0.1", "augmentation.zoom=0.1"],
        "flips (both)": ["augmentation.flip=both"],
        "rotation ±180°": ["augmentation.rotation=0.5"],
    },
}


def task_config(task, data_dir, epochs):
    if task.startswith("shapes"):
        folder = data_dir / "shapes-augmentation"
        if not folder.exists():
            subprocess.run([sys.executable, "-m", "app", "make-dataset", "shapes", str(folder),
                            "--per-class", "200", "--size", "32", "--seed", "1"], check=True,
                           cwd=REPO, stdout=subprocess.DEVNULL)
        data = [f"data.source={folder}", "data.color_mode=rgb", "data.cache=memory",
                "data.validation_fraction=0.125", "data.test_fraction=0.625"]
    else:
        data = []
    return [*data, "data.split_seed=0", "model.architecture=cnn", f"training.epochs={epochs}",
            "training.verbose=0", "early_stopping.patience=10", "training.batch_size=32"]


def small_training_split(dataset, fraction, seed):
    """`dataset` with a stratified `fraction` of its training split (statistics refitted)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from app.data import feature_statistics

    kept, _ = train_test_split(np.arange(len(dataset.y_train)), train_size=fraction,
                               stratify=dataset.y_train, random_state=seed)
    x_train = dataset.x_train[kept]
    mean, variance = feature_statistics(x_train)
    return dataclasses.replace(dataset, x_train=x_train, y_train=dataset.y_train[kept],
                               train_indices=dataset.train_indices[kept],
                               feature_mean=mean, feature_variance=variance)


def test_accuracy(overrides, seed):
    from app.config import load_config
    from app.data import load_dataset
    from app.engine import resolve_config, train_and_test

    config = resolve_config(load_config(overrides=[*overrides, f"seed={seed}"]), "bench")
    dataset = load_dataset(config.data, seed=config.seed)
    if config.data.source == "digits":
        dataset = small_training_split(dataset, 0.1, seed=0)
    with tempfile.TemporaryDirectory() as scratch:
        _, metrics = train_and_test(config, dataset, Path(scratch) / "best.keras")
    return metrics["test"]["accuracy"], len(dataset.y_train), len(dataset.y_test)


SPEED_CASES = {
    "flip, rotation, translation, zoom": {"flip": "horizontal", "rotation": 0.1,
                                          "translation": 0.1, "zoom": 0.1},
    "randaugment 0.5": {"randaugment": 0.5},
    "mixup + cutmix": {"mixup": 0.2, "cutmix": 1.0},
}


def batch_milliseconds():
    """Runs in a worker process: the median time to augment a batch, per case."""
    import numpy as np

    from app.augmentation import build_augmenter
    from app.config import AugmentationConfig

    class Images:
        input_shape, value_range, num_classes, description = (64, 64, 3), (0.0, 255.0), 10, "x"

    x = np.random.default_rng(0).uniform(0, 255, (64, 64, 64, 3)).astype(np.float32)
    y = np.arange(64) % 10
    result = {}
    for name, keys in SPEED_CASES.items():
        augmenter = build_augmenter(AugmentationConfig(**keys), Images, seed=0)
        for batch in range(3):
            augmenter(x, y, seed=(0, 0, batch))
        times = []
        for batch in range(10):
            started = time.perf_counter()
            augmenter(x, y, seed=(0, 1, batch))
            times.append(1000 * (time.perf_counter() - started))
        result[name] = statistics.median(times)
    return result


def speed_table():
    rows = {}
    for backend in ("tensorflow", "jax", "torch"):
        environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        output = subprocess.run([sys.executable, __file__, "--speed-worker"], check=True,
                                capture_output=True, text=True, env=environment, cwd=REPO)
        rows[backend] = json.loads(output.stdout.strip().splitlines()[-1])
    print(f"Milliseconds to augment a batch of 64 RGB 64×64 images, {os.cpu_count()} cores:\n")
    print("| augmentation | TensorFlow | JAX | PyTorch |")
    print("|---|---|---|---|")
    for name in SPEED_CASES:
        print(f"| {name} | " + " | ".join(f"{rows[backend][name]:.0f}" for backend in rows) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--data-dir", default="bench-data")
    parser.add_argument("--speed", action="store_true", help="time augmentation per backend")
    parser.add_argument("--speed-worker", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.speed_worker:
        print(json.dumps(batch_milliseconds()))
        return
    if arguments.speed:
        speed_table()
        return
    data_dir = Path(arguments.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    import keras

    lines = []
    for task, variants in TASKS.items():
        base = task_config(task, data_dir, arguments.epochs)
        for name, overrides in variants.items():
            accuracies = []
            for seed in range(arguments.seeds):
                accuracy, train, test = test_accuracy([*base, *overrides], seed)
                accuracies.append(accuracy)
            mean, spread = statistics.mean(accuracies), statistics.pstdev(accuracies)
            lines.append(f"| {task} ({train} train, {test} test) | {name} | "
                         f"{mean:.3f} ± {spread:.3f} | "
                         + ", ".join(f"{accuracy:.3f}" for accuracy in accuracies) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    print(f"CNN teacher, {keras.backend.backend()}, {os.cpu_count()} cores, up to "
          f"{arguments.epochs} epochs (early stopping, patience 10), {arguments.seeds} seeds\n")
    print("| task | augmentation | test accuracy (mean ± sd) | per seed |")
    print("|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
