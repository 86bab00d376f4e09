"""Does distillation beat training the student from scratch? Teacher / scratch / distilled.

Usage: `python bench/distillation.py [--task shapes|digits] [--seeds 1 2 3] [--epochs 40]
[--settings kd,matching,features] [--data-dir bench-data]`.

The teacher is trained once with `fit`; then, for each seed and each setting, `distill` trains
the student twice with the same configuration, budget and initial weights, on the teacher's
splits: from the labels alone ("scratch") and by distillation. Prints each run, then the mean
± standard deviation of the test accuracies and of the gain, and each setting's distilled
student against the best scratch student of all settings (a setting's MixUp may hurt its own
scratch run, which would flatter the gain).

Tasks:

- `shapes` (the default): the generated shapes task at 32×32 RGB, 600 images per class
  (420 for training, 90 for validation, 90 for test), which a network learns only with
  rotation, flip and translation augmentation. A real capacity gap: the CNN teacher with
  three blocks (358k parameters) against the CNN student (8 and 16 filters, 34k). Every run
  uses the same augmentation and a cosine schedule; the best epoch by validation accuracy
  is kept, and early stopping never triggers, so each run gets the whole budget.
- `digits`: the default MLP teacher (2×256) against an 8-unit student on the bundled digits,
  100 epochs with early stopping on validation loss (the project's first benchmark).

Settings (Beyer et al., 2022, "Knowledge distillation: a good teacher is patient and
consistent"; Tung & Mori, 2019):

- `kd`: Hinton's loss, T = 4, α = 0.1;
- `matching`: function matching, α = 0 (no labels) and T = 1, with MixUp (0.8) added to the
  augmentation of both runs, so teacher and student see the same mixed images;
- `features`: `kd` plus similarity-preserving distillation from the teacher's second block
  (`conv_1_act`) to the student's.
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
SHAPES_AUGMENTATION = ["augmentation.rotation=0.5", "augmentation.flip=both",
                       "augmentation.translation=0.1"]
SETTINGS = {
    "kd": ["distillation.temperature=4", "distillation.alpha=0.1"],
    "matching": ["distillation.temperature=1", "distillation.alpha=0", "augmentation.mixup=0.8"],
    "features": ["distillation.temperature=4", "distillation.alpha=0.1",
                 "distillation.feature_layers=[conv_1_act,conv_1_act]"],
}


def shapes_task(data_dir, epochs):
    folder = data_dir / "shapes-600-seed0"
    if not folder.exists():
        subprocess.run([sys.executable, "-m", "app", "make-dataset", "shapes", str(folder),
                        "--per-class", "600", "--size", "32", "--seed", "0"],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    common = [f"data.source={folder}", "data.color_mode=rgb", "data.cache=memory",
              "data.split_seed=0", *SHAPES_AUGMENTATION, "model.architecture=cnn",
              "schedule.name=cosine", f"training.epochs={epochs}", "training.batch_size=64",
              "early_stopping.monitor=val_accuracy", f"early_stopping.patience={epochs}"]
    return {"teacher": [*common, "model.size=teacher", "model.depth=3"],
            "student": [*common, "model.size=student"],
            "description": "shapes 32×32, 420 training images per class; CNN teacher "
                           "(3 blocks) → CNN student"}


def digits_task(data_dir, epochs):
    return {"teacher": [], "student": ["model.width=8"],
            "description": "digits; MLP teacher 2×256 → MLP student, 8 units"}


TASKS = {"shapes": shapes_task, "digits": digits_task}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="shapes")
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=40, help="budget of every run (shapes)")
    parser.add_argument("--settings", default="kd,matching",
                        help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument("--data-dir", default="bench-data")
    arguments = parser.parse_args()
    os.environ["KERAS_BACKEND"] = arguments.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = arguments.settings.split(",")
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; choose from {', '.join(SETTINGS)}")
    data_dir = Path(arguments.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    task = TASKS[arguments.task](data_dir, arguments.epochs)

    from app.commands.distill import run_distill
    from app.commands.fit import run_fit
    from app.config import load_config
    from app.distillation import STUDENT_DEFAULTS

    with tempfile.TemporaryDirectory() as directory:
        common = ["training.verbose=0", f"output.dir={directory}"]
        teacher_dir, teacher = run_fit(load_config(
            overrides=[*common, *task["teacher"], "seed=0"]))
        print(f"{task['description']} ({arguments.backend}); teacher: "
              f"{teacher['parameters']:,} parameters, test accuracy "
              f"{teacher['test']['accuracy']:.4f}\n", flush=True)
        print("| setting | seed | student params | scratch | distilled | Δ |")
        print("|---|---:|---:|---:|---:|---:|")
        results = {setting: [] for setting in settings}
        for setting in settings:
            for seed in arguments.seeds:
                config = load_config(defaults=STUDENT_DEFAULTS, overrides=[
                    *common, *task["student"], *SETTINGS[setting], f"seed={seed}"])
                _, metrics = run_distill(config, teacher_dir)
                comparison = metrics["distillation"]
                scratch = comparison["scratch"]["test_accuracy"]
                distilled = comparison["distilled"]["test_accuracy"]
                results[setting].append((scratch, distilled))
                print(f"| {setting} | {seed} | {metrics['parameters']:,} | {scratch:.4f} "
                      f"| {distilled:.4f} | {distilled - scratch:+.4f} |", flush=True)
        print()
        for setting, pairs in results.items():
            scratch, distilled = zip(*pairs)
            gains = [d - s for s, d in pairs]
            print(f"{setting}: scratch {_mean_std(scratch)}, distilled {_mean_std(distilled)}, "
                  f"gain {_mean_std(gains, signed=True)} (distilled better in "
                  f"{sum(g > 0 for g in gains)}/{len(gains)} seeds)")
        # A setting's augmentation (MixUp) may hurt its own scratch run: each distilled
        # student is also compared with the best scratch student of any setting, per seed.
        best = max(results, key=lambda setting: statistics.mean(s for s, _ in results[setting]))
        for setting, pairs in results.items():
            gains = [d - s for (_, d), (s, _) in zip(pairs, results[best])]
            print(f"{setting} distilled against {best}'s scratch: gain "
                  f"{_mean_std(gains, signed=True)} (better in {sum(g > 0 for g in gains)}/"
                  f"{len(gains)} seeds)")


def _mean_std(values, signed=False):
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:+.4f} ± {spread:.4f}" if signed else f"{mean:.4f} ± {spread:.4f}"


if __name__ == "__main__":
    main()
