"""Transfer learning with few labels: a body pretrained by `fit` on another generated task
against the same network from scratch.

Usage: `python bench/transfer.py [--architecture cnn|mobilenet_v3_small] [--seeds 3]
[--labels 20] [--augment] [--data-dir bench-data]`.
The generated shapes task is cut in two: the source task is five shapes (circle, ellipse,
ring, triangle, square; 600 images each), the target task the other five (pentagon, hexagon,
star, cross, crescent; `--labels` training images each, 20 for validation and 160 for test
per class, drawn with another seed). Both at 32×32 RGB. The network (`--architecture`: the
CNN teacher, or MobileNetV3-Small with random initial weights) is trained once on the source;
then, on the target, with the same epoch budget and 3 training seeds (same splits):

- from scratch: the same network, 20 epochs;
- transferred: `model.architecture: transfer` on the source run's body, 10 epochs with the
  body frozen (the head alone), then `training.fine_tune` 10 epochs with every block
  training at 0.1 × the rate.

Early stopping (patience 10) and best-epoch restore as in `fit`. With `--augment`, every run
(source and target) trains with rotation ±180°, flips and translation 0.1, without which a
network barely learns this task.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SOURCE_CLASSES = ("circle", "ellipse", "ring", "triangle", "square")
TARGET_CLASSES = ("pentagon", "hexagon", "star", "cross", "crescent")
COMMON = ["data.color_mode=rgb", "data.cache=memory", "training.verbose=0",
          "early_stopping.patience=10", "training.batch_size=32"]


def task_folder(data_dir, name, classes, per_class, seed):
    """A folder of `classes`, linked from a generated shapes task of `per_class` images."""
    generated = data_dir / f"shapes-{per_class}-seed{seed}"
    if not generated.exists():
        subprocess.run([sys.executable, "-m", "app", "make-dataset", "shapes", str(generated),
                        "--per-class", str(per_class), "--size", "32", "--seed", str(seed)],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    folder = data_dir / name
    if not folder.exists():
        folder.mkdir()
        for label in classes:
            (folder / label).symlink_to((generated / label).resolve())
    return folder


def train(overrides, seed, run_dir):
    from app.config import load_config
    from app.data import load_dataset
    from app.engine import resolve_config, train_and_test
    from app.rundir import write_reports, write_run_start

    config = resolve_config(load_config(overrides=[*COMMON, *overrides, f"seed={seed}"]),
                            run_dir.name)
    dataset = load_dataset(config.data, seed=config.seed)
    run_dir.mkdir(parents=True)
    write_run_start(run_dir, config, dataset.class_names)
    history, metrics = train_and_test(config, dataset, run_dir / "best.keras")
    write_reports(run_dir, history, metrics, title=run_dir.name)
    return metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="cnn", choices=["cnn", "mobilenet_v3_small"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--augment", action="store_true",
                        help="rotation, flips and translation in every run")
    parser.add_argument("--data-dir", default="bench-data")
    arguments = parser.parse_args()
    data_dir = Path(arguments.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    source = task_folder(data_dir, "shapes-source", SOURCE_CLASSES, 600, seed=0)
    per_class = arguments.labels + 180
    target = task_folder(data_dir, f"shapes-target-{arguments.labels}", TARGET_CLASSES,
                         per_class, seed=1)
    target_data = [f"data.source={target}", "data.split_seed=0",
                   f"data.validation_fraction={20 / per_class}",
                   f"data.test_fraction={160 / per_class}"]
    import keras

    network = [f"model.architecture={arguments.architecture}"]
    augmentation = (["augmentation.rotation=0.5", "augmentation.flip=both",
                     "augmentation.translation=0.1"] if arguments.augment else [])
    target_data += augmentation
    if arguments.architecture != "cnn":
        network.append("model.backbone_weights=none")
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(scratch)
        pretrained = train([f"data.source={source}", *network, *augmentation,
                            "training.epochs=30"], 0, runs / "source")
        print(f"source task: test accuracy {pretrained['test']['accuracy']:.3f}",
              file=sys.stderr, flush=True)
        arms = {
            f"from scratch ({arguments.architecture}, 20 epochs)": [
                *target_data, *network, "training.epochs=20"],
            "transferred body (10 frozen + 10 fine-tuned)": [
                *target_data, "model.architecture=transfer", f"model.backbone={runs / 'source'}",
                "training.epochs=10", "training.fine_tune.epochs=10"],
        }
        lines = []
        for name, overrides in arms.items():
            accuracies = []
            for seed in range(arguments.seeds):
                metrics = train(overrides, seed, runs / f"{len(lines)}-{seed}")
                accuracies.append(metrics["test"]["accuracy"])
            lines.append((name, accuracies, metrics["samples"]))
            print(name, accuracies, file=sys.stderr, flush=True)
    print(f"{arguments.architecture}, {keras.backend.backend()}, {os.cpu_count()} cores, "
          f"{'with' if arguments.augment else 'without'} augmentation; "
          f"source task test accuracy {pretrained['test']['accuracy']:.3f}; target: "
          f"{arguments.labels} training images per class, {lines[0][2]['test']} test images\n")
    print("| target task | test accuracy (mean ± sd) | per seed |")
    print("|---|---|---|")
    for name, accuracies, _ in lines:
        print(f"| {name} | {statistics.mean(accuracies):.3f} ± "
              f"{statistics.pstdev(accuracies):.3f} | "
              + ", ".join(f"{accuracy:.3f}" for accuracy in accuracies) + " |")
    gain = statistics.mean(lines[1][1]) - statistics.mean(lines[0][1])
    print(f"\ngain of the transferred body: {100 * gain:+.1f} points")


if __name__ == "__main__":
    main()
