"""Does distillation beat training from scratch? Teacher / scratch / distilled, 3 seeds.

Usage: `python bench/distillation.py [--backend jax] [--width 8] [--seeds 1 2 3]`. Trains the
default MLP teacher (2×256) once on the bundled digits, then for each seed and each
(temperature, α) setting runs `distill`: a capacity-limited student (one hidden layer of
`--width` units) trained from the labels alone and by distillation, with the same budget
(100 epochs, early stopping on `--monitor`: the validation loss, which for the distilled
run is the distillation loss, or the validation accuracy), the same initial weights and the
teacher's splits. Prints each run and the mean ± standard deviation of the test accuracies.
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SETTINGS = [(4.0, 0.1), (2.0, 0.5)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--monitor", default="val_loss", choices=["val_loss", "val_accuracy"],
                        help="what selects the best epoch and stops early, in both runs")
    arguments = parser.parse_args()
    os.environ["KERAS_BACKEND"] = arguments.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from app.commands.distill import run_distill
    from app.commands.fit import run_fit
    from app.config import load_config
    from app.distillation import STUDENT_DEFAULTS

    with tempfile.TemporaryDirectory() as directory:
        common = ["training.verbose=0", f"output.dir={directory}"]
        teacher_dir, teacher = run_fit(load_config(overrides=[*common, "seed=0"]))
        print(f"teacher: mlp 2×256, {teacher['parameters']:,} parameters, test accuracy "
              f"{teacher['test']['accuracy']:.4f} ({arguments.backend})\n")
        print("| T | α | seed | student params | scratch | distilled | Δ |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        results = {setting: [] for setting in SETTINGS}
        for temperature, alpha in SETTINGS:
            for seed in arguments.seeds:
                config = load_config(defaults=STUDENT_DEFAULTS, overrides=[
                    *common, f"seed={seed}", f"model.width={arguments.width}",
                    f"early_stopping.monitor={arguments.monitor}",
                    f"distillation.temperature={temperature}", f"distillation.alpha={alpha}"])
                _, metrics = run_distill(config, teacher_dir)
                comparison = metrics["distillation"]
                scratch = comparison["scratch"]["test_accuracy"]
                distilled = comparison["distilled"]["test_accuracy"]
                results[(temperature, alpha)].append((scratch, distilled))
                print(f"| {temperature:g} | {alpha:g} | {seed} | {metrics['parameters']:,} "
                      f"| {scratch:.4f} | {distilled:.4f} | {distilled - scratch:+.4f} |",
                      flush=True)
        print()
        for (temperature, alpha), pairs in results.items():
            scratch, distilled = zip(*pairs)
            gains = [d - s for s, d in pairs]
            print(f"T={temperature:g}, α={alpha:g}: scratch {_mean_std(scratch)}, distilled "
                  f"{_mean_std(distilled)}, gain {_mean_std(gains, signed=True)} "
                  f"(distilled better in {sum(g > 0 for g in gains)}/{len(gains)} seeds)")


def _mean_std(values, signed=False):
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:+.4f} ± {spread:.4f}" if signed else f"{mean:.4f} ± {spread:.4f}"


if __name__ == "__main__":
    main()
